"""`ctxlm finetune | evaluate | predict | compare`: `ctxlm.finetune`, `ctxlm.evaluate`, `ctxlm.predict` and
`ctxlm.jobs.compare` with their options."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from ctxlm import jobs
from ctxlm.cli.options import (
    deterministic_option,
    inference_precision_option,
    on_nonfinite_option,
    save_every_minutes_option,
    save_every_option,
    stacked,
    training_precision_option,
)
from ctxlm.errors import UserError
from ctxlm.nn.pooling import POOLINGS
from ctxlm.runlog import logged_to
from ctxlm.textfiles import read_text

TASK_HELP = ("sst2, mrpc, stsb, rte, cola, conll2003, copa, arc_easy, commonsenseqa, imdb (whole reviews, in "
             "windows; dev: 1,000 held-out training reviews), cedr (Russian sentences, multi-label: five "
             "emotions; dev: 10% of train held out) (under $CTXLM_DATA), squad "
             "(question answering: BERT-family span extraction, see --train-file), or csv:PATH for your own "
             ".csv/.tsv/.jsonl file (see --text-column, --label-column, --multi-label)")
STRATEGY_HELP = ("features (frozen backbone, cached features, head only), full, gradual (ULMFiT: the head alone, "
                 "then one more layer group per epoch, top first), discriminative (head at --lr, each group below "
                 "/ 2.6), slanted (ULMFiT triangular schedule), l2sp (pull toward the pretrained weights after "
                 "each step, sp_mode=coupled for the penalty in the loss), ulmfit (gradual + discriminative + "
                 "slanted), chain-thaw (the head, then each group alone bottom up, then all), gpt (full + "
                 "auxiliary LM loss 0.5; decoders), adapters (Houlsby bottlenecks, adapter_dim=64, rate 1e-3), "
                 "lora (rank 8 on q and v, rate 2e-3, merged into the saved weights); adapters and lora need a "
                 "GPT, GPT-2, BERT or ALBERT backbone (not ELMo or Transformer-XL). Layer groups are the "
                 "embeddings, then each layer; where the layers share one set of weights (albert) there are two, "
                 "the embeddings (with their projection) and the shared block, so gradual unfreezing thaws the "
                 "block, every layer at once, then the embeddings, discriminative rates give the block --lr / 2.6 "
                 "and the embeddings / 2.6², and adapters or LoRA in the block are shared by its layers too. "
                 "Override a field: "
                 "'discriminative:lr_decay=2.0', 'l2sp:sp_alpha=10,sp_norm=l1', 'lora:lora_rank=16,lora_targets=qkvo'")


def user_task_options(f):
    """--text-column, --label-column, --pair-column, --dev, --regression, --multi-label: what csv:PATH tasks
    need."""
    return stacked(
        click.option("--text-column", default="text", show_default=True, help="csv: column of the text"),
        click.option("--label-column", default="label", show_default=True, help="csv: column of the label"),
        click.option("--pair-column", help="csv: column of a second text (a pair task)"),
        click.option("--dev", "dev_path", type=click.Path(exists=True, dir_okay=False),
                     help="csv: validation file (default: 10% of the training file held out)"),
        click.option("--regression", is_flag=True, help="csv: the labels are numbers to predict"),
        click.option("--symmetric", is_flag=True,
                     help="csv pair task: the two texts have no order (similarity, paraphrase); decoders then read "
                          "both orderings and add them (GPT §3.3). Default: first text first, as entailment"),
        click.option("--multi-label", is_flag=True,
                     help="csv: each label cell holds zero or more labels (an empty cell: none), see "
                          "--label-separator; the label set is the training file's"),
        click.option("--label-separator", default=",", show_default=True,
                     help="csv --multi-label: what separates the labels in a cell"),
    )(f)


def squad_options(f):
    """--train-file, --dev-file, --holdout-articles, --doc-stride, ...: what --task squad reads."""
    return stacked(
        click.option("--train-file", type=click.Path(exists=True, dir_okay=False),
                     help="squad: SQuAD-format JSON (.json/.json.gz) [default: the SQuAD v1.1 dev file under "
                          "$CTXLM_DATA/squad_v1, split by article]"),
        click.option("--dev-file", type=click.Path(exists=True, dir_okay=False),
                     help="squad: validation JSON [default: --holdout-articles whole articles of the train file]"),
        click.option("--holdout-articles", default=8, show_default=True,
                     help="squad: articles held out for validation when no --dev-file is given"),
        click.option("--doc-stride", default=128, show_default=True,
                     help="squad: tokens between the starts of a long passage's overlapping windows"),
        click.option("--max-answer-tokens", default=30, show_default=True, help="squad: longest answer span"),
        click.option("--no-answer", is_flag=True,
                     help="squad: SQuAD v2 data, where a question may have no answer and the model may say so"),
    )(f)


def training_options(f, *, strategy: bool = True):
    f = stacked(
        click.option("--task", required=True, help=TASK_HELP),
        *([click.option("--strategy", default="full", show_default=True, help=STRATEGY_HELP)] if strategy else []),
        click.option("--train-size", type=int, help="train on a random subset of this many examples"),
        click.option("--epochs", type=float, help="[default: 3; 20 for features]"),
        click.option("--min-steps", type=int,
                     help="train at least this many optimizer steps: with few labels, epochs x batches is too few "
                          "to learn from (100 labels, batch 32, 3 epochs: 12 steps). The extra steps are more "
                          "passes over the same labels; warm-up and decay, gradual unfreezing (a stage an epoch) "
                          "and the evaluations spread over them as over the epochs "
                          "[default: none, epochs x batches per epoch]"),
        click.option("--batch-size", default=32, show_default=True),
        click.option("--lr", type=float, help="peak rate: the head's, and the backbone's unless discriminative "
                                               "rates divide it going down; adapters and lora train at their own "
                                               "(1e-3, 2e-3; set it as 'lora:lr=1e-3') [default: 5e-5 encoders, "
                                               "6.25e-5 GPT]"),
        click.option("--head-lr", type=float, help="rate of the new head [default: --lr; 1e-3 for features]"),
        click.option("--max-length", type=int, help="tokens per input sequence [default: 128; squad: 384]"),
        click.option("--pooling", type=click.Choice(POOLINGS),
                     help="sequence vector; concat: ULMFiT's [last, max, mean] [default: mean for encoders, last "
                          "(<|extract|>) for decoders]"),
        click.option("--long-text", help="a single text longer than --max-length: truncate; head-tail (its first "
                                         "128 of every 510 tokens and its last, Sun et al. 2019; 'head-tail:head=N'); "
                                         "windows (all of it, in windows whose vectors are pooled into one, the "
                                         "gradient through every window; 'windows:stride=N' overlaps them) "
                                         "[default: windows for imdb, else truncate]"),
        click.option("--threshold", default="0.5", show_default=True,
                     help="multi-label tasks (cedr, csv --multi-label): predict a label where its probability "
                          "reaches this; 'tuned': the threshold with the best macro-F1 on dev (never test), saved "
                          "with the model for evaluate and predict"),
        click.option("--evals-per-epoch", default=1, show_default=True,
                     help="dev evaluations an epoch; 0: one, after the last step (saves the passes over dev that "
                          "nothing reads)"),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... (auto: cuda if any)"),
        click.option("--max-minutes", type=float, help="stop (with a checkpoint) after this much training time"),
        save_every_option(None, "write the checkpoint (OUT/checkpoint, from which an interrupted run resumes) "
                                "every this many steps, also in the middle of an epoch [default: at each "
                                "evaluation, i.e. --evals-per-epoch times an epoch]"),
        save_every_minutes_option(),
        training_precision_option(),
        on_nonfinite_option(),
        deterministic_option(),
        click.option("--group-by-length", is_flag=True,
                     help="training batches of similar lengths: less padding for texts of mixed lengths, but less "
                          "mixed batches where length goes with the label (squad windows are always grouped)"),
    )(f)
    return squad_options(user_task_options(f))


SQUAD_OPTIONS = ("train_file", "dev_file", "holdout_articles", "doc_stride", "max_answer_tokens", "no_answer")
USER_TASK_FIELDS = {"text_column": "text_column", "label_column": "label_column", "pair_column": "text_pair_column",
                    "dev_path": "dev_path", "regression": "regression", "symmetric": "symmetric",
                    "multi_label": "multi_label", "label_separator": "label_separator"}  # option: field


def _user_task(options: dict) -> dict:
    """The csv:PATH options, taken out of a command's options, as the fields of `UserTaskOptions`."""
    return {field: options.pop(option) for option, field in USER_TASK_FIELDS.items()}


