"""The long fuzz run: at least a million generated inputs against real Starlette apps guarded by TokenGuard.

    python scripts/fuzz_long.py [--inputs N] [--seed S] [--workers W] [--families a,b,...]

Not part of the test suite (``tests/test_fuzz.py`` is the short run in CI, with hypothesis). This one
uses a fast seeded generator of its own. Bearer families, against an app with default options:

- ``header``:   raw Authorization header lists: arbitrary bytes, latin-1, control characters, other
                schemes, huge values, several headers;
- ``segments``: random base64url segments (with padding, '+', '/') and random JSON headers, dot-joined;
- ``signed``:   random JSON headers and claims signed by the issuer's real RSA/EC/Ed25519 keys, judged
                by a reference oracle of DESIGN.md §2.3; plus raw JSON texts no strict parser accepts;
- ``mutation``: bit flips, edits, truncation, segment swaps and duplication of valid tokens.

Sender-constrained families (RFC 9449 DPoP, RFC 8705 mTLS), against three more guards: ``dpop``
(``trusted_proxies``, ``client_certificate_header="x-forwarded-client-cert"``), ``nonce``
(``dpop_nonce=True``, ``public_url``, a PEM certificate header) and ``strict`` (``dpop="required"``,
a replay store of three entries, so valid proofs soon get 503 ``replay_store_unavailable``); each
has a ``@sender_constrained`` route besides the three above. Tokens carry ``cnf`` variants (``jkt``,
``x5t#S256``, both, and malformed ones), signed by the issuer's keys; proofs are made with
``DPoPKey`` (ES256/384/512, Ed25519, Ed448, PS256, RS256) or signed here from edited JSON:

- ``dpop-valid``:  ``Authorization: DPoP`` with one valid proof for the exact method and URL;
- ``dpop-bytes``:  byte edits of one part of a valid proof (or of the whole: dots, whitespace, size);
- ``dpop-json``:   edited proof headers and claims, re-signed: swapped types, huge numbers, NaN-like
                   strings, missing members, wrong typ/alg, private or mismatched jwk members,
                   curve/kty confusion, oversized values, unicode and control characters in
                   htu/htm/jti/nonce; raw JSON texts (duplicate members, NaN, 1e400, deep nesting, ...);
- ``dpop-mix``:    zero, one or many DPoP headers, DPoP headers next to Bearer, bound tokens as Bearer,
                   every ``cnf`` variant, proofs of another key or for another token, scheme forms;
- ``forwarded``:   Host, Forwarded and X-Forwarded-* fields, well-formed or junk, from trusted and
                   untrusted peers, with proofs for the URL the guard must build (or another one);
- ``client-cert``: XFCC (odd quoting, many elements, huge values, junk hashes and PEM) and PEM
                   header values, the ASGI TLS extension, with certificate-bound tokens.

Each sender input is judged by a reference oracle of README "Sender-constrained tokens" and RFC 9449
§4.3 / RFC 8705 §3 (what the URL is, which certificate the guard sees, whether the proof is valid),
which gives the one right status or, for junk it cannot decide, the set of possible ones.

Properties checked for every input, each sent twice: the status the oracle allows (200 only for a
valid token, with its proof for a bound one; 403 for a missing scope), otherwise 400/401/403/503;
never 500; a JSON object body without traceback text; on 400/401/403 exactly one WWW-Authenticate
field, one line, holding exactly the ``Bearer`` and ``DPoP`` challenges, each of well-formed
quoted auth-params (realm first, known names only, an error code from RFC 6750/9449 on at most
one of them — the DPoP one when the client used that scheme — and the same as the body's);
Retry-After on 503, and from a sender guard a 503 only for ``replay_store_unavailable``; a
DPoP-Nonce field exactly with ``use_dpop_nonce``; the raw token, the proof, its members and the
request's header values never echoed (except the server's own nonce); the same decision both times
— but for a DPoP proof that was accepted (or consumed before a later refusal), whose second use must
be 401 ``dpop_replay`` (decision reasons come from ``on_decision``).

The apps are driven with raw ASGI messages (no HTTP client in the loop); the issuer's metadata, JWKS
and RFC 7662 endpoint are an ``httpx.MockTransport`` passed as ``http_client``. The work is split over
``--workers`` processes (default: one per CPU).

Prints the inputs tried, the decisions by status and family, the sender families' decision reasons,
the failures (must be 0) and the time; exits 1 if any input failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard, require_scopes, sender_constrained, sensitive
from tokenguard._dpop import DPoPNonces
from tokenguard.dpop import DPoPKey
from tokenguard.store import MemoryStore

ISSUER = "https://idp.example.com"
AUDIENCE = "https://api.example.com"
CLIENT_ID, CLIENT_SECRET = "photos-api", "fuzz-secret"
NOW = 1_800_000_000.0
LEEWAY = 30.0
MAX_TOKEN_BYTES = 16 * 1024
REFUSALS = frozenset({400, 401, 403, 503})
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
BEARER_FAMILIES = ("header", "segments", "signed", "mutation")
SENDER_FAMILIES = ("dpop-valid", "dpop-bytes", "dpop-json", "dpop-mix", "forwarded", "client-cert")
FAMILIES = (*BEARER_FAMILIES, *SENDER_FAMILIES)
PATHS = ("/me", "/photos", "/transfer")
TRACEBACK_MARKERS = (b"Traceback", b'File "', b"Error:")
# The first-sight budget (introspections of never-seen opaque values) is a token bucket refilled by the
# clock; the clock here never moves, so the default burst of 20 would turn every later opaque value into
# a 503. A burst no run exhausts keeps the decisions the ones the token deserves.
FIRST_SIGHT_BURST = 2**40


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


@sender_constrained
async def pay(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "bound": request.auth.binding.method})


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
        introspection_first_sight_burst=FIRST_SIGHT_BURST,
        clock=lambda: NOW,
    )
    return app


# -- sender-constrained tokens: the guards, the client keys, the certificates, the tokens ----------------

API = "https://api.example.com"
SENDER_PATHS = ("/me", "/photos", "/transfer", "/pay")
ROUTE_SCOPES = {"/photos": "read:photos", "/transfer": "write:transfers"}
TRUSTED_PROXIES = ("10.0.0.0/8", "2001:db8::/32")
TRUSTED_PEERS = ("10.1.2.3", "10.200.0.1", "::ffff:10.0.0.9", "2001:db8::7")
UNTRUSTED_PEERS: tuple[str | None, ...] = ("203.0.113.9", "11.0.0.1", "2001:db9::1", "::ffff:11.0.0.1", None)
NONCE_SECRET = bytes(range(40, 80))
XFCC = b"x-forwarded-client-cert"
PEM_HEADER = b"x-ssl-client-cert"
# RFC 9449 §4.3 with the guard's defaults: the algorithm allow-list (README), the proof size cap (8 KiB,
# tokenguard._dpop), the iat window (dpop_iat_window 60 s + leeway 30 s), the private JWK members
# (RFC 7517/7518/8037), NQCHAR (§8.1).
DPOP_ALGS = frozenset({"ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA"})
MAX_PROOF_BYTES = 8192
IAT_SPAN = 60.0 + LEEWAY
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
NQCHAR = frozenset(chr(code) for code in range(0x21, 0x7F)) - {'"', "\\"}
EC_CURVE_OF = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
#: What the generator cannot decide (a junk URL, a junk certificate header): the oracle then allows
#: every status the input could get.
UNKNOWN = "<unknown>"


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: A member left out (a token without ``cnf``, a proof without ``jti``).
ABSENT: Any = _Absent()


@dataclass
class SenderApp:
    """One guard of the sender-constrained families, and what the oracle must know of its options."""

    name: str
    app: Any
    reasons: list[str]  # the decision reasons of the last request, from the guard's on_decision hook
    nonces: frozenset[str] = frozenset()  # the nonces a proof must carry (empty: none is needed)
    current_nonce: str | None = None
    public_url: str | None = None
    trusted: bool = False  # trusted_proxies set: a trusted peer's forwarded headers name the URL
    cert_header: bytes | None = None
    required: bool = False  # dpop="required"
    limited_store: bool = False  # a replay store so small that a valid proof may get 503


def build_sender_apps(issuer: FakeIssuer) -> dict[str, SenderApp]:
    def build(name: str, **options: Any) -> SenderApp:
        reasons: list[str] = []
        app = Starlette(
            routes=[Route("/me", me), Route("/photos", photos), Route("/transfer", transfer), Route("/pay", pay)]
        )
        client = httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle))
        app.add_middleware(
            TokenGuard,
            issuer=ISSUER,
            audience=AUDIENCE,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            http_client=client,
            introspection_first_sight_burst=FIRST_SIGHT_BURST,
            on_decision=lambda event: reasons.append(str(event.reason)),
            clock=lambda: NOW,
            **options,
        )
        return SenderApp(name, app, reasons)

    def roomy() -> MemoryStore:
        # The clock never moves, so no proof ever leaves the store: room for every proof of a long run.
        return MemoryStore(max_entries=10**7, clock=lambda: NOW)

    dpop = build(
        "dpop",
        trusted_proxies=list(TRUSTED_PROXIES),
        client_certificate_header=XFCC.decode(),
        replay_store=roomy(),
    )
    dpop.trusted, dpop.cert_header = True, XFCC
    nonce = build(
        "nonce",
        dpop_nonce=True,
        dpop_nonce_secret=NONCE_SECRET,
        public_url=API,
        trusted_proxies=list(TRUSTED_PROXIES),
        client_certificate_header=PEM_HEADER.decode(),
        replay_store=roomy(),
    )
    current = DPoPNonces(NONCE_SECRET, clock=lambda: NOW).current()
    previous = DPoPNonces(NONCE_SECRET, clock=lambda: NOW - 300).current()  # the last window's: still good
    nonce.nonces, nonce.current_nonce = frozenset({current, previous}), current
    nonce.public_url, nonce.trusted, nonce.cert_header = API, True, PEM_HEADER
    strict = build("strict", dpop="required", replay_store=MemoryStore(max_entries=3, clock=lambda: NOW))
    strict.required, strict.limited_store = True, True
    return {"dpop": dpop, "nonce": nonce, "strict": strict}


@dataclass(frozen=True)
class ProofKey:
    """A client's DPoP key: the ``DPoPKey`` that makes valid proofs, and its private key to sign edited ones."""

    name: str
    alg: str
    private: Any
    client: DPoPKey
    jwk: dict[str, str]
    thumbprint: str


def rfc7638(jwk: dict[str, str]) -> str:
    """RFC 7638 §3 thumbprint, computed here independently of the library."""
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def make_proof_keys() -> list[ProofKey]:
    made: list[tuple[str, str, Any]] = [
        ("es256", "ES256", ec.generate_private_key(ec.SECP256R1())),
        ("es384", "ES384", ec.generate_private_key(ec.SECP384R1())),
        ("es512", "ES512", ec.generate_private_key(ec.SECP521R1())),
        ("ed25519", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("ed448", "EdDSA", ed448.Ed448PrivateKey.generate()),
        ("ps256", "PS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("rs256", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ]
    keys = []
    for name, alg, private in made:
        client = DPoPKey(private, alg)
        jwk = client.public_jwk
        if rfc7638(jwk) != client.thumbprint:
            raise SystemExit(f"control failed: DPoPKey's thumbprint of {name} is not RFC 7638's")
        keys.append(ProofKey(name, alg, private, client, jwk, client.thumbprint))
    return keys


@dataclass(frozen=True)
class Cert:
    name: str
    pem: str
    der: bytes
    x5t: str  # RFC 8705 §3.1: base64url SHA-256 of the DER
    hex: str  # Envoy's XFCC Hash: hex SHA-256 of the DER


def make_cert(name: str, key: Any) -> Cert:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    made = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=9000))
        .sign(key, hashes.SHA256())
    )
    der = made.public_bytes(serialization.Encoding.DER)
    pem = made.public_bytes(serialization.Encoding.PEM).decode("ascii")
    digest = hashlib.sha256(der).digest()
    return Cert(name, pem, der, b64url(digest), digest.hex())


