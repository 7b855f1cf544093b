"""The whole loop through the CLI: driver overhead, and how iteration time grows with the prompts per iteration.

Runs one iteration of the tiny CPU config (evaluation off) at three sizes of
``data.prompts_per_iteration``, each in a fresh run directory. From each
run's metrics: the iteration's wall time, the sum of its stage times, and the
engine start-up inside them. Driver overhead = (wall - sum of stages) / wall:
everything the driver does besides the stages (goal: at most 2%). Cost
growth: the exponent b of a least-squares fit time ~ a * prompts^b over the
three sizes, on stage time without engine start-up (goal: at most 1.05).

    python -m benchmarks.loop [--sizes 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import table, write_result

ROOT = Path(__file__).parents[1]
SMALL = ["iterations=1", "generation.samples_per_prompt=2", "generation.max_tokens=48", "judge.judge_samples=2",
         "judge.max_tokens=48", "eval.verifiable=null", "eval.instructions=null", "resources.kv_cache_gib=2",
         "dpo.checkpoint_every=0"]


def run_once(prompts: int, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(ROOT / "jobs" / "configs" / "tiny-cpu.yaml"),
           "--run-dir", str(run_dir), *SMALL, f"data.prompts_per_iteration={prompts}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads((run_dir / "iter_001" / "metrics.json").read_text())


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs=3, default=[4, 8, 16])
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="selfreward-bench-") as tmp:
        for n in args.sizes:
            m = run_once(n, Path(tmp) / f"p{n}")
            stages = sum(m["stage_seconds"].values())
            rows.append({"prompts": n, "iteration_s": m["iteration_seconds"], "stages_s": round(stages, 3),
                         "engine_start_s": m["engine_start_seconds"],
                         "compute_s": round(stages - m["engine_start_seconds"], 3),
                         "overhead": round((m["iteration_seconds"] - stages) / m["iteration_seconds"], 4),
                         "stage_seconds": m["stage_seconds"]})
    exponent = fit_exponent([r["prompts"] for r in rows], [r["compute_s"] for r in rows])
    result = {"runs": rows, "driver_overhead_max": max(r["overhead"] for r in rows), "overhead_goal": "<= 0.02",
              "cost_exponent": round(exponent, 3), "exponent_goal": "<= 1.05"}
    path = write_result("loop", result)
    print(table([["prompts", "wall s", "stages s", "engine start s", "compute s", "overhead"]]
                + [[str(r["prompts"]), f"{r['iteration_s']:.1f}", f"{r['stages_s']:.1f}", f"{r['engine_start_s']:.1f}",
                    f"{r['compute_s']:.1f}", f"{100 * r['overhead']:.2f}%"] for r in rows]))
    print(f"cost exponent: {exponent:.3f} (goal <= 1.05); max driver overhead {100 * result['driver_overhead_max']:.2f}% "
          f"(goal <= 2%)  (wrote {path})")


if __name__ == "__main__":
    main()
