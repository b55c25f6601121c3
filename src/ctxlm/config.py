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
    # What the family can do. Code outside models/, convert/ and this registry asks these, never the family's name.
    causal: ClassVar[bool] = False  # each state has seen only the tokens before it (a decoder: GPT, GPT-2, XL)
    has_segments: ClassVar[bool] = False  # reads segment ids: [CLS] a [SEP] b [SEP] pairs (BERT)
    word_level: ClassVar[bool] = False  # one input id per word, no sub-word pieces (ELMo, Transformer-XL)
    has_memory: ClassVar[bool] = False  # carries hidden states from one segment to the next (Transformer-XL)
    permutation_lm: ClassVar[bool] = False  # pretrains by permutation LM over two attention streams (XLNet)
    summary_last: ClassVar[bool] = False  # an encoder that sums a text up at its last token (XLNet's <cls>)
    # What a masked-LM encoder's sentence-pair head learns: "nsp" (BERT: is B the text after A, or a random text?),
    # "sop" (ALBERT: are A and B in their order, or swapped?); None: no pair task, the masked LM reads full
    # sentences packed across documents (RoBERTa, DeBERTa)
    pair_objective: ClassVar[str | None] = None
    tokenizer_kind: ClassVar[str | None] = None  # the tokenizer kind a run from scratch trains; None: the model_type

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
    # Parameter-efficient transfer (ctxlm.nn.peft), built into the blocks so that a saved adapted model loads back.
    adapter_dim: int = 0  # Houlsby adapters' bottleneck (two per block); 0: none
    lora_rank: int = 0  # LoRA's r on the attention projections in `lora_targets`; 0: none
    lora_alpha: float = 0.0  # LoRA's α, the update scaled by α / r; 0: α = r (Hu et al. 2021 §4.1)
    lora_targets: str = "qv"  # which of the query, key, value, output projections LoRA updates

    def __post_init__(self) -> None:
        if self.mlp_dim is None:
            self.mlp_dim = 4 * self.dim

    @property
    def hidden_dim(self) -> int:
        """Width of every hidden state the backbone returns."""
        return self.dim

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
        for name in ("adapter_dim", "lora_rank", "lora_alpha"):
            if getattr(self, name) < 0:
                raise UserError(f"config: {name} must be 0 or positive, got {getattr(self, name)}")
        targets = self.lora_targets
        if not targets or set(targets) - set("qkvo") or len(set(targets)) != len(targets):
            raise UserError(f"config: lora_targets must be one or more of the letters q, k, v, o (each once), "
                            f"got {targets!r}")


@dataclass
class GPTConfig(TransformerConfig):
    """GPT (Radford et al. 2018) and GPT-2 (Radford et al. 2019): a decoder-only transformer.

    The two differ in where LayerNorm sits: GPT normalises after each residual addition (post-LN), GPT-2 before
    each sub-layer with a final LayerNorm on top (pre-LN). `model_type` selects the variant.
    """

    model_types: ClassVar[tuple[str, ...]] = ("gpt", "gpt2")
    causal: ClassVar[bool] = True
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
    has_segments: ClassVar[bool] = True
    pair_objective: ClassVar[str | None] = "nsp"  # what the sentence-pair head (`nsp_head`) learns
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


def _both_position_terms() -> list[str]:
    return ["c2p", "p2c"]


