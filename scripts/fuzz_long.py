"""The long fuzz run: at least a million generated inputs against a real Starlette app guarded by TokenGuard.

    python scripts/fuzz_long.py [--inputs N] [--seed S] [--workers W]

Not part of the test suite (``tests/test_fuzz.py`` is the short run in CI, with hypothesis). This one
uses a fast seeded generator of its own, mixing the same families:

- ``header``:   raw Authorization header lists: arbitrary bytes, latin-1, control characters, other
                schemes, huge values, several headers;
- ``segments``: random base64url segments (with padding, '+', '/') and random JSON headers, dot-joined;
- ``signed``:   random JSON headers and claims signed by the issuer's real RSA/EC/Ed25519 keys, judged
                by a reference oracle of DESIGN.md §2.3; plus raw JSON texts no strict parser accepts;
- ``mutation``: bit flips, edits, truncation, segment swaps and duplication of valid tokens.

Properties checked for every input, each sent twice: status 200 only when the oracle says the token is
valid (and then exactly 200, or 403 for a missing scope), otherwise 400/401/403/503; never 500; a JSON
object body without traceback text; a one-line challenge on 400/401/403 and Retry-After on 503; the raw
token never echoed; the same decision both times. The app is driven with raw ASGI messages (no HTTP
client in the loop); the issuer's metadata, JWKS and RFC 7662 endpoint are an ``httpx.MockTransport``
passed as ``http_client``. The work is split over ``--workers`` processes (default: one per CPU).

Prints the inputs tried, the decisions by status and family, the failures (must be 0) and the time;
exits 1 if any input failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard, require_scopes, sensitive

ISSUER = "https://idp.example.com"
AUDIENCE = "https://api.example.com"
CLIENT_ID, CLIENT_SECRET = "photos-api", "fuzz-secret"
NOW = 1_800_000_000.0
LEEWAY = 30.0
MAX_TOKEN_BYTES = 16 * 1024
REFUSALS = frozenset({400, 401, 403, 503})
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FAMILIES = ("header", "segments", "signed", "mutation")
PATHS = ("/me", "/photos", "/transfer")
TRACEBACK_MARKERS = (b"Traceback", b'File "', b"Error:")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the app and its issuer -------------------------------------------------------------------------


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
class Key:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]


def make_keys() -> list[Key]:
    """The fixed key pool: one RSA, one EC P-256 and one Ed25519 key, with their public JWKs."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    made: list[tuple[str, str, Any, str]] = [
        ("rsa-1", "RS256", rsa_key, RSAAlgorithm.to_jwk(rsa_key.public_key())),
        ("ec-1", "ES256", ec_key, ECAlgorithm.to_jwk(ec_key.public_key())),
        ("ed-1", "EdDSA", ed_key, OKPAlgorithm.to_jwk(ed_key.public_key())),
    ]
    return [Key(kid, alg, private, {**json.loads(jwk), "kid": kid, "use": "sig"}) for kid, alg, private, jwk in made]


class FakeIssuer:
    """The issuer's metadata, JWKS and introspection endpoint as an ``httpx.MockTransport`` handler."""

    def __init__(self, keys: list[Key]) -> None:
        self.jwks = {"keys": [key.jwk for key in keys]}
        self.active: dict[str, dict[str, Any]] = {}
        self.foreign_hosts = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "idp.example.com":
            self.foreign_hosts += 1
            return httpx.Response(404)
        path = request.url.path
        if path == "/.well-known/oauth-authorization-server":
            metadata = {
                "issuer": ISSUER,
                "jwks_uri": f"{ISSUER}/jwks",
                "introspection_endpoint": f"{ISSUER}/introspect",
            }
            return httpx.Response(200, json=metadata)
        if path == "/jwks":
            return httpx.Response(200, json=self.jwks, headers={"Cache-Control": "max-age=3600"})
        if path == "/introspect":
            token = dict(parse_qsl(request.content.decode("ascii"))).get("token", "")
            return httpx.Response(200, json=self.active.get(token, {"active": False}))
        return httpx.Response(404)


def build_app(issuer: FakeIssuer) -> Starlette:
    app = Starlette(routes=[Route("/me", me), Route("/photos", photos), Route("/transfer", transfer)])
    client = httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle))
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=AUDIENCE,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        http_client=client,
        clock=lambda: NOW,
    )
    return app


