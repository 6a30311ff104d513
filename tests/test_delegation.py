"""Delegation (RFC 8693 §4.1 ``act``): the actor chain on ``request.auth``, and routes that require or refuse it.

Delegated tokens come from the DevIdP's real token exchange (``exchange_token``), JWT or opaque (then
the guard introspects them), and reach real Starlette, FastAPI and MCP apps behind a ``TokenGuard``.
Decision events tell the refusal reasons apart.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import tokenguard.models
from tokenguard import (
    AccessToken,
    Actor,
    ConfigurationError,
    InvalidToken,
    Requirement,
    Rule,
    TokenCredentials,
    public,
    refuse_delegation,
    require_auth_level,
    require_delegation,
    require_scopes,
    sensitive,
)
from tokenguard.events import DecisionEvent
from tokenguard.fastapi import delegated_token, direct_token, install_openapi, require_actor
from tokenguard.mcp import MCPPolicy, ToolPolicy
from tokenguard.models import MAX_ACT_DEPTH, actors_of
from tokenguard.policy import requirement_of
from tokenguard.testing import DevIdP, KeyRing

ORDERS = ("orders-api", "orders-secret")
OPAQUE = "https://opaque.example"


# -- the app ---------------------------------------------------------------------------------------------


def _auth(request: Request) -> TokenCredentials:
    auth = request.auth
    assert isinstance(auth, TokenCredentials)
    return auth


async def whoami(request: Request) -> JSONResponse:
    auth = _auth(request)
    actor = auth.actor
    return JSONResponse(
        {
            "user": request.user.identity,
            "actor": actor.sub if actor is not None else None,
            "chain": [a.sub for a in auth.actors],
            "actor_claims": dict(actor.claims) if actor is not None else None,
        }
    )


@require_delegation
async def delegated(request: Request) -> JSONResponse:
    return JSONResponse({"for": request.user.identity, "by": _auth(request).actor.sub})  # type: ignore[union-attr]


@require_delegation(actors=["orders-api"])
async def orders_only(request: Request) -> JSONResponse:
    return JSONResponse({"by": _auth(request).actor.sub})  # type: ignore[union-attr]


@refuse_delegation
async def in_person(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


@sensitive
@require_delegation(actors="orders-api")
async def sensitive_orders(request: Request) -> JSONResponse:
    return JSONResponse({"by": _auth(request).actor.sub, "source": _auth(request).source})  # type: ignore[union-attr]


@require_scopes("write")
@refuse_delegation
async def scoped_in_person(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def mounted(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/delegated", delegated),
            Route("/orders", orders_only),
            Route("/password", in_person, methods=["GET", "POST"]),
            Route("/sensitive-orders", sensitive_orders),
            Route("/scoped", scoped_in_person),
            Mount("/legacy", routes=[Route("/report", mounted)]),
        ]
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def __call__(self, event: DecisionEvent) -> None:
        self.events.append(event)

    @property
    def last(self) -> DecisionEvent:
        return self.events[-1]


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    dev_idp.register_client(*ORDERS)
    dev_idp.add_audience(OPAQUE, format="opaque")
    return dev_idp


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(idp: DevIdP, guarded_app: Any, recorder: Recorder) -> Any:
    app = guarded_app(make_app(), on_decision=recorder, rules=[Rule("/legacy", delegation="refused")])
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def once(idp: DevIdP, *scopes: str, by: str = "orders-api", **options: Any) -> str:
    """A token of alice's, exchanged once: ``by`` acts for her."""
    return idp.exchange_token(idp.issue_token(list(scopes) or ["read"]), client_id=by, **options).access_token


def twice(idp: DevIdP, first: str = "orders-api", then: str = "dev-client") -> str:
    """Exchanged twice: ``then`` is the current actor, ``first`` the prior one."""
    return idp.exchange_token(once(idp, by=first), client_id=then).access_token


def assert_refused(response: Any, recorder: Recorder, status: int, error: str, reason: str) -> None:
    assert response.status_code == status, response.text
    assert f'error="{error}"' in response.headers["www-authenticate"]
    assert recorder.last.reason == reason
    assert recorder.last.status == status


# -- the act chain on request.auth -----------------------------------------------------------------------


def test_one_level_of_delegation_shows_the_actor_and_keeps_the_subject(client: Any, idp: DevIdP) -> None:
    body = client.get("/whoami", headers=bearer(once(idp))).json()
    assert body == {
        "user": "alice",
        "actor": "orders-api",
        "chain": ["orders-api"],
        "actor_claims": {"sub": "orders-api"},
    }


