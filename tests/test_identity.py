"""Who a token is for: ``request.user.identity`` is ``sub``, else ``username``, else the client id.

RFC 7662 §2.2 lets an introspection answer name the resource owner by ``username`` alone
(django-oauth-toolkit answers so); such a user's token must not look like the client's own. Through a
real guard and a real app, for introspection answers and JWTs of the same shapes, and in the decision
events' subject hash.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer
from tokenguard import TokenGuard, sensitive
from tokenguard.events import DecisionEvent, subject_hash
from tokenguard.models import AccessToken
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "identity": user.identity,
            "identity_source": user.identity_source,
            "subject": user.subject,
            "username": user.username,
            "client_id": user.client_id,
            "display_name": user.display_name,
        }
    )


@sensitive
async def sensitive_whoami(request: Request) -> JSONResponse:
    return await whoami(request)


def _client(clock: ManualClock, events: list[DecisionEvent] | None = None) -> TestClient:
    app = Starlette(routes=[Route("/whoami", whoami), Route("/sensitive/whoami", sensitive_whoami)])
    guard = TokenGuard(
        app,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
        client_id="api",
        client_secret="secret",
        on_decision=(events.append if events is not None else None),
    )
    return TestClient(guard)


#: (claims beyond iss/aud/exp, expected identity, identity_source, username)
SHAPES: list[tuple[dict[str, Any], str, str, str | None]] = [
    ({"sub": "u-123", "client_id": "photos-app"}, "u-123", "sub", None),
    ({"username": "alice", "client_id": "photos-app"}, "alice", "username", "alice"),
    # Both: sub wins, whatever username says; username is still exposed.
    ({"sub": "u-123", "username": "alice", "client_id": "photos-app"}, "u-123", "sub", "alice"),
    # No user at all: a client-credentials token is the client's own.
    ({"client_id": "photos-app"}, "photos-app", "client_id", None),
    # A username that is no string (or empty) names no one: ignored, never an error.
    ({"username": 42, "client_id": "photos-app"}, "photos-app", "client_id", None),
    ({"username": ["alice"], "client_id": "photos-app"}, "photos-app", "client_id", None),
    ({"username": "", "client_id": "photos-app"}, "photos-app", "client_id", None),
    ({"sub": "u-123", "username": {"name": "alice"}}, "u-123", "sub", None),
    # Only a username, no sub and no client: RFC 7662 §2.2 names the resource owner by it.
    ({"username": "alice"}, "alice", "username", "alice"),
    # Vendor client-id claims (azp) stay a fallback behind username.
    ({"username": "alice", "azp": "spa"}, "alice", "username", "alice"),
]
IDS = [
    "sub-only",
    "username-only",
    "both",
    "client-only",
    "username-number",
    "username-list",
    "username-empty",
    "sub-and-username-object",
    "username-without-client",
    "username-and-azp",
]


def _answer(clock: ManualClock, claims: dict[str, Any]) -> dict[str, Any]:
    return {"active": True, "iss": ISSUER, "aud": AUDIENCE, "exp": int(clock()) + 300, "scope": "read", **claims}


@pytest.mark.parametrize(("claims", "identity", "source", "username"), SHAPES, ids=IDS)
def test_introspection_answer_identity(
    idp: Issuer,
    clock: ManualClock,
    respx_mock: respx.MockRouter,
    claims: dict[str, Any],
    identity: str,
    source: str,
    username: str | None,
) -> None:
    """An opaque token's identity comes from the answer: sub, else username, else client_id."""
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=_answer(clock, claims)))
    with _client(clock) as client:
        response = client.get("/whoami", headers={"Authorization": "Bearer opaque-user-token-123"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["identity"], body["identity_source"], body["username"]) == (identity, source, username)
    assert body["display_name"] == identity
    assert body["subject"] == claims.get("sub")


@pytest.mark.parametrize(("claims", "identity", "source", "username"), SHAPES, ids=IDS)
def test_jwt_identity(
    idp: Issuer, clock: ManualClock, claims: dict[str, Any], identity: str, source: str, username: str | None
) -> None:
    """A JWT with the same claims has the same identity as the introspection answer."""
    token = idp.token(**{"sub": None, "client_id": None, **claims})
    with _client(clock) as client:
        response = client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["identity"], body["identity_source"], body["username"]) == (identity, source, username)


