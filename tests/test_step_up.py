"""RFC 9470 step-up authentication (issue 7, item 2), through real apps and the DevIdP.

``@require_auth_level(acr_values=[...], max_age=seconds)`` refuses a token whose ``acr`` is not
accepted, or whose ``auth_time`` is older than ``max_age`` (missing or non-numeric counts as too
old), with 401 ``insufficient_user_authentication`` and ``acr_values`` / ``max_age`` in the
challenge. It composes with scopes and ``@sensitive``; ``acr`` and ``auth_time`` come from the JWT
or the introspection answer. Time is the DevIdP's ``ManualClock``: no sleeps.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from conftest import dpop_challenge
from tokenguard import (
    ConfigurationError,
    InsufficientUserAuthentication,
    Rule,
    TokenGuard,
    public,
    require_auth_level,
    require_scopes,
    sensitive,
)
from tokenguard.events import DecisionEvent
from tokenguard.policy import MARK
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    ManualClock,
)

MFA = "urn:example:acr:mfa"
HWK = "urn:example:acr:hwk"
PWD = "urn:example:acr:pwd"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def endpoint() -> Callable[[Request], Any]:
    """A fresh endpoint function (marks are attributes: tests never share a marked function)."""

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity, "source": request.auth.source})

    return ok


def app_for(dev_idp: DevIdP, **options: Any) -> TestClient:
    routes = [
        Route("/acr", require_auth_level(acr_values=[MFA, HWK])(endpoint())),
        Route("/fresh", require_auth_level(max_age=300)(endpoint())),
        Route("/both", require_auth_level(acr_values=[MFA], max_age=60)(endpoint())),
        Route("/scoped", require_scopes("admin")(require_auth_level(acr_values=[MFA])(endpoint()))),
        Route("/sensitive", sensitive(require_auth_level(acr_values=[MFA], max_age=300)(endpoint()))),
        Route("/plain", endpoint()),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(
        TokenGuard,
        issuer=dev_idp.issuer,
        audience=dev_idp.default_audience,
        http_client=dev_idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=dev_idp.clock,
        **options,
    )
    return TestClient(app)


def advance(dev_idp: DevIdP, seconds: float) -> None:
    clock = dev_idp.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)


def now(dev_idp: DevIdP) -> int:
    return int(dev_idp.clock())


def metadata_url(dev_idp: DevIdP) -> str:
    return f"{dev_idp.default_audience}/.well-known/oauth-protected-resource"


# -- acr ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("acr", [MFA, HWK])
def test_accepted_acr_passes(dev_idp: DevIdP, acr: str) -> None:
    """A token whose acr is one of the accepted values reaches the endpoint."""
    response = app_for(dev_idp).get("/acr", headers=bearer(dev_idp.issue_token(acr=acr)))
    assert response.status_code == 200
    assert response.json() == {"who": "alice", "source": "jwt"}


def test_weaker_acr_gets_the_exact_step_up_challenge(dev_idp: DevIdP) -> None:
    """RFC 9470 §3: 401, error="insufficient_user_authentication", acr_values in order of preference."""
    response = app_for(dev_idp).get("/acr", headers=bearer(dev_idp.issue_token(acr=PWD)))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="{dev_idp.default_audience}", error="insufficient_user_authentication", '
        'error_description="A stronger authentication is required for this resource.", '
        f'acr_values="{MFA} {HWK}", resource_metadata="{metadata_url(dev_idp)}"'
    ) + dpop_challenge(dev_idp.default_audience, metadata_url(dev_idp))
    assert response.json() == {
        "error": "insufficient_user_authentication",
        "error_description": "A stronger authentication is required for this resource.",
    }


@pytest.mark.parametrize("acr", [None, 2, ["urn:example:acr:mfa"], ""], ids=["missing", "number", "list", "empty"])
def test_missing_or_malformed_acr_needs_a_step_up(dev_idp: DevIdP, acr: Any) -> None:
    """No acr, or one that is not a string among the accepted values, is a step-up, never a pass."""
    token = dev_idp.issue_token() if acr is None else dev_idp.issue_token(acr=acr)
    response = app_for(dev_idp).get("/acr", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="insufficient_user_authentication"' in response.headers["www-authenticate"]


# -- max_age / auth_time -----------------------------------------------------------------------------


def test_recent_authentication_passes_until_max_age_has_passed(dev_idp: DevIdP) -> None:
    """auth_time within max_age passes (the boundary included); a second later the same token needs a step-up."""
    token = dev_idp.issue_token(auth_time=dev_idp.clock(), expires_in=3600)
    client = app_for(dev_idp)
    assert client.get("/fresh", headers=bearer(token)).status_code == 200
    advance(dev_idp, 300)
    assert client.get("/fresh", headers=bearer(token)).status_code == 200
    advance(dev_idp, 1)
    response = client.get("/fresh", headers=bearer(token))
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge
    assert 'error_description="A more recent authentication is required for this resource."' in challenge
    assert 'max_age="300"' in challenge
    assert "acr_values" not in challenge


@pytest.mark.parametrize(
    "auth_time",
    ["1800000000", True, None, [1], {"t": 1}],
    ids=["string", "bool", "missing", "list", "object"],
)
def test_missing_or_non_numeric_auth_time_needs_a_step_up(dev_idp: DevIdP, auth_time: Any) -> None:
    """With max_age set, an auth_time that is absent or not a JSON number counts as too old."""
    token = dev_idp.issue_token() if auth_time is None else dev_idp.issue_token(auth_time=auth_time)
    response = app_for(dev_idp).get("/fresh", headers=bearer(token))
    assert response.status_code == 401
    assert 'max_age="300"' in response.headers["www-authenticate"]


def test_auth_time_in_the_future_is_not_believed(dev_idp: DevIdP) -> None:
    """An auth_time beyond the clock leeway in the future needs a step-up; within the leeway it passes."""
    client = app_for(dev_idp)
    within = dev_idp.issue_token(auth_time=now(dev_idp) + 20)
    beyond = dev_idp.issue_token(auth_time=now(dev_idp) + 31)
    assert client.get("/fresh", headers=bearer(within)).status_code == 200
    assert client.get("/fresh", headers=bearer(beyond)).status_code == 401


def test_huge_auth_time_from_introspection_is_a_step_up_not_a_crash(dev_idp: DevIdP) -> None:
    """An integer no float can hold (possible in an introspection answer) is refused cleanly."""
    token = dev_idp.issue_token(token_format="opaque", acr=MFA, auth_time=10**400)
    response = app_for(dev_idp).get("/sensitive", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="insufficient_user_authentication"' in response.headers["www-authenticate"]


def test_acr_and_max_age_together_are_both_in_the_challenge(dev_idp: DevIdP) -> None:
    """A route needing both names both, whichever one failed."""
    client = app_for(dev_idp)
    stale = dev_idp.issue_token(acr=MFA, auth_time=now(dev_idp) - 61)
    weak = dev_idp.issue_token(acr=PWD, auth_time=now(dev_idp))
    for token in (stale, weak):
        challenge = client.get("/both", headers=bearer(token)).headers["www-authenticate"]
        assert f'acr_values="{MFA}", max_age="60"' in challenge
    assert client.get("/both", headers=bearer(dev_idp.issue_token(acr=MFA, auth_time=now(dev_idp)))).status_code == 200


# -- composition ----------------------------------------------------------------------------------------


def test_step_up_comes_before_scopes(dev_idp: DevIdP) -> None:
    """Authentication (401 step-up) is decided before authorization (403 scope); both pass → 200."""
    client = app_for(dev_idp)
    no_scope_weak = client.get("/scoped", headers=bearer(dev_idp.issue_token(acr=PWD)))
    assert no_scope_weak.status_code == 401
    assert 'error="insufficient_user_authentication"' in no_scope_weak.headers["www-authenticate"]
    no_scope_strong = client.get("/scoped", headers=bearer(dev_idp.issue_token(acr=MFA)))
    assert no_scope_strong.status_code == 403
    assert 'scope="admin"' in no_scope_strong.headers["www-authenticate"]
    assert client.get("/scoped", headers=bearer(dev_idp.issue_token(["admin"], acr=MFA))).status_code == 200


def test_forged_token_is_invalid_token_never_a_step_up(dev_idp: DevIdP) -> None:
    """A token from an untrusted signer gets 401 invalid_token: step-up is only asked of valid tokens."""
    other = DevIdP(issuer=dev_idp.issuer, clock=dev_idp.clock)  # same issuer name, other keys
    response = app_for(dev_idp).get("/acr", headers=bearer(other.issue_token(acr=PWD)))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_sensitive_route_reads_acr_from_the_introspection_answer(dev_idp: DevIdP) -> None:
    """An opaque token's acr/auth_time come from RFC 7662 introspection: strong and recent passes."""
    client = app_for(dev_idp)
    strong = dev_idp.issue_token(token_format="opaque", acr=MFA, auth_time=now(dev_idp))
    response = client.get("/sensitive", headers=bearer(strong))
    assert response.status_code == 200
    assert response.json()["source"] == "introspection"
    weak = dev_idp.issue_token(token_format="opaque", acr=PWD, auth_time=now(dev_idp))
    assert client.get("/sensitive", headers=bearer(weak)).status_code == 401


