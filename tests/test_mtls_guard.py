"""Issue 13 at the guard: certificate-bound tokens (RFC 8705 §3) accepted only over their certificate.

Real certificates made with ``cryptography``; real tokens from the DevIdP bound to them
(``cnf["x5t#S256"]``). The client certificate reaches the guard as a server that terminates TLS puts
it in the ASGI scope (``scope["extensions"]["tls"]["client_cert_chain"]``, added here by a small
ASGI wrapper, or in a hand-made scope), or in a header set by a proxy the guard trusts.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenguard import TokenGuard, sender_constrained
from tokenguard.events import DecisionEvent
from tokenguard.testing import DevIdP
from tokenguard.testing.pytest_plugin import DPoPClient, GuardedAppFactory, GuardOptions

REALM = "https://api.tokenguard.test"
PROXY = ("10.0.0.5", 41000)
STRANGER = ("203.0.113.9", 41000)
XFCC = "x-forwarded-client-cert"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_certificate(common_name: str, key: ec.EllipticCurvePrivateKey, issuer: Any = None) -> x509.Certificate:
    """A real X.509 certificate: self-signed, or signed by ``issuer`` (certificate, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = make_certificate("test CA", CA_KEY)
CLIENT = make_certificate("client", ec.generate_private_key(ec.SECP256R1()), (CA, CA_KEY))
OTHER = make_certificate("other client", ec.generate_private_key(ec.SECP256R1()))


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def x5t(cert: x509.Certificate) -> str:
    """RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(der(cert)).digest()).rstrip(b"=").decode("ascii")


# -- the app and the TLS connection ------------------------------------------------------------------------------


async def me(request: Request) -> JSONResponse:
    binding = request.auth.binding
    return JSONResponse({"binding": [binding.method, binding.thumbprint] if binding else None})


@sender_constrained
async def transfer(request: Request) -> JSONResponse:
    return await me(request)


ROUTES = [Route("/me", me), Route("/transfer", transfer, methods=["POST"])]


def over_tls(app: ASGIApp, chain: list[str] | None) -> ASGIApp:
    """What a server terminating TLS does: the client's certificate chain in the ASGI TLS extension."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and chain is not None:
            tls = {"server_cert": None, "client_cert_chain": chain, "tls_version": 0x0304, "cipher_suite": 0x1301}
            scope = {**scope, "scheme": "https", "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
        await app(scope, receive, send)

    return wrapped


Build = Callable[..., tuple[TestClient, list[DecisionEvent]]]


@pytest.fixture
def serve(guarded_app: GuardedAppFactory) -> Iterator[Build]:
    """``serve(chain=None, peer=..., **options) -> (client, events)``: the guarded app over a TLS connection
    carrying ``chain`` (``None``: no client certificate), reached from ``peer``."""
    with ExitStack() as stack:

        def build(
            chain: list[str] | None = None, peer: tuple[str, int] = STRANGER, **options: Any
        ) -> tuple[TestClient, list[DecisionEvent]]:
            events: list[DecisionEvent] = []
            app = guarded_app(Starlette(routes=ROUTES), on_decision=[events.append], **options)
            client = TestClient(over_tls(app, chain), base_url="https://testserver", client=peer)
            return stack.enter_context(client), events

        yield build


def refused(response: httpx.Response, events: list[DecisionEvent], *, reason: str, scheme: str = "Bearer") -> None:
    """401 invalid_token, the error on the challenge of the scheme used, and the event's reason."""
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    (field,) = response.headers.get_list("www-authenticate")
    bearer_part, _, dpop_part = field.partition(", DPoP realm=")
    assert bearer_part.startswith(f'Bearer realm="{REALM}"')
    assert ('error="invalid_token"' in bearer_part) is (scheme == "Bearer")
    assert ('error="invalid_token"' in dpop_part) is (scheme == "DPoP")
    assert "algs=" in dpop_part
    assert (events[-1].outcome, events[-1].reason, events[-1].status) == ("deny", reason, 401)


def allowed(response: httpx.Response, events: list[DecisionEvent]) -> Any:
    assert response.status_code == 200, response.text
    assert (events[-1].outcome, events[-1].reason) == ("allow", "ok")
    return response.json()["binding"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def bound(dev_idp: DevIdP) -> str:
    """A token bound to CLIENT's certificate."""
    return dev_idp.issue_token(cert_thumbprint=x5t(CLIENT))


# -- the TLS extension -------------------------------------------------------------------------------------------------


def test_the_certificate_of_the_connection_proves_the_token(serve: Build, bound: str) -> None:
    client, events = serve(chain=[pem(CLIENT), pem(CA)])
    assert allowed(client.get("/me", headers=bearer(bound)), events) == ["mtls", x5t(CLIENT)]


def test_without_a_client_certificate_the_token_is_refused(serve: Build, bound: str) -> None:
    client, events = serve(chain=None)
    refused(client.get("/me", headers=bearer(bound)), events, reason="certificate_mismatch")


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(lambda: [pem(OTHER)], id="another certificate"),
        pytest.param(lambda: [pem(CA), pem(CLIENT)], id="the client's certificate not first"),
        pytest.param(lambda: ["not a certificate"], id="junk"),
        pytest.param(lambda: [], id="an empty chain"),
    ],
)
def test_another_certificate_is_refused(serve: Build, bound: str, chain: Callable[[], list[str]]) -> None:
    client, events = serve(chain=chain())
    refused(client.get("/me", headers=bearer(bound)), events, reason="certificate_mismatch")


def test_an_unbound_token_over_a_certificate_is_a_bearer_token(serve: Build, dev_idp: DevIdP) -> None:
    client, events = serve(chain=[pem(CLIENT)])
    assert allowed(client.get("/me", headers=bearer(dev_idp.issue_token())), events) is None


def test_a_sender_constrained_route_takes_a_certificate_bound_token(serve: Build, bound: str, dev_idp: DevIdP) -> None:
    client, events = serve(chain=[pem(CLIENT)])
    assert allowed(client.post("/transfer", headers=bearer(bound)), events) == ["mtls", x5t(CLIENT)]
    refused(
        client.post("/transfer", headers=bearer(dev_idp.issue_token())), events, reason="sender_constraint_required"
    )


def test_dpop_required_takes_a_certificate_bound_token(serve: Build, bound: str, dev_idp: DevIdP) -> None:
    client, events = serve(chain=[pem(CLIENT)], dpop="required")
    assert allowed(client.get("/me", headers=bearer(bound)), events) == ["mtls", x5t(CLIENT)]
    refused(client.get("/me", headers=bearer(dev_idp.issue_token())), events, reason="sender_constraint_required")


def test_a_token_bound_to_a_key_and_a_certificate_needs_both(serve: Build, dpop_client: DPoPClient) -> None:
    token = dpop_client.idp.issue_token(dpop_jkt=dpop_client.key.thumbprint, cert_thumbprint=x5t(CLIENT))
    with_cert, events = serve(chain=[pem(CLIENT)])
    headers = dpop_client.headers("GET", "https://testserver/me", token)
    assert allowed(with_cert.get("/me", headers=headers), events) == ["dpop", dpop_client.key.thumbprint]
    refused(with_cert.get("/me", headers=bearer(token)), events, reason="dpop_binding_mismatch")

    without, other_events = serve(chain=None)
    headers = dpop_client.headers("GET", "https://testserver/me", token)
    refused(without.get("/me", headers=headers), other_events, reason="certificate_mismatch", scheme="DPoP")


def test_an_opaque_certificate_bound_token_is_bound_by_the_introspection_answer(serve: Build, dev_idp: DevIdP) -> None:
    audience = "https://opaque.tokenguard.test"
    dev_idp.add_audience(audience, format="opaque")
    token = dev_idp.issue_token(audience=audience, cert_thumbprint=x5t(CLIENT))
    assert "." not in token
    client, events = serve(chain=[pem(CLIENT)], audience=audience)
    assert allowed(client.get("/me", headers=bearer(token)), events) == ["mtls", x5t(CLIENT)]
    assert events[-1].source == "introspection"
    other, other_events = serve(chain=[pem(OTHER)], audience=audience)
    response = other.get("/me", headers=bearer(token))
    assert (response.status_code, other_events[-1].reason) == (401, "certificate_mismatch")


@pytest.mark.anyio
async def test_a_hand_made_scope_with_the_tls_extension(guard_options: GuardOptions, bound: str) -> None:
    """The ASGI app driven directly, with the scope a TLS-terminating server builds."""
    events: list[DecisionEvent] = []
    guard = TokenGuard(Starlette(routes=ROUTES), on_decision=[events.append], **guard_options())

    async def call(chain: list[str] | None) -> tuple[int, bytes]:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": "/me",
            "raw_path": b"/me",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"api.example.com"), (b"authorization", f"Bearer {bound}".encode())],
            "client": STRANGER,
            "server": ("10.0.0.1", 443),
            "extensions": {} if chain is None else {"tls": {"client_cert_chain": chain, "server_cert": None}},
        }
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await guard(scope, receive, send)
        body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
        return sent[0]["status"], body

    status, body = await call([pem(CLIENT)])
    assert (status, body) == (200, f'{{"binding":["mtls","{x5t(CLIENT)}"]}}'.encode())
    status, _ = await call([pem(OTHER)])
    assert (status, events[-1].reason) == (401, "certificate_mismatch")
    status, _ = await call(None)
    assert (status, events[-1].reason) == (401, "certificate_mismatch")


