"""The DevIdP as a Shared Signals (SSF 1.0) transmitter: discovery, streams, SETs, push and poll delivery.

Driven over HTTP through the DevIdP's own ASGI app. Pushes reach a real Starlette receiver (through
``httpx.ASGITransport``) that records what it gets and answers as each test scripts it; every SET is
verified with PyJWT against the JWKS the DevIdP serves. The served case runs the DevIdP and a
receiver under uvicorn on loopback ports, and nothing calls ``deliver()`` there.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
import tracemalloc
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenguard import ConfigurationError
from tokenguard.cli._devidp import _build, _describe, _ssf_push
from tokenguard.cli._devidp import main as dev_idp_main
from tokenguard.cli._output import CliError, Printer
from tokenguard.testing import (
    ACCOUNT_DISABLED,
    ACCOUNT_PURGED,
    CREDENTIAL_CHANGE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    VERIFICATION,
    DevIdP,
    KeyRing,
    ManualClock,
    OAuthError,
    SSFSettings,
)

pytestmark = pytest.mark.anyio

CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
RESOURCE = (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET)
PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
#: The receiver's push endpoint, reached in-process through ``Receiver.client()``.
RECEIVER_URL = "https://rp.tokenguard.test/ssf/events"
RP_AUTHORIZATION = "Bearer rp-push-secret"
#: Short retry delays so a failing receiver costs milliseconds; a short long-poll.
FAST = SSFSettings(retry_delay=0.01, poll_wait=0.5)
ALL_EVENTS = [SESSION_REVOKED, TOKEN_CLAIMS_CHANGE, CREDENTIAL_CHANGE, ACCOUNT_DISABLED, ACCOUNT_PURGED, VERIFICATION]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Received:
    headers: dict[str, str]
    body: str


class Receiver:
    """An RFC 8935 push endpoint: records each request and answers with the next scripted (status, JSON body),
    then 202."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers: deque[tuple[int, Any]] = deque(answers)
        self.received: list[Received] = []
        self.arrived = threading.Event()
        self.app = Starlette(routes=[Route("/ssf/events", self.endpoint, methods=["POST"])])

    async def endpoint(self, request: Request) -> Response:
        self.received.append(Received(dict(request.headers), (await request.body()).decode()))
        self.arrived.set()
        status, body = self.answers.popleft() if self.answers else (202, None)
        return Response(status_code=status) if body is None else JSONResponse(body, status_code=status)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))

    @property
    def sets(self) -> list[str]:
        return [request.body for request in self.received]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time.time())


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def idp(dev_idp_keys: KeyRing, clock: ManualClock, receiver: Receiver) -> DevIdP:
    return DevIdP(keys=dev_idp_keys, clock=clock, ssf=FAST, ssf_http_client=receiver.client())


async def call(idp: DevIdP, method: str, path: str, *, auth: Any = CLIENT, **kwargs: Any) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.request(method, path, auth=auth, **kwargs)


async def access_token(idp: DevIdP) -> str:
    response = await call(idp, "POST", "/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def verify_set(idp: DevIdP, token: str, audience: str = DEFAULT_CLIENT_ID) -> dict[str, Any]:
    """Check a SET as a receiver would (SSF §4.1) against the JWKS the DevIdP serves; its claims."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "secevent+jwt"  # SSF §4.1.1
    keys = jwt.PyJWKSet.from_dict(idp.jwks())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    assert header["alg"] == key.algorithm_name == "RS256"
    # The DevIdP's clock is a ManualClock: iat is checked against it below, not against the wall clock.
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "aud", "iat", "jti"], "verify_iat": False},
    )
    assert "exp" not in claims  # SSF §4.1.7
    assert "sub" not in claims  # SSF §4.1.2
    assert set(claims) == {"iss", "aud", "iat", "jti", "txn", "sub_id", "events"}
    assert isinstance(claims["iat"], int)
    assert isinstance(claims["sub_id"], dict)
    assert isinstance(claims["sub_id"]["format"], str)
    assert len(claims["events"]) == 1  # SSF §4.2.1
    return claims


def event_of(claims: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    ((event_type, event),) = claims["events"].items()
    return event_type, event


def push_stream(idp: DevIdP, **options: Any) -> str:
    options = {"push_url": RECEIVER_URL, "audience": DEFAULT_CLIENT_ID, "authorization": RP_AUTHORIZATION, **options}
    return idp.add_stream(**options)


async def create_stream(idp: DevIdP, body: Mapping[str, Any], auth: Any = CLIENT) -> httpx.Response:
    return await call(idp, "POST", "/ssf/streams", json=body, auth=auth)


async def poll(idp: DevIdP, stream_id: str, auth: Any = CLIENT, **body: Any) -> httpx.Response:
    return await call(idp, "POST", f"/ssf/poll/{stream_id}", json=body, auth=auth)


# -- discovery (SSF §7) ---------------------------------------------------------------------------------


async def test_the_ssf_configuration_is_served_at_the_well_known_path(idp: DevIdP) -> None:
    """GET /.well-known/ssf-configuration: SSF 1.0 metadata naming the DevIdP's issuer, JWKS and endpoints."""
    response = await call(idp, "GET", "/.well-known/ssf-configuration", auth=None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "spec_version": "1_0",
        "issuer": idp.issuer,
        "jwks_uri": idp.metadata()["jwks_uri"],
        "delivery_methods_supported": [PUSH, POLL],
        "configuration_endpoint": f"{idp.issuer}/ssf/streams",
        "verification_endpoint": f"{idp.issuer}/ssf/verify",
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }
    assert idp.ssf_metadata_url == f"{idp.issuer}/.well-known/ssf-configuration"


async def test_the_rfc_8414_document_is_unchanged(idp: DevIdP) -> None:
    """The OAuth metadata keeps exactly its own members: nothing of SSF is added to it."""
    response = await call(idp, "GET", "/.well-known/oauth-authorization-server", auth=None)
    assert set(response.json()) == {
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "introspection_endpoint",
        "revocation_endpoint",
        "registration_endpoint",
        "scopes_supported",
        "response_types_supported",
        "response_modes_supported",
        "grant_types_supported",
        "code_challenge_methods_supported",
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
        "authorization_response_iss_parameter_supported",
        "dpop_signing_alg_values_supported",
        "introspection_signing_alg_values_supported",  # RFC 9701 §7, not SSF
    }


async def test_an_issuer_with_a_path_puts_the_well_known_part_before_it(dev_idp_keys: KeyRing) -> None:
    """Issuer https://host/tenant-1: metadata at /.well-known/ssf-configuration/tenant-1 (SSF §7.2), not after."""
    idp = DevIdP("https://idp.tokenguard.test/tenant-1", keys=dev_idp_keys)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=idp.app)) as client:
        found = await client.get("https://idp.tokenguard.test/.well-known/ssf-configuration/tenant-1")
        missing = await client.get("https://idp.tokenguard.test/tenant-1/.well-known/ssf-configuration")
        assert found.status_code == 200
        assert missing.status_code == 404
        metadata = found.json()
        assert metadata["issuer"] == idp.issuer
        assert metadata["configuration_endpoint"] == "https://idp.tokenguard.test/tenant-1/ssf/streams"
        created = await client.post(metadata["configuration_endpoint"], json={}, auth=CLIENT)
    assert created.status_code == 201
    assert idp.ssf_metadata_url == "https://idp.tokenguard.test/.well-known/ssf-configuration/tenant-1"


