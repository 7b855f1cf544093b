"""Serving an adapter: merged into reloaded base weights vs vLLM's per-request LoRA, and the base model beside.

One engine per way (``EngineSpec.merge_adapters``), the same requests and seeds:
sampled answers (as the generate and judge stages ask) and summed log-probs
(as the score stage asks), under a rank-8 adapter on every projection of the
bundled model (as the default ``lora`` config trains), and under no adapter.
Reported: output tokens/s and scored sequences/s per way, the ratios merged /
LoRA and merged / base, the seconds one switch of a merged engine takes, and
the largest log-prob difference between the two ways (they serve the same
model, so it is numerics only).

    python -m benchmarks.adapter_serving [--prompts 12] [--samples 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks import table, write_result
from benchmarks.judge import workload


def make_adapter(model: str, folder: str) -> None:
    """A rank-8 LoRA on every projection with non-zero B (a trained adapter's shape, not its values)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32, trust_remote_code=False)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)  # keeps the model fluent, so both ways sample answers of ordinary length
    peft.save_pretrained(folder)


def run_way(model: str, adapter, merged: bool, prompts: list[str], samples: int, max_tokens: int,
            texts: dict | None = None) -> dict:
    """One way's numbers; ``texts`` (per model, the requests to score) makes it score another way's answers."""
    from orchestrator.config import load_config
    from orchestrator.specs import engine_spec
    from workers.engines.vllm import VLLMEngine
    from workers.types import CompletionRequest, SamplingSpec, ScoreRequest

    serving = "merged" if merged else "lora"
    engine = VLLMEngine(engine_spec(load_config(None, [f"resources.adapter_serving={serving}"]), model))
    sampling = SamplingSpec(temperature=0.8, top_p=0.95, max_tokens=max_tokens)
    requests = [CompletionRequest(p, 100 + i * samples + k) for i, p in enumerate(prompts) for k in range(samples)]
    out: dict = {}
    try:
        engine.complete(requests[:1], sampling, None)  # warm-up
        for label, a in (("base", None), ("adapter", adapter)):
            t0 = time.monotonic()
            done = engine.complete(requests, sampling, a)
            gen = time.monotonic() - t0
            scored = texts[label] if texts else [ScoreRequest(r.user_message, c.text, c.finish_reason)
                                                 for r, c in zip(requests, done)]
            t0 = time.monotonic()
            logps = engine.score(scored, a)
            score = time.monotonic() - t0
            tokens = sum(c.num_tokens for c in done)
            out[label] = {"output_tokens": tokens, "generate_seconds": round(gen, 3),
                          "output_tokens_per_s": round(tokens / gen, 2), "score_seconds": round(score, 3),
                          "scored_per_s": round(len(scored) / score, 3), "scored": scored, "logp": [s.logp for s in logps]}
        if merged:  # one switch: base weights back, then the adapter's again
            t0 = time.monotonic()
            engine.score(out["adapter"]["scored"][:1], None)
            engine.score(out["adapter"]["scored"][:1], adapter)
            out["switch_seconds"] = round((time.monotonic() - t0) / 2, 3)
    finally:
        engine.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    from orchestrator.models import ensure_default_model
    from workers.types import AdapterRef

    model = str(ensure_default_model())
    prompts = [q for q, _ in workload(args.prompts, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        make_adapter(model, tmp)
        adapter = AdapterRef("bench", tmp)
        merged = run_way(model, adapter, True, prompts, args.samples, args.max_tokens)
        # The LoRA way scores the merged way's answers: the same texts, so the log-probs compare.
        lora = run_way(model, adapter, False, prompts, args.samples, args.max_tokens,
                       texts={m: merged[m]["scored"] for m in ("base", "adapter")})
    ways = {"merged": merged, "lora": lora}
    diff = max(abs(a - b) for m in ("base", "adapter") for a, b in zip(merged[m]["logp"], lora[m]["logp"]))
    for w in ways.values():
        for r in (w["base"], w["adapter"]):
            del r["scored"], r["logp"]
    result = {
        "requests": len(prompts) * args.samples, "max_tokens": args.max_tokens, "ways": ways,
        "generate_ratio_merged_over_lora": round(merged["adapter"]["output_tokens_per_s"] / lora["adapter"]["output_tokens_per_s"], 3),
        "score_ratio_merged_over_lora": round(merged["adapter"]["scored_per_s"] / lora["adapter"]["scored_per_s"], 3),
        "generate_ratio_merged_adapter_over_base": round(merged["adapter"]["output_tokens_per_s"] / merged["base"]["output_tokens_per_s"], 3),
        "max_logp_difference_merged_vs_lora": diff,
    }
    path = write_result("adapter_serving", result)
    rows = [["way", "model", "tok/s", "scored/s"]]
    rows += [[w, m, f"{ways[w][m]['output_tokens_per_s']:.1f}", f"{ways[w][m]['scored_per_s']:.2f}"]
             for w in ways for m in ("base", "adapter")]
    print(table(rows))
    print(f"merged / LoRA: generate {result['generate_ratio_merged_over_lora']:.2f}x, score "
          f"{result['score_ratio_merged_over_lora']:.2f}x; a switch {merged['switch_seconds']:.2f}s; "
          f"largest log-prob difference {diff:.2e} (wrote {path})")


if __name__ == "__main__":
    main()
