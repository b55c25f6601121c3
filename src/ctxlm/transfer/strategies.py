"""Fine-tuning strategies: how a pretrained backbone is adapted to a task.

A `Strategy` is a handful of switches that compose; `plan` turns one into what the trainer applies: optimizer
groups with their rates, a learning-rate schedule, and hooks run before and after each optimizer step.

- feature extraction: the backbone stays frozen and only the new head trains;
- gradual unfreezing (ULMFiT, Howard & Ruder 2018, §3.2, as the authors' fastai code runs it: `freeze()`, then
  `freeze_to(-2)`, ...): the head trains alone first, then head + top layer group, one more group below joining
  every stage, so that the lower, more general layers are not disturbed while the head is still random;
- chain-thaw (Felbo et al. 2017, §3.2; ULMFiT Table 7): the head alone, then each layer group alone from the
  bottom up, then everything;
- discriminative rates (ULMFiT §3.2, fastai's `slice(lr / 2.6**4, lr)`): the head trains at `lr`, the top
  backbone group at lr / 2.6, each group below at the rate of the one above / 2.6;
- schedules: linear warm-up + decay (BERT, GPT), cosine, constant, or ULMFiT's slanted triangular (eq. 3);
- L2-SP / L1-SP (Li et al. 2018, "Explicit inductive bias for transfer learning with CNNs"): the backbone is
  pulled toward its pretrained weights w0 and the new head decays toward zero, instead of weight decay. The paper
  adds α/2 ||w - w0||² + β/2 ||w_head||² to the loss and trains with SGD. Under an adaptive optimizer a penalty
  in the loss is divided by each weight's gradient scale, so α stops setting the strength of the pull (a weight
  comes back at Adam's step size whatever α is). ctxlm therefore decouples it as AdamW decouples weight decay
  (Loshchilov & Hutter 2019): after each optimizer step w ← w - lr·α·(w - w0) (L1: lr·α·sign(w - w0), never
  past w0) and the head's matrices w ← w - lr·β·w, neither group getting AdamW's own decay. `sp_mode=coupled`
  keeps the paper's penalty in the loss;
- parameter-efficient transfer: `adapters` (Houlsby et al. 2019: bottleneck modules in every block; adapters,
  layer norms and the head train) and `lora` (Hu et al. 2021: low-rank updates of the attention projections,
  merged into the weights when the model is saved); the rest of the backbone stays frozen;
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
from ctxlm.nn.peft import add_adapters, add_lora, peft_parameters
from ctxlm.schedules import slanted_triangular, warmup_decay
from ctxlm.train import Plan, named_param_groups

SCHEDULES = ("linear", "cosine", "constant", "slanted")
SP_NORMS = ("l2", "l1")
SP_MODES = ("decoupled", "coupled")
THAWS = ("all", "gradual", "chain")
PEFTS = ("none", "adapters", "lora")


@dataclass(frozen=True)
class Strategy:
    """How a pretrained backbone is adapted; small composable switches."""

    name: str
    freeze_backbone: bool = False  # feature extraction: the backbone never trains
    thaw: str = "all"  # all groups from the start, "gradual" (ULMFiT) or "chain" (chain-thaw) stages
    unfreeze_every: int | None = None  # steps per thawing stage; None: an epoch (gradual), an equal share (chain)
    lr_decay: float | None = None  # discriminative rates: head lr, top group lr / lr_decay, ... (ULMFiT: 2.6)
    schedule: str = "linear"  # linear, cosine, constant or slanted (ULMFiT slanted triangular)
    warmup: float = 0.1  # warm-up fraction of the steps for linear/cosine
    cut_frac: float = 0.1  # slanted triangular: fraction of the steps spent increasing the rate
    ratio: float = 32.0  # slanted triangular: how much smaller the lowest rate is than the peak
    sp_alpha: float = 0.0  # L2-SP / L1-SP: strength of the pull of the backbone toward its pretrained values
    sp_beta: float = 0.0  # L2-SP's β: decay of the new head's weights toward zero
    sp_norm: str = "l2"  # l2 or l1
    sp_mode: str = "decoupled"  # decoupled from the optimizer (after each step) or coupled (a penalty in the loss)
    aux_lm_weight: float = 0.0  # GPT §3.2: L = L_task + λ L_LM while fine-tuning a decoder; applied by the caller
    peft: str = "none"  # none, adapters (Houlsby et al. 2019) or lora (Hu et al. 2021)
    adapter_dim: int = 64  # adapters: bottleneck width m (Houlsby tried 8, 64, 256)
    lora_rank: int = 8  # lora: rank r
    lora_alpha: float = 0.0  # lora: scale α / r; 0 means α = r (the paper sets α to the first r tried)
    lora_targets: str = "qv"  # lora: which attention projections (of q, k, v, o); q and v as in Hu et al. §7.1
    lr: float | None = None  # the strategy's own peak rate, over --lr (adapters and LoRA need ~10x full's)

    def __post_init__(self) -> None:
        checks = [
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.sp_norm in SP_NORMS, f"sp_norm must be one of {', '.join(SP_NORMS)}, got {self.sp_norm!r}"),
            (self.sp_mode in SP_MODES, f"sp_mode must be one of {', '.join(SP_MODES)}, got {self.sp_mode!r}"),
            (self.thaw in THAWS, f"thaw must be one of {', '.join(THAWS)}, got {self.thaw!r}"),
            (self.peft in PEFTS, f"peft must be one of {', '.join(PEFTS)}, got {self.peft!r}"),
            (self.lr_decay is None or self.lr_decay > 0, f"lr_decay must be positive, got {self.lr_decay}"),
            (self.unfreeze_every is None or self.unfreeze_every >= 1,
             f"unfreeze_every must be at least 1, got {self.unfreeze_every}"),
            (self.unfreeze_every is None or self.thaw != "all",
             "unfreeze_every sets the length of a thawing stage: it needs thaw=gradual or thaw=chain"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (0 < self.cut_frac < 1, f"cut_frac must be in (0, 1), got {self.cut_frac}"),
            (self.ratio >= 1, f"ratio must be at least 1, got {self.ratio}"),
            (min(self.sp_alpha, self.sp_beta, self.aux_lm_weight, self.lora_alpha) >= 0,
             "sp_alpha, sp_beta, aux_lm_weight and lora_alpha must not be negative"),
            (self.adapter_dim >= 1, f"adapter_dim must be at least 1, got {self.adapter_dim}"),
            (self.lora_rank >= 1, f"lora_rank must be at least 1, got {self.lora_rank}"),
            (bool(self.lora_targets) and set(self.lora_targets) <= set("qkvo"),
             f"lora_targets must be letters of qkvo (q, k, v, o projections), got {self.lora_targets!r}"),
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (not (self.freeze_backbone and self.thaw != "all"), "a frozen backbone cannot be thawed"),
            (self.peft == "none" or not (self.freeze_backbone or self.thaw != "all" or self.sp_alpha),
             f"{self.peft} train their own small modules: they do not combine with freeze_backbone, thawing "
             "stages or sp_alpha"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"strategy {self.name!r}: {message}")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`."""
        if self.schedule == "slanted":
            return slanted_triangular(step, total_steps, cut_frac=self.cut_frac, ratio=self.ratio)
        warm = 0 if self.schedule == "constant" else math.ceil(self.warmup * max(1, total_steps))
        return warmup_decay(step, total_steps, warmup_steps=warm, shape=self.schedule)

    def prepare(self, model: nn.Module) -> list[nn.Parameter] | None:
        """Insert a parameter-efficient method's modules into `model` in place (near the identity: the model's
        outputs hardly change); return the backbone parameters that then train, or None when any may."""
        if self.peft == "adapters":
            add_adapters(model, self.adapter_dim)
        elif self.peft == "lora":
            add_lora(model, self.lora_rank, alpha=self.lora_alpha, targets=self.lora_targets)
        else:
            return None
        return peft_parameters(model, self.peft)

    def plan(self, groups: list[list[nn.Parameter]], head: list[nn.Parameter], *, lr: float,
             head_lr: float | None, weight_decay: float, steps_per_epoch: int, total_steps: int,
             only: list[nn.Parameter] | None = None) -> Plan:
        """The optimizer groups, schedule and step hooks of this strategy over a backbone's layer `groups` (bottom
        → top) and a new `head`: what the trainer applies. `only`: the backbone parameters that may train at all
        (a parameter-efficient method's, from `prepare`); the others are frozen here for good."""
        if only is not None:
            keep = {id(p) for p in only}
            freeze(p for g in groups for p in g if id(p) not in keep)
            groups = [[p for p in g if id(p) in keep] for g in groups]
        optimizer_groups = param_groups(groups, head, self, lr, weight_decay=weight_decay, head_lr=head_lr)
        result = Plan(optimizer_groups, lambda step: self.lr_factor(step, total_steps))
        if self.thaw != "all":
            stages = thawing_stages(self.thaw, len(groups))
            every = self.unfreeze_every or (max(1, steps_per_epoch) if self.thaw == "gradual"
                                            else max(1, math.ceil(total_steps / len(stages))))
            result.before_step = Thawing(groups, head, stages, every).update
        if self.sp_alpha or self.sp_beta:
            backbone = [p for g in groups for p in g]
            kind = SPPull if self.sp_mode == "decoupled" else SPPenalty
            terms = kind(backbone, head, self.sp_alpha, self.sp_beta, self.sp_norm)
            if self.sp_mode == "decoupled":
                result.after_step = terms
            else:
                result.penalty = terms
        return result


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("features", freeze_backbone=True, schedule="constant"),
    Strategy("full"),
    Strategy("gradual", thaw="gradual"),  # one more group per epoch
    Strategy("discriminative", lr_decay=2.6),
    Strategy("slanted", schedule="slanted"),
    # α = 100: under the decoupled pull a weight settles where Adam's step (about lr) balances lr·α·|w - w0|,
    # about 1/α = 0.01 from w0, a quarter of a pretrained weight's typical size (std 0.02-0.05); β as AdamW's 0.01.
    Strategy("l2sp", sp_alpha=100.0, sp_beta=0.01),
    Strategy("ulmfit", thaw="gradual", lr_decay=2.6, schedule="slanted"),
    Strategy("chain-thaw", thaw="chain"),
    Strategy("gpt", aux_lm_weight=0.5, warmup=0.002),  # GPT §4.1: warm-up over 0.2% of training
    # Houlsby et al. §3.1 searched rates in {3e-5, ..., 1e-3}. Hu et al. (Table 9) trained RoBERTa's LoRA at 4e-4 to
    # 5e-4 for 30-80 epochs; on a short run that is too slow: MiniLM on 1,000 SST-2 sentences (96 steps) reached
    # 70.8 at 5e-4 and 81.4 at 2e-3, level with full fine-tuning (README, strategy table).
    Strategy("adapters", peft="adapters", lr=1e-3),
    Strategy("lora", peft="lora", lr=2e-3),
]}


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