def test_sensitive_jwt_is_introspected_before_the_step_up_check(dev_idp: DevIdP) -> None:
    """On a sensitive route a revoked strong token is 401 invalid_token (introspection decides first)."""
    token = dev_idp.issue_token(acr=MFA, auth_time=now(dev_idp))
    client = app_for(dev_idp, introspection_cache_ttl=0)
    assert client.get("/sensitive", headers=bearer(token)).json()["source"] == "introspection"
    dev_idp.revoke(token)
    response = client.get("/sensitive", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_routes_without_a_level_ignore_acr(dev_idp: DevIdP) -> None:
    """A weak or missing acr changes nothing on ordinary routes."""
    assert app_for(dev_idp).get("/plain", headers=bearer(dev_idp.issue_token(acr=PWD))).status_code == 200


def test_decision_event_names_the_step_up(dev_idp: DevIdP) -> None:
    """The refusal is a ``deny`` with reason insufficient_user_authentication and status 401."""
    events: list[DecisionEvent] = []
    app_for(dev_idp, on_decision=events.append).get("/acr", headers=bearer(dev_idp.issue_token(acr=PWD)))
    assert [(e.outcome, e.reason, e.status) for e in events] == [("deny", "insufficient_user_authentication", 401)]


def test_fastapi_path_function_can_require_a_level(dev_idp: DevIdP) -> None:
    """The decorator marks FastAPI path functions too, in either order with ``@app.get``."""
    app = FastAPI()

    @app.get("/above")
    @require_auth_level(acr_values=[MFA])
    async def above() -> dict[str, str]:
        return {"ok": "above"}

    @require_auth_level(max_age=10)
    @app.get("/below")
    async def below() -> dict[str, str]:
        return {"ok": "below"}

    app.add_middleware(
        TokenGuard, issuer=dev_idp.issuer, audience=dev_idp.default_audience, http_client=dev_idp.http_client
    )
    client = TestClient(app)
    assert client.get("/above", headers=bearer(dev_idp.issue_token(acr=MFA))).status_code == 200
    assert client.get("/above", headers=bearer(dev_idp.issue_token(acr=PWD))).status_code == 401
    assert client.get("/below", headers=bearer(dev_idp.issue_token(auth_time=now(dev_idp) - 11))).status_code == 401


def test_websocket_is_refused_with_the_step_up_challenge(dev_idp: DevIdP) -> None:
    """A WebSocket route with a level gets the same 401 denial response before accept."""

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", require_auth_level(acr_values=[MFA])(socket))])
    app.add_middleware(
        TokenGuard,
        issuer=dev_idp.issuer,
        audience=dev_idp.default_audience,
        http_client=dev_idp.http_client,
        clock=dev_idp.clock,
    )
    client = TestClient(app)
    with client.websocket_connect("/ws", headers=bearer(dev_idp.issue_token(acr=MFA))) as websocket:
        assert websocket.receive_text() == "hi"

    weak = bearer(dev_idp.issue_token(acr=PWD))
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws", headers=weak):
        pass  # pragma: no cover - the connection is refused
    assert denied.value.status_code == 401
    assert f'acr_values="{MFA}"' in denied.value.headers["www-authenticate"]


# -- the decorator ------------------------------------------------------------------------------------


def test_stacked_levels_intersect_acr_and_keep_the_shortest_max_age() -> None:
    """Two marks on one route: only acr values both accept, and the smaller max_age."""

    @require_auth_level(acr_values=[MFA, HWK], max_age=600)
    @require_auth_level(acr_values=[HWK, PWD], max_age=60)
    async def both(request: Request) -> None: ...

    requirement = getattr(both, MARK)
    assert requirement.acr_values == (HWK,)
    assert requirement.max_age == 60


def test_stacked_levels_with_no_common_acr_are_refused() -> None:
    """Marks that no token could satisfy are a configuration error at decoration time."""
    with pytest.raises(ConfigurationError, match="no acr value in common"):
        require_auth_level(acr_values=[MFA])(require_auth_level(acr_values=[PWD])(endpoint()))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"acr_values": []},
        {"acr_values": ["has space"]},
        {"acr_values": ['quote"d']},
        {"acr_values": [""]},
        {"acr_values": [5]},
        {"max_age": -1},
        {"max_age": 1.5},
        {"max_age": True},
        {"max_age": "300"},
    ],
)
def test_invalid_levels_are_refused_at_decoration(options: dict[str, Any]) -> None:
    """Nothing asked, an acr value that cannot go in the challenge, or a bad max_age: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="require_auth_level"):
        require_auth_level(**options)


def test_a_single_acr_string_is_one_value() -> None:
    """``acr_values="urn:x"`` is one value, not its characters."""
    requirement = getattr(require_auth_level(acr_values=MFA)(endpoint()), MARK)
    assert requirement.acr_values == (MFA,)


def test_public_route_cannot_require_a_level() -> None:
    """``@public`` with a step-up is a contradiction, refused at decoration time."""
    with pytest.raises(ConfigurationError, match="@public"):
        public(require_auth_level(max_age=5)(endpoint()))


def test_the_error_class_is_exported_with_its_wire_code() -> None:
    """``InsufficientUserAuthentication`` is public and maps to 401 insufficient_user_authentication."""
    error = InsufficientUserAuthentication(acr_values=[MFA], max_age=5)
    assert (error.status_code, error.error_code) == (401, "insufficient_user_authentication")


# -- the DevIdP issues acr and auth_time from real requests ---------------------------------------------

VERIFIER = "s" * 43
CALLBACK = "http://127.0.0.1/callback"


def code_flow(dev_idp: DevIdP, **params: str) -> dict[str, Any]:
    """Authorization code + PKCE against the DevIdP's own endpoints; returns the token response."""
    idp = TestClient(dev_idp.app, base_url=dev_idp.issuer)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
    query = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **params,
    }
    redirect = idp.get("/authorize", params=query, follow_redirects=False)
    answer = parse_qs(urlsplit(redirect.headers["location"]).query)
    if "code" not in answer:
        return {"error": answer["error"][0]}
    form = {"grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": CALLBACK}
    response = idp.post(
        "/token", data={**form, "code_verifier": VERIFIER}, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    )
    return response.json()  # type: ignore[no-any-return]


