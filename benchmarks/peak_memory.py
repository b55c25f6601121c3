"""Peak memory of a few training steps, measured in a fresh process (one per measure and contender; run by
`ctxlm bench --only memory` and benchmarks/scaling.py).

    python benchmarks/peak_memory.py gpt2 ctxlm --layers 4 --dim 256 --heads 4 --block 256 --batch 8
    python benchmarks/peak_memory.py finetune transformers --batch 32

Prints one JSON line, {"bytes": B, "baseline_bytes": R}: B is what the steps add at their peak to the R bytes
held once the model, its inputs and the optimizer are built; that is the gradients, AdamW's two moments and
the activations, the memory that grows with model and batch.

- CPU: resident set size (RSS). The kernel's peak RSS (VmHWM) is reset through /proc/self/clear_refs (Linux
  4.0 and later) once everything is built, so B = peak RSS during the steps - RSS just before them. The fresh
  process matters: in a process that ran other work, the C allocator would hand back pages it already holds,
  and the peak would not rise.
- GPU: torch.cuda.max_memory_allocated during the steps - memory_allocated before them (tensors only; the
  caching allocator's spare blocks are left out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from common import Shape, add_model_arguments, resolve_device, shape_of

from ctxlm.errors import UserError

MEASURES = ("gpt2", "bert", "finetune")
CONTENDERS = ("ctxlm", "transformers")
CLEAR_REFS = Path("/proc/self/clear_refs")
STEPS = 2  # the first also allocates AdamW's moments; the second runs with them in place


def check_supported(device: torch.device) -> None:
    """Measuring CPU memory needs Linux's resettable peak RSS: say so before any work starts."""
    if device.type == "cpu" and not CLEAR_REFS.exists():
        raise UserError("peak memory on a CPU is read from Linux's /proc/self (clear_refs, VmHWM), which this system "
                        "does not have; leave out the memory section (--only ...) or measure on a GPU")


def training_step(measure: str, contender: str, shape: Shape, device: torch.device) -> Callable[[], None]:
    """Build the model, its batch and a fused AdamW; return one training step."""
    if measure == "gpt2":
        import gpt2_vs_transformers as gpt2

        x, y = gpt2.batch(shape, device)
        if contender == "ctxlm":
            model = gpt2.build_ctxlm(shape).to(device)
            loss = lambda: gpt2.ctxlm_loss(model, x, y)
        else:
            model = gpt2.transformers.GPT2LMHeadModel(gpt2.hf_config(shape, 0.1)).to(device)
            loss = lambda: gpt2.hf_loss(model, x, y)
    elif measure == "bert":
        import bert_vs_transformers as bert

        b = bert.pretraining_batch(shape, device)
        if contender == "ctxlm":
            model = bert.build_ctxlm(shape).to(device)
            loss = lambda: bert.ctxlm_loss(model, b)
        else:
            model = bert.transformers.BertForPreTraining(bert.hf_config(shape)).to(device)
            loss = lambda: bert.hf_loss(model, b)
    else:
        import finetune_vs_transformers as finetune

        b = finetune.task_batch(shape.batch, device)
        if contender == "ctxlm":
            model = finetune.build_ctxlm(device)
            loss = lambda: finetune.ctxlm_loss(model, b)
        else:
            model = finetune.build_hf(device)
            loss = lambda: finetune.hf_loss(model, b)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_steps(step: Callable[[], None], steps: int, device: torch.device) -> dict[str, int]:
    """What `steps` calls of `step` add at their peak to the memory held before them (see the module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _status_bytes("VmRSS")
        CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status_bytes("VmHWM")
    return {"bytes": peak - before, "baseline_bytes": before}


def in_fresh_process(measure: str, contender: str, shape: Shape, device: torch.device,
                     steps: int = STEPS) -> dict[str, int]:
    """Run this file as a child process for one measure and contender; its JSON line."""
    args = [sys.executable, str(Path(__file__)), measure, contender, "--device", str(device), "--steps", str(steps)]
    for name, value in vars(shape).items():
        args += [f"--{name}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measure", choices=MEASURES)
    parser.add_argument("contender", choices=CONTENDERS)
    add_model_arguments(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    check_supported(device)
    step = training_step(args.measure, args.contender, shape_of(args), device)
    print(json.dumps(measure_steps(step, args.steps, device)))


if __name__ == "__main__":
    main()
