"""In-process transformers engine: batched lockstep sampling with a KV cache and exact per-token log-probs.

Written instead of ``model.generate`` because we need, per token, the log-prob under the *same* distribution the
learner recomputes (HF's generate/torchrl's wrapper zero the first token's log-prob and apply top-k=50 by
default; see docs/design.md section 10), the policy version of each token, and a hook between decode chunks to swap weights.
Prompts are left-padded; position ids follow the attention mask, so each row sees exactly its own prefix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

from spear_stream.rollout.engine import Generation, SamplingParams


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (tokens [B], logprobs [B]).

    The recorded log-prob is that of the temperature-scaled softmax (what the learner recomputes with the same
    temperature). With ``top_p < 1`` or ``top_k > 0`` the sample comes from the truncated distribution but the
    recorded log-prob stays that of the untruncated one (as SGLang/vLLM report it); use both = off for training.
    """
    logits = logits.float()
    if params.temperature == 0.0:
        tokens = logits.argmax(-1)
        logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs
    scaled_logp = torch.log_softmax(logits / params.temperature, -1)
    sample_logits = scaled_logp
    if params.top_k > 0 and params.top_k < sample_logits.shape[-1]:
        kth = sample_logits.topk(params.top_k, dim=-1).values[:, -1:]
        sample_logits = sample_logits.masked_fill(sample_logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logp, order = sample_logits.sort(-1, descending=True)
        cum = sorted_logp.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logp.softmax(-1) > params.top_p  # keep the first token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        sample_logits = sample_logits.masked_fill(drop, float("-inf"))
    probs = sample_logits.softmax(-1)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, scaled_logp.gather(-1, tokens[:, None]).squeeze(-1)


class HFEngine:
    """Rollout engine over any local HF causal LM (the CPU default)."""

    def __init__(self, model, *, seed: int = 0, chunk_size: int = 8, pad_id: int = 0) -> None:
        self.model = model.eval()
        self.version = 0
        self.chunk_size = chunk_size
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        # strict=False: tied weights arrive once (lm_head shares embed_tokens).
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ValueError(
                f"weight update does not match the model: missing={missing} unexpected={unexpected}"
            )
        self.version = version

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        between_chunks: Callable[[], None] | None = None,
    ) -> list[Generation]:
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            attention[i, width - len(prompt) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, past_key_values=cache
        )
        logits = out.logits[:, -1, :]
        next_position = attention.sum(-1, keepdim=True)
        stop = torch.tensor(sorted(set(params.stop_ids)), dtype=torch.long)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        versions: list[list[int]] = [[] for _ in range(batch)]
        finished = torch.zeros(batch, dtype=torch.bool)
        stopped = torch.zeros(batch, dtype=torch.bool)
        for step in range(params.max_new_tokens):
            new_tokens, new_logprobs = sample_tokens(logits, params, self.generator)
            for i in torch.nonzero(~finished).flatten().tolist():
                tokens[i].append(int(new_tokens[i]))
                logprobs[i].append(float(new_logprobs[i]))
                versions[i].append(self.version)
            hit_stop = torch.isin(new_tokens, stop) & ~finished
            stopped |= hit_stop
            finished |= hit_stop
            if bool(finished.all()) or step + 1 == params.max_new_tokens:
                break
            if between_chunks is not None and (step + 1) % self.chunk_size == 0:
                between_chunks()  # may load new weights: later tokens carry the new version
            attention = torch.cat([attention, torch.ones((batch, 1), dtype=torch.long)], dim=1)
            out = self.model(
                input_ids=new_tokens[:, None],
                attention_mask=attention,
                position_ids=next_position,
                past_key_values=cache,
            )
            next_position = next_position + 1
            logits = out.logits[:, -1, :]
        return [
            Generation(tokens[i], logprobs[i], versions[i], "stop" if bool(stopped[i]) else "length")
            for i in range(batch)
        ]
