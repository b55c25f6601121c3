"""Full fine-tuning of one backbone on the task suite; prints dev (and test) figures beside the targets.

    python benchmarks/transfer_tasks.py --model minilm --out runs/bench-transfer [--tasks sst2,mrpc]

Tens of CPU minutes per task on 2 cores (SST-2 has 67k training sentences); minutes on one GPU. Finished
tasks (OUT/<task>/metrics.json) are not run again. Each task's hyper-parameters are below, chosen once (the
usual BERT ranges: rate 5e-5 to 1e-4, 3 epochs on large sets, more on small ones), not tuned on dev per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.finetune import finetune

# task: (metric reported, target from the issue or None, finetune overrides)
SUITE = {
    "sst2": ("accuracy", 0.905, dict(epochs=3, lr=5e-5, max_length=66)),
    "mrpc": ("f1", 0.87, dict(epochs=5, lr=1e-4)),
    "stsb": ("spearman", 0.86, dict(epochs=5, lr=1e-4)),
    "rte": ("accuracy", 0.60, dict(epochs=10, lr=5e-5, batch_size=16)),
    "conll2003": ("entity_f1", 0.88, dict(epochs=5, lr=1e-4, max_length=160)),
    "copa": ("accuracy", None, dict(epochs=10, lr=3e-5, batch_size=16)),
    "arc_easy": ("accuracy", None, dict(epochs=5, lr=5e-5, batch_size=16)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-transfer")
    parser.add_argument("--lr", type=float, help="override every task's rate")
    parser.add_argument("--epochs", type=float, help="override every task's epochs")
    parser.add_argument("--pooling", choices=["cls", "mean", "last"])
    args = parser.parse_args()
    overriding = {k: v for k, v in (("lr", args.lr), ("epochs", args.epochs), ("pooling", args.pooling)) if v}
    rows = []
    for task in args.tasks.split(","):
        metric, target, overrides = SUITE[task]
        run_dir = Path(args.out) / task
        done = run_dir / "metrics.json"
        if done.is_file():
            result = json.loads(done.read_text())["metrics"]
        else:
            config = FinetuneConfig(model=args.model, task=task, strategy=args.strategy, seed=args.seed,
                                    device=args.device, **(overrides | overriding))
            result = finetune(config, run_dir)
        test = result.get(f"test_{metric}")
        rows.append((task, metric, result[f"dev_{metric}"], test, target, result["minutes"], result["device"]))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\n{args.model}, strategy {args.strategy}, seed {args.seed}, overrides {overriding}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {gpu}")
    print("| task | metric | dev | test | target | minutes | device |")
    print("|---|---|---|---|---|---|---|")
    for task, metric, dev, test, target, minutes, device in rows:
        def pct(x):
            return "" if x is None else f"{100 * x:.1f}"
        print(f"| {task} | {metric} | {pct(dev)} | {pct(test)} | {pct(target)} | {minutes:.1f} | {device} |")


if __name__ == "__main__":
    main()
