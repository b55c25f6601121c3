"""Examples → token sequences → padded batches, for any backbone.

The tokenizer builds each model input by its role (`TokenizerProtocol`): a text for classification, a pair, one
(context, answer) pair per choice, a tagged sentence labelled on each word's first token. How an input looks is
the tokenizer family's business (BERT `[CLS] a [SEP] b [SEP]` with segment ids, GPT's §3.3 `<|start|> a
<|delimiter|> b <|extract|>`, ...). One thing is the model's: a causal model (a decoder) reads the first text of a
pair before the second, so for a task whose texts have no order (similarity, paraphrase: `TaskSpec.order_matters`
False) it reads both orderings, (a, b) and (b, a), in two slots whose features the head adds (GPT §3.3).

A single text longer than `max_length` is cut (`long_text` "truncate", the default), or cut to its head and tail,
or read whole as several sequences, its windows, which fill its one slot together (`ctxlm.nn.long_text`).

Every example is tokenised once, up front, on the tokenizer's Rust threads. A batch flattens all sequences of
its examples and records which example and slot each came from (see `heads.extract_features`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ctxlm.nn.long_text import TRUNCATE, Frame, LongText, windows
from ctxlm.tokenizers import Encoding, TokenizerProtocol
from ctxlm.transfer.data import Example, TaskSpec


@dataclass(frozen=True)
class Encoded:
    """One example's model input: its sequences, the slot each fills, and for tagging each word's position."""

    sequences: list[list[int]]
    slots: list[int]
    segments: list[list[int]] | None = None
    word_positions: list[int] | None = None


def encode_examples(tokenizer: TokenizerProtocol, spec: TaskSpec, examples: Sequence[Example], *, decoder: bool,
                    max_length: int, long_text: LongText = TRUNCATE) -> list[Encoded]:
    """The model inputs of `examples`, at most `max_length` tokens each. `decoder`: the model is causal
    (`config.causal`), which decides whether an unordered pair is read both ways. `long_text`: how a single text
    longer than that is read (other kinds are cut)."""
    if not examples:
        return []
    if spec.kind == "tag":
        return _encode_tagged(tokenizer, examples, max_length)
    if spec.one_text:
        texts = [e.texts[0] for e in examples]
        if long_text.how == "truncate":
            return [_encoded([enc]) for enc in tokenizer.encode_text_batch(texts, max_length)]
        frame = Frame.of(tokenizer)
        return [_windowed(enc, windows(len(enc), max_length, frame, long_text))
                for enc in tokenizer.encode_text_batch(texts)]
    if spec.kind == "pair":
        firsts, seconds = [e.texts[0] for e in examples], [e.texts[1] for e in examples]
        if decoder and not spec.order_matters:  # two slots whose features the head adds: the order cannot matter
            encodings = tokenizer.encode_pair_batch(firsts + seconds, seconds + firsts, max_length)
            n = len(examples)
            return [_encoded([ab, ba]) for ab, ba in zip(encodings[:n], encodings[n:], strict=True)]
        return [_encoded([enc]) for enc in tokenizer.encode_pair_batch(firsts, seconds, max_length)]
    contexts = [e.texts[0] for e in examples for _ in e.texts[1:]]
    answers = [answer for e in examples for answer in e.texts[1:]]
    flat = iter(tokenizer.encode_pair_batch(contexts, answers, max_length))
    return [_encoded([next(flat) for _ in e.texts[1:]]) for e in examples]


def _encoded(encodings: list[Encoding]) -> Encoded:
    """One example read as `encodings`, one per slot."""
    segments = None if encodings[0].segments is None else [enc.segments for enc in encodings]
    return Encoded([enc.ids for enc in encodings], list(range(len(encodings))), segments=segments)


def _windowed(encoding: Encoding, pieces: list[list[int]]) -> Encoded:
    """One text read as the sequences `pieces` (positions of its whole encoding): all in slot 0, where the head
    pools a long text's windows into one vector."""
    segments = None if encoding.segments is None else [[encoding.segments[i] for i in p] for p in pieces]
    return Encoded([[encoding.ids[i] for i in p] for p in pieces], [0] * len(pieces), segments=segments)


def _encode_tagged(tokenizer: TokenizerProtocol, examples: Sequence[Example], max_length: int) -> list[Encoded]:
    encodings = tokenizer.encode_words_batch([list(e.texts) for e in examples], max_length)
    out = [Encoded([enc.ids], [0], segments=None if enc.segments is None else [enc.segments],
                   word_positions=enc.word_starts()) for enc in encodings]
    cut = sum(len(enc.word_positions) < len(e.texts) for enc, e in zip(out, examples, strict=True))
    if cut:
        warnings.warn(f"{cut} of {len(examples)} sentences are longer than {max_length} tokens: their last words "
                      "are not tagged (predicted as the first tag)", stacklevel=3)
    return out


