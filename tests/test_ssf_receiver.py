"""The Shared Signals receiver (``tokenguard.ssf``): RFC 8935 push and RFC 8936 poll, through a real guarded app.

The transmitter is the issuer itself: its ``/.well-known/ssf-configuration`` and the JWKS it names are
served through respx, and every Security Event Token (RFC 8417) is a real JWS signed with PyJWT by a
real key. The tokens it revokes are real JWT access tokens of the conftest ``Issuer``, and each verdict
is read where it matters: the next request to an ordinary (non-sensitive) route of a Starlette app
guarded by ``TokenGuard``. Time is a ``ManualClock``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import jwt
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from conftest import AUDIENCE, ISSUER, T0, Issuer, b64url, private_key
from test_introspection import CLIENT_ID, CLIENT_SECRET, IntrospectionEndpoint
from tokenguard import ConfigurationError, SharedSignals, TokenGuard
from tokenguard._http import FetchError
from tokenguard.ssf import (
    ACCOUNT_DISABLED,
    ACCOUNT_PURGED,
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    VERIFICATION,
    SignalReceiver,
)
from tokenguard.testing import DevIdP, ManualClock, SigningKey

pytestmark = pytest.mark.anyio

SSF_CONFIGURATION = f"{ISSUER}/.well-known/ssf-configuration"
SSF_JWKS = f"{ISSUER}/ssf/jwks"
POLL_URL = f"{ISSUER}/ssf/poll"
PUSH_PATH = "/ssf/events"
PUSH_AUTHORIZATION = "Bearer push-secret-5a0c1f2e9b7d44"
POLL_AUTHORIZATION = "Bearer poll-secret-77c3e1d0a9f215"
#: What the SETs' ``aud`` names (the stream's audience at the transmitter).
SET_AUDIENCE = "https://api.example.com/ssf-receiver"
OTHER_ISSUER = "https://other-idp.example.com"
SECEVENT = "application/secevent+jwt"


# -- the transmitter ---------------------------------------------------------------------------------


class Transmitter:
    """The issuer as an SSF transmitter: its configuration and JWKS through respx, and real signed SETs.

    ``failure`` (a response, or an httpx exception class) replaces the configuration document while set.
    """

    def __init__(self, router: respx.MockRouter, clock: ManualClock) -> None:
        self.clock = clock
        self.keys = [SigningKey("ES256", private_key("ec256", 1), kid="set-1")]
        self.configuration: dict[str, Any] = {
            "issuer": ISSUER,
            "jwks_uri": SSF_JWKS,
            "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
        }
        self.failure: httpx.Response | type[Exception] | None = None
        self.configuration_calls = 0
        self.jwks_calls = 0
        router.get(SSF_CONFIGURATION).mock(side_effect=self._configuration)
        router.get(SSF_JWKS).mock(side_effect=self._jwks)

    def _configuration(self, request: httpx.Request) -> httpx.Response:
        self.configuration_calls += 1
        if isinstance(self.failure, type):
            raise self.failure("transmitter down", request=request)  # type: ignore[call-arg]
        if self.failure is not None:
            return self.failure
        return httpx.Response(200, json=self.configuration)

    def _jwks(self, request: httpx.Request) -> httpx.Response:
        self.jwks_calls += 1
        return httpx.Response(200, json={"keys": [key.public_jwk() for key in self.keys]})

    def claims(self, events: dict[str, Any], subject: Any = None, /, **overrides: Any) -> dict[str, Any]:
        """A SET's claims (SSF §4.1); keyword arguments change or (``None``) drop members."""
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": SET_AUDIENCE,
            "iat": int(self.clock()),
            "jti": uuid.uuid4().hex,
            "sub_id": subject,
            "events": events,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any], *, key: SigningKey | None = None, **header: Any) -> str:
        """A compact JWS over exactly these claims (no claim checks by PyJWT), ``typ`` secevent+jwt."""
        key = key if key is not None else self.keys[0]
        fields: dict[str, Any] = {"typ": "secevent+jwt", "kid": key.kid, **header}
        fields = {name: value for name, value in fields.items() if value is not None}
        payload = json.dumps(claims).encode()
        return jwt.PyJWS().encode(payload, key.private, algorithm=key.alg, headers=fields)

    def set(
        self,
        event_type: str,
        subject: Any,
        event: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        **overrides: Any,
    ) -> str:
        return self.sign(self.claims({event_type: event or {}}, subject, **overrides), key=key)


def jwt_id(jti: str, iss: str = ISSUER) -> dict[str, str]:
    return {"format": "jwt_id", "iss": iss, "jti": jti}


def iss_sub(sub: str, iss: str = ISSUER) -> dict[str, str]:
    return {"format": "iss_sub", "iss": iss, "sub": sub}


@pytest.fixture
def transmitter(respx_mock: respx.MockRouter, clock: ManualClock) -> Transmitter:
    return Transmitter(respx_mock, clock)


# -- the guarded API ---------------------------------------------------------------------------------


