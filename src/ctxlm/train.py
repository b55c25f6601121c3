"""One trainer for every objective: AdamW, warm-up + decay, clipping, accumulation, evaluation, checkpoints and
exact resume.

The trainer knows nothing of model families or tasks. It is given
- an objective: `objective(model, batch) -> (loss, metrics)`, metrics being scalar tensors;
- `train_batch(i)`: the i-th micro-batch, a pure function of i (and the data's seed), so that a resumed run sees
  exactly the batches the uninterrupted one would have;
- `eval_batches()`: an iterable of validation batches.
A checkpoint folder holds the model (config.json + model.safetensors + tokenizer) and the training state
(optimizer moments as safetensors, step and RNG states as JSON/safetensors), written together atomically, every
`save_every` steps and whenever `save_every_minutes` have passed since the last one (so that a kill loses at most
that much work, however long a step period is), at a stop and at the end. Writing one reads no random number:
where the checkpoints fall never changes the run.

Under torchrun (`ctxlm.distributed`), `train_batch(i)` and the validation batches are global batches, the same in
every process, of which each process takes its rows; DDP averages the gradients. Rank 0 alone logs, plots,
shows progress and writes checkpoints (the optimizer state is replicated, so its copy is the whole state); every
process resumes from the same checkpoint, and a stop (Ctrl-C, time budget) is agreed on so all stop at one step;
a checkpoint by time is rank 0's decision, sent to all, so that all write it at the same step.
With `fsdp` the processes shard the model instead of replicating it: the checkpoint is gathered whole to rank 0
(the same files), and on resume rank 0 reads it and sends each process its shards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from tqdm import tqdm

from ctxlm import distributed
from ctxlm.checkpoint import WEIGHTS_FILE, load_weights, read_safetensors_header, read_weights, recover, save
from ctxlm.errors import UserError
from ctxlm.nn.blocks import use_gradient_checkpointing
from ctxlm.precision import resolve_precision
from ctxlm.progress import Progress, progress
from ctxlm.runlog import METRICS_FILE, append_metrics, drop_metrics_after, plot_losses
from ctxlm.schedules import SHAPES, slanted_triangular, warmup_decay

Objective = Callable[[nn.Module, Any], tuple[Tensor, dict[str, Tensor]]]
STATE_FILE = "trainer_state.json"
PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the device has bf16 units (ctxlm.precision), else fp32
SCHEDULES = (*SHAPES, "slanted")
OPTIMIZER_FILE = "optimizer.safetensors"
NONFINITE_POLICIES = ("stop", "skip")
MAX_SKIPPED_IN_A_ROW = 10  # more non-finite steps than this in a row is a diverged run, not a bad batch


class NonFiniteLoss(UserError):
    """Training produced a NaN or infinite loss or gradient (the run's settings, not a bug in ctxlm)."""


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4
    warmup_steps: int = 100
    # "cosine", "linear" (decay to min_lr_ratio * lr after warm-up), "constant", or ULMFiT's "slanted" triangular
    # rates (eq. 3: cut_frac 0.1, ratio 32; it has its own rise, so warmup_steps is not used)
    schedule: str = "cosine"
    # discriminative rates (ULMFiT §3.2, its stage 2 included): the top layer group and whatever is in no group
    # (an objective's own head) at lr, each group below at the rate of the one above / lr_decay; None: one rate
    lr_decay: float | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_every: int = 200
    save_every: int = 200
    # also checkpoint once this much wall-clock time has passed since the last checkpoint (rank 0's clock decides
    # for every process), so that a kill loses at most this much work whatever the step period; None: steps only
    save_every_minutes: float | None = 10.0
    log_every: int = 10
    seed: int = 0
    max_minutes: float | None = None  # stop (and checkpoint) at the first step past this wall-clock budget
    # "bf16": forward and loss under bfloat16 autocast (weights, gradients, AdamW stay fp32); "auto": bf16 where the
    # device has bf16 units, else fp32 (ctxlm.precision). fp32 stays the default for training (README: Precision).
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model's forward (the objective must call the model itself)
    gradient_checkpointing: bool = False  # transformer blocks recompute their activations in backward
    # under torchrun: shard parameters, gradients and optimizer moments across the processes (FSDP) instead of
    # replicating them (DDP); the same training. The model the trainer was given is then sharded: a whole one
    # is in the checkpoint.
    fsdp: bool = False
    # "auto" (a GPU when there is one), "cpu", "cuda", "cuda:1", ...; None leaves the model where it is. Under
    # torchrun each process takes its own GPU (or the CPU) instead.
    device: str | None = None
    # A step whose loss or gradients are NaN or infinite: "stop" (the default: the run ends with an error, its last
    # checkpoint untouched) or "skip" (no update from that batch; the run stops after MAX_SKIPPED_IN_A_ROW in a row)
    on_nonfinite: str = "stop"
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable runs, some ops slower
    # evaluate once before the first step (logged as step 0): where a run from pretrained weights starts
    eval_first: bool = False

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr_decay is not None and self.lr_decay < 1:
            raise UserError(f"lr_decay must be at least 1 (each lower layer group trains slower), got {self.lr_decay}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "grad_accum", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.save_every_minutes is not None and not self.save_every_minutes > 0:
            raise UserError(f"save_every_minutes must be positive (or None: by steps only), got "
                            f"{self.save_every_minutes}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.device is not None:
            pick_device(self.device)
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise UserError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {self.on_nonfinite!r}")


def pick_device(name: str) -> torch.device:
    """"auto": the first GPU when there is one, else the CPU; or a torch device name, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r}: expected auto, cpu, cuda, cuda:1, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: this machine has no CUDA GPU visible to torch {torch.__version__} "
                        "(see `ctxlm doctor`)")
    return device


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warm-up, then decay; or
    ULMFiT's slanted triangular rates."""
    if config.schedule == "slanted":
        return slanted_triangular(step, config.steps, cut_frac=0.1, ratio=32.0)
    return warmup_decay(step, config.steps, warmup_steps=config.warmup_steps, shape=config.schedule,
                        floor=config.min_lr_ratio)


def split_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices, vectors): weight decay applies to matrices only; biases and LayerNorm gains are not shrunk
    toward zero."""
    params = list(params)
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]


def default_param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None,
                         lr_decay: float | None = None) -> list[dict]:
    """Every trainable parameter: matrices decay, vectors do not. With `lr_decay`, one rate per layer group of
    `model.layer_groups()` (bottom → top): the top group and the parameters in no group at `lr`, each group below
    at the rate of the one above / lr_decay (ULMFiT's discriminative fine-tuning of the language model)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not lr_decay:
        decay, no_decay = split_decay(trainable)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr is None:
        raise ValueError("discriminative rates need the peak lr")
    groups = model.layer_groups()
    top = len(groups) - 1
    named = [(f"layer{k}", [p for p in group if p.requires_grad], lr / lr_decay ** (top - k), weight_decay)
             for k, group in enumerate(groups)]
    return named_param_groups([*named, ("rest", trainable, lr, weight_decay)])


def named_param_groups(named: list[tuple[str, Iterable[nn.Parameter], float, float]]) -> list[dict]:
    """AdamW groups from (name, parameters, rate, weight decay): each split into "NAME.decay" (matrices) and
    "NAME.no_decay" (vectors, never decayed). A parameter listed twice (a tied weight) stays in its first group."""
    seen: set[int] = set()
    out = []
    for name, params, rate, decay in named:
        unique = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in unique)
        matrices, vectors = split_decay(unique)
        for suffix, part, wd in (("decay", matrices, decay), ("no_decay", vectors, 0.0)):
            if part:
                out.append({"params": part, "lr": rate, "weight_decay": wd, "name": f"{name}.{suffix}"})
    return out


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.AdamW:
    device = groups[0]["params"][0].device
    fused = device.type in ("cpu", "cuda")  # one kernel for the whole update instead of one per tensor
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)
    for group in optimizer.param_groups:  # strategies may give groups their own rates; the schedule scales them
        group.setdefault("base_lr", group["lr"])
    return optimizer


def mark_updated(optimizer: torch.optim.Optimizer) -> None:
    """Move the version counter of every parameter the optimizer holds, as any in-place change does: the fused
    AdamW kernel updates the weights without it, and what caches a product of a weight by its version (the
    decoding copies of `ctxlm.nn.attention.TransposedCopy`) would otherwise keep the weights of before."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            increment_version(p)


@contextlib.contextmanager
def graceful_interrupt(say: Callable[[str], None]) -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop after the current step (it then checkpoints); a second aborts.

    Stopping between steps keeps the checkpoint consistent: a KeyboardInterrupt raised inside an optimizer step
    could otherwise leave weights updated but the step counter not.
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        say("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """PyTorch's deterministic mode for the block: ops with only a nondeterministic kernel raise instead of
    running, cuDNN stops auto-tuning, cuBLAS gets a fixed workspace. Restored afterwards."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable products
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def rng_states(device: torch.device) -> dict[str, Tensor]:
    """The random state that dropout draws from: the CPU's generator, and the GPU's when training on one."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


class LogWindow:
    """Sums over the steps since the last log line. Checkpoints keep them, so that a resumed run writes the same
    log lines as an uninterrupted one (tokens/s aside: it times this process's steps only)."""

    def __init__(self, loss: Tensor | None = None, grad_norm: Tensor | None = None, steps: int = 0,
                 skipped: int = 0) -> None:
        self.loss, self.grad_norm, self.steps, self.skipped = loss, grad_norm, steps, skipped
        self.restart_clock()

    def restart_clock(self) -> None:
        self.start, self.timed_steps = time.perf_counter(), 0

    def add(self, loss: Tensor, grad_norm: Tensor) -> None:
        self.loss = loss if self.loss is None else self.loss + loss  # on the device: no sync
        self.grad_norm = grad_norm if self.grad_norm is None else self.grad_norm + grad_norm
        self.steps, self.timed_steps = self.steps + 1, self.timed_steps + 1

    def state(self) -> dict[str, Any]:
        """Under torchrun every process calls this (the loss is averaged over them); float32 sums are exact in
        JSON's doubles."""
        loss = None if self.loss is None else float(distributed.mean(self.loss))
        grad_norm = None if self.grad_norm is None else float(self.grad_norm)
        return {"loss": loss, "grad_norm": grad_norm, "steps": self.steps, "skipped": self.skipped}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> LogWindow:
        if not state:  # a checkpoint from before log windows were kept
            return cls()
        tensor = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        return cls(tensor(state["loss"]), tensor(state["grad_norm"]), state["steps"], state["skipped"])


def aligned(tensor: Tensor) -> Tensor:
    """`tensor` in memory of torch's own allocator, 64-byte aligned as every tensor of an uninterrupted run is.
    safetensors hands back buffers aligned to 8 or 16 bytes, which way depending on the header's length; the
    optimizer would keep them as its moments, and BLAS and oneDNN kernels may sum in another order on memory
    aligned otherwise (MKL documents this for its AVX-512 code paths): a resumed run must compute on the same
    layout to stay bit-exact."""
    return tensor.clone(memory_format=torch.contiguous_format)


def rank_suffix(rank: int) -> str:
    """Names of a process's RNG states in the checkpoint: "rng.torch" for rank 0 (and single-process runs),
    "rng.torch.rank1" for rank 1, ..."""
    return f".rank{rank}" if rank else ""


@dataclass
class Plan:
    """What the trainer applies, whoever made it (a fine-tuning strategy's `plan`; pretraining's default: every
    parameter, matrices decayed, the config's warm-up + decay). The trainer never asks where it came from.

    `lr_schedule(step)`: the multiplier of each group's base rate at that step.
    `before_step(step)`: called before each optimizer step, e.g. to unfreeze layers on a schedule; it must depend
    on the step alone, so that a resumed run behaves as an uninterrupted one.
    `after_step(optimizer)`: called after each applied optimizer step, e.g. a decoupled pull of the weights (L2-SP)
    at each group's current rate.
    `penalty()`: added to each training step's loss, e.g. the coupled L2-SP penalty."""

    param_groups: list[dict]
    lr_schedule: Callable[[int], float]
    before_step: Callable[[int], object] | None = None
    after_step: Callable[[torch.optim.Optimizer], None] | None = None
    penalty: Callable[[], Tensor] | None = None


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, train_batch: Callable[[int], Any],
                 config: TrainConfig, run_dir: str | Path, *,
                 eval_batches: Callable[[], Iterable[Any]] | None = None, plan: Plan | None = None,
                 tokens_per_batch: int | None = None, evaluator: Callable[[], dict[str, float]] | None = None,
                 find_unused_parameters: bool = False) -> None:
        """`evaluator()`: replaces the mean-of-objective evaluation (metrics over a whole split, such as F1 or
        Spearman, are not means over batches); it returns names starting with "valid_"; under torchrun every
        process calls it.
        `plan`: the parameter groups, schedule and step hooks to apply (see `Plan`); None: pretraining's.
        `tokens_per_batch`: of one process's micro-batch; tokens/s counts every process's.
        `find_unused_parameters`: under torchrun, some parameters may get no gradient in a step."""
        config.validate()
        self.model, self.objective, self.train_batch = model, objective, train_batch
        if config.gradient_checkpointing and not use_gradient_checkpointing(model):
            raise UserError(f"gradient checkpointing works on transformer blocks; this "
                            f"{getattr(getattr(model, 'config', None), 'model_type', 'model')} has none")
        if config.device is not None and not distributed.launched():
            model.to(pick_device(config.device))  # in place: parameter groups made before stay valid
        # What the objective trains through: DDP's wrapper under torchrun (it averages the gradients across
        # processes in backward), else the model itself (sharded in place with fsdp). Evaluation and checkpoints
        # use the model.
        self.replicated = distributed.wrap(model, find_unused_parameters=find_unused_parameters, sharded=config.fsdp)
        if distributed.is_sharded(model) and plan is not None:
            raise ValueError("FSDP replaces the model's parameters: a plan's groups made before cannot be optimized")
        if config.compile:  # after DDP's wrapper, as PyTorch recommends: its hooks then see the compiled graph
            self.replicated = torch.compile(self.replicated)
        self.config, self.run_dir, self.eval_batches = config, Path(run_dir), eval_batches
        self.tokens_per_batch, self.evaluator = tokens_per_batch, evaluator
        self.plan = plan or Plan(default_param_groups(model, config.weight_decay, lr=config.lr,
                                                      lr_decay=config.lr_decay), lambda s: lr_factor(s, config))
        self.optimizer = make_optimizer(self.plan.param_groups, config)
        self.step = 0
        self.window = LogWindow()
        self.history: list[dict] = []

    @property
    def trainable_parameters(self) -> int:
        """Parameters the optimizer holds: those that train at some point of the run."""
        return sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for the training forward and loss when asked (matrix products in bf16, reductions
        and the optimizer in fp32: about 1.4x faster steps on a CPU with AVX512-BF16, more on GPUs); evaluation
        always runs in fp32, so validation figures compare across precisions."""
        dtype = resolve_precision(self.config.precision, self.device)
        if dtype is not None:
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict[str, float]:
        config = self.config
        main = distributed.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_state()
        else:
            torch.manual_seed(config.seed + distributed.rank())  # processes draw different dropout masks
            if main:
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        if main:
            (self.run_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        if config.eval_first and self.step == 0 and (self.eval_batches is not None or self.evaluator is not None):
            self.log({"step": 0, **(self.evaluator() if self.evaluator is not None else self.evaluate())})
        start = time.perf_counter()
        self.model.train()
        bar = progress(desc="train", total=config.steps, initial=self.step, unit="step", disable=not main)
        with graceful_interrupt(bar.write) as interrupted, deterministic_algorithms(config.deterministic):
            last, stopped = self._loop(bar, start, interrupted)
        bar.close()
        if main:
            plot_losses(self.run_dir)
        if stopped:
            raise KeyboardInterrupt(f"stopped at step {self.step}; checkpoint saved in {self.checkpoint_dir}")
        return last

    def _loop(self, bar: Progress, start: float, interrupted: threading.Event) -> tuple[dict[str, float], bool]:
        """Trains to the last step or a stop; returns the last evaluation and whether a Ctrl-C stopped it."""
        config = self.config
        window = self.window
        window.restart_clock()
        last: dict[str, float] = {}
        stopped = False
        last_save = time.perf_counter()  # checkpoints by time count from the last one (or the start)
        in_a_row = 0  # non-finite steps
        while self.step < config.steps:
            loss, grad_norm, finite = self.train_step()
            self.step += 1
            bar.update(1)
            if finite:
                in_a_row = 0
                window.add(loss, grad_norm)
            else:
                in_a_row, window.skipped = in_a_row + 1, window.skipped + 1
                self.nonfinite(loss, grad_norm, in_a_row, bar)
            out_of_time = config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes
            # Clocks and Ctrl-Cs differ between processes: a stop anywhere stops all at this step. A checkpoint by
            # time is rank 0's decision alone, sent to all with the stop flags: every process takes part in it.
            save_due = (distributed.is_main() and config.save_every_minutes is not None
                        and time.perf_counter() - last_save >= 60 * config.save_every_minutes)
            out_of_time, stopped, save_due = distributed.any_rank(out_of_time, interrupted.is_set(), save_due)
            finished = self.step == config.steps or out_of_time or stopped
            if (self.step % config.log_every == 0 or finished) and window.steps:
                # the mean over every process's rows; one sync per window
                record = {"step": self.step, "loss": float(distributed.mean(window.loss)) / window.steps,
                          "grad_norm": float(window.grad_norm) / window.steps,  # before clipping, alike on all ranks
                          "lr": self.optimizer.param_groups[0]["lr"]}
                if self.tokens_per_batch:
                    record["tokens_per_s"] = (self.tokens_per_batch * distributed.world_size() * config.grad_accum
                                              * window.timed_steps / (time.perf_counter() - window.start))
                if window.skipped:
                    record["skipped_steps"] = window.skipped
                self.log(record)
                shown = {k: f"{v:.3g}" for k, v in record.items() if k != "step"}
                if config.max_minutes is not None:  # a run stopped by its budget: the steps' ETA would mislead
                    left = max(0.0, 60 * config.max_minutes - (time.perf_counter() - start))
                    shown["budget_left"] = tqdm.format_interval(left)
                bar.set_postfix(shown)
                window = self.window = LogWindow()
            can_eval = self.eval_batches is not None or self.evaluator is not None
            if can_eval and (self.step % config.eval_every == 0 or finished) and not stopped:
                last = self.evaluator() if self.evaluator is not None else self.evaluate()
                self.log({"step": self.step, **last})
                self.model.train()
                window.restart_clock()  # tokens/s counts training time only
            if self.step % config.save_every == 0 or finished or save_due:
                self.save_state()  # touches no random state: a checkpoint never changes the run
                last_save = time.perf_counter()
            if out_of_time:
                bar.write(f"time budget of {config.max_minutes} min reached at step {self.step}")
            if finished:
                break
        return last, stopped

    def train_step(self) -> tuple[Tensor, Tensor, bool]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, gradient norm before clipping, whether
        both are finite). A non-finite step changes nothing (its gradients are dropped). Reading that flag is the
        step's one host-device synchronisation (free on a CPU; a few microseconds per step on a GPU)."""
        config = self.config
        if self.plan.before_step is not None:
            self.plan.before_step(self.step)
        factor = self.plan.lr_schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        total = 0.0
        for micro in range(config.grad_accum):
            batch = distributed.local_rows(self.train_batch(self.step * config.grad_accum + micro))
            last_micro = micro == config.grad_accum - 1
            with contextlib.nullcontext() if last_micro else distributed.no_sync(self.replicated):
                with self.autocast():
                    loss, _ = self.objective(self.replicated, batch)
                    if self.plan.penalty is not None:
                        loss = loss + self.plan.penalty()
                (loss / config.grad_accum).backward()
            total = total + loss.detach().float() / config.grad_accum  # stays on the device: no sync
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or math.inf)
        if hasattr(grad_norm, "full_tensor"):  # sharded gradients: the norm is a distributed tensor
            grad_norm = grad_norm.full_tensor()
        # Every process must decide alike. The gradient norm is the same in all (DDP averages, FSDP reduces it),
        # but an infinite loss can come with finite gradients (a target of probability 0), so its flag is OR-ed.
        (bad_loss,) = distributed.any_rank(not bool(torch.isfinite(total)))
        finite = bool(torch.isfinite(grad_norm)) and not bad_loss
        if finite:
            self.optimizer.step()
            mark_updated(self.optimizer)
            if self.plan.after_step is not None:
                self.plan.after_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm.detach(), finite

    def nonfinite(self, loss: Tensor, grad_norm: Tensor, in_a_row: int, bar: Progress) -> None:
        """Apply the policy to a step whose loss or gradients were not finite (its update was not applied)."""
        config = self.config
        what = f"step {self.step}: loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g}"
        last = f"the last checkpoint ({self.checkpoint_dir}) is untouched"
        advice = "lower --lr, raise --warmup, keep --grad-clip, or use --precision fp32"
        if config.on_nonfinite == "stop":
            raise NonFiniteLoss(f"{what}: not finite, training stopped; {last}. {advice}, or skip such steps with "
                                "--on-nonfinite skip")
        if in_a_row > MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLoss(f"{what}: {in_a_row} non-finite steps in a row, the run has diverged; {last}. "
                                f"{advice}")
        if distributed.is_main():
            bar.write(f"{what}: not finite, update skipped ({in_a_row} in a row)")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of the objective's loss and metrics over the validation rows; perplexity = exp(loss). Under
        torchrun each process scores its rows of every batch and the sums are added up."""
        self.model.eval()
        sums: dict[str, Tensor] = {}
        count = 0
        for batch in progress(self.eval_batches(), desc="eval", leave=False, disable=not distributed.is_main()):
            batch = distributed.local_rows(batch)
            rows = len(next(iter(batch.values())) if isinstance(batch, dict) else batch[0])  # a last, smaller
            # batch weighs by its rows (LM blocks have equal lengths)
            if not rows:  # a last batch with fewer rows than processes
                if distributed.is_sharded(self.model):  # all must join each forward, which gathers the weights:
                    self.objective(self.model, batch)  # this one runs the batch's few rows and ignores them
                continue
            loss, metrics = self.objective(self.model, batch)
            for name, value in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0) + value.detach().float() * rows
            count += rows
        totals = distributed.sum_values({name: float(value) for name, value in sums.items()} | {"rows": count})
        count = totals.pop("rows")
        if not count:
            raise UserError("the validation set gave no batch (too short for the block size?)")
        result = {f"valid_{name}": value / count for name, value in totals.items()}
        result["valid_perplexity"] = math.exp(min(result["valid_loss"], 50.0))
        return result

    # -- logs -----------------------------------------------------------------------------------------------
    def log(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if distributed.is_main():
            append_metrics(self.run_dir, record)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Model + optimizer + step + RNG into run_dir/checkpoint, replacing the previous one atomically. Under
        torchrun rank 0 writes it, with every process's RNG state, while the others wait."""
        distributed.check_replicas(self.model)
        rng = distributed.gather(rng_states(self.device))
        weights, optimizer = distributed.full_state(self.model, self.optimizer)  # FSDP: gathered to rank 0
        window = self.window.state()
        if distributed.is_main():
            self._write_checkpoint(rng, weights, optimizer, window)
        distributed.barrier()  # no process goes on, or exits, before the checkpoint is complete

    def _write_checkpoint(self, rng: list[dict[str, Tensor]], weights: dict[str, Tensor],
                          optimizer: dict[str, Any], window: dict[str, Any]) -> None:
        tensors = {f"state.{i}.{name}": value.contiguous() for i, state in optimizer["state"].items()
                   for name, value in state.items()}
        for rank, states in enumerate(rng):
            tensors |= {f"rng.{name}{rank_suffix(rank)}": state for name, state in states.items()}
        state = {"step": self.step, "log_window": window, "train_config": asdict(self.config), "world_size": len(rng),
                 "param_groups": [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
                                  for g in optimizer["param_groups"]]}

        def write_training_state(folder: Path) -> None:
            save_file(tensors, folder / OPTIMIZER_FILE)
            (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        saver = getattr(self.model, "save_checkpoint", None)  # a model with a task head saves it beside the
        # backbone's checkpoint
        if saver is not None:
            saver(self.checkpoint_dir, extra=write_training_state)
        else:
            save(self.model, self.checkpoint_dir, extra=write_training_state, state=weights)

    def load_state(self) -> None:
        """Every process loads the same checkpoint (sharded: rank 0 reads it and sends each process its shards),
        and its own RNG state."""
        folder = recover(self.checkpoint_dir)  # a save killed between its two renames left it at .NAME.old
        if not (folder / STATE_FILE).is_file():
            raise UserError(f"{folder}: no checkpoint to resume from (expected {STATE_FILE})")
        state = json.loads((folder / STATE_FILE).read_text())
        processes = state.get("world_size", 1)
        if processes != distributed.world_size():
            raise UserError(f"{folder}: written by a run of {processes} process(es), resumed with "
                            f"{distributed.world_size()}: resume with {processes} (the number of processes "
                            "sets the global batch and the random states to restore)")
        sharded = distributed.is_sharded(self.model)
        # Sharded, rank 0 alone reads the weights and optimizer moments, whole, and sends each process its
        # shards; every process reads its own random state.
        whole = not sharded or distributed.is_main()
        read_safetensors_header(folder / OPTIMIZER_FILE)  # sizes and offsets checked before anything is read
        with safe_open(folder / OPTIMIZER_FILE, framework="pt") as f:
            names = f.keys()  # safe_open is not iterable itself
            tensors = {key: aligned(f.get_tensor(key)) for key in names if whole or key.startswith("rng.")}
        per_param: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        groups = [g | {"betas": tuple(g["betas"])} for g in state["param_groups"]]
        optimizer = {"state": per_param, "param_groups": groups}
        if sharded:
            weights = read_weights(self.model, folder / WEIGHTS_FILE) if whole else {}
            distributed.load_full_state(self.model, self.optimizer, weights, optimizer if whole else {})
        else:
            loader = getattr(self.model, "load_checkpoint_weights", None)
            if loader is not None:
                loader(folder)
            else:
                load_weights(self.model, folder / WEIGHTS_FILE)
            self.optimizer.load_state_dict(optimizer)
        suffix = rank_suffix(distributed.rank())
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
        if f"rng.cuda{suffix}" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], self.device)
        self.step = state["step"]
        self.window = LogWindow.from_state(state.get("log_window"), self.device)
        if distributed.is_main():
            drop_metrics_after(self.run_dir, self.step)