@dataclass(frozen=True)
class PoolToken:
    """An access token of the sender families' pool: valid but for its ``cnf``, which the oracle judges."""

    text: str
    variant: str
    cnf: Any  # the cnf claim, or ABSENT
    scopes: frozenset[str]
    key: ProofKey


def cnf_variants(key: ProofKey, other: ProofKey, cert: Cert, other_cert: Cert) -> dict[str, Any]:
    t = key.thumbprint
    return {
        "jkt": {"jkt": t},
        "jkt+x5t": {"jkt": t, "x5t#S256": cert.x5t},
        "jkt+x5t-other": {"jkt": t, "x5t#S256": other_cert.x5t},
        "jkt-other-key": {"jkt": other.thumbprint},
        "jkt-extra-member": {"jkt": t, "kid": "k1"},
        "jkt-upper-name": {"JKT": t},
        "jkt-list": {"jkt": [t]},
        "jkt-int": {"jkt": 7},
        "jkt-null": {"jkt": None},
        "jkt-empty": {"jkt": ""},
        "jkt-long": {"jkt": t * 4},
        "jkt-padded": {"jkt": t + "="},
        "jkt-nested": {"jkt": {"jkt": t}},
        "cnf-string": t,
        "cnf-list": [t],
        "cnf-jwk": {"jwk": key.jwk},
        "x5t": {"x5t#S256": cert.x5t},
        "x5t-other": {"x5t#S256": other_cert.x5t},
        "x5t-int": {"x5t#S256": 1},
        "cnf-empty": {},
        "cnf-null": None,
        "none": ABSENT,
    }


SCOPED_VARIANTS = {"jkt-noscope": frozenset(), "jkt-read": frozenset({"read:photos"})}