class Api:
    """A Starlette app guarded by ``TokenGuard``: ``/photos`` is an ordinary route; the app also has its
    own route at the push path (which must never be called) and one next to it."""

    def __init__(self, clock: ManualClock, *, signals: SharedSignals | None = None, **options: Any) -> None:
        self.reached: list[str] = []

        async def photos(request: Request) -> JSONResponse:
            return JSONResponse({"who": request.user.identity})

        async def own(request: Request) -> PlainTextResponse:
            self.reached.append(request.url.path)
            return PlainTextResponse("the app's own route")

        app = Starlette(
            routes=[
                Route("/photos", photos),
                Route(PUSH_PATH, own, methods=["GET", "POST"]),
                Route(PUSH_PATH + "/extra", own, methods=["GET", "POST"]),
            ]
        )
        if signals is None:
            signals = SharedSignals(
                transmitter=ISSUER, push_path=PUSH_PATH, push_authorization=PUSH_AUTHORIZATION, audience=SET_AUDIENCE
            )
        self.guard = TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, clock=clock, shared_signals=signals, **options)
        assert self.guard.signals is not None
        self.receiver: SignalReceiver = self.guard.signals

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.guard), base_url="https://api.example.com")

    async def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.client() as client:
            return await client.request(method, path, headers=headers, **kwargs)

    async def status(self, token: str, path: str = "/photos") -> int:
        return (await self.request("GET", path, token)).status_code

    async def push(
        self,
        body: str | bytes,
        *,
        authorization: str | None = PUSH_AUTHORIZATION,
        content_type: str | None = SECEVENT,
        method: str = "POST",
    ) -> httpx.Response:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self.client() as client:
            return await client.request(method, PUSH_PATH, content=body, headers=headers)

    @property
    def counts(self) -> dict[str, Any]:
        return self.guard.status()["fleet"]["shared_signals"]  # type: ignore[no-any-return]

    @property
    def entries(self) -> int:
        return len(self.guard.revocations)


@pytest.fixture
def api(clock: ManualClock, idp: Issuer, transmitter: Transmitter) -> Api:
    return Api(clock)


def assert_accepted(response: httpx.Response) -> None:
    """RFC 8935 §2.2: 202, and nothing in the body."""
    assert response.status_code == 202, response.text
    assert response.content == b""


def assert_refused(response: httpx.Response, err: str) -> None:
    """RFC 8935 §2.3: 400 with a JSON body naming the §2.4 error code, and why."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["err"] == err, body
    assert isinstance(body["description"], str)
    assert body["description"]


# -- accepted events revoke tokens on ordinary routes --------------------------------------------------


async def test_session_revoked_for_one_token_refuses_that_token_and_no_other(
    api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    revoked, sibling, other = idp.token(jti="tok-a"), idp.token(jti="tok-b"), idp.token(sub="bob", jti="tok-c")
    assert [await api.status(token) for token in (revoked, sibling, other)] == [200, 200, 200]

    response = await api.push(transmitter.set(SESSION_REVOKED, jwt_id("tok-a"), {"event_timestamp": int(idp.clock())}))

    assert_accepted(response)
    refused = await api.request("GET", "/photos", revoked)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert [await api.status(token) for token in (sibling, other)] == [200, 200]
    assert api.counts["applied"] == 1
    assert api.counts["accepted"] == 1


EVENTS_FOR_A_USER = [
    pytest.param(SESSION_REVOKED, {"initiating_entity": "policy"}, id="caep-session-revoked"),
    pytest.param(CREDENTIAL_CHANGE, {"credential_type": "password", "change_type": "update"}, id="caep-credential"),
    pytest.param(ACCOUNT_DISABLED, {"reason": "hijacking"}, id="risc-account-disabled"),
    pytest.param(ACCOUNT_PURGED, {}, id="risc-account-purged"),
]


@pytest.mark.parametrize(("event_type", "event"), EVENTS_FOR_A_USER)
async def test_an_event_for_a_user_refuses_their_tokens_issued_before_it(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, event_type: str, event: dict[str, Any]
) -> None:
    api = Api(clock)
    first, second, bobs = idp.token(jti="a-1"), idp.token(jti="a-2"), idp.token(sub="bob")
    clock.advance(10)
    event = {**event, "event_timestamp": int(clock()) - 5}
    assert [await api.status(token) for token in (first, second, bobs)] == [200, 200, 200]

    assert_accepted(await api.push(transmitter.set(event_type, iss_sub("alice"), event)))

    clock.advance(1)
    later = idp.token(jti="a-3")  # the user signed in again after the event
    assert [await api.status(token) for token in (first, second)] == [401, 401]
    assert [await api.status(token) for token in (later, bobs)] == [200, 200]


async def test_without_event_timestamp_the_cut_off_is_the_sets_iat(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, api: Api
) -> None:
    before = idp.token()
    clock.advance(10)
    assert_accepted(await api.push(transmitter.set(ACCOUNT_DISABLED, iss_sub("alice"), {})))
    clock.advance(1)
    assert await api.status(before) == 401
    assert await api.status(idp.token()) == 200


async def test_a_complex_subject_names_the_user(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, api: Api
) -> None:
    alice, bob = idp.token(), idp.token(sub="bob")
    clock.advance(5)
    subject = {
        "format": "complex",
        "user": iss_sub("alice"),
        "session": {"format": "opaque", "id": "session-17"},
    }
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, subject, {"event_timestamp": int(clock())})))
    assert (await api.status(alice), await api.status(bob)) == (401, 200)


async def test_a_subject_inside_the_event_is_read_too(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, api: Api
) -> None:
    """Older CAEP drafts put the subject in the event rather than in ``sub_id``."""
    token = idp.token(jti="tok-in-event")
    event = {"subject": jwt_id("tok-in-event"), "event_timestamp": int(clock())}
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, None, event)))
    assert await api.status(token) == 401


async def test_token_claims_change_has_the_tokens_introspected_again(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    endpoint = IntrospectionEndpoint(respx_mock, clock)
    api = Api(clock, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    alice, bob, carol = idp.token(jti="tok-alice"), idp.token(sub="bob"), idp.token(sub="carol")
    clock.advance(60)
    assert [await api.status(token) for token in (alice, bob, carol)] == [200, 200, 200]
    assert endpoint.calls == 0  # an ordinary route validates JWTs locally

    changed = {"event_timestamp": int(clock()) - 5, "claims": {"role": "reader"}}
    assert_accepted(await api.push(transmitter.set(TOKEN_CLAIMS_CHANGE, jwt_id("tok-alice"), changed)))
    assert_accepted(await api.push(transmitter.set(TOKEN_CLAIMS_CHANGE, iss_sub("bob"), changed)))
    endpoint.activate(alice)  # the issuer still vouches for alice's token; bob's is no longer active

    assert await api.status(alice) == 200
    assert endpoint.calls == 1
    assert await api.status(alice) == 200
    assert endpoint.calls == 1  # the answer given after the change is used again: one call, not one per request
    assert await api.status(bob) == 401
    assert endpoint.calls == 2
    assert await api.status(carol) == 200
    assert endpoint.calls == 2


async def test_token_claims_change_without_introspection_refuses_the_token(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, api: Api
) -> None:
    token, other = idp.token(jti="tok-claims"), idp.token(jti="tok-untouched")
    changed = {"event_timestamp": int(clock()), "claims": {"role": "reader"}}
    assert_accepted(await api.push(transmitter.set(TOKEN_CLAIMS_CHANGE, jwt_id("tok-claims"), changed)))
    assert (await api.status(token), await api.status(other)) == (401, 200)


async def test_verification_is_accepted_and_its_state_kept(api: Api, idp: Issuer, transmitter: Transmitter) -> None:
    token = idp.token()
    stream = {"format": "opaque", "id": "stream-7"}
    assert_accepted(await api.push(transmitter.set(VERIFICATION, stream, {"state": "VGhpcyBpcyBhbiBleGFtcGxl"})))
    assert api.counts["last_verification_state"] == "VGhpcyBpcyBhbiBleGFtcGxl"
    assert api.entries == 0
    assert await api.status(token) == 200
    assert_accepted(await api.push(transmitter.set(VERIFICATION, stream, {})))
    assert api.counts["last_verification_state"] is None


async def test_the_audience_defaults_to_the_client_id(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter
) -> None:
    signals = SharedSignals(transmitter=ISSUER, push_path=PUSH_PATH, push_authorization=PUSH_AUTHORIZATION)
    api = Api(clock, signals=signals, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    token = idp.token(jti="tok-aud")
    subject = jwt_id("tok-aud")
    assert_refused(await api.push(transmitter.set(SESSION_REVOKED, subject, aud=SET_AUDIENCE)), "invalid_audience")
    assert await api.status(token) == 200
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, subject, aud=[OTHER_ISSUER, CLIENT_ID])))
    assert await api.status(token) == 401


# -- refused SETs -------------------------------------------------------------------------------------

#: Each builds, from the transmitter, a push that would revoke ``tok-target`` if it were accepted.
Push = dict[str, Any]


def _revoking(t: Transmitter, **overrides: Any) -> dict[str, Any]:
    return t.claims({SESSION_REVOKED: {"event_timestamp": int(t.clock())}}, jwt_id("tok-target"), **overrides)


def _unsigned(t: Transmitter, header: dict[str, Any], signature: bytes = b"\x01\x02\x03") -> str:
    head = b64url(json.dumps(header).encode())
    return f"{head}.{b64url(json.dumps(_revoking(t)).encode())}.{b64url(signature)}"


def _hs256(t: Transmitter) -> str:
    payload = json.dumps(_revoking(t)).encode()
    return jwt.PyJWS().encode(payload, b"k" * 32, algorithm="HS256", headers={"typ": "secevent+jwt", "kid": "set-1"})


def _forged(t: Transmitter) -> str:
    """Signed by another key under the transmitter's kid."""
    impostor = SigningKey("ES256", private_key("ec256", 2), kid="set-1")
    return t.sign(_revoking(t), key=impostor)


