"""ELMo, GPT-2 and BERT of similar size pretrained on WikiText-2 for the same time, then compared as frozen
feature extractors on SST-2 (1,000 training sentences, full dev set).

    python benchmarks/elmo_wikitext2.py --minutes 8 --out runs/bench-elmo

Each model is pretrained by the CLI (`ctxlm pretrain --model elmo|gpt2|bert --max-minutes M`, one after the
other, on the same machine), then `ctxlm compare`'s code trains a classifier on mean-pooled top-layer features
of each frozen backbone (strategy "features", 3 seeds). Finished steps are skipped when the command is run
again. Perplexities are each model's own: ELMo per word for each direction, GPT-2 per BPE token, BERT per
masked WordPiece token; they do not compare across families, the SST-2 column does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import machine_line

from ctxlm.transfer.compare import compare
from ctxlm.transfer.config import FinetuneConfig

# Similar sizes: GPT-2 and BERT 4 x 256 with an 8,192-token vocabulary (5.3M / 5.4M parameters); ELMo's
# backbone (character CNN + 2 x 2 LSTMs of 512 cells projected to 128) has 3.5M, plus its softmax.
# Runs stop on time, so the learning rate is constant after a short warm-up (a cosine over an unknown number of
# steps would not decay); ELMo's softmax over WikiText-2's 33k words is adaptive, which halves its step time.
COMMON = ["--schedule", "constant", "--warmup", "20", "--eval-every", "100", "--save-every", "100"]
PRETRAIN = {
    "elmo": ["--dim", "128", "--block-size", "128", "--batch-size", "32", "--softmax", "adaptive"],
    "gpt2": ["--dim", "256", "--layers", "4", "--heads", "4", "--block-size", "256", "--batch-size", "16"],
    "bert": ["--dim", "256", "--layers", "4", "--heads", "4", "--block-size", "128", "--batch-size", "32"],
}


def pretrain(family: str, out: Path, minutes: float) -> Path:
    run = out / f"{family}-wt2"
    if not (run / "checkpoint" / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "ctxlm", "pretrain", "--model", family, "--data", "wikitext2",
                        "--out", str(run), "--max-minutes", str(minutes), "--steps", "100000", *COMMON,
                        *PRETRAIN[family]], check=True)
    return run


def summary(run: Path) -> dict:
    """Parameters, training tokens/s and the last validation figures from the run's metrics.jsonl."""
    import ctxlm

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if any(k.startswith("valid_") for k in r)]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    model = ctxlm.load(run)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "backbone": sum(p.numel() for g in model.layer_groups() for p in g) - _softmax_size(model),
            "steps": max(r.get("step", 0) for r in records),
            "tokens_per_s": sorted(rates)[len(rates) // 2] if rates else float("nan"),
            **{k: v for k, v in (valid[-1] if valid else {}).items() if k.startswith("valid_")}}


def _softmax_size(model) -> int:
    softmax = getattr(model, "softmax", None)
    return sum(p.numel() for p in softmax.parameters()) if softmax is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="pretraining time per model")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-elmo"))
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()

    runs = {family: pretrain(family, args.out, args.minutes) for family in PRETRAIN}
    base = FinetuneConfig(model="", task="sst2", strategy="features", train_size=1000, epochs=10, device="cpu")
    table = compare(base, [str(run) for run in runs.values()], ["features"],
                    [int(s) for s in args.seeds.split(",")], args.out / "sst2")
    scores = {row["model"]: row for row in table}

    print(f"\n{machine_line()}; {args.minutes:g} min of pretraining each on WikiText-2")
    print("| model | parameters (backbone) | steps | train tokens/s | validation perplexity | SST-2 dev acc "
          "(features, 1,000 train) |")
    print("|---|---:|---:|---:|---|---:|")
    for family, run in runs.items():
        s = summary(run)
        ppl = ", ".join(f"{k.removeprefix('valid_').replace('_perplexity', '')} {v:.1f}"
                        for k, v in s.items() if k.endswith("perplexity"))
        score = scores[run.name]
        print(f"| {family} | {s['parameters'] / 1e6:.1f}M ({s['backbone'] / 1e6:.1f}M) | {s['steps']:,} "
              f"| {s['tokens_per_s']:,.0f} | {ppl} | {100 * score['mean']:.1f} ± {100 * score['std']:.1f} |")


if __name__ == "__main__":
    main()
