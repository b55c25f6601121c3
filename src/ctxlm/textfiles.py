"""Reading users' text files: strict UTF-8, a leading byte-order mark dropped, errors naming file, line and column.

Every reader of text (corpora, task files, vocabularies, SQuAD/CoQA JSON, texts to embed) goes through here, so a
bad byte is reported the same way wherever it is: `path:line: not valid UTF-8 (byte 0xe9 at column 4), expected
UTF-8 text`, with advice when the file is UTF-16 or UTF-32 by its byte-order mark.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

from ctxlm.errors import UserError

_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),  # UTF-32 before UTF-16:
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))  # FF FE 00 00 also starts with FF FE
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