def _job_options(options: dict) -> dict:
    """A command's training options as keywords of `ctxlm.finetune`: FinetuneConfig's fields, the csv:PATH and
    squad options as its `user_task` and `squad`."""
    user_task = _user_task(options)
    squad = {name: options.pop(name) for name in SQUAD_OPTIONS}
    return {**options, "user_task": user_task, "squad": squad}


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        click.echo(f"{key:>24}  {value:.4f}" if isinstance(value, float) else f"{key:>24}  {value}")


@click.command(epilog="""\b
Examples:
  # the packaged MiniLM, all of SST-2, full fine-tuning (a GPU helps: about 67k examples x 3 epochs)
  ctxlm finetune --model minilm --task sst2 --out runs/minilm-sst2
  # feature extraction: the backbone runs once, only a linear head trains
  ctxlm finetune --model minilm --task sst2 --strategy features --train-size 2000 --out runs/sst2-features
  # ULMFiT's recipe on a GPT-2 you pretrained, 1,000 examples
  ctxlm finetune --model runs/gpt2-wt2 --task sst2 --strategy ulmfit --train-size 1000 --out runs/gpt2-sst2
  # 100 IMDb reviews: 3 epochs would be 12 steps; at least 200 (64 passes over them), dev once at the end
  ctxlm finetune --model runs/gpt2-imdb --task imdb --train-size 100 --strategy ulmfit --lr 2e-3 --min-steps 200 \
      --evals-per-epoch 0 --out runs/imdb-100
  # your own data: a CSV with columns review,stars
  ctxlm finetune --model minilm --task csv:reviews.csv --text-column review --label-column stars --out runs/rev
  # question answering: MiniLM on 40 SQuAD dev articles, validated on the other 8
  ctxlm finetune --model minilm --task squad --epochs 2 --out runs/minilm-squad
  # ... or on the full SQuAD v1.1 training set
  ctxlm finetune --model path/to/bert-base-uncased --task squad --train-file train-v1.1.json --dev-file dev-v1.1.json \\
      --out runs/bert-squad
  # checkpoints every 500 steps and every 5 minutes; after a crash or kill, the same command with --resume
  ctxlm finetune --model minilm --task sst2 --save-every 500 --save-every-minutes 5 --out runs/minilm-sst2
  ctxlm finetune --model minilm --task sst2 --save-every 500 --save-every-minutes 5 --out runs/minilm-sst2 --resume
""")
@click.option("--model", required=True, help="model folder, run folder, 'minilm', or a published name (gpt2, ...)")
@training_options
@click.option("--seed", default=0, show_default=True, help="seeds the subset, the head, dropout and batch order")
@click.option("--out", type=click.Path(), required=True,
              help="run folder: model/, metrics.json, metrics.jsonl, loss.png")