# -- streams (SSF §8.1.1) ----------------------------------------------------------------------------------


async def test_a_receiver_creates_reads_lists_and_deletes_its_stream(idp: DevIdP) -> None:
    """POST 201 with the configuration (aud = the client), GET one, GET all of its own, DELETE 204, then 404."""
    body = {
        "delivery": {"method": PUSH, "endpoint_url": RECEIVER_URL, "authorization_header": RP_AUTHORIZATION},
        "events_requested": [SESSION_REVOKED, "urn:example:not-supported"],
        "description": "the API's revocations",
    }
    created = await create_stream(idp, body)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    config = created.json()
    stream_id = config["stream_id"]
    assert config == {
        "stream_id": stream_id,
        "iss": idp.issuer,
        "aud": DEFAULT_CLIENT_ID,
        # SSF §6.1.1: the authorization header is the receiver's secret, never echoed.
        "delivery": {"method": PUSH, "endpoint_url": RECEIVER_URL},
        "events_supported": ALL_EVENTS,
        "events_requested": [SESSION_REVOKED, "urn:example:not-supported"],
        "events_delivered": [SESSION_REVOKED],
        "description": "the API's revocations",
    }
    assert idp.streams[stream_id].authorization == RP_AUTHORIZATION
    idp.add_stream(method="poll", audience="another-receiver")  # not the client's: never shown to it

    one = await call(idp, "GET", "/ssf/streams", params={"stream_id": stream_id})
    every = await call(idp, "GET", "/ssf/streams")
    assert one.status_code == every.status_code == 200
    assert one.json() == config
    assert every.json() == [config]
    assert (await call(idp, "GET", "/ssf/streams", auth=RESOURCE)).json() == []  # another client: none of them

    deleted = await call(idp, "DELETE", "/ssf/streams", params={"stream_id": stream_id})
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert stream_id not in idp.streams
    gone = await call(idp, "GET", "/ssf/streams", params={"stream_id": stream_id})
    assert gone.status_code == 404
    assert (await call(idp, "DELETE", "/ssf/streams", params={"stream_id": stream_id})).status_code == 404


async def test_a_stream_of_another_receiver_is_not_found(idp: DevIdP) -> None:
    """GET, DELETE and verification of a stream whose aud is another client: 404, and the stream stays."""
    stream_id = idp.add_stream(method="poll", audience=RESOURCE_CLIENT_ID)
    assert (await call(idp, "GET", "/ssf/streams", params={"stream_id": stream_id})).status_code == 404
    assert (await call(idp, "DELETE", "/ssf/streams", params={"stream_id": stream_id})).status_code == 404
    verify = await call(idp, "POST", "/ssf/verify", json={"stream_id": stream_id})
    assert verify.status_code == 404
    assert (await poll(idp, stream_id, returnImmediately=True)).status_code == 404
    assert stream_id in idp.streams
    assert idp.ssf_status(stream_id)["queued"] == 0
    assert (await call(idp, "GET", "/ssf/streams", params={"stream_id": stream_id}, auth=RESOURCE)).status_code == 200


async def test_without_delivery_a_stream_is_polled_at_the_transmitters_url(idp: DevIdP) -> None:
    """SSF §8.1.1.1: no delivery means poll; the endpoint_url is the transmitter's, one per stream."""
    created = await create_stream(idp, {})
    assert created.status_code == 201
    config = created.json()
    assert config["delivery"] == {"method": POLL, "endpoint_url": f"{idp.issuer}/ssf/poll/{config['stream_id']}"}
    assert config["events_requested"] == config["events_delivered"] == ALL_EVENTS


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic " + "ZGV2LWNsaWVudDp3cm9uZw=="}, 401),  # dev-client:wrong
        ({"Authorization": "Bearer some-access-token"}, 401),
        ({"Authorization": "Basic !!!"}, 401),
        ({"Authorization": "Basic c3BhOg=="}, 401),  # spa: (a public client has no secret)
    ],
)
async def test_stream_management_needs_a_confidential_clients_basic_credentials(
    idp: DevIdP, headers: dict[str, str], status: int
) -> None:
    """No credentials, a wrong secret, another scheme or a public client: 401 with a Basic challenge, no stream."""
    idp.register_client("spa", redirect_uris=["http://127.0.0.1/callback"])
    for method in ("POST", "GET"):
        response = await call(idp, method, "/ssf/streams", auth=None, headers=headers, json={})
        assert response.status_code == status
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert response.json()["error"] == "invalid_client"
    assert idp.streams == {}


