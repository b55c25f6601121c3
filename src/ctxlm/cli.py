"""`ctxlm` command line: a thin shell over the Python API.

Exit status (see `main()`): 0 success; 1 a user error (bad paths, values, files, options: one line, no traceback);
2 an internal error, i.e. a bug (the traceback, then one line saying so, with the version); 130 interrupted,
a training run keeping its last checkpoint.
"""

from __future__ import annotations

import errno
import sys
import traceback
from pathlib import Path

import click

from ctxlm.errors import UserError
from ctxlm.runlog import logged_to
from ctxlm.train import DETERMINISTIC_HELP, NONFINITE_HELP, NONFINITE_POLICIES


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ctxlm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Contextual language models (GPT, GPT-2, BERT, ...) and transfer learning.

    \b
    Examples:
      ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-small --max-minutes 5
      ctxlm generate runs/gpt2-small "The history of" --max-new-tokens 40 --top-k 40 --temperature 0.8
      ctxlm convert path/to/hf-gpt2-folder models/gpt2
      ctxlm info runs/gpt2-small
      ctxlm finetune --model minilm --task sst2 --strategy features --train-size 2000 --out runs/sst2
      echo "a gorgeous, witty movie" | ctxlm predict runs/sst2
      ctxlm doctor          # versions, devices, threads, data and cache folders: paste it into a bug report

    \b
    Exit status:
      0    success
      1    user error: a bad option, path, value or file (one line on stderr, no traceback)
      2    internal error: a bug in ctxlm (a traceback, then a line with the version to report)
      130  interrupted (Ctrl-C); a training run keeps its last checkpoint (continue with --resume)
    """
    from ctxlm import distributed

    if distributed.launched() and ctx.invoked_subcommand not in ("pretrain", "doctor"):
        raise UserError(f"only `ctxlm pretrain` runs under torchrun with several processes; start "
                        f"`ctxlm {ctx.invoked_subcommand}` as a single process")


def resolve_corpus(data: str) -> Path:
    """A path, or the name of a data set folder under CTXLM_DATA (e.g. `wikitext2`)."""
    from ctxlm.paths import dataset_path

    path = Path(data)
    return path if path.exists() or "/" in data else dataset_path(data)


@cli.command(epilog="""\b
Examples:
  # about 5M parameters, five minutes on a laptop CPU, then validation perplexity and a sample
  ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-wt2 --max-minutes 5
  # the 2018 GPT variant (post-LN, BPE with end-of-word markers) on your own text files
  ctxlm pretrain --model gpt --data my_corpus/ --valid my_valid.txt --out runs/gpt --steps 2000
  # BERT: masked LM (15 %, 80/10/10) + next-sentence prediction, whole-word masking
  ctxlm pretrain --model bert --data wikitext2 --out runs/bert-wt2 --block-size 128 --whole-word-masking
  # ELMo: a character CNN under forward and backward LSTMs (biLM), softmax over every wikitext2 word
  ctxlm pretrain --model elmo --data wikitext2 --out runs/elmo-wt2 --dim 128 --max-minutes 10
  # ... with the published cell and projection clipping (slower: a step-by-step LSTM), adaptive softmax
  ctxlm pretrain --model elmo --data wikitext2 --out runs/elmo-clip --clip --softmax adaptive
  # Transformer-XL over wikitext2's words: segments of 128, 128 states of memory in training, 512 to evaluate
  ctxlm pretrain --model transformer-xl --data wikitext2 --out runs/xl --block-size 128 --mem-len 128 \\
      --eval-mem-len 512 --softmax adaptive --cutoffs 2000,10000 --dim 256 --max-minutes 10
  # continue an interrupted run exactly where its last checkpoint left it
  ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-wt2 --resume
  # data-parallel on 4 GPUs (or CPU processes): each takes 16 rows of a global batch of 64
  torchrun --nproc_per_node=4 -m ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-ddp --batch-size 16
  # a model too large to train on one GPU: each of 8 holds an eighth of its weights and optimizer state (FSDP)
  torchrun --nproc_per_node=8 -m ctxlm pretrain --model gpt2 --dim 2048 --layers 24 --heads 16 --fsdp --out runs/big
