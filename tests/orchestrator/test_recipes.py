"""Every shipped recipe on identical data: one run that collects every signal, each recipe's selection replayed on it.

``jobs/configs/study-cpu.yaml``, set to 3 iterations, runs on the verifiable set
against the stand-in backend (tests/orchestrator/standins.py), collecting the
previous judge's verdicts, expected scores, MC-dropout passes and implicit
rewards. Each
recipe's select stage is then recomputed from that run's committed
generations, judgments and rewards alone, and its pairs must carry every
column its methods promise, with values that agree with the definitions
(recomputed here). Each loss of the family is trained in
tests/workers/test_tiny_model.py.
"""

import json
import re

import pyarrow.parquet as pq
import pytest

from orchestrator import loop
from orchestrator.config import load_config
from orchestrator.evaluation.labels import error_ranking, label_quality, labellers
from orchestrator.rewards.consistency import consistency
from orchestrator.rewards.selection import make_selection, select
from tests.e2e.helpers import NO_EVAL, ROOT, check_run_dir, selfreward
from tests.orchestrator.standins import StandInBackend

CONFIGS = ROOT / "jobs" / "configs"
RECIPES = ["srlm", "cream", "scir", "upo", "trusted"]
PROMPTS, SAMPLES, K = 3, 3, 2
TINY = [
    "iterations=3",
    f"data.prompts_per_iteration={PROMPTS}",
    f"generation.samples_per_prompt={SAMPLES}",
    "generation.max_tokens=32",
    f"judge.judge_samples={K}",
    "judge.max_tokens=40",
    "resources.kv_cache_gib=2",
    # The recipes' selection is under test here; the evaluation stage is tested in test_cli.
    *NO_EVAL,
]
STRUCTURAL = {"fewer_than_2_valid_scores", "tie", "below_margin", "over_cap"}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_random_model_path):
    run_dir = tmp_path_factory.mktemp("study") / "run"
    loop.run(load_config(CONFIGS / "study-cpu.yaml", [*TINY, f"model.path={tiny_random_model_path}"]), run_dir,
             backend=StandInBackend())
    return run_dir


def tables(run_dir, t):
    d = run_dir / f"iter_{t:03d}"
    return {k: pq.read_table(d / f"{k}.parquet") for k in ("generations", "judgments", "rewards", "pairs")}


def replay(run_dir, recipe: str, t: int):
    """The recipe's select stage on the run's committed tables of iteration t (what `selfreward replay` computes)."""
    cfg = load_config(CONFIGS / f"{recipe}.yaml", TINY)
    tab = tables(run_dir, t)
    # The study run scores against the base model: the policy is the reference at t=1, the previous model at t=2.
    return select(tab["generations"], tab["rewards"], tab["judgments"], make_selection(cfg), policy_is_reference=t == 1,
                  previous_is_reference=t == 2)


def candidates(pairs):
    """Pairs a filter could judge: not dropped for a structural reason."""
    return [p for p in pairs if p["drop_reason"] not in STRUCTURAL]


