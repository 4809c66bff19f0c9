"""Per-episode KV prefix cache of the in-process engine: a turn re-uses the keys and values of the conversation so
far instead of prefilling it again (what SGLang's radix cache does for the turns of one episode).

When a request with an ``affinity`` key (the episode's trajectory id) finishes, the engine stores the KV of its
tokens (the prompt and every generated token but the last, which was never fed back) under that key. The next
request with the same key re-uses the longest common prefix of those tokens and its prompt, and only the rest is
prefilled. Entries are evicted oldest first beyond ``max_tokens`` cached tokens, and all of them when the weights
change (keys and values computed by old weights would mix two policies into one forward).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, tokens, head_dim]


@dataclass
class CachedPrefix:
    tokens: list[int]
    kv: KV


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def put(self, key: int, tokens: list[int], kv: KV) -> None:
        self.pop(key)
        if not tokens or len(tokens) > self.max_tokens:
            return
        self._entries[key] = CachedPrefix(tokens, kv)
        self._tokens += len(tokens)
        while self._tokens > self.max_tokens:
            _, old = self._entries.popitem(last=False)
            self._tokens -= len(old.tokens)

    def pop(self, key: int) -> CachedPrefix | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._tokens -= len(entry.tokens)
        return entry

    def take(self, key: int | None, prompt: list[int]) -> tuple[int, KV | None]:
        """(reusable length, its KV) for ``prompt``: at most ``len(prompt) - 1`` tokens (the last one must be
        fed to get the next token's logits); the entry is consumed (the request will store a longer one)."""
        entry = self.pop(key) if key is not None else None
        if entry is None:
            return 0, None
        n = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
        if n <= 0:
            return 0, None
        self.hits += 1
        self.reused_tokens += n
        return n, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.kv]

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)
