"""Transformer-XL pretraining (Dai et al., 2019): a causal LM trained segment after segment with recurrence.

The token stream is cut into B contiguous streams, one per batch row (the paper's `LMOrderedIterator`): row i of
segment k + 1 continues row i of segment k, so the memory (each layer's hidden states of the previous segment,
detached) carries context across segments. The memory is reset at the start of each epoch.

`pretrain_xl` is the whole job behind `ctxlm pretrain --model transformer-xl`: train (or load) the tokenizer
(WikiText's words, `<eos>` at each line end), tokenise the corpus once into a memory-mapped cache, build the
model, train, and report validation perplexity over the whole validation stream read in order with memory,
whose length may exceed training's (`eval_mem_len`).

Exact resume: the Trainer's `train_batch(i)` is a pure function of the micro-batch index, but the memory is
state, and it cannot be recomputed exactly (it came from the weights *before* the last update, in training
mode, with dropout). So the memory that the next micro-batch needs is saved beside every checkpoint, in
`run_dir/memory/segment-<index>.safetensors` (written before the checkpoint that refers to it, older ones deleted
after), and loaded on resume: a resumed run equals an uninterrupted one bit for bit. A missing memory file (e.g.
a copied checkpoint folder) is rebuilt instead by running the previous segments forward without gradient, in
evaluation mode: close to, not identical with, the uninterrupted run.

Not under torchrun (several processes) yet: each process would carry the memory of its own rows, and the memory
saved beside checkpoints would have to be gathered from all; it is refused with a UserError.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ctxlm import distributed
from ctxlm.checkpoint import has_tokenizer, load_tokenizer, read_safetensors_header
from ctxlm.errors import UserError
from ctxlm.paths import cache_root
from ctxlm.pretrain.causal_lm import LMData, corpus_spans, starting_model, tokenize, write_data_json
from ctxlm.pretrain.corpus import TokenizedCorpus, TokenSpan
from ctxlm.progress import progress as progress_of
from ctxlm.runlog import last_validation
from ctxlm.textfiles import find_text_files
from ctxlm.tokenizers import WordTokenizer
from ctxlm.train import TrainConfig, Trainer

MEMORY_DIR = "memory"


# -- data -----------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """One training micro-batch: inputs and next-token targets (batch, tgt_len), and its index in the run."""

    x: Tensor
    y: Tensor
    index: int
    starts_epoch: bool  # the first segment of an epoch: its rows start with an empty memory


class StreamBatches:
    """The span cut into `batch_size` contiguous streams of `len(span) // batch_size` tokens, one per row, read
    `tgt_len` tokens at a time: segment k of an epoch is x = stream[k T : k T + T], y = stream[k T + 1 : k T + T + 1]
    for every row, so row i of segment k + 1 starts where row i of segment k ended. Every epoch reads the same
    segments in the same order (as the paper); `batch(i)` is a pure function of the global micro-batch index i.
    The tokens past the last whole segment of each stream (fewer than tgt_len + 1) are not trained on."""

    def __init__(self, span: TokenSpan, tgt_len: int, batch_size: int):
        if tgt_len < 1 or batch_size < 1:
            raise UserError(f"segment length and batch size must be positive, got {tgt_len} and {batch_size}")
        self.span, self.tgt_len, self.batch_size = span, tgt_len, batch_size
        self.stream_len = len(span) // batch_size
        if (self.stream_len - 1) // tgt_len < 1:
            raise UserError(
                f"the data has {len(span):,} tokens: {batch_size} streams of {self.stream_len:,}, too short for "
                f"a segment of {tgt_len} (need {batch_size * (tgt_len + 1):,} tokens): use a smaller batch or "
                "block size, or more text")

    def __len__(self) -> int:
        """Segments per epoch."""
        return (self.stream_len - 1) // self.tgt_len

    def batch(self, index: int) -> Segment:
        epoch, k = divmod(index, len(self))
        t = self.tgt_len
        rows = np.stack([self.span.block(row * self.stream_len + k * t, t + 1) for row in range(self.batch_size)])
        ids = torch.from_numpy(rows.astype(np.int64))
        return Segment(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), index, starts_epoch=k == 0)


def eval_segments(span: TokenSpan, tgt_len: int, streams: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole span as `streams` contiguous streams read in order, `tgt_len` targets at a time (the last segment
    may be shorter): every token of each stream but its first is predicted once. One stream scores every token
    of the span but the first; B streams leave out B - 1 more and the last len(span) mod B."""
    stream_len = len(span) // streams
    if stream_len < 2:
        raise UserError(f"the validation data has {len(span)} tokens, too few for {streams} streams")
    rows = np.stack([span.block(row * stream_len, stream_len) for row in range(streams)]).astype(np.int64)
    ids = torch.from_numpy(rows)
    for start in range(0, stream_len - 1, tgt_len):
        end = min(start + tgt_len, stream_len - 1)
        yield ids[:, start:end], ids[:, start + 1:end + 1]


