"""`ray job submit` against a real `ray start --head` cluster on loopback: submit, `ray job stop` mid-run,
resubmit with the same run dir: it resumes and finishes; a third submit finds everything committed."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import CONFIG, NO_EVAL, ROOT, SMALL, check_run_dir

pytestmark = pytest.mark.e2e
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head of our own (loopback only), stopped by PID group at teardown."""
    temp = tempfile.mkdtemp(prefix="/tmp/srray-")  # Ray's socket paths must stay short
    gcs, dash = _free_port(), _free_port()
    # Token authentication with a token of this test's own, for the cluster and its clients.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--dashboard-agent-listen-port=0",
         "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, f"Ray job server did not come up: {probe.stderr[-1500:]}"
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _submit(address: str, env: dict, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + 180
    while True:
        res = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), *extra,
             "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--",
             "python", "-m", "jobs.self_reward", str(CONFIG.relative_to(ROOT)), "--run-dir", str(run_dir),
             *SMALL, *NO_EVAL, "iterations=1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
        )
        # A head that has just started may not have its job agent up yet: Ray asks to try again later.
        if res.returncode == 0 or "No available agent" not in res.stderr or time.monotonic() > deadline:
            return res
        time.sleep(3)


def _job(address: str, env: dict, *args: str) -> str:
    res = subprocess.run([RAY, "job", *args, "--address", address], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _status(address: str, env: dict, job_id: str) -> str:
    """The job's status word, from `ray job list` (whose `ray job status` sibling prints prose, not the status)."""
    listing = _job(address, env, "list")
    found = re.search(rf"submission_id='{re.escape(job_id)}'.*?status=<JobStatus\.(\w+)", listing)
    assert found, listing[-2000:]
    return found.group(1)


def test_submit_stop_resubmit_resumes_and_finishes(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    first = _submit(address, env, run_dir, "--no-wait")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    job_id = re.search(r"Job '([^']+)' submitted successfully", first.stdout).group(1)
    # `ray job logs` shows the stages as they commit; stop the job once generation is committed.
    deadline = time.monotonic() + 900
    while "  generate " not in (logs := _job(address, env, "logs", job_id)):
        assert time.monotonic() < deadline, logs[-3000:]
        assert _status(address, env, job_id) in ("PENDING", "RUNNING"), logs[-3000:]
        time.sleep(3)
    assert "engine pool" in logs
    _job(address, env, "stop", job_id)
    while (status := _status(address, env, job_id)) != "STOPPED":
        assert time.monotonic() < deadline, status
        time.sleep(2)
    stopped = json.loads((run_dir / "state.json").read_text())["stages"]
    assert "iter_001/generate" in stopped and "iter_001/train" not in stopped

    again = _submit(address, env, run_dir)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "succeeded" in again.stdout and "iter 1:" in again.stdout
    assert "  generate committed earlier" in again.stdout
    check_run_dir(run_dir, iterations=1, prompts=4, samples=3, judge_samples=2)
    after = json.loads((run_dir / "state.json").read_text())["stages"]
    assert all(after[k] == v for k, v in stopped.items())  # committed stages were not redone

    third = _submit(address, env, run_dir)
    assert third.returncode == 0, third.stdout[-4000:]
    assert third.stdout.count("committed earlier") == 5  # generate, judge, score, select, train
    # The cluster's auth token (an environment secret) is in no file of the run dir and in no job log.
    token = env["RAY_AUTH_TOKEN"].encode()
    assert not [p for p in run_dir.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert token.decode() not in _job(address, env, "logs", job_id) + again.stdout + third.stdout
