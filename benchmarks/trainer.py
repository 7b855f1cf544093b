"""Our DPO trainer vs TRL's ``DPOTrainer`` on the same model, pairs, LoRA adapter, batch and steps.

Both start from the same LoRA adapter (saved once, loaded by both),
see the same token ids (checked), compute in float32 (TRL's config defaults
to bf16 autocast, which moves its log-probs by tenths of a nat: it is turned
off for the comparison, and TRL is run once more with it as a speed
reference), use AdamW with the same learning rate,
constant schedule, no weight decay and gradient clipping at 1.0, the sigmoid
DPO loss with beta 0.1, and the base model (adapter disabled) as reference.
Each optimizer step takes the whole set of pairs, so the data order cannot
make them differ: their step-1 losses must agree (an oracle check of our
loss; the shared initial adapter has random A and B, so that loss is not
log 2 by construction; both are also compared with the loss computed directly,
one sequence per forward pass), and pairs per second compares their speed. TRL is a
benchmark-only dependency (``pip install trl``).

    python -m benchmarks.trainer [--pairs 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from benchmarks import table, write_result

LOSS_TOLERANCE = 1e-4  # float32 in both, different kernels and reduction orders; a wrong loss or update is off by far more


def make_pairs(n: int) -> list[tuple[str, str, str]]:
    """Verifiable prompts with a worked correct answer and a wrong one, each of a different length (as sampled
    responses are: some stop early, some run to max_tokens)."""
    import random

    rows = [json.loads(line) for line in
            (Path(__file__).parents[1] / "jobs" / "data" / "verifiable_train.jsonl").read_text().splitlines()[:n]]
    steps = ["Let me read the question again.", "I will go through it one step at a time.",
             "First I write down the numbers that are given.", "Then I apply the operation the question asks for.",
             "I check the result once more before answering.", "Nothing else in the question changes the result."]
    rng = random.Random(0)

    def worked(answer: str) -> str:
        return " ".join(rng.choices(steps, k=rng.randint(0, 8)) + [f"The answer is {answer}."])

    return [(r["prompt"], worked(r["answer"]), worked(str(int(r["answer"]) + 1) if r["answer"].isdigit() else "unknown"))
            for r in rows]


def direct_step1_loss(core, examples) -> float:
    """The step-1 DPO loss computed independently of both trainers: one unpadded forward pass per sequence and a
    float64 log-softmax, policy = the initial adapter, reference = the base model (beta 0.1)."""
    import torch

    def logp(p: list[int], y: list[int]) -> float:
        logits = core.model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1 : -1]
        return float(torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(y)[:, None]).sum())

    core.model.eval()
    losses = []
    with torch.no_grad():
        for e in examples:
            pc, pr = logp(e.prompt_ids, e.chosen_ids), logp(e.prompt_ids, e.rejected_ids)
            with core.model.disable_adapter():
                rc, rr = logp(e.prompt_ids, e.chosen_ids), logp(e.prompt_ids, e.rejected_ids)
            losses.append(math.log1p(math.exp(-0.1 * ((pc - rc) - (pr - rr)))))
    return sum(losses) / len(losses)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args()

    import datasets
    import pyarrow as pa
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from orchestrator.config import load_config
    from orchestrator.models import ensure_default_model
    from orchestrator.run import artifacts
    from orchestrator.specs import train_spec
    from workers.tokens import prompt_token_ids, response_token_ids
    from workers.training.trainer import DPOTrainerCore
    from workers.types import AdapterRef

    torch.set_num_threads(torch.get_num_threads())
    model_path = str(ensure_default_model())
    triples = make_pairs(args.pairs)
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seed = 11

    with tempfile.TemporaryDirectory() as tmp:
        # A shared initial adapter with random A and B, so the policy differs from the reference (the base model)
        # from the first step: the step-1 loss is not log 2 by construction and checks the loss itself.
        init = Path(tmp) / "init"
        torch.manual_seed(seed)
        get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=False),
                       LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(modules),
                                  init_lora_weights=False, task_type="CAUSAL_LM")).save_pretrained(init)

        # Ours.
        cfg = load_config(None, [f"lora.target_modules=[{', '.join(modules)}]", f"dpo.learning_rate={args.lr}",
                                 f"dpo.epochs={args.steps}", f"dpo.micro_batch_pairs={args.pairs}"])
        spec = train_spec(cfg, model_path, seed, AdapterRef("init", str(init)), "", "")
        core = DPOTrainerCore(spec)
        ours_init = {n: p.detach().clone() for n, p in core.model.named_parameters() if p.requires_grad}
        rows = [{**{n: None for n in artifacts.PAIRS.names}, "prompt": q, "chosen": c, "rejected": r, "weight": 1.0,
                 "kept": True, "chosen_finish_reason": "stop", "rejected_finish_reason": "stop"} for q, c, r in triples]
        examples = core.encode(pa.Table.from_pylist(rows, schema=artifacts.PAIRS))
        direct = direct_step1_loss(core, examples)
        t0 = time.monotonic()
        ours = core.fit(examples)
        ours_s = time.monotonic() - t0
        del core

        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
        prompt_texts = [tok.decode(prompt_token_ids(tok, q)) for q, _, _ in triples]
        data = datasets.Dataset.from_list([{"prompt": pt, "chosen": c, "rejected": r}
                                           for pt, (_, c, r) in zip(prompt_texts, triples)])

        def trl_run(bf16: bool) -> dict:
            """TRL, from the same initial adapter and the same token ids; ``bf16``: its default bf16 autocast."""
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=False)
            model = PeftModel.from_pretrained(base, str(init), is_trainable=True)
            start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            with tempfile.TemporaryDirectory() as out:
                cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                                num_train_epochs=args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
                                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=seed,
                                max_length=None, dataloader_num_workers=0, optim="adamw_torch", bf16=bf16, fp16=False)
                # The reference is the base model, as ours (TRL's default for a loaded adapter is a copy of it).
                reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=False)
                trainer = DPOTrainer(model=model, ref_model=reference, args=cfg, train_dataset=data, processing_class=tok)
                same_ids = all(
                    list(row["prompt_ids"]) == prompt_token_ids(tok, q)
                    and list(row["chosen_ids"]) == response_token_ids(tok, c, "stop")
                    and list(row["rejected_ids"]) == response_token_ids(tok, r, "stop")
                    for row, (q, c, r) in zip(trainer.train_dataset, triples)
                )
                t0 = time.monotonic()
                trainer.train()
                seconds = time.monotonic() - t0
            return {"seconds": seconds, "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
                    "same_ids": same_ids,
                    "same_init": start.keys() == ours_init.keys() and all(torch.equal(start[n], ours_init[n]) for n in start)}

        trl = trl_run(bf16=False)
        trl_bf16 = trl_run(bf16=True)
    trl_s, trl_losses = trl["seconds"], trl["losses"]
    same_init, same_ids = trl["same_init"] and trl_bf16["same_init"], trl["same_ids"] and trl_bf16["same_ids"]

    our_losses = [s["loss"] for s in ours.steps]
    pairs_total = args.pairs * args.steps
    # Step 1 is the oracle check: same weights, same batch, so the same loss. Later steps follow two AdamW
    # trajectories (whose first update is about lr * sign(g) per element, so small gradient differences
    # move them apart); their gap is reported, not judged.
    agree = bool(our_losses and trl_losses) and abs(our_losses[0] - trl_losses[0]) <= LOSS_TOLERANCE
    ours_exact = abs(our_losses[0] - direct) <= LOSS_TOLERANCE
    gap = max(abs(a - b) for a, b in zip(our_losses, trl_losses))
    result = {
        "pairs": args.pairs, "steps": args.steps, "same_initial_adapter": same_init, "same_token_ids": same_ids,
        "ours": {"seconds": round(ours_s, 3), "pairs_per_s": round(pairs_total / ours_s, 3), "losses": our_losses},
        "trl": {"version": __import__("trl").__version__, "seconds": round(trl_s, 3),
                "pairs_per_s": round(pairs_total / trl_s, 3), "losses": trl_losses},
        "losses_agree": agree, "loss_tolerance": LOSS_TOLERANCE, "step1_loss_direct": round(direct, 5),
        "ours_step1_matches_direct": ours_exact, "trl_step1_minus_direct": round(trl_losses[0] - direct, 5), "step1_loss_minus_log2": round(our_losses[0] - math.log(2), 5),
        "max_loss_gap_all_steps": round(gap, 5),
        "ratio_ours_over_trl_pairs_per_s": round(trl_s / ours_s, 3), "goal": ">= 1.3",
        # TRL as it runs by default (bf16 autocast), against ours in float32: a speed reference, not the same math.
        "trl_default_bf16_autocast": {"seconds": round(trl_bf16["seconds"], 3),
                                      "pairs_per_s": round(pairs_total / trl_bf16["seconds"], 3),
                                      "losses": trl_bf16["losses"]},
        "ratio_ours_over_trl_bf16_pairs_per_s": round(trl_bf16["seconds"] / ours_s, 3),
    }
    path = write_result("trainer", result)
    print(table([["", "seconds", "pairs/s", "losses per step"],
                 ["ours", f"{ours_s:.2f}", f"{pairs_total / ours_s:.2f}", " ".join(f"{x:.4f}" for x in our_losses)],
                 ["TRL DPOTrainer", f"{trl_s:.2f}", f"{pairs_total / trl_s:.2f}", " ".join(f"{x:.4f}" for x in trl_losses)],
                 ["TRL, bf16 autocast", f"{trl_bf16['seconds']:.2f}", f"{pairs_total / trl_bf16['seconds']:.2f}",
                  " ".join(f"{x:.4f}" for x in trl_bf16["losses"])]]))
    print(f"ratio ours / TRL pairs/s: {result['ratio_ours_over_trl_pairs_per_s']:.2f} (goal >= 1.3; against TRL's default "
          f"bf16 autocast {result['ratio_ours_over_trl_bf16_pairs_per_s']:.2f}); step-1 losses agree "
          f"within {LOSS_TOLERANCE}: {agree} (ours {our_losses[0]:.5f}, TRL {trl_losses[0]:.5f}, computed directly "
          f"{direct:.5f}: ours matches: {ours_exact}); largest gap over all steps {gap:.4f}; same initial adapter: {same_init}; same token ids: {same_ids}  (wrote {path})")


if __name__ == "__main__":
    main()
