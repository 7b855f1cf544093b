"""Proof of the served model: canary log-probs the trainer records, which every engine must reproduce.

An inference engine can serve the wrong weights without an error: the base
model, a stale adapter kept under the same name, another adapter. So when the
trainer writes M(t)'s adapter it also writes ``canaries.json``: a few
(prompt, response) pairs (two kept pairs of the iteration, chosen and
rejected, which training moved most, and one fixed text) with their summed
log-probs under the adapter it just trained and under the base model, computed
by its own model code. An engine, before it first uses an adapter (an engine
restarted by Ray starts with none verified), scores the same canaries with the
adapter loaded and refuses to serve it when any differs by more than
the dtype's ``TOLERANCE`` in nats per response token, naming the engine, the adapter and the
difference. ``distinguishable`` says whether the canaries can tell this adapter
from the base model at all (their gap exceeds the tolerance).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.types import AdapterRef, EngineInfo, ScoreRequest, ScoreResult, ServedModelError

CANARIES_FILE = "canaries.json"
# Nats per response token, by dtype. In float32 the trainer (transformers + PEFT) and vLLM's CPU kernels agree
# on the same adapter to about 1e-5 per token (tests/workers/test_tiny_model.py); half precision rounds each
# logit to 3 significant digits, so engines and trainers differ by up to a few 1e-2 there.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2, "float16": 5e-2}
FIXED = (ScoreRequest("Name a primary colour and say why it is one.",
                      "Red is a primary colour: it cannot be mixed from other colours.\nAnswer: red", "stop"),)


@dataclass(frozen=True)
class Canary:
    prompt: str
    response: str
    finish_reason: str
    num_tokens: int
    logp: float  # under the adapter, as the trainer computed it
    logp_base: float  # under the base model (adapter disabled)

    def request(self) -> ScoreRequest:
        return ScoreRequest(self.prompt, self.response, self.finish_reason)


def pick(pair_rows: list[dict[str, Any]], pairs: int = 2) -> list[ScoreRequest]:
    """The canary texts: chosen and rejected of the first ``pairs`` kept pairs, then the fixed ones."""
    out = []
    for r in [r for r in pair_rows if r.get("kept")][:pairs]:
        out += [ScoreRequest(r["prompt"], r["chosen"], r["chosen_finish_reason"]),
                ScoreRequest(r["prompt"], r["rejected"], r["rejected_finish_reason"])]
    return out + list(FIXED)


def write(folder: Path, dtype: str, requests: list[ScoreRequest], logp: list[float], logp_base: list[float],
          num_tokens: list[int]) -> None:
    """Write ``canaries.json`` into an adapter folder being built by a trainer computing in ``dtype``."""
    rows = [asdict(Canary(r.user_message, r.response, r.finish_reason, n, a, b))
            for r, a, b, n in zip(requests, logp, logp_base, num_tokens)]
    (folder / CANARIES_FILE).write_text(json.dumps({"tolerance_per_token": TOLERANCE[dtype], "canaries": rows}, indent=1))


def load(folder: str | Path) -> tuple[list[Canary], float] | None:
    """(canaries, tolerance per token) of an adapter folder; None when it has no canaries file."""
    path = Path(folder) / CANARIES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Canary(**c) for c in data["canaries"]], float(data["tolerance_per_token"])


def distinguishable(canaries: list[Canary], tolerance: float) -> bool:
    """Whether serving the base model instead of this adapter would fail the check."""
    return any(abs(c.logp - c.logp_base) / max(c.num_tokens, 1) > tolerance for c in canaries)


def prove(adapter: AdapterRef, folder: str | Path, score: Callable[[list[ScoreRequest]], list[ScoreResult]]) -> None:
    """An engine's check of the adapter in ``folder`` before its first use: ``score`` (the engine serving it) scores
    the canaries the trainer recorded, which ``verify`` compares. Nothing to check for a folder without canaries."""
    proof = load(folder)
    if proof is not None:
        verify(adapter, *proof, score([c.request() for c in proof[0]]))


def verify(adapter: AdapterRef, canaries: list[Canary], tolerance: float, served: list[ScoreResult]) -> float:
    """The largest per-token difference between served and recorded log-probs; ServedModelError beyond ``tolerance``.

    Called in the engine's process, which the error names (host:pid).
    """
    here = EngineInfo.here()
    engine = f"{here.host}:{here.pid}"
    worst, worst_i = 0.0, 0
    for i, (c, s) in enumerate(zip(canaries, served)):
        if s.num_tokens != c.num_tokens:
            raise ServedModelError(
                f"engine {engine} serving adapter {adapter.name} ({adapter.path}): canary {i} encodes to "
                f"{s.num_tokens} response tokens, the trainer's to {c.num_tokens}: another tokenizer or model")
        diff = abs(s.logp - c.logp) / max(c.num_tokens, 1)
        if diff > worst:
            worst, worst_i = diff, i
    if worst > tolerance:
        c, s = canaries[worst_i], served[worst_i]
        base = abs(s.logp - c.logp_base) / max(c.num_tokens, 1)
        raise ServedModelError(
            f"engine {engine} does not serve adapter {adapter.name} ({adapter.path}) as trained: canary {worst_i} "
            f"has log-prob {s.logp:.4f} served vs {c.logp:.4f} recorded by the trainer ({worst:.4f} nats/token, "
            f"tolerance {tolerance}); {base:.4f} nats/token from the base model's {c.logp_base:.4f}. Stopping: "
            "everything this engine computed with the adapter would be of another model")
    return worst
