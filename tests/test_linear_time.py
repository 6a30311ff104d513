"""No super-linear work on attacker input: every parser and filter that sees request data, timed.

Each family feeds adversarial inputs up to the size caps (16 KiB tokens, ``max_token_bytes``; 64 KiB
bodies, ``max_body_bytes``; 64 KiB log lines, ``redaction.MAX_REDACTED_CHARS``) and asserts RATIOS only,
never absolute times:

- adversarial / benign input of the same size stays under ``RATIO`` (the historical attacks were 100 to
  1000 times slower than a benign input);
- the adversarial input at 4n / the same at n stays under ``GROWTH`` (linear work gives about 4,
  quadratic 16).

Made for a noisy 2-core machine: each time is the minimum over ``REPEATS`` batches of at least
``BATCH_SECONDS`` of work, the two inputs are measured alternately, and a ratio over its limit is
measured again (``ATTEMPTS``) before the test fails. Every case checks its outcome once before timing,
so a fast failure (a wrong exception, say) can never pass for fast parsing.

The exact historical attacks are here: a 15.8 KB forged token whose payload is a JSON string of escaped
quotes that never closes (250 ms to refuse, no key needed), and "eyeyey..." in a 15 KB request path
logged through uvicorn's access log (a concurrent request went from 17 ms to 900 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import string
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any, TypeVar

import pytest

from conftest import AUDIENCE, ISSUER, b64url
from tokenguard import redaction
from tokenguard._details import parse_json_body
from tokenguard._jose import classify, parse_jws
from tokenguard._strictjson import _canonical_object, _too_deep, strict_decoder, strict_loads
from tokenguard.authenticator import Authenticator
from tokenguard.challenge import render
from tokenguard.config import GuardConfig
from tokenguard.errors import AuthError, InvalidRequest, InvalidToken, MissingToken
from tokenguard.extract import (
    authorization_values,
    bearer_from,
    cached_candidate,
    host_and_authorization,
    parse_authorization,
)
from tokenguard.jwt_validator import bytes_digest
from tokenguard.policy import AUTHENTICATED
from tokenguard.redaction import REDACTED, TokenRedactingFilter, redact


def extract_bearer(headers: Any, max_bytes: int) -> str:
    """The bearer token of an ASGI header list, as the guard's pipeline reads it."""
    return bearer_from(authorization_values(headers), max_bytes)


T = TypeVar("T")

RATIO = 8.0
GROWTH = 8.0
REPEATS = 5
BATCH_SECONDS = 0.002
ATTEMPTS = 3

MAX_TOKEN_BYTES = 16 * 1024  # the middleware's default max_token_bytes
MAX_BODY_BYTES = 64 * 1024  # the middleware's default max_body_bytes
LOG_LINE = 64 * 1024  # redaction.MAX_REDACTED_CHARS: longer strings are cut before redaction


# -- measuring ----------------------------------------------------------------------------------------------


def _batch(func: Callable[[T], object], arg: T, number: int) -> float:
    start = perf_counter()
    for _ in range(number):
        func(arg)
    return perf_counter() - start


def _calibrated(func: Callable[[T], object], arg: T) -> int:
    """How many calls make a batch of at least ``BATCH_SECONDS``."""
    number = 1
    while (elapsed := _batch(func, arg, number)) < BATCH_SECONDS:
        number = max(number * 2, int(number * BATCH_SECONDS / max(elapsed, 1e-7) * 1.2))
    return number


def _per_call(func: Callable[[T], object], first: T, second: T) -> tuple[float, float]:
    """Seconds per call of ``func(first)`` and ``func(second)``: minimum of interleaved batches."""
    numbers = _calibrated(func, first), _calibrated(func, second)
    best = [float("inf"), float("inf")]
    for _ in range(REPEATS):
        for index, (arg, number) in enumerate(zip((first, second), numbers, strict=True)):
            best[index] = min(best[index], _batch(func, arg, number) / number)
    return best[0], best[1]


def assert_ratio(func: Callable[[T], object], slow: T, fast: T, *, limit: float, what: str) -> None:
    """``func(slow)`` costs less than ``limit`` times ``func(fast)``, in one of ``ATTEMPTS`` measurements."""
    ratios: list[float] = []
    for _ in range(ATTEMPTS):
        fast_time = min(_batch(func, fast, 1) for _ in range(2))
        single = _batch(func, slow, 1)
        if single > 4 * limit * fast_time and _batch(func, slow, 1) > 4 * limit * fast_time:
            # Twice far over the limit: super-linear, not noise; no need to time it longer.
            ratios.append(single / fast_time)
            continue
        slow_time, fast_time = _per_call(func, slow, fast)
        ratios.append(slow_time / fast_time)
        if ratios[-1] < limit:
            return
    shown = ", ".join(f"{ratio:.1f}x" for ratio in ratios)
    pytest.fail(f"{what}: {shown} the time of the comparison input (limit {limit:g}x)")


