"""Attacks through the JOSE header's key-selection members: jku/x5u/x5c/jwk pointing at attacker keys,
hostile ``kid`` values, and unknown ``crit`` extensions (RFC 8725 §3.10, RFC 7515 §4.1).

Each test goes through a real Starlette app guarded by TokenGuard and asserts the exact status,
``error`` code and reason; attacker URLs are mocked with respx so any request to them would show.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from attack_kit import ATTACKER, assert_ok, assert_refused, attack_target, attacker_certificate, header, signed
from jwt.algorithms import RSAAlgorithm

from conftest import Issuer, private_key
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

KEY_HEADERS: dict[str, Callable[[], dict[str, Any]]] = {
    "jku": lambda: {"jku": f"{ATTACKER}/jwks.json"},
    "x5u": lambda: {"x5u": f"{ATTACKER}/cert.pem"},
    "x5c": lambda: {"x5c": [attacker_certificate()]},
    "jwk": lambda: {
        "jwk": {**json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 1).public_key())), "kid": "attacker-1"}
    },
    "all-four": lambda: {
        "jku": f"{ATTACKER}/jwks.json",
        "x5u": f"{ATTACKER}/cert.pem",
        "x5c": [attacker_certificate()],
        "jwk": json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 1).public_key())),
    },
}


def serve_attacker(router: respx.MockRouter) -> list[respx.Route]:
    """The attacker's key server, which would happily serve its key: it must never be asked."""
    attacker_jwks = {
        "keys": [{**json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 1).public_key())), "kid": "attacker-1"}]
    }
    return [
        router.get(f"{ATTACKER}/jwks.json").mock(return_value=httpx.Response(200, json=attacker_jwks)),
        router.get(f"{ATTACKER}/cert.pem").mock(return_value=httpx.Response(200, text="-----BEGIN CERTIFICATE-----")),
    ]


@pytest.mark.parametrize("member", sorted(KEY_HEADERS))
@pytest.mark.parametrize(
    ("kid", "why"),
    [("attacker-1", "unknown_kid"), ("rsa-1", "bad_signature"), (None, "bad_signature")],
    ids=["attacker-kid", "issuer-kid", "no-kid"],
)
def test_key_url_and_embedded_key_headers_are_never_followed(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter, member: str, kid: str | None, why: str
) -> None:
    """RFC 8725 §3.10: jku/x5u/x5c/jwk naming the attacker's key are ignored: no request to it, 401."""
    attacker_routes = serve_attacker(respx_mock)
    token = idp.token(kid, alg="RS256", key=private_key("rsa", 1), headers=KEY_HEADERS[member]())
    with attack_target(clock) as target:
        assert_refused(target, target.get(token), 401, "invalid_token", why)
        assert_ok(target, target.get(idp.token()))
    assert all(not route.called for route in attacker_routes)
    assert {call.request.url.host for call in respx_mock.calls} == {"idp.example.com"}


HOSTILE_KIDS = {
    "path-traversal": "../../../../../../etc/passwd",
    "absolute-path": "/dev/null",
    "windows-path": "..\\..\\..\\windows\\win.ini",
    "encoded-traversal": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "file-url": "file:///etc/passwd",
    "sql-or": "' OR '1'='1",
    "sql-union": "x' UNION SELECT 'secret' AS key --",
    "sql-stacked": "rsa-1'; DROP TABLE keys; --",
    "nul-byte": "rsa-1\x00",
    "trailing-space": "rsa-1 ",
    "other-case": "RSA-1",
    "unicode-homoglyph": "r\u0455a-1",  # Cyrillic dze for "s"
    "unicode-rtl-override": "\u202e1-asr",
    "emoji": "🔑",
    "huge": "k" * 8000,
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_KIDS))
def test_hostile_kid_names_no_key(idp: Issuer, clock: ManualClock, name: str) -> None:
    """RFC 8725 §3.10: a kid is a lookup key, never a path or query; hostile kids find no key (401, one refetch)."""
    token = signed(idp, header(kid=HOSTILE_KIDS[name]), idp.claims())
    with attack_target(clock) as target:
        assert_ok(target, target.get(idp.token()))
        for _ in range(3):
            assert_refused(target, target.get(token), 401, "invalid_token", "unknown_kid")
    # One fetch, then at most one refetch per cool-down however often the hostile kid is sent.
    assert idp.jwks_calls == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["urn:example:unknown"], "urn:example:unknown": True},
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": False},
        {"crit": ["b64"], "b64": True},
        {"crit": []},
        {"crit": "urn:example:unknown"},
        {"crit": None},
    ],
    ids=["unknown-extension", "registered-name", "b64-false", "b64-true", "empty-list", "not-a-list", "null"],
)
def test_unknown_crit_is_refused(idp: Issuer, clock: ManualClock, extra: dict[str, Any]) -> None:
    """RFC 7515 §4.1.11 (RFC 8725 §3.10 class): any "crit" names an extension we do not understand: 401."""
    head = {**header(), **extra}
    with attack_target(clock) as target:
        assert_refused(target, target.get(signed(idp, head, idp.claims())), 401, "invalid_token", "crit")
        assert_ok(target, target.get(idp.token()))
