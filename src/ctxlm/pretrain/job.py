"""A pretraining job in one call: the corpus found, a family's preset config built, the objective that its config
calls for run, the final figures returned. `ctxlm.pretrain` (and `ctxlm pretrain`) runs it.

The objective follows from what the family can do (the config's capability flags), never from its name:
two attention streams → permutation LM over segments (XLNet); memory across segments → causal LM over segments
(Transformer-XL); causal → causal LM (GPT, GPT-2); a word-level
bidirectional model → forward + backward LMs (ELMo's biLM); else an encoder → masked LM, with next-sentence
prediction for a model that reads segment pairs (BERT), or the sentence-pair task its config's `pair_objective`
names (ALBERT: sentence order), or on full sentences packed across documents for a family without one (RoBERTa,
DeBERTa).

With `init` the run continues a checkpoint instead (ULMFiT's stage 2, task-adaptive pretraining; see
`ctxlm.pretrain.init`): its weights, config and tokenizer, its family's objective, the heads it lacks created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxlm import distributed
from ctxlm.checkpoint import load_checkpoint, load_tokenizer
from ctxlm.config import ModelConfig, TransformerConfig, preset
from ctxlm.errors import UserError
from ctxlm.paths import dataset_path
from ctxlm.pretrain.bilm import pretrain_bilm
from ctxlm.pretrain.causal_lm import LMData, pretrain_causal_lm
from ctxlm.pretrain.init import INIT_FILE, record_init, recorded_init, start_from
from ctxlm.pretrain.masked_lm import pretrain_masked_lm
from ctxlm.pretrain.permutation_lm import PAPER_K, pretrain_permutation_lm
from ctxlm.pretrain.xl import pretrain_xl
from ctxlm.runlog import PLOT_FILE, last_validation
from ctxlm.train import TrainConfig

SEGMENTS, CAUSAL_LM, BILM, MASKED_LM, PERMUTATION_LM = "segments", "causal-lm", "bilm", "masked-lm", "permutation-lm"
# a run from scratch: what the options left out (None) stand for
DEFAULTS = dict(model="gpt2", dim=256, heads=4, clip=False, softmax="full", cutoffs="2000,10000", dropout=0.1)
# the key of the final evaluation's record in metrics.jsonl, by objective
FINAL_KEY = {SEGMENTS: "valid_perplexity", CAUSAL_LM: "valid_perplexity", BILM: "valid_forward_perplexity",
             MASKED_LM: "valid_mlm_accuracy", PERMUTATION_LM: "valid_perplexity"}


def objective_of(config: ModelConfig) -> str:
    """The pretraining objective a family's config calls for, from its capability flags."""
    if config.permutation_lm:
        return PERMUTATION_LM
    if config.has_memory:
        return SEGMENTS
    if config.causal:
        return CAUSAL_LM
    if config.word_level:
        return BILM
    return MASKED_LM


def resolve_corpus(data: str | Path) -> Path:
    """A path, or the name of a data set folder under CTXLM_DATA (e.g. `wikitext2`)."""
    path = Path(data)
    return path if path.exists() or "/" in str(data) else dataset_path(str(data))


