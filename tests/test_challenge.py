"""The WWW-Authenticate wire format and the error bodies (RFC 6750 §3, RFC 9470 §3, RFC 9728 §5.1)."""

from __future__ import annotations

import json

import pytest

from tokenguard.challenge import Denial, challenge, render
from tokenguard.errors import (
    ConfigurationError,
    InsufficientScope,
    InsufficientUserAuthentication,
    IntrospectionUnavailable,
    InvalidRequest,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    TokenGuardError,
)

REALM = "https://api.example.com"


def headers_of(denial: Denial) -> dict[str, str]:
    names = [name for name, _ in denial.headers]
    assert len(names) == len(set(names)), "no header is sent twice"
    return {name.decode("ascii"): value.decode("ascii") for name, value in denial.headers}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MissingToken(), 'Bearer realm="https://api.example.com"'),
        (
            InvalidRequest(),
            'Bearer realm="https://api.example.com", error="invalid_request", '
            'error_description="The Authorization header is malformed."',
        ),
        (
            InvalidRequest(description="More than one Authorization header was sent."),
            'Bearer realm="https://api.example.com", error="invalid_request", '
            'error_description="More than one Authorization header was sent."',
        ),
        (
            InvalidToken(),
            'Bearer realm="https://api.example.com", error="invalid_token", '
            'error_description="The access token is invalid."',
        ),
        (
            InvalidToken("expired", "The access token has expired."),
            'Bearer realm="https://api.example.com", error="invalid_token", '
            'error_description="The access token has expired."',
        ),
        (
            InsufficientScope(["write:photos", "read:photos"]),
            'Bearer realm="https://api.example.com", error="insufficient_scope", '
            'error_description="The access token does not grant the scope this resource requires.", '
            'scope="read:photos write:photos"',
        ),
        (
            InsufficientUserAuthentication(acr_values=["urn:acr:mfa", "urn:acr:hw"], max_age=300),
            'Bearer realm="https://api.example.com", error="insufficient_user_authentication", '
            'error_description="A stronger or more recent authentication is required.", '
            'acr_values="urn:acr:mfa urn:acr:hw", max_age="300"',
        ),
        (
            InsufficientUserAuthentication(max_age=0),
            'Bearer realm="https://api.example.com", error="insufficient_user_authentication", '
            'error_description="A stronger or more recent authentication is required.", max_age="0"',
        ),
        (
            InsufficientUserAuthentication(acr_values=["urn:acr:mfa"]),
            'Bearer realm="https://api.example.com", error="insufficient_user_authentication", '
            'error_description="A stronger or more recent authentication is required.", acr_values="urn:acr:mfa"',
        ),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else None,
)
def test_exact_challenge(error: InvalidToken, expected: str) -> None:
    """Each refusal renders exactly this WWW-Authenticate value."""
    assert challenge(error, realm=REALM) == expected
    assert headers_of(render(error, realm=REALM))["www-authenticate"] == expected


def test_missing_token_challenge_has_no_error_attribute() -> None:
    """RFC 6750 §3.1: a request without a token gets no error code, only the realm."""
    value = challenge(MissingToken(), realm="photos")
    assert value == 'Bearer realm="photos"'
    assert "error" not in value


def test_resource_metadata_attribute() -> None:
    """RFC 9728 §5.1: resource_metadata is appended when configured, also on the bare challenge."""
    url = "https://api.example.com/.well-known/oauth-protected-resource"
    assert challenge(MissingToken(), realm="api", resource_metadata=url) == (
        f'Bearer realm="api", resource_metadata="{url}"'
    )
    assert challenge(InsufficientScope(["a"]), realm="api", resource_metadata=url).endswith(
        f'scope="a", resource_metadata="{url}"'
    )


def test_insufficient_scope_lists_scopes_sorted() -> None:
    """The scope attribute lists the required scopes sorted and space-separated."""
    assert challenge(InsufficientScope(["b", "a"]), realm="r").endswith('scope="a b"')


def test_insufficient_scope_without_scopes_has_no_scope_attribute() -> None:
    """An InsufficientScope naming no scope carries no empty scope attribute, nor an empty body field."""
    error = InsufficientScope([])
    assert "scope=" not in challenge(error, realm="r")
    assert "scope" not in json.loads(render(error, realm="r").body)


@pytest.mark.parametrize(
    "dirty",
    [
        "bad\r\nSet-Cookie: session=stolen",
        'quote" , error="forged',
        "back\\slash",
        "nul\x00byte",
        "tab\there",
        "unicode \u2028 line separator é",
        "\x7fdelete",
    ],
)
def test_unsafe_characters_are_stripped_from_description(dirty: str) -> None:
    """CR, LF, quotes, backslashes, controls and non-ASCII never reach the header: no injection."""
    error = InvalidToken("bad_claim", dirty)
    value = challenge(error, realm=REALM)
    description = value.split('error_description="', 1)[1]
    assert description.count('"') == 1
    assert description.endswith('"')
    for char in '\r\n"\\\x00\t\u2028é\x7f':
        assert char not in description[:-1]
    assert value.count('"') == 6  # realm, error, error_description: three quoted values
    value.encode("ascii")
    # The header is built from what is left; the JSON body keeps the description, safely escaped.
    denial = render(error, realm=REALM)
    assert json.loads(denial.body)["error_description"] == dirty


