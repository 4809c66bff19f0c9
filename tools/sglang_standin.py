"""A stand-in SGLang server: SGLang's own HTTP layer over spear_stream's in-process engine, for CPU machines.

    PYTHONPATH=.venv-sglang python tools/sglang_standin.py --model DIR --port P   (or: spear-stream serve-standin)

SGLang's server needs CUDA below its HTTP layer, but the HTTP layer itself (the FastAPI app of
``sglang.srt.entrypoints.http_server``: routes, request classes, sampling-parameter validation, status codes and
error bodies) runs anywhere. Every route reaches the engine through one object, the tokenizer manager; this file
replaces that object with :class:`EngineManager`, backed by :class:`spear_stream.rollout.hf.HFEngine`. So the
requests our client sends are parsed and validated by SGLang's code at the pinned version (``make setup``
installs it into ``.venv-sglang``, never into the project's venv), and the tokens and log-probs are real.

What the manager implements: ``/generate`` (single and batch, non-streaming), ``/abort_request``,
``/pause_generation`` (every mode behaves as ``abort``: running requests end with their partial tokens and new
ones wait for ``/continue_generation``), ``/update_weights_from_disk`` (safetensors directory), ``/model_info``
(with ``weight_version``), ``/health_generate``, ``/flush_cache``, ``/get_load``. The NCCL weight routes are
added by the weight-sync work. ``--strict`` (default) also answers 400 to a request field SGLang would silently
ignore (a misspelled knob), so the client's tests catch it.

This is a test and laptop tool: it imports sglang, which the spear_stream package never does.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_LOG = logging.getLogger("sglang_standin")


def _finish(reason: str, tokens: list[int], message: str = "") -> dict[str, Any]:
    if reason == "stop":
        return {"type": "stop", "matched": tokens[-1] if tokens else None}
    if reason == "length":
        return {"type": "length", "length": len(tokens)}
    return {"type": "abort", "message": message or "Abort before prefill" if not tokens else "aborted"}


class EngineManager:
    """The subset of SGLang's TokenizerManager that the native routes call, over an in-process engine."""

    def __init__(
        self, server_args, weight_version: str, seed: int, max_batch: int, strict: bool,
        faults: dict[int, str] | None = None, dist_timeout_s: float = 120.0,
    ) -> None:  # fmt: skip
        from sglang.srt.managers.io_struct import GenerateReqInput
        from sglang.srt.managers.tokenizer_manager import ServerStatus
        from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSamplingParams

        from spear_stream.models import load_model, load_tokenizer
        from spear_stream.rollout.hf import HFEngine

        self._sglang_sampling = SGLangSamplingParams
        self.request_fields = {f.name for f in dataclasses.fields(GenerateReqInput)}
        self.sampling_fields = set(SGLangSamplingParams.__struct_fields__)
        self.strict = strict
        model_dir = server_args.model_path
        self.model_path = self.served_model_name = model_dir
        model = load_model(model_dir)
        tokenizer = load_tokenizer(model_dir)
        self.vocab_size = int(model.config.vocab_size)
        self.engine = HFEngine(model, seed=seed, pad_id=tokenizer.pad_token_id or 0, max_batch=max_batch)
        self.weight_version = weight_version
        self.engine.version = int(weight_version) if weight_version.isdigit() else 0
        self.model_config = SimpleNamespace(
            vocab_size=self.vocab_size,
            is_image_understandable_model=False,
            is_audio_understandable_model=False,
            hf_config=model.config,
        )
        self.server_args = server_args
        self.is_generation = True
        self.server_status = ServerStatus.Up
        self.gracefully_exit = False
        self.last_receive_tstamp = 0.0
        self.rid_to_state: dict[str, Any] = {}
        self.paused = False
        self._resumed: asyncio.Event | None = None
        self.running = 0
        self.updates = 0
        self.update_calls = 0
        self.faults = faults or {}
        self.dist_timeout_s = dist_timeout_s
        self.groups: dict[str, Any] = {}

    # ------------------------------------------------------------------ state the routes read
    def config_value(self, key: str) -> Any:
        return {"weight_version": self.weight_version}.get(key)

    def is_ready(self) -> bool:
        return True

    def auto_create_handle_loop(self) -> None:
        pass

    async def get_internal_state(self) -> list[dict]:
        return [{"weight_version": self.weight_version}]

    def _event(self) -> asyncio.Event:
        if self._resumed is None:
            self._resumed = asyncio.Event()
            self._resumed.set()
        return self._resumed

    # ------------------------------------------------------------------ generation
    def _check_fields(self, body: dict[str, Any]) -> None:
        if not self.strict:
            return
        unknown = sorted(set(body) - self.request_fields)
        params = body.get("sampling_params") or {}
        for item in params if isinstance(params, list) else [params]:
            unknown += [f"sampling_params.{k}" for k in sorted(set(item) - self.sampling_fields)]
        if unknown:
            raise ValueError(f"stand-in (strict): SGLang would silently ignore {unknown}")

    def _sampling(self, raw: dict[str, Any]):
        from spear_stream.rollout.engine import SamplingParams

        params = self._sglang_sampling(**raw)  # SGLang's own parsing and validation
        params.normalize(None)
        params.verify(self.vocab_size)
        top_k = params.top_k if params.top_k and params.top_k > 0 else 0
        return SamplingParams(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=top_k if params.temperature > 0 else 0,
            stop_ids=tuple(params.stop_token_ids or ()),
        )

    async def generate_request(self, obj, request=None):
        """SGLang's contract: an async generator yielding one response dict (a list of them for a batch)."""
        if request is not None and request.url.path.endswith("/generate"):
            self._check_fields(await request.json())
        obj.normalize_batch_and_arguments()
        items = [obj] if obj.is_single else [obj[i] for i in range(obj.batch_size)]
        jobs = []
        for item in items:
            if not item.input_ids:
                raise ValueError(
                    "the stand-in serves input_ids only (launch SGLang with --skip-tokenizer-init)"
                )
            jobs.append((item.rid, list(item.input_ids), self._sampling(item.sampling_params or {})))
        outputs = await asyncio.gather(
            *(self._one(rid, ids, params, obj.return_logprob) for rid, ids, params in jobs)
        )
        self.last_receive_tstamp = time.time()
        yield outputs[0] if obj.is_single else outputs

    async def _one(self, rid: str, input_ids: list[int], params, return_logprob) -> dict[str, Any]:
        await self._event().wait()  # held, not rejected, while paused
        self.running += 1
        try:
            gen = await self.engine.generate(input_ids, params, rid=rid)
        finally:
            self.running -= 1
        meta: dict[str, Any] = {
            "id": rid,
            "finish_reason": _finish(gen.finish_reason, gen.token_ids),
            "prompt_tokens": len(input_ids),
            "completion_tokens": len(gen.token_ids),
            "cached_tokens": 0,
            "weight_version": self.weight_version,
        }
        if return_logprob:
            meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(gen.logprobs, gen.token_ids)]
        return {"output_ids": gen.token_ids, "meta_info": meta}

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.engine.abort(None if abort_all else rid)

    def create_abort_task(self, obj):
        return None

    async def pause_generation(self, obj) -> None:
        """Every mode as ``abort``: new requests wait; running ones end now with their partial tokens."""
        self.paused = True
        self._event().clear()
        self.engine.abort()
        while self.running:
            self.engine.abort()
            await asyncio.sleep(0.005)

    async def continue_generation(self, obj) -> None:
        self.paused = False
        self._event().set()

    async def flush_cache(self, timeout_s: float = 0.0):
        ok = self.running == 0
        return SimpleNamespace(success=ok, message="" if ok else "requests are running; nothing flushed")

    # ------------------------------------------------------------------ weights
    async def _wait_idle(self, abort: bool) -> int:
        """SGLang's writer lock: an update waits for running requests (or aborts them)."""
        n = self.running
        while self.running:
            if abort:
                self.engine.abort()
            await asyncio.sleep(0.005)
        return n

    async def update_weights_from_disk(self, obj, request=None):
        from safetensors.torch import load_file

        if (fault := await self._fault()) is not None:
            return (*fault, 0)
        paused = await self._wait_idle(bool(obj.abort_all_requests))
        try:
            files = sorted(Path(obj.model_path).glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors under {obj.model_path}")
            state: dict = {}
            for f in files:
                state.update(load_file(str(f)))
            version = int(obj.weight_version) if obj.weight_version is not None else self.engine.version
            self.engine.load_weights(state, version)
        except Exception as exc:  # SGLang answers {"success": false} with the reason
            return False, f"Failed to update weights: {exc}", paused
        if obj.weight_version is not None:
            self.weight_version = str(obj.weight_version)
        self.model_path = obj.model_path
        self.updates += 1
        message = "Succeeded to update model weights."
        if obj.weight_version is not None:
            message += f" Weight version updated to {obj.weight_version}."
        return True, message, paused

    # ------------------------------------------------------------------ weight-update groups (sglang_nccl)
    async def init_weights_update_group(self, obj, request=None):
        """Join the learner's group the way SGLang does (its own ``init_custom_process_group``)."""
        import datetime

        from sglang.srt.utils.common import init_custom_process_group

        def join():
            return init_custom_process_group(
                backend=obj.backend, init_method=f"tcp://{obj.master_address}:{obj.master_port}",
                world_size=obj.world_size, rank=obj.rank_offset, group_name=obj.group_name,
                timeout=datetime.timedelta(seconds=self.dist_timeout_s),
            )  # fmt: skip

        try:
            self.groups[obj.group_name] = await asyncio.to_thread(join)
        except Exception as exc:
            return False, f"Failed to init weight update group: {exc}"
        return True, "Succeeded to initialize custom process group."

    async def destroy_weights_update_group(self, obj, request=None):
        import torch.distributed as dist

        group = self.groups.pop(obj.group_name, None)
        if group is None:
            return False, f"group {obj.group_name} does not exist"
        dist.destroy_process_group(group)
        return True, "Succeeded to destroy custom process group."

    async def update_weights_from_distributed(self, obj, request=None):
        """Receive a bucket broadcast from the learner (rank 0) and load it, as SGLang's weight updater does."""
        import torch
        import torch.distributed as dist
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

        if (fault := await self._fault()) is not None:
            return fault
        group = self.groups.get(obj.group_name)
        if group is None:
            return (
                False,
                f"Group {obj.group_name} not in {list(self.groups)}. Call init_weights_update_group first.",
            )
        await self._wait_idle(bool(obj.abort_all_requests))

        live = (
            self.engine.model.state_dict()
        )  # the server is paused: tensors may land in the weights directly

        def receive():
            if obj.load_format == "flattened_bucket":
                bucket = FlattenedTensorBucket.empty(obj.names, obj.dtypes, obj.shapes, "cpu")
                dist.broadcast(bucket.get_flattened_tensor(), src=0, group=group)
                return bucket.reconstruct_tensors()
            out, works = [], []
            for name, dtype, shape in zip(obj.names, obj.dtypes, obj.shapes):
                target = live.get(name)
                dtype = getattr(torch, dtype)
                in_place = target is not None and list(target.shape) == list(shape) and target.dtype == dtype
                tensor = target if in_place else torch.empty(shape, dtype=dtype)
                # as SGLang's receiver: every broadcast posted, then awaited; a failure leaves the weights
                # partly updated (SGLang says so too: discard them), which the learner's recovery reloads
                works.append(dist.broadcast(tensor, src=0, group=group, async_op=True))
                if not in_place:
                    out.append((name, tensor))
            for work in works:
                work.wait()
            return out

        try:
            named = await asyncio.to_thread(receive)
            version = int(obj.weight_version) if obj.weight_version is not None else self.engine.version
            self.engine.weights_changed(version)  # tensors received into the weights: new version, no old KV
            if named:
                self.engine.load_weights(dict(named), version, partial=True)
        except Exception as exc:
            return False, f"Failed to update parameter online: {exc}. The weights are partially updated."
        if obj.weight_version is not None:
            self.weight_version = str(obj.weight_version)
        self.updates += 1
        return True, "Succeeded to update parameter online."

    async def _fault(self):
        """Fault injection for tests (``--fault KIND:N``): the N-th weight update fails, hangs or kills us."""
        self.update_calls += 1
        kind = self.faults.get(self.update_calls)
        if kind == "update_fail":
            return False, "injected fault: update failed"
        if kind == "update_hang":
            await asyncio.sleep(3600)
        if kind == "update_exit":
            os._exit(17)
        return None

    async def update_weight_version(self, obj) -> None:
        self.weight_version = str(obj.new_version)
        if self.weight_version.isdigit():
            self.engine.version = int(self.weight_version)


def build_app(args: argparse.Namespace):
    import sglang.srt.entrypoints.http_server as http_server
    from sglang.srt import runtime_context
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(
        model_path=args.model, skip_tokenizer_init=True, device="cpu", weight_version=args.weight_version,
        host=args.host, port=args.port,
    )  # fmt: skip
    runtime_context.publish(server_args, role="tokenizer")  # the config the routes read (get_serving() ...)
    faults = {int(n): kind for kind, n in (f.split(":") for f in args.fault)}
    manager = EngineManager(
        server_args, args.weight_version, args.seed, args.max_batch, args.strict, faults, args.dist_timeout_s
    )
    http_server.set_global_state(
        http_server._GlobalState(tokenizer_manager=manager, template_manager=None, scheduler_info={})
    )
    return http_server.app, manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="HF model directory served by the in-process engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weight-version", default="0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--no-strict", dest="strict", action="store_false")
    parser.add_argument("--dist-timeout-s", type=float, default=120.0, help="weight-update group timeout")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="KIND:N",
        help="tests: the N-th weight update (1-based) fails (update_fail), hangs (update_hang) or exits (update_exit)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import torch
    import uvicorn

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    app, _ = build_app(args)
    print(f"sglang stand-in: serving {args.model} on http://{args.host}:{args.port}", flush=True)
    # lifespan "off": SGLang's lifespan starts its OpenAI and gRPC layers, which the native routes do not use
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=3
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
