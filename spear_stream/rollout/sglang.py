"""``SGLangEngine``: an async HTTP client of SGLang's native ``/generate`` route, over one or more servers.

Every request sends token ids (never text) and every sampling knob explicitly (a server otherwise fills missing
ones from the model's ``generation_config.json``), and asks for the log-prob of each sampled token, which SGLang
reports as ``log_softmax(logits / T)`` over the whole vocabulary before top-p/top-k: what the learner recomputes.
The policy version of each token is the server's ``weight_version`` when it emitted the token (the learner
pauses and aborts generation around every update, so one response never spans two versions; per-token spans,
``meta_info.weight_versions``, are used where a server reports them).

Routing: an episode's first turn goes to the healthy server with the fewest outstanding requests, and its later
turns follow it there (``affinity``: the prefix cache holds the conversation). Connection errors, timeouts and
5xx answers are retried with back-off, and a server that keeps failing is marked down: its requests go to
another server (a failover, counted), and a background probe of ``/health_generate`` lets it rejoin. A 400 is
SGLang refusing the request (bad sampling parameter): an :class:`EngineError` with SGLang's message, not
retried. An ``abort`` finish (a pause for a weight update) comes back as a :class:`Generation` with the partial
tokens, which the agent loop resumes.

Why httpx (not aiohttp): it is already installed with transformers (no new dependency), it has one API for the
synchronous calls (connect checks, the learner's weight-update calls) and the async ones, and per-phase timeouts.
The spear_stream package never imports sglang.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx

from spear_stream.rollout.engine import EngineError, FinishReason, Generation, SamplingParams

_AFFINITY_ENTRIES = 65536  # episodes remembered for routing (oldest forgotten first)


def sampling_body(params: SamplingParams) -> dict[str, Any]:
    """SGLang ``sampling_params`` with every knob explicit (field names of SGLang's ``SamplingParams``)."""
    return {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # SGLang: -1 = whole vocabulary
        "min_p": 0.0,
        "stop_token_ids": list(params.stop_ids),
        "no_stop_trim": True,  # output_ids keep the stop token (as the in-process engine's do)
    }


def generate_body(prompt_ids: list[int], params: SamplingParams, rid: str) -> dict[str, Any]:
    """One ``/generate`` request (field names of SGLang's ``GenerateReqInput``)."""
    return {
        "rid": rid,
        "input_ids": list(prompt_ids),
        "sampling_params": sampling_body(params),
        "return_logprob": True,
    }


def parse_version(value: Any) -> int:
    """SGLang's ``weight_version`` string as our integer policy version (``"default"``: the initial weights, 0)."""
    if value in (None, "default"):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EngineError(
            f"server reports weight_version {value!r}; launch it with --weight-version 0"
        ) from None


def parse_generation(item: Any) -> tuple[str, Generation]:
    """One response object of ``/generate`` -> (its ``meta_info.id``, the generation); strict about shape."""
    try:
        ids = [int(t) for t in item["output_ids"]]
        meta = item["meta_info"]
        entries = meta["output_token_logprobs"]
        rid = str(meta["id"])
        finish = meta["finish_reason"] or {}
        kind = finish.get("type")
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"malformed /generate response ({exc!r}): {str(item)[:300]}") from None
    if kind not in ("stop", "length", "abort"):
        raise EngineError(f"/generate response {rid}: unknown finish_reason {finish!r}")
    if len(entries) != len(ids):
        raise EngineError(f"/generate response {rid}: {len(ids)} output ids but {len(entries)} log-probs")
    logprobs: list[float] = []
    for i, (entry, token) in enumerate(zip(entries, ids)):
        value = entry[0]
        if int(entry[1]) != token or value is None or not math.isfinite(value) or value > 1e-6:
            raise EngineError(
                f"/generate response {rid}: bad log-prob entry {entry!r} for token {i} ({token})"
            )
        logprobs.append(min(float(value), 0.0))
    versions = [parse_version(meta.get("weight_version"))] * len(ids)
    for span in meta.get("weight_versions") or []:  # per-token spans, where the server reports them
        for i in range(int(span["start"]), min(int(span["end"]), len(ids))):
            versions[i] = parse_version(span["version"])
    reason: FinishReason = kind
    return rid, Generation(ids, logprobs, versions, reason)


def parse_generations(body: Any, rids: list[str]) -> list[Generation]:
    """A single response object or a batch array, matched to ``rids`` by ``meta_info.id`` (not by position)."""
    items = body if isinstance(body, list) else [body]
    by_id = dict(parse_generation(item) for item in items)
    missing = [rid for rid in rids if rid not in by_id]
    if missing or len(by_id) != len(rids):
        raise EngineError(f"/generate answered ids {sorted(by_id)} for requests {rids}")
    return [by_id[rid] for rid in rids]