def test_two_levels_of_delegation_list_the_current_actor_first(client: Any, idp: DevIdP) -> None:
    body = client.get("/whoami", headers=bearer(twice(idp))).json()
    assert body["user"] == "alice"
    assert body["actor"] == "dev-client"
    assert body["chain"] == ["dev-client", "orders-api"]
    assert body["actor_claims"] == {"sub": "dev-client"}  # the nested act is the next actor, not a claim


def test_a_token_that_is_not_delegated_has_no_actor(client: Any, idp: DevIdP) -> None:
    body = client.get("/whoami", headers=bearer(idp.issue_token(["read"]))).json()
    assert body == {"user": "alice", "actor": None, "chain": [], "actor_claims": None}


def test_actor_members_are_read(client: Any, idp: DevIdP) -> None:
    token = idp.issue_token(act={"sub": "svc-7", "iss": "https://other.example", "client_id": "batch", "amr": ["mtls"]})
    body = client.get("/whoami", headers=bearer(token)).json()
    assert body["actor_claims"] == {
        "sub": "svc-7",
        "iss": "https://other.example",
        "client_id": "batch",
        "amr": ["mtls"],
    }
    actor = actors_of({"act": {"sub": "svc-7", "iss": "https://other.example", "client_id": "batch"}})[0]
    assert (actor.sub, actor.iss, actor.client_id) == ("svc-7", "https://other.example", "batch")


def test_opaque_delegated_tokens_are_read_from_the_introspection_answer(client: Any, idp: DevIdP) -> None:
    """RFC 8693 §4.1 allows act in an RFC 7662 answer: the guard reads it there as from a JWT."""
    first = idp.exchange_token(idp.issue_token(["read"]), client_id="orders-api")
    token = idp.exchange_token(first.access_token, client_id="dev-client", resource=OPAQUE).access_token
    assert "." not in token
    app = make_app()
    with TestClient(_guard(app, idp, audience=OPAQUE)) as opaque_client:
        body = opaque_client.get("/whoami", headers=bearer(token)).json()
        assert body["chain"] == ["dev-client", "orders-api"]
        assert body["user"] == "alice"
        assert opaque_client.get("/password", headers=bearer(token)).status_code == 403
        assert opaque_client.get("/delegated", headers=bearer(token)).status_code == 200


def test_a_sensitive_route_reads_act_from_the_introspection_answer_of_a_jwt(client: Any, idp: DevIdP) -> None:
    ok = client.get("/sensitive-orders", headers=bearer(once(idp)))
    assert ok.json() == {"by": "orders-api", "source": "introspection"}
    assert client.get("/sensitive-orders", headers=bearer(twice(idp))).status_code == 403


def _guard(app: Starlette, idp: DevIdP, **options: Any) -> Starlette:
    from tokenguard import TokenGuard
    from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET

    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        http_client=idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=idp.clock,
        **{"audience": idp.default_audience, **options},
    )
    return app


