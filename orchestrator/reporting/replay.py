"""`selfreward replay RUN_DIR --recipe A.yaml --recipe B.yaml ...`: every recipe's selection on one run's labels.

Recipes are compared fairly only on the same data: a separate run per recipe
has its own responses and its own judge noise. Replay recomputes the select
stage of every committed iteration of one run, from its committed
generations, judgments and rewards alone (no engine, seconds), once per
recipe, and puts the label quality of each side by side: pairs built, kept,
decided, kept-label precision with its 95% interval over prompts, a random
drop of the same size from the same candidates, the lift over it (with its
interval over prompts) and the verdict, per filter too. A second table puts
every labeller on the same decided candidate pairs: the pair's own label,
the likelihood, the implicit reward, and the controls any of them must
beat (the longer response, the response that stopped). A third says how
well each uncertainty signal (MC-dropout, the judge's samples, consistency,
the likelihood's margin) ranks the labels' errors, beside length controls.

The run's data stay what they are: its responses, verdicts, judge samples
and log-probs. A recipe contributes its selection (pair strategy, filters,
soft labels). A recipe that reads a signal the run did not collect (the
previous judge's verdicts, expected scores, MC-dropout passes, implicit
rewards against another reference, held-out verdicts) is refused, naming
the signal and the config field. ``jobs/configs/study-cpu.yaml`` collects
every signal the shipped recipes read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig, load_config
from orchestrator.evaluation.labels import CERTAINTY_SIGNALS, LABELLERS, error_ranking, label_quality, labellers
from orchestrator.evaluation.stats import Estimate
from orchestrator.reporting.metrics import against_chance, show
from orchestrator.rewards.selection import make_selection, select_iteration
from orchestrator.run.roles import Models
from orchestrator.run.rundir import RunDir, RunDirError


class ReplayError(ValueError):
    """A recipe cannot be replayed on a run; the message names the recipe, the signal and the config field."""


@dataclass(frozen=True)
class Recipe:
    name: str
    cfg: RunConfig


def missing_signal(recipe: RunConfig, run: RunConfig) -> str | None:
    """What ``recipe`` reads that ``run`` did not collect, or None when it can be replayed on it."""
    s, r = recipe.selection, run.selection
    if s.consistency.mode != "off" and s.consistency.source == "judge" and not run.judge.previous_judge:
        return "the previous judge's verdicts (selection.consistency.source=judge needs judge.previous_judge)"
    if recipe.judge.score_source == "expected" and not run.judge.expected_score:
        return "the judge's expected scores (judge.score_source=expected needs judge.expected_score)"
    if s.mc_dropout.passes > 0 and s.mc_dropout.fraction > 0 and (
            (r.mc_dropout.passes, r.mc_dropout.p) != (s.mc_dropout.passes, s.mc_dropout.p)):
        return (f"MC-dropout passes={s.mc_dropout.passes}, p={s.mc_dropout.p} (selection.mc_dropout); the run has "
                f"passes={r.mc_dropout.passes}, p={r.mc_dropout.p}")
    reads_implicit = ((s.agreement.enabled and s.agreement.signal == "implicit")
                      or (s.consistency.mode != "off" and s.consistency.source == "implicit")
                      or (s.mc_dropout.passes > 0 and s.mc_dropout.fraction > 0))
    if reads_implicit and recipe.scoring.reference != run.scoring.reference:
        return (f"implicit rewards against scoring.reference={recipe.scoring.reference}; the run scored against "
                f"{run.scoring.reference}")
    if (s.judge_uncertainty.p_min is not None or (s.agreement.enabled and s.agreement.require_confident)) \
            and run.judge.judge_samples < 2:
        return "held-out verdicts (selection.judge_uncertainty needs judge.judge_samples >= 2 in the run)"
    return None


def load_recipes(paths: list[str | Path], run: RunConfig, where: str, overrides: tuple[str, ...] = ()) -> list[Recipe]:
    """The recipes' configs with ``overrides`` applied to each, each checked against what the run collected
    (ReplayError naming the first gap)."""
    recipes = []
    for path in paths:
        cfg = load_config(path, overrides)
        gap = missing_signal(cfg, run)
        if gap is not None:
            raise ReplayError(f"recipe {path} cannot be replayed on {where}: it needs {gap}")
        recipes.append(Recipe(Path(path).stem, cfg))
    names = [r.name for r in recipes]
    if len(set(names)) < len(names):
        recipes = [Recipe(str(p), r.cfg) for p, r in zip(paths, recipes)]
    return recipes


def committed_iterations(rd: RunDir) -> list[int]:
    """Iterations whose generations, judgments and rewards are committed (verified by sha256)."""
    out, t = [], 1
    while all(rd.record(rd.stage_key(t, stage)) is not None for stage in ("generate", "judge", "score")):
        out.append(t)
        t += 1
    return out


def replay(run_dir: str | Path, recipe_paths: list[str | Path], overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every recipe's select stage on every committed iteration of the run, and its label quality.

    ``overrides``: dotted config overrides applied to every recipe (e.g. ``selection.strategy=margin``, to compare
    the filters on every within-prompt pair). Returns {"run", "overrides", "iterations", "recipes": {name: {t:
    {"pairs_built", "pairs_kept", "label_quality"}}}}.
    Raises RunDirError for a directory that is not a run, ReplayError for a recipe it cannot replay.
    """
    rd = RunDir(run_dir)
    rd.load_state()
    run = rd.frozen_config()
    recipes = load_recipes(recipe_paths, run, rd.root, tuple(overrides))
    iterations = committed_iterations(rd)
    if not iterations:
        raise RunDirError(f"{rd.root} has no iteration with committed generations, judgments and rewards to replay")
    out: dict[str, Any] = {"run": rd.root, "overrides": list(overrides), "iterations": iterations, "recipes": {}}
    for t in iterations:
        d = rd.iter_dir(t)
        gens, judg, rewards = (rd.read_table(f"{d}/{name}.parquet") for name in ("generations", "judgments", "rewards"))
        models = Models.at(rd, t, run.scoring.reference)
        for recipe in recipes:
            pairs = select_iteration(gens, rewards, judg, make_selection(recipe.cfg), models)
            out["recipes"].setdefault(recipe.name, {})[t] = {
                "pairs_built": pairs.num_rows, "pairs_kept": sum(pairs["kept"].to_pylist()),
                "label_quality": label_quality(pairs), "labellers": labellers(pairs, gens),
                "error_ranking": error_ranking(pairs, gens),
            }
    return out


