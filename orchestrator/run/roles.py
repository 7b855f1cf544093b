"""Which model plays which part at iteration t: M(t) is the adapter the run committed at iteration t."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.run.rundir import RunDir
from workers.types import AdapterRef


def adapter_of(rd: RunDir, t: int) -> AdapterRef | None:
    """M(t): the adapter trained at iteration t; None for M0, the base model.

    Its digest is the committed folder's sha256 (empty before the train stage commits).
    """
    if t <= 0:
        return None
    rec = rd.committed(rd.stage_key(t, "train"))
    return AdapterRef(name=f"iter_{t:03d}", path=rd.storage.uri(f"{rd.iter_dir(t)}/adapter"),
                      digest=rec["sha256"] if rec else "")


def model_name(adapter: AdapterRef | None) -> str:
    """The name a model goes by in artifacts and logs: "base" for M0, else its adapter's name."""
    return "base" if adapter is None else adapter.name


@dataclass(frozen=True)
class Models:
    """Which model plays which part at iteration t (None = the base model M0)."""

    policy: AdapterRef | None  # M(t-1): generates, judges, is trained from
    previous: AdapterRef | None  # M(t-2); meaningful only when has_previous
    has_previous: bool  # t >= 2
    reference: AdapterRef | None  # base, or the previous iterate

    @staticmethod
    def at(rd: RunDir, t: int, reference: str) -> Models:
        prev = adapter_of(rd, t - 2)
        return Models(adapter_of(rd, t - 1), prev, t >= 2, None if reference == "base" else prev)

    def describe(self) -> dict[str, str | None]:
        return {"policy": model_name(self.policy), "previous": model_name(self.previous) if self.has_previous else None,
                "reference": model_name(self.reference)}

    @property
    def policy_is_reference(self) -> bool:
        """The policy is the reference model itself (iteration 1): implicit rewards are undefined there."""
        return self.policy == self.reference

    @property
    def previous_is_reference(self) -> bool:
        """The previous model is the reference (iteration 2 with the base model as reference)."""
        return self.has_previous and self.previous == self.reference
