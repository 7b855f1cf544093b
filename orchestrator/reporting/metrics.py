"""Every metric the project reports, declared once: its key, label, format, interval and TensorBoard tag.

``metrics.json`` stores a declared rate or mean as an ``Estimate`` (value, n,
95% interval; see ``orchestrator.evaluation.stats``) under its ``key``. The terminal
table and per-iteration line (``runlog``), TensorBoard, the report's table
and plots and ``selfreward compare`` all read these declarations, so a
metric is named, formatted and tagged the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.evaluation import stats
from orchestrator.evaluation.labels import CALIBRATION_SIGNALS
from orchestrator.evaluation.stats import Estimate

Interval = Literal["wilson", "bootstrap", "prompts", "none"]  # "prompts": a bootstrap over prompts


@dataclass(frozen=True)
class Metric:
    key: str  # its key in metrics.json
    label: str  # its name on screen, in plots and in compare
    fmt: str  # format of its value
    interval: Interval  # how its 95% interval is computed ("none": a count, a loss, a time)
    tag: str | None = None  # TensorBoard tag of its value (the interval goes to <tag>/ci95_lo and /ci95_hi)
    table: bool = False  # a row of the per-iteration table
    description: str = ""

    def get(self, row: dict[str, Any]) -> Estimate | float | None:
        """Its value in a metrics row: an Estimate for rates and means, a plain number otherwise, None if absent."""
        value = row.get(self.key)
        if self.interval == "none" or value is None:
            return value
        return Estimate.from_json(value)


METRICS: list[Metric] = [
    # Evaluation on held-out sets (M0 = iteration 0 too).
    Metric("eval_accuracy", "accuracy (held-out)", ".3f", "wilson", "eval/accuracy", True,
           "Greedy answers to the held-out verifiable prompts graded correct (an ungradable answer is incorrect)."),
    Metric("eval_accuracy_vs_m0", "accuracy - M0's (paired)", "+.3f", "bootstrap", "eval/accuracy_vs_m0", True,
           "Mean per-prompt difference in correctness between M(t) and M0 on the same held-out prompts."),
    Metric("eval_answer_tokens", "answer tokens (held-out)", ".1f", "bootstrap", "eval/answer_tokens", False,
           "mean tokens of the model's greedy evaluation answers"),
    Metric("eval_truncated_rate", "answers cut at max_tokens (held-out)", ".2f", "wilson", "eval/truncated_rate", False,
           "share of evaluation answers that hit eval.max_tokens"),
    Metric("eval_distinct2", "answer distinct-2 (held-out)", ".2f", "bootstrap", "eval/distinct2", False,
           "mean share of distinct word bigrams per evaluation answer (1 = no repetition)"),
    Metric("eval_fixed_judge", "fixed judge (M0) score", ".2f", "bootstrap", "eval/fixed_judge", True,
           "Mean 0-5 rubric score M0 gives the held-out instruction responses; M0 cannot drift with training."),
    Metric("eval_self_judge", "self judge score", ".2f", "bootstrap", "eval/self_judge", True,
           "Mean 0-5 rubric score the evaluated model gives its own held-out responses."),
    Metric("eval_judge_parse_rate", "eval judge parse rate", ".3f", "wilson", "eval/judge_parse_rate", False,
           "Share of the evaluation's rubric verdicts with a readable score."),
    Metric("win_rate", "win rate vs M0", ".2f", "wilson", "eval/win_rate", True,
           "Held-out instructions on which M0, as pairwise judge in both orders, prefers M(t)'s response."),
    Metric("tie_rate", "tie rate vs M0", ".2f", "wilson", "eval/tie_rate", True),
    Metric("loss_rate", "loss rate vs M0", ".2f", "wilson", "eval/loss_rate", True),
    Metric("pairwise_position_consistency", "pairwise position consistency", ".2f", "wilson",
           "eval/position_consistency", True,
           "Share of judged prompts whose two orders name the same response (a judge reading content, not position)."),
    Metric("pairwise_first_position_rate", "pairwise first-position rate", ".2f", "wilson", "eval/first_position_rate",
           False, "Share of pairwise verdicts naming the answer shown first (0.5 for a judge without position bias)."),
    Metric("judge_fooled_rate", "judge fooled by injections", ".2f", "wilson", "eval/judge_fooled_rate", True,
           "Share of held-out responses whose fixed-judge score rose when an injection text was appended."),
    # The iteration's own labels.
    Metric("judge_parse_rate", "judge parse rate", ".3f", "wilson", "judge/parse_rate", False,
           "Share of the iteration's judge verdicts with a readable score."),
    Metric("judge_score_mean", "self judge score (training responses)", ".2f", "bootstrap", "judge/train_score", False,
           "Mean judge score of the iteration's sampled responses."),
    Metric("judge_auroc", "judge AUROC (correct vs incorrect)", ".2f", "prompts", "judge/auroc", True,
           "How well the judge's mean sampled score separates correct from incorrect responses (0.5 = chance), "
           "every correct response against every incorrect one."),
    Metric("judge_auroc_within", "judge AUROC within prompts", ".2f", "prompts", "judge/auroc_within", True,
           "The same, comparing only responses to the same prompt (a signal that tracks prompt difficulty gains "
           "nothing here)."),
    Metric("judge_auroc_expected", "judge AUROC, expected score", ".2f", "prompts", "judge/auroc_expected", False,
           "The same for the expected score read from the judge's digit probabilities."),
    Metric("judge_auroc_previous", "judge AUROC, previous judge", ".2f", "prompts", "judge/auroc_previous", False,
           "The same for the previous model's verdicts."),
    Metric("likelihood_auroc", "likelihood AUROC (correct vs incorrect)", ".2f", "prompts", "trust/likelihood_auroc", True,
           "The same for the policy's per-token log-likelihood of each response: an internal signal defined from "
           "iteration 1."),
    Metric("likelihood_auroc_within", "likelihood AUROC within prompts", ".2f", "prompts",
           "trust/likelihood_auroc_within", True, "The likelihood's AUROC comparing only responses to the same prompt."),
    Metric("length_auroc", "length AUROC (control)", ".2f", "prompts", "trust/length_auroc", True,
           "The same for the response's length in tokens: a control any internal signal must beat."),
    Metric("length_auroc_within", "length AUROC within prompts (control)", ".2f", "prompts",
           "trust/length_auroc_within", False, "The length's AUROC comparing only responses to the same prompt."),
    Metric("stopped_auroc", "stopped AUROC (control)", ".2f", "prompts", "trust/stopped_auroc", False,
           "The same for whether the response stopped on its own rather than being cut off: a control."),
    Metric("mean_consistency", "mean consistency C", ".2f", "bootstrap", "trust/mean_consistency", True,
           "CREAM's C = (Kendall tau-b + 1) / 2 of current vs previous rankings, averaged over prompts where defined."),
    Metric("agreement_rate", "judge/implicit agreement", ".2f", "wilson", "trust/agreement_rate", True,
           "Candidate pairs whose implicit reward prefers the judge's chosen response too."),
    Metric("likelihood_agreement_rate", "judge/likelihood agreement", ".2f", "wilson", "trust/likelihood_agreement_rate",
           True, "Candidate pairs whose chosen response is also the more likely one per token under the policy."),
    Metric("candidate_label_precision", "candidate-label precision", ".2f", "prompts", "trust/candidate_label_precision",
           False, "Decided candidate pairs whose chosen response is the correct one."),
    Metric("kept_label_precision", "kept-label precision", ".2f", "prompts", "trust/kept_label_precision", True,
           "Decided kept pairs whose chosen response is the correct one."),
    Metric("dropped_label_precision", "dropped-label precision", ".2f", "prompts", "trust/dropped_label_precision", False,
           "Decided dropped pairs whose chosen response is the correct one."),
    Metric("expected_vs_sampled_agreement", "expected vs sampled judge, pair order", ".2f", "wilson",
           "judge/expected_vs_sampled", False,
           "Within-prompt response pairs that the one-pass expected score and the sampled mean order alike."),
    Metric("reward_accuracy", "train reward accuracy", ".2f", "wilson", "train/reward_accuracy", False,
           "Pairs of the last epoch whose implicit reward margin is positive."),
    Metric("pairs_built", "pairs built", "d", "none", "pairs/built", False),
    Metric("pairs_kept", "pairs kept", "d", "none", "pairs/kept", True),
    Metric("dpo_loss", "DPO loss", ".4f", "none", "train/dpo_loss", True),
    Metric("reward_margin", "train reward margin", ".4f", "none", "train/reward_margin", False),
    Metric("tokens_generated", "tokens generated", "d", "none", "generate/tokens", False),
    Metric("generation_tokens_per_s", "generation tokens/s", ".0f", "none", "generate/tokens_per_s", False),
    Metric("iteration_seconds", "seconds", ".0f", "none", "time/iteration_seconds", True),
]
BY_KEY = {m.key: m for m in METRICS}


def show(value: Estimate | float | None, fmt: str, why: bool = False) -> str:
    """One value as text: "0.281 [0.160, 0.452] 9/32" for a proportion, "1.25 [0.90, 1.61] n=8" for a mean,
    "0.63 [0.55, 0.71] 25 correct / 212 incorrect" for an AUROC, with ", 40 prompts" where the interval resamples
    prompts.

    "n/a" for a number that could not be measured (with the reason when ``why``), "-" for one absent.
    """
    if value is None:
        return "-"
    if not isinstance(value, Estimate):
        return format(value, fmt) if fmt != "d" else str(int(value))
    if value.value is None:
        return f"n/a ({value.why})" if why and value.why else "n/a"
    text = format(value.value, fmt)
    if value.lo is not None:
        spec = fmt.lstrip("+")
        text += f" [{format(value.lo, spec)}, {format(value.hi, spec)}]"
    if value.classes is not None:
        text += f" {value.classes[0]} correct / {value.classes[1]} incorrect"
    else:
        text += f" {value.k}/{value.n}" if value.k is not None else f" n={value.n}"
    return text + (f", {value.clusters} prompts" if value.clusters is not None and value.interval == "prompts" else "")


def cell(row: dict[str, Any], key: str, why: bool = False) -> str:
    """The declared metric ``key`` of a metrics row as text (see ``show``)."""
    m = BY_KEY[key]
    return show(m.get(row), m.fmt, why)


def kept_against_chance(row: dict[str, Any]) -> str:
    """How the kept pairs' label precision reads against a random drop of the same size (``evaluation.labels.label_quality``)."""
    kept = row.get("label_quality", {}).get("kept")
    return "-" if kept is None else against_chance(kept)