@pytest.mark.parametrize("claims", [{}, {"username": 7}, {"username": ""}], ids=["nothing", "number", "empty"])
def test_a_token_naming_no_one_is_still_refused(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter, claims: dict[str, Any]
) -> None:
    """No sub, no usable username, no client: 401 no_identity, for a JWT and an opaque token alike."""
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=_answer(clock, claims)))
    events: list[DecisionEvent] = []
    with _client(clock, events) as client:
        jwt_response = client.get(
            "/whoami", headers={"Authorization": f"Bearer {idp.token(**{'sub': None, 'client_id': None, **claims})}"}
        )
        opaque_response = client.get("/whoami", headers={"Authorization": "Bearer opaque-nobody-token-123"})
    assert (jwt_response.status_code, opaque_response.status_code) == (401, 401)
    assert [event.reason for event in events] == ["no_identity", "no_identity"]


def test_a_signed_sub_is_not_overridden_by_an_answers_username(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A JWT confirmed by introspection: the answer's username never replaces the JWT's own sub."""
    respx_mock.post(INTROSPECTION_URL).mock(
        return_value=httpx.Response(200, json=_answer(clock, {"username": "mallory", "client_id": "photos-app"}))
    )
    with _client(clock) as client:
        response = client.get("/sensitive/whoami", headers={"Authorization": f"Bearer {idp.token(sub='u-123')}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["identity"], body["identity_source"], body["username"]) == ("u-123", "sub", "mallory")


def test_decision_events_tell_two_username_only_users_apart(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """The subject hash is of sub, else username: two users of one client without sub get two hashes."""
    answers = {
        "opaque-alice-token-123": _answer(clock, {"username": "alice", "client_id": "photos-app"}),
        "opaque-bob-token-4567": _answer(clock, {"username": "bob", "client_id": "photos-app"}),
        "opaque-client-token-89": _answer(clock, {"client_id": "photos-app"}),
    }

    def introspect(request: httpx.Request) -> httpx.Response:
        token = dict(httpx.QueryParams(request.content.decode()))["token"]
        return httpx.Response(200, json=answers[token])

    respx_mock.post(INTROSPECTION_URL).mock(side_effect=introspect)
    events: list[DecisionEvent] = []
    with _client(clock, events) as client:
        for token in answers:
            assert client.get("/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    alice, bob, service = events
    assert (alice.client_id, bob.client_id, service.client_id) == ("photos-app",) * 3
    assert alice.subject_hash == subject_hash("alice")
    assert bob.subject_hash == subject_hash("bob")
    assert alice.subject_hash != bob.subject_hash
    assert service.subject_hash is None  # the client's own token names no user
    # A JWT with sub hashes its sub, not its username.
    with _client(clock, events) as client:
        token = idp.token(sub="u-123", username="alice")
        assert client.get("/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert events[-1].subject_hash == subject_hash("u-123")


def test_access_token_identity_source_from_fields() -> None:
    """``identity_source`` follows the fields; a token built directly defaults to no username."""
    base: dict[str, Any] = {"scopes": frozenset(), "claims": {}, "expires_at": None, "source": "jwt"}
    assert AccessToken(subject="s", client_id="c", **base).identity_source == "sub"
    assert AccessToken(subject=None, client_id="c", **base).identity_source == "client_id"
    token = AccessToken(subject=None, client_id="c", username="u", **base)
    assert (token.identity, token.identity_source) == ("u", "username")
