"""RFC 9396 ``authorization_details`` guards (issue 7, item 3), through real apps and the DevIdP.

The shipped example (``examples/payments_app.py``) is exercised end to end: a token granting
"up to 500 EUR to account 12345" lets a 450 EUR transfer to 12345 through, and refuses 600 EUR or
another account with 403 ``insufficient_scope``. Then the guard's own rules: entries from the JWT or
the introspection answer, malformed details (401), checks that fail (403, logged, never 500), the
body read once and replayed, its size cap, and the DevIdP issuing details from real requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from examples import payments_app
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Message, Scope

from tokenguard import (
    ConfigurationError,
    InsufficientScope,
    RequestContext,
    TokenGuard,
    public,
    require_authorization_details,
    require_scopes,
    sensitive,
)
from tokenguard.events import DecisionEvent
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
)

PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"amount": "500", "currency": "EUR"},
    "creditorAccount": {"iban": "12345"},
}
ACCOUNTS = {"type": "account_information", "accounts": ["DE01", "DE02"]}
CALLBACK = "http://127.0.0.1/callback"
VERIFIER = "v" * 43


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payments(dev_idp: DevIdP, **options: Any) -> TestClient:
    """The example payments app, guarded by a TokenGuard trusting ``dev_idp`` in-process."""
    app = payments_app.create_app(
        issuer=dev_idp.issuer,
        audience=dev_idp.default_audience,
        http_client=dev_idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=dev_idp.clock,
        **options,
    )
    return TestClient(app)


# -- the shipped example ----------------------------------------------------------------------------


def test_transfer_within_the_granted_amount_to_the_granted_account_passes(dev_idp: DevIdP) -> None:
    """450 EUR to 12345 with a token granting up to 500 EUR to 12345: 200, and the endpoint sees the body."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": 450, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"transferred": 450, "to": "12345", "by": "alice"}


def test_transfer_of_exactly_the_granted_amount_passes(dev_idp: DevIdP) -> None:
    """The granted amount is a ceiling: 500 of 500 passes."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": 500, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 200


def test_transfer_over_the_granted_amount_is_403_with_a_clear_description(dev_idp: DevIdP) -> None:
    """600 EUR against a 500 EUR grant: 403 insufficient_scope, and the description says the amount is too high."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": 600, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'error_description="The amount exceeds what the payment authorization allows."' in challenge
    assert response.json()["error_description"] == "The amount exceeds what the payment authorization allows."


def test_transfer_to_another_account_is_403_with_a_clear_description(dev_idp: DevIdP) -> None:
    """450 EUR to 99999 against a grant for 12345: 403 insufficient_scope naming the creditor account."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": 450, "to": "99999"}, headers=bearer(token))
    assert response.status_code == 403
    assert response.json() == {
        "error": "insufficient_scope",
        "error_description": "The payment authorization does not name this creditor account.",
    }


def test_transfer_in_another_currency_is_403(dev_idp: DevIdP) -> None:
    """A body naming USD against a EUR grant is refused."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    body = {"amount": 10, "to": "12345", "currency": "USD"}
    response = payments(dev_idp).post("/transfers", json=body, headers=bearer(token))
    assert response.status_code == 403
    assert "another currency" in response.json()["error_description"]


