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
from typing import Any

from tqdm import tqdm

from orchestrator.rundir import RunDir

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


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_iteration(m: dict[str, Any]) -> str:
    """One summary line: responses, judge parse rate, pairs, label trust numbers, loss, evaluation, timings."""
    fail = m["judge_parse_failure_rate"]
    parse = None if fail is None else 100 * (1 - fail)
    drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none dropped"
    loss = _fmt(m["dpo_loss"], ".4f")
    if m.get("epochs", 0) > 1:
        loss = f"{m['dpo_loss_first']:.4f} (epoch 1) -> {loss} (epoch {m['epochs']})"
    kept = m["label_quality"]["kept"]
    precision = "n/a" if kept["precision"] is None else f"{kept['precision']:.2f} ({kept['right']}/{kept['decided']})"
    return (
        f"iter {m['iteration']}: {m['responses']} responses ({m['tokens_generated']} tokens, "
        f"{_fmt(m['generation_tokens_per_s'], '.0f')} tok/s) | judge parse {_fmt(parse, '.1f')}% "
        f"({_fmt(m['judge_tokens_per_s'], '.0f')} tok/s) | pairs {m['pairs_built']} built, {m['pairs_kept']} kept "
        f"({drops}) | consistency {_fmt(m['mean_consistency'], '.2f')}, agreement {_fmt(m['agreement_rate'], '.2f')}, "
        f"kept-label precision {precision} | loss {loss}, {m['optimizer_steps']} steps | "
        f"eval: accuracy {_fmt(m.get('eval_accuracy'), '.3f')}, fixed judge {_fmt(m.get('eval_fixed_judge'), '.2f')}, "
        f"win rate {_fmt(m.get('win_rate'), '.2f')} | {m['iteration_seconds']:.0f}s"
    )


# (header, key, format) of the compact table; a key missing from a row prints as "-".
TABLE_COLUMNS = [
    ("t", "iteration", "d"), ("accuracy", "eval_accuracy", ".3f"), ("fixed judge", "eval_fixed_judge", ".2f"),
    ("self judge", "eval_self_judge", ".2f"), ("win", "win_rate", ".2f"), ("tie", "tie_rate", ".2f"),
    ("consistency", "mean_consistency", ".2f"), ("kept prec", "kept_label_precision", ".2f"),
    ("kept/built", None, ""), ("loss", "dpo_loss", ".4f"), ("seconds", "iteration_seconds", ".0f"),
]


def _cell(row: dict[str, Any], key: str | None, spec: str) -> str:
    if key is None:
        return f"{row['pairs_kept']}/{row['pairs_built']}" if "pairs_built" in row else "-"
    if key not in row:
        return "-"
    return _fmt(row[key], spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A compact fixed-width table, one row per metrics row (the baseline M0 first, as iteration 0)."""
    cells = [[h for h, _, _ in TABLE_COLUMNS]] + [[_cell(r, k, s) for _, k, s in TABLE_COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


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


# Scalars written per iteration (and for the baseline, at step 0): (tag, key).
_SCALARS = [
    ("eval/accuracy", "eval_accuracy"), ("eval/fixed_judge", "eval_fixed_judge"), ("eval/self_judge", "eval_self_judge"),
    ("eval/win_rate", "win_rate"), ("eval/tie_rate", "tie_rate"), ("eval/loss_rate", "loss_rate"),
    ("trust/mean_consistency", "mean_consistency"), ("trust/agreement_rate", "agreement_rate"),
    ("trust/kept_label_precision", "kept_label_precision"), ("trust/dropped_label_precision", "dropped_label_precision"),
    ("pairs/built", "pairs_built"), ("pairs/kept", "pairs_kept"), ("judge/parse_failure_rate", "judge_parse_failure_rate"),
    ("generate/tokens", "tokens_generated"), ("generate/tokens_per_s", "generation_tokens_per_s"),
    ("train/dpo_loss", "dpo_loss"), ("train/reward_accuracy", "reward_accuracy"), ("train/reward_margin", "reward_margin"),
    ("time/iteration_seconds", "iteration_seconds"),
]


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


def _write_events(writer: Any, rows: list[dict[str, Any]]) -> None:
    global_step = 0
    for row in rows:
        if row["kind"] == "train_step":
            global_step += 1
            for key in ("loss", "reward_accuracy", "reward_margin"):
                writer.add_scalar(f"step/{key}", row[key], global_step)
            continue
        step = 0 if row["kind"] == "baseline" else row["iteration"]
        for tag, key in _SCALARS:
            if row.get(key) is not None:
                writer.add_scalar(tag, row[key], step)
        for stage, seconds in row.get("stage_seconds", {}).items():
            writer.add_scalar(f"time/{stage}_seconds", seconds, step)
    writer.close()