async def test_two_authorization_headers_are_refused(idp: DevIdP) -> None:
    """Two Authorization headers: 400, even when both are right."""
    basic = "Basic " + base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    headers = [("Authorization", basic), ("Authorization", basic), ("Content-Type", "application/json")]
    response = await call(idp, "POST", "/ssf/streams", auth=None, headers=headers, content=b"{}")
    assert response.status_code == 400
    assert idp.streams == {}


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"not json", "application/json", "must be a JSON object"),
        (b"[]", "application/json", "must be a JSON object"),
        (b'{"description": "a", "description": "b"}', "application/json", "must be a JSON object"),
        (b"delivery=push", "application/x-www-form-urlencoded", "must be application/json"),
        (b'{"delivery": "push"}', "application/json", "delivery must be a JSON object"),
        (b'{"delivery": {"method": "urn:example:pigeon"}}', "application/json", "delivery.method must be one of"),
        (b'{"delivery": {"method": "urn:ietf:rfc:8935"}}', "application/json", "endpoint_url is required"),
        (
            b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "http://rp.example/events"}}',
            "application/json",
            "or http:// to a loopback host",
        ),
        (
            b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://u:p@rp.example/events"}}',
            "application/json",
            "must not hold credentials",
        ),
        (
            b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://rp.example/e#x"}}',
            "application/json",
            "must be an https:// URL",
        ),
        (
            b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://rp.example/e",'
            b' "authorization_header": "Bearer a\\r\\nX-Injected: 1"}}',
            "application/json",
            "printable ASCII",
        ),
        (b'{"events_requested": "' + SESSION_REVOKED.encode() + b'"}', "application/json", "must be a list"),
        (b'{"events_requested": [1]}', "application/json", "event type URIs"),
        (b'{"description": 5}', "application/json", "description must be a string"),
        (b'{"description": "' + b"x" * 70_000 + b'"}', "application/json", "too large"),
    ],
)
async def test_a_malformed_stream_request_is_refused(
    idp: DevIdP, content: bytes, content_type: str, message: str
) -> None:
    """Bad JSON, an unknown method, a push without a usable URL or header, bad lists: 400 naming it, no stream."""
    response = await call(idp, "POST", "/ssf/streams", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert message in response.json()["error_description"]
    assert idp.streams == {}


async def test_delete_without_a_stream_id_is_refused(idp: DevIdP) -> None:
    """SSF §8.1.1.5: a DELETE must name its stream: 400, and nothing is deleted."""
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    response = await call(idp, "DELETE", "/ssf/streams")
    assert response.status_code == 400
    assert stream_id in idp.streams


async def test_streams_are_bounded(dev_idp_keys: KeyRing) -> None:
    """Past max_streams: add_stream raises, and a receiver's POST gets 409 (SSF §8.1.1.1)."""
    idp = DevIdP(keys=dev_idp_keys, ssf=SSFSettings(max_streams=2))
    idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    assert (await create_stream(idp, {})).status_code == 201
    with pytest.raises(ConfigurationError, match="2 streams"):
        idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    refused = await create_stream(idp, {})
    assert refused.status_code == 409
    assert len(idp.streams) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"push_url": None}, "a push stream needs push_url"),
        ({"push_url": "http://rp.example/events"}, "or http:// to a loopback host"),
        ({"method": "poll"}, "takes no push_url"),
        ({"method": "carrier-pigeon"}, "method must be"),
        ({"events": SESSION_REVOKED}, "must be a list"),
        ({"audience": ""}, "audience must be"),
        ({"authorization": "Bearer x\n"}, "printable ASCII"),
    ],
)
def test_add_stream_checks_its_arguments(idp: DevIdP, options: dict[str, Any], message: str) -> None:
    """add_stream refuses what a receiver's request would be refused for, naming the argument."""
    with pytest.raises(ConfigurationError, match=message):
        push_stream(idp, **options)
    assert idp.streams == {}


def test_streams_is_a_read_only_view(idp: DevIdP) -> None:
    """``idp.streams`` cannot be edited; remove_stream deletes, once."""
    stream_id = push_stream(idp)
    with pytest.raises(TypeError):
        idp.streams["x"] = idp.streams[stream_id]  # type: ignore[index]
    assert "rp-push-secret" not in repr(idp.streams[stream_id])
    assert idp.remove_stream(stream_id) is True
    assert idp.remove_stream(stream_id) is False


# -- SETs on revocation (RFC 7009, RFC 9700 §4.14.2) --------------------------------------------------------


async def test_revoking_a_jwt_access_token_pushes_a_session_revoked_set(
    idp: DevIdP, receiver: Receiver, clock: ManualClock
) -> None:
    """RFC 7009 revocation of a JWT access token: one CAEP session-revoked SET, subject jwt_id of that token."""
    push_stream(idp)
    token = await access_token(idp)
    clock.advance(7)
    response = await call(idp, "POST", "/revoke", data={"token": token})
    assert response.status_code == 200
    assert idp.ssf_status()["pending"] == 1
    assert receiver.received == []  # in-process, nothing moves until deliver()

    assert await idp.deliver() == 1
    (request,) = receiver.received
    assert request.headers["content-type"] == "application/secevent+jwt"
    assert request.headers["accept"] == "application/json"
    assert request.headers["authorization"] == RP_AUTHORIZATION
    claims = verify_set(idp, request.body)
    assert claims["iat"] == int(clock())
    assert claims["sub_id"] == {"format": "jwt_id", "iss": idp.issuer, "jti": jti_of(token)}
    event_type, event = event_of(claims)
    assert event_type == SESSION_REVOKED
    assert event["event_timestamp"] == int(clock())
    assert idp.ssf_status() == {
        "streams": 1,
        "queued": 1,
        "delivered": 1,
        "rejected": 0,
        "failed": 0,
        "dropped": 0,
        "pending": 0,
    }

    # The same token revoked again is no news: nothing more is sent.
    await call(idp, "POST", "/revoke", data={"token": token})
    assert idp.ssf_status()["queued"] == 1
    assert await idp.deliver() == 0


