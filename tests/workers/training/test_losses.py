"""The DPO loss family against hand-computed values, gradient signs and reductions to DPO."""

import math

import pytest
import torch

from workers.training.losses import CDPO, CREAM, DPO, IPO, RDPO, SoftPreference, implicit_margin

# h = 0.1 * ((-10 - -12) - (-15 - -14)) = 0.1 * (2 - (-1)) = 0.3
PC, PR, RC, RR = (torch.tensor([x]) for x in (-10.0, -15.0, -12.0, -14.0))
H = 0.3


def nll(h: float) -> float:
    return math.log(1 + math.exp(-h))


def run(loss, label_p=None):
    return loss(PC, PR, RC, RR, torch.ones(1), None if label_p is None else torch.tensor([label_p]))


@pytest.mark.parametrize(
    "loss, label_p, expected",
    [
        (DPO(beta=0.1), None, nll(H)),
        (CDPO(beta=0.1, epsilon=0.2), None, 0.8 * nll(H) + 0.2 * nll(-H)),
        (RDPO(beta=0.1, epsilon=0.2), None, (0.8 * nll(H) - 0.2 * nll(-H)) / 0.6),
        # delta = h / beta = 3; (3 - 1/(2*0.1))^2 = (3 - 5)^2 = 4
        (IPO(beta=0.1), None, 4.0),
        (SoftPreference(beta=0.1), 0.7, 0.7 * nll(H) + 0.3 * nll(-H)),
        (CREAM(beta=0.1), 0.6, 0.6 * nll(H) + 0.4 * nll(-H)),
    ],
    ids=["dpo", "cdpo", "rdpo", "ipo", "soft", "cream"],
)
def test_loss_by_hand(loss, label_p, expected):
    out = run(loss, label_p)
    assert out.margin.item() == pytest.approx(H)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def _grads(loss, label_p=None, h_start=-5.0):
    pc, pr = torch.tensor([h_start], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    p = None if label_p is None else torch.tensor([label_p])
    loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.ones(1), p).loss.backward()
    return pc.grad.item(), pr.grad.item()


@pytest.mark.parametrize(
    "loss, label_p",
    [(DPO(0.5), None), (CDPO(0.5, 0.1), None), (RDPO(0.5, 0.1), None), (IPO(0.5), None),
     (SoftPreference(0.5), 0.8), (CREAM(0.5), 0.9)],
    ids=["dpo", "cdpo", "rdpo", "ipo", "soft", "cream"],
)
def test_gradient_pushes_chosen_up_and_rejected_down(loss, label_p):
    # At h = 0 with a label that favours the chosen response, every loss
    # decreases by raising the chosen log-prob and lowering the rejected one.
    g_c, g_r = _grads(loss, label_p)
    assert g_c < 0 < g_r


def test_dpo_gradient_by_hand():
    # d/dpc of -log sigmoid(beta*(pc-pr)) = -beta * sigmoid(-h) = -0.25 at h = 0, beta = 0.5
    assert _grads(DPO(0.5)) == pytest.approx((-0.25, 0.25))


def test_soft_label_half_has_no_preference():
    # p = 1/2 is minimised at h = 0: no gradient there.
    assert _grads(SoftPreference(0.5), 0.5) == pytest.approx((0.0, 0.0), abs=1e-7)


def test_reductions_to_dpo():
    h_values = torch.linspace(-4, 4, 9)
    zeros = torch.zeros_like(h_values)
    w = torch.ones_like(h_values)
    dpo = DPO(1.0)(h_values, zeros, zeros, zeros, w)
    for other in (CDPO(1.0, 0.0), RDPO(1.0, 0.0), CREAM(1.0), SoftPreference(1.0)):
        # CREAM and soft preference with C = p = 1 (the default label) are DPO.
        out = other(h_values, zeros, zeros, zeros, w, torch.ones_like(h_values))
        assert torch.allclose(out.per_pair, dpo.per_pair)
    # cDPO with smoothing e equals a soft label of 1 - e.
    soft = SoftPreference(1.0)(h_values, zeros, zeros, zeros, w, torch.full_like(h_values, 0.75))
    assert torch.allclose(CDPO(1.0, 0.25)(h_values, zeros, zeros, zeros, w).per_pair, soft.per_pair)


