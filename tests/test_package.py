"""The wheel works outside the checkout: built from the repo, installed into a fresh virtual environment in a
temporary directory, run from a directory with no ``jobs/`` of its own. The shipped configs and prompt sets are found
beside the installed package."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests import ROOT

pytestmark = pytest.mark.integration


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True,
                   capture_output=True, cwd=tmp_path, timeout=600)
    (wheel,) = dist.glob("selfreward-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    # The dependencies come from this environment (no registry needed); the package itself only from the wheel.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def selfreward(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "selfreward"), *args], capture_output=True, text=True, cwd=work,
                              env=env, timeout=600)

    where = subprocess.run([str(python), "-c", "import orchestrator, jobs; print(orchestrator.__file__, jobs.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, check=True).stdout
    assert where.count(str(site)) == 2, where
    shown = selfreward("config", "jobs/configs/srlm.yaml", "dpo.beta=0.2")
    assert shown.returncode == 0, shown.stderr
    assert "prompts: jobs/data/verifiable_train.jsonl" in shown.stdout and "beta: 0.2" in shown.stdout
    # A run's inputs are checked before any work, reading the shipped prompt set from the installed package.
    refused = selfreward("run", "jobs/configs/srlm.yaml", "--run-dir", "r", "data.columns.prompt=question")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"{site}/jobs/data/verifiable_train.jsonl:1: column 'question'" in refused.stderr
    assert not (work / "r").exists()
    assert selfreward("config", "--docs").stdout.startswith("# Config reference")
