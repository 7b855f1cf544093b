import pyarrow as pa
import pytest

from orchestrator import artifacts
from orchestrator.pairs import DROP_FEW_VALID, DROP_TIE, build_pairs, p_chosen_beats_rejected


def _tables(scores: dict[str, list[list[float | None]]]):
    gens, rewards, judg = [], [], []
    for pid, per_sample in scores.items():
        for k, samples in enumerate(per_sample):
            gens.append({"iteration": 1, "prompt_id": pid, "prompt": f"q-{pid}", "sample_idx": k,
                         "response": f"{pid}-r{k}", "num_tokens": 3, "finish_reason": "stop", "seed": k})
            valid = [s for s in samples if s is not None]
            rewards.append({"prompt_id": pid, "sample_idx": k, "judge_mean": sum(valid) / len(valid) if valid else None,
                            "judge_std": 0.0 if valid else None, "judge_valid": len(valid), "judge_mean_prev": None,
                            "logp_policy": -1.0, "logp_ref": -1.0, "num_tokens": 3})
            for j, s in enumerate(samples):
                judg.append({"prompt_id": pid, "sample_idx": k, "judge_model": "current", "judge_idx": j,
                             "judge_text": "", "score": s, "seed": 0, "num_tokens": 1})
    return (pa.Table.from_pylist(gens, schema=artifacts.GENERATIONS), pa.Table.from_pylist(rewards, schema=artifacts.REWARDS),
            pa.Table.from_pylist(judg, schema=artifacts.JUDGMENTS))


def test_best_vs_worst_ties_and_invalid():
    g, r, j = _tables({
        "a": [[3.0, 4.0], [1.0, 1.0], [5.0, 5.0], [2.0, None]],  # best 2 (5.0), worst 1 (1.0)
        "b": [[2.0], [2.0], [2.0]],  # all tied
        "c": [[None], [4.0], [None]],  # one valid only
        "d": [[4.0], [1.0], [4.0], [1.0]],  # equal best/worst: lowest idx best, highest idx worst
    })
    pairs = build_pairs(g, r, j)
    artifacts.check_contract(pairs, "pairs")
    rows = {x["prompt_id"]: x for x in pairs.to_pylist()}
    assert pairs.num_rows == 4
    a = rows["a"]
    assert (a["chosen_idx"], a["rejected_idx"], a["kept"], a["drop_reason"]) == (2, 1, True, None)
    assert a["margin"] == pytest.approx(4.0) and a["chosen"] == "a-r2" and a["weight"] == 1.0
    assert a["p_correct"] == pytest.approx(1.0)
    assert (rows["b"]["kept"], rows["b"]["drop_reason"], rows["b"]["margin"]) == (False, DROP_TIE, 0.0)
    assert (rows["c"]["kept"], rows["c"]["drop_reason"], rows["c"]["chosen"]) == (False, DROP_FEW_VALID, None)
    assert (rows["d"]["chosen_idx"], rows["d"]["rejected_idx"]) == (0, 3)
    assert all(x["consistency"] is None for x in rows.values())  # not computed: null, not invented


def test_p_correct_counts_ties_half():
    assert p_chosen_beats_rejected([3.0, 2.0], [2.0, 1.0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert p_chosen_beats_rejected([], [1.0]) is None