# -- training objective with the memory as state ---------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class SegmentRecurrence:
    """The training objective: the mean next-token loss of a segment given the memory of the previous one, then
    keeps the segment's new memory for the next. Segments must come in order within an epoch (the Trainer
    asks for micro-batch i after i - 1); the first segment of an epoch starts from an empty memory."""

    def __init__(self, batches: StreamBatches):
        self.batches = batches
        self.memory: list[Tensor] | None = None
        self.next_index = 0  # the micro-batch whose memory self.memory is

    def __call__(self, model: nn.Module, segment: Segment) -> tuple[Tensor, dict[str, Tensor]]:
        if segment.starts_epoch:
            self.memory = None
        elif segment.index != self.next_index:
            raise RuntimeError(f"segment {segment.index} asked for, but the memory is that of segment "
                               f"{self.next_index}: Transformer-XL segments must be read in order")
        out = self.forward(model, segment)
        memory = out.hidden.memory
        self.memory = [m.detach() for m in memory] if memory else None  # mem_len 0: nothing to carry
        self.next_index = segment.index + 1
        return out.loss, {}

    def forward(self, model: nn.Module, segment: Segment):
        """The model's output on one segment given `self.memory`, its loss and its new memory (next-token loss:
        another objective over the same segments overrides this)."""
        device = _device(model)
        return model(segment.x.to(device), memory=self.memory, targets=segment.y.to(device))

    # -- the memory beside checkpoints --------------------------------------------------------------------------
    def save(self, folder: Path, index: int) -> None:
        """Write the memory that micro-batch `index` reads (atomically: temporary file, then rename)."""
        if index != self.next_index:
            raise RuntimeError(f"saving the memory of segment {index}, but it is that of {self.next_index}")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{i}": m.contiguous().cpu() for i, m in enumerate(self.memory or [])}
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            pass
        save_file(tensors, tmp.name, metadata={"index": str(index), "layers": str(len(tensors))})
        Path(tmp.name).replace(memory_file(folder, index))

    def load(self, folder: Path, index: int, model: nn.Module) -> bool:
        """Restore the memory that micro-batch `index` reads; False when no file holds it."""
        path = memory_file(folder, index)
        if not path.is_file():
            return False
        read_safetensors_header(path)  # checked before anything is read
        tensors = load_file(path, device=str(_device(model)))
        self.memory = [tensors[f"layer.{i}"] for i in range(len(tensors))] or None
        self.next_index = index
        return True

    @torch.no_grad()
    def rebuild(self, model: nn.Module, index: int) -> None:
        """Recompute the memory of micro-batch `index` from the segments before it (the fewest that fill the
        memory), with the current weights in evaluation mode: an approximation of the lost memory."""
        epoch_start = index - index % len(self.batches)
        mem_len = model.config.mem_len
        first = max(epoch_start, index - math.ceil(mem_len / self.batches.tgt_len)) if mem_len else index
        was_training = model.training
        model.eval()
        self.memory, self.next_index = None, first
        device = _device(model)
        for i in range(first, index):
            memory = model(self.batches.batch(i).x.to(device), memory=self.memory).hidden.memory
            self.memory = [m.detach() for m in memory] if memory else None
        self.next_index = index
        model.train(was_training)