# -- a trusted proxy's header --------------------------------------------------------------------------------------


def xfcc_cert(cert: x509.Certificate) -> str:
    return f'Hash={hashlib.sha256(der(cert)).hexdigest()};Cert="{quote(pem(cert), safe="")}";Subject="CN=client"'


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param(XFCC, lambda: xfcc_cert(CLIENT), id="xfcc-cert-and-hash"),
        pytest.param(XFCC, lambda: f"Hash={hashlib.sha256(der(CLIENT)).hexdigest()}", id="xfcc-hash"),
        pytest.param("x-ssl-client-cert", lambda: quote(pem(CLIENT), safe=""), id="url-encoded-pem"),
    ],
)
def test_a_trusted_proxys_header_names_the_certificate(
    serve: Build, bound: str, header: str, value: Callable[[], str]
) -> None:
    options = {"client_certificate_header": header, "trusted_proxies": ["10.0.0.0/8"]}
    client, events = serve(chain=None, peer=PROXY, **options)
    assert allowed(client.get("/me", headers={**bearer(bound), header: value()}), events) == ["mtls", x5t(CLIENT)]
    # The same header from a client that is not a trusted proxy proves nothing.
    stranger, stranger_events = serve(chain=None, peer=STRANGER, **options)
    refused(
        stranger.get("/me", headers={**bearer(bound), header: value()}), stranger_events, reason="certificate_mismatch"
    )


def test_the_header_is_read_only_with_trusted_proxies(serve: Build, bound: str) -> None:
    client, events = serve(chain=None, peer=PROXY, client_certificate_header=XFCC)
    refused(
        client.get("/me", headers={**bearer(bound), XFCC: xfcc_cert(CLIENT)}), events, reason="certificate_mismatch"
    )


def test_a_header_naming_another_certificate_is_refused(serve: Build, bound: str) -> None:
    client, events = serve(chain=None, peer=PROXY, client_certificate_header=XFCC, trusted_proxies=["10.0.0.5"])
    refused(client.get("/me", headers={**bearer(bound), XFCC: xfcc_cert(OTHER)}), events, reason="certificate_mismatch")


def test_the_connections_own_certificate_wins_over_the_header(serve: Build, bound: str) -> None:
    """A proxy that connects with its own certificate makes bound tokens fail, never lets the header choose."""
    client, events = serve(chain=[pem(OTHER)], peer=PROXY, client_certificate_header=XFCC, trusted_proxies=["10.0.0.5"])
    refused(
        client.get("/me", headers={**bearer(bound), XFCC: xfcc_cert(CLIENT)}), events, reason="certificate_mismatch"
    )
