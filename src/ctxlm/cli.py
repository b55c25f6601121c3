"""`ctxlm` command line: a thin shell over the Python API.

User errors (bad paths, values, files) print one line and exit 1; an interrupted run exits 130 and keeps its
last checkpoint; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ctxlm.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ctxlm")
def cli() -> None:
    """Contextual language models (GPT, GPT-2, BERT, ...) and transfer learning.

    \b
    Examples:
      ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-small --max-minutes 5
      ctxlm generate runs/gpt2-small "The history of" --max-new-tokens 40 --top-k 40 --temperature 0.8
      ctxlm convert path/to/hf-gpt2-folder models/gpt2
      ctxlm info runs/gpt2-small
      ctxlm finetune --model minilm --task sst2 --strategy features --train-size 2000 --out runs/sst2
      echo "a gorgeous, witty movie" | ctxlm predict runs/sst2
    """


def resolve_corpus(data: str) -> Path:
    """A path, or the name of a data set folder under CTXLM_DATA (e.g. `wikitext2`)."""
    from ctxlm.pretrain.corpus import dataset_path

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
  # continue an interrupted run exactly where its last checkpoint left it
  ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-wt2 --resume
""")
@click.option("--model", "model_type", type=click.Choice(["gpt2", "gpt", "bert"]), default="gpt2",
              show_default=True, help="architecture family (and objective: causal LM, or masked LM + NSP for bert)")
@click.option("--data", default="wikitext2", show_default=True,
              help="text file or folder (.txt/.txt.gz), or a data set name under $CTXLM_DATA")
@click.option("--valid", type=click.Path(), help="validation text (default: the folder's valid split, or 5% held out)")
@click.option("--out", "run_dir", type=click.Path(), required=True, help="run folder: checkpoint, metrics, loss.png")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), help="use this tokenizer folder")
@click.option("--vocab-size", default=8192, show_default=True, help="tokenizer vocabulary to train")
@click.option("--layers", default=4, show_default=True)
@click.option("--dim", default=256, show_default=True, help="model width")
@click.option("--heads", default=4, show_default=True)
@click.option("--block-size", default=256, show_default=True, help="tokens per training sequence (context)")
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
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint")
def pretrain(model_type, data, valid, run_dir, tokenizer, vocab_size, layers, dim, heads, block_size,
             batch_size, grad_accum, steps, lr, warmup, schedule, dropout, whole_word_masking, eval_every,
             save_every, max_minutes, seed, resume) -> None:
    """Pretrain a model from scratch on raw text: causal LM (GPT, GPT-2) or masked LM + next sentence (BERT)."""
    from ctxlm.config import BertConfig, GPTConfig
    from ctxlm.pretrain.causal_lm import LMData
    from ctxlm.tokenization import Tokenizer
    from ctxlm.train import TrainConfig

    shape = dict(vocab_size=vocab_size, max_positions=max(block_size, 128), dim=dim, n_layers=layers,
                 n_heads=heads, dropout=dropout, attn_dropout=dropout)
    config = BertConfig(**shape) if model_type == "bert" else GPTConfig(model_type=model_type, **shape)
    config.validate()
    train = TrainConfig(steps=steps, grad_accum=grad_accum, lr=lr, warmup_steps=warmup, schedule=schedule,
                        eval_every=eval_every, save_every=save_every, seed=seed, max_minutes=max_minutes)
    data_spec = LMData.resolve(resolve_corpus(data), resolve_corpus(valid) if valid else None)
    given = Tokenizer.from_files(tokenizer) if tokenizer else None
    if model_type == "bert":
        from ctxlm.pretrain.masked_lm import pretrain_masked_lm

        model = pretrain_masked_lm(data_spec, run_dir, config, train, max_length=block_size, batch_size=batch_size,
                                   tokenizer=given, resume=resume, whole_word=whole_word_masking)
        report_masked_lm(model, Path(run_dir))
    else:
        from ctxlm.pretrain.causal_lm import pretrain_causal_lm

        model = pretrain_causal_lm(data_spec, run_dir, config, train, block_size=block_size, batch_size=batch_size,
                                   tokenizer=given, resume=resume)
        report_causal_lm(model, Path(run_dir), seed)
    click.echo(f"model saved in {Path(run_dir) / 'checkpoint'}; loss curve in {Path(run_dir) / 'loss.png'}")


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
    with torch.no_grad():
        logits = model(torch.tensor([enc.ids])).logits[0]
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
""")
@click.argument("source")
@click.argument("destination", type=click.Path())
def convert(source, destination) -> None:
    """Import a published checkpoint into ctxlm's format (config.json + model.safetensors + tokenizer)."""
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


def _register_commands() -> None:
    from ctxlm.embed_cli import COMMANDS as EMBED_COMMANDS
    from ctxlm.transfer.cli import COMMANDS as TRANSFER_COMMANDS

    for command in [*TRANSFER_COMMANDS, *EMBED_COMMANDS]:
        cli.add_command(command)


_register_commands()


def main() -> None:
    try:
        result = cli.main(standalone_mode=False)  # returns --help's exit code, or the command's return value
        sys.exit(result if isinstance(result, int) else 0)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted; the last checkpoint is kept (continue with --resume)", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
