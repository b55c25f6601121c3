"""`ctxlm zeroshot` (registered on the main `ctxlm` group): a decoder answers reading-comprehension questions from a
prompt alone, scored beside a no-model heuristic baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ctxlm.errors import UserError

ESCAPED_DEFAULT = "{document}\\n\\n{history}Q: {question}\\nA:"  # DEFAULT_TEMPLATE as typed on a command line


@click.command(epilog="""\b
Examples:
  # 500 SQuAD v1.1 dev questions (a seeded sample), the passage then "Q: ...\\nA:"
  ctxlm zeroshot --model runs/gpt2-wt2-512 --task squad
  # CoQA-style: each question also sees the earlier questions on its paragraph, with their answers
  ctxlm zeroshot --model runs/gpt2-wt2-512 --task coqa-style --limit 300 --out answers.jsonl
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
@click.option("--out", type=click.Path(dir_okay=False), help="write each question's gold and predicted answers "
              "(JSON lines)")
def zeroshot(model, task, template, data, limit, seed, max_answer_tokens, batch_size, device, out) -> None:
    """Zero-shot reading comprehension: a decoder answers from a prompt (GPT-2 §3.5), beside a heuristic."""
    import ctxlm
    from ctxlm.qa.zeroshot import check_template, evaluate, load_questions
    from ctxlm.transfer.finetune import pick_device

    if limit < 0:
        raise UserError(f"--limit {limit}: expected 0 (all) or a positive number of questions")
    if out is not None and not Path(out).parent.is_dir():  # found out now rather than after the run
        raise UserError(f"--out {out}: no folder {Path(out).parent}")
    template = check_template(template.replace("\\n", "\n").replace("\\t", "\t"), history=task == "coqa-style")
    questions, history = load_questions(task, data, limit=limit or None, seed=seed)
    lm = ctxlm.load(model, device=pick_device(device))
    result = evaluate(lm, questions, history=history, template=template, max_answer_tokens=max_answer_tokens,
                      batch_size=batch_size, progress=True)
    print_table([(f"model ({model})", result.model_metrics), ("heuristic (answer type + window)",
                                                              result.heuristic_metrics)])
    click.echo(f"{len(questions):,} questions ({task}, {data or 'SQuAD v1.1 dev'}); prompts cut to the model's "
               f"context: {len(result.truncated):,}")
    if out is not None:
        write_records(Path(out), result.records())
        click.echo(f"wrote {len(questions):,} answers to {out}")


def print_table(rows: list[tuple[str, dict[str, float]]]) -> None:
    """Exact match and F1 x 100, as SQuAD papers print them."""
    width = max(len(name) for name, _ in rows)
    click.echo(f"| {'answers by':<{width}} | {'EM':>5} | {'F1':>5} |")
    click.echo(f"|{'-' * (width + 2)}|{'-' * 7}|{'-' * 7}|")
    for name, metrics in rows:
        click.echo(f"| {name:<{width}} | {100 * metrics['exact_match']:>5.1f} | {100 * metrics['f1']:>5.1f} |")


def write_records(path: Path, records: list[dict]) -> None:
    try:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror})") from None


COMMANDS = [zeroshot]