@pytest.mark.parametrize("amount", [-5, 0, "lots", True, None, "NaN"])
def test_transfer_with_a_nonsense_amount_is_403(dev_idp: DevIdP, amount: Any) -> None:
    """An amount that is not a positive finite number never passes the check."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": amount, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_token_without_authorization_details_is_403(dev_idp: DevIdP) -> None:
    """A valid token that grants no payment_initiation at all: 403 saying which type is missing."""
    token = dev_idp.issue_token(scopes=["payments"])
    response = payments(dev_idp).post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error_description"] == (
        'The access token grants no authorization_details of type "payment_initiation".'
    )


def test_token_with_details_of_another_type_only_is_403(dev_idp: DevIdP) -> None:
    """An account_information grant does not allow a payment."""
    token = dev_idp.issue_token(authorization_details=[ACCOUNTS])
    response = payments(dev_idp).post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 403


def test_second_entry_of_the_type_can_cover_the_request(dev_idp: DevIdP) -> None:
    """With two payment grants, the one naming the right account allows the transfer."""
    other = {**PAYMENT, "creditorAccount": {"iban": "77777"}}
    token = dev_idp.issue_token(authorization_details=[other, PAYMENT])
    response = payments(dev_idp).post("/transfers", json={"amount": 450, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "details",
    [
        PAYMENT,  # an object, not an array
        "payment_initiation",
        ["payment_initiation"],  # entries that are not objects
        [{"instructedAmount": {"amount": "500"}}],  # no type
        [{"type": 5}],
        [{"type": ""}],
        [PAYMENT, 7],
    ],
    ids=["object", "string", "string-entry", "no-type", "numeric-type", "empty-type", "mixed"],
)
def test_malformed_authorization_details_are_401_invalid_token(dev_idp: DevIdP, details: Any) -> None:
    """RFC 9396 §2 shape violated (not an array of objects with a string type): 401 invalid_token."""
    token = dev_idp.issue_token(authorization_details=details)
    response = payments(dev_idp).post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error_description"] == "The access token's authorization_details claim is malformed."


def test_null_authorization_details_are_401(dev_idp: DevIdP) -> None:
    """A present but null claim is malformed, not absent."""
    token = dev_idp.issue_token(authorization_details=None)
    response = payments(dev_idp).post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 401


def test_opaque_token_details_come_from_introspection(dev_idp: DevIdP) -> None:
    """An opaque token's authorization_details are read from the RFC 7662 answer (RFC 9396 §9.2)."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT], token_format="opaque")
    client = payments(dev_idp)
    assert client.post("/transfers", json={"amount": 450, "to": "12345"}, headers=bearer(token)).status_code == 200
    assert client.post("/transfers", json={"amount": 501, "to": "12345"}, headers=bearer(token)).status_code == 403


def test_introspected_details_decide_on_sensitive_routes(dev_idp: DevIdP) -> None:
    """A revoked payment token stops at once on the sensitive transfer route, whatever its details say."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    dev_idp.revoke(token)
    response = payments(dev_idp).post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(token))
    assert response.status_code == 401


def test_path_parameters_reach_the_check(dev_idp: DevIdP) -> None:
    """The account in the URL must be one the account_information grant lists."""
    token = dev_idp.issue_token(authorization_details=[ACCOUNTS])
    client = payments(dev_idp)
    ok = client.get("/accounts/DE02/balance", headers=bearer(token))
    assert ok.status_code == 200
    assert ok.json()["account"] == "DE02"
    assert client.get("/accounts/DE99/balance", headers=bearer(token)).status_code == 403


def test_example_health_is_public_and_metadata_lists_the_types(dev_idp: DevIdP) -> None:
    """The example's RFC 9728 document advertises the authorization_details types its routes check."""
    client = payments(dev_idp)
    assert client.get("/health").status_code == 200
    document = client.get("/.well-known/oauth-protected-resource").json()
    assert document["authorization_details_types_supported"] == ["account_information", "payment_initiation"]
    assert document["resource_name"] == "Payments API"
    assert document["scopes_supported"] == ["payments:admin"]


# -- the guard's rules, through small apps ------------------------------------------------------------


def guarded(app: Any, dev_idp: DevIdP, **options: Any) -> TestClient:
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


def recording(seen: list[Any], attribute: str = "body") -> Callable[[dict[str, Any], RequestContext], bool]:
    """A check that records one attribute of each request it sees, and allows it."""

    def check(entry: dict[str, Any], request: RequestContext) -> bool:
        seen.append(getattr(request, attribute))
        return True

    return check


def echo_app(check: Callable[..., Any], *, sensitive_route: bool = True) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"body": (await request.body()).decode(), "params": dict(request.path_params)})

    marked = require_authorization_details("payment_initiation", check=check)(endpoint)
    if sensitive_route:
        marked = sensitive(marked)
    return Starlette(routes=[Route("/pay/{creditor}", marked, methods=["POST"])])


