"""ctxlm vs `transformers` on GPT-2, side by side in one process, reported as ratios.

Both models have the same configuration and the same weights (the reference's, converted). Rounds alternate
between the two so that drift in the machine's speed hits both alike; the table shows medians over rounds.

    python benchmarks/gpt2_vs_transformers.py                 # training tokens/s and greedy generation
    python benchmarks/gpt2_vs_transformers.py --compile       # adds torch.compile'd ctxlm training
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers
from common import add_model_arguments, machine_line, median_rates, print_table, train_rate

from ctxlm.convert.hf_gpt import config_from_hf, state_dict_from_hf
from ctxlm.generate import generate_ids
from ctxlm.models.gpt import GPTLanguageModel


def build(args):
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=args.vocab, n_positions=1024, n_embd=args.dim,
                                        n_layer=args.layers, n_head=args.heads, resid_pdrop=args.dropout,
                                        embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    ref = transformers.GPT2LMHeadModel(hf_config)
    config = config_from_hf(hf_config.to_dict())
    ours = GPTLanguageModel(config)
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), config))
    return ref, ours


def ctxlm_loss(model, x, y):
    return model(x, targets=y).loss  # ctxlm's training path: the chunked LM-head cross-entropy


def hf_loss(model, x, y):
    return model(input_ids=x, labels=x).loss  # the reference shifts labels itself


@torch.inference_mode()
def generation_rate(generate, new_tokens: int) -> float:
    start = time.perf_counter()
    generate()
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd ctxlm training")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    ref, ours = build(args)
    x = torch.randint(0, args.vocab, (args.batch, args.block))
    y = torch.roll(x, -1, dims=1)
    rows = []

    tokens = x.numel()
    train = {"ctxlm": lambda: train_rate(ours, lambda: ctxlm_loss(ours, x, y), tokens, args.steps),
             "transformers": lambda: train_rate(ref, lambda: hf_loss(ref, x, y), tokens, args.steps)}
    if args.compile:
        compiled = torch.compile(ours)
        train["ctxlm (compiled)"] = lambda: train_rate(compiled, lambda: ctxlm_loss(compiled, x, y), tokens,
                                                       args.steps)
    rates = median_rates(train, args.rounds)
    for name in [n for n in rates if n != "transformers"]:
        rows.append((f"training tokens/s, {name}", rates[name], rates["transformers"]))

    ref.eval()
    ours.eval()
    prompt = torch.randint(0, args.vocab, (1, 8))
    n = args.new_tokens
    gen = {
        "ctxlm": lambda: generation_rate(lambda: generate_ids(ours, prompt.tolist(), max_new_tokens=n), n),
        "transformers": lambda: generation_rate(lambda: ref.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
            do_sample=False, pad_token_id=0), n),
    }
    gen["ctxlm"](), gen["transformers"]()  # warm-up
    rates = median_rates(gen, args.rounds)
    rows.append((f"greedy generation tokens/s, batch 1, {n} new, KV cache", rates["ctxlm"], rates["transformers"]))

    print(machine_line())
    print(f"model: GPT-2, {args.layers} layers, width {args.dim}, {args.heads} heads, vocab {args.vocab}, "
          f"T={args.block}, batch {args.batch}, dropout {args.dropout}; medians of {args.rounds} alternating rounds")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"measure": r[0], "ctxlm": r[1], "transformers": r[2], "ratio": r[1] / r[2]} for r in rows],
                      f, indent=2)


if __name__ == "__main__":
    main()
