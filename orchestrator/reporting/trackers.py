"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases, fed from the same metric declarations
(``runlog.scalars``) after every iteration. Off unless ``tracking.mlflow_uri`` / ``tracking.wandb_project`` is set.

A run dir is one tracker run for its whole life: its id is kept in ``RUN_DIR/tracking.json`` with the scalars
already sent, so a resumed run continues the same tracker run and sends each point once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from typing import Any

from orchestrator.config import RunConfig, _flatten, to_plain
from orchestrator.reporting.runlog import scalars
from orchestrator.run.rundir import RunDir

TRACKING_FILE = "tracking.json"
MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value


def _state(rd: RunDir) -> dict[str, Any]:
    return rd.read_json(TRACKING_FILE) if rd.exists(TRACKING_FILE) else {}


def _new_points(rows: list[dict[str, Any]], sent: set[str]) -> list[tuple[str, float, int]]:
    return [(tag, float(value), step) for tag, value, step in scalars(rows) if f"{tag}@{step}" not in sent]


def check_trackers(cfg: RunConfig) -> None:
    """ConfigError, before any work, when a configured tracker's package is not installed."""
    from orchestrator.config import ConfigError

    for field, value, module, extra in (("tracking.mlflow_uri", cfg.tracking.mlflow_uri, "mlflow", "tracking"),
                                        ("tracking.wandb_project", cfg.tracking.wandb_project, "wandb", "wandb")):
        if value is None:
            continue
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{field} is set ({value!r}) but the {module} package is not installed "
                              f"(pip install 'selfreward[{extra}]')")


def track(rd: RunDir, cfg: RunConfig, rows: list[dict[str, Any]], finished: bool) -> None:
    """Send the metrics rows' points not sent yet to each configured tracker; ``finished``: the last iteration."""
    t = cfg.tracking
    if t.mlflow_uri is None and t.wandb_project is None:
        return
    state = _state(rd)
    if t.mlflow_uri is not None:
        state["mlflow"] = _mlflow(rd, cfg, rows, state.get("mlflow", {}), finished)
    if t.wandb_project is not None:
        state["wandb"] = _wandb(rd, cfg, rows, state.get("wandb", {}))
    rd.write_json(TRACKING_FILE, state)


def _params(cfg: RunConfig) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else json.dumps(v))[:MLFLOW_PARAM_CHARS] for k, v in _flatten(to_plain(cfg)).items()}


def _mlflow(rd: RunDir, cfg: RunConfig, rows: list[dict[str, Any]], state: dict[str, Any],
            finished: bool) -> dict[str, Any]:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
    run_id = state.get("run_id")
    if run_id is None:
        name = cfg.tracking.experiment
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run_id = client.create_run(experiment_id, run_name=rd.name,
                                   tags={"selfreward.run_dir": rd.root}).info.run_id
        params = [Param(k, v) for k, v in _params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run_id, params=params[i:i + 100])
        state = {"run_id": run_id, "sent": []}
    sent = set(state["sent"])
    now = int(time.time() * 1000)
    points = _new_points(rows, sent)
    metrics = [Metric(tag, value, now, step) for tag, value, step in points]
    for i in range(0, len(metrics), 1000):  # and at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    if finished:
        client.log_batch(run_id, tags=[RunTag("selfreward.iterations", str(cfg.iterations))])
        client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "sent": sorted(sent | {f"{tag}@{step}" for tag, _, step in points})}


def _wandb(rd: RunDir, cfg: RunConfig, rows: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    import wandb

    run_id = state.get("run_id") or hashlib.sha256(rd.root.encode()).hexdigest()[:16]
    run = wandb.init(project=cfg.tracking.wandb_project, id=run_id, resume="allow", mode=cfg.tracking.wandb_mode,
                     dir=rd.storage.path() if rd.storage.local else None, config=to_plain(cfg),
                     name=rd.name, reinit="finish_previous")
    run.define_metric("iteration")
    run.define_metric("train_step")
    run.define_metric("step/*", step_metric="train_step")
    run.define_metric("*", step_metric="iteration")
    sent = set(state.get("sent", []))
    points = _new_points(rows, sent)
    by_step: dict[tuple[bool, int], dict[str, float]] = {}
    for tag, value, step in points:
        by_step.setdefault((tag.startswith("step/"), step), {})[tag] = value
    for (train, step), values in sorted(by_step.items()):
        run.log({**values, ("train_step" if train else "iteration"): step})
    run.finish()
    return {"run_id": run_id, "sent": sorted(sent | {f"{tag}@{step}" for tag, _, step in points})}