def collate(encoded: Sequence[Encoded], labels: Sequence | None, spec: TaskSpec, pad_id: int) -> dict[str, Tensor]:
    """Right-padded tensors for a list of encoded examples (see `heads.extract_features` for the keys)."""
    sequences = [s for enc in encoded for s in enc.sequences]
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = True
    batch = {"ids": ids, "mask": mask}
    if encoded[0].segments is not None:
        segments = torch.zeros_like(ids)
        for row, s in enumerate(seg for enc in encoded for seg in enc.segments):
            segments[row, :len(s)] = torch.tensor(s)
        batch["segments"] = segments
    if spec.kind == "tag":
        words = max(1, max(len(enc.word_positions) for enc in encoded))
        positions = torch.zeros((len(encoded), words), dtype=torch.long)
        slot_mask = torch.zeros((len(encoded), words), dtype=torch.bool)
        for row, enc in enumerate(encoded):
            positions[row, :len(enc.word_positions)] = torch.tensor(enc.word_positions, dtype=torch.long)
            slot_mask[row, :len(enc.word_positions)] = True
        batch |= {"word_positions": positions, "slot_mask": slot_mask}
    else:
        slots = max(max(enc.slots) for enc in encoded) + 1
        batch["seq_example"] = torch.tensor([i for i, enc in enumerate(encoded) for _ in enc.slots])
        batch["seq_slot"] = torch.tensor([slot for enc in encoded for slot in enc.slots])
        slot_mask = torch.zeros((len(encoded), slots), dtype=torch.bool)
        slot_mask[batch["seq_example"], batch["seq_slot"]] = True
        batch["slot_mask"] = slot_mask
    if labels is not None:
        batch["labels"] = label_tensor(labels, spec, batch["slot_mask"].shape[1])
    return batch


def label_tensor(labels: Sequence, spec: TaskSpec, words: int) -> Tensor:
    """Class / choice indices (long), scores (float), per-word tags padded with -100 (not scored), or for
    multi-label a 0/1 row per example (float, as the binary cross-entropy takes it)."""
    if spec.kind == "multi":
        out = torch.zeros((len(labels), len(spec.labels)))
        for row, indices in enumerate(labels):
            out[row, list(indices)] = 1.0
        return out
    if spec.regression:
        return torch.tensor(labels, dtype=torch.float)
    if spec.kind != "tag":
        return torch.tensor(labels, dtype=torch.long)
    out = torch.full((len(labels), words), -100, dtype=torch.long)
    for row, tags in enumerate(labels):
        tags = list(tags)[:words]
        out[row, :len(tags)] = torch.tensor(tags, dtype=torch.long)
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                     pool: int = 50) -> list[list[int]]:
    """One epoch's batches of example indices: a random permutation cut into pools of `pool` batches, each pool
    sorted by length and cut into batches, the batches shuffled. Batches then hold examples of similar lengths
    (little padding: about half the compute of random batches on SQuAD windows) while the order stays random;
    `pool=1` gives plain random batches, consecutive slices of the permutation. A pure function of the generator's
    seed."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if pool == 1:
        return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    size = batch_size * pool
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lengths.__getitem__)
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]


def batches_per_epoch(n: int, batch_size: int, pool: int = 50) -> int:
    """How many batches `bucketed_batches` makes of n examples."""
    size = batch_size * pool
    return sum(math.ceil(min(size, n - start) / batch_size) for start in range(0, n, size))


class TaskBatches:
    """Batches of a task split. Training batch i is a pure function of (seed, i): every epoch is a fresh
    permutation, so a resumed run sees exactly the batches of an uninterrupted one. Evaluation batches go in order
    of length, which wastes the least padding.

    `group_by_length`: training batches of similar lengths (`bucketed_batches`), less padding for texts of mixed
    lengths. Off by default (as in transformers' Trainer): where length goes with the label (a class whose texts
    are longer, a word that tokenises to more pieces) the batches stop being a mix of classes, which slows
    learning on small data sets; the test suite's synthetic tasks show it."""

    def __init__(self, encoded: Sequence[Encoded], labels: Sequence | None, spec: TaskSpec, pad_id: int,
                 batch_size: int, seed: int = 0, group_by_length: bool = False, pool: int = 50) -> None:
        if not encoded:
            raise ValueError("no examples to batch")
        self.encoded, self.labels, self.spec, self.pad_id = list(encoded), labels, spec, pad_id
        self.batch_size, self.seed, self.pool = batch_size, seed, pool if group_by_length else 1
        self.per_epoch = batches_per_epoch(len(self.encoded), batch_size, self.pool)
        self._epoch, self._batches = -1, []

    def _length(self, i: int) -> int:
        return sum(map(len, self.encoded[i].sequences))

    def _batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        batch = collate([self.encoded[i] for i in indices], labels, self.spec, self.pad_id)
        batch["index"] = torch.tensor(list(indices))
        return batch

    def train_batch(self, i: int) -> dict[str, Tensor]:
        epoch, k = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            lengths = [self._length(j) for j in range(len(self.encoded))]
            self._batches, self._epoch = bucketed_batches(lengths, self.batch_size, generator, self.pool), epoch
        return self._batch(self._batches[k])

    def eval_batches(self) -> Iterator[dict[str, Tensor]]:
        order = sorted(range(len(self.encoded)), key=self._length)
        for start in range(0, len(order), self.batch_size):
            yield self._batch(order[start:start + self.batch_size])
