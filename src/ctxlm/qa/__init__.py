"""Question answering: SQuAD data and metrics, span extraction, zero-shot reading comprehension.

Importing `ctxlm.qa` registers SQuAD span extraction with transfer/: `SquadTask` for `ctxlm finetune --task squad`,
and (by defining `SpanModel`) the "span" head for `load_finetuned`. transfer/ never imports qa/."""

from ctxlm.qa.finetune import SquadTask
from ctxlm.transfer.task import register_task

register_task(SquadTask)
