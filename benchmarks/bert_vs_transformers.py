"""ctxlm BERT pretraining (masked LM + next-sentence prediction) vs `transformers` BertForPreTraining.

Same configuration, same weights, same batch (15 % of positions masked), alternating rounds, medians.
ctxlm scores the MLM head only at the masked positions, as Google's original implementation did;
the reference scores every position and ignores the rest in its loss.

    python benchmarks/bert_vs_transformers.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import transformers
from common import add_model_arguments, machine_line, median_rates, print_table, train_rate

from ctxlm.convert.hf_bert import config_from_hf, state_dict_from_hf
from ctxlm.models.bert import BertModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, block=128, batch=16)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=args.vocab, hidden_size=args.dim, num_hidden_layers=args.layers,
                                        num_attention_heads=args.heads, intermediate_size=4 * args.dim,
                                        max_position_embeddings=args.block)
    ref = transformers.BertForPreTraining(hf_config)
    config = config_from_hf(hf_config.to_dict(), ref.state_dict())
    ours = BertModel(config)
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), config))

    ids = torch.randint(5, args.vocab, (args.batch, args.block))
    segments = (torch.arange(args.block) >= args.block // 2).long().expand_as(ids)
    chosen = torch.rand(ids.shape) < 0.15
    labels = torch.where(chosen, ids, -100)
    inputs = torch.where(chosen, 4, ids)  # [MASK]
    nsp = torch.randint(0, 2, (args.batch,))

    def ctxlm_loss():
        out = ours(inputs, segments=segments, masked_positions=chosen)
        return F.cross_entropy(out.logits, ids[chosen]) + F.cross_entropy(out.nsp_logits, nsp)

    def hf_loss():
        return ref(input_ids=inputs, token_type_ids=segments, labels=labels, next_sentence_label=nsp).loss

    ours.eval(), ref.eval()
    with torch.no_grad():  # the two losses are the same quantity (checked without dropout)
        torch.testing.assert_close(ctxlm_loss(), hf_loss(), atol=1e-4, rtol=0)
    tokens = ids.numel()
    rates = median_rates({"ctxlm": lambda: train_rate(ours, ctxlm_loss, tokens, args.steps),
                          "transformers": lambda: train_rate(ref, hf_loss, tokens, args.steps)}, args.rounds)
    print(machine_line())
    print(f"model: BERT, {args.layers} layers, width {args.dim}, {args.heads} heads, vocab {args.vocab}, "
          f"T={args.block}, batch {args.batch}, dropout 0.1; medians of {args.rounds} alternating rounds")
    print_table([("MLM+NSP pretraining tokens/s", rates["ctxlm"], rates["transformers"])])


if __name__ == "__main__":
    main()
