import pyarrow as pa
import pytest

from orchestrator.evaluation.labels import error_ranking, judge_agreement, judge_calibration, labellers
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
    rows = []
    for i in range(5):  # five prompts, each with a correct and an incorrect response
        p = f"p{i}"
        rows += [
            # The judge scores the correct response i + 1 and the incorrect one i + 0.5: within every prompt it is
            # right (1.0); pooled, correct j beats incorrect i only when j >= i (15 of 25).
            {"prompt_id": p, "sample_idx": 0, "correct": True, "grade_rule": "explicit", "judge_mean": i + 1.0,
             "judge_expected": 1.0, "num_tokens": 10 + i},
            {"prompt_id": p, "sample_idx": 1, "correct": False, "grade_rule": "explicit", "judge_mean": i + 0.5,
             "judge_expected": 3.0, "num_tokens": 20 + i},
        ]
    rows += [  # left out: no gradable answer, no reference answer
        {"prompt_id": "p0", "sample_idx": 2, "correct": False, "grade_rule": "ungradable", "judge_mean": 0.0,
         "judge_expected": 0.0, "num_tokens": 5},
        {"prompt_id": "q", "sample_idx": 0, "correct": None, "grade_rule": None, "judge_mean": 5.0, "judge_expected": 5.0,
         "num_tokens": 5},
    ]
    generations = pa.Table.from_pylist([{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"],
                                         "finish_reason": "stop" if r["correct"] else "length"} for r in rows])
    got = judge_calibration(_rewards(rows), generations)
    assert got["graded_responses"] == 10
    assert got["judge_auroc"]["value"] == 0.6 and got["judge_auroc_within"]["value"] == 1.0
    assert got["judge_auroc"]["classes"] == [5, 5] and got["judge_auroc"]["prompts"] == 5
    assert got["judge_auroc_expected"]["value"] == 0.0  # expected scores 1 (correct) against 3: backwards
    assert got["judge_auroc_previous"] is None and got["judge_auroc_previous_within"] is None  # no previous judge
    # The controls: the correct responses are the shorter ones, and the ones that stopped.
    assert got["length_auroc"]["value"] == 0.0 and got["stopped_auroc"]["value"] == 1.0
    assert got["judge_score_mean"]["value"] == pytest.approx((sum(i + 1.0 + i + 0.5 for i in range(5)) + 5) / 12)
    assert "stopped_auroc" in judge_calibration(_rewards(rows)) and judge_calibration(_rewards(rows))["stopped_auroc"] is None
    one_class = judge_calibration(_rewards([{"prompt_id": "a", "sample_idx": 0, "correct": False, "grade_rule": "explicit",
                                             "judge_mean": 3.0}]))
    assert one_class["judge_auroc"]["value"] is None
    assert one_class["judge_auroc"]["why"] == "0 correct / 1 incorrect: fewer than 5 of a class"

def _pairs(rows):
    names = artifacts.PAIRS.names
    base = {"prompt": "q", "chosen": "c", "rejected": "r", "margin": 1.0, "weight": 1.0, "kept": True,
            "drop_reason": None, "chosen_finish_reason": "stop", "rejected_finish_reason": "stop", "label_p": 1.0}
    return pa.Table.from_pylist([{**{n: None for n in names}, **base, **r} for r in rows], schema=artifacts.PAIRS)


def _generations(lengths):
    return pa.Table.from_pylist([{"prompt_id": p, "sample_idx": k, "num_tokens": n} for (p, k), n in lengths.items()])


def test_every_labeller_on_the_same_decided_pairs():
    rows, lengths = [], {}
    for i in range(6):
        p = f"p{i}"
        # Pair 0 of each prompt: the judge is right, the chosen response is longer and stopped, the likelihood
        # disagrees. Pair 1: the judge is wrong, the two are equally long and both stopped, the likelihood agrees.
        rows += [{"prompt_id": p, "chosen_idx": 0, "rejected_idx": 1, "chosen_correct": True, "rejected_correct": False,
                  "likelihood_margin": -0.5, "rejected_finish_reason": "length"},
                 {"prompt_id": p, "chosen_idx": 2, "rejected_idx": 3, "chosen_correct": False, "rejected_correct": True,
                  "likelihood_margin": 0.5},
                 # Undecided (both wrong) and a structural tie: no labeller is scored on them.
                 {"prompt_id": p, "chosen_idx": 1, "rejected_idx": 2, "chosen_correct": False, "rejected_correct": False},
                 {"prompt_id": p, "chosen_idx": 0, "rejected_idx": 3, "chosen_correct": True, "rejected_correct": True,
                  "drop_reason": "tie", "kept": False}]
        lengths |= {(p, 0): 40, (p, 1): 10, (p, 2): 20, (p, 3): 20}
    got = labellers(_pairs(rows), _generations(lengths))
    assert got["pair's label"]["labelled"] == got["pair's label"]["decided"] == 12
    assert got["pair's label"]["precision"]["value"] == 0.5 and got["pair's label"]["precision"]["prompts"] == 6
    assert got["likelihood"]["precision"]["value"] == 0.0  # it prefers the wrong response of every pair
    assert got["implicit reward"]["labelled"] == 0 and got["implicit reward"]["precision"]["value"] is None
    longer = got["longer response"]
    assert longer["labelled"] == 6 and longer["precision"]["value"] == 1.0  # abstains on the equal lengths
    assert longer["pair_label_same_pairs"]["value"] == 1.0  # the judge is right on those very pairs
    stopped = got["stopped response"]
    assert stopped["labelled"] == 6 and stopped["precision"]["value"] == 1.0


def test_error_ranking_scores_certainty_against_right_and_wrong_labels():
    rows, lengths = [], {}
    for i in range(6):
        p = f"p{i}"
        for k in range(6):  # three right labels (sure ones) and three wrong ones (unsure ones) per prompt
            right = k < 3
            rows.append({"prompt_id": p, "chosen_idx": 2 * k, "rejected_idx": 2 * k + 1, "chosen_correct": right,
                         "rejected_correct": not right, "uncertainty": 0.1 if right else 0.4, "p_correct": 0.5,
                         "consistency": 0.5 + i / 20, "likelihood_margin": None})
            lengths |= {(p, 2 * k): 10 + k, (p, 2 * k + 1): 10}
    got = error_ranking(_pairs(rows), _generations(lengths))
    assert got["MC-dropout certainty"]["pooled"]["value"] == 1.0 and got["MC-dropout certainty"]["within"]["value"] == 1.0
    assert got["judge-sample certainty"]["pooled"]["value"] == 0.5  # one value for every pair: no ranking
    assert got["likelihood margin"] is None  # the pairs do not carry it
    # Right labels' chosen responses are 0-2 tokens longer, wrong labels' 3-5: the control ranks them backwards.
    assert got["chosen longer (control)"]["within"]["value"] == 0.0
    assert got["MC-dropout certainty"]["pooled"]["classes"] == [18, 18]
