"""Every job of the command line as one Python call: `ctxlm pretrain ...` is `ctxlm.pretrain(...)`, `ctxlm finetune`
`ctxlm.finetune(...)`, and so on; the command line only parses options and prints what these return.

    ctxlm.pretrain(model="gpt2", data="wikitext2", out="runs/x", steps=600)      # → the final figures, a sample
    ctxlm.finetune(model="minilm", task="sst2", strategy="ulmfit", out="runs/y")  # → dev (and test) metrics
    ctxlm.evaluate("runs/y", split="dev")                                         # → metrics
    ctxlm.predict("runs/y", ["a gorgeous, witty movie"])                          # → one dict per input

Each function is a thin layer over its job (pretrain/, transfer/, qa/): it builds the job's configuration from
keywords and returns the job's result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxlm.api import load
from ctxlm.errors import UserError
from ctxlm.generate import generate
from ctxlm.paths import cache_root
from ctxlm.precision import device_of, inference_context
from ctxlm.pretrain import job
from ctxlm.pretrain.permutation_lm import predict_position
from ctxlm.train import pick_device

# transfer/ and qa/ are imported inside the functions: their metrics (scipy, scikit-learn, seqeval) take seconds to
# import, which `import ctxlm` and `ctxlm --help` should not pay (`ctxlm` exports these functions).

PROMPT = "In 1990 , the"  # WikiText's own tokenisation style: the pretraining job's default corpus


@functools.wraps(job.pretrain, assigned=())  # its signature (inspect, help) is the job's
def pretrain(model: str | None = None, data: str | Path = "wikitext2", *, out: str | Path, seed: int = 0,
             text_column: str | None = None, pair_column: str | None = None, **options) -> dict[str, Any] | None:
    data = task_corpus(data, text_column=text_column, pair_column=pair_column)
    result = job.pretrain(model, data, out=out, seed=seed, **options)
    if result is not None:
        result |= glimpse(result["objective"], result["model"], seed)
    return result


pretrain.__doc__ = f"""{job.pretrain.__doc__.rstrip()}

    `data` may also be "task:NAME", the training texts of a fine-tuning task (sst2, mrpc, ...) without their
    labels, or "csv:PATH", the texts of your own .csv, .tsv or .jsonl file: its `text_column` (default "text")
    and `pair_column`, read as `ctxlm finetune --task csv:PATH` reads them, less the rows finetune holds out as
    dev; "imdb" is IMDb's training and unlabelled reviews, one a document, validated on the imdb task's dev
    reviews (see `task_corpus`).

    The result also shows what the model learned: a "sample" continuing {PROMPT!r} for a causal LM ({{"prompt",
    "continuation"}}), a "fill_in" of a masked word for a masked LM ({{"text", "best"}}: its five likeliest
    words), "next_words" for a biLM ({{"left", "forward", "right", "backward"}}: the forward LM's five likeliest
    words after `left`, the backward LM's before `right`).
    """


def task_corpus(data: str | Path, *, text_column: str | None = None,
                pair_column: str | None = None) -> str | Path:
    """`data` as the pretraining job reads it: "task:NAME" and "csv:PATH" become a text file of the task's
    training texts (`ctxlm.transfer.data.task_texts`: no labels, no dev or test text); a data set whose folder
    holds a task's files rather than text (`ctxlm.transfer.data.CORPORA`: imdb, whose training and unlabelled
    reviews are the text, its task's dev reviews the validation text) becomes a folder of train.txt and
    valid.txt; other data as given.

    A file holds one example per paragraph: its texts one per line (a pair's two texts, a question's context
    then its choices), line breaks inside a text made spaces, and a blank line between examples. The corpus
    reader makes the file one document, which the causal LM and the biLM read as one stream of lines. The masked
    LM's next-sentence prediction cuts documents at blank lines, so each example is a document of its own:
    IsNext pairs what belongs together (a premise and its hypothesis, a question and its choices, the halves of
    a single text) and NotNext a text with another example's, never two unrelated examples as if one followed
    the other. The files are written once, atomically, under $CTXLM_CACHE/task-text, named by the task and a
    hash of their text: the same text is the same file, so its tokens, cached by file, are reused.
    """
    from ctxlm.transfer.data import CORPORA, UserTaskOptions, task_texts

    name = str(data) if isinstance(data, str) else ""
    columns = text_column is not None or pair_column is not None
    if not name.startswith(("task:", "csv:")):
        if columns:
            raise UserError("--text-column and --pair-column apply to --data csv:PATH only")
        if name not in CORPORA or Path(name).exists():  # a folder of that name here is the user's
            return data
        train, valid = (_paragraphs((text,) for text in texts) for texts in CORPORA[name]())
        files = {"train.txt": _file_text(train), "valid.txt": _file_text(valid)}
        folder = cache_root() / "task-text" / f"{name}-{_hash(*files.values())}"
        for file, text in files.items():
            _write_once(folder / file, text)
        _say(f"{name}: {len(train):,} texts to train on, {len(valid):,} held out for validation ({folder})")
        return folder
    task = name.removeprefix("task:")
    if not task.startswith("csv:") and columns:
        raise UserError(f"--text-column and --pair-column apply to --data csv:PATH only, not {name}")
    options = UserTaskOptions(text_column=text_column or "text", text_pair_column=pair_column or None)
    paragraphs = _paragraphs(task_texts(task, options if task.startswith("csv:") else None))
    if not paragraphs:
        raise UserError(f"{name}: no text in its training examples")
    label = re.sub(r"[^\w.-]+", "_", "csv-" + Path(task[4:]).name if task.startswith("csv:") else task)
    text = _file_text(paragraphs)
    path = cache_root() / "task-text" / f"{label}-{_hash(text)}.txt"
    _write_once(path, text)
    _say(f"{name}: the texts of {len(paragraphs):,} training examples, without labels ({path})")
    return path


def _paragraphs(examples: Iterable[tuple[str, ...]]) -> list[str]:
    """One paragraph per example with some text: its texts' lines (`_one_line`), one per line."""
    return ["\n".join(lines) for texts in examples if (lines := [line for t in texts if (line := _one_line(t))])]


def _file_text(paragraphs: list[str]) -> str:
    """The paragraphs, a blank line between two."""
    return "\n\n".join(paragraphs) + "\n"


def _hash(*texts: str) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def _write_once(path: Path, text: str) -> None:
    """`text` into `path` unless it is there: written to a temporary file and renamed, so that a reader (another
    process under torchrun) sees all of it or nothing."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _say(text: str) -> None:
    """Under torchrun every process makes (or finds) the text; rank 0 says so."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


def _one_line(text: str) -> str:
    """A text on one line: its lines (as str.splitlines, which the masked LM's reader splits on), stripped and
    joined by spaces; "" for a blank text, which the corpus leaves out."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def glimpse(objective: str, model: nn.Module, seed: int) -> dict[str, Any]:
    """A pretrained model's sample, fill-in or next words (see `pretrain`)."""
    if objective in (job.CAUSAL_LM, job.SEGMENTS):
        continuation = generate(model, PROMPT, max_new_tokens=40, temperature=0.8, top_k=40, seed=seed)[0]
        return {"sample": {"prompt": PROMPT, "continuation": continuation}}
    if objective == job.MASKED_LM:  # written with the tokenizer's own mask token: BERT's [MASK], RoBERTa's <mask>
        mask = model.tokenizer.special_tokens.get("mask", "[MASK]")
        return {"fill_in": fill_in(model, f"the city is on the {mask} of the river .")}
    if objective == job.PERMUTATION_LM:
        return {"fill_in": fill_in_by_permutation(model, "the city is on the", "of the river .")}
    return {"next_words": next_words(model, PROMPT, "of the river .")}


@torch.no_grad()
def fill_in(model: nn.Module, text: str, k: int = 5) -> dict[str, Any]:
    """The k likeliest words for the mask token in `text`, by a masked LM."""
    tok = model.eval().tokenizer
    enc = tok.encode_text(text)
    ids = torch.tensor([enc.ids], device=next(model.parameters()).device)  # a GPU's under torchrun
    logits = model(ids).logits[0]
    best = logits[enc.ids.index(tok.mask_id)].topk(k).indices.tolist()
    return {"text": text, "best": [tok.decode([i]) for i in best]}


@torch.no_grad()
def fill_in_by_permutation(model: nn.Module, left: str, right: str, k: int = 5) -> dict[str, Any]:
    """The k likeliest tokens between `left` and `right` by a permutation LM (XLNet): the order that predicts the
    gap last, from every other token."""
    tok = model.eval().tokenizer
    left_ids = tok.encode(left)
    stand_in = next(i for i in (tok.eos_id, tok.pad_id, 0) if i is not None)  # never read: the gap is hidden
    ids = torch.tensor([[*left_ids, stand_in, *tok.encode(" " + right)]], device=next(model.parameters()).device)
    best = predict_position(model, ids, len(left_ids))[0].topk(k).indices.tolist()
    return {"text": f"{left} ___ {right}", "best": [tok.decode([i]) for i in best]}


@torch.no_grad()
def next_words(model: nn.Module, left: str, right: str, k: int = 5) -> dict[str, Any]:
    """Both directions of a biLM: the forward LM's k likeliest words after `left`, the backward LM's before
    `right`."""
    tok = model.eval().tokenizer
    device = next(model.parameters()).device  # a GPU's under torchrun
    ids = (torch.tensor([[tok.bos_id, *tok.encode(left)]], device=device),
           torch.tensor([[*tok.encode(right), tok.eos_id]], device=device))
    forward_top = model(ids[0]).hidden.last[0, -1, :model.config.dim]
    backward_top = model(ids[1]).hidden.last[0, 0, model.config.dim:]
    best = [model.log_probs(state).topk(k).indices.tolist() for state in (forward_top, backward_top)]
    words = [[tok.decode([i], skip_special_tokens=False) for i in b] for b in best]
    return {"left": left, "forward": words[0], "right": right, "backward": words[1]}


def finetune(model: str, task: str, *, out: str | Path, strategy: str = "full", resume: bool = False,
             **options) -> dict[str, Any]:
    """Fine-tune `model` (a model or run folder, "minilm", a published name) on `task` (sst2, ..., squad,
    csv:PATH) with a transfer `strategy`; `out` gets the model, metrics.json, metrics.jsonl and loss.png. Returns
    the final dev (and test) metrics.

    `options`: the fields of `ctxlm.transfer.finetune.FinetuneConfig` (seed, train_size, epochs, min_steps,
    batch_size, lr, head_lr, max_length, pooling, device, precision, ...); `user_task` (how to read a csv:PATH task)
    and `squad` as their option classes or as dicts of their fields. `resume` continues an interrupted run from
    out/checkpoint, which is written at each evaluation (or every `save_every` steps) and every
    `save_every_minutes` (10).
    """
    from ctxlm.transfer.finetune import finetune as run

    return run(finetune_config(model, task, strategy=strategy, **options), out, resume=resume)


def finetune_config(model: str, task: str, **options):
    """A `FinetuneConfig`, `user_task` and `squad` given as dicts or as their option classes."""
    from ctxlm.qa.options import SquadOptions  # importing ctxlm.qa also registers its task (squad) with transfer/
    from ctxlm.transfer.config import FinetuneConfig

    if isinstance(options.get("user_task"), dict):
        options["user_task"] = _user_task(options["user_task"])
    if "squad" in options:  # the squad task's options (FinetuneConfig.task_options["squad"])
        squad = options.pop("squad")
        squad = SquadOptions(**squad) if isinstance(squad, dict) else squad
        options["task_options"] = {**options.get("task_options", {}), "squad": squad}
    return FinetuneConfig(model=model, task=task, **options)


def _user_task(options):
    from ctxlm.transfer.data import UserTaskOptions

    return UserTaskOptions(**options) if isinstance(options, dict) else options


def compare(models: list[str], task: str, *, strategies: list[str], seeds: list[int], out: str | Path,
            say: Callable[[str], None] = print, **options) -> list[dict]:
    """Fine-tune every model with every strategy and seed on `task` (finished runs in `out` are reused); write
    compare.md, compare.json and compare.png to `out`; return the summary rows (mean ± std per model and
    strategy). `options` as for `finetune`."""
    from ctxlm.transfer.compare import compare as run
    from ctxlm.transfer.strategies import get_strategy

    for name in strategies:
        get_strategy(name)  # fail before the first run, not after hours
    return run(finetune_config(models[0], task, seed=seeds[0], **options), list(models), list(strategies),
               list(seeds), out, say=say)


def evaluate(model: str | Path, *, task: str | None = None, split: str = "dev", batch_size: int = 64,
             device: str = "auto", squad_file: str | None = None, holdout_articles: int = 8,
             csv_options=None, dtype: str | torch.dtype | None = "auto") -> dict[str, Any]:
    """Metrics of a fine-tuned model (its folder) on a labelled split of `task` (default: the task it was
    fine-tuned on; `csv_options` for a csv:PATH task, a dict or `UserTaskOptions`). A question-answering model
    is scored on `squad_file`, whole, or else on finetune's split of the default SQuAD file (`holdout_articles`);
    its metrics then include the number of "questions". `dtype`: "auto" (bf16 autocast where the device has bf16
    units, else fp32; see `ctxlm.precision`), "fp32" or "bf16"."""
    import ctxlm.qa  # noqa: F401 - registers question answering's task and model with transfer/
    from ctxlm.transfer.model import load_finetuned
    from ctxlm.transfer.predict import evaluate as run

    task_model = load_finetuned(model, device=pick_device(device))
    return run(task_model, task, split, batch_size=batch_size, dtype=dtype, squad_file=squad_file,
               holdout_articles=holdout_articles,
               csv_options=_user_task(csv_options) if csv_options is not None else None)


def predict(model: str | Path, inputs: Iterable[str] | list[tuple[str, str]], *, n_best: int = 1,
            batch_size: int = 64, device: str = "auto", source: str = "<inputs>",
            dtype: str | torch.dtype | None = "auto") -> list[dict]:
    """Label inputs with a fine-tuned model (its folder): one JSON-ready dict per input.

    `inputs` are lines as `ctxlm predict` reads them: a text; "text_a<TAB>text_b" for pair tasks;
    {"context": ..., "choices": [...]} for multiple choice; space-separated words for tagging; for question
    answering {"question": ..., "context": ...}, or (question, context) pairs. A question's dict holds its best
    answer and, with `n_best` > 1, the n best; a multi-label text's its "labels" and every label's
    "probabilities". `source` names the inputs in error messages. `dtype`: as for
    `evaluate`."""
    import ctxlm.qa  # noqa: F401 - registers question answering's task and model with transfer/
    from ctxlm.transfer.model import TaskModel, load_finetuned
    from ctxlm.transfer.predict import parse_inputs
    from ctxlm.transfer.predict import predict as run

    task_model = load_finetuned(model, device=pick_device(device))
    pairs = isinstance(inputs, list | tuple) and bool(inputs) and all(isinstance(i, tuple) for i in inputs)
    if not isinstance(task_model, TaskModel):
        from ctxlm.qa.finetune import answer_questions, read_pairs

        questions = list(inputs) if pairs else _decoded(lambda: read_pairs(inputs, source), source)
        with inference_context(dtype, device_of(task_model)):
            answers = answer_questions(task_model, questions, n_best=n_best, batch_size=batch_size)
        return [{"question": q, **best[0], **({"n_best": best} if n_best > 1 else {})}
                for (q, _), best in zip(questions, answers, strict=True)]
    if pairs:
        raise UserError(f"questions are for question-answering models; {model} is a {task_model.spec.kind} model")
    examples = _decoded(lambda: parse_inputs(inputs, task_model.spec, source), source)
    return [{"input": list(example.texts), **result}
            for example, result in zip(examples, run(task_model, examples, batch_size=batch_size, dtype=dtype),
                                       strict=True)]


def _decoded(read, name: str):
    try:
        return read()
    except UnicodeDecodeError as err:
        raise UserError(f"{name}: not UTF-8 text ({err})") from None


def zeroshot(model: str | nn.Module, task: str = "squad", *, template: str | None = None,
             data: str | Path | None = None, limit: int | None = 500, seed: int = 0, max_answer_tokens: int = 24,
             batch_size: int = 16, device: str = "auto", progress: bool = False,
             dtype: str | torch.dtype | None = "auto", out: str | Path | None = None, resume: bool = False):
    """Zero-shot reading comprehension (GPT-2 §3.5): a decoder answers SQuAD questions (`task` "squad") or
    questions after the earlier turns of their conversation ("coqa-style") from a prompt alone, beside a no-model
    heuristic. `data`: a SQuAD or CoQA file (default SQuAD v1.1 dev under $CTXLM_DATA); `limit` questions, a
    seeded sample (None or 0: all). Returns a `ctxlm.qa.zeroshot.Evaluation` (model_metrics, heuristic_metrics,
    questions, truncated, records()). `dtype`: as for `evaluate`. `out`: a JSON-lines file that gets each
    question's record as the answers come; `resume` continues the one an interrupted run left, after its last
    complete record (see `ctxlm.qa.zeroshot.evaluate`)."""
    from ctxlm.qa.zeroshot import DEFAULT_TEMPLATE, check_template, evaluate, load_questions

    template = check_template(DEFAULT_TEMPLATE if template is None else template, history=task == "coqa-style")
    questions, history = load_questions(task, data, limit=limit or None, seed=seed)
    lm = load(model, device=pick_device(device)) if isinstance(model, str | Path) else model
    return evaluate(lm, questions, history=history, template=template, max_answer_tokens=max_answer_tokens,
                    batch_size=batch_size, progress=progress, dtype=dtype, out=out, resume=resume)
