"""Run model-written Python in a sandbox: a local, offline stand-in for SandboxFusion (docs/environments.md 3.2).

``run_python(code, limits=...)`` runs each call in a fresh interpreter and returns a :class:`SandboxResult`;
``result.text`` is what the model sees (stdout, or the traceback / error on failure, like SandboxFusion).

Mechanism (``isolation="namespaces"``; needs util-linux ``unshare`` and ``setpriv``, both in Debian's
essential ``util-linux`` package; no bubblewrap):

* ``unshare`` gives the call fresh mount, PID, network, IPC and UTS namespaces. The network namespace has only
  a downed loopback, so every connect (127.0.0.1 included) and every DNS lookup fails.
* ``sandbox_init.py`` (PID 1 there) mounts a tmpfs root holding read-only binds of ``/usr``, the Python prefix,
  the allowed packages (``limits.packages``, under ``/opt/site``) and the loader's ``/etc`` files, a minimal
  ``/dev``, a fresh ``/proc`` and a size-limited tmpfs ``/sandbox`` (the working directory, the only
  writable path, gone with the namespace), then ``pivot_root``s and detaches the old root: the project, ``/tmp``
  and every other host path do not exist inside.
* ``sandbox_runner.py`` (bound read-only) runs the preamble, then the code saved as ``main.py``; tracebacks
  look like those of ``python main.py``.
* The code runs as a child of that init with no capabilities, ``no_new_privs`` and, when the host is root,
  a fresh unnamed uid per call (``limits.uid = -1``; e.g. 65534 to use ``nobody``) and gid ``nogroup``, so
  ``RLIMIT_NPROC`` counts this call's processes only, and rlimits on CPU time, address space, file size,
  processes and open files. A non-root host uses an unprivileged user namespace instead of the uid switch.
* Wall-clock timeout: the host kills the process group; the init dies, and with it (kernel semantics of a PID
  namespace) every process of the call, grandchildren included, even ones that called ``setsid``.
  ``setpriv --pdeathsig KILL`` plus ``unshare --kill-child`` also tear the sandbox down if the host dies.
* stdout and stderr are read concurrently and kept up to ``max_output_bytes`` each; a flood beyond
  ``_DRAIN_CAP_BYTES`` kills the call.

``isolation="auto"`` (default) uses namespaces when a probe succeeds, else warns once and runs with rlimits,
the uid switch (if root) and process-group kills only (``"none"``): weaker, e.g. the filesystem and network
are then reachable. ``"namespaces"`` refuses to run without them. In mode ``"none"`` the sandbox uid must be
able to read the interpreter (not the case for a Python installed under root's mode-700 home).

Memory: ``memory_mb`` bounds each process (RLIMIT_AS) and the call as a whole (its processes' resident memory,
summed by a watchdog), and a host-wide semaphore bounds how many calls run at once, by default as many as fit in
half the host's memory (``envs/tools/sandbox_budget.py``). A call waits for a slot before its clock starts.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envs.tools.sandbox_budget import WATCH_S, HostSlots, call_rss_mb, default_slots

INIT_SCRIPT = str(Path(__file__).with_name("sandbox_init.py"))
RUNNER_SCRIPT = str(Path(__file__).with_name("sandbox_runner.py"))
RUNNER_IN_SANDBOX = "/opt/spear/sandbox_runner.py"
WORKDIR = "/sandbox"  # inside the namespace
SITE_DIR = "/opt/site"  # inside the namespace: read-only binds of the allowed packages
NOGROUP_GID = 65534
FRESH_UIDS = range(2_000_000_000, 2_001_000_000)  # unnamed uids, one drawn per call; they own no host file
_UID_RNG = random.SystemRandom()  # not the global rng: trainers seed it, and workers must not share uids
_SETUP_GRACE_S = 1.0  # namespace + interpreter start-up, on top of the wall-clock limit
_DRAIN_CAP_BYTES = 16 << 20  # more output than this in one call is a flood: kill it
_REAP_TIMEOUT_S = 5.0
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class SandboxUnavailable(RuntimeError):
    """``isolation="namespaces"`` was asked for but namespaces cannot be created here."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per call (plus _SETUP_GRACE_S for start-up)
    cpu_s: int = 10  # RLIMIT_CPU per process; SIGXCPU, then SIGKILL one second later
    memory_mb: int = 1024  # RLIMIT_AS per process and resident memory per call (SandboxFusion: 1024)
    max_file_mb: int = 16  # RLIMIT_FSIZE
    workdir_mb: int = 64  # size of the tmpfs working directory
    max_processes: int = 8  # RLIMIT_NPROC: processes and threads of the sandbox uid
    max_open_files: int = 256
    max_output_bytes: int = 8192  # stdout and stderr each
    max_code_bytes: int = 65536
    preamble: str = "import math"  # prepended code (its own compile unit: line numbers of main.py stay true)
    packages: tuple[str, ...] = ()  # importable packages made visible read-only, e.g. ("numpy",)
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    uid: int = -1  # host root only: -1 = a fresh unnamed uid per call; else this uid (65534 = nobody)
    gid: int = NOGROUP_GID
    max_concurrent_calls: int = 0  # host-wide, across processes; 0 = as many as host_memory_fraction holds
    host_memory_fraction: float = 0.5  # of the host's memory (or cgroup limit) that sandbox calls may take
    slot_wait_s: float = 600.0  # longest wait for a free slot before the call fails ("sandbox busy")