def parse_cutoffs(cutoffs: str | list[int] | tuple[int, ...]) -> list[int]:
    """Adaptive softmax cut-offs: a list of word ranks, or the command line's "2000,10000"."""
    if not isinstance(cutoffs, str):
        return list(cutoffs)
    try:
        return [int(c) for c in cutoffs.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--cutoffs {cutoffs!r}: expected increasing word ranks such as 2000,10000") from None


def _or_default(value: Any, name: str) -> Any:
    return DEFAULTS[name] if value is None else value


def pretrain(model: str | None = None, data: str | Path = "wikitext2", *, out: str | Path,
             valid: str | Path | None = None, init: str | Path | None = None, tokenizer: Any = None,
             vocab_size: int | None = None, layers: int | None = None, dim: int | None = None,
             heads: int | None = None, cell_dim: int | None = None, clip: bool | None = None,
             softmax: str | None = None, cutoffs: str | list[int] | None = None, block_size: int = 256,
             mem_len: int | None = None, eval_mem_len: int | None = None, batch_size: int = 16, grad_accum: int = 1,
             steps: int = 2000, lr: float = 1e-3, warmup: int = 100, schedule: str = "cosine",
             lr_decay: float | None = None, dropout: float | None = None, whole_word_masking: bool = False,
             eval_every: int = 200, save_every: int = 200, save_every_minutes: float | None = 10.0,
             max_minutes: float | None = None, precision: str = "fp32", compile: bool = False,
             grad_checkpoint: bool = False, fsdp: bool = False, device: str = "auto", on_nonfinite: str = "stop",
             deterministic: bool = False, seed: int = 0, resume: bool = False, lowercase: bool | None = None,
             strip_accents: bool | None = None, partial_prediction: int = PAPER_K) -> dict[str, Any] | None:
    """Pretrain a `model` family (gpt2, gpt, bert, roberta, albert, deberta, elmo, transformer-xl, xlnet) from
    scratch on the text `data` (a file, a folder, or a data set name under $CTXLM_DATA); the run folder `out` gets
    the checkpoint, metrics.jsonl and loss.png. The keywords are `ctxlm pretrain`'s options (see `ctxlm pretrain
    --help`): the sizes go to `ctxlm.config.preset`, the rest to the trainer; `tokenizer` is a folder or a
    tokenizer. Sizes left None take their defaults (`DEFAULTS`, and the preset's).

    `init` (a run or model folder, a converted Hub folder, "minilm", ...: what `ctxlm.load` reads) continues
    that checkpoint's family objective from its weights, with its tokenizer and sizes: `model` may be left
    out, and `tokenizer`, `vocab_size`, `layers`, `dim`, `heads`, `cell_dim`, `clip`, `softmax` and `cutoffs`
    must be left out or agree with it; `dropout` and `mem_len` given replace its own. The run evaluates once
    before its first step (step 0 in metrics.jsonl): where it starts. `resume` continues such a run from its own
    checkpoint (`init` need not be given again).

    `lowercase` and `strip_accents` set the case and accent handling of the gpt or bert tokenizer the run trains
    (saved with it): None lower-cases Latin-script text, as the published uncased models, and keeps any other
    text's case; accents are stripped only when lower-casing, unless `strip_accents` says otherwise. They apply
    only when the run trains its tokenizer (no `tokenizer`, no `init`).

    `partial_prediction`: XLNet's K, the permutation LM predicting the last 1/K of each order (see
    `ctxlm.pretrain.permutation_lm`).

    The checkpoint is written every `save_every` steps and once `save_every_minutes` have passed since the last
    one (None: by steps only), atomically: a kill loses at most that much, and `resume` continues exactly.

    Returns {"objective", "model" (the trained model, whole), "run_dir", "checkpoint", "loss_plot", "final" (the
    last validation record of metrics.jsonl, {} if none)}. Under torchrun every process trains; rank 0 alone
    returns the result, the others None.
    """
    run_dir = Path(out)
    if resume and init is None:
        init = recorded_init(run_dir)  # a run that continued a checkpoint resumes as one
    train = TrainConfig(steps=steps, grad_accum=grad_accum, lr=lr, warmup_steps=warmup, schedule=schedule,
                        lr_decay=lr_decay, eval_every=eval_every, save_every=save_every,
                        save_every_minutes=save_every_minutes, seed=seed, max_minutes=max_minutes, precision=precision,
                        compile=compile, gradient_checkpointing=grad_checkpoint,
                        fsdp=fsdp, device=device, on_nonfinite=on_nonfinite, deterministic=deterministic,
                        eval_first=init is not None)
    train.validate()  # a bad value fails now, not after the tokenizer is trained
    if fsdp and not distributed.launched():
        raise UserError("--fsdp shards the model across processes: start several with torchrun, e.g. "
                        "torchrun --nproc_per_node=4 -m ctxlm pretrain --fsdp ...")
    casing = {"lowercase": lowercase, "strip_accents": strip_accents}
    if (tokenizer is not None or init is not None) and any(v is not None for v in casing.values()):
        raise UserError("--lowercase and --strip-accents set up the tokenizer a run trains; with --tokenizer or "
                        "--init the run keeps that tokenizer's own settings")
    start = None
    if init is not None:
        sizes = dict(tokenizer=tokenizer, vocab_size=vocab_size, layers=layers, dim=dim, heads=heads,
                     cell_dim=cell_dim, clip=clip, softmax=softmax,
                     cutoffs=parse_cutoffs(cutoffs) if cutoffs is not None else None)
        start = start_from(init, family=model, run_dir=run_dir, resume=resume, seed=seed, block_size=block_size,
                           options=sizes, dropout=dropout, mem_len=mem_len)
        config, given = start.config, start.tokenizer
    else:
        softmax = _or_default(softmax, "softmax")
        config = preset(_or_default(model, "model"), vocab_size=vocab_size, dim=_or_default(dim, "dim"),
                        layers=layers, heads=_or_default(heads, "heads"), cell_dim=cell_dim,
                        clip=_or_default(clip, "clip"), softmax=softmax,
                        cutoffs=parse_cutoffs(_or_default(cutoffs, "cutoffs")) if softmax == "adaptive" else [],
                        max_positions=max(block_size, 128), mem_len=block_size if mem_len is None else mem_len,
                        dropout=_or_default(dropout, "dropout"))
        given = load_tokenizer(Path(tokenizer)) if isinstance(tokenizer, str | Path) else tokenizer
    if fsdp and not isinstance(config, TransformerConfig):
        raise UserError(f"--fsdp shards transformer blocks: it applies to gpt2, gpt and bert, not "
                        f"{config.model_type}")
    data_spec = LMData.resolve(resolve_corpus(data), resolve_corpus(valid) if valid else None)
    objective = objective_of(config)
    if objective in (SEGMENTS, BILM) and any(v is not None for v in casing.values()):
        raise UserError(f"--lowercase and --strip-accents apply to gpt and bert: {config.model_type} reads words as "
                        "they are written")
    with distributed.session():  # joins torchrun's processes, if it started several
        if not resume and distributed.is_main():  # what a later --resume reads (a run from scratch has none)
            if start is not None:
                record_init(run_dir, init)
            else:
                (run_dir / INIT_FILE).unlink(missing_ok=True)
        if objective == PERMUTATION_LM:
            trained = pretrain_permutation_lm(data_spec, run_dir, config, train, block_size=block_size,
                                              batch_size=batch_size, tokenizer=given, resume=resume,
                                              k=partial_prediction, init=start, casing=casing)
        elif objective == SEGMENTS:
            trained = pretrain_xl(data_spec, run_dir, config, train, tgt_len=block_size, batch_size=batch_size,
                                  tokenizer=given, resume=resume, eval_mem_len=eval_mem_len, vocab_size=vocab_size,
                                  init=start)
        elif objective == CAUSAL_LM:
            trained = pretrain_causal_lm(data_spec, run_dir, config, train, block_size=block_size,
                                         batch_size=batch_size, tokenizer=given, resume=resume, init=start,
                                         casing=casing)
        elif objective == BILM:
            trained = pretrain_bilm(data_spec, run_dir, config, train, block_size=block_size, batch_size=batch_size,
                                    tokenizer=given, resume=resume, init=start)
        else:
            trained = pretrain_masked_lm(data_spec, run_dir, config, train, max_length=block_size,
                                         batch_size=batch_size, tokenizer=given, resume=resume,
                                         whole_word=whole_word_masking, init=start, casing=casing)
        if not distributed.is_main():
            return None  # the other processes hold the same model: rank 0 reports on it
    if fsdp:  # the trained model is in shards, whose processes are gone: the whole one is in the checkpoint
        trained = load_checkpoint(run_dir / "checkpoint")
    return {"objective": objective, "model": trained, "run_dir": run_dir, "checkpoint": run_dir / "checkpoint",
            "loss_plot": run_dir / PLOT_FILE, "final": last_validation(run_dir, FINAL_KEY[objective])}
