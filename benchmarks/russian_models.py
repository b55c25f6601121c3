"""ctxlm's own Russian models: a GPT-2, a BERT and an ELMo biLM pretrained on RusLit's training split (Russian
literary prose), their perplexities on RusLit's test split and on FLORES-200 Russian devtest, a unigram baseline,
and what they say in Russian.

    python benchmarks/russian_models.py build   --out runs/ru --minutes 60      # three runs, resumable
    python benchmarks/russian_models.py measure --out runs/ru                   # russian.md, russian.json

`build` pretrains each family (`--families gpt2,bert,elmo`) for `--minutes` (or `--steps`) with a checkpoint every
`--save-every-minutes`: an interrupted build reruns with the same command and resumes; a finished run is not trained
again (its "done" marker). Tokenizers are trained on RusLit's training text and keep Russian as it is (cased, "й"
and "ё" kept: `ctxlm pretrain`'s default for non-Latin text). build/FAMILY.json records the steps, tokens seen,
last validation figure and the CPU seconds each took.

`measure` reports, per text set (RusLit test: 6,694 lines; FLORES-200 rus_Cyrl.devtest: 1,012 sentences):

- GPT-2: perplexity per token, exp(mean next-token loss), each line read on its own after the end-of-text token in
  non-overlapping windows of the model's context (no token is scored twice; a window's first tokens have less
  context than a sliding window would give them, so these are upper bounds), and per word, exp(the same summed loss
  / the number of whitespace-separated words): the unit that compares models with different tokenizers.
- unigram: the same tokens' frequencies in RusLit's training split (add-one smoothed), scored on the same tokens,
  per token and per word: what a model without context achieves. A contextual LM must be far below it.
- ELMo: the forward and backward LMs' perplexities per word of its own word list (<unk> beyond its softmax
  vocabulary is scored as a class, so these compare with each other, not with the sub-word models), and the share
  of <unk> targets.
- BERT: pseudo-perplexity (Salazar et al. 2020): every token masked in turn and scored from both sides, exp(mean
  loss) per token and per word, on FLORES devtest and on the first --bert-lines lines of RusLit test (each line's
  first 128 tokens): a masked LM has no left-to-right perplexity.
- A GPT-2 sample, BERT fill-ins and the ELMo LMs' next words for Russian prompts.

Vectors and losses are computed in float32. The CPU and the CPU time of each step are written with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import machine_line
from ulmfit_imdb import costed, record_build

import ctxlm
from ctxlm.checkpoint import is_checkpoint
from ctxlm.jobs import fill_in, next_words
from ctxlm.paths import dataset_path
from ctxlm.textfiles import read_text

# Each family's run: the shapes of pretraining_pays.py (a ~5M GPT-2, a ~4M ELMo) and a BERT of GPT-2's shape.
# The transformers' rates follow a cosine to `steps`, sized to end near the hour (--minutes 60) on a 2-core AVX2
# EPYC (ulmfit_imdb.py speed: 2,471 tokens/s at 4x256): --steps or --scale-steps changes them on other machines;
# --minutes stays a cap. ELMo's rate is constant after a short warm-up, so its run simply stops on time.
FAMILIES = {
    "gpt2": dict(model="gpt2", layers=4, dim=256, heads=4, vocab_size=16000, block_size=128, batch_size=16, lr=2e-3,
                 warmup=100, steps=4000),
    "bert": dict(model="bert", layers=4, dim=256, heads=4, vocab_size=16000, block_size=128, batch_size=32, lr=1e-3,
                 warmup=200, steps=2000, whole_word_masking=True),
    "elmo": dict(model="elmo", dim=128, softmax="adaptive", block_size=128, batch_size=32, lr=1e-3, warmup=20,
                 schedule="constant", steps=1_000_000),
}
PROMPTS = ["Ворота замка", "Он долго смотрел на"]
FILL_INS = ["Ворота замка закрыты на [MASK].", "Она открыла [MASK] и вошла в комнату.",
            "Москва — столица [MASK]."]
BERT_WINDOW = 128  # tokens of a line that pseudo-perplexity reads (each costs a forward pass)


def text_sets(bert_lines: int) -> dict[str, list[str]]:
    """The evaluation texts: RusLit's test lines and FLORES-200's Russian devtest sentences, blank lines left out."""
    ruslit = [line.strip() for line in read_text(dataset_path("ruslit", "test.txt.gz")).splitlines()]
    flores = [line.strip() for line in read_text(dataset_path("flores200_en_ru", "rus_Cyrl.devtest")).splitlines()]
    return {"ruslit-test": [t for t in ruslit if t], "flores-devtest": [t for t in flores if t],
            "bert-lines": bert_lines}


def words_in(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


# -- build ---------------------------------------------------------------------------------------------------------
def build(args) -> None:
    out = Path(args.out)
    for family in args.families.split(","):
        run = out / family
        settings = dict(FAMILIES[family])
        if family != "elmo":
            settings["steps"] = args.steps or round(settings["steps"] * args.scale_steps)
        record_build(out, family, run, train=partial(
            ctxlm.pretrain, data=dataset_path("ruslit"), out=run, max_minutes=args.minutes,
            save_every_minutes=args.save_every_minutes, **settings))


# -- measure -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def causal_nll(model, texts: list[str]) -> tuple[float, int, list[int]]:
    """(summed next-token loss in nats, tokens scored, every token scored) of `texts`, each read after the
    end-of-text token in non-overlapping windows of the model's context."""
    tok, context = model.eval().tokenizer, model.config.max_positions
    total, scored = 0.0, []
    for text in texts:
        ids = [tok.eos_id, *tok.encode(text)]
        for start in range(0, len(ids) - 1, context):
            window = torch.tensor([ids[start:start + context + 1]])
            logits = model(window[:, :-1]).logits.double()
            total += F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
            scored += window[0, 1:].tolist()
    return total, len(scored), scored


