"""What a run tells its user: the per-iteration line and metrics.jsonl."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.rundir import RunDir, atomic_write_bytes


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_iteration(m: dict[str, Any]) -> str:
    """One summary line: responses, judge parse rate, pairs, label trust numbers, loss, timings."""
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
        f"kept-label precision {precision} | loss {loss}, {m['optimizer_steps']} steps | {m['iteration_seconds']:.0f}s"
    )


def write_metrics_jsonl(rd: RunDir) -> None:
    """Rewrite metrics.jsonl from the committed iterations: a line per train step, then per iteration."""
    lines = []
    t = 1
    while (rd.iter_dir(t) / "metrics.json").is_file():
        rec = rd.record(rd.stage_key(t, "train"))
        for step in (rec.summary.get("steps", []) if rec else []):
            lines.append({"kind": "train_step", "iteration": t, **step})
        lines.append({"kind": "iteration", **RunDir.read_json(rd.iter_dir(t) / "metrics.json")})
        t += 1
    atomic_write_bytes(rd.root / "metrics.jsonl", "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines).encode())
