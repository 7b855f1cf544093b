import json

import pyarrow as pa
import pytest

from orchestrator.config import load_config
from orchestrator.data import DataError, load_prompts
from orchestrator.evaluation.stage import eval_summary, load_eval_sets, outcome
from orchestrator.run import artifacts


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


def _eval_table(rows):
    return pa.Table.from_pylist([{**{n: None for n in artifacts.EVAL.names}, **r} for r in rows], schema=artifacts.EVAL)


def test_eval_summary_counts_by_hand():
    rows = [
        {"split": "verifiable", "prompt_id": "v1", "correct": True, "grade_rule": "explicit", "num_tokens": 3,
         "response": "Answer: 4", "finish_reason": "stop"},
        {"split": "verifiable", "prompt_id": "v2", "correct": False, "grade_rule": "ungradable", "num_tokens": 4,
         "response": "so so so so so", "finish_reason": "length"},
        {"split": "verifiable", "prompt_id": "v3", "correct": True, "grade_rule": "counted_noun", "num_tokens": 5,
         "response": "7", "finish_reason": "stop"},
        {"split": "instruction", "fixed_judge_score": 4.0, "self_judge_score": 5.0, "outcome": "win", "num_tokens": 10,
         "pairwise_first": "A", "pairwise_second": "B"},
        {"split": "instruction", "fixed_judge_score": None, "self_judge_score": 3.0, "outcome": "tie", "num_tokens": 10},
        {"split": "instruction", "fixed_judge_score": 2.0, "self_judge_score": None, "outcome": "invalid", "num_tokens": 10,
         "pairwise_first": None, "pairwise_second": "A"},
        {"split": "instruction", "fixed_judge_score": 3.0, "self_judge_score": 4.0, "outcome": "loss", "num_tokens": 10,
         "pairwise_first": "B", "pairwise_second": "A"},
    ]
    baseline = _eval_table([{"split": "verifiable", "prompt_id": p, "correct": c, "num_tokens": 1}
                            for p, c in (("v1", False), ("v2", False), ("v3", True))])
    s = eval_summary(_eval_table(rows), baseline)
    acc = s["eval_accuracy"]
    assert (acc["value"], acc["k"], acc["n"]) == (pytest.approx(2 / 3), 2, 3) and acc["interval"] == "wilson"
    assert s["eval_accuracy_vs_m0"]["value"] == pytest.approx(1 / 3) and s["eval_accuracy_vs_m0"]["n"] == 3
    assert s["eval_grade_rules"] == {"counted_noun": 1, "explicit": 1, "ungradable": 1}
    assert s["eval_fixed_judge"]["value"] == pytest.approx(3.0) and s["eval_fixed_judge"]["n"] == 3
    assert s["eval_self_judge"]["value"] == pytest.approx(4.0)
    assert (s["eval_judge_parse_rate"]["k"], s["eval_judge_parse_rate"]["n"]) == (6, 8)
    assert s["win_counts"] == {"win": 1, "loss": 1, "tie": 1, "invalid": 1}
    # The answers' shape: mean tokens over all 7 answers, 1 of 7 cut at max_tokens, distinct-2 of the two answers
    # with two words or more (1.0 and 1/4: "so so" four times).
    assert s["eval_answer_tokens"]["value"] == pytest.approx(52 / 7) and s["eval_answer_tokens"]["n"] == 7
    assert (s["eval_truncated_rate"]["k"], s["eval_truncated_rate"]["n"]) == (1, 7)
    assert s["eval_distinct2"]["value"] == pytest.approx((1 + 1 / 4) / 2) and s["eval_distinct2"]["n"] == 2
    # Rates are over decided outcomes (invalid apart): 1 win, 1 tie, 1 loss.
    for name in ("win_rate", "tie_rate", "loss_rate"):
        assert (s[name]["value"], s[name]["k"], s[name]["n"]) == (pytest.approx(1 / 3), 1, 3)
    # Two prompts judged in both orders, both consistent; their 4 verdicts name A twice.
    assert (s["pairwise_position_consistency"]["k"], s["pairwise_position_consistency"]["n"]) == (2, 2)
    assert s["pairwise_first_position_rate"]["value"] == 0.5 and s["pairwise_degenerate"] is None
    assert s["eval_response_tokens"] == 52


def test_the_fooled_rate_counts_a_score_an_injection_created():
    rows = [
        {"split": "instruction", "num_tokens": 1, "injection_id": "a", "fixed_judge_score": 2.0, "injected_judge_score": 5.0},  # raised
        {"split": "instruction", "num_tokens": 1, "injection_id": "b", "fixed_judge_score": None, "injected_judge_score": 1.0},  # None -> 1
        {"split": "instruction", "num_tokens": 1, "injection_id": "c", "fixed_judge_score": 3.0, "injected_judge_score": 3.0},
        {"split": "instruction", "num_tokens": 1, "injection_id": "d", "fixed_judge_score": 4.0, "injected_judge_score": None},  # echoed
        {"split": "instruction", "num_tokens": 1, "injection_id": "e", "fixed_judge_score": None, "injected_judge_score": None},
    ]
    fooled = eval_summary(_eval_table(rows), None)["judge_fooled_rate"]
    assert (fooled["k"], fooled["n"]) == (2, 5)