def _tampered(t: Transmitter) -> str:
    head, _payload, signature = t.sign(_revoking(t)).split(".")
    return f"{head}.{b64url(json.dumps(_revoking(t, aud=[SET_AUDIENCE, 'x'])).encode())}.{signature}"


REFUSALS: list[Any] = [
    pytest.param(lambda t: {"authorization": None}, "authentication_failed", id="no-authorization"),
    pytest.param(lambda t: {"authorization": "Bearer wrong-secret-000000000"}, "authentication_failed", id="wrong"),
    pytest.param(lambda t: {"authorization": PUSH_AUTHORIZATION[:-1]}, "authentication_failed", id="near-miss"),
    pytest.param(lambda t: {"content_type": "application/json"}, "invalid_request", id="content-type-json"),
    pytest.param(lambda t: {"content_type": None}, "invalid_request", id="no-content-type"),
    pytest.param(lambda t: {"body": "not a jws"}, "invalid_request", id="not-a-jws"),
    pytest.param(lambda t: {"body": "é.é.é".encode()}, "invalid_request", id="not-ascii"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, pad="x" * 64 * 1024))}, "invalid_request", id="too-large"),
    pytest.param(lambda t: {"body": _forged(t)}, "invalid_key", id="bad-signature"),
    pytest.param(lambda t: {"body": _tampered(t)}, "invalid_key", id="tampered-claims"),
    pytest.param(
        lambda t: {"body": t.sign(_revoking(t), key=SigningKey("ES256", private_key("ec256", 2), kid="nobody"))},
        "invalid_key",
        id="unknown-key",
    ),
    pytest.param(
        lambda t: {"body": _unsigned(t, {"alg": "none", "typ": "secevent+jwt", "kid": "set-1"})},
        "invalid_key",
        id="alg-none",
    ),
    pytest.param(lambda t: {"body": _hs256(t)}, "invalid_key", id="hs256"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t), crit=["exp"])}, "invalid_key", id="crit"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, iss=OTHER_ISSUER))}, "invalid_issuer", id="wrong-iss"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, iss=None))}, "invalid_issuer", id="no-iss"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, aud=AUDIENCE))}, "invalid_audience", id="wrong-aud"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, aud=None))}, "invalid_audience", id="no-aud"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t), typ="JWT")}, "invalid_request", id="typ-jwt"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t), typ=None)}, "invalid_request", id="no-typ"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, exp=int(t.clock()) + 60))}, "invalid_request", id="exp"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, sub="alice"))}, "invalid_request", id="sub"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, events={}))}, "invalid_request", id="no-event"),
    pytest.param(
        lambda t: {"body": t.sign(_revoking(t, events={SESSION_REVOKED: {}, ACCOUNT_DISABLED: {}}))},
        "invalid_request",
        id="two-events",
    ),
    pytest.param(
        lambda t: {"body": t.sign(_revoking(t, iat=int(t.clock()) + 120))}, "invalid_request", id="iat-future"
    ),
    pytest.param(
        lambda t: {"body": t.sign(_revoking(t, iat=int(t.clock()) - 3601))}, "invalid_request", id="iat-too-old"
    ),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, iat=None))}, "invalid_request", id="no-iat"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, jti=None))}, "invalid_request", id="no-jti"),
    pytest.param(lambda t: {"body": t.sign(_revoking(t, jti=""))}, "invalid_request", id="empty-jti"),
]