def test_check_that_raises_is_403_and_logged_never_500(dev_idp: DevIdP, caplog: pytest.LogCaptureFixture) -> None:
    """A check with a bug refuses (403), logs an error naming the check, and never echoes the token."""

    def broken(entry: dict[str, Any], request: RequestContext) -> bool:
        return bool(entry["no such member"])

    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(broken), dev_idp)
    with caplog.at_level(logging.ERROR, logger="tokenguard"):
        response = client.post("/pay/12345", json={}, headers=bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert "could not be checked" in response.json()["error_description"]
    records = [r for r in caplog.records if "authorization_details check" in r.getMessage()]
    assert len(records) == 1
    assert "broken" in records[0].getMessage()
    assert "KeyError" in records[0].getMessage()
    assert all(token not in r.getMessage() for r in caplog.records)


def test_check_must_return_true_exactly(dev_idp: DevIdP) -> None:
    """A check that forgets to return (None) or returns a truthy non-bool refuses: only True allows."""
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    for result, status in ((None, 403), ("yes", 403), (1, 403), (True, 200)):
        client = guarded(echo_app(lambda entry, request, result=result: result), dev_idp)
        assert client.post("/pay/1", json={}, headers=bearer(token)).status_code == status, result


def test_async_check_is_awaited(dev_idp: DevIdP) -> None:
    """``check`` may be a coroutine function; its verdict decides."""

    async def creditor_matches(entry: dict[str, Any], request: RequestContext) -> bool:
        return bool(entry["creditorAccount"]["iban"] == request.path_params["creditor"])

    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(creditor_matches), dev_idp)
    assert client.post("/pay/12345", json={}, headers=bearer(token)).status_code == 200
    assert client.post("/pay/99999", json={}, headers=bearer(token)).status_code == 403


def test_body_is_read_once_and_replayed_to_the_endpoint(dev_idp: DevIdP) -> None:
    """The check sees the parsed body; the endpoint then reads exactly the bytes the client sent."""
    seen: list[Any] = []

    def record(entry: dict[str, Any], request: RequestContext) -> bool:
        seen.append(request.body)
        return True

    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    raw = '{"amount": 450, "to": "12345", "memo": "caf\\u00e9"}'
    response = guarded(echo_app(record), dev_idp).post(
        "/pay/12345", content=raw.encode(), headers={**bearer(token), "content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["body"] == raw
    assert seen == [{"amount": 450, "to": "12345", "memo": "café"}]


def test_empty_body_reaches_the_check_as_none(dev_idp: DevIdP) -> None:
    """No body: the check gets ``None`` and decides."""
    seen: list[Any] = []
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(recording(seen)), dev_idp)
    assert client.post("/pay/1", headers=bearer(token)).status_code == 200
    assert seen == [None]


def test_body_is_not_read_on_routes_that_are_not_sensitive(dev_idp: DevIdP) -> None:
    """Off ``@sensitive`` routes the check gets ``body=None`` and the endpoint still reads the whole body."""
    seen: list[Any] = []
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(recording(seen), sensitive_route=False), dev_idp)
    response = client.post("/pay/1", json={"amount": 3}, headers=bearer(token))
    assert response.status_code == 200
    assert json.loads(response.json()["body"]) == {"amount": 3}
    assert seen == [None]


@pytest.mark.parametrize(
    ("raw", "description"),
    [
        (b"amount=450", "The request body is not valid JSON."),
        (b'{"amount": 450, "amount": 600}', "The request body is not valid JSON."),  # duplicate members
        (b'{"amount": NaN}', "The request body is not valid JSON."),
        (b"\xff\xfe", "The request body is not valid JSON."),
    ],
    ids=["form", "duplicate-member", "nan", "not-utf8"],
)
def test_body_that_is_not_strict_json_is_400(dev_idp: DevIdP, raw: bytes, description: str) -> None:
    """A body the check cannot read unambiguously is 400 invalid_request; the check never runs."""
    calls: list[Any] = []
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(recording(calls)), dev_idp)
    response = client.post("/pay/1", content=raw, headers=bearer(token))
    assert response.status_code == 400
    assert 'error="invalid_request"' in response.headers["www-authenticate"]
    assert response.json()["error_description"] == description
    assert calls == []


def test_body_over_the_cap_is_400(dev_idp: DevIdP) -> None:
    """A body larger than ``max_body_bytes`` is refused, streamed or announced."""
    events: list[DecisionEvent] = []
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(lambda entry, request: True), dev_idp, max_body_bytes=64, on_decision=events.append)
    body = json.dumps({"memo": "x" * 100}).encode()
    response = client.post("/pay/1", content=body, headers=bearer(token))
    assert response.status_code == 400
    assert response.json()["error_description"] == "The request body is too large."
    assert (events[0].outcome, events[0].reason) == ("deny", "bad_request_body")
    streamed = client.post("/pay/1", content=iter([body[:40], body[40:]]), headers=bearer(token))
    assert streamed.status_code == 400
    assert client.post("/pay/1", content=b'{"a": 1}', headers=bearer(token)).status_code == 200


