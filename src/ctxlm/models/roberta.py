"""RoBERTa (Liu et al., 2019): BERT's architecture, pretrained better.

The paper keeps BERT-base and BERT-large as they are (§2.1, §4) and changes the training: dynamic masking, a new
mask each time a sequence is seen (§4.1); FULL-SENTENCES inputs without next-sentence prediction, packed across
document boundaries with a separator between documents (§4.2); larger batches and more data; a 50K byte-level BPE
vocabulary (§4.4). Those live in `ctxlm.pretrain.masked_lm` and the "roberta" tokenizer kind; what remains here is
what the published model does differently from BERT's:

- positions count real tokens only, so a padded text reads the positions it reads alone (the reference computes
  them from the non-padding tokens; its table starts two rows later, which conversion drops);
- one token type: every token adds the same segment embedding, and there is no next-sentence head;
- LayerNorm eps 1e-5, and the same masked-LM head as BERT (dense → GELU → LayerNorm → tied decoder + bias).
"""

from __future__ import annotations

from torch import Tensor

from ctxlm.models.bert import BERT, BertModel
from ctxlm.nn.blocks import positions_from_mask


class RoBERTa(BERT):
    """BERT's encoder whose positions skip padding (`positions_from_mask`)."""

    def positions(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return super().positions(ids, mask)
        return positions_from_mask(mask, ids.shape[1])


class RobertaModel(BertModel):
    """The RoBERTa encoder with its masked-LM head (and a pooler only where a checkpoint has one)."""

    backbone_class = RoBERTa