# -- one raw ASGI request -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def asgi_get(app: Any, headers: list[tuple[bytes, bytes]], path: str) -> Reply:
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
    status = 0
    response_headers: list[tuple[bytes, bytes]] = []
    body = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, response_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers = [(bytes(k), bytes(v)) for k, v in message["headers"]]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return Reply(status, response_headers, bytes(body))


# -- the oracle -------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def expected_status(head: dict[str, Any], claims: dict[str, Any], key: Key, path: str) -> int | None:
    """What DESIGN.md §2.3 says a token signed by ``key`` with this header and claims gets; None: a refusal."""
    if head.get("alg") != key.alg or key.alg not in ALGORITHMS or "crit" in head or head.get("b64", True) is not True:
        return None
    typ = head.get("typ", "jwt")
    if not isinstance(typ, str) or typ.lower() not in ("jwt", "at+jwt", "application/at+jwt"):
        return None
    if "kid" in head and head["kid"] != key.kid:
        return None
    if claims.get("iss") != ISSUER:
        return None
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_number(claims[name]):
            return None
    if "exp" not in claims or claims["exp"] + LEEWAY <= NOW:
        return None
    if any(name in claims and claims[name] > NOW + LEEWAY for name in ("nbf", "iat")):
        return None
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences) or AUDIENCE not in audiences:
        return None
    # Tokens of another kind and sender-constrained tokens are never bearer access tokens.
    typ_claim, use, cnf = claims.get("typ"), claims.get("token_use"), claims.get("cnf")
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
    elif isinstance(scope, str):
        scopes = set(scope.split())
    elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scopes = set(scope)
    else:
        return None
    if path == "/photos" and "read:photos" not in scopes:
        return 403
    if path == "/transfer":
        return None  # introspection knows only the registered pool, so a generated token is inactive: 401
    return 200


# -- the generator ----------------------------------------------------------------------------------------

DATES = [NOW - 3600, NOW - LEEWAY - 1, NOW - LEEWAY, NOW, NOW + LEEWAY, NOW + LEEWAY + 1, NOW + 300, 1e308, -1e308]
CLAIM_NAMES = ["iss", "aud", "exp", "nbf", "iat", "sub", "client_id", "scope", "scp", "jti", "typ", "token_use", "cnf"]
HEADER_NAMES = ["alg", "typ", "kid", "crit", "b64", "jku", "jwk", "x5c", "x5u", "cty"]
HEADER_VALUES: list[Any] = [
    "RS256", "ES256", "EdDSA", "PS256", "none", "None", "HS256", "at+jwt", "JWT", "application/at+jwt",
    "dpop+jwt", "rsa-1", "ec-1", "ed-1", "../../etc/passwd", "https://attacker.example/jwks", ["exp"], [], True, None,
]  # fmt: skip
CLAIM_VALUES: list[Any] = [
    ISSUER, ISSUER + "/", AUDIENCE, [AUDIENCE], [AUDIENCE, 7], "alice", "", "read:photos", ["read:photos"],
    "read:photos write:transfers", "1800000300", True, None, [], {}, 2**64, -(2**53), "ID", "Bearer", "access",
    {"jkt": "x"},
]  # fmt: skip
RAW_CLAIM_TEXTS = [
    '{"sub": "a", "sub": "b"}',
    '{"exp": NaN}',
    '{"exp": Infinity}',
    '{"exp": 1e400}',
    '{"exp": ' + "9" * 400 + "}",
    '{"x": ' + "[" * 40 + "]" * 40 + "}",
    '["not", "an", "object"]',
    '"a string"',
    "null",
    '{"iss": "https://idp.example.com"} trailing',
    "\ufeff{}",
]
SCHEMES = [b"Bearer", b"bearer", b"BEARER", b"Basic", b"DPoP", b"", b"Bearer\t", b"Bearer  "]
HEADER_NAMES_RAW = [b"authorization", b"authorization", b"authorization", b"Authorization", b"AUTHORIZATION"]
CONTROL_BYTES = [*range(32), 127, 9, 32]
MUTATIONS = ("flip", "delete", "insert", "truncate", "swap", "duplicate", "case", "append-ws", "prepend-ws")


@dataclass
class Case:
    family: str
    headers: list[tuple[bytes, bytes]]
    path: str
    expect: int | None  # the one right status, or None for "any refusal"
    allowed: frozenset[int] = REFUSALS