def test_devidp_code_flow_issues_the_requested_acr_and_auth_time(dev_idp: DevIdP) -> None:
    """acr_values at /authorize: the token's acr is the first value, auth_time the sign-in time; the route passes."""
    tokens = code_flow(dev_idp, acr_values=f"{MFA} {HWK}", max_age="60")
    client = app_for(dev_idp)
    assert client.get("/both", headers=bearer(tokens["access_token"])).status_code == 200
    advance(dev_idp, 61)
    assert client.get("/both", headers=bearer(tokens["access_token"])).status_code == 401


def test_devidp_code_flow_without_acr_values_sets_auth_time_only(dev_idp: DevIdP) -> None:
    """Every user sign-in carries auth_time; acr only when asked for."""
    tokens = code_flow(dev_idp)
    client = app_for(dev_idp)
    assert client.get("/fresh", headers=bearer(tokens["access_token"])).status_code == 200
    assert client.get("/acr", headers=bearer(tokens["access_token"])).status_code == 401


@pytest.mark.parametrize("params", [{"acr_values": 'a"b'}, {"max_age": "soon"}])
def test_devidp_refuses_malformed_step_up_parameters(dev_idp: DevIdP, params: dict[str, str]) -> None:
    """A malformed acr_values or max_age is invalid_request at the authorization endpoint."""
    assert code_flow(dev_idp, **params) == {"error": "invalid_request"}