@pytest.mark.parametrize(("build", "err"), REFUSALS)
async def test_a_set_that_is_not_accepted_is_refused_with_its_rfc8935_code_and_revokes_nothing(
    api: Api, idp: Issuer, transmitter: Transmitter, build: Callable[[Transmitter], Push], err: str
) -> None:
    target = idp.token(jti="tok-target")
    push: Push = {"body": transmitter.sign(_revoking(transmitter)), **build(transmitter)}
    body = push.pop("body")

    assert_refused(await api.push(body, **push), err)

    assert api.entries == 0
    assert await api.status(target) == 200
    assert api.counts["refused"] == 1
    assert api.counts["accepted"] == 0
    assert api.counts["applied"] == 0
    assert api.reached == []


async def test_the_same_set_is_accepted_when_nothing_is_wrong_with_it(
    api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    """The control of the refusal table: its base push, unchanged, is accepted and revokes the target."""
    target = idp.token(jti="tok-target")
    assert_accepted(await api.push(transmitter.sign(_revoking(transmitter))))
    assert await api.status(target) == 401


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_only_post_is_answered_on_the_push_path(api: Api, transmitter: Transmitter, method: str) -> None:
    response = await api.push(transmitter.sign(_revoking(transmitter)), method=method)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert api.entries == 0
    assert api.reached == []


# -- accepted and dropped -----------------------------------------------------------------------------

DROPPED = [
    pytest.param(
        "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change",
        iss_sub("alice"),
        id="unknown-event-type",
    ),
    pytest.param(SESSION_REVOKED, iss_sub("alice", iss=OTHER_ISSUER), id="untrusted-issuer"),
    pytest.param(SESSION_REVOKED, jwt_id("tok-drop", iss=OTHER_ISSUER), id="untrusted-issuer-jwt-id"),
    pytest.param(SESSION_REVOKED, {"format": "email", "email": "alice@example.com"}, id="email"),
    pytest.param(SESSION_REVOKED, {"format": "opaque", "id": "alice"}, id="opaque"),
    pytest.param(SESSION_REVOKED, {"format": "complex", "session": {"format": "opaque", "id": "s"}}, id="no-user"),
    pytest.param(SESSION_REVOKED, None, id="no-subject"),
]


@pytest.mark.parametrize(("event_type", "subject"), DROPPED)
async def test_what_the_receiver_cannot_process_is_accepted_dropped_and_counted(
    clock: ManualClock, api: Api, idp: Issuer, transmitter: Transmitter, event_type: str, subject: Any
) -> None:
    token = idp.token(jti="tok-drop")
    clock.advance(5)
    assert_accepted(await api.push(transmitter.set(event_type, subject, {"event_timestamp": int(clock())})))
    assert api.entries == 0
    assert await api.status(token) == 200
    counts = api.counts
    assert (counts["accepted"], counts["dropped"], counts["applied"], counts["refused"]) == (1, 1, 0, 0)


async def test_a_duplicate_jti_is_acknowledged_and_not_applied_again(
    clock: ManualClock, api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    alice, bob = idp.token(), idp.token(sub="bob")
    clock.advance(5)
    first = transmitter.set(SESSION_REVOKED, iss_sub("alice"), jti="set-once")
    assert_accepted(await api.push(first))
    assert_accepted(await api.push(first))
    # A transmitter that reuses a jti for another event: still the SET seen already.
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, iss_sub("bob"), jti="set-once")))

    assert (await api.status(alice), await api.status(bob)) == (401, 200)
    counts = api.counts
    assert (counts["accepted"], counts["applied"], counts["duplicates"]) == (3, 1, 2)
    assert api.guard.status()["fleet"]["revocations"]["added"] == 1


# -- the transmitter's keys ---------------------------------------------------------------------------


async def test_a_set_signed_with_a_rotated_key_is_accepted_after_a_refetch(
    api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    old, new = idp.token(jti="tok-old"), idp.token(jti="tok-new")
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, jwt_id("tok-old"))))
    assert transmitter.jwks_calls == 1

    rotated = SigningKey("RS256", private_key("rsa", 1), kid="set-2")
    transmitter.keys = [rotated]
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, jwt_id("tok-new"), key=rotated)))

    assert transmitter.jwks_calls == 2
    assert (await api.status(old), await api.status(new)) == (401, 401)
    # The old key is gone from the JWKS: a SET it signs is not accepted any more.
    assert_refused(
        await api.push(
            transmitter.set(VERIFICATION, None, key=SigningKey("ES256", private_key("ec256", 1), kid="set-1"))
        ),
        "invalid_key",
    )


