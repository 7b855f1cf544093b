"""Shared pieces of the end-to-end tests: the small config and the contract checks."""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.run import artifacts
from tests import ROOT, specs

CONFIG = ROOT / "jobs" / "configs" / "tiny-cpu.yaml"
# The tiny config, made smaller so a full loop takes a few minutes on 2 cores:
# still every stage, the real model, real judge, real DPO on Ray Train.
SMALL = [
    "data.prompts_per_iteration=4",
    "generation.samples_per_prompt=3",
    "generation.max_tokens=48",
    "judge.judge_samples=2",
    "judge.max_tokens=48",
    "resources.kv_cache_gib=2",
    # Evaluation on 3 held-out verifiable prompts and 2 instructions: every part of it, quickly.
    "eval.verifiable_prompts=3",
    "eval.instruction_prompts=2",
    "eval.max_tokens=32",
    specs.ONE_THREAD,
]
# For tests about something else: the run without its evaluation stages.
NO_EVAL = ["eval.verifiable=null", "eval.instructions=null"]
STAGES = ["generate", "judge", "score", "select", "train", "metrics"]


def selfreward(*args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess of its own process group; stdout and stderr captured as text."""
    return command([sys.executable, "-m", "orchestrator.cli", *args], env=env, timeout=timeout)


def make_run(run_dir: Path) -> list[list[str]]:
    """The commands of the Makefile's ``run`` target (what ``make run`` runs after setup), with ``RUN_DIR`` set to
    ``run_dir`` and the tools taken from this interpreter's environment, as the Makefile takes them from .venv."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index("run: setup") + 1
    recipe = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        if not line.strip().startswith("#"):
            recipe.append(line.strip().replace("$(BIN)", str(Path(sys.executable).parent)).replace("$(RUN_DIR)", str(run_dir)))
    assert recipe and not any("$(" in c for c in recipe), recipe
    return [shlex.split(c) for c in recipe]


def command(argv: list[str], env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run ``argv`` from the repository root in a process group of its own; stdout and stderr captured as text.

    Afterwards whatever is left of that group is killed: a driver that was
    SIGKILLed on purpose leaves some of its local Ray's helper processes behind.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def check_run_dir(run_dir: Path, iterations: int, prompts: int, samples: int, judge_samples: int,
                  judges: int = 1, one_pair_per_prompt: bool = True, evals: tuple[int, int] | None = None) -> dict:
    """Assert the artifact contract and row accounting of a finished run; returns state.json.

    ``evals``: (verifiable, instruction) prompts of each evaluation, or None for a run without evaluation.
    """
    state = json.loads((run_dir / "state.json").read_text())
    if evals is not None:
        check_eval(run_dir / "iter_000" / "eval.parquet", 0, evals)
    for t in range(1, iterations + 1):
        d = run_dir / f"iter_{t:03d}"
        for stage in STAGES + (["eval"] if evals is not None else []):
            assert f"iter_{t:03d}/{stage}" in state["stages"], f"{stage} of iteration {t} not committed"
        if evals is not None:
            check_eval(d / "eval.parquet", t, evals)
        gens = pq.read_table(d / "generations.parquet")
        judg = pq.read_table(d / "judgments.parquet")
        rewards = pq.read_table(d / "rewards.parquet")
        pairs = pq.read_table(d / "pairs.parquet")
        for kind, table in [("generations", gens), ("judgments", judg), ("rewards", rewards), ("pairs", pairs)]:
            artifacts.check_contract(table, kind, str(d))
        keys = list(zip(gens["prompt_id"].to_pylist(), gens["sample_idx"].to_pylist()))
        assert len(keys) == len(set(keys)) == prompts * samples
        assert set(gens["iteration"].to_pylist()) == {t}
        # judges = 2: from iteration 2 on, the previous model judges too.
        assert judg.num_rows == prompts * samples * judge_samples * (judges if t >= 2 else 1)
        assert rewards.num_rows == prompts * samples
        if one_pair_per_prompt:
            assert pairs.num_rows == prompts
        assert set(pairs["prompt_id"].to_pylist()) == set(gens["prompt_id"].to_pylist())
        assert all((r["drop_reason"] is None) == r["kept"] for r in pairs.to_pylist())
        assert (d / "adapter" / "adapter_model.safetensors").is_file()
        assert (d / "adapter" / "adapter_config.json").is_file()
        m = json.loads((d / "metrics.json").read_text())
        assert m["iteration"] == t and m["responses"] == prompts * samples
        assert m["pairs_built"] == pairs.num_rows and m["pairs_kept"] == sum(pairs["kept"].to_pylist())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["kind"] == "iteration"] == list(range(1, iterations + 1))
    assert [x["iteration"] for x in lines if x["kind"] == "baseline"] == ([0] if evals is not None else [])
    if evals is not None:
        for x in lines:
            if x["kind"] != "train_step":
                acc = x["eval_accuracy"]  # every rate with its n and 95% interval
                assert 0 <= acc["value"] <= 1 and acc["n"] == x["eval_verifiable"] == evals[0]
                assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
                assert x["eval_instructions"] == evals[1] and "judge_fooled_rate" in x
        assert (run_dir / "tensorboard").is_dir() and list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob(".*.tmp-*")), "temporary files left in the run dir"
    return state


def check_eval(path: Path, t: int, evals: tuple[int, int]) -> None:
    """One evaluation table: every held-out prompt answered; verdicts where they belong."""
    rows = pq.read_table(path).to_pylist()
    artifacts.check_contract(pq.read_table(path), "eval", str(path))
    ver = [r for r in rows if r["split"] == "verifiable"]
    ins = [r for r in rows if r["split"] == "instruction"]
    assert (len(ver), len(ins)) == evals and all(r["iteration"] == t for r in rows)
    assert all(r["correct"] is not None and r["answer"] and r["grade_rule"] for r in ver)
    assert all(r["fixed_judge_text"] for r in ins)
    # Each instruction response is judged again with an injection appended (eval.injections).
    assert all(r["injection_id"] and r["injected_judge_text"] for r in ins)
    if t == 0:
        assert all(r["outcome"] is None and r["self_judge_text"] == r["fixed_judge_text"] for r in ins)
    else:
        assert all(r["outcome"] in ("win", "loss", "tie", "invalid") and r["baseline_response"] is not None for r in ins)
        # Identical responses are a tie without judging; different ones are judged in both orders, by M0's
        # next-token P("A") in each (eval.pairwise_verdict: probability), averaged from M(t)'s side.
        for r in ins:
            judged = r["response"] != r["baseline_response"]
            assert (r["pairwise_first_pa"] is not None) == judged == (r["pairwise_second_pa"] is not None)
            if judged:
                assert r["pairwise_preference"] == pytest.approx((r["pairwise_first_pa"] + 1 - r["pairwise_second_pa"]) / 2)
                assert r["pairwise_first"] == ("A" if r["pairwise_first_pa"] > 0.5 else "B")