def test_the_act_claim_is_parsed_once_per_token(client: Any, idp: DevIdP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed at validation: the verified cache hands the same token (and chain) to later requests."""
    calls: list[object] = []
    real = tokenguard.models.actors_of

    def counting(claims: Any) -> tuple[Actor, ...]:
        calls.append(claims.get("act"))
        return real(claims)

    monkeypatch.setattr(tokenguard.models, "actors_of", counting)
    token = once(idp)
    for _ in range(3):
        assert client.get("/whoami", headers=bearer(token)).json()["actor"] == "orders-api"
    assert len(calls) == 1
    plain = idp.issue_token(["read"])
    client.get("/whoami", headers=bearer(plain))
    assert len(calls) == 1  # a token without act costs no parse at all


# -- @require_delegation, @refuse_delegation -------------------------------------------------------------


def test_require_delegation_takes_delegated_tokens_only(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    assert client.get("/delegated", headers=bearer(once(idp))).json() == {"for": "alice", "by": "orders-api"}
    refused = client.get("/delegated", headers=bearer(idp.issue_token(["read"])))
    assert_refused(refused, recorder, 403, "insufficient_scope", "delegation_required")
    assert refused.json()["error"] == "insufficient_scope"


def test_the_actor_allow_list_looks_at_the_current_actor_only(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    assert client.get("/orders", headers=bearer(once(idp))).json() == {"by": "orders-api"}
    # orders-api acted first, but dev-client acts now: the prior actor does not count (RFC 8693 §4.1).
    refused = client.get("/orders", headers=bearer(twice(idp, first="orders-api", then="dev-client")))
    assert_refused(refused, recorder, 403, "insufficient_scope", "actor_not_allowed")
    # The other way round: orders-api is the current actor.
    assert client.get("/orders", headers=bearer(twice(idp, first="dev-client", then="orders-api"))).status_code == 200
    assert_refused(
        client.get("/orders", headers=bearer(idp.issue_token(["read"]))),
        recorder,
        403,
        "insufficient_scope",
        "delegation_required",
    )


def test_the_allow_list_matches_the_actor_client_id_too(client: Any, idp: DevIdP) -> None:
    by_client_id = idp.issue_token(act={"sub": "service-account-42", "client_id": "orders-api"})
    assert client.get("/orders", headers=bearer(by_client_id)).status_code == 200
    other = idp.issue_token(act={"sub": "service-account-42", "client_id": "billing"})
    assert client.get("/orders", headers=bearer(other)).status_code == 403


def test_refuse_delegation_takes_the_users_own_tokens_only(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    assert client.post("/password", headers=bearer(idp.issue_token(["read"]))).json() == {"user": "alice"}
    refused = client.post("/password", headers=bearer(once(idp)))
    assert_refused(refused, recorder, 403, "insufficient_scope", "delegation_refused")
    assert "scope=" not in refused.headers["www-authenticate"]  # no scope would help
    assert recorder.last.outcome == "deny"


def test_refusal_comes_after_full_validation(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    """A forged or expired delegated token is 401 invalid_token, never the route's 403."""
    other = DevIdP(idp.issuer, keys=KeyRing.generate(), clock=idp.clock)  # same issuer name, other keys
    other.register_client(*ORDERS)
    forged = other.exchange_token(other.issue_token(["read"]), client_id="orders-api").access_token
    refused = client.post("/password", headers=bearer(forged))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    expiring = idp.exchange_token(idp.issue_token(["read"], expires_in=60), client_id="orders-api").access_token
    idp.clock.advance(400)  # type: ignore[attr-defined]
    assert_refused(client.get("/delegated", headers=bearer(expiring)), recorder, 401, "invalid_token", "expired")


def test_delegation_is_decided_before_scopes(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    """A delegated token lacking the scope hears that delegation is refused: no scope would change that."""
    assert_refused(
        client.get("/scoped", headers=bearer(once(idp, "read"))),
        recorder,
        403,
        "insufficient_scope",
        "delegation_refused",
    )
    assert_refused(
        client.get("/scoped", headers=bearer(idp.issue_token(["read"]))),
        recorder,
        403,
        "insufficient_scope",
        "insufficient_scope",
    )
    assert client.get("/scoped", headers=bearer(idp.issue_token(["write"]))).status_code == 200


def test_a_rule_refuses_delegation_on_what_cannot_be_decorated(client: Any, idp: DevIdP, recorder: Recorder) -> None:
    assert client.get("/legacy/report", headers=bearer(idp.issue_token(["read"]))).json() == {"user": "alice"}
    assert_refused(
        client.get("/legacy/report", headers=bearer(once(idp))),
        recorder,
        403,
        "insufficient_scope",
        "delegation_refused",
    )


# -- malformed act ----------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"actor-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"actor-{level}", "act": act}
    return act


MALFORMED = [
    "orders-api",
    None,
    [],
    42,
    {},
    {"sub": ""},
    {"sub": 7},
    {"sub": ["a"]},
    {"client_id": "orders-api"},
    {"sub": "a", "iss": 5},
    {"sub": "a", "iss": None},
    {"sub": "a", "client_id": ""},
    {"sub": "a", "client_id": {"id": "x"}},
    {"sub": "a", "act": "b"},
    {"sub": "a", "act": {"sub": None}},
    {"sub": "a", "act": None},
    nested(MAX_ACT_DEPTH + 1),
]


@pytest.mark.parametrize("act", MALFORMED, ids=lambda act: json.dumps(act)[:40])
def test_a_malformed_act_refuses_the_token_everywhere(client: Any, idp: DevIdP, recorder: Recorder, act: Any) -> None:
    """401 invalid_token (reason bad_act) even on a route with no delegation policy."""
    token = idp.issue_token(["read"], act=act)
    assert_refused(client.get("/whoami", headers=bearer(token)), recorder, 401, "invalid_token", "bad_act")


def test_a_malformed_act_in_an_introspection_answer_is_refused(idp: DevIdP, recorder: Recorder) -> None:
    token = idp.issue_token(["read"], audience=OPAQUE, token_format="opaque", act={"sub": 1})
    with TestClient(_guard(make_app(), idp, audience=OPAQUE, on_decision=recorder)) as opaque_client:
        refused = opaque_client.get("/whoami", headers=bearer(token))
    assert_refused(refused, recorder, 401, "invalid_token", "bad_act")


def test_the_deepest_accepted_chain_reaches_the_endpoint(client: Any, idp: DevIdP) -> None:
    body = client.get("/whoami", headers=bearer(idp.issue_token(act=nested(MAX_ACT_DEPTH)))).json()
    assert body["chain"] == [f"actor-{level}" for level in range(1, MAX_ACT_DEPTH + 1)]


@settings(max_examples=60, deadline=None)
@given(
    subs=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=MAX_ACT_DEPTH + 4),
    extra=st.dictionaries(st.sampled_from(["amr", "name", "x"]), st.integers() | st.text(max_size=4), max_size=2),
)
def test_any_chain_up_to_the_bound_round_trips_and_deeper_is_refused(subs: list[str], extra: dict[str, Any]) -> None:
    act: dict[str, Any] | None = None
    for sub in reversed(subs):
        level: dict[str, Any] = {"sub": sub, **extra}
        if act is not None:
            level["act"] = act
        act = level
    claims = {"sub": "alice", "act": act}
    if len(subs) > MAX_ACT_DEPTH:
        with pytest.raises(InvalidToken) as refused:
            actors_of(claims)
        assert refused.value.reason == "bad_act"
        return
    token = AccessToken(
        subject="alice", client_id="c", scopes=frozenset(), claims=claims, expires_at=None, source="jwt"
    )
    assert [actor.sub for actor in token.actors] == subs
    assert token.actor is not None
    assert token.actor.sub == subs[0]
    assert all(dict(actor.claims) == {"sub": actor.sub, **extra} for actor in token.actors)
    assert TokenCredentials(token).actors == token.actors


def test_a_token_without_act_has_no_actors() -> None:
    token = AccessToken(subject="alice", client_id="c", scopes=frozenset(), claims={}, expires_at=None, source="jwt")
    assert token.actors == ()
    assert token.actor is None
    with pytest.raises(InvalidToken):
        AccessToken(subject="a", client_id="c", scopes=frozenset(), claims={"act": "x"}, expires_at=None, source="jwt")


# -- marks: merging and contradictions --------------------------------------------------------------------


def test_marks_merge() -> None:
    @require_scopes("read")
    @require_delegation(actors=["a", "b"])
    @require_delegation(actors=["b", "c"])
    async def both(request: Request) -> None: ...

    mark = requirement_of(both)
    assert mark is not None
    assert mark.delegation == "required"
    assert mark.actors == frozenset({"b"})  # only the actors both lists accept
    assert mark.all_scopes == frozenset({"read"})

    @require_delegation
    @require_delegation(actors="a")
    async def narrowed(request: Request) -> None: ...

    assert requirement_of(narrowed) == Requirement(delegation="required", actors=frozenset({"a"}))

    @refuse_delegation
    @require_auth_level(max_age=60)
    @refuse_delegation
    async def refused_twice(request: Request) -> None: ...

    assert requirement_of(refused_twice) == Requirement(delegation="refused", max_age=60)


def test_contradictions_are_refused_at_decoration_time() -> None:
    async def endpoint(request: Request) -> None: ...

    with pytest.raises(ConfigurationError, match="cannot be combined"):
        refuse_delegation(require_delegation(endpoint))
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        require_delegation(actors="a")(refuse_delegation(endpoint_copy()))
    with pytest.raises(ConfigurationError, match="no actor in common"):
        require_delegation(actors="a")(require_delegation(actors="b")(endpoint_copy()))
    with pytest.raises(ConfigurationError, match="@public"):
        public(require_delegation(endpoint_copy()))
    with pytest.raises(ConfigurationError, match="@public"):
        refuse_delegation(public(endpoint_copy()))
    with pytest.raises(ConfigurationError, match="names no actor"):
        require_delegation(actors=[])
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        require_delegation(actors=["ok", ""])
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        require_delegation(actors=[7])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="by keyword"):
        require_delegation("orders-api")  # type: ignore[call-overload]


