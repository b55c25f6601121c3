"""ctxlm vs `transformers` on GPT-2, side by side in one process, reported as ratios.

Both models have the same configuration and the same weights (the reference's, converted). Rounds alternate
between the two so that drift in the machine's speed hits both alike; the table shows medians over rounds.
The functions here also serve `ctxlm bench` (benchmarks/bench.py).

    python benchmarks/gpt2_vs_transformers.py                 # training tokens/s and greedy generation
    python benchmarks/gpt2_vs_transformers.py --compile       # adds torch.compile'd ctxlm training
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import transformers
from common import Shape, add_model_arguments, machine_line, median_rates, print_table, shape_of, timed_rate, train_rate

from ctxlm.convert.hf_gpt import config_from_hf, state_dict_from_hf
from ctxlm.generate import generate_ids
from ctxlm.models.gpt import GPTLanguageModel


def hf_config(shape: Shape, dropout: float) -> transformers.GPT2Config:
    return transformers.GPT2Config(vocab_size=shape.vocab, n_positions=max(1024, shape.block), n_embd=shape.dim,
                                   n_layer=shape.layers, n_head=shape.heads, resid_pdrop=dropout,
                                   embd_pdrop=dropout, attn_pdrop=dropout)


def build_ctxlm(shape: Shape, dropout: float = 0.1) -> GPTLanguageModel:
    """ctxlm's GPT-2 alone, in the reference's configuration (random weights)."""
    torch.manual_seed(0)
    return GPTLanguageModel(config_from_hf(hf_config(shape, dropout).to_dict()))


def build(shape: Shape, dropout: float = 0.1, device: torch.device | str = "cpu"):
    """(reference, ours) with the reference's random weights in both."""
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(hf_config(shape, dropout))
    ours = build_ctxlm(shape, dropout)
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), ours.config))
    return ref.to(device), ours.to(device)


def batch(shape: Shape, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, shape.vocab, (shape.batch, shape.block), device=device)
    return x, torch.roll(x, -1, dims=1)


def ctxlm_loss(model, x, y):
    return model(x, targets=y).loss  # ctxlm's training path: the chunked LM-head cross-entropy


def hf_loss(model, x, y):
    return model(input_ids=x, labels=x).loss  # the reference shifts labels itself


def training_rates(ref, ours, shape: Shape, steps: int) -> dict[str, Callable[[], float]]:
    """Tokens/s of `steps` training steps (after a warm-up step) on one random batch, per contender."""
    x, y = batch(shape, next(ours.parameters()).device)
    return {"ctxlm": lambda: train_rate(ours, lambda: ctxlm_loss(ours, x, y), x.numel(), steps),
            "transformers": lambda: train_rate(ref, lambda: hf_loss(ref, x, y), x.numel(), steps)}


def generation_rates(ref, ours, *, batch_size: int, new_tokens: int, prompt_len: int = 8):
    """New tokens/s of greedy decoding with a KV cache, `batch_size` prompts of `prompt_len` random tokens (no
    padding), exactly `new_tokens` each: ctxlm's generate_ids against the reference's generate()."""
    device = next(ours.parameters()).device
    prompt = torch.randint(0, ours.config.vocab_size, (batch_size, prompt_len), device=device)
    count = batch_size * new_tokens

    @torch.inference_mode()
    def ctxlm_rate() -> float:
        return timed_rate(lambda: generate_ids(ours, prompt.tolist(), max_new_tokens=new_tokens), count, device)

    @torch.inference_mode()
    def hf_rate() -> float:
        return timed_rate(lambda: ref.generate(prompt, attention_mask=torch.ones_like(prompt),
                                               max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                               do_sample=False, pad_token_id=0), count, device)

    ref.eval(), ours.eval()
    ctxlm_rate(), hf_rate()  # warm-up
    return {"ctxlm": ctxlm_rate, "transformers": hf_rate}


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

    shape = shape_of(args)
    ref, ours = build(shape, args.dropout)
    rows = []

    train = training_rates(ref, ours, shape, args.steps)
    if args.compile:
        compiled = torch.compile(ours)
        x, y = batch(shape)
        train["ctxlm (compiled)"] = lambda: train_rate(compiled, lambda: ctxlm_loss(compiled, x, y), x.numel(),
                                                       args.steps)
    rates = median_rates(train, args.rounds)
    for name in [n for n in rates if n != "transformers"]:
        rows.append((f"training tokens/s, {name}", rates[name], rates["transformers"]))

    n = args.new_tokens
    rates = median_rates(generation_rates(ref, ours, batch_size=1, new_tokens=n), args.rounds)
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
