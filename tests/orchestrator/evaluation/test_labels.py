import pyarrow as pa
import pytest

from orchestrator.evaluation.labels import judge_agreement, judge_calibration
from orchestrator.run import artifacts


def _judgments(rows):
    return pa.Table.from_pylist(
        [{"prompt_id": p, "sample_idx": k, "judge_model": "current", "judge_idx": j, "judge_text": "", "score": s,
          "seed": 0, "num_tokens": 1, "score_expected": e} for p, k, j, s, e in rows],
        schema=artifacts.JUDGMENTS,
    )


def test_judge_agreement_compares_one_pass_with_the_sample_mean():
    table = _judgments([
        # prompt a: sample means 4, 1, 3; one-pass expectations (verdict 0) 3.5, 1.5, 3.8
        ("a", 0, 0, 4.0, 3.5), ("a", 0, 1, 4.0, 3.0),
        ("a", 1, 0, 1.0, 1.5), ("a", 1, 1, 1.0, 2.0),
        ("a", 2, 0, 2.0, 3.8), ("a", 2, 1, 4.0, 1.0),
    ])
    got = judge_agreement(table)
    # Pairs (0,1): 4>1 and 3.5>1.5 agree; (0,2): 4>3 but 3.5<3.8 disagree; (1,2): 1<3 and 1.5<3.8 agree.
    assert got["pairs_compared"] == 3 and got["pair_order_agreement"]["value"] == pytest.approx(2 / 3)
    assert (got["pair_order_agreement"]["k"], got["pair_order_agreement"]["n"]) == (2, 3)
    assert got["mean_abs_diff"] == pytest.approx((0.5 + 0.5 + 0.8) / 3)
    assert got["responses"] == 3 and -1 <= got["pearson"] <= 1


def test_judge_agreement_absent_without_expected_scores():
    assert judge_agreement(_judgments([("a", 0, 0, 4.0, None)])) is None


def _rewards(rows):
    names = artifacts.REWARDS.names
    return pa.Table.from_pylist([{**{n: None for n in names}, **r} for r in rows], schema=artifacts.REWARDS)


def test_judge_calibration_auroc_by_hand():
    rewards = _rewards([
        # Correct responses scored 4 and 2, incorrect ones 1 and 2: AUROC = (1 + 1 + 1 + 0.5) / 4 = 0.875.
        {"prompt_id": "a", "sample_idx": 0, "correct": True, "grade_rule": "explicit", "judge_mean": 4.0, "judge_expected": 1.0},
        {"prompt_id": "a", "sample_idx": 1, "correct": False, "grade_rule": "explicit", "judge_mean": 1.0, "judge_expected": 3.0},
        {"prompt_id": "b", "sample_idx": 0, "correct": True, "grade_rule": "result", "judge_mean": 2.0, "judge_expected": 2.0},
        {"prompt_id": "b", "sample_idx": 1, "correct": False, "grade_rule": "comparative", "judge_mean": 2.0, "judge_expected": 3.5},
        # Left out: no gradable answer, no reference answer.
        {"prompt_id": "b", "sample_idx": 2, "correct": False, "grade_rule": "ungradable", "judge_mean": 0.0, "judge_expected": 0.0},
        {"prompt_id": "c", "sample_idx": 0, "correct": None, "grade_rule": None, "judge_mean": 5.0, "judge_expected": 5.0},
    ])
    got = judge_calibration(rewards)
    assert got["judge_auroc"]["value"] == 0.875 and got["judge_auroc"]["n"] == 4 and got["graded_responses"] == 4
    # Expected scores 1, 2 (correct) against 3, 3.5 (incorrect): the judge ranks them backwards.
    assert got["judge_auroc_expected"]["value"] == 0.0
    assert got["judge_auroc_previous"] is None  # no previous judge in this run
    assert got["judge_score_mean"]["value"] == pytest.approx(14 / 6) and got["judge_score_mean"]["n"] == 6
    one_class = judge_calibration(_rewards([{"prompt_id": "a", "sample_idx": 0, "correct": False, "grade_rule": "explicit",
                                             "judge_mean": 3.0}]))
    assert one_class["judge_auroc"]["value"] is None and one_class["judge_auroc"]["why"] == "no correct responses"
