"""What a run tells its user while it runs: progress bars, the per-iteration line and table, metrics.jsonl, TensorBoard.

Progress bars go to stderr (tqdm; ``TQDM_DISABLE=1`` turns them off); the
per-iteration line and table go to the run's log (stdout). ``metrics.jsonl``
and the TensorBoard event files under ``RUN_DIR/tensorboard/`` are rebuilt
from the committed ``metrics.json`` files after every iteration, so a
resumed run never duplicates or loses a point.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from orchestrator.evaluation.stats import Estimate
from orchestrator.reporting.metrics import METRICS, cell, filter_lines, kept_against_chance, metric_rows, show
from orchestrator.run.rundir import RunDir

TENSORBOARD_DIR = "tensorboard"


class Progress:
    """A progress bar over one stage's items: items done, tokens/s and the ETA (from tqdm's rate)."""

    def __init__(self, desc: str, total: int, unit: str = "req") -> None:
        self._bar = tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stderr, mininterval=1.0, leave=False,
                         dynamic_ncols=True)
        self._tokens = 0
        self._t0 = time.monotonic()

    def advance(self, items: int, tokens: int = 0, **postfix: Any) -> None:
        self._tokens += tokens
        elapsed = time.monotonic() - self._t0
        if self._tokens:
            postfix["tok/s"] = f"{self._tokens / elapsed:.0f}" if elapsed > 0 else "-"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(items)

    def close(self) -> None:
        self._bar.close()


class RemoteProgress:
    """A progress bar fed by messages from a Ray worker (``workers.progress``).

    Messages: ``{"total": N, "unit": U}`` opens the bar, then
    ``{"n": k, "tokens": T, ...}`` advances it (other keys are shown as postfix);
    other messages are ignored.
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self._bar: Progress | None = None

    def __call__(self, msg: dict[str, Any]) -> None:
        if "total" in msg:
            self.close()
            self._bar = Progress(self.desc, msg["total"], msg.get("unit", "item"))
        elif self._bar is not None and "n" in msg:
            extra = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in msg.items() if k not in ("n", "tokens")}
            self._bar.advance(msg.get("n", 1), msg.get("tokens", 0), **extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_iteration(m: dict[str, Any]) -> str:
    """One summary line: responses, judge, pairs, label trust numbers, loss, evaluation, timings; every rate and mean
    with its 95% interval and n, and a number that cannot be measured with the reason. Then a line per filter."""
    drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none dropped"
    loss = show(m["dpo_loss"], ".4f")
    if m.get("epochs", 0) > 1:
        loss = f"{m['dpo_loss_first']:.4f} (epoch 1) -> {loss} (epoch {m['epochs']})"
    line = (
        f"iter {m['iteration']}: {m['responses']} responses ({m['tokens_generated']} tokens, "
        f"{show(m['generation_tokens_per_s'], '.0f')} tok/s) | judge parse {cell(m, 'judge_parse_rate')}, "
        f"AUROC {cell(m, 'judge_auroc', why=True)} | pairs {m['pairs_built']} built, {m['pairs_kept']} kept ({drops}) | "
        f"consistency {cell(m, 'mean_consistency', why=True)}{_undefined(m)}, "
        f"agreement {cell(m, 'agreement_rate', why=True)}, likelihood agreement {cell(m, 'likelihood_agreement_rate')}, "
        f"kept-label precision {cell(m, 'kept_label_precision', why=True)}, against a random drop: {kept_against_chance(m)} | loss {loss}, {m['optimizer_steps']} steps"
    )
    if "eval_accuracy" in m:
        line += (f" | eval: accuracy {cell(m, 'eval_accuracy')} ({cell(m, 'eval_accuracy_vs_m0')} vs M0), "
                 f"fixed judge {cell(m, 'eval_fixed_judge', why=True)}, win rate {cell(m, 'win_rate', why=True)}")
    return "\n".join([line + f" | {m['iteration_seconds']:.0f}s", *filter_lines(m)])


def _undefined(m: dict[str, Any]) -> str:
    """How many prompts had no consistency C, where some had one (CREAM then uses the mean C for them)."""
    n, defined = m.get("consistency_undefined_prompts", 0), m.get("consistency_prompts", 0)
    return f" ({n} prompt(s) undefined)" if n and defined else ""


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, title: str = "metric") -> str:
    """The table metrics (``metrics.metric_rows``) as rows, one column per metrics row (M0 first, as "M0").

    ``columns``: the column headers (default M0, M1, ...).
    """
    lines = [[title, *(columns or [f"M{r['iteration']}" for r in rows])]]
    lines += [[label, *cells] for label, cells in metric_rows(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    return "\n".join([out[0], "  ".join("-" * w for w in widths), *out[1:]])


def metrics_rows(rd: RunDir) -> list[dict[str, Any]]:
    """The committed metrics in order: the baseline row (M0's evaluation) if any, train steps, iterations."""
    lines: list[dict[str, Any]] = []
    baseline = f"{rd.iter_dir(0)}/metrics.json"
    if rd.exists(baseline):
        lines.append({"kind": "baseline", **rd.read_json(baseline)})
    t = 1
    while rd.exists(f"{rd.iter_dir(t)}/metrics.json"):
        rec = rd.record(rd.stage_key(t, "train"))
        for step in (rec.summary.get("steps", []) if rec else []):
            lines.append({"kind": "train_step", "iteration": t, **step})
        lines.append({"kind": "iteration", **rd.read_json(f"{rd.iter_dir(t)}/metrics.json")})
        t += 1
    return lines


def write_metrics_jsonl(rd: RunDir) -> list[dict[str, Any]]:
    """Rewrite metrics.jsonl from the committed metrics (see ``metrics_rows``); returns its rows."""
    lines = metrics_rows(rd)
    rd.storage.write_text("metrics.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    return lines


def write_tensorboard(rd: RunDir, rows: list[dict[str, Any]]) -> None:
    """Rebuild RUN_DIR/tensorboard/ from the metrics rows (built beside it, then swapped in).

    Iteration scalars use the iteration as step (the baseline M0 is step 0);
    train-step scalars (``step/*``) use the global optimizer step across iterations.
    """
    import tempfile

    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="selfreward-tb-") as local:
        _write_events(SummaryWriter(logdir=local), rows)
        staged = rd.staging_dir(TENSORBOARD_DIR)
        rd.storage.upload_dir(local, staged)
        rd.commit_dir(staged, TENSORBOARD_DIR)


def scalars(rows: list[dict[str, Any]]) -> Iterator[tuple[str, float, int]]:
    """(tag, value, step) of every number in the metrics rows, as every tracker records them (one declaration per
    metric: ``reporting.metrics.METRICS``). Iteration scalars have the iteration as step (M0: 0), an interval as
    ``<tag>/ci95_lo`` and ``/ci95_hi``; train-step scalars (``step/*``) the global optimizer step across iterations."""
    global_step = 0
    for row in rows:
        if row["kind"] == "train_step":
            global_step += 1
            for key in ("loss", "reward_accuracy", "reward_margin"):
                yield f"step/{key}", row[key], global_step
            continue
        step = 0 if row["kind"] == "baseline" else row["iteration"]
        for metric in METRICS:
            value = metric.get(row) if metric.tag else None
            if isinstance(value, Estimate):
                if value.value is not None:
                    yield metric.tag, value.value, step
                if value.lo is not None:
                    yield f"{metric.tag}/ci95_lo", value.lo, step
                    yield f"{metric.tag}/ci95_hi", value.hi, step
            elif value is not None:
                yield metric.tag, value, step
        for stage, seconds in row.get("stage_seconds", {}).items():
            yield f"time/{stage}_seconds", seconds, step


def _write_events(writer: Any, rows: list[dict[str, Any]]) -> None:
    for tag, value, step in scalars(rows):
        writer.add_scalar(tag, value, step)
    writer.close()