""")
@click.option("--model", "model_type", type=click.Choice(["gpt2", "gpt", "bert", "elmo", "transformer-xl"]),
              default="gpt2", show_default=True, help="architecture family (and objective: causal LM, masked LM + "
              "NSP for bert, forward + backward LM for elmo, causal LM over segments with memory for transformer-xl)")
@click.option("--data", default="wikitext2", show_default=True,
              help="text file or folder (.txt/.txt.gz), or a data set name under $CTXLM_DATA")
@click.option("--valid", type=click.Path(), help="validation text (default: the folder's valid split, or 5% held out)")
@click.option("--out", "run_dir", type=click.Path(), required=True, help="run folder: checkpoint, metrics, loss.png")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), help="use this tokenizer folder")
@click.option("--vocab-size", type=int, help="tokenizer vocabulary to train [default: 8192]; elmo: the softmax's "
              "words, the most frequent [default: 50000, i.e. all 33,151 of wikitext2]; transformer-xl: the "
              "words of its vocabulary, the most frequent [default: all]")
@click.option("--layers", type=int, help="transformer layers [default: 4]; elmo: LSTM layers per direction "
              "[default: 2]")
@click.option("--dim", default=256, show_default=True, help="model width; elmo: token and LSTM projection width "
              "(the character CNN's filters scale with it: the published 2,048 at 512)")
@click.option("--heads", default=4, show_default=True, help="attention heads (not elmo)")
@click.option("--cell-dim", type=int, help="elmo: LSTM memory cells [default: 4 x dim]")
@click.option("--clip/--no-clip", default=False, show_default=True,
              help="elmo: clip LSTM cells and projections at ±3 as the published ELMo does. Off lets PyTorch's "
              "fused nn.LSTM kernel run; on runs a step-by-step LSTM, several times slower")
@click.option("--softmax", type=click.Choice(["full", "adaptive"]), default="full", show_default=True,
              help="elmo, transformer-xl: full softmax, or adaptive (frequent words full, rarer ones in cheaper "
              "clusters; transformer-xl: adaptive input embeddings too)")
@click.option("--cutoffs", default="2000,10000", show_default=True,
              help="elmo, transformer-xl, --softmax adaptive: word ranks where the clusters start")
@click.option("--block-size", default=256, show_default=True, help="tokens per training sequence (context); "
              "transformer-xl: tokens per segment (tgt_len)")
@click.option("--mem-len", type=int, help="transformer-xl: states of memory per layer in training [default: "
              "block size]")
@click.option("--eval-mem-len", type=int, help="transformer-xl: memory when evaluating (may exceed training's) "
              "[default: mem-len]")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--grad-accum", default=1, show_default=True, help="micro-batches per optimizer step")
@click.option("--steps", default=2000, show_default=True, help="optimizer steps")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup", default=100, show_default=True, help="warm-up steps")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine",
              show_default=True)
@click.option("--dropout", default=0.1, show_default=True)
@click.option("--whole-word-masking", is_flag=True, help="bert: mask all pieces of a chosen word together")
@click.option("--eval-every", default=200, show_default=True)
@click.option("--save-every", default=200, show_default=True, help="checkpoint period in steps")
@click.option("--max-minutes", type=float, help="stop (with a checkpoint) after this much training time")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: forward and loss under bfloat16 autocast, weights and optimizer in fp32 (about 1.4x "
              "faster steps on CPUs with AVX512-BF16 or AMX, and on GPUs; evaluation stays fp32)")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (gpt, gpt2, bert: helps on "
              "GPUs; on a 2-core CPU it was slower, see README)")
@click.option("--grad-checkpoint", is_flag=True, help="transformer blocks recompute their activations in backward: "
              "less memory for longer blocks or larger batches, about a third more compute")
@click.option("--fsdp", is_flag=True, help="under torchrun (gpt2, gpt, bert): shard the parameters, gradients and "
              "optimizer state across the processes (FSDP) instead of a whole copy in each (DDP), for a model too "
              "large to train on one device; the same training, the same checkpoint")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1, ... (auto: the GPU when there is one); under torchrun each process takes "
              "its own GPU")
@click.option("--on-nonfinite", type=click.Choice(NONFINITE_POLICIES), default="stop", show_default=True,
              help=NONFINITE_HELP)
@click.option("--deterministic", is_flag=True, help=DETERMINISTIC_HELP)
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint")
@logged_to("run_dir")
def pretrain(model_type, data, valid, run_dir, tokenizer, vocab_size, layers, dim, heads, cell_dim, clip, softmax,
             cutoffs, block_size, mem_len, eval_mem_len, batch_size, grad_accum, steps, lr, warmup, schedule, dropout,
             whole_word_masking, eval_every, save_every, max_minutes, precision, compile_model, grad_checkpoint, fsdp,
             device, on_nonfinite, deterministic, seed, resume) -> None:
    """Pretrain a model from scratch on raw text: causal LM (GPT, GPT-2), masked LM + next sentence (BERT),
    forward + backward LM over words read by their characters (ELMo), or causal LM over segments that attend to
    the previous segments' states (Transformer-XL, over words).

    Under torchrun (not Transformer-XL), N processes train data-parallel: --batch-size is each process's share of
    a global batch of N x batch-size rows; rank 0 writes the run folder. With --fsdp they shard the model
    instead of each holding a copy."""
    from ctxlm import distributed
    from ctxlm.config import BertConfig, GPTConfig
    from ctxlm.pretrain.causal_lm import LMData
    from ctxlm.tokenization import Tokenizer
    from ctxlm.train import TrainConfig

    train = TrainConfig(steps=steps, grad_accum=grad_accum, lr=lr, warmup_steps=warmup, schedule=schedule,
                        eval_every=eval_every, save_every=save_every, seed=seed, max_minutes=max_minutes,
                        precision=precision, compile=compile_model, gradient_checkpointing=grad_checkpoint,
                        fsdp=fsdp, device=device, on_nonfinite=on_nonfinite, deterministic=deterministic)
    train.validate()  # a bad value fails now, not after the tokenizer is trained
    if fsdp and not distributed.launched():
        raise UserError("--fsdp shards the model across processes: start several with torchrun, e.g. "
                        "torchrun --nproc_per_node=4 -m ctxlm pretrain --fsdp ...")
    if fsdp and model_type not in ("gpt2", "gpt", "bert"):
        raise UserError(f"--fsdp shards transformer blocks: it applies to gpt2, gpt and bert, not {model_type}")
    data_spec = LMData.resolve(resolve_corpus(data), resolve_corpus(valid) if valid else None)
    with distributed.session():  # joins torchrun's processes, if it started several
        if model_type == "elmo":
            from ctxlm.checkpoint import load_tokenizer
            from ctxlm.pretrain.bilm import pretrain_bilm

            config = elmo_config(vocab_size=50000 if vocab_size is None else vocab_size, dim=dim,
                                 layers=2 if layers is None else layers, cell_dim=cell_dim, clip=clip,
                                 softmax=softmax, cutoffs=cutoffs, dropout=dropout)
            model = pretrain_bilm(data_spec, run_dir, config, train, block_size=block_size, batch_size=batch_size,
                                  tokenizer=load_tokenizer(Path(tokenizer)) if tokenizer else None, resume=resume)
            report = report_bilm
        elif model_type == "transformer-xl":
            from ctxlm.checkpoint import load_tokenizer
            from ctxlm.pretrain.xl import pretrain_xl

            config = xl_config(dim=dim, layers=4 if layers is None else layers, heads=heads,
                               mem_len=block_size if mem_len is None else mem_len, softmax=softmax, cutoffs=cutoffs,
                               dropout=dropout)
            model = pretrain_xl(data_spec, run_dir, config, train, tgt_len=block_size, batch_size=batch_size,
                                tokenizer=load_tokenizer(Path(tokenizer)) if tokenizer else None, resume=resume,
                                eval_mem_len=eval_mem_len, vocab_size=vocab_size)
            report = lambda model: report_xl(model, seed)
        else:
            shape = dict(vocab_size=8192 if vocab_size is None else vocab_size, max_positions=max(block_size, 128),
                         dim=dim, n_layers=4 if layers is None else layers, n_heads=heads, dropout=dropout,
                         attn_dropout=dropout)
            config = BertConfig(**shape) if model_type == "bert" else GPTConfig(model_type=model_type, **shape)
            config.validate()
            given = Tokenizer.from_files(tokenizer) if tokenizer else None
            if model_type == "bert":
                from ctxlm.pretrain.masked_lm import pretrain_masked_lm

                model = pretrain_masked_lm(data_spec, run_dir, config, train, max_length=block_size,
                                           batch_size=batch_size, tokenizer=given, resume=resume,
                                           whole_word=whole_word_masking)
                report = lambda model: report_masked_lm(model, Path(run_dir))
            else:
                from ctxlm.pretrain.causal_lm import pretrain_causal_lm

                model = pretrain_causal_lm(data_spec, run_dir, config, train, block_size=block_size,
                                           batch_size=batch_size, tokenizer=given, resume=resume)
                report = lambda model: report_causal_lm(model, Path(run_dir), seed)
        if not distributed.is_main():
            return  # the other processes hold the same model: rank 0 reports on it
    if fsdp:  # the trained model is in shards, whose processes are gone: report on the whole one saved
        from ctxlm.checkpoint import load_checkpoint

        model = load_checkpoint(Path(run_dir) / "checkpoint")
    report(model)
    click.echo(f"model saved in {Path(run_dir) / 'checkpoint'}; loss curve in {Path(run_dir) / 'loss.png'}")


def elmo_config(*, vocab_size: int, dim: int, layers: int, cell_dim: int | None, clip: bool, softmax: str,
                cutoffs: str, dropout: float):
    """An ElmoConfig for pretraining from scratch: the published character CNN with its filter counts scaled
    by dim / 512 (so dim 512 is ELMo "original"'s CNN; at dim 128 the published 2,048 filters would cost more
    than the LSTMs), clipping at ±3 or none."""
    from ctxlm.config import ElmoConfig

    try:
        cuts = [int(c) for c in cutoffs.split(",") if c.strip()] if softmax == "adaptive" else []
    except ValueError:
        raise UserError(f"--cutoffs {cutoffs!r}: expected increasing word ranks such as 2000,10000") from None
    default = ElmoConfig()
    filters = [[width, max(1, count * dim // default.dim)] for width, count in default.filters]
    config = ElmoConfig(vocab_size=vocab_size, dim=dim, cell_dim=4 * dim if cell_dim is None else cell_dim,
                        n_layers=layers, filters=filters, cell_clip=3.0 if clip else None,
                        proj_clip=3.0 if clip else None, dropout=dropout, softmax=softmax, adaptive_cutoffs=cuts)
    for option, value in [("--vocab-size", vocab_size), ("--dim", dim), ("--cell-dim", config.cell_dim),
                          ("--layers", layers)]:  # the cut-offs are checked against the final vocabulary
        if value <= 0:
            raise UserError(f"{option} must be positive, got {value}")
    return config


def xl_config(*, dim: int, layers: int, heads: int, mem_len: int, softmax: str, cutoffs: str, dropout: float):
    """A TransformerXLConfig for pretraining from scratch: heads of dim / heads, a 4 x dim MLP, post-LN as the
    paper, relative distances unclamped, a plain or adaptive (input and softmax, div_val 4) vocabulary."""
    from ctxlm.config import TransformerXLConfig

    try:
        cuts = [int(c) for c in cutoffs.split(",") if c.strip()] if softmax == "adaptive" else []
    except ValueError:
        raise UserError(f"--cutoffs {cutoffs!r}: expected increasing word ranks such as 2000,10000") from None
    for option, value in [("--dim", dim), ("--layers", layers), ("--heads", heads)]:
        if value <= 0:
            raise UserError(f"{option} must be positive, got {value}")
    if dim % heads:
        raise UserError(f"--dim {dim} is not divisible by --heads {heads}")
    if mem_len < 0:
        raise UserError(f"--mem-len must be 0 or more, got {mem_len}")
    return TransformerXLConfig(vocab_size=max(cuts, default=0) + 1, dim=dim, n_layers=layers, n_heads=heads,
                               head_dim=dim // heads, mlp_dim=4 * dim, mem_len=mem_len, clamp_len=0,
                               same_length=False, dropout=dropout, attn_dropout=0.0, adaptive_cutoffs=cuts,
                               div_val=4 if cuts else 1)


def report_xl(model, seed: int) -> None:
    """A sample continued with the memory (the validation perplexity is printed by the job)."""
    from ctxlm.generate import generate

    prompt = "In 1990 , the"  # WikiText's own tokenisation style
    sample = generate(model, prompt, max_new_tokens=40, temperature=0.8, top_k=40, seed=seed)[0]
    click.echo(f"sample: {prompt}{sample}")


def report_bilm(model) -> None:
    """A glimpse of both directions: the forward LM's next words and the backward LM's previous words."""
    import torch

    tok = model.eval().tokenizer
    device = next(model.parameters()).device  # a GPU's under torchrun
    left, right = "In 1990 , the", "of the river ."  # WikiText's tokenisation style
    with torch.no_grad():
        ids = (torch.tensor([[tok.bos_id, *tok.encode(left)]], device=device),
               torch.tensor([[*tok.encode(right), tok.eos_id]], device=device))
        forward_top = model(ids[0]).hidden.last[0, -1, :model.config.dim]
        backward_top = model(ids[1]).hidden.last[0, 0, model.config.dim:]
        best = [model.log_probs(state).topk(5).indices.tolist() for state in (forward_top, backward_top)]
    words = [", ".join(tok.decode([i], skip_special_tokens=False) for i in b) for b in best]
    click.echo(f"forward: {left} → {words[0]}")
    click.echo(f"backward: {words[1]} ← {right}")


def report_causal_lm(model, run_dir: Path, seed: int) -> None:
    from ctxlm.generate import generate

    final = [r for r in _read_metrics(run_dir) if "valid_perplexity" in r][-1]
    click.echo(f"step {final['step']}: validation loss {final['valid_loss']:.3f}, "
               f"perplexity {final['valid_perplexity']:.1f} (per {model.config.model_type} token)")
    prompt = "In 1990 , the"  # WikiText's own tokenisation style: the main job's default corpus
    sample = generate(model, prompt, max_new_tokens=40, temperature=0.8, top_k=40, seed=seed)[0]
    click.echo(f"sample: {prompt}{sample}")


def report_masked_lm(model, run_dir: Path) -> None:
    import math

    import torch

    final = [r for r in _read_metrics(run_dir) if "valid_mlm_accuracy" in r][-1]
    click.echo(f"step {final['step']}: masked-LM accuracy {final['valid_mlm_accuracy']:.3f} "
               f"(perplexity {math.exp(final['valid_mlm_loss']):.1f}), next-sentence accuracy "
               f"{final['valid_nsp_accuracy']:.3f}")
    tok = model.tokenizer
    text = "the city is on the [MASK] of the river ."
    enc = tok.encode_bert(text)
    ids = torch.tensor([enc.ids], device=next(model.parameters()).device)  # a GPU's under torchrun
    with torch.no_grad():
        logits = model(ids).logits[0]
    position = enc.ids.index(tok.mask_id)
    best = logits[position].topk(5).indices.tolist()
    click.echo(f"fill-in: {text} → " + ", ".join(tok.decode([i]) for i in best))


def _read_metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@cli.command(epilog="""\b
Examples:
  ctxlm generate runs/gpt2-wt2 "The meaning of life is" --max-new-tokens 30
  ctxlm generate gpt2 "Once upon a time" --temperature 0.9 --top-p 0.95 --seed 1   # online
  ctxlm generate runs/gpt2-wt2 --prompt-file prompts.txt --top-k 40 --stop "\\n"
  ctxlm generate runs/xl "In 1990 , the" --max-new-tokens 100 --top-k 40   # Transformer-XL: memory, any length