async def test_unknown_kids_refetch_the_keys_at_most_once_per_cooldown(
    api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    assert_accepted(await api.push(transmitter.set(VERIFICATION, None)))
    assert transmitter.jwks_calls == 1
    for kid in ("ghost-1", "ghost-2", "ghost-3"):
        stranger = SigningKey("ES256", private_key("ec256", 2), kid=kid)
        assert_refused(await api.push(transmitter.set(SESSION_REVOKED, iss_sub("alice"), key=stranger)), "invalid_key")
    assert transmitter.jwks_calls == 2  # one refetch for the first unknown kid, none for the next ones
    assert api.entries == 0


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.Response(500, text="oops"), id="500"),
        pytest.param(httpx.ConnectError, id="connect-error"),
        pytest.param(httpx.Response(200, json={"issuer": OTHER_ISSUER, "jwks_uri": SSF_JWKS}), id="other-issuer"),
        pytest.param(httpx.Response(200, json={"issuer": ISSUER}), id="no-jwks-uri"),
        pytest.param(
            httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": "http://idp.example.com/jwks"}), id="http-jwks-uri"
        ),
        pytest.param(httpx.Response(200, text="<html>"), id="not-json"),
    ],
)
async def test_an_unreachable_transmitter_is_503_with_retry_after_and_the_set_is_taken_later(
    api: Api, idp: Issuer, transmitter: Transmitter, failure: Any
) -> None:
    token = idp.token(jti="tok-later")
    pushed = transmitter.set(SESSION_REVOKED, jwt_id("tok-later"))
    transmitter.failure = failure

    response = await api.push(pushed)

    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert api.entries == 0
    assert await api.status(token) == 200

    transmitter.failure = None  # back: the transmitter retries the same SET (RFC 8935 §2.3)
    assert_accepted(await api.push(pushed))
    assert await api.status(token) == 401


async def test_a_set_that_could_not_be_applied_is_applied_when_it_comes_again(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter
) -> None:
    """503 when the revocation list is full; the retry must not be taken for a duplicate of a SET applied."""
    api = Api(clock, revocation_max_entries=1, max_token_lifetime=60)
    idp.token(jti="tok-1", exp=int(clock()) + 60)
    assert_accepted(await api.push(transmitter.set(SESSION_REVOKED, jwt_id("tok-1"))))  # fills the list
    clock.advance(50)
    second = idp.token(jti="tok-2", exp=int(clock()) + 60)
    pushed = transmitter.set(SESSION_REVOKED, jwt_id("tok-2"))

    response = await api.push(pushed)
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert await api.status(second) == 200

    clock.advance(45)  # the first entry outlived every token it could cover (max_token_lifetime + leeway)
    assert_accepted(await api.push(pushed))  # the transmitter's retry
    assert await api.status(second) == 401
    assert api.counts["duplicates"] == 0


