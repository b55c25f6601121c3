"""Raw text corpus -> token ids on disk -> batches of contiguous blocks for causal language modelling.

A corpus is one text file or a folder of `*.txt` / `*.txt.gz` files, and each file is one document. It is
tokenised once, streamed in chunks of lines, into a flat file of token ids (uint16 or uint32) with a small
JSON meta beside it, then memory-mapped: a corpus of any size costs no RAM and a second run starts at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxlm.errors import UserError
from ctxlm.progress import progress
from ctxlm.textfiles import find_text_files, read_lines, warn_blank

# encode(texts) -> one list of ids per text, adding no special tokens; e.g. for a `tokenizers.Tokenizer`:
# lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
Encoder = Callable[[list[str]], list[list[int]]]

_TEXTS_PER_CALL = 64  # chunks per encode() call: lets batch encoders use their threads
_CACHE_VERSION = 1  # bump when the file format or the chunking changes


def _chunks(
    files: Iterable[Path], chunk_chars: int, on_bytes: Callable[[int], None]
) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of about `chunk_chars`, cut at line boundaries; blank files are skipped.

    The pieces of a file concatenate to its text exactly, so an encoder that never merges tokens across a
    line break gives the same ids as encoding the whole file. (A byte-level BPE may join a "\\n\\n" that
    straddles a cut into one token; one such cut per chunk is harmless for pretraining.)
    """
    for file in files:
        lines: list[str] = []
        size = 0
        has_text = False  # leading blank lines are held back until we know the file is not blank
        for line in read_lines(file, on_bytes):
            if size >= chunk_chars and has_text:
                yield "".join(lines), False
                lines, size = [], 0
            lines.append(line)
            size += len(line)
            has_text = has_text or bool(line.strip())  # not isspace(): a BOM-only first line reads as ""
        if has_text:
            yield "".join(lines), True  # never empty: the last line is appended after any cut


def _write_ids(
    chunks: Iterator[tuple[str, bool]],
    encode: Encoder,
    end_of_document: Sequence[int],
    vocab_size: int,
    dtype: type[np.unsignedinteger],
    out: Any,
) -> tuple[int, int]:
    """Encode the chunks a batch at a time and append their ids to `out`; returns (tokens, documents)."""
    num_tokens = num_documents = 0
    while batch := list(itertools.islice(chunks, _TEXTS_PER_CALL)):
        encoded = encode([text for text, _ in batch])
        if len(encoded) != len(batch):
            raise ValueError(f"encode() returned {len(encoded)} id lists for {len(batch)} texts")
        pieces: list[Sequence[int]] = []
        for ids, (_, ends_document) in zip(encoded, batch, strict=True):
            pieces.append(ids)
            if ends_document:
                pieces.append(end_of_document)
                num_documents += 1
        flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64)
        # Checked before the cast: an id past the vocabulary would otherwise wrap around silently in uint16.
        if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
            bad = flat.max() if flat.max() >= vocab_size else flat.min()
            raise ValueError(f"encode() gave id {bad}, outside vocab_size={vocab_size}")
        flat.astype(dtype).tofile(out)
        num_tokens += flat.size
    return num_tokens, num_documents


class TokenizedCorpus:
    """Token ids of a corpus in a memory-mapped uint16/uint32 file, tokenised once and cached."""

    def __init__(self, ids: np.ndarray, path: Path, meta: dict[str, Any]):
        self.ids = ids  # read-only np.memmap, shape (num_tokens,)
        self.path = path
        self.meta = meta

    @classmethod
    def build(
        cls,
        path: str | Path,
        encode: Encoder,
        vocab_size: int,
        cache_dir: str | Path,
        *,
        fingerprint: str,
        end_of_document: Sequence[int] = (),
        chunk_chars: int = 1 << 16,
        show_progress: bool = True,
    ) -> TokenizedCorpus:
        """Tokenise the corpus at `path` into `cache_dir/<key>.bin`, or reuse that file if it is up to date.

        Each file's ids are followed by `end_of_document` (e.g. `[eos_id]`). The key hashes `fingerprint`
        (identify the tokenizer with it), the options and every file's path, size and mtime, so editing a file
        or changing the tokenizer builds a new cache. Ids are written to a temporary file that is renamed into
        place only when complete, so an interrupted build never leaves a half cache behind. Blank files (empty or
        whitespace only) give no ids and no `end_of_document`: their count is `meta["blank_files"]`, and a
        warning says so.
        """
        files = find_text_files(path)
        cache_dir = Path(cache_dir)
        dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        expected = {
            "version": _CACHE_VERSION,
            "fingerprint": fingerprint,
            "vocab_size": vocab_size,
            "dtype": np.dtype(dtype).name,
            "end_of_document": [int(i) for i in end_of_document],
            "chunk_chars": chunk_chars,
            "files": [_file_stamp(f) for f in files],
        }
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:24]
        bin_path = cache_dir / f"{key}.bin"
        if _is_cached(bin_path, expected):
            return cls._opened(bin_path, path)

        cache_dir.mkdir(parents=True, exist_ok=True)
        # Temporary names per process, as several ranks may build the same cache at once.
        tmp_bin = cache_dir / f"{key}.bin.tmp{os.getpid()}"
        tmp_meta = cache_dir / f"{key}.json.tmp{os.getpid()}"
        total = sum(f["size"] for f in expected["files"])
        try:
            with (
                open(tmp_bin, "wb") as out,
                progress(desc="tokenising", total=total, unit="B", unit_scale=True, disable=not show_progress) as bar,
            ):
                chunks = _chunks(files, chunk_chars, bar.update)
                counts = _write_ids(chunks, encode, end_of_document, vocab_size, dtype, out)
            num_tokens, num_documents = counts
            if num_documents == 0:
                raise UserError(f"{path}: no text, all {len(files)} file(s) are empty or whitespace")
            if num_tokens == 0:
                raise UserError(f"{path}: the tokenizer produced no tokens for this corpus")
            meta = {**expected, "num_tokens": num_tokens, "blank_files": len(files) - num_documents}
            tmp_meta.write_text(json.dumps(meta, indent=1))
            # The meta is renamed last: it is what marks the .bin as complete.
            os.replace(tmp_bin, bin_path)
            os.replace(tmp_meta, bin_path.with_suffix(".json"))
        except BaseException:
            tmp_bin.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
            raise
        return cls._opened(bin_path, path)

    @classmethod
    def _opened(cls, bin_path: Path, path: str | Path) -> TokenizedCorpus:
        """`open`, warning about the blank files the build skipped: each has no ids, see meta["blank_files"]."""
        corpus = cls.open(bin_path)
        warn_blank(path, corpus.meta.get("blank_files", 0), len(corpus.meta["files"]))
        return corpus

    @classmethod
    def open(cls, bin_path: str | Path) -> TokenizedCorpus:
        """Memory-map a cache written by `build` (read-only), with the meta beside it."""
        bin_path = Path(bin_path)
        meta_path = bin_path.with_suffix(".json")
        if not bin_path.is_file() or not meta_path.is_file():
            raise UserError(
                f"{bin_path}: tokenised corpus not found (expected with {meta_path.name} beside it)"
            )
        meta = json.loads(meta_path.read_text())
        ids = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["num_tokens"],))
        return cls(ids, bin_path, meta)

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, valid_fraction: float) -> tuple[TokenSpan, TokenSpan]:
        """Contiguous (train, valid): the first 1-f and the last f of the tokens, as views."""
        if not 0 <= valid_fraction < 1:
            raise UserError(f"valid fraction must be in [0, 1), got {valid_fraction}")
        cut = len(self) - round(len(self) * valid_fraction)
        return TokenSpan(self.ids, 0, cut), TokenSpan(self.ids, cut, len(self))


