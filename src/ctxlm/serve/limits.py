"""What a request may ask for, and the one-line refusals of what it may not.

Every handler reads its JSON body through `read_json` (a size cap, then a JSON object or a 400) and its fields
through the `field_*` readers, which raise `Refused` with the HTTP status and the reason; the app turns it into
`{"error": reason}`. Nothing a client sends reaches the model unchecked, so a bad request costs a 4xx, never a
500 or the server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


class Refused(Exception):  # noqa: N818 - a refusal, not an error of the server
    """A request the server will not run: `status` (4xx) and a one-line `reason`."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason.splitlines()[0] if reason else "bad request", status


@dataclass(frozen=True)
class Limits:
    """Bounds on one request. The defaults keep any single request under a second or so on a laptop CPU with a
    small model; the server's micro-batches and the model's context bound the rest."""

    body_bytes: int = 1_000_000  # a request body
    texts: int = 64  # texts in one /embed, /layers, /neighbours; inputs in one /predict; segments in /memory
    chars: int = 5_000  # characters of one text
    total_chars: int = 50_000  # characters of all the texts of one request
    new_tokens: int = 256  # /generate's max_new_tokens
    attention_tokens: int = 128  # tokens of one /attention text (the weights grow with its square)
    top_k: int = 50  # candidates in /fill-mask and per /generate step
    numbers: int = 2_000_000  # numbers in one /embed answer (per-token vectors of many long texts add up)
    pending: int = 4096  # requests waiting for the model before new ones get a 429

    def public(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


async def read_json(request, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object: 413 past `limits.body_bytes`, 400 for anything but UTF-8 JSON whose top
    level is an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes:
        raise Refused(f"request body of {int(declared):,} bytes is over the limit of {limits.body_bytes:,}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.body_bytes:
            raise Refused(f"request body is over the limit of {limits.body_bytes:,} bytes", 413)
    if not body:
        raise Refused("empty request body: expected a JSON object")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise Refused("request body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise Refused(f"request body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise Refused("request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise Refused(f"expected a JSON object, got a JSON {_json_type(value)}")
    return value


def _no_constant(name: str) -> None:
    raise Refused(f"request body holds {name}, which is not JSON")


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


_MISSING = object()


def only_fields(body: dict, allowed: tuple[str, ...]) -> None:
    """Refuse unknown fields: a misspelt option silently ignored would be worse."""
    unknown = [name for name in body if name not in allowed]
    if unknown:
        raise Refused(f"unknown field {unknown[0]!r}; expected {', '.join(allowed)}")


def field_text(body: dict, name: str, limits: Limits, *, default: object = _MISSING, empty: bool = True) -> str:
    value = body.get(name, default)
    if value is _MISSING:
        raise Refused(f"missing field {name!r}: expected a string")
    if not isinstance(value, str):
        raise Refused(f"{name} is a {_json_type(value)}; expected a string")
    if not empty and not value.strip():
        raise Refused(f"{name} is empty")
    if len(value) > limits.chars:
        raise Refused(f"{name} has {len(value):,} characters, over the limit of {limits.chars:,}", 413)
    return value


def field_texts(body: dict, name: str, limits: Limits, *, least: int = 1) -> list[str]:
    """A list of `least` to `limits.texts` strings, each and all within the character limits."""
    value = body.get(name, _MISSING)
    if value is _MISSING:
        raise Refused(f"missing field {name!r}: expected a list of strings")
    if isinstance(value, str):
        raise Refused(f"{name} is a string; expected a list of strings ([\"...\"])")
    if not isinstance(value, list):
        raise Refused(f"{name} is a {_json_type(value)}; expected a list of strings")
    if len(value) > limits.texts:
        raise Refused(f"{name} has {len(value)} items, over the limit of {limits.texts} per request", 413)
    if len(value) < least:
        raise Refused(f"{name} needs at least {least} item{'s' if least > 1 else ''}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Refused(f"{name}[{i}] is a {_json_type(item)}; expected a string")
        if len(item) > limits.chars:
            raise Refused(f"{name}[{i}] has {len(item):,} characters, over the limit of {limits.chars:,}", 413)
    total = sum(map(len, value))
    if total > limits.total_chars:
        raise Refused(f"{name} hold {total:,} characters, over the limit of {limits.total_chars:,} per request", 413)
    return value


def field_int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise Refused(f"{name}={json.dumps(value)}: expected an integer from {lo} to {hi}")
    if not lo <= value <= hi:
        raise Refused(f"{name}={int(value)}: expected an integer from {lo} to {hi}")
    return int(value)


def field_float(body: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise Refused(f"{name}={json.dumps(value)}: expected a number from {lo:g} to {hi:g}")
    return float(value)


def field_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise Refused(f"{name}={json.dumps(value)}: expected true or false")
    return value


def field_choice(body: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(name, default)
    if value not in choices:
        raise Refused(f"{name}={json.dumps(value)}: expected one of {', '.join(choices)}")
    return value
