"""Handing the GPUs back from the trainer to the engines: the train processes gone, then the memory free.

With ``colocate``, engines sleep while train workers use their GPUs. Ray
Train's ``fit()`` returns once it has asked Ray to kill its workers; it does
not wait for their processes to exit, and each still holds what its caching
allocator took (about 27 GB per GPU for an 8B model) until it does. An
engine woken at that moment asks for its weights and KV cache back, and the
allocation fails. So the hand-over has two waits, each bounded and each
failing with the node, the GPU and the process that still holds it:

1. ``wait_exited``: every process that used the GPUs (train ranks, the
   MC-dropout task) has exited, checked by pid on its own node (a Ray task
   pinned there; on this node, or without Ray, directly). Each process is
   recorded with its start time, so a pid reused by another process reads as
   exited, and a zombie (exited, not yet reaped: its memory is freed) too.
2. ``wait_free`` (in the engine's process, before ``wake_up``): every GPU of
   the engine reports at least the memory the engine released when it went
   to sleep as free (read with NVML, which needs no CUDA context).

Processes register themselves on a ``Registry`` (a Ray queue) when they
start; the launcher drains it after ``fit()``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers.types import EngineInfo

GIB = 1024**3
LOG = logging.getLogger(__name__)


class HandoverError(RuntimeError):
    """The GPUs were not handed back in time: a process still runs, or the memory is still held."""


@dataclass(frozen=True)
class GpuProcess:
    """A process that used (or may have used) an engine's GPU while the engines slept."""

    role: str  # "train rank 3", "MC-dropout"
    node_id: str  # Ray node id ("" outside Ray: this machine)
    pid: int
    started: float  # the process's start time (psutil): a pid reused later is another process
    gpu: int | None = None  # the GPU it used, as its node numbers them (for the messages); None on CPU

    def where(self) -> str:
        gpu = f", GPU {self.gpu}" if self.gpu is not None else ""
        return f"{self.role} (pid {self.pid} on node {self.node_id[:12] or 'local'}{gpu})"


def this_process(role: str, gpu: int | None = None) -> GpuProcess:
    """This process, as the hand-over will wait for it."""
    import psutil

    here = EngineInfo.here()
    return GpuProcess(role, here.node_id, here.pid, psutil.Process().create_time(), gpu)


def still_running(p: GpuProcess) -> str | None:
    """The process's state while it still runs ("running", "sleeping", ...); None once it has exited."""
    import psutil

    try:
        proc = psutil.Process(p.pid)
        # psutil adds the boot time, which it re-reads each call (whole seconds; NTP may move it by one): a pid
        # reused within two seconds of the process's start is implausible.
        if abs(proc.create_time() - p.started) > 2.0:
            return None  # the pid now names another process
        state = proc.status()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return None if state in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else state


def _wait_here(processes: Sequence[GpuProcess], timeout_s: float, poll_s: float) -> list[tuple[GpuProcess, str]]:
    """Poll this node's ``processes`` until all have exited or ``timeout_s`` passed; those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [(p, s) for p in processes if (s := still_running(p)) is not None]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(poll_s)


def wait_exited(processes: Iterable[GpuProcess], timeout_s: float, poll_s: float = 0.1) -> float:
    """Wait until every process has exited, each checked on its own node; the seconds waited.

    Processes on this node (or recorded outside Ray) are polled here; those
    of another node by a zero-CPU Ray task pinned to it. A node that has left
    the cluster took its processes with it. Raises HandoverError naming
    every process still running after ``timeout_s``.
    """
    t0 = time.monotonic()
    by_node: dict[str, list[GpuProcess]] = {}
    for p in processes:
        by_node.setdefault(p.node_id, []).append(p)
    if not by_node:
        return 0.0
    here, remote = "", {}
    try:
        import ray

        if ray.is_initialized():
            here = ray.get_runtime_context().get_node_id()
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            remote = {node: ps for node, ps in by_node.items() if node not in ("", here) and node in alive}
    except ImportError:
        pass
    pending = []
    if remote:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=0, max_retries=0)(_wait_here)
        pending = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                   .remote(ps, timeout_s, poll_s) for node, ps in remote.items()]
    running = _wait_here([p for node, ps in by_node.items() if node in ("", here) for p in ps], timeout_s, poll_s)
    for node, ref in zip(remote, pending):
        import ray

        try:
            running += ray.get(ref)
        except ray.exceptions.RayError as e:
            if any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes()):
                raise HandoverError(f"the hand-over could not check the train processes on node {node[:12]}: {e}") from e
            # the node left the cluster while waiting: its processes went with it
    if running:
        raise HandoverError(
            f"{len(running)} process(es) that used the engines' GPUs still run {timeout_s:g}s after training ended: "
            + "; ".join(f"{p.where()}, {state}" for p, state in running)
            + ". The engines were not woken (resources.handover_timeout_s); rerun the same command to resume.")
    return time.monotonic() - t0


class Registry:
    """Where processes that will use the engines' GPUs record themselves (a zero-CPU Ray queue)."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})

    @staticmethod
    def add(queue: Any, process: GpuProcess) -> None:
        """From inside the process (``queue`` is ``Registry.queue``, passed in its config)."""
        if queue is not None:
            queue.put(process)

    def drain(self) -> list[GpuProcess]:
        """Every process recorded so far, and the queue shut down."""
        out: list[GpuProcess] = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        self.queue.shutdown()
        return out


