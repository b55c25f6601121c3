"""Parameter-efficient transfer for the transformer families (GPT, GPT-2, BERT, XLNet): adapters and LoRA.

Both keep the pretrained weights as they are and add few parameters that start at or near the identity, so that
fine-tuning starts from the pretrained model and trains only what was added (Houlsby et al. 2019, §2.1; Hu et
al. 2021, §4.1). A model's config records what it carries (`adapter_dim`, `lora_rank`, `lora_alpha`,
`lora_targets`), from which GPT and BERT build the same modules again: a saved adapted model loads back as itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.errors import UserError
from ctxlm.nn.attention import DecodingLinear
from ctxlm.nn.blocks import AdaptableBlock

if TYPE_CHECKING:
    from ctxlm.config import TransformerConfig

ADAPTER_INIT_STD = 1e-2  # Houlsby et al. §3.6: near-identity starts train stably; 1e-2 is in their stable range
LORA_TARGETS = "qkvo"  # query, key, value (rows of the fused qkv projection) and output projections


class Adapter(nn.Module):
    """Houlsby et al. 2019, §2.1 (Fig. 2): x + up(GELU(down(x))), a bottleneck of m << dim units with a skip.

    Weights start as a zero-mean Gaussian of std 1e-2 truncated at two standard deviations, biases at zero, so
    the adapter starts close to the identity: the added term is about std² sqrt(m dim) / 2 of the input's size.
    """

    def __init__(self, dim: int, bottleneck: int, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=ADAPTER_INIT_STD, a=-2 * ADAPTER_INIT_STD, b=2 * ADAPTER_INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.gelu(self.down(x)))


class LoRA(nn.Module):
    """One low-rank update ΔW = (α / r) B A of an (out, in) weight (Hu et al. 2021, §4.1).

    A (r, in) starts random (Kaiming-uniform, as nn.Linear and loralib draw it), B (out, r) at zero, so ΔW = 0:
    the adapted model starts exactly as the pretrained one.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def forward(self, x: Tensor) -> Tensor:
        """ΔW x, scaled in the r-wide middle, the cheapest place."""
        return F.linear(F.linear(x, self.A) * self.scale, self.B)


