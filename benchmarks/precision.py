"""Training step time in fp32 and under bf16 autocast (`--precision bf16`), side by side, and what it costs.

    python benchmarks/precision.py            # ctxlm GPT-2 4 x 256, 8 x 256 tokens per step; BERT the same shape

The model and batch are the same in both columns; rounds alternate fp32 and bf16 so that drift in the machine's
speed hits both alike (medians of 5 rounds of 3 steps). The last column is the loss after 30 further steps on a
fixed random batch from the same start, fp32 against bf16: autocast changes the arithmetic, not what is learnt.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import machine_line, median_rates

from ctxlm.config import BertConfig, GPTConfig
from ctxlm.models import build_model


def trainer(config, batch: int, block: int, bf16: bool, seed: int = 0):
    """(one training step, tokens per step) for a fresh model from `seed`: fused AdamW as ctxlm's Trainer."""
    torch.manual_seed(seed)
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, block), generator=torch.Generator().manual_seed(seed))
    bert = config.model_type == "bert"

    def step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            if bert:
                out = model.backbone(ids).last
                loss = out.float().square().mean()
            else:
                loss = model(ids, targets=ids.roll(-1, 1)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, batch * block


def rate(step, tokens: int, steps: int):
    def run() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * tokens / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    args = parser.parse_args()
    shape = dict(vocab_size=8192, max_positions=args.block, dim=256, n_layers=4, n_heads=4)
    configs = {"GPT-2 4x256": GPTConfig(model_type="gpt2", **shape), "BERT 4x256 (encoder only)": BertConfig(**shape)}
    print("| model | fp32 tokens/s | bf16 tokens/s | speed-up | loss after 30 steps fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|")
    for name, config in configs.items():
        steps = {bf16: trainer(config, args.batch, args.block, bf16) for bf16 in (False, True)}
        for step, _ in steps.values():
            step()  # warm-up
        rates = median_rates({str(bf16): rate(step, tokens, args.steps) for bf16, (step, tokens) in steps.items()},
                             args.rounds)
        losses = []
        for bf16 in (False, True):
            step, _ = trainer(config, args.batch, args.block, bf16, seed=1)
            for _ in range(30):
                loss = step()
            losses.append(float(loss))
        print(f"| {name} | {rates['False']:,.0f} | {rates['True']:,.0f} | {rates['True'] / rates['False']:.2f}x | "
              f"{losses[0]:.3f} / {losses[1]:.3f} |")
    print(f"\n{machine_line()}")


if __name__ == "__main__":
    main()
