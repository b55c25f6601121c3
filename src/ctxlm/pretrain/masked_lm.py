"""BERT pretraining data and objective: masked LM (15 %; 80 % [MASK], 10 % random, 10 % kept) + next sentence.

Instances follow Google's `create_pretraining_data.py`: each document's sentences are packed into chunks of up to
`max_length - 3` tokens (10 % of chunks shorter, so the model also sees short inputs); a chunk is cut into A and
B at a random sentence boundary; half of the time B is replaced by text from another document (label 1,
NotNext), and the sentences it displaced go back to the pool. Masking is drawn per batch from (seed, batch index),
so every epoch masks differently and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.errors import UserError
from ctxlm.pretrain.corpus import read_documents

IGNORE = -100
_HEADING = re.compile(r"^\s*=(\s*=)*\s[^=].*\s=\s*$")  # WikiText's " = Title = " lines
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_documents(text: str) -> list[list[str]]:
    """Documents (lists of sentences) of a text: blank lines separate documents, and a WikiText heading starts
    a new one (its articles are separated by headings, not blank lines). Lines are split into sentences at
    . ! ? followed by a space, the unit NSP pairs are cut at."""
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


@dataclass(frozen=True)
class Vocabulary:
    """The ids masking needs: BERT's specials, the vocabulary size, and which tokens continue a word."""

    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    size: int
    special_ids: frozenset[int]
    continuation: Tensor | None = None  # (size,) bool: WordPiece "##" pieces, for whole-word masking

    @classmethod
    def of(cls, tokenizer) -> Vocabulary:
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        continuation = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        for token, index in vocab.items():
            continuation[index] = token.startswith("##")
        return cls(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id, tokenizer.vocab_size,
                   frozenset(tokenizer.special_ids), continuation)


