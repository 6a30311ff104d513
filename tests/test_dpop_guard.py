"""Issue 13 at the guard: DPoP-bound tokens (RFC 9449) end to end, accepted and refused.

Real tokens from the DevIdP (in-process), real proofs signed by ``DPoPKey``, a real Starlette app
behind ``TokenGuard``, driven by Starlette's ``TestClient`` (proof headers from the ``dpop_client``
fixture) or by ``httpx`` with ``DPoPAuth``. Each refusal is checked four ways: the status, the body's
``error``, the ``WWW-Authenticate`` field (``Bearer ..., DPoP realm=..., algs=...`` in one field, the
error on the challenge of the scheme the client used) and the decision event's reason.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from tokenguard import Rule, require_scopes, sender_constrained, sensitive
from tokenguard._binding import Binding
from tokenguard._dpop import normalize_htu
from tokenguard.dpop import DPoPAuth, DPoPKey, access_token_hash
from tokenguard.events import DecisionEvent
from tokenguard.store import MemoryStore
from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DevIdP
from tokenguard.testing.pytest_plugin import DPoPClient, GuardedAppFactory

REALM = "https://api.tokenguard.test"  # the DevIdP's default audience: the guard's realm
API = "https://api.tokenguard.test"  # where the httpx clients reach the guarded app
ALGS = "ES256 ES384 ES512 PS256 PS384 PS512 RS256 RS384 RS512 EdDSA"
T0 = 1_800_000_000  # a whole second, so proof iat offsets are exact
SECRET_A = b"a" * 32
SECRET_B = b"b" * 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the app ---------------------------------------------------------------------------------------------------


def _binding(request: StarletteRequest | WebSocket) -> list[str] | None:
    binding = request.auth.binding
    return [binding.method, binding.thumbprint] if binding is not None else None


async def me(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity, "binding": _binding(request), "source": request.auth.source})


@require_scopes("photos:write")
async def upload(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"binding": _binding(request)})


@sender_constrained
async def transfer(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"binding": _binding(request)})


async def pay(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"binding": _binding(request)})


@sensitive
async def account(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"binding": _binding(request), "source": request.auth.source})


#: Endpoints that accepted a WebSocket: a refusal must come before accept.
ACCEPTED: list[str] = []


async def socket(websocket: WebSocket) -> None:
    ACCEPTED.append(websocket.url.path)
    await websocket.accept()
    await websocket.send_json({"binding": _binding(websocket)})
    await websocket.close()


async def anything(scope: Scope, receive: Receive, send: Send) -> None:
    """Any method, any path below /any: the guard's check is all that is tested."""
    binding = scope["auth"].binding
    body = b"dpop" if binding is not None and binding.method == "dpop" else b"other"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


ROUTES = [
    Route("/me", me, methods=["GET", "POST", "PUT", "DELETE"]),
    Route("/photos", upload, methods=["POST"]),
    Route("/transfer", transfer, methods=["POST"]),
    Route("/pay", pay, methods=["POST"]),
    Route("/account", account),
    WebSocketRoute("/ws", socket),
    Mount("/any", app=anything),
]

Build = Callable[..., tuple[TestClient, list[DecisionEvent]]]


@pytest.fixture
def serve(guarded_app: GuardedAppFactory) -> Iterator[Build]:
    """``serve(**options) -> (client, events)``: the app behind a guard trusting ``dev_idp``, started."""
    with ExitStack() as stack:

        def build(routes: list[Any] | None = None, **options: Any) -> tuple[TestClient, list[DecisionEvent]]:
            events: list[DecisionEvent] = []
            app = guarded_app(Starlette(routes=routes or ROUTES), on_decision=[events.append], **options)
            return stack.enter_context(TestClient(app)), events

        yield build


@pytest.fixture
def other_key() -> DPoPKey:
    return DPoPKey.generate("EdDSA")


# -- what a refusal looks like ---------------------------------------------------------------------------------

_PARAM = re.compile(
    r'\s*(?:(?P<scheme>[A-Za-z][A-Za-z0-9-]*) +)?(?P<name>[a-z_]+)="(?P<value>(?:[^"\\]|\\.)*)"\s*(?:,|$)'
)


def challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """The challenges of one ``WWW-Authenticate`` field, in order: (scheme, auth-params)."""
    found: list[tuple[str, dict[str, str]]] = []
    position = 0
    while position < len(value):
        match = _PARAM.match(value, position)
        assert match is not None, f"unparsable challenge at {value[position:]!r}"
        if match["scheme"]:
            found.append((match["scheme"], {}))
        assert found, "an auth-param before any scheme"
        assert match["name"] not in found[-1][1], f"{match['name']} given twice"
        found[-1][1][match["name"]] = match["value"]
        position = match.end()
    return found


