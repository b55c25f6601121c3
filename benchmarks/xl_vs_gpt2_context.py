"""A vanilla GPT-2 and a Transformer-XL of equal size, trained on WikiText-2 with the same tokens, evaluated with
growing context: how much each gains from seeing further back (Dai et al. 2019, §4).

Both read the same GPT-2 byte-level BPE (8,192 tokens, trained on the training split by the GPT-2 run and
handed to the XL run), so their per-token perplexities compare directly. Same width, depth, heads and MLP; the
two differ in what the papers differ in: GPT-2 has learned absolute positions and reads independent random
windows of --gpt2-block tokens; Transformer-XL has relative positions and reads the corpus as --xl-batch
contiguous streams, --tgt-len tokens per segment with a memory of --mem-len states per layer. Equal token
budget: both score steps x batch x (block or segment) tokens (2,048 per step by default). Same optimiser,
learning rate, schedule, no dropout (less than one epoch).

Evaluation at context length c, over the first --eval-tokens tokens of the validation split read as one stream:
- GPT-2: windows of c tokens with a stride of c / 2, each scoring its last c / 2 targets (the first window all
  of its own), so every token is predicted once from the c / 2 + 1 to c tokens before it, within the window;
- Transformer-XL: segments of c / 2 tokens with c / 2 states of memory per layer: each token attends over the
  same c / 2 + 1 to c positions, but the memory carries what earlier segments read, layer upon layer.
Beyond --gpt2-block, GPT-2 reads position embeddings that training never reached (marked *).

    python benchmarks/xl_vs_gpt2_context.py --out runs/bench-xl-vs-gpt2   # 4 x 128, 800 steps each: ~9 min

The defaults fit both trainings and the evaluation in under 10 minutes on 2 CPU cores: 2M-parameter models
(half of it the 8,192 x 128 embedding) seeing 1.6M tokens each, 0.6 epoch of WikiText-2's 2.69M BPE tokens.
Both are pre-LN (GPT-2's placement; the paper's Transformer-XL is post-LN, which at this learning rate and a
30-step warm-up stalled at the unigram loss in a 120-step trial, while pre-LN trained as GPT-2 does), so the two
differ only in positions, segments and memory.

Finished training runs are reused when the command is run again (delete --out to retrain).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import machine_line

from ctxlm.checkpoint import load_checkpoint
from ctxlm.config import GPTConfig, TransformerXLConfig
from ctxlm.paths import dataset_path
from ctxlm.pretrain.causal_lm import LMData, pretrain_causal_lm, tokenize
from ctxlm.pretrain.corpus import TokenSpan
from ctxlm.pretrain.xl import evaluate_xl, pretrain_xl
from ctxlm.train import TrainConfig


@torch.no_grad()
def gpt2_loss(model, ids: torch.Tensor, context: int, batch_size: int = 8) -> float:
    """Mean next-token loss over ids[1:], each target predicted once from a window of `context` tokens that ends
    at it: the first window scores all its targets, each next one (stride context / 2) its last context / 2."""
    model.eval()
    stride, last = context // 2, len(ids) - 1
    chunks, hi = [], min(context, last)
    chunks.append((0, hi))
    while hi < last:
        lo, hi = hi, min(hi + stride, last)
        chunks.append((lo, hi))  # targets lo+1 .. hi, read from the window ids[hi - context : hi]
    total, count = 0.0, 0
    for first in range(0, len(chunks), batch_size):
        group = chunks[first:first + batch_size]
        width = min(context, last)
        x = torch.stack([ids[hi - width:hi] for _, hi in group])
        y = torch.stack([ids[hi - width + 1:hi + 1] for _, hi in group])
        for row, (lo, hi) in enumerate(group):
            y[row, :width - (hi - lo)] = -100  # targets already scored by the window before
        scored = int((y != -100).sum())
        total += float(model(x, targets=y).loss) * scored
        count += scored
    assert count == last, (count, last)
    return total / count


def train_or_load(run: Path, train_fn) -> tuple[torch.nn.Module, float]:
    """(model, training minutes): a finished run's checkpoint is loaded rather than trained again."""
    done = run / "benchmark_train.json"
    if done.is_file():
        return load_checkpoint(run / "checkpoint"), json.loads(done.read_text())["minutes"]
    start = time.perf_counter()
    model = train_fn()
    minutes = (time.perf_counter() - start) / 60
    done.write_text(json.dumps({"minutes": minutes}) + "\n")
    return model.eval(), minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-xl-vs-gpt2")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--gpt2-block", type=int, default=256)
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--tgt-len", type=int, default=128)
    parser.add_argument("--mem-len", type=int, default=128)
    parser.add_argument("--xl-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--contexts", default="64,128,256,512,1024")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens scored (0: all)")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.gpt2_batch * args.gpt2_block != args.xl_batch * args.tgt_len:
        print(f"note: unequal tokens per step, GPT-2 {args.gpt2_batch * args.gpt2_block:,} vs Transformer-XL "
              f"{args.xl_batch * args.tgt_len:,}")

    folder = dataset_path("wikitext2")
    data = LMData.resolve(folder)
    out = Path(args.out)

    def train_config() -> TrainConfig:
        return TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=max(1, args.steps // 20), schedule="cosine",
                           eval_every=args.steps, save_every=args.steps, log_every=10, seed=0)

    gpt2_config = GPTConfig(model_type="gpt2", vocab_size=args.vocab, max_positions=max(*contexts, args.gpt2_block),
                            dim=args.dim, n_layers=args.layers, n_heads=args.heads, dropout=0.0, attn_dropout=0.0)
    gpt2, gpt2_minutes = train_or_load(out / "gpt2", lambda: pretrain_causal_lm(
        data, out / "gpt2", gpt2_config, train_config(), block_size=args.gpt2_block, batch_size=args.gpt2_batch,
        eval_batches=20))
    xl_config = TransformerXLConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                                    head_dim=args.dim // args.heads, mlp_dim=4 * args.dim, mem_len=args.mem_len,
                                    clamp_len=0, same_length=False, pre_norm=True, dropout=0.0, attn_dropout=0.0)
    xl, xl_minutes = train_or_load(out / "xl", lambda: pretrain_xl(
        data, out / "xl", xl_config, train_config(), tgt_len=args.tgt_len, batch_size=args.xl_batch,
        tokenizer=gpt2.tokenizer, eval_batches=20))

    valid = torch.from_numpy(tokenize(data.valid, gpt2.tokenizer).ids.astype("int64"))
    if args.eval_tokens:
        valid = valid[:args.eval_tokens]
    span = TokenSpan(valid.numpy())
    results = []
    start = time.perf_counter()
    for c in contexts:
        g = gpt2_loss(gpt2, valid, c) if c <= gpt2.config.max_positions else float("nan")
        x = evaluate_xl(xl, span, tgt_len=c // 2, mem_len=c // 2, streams=1, progress=False)["valid_loss"]
        results.append((c, g, x))
        print(f"context {c}: GPT-2 {math.exp(g):.1f}, Transformer-XL {math.exp(x):.1f}", flush=True)
    eval_minutes = (time.perf_counter() - start) / 60

    def size(model) -> str:
        return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"

    tokens = args.steps * args.gpt2_batch * args.gpt2_block
    print()
    print(machine_line())
    print(f"GPT-2: {size(gpt2)} parameters, {args.steps} steps x {args.gpt2_batch} x {args.gpt2_block} tokens = "
          f"{tokens:,}, {gpt2_minutes:.1f} min; Transformer-XL: {size(xl)}, {args.steps} steps x {args.xl_batch} x "
          f"{args.tgt_len} tokens (memory {args.mem_len}) = {args.steps * args.xl_batch * args.tgt_len:,}, "
          f"{xl_minutes:.1f} min; evaluation {eval_minutes:.1f} min over {len(valid) - 1:,} validation tokens")
    print()
    print("| context c (tokens seen: c/2+1 to c) | GPT-2 ppl | Transformer-XL ppl (segment c/2, memory c/2) |")
    print("|---:|---:|---:|")
    for c, g, x in results:
        mark = "*" if c > args.gpt2_block else ""
        gpt = f"{math.exp(g):.1f}{mark}" if not math.isnan(g) else "n/a"
        print(f"| {c:,} | {gpt} | {math.exp(x):.1f} |")
    print(f"(per GPT-2 BPE token; * beyond GPT-2's training block of {args.gpt2_block}: untrained positions)")
    (out / "benchmark.json").write_text(json.dumps(
        {"args": vars(args), "gpt2_minutes": gpt2_minutes, "xl_minutes": xl_minutes, "eval_minutes": eval_minutes,
         "perplexity": {c: {"gpt2": math.exp(g) if not math.isnan(g) else None, "xl": math.exp(x)}
                        for c, g, x in results}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