async def test_an_opaque_access_token_has_no_jti_to_signal(idp: DevIdP, receiver: Receiver) -> None:
    """Revoking an opaque access token sends nothing: no jti names it to a receiver."""
    push_stream(idp)
    token = idp.issue_token(["read"], token_format="opaque")
    assert idp.revoke(token) is True
    assert idp.ssf_status()["queued"] == 0
    assert await idp.deliver() == 0
    assert receiver.received == []


async def test_refresh_replay_signals_each_live_access_token_of_the_chain(
    idp: DevIdP, receiver: Receiver, clock: ManualClock
) -> None:
    """A replayed refresh token revokes the grant: one jwt_id SET per access token still usable, one txn."""
    push_stream(idp)
    first = idp.issue_user_tokens("alice", ["read"])  # access token expires at +300
    assert first.refresh_token is not None
    clock.advance(200)
    second = idp.refresh(first.refresh_token)
    assert second.refresh_token is not None
    third = idp.refresh(second.refresh_token)
    assert third.refresh_token is not None
    fourth = idp.refresh(third.refresh_token)
    idp.revoke(fourth.access_token)  # revoked on its own first: its SET is sent now, not again
    assert await idp.deliver() == 1
    clock.advance(150)  # the first access token has expired: nobody can use it, nothing to say

    with pytest.raises(OAuthError, match="already used"):
        idp.refresh(first.refresh_token)
    assert await idp.deliver() == 2
    replayed = [verify_set(idp, body) for body in receiver.sets[1:]]
    assert sorted(claims["sub_id"]["jti"] for claims in replayed) == sorted(
        [jti_of(second.access_token), jti_of(third.access_token)]
    )
    assert len({claims["txn"] for claims in replayed}) == 1
    assert replayed[0]["txn"] != verify_set(idp, receiver.sets[0])["txn"]
    for claims in replayed:
        event_type, event = event_of(claims)
        assert event_type == SESSION_REVOKED
        assert event == {
            "event_timestamp": int(clock()),
            "initiating_entity": "policy",
            "reason_admin": {"en": "refresh_token_replay"},
        }


async def test_revoking_a_refresh_token_signals_its_grants_access_tokens(idp: DevIdP, receiver: Receiver) -> None:
    """RFC 7009 §2.1: a refresh token revoked takes its grant, and each usable JWT access token is signalled."""
    push_stream(idp)
    tokens = idp.issue_user_tokens("alice", ["read"])
    assert tokens.refresh_token is not None
    response = await call(idp, "POST", "/revoke", data={"token": tokens.refresh_token})
    assert response.status_code == 200
    assert await idp.deliver() == 1
    claims = verify_set(idp, receiver.sets[0])
    assert claims["sub_id"]["jti"] == jti_of(tokens.access_token)


async def test_logout_revokes_the_users_grants_and_sends_one_iss_sub_set(
    idp: DevIdP, receiver: Receiver, clock: ManualClock
) -> None:
    """POST /logout username=alice: every grant of alice revoked, one session-revoked SET about alice, bob untouched."""
    push_stream(idp)
    alice = idp.issue_user_tokens("alice", ["read"])
    alice_direct = idp.issue_token(["read"], subject="alice")
    bob = idp.issue_user_tokens("bob", ["read"])
    clock.advance(30)

    response = await call(idp, "POST", "/logout", data={"username": "alice"})
    assert response.status_code == 200
    assert response.json() == {"grants_revoked": 2}
    assert await idp.deliver() == 1
    (body,) = receiver.sets
    claims = verify_set(idp, body)
    assert claims["sub_id"] == {"format": "iss_sub", "iss": idp.issuer, "sub": "alice"}
    event_type, event = event_of(claims)
    assert event_type == SESSION_REVOKED
    assert event["event_timestamp"] == int(clock())
    assert event["initiating_entity"] == "user"
    assert idp.introspect(alice.access_token)["active"] is False
    assert idp.introspect(alice_direct)["active"] is False
    assert idp.introspect(bob.access_token)["active"] is True
    assert any(e.kind == "logout" and e.subject == "alice" for e in idp.events)

    assert idp.logout("bob") == 1
    assert idp.introspect(bob.access_token)["active"] is False


@pytest.mark.parametrize(
    ("auth", "data", "status"),
    [(None, {"username": "alice"}, 401), (CLIENT, {}, 400), (CLIENT, {"username": "al ice"}, 400)],
)
async def test_logout_needs_a_client_and_a_user_name(idp: DevIdP, auth: Any, data: dict[str, str], status: int) -> None:
    """/logout without Basic credentials is 401; without a well-formed username, 400; nothing is revoked."""
    tokens = idp.issue_user_tokens("alice", ["read"])
    response = await call(idp, "POST", "/logout", data=data, auth=auth)
    assert response.status_code == status
    assert idp.introspect(tokens.access_token)["active"] is True


# -- signal(): every event type (CAEP, RISC) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "fields"),
    [
        (SESSION_REVOKED, {}),
        (CREDENTIAL_CHANGE, {"credential_type": "password", "change_type": "update"}),
        (TOKEN_CLAIMS_CHANGE, {"claims": {"role": "reader"}}),
        (ACCOUNT_DISABLED, {"reason": "hijacking"}),
        (ACCOUNT_PURGED, {}),
    ],
)
async def test_signal_sends_each_event_type(
    idp: DevIdP, receiver: Receiver, clock: ManualClock, event_type: str, fields: dict[str, Any]
) -> None:
    """signal(): one SET with that event, its fields and event_timestamp, about the given subject."""
    push_stream(idp)
    subject = {"format": "iss_sub", "iss": idp.issuer, "sub": "alice"}
    jtis = idp.signal(event_type, subject, **fields)
    assert len(jtis) == 1
    assert await idp.deliver() == 1
    claims = verify_set(idp, receiver.sets[0])
    assert claims["jti"] == jtis[0]
    assert claims["sub_id"] == subject
    assert event_of(claims) == (event_type, {"event_timestamp": int(clock()), **fields})


