"""The lecture's homonymy example, measured: does a model tell "замок" (castle) from "замок" (lock) by context?

Two readings per model, at every layer (0 = the input layer, L = the top):

- the lecture's sentence "Ворота замка закрыты на замок" (the castle's gates are locked with a lock) and one where
  both are the same form, "Этот замок запирают на старый замок": the cosine between the two "замок" vectors. A
  static embedding gives the same-form pair cosine 1 at every depth; a contextual model pulls them apart above
  its input layer.
- a sense probe (data/ru_senses.tsv, written for it: 10 homonyms, two senses each, five sentences per sense, the
  target word in the same form in every sentence of its word): for each occurrence, the nearest other occurrence of
  the same word by cosine of the word's vector (the mean of its sub-tokens); the score is the share whose nearest
  neighbour has the same sense (leave-one-out nearest-neighbour accuracy; a random neighbour scores 4/9 ≈ 0.44,
  as the left-out sentence leaves 4 of its own sense against 5 of the other). Ties (an input layer gives every
  occurrence of a word-level model one vector) count as the share of the tied neighbours with the same sense, so a
  layer that cannot tell the senses apart scores its chance level, not whatever the sort order picks.

    python benchmarks/russian_senses.py --models minilm --out runs/ru-senses
    python benchmarks/russian_senses.py --models minilm,bert=runs/ru-bert,elmo=runs/ru-elmo --out runs/ru-senses

Writes senses.json, senses.md (best layer, input layer, every layer) and senses.png (accuracy and the "замок"
cosine against depth, one line per model) in --out. Vectors are computed in float32 (`dtype="fp32"`).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine_line

import ctxlm

PROBE = Path(__file__).resolve().parent / "data" / "ru_senses.tsv"
# The lecture's sentence (two forms: genitive "замка", accusative "замок") and one with the same form twice.
LECTURE_PAIRS = {"lecture": ("Ворота [замка] закрыты на [замок]", "замка/замок"),
                 "same-form": ("Этот [замок] запирают на старый [замок]", "замок/замок")}
WORD = re.compile(r"\w+(?:-\w+)*|[^\w\s]")  # words and punctuation marks, as BERT's pre-tokeniser splits them


@dataclass(frozen=True)
class Occurrence:
    word: str  # the homonym, e.g. "замок"
    sense: str  # e.g. "castle"
    words: tuple[str, ...]  # the sentence split into words
    target: int  # the homonym's index in `words`


def split_marked(sentence: str) -> tuple[list[str], list[int]]:
    """A sentence with its targets in [brackets] → its words and the targets' indices among them."""
    words, targets = [], []
    for index, piece in enumerate(re.split(r"\[([^\]]+)\]", sentence)):
        if index % 2:  # a bracketed target
            targets.append(len(words))
            words.append(piece)
        else:
            words.extend(WORD.findall(piece))
    return words, targets


def read_probe(path: Path = PROBE) -> list[Occurrence]:
    """The probe's sentences; a malformed line is an error naming the file and the line."""
    occurrences = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise SystemExit(f"{path}:{number}: expected word<TAB>sense<TAB>sentence, got {len(fields)} fields")
        word, sense, sentence = fields
        words, targets = split_marked(sentence)
        if len(targets) != 1 or words[targets[0]] != word:
            raise SystemExit(f"{path}:{number}: expected exactly one [{word}] in the sentence")
        occurrences.append(Occurrence(word, sense, tuple(words), targets[0]))
    return occurrences


def word_vectors(model, sentences: list[list[str]], targets: list[int]) -> torch.Tensor:
    """(n, L + 1, dim): each target word's vector at every layer (mean of its sub-tokens), in float32."""
    per_sentence = ctxlm.embed(sentences, model, layers="all", pool="words", word_pool="mean", dtype="fp32")
    for vectors, target, words in zip(per_sentence, targets, sentences, strict=True):
        if target >= len(vectors):  # the model's context ended before the target (a byte-level vocabulary
            raise SystemExit(f"the model reads only {len(vectors)} words of {' '.join(words)!r}: "  # without
                             "Cyrillic pieces spends a token per byte)")  # the target
    return torch.stack([vectors[target] for vectors, target in zip(per_sentence, targets, strict=True)])


