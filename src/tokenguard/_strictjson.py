"""Strict JSON decoding, shared by every place that reads JSON an outsider wrote.

Tokens (RFC 7515 §4, RFC 7519 §4), introspection answers (RFC 7662 §2.2) and request bodies read
for ``authorization_details`` checks are all decoded this way: duplicate member names are refused,
never "last one wins" (RFC 8259 §4: names SHOULD be unique; with two ``aud`` or two ``active``
members, two readers could each see a different one), ``NaN``/``Infinity`` are not JSON
(RFC 8259 §6), and strings holding a lone surrogate are refused (RFC 7493 §2.1, I-JSON: such a
string has no UTF-8 form, so an app that writes the claim out — a JSON response, a log line — would
fail on it).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

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
