"""Substitution attacks: a real JWT of another kind, for another audience, from another issuer, expired,
or encrypted, presented as this API's access token (RFC 8725 §2.3, §2.7, §2.8, §3.8, §3.9, §3.11; RFC 9068 §4).

Each test goes through a real Starlette app guarded by TokenGuard and asserts the exact status,
``error`` code and reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from attack_kit import assert_ok, assert_refused, attack_target, core_params, header, segment, sign_segments, signed

from conftest import AUDIENCE, ISSUER, Issuer, b64url, private_key
from tokenguard._claims import issuer_difference
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

CLIENT_ID = "photos-app"


@pytest.mark.parametrize(
    "typ",
    ["dpop+jwt", "application/dpop+jwt", "secevent+jwt", "logout+jwt", "application/logout+jwt", "JOSE", "jwt+at", ""],
)
def test_jwt_of_another_kind_is_refused_by_typ(idp: Issuer, clock: ManualClock, typ: str) -> None:
    """RFC 8725 §3.11 / RFC 9068 §4 (cross-JWT confusion): a DPoP proof, SET or logout token is not an access token."""
    token = signed(idp, header(typ=typ), idp.claims())  # PyJWT would drop an empty typ: build the header as is
    with attack_target(clock) as target:
        assert_refused(target, target.get(token), 401, "invalid_token", "bad_typ")
        assert_ok(target, target.get(idp.token()))


def _at_hash(access_token: str) -> str:
    """OpenID Connect Core §3.1.3.6: left half of the SHA-256 of the access token, base64url."""
    return b64url(hashlib.sha256(access_token.encode()).digest()[:16])


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict-rfc9068"])
def test_id_token_presented_as_an_access_token_is_refused(idp: Issuer, clock: ManualClock, strict: bool) -> None:
    """RFC 8725 §2.7, §2.8 / RFC 9068 §4 (substitution): an OpenID ID token (typ JWT, aud = client id) is refused."""
    access_token = idp.token()
    id_token = idp.token(
        headers={"typ": "JWT"},
        aud=CLIENT_ID,
        azp=CLIENT_ID,
        nonce="n-0S6_WzA2Mj",
        at_hash=_at_hash(access_token),
        auth_time=int(clock()) - 60,
        scope=None,
        client_id=None,
    )
    # Default: typ "JWT" is allowed (README, "What is checked"), so the audience refuses it; strict mode refuses typ.
    why = "bad_typ" if strict else "wrong_audience"
    with attack_target(clock, strict_rfc9068=strict) as target:
        assert_refused(target, target.get(id_token, path="/me"), 401, "invalid_token", why)
        assert_ok(target, target.get(access_token, path="/me"))


@pytest.mark.parametrize(
    "aud",
    [
        "https://other-api.example.com",
        ["https://other-api.example.com", CLIENT_ID],
        AUDIENCE + "/",
        AUDIENCE + "/v2",
        AUDIENCE + ":8443",
        AUDIENCE.replace("https://", "http://"),
        AUDIENCE + ".evil.example",
        [],
        "",
    ],
    ids=repr,
)
def test_token_for_another_audience_from_the_same_issuer_is_refused(idp: Issuer, clock: ManualClock, aud: Any) -> None:
    """RFC 8725 §3.9 / RFC 7519 §4.1.3: the issuer's genuine token for another API is refused (no prefix/case games)."""
    with attack_target(clock) as target:
        assert_refused(target, target.get(idp.token(aud=aud)), 401, "invalid_token", "wrong_audience")


@pytest.mark.parametrize("aud", [AUDIENCE.upper(), AUDIENCE.replace("example.com", "EXAMPLE.com") + ":443"], ids=repr)
def test_another_spelling_of_the_same_resource_uri_is_this_audience(idp: Issuer, clock: ManualClock, aud: str) -> None:
    """RFC 3986 §6.2.2.1/§6.2.3 and MCP's canonical server URI: scheme and host case, the default port.

    The one widening of the exact comparison; paths, other ports and other schemes stay refused (above).
    """
    with attack_target(clock) as target:
        assert_ok(target, target.get(idp.token(aud=aud)))


