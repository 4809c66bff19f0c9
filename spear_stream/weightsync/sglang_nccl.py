"""``sync.method = "sglang_nccl"``: the learner broadcasts its weights to every SGLang server over one process
group (NCCL on GPUs; gloo on CPU, which is how the stand-in server and the CPU tests run the same code).

Group setup, once per set of servers (and again after a failure, under a fresh name): learner rank 0 is rank 0
of a group of ``1 + sum(server tp sizes)``; it starts its side of the rendezvous in a thread, then POSTs
``/init_weights_update_group`` (its address, a port from ``sync.port_range``, each server's rank offset, the
world size, the group name, the backend) to every server at once, and waits for both sides within
``sync.timeout_s``. The group is built the way SGLang builds its side (``init_custom_process_group`` in SGLang's
``srt/utils``): a c10d rendezvous, a ``PrefixStore`` named after the group, then torch's process-group helper; a
plain ``init_process_group`` would not meet it (different store keys).

One update: per bucket (``weightsync/buckets.py``: tensors grouped up to ``bucket_bytes``), POST
``/update_weights_from_distributed`` (names, dtypes, shapes; the last bucket carries ``weight_version`` and
flushes the cache) to every server, and at the same time broadcast the bucket's tensors from rank 0, one by one
in ``names`` order, straight from the state dict (SGLang's default layout; its ``flattened_bucket`` layout would
cost the learner a copy of every bucket, measured at a quarter of the transfer time on CPU). Only one update is
in flight on a group. Pause, check and continue around it, and recovery from a failure, are the
shared sequence of ``weightsync/sglang.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from typing import Any

import httpx
import torch
import torch.distributed as dist

from spear_stream.weightsync.buckets import plan_buckets, prepare_state_dict
from spear_stream.weightsync.sglang import ServerPublisher, UpdateFailed, post


def init_update_group(
    backend: str, host: str, port: int, world_size: int, rank: int, group_name: str, timeout_s: float
) -> Any:
    """A process group with SGLang's construction (see the module docstring); blocks until every rank joined."""
    from torch.distributed.distributed_c10d import (
        Backend,
        PrefixStore,
        _new_process_group_helper,  # what SGLang, torchrl and slime use for groups beside the default one
        _world,
        rendezvous,
    )

    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{host}:{port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    group, _ = _new_process_group_helper(
        world_size, rank, [], Backend(backend), PrefixStore(group_name, store),
        group_name=group_name,  # type: ignore[arg-type]  # a str at run time, as in SGLang
        backend_options=None, timeout=timeout,
    )  # fmt: skip
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


class SGLangNCCLPublisher(ServerPublisher):
    """See the module docstring."""

    method = "sglang_nccl"

    def __init__(
        self, urls: list[str], root, *, host: str, port_range: list[int], backend: str, **kw
    ) -> None:
        super().__init__(urls, root, **kw)
        self.host, self.backend = host, backend
        self.ports = list(range(port_range[0], port_range[1] + 1))
        self._next_port = 0
        self.group: Any = None
        self.group_name = ""
        self.members: list[str] = []  # the servers in the current group, in rank order

    def mark_lost(self, urls: list[str]) -> None:
        super().mark_lost(urls)
        if set(urls) & set(self.members):  # a restarted server is not in the old group: build a new one
            self._destroy_group()

    # ------------------------------------------------------------------ group
    async def _init_group(self, client: httpx.AsyncClient, urls: list[str]) -> None:
        """A fresh group over ``urls`` (rank offsets 1.., one rank per server)."""
        self._destroy_group()
        port = self.ports[self._next_port % len(self.ports)]  # never reuse the last port (TIME_WAIT)
        self._next_port += 1
        name = f"spear_weights_{uuid.uuid4().hex[:8]}"
        world = 1 + len(urls)
        built: dict[str, Any] = {}

        def rank0() -> None:
            try:
                built["group"] = init_update_group(
                    self.backend, self.host, port, world, 0, name, self.timeout_s
                )
            except Exception as exc:  # reported below, with the servers' answers
                built["error"] = exc

        thread = threading.Thread(target=rank0, daemon=True)
        thread.start()
        await asyncio.sleep(0.05)  # the store listens before the servers connect (torchrl waits too)
        bodies = [
            {"master_address": self.host, "master_port": port, "rank_offset": 1 + i, "world_size": world,
             "group_name": name, "backend": self.backend}
            for i in range(len(urls))
        ]  # fmt: skip
        answers = await asyncio.gather(
            *(post(client, u, "/init_weights_update_group", b, self.timeout_s) for u, b in zip(urls, bodies)),
            return_exceptions=True,
        )
        await asyncio.to_thread(thread.join, self.timeout_s + 5)
        errors = [f"{u}: {a}" for u, a in zip(urls, answers) if isinstance(a, BaseException)]
        if "group" not in built or errors:
            self.counters["sync/group_init_failures"] += 1
            raise UpdateFailed(f"weight-update group {name} on port {port}: {built.get('error')} {errors}")
        self.group, self.group_name, self.members = built["group"], name, list(urls)
        self.counters["sync/group_inits"] += 1

    def _destroy_group(self) -> None:
        if self.group is not None:
            try:
                dist.destroy_process_group(self.group)
            except Exception:  # a group broken by a dead peer may not tear down cleanly; it is dropped anyway
                self.counters["sync/group_destroy_errors"] += 1
        self.group, self.members = None, []

    # ------------------------------------------------------------------ update
    async def _load(
        self, client: httpx.AsyncClient, urls: list[str], tensors: dict[str, torch.Tensor], version: int
    ) -> dict[str, BaseException]:
        try:
            if self.group is None or self.members != urls:
                await self._init_group(client, urls)
            _, manifest = prepare_state_dict(tensors)
            buckets = plan_buckets(manifest, self.bucket_bytes)
            for i, bucket in enumerate(buckets):
                last = i == len(buckets) - 1
                body: dict[str, Any] = {
                    "names": [slot.spec.name for slot in bucket.slots],
                    "dtypes": [slot.spec.dtype for slot in bucket.slots],
                    "shapes": [list(slot.spec.shape) for slot in bucket.slots],
                    "group_name": self.group_name,
                    "flush_cache": last,
                    "abort_all_requests": False,
                }
                if last:
                    body["weight_version"] = str(version)
                parts = [tensors[slot.spec.name].contiguous() for slot in bucket.slots]
                await self._send_bucket(client, urls, body, parts)
        except UpdateFailed as exc:
            self._destroy_group()  # a failed group is never reused: the next update builds a fresh one
            return {u: exc for u in urls}
        return {}

    async def _send_bucket(
        self, client: httpx.AsyncClient, urls: list[str], body: dict, parts: list[torch.Tensor]
    ) -> None:
        """POST the bucket's description to every server while broadcasting its tensors in ``names`` order."""
        posts = [
            asyncio.ensure_future(post(client, u, "/update_weights_from_distributed", body, self.timeout_s))
            for u in urls
        ]
        try:
            await asyncio.to_thread(self._broadcast, parts)
        except Exception as exc:  # a peer died or hung past the group's timeout
            for p in posts:
                p.cancel()
            raise UpdateFailed(f"broadcast to {urls} failed: {type(exc).__name__}: {exc}") from None
        answers = await asyncio.gather(*posts, return_exceptions=True)
        errors = [str(a) for a in answers if isinstance(a, BaseException)]
        if errors:
            raise UpdateFailed("; ".join(errors))

    def _broadcast(self, parts: list[torch.Tensor]) -> None:
        # straight from the state dict (no bucket copy on the learner), all issued at once, then awaited
        works = [dist.broadcast(tensor, group_src=0, group=self.group, async_op=True) for tensor in parts]
        for work in works:
            if work is not None:
                work.wait()

    def close(self) -> None:
        self._destroy_group()
        super().close()
