"""Tasks from `datasets` datasets (data.source, rlvr eval --tasks): folders, Parquet, JSON with a column
mapping, DatasetDict splits, and errors that name the column or row."""

import json

import pytest

import datasets  # a core dependency: no skip

from rlvr.core.config import ConfigError, load_config
from rlvr.core.tasks import load_tasks
from rlvr.envs.calculator import CalculatorEnv, calculator_tasks

ROWS = [{"question": f"What is {a} * 7?", "final": a * 7, "level": a % 3,
         "calls": json.dumps([{"name": "calculate", "arguments": {"expression": f"{a} * 7"}}])} for a in (11, 12, 13)]
COLUMNS = ["data.columns.prompt=question", "data.columns.answer=final", "data.columns.gold_calls=calls",
           "data.columns.metadata=[level]"]


def _cfg(*overrides):
    return load_config(None, ["model.name=tiny-random-llama", "logging.wandb=disabled", *COLUMNS, *overrides])


def _load(source, cfg, split="train"):
    return load_tasks(source, CalculatorEnv, 0, 0, split, {}, columns=cfg.data.columns)


def test_a_saved_dataset_dict_gives_the_asked_split_with_mapped_columns(tmp_path):
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(folder)
    tasks = _load(str(folder), _cfg())
    assert [t.id for t in tasks] == ["ds-train-0", "ds-train-1", "ds-train-2"]
    first = tasks[0]
    assert (first.env, first.prompt, first.answer, first.metadata) == ("calculator", "What is 11 * 7?", 77, {"level": 2})
    assert first.gold_calls == [{"name": "calculate", "arguments": {"expression": "11 * 7"}}]
    assert [t.prompt for t in _load(str(folder), _cfg(), split="test")] == ["What is 11 * 7?"]


def test_parquet_and_json_files_and_default_column_names(tmp_path):
    datasets.Dataset.from_list(ROWS).to_parquet(tmp_path / "rows.parquet")
    assert [t.answer for t in _load(str(tmp_path / "rows.parquet"), _cfg())] == [77, 84, 91]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert len(_load(str(tmp_path / "rows.jsonl"), _cfg())) == 3
    # columns already named like Task fields need no mapping; a folder is always a dataset
    plain = [{"id": t.id, "prompt": t.prompt, "answer": t.answer} for t in calculator_tasks(2)]
    datasets.Dataset.from_list(plain).save_to_disk(tmp_path / "plain")
    tasks = load_tasks(str(tmp_path / "plain"), CalculatorEnv, 0, 0, "train", {})
    assert [(t.id, t.answer) for t in tasks] == [(p["id"], p["answer"]) for p in plain]


def test_bad_columns_and_rows_are_named(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"has no column 'query' \(data.columns\); its columns: question, final, level, calls"):
        _load(str(tmp_path / "ds"), _cfg("data.columns.prompt=query"))
    broken = [dict(ROWS[0]), {**ROWS[1], "calls": "[{not json"}]
    datasets.Dataset.from_list(broken).save_to_disk(tmp_path / "broken")
    with pytest.raises(ValueError, match=r"broken row 1 is not a valid Task"):
        _load(str(tmp_path / "broken"), _cfg())
    datasets.DatasetDict({"a": datasets.Dataset.from_list(ROWS), "b": datasets.Dataset.from_list(ROWS)}).save_to_disk(tmp_path / "two")
    with pytest.raises(ValueError, match=r"has no split 'train' \(it has a, b\)"):
        _load(str(tmp_path / "two"), _cfg())
    with pytest.raises(ConfigError, match=r"unknown key 'data.columns.promt' \(did you mean 'data.columns.prompt'\?\)"):
        _cfg("data.columns.promt=question")


def test_rlvr_eval_and_train_read_a_dataset(tmp_path):
    from rlvr.cli import _eval_tasks
    from rlvr.rollout.sources import EnvSource

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[1:])}).save_to_disk(tmp_path / "ds")
    cfg = _cfg(f"data.source={tmp_path / 'ds'}", "env.name=calculator", "data.tasks_per_step=2")
    assert [t.answer for t in _eval_tasks(cfg, str(tmp_path / "ds"), 10)] == [84, 91]  # the test split
    source = EnvSource(cfg, backend=None)  # tasks resolve before any model loads
    assert sorted(t.answer for t in source.sampler.tasks) == [77, 84, 91]
    assert len(source.sampler.batch(1)) == 2
    with pytest.raises(ConfigError, match="data.source: cannot load the dataset"):
        EnvSource(_cfg(f"data.source={tmp_path / 'missing.parquet'}"), backend=None)


def test_a_hub_id_without_a_reachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"data.source: cannot load the dataset hf:someone/nothing: ConnectionError"):
        load_tasks("hf:someone/nothing", CalculatorEnv, 0, 0, "train", {})


def test_nested_columns_lose_the_nulls_arrow_adds_and_a_plain_folder_is_not_a_dataset(tmp_path):
    from rlvr.core.tasks import is_dataset

    rows = [{"prompt": "a", "gold_calls": [{"name": "calculate", "arguments": {"expression": "1 + 1"}}]},
            {"prompt": "b", "gold_calls": [{"name": "other", "arguments": {"x": 1}}]}]
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "nested")  # arguments become one struct {expression, x}
    tasks = load_tasks(str(tmp_path / "nested"), CalculatorEnv, 0, 0, "train", {})
    assert [t.gold_calls[0]["arguments"] for t in tasks] == [{"expression": "1 + 1"}, {"x": 1}]
    (tmp_path / "test").mkdir()
    assert not is_dataset(str(tmp_path / "test"), _cfg().data.columns)
    assert is_dataset(str(tmp_path / "nested"), _cfg().data.columns)
