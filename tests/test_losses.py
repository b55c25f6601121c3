"""The chunked LM-head cross-entropy equals F.cross_entropy(F.linear(...)) in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ctxlm.nn.losses import linear_cross_entropy


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])  # not dividing the 50 rows, dividing, larger than all
def test_value_and_gradients_match_the_plain_loss(with_bias, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(5, 10, 16, requires_grad=True)
    weight = torch.randn(33, 16, requires_grad=True)
    bias = torch.randn(33, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 33, (5, 10))
    targets[0, :4] = -100  # ignored rows: no loss, no gradient
    plain = F.cross_entropy(F.linear(hidden, weight, bias).flatten(0, 1), targets.flatten())
    expected = torch.autograd.grad(plain * 3.0, [t for t in (hidden, weight, bias) if t is not None])
    fused = linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size)
    got = torch.autograd.grad(fused * 3.0, [t for t in (hidden, weight, bias) if t is not None])
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert got[0][0, :4].abs().max() == 0


def test_without_grad_gives_the_loss_only():
    hidden, weight = torch.randn(6, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), targets))