@dataclass(frozen=True)
class SandboxResult:
    ok: bool  # ran to completion with exit code 0
    stdout: str
    stderr: str
    error: str | None  # one line saying what went wrong (None when ok)
    timed_out: bool  # wall-clock or CPU-time limit hit
    returncode: int | None  # exit code, -signal if killed, None if the host killed it before it reported
    wall_s: float
    truncated: bool = False  # stdout or stderr cut at max_output_bytes
    isolation: str = "namespaces"  # what actually ran: "namespaces" or "none"
    cpu_s: float = field(default=0.0, compare=False)

    @property
    def text(self) -> str:
        """The tool output shown to the model: stdout when ok, else stdout + stderr (+ the error line)."""
        if self.ok:
            return self.stdout
        parts = [self.stdout.rstrip("\n"), self.stderr.rstrip("\n")]
        if self.timed_out or not self.stderr.strip():
            parts.append(self.error or "")
        return "\n".join(part for part in parts if part)


def strip_code_fence(code: str) -> str:
    """The body of the first ```python fenced block in ``code``, or ``code`` unchanged when there is none."""
    match = _FENCE_RE.search(code)
    return match.group(1) if match else code


@functools.cache
def namespaces_available() -> bool:
    """Whether this host can create the sandbox namespaces (probed once per process)."""
    if shutil.which("unshare") is None:
        return False
    command = [shutil.which("unshare") or "unshare", *_unshare_flags(), "--", "true"]
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_python(code: str, *, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` (a ```python fence is stripped) in a fresh sandboxed interpreter; never raises on bad code."""
    limits = limits or SandboxLimits()
    isolate = _choose_isolation(limits.isolation)
    code = strip_code_fence(code).encode("utf-8", "replace").decode("utf-8")
    if len(code.encode()) > limits.max_code_bytes:
        message = f"code is longer than {limits.max_code_bytes} bytes"
        return SandboxResult(False, "", "", message, False, None, 0.0, isolation=_mode_name(isolate))
    n_slots = limits.max_concurrent_calls or default_slots(limits.memory_mb, limits.host_memory_fraction)
    slots = HostSlots(n_slots, limits.slot_wait_s)
    try:
        slots.acquire()
    except TimeoutError as exc:
        return SandboxResult(
            False, "", "", f"sandbox busy: {exc}", False, None, 0.0, isolation=_mode_name(isolate)
        )
    start = time.monotonic()  # waiting for a slot is not the call's time
    host_dir = tempfile.mkdtemp(prefix="spear-sandbox-")
    try:
        spec, command = _launch_plan(code, limits, isolate, host_dir)
        return _execute(command, spec, limits, start, isolate)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
        slots.release()


# ------------------------------------------------------------------------------------------------ internals


def _mode_name(isolate: bool) -> str:
    return "namespaces" if isolate else "none"


def _unshare_flags() -> list[str]:
    flags = ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
    if os.geteuid() != 0:  # an unprivileged user namespace makes the mounts possible without root
        flags += ["--user", "--map-root-user"]
    return flags


_warned_unisolated = False


def _choose_isolation(mode: str) -> bool:
    global _warned_unisolated
    if mode == "none":
        return False
    if namespaces_available():
        return True
    if mode == "namespaces":
        raise SandboxUnavailable(
            "cannot create mount/PID/network namespaces (needs root or unprivileged user namespaces and "
            "util-linux 'unshare'); set the sandbox isolation to 'auto' or 'none' to run without them"
        )
    if not _warned_unisolated:
        _warned_unisolated = True
        warnings.warn(
            "python sandbox: namespaces are unavailable; running with rlimits and a uid switch only "
            "(the code can read the host filesystem and use the network)",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def check_packages(names: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError now (at configuration time) if a package for ``limits.packages`` is not installed."""
    _package_binds(tuple(names))


