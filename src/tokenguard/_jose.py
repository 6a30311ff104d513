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
import importlib.util
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


#: ``+``, ``/`` and ``=`` as byte values: ``int in bytes`` is one ``memchr``, while ``bytes in bytes``
#: first tries the needle as an integer and clears the TypeError (≈ 0.15 µs each on a token, issue 16).
_PLUS, _SLASH, _EQUALS = b"+/="


def _malformed() -> InvalidToken:
    return InvalidToken("malformed_token", "The access token is malformed.")


def _b64decode(segment: str | bytes) -> bytes:
    """Strict base64url: rejects padding, stray characters and non-canonical trailing bits."""
    raw = segment.encode("ascii", "replace") if isinstance(segment, str) else segment
    if _B64URL_SEGMENT.fullmatch(raw) is None:
        raise _malformed()
    return _b64url(raw)


# SIMD base64 (pybase64, a CPython wheel for every supported version): twice as fast as binascii on a
# token's payload and signature, and it reads the url-safe alphabet without a translation. PyPy, or a
# platform without the wheel, decodes with the standard library instead.
_PYBASE64 = importlib.util.find_spec("pybase64") is not None

#: Whether the decoder refuses every character outside ``A-Za-z0-9-_`` but ``+``, ``/`` and ``=``
#: (``parse_jws`` refuses those three itself). Else (Python 3.10 without pybase64) the compact-JWS
#: regex checks the alphabet first.
_DECODER_CHECKS_ALPHABET = _PYBASE64 or sys.version_info >= (3, 11)


def _canonical_padding(segment: bytes) -> bytes:
    """The ``=`` padding a canonical unpadded segment needs; refuses a length or last character that
    no canonical encoding has (RFC 4648 §3.5: the unused low bits of the last character are zero).

    The canonical last characters are the same in both alphabets (none is ``-``, ``_``, ``+`` or ``/``).
    """
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST_BYTES[remainder]):
        raise _malformed()
    return _PADDING[remainder]


if _PYBASE64:
    from pybase64 import b64decode as _decode

    def _b64url(segment: bytes) -> bytes:
        """One canonical unpadded base64url segment, decoded; callers have refused ``+``, ``/`` and ``=``
        (pybase64 still reads ``+`` and ``/`` beside ``altchars``, with a deprecation warning)."""
        padding = _canonical_padding(segment)
        try:
            return _decode(segment + padding, altchars=b"-_", validate=True)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise _malformed() from exc

else:  # pragma: no cover - exercised by the fallback test and on interpreters without pybase64
    if sys.version_info >= (3, 11):

        def _a2b(data: bytes) -> bytes:
            # Python 3.11+ refuses non-alphabet characters while decoding (binascii strict_mode).
            return binascii.a2b_base64(data, strict_mode=True)

    else:
        _a2b = binascii.a2b_base64

    def _b64url(segment: bytes) -> bytes:
        """``_b64url`` with the standard library: translated to the standard alphabet, then decoded."""
        padding = _canonical_padding(segment)
        try:
            return _a2b(segment.translate(_TO_STANDARD) + padding)
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

    __slots__ = ("claims", "header", "header_segment", "signature", "signing_input")

    def __init__(
        self,
        header: dict[str, Any],
        claims: dict[str, Any],
        signing_input: bytes,
        signature: bytes,
        header_segment: bytes = b"",
    ) -> None:
        self.header = header
        self.claims = claims
        self.signing_input = signing_input
        self.signature = signature
        #: The header exactly as the token spells it (base64url): the key of the validator's header memo.
        self.header_segment = header_segment


def parse_jws(token: str) -> ParsedJWS:
    """Split and decode a compact JWS strictly (RFC 7515 §7.1)."""
    raw, first, second = split_compact(token)
    return decode_compact(raw, first, second)


def split_compact(token: str) -> tuple[bytes, int, int]:
    """The token's bytes and the positions of its two dots, once its shape is a compact JWS's.

    Three non-empty base64url segments (RFC 7515 §7.1). The characters are not all checked here: the
    decoder (``decode_compact``) refuses any outside the alphabet, so only those it would let through
    (``+`` and ``/`` of the other alphabet, ``=`` of padding) are.
    """
    if not _DECODER_CHECKS_ALPHABET and _COMPACT_JWS.fullmatch(token) is None:  # pragma: no cover - 3.10
        raise _malformed()
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
        or _PLUS in raw
        or _SLASH in raw
        or _EQUALS in raw
    ):
        raise _malformed()
    return raw, first, second


def decode_compact(raw: bytes, first: int, second: int, header: dict[str, Any] | None = None) -> ParsedJWS:
    """The segments of ``split_compact``'s result, decoded strictly.

    ``header``: the header segment's decoded object, when the caller decoded that very segment before
    (the validator remembers the few headers an issuer signs with); it is then not decoded again, and
    the object is shared: never to be changed.
    """
    segment = raw[:first]
    try:
        # ``strict_loads`` called here directly, not through ``json_segment``: one call less per
        # segment on the validation hot path. Its ValueError is the same refusal.
        if header is None:
            header = strict_loads(_b64url(segment))
        # ``raw[:second]`` is the signing input (RFC 7515 §5.2 step 8).
        return ParsedJWS(
            header, strict_loads(_b64url(raw[first + 1 : second])), raw[:second], _b64url(raw[second + 1 :]), segment
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
