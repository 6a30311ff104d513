"""Several issuers and audiences (issue 7, item 4), with two real DevIdPs that share a ``kid``.

Issuers A and B each sign with their own RSA key, published under the same ``kid``; C is not
trusted and signs with A's very key. The guard reaches A and B in-process through one
``httpx.AsyncClient`` (a transport mounted per host) whose request hook records every call, so the
tests can say which issuer was asked what, and that some refusals ask nobody.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import b64url, private_key
from tokenguard import ConfigurationError, TokenGuard, sensitive
from tokenguard.authenticator import Authenticator, MultiIssuerAuthenticator
from tokenguard.events import DecisionEvent
from tokenguard.testing import (
    DEFAULT_AUDIENCE,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
    SigningKey,
)

ISSUER_A = "https://idp-a.tokenguard.test"
ISSUER_B = "https://idp-b.tokenguard.test"
ISSUER_C = "https://idp-c.tokenguard.test"
OTHER_AUDIENCE = "https://reports.tokenguard.test"
KID = "shared-kid"


class World:
    """Three DevIdPs on one clock, and the log of every request the guard sends to any of them."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        key_a = SigningKey("RS256", private_key("rsa", 0), kid=KID)
        key_b = SigningKey("RS256", private_key("rsa", 1), kid=KID)
        self.a = DevIdP(ISSUER_A, keys=KeyRing([key_a]), clock=self.clock)
        self.b = DevIdP(ISSUER_B, keys=KeyRing([key_b]), clock=self.clock)
        self.c = DevIdP(ISSUER_C, keys=KeyRing([key_a]), clock=self.clock)  # untrusted, with A's key
        self.calls: list[tuple[str, str]] = []

    def http_client(self) -> httpx.AsyncClient:
        async def record(request: httpx.Request) -> None:
            self.calls.append((request.url.host, request.url.path))

        def unreachable(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("no such host in this test", request=request)

        mounts = {idp.issuer: httpx.ASGITransport(app=idp.app) for idp in (self.a, self.b, self.c)}
        return httpx.AsyncClient(
            mounts=mounts, transport=httpx.MockTransport(unreachable), event_hooks={"request": [record]}
        )

    def hosts(self) -> set[str]:
        return {host for host, _ in self.calls}


@pytest.fixture
def world() -> World:
    return World()


def whoami() -> Callable[[Request], Any]:
    """A fresh endpoint (marks are attributes): who the token names, its issuer, what decided."""

    async def endpoint(request: Request) -> JSONResponse:
        token = request.auth.token
        return JSONResponse({"who": token.identity, "iss": token.issuer, "source": token.source})

    return endpoint


def whoami_app() -> Starlette:
    return Starlette(routes=[Route("/me", whoami()), Route("/sensitive", sensitive(whoami()))])


def make_guard(world: World, issuers: list[str] | None = None, **options: Any) -> TokenGuard:
    settings: dict[str, Any] = {
        "issuer": issuers or [ISSUER_A, ISSUER_B],
        "audience": [DEFAULT_AUDIENCE, OTHER_AUDIENCE],
        "http_client": world.http_client,
        "client_id": RESOURCE_CLIENT_ID,
        "client_secret": RESOURCE_CLIENT_SECRET,
        "clock": world.clock,
        **options,
    }
    return TokenGuard(whoami_app(), **settings)


@pytest.fixture
def guard(world: World) -> TokenGuard:
    return make_guard(world)


@pytest.fixture
def client(guard: TokenGuard) -> TestClient:
    return TestClient(guard)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the token's iss picks its issuer ---------------------------------------------------------------


def test_tokens_of_each_issuer_are_accepted(world: World, client: TestClient) -> None:
    """A's token is validated with A's keys and B's with B's, though both name the same kid."""
    a = client.get("/me", headers=bearer(world.a.issue_token(subject="ann")))
    b = client.get("/me", headers=bearer(world.b.issue_token(subject="bob")))
    assert a.json() == {"who": "ann", "iss": ISSUER_A, "source": "jwt"}
    assert b.json() == {"who": "bob", "iss": ISSUER_B, "source": "jwt"}
    assert ("idp-a.tokenguard.test", "/jwks") in world.calls
    assert ("idp-b.tokenguard.test", "/jwks") in world.calls


def test_unknown_issuer_is_refused_without_any_network_call(world: World, client: TestClient) -> None:
    """C's token (signed with A's own key and kid) is 401 wrong_issuer, and no issuer is contacted."""
    response = client.get("/me", headers=bearer(world.c.issue_token()))
    assert response.status_code == 401
    assert response.json()["error_description"] == "The access token comes from another issuer."
    assert world.calls == []


@pytest.mark.parametrize("iss", [None, 5, ["https://idp-a.tokenguard.test"], "https://idp-a.tokenguard.test/"])
def test_missing_or_inexact_iss_is_wrong_issuer_without_a_call(world: World, client: TestClient, iss: Any) -> None:
    """No iss, a non-string, a list, or a near miss (trailing slash): refused before any key lookup."""
    events: list[DecisionEvent] = []
    guard = make_guard(world, on_decision=events.append)
    claims = jwt.decode(world.a.issue_token(), options={"verify_signature": False})
    if iss is None:
        del claims["iss"]
    else:
        claims["iss"] = iss
    # Signed by A's real key and kid, raw: PyJWT itself refuses to encode a non-string iss.
    token = jwt.api_jws.encode(
        json.dumps(claims).encode(), private_key("rsa", 0), "RS256", headers={"kid": KID, "typ": "at+jwt"}
    )
    response = TestClient(guard).get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert [e.reason for e in events] == ["wrong_issuer"]
    if iss == "https://idp-a.tokenguard.test/":
        # A near miss of A goes to A's validator, which refuses it too and warms A's keys once in the
        # background (to tell the operator whether A signed it); no other issuer is contacted.
        assert {host for host, _ in world.calls} <= {"idp-a.tokenguard.test"}
    else:
        assert world.calls == []


def test_malformed_payload_is_refused_without_a_call(world: World, client: TestClient) -> None:
    """A JWS whose payload is not a JSON object is 401 before any issuer is chosen or contacted."""
    header = b64url(b'{"alg":"RS256","kid":"shared-kid"}')
    response = client.get("/me", headers=bearer(f"{header}.{b64url(b'[1,2]')}.{b64url(b'sig')}"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert world.calls == []


def test_token_of_a_is_never_checked_with_b_key(world: World) -> None:
    """B's key signing a token that claims iss A (same kid): checked against A's keys only, 401 bad_signature."""
    events: list[DecisionEvent] = []
    client = TestClient(make_guard(world, on_decision=events.append))
    forged_a = world.b.issue_token(iss=ISSUER_A)
    response = client.get("/me", headers=bearer(forged_a))
    assert response.status_code == 401
    assert world.hosts() == {"idp-a.tokenguard.test"}  # B's keys were never even fetched
    forged_b = world.a.issue_token(iss=ISSUER_B)
    assert client.get("/me", headers=bearer(forged_b)).status_code == 401
    assert [e.reason for e in events] == ["bad_signature", "bad_signature"]


def test_each_issuer_keeps_its_own_key_cache(world: World, guard: TokenGuard, client: TestClient) -> None:
    """One JWKS fetch per issuer, kept apart; status reports each; ready only when both are warm."""
    assert isinstance(guard.authenticator, MultiIssuerAuthenticator)
    client.get("/me", headers=bearer(world.a.issue_token()))
    assert guard.ready() is False  # B's keys are not known yet
    for _ in range(3):
        client.get("/me", headers=bearer(world.a.issue_token()))
        client.get("/me", headers=bearer(world.b.issue_token()))
    assert guard.ready() is True
    status = guard.status()
    assert status["issuer"] == [ISSUER_A, ISSUER_B]
    assert {issuer: item["jwks"]["fetches"] for issuer, item in status["issuers"].items()} == {
        ISSUER_A: 1,
        ISSUER_B: 1,
    }
    assert status["jwks"]["fetches"] == 2
    # The summed view has the single-issuer shape (_status.JWKSStatus): every kid, the last fetch.
    per_issuer_kids = {kid for item in status["issuers"].values() for kid in item["jwks"]["kids"]}
    assert status["jwks"]["kids"] == sorted(per_issuer_kids)
    assert per_issuer_kids
    assert status["jwks"]["last_fetch"] == max(item["jwks"]["last_fetch"] for item in status["issuers"].values())
    assert guard.metrics_snapshot()["jwks_fetches"] == 2
    assert world.calls.count(("idp-a.tokenguard.test", "/jwks")) == 1


def test_prefetch_warms_every_issuer_at_startup(world: World) -> None:
    """``prefetch=True``: the lifespan fetches both issuers' keys before the first request."""
    guard = make_guard(world, prefetch=True)
    with TestClient(guard):
        assert guard.ready() is True
        assert {("idp-a.tokenguard.test", "/jwks"), ("idp-b.tokenguard.test", "/jwks")} <= set(world.calls)


# -- introspection ---------------------------------------------------------------------------------------


def test_sensitive_route_asks_the_tokens_own_issuer(world: World, client: TestClient) -> None:
    """A's token is introspected at A and B's at B; a token B revoked is refused."""
    a_token, b_token = world.a.issue_token(), world.b.issue_token()
    assert client.get("/sensitive", headers=bearer(a_token)).json()["source"] == "introspection"
    assert ("idp-a.tokenguard.test", "/introspect") in world.calls
    assert ("idp-b.tokenguard.test", "/introspect") not in world.calls
    assert client.get("/sensitive", headers=bearer(b_token)).json()["iss"] == ISSUER_B
    assert ("idp-b.tokenguard.test", "/introspect") in world.calls
    world.b.revoke(b_token)
    revoked = TestClient(make_guard(world)).get("/sensitive", headers=bearer(b_token))
    assert revoked.status_code == 401


def test_opaque_token_goes_only_to_the_first_issuer_that_can_introspect(world: World, client: TestClient) -> None:
    """Opaque tokens carry no iss: the first configured issuer (A) decides, and B never sees them."""
    a_opaque = world.a.issue_token(token_format="opaque")
    b_opaque = world.b.issue_token(token_format="opaque")
    ok = client.get("/me", headers=bearer(a_opaque))
    assert ok.json() == {"who": "alice", "iss": ISSUER_A, "source": "introspection"}
    refused = client.get("/me", headers=bearer(b_opaque))
    assert refused.status_code == 401  # A does not know it: inactive
    assert "idp-b.tokenguard.test" not in world.hosts()


def test_issuer_order_decides_where_opaque_tokens_go(world: World) -> None:
    """With B listed first, B's opaque tokens are the ones accepted."""
    client = TestClient(make_guard(world, issuers=[ISSUER_B, ISSUER_A]))
    assert client.get("/me", headers=bearer(world.b.issue_token(token_format="opaque"))).status_code == 200
    assert client.get("/me", headers=bearer(world.a.issue_token(token_format="opaque"))).status_code == 401


def test_opaque_token_without_credentials_is_refused(world: World) -> None:
    """No issuer can introspect without client credentials: an opaque token is 401 opaque_not_supported."""
    events: list[DecisionEvent] = []
    guard = TokenGuard(
        whoami_app(),
        issuer=[ISSUER_A, ISSUER_B],
        audience=DEFAULT_AUDIENCE,
        http_client=world.http_client,
        clock=world.clock,
        on_decision=events.append,
    )
    response = TestClient(guard).get("/me", headers=bearer(world.a.issue_token(token_format="opaque")))
    assert response.status_code == 401
    assert [e.reason for e in events] == ["opaque_not_supported"]


# -- audiences ---------------------------------------------------------------------------------------------


def test_any_configured_audience_is_accepted(world: World, client: TestClient) -> None:
    """``audience=[...]``: a token for either audience passes; one for a third is 401 wrong_audience."""
    assert client.get("/me", headers=bearer(world.a.issue_token(audience=OTHER_AUDIENCE))).status_code == 200
    assert client.get("/me", headers=bearer(world.b.issue_token(audience=DEFAULT_AUDIENCE))).status_code == 200
    wrong = client.get("/me", headers=bearer(world.a.issue_token(audience="https://third.tokenguard.test")))
    assert wrong.status_code == 401
    assert wrong.json()["error_description"] == "The access token is not meant for this resource."


# -- configuration ----------------------------------------------------------------------------------------


def test_one_issuer_keeps_the_direct_path(world: World) -> None:
    """A single issuer, as a string or a one-item list, uses the Authenticator with no dispatch layer."""
    for issuer in (ISSUER_A, [ISSUER_A]):
        guard = TokenGuard(whoami_app(), issuer=issuer, audience=DEFAULT_AUDIENCE, http_client=world.http_client)
        assert type(guard.authenticator) is Authenticator
        assert guard.issuers == (ISSUER_A,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"issuer": []}, "issuer"),
        ({"issuer": [ISSUER_A, ISSUER_A]}, "more than once"),
        ({"issuer": [ISSUER_A, 5]}, "issuer"),
        ({"issuer": None}, "issuer"),
        ({"issuer": [ISSUER_A, "http://idp.example.com"]}, "https"),
        ({"issuer": [ISSUER_A, ISSUER_B], "jwks_uri": f"{ISSUER_A}/jwks"}, "jwks_uri"),
        ({"issuer": [ISSUER_A, ISSUER_B], "introspection_endpoint": f"{ISSUER_A}/introspect"}, "introspection"),
        (
            {"issuer": [ISSUER_A, ISSUER_B], "shared_secret": b"s" * 32, "algorithms": ["HS256"]},
            "shared_secret",
        ),
    ],
)
def test_bad_issuer_options_are_refused_at_construction(options: dict[str, Any], message: str) -> None:
    """An empty or repeated list, a bad URL, or one issuer's endpoints/secret with several: ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message):
        TokenGuard(whoami_app(), audience=DEFAULT_AUDIENCE, **options)


def test_per_issuer_introspection_credentials_are_never_shown_to_another_issuer() -> None:
    """introspection_credentials gives each issuer its own pair; unknown issuers or bad pairs are refused."""
    from tokenguard import ConfigurationError, TokenGuard

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    issuers = ["https://a.example", "https://b.example"]
    guard = TokenGuard(
        app,  # type: ignore[arg-type]
        issuer=issuers,
        audience="https://api.example",
        client_id="shared",
        client_secret="shared-secret",
        introspection_credentials={"https://b.example": ("api-at-b", "b-secret")},
    )
    options = {config.issuer: config.introspection for config in guard.configs}
    assert (options["https://a.example"].client_id, options["https://a.example"].client_secret) == (
        "shared",
        "shared-secret",
    )
    assert (options["https://b.example"].client_id, options["https://b.example"].client_secret) == (
        "api-at-b",
        "b-secret",
    )
    with pytest.raises(ConfigurationError, match="not configured"):
        TokenGuard(app, issuer=issuers, audience="x", introspection_credentials={"https://c.example": ("i", "s")})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pair"):
        TokenGuard(app, issuer=issuers, audience="x", introspection_credentials={"https://a.example": ("i", "")})  # type: ignore[arg-type]
