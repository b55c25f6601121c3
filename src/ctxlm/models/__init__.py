"""Model families by `model_type`: each maps to the class that `ctxlm.load` builds from a config."""

from __future__ import annotations

from torch import nn

from ctxlm.config import ModelConfig
from ctxlm.models.albert import AlbertModel
from ctxlm.models.bert import BertModel
from ctxlm.models.deberta import DebertaModel
from ctxlm.models.elmo import ElmoLanguageModel
from ctxlm.models.gpt import GPTLanguageModel
from ctxlm.models.roberta import RobertaModel
from ctxlm.models.transformer_xl import TransformerXLLanguageModel
from ctxlm.models.xlnet import XLNetLanguageModel

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "gpt": GPTLanguageModel, "gpt2": GPTLanguageModel, "bert": BertModel, "roberta": RobertaModel,
    "albert": AlbertModel, "deberta": DebertaModel, "elmo": ElmoLanguageModel,
    "transformer-xl": TransformerXLLanguageModel, "xlnet": XLNetLanguageModel,
}


def build_model(config: ModelConfig) -> nn.Module:
    return MODEL_CLASSES[config.model_type](config)
