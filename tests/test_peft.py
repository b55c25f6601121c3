"""Adapters (Houlsby et al. 2019) and LoRA (Hu et al. 2021): initialisation at or near the identity, the fused qkv
slices, merging, the decoding path, the config round trip through save/load, parameter counts and refusals."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import ctxlm
import helpers
from ctxlm.config import ElmoConfig, TransformerXLConfig, config_from_dict
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.nn.attention import DecodingLinear
from ctxlm.nn.blocks import use_gradient_checkpointing
from ctxlm.nn.peft import (
    ADAPTER_INIT_STD,
    Adapter,
    LoRA,
    LoRALinear,
    add_adapters,
    add_lora,
    merge_lora,
    peft_parameters,
)

EPS32 = torch.finfo(torch.float32).eps
SIGMA = ADAPTER_INIT_STD
TRUNCATED_STD = 0.8796 * SIGMA  # a Gaussian truncated at ±2 std keeps 88 % of its std

TINY = dict(vocab_size=50, max_positions=16, dim=16, n_layers=3, n_heads=2, dropout=0.0, attn_dropout=0.0)


def tiny(kind: str = "gpt2", **fields) -> nn.Module:
    """A 3-block GPT-2, GPT or BERT in eval mode, seeded."""
    return helpers.tiny(kind, **{**TINY, **fields}).eval()


def outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's top-level scores: the LM logits for GPT, the MLM logits for BERT."""
    return model(ids).logits


def randomise_b(model: nn.Module, std: float = 0.5) -> None:
    """Move every LoRA update off zero, so that it changes the model (as training would)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRA):
                module.B.normal_(0.0, std)


def perturb_peft(model: nn.Module) -> None:
    """Every adapter and LoRA parameter moved away from its initialisation: a reload that re-draws them shows."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Adapter | LoRA):
                for p in module.parameters():
                    p.add_(torch.randn_like(p) * 0.1)


# -- adapters -----------------------------------------------------------------------------------------------


def test_adapter_initialisation_is_a_truncated_gaussian_of_std_1e_2():
    """Checked inside a model built from its config, whose pretrained-style initialisation must not overwrite
    the adapters' own (it would draw N(0, 0.02) without truncation)."""
    model = tiny("bert", dim=64, n_heads=4, adapter_dim=32)
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == 2 * 3
    weights = torch.cat([layer.weight.flatten() for a in adapters for layer in (a.down, a.up)])
    biases = torch.cat([layer.bias for a in adapters for layer in (a.down, a.up)])
    assert weights.abs().max() <= 2 * SIGMA
    assert weights.mean().abs() < 0.05 * SIGMA
    assert abs(weights.std().item() - TRUNCATED_STD) < 0.05 * TRUNCATED_STD  # 24,576 draws: 0.5 % standard error
    assert torch.equal(biases, torch.zeros_like(biases))


def test_a_fresh_adapter_changes_its_input_within_the_bound_of_its_initialisation():
    """|up(gelu(down x))|_i <= sum_j |U_ij| |D_j x| <= (2 std) m (2 std) |x|_1, since |gelu(z)| <= |z|."""
    torch.manual_seed(0)
    dim, bottleneck = 32, 8
    adapter = Adapter(dim, bottleneck)
    x = torch.randn(4, 7, dim)
    change = (adapter(x) - x).abs()
    bound = (2 * SIGMA) ** 2 * bottleneck * x.abs().sum(-1, keepdim=True)
    assert (change <= bound).all()
    assert change.max() > 0  # but not the identity itself: the adapter is there


