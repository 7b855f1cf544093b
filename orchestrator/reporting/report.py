"""`selfreward report RUN_DIR` and `selfreward compare RUN_A RUN_B ...`: what a researcher reads after a run.

``write_report`` renders ``RUN_DIR/report.html`` with SVG plots in
``RUN_DIR/plots/`` (matplotlib, Agg backend), inlined in the page:
evaluation accuracy and its paired difference from M0, judge scores (fixed
judge M0, self judge, the self-judged training responses), judge
calibration (AUROC), win/tie/loss vs M0 with the judge's position
consistency, the trust numbers (consistency, agreement, label precision
against a random drop), pairs built/kept with drop reasons, judge-score
histograms, the DPO loss per step, stage times, and a table of sample pairs
with their verdicts. Every rate and mean is drawn with its 95% interval; a
point resting on fewer than ``stats.SMALL_N`` items is hollow, labelled with
its n and joined to nothing. The page is self-contained: no script, style,
image or font is fetched from anywhere, and every text from the run
(prompts, responses, verdicts) is HTML-escaped. A small inline script marks
plots that did not render.

``compare_runs`` puts several runs side by side, one row per metric and
iteration, one column per run, each value with its interval and n.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.evaluation import stats
from orchestrator.evaluation.stats import Estimate
from orchestrator.reporting.metrics import BY_KEY, METRICS, against_chance, metric_rows, show
from orchestrator.reporting.runlog import metrics_rows
from orchestrator.run.rundir import RunDir, RunDirError
from workers.storage import Storage

PLOTS_DIR = "plots"
SAMPLE_KEPT, SAMPLE_DROPPED = 6, 4


def _runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Baseline and iteration rows, in iteration order."""
    return [r for r in rows if r["kind"] in ("baseline", "iteration")]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _load_state(run_dir: str | Path) -> tuple[RunDir, dict[str, Any]]:
    rd = RunDir(run_dir)
    state = rd.load_state()
    return rd, state


# --- plots ---------------------------------------------------------------------------


def _figure(title: str, ylabel: str, xlabel: str = "iteration"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, ax, path: tuple[Storage, str], has_data: bool) -> None:
    import matplotlib.pyplot as plt

    if not has_data:
        ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    storage, rel = path
    storage.write_text(rel, buf.getvalue())


def _estimate_plot(rows: list[dict[str, Any]], keys: list[str], title: str, ylabel: str, path: tuple[Storage, str],
                   ylim: tuple[float, float] | None = None, reference: float | None = None,
                   bands: dict[int, tuple[float, float]] | None = None) -> None:
    """Declared metrics per iteration, each point with its 95% interval as an error bar.

    A point resting on fewer than ``stats.SMALL_N`` items is hollow and
    labelled with its n, and no line joins it; a number that could not be
    measured is marked "n/a" on the axis. ``reference``: a dashed horizontal
    line (chance); ``bands``: per iteration, a shaded range (a random drop's).
    """
    fig, ax = _figure(title, ylabel)
    has = False
    for k, key in enumerate(keys):
        metric = BY_KEY[key]
        color = f"C{k}"
        points = [(r["iteration"], metric.get(r)) for r in rows if r.get(key) is not None]
        if not points:
            continue
        ax.plot([], [], "o", color=color, label=metric.label)
        confident: list[tuple[int, float]] = []
        for x, est in points:
            has = True
            if est.value is None:
                ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4 + 9 * k),
                            textcoords="offset points", ha="center", fontsize=7, color=color)
                continue
            if est.lo is not None:
                bars = ax.errorbar([x], [est.value], yerr=[[est.value - est.lo], [est.hi - est.value]], fmt="none",
                                   ecolor=color, capsize=3, linewidth=1)
                bars[2][0].set_gid(f"ci-{key}-{x}")
            small = est.n < stats.SMALL_N
            (marker,) = ax.plot([x], [est.value], "o", color=color, markerfacecolor="white" if small else color)
            if small:
                marker.set_gid(f"small-n-{key}-{x}")
                ax.annotate(f"n={est.n}", (x, est.value), xytext=(5, 3), textcoords="offset points", fontsize=7, color=color)
            else:
                confident.append((x, est.value))
        for (x0, y0), (x1, y1) in zip(confident, confident[1:]):
            if x1 == x0 + 1:
                ax.plot([x0, x1], [y0, y1], "-", color=color, linewidth=1)
    for x, (lo, hi) in (bands or {}).items():
        ax.fill_between([x - 0.2, x + 0.2], lo, hi, color="gray", alpha=0.25, linewidth=0, gid=f"chance-{x}",
                        label="random drop, 95% range" if x == min(bands) else None)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    if ylim:
        ax.set_ylim(*ylim)
    iterations = [r["iteration"] for r in rows]
    if iterations:  # every iteration on the axis, also one whose numbers are all n/a
        ax.set_xlim(min(iterations) - 0.5, max(iterations) + 0.5)
        ax.set_xticks(range(min(iterations), max(iterations) + 1))
    _save(fig, ax, path, has)


