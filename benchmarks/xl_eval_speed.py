"""Transformer-XL's evaluation speed-up over a vanilla transformer (Dai et al. 2019, Table 9), at CPU scale.

One model (random weights: speed does not depend on them) predicts tokens of a long text three ways at each
attention length L:

- vanilla, as Al-Rfou et al. (2018) evaluate: for every predicted token, the window of the L tokens before it
  goes through the model from scratch (one forward over L positions, nothing reused);
- Transformer-XL, one token at a time: one forward over [memory of the L - 1 previous positions ‖ the token],
  the memory kept from the step before. Each prediction sees exactly the vanilla window's L tokens;
- Transformer-XL by segments, as the paper evaluates: S tokens per forward (S = 128, or L / 2 below 256) with
  L - S positions of memory, so each prediction sees L - S to L - 1 earlier tokens.

The memory holds each layer's hidden states, as in the paper, so every forward projects keys and values for the
whole memory again (and the relative position encodings for every distance): one token at a time, that cost
(~ L x dim^2 per layer) is paid per token and caps the gain at a few times; by segments it is shared by S
tokens, which is where the paper's speed-up comes from.

Only the last position's softmax is computed for the vanilla window (a fair vanilla model needs no more), and
every path runs in evaluation mode without gradient. Times are medians over alternating rounds (the machine is
shared), reported per predicted token; the speed-up is vanilla's time over Transformer-XL's.

    python benchmarks/xl_eval_speed.py                       # 4 layers x 256, lengths 128 to 1024
    python benchmarks/xl_eval_speed.py --lengths 128,256,512,1024,2048 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_line

from ctxlm.config import TransformerXLConfig
from ctxlm.models import build_model

# Table 9 of the paper: attention length → how much slower Al-Rfou et al.'s vanilla evaluation is (one GPU).
PAPER = {3800: 1874, 2800: 1409, 1800: 773, 800: 363}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,256,512,1024", help="attention lengths L")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--xl-tokens", type=int, default=64, help="tokens predicted per round, one at a time")
    parser.add_argument("--vanilla-budget", type=int, default=4096,
                        help="window positions per vanilla round: max(2, budget / L) predicted tokens")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    config = TransformerXLConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                                 head_dim=args.dim // args.heads, mlp_dim=4 * args.dim, mem_len=max(lengths),
                                 clamp_len=0, same_length=False, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(config).eval()
    params = sum(p.numel() for p in model.parameters())
    text = torch.randint(0, args.vocab, (1, max(lengths) + 4 * args.xl_tokens + 512))
    print(machine_line())
    print(f"model: transformer-xl, {args.layers} layers x {args.dim} ({args.heads} heads), vocabulary "
          f"{args.vocab:,}, {params / 1e6:.1f}M parameters; medians of {args.rounds} rounds")

    def contenders(length: int) -> dict[str, object]:
        """Three functions that each return seconds per predicted token at attention length `length`."""
        n_vanilla = max(2, args.vanilla_budget // length)
        segment = 128 if length >= 256 else length // 2

        def warm_memory(mem: int) -> list[torch.Tensor] | None:
            memory = None
            for start in range(0, mem, 128):  # untimed: fill the memory with the mem positions before
                memory = model(text[:, start:min(start + 128, mem)], memory=memory, mem_len=mem).hidden.memory
            return memory

        def vanilla() -> float:
            start = time.perf_counter()
            for t in range(n_vanilla):  # predicts token t + length from the window of the length tokens before it
                model(text[:, t:t + length], mem_len=0, last_only=True)
            return (time.perf_counter() - start) / n_vanilla

        def xl_token() -> float:
            memory = warm_memory(length - 1)
            start = time.perf_counter()
            for t in range(args.xl_tokens):
                pos = length - 1 + t
                memory = model(text[:, pos:pos + 1], memory=memory, mem_len=length - 1, last_only=True).hidden.memory
            return (time.perf_counter() - start) / args.xl_tokens

        def xl_segment() -> float:
            mem, n = length - segment, max(2, 4 * args.xl_tokens // segment)
            memory = warm_memory(mem)
            start = time.perf_counter()
            for k in range(n):
                pos = mem + k * segment
                memory = model(text[:, pos:pos + segment], memory=memory, mem_len=mem).hidden.memory
            return (time.perf_counter() - start) / (n * segment)

        return {"segment_len": segment, "vanilla": vanilla, "token": xl_token, "segment": xl_segment}

    rows = []
    with torch.inference_mode():
        runs = {length: contenders(length) for length in lengths}
        for run in runs.values():  # warm-up
            run["vanilla"](), run["token"](), run["segment"]()
        samples = {length: {"vanilla": [], "token": [], "segment": []} for length in lengths}
        for _ in range(args.rounds):  # every length in each round: a busy spell of the machine hits them all
            for length, run in runs.items():
                for name in ("vanilla", "token", "segment"):
                    samples[length][name].append(run[name]())
        for length, run in runs.items():
            med = {k: statistics.median(v) for k, v in samples[length].items()}
            rows.append((length, run["segment_len"], med))

    print()
    print("| attention length L | vanilla ms/token | XL, one token per forward: ms/token | speed-up | "
          "XL, segments of S: S | ms/token | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for length, segment, med in rows:
        print(f"| {length:,} | {1e3 * med['vanilla']:.2f} | {1e3 * med['token']:.3f} | "
              f"{med['vanilla'] / med['token']:,.0f}x | {segment} | {1e3 * med['segment']:.3f} | "
              f"{med['vanilla'] / med['segment']:,.0f}x |")
    print()
    print("Dai et al. 2019, Table 9 (one GPU, their models): how much slower vanilla evaluation is")
    print("| attention length | speed-up of Transformer-XL |")
    print("|---:|---:|")
    for length, ratio in sorted(PAPER.items(), reverse=True):
        print(f"| {length:,} | {ratio:,}x |")


if __name__ == "__main__":
    main()
