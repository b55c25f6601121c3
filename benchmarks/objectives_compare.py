"""The pretraining objectives that came after BERT, at equal compute: BERT's masked LM + next-sentence prediction,
RoBERTa's masked LM alone (dynamic masks, full-sentence packing), ALBERT's masked LM + sentence-order prediction
(one set of layer weights), DeBERTa's masked LM (disentangled attention, the enhanced mask decoder) and XLNet's
permutation LM — each the same width and depth, pretrained on the same text (WikiText-2 + the Gutenberg books,
pretraining_pays.py's corpus) for the same number of training tokens, then fully fine-tuned on the same 1,000 SST-2
labels (3 seeds) and scored on SST-2's dev split; a row of the same BERT from random weights beside them.

    python benchmarks/objectives_compare.py --out runs/objectives --tokens 2500000

Every pretraining run stops at `--tokens` (steps = tokens / (batch × block)), resumes when interrupted and is not
run again once done; each fine-tuning's result is a JSON file in --out/results. objectives.md holds the table with
the tokens each model saw, its parameters, the CPU time of its pretraining and its last held-out figure in its own
objective (masked-LM accuracy; XLNet: perplexity), and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

from common import machine_info, mean_cell, once_json
from pretraining_pays import general_corpus, random_copy
from ulmfit_imdb import costed, ints, record_build

import ctxlm
from ctxlm.checkpoint import is_resumable
from ctxlm.jobs import finetune_config
from ctxlm.paths import dataset_path
from ctxlm.transfer.data import load_task
from ctxlm.transfer.finetune import finetune

OBJECTIVES = {"bert": "masked LM + next-sentence prediction", "roberta": "masked LM, dynamic masks, full sentences",
              "albert": "masked LM + sentence order, shared layers", "deberta": "masked LM, disentangled attention",
              "xlnet": "permutation LM (two-stream attention)"}
SCRATCH = "bert-scratch"
SPREAD_SENTENCES = 300  # SST-2 training sentences (seed 0's draw), never dev


def build(args, out: Path) -> dict[str, str]:
    """Pretrain each family to the same token budget; name → checkpoint."""
    steps = args.tokens // (args.batch_size * args.block_size)
    models = {}
    for family in args.families.split(","):
        run = out / family
        record_build(out, family, run, train=partial(
            ctxlm.pretrain, model=family, data=general_corpus(), out=run,
            valid=dataset_path("wikitext2", "valid.txt.gz"), layers=args.layers, dim=args.dim, heads=args.heads,
            vocab_size=args.vocab, block_size=args.block_size, batch_size=args.batch_size, steps=steps,
            lr=args.lr, warmup=max(1, steps // 20), save_every_minutes=args.save_every_minutes))
        models[family] = str(run / "checkpoint")
    if "bert" in models:
        models[SCRATCH] = str(random_copy(Path(models["bert"]), out / SCRATCH))
    return models


def held_out(valid: dict | None, pair_objective: str | None) -> str:
    """A pretraining run's last validation figure in its own objective's terms: masked-LM accuracy (and the sentence
    task's accuracy, logged as nsp_accuracy whichever task the config's `pair_objective` names) for the masked LMs,
    perplexity over the permuted targets for XLNet."""
    if not valid:
        return "—"
    if "valid_mlm_accuracy" not in valid:
        return f"perplexity {valid['valid_perplexity']:,.0f}"
    text = f"masked-LM acc. {valid['valid_mlm_accuracy']:.3f}"
    if "valid_nsp_accuracy" in valid:
        text += f", {pair_objective.upper()} {valid['valid_nsp_accuracy']:.2f}"
    return text


def spread(model, texts: list[str]) -> float:
    """How far apart the model's sentence vectors (the top layer's mean over tokens, what fine-tuning's head reads)
    lie: their mean distance from their centroid over the centroid's norm. Near 0 the top layer says the same for
    every sentence (a masked LM still on its unigram plateau), and fine-tuning starts from a collapsed state.
    Computed in float32 whatever the CPU (auto would run bf16 where it has bf16 units): the figure is a model's,
    not a machine's."""
    vectors = ctxlm.embed(texts, model, layers="last", pool="mean", dtype="fp32").double()
    centre = vectors.mean(0)
    return ((vectors - centre).norm(dim=-1).mean() / centre.norm()).item()