def memory_file(folder: Path, index: int) -> Path:
    return folder / f"segment-{index}.safetensors"


class RecurrentTrainer(Trainer):
    """The Trainer with the segment memory saved beside each checkpoint and restored on resume."""

    def __init__(self, model: nn.Module, recurrence: SegmentRecurrence, config: TrainConfig, run_dir: str | Path,
                 **kwargs: Any) -> None:
        super().__init__(model, recurrence, recurrence.batches.batch, config, run_dir, **kwargs)
        self.recurrence = recurrence

    @property
    def memory_dir(self) -> Path:
        return self.run_dir / MEMORY_DIR

    def save_state(self) -> None:
        index = self.step * self.config.grad_accum  # the next micro-batch
        self.recurrence.save(self.memory_dir, index)  # before the checkpoint that refers to it
        super().save_state()
        for stale in self.memory_dir.glob("segment-*.safetensors"):
            if stale != memory_file(self.memory_dir, index):
                stale.unlink(missing_ok=True)

    def load_state(self) -> None:
        super().load_state()
        index = self.step * self.config.grad_accum
        if not self.recurrence.load(self.memory_dir, index, self.model):
            print(f"no saved memory for segment {index} in {self.memory_dir}: rebuilding it from the previous "
                  "segments (the resumed run will be close to, not identical with, an uninterrupted one)")
            self.recurrence.rebuild(self.model, index)


# -- evaluation -----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_xl(model: nn.Module, span: TokenSpan, *, tgt_len: int, mem_len: int | None = None,
                streams: int = 1, max_segments: int | None = None, progress: bool = True) -> dict[str, float]:
    """Per-token loss and perplexity of the span read in order, `tgt_len` tokens at a time, each segment seeing
    the memory of the `mem_len` tokens before it (default: the model's; 0: none; longer than training's is
    fine, positions are relative). The loss is the total over every scored token divided by their number.
    `max_segments`: stop early (a quick estimate during training)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count, memory = 0, None
    segments = eval_segments(span, tgt_len, streams)
    if max_segments is not None:
        segments = (s for _, s in zip(range(max_segments), segments, strict=False))
    for x, y in progress_of(segments, desc="eval", leave=False, disable=not progress):
        out = model(x.to(device), memory=memory, mem_len=mem_len, targets=y.to(device))
        memory = out.hidden.memory or None
        total += out.loss.double() * y.numel()
        count += y.numel()
    model.train(was_training)
    loss = float(total) / count
    return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count}


# -- the job --------------------------------------------------------------------------------------------------
def is_word_tokenizer(tokenizer) -> bool:
    return getattr(tokenizer, "kind", None) == "transformer-xl"


def tokenize_stream(path: Path, tokenizer) -> TokenizedCorpus:
    """The corpus's ids, cached under $CTXLM_CACHE/corpus. The word tokenizer ends every line with <eos>, blank
    lines included (the paper's corpus encoding); a sub-word tokenizer (e.g. GPT-2's BPE, to compare with GPT-2)
    encodes as for GPT-2 pretraining, its end-of-text token after each document."""
    if not is_word_tokenizer(tokenizer):
        return tokenize(path, tokenizer)
    return TokenizedCorpus.build(path, lambda texts: tokenizer.encode_batch(texts, add_eos=True),
                                 tokenizer.vocab_size, cache_root() / "corpus",
                                 fingerprint=f"{tokenizer.fingerprint()}+eos-per-line")


def xl_tokenizer(data: LMData, run_dir: Path, config, *, given, resume: bool, vocab_size: int | None):
    """The run's tokenizer: the checkpoint's when resuming, else the one given (a word list, or any sub-word
    tokenizer such as GPT-2's BPE), else a word list trained on the training text (the `vocab_size` most frequent
    words, or all of them). The config takes the tokenizer's exact size; adaptive cut-offs past it are dropped."""
    if resume and has_tokenizer(run_dir / "checkpoint"):
        tokenizer = load_tokenizer(run_dir / "checkpoint")
    elif given is not None:
        tokenizer = given
    else:
        files = find_text_files(data.train)
        limit = f"the {vocab_size:,} most frequent words" if vocab_size else "every word"
        print(f"training a word-level vocabulary ({limit}, <eos> at line ends) on {len(files)} file(s)")
        tokenizer = WordTokenizer.train(files, vocab_size=vocab_size)
    config.vocab_size = tokenizer.vocab_size
    cutoffs = getattr(config, "adaptive_cutoffs", None)
    if cutoffs:
        config.adaptive_cutoffs = [c for c in cutoffs if c < config.vocab_size]
        config.tie_projs = config.tie_projs[:len(config.adaptive_cutoffs) + 1]
    config.validate()
    return tokenizer


