"""The stages of one iteration, each a function of the engines (``orchestrator.context.Engines``), the config and its
input tables, returning its table; and what each stage's summary in state.json holds.

    generate : M(t-1) samples N responses per prompt        -> generations
    judge    : M(t-1) grades every response K times          -> judgments
               (and M(t-2) re-grades them, for consistency)
    score    : judge aggregates, log-probs under policy,
               reference and previous model, correctness     -> rewards
    train    : DPO-family loss on the kept pairs             -> M(t)'s adapter

Selection is ``orchestrator.rewards.selection.select_iteration``; evaluation ``orchestrator.evaluation.stage``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.config import RunConfig
from orchestrator.context import Context, Engines
from orchestrator.evaluation import stats
from orchestrator.evaluation.answers import grade
from orchestrator.evaluation.labels import (
    agreement_rate,
    consistency_summary,
    judge_agreement,
    judge_calibration,
    label_quality,
)
from orchestrator.reporting.runlog import RemoteProgress
from orchestrator.rewards.judge import (
    aggregate,
    constrained_regex,
    expected_score,
    judge_message,
    parse_score,
    score_choice,
)
from orchestrator.run import artifacts
from orchestrator.run.roles import Models, model_name
from orchestrator.specs import train_spec
from workers import faults
from workers.handover import GpuProcess
from workers.types import AdapterRef, CompletionRequest, SamplingSpec, ScoreRequest

LOG = logging.getLogger(__name__)


def derive_seed(*parts: object) -> int:
    """A request seed from the run seed and the request's identity (stable across runs and resumes)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


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
    each current verdict also gets its score distribution from one extra
    single-token pass of the same judge (the previous judge's verdicts are
    read for their scores alone: nothing reads their distributions, and the
    pass would cost as much as the current judge's).
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
        requests = [CompletionRequest(judge_message(r["prompt"], r["response"], j.rubric_template), s)
                    for (r, _), s in zip(keys, seeds)]
        outs = engines.complete(requests, sampling, adapter, desc=f"judge ({role})")
        scores = [parse_score(o.text, o.finish_reason, (r["prompt"], r["response"])) for (r, _), o in zip(keys, outs)]
        probs: list[list[float] | None] = [None] * len(keys)
        if j.expected_score and role == "current":
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


def score(engines: Engines, cfg: RunConfig, t: int, generations: pa.Table, judgments: pa.Table,
          answers: dict[str, tuple[str | None, str | None]], models: Models) -> pa.Table:
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
    mc, mc_ref = _mc_dropout(engines, cfg, t, requests, models)
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


def _mc_dropout(engines: Engines, cfg: RunConfig, t: int, requests: list[ScoreRequest],
                models: Models) -> tuple[list[list[float] | None], list[float | None]]:
    """MC-dropout passes of the policy and the reference's log-probs by the same code, per response.

    Only where the policy differs from the reference: while they are the same
    model (iteration 1) every implicit margin is 0 and the passes would
    measure nothing but dropout noise, so none are run (None).
    """
    if cfg.selection.mc_dropout.passes == 0 or models.policy is None or models.policy == models.reference:
        return [None] * len(requests), [None] * len(requests)
    passes, ref = engines.mc_dropout(requests, models.policy, models.reference, derive_seed(cfg.seed, "mc_dropout", t))
    return list(passes), list(ref)


def train(ctx: Context, key: str, t: int, pairs: str, policy: AdapterRef | None,
          staged: str) -> tuple[dict[str, Any], tuple[GpuProcess, ...]]:
    """The configured loss on the kept pairs, continuing from M(t-1)'s adapter; writes M(t)'s adapter into ``staged``.
    Returns its summary and the train workers' processes (the hand-over waits for them).

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
            ctx.cfg.dpo.micro_batch_pairs * ctx.cfg.dpo.grad_accum_steps * ctx.cfg.resources.train_workers}, result.processes


# --- stage summaries (state.json) ---------------------------------------------------------------------------------


def _tokens(table: pa.Table) -> int:
    return int(pc.sum(table["num_tokens"]).as_py() or 0)


def generation_summary(table: pa.Table) -> dict[str, Any]:
    return {"responses": table.num_rows, "tokens": _tokens(table)}


def judge_summary(table: pa.Table) -> dict[str, Any]:
    n = table.num_rows
    failures = table["score"].null_count
    previous = table.filter(pc.equal(table["judge_model"], "previous")).num_rows
    return {"tokens": _tokens(table), "judge_samples": n, "previous_judge_samples": previous,
            "parse_failures": failures, "judge_parse_rate": stats.proportion(n - failures, n).to_json(),
            "expected_vs_sampled": judge_agreement(table)}


def score_summary(table: pa.Table, models: Models, generations: pa.Table) -> dict[str, Any]:
    rules = Counter(r for r in table["grade_rule"].to_pylist() if r is not None)
    return {"models": models.describe(), "grade_rules": dict(sorted(rules.items())),
            **judge_calibration(table, generations)}


def pairs_summary(table: pa.Table, cfg: RunConfig, t: int) -> dict[str, Any]:
    drops = Counter(r for r in table["drop_reason"].to_pylist() if r is not None)
    c = cfg.selection.consistency
    why = ("no previous model at iteration 1" if t == 1 else
           "no previous judge: judge.previous_judge is off" if c.source == "judge" and not cfg.judge.previous_judge else
           "undefined on every prompt (a constant ranking, or fewer than 2 comparable responses)")
    return {"pairs_built": table.num_rows, "pairs_kept": int(pc.sum(table["kept"]).as_py() or 0),
            "drops": dict(sorted(drops.items())), **consistency_summary(table, why), **agreement_rate(table),
            "label_quality": label_quality(table)}