def refused(
    response: httpx.Response,
    events: list[DecisionEvent],
    *,
    status: int = 401,
    error: str | None,
    reason: str,
    scheme: str = "DPoP",
    dpop_offered: bool = True,
    realm: str = REALM,
) -> dict[str, dict[str, str]]:
    """Assert one refusal (status, body, challenge, event); return the challenges' params by scheme."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body.get("error") == error
    fields = response.headers.get_list("www-authenticate")
    assert len(fields) == 1, fields  # one field holding both challenges (RFC 9449 §7.2's example)
    found = challenges(fields[0])
    assert [name for name, _ in found] == (["Bearer", "DPoP"] if dpop_offered else ["Bearer"])
    params = dict(found)
    for name, auth_params in params.items():
        assert auth_params["realm"] == realm
        # The error is on the challenge of the scheme the client used, and only there.
        assert auth_params.get("error") == (error if name == scheme else None), (name, auth_params)
    if dpop_offered:
        assert params["DPoP"]["algs"] == ALGS
    assert "algs" not in params["Bearer"]
    assert ("dpop-nonce" in response.headers) == (error == "use_dpop_nonce")
    assert (events[-1].outcome, events[-1].reason, events[-1].status) == ("deny", reason, status)
    return params


def allowed(response: httpx.Response, events: list[DecisionEvent]) -> Any:
    assert response.status_code == 200, response.text
    assert (events[-1].outcome, events[-1].reason) == ("allow", "ok")
    return response.json() if response.headers.get("content-type") == "application/json" else response.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic() -> dict[str, str]:
    credentials = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


# -- accepted ----------------------------------------------------------------------------------------------------


def test_a_bound_token_with_a_valid_proof_is_accepted(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve()
    token = dpop_client.token(scopes=["read"])
    response = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    assert allowed(response, events) == {
        "sub": "alice",
        "binding": ["dpop", dpop_client.key.thumbprint],
        "source": "jwt",
    }
    assert "dpop-nonce" not in response.headers  # no nonces unless dpop_nonce=True
    # The token is in the verified cache now: sent as Bearer it is still refused (RFC 9449 §7.2).
    refused(
        client.get("/me", headers=bearer(token)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
    )


def test_request_auth_binding_is_the_binding_type(guarded_app: GuardedAppFactory, dpop_client: DPoPClient) -> None:
    seen: list[Any] = []

    async def endpoint(request: StarletteRequest) -> PlainTextResponse:
        seen.append(request.auth.binding)
        return PlainTextResponse("ok")

    app = guarded_app(Starlette(routes=[Route("/me", endpoint)]))
    token = dpop_client.token()
    with TestClient(app) as client:
        assert client.get("/me", headers=dpop_client.headers("GET", "/me", token)).status_code == 200
        assert client.get("/me", headers=bearer(dpop_client.idp.issue_token())).status_code == 200
    assert seen == [Binding("dpop", dpop_client.key.thumbprint), None]


def test_a_fastapi_app_takes_the_proof_too(guarded_app: GuardedAppFactory, dpop_client: DPoPClient) -> None:
    api = FastAPI()

    @api.post("/transfer")
    @sender_constrained
    async def fastapi_transfer(request: Request) -> dict[str, Any]:
        return {"binding": _binding(request)}

    app = guarded_app(api)
    token = dpop_client.token()
    with TestClient(app) as client:
        ok = client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token))
        assert (ok.status_code, ok.json()) == (200, {"binding": ["dpop", dpop_client.key.thumbprint]})
        plain = client.post("/transfer", headers=bearer(dpop_client.idp.issue_token()))
        assert (plain.status_code, plain.json()["error"]) == (401, "invalid_token")


def test_a_proof_header_next_to_a_bearer_token_is_ignored(serve: Build, dpop_client: DPoPClient) -> None:
    """A Bearer request asks for no proof: an unbound token is accepted as a bearer token, binding None."""
    client, events = serve()
    token = dpop_client.idp.issue_token()
    proof = dpop_client.headers("GET", "/me", token)["DPoP"]
    response = client.get("/me", headers={**bearer(token), "DPoP": proof})
    assert allowed(response, events)["binding"] is None


def test_the_htu_is_compared_after_normalisation_and_without_the_query(serve: Build, dpop_client: DPoPClient) -> None:
    """RFC 9449 §4.3 point 9: query and fragment ignored, RFC 3986 §6.2.2-6.2.3 normalisation on both sides."""
    client, events = serve()
    token = dpop_client.token()
    key = dpop_client.key
    now = int(dpop_client.idp.clock())
    for url, proof_for in [
        ("/me?page=2", "http://testserver/me"),
        ("/me", "HTTP://TestServer:80/%6De"),
        ("/me?page=2", "http://testserver/./me"),
    ]:
        proof = key.proof("GET", proof_for, access_token=token, iat=now)
        response = client.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert allowed(response, events)["binding"] == ["dpop", key.thumbprint], (url, proof_for)


def test_a_proof_whose_htu_holds_a_query_is_compared_without_it(serve: Build, dev_idp: DevIdP) -> None:
    """A proof signed by hand with a query (and fragment) in htu: the server ignores both (§4.3 point 9)."""
    client, events = serve()
    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private, "ES256")
    token = dev_idp.issue_token(dpop_jkt=key.thumbprint)
    claims = {
        "jti": "query-in-htu",
        "htm": "GET",
        "htu": "http://testserver/me?other=1#frag",
        "iat": int(dev_idp.clock()),
        "ath": access_token_hash(token),
    }
    proof = jwt.encode(claims, private, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": key.public_jwk})
    response = client.get("/me?page=2", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert allowed(response, events)["binding"] == ["dpop", key.thumbprint]


@pytest.mark.anyio
async def test_dpop_auth_end_to_end_with_a_nonce_round_trip(guarded_app: GuardedAppFactory, dev_idp: DevIdP) -> None:
    """DevIdP token endpoint with a proof → a DPoP-bound token → the guarded API, which asks for its nonce
    once (401 use_dpop_nonce + DPoP-Nonce); DPoPAuth retries once with it and then sends it at once."""
    key = DPoPKey.generate("ES256")
    auth = DPoPAuth(key, clock=dev_idp.clock)
    async with dev_idp.http_client() as idp:
        issued = await idp.post(
            "/token", data={"grant_type": "client_credentials", "scope": "read"}, auth=auth, headers=basic()
        )
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "DPoP"
    auth.access_token = issued.json()["access_token"]

    events: list[DecisionEvent] = []
    app = guarded_app(Starlette(routes=ROUTES), dpop_nonce=True, on_decision=[events.append])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API) as api:
        response = await api.get("/me", auth=auth)
        assert response.status_code == 200, response.text
        assert response.json()["binding"] == ["dpop", key.thumbprint]
        (first,) = response.history
        assert first.status_code == 401
        assert first.json()["error"] == "use_dpop_nonce"
        params = dict(challenges(first.headers["www-authenticate"]))
        assert params["DPoP"]["error"] == "use_dpop_nonce"
        assert "error" not in params["Bearer"]
        nonce = first.headers["dpop-nonce"]
        assert auth.nonce_for(API) == nonce
        assert [event.reason for event in events] == ["dpop_nonce_required", "ok"]

        # The nonce is known now: the next request carries it at once, no retry.
        again = await api.post("/me", auth=auth)
        assert (again.status_code, again.history) == (200, [])
        assert [event.reason for event in events] == ["dpop_nonce_required", "ok", "ok"]


@pytest.mark.anyio
async def test_dpop_auth_through_the_fixture(guarded_app: GuardedAppFactory, dpop_client: DPoPClient) -> None:
    events: list[DecisionEvent] = []
    app = guarded_app(Starlette(routes=ROUTES), on_decision=[events.append])
    auth = dpop_client.auth(dpop_client.token(scopes=["photos:write"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API) as api:
        uploaded = await api.post("/photos", auth=auth)
        assert allowed(uploaded, events) == {"binding": ["dpop", dpop_client.key.thumbprint]}
        # The same auth at a path the proof does not name: each request gets its own proof.
        assert (await api.get("/me?x=1", auth=auth)).json()["binding"] == ["dpop", dpop_client.key.thumbprint]


# -- refused -----------------------------------------------------------------------------------------------------


def test_a_bound_token_sent_as_bearer_is_refused(serve: Build, dpop_client: DPoPClient) -> None:
    """RFC 9449 §7.2: a DPoP-bound token used as a bearer token MUST be refused — even with a proof beside it."""
    client, events = serve()
    token = dpop_client.token()
    refused(
        client.get("/me", headers=bearer(token)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
    )
    with_proof = {**bearer(token), "DPoP": dpop_client.headers("GET", "/me", token)["DPoP"]}
    refused(
        client.get("/me", headers=with_proof),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
    )


def test_the_dpop_scheme_without_a_proof_is_refused(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve()
    token = dpop_client.token()
    response = client.get("/me", headers={"Authorization": f"DPoP {token}"})
    refused(response, events, error="invalid_dpop_proof", reason="bad_dpop_proof")


def test_two_proofs_are_refused(serve: Build, dpop_client: DPoPClient) -> None:
    """RFC 9449 §4.3 point 1: exactly one DPoP header, even when both proofs are good."""
    client, events = serve()
    token = dpop_client.token()
    first = dpop_client.headers("GET", "/me", token)
    second = dpop_client.headers("GET", "/me", token)
    headers = [("Authorization", f"DPoP {token}"), ("DPoP", first["DPoP"]), ("DPoP", second["DPoP"])]
    refused(client.get("/me", headers=headers), events, error="invalid_dpop_proof", reason="bad_dpop_proof")
    # Neither proof was spent on the refused request: one of them alone is accepted.
    assert allowed(client.get("/me", headers=first), events)["binding"] == ["dpop", dpop_client.key.thumbprint]


def test_a_proof_from_another_key_is_refused(serve: Build, dpop_client: DPoPClient, other_key: DPoPKey) -> None:
    client, events = serve()
    token = dpop_client.token()
    proof = other_key.proof("GET", "http://testserver/me", access_token=token, iat=int(dpop_client.idp.clock()))
    response = client.get("/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    refused(response, events, error="invalid_dpop_proof", reason="dpop_binding_mismatch")


@pytest.mark.parametrize(
    ("proof_method", "method"), [("POST", "GET"), ("GET", "POST"), ("get", "GET"), ("PUT", "DELETE")]
)
def test_a_proof_for_another_method_is_refused(
    serve: Build, dpop_client: DPoPClient, proof_method: str, method: str
) -> None:
    """RFC 9449 §4.3 point 8: htm is the method, compared case-sensitively (RFC 9110 §9.1)."""
    client, events = serve()
    token = dpop_client.token()
    headers = dpop_client.headers(proof_method, "/me", token)
    response = client.request(method, "/me", headers=headers)
    refused(response, events, error="invalid_dpop_proof", reason="dpop_htm_mismatch")


@pytest.mark.parametrize(
    "proof_url",
    [
        "http://api.other.example/me",  # another host
        "http://testserver/you",  # another path
        "http://testserver/me/",  # a trailing slash is another path
        "https://testserver/me",  # another scheme
        "http://testserver:8080/me",  # another port
        "http://testserver/ME",  # paths are case-sensitive
    ],
)
def test_a_proof_for_another_url_is_refused(serve: Build, dpop_client: DPoPClient, proof_url: str) -> None:
    client, events = serve()
    token = dpop_client.token()
    headers = dpop_client.headers("GET", proof_url, token)
    refused(client.get("/me?q=1", headers=headers), events, error="invalid_dpop_proof", reason="dpop_htu_mismatch")


@pytest.mark.parametrize(
    ("options", "offset", "accepted"),
    [
        # dpop_iat_window=10 with leeway=5: 15 s either side, not one more.
        ({"dpop_iat_window": 10, "leeway": 5}, -15, True),
        ({"dpop_iat_window": 10, "leeway": 5}, 15, True),
        ({"dpop_iat_window": 10, "leeway": 5}, -16, False),
        ({"dpop_iat_window": 10, "leeway": 5}, 16, False),
        # The defaults: 60 s and a leeway of 30 s.
        ({}, -90, True),
        ({}, 90, True),
        ({}, -91, False),
        ({}, 91, False),
    ],
)
def test_iat_must_be_within_the_window_and_leeway(
    serve: Build, dpop_client: DPoPClient, options: dict[str, Any], offset: int, accepted: bool
) -> None:
    dpop_client.idp.clock.set(T0)
    client, events = serve(**options)
    token = dpop_client.token(expires_in=3600)
    proof = dpop_client.key.proof("GET", "http://testserver/me", access_token=token, iat=T0 + offset)
    response = client.get("/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    if accepted:
        allowed(response, events)
    else:
        refused(response, events, error="invalid_dpop_proof", reason="dpop_iat_out_of_window")


@pytest.mark.parametrize("ath_of", ["nothing", "another token"])
def test_ath_must_be_the_hash_of_this_token(serve: Build, dpop_client: DPoPClient, ath_of: str) -> None:
    """RFC 9449 §4.3 point 12: with an access token, ath is required and is the hash of that token."""
    client, events = serve()
    token = dpop_client.token()
    hashed = None if ath_of == "nothing" else dpop_client.token()
    proof = dpop_client.key.proof("GET", "http://testserver/me", access_token=hashed, iat=int(dpop_client.idp.clock()))
    response = client.get("/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    refused(response, events, error="invalid_dpop_proof", reason="dpop_ath_mismatch")


def test_a_replayed_proof_is_refused(serve: Build, dpop_client: DPoPClient) -> None:
    """RFC 9449 §11.1: a proof is good for one request; its jti is remembered."""
    client, events = serve()
    token = dpop_client.token()
    headers = dpop_client.headers("GET", "/me", token)
    allowed(client.get("/me", headers=headers), events)
    refused(client.get("/me", headers=headers), events, error="invalid_dpop_proof", reason="dpop_replay")
    # Still refused a little later, within the proof's window; a fresh proof is fine.
    dpop_client.idp.clock.advance(30)
    refused(client.get("/me", headers=headers), events, error="invalid_dpop_proof", reason="dpop_replay")
    allowed(client.get("/me", headers=dpop_client.headers("GET", "/me", token)), events)


def test_a_replay_is_refused_for_as_long_as_the_proof_is_valid(serve: Build, dpop_client: DPoPClient) -> None:
    dpop_client.idp.clock.set(T0)
    client, events = serve()  # window 60 s, leeway 30 s: a proof is valid for iat within 90 s of now
    token = dpop_client.token(expires_in=3600)
    proof = dpop_client.key.proof("GET", "http://testserver/me", access_token=token, iat=T0 + 90)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    allowed(client.get("/me", headers=headers), events)
    for later in (179, 180):  # the proof's iat is within the window until T0 + 180, inclusive
        dpop_client.idp.clock.set(T0 + later)
        response = client.get("/me", headers=headers)
        assert (response.status_code, events[-1].reason) == (401, "dpop_replay"), later
    dpop_client.idp.clock.set(T0 + 181)
    refused(client.get("/me", headers=headers), events, error="invalid_dpop_proof", reason="dpop_iat_out_of_window")


def test_an_unbound_token_with_the_dpop_scheme_is_refused(serve: Build, dpop_client: DPoPClient) -> None:
    """The proof is good, but the token names no key (no cnf.jkt): the DPoP scheme proves nothing."""
    client, events = serve()
    token = dpop_client.idp.issue_token()
    response = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    refused(response, events, error="invalid_token", reason="dpop_binding_mismatch")


def test_the_algorithm_list_is_offered_and_enforced(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop_algorithms=["EdDSA"])
    token = dpop_client.token()  # the fixture's key signs with ES256
    response = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_dpop_proof"
    params = dict(challenges(response.headers["www-authenticate"]))
    assert params["DPoP"]["algs"] == "EdDSA"
    assert params["DPoP"]["error"] == "invalid_dpop_proof"
    assert events[-1].reason == "bad_dpop_proof"


# -- nonces (RFC 9449 §9) -----------------------------------------------------------------------------------------


def test_a_proof_without_the_nonce_gets_one(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop_nonce=True)
    token = dpop_client.token()
    response = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    refused(response, events, error="use_dpop_nonce", reason="dpop_nonce_required")
    nonce = response.headers["dpop-nonce"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", nonce)
    ok = client.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=nonce))
    assert allowed(ok, events)["binding"] == ["dpop", dpop_client.key.thumbprint]


def test_a_made_up_or_stale_nonce_gets_a_fresh_one(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop_nonce=True)
    token = dpop_client.token(expires_in=3600)
    made_up = client.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce="A" * 43))
    refused(made_up, events, error="use_dpop_nonce", reason="dpop_nonce_required")
    nonce = made_up.headers["dpop-nonce"]

    # A nonce is good in its window and the next (up to twice 300 s), then stale.
    dpop_client.idp.clock.advance(300)
    allowed(client.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=nonce)), events)
    dpop_client.idp.clock.advance(301)
    stale = client.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=nonce))
    refused(stale, events, error="use_dpop_nonce", reason="dpop_nonce_required")
    fresh = stale.headers["dpop-nonce"]
    assert fresh != nonce
    allowed(client.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=fresh)), events)


def test_the_nonce_is_checked_after_the_proof(serve: Build, dpop_client: DPoPClient, other_key: DPoPKey) -> None:
    """A proof that fails another check is refused for that, not answered with a nonce to retry with."""
    client, events = serve(dpop_nonce=True)
    token = dpop_client.token()
    proof = other_key.proof("GET", "http://testserver/me", access_token=token, iat=int(dpop_client.idp.clock()))
    response = client.get("/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    refused(response, events, error="invalid_dpop_proof", reason="dpop_binding_mismatch")


def test_a_nonce_works_across_guards_sharing_the_secret(serve: Build, dpop_client: DPoPClient) -> None:
    """Stateless nonces: guard B accepts guard A's nonce with the same secret and no shared store."""
    first, first_events = serve(dpop_nonce=True, dpop_nonce_secret=SECRET_A)
    second, second_events = serve(dpop_nonce=True, dpop_nonce_secret=SECRET_A)
    token = dpop_client.token()
    asked = first.get("/me", headers=dpop_client.headers("GET", "/me", token))
    refused(asked, first_events, error="use_dpop_nonce", reason="dpop_nonce_required")
    nonce = asked.headers["dpop-nonce"]
    ok = second.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=nonce))
    assert allowed(ok, second_events)["binding"] == ["dpop", dpop_client.key.thumbprint]