class Generator:
    """A fast, seeded generator of fuzz cases (``random.Random``, no hypothesis)."""

    def __init__(self, seed: int, keys: list[Key], valid: list[tuple[str, Key]]) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test inputs, not secrets
        self.keys = keys
        self.valid = valid
        # RSA signing costs ~1 ms: RSA-signed generated tokens come from a pool refreshed slowly.
        self._rsa_pool: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def case(self) -> Case:
        family = FAMILIES[self.rng.randrange(len(FAMILIES))]
        path = PATHS[self.rng.randrange(len(PATHS))]
        return getattr(self, f"_{family}")(path)  # type: ignore[no-any-return]

    # -- header family --

    def _header(self, path: str) -> Case:
        rng = self.rng
        headers = [
            (HEADER_NAMES_RAW[rng.randrange(5)], self._authorization_value())
            for _ in range(rng.choice((0, 1, 1, 1, 2, 3)))
        ]
        return Case("header", headers, path, None, frozenset({400, 401}))

    def _authorization_value(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(7)
        if kind == 0:
            return rng.randbytes(rng.randrange(80))
        if kind == 1:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(40))).decode("latin-1").encode("latin-1")
        if kind == 2:
            return b"Bearer " + rng.randbytes(rng.randrange(80))
        if kind == 3:
            controls = bytes(rng.choice(CONTROL_BYTES) for _ in range(rng.randrange(1, 8)))
            return b"Bearer " + controls + b"abc"
        if kind == 4:
            size = rng.choice(
                (MAX_TOKEN_BYTES - 1, MAX_TOKEN_BYTES, MAX_TOKEN_BYTES + 1, rng.randrange(20_000, 200_000))
            )
            return b"Bearer " + b"A" * size
        chars = B64URL + "=.+/~"
        text = "".join(rng.choice(chars) for _ in range(rng.randrange(64)))
        return rng.choice(SCHEMES) + b" " + text.encode()

    # -- segments family --

    def _segments(self, path: str) -> Case:
        rng = self.rng
        parts = []
        for _ in range(rng.randrange(1, 7)):
            if rng.random() < 0.3:
                head = {rng.choice(HEADER_NAMES): rng.choice(HEADER_VALUES) for _ in range(rng.randrange(4))}
                parts.append(b64url(json.dumps(head).encode()))
            else:
                chars = B64URL if rng.random() < 0.7 else B64URL + "=+/"
                parts.append("".join(rng.choice(chars) for _ in range(rng.randrange(48))))
        return Case("segments", bearer(".".join(parts)), path, None)

    # -- signed family --

    def _json_value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth >= 3 or roll < 0.7:
            return self._scalar()
        if roll < 0.85:
            return [self._json_value(depth + 1) for _ in range(rng.randrange(4))]
        return {self._text(6): self._json_value(depth + 1) for _ in range(rng.randrange(4))}

    def _scalar(self) -> Any:
        rng = self.rng
        kind = rng.randrange(8)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return rng.randrange(-(2**70), 2**70)
        if kind == 3:
            return rng.uniform(-1e20, 1e20)
        if kind == 4:
            return rng.choice(DATES)
        if kind == 5:
            return rng.choice(CLAIM_VALUES)
        return self._text(12)

    def _text(self, limit: int) -> str:
        rng = self.rng
        return "".join(
            chr(rng.choice((rng.randrange(32, 127), rng.randrange(0, 0x2FFF)))) for _ in range(rng.randrange(limit))
        )

    def _signed(self, path: str) -> Case:
        rng = self.rng
        key = self.keys[rng.randrange(len(self.keys))]
        if key.alg == "RS256" and self._rsa_pool and rng.random() < 0.97:
            pooled, pooled_head, pooled_claims = self._rsa_pool[rng.randrange(len(self._rsa_pool))]
            return Case("signed", bearer(pooled), path, expected_status(pooled_head, pooled_claims, key, path))
        head: dict[str, Any] = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid}
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            name = rng.choice(HEADER_NAMES) if rng.random() < 0.8 else self._text(6)
            head[name] = rng.choice(HEADER_VALUES) if rng.random() < 0.6 else self._json_value()
        if rng.random() < 0.2:
            head.pop(rng.choice(("typ", "kid")), None)
        claims = default_claims(rng)
        for _ in range(rng.choice((0, 1, 1, 2, 3, 4))):
            name = rng.choice(CLAIM_NAMES) if rng.random() < 0.8 else self._text(6)
            claims[name] = self._json_value() if rng.random() < 0.5 else self._scalar()
        for _ in range(rng.choice((0, 0, 0, 1, 2))):
            claims.pop(rng.choice(CLAIM_NAMES), None)
        if rng.random() < 0.05:
            body_text = rng.choice(RAW_CLAIM_TEXTS)
            return Case("signed", bearer(sign(key, json.dumps(head), body_text)), path, None)
        token = sign(key, json.dumps(head), json.dumps(claims))
        if key.alg == "RS256":
            self._rsa_pool.append((token, head, claims))
            if len(self._rsa_pool) > 4096:
                self._rsa_pool.pop(rng.randrange(len(self._rsa_pool)))
        expect = expected_status(head, claims, key, path) if len(token) <= MAX_TOKEN_BYTES else None
        return Case("signed", bearer(token), path, expect)

    # -- mutation family --

    def _mutation(self, path: str) -> Case:
        rng = self.rng
        original_text, _ = self.valid[rng.randrange(len(self.valid))]
        original = original_text.encode()
        mutated = original
        for _ in range(rng.randrange(1, 4)):
            mutated = mutate(mutated, rng.choice(MUTATIONS), rng.randrange(4096), rng.randrange(256)) or b"x"
        # Only trailing spaces/tabs may be dropped (RFC 9110 §5.5 OWS after the field value): anything else,
        # leading whitespace included ("Bearer" 1*SP b64token, with one SP: RFC 6750 §2.1), is another token.
        expect = 200 if mutated.rstrip(b" \t") == original else None
        return Case("mutation", [(b"authorization", b"Bearer " + mutated)], path, expect)