async def test_signal_reaches_every_stream_that_asked_with_its_own_aud(idp: DevIdP, receiver: Receiver) -> None:
    """One signal, two receivers: a SET each, its aud that receiver's, the same txn (SSF §4.1.9)."""
    push_stream(idp)
    push_stream(idp, audience=RESOURCE_CLIENT_ID)
    jtis = idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u-1"}, txn="txn-1")
    assert len(set(jtis)) == 2
    assert await idp.deliver() == 2
    by_aud = {jwt.decode(s, options={"verify_signature": False})["aud"]: s for s in receiver.sets}
    assert set(by_aud) == {DEFAULT_CLIENT_ID, RESOURCE_CLIENT_ID}
    for audience, body in by_aud.items():
        assert verify_set(idp, body, audience)["txn"] == "txn-1"


@pytest.mark.parametrize(
    ("event_type", "subject", "fields", "message"),
    [
        ("https://example.com/unknown", {"format": "opaque", "id": "x"}, {}, "event_type must be one of"),
        (VERIFICATION, {"format": "opaque", "id": "x"}, {}, "verify_stream"),
        (SESSION_REVOKED, {"sub": "alice"}, {}, "format"),
        (CREDENTIAL_CHANGE, {"format": "opaque", "id": "x"}, {"credential_type": "password"}, "change_type"),
        (TOKEN_CLAIMS_CHANGE, {"format": "opaque", "id": "x"}, {}, "claims"),
        (ACCOUNT_PURGED, {"format": "opaque", "id": "x"}, {"when": object()}, "must be JSON"),
        (ACCOUNT_PURGED, {"format": "opaque", "id": "x"}, {"event_timestamp": "now"}, "event_timestamp"),
    ],
)
def test_signal_refuses_what_a_receiver_could_not_read(
    idp: DevIdP, event_type: str, subject: dict[str, Any], fields: dict[str, Any], message: str
) -> None:
    """An unknown type, a subject without format, a missing member, non-JSON values: refused, nothing queued."""
    push_stream(idp)
    with pytest.raises(ConfigurationError, match=message):
        idp.signal(event_type, subject, **fields)
    assert idp.ssf_status()["queued"] == 0


async def test_only_requested_events_are_delivered(idp: DevIdP) -> None:
    """events_requested ∩ supported = events_delivered, and only those reach a stream (SSF §8.1.1)."""
    revocations = push_stream(idp, events=[SESSION_REVOKED, "urn:example:unknown"])
    credentials = push_stream(idp, events=[CREDENTIAL_CHANGE])
    assert idp.stream_configuration(idp.streams[revocations])["events_delivered"] == [SESSION_REVOKED]
    assert idp.stream_configuration(idp.streams[credentials])["events_delivered"] == [CREDENTIAL_CHANGE]
    idp.signal(CREDENTIAL_CHANGE, {"format": "opaque", "id": "u"}, credential_type="pin", change_type="create")
    idp.logout("alice")
    idp.signal(ACCOUNT_DISABLED, {"format": "opaque", "id": "u"})
    assert idp.ssf_status(revocations)["queued"] == 1
    assert idp.ssf_status(credentials)["queued"] == 1
    created = await create_stream(
        idp, {"delivery": {"method": PUSH, "endpoint_url": RECEIVER_URL}, "events_requested": [ACCOUNT_PURGED]}
    )
    assert created.json()["events_delivered"] == [ACCOUNT_PURGED]


# -- verification (SSF §8.1.4) -----------------------------------------------------------------------------


async def test_verification_sends_the_state_back_on_the_stream(idp: DevIdP, receiver: Receiver) -> None:
    """POST /ssf/verify: 204, then a verification SET about the stream (opaque id) with the state, even
    when the stream asked for other events only."""
    stream_id = push_stream(idp, events=[SESSION_REVOKED])
    response = await call(idp, "POST", "/ssf/verify", json={"stream_id": stream_id, "state": "c3RhdGU"})
    assert response.status_code == 204
    assert await idp.deliver() == 1
    claims = verify_set(idp, receiver.sets[0])
    assert claims["sub_id"] == {"format": "opaque", "id": stream_id}
    event_type, event = event_of(claims)
    assert event_type == VERIFICATION
    assert event["state"] == "c3RhdGU"
    other = push_stream(idp)
    idp.verify_stream(other)
    assert idp.ssf_status(stream_id)["queued"] == 1  # the other stream's verification is its own


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"stream_id": "no-such-stream"}, 404),
        ({}, 400),
        ({"stream_id": 7}, 400),
        ("STREAM", 400),
        ({"stream_id": "STREAM", "state": ["x"]}, 400),
    ],
)
async def test_a_bad_verification_request_is_refused(idp: DevIdP, body: Any, status: int) -> None:
    """An unknown stream is 404; a request without a stream_id string, or a state that is no string, is 400."""
    stream_id = push_stream(idp)
    body = stream_id if body == "STREAM" else body
    if isinstance(body, dict) and body.get("stream_id") == "STREAM":
        body = {**body, "stream_id": stream_id}
    response = await call(idp, "POST", "/ssf/verify", json=body)
    assert response.status_code == status
    assert idp.ssf_status()["queued"] == 0


# -- push delivery (RFC 8935) ------------------------------------------------------------------------------


