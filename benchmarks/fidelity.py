"""Label-noise simulator: does each trust filter do what its paper claims, where the truth is known?

``python -m benchmarks.fidelity [--prompts N] [--seed S]`` builds a synthetic
iteration (t >= 2: a previous model and a policy that differs from its
reference) with known truth, runs the project's own selection
(``orchestrator.rewards.selection.select`` with each shipped recipe's config) and
losses (``workers.training.losses``) on it, and prints, per world and recipe:
pairs kept, kept-label precision with its 95% interval over prompts, the
lift over a random drop of the same size from the same candidates with its
interval, the verdict, the verdict of each filter on its own, and how often
the loss's gradient pushes toward the truly better response. It writes
``benchmarks/results/fidelity.json``. Minutes on a CPU, no model.

The world. Each prompt has 4 responses of latent quality q ~ N(0, 1), half
of whose variance is the prompt's (its difficulty); a response is correct
when q > 0.25 (the truth). Each has a length (tokens), independent of q,
and a confusability u ~ Exp(1) times the prompt's own difficulty to judge
(log-normal): how hard it is to judge. Signals, built as the engines'
tables (the same Arrow schemas):

- the judge's K verdicts: round(2.5 + 0.8 q + bias + noise), clipped to
  0..5, and a score distribution around each verdict's noisy mean (expected
  scores); what the bias and the per-verdict noise are is the noise model;
- the previous judge's K verdicts, the same judge at the previous iteration;
- the implicit reward per token, 0.5 s + N(0, 0.6 r), summed over tokens;
  the policy's per-token log-likelihood, the reference's (N(-1.5, 0.3))
  plus that implicit reward (log pi = log pi_ref + implicit), and the
  previous model's, 0.4 q + its own noise; s is the quality q, or in the
  ``echo`` worlds partly the current judge's own error; r = sqrt(40 /
  tokens): per-token noise shrinks with length;
- 8 MC-dropout passes: the per-token implicit reward plus N(0, 0.35 u r)
  (in the ``untied_dropout`` worlds, an independent draw in place of u).

Noise models (``NOISE``) say what the judge gets wrong:

- ``independent``: per-verdict noise N(0, 1.0 (1 + u)), no bias;
- ``drift``: a per-response bias N(0, 0.8 (1 + u)) drawn anew for the
  previous judge (the judge changed between iterations);
- ``stable_bias``: the same per-response bias in both judges (the judge is
  consistently wrong);
- ``length_bias``: both judges add 1.2 z(length), independent of quality
  and of u;
(a biased judge's K verdicts of one response agree: no verdict noise), and
- ``constant``: every verdict is 3.

``Assumptions`` says what the internal signals are granted; ``FAILS`` are
the worlds where one assumption fails: ``echo`` (the internal rewards track
the judge's error instead of quality), ``half_echo`` (half of it), and
``untied_dropout`` (the passes' spread has nothing to do with where the
judge errs). ``position_bias`` is a pairwise judge's (the win rate vs M0):
its verdict favours the answer shown first.

What a filter should show, by construction. Judge-sample uncertainty sees
only the spread of one judge's verdicts: it helps under ``independent`` and
cannot see a bias (``drift``, ``stable_bias``, ``length_bias``).
Consistency compares two judges: it helps where their errors differ
(``independent``, ``drift``) and cannot where they share them
(``stable_bias``, ``length_bias``: consistent and wrong). MC-dropout helps
where the errors grow with u, which the passes' spread then measures, and
finds nothing where its spread is untied from u or under ``length_bias``.
Agreement with an internal reward (implicit, likelihood) helps wherever
that reward's errors are its own, and not where it echoes the judge's. A
constant judge gives no pair, so nothing can be claimed.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.config import RunConfig, load_config
from orchestrator.evaluation import stats
from orchestrator.evaluation.labels import label_quality
from orchestrator.rewards.selection import select
from orchestrator.run import artifacts

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"
RESPONSES, VERDICTS, PASSES = 4, 4, 8
THRESHOLD = 0.25  # q above it: correct
NOISE = ("independent", "drift", "stable_bias", "length_bias", "constant")
# MC-dropout as UPO describes it (off in every shipped recipe: see docs/REWARDS.md), switched on where it is tested.
MC_DROPOUT = ["selection.mc_dropout.passes=8", "selection.mc_dropout.fraction=0.25"]
# (name, shipped config, overrides): the shipped recipes, and one filter on its own where the recipe mixes several.
RECIPES: list[tuple[str, str, list[str]]] = [
    ("srlm", "srlm.yaml", ["scoring.reference=base"]),
    ("cream (dyn)", "cream.yaml", []),
    ("consistency filter", "cream.yaml", ["selection.consistency.mode=filter", "dpo.loss=dpo"]),
    ("scir (implicit)", "scir.yaml", []),
    ("agreement (likelihood)", "scir.yaml", ["selection.agreement.signal=likelihood"]),
    ("upo", "upo.yaml", []),
    ("mc-dropout filter", "upo.yaml", MC_DROPOUT),
    ("trusted", "trusted.yaml", []),
]


@dataclass(frozen=True)
class World:
    generations: pa.Table
    judgments: pa.Table
    rewards: pa.Table
    quality: dict[tuple[str, int], float]


@dataclass(frozen=True)
class Assumptions:
    """What the world grants the internal signals (the defaults grant each filter its assumption).

    ``echo``: the share of the internal rewards' (implicit reward,
    likelihood) signal that is the current judge's own error instead of the
    response's quality: 0, their errors are their own; 1, they echo the
    judge (a model trained on its own labels comes to prefer what its judge
    prefers). ``mc_noise``: what scales the MC-dropout passes' spread: the
    judge's confusability u (``tied``: the passes are unsure where the judge
    errs) or an independent draw (``untied``). ``length_noise``: per-token
    noise shrinks with the response's length (a mean over more tokens).
    ``prompt_effects``: the share of quality's variance that is the
    prompt's (its difficulty), and the log-sd of how hard a prompt is to
    judge (its responses' confusability), so pairs of one prompt share their
    fate.
    """

    echo: float = 0.0
    mc_noise: str = "tied"
    length_noise: bool = True
    prompt_effects: float = 0.5


HOLDS = Assumptions()
# Worlds where an internal signal's assumption fails: each filter built on it must claim no gain there.
FAILS = {"echo": Assumptions(echo=1.0), "half_echo": Assumptions(echo=0.5), "untied_dropout": Assumptions(mc_noise="untied")}


def _verdicts(rng: np.random.Generator, mean: np.ndarray, sd: np.ndarray, constant: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores, score distributions) of VERDICTS verdicts per response, around ``mean`` with per-verdict noise ``sd``."""
    noisy = mean[:, None] + rng.normal(0.0, 1.0, (mean.size, VERDICTS)) * sd[:, None]
    if constant:
        noisy = np.full_like(noisy, 3.0)
    scores = np.clip(np.rint(noisy), 0, 5)
    levels = np.arange(6)
    logits = -((levels[None, None, :] - noisy[:, :, None]) ** 2) / (2 * 0.8**2)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return scores, probs / probs.sum(-1, keepdims=True)


def world(noise: str, prompts: int, seed: int, assume: Assumptions = HOLDS) -> World:
    """One synthetic iteration under the noise model ``noise`` and the ``assume``d signals, as the engines' tables
    (see the module docstring)."""
    rng = np.random.default_rng([seed, NOISE.index(noise)])
    n = prompts * RESPONSES
    of_prompt = np.repeat(np.arange(prompts), RESPONSES)
    share = assume.prompt_effects
    q = math.sqrt(share) * rng.normal(0.0, 1.0, prompts)[of_prompt] + math.sqrt(1 - share) * rng.normal(0.0, 1.0, n)
    hard = np.exp(rng.normal(0.0, share, prompts))[of_prompt]  # how much harder than usual the prompt is to judge
    u = rng.exponential(1.0, n) * hard
    tokens = np.maximum(4, np.rint(rng.lognormal(math.log(40), 0.5, n))).astype(int)
    length_z = (np.log(tokens) - math.log(40)) / 0.5
    shrink = np.sqrt(40 / tokens) if assume.length_noise else np.ones(n)  # per-token noise, relative to 40 tokens
    zero = np.zeros(n)
    bias_now = {"drift": rng.normal(0.0, 1.0, n) * 0.8 * (1 + u), "stable_bias": rng.normal(0.0, 1.0, n) * 0.8 * (1 + u),
                "length_bias": 1.2 * length_z}.get(noise, zero)
    bias_prev = {"drift": rng.normal(0.0, 1.0, n) * 0.8 * (1 + u)}.get(noise, bias_now)
    sd = 1.0 * (1 + u) if noise == "independent" else zero  # a biased judge's verdicts agree with each other
    now, now_probs = _verdicts(rng, 2.5 + 0.8 * q + bias_now, sd, noise == "constant")
    prev, prev_probs = _verdicts(rng, 2.5 + 0.8 * q + bias_prev, sd, noise == "constant")
    judge_error = (now.mean(1) - 2.5) / 0.8 - q  # what the current judge gets wrong, in units of quality
    signal = (1 - assume.echo) * q + assume.echo * judge_error
    implicit_norm = 0.5 * signal + rng.normal(0.0, 0.6, n) * shrink
    ref_norm = rng.normal(-1.5, 0.3, n)
    prev_norm = 0.4 * q + rng.normal(0.0, 0.6, n) * shrink - 1.2
    logp_ref = ref_norm * tokens
    logp_policy = logp_ref + implicit_norm * tokens
    untied = rng.exponential(1.0, n) * np.exp(rng.normal(0.0, share, prompts))[of_prompt] if assume.mc_noise == "untied" else u
    spread = 0.35 * untied * shrink  # untied: drawn like u, prompt effect included, but independent of it
    mc = logp_ref[:, None] + (implicit_norm[:, None] + rng.normal(0.0, 1.0, (n, PASSES)) * spread[:, None]) * tokens[:, None]
    keys = [(f"p{i // RESPONSES:06d}", i % RESPONSES) for i in range(n)]
    gens = pa.Table.from_pydict({
        "iteration": [2] * n, "prompt_id": [k[0] for k in keys], "prompt": [f"task {k[0]}" for k in keys],
        "sample_idx": [k[1] for k in keys], "response": [f"response {k[0]}/{k[1]}" for k in keys],
        "num_tokens": tokens.tolist(), "finish_reason": ["stop"] * n, "seed": [0] * n,
    }, schema=artifacts.GENERATIONS)
    pids = np.array([k[0] for k in keys])
    parts = []
    for role, scores, probs in (("current", now, now_probs), ("previous", prev, prev_probs)):
        rows = n * VERDICTS
        parts.append(pa.Table.from_pydict({
            "prompt_id": np.repeat(pids, VERDICTS), "sample_idx": np.repeat(np.arange(n) % RESPONSES, VERDICTS),
            "judge_model": [role] * rows, "judge_idx": np.tile(np.arange(VERDICTS), n), "judge_text": [""] * rows,
            "score": scores.reshape(-1), "seed": np.zeros(rows, dtype=np.int64), "num_tokens": np.ones(rows, dtype=np.int32),
            "score_expected": (probs @ np.arange(6)).reshape(-1),
            "score_probs": pa.FixedSizeListArray.from_arrays(probs.reshape(-1), 6).cast(pa.list_(pa.float64())),
        }, schema=artifacts.JUDGMENTS))
    judgments = pa.concat_tables(parts)
    mix = now_probs.mean(1)
    expected = mix @ np.arange(6)
    rewards = pa.Table.from_pydict({
        "prompt_id": [k[0] for k in keys], "sample_idx": [k[1] for k in keys],
        "judge_mean": now.mean(1).tolist(), "judge_std": now.std(1).tolist(), "judge_valid": [VERDICTS] * n,
        "judge_mean_prev": prev.mean(1).tolist(), "logp_policy": logp_policy.tolist(), "logp_ref": logp_ref.tolist(),
        "num_tokens": tokens.tolist(), "logp_prev": (prev_norm * tokens).tolist(),
        "logp_policy_norm": (logp_policy / tokens).tolist(), "logp_ref_norm": ref_norm.tolist(),
        "logp_prev_norm": prev_norm.tolist(), "judge_expected": expected.tolist(),
        "judge_expected_std": np.sqrt(np.maximum(0.0, mix @ (np.arange(6) ** 2) - expected**2)).tolist(),
        "correct": (q > THRESHOLD).tolist(), "grade_rule": ["explicit"] * n, "logp_mc": mc.tolist(),
        "logp_mc_ref": logp_ref.tolist(),
    }, schema=artifacts.REWARDS)
    return World(gens, judgments, rewards, dict(zip(keys, q.tolist())))


def recipe_config(config: str, overrides: list[str]) -> RunConfig:
    return load_config(CONFIGS / config, overrides)


def gradient_toward_truth(pairs: pa.Table, cfg: RunConfig) -> dict[str, Any]:
    """Where the recipe's loss pushes, on the decided kept pairs, at the start of training (h = 0).

    ``pairs``: the share of pairs whose gradient pushes toward the truly better
    (correct) response, with its Wilson interval. ``net``: the push toward
    truth minus the push away, over the total push (weights and soft labels
    included), in [-1, 1]: a soft label that pushes a likely mislabelled
    pair less, or the other way, raises it.
    """
    import torch

    from orchestrator.specs import make_loss

    rows = [r for r in pairs.to_pylist() if r["kept"] and r["chosen_correct"] is not None
            and r["rejected_correct"] is not None and r["chosen_correct"] != r["rejected_correct"]]
    if not rows:
        return {"pairs": stats.unmeasured(0, "no decided kept pair").to_json(), "net": None}
    h = torch.zeros(len(rows), dtype=torch.float64, requires_grad=True)
    fixed = torch.zeros(len(rows), dtype=torch.float64)
    weights = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    label_p = torch.tensor([r["label_p"] for r in rows], dtype=torch.float64)
    ones = torch.ones(len(rows), dtype=torch.float64)
    out = make_loss(cfg)(h, fixed, fixed, fixed, ones, label_p, (ones, ones))
    (out.per_pair * weights).sum().backward()
    truth = torch.tensor([1.0 if r["chosen_correct"] else -1.0 for r in rows], dtype=torch.float64)
    push = -h.grad * truth  # > 0: toward the correct response
    total = float(push.abs().sum())
    return {"pairs": stats.proportion_over_clusters([(r["prompt_id"], bool(v > 0)) for r, v in zip(rows, push)]).to_json(),
            "net": None if total == 0 else float(push.sum()) / total}


def worlds() -> list[tuple[str, str, Assumptions]]:
    """(name, noise model, assumptions) of every simulated world: each noise model where the internal signals'
    assumptions hold, then the worlds where one fails, under an unbiased and a consistently biased judge."""
    return ([(noise, noise, HOLDS) for noise in NOISE]
            + [(f"{noise} + {name}", noise, assume) for name, assume in FAILS.items()
               for noise in ("independent", "stable_bias")])


def simulate(prompts: int = 6000, seed: int = 0, recipes: list[tuple[str, str, list[str]]] = RECIPES) -> dict[str, Any]:
    """Every recipe in every world: {world: {recipe: result}} (see ``evaluate``)."""
    out: dict[str, Any] = {}
    for name, noise, assume in worlds():
        w = world(noise, prompts, seed, assume)
        out[name] = {recipe: evaluate(w, recipe_config(config, overrides)) for recipe, config, overrides in recipes}
    return out


def evaluate(w: World, cfg: RunConfig) -> dict[str, Any]:
    """The recipe's selection on the world: pairs, label quality against a random drop, the gradient's direction."""
    from orchestrator.rewards.selection import make_selection

    pairs = select(w.generations, w.rewards, w.judgments, make_selection(cfg), policy_is_reference=False)
    quality = label_quality(pairs)
    return {"pairs_built": pairs.num_rows, "pairs_kept": sum(pairs["kept"].to_pylist()), "label_quality": quality,
            "gradient_toward_truth": gradient_toward_truth(pairs, cfg)}


def position_bias(prompts: int = 2000, seed: int = 0, bias: float = 2.0, skill: float = 1.0) -> dict[str, Any]:
    """A pairwise judge whose log-odds of "A" are skill * (quality_A - quality_B) + bias, judging M(t) against M0
    in both orders: the first order's verdict alone, the sampled two-order outcome, and the probability verdict
    averaged over the orders, each against the true win rate; and whether the judge is flagged as degenerate."""
    from orchestrator.evaluation.stage import TIE_BAND, outcome
    from orchestrator.evaluation.stage import position_bias as judge_positions

    rng = np.random.default_rng([seed, 99])
    gain = rng.normal(0.3, 1.0, prompts)  # quality of M(t)'s response minus M0's
    true_win = float((gain > 0).mean())
    p_first = 1 / (1 + np.exp(-(skill * gain + bias)))  # M(t) shown as A
    p_second = 1 / (1 + np.exp(-(-skill * gain + bias)))  # M0 shown as A
    first = np.where(rng.random(prompts) < p_first, "A", "B")
    second = np.where(rng.random(prompts) < p_second, "A", "B")
    sampled = [outcome(a, b) for a, b in zip(first, second)]
    preference = (p_first + 1 - p_second) / 2
    rows = [{"pairwise_first": "A" if a > 0.5 else "B", "pairwise_second": "A" if b > 0.5 else "B"}
            for a, b in zip(p_first, p_second)]
    return {
        "bias": bias, "true_win_rate": true_win,
        "first_order_only_win_rate": float((first == "A").mean()),
        "sampled_both_orders_win_rate": sampled.count("win") / prompts,
        "probability_win_rate": float((preference > 0.5 + TIE_BAND).mean()),
        "probability_decided_win_rate": float((preference > 0.5 + TIE_BAND).sum()
                                              / max(1, (abs(preference - 0.5) > TIE_BAND).sum())),
        "degenerate": judge_positions(rows)["pairwise_degenerate"],
    }


def _rows(result: dict[str, Any]) -> list[list[str]]:
    from orchestrator.reporting.metrics import against_chance, show

    rows = [["world", "recipe", "kept/built", "kept-label precision", "against a random drop (lift over prompts)",
             "gradient toward truth (pairs, net)", "filters on their own (lift)"]]
    for noise, by_recipe in result.items():
        for name, r in by_recipe.items():
            kept = r["label_quality"]["kept"]
            precision = stats.Estimate.from_json(kept["precision"])
            filters = "; ".join(f"{f}: {v['passed']['verdict']}" + (
                f" ({lift.value:+.3f})" if (lift := stats.Estimate.from_json(v["passed"]["lift"])).value is not None else "")
                for f, v in r["label_quality"]["by_filter"].items())
            grad = r["gradient_toward_truth"]
            net = "-" if grad["net"] is None else f"{grad['net']:+.3f}"
            rows.append([noise, name, f"{r['pairs_kept']}/{r['pairs_built']}", show(precision, ".3f"),
                         against_chance(kept), f"{show(stats.Estimate.from_json(grad['pairs']), '.3f')}, {net}",
                         filters or "-"])
    return rows


def main() -> None:
    from benchmarks import table, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = simulate(args.prompts, args.seed)
    print(table(_rows(result)))
    positions = [position_bias(seed=args.seed, bias=b) for b in (0.0, 1.0, 3.0)]
    print()
    print(table([["position bias (log-odds)", "true win rate", "first order only", "sampled, both orders",
                  "probability, both orders (decided)", "flagged"]]
                + [[f"{p['bias']:.1f}", f"{p['true_win_rate']:.3f}", f"{p['first_order_only_win_rate']:.3f}",
                    f"{p['sampled_both_orders_win_rate']:.3f}", f"{p['probability_decided_win_rate']:.3f}",
                    p["degenerate"] or "no"] for p in positions]))
    path = write_result("fidelity", {"prompts": args.prompts, "seed": args.seed, "worlds": result,
                                     "position_bias": positions})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
