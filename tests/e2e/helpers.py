"""Shared pieces of the end-to-end tests: the small config and the contract checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from orchestrator import artifacts

ROOT = Path(__file__).parents[2]
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
]
STAGES = ["generate", "judge", "score", "select", "train", "metrics"]


def selfreward(*args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; stdout and stderr captured as text."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def check_run_dir(run_dir: Path, iterations: int, prompts: int, samples: int, judge_samples: int,
                  judges: int = 1, one_pair_per_prompt: bool = True) -> dict:
    """Assert the artifact contract and row accounting of a finished run; returns state.json."""
    state = json.loads((run_dir / "state.json").read_text())
    for t in range(1, iterations + 1):
        d = run_dir / f"iter_{t:03d}"
        for stage in STAGES:
            assert f"iter_{t:03d}/{stage}" in state["stages"], f"{stage} of iteration {t} not committed"
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
    assert not list(run_dir.rglob(".*.tmp-*")), "temporary files left in the run dir"
    return state
