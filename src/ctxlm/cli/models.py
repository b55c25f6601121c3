"""`ctxlm convert` (a published checkpoint into ctxlm's format) and `ctxlm info` (what a model folder holds)."""

from __future__ import annotations

import click

import ctxlm


@click.command(epilog="""\b
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
    click.echo(f"saved {ctxlm.convert(source, destination)}")


@click.command(epilog="""\b
Examples:
  ctxlm info runs/gpt2-wt2
""")
@click.argument("model")
def info(model) -> None:
    """Print a model's configuration, size, layer groups and tokenizer."""
    lm = ctxlm.load(model)
    for key, value in lm.config.to_dict().items():
        click.echo(f"{key:>16}: {value}")
    groups = lm.layer_groups()
    click.echo(f"{'parameters':>16}: {sum(p.numel() for p in lm.parameters()):,}")
    click.echo(f"{'layer groups':>16}: {len(groups)} (" + ", ".join(
        f"{sum(p.numel() for p in g):,}" for g in groups) + ")")
    tok = lm.tokenizer
    click.echo(f"{'tokenizer':>16}: " + (f"{tok.kind}, {tok.vocab_size:,} tokens{_casing(tok)}" if tok else "none"))


def _casing(tok) -> str:
    """How the tokenizer treats case and accents, where it knows (saved with it; see `Tokenizer.train`)."""
    lowercase = getattr(tok, "lowercase", None)
    if lowercase is None:
        return ""
    return (", lower-cased" if lowercase else ", cased") + (", accents stripped" if getattr(tok, "strip_accents", False)
                                                           else "")


COMMANDS = [convert, info]
