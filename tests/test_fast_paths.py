"""Speed-only code paths of the GPT models give what the plain paths give."""

import pytest
import torch
import torch.nn.functional as F

from helpers import GPT_CONFIGS, gpt_fp32, gpt_reference_pair
from tolerances import assert_fp_close

pytest.importorskip("transformers")
pytestmark = pytest.mark.numeric


def test_decoding_copies_equal_plain_products_and_follow_weight_changes():
    _, model = gpt_reference_pair(*GPT_CONFIGS[1])
    ids = torch.tensor([[5], [6]])  # two single-row sequences: decoding-sized products
    with torch.no_grad():
        fast = model(ids).logits
        with torch.enable_grad():  # the plain F.linear path
            plain = model(ids).logits.detach()
        assert_fp_close(fast, plain, **gpt_fp32(*GPT_CONFIGS[1]))
        assert all(p.is_contiguous() for p in model.parameters())  # parameters keep nn.Linear's layout
        for p in model.parameters():  # an in-place update (as an optimizer step) must reach the copies
            p.mul_(0.5)
        with torch.enable_grad():
            plain = model(ids).logits.detach()
        assert_fp_close(model(ids).logits, plain, **gpt_fp32(*GPT_CONFIGS[1]))
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}  # copies are not saved


def test_last_only_logits_equal_the_last_position():
    _, model = gpt_reference_pair(*GPT_CONFIGS[3])
    ids = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 4]])
    mask = torch.tensor([[True] * 5, [False, True, True, True, True]])
    with torch.no_grad():
        full = model(ids, mask=mask).logits
        last = model(ids, mask=mask, last_only=True).logits
    assert last.shape == (2, 1, full.shape[-1])
    assert_fp_close(last, full[:, -1:], **gpt_fp32(*GPT_CONFIGS[3]))


def test_the_transposed_copy_gives_the_linear_product_and_follows_weight_updates():
    from ctxlm.nn.attention import TransposedCopy

    torch.manual_seed(0)
    weight, bias = torch.randn(96, 16), torch.randn(96)
    head = TransposedCopy()
    with torch.no_grad():
        for rows in (1, TransposedCopy.MAX_ROWS, TransposedCopy.MAX_ROWS + 1):
            x = torch.randn(rows, 1, 16)
            assert_fp_close(head.linear(x, weight, bias), F.linear(x, weight, bias), terms=17)  # 16 products + bias
        assert head._copy is not None  # the copy was used
        weight.mul_(2.0)  # as an optimizer step or load_state_dict would: the version moves, the copy is remade
        x = torch.randn(2, 16)
        assert_fp_close(head.linear(x, weight), F.linear(x, weight), terms=16)
