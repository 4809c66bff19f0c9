"""What a run leaves behind: the final weights as an HF directory, and evaluations before and after RL."""

from __future__ import annotations

from pathlib import Path

import torch

from spear_stream.config import Config
from spear_stream.models import load_model
from spear_stream.rollout.evaluate import EvalResult, evaluate_model_dir


def export_hf(state: dict[str, torch.Tensor], cfg: Config, tokenizer, path: Path) -> None:
    """Save a full state dict as an HF model directory (config from ``model.path``), with the tokenizer."""
    model = load_model(cfg.model.path, cfg.model.dtype)
    model.load_state_dict(state, strict=False)  # a tied lm_head arrives once, as embed_tokens
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def evaluate_dir(cfg: Config, model_dir: str | Path, phase: str) -> dict[str, EvalResult]:
    """``{phase}/sampled`` (and ``{phase}/greedy`` if ``eval.greedy``) success of ``model_dir``, printed."""
    temperatures = {f"{phase}/sampled": cfg.eval.temperature} | (
        {f"{phase}/greedy": 0.0} if cfg.eval.greedy else {}
    )
    out = evaluate_model_dir(cfg, model_dir, temperatures)
    for key, r in out.items():
        print(f"eval {key}: success {r.success_rate:.1%} ± {r.stderr:.1%} (n={r.episodes})", flush=True)
    return out