def mint_sender_tokens(
    issuer: FakeIssuer, issuer_keys: list[Key], keys: list[ProofKey], certs: dict[str, Cert], rng: random.Random
) -> dict[tuple[str, str], PoolToken]:
    """Every cnf variant for every proof key, signed by the issuer's keys and known to its introspection."""
    tokens: dict[tuple[str, str], PoolToken] = {}
    for index, key in enumerate(keys):
        other = keys[(index + 1) % len(keys)]
        variants = cnf_variants(key, other, certs["client"], certs["other"])
        scoped = {name: {"jkt": key.thumbprint} for name in SCOPED_VARIANTS}
        for variant, cnf in {**variants, **scoped}.items():
            scopes = SCOPED_VARIANTS.get(variant, frozenset({"read:photos", "write:transfers"}))
            claims = {**default_claims(rng), "scope": " ".join(sorted(scopes))}
            if cnf is not ABSENT:
                claims["cnf"] = cnf
            signer = issuer_keys[(index + len(tokens)) % len(issuer_keys)]
            text = sign(signer, json.dumps({"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}), json.dumps(claims))
            issuer.active[text] = {"active": True, **claims}
            tokens[(key.name, variant)] = PoolToken(text, variant, cnf, scopes, key)
    return tokens


@dataclass
class SenderWorld:
    apps: dict[str, SenderApp]
    keys: list[ProofKey]
    tokens: dict[tuple[str, str], PoolToken]
    certs: dict[str, Cert]


# -- one raw ASGI request -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def asgi_get(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    path: str,
    *,
    host: bytes | None = b"api.example.com",
    client: str | None = "203.0.113.9",
    query: bytes = b"",
    extensions: dict[str, Any] | None = None,
) -> Reply:
    """One GET; ``host=None`` sends only the Host fields ``headers`` holds (none, one or several)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", host), *headers] if host is not None else list(headers),
        "client": (client, 50000) if client is not None else None,
        "server": ("api.example.com", 443),
    }
    if extensions is not None:
        scope["extensions"] = extensions
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


# -- the sender-constrained oracle --------------------------------------------------------------------------


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def cnf_accepted(cnf: Any) -> bool:
    """A token's ``cnf`` the guard accepts at all (README: only ``jkt`` and ``x5t#S256``, short strings)."""
    if cnf is ABSENT or cnf is None:
        return True
    return (
        isinstance(cnf, dict)
        and set(cnf) <= {"jkt", "x5t#S256"}
        and all(isinstance(value, str) and 0 < len(value) <= 128 for value in cnf.values())
    )


def url_forms(scheme: str, host: str, port: int | None, prefix: str, path: str) -> tuple[str, frozenset[str]]:
    """The URL in its RFC 3986 §6.2.2-6.2.3 normal form, and the ``htu`` values that normalise to it."""
    default = 443 if scheme == "https" else 80
    authority = host if port in (None, default) else f"{host}:{port}"
    canonical = f"{scheme}://{authority}{prefix}{path}"
    first = ord(path[1])
    forms = {
        canonical,
        canonical + "?page=2",
        canonical + "#top",
        canonical + "?",
        f"{scheme.upper()}://{authority.upper()}{prefix}{path}",
        f"{scheme}://{authority.upper()}{prefix}{path}",
        f"{scheme}://{authority}/.{prefix}{path}",
        f"{scheme}://{authority}/zz/..{prefix}{path}",
        f"{scheme}://{authority}{prefix}/%{first:02X}{path[2:]}",
        f"{scheme}://{authority}{prefix}/%{first:02x}{path[2:]}",
    }
    if port in (None, default):
        forms |= {f"{scheme}://{host}:{default}{prefix}{path}", f"{scheme}://{host}:{prefix}{path}"}
    return canonical, frozenset(forms)


#: Characters that change an URL wherever they are put before its query: not in any URI production
#: that normalisation could undo (RFC 3986 §2), nor "?", "#", "%" or ".", which could.
URL_JUNK = [*(chr(code) for code in range(32)), "\x7f", " ", '"', "<", ">", "\\", "^", "`", "{", "|", "}"]
URL_JUNK += ["\u00e9", "\u4e2d", "\U0001f600", "\ufeff", "\u200b", "\u0085", "\u2028", "\ud800"]


def wrong_urls(scheme: str, host: str, port: int | None, prefix: str, path: str) -> list[str]:
    """``htu`` values that never name this URL."""
    canonical, forms = url_forms(scheme, host, port, prefix, path)
    default = 443 if scheme == "https" else 80
    authority = host if port in (None, default) else f"{host}:{port}"
    other = "http" if scheme == "https" else "https"
    made = [
        f"{other}://{authority}{prefix}{path}",
        f"{scheme}://{host}:8444{prefix}{path}",
        f"{scheme}://{host}.{'' if port in (None, default) else f':{port}'}{prefix}{path}",
        canonical + "/",
        canonical + "%2F",
        f"{scheme}://{authority}{prefix}{path.upper()}",
        f"{scheme}://{authority}/{prefix}{path}",
        f"{scheme}://user@{authority}{prefix}{path}",
        f"{scheme}:/{authority}{prefix}{path}",
        f"{prefix}{path}",
        f"{scheme}://{authority}",
        f"wss://{authority}{prefix}{path}",
        canonical + ";v=1",
        f"{scheme}://{authority}{prefix}/other",
        f"https://evil.example{prefix}{path}",
        f"https://api.example.com{prefix}/pay" if path != "/pay" else f"https://api.example.com{prefix}/me",
        "",
        "https://\u00e4pi.example.com" + path,
    ]
    return [url for url in made if url not in forms]


@dataclass
class Proof:
    """One DPoP header value as sent, and what the oracle needs to judge it."""

    text: bytes
    key: ProofKey
    header: Any  # the decoded JOSE header
    claims: Any  # the decoded claims
    signed_alg: str
    parsed: bool = True  # both segments are JSON objects a strict parser (RFC 8259, I-JSON) accepts
    intact: bool = True  # the signature covers these exact segments (no byte was edited)
    maybe: bool = False  # holds something the generator does not decide (the oracle then allows both)


def key_fits(jwk: dict[str, Any], alg: str) -> bool:
    """RFC 7518 §3.3-3.5, RFC 8037 §3.1; RFC 7517 §4.2-4.4 (the JWK's own alg, use and key_ops)."""
    kty = jwk.get("kty")
    if alg in EC_CURVE_OF:
        fits = kty == "EC" and jwk.get("crv") == EC_CURVE_OF[alg]
    elif alg == "EdDSA":
        fits = kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448")
    else:
        fits = kty == "RSA"
    key_ops = jwk.get("key_ops")
    return (
        fits
        and jwk.get("alg", alg) == alg
        and jwk.get("use", "sig") == "sig"
        and (key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops))
    )


def proof_verdict(proof: Proof, token: str, app: SenderApp, urls: frozenset[str]) -> bool | None:
    """Whether RFC 9449 §4.3 accepts ``proof`` for this request (``None``: the generator cannot tell).

    The key binding (§6.1), the replay store (§11.1) and the certificate are the caller's.
    """
    if proof.maybe:
        return None
    if not proof.intact or not proof.parsed or len(proof.text) > MAX_PROOF_BYTES or not proof.text.isascii():
        return False
    header, claims = proof.header, proof.claims
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return False
    alg, jwk = header.get("alg"), header.get("jwk")
    if header.get("typ") != "dpop+jwt" or not isinstance(alg, str) or alg not in DPOP_ALGS or "crit" in header:
        return False
    if not isinstance(jwk, dict) or any(name in jwk for name in PRIVATE_MEMBERS) or jwk.get("kty") == "oct":
        return False
    # The signature verifies only with the signer's own key (the same public members, RFC 7638 §3.2)
    # under the algorithm it signed with: anything else in jwk is another key, or no key.
    if not key_fits(jwk, alg) or alg != proof.signed_alg:
        return False
    if any(jwk.get(name) != value for name, value in proof.key.jwk.items()):
        return False
    jti, htu, iat, nonce = claims.get("jti"), claims.get("htu"), claims.get("iat"), claims.get("nonce")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        return False
    if claims.get("htm") != "GET" or not isinstance(htu, str) or htu not in urls:
        return False
    if not isinstance(iat, (int, float)) or isinstance(iat, bool) or not NOW - IAT_SPAN <= iat <= NOW + IAT_SPAN:
        return False
    if claims.get("ath") != access_token_hash(token):
        return False
    if nonce is not None and (not isinstance(nonce, str) or not 0 < len(nonce) <= 256 or not NQCHAR.issuperset(nonce)):
        return False
    return not app.nonces or nonce in app.nonces


@dataclass
class Auth:
    """The Authorization field as the oracle sees it."""

    form: str = "ok"  # "ok"; "missing": no usable credentials (401, no error); "bad": malformed (400)
    scheme: str = "bearer"  # "bearer" or "dpop"
    token: PoolToken | None = None  # None: a value that is no valid token at all
    text: str = ""


def sender_outcomes(
    app: SenderApp,
    path: str,
    auth: Auth,
    proofs: list[Proof],
    url: str | None,
    urls: frozenset[str],
    cert: str | None,
) -> set[int]:
    """Every status the request may get (one, unless the input holds junk the generator cannot judge).

    README "Sender-constrained tokens" and RFC 9449 §7, RFC 8705 §3: the token, then (DPoP scheme) one
    proof for the URL the guard builds (``url``: None when it can build none, a 400), bound to the
    token's ``cnf.jkt``; a bound token never as Bearer; the certificate the guard sees (``cert``) for
    ``cnf["x5t#S256"]``; a binding where the route or the guard requires one; then scopes.
    """
    if auth.form == "missing":
        return {401}
    if auth.form == "bad":
        return {400}
    token = auth.token
    if token is None or not cnf_accepted(token.cnf):
        return {401}
    cnf = token.cnf if isinstance(token.cnf, dict) else {}
    jkt, x5t = cnf.get("jkt"), cnf.get("x5t#S256")
    outcomes: set[int] = set()
    bound = False
    if auth.scheme == "dpop":
        if len(proofs) != 1 or not proofs[0].text.isascii():
            return {401}
        proof = proofs[0]
        if url is None:
            return {400}
        if url == UNKNOWN:
            outcomes |= {400, 401}
        else:
            verdict = proof_verdict(proof, auth.text, app, urls)
            if verdict is False:
                return outcomes | {401}
            if verdict is None:
                outcomes.add(401)
        if not isinstance(jkt, str) or jkt != proof.key.thumbprint:
            return outcomes | {401}
        if app.limited_store:
            outcomes.add(503)
        bound = True
    elif jkt is not None:
        return {401}
    if x5t is not None:
        if cert == UNKNOWN:
            outcomes.add(401)
        elif cert != x5t:
            return outcomes | {401}
        bound = True
    if not bound and (path == "/pay" or app.required):
        return outcomes | {401}
    scope = ROUTE_SCOPES.get(path)
    outcomes.add(403 if scope is not None and scope not in token.scopes else 200)
    return outcomes


# -- the URL a trusted proxy names (README "The URL a proof must name"; RFC 7239; X-Forwarded-*) ----------

# Host values and how they parse: (host, port) in lower case, or None for a value no guard may use.
HOSTS: list[tuple[bytes, tuple[str, int | None] | None]] = [
    (b"api.example.com", ("api.example.com", None)),
    (b"API.Example.COM", ("api.example.com", None)),
    (b"api.example.com:443", ("api.example.com", 443)),
    (b"api.example.com:80", ("api.example.com", 80)),
    (b"api.example.com:8443", ("api.example.com", 8443)),
    (b"api.example.com:00443", ("api.example.com", 443)),
    (b"api.example.com:65535", ("api.example.com", 65535)),
    (b" api.example.com\t", ("api.example.com", None)),
    (b"edge.example.net", ("edge.example.net", None)),
    (b"10.0.0.1:8080", ("10.0.0.1", 8080)),
    (b"[2001:DB8::1]:8443", ("[2001:db8::1]", 8443)),
    (b"[::1]", ("[::1]", None)),
    (b"api_example.com", ("api_example.com", None)),
    (b"xn--pi-dja.example", ("xn--pi-dja.example", None)),
    (b"", None),
    (b"api.example.com:", None),
    (b"api.example.com:65536", None),
    (b"api.example.com:123456", None),
    (b"api.example.com:-1", None),
    (b"api.example.com:+443", None),
    (b"user@api.example.com", None),
    (b"api.example.com/x", None),
    (b"api example.com", None),
    (b"[::1", None),
    (b"[fe80::1%eth0]", None),
    (b"[::g]", None),
    (b"[1.2.3.4]", None),
    (b"\xc3\xa9.example", None),
    (b"a" * 1025, None),
    (b"api.example.com\x00", None),
    (b"*", None),
    (b"%61pi.example.com", None),
]
GOOD_HOSTS = [entry for entry in HOSTS if entry[1] is not None]
# Schemes: (value, scheme); None: not http(s) (ws and wss name the HTTP URL of a WebSocket).
PROTOS: list[tuple[bytes, str | None]] = [
    (b"https", "https"),
    (b"http", "http"),
    (b"HTTPS", "https"),
    (b"Http", "http"),
    (b"wss", "https"),
    (b"ws", "http"),
    (b"ftp", None),
    (b"https2", None),
    (b"h\xc3\xa9", None),
    (b"\x00https", None),
]
# X-Forwarded-Prefix values: the prefix they give, or None for a value that is no URL path.
PREFIXES: list[tuple[bytes, str | None]] = [
    (b"/api", "/api"),
    (b"/api/", "/api"),
    (b"/", ""),
    (b"//", ""),
    (b"/v1/x%20y", "/v1/x%20y"),
    (b"/v1/x%2Fy", "/v1/x%2Fy"),
    (b"/a,/b", "/a"),
    (b"api", None),
    (b"/a b", None),
    (b"/%zz", None),
    (b"/\xc3\xa9", None),
    (b"/a?b", None),
    (b"/a#b", None),
    (b"/" + b"a" * 5000, None),
]
FOR_VALUES = [b"192.0.2.60", b"[2001:db8:cafe::17]:4711", b"unknown", b"_hidden", b"a,b", b'x"y', b"x;y"]


@dataclass
class ProxyModel:
    """What a trusted peer's forwarded fields say: scheme and (host, port) or None (not said), prefix."""

    scheme: str | None = None
    host: tuple[str, int | None] | None = None
    prefix: str | None = None
    invalid: bool = False  # the guard must refuse the request (400)
    unknown: bool = False  # junk the generator does not judge


def model_url(
    app: SenderApp, trusted_peer: bool, hosts: list[tuple[bytes, Any]], proxy: ProxyModel, path: str
) -> tuple[str | None, frozenset[str], tuple[str, str, int | None, str] | None]:
    """The URL the guard must build (None: it cannot, 400; UNKNOWN), its htu forms, and its parts."""
    if app.public_url is not None:
        parts: tuple[str, str, int | None, str] = ("https", "api.example.com", None, "")
        canonical, forms = url_forms(*parts, path)
        return canonical, forms, parts
    scheme, host, prefix = None, None, None
    if trusted_peer and app.trusted:
        if proxy.unknown:
            return UNKNOWN, frozenset(), None
        if proxy.invalid:
            return None, frozenset(), None
        scheme, host, prefix = proxy.scheme, proxy.host, proxy.prefix
    scheme = scheme or "https"
    if host is None:
        if len(hosts) > 1:
            return None, frozenset(), None  # RFC 9112 §3.2
        host = hosts[0][1] if hosts else ("api.example.com", 443)  # no Host: the server's address
        if host is None:
            return None, frozenset(), None
    parts = (scheme, host[0], host[1], prefix or "")
    canonical, forms = url_forms(*parts, path)
    return canonical, forms, parts


# -- the certificate a trusted proxy passes on (RFC 8705 §3, Envoy XFCC, nginx/ALB PEM headers) ---------


def xfcc_element_text(pairs: list[tuple[bytes, bytes]], rng: random.Random) -> bytes:
    rendered = [forwarded_pair(name, value, rng) for name, value in pairs]
    return rng.choice((b";", b"; ", b" ;")).join(rendered)


def forwarded_pair(name: bytes, value: bytes, rng: random.Random) -> bytes:
    """``name=value`` (RFC 7239 §4), the name in any case, the value a token or a quoted-string."""
    name = rng.choice((name, name.upper(), name.capitalize()))
    must_quote = not value or any(byte in b',;"\\' for byte in value)
    if must_quote or rng.random() < 0.2:
        text = b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    else:
        text = value
    return name + rng.choice((b"=", b"=", b" = ", b"\t=")) + text


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
    expect: int | None  # the one right status, or None for "any of allowed"
    allowed: frozenset[int] = REFUSALS
    app: str = "bearer"  # the guard: "bearer" (default options) or a sender guard's name
    client: str | None = "203.0.113.9"  # the peer's address
    host: bytes | None = b"api.example.com"  # None: the Host fields are in ``headers`` (none, one or more)
    replay: bool = False  # the DPoP scheme: a proof it accepts is refused as a replay when sent again
    proof_id: tuple[str, str] | None = None  # (key thumbprint, jti): the replay store's key for the proof
    secrets: tuple[str, ...] = ()  # more client-chosen values no response may hold
    query: bytes = b""
    extensions: dict[str, Any] | None = None


class Generator:
    """A fast, seeded generator of fuzz cases (``random.Random``, no hypothesis)."""

    def __init__(
        self,
        seed: int,
        keys: list[Key],
        valid: list[tuple[str, Key]],
        world: SenderWorld | None = None,
        families: tuple[str, ...] = FAMILIES,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test inputs, not secrets
        self.keys = keys
        self.valid = valid
        # RSA signing costs ~1 ms: RSA-signed generated tokens come from a pool refreshed slowly.
        self._rsa_pool: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.families = families
        self.sender = SenderGenerator(self.rng, world) if world is not None else None

    def case(self) -> Case:
        family = self.families[self.rng.randrange(len(self.families))]
        if family in SENDER_FAMILIES:
            assert self.sender is not None
            return self.sender.case(family)
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


# -- the sender-constrained generator -------------------------------------------------------------------------

TYP_VALUES: list[Any] = [
    "DPoP+jwt", "dpop+JWT", "jwt", "JWT", "at+jwt", "application/dpop+jwt", " dpop+jwt", "dpop+jwt ", "", None, 5,
    ["dpop+jwt"], {"typ": "dpop+jwt"}, "dpop+jwt\x00", "dpop\u200b+jwt", ABSENT,
]  # fmt: skip
ALG_VALUES: list[Any] = [
    "ES256", "ES384", "ES512", "PS256", "PS384", "RS256", "RS512", "EdDSA", "none", "None", "HS256", "es256",
    "ES256 ", "", None, 256, ["ES256"], {"alg": "ES256"}, "Ed25519", "ES256K", ABSENT,
]  # fmt: skip
KTY_VALUES: list[Any] = ["EC", "RSA", "OKP", "oct", "ec", "Ec", "", None, 5, ["EC"], ABSENT]
CRV_VALUES: list[Any] = ["P-256", "P-384", "P-521", "Ed25519", "Ed448", "X25519", "secp256k1", "p-256", None, 5, ABSENT]
HTM_VALUES: list[Any] = [
    "GET", "get", "Get", "POST", "HEAD", "GET ", " GET", "", "G\x00ET", "\u0413\u0415\u0422", None, 5, ["GET"],
    {"m": "GET"}, ABSENT,
]  # fmt: skip
IAT_VALUES: list[Any] = [
    int(NOW), NOW, NOW - IAT_SPAN, NOW + IAT_SPAN, NOW - 0.5, NOW - IAT_SPAN - 0.001, NOW + IAT_SPAN + 1, 0, -1,
    1e308, -1e308, 2**64, 2**200, -(2**70), "1800000000", "NaN", "Infinity", "-0", True, False, None, [NOW],
    {"t": NOW}, ABSENT,
]  # fmt: skip
NONCE_VALUES: list[Any] = [
    "abc!#$%&'()*+", "A" * 256, "A" * 257, "", "a b", 'a"b', "a\\b", "\u00e9", "\x7f", "\x00", 5, [], {}, True,
    None, ABSENT,
]  # fmt: skip
JWK_EXTRAS: list[tuple[str, Any]] = [
    ("kid", "key-1"), ("kid", 5), ("use", "sig"), ("use", "enc"), ("use", None), ("key_ops", ["verify"]),
    ("key_ops", ["verify", "sign"]), ("key_ops", ["sign"]), ("key_ops", "verify"), ("key_ops", []),
    ("key_ops", None), ("x5c", ["MIIB"]), ("ext", True), ("alg", None), ("alg", "none"), ("alg", "HS256"),
]  # fmt: skip
HEADER_EXTRAS = ["kid", "jku", "x5c", "x5u", "cty", "x5t", "x5t#S256", "zip", "enc", "nonce"]
RAW_EDITS = (
    "dup", "nan", "infinity", "1e400", "bigint", "deep40", "deep20", "lone-surrogate", "pair-surrogate", "bom",
    "trailing", "trailing-ws", "array", "string", "null", "empty", "number", "bad-utf8", "pretty", "escaped",
    "leading-ws", "single-quotes", "comment", "trailing-comma",
)  # fmt: skip
PROOF_EDITS = (
    "flip", "delete", "insert", "truncate", "replace", "empty", "case", "swap", "duplicate", "dot", "ws",
    "space-inside", "non-ascii", "huge", "extra-part",
)  # fmt: skip
SCHEME_FORMS: list[tuple[bytes, str]] = [
    (b"DPoP  ", "bad"), (b"DPoP\t", "bad"), (b"DPOP ", "ok"), (b"dpop ", "ok"), (b"DPoP", "missing"),
    (b"Basic ", "missing"), (b"DPoP: ", "missing"), (b"Bearer ", "ok"),
]  # fmt: skip
NOT_DPOP_NAMES = [b"dpop ", b"x-dpop", b"dpop-proof", b"dpop\x00", b"dpo", b"dpop-nonce"]


def proof_segments(text: bytes) -> tuple[Any, Any]:
    head, claims, _ = text.split(b".")
    return (json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))) for part in (head, claims))  # type: ignore[return-value]