def _stacked_bars(iterations: list[int], parts: dict[str, list[float]], title: str, ylabel: str,
                  path: tuple[Storage, str]) -> None:
    fig, ax = _figure(title, ylabel)
    bottom = [0.0] * len(iterations)
    for label, values in parts.items():
        ax.bar(iterations, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    if iterations:
        ax.set_xticks(iterations)
    _save(fig, ax, path, bool(iterations) and any(bottom))


SMALL_NOTE = (f" Error bars are 95% intervals; a hollow point rests on fewer than {stats.SMALL_N} items (its n is "
              "written beside it) and is never joined by a line; n/a marks a number that could not be measured.")


def _plots(rd: RunDir, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Write every plot; returns (file name, caption) in page order."""
    st = rd.storage

    def out(name: str) -> tuple[Storage, str]:
        return st, f"{PLOTS_DIR}/{name}"

    its = [r for r in rows if r["kind"] == "iteration"]
    runs = _runs(rows)
    plots = []
    _estimate_plot(runs, ["eval_accuracy"], "Held-out accuracy (greedy)", "accuracy", out("accuracy.svg"), (0, 1))
    plots.append(("accuracy.svg", "Held-out verifiable accuracy of M0 (iteration 0) and of each M(t)." + SMALL_NOTE))
    _estimate_plot(its, ["eval_accuracy_vs_m0"], "Accuracy minus M0's, same prompts", "difference", out("accuracy_vs_m0.svg"),
                   reference=0.0)
    plots.append(("accuracy_vs_m0.svg", "Paired difference in held-out accuracy between M(t) and M0 (bootstrap over "
                  "prompts): an interval covering 0 is no evidence of a change." + SMALL_NOTE))
    _estimate_plot(runs, ["eval_fixed_judge", "eval_self_judge", "judge_score_mean"], "Judge scores (0-5 rubric)",
                   "mean score", out("judge_scores.svg"), (0, 5))
    plots.append(("judge_scores.svg", "Mean rubric score of held-out responses by the fixed judge M0 and by the model "
                  "itself, and the mean self-judged score of each iteration's training responses. A self score rising "
                  "faster than the fixed score is reward inflation." + SMALL_NOTE))
    _estimate_plot(its, ["judge_auroc", "judge_auroc_within", "judge_auroc_expected", "judge_auroc_previous",
                         "likelihood_auroc", "likelihood_auroc_within", "length_auroc"],
                   "Calibration: correct vs incorrect responses", "AUROC", out("judge_calibration.svg"), (0, 1),
                   reference=0.5)
    plots.append(("judge_calibration.svg", "How well the judge's score, and the policy's per-token likelihood, separate "
                  "the iteration's correct from its incorrect responses (0.5, dashed, is chance), over all responses "
                  "and within prompts (where a signal that only tracks a prompt's difficulty gains nothing), beside "
                  "the response's length as a control: a signal is worth reading only as far as it beats the control. "
                  "An AUROC whose smaller class has fewer than 5 responses, or that comes from fewer than 5 prompts, is "
                  "n/a." + SMALL_NOTE))
    degenerate = [f"iteration {r['iteration']}: {r['pairwise_degenerate']}" for r in its if r.get("pairwise_degenerate")]
    _estimate_plot(its, ["win_rate", "tie_rate", "loss_rate", "pairwise_position_consistency", "pairwise_first_position_rate"],
                   "M(t) vs M0, judged by M0 in both orders", "rate", out("win_rate.svg"), (0, 1))
    plots.append(("win_rate.svg", "Win, tie and loss rates of M(t) against M0 on held-out instructions, with the "
                  "judge's position consistency and first-position rate. "
                  + (("The win rate cannot be measured with this judge: " + "; ".join(degenerate) + ".") if degenerate else "")
                  + SMALL_NOTE))
    bands = {}
    for r in its:
        chance = r.get("label_quality", {}).get("kept", {}).get("random_drop") or {}
        if chance.get("range95") and r["label_quality"]["kept"]["verdict"] != "no drop":
            bands[r["iteration"]] = tuple(chance["range95"])
    _estimate_plot(its, ["mean_consistency", "agreement_rate", "likelihood_agreement_rate", "kept_label_precision",
                         "dropped_label_precision"],
                   "Trust in the self-rewards", "rate", out("trust.svg"), (0, 1), bands=bands)
    plots.append(("trust.svg", "Cross-iteration consistency, internal-reward agreement, and label precision of kept vs "
                  "dropped pairs (on prompts with reference answers), with intervals over prompts; the gray range is the "
                  "precision of a random drop of the same size from the same candidates: a filter helps only where its "
                  "lift over that drop has an interval above 0. Precision over pairs from fewer than 5 prompts is n/a."
                  + SMALL_NOTE))
    reasons = sorted({k for r in its for k in r.get("drops", {})})
    _stacked_bars([r["iteration"] for r in its],
                  {"kept": [r["pairs_kept"] for r in its], **{k: [r["drops"].get(k, 0) for r in its] for k in reasons}},
                  "Candidate pairs: kept and drop reasons", "pairs", out("pairs.svg"))
    plots.append(("pairs.svg", "Every candidate pair per iteration: kept, or dropped with its reason."))
    judged: dict[int, list[float]] = {}
    for r in its:
        rewards = f"{rd.iter_dir(r['iteration'])}/rewards.parquet"
        judged[r["iteration"]] = [v for v in rd.read_table(rewards).column("judge_mean").to_pylist() if v is not None] \
            if rd.exists(rewards) else []
    fig, ax = _figure("Self-judge scores of training responses", "responses", "mean judge score")
    has = False
    for t, vals in judged.items():
        if vals:
            ax.hist(vals, bins=[i * 0.5 for i in range(11)], histtype="step", linewidth=1.5, label=f"iter {t}")
            has = True
    _save(fig, ax, out("score_hist.svg"), has)
    plots.append(("score_hist.svg", "Distribution of the mean self-judge score per response, per iteration."))
    fig, ax = _figure("DPO loss per optimizer step", "loss", "optimizer step (all iterations)")
    steps = [r for r in rows if r["kind"] == "train_step"]
    if steps:
        ax.plot(range(1, len(steps) + 1), [s["loss"] for s in steps], marker=".", label="loss")
        n = 0
        for t in sorted({s["iteration"] for s in steps})[:-1]:
            n += sum(1 for s in steps if s["iteration"] == t)
            ax.axvline(n + 0.5, color="gray", linestyle=":")
    _save(fig, ax, out("dpo_loss.svg"), bool(steps))
    plots.append(("dpo_loss.svg", "Weighted preference loss of each optimizer step; dotted lines separate iterations."))
    stages = [s for s in ("generate", "judge", "score", "select", "train", "eval")
              if any(s in r.get("stage_seconds", {}) for r in runs)]
    _stacked_bars([r["iteration"] for r in runs], {s: [r.get("stage_seconds", {}).get(s, 0.0) for r in runs] for s in stages},
                  "Time per stage", "seconds", out("stage_seconds.svg"))
    plots.append(("stage_seconds.svg", "Wall time of each stage (iteration 0: M0's evaluation)."))
    return plots


# --- the page ------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; width: 40em; vertical-align: top; }
figure svg { width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; max-height: 24em; overflow: auto; }
.text { white-space: pre-wrap; max-width: 28em; }
.missing { color: #b00; }
"""

# Counts, once the page has laid out, the plots that rendered (an inline SVG with a non-empty box), their error bars
# and their small-n points, in data attributes of <body> (read by the tests); marks a plot that did not render.
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var plots = Array.prototype.slice.call(document.querySelectorAll("figure.plot"));
  var shown = plots.filter(function (f) {
    var svg = f.querySelector("svg");
    if (svg) { var box = svg.getBBox(); if (box.width > 0 && box.height > 0) return true; }
    var note = document.createElement("p");
    note.className = "missing";
    note.textContent = "plot missing: " + f.getAttribute("data-name");
    f.insertBefore(note, f.firstChild);
    return false;
  });
  var drawn = function (sel) {
    return Array.prototype.slice.call(document.querySelectorAll(sel)).filter(function (g) {
      var box = g.getBBox(); return box.width > 0 || box.height > 0;
    }).length;
  };
  document.body.setAttribute("data-plots-total", plots.length);
  document.body.setAttribute("data-plots-loaded", shown.length);
  document.body.setAttribute("data-errorbars", drawn("figure.plot g[id^='ci-']"));
  document.body.setAttribute("data-small-n", drawn("figure.plot g[id^='small-n-']"));
});
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _num(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    return format(v, spec) if isinstance(v, float) else str(v)


def _metrics_table(runs: list[dict[str, Any]]) -> str:
    head = "<th>metric</th>" + "".join(f"<th>M{r['iteration']}</th>" for r in runs)
    body = "".join(f"<tr><th>{_e(label)}</th>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>"
                   for label, cells in metric_rows(runs))
    return f"<table><tr>{head}</tr>{body}</table>"


def _chance_table(its: list[dict[str, Any]]) -> str:
    """Per iteration, the kept pairs and each filter's passed pairs against a random drop of the same size."""
    rows = []
    for r in its:
        q = r.get("label_quality")
        if not q:
            continue
        entries = [("all filters (kept vs dropped)", q["kept"], q["dropped"])]
        entries += [(f"filter {name}", f["passed"], f["failed"]) for name, f in q["by_filter"].items()]
        for label, passed, failed in entries:
            cells = [str(r["iteration"]), label, show(Estimate.from_json(passed["precision"]), ".2f", why=True),
                     against_chance(passed), show(Estimate.from_json(failed["precision"]), ".2f", why=True)]
            rows.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    if not rows:
        return "<p>No iteration committed yet.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("iteration", "pairs", "label precision of the pairs kept (passed)",
                                             "against a random drop of the same size", "of the pairs dropped (failed)"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _inline(svg: str) -> str:
    """A matplotlib SVG file as an element of the page: without its XML prolog, doctype and metadata."""
    svg = svg[svg.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)


def _sample_pairs(rd: RunDir, t: int) -> str:
    d = rd.iter_dir(t)
    if not rd.exists(f"{d}/pairs.parquet"):
        return "<p>No pairs in this run yet.</p>"
    pairs = rd.read_table(f"{d}/pairs.parquet").to_pylist()
    verdicts: dict[tuple[str, int], str] = {}
    scores: dict[tuple[str, int], Any] = {}
    if rd.exists(f"{d}/judgments.parquet"):
        cols = ["prompt_id", "sample_idx", "judge_model", "judge_idx", "judge_text"]
        for j in rd.read_table(f"{d}/judgments.parquet").select(cols).to_pylist():
            if j["judge_model"] == "current" and j["judge_idx"] == 0:
                verdicts[(j["prompt_id"], j["sample_idx"])] = j["judge_text"]
    if rd.exists(f"{d}/rewards.parquet"):
        for r in rd.read_table(f"{d}/rewards.parquet").select(["prompt_id", "sample_idx", "judge_mean"]).to_pylist():
            scores[(r["prompt_id"], r["sample_idx"])] = r["judge_mean"]
    chosen = [p for p in pairs if p["kept"]][:SAMPLE_KEPT] + [p for p in pairs if not p["kept"] and p["chosen"] is not None][:SAMPLE_DROPPED]
    if not chosen:
        return "<p>No candidate pairs in this iteration.</p>"
    rows = []
    for p in chosen:
        kc, kr = (p["prompt_id"], p["chosen_idx"]), (p["prompt_id"], p["rejected_idx"])
        status = "kept" if p["kept"] else f"dropped: {p['drop_reason']}"
        correct = "" if p["chosen_correct"] is None else f"<br>correct: {p['chosen_correct']} / {p['rejected_correct']}"
        rows.append(
            f"<tr><td class='text'>{_e(p['prompt'])}</td>"
            f"<td class='text'>{_e(p['chosen'])}<details><summary>verdict (score {_num(scores.get(kc), '.2f')})</summary>"
            f"<pre>{_e(verdicts.get(kc))}</pre></details></td>"
            f"<td class='text'>{_e(p['rejected'])}<details><summary>verdict (score {_num(scores.get(kr), '.2f')})</summary>"
            f"<pre>{_e(verdicts.get(kr))}</pre></details></td>"
            f"<td>{_e(status)}<br>margin {_num(p['margin'], '.2f')}<br>C {_num(p['consistency'], '.2f')}"
            f"<br>P(chosen wins) {_num(p['p_correct'], '.2f')}<br>weight {_num(p['weight'], '.2f')}{correct}</td></tr>"
        )
    return ("<table><tr><th>prompt</th><th>chosen</th><th>rejected</th><th>numbers</th></tr>" + "".join(rows) + "</table>")


def write_report(run_dir: str | Path) -> str:
    """Write RUN_DIR/report.html and RUN_DIR/plots/*.png from the committed artifacts; returns the page's location.

    Raises RunDirError when RUN_DIR is not a run directory or a committed artifact fails its sha256 check.
    """
    rd, state = _load_state(run_dir)
    rows = metrics_rows(rd)  # verifies each iteration's train record
    runs = _runs(rows)
    plots = _plots(rd, rows)
    its = [r["iteration"] for r in rows if r["kind"] == "iteration"]
    last = its[-1] if its else None
    config = rd.storage.read_text(rd.config_path) if rd.exists(rd.config_path) else ""
    figures = "".join(
        f'<figure class="plot" data-name="{PLOTS_DIR}/{name}">'
        f"{_inline(rd.storage.read_text(f'{PLOTS_DIR}/{name}')) if rd.exists(f'{PLOTS_DIR}/{name}') else ''}"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for name, caption in plots
    )
    drops = Counter()
    for r in rows:
        if r["kind"] == "iteration":
            drops.update(r.get("drops", {}))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>selfreward report: {_e(rd.name)}</title>
<style>{_STYLE}</style><script>{_CHECK_SCRIPT}</script></head>
<body>
<h1>selfreward report: {_e(rd.name)}</h1>
<p>Run directory <code>{_e(rd.root)}</code>, created {_e(state.get("created_at"))}, config hash
<code>{_e(str(state.get("config_hash", ""))[:12])}</code>; {len(its)} iteration(s) committed.
Library versions: {_e(", ".join(f"{k} {v}" for k, v in sorted(state.get("library_versions", {}).items())))}.</p>
<h2>Per iteration</h2>
<p>M0 is the base model. Every rate and mean is given with its 95% interval and n (k/n for a proportion); "n/a" is a
number that could not be measured (the per-iteration lines of <code>selfreward status</code> say why), "-" one the
iteration does not have. <em>fixed judge</em>: M0's rubric score of held-out responses; <em>self judge</em>: the model's
own; win/tie/loss: against M0, judged by M0 in both orders; <em>kept-label precision</em>: decided kept pairs (one
response correct, one not) whose chosen response is the correct one, read against a random drop of the same size.
Drops over all iterations: {_e(", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")}.</p>
{_metrics_table(runs)}
<h2>Label precision against chance</h2>
<p>On prompts with reference answers, a pair is decided when exactly one of its responses is correct; its label is
right when that one was chosen. A filter helps only if the pairs it kept are more often right than random subsets of
the same size from the same candidates (2.5-97.5% range in brackets).</p>
{_chance_table([r for r in rows if r["kind"] == "iteration"])}
<h2>Plots</h2>
{figures}
<h2>Sample pairs{"" if last is None else f" (iteration {last})"}</h2>
{_sample_pairs(rd, last) if last is not None else "<p>No iteration committed yet.</p>"}
<h2>Config</h2>
<pre>{_e(config)}</pre>
</body></html>
"""
    rd.storage.write_text("report.html", page)
    return rd.where("report.html")


# --- compare -------------------------------------------------------------------------

def compare_runs(run_dirs: list[str | Path]) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """(header, rows, data) of the side-by-side table: one row per table metric and iteration, one column per run.

    After the metrics, rows read from each run's evaluation tables: the held-out accuracy's paired difference from
    the first run's at the same iteration (over the prompts both answered: the runs share their evaluation sets),
    and the answers' length, truncated share and distinct-2 (``evaluation.stage.answer_shape``).
    Cells carry the 95% interval and n (``reporting.metrics.show``); ``data`` has the
    full values. Raises RunDirError for a directory that is not a run directory.
    """
    if len(run_dirs) < 1:
        raise RunDirError("compare needs at least one run directory")
    names = [str(d).rstrip("/").rsplit("/", 1)[-1] for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    per_run, heldout = {}, {}
    for name, d in zip(names, run_dirs):
        rd, state = _load_state(d)
        per_run[name] = {r["iteration"]: r for r in _runs(metrics_rows(rd))}
        heldout[name] = _heldout_answers(rd, state)
    iterations = sorted({t for runs in per_run.values() for t in runs})
    header = ["metric", "iter", *names]
    rows, data = [], {}
    for metric in METRICS:
        if not metric.table:
            continue
        for t in iterations:
            values = [per_run[n].get(t, {}).get(metric.key) for n in names]
            if all(v is None for v in values):
                continue
            rows.append([metric.label, str(t), *[show(metric.get(per_run[n].get(t, {})), metric.fmt) for n in names]])
            data.setdefault(metric.key, {})[str(t)] = dict(zip(names, values))
    first = names[0]
    answers = {
        f"eval_accuracy_vs_{first}": (f"accuracy - {first}'s (paired)", "+.3f", lambda n, t: None if n == first else
                                      stats.paired_difference(heldout[n][t][0], heldout[first][t][0]) if t in heldout[first]
                                      else stats.unmeasured(0, f"{first} has no evaluation at iteration {t}")),
        **{m: (BY_KEY[m].label, BY_KEY[m].fmt, lambda n, t, m=m: Estimate.from_json(heldout[n][t][1][m]))
           for m in ("eval_answer_tokens", "eval_truncated_rate", "eval_distinct2")},
    }
    for key, (label, fmt, get) in answers.items():
        for t in iterations:
            values = {n: get(n, t) if t in heldout[n] else None for n in names}
            if all(v is None for v in values.values()):
                continue
            rows.append([label, str(t), *[show(values[n], fmt) for n in names]])
            data.setdefault(key, {})[str(t)] = {n: None if v is None else v.to_json() for n, v in values.items()}
    return header, rows, {"runs": dict(zip(names, map(str, run_dirs))), "metrics": data}


def _heldout_answers(rd: RunDir, state: dict[str, Any]) -> dict[int, tuple[dict[str, float], dict[str, Any]]]:
    """Per iteration with a committed evaluation: 1.0/0.0 per held-out verifiable prompt id (correct or not), and
    the shape of those answers (``answer_shape``)."""
    from orchestrator.evaluation.stage import VERIFIABLE, answer_shape

    out = {}
    for key in state["stages"]:
        it, _, stage = key.partition("/")
        if stage != "eval":
            continue
        rows = [r for r in rd.read_table(f"{it}/eval.parquet").to_pylist() if r["split"] == VERIFIABLE]
        if not rows:
            continue
        out[int(it.removeprefix("iter_"))] = ({r["prompt_id"]: float(bool(r["correct"])) for r in rows},
                                              answer_shape(rows))
    return out


def format_compare(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A Markdown table (readable as plain text too): the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _runs_plot(series: dict[str, dict[int, Estimate | None]], title: str, ylabel: str, path: tuple[Storage, str],
               reference: float | None = None) -> None:
    """One metric per iteration, one colour per run (side by side within an iteration), each point with its 95%
    interval; a point that could not be measured is marked "n/a"."""
    fig, ax = _figure(title, ylabel)
    has, width = False, 0.5 / max(len(series), 1)
    for k, (name, points) in enumerate(series.items()):
        color, line = f"C{k}", []
        ax.plot([], [], "o-", color=color, label=name)
        for t, est in sorted(points.items()):
            x = t + (k - (len(series) - 1) / 2) * width
            if est is None:
                continue
            has = True
            if est.value is None:
                ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4), textcoords="offset points",
                            ha="center", fontsize=7, color=color)
                continue
            if est.lo is not None:
                ax.errorbar([x], [est.value], yerr=[[est.value - est.lo], [est.hi - est.value]], fmt="none", ecolor=color,
                            capsize=3, linewidth=1)
            line.append((x, est.value))
        if line:
            ax.plot(*zip(*line), "o-", color=color, linewidth=1)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    ts = sorted({t for points in series.values() for t in points})
    if ts:
        ax.set_xticks(ts)
    _save(fig, ax, path, has)


def write_compare(run_dirs: list[str | Path], out: str | Path) -> str:
    """Write the comparison as Markdown to ``out`` and as JSON beside it (same name, .json); returns the table.

    Two plots go beside it (``compare_plots``): held-out accuracy per run and iteration, and its paired difference
    from the first run's; the Markdown links them.
    """
    header, rows, data = compare_runs(run_dirs)
    text = format_compare(header, rows)
    out = Path(out)
    folder = Storage(out.parent)
    names = list(data["runs"])
    accuracy = {n: {int(t): None if v.get(n) is None else Estimate.from_json(v[n])
                    for t, v in data["metrics"].get("eval_accuracy", {}).items()} for n in names}
    paired = {n: {int(t): None if v.get(n) is None else Estimate.from_json(v[n])
                  for t, v in data["metrics"].get(f"eval_accuracy_vs_{names[0]}", {}).items()} for n in names[1:]}
    accuracy_svg, paired_svg = compare_plots(out)
    _runs_plot(accuracy, "held-out accuracy", "accuracy", (folder, accuracy_svg.name))
    _runs_plot(paired, f"held-out accuracy - {names[0]}'s (paired)", "difference", (folder, paired_svg.name), 0.0)
    folder.write_text(out.name, text + f"\n\n![held-out accuracy]({accuracy_svg.name})\n"
                      f"![paired difference from {names[0]}]({paired_svg.name})\n")
    folder.write_text(out.with_suffix(".json").name, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return text


def compare_plots(out: str | Path) -> tuple[Path, Path]:
    """The two SVG files ``write_compare`` writes beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-accuracy.svg"), out.with_name(f"{out.stem}-accuracy-paired.svg")