def _file_stamp(file: Path) -> dict[str, Any]:
    stat = file.stat()
    return {"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_cached(bin_path: Path, expected: dict[str, Any]) -> bool:
    meta_path = bin_path.with_suffix(".json")
    if not (bin_path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return False
    same = all(meta.get(k) == v for k, v in expected.items())
    expected_bytes = meta.get("num_tokens", -1) * np.dtype(expected["dtype"]).itemsize
    return same and bin_path.stat().st_size == expected_bytes  # a truncated .bin is rebuilt, not trusted


class TokenSpan:
    """The tokens [start, end) of an id array (usually a memmap), without copying."""

    def __init__(self, ids: np.ndarray, start: int = 0, end: int | None = None):
        self.ids = ids
        self.start = start
        self.end = len(ids) if end is None else end

    def __len__(self) -> int:
        return self.end - self.start

    def block(self, offset: int, length: int) -> np.ndarray:
        """The `length` tokens starting `offset` tokens into the span (a view)."""
        if offset < 0 or offset + length > len(self):
            raise IndexError(f"block [{offset}, {offset + length}) outside a span of {len(self)} tokens")
        return self.ids[self.start + offset : self.start + offset + length]


class BlockBatches:
    """Batches of contiguous blocks for causal LM: x = ids[s : s+T], y = ids[s+1 : s+T+1].

    The span is cut into windows of T+1 tokens with stride T (the last target of a window is the first input
    of the next), so every token is predicted once per epoch. Each epoch visits the windows in a permutation
    drawn from (seed, epoch) alone, so `batch(step)` is a pure function of the step: resuming needs only it.
    """

    def __init__(self, span: TokenSpan, block_size: int, batch_size: int, seed: int):
        self.span = span
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.num_windows = (len(span) - 1) // block_size
        if self.num_windows < 1:
            raise UserError(
                f"the data has {len(span)} tokens, too few for block size {block_size} "
                f"(need at least {block_size + 1}): use a smaller block size or more text"
            )
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation), the last one drawn

    def __len__(self) -> int:
        """Batches per epoch; the windows that do not fill a last batch wait for another epoch's shuffle."""
        return self.num_windows // self.batch_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 of shape (batch, block_size), for a global step counted from 0 across epochs."""
        if len(self) == 0:
            raise UserError(
                f"the data has {len(self.span)} tokens = {self.num_windows} blocks of {self.block_size + 1}, "
                f"fewer than one batch of {self.batch_size}: use a smaller batch or block size, or more text"
            )
        epoch, index = divmod(step, len(self))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.randperm(self.num_windows, generator=_generator(self.seed, epoch)))
        windows = self._order[1][index * self.batch_size : (index + 1) * self.batch_size]
        return self._stack(windows.tolist())

    def eval_batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every window in order, for validation loss; the last batch may be smaller (weigh by tokens)."""
        starts = range(0, self.num_windows, self.batch_size)
        for first in itertools.islice(starts, max_batches):
            yield self._stack(list(range(first, min(first + self.batch_size, self.num_windows))))

    def _stack(self, windows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.block_size
        blocks = np.stack([self.span.block(w * t, t + 1) for w in windows]).astype(np.int64)
        ids = torch.from_numpy(blocks)  # (batch, block_size + 1)
        # Contiguous copies, so callers may .view() them (the usual loss code flattens targets that way).
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _generator(seed: int, epoch: int) -> torch.Generator:
    # Hash the pair rather than add it (seed + epoch), so (seed=1, epoch=0) and (seed=0, epoch=1) differ.
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
