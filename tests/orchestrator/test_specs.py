"""The workers' specs are the config's values, derived in one place, with no defaults of their own."""

import dataclasses

import pytest

from orchestrator.config import load_config
from orchestrator.specs import engine_spec, make_loss, train_spec
from tests import ROOT
from workers.training.trainer import TrainSpec
from workers.types import AdapterRef, EngineSpec

CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("spec", [EngineSpec, TrainSpec])
def test_no_spec_field_has_a_default(spec):
    defaults = [f.name for f in dataclasses.fields(spec)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert defaults == [], f"{spec.__name__} has defaults of its own: {defaults}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_reaches_the_workers_unchanged(path):
    cfg = load_config(path)
    r = cfg.resources
    policy = AdapterRef("iter_001", "runs/x/iter_001/adapter", "abc")
    t = train_spec(cfg, "model", 7, policy, "pairs.parquet", "out")
    assert (t.target_modules, t.lora_rank, t.lora_alpha, t.lora_dropout) == (
        cfg.lora.target_modules, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
    assert (t.learning_rate, t.epochs, t.micro_batch_pairs, t.checkpoint_every, t.lr_schedule, t.warmup_steps) == (
        cfg.dpo.learning_rate, cfg.dpo.epochs, cfg.dpo.micro_batch_pairs, cfg.dpo.checkpoint_every,
        cfg.dpo.lr_schedule, cfg.dpo.warmup_steps)
    assert (t.strategy, t.gradient_checkpointing, t.torch_threads, t.reference) == (
        r.train_strategy, r.gradient_checkpointing, r.torch_threads, cfg.scoring.reference)
    assert (t.init_adapter, t.init_adapter_digest, t.seed, t.dtype) == (policy.path, "abc", 7, cfg.model.dtype)
    assert t.loss == make_loss(cfg)
    e = engine_spec(cfg, "model")
    assert (e.dtype, e.max_model_len, e.seed, e.kv_cache_gib, e.merge_adapters, e.threads) == (
        cfg.model.dtype, cfg.model.max_model_len, cfg.seed, r.kv_cache_gib, r.merge_adapters, r.engine_threads)
    assert e.max_lora_rank >= cfg.lora.rank and e.tensor_parallel_size == max(1, r.gpus_per_engine)


def test_the_embedded_default_trains_every_projection_and_serves_merged_on_cpu():
    cfg = load_config(ROOT / "jobs" / "configs" / "tiny-cpu.yaml")
    assert len(train_spec(cfg, "m", 0, None, "", "").target_modules) == 7
    assert engine_spec(cfg, "m").merge_adapters  # adapter_serving: auto is merged on CPU engines