def default_claims(rng: random.Random) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "photos-app",
        "scope": "read:photos write:transfers",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": f"{rng.getrandbits(64):016x}",
    }


def sign(key: Key, head_text: str, body_text: str) -> str:
    signing_input = f"{b64url(head_text.encode())}.{b64url(body_text.encode('utf-8', 'surrogatepass'))}"
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + token.encode("latin-1", "replace"))]


def mutate(token: bytes, kind: str, position: int, value: int) -> bytes:
    """One edit of a valid token's bytes."""
    index = position % len(token)
    if kind == "flip":
        return token[:index] + bytes([token[index] ^ (1 << (value % 8))]) + token[index + 1 :]
    if kind == "delete":
        return token[:index] + token[index + 1 :]
    if kind == "insert":
        return token[:index] + bytes([value]) + token[index:]
    if kind == "truncate":
        return token[:index]
    if kind == "append-ws":
        return token + b" \t"[value % 2 :]
    if kind == "prepend-ws":
        return b" \t"[value % 2 :] + token
    parts = token.split(b".")
    if kind == "swap":
        i, j = position % len(parts), value % len(parts)
        parts[i], parts[j] = parts[j], parts[i]
        return b".".join(parts)
    if kind == "duplicate":
        cut = value % (len(parts) + 1)
        return b".".join([*parts[:cut], parts[position % len(parts)], *parts[cut:]])
    return token[:index] + token[index : index + 1].swapcase() + token[index + 1 :]


# -- checking one case ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_family: Counter[str] = field(default_factory=Counter)
    family_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: int = 0
    samples: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.by_family.update(other.by_family)
        self.family_status.update(other.family_status)
        self.failures += other.failures
        self.samples.extend(other.samples[: max(0, 20 - len(self.samples))])


def problems(case: Case, first: Reply, second: Reply, boilerplate: bytes) -> list[str]:
    """Every property this case's replies break (empty when all hold)."""
    found: list[str] = []
    if (first.status, first.body) != (second.status, second.body):
        found.append(f"nondeterministic: {first.status} then {second.status}")
    if case.expect is not None and first.status != case.expect:
        found.append(f"expected {case.expect}, got {first.status}")
    if case.expect is None and first.status not in case.allowed:
        found.append(f"expected one of {sorted(case.allowed)}, got {first.status}")
    try:
        document = json.loads(first.body)
        if not isinstance(document, dict):
            found.append("body is not a JSON object")
    except ValueError:
        found.append("body is not JSON")
    if any(marker in first.body for marker in TRACEBACK_MARKERS):
        found.append("traceback text in the body")
    names = [name.lower() for name, _ in first.headers]
    if first.status in (400, 401, 403):
        challenges = [value for name, value in first.headers if name.lower() == b"www-authenticate"]
        if (
            len(challenges) != 1
            or not challenges[0].startswith(b'Bearer realm="')
            or b"\r" in challenges[0]
            or b"\n" in challenges[0]
        ):
            found.append(f"bad challenge {challenges!r:.120}")
    if first.status == 503 and b"retry-after" not in names:
        found.append("503 without Retry-After")
    for _, value in case.headers:
        for secret in (value, value.split(b" ", 1)[-1].strip()):
            echoed = secret in first.body or any(secret in header for _, header in first.headers)
            if echoed and len(secret) >= 16 and secret not in boilerplate:
                found.append("the token is echoed")
    return found


