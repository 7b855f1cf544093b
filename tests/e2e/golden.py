"""The golden run: the main job (``make run``'s command and config) submitted with ``ray job submit`` to one Ray head
that the test session shares, started as the session starts so that it runs beside the other tests (it keeps one
core busy; they have the other). The tests that read a finished run (status, resume, refused changes, report,
compare, credentials) run last and read it.

It is submitted twice, as a user resubmits after a crash: the first job's engine process is SIGKILLed after M0's
first evaluation part (Ray restarts the engine; the shard in flight is redone), then the driver SIGKILLs itself after
the second part (``workers.faults``); the second job resumes from the committed parts and runs both iterations to
the end. Then ``make run``'s report command runs on the run dir.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests import ROOT
from tests.e2e.helpers import command, make_run
from tests.specs import ONE_THREAD
from workers.faults import KILL_AT_ENV, KILL_ENGINE_AT_ENV

RAY = str(Path(sys.executable).parent / "ray")
# Credentials come from the environment and must never be written anywhere: the jobs run with these set.
SECRET = "hf_" + "s3cr3t" * 6
SECRET_ENV = {"HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET}
FIRST_JOB_FAULTS = {KILL_ENGINE_AT_ENV: "iter_000/eval:part@1", KILL_AT_ENV: "iter_000/eval:part@2"}
TIMEOUT_S = 3600
# make run gives its engine both cores (its trainer runs between its stages); here the tests have one of the two,
# and an engine's two threads on a core a test uses stall each other at every parallel region (measured: the suite
# 1,848 s against 1,516-1,690 s with one engine thread). The same tokens at one thread or two; how the engine pool
# shares a node's CPUs is tested in tests/workers/engines/test_pool.py.
GOLDEN_THREADS = ONE_THREAD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """``ray start --head`` on loopback with token auth (a token of its own), stopped by process group."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="/tmp/srray-")  # Ray's socket paths must stay short
        gcs, dash = _free_port(), _free_port()
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    # Ray runs its workers 15 nice levels lower in priority than itself (a Ray default): the golden
                    # run's engines and trainers would yield the CPU to every test. They keep the head's priority.
                    "RAY_worker_niceness": "0"}
        self.env.pop("RAY_ADDRESS", None)
        # The golden run is the session's longest chain of work: its head, and every process the head starts (the
        # jobs' drivers, engines and trainers), get the CPU before the tests, which fill the time it leaves.
        # Raising a priority needs root, as CI has; elsewhere `nice` says so and the head runs at the tests' level.
        # Where the kernel groups each session's processes (autogroup, on here), nice values act only inside a group
        # and the head's session shares the CPU evenly with the tests'; giving the group itself the priority
        # (/proc/PID/autogroup) made the suite slower (1,818 s): the tests then waited for the whole golden run.
        self.proc = subprocess.Popen(
            ["nice", "-n", "-10", RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--dashboard-agent-listen-port=0", "--num-cpus=2", f"--temp-dir={self.temp}", "--disable-usage-stats"],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.address = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 180
        while (probe := self.job("list", check=False)).returncode != 0:
            assert self.proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, f"Ray job server did not come up: {probe.stderr[-1500:]}"
            time.sleep(2)

    def job(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([RAY, "job", args[0], "--address", self.address, *args[1:]], env=self.env,
                             capture_output=True, text=True, timeout=300)
        assert not check or res.returncode == 0, res.stderr[-2000:]
        return res

    def submit(self, entrypoint: list[str], env_vars: dict[str, str], folder: Path) -> str:
        """Submit ``entrypoint`` with the shipped runtime env (plus ``env_vars``); returns the job id."""
        runtime = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
        runtime["env_vars"] = {**runtime.get("env_vars", {}), **env_vars}
        spec = folder / f"runtime_env-{secrets.token_hex(4)}.yaml"
        spec.write_text(yaml.safe_dump(runtime))
        deadline = time.monotonic() + 180
        while True:
            res = self.job("submit", "--no-wait", "--working-dir", str(ROOT), "--runtime-env", str(spec), "--",
                           *entrypoint, check=False)
            # A head that has just started may not have its job agent up yet: Ray asks to try again later.
            if res.returncode == 0 or "No available agent" not in res.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return re.search(r"Job '([^']+)' submitted successfully", res.stdout).group(1)

    def status(self, job_id: str) -> str:
        """The job's status word, from `ray job list` (whose `ray job status` sibling prints prose, not the status)."""
        listing = self.job("list").stdout
        found = re.search(rf"submission_id='{re.escape(job_id)}'.*?status=<JobStatus\.(\w+)", listing)
        assert found, listing[-2000:]
        return found.group(1)

    def wait(self, job_id: str, timeout: float = TIMEOUT_S) -> tuple[str, str]:
        """(final status, the job's whole log: stdout and stderr of its driver)."""
        deadline = time.monotonic() + timeout
        while (status := self.status(job_id)) in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout:.0f}s"
            time.sleep(5)
        return status, self.job("logs", job_id).stdout

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def job_entrypoint(run_cmd: list[str]) -> list[str]:
    """``make run``'s ``selfreward run CONFIG --run-dir DIR`` as the job entry point documented in jobs/self_reward.py
    (the same arguments), its engine on one thread (``GOLDEN_THREADS``)."""
    assert Path(run_cmd[0]).name == "selfreward" and run_cmd[1] == "run", run_cmd
    return ["python", "-m", "jobs.self_reward", *run_cmd[2:], GOLDEN_THREADS]


@dataclass
class GoldenRun:
    head: RayHead
    run_dir: Path
    killed_log: str  # the first job's (killed) log
    log: str  # the second job's, which ran both iterations to the end
    report: subprocess.CompletedProcess  # `selfreward report RUN_DIR`


class Golden:
    """Starts the golden run in a background thread; ``result()`` waits for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.head: RayHead | None = None
        self._result: GoldenRun | None = None
        self._error: BaseException | None = None
        self.timings: dict[str, float] = {}  # seconds from the session's start to the end of each phase
        self._thread = threading.Thread(target=self._run, name="golden-run", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()

        def done(phase: str) -> None:
            self.timings[phase] = round(time.monotonic() - start, 1)

        try:
            self.head = RayHead()
            done("ray head up")
            run_dir = self.folder / "tiny-cpu"
            run_cmd, report_cmd = make_run(run_dir)
            entry = job_entrypoint(run_cmd)
            first = self.head.submit(entry, {**SECRET_ENV, **FIRST_JOB_FAULTS}, self.folder)
            status, killed_log = self.head.wait(first)
            assert status == "FAILED", f"the first job should have been killed, it is {status}: {killed_log[-3000:]}"
            done("first job killed")
            second = self.head.submit(entry, SECRET_ENV, self.folder)
            status, log = self.head.wait(second)
            assert status == "SUCCEEDED", f"the resumed job ended {status}: {log[-5000:]}"
            done("second job finished")
            report = command(report_cmd, env=SECRET_ENV, timeout=600)
            assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
            done("report written")
            self._result = GoldenRun(self.head, run_dir, killed_log, log, report)
        except BaseException as e:  # handed to the tests that wait for it
            self._error = e

    def result(self) -> GoldenRun:
        self._thread.join(TIMEOUT_S + 600)
        if self._error is not None:
            raise self._error
        assert self._result is not None, "the golden run did not finish"
        return self._result

    def stop(self) -> None:
        if self.head is not None:
            self.head.stop()

