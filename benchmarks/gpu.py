"""GPU figures: DPO trainer-step MFU for ~0.5B and ~1.5B Llama models, and the HF engine's generation tokens/s.

The models are Llama-architecture configs with random weights (bf16, SDPA
attention), saved once to a temporary folder with the bundled model's
tokenizer (vocabulary 49152). A trainer step is the trainer's own math: the
packed pair log-prob pass of ``workers.training.logprobs`` over a DPO batch (each
pair one block, its prompt computed once), the sigmoid DPO loss of ``workers.training.losses`` against
reference log-probs computed once, backward, gradient clipping and AdamW;
with a LoRA adapter (rank 16 on every projection, through
``DPOTrainerCore``) or as a full fine-tune. MFU = model FLOPs per second /
the GPU's dense bf16 peak, with model FLOPs per token

    full fine-tune: 6 N + 6 L d S      LoRA: 4 N + 6 L d S

(N: parameters the matmuls use, lm_head included and the embedding lookup
not; L layers, d hidden size, S block length = prompt + chosen + rejected;
tokens = the tokens the pass computes, 3/2 x seq per pair. Attention
(QK^T and AV, 4 d S per token forward over a full S x S, backward twice
that) is counted causal: half. LoRA computes no weight gradients of the
frozen matrices, so their backward costs one forward instead of two). Generation:
``HFEngine.complete`` at batch 64, sampled, random weights (so every
request runs to max_tokens).

Without a CUDA device it writes ``{"skipped": ...}``; ``--smoke`` runs a tiny
config on whatever device there is (a check of the code, not a figure).

    python -m benchmarks.gpu [--steps 10] [--pairs 8] [--seq 512] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import table, write_result

# name: (hidden, layers, intermediate, heads, kv heads)
CONFIGS = {
    "llama-0.5b": (1024, 24, 4096, 16, 8),
    "llama-1.5b": (2048, 28, 5632, 16, 8),
    "smoke": (64, 2, 128, 4, 2),
}
VOCAB = 49152
# Dense bf16 peak of the GPUs this was written for (TFLOP/s), by name; --peak-tflops for others.
PEAKS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def build_model_dir(name: str, out: Path, tokenizer_dir: Path, dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, heads, kv = CONFIGS[name]
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    path = out / name
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False).save_pretrained(path)
    return path


def matmul_params(model) -> int:
    """Parameters that take part in matmuls (everything but the input embedding table)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def flops_per_token(n: int, layers: int, hidden: int, seq: int, lora: bool) -> float:
    return (4 if lora else 6) * n + 6 * layers * hidden * seq


def trainer_steps(path: Path, lora: bool, pairs: int, seq: int, steps: int, device: str) -> dict:
    """Timed DPO steps (after 2 warm-up steps) on random token ids: prompt seq/2, responses seq/2 each."""
    import torch

    from orchestrator.config import load_config
    from orchestrator.specs import train_spec
    from workers.training.logprobs import pair_logprobs
    from workers.training.losses import DPO
    from workers.training.trainer import DPOTrainerCore

    half = seq // 2
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randint(0, VOCAB, (half,), generator=g).tolist(), torch.randint(0, VOCAB, (half,), generator=g).tolist(),
              torch.randint(0, VOCAB, (half,), generator=g).tolist()) for _ in range(pairs)]
    if lora:
        cfg = load_config(None, ["model.dtype=bfloat16", "lora.rank=16", "lora.alpha=32", f"dpo.micro_batch_pairs={pairs}"])
        core = DPOTrainerCore(train_spec(cfg, str(path), 0, None, "", ""), device=device)
        model, opt = core.model, core.optimizer
        base = core.model.get_base_model()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, trust_remote_code=False).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
        base = model
    loss_fn = DPO(0.1)
    with torch.no_grad():
        ref_c, ref_r = pair_logprobs(model, batch, torch.device(device))
    model.train()

    def step() -> float:
        lp_c, lp_r = pair_logprobs(model, batch, torch.device(device))
        out = loss_fn(lp_c, lp_r, ref_c, ref_r, torch.ones(pairs, device=device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync()
    seconds = (time.perf_counter() - t0) / steps
    cfg = base.config
    tokens = 3 * half * pairs  # each pair is one block [prompt, chosen, rejected]: the prompt is computed once
    flops = flops_per_token(matmul_params(base), cfg.num_hidden_layers, cfg.hidden_size, 3 * half, lora) * tokens
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1), "flops_per_step": flops, "tflops": round(flops / seconds / 1e12, 2),
            "losses_finite": all(x == x for x in losses), "peak_mem_gib": None if mem is None else round(mem, 1)}


