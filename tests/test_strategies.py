"""Fine-tuning strategies: spec parsing, schedules, parameter groups, gradual unfreezing and the L2-SP penalty."""

import math

import pytest
import torch
from torch import nn

from ctxlm.config import GPTConfig
from ctxlm.errors import UserError
from ctxlm.models.gpt import GPTLanguageModel
from ctxlm.train import TrainConfig, make_optimizer
from ctxlm.transfer.strategies import (
    STRATEGIES,
    GradualUnfreezing,
    SPPenalty,
    Strategy,
    get_strategy,
    lr_multiplier,
    param_groups,
    resolve,
)


def tiny():
    """A 3-block GPT-2 (layer groups: embeddings + 3 blocks) and a 3-way linear head."""
    torch.manual_seed(0)
    model = GPTLanguageModel(GPTConfig(vocab_size=50, max_positions=16, dim=16, n_layers=3, n_heads=2,
                                       dropout=0.0, attn_dropout=0.0))
    return model, nn.Linear(16, 3)


def ids_of(group: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in group}


# -- specs --------------------------------------------------------------------------------------------------


def test_presets_are_as_documented():
    assert set(STRATEGIES) == {"features", "full", "gradual", "discriminative", "slanted", "l2sp", "ulmfit", "gpt"}
    assert get_strategy("features").freeze_backbone and get_strategy("features").schedule == "constant"
    assert get_strategy("full") == Strategy("full")
    assert get_strategy("discriminative").lr_decay == 2.6
    ulmfit = get_strategy("ulmfit")
    assert (ulmfit.lr_decay, ulmfit.schedule, ulmfit.cut_frac, ulmfit.ratio) == (2.6, "slanted", 0.1, 32.0)
    assert (get_strategy("l2sp").sp_alpha, get_strategy("l2sp").sp_beta) == (0.01, 0.01)
    assert (get_strategy("gpt").aux_lm_weight, get_strategy("gpt").warmup) == (0.5, 0.002)


def test_gradual_presets_unfreeze_one_group_per_epoch_unless_told():
    assert resolve(get_strategy("gradual"), 17).unfreeze_every == 17
    assert resolve(get_strategy("ulmfit"), 17).unfreeze_every == 17
    assert resolve(get_strategy("gradual:unfreeze_every=50"), 17).unfreeze_every == 50
    assert resolve(get_strategy("full"), 17).unfreeze_every is None


def test_overrides_parse_into_typed_fields():
    assert get_strategy("discriminative:lr_decay=2.0").lr_decay == 2.0
    assert get_strategy("gradual:unfreeze_every=50").unfreeze_every == 50
    s = get_strategy(" l2sp:sp_alpha=0.1, sp_norm=l1 ")
    assert (s.sp_alpha, s.sp_beta, s.sp_norm) == (0.1, 0.01, "l1")
    assert s.name == "l2sp:sp_alpha=0.1, sp_norm=l1"  # runs with different overrides keep different names
    assert get_strategy("full:schedule=slanted").schedule == "slanted"
    assert get_strategy("full:freeze_backbone=true").freeze_backbone is True


@pytest.mark.parametrize(("spec", "names"), [
    ("finetune", "features, full, gradual"),
    ("full:learning_rate=1", "lr_decay"),
    ("full:lr_decay", "lr_decay"),
    ("full:schedule=step", "linear, cosine, constant, slanted"),
    ("l2sp:sp_norm=l3", "l2, l1"),
])
def test_bad_names_list_the_valid_ones(spec, names):
    with pytest.raises(UserError, match=names):
        get_strategy(spec)


@pytest.mark.parametrize("spec", [
    "discriminative:lr_decay=0", "discriminative:lr_decay=abc", "gradual:unfreeze_every=0",
    "gradual:unfreeze_every=1.5", "full:warmup=1", "full:warmup=-0.1", "slanted:cut_frac=0", "slanted:cut_frac=1",
    "slanted:ratio=0.5", "l2sp:sp_alpha=-1", "full:freeze_backbone=maybe", "features:unfreeze_every=3",
])
def test_bad_values_are_user_errors(spec):
    with pytest.raises(UserError, match="strategy"):
        get_strategy(spec)


# -- schedules ----------------------------------------------------------------------------------------------


