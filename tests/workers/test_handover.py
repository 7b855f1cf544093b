"""The hand-over from trainers back to engines (workers.handover) without a GPU: processes by pid and start time,
and the wait for GPU memory against a stand-in memory probe (what NVML reports, simulated)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from workers.handover import (
    GIB,
    GpuProcess,
    HandoverError,
    SleepMemory,
    still_running,
    this_process,
    wait_exited,
    wait_free,
)


def _child(seconds: float) -> tuple[subprocess.Popen, GpuProcess]:
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    return proc, GpuProcess("train rank 0", "", proc.pid, psutil.Process(proc.pid).create_time(), 3)


def test_a_process_counts_as_running_until_it_exits_and_never_by_a_reused_pid():
    me = this_process("driver")
    assert me.pid == os.getpid() and still_running(me) in ("running", "sleeping")
    assert still_running(GpuProcess("driver", "", me.pid, me.started - 10.0)) is None  # the pid, another start time
    proc, p = _child(0.3)
    assert still_running(p) is not None
    t0 = time.monotonic()
    assert wait_exited([p], timeout_s=30) >= 0.1 and time.monotonic() - t0 < 30
    assert still_running(p) is None  # exited, not yet reaped (a zombie): its memory is freed
    proc.wait()
    assert wait_exited([], timeout_s=0) == 0.0


def test_a_process_past_the_limit_is_named_with_its_node_and_gpu():
    proc, p = _child(30)
    try:
        with pytest.raises(HandoverError, match=r"1 process\(es\) .* still run 0.2s after training ended: train rank 0 "
                                                r"\(pid \d+ on node local, GPU 3\), (running|sleeping).*handover_timeout_s"):
            wait_exited([p], timeout_s=0.2)
    finally:
        proc.kill()
        proc.wait()


class StandInProbe:
    """What NVML would report for one 40 GiB GPU: the engine keeps 2 GiB asleep, a trainer holds 27 GiB until its
    process exits (a stand-in for a real GPU)."""

    def __init__(self, trainer: GpuProcess | None) -> None:
        self.trainer, self.engine_awake = trainer, True

    def used(self) -> int:
        engine = 30 * GIB if self.engine_awake else 2 * GIB
        return engine + (27 * GIB if self.trainer is not None and still_running(self.trainer) else 0)

    def free(self, gpu: int) -> int:
        assert gpu == 0
        return 40 * GIB - self.used()

    def holders(self, gpu: int) -> list[tuple[int, int]]:
        out = [(os.getpid(), (30 if self.engine_awake else 2) * GIB)]
        if self.trainer is not None and still_running(self.trainer):
            out.append((self.trainer.pid, 27 * GIB))
        return out


def test_an_engine_wakes_once_the_gpu_has_free_what_it_released_on_sleep():
    probe = StandInProbe(None)
    memory = SleepMemory(1, probe)

    def sleep() -> None:
        probe.engine_awake = False

    memory.sleep(sleep)
    assert memory.released == {0: 28 * GIB}
    assert memory.wait(1) == pytest.approx(0.0, abs=0.05)  # nothing else holds it

    proc, trainer = _child(0.5)  # the trainer's process still exits when the engine wants to wake
    probe.trainer = trainer
    try:
        waited = memory.wait(30)
        assert waited >= 0.2 and still_running(trainer) is None
    finally:
        proc.kill()
        proc.wait()


def test_memory_still_held_past_the_limit_names_the_gpu_and_who_holds_it():
    proc, trainer = _child(30)
    probe = StandInProbe(trainer)
    probe.engine_awake = False
    try:
        with pytest.raises(HandoverError, match=rf"engine on node abc: .* GPU 0: 11.0 GiB free, the engine needs 28.0 "
                                                rf"GiB back; held by pid {os.getpid()} \(this engine\): 2.0 GiB, pid "
                                                rf"{proc.pid}: 27.0 GiB \(resources.handover_timeout_s\)"):
            wait_free({0: 28 * GIB}, 0.3, probe, "node abc", poll_s=0.05)
    finally:
        proc.kill()
        proc.wait()
    assert SleepMemory(1, None).wait(1) == 0.0  # no NVML: nothing measured, nothing to wait for
