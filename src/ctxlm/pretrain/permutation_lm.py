"""Permutation language modelling (Yang et al. 2019, §2.2-2.4): XLNet's pretraining objective.

For a sequence x of length T, sample a factorisation order z (a permutation of 1..T) and maximise
log p(x_{z_t} | x_{z<t}) for the tokens at the end of the order: with partial prediction (§2.3) only the last
n = floor(T / K) of z are targets (K = 6 in the paper; at least 1, and at most T - 1 so that every target has a
token to condition on), the first T - n their context. The text keeps its order; the permutation only builds
`perm_mask`, which says who may see whom:

- a target sees the context and the targets before it in z; its query stream never sees its own token (its
  content stream does: tokens after it in z need it);
- the context sees the context, both ways, and no target: as the paper's code, which gives every non-target the
  smallest rank. The context is not predicted, so no prediction depends on a token later in its order.

The loss is the mean cross-entropy of the targets, read from the query stream (`XLNet.two_stream`). Segments
recur as Transformer-XL's (§2.4): the token stream is cut into one contiguous stream per batch row
(`ctxlm.pretrain.xl.StreamBatches`), and each segment attends to the content states of the previous one,
saved beside checkpoints so that a resumed run continues exactly. Each segment's orders are drawn from a
generator seeded by the run's seed and the segment's index: the same micro-batch always gets the same orders.
ctxlm departs from the paper's data pipeline in one way: sequences are plain consecutive blocks of text, not
`A <sep> B <sep> <cls>` pairs with span-wise targets; the objective itself is the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ctxlm import distributed
from ctxlm.errors import UserError
from ctxlm.pretrain.causal_lm import LMData, corpus_spans, run_tokenizer, starting_model, tokenize, write_data_json
from ctxlm.pretrain.corpus import TokenSpan
from ctxlm.pretrain.xl import RecurrentTrainer, Segment, SegmentRecurrence, StreamBatches, eval_segments
from ctxlm.progress import progress as progress_of
from ctxlm.runlog import last_validation
from ctxlm.train import TrainConfig

PAPER_K = 6  # Yang et al. 2019: partial prediction K = 6 (their pretraining hyperparameters, Appendix A)
EVAL_SEED = 0  # validation draws the same orders at every evaluation, so its loss is comparable over a run


def n_predicted(length: int, k: int) -> int:
    """Targets per sequence of `length` tokens: the last floor(length / K) of the order, at least one and at most
    length - 1 (a target needs a token before it in the order)."""
    if k < 1:
        raise UserError(f"partial prediction K must be 1 or more, got {k}")
    if length < 2:
        raise UserError(f"a permutation LM needs sequences of 2 tokens or more, got {length}")
    return min(max(1, length // k), length - 1)


@dataclass
class Factorisation:
    """One order per row: `perm_mask` (batch, T, T) True where position i may NOT see token j (the reference's
    convention), `predict_at` (batch, n) the targets' positions in their order, `order` (batch, T) the whole
    permutation (order[:, t] = the position read t-th)."""

    perm_mask: Tensor
    predict_at: Tensor
    order: Tensor


def sample_factorisation(batch: int, length: int, k: int, generator: torch.Generator | None = None) -> Factorisation:
    """A random order per row and the masks of partial prediction (see the module docstring)."""
    n = n_predicted(length, k)
    order = torch.stack([torch.randperm(length, generator=generator) for _ in range(batch)])
    return factorisation_of(order, n)


def factorisation_of(order: Tensor, n: int) -> Factorisation:
    """The masks of a given order (batch, T) whose last `n` positions are predicted."""
    length = order.shape[1]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(length).expand_as(order))  # place in the order
    target = rank >= length - n
    # j is hidden from i when j is a target not before i in the order (targets: themselves too; the context:
    # every target, as every target comes after the whole context)
    perm_mask = target[:, None, :] & (rank[:, None, :] >= rank[:, :, None])
    return Factorisation(perm_mask, order[:, length - n:], order)


def permutation_loss(model: nn.Module, ids: Tensor, factorisation: Factorisation,
                     memory: list[Tensor] | None = None, mem_len: int | None = None):
    """The model's output on `ids` under `factorisation`: mean cross-entropy of the targets (`out.loss`) from the
    query stream, and the content stream's memory for the next segment."""
    device = ids.device
    targets = ids.gather(1, factorisation.predict_at.to(device))
    return model(ids, memory=memory, mem_len=mem_len, perm_mask=factorisation.perm_mask.to(device),
                 predict_at=factorisation.predict_at.to(device), targets=targets)


@torch.no_grad()
def predict_position(model: nn.Module, ids: Tensor, position: int) -> Tensor:
    """Logits (batch, vocab) of the token at `position` given every other token of `ids` (batch, T): the order
    that reads it last, its query stream seeing the rest and nobody seeing it (its own id is never read)."""
    perm_mask = torch.zeros(*ids.shape, ids.shape[1], dtype=torch.bool, device=ids.device)
    perm_mask[:, :, position] = True
    predict_at = torch.full((ids.shape[0], 1), position, dtype=torch.long, device=ids.device)
    return model(ids, perm_mask=perm_mask, predict_at=predict_at).logits[:, 0]