@pytest.mark.parametrize("kind", ["gpt2", "gpt", "bert"])
def test_fresh_adapters_keep_the_model_close_to_the_original(kind):
    """Each adapter adds about std² sqrt(m dim) / 2 of its input (std: the truncated init's); the six of them
    may move the hidden states by ten times their sum, relative to the largest state, not more."""
    model = tiny(kind)
    ids = torch.randint(0, 50, (2, 12))
    before = model(ids).hidden.states
    bottleneck = 4
    add_adapters(model, bottleneck)
    after = model(ids).hidden.states
    per_adapter = TRUNCATED_STD ** 2 * math.sqrt(bottleneck * 16) / 2
    for old, new in zip(before, after, strict=True):
        assert (new - old).abs().max() <= 10 * 6 * per_adapter * old.abs().max()
    assert not torch.equal(after[-1], before[-1])


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_adapters_sit_after_the_sub_layer_dropout_before_the_residual_addition(kind):
    """pre-LN (GPT-2): x + A(drop(attn(LN x))); post-LN (BERT): LN(x + A(drop(attn x))); likewise the MLP. An
    adapter that adds 1 tells the places apart: before the dropout the 1 would be dropped or scaled with it."""
    model = tiny(kind, dropout=0.5).train()
    block = model.backbone.blocks[0]
    add_adapters(model, 2)

    class AddOne(nn.Module):
        def forward(self, h):
            return h + 1

    block.attn_adapter, block.mlp_adapter = AddOne(), AddOne()
    x = torch.randn(1, 5, 16)
    torch.manual_seed(1)
    out = block(x)
    torch.manual_seed(1)  # the same dropout masks, drawn in the same order
    if kind == "gpt2":
        h = x + block.dropout(block.attn(block.attn_norm(x))) + 1
        expected = h + block.dropout(block.mlp(block.mlp_norm(h))) + 1
    else:
        h = block.attn_norm(x + block.dropout(block.attn(x)) + 1)
        expected = block.mlp_norm(h + block.dropout(block.mlp(h)) + 1)
    torch.testing.assert_close(out, expected)


def test_parameter_counts():
    model = tiny("bert")
    d, m, layers = 16, 4, 3
    added = add_adapters(model, m)
    per_adapter = 2 * d * m + m + d
    assert added == 2 * layers * per_adapter
    adapter_params = sum(p.numel() for a in model.modules() if isinstance(a, Adapter) for p in a.parameters())
    assert adapter_params == added
    trained = peft_parameters(model, "adapters")
    assert sum(p.numel() for p in trained) == added + layers * 2 * 2 * d  # + each block's two LayerNorms
    assert len({id(p) for p in trained}) == len(trained)

    model, r = tiny("gpt2"), 2
    assert add_lora(model, r, targets="qv") == layers * 2 * (r * d + d * r)
    assert sum(p.numel() for p in peft_parameters(model, "lora")) == layers * 2 * 2 * d * r
    assert add_lora(tiny("gpt2"), r, targets="qkvo") == layers * 4 * 2 * d * r


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_gradient_checkpointing_gives_the_same_gradients_with_adapters_and_lora(kind):
    model = tiny(kind, dropout=0.1).train()
    add_adapters(model, 4)
    add_lora(model, 2, targets="qkvo")
    perturb_peft(model)
    ids = torch.randint(0, 50, (2, 12))

    def grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        model.backbone(ids).last.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert use_gradient_checkpointing(model) == 3
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert any("adapter" in name for name in plain) and any(".lora." in name for name in plain)
    for name in plain:  # dropout masks replay in the recomputation
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


# -- LoRA ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "gpt", "bert"])
@pytest.mark.parametrize("targets", ["qv", "qkvo", "k"])
def test_lora_at_initialisation_is_exactly_the_model(kind, targets):
    model = tiny(kind)
    ids = torch.randint(0, 50, (2, 12))
    before = outputs(model, ids)
    add_lora(model, 4, targets=targets)
    assert torch.equal(outputs(model, ids), before)
    # A model built from a config with LoRA: its initialisation must leave B at zero too.
    built = build_model(copy.deepcopy(model.config)).eval()
    built.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora." not in k}, strict=False)
    assert torch.equal(outputs(built, ids), before)


