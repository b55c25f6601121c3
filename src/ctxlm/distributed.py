"""Data-parallel training over the processes torchrun starts: PyTorch's process group and DistributedDataParallel.

`torchrun --nproc_per_node=N -m ctxlm pretrain ...` starts N processes with RANK, LOCAL_RANK and WORLD_SIZE in
their environment. `session()` joins them into one process group: NCCL when CUDA is available (each process on
cuda:LOCAL_RANK), gloo on CPUs. A process started without torchrun, or alone, joins nothing, and every helper
here is then the identity: single-process runs are unchanged.

Batches: the job builds the global batch of a step, the rows one process with batch size N x B would take, and
each process trains on its own slice (`local_rows`): rank r takes rows [r B, (r + 1) B). Since DDP averages the
gradients of the N processes, and each process's loss is a mean over its B rows, N processes with batch size B
compute the gradient of one process with batch size N x B (exactly when every row weighs the same in the loss).

FSDP (`shard`, `ctxlm pretrain --fsdp`): instead of a whole replica, each of the N processes keeps 1/N of every
parameter, gradient and optimizer moment, and gathers a transformer block's parameters whole only while it runs.
The batches and the result are those of DDP; the checkpoint is the same whole model, gathered to rank 0.

On several machines the run folder must be on a file system they all see: rank 0 writes it, and on resume
every process reads its checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ctxlm.errors import UserError
from ctxlm.nn.blocks import TransformerBlock

T = TypeVar("T")
# The control group's waits include rank 0 preparing the data (training a tokenizer, tokenising a corpus) while
# the others wait, which may take long on a large corpus; a failed process still ends the run at once, as
# torchrun stops every process when one fails.
PREPARATION_TIMEOUT = datetime.timedelta(hours=3)

_control: dist.ProcessGroup | None = None  # gloo: flags, Python objects and barriers, without a GPU sync
_device = torch.device("cpu")


def launched() -> bool:
    """Whether torchrun started several processes (known before `session()` joins them)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Joins torchrun's processes for the block when there are several, else does nothing. Ranks other than 0
    print nothing on stdout (their lines would repeat rank 0's); their warnings and errors still show on stderr."""
    if not launched():
        yield
        return
    _join()
    try:
        with contextlib.ExitStack() as stack:
            if not is_main():
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield
    finally:
        cleanup()


def _join() -> None:
    global _control, _device
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} on this node, but only {torch.cuda.device_count()} GPU(s) "
                            "visible: start at most one process per GPU (--nproc_per_node)")
        _device = torch.device("cuda", local_rank)
        torch.cuda.set_device(_device)
        dist.init_process_group("nccl", device_id=_device)
    else:
        dist.init_process_group("gloo")
    _control = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)


