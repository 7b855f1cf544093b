"""`selfreward report RUN_DIR` and `selfreward compare RUN_A RUN_B ...`: what a researcher reads after a run.

``write_report`` renders ``RUN_DIR/report.html`` with PNG plots in
``RUN_DIR/plots/`` (matplotlib, Agg backend): evaluation accuracy, judge
scores (fixed judge M0, self judge, and the self-judged training responses),
win/tie/loss vs M0, the trust numbers (consistency, agreement, label
precision), pairs built/kept with drop reasons, judge-score histograms, the
DPO loss per step, stage times, and a table of sample pairs with their
verdicts. The page is self-contained: no script, style or font is fetched
from anywhere, and every text from the run (prompts, responses, verdicts) is
HTML-escaped. A small inline script marks plots that failed to load.

``compare_runs`` puts several runs side by side, one row per metric and
iteration, one column per run.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.rundir import RunDir, RunDirError
from orchestrator.runlog import TABLE_COLUMNS, _cell, metrics_rows
from orchestrator.storage import Storage

PLOTS_DIR = "plots"
SAMPLE_KEPT, SAMPLE_DROPPED = 6, 4


def _name(rd: RunDir) -> str:
    return rd.root.rstrip("/").rsplit("/", 1)[-1]


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage, rel = path
    storage.write_bytes(rel, buf.getvalue())


def _line_plot(rows: list[dict[str, Any]], lines: list[tuple[str, str]], title: str, ylabel: str, path: tuple[Storage, str],
               ylim: tuple[float, float] | None = None) -> None:
    fig, ax = _figure(title, ylabel)
    has = False
    for key, label in lines:
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, marker="o", label=label)
            has = True
    if ylim:
        ax.set_ylim(*ylim)
    ax.xaxis.get_major_locator().set_params(integer=True)
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


def _plots(rd: RunDir, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Write every plot; returns (file name, caption) in page order."""
    st = rd.storage

    def out(name: str) -> tuple[Storage, str]:
        return st, f"{PLOTS_DIR}/{name}"

    its = [r for r in rows if r["kind"] == "iteration"]
    runs = _runs(rows)
    judged: dict[int, list[float]] = {}
    for r in its:
        # Self-judge scores of the responses trained on, from rewards.parquet.
        rewards = f"{rd.iter_dir(r['iteration'])}/rewards.parquet"
        judged[r["iteration"]] = [v for v in rd.read_table(rewards).column("judge_mean").to_pylist() if v is not None] \
            if rd.exists(rewards) else []
        vals = judged[r["iteration"]]
        r["_train_judge"] = sum(vals) / len(vals) if vals else None
    plots = []

    _line_plot(runs, [("eval_accuracy", "held-out verifiable accuracy")], "Accuracy (greedy, exact match)", "accuracy",
               out("accuracy.png"), (0, 1))
    plots.append(("accuracy.png", "Held-out verifiable accuracy of M0 (iteration 0) and of each M(t)."))
    _line_plot(runs, [("eval_fixed_judge", "fixed judge M0 (held-out)"), ("eval_self_judge", "self judge (held-out)"),
                           ("_train_judge", "self judge (training responses)")],
               "Judge scores (0-5 rubric)", "mean score", out("judge_scores.png"), (0, 5))
    plots.append(("judge_scores.png", "Mean rubric score of held-out responses by the fixed judge M0 and by the model "
                  "itself, and the mean self-judged score of each iteration's training responses. A self score rising "
                  "faster than the fixed score is reward inflation."))
    wins = [r for r in its if r.get("win_counts")]
    _stacked_bars([r["iteration"] for r in wins],
                  {k: [r["win_counts"][k] for r in wins] for k in ("win", "tie", "loss", "invalid")},
                  "M(t) vs M0, position-swapped pairwise judging by M0", "held-out prompts", out("win_rate.png"))
    plots.append(("win_rate.png", "Outcomes of M(t) against M0 on held-out instructions (win, tie, loss, invalid "
                  "verdict)."))
    _line_plot(its, [("mean_consistency", "mean consistency C"), ("agreement_rate", "judge/implicit agreement"),
                     ("kept_label_precision", "kept-pair label precision"),
                     ("dropped_label_precision", "dropped-pair label precision")],
               "Trust in the self-rewards", "rate", out("trust.png"), (0, 1))
    plots.append(("trust.png", "Cross-iteration consistency, internal-reward agreement, and label precision of kept vs "
                  "dropped pairs (on prompts with reference answers)."))
    reasons = sorted({k for r in its for k in r.get("drops", {})})
    _stacked_bars([r["iteration"] for r in its],
                  {"kept": [r["pairs_kept"] for r in its], **{k: [r["drops"].get(k, 0) for r in its] for k in reasons}},
                  "Candidate pairs: kept and drop reasons", "pairs", out("pairs.png"))
    plots.append(("pairs.png", "Every candidate pair per iteration: kept, or dropped with its reason."))
    fig, ax = _figure("Self-judge scores of training responses", "responses", "mean judge score")
    has = False
    for t, vals in judged.items():
        if vals:
            ax.hist(vals, bins=[i * 0.5 for i in range(11)], histtype="step", linewidth=1.5, label=f"iter {t}")
            has = True
    _save(fig, ax, out("score_hist.png"), has)
    plots.append(("score_hist.png", "Distribution of the mean self-judge score per response, per iteration."))
    fig, ax = _figure("DPO loss per optimizer step", "loss", "optimizer step (all iterations)")
    steps = [r for r in rows if r["kind"] == "train_step"]
    if steps:
        ax.plot(range(1, len(steps) + 1), [s["loss"] for s in steps], marker=".", label="loss")
        n = 0
        for t in sorted({s["iteration"] for s in steps})[:-1]:
            n += sum(1 for s in steps if s["iteration"] == t)
            ax.axvline(n + 0.5, color="gray", linestyle=":")
    _save(fig, ax, out("dpo_loss.png"), bool(steps))
    plots.append(("dpo_loss.png", "Weighted preference loss of each optimizer step; dotted lines separate iterations."))
    stages = [s for s in ("generate", "judge", "score", "select", "train", "eval")
              if any(s in r.get("stage_seconds", {}) for r in runs)]
    _stacked_bars([r["iteration"] for r in runs], {s: [r.get("stage_seconds", {}).get(s, 0.0) for r in runs] for s in stages},
                  "Time per stage", "seconds", out("stage_seconds.png"))
    plots.append(("stage_seconds.png", "Wall time of each stage (iteration 0: M0's evaluation)."))
    return plots


