"""Property-based fuzzing of a real Starlette app guarded by TokenGuard (the short CI run; see
``scripts/fuzz_long.py`` for the long one).

Inputs: raw ``Authorization`` header lists (arbitrary bytes, latin-1, control characters, huge values,
several headers), tokens made of random base64url segments, JWTs whose header and claims are random
JSON signed by the issuer's real keys, and mutations of valid tokens. Properties, for every input:

- the status is 400, 401, 403 or 503, and 200 only for a genuinely valid token — never 500;
- the body is a JSON object without traceback text, and the raw token is never echoed;
- every refusal carries a one-line ``WWW-Authenticate`` (400/401/403) or ``Retry-After`` (503);
- the same input gets the same decision when sent again.

The app is driven with raw ASGI messages (header bytes no HTTP client would send), on one event loop,
with the issuer's metadata, JWKS and RFC 7662 endpoint served through respx.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, T0, Issuer, b64url
from tokenguard import TokenGuard, require_scopes, sensitive
from tokenguard.config import DEFAULT_ALGORITHMS
from tokenguard.dpop import DPoPKey
from tokenguard.testing import ManualClock

CLIENT_ID, CLIENT_SECRET = "photos-api", "fuzz-secret"
LEEWAY = 30.0
MAX_TOKEN_BYTES = 16 * 1024
REFUSALS = frozenset({400, 401, 403, 503})
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the app under test ------------------------------------------------------------------------------


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


@dataclass
class World:
    """One guarded app, its issuer and one event loop, shared by every example of the module."""

    issuer: Issuer
    app: Starlette
    loop: asyncio.AbstractEventLoop
    active: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    reasons: deque[str] = field(default_factory=lambda: deque(maxlen=4))  # of the last decisions
    _boilerplate: bytes = b""

    def boilerplate(self) -> bytes:
        """Everything the guard says whatever the input: header values and bodies of reference refusals."""
        if not self._boilerplate:
            references = [[], [(b"authorization", b"Bearer ")], bearer("x" * 20), bearer(self.issuer.token(scope=""))]
            replies = [self.send(headers, path) for headers in references for path in ("/me", "/photos")]
            texts = [text for reply in replies for text in (reply.body, *(value for _, value in reply.headers))]
            self._boilerplate = b"\n".join(texts)
        return self._boilerplate

    def send(self, headers: list[tuple[bytes, bytes]], path: str) -> Reply:
        return self.loop.run_until_complete(asgi_get(self.app, headers, path))


async def asgi_get(app: Any, headers: list[tuple[bytes, bytes]], path: str) -> Reply:
    """One raw ASGI HTTP GET; an exception escaping the app fails the test with it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api.example.com"), *headers],
        "client": ("203.0.113.9", 50000),
        "server": ("api.example.com", 443),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Reply(start["status"], [(bytes(k), bytes(v)) for k, v in start["headers"]], body)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    clock = ManualClock(T0)
    issuer = Issuer(clock)
    app = Starlette(routes=[Route("/me", me), Route("/photos", photos), Route("/transfer", transfer)])
    loop = asyncio.new_event_loop()
    created = World(issuer, app, loop)
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=AUDIENCE,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        clock=clock,
        on_decision=lambda event: created.reasons.append(event.reason),
    )

    def introspect(request: httpx.Request) -> httpx.Response:
        token = dict(parse_qsl(request.content.decode("ascii"))).get("token", "")
        if token not in created.active:
            return httpx.Response(200, json={"active": False})
        claims = json.loads(jwt.api_jws.decode_complete(token, options={"verify_signature": False})["payload"])
        return httpx.Response(200, json={"active": True, **claims})

    with respx.mock(assert_all_called=False) as router:
        issuer.install(router)
        router.post(INTROSPECTION_URL).mock(side_effect=introspect)
        yield created
        assert {call.request.url.host for call in router.calls} <= {"idp.example.com"}
    loop.close()


# -- the properties --------------------------------------------------------------------------------


def check(world: World, headers: list[tuple[bytes, bytes]], path: str, *, expect: int | None) -> Reply:
    """Send twice; assert every property; ``expect`` is the one right status, or None for "any refusal"."""
    first, second = world.send(headers, path), world.send(headers, path)
    world.statuses[first.status] += 1
    assert (first.status, first.body) == (second.status, second.body), "same input, another decision"
    assert first.status != 500
    if expect is None:
        assert first.status in REFUSALS, first.status
    else:
        assert first.status == expect, (first.status, first.body)
    document = json.loads(first.body)
    assert isinstance(document, dict)
    for marker in (b"Traceback", b'File "', b"Error:"):
        assert marker not in first.body
    if first.status in (400, 401, 403):
        (challenge,) = first.header(b"www-authenticate")
        assert challenge.startswith(b'Bearer realm="')
        assert b"\r" not in challenge
        assert b"\n" not in challenge
        assert document.get("error") in (None, "invalid_request", "invalid_token", "insufficient_scope")
    elif first.status == 503:
        assert first.header(b"retry-after")
        assert document["error"] == "temporarily_unavailable"
    for _, value in headers:
        echo_free(world, value, first)
    return first


