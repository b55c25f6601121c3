"""ctxlm BERT pretraining (masked LM + next-sentence prediction) vs `transformers` BertForPreTraining.

Same configuration, same weights, same batch (15 % of positions masked), alternating rounds, medians.
ctxlm scores the MLM head only at the masked positions, as Google's original implementation did;
the reference scores every position and ignores the rest in its loss. The functions here also serve
`ctxlm bench` (benchmarks/bench.py).

    python benchmarks/bert_vs_transformers.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers
from common import Shape, add_model_arguments, machine_line, median_rates, print_table, shape_of, train_rate

from ctxlm.config import BertConfig
from ctxlm.convert.hf_bert import state_dict_from_hf
from ctxlm.models.bert import BertModel

MASKED = 0.15


def hf_config(shape: Shape) -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=shape.vocab, hidden_size=shape.dim, num_hidden_layers=shape.layers,
                                   num_attention_heads=shape.heads, intermediate_size=4 * shape.dim,
                                   max_position_embeddings=shape.block)


def build_ctxlm(shape: Shape) -> BertModel:
    """ctxlm's BERT alone, in the reference's configuration (random weights; both default to dropout 0.1)."""
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=shape.vocab, max_positions=shape.block, dim=shape.dim,
                                n_layers=shape.layers, n_heads=shape.heads, mlp_dim=4 * shape.dim))


def build(shape: Shape, device: torch.device | str = "cpu"):
    """(reference, ours) with the reference's random weights in both."""
    torch.manual_seed(0)
    ref = transformers.BertForPreTraining(hf_config(shape))
    ours = build_ctxlm(shape)
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), ours.config))
    return ref.to(device), ours.to(device)


def pretraining_batch(shape: Shape, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    ids = torch.randint(5, shape.vocab, (shape.batch, shape.block), device=device)
    chosen = torch.rand(ids.shape, device=device) < MASKED
    return {"ids": ids, "chosen": chosen, "labels": torch.where(chosen, ids, -100),
            "inputs": torch.where(chosen, 4, ids),  # [MASK]
            "segments": (torch.arange(shape.block, device=device) >= shape.block // 2).long().expand_as(ids),
            "nsp": torch.randint(0, 2, (shape.batch,), device=device)}


def ctxlm_loss(model, b):
    out = model(b["inputs"], segments=b["segments"], masked_positions=b["chosen"])
    return F.cross_entropy(out.logits, b["ids"][b["chosen"]]) + F.cross_entropy(out.nsp_logits, b["nsp"])


def hf_loss(model, b):
    return model(input_ids=b["inputs"], token_type_ids=b["segments"], labels=b["labels"],
                 next_sentence_label=b["nsp"]).loss


def training_rates(ref, ours, shape: Shape, steps: int) -> dict[str, Callable[[], float]]:
    """Tokens/s of `steps` MLM + NSP training steps (after a warm-up step) on one random batch, per contender."""
    b = pretraining_batch(shape, next(ours.parameters()).device)
    tokens = b["ids"].numel()
    return {"ctxlm": lambda: train_rate(ours, lambda: ctxlm_loss(ours, b), tokens, steps),
            "transformers": lambda: train_rate(ref, lambda: hf_loss(ref, b), tokens, steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, block=128, batch=16)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    shape = shape_of(args)
    ref, ours = build(shape)
    b = pretraining_batch(shape)
    ours.eval(), ref.eval()
    with torch.no_grad():  # the two losses are the same quantity (checked without dropout)
        torch.testing.assert_close(ctxlm_loss(ours, b), hf_loss(ref, b), atol=1e-4, rtol=0)
    rates = median_rates(training_rates(ref, ours, shape, args.steps), args.rounds)
    print(machine_line())
    print(f"model: BERT, {args.layers} layers, width {args.dim}, {args.heads} heads, vocab {args.vocab}, "
          f"T={args.block}, batch {args.batch}, dropout 0.1; medians of {args.rounds} alternating rounds")
    print_table([("MLM+NSP pretraining tokens/s", rates["ctxlm"], rates["transformers"])])


if __name__ == "__main__":
    main()