def sign_proof(key: ProofKey, head: bytes, claims: bytes, alg: str) -> bytes:
    signing_input = f"{b64url(head)}.{b64url(claims)}".encode("ascii")
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input, key.private)
    return signing_input + b"." + b64url(signature).encode("ascii")


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@dataclass
class Setup:
    """The request around the credentials: which guard, the peer, the Host and proxy fields, and what the
    guard must make of them (the URL, the client certificate)."""

    app: SenderApp
    path: str
    peer: str | None = "203.0.113.9"
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: [(b"host", b"api.example.com")])
    url: str | None = None
    urls: frozenset[str] = frozenset()
    parts: tuple[str, str, int | None, str] | None = ("https", "api.example.com", None, "")
    cert: str | None = None
    query: bytes = b""
    extensions: dict[str, Any] | None = None


class SenderGenerator:
    """The sender-constrained families; shares the bearer generator's ``random.Random``."""

    def __init__(self, rng: random.Random, world: SenderWorld) -> None:
        self.rng = rng
        self.world = world
        self.keys = world.keys
        # ES/EdDSA proofs cost ~50 µs to sign, RSA ones ~1 ms: RSA keys are drawn less often.
        self.key_draw = [k for k in world.keys for _ in range(1 if k.alg in ("PS256", "RS256") else 4)]
        self.counter = 0

    def case(self, family: str) -> Case:
        return getattr(self, "_" + family.replace("-", "_"))()  # type: ignore[no-any-return]

    # -- building blocks --

    def _app(self, weights: tuple[int, int, int] = (5, 3, 2)) -> SenderApp:
        return self.rng.choices([self.world.apps[n] for n in ("dpop", "nonce", "strict")], weights)[0]

    def _key(self) -> ProofKey:
        return self.key_draw[self.rng.randrange(len(self.key_draw))]

    def _token(self, key: ProofKey, variant: str) -> PoolToken:
        return self.world.tokens[(key.name, variant)]

    def _jti(self) -> str:
        self.counter += 1
        return f"{self.counter:x}-{self.rng.getrandbits(80):020x}"

    def _nonce(self, app: SenderApp) -> str | None:
        rng = self.rng
        if app.nonces:
            return app.current_nonce if rng.random() < 0.8 else rng.choice(sorted(app.nonces))
        if rng.random() < 0.85:
            return None
        return "".join(rng.choice(sorted(NQCHAR)) for _ in range(rng.randrange(1, 64)))

    def _setup(self, app: SenderApp | None = None) -> Setup:
        """A plain request: an untrusted peer (or a trusted one without proxy fields), a good Host."""
        rng = self.rng
        app = app or self._app()
        path = rng.choice(SENDER_PATHS)
        host_value, parsed = rng.choice(GOOD_HOSTS[:4]) if rng.random() < 0.3 else GOOD_HOSTS[0]
        assert parsed is not None
        peer = rng.choice(TRUSTED_PEERS) if rng.random() < 0.2 else rng.choice(UNTRUSTED_PEERS)
        setup = Setup(app, path, peer, [(rng.choice((b"host", b"Host")), host_value)])
        setup.url, setup.urls, setup.parts = model_url(app, False, [(host_value, parsed)], ProxyModel(), path)
        if rng.random() < 0.2:
            setup.query = rng.choice((b"page=2", b"a=%00&b=\xff", b"x=" + b"y" * 3000, b"dpop=1#frag"))
        return setup

    def _present_cert(self, setup: Setup, cert: Cert) -> None:
        """Make the guard see ``cert``: from a trusted proxy's header, or the ASGI TLS extension."""
        rng = self.rng
        app = setup.app
        if app.cert_header == XFCC and rng.random() < 0.7:
            setup.peer = rng.choice(TRUSTED_PEERS)
            setup.headers.append((XFCC, rng.choice((b"Hash=" + cert.hex.encode(), b"Cert=" + quote_pem(cert)))))
        elif app.cert_header == PEM_HEADER and rng.random() < 0.7:
            setup.peer = rng.choice(TRUSTED_PEERS)
            setup.headers.append((PEM_HEADER, quote_pem(cert)))
        else:
            setup.extensions = {"tls": {"client_cert_chain": [cert.pem], "server_cert": None}}
        setup.cert = cert.x5t

    def _client_proof(
        self,
        setup: Setup,
        key: ProofKey,
        token: str,
        *,
        nonce: str | None = None,
        url: str | None = None,
        iat: float | None = None,
    ) -> Proof:
        """A proof made by ``DPoPKey`` for the request's URL (or ``url``), with its query sometimes."""
        target = url if url is not None else (setup.url if setup.url not in (None, UNKNOWN) else API + setup.path)
        assert target is not None
        if self.rng.random() < 0.2:
            target += self.rng.choice(("?page=2", "#frag", "?q=%20"))
        text = key.client.proof(
            "GET", target, access_token=token, nonce=nonce, iat=int(NOW) if iat is None else iat, jti=self._jti()
        ).encode("ascii")
        header, claims = proof_segments(text)
        return Proof(text, key, header, claims, key.alg)

    def _case(
        self,
        family: str,
        setup: Setup,
        authorization: list[bytes],
        auth: Auth,
        proofs: list[Proof],
        dpop_fields: list[tuple[bytes, bytes]] | None = None,
    ) -> Case:
        outcomes = sender_outcomes(setup.app, setup.path, auth, proofs, setup.url, setup.urls, setup.cert)
        if dpop_fields is None:
            dpop_fields = [(b"dpop", proof.text) for proof in proofs]
        headers = [*setup.headers, *((b"authorization", value) for value in authorization), *dpop_fields]
        proof_id = None
        if len(proofs) == 1 and isinstance(proofs[0].claims, dict):
            jti = proofs[0].claims.get("jti")
            proof_id = (proofs[0].key.thumbprint, jti) if isinstance(jti, str) else None
        secrets: list[str] = []
        for proof in proofs:
            secrets += proof_strings(proof)
        return Case(
            family,
            headers,
            setup.path,
            next(iter(outcomes)) if len(outcomes) == 1 else None,
            frozenset(outcomes),
            app=setup.app.name,
            client=setup.peer,
            host=None,
            replay=auth.form == "ok" and auth.scheme == "dpop",
            proof_id=proof_id,
            secrets=tuple(secrets),
            query=setup.query,
            extensions=setup.extensions,
        )

    def _dpop_request(self, family: str, setup: Setup, token: PoolToken, proof: Proof) -> Case:
        rng = self.rng
        scheme = rng.choice((b"DPoP", b"DPoP", b"DPoP", b"dpop", b"DPOP"))
        name = rng.choice((b"dpop", b"dpop", b"DPoP", b"DPOP"))
        auth = Auth("ok", "dpop", token, token.text)
        return self._case(family, setup, [scheme + b" " + token.text.encode()], auth, [proof], [(name, proof.text)])

    # -- dpop-valid: one valid proof for the exact method and URL --

    def _dpop_valid(self) -> Case:
        rng = self.rng
        setup = self._setup(self._app((6, 3, 1)))
        key = self._key()
        variant = rng.choice(("jkt", "jkt", "jkt", "jkt", "jkt+x5t", "jkt-noscope", "jkt-read"))
        token = self._token(key, variant)
        if variant == "jkt+x5t":
            self._present_cert(setup, self.world.certs["client"])
        iat = rng.choice((None, None, None, NOW - IAT_SPAN, NOW + IAT_SPAN, NOW + 0.25, NOW - 12))
        proof = self._client_proof(setup, key, token.text, nonce=self._nonce(setup.app), iat=iat)
        return self._dpop_request("dpop-valid", setup, token, proof)

    # -- dpop-bytes: byte edits of a valid proof --

    def _dpop_bytes(self) -> Case:
        rng = self.rng
        setup = self._setup()
        key = self._key()
        token = self._token(key, "jkt")
        proof = self._client_proof(setup, key, token.text, nonce=self._nonce(setup.app))
        edited = proof.text
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            edited = edit_proof(edited, rng)
        intact = edited.strip(b" \t") == proof.text
        edited_proof = Proof(edited, key, proof.header, proof.claims, proof.signed_alg, intact=intact)
        case = self._dpop_request("dpop-bytes", setup, token, edited_proof)
        case.secrets = tuple(proof_strings(proof))
        return case

    # -- dpop-json: edited header and claims, signed again --

    def _dpop_json(self) -> Case:
        rng = self.rng
        setup = self._setup()
        key = self._key()
        token = self._token(key, rng.choice(("jkt", "jkt", "jkt", "jkt+x5t")))
        if token.variant == "jkt+x5t":
            self._present_cert(setup, self.world.certs["client"])
        assert setup.url is not None
        assert setup.parts is not None
        header: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": dict(key.jwk)}
        claims: dict[str, Any] = {
            "jti": self._jti(),
            "htm": "GET",
            "htu": setup.url,
            "iat": int(NOW),
            "ath": access_token_hash(token.text),
        }
        nonce = self._nonce(setup.app)
        if nonce is not None:
            claims["nonce"] = nonce
        maybe = False
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            maybe |= self._edit_json(header, claims, key, setup, token)
        signed_alg = key.alg
        parsed = True
        if rng.random() < 0.25:
            target = rng.choice(("header", "claims"))
            document = header if target == "header" else claims
            raw, parsed = raw_json(document, rng.choice(RAW_EDITS), self._jti())
            head_bytes = raw if target == "header" else compact(header)
            claims_bytes = raw if target == "claims" else compact(claims)
        else:
            head_bytes, claims_bytes = compact(header), compact(claims)
        text = sign_proof(key, head_bytes, claims_bytes, signed_alg)
        proof = Proof(text, key, header, claims, signed_alg, parsed=parsed, maybe=maybe)
        return self._dpop_request("dpop-json", setup, token, proof)

    def _value(self) -> Any:
        """A random JSON value: nested, huge, unicode, NaN-like strings, big numbers."""
        rng = self.rng
        kind = rng.randrange(10)
        if kind == 0:
            return {"a": [1, {"b": [None, True, "c" * rng.randrange(40)]}]}
        if kind == 1:
            return "x" * rng.choice((16, 500, 9000))
        if kind == 2:
            return rng.choice(("NaN", "Infinity", "-Infinity", "-0", "1e400", "0x10", "null", "true"))
        if kind == 3:
            return rng.choice((2**64, -(2**63), 2**200, 1e308, -1e-308, 0.1))
        if kind == 4:
            return "".join(chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x2FFF)))) for _ in range(12))
        if kind == 5:
            return [self._jti()] * rng.randrange(5)
        if kind == 6:
            return "\x00\x01\x1b[31m\r\n" + self._jti()
        return rng.choice((None, True, False, 0, "", [], {}))

    def _unique_text(self) -> str:
        rng = self.rng
        kind = rng.randrange(5)
        uid = self._jti()
        if kind == 0:
            return "\u00e9\u4e2d\U0001f600" + uid
        if kind == 1:
            return "\x00\x01\x1f\x7f" + uid
        if kind == 2:
            return (uid + "-" * 256)[:256]
        if kind == 3:
            return (uid + "-" * 257)[:257]
        return " " + uid + "\t"

    def _edit_json(
        self, header: dict[str, Any], claims: dict[str, Any], key: ProofKey, setup: Setup, token: PoolToken
    ) -> bool:
        """One edit of the proof's header or claims, in place; True when it makes the verdict undecided."""
        rng = self.rng
        jwk: Any = header.get("jwk")
        kind = rng.randrange(17)
        if kind == 0:
            put(header, "typ", rng.choice(TYP_VALUES))
        elif kind == 1:
            put(header, "alg", rng.choice(ALG_VALUES))
        elif kind == 2:
            put(header, "jwk", rng.choice([None, "jwk", 5, [], {}, [dict(key.jwk)], ABSENT]))
        elif kind == 3 and isinstance(jwk, dict):
            name = rng.choice(PRIVATE_MEMBERS)
            jwk[name] = rng.choice((b64url(rng.randbytes(32)), "", 5, [b64url(rng.randbytes(8))]))
        elif kind == 4 and isinstance(jwk, dict):
            put(jwk, rng.choice(("kty", "kty", "crv")), rng.choice(KTY_VALUES + CRV_VALUES))
        elif kind == 5 and isinstance(jwk, dict):
            self._edit_key_member(jwk, key)
        elif kind == 6 and isinstance(jwk, dict):
            name, value = rng.choice(JWK_EXTRAS)
            if name == "alg" and rng.random() < 0.5:
                value = rng.choice(sorted(DPOP_ALGS))
            jwk[name] = value
        elif kind == 7:
            header["crit"] = rng.choice((["exp"], [], "x", None, ["dpop"]))
        elif kind == 8:
            if rng.random() < 0.1:
                header["b64"] = rng.choice((False, True))
                return True  # RFC 7797 without crit: not decided here
            header[rng.choice(HEADER_EXTRAS)] = self._value()
        elif kind == 9:
            put(claims, "jti", rng.choice((ABSENT, "", 5, None, True, 1.5, [self._jti()], {"j": self._jti()})))
            if rng.random() < 0.6:
                claims["jti"] = self._unique_text()
        elif kind == 10:
            put(claims, "htm", rng.choice(HTM_VALUES))
        elif kind == 11:
            self._edit_htu(claims, setup)
        elif kind == 12:
            put(claims, "iat", rng.choice(IAT_VALUES))
        elif kind == 13:
            right = access_token_hash(token.text)
            other = access_token_hash(self._token(key, "jkt-noscope").text)
            values = (ABSENT, None, 5, [right], right + "=", right.upper(), other, "", right[:-1], right * 2)
            put(claims, "ath", rng.choice(values))
        elif kind == 14:
            values = [*NONCE_VALUES, *sorted(setup.app.nonces)]
            put(claims, "nonce", rng.choice(values))
        elif kind == 15:
            name = rng.choice(("exp", "nbf", "sub", "cnf", "aud", "x", "\u00e9", "", "htm ", "JTI"))
            claims[name] = self._value()
        else:
            claims["pad"] = "p" * rng.choice((100, 4000, 6000, 8200))
        return False

    def _edit_key_member(self, jwk: dict[str, Any], key: ProofKey) -> None:
        rng = self.rng
        members = [name for name in ("x", "y", "n", "e") if name in key.jwk]
        name = rng.choice(members)
        value = key.jwk[name]
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        kind = rng.randrange(11)
        if kind == 0 and len(members) > 1:
            other = rng.choice([m for m in members if m != name])
            jwk[name], jwk[other] = jwk.get(other), jwk.get(name)
        elif kind == 1:
            jwk[name] = b64url(rng.randbytes(len(raw)))
        elif kind == 2:
            jwk[name] = value + "="
        elif kind == 3:
            jwk[name] = non_canonical(value)
        elif kind == 4:
            jwk[name] = value[:-2]
        elif kind == 5:
            jwk[name] = rng.choice(("", None, 5, [value], {"v": value}))
        elif kind == 6:
            jwk[name] = "A" * 9000
        elif kind == 7:
            jwk[name] = b64url(b"\x00" + raw)
        elif kind == 8:
            jwk.pop(name, None)
        elif kind == 9:
            jwk[name] = base64.urlsafe_b64encode(raw).decode("ascii")  # padded, when the length needs it
        else:
            jwk[name] = value.replace("-", "+").replace("_", "/")

    def _edit_htu(self, claims: dict[str, Any], setup: Setup) -> None:
        rng = self.rng
        assert setup.parts is not None
        canonical, forms = url_forms(*setup.parts, setup.path)
        kind = rng.randrange(5)
        if kind == 0:
            claims["htu"] = rng.choice(sorted(forms))
        elif kind == 1:
            claims["htu"] = rng.choice(wrong_urls(*setup.parts, setup.path))
        elif kind == 2:
            at = rng.randrange(len(canonical) + 1)
            claims["htu"] = canonical[:at] + rng.choice(URL_JUNK) + canonical[at:]
        elif kind == 3:
            claims["htu"] = canonical * rng.choice((2, 300))
        else:
            put(claims, "htu", rng.choice((None, 5, [canonical], {"u": canonical}, ABSENT, True)))

    # -- dpop-mix: header counts, schemes, bindings --

    def _dpop_mix(self) -> Case:
        rng = self.rng
        setup = self._setup()
        key = self._key()
        kind = rng.randrange(9)
        token = self._token(key, "jkt")
        nonce = self._nonce(setup.app)
        if kind == 0:  # zero, two or more DPoP fields (copies or different proofs), or fields of other names
            proofs = [self._client_proof(setup, key, token.text, nonce=nonce) for _ in range(rng.choice((2, 3)))]
            count = rng.choice((0, 2, 2, 3, 5))
            fields = [(rng.choice((b"dpop", b"DPoP")), rng.choice(proofs).text) for _ in range(count)]
            if rng.random() < 0.5:
                fields.append((rng.choice(NOT_DPOP_NAMES), proofs[0].text))
            rng.shuffle(fields)
            by_text = {proof.text: proof for proof in proofs}
            counted = [by_text[value] for name, value in fields if name.lower() == b"dpop"]
            auth = Auth("ok", "dpop", token, token.text)
            return self._case("dpop-mix", setup, [b"DPoP " + token.text.encode()], auth, counted, fields)
        if kind in (1, 2):  # every cnf variant, with the DPoP scheme (1) or the Bearer one (2), and a proof
            variant = rng.choice([*cnf_variants(key, key, self.world.certs["client"], self.world.certs["other"])])
            token = self._token(key, variant)
            if "x5t" in variant and rng.random() < 0.6:
                self._present_cert(setup, self.world.certs["client"])
            proof = self._client_proof(setup, key, token.text, nonce=nonce)
            if kind == 1:
                return self._dpop_request("dpop-mix", setup, token, proof)
            field_value = proof.text if rng.random() < 0.7 else rng.choice((b"", b"junk", b"a.b.c", proof.text * 2))
            fields = [(b"dpop", field_value)] * rng.choice((0, 1, 1, 2))
            auth = Auth("ok", "bearer", token, token.text)
            return self._case("dpop-mix", setup, [b"Bearer " + token.text.encode()], auth, [], fields)
        if kind == 3:  # the proof of another key
            other = self._key()
            proof = self._client_proof(setup, other, token.text, nonce=nonce)
            return self._dpop_request("dpop-mix", setup, token, proof)
        if kind == 4:  # a proof made for another token (ath)
            proof = self._client_proof(setup, key, self._token(key, "jkt-noscope").text, nonce=nonce)
            return self._dpop_request("dpop-mix", setup, token, proof)
        if kind == 5:  # scheme forms
            prefix, form = rng.choice(SCHEME_FORMS)
            proof = self._client_proof(setup, key, token.text, nonce=nonce)
            scheme = "bearer" if prefix.lower().startswith(b"bearer") else "dpop"
            auth = Auth(form, scheme, token, token.text)
            return self._case("dpop-mix", setup, [prefix + token.text.encode()], auth, [proof])
        if kind == 6:  # two Authorization fields, or a token that is no valid token
            proof = self._client_proof(setup, key, token.text, nonce=nonce)
            if rng.random() < 0.5:
                values = [b"DPoP " + token.text.encode(), rng.choice((b"DPoP x", b"Bearer " + token.text.encode()))]
                return self._case("dpop-mix", setup, values, Auth("bad"), [proof])
            junk = rng.choice((token.text[:-3], token.text + "A", "a.b.c", "A" * 20_000, token.text + "="))
            auth = Auth("ok", "dpop", None, junk)
            return self._case("dpop-mix", setup, [b"DPoP " + junk.encode()], auth, [proof])
        if kind == 7 and setup.app.nonces:  # the nonce guard: no nonce, or a wrong one
            bad = rng.choice((None, "A" * 43, (setup.app.current_nonce or "")[:-1] + "A", "abc"))
            proof = self._client_proof(setup, key, token.text, nonce=bad)
            return self._dpop_request("dpop-mix", setup, token, proof)
        # a proof for another route, or a DPoP field holding junk next to the DPoP scheme
        if rng.random() < 0.5:
            other_path = rng.choice([p for p in SENDER_PATHS if p != setup.path])
            proof = self._client_proof(setup, key, token.text, nonce=nonce, url=API + other_path)
            return self._dpop_request("dpop-mix", setup, token, proof)
        junk = rng.choice((b"", b" ", b"x", b"a.b.c", b"\xff\xfe", b"A" * 9000, b"e30.e30.", b"..", b"\x00"))
        proof = Proof(junk, key, None, None, key.alg, parsed=False)
        return self._dpop_request("dpop-mix", setup, token, proof)

    # -- forwarded: Host, Forwarded and X-Forwarded-* fields from trusted and untrusted peers --

    def _forwarded(self) -> Case:
        rng = self.rng
        app = self._app((6, 3, 1))
        path = rng.choice(SENDER_PATHS)
        trusted_peer = rng.random() < 0.6
        peer = rng.choice(TRUSTED_PEERS) if trusted_peer else rng.choice(UNTRUSTED_PEERS)
        count = rng.choices((0, 1, 2), (1, 16, 2))[0]
        hosts = [rng.choice(GOOD_HOSTS) if rng.random() < 0.7 else rng.choice(HOSTS) for _ in range(count)]
        proxy_fields, proxy = self._proxy_fields()
        headers = [(rng.choice((b"host", b"Host", b"HOST")), value) for value, _ in hosts] + proxy_fields
        setup = Setup(app, path, peer, headers)
        setup.url, setup.urls, setup.parts = model_url(app, trusted_peer, hosts, proxy, path)
        key = self._key()
        if rng.random() < 0.15:  # an unbound Bearer token: no URL is needed
            token = self._token(key, "none")
            return self._case(
                "forwarded", setup, [b"Bearer " + token.text.encode()], Auth("ok", "bearer", token, token.text), []
            )
        token = self._token(key, "jkt")
        url = None
        if setup.parts is not None and rng.random() < 0.3:
            url = rng.choice([API + path, *wrong_urls(*setup.parts, path)[:4]])
        proof = self._client_proof(setup, key, token.text, nonce=self._nonce(app), url=url)
        return self._dpop_request("forwarded", setup, token, proof)

    def _proxy_fields(self) -> tuple[list[tuple[bytes, bytes]], ProxyModel]:
        rng = self.rng
        mode = rng.choice(("none", "forwarded", "forwarded", "forwarded", "xf", "xf", "both", "prefix", "junk"))
        fields: list[tuple[bytes, bytes]] = []
        proxy = ProxyModel()
        if rng.random() < 0.3:  # fields no guard reads
            fields.append((rng.choice((b"x-forwarded-for", b"x-real-ip", b"via")), rng.randbytes(rng.randrange(40))))
        if mode in ("forwarded", "both"):
            value, proxy.scheme, proxy.host, proxy.invalid = self._forwarded_value()
            fields.append((rng.choice((b"forwarded", b"Forwarded", b"FORWARDED")), value))
            if rng.random() < 0.15:
                fields.append((b"forwarded", self._forwarded_value()[0]))
        if mode in ("xf", "both"):
            if rng.random() < 0.6 or mode == "both":
                value, scheme = rng.choice(PROTOS)
                if rng.random() < 0.15:
                    value = rng.choice((value + b", http", b"", b" ", b"h" * 5000, value + b"," + b"x" * 5000))
                fields.append((rng.choice((b"x-forwarded-proto", b"X-Forwarded-Proto")), value))
                first = value.split(b",", 1)[0].strip(b" \t")
                if value:
                    scheme = {b"https": "https", b"http": "http", b"wss": "https", b"ws": "http"}.get(first.lower())
                    if scheme is None or (b"," not in value and len(value) > 4096):
                        proxy.invalid = True
                    proxy.scheme = scheme
            if rng.random() < 0.7 or mode == "both":
                value, parsed = rng.choice(GOOD_HOSTS) if rng.random() < 0.7 else rng.choice(HOSTS)
                if rng.random() < 0.15:
                    value = value + rng.choice((b", evil.example", b",", b", [::1]"))
                fields.append((rng.choice((b"x-forwarded-host", b"X-Forwarded-Host")), value))
                if value:
                    if parsed is None:
                        proxy.invalid = True
                    proxy.host = parsed
        if mode in ("xf", "prefix", "forwarded") and rng.random() < (1.0 if mode == "prefix" else 0.3):
            value, prefix = rng.choice(PREFIXES)
            fields.append((rng.choice((b"x-forwarded-prefix", b"X-Forwarded-Prefix")), value))
            if prefix is None:
                proxy.invalid = True
            proxy.prefix = prefix
        if mode == "both":
            proxy.invalid = True  # a proxy writes one family and passes the other through: refused
        if mode == "junk":
            proxy.unknown = True
            names = [b"forwarded", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"]
            for name in rng.sample(names, rng.randrange(1, 5)):
                fields.append((name, self._junk_value()))
        return fields, proxy

    def _junk_value(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return rng.randbytes(rng.randrange(64))
        if kind == 1:
            return bytes(rng.choice(b';,="\\ \t=host=proto=for=https:[]/%') for _ in range(rng.randrange(64)))
        if kind == 2:
            return b"host=" + b"a" * rng.choice((1024, 1025, 4095, 4096, 4097, 20_000))
        if kind == 3:
            return b",".join(rng.randbytes(8) for _ in range(rng.randrange(1, 300)))
        return b'host="' + b"\\" * rng.randrange(1, 2000)

    def _forwarded_value(self) -> tuple[bytes, str | None, tuple[str, int | None] | None, bool]:
        """A Forwarded field (RFC 7239 §4): its first element decides (scheme, host, malformed?)."""
        rng = self.rng
        pairs: list[tuple[bytes, bytes]] = []
        scheme: str | None = None
        host: tuple[str, int | None] | None = None
        invalid = False
        if rng.random() < 0.5:
            value, scheme = rng.choice(PROTOS)
            pairs.append((b"proto", value))
            invalid |= scheme is None
        if rng.random() < 0.7:
            value, host = rng.choice(GOOD_HOSTS) if rng.random() < 0.7 else rng.choice(HOSTS)
            pairs.append((b"host", value))
            invalid |= host is None
        for name in (b"for", b"by", b"secret"):
            if rng.random() < 0.3:
                pairs.append((name, rng.choice(FOR_VALUES)))
        rng.shuffle(pairs)
        rendered = [forwarded_pair(name, value, rng) for name, value in pairs]
        junk = rng.random()
        if junk < 0.03 and pairs:
            rendered.append(forwarded_pair(pairs[0][0].upper(), pairs[0][1], rng))  # a parameter twice
            invalid = True
        elif junk < 0.05:
            rendered.append(b"host")
            invalid = True
        elif junk < 0.07:
            rendered.append(b'for="unterminated')
            invalid = True
        elif junk < 0.09:
            rendered.append(b'for="a"b')
            invalid = True
        elif junk < 0.11:
            rendered.append(b"for=" + b"x" * 5000)  # the first element does not end within what is read
            invalid = True
        element = rng.choice((b";", b"; ", b" ;")).join(rendered)
        if rng.random() < 0.05:
            return b", " + element, None, None, False  # an empty first element says nothing
        if rng.random() < 0.3:
            rest = [b"for=192.0.2.1;host=evil.example", b"proto=ftp", rng.randbytes(20).replace(b'"', b"")]
            element += b"," + b", ".join(rng.choice(rest) for _ in range(rng.randrange(1, 200)))
        return element, (None if invalid else scheme), (None if invalid else host), invalid

    # -- client-cert: certificate-bound tokens, XFCC and PEM header junk, the ASGI TLS extension --

    def _client_cert(self) -> Case:
        rng = self.rng
        app = self._app((5, 3, 2))
        setup = self._setup(app)
        trusted_peer = rng.random() < 0.7
        setup.peer = rng.choice(TRUSTED_PEERS) if trusted_peer else rng.choice(UNTRUSTED_PEERS)
        key = self._key()
        variant = rng.choice(("x5t", "x5t", "x5t", "x5t-other", "jkt+x5t", "jkt+x5t-other", "none", "x5t-int"))
        token = self._token(key, variant)
        presented: str | None = None
        if app.cert_header == XFCC:
            values, presented = self._xfcc_fields()
        elif app.cert_header == PEM_HEADER:
            values, presented = self._pem_fields()
        else:
            values, presented = [rng.choice((quote_pem(self.world.certs["client"]), b"junk"))], None
        names = [app.cert_header or XFCC, (app.cert_header or XFCC).upper()]
        setup.headers += [(rng.choice(names), value) for value in values]
        if not trusted_peer:
            presented = None
        if rng.random() < 0.15:
            setup.extensions, chain_says = self._tls_extension()
            if chain_says != "fallthrough":
                presented = chain_says
        setup.cert = presented
        if variant.startswith("jkt"):
            proof = self._client_proof(setup, key, token.text, nonce=self._nonce(app))
            return self._dpop_request("client-cert", setup, token, proof)
        auth = Auth("ok", "bearer", token, token.text)
        return self._case("client-cert", setup, [b"Bearer " + token.text.encode()], auth, [])

    def _cert_choice(self) -> tuple[Cert | None, bytes]:
        """A certificate (or None: junk) and its URL-encoded PEM, for XFCC ``Cert`` and PEM headers."""
        rng = self.rng
        certs = self.world.certs
        kind = rng.randrange(12)
        if kind < 4:
            return certs["client"], quote_pem(certs["client"])
        if kind == 4:
            return certs["other"], quote_pem(certs["other"])
        if kind == 5:
            return certs["rsa"], quote_pem(certs["rsa"])
        if kind == 6:  # one DER byte changed: another certificate, or none
            der = bytearray(certs["client"].der)
            der[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
            pem = (
                "-----BEGIN CERTIFICATE-----\n"
                + base64.b64encode(bytes(der)).decode()
                + "\n-----END CERTIFICATE-----\n"
            )
            return None, quote(pem, safe="").encode()
        if kind == 7:
            return None, quote(certs["client"].pem + certs["other"].pem, safe="").encode()
        if kind == 8:
            return None, quote(certs["client"].pem.replace("CERTIFICATE", "PUBLIC KEY"), safe="").encode()
        if kind == 9:
            return None, b"-----BEGIN%20CERTIFICATE-----%0Anope%0A-----END%20CERTIFICATE-----"
        if kind == 10:
            return None, rng.choice((b"%ff%fe%fd", b"", b"%", b"%zz", b"%2", quote_pem(certs["client"])[:-40]))
        if rng.random() < 0.5:  # trailing whitespace around one PEM block is allowed (RFC 7468 §2)
            return certs["client"], quote_pem(certs["client"]) + b"%20" * 5
        return None, quote_pem(certs["client"]) + b"%20" * 6000  # longer than a certificate header is read

    def _xfcc_fields(self) -> tuple[list[bytes], str | None]:
        """XFCC field values (Envoy) and the certificate thumbprint the guard must read from them."""
        rng = self.rng
        certs = self.world.certs
        if rng.random() < 0.08:
            return [self._junk_value()], None
        pairs: list[tuple[bytes, bytes]] = []
        from_hash: Any = ABSENT  # a thumbprint, None (junk) or ABSENT
        from_cert: Any = ABSENT
        if rng.random() < 0.6:
            roll = rng.randrange(10)
            if roll < 4:
                value, from_hash = (
                    rng.choice((certs["client"].hex, certs["client"].hex.upper())).encode(),
                    certs["client"].x5t,
                )
            elif roll == 4:
                value, from_hash = certs["other"].hex.encode(), certs["other"].x5t
            elif roll == 5:
                value, from_hash = hashlib.sha256(rng.randbytes(9)).hexdigest().encode(), "<no certificate>"
            else:
                junk = (certs["client"].hex[:-2], certs["client"].hex + "00", "g" * 64, "", certs["client"].x5t)
                value, from_hash = rng.choice(junk).encode(), None
            pairs.append((b"Hash", value))
        if rng.random() < 0.5:
            cert, value = self._cert_choice()
            from_cert = cert.x5t if cert is not None else None
            pairs.append((b"Cert", value))
        for name, value in (
            (b"By", b"spiffe://cluster.local/ns/foo/sa/bar"),
            (b"URI", b"spiffe://cluster.local/ns/client"),
            (b"DNS", b"client0.example"),
            (b"Subject", b"CN=client,O=Example;L=Here"),
            (b"Chain", quote_pem(certs["client"]) + quote_pem(certs["other"])),
        ):
            if rng.random() < 0.25:
                pairs.append((name, value))
        rng.shuffle(pairs)
        element = xfcc_element_text(pairs, rng)
        # Hash and Cert both present must agree; either alone decides; neither: no certificate.
        if from_hash is None or from_cert is None:
            presented: str | None = None
        elif from_hash is not ABSENT and from_cert is not ABSENT:
            presented = from_cert if from_hash == from_cert else None
        else:
            presented = from_cert if from_cert is not ABSENT else (None if from_hash is ABSENT else from_hash)
        junk = rng.random()
        if junk < 0.03 and pairs:
            element += b";" + forwarded_pair(pairs[0][0].lower(), pairs[0][1], rng)  # a key twice
            presented = None
        elif junk < 0.05:
            element += b';Subject="CN=x'
            presented = None
        elif junk < 0.07:
            element = b"," + element
            presented = None
        elif junk < 0.09:
            element += b";Subject=" + b"a" * 17_000
            presented = None
        elif junk < 0.11:
            element += b'"after'
            presented = None
        elif junk < 0.14:
            element += b";" + self._junk_value()
            presented = UNKNOWN
        if rng.random() < 0.3:
            # Later elements: hops, and random bytes without '"' (one would close a quoted-string the first
            # element left open, RFC 7239 §4, and the first element would then be well-formed after all).
            hop = b"By=spiffe://hop;Hash=" + certs["other"].hex.encode()
            junk = [hop, b'By="spiffe://a,b";Hash=' + certs["other"].hex.encode()]
            element += b"," + b",".join(
                rng.choice((*junk, rng.randbytes(30).replace(b'"', b""))) for _ in range(rng.randrange(1, 400))
            )
        values = [element]
        if rng.random() < 0.1:
            values.append(b"Hash=" + certs["other"].hex.encode())  # a later field only continues the list
        return values, presented

    def _pem_fields(self) -> tuple[list[bytes], str | None]:
        """PEM header values (nginx, AWS ALB) and the certificate thumbprint the guard must read."""
        rng = self.rng
        certs = self.world.certs
        kind = rng.randrange(10)
        client = certs["client"]
        if kind == 0:
            values, presented = [quote(client.pem, safe="/+=").encode()], client.x5t
        elif kind == 1:
            values, presented = [client.pem.replace("\n", " ").encode()], client.x5t
        elif kind == 2:
            values, presented = [client.pem.encode()], client.x5t
        elif kind == 3:
            values, presented = [b"  " + quote_pem(client) + b"\t"], client.x5t
        elif kind == 4:  # two fields: one certificate per request
            values, presented = [quote_pem(client), quote_pem(client)], None
        elif kind == 5:
            values, presented = [self._junk_value()], None
        elif kind == 6:
            values, presented = [client.pem.encode() + b" " * 17_000], None
        else:
            cert, value = self._cert_choice()
            values, presented = [value], cert.x5t if cert is not None else None
        return values, presented

    def _tls_extension(self) -> tuple[dict[str, Any], str | None]:
        """The ASGI TLS extension: it decides when it holds a certificate chain (even junk), else not."""
        rng = self.rng
        certs = self.world.certs
        kind = rng.randrange(9)
        if kind == 0:
            return {"tls": {"client_cert_chain": [certs["client"].pem]}}, certs["client"].x5t
        if kind == 1:
            return {"tls": {"client_cert_chain": (certs["other"].pem, certs["client"].pem)}}, certs["other"].x5t
        if kind == 2:
            return {"tls": {"client_cert_chain": ["junk"]}}, None
        if kind == 3:
            return {"tls": {"client_cert_chain": [certs["client"].pem[:-60]]}}, None
        shapes: list[Any] = [[], certs["client"].pem, [None], [""], None]
        if kind < 8:
            return {"tls": {"client_cert_chain": shapes[kind - 4]}}, "fallthrough"
        return {"tls": rng.choice((None, "x", [certs["client"].pem]))}, "fallthrough"


def put(document: dict[str, Any], name: str, value: Any) -> None:
    if value is ABSENT:
        document.pop(name, None)
    else:
        document[name] = value


def quote_pem(cert: Cert) -> bytes:
    """Envoy's ``Cert`` and nginx's ``$ssl_client_escaped_cert``: the URL-encoded PEM."""
    return quote(cert.pem, safe="").encode("ascii")


def non_canonical(value: str) -> str:
    """The same bytes' base64url with unused low bits set in the last character (RFC 4648 §3.5)."""
    if len(value) % 4 == 0:
        return value + "A"  # a length no encoding has
    index = B64URL.index(value[-1])
    return value[:-1] + B64URL[index | (1 if len(value) % 4 == 3 else 3)] if index % 4 == 0 else value + "A"


def raw_json(document: dict[str, Any], kind: str, unique: str) -> tuple[bytes, bool]:
    """A JSON text for ``document`` edited at the text level, and whether a strict parser still reads it
    (then ``document`` is updated to what it reads)."""
    text = compact(document)
    body = text[1:-1]
    sep = b"," if body else b""
    if kind == "dup":
        name = next(iter(document), "jti")
        return b"{" + body + sep + json.dumps(name).encode() + b":" + compact(document.get(name)) + b"}", False
    if kind in ("nan", "infinity", "1e400"):
        literal = {"nan": b"NaN", "infinity": b"-Infinity", "1e400": b"1e400"}[kind]
        return b"{" + body + sep + b'"iat":' + literal + b"}", False
    if kind == "bigint":
        return b"{" + body + sep + b'"big":' + b"9" * 5000 + b"}", False
    name = f"x-{unique}"  # a member name no document holds yet
    if kind in ("deep40", "deep20"):
        depth = 40 if kind == "deep40" else 20
        if kind == "deep20":
            nested: Any = []
            for _ in range(depth - 1):
                nested = [nested]
            document[name] = nested
        return b"{" + body + sep + f'"{name}":'.encode() + b"[" * depth + b"]" * depth + b"}", kind == "deep20"
    if kind == "lone-surrogate":
        return b"{" + body + sep + f'"{name}":"\\ud800"'.encode() + b"}", False
    if kind == "pair-surrogate":
        document[name] = "\U0001f600"
        return b"{" + body + sep + f'"{name}":"\\ud83d\\ude00"'.encode() + b"}", True
    if kind == "bom":
        return b"\xef\xbb\xbf" + text, False
    if kind == "trailing":
        return text + b" x", False
    if kind == "trailing-ws":
        return text + b" \n\t\r", True
    if kind == "leading-ws":
        return b" \n" + text, True
    if kind == "pretty":
        return json.dumps(document, indent=2).encode("ascii"), True
    if kind == "escaped":  # the first member name's first character as a \\u escape: the same document
        return (b'{"\\u%04x' % text[2] + text[3:], True) if body else (text, True)
    if kind == "array":
        return b"[" + text + b"]", False
    if kind == "bad-utf8":
        return b"{" + body + sep + b'"x":"\xff\xfe"}', False
    if kind == "single-quotes":
        return text.replace(b'"', b"'"), not text.count(b'"')
    if kind == "comment":
        return b"{/* c */" + body + b"}", False
    if kind == "trailing-comma":
        return b"{" + body + b",}", False
    return {"string": b'"x"', "null": b"null", "empty": b"", "number": b"5"}[kind], False


def edit_proof(text: bytes, rng: random.Random) -> bytes:
    """One byte-level edit of a proof: inside one of its parts, or of the whole."""
    parts = text.split(b".")
    kind = rng.choice(PROOF_EDITS)
    index = rng.randrange(len(parts))
    part = parts[index]
    at = rng.randrange(len(part) + 1)
    if kind == "flip" and part:
        at %= len(part)
        part = part[:at] + bytes([part[at] ^ (1 << rng.randrange(8))]) + part[at + 1 :]
    elif kind == "delete" and part:
        part = part[: at % len(part)] + part[at % len(part) + 1 :]
    elif kind == "insert":
        part = part[:at] + bytes([rng.choice(b"A-_=+/.~ \t\x00\x7f\x80\xff")]) + part[at:]
    elif kind == "truncate":
        part = part[:at]
    elif kind == "replace":
        part = "".join(rng.choice(B64URL) for _ in range(rng.randrange(80))).encode()
    elif kind == "empty":
        part = b""
    elif kind == "case" and part:
        at %= len(part)
        part = part[:at] + part[at : at + 1].swapcase() + part[at + 1 :]
    elif kind == "swap" and len(parts) > 1:
        other = (index + rng.randrange(1, len(parts))) % len(parts)
        parts[index], parts[other] = parts[other], parts[index]
        return b".".join(parts)
    elif kind == "duplicate":
        parts.insert(rng.randrange(len(parts) + 1), part)
        return b".".join(parts)
    elif kind == "dot":
        return rng.choice((text + b".", b"." + text, text.replace(b".", b"..", 1)))
    elif kind == "ws":
        return rng.choice((b" ", b"\t", b"", b" \t")) + text + rng.choice((b" ", b"\t", b"", b"\t "))
    elif kind == "space-inside":
        at = rng.randrange(1, len(text))
        return text[:at] + b" " + text[at:]
    elif kind == "non-ascii":
        return text[:at] + "\u00e9".encode() + text[at:]
    elif kind == "huge":
        return text + b"A" * rng.choice((9000, 20_000))
    elif kind == "extra-part":
        return text + b"." + text.split(b".")[0]
    parts[index] = part
    return b".".join(parts)


def proof_strings(proof: Proof) -> list[str]:
    """The proof's values a client chose (>= 16 characters): none may come back in a response."""
    found: list[str] = []
    for document in (proof.header, proof.claims):
        if not isinstance(document, dict):
            continue
        values = list(document.values())
        if isinstance(document.get("jwk"), dict):
            values += list(document["jwk"].values())
        found += [value for value in values if isinstance(value, str) and len(value) >= 16]
    return found


# -- checking one case ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_family: Counter[str] = field(default_factory=Counter)
    family_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: int = 0
    samples: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.by_family.update(other.by_family)
        self.family_status.update(other.family_status)
        self.reasons.update(other.reasons)
        self.failures += other.failures
        self.samples.extend(other.samples[: max(0, 20 - len(self.samples))])


# RFC 9110 §11.6.1 / §5.6.2: challenge = auth-scheme SP auth-param *( ", " auth-param ), challenges
# separated by ", ". The guard writes every value as a quoted-string of printable ASCII without '"'
# and '\\' (challenge._quoted), so nothing else is well-formed here.
_CHALLENGE_SCHEME = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ")
_CHALLENGE_PARAM = re.compile(rb'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)="([\x20\x21\x23-\x5b\x5d-\x7e]*)"')
CHALLENGE_PARAMS = frozenset(
    {"realm", "error", "error_description", "scope", "acr_values", "max_age", "algs", "resource_metadata"}
)
ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_token",
        "insufficient_scope",
        "insufficient_user_authentication",
        "invalid_dpop_proof",
        "use_dpop_nonce",
    }
)
BODY_MEMBERS = frozenset({"error", "error_description", "scope"})


def parse_challenges(value: bytes) -> list[tuple[str, dict[str, str]]] | None:
    """The challenges of one WWW-Authenticate value, or None when it is not well-formed."""
    found: list[tuple[str, dict[str, str]]] = []
    position, end = 0, len(value)
    while True:
        scheme = _CHALLENGE_SCHEME.match(value, position)
        if scheme is None:
            return None
        position = scheme.end()
        params: dict[str, str] = {}
        while True:
            param = _CHALLENGE_PARAM.match(value, position)
            if param is None:
                return None
            name = param.group(1).decode("ascii").lower()
            if name in params:
                return None
            params[name] = param.group(2).decode("ascii")
            position = param.end()
            if position == end:
                found.append((scheme.group(1).decode("ascii"), params))
                return found
            if value[position : position + 2] != b", ":
                return None
            position += 2
            if _CHALLENGE_PARAM.match(value, position) is None:
                break  # the next challenge starts here
        found.append((scheme.group(1).decode("ascii"), params))


def challenge_problems(reply: Reply, document: Any, *, dpop_scheme: bool) -> list[str]:
    """What is wrong with the reply's challenge (and DPoP-Nonce field), for a 400/401/403 or any other."""
    found: list[str] = []
    fields = [value for name, value in reply.headers if name.lower() == b"www-authenticate"]
    nonces = [value for name, value in reply.headers if name.lower() == b"dpop-nonce"]
    if reply.status not in (400, 401, 403):
        if fields:
            found.append(f"a challenge on a {reply.status}")
        if nonces:
            found.append(f"a DPoP-Nonce on a {reply.status}")
        return found
    if len(fields) != 1 or b"\r" in fields[0] or b"\n" in fields[0]:
        return [f"bad challenge {fields!r:.120}"]
    challenges = parse_challenges(fields[0])
    if challenges is None:
        return [f"malformed challenge {fields[0]!r:.200}"]
    if [scheme for scheme, _ in challenges] != ["Bearer", "DPoP"]:
        found.append(f"challenges {[scheme for scheme, _ in challenges]} (want Bearer, DPoP)")
    errors = []
    for scheme, params in challenges:
        if next(iter(params)) != "realm" or not params.keys() <= CHALLENGE_PARAMS:
            found.append(f"{scheme} challenge with params {list(params)}")
        if ("algs" in params) != (scheme == "DPoP") or not set(params.get("algs", "ES256").split()) <= DPOP_ALGS:
            found.append(f"{scheme} challenge with algs {params.get('algs')!r}")
        if "error" in params:
            errors.append((scheme, params))
            if params["error"] not in ERROR_CODES:
                found.append(f"unknown error code {params['error']!r:.60}")
        if ("error_description" in params) != ("error" in params):
            found.append(f"{scheme} challenge: error_description without error, or the reverse")
        if "scope" in params and params.get("error") != "insufficient_scope":
            found.append(f"{scheme} challenge: scope without insufficient_scope")
    if len(errors) > 1:
        found.append("an error on both challenges")
    body_error = document.get("error") if isinstance(document, dict) else None
    if errors:
        params = errors[0][1]
        if body_error != params["error"] or document.get("error_description") != params["error_description"]:
            found.append(f"body error {body_error!r:.40} is not the challenge's {params['error']!r}")
        if dpop_scheme and errors[0][0] != "DPoP":  # README, RFC 9449 §7.1: the scheme the client used
            found.append(f"DPoP-scheme refusal with its error ({params['error']}) on the Bearer challenge")
    elif body_error is not None:
        found.append(f"body error {body_error!r:.40} with no error in the challenge")
    want = {400: "invalid_request", 403: "insufficient_scope"}.get(reply.status)
    if want is not None and body_error != want:
        found.append(f"{reply.status} with error {body_error!r:.40}")
    if (body_error == "use_dpop_nonce") != bool(nonces) or len(nonces) > 1:
        found.append(f"DPoP-Nonce fields {nonces!r:.80} with error {body_error!r:.40}")
    return found


def body_document(reply: Reply) -> tuple[Any, list[str]]:
    try:
        document = json.loads(reply.body)
    except ValueError:
        return None, ["body is not JSON"]
    if not isinstance(document, dict):
        return document, ["body is not a JSON object"]
    return document, []


def echoes(case: Case, reply: Reply, boilerplate: bytes) -> bool:
    """Whether the reply holds a value of the request (a header value, its credentials, a proof member)."""
    secrets: list[bytes] = []
    for _, value in case.headers:
        secrets += [value, value.split(b" ", 1)[-1].strip()]
    for text in case.secrets:
        secrets += [text.encode("utf-8", "surrogatepass"), json.dumps(text)[1:-1].encode("ascii")]
    texts = [reply.body, *(value for _, value in reply.headers)]
    return any(
        len(secret) >= 16 and secret not in boilerplate and any(secret in text for text in texts) for secret in secrets
    )


def problems(
    case: Case,
    first: Reply,
    second: Reply,
    boilerplate: bytes,
    reasons: tuple[str | None, str | None] = (None, None),
) -> list[str]:
    """Every property this case's replies break (empty when all hold)."""
    found: list[str] = []
    first_reason, second_reason = reasons
    dpop_scheme = case.replay
    # A DPoP proof that passed every check was recorded (RFC 9449 §11.1), even when the request was
    # then refused for its scope or certificate: its second use is a replay.
    consumed = case.replay and (first.status in (200, 403) or first_reason == "certificate_mismatch")
    if consumed:
        if second.status != 401 or second_reason != "dpop_replay":
            found.append(f"proof accepted ({first.status}), then {second.status} {second_reason} on its second use")
    elif (first.status, first.body) != (second.status, second.body):
        found.append(f"nondeterministic: {first.status} then {second.status}")
    if case.expect is not None and first.status != case.expect:
        found.append(f"expected {case.expect}, got {first.status} ({first_reason})")
    if case.expect is None and first.status not in case.allowed:
        found.append(f"expected one of {sorted(case.allowed)}, got {first.status} ({first_reason})")
    if case.app != "bearer":
        for reply, reason in ((first, first_reason), (second, second_reason)):
            if reply.status == 503 and reason != "replay_store_unavailable":
                found.append(f"503 for {reason}")
    for reply in (first, second) if consumed else (first,):
        document, trouble = body_document(reply)
        found += trouble
        if isinstance(document, dict) and reply.status != 200 and not document.keys() <= BODY_MEMBERS:
            found.append(f"refusal body members {sorted(document)!r:.80}")
        if any(marker in reply.body for marker in TRACEBACK_MARKERS):
            found.append("traceback text in the body")
        found += challenge_problems(reply, document, dpop_scheme=dpop_scheme)
        if reply.status == 503 and b"retry-after" not in [name.lower() for name, _ in reply.headers]:
            found.append("503 without Retry-After")
        if echoes(case, reply, boilerplate):
            found.append("a value of the request is echoed")
    return found


async def run_cases(seed: int, count: int, families: tuple[str, ...] = FAMILIES) -> Tally:
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
    boilerplate = {"bearer": await reference_texts(app, valid[0][0])}
    world = None
    if any(family in SENDER_FAMILIES for family in families):
        certs = {name: make_cert(name, ec.generate_private_key(ec.SECP256R1())) for name in ("client", "other")}
        certs["rsa"] = make_cert("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        proof_keys = make_proof_keys()
        world = SenderWorld(
            build_sender_apps(issuer), proof_keys, mint_sender_tokens(issuer, keys, proof_keys, certs, rng), certs
        )
        for sender_app in world.apps.values():
            boilerplate[sender_app.name] = await sender_controls(sender_app, world)
    recorded: dict[str, set[tuple[str, str]]] = {name: set() for name in boilerplate}
    generator = Generator(seed, keys, valid, world, families)
    for _ in range(count):
        try:
            case = generator.case()
        except Exception as exc:  # a bug of this script, not of the guard: reported, and the run goes on
            tally.failures += 1
            tally.samples.append(f"generator error (this script's bug): {type(exc).__name__}: {exc}"[:300])
            continue
        reasons: tuple[str | None, str | None] = (None, None)
        try:
            if case.app == "bearer":
                first = await asgi_get(app, case.headers, case.path)
                second = await asgi_get(app, case.headers, case.path)
            else:
                assert world is not None
                target = world.apps[case.app]
                first, first_reason = await exchange(target, case)
                second, second_reason = await exchange(target, case)
                reasons = (first_reason, second_reason)
                if case.proof_id is not None and case.proof_id in recorded[case.app]:
                    case.expect, case.allowed = 401, frozenset({401})  # that proof was used by an earlier input
                if case.proof_id is not None and (first.status in (200, 403) or first_reason == "certificate_mismatch"):
                    recorded[case.app].add(case.proof_id)
            found = problems(case, first, second, boilerplate[case.app], reasons)
        except Exception as exc:  # an exception escaping the app is a failure, recorded with its input
            first = Reply(0, [], b"")
            found = [f"exception {type(exc).__name__}: {exc}"[:200]]
        tally.inputs += 1
        tally.requests += 2
        tally.statuses[first.status] += 1
        tally.by_family[case.family] += 1
        tally.family_status[(case.family, first.status)] += 1
        if reasons[0] is not None:
            tally.reasons[(case.family, reasons[0])] += 1
        if found:
            tally.failures += 1
            if len(tally.samples) < 20:
                tally.samples.append(
                    f"[{case.family} {case.app} {case.path} peer={case.client}] {'; '.join(found)}"
                    f" <- {shortened(case.headers)}"
                )
    if issuer.foreign_hosts:
        tally.failures += 1
        tally.samples.append(f"{issuer.foreign_hosts} requests went to a host other than the issuer")
    return tally


def shortened(headers: list[tuple[bytes, bytes]]) -> str:
    """A request's header list for a report line: each value cut to 160 bytes."""
    return repr([(name, value if len(value) <= 160 else value[:160] + b"...") for name, value in headers])


async def exchange(target: SenderApp, case: Case) -> tuple[Reply, str | None]:
    """One request to a sender guard, and the reason of its decision (from ``on_decision``)."""
    target.reasons.clear()
    reply = await asgi_get(
        target.app,
        case.headers,
        case.path,
        host=case.host,
        client=case.client,
        query=case.query,
        extensions=case.extensions,
    )
    return reply, (target.reasons[-1] if target.reasons else None)


async def reference_texts(app: Any, valid_token: str) -> bytes:
    """What the guard says whatever the input (header values, bodies): a value found in it is not an echo."""
    texts: list[bytes] = []
    for headers in ([], [(b"authorization", b"Bearer ")], bearer("x" * 20), bearer(valid_token)):
        for path in PATHS:
            reply = await asgi_get(app, headers, path)
            texts += [reply.body, *(value for _, value in reply.headers)]
    return b"\n".join(texts)


async def sender_controls(target: SenderApp, world: SenderWorld) -> bytes:
    """Controls for a sender guard (so its properties are not vacuous), and its reference texts.

    Every proof key: a valid ``DPoPKey`` proof is 200 once and ``dpop_replay`` after, and the oracle says
    so; a proof signed here (as the edited ones are) is accepted too. The texts: the guard's answers to
    requests without a token, without a proof, and (nonce guard) without its nonce.
    """
    texts: list[bytes] = []
    generator = SenderGenerator(random.Random(7), world)  # noqa: S311 - reproducible test inputs, not secrets
    keys = world.keys[:1] if target.limited_store else world.keys
    for key in keys:
        token = world.tokens[(key.name, "jkt")]
        setup = generator._setup(target)
        setup.path = "/me"
        host = [(b"api.example.com", ("api.example.com", None))]
        setup.url, setup.urls, setup.parts = model_url(target, False, host, ProxyModel(), "/me")
        setup.headers, setup.query, setup.peer = [(b"host", b"api.example.com")], b"", "203.0.113.9"
        made = generator._client_proof(setup, key, token.text, nonce=target.current_nonce)
        header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.jwk}
        claims = {**made.claims, "jti": generator._jti()}
        own = Proof(sign_proof(key, compact(header), compact(claims), key.alg), key, header, claims, key.alg)
        for proof in (made, own) if not target.limited_store else (made,):
            case = generator._dpop_request("control", setup, token, proof)
            if case.expect != 200 and (case.expect is not None or 200 not in case.allowed):
                raise SystemExit(f"control failed: the oracle refuses a valid {key.name} proof on {target.name}")
            first, first_reason = await exchange(target, case)
            second, second_reason = await exchange(target, case)
            if (first.status, second.status, second_reason) != (200, 401, "dpop_replay"):
                raise SystemExit(
                    f"control failed on {target.name}: a valid {key.name} proof got {first.status} ({first_reason}),"
                    f" then {second.status} ({second_reason})"
                )
    token = world.tokens[(world.keys[0].name, "jkt")]
    requests: list[list[tuple[bytes, bytes]]] = [[], [(b"authorization", b"DPoP " + token.text.encode())]]
    if target.nonces:
        setup = generator._setup(target)
        proof = generator._client_proof(setup, world.keys[0], token.text, nonce=None, url=API + "/me")
        requests.append([(b"authorization", b"DPoP " + token.text.encode()), (b"dpop", proof.text)])
    for headers in requests:
        for path in SENDER_PATHS:
            reply = await asgi_get(target.app, headers, path)
            texts += [reply.body, *(value for _, value in reply.headers)]
    return b"\n".join(texts)


def worker(args: tuple[int, int, tuple[str, ...]]) -> Tally:
    seed, count, families = args
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run_cases(seed, count, families))
    finally:
        loop.close()