def unigram_nll(counts: np.ndarray, tokens: list[int]) -> float:
    """Summed loss of `tokens` under add-one smoothed unigram `counts` (one per vocabulary entry)."""
    log_probs = np.log(counts + 1.0) - math.log(counts.sum() + len(counts))
    return float(-log_probs[np.asarray(tokens)].sum())


def unigram_counts(tokenizer, vocab_size: int, cache: Path) -> np.ndarray:
    """Token frequencies of RusLit's training split under `tokenizer` (cached in `cache`)."""
    if not cache.exists():
        counts = np.zeros(vocab_size, dtype=np.int64)
        lines = [line for line in read_text(dataset_path("ruslit", "train.txt.gz")).splitlines() if line.strip()]
        for start in range(0, len(lines), 10_000):
            for ids in tokenizer.encode_batch(lines[start:start + 10_000]):
                np.add.at(counts, ids, 1)
        np.save(cache, counts)
    return np.load(cache)


def perplexities(loss: float, tokens: int, words: int) -> dict:
    return {"per_token": math.exp(loss / tokens), "per_word": math.exp(loss / words), "tokens": tokens, "words": words}


def measure_gpt2(run: Path, sets: dict, out: Path) -> dict:
    model = ctxlm.load(run / "checkpoint")
    counts = unigram_counts(model.tokenizer, model.config.vocab_size, out / "unigram-counts.npy")
    result = {}
    for name in ("ruslit-test", "flores-devtest"):
        loss, n, tokens = causal_nll(model, sets[name])
        words = words_in(sets[name])
        result[name] = {"gpt2": perplexities(loss, n, words),
                        "unigram": perplexities(unigram_nll(counts, tokens), n, words)}
    sample = ctxlm.generate(model, PROMPTS, max_new_tokens=50, temperature=0.8, top_k=40, seed=0)
    return result | {"samples": dict(zip(PROMPTS, sample, strict=True))}


@torch.no_grad()
def pseudo_nll(model, texts: list[str], batch: int = 64) -> tuple[float, int]:
    """(summed loss, tokens) of pseudo-log-likelihood: each non-special token of each text's first BERT_WINDOW
    tokens masked in turn, scored by the masked LM from both sides."""
    tok = model.eval().tokenizer
    total, count = 0.0, 0
    for text in texts:
        ids = tok.encode_text(text, max_length=BERT_WINDOW).ids
        positions = [i for i, t in enumerate(ids) if t not in tok.special_ids]
        for start in range(0, len(positions), batch):
            chunk = positions[start:start + batch]
            masked = torch.tensor([ids] * len(chunk))
            masked[torch.arange(len(chunk)), chunk] = tok.mask_id
            logits = model(masked).logits.double()[torch.arange(len(chunk)), chunk]
            total += F.cross_entropy(logits, torch.tensor([ids[i] for i in chunk]), reduction="sum").item()
            count += len(chunk)
    return total, count


def measure_bert(run: Path, sets: dict) -> dict:
    model = ctxlm.load(run / "checkpoint")
    result = {}
    for name, texts in (("ruslit-test", sets["ruslit-test"][:sets["bert-lines"]]),
                        ("flores-devtest", sets["flores-devtest"])):
        loss, n = pseudo_nll(model, texts)
        result[name] = {"bert": perplexities(loss, n, words_in(texts)), "lines": len(texts)}
    return result | {"fill_ins": [fill_in(model, text) for text in FILL_INS]}


