"""The real CLI end to end on the transformers fallback engine (the main job, as `make run` runs it, is in
test_main_job.py)."""

import pyarrow.parquet as pq
import pytest

from tests.e2e.helpers import CONFIG, NO_EVAL, SMALL, check_run_dir, selfreward

pytestmark = pytest.mark.e2e


def test_one_iteration_on_the_transformers_fallback_engine(tmp_path, tiny_random_model_path):
    """resources.engine_backend=hf: every engine stage on HFEngine actors; the judge's scores are read from its
    digit distribution (no structured decoding there). The mechanics only: a tiny random model."""
    run_dir = tmp_path / "run"
    res = selfreward("run", str(CONFIG), "--run-dir", str(run_dir), *SMALL, *NO_EVAL, "iterations=1",
                     f"model.path={tiny_random_model_path}",
                     "resources.engine_backend=hf", "judge.constrained=false", "judge.expected_score=true",
                     "judge.score_source=expected")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "engine(s) ready" in res.stdout and "(HFEngine" in res.stdout and "(VLLMEngine" not in res.stdout
    check_run_dir(run_dir, iterations=1, prompts=4, samples=3, judge_samples=2)
    rewards = pq.read_table(run_dir / "iter_001" / "rewards.parquet").to_pylist()
    assert all(r["logp_policy"] is not None and r["logp_ref"] is not None for r in rewards)

    refused = selfreward("run", str(CONFIG), "--run-dir", str(tmp_path / "other"), "resources.engine_backend=hf")
    assert refused.returncode != 0 and "judge.constrained=true needs engine_backend='vllm'" in refused.stderr