@pytest.mark.parametrize(
    ("iss", "key_slot", "why"),
    [
        ("https://evil.example.com", 1, "wrong_issuer"),
        (ISSUER, 1, "bad_signature"),
        ("https://evil.example.com", 0, "wrong_issuer"),
        (ISSUER + "/", 0, "wrong_issuer"),
        ("https://IDP.example.com", 0, "wrong_issuer"),
        (ISSUER + ":443", 0, "wrong_issuer"),
        (ISSUER + ".evil.example", 0, "wrong_issuer"),
    ],
    ids=[
        "other-issuer-same-kid-other-key",
        "right-issuer-same-kid-other-key",
        "same-key-wrong-iss",
        "trailing-slash",
        "host-case",
        "explicit-port",
        "suffix",
    ],
)
def test_token_from_another_issuer_is_refused(
    idp: Issuer, clock: ManualClock, iss: str, key_slot: int, why: str
) -> None:
    """RFC 8725 §3.8 (issuer confusion): another issuer's token under our kid, or our key with a foreign iss: 401."""
    token = idp.token("rsa-1", key=private_key("rsa", key_slot), iss=iss)
    with attack_target(clock) as target:
        assert_refused(target, target.get(token), 401, "invalid_token", why)
        if why == "wrong_issuer":
            if issuer_difference(iss, ISSUER) is None:
                assert idp.jwks_calls == 0  # refused before any key lookup: a foreign token costs no fetch
            else:
                # A near miss of our issuer (a trailing '/', letter case) warms the keys once in the
                # background, so the guard can tell the operator whether the issuer signed it; more
                # such tokens cost nothing more.
                for _ in range(5):
                    assert_refused(target, target.get(token), 401, "invalid_token", why)
                assert idp.jwks_calls <= 1
        assert_ok(target, target.get(idp.token()))


def test_expired_token_with_a_future_nbf_is_refused(idp: Issuer, clock: ManualClock) -> None:
    """RFC 7519 §4.1.4/§4.1.5 (RFC 8725 §3.3): an expired token, re-dated or re-signed with a future nbf, is refused."""
    original = idp.token()
    clock.advance(3600)  # the token expired 55 minutes ago
    now = int(clock())
    head, _, signature = original.split(".")
    claims = json.loads(base64.urlsafe_b64decode(original.split(".")[1] + "=="))
    with attack_target(clock) as target:
        assert_refused(target, target.get(original), 401, "invalid_token", "expired")
        # Signed by the issuer with exp in the past and nbf in the future: expired whatever nbf says.
        reissued = idp.token(exp=now - 60, nbf=now + 600, iat=now - 3600)
        assert_refused(target, target.get(reissued), 401, "invalid_token", "expired")
        # The attacker re-dates the payload but cannot re-sign it: nbf beyond leeway, then within leeway.
        redated = segment({**claims, "exp": now + 300, "nbf": now + 600})
        assert_refused(target, target.get(f"{head}.{redated}.{signature}"), 401, "invalid_token", "not_yet_valid")
        redated = segment({**claims, "exp": now + 300, "nbf": now + 10})
        assert_refused(target, target.get(f"{head}.{redated}.{signature}"), 401, "invalid_token", "bad_signature")
        # Re-signed with the attacker's own key under the issuer's kid.
        forged = idp.token("rsa-1", key=private_key("rsa", 1), exp=now + 300, nbf=now + 10)
        assert_refused(target, target.get(forged), 401, "invalid_token", "bad_signature")
        assert_ok(target, target.get(idp.token()))


@pytest.mark.parametrize(
    "jose_header",
    [
        {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "rsa-1"},
        {"alg": "dir", "enc": "A128CBC-HS256"},
        {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"},
        {"alg": "none"},
    ],
    ids=["jwe-rsa-oaep", "jwe-dir", "jws-header", "none-header"],
)
@pytest.mark.parametrize("shape", ["{h}.a2V5.aXY.Y2lwaGVydGV4dA.dGFn", "{h}..aXY.Y2lwaGVydGV4dA.dGFn", "{h}.a.b.c.d.e"])
def test_jwe_shaped_token_is_refused(idp: Issuer, clock: ManualClock, jose_header: dict[str, Any], shape: str) -> None:
    """RFC 8725 §2.3 (encryption without signature): a 5-part (JWE) or other multi-part JOSE object is refused."""
    token = shape.format(h=segment(jose_header))
    with attack_target(clock) as target:
        assert_refused(target, target.get(token), 401, "invalid_token", "unsupported_token")
        assert idp.jwks_calls == 0


def test_scope_escalation_in_a_forged_token_is_401_not_403(idp: Issuer, clock: ManualClock) -> None:
    """RFC 8725 §3.3 (validate before use): a forged token claiming "admin" is 401; scopes of a valid token give 403."""
    forged = sign_segments(segment(header()), segment(idp.claims(scope="admin")), private_key("rsa", 1), "RS256")
    with attack_target(clock) as target:
        assert_refused(target, target.get(forged, path="/admin"), 401, "invalid_token", "bad_signature")
        response = target.get(signed(idp, header(), idp.claims(scope="read:photos")), path="/admin")
        assert_refused(target, response, 403, "insufficient_scope", "insufficient_scope")
        assert core_params(response.headers["www-authenticate"])["scope"] == "admin"
