"""`selfreward` command line: run (or resume) a loop, show its status, report on it, replay recipes on it, compare runs."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED = 1  # the run could not finish (a full disk, a numerical blow-up): what is committed stays
EXIT_BAD_INPUT = 2  # unusable config, data, model or run directory: nothing was computed
# Operating-system errors that come from the paths given, not from the machine running out of something.
INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP,
                errno.EROFS, errno.EIO, errno.EINVAL, errno.EEXIST}


class _Stdout(logging.Handler):
    """The run's log on whatever ``sys.stdout`` is when a line is written, message only (as before logging)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def _configure_logging(quiet: bool, verbose: bool) -> None:
    """The ``orchestrator`` loggers to stdout: warnings only with --quiet, debug lines too with --verbose."""
    log = logging.getLogger("orchestrator")
    for h in [h for h in log.handlers if isinstance(h, _Stdout)]:
        log.removeHandler(h)
    log.addHandler(_Stdout())
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="log warnings only (progress bars stay)")
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")
    p = argparse.ArgumentParser(prog="selfreward", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", parents=[common], help="run a config; rerunning with the same --run-dir resumes")
    r.add_argument("config", help="YAML config (see jobs/configs/)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.05")
    r.add_argument("--run-dir", help="run directory: a path or a pyarrow.fs URI (default: runs/<config name>)")
    r.add_argument("--redo", metavar="STAGE", help="compute this committed stage (e.g. iter_001/judge) and every stage "
                   "after it again, e.g. after one was found damaged")
    r.add_argument("--from", dest="branch_from", metavar="RUN_DIR[@iter_NNN/stage]",
                   help="start a new run dir from another run's committed stages up to this one (all without @), "
                   "shared by hard link and sha256; refused when the config differs in a field those stages read")
    cf = sub.add_parser("config", parents=[common], help="print the resolved config (defaults, file, overrides) as "
                        "YAML; --docs: every field with its type, default and description")
    cf.add_argument("config", nargs="?", help="YAML config (default: the defaults alone)")
    cf.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.05")
    cf.add_argument("--docs", action="store_true", help="print the config reference (docs/CONFIG.md) instead")
    s = sub.add_parser("status", parents=[common], help="show the stages a run directory has committed")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="print one JSON object instead (for scripts)")
    rep = sub.add_parser("report", parents=[common], help="write RUN_DIR/report.html and RUN_DIR/plots/*.png")
    rep.add_argument("run_dir")
    rp = sub.add_parser("replay", parents=[common], help="recompute each recipe's selection on one run's committed "
                        "labels and compare their label quality side by side (printed, and written as Markdown + JSON)")
    rp.add_argument("run_dir")
    rp.add_argument("--recipe", action="append", required=True, metavar="CONFIG",
                    help="a recipe config (repeat for several), e.g. jobs/configs/cream.yaml")
    rp.add_argument("--out", help="Markdown file to write, a .json beside it (default: RUN_DIR/replay.md)")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="a dotted config override applied to every recipe, e.g. selection.strategy=margin")
    ex = sub.add_parser("export", parents=[common], help="write M(t) as a Hugging Face folder with the adapter merged "
                        "into the weights (vLLM and transformers load it), or the PEFT adapter alone")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True, help="a new (or empty) folder")
    ex.add_argument("--iteration", type=int, help="which M(t) (default: the last trained)")
    ex.add_argument("--adapter-only", action="store_true", help="the PEFT adapter, its base model recorded in "
                    "adapter_config.json, instead of merged weights")
    ep = sub.add_parser("export-pairs", parents=[common], help="write a run's preference pairs as a datasets "
                        "DatasetDict (one split per iteration) in TRL's conversational format, with every trust column")
    ep.add_argument("run_dir")
    ep.add_argument("--out", required=True, help="a new (or empty) folder; read it with datasets.load_from_disk")
    ep.add_argument("--iterations", help="comma-separated iterations, e.g. 1,3 (default: every committed one)")
    ep.add_argument("--kept-only", action="store_true", help="only the pairs the selection kept (default: all, with "
                    "their kept, weight and drop_reason columns)")
    pl = sub.add_parser("plan", parents=[common], help="GPUs per stage, placement and memory per GPU of a config, "
                        "before any work; exit 2 when the cluster cannot hold it")
    pl.add_argument("config", help="YAML config (see jobs/configs/)")
    pl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. resources.engines=4")
    pl.add_argument("--cluster", help="a Ray cluster launcher YAML (cluster.yaml): plan for the GPU nodes it declares "
                    "(default: this machine)")
    pl.add_argument("--model-config", help="the model's config.json, where model.path is not on this machine "
                    "(e.g. jobs/models/llama-3.1-8b-instruct.config.json)")
    c = sub.add_parser("compare", parents=[common],
                       help="put runs side by side (printed; with --out also written as Markdown, JSON and plots)")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", help="Markdown file to write, with a .json and two plots (<name>-accuracy*.svg) beside it "
                   "(default: print only)")
    return p