async def test_a_failed_push_is_retried_and_delivered_once(idp: DevIdP) -> None:
    """500, then 202: the same SET is sent twice, and counted delivered once."""
    receiver = Receiver((500, None))
    idp.ssf_http_client = receiver.client()
    push_stream(idp)
    (jti,) = idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    assert await idp.deliver() == 1
    assert len(receiver.received) == 2
    assert receiver.sets[0] == receiver.sets[1]
    status = idp.ssf_status()
    assert (status["delivered"], status["failed"], status["pending"]) == (1, 0, 0)
    (delivered,) = [e for e in idp.events if e.kind == "ssf_delivered"]
    assert delivered.detail["jti"] == jti
    assert delivered.detail["attempts"] == 2


async def test_a_set_refused_with_400_is_not_sent_again(idp: DevIdP) -> None:
    """RFC 8935 §2.3: 400 with err/description is a refusal: recorded, never retried."""
    receiver = Receiver((400, {"err": "invalid_audience", "description": "Not for this API."}))
    idp.ssf_http_client = receiver.client()
    push_stream(idp)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    assert await idp.deliver() == 0
    assert len(receiver.received) == 1
    status = idp.ssf_status()
    assert (status["rejected"], status["delivered"], status["failed"], status["pending"]) == (1, 0, 0, 0)
    (rejected,) = [e for e in idp.events if e.kind == "ssf_rejected"]
    assert rejected.detail["err"] == "invalid_audience"
    assert rejected.detail["description"] == "Not for this API."


async def test_a_400_without_an_error_body_is_retried(idp: DevIdP) -> None:
    """A 400 that is no RFC 8935 §2.3 answer (no err member) is a failed attempt, not a refusal."""
    receiver = Receiver((400, None))
    idp.ssf_http_client = receiver.client()
    push_stream(idp)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    assert await idp.deliver() == 1
    assert len(receiver.received) == 2


async def test_a_compressed_answer_of_a_receiver_is_never_inflated(idp: DevIdP) -> None:
    """A receiver answering 400 with 256 MiB of zeros gzipped (≈ 250 KB): the transmitter asks for the identity
    coding, reads at most its cap of the bytes as sent, and retries the SET (an answer it cannot read is no
    refusal); httpx would have inflated the whole body first (found by review of the issuer-side fix)."""
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(zeros.compress(bytes(1 << 20)) for _ in range(256)) + zeros.flush()
    seen: list[str | None] = []

    async def bomber(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode() or None)
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 400 if len(seen) == 1 else 202, "headers": headers})
        await send({"type": "http.response.body", "body": bomb if len(seen) == 1 else _gzipped(b"{}")})

    idp.ssf_http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=bomber))
    push_stream(idp)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    tracemalloc.start()
    try:
        assert await idp.deliver() == 1  # the 400 read as unreadable: retried, then delivered
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == ["identity", "identity"]
    assert peak < 32 << 20  # never the 256 MiB the answer stands for