def test_lora_updates_only_the_targeted_slices_of_the_fused_projection():
    """Against the paper's form on separate W_q, W_k, W_v: y = W x + b, plus (α / r) B_t A_t x on slice t; the
    gradients of A and B (through the in-place addition) match those of the dense form."""
    torch.manual_seed(0)
    dim, rank, alpha = 4, 2, 6.0
    base = DecodingLinear(dim, 3 * dim).double()
    layer = LoRALinear(base, {"q": (0, dim), "v": (2 * dim, 3 * dim)}, rank, alpha)
    assert layer.weight is base.weight and layer.bias is base.bias
    randomise_b(layer)
    x = torch.randn(3, 5, dim, dtype=torch.float64)
    y = layer(x)
    zero = torch.zeros(dim, dim, dtype=torch.float64)
    q, v = layer.lora["q"], layer.lora["v"]
    delta = torch.cat([q.B @ q.A, zero, v.B @ v.A]) * (alpha / rank)
    dense = x @ (base.weight + delta).T + base.bias
    torch.testing.assert_close(y, dense, atol=1e-12, rtol=0)
    (y.square().sum()).backward()
    ours = [p.grad.clone() for p in (q.A, q.B, v.A, v.B)]
    for p in (q.A, q.B, v.A, v.B):
        p.grad = None
    delta = torch.cat([q.B @ q.A, zero, v.B @ v.A]) * (alpha / rank)
    (x @ (base.weight + delta).T + base.bias).square().sum().backward()
    for mine, theirs in zip(ours, (q.A.grad, q.B.grad, v.A.grad, v.B.grad), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", ["gpt2", "gpt", "bert"])
def test_merged_lora_equals_the_unmerged_model(kind):
    """Both fp32 computations against the float64 one, within a few sqrt(dim) units of fp32 rounding of the
    largest output; an update folded into the wrong rows or with the wrong scale would be off by O(1)."""
    model = tiny(kind)
    ids = torch.randint(0, 50, (2, 12))
    plain_keys = set(model.state_dict())
    base = outputs(model, ids)
    add_lora(model, 4, alpha=8.0, targets="qkvo")
    randomise_b(model)
    with torch.no_grad():
        reference = outputs(copy.deepcopy(model).double(), ids)
        unmerged = outputs(model, ids)
        assert merge_lora(model) == 2 * 3
        merged = outputs(model, ids)
    tolerance = 4 * math.sqrt(16) * EPS32 * reference.abs().max().item()
    assert (unmerged - base).abs().max() > 1e3 * tolerance  # the updates matter
    assert (unmerged.double() - reference).abs().max() <= tolerance
    assert (merged.double() - reference).abs().max() <= tolerance
    # A plain model again: module types, state dict and config.
    assert set(model.state_dict()) == plain_keys
    assert not any(isinstance(m, LoRALinear | LoRA) for m in model.modules())
    attn = model.backbone.blocks[0].attn
    assert type(attn.qkv) is DecodingLinear and type(attn.out) is nn.Linear
    assert (model.config.lora_rank, model.config.lora_alpha, model.config.lora_targets) == (0, 0.0, "qv")
    assert merge_lora(model) == 0


def test_cached_generation_equals_the_full_forward_with_lora():
    """The full forward over 2 x 10 = 20 rows goes through F.linear, each cached step (2 rows, no grad) through
    DecodingLinear's transposed copy: both must carry the LoRA update. After merging, the copy must follow the
    weight's new values."""
    model = tiny("gpt2")
    add_lora(model, 4, targets="qkvo")
    randomise_b(model)
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        assert (full - tiny("gpt2")(ids).logits).abs().max() > 0.1  # the updates matter

        def cached_logits():
            cache = model.new_cache(2)
            steps = [model(ids[:, :4], cache=cache).logits]
            steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(4, 10)]
            return torch.cat(steps, dim=1)

        torch.testing.assert_close(cached_logits(), full, atol=1e-5, rtol=0)
        merge_lora(model)
        torch.testing.assert_close(cached_logits(), full, atol=1e-5, rtol=0)


