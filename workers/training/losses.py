"""Preference losses over summed sequence log-probs: the DPO family.

Every loss sees, per pair, the policy's and the reference's log-probs of the
chosen and rejected responses, a weight, and a label probability ``p`` (how
likely the chosen response truly is the better one; 1 = a hard label). With
the implicit reward margin
``h = beta * [(log pi - log pi_ref)(y+) - (log pi - log pi_ref)(y-)]``
and ``l(h) = -log sigmoid(h)``:

| loss | per pair | uses p |
|---|---|---|
| DPO | l(h) | no |
| cDPO (label smoothing e) | (1 - e) l(h) + e l(-h) | no |
| rDPO (flip rate e) | [(1 - e) l(h) - e l(-h)] / (1 - 2e) | no |
| IPO | (h / beta - 1 / (2 beta))^2, h from per-token log-probs (as TRL; ``length_normalized``) or summed ones | no |
| soft preference | p l(h) + (1 - p) l(-h) | yes |
| CREAM | C l(h) + (1 - C) l(-h), p = consistency C | yes |

The batch loss is the weighted mean of the per-pair losses.
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


def _l(h: torch.Tensor) -> torch.Tensor:
    """l(h) = -log sigmoid(h), computed stably."""
    return -F.logsigmoid(h)


@dataclass(frozen=True)
class PreferenceLoss:
    """Base of the family: subclasses define ``pair_loss(h, p)``; all take per-pair weights."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_token(self) -> bool:
        """Whether the margin is computed from per-token log-probs (log-prob / response tokens), not summed ones."""
        return False

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        weights: torch.Tensor,
        label_p: torch.Tensor | None = None,
        lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> LossOutput:
        """Weighted mean of the per-pair loss; ``weights`` must not all be zero.

        ``label_p`` defaults to 1 (hard labels); losses that do not use it ignore it.
        ``lengths``: the chosen and rejected responses' token counts, which a
        per-token loss divides the log-probs by (ValueError without them).
        """
        if self.per_token():
            if lengths is None:
                raise ValueError(f"{type(self).__name__} is computed per token: pass the responses' lengths")
            lc, lr = (x.to(policy_chosen.dtype) for x in lengths)
            policy_chosen, ref_chosen, policy_rejected, ref_rejected = (
                policy_chosen / lc, ref_chosen / lc, policy_rejected / lr, ref_rejected / lr)
        h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        p = torch.ones_like(h) if label_p is None else label_p.to(h.dtype)
        per_pair = self.pair_loss(h, p)
        loss = (per_pair * weights).sum() / weights.sum()
        return LossOutput(loss=loss, per_pair=per_pair, margin=h.detach())


@dataclass(frozen=True)
class DPO(PreferenceLoss):
    """DPO (Rafailov et al. 2023): l(h)."""

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return _l(h)


def _check_epsilon(epsilon: float, upper: float, name: str) -> None:
    if not 0 <= epsilon < upper:
        raise ValueError(f"{name} epsilon must be in [0, {upper}), got {epsilon}")


@dataclass(frozen=True)
class CDPO(PreferenceLoss):
    """Conservative DPO: labels smoothed by ``epsilon``, (1 - e) l(h) + e l(-h)."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_epsilon(self.epsilon, 0.5, "cDPO")

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (1 - self.epsilon) * _l(h) + self.epsilon * _l(-h)


@dataclass(frozen=True)
class RDPO(PreferenceLoss):
    """Robust DPO (Chowdhury et al. 2024) for labels flipped at rate ``epsilon``.

    [(1 - e) l(h) - e l(-h)] / (1 - 2e) is an unbiased estimate of the clean
    DPO loss under random flips; it can be negative for a single pair.
    """

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_epsilon(self.epsilon, 0.5, "rDPO")

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        e = self.epsilon
        return ((1 - e) * _l(h) - e * _l(-h)) / (1 - 2 * e)


@dataclass(frozen=True)
class IPO(PreferenceLoss):
    """IPO (Azar et al. 2023): (delta - 1/(2 beta))^2 with delta = h / beta, the plain log-ratio margin.

    ``length_normalized``: delta from per-token log-probs, as TRL computes IPO, so the target 1/(2 beta) means
    the same for long and short responses; off, from summed log-probs.
    """

    length_normalized: bool = False

    def per_token(self) -> bool:
        return self.length_normalized

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (h / self.beta - 1 / (2 * self.beta)) ** 2


@dataclass(frozen=True)
class SoftPreference(PreferenceLoss):
    """Cross-entropy against a soft label: p l(h) + (1 - p) l(-h).

    With ``p`` the preference strength, the target probability that the
    chosen response wins (Online Self-Preferring LMs); the select stage
    derives it from the judge scores.
    """

    def pair_loss(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return p * _l(h) + (1 - p) * _l(-h)


@dataclass(frozen=True)
class CREAM(SoftPreference):
    """CREAM (Wang et al. 2024): C l(h) + (1 - C) l(-h), C the consistency passed as ``label_p``.

    The select stage sets C per pair (mode ``dyn``) or to the dataset mean
    (mode ``avg``); with C = 1 this is DPO.
    """