@pytest.mark.anyio
async def test_body_is_never_read_for_a_refused_token(dev_idp: DevIdP) -> None:
    """Without a valid token the middleware answers 401 without receiving a single body message."""
    app = TokenGuard(
        echo_app(lambda entry, request: True),
        issuer=dev_idp.issuer,
        audience=dev_idp.default_audience,
        http_client=dev_idp.http_client,
        clock=dev_idp.clock,
    )
    received: list[Any] = []
    sent: list[Any] = []

    async def receive() -> Message:
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/pay/1", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert sent[0]["status"] == 401
    assert received == []


def test_query_reaches_the_check_with_last_value_semantics(dev_idp: DevIdP) -> None:
    """``request.query`` holds the last value of each name (what Starlette and FastAPI read); all pairs are kept."""
    seen: list[Any] = []

    def record(entry: dict[str, Any], request: RequestContext) -> bool:
        seen.append((dict(request.query), request.query_items, request.method, request.path))
        return bool(request.query.get("to") == entry["creditorAccount"]["iban"])

    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(echo_app(record), dev_idp)
    assert client.post("/pay/1?to=99999&to=12345", headers=bearer(token)).status_code == 200
    assert client.post("/pay/1?to=12345&to=99999", headers=bearer(token)).status_code == 403
    assert seen[0] == ({"to": "12345"}, (("to", "99999"), ("to", "12345")), "POST", "/pay/1")


def test_a_check_cannot_edit_the_tokens_claims(dev_idp: DevIdP) -> None:
    """Each check gets a copy of its entry: editing it leaves ``request.auth.claims`` untouched."""

    def vandal(entry: dict[str, Any], request: RequestContext) -> bool:
        entry["instructedAmount"]["amount"] = "1000000"
        return True

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(request.auth.claims["authorization_details"])

    app = Starlette(routes=[Route("/pay", require_authorization_details("payment_initiation", check=vandal)(endpoint))])
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client = guarded(app, dev_idp)
    assert client.get("/pay", headers=bearer(token)).json() == [PAYMENT]
    assert client.get("/pay", headers=bearer(token)).json() == [PAYMENT]  # and the cached token too


def test_type_alone_is_enough_without_a_check(dev_idp: DevIdP) -> None:
    """``require_authorization_details(type)`` with no check only needs an entry of that type."""

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/read", require_authorization_details("account_information")(endpoint))])
    client = guarded(app, dev_idp)
    assert client.get("/read", headers=bearer(dev_idp.issue_token(authorization_details=[ACCOUNTS]))).status_code == 200
    assert client.get("/read", headers=bearer(dev_idp.issue_token(authorization_details=[PAYMENT]))).status_code == 403


def test_two_guards_on_one_route_must_both_pass(dev_idp: DevIdP) -> None:
    """Stacked decorators add up: an entry of each type is needed."""

    @require_authorization_details("payment_initiation")
    @require_authorization_details("account_information")
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    client = guarded(Starlette(routes=[Route("/both", endpoint)]), dev_idp)
    assert client.get("/both", headers=bearer(dev_idp.issue_token(authorization_details=[PAYMENT]))).status_code == 403
    both = dev_idp.issue_token(authorization_details=[PAYMENT, ACCOUNTS])
    assert client.get("/both", headers=bearer(both)).status_code == 200


def test_scopes_are_checked_before_authorization_details(dev_idp: DevIdP) -> None:
    """A route with scopes and details: a missing scope is 403 with ``scope=``, before any check runs."""
    calls: list[Any] = []

    @require_scopes("payments")
    @require_authorization_details("payment_initiation", check=recording(calls))
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    client = guarded(Starlette(routes=[Route("/p", endpoint)]), dev_idp)
    response = client.get("/p", headers=bearer(dev_idp.issue_token(authorization_details=[PAYMENT])))
    assert response.status_code == 403
    assert 'scope="payments"' in response.headers["www-authenticate"]
    assert calls == []
    ok = client.get("/p", headers=bearer(dev_idp.issue_token(["payments"], authorization_details=[PAYMENT])))
    assert ok.status_code == 200