@functools.cache
def _package_binds(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(host path, sandbox path) of each package (and its auditwheel ``<name>.libs``), without importing it."""
    binds = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or (spec.origin is None and not spec.submodule_search_locations):
            raise ValueError(f"sandbox package {name!r} is not installed in this interpreter")
        if spec.submodule_search_locations:
            source = os.path.realpath(next(iter(spec.submodule_search_locations)))
        else:
            source = os.path.realpath(spec.origin or "")
        binds.append((source, f"{SITE_DIR}/{os.path.basename(source)}"))
        libs = os.path.join(os.path.dirname(source), f"{name}.libs")
        if os.path.isdir(libs):
            binds.append((libs, f"{SITE_DIR}/{name}.libs"))
    return tuple(binds)


def _system_binds(python_prefix: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Read-only binds and symlinks that make the host interpreter runnable inside the new root."""
    binds, symlinks = [("/usr", "/usr")], []
    for path in _TOP_LEVEL:
        if os.path.islink(path):
            symlinks.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append((path, path))
    binds += [(path, path) for path in _ETC_FILES if os.path.exists(path)]
    if not any(python_prefix == dst or python_prefix.startswith(dst + "/") for _, dst in binds):
        binds.append((python_prefix, python_prefix))
    return binds, symlinks


def _launch_plan(code: str, limits: SandboxLimits, isolate: bool, host_dir: str) -> tuple[dict, list[str]]:
    """The JSON spec for sandbox_init.py and the command line that starts it."""
    python = os.path.realpath(sys.executable)
    package_binds = list(_package_binds(tuple(limits.packages)))
    if isolate:
        binds, symlinks = _system_binds(os.path.realpath(sys.base_prefix))
        binds += [*package_binds, (RUNNER_SCRIPT, RUNNER_IN_SANDBOX)]
        workdir, site_paths, runner = WORKDIR, [SITE_DIR] if package_binds else [], RUNNER_IN_SANDBOX
    else:
        binds, symlinks, workdir, runner = [], [], host_dir, RUNNER_SCRIPT
        site_paths = sorted({os.path.dirname(src) for src, dst in package_binds if not dst.endswith(".libs")})
    if os.geteuid() == 0:
        uid = limits.uid if limits.uid >= 0 else _UID_RNG.choice(FRESH_UIDS)
        gid = limits.gid
        if not isolate:
            os.chown(host_dir, uid, gid)
    else:
        uid = gid = -1  # keep the (unprivileged) host identity
    mb = 1 << 20
    spec = {
        "isolate": isolate,
        "root": host_dir,
        "binds": binds,
        "symlinks": symlinks,
        "workdir": workdir,
        "workdir_mb": limits.workdir_mb,
        "workdir_inodes": 1024,
        "uid": uid,
        "gid": gid,
        "files": {"main.py": code},
        "argv": [python, "-s", "-S", "-P", runner, json.dumps(site_paths), limits.preamble],
        "env": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONUNBUFFERED": "1",  # output printed before a timeout kill is not lost in a buffer
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            **dict.fromkeys(_THREAD_ENV, "1"),  # BLAS threads would count against RLIMIT_NPROC
        },
        "rlimits": {
            "RLIMIT_CPU": [limits.cpu_s, limits.cpu_s + 1],
            "RLIMIT_AS": [limits.memory_mb * mb] * 2,
            "RLIMIT_FSIZE": [limits.max_file_mb * mb] * 2,
            "RLIMIT_NPROC": [limits.max_processes] * 2,
            "RLIMIT_NOFILE": [limits.max_open_files] * 2,
            "RLIMIT_CORE": [0, 0],
        },
    }
    setpriv = shutil.which("setpriv")
    command = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    if isolate:
        command += [shutil.which("unshare") or "unshare", *_unshare_flags(), "--"]
    spec_path = os.path.join(host_dir, ".spec.json")  # read (and deleted) by the init before it mounts
    command += [python, "-I", "-S", INIT_SCRIPT, spec_path]
    return spec, command


