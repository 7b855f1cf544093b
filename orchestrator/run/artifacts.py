"""The artifact contract: the columns (and types) each Parquet artifact must have.

Tables are built against these schemas, so a stage cannot commit a table
that breaks the contract; ``check_contract`` verifies a file read back.
"""

from __future__ import annotations

import pyarrow as pa

GENERATIONS = pa.schema([
    ("iteration", pa.int32()), ("prompt_id", pa.string()), ("prompt", pa.string()),
    ("sample_idx", pa.int32()), ("response", pa.string()), ("num_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("seed", pa.int64()),
])

JUDGMENTS = pa.schema([
    ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("judge_model", pa.string()),
    ("judge_idx", pa.int32()), ("judge_text", pa.string()), ("score", pa.float64()),
    ("seed", pa.int64()), ("num_tokens", pa.int32()),
    # judge.expected_score: E[score] and P(score = 0..5) from the judge's
    # next-token distribution after "Score:" in this verdict (null when off, and for the previous judge).
    ("score_expected", pa.float64()), ("score_probs", pa.list_(pa.float64())),
])

REWARDS = pa.schema([
    ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("judge_mean", pa.float64()),
    ("judge_std", pa.float64()), ("judge_valid", pa.int32()), ("judge_mean_prev", pa.float64()),
    ("logp_policy", pa.float64()), ("logp_ref", pa.float64()), ("num_tokens", pa.int32()),
    # logp_prev: under M(t-2), the policy before the current one (null at t=1).
    ("logp_prev", pa.float64()),
    ("logp_policy_norm", pa.float64()), ("logp_ref_norm", pa.float64()), ("logp_prev_norm", pa.float64()),
    # Mean expected score over the verdicts, and the std of their mixture (null unless judge.expected_score).
    ("judge_expected", pa.float64()), ("judge_expected_std", pa.float64()),
    # Whether the response matches the prompt's reference answer (null when the prompt has none; an ungradable
    # response is False) and the grading rule (orchestrator/evaluation/answers.py; "ungradable": no final answer found).
    ("correct", pa.bool_()), ("grade_rule", pa.string()),
    # Summed log-probs of T MC-dropout passes of the policy, and the reference's by the same model code without
    # dropout (null when off, and while the policy is the reference).
    ("logp_mc", pa.list_(pa.float64())), ("logp_mc_ref", pa.float64()),
])

PAIRS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("chosen_idx", pa.int32()), ("rejected_idx", pa.int32()),
    ("margin", pa.float64()), ("consistency", pa.float64()), ("p_correct", pa.float64()),
    ("weight", pa.float64()), ("kept", pa.bool_()), ("drop_reason", pa.string()),
    ("chosen_finish_reason", pa.string()), ("rejected_finish_reason", pa.string()),
    # beta * (implicit reward of chosen - of rejected); null while the policy is the reference.
    ("implicit_margin", pa.float64()),
    # Per-token log-likelihood of chosen minus rejected under the policy, and the same of its change since the
    # previous model (null at iteration 1): internal signals defined without a reference.
    ("likelihood_margin", pa.float64()), ("likelihood_change_margin", pa.float64()),
    # MC-dropout uncertainty of the pair (selection.mc_dropout.measure: flip, BALD or variance; null when off).
    ("uncertainty", pa.float64()),
    # Whether chosen / rejected is correct; null when the prompt has no reference answer or the response has no
    # gradable answer (such a pair decides nothing about label precision).
    ("chosen_correct", pa.bool_()), ("rejected_correct", pa.bool_()),
    # Target probability that chosen wins, as the loss uses it (1 = hard label).
    ("label_p", pa.float64()),
])

EVAL = pa.schema([
    # The model evaluated (M(t); 0 = the base model) and which held-out set the row is from.
    ("iteration", pa.int32()), ("split", pa.string()),  # "verifiable" or "instruction"
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
    # Its greedy response.
    ("response", pa.string()), ("num_tokens", pa.int32()), ("finish_reason", pa.string()),
    # verifiable: the final answer the grader found, whether it matches (an ungradable answer is incorrect), and the
    # grading rule that found it ("explicit", a fallback of the task's kind, "two_answers" or "ungradable").
    ("extracted", pa.string()), ("correct", pa.bool_()), ("grade_rule", pa.string()),
    # instruction: rubric verdicts of the fixed judge M0 and of the evaluated model itself.
    ("fixed_judge_text", pa.string()), ("fixed_judge_score", pa.float64()),
    ("self_judge_text", pa.string()), ("self_judge_score", pa.float64()),
    # instruction, t >= 1: M0's response, and M0's pairwise verdicts with M(t) shown first ("A") and second: the
    # position each names ("A", "B", "tie"), and either the verdict's text (eval.pairwise_verdict=sampled) or its
    # P("A") over {A, B} (probability), with the order-averaged P(M(t) preferred).
    ("baseline_response", pa.string()),
    ("pairwise_first_text", pa.string()), ("pairwise_first", pa.string()),
    ("pairwise_second_text", pa.string()), ("pairwise_second", pa.string()),
    ("pairwise_first_pa", pa.float64()), ("pairwise_second_pa", pa.float64()), ("pairwise_preference", pa.float64()),
    # From M(t)'s side: "win", "loss", "tie" or "invalid" (a verdict could not be parsed).
    ("outcome", pa.string()),
    # instruction: the fixed judge's verdict on the response with an injection appended (eval.injections).
    ("injection_id", pa.string()), ("injected_judge_text", pa.string()), ("injected_judge_score", pa.float64()),
])

CONTRACT = {"generations": GENERATIONS, "judgments": JUDGMENTS, "rewards": REWARDS, "pairs": PAIRS, "eval": EVAL}


class ContractError(ValueError):
    """A table lacks a contract column or has it with the wrong type."""


def check_contract(table: pa.Table, kind: str, source: str = "") -> None:
    """Raise ContractError naming the artifact and column when ``table`` breaks the contract."""
    where = f" in {source}" if source else ""
    for f in CONTRACT[kind]:
        if f.name not in table.schema.names:
            raise ContractError(f"{kind}{where}: missing column {f.name!r}")
        got = table.schema.field(f.name).type
        if got != f.type:
            raise ContractError(f"{kind}{where}: column {f.name!r} is {got}, expected {f.type}")