def endpoint_copy() -> Any:
    async def endpoint(request: Request) -> None: ...

    return endpoint


def test_rule_takes_delegation() -> None:
    assert Rule("/a", delegation="required").requirement == Requirement(delegation="required")
    assert Rule("/a", actors="svc").requirement == Requirement(delegation="required", actors=frozenset({"svc"}))
    assert Rule("/a", delegation="refused", scopes="read").requirement == Requirement(
        delegation="refused", all_scopes=frozenset({"read"})
    )
    with pytest.raises(ConfigurationError, match="delegation must be"):
        Rule("/a", delegation="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot be combined with delegation='refused'"):
        Rule("/a", delegation="refused", actors="svc")
    with pytest.raises(ConfigurationError, match="@public"):
        Rule("/a", public=True, delegation="refused")


# -- MCP per-tool policy -----------------------------------------------------------------------------------


def test_tool_policy_takes_delegation() -> None:
    policy = ToolPolicy(scopes="pay", actors=["orders-api"])
    assert policy.delegation == "required"
    assert policy.actors == frozenset({"orders-api"})
    assert policy.requirement == Requirement(
        all_scopes=frozenset({"pay"}), delegation="required", actors=frozenset({"orders-api"})
    )
    assert ToolPolicy(delegation="refused").requirement.delegation == "refused"
    with pytest.raises(ConfigurationError):
        ToolPolicy(delegation="refused", actors="x")


