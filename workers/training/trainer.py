"""DPO training of a LoRA adapter: the model, its LoRA (or FSDP) set-up, the optimizer steps, checkpoint I/O.

``DPOTrainerCore`` holds the model and does the math (tests use it
directly); ``workers.training.launcher`` runs it on Ray Train. The
reference model is either the base model (the same weights with the adapter
disabled) or the previous iterate (the adapter training starts from, before
its first step); neither costs extra memory, and reference log-probs are
computed once before the first step.

Every ``checkpoint_every`` optimizer steps the trainer reports a Ray Train
checkpoint: the trainable weights, the optimizer and scheduler states, the
torch and numpy RNG states, the position in the epoch's pair order, the step
log and the reference log-probs. A training stage that is started again with
the same storage path (after its driver or a worker died) resumes from the
latest one and continues exactly as the uninterrupted run would have.
Optimizer and scheduler states are read back with
``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load_file, save_file

from workers import faults
from workers.handover import GpuProcess
from workers.progress import Report
from workers.storage import local_copy, publish
from workers.tokens import prompt_token_ids, response_token_ids
from workers.training import canaries
from workers.training.logprobs import pair_logprobs, sequence_logprobs
from workers.training.losses import PreferenceLoss
from workers.types import ScoreRequest

if TYPE_CHECKING:
    from workers.training.checkpoints import Checkpoints

TRAIN_LOG = "train_log.json"


@dataclass(frozen=True)
class TrainSpec:
    """One training stage: where the data is, where the adapter goes, and the hyper-parameters.

    No field has a default: ``orchestrator.specs.train_spec`` derives every one from the run config.
    """

    model_path: str
    dtype: str
    pairs_path: str
    output_dir: str
    init_adapter: str | None
    init_adapter_digest: str  # its committed sha256: a remote adapter trained again is downloaded anew
    trust_remote_code: bool
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]
    loss: PreferenceLoss
    # "base": reference = base model (adapter disabled); "previous": the
    # adapter as loaded from init_adapter, i.e. M(t-1) (the base at t=1).
    reference: str
    learning_rate: float
    weight_decay: float
    epochs: int
    micro_batch_pairs: int
    grad_accum_steps: int
    max_grad_norm: float
    lr_schedule: str  # "constant", "linear" or "cosine" decay to 0 after warmup
    warmup_steps: int
    checkpoint_every: int  # optimizer steps between Ray Train checkpoints; 0 = none
    strategy: str  # with several workers: "ddp" (replicas) or "fsdp" (parameters sharded)
    gradient_checkpointing: bool  # recompute each layer's activations in backward instead of keeping them
    seed: int
    torch_threads: int


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
    resumed_from_step: int = 0  # the checkpoint this stage's last attempt started from (0: none)
    # The train worker processes (``workers.handover``): the engines wake once they have exited.
    processes: tuple[GpuProcess, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Loss, reward accuracy and margin averaged over the last epoch (and the first epoch's loss)."""
        if not self.steps:
            return {"train_pairs": self.pairs, "optimizer_steps": 0, "epochs": 0, "dpo_loss": None,
                    "dpo_loss_first": None, "reward_accuracy": None, "reward_margin": None, "resumed_from_step": 0}

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
            "resumed_from_step": self.resumed_from_step,
        }