def test_a_nonce_from_a_guard_with_another_secret_is_refused(serve: Build, dpop_client: DPoPClient) -> None:
    first, first_events = serve(dpop_nonce=True, dpop_nonce_secret=SECRET_A)
    second, second_events = serve(dpop_nonce=True, dpop_nonce_secret=SECRET_B)
    token = dpop_client.token()
    nonce = first.get("/me", headers=dpop_client.headers("GET", "/me", token)).headers["dpop-nonce"]
    response = second.get("/me", headers=dpop_client.headers("GET", "/me", token, nonce=nonce))
    refused(response, second_events, error="use_dpop_nonce", reason="dpop_nonce_required")
    assert response.headers["dpop-nonce"] != nonce
    assert first_events[-1].reason == "dpop_nonce_required"


# -- replay across guards ----------------------------------------------------------------------------------------


def test_a_shared_store_refuses_a_replay_at_another_guard(
    serve: Build, dpop_client: DPoPClient, dev_idp: DevIdP
) -> None:
    store = MemoryStore(clock=dev_idp.clock)
    first, first_events = serve(replay_store=store)
    second, second_events = serve(replay_store=store)
    token = dpop_client.token()
    headers = dpop_client.headers("GET", "/me", token)
    allowed(first.get("/me", headers=headers), first_events)
    refused(second.get("/me", headers=headers), second_events, error="invalid_dpop_proof", reason="dpop_replay")
    assert len(store) == 1


