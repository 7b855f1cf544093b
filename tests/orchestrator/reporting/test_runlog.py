import struct

from orchestrator.evaluation import stats
from orchestrator.reporting.runlog import format_table, metrics_rows, write_metrics_jsonl, write_tensorboard
from orchestrator.run.rundir import RunDir
from tests.orchestrator.fake_run import make_run


def read_scalars(logdir):
    """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, round(v.simple_value, 6)))
    return out


def test_metrics_rows_and_tensorboard_are_rebuilt_from_committed_metrics(tmp_path):
    root = make_run(tmp_path / "run", iterations=2)
    rd = RunDir(root)
    rd.load_state()
    rows = write_metrics_jsonl(rd)
    assert [(r["kind"], r["iteration"]) for r in rows] == [
        ("baseline", 0), ("train_step", 1), ("train_step", 1), ("iteration", 1),
        ("train_step", 2), ("train_step", 2), ("iteration", 2),
    ]
    write_tensorboard(rd, rows)
    write_tensorboard(rd, metrics_rows(rd))  # rebuilt, not appended: no duplicate points
    scalars = read_scalars(root / "tensorboard")
    assert scalars["eval/accuracy"] == [(0, 0.2), (1, 0.3), (2, 0.4)]
    assert [step for step, _ in scalars["eval/accuracy/ci95_lo"]] == [0, 1, 2]  # the interval goes along
    assert all(lo < v for (_, lo), (_, v) in zip(scalars["eval/accuracy/ci95_lo"], scalars["eval/accuracy"]))
    assert scalars["step/loss"] == [(1, 0.59), (2, 0.49), (3, 0.59), (4, 0.49)]
    assert scalars["trust/mean_consistency"] == [(2, 0.5)]  # undefined at iteration 1: no point, not a zero
    assert not list(root.glob(".tensorboard.tmp-*"))


def test_table_has_a_row_per_metric_and_a_column_per_model():
    rows = [{"iteration": 0, "eval_accuracy": stats.proportion(8, 32).to_json(),
             "eval_fixed_judge": stats.mean([2.0, 2.0]).to_json()},
            {"iteration": 1, "eval_accuracy": stats.proportion(16, 32).to_json(), "win_rate": stats.proportion(3, 4).to_json(),
             "pairs_kept": 3, "pairs_built": 4, "mean_consistency": stats.unmeasured(0, "no previous judge").to_json(),
             "dpo_loss": 0.5, "iteration_seconds": 61.2}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["metric", "M0", "M1"]
    acc = next(line for line in lines if line.startswith("accuracy (held-out)"))
    assert "0.250 [0.133, 0.421] 8/32" in acc and "0.500 [0.336, 0.664] 16/32" in acc
    win = next(line for line in lines if line.startswith("win rate vs M0"))
    assert win.split()[-5:] == ["-", "0.75", "[0.30,", "0.95]", "3/4"]
    assert next(line for line in lines if line.startswith("mean consistency C")).split()[-2:] == ["-", "n/a"]
    assert next(line for line in lines if line.startswith("seconds")).split()[-1] == "61"