@torch.no_grad()
def measure_elmo(run: Path, sets: dict) -> dict:
    """Each direction's loss over every word of each text (read on its own, </S> after it), per word."""
    model = ctxlm.load(run / "checkpoint").eval()
    tok = model.tokenizer
    result = {}
    for name in ("ruslit-test", "flores-devtest"):
        sums, counts, unknown = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0
        for text in sets[name]:
            ids = torch.tensor([[tok.bos_id, *tok.encode(text), tok.eos_id]])
            targets = tok.softmax_targets(ids)
            out = model(ids, targets=targets)
            n = torch.tensor([(targets[:, 1:] != -100).sum(), (targets[:, :-1] != -100).sum()]).double()
            sums += torch.stack([out.forward_loss, out.backward_loss]).double() * n
            counts += n
            unknown += int((targets[0, 1:] == tok.unk_id).sum())
        result[name] = {"forward": math.exp(sums[0] / counts[0]), "backward": math.exp(sums[1] / counts[1]),
                        "words": int(counts[0]), "unk_share": unknown / max(1, int(counts[0]))}
    return result | {"next_words": next_words(model, "Ворота замка закрыты на", "и ключ потерян .")}


def measure(args) -> None:
    out = Path(args.out)
    sets = text_sets(args.bert_lines)
    measured = {"gpt2": partial(measure_gpt2, sets=sets, out=out), "bert": partial(measure_bert, sets=sets),
                "elmo": partial(measure_elmo, sets=sets)}
    results = {}
    for family, compute in measured.items():
        run = out / family
        if not is_checkpoint(run / "checkpoint"):
            print(f"{family}: no model in {run} (run build first); left out")
            continue
        results[family] = costed(lambda compute=compute, run=run: compute(run))()
        print(f"{family}: measured in {results[family]['minutes']:.1f} min", flush=True)
    builds = {path.stem: json.loads(path.read_text()) for path in sorted((out / "build").glob("*.json"))}
    record = {"machine": machine_line(), "builds": builds, "results": results, "when": time.strftime("%Y-%m-%d")}
    (out / "russian.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    (out / "russian.md").write_text(report(record))
    print(report(record))


def report(record: dict) -> str:
    results, builds = record["results"], record["builds"]
    lines = ["| model | steps | tokens seen | pretraining CPU-hours |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {b['steps']:,} | {b['tokens'] / 1e6:.1f}M | {b['cpu_seconds'] / 3600:.2f} |"
              for name, b in builds.items()]
    lines += ["", "| text | model | perplexity per token | per word | tokens | words |",
              "|---|---|---:|---:|---:|---:|"]
    for name in ("ruslit-test", "flores-devtest"):
        for family, key in (("gpt2", "gpt2"), ("gpt2", "unigram"), ("bert", "bert")):
            cell = results.get(family, {}).get(name, {}).get(key)
            if cell:
                label = {"gpt2": "GPT-2", "unigram": "unigram (GPT-2's tokens)", "bert": "BERT (pseudo)"}[key]
                lines.append(f"| {name} | {label} | {cell['per_token']:,.1f} | {cell['per_word']:,.1f} | "
                             f"{cell['tokens']:,} | {cell['words']:,} |")
        elmo = results.get("elmo", {}).get(name)
        if elmo:
            lines.append(f"| {name} | ELMo forward / backward (its words, <unk> {100 * elmo['unk_share']:.1f} %) | "
                         f"— | {elmo['forward']:,.1f} / {elmo['backward']:,.1f} | — | {elmo['words']:,} |")
    if "gpt2" in results:
        lines += ["", "GPT-2 samples (temperature 0.8, top-k 40, seed 0):"]
        lines += [f"- **{prompt}**{text}" for prompt, text in results["gpt2"]["samples"].items()]
    if "bert" in results:
        lines += ["", "BERT fill-ins (five likeliest):"]
        lines += [f"- {f['text']} → {', '.join(f['best'])}" for f in results["bert"]["fill_ins"]]
    if "elmo" in results:
        n = results["elmo"]["next_words"]
        lines += ["", f"ELMo: after «{n['left']}» → {', '.join(n['forward'])}; before «{n['right']}» → "
                  f"{', '.join(n['backward'])}"]
    return "\n".join(lines) + f"\n\n{record['machine']}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    b = steps.add_parser("build", help="pretrain the families on RusLit (resumable)")
    b.add_argument("--out", default="runs/ru")
    b.add_argument("--families", default="gpt2,bert,elmo")
    b.add_argument("--minutes", type=float, default=60.0, help="each run's budget")
    b.add_argument("--steps", type=int, default=None, help="gpt2, bert: optimizer steps (default: FAMILIES')")
    b.add_argument("--scale-steps", type=float, default=1.0, help="gpt2, bert: FAMILIES' steps times this")
    b.add_argument("--save-every-minutes", type=float, default=10.0)
    m = steps.add_parser("measure", help="perplexities, samples, fill-ins")
    m.add_argument("--out", default="runs/ru")
    m.add_argument("--bert-lines", type=int, default=300, help="RusLit test lines for BERT's pseudo-perplexity")
    args = parser.parse_args()
    {"build": build, "measure": measure}[args.step](args)


if __name__ == "__main__":
    main()
