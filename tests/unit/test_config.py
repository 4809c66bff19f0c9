from pathlib import Path

import pytest

from spear_stream.config import Config, ConfigError, load_config, to_toml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_there_are_configs():
    assert len(CONFIGS) >= 1


def test_unknown_key_names_the_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[learner]\nlrr = 1e-5\n")
    with pytest.raises(ConfigError, match=r"learner\.lrr"):
        load_config(p)


def test_unknown_override_names_the_key():
    with pytest.raises(ConfigError, match=r"sil\.enabld"):
        load_config(None, ["--sil.enabld", "true"])


def test_out_of_range_value_names_the_key():
    with pytest.raises(ConfigError, match=r"learner\.lr.*out of range"):
        load_config(None, ["--learner.lr", "-1e-5"])
    with pytest.raises(ConfigError, match=r"rollout\.top_p"):
        load_config(None, ["--rollout.top_p", "1.5"])


def test_wrong_type_and_choice_name_the_key():
    with pytest.raises(ConfigError, match=r"learner\.steps.*integer"):
        load_config(None, ["--learner.steps", "ten"])
    with pytest.raises(ConfigError, match=r"algo\.advantage\.estimator"):
        load_config(None, ["--algo.advantage.estimator", "ppo"])


def test_unknown_env_param_names_the_key():
    with pytest.raises(ConfigError, match=r"env\.params\.nope"):
        load_config(None, ["--env.params", '{"nope": 1}'])


def test_overrides_apply_after_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\n[learner]\nlr = 3e-4\nsteps = 7\n')
    cfg = load_config(p, ["--learner.lr", "1e-5", "--sil.enabled=true", "--learner.betas", "0.9,0.95"])
    assert cfg.learner.lr == 1e-5 and cfg.learner.steps == 7 and cfg.sil.enabled
    assert cfg.learner.betas == [0.9, 0.95]


def test_extends_inherits_and_overrides(tmp_path):
    (tmp_path / "base.toml").write_text("[learner]\nlr = 3e-4\nsteps = 7\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[learner]\nsteps = 9\n')
    cfg = load_config(tmp_path / "child.toml")
    assert cfg.learner.lr == 3e-4 and cfg.learner.steps == 9


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, ["--learner.lr", "2e-5", "--env.params", '{"n_max": 31}'])
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


def test_command_help_lists_every_key_with_its_value_and_range(tmp_path, capsys):
    from spear_stream.cli.main import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spear-stream train")
    assert "--learner.max_groups 0  (int, [0, inf]); also stop once" in out
    assert "--sil.stream_batch fixed  ('fixed' | 'extra')" in out and "--sil.enabled false  (bool)" in out
    p = tmp_path / "c.toml"
    p.write_text("[sil]\nenabled = true\n")
    assert (
        main(["sft", "--config", str(p), "--learner.lr", "2e-5", "-h"]) == 0
    )  # values from the file and overrides
    out = capsys.readouterr().out
    assert "--sil.enabled true" in out and "--learner.lr 2e-05" in out
    assert main(["eval", "--nope", "1", "--help"]) == 2  # a bad key is still an error naming it
    assert "unknown config key 'nope'" in capsys.readouterr().err
