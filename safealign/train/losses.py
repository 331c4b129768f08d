"""Pure tensor maths for KTO and the study's modifications (docs/kto_variants.md).

Notation, for a completion y of prompt x:
    r   = log pi_theta(y|x) - log pi_ref(y|x)          (the implicit reward before beta)
    z0  = trl's batch KL estimate: mean over mismatched (prompt, completion) pairs of the same
          log-ratio, gathered over processes, clamped at 0 and detached
    beta, lambda_D, lambda_U = KTO's temperature and desirable / undesirable weights

    KTO      desirable   lambda_D * (1 - sigmoid(beta * (r - z0)))
             undesirable lambda_U * (1 - sigmoid(beta * (z0 - r)))
    KTO-S    u = r + sign(r) * z0   (the reference point enters with the sign of the reward)
             desirable   lambda_D * (1 - sigmoid(beta * u))
             undesirable lambda_U * (1 - sigmoid(-beta * u))
             equal to KTO where r < 0; where r > 0 a larger KL saturates the sigmoid further.
    NLL      alpha * mean over desirable rows of the per-token mean negative log-likelihood
    length-normalised log-probs: every sequence log-prob is the per-token mean instead of the sum.

Nothing here knows about models or trainers: each function is tested on hand-made tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(per_token_logps: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """Reduce per-token log-probs (B, T) over the completion tokens `mask` (B, T) to (B,).

    Sum (trl's KTO) or, with `length_normalize`, the mean over the completion's tokens.
    A row with no completion tokens gives 0 either way.
    """
    keep = mask.to(torch.bool)
    total = torch.where(keep, per_token_logps, torch.zeros_like(per_token_logps)).sum(-1)
    if not length_normalize:
        return total
    return total / keep.sum(-1).clamp(min=1).to(total.dtype)


def signed_reference_point(logratios: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """KTO-S: u = r + sign(r) * z0. Keep the sign rule here, and only here."""
    return logratios + torch.sign(logratios) * kl


def kto_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    signed_kl: bool = False,
) -> torch.Tensor:
    """Per-example weighted losses, desirable rows first then undesirable (trl's order).

    `kl` is the detached, clamped batch estimate z0; no gradient flows into it here either.
    """
    kl = kl.detach()
    if signed_kl:
        chosen = 1 - F.sigmoid(beta * signed_reference_point(chosen_logratios, kl))
        rejected = 1 - F.sigmoid(-beta * signed_reference_point(rejected_logratios, kl))
    else:
        chosen = 1 - F.sigmoid(beta * (chosen_logratios - kl))
        rejected = 1 - F.sigmoid(beta * (kl - rejected_logratios))
    return torch.cat((desirable_weight * chosen, undesirable_weight * rejected), 0)


def kl_estimate(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The local part of z0: mean log-ratio over the batch's mismatched pairs, detached.

    The caller gathers it over processes, averages and clamps at 0, as trl does.
    """
    return (kl_logps - ref_kl_logps).mean().detach()


def desirable_nll(per_token_logps: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over desirable rows of each completion's per-token mean NLL (Pang et al. 2024);
    exactly 0 (with a graph) when the batch has no desirable row."""
    per_seq = -sequence_logps(per_token_logps, mask, length_normalize=True)
    desirable = labels.to(torch.bool)
    if not bool(desirable.any()):
        return per_seq.sum() * 0.0
    return per_seq[desirable].mean()