def test_devidp_refreshed_tokens_keep_the_original_auth_time(dev_idp: DevIdP) -> None:
    """Refreshing is not signing in again: the new access token keeps acr and the first auth_time."""
    pair = dev_idp.issue_user_tokens("bob", acr=MFA)
    assert pair.refresh_token is not None
    client = app_for(dev_idp)
    advance(dev_idp, 61)
    fresh = dev_idp.refresh(pair.refresh_token)
    assert client.get("/acr", headers=bearer(fresh.access_token)).status_code == 200
    assert client.get("/both", headers=bearer(fresh.access_token)).status_code == 401


def test_a_rule_can_ask_for_step_up_on_a_mounted_app(dev_idp: DevIdP) -> None:
    """Rule(acr_values=..., max_age=...) covers what cannot be decorated, with the same challenge."""
    from starlette.routing import Mount
    from starlette.types import Receive, Scope, Send

    async def admin(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    app = Starlette(routes=[Mount("/admin", app=admin)])
    app.add_middleware(
        TokenGuard,
        issuer=dev_idp.issuer,
        audience=dev_idp.default_audience,
        http_client=dev_idp.http_client,
        clock=dev_idp.clock,
        rules=[Rule("/admin", acr_values=[MFA], max_age=300)],
    )
    with TestClient(app) as client:
        weak = client.get("/admin/x", headers=bearer(dev_idp.issue_token(acr="urn:weak", auth_time=now(dev_idp))))
        assert weak.status_code == 401
        challenge = weak.headers["www-authenticate"]
        assert 'error="insufficient_user_authentication"' in challenge
        assert f'acr_values="{MFA}"' in challenge
        assert 'max_age="300"' in challenge
        strong = client.get("/admin/x", headers=bearer(dev_idp.issue_token(acr=MFA, auth_time=now(dev_idp))))
        assert strong.status_code == 200
    with pytest.raises(ConfigurationError, match="Rule"):
        Rule("/admin", max_age=-1)