def cleanup() -> None:
    global _control, _device
    if dist.is_initialized():
        dist.destroy_process_group()
    _control, _device = None, torch.device("cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    """The process's number on its machine."""
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that prints, logs and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier(group=_control)


# -- the model ----------------------------------------------------------------------------------------------------
def wrap(model: nn.Module, *, find_unused_parameters: bool = False, sharded: bool = False) -> nn.Module:
    """In a session of several processes, the model moved to this process's device and wrapped in DDP (which
    starts every process from rank 0's weights and averages the gradients in backward); else the model itself.
    `find_unused_parameters`: some parameters may get no gradient in a step (an adaptive softmax's clusters).
    `sharded`: FSDP instead of DDP (`shard`)."""
    if not dist.is_initialized():
        return model
    if sharded:
        return shard(model)
    model.to(_device)
    return DistributedDataParallel(model, device_ids=[_device.index] if _device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """Backward passes inside accumulate gradients locally: DDP averages them across processes only in the
    last micro-batch of a step (the result is the same, with one exchange per step instead of one per micro).
    A sharded model exchanges in every micro-batch: keeping whole gradients between them would undo part of
    what sharding saves."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its attributes, such as `tokenizer`, are not the wrapper's)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def check_replicas(model: nn.Module) -> None:
    """Raise if this process's parameters differ from rank 0's. DDP keeps them equal by construction (the same
    start, the same averaged gradients, the same update); a difference is a bug or a faulty device, which a
    checkpoint of rank 0's copy alone would hide. Compares one sum per parameter tensor. A sharded model has
    no replicas to compare: each process holds other parts of it."""
    if not dist.is_initialized() or is_sharded(model):
        return
    names = [name for name, _ in model.named_parameters()]
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    everyone = gather(sums)
    for other, theirs in enumerate(everyone[1:], start=1):
        differ = ~torch.isclose(theirs, everyone[0], rtol=1e-6, atol=1e-9)
        if differ.any():
            raise RuntimeError(f"the processes' parameters have diverged: rank {other}'s "
                               f"{names[int(differ.nonzero()[0])]} differs from rank 0's")


# -- sharded models (FSDP) ----------------------------------------------------------------------------------------
def shard(model: nn.Module) -> nn.Module:
    """The model sharded in place by FSDP (PyTorch's `fully_shard`), on this process's device: each process keeps
    1/N of every parameter (a DTensor), of its gradient and so of its optimizer moments, which must be made
    after. Each transformer block is a unit whose parameters are gathered whole for its forward, freed, and
    gathered again for its backward, after which its gradients are averaged and scattered back to their shards;
    the root's parameters. Each process keeps its slice of its own copy of the weights (DDP would send rank
    0's): the copies must be equal, as the jobs make them from one seed, which is checked first."""
    # FSDP's modules are imported here: they take over half a second (sympy), which every command would pay
    from torch.distributed.fsdp import fully_shard

    blocks = [module for module in model.modules() if isinstance(module, TransformerBlock)]
    if not blocks:
        raise UserError(f"FSDP shards transformer blocks, and {type(model).__name__} has none")
    check_replicas(model)
    for block in blocks:
        fully_shard(block)
    return fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    if not dist.is_initialized():
        return False  # without importing FSDP (see `shard`)
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model's and the optimizer's state dicts with whole tensors, as one process would hold them (the
    optimizer's parameters numbered, as `optimizer.state_dict()` does). A sharded model's are gathered to rank
    0's CPU one tensor at a time: every process must call this, and the others receive empty dicts."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:
        return weights, {}
    # get_optimizer_state_dict names the parameters; the checkpoint numbers them in the groups' order
    number = {name: i for i, name in enumerate(name for group in named["param_groups"] for name in group["params"])}
    return weights, {"state": {number[name]: values for name, values in named["state"].items()},
                     "param_groups": [group | {"params": [number[name] for name in group["params"]]}
                                      for group in named["param_groups"]]}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Tensor],
                    optimizer_state: dict[str, Any]) -> None:
    """Loads into a sharded model and its optimizer what `full_state` gave: rank 0's dicts are sent to every
    process, each keeping its shards, so the others pass empty dicts (and need not read the checkpoint's
    tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer_state:
        names = {param: name for name, param in model.named_parameters()}
        order = [names[param] for group in optimizer.param_groups for param in group["params"]]
        optimizer_state = {"state": {order[i]: values for i, values in optimizer_state["state"].items()},
                           "param_groups": [group | {"params": [order[i] for i in group["params"]]}
                                            for group in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


# -- data and results ---------------------------------------------------------------------------------------------
def local_rows(batch: T) -> T:
    """This process's rows of a global batch (a tensor, or a tuple, list or dict of tensors with rows first):
    rank r of N takes rows [n r / N, n (r + 1) / N) of n, equal slices when N divides n, as training's do
    (a last validation batch may leave a process fewer rows, or none)."""
    if not dist.is_initialized():
        return batch
    if isinstance(batch, Tensor):
        n, r, size = len(batch), rank(), world_size()
        return batch[n * r // size:n * (r + 1) // size]
    if isinstance(batch, dict):
        return {key: local_rows(value) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(local_rows(value) for value in batch)
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} between processes")


def mean(value: Tensor) -> Tensor:
    """The mean of a tensor over the processes (e.g. each one's training loss over its rows)."""
    if not dist.is_initialized():
        return value
    total = value.clone()
    dist.all_reduce(total)  # a sum: gloo has no average
    return total / world_size()


def sum_values(values: dict[str, float]) -> dict[str, float]:
    """Each name's total over the processes (a process may lack names: it had nothing to add)."""
    if not dist.is_initialized():
        return values
    total: dict[str, float] = {}
    for part in gather(values):
        for name, value in part.items():
            total[name] = total.get(name, 0.0) + value
    return total


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over the processes, so that all take the same decision (e.g. to stop at this step)."""
    if not dist.is_initialized():
        return flags
    values = torch.tensor(flags, dtype=torch.int32)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_control)
    return tuple(bool(v) for v in values.tolist())


def gather(value: Any) -> list[Any]:
    """Every process's `value` (any picklable object), in rank order, in every process."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value, group=_control)
    return values


def from_main(make: Callable[[], T]) -> T:
    """`make()` run by rank 0 alone and its result sent to every process: e.g. a tokenizer trained once, which
    all must share. (If rank 0 fails, torchrun stops the others.)"""
    if not dist.is_initialized():
        return make()
    box = [make() if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def main_first(make: Callable[[], T]) -> T:
    """`make()` run by every process, by the first of each machine before the others: it fills a cache on the
    machine's disk (e.g. a tokenised corpus) that they then read instead of all building it at once."""
    first = local_rank() == 0
    if not first:
        barrier()
    value = make()
    if first:
        barrier()
    return value