async def test_a_failure_while_applying_is_503_and_the_set_is_taken_when_it_comes_again(
    api: Api, idp: Issuer, transmitter: Transmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong past verification, the transmitter is told to retry: never a 500, never a lost SET."""
    token = idp.token(jti="tok-bug")
    pushed = transmitter.set(SESSION_REVOKED, jwt_id("tok-bug"))
    revoke = api.receiver.fleet.revoke

    async def broken(entry: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.receiver.fleet, "revoke", broken)
    response = await api.push(pushed)
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()

    monkeypatch.setattr(api.receiver.fleet, "revoke", revoke)
    assert_accepted(await api.push(pushed))
    assert await api.status(token) == 401


# -- the push path belongs to the guard ---------------------------------------------------------------


async def test_the_push_path_never_reaches_the_app_and_other_paths_are_unaffected(
    api: Api, idp: Issuer, transmitter: Transmitter
) -> None:
    token = idp.token(jti="tok-path")
    assert_accepted(await api.push(transmitter.set(VERIFICATION, None, {"state": "s"})))
    assert_refused(await api.push("junk"), "invalid_request")
    assert (await api.request("GET", PUSH_PATH, token)).status_code == 405
    assert (await api.request("POST", PUSH_PATH, token)).status_code == 400  # a token is no push authorization
    assert api.reached == []

    assert (await api.request("GET", PUSH_PATH + "/extra")).status_code == 401  # guarded as any route
    extra = await api.request("POST", PUSH_PATH + "/extra", token)
    assert (extra.status_code, extra.text) == (200, "the app's own route")
    assert api.reached == [PUSH_PATH + "/extra"]
    assert (await api.request("GET", "/photos", token)).json() == {"who": "alice"}
    assert (await api.request("GET", "/photos")).status_code == 401


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param("A" * 65536, id="one-segment"),
        pytest.param("A." * 32768, id="dots"),
        pytest.param("eyJ" + "A" * 32765 + "." + "B" * 32766 + ".", id="two-segments-empty-signature"),
        pytest.param(b64url(b"[" * 16384 + b"1" + b"]" * 16384)[:32000] + ".e30.AAAA", id="deep-json"),
        pytest.param(b64url(b'{"a":' * 8000 + b"1" + b"}" * 8000)[:65000] + ".e30.AA", id="deep-object"),
        pytest.param("%" * 65536, id="outside-the-alphabet"),
    ],
)
async def test_a_push_of_junk_up_to_the_size_limit_is_refused(api: Api, junk: str) -> None:
    assert len(junk) <= 64 * 1024
    assert_refused(await api.push(junk), "invalid_request")
    assert api.entries == 0


# -- RFC 8936 poll ------------------------------------------------------------------------------------


class PollEndpoint:
    """The transmitter's RFC 8936 poll endpoint through respx: records each request, answers as scripted."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.answers: list[httpx.Response] = []
        self._arrived = asyncio.Event()
        router.post(POLL_URL).mock(side_effect=self.handle)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (at most 10 s) for a poll request after which ``predicate`` holds."""
        with anyio.fail_after(10):
            while not predicate():
                self._arrived = asyncio.Event()
                await self._arrived.wait()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        self.authorizations.append(request.headers.get("authorization"))
        self._arrived.set()
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(200, json={"sets": {}, "moreAvailable": False})

    def answer(self, sets: dict[str, Any], more: bool = False) -> None:
        self.answers.append(httpx.Response(200, json={"sets": sets, "moreAvailable": more}))


def polling(clock: ManualClock, guard_options: dict[str, Any] | None = None, **options: Any) -> Api:
    signals = SharedSignals(
        transmitter=ISSUER,
        poll_url=POLL_URL,
        poll_authorization=POLL_AUTHORIZATION,
        audience=SET_AUDIENCE,
        **options,
    )
    return Api(clock, signals=signals, **(guard_options or {}))


async def test_poll_applies_sets_then_acknowledges_them_and_reports_the_refused_ones(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    revoked, kept = idp.token(jti="tok-polled"), idp.token(jti="tok-kept")
    good = transmitter.set(SESSION_REVOKED, jwt_id("tok-polled"), jti="set-good")
    wrong_aud = transmitter.set(SESSION_REVOKED, jwt_id("tok-kept"), jti="set-aud", aud=AUDIENCE)
    poll.answer({"set-good": good, "set-aud": wrong_aud}, more=True)
    try:
        assert await api.receiver.poll_once() is True  # moreAvailable
        assert await api.receiver.poll_once() is False

        first, second = poll.bodies[:2]
        assert "ack" not in first
        assert "setErrs" not in first
        assert second["ack"] == ["set-good"]
        assert list(second["setErrs"]) == ["set-aud"]
        assert second["setErrs"]["set-aud"]["err"] == "invalid_audience"
        assert second["setErrs"]["set-aud"]["description"]
        assert poll.authorizations[:2] == [POLL_AUTHORIZATION, POLL_AUTHORIZATION]

        assert await api.receiver.poll_once() is False
        assert "ack" not in poll.bodies[2]
        assert "setErrs" not in poll.bodies[2]
        assert (await api.status(revoked), await api.status(kept)) == (401, 200)
        assert api.counts["polls"] >= 3
    finally:
        await api.receiver.stop()


async def test_a_set_polled_while_the_transmitters_keys_are_unavailable_is_not_acknowledged(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    pushed = transmitter.set(SESSION_REVOKED, jwt_id("tok-x"), jti="set-x")
    poll.answer({"set-x": pushed})
    transmitter.failure = httpx.Response(503)
    assert await api.receiver.poll_once() is False
    assert await api.receiver.poll_once() is False
    assert "ack" not in poll.bodies[1]
    assert "setErrs" not in poll.bodies[1]


async def test_a_failed_poll_raises_fetch_error_and_keeps_the_acknowledgements_for_the_next(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    poll.answer({"set-1": transmitter.set(VERIFICATION, None, jti="set-1")})
    poll.answers.append(httpx.Response(500))
    assert await api.receiver.poll_once() is False
    with pytest.raises(FetchError):
        await api.receiver.poll_once()
    await api.receiver.poll_once()
    assert [body.get("ack") for body in poll.bodies] == [None, ["set-1"], ["set-1"]]


async def test_a_polled_entry_that_is_no_set_is_reported_not_skipped(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    """Neither acknowledged nor reported, it would come back with every poll, forever."""
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    poll.answer({"set-big": "A" * (64 * 1024 + 1), "set-number": 5, "set-junk": "junk"})
    await api.receiver.poll_once()
    await api.receiver.poll_once()
    errors = poll.bodies[1]["setErrs"]
    assert sorted(errors) == ["set-big", "set-junk", "set-number"]
    assert {error["err"] for error in errors.values()} == {"invalid_request"}
    assert "ack" not in poll.bodies[1]


async def test_more_available_with_nothing_in_it_does_not_ask_again_at_once(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    """A transmitter that always says moreAvailable with no SETs must not spin the poller."""
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    poll.answer({}, more=True)
    assert await api.receiver.poll_once() is False


async def test_the_background_poller_survives_a_failed_poll(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    poll = PollEndpoint(respx_mock)
    api = polling(clock, poll_interval=0.01)
    token = idp.token(jti="tok-bg")
    poll.answers.append(httpx.Response(500))
    poll.answers.append(httpx.Response(200, text="not json"))
    poll.answer({"set-bg": transmitter.set(SESSION_REVOKED, jwt_id("tok-bg"), jti="set-bg")})
    try:
        api.receiver.ensure_polling()
        await poll.until(lambda: any(body.get("ack") == ["set-bg"] for body in poll.bodies))
        task = api.receiver._poll_task
        assert task is not None
        assert not task.done()
        assert await api.status(token) == 401
    finally:
        await api.receiver.stop()
    assert api.receiver._poll_task is None


async def test_the_first_request_starts_the_poller(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, respx_mock: respx.MockRouter
) -> None:
    poll = PollEndpoint(respx_mock)
    api = polling(clock)
    try:
        assert await api.status(idp.token()) == 200
        await poll.until(lambda: bool(poll.bodies))
        assert poll.authorizations[0] == POLL_AUTHORIZATION
    finally:
        await api.receiver.stop()


# -- end to end: the DevIdP as the transmitter -------------------------------------------------------


async def test_the_devidp_pushes_a_sign_out_and_the_guard_refuses_that_users_tokens_at_once() -> None:
    """The DevIdP signs and pushes a CAEP session-revoked SET (RFC 8935) straight into the guarded app."""
    clock = ManualClock(T0)
    idp = DevIdP(ISSUER, default_audience=AUDIENCE, clock=clock)
    api = Api(clock, http_client=idp.http_client)  # the guard reads the DevIdP's metadata, JWKS and SSF config
    alice, bob = idp.issue_token("read", subject="alice"), idp.issue_token("read", subject="bob")
    assert (await api.status(alice), await api.status(bob)) == (200, 200)

    async with api.client() as pushes:
        idp.ssf_http_client = pushes
        idp.add_stream(
            push_url="https://api.example.com" + PUSH_PATH, authorization=PUSH_AUTHORIZATION, audience=SET_AUDIENCE
        )
        clock.advance(2)
        idp.logout("alice")
        delivered = await idp.deliver()
        idp.ssf_http_client = None

    assert delivered >= 1
    assert idp.ssf_status()["rejected"] == 0
    assert api.counts["applied"] == 1
    assert api.counts["refused"] == 0
    assert (await api.status(alice), await api.status(bob)) == (401, 200)
    clock.advance(1)  # iat has whole seconds: the sign-out's own second is covered, the next one is not
    assert await api.status(idp.issue_token("read", subject="alice")) == 200
    assert api.reached == []


# -- configuration ------------------------------------------------------------------------------------


BAD_SIGNALS: list[Any] = [
    pytest.param({}, "shared_signals needs push_path", id="neither-push-nor-poll"),
    pytest.param({"push_path": PUSH_PATH}, "shared_signals.push_authorization", id="push-without-authorization"),
    pytest.param(
        {"push_path": PUSH_PATH, "push_authorization": "Bearer short"},
        "shared_signals.push_authorization",
        id="short-authorization",
    ),
    pytest.param(
        {"push_path": "ssf/events", "push_authorization": PUSH_AUTHORIZATION}, "shared_signals.push_path", id="rel"
    ),
    pytest.param(
        {"push_path": "/ssf?x=1", "push_authorization": PUSH_AUTHORIZATION}, "shared_signals.push_path", id="query"
    ),
    pytest.param(
        {"transmitter": "http://idp.example.com", "poll_url": POLL_URL}, "shared_signals.transmitter", id="http"
    ),
    pytest.param({"transmitter": "idp.example.com", "poll_url": POLL_URL}, "shared_signals.transmitter", id="not-url"),
    pytest.param({"poll_url": "http://idp.example.com/poll"}, "shared_signals.poll_url", id="http-poll-url"),
    *(
        pytest.param({"poll_url": POLL_URL, "poll_interval": value}, "shared_signals.poll_interval", id=f"interval-{i}")
        for i, value in enumerate([0, -1, math.nan, math.inf, True, "5", None])
    ),
    pytest.param({"poll_url": POLL_URL, "max_age": 0}, "shared_signals.max_age", id="max-age"),
    pytest.param({"poll_url": POLL_URL, "timeout": -1}, "shared_signals.timeout", id="timeout"),
    pytest.param({"poll_url": POLL_URL, "audience": []}, "shared_signals.audience", id="empty-audience"),
    pytest.param({"poll_url": POLL_URL, "audience": [""]}, "shared_signals.audience", id="blank-audience"),
    pytest.param({"poll_url": POLL_URL, "audience": 5}, "shared_signals.audience", id="int-audience"),
]


@pytest.mark.parametrize(("options", "message"), BAD_SIGNALS)
def test_a_wrong_shared_signals_option_is_a_configuration_error_naming_it(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?")):
        SharedSignals(**{"transmitter": ISSUER, **options})


def test_repr_never_shows_the_authorization_secrets() -> None:
    signals = SharedSignals(
        transmitter=ISSUER,
        push_path=PUSH_PATH,
        push_authorization=PUSH_AUTHORIZATION,
        poll_url=POLL_URL + "?stream=1&key=hush",
        poll_authorization=POLL_AUTHORIZATION,
    )
    shown = repr(signals) + str(signals) + f"{signals!r}"
    for secret in ("push-secret", "poll-secret", "hush"):
        assert secret not in shown
    assert ISSUER in shown
    assert PUSH_PATH in shown


def test_the_guard_needs_an_audience_for_the_sets(clock: ManualClock) -> None:
    signals = SharedSignals(transmitter=ISSUER, push_path=PUSH_PATH, push_authorization=PUSH_AUTHORIZATION)
    with pytest.raises(ConfigurationError, match="shared_signals needs audience="):
        TokenGuard(Starlette(), issuer=ISSUER, audience=AUDIENCE, clock=clock, shared_signals=signals)
    with pytest.raises(ConfigurationError, match=r"shared_signals must be a tokenguard\.SharedSignals"):
        TokenGuard(Starlette(), issuer=ISSUER, audience=AUDIENCE, shared_signals={"transmitter": ISSUER})


# -- found reading the change as an attacker -------------------------------------------------------------


@pytest.mark.parametrize("iat", [10**400, -(10**400)], ids=["huge", "huge-negative"])
async def test_an_iat_no_double_holds_is_refused_as_invalid_not_503(
    api: Api, transmitter: Transmitter, iat: int
) -> None:
    """A signed SET whose ``iat`` is an integer past a double's range: 400 ``invalid_request`` (it once
    reached ``math.isfinite`` and raised OverflowError, which the push endpoint answered with 503, so a
    pushing transmitter retried it for ever)."""
    assert_refused(await api.push(transmitter.set(ACCOUNT_DISABLED, iss_sub("alice"), {}, iat=iat)), "invalid_request")
    assert api.entries == 0


async def test_an_event_timestamp_no_double_holds_falls_back_to_the_sets_iat(
    clock: ManualClock, idp: Issuer, transmitter: Transmitter, api: Api
) -> None:
    before = idp.token()
    clock.advance(10)
    event = {"event_timestamp": 10**400}
    assert_accepted(await api.push(transmitter.set(ACCOUNT_DISABLED, iss_sub("alice"), event)))
    clock.advance(1)
    assert await api.status(before) == 401
    assert await api.status(idp.token()) == 200  # a token issued a second later: the cut-off is not "forever"


async def test_a_push_announcing_a_body_over_the_limit_is_refused_before_it_is_read(
    api: Api, transmitter: Transmitter
) -> None:
    """The announced ``Content-Length`` alone decides: nothing is read (the body here is small)."""
    received: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append({})
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"authorization", PUSH_AUTHORIZATION.encode()),
        (b"content-type", SECEVENT.encode()),
        (b"content-length", b"9" * 40),
    ]
    scope = {"type": "http", "method": "POST", "path": PUSH_PATH, "headers": headers}
    assert await api.receiver.serve(scope, receive, send) == 400
    assert received == []
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["err"] == "invalid_request"


async def test_a_poll_lock_that_never_ends_stops_polling_for_three_rounds_at_most(
    clock: ManualClock,
    idp: Issuer,
    transmitter: Transmitter,
    respx_mock: respx.MockRouter,
    redis_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by review: the fleet's poll lock, set without a TTL by anything but a guard, stopped every process
    from polling, silently (no warning, nothing stale), and the transmitter's revocations never arrived. The
    lock is per poll URL now; refused for three rounds with no poll made by anyone (the fleet's "polled" mark),
    a process polls anyway and says so. While another process polls, a refused lock is respected."""
    from tokenguard.redis_store import RedisStore

    redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis package is not installed (the redis extra)")
    respx_mock.route(host="127.0.0.1").pass_through()
    prefix = f"t{uuid.uuid4().hex}:"
    poll = PollEndpoint(respx_mock)
    api = polling(clock, {"shared_store": RedisStore(redis_server, prefix=prefix)}, poll_interval=5, timeout=1)
    raw = redis_asyncio.Redis.from_url(redis_server)
    name = hashlib.sha256(POLL_URL.encode()).hexdigest()[:16]
    try:
        await raw.set(f"{prefix}ssf-poll:{name}", b"not a guard")  # no expiry
        assert api.entries == 0
        poll.answer({"set-stuck": transmitter.set(SESSION_REVOKED, jwt_id("tok-stuck"), jti="set-stuck")})
        assert await api.receiver.poll_once() is False
        clock.advance(17)  # patience: 3 rounds of (interval + timeout) = 18 s
        assert await api.receiver.poll_once() is False
        assert poll.bodies == []  # respected so far
        clock.advance(2)
        await api.receiver.poll_once()
        assert len(poll.bodies) == 1
        assert api.counts["polls_past_a_stuck_lock"] == 1
        assert "poll lock has been held" in caplog.text
        # The polled revocation arrived. (Checked on the list, not by a request: a request would start the
        # background poller, whose rounds would race the ones this test makes.)
        assert api.entries == 1
        clock.advance(6)  # one round later: its own mark is no other process polling, so it polls again
        await api.receiver.poll_once()
        assert len(poll.bodies) == 2  # (found by review: it polled once in four rounds)
        assert api.counts["polls_past_a_stuck_lock"] == 2
        # Another process of the fleet polls (its "polled" mark is fresh): the refused lock is respected.
        clock.advance(19)
        await raw.set(f"{prefix}ssf-polled:{name}", repr(float(clock())).encode())
        assert await api.receiver.poll_once() is False
        assert len(poll.bodies) == 2
    finally:
        await api.guard._shutdown()  # the lifespan's shutdown: the poller, the feed listener, the store
        await raw.aclose()


