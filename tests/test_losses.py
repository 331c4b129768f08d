"""The KTO maths on hand-made tensors: no model, no trainer."""

import math

import pytest
import torch

from safealign.train import losses

B = 0.1


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_kto_matches_hand_computed():
    out = losses.kto_losses(
        torch.tensor([2.0]),
        torch.tensor([-3.0]),
        torch.tensor(1.0),
        beta=B,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    assert out.tolist() == pytest.approx([1 - sig(B * (2 - 1)), 1.5 * (1 - sig(B * (1 + 3)))])
    # both weights default to 1
    out = losses.kto_losses(torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor(1.0), beta=B)
    assert out.tolist() == pytest.approx([1 - sig(B * (2 - 1)), 1 - sig(B * (1 + 3))])


def test_kto_s_equals_kto_where_reward_negative():
    r = torch.tensor([-5.0, -0.3, -12.0])
    kl = torch.tensor(2.5)
    for weights in ((1.0, 1.0), (0.7, 1.9)):
        a = losses.kto_losses(r, r, kl, B, *weights)
        b = losses.kto_losses(r, r, kl, B, *weights, signed_kl=True)
        assert torch.allclose(a, b)


def test_kto_s_equals_kto_when_kl_is_zero():
    r = torch.tensor([-2.0, 0.5, 7.0])
    zero = torch.tensor(0.0)
    assert torch.equal(losses.kto_losses(r, r, zero, B), losses.kto_losses(r, r, zero, B, signed_kl=True))


def test_kto_s_both_branches_hand_computed():
    # r > 0, r < 0 and r = 0 in each branch, z0 = 1.5, unequal weights
    r, kl = torch.tensor([2.0, -1.0, 0.0]), torch.tensor(1.5)
    out = losses.kto_losses(r, r, kl, B, desirable_weight=0.7, undesirable_weight=1.9, signed_kl=True)
    desirable = [0.7 * (1 - sig(B * 3.5)), 0.7 * (1 - sig(B * -2.5)), 0.7 * (1 - sig(0.0))]
    # undesirable: u = r + sign(r) z0 = 3.5, -2.5, 0; loss 1 - sigmoid(-beta u)
    undesirable = [1.9 * (1 - sig(-B * 3.5)), 1.9 * (1 - sig(B * 2.5)), 1.9 * (1 - sig(0.0))]
    assert out.tolist() == pytest.approx(desirable + undesirable, abs=1e-7)
    # plain KTO's undesirable loss at r = 2 is 1 - sigmoid(beta (z0 - r)): not KTO-S's
    assert losses.kto_losses(r, r, kl, B, 0.7, 1.9)[3].item() == pytest.approx(1.9 * (1 - sig(B * -0.5)))
    assert abs(1.9 * (1 - sig(B * -0.5)) - undesirable[0]) > 0.1


def test_kto_s_sign_rule():
    r = torch.tensor([-2.0, 0.0, 3.0])
    assert losses.signed_reference_point(r, torch.tensor(1.5)).tolist() == [-3.5, 0.0, 4.5]


def grad_wrt_r(r0: float, kl: float, signed: bool, desirable: bool) -> float:
    r = torch.tensor([float(r0)], requires_grad=True)
    empty = torch.zeros(0)
    args = (r, empty) if desirable else (empty, r)
    losses.kto_losses(*args, torch.tensor(float(kl)), beta=1.0, signed_kl=signed).sum().backward()
    return r.grad.abs().item()


def test_study_example_r15_kl1_vs_kl15():
    # KTO: sigma(14) at KL=1 but sigma(0) at KL=15, so the larger KL gets the larger gradient.
    assert grad_wrt_r(15, 15, signed=False, desirable=True) > grad_wrt_r(15, 1, signed=False, desirable=True)
    # KTO-S reverses that: for r > 0 the gradient falls as z0 grows.
    g = [grad_wrt_r(15, kl, signed=True, desirable=True) for kl in (0.0, 1.0, 5.0, 15.0)]
    assert g == sorted(g, reverse=True) and g[-1] < g[0]
    # undesirable, r > 0: the gradient falls strictly as z0 grows (plain KTO ties at z0 = 0 and
    # z0 = 2r, where sigmoid'(-r) = sigmoid'(r), and would pass a non-strict ordering)
    g = [grad_wrt_r(0.5, kl, signed=True, desirable=False) for kl in (0.0, 1.0, 5.0)]
    assert g[0] > g[1] > g[2]
    plain = [grad_wrt_r(0.5, kl, signed=False, desirable=False) for kl in (0.0, 1.0, 5.0)]
    assert plain[0] == pytest.approx(plain[1]) and not plain[0] > plain[1]


def test_no_gradient_into_kl():
    kl = torch.tensor(2.0, requires_grad=True)
    r = torch.tensor([1.0, -1.0], requires_grad=True)
    for signed in (False, True):
        out = losses.kto_losses(r[:1], r[1:], kl, B, signed_kl=signed).sum()
        out.backward()
        assert kl.grad is None
    ests = losses.kl_estimate(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.5, 0.5]))
    assert not ests.requires_grad and ests.item() == pytest.approx(1.0)


def test_sequence_logps_sum_and_mean():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, float("-inf")]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert losses.sequence_logps(lp, mask).tolist() == [-5.0, -4.0]
    assert losses.sequence_logps(lp, mask, length_normalize=True).tolist() == [-2.5, -4.0]
    assert losses.sequence_logps(lp, torch.zeros_like(mask), length_normalize=True).tolist() == [0.0, 0.0]


def test_length_normalisation_equals_sum_for_one_token_completions():
    lp = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.long)
    mask[torch.arange(4), torch.tensor([0, 2, 5, 3])] = 1
    assert torch.equal(losses.sequence_logps(lp, mask), losses.sequence_logps(lp, mask, length_normalize=True))


def test_nll_is_per_sequence_mean_over_desirable_rows():
    # desirable rows of 2 and 1 tokens: per-sequence means 2 and 4 give 3, where pooling the
    # three tokens would give 8/3; the undesirable row (NLL 10) is left out
    lp = torch.tensor([[-1.0, -3.0, 0.0], [-10.0, -10.0, -10.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    labels = torch.tensor([True, False, True])
    pooled = -(lp * mask)[labels].sum() / mask[labels].sum()
    assert pooled.item() == pytest.approx(8 / 3)
    assert losses.desirable_nll(lp, mask, labels).item() == pytest.approx((2.0 + 4.0) / 2)
    # labels as 0/1 integers select the same rows (not rows 0 and 1 by index)
    assert losses.desirable_nll(lp, mask, torch.tensor([1, 0, 1])).item() == pytest.approx(3.0)
    zero = losses.desirable_nll(lp.requires_grad_(), mask, torch.tensor([False, False, False]))
    assert zero.item() == 0.0 and zero.requires_grad