""")
@click.argument("model")
@click.argument("prompts", nargs=-1)
@click.option("--prompt-file", type=click.File(encoding="utf-8"), help="one prompt per line")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy decoding")
@click.option("--top-k", type=int, help="sample among the k most likely tokens")
@click.option("--top-p", type=float, help="sample from the smallest set with this total probability")
@click.option("--stop", multiple=True, help="end a continuation before this string (repeatable)")
@click.option("--seed", type=int, help="seed for sampling")
@click.option("--no-cache", is_flag=True, help="recompute the whole prefix every step (slow; for checking)")
def generate(model, prompts, prompt_file, max_new_tokens, temperature, top_k, top_p, stop, seed,
             no_cache) -> None:
    """Continue prompts with a decoder (a run folder, a model folder, or a published name)."""
    import ctxlm

    texts = list(prompts) + ([line.rstrip("\n") for line in prompt_file if line.strip()] if prompt_file else [])
    if not texts:
        raise UserError("give at least one prompt (argument or --prompt-file)")
    lm = ctxlm.load(model)
    outputs = ctxlm.generate(lm, texts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop=list(stop) or None, seed=seed, use_cache=not no_cache)
    for text, continuation in zip(texts, outputs, strict=True):
        click.echo(text + continuation)


@cli.command(epilog="""\b
Examples:
  ctxlm convert ~/hf/gpt2 models/gpt2          # a folder in the Hugging Face layout
  ctxlm convert gpt2-medium models/gpt2-medium # a published name (downloads; needs network)
  ctxlm convert ~/elmo/small models/elmo-small # AllenNLP ELMo: a folder with *options.json + *weights.hdf5
  ctxlm convert elmo-original models/elmo      # published ELMo names: elmo-small, -medium, -original
  ctxlm convert bert-base.tar.gz models/bert   # an archive of such a folder (members checked before extraction)
