"""The typed configuration sections: every field's type, default and allowed range.

``spec(lo=..., hi=...)`` records a field's range and ``Literal`` types its choices; :mod:`.loader` enforces both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envs.config_fields import ConfigError, spec

__all__ = ["ConfigError", "spec"]  # re-exported: the trainer's config API


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class ScheduleConfig:
    """A value as a function of the learner step t (docs/algorithm.md section 7).

    constant: start. linear: start -> end over horizon. cosine_down / cosine_up: half-cosine from start to end
    over horizon (identical shapes; the names say the intent). step: start before horizon, end from it on.
    After the horizon every schedule holds ``end`` (constant holds ``start``).
    """

    kind: Literal["constant", "linear", "cosine_up", "cosine_down", "step"] = "constant"
    start: float = 0.0
    end: float = 0.0
    horizon: int = spec(1, lo=1)


@dataclass
class ModelConfig:
    path: str = spec("runs/models/tiny", help="any local HF causal-LM directory")
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class EnvConfig:
    name: str = "guess_number"
    params: dict[str, Any] = field(
        default_factory=dict
    )  # validated by the environment's own Params dataclass
    group_size: int = spec(8, lo=1, help="G: rollouts per task")
    groups_per_step: int = spec(16, lo=1, help="tasks per learner batch")
    eval_split: str = "test"


@dataclass
class RolloutConfig:
    engine: Literal["hf", "sglang"] = "hf"
    num_workers: int = spec(1, lo=0)
    temperature: float = spec(1.0, lo=0.0)
    top_p: float = spec(1.0, lo=0.0, hi=1.0, lo_open=True)
    top_k: int = spec(0, lo=0, help="0 = whole vocabulary")
    max_new_tokens: int = spec(32, lo=1, help="per assistant turn")
    max_seq_len: int = spec(1024, lo=8, help="whole row: prompt + all turns")
    batch_size: int = spec(128, lo=1, help="in-process engine: most sequences decoded together")
    max_concurrent_episodes: int = spec(128, lo=1, help="episodes in flight per worker (and in evaluation)")
    sglang_urls: list[str] = field(default_factory=list)  # rollout.engine = "sglang": the servers' base URLs
    request_timeout_s: float = spec(600.0, lo=0.0, lo_open=True, help="server engines: one request's limit")
    # a turn cut short by a weight update: "resume" it (its later tokens carry the new version) or "drop" its group
    partial: Literal["resume", "drop"] = "resume"
    # `spear-stream train` starts the SGLang servers itself from this command template (rollout/servers.py):
    # placeholders {python} {model} {port} {nccl_port} {gpu} {index}; "" = use rollout.sglang_urls as given
    sglang_launch: str = ""
    sglang_servers: int = spec(0, lo=0, help="servers to launch (0: one per entry of rollout.sglang_gpus)")
    sglang_gpus: list[int] = field(default_factory=list)  # one server per GPU id (CUDA_VISIBLE_DEVICES)
    sglang_python: str = spec(
        "python", help="the SGLang environment's interpreter ({python} in the template)"
    )
    sglang_start_timeout_s: float = spec(
        600.0, lo=0.0, lo_open=True, help="launched servers: time to healthy"
    )
    num_threads: int = spec(1, lo=1)


@dataclass
class LearnerConfig:
    lr: float = spec(1e-4, lo=0.0, lo_open=True)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = spec(0.01, lo=0.0)
    grad_clip: float = spec(1.0, lo=0.0)
    steps: int = spec(200, lo=0)
    max_groups: int = spec(
        0, lo=0, help="also stop once this many fresh groups were trained on (equal-data budgets); 0 = off"
    )
    minibatches: int = spec(1, lo=1, help="optimizer steps per learner batch (one epoch)")
    micro_batch_tokens: int = spec(16384, lo=1)
    world_size: int = spec(1, lo=1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    mixed_precision: Literal["none", "bfloat16", "float16"] = (
        "none"  # FSDP2 param dtype; grads reduce in fp32
    )
    num_threads: int = spec(1, lo=1)


@dataclass
class RewardConfig:
    invalid_penalty: float = spec(0.1, lo=0.0)
    tool_reward_per_call: float = spec(0.1, lo=0.0)
    tool_reward_cap: float = spec(1.0, lo=0.0)
    tool_reward_variant: Literal["episode", "correct_only"] = "episode"  # correct_only: Qwen3 math recipe


@dataclass
class AdvantageConfig:
    estimator: Literal["grpo", "gigpo"] = "grpo"
    std_norm: bool = True  # Dr.BoT trick 3 turns it off
    eps: float = spec(1e-6, lo=0.0)
    gigpo_gamma: float = spec(0.95, lo=0.0, hi=1.0)
    gigpo_omega: float = spec(1.0, lo=0.0)
    gigpo_mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm"


@dataclass
class CovConfig:
    """Clip-Cov / KL-Cov token selection (arXiv 2505.22617)."""

    mode: Literal["none", "clip_cov", "kl_cov"] = "none"
    ratio: float = spec(2e-4, lo=0.0, hi=1.0)
    lb: float = 1.0
    ub: float = 5.0
    kl_coef: float = spec(0.1, lo=0.0)


@dataclass
class LossConfig:
    kind: Literal["ppo", "decoupled"] = "ppo"
    clip_low: float = spec(0.2, lo=0.0, hi=1.0)
    clip_high: float = spec(0.2, lo=0.0)
    dual_clip: float = spec(0.0, lo=0.0, help="c for A<0 (0 = off; Dr.BoT uses 10)")
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    norm_len: int = spec(0, lo=0, help="divisor for seq-mean-token-sum-norm; 0 = rollout.max_seq_len")
    is_cap: float = spec(5.0, lo=1.0, help="decoupled: truncate pi_prox/pi_behav at this cap")
    entropy_coef: float = spec(0.0, lo=0.0)
    kl_coef: float = spec(0.0, lo=0.0, help="KL to a frozen reference (0 = off, Dr.BoT trick 1)")
    cov: CovConfig = field(default_factory=CovConfig)


@dataclass
class FilterConfig:
    """Dr.BoT row filters 5-8 (zero the loss mask, keep the row in group stats) and the group filter 9."""

    overlong: bool = False
    incomplete: bool = False
    repetitive: bool = False
    unreadable: bool = False
    ngram: int = spec(20, lo=1)
    ngram_repeats: int = spec(10, lo=2)
    group_keep_ratio: float = spec(1.0, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class AlgoConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class SILConfig:
    """Self-imitation replay (docs/algorithm.md section 6)."""

    enabled: bool = False
    mode: Literal["stream", "paper"] = "stream"
    # stream mode: "fixed" keeps the batch at groups_per_step groups' worth of rows, sil_fraction(t) of them replay
    # (fewer fresh groups per step, same learner cost per step); "extra" adds the replay rows on top of
    # groups_per_step fresh groups (each step costs 1 / (1 - sil_fraction) as much)
    stream_batch: Literal["fixed", "extra"] = "fixed"
    capacity: int = spec(2048, lo=1, help="B_sil")
    baseline_size: int = spec(10240, lo=1, help="D_R FIFO length")
    tolerate_steps: int = spec(5, lo=0)
    require_tool_call: bool = False  # math: entry needs at least one tool call
    replay_strict: bool = False  # False: replay A_tilde >= 0 (agent code); True: > 0 (math code)
    recalibrate_std: bool = False
    fire_factor: float = spec(1.5, lo=1.0)
    alpha: float = spec(1.0, lo=0.0)
    beta_start: float = spec(0.4, lo=0.0, hi=1.0)
    beta_steps: int = spec(200, lo=1)
    cov: CovConfig = field(default_factory=lambda: CovConfig(mode="clip_cov", ratio=0.02, lb=2.0, ub=60.0))


@dataclass
class CurriculumConfig:
    mu: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 0.0, 0.0, 1))
    gamma: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("cosine_up", 0.0, 1.0, 200))
    sil_fraction: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 0.25, 0.25, 1))
    sync_every: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 1.0, 1.0, 1))
    max_staleness: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("constant", 2.0, 2.0, 1))


@dataclass
class SyncConfig:
    mode: Literal["async", "sync"] = "async"
    method: Literal["dist", "disk", "shm", "sglang_disk", "sglang_nccl"] = "disk"
    timeout_s: float = spec(120.0, lo=0.0, lo_open=True)
    host: str = spec(
        "127.0.0.1", help="learner rank 0's address as workers and servers reach it (dist, sglang_nccl)"
    )
    # sglang_nccl: the ports weight-update groups may use (a fresh one per group setup)
    port_range: list[int] = field(default_factory=lambda: [29600, 29699])
    bucket_mb: int = spec(512, lo=1, help="tensors per broadcast bucket (dist) or update call (sglang_nccl)")


@dataclass
class TransportConfig:
    host: str = "127.0.0.1"
    port: int = spec(0, lo=0, hi=65535, help="0 = pick a free port")
    max_message_mb: float = spec(256.0, lo=0.0, lo_open=True)
    run_token: str = ""  # empty: a random token per run
    credits_per_worker: int = spec(4, lo=1)
    # encrypt the worker links with ZeroMQ CURVE (for links beyond the loopback); workers read the learner's public
    # key from run_dir/connect.json. Authentication is on either way (a challenge on the run token).
    curve: bool = False


@dataclass
class ReplayConfig:
    capacity: int = spec(8192, lo=1, help="rows in the fresh buffer")
    on_disk: bool = True


@dataclass
class CheckpointConfig:
    every: int = spec(0, lo=0, help="learner steps between checkpoints (0 = only at the end and on a stop)")
    keep_last: int = spec(0, lo=0, help="keep only the newest N checkpoints (0 = keep every one)")
    stop_timeout_s: int = spec(
        300, lo=1, help="on SIGTERM/Ctrl-C under torchrun: seconds ranks get to save the stop checkpoint"
    )


@dataclass
class EvalConfig:
    episodes: int = spec(256, lo=0)
    temperature: float = spec(1.0, lo=0.0)
    top_p: float = spec(1.0, lo=0.0, hi=1.0, lo_open=True, help="nucleus sampling of sampled evaluation")
    greedy: bool = True
    seed: int = 12345
    before_after: bool = True


@dataclass
class SFTConfig:
    steps: int = spec(300, lo=0)
    lr: float = spec(1e-3, lo=0.0, lo_open=True)
    batch_episodes: int = spec(64, lo=1)
    demos: int = spec(3000, lo=1, help="expert episodes generated for the warm start")
    out: str = ""  # default: <run_dir>/sft


@dataclass
class LogConfig:
    every: int = spec(1, lo=1)
    tensorboard: bool = False
    progress: bool = True


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    run_dir: str = ""  # default runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    sil: SILConfig = field(default_factory=SILConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")
