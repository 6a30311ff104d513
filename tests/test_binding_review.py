"""Review findings on sender-constrained tokens: the introspection answer never weakens a signed binding.

On ``@sensitive`` routes the issuer's introspection answer is merged over the JWT's claims. Its ``cnf``
may add to the JWT's binding, never drop or change it (RFC 9449 §6.2, RFC 8705 §3.2): an answer of
``cnf: {}`` must not turn a DPoP-bound token into a bearer token on the routes meant to be strictest.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import TokenGuard, sensitive
from tokenguard.events import DecisionEvent
from tokenguard.testing import DevIdP
from tokenguard.testing.pytest_plugin import DPoPClient

OTHER_CERT = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"


@sensitive
async def transfer(request: Request) -> JSONResponse:
    binding = request.auth.binding
    return JSONResponse({"binding": binding.method if binding is not None else None})


def _guarded(idp: DevIdP, events: list[DecisionEvent], answered_cnf: Any) -> TestClient:
    """A guard whose issuer answers introspection with ``answered_cnf`` (``...``: the answer as it is)."""
    original = idp.introspect

    def answer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        document = dict(original(*args, **kwargs))
        if answered_cnf is not ...:
            document["cnf"] = answered_cnf
        return document

    idp.introspect = answer  # type: ignore[method-assign]
    app = Starlette(routes=[Route("/transfer", transfer, methods=["POST"])])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=idp.default_audience,
        http_client=idp.http_client,
        client_id="dev-api",
        client_secret="dev-api-secret",
        clock=idp.clock,
        on_decision=[events.append],
    )
    return TestClient(app, base_url="http://testserver")


@pytest.mark.parametrize("answered", [{}, None], ids=["empty-cnf", "no-cnf"])
def test_an_answer_without_the_binding_keeps_the_jwts(dpop_client: DPoPClient, answered: Any) -> None:
    events: list[DecisionEvent] = []
    token = dpop_client.token()
    with _guarded(dpop_client.idp, events, answered if answered is not None else ...) as client:
        as_bearer = client.post("/transfer", headers={"Authorization": f"Bearer {token}"})
        assert as_bearer.status_code == 401
        assert events[-1].reason == "dpop_binding_mismatch"
        proven = client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token))
        assert proven.status_code == 200, proven.text
        assert proven.json() == {"binding": "dpop"}


def test_an_answer_that_drops_or_changes_the_binding_is_refused(dpop_client: DPoPClient) -> None:
    events: list[DecisionEvent] = []
    token = dpop_client.token()
    with _guarded(dpop_client.idp, events, {"x5t#S256": OTHER_CERT}) as client:
        response = client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token))
        assert response.status_code == 401
        assert response.json()["error_description"] == "The introspection answer contradicts the token's binding."
        assert events[-1].reason == "bad_claim"
        as_bearer = client.post("/transfer", headers={"Authorization": f"Bearer {token}"})
        assert as_bearer.status_code == 401  # never accepted without its proof


def test_an_answer_may_add_to_the_binding(dpop_client: DPoPClient) -> None:
    """A certificate binding added by the answer is required too: stricter, never looser."""
    events: list[DecisionEvent] = []
    token = dpop_client.token()
    both = {"jkt": dpop_client.key.thumbprint, "x5t#S256": OTHER_CERT}
    with _guarded(dpop_client.idp, events, both) as client:
        response = client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token))
        assert response.status_code == 401
        assert events[-1].reason == "certificate_mismatch"


def _plain_guard(idp: DevIdP, store: Any, **options: Any) -> TestClient:
    app = Starlette(routes=[Route("/transfer", transfer, methods=["POST"])])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=idp.default_audience,
        http_client=idp.http_client,
        client_id="dev-api",
        client_secret="dev-api-secret",
        clock=idp.clock,
        replay_store=store,
        **options,
    )
    return TestClient(app, base_url="http://testserver")


def test_a_proof_holds_its_replay_slot_only_while_it_could_be_accepted(dpop_client: DPoPClient) -> None:
    """The record lives until the proof's own iat leaves the window (+1 s), not for the longest possible
    life: an old proof cannot pin a slot for minutes (a store filled with them would refuse everyone)."""
    from tokenguard.store import MemoryStore

    idp = dpop_client.idp
    store = MemoryStore(clock=idp.clock)
    token = dpop_client.token()
    now = idp.clock()
    proof = dpop_client.key.proof("POST", "http://testserver/transfer", access_token=token, iat=int(now) - 80)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    with _plain_guard(idp, store) as client:
        assert client.post("/transfer", headers=headers).status_code == 200
        (expiry,) = store._expiry.values()
        assert expiry == pytest.approx(int(now) - 80 + 60 + 30 + 1)  # iat + window + leeway + 1
        assert client.post("/transfer", headers=headers).status_code == 401  # a replay, while acceptable
        idp.clock.advance(expiry - now + 0.5)
        refused = client.post("/transfer", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_dpop_proof"  # its iat is out of the window by now


def test_without_public_url_the_host_header_check_is_said_once(
    dpop_client: DPoPClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tokenguard.store import MemoryStore

    idp = dpop_client.idp
    with caplog.at_level(logging.WARNING, logger="tokenguard"), _plain_guard(idp, MemoryStore()) as client:
        for _ in range(3):
            token = dpop_client.token()
            assert client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token)).status_code == 200
    said = [r for r in caplog.records if "set public_url" in r.getMessage()]
    assert len(said) == 1
    caplog.clear()
    fixed = _plain_guard(idp, MemoryStore(), public_url="http://testserver")
    with caplog.at_level(logging.WARNING, logger="tokenguard"), fixed as client:
        token = dpop_client.token()
        assert client.post("/transfer", headers=dpop_client.headers("POST", "/transfer", token)).status_code == 200
    assert not [r for r in caplog.records if "set public_url" in r.getMessage()]
