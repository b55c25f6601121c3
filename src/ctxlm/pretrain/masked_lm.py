"""BERT's and its successors' pretraining data and objective: masked LM (15 %; 80 % [MASK], 10 % random, 10 %
kept) + the sentence-pair task the config's `pair_objective` names: next-sentence prediction (BERT) or
sentence-order prediction (ALBERT); a family without one (RoBERTa, DeBERTa) reads full sentences packed across
documents (`pack_full_sentences`) and trains the masked LM alone.


Devlin et al. (2018) §3.1 and appendix A.2, data side as Google's `create_pretraining_data.py`:

- `split_documents`: raw text -> documents, each a list of sentences.
- `build_instances`: tokenised documents -> sentence pairs `[CLS] A [SEP] B [SEP]` with segment ids and a
  next-sentence label (0 = IsNext, 1 = NotNext, as BERT and Hugging Face), drawn once from a seed and stored flat
  in numpy arrays (4 bytes a token). For sentence order (Lan et al. 2019, §3.2: "the same technique as BERT when
  using two consecutive segments from the same document" as positives, "the same two consecutive segments but
  with their order swapped" as negatives) every pair is consecutive text and half of them are swapped (0 = in
  order, 1 = swapped, as ALBERT and Hugging Face).
- `pack_full_sentences`: RoBERTa's inputs instead (Liu et al. 2019 §4.2, FULL-SENTENCES): whole sentences read
  contiguously across document boundaries, a separator between documents, no pairs and no pair labels.
- `mask_tokens`: masking drawn at batch time, RoBERTa's dynamic masking (§4.1) for every family: a sequence gets
  a new mask every time it is served (every epoch), where BERT's script masked each pair once and stored it
  (`dupe_factor` copies); a batch is a pure function of (seed, batch index), so a resumed run sees exactly the
  batches it would have.

- `MaskedLMBatches`: the batches the shared `Trainer` asks for by index; `mlm_nsp_objective`: the loss.

Under torchrun every process builds and masks the global batch of N x batch_size pairs, as one process with that
batch size would, and trains on its rows. The next-sentence loss (a mean over rows) is then that of the global
batch; the masked-LM loss is a mean over each process's masked tokens, whose counts differ a little between
processes (15 % of each pair's length), so the average over processes weighs tokens slightly differently from
one process's mean: N processes train almost, not exactly, as one with N times the batch (as BERT's TPU cores).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm import distributed
from ctxlm.errors import UserError
from ctxlm.pretrain.causal_lm import run_tokenizer, starting_model, write_data_json
from ctxlm.textfiles import read_documents
from ctxlm.train import Trainer

IGNORE = -100  # the label of positions the masked-LM loss skips (PyTorch's default ignore_index)
IS_NEXT, NOT_NEXT = 0, 1
IN_ORDER, SWAPPED = 0, 1  # sentence order's labels (the same classes: 0 = B follows A)
PAIR_OBJECTIVES = ("nsp", "sop")
MIN_LENGTH = 8  # [CLS] A [SEP] B [SEP] with room for a few tokens of text
_HEADING = re.compile(r"^\s*=(\s*=)*\s[^=].*\s=\s*$")  # WikiText's " = Title = " and " = = Section = = " lines
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_SENTENCES_PER_CALL = 4096  # sentences per encode() call: bounds the memory of a batch encoder's outputs

Sentence = Sequence[int]  # token ids without specials: a list or a numpy array
Document = Sequence[Sentence]


# -- text -> documents ----------------------------------------------------------------------------------------
def split_documents(text: str) -> list[list[str]]:
    """The documents of a text, each a list of sentences; a UserError if it has none.

    A blank line ends a document, and so does a WikiText heading line (` = Title = `, ` = = Section = = `), which
    is dropped: headings are not sentences, and in WikiText, where blank lines only surround headings, this makes
    each article section a document. Every other line is cut into sentences after . ! or ? and a space, the
    units that pairs are packed from (a line without such an ending is one sentence).
    """
    documents = _split_documents(text)
    if not documents:
        raise UserError("the text has no sentences (it is empty, or only blank lines and headings)")
    return documents


def _split_documents(text: str) -> list[list[str]]:
    documents, current = [], []
    for line in text.splitlines():
        if not line.strip() or _HEADING.match(line):
            if current:
                documents.append(current)
            current = []
            continue
        current.extend(s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip())
    if current:
        documents.append(current)
    return documents


def encode_documents(documents: Sequence[Sequence[str]], encode: Callable[[list[str]], list[list[int]]]
                     ) -> list[list[np.ndarray]]:
    """Tokenise documents of sentences with `encode(texts) -> ids per text` (no special tokens), a few thousand
    sentences per call; each sentence becomes an int32 array (compact, and what `build_instances` slices)."""
    flat = [s for doc in documents for s in doc]
    encoded: list[np.ndarray] = []
    for start in range(0, len(flat), _SENTENCES_PER_CALL):
        texts = flat[start:start + _SENTENCES_PER_CALL]
        ids = encode(texts)
        if len(ids) != len(texts):
            raise ValueError(f"encode() returned {len(ids)} id lists for {len(texts)} texts")
        encoded.extend(np.asarray(x, dtype=np.int32) for x in ids)
    out, k = [], 0
    for doc in documents:
        out.append(encoded[k:k + len(doc)])
        k += len(doc)
    return out


def load_documents(path: str | Path, encode: Callable[[list[str]], list[list[int]]]) -> list[list[np.ndarray]]:
    """Every document of a file or folder (`split_documents` of each file), as lists of tokenised sentences."""
    documents = [doc for text in read_documents(path) for doc in _split_documents(text)]
    if not documents:
        raise UserError(f"{path}: no sentences, only blank lines and headings")
    return encode_documents(documents, encode)


# -- the vocabulary's special ids --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The ids BERT's data needs: its specials, the vocabulary size, and which tokens continue a word."""

    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    size: int  # the vocabulary size: random replacements are drawn from range(size) minus special_ids
    special_ids: frozenset[int]  # never chosen for masking, never drawn as a replacement
    continuation: Tensor | None = None  # (size,) bool, e.g. WordPiece "##" pieces: for whole-word masking

    @classmethod
    def of(cls, tokenizer) -> Vocabulary:
        """From a `ctxlm.tokenizers.Tokenizer`: its specials and the pieces that continue a word
        (`Tokenizer.is_continuation`: WordPiece's "##" pieces, SentencePiece's pieces without "▁", byte-level
        pieces without a leading space)."""
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        continuation = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        for token, index in vocab.items():
            continuation[index] = tokenizer.is_continuation(token)
        return cls(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id, tokenizer.vocab_size,
                   frozenset(tokenizer.special_ids), continuation)

    @cached_property
    def special_tensor(self) -> Tensor:
        return torch.tensor(sorted(self.special_ids), dtype=torch.long)

    @cached_property
    def ordinary_ids(self) -> Tensor:
        """Every id that is not special: the pool of the 10 % random replacements."""
        keep = torch.ones(self.size, dtype=torch.bool)
        keep[self.special_tensor[self.special_tensor < self.size]] = False
        return keep.nonzero().flatten()


