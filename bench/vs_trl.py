"""rlvr against TRL's GRPOTrainer, end to end, on the same CPU, model, tool, tasks and settings.

    python bench/vs_trl.py                     # SmolLM2-135M-Instruct, calculator, HF generation, CPU
    python bench/vs_trl.py --steps 4 --rounds 2 --adapter DIR

Both frameworks train the same LoRA adapter (r=16, all linear layers) on the same calculator word
problems, with the same tool (rlvr's `calculate`), the same reward (rlvr's numeric_answer on the final
message), G completions per task, tasks per step, completion budget (`--max-tokens`, tool results
included), tool-calling turns, learning rate, temperature 1, beta 0, and the same precision: bf16
autocast with the base model in bf16 where the CPU has bf16 instructions (AVX512-BF16, AMX), else float32
for both (rlvr's `learner.precision: auto`; bf16 emulated on an AVX2 CPU would slow TRL, not measure it).
TRL runs its `GRPOTrainer(tools=[calculate])` with `loss_type="dapo"` (token-mean, rlvr's default
aggregation) and its own other defaults; rlvr runs `rlvr.loop.train` in-process with its defaults.

The template: SmolLM2's own chat template has no tool support, which TRL refuses, so both get Qwen2.5's
ChatML tool template (TRL's bundled copy; the same <|im_start|>/<|im_end|> tokens) on SmolLM2's
tokenizer. The policy starts from a LoRA adapter that already calls the tool (`--adapter`, else one
made once by `rlvr synth` + `rlvr sft` on gold calculator conversations and cached), so the rollouts are
multi-turn (calls, results, more turns), as in a real run. The work of a step does not depend on the
rewards' values: both frameworks run the full forward and backward whatever the advantages.

Each run is its own process (peak memory is its own: the process's peak resident set); the two
frameworks alternate for `--rounds` rounds. Per step: wall time, rollout time (generation and tool calls)
and learner time (the rest of the step), sampled tokens (tool results excluded) and all tokens
(prompt + completion, as the learner processes them). Reported: medians over the steps after each run's
first. The last line is `speedup: X.XX` (TRL's median step time over rlvr's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def tool_model_dir() -> Path:
    """SmolLM2-135M-Instruct with TRL's Qwen2.5 tool template (the weights are symlinked), in the model cache."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from rlvr.training.models import cached_build, resolve_model

    src = Path(resolve_model("smollm2-135m-instruct"))

    def build(out: Path) -> None:
        for f in src.iterdir():
            if not f.name.startswith("tokenizer") and f.name not in ("special_tokens_map.json", "chat_template.jinja"):
                (out / f.name).symlink_to(f)
        tokenizer = AutoTokenizer.from_pretrained(src)
        tokenizer.chat_template = qwen2_5_chat_template
        tokenizer.save_pretrained(out)

    return cached_build("smollm2-135m-qwen2.5-tools", build)


def start_adapter(model_dir: Path) -> Path:
    """A policy that calls the tool: SFT (lr 1e-3, 1 epoch) on 48 gold calculator conversations, cached."""
    from rlvr.core.config import load_config
    from rlvr.training.models import cache_dir
    from rlvr.stages.sft import sft
    from rlvr.stages.synth import Synthesizer, write_jsonl

    out = cache_dir() / "bench" / "vs_trl_start_adapter"
    if (out / "adapter_config.json").exists():
        return out
    work = Path(tempfile.mkdtemp())
    cfg = load_config(None, [f"model.name={model_dir}", "env.name=calculator", "sft.epochs=1",
                             "sft.lr=1e-3", f"sft.data={work / 'gold.jsonl'}", f"output_dir={work}",
                             "name=vs-trl-sft", "logging.wandb=disabled"])
    synthesizer = Synthesizer(cfg)
    write_jsonl(work / "gold.jsonl", synthesizer.run(synthesizer.env.tasks(48, seed=cfg.seed, split="train")))
    run = sft(cfg)
    shutil.copytree(run.path / "adapter", out)
    return out


def calculator_rows(n: int, seed: int):
    """The tasks both frameworks see, with the messages rlvr's calculator env opens with."""
    from rlvr.envs.calculator import CalculatorEnv, calculator_tasks

    tasks = calculator_tasks(n, seed=seed)
    return tasks, [CalculatorEnv(task).reset()[0] for task in tasks]


# --------------------------------------------------------------------------------------------------
# one run of each framework (in its own process)


