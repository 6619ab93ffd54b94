"""The quickstart's targets: `rlvr quickstart configs/quickstart.yaml` end to end on this machine.

    python bench/quickstart.py [CONFIG] [key=value ...]

Prints the wall time of the whole command and the held-out success rates of base, SFT, SFT + more SFT
(RL's time spent on SFT instead) and SFT + RL, with the number of held-out tasks, then each target:
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


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else "configs/quickstart.yaml"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rlvr.cli", "quickstart", config, f"output_dir={out}",
                        "logging.wandb=disabled", *sys.argv[2:]], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        total = time.perf_counter() - start
        [report_file] = Path(out).glob("*/report.json")
        report = json.loads(report_file.read_text())
    policies = report["policies"]
    print(f"\nquickstart wall time: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in report['seconds'].items())})")
    print(f"held-out tasks: {report['held_out_tasks']}")
    for label, r in policies.items():
        print(f"  {label:16s} success {r['success_rate']:.3f}  tool-call validity {r['tool_call_validity'] or 0:.3f}  "
              f"format {r['format_compliance']:.3f}")
    gain, control = report["rl_gain_over_sft"], report["rl_gain_over_more_sft"]
    print(f"target total <= 900 s: {'met' if total <= 900 else 'NOT met'} ({total:.0f} s)")
    print(f"target RL >= SFT + 15 points: {'met' if gain >= 0.15 else 'NOT met'} ({gain * 100:+.1f})")
    print(f"target RL > SFT + more SFT: {'met' if control > 0 else 'NOT met'} ({control * 100:+.1f})")


if __name__ == "__main__":
    main()
