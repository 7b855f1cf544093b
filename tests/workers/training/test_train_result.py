import pytest

from workers.training.trainer import TrainResult


def test_summary_averages_first_and_last_epoch_by_pairs():
    steps = [
        {"step": 1, "epoch": 0, "loss": 0.7, "reward_accuracy": 0.0, "reward_margin": 0.0, "pairs": 4},
        {"step": 2, "epoch": 0, "loss": 0.6, "reward_accuracy": 1.0, "reward_margin": 0.2, "pairs": 2},
        {"step": 3, "epoch": 1, "loss": 0.4, "reward_accuracy": 0.5, "reward_margin": 0.3, "pairs": 4},
        {"step": 4, "epoch": 1, "loss": 0.1, "reward_accuracy": 1.0, "reward_margin": 0.9, "pairs": 2},
    ]
    s = TrainResult(steps=steps, pairs=6).summary()
    assert s["optimizer_steps"] == 4 and s["epochs"] == 2 and s["train_pairs"] == 6
    assert s["dpo_loss_first"] == pytest.approx((0.7 * 4 + 0.6 * 2) / 6)
    assert s["dpo_loss"] == pytest.approx((0.4 * 4 + 0.1 * 2) / 6)
    assert s["reward_accuracy"] == pytest.approx((0.5 * 4 + 1.0 * 2) / 6)
    assert s["reward_margin"] == pytest.approx((0.3 * 4 + 0.9 * 2) / 6)


def test_summary_without_steps_reports_absence():
    s = TrainResult(steps=[], pairs=0).summary()
    assert s["optimizer_steps"] == 0 and s["dpo_loss"] is None and s["reward_accuracy"] is None


def test_a_ray_train_failure_is_reported_by_the_exception_that_caused_it():
    from ray.train import ControllerError, TrainingFailedError, WorkerGroupError

    from workers.training.launcher import failure_cause

    nan = FloatingPointError("DPO loss is nan at optimizer step 1 (epoch 0); no update was applied")
    lost = ConnectionError("worker 1 lost")
    e = WorkerGroupError("Training failed due to worker errors:\n[Rank 1]\nTraceback ...", {1: lost, 0: nan})
    assert failure_cause(e) is nan  # the lowest rank's own exception, not a line of the traceback text
    crash = RuntimeError("controller crashed")
    assert failure_cause(ControllerError(crash)) is crash
    other = TrainingFailedError("something else")
    assert failure_cause(other) is other
