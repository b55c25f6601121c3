"""Bidirectional language-model pretraining (ELMo): predict each word from the words before it (the forward
LSTMs) and from the words after it (the backward LSTMs), with one softmax both directions share.

`pretrain_bilm` is the whole job behind `ctxlm pretrain --model elmo`, the twin of `pretrain_causal_lm`: train
(or load) the word list, tokenise the corpus once into a memory-mapped cache of word ids, build the model,
train, report each direction's validation perplexity.

Under torchrun each process trains on its rows of the global batch (N x batch_size windows); every window
scores the same number of words, so N processes train as one with N times the batch size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ctxlm import distributed
from ctxlm.config import ElmoConfig
from ctxlm.errors import UserError
from ctxlm.models.elmo import ElmoLanguageModel
from ctxlm.paths import cache_root
from ctxlm.pretrain.causal_lm import LMData, corpus_spans, starting_model, write_data_json
from ctxlm.pretrain.corpus import BlockBatches, TokenizedCorpus
from ctxlm.progress import progress
from ctxlm.runlog import last_validation
from ctxlm.textfiles import find_text_files, read_documents
from ctxlm.tokenizers.characters import WORDS_FILE, CharTokenizer
from ctxlm.train import TrainConfig, Trainer


def windows(batch: tuple[Tensor, Tensor]) -> Tensor:
    """BlockBatches' (x, y) = (ids[s:s+T], ids[s+1:s+T+1]) → the whole window ids[s:s+T+1], (batch, T + 1)."""
    x, y = batch
    return torch.cat([x, y[:, -1:]], dim=1)


