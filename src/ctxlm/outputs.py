"""What models return: named dataclasses, never tuples whose meaning depends on flags."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Hidden:
    """Every layer's hidden states, bottom to top.

    states[0] is the embedding layer and states[-1] the top layer, each (batch, time, dim). `memory` carries
    Transformer-XL's segment memory; other families leave it None.
    """

    states: tuple[Tensor, ...]
    memory: list[Tensor] | None = None

    @property
    def last(self) -> Tensor:
        return self.states[-1]


@dataclass
class LMOutput:
    """A language model's next-token logits, (batch, time, vocab), and its hidden states.

    Given targets, a model returns the mean cross-entropy as `loss` and skips the logits (None), which it
    never materialises in full (see `ctxlm.nn.losses`).
    """

    logits: Tensor | None
    hidden: Hidden
    loss: Tensor | None = None


@dataclass
class EncoderOutput:
    """A BERT-style encoder's outputs; a head the checkpoint lacks gives None."""

    hidden: Hidden
    pooled: Tensor | None = None  # (batch, dim): tanh(W h_[CLS] + b), the pooler
    logits: Tensor | None = None  # (batch, time, vocab): masked-LM logits
    # (batch, 2): the sentence-pair head, class 0 = B follows A. BERT's next sentence: 1 = B is random text;
    # ALBERT's sentence order: 1 = A and B swapped (the config's `pair_objective` says which)
    nsp_logits: Tensor | None = None

    @property
    def mlm_logits(self) -> Tensor | None:
        return self.logits