@click.option("--resume", is_flag=True, help="continue an interrupted (killed, stopped) run from OUT/checkpoint: it "
              "ends with the weights, logged losses and dev figures of a run that was never interrupted")
@logged_to("out")
def finetune(out, resume, **options) -> None:
    """Fine-tune a pretrained model on a task with a transfer strategy; report dev (and test) metrics."""
    metrics = jobs.finetune(out=out, resume=resume, **_job_options(options))
    _print_metrics(metrics)
    click.echo(f"model, metrics.json and loss.png in {out}")


@click.command(epilog="""\b
Examples:
  ctxlm evaluate runs/minilm-sst2
  ctxlm evaluate runs/minilm-conll --split test
  # a question-answering model: the held-out SQuAD articles (as finetune split them), or any SQuAD file
  ctxlm evaluate runs/minilm-squad
  ctxlm evaluate runs/bert-squad --squad-file dev-v1.1.json
""")
@click.argument("model")
@click.option("--task", help="task to evaluate on [default: the one the model was fine-tuned for]")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="dev", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@inference_precision_option()
@click.option("--squad-file", type=click.Path(exists=True, dir_okay=False),
              help="squad: SQuAD-format JSON to score on, whole [default: the held-out articles of the SQuAD v1.1 "
                   "dev file, --split dev, or the others, --split train]")