def echo_free(world: World, value: bytes, reply: Reply) -> None:
    """Neither the value nor its credentials part (when long enough to be a secret) appears in the reply.

    A value that is itself part of the guard's fixed vocabulary (say ``application/json``) proves nothing.
    """
    credentials = value.split(b" ", 1)[-1].strip()
    for secret in (value, credentials):
        if len(secret) >= 16 and secret not in world.boilerplate():
            assert secret not in reply.body
            assert all(secret not in header for _, header in reply.headers)


def bearer(token: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = token.encode("latin-1") if isinstance(token, str) else token
    return [(b"authorization", b"Bearer " + raw)]


# -- a reference oracle for signed random JSON ----------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def expected_status(head: dict[str, Any], claims: dict[str, Any], signing: tuple[str, str], path: str) -> int | None:
    """What docs/ARCHITECTURE.md says a signed token with this header and these claims gets (None: some refusal)."""
    kid, alg = signing
    now = T0
    if head.get("alg") != alg or alg not in DEFAULT_ALGORITHMS or "crit" in head or head.get("b64", True) is not True:
        return None
    typ = head.get("typ", "jwt")
    if not isinstance(typ, str) or typ.lower() not in ("jwt", "at+jwt", "application/at+jwt"):
        return None
    if "kid" in head and head["kid"] != kid:
        return None
    if claims.get("iss") != ISSUER:
        return None
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_number(claims[name]):
            return None
    if "exp" not in claims or now >= claims["exp"] + LEEWAY:
        return None
    if any(name in claims and now + LEEWAY < claims[name] for name in ("nbf", "iat")):
        return None
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences) or AUDIENCE not in audiences:
        return None
    # Tokens of another kind (Keycloak "typ", Cognito/Hydra "token_use", ID-token-only hashes) and
    # sender-constrained tokens (RFC 9449 §7.2, RFC 8705 §3) are never accepted as bearer access tokens.
    typ_claim, use = claims.get("typ"), claims.get("token_use")
    if isinstance(typ_claim, str) and typ_claim.lower() in (
        "id",
        "refresh",
        "offline",
        "logout",
        "id_token",
        "refresh_token",
    ):
        return None
    if use is not None and (not isinstance(use, str) or use.lower() not in ("access", "access_token")):
        return None
    if "at_hash" in claims or "c_hash" in claims:
        return None
    cnf = claims.get("cnf")
    if cnf is not None and (not isinstance(cnf, dict) or cnf):  # RFC 7800: any confirmation binds a key
        return None
    for name in ("sub", "client_id", "jti"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            return None
    if not claims.get("sub") and not claims.get("client_id"):
        return None
    scope = claims["scope"] if "scope" in claims else claims.get("scp")
    if scope is None:
        scopes: set[str] = set()
    elif isinstance(scope, str):  # RFC 6749 §3.3: SP-separated scope tokens; anything else grants nothing
        scopes = {piece for piece in scope.split(" ") if SCOPE_TOKEN.fullmatch(piece)}
    elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scopes = {piece for piece in scope if SCOPE_TOKEN.fullmatch(piece)}
    else:
        return None
    if path == "/photos" and "read:photos" not in scopes:
        return 403
    return 200


# -- strategies ------------------------------------------------------------------------------------------

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
KEYS = [("rsa-1", "RS256"), ("ec-1", "ES256"), ("ed-1", "EdDSA")]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# Values that land near the decision boundaries more often than uniform JSON would.
numeric_dates = st.sampled_from([T0 - 3600, T0 - LEEWAY - 1, T0 - LEEWAY, T0, T0 + LEEWAY, T0 + LEEWAY + 1, T0 + 300])
claim_values = json_values | numeric_dates | st.sampled_from([ISSUER, AUDIENCE, [AUDIENCE], "alice", "read:photos"])
header_values = json_values | st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "at+jwt", "JWT", "rsa-1"])
claim_names = st.sampled_from(
    ["iss", "aud", "exp", "nbf", "iat", "sub", "client_id", "scope", "scp", "jti", "typ", "token_use", "cnf", "at_hash"]
)
header_names = st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku", "jwk", "x5c", "cty"])