SpecialIds = Vocabulary  # the name the design notes use


# -- documents -> sentence pairs ---------------------------------------------------------------------------------
@dataclass
class Instances:
    """Sentence pairs `[CLS] A [SEP] B [SEP]` (or, with `pairs` false, packed sequences `[CLS] ... [SEP]` of one
    segment with no next-sentence label), stored flat: row k is ids[offsets[k]:offsets[k+1]]."""

    ids: np.ndarray  # int32, every pair's ids one after the other
    offsets: np.ndarray  # int64, len = n + 1
    first_segment_length: np.ndarray  # int64, len([CLS] A [SEP]) per pair: segment 0, the rest is segment 1
    is_random_next: np.ndarray  # int64 pair labels: NSP 0 = IsNext, 1 = NotNext; SOP 0 = in order, 1 = swapped
    documents: int = 0  # documents that had tokens
    empty_documents: int = 0  # documents given with no tokens at all: skipped
    skipped_chunks: int = 0  # one-token, one-sentence chunks drawn as IsNext: no pair can be cut from them
    pairs: bool = True  # sentence pairs with next-sentence labels (BERT), else packed sequences (RoBERTa)

    def __len__(self) -> int:
        return len(self.is_random_next)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def describe(self) -> str:
        text = f"{len(self):,} {'pairs' if self.pairs else 'sequences'} from {self.documents:,} documents"
        if self.empty_documents:
            text += f" ({self.empty_documents:,} empty documents skipped)"
        return text