def test_decision_events_name_the_refusal(dev_idp: DevIdP) -> None:
    """Refusals carry the reason codes insufficient_authorization_details and authorization_details_check_failed."""
    events: list[DecisionEvent] = []

    def boom(entry: dict[str, Any], request: RequestContext) -> bool:
        raise RuntimeError("bug")

    app = echo_app(lambda entry, request: request.path_params["creditor"] == "ok")
    app.router.routes.append(
        Route("/boom", sensitive(require_authorization_details("payment_initiation", check=boom)(endpoint())))
    )
    client = guarded(app, dev_idp, on_decision=events.append)
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    client.post("/pay/no", headers=bearer(token))
    client.get("/boom", headers=bearer(token))
    client.post("/pay/ok", headers=bearer(token))
    assert [(e.outcome, e.reason, e.status) for e in events] == [
        ("deny", "insufficient_authorization_details", 403),
        ("deny", "authorization_details_check_failed", 403),
        ("allow", "ok", 200),
    ]


def endpoint() -> Callable[[Request], Any]:
    """A fresh endpoint function: marks are attributes, so tests never share a marked function."""

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return ok


def test_check_may_refuse_with_its_own_description(dev_idp: DevIdP) -> None:
    """A check raising ``InsufficientScope((), "...")`` answers 403 with that description."""

    def explain(entry: dict[str, Any], request: RequestContext) -> bool:
        raise InsufficientScope((), "Transfers are closed on Sundays.")

    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    response = guarded(echo_app(explain), dev_idp).post("/pay/1", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error_description"] == "Transfers are closed on Sundays."


class Transfer(BaseModel):
    amount: int
    to: str


def test_fastapi_route_gets_the_replayed_body(dev_idp: DevIdP) -> None:
    """On FastAPI, the body read for the check is parsed again by FastAPI into the path function's model."""
    app = FastAPI()

    @app.post("/transfers")
    @sensitive
    @require_authorization_details("payment_initiation", check=payments_app.covers_transfer)
    async def transfer(body: Transfer) -> dict[str, Any]:
        return {"amount": body.amount, "to": body.to}

    client = guarded(app, dev_idp)
    token = dev_idp.issue_token(authorization_details=[PAYMENT])
    ok = client.post("/transfers", json={"amount": 450, "to": "12345"}, headers=bearer(token))
    assert ok.status_code == 200
    assert ok.json() == {"amount": 450, "to": "12345"}
    assert client.post("/transfers", json={"amount": 600, "to": "12345"}, headers=bearer(token)).status_code == 403


def test_path_parameters_of_included_fastapi_routers_and_mounts_reach_the_check(dev_idp: DevIdP) -> None:
    """Path parameters are those the router hands the endpoint, through include_router and Mount prefixes."""
    router = APIRouter()

    @router.get("/accounts/{account_id}")
    @require_authorization_details("account_information", check=payments_app.lists_account)
    async def account(account_id: str) -> dict[str, str]:
        return {"account": account_id}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    seen: list[Any] = []
    inner = Starlette(
        routes=[
            Route(
                "/items/{item_id:int}",
                require_authorization_details("x", check=recording(seen, "path_params"))(endpoint()),
            )
        ]
    )
    outer = Starlette(routes=[Mount("/tenants/{tenant}", app=inner)])
    token = dev_idp.issue_token(authorization_details=[ACCOUNTS, {"type": "x"}])
    client = guarded(app, dev_idp)
    assert client.get("/v1/accounts/DE01", headers=bearer(token)).json() == {"account": "DE01"}
    assert client.get("/v1/accounts/FR77", headers=bearer(token)).status_code == 403
    assert guarded(outer, dev_idp).get("/tenants/acme/items/7", headers=bearer(token)).status_code == 200
    assert seen == [{"tenant": "acme", "item_id": 7}]


# -- decorator validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("details_type", ["", 5, None])
def test_type_must_be_a_non_empty_string(details_type: Any) -> None:
    """The type is checked when decorating, not on the first request."""
    with pytest.raises(ConfigurationError, match="type"):
        require_authorization_details(details_type)


def test_check_must_be_callable() -> None:
    """A non-callable check is a configuration error."""
    with pytest.raises(ConfigurationError, match="check"):
        require_authorization_details("payment_initiation", check="covers")  # type: ignore[arg-type]


def test_public_route_cannot_require_authorization_details() -> None:
    """``@public`` with an authorization_details guard is a contradiction, refused at decoration."""
    with pytest.raises(ConfigurationError, match="@public"):
        public(require_authorization_details("payment_initiation")(endpoint()))


# -- the DevIdP issues authorization_details from real requests ---------------------------------------


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize(idp_client: TestClient, **params: str) -> dict[str, list[str]]:
    query = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "code_challenge": pkce_challenge(VERIFIER),
        "code_challenge_method": "S256",
        **params,
    }
    response = idp_client.get("/authorize", params=query, follow_redirects=False)
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["location"]).query)


