"""Checking a large prompt set before a run: sizing each prompt by the bound on its tokens (what ``selfreward run``
does) against counting every prompt's tokens exactly (the peer), in one process, on the same prompts.

Both load the same JSONL file (``load_prompts``) and apply ``data.overlong`` (``fit_to_context``) with the bundled
model's tokenizer and the tiny config's lengths; the kept prompts must be identical. The ratio is prompts per second,
bound / exact.

    python -m benchmarks.input_checks [--prompts 200000] [--exact-prompts 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks import table, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=200_000, help="prompts sized by the bound")
    p.add_argument("--exact-prompts", type=int, default=20_000, help="prompts counted exactly (the slow peer)")
    args = p.parse_args()

    from orchestrator.config import load_config
    from orchestrator.data import TokenBudget, fit_to_context, load_prompts
    from orchestrator.models import check_model, ensure_default_model
    from workers.tokens import prompt_token_ids

    cfg = load_config(Path(__file__).parents[1] / "jobs" / "configs" / "tiny-cpu.yaml")
    tokenizer = check_model(ensure_default_model(), False)
    budget = TokenBudget.of(cfg, tokenizer)

    class Exact(TokenBudget):
        def _need(self, text: str, extra: int) -> int:
            return len(prompt_token_ids(self.tokenizer, text)) + extra

    exact = Exact(*(getattr(budget, f) for f in ("tokenizer", "generation", "judge", "eval_answer", "limit")))
    results, rows = {}, [["sizing", "prompts", "load s", "size s", "prompts/s (size)"]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizing, n in (("bound", budget, args.prompts), ("exact", exact, args.exact_prompts),
                                ("bound (same prompts)", budget, args.exact_prompts)):
            path = Path(tmp) / f"{n}.jsonl"
            if not path.exists():
                path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)})
                                        + "\n" for i in range(n)))
            t0 = time.perf_counter()
            prompts = load_prompts(path)
            t1 = time.perf_counter()
            kept, counts = fit_to_context(prompts, sizing.training, cfg.model.max_model_len, cfg.data.overlong,
                                          sizing.shorten, "data.prompts")
            t2 = time.perf_counter()
            results[name] = {"prompts": n, "load_s": round(t1 - t0, 3), "size_s": round(t2 - t1, 3),
                             "prompts_per_s": round(n / (t2 - t1), 1), "kept": counts["kept"],
                             "kept_sha": hash(tuple(kept["prompt_id"].to_pylist()))}
            rows.append([name, str(n), f"{t1 - t0:.1f}", f"{t2 - t1:.2f}", f"{n / (t2 - t1):,.0f}"])
    same = results["exact"]["kept_sha"] == results["bound (same prompts)"]["kept_sha"]
    ratio = results["bound (same prompts)"]["prompts_per_s"] / results["exact"]["prompts_per_s"]
    print(table(rows))
    print(f"bound / exact prompts per second: {ratio:.1f} (same prompts kept: {same})")
    for r in results.values():
        r.pop("kept_sha")
    where = write_result("input_checks", {"results": results, "ratio_bound_over_exact": round(ratio, 2),
                                          "same_prompts_kept": same})
    print(f"wrote {where}")


if __name__ == "__main__":
    main()