@dataclass
class DebertaConfig(TransformerConfig):
    """DeBERTa (He et al. 2020) in the v2/v3 layout as published: a post-LN encoder with disentangled attention
    over log-bucketed relative positions, no absolute positions in its input, no segment embeddings.

    The defaults are deberta-v3-base's. `position_buckets` (k): relative distances beyond ±k/2 share log-spaced
    buckets, 2k rows of position embeddings; 0: exact distances, clamped to ±max_relative_positions.
    `max_relative_positions`: the distance the buckets reach (0: max_positions). `position_terms`: which of the
    content → position ("c2p") and position → content ("p2c") terms the attention adds (both in DeBERTa).
    `emd_layers`: the enhanced mask decoder's n, the top layer applied again that many times with absolute
    positions in its queries before the masked-LM head (2 in the paper; 0: the head reads the top layer, as
    Hugging Face's DebertaV2ForMaskedLM does). The published v3 layout's other settings are fixed: position
    projections shared with the content ones, the position table LayerNorm'ed, GELU (erf).
    """

    model_types: ClassVar[tuple[str, ...]] = ("deberta",)
    tokenizer_kind: ClassVar[str] = "bert"  # WordPiece from scratch; the published v3 vocabulary is SentencePiece
    model_type: str = "deberta"
    vocab_size: int = 128100
    max_positions: int = 512
    layer_norm_eps: float = 1e-7
    position_buckets: int = 256
    max_relative_positions: int = 0
    position_terms: list[str] = dataclasses.field(default_factory=_both_position_terms)
    mlm_head: bool = True
    emd_layers: int = 2

    @property
    def relative_reach(self) -> int:
        """The largest distance the buckets tell apart: max_relative_positions, or max_positions when 0."""
        return self.max_relative_positions or self.max_positions

    @property
    def relative_span(self) -> int:
        """k: the position table has 2k rows, for the (bucketed) distances -k .. k - 1."""
        return self.position_buckets or self.relative_reach

    def validate(self) -> None:
        super().validate()
        for name in ("position_buckets", "max_relative_positions", "emd_layers"):
            if getattr(self, name) < 0:
                raise UserError(f"config: {name} must be 0 or positive, got {getattr(self, name)}")
        if self.position_buckets == 1:
            raise UserError("config: position_buckets must be 0 (no buckets) or at least 2, got 1")
        terms = self.position_terms
        if not all(isinstance(t, str) for t in terms) or set(terms) - {"c2p", "p2c"} or len(set(terms)) != len(terms):
            raise UserError(f"config: position_terms must be some of 'c2p', 'p2c' (each once), got {terms}")
        if self.emd_layers and not self.mlm_head:
            raise UserError("config: emd_layers decode for the masked-LM head: set it to 0 without one (mlm_head: "
                            "false)")


