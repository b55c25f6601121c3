"""`ctxlm generate` (continue prompts) and `ctxlm zeroshot` (a decoder answers questions from a prompt alone,
scored beside a no-model heuristic baseline)."""

from __future__ import annotations

from pathlib import Path

import click

import ctxlm
from ctxlm import jobs
from ctxlm.cli.options import inference_precision_option
from ctxlm.errors import UserError

ESCAPED_DEFAULT = "{document}\\n\\n{history}Q: {question}\\nA:"  # DEFAULT_TEMPLATE as typed on a command line


@click.command(epilog="""\b
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
@inference_precision_option()
def generate(model, prompts, prompt_file, max_new_tokens, temperature, top_k, top_p, stop, seed,
             no_cache, precision) -> None:
    """Continue prompts with a decoder (a run folder, a model folder, or a published name)."""
    texts = list(prompts) + ([line.rstrip("\n") for line in prompt_file if line.strip()] if prompt_file else [])
    if not texts:
        raise UserError("give at least one prompt (argument or --prompt-file)")
    lm = ctxlm.load(model)
    outputs = ctxlm.generate(lm, texts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop=list(stop) or None, seed=seed, use_cache=not no_cache,
                             dtype=precision)
    for text, continuation in zip(texts, outputs, strict=True):
        click.echo(text + continuation)


@click.command(epilog="""\b
Examples:
  # 500 SQuAD v1.1 dev questions (a seeded sample), the passage then "Q: ...\\nA:"
  ctxlm zeroshot --model runs/gpt2-wt2-512 --task squad
  # CoQA-style: each question also sees the earlier questions on its paragraph, with their answers
  ctxlm zeroshot --model runs/gpt2-wt2-512 --task coqa-style --limit 300 --out answers.jsonl
  # all 10,570 questions, written as they come; after a crash or kill, the same command with --resume
  ctxlm zeroshot --model runs/gpt2-wt2-512 --limit 0 --out answers.jsonl --resume
  # the published GPT-2 (online), as in its paper (55 F1 on CoQA for the largest size)
  ctxlm zeroshot --model gpt2 --task coqa-style
  # a real CoQA file, your own prompt (\\n is a line break)
  ctxlm zeroshot --model gpt2 --task coqa-style --data coqa-dev-v1.0.json \\
      --prompt "Story: {document}\\n\\n{history}Q: {question}\\nA:"
""")
@click.option("--model", required=True, help="a decoder: run or model folder, or a published name (gpt2)")
@click.option("--task", type=click.Choice(["squad", "coqa-style"]), default="squad", show_default=True,
              help="squad: each question alone; coqa-style: after the earlier turns of its conversation (a SQuAD "
              "paragraph's earlier questions, or a CoQA story's)")
@click.option("--prompt", "template", default=ESCAPED_DEFAULT, show_default=True,
              help="template with {document}, {history}, {question}; \\n is a line break")
@click.option("--data", type=click.Path(dir_okay=False), help="a SQuAD or CoQA JSON file (.json, .json.gz) "
              "[default: SQuAD v1.1 dev under $CTXLM_DATA]")
@click.option("--limit", default=500, show_default=True, help="questions to ask, a seeded sample kept in file "
              "order; 0 = all")
@click.option("--seed", default=0, show_default=True, help="seed of the sample")
@click.option("--max-answer-tokens", default=24, show_default=True, help="an answer ends at a line break or here")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
@inference_precision_option()
@click.option("--out", type=click.Path(dir_okay=False), help="write each question's gold and predicted answers "
              "(JSON lines), as they come: flushed to disk every 16 batches")
@click.option("--resume", is_flag=True, help="continue the --out file of an interrupted run (same options) after its "
              "last complete answer: no question asked twice, none missing")
def zeroshot(model, task, template, data, limit, seed, max_answer_tokens, batch_size, device, precision,
             out, resume) -> None:
    """Zero-shot reading comprehension: a decoder answers from a prompt (GPT-2 §3.5), beside a heuristic."""
    if limit < 0:
        raise UserError(f"--limit {limit}: expected 0 (all) or a positive number of questions")
    if out is not None and not Path(out).parent.is_dir():  # found out now rather than after the run
        raise UserError(f"--out {out}: no folder {Path(out).parent}")
    if resume and out is None:
        raise UserError("--resume continues the answers file of an interrupted run: give its --out")
    result = jobs.zeroshot(model, task, template=template.replace("\\n", "\n").replace("\\t", "\t"), data=data,
                           limit=limit, seed=seed, max_answer_tokens=max_answer_tokens, batch_size=batch_size,
                           device=device, progress=True, dtype=precision, out=out, resume=resume)
    print_table([(f"model ({model})", result.model_metrics), ("heuristic (answer type + window)",
                                                              result.heuristic_metrics)])
    click.echo(f"{len(result.questions):,} questions ({task}, {data or 'SQuAD v1.1 dev'}); prompts cut to the "
               f"model's context: {len(result.truncated):,}")
    if out is not None:  # written as they came
        click.echo(f"wrote {len(result.questions):,} answers to {out}")


def print_table(rows: list[tuple[str, dict[str, float]]]) -> None:
    """Exact match and F1 x 100, as SQuAD papers print them."""
    width = max(len(name) for name, _ in rows)
    click.echo(f"| {'answers by':<{width}} | {'EM':>5} | {'F1':>5} |")
    click.echo(f"|{'-' * (width + 2)}|{'-' * 7}|{'-' * 7}|")
    for name, metrics in rows:
        click.echo(f"| {name:<{width}} | {100 * metrics['exact_match']:>5.1f} | {100 * metrics['f1']:>5.1f} |")


COMMANDS = [generate, zeroshot]