def error_message(response: httpx.Response) -> str:
    """SGLang's error text from either of its error bodies (``{"message"}`` or ``{"error": {"message"}}``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if "message" in body:
            return str(body["message"])
    return str(body)[:300]


@dataclass
class _Server:
    url: str
    outstanding: int = 0
    down_since: float | None = None
    failures: int = 0  # consecutive
    excluded: bool = False  # the learner did not announce it with the current weights


class SGLangEngine:
    """See the module docstring. Build with :meth:`connect` (checks every server) or the constructor (no check)."""

    def __init__(
        self, urls: list[str], *, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 0.2,
        probe_every_s: float = 2.0, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        if not urls:
            raise EngineError("SGLangEngine needs at least one server URL")
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.probe_every_s = probe_every_s
        self.counters: Counter[str] = Counter()
        self._affinity: OrderedDict[int, int] = OrderedDict()  # episode key -> server index
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: asyncio.Task | None = None
        self._transport = transport  # tests inject httpx.MockTransport

    @classmethod
    def connect(
        cls, urls: list[str], *, timeout_s: float = 600.0, check_timeout_s: float = 10.0
    ) -> SGLangEngine:
        """An engine over ``urls`` after checking that each answers ``/model_info`` (else an error naming it)."""
        for url in urls:
            try:
                response = httpx.get(f"{url.rstrip('/')}/model_info", timeout=check_timeout_s)
            except httpx.HTTPError as exc:
                raise EngineError(f"SGLang server {url} is not reachable: {exc!r}") from None
            if response.status_code != 200:
                raise EngineError(
                    f"SGLang server {url} answered /model_info with {response.status_code}: {error_message(response)}"
                )
        return cls(urls, timeout_s=timeout_s)

    # ------------------------------------------------------------------ requests
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, *, affinity: int | None = None
    ) -> Generation:
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        rid = uuid.uuid4().hex  # fixed length: SGLang's abort matches rid prefixes
        body = generate_body(prompt_ids, params, rid)
        self.counters["engine/requests"] += 1
        deadline = time.monotonic() + self.timeout_s
        previous: int | None = None
        attempt = 0
        while True:
            index = await self._pick(affinity, deadline)
            if previous is not None and index != previous:
                self.counters["engine/failovers"] += 1
            previous = index
            server = self.servers[index]
            server.outstanding += 1
            try:
                response = await self._http().post(
                    f"{server.url}/generate", json=body, timeout=self.timeout_s
                )
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    server.failures = 0
                    gen = parse_generations(response.json(), [rid])[0]
                    self.counters["engine/aborted"] += gen.finish_reason == "abort"
                    return gen
                if 400 <= response.status_code < 500:
                    raise EngineError(f"SGLang {server.url} refused the request: {error_message(response)}")
                failure = f"HTTP {response.status_code}: {error_message(response)}"
            finally:
                server.outstanding -= 1
            attempt += 1
            self.counters["engine/retries"] += 1
            self._failed(index, failure)
            if attempt > self.retries * len(self.servers) or time.monotonic() > deadline:
                raise EngineError(f"/generate failed {attempt} times; last: {server.url} {failure}")
            await asyncio.sleep(min(self.backoff_s * 2 ** min(server.failures - 1, 5), 5.0))

    async def _pick(self, affinity: int | None, deadline: float) -> int:
        """The episode's server if it is up, else the up server with the fewest outstanding requests."""
        while True:
            up = [i for i, s in enumerate(self.servers) if s.down_since is None and not s.excluded]
            if up:
                break
            if time.monotonic() > deadline:
                raise EngineError(f"every SGLang server is down: {[s.url for s in self.servers]}")
            self._ensure_probe()
            await asyncio.sleep(self.probe_every_s / 4)
        pinned = self._affinity.get(affinity) if affinity is not None else None
        if pinned is not None and pinned in up:
            return pinned
        index = min(up, key=lambda i: (self.servers[i].outstanding, i))
        if affinity is not None:
            self._affinity[affinity] = index
            if len(self._affinity) > _AFFINITY_ENTRIES:
                self._affinity.popitem(last=False)
        return index

    def _failed(self, index: int, failure: str) -> None:
        server = self.servers[index]
        server.failures += 1
        if server.down_since is None and server.failures >= self.retries:
            server.down_since = time.monotonic()
            self.counters["engine/servers_marked_down"] += 1
            self._ensure_probe()

    # ------------------------------------------------------------------ health
    def _ensure_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_down_servers())

    async def _probe_down_servers(self) -> None:
        """Every ``probe_every_s``: a down server whose ``/health_generate`` answers 200 rejoins."""
        while any(s.down_since is not None for s in self.servers):
            await asyncio.sleep(self.probe_every_s)
            for server in self.servers:
                if server.down_since is None:
                    continue
                try:
                    response = await self._http().get(
                        f"{server.url}/health_generate", timeout=self.probe_every_s * 5
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    server.down_since, server.failures = None, 0
                    self.counters["engine/servers_rejoined"] += 1

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client belongs to the event loop that made it
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
            self._client = httpx.AsyncClient(limits=limits, transport=self._transport)
            self._loop = loop
        return self._client

    def set_servers(self, urls: list[str]) -> None:
        """Route only to ``urls`` (the servers the learner announced with its newest weights); new URLs join."""
        wanted = {u.rstrip("/") for u in urls}
        if not wanted:
            return  # no server holds the new version: keep the old set rather than stall every episode
        known = {s.url for s in self.servers}
        self.servers += [_Server(u) for u in sorted(wanted - known)]
        for server in self.servers:
            server.excluded = server.url not in wanted

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.counters.items()}
        out["engine/servers_down"] = float(sum(s.down_since is not None for s in self.servers))
        out["engine/servers_excluded"] = float(sum(s.excluded for s in self.servers))
        return out

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
