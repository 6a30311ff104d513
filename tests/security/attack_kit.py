"""The attack suite's harness: a real Starlette app behind TokenGuard, raw token builders, exact-refusal checks.

Tokens are built byte by byte here (segments, signatures) so an attack can be exactly what an attacker
sends; the keys are conftest's real RSA/EC/Ed25519 keys, the JWKS is served through respx by ``idp``.
Every refusal is checked for its status, its RFC 6750 ``error`` code in both the JSON body and the
``WWW-Authenticate`` challenge, the reason (through its fixed ``error_description``), a one-line
challenge, and the absence of the token from the response.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from conftest import AUDIENCE, ISSUER, Issuer, b64url, private_key
from tokenguard import TokenGuard, require_scopes
from tokenguard.testing import ManualClock

REALM = AUDIENCE  # the default realm is the first audience
ATTACKER = "https://attacker.example"

#: The fixed ``error_description`` of each refusal reason: asserting it proves *why* a token was refused.
WHY: dict[str, str] = {
    "malformed_header": "The bearer token is malformed.",
    "token_too_large": "The access token is too large.",
    "malformed_token": "The access token is malformed.",
    "unsupported_token": "Encrypted or malformed JOSE tokens are not accepted.",
    "disallowed_alg": "The access token uses a disallowed algorithm.",
    "crit": "The access token has an unsupported critical header.",
    "bad_kid": "The access token has a malformed key id.",
    "bad_typ": "The access token has the wrong type.",
    "wrong_issuer": "The access token comes from another issuer.",
    "expired": "The access token has expired.",
    "not_yet_valid": "The access token is not valid yet.",
    "issued_in_future": "The access token was issued in the future.",
    "key_mismatch": "The access token's algorithm does not fit its key.",
    "bad_signature": "The access token's signature is invalid.",
    "unknown_kid": "The access token is signed with an unknown key.",
    "wrong_audience": "The access token is not meant for this resource.",
    "bad_claim": "The access token has a malformed claim.",
    "missing_claim": "The access token lacks a required claim.",
    "insufficient_scope": "The access token does not grant the scope this resource requires.",
}


# -- building tokens --------------------------------------------------------------------------------


def segment(value: Any) -> str:
    """A base64url segment of a JSON value, or of raw text/bytes given as is."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value).encode())


def header(**extra: Any) -> dict[str, Any]:
    """The header the issuer puts on its RS256 tokens, with changes (None drops a member)."""
    head = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", **extra}
    return {name: value for name, value in head.items() if value is not None}


def sign_segments(head: str, body: str, private: Any, alg: str) -> str:
    """A compact JWS over exactly these two segments, signed with ``private`` using ``alg``."""
    signature = jwt.get_algorithm_by_name(alg).sign(f"{head}.{body}".encode(), private)
    return f"{head}.{body}.{b64url(signature)}"


def signed(idp: Issuer, head: Any, body: Any, kid: str = "rsa-1") -> str:
    """A JWS over these header/claims (JSON values or raw text), signed by the issuer's key ``kid``."""
    key = idp.key(kid)
    return sign_segments(segment(head), segment(body), key.private, key.alg)


def claims_text(idp: Issuer, **raw: str) -> str:
    """The issuer's default claims as JSON text, with some members' values replaced by raw JSON text."""
    text = json.dumps(idp.claims(**{name: f"@@{name}@@" for name in raw}))
    for name, value in raw.items():
        text = text.replace(f'"@@{name}@@"', value)
    return text


def hmac_token(idp: Issuer, key: bytes, *, kid: str | None = "rsa-1", alg: str = "HS256") -> str:
    """An HMAC-signed token whose secret is ``key`` (the alg-confusion attack keys it with a public key)."""
    head = segment(header(alg=alg, kid=kid))
    body = segment(idp.claims())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{head}.{body}.{b64url(hmac.new(key, f'{head}.{body}'.encode(), digest).digest())}"


def rsa_public_bytes(encoding: str) -> bytes:
    """The issuer's RSA public key, serialised as an attacker would download it."""
    public = private_key("rsa").public_key()
    if encoding == "pem":
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if encoding == "pkcs1-pem":
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def attacker_certificate() -> str:
    """A self-signed certificate (base64 DER, as in x5c) for the attacker's key, naming the issuer's host."""
    key = private_key("rsa", 1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


# -- the app under attack ----------------------------------------------------------------------------


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "scopes": sorted(request.auth.scopes)})


