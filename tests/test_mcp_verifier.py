"""``MCPTokenVerifier`` and ``FastMCPTokenVerifier``: tokenguard's pipeline behind the MCP SDKs' verifier interface.

Real tokens from a ``DevIdP`` on a ``ManualClock``, reached through respx (its metadata, JWKS and RFC 7662
endpoint, every introspection counted); the verifier builds its own HTTP client, as in production. The
servers are the real ones: the official SDK's ``MCPServer`` and FastMCP's ``FastMCP``, their Streamable
HTTP apps driven in-process (``httpx2.ASGITransport``, lifespan run) with an ``initialize`` request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from tokenguard import ConfigurationError
from tokenguard.mcp import MCPTokenVerifier
from tokenguard.redis_store import RedisStore
from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP, KeyRing, ManualClock

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.tokenguard.test"
RESOURCE = "https://mcp.example.com/mcp"
OTHER_RESOURCE = "https://reports.example.com/mcp"
#: Far enough ahead that the SDK's own expiry check (``expires_at`` against the wall clock) never fires.
T0 = 1_800_000_000.0
SERVER_URL = "http://localhost:8000"  # a host the SDK's DNS-rebinding protection lets through
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


class World:
    """A DevIdP on a ManualClock behind respx; ``down`` makes every endpoint fail like a dead host."""

    def __init__(self, router: respx.MockRouter, keys: KeyRing) -> None:
        self.clock = ManualClock(T0)
        self.idp = DevIdP(ISSUER, keys=keys, default_audience=RESOURCE, clock=self.clock)
        self.idp.add_audience(OTHER_RESOURCE)
        self.introspections = 0
        self.down = False

        async def forward(request: httpx.Request) -> httpx.Response:
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            if request.url.path.endswith("/introspect"):
                self.introspections += 1
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.idp.app), base_url=ISSUER) as client:
                answer = await client.request(
                    request.method, str(request.url), headers=request.headers, content=request.content
                )
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        router.route(host="idp.tokenguard.test").mock(side_effect=forward)

    def token(self, scopes: list[str] | None = None, **claims: Any) -> str:
        return self.idp.issue_token(["read"] if scopes is None else scopes, **claims)

    def signed(self, claims: dict[str, Any], *, drop: tuple[str, ...] = ()) -> str:
        """A token signed by the DevIdP's RS256 key over exactly these claims (the defaults, minus ``drop``)."""
        key = self.idp.keys.key_for("RS256")
        now = int(self.clock())
        body = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "client_id": "dev-client", "scope": "read"}
        body.update(iat=now, exp=now + 300, jti="jti-" + str(now))
        body.update(claims)
        body = {name: value for name, value in body.items() if name not in drop}
        return jwt.encode(body, key.private, algorithm="RS256", headers={"typ": "at+jwt", "kid": key.kid})


@pytest.fixture
def world(dev_idp_keys: KeyRing) -> Iterator[World]:
    with respx.mock(assert_all_called=False) as router:
        yield World(router, dev_idp_keys)


async def _factory(world: World, kind: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """``factory(**options)``: verifiers of ``kind`` trusting the DevIdP, all closed after the test."""
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        settings: dict[str, Any] = {
            "issuer": ISSUER,
            "audience": RESOURCE,
            "client_id": RESOURCE_CLIENT_ID,
            "client_secret": RESOURCE_CLIENT_SECRET,
            "clock": world.clock,
            **options,
        }
        made.append(kind(**settings))
        return made[-1]

    yield factory
    for verifier in made:
        await verifier.aclose()


@pytest.fixture
async def make(world: World) -> AsyncIterator[Callable[..., MCPTokenVerifier]]:
    """``make(**options)``: an ``MCPTokenVerifier`` trusting the DevIdP (closed after the test)."""
    async for factory in _factory(world, MCPTokenVerifier):
        yield factory


@pytest.fixture
def verifier(make: Callable[..., MCPTokenVerifier]) -> MCPTokenVerifier:
    return make()


@asynccontextmanager
async def mcp_server(
    verifier: Any, *, required_scopes: list[str] | None = None, validate_token_resource: bool = True
) -> AsyncIterator[httpx2.AsyncClient]:
    """A client of the real SDK server's Streamable HTTP app, protected by ``verifier``; lifespan running."""
    server = MCPServer(
        "tokenguard-test",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=ISSUER,
            resource_server_url=RESOURCE,
            required_scopes=["read"] if required_scopes is None else required_scopes,
            validate_token_resource=validate_token_resource,
        ),
    )
    async with client_of(server.streamable_http_app(json_response=True)) as client:
        yield client


