"""Every shipped recipe, 3 iterations on the tiny model and the verifiable set, through the real CLI.

Each run must produce every column its methods promise, with values that
agree with the definitions (recomputed here from the run's own artifacts).
"""

import json
import math

import pyarrow.parquet as pq
import pytest

from orchestrator.consistency import consistency
from tests.e2e.helpers import NO_EVAL, ROOT, check_run_dir, selfreward

pytestmark = pytest.mark.e2e

PROMPTS, SAMPLES, K = 3, 3, 2
TINY = [
    f"data.prompts_per_iteration={PROMPTS}",
    f"generation.samples_per_prompt={SAMPLES}",
    "generation.max_tokens=32",
    f"judge.judge_samples={K}",
    "judge.max_tokens=40",
    "resources.kv_cache_gib=2",
    # The recipes' selection and losses are under test here; the evaluation stage is tested in test_cli.
    *NO_EVAL,
]


def run_recipe(name: str, tmp_path) -> tuple:
    run_dir = tmp_path / name
    res = selfreward("run", str(ROOT / "jobs" / "configs" / f"{name}.yaml"), "--run-dir", str(run_dir), *TINY)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run_dir, res.stdout


def load(run_dir, t):
    d = run_dir / f"iter_{t:03d}"
    tables = {k: pq.read_table(d / f"{k}.parquet").to_pylist() for k in ("judgments", "rewards", "pairs")}
    return tables, json.loads((d / "metrics.json").read_text())


def candidates(pairs):
    """Pairs a filter could judge: not dropped for a structural reason."""
    structural = {"fewer_than_2_valid_scores", "tie", "below_margin", "over_cap"}
    return [p for p in pairs if p["drop_reason"] not in structural]


def check_common(run_dir, judges=1, one_pair_per_prompt=True):
    check_run_dir(run_dir, 3, PROMPTS, SAMPLES, K, judges, one_pair_per_prompt)
    for t in (1, 2, 3):
        tab, m = load(run_dir, t)
        # Verifiable set: every response is checked, every candidate pair labelled.
        assert all(r["correct"] is not None for r in tab["rewards"])
        assert all(p["chosen_correct"] is not None and p["rejected_correct"] is not None for p in candidates(tab["pairs"]))
        assert set(m["label_quality"]) == {"candidates", "kept", "dropped", "by_filter"}
        assert all((r["logp_prev"] is None) == (t == 1) for r in tab["rewards"])
        assert all(r["logp_policy_norm"] == pytest.approx(r["logp_policy"] / r["num_tokens"]) for r in tab["rewards"])
        # The implicit reward is undefined while the policy is the reference (iteration 1).
        assert all((p["implicit_margin"] is None) == (t == 1) for p in candidates(tab["pairs"]))
        assert m["models"]["policy"] == ("base" if t == 1 else f"iter_{t - 1:03d}")
        if t == 1:
            assert m["mean_consistency"] is None and m["agreement_rate"] is None


def test_srlm(tmp_path):
    run_dir, out = run_recipe("srlm", tmp_path)
    check_common(run_dir)
    for t in (1, 2, 3):
        tab, _ = load(run_dir, t)
        assert all(p["label_p"] == 1.0 for p in candidates(tab["pairs"]))
        assert all(p["consistency"] is None for p in tab["pairs"])  # no previous judge: not computed, not invented


def test_cream(tmp_path):
    run_dir, _ = run_recipe("cream", tmp_path)
    check_common(run_dir, judges=2)
    for t in (1, 2, 3):
        tab, m = load(run_dir, t)
        prev_rows = [j for j in tab["judgments"] if j["judge_model"] == "previous"]
        assert len(prev_rows) == (0 if t == 1 else PROMPTS * SAMPLES * K)
        assert all((r["judge_mean_prev"] is None) == (t == 1) for r in tab["rewards"] if r["judge_valid"])
        for p in tab["pairs"]:
            rs = sorted((r for r in tab["rewards"] if r["prompt_id"] == p["prompt_id"]), key=lambda r: r["sample_idx"])
            c = consistency([r["judge_mean"] for r in rs], [r["judge_mean_prev"] for r in rs])
            assert p["consistency"] == (pytest.approx(c) if c is not None else None)
            if p["drop_reason"] is None:
                assert p["label_p"] == (1.0 if c is None else pytest.approx(c))  # CREAM 'dyn': C is the soft label
        if t == 1:
            assert m["consistency_prompts"] == 0


def test_scir(tmp_path):
    run_dir, _ = run_recipe("scir", tmp_path)
    check_common(run_dir)
    for t in (1, 2, 3):
        tab, m = load(run_dir, t)
        for p in candidates(tab["pairs"]):
            verdict = p["pass_reward_disagreement"]
            assert verdict == (None if t == 1 else p["implicit_margin"] > 0)
            assert p["kept"] == (verdict is not False)
        if t > 1:
            assert m["agreement_rate"] is not None or not candidates(tab["pairs"])


def test_upo(tmp_path):
    run_dir, _ = run_recipe("upo", tmp_path)
    check_common(run_dir)
    for t in (1, 2, 3):
        tab, m = load(run_dir, t)
        assert all(len(r["logp_mc"]) == 8 for r in tab["rewards"])
        for p in candidates(tab["pairs"]):
            assert p["uncertainty"] is not None and 0 <= p["uncertainty"] <= math.log(2)
            assert p["pass_judge_uncertain"] == (p["p_correct"] >= 0.75)
            if p["kept"]:
                assert p["pass_judge_uncertain"] and p["pass_mc_dropout_uncertain"]
        assert set(m["label_quality"]["by_filter"]) == {"judge_uncertain", "mc_dropout_uncertain"}


def test_trusted(tmp_path):
    run_dir, _ = run_recipe("trusted", tmp_path)
    check_common(run_dir, judges=2, one_pair_per_prompt=False)
    for t in (1, 2, 3):
        tab, m = load(run_dir, t)
        for j in tab["judgments"]:
            assert sum(j["score_probs"]) == pytest.approx(1.0)
            assert j["score_expected"] == pytest.approx(sum(i * q for i, q in enumerate(j["score_probs"])))
        assert all(r["judge_expected"] is not None for r in tab["rewards"])
        assert m["judge_expected_vs_sampled"]["responses"] == PROMPTS * SAMPLES
        per_prompt = {}
        for p in tab["pairs"]:
            per_prompt[p["prompt_id"]] = per_prompt.get(p["prompt_id"], 0) + (p["drop_reason"] not in ("tie", "below_margin", "over_cap"))
            if p["kept"]:
                assert p["weight"] in (1.0, 0.5) and p["margin"] >= 1.0
        assert max(per_prompt.values()) <= 2  # margin pairs, capped per prompt