""")
@click.argument("source")
@click.argument("destination", type=click.Path())
def convert(source, destination) -> None:
    """Import a published checkpoint (a folder, a .tar.gz or .zip of one, or a published name) into ctxlm's format
    (config.json + model.safetensors + tokenizer)."""
    import ctxlm

    click.echo(f"saved {ctxlm.convert(source, destination)}")


@cli.command(epilog="""\b
Examples:
  ctxlm info runs/gpt2-wt2
""")
@click.argument("model")
def info(model) -> None:
    """Print a model's configuration, size, layer groups and tokenizer."""
    import ctxlm

    lm = ctxlm.load(model)
    for key, value in lm.config.to_dict().items():
        click.echo(f"{key:>16}: {value}")
    groups = lm.layer_groups()
    click.echo(f"{'parameters':>16}: {sum(p.numel() for p in lm.parameters()):,}")
    click.echo(f"{'layer groups':>16}: {len(groups)} (" + ", ".join(
        f"{sum(p.numel() for p in g):,}" for g in groups) + ")")
    tok = lm.tokenizer
    click.echo(f"{'tokenizer':>16}: " + (f"{tok.kind}, {tok.vocab_size:,} tokens" if tok else "none"))


@cli.command(epilog="""\b
Examples:
  ctxlm doctor                          # paste the report into a bug report
  ctxlm doctor --json > doctor.json     # the same as one JSON object
  CTXLM_DATA=~/datasets ctxlm doctor    # which data sets a run would find there
""")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
def doctor(as_json) -> None:
    """Report the environment: ctxlm, Python, torch (CUDA, MPS, CPU features, threads), package versions, the
    data folder and its data sets, cache folders, torchrun variables."""
    import json

    from ctxlm.doctor import format_report, report

    info = report()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


