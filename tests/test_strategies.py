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
    SPPenalty,
    SPPull,
    Strategy,
    Thawing,
    get_strategy,
    param_groups,
    thawing_stages,
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
    assert set(STRATEGIES) == {"features", "full", "gradual", "discriminative", "slanted", "l2sp", "ulmfit",
                               "chain-thaw", "gpt", "adapters", "lora"}
    assert get_strategy("features").freeze_backbone and get_strategy("features").schedule == "constant"
    assert get_strategy("full") == Strategy("full")
    assert get_strategy("discriminative").lr_decay == 2.6
    ulmfit = get_strategy("ulmfit")
    assert (ulmfit.thaw, ulmfit.lr_decay, ulmfit.schedule, ulmfit.cut_frac, ulmfit.ratio) == (
        "gradual", 2.6, "slanted", 0.1, 32.0)
    assert get_strategy("chain-thaw").thaw == "chain"
    l2sp = get_strategy("l2sp")
    assert (l2sp.sp_alpha, l2sp.sp_beta, l2sp.sp_mode) == (100.0, 0.01, "decoupled")
    assert (get_strategy("gpt").aux_lm_weight, get_strategy("gpt").warmup) == (0.5, 0.002)
    assert (get_strategy("adapters").peft, get_strategy("adapters").adapter_dim) == ("adapters", 64)
    assert (get_strategy("lora").peft, get_strategy("lora").lora_rank, get_strategy("lora").lora_targets) == (
        "lora", 8, "qv")


def test_gradual_presets_thaw_one_group_per_epoch_unless_told():
    def every(spec, per_epoch=17, total=1000):
        model, head = tiny()
        steps = get_strategy(spec).plan(model.layer_groups(), list(head.parameters()), lr=1e-3, head_lr=None,
                                        weight_decay=0.0, steps_per_epoch=per_epoch, total_steps=total)
        return steps.before_step.__self__.every if steps.before_step else None

    assert every("gradual") == every("ulmfit") == 17
    assert every("gradual:unfreeze_every=50") == 50
    assert every("chain-thaw") == math.ceil(1000 / 6)  # head, 4 groups one by one, all: equal shares
    assert every("full") is None


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
    ("l2sp:sp_mode=both", "decoupled, coupled"),
    ("full:thaw=sometimes", "all, gradual, chain"),
    ("full:peft=prefix", "none, adapters, lora"),
])
def test_bad_names_list_the_valid_ones(spec, names):
    with pytest.raises(UserError, match=names):
        get_strategy(spec)


