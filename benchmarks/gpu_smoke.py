"""One-GPU smoke test of the GPU path and its hand-over: one JSON line, every check named.

Run it on one GPU node before ``ray up`` (docs/cluster.md). It builds a
random-initialised Llama model (``benchmarks.gpu``'s configs) and runs one
colocated iteration with the engine and the trainers in processes of their
own, as on a cluster:

1. ``train``: a trainer process trains adapter 1 (three DPO steps, gradient checkpointing);
2. an engine process starts (CUDA vLLM where installed, else the transformers engine) and serves adapter 1 (its
   canaries proven on first use);
3. the engine sleeps (GPU only): weights offloaded, KV cache dropped;
4. ``train_again``: a second trainer process continues from adapter 1 to adapter 2 on the same GPU, and is then
   killed the way Ray Train ends its workers (SIGKILL, not waited for: it may still hold its memory);
5. ``handover``: ``workers.handover.wait_exited`` waits for the killed trainers; the engine waits until the GPU
   has its memory free, wakes, and proves adapter 1's canaries again;
6. the engine serves adapter 2 (proven on first use) and adapter 1 again.

Checks: ``train`` and ``train_again`` (three optimizer steps, finite losses,
checkpointing on); ``adapter_served``; ``adapter_changes_output`` (greedy text
with adapter 1 differs from the base model's); ``handover`` (the killed trainers
waited for); ``reproved_after_wake`` (the canaries checked again after the
wake-up); ``sleep_wake_identical`` (greedy text with adapter 1 the same after
sleep and wake; ``"not applicable"`` on the CPU, where an engine has nothing to
release: a colocated CPU run shuts its engines down instead). Memory per phase: on the GPU, the device's used
memory after each phase (NVML) and each trainer's peak allocation;
``asleep_engine_gib`` is what the sleeping engine keeps (``selfreward plan``'s
allowance, ``orchestrator.resources.plan.ASLEEP_ENGINE_GIB``). On the CPU, each
process's peak resident set.

    python -m benchmarks.gpu_smoke            # llama-0.5b on the GPU (refuses without CUDA)
    python -m benchmarks.gpu_smoke --smoke    # the tiny config on any device (CI runs it on the CPU)

Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu import VOCAB, build_model_dir

GIB = 2**30
PROMPTS = [f"Question {i}: what is {i} plus {i + 2}?" for i in range(4)]


def _pairs(n: int, shift: int = 0) -> list[dict[str, Any]]:
    """Preference pairs of plain text, as the select stage writes them (kept, finished by a stop)."""
    return [{"prompt": f"Question {i}: what is {i} plus {i + 2}?", "chosen": f"The answer is {2 * i + 2}.",
             "rejected": f"I think it is {3 * i + 7 + shift}, or maybe not.", "chosen_finish_reason": "stop",
             "rejected_finish_reason": "stop", "weight": 1.0, "label_p": None, "kept": True} for i in range(n)]


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# --- the trainer's process ----------------------------------------------------------------------------------------


def _trainer(model: str, out: str, init: str | None, dtype: str, device: str, shift: int, conn: Any) -> None:
    """Train one adapter, report, then stay alive holding what it took until killed (as a Ray Train worker after
    its last step: fit() has returned, the process has not exited)."""
    try:
        conn.send(("ok", train_adapter(Path(model), Path(out), init, dtype, device, shift)))
    except Exception as e:  # noqa: BLE001 - reported to the parent as a failed check
        conn.send(("error", f"{type(e).__name__}: {e}"))
    while True:
        time.sleep(60)


def train_adapter(model: Path, out: Path, init: str | None, dtype: str, device: str, shift: int = 0) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from orchestrator.config import load_config
    from orchestrator.specs import train_spec
    from workers.training import canaries
    from workers.training.trainer import DPOTrainerCore
    from workers.types import AdapterRef

    pairs = out.with_name(f"{out.name}-pairs.parquet")
    rows = _pairs(6, shift)
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    cfg = load_config(None, [f"model.dtype={dtype}", "lora.rank=16", "lora.alpha=32", "dpo.learning_rate=2e-2",
                             "dpo.micro_batch_pairs=2", "resources.gradient_checkpointing=true",
                             "scoring.reference=previous"])
    policy = AdapterRef("init", init) if init else None
    spec = train_spec(cfg, str(model), 0, policy, str(pairs), str(out))
    core = DPOTrainerCore(spec, device)
    result = core.fit(core.encode(pq.read_table(pairs)))
    requests = canaries.pick(rows)
    core.save(out, result, None, (requests, core.canary_logprobs(requests)))
    losses = [s["loss"] for s in result.steps]
    checkpointing = bool(getattr(core.model.get_base_model(), "is_gradient_checkpointing", False))
    cuda = device.startswith("cuda")
    return {"steps": len(result.steps), "losses": [round(x, 4) for x in losses], "pid": os.getpid(),
            "ok": len(losses) == 3 and all(x == x and abs(x) != float("inf") for x in losses) and checkpointing,
            "gradient_checkpointing": checkpointing,
            **({"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)} if cuda else
               {"peak_rss_gib": _peak_rss_gib()})}


# --- the engine's process -----------------------------------------------------------------------------------------


def _engine(model: str, dtype: str, cuda: bool, conn: Any) -> None:
    """Serve commands from the parent: ("complete", adapter folder or None), ("sleep",), ("wake", timeout_s),
    ("close",). Each answer is ("ok", value) or ("error", text)."""
    from dataclasses import replace

    from orchestrator.config import load_config
    from orchestrator.specs import engine_spec
    from workers.types import AdapterRef, CompletionRequest, SamplingSpec

    use_vllm = False
    if cuda:
        try:
            from vllm.platforms import current_platform

            use_vllm = current_platform.is_cuda()
        except ImportError:
            pass
    cfg = load_config(None, [f"model.dtype={dtype}", "model.max_model_len=512", "lora.rank=16", "resources.kv_cache_gib=1"])
    # Half the GPU, and sleep mode as a colocated run has it.
    spec = replace(engine_spec(cfg, model), gpu_memory_utilization=0.5, enable_sleep_mode=cuda, merge_adapters=False)
    if use_vllm:
        from workers.engines.vllm import VLLMEngine as Engine
    else:
        from workers.engines.hf import HFEngine as Engine
    try:
        engine = Engine(spec)
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ok", Engine.__name__))
    requests = [CompletionRequest(p, seed=i) for i, p in enumerate(PROMPTS)]
    greedy = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=12)
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "complete":
                ref = AdapterRef(Path(args[0]).name, args[0]) if args[0] else None
                value: Any = [c.text for c in engine.complete(requests, greedy, ref)]
            elif cmd == "sleep":
                engine.sleep()
                value = None
            elif cmd == "wake":
                value = engine.wake(args[0])
            elif cmd == "close":
                engine.close()
                conn.send(("ok", _peak_rss_gib()))
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", value))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


class _Remote:
    """The parent's end of a child process: call(cmd, *args) -> value, RuntimeError on the child's error."""

    def __init__(self, ctx: Any, target: Any, *args: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(*args, child), daemon=True)
        self.proc.start()
        child.close()  # the child's end lives in the child only: its death reads as the end of the pipe

    def answer(self, timeout_s: float = 1800) -> Any:
        try:
            if not self.conn.poll(timeout_s):
                raise RuntimeError(f"no answer from process {self.proc.pid} within {timeout_s:g}s")
            status, value = self.conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"process {self.proc.pid} died (exit code {self.proc.exitcode}): {e!r}") from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.answer()


def _gpu_used_gib(probe: Any) -> float | None:
    if probe is None:
        return None
    return round(probe.used(0) / GIB, 2)


def run(model: Path, tmp: Path, dtype: str, cuda: bool) -> dict[str, Any]:
    from workers.handover import GpuProcess, nvml_probe, wait_exited

    ctx = multiprocessing.get_context("spawn")
    probe = nvml_probe() if cuda else None
    device = "cuda" if cuda else "cpu"
    out: dict[str, Any] = {}
    used: dict[str, float | None] = {"start": _gpu_used_gib(probe)}
    trainers: list[_Remote] = []

    def train(name: str, init: str | None, shift: int) -> dict[str, Any]:
        t = _Remote(ctx, _trainer, str(model), str(tmp / name), init, dtype, device, shift)
        trainers.append(t)
        result = t.answer()
        used[f"{name} done"] = _gpu_used_gib(probe)
        return result

    def kill_and_hand_over() -> float:
        """SIGKILL the trainers without waiting (Ray Train's way), then the hand-over's wait for their processes."""
        import psutil

        processes = []
        for t in trainers:
            processes.append(GpuProcess("trainer", "", t.proc.pid, psutil.Process(t.proc.pid).create_time(), 0 if cuda else None))
            os.kill(t.proc.pid, signal.SIGKILL)
        waited = wait_exited(processes, timeout_s=300)
        for t in trainers:
            t.proc.join()
        trainers.clear()
        return waited

    out["train"] = train("adapter1", None, 0)
    kill_and_hand_over()
    used["trainer exited"] = _gpu_used_gib(probe)
    engine = _Remote(ctx, _engine, str(model), dtype, cuda)
    out["engine"] = engine.answer()
    used["engine up"] = _gpu_used_gib(probe)
    try:
        served = engine.call("complete", str(tmp / "adapter1"))
        out["adapter_served"] = True
    except RuntimeError as e:
        out.update(adapter_served=False, error=str(e))
        engine.call("close")
        return out
    out["adapter_changes_output"] = served != engine.call("complete", None)
    if cuda:
        engine.call("sleep")
        used["engine asleep"] = _gpu_used_gib(probe)
        out["asleep_engine_gib"] = round(used["engine asleep"] - used["trainer exited"], 2)
    out["train_again"] = train("adapter2", str(tmp / "adapter1"), 3)
    out["handover_s"] = round(kill_and_hand_over(), 3)
    out["handover"] = True
    used["trainer killed, waited"] = _gpu_used_gib(probe)
    try:
        out["reprove_s"] = round(engine.call("wake", 300.0), 3)
        out["reproved_after_wake"] = True
    except RuntimeError as e:
        out.update(reproved_after_wake=False, error=str(e))
    used["engine awake"] = _gpu_used_gib(probe)
    try:
        engine.call("complete", str(tmp / "adapter2"))  # its canaries proven on first use
        out["adapter2_served"] = True
    except RuntimeError as e:
        out.update(adapter2_served=False, error=str(e))
    again = engine.call("complete", str(tmp / "adapter1"))
    out["sleep_wake_identical"] = again == served if cuda else "not applicable"
    out["engine_peak_rss_gib"] = engine.call("close")
    engine.proc.join(timeout=60)
    if cuda:
        out["gpu_used_gib"] = used
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the tiny config on any device (the CPU in CI)")
    p.add_argument("--tokenizer", type=Path, default=None, help="folder with the tokenizer (default: the bundled model's)")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not (cuda or args.smoke):
        print(json.dumps({"ok": False, "error": "no CUDA device: run with --smoke for the CPU path"}))
        return 1
    if args.tokenizer is None:
        from orchestrator.models import ensure_default_model

        args.tokenizer = ensure_default_model()
    name = "smoke" if args.smoke else "llama-0.5b"
    dtype = "bfloat16" if cuda else "float32"
    result: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "model": name, "vocab": VOCAB, "dtype": dtype}
    if cuda:
        from workers.handover import nvml_probe

        probe = nvml_probe()
        if probe is not None:
            result["device"] = probe.name(0)
    with tempfile.TemporaryDirectory(prefix="selfreward-gpu-smoke-") as tmp:
        model = build_model_dir(name, Path(tmp), args.tokenizer, dtype)
        try:
            result.update(run(model, Path(tmp), dtype, cuda))
        except RuntimeError as e:
            result["error"] = str(e)
    result["peak_rss_gib"] = _peak_rss_gib()
    checks = [result.get("train", {}).get("ok"), result.get("train_again", {}).get("ok"),
              result.get("adapter_served") is True, result.get("adapter_changes_output") is True,
              result.get("handover") is True, result.get("reproved_after_wake") is True,
              result.get("adapter2_served") is True, result.get("sleep_wake_identical") in (True, "not applicable")]
    result["ok"] = all(checks)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
