"""Where ctxlm finds things: the data sets folder and the cache.

The ground floor of the package: every job and reader asks here, so `CTXLM_DATA` and `CTXLM_CACHE` mean the same
everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctxlm.errors import UserError


def data_root() -> Path:
    """The data sets folder: $CTXLM_DATA, else `shared/data` beside the repository, else ./data."""
    if os.environ.get("CTXLM_DATA"):
        return Path(os.environ["CTXLM_DATA"])
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # src/ctxlm/paths.py
    return shared if shared.is_dir() else Path("data")


def dataset_path(name: str, *parts: str) -> Path:
    """`data_root()/name/parts...`, or a UserError saying where it was looked for and how to fix it."""
    root = data_root()
    folder = root / name
    if not folder.is_dir():
        raise UserError(
            f"data set '{name}' not found under {root}: set CTXLM_DATA to the folder that holds it, "
            f"or download it (into {folder})"
        )
    path = folder.joinpath(*parts)
    if not path.exists():
        raise UserError(f"data set '{name}' has no {'/'.join(parts)} (looked for {path})")
    return path


def cache_root() -> Path:
    """Tokenised corpora and downloaded checkpoints: $CTXLM_CACHE, else ~/.cache/ctxlm."""
    return Path(os.environ.get("CTXLM_CACHE", Path.home() / ".cache" / "ctxlm"))