class DPOTrainerCore:
    """A causal LM with a trainable LoRA adapter and the DPO step.

    Assumes ``spec.model_path`` is a local HF folder of a causal LM whose
    tokenizer has a chat template. If ``spec.init_adapter`` is given, training
    continues from that adapter (M(t) starts from M(t-1)); otherwise a fresh
    adapter (B = 0, so identical to the base) is created.
    """

    def __init__(self, spec: TrainSpec, device: torch.device | str = "cpu", move: bool = True) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.device = torch.device(device)
        torch.manual_seed(spec.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        base = AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code
        )
        if spec.init_adapter:
            model = PeftModel.from_pretrained(base, local_copy(spec.init_adapter, spec.init_adapter_digest),
                                              is_trainable=True)
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
        if spec.gradient_checkpointing:
            # Non-reentrant: gradients reach the LoRA weights although the frozen embeddings' output needs none.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        # ``move=False`` (FSDP): the weights stay in host memory until ``shard`` moves each rank's shard.
        self.model = model.to(self.device) if move else model
        self.loss_fn = spec.loss
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=spec.learning_rate,
            weight_decay=spec.weight_decay,
        )
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.sharded = False

    def make_scheduler(self, total_steps: int) -> None:
        """The learning-rate schedule over ``total_steps`` optimizer steps: transformers' linear warmup (from 0 at
        the first step), then constant, or linear / cosine decay to 0."""
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(self.spec.lr_schedule, self.spec.lr_schedule)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=self.spec.warmup_steps,
                                       num_training_steps=total_steps)

    # --- checkpoints ----------------------------------------------------------
    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # --- sharding ------------------------------------------------------------
    def shard(self) -> None:
        """FSDP: shard every decoder layer, then the rest, over the process group (collective; every rank calls it).

        The optimizer is rebuilt over the sharded parameters.
        """
        from torch.distributed.fsdp import fully_shard

        layer_classes = set(getattr(self.model.get_base_model(), "_no_split_modules", None) or [])
        if not layer_classes:
            raise ValueError(f"{self.spec.model_path}: the model names no decoder layer class (_no_split_modules) to shard")
        from torch.distributed.device_mesh import init_device_mesh

        # Built in host memory (``move=False``): each fully_shard call moves its module's whole parameters to the
        # device, then keeps only this rank's shard of them, so a GPU holds the shards done so far plus one whole
        # module at a time (a decoder layer; at the root, the embeddings and LM head), never the whole model.
        mesh = init_device_mesh(self.device.type, (torch.distributed.get_world_size(),))
        for module in self.model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)  # the rest, buffers included, moves to the device here
        self.sharded = True
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=self.spec.learning_rate, weight_decay=self.spec.weight_decay)

    # --- replicas -------------------------------------------------------------
    def check_replicas(self) -> None:
        """Every rank holds the same weights, proven by comparing fingerprints of every parameter and buffer (a
        collective; every rank calls it, before DDP or FSDP wraps the model): DDP is built without its start-up
        broadcast (every rank loads the same weights, and broadcasting an 8B model's 16 GB of frozen weights from
        rank 0 is slow across nodes), and FSDP shards each rank's own copy. RuntimeError naming the first
        parameter that differs and the ranks."""
        import torch.distributed as dist

        names, mine = fingerprint(self.model, self.device)
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        compare_fingerprints(names, [g.cpu() for g in gathered])

    def full_trainable(self) -> dict[str, torch.Tensor]:
        """The trainable weights as whole CPU tensors (a collective when sharded: every rank calls it)."""
        return {n: (p.full_tensor() if self.sharded else p).detach().cpu().contiguous() for n, p in self._trainable().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_checkpoint(self, directory: Path | None, state: TrainState, reference: torch.Tensor) -> None:
        """Everything ``load_checkpoint`` needs to continue exactly where training is now.

        Every rank calls it (gathering sharded state is collective); only a rank
        given a ``directory`` writes.
        """
        assert self.scheduler is not None
        weights, optimizer = self.full_trainable(), self._optimizer_state()
        if directory is None:
            return
        save_file(weights, directory / "trainable.safetensors")
        torch.save(optimizer, directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        rng = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_file({**rng, "reference_logps": reference.detach().cpu().contiguous()}, directory / "tensors.safetensors")
        (directory / "train_state.json").write_text(json.dumps(asdict(state)))

    def load_checkpoint(self, directory: Path) -> tuple[TrainState, torch.Tensor]:
        """Restore weights, optimizer, scheduler and RNG from ``directory``; returns the loop state and reference log-probs.

        Raises ValueError when the checkpoint's parameters do not match this model's.
        """
        assert self.scheduler is not None
        weights = load_file(directory / "trainable.safetensors")
        params = self._trainable()
        if weights.keys() != params.keys():
            raise ValueError(f"checkpoint {directory} holds other parameters than the model trains "
                             f"({sorted(weights.keys() ^ params.keys())[:3]} ...)")
        optimizer = torch.load(directory / "optimizer.pt", weights_only=True, map_location=self.device)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=optimizer,
                           options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(weights[name].to(p.device))
            self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        tensors = load_file(directory / "tensors.safetensors")
        torch.set_rng_state(tensors["torch_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        state = TrainState(**json.loads((directory / "train_state.json").read_text()))
        return state, tensors["reference_logps"].to(self.device)

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
        """Summed log-prob of each response given its prompt, in one packed forward pass (``workers.training.logprobs``)."""
        return sequence_logprobs(model, seqs, self.device, self.pad_id)

    def pair_logprobs(self, model: torch.nn.Module, batch: list[PairExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probs in one forward pass that computes each prompt once (``workers.training.logprobs``)."""
        return pair_logprobs(model, [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in batch], self.device, self.pad_id)

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
            report: Report | None = None, checkpoints: Checkpoints | None = None) -> TrainResult:
        """Run ``epochs`` of DPO over ``examples`` on this rank.

        Each optimizer step takes a global batch of
        ``micro_batch_pairs * grad_accum_steps * world`` pairs; rank r trains
        on every world-th pair of it. Every rank makes the same number of
        backward passes (short ranks pad with zero-weight pairs), and each
        micro-batch loss is scaled so that DDP's gradient average equals the
        gradient of the weighted mean loss over the whole global batch.
        ``report`` gets ``{"total": steps}`` first, then one message per step.
        ``checkpoints``: where training resumes from and saves to (every rank
        calls it at the same steps).
        """
        model = ddp_model if ddp_model is not None else self.model
        spec = self.spec
        result = TrainResult(pairs=len(examples))
        if not examples:
            return result
        per_step = spec.micro_batch_pairs * spec.grad_accum_steps * world
        batches = math.ceil(len(examples) / per_step)
        # Weights are absolute: a step's loss is sum(weight * loss) over its pair count, not over its own weight sum
        # or the stage's mean weight, so a pair of weight 0.5 pushes half as hard as a pair of weight 1 in any stage.
        self.make_scheduler(spec.epochs * batches)
        resumed = checkpoints.load(self) if checkpoints is not None else None
        if resumed is not None:
            state, ref = resumed
            result.steps, result.resumed_from_step = list(state.steps), state.step
        else:
            ref = self.reference_logprobs(examples)
            state = TrainState(np_rng=np.random.default_rng(spec.seed).bit_generator.state)
        if report is not None:
            report({"total": spec.epochs * batches, "unit": "step", "resumed_from_step": state.step})
            if state.step:
                report({"n": state.step})
        self.model.train()
        rng = np.random.default_rng()
        rng.bit_generator.state = state.np_rng
        step = state.step
        for epoch in range(state.epoch, spec.epochs):
            if epoch == state.epoch and state.order:
                order, first = np.asarray(state.order), state.next_batch  # resumed inside this epoch
            else:
                order, first = rng.permutation(len(examples)), 0
            for b in range(first, batches):
                global_idx = order[b * per_step : (b + 1) * per_step]
                weight_total = float(sum(examples[i].weight for i in global_idx))
                if weight_total > 0:  # else nothing to learn from; every rank sees the same global batch
                    step += 1
                    result.steps.append(self._step(model, examples, ref, global_idx, len(global_idx),
                                                   rank, world, step, epoch))
                    if report is not None:
                        last = result.steps[-1]
                        report({"n": 1, "tokens": last["tokens"], "loss": last["loss"]})
                elif report is not None:
                    report({"n": 1, "skipped": "zero weight"})
                if checkpoints is not None and checkpoints.every and weight_total > 0 and step % checkpoints.every == 0:
                    checkpoints.save(self, TrainState(step, epoch, b + 1, order.tolist(), rng.bit_generator.state,
                                                      result.steps), ref)
        return result

    def accumulate(self, model: torch.nn.Module, examples: list[PairExample], ref: torch.Tensor, idx: list[int],
                   scale: float, real: bool = True, nan: bool = False) -> torch.Tensor:
        """Forward and backward of one micro-batch: gradients of sum(weight * loss) * ``scale`` are added to the
        trainable parameters. Returns its statistics [weighted loss, weight, right, margin, pairs, tokens].

        ``real``: False for a zero-weight filler that only keeps DDP ranks in step.
        """
        batch = [examples[i] for i in idx]
        w = torch.tensor([e.weight for e in batch], device=self.device) * (1.0 if real else 0.0)
        label_p = torch.tensor([e.label_p for e in batch], device=self.device)
        lengths = tuple(torch.tensor([len(getattr(e, f"{side}_ids")) for e in batch], device=self.device)
                        for side in ("chosen", "rejected"))
        lp_c, lp_r = self.pair_logprobs(model, batch)
        if nan:
            lp_c = lp_c * float("nan")
        out = self.loss_fn(lp_c, lp_r, ref[idx, 0], ref[idx, 1], torch.ones_like(w), label_p, lengths)
        ((out.per_pair * w).sum() * scale).backward()
        if not real:
            return torch.zeros(6, device=self.device, dtype=torch.float64)
        tokens = sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in batch)
        return torch.tensor([float((out.per_pair.detach() * w).sum()), float(w.sum()), float((out.margin > 0).sum()),
                             float(out.margin.sum()), len(batch), tokens], device=self.device, dtype=torch.float64)

    def _step(self, model: torch.nn.Module, examples: list[PairExample], ref: torch.Tensor, global_idx: np.ndarray,
              normaliser: float, rank: int, world: int, step: int, epoch: int) -> dict[str, Any]:
        """One optimizer step over a global batch; this rank trains on every world-th pair of it.

        ``normaliser``: the step's loss is sum(weight * loss) / normaliser over the global batch.
        """
        spec = self.spec
        mine = list(global_idx[rank::world])
        stats = torch.zeros(6, device=self.device, dtype=torch.float64)  # wloss, w, correct, margin, n, tokens
        for k in range(spec.grad_accum_steps):
            idx = mine[k * spec.micro_batch_pairs : (k + 1) * spec.micro_batch_pairs]
            # An empty micro-batch becomes a zero-weight filler that keeps DDP in step.
            stats += self.accumulate(model, examples, ref, idx or [int(global_idx[0])], world / normaliser,
                                     real=bool(idx), nan=faults.nan_at(step))
        if world > 1:
            torch.distributed.all_reduce(stats)
        wl, wsum, correct, margin, n, tokens = stats.tolist()
        loss_val = wl / wsum if wsum > 0 else math.nan
        # Checked before the update: a non-finite step never reaches the weights, and the last good adapter stays.
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"DPO loss is {loss_val} at optimizer step {step} (epoch {epoch}); no update was applied")
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], spec.max_grad_norm)
        if not math.isfinite(float(norm)):
            raise FloatingPointError(f"gradient norm is {float(norm)} at optimizer step {step} (epoch {epoch}); "
                                     "no update was applied")
        self.optimizer.step()
        assert self.scheduler is not None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": step, "epoch": epoch, "loss": loss_val, "reward_accuracy": correct / n,
                "reward_margin": margin / n, "pairs": int(n), "tokens": int(tokens)}

    @torch.no_grad()
    def canary_logprobs(self, requests: list[ScoreRequest]) -> tuple[list[float], list[float], list[int]]:
        """(log-probs under the adapter, under the base model, response tokens) of the canaries, in eval mode.

        Every rank calls it (a sharded model's forward is collective).
        """
        seqs = [(prompt_token_ids(self.tokenizer, r.user_message), response_token_ids(self.tokenizer, r.response,
                                                                                     r.finish_reason)) for r in requests]
        was_training = self.model.training
        self.model.eval()
        adapter = self.sequence_logprobs(self.model, seqs).tolist()
        with self.model.disable_adapter():
            base = self.sequence_logprobs(self.model, seqs).tolist()
        self.model.train(was_training)
        return [float(v) for v in adapter], [float(v) for v in base], [len(y) for _, y in seqs]

    def save(self, output_dir: str | Path, result: TrainResult, weights: dict[str, torch.Tensor] | None = None,
             canary: tuple[list[ScoreRequest], tuple[list[float], list[float], list[int]]] | None = None) -> None:
        """Write the adapter (safetensors), the step log and its canaries into ``output_dir`` (a path or a URI).

        ``weights``: the trainable weights gathered with ``full_trainable`` (needed when sharded).
        ``canary``: the canary requests and their ``canary_logprobs`` (computed here when None and not sharded).
        """
        if self.sharded and (weights is None or canary is None):
            raise ValueError("a sharded model is saved from the weights and canaries every rank computed")
        if canary is None:
            requests = list(canaries.FIXED)
            canary = requests, self.canary_logprobs(requests)

        def build(out: Path) -> None:
            self.model.save_pretrained(out, safe_serialization=True, state_dict=weights)
            _sort_set_fields(out / "adapter_config.json")
            (out / TRAIN_LOG).write_text(json.dumps(asdict(result), indent=1))
            canaries.write(out, self.spec.dtype, canary[0], *canary[1])

        publish(build, output_dir)


def _sort_set_fields(config: Path) -> None:
    """PEFT keeps ``target_modules`` (and its kin) as sets and writes them in the set's order, which depends on the
    process's string-hash seed: the same adapter written twice would differ in its config's bytes. Written sorted."""
    data = json.loads(config.read_text())
    for key in ("target_modules", "modules_to_save", "exclude_modules", "trainable_token_indices"):
        if isinstance(data.get(key), list) and all(isinstance(v, str) for v in data[key]):
            data[key] = sorted(data[key])
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass
class TrainState:
    """Where a training stage is, besides weights, optimizer, scheduler and RNG (saved in every checkpoint)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    next_batch: int = 0  # index of the next global batch in ``order``
    order: list[int] = field(default_factory=list)  # this epoch's pair order
    np_rng: dict[str, Any] = field(default_factory=dict)  # numpy bit generator state after drawing ``order``
    steps: list[dict[str, Any]] = field(default_factory=list)  # the step log so far


FINGERPRINT_CHUNK = 1 << 24  # elements per step: 128 MB of float64 at a time on the device


def fingerprint(model: torch.nn.Module, device: torch.device | str = "cpu") -> tuple[list[str], torch.Tensor]:
    """Every parameter's and buffer's (sum, sum of squares, position-weighted sum) in float64, computed on ``device``
    a chunk at a time (weights still in host memory are moved a chunk at a time): weights that differ anywhere
    (another file, another initialisation, a permutation) give other numbers."""
    names, rows = [], []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        x = t.detach().reshape(-1)
        acc = torch.zeros(3, dtype=torch.float64, device=device)
        for i in range(0, x.numel(), FINGERPRINT_CHUNK):
            c = x[i : i + FINGERPRINT_CHUNK].to(device).double()
            w = torch.arange(i, i + c.numel(), device=device, dtype=torch.float64).remainder_(9973).add_(1)
            acc += torch.stack([c.sum(), c.square().sum(), c.mul(w).sum()])
        names.append(name)
        rows.append(acc)
    return names, torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64, device=device)


def compare_fingerprints(names: list[str], by_rank: list[torch.Tensor], rtol: float = 1e-9) -> None:
    """RuntimeError naming the first tensor whose fingerprint differs between rank 0 and another rank."""
    ref = by_rank[0]
    for rank, other in enumerate(by_rank[1:], start=1):
        if other.shape != ref.shape:
            raise RuntimeError(f"train rank {rank} holds {other.shape[0]} weight tensors, rank 0 {ref.shape[0]}: "
                               "the ranks loaded different models")
        differs = ~torch.isclose(other, ref, rtol=rtol, atol=0.0).all(dim=1)
        if differs.any():
            i = int(differs.nonzero()[0])
            raise RuntimeError(f"train ranks 0 and {rank} hold different weights ({names[i]}, and "
                               f"{int(differs.sum()) - 1} more): they must load the same model and adapter")
