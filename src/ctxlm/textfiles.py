"""Reading users' text files: strict UTF-8, a leading byte-order mark dropped, errors naming file, line and column.

Every reader of text (corpora, task files, vocabularies, SQuAD/CoQA JSON, texts to embed) goes through here, so a
bad byte is reported the same way wherever it is: `path:line: not valid UTF-8 (byte 0xe9 at column 4), expected
UTF-8 text`, with advice when the file is UTF-16 or UTF-32 by its byte-order mark.

It also holds the one writer of JSON-lines outputs that a long job writes as it goes (`JsonLinesOutput`: `ctxlm
zeroshot --out`, `ctxlm embed --output X.jsonl`), which `--resume` continues after the last complete record.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ctxlm.errors import UserError

_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),  # UTF-32 before UTF-16:
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))  # FF FE 00 00 also starts with FF FE
_SNIFF_BYTES = 8192  # NUL bytes this early mean a binary file, not text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def encoding_hint(head: bytes) -> str:
    """Advice to append to a "not UTF-8" error, from the first bytes of the file: "" unless they are the byte-order
    mark of UTF-16 or UTF-32 (what Windows tools often write for "Unicode")."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return f" (it is {name} text, by its byte-order mark: convert it, e.g. iconv -f {name} -t UTF-8)"
    return ""


def not_utf8(source: Path | str, data: bytes, start: int, first_line: int = 1) -> UserError:
    """The error for the byte at `start` of `data` (the file's bytes from the start of line `first_line`)."""
    line = first_line + data.count(b"\n", 0, start)
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    hint = encoding_hint(data) if first_line == 1 else ""
    return UserError(f"{source}:{line}: not valid UTF-8 (byte 0x{data[start]:02x} at column {column}), expected "
                     f"UTF-8 text{hint}")


def decode_line(raw: bytes, source: Path | str, number: int) -> str:
    """Line `number` of a file (its bytes, ending included) as text; line 1 loses a byte-order mark."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise not_utf8(source, raw, err.start, number) from None
    return text.removeprefix("\ufeff") if number == 1 else text


def read_text(path: Path) -> str:
    """The whole file (gunzipped if it ends in .gz) as UTF-8 text without a byte-order mark."""
    try:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise UserError(f"{path}: not a valid gzip file ({err})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise not_utf8(path, data, err.start) from None


def check_json_unicode(value: Any, raw: str, path: Path | str, line: int = 1) -> None:
    """Refuse JSON `value` (decoded from `raw`, which starts on `line` of `path`) if one of its strings holds half of
    a UTF-16 surrogate pair. JSON's \\u escapes can spell one ("\\ud800"), which is no character: Python keeps it
    in the string, but UTF-8 and the Rust tokenizers fail on it later, far from the file. Only a `raw` that holds
    such an escape (a valid pair has two) needs the walk through `value`."""
    if not _SURROGATE_ESCAPE.search(raw):
        return
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and not item.isascii():
            bad = next((i for i, c in enumerate(item) if "\ud800" <= c <= "\udfff"), None)
            if bad is not None:
                code = f"\\u{ord(item[bad]):04x}"
                escape = re.compile(re.escape(code), re.IGNORECASE).search(raw)
                line += 0 if escape is None else raw.count("\n", 0, escape.start())
                raise UserError(f"{path}:{line}: the text {item[max(bad - 20, 0):bad + 20]!r} holds {code}, half of a "
                                "UTF-16 surrogate pair, which is no character; expected Unicode text")


# ---------------------------------------------------------------------------------------------------- corpora


def find_text_files(path: str | Path) -> list[Path]:
    """The file itself, or every *.txt and *.txt.gz under a folder, sorted so token order is reproducible."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: corpus not found, expected a text file or a folder of .txt/.txt.gz files")
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.name.endswith((".txt", ".txt.gz"))),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise UserError(f"{path}: no .txt or .txt.gz files in this folder")
    return files


