"""SD loss (paper §1.5): hand computation, reference formula, gradient, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from unroll_utils.losses import logit_std_penalty, make_loss, sd_loss


def test_sd_loss_matches_hand_computation():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    # CE by hand: -log softmax
    ce0 = -3.0 + math.log(math.exp(1) + math.exp(2) + math.exp(3))
    ce1 = -0.0 + math.log(2 + math.exp(3))
    ce = (ce0 + ce1) / 2
    # unbiased std over classes: row 0 -> 1.0 ; row 1 -> mean 1, deviations (-1,-1,2) -> sqrt(6/2)
    std0, std1 = 1.0, math.sqrt(3.0)
    penalty = (std0 + std1) / (2 * 3)  # / (N * C)
    for lam in (0.0, 0.5, 7.0):
        assert float(sd_loss(z, y, lam)) == pytest.approx(ce + lam * penalty, rel=1e-12)
    assert float(logit_std_penalty(z)) == pytest.approx(penalty, rel=1e-12)


def test_sd_loss_is_reference_formula_and_lambda_zero_is_ce():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    ref = F.cross_entropy(z, y) + 3.0 * torch.sum(torch.std(z, dim=1)) / z.numel()
    assert torch.equal(sd_loss(z, y, 0.0), F.cross_entropy(z, y))
    assert float(sd_loss(z, y, 3.0)) == pytest.approx(float(ref), rel=1e-14)
    # penalty per unit lambda is 1/C of the mean std: 10x weaker for 100 classes than 10 classes
    z100 = torch.randn(16, 100, generator=g, dtype=torch.float64)
    assert float(logit_std_penalty(z100)) == pytest.approx(float(z100.std(1).mean()) / 100, rel=1e-12)


def test_sd_loss_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (4,), generator=g)
    assert torch.autograd.gradcheck(lambda t: sd_loss(t, y, 2.5), (z,))


def test_make_loss_and_errors():
    z = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    assert torch.equal(make_loss("sd", 1.5)(z, y), sd_loss(z, y, 1.5))
    assert torch.equal(make_loss("ce")(z, y), F.cross_entropy(z, y))
    with pytest.raises(ValueError, match="lam"):
        sd_loss(z, y, -1.0)
    with pytest.raises(ValueError, match="lam"):
        sd_loss(z, y, float("inf"))
    with pytest.raises(ValueError, match="lam"):
        make_loss("ce", 1.0)
    with pytest.raises(ValueError, match="loss name"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="C >= 2"):
        sd_loss(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="shape"):
        logit_std_penalty(torch.randn(3))
