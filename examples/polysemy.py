"""One word, two senses: watch a model's layers tell them apart.

    python examples/polysemy.py                  # the packaged MiniLM (6 layers), offline, a few seconds
    python examples/polysemy.py --model gpt2     # any model ctxlm.load knows

Each target word appears in sentences of two senses ("bank" of a river / of money). At every layer 0..L we take
the word's vector in each sentence (ctxlm.embed with pool="words", layers="all") and average the cosine
similarity over pairs of sentences with the same sense, and over pairs with different senses. Layer 0 is the
embedding layer: the word's type plus its position, blind to context, so both similarities are alike. Going up,
each layer mixes in more of the sentence, and the different-sense similarity falls below the same-sense one:
the gap is how far context has separated the senses.
"""

from __future__ import annotations

import argparse

import torch

from ctxlm.embed import embed

# Sentences are split at spaces, so they carry no punctuation; the target appears exactly once in each.
SENSES = {
    "bank": {
        "river": ["we sat on the grassy bank of the river", "the canoe drifted toward the muddy bank",
                  "reeds grew thick along the bank of the stream"],
        "money": ["she deposited the cheque at the bank", "the bank approved our mortgage loan",
                  "he works as a teller in a bank downtown"],
    },
    "bat": {
        "animal": ["a bat flew out of the cave at dusk", "the bat hung upside down in the barn",
                   "the little bat hunts insects by echolocation"],
        "stick": ["he swung the bat and hit the ball", "she bought a new cricket bat for the season",
                  "the player gripped his wooden bat tightly"],
    },
    "spring": {
        "season": ["the flowers bloom every spring", "we plan to travel in the spring",
                   "spring follows a long cold winter"],
        "coil": ["the old mattress has a broken spring", "the spring in the watch was wound too tight",
                 "a steel spring pushes the valve shut"],
    },
}


def sense_similarities(model, word: str, senses: dict[str, list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cosine similarity of `word`'s vectors at each layer: (same sense, different senses), each (L + 1,)."""
    labels = [sense for sense, texts in senses.items() for _ in texts]
    sentences = [text.split() for texts in senses.values() for text in texts]
    per_word = embed(sentences, model, layers="all", pool="words", word_pool="mean", normalize=True)
    target = torch.stack([vectors[words.index(word)] for vectors, words in zip(per_word, sentences, strict=True)])
    cosine = torch.einsum("ild,jld->lij", target, target)  # (layers, sentences, sentences)
    same = torch.tensor([[a == b for b in labels] for a in labels])
    same_pairs = same & ~torch.eye(len(labels), dtype=torch.bool)  # a sentence paired with itself proves nothing
    return cosine[:, same_pairs].mean(-1), cosine[:, ~same].mean(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="a name or folder for ctxlm.load (default: minilm)")
    args = parser.parse_args()
    for word, senses in SENSES.items():
        same, different = sense_similarities(args.model, word, senses)
        print(f"\n{word}: {' vs '.join(senses)}")
        print("layer  same sense  different senses     gap")
        for layer, (s, d) in enumerate(zip(same.tolist(), different.tolist(), strict=True)):
            print(f"{layer:>5}  {s:>10.3f}  {d:>16.3f}  {s - d:>+6.3f}")


if __name__ == "__main__":
    main()
