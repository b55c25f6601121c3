"""Sentence-embedding throughput: `ctxlm.embed` vs sentence-transformers' `encode`, same model, same texts.

    python benchmarks/embed_vs_sentence_transformers.py [--batch-size 32] [--rounds 5]

Both read the packaged all-MiniLM-L6-v2 files in one process and embed each text set whole, once per round, in
turn (alternating rounds, medians; see common.py). sentence-transformers' pipeline for this model ends in a
Normalize module, so ctxlm is asked for normalize=True too; both cut texts at 256 tokens (the model's
max_seq_length). ctxlm runs in its default precision (dtype="auto": bf16 autocast where the CPU has AMX or
AVX512-BF16, else fp32; `ctxlm doctor` says which), and the vectors are checked to agree (max |difference| of
ctxlm's fp32 vectors and sentence-transformers'). ctxlm also runs with dtype="bf16" (autocast; the CPU's bf16
matrix units where it has them, emulated elsewhere), reported with the lowest cosine of its vectors to
sentence-transformers' float32 ones. The functions here also serve `ctxlm bench`.

Text sets: the 872 SST-2 dev sentences (short), and 200 long texts of 225 words each, consecutive words of the
WikiText-2 validation articles (headings left out): 231 to 359 WordPiece tokens, so nearly all are cut at 256.
"""

from __future__ import annotations

import argparse
import gzip
import warnings
from collections.abc import Callable

import torch
from common import machine_line, median_rates, timed_rate
from sentence_transformers import SentenceTransformer

import ctxlm
from ctxlm.convert import packaged_model_path
from ctxlm.paths import dataset_path
from ctxlm.precision import choose
from ctxlm.transfer.data import load_task

MAX_TOKENS = 256


def long_texts(count: int, words: int) -> list[str]:
    """`count` texts of `words` consecutive words from WikiText-2 valid, skipping the "= Heading =" lines."""
    with gzip.open(dataset_path("wikitext2", "valid.txt.gz"), "rt", encoding="utf-8") as f:
        stream = [word for line in f if not line.strip().startswith("=") for word in line.split()]
    return [" ".join(stream[i * words:(i + 1) * words]) for i in range(count)]


def load_models(device: torch.device | str = "cpu"):
    """(ctxlm's MiniLM, sentence-transformers' MiniLM), both read from the packaged files."""
    reference = SentenceTransformer(str(packaged_model_path("minilm")), device=str(device))
    reference.max_seq_length = MAX_TOKENS
    return ctxlm.load("minilm", device=device), reference


def encoders(model, reference, batch_size: int) -> dict[str, Callable[[list[str]], torch.Tensor]]:
    """Texts → unit vectors: ctxlm in its default precision ("auto"), in float32 and under bfloat16 autocast, and
    sentence-transformers."""

    def ours(texts: list[str], dtype: str = "auto") -> torch.Tensor:
        return ctxlm.embed(texts, model, pool="mean", normalize=True, batch_size=batch_size,
                           max_length=MAX_TOKENS, dtype=dtype)  # on the model's device

    def theirs(texts: list[str]) -> torch.Tensor:
        return reference.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)

    return {"ctxlm": ours, "ctxlm fp32": lambda texts: ours(texts, "fp32"),
            "ctxlm bf16": lambda texts: ours(texts, "bf16"), "sentence-transformers": theirs}


def rate(encode: Callable[[list[str]], torch.Tensor], texts: list[str],
         device: torch.device | str = "cpu") -> Callable[[], float]:
    """Sentences/s of embedding `texts` whole, once per call."""
    return lambda: timed_rate(lambda: encode(texts), len(texts), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="sentence-transformers' default")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*longer than max_length")  # the long texts are cut on purpose

    encode = encoders(*load_models(), args.batch_size)

    text_sets = {"SST-2 dev (872 sentences)": [e.texts[0] for e in load_task("sst2").dev],
                 "WikiText-2 valid (200 x 225 words)": long_texts(200, 225)}
    rows = []
    for name, texts in text_sets.items():
        reference_vectors = encode["sentence-transformers"](texts)  # the first calls also warm up
        difference = (encode["ctxlm fp32"](texts) - reference_vectors).abs().max().item()
        cosine = (encode["ctxlm bf16"](texts).float() * reference_vectors).sum(-1).min().item()  # unit vectors
        timed = {name: fn for name, fn in encode.items() if name != "ctxlm fp32"}  # the default is one of them
        rates = median_rates({contender: rate(fn, texts) for contender, fn in timed.items()}, args.rounds)
        rows.append((name, rates, difference, cosine))

    print(machine_line())
    default = choose("auto", "cpu")
    print(f"all-MiniLM-L6-v2, mean pooling + normalisation, batch {args.batch_size}, cut at {MAX_TOKENS} tokens; "
          f"medians of {args.rounds} alternating rounds; ctxlm's default precision here: {default.name} "
          f"({default.reason})\n")
    print(f"| text set | sentence-transformers sent/s | ctxlm default ({default.name}) sent/s | ratio | max abs diff "
          "| ctxlm bf16 sent/s | ratio | min cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rates, difference, cosine in rows:
        reference = rates["sentence-transformers"]
        print(f"| {name} | {reference:,.1f} | {rates['ctxlm']:,.1f} | {rates['ctxlm'] / reference:.2f}x "
              f"| {difference:.1e} | {rates['ctxlm bf16']:,.1f} | {rates['ctxlm bf16'] / reference:.2f}x "
              f"| {cosine:.5f} |")


if __name__ == "__main__":
    main()
