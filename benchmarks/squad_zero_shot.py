"""Zero-shot reading comprehension on SQuAD v1.1 dev: a decoder's greedy answers vs the answer-type heuristic.

    python benchmarks/squad_zero_shot.py --model runs/gpt2-wt2-512 --limit 300 --task coqa-style
    python benchmarks/squad_zero_shot.py --model runs/gpt2-wt2-512 --heldout --limit 0   # finetune's 8 articles

The model reads the passage (coqa-style: then the paragraph's earlier questions with their gold answers) and
"Q: <question>\\nA:", and its continuation up to the first line break is the answer (`ctxlm.qa.zeroshot`); the
baseline needs no model (a name for who, a date for when, a number for how many, ..., picked by the question
words around it). Both are scored with the official SQuAD exact match and F1, x 100, on the same seeded sample
of questions. For scale: GPT-2's paper reports 55 F1 on CoQA (its dev set, conversational answers) with its
largest, 1.5B-parameter model; a small model pretrained for minutes on WikiText-2 should be expected to sit
below the heuristic.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine_line

import ctxlm
from ctxlm.qa.finetune import squad_splits
from ctxlm.qa.options import SquadOptions
from ctxlm.qa.zeroshot import TASKS, evaluate, load_questions, sample_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/gpt2-wt2-512", help="a decoder: run folder, model folder, gpt2")
    parser.add_argument("--limit", type=int, default=300, help="questions, a seeded sample of SQuAD v1.1 dev")
    parser.add_argument("--task", choices=TASKS, default="squad")
    parser.add_argument("--data", help="another SQuAD or CoQA file")
    parser.add_argument("--heldout", action="store_true",
                        help="only the questions of the 8 articles that `ctxlm finetune --task squad` holds out, so "
                             "that the figures sit beside the fine-tuned model's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-answer-tokens", type=int, default=24)
    args = parser.parse_args()

    questions, history = load_questions(args.task, args.data, limit=None if args.heldout else args.limit)
    if args.heldout:
        held = {q.id for q in squad_splits(SquadOptions())[1]}
        questions = sample_questions([q for q in questions if q.id in held], args.limit or None, seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ctxlm.load(args.model, device=device)
    start = time.perf_counter()
    result = evaluate(model, questions, history=history, batch_size=args.batch_size,
                      max_answer_tokens=args.max_answer_tokens, progress=True)
    taken = time.perf_counter() - start

    print(f"\n{len(questions):,} questions of {args.data or 'SQuAD v1.1 dev'} ({args.task}), model {args.model} "
          f"(context {model.config.max_positions}), {len(result.truncated):,} prompts cut to fit; "
          f"{taken:.1f} s on {device}\n")
    print("| answers by | EM x100 | F1 x100 |")
    print("|---|---:|---:|")
    for name, metrics in [(f"zero-shot {args.model}", result.model_metrics),
                          ("heuristic (answer type + window)", result.heuristic_metrics)]:
        print(f"| {name} | {100 * metrics['exact_match']:.1f} | {100 * metrics['f1']:.1f} |")
    print(f"\n{machine_line()}")


if __name__ == "__main__":
    main()
