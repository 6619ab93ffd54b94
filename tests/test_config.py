import pytest

from rlvr.core.config import LOSS_NAMES, Config, ConfigError, load_config


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\nlearner:\n  lr: 3.0e-5\nalgorithm:\n  loss: cispo\n")
    cfg = load_config(path, ["learner.lr=1e-4", "algorithm.beta=0.01", "model.lora.rank=8", "ray.enabled=true"])
    assert cfg.steps == 5 and cfg.algorithm.loss == "cispo"
    assert cfg.learner.lr == 1e-4 and cfg.algorithm.beta == 0.01 and cfg.model.lora.rank == 8
    assert cfg.ray.enabled is True
    assert cfg.learner.micro_batch_tokens == Config().learner.micro_batch_tokens  # untouched default


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=x", "model.lora.target_modules=[q_proj, v_proj]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, message", [
    (["learner.learning_rate=1e-4"], "unknown key 'learner.learning_rate' (did you mean 'learner.lr'?)"),
    (["algoritm.beta=0.1"], "unknown key 'algoritm' (did you mean 'algorithm'?)"),
    (["learner.lr=fast"], "learner.lr: Input should be a valid number"),
    (["algorithm.loss=ppo"], "algorithm.loss: Input should be " + ", ".join(map(repr, LOSS_NAMES[:-1]))
     + f" or {LOSS_NAMES[-1]!r}"),
    (["rollout.group_size=0"], "rollout.group_size: Input should be greater than or equal to 1"),
    (["learner.lr"], "override 'learner.lr' is not of the form key.sub=value"),
    (["steps.sub=1"], "steps: Input should be a valid integer"),
    (["steps=3", "steps.sub=1"], "override steps.sub: steps is a value, not a section"),
    (["algorithm.aggregation=seq-mean-token-sum-norm"], "algorithm.loss_norm_tokens must be set"),
])
def test_errors_name_the_key_on_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("learner:\n  lr: 1e-4\n  micro_batch: 4\n")
    with pytest.raises(ConfigError, match=r"did you mean 'learner.micro_batch_tokens'"):
        load_config(bad)


@pytest.mark.parametrize("file", ["smoke.yaml", "quickstart.yaml", "gpu.yaml"])  # validated, not run
def test_shipped_configs_validate(file):
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "configs" / file)
    assert cfg.name == file.removesuffix(".yaml")