def test_mcp_tools_are_filtered_and_refused_by_delegation(idp: DevIdP) -> None:
    """A real MCP server: a tool that refuses delegation, one that needs it, one that does not care."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("delegation")

    @server.tool()
    def close_account() -> str:
        return "closed"

    @server.tool()
    def place_order() -> str:
        return "placed"

    @server.tool()
    def balance() -> str:
        return "100"

    policy = MCPPolicy(
        tools={
            "close_account": ToolPolicy(delegation="refused"),
            "place_order": ToolPolicy(actors="orders-api"),
        },
        filter_tools_list=True,
    )
    app = _guard(server.streamable_http_app(stateless_http=True, json_response=True), idp, mcp=policy)
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

    def call(token: str, name: str) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}
        return mcp_client.post("/mcp", content=json.dumps(body), headers={**headers, **bearer(token)})

    def listed(token: str) -> set[str]:
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        answer = mcp_client.post("/mcp", content=json.dumps(body), headers={**headers, **bearer(token)})
        return {tool["name"] for tool in answer.json()["result"]["tools"]}

    user, delegated_token_ = idp.issue_token(["read"]), once(idp)
    with TestClient(app, base_url="http://127.0.0.1:8000") as mcp_client:
        assert call(user, "close_account").status_code == 200
        refused = call(delegated_token_, "close_account")
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        assert call(delegated_token_, "place_order").status_code == 200
        assert call(user, "place_order").status_code == 403
        assert call(twice(idp), "place_order").status_code == 403  # dev-client acts now
        assert call(delegated_token_, "balance").status_code == 200
        assert listed(user) == {"close_account", "balance"}
        assert listed(delegated_token_) == {"place_order", "balance"}


# -- FastAPI ----------------------------------------------------------------------------------------------


#: A dependency made once: ``Depends(ORDERS_ACTOR)`` in a signature would build one per call.
ORDERS_ACTOR = require_actor("orders-api")


def make_fastapi() -> FastAPI:
    app = FastAPI()

    @app.get("/orders")
    @require_delegation(actors=["orders-api"])
    async def orders(request: Request) -> dict[str, Any]:
        return {"by": _auth(request).actor.sub}  # type: ignore[union-attr]

    @app.post("/password")
    @refuse_delegation
    async def password() -> dict[str, bool]:
        return {"changed": True}

    @app.get("/dep/delegated")
    async def dep_delegated(token: AccessToken = Depends(delegated_token)) -> dict[str, Any]:
        return {"sub": token.subject, "actor": token.actor.sub if token.actor else None}

    @app.get("/dep/direct")
    async def dep_direct(token: AccessToken = Depends(direct_token)) -> dict[str, Any]:
        return {"sub": token.subject}

    @app.get("/dep/orders")
    async def dep_orders(token: AccessToken = Depends(ORDERS_ACTOR)) -> dict[str, Any]:
        return {"actors": [actor.sub for actor in token.actors]}

    return app


def test_fastapi_marks_and_dependencies(idp: DevIdP, guarded_app: Any, recorder: Recorder) -> None:
    app = guarded_app(make_fastapi(), on_decision=recorder)
    user, by_orders, by_two = idp.issue_token(["read"]), once(idp), twice(idp)
    with TestClient(app) as fastapi_client:
        assert fastapi_client.get("/orders", headers=bearer(by_orders)).json() == {"by": "orders-api"}
        assert_refused(
            fastapi_client.get("/orders", headers=bearer(by_two)),
            recorder,
            403,
            "insufficient_scope",
            "actor_not_allowed",
        )
        assert fastapi_client.post("/password", headers=bearer(user)).json() == {"changed": True}
        assert fastapi_client.post("/password", headers=bearer(by_orders)).status_code == 403

        assert fastapi_client.get("/dep/delegated", headers=bearer(by_orders)).json() == {
            "sub": "alice",
            "actor": "orders-api",
        }
        assert_refused(
            fastapi_client.get("/dep/delegated", headers=bearer(user)),
            recorder,
            403,
            "insufficient_scope",
            "delegation_required",
        )
        assert fastapi_client.get("/dep/direct", headers=bearer(user)).json() == {"sub": "alice"}
        assert_refused(
            fastapi_client.get("/dep/direct", headers=bearer(by_orders)),
            recorder,
            403,
            "insufficient_scope",
            "delegation_refused",
        )
        assert fastapi_client.get("/dep/orders", headers=bearer(by_orders)).json() == {"actors": ["orders-api"]}
        assert fastapi_client.get("/dep/orders", headers=bearer(by_two)).status_code == 403
        assert fastapi_client.get("/dep/orders", headers=bearer(user)).status_code == 403
    with pytest.raises(ConfigurationError):
        require_actor()


def test_the_openapi_document_says_the_delegation_policy(idp: DevIdP, guarded_app: Any) -> None:
    app = make_fastapi()
    install_openapi(app, client_id="docs", authorization_url=f"{idp.issuer}/authorize", token_url=f"{idp.issuer}/token")
    app = guarded_app(app)
    with TestClient(app) as docs_client:
        document = docs_client.get("/openapi.json", headers=bearer(idp.issue_token(["read"]))).json()
    orders = document["paths"]["/orders"]["get"]
    assert (
        orders["x-tokenguard-delegation"]
        == "Only a delegated token (RFC 8693 act) whose current actor is one of: orders-api."
    )
    assert "orders-api" in orders["responses"]["403"]["description"]
    password = document["paths"]["/password"]["post"]
    assert "refused" in password["x-tokenguard-delegation"]
    assert "403" in password["responses"]
    assert "x-tokenguard-delegation" not in document["paths"]["/dep/direct"]["get"]


# -- README's example ---------------------------------------------------------------------------------------


def test_the_readme_example(readme_idp: DevIdP) -> None:
    """README's delegation block, against README's issuer: one and two levels, the allow-list, the refusal."""
    from test_readme import block_under, run

    app = run(block_under("Delegation: token exchange and `act` (RFC 8693)"))["app"]
    readme_idp.register_client(*ORDERS, audience="https://photos.example")
    readme_idp.register_client("billing", "billing-secret", audience="https://photos.example")
    user = readme_idp.issue_token(["read"], audience="https://photos.example")
    by_orders = readme_idp.exchange_token(user, client_id="orders-api").access_token
    by_billing = readme_idp.exchange_token(by_orders, client_id="billing").access_token
    with TestClient(app) as readme_client:
        placed = readme_client.post("/orders", headers=bearer(by_orders))
        assert placed.json() == {"for": "alice", "by": "orders-api", "chain": ["orders-api"]}
        assert readme_client.post("/orders", headers=bearer(by_billing)).status_code == 403  # billing acts now
        assert readme_client.post("/orders", headers=bearer(user)).status_code == 403
        assert readme_client.post("/password", headers=bearer(user)).json() == {"changed": "alice"}
        assert readme_client.post("/password", headers=bearer(by_orders)).status_code == 403
        assert readme_client.get("/admin/x", headers=bearer(by_orders)).status_code == 403  # the rule
        assert readme_client.get("/admin/x", headers=bearer(user)).status_code == 404  # allowed; no such route


@pytest.fixture
def readme_idp(keys: KeyRing, monkeypatch: pytest.MonkeyPatch) -> Any:
    """README's issuer (https://idp.example.com), as tests/test_readme.py serves it."""
    from test_readme import idp as readme_idp_fixture

    yield from readme_idp_fixture.__wrapped__(keys, monkeypatch)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing.generate()