def test_the_study_run_collects_every_signal(study):
    check_run_dir(study, 3, PROMPTS, SAMPLES, K, judges=2)
    for t in (1, 2, 3):
        tab = {k: v.to_pylist() for k, v in tables(study, t).items()}
        m = json.loads((study / f"iter_{t:03d}" / "metrics.json").read_text())
        rewards = tab["rewards"]
        # Verifiable set: every response graded, with the rule that graded it.
        assert all(r["correct"] is not None and r["grade_rule"] for r in rewards)
        assert sum(m["grade_rules"].values()) == PROMPTS * SAMPLES
        assert all((r["logp_prev"] is None) == (t == 1) for r in rewards)
        assert all(r["logp_policy_norm"] == pytest.approx(r["logp_policy"] / r["num_tokens"]) for r in rewards)
        # MC-dropout passes and their same-code reference, only where the policy differs from the reference.
        assert all((r["logp_mc"] is None) == (r["logp_mc_ref"] is None) == (t == 1) for r in rewards)
        assert all(len(r["logp_mc"]) == 8 for r in rewards if t > 1)
        # The expected score is read only at the judge's own score line: a verdict without one has none.
        assert all((r["judge_expected"] is None) == (r["judge_valid"] == 0) for r in rewards)
        for j in tab["judgments"]:
            if j["score"] is None or j["judge_model"] == "previous":  # the previous judge's: scores alone
                assert j["score_probs"] is None and j["score_expected"] is None
                continue
            assert sum(j["score_probs"]) == pytest.approx(1.0)
            assert j["score_expected"] == pytest.approx(sum(i * q for i, q in enumerate(j["score_probs"])))
        previous = [j for j in tab["judgments"] if j["judge_model"] == "previous"]
        assert len(previous) == (0 if t == 1 else PROMPTS * SAMPLES * K)
        judged_before = {(j["prompt_id"], j["sample_idx"]) for j in previous if j["score"] is not None}
        assert all((r["judge_mean_prev"] is not None) == ((r["prompt_id"], r["sample_idx"]) in judged_before)
                   for r in rewards)
        assert m["models"]["policy"] == ("base" if t == 1 else f"iter_{t - 1:03d}")
        # Judge calibration, with its n; undefined signals said so rather than guessed.
        scored = [r for r in rewards if r["correct"] is not None and r["judge_mean"] is not None]
        assert m["judge_auroc"]["n"] == len(scored) and m["graded_responses"] == PROMPTS * SAMPLES
        assert m["judge_auroc_expected"] is not None and (m["judge_auroc_previous"] is None) == (t == 1)
        if t == 1:
            assert m["mean_consistency"]["value"] is None and m["agreement_rate"]["value"] is None
        # The run's own pairs are what its own selection gives on its committed tables: replay is faithful.
        own = replay(study, "study-cpu", t)
        assert own.to_pylist() == tables(study, t)["pairs"].to_pylist()


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_replays_on_the_study_run(study, recipe):
    for t in (1, 2, 3):
        pairs = replay(study, recipe, t)
        rows = pairs.to_pylist()
        rewards = tables(study, t)["rewards"].to_pylist()
        by_response = {(r["prompt_id"], r["sample_idx"]): r for r in rewards}
        assert {p["prompt_id"] for p in rows} == {r["prompt_id"] for r in rewards}
        assert all((p["drop_reason"] is None) == p["kept"] for p in rows)
        for p in candidates(rows):
            # Truth per response, as the grader found it; an ungradable one decides nothing.
            for side in ("chosen", "rejected"):
                r = by_response[(p["prompt_id"], p[f"{side}_idx"])]
                assert p[f"{side}_correct"] == (None if r["grade_rule"] == "ungradable" else r["correct"])
            # The implicit reward is undefined while the policy is the reference (iteration 1).
            assert (p["implicit_margin"] is None) == (t == 1)
        quality = label_quality(pairs)
        assert quality["kept"]["verdict"] in ("helps", "hurts", "no evidence", "not measurable", "no drop", "not applicable")
        CHECKS[recipe](rows, rewards, t)


def _srlm(rows, rewards, t):
    assert len(rows) == PROMPTS  # best vs worst: one pair per prompt
    assert all(p["label_p"] == 1.0 and p["weight"] in (0.0, 1.0) for p in candidates(rows))
    assert all(p["kept"] for p in candidates(rows))  # no filter


def _cream(rows, rewards, t):
    defined = {p["prompt_id"]: p["consistency"] for p in candidates(rows) if p["consistency"] is not None}
    mean_c = sum(defined.values()) / len(defined) if defined else None
    for p in rows:
        rs = sorted((r for r in rewards if r["prompt_id"] == p["prompt_id"]), key=lambda r: r["sample_idx"])
        c = consistency([r["judge_mean"] for r in rs], [r["judge_mean_prev"] for r in rs])
        assert p["consistency"] == (pytest.approx(c) if c is not None else None)
        if p["drop_reason"] is None:
            # CREAM 'dyn': C is the soft label; an undefined C is the iteration's mean C (1 when there is none).
            expected = c if c is not None else mean_c if mean_c is not None else 1.0
            assert p["label_p"] == pytest.approx(expected)
    if t == 1:
        assert all(p["consistency"] is None for p in rows)