class LoRALinear(DecodingLinear):
    """A linear layer holding the original layer's own weight and bias (same state-dict names), plus LoRA updates
    of some of its output rows.

    `parts` maps a name to the (start, stop) rows its update writes: the fused qkv projection gets one update per
    targeted slice, as the paper's separate W_q, W_k, W_v would. Each update is added in place to its rows of the
    base product, so no zero delta is computed for the rows left alone. The base product goes through either of
    DecodingLinear's paths (the transposed copy when decoding, F.linear otherwise) and the updates come after it:
    generation with a KV cache sees the same model as a full forward.
    """

    def __init__(self, base: nn.Linear, parts: dict[str, tuple[int, int]], rank: int, alpha: float) -> None:
        # On the meta device nothing is allocated nor drawn: the base layer's parameters take these places.
        super().__init__(base.in_features, base.out_features, base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.base_type = type(base)
        self.rows = {name: slice(start, stop) for name, (start, stop) in parts.items()}
        scale = (alpha or rank) / rank  # α = 0: α = r, as the paper sets α to the first r it tries
        factory: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora = nn.ModuleDict({name: LoRA(self.in_features, stop - start, rank, scale, **factory)
                                   for name, (start, stop) in parts.items()})

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        for name, update in self.lora.items():
            y[..., self.rows[name]] += update(x)
        return y

    def merged(self) -> nn.Linear:
        """The plain layer (of the original type) with each update folded into its rows of the weight, in place.

        Folding sums in at least fp32 and rounds once, so the merged model's outputs equal this one's to the
        rounding of its dtype."""
        with torch.no_grad():
            acc = torch.promote_types(self.weight.dtype, torch.float32)
            for name, update in self.lora.items():
                rows = self.weight[self.rows[name]]
                rows.copy_(torch.addmm(rows.to(acc), update.B.to(acc), update.A.to(acc), alpha=update.scale))
        plain = self.base_type(self.in_features, self.out_features, self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain


def build_peft(blocks: Iterable[AdaptableBlock], config: TransformerConfig) -> None:
    """The adapters and LoRA updates a TransformerConfig asks for (`adapter_dim`, `lora_*`) in `blocks`: how GPT
    and BERT build an adapted model from its config.json. Their models then call `reset_peft_parameters` after
    drawing the pretrained-style initialisation, which would otherwise overwrite these modules' own."""
    blocks = list(blocks)
    if config.adapter_dim:
        _insert_adapters(blocks, config.adapter_dim)
    if config.lora_rank:
        _insert_lora(blocks, config.lora_rank, config.lora_alpha, config.lora_targets)


def reset_peft_parameters(model: nn.Module) -> None:
    """Draw every adapter's and LoRA update's initialisation again: near the identity, and exactly it for LoRA."""
    for module in model.modules():
        if isinstance(module, Adapter | LoRA):
            module.reset_parameters()


def add_adapters(model: nn.Module, bottleneck: int) -> int:
    """Give every transformer block of `model` two Houlsby adapters (after the attention and after the
    feed-forward sub-layer, before the residual addition), in place; the pretrained weights are not touched and
    the config's `adapter_dim` is set, so that a saved model loads back with its adapters. Returns the number
    of parameters added: 2 (2 dim m + m + dim) per block."""
    if bottleneck <= 0:
        raise UserError(f"adapters need a bottleneck of 1 or more units, got {bottleneck}")
    blocks = _transformer_blocks(model, "adapters")
    if any(block.attn_adapter is not None for block in blocks):
        raise UserError("this model has adapters already")
    added = _insert_adapters(blocks, bottleneck)
    _set_config(model, adapter_dim=bottleneck)
    return added


def add_lora(model: nn.Module, rank: int, alpha: float = 0.0, targets: str = "qv") -> int:
    """Give the attention projections `targets` (letters of "qkvo") of every transformer block of `model` a
    LoRA update of rank `rank`, scaled by alpha / rank (alpha 0: 1), in place; the pretrained weights are not
    touched, the model's outputs are unchanged until B moves, and the config's `lora_*` fields are set. Returns
    the number of parameters added: 2 dim rank per target per block."""
    if rank <= 0:
        raise UserError(f"LoRA needs a rank of 1 or more, got {rank}")
    if alpha < 0:
        raise UserError(f"LoRA's alpha must be 0 (alpha = rank) or positive, got {alpha}")
    if not targets or set(targets) - set(LORA_TARGETS) or len(set(targets)) != len(targets):
        raise UserError(f"LoRA targets must be one or more of the letters q, k, v, o (each once), got {targets!r}")
    blocks = _transformer_blocks(model, "LoRA updates")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise UserError("this model has LoRA updates already: merge them first (merge_lora)")
    added = _insert_lora(blocks, rank, alpha, targets)
    _set_config(model, lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
    return added


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its weight (W + (α / r) B A), in place, and put the plain layers back, with
    the config's `lora_*` fields at their defaults (rank 0): the model, and the folder it saves to, is then a
    plain one, with the same outputs to the rounding of its dtype. Returns the number of layers merged."""
    adapted = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, LoRALinear)]
    for parent, name, child in adapted:
        setattr(parent, name, child.merged())
    if adapted:
        _set_config(model, lora_rank=0, lora_alpha=0.0, lora_targets="qv")
    return len(adapted)


def peft_parameters(model: nn.Module, kind: str) -> list[nn.Parameter]:
    """The parameters that train under `kind`: "adapters": every adapter's weights and the blocks' LayerNorms
    (Houlsby et al. §2.1 train the layer normalisation too); "lora": every update's A and B. The task head is
    the caller's to add."""
    if kind == "adapters":
        wanted: tuple[type[nn.Module], ...] = (Adapter, nn.LayerNorm)
        owners = [m for block in _transformer_blocks(model, "adapters") for m in block.modules()
                  if isinstance(m, wanted)]
    elif kind == "lora":
        owners = [m for m in model.modules() if isinstance(m, LoRA)]
    else:
        raise UserError(f"unknown parameter-efficient method {kind!r}: expected 'adapters' or 'lora'")
    if not any(isinstance(m, Adapter | LoRA) for m in owners):
        raise UserError(f"this model has no {'adapters' if kind == 'adapters' else 'LoRA updates'} to train: "
                        f"add them first ({'add_adapters' if kind == 'adapters' else 'add_lora'})")
    return [p for m in owners for p in m.parameters()]


def _insert_adapters(blocks: list[AdaptableBlock], bottleneck: int) -> int:
    for block in blocks:
        param = block.attn_norm.weight
        for name in ("attn_adapter", "mlp_adapter"):
            setattr(block, name, Adapter(param.shape[0], bottleneck, device=param.device, dtype=param.dtype))
    return sum(p.numel() for b in blocks for a in (b.attn_adapter, b.mlp_adapter) for p in a.parameters())


def _insert_lora(blocks: list[AdaptableBlock], rank: int, alpha: float, targets: str) -> int:
    added = 0
    for block in blocks:
        attn = block.attn
        dim = attn.out.in_features
        qkv_parts = {t: (i * dim, (i + 1) * dim) for i, t in enumerate("qkv") if t in targets}
        if qkv_parts:
            attn.qkv = LoRALinear(attn.qkv, qkv_parts, rank, alpha)
            added += sum(p.numel() for p in attn.qkv.lora.parameters())
        if "o" in targets:
            attn.out = LoRALinear(attn.out, {"o": (0, dim)}, rank, alpha)
            added += sum(p.numel() for p in attn.out.lora.parameters())
    return added


def _transformer_blocks(model: nn.Module, what: str) -> list[AdaptableBlock]:
    blocks = [m for m in model.modules() if isinstance(m, AdaptableBlock)]
    if not blocks:
        kind = next((c.model_type for c in _configs(model)), type(model).__name__)
        raise UserError(f"{what} are built into the transformer blocks of GPT, GPT-2, BERT and XLNet; {kind} has "
                        "none")
    return blocks


def _configs(model: nn.Module) -> list[Any]:
    """The distinct configs of `model` and its submodules (a task model wraps a language model that has one)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None:
            found.setdefault(id(config), config)
    return list(found.values())


def _set_config(model: nn.Module, **fields: Any) -> None:
    for config in _configs(model):
        if all(hasattr(config, name) for name in fields):
            for name, value in fields.items():
                setattr(config, name, value)
