"""A small run directory written through the real RunDir API, for tests of what reads run dirs (report, compare).

Its numbers are made up but consistent: every file the loop would commit for
the stages a reader uses, recorded in state.json with its sha256.
"""

from pathlib import Path

import pyarrow as pa

from orchestrator.config import load_config
from orchestrator.evaluation import stats
from orchestrator.evaluation.labels import label_quality
from orchestrator.run import artifacts
from orchestrator.run.rundir import RunDir

EVIL = "<script>alert('x')</script> & <img src=http://example.com/x.png>"
N = 10  # held-out verifiable prompts of the made-up evaluations


def _acc(value: float) -> dict:
    return stats.proportion(round(value * N), N).to_json()


def _table(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{**{n: None for n in schema.names}, **r} for r in rows], schema=schema)


def _eval(rd: RunDir, t: int, accuracy: float) -> None:
    """M(t)'s held-out answers: prompt k correct for the first ``accuracy * N``; the later answers longer, repetitive."""
    rows = [{"iteration": t, "split": "verifiable", "prompt_id": f"h{k}", "prompt": f"What is {k} + 1?", "answer": str(k + 1),
             "response": f"It is {k + 1}." if k < accuracy * N else "the the the the", "num_tokens": 4 + t,
             "finish_reason": "stop" if k % 2 else "length", "correct": k < accuracy * N} for k in range(N)]
    rd.write_table(f"{rd.iter_dir(t)}/eval.parquet", _table(artifacts.EVAL, rows))
    rd.commit(rd.stage_key(t, "eval"), f"{rd.iter_dir(t)}/eval.parquet", N, 1.0, {})


def make_run(root: Path | str, iterations: int = 2, accuracy: tuple[float, ...] = (0.2, 0.3, 0.4)) -> Path:
    rd = RunDir(root)
    rd.open(load_config(None, [f"iterations={iterations}"]), {"selfreward-test": "1"})
    _eval(rd, 0, accuracy[0])
    rd.write_json(f"{rd.iter_dir(0)}/metrics.json", {"iteration": 0, "eval_accuracy": _acc(accuracy[0]),
                                                   "eval_fixed_judge": stats.mean([1.0, 2.0, 3.0]).to_json(),
                                                   "eval_self_judge": stats.mean([1.0, 2.0, 3.0]).to_json(),
                                                   "stage_seconds": {"eval": 3.0}, "iteration_seconds": 3.0})
    rd.commit(rd.stage_key(0, "metrics"), f"{rd.iter_dir(0)}/metrics.json", None, 0.0, {})
    for t in range(1, iterations + 1):
        d = rd.iter_dir(t)
        pairs = _table(artifacts.PAIRS, [
            {"prompt_id": "p1", "prompt": EVIL, "chosen": "good " + EVIL, "rejected": "bad", "chosen_idx": 0,
             "rejected_idx": 1, "margin": 2.0, "consistency": 0.75, "p_correct": 0.9, "weight": 1.0, "kept": True,
             "chosen_correct": True, "rejected_correct": False, "label_p": 1.0},
            {"prompt_id": "p2", "prompt": "q2", "chosen": "c", "rejected": "r", "chosen_idx": 1, "rejected_idx": 0,
             "margin": 0.5, "consistency": 0.25, "p_correct": 0.55, "weight": 0.0, "kept": False,
             "drop_reason": "judge_uncertain", "label_p": 1.0},
        ])
        rd.write_table(f"{d}/pairs.parquet", pairs)
        rd.commit(rd.stage_key(t, "select"), f"{d}/pairs.parquet", pairs.num_rows, 0.1, {})
        rewards = _table(artifacts.REWARDS, [
            {"prompt_id": p, "sample_idx": k, "judge_mean": 1.0 + k + t / 2, "num_tokens": 5} for p in ("p1", "p2") for k in (0, 1)
        ])
        rd.write_table(f"{d}/rewards.parquet", rewards)
        judgments = _table(artifacts.JUDGMENTS, [
            {"prompt_id": p, "sample_idx": k, "judge_model": "current", "judge_idx": 0,
             "judge_text": f"verdict {EVIL}\nScore: {1 + k}", "score": 1.0 + k} for p in ("p1", "p2") for k in (0, 1)
        ])
        rd.write_table(f"{d}/judgments.parquet", judgments)
        adapter = f"{d}/adapter"
        rd.storage.write_text(f"{adapter}/adapter_config.json", "{}")
        steps = [{"step": s, "epoch": 0, "loss": 0.69 - 0.1 * s, "reward_accuracy": 0.5, "reward_margin": 0.1 * s,
                  "pairs": 1, "tokens": 20} for s in (1, 2)]
        rd.commit(rd.stage_key(t, "train"), adapter, None, 5.0, {"steps": steps, "optimizer_steps": 2})
        _eval(rd, t, accuracy[t])
        quality = label_quality(pairs)
        rd.write_json(f"{d}/metrics.json", {
            "iteration": t, "eval_accuracy": _acc(accuracy[t]),
            "eval_accuracy_vs_m0": stats.paired_difference({k: float(k < accuracy[t] * N) for k in range(N)},
                                                           {k: float(k < accuracy[0] * N) for k in range(N)}).to_json(),
            "eval_fixed_judge": stats.mean([2.0, 2.0 + t / 5, 2.0]).to_json(),
            "eval_self_judge": stats.mean([2.5, 2.5 + 2 * t / 5, 2.5]).to_json(),
            "win_rate": stats.proportion(2, 4).to_json(), "tie_rate": stats.proportion(1, 4).to_json(),
            "loss_rate": stats.proportion(1, 4).to_json(), "win_counts": {"win": 2, "tie": 1, "loss": 1, "invalid": 0},
            "pairwise_position_consistency": stats.proportion(3, 4).to_json(),
            "pairwise_first_position_rate": stats.proportion(4, 8).to_json(), "pairwise_degenerate": None,
            "judge_auroc": stats.auroc([3, 2, 1, 2, 4, 1], [True, True, False, False, True, False], "aabbcc").to_json(),
            "mean_consistency": stats.mean([0.25, 0.75]).to_json() if t > 1 else stats.unmeasured(0, "no previous judge").to_json(),
            "agreement_rate": stats.proportion(3, 5).to_json() if t > 1 else stats.unmeasured(0, "policy = reference").to_json(),
            "label_quality": quality, "kept_label_precision": quality["kept"]["precision"],
            "dropped_label_precision": quality["dropped"]["precision"],
            "pairs_built": 2, "pairs_kept": 1, "drops": {"judge_uncertain": 1}, "dpo_loss": 0.5, "iteration_seconds": 20.0,
            "stage_seconds": {"generate": 5.0, "judge": 5.0, "score": 2.0, "select": 0.1, "train": 5.0, "eval": 2.9},
        })
        rd.commit(rd.stage_key(t, "metrics"), f"{d}/metrics.json", None, 0.0, {})
    rd.close()
    return root