@require_scopes("admin")
async def admin(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


class Recorder:
    """Pass-through ASGI wrapper keeping the raw ``http.response.start`` messages, header bytes as sent."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.starts: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.starts.append(message)
            await send(message)

        await self.app(scope, receive, recording)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [(bytes(name), bytes(value)) for name, value in self.starts[-1]["headers"]]


@dataclass
class Target:
    """A guarded Starlette app and a client for it; ``realm`` is what its challenges must carry."""

    client: TestClient
    recorder: Recorder
    realm: str = REALM
    sent: list[str] = field(default_factory=list)

    def get(
        self, token: str | None = None, *, path: str = "/photos", authorization: str | None = None
    ) -> httpx.Response:
        """GET ``path`` with ``Bearer <token>`` (or a whole ``Authorization`` value, or none)."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            self.sent.append(token)
        elif authorization is not None:
            headers["Authorization"] = authorization
        return self.client.get(path, headers=headers)


@contextmanager
def attack_target(clock: ManualClock, **options: Any) -> Iterator[Target]:
    """A Starlette app with /me (any valid token), /photos (read:photos) and /admin (admin), guarded."""
    app = Starlette(routes=[Route("/me", me), Route("/photos", photos), Route("/admin", admin)])
    app.add_middleware(TokenGuard, **{"issuer": ISSUER, "audience": AUDIENCE, "clock": clock, **options})
    recorder = Recorder(app)
    with TestClient(recorder) as client:
        yield Target(client, recorder, realm=options.get("realm") or REALM)


_PARAM = re.compile(r'([a-z_]+)="([\x20\x21\x23-\x5b\x5d-\x7e]*)"')
#: Challenge parameters the guard may add that no attack test is about (RFC 9728 §5.1).
EXTRA_PARAMS = frozenset({"resource_metadata"})


def challenge_params(value: str) -> dict[str, str]:
    """The auth-params of a ``Bearer`` (or ``DPoP``) challenge, checked to be exactly ``name="value"`` pairs
    joined by ", "."""
    if value.startswith("Bearer ") and ", DPoP " in value:  # the whole field: Bearer, then DPoP (RFC 9449 §7.2)
        value, dpop = value.split(", DPoP ", 1)
        challenge_params("DPoP " + dpop)
    scheme = "DPoP " if value.startswith("DPoP ") else "Bearer "
    assert value.startswith(scheme), value
    pairs = _PARAM.findall(value[len(scheme) :])
    assert ", ".join(f'{name}="{text}"' for name, text in pairs) == value[len(scheme) :], value
    names = [name for name, _ in pairs]
    assert len(set(names)) == len(names), value
    return dict(pairs)


def core_params(value: str) -> dict[str, str]:
    """``challenge_params`` without the parameters in ``EXTRA_PARAMS``."""
    return {name: text for name, text in challenge_params(value).items() if name not in EXTRA_PARAMS}


def assert_refused(target: Target, response: httpx.Response, status: int, error: str, why: str) -> None:
    """The exact refusal: status, ``error`` in body and challenge, reason, one-line challenge, no token echoed."""
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["error"], body["error_description"]) == (error, WHY[why]), body
    raw = [value for name, value in target.recorder.raw_headers() if name.lower() == b"www-authenticate"]
    # One field: the Bearer challenge carries the error; the DPoP one (DPoP is accepted by default)
    # follows and names the proof algorithms only (RFC 9449 §7.2).
    assert len(raw) == 1
    assert b"\r" not in raw[0]
    assert b"\n" not in raw[0]
    challenge, dpop = raw[0].split(b", DPoP ", 1)
    assert dpop.startswith(f'realm="{target.realm}", algs="'.encode())
    assert b"error" not in dpop
    text = challenge.decode("ascii")
    assert text.startswith(f'Bearer realm="{target.realm}", ')
    expected = {"realm": target.realm, "error": error, "error_description": WHY[why]}
    if status == 403:
        expected["scope"] = core_params(text).get("scope", "")
    assert core_params(text) == expected
    assert_not_echoed(target, response)


def assert_ok(target: Target, response: httpx.Response) -> None:
    """A control: the same app accepts the legitimate token."""
    assert response.status_code == 200, response.text
    assert "www-authenticate" not in response.headers
    assert_not_echoed(target, response)


def assert_not_echoed(target: Target, response: httpx.Response) -> None:
    """No token sent so far (nor its signature) appears in the response's body or headers."""
    texts = [response.text, repr(target.recorder.raw_headers())]
    for token in target.sent:
        secrets = [part for part in (token, *token.split(".")) if len(part) >= 24]
        for secret in secrets:
            for text in texts:
                assert secret not in text