def test_slanted_triangular_follows_ulmfit_eq3():
    strategy, total = get_strategy("slanted"), 1000
    cut = math.floor(total * 0.1)

    def ulmfit(t):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / 0.1 - 1))
        return (1 + p * 31) / 32

    for step in (0, 1, 50, 99, 100, 101, 400, 999):
        assert lr_multiplier(strategy, step, total) == pytest.approx(ulmfit(step))
    assert lr_multiplier(strategy, 0, total) == pytest.approx(1 / 32)
    assert lr_multiplier(strategy, cut, total) == pytest.approx(1.0)
    assert lr_multiplier(strategy, total - 1, total) == pytest.approx(1 / 32, abs=2e-3)
    assert lr_multiplier(strategy, total, total) == pytest.approx(1 / 32)
    assert max(lr_multiplier(strategy, t, total) for t in range(total)) == pytest.approx(1.0)


def test_slanted_triangular_survives_short_runs():
    values = [lr_multiplier(get_strategy("slanted"), t, 7) for t in range(7)]  # floor(0.7) = 0 steps of rise
    assert all(1 / 32 <= v <= 1 for v in values) and values[0] == pytest.approx(1 / 32)


def test_linear_and_cosine_warm_up_then_decay_to_zero():
    total = 100  # warm-up: ceil(0.1 * 100) = 10 steps
    linear, cosine = get_strategy("full"), get_strategy("full:schedule=cosine")
    for strategy in (linear, cosine):
        warm_up = [lr_multiplier(strategy, t, total) for t in range(10)]
        assert warm_up == pytest.approx([(t + 1) / 10 for t in range(10)])
        assert lr_multiplier(strategy, 10, total) == pytest.approx(1.0)
        assert lr_multiplier(strategy, total, total) == pytest.approx(0.0)
        values = [lr_multiplier(strategy, t, total) for t in range(10, total)]
        assert all(a > b > 0 for a, b in zip(values, values[1:], strict=False))
    assert lr_multiplier(linear, 55, total) == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert lr_multiplier(cosine, 55, total) == pytest.approx(0.5)
    assert lr_multiplier(linear, 30, total) == pytest.approx(1 - 20 / 90)
    assert lr_multiplier(cosine, 30, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert lr_multiplier(get_strategy("gpt"), 0, 1000) == pytest.approx(0.5)  # 0.2% of 1000 steps: 2 of warm-up
    assert lr_multiplier(get_strategy("features"), 0, 100) == 1.0 == lr_multiplier(get_strategy("features"), 99, 100)


# -- parameter groups ---------------------------------------------------------------------------------------


def test_discriminative_rates_and_decay_split():
    model, head = tiny()
    groups = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("discriminative"), 1e-3,
                          weight_decay=0.05, head_lr=1e-2)
    by_name = {g["name"]: g for g in groups}
    assert {name.split(".")[0] for name in by_name} == {"layer0", "layer1", "layer2", "layer3", "head"}
    for g in groups:  # layer 3 is the top block: lr; each group below: / 2.6
        if g["name"].startswith("layer"):
            assert g["lr"] == pytest.approx(1e-3 / 2.6 ** (3 - int(g["name"][5])))
    assert by_name["head.decay"]["lr"] == by_name["head.no_decay"]["lr"] == 1e-2
    for g in groups:
        assert all((p.dim() >= 2) == g["name"].endswith(".decay") for p in g["params"])
        assert g["weight_decay"] == (0.05 if g["name"].endswith(".decay") else 0.0)
    assert by_name["head.decay"]["params"] == [head.weight] and by_name["head.no_decay"]["params"] == [head.bias]


def test_every_parameter_once_even_when_tied():
    model, head = tiny()
    layers = model.layer_groups()
    tied = model.backbone.embed.tokens.weight  # the LM head's weight: an output layer on top would hold it too
    assert id(tied) in ids_of(layers[0])
    layers[-1] = layers[-1] + [tied]
    groups = param_groups(layers, list(head.parameters()), get_strategy("full"), 1e-3)
    placed = [p for g in groups for p in g["params"]]
    assert len(placed) == len(ids_of(placed))
    assert ids_of(placed) == ids_of(list(model.parameters()) + list(head.parameters()))
    assert any(p is tied for p in next(g for g in groups if g["name"] == "layer0.decay")["params"])
    assert len({g["lr"] for g in groups}) == 1  # without lr_decay every group trains at the same rate


def test_feature_extraction_trains_only_the_head():
    model, head = tiny()
    groups = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("features"), 1e-3)
    assert [g["name"] for g in groups] == ["head.decay", "head.no_decay"]