def sst2_cell(out: Path, name: str, model: str, seed: int, args) -> dict:
    cell = f"{name}-lr{args.ft_lr:g}-{seed}"  # a run at another rate is another cell, not this one's result

    def run() -> dict:
        data = load_task("sst2", train_size=args.labels, seed=seed)
        config = finetune_config(model, "sst2", seed=seed, train_size=args.labels, strategy="full", lr=args.ft_lr,
                                 epochs=args.epochs, min_steps=args.min_steps, evals_per_epoch=0,
                                 batch_size=32, max_length=64)
        run_dir = out / "finetune" / cell
        metrics = finetune(config, run_dir, data=data, resume=is_resumable(run_dir / "checkpoint"))
        print(f"{name}, seed {seed}: dev {100 * metrics['dev_accuracy']:.1f}", flush=True)
        return {"row": name, "seed": seed, "lr": args.ft_lr, "dev_accuracy": metrics["dev_accuracy"]}

    return once_json(out / "results" / f"{cell}.json", costed(run))


def compare(args) -> str:
    """Build every family, fine-tune each (and BERT from random weights) on SST-2 with every seed, write
    objectives.md and return its text."""
    out = Path(args.out)
    models = build(args, out)
    records = [sst2_cell(out, name, model, seed, args) for name, model in models.items() for seed in ints(args.seeds)]
    builds = {name: json.loads((out / "build" / f"{name}.json").read_text()) for name in models if name != SCRATCH}
    texts = [e.texts[0] for e in load_task("sst2", train_size=SPREAD_SENTENCES, seed=0).train]
    lines = [f"Equal compute: {args.tokens / 1e6:.1f}M training tokens each, {args.layers} layers x {args.dim}; "
             f"SST-2 dev accuracy ×100 after full fine-tuning at {args.ft_lr:g} on {args.labels:,} labels "
             "(mean ± std [seeds])", "",
             "| model | objective | parameters | tokens seen | pretraining CPU-min | held out (own objective) "
             f"| spread of {len(texts)} sentence vectors | SST-2 dev |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, model in models.items():
        accuracy = mean_cell([100 * r["dev_accuracy"] for r in records if r["row"] == name])
        loaded = ctxlm.load(model)
        parameters = sum(p.numel() for p in loaded.parameters()) / 1e6
        b = builds.get(name)
        seen = f"{b['tokens'] / 1e6:.1f}M" if b else "—"
        cpu = f"{b['cpu_seconds'] / 60:.0f}" if b else "—"
        own = held_out(b["valid"] if b else None, loaded.config.pair_objective)
        lines.append(f"| {name} | {OBJECTIVES.get(name, 'random weights')} | {parameters:.1f}M | {seen} | {cpu} | "
                     f"{own} | {spread(loaded, texts):.2f} | {accuracy} |")
    fine_tuning = statistics.fsum(r.get("cpu_seconds", 0) for r in records) / 3600
    lines += ["", f"{machine_info()['cpu']}; pretraining, fine-tuning and the spread in fp32; fine-tuning "
              f"{fine_tuning:.2f} CPU-hours"]
    text = "\n".join(lines) + "\n"
    (out / "objectives.md").write_text(text)
    return text


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/objectives")
    parser.add_argument("--families", default="bert,roberta,albert,deberta,xlnet")
    parser.add_argument("--tokens", type=int, default=2_500_000, help="training tokens each model reads")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="pretraining peak rate (cosine, 5 %% warm-up)")
    parser.add_argument("--save-every-minutes", type=float, default=10.0)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ft-lr", type=float, default=5e-4,
                        help="full fine-tuning's rate: the one held-out labels chose for networks of this size in "
                             "the SST-2 and CEDR measurements (README)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=200)
    return parser


def main() -> None:
    print(compare(parser().parse_args()), end="")


if __name__ == "__main__":
    main()
