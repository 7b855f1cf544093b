"""`selfreward` command line: run (or resume) a loop, show its status, report on it, replay recipes on it, compare runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_FAILED = 1  # the run could not finish (a full disk, a numerical blow-up): what is committed stays
EXIT_BAD_INPUT = 2  # unusable config, data, model or run directory: nothing was computed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfreward", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a config; rerunning with the same --run-dir resumes")
    r.add_argument("config", help="YAML config (see jobs/configs/)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.05")
    r.add_argument("--run-dir", help="run directory: a path or a pyarrow.fs URI (default: runs/<config name>)")
    r.add_argument("--redo", metavar="STAGE", help="compute this committed stage (e.g. iter_001/judge) and every stage "
                   "after it again, e.g. after one was found damaged")
    s = sub.add_parser("status", help="show the stages a run directory has committed")
    s.add_argument("run_dir")
    rep = sub.add_parser("report", help="write RUN_DIR/report.html and RUN_DIR/plots/*.png")
    rep.add_argument("run_dir")
    rp = sub.add_parser("replay", help="recompute each recipe's selection on one run's committed labels and compare "
                        "their label quality side by side (printed, and written as Markdown + JSON)")
    rp.add_argument("run_dir")
    rp.add_argument("--recipe", action="append", required=True, metavar="CONFIG",
                    help="a recipe config (repeat for several), e.g. jobs/configs/cream.yaml")
    rp.add_argument("--out", help="Markdown file to write, a .json beside it (default: RUN_DIR/replay.md)")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="a dotted config override applied to every recipe, e.g. selection.strategy=margin")
    c = sub.add_parser("compare", help="put runs side by side (printed, and written as Markdown + JSON)")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", default="compare.md", help="Markdown file to write; a .json beside it (default: compare.md)")
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


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    _init_ray(cfg.resources.ray_address)
    from orchestrator.loop import run
    from orchestrator.rundir import RunDir

    run(cfg, run_dir, redo=args.redo)
    print(f"done: {RunDir(run_dir).root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.rundir import RunDir

    rd = RunDir(args.run_dir)
    state = rd.load_state()
    print(f"run dir {rd.root}  created {state['created_at']}  config {state['config_hash'][:12]}")
    for key, rec in sorted(state["stages"].items(), key=lambda kv: rd.stage_sort_key(kv[0])):
        try:
            rd.record(key)
            ok = "ok"
        except Exception as e:  # report, do not stop: status shows every problem
            ok = f"DAMAGED: {e}"
        rows = "" if rec["rows"] is None else f"{rec['rows']} rows"
        print(f"  {key:<22} {rows:>10} {rec['seconds']:>9.1f}s  {rec['artifact']}  {ok}")
    if rd.exists("metrics.jsonl"):
        from orchestrator.runlog import format_iteration, format_table

        rows = [json.loads(line) for line in rd.storage.read_text("metrics.jsonl").splitlines()]
        for m in rows:
            if m.get("kind") == "iteration":
                print(format_iteration(m))
        print(format_table([m for m in rows if m.get("kind") in ("baseline", "iteration")]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import write_report

    print(f"wrote {write_report(args.run_dir)}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from orchestrator.replay import write_replay

    text, where = write_replay(args.run_dir, args.recipe, args.out, tuple(args.overrides))
    print(text)
    print(f"wrote {where} and its .json")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.report import write_compare

    print(write_compare(args.run_dirs, args.out))
    print(f"wrote {Path(args.out).absolute()} and {Path(args.out).with_suffix('.json').absolute()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from orchestrator.config import ConfigError
    from orchestrator.data import DataError
    from orchestrator.models import ModelError
    from orchestrator.replay import ReplayError
    from orchestrator.rundir import RunDirError
    from orchestrator.storage import StorageError
    from workers.tokens import TokenizerError
    from workers.types import PoolError, TrainingError

    parser = _parser()
    # Overrides may come before or after --run-dir.
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or args.command != "run"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.overrides = [*args.overrides, *extra]
    try:
        commands = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "replay": cmd_replay, "compare": cmd_compare}
        return commands[args.command](args)
    except (ConfigError, DataError, ModelError, ReplayError, RunDirError, StorageError, TokenizerError, PoolError) as e:
        print(f"selfreward: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingError, FloatingPointError, OSError) as e:
        print(f"selfreward: error: {e}\nEverything committed before stays; rerun the same command to resume.", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