def param_groups(groups: list[list[nn.Parameter]], head: list[nn.Parameter], strategy: Strategy, lr: float, *,
                 weight_decay: float = 0.01, head_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: one rate per backbone layer group (bottom → top) and one for the head.

    The head trains at `head_lr` (default `lr`); backbone groups at `lr`, or with discriminative rates at
    lr / lr_decay for the top group and / lr_decay more for each group below (ULMFiT: the head at the peak).
    Matrices decay, vectors (biases, LayerNorm) do not. Under L2-SP neither the backbone (α > 0) nor the head
    (β > 0) gets AdamW's decay: the SP terms replace it. A tied weight is placed once, in its lowest group.
    Names for logs: "layer0.decay" (embeddings), ..., "layerL.no_decay" (top block), "head.decay", "head.no_decay".
    """
    top = len(groups) - 1
    named: list[tuple[str, list[nn.Parameter], float, float]] = []
    if not strategy.freeze_backbone:
        backbone_decay = 0.0 if strategy.sp_alpha > 0 else weight_decay
        for k, group in enumerate(groups):
            rate = lr / strategy.lr_decay ** (top - k + 1) if strategy.lr_decay else lr
            named.append((f"layer{k}", group, rate, backbone_decay))
    named.append(("head", head, lr if head_lr is None else head_lr, 0.0 if strategy.sp_beta > 0 else weight_decay))

    return named_param_groups(named)


def freeze(params: Iterable[nn.Parameter]) -> None:
    """Stop training `params`: with no gradient, (fused) AdamW skips them, weight decay included."""
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def unfreeze(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)
        p.grad = None


def thawing_stages(thaw: str, n_groups: int) -> list[set[int]]:
    """Which units train in each stage: backbone groups 0..n_groups-1 (bottom → top) and the head, -1.

    gradual (ULMFiT as fastai runs it): {head}, {head, top}, {head, top, top - 1}, ..., everything;
    chain (chain-thaw): {head}, {group 0}, {group 1}, ..., {top group}, everything.
    """
    everything = {-1, *range(n_groups)}
    if thaw == "gradual":
        return [{-1, *range(n_groups - k, n_groups)} for k in range(n_groups + 1)]
    if thaw == "chain":
        return [{-1}, *({k} for k in range(n_groups)), everything]
    return [everything]


class Thawing:
    """Stages of trainable units, `every` steps each; the last stage lasts to the end of training.

    `update(step)` depends on the step alone, so a resumed run thaws exactly as an uninterrupted one. A tied
    weight trains when any group holding it does.
    """

    def __init__(self, groups: list[list[nn.Parameter]], head: list[nn.Parameter], stages: list[set[int]],
                 every: int) -> None:
        if every < 1:
            raise UserError(f"thawing needs stages of at least 1 step, got {every}")
        self.units = {-1: head, **dict(enumerate(groups))}
        self.stages, self.every = stages, every
        self.update(0)

    def stage(self, step: int) -> int:
        return min(len(self.stages) - 1, step // self.every)

    def update(self, step: int) -> int:
        """Make the units of the step's stage trainable and the rest frozen; return the stage's index."""
        stage = self.stage(step)
        trainable = {id(p) for unit in self.stages[stage] for p in self.units[unit]}
        everything = {id(p): p for unit in self.units.values() for p in unit}
        freeze(p for i, p in everything.items() if i not in trainable and p.requires_grad)
        unfreeze(p for i, p in everything.items() if i in trainable and not p.requires_grad)
        return stage


class SPPull:
    """Decoupled L2-SP / L1-SP, applied after each optimizer step at each parameter group's current rate:
    backbone weights move toward w0 by lr·α·(w - w0) (l1: by lr·α·sign(w - w0), stopping at w0), the head's
    matrices shrink by lr·β·w. Frozen parameters are left alone. w0 is snapshot at construction: build this
    after moving the model to its device and before training (a resumed run builds it from the pretrained
    weights, then loads the checkpoint)."""

    def __init__(self, backbone: list[nn.Parameter], head: list[nn.Parameter], alpha: float, beta: float,
                 norm: str = "l2") -> None:
        if norm not in SP_NORMS:
            raise UserError(f"sp_norm must be one of {', '.join(SP_NORMS)}, got {norm!r}")
        self.anchors = {id(p): p.detach().clone() for p in backbone} if alpha else {}
        self.head = {id(p) for p in head if p.dim() >= 2} if beta else set()
        self.alpha, self.beta, self.norm = alpha, beta, norm

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                anchor = self.anchors.get(id(p))
                if anchor is not None and self.norm == "l2":
                    p.lerp_(anchor, lr * self.alpha)  # w - lr·α·(w - w0)
                elif anchor is not None:
                    shift = p - anchor
                    p.copy_(anchor + shift.sign() * (shift.abs() - lr * self.alpha).clamp(min=0))
                elif id(p) in self.head:
                    p.mul_(1 - lr * self.beta)


class SPPenalty:
    """L2-SP / L1-SP as the paper writes it, a term of the loss (`sp_mode=coupled`; exact under SGD):
    alpha/2 Σ ||w - w0||² (or alpha Σ |w - w0| for l1) over the trainable backbone, + beta/2 Σ ||W||² over the
    head's matrices. w0 is snapshot at construction, as for `SPPull`.
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
