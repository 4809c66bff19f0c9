"""Shared fixtures: one tiny model per test session (built offline in seconds), one thread per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from spear_stream.models import TinySpec, build_tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(TinySpec(out=str(out), envs="guess_number", corpus_episodes=300, seed=0))
    return out


@pytest.fixture(scope="session")
def demo_like_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model after an SFT on guess-number experts (about 17% sampled success, 3 minutes on one core):
    advantages are non-zero, the self-imitation buffer fills (a random-init model never succeeds), and a few
    dozen RL steps raise success visibly (the SGLang training test checks that)."""
    from spear_stream.config import load_config
    from spear_stream.learner.sft import run_sft

    out = tmp_path_factory.mktemp("models") / "tiny-sft"
    cfg = load_config(
        ROOT / "configs" / "tiny_guess.toml",
        [
            "--model.path",
            str(tiny_model_dir),
            "--sft.steps",
            "200",
            "--sft.demos",
            "1500",
            "--sft.batch_episodes",
            "64",
            "--log.progress",
            "false",
        ],
    )
    return run_sft(cfg, out)