def _gzipped(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


async def test_a_receiver_that_keeps_failing_is_given_up_on_after_max_attempts(dev_idp_keys: KeyRing) -> None:
    """Always 503: max_attempts pushes, spaced by the doubling delay, then one failure recorded."""
    receiver = Receiver(*[(503, None)] * 10)
    settings = SSFSettings(retry_delay=0.02, max_attempts=4)
    idp = DevIdP(keys=dev_idp_keys, ssf=settings, ssf_http_client=receiver.client())
    push_stream(idp)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    started = time.monotonic()
    assert await idp.deliver() == 0
    assert time.monotonic() - started >= 0.02 + 0.04 + 0.08
    assert len(receiver.received) == 4
    status = idp.ssf_status()
    assert (status["failed"], status["pending"]) == (1, 0)
    (failed,) = [e for e in idp.events if e.kind == "ssf_failed"]
    assert failed.detail["status"] == 503


async def test_an_unreachable_receiver_is_a_failure_after_the_retries(dev_idp_keys: KeyRing) -> None:
    """Connection refused, over a real network client: retried, then recorded as failed with the error."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    idp = DevIdP(keys=dev_idp_keys, ssf=SSFSettings(retry_delay=0.01, max_attempts=2))
    idp.add_stream(push_url=f"http://127.0.0.1:{port}/ssf/events", audience=DEFAULT_CLIENT_ID)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    assert await idp.deliver() == 0
    (failed,) = [e for e in idp.events if e.kind == "ssf_failed"]
    assert failed.detail["error"] == "ConnectError"
    assert failed.detail["attempts"] == 2


async def test_events_name_sets_by_id_and_hold_no_token(idp: DevIdP, receiver: Receiver) -> None:
    """The event log records each SET queued and delivered by jti, never a SET or an access token."""
    push_stream(idp)
    token = await access_token(idp)
    await call(idp, "POST", "/revoke", data={"token": token})
    await idp.deliver()
    kinds = [e.kind for e in idp.events]
    assert "ssf_queued" in kinds
    assert "ssf_delivered" in kinds
    everything = repr(idp.events)
    assert token not in everything
    assert receiver.sets[0] not in everything
    assert receiver.sets[0].split(".")[2] not in everything


async def test_the_outbox_is_bounded_and_drops_the_oldest(dev_idp_keys: KeyRing) -> None:
    """max_queue SETs per stream: the oldest are dropped, and counted."""
    idp = DevIdP(keys=dev_idp_keys, ssf=SSFSettings(max_queue=3))
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    jtis = [idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": str(n)})[0] for n in range(5)]
    status = idp.ssf_status(stream_id)
    assert (status["queued"], status["dropped"], status["pending"]) == (5, 2, 3)
    answer = (await poll(idp, stream_id, returnImmediately=True)).json()
    assert list(answer["sets"]) == jtis[2:]


async def test_delivering_pushes_as_soon_as_a_set_is_queued_from_any_thread(idp: DevIdP, receiver: Receiver) -> None:
    """Inside ``delivering()`` (what a server's lifespan runs) a SET queued on another thread is pushed
    without deliver(), and a failed push is retried by the task."""
    receiver.answers.append((500, None))
    push_stream(idp)
    async with idp.delivering():
        await asyncio.to_thread(idp.signal, ACCOUNT_DISABLED, {"format": "opaque", "id": "u"})
        await wait_until(lambda: idp.ssf_status()["delivered"] == 1)
    assert len(receiver.received) == 2
    assert verify_set(idp, receiver.sets[1])["events"] == {ACCOUNT_DISABLED: {"event_timestamp": int(idp.clock())}}


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# -- poll delivery (RFC 8936) ------------------------------------------------------------------------------


async def test_poll_returns_sets_until_acknowledged(idp: DevIdP) -> None:
    """maxEvents bounds an answer, moreAvailable says more wait, unacknowledged SETs come again, acked and
    errored ones leave."""
    stream_id = (await create_stream(idp, {})).json()["stream_id"]
    subject = {"format": "opaque", "id": "u"}
    jtis = [idp.signal(ACCOUNT_PURGED, subject)[0] for _ in range(3)]

    first = await poll(idp, stream_id, maxEvents=2, returnImmediately=True)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert list(first.json()["sets"]) == jtis[:2]
    assert first.json()["moreAvailable"] is True
    for jti, token in first.json()["sets"].items():
        assert verify_set(idp, token)["jti"] == jti

    again = await poll(idp, stream_id, maxEvents=2, returnImmediately=True)
    assert again.json() == first.json()  # not acknowledged: sent again

    acked = await poll(idp, stream_id, maxEvents=10, returnImmediately=True, ack=jtis[:2])
    assert list(acked.json()["sets"]) == jtis[2:]
    assert acked.json()["moreAvailable"] is False

    errs = {jtis[2]: {"err": "invalid_key", "description": "Unknown kid."}}
    last = await poll(idp, stream_id, maxEvents=0, returnImmediately=True, setErrs=errs)
    assert last.json() == {"sets": {}, "moreAvailable": False}
    status = idp.ssf_status(stream_id)
    assert (status["delivered"], status["rejected"], status["pending"]) == (2, 1, 0)
    (rejected,) = [e for e in idp.events if e.kind == "ssf_rejected"]
    assert rejected.detail["err"] == "invalid_key"


async def test_a_long_poll_is_answered_as_soon_as_a_set_is_queued(dev_idp_keys: KeyRing) -> None:
    """returnImmediately false: the poll waits, and a SET queued meanwhile ends the wait at once."""
    idp = DevIdP(keys=dev_idp_keys, ssf=SSFSettings(poll_wait=5))
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    started = time.monotonic()
    waiting = asyncio.ensure_future(poll(idp, stream_id, returnImmediately=False))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    (jti,) = idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    answer = (await waiting).json()
    assert time.monotonic() - started < 1.5
    assert list(answer["sets"]) == [jti]


async def test_a_long_poll_with_nothing_to_send_ends_after_poll_wait(dev_idp_keys: KeyRing) -> None:
    """returnImmediately false and no SET: an empty answer after poll_wait, not before."""
    idp = DevIdP(keys=dev_idp_keys, ssf=SSFSettings(poll_wait=0.3))
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    started = time.monotonic()
    answer = (await poll(idp, stream_id)).json()
    assert time.monotonic() - started >= 0.3
    assert answer == {"sets": {}, "moreAvailable": False}


@pytest.mark.parametrize(
    "body",
    [
        {"maxEvents": -1},
        {"maxEvents": "10"},
        {"returnImmediately": "yes"},
        {"ack": "jti"},
        {"setErrs": {"jti": {"description": "no err"}}},
        {"setErrs": ["jti"]},
    ],
)
async def test_a_malformed_poll_is_refused_as_rfc_8936_says(idp: DevIdP, body: dict[str, Any]) -> None:
    """A malformed poll request: 400 with err/description, and nothing acknowledged."""
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    idp.signal(ACCOUNT_PURGED, {"format": "opaque", "id": "u"})
    response = await poll(idp, stream_id, **body)
    assert response.status_code == 400
    assert response.json()["err"] == "invalid_request"
    assert isinstance(response.json()["description"], str)
    assert idp.ssf_status(stream_id)["pending"] == 1


async def test_a_poll_needs_the_owning_client_and_a_poll_stream(idp: DevIdP) -> None:
    """No credentials: 401; another client, or a push stream: 404."""
    stream_id = idp.add_stream(method="poll", audience=DEFAULT_CLIENT_ID)
    pushed = push_stream(idp)
    unauthenticated = await poll(idp, stream_id, auth=None, returnImmediately=True)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"].startswith("Basic ")
    assert (await poll(idp, stream_id, auth=RESOURCE, returnImmediately=True)).status_code == 404
    assert (await poll(idp, pushed, returnImmediately=True)).status_code == 404
    not_json = await call(
        idp, "POST", f"/ssf/poll/{stream_id}", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["err"] == "invalid_request"


# -- served: a real server pushes at once ------------------------------------------------------------------


def listening_socket() -> socket.socket:
    """A loopback socket already listening: connections wait in its backlog until uvicorn accepts them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.fixture
def served() -> Iterator[Callable[[uvicorn.Server, socket.socket], None]]:
    """Run uvicorn servers on their own threads; stopped (and checked stopped) at the end."""
    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(server: uvicorn.Server, sock: socket.socket) -> None:
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))

    yield start
    for server, thread, sock in reversed(running):
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def test_a_served_devidp_pushes_a_revocation_at_once(
    dev_idp_keys: KeyRing, served: Callable[[uvicorn.Server, socket.socket], None]
) -> None:
    """DevIdP and receiver on loopback ports: a token revoked through HTTP /revoke reaches the receiver
    well under a second later, with no deliver() call."""
    idp_socket, rp_socket = listening_socket(), listening_socket()
    receiver = Receiver()
    served(uvicorn.Server(uvicorn.Config(receiver.app, log_level="warning")), rp_socket)
    idp = DevIdP.local(idp_socket.getsockname()[1], keys=dev_idp_keys)
    push_url = f"http://127.0.0.1:{rp_socket.getsockname()[1]}/ssf/events"
    idp.add_stream(push_url=push_url, audience=DEFAULT_CLIENT_ID, authorization=RP_AUTHORIZATION)
    served(idp.server(log_level="warning"), idp_socket)

    with httpx.Client(base_url=idp.issuer, timeout=5) as http:
        token = http.post("/token", data={"grant_type": "client_credentials"}, auth=CLIENT).json()["access_token"]
        revoked_at = time.monotonic()
        assert http.post("/revoke", data={"token": token}, auth=CLIENT).status_code == 200
        assert receiver.arrived.wait(timeout=5), "the receiver got nothing"
        assert time.monotonic() - revoked_at < 0.9
        (request,) = receiver.received
        assert request.headers["authorization"] == RP_AUTHORIZATION
        claims = verify_set(idp, request.body)
        assert claims["sub_id"] == {"format": "jwt_id", "iss": idp.issuer, "jti": jti_of(token)}
        deadline = time.monotonic() + 5
        while idp.ssf_status()["delivered"] != 1:
            assert time.monotonic() < deadline, idp.ssf_status()
            time.sleep(0.005)
        discovered = http.get("/.well-known/ssf-configuration").json()
    assert discovered["issuer"] == idp.issuer