def nearest_sense_accuracy(vectors: torch.Tensor, words: list[str], senses: list[str]) -> float:
    """Leave-one-out nearest-neighbour sense accuracy of (n, dim) vectors among occurrences of the same word; tied
    nearest neighbours count as the share of them with the same sense."""
    unit = F.normalize(vectors.double(), dim=-1)
    similarity = unit @ unit.T
    scores = []
    for i in range(len(words)):
        others = [j for j in range(len(words)) if j != i and words[j] == words[i]]
        sims = similarity[i, others]
        nearest = [others[k] for k in torch.nonzero(sims >= sims.max() - 1e-9).flatten().tolist()]
        scores.append(sum(senses[j] == senses[i] for j in nearest) / len(nearest))
    return sum(scores) / len(scores)


def measure(model, occurrences: list[Occurrence]) -> dict:
    vectors = word_vectors(model, [list(o.words) for o in occurrences], [o.target for o in occurrences])
    words, senses = [o.word for o in occurrences], [o.sense for o in occurrences]
    accuracy = [nearest_sense_accuracy(vectors[:, layer], words, senses) for layer in range(vectors.shape[1])]
    cosines = {}
    for name, (sentence, _) in LECTURE_PAIRS.items():
        split, targets = split_marked(sentence)
        pair = word_vectors(model, [split, split], targets)
        cosines[name] = F.cosine_similarity(pair[0].double(), pair[1].double(), dim=-1).tolist()
    return {"accuracy": accuracy, "cosine": cosines}


def table(results: dict[str, dict], n: int) -> str:
    lines = [f"Sense probe: {n} occurrences (benchmarks/data/ru_senses.tsv), leave-one-out nearest-neighbour sense "
             "accuracy (a random neighbour: 4/9 ≈ 0.44); cosine of the two \"замок\" vectors.", "",
             "| model | input layer | best layer | all layers (0 → top) | cos, lecture (0 → top) | "
             "cos, same form (0 → top) |", "|---|---|---|---|---|---|"]
    for name, result in results.items():
        acc = result["accuracy"]
        best = max(range(len(acc)), key=acc.__getitem__)
        row = " ".join(f"{a:.2f}" for a in acc)
        cos = {k: " ".join(f"{c:.2f}" for c in v) for k, v in result["cosine"].items()}
        lines.append(f"| {name} | {acc[0]:.2f} | {acc[best]:.2f} (layer {best}) | {row} | {cos['lecture']} | "
                     f"{cos['same-form']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        left.plot(range(len(result["accuracy"])), result["accuracy"], marker="o", label=name)
        right.plot(range(len(result["cosine"]["same-form"])), result["cosine"]["same-form"], marker="o", label=name)
    left.axhline(4 / 9, color="grey", linestyle=":", label="random neighbour")
    left.set(xlabel="layer (0 = input)", ylabel="sense accuracy (leave-one-out 1-NN)", ylim=(0.3, 1.02))
    right.set(xlabel="layer (0 = input)", ylabel='cos("замок", "замок")',
              title="«Этот замок запирают на старый замок»")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_models(spec: str) -> dict[str, str]:
    """"minilm,bert=runs/ru-bert" → {"minilm": "minilm", "bert": "runs/ru-bert"}."""
    models = {}
    for item in spec.split(","):
        name, _, where = item.partition("=")
        models[name] = where or name
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm", help="name=folder pairs (or a name ctxlm.load knows)")
    parser.add_argument("--out", type=Path, default=Path("runs/ru-senses"))
    args = parser.parse_args()
    occurrences = read_probe()
    results = {name: measure(ctxlm.load(where), occurrences) for name, where in parse_models(args.models).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "senses.json").write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1))
    text = table(results, len(occurrences)) + f"\n{machine_line()}\n"
    (args.out / "senses.md").write_text(text)
    plot(results, args.out / "senses.png")
    print(text)


if __name__ == "__main__":
    main()