# -- config, save and load ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("method", ["adapters", "lora", "both"])
def test_save_and_load_give_the_same_adapted_model(kind, method, tmp_path):
    model = tiny(kind)
    if method in ("adapters", "both"):
        add_adapters(model, 4)
    if method in ("lora", "both"):
        add_lora(model, 2, alpha=4.0, targets="qko")
    perturb_peft(model)
    ids = torch.randint(0, 50, (2, 12))
    folder = ctxlm.save(model, tmp_path / "adapted")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["adapter_dim"] == (4 if method != "lora" else 0)
    assert (saved["lora_rank"], saved["lora_alpha"], saved["lora_targets"]) == (
        (2, 4.0, "qko") if method != "adapters" else (0, 0.0, "qv"))
    loaded = ctxlm.load(folder)
    assert loaded.config == model.config
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))


def test_a_merged_model_saves_as_a_plain_one(tmp_path):
    model = tiny("gpt2")
    add_lora(model, 2)
    randomise_b(model)
    merge_lora(model)
    folder = ctxlm.save(model, tmp_path / "merged")
    loaded = ctxlm.load(folder)
    assert set(loaded.state_dict()) == set(tiny("gpt2").state_dict())
    ids = torch.randint(0, 50, (1, 8))
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))


def test_old_config_files_without_the_fields_still_load():
    config = config_from_dict({"model_type": "gpt2", "vocab_size": 50, "dim": 16, "n_heads": 2})
    assert (config.adapter_dim, config.lora_rank, config.lora_alpha, config.lora_targets) == (0, 0, 0.0, "qv")


@pytest.mark.parametrize("field, value", [
    ("adapter_dim", -1), ("lora_rank", -2), ("lora_alpha", -1.0), ("lora_targets", ""), ("lora_targets", "qx"),
    ("lora_targets", "qq"), ("lora_targets", ["q", "v"]),
])
def test_config_refuses_bad_fields_naming_them(field, value):
    with pytest.raises(UserError, match=field) as err:
        config_from_dict({"model_type": "bert", field: value}, source="config.json")
    assert "\n" not in str(err.value)


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, name", [
    (ElmoConfig(vocab_size=10, dim=8, cell_dim=16, char_dim=4, filters=[[1, 4]], n_highway=0), "elmo"),
    (TransformerXLConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, head_dim=8, mlp_dim=32, mem_len=8),
     "transformer-xl"),
], ids=["elmo", "transformer-xl"])
def test_models_without_transformer_blocks_are_refused(config, name):
    model = build_model(config)
    with pytest.raises(UserError, match=f"adapters are built into the transformer blocks of GPT, GPT-2, BERT and "
                                        f"XLNet; {name} has none"):
        add_adapters(model, 4)
    with pytest.raises(UserError, match=f"{name} has none"):
        add_lora(model, 4)


def test_bad_arguments_are_refused():
    model = tiny("gpt2")
    with pytest.raises(UserError, match="rank"):
        add_lora(model, 0)
    with pytest.raises(UserError, match="bottleneck"):
        add_adapters(model, 0)
    with pytest.raises(UserError, match="targets"):
        add_lora(model, 2, targets="qz")
    with pytest.raises(UserError, match="no adapters"):
        peft_parameters(model, "adapters")
    with pytest.raises(UserError, match="'prefix'"):
        peft_parameters(model, "prefix")
    add_adapters(model, 2)
    add_lora(model, 2)
    with pytest.raises(UserError, match="already"):
        add_adapters(model, 2)
    with pytest.raises(UserError, match="already"):
        add_lora(model, 2)
    assert (model.config.adapter_dim, model.config.lora_rank) == (2, 2)