@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa (Liu et al. 2019): BERT's encoder pretrained without next-sentence prediction.

    One token type: every token adds segment embedding 0 (the published weights hold that one row; a checkpoint
    with more keeps them, unread, as the reference's tokenizer never asks for another). No NSP head, LayerNorm eps
    1e-5, a byte-level BPE vocabulary. `max_positions` counts usable positions: the published table has two more
    rows (514), the padding index and the one before it, which conversion drops.
    """

    model_types: ClassVar[tuple[str, ...]] = ("roberta",)
    has_segments: ClassVar[bool] = False
    pair_objective: ClassVar[str | None] = None
    model_type: str = "roberta"
    vocab_size: int = 50265
    max_positions: int = 512
    layer_norm_eps: float = 1e-5
    n_segments: int = 1
    pooler: bool = False  # only a fine-tuning head would read it; RobertaForMaskedLM ships none
    nsp_head: bool = False

    def validate(self) -> None:
        super().validate()
        if self.nsp_head:
            raise UserError("config: RoBERTa has no next-sentence prediction (nsp_head must be false)")


@dataclass
class AlbertConfig(BertConfig):
    """ALBERT (Lan et al. 2019): BERT with factorised embeddings, one set of layer weights, sentence order.

    `embedding_size` (E) is the width of the token, position and segment embeddings, projected to `dim` (H) for
    the encoder; the `n_layers` layers apply one shared block. The sentence-pair head (`nsp_head`, the name BERT's
    configs use) predicts sentence order (`pair_objective` "sop": are the two segments in their original order?),
    not whether the second segment follows the first. `activation` is the blocks' and the masked-LM head's:
    "gelu_tanh" is the published models' "gelu_new".
    """

    model_types: ClassVar[tuple[str, ...]] = ("albert",)
    pair_objective: ClassVar[str | None] = "sop"
    tokenizer_kind: ClassVar[str | None] = "sentencepiece"
    model_type: str = "albert"
    embedding_size: int = 128
    activation: str = "gelu_tanh"

    def validate(self) -> None:
        super().validate()
        if self.embedding_size <= 0:
            raise UserError(f"config: embedding_size must be positive, got {self.embedding_size}")
        if self.activation not in ("gelu_tanh", "gelu", "relu"):
            raise UserError(f"config: activation must be gelu_tanh, gelu or relu, got {self.activation!r}")


def _published_filters() -> list[list[int]]:
    return [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]


@dataclass
class ElmoConfig(ModelConfig):
    """ELMo (Peters et al. 2018): a character CNN under a two-layer biLSTM language model.

    Names follow AllenNLP's options.json: `dim` is the LSTM projection (and token layer) width, each hidden
    state is 2 * dim wide (forward ‖ backward); `cell_dim` the LSTM memory width. The defaults are ELMo
    "original" (93.6M parameters besides the softmax); "small" is dim 128, cell_dim 1024, one highway layer and
    filters [[1,32],[2,32],[3,64],[4,128],[5,256],[6,512],[7,1024]] as well. `vocab_size` is the softmax's word
    vocabulary, 0 for a model without one (the published weights ship none). `cell_clip`/`proj_clip` None turns
    clipping off, which lets the fused `nn.LSTM` kernel run.
    """

    model_types: ClassVar[tuple[str, ...]] = ("elmo",)
    word_level: ClassVar[bool] = True
    model_type: str = "elmo"
    vocab_size: int = 0
    n_characters: int = 262  # 256 bytes + 5 markers (bos, eos, bow, eow, pad) + 1: id 0 pads the tensor
    max_characters: int = 50
    char_dim: int = 16
    filters: list[list[int]] = dataclasses.field(default_factory=_published_filters)
    n_highway: int = 2
    activation: str = "relu"
    dim: int = 512
    cell_dim: int = 4096
    n_layers: int = 2
    cell_clip: float | None = 3.0
    proj_clip: float | None = 3.0
    residual: bool = True  # the second LSTM layer's input is added to its output
    dropout: float = 0.1
    softmax: str = "full"  # or "adaptive" (torch.nn.AdaptiveLogSoftmaxWithLoss) for large vocabularies
    adaptive_cutoffs: list[int] = dataclasses.field(default_factory=list)

    max_positions: ClassVar[int] = 1_000_000  # an LSTM has no position table: texts are never cut for it

    @property
    def hidden_dim(self) -> int:
        """Width of every hidden state: forward ‖ backward (the token layer is repeated to match)."""
        return 2 * self.dim

    def validate(self) -> None:
        if self.model_type not in self.model_types:
            raise UserError(f"config: model_type {self.model_type!r} is not one of {self.model_types}")
        for name in ("n_characters", "max_characters", "char_dim", "dim", "cell_dim", "n_layers"):
            if getattr(self, name) <= 0:
                raise UserError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise UserError(f"config: vocab_size must be 0 (no softmax) or positive, got {self.vocab_size}")
        if not self.filters or any(len(f) != 2 or min(f) <= 0 for f in self.filters):
            raise UserError(f"config: filters must be a list of [width, count] pairs, got {self.filters}")
        if max(width for width, _ in self.filters) > self.max_characters:
            raise UserError(f"config: a filter is wider than max_characters ({self.max_characters})")
        if self.activation not in ("relu", "tanh"):
            raise UserError(f"config: activation must be relu or tanh, got {self.activation!r}")
        if self.softmax not in ("full", "adaptive"):
            raise UserError(f"config: softmax must be full or adaptive, got {self.softmax!r}")
        cutoffs = self.adaptive_cutoffs
        increasing = bool(cutoffs) and cutoffs == sorted(set(cutoffs)) and 0 < cutoffs[0] < self.vocab_size
        if self.softmax == "adaptive" and not (increasing and cutoffs[-1] < self.vocab_size):
            raise UserError("config: softmax 'adaptive' needs increasing adaptive_cutoffs between 0 and vocab_size, "
                            f"got {self.adaptive_cutoffs} for vocab_size {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config: dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TransformerXLConfig(ModelConfig):
    """Transformer-XL (Dai et al. 2019): segment-level recurrence with relative positional attention.

    Names follow the paper's code where ours differ: `dim` is d_model, `embed_dim` d_embed (None: dim), `mlp_dim`
    d_inner, `head_dim` d_head (n_heads * head_dim need not equal dim). The defaults are the WikiText-103 model's
    sizes, with a plain embedding and softmax; the published model adds `adaptive_cutoffs=[20000, 40000, 200000]`
    and `div_val=4` (adaptive input and softmax, Baevski & Auli 2019: cluster i is embed_dim / div_val**i wide,
    projected to dim). `tie_projs[i]`: the softmax's cluster i reuses the embedding's projection (empty: the
    paper's default, all but the first; see `projection_ties`). `untie_r`: each layer has its own position
    biases u, v (else one pair shared by all layers). `clamp_len` <= 0: no clamp on relative distances.
    `mem_len`: positions of memory kept per layer; with `same_length`, every query attends to the same number of
    keys (mem_len).
    """

    model_types: ClassVar[tuple[str, ...]] = ("transformer-xl",)
    causal: ClassVar[bool] = True
    word_level: ClassVar[bool] = True
    has_memory: ClassVar[bool] = True
    model_type: str = "transformer-xl"
    vocab_size: int = 267735
    dim: int = 1024
    embed_dim: int | None = None
    n_layers: int = 18
    n_heads: int = 16
    head_dim: int = 64
    mlp_dim: int = 4096
    mem_len: int = 1600
    clamp_len: int = 1000
    same_length: bool = True
    pre_norm: bool = False
    untie_r: bool = True
    dropout: float = 0.1
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    proj_init_std: float = 0.01
    adaptive_cutoffs: list[int] = dataclasses.field(default_factory=list)
    div_val: int = 1
    tie_projs: list[bool] = dataclasses.field(default_factory=list)

    max_positions: ClassVar[int] = 1_000_000  # relative positions have no table: any length runs

    def __post_init__(self) -> None:
        if self.embed_dim is None:
            self.embed_dim = self.dim

    @property
    def hidden_dim(self) -> int:
        return self.dim

    @property
    def projection_ties(self) -> list[bool]:
        """`tie_projs`, or when empty the paper's default: every softmax cluster but the first shares the
        embedding's projection."""
        return list(self.tie_projs) or [False] + [True] * len(self.adaptive_cutoffs)

    def validate(self) -> None:
        if self.model_type not in self.model_types:
            raise UserError(f"config: model_type {self.model_type!r} is not one of {self.model_types}")
        for name in ("vocab_size", "dim", "embed_dim", "n_layers", "n_heads", "head_dim", "mlp_dim", "div_val"):
            if getattr(self, name) <= 0:
                raise UserError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.mem_len < 0:
            raise UserError(f"config: mem_len must be 0 or more, got {self.mem_len}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"config: {name} must be in [0, 1), got {getattr(self, name)}")
        cutoffs = self.adaptive_cutoffs
        if cutoffs and not (cutoffs == sorted(set(cutoffs)) and 0 < cutoffs[0] <= cutoffs[-1] < self.vocab_size):
            raise UserError(f"config: adaptive_cutoffs must increase strictly between 0 and vocab_size "
                            f"{self.vocab_size}, got {cutoffs}")
        if self.embed_dim // self.div_val ** len(cutoffs) <= 0:
            raise UserError(f"config: div_val {self.div_val} leaves the last of {len(cutoffs) + 1} clusters no width "
                            f"(embed_dim {self.embed_dim})")
        ties = self.projection_ties
        if len(ties) != len(cutoffs) + 1 or not all(isinstance(t, bool) for t in ties):
            raise UserError(f"config: tie_projs needs one true/false per softmax cluster ({len(cutoffs) + 1}), "
                            f"got {self.tie_projs}")


@dataclass
class XLNetConfig(TransformerConfig):
    """XLNet (Yang et al. 2019): a bidirectional Transformer-XL pretrained by permutation language modelling.

    Names as TransformerConfig's (the reference's d_model, n_layer, n_head, d_inner, ff_activation are `dim`,
    `n_layers`, `n_heads`, `mlp_dim`, `activation`); heads are dim / n_heads wide, and one `dropout` serves the
    residual branches and (as `attn_dropout`) the attention weights alike in published models. Positions are
    relative, with no table: `max_positions` only bounds the inputs of tasks and embeddings. `mem_len`: content
    states kept per layer for the next segment (0: none, the published models' default for fine-tuning);
    `clamp_len` > 0 caps relative distances. Defaults are xlnet-base-cased's sizes. A run from scratch trains a
    byte-level BPE tokenizer (the published models' SentencePiece vocabulary is converted with them).
    """

    model_types: ClassVar[tuple[str, ...]] = ("xlnet",)
    has_segments: ClassVar[bool] = True
    has_memory: ClassVar[bool] = True
    permutation_lm: ClassVar[bool] = True
    summary_last: ClassVar[bool] = True
    tokenizer_kind: ClassVar[str] = "gpt2"  # byte-level BPE from scratch; published models bring SentencePiece
    model_type: str = "xlnet"
    vocab_size: int = 32000
    max_positions: int = 512
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    mem_len: int = 0
    clamp_len: int = -1

    def validate(self) -> None:
        super().validate()
        if self.activation not in ("gelu", "relu", "gelu_tanh"):
            raise UserError(f"config: activation must be gelu, relu or gelu_tanh, got {self.activation!r}")
        if self.mem_len < 0:
            raise UserError(f"config: mem_len must be 0 or more, got {self.mem_len}")


CONFIG_CLASSES: list[type[ModelConfig]] = [GPTConfig, BertConfig, RobertaConfig, AlbertConfig, DebertaConfig,
                                           ElmoConfig, TransformerXLConfig, XLNetConfig]


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
        if value is None and "None" in expected:
            continue
        wrong_int = expected.startswith("int") and (not isinstance(value, int) or isinstance(value, bool))
        wrong_float = expected.startswith("float") and not isinstance(value, int | float)
        wrong_bool = expected == "bool" and not isinstance(value, bool)
        wrong_list = expected.startswith("list") and not isinstance(value, list)
        wrong_str = expected == "str" and not isinstance(value, str)
        if wrong_int or wrong_float or wrong_bool or wrong_list or wrong_str:
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


# ------------------------------------------------------------------------------------------- pretraining presets

def preset(family: str, *, vocab_size: int | None = None, dim: int = 256, layers: int | None = None, heads: int = 4,
           cell_dim: int | None = None, clip: bool = False, softmax: str = "full",
           cutoffs: list[int] | tuple[int, ...] = (), max_positions: int = 256, mem_len: int = 256,
           dropout: float = 0.1) -> ModelConfig:
    """A config of `family` sized to pretrain from scratch, as `ctxlm pretrain --model FAMILY` builds it; the
    keywords are its options of the same names (a bad value is refused naming the option), and those a family has
    no use for are ignored.

    - gpt, gpt2, bert, roberta, deberta: `layers` (default 4) x `heads`, width `dim` with a 4 x dim MLP, a
      `vocab_size` (default 8192) vocabulary, `max_positions` positions, `dropout` on the residual branches and
      attention alike.
    - albert: as bert, with embeddings min(128, dim) wide (the paper's E = 128) and one block shared by the layers.
    - elmo: the published character CNN with its filter counts scaled by dim / 512 (so dim 512 is ELMo
      "original"'s CNN; at dim 128 the published 2,048 filters would cost more than the LSTMs), `layers` (default
      2) LSTMs of `cell_dim` cells (default 4 x dim) per direction, clipping at ±3 (`clip`) or none, a softmax
      (full, or adaptive with the word ranks `cutoffs`) over `vocab_size` words (default 50,000).
    - xlnet: as bert, post-LN with GELU, relative positions (`max_positions` bounds task inputs only), `mem_len`
      content states of memory.
    - transformer-xl: heads of dim / heads, a 4 x dim MLP, post-LN as the paper, relative distances unclamped,
      `mem_len` states of memory, a plain or adaptive (input and softmax, div_val 4, `cutoffs`) vocabulary whose
      size the training tokenizer sets.
    """
    cls = config_class(family)
    cuts = list(cutoffs) if softmax == "adaptive" else []
    if issubclass(cls, TransformerConfig):
        config = cls(model_type=family, vocab_size=8192 if vocab_size is None else vocab_size,
                     max_positions=max_positions, dim=dim, n_layers=4 if layers is None else layers, n_heads=heads,
                     dropout=dropout, attn_dropout=dropout)
        if isinstance(config, XLNetConfig):  # segment recurrence in pretraining, as Transformer-XL's
            config.mem_len = mem_len
        if isinstance(config, AlbertConfig):
            config.embedding_size = min(128, dim)  # the paper's E = 128, or H where the model is narrower
        config.validate()
        return config
    if cls is ElmoConfig:
        vocab_size, layers = 50000 if vocab_size is None else vocab_size, 2 if layers is None else layers
        default = ElmoConfig()
        filters = [[width, max(1, count * dim // default.dim)] for width, count in default.filters]
        config = ElmoConfig(vocab_size=vocab_size, dim=dim, cell_dim=4 * dim if cell_dim is None else cell_dim,
                            n_layers=layers, filters=filters, cell_clip=3.0 if clip else None,
                            proj_clip=3.0 if clip else None, dropout=dropout, softmax=softmax, adaptive_cutoffs=cuts)
        # the cut-offs are checked against the final vocabulary
        _check_positive(vocab_size=vocab_size, dim=dim, cell_dim=config.cell_dim, layers=layers)
        return config
    if cls is TransformerXLConfig:
        layers = 4 if layers is None else layers
        _check_positive(dim=dim, layers=layers, heads=heads)
        if dim % heads:
            raise UserError(f"--dim {dim} is not divisible by --heads {heads}")
        if mem_len < 0:
            raise UserError(f"--mem-len must be 0 or more, got {mem_len}")
        return TransformerXLConfig(vocab_size=max(cuts, default=0) + 1 if vocab_size is None else vocab_size,
                                   dim=dim, n_layers=layers, n_heads=heads, head_dim=dim // heads, mlp_dim=4 * dim,
                                   mem_len=mem_len, clamp_len=0, same_length=False, dropout=dropout,
                                   attn_dropout=0.0, adaptive_cutoffs=cuts, div_val=4 if cuts else 1)
    raise UserError(f"no pretraining preset for model_type {family!r}")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