authorization_values = st.one_of(
    st.binary(max_size=64),
    st.text(st.characters(max_codepoint=0xFF), max_size=64).map(lambda text: text.encode("latin-1")),
    st.binary(max_size=64).map(lambda raw: b"Bearer " + raw),
    st.text(st.characters(max_codepoint=0x1F) | st.sampled_from(" \t\x7f"), max_size=16).map(
        lambda text: b"Bearer " + text.encode("latin-1") + b"abc"
    ),
    st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "DPoP", ""]).flatmap(
        lambda scheme: st.text(B64URL + "=.+/~", max_size=64).map(lambda t: f"{scheme} {t}".encode())
    ),
    st.integers(min_value=MAX_TOKEN_BYTES - 8, max_value=MAX_TOKEN_BYTES * 8).map(lambda n: b"Bearer " + b"A" * n),
)
header_names_variants = st.sampled_from([b"authorization", b"Authorization", b"AUTHORIZATION", b"x-authorization"])


# -- the fuzz tests ----------------------------------------------------------------------------------------


def test_valid_tokens_pass_the_same_checks(world: World) -> None:
    """Control: the issuer's real tokens are 200 on every route through the same checker (the oracle can say yes)."""
    for kid, _ in KEYS:
        token = world.issuer.token(kid, scope="read:photos write:transfers")
        world.active.add(token)
        for path in ("/me", "/photos", "/transfer"):
            check(world, bearer(token), path, expect=200)


def test_fuzzed_authorization_headers(world: World) -> None:
    """Arbitrary bytes, latin-1, control characters, huge and repeated Authorization headers: 400/401, never 500."""

    @FUZZ
    @given(
        values=st.lists(st.tuples(header_names_variants, authorization_values), min_size=0, max_size=4),
        path=st.sampled_from(["/me", "/photos", "/transfer", "/nowhere"]),
    )
    def run(values: list[tuple[bytes, bytes]], path: str) -> None:
        reply = check(world, values, path, expect=None)
        if reply.status == 503:
            # Never-seen opaque values past the first-sight introspection budget (the clock stands still).
            assert world.reasons[-1] == "introspection_unavailable"
        else:
            assert reply.status in (400, 401)

    run()


def test_fuzzed_token_segments(world: World) -> None:
    """Random base64url segments (and padding, '+', '/') joined by dots: refused, never 500, no key fetch storm."""
    segment = st.text(B64URL, min_size=0, max_size=40) | st.text(B64URL + "=+/", max_size=40)
    json_segment = st.dictionaries(header_names, header_values, max_size=4).map(
        lambda h: b64url(json.dumps(h).encode())
    )

    @FUZZ
    @given(parts=st.lists(segment | json_segment, min_size=1, max_size=6), path=st.sampled_from(["/me", "/transfer"]))
    def run(parts: list[str], path: str) -> None:
        check(world, bearer(".".join(parts)), path, expect=None)

    run()
    # The clock stands still: one fetch, then at most one unknown-kid refetch per cool-down (docs/ARCHITECTURE.md).
    assert world.issuer.jwks_calls <= 2


def test_fuzzed_signed_json(world: World) -> None:
    """Random JSON headers and claims signed by the issuer's real keys: exactly the oracle's status."""

    @FUZZ
    @given(
        key=st.sampled_from(KEYS),
        head_changes=st.dictionaries(header_names | st.text(max_size=6), header_values, max_size=3),
        claim_changes=st.dictionaries(claim_names | st.text(max_size=6), claim_values, max_size=4),
        dropped=st.lists(claim_names, max_size=2),
        path=st.sampled_from(["/me", "/photos"]),
    )
    def run(
        key: tuple[str, str],
        head_changes: dict[str, Any],
        claim_changes: dict[str, Any],
        dropped: list[str],
        path: str,
    ) -> None:
        kid, alg = key
        head = {"alg": alg, "typ": "at+jwt", "kid": kid, **head_changes}
        claims = {**world.issuer.claims(), **claim_changes}
        for name in dropped:
            claims.pop(name, None)
        body = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = jwt.get_algorithm_by_name(alg).sign(body.encode(), world.issuer.key(kid).private)
        token = f"{body}.{b64url(signature)}"
        if len(token) > MAX_TOKEN_BYTES:
            check(world, bearer(token), path, expect=None)
            return
        check(world, bearer(token), path, expect=expected_status(head, claims, key, path))

    before = world.statuses.copy()
    run()
    seen = world.statuses - before
    assert seen[200] > 0, "the generator reaches valid tokens, so the oracle's yes is tested too"
    assert seen[401] > 0


MUTATIONS = ["flip", "delete", "insert", "truncate", "swap", "duplicate", "case"]


