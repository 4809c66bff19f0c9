"""In-process transformers engine: continuous batching over one shared KV cache, exact per-token log-probs.

Each ``await generate(prompt, params)`` is one request. A scheduler task decodes every running request together,
``chunk_size`` tokens at a time; between chunks it admits the requests that arrived (prefilled as a batch, then
merged into the running batch's cache), resolves the finished ones and applies a pending weight update, so a
request that spans an update carries both versions in its tokens. Rows are left-padded; position ids follow the
attention mask, so each row sees exactly its own prefix. The model runs in a worker thread (torch releases the
GIL), so the event loop keeps stepping environments while the model decodes.

Written instead of ``model.generate`` because we need, per token, the log-prob under the *same* distribution the
learner recomputes (HF's generate and torchrl's wrapper zero the first token's log-prob and apply top-k 50 by
default; docs/design.md section 10), the policy version of each token, and requests that join and leave a
running batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from spear_stream.rollout.engine import FinishReason, Generation, SamplingParams
from spear_stream.rollout.prefix_cache import PrefixCache


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


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    affinity: int | None = None  # the episode: its KV is kept for its next turn (prefix_cache.py)

    def result(self) -> Generation:
        return Generation(self.tokens, self.logprobs, self.versions, self.finish or "length")


class _Batch:
    """Running requests sharing one left-padded KV cache; ``logits`` [B, V] are the next tokens' logits."""

    def __init__(
        self, requests: list[_Request], cache: DynamicCache, attention: torch.Tensor, logits
    ) -> None:
        self.requests, self.cache, self.attention, self.logits = requests, cache, attention, logits

    @property
    def positions(self) -> torch.Tensor:
        return self.attention.sum(-1, keepdim=True)  # [B, 1]: the next token's position in its own sequence

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]  # type: ignore[union-attr,misc]

    @staticmethod
    def merge(a: _Batch, b: _Batch) -> _Batch:
        """One batch of both: the shorter cache is left-padded with masked zeros to the longer one's length."""
        width = max(a.attention.shape[1], b.attention.shape[1])

        def pad(
            x: torch.Tensor, n: int
        ) -> torch.Tensor:  # left-pad the sequence dim (-2 for KV, -1 for masks)
            if n == 0:
                return x
            shape = list(x.shape)
            dim = -2 if x.dim() == 4 else -1
            shape[dim] = n
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        pa, pb = width - a.attention.shape[1], width - b.attention.shape[1]
        kv = [
            (torch.cat([pad(ka, pa), pad(kb, pb)]), torch.cat([pad(va, pa), pad(vb, pb)]))
            for (ka, va), (kb, vb) in zip(a.layers(), b.layers())
        ]
        attention = torch.cat([pad(a.attention, pa), pad(b.attention, pb)])
        return _Batch(a.requests + b.requests, DynamicCache(kv), attention, torch.cat([a.logits, b.logits]))

    def keep(self, rows: list[int]) -> None:
        """Drop every other row, then the leading columns that no remaining row attends to."""
        index = torch.tensor(rows, dtype=torch.long)
        self.requests = [self.requests[i] for i in rows]
        self.attention, self.logits = self.attention[index], self.logits[index]
        first = int(self.attention.any(0).float().argmax())  # first column some row still uses
        kv = [(k[index, :, first:], v[index, :, first:]) for k, v in self.layers()]
        self.attention = self.attention[:, first:]
        self.cache = DynamicCache(kv)