def run_rlvr(args, model_dir: Path, adapter: Path) -> list[dict]:
    import rlvr.training.learner
    from rlvr.core.config import load_config
    from rlvr.loop import train

    # equal work: nearly every group here is flat (rewards 0), which rlvr's learner leaves out (exactly: zero
    # gradient) and TRL computes; this process runs every trajectory through the learner as TRL does
    rlvr.training.learner.with_advantage = lambda batch: batch
    out = tempfile.mkdtemp()
    cfg = load_config(None, [
        f"model.name={model_dir}", f"model.init_adapter={adapter}", f"model.lora.rank={args.rank}",
        f"model.lora.alpha={2 * args.rank}", "env.name=calculator", f"data.train_tasks={args.tasks}",
        f"data.tasks_per_step={args.tasks_per_step}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_tokens}", f"rollout.max_total_tokens={args.max_tokens}",
        f"rollout.max_turns={args.turns}", "rollout.temperature=1.0", f"learner.lr={args.lr}",
        f"steps={args.steps}", f"seed={args.seed}", f"output_dir={out}", "logging.wandb=disabled",
        "logging.samples_every=0", "eval.every=0",
    ])
    run = train(cfg)
    steps = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    return [{"step_s": m["time/step_s"], "rollout_s": m["time/rollout_s"],
             "learner_s": m["time/step_s"] - m["time/rollout_s"],
             "sampled_tokens": m["rollout/sampled_tokens"], "tokens": m["learner/tokens"],
             "trajectories": args.tasks_per_step * args.group_size, "reward": m["reward/mean"]} for m in steps]


