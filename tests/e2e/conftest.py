"""The main job, run once per test session exactly as ``make run`` runs it, for every test that reads a finished run."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import command, make_run

# Credentials come from the environment and must never be written anywhere: the main job runs with these set.
SECRET = "hf_" + "s3cr3t" * 6
SECRET_ENV = {"HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET}


@dataclass(frozen=True)
class MainJob:
    run_dir: Path
    run: subprocess.CompletedProcess  # `selfreward run jobs/configs/tiny-cpu.yaml --run-dir RUN_DIR`
    report: subprocess.CompletedProcess  # `selfreward report RUN_DIR`


@pytest.fixture(scope="session")
def main_job(tmp_path_factory) -> MainJob:
    """``make run``'s commands (the shipped tiny-cpu.yaml, no override but the run directory), run to the end.

    Tests must not change its run directory: one that resumes or damages a run works on a copy.
    """
    run_dir = tmp_path_factory.mktemp("main-job") / "tiny-cpu"
    run_cmd, report_cmd = make_run(run_dir)
    run = command(run_cmd, env=SECRET_ENV, timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = command(report_cmd, env=SECRET_ENV, timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    return MainJob(run_dir, run, report)