class HFEngine:
    """Rollout engine over any local HF causal LM (the CPU default); see the module docstring."""

    def __init__(
        self,
        model,
        *,
        seed: int = 0,
        chunk_size: int = 8,
        pad_id: int = 0,
        max_batch: int = 128,
        prefix_cache_tokens: int = 1 << 18,
    ) -> None:
        self.model = model.eval()
        self.version = 0
        self.chunk_size, self.pad_id, self.max_batch = chunk_size, pad_id, max_batch
        self.generator = torch.Generator().manual_seed(seed)
        self._waiting: list[_Request] = []
        self._by_rid: dict[str, _Request] = {}
        self._batch: _Batch | None = None
        self._pending_weights: tuple[dict[str, torch.Tensor], int] | None = None
        self._busy = False  # a chunk is running in the worker thread
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_tokens = torch.zeros(0, dtype=torch.long)  # the running rows' newest tokens
        self.decode_steps = 0  # batched forward passes (prefills and decode steps), for benchmarks

    # ------------------------------------------------------------------ public
    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        affinity: int | None = None,
        rid: str | None = None,
    ) -> Generation:
        """``rid`` names the request for :meth:`abort` (an inference server built on this engine uses it)."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        self._ensure_scheduler()
        assert self._wake is not None
        request = _Request(list(prompt_ids), params, asyncio.get_running_loop().create_future())
        request.affinity = affinity
        if rid is not None:
            self._by_rid[rid] = request
        self._waiting.append(request)
        self._wake.set()
        try:
            return await request.future
        finally:
            if rid is not None:
                self._by_rid.pop(rid, None)

    def abort(self, rid: str | None = None) -> int:
        """End request ``rid`` (every request if None) at the next decode step, with ``finish_reason`` "abort"
        and the tokens it has; returns how many requests were flagged."""
        requests = (
            list(self._by_rid.values()) if rid is None else [self._by_rid[rid]] if rid in self._by_rid else []
        )
        for request in requests:
            if request.finish is None:
                request.finish = "abort"
        if requests and self._wake is not None:
            self._wake.set()
        return len(requests)

    def load_weights(
        self, state_dict: dict[str, torch.Tensor], version: int, *, partial: bool = False
    ) -> None:
        """Queue new weights; the scheduler loads them between decode chunks (now, if the engine is idle).

        ``partial``: ``state_dict`` is one bucket of a bucketed update (a server receiving weights over a
        collective loads each bucket as it arrives); it must not name tensors the model lacks.
        """
        self._check_keys(state_dict, partial)
        if partial and self._pending_weights is not None:  # buckets queued behind a running chunk add up
            state_dict = {**self._pending_weights[0], **state_dict}
        self._pending_weights = (state_dict, version)
        if not self._busy and self._batch is None and not self._waiting:
            self._apply_weights()
        elif self._wake is not None:
            self._wake.set()

    def weights_changed(self, version: int) -> None:
        """The model's tensors were written in place (an inference server receiving a broadcast while paused):
        adopt ``version`` and forget cached keys and values. Only while no request runs."""
        if self._busy or self._batch is not None:
            raise RuntimeError("weights written in place while requests are running")
        self.version = version
        self.prefix_cache.clear()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    # ------------------------------------------------------------------ scheduler
    def _ensure_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # a new event loop (each asyncio.run of an in-process source) gets its own scheduler task
            self._wake = asyncio.Event()
            self._batch = None
            self._task = loop.create_task(self._schedule())

    async def _schedule(self) -> None:
        assert self._wake is not None
        try:
            while True:
                if self._batch is None and not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                # Let the episodes whose turn just ended step their environments and send their next request:
                # they then join this chunk instead of waiting for the next one.
                for _ in range(3):
                    await asyncio.sleep(0)
                self._apply_weights()
                admit = self._admit()  # taken here, in the event loop's thread, where requests arrive
                self._busy = True
                try:
                    finished = await asyncio.to_thread(self._run_chunk, admit)
                finally:
                    self._busy = False
                for request in finished:
                    if not request.future.done():
                        request.future.set_result(request.result())
        except BaseException as exc:  # a model error fails every request instead of hanging them
            for request in [*(self._batch.requests if self._batch else []), *self._waiting]:
                if not request.future.done():
                    request.future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError("engine closed")
                    )
            self._batch, self._waiting = None, []
            raise

    def _admit(self) -> list[_Request]:
        """Waiting requests that fit into the running batch (aborted ones too: they retire without tokens)."""
        room = self.max_batch - (len(self._batch.requests) if self._batch else 0)
        aborted = [r for r in self._waiting if r.finish == "abort"]
        waiting = [r for r in self._waiting if r.finish is None]
        admit, self._waiting = waiting[: max(room, 0)], waiting[max(room, 0) :]
        return aborted + admit

    def _apply_weights(self) -> None:
        if self._pending_weights is None:
            return
        state, version = self._pending_weights
        self._pending_weights = None
        self.model.load_state_dict(
            state, strict=False
        )  # tied weights arrive once (lm_head shares embed_tokens)
        self.version = version
        self.prefix_cache.clear()  # keys and values of the old weights must not seed the new policy's turns

    def _check_keys(self, state_dict: dict[str, torch.Tensor], partial: bool = False) -> None:
        own = set(self.model.state_dict())
        missing = [] if partial else [k for k in own - set(state_dict) if not k.endswith("lm_head.weight")]
        unexpected = sorted(set(state_dict) - own)
        if missing or unexpected:
            raise ValueError(
                f"weight update does not match the model: missing={sorted(missing)} unexpected={unexpected}"
            )

    @torch.no_grad()
    def _run_chunk(self, admit: list[_Request]) -> list[_Request]:
        """Prefill ``admit`` into the running batch, decode up to ``chunk_size`` tokens, then drop the rows that
        finished (once per chunk: finished rows ride along until then); returns the requests that finished."""
        finished = [r for r in admit if r.finish == "abort"]  # aborted before prefill: no tokens
        admit = [r for r in admit if r.finish is None]
        if admit:
            new = self._prefill(admit)
            self._batch = new if self._batch is None else _Batch.merge(self._batch, new)
        batch = self._batch
        if batch is None:
            return finished
        for _ in range(self.chunk_size):
            self._sample(batch)
            if all(r.finish for r in batch.requests):
                break
            self._decode_step(batch)
        # One snapshot of the finish flags decides both lists: an abort flagged from the event loop after it is
        # retired with the next chunk, never dropped in between.
        done = [r.finish is not None for r in batch.requests]
        finished += [r for r, d in zip(batch.requests, done) if d]
        alive = [i for i, d in enumerate(done) if not d]
        self._keep_prefixes([r for r, d in zip(batch.requests, done) if d], batch)
        if not alive:
            self._batch = None
        elif len(alive) < len(batch.requests):
            batch.keep(alive)
            self._last_tokens = self._last_tokens[torch.tensor(alive)]
        return finished

    def _forward(self, input_ids, attention, positions, cache) -> torch.Tensor:
        self.decode_steps += 1
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache)
        return out.logits[:, -1, :]

    def _prefill(self, requests: list[_Request]) -> _Batch:
        """One forward over the admitted prompts; a prompt whose episode left KV in the prefix cache feeds only
        its new tokens. Row layout: [padding, cached prefix, padding, new tokens] (padding masked out), so the
        new tokens end at the same column and their positions continue each row's own prefix."""
        cached = [self.prefix_cache.take(r.affinity, r.prompt) for r in requests]
        width_c = max(n for n, _ in cached)
        width_s = max(len(r.prompt) - n for r, (n, _) in zip(requests, cached))
        b = len(requests)
        input_ids = torch.full((b, width_s), self.pad_id, dtype=torch.long)
        attention = torch.zeros((b, width_c + width_s), dtype=torch.long)
        positions = torch.zeros((b, width_s), dtype=torch.long)
        for i, (r, (n, _)) in enumerate(zip(requests, cached)):
            new = r.prompt[n:]
            input_ids[i, width_s - len(new) :] = torch.tensor(new)
            attention[i, width_c - n : width_c] = 1
            attention[i, width_c + width_s - len(new) :] = 1
            positions[i, width_s - len(new) :] = torch.arange(n, n + len(new))
        cache = DynamicCache()
        if width_c:
            cache = DynamicCache(self._stack_prefixes(cached, width_c))
        logits = self._forward(input_ids, attention, positions, cache)
        return _Batch(requests, cache, attention, logits)

    @staticmethod
    def _stack_prefixes(cached: list, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the rows' cached keys/values right-aligned in ``width`` columns (zeros where none)."""
        _, some = next((n, kv) for n, kv in cached if kv is not None)
        layers = []
        for layer, (k0, _) in enumerate(some):
            keys = k0.new_zeros((len(cached), k0.shape[1], width, k0.shape[3]))
            values = torch.zeros_like(keys)
            for i, (n, kv) in enumerate(cached):
                if kv is not None:
                    keys[i, :, width - n :], values[i, :, width - n :] = kv[layer][0][0], kv[layer][1][0]
            layers.append((keys, values))
        return layers

    def _keep_prefixes(self, finished: list[_Request], batch: _Batch) -> None:
        """Store the KV of each finished request of an episode for its next turn: the tokens fed to the model
        (the prompt and all generated tokens but the last), in order, without padding."""
        if self.prefix_cache.max_tokens <= 0:
            return
        rows = {id(r): i for i, r in enumerate(batch.requests)}
        for r in finished:
            if r.affinity is None or not r.tokens:
                continue
            i = rows[id(r)]
            fed = len(r.prompt) + len(r.tokens) - 1
            columns = batch.attention[i].nonzero().squeeze(1)[:fed]
            kv = [
                (k[i : i + 1, :, columns].clone(), v[i : i + 1, :, columns].clone())
                for k, v in batch.layers()
            ]
            self.prefix_cache.put(r.affinity, r.prompt + r.tokens[:-1], kv)

    def _sample(self, batch: _Batch) -> None:
        """One token for every unfinished request from the pending logits; marks the ones that end."""
        tokens = torch.zeros(len(batch.requests), dtype=torch.long)
        logprobs = torch.zeros(len(batch.requests))
        by_params: dict[SamplingParams, list[int]] = {}
        for i, r in enumerate(batch.requests):
            if r.finish is None:
                by_params.setdefault(r.params, []).append(i)
        for params, rows in by_params.items():
            idx = torch.tensor(rows)
            tokens[idx], logprobs[idx] = sample_tokens(batch.logits[idx], params, self.generator)
        for rows in by_params.values():
            for i in rows:
                r = batch.requests[i]
                token = int(tokens[i])
                r.tokens.append(token)
                r.logprobs.append(float(logprobs[i]))
                r.versions.append(self.version)
                if token in r.params.stop_ids:
                    r.finish = "stop"
                elif len(r.tokens) >= r.params.max_new_tokens:
                    r.finish = "length"
        self._last_tokens = tokens

    def _decode_step(self, batch: _Batch) -> None:
        positions = batch.positions
        ones = torch.ones((len(batch.requests), 1), dtype=torch.long)
        batch.attention = torch.cat([batch.attention, ones], 1)
        batch.logits = self._forward(self._last_tokens[:, None], batch.attention, positions, batch.cache)