# -- tokenguard dev-idp --ssf-* ----------------------------------------------------------------------------


def test_ssf_push_creates_a_push_stream_and_the_banner_says_so() -> None:
    """--ssf-push URL --ssf-push-authorization V: a push stream for dev-client; the banner shows the metadata URL."""
    push = _ssf_push(("http://127.0.0.1:8000/ssf/events",), RP_AUTHORIZATION, None)
    idp = _build("127.0.0.1", 9000, None, None, push=push)
    (stream,) = idp.streams.values()
    assert (stream.push_url, stream.authorization, stream.audience, stream.method) == (
        "http://127.0.0.1:8000/ssf/events",
        RP_AUTHORIZATION,
        DEFAULT_CLIENT_ID,
        "push",
    )
    out = io.StringIO()
    _describe(Printer(out), idp, "generated now", listen="http://127.0.0.1:9000")
    banner = out.getvalue()
    assert "  ssf        http://127.0.0.1:9000/.well-known/ssf-configuration" in banner
    assert "pushes SETs to http://127.0.0.1:8000/ssf/events for aud dev-client" in banner
    assert RP_AUTHORIZATION not in banner


def test_ssf_audience_names_the_receiver() -> None:
    """--ssf-audience AUD: the stream's (and its SETs') aud."""
    push = _ssf_push(("https://rp.example/ssf",), None, "rp-client")
    (stream,) = _build("127.0.0.1", 9000, None, None, push=push).streams.values()
    assert stream.audience == "rp-client"
    assert stream.authorization is None


def test_without_ssf_push_the_banner_says_how_to_push() -> None:
    """No --ssf-push: no stream; the banner still shows the metadata URL, and the flag."""
    idp = _build("127.0.0.1", 9000, None, None)
    assert idp.streams == {}
    out = io.StringIO()
    _describe(Printer(out), idp, "generated now", listen="http://127.0.0.1:9000")
    assert "http://127.0.0.1:9000/.well-known/ssf-configuration" in out.getvalue()
    assert "--ssf-push URL" in out.getvalue()


@pytest.mark.parametrize(
    ("urls", "authorization", "audience", "message"),
    [
        (("http://rp.example/ssf",), None, None, "--ssf-push must be an https:// URL, or http:// to a loopback host"),
        (("https://rp.example/ssf",), "Bearer a\r\nX: y", None, "--ssf-push-authorization must be printable ASCII"),
        ((), "Bearer a", None, "--ssf-push-authorization is for the stream --ssf-push URL creates"),
        ((), None, "rp", "--ssf-audience is for the stream --ssf-push URL creates"),
    ],
)
def test_bad_ssf_flags_are_refused_before_the_port_is_bound(
    urls: tuple[str, ...], authorization: str | None, audience: str | None, message: str
) -> None:
    """A bad --ssf-* value is one CliError naming the flag, raised before any socket is bound."""
    with pytest.raises(CliError) as caught:
        dev_idp_main(
            Printer(io.StringIO()),
            host="127.0.0.1",
            port=0,
            keys=None,
            allow_remote=False,
            ssf_push=urls,
            ssf_push_authorization=authorization,
            ssf_audience=audience,
        )
    assert caught.value.message.startswith(message)


async def test_an_anonymous_registrant_may_neither_log_users_out_nor_receive_signals(idp: DevIdP) -> None:
    """Found by review: ``/register`` is open to anyone and hands out a confidential client, whose Basic
    credentials were enough to log any user out (every grant revoked) and to create streams that receive
    every signal of every client (and take all ``max_streams``). Those are the operator's services: a
    dynamically registered client gets 403 ``unauthorized_client``, and nothing happens."""
    registered = idp.register_dynamic_client(
        {"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}
    )
    anonymous = (registered["client_id"], registered["client_secret"])
    tokens = idp.issue_user_tokens("alice", ["read"])
    logout = await call(idp, "POST", "/logout", data={"username": "alice"}, auth=anonymous)
    assert (logout.status_code, logout.json()["error"]) == (403, "unauthorized_client")
    assert idp.introspect(tokens.access_token)["active"] is True
    stream = await call(idp, "POST", "/ssf/streams", auth=anonymous, json={})
    assert (stream.status_code, stream.json()["error"]) == (403, "unauthorized_client")
    assert (await call(idp, "GET", "/ssf/streams", auth=anonymous)).status_code == 403
    assert idp.streams == {}
    # The operator's own clients still may (the control).
    assert (await call(idp, "POST", "/logout", data={"username": "alice"}, auth=CLIENT)).status_code == 200
    assert idp.introspect(tokens.access_token)["active"] is False