@asynccontextmanager
async def client_of(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    """A client of ``app``, its lifespan running."""
    # raise_app_exceptions=False: an exception the app raises is seen as the 500 a server would send.
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx2.AsyncClient(transport=transport, base_url=SERVER_URL) as client:
        yield client


async def initialize(client: httpx2.AsyncClient, token: str | bytes | None) -> httpx2.Response:
    headers: dict[str, Any] = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = (b"Bearer " + token) if isinstance(token, bytes) else f"Bearer {token}"
    return await client.post("/mcp", json=INITIALIZE, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return json.loads(base64.urlsafe_b64decode(head + "==")), json.loads(base64.urlsafe_b64decode(body + "=="))


# -- the real SDK server -------------------------------------------------------------------------------


async def test_a_good_token_initializes_an_mcp_session(world: World, verifier: MCPTokenVerifier) -> None:
    async with mcp_server(verifier) as client:
        answer = await initialize(client, world.token())
    assert answer.status_code == 200
    assert answer.json()["result"]["serverInfo"]["name"] == "tokenguard-test"


def _expired(world: World) -> str:
    token = world.token()
    world.clock.advance(300 + 30 + 1)  # past exp and the guard's 30 s leeway
    return token


def _alg_none(world: World) -> str:
    header, claims = segments(world.token())
    header["alg"] = "none"
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def _hs256_with_public_key(world: World) -> str:
    """The classic key confusion: HMAC keyed with the issuer's RSA public key (PEM), under the RSA key's kid."""
    key = world.idp.keys.key_for("RS256")
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, claims = segments(world.token())
    header["alg"] = "HS256"
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _tampered(world: World) -> str:
    """A real signature over other claims: the scope widened after signing."""
    token = world.token()
    _header, claims = segments(token)
    claims["scope"] = "read admin"
    return ".".join([token.split(".")[0], b64url(json.dumps(claims).encode()), token.split(".")[2]])


BAD_TOKENS: dict[str, Callable[[World], str]] = {
    "garbage": lambda world: "not-a-token",
    "expired": _expired,
    "wrong_audience": lambda world: world.token(aud="https://elsewhere.example.com/mcp"),
    "wrong_issuer": lambda world: world.token(iss="https://idp.evil.test"),
    "alg_none": _alg_none,
    "hs256_with_public_key": _hs256_with_public_key,
    "tampered": _tampered,
    "dpop_bound": lambda world: world.token(dpop_jkt=b64url(hashlib.sha256(b"some key").digest())),
    "mtls_bound": lambda world: world.token(cert_thumbprint=b64url(hashlib.sha256(b"some cert").digest())),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_a_bad_token_is_401_from_the_sdk_server(world: World, verifier: MCPTokenVerifier, kind: str) -> None:
    token = BAD_TOKENS[kind](world)
    async with mcp_server(verifier) as client:
        answer = await initialize(client, token)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_token"
    assert await verifier.verify_token(token) is None


async def test_no_token_and_a_non_ascii_token_are_401(world: World, verifier: MCPTokenVerifier) -> None:
    async with mcp_server(verifier) as client:
        assert (await initialize(client, None)).status_code == 401
        assert (await initialize(client, b"t\xf6ken")).status_code == 401  # latin-1 in the header
        assert (await initialize(client, world.token())).status_code == 200


async def test_the_sdks_required_scopes_answer_403_for_a_valid_token_without_them(
    world: World, verifier: MCPTokenVerifier
) -> None:
    async with mcp_server(verifier, required_scopes=["write"]) as client:
        refused = await initialize(client, world.token(["read"]))
        allowed = await initialize(client, world.token(["read", "write"]))
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert allowed.status_code == 200


# -- the AccessToken ------------------------------------------------------------------------------------


async def test_the_access_token_is_filled_from_the_validated_token(world: World, verifier: MCPTokenVerifier) -> None:
    token = world.token(["write", "read", "admin"])
    result = await verifier.verify_token(token)
    assert type(result) is AccessToken
    assert result.token == token
    assert result.client_id == "dev-client"
    assert result.scopes == ["admin", "read", "write"]
    assert result.expires_at == int(T0) + 300
    assert isinstance(result.expires_at, int)
    assert result.resource == RESOURCE
    assert result.subject == "alice"
    assert result.claims == segments(token)[1]
    assert type(result.claims) is dict
    assert result.claims["iss"] == ISSUER  # the SDK's principal_components reads the issuer from here


async def test_claims_are_a_private_deep_copy(world: World, verifier: MCPTokenVerifier) -> None:
    """The pipeline caches a verified token for every request with the same bytes; changing one answer's
    claims, nested values included, must not change the next one's."""
    token = world.token(roles={"admin": ["x"]})
    first = await verifier.verify_token(token)
    assert first is not None
    assert first.claims is not None
    first.claims["roles"]["admin"].append("injected")
    first.claims["sub"] = "mallory"
    again = await verifier.verify_token(token)
    assert again is not None
    assert again.claims is not None
    assert again.claims["roles"] == {"admin": ["x"]}
    assert again.subject == "alice"
    assert again.claims["sub"] == "alice"


async def test_a_token_naming_no_client_has_an_empty_client_id(world: World, verifier: MCPTokenVerifier) -> None:
    """The SDK's model requires a string; "" says no client was named, and the claims show no client_id."""
    result = await verifier.verify_token(world.signed({}, drop=("client_id",)))
    assert result is not None
    assert result.client_id == ""
    assert "client_id" not in (result.claims or {})
    assert result.subject == "alice"


async def test_an_opaque_token_is_introspected_and_its_answer_fills_the_fields(
    world: World, make: Callable[..., MCPTokenVerifier]
) -> None:
    """An opaque token is introspected; its answer's exp (or none) is what expires_at says."""
    verifier = make()
    opaque = world.idp.issue_token(["read"], token_format="opaque")
    result = await verifier.verify_token(opaque)
    assert result is not None
    assert result.expires_at == int(T0) + 300
    assert result.resource == RESOURCE
    assert world.introspections == 1


# -- audiences and resource ------------------------------------------------------------------------------


async def test_the_canonical_spelling_of_the_audience_is_accepted(world: World, verifier: MCPTokenVerifier) -> None:
    token = world.token(aud="HTTPS://MCP.Example.com:443/mcp")
    result = await verifier.verify_token(token)
    assert result is not None
    assert result.resource == RESOURCE  # the configured spelling, not the token's
    async with mcp_server(verifier) as client:
        assert (await initialize(client, token)).status_code == 200


async def test_resource_is_the_configured_audience_the_token_names(
    world: World, make: Callable[..., MCPTokenVerifier]
) -> None:
    verifier = make(audience=[OTHER_RESOURCE, RESOURCE])
    mine = await verifier.verify_token(world.token(aud=["https://unrelated.example.com", RESOURCE]))
    other = await verifier.verify_token(world.token(aud=OTHER_RESOURCE))
    assert mine is not None
    assert mine.resource == RESOURCE
    assert other is not None
    assert other.resource == OTHER_RESOURCE
    # The SDK refuses a token for another of the verifier's audiences when it validates the resource.
    async with mcp_server(verifier) as client:
        assert (await initialize(client, world.token(aud=OTHER_RESOURCE))).status_code == 401
        assert (await initialize(client, world.token(aud=RESOURCE))).status_code == 200
    async with mcp_server(verifier, validate_token_resource=False) as client:
        assert (await initialize(client, world.token(aud=OTHER_RESOURCE))).status_code == 200


# -- what a bare token cannot prove ------------------------------------------------------------------------


@pytest.mark.parametrize("dpop", ["allowed", "off"])
async def test_a_bound_token_is_refused_whatever_the_binding(
    world: World, make: Callable[..., MCPTokenVerifier], dpop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No DPoP proof or client certificate reaches a verifier, so any cnf makes the token unusable here."""
    caplog.set_level(logging.DEBUG, logger="tokenguard")
    verifier = make(dpop=dpop)
    jkt = b64url(hashlib.sha256(b"some key").digest())
    assert await verifier.verify_token(world.token(dpop_jkt=jkt)) is None
    assert await verifier.verify_token(world.token(cert_thumbprint=jkt)) is None
    assert await verifier.verify_token(world.token(dpop_jkt=jkt, cert_thumbprint=jkt)) is None
    # Refused as bound tokens (RFC 9449 §7.2), not for some other fault of the token.
    refusals = [record.getMessage() for record in caplog.records if "refused a token" in record.getMessage()]
    assert refusals == ["tokenguard: MCPTokenVerifier refused a token: unsupported_token"] * 3
    assert await verifier.verify_token(world.token()) is not None


@pytest.mark.parametrize(
    "token",
    ["tök", "a\x00b", "a\tb", "line\nbreak", "", "x" * (16 * 1024 + 1), "y" * 1_000_000, " " + "a" * 10],
    ids=["non_ascii", "nul", "tab", "newline", "empty", "one_over_max", "a_megabyte", "leading_space"],
)
async def test_unprintable_or_oversized_tokens_are_none_never_an_exception(
    verifier: MCPTokenVerifier, world: World, token: str
) -> None:
    assert await verifier.verify_token(token) is None


async def test_max_token_bytes_is_the_guards(world: World, make: Callable[..., MCPTokenVerifier]) -> None:
    token = world.token()
    assert await make(max_token_bytes=len(token)).verify_token(token) is not None
    assert await make(max_token_bytes=len(token) - 1).verify_token(token) is None


async def test_required_scopes_on_the_verifier_make_a_token_without_them_none(
    world: World, make: Callable[..., MCPTokenVerifier]
) -> None:
    verifier = make(required_scopes=["read", "write"])
    assert await verifier.verify_token(world.token(["read"])) is None
    granted = await verifier.verify_token(world.token(["read", "write"]))
    assert granted is not None
    assert granted.scopes == ["read", "write"]


# -- introspection ----------------------------------------------------------------------------------------


async def test_sensitive_introspects_and_sees_a_revoked_token(
    world: World, make: Callable[..., MCPTokenVerifier]
) -> None:
    sensitive = make(sensitive=True)
    ordinary = make()
    token = world.token()
    assert await sensitive.verify_token(token) is not None
    assert world.introspections == 1
    assert world.idp.revoke(token)
    # The answer is cached for introspection_cache_ttl (30 s): within it the verdict stands, no call made.
    assert await sensitive.verify_token(token) is not None
    assert world.introspections == 1
    world.clock.advance(31)
    assert await sensitive.verify_token(token) is None
    assert world.introspections == 2
    # Without sensitive the JWT is validated locally: its signature and exp are still good.
    assert await ordinary.verify_token(token) is not None
    assert world.introspections == 2


async def test_sensitive_server_refuses_a_revoked_token(world: World, make: Callable[..., MCPTokenVerifier]) -> None:
    verifier = make(sensitive=True, introspection_cache_ttl=0)
    token = world.token()
    async with mcp_server(verifier) as client:
        assert (await initialize(client, token)).status_code == 200
        world.idp.revoke(token)
        assert (await initialize(client, token)).status_code == 401


# -- the token cannot be checked now: None (401, logged), never an exception (a 500) ----------------------


async def test_an_unreachable_issuer_is_refused_and_logged_without_the_token(
    world: World, verifier: MCPTokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.down = True
    token = world.token()
    assert await verifier.verify_token(token) is None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any("could not check a token" in record.getMessage() for record in warnings)
    assert any(ISSUER in record.getMessage() for record in warnings)  # what failed is named, for the log
    assert token not in caplog.text


async def test_the_sdk_server_answers_401_never_500_while_the_issuer_is_down_and_200_after(
    world: World, verifier: MCPTokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    """The token-only protocol has no "try again later"; an exception would be a 500 (TokenGuard in front: 503)."""
    caplog.set_level(logging.DEBUG)
    token = world.token()
    world.down = True
    async with mcp_server(verifier) as client:
        outage = await initialize(client, token)
        world.down = False
        world.clock.advance(31)  # past the JWKS refetch cooldown
        recovered = await initialize(client, token)
    assert outage.status_code == 401
    assert 'error="invalid_token"' in outage.headers["www-authenticate"]
    assert recovered.status_code == 200
    assert token not in caplog.text


async def test_introspection_down_is_refused(
    world: World, make: Callable[..., MCPTokenVerifier], caplog: pytest.LogCaptureFixture
) -> None:
    verifier = make(sensitive=True)
    token = world.token()
    assert await verifier.verify_token(token) is not None  # keys now cached
    world.down = True
    world.clock.advance(31)  # past the cached introspection answer
    assert await verifier.verify_token(token) is None
    assert "introspection failed" in caplog.text
    assert token not in caplog.text


async def test_a_bug_in_the_pipeline_fails_closed_without_its_message(
    world: World, verifier: MCPTokenVerifier, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = world.token()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"could not handle {token}")

    monkeypatch.setattr(verifier.guard.authenticator, "authenticate", broken)
    assert await verifier.verify_token(token) is None
    assert "internal error while checking a token: ValueError" in caplog.text
    assert token not in caplog.text


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"leeway": -1}, "leeway"),
        ({"levay": 1}, "levay"),
        ({"http_timeout": "soon"}, "http_timeout"),
        ({"max_token_bytes": 0}, "max_token_bytes"),
        ({"issuer": "http://idp.example.com"}, "issuer"),
        ({"audience": []}, "audience"),
        ({"rules": ()}, "rules"),
        ({"on_decision": print}, "on_decision"),
        ({"client_certificate_header": "x-client-cert"}, "client_certificate_header"),
        ({"dpop": "required"}, "dpop"),
        ({"dpop": "sometimes"}, "dpop"),
        ({"sensitive": "yes"}, "sensitive"),
        ({"required_scopes": ["read write"]}, "required_scopes"),
        ({"sensitive": True, "client_id": None, "client_secret": None}, "client_id"),
    ],
)
def test_a_wrong_option_is_a_configuration_error_naming_it(options: dict[str, Any], named: str) -> None:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": RESOURCE,
        "client_id": RESOURCE_CLIENT_ID,
        "client_secret": RESOURCE_CLIENT_SECRET,
        **options,
    }
    with pytest.raises(ConfigurationError) as raised:
        MCPTokenVerifier(**settings)
    assert named in str(raised.value)
    assert str(raised.value).startswith("MCPTokenVerifier: ")


def test_the_sdk_missing_is_an_import_error_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tokenguard.mcp._sdk")
    monkeypatch.setitem(sys.modules, "mcp.server.auth.provider", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"pip install 'tokenguard-asgi\[mcp\]'"):
        importlib.import_module("tokenguard.mcp._sdk")


# -- lifecycle ---------------------------------------------------------------------------------------------


async def test_aclose_closes_the_guards_http_clients(world: World) -> None:
    made: list[httpx.AsyncClient] = []

    def client() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    verifier = MCPTokenVerifier(issuer=ISSUER, audience=RESOURCE, http_client=client, clock=world.clock)
    assert await verifier.verify_token(world.token()) is not None
    assert made
    assert not any(one.is_closed for one in made)
    await verifier.aclose()
    assert all(one.is_closed for one in made)
    await verifier.aclose()  # twice is harmless


async def test_fleet_mode_starts_the_revocation_feed_on_first_use(
    world: World, make: Callable[..., MCPTokenVerifier], redis_server: str
) -> None:
    """With ``shared_store`` (a real redis-server; skipped without one) the feed starts on the first token,
    as ``TokenGuard.__call__`` starts it, and a revocation applies to the verifier's tokens."""
    verifier = make(shared_store=RedisStore(redis_server, prefix=f"tg-mcp-{uuid.uuid4().hex}:"))
    fleet = verifier.guard.fleet
    assert fleet._task is None  # nothing runs before the first token
    token = world.token()
    assert await verifier.verify_token(token) is not None
    task = fleet._task
    assert task is not None
    assert not task.done()
    await verifier.guard.revoke(jti=segments(token)[1]["jti"])
    assert await verifier.verify_token(token) is None
    assert await verifier.verify_token(world.token()) is not None
    await verifier.aclose()
    assert fleet._task is None
    assert task.done()


# -- FastMCP ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def fastmcp_server(verifier: Any) -> AsyncIterator[httpx2.AsyncClient]:
    from fastmcp import FastMCP

    async with client_of(FastMCP("tokenguard-fastmcp", auth=verifier).http_app()) as client:
        yield client


@pytest.fixture
async def make_fastmcp(world: World) -> AsyncIterator[Callable[..., Any]]:
    pytest.importorskip("fastmcp")  # Python 3.11+; CI also runs 3.10
    from tokenguard.mcp import FastMCPTokenVerifier

    async for factory in _factory(world, FastMCPTokenVerifier):
        yield factory


async def test_fastmcp_server_accepts_a_good_token_and_refuses_bad_ones(
    world: World, make_fastmcp: Callable[..., Any]
) -> None:
    verifier = make_fastmcp()
    async with fastmcp_server(verifier) as client:
        good = await initialize(client, world.token())
        forged = await initialize(client, _hs256_with_public_key(world))
        wrong_audience = await initialize(client, world.token(aud="https://elsewhere.example.com/mcp"))
        bound = await initialize(client, world.token(dpop_jkt=b64url(hashlib.sha256(b"k").digest())))
        expired = await initialize(client, _expired(world))
    assert good.status_code == 200
    assert "serverInfo" in good.text
    assert [forged.status_code, wrong_audience.status_code, bound.status_code, expired.status_code] == [401] * 4
    assert forged.json()["error"] == "invalid_token"


async def test_fastmcp_access_token_fields(world: World, make_fastmcp: Callable[..., Any]) -> None:
    from fastmcp.server.auth.auth import AccessToken as FastMCPAccessToken

    verifier = make_fastmcp()
    token = world.token(["write", "read"], aud="HTTPS://mcp.example.com:443/mcp")
    result = await verifier.verify_token(token)
    assert type(result) is FastMCPAccessToken
    assert (result.token, result.client_id, result.subject) == (token, "dev-client", "alice")
    assert result.scopes == ["read", "write"]
    assert result.expires_at == int(T0) + 300
    assert result.resource == RESOURCE
    assert result.claims == segments(token)[1]
    assert await verifier.verify_token(world.signed({}, drop=("client_id",))) is not None
    assert (await verifier.verify_token(world.signed({}, drop=("client_id",)))).client_id == ""
    assert await verifier.verify_token("tök") is None


async def test_fastmcp_outage_is_refused_never_a_500(
    world: World, make_fastmcp: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = make_fastmcp()
    token = world.token()
    world.down = True
    assert await verifier.verify_token(token) is None
    async with fastmcp_server(verifier) as client:
        assert (await initialize(client, token)).status_code == 401
    assert "could not check a token" in caplog.text
    assert token not in caplog.text


async def test_fastmcp_options_go_to_the_base_class(world: World, make_fastmcp: Callable[..., Any]) -> None:
    """required_scopes is FastMCP's to check (a 403 with the scope), not the verifier's (a 401)."""
    verifier = make_fastmcp(
        required_scopes=["write"], base_url="https://mcp.example.com", resource_base_url="https://public.example.com"
    )
    assert verifier.required_scopes == ["write"]
    assert str(verifier.base_url).rstrip("/") == "https://mcp.example.com"
    assert str(verifier.resource_base_url).rstrip("/") == "https://public.example.com"
    assert await verifier.verify_token(world.token(["read"])) is not None
    async with fastmcp_server(verifier) as client:
        refused = await initialize(client, world.token(["read"]))
        allowed = await initialize(client, world.token(["read", "write"]))
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert allowed.status_code == 200


async def test_fastmcp_configuration_errors_name_the_option(make_fastmcp: Callable[..., Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"FastMCPTokenVerifier: .*leeway"):
        make_fastmcp(leeway=-1)
    with pytest.raises(ConfigurationError, match=r"FastMCPTokenVerifier: .*required_scopes"):
        make_fastmcp(required_scopes=[""])
    with pytest.raises(ConfigurationError, match="FastMCPTokenVerifier: dpop='required'"):
        make_fastmcp(dpop="required")


def test_fastmcp_missing_is_an_import_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastmcp")
    monkeypatch.delitem(sys.modules, "tokenguard.mcp._fastmcp", raising=False)
    monkeypatch.setitem(sys.modules, "fastmcp.server.auth", None)
    with pytest.raises(ImportError, match="pip install fastmcp"):
        importlib.import_module("tokenguard.mcp._fastmcp")


def test_the_verdict_never_shows_the_token_in_its_repr() -> None:
    from tokenguard.mcp._verify import Verified

    verdict = Verified(
        token="eyJ.secret-token-value.sig",
        client_id="c",
        scopes=["read"],
        expires_at=1,
        resource=None,
        subject="alice",
        issuer=None,
        claims={},
    )
    assert "secret-token-value" not in repr(verdict)
    assert "alice" in repr(verdict)