def read_lines(file: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The lines of a (gzipped) UTF-8 file, each with its line ending, checked strictly.

    Reads bytes and decodes line by line so an error can name the line; a newline byte never occurs inside a
    multi-byte UTF-8 character, so splitting before decoding is safe. Lines end at "\\n" only: a "\\r\\n" ending
    stays in the text, as does a lone "\\r". A UTF-8 byte-order mark at the start is dropped; a UTF-16 or UTF-32
    file, a NUL byte in the first 8 KiB (a binary file) or bytes that are not UTF-8 are a UserError naming the
    file (and the line and column). `on_bytes` reports progress in bytes on disk (compressed for .gz), for a
    progress bar.
    """
    with open(file, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if file.name.endswith(".gz") else raw
        try:
            head = stream.read(_SNIFF_BYTES)
            if hint := encoding_hint(head):
                raise UserError(f"{file}: not UTF-8{hint}")
            if b"\0" in head:
                raise UserError(f"{file}: looks like a binary file, expected UTF-8 text (a NUL byte at offset "
                                f"{head.index(0)})")
            # Split on b"\n" only, like iterating the stream, so line numbers agree with editors.
            *first, partial = head.split(b"\n")
            head_lines = (line + b"\n" for line in first)
            raw_lines = itertools.chain(head_lines, [partial + stream.readline()], stream)
            done = 0
            for lineno, line in enumerate(raw_lines, start=1):
                if not line:
                    continue  # the sniffed head ended exactly at the end of the file
                yield decode_line(line, file, lineno)  # a BOM is not text
                if on_bytes is not None and lineno % 1024 == 0:
                    on_bytes(raw.tell() - done)
                    done = raw.tell()
            if on_bytes is not None:
                on_bytes(raw.tell() - done)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise UserError(f"{file}: not a valid gzip file ({e})") from None


def read_documents(path: str | Path) -> Documents:
    """The text of each file of a corpus with some non-whitespace in it, lazily: a file is one document."""
    return Documents(path)


class Documents:
    """The text of each file of a corpus (`find_text_files`), read lazily: a file is one document.

    Files that are empty or hold only whitespace are skipped, never silently: after a pass `blank_files` lists
    them and a warning names how many (a 0-byte file is often a download that failed). No file with text at all
    is a UserError.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.blank_files: list[Path] = []

    def __iter__(self) -> Iterator[str]:
        files = find_text_files(self.path)
        self.blank_files = []
        for file in files:
            text = "".join(read_lines(file))
            if text.strip():
                yield text
            else:
                self.blank_files.append(file)
        if len(self.blank_files) == len(files):
            raise UserError(f"{self.path}: no text, all {len(files)} file(s) are empty or whitespace")
        warn_blank(self.path, len(self.blank_files), len(files), [f.name for f in self.blank_files])


def warn_blank(path: str | Path, blank: int, files: int, names: Sequence[str] = ()) -> None:
    if blank:
        some = f": {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else ""
        warnings.warn(f"{path}: skipped {blank} of {files} files, empty or whitespace only{some}", stacklevel=3)


# ------------------------------------------------------------------------------------- outputs written as a job goes
class JsonLinesOutput:
    """A JSON-lines file that a job writes record by record as it goes, and that a resumed job continues.

    `write(records)` appends complete lines in one write, then flushes them to disk: a kill leaves complete records
    and at most one line cut short. With `resume`, `done` holds the complete records already there (none when
    the file is missing), the cut line is removed from the file, and writing continues after the last complete
    record: no record twice, none missing. Without `resume` the file starts empty."""

    def __init__(self, path: str | Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.done: list[dict] = self._complete_records() if resume else []
        try:
            # open for the job's whole run (closed by `close`, or leaving the `with` block)
            self.file: IO[str] = open(self.path, "a" if resume else "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from None

    def _complete_records(self) -> list[dict]:
        """The records of the file's complete lines; the file is cut after the last of them."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise UserError(f"{self.path}: cannot read ({err.strerror})") from None
        end = data.rfind(b"\n") + 1  # a line without its line break is one a kill cut short
        records = []
        for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
            try:
                record = json.loads(decode_line(raw, self.path, number))
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                raise UserError(f"{self.path}:{number}: not a JSON record of this command's output; --resume "
                                "continues a file the same command wrote: name another file, or drop --resume")
            records.append(record)
        if end < len(data):
            try:
                os.truncate(self.path, end)
            except OSError as err:
                raise UserError(f"{self.path}: cannot write ({err.strerror})") from None
        return records

    def write(self, records: Sequence[dict]) -> None:
        """Append `records`, one JSON object a line, and flush them to disk."""
        try:
            self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> JsonLinesOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
