"""Seconds per weight sync and GB/s for each method, learner (this process) -> one worker (another process).

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_weightsync.py [--methods disk,shm,dist] [--repeats 5]
        [--models tiny,100m] [--bucket-mb 64] [--sglang]

``--sglang`` adds ``sglang_nccl`` (gloo on CPU) into a stand-in SGLang server (``tools/sglang_standin.py``,
needs ``make setup``): the whole update sequence (pause, bucketed broadcasts with their HTTP calls, the server
loading each bucket, version check, continue), next to a raw gloo broadcast of the same buckets to a plain
receiving process, measured in the same run; the ratio is raw seconds / sglang_nccl seconds.

Models: ``tiny`` (the built-in tiny model, built with build_tiny in a temp dir), ``100m`` (a random-init
~110M-parameter Qwen2: hidden 768, 12 layers, vocab 32000, tied embeddings; created in memory, fp32) and
``500m`` (~360M parameters: hidden 896, 24 layers, intermediate 4864, like Qwen2-0.5B with a 32k vocabulary).
Per sync: ``publish_s`` is how long the learner's thread is blocked in ``publish()``; ``fetch_s`` the worker's
``fetch()``; ``apply_s`` the worker copying the tensors into its "parameters" (what ``load_state_dict`` does;
for disk, whose fetch returns memory-mapped tensors, the file is read here); ``total_s`` from the start of
publish to the worker's reply (publish + fetch + apply); GB/s = payload bytes / total_s.
The figures are medians over ``--repeats`` syncs (after one warm-up sync per method and model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spear_stream.utils import set_threads
from spear_stream.weightsync import make_publisher, prepare_state_dict
from spear_stream.weightsync.probe import ProbeProcess


def tiny_state_dict(workdir: Path) -> dict[str, torch.Tensor]:
    from spear_stream.models import TinySpec, build_tiny, load_model

    model_dir = build_tiny(TinySpec(out=str(workdir / "tiny"), corpus_episodes=100))
    return load_model(model_dir).state_dict()


QWEN2_SHAPES = {  # hidden, intermediate, layers, heads: random-init Qwen2s of ~110M and ~360M parameters
    "100m": (768, 2048, 12, 12),
    "500m": (896, 4864, 24, 14),
}


def qwen2_config(name: str):
    from transformers import Qwen2Config

    hidden, intermediate, layers, heads = QWEN2_SHAPES[name]
    return Qwen2Config(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        tie_word_embeddings=True,
    )


def qwen2_state_dict(name: str) -> dict[str, torch.Tensor]:
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(qwen2_config(name)).state_dict()


def bench_one(method: str, state_dict, probe: ProbeProcess, workdir: Path, args) -> dict[str, float]:
    publisher = make_publisher(
        method, run_dir=workdir / f"run-{method}", timeout_s=args.timeout_s, bucket_mb=args.bucket_mb
    )
    rows: list[tuple[float, float, float, float]] = []
    try:
        for version in range(1, args.repeats + 2):  # version 1 is the warm-up
            start = time.perf_counter()
            announcement = publisher.publish(state_dict, version)
            published = time.perf_counter()
            reply = probe.request(announcement, timeout_s=args.timeout_s, apply=True)
            done = time.perf_counter()
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['message']}")
            if version > 1:
                rows.append((published - start, reply["seconds"], reply["apply_seconds"], done - start))
    finally:
        publisher.close()
    medians = [statistics.median(col) for col in zip(*rows)]
    return dict(zip(("publish_s", "fetch_s", "apply_s", "total_s"), medians))


def raw_gloo_receiver(port: int, sizes: list[int], rounds: int, done) -> None:
    """A second process in a 2-rank gloo group that receives ``rounds`` x the buckets and acks each round."""
    import torch.distributed as dist

    from spear_stream.weightsync.sglang_nccl import init_update_group

    group = init_update_group("gloo", "127.0.0.1", port, 2, 1, "raw_bench", 120.0)
    buffers = [torch.empty(n, dtype=torch.uint8) for n in sizes]
    for _ in range(rounds):
        for buffer in buffers:
            dist.broadcast(buffer, group_src=0, group=group)
        done.send(True)
    dist.destroy_process_group(group)


def bench_sglang(
    tensors: dict[str, torch.Tensor], model_dir: Path, workdir: Path, args
) -> tuple[float, float]:
    """(raw gloo seconds, sglang_nccl seconds) per sync of ``tensors``: medians over ``--repeats``."""
    import multiprocessing as mp
    import sys

    import torch.distributed as dist

    from spear_stream.utils import free_port
    from spear_stream.weightsync.buckets import flatten, plan_buckets
    from spear_stream.weightsync.sglang_nccl import SGLangNCCLPublisher, init_update_group

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import standin

    _, manifest = prepare_state_dict(tensors)
    buckets = plan_buckets(manifest, args.bucket_mb << 20)
    buffers = [b.view(torch.uint8) for b in flatten(tensors, buckets)]
    port, rounds = free_port(), args.repeats + 1
    parent, child = mp.Pipe()
    receiver = mp.get_context("spawn").Process(
        target=raw_gloo_receiver, args=(port, [b.numel() for b in buffers], rounds, child)
    )
    receiver.start()
    group = init_update_group("gloo", "127.0.0.1", port, 2, 0, "raw_bench", 120.0)
    raw = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for buffer in buffers:
            dist.broadcast(buffer, group_src=0, group=group)
        parent.recv()
        raw.append(time.perf_counter() - t0)
    receiver.join(30)
    dist.destroy_process_group(group)
    server = standin.start(model_dir, workdir)
    try:
        standin.wait_healthy(server)
        publisher = SGLangNCCLPublisher(
            [server.url], workdir / "sglang-weights", host="127.0.0.1", port_range=[29800, 29899], backend="gloo",
            model_dir=model_dir, timeout_s=args.timeout_s, bucket_bytes=args.bucket_mb << 20,
        )  # fmt: skip
        path = []
        for version in range(1, rounds + 1):
            t0 = time.perf_counter()
            publisher.publish(tensors, version)
            path.append(time.perf_counter() - t0)
            if publisher.last_metrics.get("sync/server_update_failures"):
                raise RuntimeError(f"sglang_nccl update failed: {publisher.last_metrics}")
        publisher.close()
    finally:
        server.stop(9)
    return statistics.median(raw[1:]), statistics.median(path[1:])  # the first of each is a warm-up


def save_model_dir(state_dict, workdir: Path, name: str) -> Path:
    """An HF directory (config, weights, the tiny tokenizer) for the stand-in server to load."""
    from transformers import Qwen2ForCausalLM

    from spear_stream.models import load_tokenizer

    out = workdir / name
    if name == "tiny":
        return workdir / "tiny"
    model = Qwen2ForCausalLM(qwen2_config(name))
    model.load_state_dict(state_dict, strict=False)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(workdir / "tiny").save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="disk,shm,dist")
    parser.add_argument("--models", default="tiny,100m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--sglang", action="store_true", help="also sglang_nccl vs raw gloo (see above)")
    args = parser.parse_args()
    set_threads(1)
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine: figures are noisy)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-weightsync-") as tmp:
        workdir = Path(tmp)
        probe = ProbeProcess()
        try:
            tiny = tiny_state_dict(workdir)  # also the tokenizer of every model directory the stand-in loads
            for model in args.models.split(","):
                state_dict = tiny if model == "tiny" else qwen2_state_dict(model)
                tensors, manifest = prepare_state_dict(state_dict)
                nbytes = sum(spec.nbytes for spec in manifest)
                params = sum(spec.numel for spec in manifest)
                print(
                    f"\n{model}: {params / 1e6:.1f}M parameters, {len(manifest)} tensors, {nbytes / 1e6:.1f} MB"
                )
                print(
                    f"  {'method':<6} {'publish_s':>10} {'fetch_s':>10} {'apply_s':>10} {'total_s':>10} {'GB/s':>8}"
                )
                for method in args.methods.split(","):
                    r = bench_one(method, tensors, probe, workdir, args)
                    gbps = nbytes / r["total_s"] / 1e9
                    print(
                        f"  {method:<6} {r['publish_s']:>10.4f} {r['fetch_s']:>10.4f} {r['apply_s']:>10.4f} "
                        f"{r['total_s']:>10.4f} "
                        f"{gbps:>8.2f}",
                        flush=True,
                    )
                if args.sglang:
                    raw_s, path_s = bench_sglang(
                        tensors, save_model_dir(state_dict, workdir, model), workdir, args
                    )
                    print(
                        f"  raw gloo broadcast {raw_s:.4f} s ({nbytes / raw_s / 1e9:.2f} GB/s); sglang_nccl into a "
                        f"stand-in {path_s:.4f} s ({nbytes / path_s / 1e9:.2f} GB/s): {raw_s / path_s:.0%} of raw",
                        flush=True,
                    )
        finally:
            probe.close()


if __name__ == "__main__":
    main()