def recipe_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the side-by-side table: one row per recipe, iteration and pair set (kept, each filter)."""
    header = ["recipe", "t", "pairs", "built", "kept", "decided", "label precision", "random drop of the same size",
              "dropped / failed precision"]
    rows = []
    for name, by_t in result["recipes"].items():
        for t, r in by_t.items():
            q = r["label_quality"]
            sets = [("kept", q["kept"], q["dropped"])] + [(f"filter {f}", v["passed"], v["failed"])
                                                          for f, v in q["by_filter"].items()]
            for label, passed, failed in sets:
                rows.append([name, str(t), label, str(r["pairs_built"]), str(passed["pairs"]), str(passed["decided"]),
                             show(Estimate.from_json(passed["precision"]), ".2f", why=True), against_chance(passed),
                             show(Estimate.from_json(failed["precision"]), ".2f", why=True)])
    return header, rows


def labeller_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the controls table: per recipe and iteration, every labeller on the same decided
    candidate pairs, beside the pair's own label on the very pairs it labels."""
    header = ["recipe", "t", "labeller", "labels / decided pairs", "its precision", "the pair's label on those pairs"]
    rows = []
    for name, by_t in result["recipes"].items():
        for t, r in by_t.items():
            for labeller in LABELLERS:
                v = r["labellers"][labeller]
                rows.append([name, str(t), labeller, f"{v['labelled']}/{v['decided']}",
                             show(Estimate.from_json(v["precision"]), ".2f", why=True),
                             "-" if labeller == "pair's label" else
                             show(Estimate.from_json(v["pair_label_same_pairs"]), ".2f", why=True)])
    return header, rows


def ranking_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the error-ranking table: per recipe and iteration, each signal's certainty at ranking right
    labels above wrong ones (AUROC), pooled and within prompts, beside the length controls."""
    header = ["recipe", "t", "signal", "AUROC, right vs wrong labels", "within prompts"]
    rows = []
    for name, by_t in result["recipes"].items():
        for t, r in by_t.items():
            for signal in CERTAINTY_SIGNALS:
                v = r["error_ranking"][signal]
                if v is not None:
                    rows.append([name, str(t), signal, show(Estimate.from_json(v["pooled"]), ".2f", why=True),
                                 show(Estimate.from_json(v["within"]), ".2f", why=True)])
    return header, rows


def write_replay(run_dir: str | Path, recipe_paths: list[str | Path], out: str | Path | None = None,
                 overrides: tuple[str, ...] = ()) -> tuple[str, str]:
    """Replay, then write the table as Markdown and the numbers as JSON (``RUN_DIR/replay.md`` and ``.json``, or
    ``out`` and the .json beside it). Returns (the table, where it was written)."""
    from orchestrator.reporting.report import format_compare
    from workers.storage import Storage

    result = replay(run_dir, recipe_paths, overrides)
    text = (format_compare(*recipe_rows(result), left=3) + "\n\nEvery labeller on the same decided candidate pairs "
            "(controls: the longer response, the response that stopped):\n\n" + format_compare(*labeller_rows(result), left=3)
            + "\n\nHow well each signal's certainty ranks the labels' errors (AUROC: right labels above wrong ones; "
            "0.5 is chance; 'correct' / 'incorrect' count right / wrong labels):\n\n"
            + format_compare(*ranking_rows(result), left=3))
    rd = RunDir(run_dir)
    if out is None:
        folder, md = rd.storage, "replay.md"
    else:
        out = Path(out)
        folder, md = Storage(out.parent), out.name
    json_name = Path(md).with_suffix(".json").name
    if json_name == md:
        raise ReplayError(f"--out {md}: the Markdown and the JSON would be the same file; give a .md name")
    folder.write_text(md, text + "\n")
    folder.write_text(json_name, json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    return text, folder.uri(md) if folder.local or folder.scheme else folder.path(md)