def generation(path: Path, batch: int, max_tokens: int) -> dict:
    from orchestrator.config import load_config
    from orchestrator.specs import engine_spec
    from workers.engines.hf import HFEngine
    from workers.types import CompletionRequest, SamplingSpec

    cfg = load_config(None, ["model.dtype=bfloat16", "model.max_model_len=4096", "lora.rank=16", "resources.kv_cache_gib=1"])
    engine = HFEngine(engine_spec(cfg, str(path)), batch_size=batch)
    reqs = [CompletionRequest(f"Question {i}: explain, step by step, how a heat pump moves heat.", seed=i) for i in range(batch)]
    sampling = SamplingSpec(1.0, 1.0, max_tokens)
    engine.complete(reqs[:2], SamplingSpec(1.0, 1.0, 4), None)
    sync = __import__("torch").cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = engine.complete(reqs, sampling, None)
    sync()
    seconds = time.perf_counter() - t0
    tokens = sum(c.num_tokens for c in out)
    engine.close()
    return {"batch": batch, "max_tokens": max_tokens, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--tokenizer", type=Path, default=None, help="folder with the tokenizer (default: the bundled model's)")
    p.add_argument("--smoke", action="store_true", help="a tiny config on any device: checks the code, measures nothing")
    args = p.parse_args()

    import torch

    if args.smoke:
        models, device = ["smoke"], "cuda" if torch.cuda.is_available() else "cpu"
    elif not torch.cuda.is_available():
        path = write_result("gpu", {"skipped": "no CUDA device on this machine"})
        print(f"skipped: no CUDA device on this machine  (wrote {path})")
        return
    else:
        models, device = ["llama-0.5b", "llama-1.5b"], "cuda"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    if args.tokenizer is None:
        from orchestrator.models import ensure_default_model

        args.tokenizer = ensure_default_model()
    rows, result = [], {"device": name, "peak_tflops": peak, "pairs": args.pairs, "seq": args.seq, "steps": args.steps,
                        "models": {}, "vllm": "not measured: the CUDA build of vLLM cannot be installed on this machine"}
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            path = build_model_dir(m, Path(tmp), args.tokenizer)
            entry = {}
            for mode in ("lora", "full"):
                r = trainer_steps(path, mode == "lora", args.pairs, args.seq, args.steps, device)
                r["mfu"] = round(r["tflops"] / peak, 4) if peak else None
                entry[mode] = r
                rows.append([m, mode, f"{r['step_s']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['tflops']:.1f}",
                             "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"])
            entry["generation"] = generation(path, args.gen_batch, args.gen_tokens)
            result["models"][m] = entry
    path = write_result("gpu_smoke" if args.smoke else "gpu", result)
    print(table([["model", "train", "step s", "tok/s", "TFLOP/s", "MFU"]] + rows))
    for m, e in result["models"].items():
        g = e["generation"]
        print(f"{m}: HF engine generation {g['tokens_per_s']:.0f} tok/s at batch {g['batch']} ({g['tokens']} tokens)")
    print(f"device {name}, peak {peak} TFLOP/s  (wrote {path})")


if __name__ == "__main__":
    main()
