"""Branching a run: a new run dir that starts from another run's committed stages.

``selfreward run CONFIG --run-dir NEW --from SOURCE[@iter_NNN/stage]``
shares every stage SOURCE committed up to and including that stage (all
of them without ``@``): NEW's state.json records them as its own, with the
same sha256, and their artifacts are hard links to SOURCE's files (copies
only where the two run dirs are on different file systems). Several
recipes then train from identical samples, verdicts and log-probs, and the
branch is a run dir like any other: it resumes, is redone and reported on
its own, and outlives SOURCE.

A branch is refused when the config differs from SOURCE's in a field that
one of the shared stages reads (``STAGE_READS``): their artifacts would not
be what this config computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.config import RunConfig, changed_fields, safe_fields
from orchestrator.run.rundir import STAGE_ORDER, RunDir, RunDirError

# The config fields (dotted names or whole sections) each stage's artifact depends on, besides its inputs (the
# stages before it, which a branch shares too). A field no entry names is taken to change every stage.
STAGE_READS: dict[str, tuple[str, ...]] = {
    "generate": ("data", "generation"),
    "judge": ("judge",),
    "score": ("scoring", "selection.mc_dropout.passes", "selection.mc_dropout.p"),
    "select": ("selection", "judge.score_source", "dpo.loss", "dpo.soft_temperature", "dpo.beta"),
    "train": ("lora", "dpo", "scoring"),
    "eval": ("eval", "judge.max_tokens", "judge.constrained", "judge.rubric_text", "judge.pairwise_prompt_text",
             "data.overlong"),
    "metrics": (),
}
EVERY_STAGE = ("seed", "model", "resources")  # the sampling seeds, the model itself, the engines and trainers

_FROM_RE = re.compile(r"^(?P<source>.+)@(?P<stage>iter_\d{3}/[a-z_]+)$")


def readers(field: str) -> tuple[str, ...]:
    """The stages whose artifacts depend on config ``field`` (every stage for a field ``STAGE_READS`` does not name)."""
    def names(entry: str) -> bool:
        return field == entry or field.startswith(entry + ".")

    found = tuple(stage for stage, entries in STAGE_READS.items() if any(names(e) for e in entries))
    return found or STAGE_ORDER


@dataclass(frozen=True)
class Shared:
    """What a new branch shares: the source run dir, the last shared stage and each shared stage's record."""

    source: str  # the source run dir's location (a local path or a URI)
    stage: str
    stages: dict[str, dict[str, Any]]

    def to_state(self) -> dict[str, Any]:
        return {"run_dir": self.source, "stage": self.stage, "stages": self.stages}


def parse_from(text: str) -> tuple[str, str | None]:
    """(source run dir, last shared stage or None for all) of a ``--from`` argument."""
    m = _FROM_RE.match(text)
    return (m["source"], m["stage"]) if m else (text, None)


def plan_branch(text: str, cfg: RunConfig, run_dir: str, model_fingerprint: str) -> Shared:
    """The stages ``--from text`` shares into ``run_dir``, every one checked; creates and changes nothing.

    Raises RunDirError naming the problem: the source is not a run dir or is
    ``run_dir`` itself, the stage is not one it committed, a shared artifact is
    missing or damaged (sha256), the base model differs, or the config
    differs in a field a shared stage reads.
    """
    where, upto = parse_from(text)
    if not where.strip():
        raise RunDirError(f"--from {text!r}: give the run dir to branch from, e.g. runs/srlm@iter_001/score")
    src, target = RunDir(where), RunDir(run_dir)
    if src.root == target.root:
        raise RunDirError(f"--from {text}: that is the run dir itself (--run-dir {run_dir}); branch into a new one")
    if target.exists("state.json"):  # the same command again: a branch that has all its stages needs no source
        done = target.load_state().get("branched_from")
        if done and done.get("complete") and done.get("run_dir") == src.root and (upto is None or done["stage"] == upto):
            return Shared(done["run_dir"], done["stage"], done["stages"])
    state = src.load_state()
    committed = sorted(state["stages"], key=src.stage_sort_key)
    if not committed:
        raise RunDirError(f"--from {text}: {src.root} has committed no stage yet; there is nothing to share")
    upto = upto or committed[-1]
    if upto not in state["stages"]:
        raise RunDirError(f"--from {text}: {upto} is not a committed stage of {src.root} "
                          f"(committed: {', '.join(committed)})")
    keys = [k for k in committed if src.stage_sort_key(k) <= src.stage_sort_key(upto)]
    known = state.get("model_fingerprint")
    if model_fingerprint and known and known != model_fingerprint:
        raise RunDirError(f"--from {text}: {src.root} was run with another base model than model.path "
                          f"{cfg.model.path!r} holds now (fingerprint {known[:12]} != {model_fingerprint[:12]})")
    frozen = src.frozen_config()
    stages_of = {k.partition("/")[2] for k in keys}
    conflicts = []
    for name, theirs, ours in changed_fields(frozen, cfg):
        reading = [s for s in readers(name) if s in stages_of]
        if name not in safe_fields() and reading:
            first = next(k for k in keys if k.partition("/")[2] in reading)
            conflicts.append(f"  {name}: {theirs!r} ({where}) -> {ours!r} (now), read by {first}")
    if conflicts:
        raise RunDirError(
            f"refusing to branch from {src.root} at {upto}: the config differs from {src.where(src.config_path)} in "
            "fields the shared stages read, so their artifacts are not what this config computes:\n"
            + "\n".join(conflicts) + "\nBranch at a stage before the first that reads them, or make them equal.")
    for k in keys:
        src.record(k)  # present and unchanged since it was committed (sha256)
    return Shared(str(src.root), upto, {k: state["stages"][k] for k in keys})