def exchange(idp_client: TestClient, code: str) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    response = idp_client.post("/token", data=form, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_devidp_grants_authorization_details_through_the_code_flow(dev_idp: DevIdP) -> None:
    """/authorize with authorization_details → the token (and token response, RFC 9396 §7) carry them."""
    idp_client = TestClient(dev_idp.app, base_url=dev_idp.issuer)
    params = authorize(idp_client, authorization_details=json.dumps([PAYMENT]))
    tokens = exchange(idp_client, params["code"][0])
    assert tokens["authorization_details"] == [PAYMENT]
    client = payments(dev_idp)
    transfer = {"amount": 450, "to": "12345"}
    assert client.post("/transfers", json=transfer, headers=bearer(tokens["access_token"])).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "{}",
        "[]",
        '[{"amount": 1}]',
        '["x"]',
        '[{"type": "unknown"}]',
        '[{"type": "payment_initiation", "amount": NaN}]',
        '[{"type": "payment_initiation", "amount": 1e999}]',
        '[{"type": "payment_initiation", "to": "\\ud800"}]',
        '[{"type": "payment_initiation", "type": "account_information"}]',
    ],
    ids=[
        "not-json",
        "object",
        "empty",
        "no-type",
        "not-object",
        "unsupported-type",
        "nan",
        "infinite",
        "lone-surrogate",
        "duplicate-member",
    ],
)
def test_devidp_refuses_malformed_authorization_details(value: str, dev_idp_keys: Any) -> None:
    """RFC 9396 §5: a malformed or unsupported authorization_details request is invalid_authorization_details.

    Read strictly (found by review: NaN, 1e999 and a lone surrogate were accepted, echoed in the token
    response and made /token a 500 after the tokens were minted), at /authorize and at /token alike."""
    idp = DevIdP(keys=dev_idp_keys, authorization_details_types=["payment_initiation", "account_information"])
    idp_client = TestClient(idp.app, base_url=idp.issuer)
    params = authorize(idp_client, authorization_details=value)
    assert params["error"] == ["invalid_authorization_details"]
    assert "code" not in params
    form = {"grant_type": "client_credentials", "authorization_details": value}
    response = idp_client.post("/token", data=form, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_authorization_details")
    assert [event.kind for event in idp.events if event.kind == "issued"] == []


def test_devidp_metadata_lists_its_authorization_details_types(dev_idp_keys: Any) -> None:
    """RFC 9396 §10: a DevIdP configured with types publishes them in its metadata."""
    idp = DevIdP(keys=dev_idp_keys, authorization_details_types=["payment_initiation"])
    assert idp.metadata()["authorization_details_types_supported"] == ["payment_initiation"]


def test_devidp_client_credentials_request_may_carry_authorization_details(dev_idp: DevIdP) -> None:
    """RFC 9396 §6: authorization_details in a client-credentials token request end up in the token."""
    idp_client = TestClient(dev_idp.app, base_url=dev_idp.issuer)
    form = {"grant_type": "client_credentials", "authorization_details": json.dumps([ACCOUNTS])}
    response = idp_client.post("/token", data=form, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert response.status_code == 200
    assert response.json()["authorization_details"] == [ACCOUNTS]
    balance = payments(dev_idp).get("/accounts/DE01/balance", headers=bearer(response.json()["access_token"]))
    assert balance.status_code == 200
