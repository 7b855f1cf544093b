import pyarrow as pa
import pytest

from orchestrator import artifacts
from orchestrator.metrics import judge_agreement


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
    assert got["pairs_compared"] == 3 and got["pair_order_agreement"] == pytest.approx(2 / 3)
    assert got["mean_abs_diff"] == pytest.approx((0.5 + 0.5 + 0.8) / 3)
    assert got["responses"] == 3 and -1 <= got["pearson"] <= 1


def test_judge_agreement_absent_without_expected_scores():
    assert judge_agreement(_judgments([("a", 0, 0, 4.0, None)])) is None
