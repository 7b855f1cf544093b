"""Run every benchmark, one after the other (each needs the machine to itself), and summarise the ratios.

    python -m benchmarks [--only dispatch engine_pool adapter_serving judge trainer loop input_checks gpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import RESULTS, table

ALL = ["dispatch", "engine_pool", "adapter_serving", "judge", "trainer", "loop", "input_checks", "gpu"]
HEADLINES = {
    "dispatch": lambda r: ("pool / round-robin throughput (uneven shards; one slow engine)",
                           " ; ".join(f"{v:.2f}" for v in r["throughput_ratio_pool_over_round_robin"].values())),
    "engine_pool": lambda r: ("engine pool / raw vLLM tok/s (goal >= 0.97); node's threads / one thread",
                              f"{r['ratio_ours_over_raw']:.3f}; {r['ratio_node_threads_over_one_thread']:.2f}"),
    "adapter_serving": lambda r: ("merged / LoRA adapter serving: generate tok/s ; score seq/s",
                                  f"{r['generate_ratio_merged_over_lora']:.2f} ; {r['score_ratio_merged_over_lora']:.2f}"),
    "judge": lambda r: ("judge tok/s, best variant / question-first without cache",
                        f"{max(v['speedup_vs_first'] for v in r['variants'].values()):.2f}"),
    "trainer": lambda r: ("ours / TRL DPOTrainer pairs/s (goal >= 1.3)",
                          f"{r['ratio_ours_over_trl_pairs_per_s']:.2f}, TRL in bf16 autocast "
                          f"{r['ratio_ours_over_trl_bf16_pairs_per_s']:.2f} (step-1 loss = TRL's: {r['losses_agree']}, "
                          f"= direct: {r['ours_step1_matches_direct']})"),
    "input_checks": lambda r: ("prompt sizing by the byte bound / exact token counts, prompts/s",
                               f"{r['ratio_bound_over_exact']:.1f} (same prompts kept: {r['same_prompts_kept']})"),
    "loop": lambda r: ("driver overhead (goal <= 2%); cost exponent (goal <= 1.05)",
                       f"{100 * r['driver_overhead_max']:.2f}%; {r['cost_exponent']:.3f}"),
    "gpu": lambda r: ("full fine-tune MFU, 0.5B ; 1.5B (goal >= 45%)", r["skipped"] if "skipped" in r else " ; ".join(
        f"{100 * m['full']['mfu']:.1f}%" if m["full"]["mfu"] is not None else "-" for m in r["models"].values())),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=ALL, default=ALL)
    args = p.parse_args()
    for name in args.only:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
    rows = [["benchmark", "measure", "value"]]
    summary = {}
    for name in ALL:
        path = RESULTS / f"{name}.json"
        if path.is_file():
            label, value = HEADLINES[name](json.loads(path.read_text()))
            rows.append([name, label, value])
            summary[name] = {"measure": label, "value": value}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
