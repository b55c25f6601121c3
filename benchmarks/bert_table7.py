"""BERT paper Table 7 (Devlin et al. 2018, feature-based NER) at MiniLM scale: frozen features on CoNLL-2003.

    nice -n 10 python benchmarks/bert_table7.py [--model minilm] [--epochs 3] [--hidden 256]
        [--train-sentences N] [--seed 0] [--features embeddings,last,...]

The encoder stays frozen: every hidden state of every sentence is computed once (batched, inference mode) and
cached in memory as float16, one vector per word (its first sub-token, as in the paper). Each feature choice
then feeds a fresh two-layer BiLSTM tagger and a linear layer to the 9 tags, trained with Adam on the train
split and scored by entity F1 (conlleval's, via seqeval) on the dev split. The weighted sums are ELMo's scalar
mix (softmax weights and a scale γ), learned with the tagger.

Differences from the paper, which used cased BERT-base (12 layers, width 768) and a 768-dimensional BiLSTM:
the packaged all-MiniLM-L6-v2 is *uncased* (CoNLL's capitals, a strong cue for names, are lost), has 6 layers of
width 384 (so "all layers" mixes 6, "last four" are layers 3-6) and was tuned for sentence embeddings, not
token tagging; the BiLSTM here has 256 units per direction and trains a few epochs, to fit 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

import ctxlm
from ctxlm.nn.scalar_mix import ScalarMix
from ctxlm.transfer.data import Example, load_task
from ctxlm.transfer.metrics import compute_metrics

# name: (paper dev F1 with BERT-base, the row label of the paper's Table 7)
FEATURES = {
    "embeddings": (91.0, "embeddings only"),
    "second-to-last": (95.6, "second-to-last hidden"),
    "last": (94.9, "last hidden"),
    "sum-last-4": (95.9, "weighted sum last four hidden"),
    "concat-last-4": (96.1, "concat last four hidden"),
    "sum-all": (95.5, "weighted sum all layers (paper: 12)"),
}


def layers_of(feature: str, n_layers: int) -> list[int]:
    """Which states (0 = embeddings ... n_layers = top) a feature reads."""
    last_four = list(range(n_layers - 3, n_layers + 1))
    return {"embeddings": [0], "second-to-last": [n_layers - 1], "last": [n_layers], "sum-last-4": last_four,
            "concat-last-4": last_four, "sum-all": list(range(1, n_layers + 1))}[feature]


@torch.inference_mode()
def word_states(model, sentences: list[Example], batch_size: int) -> list[Tensor]:
    """Per sentence, (words, L+1, dim) float16: every state at each word's first sub-token."""
    tokenizer = model.tokenizer
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].texts))
    out: list[Tensor | None] = [None] * len(sentences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        encodings = tokenizer.encode_words_batch([list(sentences[i].texts) for i in chunk], max_length=None)
        ids = pad_sequence([torch.tensor(e.ids) for e in encodings], batch_first=True, padding_value=tokenizer.pad_id)
        mask = pad_sequence([torch.ones(len(e), dtype=torch.bool) for e in encodings], batch_first=True)
        states = torch.stack(model.backbone(ids, mask=mask).states, dim=2).half()  # (batch, time, L+1, dim)
        for row, (i, e) in enumerate(zip(chunk, encodings, strict=True)):
            out[i] = states[row, e.word_starts()].clone()
    return out


class Tagger(nn.Module):
    """(batch, words, layers, dim) features → mix or concat → two-layer BiLSTM → linear → tag logits."""

    def __init__(self, feature: str, n_states: int, dim: int, hidden: int, n_tags: int) -> None:
        super().__init__()
        self.mix = ScalarMix(n_states) if feature.startswith("sum") else None
        width = dim * n_states if self.mix is None else dim
        self.lstm = nn.LSTM(width, hidden, num_layers=2, bidirectional=True, batch_first=True, dropout=0.2)
        self.out = nn.Linear(2 * hidden, n_tags)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        x = features.flatten(2) if self.mix is None else self.mix(features)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        return self.out(hidden)


def batch(states: list[Tensor], indices: list[int], layers: list[int]) -> tuple[Tensor, Tensor]:
    chosen = [states[i][:, layers] for i in indices]
    return pad_sequence(chosen, batch_first=True).float(), torch.tensor([len(s) for s in chosen])


def train_and_score(feature: str, data, states: dict[str, list[Tensor]], n_layers: int, args) -> float:
    torch.manual_seed(args.seed)
    layers = layers_of(feature, n_layers)
    dim = states["dev"][0].shape[-1]
    tagger = Tagger(feature, len(layers), dim, args.hidden, len(data.spec.labels))
    optimizer = torch.optim.Adam(tagger.parameters(), lr=args.lr)
    labels = [torch.tensor(e.label) for e in data.train]
    for _ in range(args.epochs):
        tagger.train()
        order = torch.randperm(len(data.train)).tolist()
        for start in range(0, len(order), args.batch_size):
            indices = order[start:start + args.batch_size]
            features, lengths = batch(states["train"], indices, layers)
            target = pad_sequence([labels[i] for i in indices], batch_first=True, padding_value=-100)
            loss = nn.functional.cross_entropy(tagger(features, lengths).flatten(0, 1), target.flatten(),
                                               ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(tagger.parameters(), 5.0)
            optimizer.step()
    tagger.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(data.dev), 256):
            indices = list(range(start, min(start + 256, len(data.dev))))
            features, lengths = batch(states["dev"], indices, layers)
            tags = tagger(features, lengths).argmax(-1)
            predictions += [tags[row, :n].tolist() for row, n in enumerate(lengths.tolist())]
    return compute_metrics(data.spec, predictions, [e.label for e in data.dev])["entity_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256, help="BiLSTM units per direction (paper: 768)")
    parser.add_argument("--train-sentences", type=int, help="random subset of the 14,041 training sentences")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", default=",".join(FEATURES))
    args = parser.parse_args()
    features = args.features.split(",")
    unknown = set(features) - set(FEATURES)
    if unknown:
        parser.error(f"unknown features {', '.join(sorted(unknown))}: expected some of {', '.join(FEATURES)}")

    torch.manual_seed(args.seed)
    model = ctxlm.load(args.model)
    data = load_task("conll2003", train_size=args.train_sentences, seed=args.seed)
    start = time.perf_counter()
    states = {"train": word_states(model, data.train, 64), "dev": word_states(model, data.dev, 64)}
    extract_minutes = (time.perf_counter() - start) / 60
    torch.set_num_threads(1)  # the tagger's small sequential LSTM steps lose more to thread sync than they gain
    rows = []
    for feature in features:
        start = time.perf_counter()
        f1 = train_and_score(feature, data, states, model.config.n_layers, args)
        rows.append((feature, f1, (time.perf_counter() - start) / 60))
        print(f"{feature}: dev entity F1 {100 * f1:.1f} ({rows[-1][2]:.1f} min)", flush=True)

    print(f"\n{args.model} ({model.config.n_layers} layers, width {model.config.dim}), frozen; "
          f"{len(data.train):,} training sentences, {args.epochs} epochs, BiLSTM 2 x {args.hidden} per direction, "
          f"batch {args.batch_size}, Adam {args.lr}, seed {args.seed}; features extracted in {extract_minutes:.1f} "
          f"min; tagger on 1 CPU thread\n")
    print("| feature | paper dev F1 (BERT-base) | ours dev F1 | minutes |")
    print("|---|---:|---:|---:|")
    for feature, f1, minutes in rows:
        paper, label = FEATURES[feature]
        print(f"| {label} | {paper:.1f} | {100 * f1:.1f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
