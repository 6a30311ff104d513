"""Bearer token extraction from the Authorization header (RFC 6750 §2.1, §3.1)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenguard.challenge import render
from tokenguard.errors import InvalidRequest, InvalidToken, MissingToken
from tokenguard.extract import authorization_values, bearer_from, parse_authorization


def extract_bearer(headers: Any, max_bytes: int) -> str:
    """The bearer token of an ASGI header list, as the guard's pipeline reads it."""
    return bearer_from(authorization_values(headers), max_bytes)


MAX = 64
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def auth(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"api.example.com"), (b"authorization", value), (b"accept", b"*/*")]


@pytest.mark.parametrize(
    "headers",
    [[], [(b"host", b"api.example.com")], [(b"x-authorization", b"Bearer abc")], [(b"cookie", b"token=abc")]],
    ids=["none", "other-headers", "x-authorization", "cookie"],
)
def test_no_authorization_header_is_missing_token(headers: list[tuple[bytes, bytes]]) -> None:
    """No Authorization header: 401 with a bare challenge (MissingToken), never invalid_request."""
    with pytest.raises(MissingToken) as info:
        extract_bearer(headers, MAX)
    assert info.value.status_code == 401
    assert info.value.error_code is None


@pytest.mark.parametrize(
    "value",
    [
        b"Basic dXNlcjpwYXNz",
        b'Digest username="alice", realm="api", nonce="abc"',
        b"Bearerx abc",
        b"Bearer-abc",
        b"Bear abc",
        b"Token abc",
        b"DPoP abc",
        b"Negotiate YIIB",
        b"abc",
        b"Basic",
        b"Basic\tabc",
        b"",
        b"   ",
    ],
    ids=repr,
)
def test_other_scheme_is_missing_token(value: bytes) -> None:
    """Another scheme (or no scheme) carries no bearer token: MissingToken, bare challenge (RFC 6750 §3.1)."""
    with pytest.raises(MissingToken):
        extract_bearer(auth(value), MAX)


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"BeArEr", b"bEARER"])
def test_scheme_is_case_insensitive(scheme: bytes) -> None:
    """The auth-scheme is case-insensitive (RFC 9110 §11.1)."""
    assert extract_bearer(auth(scheme + b" " + TOKEN.encode()), MAX * 2) == TOKEN


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer",
        b"bearer",
        b"Bearer ",
        b"Bearer    ",
        b"Bearer\t",
        b"Bearer  abc",
        b"Bearer\tabc",
        b"Bearer \tabc",
        b"Bearer abc def",
        b"Bearer abc\tdef",
        b"Bearer abc,def",
        b"Bearer abc, Bearer def",
        b'Bearer "abc"',
        b"Bearer abc\x00",
        b"Bearer ab\x01c",
        b"Bearer ab\x7fc",
        b"Bearer abc\r\nX-Injected: 1",
        b"Bearer abc\ndef",
        b"Bearer \xc3\xa9t\xc3\xa9",
        b"Bearer abc\xff",
        b"Bearer =abc",
        b"Bearer ==",
        b"Bearer abc=def",
        b"Bearer abc==x",
        b"Bearer abc;def",
        b"Bearer abc?def",
        b"Bearer access_token=abc",
    ],
    ids=repr,
)
def test_malformed_bearer_value_is_invalid_request(value: bytes) -> None:
    """An empty or malformed bearer value is 400 invalid_request (RFC 6750 §3.1)."""
    with pytest.raises(InvalidRequest) as info:
        extract_bearer(auth(value), MAX)
    assert info.value.status_code == 400
    assert info.value.error_code == "invalid_request"
    assert info.value.reason == "malformed_header"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")],
        [(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer def")],
        [(b"authorization", b"Bearer abc"), (b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"authorization", b"Basic dXNlcjpwYXNz"), (b"authorization", b"Bearer abc")],
        [(b"Authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")],
        [(b"authorization", b""), (b"authorization", b"Bearer abc")],
    ],
    ids=["same-twice", "two-tokens", "bearer-basic", "basic-bearer", "name-case", "empty-then-bearer"],
)
def test_several_authorization_headers_are_invalid_request(headers: list[tuple[bytes, bytes]]) -> None:
    """More than one Authorization header is 400 invalid_request, whatever the schemes."""
    with pytest.raises(InvalidRequest) as info:
        extract_bearer(headers, MAX)
    assert info.value.description == "More than one Authorization header was sent."


