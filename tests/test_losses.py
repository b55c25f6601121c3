"""The chunked LM-head cross-entropy equals F.cross_entropy(F.linear(...)) in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ctxlm.nn.losses import linear_cross_entropy
from tolerances import assert_fp_close

pytestmark = pytest.mark.numeric


def plain_loss_and_gradients(hidden, weight, bias, targets):
    """The reference, in float64: F.cross_entropy(F.linear(...)) and its gradients (times 3) to each input."""
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    loss = F.cross_entropy(F.linear(*leaves).flatten(0, 1), targets.flatten())
    return loss, torch.autograd.grad(loss * 3.0, leaves)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])  # not dividing the 50 rows, dividing, larger than all
def test_value_and_gradients_match_the_plain_loss(with_bias, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(5, 10, 16, requires_grad=True)
    weight = torch.randn(33, 16, requires_grad=True)
    bias = torch.randn(33, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 33, (5, 10))
    targets[0, :4] = -100  # ignored rows: no loss, no gradient
    plain, expected = plain_loss_and_gradients(hidden, weight, bias, targets)
    fused = linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size)
    got = torch.autograd.grad(fused * 3.0, [t for t in (hidden, weight, bias) if t is not None])
    # float32 rounding: sums of up to 50 terms (rows into the weight's gradient; 33 classes, 16 + 1 products),
    # through the logits, the log-softmax, the mean and the backward products
    assert_fp_close(fused, plain, terms=50, depth=4)
    for g, e in zip(got, expected, strict=True):
        assert_fp_close(g, e, terms=50, depth=4)
    assert got[0][0, :4].abs().max() == 0


def test_without_grad_gives_the_loss_only():
    hidden, weight = torch.randn(6, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert not loss.requires_grad
    expected = F.cross_entropy(hidden.detach().double() @ weight.detach().double().t(), targets)  # float64
    assert_fp_close(loss, expected, terms=11, depth=3)  # 8 products, 11 classes, 6 rows; logits, log-softmax, mean
