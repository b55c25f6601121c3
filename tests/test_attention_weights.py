"""`recording_attention`: the attention weights SDPA never materialises, recomputed for looking at (ctxlm serve's
/attention), equal to what the layers really apply, and no change to anything when off."""

import pytest
import torch

from ctxlm.nn.attention import MultiHeadAttention, RelativeMultiHeadAttention, attention_weights, recording_attention
from helpers import tiny


def _first_attention_call(model, module_type):
    """Run `model`'s first attention layer once under a hook: its inputs and output."""
    layer = next(m for m in model.modules() if isinstance(m, module_type))
    seen = {}
    handle = layer.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
    return layer, seen, handle


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_recorded_weights_are_the_ones_the_layer_applies(family):
    model = tiny(family).eval()
    ids = torch.randint(0, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False  # padding in the second row
    layer, seen, handle = _first_attention_call(model.backbone, MultiHeadAttention)
    with torch.no_grad():
        plain = model.backbone(ids, mask=mask).last
        with recording_attention(model.backbone) as weights:
            recorded = model.backbone(ids, mask=mask).last
    handle.remove()
    assert torch.equal(plain, recorded)  # looking changes nothing
    assert len(weights) == model.config.n_layers
    first = weights[0]
    assert first.shape == (2, model.config.n_heads, 9, 9) and first.dtype == torch.float32
    torch.testing.assert_close(first.sum(-1), torch.ones(2, model.config.n_heads, 9))
    assert float(first[1, :, :6, 6:].abs().max()) == 0  # real tokens never look at padding
    if family == "gpt2":
        assert float(first.triu(1).abs().max()) == 0  # nor a decoder's tokens at later ones
    # the weights times the values, through the output projection, are the layer's output
    x = seen["args"][0]
    batch, time, dim = x.shape
    v = layer.qkv(x).view(batch, time, 3, layer.n_heads, layer.head_dim)[:, :, 2].transpose(1, 2)
    rebuilt = layer.out((first @ v).transpose(1, 2).reshape(batch, time, dim))
    torch.testing.assert_close(rebuilt[0], seen["output"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rebuilt[1, :6], seen["output"][1, :6], atol=1e-5, rtol=1e-4)


def test_transformer_xl_weights_cover_the_memory():
    model = tiny("transformer-xl").eval()
    first_segment, second_segment = torch.randint(0, 100, (1, 5)), torch.randint(0, 100, (1, 4))
    layer, seen, handle = _first_attention_call(model.backbone, RelativeMultiHeadAttention)
    with torch.no_grad():
        memory = model.backbone(first_segment).memory
        with recording_attention(model.backbone) as weights:
            model.backbone(second_segment, memory=memory)
    handle.remove()
    first = weights[0]
    assert len(weights) == model.config.n_layers and first.shape == (1, model.config.n_heads, 4, 9)
    torch.testing.assert_close(first.sum(-1), torch.ones(1, model.config.n_heads, 4))
    assert float(first[..., 5:].triu(1).abs().max()) == 0  # within the segment, causal
    assert float(first[..., :5].min()) > 0  # every query sees the whole memory
    x, _, _, layer_memory, _ = seen["args"]
    context = torch.cat([layer_memory, x], dim=1)
    inner = layer.n_heads * layer.head_dim
    v = torch.nn.functional.linear(context, layer.qkv.weight[2 * inner:]).view(1, 9, layer.n_heads, layer.head_dim)
    rebuilt = layer.out((first @ v.transpose(1, 2)).transpose(1, 2).reshape(1, 4, inner))
    torch.testing.assert_close(rebuilt, seen["output"], atol=1e-5, rtol=1e-4)


def test_recording_stops_with_the_block_and_costs_nothing_outside_it():
    model = tiny("gpt2").eval()
    with torch.no_grad(), recording_attention(model) as weights:
        model(torch.randint(0, 64, (1, 5)))
    assert len(weights) == model.config.n_layers
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 5)))
    assert len(weights) == model.config.n_layers  # nothing more once the block is left
    assert all(m.record is None for m in model.modules() if isinstance(m, MultiHeadAttention))


def test_attention_weights_of_a_causal_square_and_of_a_mask():
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    causal = attention_weights(q, k, is_causal=True)
    expected = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), -1e9)
    torch.testing.assert_close(causal, expected.softmax(-1))
    mask = torch.tensor([True, True, False, True])[None, None, None, :]
    masked = attention_weights(q, k, mask)
    assert float(masked[..., 2].abs().max()) == 0
    torch.testing.assert_close(masked.sum(-1), torch.ones(1, 2, 4))