def assert_linear(func: Callable[[T], object], build: Callable[[int], T], size: int, what: str) -> None:
    """The adversarial input at ``size`` costs less than ``GROWTH`` times the same at ``size // 4``."""
    assert_ratio(func, build(size), build(size // 4), limit=GROWTH, what=f"{what}, growth from n to 4n")


def quietly(func: Callable[[T], object], *expected: type[BaseException]) -> Callable[[T], None]:
    """``func`` with the refusals it is expected to raise swallowed (the outcome is checked apart)."""

    def call(arg: T) -> None:
        with contextlib.suppress(*expected):
            func(arg)

    return call


# -- the compact JWS parse path: parse_jws, classify, _too_deep, the whole authenticator -------------------

HEADER = b64url(b'{"alg":"RS256","typ":"at+jwt","kid":"rsa-1"}')
SIGNATURE = b64url(bytes(256))


def room(size: int) -> int:
    """The payload bytes that fit in a token of ``size`` characters."""
    return (size - len(HEADER) - len(SIGNATURE) - 2) * 3 // 4


def token_of(payload: bytes, *, size: int) -> str:
    """A compact JWS of ``size`` characters at most whose payload is ``payload`` (trimmed to fit)."""
    token = f"{HEADER}.{b64url(payload[: room(size)])}.{SIGNATURE}"
    assert len(token) <= size <= MAX_TOKEN_BYTES
    return token


def forged_text(size: int) -> str:
    """The historical attack: a string of escaped backslashes and quotes (``\\\\\\"``) that never closes.

    More than 32 ``{`` bring it past the depth pre-check's fast path (which only counts brackets); the old
    pre-check then stripped strings with a regex that retried from every escaped quote to the end: O(n²).
    """
    return '{"a":"' + "{" * 40 + '\\\\\\"' * (size // 4)


def benign_text(size: int) -> str:
    """An ordinary large claim set of ``size`` characters: real claims, nested arrays (>32 brackets), a long
    string."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "248289761001",
        "aud": AUDIENCE,
        "exp": 1_800_003_600,
        "iat": 1_800_000_000,
        "scope": "read write",
        "groups": [[f"g{i}"] for i in range(40)],
        "profile": "",
    }
    claims["profile"] = "x" * (size - len(json.dumps(claims)))
    return json.dumps(claims)


def forged_token(size: int) -> str:
    return token_of(forged_text(size).encode(), size=size)


def benign_token(size: int) -> str:
    return token_of(benign_text(room(size)).encode(), size=size)


HISTORICAL_TOKEN = forged_token(15_800)
_parse = quietly(parse_jws, InvalidToken)


def test_the_historical_forged_token_is_refused_as_fast_as_a_benign_token() -> None:
    """The 15.8 KB token of escaped quotes that never close: refused as malformed, in linear time."""
    assert 15_700 <= len(HISTORICAL_TOKEN) <= 15_800
    with pytest.raises(InvalidToken) as info:
        parse_jws(HISTORICAL_TOKEN)
    assert info.value.reason == "malformed_token"
    benign = benign_token(len(HISTORICAL_TOKEN))
    assert parse_jws(benign).claims["sub"] == "248289761001"
    assert_ratio(_parse, HISTORICAL_TOKEN, benign, limit=RATIO, what="parse_jws(historical forged token)")
    assert_linear(_parse, forged_token, MAX_TOKEN_BYTES, "parse_jws(forged token)")


def _header_forged(size: int) -> str:
    """The same string in the header, which is decoded first."""
    room = (size - len(SIGNATURE) - 40) * 3 // 4
    return f"{b64url(forged_text(size).encode()[:room])}.{b64url(b'{}')}.{SIGNATURE}"


def _deep_strings(size: int) -> str:
    """Brackets inside (closed) strings, and backslash runs: strings and brackets alternate."""
    return token_of(('{"a":[' + '"[{\\\\\\\\",' * (size // 8) + '"x"]}').encode(), size=size)


def _unbalanced(size: int) -> str:
    return token_of(b"[" * size, size=size)


def _quotes(size: int) -> str:
    """Bare quotes, each closing the string the last one opened, then one that never closes."""
    return token_of(('{"a":' + "{" * 40 + '""' * (size // 2) + '"').encode(), size=size)


@pytest.mark.parametrize("build", [_header_forged, _deep_strings, _unbalanced, _quotes])
def test_other_forged_tokens_are_parsed_in_linear_time(build: Callable[[int], str]) -> None:
    """Strings full of brackets, backslash runs, deep nesting, a forged header: refused or parsed, linearly."""
    forged = build(MAX_TOKEN_BYTES)
    quietly(parse_jws, InvalidToken)(forged)  # refused (or parsed) without any other error
    assert_ratio(_parse, forged, benign_token(len(forged)), limit=RATIO, what=f"parse_jws({build.__name__})")
    assert_linear(_parse, build, MAX_TOKEN_BYTES, f"parse_jws({build.__name__})")


def test_the_depth_precheck_is_linear() -> None:
    """``_too_deep`` itself, on the decoded JSON text: the depth the decoder would reach, in linear time."""
    size = MAX_TOKEN_BYTES * 3 // 4
    assert _too_deep('{"a":' + "[" * 33 + "]" * 33 + "}") is True
    assert _too_deep('{"a":"' + "[" * 40 + '"}') is False  # brackets in a string do not count
    assert _too_deep('{"a":"\\"' + "[" * 40 + '"}') is False  # nor after an escaped quote
    assert _too_deep('{"a":"\\\\"' + ",[" * 33) is True  # an escaped backslash ends before the quote
    assert _too_deep(benign_text(size)) is False
    assert_ratio(_too_deep, forged_text(size), benign_text(size), limit=RATIO, what="_too_deep(forged text)")
    assert_linear(_too_deep, forged_text, size, "_too_deep(forged text)")
    assert _too_deep(forged_text(size)) is False  # the string never closes: the decoder reads no further


def _jose_like(size: int) -> str:
    """Not three segments, so ``classify`` decodes the first one to tell a JWE from an opaque token."""
    return f"{b64url(forged_text(size).encode()[: (size - 80) * 3 // 4])}.{b64url(bytes(40))}"


def test_classify_reads_a_forged_first_segment_in_linear_time() -> None:
    """A two- or five-segment token whose first segment is the forged JSON: 'opaque', in linear time."""
    forged = _jose_like(MAX_TOKEN_BYTES)
    assert classify(forged) == "opaque"
    benign = f"{b64url(benign_text((MAX_TOKEN_BYTES - 80) * 3 // 4).encode())}.{b64url(bytes(40))}"
    assert classify(benign) == "jwe"  # a JSON object, not three segments
    assert_ratio(classify, forged, benign, limit=RATIO, what="classify(forged first segment)")
    assert_linear(classify, _jose_like, MAX_TOKEN_BYTES, "classify(forged first segment)")


@pytest.fixture
def authenticate() -> Iterator[Callable[[str], None]]:
    """One request through the whole pipeline (extract, classify, parse), on one event loop."""
    auth = Authenticator(GuardConfig(issuer=ISSUER, audience=AUDIENCE))
    loop = asyncio.new_event_loop()

    def call(token: str) -> None:
        headers = [(b"host", b"api.example.com"), (b"authorization", f"Bearer {token}".encode())]
        try:
            loop.run_until_complete(auth.authenticate(headers, AUTHENTICATED))
        except AuthError as exc:  # refused as malformed, before any key lookup; anything else is a failure
            if exc.reason != "malformed_token":
                raise

    yield call
    loop.run_until_complete(auth.aclose())
    loop.close()


def test_the_authenticator_refuses_the_historical_token_in_linear_time(authenticate: Callable[[str], None]) -> None:
    """End to end: no key is needed to refuse it, and it costs what a malformed benign token costs."""
    size = len(HISTORICAL_TOKEN)
    malformed = token_of(benign_text(room(size)).encode()[:-1], size=size)  # the same claims, one byte short
    authenticate(HISTORICAL_TOKEN)
    authenticate(malformed)
    assert_ratio(authenticate, HISTORICAL_TOKEN, malformed, limit=RATIO, what="authenticate(historical token)")


@pytest.fixture
def miss() -> Iterator[Callable[[str], None]]:
    """The fast lane's second half (``Authenticator.miss``) on a token's bytes, as the middleware calls it."""
    auth = Authenticator(GuardConfig(issuer=ISSUER, audience=AUDIENCE))
    loop = asyncio.new_event_loop()

    def call(token: str) -> None:
        raw = token.encode()
        # No keys yet: a malformed value goes to the full path (None), a parsed one is refused for its
        # claims or goes there too; nothing else may come out (any other exception would be a 503).
        with contextlib.suppress(AuthError):
            assert auth.miss(raw, bytes_digest(raw), AUTHENTICATED) is None

    yield call
    loop.run_until_complete(auth.aclose())
    loop.close()


@pytest.mark.parametrize("build", [forged_token, _header_forged, _deep_strings, _unbalanced, _quotes])
def test_the_fast_lane_reads_a_forged_token_in_linear_time(
    miss: Callable[[str], None], build: Callable[[int], str]
) -> None:
    """``miss`` splits and decodes a first-sight token itself (issue 16): the forged tokens above cost it what a
    benign token of the same size costs, and it grows linearly up to ``max_token_bytes``."""
    forged = build(MAX_TOKEN_BYTES)
    miss(forged)
    assert_ratio(miss, forged, benign_token(len(forged)), limit=RATIO, what=f"miss({build.__name__})")
    assert_linear(miss, build, MAX_TOKEN_BYTES, f"miss({build.__name__})")


# -- the Authorization header ------------------------------------------------------------------------------

BENIGN_HEADER = b"Bearer " + b"aB3-_." * (MAX_TOKEN_BYTES // 6)
ADVERSARIAL_HEADERS = {
    "a stray byte last": b"Bearer " + b"a" * (MAX_TOKEN_BYTES - 1) + b"\x00",
    "padding, then more": b"Bearer " + b"a" * (MAX_TOKEN_BYTES - 2) + b"=a",
    "padding everywhere": b"Bearer " + b"a=" * (MAX_TOKEN_BYTES // 2),
    "tabs and spaces": b"Bearer" + b" \t" * (MAX_TOKEN_BYTES // 2) + b"x",
    "a second word": b"Bearer " + b"a " * (MAX_TOKEN_BYTES // 2),
    "no separator": b"Bearer" + b"a" * MAX_TOKEN_BYTES,
    "over the cap": b"Bearer " + b"a" * (4 * MAX_TOKEN_BYTES),
}


def _parse_header(value: bytes) -> None:
    with contextlib.suppress(InvalidRequest, InvalidToken, MissingToken):
        parse_authorization(value, MAX_TOKEN_BYTES)


@pytest.mark.parametrize("name", list(ADVERSARIAL_HEADERS))
def test_authorization_values_are_parsed_in_linear_time(name: str) -> None:
    """``parse_authorization``: no backtracking over a 16 KiB credential, whatever its last byte."""
    value = ADVERSARIAL_HEADERS[name]
    with pytest.raises((InvalidRequest, InvalidToken, MissingToken)):
        parse_authorization(value, MAX_TOKEN_BYTES)
    assert parse_authorization(BENIGN_HEADER, MAX_TOKEN_BYTES) == BENIGN_HEADER[7:].decode()
    assert_ratio(_parse_header, value, BENIGN_HEADER, limit=RATIO, what=f"parse_authorization({name})")


def test_header_lists_are_read_in_linear_time() -> None:
    """``extract_bearer`` and ``cached_candidate`` over many header fields."""

    def headers(count: int) -> list[tuple[bytes, bytes]]:
        return [(b"X-Authorization" if i % 2 else b"AUTHORIZATIONS", b"Bearer x") for i in range(count)] + [
            (b"Authorization", b"Bearer " + b"a" * 64)
        ]

    def extract(pairs: list[tuple[bytes, bytes]]) -> None:
        extract_bearer(pairs, MAX_TOKEN_BYTES)
        cached_candidate([value for _, value in pairs])

    assert extract_bearer(headers(10), MAX_TOKEN_BYTES) == "a" * 64
    assert_linear(extract, headers, 4000, "extract_bearer(many header fields)")


def test_the_middleware_reads_host_and_authorization_in_linear_time() -> None:
    """``host_and_authorization`` (the guard's one pass over a request's headers, issue 16): names of the
    two lengths it lowers, in another case, do not make it slower than linear in the number of fields."""

    def headers(count: int) -> list[tuple[bytes, bytes]]:
        return [(b"AUTHORIZATIOM" if i % 2 else b"HOSX", b"x" * 32) for i in range(count)] + [
            (b"HOST", b"api.example.com"),
            (b"Authorization", b"Bearer " + b"a" * 64),
        ]

    def read(pairs: list[tuple[bytes, bytes]]) -> None:
        host_and_authorization(pairs)

    assert host_and_authorization(headers(10)) == (b"api.example.com", [b"Bearer " + b"a" * 64])
    assert_linear(read, headers, 4000, "host_and_authorization(many header fields)")


@pytest.mark.parametrize("part", ["method", "path", "host"])
def test_the_route_decision_is_linear_in_the_request_shape(part: str) -> None:
    """``RouteResolver.decide`` (issue 16's one-lookup memo): a long method, path or Host is past the memo's
    key bound, so every request is resolved afresh against the routes; that stays linear in its length."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Host, Mount, Route

    from tokenguard.routing import RouteResolver

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/items/{id:int}", endpoint),
            Route("/files/{name:path}", endpoint),
            Mount("/m", routes=[Route("/{a}/{b}", endpoint)]),
            Host("{sub}.example.com", app=Starlette(routes=[Route("/x", endpoint)])),
        ]
    )
    resolver = RouteResolver((), AUTHENTICATED)

    def shape(size: int) -> tuple[dict[str, Any], bytes]:
        method, path, host = "GET", "/files/x", b"api.example.com"
        if part == "method":
            method = "G" * size
        elif part == "path":
            path = "/items/" + "1" * size + "x"  # almost an int: the converter's pattern runs to the end
        else:
            host = b"a" * size + b".example.org"
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "app": app}, host

    def decide(request: Any) -> None:
        resolver.decide(request[0], app, request[1])

    decide(shape(10))
    assert resolver.cache_entries <= 1  # long shapes are never stored
    assert_linear(decide, shape, 16 * 1024, f"RouteResolver.decide(long {part})")


def test_the_mcp_endpoint_probe_is_linear_in_the_host() -> None:
    """``RouteResolver.decide_path`` (is this request an MCP one?) probes with the request's Host: a long one is
    past the memo's key bound, so it is resolved afresh each time, in time linear in its length."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Host, Route

    from tokenguard.routing import RouteResolver

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Host("{sub}.example.com", app=Starlette(routes=[Route("/t/{tenant}/mcp", endpoint, methods=["POST"])])),
            Route("/mcp", endpoint, methods=["POST"]),
        ]
    )
    resolver = RouteResolver((), AUTHENTICATED)

    def probe(host: bytes) -> None:
        resolver.decide_path("/t/acme/mcp", {"root_path": ""}, app, host)

    assert resolver.decide_path("/t/acme/mcp", {}, app, b"a.example.com").template == "/t/{tenant}/mcp"
    assert resolver.decide_path("/mcp", {}, app, b"a" * 4096 + b".example.org").route is not None
    assert_linear(probe, lambda size: b"a" * size + b".example.com", 16 * 1024, "decide_path(long Host)")


@pytest.mark.parametrize("shape", ["deep", "wide"])
def test_an_introspection_answers_depth_is_measured_in_linear_time(shape: str) -> None:
    """``nested_deeper_than`` walks a decoded introspection answer (bounded by the response cap, not by a depth
    limit of the decoder): each container once, no recursion, deep or wide."""
    from tokenguard._strictjson import MAX_DEPTH, nested_deeper_than

    def answer(size: int) -> dict[str, Any]:
        if shape == "wide":
            return {"active": True, "claims": [[{"a": [1]}] for _ in range(size)]}
        value: Any = "bottom"
        for _ in range(size):
            value = [value]
        return {"active": True, "deep": value}

    assert nested_deeper_than(answer(40), MAX_DEPTH) is (shape == "deep")
    assert_linear(lambda value: nested_deeper_than(value, 10**9), answer, 16 * 1024, f"nested_deeper_than({shape})")


# -- the strict JSON decoder (request bodies for authorization_details checks; token segments) -----------


def rar_body(size: int) -> bytes:
    """A benign body: RFC 9396 authorization_details entries, as many as fit in ``size`` bytes."""
    entry = {
        "type": "payment_initiation",
        "actions": ["initiate", "status", "cancel"],
        "locations": ["https://example.com/payments"],
        "instructedAmount": {"currency": "EUR", "amount": "123.50"},
        "creditorName": "Merchant A",
        "creditorAccount": {"iban": "DE02100100109307118603"},
    }
    count = (size - 32) // (len(json.dumps(entry)) + 2)
    body = json.dumps({"authorization_details": [entry] * count}).encode()
    assert len(body) <= size
    return body.ljust(size, b" ")  # whitespace after the value is allowed (RFC 8259 §2)


ADVERSARIAL_BODIES: dict[str, Callable[[int], bytes]] = {
    "deep arrays": lambda n: b"[" * n,
    "deep objects": lambda n: b'{"a":' * (n // 5),
    "escaped quotes, closed": lambda n: b'"' + b'\\"' * (n // 2 - 1) + b'"',
    "escaped quotes, never closed": lambda n: b'"' + b'\\\\\\"' * (n // 4),
    "unicode escapes, lone surrogates": lambda n: b'"' + b"\\ud800" * (n // 6 - 1) + b'"',
    "duplicate members": lambda n: b"{" + b",".join(b'"a":1' for _ in range(n // 6)) + b"}",
    "integers at the digit limit": lambda n: b"[" + b",".join(b"9" * 4300 for _ in range(n // 4301)) + b"]",
    "one integer past the limit": lambda n: b"9" * n,
    "a long fraction": lambda n: b"1." + b"1" * (n - 2),
    "a long exponent": lambda n: b"1e" + b"9" * (n - 2),
    "many floats": lambda n: b"[" + b",".join(b"1.5e3" for _ in range(n // 6)) + b"]",
    "whitespace": lambda n: b" " * (n - 1) + b"1",
}


def _decode_body(data: bytes) -> None:
    with contextlib.suppress(InvalidRequest):
        parse_json_body(data)


@pytest.mark.parametrize("name", list(ADVERSARIAL_BODIES))
def test_request_bodies_are_decoded_in_linear_time(name: str) -> None:
    """``parse_json_body`` (the strict decoder) on 64 KiB bodies: linear, like the C scanner underneath."""
    build = ADVERSARIAL_BODIES[name]
    body = build(MAX_BODY_BYTES)
    assert len(body) <= MAX_BODY_BYTES + 8
    _decode_body(body)
    assert isinstance(parse_json_body(rar_body(MAX_BODY_BYTES)), dict)
    assert_ratio(_decode_body, body, rar_body(len(body)), limit=RATIO, what=f"parse_json_body({name})")
    assert_linear(_decode_body, build, MAX_BODY_BYTES, f"parse_json_body({name})")


def test_the_strict_decoder_refuses_duplicates_in_linear_time() -> None:
    """``strict_decoder`` itself: thousands of distinct members, or the same one again and again."""
    decoder = strict_decoder(finite_floats=True)

    def members(count: int) -> str:
        return "{" + ",".join(f'"k{i}":{i}' for i in range(count)) + "}"

    def decode(text: str) -> None:
        with contextlib.suppress(ValueError):
            decoder.decode(text)

    assert len(decoder.decode(members(100))) == 100
    assert_linear(decode, members, 8000, "strict_decoder(many members)")


@pytest.mark.parametrize("canonical", [True, False], ids=["canonical", "one-space-off"])
def test_the_orjson_fast_path_is_linear(canonical: bool) -> None:
    """``strict_loads`` on compact JSON (read by orjson, written back and compared, issue 16), and on a
    text one byte from canonical, which pays for both readers: linear either way."""

    def document(count: int) -> bytes:
        text = json.dumps({f"k{i}": [i, "v" * 8, {"n": None}] for i in range(count)}, separators=(",", ":"))
        return (text if canonical else text[:-1] + " }").encode()

    def decode(data: bytes) -> None:
        strict_loads(data, object_only=True, max_depth=None)

    assert len(strict_loads(document(100), max_depth=None)) == 100
    assert (_canonical_object(document(100)) is not None) is canonical  # the path this case is about
    assert_linear(decode, document, 8000, f"strict_loads({'canonical' if canonical else 'one space off'})")


# -- log redaction ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def access_line(size: int) -> str:
    """A benign request line of ``size`` characters: a long path of words and a query."""
    rng = random.Random(size)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(size // 4)]
    path = "/api/v1/" + "/".join(words)
    return (f"GET {path}?page=2&sort=name HTTP/1.1")[:size].ljust(size, "x")


def _repeat(unit: str, tail: str = "") -> Callable[[int], str]:
    return lambda size: (unit * (size // len(unit) + 1))[: size - len(tail)] + tail


ADVERSARIAL_LINES: dict[str, Callable[[int], str]] = {
    # The historical one: from every "ey" the old candidate regex read to the end of the run again.
    "eyeyey...": _repeat("ey"),
    "eyeyey... then a dot": _repeat("ey", ".x"),
    "eyA... (every ey starts a header)": _repeat("eyA", ".x"),
    "eyAgICAg... (whitespace headers)": _repeat("eyAgICAg", ".x"),
    "ey.ey.ey...": _repeat("ey."),
    "a.a.a... (URL scheme characters)": _repeat("a."),
    "a.a.a...://": _repeat("a-", "://x"),
    "a://:a://:...": _repeat("a://:"),
    "x://u:p/x://u:p/...": _repeat("x://u:p/"),
    "bearer%20%20...": lambda size: ("bearer" + "%20" * size)[:size],
    "Bearer Bearer ...": _repeat("Bearer "),
    "authorization: authorization: ...": _repeat("authorization: "),
    "authorization then spaces": lambda size: "authorization" + " " * (size - 13),
    "Authorization: Bearer then spaces": lambda size: "Authorization: Bearer" + " " * (size - 21),
    "token=token=...": _repeat("token="),
    '"password": "password": ...': _repeat('"password": '),
    "token then spaces": lambda size: "token" + " " * (size - 5),
    "code=&code=&...": _repeat("?code=&"),
    "%(%(%(...": _repeat("%("),
    "%000...0!": lambda size: "%" + "0" * (size - 2) + "!",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL_LINES))
def test_redact_is_linear_on_adversarial_lines(name: str) -> None:
    """``redact()`` on 64 KiB lines built to make a regex re-read its input: as fast as a request line."""
    build = ADVERSARIAL_LINES[name]
    line = build(LOG_LINE)
    assert len(line) == LOG_LINE
    redact(line)
    assert redact(access_line(LOG_LINE)) == access_line(LOG_LINE)
    assert_ratio(redact, line, access_line(LOG_LINE), limit=RATIO, what=f"redact({name})")
    assert_linear(redact, build, LOG_LINE // 2, f"redact({name})")


def test_text_past_the_cap_is_withheld_and_costs_nothing_more() -> None:
    """``MAX_REDACTED_CHARS``: the rest of a longer string is never printed, and never read."""
    assert redaction.MAX_REDACTED_CHARS == LOG_LINE
    secret = "s3cr3t-Opaque_value"
    text = "a" * (LOG_LINE - 20) + f" Bearer {secret}" + "b" * (3 * LOG_LINE)
    clean = redact(text)
    assert secret not in clean
    assert secret[:5] not in clean
    assert clean.endswith(f"...[{len(text) - LOG_LINE} characters withheld]")
    assert REDACTED in clean
    assert_ratio(redact, text, access_line(LOG_LINE), limit=RATIO, what="redact(4x the cap)")


# The uvicorn access-log call, with the filter attached as the README shows.
ACCESS_MESSAGE = '%s - "%s %s HTTP/%s" %d'


def _access_record(path: str) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, ACCESS_MESSAGE, ("127.0.0.1:50000", "GET", path, "1.1", 404), None
    )


def _filter_access(path: str) -> None:
    assert TokenRedactingFilter().filter(_access_record(path)) is True


def test_the_historical_eyeyey_path_is_filtered_in_linear_time() -> None:
    """The anonymous request with a 15 KB "eyeyey..." path, as uvicorn's access log hands it to the filter."""
    path = "/" + "ey" * 7_500
    record = _access_record(path)
    TokenRedactingFilter().filter(record)
    assert record.getMessage() == f'127.0.0.1:50000 - "GET {path} HTTP/1.1" 404'  # nothing to redact in it
    benign = access_line(len(path))
    assert_ratio(_filter_access, path, benign, limit=RATIO, what="access log filter(15 KB eyeyey path)")
    assert_linear(_filter_access, lambda size: "/" + "ey" * (size // 2), 30_000, "access log filter(eyeyey path)")


def _filter(record_args: tuple[str, tuple[Any, ...] | dict[str, Any]]) -> None:
    msg, args = record_args
    record = logging.LogRecord("app", logging.INFO, __file__, 1, msg, (), None)
    record.args = args
    assert TokenRedactingFilter().filter(record) is True


RECORDS: dict[str, Callable[[int], tuple[str, Any]]] = {
    "many %s arguments": lambda n: ("%s " * (n // 8), tuple("x" for _ in range(n // 8))),
    "many %s after a key": lambda n: ("token=%s " * (n // 16), tuple("x" for _ in range(n // 16))),
    "%(%(%(...)! before a conversion": lambda n: ("%(" * (n // 2) + ")! %s", ("x",)),
    "%(...)!%(...)! (keys that lead nowhere)": lambda n: ("%(a)!" * (n // 5) + "%s", ("x",)),
    "%000...0! before a conversion": lambda n: ("%" + "0" * n + "! %s", ("x",)),
    "one mapping shown by many %s": lambda n: ("%s" * (n // 64), {f"k{i}": "v" for i in range(16)}),
    "an eyeyey... argument": lambda n: ("path %s", ("ey" * (n // 2),)),
    "a.a.a... arguments": lambda n: ("%s %s", ("a." * (n // 4), "a-" * (n // 4) + "://")),
}


@pytest.mark.parametrize("name", list(RECORDS))
def test_the_filter_is_linear_in_messages_and_arguments(name: str) -> None:
    """``TokenRedactingFilter`` on records whose message or arguments are adversarial: linear growth."""
    build = RECORDS[name]
    _filter(build(1000))
    assert_linear(_filter, build, 12_000, f"filter({name})")


# -- challenges and error bodies ----------------------------------------------------------------------------

ODD_DESCRIPTIONS = {
    "quotes and backslashes": '"\\' * (MAX_TOKEN_BYTES // 2),
    "CR LF": "\r\n" * (MAX_TOKEN_BYTES // 2),
    "non-ASCII": "\u00e9\u2028\ud800" * (MAX_TOKEN_BYTES // 3),
}


def _render(description: str) -> None:
    render(InvalidToken("malformed_token", description), realm=description, resource_metadata=description)


@pytest.mark.parametrize("name", list(ODD_DESCRIPTIONS))
def test_challenges_render_odd_text_in_linear_time(name: str) -> None:
    """``WWW-Authenticate`` and the JSON body for a description (and realm) of characters that are dropped."""
    odd = ODD_DESCRIPTIONS[name]
    challenge = dict(render(InvalidToken("malformed_token", odd), realm="api").headers)[b"www-authenticate"]
    assert re.fullmatch(rb'Bearer realm="api", error="invalid_token", error_description="[\x20-\x7e]*"', challenge)
    plain = ("The access token is malformed. " * MAX_TOKEN_BYTES)[: len(odd)]
    assert_ratio(_render, odd, plain, limit=RATIO, what=f"render({name})")
    assert_linear(_render, lambda size: (odd * 4)[:size], len(odd), f"render({name})")


# -- the MCP tools/list rewriter: an answer however it is chunked -----------------------------------------


def _stream_through_filter(chunks: list[bytes]) -> bytes:
    """Feed an event stream to ``filtering_send`` in these chunks; what reached the client."""
    from tokenguard._mcp import ToolsListFilter, filtering_send

    sent: list[bytes] = []

    async def send(message: Any) -> None:
        sent.append(message.get("body", b""))

    async def run() -> None:
        wrapped = filtering_send(send, ToolsListFilter(1, lambda name: True))
        await wrapped(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        )
        for index, chunk in enumerate(chunks):
            await wrapped({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    asyncio.run(run())
    return b"".join(sent)


def _one_byte_chunks(size: int) -> list[bytes]:
    """One event of ``size`` bytes (never complete until its end) sent one byte per chunk."""
    event = b"data: " + b"x" * size + b"\r\n\r\n"
    return [event[index : index + 1] for index in range(len(event))]


def test_the_event_stream_rewriter_is_linear_in_tiny_chunks() -> None:
    """A long event split into one-byte chunks: each byte is searched a bounded number of times."""
    chunks = _one_byte_chunks(4000)
    assert _stream_through_filter(chunks) == b"".join(chunks)
    assert_linear(_stream_through_filter, _one_byte_chunks, 16_000, "an event stream in one-byte chunks")


def _many_events_in_one_chunk(count: int) -> list[bytes]:
    """``count`` small events, all in one chunk, with a line ending that two of the separators never match."""
    return [b"data: {}\n\n" * count]


def test_the_event_stream_rewriter_is_linear_in_events_per_chunk() -> None:
    """Many events in one chunk: the search for each event's end stops at its blank line."""
    chunks = _many_events_in_one_chunk(1000)
    assert _stream_through_filter(chunks) == b"".join(chunks)
    assert_linear(_stream_through_filter, _many_events_in_one_chunk, 8000, "many events in one chunk")


def _mcp_batch(count: int) -> bytes:
    """A JSON-RPC batch of ``count`` tools/call requests, cycling through tools of different policies."""
    names = ["read", "write", "admin", "unknown"]
    calls = [
        {"jsonrpc": "2.0", "id": index, "method": "tools/call", "params": {"name": names[index % 4]}}
        for index in range(count)
    ]
    return json.dumps(calls).encode()


def test_an_mcp_batch_is_read_in_linear_time() -> None:
    """The per-tool policy of a batch (merged call by call) costs in proportion to its calls."""
    from tokenguard.mcp import MCPPolicy, ToolPolicy

    policy = MCPPolicy(
        tools={"read": ToolPolicy(scopes="r"), "write": ToolPolicy(scopes="w"), "admin": ToolPolicy(sensitive=True)},
        default=ToolPolicy(scopes="other"),
    )
    merged, _ = policy.requirement_for(_mcp_batch(8))
    assert merged.all_scopes == {"r", "w", "other"}
    assert merged.sensitive
    assert_linear(policy.requirement_for, _mcp_batch, 2000, "an MCP batch")