def build_instances(documents: Sequence[Document], vocab: Vocabulary, max_length: int, seed: int, *,
                    short_seq_prob: float = 0.1, dupe_factor: int = 1, pair_objective: str = "nsp") -> Instances:
    """Pack tokenised documents (lists of sentences of token ids) into NSP pairs as Google's script does.

    For each document, sentences are gathered into a chunk until it holds `target` tokens, `target` being
    `max_length - 3` or, with probability `short_seq_prob`, uniform in [2, max_length - 3] (drawn per chunk; Google
    draws it once per document). The chunk is cut into A and B at a random sentence boundary; with probability
    1/2 B is replaced by consecutive sentences, from a random sentence on, of a random *other* document (NotNext)
    and the chunk's sentences after the cut go back to be used again. The pair is then truncated to fit, one
    token at a time from the longer side, its front or back at random.

    One change from Google: a chunk of one sentence (a one-sentence document, or a sentence longer than the target)
    that draws IsNext is cut inside the sentence, so both halves are consecutive text; Google makes every such
    chunk NotNext, which skews the labels on corpora of long sentences. A one-token such chunk cannot be cut and
    is skipped (counted in `skipped_chunks`). Documents with no tokens are skipped and counted.

    `pair_objective` "sop" (ALBERT's sentence order) makes every pair of the chunk's own two parts, A then B, and
    swaps them with probability 1/2 before truncation, as ALBERT's script does (its one-sentence chunks are cut
    inside the sentence here too, where ALBERT's script falls back to a random other document); a single document
    is then enough.

    `dupe_factor` passes are made over the documents, each drawing different chunks, cuts and partners; all
    pairs are then shuffled. Everything comes from `random.Random(seed)`: the same inputs give the same pairs.
    """
    if pair_objective not in PAIR_OBJECTIVES:
        raise ValueError(f"pair_objective {pair_objective!r}: expected one of {PAIR_OBJECTIVES}")
    if max_length < MIN_LENGTH:
        raise UserError(f"max sequence length {max_length} is too short for [CLS] A [SEP] B [SEP] "
                        f"(need >= {MIN_LENGTH})")
    if dupe_factor < 1:
        raise UserError(f"dupe factor must be at least 1, got {dupe_factor}")
    if not 0 <= short_seq_prob <= 1:
        raise UserError(f"short sequence probability must be in [0, 1], got {short_seq_prob}")
    docs, empty = _non_empty(documents, vocab)
    if len(docs) < (2 if pair_objective == "nsp" else 1):
        raise UserError(f"next-sentence prediction needs at least 2 non-empty documents, got {len(docs)}"
                        + (f" ({empty} more had no tokens)" if empty else ""))

    rng = random.Random(seed)
    budget = max_length - 3
    cls, sep = np.array([vocab.cls_id], np.int32), np.array([vocab.sep_id], np.int32)
    rows: list[np.ndarray] = []
    firsts: list[int] = []
    labels: list[int] = []
    skipped = 0
    for _ in range(dupe_factor):
        for index in range(len(docs)):
            pairs = (_document_pairs if pair_objective == "nsp" else _ordered_pairs)(docs, index, budget,
                                                                                    short_seq_prob, rng)
            for a, b, label in pairs:
                if b is None:
                    skipped += 1
                    continue
                a, b = truncate_pair(a, b, budget, rng)
                rows.append(np.concatenate([cls, a, sep, b, sep]))
                firsts.append(len(a) + 2)
                labels.append(label)
    if not rows:
        raise UserError("no sentence pairs could be made: every document is a single one-token sentence")
    order = list(range(len(rows)))
    rng.shuffle(order)
    lengths = np.array([len(rows[k]) for k in order], dtype=np.int64)
    return Instances(
        ids=np.concatenate([rows[k] for k in order]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        first_segment_length=np.array([firsts[k] for k in order], dtype=np.int64),
        is_random_next=np.array([labels[k] for k in order], dtype=np.int64),
        documents=len(docs), empty_documents=empty, skipped_chunks=skipped,
    )


def _non_empty(documents: Sequence[Document], vocab: Vocabulary) -> tuple[list[list[np.ndarray]], int]:
    """The documents that have tokens, each without its empty sentences, and how many had none; an id outside
    the vocabulary is a ValueError."""
    docs = [[np.asarray(s, dtype=np.int32) for s in doc] for doc in documents]
    docs = [[s for s in doc if len(s)] for doc in docs]
    empty = sum(not doc for doc in docs)
    docs = [doc for doc in docs if doc]
    for doc in docs:
        ids = np.concatenate(doc)
        if ids.min() < 0 or ids.max() >= vocab.size:
            bad = ids.max() if ids.max() >= vocab.size else ids.min()
            raise ValueError(f"token id {bad} is outside the vocabulary of {vocab.size}")
    return docs, empty


# -- documents -> full sentences (RoBERTa, DeBERTa) ---------------------------------------------------------------
def pack_full_sentences(documents: Sequence[Document], vocab: Vocabulary, max_length: int, seed: int) -> Instances:
    """RoBERTa's FULL-SENTENCES inputs (Liu et al. 2019 §4.2): `[CLS] sentences [SEP]` ("<s> ... </s>"), each filled
    with whole sentences read contiguously, across document boundaries, up to `max_length` tokens. Where a document
    ends inside an input, one extra separator goes between it and the next document's first sentence; an input
    never starts with one. A sentence longer than an input is cut into input-sized pieces, each read as a sentence.

    Every token is segment 0 and there is no next-sentence label. Inputs are shuffled with `random.Random(seed)`
    (the batches shuffle again every epoch); nothing is duplicated, since masking is drawn anew at every epoch.
    """
    if max_length < 3:
        raise UserError(f"max sequence length {max_length} is too short for [CLS] text [SEP] (need >= 3)")
    docs, empty = _non_empty(documents, vocab)
    if not docs:
        raise UserError(f"no tokens to pack: all {empty} documents are empty")
    budget = max_length - 2
    cls, sep = np.array([vocab.cls_id], np.int32), np.array([vocab.sep_id], np.int32)
    rows: list[np.ndarray] = []
    current: list[np.ndarray] = []
    length = 0
    for doc in docs:
        boundary = bool(current)  # this document starts inside an input: a separator goes first
        for sentence in doc:
            for start in range(0, len(sentence), budget):
                piece = sentence[start:start + budget]
                if current and length + boundary + len(piece) > budget:  # full: the sentence opens the next input
                    rows.append(np.concatenate([cls, *current, sep]))
                    current, length, boundary = [], 0, False
                if boundary:
                    current.append(sep)
                    length, boundary = length + 1, False
                current.append(piece)
                length += len(piece)
    if current:
        rows.append(np.concatenate([cls, *current, sep]))
    random.Random(seed).shuffle(rows)
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    return Instances(ids=np.concatenate(rows), offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     first_segment_length=lengths, is_random_next=np.zeros(len(rows), dtype=np.int64),
                     documents=len(docs), empty_documents=empty, pairs=False)


def _document_pairs(docs: list[list[np.ndarray]], index: int, budget: int, short_seq_prob: float,
                    rng: random.Random) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """The (A, B, label) pairs of one document, untruncated; B is None for a chunk that gives no pair."""
    document = docs[index]

    def draw_target() -> int:
        return rng.randint(2, budget) if rng.random() < short_seq_prob else budget

    target = draw_target()
    chunk: list[np.ndarray] = []
    length, i = 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            random_next = rng.random() < 0.5
            if len(chunk) == 1 and not random_next:  # one sentence: A and B are its two halves
                tokens = chunk[0]
                if len(tokens) < 2:
                    yield tokens, None, IS_NEXT
                else:
                    cut = rng.randint(1, len(tokens) - 1)
                    yield tokens[:cut], tokens[cut:], IS_NEXT
            else:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) > 1 else 1
                a = np.concatenate(chunk[:a_end])
                if random_next:
                    b = random_text(docs, index, max(1, target - len(a)), rng)
                    i -= len(chunk) - a_end  # the sentences after the cut are used again ("put back")
                    yield a, b, NOT_NEXT
                else:
                    yield a, np.concatenate(chunk[a_end:]), IS_NEXT
            chunk, length = [], 0
            target = draw_target()
        i += 1


