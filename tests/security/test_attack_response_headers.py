"""Response-splitting and challenge-injection attacks on ``WWW-Authenticate`` (RFC 6750 §3, RFC 9110 §5.5,
§11.6.1): quotes, backslashes and CR/LF in the realm, in token contents and in the Authorization value.

Every check reads the raw ASGI header list the guard sent, so a CR/LF would show before any HTTP
client could normalise it away.
"""

from __future__ import annotations

import pytest
from attack_kit import WHY, Target, assert_refused, attack_target, challenge_params, core_params, header, signed

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import TokenGuard
from tokenguard.errors import ConfigurationError
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

INJECTED = ["Set-Cookie", "X-Injected", "session=evil"]


def one_line_challenge(target: Target) -> str:
    """The single WWW-Authenticate value as sent: one line, well-formed parameters only, no extra headers."""
    raw = target.recorder.raw_headers()
    names = [name.lower() for name, _ in raw]
    assert names.count(b"www-authenticate") == 1
    assert b"set-cookie" not in names
    assert b"x-injected" not in names
    value = next(value for name, value in raw if name.lower() == b"www-authenticate")
    assert b"\r" not in value
    assert b"\n" not in value
    # RFC 9110 §5.6.4 quoted-strings restricted as RFC 6750 §3 requires: no '"' or '\\', printable ASCII.
    text = value.decode("ascii")
    # Two challenges in the field (RFC 9449 §7.2): Bearer, then DPoP (accepted by default); both parse.
    bearer, dpop = text.split(", DPoP ", 1)
    challenge_params(bearer)
    challenge_params("DPoP " + dpop)
    return bearer


@pytest.mark.parametrize(
    "realm",
    ["api\r\nSet-Cookie: session=evil", "api\nX-Injected: 1", "api\\", "a\x00b\x7f", "\u0430pi-\u2028ünïcode"],
    ids=["crlf-set-cookie", "lf", "backslash", "nul-del", "non-ascii"],
)
def test_realm_that_could_split_the_challenge_is_refused_at_construction(realm: str) -> None:
    """RFC 6750 §3 / RFC 9110 §5.5 (response splitting): CR/LF, '\\', controls, non-ASCII in a realm are refused.

    Refused when the guard is built, rather than silently stripped, so the realm on the wire is always
    the one configured.
    """
    with pytest.raises(ConfigurationError, match="realm"):
        TokenGuard(lambda scope, receive, send: None, issuer=ISSUER, audience=AUDIENCE, realm=realm)


@pytest.mark.parametrize("realm", ['api", error="none', 'a"b', '"'])
def test_realm_with_a_quote_is_refused_at_construction(realm: str) -> None:
    """RFC 6750 §3 (quoted-string): a realm that could close its quotes and add parameters is a configuration error."""
    with pytest.raises(ConfigurationError, match="realm"):
        TokenGuard(lambda scope, receive, send: None, issuer=ISSUER, audience=AUDIENCE, realm=realm)


HOSTILE = 'x", error="none", error_description="ok\r\nSet-Cookie: session=evil\r\n\r\n<script>\\'


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("kid", "unknown_kid"),
        ("typ", "bad_typ"),
        ("alg", "disallowed_alg"),
        ("iss", "wrong_issuer"),
        ("aud", "wrong_audience"),
        ("sub", None),
        ("scope", None),
    ],
)
def test_token_contents_never_reach_the_challenge(idp: Issuer, clock: ManualClock, where: str, why: str | None) -> None:
    """RFC 6750 §3 (challenge injection): quotes, '\\' and CR/LF in token members are never copied into the header."""
    head, claims = header(), idp.claims()
    if where in head:
        head[where] = HOSTILE
    else:
        claims[where] = HOSTILE
    with attack_target(clock) as target:
        response = target.get(signed(idp, head, claims), path="/admin")
        challenge = one_line_challenge(target)
        for text in (challenge, response.text):
            assert "Set-Cookie" not in text
            assert "<script>" not in text
        if why is not None:
            assert_refused(target, response, 401, "invalid_token", why)
        else:
            # A valid token reaching the scope check: the challenge names what the route needs, nothing granted.
            assert response.status_code == 403
            assert core_params(challenge) == {
                "realm": AUDIENCE,
                "error": "insufficient_scope",
                "error_description": "The access token does not grant the scope this resource requires.",
                "scope": "admin",
            }


@pytest.mark.parametrize(
    "value",
    [
        'Bearer abc"def',
        "Bearer abc\\def",
        "Bearer abc\r\nSet-Cookie: session=evil",
        "Bearer abc\nX-Injected: 1",
        'Bearer realm="evil", error="none"',
    ],
    ids=["quote", "backslash", "crlf", "lf", "fake-params"],
)
def test_authorization_value_with_injection_is_invalid_request(clock: ManualClock, value: str) -> None:
    """RFC 6750 §2.1 (b64token) / §3.1: quotes and CR/LF in the credentials are a 400 with a one-line challenge."""
    with attack_target(clock) as target:
        response = target.get(authorization=value)
        assert_refused(target, response, 400, "invalid_request", "malformed_header")
        assert core_params(one_line_challenge(target)) == {
            "realm": AUDIENCE,
            "error": "invalid_request",
            "error_description": WHY["malformed_header"],
        }
        assert "evil" not in response.text