def segment_generator(seed: int, index: int) -> torch.Generator:
    """The generator of a segment's orders: a pure function of the run's seed and the micro-batch index."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class PermutationRecurrence(SegmentRecurrence):
    """Segment recurrence (memory carried, saved and restored as Transformer-XL's) with the permutation LM loss
    on each segment. A lost memory file is rebuilt from the previous segments under their own orders."""

    def __init__(self, batches: StreamBatches, k: int = PAPER_K, seed: int = 0):
        super().__init__(batches)
        n_predicted(batches.tgt_len, k)  # refused now, not at the first step
        self.k, self.seed = k, seed

    def forward(self, model: nn.Module, segment: Segment):
        ids = segment.x.to(next(model.parameters()).device)
        orders = sample_factorisation(ids.shape[0], ids.shape[1], self.k, segment_generator(self.seed, segment.index))
        return permutation_loss(model, ids, orders, self.memory)

    @torch.no_grad()
    def rebuild(self, model: nn.Module, index: int) -> None:
        epoch_start = index - index % len(self.batches)
        mem_len = model.config.mem_len
        first = max(epoch_start, index - math.ceil(mem_len / self.batches.tgt_len)) if mem_len else index
        was_training = model.training
        model.eval()
        self.memory, self.next_index = None, first
        for i in range(first, index):
            memory = self.forward(model, self.batches.batch(i)).hidden.memory
            self.memory = [m.detach() for m in memory] if memory else None
        self.next_index = index
        model.train(was_training)


@torch.no_grad()
def evaluate_permutation_lm(model: nn.Module, span: TokenSpan, *, tgt_len: int, k: int = PAPER_K,
                            streams: int = 1, max_segments: int | None = None,
                            progress: bool = True) -> dict[str, float]:
    """Mean loss and perplexity of the predicted tokens over the span read in order, `tgt_len` tokens at a time
    with memory, each segment under orders drawn from a fixed seed (`EVAL_SEED`): the same targets at every
    evaluation. The loss is the total over every target divided by their number."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count, memory = 0, None
    segments = (x for x, _ in eval_segments(span, tgt_len, streams))
    if max_segments is not None:
        segments = (s for _, s in zip(range(max_segments), segments, strict=False))
    for index, x in enumerate(progress_of(segments, desc="eval", leave=False, disable=not progress)):
        if x.shape[1] < 2:  # a last segment of one token has nothing to condition on
            continue
        orders = sample_factorisation(x.shape[0], x.shape[1], k, segment_generator(EVAL_SEED, index))
        out = permutation_loss(model, x.to(device), orders, memory)
        memory = out.hidden.memory or None
        n = orders.predict_at.numel()
        total += out.loss.double() * n
        count += n
    model.train(was_training)
    if not count:
        raise UserError(f"the validation data holds no segment of 2 tokens or more (tgt_len {tgt_len})")
    loss = float(total) / count
    return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count}


def pretrain_permutation_lm(data: LMData, run_dir: str | Path, config, train: TrainConfig, *, block_size: int = 128,
                            batch_size: int = 16, tokenizer=None, resume: bool = False, k: int = PAPER_K,
                            eval_batches: int | None = None, init: nn.Module | None = None,
                            casing: dict[str, bool | None] | None = None) -> nn.Module:
    """Pretrain XLNet on raw text by permutation LM with segment recurrence; the model (with its tokenizer) ends
    in run_dir/checkpoint. Each step predicts the last 1/`k` of a random order of each of `batch_size` segments
    of `block_size` tokens, attending to `config.mem_len` content states before them. Validation
    (`valid_perplexity` in metrics.jsonl) scores the validation stream's targets under fixed orders.

    A tokenizer trained here (`config.tokenizer_kind`) gets the task tokens <|start|>, <|delimiter|> and
    <|extract|> from the start, so that a task's input ends in one summary token, as XLNet's <cls>."""
    if distributed.world_size() > 1:
        raise UserError("XLNet pretraining runs in one process: its memory streams are not split between "
                        "processes yet (start it without torchrun)")
    run_dir = Path(run_dir)
    tokenizer = init.tokenizer if init is not None else run_tokenizer(data, run_dir, config, given=tokenizer,
                                                                       resume=resume, **(casing or {}))
    if init is None and getattr(tokenizer, "start_id", 0) is None and hasattr(tokenizer, "add_task_tokens"):
        tokenizer.add_task_tokens()
        config.vocab_size = tokenizer.vocab_size
    config.validate()
    train_span, valid_span = corpus_spans(data, lambda path: tokenize(path, tokenizer))
    batches = StreamBatches(train_span, block_size, batch_size)
    recurrence = PermutationRecurrence(batches, k, train.seed)
    streams = max(1, min(batch_size, len(valid_span) // (block_size + 1)))
    print(f"corpus: {len(train_span):,} training tokens, {len(valid_span):,} validation tokens ({len(batches):,} "
          f"segments of {batch_size}x{block_size} per epoch, {n_predicted(block_size, k)} predicted per segment, "
          f"memory {config.mem_len})")
    model = starting_model(config, tokenizer, train.seed, init)
    print(f"model: {config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    write_data_json(run_dir, data, block_size=block_size, batch_size=batch_size, mem_len=config.mem_len,
                    partial_prediction=k, eval_streams=streams)

    def evaluator() -> dict[str, float]:
        return evaluate_permutation_lm(model, valid_span, tgt_len=block_size, k=k, streams=streams,
                                       max_segments=eval_batches)

    trainer = RecurrentTrainer(model, recurrence, train, run_dir, evaluator=evaluator,
                               tokens_per_batch=batch_size * block_size)
    final = trainer.fit(resume=resume) or last_validation(run_dir, "valid_perplexity")
    if final:
        print(f"step {trainer.step}: validation perplexity {final['valid_perplexity']:.1f} over the last 1/{k} of "
              f"random orders (loss {final['valid_loss']:.3f} over {final['eval_tokens']:,} targets)")
    return model
