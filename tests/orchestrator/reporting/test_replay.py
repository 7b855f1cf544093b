"""`selfreward replay`: every recipe's selection recomputed on one run's committed labels, and the recipes it refuses."""

import json

import pytest

from benchmarks import fidelity
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.evaluation.labels import label_quality
from orchestrator.reporting.replay import ReplayError, missing_signal, replay, write_replay
from orchestrator.rewards.selection import make_selection, select
from orchestrator.run.rundir import RunDir
from tests import ROOT

CONFIGS = ROOT / "jobs" / "configs"
RECIPES = [str(CONFIGS / f"{name}.yaml") for name in ("srlm", "cream", "scir", "upo", "trusted")]


def study_run(root, overrides=(), iterations=2):
    """A run dir whose generations, judgments and rewards are a simulated world's, committed as the loop does."""
    rd = RunDir(root)
    rd.open(load_config(CONFIGS / "study-cpu.yaml", [f"iterations={iterations}", *overrides]), {"selfreward-test": "1"})
    for t in range(1, iterations + 1):
        w = fidelity.world("drift", 300, seed=t)
        d = rd.iter_dir(t)
        for stage, name, table in (("generate", "generations", w.generations), ("judge", "judgments", w.judgments),
                                   ("score", "rewards", w.rewards)):
            rd.write_table(f"{d}/{name}.parquet", table)
            rd.commit(rd.stage_key(t, stage), f"{d}/{name}.parquet", table.num_rows, 0.0, {})
    rd.close()
    return root


def test_replay_recomputes_each_recipes_selection(tmp_path):
    root = study_run(tmp_path / "run")
    result = replay(root, RECIPES)
    assert result["iterations"] == [1, 2] and set(result["recipes"]) == {"srlm", "cream", "scir", "upo", "trusted"}
    rd = RunDir(root)
    for t in (1, 2):
        tables = [rd.read_table(f"{rd.iter_dir(t)}/{n}.parquet") for n in ("generations", "rewards", "judgments")]
        for path in RECIPES:
            # The study run scores against the base model: the policy is the reference at t = 1, the previous
            # model at t = 2.
            pairs = select(*tables, make_selection(load_config(path)), t == 1, t == 2)
            got = result["recipes"][path.rsplit("/", 1)[1][:-5]][t]
            assert got["pairs_built"] == pairs.num_rows and got["label_quality"] == label_quality(pairs)
    text, where = write_replay(root, RECIPES[:2], overrides=("selection.strategy=margin",))
    assert where.endswith("replay.md") and "| cream" in text and "| kept " in text
    saved = json.loads((root / "replay.json").read_text())
    assert saved["overrides"] == ["selection.strategy=margin"]
    assert saved["recipes"]["srlm"]["1"]["pairs_built"] > result["recipes"]["srlm"][1]["pairs_built"]  # every pair


@pytest.mark.parametrize("run_overrides, recipe, overrides, needs", [
    (["judge.previous_judge=false"], "cream", [], "judge.previous_judge"),
    (["judge.expected_score=false"], "trusted", ["judge.score_source=expected"], "judge.expected_score"),
    (["selection.mc_dropout.passes=0"], "upo", ["selection.mc_dropout.passes=8", "selection.mc_dropout.fraction=0.25"],
     "MC-dropout passes=8"),
    (["scoring.reference=previous"], "scir", [], "scoring.reference=base"),
    (["judge.judge_samples=1"], "upo", [], "judge.judge_samples >= 2"),
])
def test_a_recipe_needing_a_signal_the_run_lacks_is_refused(run_overrides, recipe, overrides, needs):
    run = load_config(CONFIGS / "study-cpu.yaml", run_overrides)
    gap = missing_signal(load_config(CONFIGS / f"{recipe}.yaml", overrides), run)
    assert gap is not None and needs in gap


def test_refusals_through_the_cli_change_nothing(tmp_path, capsys):
    root = study_run(tmp_path / "run", ["selection.mc_dropout.passes=4"], iterations=1)
    before = sorted(p.name for p in root.rglob("*"))
    assert main(["replay", str(root), "--recipe", str(CONFIGS / "upo.yaml"), "--set", "selection.mc_dropout.passes=8",
                 "--set", "selection.mc_dropout.fraction=0.25"]) == 2
    err = capsys.readouterr().err
    assert "upo.yaml cannot be replayed" in err and "selection.mc_dropout" in err and "Traceback" not in err
    assert sorted(p.name for p in root.rglob("*")) == before
    assert main(["replay", str(tmp_path), "--recipe", RECIPES[0]]) == 2  # not a run dir
    with pytest.raises(ReplayError, match="same file"):
        write_replay(root, RECIPES[:1], out=tmp_path / "x.json")
    assert main(["replay", str(root), "--recipe", RECIPES[0], "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").is_file() and (tmp_path / "r.json").is_file()


def test_replay_loads_no_engine_and_no_torch(tmp_path):
    """Replay is the seconds-long path: selection on committed tables, with neither torch, Ray nor vLLM loaded."""
    import subprocess
    import sys

    root = study_run(tmp_path / "run")
    code = ("import json, sys; from orchestrator.reporting.replay import replay; "
            "out = replay(sys.argv[1], sys.argv[2:]); "
            "print(json.dumps([sorted(out['recipes']), [m for m in ('torch', 'ray', 'vllm') if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", code, str(root), *RECIPES], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    recipes, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert recipes == ["cream", "scir", "srlm", "trusted", "upo"] and loaded == []