@pytest.mark.parametrize("spec", [
    "discriminative:lr_decay=0", "discriminative:lr_decay=abc", "gradual:unfreeze_every=0",
    "gradual:unfreeze_every=1.5", "full:warmup=1", "full:warmup=-0.1", "slanted:cut_frac=0", "slanted:cut_frac=1",
    "slanted:ratio=0.5", "l2sp:sp_alpha=-1", "full:freeze_backbone=maybe", "features:unfreeze_every=3",
    "full:unfreeze_every=3", "features:thaw=gradual", "lora:lora_rank=0", "lora:lora_targets=qx",
    "lora:lora_targets=", "adapters:adapter_dim=0", "adapters:thaw=gradual", "lora:sp_alpha=1", "lora:lr=0",
    "adapters:freeze_backbone=true",
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
        assert strategy.lr_factor(step, total) == pytest.approx(ulmfit(step))
    assert strategy.lr_factor(0, total) == pytest.approx(1 / 32)
    assert strategy.lr_factor(cut, total) == pytest.approx(1.0)
    assert strategy.lr_factor(total - 1, total) == pytest.approx(1 / 32, abs=2e-3)
    assert strategy.lr_factor(total, total) == pytest.approx(1 / 32)
    assert max(strategy.lr_factor(t, total) for t in range(total)) == pytest.approx(1.0)


def test_slanted_triangular_survives_short_runs():
    values = [get_strategy("slanted").lr_factor(t, 7) for t in range(7)]  # floor(0.7) = 0 steps of rise
    assert all(1 / 32 <= v <= 1 for v in values) and values[0] == pytest.approx(1 / 32)


def test_linear_and_cosine_warm_up_then_decay_to_zero():
    total = 100  # warm-up: ceil(0.1 * 100) = 10 steps
    linear, cosine = get_strategy("full"), get_strategy("full:schedule=cosine")
    for strategy in (linear, cosine):
        warm_up = [strategy.lr_factor(t, total) for t in range(10)]
        assert warm_up == pytest.approx([(t + 1) / 10 for t in range(10)])
        assert strategy.lr_factor(10, total) == pytest.approx(1.0)
        assert strategy.lr_factor(total, total) == pytest.approx(0.0)
        values = [strategy.lr_factor(t, total) for t in range(10, total)]
        assert all(a > b > 0 for a, b in zip(values, values[1:], strict=False))
    assert linear.lr_factor(55, total) == pytest.approx(0.5)  # halfway through the 90 decay steps
    assert cosine.lr_factor(55, total) == pytest.approx(0.5)
    assert linear.lr_factor(30, total) == pytest.approx(1 - 20 / 90)
    assert cosine.lr_factor(30, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert get_strategy("gpt").lr_factor(0, 1000) == pytest.approx(0.5)  # 0.2% of 1000 steps: 2 of warm-up
    assert get_strategy("features").lr_factor(0, 100) == 1.0 == get_strategy("features").lr_factor(99, 100)


# -- parameter groups ---------------------------------------------------------------------------------------


def test_discriminative_rates_give_the_head_lr_and_divide_going_down():
    """ULMFiT as fastai runs it, slice(lr / 2.6**4, lr): the head at lr, the top block lr / 2.6, ..."""
    model, head = tiny()
    groups = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("discriminative"), 1e-3,
                          weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert {name.split(".")[0] for name in by_name} == {"layer0", "layer1", "layer2", "layer3", "head"}
    assert by_name["head.decay"]["lr"] == by_name["head.no_decay"]["lr"] == 1e-3
    for g in groups:  # layer 3 is the top block: lr / 2.6; each group below: / 2.6 more
        if g["name"].startswith("layer"):
            assert g["lr"] == pytest.approx(1e-3 / 2.6 ** (4 - int(g["name"][5])))
    for g in groups:
        assert all((p.dim() >= 2) == g["name"].endswith(".decay") for p in g["params"])
        assert g["weight_decay"] == (0.05 if g["name"].endswith(".decay") else 0.0)
    assert by_name["head.decay"]["params"] == [head.weight] and by_name["head.no_decay"]["params"] == [head.bias]
    with_head_lr = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("discriminative"), 1e-3,
                                head_lr=1e-2)
    assert next(g for g in with_head_lr if g["name"] == "head.decay")["lr"] == 1e-2


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


def test_l2sp_replaces_weight_decay_on_the_backbone_and_the_head():
    model, head = tiny()
    groups = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("l2sp"), 1e-3,
                          weight_decay=0.1)
    assert all(g["weight_decay"] == 0.0 for g in groups)  # the head's β replaces AdamW's decay: decayed once
    alpha_only = param_groups(model.layer_groups(), list(head.parameters()), get_strategy("l2sp:sp_beta=0"), 1e-3,
                              weight_decay=0.1)
    assert next(g for g in alpha_only if g["name"] == "head.decay")["weight_decay"] == 0.1


# -- thawing: gradual unfreezing and chain-thaw -----------------------------------------------------------------


def trainable(layers) -> list[bool]:
    return [all(p.requires_grad for p in g) for g in layers]


def test_thawing_stages_are_ulmfits_and_chain_thaws():
    assert thawing_stages("gradual", 3) == [{-1}, {-1, 2}, {-1, 1, 2}, {-1, 0, 1, 2}]
    assert thawing_stages("chain", 3) == [{-1}, {0}, {1}, {2}, {-1, 0, 1, 2}]
    assert thawing_stages("all", 3) == [{-1, 0, 1, 2}]


def test_gradual_unfreezing_trains_the_head_alone_first_then_goes_top_down():
    model, head = tiny()
    layers = model.layer_groups()
    thawing = Thawing(layers, list(head.parameters()), thawing_stages("gradual", 4), every=5)
    assert trainable(layers) == [False] * 4 and head.weight.requires_grad  # at construction: the head alone
    expected = {0: 0, 4: 0, 5: 1, 9: 1, 10: 2, 15: 3, 20: 4, 100: 4}  # step: backbone groups that train
    for step, count in expected.items():
        thawing.update(step)
        assert trainable(layers) == [k >= 4 - count for k in range(4)], step
        assert all(not any(p.requires_grad for p in g) for g in layers[:4 - count])  # whole groups, not parts
        assert all(p.requires_grad for p in head.parameters())
    thawing.update(5)
    assert trainable(layers) == [False, False, False, True]  # a resume goes back


def test_chain_thaw_trains_the_head_then_each_group_alone_bottom_up_then_all():
    model, head = tiny()
    layers = model.layer_groups()
    thawing = Thawing(layers, list(head.parameters()), thawing_stages("chain", 4), every=2)
    seen = []
    for step in range(0, 14, 2):
        thawing.update(step)
        seen.append((head.weight.requires_grad, trainable(layers)))
    assert seen == [(True, [False] * 4), (False, [True, False, False, False]), (False, [False, True, False, False]),
                    (False, [False, False, True, False]), (False, [False, False, False, True]), (True, [True] * 4),
                    (True, [True] * 4)]


def test_a_frozen_unit_gets_no_gradient_and_does_not_move():
    model, head = tiny()
    layers = model.layer_groups()
    steps = get_strategy("gradual:unfreeze_every=2").plan(layers, list(head.parameters()), lr=1e-2, head_lr=None,
                                                          weight_decay=0.1, steps_per_epoch=10, total_steps=10)
    optimizer = make_optimizer(steps.param_groups, TrainConfig(weight_decay=0.1))
    before = [[p.detach().clone() for p in g] for g in [*layers, list(head.parameters())]]
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    for step in range(4):  # stage 0 (steps 0, 1): the head alone; stage 1 (steps 2, 3): + the top block
        steps.before_step(step)
        out = model(ids, targets=ids)
        (out.loss + head(out.hidden.last).square().mean()).backward()
        assert all(p.grad is None for g in layers[:3] for p in g)
        assert all((p.grad is not None) == (step >= 2) for p in layers[3])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = [*layers, list(head.parameters())]
    moved = [any(not torch.equal(p, b) for p, b in zip(g, bg, strict=True)) for g, bg in zip(after, before,
                                                                                           strict=True)]
    assert moved == [False, False, False, True, True]


# -- L2-SP: the decoupled pull --------------------------------------------------------------------------------


def shift_backbone(params, amount: float) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(amount)


class Checkpointless(nn.Module):
    """A backbone and a head trained together; the trainer's checkpoints of it are not needed here."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def save_checkpoint(self, path, extra=None) -> None:
        pass


def train_without_task_gradient(spec: str, steps: int, lr: float = 1e-3, shift: float = 1.0, weight_decay=0.1):
    """A Trainer whose task loss has a zero gradient everywhere: only the SP terms (and weight decay) move the
    weights. The backbone starts `shift` away from its pretrained values. Returns (model, head, pretrained)."""
    import tempfile

    from ctxlm.train import Trainer

    model, head = tiny()
    pretrained = [p.detach().clone() for p in model.parameters()]
    head_start = head.weight.detach().clone()
    steps_plan = get_strategy(spec).plan(model.layer_groups(), list(head.parameters()), lr=lr, head_lr=None,
                                         weight_decay=weight_decay, steps_per_epoch=steps, total_steps=steps)
    shift_backbone(model.parameters(), shift)
    whole = Checkpointless(model, head)

    def objective(module, batch):  # zero, with a (zero) gradient for every parameter; the trainer adds a penalty
        return sum(p.sum() for p in module.parameters()) * 0.0, {}

    config = TrainConfig(steps=steps, lr=lr, weight_decay=weight_decay, log_every=steps, eval_every=steps,
                         save_every=steps, grad_clip=None)
    with tempfile.TemporaryDirectory() as run:
        Trainer(whole, objective, lambda i: None, config, run, plan=steps_plan).fit()
    return model, head, pretrained, head_start


def fp32_steps_bound(steps: int, magnitude: float) -> float:
    """Each decoupled step rounds once or twice in float32: at most 2 eps * magnitude per step."""
    return 2 * steps * torch.finfo(torch.float32).eps * magnitude


@pytest.mark.parametrize("alpha", [1e-4, 1e-2, 1.0, 100.0])
def test_l2sp_pull_shrinks_the_distance_by_one_minus_lr_alpha_per_step(alpha):
    """With no task gradient, (w - w0) → (1 - lr α)^t (w - w0): α alone sets the pull. (Added to the loss under
    AdamW, every α gave the same distance after 10 steps: Adam normalises the penalty's gradient.)"""
    lr, steps = 1e-3, 10
    model, _, pretrained, _ = train_without_task_gradient(f"l2sp:sp_alpha={alpha},sp_beta=0,schedule=constant",
                                                          steps, lr=lr)
    expected = (1 - lr * alpha) ** steps  # in float64
    for p, w0 in zip(model.parameters(), pretrained, strict=True):
        distance = (p.detach().double() - w0.double())
        bound = fp32_steps_bound(steps, 1.0 + w0.abs().max().item())
        torch.testing.assert_close(distance, torch.full_like(distance, expected), atol=bound, rtol=0)


def test_two_alphas_give_the_predicted_ratio_of_distances():
    lr, steps = 1e-3, 20
    distances = []
    for alpha in (10.0, 200.0):
        model, _, pretrained, _ = train_without_task_gradient(
            f"l2sp:sp_alpha={alpha},sp_beta=0,schedule=constant", steps, lr=lr)
        distances.append(max((p.detach().double() - w0.double()).abs().max().item()
                             for p, w0 in zip(model.parameters(), pretrained, strict=True)))
    predicted = ((1 - lr * 10.0) / (1 - lr * 200.0)) ** steps
    assert distances[0] / distances[1] == pytest.approx(predicted, rel=1e-4)


def test_the_new_head_is_decayed_once_by_lr_beta():
    lr, steps, beta = 1e-2, 10, 0.5
    _, head, _, start = train_without_task_gradient(f"l2sp:sp_alpha=1,sp_beta={beta},schedule=constant", steps,
                                                    lr=lr, weight_decay=0.3)
    expected = start.double() * (1 - lr * beta) ** steps  # not also (1 - lr 0.3)^t from AdamW's weight decay
    torch.testing.assert_close(head.weight.detach().double(), expected, rtol=0,
                               atol=fp32_steps_bound(steps, start.abs().max().item()))


def test_l1sp_moves_by_lr_alpha_and_stops_at_the_pretrained_value():
    lr, alpha = 1e-2, 10.0  # 0.1 per step
    model, _, pretrained, _ = train_without_task_gradient(
        f"l2sp:sp_alpha={alpha},sp_beta=0,sp_norm=l1,schedule=constant", 2, lr=lr, shift=0.25)
    for p, w0 in zip(model.parameters(), pretrained, strict=True):
        torch.testing.assert_close(p.detach() - w0, torch.full_like(w0, 0.25 - 2 * 0.1), atol=1e-6, rtol=0)
    model, _, pretrained, _ = train_without_task_gradient(
        f"l2sp:sp_alpha={alpha},sp_beta=0,sp_norm=l1,schedule=constant", 5, lr=lr, shift=0.25)
    assert all(torch.equal(p.detach(), w0) for p, w0 in zip(model.parameters(), pretrained, strict=True))


def test_the_pull_uses_each_groups_current_rate_and_skips_frozen_parameters():
    model, head = tiny()
    layers = model.layer_groups()
    pull = SPPull([p for g in layers for p in g], list(head.parameters()), alpha=1.0, beta=0.0)
    pretrained = [p.detach().clone() for p in model.parameters()]
    shift_backbone(model.parameters(), 1.0)
    optimizer = make_optimizer(param_groups(layers, list(head.parameters()), get_strategy("l2sp"), 0.5),
                               TrainConfig())
    frozen = layers[0][0]
    frozen.requires_grad_(False)
    for group in optimizer.param_groups:
        group["lr"] = 0.1  # as the trainer sets it from the schedule at this step
    pull(optimizer)
    for p, w0 in zip(model.parameters(), pretrained, strict=True):
        expected = 1.0 if p is frozen else 1.0 - 0.1 * 1.0
        torch.testing.assert_close(p.detach() - w0, torch.full_like(w0, expected), atol=1e-6, rtol=0)


def test_coupled_mode_is_the_papers_penalty_in_the_loss():
    model, head = tiny()
    steps = get_strategy("l2sp:sp_mode=coupled").plan(model.layer_groups(), list(head.parameters()), lr=1e-3,
                                                      head_lr=None, weight_decay=0.1, steps_per_epoch=1, total_steps=1)
    assert steps.after_step is None and isinstance(steps.penalty, SPPenalty)
    decoupled = get_strategy("l2sp").plan(model.layer_groups(), list(head.parameters()), lr=1e-3, head_lr=None,
                                          weight_decay=0.1, steps_per_epoch=1, total_steps=1)
    assert decoupled.penalty is None and isinstance(decoupled.after_step, SPPull)


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
    Thawing(layers, list(head.parameters()), thawing_stages("gradual", 4), every=1).update(1)  # head + top block
    assert penalty().item() == 0.0
