"""SGLangEngine's routing, retries, failover and response checks, against scripted HTTP answers (no server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from spear_stream.rollout.engine import EngineError, SamplingParams
from spear_stream.rollout.sglang import SGLangEngine, parse_generation

A, B = "http://a:1", "http://b:1"


def ok_response(request: httpx.Request, version: str = "3") -> httpx.Response:
    body = __import__("json").loads(request.content)
    n = body["sampling_params"]["max_new_tokens"]
    meta = {
        "id": body["rid"],
        "finish_reason": {"type": "length", "length": n},
        "weight_version": version,
        "output_token_logprobs": [[-0.5, 7, None]] * n,
    }
    return httpx.Response(200, json={"output_ids": [7] * n, "meta_info": meta})


def engine_with(handler, urls=(A, B), **kw) -> SGLangEngine:
    return SGLangEngine(
        list(urls), transport=httpx.MockTransport(handler), backoff_s=0.001, probe_every_s=0.05, **kw
    )


def run(engine: SGLangEngine, n: int = 1, affinity=None):
    async def main():
        try:
            return await asyncio.gather(
                *(engine.generate([1, 2], SamplingParams(3), affinity=affinity) for _ in range(n))
            )
        finally:
            await engine.close()

    return asyncio.run(main())


def test_503_is_retried_and_a_server_that_keeps_failing_is_failed_over():
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if request.url.host == "a":
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return ok_response(request)

    engine = engine_with(handler, retries=2)
    (gen,) = run(engine, affinity=1)
    assert gen.token_ids == [7, 7, 7] and gen.versions == [3, 3, 3] and gen.logprobs == [-0.5] * 3
    assert calls == ["a", "a", "b"]  # least-loaded first (a), retried, then marked down and failed over
    assert engine.counters["engine/retries"] == 2 and engine.counters["engine/failovers"] == 1
    assert engine.stats()["engine/servers_down"] == 1.0


def test_timeouts_and_connection_errors_fail_over():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise httpx.ReadTimeout("slow", request=request)
        return ok_response(request)

    engine = engine_with(handler, retries=1)
    (gen,) = run(engine)
    assert gen.finish_reason == "length" and engine.counters["engine/failovers"] == 1


def test_every_server_down_is_an_error_after_the_deadline():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    engine = engine_with(handler, retries=1, timeout_s=0.3)
    with pytest.raises(EngineError, match=r"every SGLang server is down|failed \d+ times"):
        run(engine)


def test_a_down_server_rejoins_when_health_generate_answers():
    state = {"a_up": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a" and not state["a_up"]:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/health_generate":
            return httpx.Response(200)
        return ok_response(request)

    engine = engine_with(handler, retries=1)

    async def main():
        await engine.generate([1], SamplingParams(2))  # a fails, b answers; a is marked down
        assert engine.servers[0].down_since is not None
        state["a_up"] = True
        for _ in range(100):
            if engine.servers[0].down_since is None:
                break
            await asyncio.sleep(0.02)
        await engine.close()

    asyncio.run(main())
    assert engine.servers[0].down_since is None and engine.counters["engine/servers_rejoined"] == 1


def test_turns_of_one_episode_stay_on_one_server_and_new_episodes_go_to_the_least_loaded():
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return ok_response(request)

    engine = engine_with(handler)
    run(engine, affinity=42)
    engine.servers[0].outstanding = 5  # a is busy now: a new episode goes to b, episode 42 stays on a
    run(engine, affinity=42)
    run(engine, affinity=43)
    assert hosts == ["a", "a", "b"]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"output_token_logprobs": [[-0.5, 7, None]]}, "2 output ids but 1"),
        ({"output_token_logprobs": [[-0.5, 7, None], [0.5, 7, None]]}, "bad log-prob"),
        ({"output_token_logprobs": [[-0.5, 7, None], [None, 7, None]]}, "bad log-prob"),
        ({"output_token_logprobs": [[-0.5, 7, None], [-0.1, 8, None]]}, "bad log-prob"),
        ({"finish_reason": {"type": "exploded"}}, "unknown finish_reason"),
        ({"weight_version": "step-17"}, "weight_version"),
    ],
)
def test_malformed_responses_are_errors_naming_the_problem(meta, match):
    base = {
        "id": "r",
        "finish_reason": {"type": "stop", "matched": 7},
        "weight_version": "0",
        "output_token_logprobs": [[-0.5, 7, None], [-0.25, 7, None]],
    }
    with pytest.raises(EngineError, match=match):
        parse_generation({"output_ids": [7, 7], "meta_info": base | meta})


def test_per_token_weight_version_spans_are_used_where_reported():
    meta = {
        "id": "r",
        "finish_reason": {"type": "length", "length": 3},
        "weight_version": "5",
        "output_token_logprobs": [[-1.0, 7, None]] * 3,
        "weight_versions": [{"version": "4", "start": 0, "end": 2}, {"version": "5", "start": 2, "end": 3}],
    }
    _, gen = parse_generation({"output_ids": [7, 7, 7], "meta_info": meta})
    assert gen.versions == [4, 4, 5]


def test_training_against_an_unreachable_server_fails_at_start_naming_it(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from spear_stream.utils import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cmd = [
        sys.executable, "-m", "spear_stream.cli.main", "train", "--model.path", str(tiny_model_dir),
        "--run_dir", str(tmp_path / "run"), "--rollout.engine", "sglang", "--rollout.sglang_urls", url,
        "--sync.method", "sglang_disk", "--eval.episodes", "0",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"SGLang server {url} is not reachable" in out.stderr and "Traceback" not in out.stderr


def test_unknown_engine_and_mismatched_sync_method_are_config_errors():
    from spear_stream.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"rollout\.engine"):
        load_config(None, ["--rollout.engine", "vllm"])
    with pytest.raises(ConfigError, match=r"sync\.method"):
        load_config(None, ["--rollout.engine", "sglang", "--rollout.sglang_urls", A])  # sync.method disk
