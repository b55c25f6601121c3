"""Fine-tuning strategies: how a pretrained backbone is adapted to a task.

A `Strategy` is a handful of switches that compose:
- feature extraction: the backbone stays frozen and only the new head trains;
- gradual unfreezing (ULMFiT, Howard & Ruder 2018, §3.2): the top layer group trains first, one more group below
  it joins every `unfreeze_every` steps, so that the lower, more general layers are not disturbed while the
  head is still random;
- discriminative rates (ULMFiT §3.2): each group below trains at the rate of the one above divided by 2.6,
  since lower layers hold more general features that need less change;
- schedules: linear warm-up + decay (BERT, GPT), cosine, constant, or ULMFiT's slanted triangular (eq. 3);
- L2-SP / L1-SP (Li et al. 2018, "Explicit inductive bias for transfer learning with CNNs"): a penalty on the
  distance of the backbone from its pretrained weights, instead of weight decay toward zero;
- an auxiliary language-model loss (GPT, Radford et al. 2018, §3.2), applied by the caller.

Presets in `STRATEGIES`; `get_strategy("discriminative:lr_decay=2.0")` picks one and overrides its fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from ctxlm.errors import UserError

SCHEDULES = ("linear", "cosine", "constant", "slanted")
SP_NORMS = ("l2", "l1")


@dataclass(frozen=True)
class Strategy:
    """How a pretrained backbone is adapted; small composable switches."""

    name: str
    freeze_backbone: bool = False  # feature extraction: the backbone never trains
    unfreeze_every: int | None = None  # gradual unfreezing: one more group (going down) every this many steps
    lr_decay: float | None = None  # discriminative rates: group k-1 gets lr_k / lr_decay (ULMFiT: 2.6)
    schedule: str = "linear"  # linear, cosine, constant or slanted (ULMFiT slanted triangular)
    warmup: float = 0.1  # warm-up fraction of the steps for linear/cosine
    cut_frac: float = 0.1  # slanted triangular: fraction of the steps spent increasing the rate
    ratio: float = 32.0  # slanted triangular: how much smaller the lowest rate is than the peak
    sp_alpha: float = 0.0  # L2-SP / L1-SP weight on the backbone's distance from its pretrained values
    sp_beta: float = 0.0  # plain L2 weight on the new head's weights (L2-SP's β)
    sp_norm: str = "l2"  # l2 or l1
    aux_lm_weight: float = 0.0  # GPT §3.2: L = L_task + λ L_LM while fine-tuning a decoder; applied by the caller

    def __post_init__(self) -> None:
        checks = [
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.sp_norm in SP_NORMS, f"sp_norm must be one of {', '.join(SP_NORMS)}, got {self.sp_norm!r}"),
            (self.lr_decay is None or self.lr_decay > 0, f"lr_decay must be positive, got {self.lr_decay}"),
            (self.unfreeze_every is None or self.unfreeze_every >= 1,
             f"unfreeze_every must be at least 1, got {self.unfreeze_every}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (0 < self.cut_frac < 1, f"cut_frac must be in (0, 1), got {self.cut_frac}"),
            (self.ratio >= 1, f"ratio must be at least 1, got {self.ratio}"),
            (min(self.sp_alpha, self.sp_beta, self.aux_lm_weight) >= 0,
             "sp_alpha, sp_beta and aux_lm_weight must not be negative"),
            (not (self.freeze_backbone and self.unfreeze_every), "a frozen backbone cannot be unfrozen gradually"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"strategy {self.name!r}: {message}")


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("features", freeze_backbone=True, schedule="constant"),
    Strategy("full"),
    Strategy("gradual"),  # unfreeze_every: one epoch, filled in by `resolve`
    Strategy("discriminative", lr_decay=2.6),
    Strategy("slanted", schedule="slanted"),
    Strategy("l2sp", sp_alpha=0.01, sp_beta=0.01),
    Strategy("ulmfit", lr_decay=2.6, schedule="slanted"),  # + gradual unfreezing, one group per epoch
    Strategy("gpt", aux_lm_weight=0.5, warmup=0.002),  # GPT §4.1: warm-up over 0.2% of training
]}
_UNFREEZE_PER_EPOCH = frozenset({"gradual", "ulmfit"})  # ULMFiT unfreezes one more group per epoch


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(text)


_PARSERS = {"bool": _parse_bool, "int": int, "float": float, "str": str}
_FIELD_TYPES = {f.name: f.type.split(" |")[0] for f in fields(Strategy) if f.name != "name"}  # "int | None" → int


def get_strategy(spec: str) -> Strategy:
    """A preset by name, with optional overrides: "l2sp:sp_alpha=0.1,sp_norm=l1".

    The strategy's name is the whole spec, so that runs with different overrides are told apart in results.
    """
    spec = spec.strip()
    preset, _, overrides = spec.partition(":")
    if preset not in STRATEGIES:
        raise UserError(f"unknown strategy {preset!r}; choose from {', '.join(STRATEGIES)}")
    changes: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in _FIELD_TYPES or not eq:
            raise UserError(f"strategy {spec!r}: bad override {item!r}; expected FIELD=VALUE with FIELD one of "
                            f"{', '.join(_FIELD_TYPES)}")
        try:
            changes[key] = _PARSERS[_FIELD_TYPES[key]](value)
        except ValueError:
            raise UserError(f"strategy {spec!r}: {key} expects a {_FIELD_TYPES[key]}, got {value!r}") from None
    return replace(STRATEGIES[preset], name=spec, **changes)


def resolve(strategy: Strategy, steps_per_epoch: int) -> Strategy:
    """Fill in what depends on the data: the gradual presets unfreeze one group per epoch unless told otherwise."""
    if strategy.unfreeze_every is None and strategy.name.partition(":")[0] in _UNFREEZE_PER_EPOCH:
        return replace(strategy, unfreeze_every=max(1, steps_per_epoch))
    return strategy


def lr_multiplier(strategy: Strategy, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`."""
    total = max(1, total_steps)
    if strategy.schedule == "constant":
        return 1.0
    if strategy.schedule == "slanted":  # ULMFiT eq. 3: a short steep rise, then a long linear decay
        cut = max(1, math.floor(total * strategy.cut_frac))
        decayed = (step - cut) / (cut * (1 / strategy.cut_frac - 1))
        p = step / cut if step < cut else max(0.0, 1 - decayed)  # with cut rounded down, p can reach 0 before T
        return (1 + p * (strategy.ratio - 1)) / strategy.ratio
    warm = math.ceil(strategy.warmup * total)
    if step < warm:
        return (step + 1) / warm  # the first step already moves the weights
    progress = min(1.0, (step - warm) / max(1, total - warm))
    if strategy.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(groups: list[list[nn.Parameter]], head: list[nn.Parameter], strategy: Strategy, lr: float, *,
                 weight_decay: float = 0.01, head_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: one rate per backbone layer group (bottom → top) and one for the head.

    Matrices decay, vectors (biases, LayerNorm) do not. Under L2-SP the backbone does not decay toward zero:
    the penalty pulls it toward the pretrained weights instead. A tied weight is placed once, in its lowest group.
    Names for logs: "layer0.decay" (embeddings), ..., "layerL.no_decay" (top block), "head.decay", "head.no_decay".
    """
    top = len(groups) - 1
    named: list[tuple[str, list[nn.Parameter], float, float]] = []
    if not strategy.freeze_backbone:
        backbone_decay = 0.0 if strategy.sp_alpha > 0 else weight_decay
        for k, group in enumerate(groups):
            rate = lr / strategy.lr_decay ** (top - k) if strategy.lr_decay else lr
            named.append((f"layer{k}", group, rate, backbone_decay))
    named.append(("head", head, lr if head_lr is None else head_lr, weight_decay))

    seen: set[int] = set()
    out = []
    for name, params, rate, decay in named:
        unique = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        matrices = [p for p in unique if p.dim() >= 2]
        vectors = [p for p in unique if p.dim() < 2]
        for suffix, part, wd in (("decay", matrices, decay), ("no_decay", vectors, 0.0)):
            if part:
                out.append({"params": part, "lr": rate, "weight_decay": wd, "name": f"{name}.{suffix}"})
    return out


def freeze(params: Iterable[nn.Parameter]) -> None:
    """Stop training `params`: with no gradient, (fused) AdamW skips them, weight decay included."""
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def unfreeze(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)
        p.grad = None


class GradualUnfreezing:
    """ULMFiT's gradual unfreezing: the top group trains from the start, the next one down joins every `every` steps.

    `update(step)` depends on the step alone, so a resumed run unfreezes exactly as an uninterrupted one.
    """

    def __init__(self, groups: list[list[nn.Parameter]], every: int) -> None:
        if every < 1:
            raise UserError(f"gradual unfreezing needs a period of at least 1 step, got {every}")
        self.groups, self.every = groups, every
        self.update(0)

    def update(self, step: int) -> int:
        """Make the top `1 + step // every` groups trainable and the rest frozen; return how many train."""
        count = min(len(self.groups), 1 + step // self.every)
        trainable = {id(p) for group in self.groups[len(self.groups) - count:] for p in group}
        everything = {id(p): p for group in self.groups for p in group}  # a tied weight trains if any group does
        freeze(p for i, p in everything.items() if i not in trainable and p.requires_grad)
        unfreeze(p for i, p in everything.items() if i in trainable and not p.requires_grad)
        return count


class SPPenalty:
    """L2-SP / L1-SP (Li et al. 2018): keep the backbone near its pretrained weights w0, shrink the new head.

    alpha/2 Σ ||w - w0||² (or alpha Σ |w - w0| for l1) over the trainable backbone, + beta/2 Σ ||W||² over the
    head's matrices. w0 is snapshot at construction: build this after moving the model to its device.
    """

    def __init__(self, backbone: list[nn.Parameter], head: list[nn.Parameter], alpha: float, beta: float,
                 norm: str = "l2") -> None:
        if norm not in SP_NORMS:
            raise UserError(f"sp_norm must be one of {', '.join(SP_NORMS)}, got {norm!r}")
        unique = list({id(p): p for p in backbone}.values())
        self.backbone = [(p, p.detach().clone()) for p in unique] if alpha else []
        self.head = [p for p in head if p.dim() >= 2] if beta else []
        self.alpha, self.beta, self.norm = alpha, beta, norm
        self.device = (unique or head)[0].device

    def __call__(self) -> Tensor:
        total = torch.zeros((), device=self.device)
        for p, start in self.backbone:
            if p.requires_grad:  # a frozen group is not moving: no need to pull it back
                shift = p - start
                term = shift.abs().sum() * self.alpha if self.norm == "l1" else shift.square().sum() * self.alpha / 2
                total = total + term
        for w in self.head:
            total = total + w.square().sum() * self.beta / 2
        return total
