"""DPO training of a LoRA adapter, as a plain object and as a Ray Train job.

``DPOTrainerCore`` holds the model and does the math (tests use it
directly). ``run_training`` runs it on Ray Train's ``TorchTrainer``: one
process per worker, DDP over gloo (CPU) or NCCL (GPU). The reference model is
either the base model (the same weights with the adapter disabled) or the
previous iterate (the adapter training starts from, before its first step);
neither costs extra memory, and reference log-probs are computed once before
the first step. ``mc_dropout_logprobs`` is the MC-dropout scorer of the
uncertainty filter: the policy with dropout on its last hidden state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from workers.losses import DPO, PreferenceLoss
from workers.progress import Report, reporter
from workers.tokens import prompt_token_ids, response_token_ids
from workers.types import ScoreRequest

TRAIN_LOG = "train_log.json"


@dataclass(frozen=True)
class TrainSpec:
    """One training stage: where the data is, where the adapter goes, and the hyper-parameters."""

    model_path: str
    dtype: str
    pairs_path: str
    output_dir: str
    init_adapter: str | None = None
    trust_remote_code: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    loss: PreferenceLoss = DPO()
    # "base": reference = base model (adapter disabled); "previous": the
    # adapter as loaded from init_adapter, i.e. M(t-1) (the base at t=1).
    reference: str = "base"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 1
    micro_batch_pairs: int = 4
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    torch_threads: int = 0


@dataclass(frozen=True)
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float
    label_p: float = 1.0


@dataclass
class TrainResult:
    """What a training stage reports back: per-step logs and their summary."""

    steps: list[dict[str, float]] = field(default_factory=list)
    pairs: int = 0

    def summary(self) -> dict[str, Any]:
        """Loss, reward accuracy and margin averaged over the last epoch (and the first epoch's loss)."""
        if not self.steps:
            return {"train_pairs": self.pairs, "optimizer_steps": 0, "epochs": 0, "dpo_loss": None,
                    "dpo_loss_first": None, "reward_accuracy": None, "reward_margin": None}

        def epoch_mean(epoch: int, key: str) -> float:
            rows = [s for s in self.steps if s["epoch"] == epoch]
            return sum(s[key] * s["pairs"] for s in rows) / sum(s["pairs"] for s in rows)

        last = self.steps[-1]["epoch"]
        return {
            "train_pairs": self.pairs,
            "optimizer_steps": len(self.steps),
            "epochs": last + 1,
            "dpo_loss": epoch_mean(last, "loss"),
            "dpo_loss_first": epoch_mean(0, "loss"),
            "reward_accuracy": epoch_mean(last, "reward_accuracy"),
            "reward_margin": epoch_mean(last, "reward_margin"),
        }


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DPOTrainerCore:
    """A causal LM with a trainable LoRA adapter and the DPO step.

    Assumes ``spec.model_path`` is a local HF folder of a causal LM whose
    tokenizer has a chat template. If ``spec.init_adapter`` is given, training
    continues from that adapter (M(t) starts from M(t-1)); otherwise a fresh
    adapter (B = 0, so identical to the base) is created.
    """

    def __init__(self, spec: TrainSpec, device: torch.device | str = "cpu") -> None:
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.device = torch.device(device)
        torch.manual_seed(spec.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
        base = AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=_DTYPES[spec.dtype], trust_remote_code=spec.trust_remote_code
        )
        if spec.init_adapter:
            model = PeftModel.from_pretrained(base, spec.init_adapter, is_trainable=True)
        else:
            model = get_peft_model(
                base,
                LoraConfig(
                    r=spec.lora_rank,
                    lora_alpha=spec.lora_alpha,
                    lora_dropout=spec.lora_dropout,
                    target_modules=list(spec.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        self.model = model.to(self.device)
        self.loss_fn = spec.loss
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=spec.learning_rate,
            weight_decay=spec.weight_decay,
        )

    # --- data ---------------------------------------------------------------
    def encode(self, pairs: pa.Table) -> list[PairExample]:
        """Token ids of the kept pairs of a pairs table (same encoding as the engines)."""
        kept = pairs.filter(pc.equal(pairs["kept"], True))
        cols = ["prompt", "chosen", "rejected", "chosen_finish_reason", "rejected_finish_reason", "weight", "label_p"]
        rows = kept.select(cols).to_pylist()
        return [
            PairExample(
                prompt_ids=prompt_token_ids(self.tokenizer, r["prompt"]),
                chosen_ids=response_token_ids(self.tokenizer, r["chosen"], r["chosen_finish_reason"]),
                rejected_ids=response_token_ids(self.tokenizer, r["rejected"], r["rejected_finish_reason"]),
                weight=float(r["weight"]),
                label_p=1.0 if r["label_p"] is None else float(r["label_p"]),
            )
            for r in rows
        ]

    # --- math ---------------------------------------------------------------
    def sequence_logprobs(self, model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Summed log-prob of each response given its prompt, in one padded forward pass."""
        lengths = [len(p) + len(y) for p, y in seqs]
        width = max(lengths)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        # label_mask[b, j] marks that the token at j+1 is a response token.
        label_mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
        for b, (p, y) in enumerate(seqs):
            ids[b, : len(p) + len(y)] = torch.tensor(p + y)
            attn[b, : len(p) + len(y)] = 1
            label_mask[b, len(p) - 1 : len(p) + len(y) - 1] = True
        ids, attn, label_mask = ids.to(self.device), attn.to(self.device), label_mask.to(self.device)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        labels = ids[:, 1:]
        # Only response positions go through log_softmax: saves a (B, T, V) tensor.
        sel_logp = torch.log_softmax(logits[label_mask].float(), dim=-1)
        tok_logp = sel_logp.gather(-1, labels[label_mask].unsqueeze(-1)).squeeze(-1)
        owner = torch.arange(len(seqs), device=self.device).unsqueeze(1).expand_as(label_mask)[label_mask]
        return torch.zeros(len(seqs), device=self.device, dtype=tok_logp.dtype).index_add(0, owner, tok_logp)

    def pair_logprobs(self, model: torch.nn.Module, batch: list[PairExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probs; both halves go through one forward pass."""
        seqs = [(e.prompt_ids, e.chosen_ids) for e in batch] + [(e.prompt_ids, e.rejected_ids) for e in batch]
        lp = self.sequence_logprobs(model, seqs)
        return lp[: len(batch)], lp[len(batch) :]

    @torch.no_grad()
    def reference_logprobs(self, examples: list[PairExample]) -> torch.Tensor:
        """(n, 2) reference log-probs in eval mode: base model (adapter disabled) or the adapter as loaded."""
        out = []
        was_training = self.model.training
        self.model.eval()
        with self.model.disable_adapter() if self.spec.reference == "base" else contextlib.nullcontext():
            for i in range(0, len(examples), self.spec.micro_batch_pairs):
                c, r = self.pair_logprobs(self.model, examples[i : i + self.spec.micro_batch_pairs])
                out.append(torch.stack([c, r], dim=1))
        self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, 2), device=self.device)

    def fit(self, examples: list[PairExample], ddp_model: torch.nn.Module | None = None, rank: int = 0, world: int = 1,
            report: Report | None = None) -> TrainResult:
        """Run ``epochs`` of DPO over ``examples`` on this rank.

        Each optimizer step takes a global batch of
        ``micro_batch_pairs * grad_accum_steps * world`` pairs; rank r trains
        on every world-th pair of it. Every rank makes the same number of
        backward passes (short ranks pad with zero-weight pairs), and each
        micro-batch loss is scaled so that DDP's gradient average equals the
        gradient of the weighted mean loss over the whole global batch.
        ``report`` gets ``{"total": steps}`` first, then one message per step.
        """
        model = ddp_model if ddp_model is not None else self.model
        spec = self.spec
        result = TrainResult(pairs=len(examples))
        if not examples:
            return result
        ref = self.reference_logprobs(examples)
        self.model.train()
        per_step = spec.micro_batch_pairs * spec.grad_accum_steps * world
        if report is not None:
            report({"total": spec.epochs * math.ceil(len(examples) / per_step), "unit": "step"})
        rng = np.random.default_rng(spec.seed)
        step = 0
        for epoch in range(spec.epochs):
            order = rng.permutation(len(examples))
            for start in range(0, len(order), per_step):
                global_idx = order[start : start + per_step]
                weight_total = float(sum(examples[i].weight for i in global_idx))
                if weight_total <= 0:
                    if report is not None:
                        report({"n": 1, "skipped": "zero weight"})
                    continue  # nothing to learn from; every rank sees the same global batch
                mine = list(global_idx[rank::world])
                stats = torch.zeros(6, device=self.device, dtype=torch.float64)  # wloss, w, correct, margin, n, tokens
                for k in range(spec.grad_accum_steps):
                    idx = mine[k * spec.micro_batch_pairs : (k + 1) * spec.micro_batch_pairs]
                    real = len(idx)
                    if not idx:
                        idx = [int(global_idx[0])]  # zero-weight filler keeps DDP in step
                    batch = [examples[i] for i in idx]
                    w = torch.tensor([e.weight for e in batch], device=self.device) * (1.0 if real else 0.0)
                    label_p = torch.tensor([e.label_p for e in batch], device=self.device)
                    lp_c, lp_r = self.pair_logprobs(model, batch)
                    out = self.loss_fn(lp_c, lp_r, ref[idx, 0], ref[idx, 1], torch.ones_like(w), label_p)
                    loss = (out.per_pair * w).sum() * (world / weight_total)
                    loss.backward()
                    if real:
                        tokens = sum(len(e.prompt_ids) * 2 + len(e.chosen_ids) + len(e.rejected_ids) for e in batch)
                        stats += torch.tensor(
                            [float((out.per_pair.detach() * w).sum()), float(w.sum()),
                             float((out.margin[:real] > 0).sum()), float(out.margin[:real].sum()), real, tokens],
                            device=self.device, dtype=torch.float64,
                        )
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], spec.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    torch.distributed.all_reduce(stats)
                step += 1
                wl, wsum, correct, margin, n, tokens = stats.tolist()
                loss_val = wl / wsum if wsum > 0 else math.nan
                if not math.isfinite(loss_val):
                    raise FloatingPointError(f"DPO loss is {loss_val} at optimizer step {step} (epoch {epoch})")
                result.steps.append({
                    "step": step, "epoch": epoch, "loss": loss_val,
                    "reward_accuracy": correct / n, "reward_margin": margin / n, "pairs": int(n), "tokens": int(tokens),
                })
                if report is not None:
                    report({"n": 1, "tokens": int(tokens), "loss": loss_val})
        return result

    def save(self, output_dir: str | Path, result: TrainResult) -> None:
        """Write the adapter (safetensors) and the step log into ``output_dir``."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        (out / TRAIN_LOG).write_text(json.dumps(asdict(result), indent=1))


def mc_dropout_logprobs(spec: TrainSpec, requests: list[ScoreRequest], passes: int, p: float,
                        progress: Any = None) -> list[list[float]]:
    """Summed response log-probs of each request under ``passes`` MC-dropout passes of the policy.

    The policy is the base model with ``spec.init_adapter`` (the base alone
    when None). Llama-family models have no dropout layers of their own, so
    dropout with rate ``p`` is applied to the last hidden state (the LM
    head's input); pass t is seeded with ``spec.seed + t``, so results are
    reproducible. Everything else runs in eval mode. ``progress``: a queue
    of ``workers.progress`` (one message per scored chunk).
    """
    torch.set_num_threads(spec.torch_threads or os.cpu_count() or 1)
    core = DPOTrainerCore(spec)
    core.model.eval()
    head = core.model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _m, args: (torch.nn.functional.dropout(args[0], p, training=True),))
    seqs = [
        (prompt_token_ids(core.tokenizer, r.user_message), response_token_ids(core.tokenizer, r.response, r.finish_reason))
        for r in requests
    ]
    out: list[list[float]] = [[] for _ in seqs]
    chunk = max(1, 2 * spec.micro_batch_pairs)
    report = reporter(progress)
    report({"total": passes * len(seqs), "unit": "seq"})
    try:
        with torch.no_grad():
            for t in range(passes):
                torch.manual_seed(spec.seed + t)
                for i in range(0, len(seqs), chunk):
                    for k, v in enumerate(core.sequence_logprobs(core.model, seqs[i : i + chunk]).tolist()):
                        out[i + k].append(float(v))
                    part = seqs[i : i + chunk]
                    report({"n": len(part), "tokens": sum(len(a) + len(b) for a, b in part), "pass": t + 1})
    finally:
        hook.remove()
    return out


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: every rank trains; rank 0 writes the adapter."""
    import ray.train
    import ray.train.torch

    spec: TrainSpec = config["spec"]
    torch.set_num_threads(spec.torch_threads or os.cpu_count() or 1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    core = DPOTrainerCore(spec, ray.train.torch.get_device())
    examples = core.encode(pq.read_table(spec.pairs_path))
    ddp = ray.train.torch.prepare_model(core.model, move_to_device=False) if world > 1 else None
    result = core.fit(examples, ddp, rank, world, reporter(config.get("progress")) if rank == 0 else None)
    if rank == 0:
        core.save(spec.output_dir, result)


def run_training(spec: TrainSpec, workers: int, cpus_per_worker: float, gpus_per_worker: int, storage_path: str,
                 progress: Any = None) -> TrainResult:
    """Train on Ray Train (DDP over ``workers`` ranks); returns the step log written by rank 0.

    ``progress``: a queue of ``workers.progress`` that rank 0 reports its steps on.
    Raises ray.train's TrainingFailedError when a worker fails.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"spec": spec, "progress": progress},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(storage_path=storage_path, name="dpo"),
    )
    trainer.fit()
    log = json.loads((Path(spec.output_dir) / TRAIN_LOG).read_text())
    return TrainResult(steps=log["steps"], pairs=log["pairs"])
