"""The rollout engine boundary: one ``await generate(prompt_ids, params)`` per episode turn.

An engine turns token ids into token ids, the log-prob of every sampled token (``log_softmax(logits / T)`` over
the whole vocabulary: what the learner recomputes) and the policy version that produced every token. Requests
are independent: the agent loop runs one asyncio task per episode, and an engine batches whatever requests are
waiting (the in-process engine's scheduler, or an inference server's).

Weight updates are not part of this protocol: each engine kind has its own path (the in-process engine loads a
state dict between decode chunks, ``HFEngine.load_weights``; a server engine is updated through the server's
own routes by the learner, ``weightsync/sglang.py``). Adding an engine: ``docs/design.md`` section 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary
    stop_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_ids", tuple(sorted(set(self.stop_ids))))


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the (temperature-scaled) policy
    versions: list[int]  # policy version that produced each token
    finish_reason: FinishReason  # "abort": cut short (e.g. by a weight update); the agent loop resumes it

    def __post_init__(self) -> None:
        if not len(self.token_ids) == len(self.logprobs) == len(self.versions):
            raise ValueError(
                f"generation fields disagree: {len(self.token_ids)} tokens, {len(self.logprobs)} log-probs, "
                f"{len(self.versions)} versions"
            )


class RolloutEngine(Protocol):
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, *, affinity: int | None = None
    ) -> Generation:
        """One continuation of ``prompt_ids`` (never empty), at most ``params.max_new_tokens`` long.

        ``affinity``: requests with the same key (the turns of one episode) should go to the same replica, whose
        prefix cache holds the conversation; engines with one replica ignore it.
        """
        ...

    async def close(self) -> None:
        """Release the engine's resources (scheduler task, HTTP connections)."""
        ...


class EngineError(RuntimeError):
    """An engine cannot serve a request (server down and no other, bad response); the message says which."""


def make_engine(cfg, model_dir: str | None = None, *, seed: int = 0) -> RolloutEngine:
    """The engine ``rollout.engine`` names. ``hf``: the model in ``model_dir`` (default ``model.path``), in this
    process. ``sglang``: the servers of ``rollout.sglang_urls`` (checked at start: an unreachable server is an
    :class:`EngineError` naming its URL and what it answered)."""
    from spear_stream.config import ConfigError

    kind = cfg.rollout.engine
    if kind == "hf":
        from spear_stream.models import load_model, load_tokenizer
        from spear_stream.rollout.hf import HFEngine

        path = model_dir or cfg.model.path
        tokenizer = load_tokenizer(path)
        return HFEngine(
            load_model(path, cfg.model.dtype),
            seed=seed,
            pad_id=tokenizer.pad_token_id or 0,
            max_batch=cfg.rollout.batch_size,
        )
    if kind == "sglang":
        from spear_stream.rollout.sglang import SGLangEngine

        if not cfg.rollout.sglang_urls:
            raise ConfigError("rollout.engine = 'sglang' needs rollout.sglang_urls (the servers' base URLs)")
        return SGLangEngine.connect(cfg.rollout.sglang_urls, timeout_s=cfg.rollout.request_timeout_s)
    raise ConfigError(f"config key 'rollout.engine' = {kind!r} is not one of ['hf', 'sglang']")