def _register_commands() -> None:
    from ctxlm.bench_cli import COMMANDS as BENCH_COMMANDS
    from ctxlm.embed_cli import COMMANDS as EMBED_COMMANDS
    from ctxlm.qa.cli import COMMANDS as QA_COMMANDS
    from ctxlm.transfer.cli import COMMANDS as TRANSFER_COMMANDS

    for command in [*TRANSFER_COMMANDS, *EMBED_COMMANDS, *QA_COMMANDS, *BENCH_COMMANDS]:
        cli.add_command(command)


_register_commands()


EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def main() -> None:
    """The `ctxlm` program: runs the command, then exits with the status `ctxlm --help` documents."""
    try:
        result = cli.main(standalone_mode=False)  # returns --help's exit code, or the command's return value
        sys.exit(result if isinstance(result, int) else EXIT_OK)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted; the last checkpoint is kept (continue with --resume)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as err:  # click's usage errors would exit 2, which here means a bug
        err.show()
        sys.exit(EXIT_USER_ERROR)
    except BrokenPipeError:  # the output's reader went away (`ctxlm predict ... | head`): nothing to report
        _quiet_stdout()
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:
        if (limit := _out_of_resources(err)) is not None:  # the machine's limit, not a bug: say what to change
            click.echo(f"error: {limit}", err=True)
            sys.exit(EXIT_USER_ERROR)
        traceback.print_exc()
        click.echo(f"error: internal error: this is a bug in ctxlm {_versions()}, not a problem with your input; "
                   "please report it with the traceback above and the output of `ctxlm doctor`", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


def _out_of_resources(err: Exception) -> str | None:
    """What to do about running out of memory or disk space, or None for any other exception."""
    torch = sys.modules.get("torch")
    if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
        return (f"out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}): use a smaller "
                "--batch-size (with --grad-accum to keep the batch), a shorter --block-size, --grad-checkpoint or "
                "--precision bf16")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device ({err}): free some space, then continue with --resume"
    return None


def _versions() -> str:
    """ctxlm's version, with Python's and torch's, for the line that reports a bug."""
    try:
        from ctxlm.doctor import ctxlm_version

        version = ctxlm_version()
    except Exception:  # noqa: BLE001 - the bug report must come out whatever else is broken
        version = "(version unknown)"
    torch = sys.modules.get("torch")
    return f"{version} (Python {sys.version.split()[0]}" + (f", torch {torch.__version__})" if torch else ")")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of the closed pipe does not fail again."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError):  # no file descriptor (a captured stream): nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
