"""Preference losses over summed sequence log-probs.

All losses take the policy's and the reference's log-probs of the chosen and
rejected responses and per-pair weights, and return the weighted mean loss
with the statistics a run logs. The implicit reward margin is
``h = beta * [(log pi - log pi_ref)(y+) - (log pi - log pi_ref)(y-)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # weighted mean over the batch (scalar, differentiable)
    per_pair: torch.Tensor  # unweighted loss of each pair (differentiable)
    margin: torch.Tensor  # h of each pair (detached)


def implicit_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """h = beta * ((pi_c - ref_c) - (pi_r - ref_r)), one value per pair."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


@dataclass(frozen=True)
class SigmoidDPO:
    """DPO (Rafailov et al.): l(h) = -log sigmoid(h)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        weights: torch.Tensor,
    ) -> LossOutput:
        """Weighted mean of -log sigmoid(h); ``weights`` must not all be zero."""
        h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        per_pair = -F.logsigmoid(h)
        loss = (per_pair * weights).sum() / weights.sum()
        return LossOutput(loss=loss, per_pair=per_pair, margin=h.detach())
