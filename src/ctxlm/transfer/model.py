"""A pretrained model with a task head, and its folder: the backbone checkpoint plus task.json and head weights.

The folder stays a loadable ctxlm checkpoint (`ctxlm.load` gives the fine-tuned backbone, e.g. for embeddings),
while `load_finetuned` gives the whole model back, by the class registered for its head kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ctxlm.api import load
from ctxlm.checkpoint import load_weights, save
from ctxlm.errors import UserError
from ctxlm.nn.long_text import LongText
from ctxlm.nn.pooling import POOLINGS, pooled_width
from ctxlm.transfer.data import TaskSpec
from ctxlm.transfer.heads import TASK_KINDS, TaskHead, extract_features

TASK_FILE = "task.json"
HEAD_FILE = "head.safetensors"


def default_pooling(model: nn.Module) -> str:
    """Decoders: the last token (<|extract|>), the only one that has seen the whole input; so too an encoder that
    sums a text up at its last token (XLNet's <cls>, `summary_last`). Other encoders: the mean of the tokens,
    which suits sentence-embedding encoders (MiniLM) and fine-tunes as well as [CLS]."""
    return "last" if model.config.causal or model.config.summary_last else "mean"


def add_task_tokens(model: nn.Module) -> None:
    """Give a decoder GPT's <|start|>, <|delimiter|>, <|extract|> (§3.3) and grow its token embeddings to match.

    New rows start as N(0, init_std), like the rest of the embeddings; the LM head is tied, so it grows too.
    """
    added = model.tokenizer.add_task_tokens()
    if not added:
        return
    old = model.backbone.embed.tokens
    grown = nn.Embedding(old.num_embeddings + added, old.embedding_dim, device=old.weight.device,
                         dtype=old.weight.dtype)
    with torch.no_grad():
        grown.weight.normal_(0.0, model.config.init_std)
        grown.weight[:old.num_embeddings] = old.weight
    model.backbone.embed.tokens = grown
    model.config.vocab_size = grown.num_embeddings


class HeadedModel(nn.Module):
    """A pretrained model `lm` with a task `head`, saved as one folder: the backbone's checkpoint (so that
    `ctxlm.load` still reads it) + TASK_FILE (what `task_config` returns) + the head's weights.

    A subclass names the head kinds it reads back (`kinds`: task.json's "spec" → "kind") and `load`s its folder;
    defining it registers it with `load_finetuned`."""

    lm: nn.Module
    head: nn.Module
    kinds: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = "fine-tuned"  # what error messages call it: "a question-answering model"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _MODELS.update(dict.fromkeys(cls.__dict__.get("kinds", ()), cls))

    def task_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> HeadedModel:
        raise NotImplementedError

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return self.lm.layer_groups()

    def save_checkpoint(self, path: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
        def write_head(folder: Path) -> None:
            (folder / TASK_FILE).write_text(json.dumps(self.task_config(), indent=2) + "\n")
            save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                      folder / HEAD_FILE)
            if extra is not None:
                extra(folder)

        return save(self.lm, path, extra=write_head)

    def load_checkpoint_weights(self, path: str | Path) -> None:
        path = Path(path)
        load_weights(self.lm, path / "model.safetensors")
        load_weights(self.head, path / HEAD_FILE)


def finetuned_folder(path: str | Path) -> tuple[Path, dict]:
    """A fine-tuned model folder (or a run folder holding one in model/ or checkpoint/) and its task config."""
    path = Path(path)
    for sub in ("model", "checkpoint"):
        if (path / sub / TASK_FILE).is_file():
            path = path / sub
            break
    if not (path / TASK_FILE).is_file():
        raise UserError(f"{path}: not a fine-tuned model folder (no {TASK_FILE}; `ctxlm finetune` writes one)")
    return path, json.loads((path / TASK_FILE).read_text())


_MODELS: dict[str, type[HeadedModel]] = {}  # head kind → the HeadedModel class that reads it
_DISCOVERED: list[bool] = []


def discover_tasks() -> None:
    """Import the tasks that live above transfer/ (SQuAD in qa/) or in other packages, once: they register
    themselves on import, and their entry points (group "ctxlm.tasks", see pyproject.toml) name the module, so
    transfer/ never imports them."""
    if not _DISCOVERED:
        _DISCOVERED.append(True)
        for entry in entry_points(group="ctxlm.tasks"):
            entry.load()


def load_finetuned(path: str | Path, *, device: str | torch.device = "cpu") -> HeadedModel:
    """Whatever `ctxlm finetune` saved, by the class registered for its head kind: a `TaskModel`, or for question
    answering a `SpanModel` (defined, and so registered, by the QA layer above)."""
    folder, config = finetuned_folder(path)
    kind = config["spec"]["kind"]
    discover_tasks()
    if kind not in _MODELS:
        raise UserError(f"{folder}: a model with a {kind!r} head, which no installed task reads "
                        "(`pip install -e .` registers ctxlm's own)")
    return _MODELS[kind].load(path, device=device)


class TaskModel(HeadedModel):
    """`lm` (the pretrained model, with its own heads kept for an auxiliary LM loss) + a `TaskHead`.

    `long_text` (`ctxlm.nn.long_text.LongText` or its string form): how a single text longer than `max_length`
    is read; saved in task.json, so that evaluate and predict read texts as fine-tuning did."""

    kinds = TASK_KINDS

    def __init__(self, lm: nn.Module, spec: TaskSpec, *, pooling: str | None = None, dropout: float = 0.1,
                 max_length: int = 128, long_text: str | LongText | None = None) -> None:
        super().__init__()
        pooling = pooling or default_pooling(lm)
        if pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.long_text = LongText.parse(long_text)
        if self.long_text.how != "truncate" and not spec.one_text:
            raise UserError(f"long text {str(self.long_text)!r} reads a single text whole or by its ends; the inputs "
                            f"of a {spec.kind} task are cut to max_length (long text 'truncate')")
        if lm.config.causal and lm.config.word_level:
            raise UserError("transfer heads do not take a word-level decoder (Transformer-XL) yet: its word "
                            "vocabulary has no task tokens; use ctxlm.embed for its features")
        if lm.config.causal and lm.tokenizer.start_id is None:
            add_task_tokens(lm)
        # no input longer than the model's positions: a long text's windows are then its context
        self.lm, self.spec, self.pooling = lm, spec, pooling
        self.max_length = min(max_length, lm.config.max_positions)
        self.decoder = lm.config.causal
        self.head = TaskHead(lm.config.hidden_dim * pooled_width(pooling), spec.num_labels, spec.kind, dropout)

    def features(self, batch: dict[str, Tensor], lm_loss: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Slot features, slot mask and, for a decoder asked for it, the LM loss on the same inputs (GPT §3.2)."""
        ids, mask = batch["ids"], batch["mask"]
        loss = None
        if self.decoder and lm_loss:
            targets = torch.full_like(ids, -100)
            targets[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
            out = self.lm(ids, mask=mask, targets=targets)
            hidden, loss = out.hidden, out.loss
        elif self.decoder:
            hidden = self.lm.backbone(ids, mask=mask)
        else:
            hidden = self.lm.backbone(ids, mask=mask, segments=batch.get("segments"))
        features, slot_mask = extract_features(hidden.last, batch, self.pooling)
        return features, slot_mask, loss

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        features, slot_mask, _ = self.features(batch)
        return self.head(features, slot_mask)

    # -- the folder -----------------------------------------------------------------------------------------
    def task_config(self) -> dict:
        return {"spec": asdict(self.spec), "pooling": self.pooling, "max_length": self.max_length,
                "dropout": self.head.dropout.p, "long_text": str(self.long_text)}

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> TaskModel:
        """A fine-tuned model folder (or a run folder holding one in model/ or checkpoint/)."""
        path, config = finetuned_folder(path)
        kind = config["spec"]["kind"]
        if kind not in cls.kinds:
            other = _MODELS.get(kind)
            name = f"a {other.description} model" if other else f"a model with a {kind!r} head"
            raise UserError(f"{path}: {name}; load it with load_finetuned"
                            + (f" (or {other.__name__}.load)" if other else ""))
        spec = TaskSpec.from_dict(config["spec"])
        model = cls(load(path), spec, pooling=config["pooling"], dropout=config["dropout"],
                    max_length=config["max_length"], long_text=config.get("long_text"))  # older folders: truncate
        load_weights(model.head, path / HEAD_FILE)
        return model.to(device).eval()
