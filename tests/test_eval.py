"""rlvr eval (success rate, tool-call validity, format compliance, pass@k, comparison, BFCL) and
rlvr export (the adapter alone, or merged in float32 and saved in the base's dtype)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.core.contract import Group, Task, ToolCall, ToolCallError, Trajectory
from rlvr.core.tasks import env_tasks
from rlvr.envs.registry import load_env
from rlvr.stages.evaluate import comparison_table, kind_table, summarize

MODEL = "tiny-random-llama"
ROOT = Path(__file__).parent.parent


def _trajectory(task, i, reward, calls=(), finish="stop"):
    return Trajectory(id=f"{task.id}/{i}", task_id=task.id, group_id=task.id, prompt_ids=[1], completion_ids=[2],
                      loss_mask=[1], logprobs=[0.0], reward=reward, reward_components={"numeric_answer": reward},
                      tool_calls=list(calls), turns=1 + len(calls), finish_reason=finish,
                      metrics={"latency_s": 0.5})


def test_metrics_by_hand():
    a = Task(id="a", env="calculator", prompt="?", metadata={"family": "train", "kind": "a + (b * c)"})
    b = Task(id="b", env="calculator", prompt="?", metadata={"family": "heldout"})
    ok, bad = ToolCall(name="calculate", raw="x"), ToolCall(raw="<tool_call>{", error=ToolCallError.parse)
    groups = [Group(id="a", task=a, trajectories=[_trajectory(a, 0, 1.0, [ok]), _trajectory(a, 1, 0.0, [bad])]),
              Group(id="b", task=b, trajectories=[_trajectory(b, 0, 0.0, [ok, ok], finish="max_tokens"),
                                                  _trajectory(b, 1, 0.0)])]
    report = summarize(groups, ["numeric_answer"], samples=2, seconds=4.0)
    assert report["success_rate"] == 0.25 and report["pass@2"] == 0.5 and report["pass^2"] == 0.0
    both = Group(id="a", task=a, trajectories=[_trajectory(a, 0, 1.0), _trajectory(a, 1, 1.0)])
    assert summarize([both, groups[1]], ["numeric_answer"], samples=2, seconds=1.0)["pass^2"] == 0.5
    assert report["tool_call_validity"] == 0.75  # 3 of 4 calls ran
    assert report["format_compliance"] == 0.5  # one parse error, one cut at max tokens
    assert report["mean_turns"] == 2.0 and report["mean_latency_s"] == 0.5
    assert report["per_family"] == {"heldout": {"trajectories": 2, "success_rate": 0.0},
                                    "train": {"trajectories": 2, "success_rate": 0.5}}
    assert report["per_kind"] == {"-": {"trajectories": 2, "success_rate": 0.0},
                                  "a + (b * c)": {"trajectories": 2, "success_rate": 0.5}}
    table = comparison_table({"base": report, "rl": report})
    assert table.splitlines()[0].startswith("| policy | tasks | success_rate") and "| rl | 2 | 0.250 |" in table
    kinds = kind_table({"base": {"per_kind": {}}, "rl": report}).splitlines()
    assert kinds[0] == "| policy | - (2) | a + (b * c) (2) |" and kinds[2:] == ["| base | - | - |", "| rl | 0.000 | 0.500 |"]
    assert kind_table({"base": summarize(groups[1:], ["numeric_answer"], 2, 1.0)}) is None


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_eval_a_task_file_and_compare_policies(tmp_path):
    from rlvr.training.learner import build_learner
    from rlvr.core.config import load_config

    tasks = tmp_path / "tasks.jsonl"  # the calculator's plain task format: no env field
    tasks.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} * 1234?", "answer": i * 1234}) + "\n"
                             for i in range(3)))
    common = ["/dev/null", f"model.name={MODEL}", "rollout.max_new_tokens=8", "rollout.max_turns=2",
              "--tasks", str(tasks)]
    done = _cli("eval", *common, "env.conditions.failure_rate=0.5", "env.conditions.call_cost=0.1",
                "--out", "report.json", cwd=tmp_path)  # under the config's tool conditions
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"] == 3 and report["samples"] == 1 and 0.0 <= report["success_rate"] <= 1.0
    assert set(report) >= {"tool_call_validity", "format_compliance", "mean_turns", "mean_tokens", "mean_latency_s",
                           "per_family", "recovery_rate", "retry_rate", "unnecessary_call_rate"}
    assert set(report["outcomes"]) == {"q0", "q1", "q2"}
    assert report["no_tool_trajectories"] == 0 and report["unnecessary_call_rate"] is None
    adapter = tmp_path / "adapter"
    build_learner(load_config(None, [f"model.name={MODEL}"])).adapter_state().save(adapter)
    done = _cli("eval", *common, "--samples", "2", "--compare", "base=base", "--compare", f"tuned={adapter}",
                "--out", "compare.json", "--transcripts", "transcripts.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    compared = json.loads((tmp_path / "compare.json").read_text())
    assert list(compared["compare"]) == ["base", "tuned"] and "pass@2" in compared["compare"]["base"]
    lines = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert [(r["policy"], r["task_id"]) for r in lines] == [(p, f"q{i}") for p in ("base", "tuned") for i in range(3)
                                                           for _ in range(2)]
    for r in lines:
        i = int(r["task_id"][1:])
        assert r["messages"][1] == {"role": "user", "content": f"What is {i} * 1234?"} and r["answer"] == i * 1234
        assert r["success"] == (r["reward_components"]["numeric_answer"] == 1.0)
    assert "| base |" in done.stdout and "| tuned |" in done.stdout
    assert "95% paired bootstrap" in done.stdout and "| tuned - base |" in done.stdout
    bad = _cli("eval", "/dev/null", f"model.name={MODEL}", "--tasks", "nowhere:test", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown env 'nowhere'" in bad.stderr


def test_eval_bfcl_single_turn_with_its_ast_checker(tmp_path):
    pytest.importorskip("bfcl_eval")
    # the quickstart's config, whose calculator conditions (a no-tool share) do not apply to BFCL
    done = _cli("eval", str(ROOT / "configs/quickstart.yaml"), f"model.name={MODEL}", "rollout.max_new_tokens=8",
                "rollout.max_turns=1", "--bfcl", "simple", "--n", "3", "--transcripts", "transcripts.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"] == 3 and list(report["per_family"]) == ["simple_python"]
    # every trajectory was scored by BFCL's checker (the env's "bfcl" reward: the AST checker for simple);
    # a random tiny model makes no right call in 8 tokens
    lines = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(r["reward_components"]["bfcl"] == 0.0 and not r["success"] for r in lines)
    assert report["success_rate"] == 0.0 and report["per_family"]["simple_python"]["success_rate"] == 0.0


def test_export_the_adapter_alone_or_merged(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlvr.core.config import load_config
    from rlvr.stages.export import export
    from rlvr.training.learner import build_learner
    from rlvr.training.models import load_model

    learner = build_learner(load_config(None, [f"model.name={MODEL}"]))
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    learner.adapter_state().save(tmp_path / "adapter")
    assert sorted(p.name for p in export(tmp_path / "adapter", tmp_path / "copy").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    merged_dir = export(tmp_path / "adapter", tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == load_model(MODEL).dtype
    ids = torch.tensor([[1, 50, 400, 3000, 7]])
    reference = PeftModel.from_pretrained(load_model(MODEL), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, load_model(MODEL)(ids).logits, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        export(tmp_path, tmp_path / "x")


def test_the_quickstart_pipeline_end_to_end_on_a_tiny_model(tmp_path):
    """Every stage runs and the report has the four policies; the real targets are bench/quickstart.py's."""
    from rlvr.core.config import load_config
    from rlvr.stages.quickstart import quickstart

    cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [
        f"output_dir={tmp_path}", f"model.name={MODEL}", "model.lora.rank=4", "steps=2", "synth.tasks=4",
        "sft.epochs=1", "sft.batch_size=4", "data.tasks_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "rollout.max_turns=2", "eval.tasks=2", "logging.wandb=disabled",
        'synth.options={shapes: ["a + (b * c)"]}'])  # demonstrations of one kind; RL and evaluation: all
    root = quickstart(cfg)
    report = json.loads((root / "report.json").read_text())
    assert list(report["policies"]) == ["base", "SFT", "SFT + more SFT", "SFT + RL"]
    held_out = env_tasks(load_env("calculator"), 2, cfg.seed, "test", {}, cfg.env.conditions.no_tool_fraction)
    assert report["demonstrated_kinds"] == ["a + (b * c)"]
    assert report["undemonstrated_tasks"] == sorted(t.id for t in held_out if t.metadata["kind"] not in
                                                    ("a + (b * c)", "no tool"))
    assert report["held_out_tasks"] == 2 and report["conversations"] == 4
    assert report["seconds"]["sft_more"] >= 0 and set(report["seconds"]) == {"synth", "sft", "rl", "sft_more", "eval"}
    markdown = (root / "report.md").read_text()
    assert "| SFT + RL |" in markdown and "Success per task kind" in markdown and (root / "rl_curves.png").is_file()
    transcripts = [json.loads(line) for line in (root / "eval_transcripts.jsonl").read_text().splitlines()]
    assert [r["policy"] for r in transcripts] == [p for p in report["policies"] for _ in range(2)]
