"""Model FLOPs of training, per token, by formula (Kaplan et al. 2020, Table 1; PaLM, Chowdhery et al. 2022,
appendix B).

A forward pass costs 2 FLOPs (a multiply and an add) per weight of each matrix product a token goes through,
the LM head included (tied to the embedding, it is still a product; the embedding lookup is not), plus
attention's two products over the K keys a query sees, QK^T and AV: 2 × 2 × K × d per layer. The backward pass
costs twice the forward, so training costs 3 × forward: 6 N + 12 L K d per token. Masked keys count (the causal
mask's possible savings are not subtracted, as in PaLM's count), biases, norms, softmax and activations do not:
they are a few percent at these sizes. Achieved FLOP/s = these FLOPs / the measured time.
"""

from __future__ import annotations


def block_weights(dim: int, mlp_dim: int) -> int:
    """Weights of one transformer block's products: Q, K, V and the output projection, and the MLP."""
    return 4 * dim * dim + 2 * dim * mlp_dim


def body_train_flops(layers: int, dim: int, mlp_dim: int, keys: int) -> float:
    """A stack of transformer blocks, per token whose query sees `keys` keys, without the heads on top."""
    return 6 * layers * block_weights(dim, mlp_dim) + attention_train_flops(layers, dim, keys)


def attention_train_flops(layers: int, dim: int, keys: int) -> float:
    """The part that grows with the length: QK^T and AV, forward and backward."""
    return 12 * layers * keys * dim


def gpt_train_flops(layers: int, dim: int, block: int, vocab: int) -> float:
    """GPT / GPT-2, per token of a batch of `block`-token sequences, every position scored."""
    return body_train_flops(layers, dim, 4 * dim, block) + 6 * dim * vocab


def bert_train_flops(layers: int, dim: int, block: int, vocab: int, masked: float) -> float:
    """BERT's masked LM per token, the head (a dim × dim transform, then the tied vocab product) run only at the
    `masked` fraction of positions, as ctxlm runs it. The pooler and NSP head, once per sequence, are left out."""
    return body_train_flops(layers, dim, 4 * dim, block) + 6 * masked * (dim * dim + dim * vocab)


def xl_train_flops(layers: int, dim: int, block: int, memory: int, vocab: int) -> float:
    """Transformer-XL per token of a `block`-token segment that also attends to `memory` positions, with a plain
    softmax tied to the embedding. Each layer projects keys and values for all K = block + memory positions
    again every segment; a query scores K keys twice (content and position terms) and mixes K values. So per
    token and layer: the Q, output and MLP products (10 d² weights), the K and V projections (2 d² × K / block)
    and 3 K d multiply-adds of attention. The projection of the K relative positions, once per batch, is left
    out."""
    keys = block + memory
    per_layer = 10 * dim * dim + 2 * dim * dim * keys / block + 3 * keys * dim
    return 6 * (layers * per_layer + dim * vocab)
