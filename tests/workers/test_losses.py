import math

import pytest
import torch

from workers.losses import SigmoidDPO, implicit_margin


def test_dpo_loss_by_hand():
    # h = 0.1 * ((-10 - -12) - (-15 - -14)) = 0.1 * (2 - (-1)) = 0.3
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-10.0, -15.0, -12.0, -14.0))
    out = SigmoidDPO(beta=0.1)(pc, pr, rc, rr, torch.ones(1))
    assert out.margin.item() == pytest.approx(0.3)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-0.3)), rel=1e-6)


def test_weights_give_weighted_mean():
    pc, pr = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])
    rc, rr = torch.tensor([0.0, -20.0]), torch.tensor([0.0, 0.0])  # h = 0 and h = 2
    out = SigmoidDPO(beta=0.1)(pc, pr, rc, rr, torch.tensor([1.0, 3.0]))
    l0, l1 = math.log(2), math.log(1 + math.exp(-2.0))
    assert out.loss.item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    out = SigmoidDPO(beta=0.5)(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.ones(1))
    out.loss.backward()
    # d/dpc of -log sigmoid(beta*(pc-pr)) = -beta * sigmoid(-h) = -0.25 at h = 0
    assert pc.grad.item() == pytest.approx(-0.25)
    assert pr.grad.item() == pytest.approx(0.25)


def test_margin_and_beta_validation():
    assert implicit_margin(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 2.0).item() == 2.0
    with pytest.raises(ValueError, match="beta"):
        SigmoidDPO(beta=0.0)
