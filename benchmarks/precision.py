"""Training step time in fp32 and under bf16 autocast (`--precision bf16`), side by side, and what it costs.

    python benchmarks/precision.py            # ctxlm GPT-2 4 x 256, 8 x 256 tokens per step; BERT the same shape
    python benchmarks/precision.py --curves   # the loss curves of a short real pretraining, fp32 against bf16

The model and batch are the same in both columns; rounds alternate fp32 and bf16 so that drift in the machine's
speed hits both alike (medians of 5 rounds of 3 steps). The last column is the loss after 30 further steps on a
fixed random batch from the same start, fp32 against bf16: autocast changes the arithmetic, not what is learnt.

--curves runs `ctxlm.pretrain` itself twice per family, fp32 and bf16, on WikiText-2 from the same seed (the
same tokenizer, batches, dropout masks and initial weights): a tiny GPT-2 (causal LM) and a tiny BERT (masked LM +
next-sentence prediction), and prints the training loss every `--log-every` steps side by side, the largest
difference between the curves, and the validation loss at the end (always evaluated in fp32). This is the check
behind keeping fp32 the training default: `--precision auto` is offered, not imposed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

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


CURVE_SIZES = {"gpt2": dict(layers=2, dim=128, heads=2), "bert": dict(layers=2, dim=128, heads=2)}


def pretraining_curve(family: str, precision: str, steps: int, *, log_every: int = 10, block: int = 128,
                      batch: int = 8, seed: int = 0, out: Path | None = None) -> dict:
    """One short `ctxlm.pretrain` run of a tiny `family` model on WikiText-2: {"steps", "loss" (the training loss
    logged every `log_every` steps), "tokens_per_s" (the mean of the logged rates, the first window left out: it
    pays for warm-up), "valid_loss" (the last evaluation, fp32)}."""
    import ctxlm

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(out or tmp) / f"{family}-{precision}"
        ctxlm.pretrain(family, "wikitext2", out=run, steps=steps, block_size=block, batch_size=batch, lr=1e-3,
                       warmup=min(100, steps // 10), eval_every=steps, save_every=steps, save_every_minutes=None,
                       precision=precision, device="cpu", seed=seed, dropout=0.1, **CURVE_SIZES[family])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r and "valid_loss" not in r and r["step"] % log_every == 0]
    rates = [r["tokens_per_s"] for r in train[1:] if "tokens_per_s" in r]
    valid = [r for r in records if "valid_loss" in r]
    return {"steps": [r["step"] for r in train], "loss": [r["loss"] for r in train],
            "tokens_per_s": sum(rates) / len(rates) if rates else float("nan"),
            "valid_loss": valid[-1]["valid_loss"] if valid else float("nan")}


def curves_table(steps: int, log_every: int) -> None:
    """fp32 against bf16 training losses of a tiny GPT-2 and BERT, every `log_every` steps."""
    for family in CURVE_SIZES:
        runs = {precision: pretraining_curve(family, precision, steps, log_every=log_every)
                for precision in ("fp32", "bf16")}
        fp32, bf16 = runs["fp32"], runs["bf16"]
        gaps = [abs(a - b) for a, b in zip(fp32["loss"], bf16["loss"], strict=True)]
        shape = CURVE_SIZES[family]
        print(f"\n{family}: {shape['layers']} layers x {shape['dim']}, T=128, batch 8, WikiText-2, seed 0, "
              f"{steps} steps")
        print("| step | fp32 loss | bf16 loss | difference |")
        print("|---:|---:|---:|---:|")
        for step, a, b in zip(fp32["steps"], fp32["loss"], bf16["loss"], strict=True):
            print(f"| {step} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
        relative = max(g / a for g, a in zip(gaps, fp32["loss"], strict=True))
        print(f"largest |difference| {max(gaps):.4f} (relative {relative:.3%}); validation loss (fp32 "
              f"evaluation) {fp32['valid_loss']:.4f} fp32 / "
              f"{bf16['valid_loss']:.4f} bf16; training tokens/s {fp32['tokens_per_s']:,.0f} fp32 / "
              f"{bf16['tokens_per_s']:,.0f} bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--curves", action="store_true", help="compare the loss curves of a short pretraining")
    parser.add_argument("--curve-steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args()
    if args.curves:
        print(machine_line())
        curves_table(args.curve_steps, args.log_every)
        return
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
