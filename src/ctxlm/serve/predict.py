"""/predict: a fine-tuned run's answers, with the probability of every label.

`parse_input` reads one JSON input as the run's task takes it (checked on the event loop, before it joins a batch);
`predict_batch` labels the inputs of several requests at once in the inference thread. Classification, pair,
choice and tagging models (`TaskModel`) give every class's (choice's, tag's) probability, not only the best
one's; multi-label models the labels at or over their threshold and every label's probability; question
answering (`SpanModel`, SQuAD) gives the best spans with theirs.
"""

from __future__ import annotations

from typing import Any

import torch

from ctxlm.serve.limits import Limits, Refused
from ctxlm.transfer.data import Example
from ctxlm.transfer.inputs import TaskBatches, encode_examples
from ctxlm.transfer.model import HeadedModel, TaskModel
from ctxlm.transfer.task import multi_label_result

N_BEST = 5  # answers per question


def input_help(kind: str) -> str:
    return {
        "single": 'a text: "..."',
        "multi": 'a text: "..."',
        "pair": 'two texts: ["first", "second"]',
        "choice": '{"context": "...", "choices": ["...", "..."]}',
        "tag": 'a sentence, "words separated by spaces", or a list of words',
        "span": '{"question": "...", "context": "..."}',
    }[kind]


def task_kind(model: HeadedModel) -> str:
    return model.spec.kind


def parse_input(model: HeadedModel, value: Any, where: str, limits: Limits) -> Example | tuple[str, str]:
    """One input of /predict as the model's task reads it, or a refusal that says what it should look like."""
    kind = task_kind(model)
    bad = Refused(f"{where}: a {model.spec.name} ({kind}) model takes {input_help(kind)}")
    if kind == "span":
        if isinstance(value, dict) and set(value) == {"question", "context"}:
            value = [value["question"], value["context"]]
        texts = _strings(value, 2, 2, bad)
    elif kind in ("single", "multi"):
        texts = _strings([value["text"]] if isinstance(value, dict) and set(value) == {"text"} else [value], 1, 1,
                         bad)
    elif kind == "pair":
        if isinstance(value, str) and value.count("\t") == 1:
            value = value.split("\t")
        texts = _strings(value, 2, 2, bad)
    elif kind == "choice":
        if not (isinstance(value, dict) and set(value) == {"context", "choices"}
                and isinstance(value["choices"], list)):
            raise bad
        texts = _strings([value["context"], *value["choices"]], 3, 1 + limits.texts, bad)
    else:  # tag
        texts = _strings(value.split() if isinstance(value, str) else value, 1, limits.chars, bad)
    for text in texts:
        if len(text) > limits.chars:
            raise Refused(f"{where} has a text of {len(text):,} characters, over the limit of {limits.chars:,}", 413)
    if kind == "span":
        return texts[0], texts[1]
    return Example(tuple(texts), None, where)


def _strings(value: Any, least: int, most: int, bad: Refused) -> list[str]:
    if not isinstance(value, list) or not least <= len(value) <= most or not all(isinstance(v, str) for v in value):
        raise bad
    return value


def input_chars(item: Example | tuple[str, str]) -> int:
    return sum(map(len, item.texts if isinstance(item, Example) else item))


def predict_batch(model: HeadedModel, items: list) -> list[dict]:
    """One result per input (Examples for a TaskModel, (question, context) pairs for question answering)."""
    if not isinstance(model, TaskModel):
        from ctxlm.qa.finetune import answer_questions

        answers = answer_questions(model, items, n_best=N_BEST)
        return [{**best[0], "n_best": best} if best else {"answer": "", "probability": 0.0, "n_best": []}
                for best in answers]
    return classify(model, items)


@torch.inference_mode()
def classify(model: TaskModel, examples: list[Example], batch_size: int = 64) -> list[dict]:
    """Each example's label with its probability, and the probability of every label (choice, or per word tag)."""
    spec = model.spec
    device = next(model.parameters()).device
    encoded = encode_examples(model.tokenizer, spec, examples, decoder=model.decoder, max_length=model.max_length)
    out: list[dict | None] = [None] * len(examples)
    for batch in TaskBatches(encoded, None, spec, model.tokenizer.pad_id, batch_size).eval_batches():
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch).float().cpu()
        for row, i in enumerate(batch["index"].tolist()):
            out[i] = _result(spec, logits[row], batch["slot_mask"][row].cpu(), examples[i])
    return out  # type: ignore[return-value]


def _result(spec, logits: torch.Tensor, slot_mask: torch.Tensor, example: Example) -> dict:
    if spec.regression:
        return {"label": round(float(logits.squeeze(-1)), 4)}
    if spec.kind == "multi":
        return multi_label_result(spec, logits.sigmoid().tolist())
    if spec.kind == "tag":
        probs = logits[slot_mask].softmax(-1)  # (words kept, tags)
        best = probs.max(-1)
        tags = [spec.labels[t] for t in best.indices.tolist()]
        missing = len(example.texts) - len(tags)  # words past max_length: the first tag, no probability
        return {"label": tags + [spec.labels[0]] * missing, "words": list(example.texts),
                "probability": [round(p, 4) for p in best.values.tolist()] + [None] * missing}
    probs = logits.softmax(-1)
    k = int(probs.argmax())
    if spec.kind == "choice":
        kept = probs[: len(example.texts) - 1]
        return {"label": k, "probability": round(float(probs[k]), 4),
                "probabilities": [round(p, 4) for p in kept.tolist()]}
    ranked = sorted(zip(spec.labels, probs.tolist(), strict=True), key=lambda pair: -pair[1])
    return {"label": spec.labels[k], "probability": round(float(probs[k]), 4),
            "probabilities": [{"label": label, "probability": round(p, 4)} for label, p in ranked]}
