"""The run folder's final adapter is written atomically like checkpoints, and a resumed run continues its
wandb run (same id)."""

import sys
import types

import pytest
import torch

from rlvr.training.checkpoint import save_adapter
from rlvr.core.config import load_config
from rlvr.training.models import AdapterState
from rlvr.run import Run


def _adapter(value):
    return AdapterState(1, {"peft_type": "LORA", "r": 1}, {"w": torch.full((2,), float(value))})


def test_final_adapter_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "adapter"
    save_adapter(_adapter(1), path)
    assert AdapterState.load(path).tensors["w"].tolist() == [1.0, 1.0]

    def dies_half_way(self, target):  # the process is killed after the first file
        target.mkdir(parents=True)
        (target / "adapter_config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(AdapterState, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(_adapter(2), path)
    assert AdapterState.load(path).tensors["w"].tolist() == [1.0, 1.0]  # the previous one, whole
    monkeypatch.undo()
    save_adapter(_adapter(3), path)  # the next save clears the leftover and replaces the adapter
    assert AdapterState.load(path).tensors["w"].tolist() == [3.0, 3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    inits = []
    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or types.SimpleNamespace(finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(None, [f"output_dir={tmp_path}", "logging.wandb=offline"])
    first = Run(cfg)
    resumed = Run(cfg, path=first.path)
    other = Run(cfg)
    assert inits[0]["id"] == inits[1]["id"] and inits[1]["resume"] == "allow"
    assert resumed.path == first.path and (first.path / "wandb_id").read_text() == inits[0]["id"]
    assert inits[2]["id"] != inits[0]["id"] and other.path != first.path