def _scir(rows, rewards, t):
    for p in candidates(rows):
        verdict = p["pass_reward_disagreement"]
        assert verdict == (None if t == 1 else p["implicit_margin"] > 0)
        assert p["kept"] == (verdict is not False)


def _upo(rows, rewards, t):
    for p in candidates(rows):
        assert (p["uncertainty"] is None) == (t == 1)
        assert t == 1 or 0 <= p["uncertainty"] <= 0.5  # flip: the chance the passes' margin changes sign
        assert "pass_mc_dropout_uncertain" not in p  # off in the shipped recipe
        assert p["pass_judge_uncertain"] == (None if p["p_correct"] is None else p["p_correct"] >= 0.75)
        if p["kept"]:
            assert p["pass_judge_uncertain"] is not False


def _trusted(rows, rewards, t):
    per_prompt = {}
    for p in rows:
        per_prompt[p["prompt_id"]] = per_prompt.get(p["prompt_id"], 0) + (p["drop_reason"] not in STRUCTURAL)
        if p["kept"]:
            assert p["weight"] == 1.0 and p["margin"] >= 1.0
    assert max(per_prompt.values()) <= 2  # margin pairs, capped per prompt


CHECKS = {"srlm": _srlm, "cream": _cream, "scir": _scir, "upo": _upo, "trusted": _trusted}


def test_replay_compares_every_recipe_on_the_study_run_through_the_cli(study, tmp_path):
    recipes = [str(CONFIGS / f"{name}.yaml") for name in RECIPES]
    res = selfreward("replay", str(study), *[a for r in recipes for a in ("--recipe", r)])
    assert res.returncode == 0, res.stderr[-3000:]
    for name in RECIPES:
        for t in (1, 2, 3):
            assert re.search(rf"^\| {name} +\| {t} +\| kept ", res.stdout, re.MULTILINE), (name, t)
    assert re.search(r"^\| upo +\| 2 +\| filter judge_uncertain ", res.stdout, re.MULTILINE)
    # The controls: every labeller on the same decided pairs, and each uncertainty signal against the labels' errors.
    for labeller in ("pair's label", "likelihood", "longer response", "stopped response"):
        assert re.search(rf"^\| srlm +\| 1 +\| {labeller} ", res.stdout, re.MULTILINE), labeller
    assert re.search(r"^\| upo +\| 2 +\| MC-dropout certainty ", res.stdout, re.MULTILINE)
    saved = json.loads((study / "replay.json").read_text())
    assert saved["iterations"] == [1, 2, 3] and set(saved["recipes"]) == set(RECIPES)
    for name in RECIPES:
        for t in (1, 2, 3):
            got = saved["recipes"][name][str(t)]
            pairs = replay(study, name, t)
            assert got["pairs_built"] == pairs.num_rows and got["label_quality"] == label_quality(pairs)
            gens = tables(study, t)["generations"]
            assert got["labellers"] == labellers(pairs, gens) and got["error_ranking"] == error_ranking(pairs, gens)
    # A recipe that reads a signal the run did not collect is refused, naming it; nothing is written.
    other = tmp_path / "upo4.yaml"  # upo with MC-dropout on (off as shipped), at passes the run did not make
    other.write_text((CONFIGS / "upo.yaml").read_text().replace(
        "  judge_uncertainty:", "  mc_dropout: {passes: 4, p: 0.1, fraction: 0.25}\n  judge_uncertainty:"))
    before = (study / "replay.md").read_text()
    refused = selfreward("replay", str(study), "--recipe", str(other), "--out", str(tmp_path / "r.md"))
    assert refused.returncode == 2 and "MC-dropout passes=4" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "r.md").exists() and (study / "replay.md").read_text() == before