def bilm_objective(model: nn.Module, ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean of the two directions' cross-entropies over a batch of word windows (batch, T + 1): the forward
    direction predicts words 1..T from the words before each, the backward one words 0..T-1 from those after.
    Targets are the softmax classes of the words (<unk> beyond the softmax vocabulary)."""
    ids = ids.to(next(model.parameters()).device)
    out = model(ids, targets=distributed.unwrap(model).tokenizer.softmax_targets(ids))
    return out.loss, {"forward_loss": out.forward_loss.detach(), "backward_loss": out.backward_loss.detach()}


@torch.no_grad()
def evaluate_bilm(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, float]:
    """Each direction's mean loss over every scored word of `batches`, and its perplexity exp(mean loss).

    Each batch's loss is weighted by the words it scores, so the result is the mean over words, whatever the
    batch sizes; the perplexities are exp of those means, not means of per-batch perplexities. `valid_loss` is
    the objective's (the mean of the two directions), `valid_perplexity` its exp (their geometric mean). Under
    torchrun each process scores its rows of every batch and the sums are added up.
    """
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for ids in progress(batches, desc="eval", leave=False, disable=not distributed.is_main()):
        ids = distributed.local_rows(ids).to(device)
        if not len(ids):
            continue  # a last batch with fewer rows than processes
        targets = model.tokenizer.softmax_targets(ids)
        out = model(ids, targets=targets)
        scored = torch.stack([(targets[:, 1:] != -100).sum(), (targets[:, :-1] != -100).sum()]).double()
        sums += torch.stack([out.forward_loss, out.backward_loss]).double() * scored
        counts += scored
    names = ["forward_sum", "backward_sum", "forward_count", "backward_count"]
    totals = distributed.sum_values(dict(zip(names, torch.cat([sums, counts]).tolist(), strict=True)))  # one sync
    if not (totals["forward_count"] and totals["backward_count"]):
        raise UserError("the validation set gave no batch (too short for the block size?)")
    forward = totals["forward_sum"] / totals["forward_count"]
    backward = totals["backward_sum"] / totals["backward_count"]
    loss = (forward + backward) / 2

    def perplexity(x: float) -> float:
        return math.exp(min(x, 50.0))

    return {"valid_loss": loss, "valid_forward_loss": forward, "valid_backward_loss": backward,
            "valid_perplexity": perplexity(loss), "valid_forward_perplexity": perplexity(forward),
            "valid_backward_perplexity": perplexity(backward)}


def word_list_fingerprint(tokenizer: CharTokenizer) -> str:
    """Identifies the word ids a tokenizer gives (its word list) and its softmax vocabulary size."""
    digest = hashlib.sha256("\n".join(tokenizer.words.words).encode())
    digest.update(f"\n#vocab_size={tokenizer.vocab_size}".encode())
    return digest.hexdigest()[:16]


def bilm_tokenizer(data: LMData, run_dir: Path, config: ElmoConfig, *, given: CharTokenizer | None,
                   resume: bool) -> CharTokenizer:
    """The run's word list: the checkpoint's when resuming, else the one given (extended with the corpus's
    words), else one trained on the training text, whose `config.vocab_size` most frequent words make the
    softmax. Every word of the training and validation text has an id before the corpus is tokenised, so that
    the cached ids and the word list agree. The config takes the tokenizer's exact softmax size. Under torchrun
    rank 0 makes the word list and sends it to the others."""

    def make() -> CharTokenizer:
        if resume and (run_dir / "checkpoint" / WORDS_FILE).is_file():
            return CharTokenizer.from_files(run_dir / "checkpoint")
        if given is not None:
            if not isinstance(given, CharTokenizer):
                raise UserError(f"ELMo reads words: its tokenizer is a word list ({WORDS_FILE}), not a "
                                f"{getattr(given, 'kind', type(given).__name__)} tokenizer")
            for path in (data.train, data.valid):
                for text in read_documents(path) if path is not None else ():
                    given.encode(text)  # adds the corpus's new words, outside the softmax
            return given
        files = find_text_files(data.train)
        print(f"training an ELMo word list (softmax over up to {config.vocab_size:,} words) on {len(files)} file(s)")
        trained = CharTokenizer.train([data.train], vocab_size=config.vocab_size,
                                      extra_files=[data.valid] if data.valid is not None else [])
        return CharTokenizer(trained.words.words, trained.vocab_size, max_characters=config.max_characters)

    tokenizer = distributed.from_main(make)
    config.vocab_size = tokenizer.vocab_size
    config.max_characters = tokenizer.words.max_characters
    if config.softmax == "adaptive":  # cut-offs past a smaller vocabulary than asked for are dropped
        config.adaptive_cutoffs = [c for c in config.adaptive_cutoffs if c < config.vocab_size]
        if not config.adaptive_cutoffs:
            raise UserError(f"a softmax of {config.vocab_size:,} words is too small for the adaptive cut-offs "
                            "asked for: use the full softmax or smaller cut-offs")
    config.validate()
    return tokenizer


def tokenize_words(path: Path, tokenizer: CharTokenizer) -> TokenizedCorpus:
    """The corpus's word ids, each document followed by </S>, cached under $CTXLM_CACHE/corpus."""
    return TokenizedCorpus.build(path, tokenizer.encode_batch, len(tokenizer.words), cache_root() / "corpus",
                                 fingerprint=word_list_fingerprint(tokenizer), end_of_document=[tokenizer.eos_id])


def pretrain_bilm(data: LMData, run_dir: str | Path, config: ElmoConfig, train: TrainConfig, *,
                  block_size: int = 256, batch_size: int = 16, tokenizer: CharTokenizer | None = None,
                  resume: bool = False, eval_batches: int = 50,
                  init: ElmoLanguageModel | None = None) -> ElmoLanguageModel:
    """Pretrain an ELMo biLM on raw text; the model (with its word list) ends in run_dir/checkpoint.

    Batches are contiguous windows of block_size + 1 words (each direction scores block_size of them); each
    sequence starts from zero LSTM states. Validation reports each direction's loss and perplexity
    (valid_forward_perplexity, valid_backward_perplexity in metrics.jsonl), printed at the end.

    `init`: continue this model (a checkpoint's, its config `config`): its word list, extended with the corpus's
    new words (read by their characters, outside the softmax), instead of a new one.
    """
    run_dir = Path(run_dir)
    tokenizer = bilm_tokenizer(data, run_dir, config, given=init.tokenizer if init is not None else tokenizer,
                               resume=resume)

    train_span, valid_span = corpus_spans(data, lambda path: tokenize_words(path, tokenizer))
    rows = batch_size * distributed.world_size()  # the global batch, of which each process takes its rows
    train_batches = BlockBatches(train_span, block_size, rows, seed=train.seed)
    valid_batches = BlockBatches(valid_span, block_size, rows, seed=train.seed)
    print(f"corpus: {len(train_span):,} training words, {len(valid_span):,} validation words "
          f"({len(train_batches):,} batches of {rows}x{block_size + 1} per epoch); {len(tokenizer.words):,} "
          f"distinct words, softmax over {tokenizer.vocab_size:,}")

    model = starting_model(config, tokenizer, train.seed, init)
    clipped = "clipped step-by-step LSTM" if config.cell_clip is not None or config.proj_clip is not None \
        else "fused nn.LSTM"
    print(f"model: elmo, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {clipped}")
    write_data_json(run_dir, data, block_size=block_size, batch_size=batch_size)
    # An adaptive softmax leaves the clusters that no target of a step falls in without gradient.
    trainer = Trainer(model, bilm_objective, lambda step: windows(train_batches.batch(step)), train, run_dir,
                      evaluator=lambda: evaluate_bilm(model, map(windows, valid_batches.eval_batches(eval_batches))),
                      tokens_per_batch=batch_size * block_size, find_unused_parameters=config.softmax == "adaptive")
    # {} when resuming a finished run
    final = trainer.fit(resume=resume) or last_validation(run_dir, "valid_forward_perplexity")
    if final:
        print(f"step {trainer.step}: validation perplexity forward {final['valid_forward_perplexity']:.1f}, "
              f"backward {final['valid_backward_perplexity']:.1f} (loss {final['valid_forward_loss']:.3f} / "
              f"{final['valid_backward_loss']:.3f} nats per word)")
    return model