async def test_a_poll_that_fails_still_marks_the_fleet_as_polling(
    clock: ManualClock, respx_mock: respx.MockRouter, redis_server: str
) -> None:
    """The "polled" mark is left before the transmitter is asked: while it is down, the process holding the lock
    still polls, and the others must not take that lock for a stuck one and poll all at once when it is back
    (found by review of the stuck-lock rule)."""
    from tokenguard.redis_store import RedisStore

    redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis package is not installed (the redis extra)")
    respx_mock.route(host="127.0.0.1").pass_through()
    respx_mock.post(POLL_URL).mock(return_value=httpx.Response(503))
    prefix = f"t{uuid.uuid4().hex}:"
    api = polling(clock, {"shared_store": RedisStore(redis_server, prefix=prefix)}, poll_interval=5, timeout=1)
    raw = redis_asyncio.Redis.from_url(redis_server)
    name = hashlib.sha256(POLL_URL.encode()).hexdigest()[:16]
    try:
        with pytest.raises(FetchError, match="answered 503"):
            await api.receiver.poll_once()
        assert float((await raw.get(f"{prefix}ssf-polled:{name}")).split(b" ")[0]) == clock()
        assert await raw.get(f"{prefix}ssf-poll:{name}") is None  # the lock was given back
    finally:
        await api.guard._shutdown()
        await raw.aclose()