# Ray picks the machine's outward IP for a node even when told 127.0.0.1, and its servers listen there;
# in this (misnamed) mode the node's address is loopback and so is every server of the private local Ray.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _init_ray(address: str | None) -> None:
    """Join the cluster ``address`` / RAY_ADDRESS names, or start a private local Ray on loopback.

    Must run before anything imports ray: the loopback setting is read when ray is imported, here and in
    every process the local Ray starts.
    """
    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local:
        os.environ.update(LOOPBACK_ONLY_ENV)
    import ray

    if ray.is_initialized():
        return
    # Actors' own output (vLLM, Ray Train) stays in Ray's log files
    # (session_latest/logs); the driver prints the run's progress.
    if not local:
        ray.init(address=address, log_to_driver=False)
    else:
        # A private local Ray ("local": never a cluster someone started with `ray start`), everything on
        # loopback (dashboard included: Ray Train queries its state API).
        ray.init(address="local", num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 log_to_driver=False)


CONNECT_TIMEOUT_S = 10.0


def _check_cluster(cfg: Any) -> None:
    """What the cluster can be known to refuse, before Ray starts: ConfigError naming the fields.

    A private local Ray has this machine's CPUs and GPUs, so a config needing
    more would wait forever for them; a cluster to join must answer on its
    address within ``CONNECT_TIMEOUT_S``.
    """
    from orchestrator.config import ConfigError

    r = cfg.resources
    address = r.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        field = "resources.ray_address" if r.ray_address else "the RAY_ADDRESS environment variable"
        if address == "auto":
            return
        hostport = address.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{field} {address!r} is not of the form host:port (or ray://host:port, or auto)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ConfigError(f"{field} {address!r}: no Ray cluster answers there within {CONNECT_TIMEOUT_S:.0f}s "
                              f"({e})") from None
        return
    from orchestrator.resources.plan import cpus_at_once, stage_gpus

    cpus, need = os.cpu_count() or 1, cpus_at_once(cfg)
    if need > cpus:
        raise ConfigError(
            f"resources: the engines (resources.engines={r.engines} x resources.cpus_per_engine={r.cpus_per_engine:g}) "
            f"and the train workers (resources.train_workers={r.train_workers} x resources.cpus_per_train_worker="
            f"{r.cpus_per_train_worker:g}) need {need:g} CPUs at once; the local Ray has this machine's {cpus}")

    need_gpus = max(n for _, n, _ in stage_gpus(cfg))
    if need_gpus:
        import torch

        have = torch.cuda.device_count()
        if need_gpus > have:
            raise ConfigError(f"resources.gpus_per_engine / resources.gpus_per_train_worker: the run needs {need_gpus} "
                              f"GPUs; the local Ray has this machine's {have}")


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir if args.run_dir is not None else str(Path("runs") / Path(args.config).stem)
    if not (cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")):
        os.environ.update(LOOPBACK_ONLY_ENV)  # read when ray is imported: before the loop's imports
    from orchestrator.loop import prepare, run

    try:
        prepared = prepare(cfg, run_dir, args.redo, args.branch_from)  # every input checked, nothing created or changed
    except OSError as e:  # what a check did not foresee is still the input's: nothing was started
        where = f"{e.filename}: " if e.filename else ""
        raise UsageError(f"{where}{e.strerror or e} (while checking the inputs; nothing was started)") from None
    _check_cluster(cfg)
    _init_ray(cfg.resources.ray_address)
    from orchestrator.resources.plan import check_on_cluster

    check_on_cluster(cfg, prepared.model_path)  # before any engine starts
    run(cfg, run_dir, redo=args.redo, prepared=prepared)
    from orchestrator.run.rundir import RunDir

    print(f"done: {RunDir(run_dir).root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.docs:
        from orchestrator.config_docs import config_docs

        print(config_docs(), end="")
        return 0
    from orchestrator.config import dump_yaml, load_config, to_plain

    print(dump_yaml(to_plain(load_config(args.config, args.overrides))), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Every committed stage, checked; exit 2 when any is damaged or records a path outside the run dir.

    ``--json``: the same as one JSON object (run dir, creation, config hash, branch, each stage with its record and
    check, the metrics rows) for scripts.
    """
    from orchestrator.run.rundir import RunDir

    rd = RunDir(args.run_dir)
    state = rd.load_state()
    out: dict[str, Any] = {"run_dir": rd.root, "created_at": state["created_at"], "config_hash": state["config_hash"],
                           "branched_from": None, "stages": {}, "metrics": None, "metrics_problem": None}
    lines = [f"run dir {rd.root}  created {state['created_at']}  config {state['config_hash'][:12]}"]
    if rd.branched_from:
        b = rd.branched_from
        out["branched_from"] = {"run_dir": b["run_dir"], "stage": b["stage"], "complete": bool(b.get("complete"))}
        lines.append(f"  branched from {b['run_dir']} at {b['stage']} ({len(b['stages'])} stages shared"
                     f"{'' if b.get('complete') else ', still to be linked in: rerun the run command'})")
    damaged = 0
    for key, rec in sorted(state["stages"].items(), key=lambda kv: rd.stage_sort_key(kv[0])):
        try:
            rd.record(key)
            ok = "ok"
        except Exception as e:  # report, do not stop: status shows every problem
            ok, damaged = f"DAMAGED: {e}", damaged + 1
        out["stages"][key] = {**{k: rec[k] for k in ("artifact", "sha256", "rows", "seconds", "finished_at")},
                              "check": ok}
        rows = "" if rec["rows"] is None else f"{rec['rows']} rows"
        lines.append(f"  {key:<22} {rows:>10} {rec['seconds']:>9.1f}s  {rec['artifact']!r}  {ok}")
    if rd.exists("metrics.jsonl"):
        from orchestrator.reporting.runlog import format_iteration, format_table

        try:
            rows = [json.loads(line) for line in rd.storage.read_text("metrics.jsonl").splitlines()]
            out["metrics"] = [m for m in rows if m.get("kind") in ("baseline", "iteration")]
            lines += [format_iteration(m) for m in rows if m.get("kind") == "iteration"]
            lines.append(format_table(out["metrics"]))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            damaged += 1
            out["metrics"], out["metrics_problem"] = None, f"{type(e).__name__}: {e}"
            lines.append(f"  DAMAGED: {rd.where('metrics.jsonl')} cannot be read ({type(e).__name__}: {e}); the next "
                         "run rewrites it from the committed metrics")
    print(json.dumps(out, indent=1, sort_keys=True) if args.json else "\n".join(lines))
    return EXIT_BAD_INPUT if damaged else 0


def _plots_possible(command: str) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{command} draws its plots with matplotlib, which is not installed "
                         "(pip install 'selfreward[report]')")


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.reporting.report import PLOTS_DIR, write_report

    _plots_possible("report")

    _writable("report", Path(args.run_dir) / "report.html", Path(args.run_dir) / PLOTS_DIR / "plot.png")
    print(f"wrote {write_report(args.run_dir)}")
    return 0


class UsageError(ValueError):
    """A command-line argument that cannot be used as given."""


def _writable(what: str, *files: str | Path, json_beside: bool = False) -> None:
    """The files a command writes (local paths; a URI is checked by its store when written): UsageError naming
    ``what`` before any work when one is a folder or its folder cannot be written, or when the Markdown and the
    JSON beside it (``json_beside``) would be the same file."""
    from orchestrator.inputs import check_output_file

    for f in files:
        if "://" in str(f):
            continue
        check_output_file(f, what, UsageError)
        if json_beside:
            if Path(f).with_suffix(".json").name == Path(f).name:
                raise UsageError(f"{what} {f}: the Markdown and the JSON beside it would be the same file; give a .md name")
            check_output_file(Path(f).with_suffix(".json"), f"{what} (the .json beside it)", UsageError)


def cmd_replay(args: argparse.Namespace) -> int:
    from orchestrator.reporting.replay import write_replay

    _writable("--out" if args.out else "replay", args.out or Path(args.run_dir) / "replay.md", json_beside=True)
    text, where = write_replay(args.run_dir, args.recipe, args.out, tuple(args.overrides))
    print(text)
    print(f"wrote {where} and its .json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.export import export_model

    info = export_model(args.run_dir, args.out, args.iteration, args.adapter_only)
    what = "the adapter of" if args.adapter_only else "merged weights of"
    print(f"wrote {info['out']}: {what} M{info['iteration']} (base {info['base_model']})")
    return 0


def cmd_export_pairs(args: argparse.Namespace) -> int:
    from orchestrator.export import export_pairs

    iterations = None
    if args.iterations is not None:
        try:
            iterations = [int(x) for x in args.iterations.split(",")]
        except ValueError:
            raise UsageError(f"--iterations {args.iterations!r}: expected comma-separated iteration numbers, "
                             "e.g. 1,3") from None
    rows = export_pairs(args.run_dir, args.out, iterations, args.kept_only)
    print(f"wrote {Path(args.out).absolute()}: " + ", ".join(f"{k} {n} pairs" for k, n in rows.items()))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config
    from orchestrator.models import resolve_model_path
    from orchestrator.resources.plan import cluster_hardware, local_hardware, make_plan, model_shape

    cfg = load_config(args.config, args.overrides)
    hw = cluster_hardware(args.cluster) if args.cluster else local_hardware()
    model = args.model_config or resolve_model_path(cfg.model.path)
    shape = model_shape(model, args.model_config)
    plan = make_plan(cfg, shape, hw)
    print(plan.text())
    plan.check()
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.reporting.report import compare_plots, compare_runs, format_compare, write_compare

    if args.out is None:
        print(format_compare(*compare_runs(args.run_dirs)[:2]))
        return 0
    _plots_possible("compare --out")
    _writable("--out", args.out, json_beside=True)
    _writable("--out (the plots beside it)", *compare_plots(args.out))
    print(write_compare(args.run_dirs, args.out))
    print(f"wrote {Path(args.out).absolute()}, the .json and two plots beside it")
    return 0


def main(argv: list[str] | None = None) -> int:
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.export import ExportError
    from orchestrator.models import ModelError
    from orchestrator.reporting.replay import ReplayError
    from orchestrator.run.rundir import RunDirError
    from workers.handover import HandoverError
    from workers.storage import StorageError
    from workers.tokens import TokenizerError
    from workers.types import PoolError, ServedModelError, TrainingError

    parser = _parser()
    # Overrides may come before or after --run-dir.
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or args.command not in ("run", "plan", "config")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("run", "plan", "config"):
        args.overrides = [*args.overrides, *extra]
    _configure_logging(args.quiet, args.verbose)
    try:
        commands = {"run": cmd_run, "config": cmd_config, "status": cmd_status, "report": cmd_report, "replay": cmd_replay, "compare": cmd_compare,
                    "export": cmd_export, "export-pairs": cmd_export_pairs,
                    "plan": cmd_plan}
        return commands[args.command](args)
    except (ConfigError, DataError, ExportError, ModelError, ReplayError, RunDirError, StorageError, TokenizerError, PoolError,
            UsageError) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServedModelError as e:
        print(f"selfreward: error: {getattr(e, 'cause', None) or e}\nEverything committed before stays; rerunning "
              "starts the engines afresh.", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if args.command != "run":
            # status, report, replay, compare, plan read files and write their outputs, nothing to resume: a path
            # the OS refuses is the input's (exit 2), a full disk or another failure to finish is not (exit 1).
            text = str(e) if len(str(e)) <= 600 else f"{str(e)[:300]} ... {str(e)[-200:]}"  # a path may be very long
            print(f"selfreward: error: {text}", file=sys.stderr)
            return EXIT_BAD_INPUT if e.errno in INPUT_ERRNOS else EXIT_FAILED
        print(f"selfreward: error: {e}\nEverything committed before stays; rerun the same command to resume.", file=sys.stderr)
        return EXIT_FAILED
    except (TrainingError, HandoverError, FloatingPointError) as e:
        print(f"selfreward: error: {e}\nEverything committed before stays; rerun the same command to resume.", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