def mutate(token: bytes, kind: str, position: int, value: int) -> bytes:
    """One edit of a valid token's bytes."""
    index = position % len(token)
    if kind == "flip":
        return token[:index] + bytes([token[index] ^ (1 << (value % 8))]) + token[index + 1 :]
    if kind == "delete":
        return token[:index] + token[index + 1 :]
    if kind == "insert":
        return token[:index] + bytes([value % 256]) + token[index:]
    if kind == "truncate":
        return token[:index]
    parts = token.split(b".")
    if kind == "swap":
        i, j = position % len(parts), value % len(parts)
        parts[i], parts[j] = parts[j], parts[i]
        return b".".join(parts)
    if kind == "duplicate":
        cut = value % (len(parts) + 1)
        return b".".join([*parts[:cut], parts[position % len(parts)], *parts[cut:]])
    return token[:index] + token[index : index + 1].swapcase() + token[index + 1 :]


def test_fuzzed_mutations_of_valid_tokens(world: World) -> None:
    """Bit flips, edits, truncation, segment swaps of valid tokens: refused unless the bytes are unchanged."""
    tokens = {kid: world.issuer.token(kid, scope="read:photos write:transfers").encode() for kid, _ in KEYS}
    world.active.update(token.decode() for token in tokens.values())

    @FUZZ
    @given(
        kid=st.sampled_from([kid for kid, _ in KEYS]),
        edits=st.lists(
            st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=3
        ),
        path=st.sampled_from(["/me", "/photos", "/transfer"]),
    )
    def run(kid: str, edits: list[tuple[str, int, int]], path: str) -> None:
        original = tokens[kid]
        mutated = original
        for kind, position, value in edits:
            mutated = mutate(mutated, kind, position, value) or b"x"
        # Only trailing spaces/tabs may be dropped (RFC 9110 §5.5 OWS after the field value): anything else,
        # leading whitespace included ("Bearer" 1*SP b64token, with one SP: RFC 6750 §2.1), is another token.
        unchanged = mutated.rstrip(b" \t") == original
        check(world, bearer(mutated), path, expect=200 if unchanged else None)

    before = world.statuses.copy()
    run()
    seen = world.statuses - before
    assert seen[200] > 0
    assert seen[400] + seen[401] > 0


def test_fuzzed_edits_of_valid_dpop_proofs(world: World) -> None:
    """Byte edits of a fresh valid DPoP proof for a DPoP-bound token (RFC 9449 §4.3): unchanged bytes (but
    for surrounding whitespace) are 200 once, then a replay (§11.1); anything else is 401 invalid_dpop_proof
    on the DPoP challenge, the same twice, echoing neither the proof nor its parts."""
    key = DPoPKey.generate("ES256")
    token = world.issuer.token("ec-1", scope="read:photos", cnf={"jkt": key.thumbprint})
    authorization = (b"authorization", b"DPoP " + token.encode())

    @FUZZ
    @given(
        edits=st.lists(
            st.tuples(st.sampled_from([*MUTATIONS, "whitespace"]), st.integers(0, 4096), st.integers(0, 255)),
            min_size=1,
            max_size=3,
        ),
        path=st.sampled_from(["/me", "/photos"]),
    )
    def run(edits: list[tuple[str, int, int]], path: str) -> None:
        url = f"https://api.example.com{path}"
        original = key.proof("GET", url, access_token=token, iat=int(world.issuer.clock())).encode()
        edited = original
        for kind, position, value in edits:
            edited = b" " + edited + b"\t" if kind == "whitespace" else mutate(edited, kind, position, value) or b"x"
        headers = [authorization, (b"dpop", edited)]
        first = world.send(headers, path)
        first_reason = world.reasons[-1]
        second = world.send(headers, path)
        world.statuses[first.status] += 1
        if edited.strip(b" \t") == original:
            assert (first.status, first_reason) == (200, "ok"), (first.status, first.body)
            assert (second.status, world.reasons[-1]) == (401, "dpop_replay")
            refusals = [second]
        else:
            assert first.status == 401, (first.status, first.body)
            assert (first.status, first.body) == (second.status, second.body), "same input, another decision"
            refusals = [first]
        for reply in refusals:
            assert json.loads(reply.body)["error"] == "invalid_dpop_proof"
            (challenge,) = reply.header(b"www-authenticate")
            bearer_part, dpop_part = challenge.split(b', DPoP realm="')
            assert bearer_part.startswith(b'Bearer realm="')
            assert b"error=" not in bearer_part
            assert b'error="invalid_dpop_proof"' in dpop_part
            assert b"\r" not in challenge
            assert b"\n" not in challenge
            for value in (edited, *original.split(b".")):
                echo_free(world, value, reply)

    before = world.statuses.copy()
    run()
    seen = world.statuses - before
    assert seen[200] > 0, "the generator reaches unchanged proofs, so the yes is tested too"
    assert seen[401] > 0
