"""The quickstart's targets: `rlvr quickstart configs/quickstart.yaml` end to end on this machine.

    python bench/quickstart.py [CONFIG] [key=value ...]   (output_dir=DIR keeps the run folder)

Prints the wall time of the whole command and the held-out success rates of base, SFT, SFT + more SFT
(RL's time spent on SFT instead) and SFT + RL, with the number of held-out tasks and per task kind (the
calculator's solution shapes), then each target:
total <= 15 min; RL >= SFT + 15 points; RL > SFT + more SFT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlvr.stages.evaluate import kind_table


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else "configs/quickstart.yaml"
    overrides = sys.argv[2:]
    kept = [o.partition("=")[2] for o in overrides if o.startswith("output_dir=")]  # keep the run to read it later
    with tempfile.TemporaryDirectory() as scratch:
        out = kept[-1] if kept else scratch
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rlvr.cli", "quickstart", config, f"output_dir={out}",
                        "logging.wandb=disabled", *overrides], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        total = time.perf_counter() - start
        report_file = max(Path(out).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
        report = json.loads(report_file.read_text())
    if kept:
        print(f"\nrun folder: {report_file.parent}")
    policies = report["policies"]
    print(f"\nquickstart wall time: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in report['seconds'].items())})")
    print(f"held-out tasks: {report['held_out_tasks']}")
    for label, r in policies.items():
        print(f"  {label:16s} success {r['success_rate']:.3f}  tool-call validity {r['tool_call_validity'] or 0:.3f}  "
              f"format {r['format_compliance']:.3f}")
    if kinds := kind_table(policies):
        print(f"success per task kind:\n{kinds}")
    gain, control = report["rl_gain_over_sft"], report["rl_gain_over_more_sft"]
    print(f"target total <= 900 s: {'met' if total <= 900 else 'NOT met'} ({total:.0f} s)")
    print(f"target RL >= SFT + 15 points: {'met' if gain >= 0.15 else 'NOT met'} ({gain * 100:+.1f})")
    print(f"target RL > SFT + more SFT: {'met' if control > 0 else 'NOT met'} ({control * 100:+.1f})")


if __name__ == "__main__":
    main()
