"""Zero-shot STS-B: cosine similarity of mean-pooled MiniLM sentence vectors against the gold scores, no training.

    python benchmarks/stsb_zero_shot.py [--batch-size 64]

Scores the 1,500 dev pairs with `ctxlm.embed(..., pool="mean")` (the top layer's mean over every token) and, in
the same run, with sentence-transformers' `encode` on the same packaged all-MiniLM-L6-v2 files, as a reference:
Spearman and Pearson correlations x 100. The published figure for all-MiniLM-L6-v2 is 82.03 Spearman on the
STS-B *test* split; our test.tsv (GLUE's) has no scores, so only dev is scored here (dev is usually a few
points easier than test).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from scipy import stats
from sentence_transformers import SentenceTransformer

import ctxlm
from ctxlm.convert import packaged_model_path
from ctxlm.transfer.data import load_task

PUBLISHED_TEST_SPEARMAN = 82.03  # sentence-transformers' model card for all-MiniLM-L6-v2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    pairs = load_task("stsb").dev
    a_texts, b_texts = [e.texts[0] for e in pairs], [e.texts[1] for e in pairs]
    gold = [e.label for e in pairs]
    model = ctxlm.load("minilm")
    reference = SentenceTransformer(str(packaged_model_path("minilm")), device="cpu")
    encoders = {
        "ctxlm.embed(pool='mean')": lambda texts: ctxlm.embed(texts, model, pool="mean", batch_size=args.batch_size),
        "sentence-transformers encode": lambda texts: reference.encode(texts, batch_size=args.batch_size,
                                                                       convert_to_tensor=True),
    }
    rows = []
    for name, encode in encoders.items():
        start = time.perf_counter()
        cosines = F.cosine_similarity(encode(a_texts), encode(b_texts)).tolist()
        rows.append((name, 100 * stats.spearmanr(gold, cosines)[0], 100 * stats.pearsonr(gold, cosines)[0],
                     time.perf_counter() - start))

    print(f"STS-B dev, {len(pairs):,} pairs, zero-shot cosine of all-MiniLM-L6-v2 vectors; batch {args.batch_size}, "
          f"{torch.get_num_threads()} CPU threads; published (test split): {PUBLISHED_TEST_SPEARMAN} Spearman\n")
    print("| embedder | Spearman x100 | Pearson x100 | seconds |")
    print("|---|---:|---:|---:|")
    for name, spearman, pearson, taken in rows:
        print(f"| {name} | {spearman:.2f} | {pearson:.2f} | {taken:.1f} |")


if __name__ == "__main__":
    main()