def against_chance(entry: dict[str, Any]) -> str:
    """A ``label_quality`` entry with a random-drop baseline: its verdict, the baseline's mean and 95% range, and the
    lift with its interval (both over prompts), or why it is not measurable."""
    baseline = entry["random_drop"]
    lift = Estimate.from_json(entry.get("lift"))
    if entry["verdict"] == "not measurable" and lift is not None and lift.why:
        return f"not measurable ({lift.why})"
    if baseline["precision"] is None or entry["verdict"] == "no drop" or baseline.get("range95") is None:
        return entry["verdict"]
    lo, hi = baseline["range95"]
    text = f"{entry['verdict']} (chance {baseline['precision']:.2f} [{lo:.2f}, {hi:.2f}]"
    if lift is not None and lift.lo is not None:
        text += f", lift {lift.value:+.2f} [{lift.lo:+.2f}, {lift.hi:+.2f}]"
    return text + ")"


def filter_lines(row: dict[str, Any]) -> list[str]:
    """Per filter of an iteration: the precision of the pairs it passed against a random drop, and of those it failed."""
    out = []
    for name, f in row.get("label_quality", {}).get("by_filter", {}).items():
        passed, failed = (Estimate.from_json(f[k]["precision"]) for k in ("passed", "failed"))
        out.append(f"  filter {name}: passed precision {show(passed, '.2f', why=True)}, against a random drop: "
                   f"{against_chance(f['passed'])}; failed precision {show(failed, '.2f', why=True)}; "
                   f"not applicable to {f['not_applicable']} pair(s)")
    return out


def metric_rows(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per metrics row) of every table metric some row has, then the kept pairs against chance."""
    out = [(m.label, [cell(r, m.key) for r in rows]) for m in METRICS if m.table and any(m.key in r for r in rows)]
    if any("label_quality" in r for r in rows):
        out.append(("kept-label precision vs random drop", [kept_against_chance(r) for r in rows]))
    return out


def iteration_row(t: int, s: dict[str, dict[str, Any]], wall: float, overlong: dict[str, Any],
                  engine_start_seconds: float) -> dict[str, Any]:
    """metrics.json of iteration t from its stages' summaries (``s``: stage name -> summary, as state.json holds
    them, with its seconds) and the iteration's wall time."""
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
        "judge_score_mean": s["score"]["judge_score_mean"],
        # Absent from summaries written before the controls and within-prompt AUROCs existed.
        **{k: s["score"].get(k) for key, _ in CALIBRATION_SIGNALS for k in (key, f"{key}_within")},
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
        "prompts_overlong": overlong,
        "engine_start_seconds": engine_start_seconds,
        **{k: v for k, v in s.get("eval", {}).items() if k != "seconds"},
    }
    return metrics