def _ordered_pairs(docs: list[list[np.ndarray]], index: int, budget: int, short_seq_prob: float,
                   rng: random.Random) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """Sentence order's (A, B, label) pairs of one document, untruncated: chunks gathered as for NSP, each cut in
    two consecutive parts at a random sentence boundary (inside the sentence for a one-sentence chunk), the two
    parts swapped with probability 1/2. B is None for a one-token chunk, which cannot be cut."""
    document = docs[index]

    def draw_target() -> int:
        return rng.randint(2, budget) if rng.random() < short_seq_prob else budget

    target = draw_target()
    chunk: list[np.ndarray] = []
    length = 0
    for i, sentence in enumerate(document):
        chunk.append(sentence)
        length += len(sentence)
        if i == len(document) - 1 or length >= target:
            if len(chunk) == 1:
                tokens = chunk[0]
                cut = rng.randint(1, len(tokens) - 1) if len(tokens) >= 2 else None
                a, b = (tokens, None) if cut is None else (tokens[:cut], tokens[cut:])
            else:
                a_end = rng.randint(1, len(chunk) - 1)
                a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
            if b is None:
                yield a, None, IN_ORDER
            elif rng.random() < 0.5:
                yield b, a, SWAPPED
            else:
                yield a, b, IN_ORDER
            chunk, length = [], 0
            target = draw_target()