def test_without_a_shared_store_each_guard_sees_a_proof_once(serve: Build, dpop_client: DPoPClient) -> None:
    """What a shared store buys: guards with stores of their own each accept the same proof once."""
    first, first_events = serve()
    second, second_events = serve()
    token = dpop_client.token()
    headers = dpop_client.headers("GET", "/me", token)
    allowed(first.get("/me", headers=headers), first_events)
    allowed(second.get("/me", headers=headers), second_events)
    refused(second.get("/me", headers=headers), second_events, error="invalid_dpop_proof", reason="dpop_replay")


# -- modes and marks ---------------------------------------------------------------------------------------------


def test_dpop_off_treats_the_dpop_scheme_as_no_token(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop="off")
    token = dpop_client.token()
    response = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    params = refused(response, events, error=None, reason="missing_token", dpop_offered=False)
    assert set(params["Bearer"]) == {"realm", "resource_metadata"}  # a bare challenge
    # A bound token is still never a bearer token.
    refused(
        client.get("/me", headers=bearer(token)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
        dpop_offered=False,
    )
    allowed(client.get("/me", headers=bearer(dpop_client.idp.issue_token())), events)


def test_dpop_required_refuses_a_bearer_token(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop="required")
    plain = dpop_client.idp.issue_token(scopes=["photos:write"])
    refused(
        client.get("/me", headers=bearer(plain)),
        events,
        error="invalid_token",
        reason="sender_constraint_required",
        scheme="Bearer",
    )
    token = dpop_client.token(scopes=["photos:write"])
    assert allowed(client.get("/me", headers=dpop_client.headers("GET", "/me", token)), events)["binding"] == [
        "dpop",
        dpop_client.key.thumbprint,
    ]
    allowed(client.post("/photos", headers=dpop_client.headers("POST", "/photos", token)), events)


@pytest.mark.parametrize(
    ("path", "options"),
    [("/transfer", {}), ("/pay", {"rules": [Rule("/pay", sender_constrained=True)]})],
    ids=["mark", "rule"],
)
def test_a_sender_constrained_route_takes_only_a_proven_token(
    serve: Build, dpop_client: DPoPClient, path: str, options: dict[str, Any]
) -> None:
    """``@sender_constrained`` on the endpoint, or ``Rule(..., sender_constrained=True)``: the same policy."""
    client, events = serve(**options)
    plain = dpop_client.idp.issue_token()
    refused(
        client.post(path, headers=bearer(plain)),
        events,
        error="invalid_token",
        reason="sender_constraint_required",
        scheme="Bearer",
    )
    token = dpop_client.token()
    ok = client.post(path, headers=dpop_client.headers("POST", path, token))
    assert allowed(ok, events) == {"binding": ["dpop", dpop_client.key.thumbprint]}
    # Other routes still take the bearer token.
    assert allowed(client.get("/me", headers=bearer(plain)), events)["binding"] is None


def test_insufficient_scope_with_dpop_is_on_the_dpop_challenge(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve()
    token = dpop_client.token(scopes=["photos:read"])
    response = client.post("/photos", headers=dpop_client.headers("POST", "/photos", token))
    params = refused(response, events, status=403, error="insufficient_scope", reason="insufficient_scope")
    assert params["DPoP"]["scope"] == "photos:write"
    assert "scope" not in params["Bearer"]
    # With Bearer, the same refusal is on the Bearer challenge.
    plain = dpop_client.idp.issue_token(scopes=["photos:read"])
    params = refused(
        client.post("/photos", headers=bearer(plain)),
        events,
        status=403,
        error="insufficient_scope",
        reason="insufficient_scope",
        scheme="Bearer",
    )
    assert params["Bearer"]["scope"] == "photos:write"


# -- cnf.jkt from introspection: opaque tokens, @sensitive routes ---------------------------------------------------

OPAQUE_AUDIENCE = "https://opaque.tokenguard.test"


def test_an_opaque_bound_token_is_bound_by_the_introspection_answer(
    serve: Build, dpop_client: DPoPClient, dev_idp: DevIdP, other_key: DPoPKey
) -> None:
    dev_idp.add_audience(OPAQUE_AUDIENCE, format="opaque")
    client, events = serve(audience=OPAQUE_AUDIENCE)
    token = dpop_client.token(audience=OPAQUE_AUDIENCE)
    assert token.count(".") == 0  # opaque: the key it is bound to is known only to the issuer
    ok = client.get("/me", headers=dpop_client.headers("GET", "/me", token))
    assert allowed(ok, events) == {
        "sub": "alice",
        "binding": ["dpop", dpop_client.key.thumbprint],
        "source": "introspection",
    }
    refused(
        client.get("/me", headers=bearer(token)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
        realm=OPAQUE_AUDIENCE,
    )
    now = int(dev_idp.clock())
    proof = other_key.proof("GET", "http://testserver/me", access_token=token, iat=now)
    response = client.get("/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    refused(response, events, error="invalid_dpop_proof", reason="dpop_binding_mismatch", realm=OPAQUE_AUDIENCE)
    # An opaque token the issuer did not bind proves nothing with the DPoP scheme.
    unbound = dev_idp.issue_token(audience=OPAQUE_AUDIENCE)
    refused(
        client.get("/me", headers=dpop_client.headers("GET", "/me", unbound)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        realm=OPAQUE_AUDIENCE,
    )


def test_a_sensitive_route_takes_a_bound_token_with_its_proof(
    serve: Build, dpop_client: DPoPClient, dev_idp: DevIdP
) -> None:
    client, events = serve(introspection_cache_ttl=0)
    token = dpop_client.token()
    ok = client.get("/account", headers=dpop_client.headers("GET", "/account", token))
    assert allowed(ok, events) == {"binding": ["dpop", dpop_client.key.thumbprint], "source": "introspection"}
    refused(
        client.get("/account", headers=bearer(token)),
        events,
        error="invalid_token",
        reason="dpop_binding_mismatch",
        scheme="Bearer",
    )
    # Revoked: the issuer's answer decides, whatever the proof.
    assert dev_idp.revoke(token)
    revoked = client.get("/account", headers=dpop_client.headers("GET", "/account", token))
    refused(revoked, events, error="invalid_token", reason="inactive")


# -- WebSockets ----------------------------------------------------------------------------------------------------


def test_a_websocket_upgrade_carries_the_proof(serve: Build, dpop_client: DPoPClient) -> None:
    """RFC 9449 §4.3: the upgrade request's method (GET) and its HTTP target URI (http://, not ws://)."""
    client, events = serve()
    token = dpop_client.token()
    ACCEPTED.clear()
    with client.websocket_connect("/ws", headers=dpop_client.headers("GET", "http://testserver/ws", token)) as ws:
        assert ws.receive_json() == {"binding": ["dpop", dpop_client.key.thumbprint]}
    assert ACCEPTED == ["/ws"]
    assert (events[-1].reason, events[-1].method) == ("ok", "WEBSOCKET")


def test_a_websocket_upgrade_gets_the_nonce_before_accept(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(dpop_nonce=True)
    token = dpop_client.token()
    ACCEPTED.clear()
    headers = dpop_client.headers("GET", "/ws", token)
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws", headers=headers):
        pass  # pragma: no cover - the connection is refused
    assert ACCEPTED == []
    assert (denied.value.status_code, denied.value.json()["error"]) == (401, "use_dpop_nonce")
    assert events[-1].reason == "dpop_nonce_required"
    nonce = denied.value.headers["dpop-nonce"]
    with client.websocket_connect("/ws", headers=dpop_client.headers("GET", "/ws", token, nonce=nonce)) as ws:
        assert ws.receive_json() == {"binding": ["dpop", dpop_client.key.thumbprint]}
    assert ACCEPTED == ["/ws"]


@pytest.mark.parametrize("proof", ["none", "POST"])
def test_a_websocket_without_a_good_proof_is_refused_before_accept(
    serve: Build, dpop_client: DPoPClient, proof: str
) -> None:
    client, events = serve()
    token = dpop_client.token()
    headers = {"Authorization": f"DPoP {token}"}
    if proof != "none":
        headers = dpop_client.headers(proof, "/ws", token)
    ACCEPTED.clear()
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws", headers=headers):
        pass  # pragma: no cover - the connection is refused
    assert ACCEPTED == []
    response = denied.value
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_dpop_proof"
    params = dict(challenges(response.headers["www-authenticate"]))
    assert params["DPoP"]["error"] == "invalid_dpop_proof"
    assert events[-1].reason == ("bad_dpop_proof" if proof == "none" else "dpop_htm_mismatch")


# -- a property: a proof is good for exactly its method and URL --------------------------------------------------

METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE", "REPORT"])
SEGMENT = st.lists(
    st.sampled_from([*"abcXYZ019-._~!$&'()*+,;=:@", "%20", "%2F", "%41", "é", "ü", "日"]), min_size=1, max_size=8
).map("".join)
PATHS = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda segments: "/any/" + "/".join(segments))


def test_a_proof_is_good_for_exactly_its_method_and_url(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve()
    token = dpop_client.token(expires_in=3600)
    key = dpop_client.key

    def send(method: str, url: str, proof_method: str, proof_url: str) -> httpx.Response:
        proof = key.proof(proof_method, proof_url, access_token=token, iat=int(dpop_client.idp.clock()))
        return client.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        method=METHODS, other_method=METHODS, path=PATHS, other_path=PATHS, query=st.sampled_from(["", "?a=1&b=%20"])
    )
    def check(method: str, other_method: str, path: str, other_path: str, query: str) -> None:
        # The URL exactly as the client sends it (httpx's encoding), which is what a client signs.
        parsed = httpx.URL("http://testserver" + path)
        # httpx removes dot segments ("/any/." is "/any"); the router would redirect "/any" to "/any/",
        # and the redirected request would carry the first URL's proof.
        assume(parsed.raw_path.startswith(b"/any/"))
        url = str(parsed)
        ok = send(method, url + query, method, url)
        assert ok.status_code == 200, (method, url, ok.text)
        assert method == "HEAD" or ok.text == "dpop"
        assert events[-1].reason == "ok"

        if other_method != method:
            wrong = send(method, url, other_method, url)
            assert wrong.status_code == 401, (method, other_method, url)
            assert events[-1].reason == "dpop_htm_mismatch"

        other_url = str(httpx.URL("http://testserver" + other_path))
        assume(normalize_htu(other_url) != normalize_htu(url))
        wrong = send(method, url, method, other_url)
        assert wrong.status_code == 401, (method, url, other_url)
        assert events[-1].reason == "dpop_htu_mismatch"

    check()


# -- the dispatch check --------------------------------------------------------------------------------------------


class RouterOnlyRoute(Route):
    """A route that matches only inside the router: the guard's prediction is wrong for it by construction,
    so the dispatch check applies the endpoint's own policy a second time."""

    def matches(self, scope: Any) -> Any:
        if "router" not in scope:
            return Match.NONE, {}
        return super().matches(scope)


@require_scopes("admin")
async def admin_only(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"binding": _binding(request)})


async def open_thing(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse("open")  # pragma: no cover - the router runs the other route


def test_the_dispatch_check_applies_the_endpoints_policy_to_a_bearer_token(
    serve: Build, dpop_client: DPoPClient
) -> None:
    """The Bearer counterpart of the next test: a mispredicted route is checked again, and passes."""
    client, events = serve(routes=[RouterOnlyRoute("/thing", admin_only), Route("/thing", open_thing)])
    response = client.get("/thing", headers=bearer(dpop_client.idp.issue_token(scopes=["admin"])))
    assert (response.status_code, response.json()) == (200, {"binding": None})
    assert [event.reason for event in events] == ["ok", "ok"]


def test_the_dispatch_check_does_not_count_the_proof_twice(serve: Build, dpop_client: DPoPClient) -> None:
    client, events = serve(routes=[RouterOnlyRoute("/thing", admin_only), Route("/thing", open_thing)])
    token = dpop_client.token(scopes=["admin"])
    response = client.get("/thing", headers=dpop_client.headers("GET", "/thing", token))
    assert events[-1].reason == "ok"
    assert (response.status_code, response.json()) == (200, {"binding": ["dpop", dpop_client.key.thumbprint]})