def test_header_name_is_case_insensitive() -> None:
    """A non-lowercased header name (not ASGI-normalised) is still the Authorization header."""
    assert extract_bearer([(b"AUTHORIZATION", b"Bearer abc")], MAX) == "abc"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "A",
        "0",
        "a-b.c_d~e+f/g",
        "abc=",
        "abc==",
        "abc===",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/",
        TOKEN,
        "2YotnFZFEjr1zCsicMWpAA",
        "...",
        "~~~",
    ],
)
def test_b64token_charset_is_accepted(token: str) -> None:
    """Every b64token character, and trailing '=' padding, is accepted and returned unchanged."""
    assert extract_bearer(auth(b"Bearer " + token.encode()), 128) == token


def test_returns_str() -> None:
    """The token comes back as a str, ready for validation."""
    assert isinstance(extract_bearer(auth(b"Bearer abc"), MAX), str)


@pytest.mark.parametrize("value", [b"  Bearer abc", b"Bearer abc  ", b"\tBearer abc\t", b" Bearer abc "])
def test_surrounding_whitespace_is_ignored(value: bytes) -> None:
    """Leading and trailing OWS around the field value is not part of it (RFC 9110 §5.5)."""
    assert extract_bearer(auth(value), MAX) == "abc"


def test_token_at_the_size_cap_is_accepted() -> None:
    """A token exactly max_bytes long is accepted."""
    token = "a" * MAX
    assert extract_bearer(auth(b"Bearer " + token.encode()), MAX) == token


@pytest.mark.parametrize("size", [MAX + 1, MAX * 10, 100_000])
def test_token_over_the_size_cap_is_token_too_large(size: int) -> None:
    """A token over max_bytes is 401 invalid_token, reason token_too_large, before any parsing."""
    with pytest.raises(InvalidToken) as info:
        extract_bearer(auth(b"Bearer " + b"a" * size), MAX)
    assert info.value.reason == "token_too_large"
    assert info.value.status_code == 401


def test_oversized_garbage_is_refused_by_size_first() -> None:
    """An oversized value with bad characters is refused as too large: the cap comes before parsing."""
    with pytest.raises(InvalidToken) as info:
        extract_bearer(auth(b"Bearer " + b"\xff" * (MAX + 1)), MAX)
    assert info.value.reason == "token_too_large"


def test_parse_authorization_directly() -> None:
    """parse_authorization handles one field value with the same rules."""
    assert parse_authorization(b"bearer xyz", MAX) == "xyz"
    with pytest.raises(MissingToken):
        parse_authorization(b"Basic xyz", MAX)
    with pytest.raises(InvalidRequest):
        parse_authorization(b"Bearer x y", MAX)


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer " + b"s3cr3t-t0ken" * 10,
        b"Bearer s3cr3t-t0ken s3cr3t-t0ken",
        b"Bearer s3cr3t-t0ken\x00",
        b"Bearer  s3cr3t-t0ken",
    ],
    ids=["too-large", "two-words", "control-byte", "two-spaces"],
)
def test_refusals_never_echo_the_header_value(value: bytes) -> None:
    """Neither the message, the repr nor the rendered response contains the presented credentials."""
    with pytest.raises((InvalidRequest, InvalidToken)) as info:
        extract_bearer(auth(value), MAX)
    denial = render(info.value, realm="api")
    for text in (str(info.value), repr(info.value), denial.body.decode(), repr(denial.headers)):
        assert "s3cr3t" not in text
