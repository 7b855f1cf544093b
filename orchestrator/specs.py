"""What the workers are given: engine and training specs, derived from the run config and nothing else.

The workers' specs (``workers.types.EngineSpec``, ``workers.training.trainer.TrainSpec``) have no defaults of
their own: every value comes from here. A test or benchmark that builds its spec here serves and trains what a
run with the same config would (the same LoRA target modules, checkpoint interval, adapter serving).
"""

from __future__ import annotations

from orchestrator.config import RunConfig
from orchestrator.resources.plan import engine_memory_utilization
from workers.engines.limits import lora_slot_rank
from workers.training.losses import CDPO, CREAM, DPO, IPO, RDPO, PreferenceLoss, SoftPreference
from workers.training.trainer import TrainSpec
from workers.types import AdapterRef, EngineSpec


def make_loss(cfg: RunConfig) -> PreferenceLoss:
    """The configured member of the DPO loss family."""
    d = cfg.dpo
    losses: dict[str, PreferenceLoss] = {
        "dpo": DPO(d.beta), "cdpo": CDPO(d.beta, d.epsilon), "rdpo": RDPO(d.beta, d.epsilon),
        "ipo": IPO(d.beta, length_normalized=True), "ipo_sum": IPO(d.beta), "soft": SoftPreference(d.beta),
        "cream": CREAM(d.beta),
    }
    return losses[d.loss]


def engine_spec(cfg: RunConfig, model_path: str) -> EngineSpec:
    """Every engine of a run: the base model at ``model_path`` and the adapters of rank ``lora.rank``."""
    r = cfg.resources
    return EngineSpec(
        model_path=str(model_path),
        dtype=cfg.model.dtype,
        max_model_len=cfg.model.max_model_len,
        max_lora_rank=lora_slot_rank(cfg.lora.rank),
        seed=cfg.seed,
        kv_cache_gib=r.kv_cache_gib,
        tensor_parallel_size=max(1, r.gpus_per_engine),
        max_loras=2,  # M(t-1) judges while M(t-2) re-judges for consistency: two adapters at once
        trust_remote_code=cfg.model.trust_remote_code,
        gpu_memory_utilization=engine_memory_utilization(cfg),
        enable_sleep_mode=r.colocate and r.gpus_per_engine > 0,
        enable_prefix_caching=True,  # judge prompts share the rubric's KV cache
        log_stats=False,
        engine_core_process=False,
        merge_adapters=r.merge_adapters,
        threads=r.engine_threads,
    )


def train_spec(cfg: RunConfig, model_path: str, seed: int, policy: AdapterRef | None, pairs_path: str,
               output_dir: str) -> TrainSpec:
    """One training stage (or MC-dropout pass) continuing from ``policy`` (None: the base model)."""
    r = cfg.resources
    return TrainSpec(
        model_path=str(model_path), dtype=cfg.model.dtype, pairs_path=pairs_path, output_dir=output_dir,
        init_adapter=policy.path if policy else None, init_adapter_digest=policy.digest if policy else "",
        trust_remote_code=cfg.model.trust_remote_code, lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules, loss=make_loss(cfg),
        reference=cfg.scoring.reference, learning_rate=cfg.dpo.learning_rate, weight_decay=cfg.dpo.weight_decay,
        epochs=cfg.dpo.epochs, micro_batch_pairs=cfg.dpo.micro_batch_pairs, grad_accum_steps=cfg.dpo.grad_accum_steps,
        max_grad_norm=cfg.dpo.max_grad_norm, lr_schedule=cfg.dpo.lr_schedule, warmup_steps=cfg.dpo.warmup_steps,
        checkpoint_every=cfg.dpo.checkpoint_every, strategy=r.train_strategy,
        gradient_checkpointing=r.gradient_checkpointing, seed=seed, torch_threads=r.torch_threads,
    )