# --- memory -------------------------------------------------------------------------------------------------------


class MemoryProbe(Protocol):
    """What the GPUs report: free bytes, and the processes holding memory (pid, bytes)."""

    def free(self, gpu: int) -> int: ...

    def holders(self, gpu: int) -> list[tuple[int, int]]: ...


def physical_gpus(visible: str | None = None) -> list[str]:
    """This process's CUDA devices as NVML names them (indices, or UUIDs), in CUDA's order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        return []
    return [v.strip() for v in visible.split(",") if v.strip()]


class NvmlProbe:
    """``MemoryProbe`` on the machine's GPUs through NVML (no CUDA context needed); ``gpu`` is CUDA's index in this
    process, mapped through CUDA_VISIBLE_DEVICES."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            from vllm.third_party import pynvml  # vLLM ships its own copy
        self.nvml = pynvml
        pynvml.nvmlInit()
        self.names = physical_gpus()

    def _handle(self, gpu: int) -> Any:
        name = self.names[gpu] if gpu < len(self.names) else str(gpu)
        if name.isdigit():
            return self.nvml.nvmlDeviceGetHandleByIndex(int(name))
        return self.nvml.nvmlDeviceGetHandleByUUID(name)

    def free(self, gpu: int) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self._handle(gpu)).free)

    def used(self, gpu: int) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self._handle(gpu)).used)

    def name(self, gpu: int) -> str:
        name = self.nvml.nvmlDeviceGetName(self._handle(gpu))
        return name.decode() if isinstance(name, bytes) else str(name)

    def holders(self, gpu: int) -> list[tuple[int, int]]:
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(gpu))
        return [(int(p.pid), int(p.usedGpuMemory or 0)) for p in procs]


def wait_free(need: dict[int, int], timeout_s: float, probe: MemoryProbe, where: str, poll_s: float = 0.2,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until each GPU in ``need`` (CUDA index -> bytes) reports that many bytes free; the seconds waited.

    Raises HandoverError naming ``where`` (the engine's node), each GPU short
    of memory and the processes holding memory on it (this one included).
    """
    t0 = clock()
    while True:
        short = {g: (probe.free(g), n) for g, n in need.items() if probe.free(g) < n}
        if not short:
            return clock() - t0
        if clock() - t0 >= timeout_s:
            me = os.getpid()
            parts = []
            for g, (free, n) in sorted(short.items()):
                held = ", ".join(f"pid {pid}{' (this engine)' if pid == me else ''}: {used / GIB:.1f} GiB"
                                 for pid, used in probe.holders(g)) or "no process listed"
                parts.append(f"GPU {g}: {free / GIB:.1f} GiB free, the engine needs {n / GIB:.1f} GiB back; held by {held}")
            raise HandoverError(f"engine on {where}: its GPU memory is still held {timeout_s:g}s after training "
                                f"ended: {'; '.join(parts)} (resources.handover_timeout_s)")
        sleep(poll_s)


def nvml_probe() -> NvmlProbe | None:
    """NVML on this machine's GPUs; None, with a warning, where it cannot be loaded (no NVIDIA driver, neither
    nvidia-ml-py nor vLLM installed): an engine then wakes without waiting for its memory."""
    try:
        return NvmlProbe()
    except Exception as e:  # noqa: BLE001 - no library, no driver: nothing to measure
        LOG.warning(f"NVML not available ({type(e).__name__}: {e}): an engine waking from sleep will not wait for its "
                    "GPU memory to be free (install nvidia-ml-py)")
        return None


class SleepMemory:
    """What an engine gives back when it sleeps, per GPU of its process, and the wait for it on waking."""

    def __init__(self, gpus: int, probe: MemoryProbe | None) -> None:
        self.gpus, self.probe = gpus, probe
        self.released: dict[int, int] = {}

    def sleep(self, release: Callable[[], None]) -> None:
        """Run ``release`` (the engine going to sleep), measuring the memory it frees on each GPU."""
        if self.probe is None:
            release()
            return
        before = {g: self.probe.free(g) for g in range(self.gpus)}
        release()
        self.released = {g: max(0, self.probe.free(g) - before[g]) for g in range(self.gpus)}

    def wait(self, timeout_s: float) -> float:
        """Before waking: until every GPU has free what the engine released (``wait_free``, naming this process's
        node); the seconds waited."""
        if self.probe is None or not self.released:
            return 0.0
        here = EngineInfo.here()
        return wait_free(self.released, timeout_s, self.probe, f"node {here.node_id[:12] or here.host}")
