"""Contextual embeddings: one vector per text, per word or per token, read from any layer (or mix) of a model.

`embed(texts)` is sentence-transformers' recipe on the packaged MiniLM: the mean of the top layer over every
token, [CLS] and [SEP] included. The options give the usual feature-based readings of a pretrained model:

- which layers: the top; the one below it (less tied to the pretraining objective); BERT's sum of all layers or
  sum / concatenation of the last four (Devlin et al. 2018, Table 7, the feature-based NER study); every layer
  on an axis of its own, for a learned `ScalarMix` (ELMo); or any list of layers, concatenated;
- how to pool the tokens: [CLS] (encoders), the mean, the last token (all that a decoder's last state has
  seen), ULMFiT's concatenation of the last, the max and the mean, one vector per word (its first sub-token, or
  the mean of its sub-tokens), or none;
- how to read a text longer than the model's context: cut it (the default, with a warning), keep its head and
  tail, or read it whole in windows whose vectors are pooled into the text's (`ctxlm.nn.long_text`).

Inference only: texts are batched by length so that padding wastes little, and the model stops at the highest
layer asked for. The backbone runs in the precision `ctxlm.precision` picks (dtype="auto", the default): under
bfloat16 autocast on hardware with bf16 units (AMX or AVX512-BF16 CPUs, Ampere and later GPUs), in float32
elsewhere; dtype="fp32" / "bf16" force one. On MiniLM the bf16 vectors keep a cosine similarity of at least 0.9999
to the float32 ones (tests/test_precision.py checks it). Vectors come back as float32, on the CPU, in the order of
the input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from ctxlm.api import load
from ctxlm.errors import UserError
from ctxlm.nn.long_text import Frame, LongText, combine_windows, windows
from ctxlm.nn.pooling import POOLINGS
from ctxlm.nn.pooling import pool as pool_tokens
from ctxlm.nn.scalar_mix import ScalarMix
from ctxlm.precision import inference_context
from ctxlm.progress import progress as progress_of
from ctxlm.tokenizers import Tokenizer

__all__ = ["LAYER_NAMES", "POOLS", "WORD_POOLS", "ScalarMix", "embed"]

LAYER_NAMES = ("last", "second-to-last", "sum", "sum-last-4", "concat-last-4", "all")
POOLS = (*POOLINGS, "words", "none")
WORD_POOLS = ("first", "mean")

_loaded: dict[str, nn.Module] = {}  # models loaded by name: repeated calls must not reload them


def embed(texts: str | Sequence[str] | Sequence[Sequence[str]], model: str | os.PathLike | nn.Module = "minilm",
          *, layers: str | int | Sequence[int] = "last", pool: str = "mean", word_pool: str = "first",
          normalize: bool = False, batch_size: int = 64, max_length: int | None = None,
          long_text: str | LongText = "truncate", device: str | torch.device | None = None,
          dtype: str | torch.dtype | None = "auto", progress: bool = False) -> Tensor | list[Tensor]:
    """Contextual vectors of `texts` from `model`'s hidden states.

    `texts`: one str (the result is then that text's alone, not a list of one), a list of str, or, for
    pool="words", a list of texts already split into words. `model`: a name or path for `ctxlm.load` (loaded
    once per process), or a loaded model with `.config`, `.tokenizer` and `.backbone`.

    `layers` (0 = the embedding layer, L = the top): "last"; "second-to-last"; "sum" (layers 1..L);
    "sum-last-4"; "concat-last-4" (L-3..L in that order, 4 × dim); "all" (every state 0..L on a new axis,
    (..., L + 1, dim), for `ScalarMix`); a layer number (negative counts from the top: -1 = L); or a list of
    layer numbers, concatenated in the order given.

    `pool`: "cls" ([CLS]; encoders only), "mean" (over every real token, special tokens included), "last" (the
    last real token: a decoder's natural choice), "concat" ([last, max, mean], 3 × D: ULMFiT's concat pooling,
    for decoders and the biLM; not with layers="all"), "words" (one vector per word: its first sub-token with
    word_pool="first", the mean of its sub-tokens with "mean"), "none" (one vector per token, special tokens
    included). Words are the caller's when given split texts; otherwise BERT's pre-tokeniser words (split at
    whitespace and punctuation: "don't" is three words) and, for decoders, whitespace-separated words.

    Returns, for cls/mean/last/concat, a tensor (n_texts, D), where D depends on `layers` ((n_texts, L + 1, dim)
    for "all"); for words/none a list of (n_words or n_tokens, D) tensors. `normalize`: L2-normalise each vector.

    `max_length` (default: the model's context) bounds each model input. `long_text` says what becomes of a
    longer text (see `ctxlm.nn.long_text.LongText`): "truncate" cuts it to `max_length`, with a warning (BERT
    keeps its closing [SEP], and pool="words" then returns the words that still have a token); "head-tail"
    keeps its first and last tokens ("head-tail:head=N": the first N; default 128 of every 510, Sun et al.
    2019); "windows" reads all of it, in consecutive windows of `max_length` tokens ("windows:stride=N": N
    tokens between two windows' starts, overlapping them), each framed as a text alone (BERT: [CLS] ... [SEP]),
    and pools their vectors into the text's: the mean weighted by each window's tokens for cls and mean, the
    last window's last token for last, and for concat the last token, the max over every window and the
    weighted mean (one vector per text: not with pool="words" or "none"). A text that fits is read as one input
    whatever `long_text` says, and its vector is the same, bit for bit. A text without tokens
    (empty or, but for GPT-2's byte-level vocabulary, whitespace) is read as [CLS] [SEP] by BERT, and as one
    <|endoftext|> (else the start token) by a decoder; with pool="words" it has no words: a (0, D) tensor.

    `device`: where to run, default the model's; another device moves the model there. `dtype`: "auto" (bf16
    autocast where the device has bf16 units, else fp32; see `ctxlm.precision`), "fp32" (also torch.float32 or
    None) or "bf16" (also torch.bfloat16). `progress`: a bar over batches.
    """
    model = _resolve_model(model)
    config, tokenizer, backbone = model.config, model.tokenizer, model.backbone
    single = isinstance(texts, str)
    items, presplit = _check_texts([texts] if single else texts, pool)
    _check_option("pool", pool, POOLS)
    _check_option("word_pool", word_pool, WORD_POOLS)
    encoder = not config.causal
    if pool == "cls" and not encoder:
        raise UserError(f"pool='cls' needs an encoder; a {config.model_type} decoder's first state has seen only "
                        "the first token (use pool='last' or 'mean')")
    choice = choose_layers(layers, config.n_layers)
    long = LongText.parse(long_text)
    if long.how == "windows" and pool not in POOLINGS:
        raise UserError(f"long_text={long_text!r} pools each text's windows into one vector: it needs pool="
                        f"{', '.join(map(repr, POOLINGS))}, not {pool!r}")
    if pool == "concat" and choice.how == "stack":
        raise UserError("pool='concat' gives one flat vector per text: choose layers other than 'all'")
    max_length = _check_max_length(max_length, config.max_positions, 2 if encoder else 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r}: expected a positive integer")
    device = _check_device(device, backbone)
    precision = inference_context(dtype, device)  # checked before the texts are tokenized

    with record_function("embed: tokenize"):  # the phases are named for torch.profiler (benchmarks/profile_embed.py)
        tokens = _tokenize(tokenizer, items, presplit=presplit, by_word=pool == "words", encoder=encoder)
    cut = sum(len(t.ids) > max_length for t in tokens)
    if cut and long.how == "truncate":
        dropped = "; words past the cut have no vector" if pool == "words" else ""
        warnings.warn(f"{cut} of {len(tokens)} texts are longer than max_length={max_length} tokens and were "
                      f"truncated to {max_length} tokens{dropped}", stacklevel=2)
    # The model inputs: one per text, or a long text's windows; `owner` numbers the text of each.
    frame = Frame.of(tokenizer) if encoder else Frame()  # a decoder's text is its bare tokens (see _tokenize)
    inputs, owner = [], []
    for i, t in enumerate(tokens):
        for positions in windows(len(t.ids), max_length, frame, long):
            inputs.append(t.take(positions))
            owner.append(i)

    if next(backbone.parameters()).device != device:
        model.to(device)
    shape = choice.vector_shape(config.hidden_dim)
    if pool == "concat":
        shape = (3 * shape[0],)
    # Longest first: equal lengths share a batch (little padding) and an out-of-memory error comes at once.
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i].ids))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    # One vector per input: written batch by batch into one ordinary tensor (an inference tensor could not take
    # part in autograd later, e.g. training a ScalarMix on it). Per word or token: one ordinary copy per text.
    pooled = torch.empty(len(inputs), *shape) if pool in POOLINGS else None
    results: list[Tensor | None] = [None] * len(inputs)
    was_training = backbone.training
    backbone.eval()  # dropout off; the caller's mode is restored below
    try:
        with precision:  # one autocast region for every batch: each weight is cast once, not once per batch
            for batch in progress_of(batches, desc="embed", unit="batch", disable=not progress):
                vectors = _embed_batch(backbone, [inputs[i] for i in batch], tokenizer.pad_id, choice, pool,
                                       word_pool, device)
                if pooled is not None:
                    with record_function("embed: pool"):
                        pooled[batch] = vectors.unflatten(-1, shape)
                    continue
                for i, vector in zip(batch, vectors, strict=True):
                    vector = vector.clone().unflatten(-1, shape)
                    results[i] = F.normalize(vector, dim=-1) if normalize else vector
    finally:
        backbone.train(was_training)
    if pooled is not None:
        lengths = torch.tensor([len(t.ids) for t in inputs])
        pooled = combine_windows(pooled.flatten(1), lengths, torch.tensor(owner), pool).unflatten(-1, shape)
        pooled = F.normalize(pooled, dim=-1) if normalize else pooled
        return pooled[0] if single else pooled
    return results[0] if single else results


@dataclass(frozen=True)
class _LayerChoice:
    """Which hidden states to read (indices into `Hidden.states`) and how to combine them."""

    indices: tuple[int, ...]
    how: str  # "concat" (a single layer too), "sum", or "stack" (on a new axis, second to last)

    def combine(self, states: Sequence[Tensor]) -> Tensor:
        """(batch, time, D), or (batch, time, layers, dim) for "stack"; float32 whatever the states' dtype."""
        picked = [states[i].float() for i in self.indices]
        if self.how == "sum":
            return torch.stack(picked).sum(0)
        return torch.stack(picked, dim=-2) if self.how == "stack" else torch.cat(picked, dim=-1)

    def vector_shape(self, dim: int) -> tuple[int, ...]:
        if self.how == "sum":
            return (dim,)
        return (len(self.indices), dim) if self.how == "stack" else (len(self.indices) * dim,)


def choose_layers(layers: str | int | Sequence[int], n_layers: int) -> _LayerChoice:
    """Parse `embed`'s `layers` for a model of `n_layers` transformer layers."""
    top = n_layers
    valid = (f"expected one of {', '.join(LAYER_NAMES)}, a layer number from {-(top + 1)} to {top} "
             f"(0 = embeddings, {top} or -1 = top), or a list of layer numbers")
    if isinstance(layers, str):
        last_four = range(top - 3, top + 1)
        named = {"last": ([top], "concat"), "second-to-last": ([top - 1], "concat"),
                 "sum": (range(1, top + 1), "sum"), "sum-last-4": (last_four, "sum"),
                 "concat-last-4": (last_four, "concat"), "all": (range(top + 1), "stack")}
        if layers not in named:
            raise UserError(f"layers={layers!r}: {valid}")
        if layers.endswith("-4") and top < 4:
            raise UserError(f"layers={layers!r} needs at least 4 layers; this model has {top}")
        indices, how = named[layers]
        return _LayerChoice(tuple(indices), how)
    numbers = [layers] if _is_int(layers) else list(layers) if isinstance(layers, list | tuple) else []
    if not numbers or not all(_is_int(k) and -(top + 1) <= k <= top for k in numbers):
        raise UserError(f"layers={layers!r}: {valid}")
    return _LayerChoice(tuple(k % (top + 1) for k in numbers), "concat")


@dataclass(frozen=True)
class _Tokens:
    """One text as the model reads it."""

    ids: list[int]
    word_ids: list[int | None]  # the word of each token; None for special tokens (and when words are unused)

    def take(self, positions: list[int]) -> _Tokens:
        """The tokens at `positions` (a cut or a window of the text, `ctxlm.nn.long_text.windows`)."""
        return _Tokens([self.ids[i] for i in positions], [self.word_ids[i] for i in positions])


def _tokenize(tokenizer: Tokenizer, items: list, *, presplit: bool, by_word: bool, encoder: bool) -> list[_Tokens]:
    """Uncut token sequences: `[CLS] text [SEP]` for BERT, the bare text for decoders."""
    if encoder:
        encode = tokenizer.encode_words_batch if presplit else tokenizer.encode_text_batch
        return [_Tokens(e.ids, e.word_ids) for e in encode(items, max_length=None)]
    stand_in = next(i for i in (tokenizer.eos_id, tokenizer.start_id, tokenizer.pad_id) if i is not None)
    if presplit or by_word:
        return _decoder_words(tokenizer, items if presplit else [text.split() for text in items], stand_in)
    return [_Tokens(ids, [None] * len(ids)) if ids else _Tokens([stand_in], [None])
            for ids in tokenizer.encode_batch(items)]


def _decoder_words(tokenizer: Tokenizer, sentences: list[list[str]], stand_in: int) -> list[_Tokens]:
    """Each word encoded on its own (GPT-2's after a space, as inside running text), so that every token
    belongs to exactly one word; a word without tokens gets `stand_in`, so that no word is lost."""
    space = tokenizer.word_prefix  # " " for GPT-2's byte-level BPE; GPT's drops whitespace anyway
    pieces = iter(tokenizer.encode_batch([word if j == 0 else space + word
                                          for words in sentences for j, word in enumerate(words)]))
    out = []
    for words in sentences:
        ids: list[int] = []
        word_ids: list[int | None] = []
        for j in range(len(words)):
            piece = next(pieces) or [stand_in]
            ids += piece
            word_ids += [j] * len(piece)
        out.append(_Tokens(ids, word_ids) if ids else _Tokens([stand_in], [None]))
    return out


@torch.inference_mode()
def _embed_batch(backbone: nn.Module, batch: list[_Tokens], pad_id: int, choice: _LayerChoice, pool: str,
                 word_pool: str, device: torch.device) -> Tensor | list[Tensor]:
    """One batch's vectors with their features flattened to one axis, on the CPU: a (batch, features) tensor for
    cls/mean/last/concat pooling, else one (words or tokens, features) tensor per text. The backbone runs in the
    caller's autocast, if any; the layers are combined and pooled in float32."""
    with record_function("embed: pad"):
        lengths = [len(t.ids) for t in batch]
        width = max(lengths)
        ids = torch.tensor([t.ids + [pad_id] * (width - len(t.ids)) for t in batch], device=device)
        # A batch without padding (long texts all cut at max_length, or equal lengths) passes no mask: SDPA then
        # takes its fused kernel instead of the masked path.
        padded = min(lengths) < width
        mask = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    hidden = backbone(ids, mask=mask if padded else None, n_blocks=max(choice.indices))
    with torch.autocast(device.type, enabled=False), record_function("embed: pool"):
        per_token = choice.combine(hidden.states).flatten(2)  # (batch, time, features), float32
        if pool in POOLINGS:
            return pool_tokens(per_token, mask, pool).cpu()
        rows = [per_token[b, :n] for b, n in enumerate(lengths)]
        if pool == "none":
            return [row.cpu() for row in rows]
        return [_word_vectors(row, t.word_ids, word_pool).cpu() for row, t in zip(rows, batch, strict=True)]


def _word_vectors(states: Tensor, word_ids: list[int | None], how: str) -> Tensor:
    """(tokens, features) → (words, features): each word's first token, or the mean of its tokens."""
    owner = torch.tensor([-1 if w is None else w for w in word_ids], device=states.device)
    words = owner[owner >= 0].unique()  # sorted; a word cut off by truncation is simply absent
    member = (owner[None, :] == words[:, None]).float()  # (words, tokens)
    if how == "first":
        member = member * (member.cumsum(1) == 1)  # only the first token of each word
    return (member / member.sum(1, keepdim=True)) @ states


def _resolve_model(model: str | os.PathLike | nn.Module) -> nn.Module:
    if isinstance(model, str | os.PathLike):
        key = str(model)
        if key not in _loaded:
            _loaded[key] = load(model)
        model = _loaded[key]
    elif not all(hasattr(model, name) for name in ("config", "tokenizer", "backbone")):
        raise UserError(f"embed: got a {type(model).__name__}; expected a model name or path, or a ctxlm model "
                        "with .config, .tokenizer and .backbone (as ctxlm.load returns)")
    if model.tokenizer is None:
        raise UserError("embed: the model has no tokenizer (save one beside its weights)")
    return model


def _check_texts(texts: object, pool: str) -> tuple[list, bool]:
    """The texts as a list, and whether they come split into words."""
    if isinstance(texts, bytes) or not isinstance(texts, Sequence):
        raise UserError(f"embed: texts is a {type(texts).__name__}; expected a str or a list of str")
    items = list(texts)
    presplit = bool(items) and isinstance(items[0], list | tuple)
    for i, item in enumerate(items):
        if presplit and not (isinstance(item, list | tuple) and all(isinstance(w, str) for w in item)):
            raise UserError(f"embed: texts[{i}] is not a list of str; texts split into words must all be")
        if not presplit and not isinstance(item, str):
            raise UserError(f"embed: texts[{i}] is a {type(item).__name__}; expected str (or, with "
                            "pool='words', every text a list of words)")
    if presplit and pool != "words":
        raise UserError(f"embed: texts split into words need pool='words', not {pool!r}")
    return [list(item) for item in items] if presplit else items, presplit


def _check_option(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UserError(f"{name}={value!r}: expected one of {', '.join(valid)}")


def _check_max_length(max_length: int | None, max_positions: int, least: int) -> int:
    if max_length is None:
        return max_positions
    if not _is_int(max_length) or not least <= max_length <= max_positions:
        raise UserError(f"max_length={max_length!r}: expected an integer from {least} to the model's "
                        f"{max_positions} positions")
    return max_length


def _check_device(device: str | torch.device | None, backbone: nn.Module) -> torch.device:
    if device is None:
        return next(backbone.parameters()).device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device={device!r}: expected cpu, cuda, cuda:1, ...") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
