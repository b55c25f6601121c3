"""ctxlm: contextual language models and transfer learning in one PyTorch codebase.

    import ctxlm
    model = ctxlm.load("runs/gpt2-wt2")          # or a Hugging Face folder, or "gpt2" when online
    out = model(ids, mask=mask)                  # out.logits, out.hidden.states[0..L]
    ctxlm.generate(model, ["The history of"], max_new_tokens=40, top_k=40, temperature=0.8)
    ctxlm.save(model, "path")                    # config.json + model.safetensors + tokenizer files
    ctxlm.embed(["a text", ...], "minilm", layers="sum-last-4", pool="mean")   # contextual vectors
    ctxlm.pretrain(model="gpt2", data="wikitext2", out="runs/x")                 # every CLI job is one call:
    ctxlm.finetune(model="minilm", task="sst2", strategy="ulmfit", out="runs/y")  # see ctxlm.jobs
"""

from ctxlm.api import load
from ctxlm.checkpoint import save
from ctxlm.convert import convert
from ctxlm.embed import embed
from ctxlm.errors import UserError
from ctxlm.generate import generate, generate_ids
from ctxlm.jobs import evaluate, finetune, predict, pretrain  # after the subpackage ctxlm.pretrain, which it hides
from ctxlm.outputs import Hidden, LMOutput
from ctxlm.train import TrainConfig, Trainer

__all__ = ["Hidden", "LMOutput", "TrainConfig", "Trainer", "UserError", "convert", "embed", "evaluate", "finetune",
           "generate", "generate_ids", "load", "predict", "pretrain", "save"]
__version__ = "0.1.0"