def pretrain_xl(data: LMData, run_dir: str | Path, config, train: TrainConfig, *, tgt_len: int = 128,
                batch_size: int = 16, tokenizer=None, resume: bool = False, eval_mem_len: int | None = None,
                eval_batches: int | None = None, eval_streams: int | None = None,
                vocab_size: int | None = None, init: nn.Module | None = None) -> nn.Module:
    """Pretrain a Transformer-XL on raw text with segment-level recurrence; the model (with its tokenizer) ends in
    run_dir/checkpoint.

    Each step scores `tgt_len` tokens in each of `batch_size` rows, attending to the `config.mem_len` states
    before them. Validation reads the whole validation stream in order (`eval_streams` rows, default
    `batch_size`; `eval_batches` segments at most, default all) with memory `eval_mem_len` (default the
    training's); its per-token perplexity is `valid_perplexity` in metrics.jsonl. Without `tokenizer` a word
    list is trained on the training text: `vocab_size` words (default every word), so perplexity is per word.
    `init`: continue this model (a checkpoint's, its config `config`) and its tokenizer instead.
    """
    if distributed.world_size() > 1:
        raise UserError("Transformer-XL pretraining runs in one process: its memory streams are not split between "
                        "processes yet (start it without torchrun)")
    run_dir = Path(run_dir)
    tokenizer = xl_tokenizer(data, run_dir, config, given=init.tokenizer if init is not None else tokenizer,
                             resume=resume, vocab_size=vocab_size)
    train_span, valid_span = corpus_spans(data, lambda path: tokenize_stream(path, tokenizer))
    batches = StreamBatches(train_span, tgt_len, batch_size)
    eval_mem_len = config.mem_len if eval_mem_len is None else eval_mem_len
    streams = eval_streams or batch_size
    streams = max(1, min(streams, len(valid_span) // (tgt_len + 1)))  # a short validation text: fewer rows
    print(f"corpus: {len(train_span):,} training tokens, {len(valid_span):,} validation tokens ({len(batches):,} "
          f"segments of {batch_size}x{tgt_len} per epoch, memory {config.mem_len} in training, "
          f"{eval_mem_len} in evaluation)")

    model = starting_model(config, tokenizer, train.seed, init)
    print(f"model: transformer-xl, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    write_data_json(run_dir, data, tgt_len=tgt_len, batch_size=batch_size, mem_len=config.mem_len,
                    eval_mem_len=eval_mem_len, eval_streams=streams)

    def evaluator() -> dict[str, float]:
        return evaluate_xl(model, valid_span, tgt_len=tgt_len, mem_len=eval_mem_len, streams=streams,
                           max_segments=eval_batches)

    trainer = RecurrentTrainer(model, SegmentRecurrence(batches), train, run_dir, evaluator=evaluator,
                               tokens_per_batch=batch_size * tgt_len)
    # {} when resuming a finished run
    final = trainer.fit(resume=resume) or last_validation(run_dir, "valid_perplexity")
    if final:
        unit = "word" if is_word_tokenizer(tokenizer) else f"{getattr(tokenizer, 'kind', 'sub-word')} token"
        print(f"step {trainer.step}: validation perplexity {final['valid_perplexity']:.1f} per {unit} "
              f"(loss {final['valid_loss']:.3f} over {final['eval_tokens']:,} tokens, memory {eval_mem_len})")
    return model
