import json

import pyarrow as pa
import pytest

from orchestrator import artifacts
from orchestrator.config import load_config
from orchestrator.data import DataError, load_prompts
from orchestrator.evaluation import eval_summary, load_eval_sets, outcome


@pytest.mark.parametrize(
    "first, second, expected",
    [
        ("A", "B", "win"),  # preferred in both orders
        ("B", "A", "loss"),
        ("A", "A", "tie"),  # always the first position: position bias, no preference
        ("B", "B", "tie"),
        ("tie", "tie", "tie"),
        ("A", "tie", "win"),
        ("tie", "A", "loss"),
        (None, "B", "invalid"),
        ("A", None, "invalid"),
    ],
)
def test_position_swapped_outcome(first, second, expected):
    assert outcome(first, second) == expected


def test_eval_summary_counts_by_hand():
    rows = [
        {"split": "verifiable", "correct": True, "num_tokens": 3},
        {"split": "verifiable", "correct": False, "num_tokens": 4},
        {"split": "verifiable", "correct": True, "num_tokens": 5},
        {"split": "instruction", "fixed_judge_score": 4.0, "self_judge_score": 5.0, "outcome": "win", "num_tokens": 10},
        {"split": "instruction", "fixed_judge_score": None, "self_judge_score": 3.0, "outcome": "tie", "num_tokens": 10},
        {"split": "instruction", "fixed_judge_score": 2.0, "self_judge_score": None, "outcome": "invalid", "num_tokens": 10},
        {"split": "instruction", "fixed_judge_score": 3.0, "self_judge_score": 4.0, "outcome": "loss", "num_tokens": 10},
    ]
    table = pa.Table.from_pylist([{**{n: None for n in artifacts.EVAL.names}, **r} for r in rows], schema=artifacts.EVAL)
    s = eval_summary(table)
    assert s["eval_accuracy"] == pytest.approx(2 / 3)
    assert s["eval_fixed_judge"] == pytest.approx(3.0) and s["eval_self_judge"] == pytest.approx(4.0)
    assert s["eval_judge_parse_failures"] == 2
    assert s["win_counts"] == {"win": 1, "loss": 1, "tie": 1, "invalid": 1}
    # Rates are over decided outcomes (invalid apart): 1 win, 1 tie, 1 loss.
    assert s["win_rate"] == s["tie_rate"] == s["loss_rate"] == pytest.approx(1 / 3)
    assert s["eval_response_tokens"] == 52


def test_eval_summary_of_a_baseline_has_no_win_rate():
    table = pa.Table.from_pylist([{**{n: None for n in artifacts.EVAL.names}, "split": "instruction",
                                   "fixed_judge_score": 2.0, "self_judge_score": 2.0, "num_tokens": 1}], schema=artifacts.EVAL)
    s = eval_summary(table)
    assert s["win_rate"] is None and s["eval_accuracy"] is None and s["eval_verifiable"] == 0


def test_eval_sets_take_the_first_n_and_refuse_training_prompts(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"train {i}"}) + "\n" for i in range(5)))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"held {i}", "answer": str(i)}) + "\n" for i in range(5)))
    cfg = load_config(None, [f"data.prompts={train}", f"eval.verifiable={held}", "eval.verifiable_prompts=3",
                             "eval.instructions=null"])
    sets, _ = load_eval_sets(cfg, load_prompts(train))
    assert sets.verifiable["prompt"].to_pylist() == ["held 0", "held 1", "held 2"] and sets.instructions is None
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"prompt": "held 9"}) + "\n" + json.dumps({"prompt": "train 3"}) + "\n")
    cfg = load_config(None, [f"data.prompts={train}", f"eval.instructions={leaky}", "eval.verifiable=null"])
    with pytest.raises(DataError, match=r"eval.instructions .*leaky.jsonl.* shares 1 prompt\(s\) with data.prompts"):
        load_eval_sets(cfg, load_prompts(train))
    no_answer = tmp_path / "na.jsonl"
    no_answer.write_text(json.dumps({"prompt": "held x"}) + "\n")
    cfg = load_config(None, [f"data.prompts={train}", f"eval.verifiable={no_answer}", "eval.instructions=null"])
    with pytest.raises(DataError, match=r"na.jsonl:1: column 'answer' must hold the reference answer"):
        load_eval_sets(cfg, load_prompts(train))


def test_shipped_configs_evaluate_on_held_out_sets():
    from tests.orchestrator.test_config import CONFIGS

    for path in CONFIGS:
        cfg = load_config(path)
        sets, _ = load_eval_sets(cfg, load_prompts(cfg.data.prompts, cfg.data.columns))  # raises on any overlap
        assert sets.verifiable is not None and sets.instructions is not None, path.name