# --- the page ------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; width: 40em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; max-height: 24em; overflow: auto; }
.text { white-space: pre-wrap; max-width: 28em; }
.missing { color: #b00; }
"""

# Marks every plot that did not load (and counts them in data attributes, read by the tests).
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.plot"));
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  imgs.forEach(function (i) {
    if (loaded.indexOf(i) < 0) {
      var note = document.createElement("p");
      note.className = "missing";
      note.textContent = "plot missing: " + i.getAttribute("src");
      i.parentNode.insertBefore(note, i);
    }
  });
  document.body.setAttribute("data-plots-total", imgs.length);
  document.body.setAttribute("data-plots-loaded", loaded.length);
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
    head = "".join(f"<th>{_e(h)}</th>" for h, _, _ in TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(_cell(r, k, s))}</td>' for _, k, s in TABLE_COLUMNS) + "</tr>"
                   for r in runs)
    return f"<table><tr>{head}</tr>{body}</table>"


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
        f'<figure><img class="plot" src="{PLOTS_DIR}/{name}" alt="{_e(caption)}" width="640" height="360">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for name, caption in plots
    )
    drops = Counter()
    for r in rows:
        if r["kind"] == "iteration":
            drops.update(r.get("drops", {}))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>selfreward report: {_e(_name(rd))}</title>
<style>{_STYLE}</style><script>{_CHECK_SCRIPT}</script></head>
<body>
<h1>selfreward report: {_e(_name(rd))}</h1>
<p>Run directory <code>{_e(rd.root)}</code>, created {_e(state.get("created_at"))}, config hash
<code>{_e(str(state.get("config_hash", ""))[:12])}</code>; {len(its)} iteration(s) committed.
Library versions: {_e(", ".join(f"{k} {v}" for k, v in sorted(state.get("library_versions", {}).items())))}.</p>
<h2>Per iteration</h2>
<p>Iteration 0 is the base model M0. <em>fixed judge</em>: M0's rubric score of held-out responses; <em>self judge</em>:
the model's own; <em>win</em>/<em>tie</em>: against M0, position-swapped; <em>kept prec</em>: label precision of kept
pairs on prompts with reference answers. Drops over all iterations: {_e(", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")}.</p>
{_metrics_table(runs)}
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

COMPARE_METRICS = [
    ("accuracy", "eval_accuracy", ".3f"), ("fixed judge", "eval_fixed_judge", ".2f"),
    ("self judge", "eval_self_judge", ".2f"), ("win rate", "win_rate", ".2f"), ("tie rate", "tie_rate", ".2f"),
    ("mean consistency", "mean_consistency", ".2f"), ("agreement", "agreement_rate", ".2f"),
    ("kept-label precision", "kept_label_precision", ".2f"), ("pairs kept", "pairs_kept", "d"),
    ("pairs built", "pairs_built", "d"), ("DPO loss", "dpo_loss", ".4f"), ("seconds", "iteration_seconds", ".0f"),
]


def compare_runs(run_dirs: list[str | Path]) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """(header, rows, data) of the side-by-side table: one row per metric and iteration, one column per run.

    Raises RunDirError for a directory that is not a run directory.
    """
    if len(run_dirs) < 1:
        raise RunDirError("compare needs at least one run directory")
    names = [str(d).rstrip("/").rsplit("/", 1)[-1] for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    per_run = {}
    for name, d in zip(names, run_dirs):
        rd, _ = _load_state(d)
        per_run[name] = {r["iteration"]: r for r in _runs(metrics_rows(rd))}
    iterations = sorted({t for runs in per_run.values() for t in runs})
    header = ["metric", "iter", *names]
    rows, data = [], {}
    for label, key, spec in COMPARE_METRICS:
        for t in iterations:
            values = [per_run[n].get(t, {}).get(key) for n in names]
            if all(v is None for v in values):
                continue
            rows.append([label, str(t), *["-" if v is None else format(v, spec) for v in values]])
            data.setdefault(key, {})[str(t)] = dict(zip(names, values))
    return header, rows, {"runs": dict(zip(names, map(str, run_dirs))), "metrics": data}


def format_compare(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def write_compare(run_dirs: list[str | Path], out: str | Path) -> str:
    """Write the comparison as Markdown to ``out`` and as JSON beside it (same name, .json); returns the table."""
    header, rows, data = compare_runs(run_dirs)
    text = format_compare(header, rows)
    out = Path(out)
    folder = Storage(out.parent)
    folder.write_text(out.name, text + "\n")
    folder.write_text(out.with_suffix(".json").name, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return text