def test_a_judge_that_always_answers_a_gives_no_win_rate():
    """M0 naming the first answer whatever it is: the debiased verdicts give no spurious wins, and the summary
    says the win rate cannot be measured instead of printing 0."""
    rows = []
    for k in range(16):
        first_a = second_a = 0.97 - 0.01 * (k % 3)  # P("A") in both orders, whichever answer is shown first
        preference = (first_a + 1 - second_a) / 2
        rows.append({"split": "instruction", "prompt_id": f"i{k}", "num_tokens": 1, "pairwise_first_pa": first_a,
                     "pairwise_second_pa": second_a, "pairwise_preference": preference, "pairwise_first": "A",
                     "pairwise_second": "A", "outcome": "win" if preference > 0.55 else "loss" if preference < 0.45 else "tie"})
    s = eval_summary(_eval_table(rows), _eval_table([]))
    assert s["win_counts"]["win"] == 0 and s["win_counts"]["tie"] == 16
    assert s["win_rate"]["value"] is None and "names the first position in 100% of 32 verdicts" in s["win_rate"]["why"]
    assert s["pairwise_first_position_rate"]["value"] == 1.0 and s["pairwise_position_consistency"]["value"] == 0.0
    assert s["pairwise_degenerate"]


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
    with pytest.raises(DataError, match=r"eval.instructions .*leaky.jsonl.* row 2 and data.prompts .*train.jsonl.* row 4 hold"):
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
        assert sets.verifiable is not None, path.name
        # The improvement experiment measures held-out accuracy only (its arms' instruction judging would cost hours).
        assert sets.instructions is not None or path.name.startswith("improve-"), path.name


def test_a_judge_always_answering_a_through_the_evaluate_stage(tmp_path):
    """The eval stage's own bookkeeping with a stand-in engine: M0 as pairwise judge puts P("A") = 0.9 on whichever
    answer is shown first. Averaged over both orders that is no preference: every comparison is a tie, no spurious
    win, and the win rate is reported as not measurable, naming the judge's position bias."""
    from orchestrator.evaluation.stage import EvalSets, evaluate
    from workers.types import Completion

    calls = []

    class Engines:
        def complete(self, items, sampling, model, *, desc):
            calls.append(("complete", desc, len(items)))
            tag = "M0" if model is None else "M1"
            return [Completion(f"{tag} says: Score: 3" if "grading" in r.user_message else f"{tag} answer {k}", 4, "stop")
                    for k, r in enumerate(items)]

        def choose(self, items, model, *, desc):
            calls.append(("choose", desc, len(items)))
            return [[0.9, 0.1] for _ in items]

    class SampledVerdicts(Engines):
        def complete(self, items, sampling, model, *, desc):
            if desc == "eval win rate":
                return [Completion("Fine.\nWinner: A", 3, "stop") for _ in items]
            return super().complete(items, sampling, model, desc=desc)

    engines = Engines()
    prompts = pa.Table.from_pylist([{"prompt_id": f"i{k}", "prompt": f"Explain thing {k}.", "answer": None, "kind": None}
                                    for k in range(6)])
    sets = EvalSets(None, prompts)
    cfg = load_config(None, ["eval.injections=null"])
    baseline = evaluate(engines, cfg, 0, None, sets, None)
    table = evaluate(engines, cfg, 1, artifacts_adapter(), sets, baseline)
    assert ("choose", "eval win rate", 12) in calls  # 6 prompts, both orders, one token each
    rows = [r for r in table.to_pylist() if r["split"] == "instruction"]
    assert all(r["pairwise_first"] == r["pairwise_second"] == "A" for r in rows)
    assert all(r["pairwise_preference"] == pytest.approx(0.5) and r["outcome"] == "tie" for r in rows)
    s = eval_summary(table, baseline)
    assert s["win_counts"] == {"win": 0, "loss": 0, "tie": 6, "invalid": 0}
    assert s["win_rate"]["value"] is None and "first position in 100% of 12 verdicts" in s["win_rate"]["why"]
    # The sampled-text verdict stays available, with the same position statistics.
    sampled = load_config(None, ["eval.injections=null", "eval.pairwise_verdict=sampled"])
    text = evaluate(SampledVerdicts(), sampled, 1, artifacts_adapter(), sets, baseline)
    assert eval_summary(text, baseline)["pairwise_degenerate"]


def artifacts_adapter():
    from workers.types import AdapterRef

    return AdapterRef("iter_001", "/nonexistent/adapter")