@pytest.mark.parametrize("realm", ['api"\r\nX-Injected: 1', "api\\", "ré\nalm"])
def test_unsafe_characters_are_stripped_from_realm(realm: str) -> None:
    """The realm cannot break out of its quoted-string either."""
    value = challenge(MissingToken(), realm=realm)
    assert value.startswith('Bearer realm="')
    assert value.endswith('"')
    inner = value[len('Bearer realm="') : -1]
    assert not set(inner) & set('"\\\r\n')
    assert inner.isascii()
    for name, header in render(MissingToken(), realm=realm).headers:
        assert b"\r" not in header, name
        assert b"\n" not in header, name


def test_unsafe_scope_and_acr_values_are_stripped() -> None:
    """Scope and acr_values come from code, yet they are sanitised like every other value."""
    value = challenge(InsufficientScope(['a"b', "c\r\nd"]), realm="r")
    assert value.endswith('scope="ab cd"')
    value = challenge(InsufficientUserAuthentication(acr_values=['x"\ny']), realm="r")
    assert value.endswith('acr_values="xy"')


@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (MissingToken(), 401, {"error_description": "A bearer access token is required."}),
        (
            InvalidRequest(),
            400,
            {"error": "invalid_request", "error_description": "The Authorization header is malformed."},
        ),
        (
            InvalidToken("expired", "The access token has expired."),
            401,
            {"error": "invalid_token", "error_description": "The access token has expired."},
        ),
        (
            InsufficientScope(["b", "a"]),
            403,
            {
                "error": "insufficient_scope",
                "error_description": "The access token does not grant the scope this resource requires.",
                "scope": "a b",
            },
        ),
        (
            InsufficientUserAuthentication(max_age=10),
            401,
            {
                "error": "insufficient_user_authentication",
                "error_description": "A stronger or more recent authentication is required.",
            },
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, TokenGuardError) else None,
)
def test_auth_error_response(error: InvalidToken, status: int, body: dict[str, str]) -> None:
    """A refusal renders its status, a JSON body, no-store caching and a challenge."""
    denial = render(error, realm=REALM)
    headers = headers_of(denial)
    assert denial.status == status
    assert json.loads(denial.body) == body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(denial.body))
    assert headers["www-authenticate"].startswith(f'Bearer realm="{REALM}"')
    assert "retry-after" not in headers
    assert denial.error_code == error.error_code
    assert denial.reason == error.reason


@pytest.mark.parametrize(
    ("error", "retry_after", "reason"),
    [
        (KeysUnavailable("GET https://idp.example.com/jwks answered 500", retry_after=7), "7", "issuer_unavailable"),
        (IntrospectionUnavailable("breaker open", retry_after=30), "30", "introspection_unavailable"),
        (KeysUnavailable("x", retry_after=0), "1", "issuer_unavailable"),
    ],
)
def test_unavailable_is_503_with_retry_after_and_no_challenge(
    error: KeysUnavailable, retry_after: str, reason: str
) -> None:
    """Could-not-check is a 503 with Retry-After (at least 1 s), no WWW-Authenticate and no cause."""
    denial = render(error, realm=REALM)
    headers = headers_of(denial)
    assert denial.status == 503
    assert headers["retry-after"] == retry_after
    assert "www-authenticate" not in headers
    assert headers["cache-control"] == "no-store"
    body = json.loads(denial.body)
    assert body == {
        "error": "temporarily_unavailable",
        "error_description": "The access token could not be checked right now; retry later.",
    }
    assert error.cause not in denial.body.decode()
    assert (denial.error_code, denial.reason) == ("temporarily_unavailable", reason)


def test_other_errors_are_a_500_without_details() -> None:
    """Anything else tokenguard raises is a bare 500 server_error: no message reaches the client."""
    denial = render(ConfigurationError("issuer must be https, got 'http://secret-host'"), realm=REALM)
    headers = headers_of(denial)
    assert denial.status == 500
    assert json.loads(denial.body) == {
        "error": "server_error",
        "error_description": "The request could not be authorized.",
    }
    assert "www-authenticate" not in headers
    assert b"secret-host" not in denial.body


def test_body_is_compact_json() -> None:
    """The body is compact UTF-8 JSON (no spaces after separators)."""
    denial = render(InvalidToken(), realm=REALM)
    assert denial.body == b'{"error":"invalid_token","error_description":"The access token is invalid."}'
