"""Strict parsing of the JOSE compact serialization (RFC 7515 §7.1), nothing trusted yet.

The one place that decides what a compact token looks like: canonical unpadded base64url only
(RFC 7515 §2, RFC 4648 §5), header and payload JSON objects decoded by ``_strictjson.strict_loads``
with its strictest rules (no duplicate member names, no NaN/Infinity or out-of-range floats, nesting
at most 32 deep, no lone surrogates), and which shape a bearer value has (``classify``). Used by the
validator (``jwt_validator``), by the authenticator (JWE refusal, choosing the issuer) and by the CLI.
Every refusal here is ``InvalidToken("malformed_token")``.
"""

from __future__ import annotations

import binascii
import re
import sys
from typing import Any, Literal

from tokenguard._strictjson import strict_loads
from tokenguard.errors import InvalidToken

TokenKind = Literal["jws", "jwe", "opaque"]

# RFC 7515 §2 / RFC 4648 §5: base64url without padding. Three segments, non-empty signature.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64URL_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
# The last character of a canonical encoding has its unused low bits set to zero (RFC 4648 §3.5).
_CANONICAL_LAST_BYTES = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}


def _malformed() -> InvalidToken:
    return InvalidToken("malformed_token", "The access token is malformed.")


def _b64decode(segment: str | bytes) -> bytes:
    """Strict base64url: rejects padding, stray characters and non-canonical trailing bits."""
    raw = segment.encode("ascii", "replace") if isinstance(segment, str) else segment
    if _B64URL_SEGMENT.fullmatch(raw) is None:
        raise _malformed()
    return _b64decode_checked(raw)


if sys.version_info >= (3, 11):
    #: Python 3.11+ can refuse non-alphabet characters while decoding (binascii strict_mode).
    _STRICT_A2B = True

    def _a2b(data: bytes) -> bytes:
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - Python 3.10: the compact-JWS regex checks the alphabet instead
    _STRICT_A2B = False
    _a2b = binascii.a2b_base64


def _b64decode_checked(raw: bytes) -> bytes:
    """``_b64decode`` for a segment whose alphabet is already checked (the compact-JWS match)."""
    return _b64decode_standard(raw.translate(_TO_STANDARD))


def _b64decode_standard(segment: bytes) -> bytes:
    """``_b64decode_checked`` for a segment already translated to the standard alphabet (``-_`` to ``+/``).

    The canonical last characters are the same in both alphabets (none is ``-``, ``_``, ``+`` or ``/``).
    """
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST_BYTES[remainder]):
        raise _malformed()
    try:
        return _a2b(segment + _PADDING[remainder])
    except (binascii.Error, ValueError) as exc:
        raise _malformed() from exc


def json_segment(data: bytes) -> dict[str, Any]:
    """A decoded header or payload as a JSON object (RFC 7515 §4, RFC 7519 §7.2 step 10), strictly."""
    try:
        return strict_loads(data)
    except ValueError as exc:
        raise _malformed() from exc


def classify(token: str) -> TokenKind:
    """JWS (three segments), refused JOSE (a JSON header with another shape, e.g. JWE), or opaque."""
    if token.count(".") == 2:
        return "jws"
    head = token.split(".", 1)[0]
    try:
        json_segment(_b64decode(head))
    except InvalidToken:
        return "opaque"
    return "jwe"


class ParsedJWS:
    """A compact JWS split and decoded, not yet trusted."""

    __slots__ = ("claims", "header", "signature", "signing_input")

    def __init__(self, header: dict[str, Any], claims: dict[str, Any], signing_input: bytes, signature: bytes) -> None:
        self.header = header
        self.claims = claims
        self.signing_input = signing_input
        self.signature = signature


def parse_jws(token: str) -> ParsedJWS:
    """Split and decode a compact JWS strictly (RFC 7515 §7.1)."""
    if _STRICT_A2B:
        # a2b_base64(strict_mode=True) refuses any character outside the (translated) alphabet, so
        # only the characters translation would smuggle in (+, /, =) and the shape are checked here.
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError as exc:
            raise _malformed() from exc
        first = raw.find(b".")
        second = raw.find(b".", first + 1)
        if (
            first < 1
            or second < first + 2
            or second == len(raw) - 1
            or raw.find(b".", second + 1) != -1
            or b"+" in raw
            or b"/" in raw
            or b"=" in raw
        ):
            raise _malformed()
    else:
        if _COMPACT_JWS.fullmatch(token) is None:
            raise _malformed()
        raw = token.encode("ascii")
        first = raw.index(b".")
        second = raw.index(b".", first + 1)
    # One translation of the whole token to the standard alphabet instead of one per segment (the
    # dots are left alone); ``raw`` itself is the signing input.
    standard = raw.translate(_TO_STANDARD)
    try:
        # ``strict_loads`` called here directly, not through ``json_segment``: one call less per
        # segment on the validation hot path. Its ValueError is the same refusal.
        return ParsedJWS(
            strict_loads(_b64decode_standard(standard[:first])),
            strict_loads(_b64decode_standard(standard[first + 1 : second])),
            raw[:second],
            _b64decode_standard(standard[second + 1 :]),
        )
    except ValueError as exc:
        raise _malformed() from exc


def split_jws(token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """A compact JWS as (header object, payload bytes, signing input, signature), decoded strictly.

    For JWS whose payload its caller decodes with rules of its own (an RFC 9701 introspection answer
    is read as RFC 7662 answers are): the header is a strict JSON object, every segment canonical
    base64url (RFC 7515 §7.1); the payload is returned undecoded. Refusals are ``malformed_token``.
    """
    if token.count(".") != 2 or _COMPACT_JWS.fullmatch(token) is None:
        raise _malformed()
    head, payload, signature = token.split(".")
    return (
        json_segment(_b64decode(head)),
        _b64decode(payload),
        f"{head}.{payload}".encode("ascii"),
        _b64decode(signature),
    )
