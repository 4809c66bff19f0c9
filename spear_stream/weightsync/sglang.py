"""Weights into running SGLang servers, driven by learner rank 0 over their HTTP routes.

``sync.method = "sglang_disk"``: the learner writes the version directory (``weightsync/disk.py``: safetensors
plus the model's ``config.json``, an HF directory the servers can read on a shared filesystem), then runs the
update sequence on every server at once:

1. ``POST /pause_generation {"mode": "abort"}``: running requests return with their partial tokens (the agent
   loop resumes them, so their later tokens carry the new version), new ones wait;
2. ``POST /update_weights_from_disk {"model_path": dir, "weight_version": "<v>"}``;
3. ``GET /model_info``: the server's ``weight_version`` must now be ``<v>``;
4. ``POST /continue_generation {}`` (always, also after a failure).

A failed update (``success: false``, a timeout, a dead server) leaves the server's weights unknown: it is told
to reload the last good version before it continues, the failure is counted and the learner goes on (the
server keeps generating with the old weights, and the tokens say so). Workers need no announcement: a server
engine stamps tokens with the version the server reports.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import torch

from spear_stream.weightsync.base import WeightAnnouncement
from spear_stream.weightsync.disk import DiskPublisher


class UpdateFailed(RuntimeError):
    pass


async def _post(
    client: httpx.AsyncClient, url: str, route: str, body: dict[str, Any], timeout_s: float
) -> dict:
    response = await client.post(f"{url}{route}", json=body, timeout=timeout_s)
    try:
        payload = response.json() if response.content else {}
    except ValueError:
        payload = {"message": response.text[:300]}
    if response.status_code != 200 or payload.get("success") is False:
        raise UpdateFailed(f"{url}{route} answered {response.status_code}: {payload.get('message', payload)}")
    return payload


async def server_version(client: httpx.AsyncClient, url: str, timeout_s: float) -> str:
    response = await client.get(f"{url}/model_info", timeout=timeout_s)
    if response.status_code != 200:
        raise UpdateFailed(f"{url}/model_info answered {response.status_code}")
    return str(response.json().get("weight_version"))


class SGLangDiskPublisher:
    """``sync.method = "sglang_disk"``; see the module docstring."""

    method = "sglang_disk"

    def __init__(
        self,
        urls: list[str],
        root: str | Path,
        *,
        model_dir: str | Path,
        timeout_s: float,
        keep_last: int = 2,
    ) -> None:
        if not urls:
            raise ValueError("sync.method 'sglang_disk' needs rollout.sglang_urls")
        self.urls = [u.rstrip("/") for u in urls]
        self.disk = DiskPublisher(root, keep_last=max(keep_last, 2), model_dir=model_dir)
        self.timeout_s = timeout_s
        self.good: str | None = None  # the last version directory every server loaded
        self.counters: Counter[str] = Counter()
        self.last_metrics: dict[str, float] = {}

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int) -> WeightAnnouncement:
        t0 = time.monotonic()
        announcement = self.disk.publish(state_dict, version)
        directory = str(Path(announcement.location["path"]).parent)
        t_written = time.monotonic()
        failures = asyncio.run(self._update_all(directory, version))
        self.counters["sync/server_updates"] += len(self.urls) - len(failures)
        self.counters["sync/server_update_failures"] += len(failures)
        if not failures:
            self.good = directory
        self.last_metrics = {
            "sync/write_s": t_written - t0,
            "sync/servers_s": time.monotonic() - t_written,
            **{k: float(v) for k, v in self.counters.items()},
        }
        return announcement

    async def _update_all(self, directory: str, version: int) -> list[str]:
        async with httpx.AsyncClient() as client:
            results = await asyncio.gather(
                *(self._update_one(client, url, directory, version) for url in self.urls),
                return_exceptions=True,
            )
        return [f"{url}: {r}" for url, r in zip(self.urls, results) if isinstance(r, BaseException)]

    async def _update_one(self, client: httpx.AsyncClient, url: str, directory: str, version: int) -> None:
        t = self.timeout_s
        try:
            await _post(client, url, "/pause_generation", {"mode": "abort"}, t)
            try:
                await self._load(client, url, directory, version)
            except (httpx.HTTPError, UpdateFailed):
                if self.good is not None:  # the weights may be half-written: back to the last good version
                    await self._load(client, url, self.good, None)
                    self.counters["sync/server_reloads"] += 1
                raise
        finally:
            try:
                await _post(client, url, "/continue_generation", {}, t)
            except (httpx.HTTPError, UpdateFailed):
                self.counters["sync/continue_failures"] += 1

    async def _load(self, client: httpx.AsyncClient, url: str, directory: str, version: int | None) -> None:
        body: dict[str, Any] = {"model_path": directory, "abort_all_requests": True}
        if version is not None:
            body["weight_version"] = str(version)
        await _post(client, url, "/update_weights_from_disk", body, self.timeout_s)
        if version is not None and (seen := await server_version(client, url, self.timeout_s)) != str(
            version
        ):
            raise UpdateFailed(f"{url} reports weight_version {seen!r} after loading version {version}")

    def close(self) -> None:
        self.disk.close()
