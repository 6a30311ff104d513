"""Parser-differential and resource attacks on the compact serialization: non-canonical base64url, JSON that
is not an object, duplicate member names, numbers as strings, huge numbers, deep nesting, oversized
tokens (RFC 8725 §2.6, §3.3, §3.10; RFC 7515 §2, §5.2; RFC 7519 §4, §7.2; RFC 6750 §2.1).

Each test goes through a real Starlette app guarded by TokenGuard and asserts the exact status,
``error`` code and reason; where a variant is a disguised valid token, a control shows the canonical
form is accepted, so the refusal is due to the disguise alone.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from attack_kit import assert_ok, assert_refused, attack_target, claims_text, header, segment, sign_segments, signed

from conftest import Issuer, b64url
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MAX_TOKEN_BYTES = 16 * 1024


def _with_length(idp: Issuer, index: int, remainder: int, **claims: Any) -> list[str]:
    """Segments of a valid token (header, payload, signature) where segment ``index`` has len % 4 == ``remainder``."""
    for filler in range(64):
        head = header(x="f" * filler) if index == 0 else header()
        body = idp.claims(x="f" * filler, **claims) if index == 1 else idp.claims(**claims)
        parts = signed(idp, head, body).split(".")
        if len(parts[index]) % 4 == remainder:
            return parts
    raise AssertionError("no filler gives that length")  # pragma: no cover


def _non_canonical_last(segment_text: str) -> str:
    """The same bytes with a non-zero unused trailing bit (RFC 4648 §3.5): decoders that ignore it accept it."""
    last = _ALPHABET.index(segment_text[-1])
    changed = segment_text[:-1] + _ALPHABET[last | 1]
    assert changed != segment_text
    assert base64.urlsafe_b64decode(changed + "==") == base64.urlsafe_b64decode(segment_text + "==")
    return changed


def _std_alphabet(idp: Issuer, index: int) -> list[str]:
    """Segments of a valid token where segment ``index`` has '-' or '_' (so '+'/'/' re-encodes it)."""
    for filler in range(256):
        parts = signed(idp, header(x="?>" * filler) if index == 0 else header(), idp.claims(x="?>" * filler)).split(".")
        if "-" in parts[index] or "_" in parts[index]:
            return parts
    raise AssertionError("no filler gives '-' or '_'")  # pragma: no cover


SEGMENTS = ["header", "payload", "signature"]


@pytest.mark.parametrize(
    ("index", "remainder"),
    # An RS256 signature (256 bytes) always encodes to 342 characters: len % 4 == 2 only.
    [(0, 2), (0, 3), (1, 2), (1, 3), (2, 2)],
    ids=["header-2", "header-3", "payload-2", "payload-3", "signature-2"],
)
def test_non_zero_trailing_bits_are_refused(idp: Issuer, clock: ManualClock, index: int, remainder: int) -> None:
    """RFC 7515 §2 / RFC 4648 §3.5 (parser differential, RFC 8725 §2.6 class): non-zero unused bits: malformed."""
    parts = _with_length(idp, index, remainder)
    disguised = list(parts)
    disguised[index] = _non_canonical_last(parts[index])
    with attack_target(clock) as target:
        assert_refused(target, target.get(".".join(disguised)), 401, "invalid_token", "malformed_token")
        assert_ok(target, target.get(".".join(parts)))


@pytest.mark.parametrize("index", [0, 1, 2], ids=SEGMENTS)
def test_padding_is_refused(idp: Issuer, clock: ManualClock, index: int) -> None:
    """RFC 7515 §2 (base64url without padding) / RFC 6750 §2.1 (b64token: '=' only at the end): padding is refused."""
    parts = _with_length(idp, index, 2)
    padded = list(parts)
    padded[index] += "=="
    with attack_target(clock) as target:
        response = target.get(".".join(padded))
        if index == 2:
            # '=' at the very end is b64token syntax, so the header parses; the JWS does not.
            assert_refused(target, response, 401, "invalid_token", "malformed_token")
        else:
            # '=' inside the credentials is not b64token syntax at all (RFC 6750 §3.1 invalid_request).
            assert_refused(target, response, 400, "invalid_request", "malformed_header")
        assert_ok(target, target.get(".".join(parts)))


@pytest.mark.parametrize("index", [0, 1, 2], ids=SEGMENTS)
def test_standard_base64_alphabet_is_refused(idp: Issuer, clock: ManualClock, index: int) -> None:
    """RFC 7515 §2 (RFC 8725 §2.6 class): a segment re-encoded with '+' and '/' (standard base64) is malformed."""
    parts = _std_alphabet(idp, index)
    disguised = list(parts)
    disguised[index] = parts[index].replace("-", "+").replace("_", "/")
    with attack_target(clock) as target:
        assert_refused(target, target.get(".".join(disguised)), 401, "invalid_token", "malformed_token")
        assert_ok(target, target.get(".".join(parts)))


@pytest.mark.parametrize(
    ("head", "body"),
    [
        ("[1, 2]", None),
        ('"RS256"', None),
        ("null", None),
        ("42", None),
        ("true", None),
        (None, '["alice"]'),
        (None, '"alice"'),
        (None, "1800000300"),
        (None, "null"),
        (None, "false"),
        (None, ""),
        (None, "{}{}"),
    ],
    ids=repr,
)
def test_json_that_is_not_an_object_is_refused(
    idp: Issuer, clock: ManualClock, head: str | None, body: str | None
) -> None:
    """RFC 7515 §5.2 step 3-4 / RFC 7519 §7.2 step 10: a header or claims set that is not a JSON object is malformed."""
    head_text = head if head is not None else json.dumps(header())
    body_text = body if body is not None else json.dumps(idp.claims())
    with attack_target(clock) as target:
        response = target.get(signed(idp, head_text, body_text))
        assert_refused(target, response, 401, "invalid_token", "malformed_token")


@pytest.mark.parametrize(
    ("where", "duplicate"),
    [
        ("claims", '"aud": "https://other-api.example.com"'),
        ("claims", '"exp": 1'),
        ("claims", '"exp": 99999999999'),
        ("claims", '"sub": "admin"'),
        ("claims", '"iss": "https://evil.example.com"'),
        ("claims", '"scope": "admin"'),
        ("header", '"alg": "none"'),
        ("header", '"kid": "attacker-1"'),
        ("header", '"typ": "dpop+jwt"'),
    ],
    ids=lambda value: value if value in ("claims", "header") else value.split(":")[0].strip('"'),
)
@pytest.mark.parametrize("first", [True, False], ids=["duplicate-first", "duplicate-last"])
def test_duplicate_member_names_are_refused(
    idp: Issuer, clock: ManualClock, where: str, duplicate: str, first: bool
) -> None:
    """RFC 7515 §4 / RFC 7519 §4 (RFC 8725 §2.6 class): duplicate names are refused, never "last one wins"."""
    base = json.dumps(header()) if where == "header" else json.dumps(idp.claims())
    text = "{" + duplicate + ", " + base[1:] if first else base[:-1] + ", " + duplicate + "}"
    head_text, body_text = (text, json.dumps(idp.claims())) if where == "header" else (json.dumps(header()), text)
    with attack_target(clock) as target:
        assert_refused(target, target.get(signed(idp, head_text, body_text)), 401, "invalid_token", "malformed_token")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    ("raw", "why"),
    [('"1800000300"', "bad_claim"), ('"1.8e9"', "bad_claim"), ("true", "bad_claim"), ("[1800000300]", "bad_claim")],
    ids=["string", "string-exponent", "boolean", "list"],
)
def test_numbers_as_strings_are_refused(idp: Issuer, clock: ManualClock, name: str, raw: str, why: str) -> None:
    """RFC 7519 §2 NumericDate / RFC 8725 §3.10: exp, nbf and iat must be JSON numbers; "1800000300" is refused."""
    with attack_target(clock) as target:
        token = signed(idp, header(), claims_text(idp, **{name: raw}))
        assert_refused(target, target.get(token), 401, "invalid_token", why)


@pytest.mark.parametrize(
    ("name", "raw", "status", "why"),
    [
        ("exp", "1e400", 401, "malformed_token"),
        ("exp", "-1e400", 401, "malformed_token"),
        ("exp", "1" + "0" * 400, 401, "bad_claim"),
        ("nbf", "-" + "9" * 400, 401, "bad_claim"),
        ("iat", "1e309", 401, "malformed_token"),
        ("x", "1e999999999", 401, "malformed_token"),
        ("x", "1" + "0" * 400, 200, None),
        ("exp", "-1" + "0" * 300, 401, "expired"),
        ("nbf", "1" + "0" * 300, 401, "not_yet_valid"),
        ("iat", "1" + "0" * 300, 401, "issued_in_future"),
        ("exp", "1.7976931348623157e308", 200, None),
        ("nbf", "-1.7976931348623157e308", 200, None),
    ],
    ids=lambda value: value[:12] if isinstance(value, str) else repr(value),
)
def test_huge_numbers_are_refused_or_compared_without_a_crash(
    idp: Issuer, clock: ManualClock, name: str, raw: str, status: int, why: str | None
) -> None:
    """RFC 7493 §2.2 (I-JSON) / RFC 8725 §3.10: overflowing numbers are refused where read, and never crash."""
    token = signed(idp, header(), claims_text(idp, **{name: raw}))
    with attack_target(clock) as target:
        response = target.get(token)
        if why is None:
            assert_ok(target, response)
        else:
            assert_refused(target, response, status, "invalid_token", why)


@pytest.mark.parametrize(
    ("where", "nesting"),
    [
        ("claims", "[" * 5000),
        ("claims", "[" * 3000 + "]" * 3000),
        ("claims", '{"a":' * 1500 + "1" + "}" * 1500),
        ("claims", "[" * 33 + "]" * 33),
        ("header", "[" * 5000),
        ("header", '{"a":' * 1500 + "1" + "}" * 1500),
        ("header", '{"a":' * 33 + "1" + "}" * 33),
    ],
    ids=[
        "claims-open-arrays",
        "claims-3000-arrays",
        "claims-1500-objects",
        "claims-33-arrays",
        "header-open-arrays",
        "header-1500-objects",
        "header-33-objects",
    ],
)
def test_deeply_nested_json_is_refused(idp: Issuer, clock: ManualClock, where: str, nesting: str) -> None:
    """RFC 8725 §3.10 / RFC 8259 §9 (nesting limit; DoS class): over 32 levels is malformed, on any Python."""
    if where == "claims":
        head_text, body_text = json.dumps(header()), claims_text(idp)[:-1] + ', "x": ' + nesting + "}"
    else:
        head_text, body_text = json.dumps(header())[:-1] + ', "x": ' + nesting + "}", json.dumps(idp.claims())
    with attack_target(clock) as target:
        token = signed(idp, head_text, body_text)
        assert len(token) <= MAX_TOKEN_BYTES
        assert_refused(target, target.get(token), 401, "invalid_token", "malformed_token")
        # Brackets inside strings do not count, and realistic nesting (RFC 9396 authorization_details) passes.
        details = [{"type": "payment", "locations": ["https://api.example.com"], "limits": {"eur": [{"max": 10}]}}]
        assert_ok(target, target.get(idp.token(authorization_details=details, note="[" * 5000)))


def _token_of_length(idp: Issuer, length: int) -> str:
    """A valid, issuer-signed token of exactly ``length`` characters (filler in a header and a claim)."""
    for head_filler in range(4):
        base = signed(idp, header(x="h" * head_filler), idp.claims(x=""))
        body_filler = (length - len(base)) * 3 // 4
        for extra in range(-2, 3):
            token = signed(idp, header(x="h" * head_filler), idp.claims(x="f" * (body_filler + extra)))
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")  # pragma: no cover


def test_tokens_over_the_size_cap_are_refused(idp: Issuer, clock: ManualClock) -> None:
    """RFC 8725 §3.10 (DoS class): a token over 16 KiB is 401 token_too_large before parsing; 16 KiB passes."""
    at_cap = _token_of_length(idp, MAX_TOKEN_BYTES)
    over_cap = _token_of_length(idp, MAX_TOKEN_BYTES + 1)
    with attack_target(clock) as target:
        assert_ok(target, target.get(at_cap))
        assert_refused(target, target.get(over_cap), 401, "invalid_token", "token_too_large")
        # Size is checked before syntax: a megabyte of garbage costs no parsing and no key lookup.
        calls = idp.jwks_calls
        assert_refused(target, target.get("A" * (1024 * 1024)), 401, "invalid_token", "token_too_large")
        assert_refused(target, target.get("%" * (MAX_TOKEN_BYTES + 1)), 401, "invalid_token", "token_too_large")
        assert idp.jwks_calls == calls


def test_disguised_payload_segment_cannot_replay_a_signature(idp: Issuer, clock: ManualClock) -> None:
    """RFC 7515 §5.2 / RFC 8725 §3.3: the signature covers the encoded segments; re-encoding the payload breaks it."""
    token = idp.token()
    head, body, signature = token.split(".")
    reencoded = base64.b64encode(base64.urlsafe_b64decode(body + "==")).decode().rstrip("=")
    with attack_target(clock) as target:
        forged = f"{head}.{b64url(json.dumps(idp.claims(scope='admin')).encode())}.{signature}"
        assert_refused(target, target.get(forged), 401, "invalid_token", "bad_signature")
        if reencoded != body:
            assert_refused(
                target, target.get(f"{head}.{reencoded}.{signature}"), 401, "invalid_token", "malformed_token"
            )
        resigned = sign_segments(head, segment(idp.claims()), idp.key("rsa-1").private, "RS256")
        assert_ok(target, target.get(resigned))
