"""Shared blocks: attention against a hand-written reference (causal, bidirectional, padding, cache offset)."""

import copy
import math

import pytest
import torch

from ctxlm.nn.attention import KVCache, MultiHeadAttention, build_attention_mask
from ctxlm.nn.blocks import TransformerBlock
from tolerances import assert_fp_close

pytestmark = pytest.mark.numeric


def reference_attention(attn: MultiHeadAttention, x, allowed):
    """softmax(QK^T / sqrt(d) masked) V, written out in float64; `allowed` is (batch, q, k) boolean."""
    attn, x = copy.deepcopy(attn).double(), x.double()
    batch, time, dim = x.shape
    q, k, v = attn.qkv(x).split(dim, dim=-1)
    heads = lambda t: t.view(batch, -1, attn.n_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    y = scores.softmax(-1) @ heads(v)
    return attn.out(y.transpose(1, 2).reshape(batch, time, dim))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_padding_matches_reference(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(24, 3, causal=causal).eval()
    x = torch.randn(2, 6, 24)
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    allowed = key_mask[:, None, :].expand(2, 6, 6)
    if causal:
        allowed = allowed & torch.ones(6, 6, dtype=torch.bool).tril()
    got = attn(x, build_attention_mask(6, 6, causal=causal, key_mask=key_mask))
    expected = reference_attention(attn, x, allowed)
    # float32 against float64: sums of up to 24 terms through 4 products (q/k/v, scores, weights x values, out)
    assert_fp_close(got[0], expected[0], terms=24, depth=4)
    assert_fp_close(got[1, :4], expected[1, :4], terms=24, depth=4)  # padded queries are don't-care


def test_no_mask_means_sdpa_flags_and_cache_continues_exactly():
    assert build_attention_mask(5, 5, causal=True) is None
    assert build_attention_mask(1, 9, causal=True) is None
    assert build_attention_mask(3, 9, causal=True).shape == (1, 1, 3, 9)  # chunk after a cache: explicit mask
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, causal=True).eval()
    x = torch.randn(1, 7, 16)
    full = attn(x)
    cache = KVCache(1, 1, 2, 8, max_len=7)
    parts = []
    for chunk in (x[:, :3], x[:, 3:4], x[:, 4:]):  # a prefix, one token, then a chunk of three
        parts.append(attn(chunk, build_attention_mask(chunk.shape[1], cache.length + chunk.shape[1], causal=True),
                          cache))
        cache.advance(chunk.shape[1])
    assert_fp_close(torch.cat(parts, 1), full, terms=16, depth=4)  # 16-wide products, 4 deep


def test_pre_and_post_norm_blocks_differ_in_where_layernorm_sits():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3 + 1
    post = TransformerBlock(16, 2, 32, causal=False, pre_norm=False).eval()
    out = post(x)  # post-LN output is normalised: zero mean, unit variance per position
    # the last LayerNorm's own rounding and the mean's: 16 terms, 2 stages, of values up to max |out|
    assert_fp_close(out.mean(-1), torch.zeros(2, 5), terms=16, depth=2, magnitude=out.abs().max().item())
    pre = TransformerBlock(16, 2, 32, causal=False, pre_norm=True).eval()
    pre.load_state_dict(post.state_dict())
    assert pre(x).mean(-1).abs().max() > 0.1  # pre-LN keeps the residual stream's own scale
