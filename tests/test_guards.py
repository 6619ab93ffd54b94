"""Guards against silent misconfiguration: a clear error naming the fix before any model loads, or a
warning and a safe fallback."""

from types import SimpleNamespace

import pytest

from rlvr.training.algorithms import ObjectiveSpec
from rlvr.core.config import ConfigError, LearnerConfig, load_config
from rlvr.training.learner import Learner, shared_prefix_unsupported


def test_greedy_training_rollouts_are_refused_before_any_model_loads(tmp_path):
    from rlvr.loop import train

    with pytest.raises(ConfigError, match=r"rollout.temperature=0: .*use rollout.temperature=1.0"):
        train(load_config(None, [f"output_dir={tmp_path}", "rollout.temperature=0", "model.name=nowhere"]))
    assert list(tmp_path.iterdir()) == []  # no run folder, no model


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.loss=gspo"], "set algorithm.aggregation=seq-mean-token-mean"),
    (["algorithm.loss=gspo", "algorithm.aggregation=seq-mean-token-mean"], "GSPO uses clip_low=3e-4, clip_high=4e-4"),
    (["algorithm.loss=gspo", "algorithm.aggregation=seq-mean-token-mean", "algorithm.clip_low=3e-4",
      "algorithm.clip_high=0.28"], "GSPO uses clip_low=3e-4"),
])
def test_gspo_with_token_aggregation_or_ppo_clip_ranges_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_gspo_as_the_paper_runs_it_is_accepted():
    cfg = load_config(None, ["algorithm.loss=gspo", "algorithm.aggregation=seq-mean-token-mean",
                             "algorithm.clip_low=3e-4", "algorithm.clip_high=4e-4"])
    assert cfg.algorithm.loss == "gspo"


@pytest.mark.parametrize("config, reason", [
    (SimpleNamespace(_attn_implementation="sdpa"), None),
    (SimpleNamespace(_attn_implementation="rlvr_prefix", sliding_window=None), None),
    (SimpleNamespace(_attn_implementation="flash_attention_2"), "attention implementation 'flash_attention_2'"),
    (SimpleNamespace(_attn_implementation="sdpa", sliding_window=4096), "sliding window (4096 tokens)"),
    (SimpleNamespace(sliding_window=4096, use_sliding_window=False), None),  # Qwen2: declared, not used
    (SimpleNamespace(sliding_window=512, layer_types=["full_attention", "full_attention"]), None),
    (SimpleNamespace(sliding_window=512, layer_types=["sliding_attention", "full_attention"]), "sliding window"),
])
def test_shared_prefix_support_is_read_from_the_model_config(config, reason):
    found = shared_prefix_unsupported(config)
    assert found is None if reason is None else reason in found


def test_learner_falls_back_to_the_plain_path_with_a_warning():
    from test_learner import _batch, _policy

    model = _policy()
    model.get_base_model().config.sliding_window = 8  # as a Mistral-style model declares it
    with pytest.warns(UserWarning, match=r"sliding window \(8 tokens\).*using the plain path"):
        learner = Learner(model, LearnerConfig(precision="fp32"), ObjectiveSpec(), total_steps=1)
    assert learner.cfg.shared_prefix is False
    assert all(mb.prompt is None for mb in learner.micro_batches(_batch()))
