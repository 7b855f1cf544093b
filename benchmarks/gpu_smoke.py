"""One-GPU smoke test of the GPU path, ready for the day a GPU is lent: one JSON line, every check named.

It builds a random-initialised Llama model (``benchmarks.gpu``'s configs),
trains a LoRA adapter for three DPO steps with gradient checkpointing, then
starts the real engine (CUDA vLLM when it is installed, else the
transformers engine), serves the adapter (its canaries checked on first
use), sleeps and wakes the engine, and checks:

- ``train``: three optimizer steps, every loss finite, gradient checkpointing on;
- ``adapter_served``: the engine's canary check passed (it serves the adapter the trainer wrote);
- ``adapter_changes_output``: greedy text with the adapter differs from the base model's;
- ``sleep_wake_identical``: greedy text with the adapter is the same after sleep and wake
  (on CPU: ``"not applicable"``, an engine there has nothing to release);
- peak memory (GPU: the most torch allocated; CPU: the process's peak resident set).

    python -m benchmarks.gpu_smoke            # llama-0.5b on the GPU (refuses without CUDA)
    python -m benchmarks.gpu_smoke --smoke    # the tiny config on any device (CI runs it on the CPU)

Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.gpu import VOCAB, build_model_dir


def _pairs(n: int) -> list[dict[str, Any]]:
    """Preference pairs of plain text, as the select stage writes them (kept, finished by a stop)."""
    return [{"prompt": f"Question {i}: what is {i} plus {i + 2}?", "chosen": f"The answer is {2 * i + 2}.",
             "rejected": f"I think it is {3 * i + 7}, or maybe not.", "chosen_finish_reason": "stop",
             "rejected_finish_reason": "stop", "weight": 1.0, "label_p": None, "kept": True} for i in range(n)]


def train_adapter(model: Path, out: Path, dtype: str, device: str) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.config import load_config
    from orchestrator.specs import train_spec
    from workers.training import canaries
    from workers.training.trainer import DPOTrainerCore

    pairs = out.parent / "pairs.parquet"
    rows = _pairs(6)
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    cfg = load_config(None, [f"model.dtype={dtype}", "lora.rank=16", "lora.alpha=32", "dpo.learning_rate=2e-2",
                             "dpo.micro_batch_pairs=2", "resources.gradient_checkpointing=true"])
    spec = train_spec(cfg, str(model), 0, None, str(pairs), str(out))
    core = DPOTrainerCore(spec, device)
    result = core.fit(core.encode(pq.read_table(pairs)))
    requests = canaries.pick(rows)
    core.save(out, result, None, (requests, core.canary_logprobs(requests)))
    losses = [s["loss"] for s in result.steps]
    checkpointing = bool(getattr(core.model.get_base_model(), "is_gradient_checkpointing", False))
    del core
    return {"steps": len(result.steps), "losses": [round(x, 4) for x in losses],
            "ok": len(losses) == 3 and all(x == x and abs(x) != float("inf") for x in losses) and checkpointing,
            "gradient_checkpointing": checkpointing}


def engine_checks(model: Path, adapter: Path, dtype: str, cuda: bool) -> dict[str, Any]:
    from dataclasses import replace

    from orchestrator.config import load_config
    from orchestrator.specs import engine_spec
    from workers.types import AdapterRef, CompletionRequest, SamplingSpec, ServedModelError

    use_vllm = False
    if cuda:
        try:
            from vllm.platforms import current_platform

            use_vllm = current_platform.is_cuda()
        except ImportError:
            pass
    cfg = load_config(None, [f"model.dtype={dtype}", "model.max_model_len=512", "lora.rank=16", "resources.kv_cache_gib=1"])
    # Half the GPU, and sleep mode as a colocated run has it.
    spec = replace(engine_spec(cfg, str(model)), gpu_memory_utilization=0.5, enable_sleep_mode=cuda, merge_adapters=False)
    if use_vllm:
        from workers.engines.vllm import VLLMEngine as Engine
    else:
        from workers.engines.hf import HFEngine as Engine
    engine = Engine(spec)
    ref = AdapterRef("smoke", str(adapter))
    requests = [CompletionRequest(f"Question {i}: what is {i} plus {i + 2}?", seed=i) for i in range(4)]
    greedy = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=12)
    out: dict[str, Any] = {"engine": Engine.__name__}
    try:
        served = [c.text for c in engine.complete(requests, greedy, ref)]
        out["adapter_served"] = True
    except ServedModelError as e:
        out.update(adapter_served=False, error=str(e))
        return out
    base = [c.text for c in engine.complete(requests, greedy, None)]
    out["adapter_changes_output"] = served != base
    if cuda:
        engine.sleep()
        engine.wake()
        out["sleep_wake_identical"] = [c.text for c in engine.complete(requests, greedy, ref)] == served
    else:
        out["sleep_wake_identical"] = "not applicable"
    engine.close()
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
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "model": name,
                              "vocab": VOCAB, "dtype": dtype}
    with tempfile.TemporaryDirectory(prefix="selfreward-gpu-smoke-") as tmp:
        model = build_model_dir(name, Path(tmp), args.tokenizer, dtype)
        result["train"] = train_adapter(model, Path(tmp) / "adapter", dtype, device)
        if cuda:
            result["train_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result.update(engine_checks(model, Path(tmp) / "adapter", dtype, cuda))
    if cuda:
        result["engine_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    checks = [result["train"]["ok"], result.get("adapter_served") is True, result.get("adapter_changes_output") is True,
              result.get("sleep_wake_identical") in (True, "not applicable")]
    result["ok"] = all(checks)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