def test_rdpo_is_unbiased_under_flips():
    # E over a flip with rate e of rDPO(h) equals the clean DPO loss l(h).
    e, h = 0.2, torch.tensor([0.7])
    z = torch.zeros(1)
    clean = DPO(1.0)(h, z, z, z, torch.ones(1)).loss
    kept = RDPO(1.0, e)(h, z, z, z, torch.ones(1)).loss
    flipped = RDPO(1.0, e)(-h, z, z, z, torch.ones(1)).loss
    assert ((1 - e) * kept + e * flipped).item() == pytest.approx(clean.item(), rel=1e-6)


def test_weights_give_weighted_mean_for_every_loss():
    pc, pr = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])
    rc, rr = torch.tensor([0.0, -20.0]), torch.tensor([0.0, 0.0])  # h = 0 and h = 2
    w = torch.tensor([1.0, 3.0])
    for loss in (DPO(0.1), CDPO(0.1, 0.1), RDPO(0.1, 0.1), IPO(0.1), SoftPreference(0.1), CREAM(0.1)):
        out = loss(pc, pr, rc, rr, w, torch.tensor([0.9, 0.6]))
        assert out.loss.item() == pytest.approx(((out.per_pair * w).sum() / 4).item(), rel=1e-6)
    l0, l1 = math.log(2), math.log(1 + math.exp(-2.0))
    assert DPO(0.1)(pc, pr, rc, rr, w).loss.item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-6)


def test_margin_and_parameter_validation():
    assert implicit_margin(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 2.0).item() == 2.0
    with pytest.raises(ValueError, match="beta"):
        DPO(beta=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        RDPO(beta=0.1, epsilon=0.5)
    with pytest.raises(ValueError, match="epsilon"):
        CDPO(beta=0.1, epsilon=-0.1)


def test_ipo_per_token_as_trl_computes_it():
    """IPO with length_normalized divides every log-prob by its response's token count before the margin."""
    pc, pr, rc, rr = (torch.tensor([-20.0, -9.0]), torch.tensor([-30.0, -4.0]),
                      torch.tensor([-22.0, -10.0]), torch.tensor([-27.0, -5.0]))
    lc, lr = torch.tensor([10.0, 3.0]), torch.tensor([15.0, 2.0])
    got = IPO(0.1, length_normalized=True)(pc, pr, rc, rr, torch.ones(2), lengths=(lc, lr))
    delta = (pc / lc - rc / lc) - (pr / lr - rr / lr)
    assert got.per_pair.tolist() == pytest.approx(((delta - 1 / (2 * 0.1)) ** 2).tolist())
    summed = IPO(0.1)(pc, pr, rc, rr, torch.ones(2))
    delta_sum = (pc - rc) - (pr - rr)
    assert summed.per_pair.tolist() == pytest.approx(((delta_sum - 5.0) ** 2).tolist())
    with pytest.raises(ValueError, match="per token"):
        IPO(0.1, length_normalized=True)(pc, pr, rc, rr, torch.ones(2))


def test_replica_fingerprints_tell_any_changed_weight_apart():
    """DDP runs without its start-up broadcast; the ranks' weights are compared by these fingerprints instead
    (``DPOTrainerCore.check_replicas``; the DDP run on Ray Train goes through it)."""
    from workers.training import trainer
    from workers.training.trainer import compare_fingerprints, fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
    names, ref = fingerprint(model)
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"] and ref.dtype == torch.float64
    compare_fingerprints(names, [ref, fingerprint(model)[1].clone()])  # the same weights: no error
    original = trainer.FINGERPRINT_CHUNK
    trainer.FINGERPRINT_CHUNK = 100  # chunked accumulation gives the same numbers
    try:
        torch.testing.assert_close(fingerprint(model)[1], ref, rtol=1e-12, atol=1e-12)
    finally:
        trainer.FINGERPRINT_CHUNK = original
    changes = {
        "one element by one bfloat16 step": lambda w: w[3, 5].copy_((w[3, 5].bfloat16().float() * (1 + 2 ** -7))),
        "two elements swapped": lambda w: w[0, :2].copy_(w[0, :2].flip(0)),
        "another initialisation": lambda w: torch.nn.init.normal_(w),
    }
    for what, change in changes.items():
        other = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            change(other[0].weight)
        with pytest.raises(RuntimeError, match=r"train ranks 0 and 2 hold different weights \(0\.weight, and 0 more\)"):
            compare_fingerprints(names, [ref, ref.clone(), fingerprint(other)[1]]), what
    with pytest.raises(RuntimeError, match="rank 1 holds 2 weight tensors, rank 0 6"):
        compare_fingerprints(names, [ref, ref[:2]])