async def run_cases(seed: int, count: int) -> Tally:
    keys = make_keys()
    issuer = FakeIssuer(keys)
    app = build_app(issuer)
    valid: list[tuple[str, Key]] = []
    rng = random.Random(seed ^ 0x5EED)  # noqa: S311 - reproducible test inputs, not secrets
    for key in keys:
        for _ in range(4):
            claims = default_claims(rng)
            token = sign(key, json.dumps({"alg": key.alg, "typ": "at+jwt", "kid": key.kid}), json.dumps(claims))
            issuer.active[token] = {"active": True, **claims}
            valid.append((token, key))
    tally = Tally()
    # Control: the pool's tokens are 200 everywhere, so the properties are not vacuous.
    for token, _ in valid:
        for path in PATHS:
            reply = await asgi_get(app, bearer(token), path)
            if reply.status != 200:
                raise SystemExit(f"control failed: a valid token got {reply.status} on {path}: {reply.body!r}")
    boilerplate = await reference_texts(app, valid[0][0])
    generator = Generator(seed, keys, valid)
    for _ in range(count):
        case = generator.case()
        try:
            first = await asgi_get(app, case.headers, case.path)
            second = await asgi_get(app, case.headers, case.path)
            found = problems(case, first, second, boilerplate)
        except Exception as exc:  # an exception escaping the app is a failure, recorded with its input
            first = Reply(0, [], b"")
            found = [f"exception {type(exc).__name__}: {exc}"[:200]]
        tally.inputs += 1
        tally.requests += 2
        tally.statuses[first.status] += 1
        tally.by_family[case.family] += 1
        tally.family_status[(case.family, first.status)] += 1
        if found:
            tally.failures += 1
            if len(tally.samples) < 20:
                tally.samples.append(f"[{case.family} {case.path}] {'; '.join(found)} <- {case.headers!r:.300}")
    if issuer.foreign_hosts:
        tally.failures += 1
        tally.samples.append(f"{issuer.foreign_hosts} requests went to a host other than the issuer")
    return tally


async def reference_texts(app: Any, valid_token: str) -> bytes:
    """What the guard says whatever the input (header values, bodies): a value found in it is not an echo."""
    texts: list[bytes] = []
    for headers in ([], [(b"authorization", b"Bearer ")], bearer("x" * 20), bearer(valid_token)):
        for path in PATHS:
            reply = await asgi_get(app, headers, path)
            texts += [reply.body, *(value for _, value in reply.headers)]
    return b"\n".join(texts)


def worker(args: tuple[int, int]) -> Tally:
    seed, count = args
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run_cases(seed, count))
    finally:
        loop.close()


# -- the command -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs to generate (default 1 000 000)")
    parser.add_argument("--seed", type=int, default=20_250_601, help="seed of the generator (default 20250601)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)")
    args = parser.parse_args(argv)
    workers = max(1, min(args.workers, args.inputs))
    shares = [args.inputs // workers + (1 if index < args.inputs % workers else 0) for index in range(workers)]
    print(f"tokenguard long fuzz run: {args.inputs:,} inputs, seed {args.seed}, {workers} worker(s)", flush=True)
    started = time.perf_counter()
    jobs = [(args.seed + index, share) for index, share in enumerate(shares)]
    run: Callable[[tuple[int, int]], Tally] = worker
    if workers == 1:
        results = [run(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(run, jobs)
    elapsed = time.perf_counter() - started
    total = Tally()
    for result in results:
        total.merge(result)
    print(f"inputs tried: {total.inputs:,} (requests sent: {total.requests:,}, each input twice)")
    print("decisions by status: " + ", ".join(f"{status}: {n:,}" for status, n in sorted(total.statuses.items())))
    for family in FAMILIES:
        line = ", ".join(f"{s}: {n:,}" for (f, s), n in sorted(total.family_status.items()) if f == family)
        print(f"  {family:<9} {total.by_family[family]:>9,}  ({line})")
    print(f"failures: {total.failures}")
    for sample in total.samples:
        print(f"  {sample}")
    print(f"time: {elapsed:.1f} s ({total.inputs / elapsed:,.0f} inputs/s)")
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
