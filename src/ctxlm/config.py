"""Model configurations: one dataclass per family, saved as `config.json`.

`model_type` names the family in the JSON file; `config_from_dict` picks the dataclass from it and refuses
unknown keys or ill-typed values with a message that names the key, instead of failing deep inside a module.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ctxlm.errors import UserError


@dataclass
class ModelConfig:
    """Fields every family shares; subclasses add their own."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def validate(self) -> None:
        """Raise `UserError` naming the first inconsistent field."""


@dataclass
class TransformerConfig(ModelConfig):
    """What every transformer family here shares; families change defaults and add their own fields."""

    model_type: str = ""
    vocab_size: int = 50257
    max_positions: int = 1024
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_dim: int | None = None  # None: 4 * dim, as in the papers
    dropout: float = 0.1  # embeddings, residual branches
    attn_dropout: float = 0.1  # attention probabilities
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.mlp_dim is None:
            self.mlp_dim = 4 * self.dim

    def validate(self) -> None:
        if self.model_type not in self.model_types:
            raise UserError(f"config: model_type {self.model_type!r} is not one of {self.model_types}")
        for name in ("vocab_size", "max_positions", "dim", "n_layers", "n_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise UserError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise UserError(f"config: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"config: {name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class GPTConfig(TransformerConfig):
    """GPT (Radford et al. 2018) and GPT-2 (Radford et al. 2019): a decoder-only transformer.

    The two differ in where LayerNorm sits: GPT normalises after each residual addition (post-LN), GPT-2 before
    each sub-layer with a final LayerNorm on top (pre-LN). `model_type` selects the variant.
    """

    model_types: ClassVar[tuple[str, ...]] = ("gpt", "gpt2")
    model_type: str = "gpt2"

    @property
    def pre_norm(self) -> bool:
        return self.model_type == "gpt2"


@dataclass
class BertConfig(TransformerConfig):
    """BERT (Devlin et al. 2018): a bidirectional post-LN transformer encoder with segment embeddings.

    The heads are optional because published encoders often ship without them (sentence-embedding models
    such as MiniLM keep only the pooler): a model converted without a head says so here.
    """

    model_types: ClassVar[tuple[str, ...]] = ("bert",)
    model_type: str = "bert"
    vocab_size: int = 30522
    max_positions: int = 512
    layer_norm_eps: float = 1e-12
    n_segments: int = 2
    pooler: bool = True  # tanh(W h_[CLS]): the input of next-sentence prediction
    mlm_head: bool = True
    nsp_head: bool = True

    def validate(self) -> None:
        super().validate()
        if self.nsp_head and not self.pooler:
            raise UserError("config: nsp_head needs the pooler (pooler: true)")


CONFIG_CLASSES: list[type[ModelConfig]] = [GPTConfig, BertConfig]


def config_class(model_type: str) -> type[ModelConfig]:
    for cls in CONFIG_CLASSES:
        if model_type in cls.model_types:
            return cls
    known = sorted(t for cls in CONFIG_CLASSES for t in cls.model_types)
    raise UserError(f"unknown model_type {model_type!r}; known: {', '.join(known)}")


def config_from_dict(data: dict[str, Any], source: str = "config") -> ModelConfig:
    """Build and validate the family's config; `source` (a file name) prefixes every error."""
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{source}: expected a JSON object with a 'model_type' key")
    cls = config_class(data["model_type"])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown} for model_type {data['model_type']!r}")
    for key, value in data.items():
        expected = fields[key].type  # a string: annotations are postponed
        wrong_int = expected.startswith("int") and not isinstance(value, int | None)
        wrong_float = expected == "float" and not isinstance(value, int | float)
        wrong_bool = expected == "bool" and not isinstance(value, bool)
        if wrong_int or wrong_float or wrong_bool:
            raise UserError(f"{source}: {key} should be {expected}, got {value!r}")
    config = cls(**data)
    try:
        config.validate()
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return config


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (a model folder holds config.json + model.safetensors)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return config_from_dict(data, source=str(path))
