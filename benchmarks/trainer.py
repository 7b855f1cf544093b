"""Our DPO trainer vs TRL's ``DPOTrainer`` on the same model, pairs, LoRA adapter, batch and steps.

Both start from the same LoRA initialisation (built with the same seed),
see the same token ids (checked), use AdamW with the same learning rate,
constant schedule, no weight decay and gradient clipping at 1.0, the sigmoid
DPO loss with beta 0.1, and the base model (adapter disabled) as reference.
Each optimizer step takes the whole set of pairs, so the data order cannot
make them differ: their per-step losses must agree (an oracle check of our
loss and update), and pairs per second compares their speed. TRL is a
benchmark-only dependency (``pip install trl``).

    python -m benchmarks.trainer [--pairs 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks import table, write_result

LOSS_TOLERANCE = 2e-3  # float32, different kernels and reduction orders; a wrong loss or update is off by far more


def make_pairs(n: int) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in
            (Path(__file__).parents[1] / "jobs" / "data" / "verifiable_train.jsonl").read_text().splitlines()[:n]]
    return [(r["prompt"], f"The answer is {r['answer']}.", "I am not sure, maybe it is something else entirely.")
            for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args()

    import datasets
    import pyarrow as pa
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from orchestrator import artifacts
    from orchestrator.models import ensure_default_model
    from workers.losses import DPO
    from workers.tokens import prompt_token_ids, response_token_ids
    from workers.trainer import DPOTrainerCore, TrainSpec

    torch.set_num_threads(torch.get_num_threads())
    model_path = str(ensure_default_model())
    triples = make_pairs(args.pairs)
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seed = 11

    # Ours.
    spec = TrainSpec(model_path=model_path, dtype="float32", pairs_path="", output_dir="", lora_rank=8, lora_alpha=16,
                     target_modules=modules, loss=DPO(0.1), learning_rate=args.lr, epochs=args.steps,
                     micro_batch_pairs=args.pairs, seed=seed)
    core = DPOTrainerCore(spec)
    rows = [{**{n: None for n in artifacts.PAIRS.names}, "prompt": q, "chosen": c, "rejected": r, "weight": 1.0,
             "kept": True, "chosen_finish_reason": "stop", "rejected_finish_reason": "stop"} for q, c, r in triples]
    examples = core.encode(pa.Table.from_pylist(rows, schema=artifacts.PAIRS))
    t0 = time.monotonic()
    ours = core.fit(examples)
    ours_s = time.monotonic() - t0

    # TRL, from the same initial adapter and the same token ids.
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=False)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(modules),
                                            task_type="CAUSAL_LM"))
    same_init = all(torch.equal(a, b) for (_, a), (_, b) in zip(
        sorted((n, p) for n, p in model.named_parameters() if p.requires_grad),
        sorted((n, p) for n, p in core.model.named_parameters() if p.requires_grad)))
    del core
    prompt_texts = [tok.decode(prompt_token_ids(tok, q)) for q, _, _ in triples]
    data = datasets.Dataset.from_list([{"prompt": pt, "chosen": c, "rejected": r}
                                       for pt, (_, c, r) in zip(prompt_texts, triples)])
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                        num_train_epochs=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                        weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], logging_steps=1,
                        save_strategy="no", report_to=[], use_cpu=True, seed=seed, max_length=None,
                        dataloader_num_workers=0, optim="adamw_torch")
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
        processed = trainer.train_dataset
        same_ids = all(
            list(row["prompt_ids"]) == prompt_token_ids(tok, q)
            and list(row["chosen_ids"]) == response_token_ids(tok, c, "stop")
            and list(row["rejected_ids"]) == response_token_ids(tok, r, "stop")
            for row, (q, c, r) in zip(processed, triples)
        )
        t0 = time.monotonic()
        trainer.train()
        trl_s = time.monotonic() - t0
        trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    our_losses = [s["loss"] for s in ours.steps]
    pairs_total = args.pairs * args.steps
    agree = len(our_losses) == len(trl_losses) and all(abs(a - b) <= LOSS_TOLERANCE for a, b in zip(our_losses, trl_losses))
    result = {
        "pairs": args.pairs, "steps": args.steps, "same_initial_adapter": same_init, "same_token_ids": same_ids,
        "ours": {"seconds": round(ours_s, 3), "pairs_per_s": round(pairs_total / ours_s, 3), "losses": our_losses},
        "trl": {"version": __import__("trl").__version__, "seconds": round(trl_s, 3),
                "pairs_per_s": round(pairs_total / trl_s, 3), "losses": trl_losses},
        "losses_agree": agree, "loss_tolerance": LOSS_TOLERANCE,
        "ratio_ours_over_trl_pairs_per_s": round(trl_s / ours_s, 3), "goal": ">= 1.3",
    }
    path = write_result("trainer", result)
    print(table([["", "seconds", "pairs/s", "losses per step"],
                 ["ours", f"{ours_s:.2f}", f"{pairs_total / ours_s:.2f}", " ".join(f"{x:.4f}" for x in our_losses)],
                 ["TRL DPOTrainer", f"{trl_s:.2f}", f"{pairs_total / trl_s:.2f}", " ".join(f"{x:.4f}" for x in trl_losses)]]))
    print(f"ratio ours / TRL pairs/s: {result['ratio_ours_over_trl_pairs_per_s']:.2f} (goal >= 1.3); losses agree within "
          f"{LOSS_TOLERANCE}: {agree}; same initial adapter: {same_init}; same token ids: {same_ids}  (wrote {path})")


if __name__ == "__main__":
    main()