@dataclass
class Instances:
    """Sentence pairs `[CLS] A [SEP] B [SEP]`, stored flat: pair k is ids[offsets[k]:offsets[k+1]]."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len = n + 1
    first_segment_length: np.ndarray  # len([CLS] A [SEP]) per pair
    is_random_next: np.ndarray  # int64: 0 = B follows A, 1 = B from another document

    def __len__(self) -> int:
        return len(self.is_random_next)


def build_instances(documents: Sequence[Sequence[list[int]]], vocab: Vocabulary, max_length: int, seed: int, *,
                    short_seq_prob: float = 0.1) -> Instances:
    """Pack tokenised documents (lists of sentences of token ids) into NSP pairs, as Google's script does,
    except that a chunk of one sentence is cut inside that sentence for an IsNext pair, so that NotNext does not
    dominate corpora of long sentences."""
    if max_length < 8:
        raise UserError(f"max sequence length {max_length} is too short for [CLS] A [SEP] B [SEP] (need >= 8)")
    documents = [[s for s in doc if s] for doc in documents]
    documents = [doc for doc in documents if doc]
    if len(documents) < 2:
        raise UserError(f"next-sentence prediction needs at least 2 non-empty documents, got {len(documents)}")
    rng = random.Random(seed)
    budget = max_length - 3
    pairs: list[tuple[list[int], list[int], int]] = []
    for index, document in enumerate(documents):
        target = rng.randint(2, budget) if rng.random() < short_seq_prob else budget
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                random_next = rng.random() < 0.5
                if len(chunk) == 1 and not random_next:  # one sentence: A and B are its two parts
                    tokens = chunk[0]
                    if len(tokens) >= 2:
                        cut = rng.randint(1, len(tokens) - 1)
                        pairs.append((*truncate_pair(tokens[:cut], tokens[cut:], budget, rng), 0))
                else:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) > 1 else 1
                    a = [t for s in chunk[:a_end] for t in s]
                    if random_next:
                        b = random_text(documents, index, max(1, target - len(a)), rng)
                        i -= len(chunk) - a_end  # the displaced sentences are used again
                    else:
                        b = [t for s in chunk[a_end:] for t in s]
                    pairs.append((*truncate_pair(a, b, budget, rng), int(random_next)))
                chunk, length = [], 0
                target = rng.randint(2, budget) if rng.random() < short_seq_prob else budget
            i += 1
    rng.shuffle(pairs)
    rows = [[vocab.cls_id, *a, vocab.sep_id, *b, vocab.sep_id] for a, b, _ in pairs]
    return Instances(
        ids=np.fromiter((t for row in rows for t in row), dtype=np.int32),
        offsets=np.cumsum([0] + [len(r) for r in rows], dtype=np.int64),
        first_segment_length=np.array([len(a) + 2 for a, _, _ in pairs], dtype=np.int64),
        is_random_next=np.array([label for _, _, label in pairs], dtype=np.int64),
    )


def random_text(documents: Sequence[Sequence[list[int]]], exclude: int, length: int, rng: random.Random) -> list[int]:
    """At least `length` tokens of consecutive sentences from a random document other than `exclude`."""
    other = rng.randrange(len(documents) - 1)
    document = documents[other + (other >= exclude)]
    start = rng.randrange(len(document))
    out: list[int] = []
    for sentence in document[start:]:
        out.extend(sentence)
        if len(out) >= length:
            break
    return out


def truncate_pair(a: list[int], b: list[int], budget: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Remove tokens from the longer of A and B, from its front or back at random, until both fit `budget`."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]
    return a, b


def mask_tokens(ids: Tensor, candidates: Tensor, vocab: Vocabulary, generator: torch.Generator, *,
                mask_prob: float = 0.15, max_predictions: int | None = None,
                whole_word: bool = False) -> tuple[Tensor, Tensor]:
    """BERT's masking of a (batch, time) id tensor: returns (inputs, labels), labels = IGNORE where not chosen.

    Per row, round(mask_prob * n) of its n candidate positions (at least 1, at most `max_predictions`) are chosen
    uniformly; with `whole_word`, words are chosen instead (a word = a token and its "##" continuations) and all
    their pieces are masked together. Of the chosen tokens 80 % become [MASK], 10 % a random non-special token,
    10 % stay as they are.
    """
    units = candidates
    if whole_word:
        is_start = candidates & ~vocab.continuation[ids]
        word = is_start.long().cumsum(1)  # word number of every position (continuations share their start's)
        units = is_start
    counts = units.sum(1, keepdim=True)
    n_chosen = (counts.float() * mask_prob).round().clamp(min=1).long().minimum(counts)
    if max_predictions is not None:
        n_chosen = n_chosen.clamp(max=max_predictions)
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~units, 2.0)
    rank = scores.argsort(1).argsort(1)  # 0 = the lowest score in the row
    chosen = (rank < n_chosen) & units
    if whole_word:
        chosen_words = torch.zeros(ids.shape[0], ids.shape[1] + 1, dtype=torch.bool)
        chosen_words.scatter_(1, word * chosen, chosen)  # word numbers of the chosen starts (0 = none)
        chosen = chosen_words.gather(1, word) & candidates & (word > 0)
    labels = torch.where(chosen, ids, IGNORE)
    action = torch.rand(ids.shape, generator=generator)
    ordinary = torch.tensor(sorted(set(range(vocab.size)) - vocab.special_ids))
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)]
    inputs = torch.where(chosen & (action < 0.8), vocab.mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


def seeded(*numbers: int) -> torch.Generator:
    """A generator seeded from several integers, mixed (unlike Python's hash, the same in every process)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(numbers)).generate_state(1)[0]))


class MaskedLMBatches:
    """Batches of masked pairs, padded to their longest row: ids, mask, segments, mlm_labels, nsp_labels."""

    def __init__(self, instances: Instances, vocab: Vocabulary, batch_size: int, seed: int, *,
                 mask_prob: float = 0.15, max_predictions: int | None = None, whole_word: bool = False) -> None:
        if len(instances) < batch_size:
            raise UserError(f"{len(instances)} training pairs are fewer than one batch of {batch_size}")
        self.instances, self.vocab, self.batch_size, self.seed = instances, vocab, batch_size, seed
        self.options = dict(mask_prob=mask_prob, max_predictions=max_predictions, whole_word=whole_word)

    def __len__(self) -> int:
        return len(self.instances) // self.batch_size

    def batch(self, step: int) -> dict[str, Tensor]:
        """The step-th batch: the epoch's order and the masking are pure functions of (seed, step)."""
        epoch, within = divmod(step, len(self))
        order = torch.randperm(len(self.instances), generator=seeded(self.seed, 0, epoch))
        rows = order[within * self.batch_size:(within + 1) * self.batch_size].tolist()
        return self.collate(rows, seeded(self.seed, 1, step))

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """In order, with masking fixed by the seed: the same validation set at every evaluation."""
        count = -(-len(self.instances) // self.batch_size)
        for b in range(count if max_batches is None else min(count, max_batches)):
            rows = list(range(b * self.batch_size, min(len(self.instances), (b + 1) * self.batch_size)))
            yield self.collate(rows, seeded(self.seed, 2, b))

    def collate(self, rows: list[int], generator: torch.Generator) -> dict[str, Tensor]:
        inst = self.instances
        lengths = [int(inst.offsets[r + 1] - inst.offsets[r]) for r in rows]
        ids = torch.full((len(rows), max(lengths)), self.vocab.pad_id, dtype=torch.long)
        segments = torch.zeros_like(ids)
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            ids[i, :n] = torch.from_numpy(inst.ids[inst.offsets[r]:inst.offsets[r + 1]].astype(np.int64))
            segments[i, inst.first_segment_length[r]:n] = 1
        mask = torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]
        special = torch.tensor(sorted(self.vocab.special_ids))
        candidates = mask & ~torch.isin(ids, special)
        inputs, labels = mask_tokens(ids, candidates, self.vocab, generator, **self.options)
        return {"ids": inputs, "mask": mask, "segments": segments, "mlm_labels": labels,
                "nsp_labels": torch.from_numpy(inst.is_random_next[rows])}


def mlm_nsp_objective(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked-LM cross-entropy over the chosen positions + next-sentence cross-entropy, with both accuracies."""
    chosen = batch["mlm_labels"] != IGNORE
    out = model(batch["ids"], mask=batch["mask"], segments=batch["segments"], masked_positions=chosen)
    targets = batch["mlm_labels"][chosen]
    mlm_loss = F.cross_entropy(out.logits, targets)
    nsp_loss = F.cross_entropy(out.nsp_logits, batch["nsp_labels"])
    metrics = {
        "mlm_loss": mlm_loss.detach(), "nsp_loss": nsp_loss.detach(),
        "mlm_accuracy": (out.logits.argmax(-1) == targets).float().mean(),
        "nsp_accuracy": (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean(),
    }
    return mlm_loss + nsp_loss, metrics


def load_documents(path: str | Path, encode: Callable[[list[str]], list[list[int]]]) -> list[list[list[int]]]:
    """Every document of a file or folder, as lists of tokenised sentences."""
    documents = [doc for text in read_documents(path) for doc in split_documents(text)]
    flat = encode([s for doc in documents for s in doc])
    out, k = [], 0
    for doc in documents:
        out.append(flat[k:k + len(doc)])
        k += len(doc)
    return out


def pretrain_masked_lm(data, run_dir: str | Path, model_config, train, *, max_length: int = 128,
                       batch_size: int = 32, tokenizer=None, resume: bool = False, whole_word: bool = False,
                       eval_batches: int = 50) -> nn.Module:
    """Pretrain a BERT by masked LM + next-sentence prediction; the model ends in run_dir/checkpoint.

    `data` is a `causal_lm.LMData` (train path, optional valid path); without a validation path the last 5 % of
    documents are held out.
    """
    from ctxlm.models import build_model
    from ctxlm.pretrain.corpus import find_text_files
    from ctxlm.tokenization import Tokenizer
    from ctxlm.train import Trainer

    run_dir = Path(run_dir)
    if max_length > model_config.max_positions:
        raise UserError(f"max length {max_length} exceeds the model's {model_config.max_positions} positions")
    if resume and (run_dir / "checkpoint" / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_files(run_dir / "checkpoint")
    elif tokenizer is None:
        files = find_text_files(data.train)
        print(f"training a {model_config.vocab_size}-token WordPiece vocabulary on {len(files)} file(s)")
        tokenizer = Tokenizer.train(files, kind="bert", vocab_size=model_config.vocab_size)
    model_config.vocab_size = tokenizer.vocab_size
    vocab = Vocabulary.of(tokenizer)

    documents = load_documents(data.train, tokenizer.encode_batch)
    if data.valid is not None:
        valid_documents = load_documents(data.valid, tokenizer.encode_batch)
    else:
        held_out = max(2, len(documents) // 20)
        documents, valid_documents = documents[:-held_out], documents[-held_out:]
    empty = sum(1 for doc in documents + valid_documents if not any(doc))
    if empty:  # build_instances leaves them out; say so rather than drop them silently
        print(f"skipping {empty} document(s) that gave no tokens")
    train_pairs = build_instances(documents, vocab, max_length, seed=train.seed)
    valid_pairs = build_instances(valid_documents, vocab, max_length, seed=train.seed + 1)
    options = dict(whole_word=whole_word, max_predictions=max(1, round(0.15 * max_length)))
    train_batches = MaskedLMBatches(train_pairs, vocab, batch_size, seed=train.seed, **options)
    valid_batches = MaskedLMBatches(valid_pairs, vocab, batch_size, seed=train.seed, **options)
    print(f"corpus: {len(documents):,} documents → {len(train_pairs):,} training pairs "
          f"({len(train_batches):,} batches of {batch_size} per epoch), {len(valid_pairs):,} validation pairs")

    torch.manual_seed(train.seed)
    model = build_model(model_config)
    model.tokenizer = tokenizer
    print(f"model: bert, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    trainer = Trainer(model, mlm_nsp_objective, train_batches.batch, train, run_dir,
                      eval_batches=lambda: valid_batches.eval_batches(eval_batches),
                      tokens_per_batch=int(np.diff(train_pairs.offsets).mean() * batch_size))
    trainer.fit(resume=resume)
    return model