def run_trl(args, model_dir: Path, adapter: Path) -> list[dict]:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.envs.calculator import evaluate, format_number
    from rlvr.rewards.answer import numeric_answer
    from rlvr.training.learner import use_bf16

    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: numbers with + - * / // % ** and parentheses, e.g. "(1234 + 56) * 7"
        """
        return format_number(evaluate(expression))  # errors reach the model as TRL's {"error": ...}

    tasks, prompts = calculator_rows(args.tasks, args.seed)
    by_id = {t.id: t for t in tasks}

    def numeric_reward(completions, task_id, **_):
        finals = [c[-1]["content"] if c and c[-1].get("role") == "assistant" and not c[-1].get("tool_calls") else None
                  for c in completions]
        return [numeric_answer(SimpleNamespace(final_answer=text), by_id[i]) for text, i in zip(finals, task_id)]

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bf16 = use_bf16("auto", torch.device("cpu"))  # as rlvr's learner decides
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = PeftModel.from_pretrained(base, adapter, is_trainable=True)  # LoRA weights stay float32
    batch = args.tasks_per_step * args.group_size
    trainer = GRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=numeric_reward, tools=[calculate],
        train_dataset=Dataset.from_dict({"prompt": prompts, "task_id": [t.id for t in tasks]}),
        args=GRPOConfig(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_generations=args.group_size,
            max_completion_length=args.max_tokens, max_tool_calling_iterations=args.turns - 1,
            temperature=1.0, learning_rate=args.lr, lr_scheduler_type="constant", beta=0.0, loss_type="dapo",
            epsilon=0.2, epsilon_high=0.28, max_grad_norm=1.0, bf16=bf16, use_cpu=True, max_steps=args.steps,
            logging_steps=1, report_to=[], save_strategy="no", seed=args.seed, shuffle_dataset=True,
        ),
    )
    steps: list[dict] = []
    generate = trainer._generate

    def timed_generate(prompts_):  # rollout time and tokens: TRL's generation plus its tool loop
        start = time.perf_counter()
        out = generate(prompts_)
        prompt_ids, completion_ids, tool_mask = out[0], out[1], out[2]
        steps[-1]["rollout_s"] += time.perf_counter() - start
        steps[-1]["sampled_tokens"] += sum(sum(m) for m in tool_mask) if tool_mask else sum(map(len, completion_ids))
        steps[-1]["tokens"] += sum(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
        steps[-1]["trajectories"] += len(completion_ids)
        return out

    trainer._generate = timed_generate

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            steps.append({"start": time.perf_counter(), "rollout_s": 0.0, "sampled_tokens": 0, "tokens": 0,
                          "trajectories": 0})

        def on_step_end(self, *_, **__):
            steps[-1]["step_s"] = time.perf_counter() - steps[-1].pop("start")
            steps[-1]["learner_s"] = steps[-1]["step_s"] - steps[-1]["rollout_s"]

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs and steps:
                steps[-1]["reward"] = logs["reward"]

    trainer.add_callback(StepTimes())
    trainer.train()
    return steps


# --------------------------------------------------------------------------------------------------
# the driver


def summarize(runs: list[dict]) -> dict:
    """Medians over every run's steps after its first (warm-up)."""
    steps = [s for run in runs for s in run["steps"][1:]]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    return {
        "step_s": med("step_s"), "rollout_s": med("rollout_s"), "learner_s": med("learner_s"),
        "rollout_tok_s": statistics.median(s["sampled_tokens"] / s["rollout_s"] for s in steps),
        "learner_tok_s": statistics.median(s["tokens"] / s["learner_s"] for s in steps),
        "sampled_per_traj": statistics.mean(s["sampled_tokens"] / s["trajectories"] for s in steps),
        "tokens_per_step": statistics.mean(s["tokens"] for s in steps),
        "reward": statistics.mean(s.get("reward", float("nan")) for s in steps),
        "peak_mb": max(run["peak_mb"] for run in runs), "steps": len(steps),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each framework, alternating")
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128, help="completion budget, tool results included")
    parser.add_argument("--turns", type=int, default=3, help="model turns (tool-calling iterations + 1)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--tasks", type=int, default=64, help="training tasks in the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", help="starting LoRA adapter (default: built once and cached)")
    parser.add_argument("--frameworks", default="rlvr,trl")
    parser.add_argument("--framework", help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.framework:
        runner = {"rlvr": run_rlvr, "trl": run_trl}[args.framework]
        steps = runner(args, Path(args.model_dir), Path(args.adapter))
        print("RESULT " + json.dumps({"steps": steps, "peak_mb": peak_rss_mb()}))
        return

    model_dir = tool_model_dir()
    adapter = Path(args.adapter) if args.adapter else start_adapter(model_dir)
    frameworks = args.frameworks.split(",")
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    for r in range(args.rounds):
        for framework in frameworks if r % 2 == 0 else frameworks[::-1]:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--framework", framework, "--model-dir", str(model_dir),
                   "--adapter", str(adapter)]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"{framework} run {r + 1} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
            result = json.loads(lines[-1].removeprefix("RESULT "))
            runs[framework].append(result)
            times = ", ".join(f"{s['step_s']:.1f}" for s in result["steps"])
            print(f"round {r + 1} {framework:4s}: step times {times} s; process {time.perf_counter() - start:.0f} s, "
                  f"peak RSS {result['peak_mb']:.0f} MiB", flush=True)

    stats = {f: summarize(runs[f]) for f in frameworks}
    rows = [("step time, s", "step_s", "{:.2f}"), ("rollout time, s", "rollout_s", "{:.2f}"),
            ("learner time, s", "learner_s", "{:.2f}"), ("rollout tokens/s (sampled)", "rollout_tok_s", "{:.1f}"),
            ("learner tokens/s (all tokens)", "learner_tok_s", "{:.1f}"),
            ("sampled tokens per trajectory", "sampled_per_traj", "{:.1f}"),
            ("tokens per step", "tokens_per_step", "{:.0f}"), ("mean reward", "reward", "{:.3f}"),
            ("peak RSS, MiB", "peak_mb", "{:.0f}")]
    print(f"\n{args.tasks_per_step} tasks x G={args.group_size}, {args.max_tokens} completion tokens, "
          f"{args.turns} turns, LoRA r={args.rank}, lr {args.lr}; medians of {stats[frameworks[0]]['steps']} steps")
    print(f"{'':32s}" + "".join(f"{f:>12s}" for f in frameworks) + (f"{frameworks[1] + '/' + frameworks[0]:>12s}" if len(frameworks) == 2 else ""))
    for label, key, fmt in rows:
        values = [stats[f][key] for f in frameworks]
        line = f"{label:32s}" + "".join(f"{fmt.format(v):>12s}" for v in values)
        if len(frameworks) == 2 and values[0]:
            line += f"{values[1] / values[0]:12.2f}"
        print(line)
    if set(frameworks) == {"rlvr", "trl"}:
        print(f"speedup: {stats['trl']['step_s'] / stats['rlvr']['step_s']:.2f}")


if __name__ == "__main__":
    main()
