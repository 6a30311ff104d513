"""Strict JSON decoding, shared by every place that reads JSON an outsider wrote.

Tokens (RFC 7515 §4, RFC 7519 §4), introspection answers (RFC 7662 §2.2) and request bodies read
for ``authorization_details`` checks are all decoded this way: duplicate member names are refused,
never "last one wins" (RFC 8259 §4: names SHOULD be unique; with two ``aud`` or two ``active``
members, two readers could each see a different one), and ``NaN``/``Infinity`` are not JSON
(RFC 8259 §6).
"""

from __future__ import annotations

import json
import math
from typing import Any


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