def random_text(documents: Sequence[Sequence[np.ndarray]], exclude: int, length: int,
                rng: random.Random) -> np.ndarray:
    """At least `length` tokens (or to the document's end) of consecutive sentences, from a random sentence of a
    random document other than `exclude`."""
    other = rng.randrange(len(documents) - 1)
    document = documents[other + (other >= exclude)]
    start = rng.randrange(len(document))
    out, total = [], 0
    for sentence in document[start:]:
        out.append(sentence)
        total += len(sentence)
        if total >= length:
            break
    return np.concatenate(out)


def truncate_pair(a: Sequence[int], b: Sequence[int], budget: int,
                  rng: random.Random) -> tuple[Sequence[int], Sequence[int]]:
    """Remove tokens from the longer of A and B (B on a tie), from its front or back at random, until the pair
    fits `budget`: Google's `truncate_seq_pair`, with the same random draws, as slices instead of deletions."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    while (a_hi - a_lo) + (b_hi - b_lo) > budget:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a[a_lo:a_hi], b[b_lo:b_hi]


# -- masking ----------------------------------------------------------------------------------------------------
def mask_tokens(ids: Tensor, candidates: Tensor, vocab: Vocabulary, generator: torch.Generator, *,
                mask_prob: float = 0.15, max_predictions: int | None = None,
                whole_word: bool = False) -> tuple[Tensor, Tensor]:
    """BERT's masking of a (batch, time) id tensor: returns (inputs, labels), labels = IGNORE where not chosen.

    Per row, `round(mask_prob * n)` of its n candidate positions (at least 1, at most `max_predictions` and n) are
    chosen uniformly at random. With `whole_word`, whole words are chosen instead, a word being a candidate token
    with the continuation tokens that follow it (`vocab.continuation`; a continuation after a non-candidate such
    as [SEP] starts a word of its own), all its pieces masked together. As in Google's script, words are taken in
    random order while they fit the row's token count (a word that would overshoot is passed over), so that about
    15 % of tokens are still chosen; if no word fits, the first word in the order is taken alone.
    Of the chosen tokens, each independently: 80 % become [MASK], 10 % a random non-special id, 10 % stay.
    """
    candidates = candidates.bool()
    counts = candidates.sum(1)
    n_target = (counts.double() * mask_prob).round().long().clamp(min=1).minimum(counts)
    if max_predictions is not None:
        n_target = n_target.clamp(max=max_predictions)
    scores = torch.rand(ids.shape, generator=generator)
    if whole_word:
        chosen = _choose_words(ids, candidates, vocab, scores, n_target)
    else:
        rank = scores.masked_fill(~candidates, 2.0).argsort(1).argsort(1)  # 0 = the lowest score in the row
        chosen = (rank < n_target[:, None]) & candidates
    labels = torch.where(chosen, ids, IGNORE)
    action = torch.rand(ids.shape, generator=generator)
    ordinary = vocab.ordinary_ids
    draws = torch.randint(len(ordinary), (ids.numel(),), generator=generator)
    random_ids = ordinary.index_select(0, draws).view(ids.shape)  # (much faster than ordinary[draws] on CPU)
    inputs = torch.where(chosen & (action < 0.8), vocab.mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


def word_starts(ids: Tensor, candidates: Tensor, continuation: Tensor) -> Tensor:
    """(batch, time) bool: where a word starts, among the candidates (a word = a start and its continuations)."""
    follows_candidate = F.pad(candidates[:, :-1], (1, 0), value=False)
    continues = continuation.index_select(0, ids.flatten()).view(ids.shape)  # = continuation[ids], faster on CPU
    return candidates & ~(continues & follows_candidate)


def _choose_words(ids: Tensor, candidates: Tensor, vocab: Vocabulary, scores: Tensor, n_target: Tensor) -> Tensor:
    if vocab.continuation is None:
        raise ValueError("whole-word masking needs vocab.continuation (which tokens continue a word)")
    starts = word_starts(ids, candidates, vocab.continuation)
    word = torch.where(candidates, starts.long().cumsum(1), 0)  # word number per position, from 1; 0 = none
    rows, width = ids.shape
    length = torch.zeros(rows, width + 1, dtype=torch.long).scatter_add_(1, word, candidates.long())[:, 1:]
    start_score = torch.full((rows, width + 1), 2.0).scatter_(1, torch.where(starts, word, 0), scores)[:, 1:]
    order = start_score.argsort(1)  # each row's words in a random order (the unused slots, score 2, last)
    taken_rows, taken_words = [], []  # Google's greedy pass, in Python: a few dozen words a row
    for row, (n_words, target, lengths, ranked) in enumerate(zip(
            word.amax(1).tolist(), n_target.tolist(), length.tolist(), order.tolist(), strict=True)):
        total = 0
        for w in ranked[:n_words]:
            if total >= target:
                break
            if total + lengths[w] <= target:
                taken_rows.append(row)
                taken_words.append(w + 1)
                total += lengths[w]
        if n_words and not total:
            taken_rows.append(row)
            taken_words.append(ranked[0] + 1)
    taken = torch.zeros(rows, width + 1, dtype=torch.bool)
    taken[taken_rows, taken_words] = True
    return taken.gather(1, word) & candidates


def seeded(*numbers: int) -> torch.Generator:
    """A generator seeded from several integers, mixed (unlike Python's hash, the same in every process)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(numbers)).generate_state(1)[0]))


# -- batches ----------------------------------------------------------------------------------------------------
class MaskedLMBatches:
    """Batches of masked pairs: dict(ids, mask, segments, mlm_labels, nsp_labels), all int64 but `mask` (bool);
    of packed sequences (`Instances.pairs` false): dict(ids, mask, mlm_labels).

    Rows are padded to the longest in the batch (`pad_to=None`), not to the maximum length: a tenth of the pairs
    are short by design and the chunks at document ends are too, so fixed padding would spend compute on padding;
    give `pad_to` (e.g. max_length) for static shapes (CUDA graphs, compiled models). `batch(i)` is a pure function
    of (seed, i): the epoch's order is a permutation drawn from (seed, epoch) and the masking from (seed, i).
    """

    def __init__(self, instances: Instances, vocab: Vocabulary, batch_size: int, seed: int, *,
                 mask_prob: float = 0.15, max_predictions: int | None = None, whole_word: bool = False,
                 pad_to: int | None = None) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if len(instances) < batch_size:
            raise UserError(f"{len(instances)} training pairs are fewer than one batch of {batch_size}")
        if not 0 < mask_prob < 1:
            raise UserError(f"mask probability must be in (0, 1), got {mask_prob}")
        if whole_word and vocab.continuation is None:
            raise UserError("whole-word masking needs to know which tokens continue a word (vocab.continuation)")
        longest = int(instances.lengths().max())
        if pad_to is not None and pad_to < longest:
            raise UserError(f"pad_to={pad_to} is shorter than the longest pair ({longest} tokens)")
        self.instances, self.vocab, self.batch_size, self.seed, self.pad_to = instances, vocab, batch_size, seed, pad_to
        self.options = dict(mask_prob=mask_prob, max_predictions=max_predictions, whole_word=whole_word)
        self._order: tuple[int, Tensor] | None = None  # (epoch, permutation), the last one drawn

    def __len__(self) -> int:
        """Batches per epoch; the pairs that do not fill a last batch wait for another epoch's shuffle."""
        return len(self.instances) // self.batch_size

    def batch(self, step: int) -> dict[str, Tensor]:
        """The step-th batch, counted from 0 across epochs."""
        if step < 0:
            raise ValueError(f"batch index must be >= 0, got {step}")
        epoch, within = divmod(step, len(self))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.randperm(len(self.instances), generator=seeded(self.seed, 0, epoch)))
        rows = self._order[1][within * self.batch_size:(within + 1) * self.batch_size].tolist()
        return self.collate(rows, seeded(self.seed, 1, step))

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every pair in stored (already shuffled) order, masked from a fixed seed: the same validation batches at
        every evaluation. The last batch may be smaller."""
        count = -(-len(self.instances) // self.batch_size)
        for b in range(count if max_batches is None else min(count, max_batches)):
            rows = list(range(b * self.batch_size, min(len(self.instances), (b + 1) * self.batch_size)))
            yield self.collate(rows, seeded(self.seed, 2, b))

    def collate(self, rows: list[int], generator: torch.Generator) -> dict[str, Tensor]:
        inst = self.instances
        starts, ends = inst.offsets[rows], inst.offsets[np.asarray(rows) + 1]
        lengths = torch.from_numpy(ends - starts)
        width = self.pad_to or int(lengths.max())
        ids = torch.full((len(rows), width), self.vocab.pad_id, dtype=torch.long)
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            ids[i, :e - s] = torch.from_numpy(inst.ids[s:e].astype(np.int64))
        position = torch.arange(width)[None]
        mask = position < lengths[:, None]
        segments = ((position >= torch.from_numpy(inst.first_segment_length[rows])[:, None]) & mask).long()
        candidates = mask & ~torch.isin(ids, self.vocab.special_tensor)
        inputs, labels = mask_tokens(ids, candidates, self.vocab, generator, **self.options)
        if not inst.pairs:  # one segment, no next-sentence label
            return {"ids": inputs, "mask": mask, "mlm_labels": labels}
        return {"ids": inputs, "mask": mask, "segments": segments, "mlm_labels": labels,
                "nsp_labels": torch.from_numpy(inst.is_random_next[rows])}


# -- objective --------------------------------------------------------------------------------------------------
def mlm_nsp_objective(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked-LM cross-entropy over the chosen positions + next-sentence cross-entropy, with both accuracies.

    The model is called as `model(ids, mask=, segments=, masked_positions=)` and returns `.mlm_logits` for the
    chosen positions only, (n_chosen, vocab), which skips 85 % of the vocabulary projection, and `.nsp_logits`
    (batch, 2). A model without a next-sentence head (`.nsp_logits` None: a checkpoint continued without one)
    trains the masked LM alone. For ALBERT the pair head and labels are sentence order's; the metrics keep the
    names "nsp_loss" and "nsp_accuracy" (the sentence-pair task's, whichever it is). Metrics are detached scalar
    tensors: nothing here waits for the device.
    """
    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in batch.items()}
    chosen = batch["mlm_labels"] != IGNORE
    out = model(batch["ids"], mask=batch["mask"], segments=batch.get("segments"), masked_positions=chosen)
    targets = batch["mlm_labels"][chosen]
    mlm_loss = F.cross_entropy(out.mlm_logits.float(), targets)
    with torch.no_grad():
        metrics = {"mlm_loss": mlm_loss.detach(),
                   "mlm_accuracy": (out.mlm_logits.argmax(-1) == targets).float().mean()}
    if out.nsp_logits is None:
        return mlm_loss, metrics
    if "nsp_labels" not in batch:
        raise UserError("this model has a next-sentence head, but its batches are packed sequences without "
                        "next-sentence labels")
    nsp_loss = F.cross_entropy(out.nsp_logits.float(), batch["nsp_labels"])
    with torch.no_grad():
        metrics |= {"nsp_loss": nsp_loss.detach(),
                    "nsp_accuracy": (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()}
    return mlm_loss + nsp_loss, metrics


# -- the job ----------------------------------------------------------------------------------------------------
def pretrain_masked_lm(data, run_dir: str | Path, model_config, train, *, max_length: int = 128,
                       batch_size: int = 32, tokenizer=None, resume: bool = False, whole_word: bool = False,
                       dupe_factor: int = 1, eval_batches: int = 50, init: nn.Module | None = None,
                       casing: dict[str, bool | None] | None = None) -> nn.Module:
    """Pretrain a BERT by masked LM + next-sentence prediction (an ALBERT: + sentence order, as its config's
    `pair_objective` says), or a family without a pair task (RoBERTa, DeBERTa) by masked LM on packed full
    sentences; the model ends in run_dir/checkpoint.

    `data` is a `causal_lm.LMData` (train path, optional valid path); without a validation path the last 5 % of
    documents are held out. `init`: continue this model (a checkpoint's, with its tokenizer and a masked-LM
    head; `model_config` is its config) instead of a freshly initialised one; without a next-sentence head
    (`nsp_head` false) it trains the masked LM alone. `casing`: "lowercase" and "strip_accents" of a tokenizer
    trained here (`causal_lm.run_tokenizer`).
    """
    run_dir = Path(run_dir)
    if max_length > model_config.max_positions:
        raise UserError(f"max length {max_length} exceeds the model's {model_config.max_positions} positions")
    tokenizer = init.tokenizer if init is not None else run_tokenizer(data, run_dir, model_config, given=tokenizer,
                                                                       resume=resume, **(casing or {}))
    vocab = Vocabulary.of(tokenizer)

    documents = load_documents(data.train, tokenizer.encode_batch)
    if data.valid is not None:
        valid_documents = load_documents(data.valid, tokenizer.encode_batch)
    else:
        held_out = max(2, len(documents) // 20)
        documents, valid_documents = documents[:-held_out], documents[-held_out:]
    pairing = model_config.pair_objective
    if pairing is not None:
        train_pairs = build_instances(documents, vocab, max_length, seed=train.seed, dupe_factor=dupe_factor,
                                      pair_objective=pairing)
        valid_pairs = build_instances(valid_documents, vocab, max_length, seed=train.seed + 1,
                                      pair_objective=pairing)
    else:  # full sentences: no pairs to duplicate, and the masks differ every epoch anyway
        train_pairs = pack_full_sentences(documents, vocab, max_length, seed=train.seed)
        valid_pairs = pack_full_sentences(valid_documents, vocab, max_length, seed=train.seed + 1)
    # Google's 20 predictions for 128 tokens; it binds only with whole words (15 % of 125 tokens is 19).
    options = dict(whole_word=whole_word, max_predictions=max(1, math.ceil(0.15 * max_length)))
    rows = batch_size * distributed.world_size()  # the global batch, of which each process takes its rows
    train_batches = MaskedLMBatches(train_pairs, vocab, rows, seed=train.seed, **options)
    valid_batches = MaskedLMBatches(valid_pairs, vocab, min(rows, len(valid_pairs)), seed=train.seed, **options)
    print(f"corpus: {train_pairs.describe()} ({len(train_batches):,} batches of {rows} per epoch); "
          f"validation: {valid_pairs.describe()}")

    model = starting_model(model_config, tokenizer, train.seed, init)
    pair_task = {"nsp": "next sentence", "sop": "sentence order", None: ""}[pairing]
    objectives = ("masked LM on full sentences" if pairing is None else f"masked LM + {pair_task}"
                  if model_config.nsp_head else f"masked LM (no {pair_task.replace(' ', '-')} head)")
    print(f"model: {model_config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{objectives}")
    write_data_json(run_dir, data, max_length=max_length, batch_size=batch_size)
    # A pooler without the next-sentence head gets no gradient: DDP must be told.
    trainer = Trainer(model, mlm_nsp_objective, train_batches.batch, train, run_dir,
                      eval_batches=lambda: valid_batches.eval_batches(eval_batches),
                      tokens_per_batch=int(train_pairs.lengths().mean() * batch_size),
                      find_unused_parameters=getattr(model_config, "pooler", False) and not model_config.nsp_head)
    trainer.fit(resume=resume)
    return model