def _execute(
    command: list[str], spec: dict, limits: SandboxLimits, start: float, isolate: bool
) -> SandboxResult:
    status_read, status_write = os.pipe()
    spec["status_fd"] = status_write
    spec_path = command[-1]  # the init's only argument
    with open(os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump(spec, handle)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(status_write,),
        start_new_session=True,  # its own process group, killed as a whole
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    os.close(status_write)
    assert proc.stdout is not None and proc.stderr is not None
    outputs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_read: bytearray()}
    caps = {proc.stdout.fileno(): limits.max_output_bytes, proc.stderr.fileno(): limits.max_output_bytes}
    caps[status_read] = 1 << 16
    deadline = start + limits.timeout_s + _SETUP_GRACE_S
    timed_out = flooded = over_memory = truncated = False
    killed_at: float | None = None
    total = 0
    with selectors.DefaultSelector() as selector:
        for fd in outputs:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if killed_at is None:
                over_memory = call_rss_mb(proc.pid) > limits.memory_mb  # the call's processes together
            if killed_at is None and (now >= deadline or flooded or over_memory):
                timed_out = not (flooded or over_memory)
                _kill(proc, isolate)
                killed_at = now
            if killed_at is not None and now - killed_at > _REAP_TIMEOUT_S:
                break
            # After the kill, keep draining until EOF: the pipes close only when every holder is dead.
            wait = min(deadline - now, WATCH_S) if killed_at is None else killed_at + _REAP_TIMEOUT_S - now
            for key, _ in selector.select(max(wait, 0.01)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                room = max(caps[key.fd] - len(outputs[key.fd]), 0)
                truncated |= len(chunk) > room and key.fd != status_read
                outputs[key.fd] += chunk[:room]
                total += len(chunk)
                flooded |= total > _DRAIN_CAP_BYTES
    os.close(status_read)
    proc.stdout.close()
    proc.stderr.close()
    try:
        proc.wait(timeout=_REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(proc, isolate)
        proc.wait()
    status = _last_json_line(outputs.pop(status_read))
    stdout, stderr = (bytes(buf).decode("utf-8", "replace") for buf in outputs.values())
    if truncated:
        stdout, stderr = (_mark_truncated(text, limits.max_output_bytes) for text in (stdout, stderr))
    killed_for = "flood" if flooded else "memory" if over_memory else None
    return _result(status, stdout, stderr, timed_out, killed_for, truncated, limits, start, isolate)


def _kill(proc: subprocess.Popen, isolate: bool) -> None:
    """Kill the call and return once every process of it is gone (reaped, not merely dead).

    Isolated: SIGKILL the namespace's init (unshare's child); the kernel kills and reaps every process of the
    PID namespace before the init's exit reaches unshare, so unshare exiting means the namespace is empty.
    Killing unshare first would orphan the init and let its teardown outlive this call. The process group
    kill is the fallback (and the only means without namespaces).
    """
    if isolate:
        for pid in _child_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_REAP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN, or already gone: scan the parent pids instead
        children = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
        return children


def _last_json_line(raw: bytearray) -> dict:
    for line in reversed(bytes(raw).decode("utf-8", "replace").splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _mark_truncated(text: str, limit: int) -> str:
    return text + "\n... [output truncated]" if len(text.encode()) >= limit else text


def _result(
    status: dict,
    stdout: str,
    stderr: str,
    timed_out: bool,
    killed_for: str | None,
    truncated: bool,
    limits: SandboxLimits,
    start: float,
    isolate: bool,
) -> SandboxResult:
    wall_s = time.monotonic() - start
    cpu_s = float(status.get("cpu_s", 0.0))
    returncode: int | None = None
    error: str | None = None
    if "setup_error" in status:
        error = f"sandbox setup failed: {status['setup_error']}"
    elif killed_for == "flood":
        error = f"OutputLimitExceeded: more than {_DRAIN_CAP_BYTES} bytes of output; the process was killed"
    elif killed_for == "memory":
        error = (
            f"MemoryError: the call's processes together used more than {limits.memory_mb} MB and were killed"
        )
    elif timed_out:
        error = f"TimeoutError: execution exceeded the time limit of {limits.timeout_s:g} s and was killed"
    elif "signal" in status:
        sig = int(status["signal"])
        returncode = -sig
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_s):
            timed_out = True
            error = f"TimeoutError: CPU time limit of {limits.cpu_s} s exceeded"
        elif sig == signal.SIGXFSZ:
            error = f"file size limit of {limits.max_file_mb} MB exceeded"
        else:
            error = f"killed by {signal.Signals(sig).name} (memory or process limit?)"
    elif "exit_code" in status:
        returncode = int(status["exit_code"])
        if returncode != 0:
            error = f"exit code {returncode}"
    else:
        error = "sandbox ended without reporting a status"
    ok = error is None
    mode = _mode_name(isolate)
    return SandboxResult(ok, stdout, stderr, error, timed_out, returncode, wall_s, truncated, mode, cpu_s)