@click.option("--holdout-articles", default=8, show_default=True,
              help="squad: articles held out when finetune split the default file")
@user_task_options
def evaluate(model, task, split, batch_size, device, precision, squad_file, holdout_articles, **user) -> None:
    """Metrics of a fine-tuned model on a labelled split."""
    _print_metrics(jobs.evaluate(model, task=task, split=split, batch_size=batch_size, device=device,
                                 dtype=precision, squad_file=squad_file, holdout_articles=holdout_articles,
                                 csv_options=_user_task(user)))


@click.command(epilog="""\b
Input, one example per line: a text; "text_a<TAB>text_b" for pair tasks; {"context": ..., "choices": [...]}
for multiple choice; space-separated words for tagging; a text for multi-label ("labels" and every label's
"probabilities" out); {"question": ..., "context": ...} for question answering (or --question with --context /
--context-file). Output: one JSON object per line.
Examples:
  echo "a gorgeous, witty, seductive movie" | ctxlm predict runs/minilm-sst2
  ctxlm predict runs/minilm-conll --input sentences.txt > tags.jsonl
  ctxlm predict runs/minilm-squad --question "Who wrote it?" --context "The book was written by Ada Lovelace."
""")
@click.argument("model")
@click.option("--input", "input_file", type=click.File(encoding="utf-8"), default="-", show_default=True,
              help="file to label (- = stdin)")
@click.option("--question", help="question answering: the question (with --context or --context-file)")
@click.option("--context", help="question answering: the passage that holds the answer")
@click.option("--context-file", type=click.Path(exists=True, dir_okay=False), help="question answering: the "
              "passage, read from a UTF-8 file")
@click.option("--n-best", default=1, show_default=True, help="question answering: answers per question")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@inference_precision_option()
def predict(model, input_file, question, context, context_file, n_best, batch_size, device, precision) -> None:
    """Label new inputs with a fine-tuned model, or answer questions about a passage."""
    if question is not None:
        if (context is None) == (context_file is None):
            raise UserError("--question needs the passage: --context TEXT or --context-file FILE (one of them)")
        inputs = [(question, context if context is not None else read_text(Path(context_file)))]
    else:
        inputs = input_file
    for record in jobs.predict(model, inputs, n_best=n_best, batch_size=batch_size, device=device, dtype=precision,
                               source=getattr(input_file, "name", "<stdin>")):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


@click.command(epilog="""\b
Examples:
  # the strategy table: 1,000 SST-2 examples, 3 seeds, three backbones
  ctxlm compare --task sst2 --train-size 1000 --model minilm --model runs/gpt2-wt2 \\
      --strategies features,full,gradual,discriminative,slanted,l2sp --seeds 0,1,2 --out runs/compare-sst2
""")
@click.option("--model", "models", multiple=True, required=True, help="a backbone (repeat for several)")
@functools.partial(training_options, strategy=False)
@click.option("--strategies", default="features,full,gradual,discriminative,slanted,l2sp", show_default=True,
              help="comma-separated strategies (see finetune --help)")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds")
@click.option("--out", "out", type=click.Path(), required=True,
              help="folder of runs (finished ones are reused, interrupted ones resume from their checkpoint), "
                   "compare.md, compare.json, compare.png")
@logged_to("out")
def compare(models, strategies, seeds, out, **options) -> None:
    """Compare transfer strategies (× seeds × backbones) on one task: mean ± std table and plot."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    strategy_list = [s.strip() for s in strategies.split(",") if s.strip()]
    options = _job_options(options)
    jobs.compare(list(models), options.pop("task"), strategies=strategy_list, seeds=seed_list, out=out,
                 say=click.echo, **options)


COMMANDS = [finetune, evaluate, predict, compare]
