"""Strict JSON decoding, shared by every place that reads JSON an outsider wrote.

``strict_loads`` is the one decoder. Tokens (RFC 7515 §4, RFC 7519 §4, via ``_jose``), introspection
answers (RFC 7662 §2.2), issuer documents (JWKS, RFC 8414 / OpenID metadata, via
``HttpResult.json_object``) and request bodies read for ``authorization_details`` checks are all
decoded by it: duplicate member names are refused, never "last one wins" (RFC 8259 §4: names SHOULD
be unique; with two ``aud`` or two ``active`` members, two readers could each see a different one),
``NaN``/``Infinity`` are not JSON (RFC 8259 §6). By default it also refuses numbers no double can
hold, nesting deeper than ``MAX_DEPTH`` (RFC 8259 §9), and strings holding a lone surrogate
(RFC 7493 §2.1, I-JSON: such a string has no UTF-8 form, so an app that writes the claim out — a
JSON response, a log line — would fail on it); a caller that decides those elsewhere turns them off.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Literal, overload

_orjson_loads: Callable[[bytes], Any] | None
_orjson_dumps: Callable[[Any], bytes]
try:  # CPython wheels for every supported Python; without it, the standard decoder does everything
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - e.g. PyPy
    _orjson_loads = None

#: The only way a lone surrogate reaches a decoded string: a ``\uD800``-``\uDFFF`` escape (UTF-8
#: decoding already refuses encoded surrogates). Fixed length, so the search is linear.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate member names."""
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate member name")
    return document


def finite_float(text: str) -> float:
    """``parse_float`` that refuses numbers no double can hold (1e400 would become infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def reject_constant(text: str) -> Any:
    """``parse_constant``: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{text} is not JSON")


def strict_decoder(*, finite_floats: bool = False) -> json.JSONDecoder:
    """A decoder with the hooks above; no per-integer hook (a Python call per number costs, and
    Python's own digit limit bounds the work)."""
    if finite_floats:
        return json.JSONDecoder(
            object_pairs_hook=strict_pairs, parse_float=finite_float, parse_constant=reject_constant
        )
    return json.JSONDecoder(object_pairs_hook=strict_pairs, parse_constant=reject_constant)


def reject_lone_surrogates(text: str, value: Any) -> None:
    """Raise ``ValueError`` when ``value`` (decoded from ``text``) holds a string with a lone surrogate.

    RFC 7493 §2.1. A paired ``\\uD83D\\uDE00`` decodes to one character and passes. The walk over the
    decoded value runs only when ``text`` has a surrogate escape at all: the common case is one
    substring search.
    """
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None and has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (RFC 7493 §2.1)")


