"""Pretrain a ~5M-parameter GPT-2 on WikiText-2 and report validation perplexity over the whole valid split.

Perplexity is given per BPE token (what the model predicts) and per word (WikiText's own unit: the split's
whitespace tokens plus one end-of-line each, 217,646 for valid), so it compares with published word-level
figures: word ppl = exp(total validation nats / number of words).

    python benchmarks/pretrain_wikitext2.py --steps 3000 --out runs/bench-gpt2-wt2
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import time
from pathlib import Path

import torch
from common import add_model_arguments

from ctxlm.config import GPTConfig
from ctxlm.paths import dataset_path
from ctxlm.pretrain.causal_lm import LMData, causal_lm_objective, pretrain_causal_lm, tokenize
from ctxlm.pretrain.corpus import BlockBatches, TokenSpan
from ctxlm.train import TrainConfig


@torch.no_grad()
def full_validation_nats(model, span: TokenSpan, block_size: int) -> tuple[float, int]:
    """Total cross-entropy (nats) and token count over every non-overlapping block of the span."""
    model.eval()
    total, tokens = 0.0, 0
    for x, y in BlockBatches(span, block_size, batch_size=32, seed=0).eval_batches():
        loss, _ = causal_lm_objective(model, (x, y))
        total += float(loss) * y.numel()
        tokens += y.numel()
    return total, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-gpt2-wt2")
    parser.add_argument("--steps", type=int, default=3000)
    add_model_arguments(parser, block=128, batch=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args()

    folder = dataset_path("wikitext2")
    config = GPTConfig(model_type="gpt2", vocab_size=args.vocab, max_positions=args.block, dim=args.dim,
                       n_layers=args.layers, n_heads=args.heads, dropout=args.dropout, attn_dropout=args.dropout)
    train = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=max(1, args.steps // 20), eval_every=500,
                        save_every=500)
    start = time.perf_counter()
    model = pretrain_causal_lm(LMData.resolve(folder), args.out, config, train, block_size=args.block,
                               batch_size=args.batch)
    minutes = (time.perf_counter() - start) / 60

    valid = TokenSpan(tokenize(folder / "valid.txt.gz", model.tokenizer).ids)
    nats, tokens = full_validation_nats(model, valid, args.block)
    with gzip.open(folder / "valid.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    words = sum(len(line.split()) + 1 for line in lines)  # + <eos> per line, WikiText's convention
    covered = tokens / len(valid)  # the last partial block is not scored; scale the word count alike
    result = {
        "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
        "tokens_seen": args.steps * args.batch * args.block, "minutes": minutes,
        "valid_tokens_scored": tokens, "valid_loss_per_token": nats / tokens,
        "valid_ppl_per_token": math.exp(nats / tokens), "valid_ppl_per_word": math.exp(nats / (words * covered)),
    }
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| " + " | ".join(result) + " |")
    print("|" + "|".join("---" for _ in result) + "|")
    print("| " + " | ".join(f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" for v in result.values()) + " |")
    (Path(args.out) / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