def test_l2sp_replaces_the_backbones_weight_decay():
    model, head = tiny()
    groups = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("l2sp"), 1e-3,
                          weight_decay=0.1)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].startswith("layer"))
    assert next(g for g in groups if g["name"] == "head.decay")["weight_decay"] == 0.1


# -- gradual unfreezing -------------------------------------------------------------------------------------


def trainable(layers) -> list[bool]:
    return [all(p.requires_grad for p in g) for g in layers]


def test_gradual_unfreezing_goes_top_down_on_schedule():
    model, _ = tiny()
    layers = model.layer_groups()
    unfreezing = GradualUnfreezing(layers, every=5)
    assert trainable(layers) == [False, False, False, True]  # at construction, before any step
    expected = {0: 1, 4: 1, 5: 2, 9: 2, 10: 3, 15: 4, 100: 4}
    for step, count in expected.items():
        assert unfreezing.update(step) == count
        assert trainable(layers) == [k >= 4 - count for k in range(4)]
        assert all(not any(p.requires_grad for p in g) for g in layers[:4 - count])  # whole groups, not parts
    assert unfreezing.update(5) == 2 and trainable(layers) == [False, False, True, True]  # a resume goes back


def test_a_frozen_group_gets_no_gradient_and_does_not_move():
    model, head = tiny()
    layers = model.layer_groups()
    unfreezing = GradualUnfreezing(layers, every=10)
    optimizer = make_optimizer(param_groups(layers, list(head.parameters()), get_strategy("gradual"), 1e-2),
                               TrainConfig(weight_decay=0.1))
    before = [[p.detach().clone() for p in g] for g in layers]
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    for step in range(2):
        unfreezing.update(step)
        out = model(ids, targets=ids)
        (out.loss + head(out.hidden.last).square().mean()).backward()
        assert all(p.grad is None for g in layers[:3] for p in g)
        assert all(p.grad is not None for p in layers[3])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moved = [any(not torch.equal(p, b) for p, b in zip(g, bg, strict=True)) for g, bg in zip(layers, before,
                                                                                            strict=True)]
    assert moved == [False, False, False, True]


# -- L2-SP --------------------------------------------------------------------------------------------------


def shift_backbone(params, amount: float) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(amount)


def test_sp_penalty_is_zero_at_the_start_and_grows_with_the_distance():
    model, head = tiny()
    backbone = [p for g in model.layer_groups() for p in g]
    l2 = SPPenalty(backbone, list(head.parameters()), alpha=0.1, beta=0.0)
    l1 = SPPenalty(backbone, list(head.parameters()), alpha=0.1, beta=0.0, norm="l1")
    assert l2().item() == 0.0 and l1().item() == 0.0
    n = sum(p.numel() for p in model.parameters())  # each distinct parameter once, the tied one included
    shift_backbone(model.parameters(), 0.01)
    first_l2, first_l1 = l2().item(), l1().item()
    assert first_l2 == pytest.approx(0.1 / 2 * n * 0.01**2, rel=1e-3)
    assert first_l1 == pytest.approx(0.1 * n * 0.01, rel=1e-3)
    shift_backbone(model.parameters(), 0.01)  # twice as far
    assert l2().item() == pytest.approx(4 * first_l2, rel=1e-3)
    assert l1().item() == pytest.approx(2 * first_l1, rel=1e-3)


def test_sp_penalty_head_term_and_gradients():
    model, head = tiny()
    layers = model.layer_groups()
    backbone = [p for g in layers for p in g]
    penalty = SPPenalty(backbone, list(head.parameters()), alpha=1.0, beta=0.3)
    assert penalty().item() == pytest.approx(0.3 / 2 * head.weight.square().sum().item())  # matrices only
    shift_backbone(layers[3], 0.5)
    penalty().backward()
    torch.testing.assert_close(layers[3][0].grad, torch.full_like(layers[3][0], 0.5))  # d/dw alpha/2 (w - w0)^2
    torch.testing.assert_close(head.weight.grad, 0.3 * head.weight.detach())
    assert head.bias.grad is None


def test_sp_penalty_skips_frozen_parameters():
    model, head = tiny()
    layers = model.layer_groups()
    penalty = SPPenalty([p for g in layers for p in g], list(head.parameters()), alpha=1.0, beta=0.0)
    shift_backbone(layers[0], 1.0)
    GradualUnfreezing(layers, every=1)  # only the top block trains: the embeddings' distance does not count
    assert penalty().item() == 0.0