def has_lone_surrogate(value: Any) -> bool:
    """True when a string in ``value`` (member names included, at any depth) holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` arrays/objects (``MAX_DEPTH``'s rule, on a decoded value).

    For JSON decoded without a depth limit (introspection answers, whose refusals are the token's, not
    the issuer's): one walk, each container seen once, no recursion.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False


#: RFC 8259 §9: "An implementation may set limits on the maximum depth of nesting." Real claim sets
#: nest a few levels; a fixed limit gives the same answer on every Python, whose own limit differs
#: (3.13 parses 6000 levels that 3.11 refuses), and keeps out structures deep enough to overflow the
#: stack of the app's own code (e.g. json.dumps of request.auth.claims).
MAX_DEPTH = 32
#: The escapes that decide where JSON strings end (RFC 8259 §7): "\\\\" (a backslash) and '\\"' (a quote
#: that does not end the string). ``str.replace`` removes them left to right, pairing backslashes as
#: the decoder does (a run of 2k+1 keeps its last one, which escapes what follows); after that every '"'
#: opens or closes a string. (The regex this replaces, r'"(?:[^"\\]|\\.)*"', retried from every escaped
#: quote of a string that never closes and read the rest of the text again each time: O(n²), 250 ms
#: for a forged 16 KiB token, before any key or signature was looked at.)
_JSON_ESCAPES = ("\\\\", '\\"')
#: ``bytes.translate`` arguments that turn the text outside strings into one signed byte per bracket:
#: +1 for "[" and "{", -1 (0xFF) for "]" and "}"; every other byte is deleted.
_BRACKET_STEPS = (bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff"), bytes(set(range(256)) - set(b"[]{}")))


def _too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when ``text`` opens more than ``limit`` arrays/objects at once (strings skipped).

    Brackets count as the JSON decoder meets them, up to its first error: inside a string they do not
    count, and after a string that never closes there is nothing it would read. Linear by construction:
    a fixed number of passes in C (replace, split, join, encode, translate) and one running sum.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, decided without scanning
    backslash, quote = _JSON_ESCAPES
    # Every other piece is outside a string; a string that never closes is the last, odd, piece.
    outside = "".join(text.replace(backslash, "").replace(quote, "").split('"')[::2])
    # Non-ASCII is never a bracket: dropped by the encoder, the other non-brackets by translate.
    steps = outside.encode("ascii", "ignore").translate(*_BRACKET_STEPS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > limit


def _canonical_object(data: bytes) -> dict[str, Any] | None:
    """``orjson``'s reading of ``data`` when ``data`` is exactly ``orjson``'s own serialization of it, else ``None``.

    Issue 16: the standard decoder with its strictness hooks is most of what parsing a token costs. Tokens
    and introspection answers are compact JSON, the shape ``orjson.dumps`` writes. When writing back
    the value read gives the very bytes read, those bytes are the canonical text of that value: no
    member name repeats (a dict cannot hold two), no escape, no whitespace, every number written back
    as read (an integer beyond 64 bits, which ``orjson`` reads as a float, is written back otherwise),
    and the strict decoder would build the same value from them. Any other text (or no ``orjson``)
    returns ``None`` and the strict decoder decides, as before: the fast path never accepts what the
    strict one refuses. ``tests/test_strictjson_fast.py`` checks the two agree.
    """
    if _orjson_loads is None:
        return None
    try:
        value = _orjson_loads(data)
        if type(value) is not dict or _orjson_dumps(value) != data:
            return None
    except (ValueError, TypeError):
        # orjson.JSONDecodeError is a ValueError; orjson.JSONEncodeError a TypeError: dumps gives up on
        # values nested deeper than 254 levels, which loads reads (up to 1024) when max_depth is None.
        return None
    return value


class NotAnObject(ValueError):
    """Valid JSON whose top-level value is not an object (``strict_loads(..., object_only=True)``)."""


# No per-integer hook: tokens carry many integers and a hook costs a Python call each. Python's own
# limit (sys.get_int_max_str_digits, 4300 digits) and the token size cap bound the parsing work.
# One decoder per float rule, each with its C scanner: a text that starts with "{" goes straight to
# the scanner (what JSONDecoder.decode does after skipping leading whitespace), the hot path of tokens.
_FINITE = strict_decoder(finite_floats=True)
_LENIENT = strict_decoder()
_SCAN_FINITE: Any = json.scanner.make_scanner(_FINITE)  # type: ignore[arg-type]  # typeshed names the class oddly
_SCAN_LENIENT: Any = json.scanner.make_scanner(_LENIENT)  # type: ignore[arg-type]


@overload
def strict_loads(
    data: bytes | str,
    *,
    object_only: Literal[True] = ...,
    max_depth: int | None = ...,
    finite_floats: bool = ...,
    lone_surrogates: bool = ...,
    detect_encoding: bool = ...,
) -> dict[str, Any]: ...
@overload
def strict_loads(
    data: bytes | str,
    *,
    object_only: bool,
    max_depth: int | None = ...,
    finite_floats: bool = ...,
    lone_surrogates: bool = ...,
    detect_encoding: bool = ...,
) -> Any: ...
def strict_loads(
    data: bytes | str,
    *,
    object_only: bool = True,
    max_depth: int | None = MAX_DEPTH,
    finite_floats: bool = True,
    lone_surrogates: bool = False,
    detect_encoding: bool = False,
) -> Any:
    """The one strict JSON decoder; raises ``ValueError`` saying why (``NotAnObject`` for valid JSON
    that is not an object when ``object_only``). Each caller maps the error to its own refusal.

    Always: UTF-8 only for bytes (RFC 8259 §8.1), duplicate member names and NaN/Infinity refused,
    nothing but whitespace after the value. The defaults are the strictest (tokens use them):

    - ``object_only``: the value must be a JSON object (``False``: any JSON value, e.g. a request body);
    - ``max_depth``: more nested arrays/objects than this are refused before decoding (``None``: only
      Python's recursion limit, reported as a ``ValueError`` too);
    - ``finite_floats``: numbers no double can hold (``1e400``) are refused rather than read as infinity;
    - ``lone_surrogates``: ``True`` lets strings with a lone surrogate through, for a caller that
      refuses them itself with another outcome (an introspection answer: the token, not the issuer);
    - ``detect_encoding``: bytes in UTF-16/32, or UTF-8 with a BOM, are read as ``json.loads`` reads
      them (RFC 8259 §8.1 lets a parser ignore a BOM): issuer documents, read that way before.
    """
    # A compact UTF-8 object is tried first, before the text is decoded at all. Its bracket count bounds
    # its depth (``_too_deep``'s first step, on the bytes: a bracket is one byte in UTF-8); one with more
    # brackets than ``max_depth`` (inside strings, say) is left to the strict decoder, which agrees.
    if (
        type(data) is bytes
        and data[:1] == b"{"
        and (max_depth is None or data.count(b"[") + data.count(b"{") <= max_depth)
    ):
        fast = _canonical_object(data)
        if fast is not None:
            return fast  # an object, without escapes, within max_depth: nothing below applies
    try:
        if isinstance(data, str):
            text = data
        elif detect_encoding:
            text = data.decode(json.detect_encoding(data), "surrogatepass")
        else:
            text = data.decode("utf-8")
        # The bracket count is ``_too_deep``'s own first step, repeated here to spare the hot path a call.
        if max_depth is not None and text.count("[") + text.count("{") > max_depth and _too_deep(text, max_depth):
            raise ValueError("nested too deeply")
        if text[:1] == "{":
            # Only whitespace may follow the object (RFC 8259 §2).
            value, end = (_SCAN_FINITE if finite_floats else _SCAN_LENIENT)(text, 0)
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise ValueError("extra data after the JSON value")
        else:
            value = (_FINITE if finite_floats else _LENIENT).decode(text)
    except StopIteration as exc:
        raise ValueError("not JSON") from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if not lone_surrogates and "\\" in text:  # one character is found faster than two: the common case
        reject_lone_surrogates(text, value)
    if object_only and not isinstance(value, dict):
        raise NotAnObject("JSON that is not an object")
    return value