# -- the command -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs to generate (default 1 000 000)")
    parser.add_argument("--seed", type=int, default=20_250_601, help="seed of the generator (default 20250601)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)")
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma-separated families (default: all of {FAMILIES})"
    )
    args = parser.parse_args(argv)
    families = tuple(name.strip() for name in args.families.split(",") if name.strip())
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    workers = max(1, min(args.workers, args.inputs))
    shares = [args.inputs // workers + (1 if index < args.inputs % workers else 0) for index in range(workers)]
    print(f"tokenguard long fuzz run: {args.inputs:,} inputs, seed {args.seed}, {workers} worker(s)", flush=True)
    started = time.perf_counter()
    jobs = [(args.seed + index, share, families) for index, share in enumerate(shares)]
    run: Callable[[tuple[int, int, tuple[str, ...]]], Tally] = worker
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
    for family in families:
        line = ", ".join(f"{s}: {n:,}" for (f, s), n in sorted(total.family_status.items()) if f == family)
        print(f"  {family:<11} {total.by_family[family]:>9,}  ({line})")
    if total.reasons:
        print("sender families, first decisions by reason:")
        for family in (f for f in families if f in SENDER_FAMILIES):
            counts = sorted(((n, r) for (f, r), n in total.reasons.items() if f == family), reverse=True)
            print(f"  {family:<11} " + ", ".join(f"{reason}: {n:,}" for n, reason in counts))
    print(f"failures: {total.failures}")
    for sample in total.samples:
        print(f"  {sample}")
    print(f"time: {elapsed:.1f} s ({total.inputs / elapsed:,.0f} inputs/s)")
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
