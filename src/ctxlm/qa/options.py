"""How `ctxlm finetune --task squad` reads its data and windows its passages: `FinetuneConfig.task_options["squad"]`
(kept apart from the QA code so that the command line can build it without importing the task)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SquadOptions:
    train_file: str | None = None  # SQuAD JSON; None: the SQuAD v1.1 dev file under $CTXLM_DATA, split by article
    dev_file: str | None = None  # None: `holdout_articles` whole articles of the training file are held out
    holdout_articles: int = 8
    doc_stride: int = 128  # tokens between the starts of a long passage's windows
    max_question_tokens: int = 64  # longer questions are cut
    max_answer_tokens: int = 30  # longest span the n-best search returns
    n_best: int = 20  # start and end candidates per window
    no_answer: bool = False  # SQuAD v2: questions may have no answer; the model may answer ""
    null_threshold: float = 0.0  # answer "" when the no-answer score beats the best span by more than this
