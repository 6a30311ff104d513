"""Per-tool policy for MCP servers (``tokenguard.mcp.MCPPolicy``), in front of the real MCP SDK server.

Every test drives the official ``mcp`` SDK's Streamable HTTP app (``MCPServer.streamable_http_app``)
behind ``TokenGuard`` with real tokens and a real JWKS (respx). The property test at the end checks
that, whatever the call and the token's scopes, the guard lets a call reach the server exactly when
the token holds everything the policy of that call names.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer
from tokenguard import Rule, TokenGuard
from tokenguard._mcp import ToolsListFilter, filtering_send
from tokenguard.dpop import DPoPKey
from tokenguard.errors import ConfigurationError
from tokenguard.mcp import MCPPolicy, ToolPolicy
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

RESOURCE = AUDIENCE + "/mcp"
#: The SDK checks the Host header (DNS rebinding protection): a loopback host, as a local server sees.
BASE = "http://127.0.0.1:8000"
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-11-25",
}
CALLS: list[str] = []

POLICY = MCPPolicy(
    tools={
        "get_balance": ToolPolicy(scopes="accounts:read"),
        "transfer": ToolPolicy(scopes=["accounts:read", "payments:write"]),
        "close_account": ToolPolicy(scopes="accounts:admin", sensitive=True),
        "statement": ToolPolicy(any_scopes=["accounts:read", "statements:read"]),
    },
    methods={"resources/read": ToolPolicy(scopes="files:read")},
    default=ToolPolicy(scopes="tools:other"),
)


def make_server() -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def get_balance(account: str) -> str:
        CALLS.append("get_balance")
        return f"{account}: 100"

    @server.tool()
    def transfer(to: str, amount: int) -> str:
        CALLS.append("transfer")
        return f"sent {amount} to {to}"

    @server.tool()
    def close_account(account: str) -> str:
        CALLS.append("close_account")
        return f"closed {account}"

    @server.tool()
    def statement(account: str) -> str:
        CALLS.append("statement")
        return f"statement of {account}"

    @server.tool()
    def unlisted() -> str:
        CALLS.append("unlisted")
        return "unlisted"

    return server


def make_app(
    clock: ManualClock, policy: MCPPolicy | None = POLICY, *, json_response: bool = False, **options: Any
) -> Any:
    app = make_server().streamable_http_app(stateless_http=True, json_response=json_response)
    options.setdefault("client_id", "mcp-server")
    options.setdefault("client_secret", "secret")
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy, **options)
    return app


@pytest.fixture
def client(clock: ManualClock) -> Any:
    CALLS.clear()
    with TestClient(make_app(clock), base_url=BASE) as test_client:
        yield test_client


def token(idp: Issuer, scope: str, **claims: Any) -> str:
    return idp.token(aud=RESOURCE, scope=scope, **claims)


def call(client: Any, access_token: str, name: str, arguments: dict[str, Any] | None = None) -> Any:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments or {}}}
    return post(client, access_token, body)


def post(client: Any, access_token: str, body: Any) -> Any:
    headers = {**HEADERS, "authorization": f"Bearer {access_token}"}
    return client.post("/mcp", content=json.dumps(body).encode(), headers=headers)


def result_of(response: Any) -> dict[str, Any]:
    """The JSON-RPC message of an SSE or JSON answer."""
    if response.headers["content-type"].startswith("application/json"):
        return response.json()  # type: ignore[no-any-return]
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    assert len(data) == 1, response.text
    return json.loads(data[0])  # type: ignore[no-any-return]


def challenge(response: Any) -> str:
    return response.headers["www-authenticate"]  # type: ignore[no-any-return]


# -- per-tool scopes ------------------------------------------------------------------------------------


def test_a_tool_with_its_scope_runs(client: Any, idp: Issuer) -> None:
    response = call(client, token(idp, "accounts:read"), "get_balance", {"account": "a1"})
    assert response.status_code == 200
    assert result_of(response)["result"]["content"][0]["text"] == "a1: 100"
    assert CALLS == ["get_balance"]


def test_a_tool_without_its_scope_is_403_listing_everything_the_call_needs(client: Any, idp: Issuer) -> None:
    """MCP 2025-11-25 scope challenge: 403 insufficient_scope, every scope of the call, resource_metadata."""
    response = call(client, token(idp, "accounts:read"), "transfer", {"to": "bob", "amount": 5})
    assert response.status_code == 403
    header = challenge(response)
    assert 'error="insufficient_scope"' in header
    assert 'scope="accounts:read payments:write"' in header
    assert 'resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/mcp"' in header
    assert CALLS == []


def test_the_same_token_passes_one_tool_and_not_another(client: Any, idp: Issuer) -> None:
    """Route-level scopes cannot tell the two calls apart: one POST, one endpoint."""
    access = token(idp, "accounts:read")
    assert call(client, access, "get_balance", {"account": "a"}).status_code == 200
    assert call(client, access, "transfer", {"to": "b", "amount": 1}).status_code == 403
    assert CALLS == ["get_balance"]


def test_any_of_scopes(client: Any, idp: Issuer) -> None:
    assert call(client, token(idp, "statements:read"), "statement", {"account": "a"}).status_code == 200
    refused = call(client, token(idp, "payments:write"), "statement", {"account": "a"})
    assert refused.status_code == 403
    assert 'scope="accounts:read statements:read"' in challenge(refused)


def test_unknown_tools_fall_to_the_default(client: Any, idp: Issuer) -> None:
    refused = call(client, token(idp, "accounts:read"), "unlisted")
    assert refused.status_code == 403
    assert 'scope="tools:other"' in challenge(refused)
    assert call(client, token(idp, "tools:other"), "unlisted").status_code == 200
    # A name the server does not know gets the default too, and then the server's own answer.
    assert call(client, token(idp, "accounts:read"), "no_such_tool").status_code == 403
    assert CALLS == ["unlisted"]


def test_methods_not_listed_need_only_a_valid_token(client: Any, idp: Issuer) -> None:
    access = token(idp, "")
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    assert post(client, access, init).status_code == 200
    listed = post(client, access, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert listed.status_code == 200
    assert len(result_of(listed)["result"]["tools"]) == 5  # not filtered by default
    assert post(client, access, {"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202


def test_a_method_policy(client: Any, idp: Issuer) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "file:///x"}}
    refused = post(client, token(idp, "accounts:read"), body)
    assert refused.status_code == 403
    assert 'scope="files:read"' in challenge(refused)
    assert post(client, token(idp, "files:read"), body).status_code == 200  # the server answers (an error)


def test_a_tools_call_method_policy_applies_to_every_tool(clock: ManualClock, idp: Issuer) -> None:
    policy = MCPPolicy(
        tools={"get_balance": ToolPolicy(scopes="accounts:read")},
        methods={"tools/call": ToolPolicy(scopes="mcp:tools")},
    )
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        refused = call(client, token(idp, "accounts:read"), "get_balance", {"account": "a"})
        assert refused.status_code == 403
        assert 'scope="accounts:read mcp:tools"' in challenge(refused)
        assert call(client, token(idp, "accounts:read mcp:tools"), "get_balance", {"account": "a"}).status_code == 200


def test_a_batch_needs_what_all_its_calls_need(client: Any, idp: Issuer) -> None:
    """JSON-RPC 2.0 §6 batches (MCP 2025-03-26): the merged policy of every element."""
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_balance", "arguments": {"account": "a"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}},
        },
    ]
    refused = post(client, token(idp, "accounts:read"), batch)
    assert refused.status_code == 403
    assert 'scope="accounts:read payments:write"' in challenge(refused)
    assert CALLS == []


# -- what is refused as unreadable: never let through under a weaker policy -------------------------------


@pytest.mark.parametrize(
    "body",
    [
        # Duplicate member names: another parser could read "transfer".
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_balance","name":"transfer"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list","params":{"name":"transfer"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer"}} trailing',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',  # a lone surrogate
        b'{"jsonrpc":"2.0","id":NaN,"method":"tools/call","params":{"name":"get_balance"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":17}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["transfer"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":1,"method":["tools/call"],"params":{"name":"transfer"}}',
        b"\xff\xfe{}",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_balance"',
    ],
)
def test_bodies_that_could_be_read_two_ways_are_400(client: Any, idp: Issuer, body: bytes) -> None:
    headers = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read')}"}
    response = client.post("/mcp", content=body, headers=headers)
    assert response.status_code == 400
    assert 'error="invalid_request"' in challenge(response)
    assert CALLS == []


def test_a_body_over_the_cap_is_400_before_the_server_sees_it(clock: ManualClock, idp: Issuer) -> None:
    CALLS.clear()
    with TestClient(make_app(clock, max_body_bytes=1024), base_url=BASE) as client:
        response = call(client, token(idp, "accounts:read"), "get_balance", {"account": "a" * 2000})
        assert response.status_code == 400
        assert call(client, token(idp, "accounts:read"), "get_balance", {"account": "a"}).status_code == 200
    assert CALLS == ["get_balance"]


def test_no_token_is_401_before_the_body_is_read(client: Any) -> None:
    response = client.post("/mcp", content=b"not json at all", headers=HEADERS)
    assert response.status_code == 401
    assert 'resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/mcp"' in challenge(response)


def test_a_token_for_another_resource_is_401(client: Any, idp: Issuer) -> None:
    """RFC 8707 / MCP: tokens minted for this server only, no passthrough of another audience's token."""
    response = call(client, idp.token(aud="https://other.example.com/mcp", scope="accounts:read"), "get_balance")
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


def test_the_canonical_uri_spelling_of_the_audience_is_accepted(client: Any, idp: Issuer) -> None:
    """MCP canonical server URI: scheme and host are case-insensitive, the default port implied."""
    access = idp.token(aud="HTTPS://API.Example.com:443/mcp", scope="accounts:read")
    assert call(client, access, "get_balance", {"account": "a"}).status_code == 200
    other_path = idp.token(aud="https://api.example.com/MCP", scope="accounts:read")
    assert call(client, other_path, "get_balance", {"account": "a"}).status_code == 401


# -- sensitive tools: introspection ------------------------------------------------------------------------


def test_a_sensitive_tool_is_introspected_and_a_revoked_token_refused(
    client: Any, idp: Issuer, respx_mock: respx.MockRouter
) -> None:
    active = {"value": True}
    asked: list[bytes] = []

    def introspect(request: httpx.Request) -> httpx.Response:
        asked.append(request.content)
        if not active["value"]:
            return httpx.Response(200, json={"active": False})
        return httpx.Response(
            200,
            json={
                "active": True,
                "iss": ISSUER,
                "aud": RESOURCE,
                "sub": "alice",
                "client_id": "photos-app",
                "scope": "accounts:admin",
                "exp": int(idp.clock()) + 300,
            },
        )

    respx_mock.post(INTROSPECTION_URL).mock(side_effect=introspect)
    admin = token(idp, "accounts:admin")
    assert call(client, admin, "close_account", {"account": "a"}).status_code == 200
    assert len(asked) == 1
    # An ordinary tool is validated locally: no introspection.
    other = token(idp, "accounts:admin accounts:read")
    assert call(client, other, "get_balance", {"account": "a"}).status_code == 200
    assert len(asked) == 1
    active["value"] = False  # the issuer revokes it
    revoked = token(idp, "accounts:admin")
    response = call(client, revoked, "close_account", {"account": "a"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)
    # The 401 names what the call needs, so a client authorizing again asks for enough at once.
    assert 'scope="accounts:admin"' in challenge(response)
    assert CALLS == ["close_account", "get_balance"]


# -- step-up and sender constraint --------------------------------------------------------------------------


def test_a_step_up_tool(clock: ManualClock, idp: Issuer) -> None:
    policy = MCPPolicy(tools={"transfer": ToolPolicy(acr_values="urn:mfa", scopes="payments:write")})
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        weak = call(client, token(idp, "payments:write", acr="urn:pwd"), "transfer", {"to": "b", "amount": 1})
        assert weak.status_code == 401
        assert 'error="insufficient_user_authentication"' in challenge(weak)
        assert 'acr_values="urn:mfa"' in challenge(weak)
        strong = token(idp, "payments:write", acr="urn:mfa")
        assert call(client, strong, "transfer", {"to": "b", "amount": 1}).status_code == 200


def test_a_sender_constrained_tool_refuses_a_bearer_token(clock: ManualClock, idp: Issuer) -> None:
    policy = MCPPolicy(tools={"transfer": ToolPolicy(sender_constrained=True)})
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        response = call(client, token(idp, "payments:write"), "transfer", {"to": "b", "amount": 1})
        assert response.status_code == 401
        assert call(client, token(idp, "payments:write"), "get_balance", {"account": "a"}).status_code == 200


def test_a_sender_constrained_tool_accepts_a_dpop_bound_token_with_its_proof(clock: ManualClock, idp: Issuer) -> None:
    """RFC 9449: the tool runs for the key's holder only; the same token without a proof is refused."""
    key = DPoPKey.generate("ES256")
    bound = token(idp, "payments:write", cnf={"jkt": key.thumbprint})
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}},
        }
    ).encode()
    policy = MCPPolicy(tools={"transfer": ToolPolicy(sender_constrained=True)})
    CALLS.clear()
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        proof = key.proof("POST", BASE + "/mcp", access_token=bound, iat=int(clock()))
        headers = {**HEADERS, "authorization": f"DPoP {bound}", "dpop": proof}
        assert client.post("/mcp", content=body, headers=headers).status_code == 200
        without = {**HEADERS, "authorization": f"DPoP {bound}"}
        assert client.post("/mcp", content=body, headers=without).status_code == 401
    assert CALLS == ["transfer"]


# -- tools/list filtering --------------------------------------------------------------------------------------


@pytest.mark.parametrize("json_response", [False, True])
def test_tools_list_filtered_to_what_the_token_may_call(clock: ManualClock, idp: Issuer, json_response: bool) -> None:
    policy = MCPPolicy(tools=dict(POLICY_TOOLS), default=ToolPolicy(scopes="tools:other"), filter_tools_list=True)
    with TestClient(make_app(clock, policy, json_response=json_response), base_url=BASE) as client:
        listed = post(client, token(idp, "accounts:read"), {"jsonrpc": "2.0", "id": "l1", "method": "tools/list"})
        assert listed.status_code == 200
        names = sorted(tool["name"] for tool in result_of(listed)["result"]["tools"])
        assert names == ["get_balance", "statement"]
        if json_response:
            assert int(listed.headers["content-length"]) == len(listed.content)
        everything = token(idp, "accounts:read payments:write accounts:admin tools:other")
        listed = post(client, everything, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
        assert len(result_of(listed)["result"]["tools"]) == 5


POLICY_TOOLS = {
    "get_balance": ToolPolicy(scopes="accounts:read"),
    "transfer": ToolPolicy(scopes=["accounts:read", "payments:write"]),
    "close_account": ToolPolicy(scopes="accounts:admin", sensitive=True),
    "statement": ToolPolicy(any_scopes=["accounts:read", "statements:read"]),
}


async def _sent_through(chunks: list[bytes], content_type: bytes, keep: set[str], limit: int = 1 << 20) -> list[Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    wrapped = filtering_send(send, ToolsListFilter(5, lambda name: name in keep), limit=limit)
    await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
    for index, chunk in enumerate(chunks):
        await wrapped({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})
    return sent


def _tools_message(request_id: Any, *names: str) -> bytes:
    tools = [{"name": name, "inputSchema": {"type": "object"}} for name in names]
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}}).encode()


@pytest.mark.anyio
@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"])
async def test_the_event_stream_filter_across_chunk_boundaries(ending: bytes) -> None:
    """Events split anywhere, with any of the three line endings; other events pass unchanged."""
    other = b"event: message" + ending + b"data: " + _tools_message(4, "a", "b") + ending + ending
    mine = b"event: message" + ending + b"data: " + _tools_message(5, "a", "b", "c") + ending + ending
    stream = other + mine
    for cut in range(0, len(stream), 7):
        sent = await _sent_through([stream[:cut], stream[cut:]], b"text/event-stream", {"a", "c"})
        body = b"".join(message.get("body", b"") for message in sent[1:])
        assert body.startswith(other)
        rest = body[len(other) :]
        payload = json.loads(rest.split(b"data: ", 1)[1].split(ending)[0])
        assert [tool["name"] for tool in payload["result"]["tools"]] == ["a", "c"]
        assert rest.endswith(ending + ending)


@pytest.mark.anyio
async def test_an_answer_over_the_limit_passes_unchanged() -> None:
    big = _tools_message(5, "a", "b")
    sent = await _sent_through([big[:10], big[10:]], b"application/json", {"a"}, limit=20)
    assert b"".join(message.get("body", b"") for message in sent[1:]) == big


@pytest.mark.anyio
async def test_a_json_answer_gets_its_new_content_length() -> None:
    sent = await _sent_through([_tools_message(5, "a", "b", "c")], b"application/json", {"b"})
    start, body = sent[0], sent[1]["body"]
    assert dict(start["headers"])[b"content-length"] == str(len(body)).encode()
    assert [tool["name"] for tool in json.loads(body)["result"]["tools"]] == ["b"]


# -- metadata and configuration ------------------------------------------------------------------------------


def test_metadata_at_the_path_inserted_url_lists_the_tools_scopes(client: Any) -> None:
    """RFC 9728 §3.1: for a resource at /mcp the well-known string goes between host and path."""
    response = client.get("/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    document = response.json()
    assert document["resource"] == RESOURCE
    assert document["authorization_servers"] == [ISSUER]
    assert {"accounts:read", "payments:write", "accounts:admin", "files:read", "tools:other"} <= set(
        document["scopes_supported"]
    )


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: MCPPolicy(path="mcp"), "path"),
        (lambda: MCPPolicy(tools={"x": "write"}), "tools['x']"),  # type: ignore[dict-item]
        (lambda: MCPPolicy(tools=["x"]), "tools"),  # type: ignore[arg-type]
        (lambda: MCPPolicy(methods={"": ToolPolicy()}), "methods"),
        (lambda: MCPPolicy(default="read"), "default"),  # type: ignore[arg-type]
        (lambda: MCPPolicy(filter_tools_list="yes"), "filter_tools_list"),  # type: ignore[arg-type]
        (lambda: ToolPolicy(scopes="bad scope\x00"), "scope"),
        (lambda: ToolPolicy(max_age=-1), "max_age"),
        (lambda: ToolPolicy(sensitive="yes"), "sensitive"),  # type: ignore[arg-type]
    ],
)
def test_misconfiguration_names_the_option(make: Any, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_the_mcp_option_must_be_a_policy(clock: ManualClock) -> None:
    with pytest.raises(ConfigurationError, match=r"mcp must be a tokenguard\.mcp\.MCPPolicy"):
        TokenGuard(make_server().streamable_http_app(), issuer=ISSUER, audience=RESOURCE, mcp={"tools": {}})


# -- the property: the guard applies exactly the policy of the call ---------------------------------------------

ARGUMENTS = {"get_balance": {"account": "a"}, "transfer": {"to": "b", "amount": 1}, "statement": {"account": "a"}}
SCOPES = ["accounts:read", "payments:write", "accounts:admin", "statements:read", "tools:other", "files:read"]
NAMES = ["get_balance", "transfer", "statement", "unlisted", "no_such_tool"]


def needed(name: str, granted: set[str]) -> bool:
    """The policy, written again independently of the implementation."""
    rules: dict[str, tuple[set[str], set[str]]] = {
        "get_balance": ({"accounts:read"}, set()),
        "transfer": ({"accounts:read", "payments:write"}, set()),
        "statement": (set(), {"accounts:read", "statements:read"}),
    }
    every, anyof = rules.get(name, ({"tools:other"}, set()))
    return every <= granted and (not anyof or bool(anyof & granted))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
    granted=st.sets(st.sampled_from(SCOPES)),
    batch=st.booleans(),
)
def test_a_call_reaches_the_server_exactly_when_the_token_holds_what_it_needs(
    client: Any, idp: Issuer, calls: list[str], granted: set[str], batch: bool
) -> None:
    CALLS.clear()
    access = token(idp, " ".join(sorted(granted)))
    messages = [
        {
            "jsonrpc": "2.0",
            "id": index,
            "method": "tools/call",
            "params": {"name": name, "arguments": ARGUMENTS.get(name, {})},
        }
        for index, name in enumerate(calls)
    ]
    body: Any = messages if batch and len(messages) > 1 else messages[0]
    called = calls if isinstance(body, list) else calls[:1]
    allowed = all(needed(name, granted) for name in called)
    response = post(client, access, body)
    if allowed and isinstance(body, list):
        assert response.status_code not in (401, 403), response.text  # the server answers the batch as it can
    elif allowed:
        assert response.status_code == 200, response.text
        assert ([] if called[0] == "no_such_tool" else called) == CALLS
    else:
        assert response.status_code == 403
        assert CALLS == []


# -- the endpoint's own scopes (MCPPolicy scopes=) ---------------------------------------------------------------


def test_endpoint_scopes_are_needed_by_every_request_and_named_in_401s(clock: ManualClock, idp: Issuer) -> None:
    """MCP 2025-11-25 scope selection: the 401 names what to ask for first; every request needs it."""
    policy = MCPPolicy(scopes="bank:use", tools={"transfer": ToolPolicy(scopes="payments:write")})
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        missing = client.post("/mcp", content=b"{}", headers=HEADERS)
        assert missing.status_code == 401
        assert 'scope="bank:use"' in challenge(missing)
        assert "error=" not in challenge(missing)
        expired = token(idp, "bank:use", exp=int(clock()) - 3600, iat=int(clock()) - 7200)
        bad = call(client, expired, "get_balance")
        assert bad.status_code == 401
        assert 'error="invalid_token"' in challenge(bad)
        assert 'scope="bank:use"' in challenge(bad)
        # initialize too needs the endpoint's scopes, and a GET (the server's event stream) as well.
        without = post(client, token(idp, "payments:write"), {"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert without.status_code == 403
        assert 'scope="bank:use"' in challenge(without)
        stream = client.get("/mcp", headers={"authorization": f"Bearer {token(idp, 'payments:write')}"})
        assert stream.status_code == 403
        refused = call(client, token(idp, "bank:use"), "transfer", {"to": "b", "amount": 1})
        assert refused.status_code == 403
        assert 'scope="bank:use payments:write"' in challenge(refused)
        assert (
            call(client, token(idp, "bank:use payments:write"), "transfer", {"to": "b", "amount": 1}).status_code == 200
        )
        # RFC 9728: the endpoint's own scopes are among those the resource supports.
        metadata = client.get("/.well-known/oauth-protected-resource/mcp").json()
        assert {"bank:use", "payments:write"} <= set(metadata["scopes_supported"])


def test_without_endpoint_scopes_a_401_names_none(client: Any) -> None:
    assert "scope=" not in challenge(client.post("/mcp", content=b"{}", headers=HEADERS))


def test_other_paths_are_not_read_as_json_rpc(clock: ManualClock, idp: Issuer) -> None:
    """Only the MCP endpoint's POSTs are read; another route keeps its own policy and gets its body untouched."""

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await request.body())

    app = Starlette(routes=[Route("/mcp", echo, methods=["POST"]), Route("/upload", echo, methods=["POST"])])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=MCPPolicy(scopes="bank:use"))
    with TestClient(app) as client:
        headers = {"authorization": f"Bearer {token(idp, '')}"}
        upload = client.post("/upload", content=b"not json {", headers=headers)
        assert upload.status_code == 200
        assert upload.content == b"not json {"
        assert "scope=" not in challenge(client.post("/upload", content=b"x"))
        assert client.post("/mcp", content=b"not json {", headers=headers).status_code == 403  # bank:use
        mcp_headers = {"authorization": f"Bearer {token(idp, 'bank:use')}"}
        assert client.post("/mcp", content=b"not json {", headers=mcp_headers).status_code == 400
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        assert client.post("/mcp", content=body, headers=mcp_headers).content == body  # replayed to the app


def test_a_policy_path_that_is_no_route_stops_the_startup(clock: ManualClock) -> None:
    """A policy no request would reach guards nothing: the server must not start with it."""
    with (
        pytest.raises(ConfigurationError, match=r"mcp: MCPPolicy path '/other' is not a route"),
        TestClient(make_app(clock, MCPPolicy(path="/other")), base_url=BASE),
    ):
        pass


@pytest.mark.parametrize(
    ("aud", "status"), [("HTTPS://API.Example.COM:443/mcp", 200), ("https://api.example.com/mcp/", 401)]
)
def test_the_introspection_answers_aud_is_compared_as_a_canonical_uri(
    client: Any, idp: Issuer, respx_mock: respx.MockRouter, aud: str, status: int
) -> None:
    """The audience rule is the same for an introspection answer (RFC 7662 §2.2) as for a JWT."""
    answer = {
        "active": True,
        "iss": ISSUER,
        "aud": aud,
        "sub": "alice",
        "client_id": "photos-app",
        "scope": "accounts:admin",
        "exp": int(idp.clock()) + 300,
    }
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=answer))
    assert call(client, token(idp, "accounts:admin"), "close_account", {"account": "a"}).status_code == status


def test_fastmcp_behind_the_guard_gets_the_same_per_tool_policy(clock: ManualClock, idp: Issuer) -> None:
    """FastMCP's Streamable HTTP app (``http_app``) serves /mcp too: the guard in front works the same."""
    fastmcp = pytest.importorskip("fastmcp")
    server = fastmcp.FastMCP("bank")

    @server.tool
    def transfer(to: str, amount: int) -> str:
        return f"sent {amount} to {to}"

    app = server.http_app(stateless_http=True, json_response=True)
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=RESOURCE,
        clock=clock,
        mcp=MCPPolicy(tools={"transfer": ToolPolicy(scopes="payments:write")}),
    )
    with TestClient(app, base_url=BASE) as client:
        refused = call(client, token(idp, "accounts:read"), "transfer", {"to": "b", "amount": 1})
        assert refused.status_code == 403
        assert 'scope="payments:write"' in challenge(refused)
        allowed = call(client, token(idp, "payments:write"), "transfer", {"to": "b", "amount": 1})
        assert allowed.status_code == 200
        assert "sent 1 to b" in allowed.text
        metadata = client.get("/.well-known/oauth-protected-resource/mcp").json()
        assert metadata["resource"] == RESOURCE


def test_the_merge_memo_gives_what_merge_gives_and_stays_bounded() -> None:
    """Cache invariant (docs/ARCHITECTURE.md): a pure function of two immutable values, at most 256 entries."""
    policy = MCPPolicy(tools={"a": ToolPolicy(scopes="x"), "b": ToolPolicy(scopes="y", sensitive=True)})
    base = ToolPolicy(scopes="base").requirement
    for name in ("a", "b", "unknown"):
        extra = policy.tool_requirement(name)
        assert policy.merged(base, extra) == base.merge(extra)
        assert policy.merged(base, extra) is policy.merged(base, extra)
    for index in range(600):
        endpoint = ToolPolicy(scopes=f"s{index}").requirement
        assert policy.merged(endpoint, policy.tool_requirement("a")).all_scopes == {f"s{index}", "x"}
        assert len(policy._merges) <= 256


# -- review findings: never public, never a 500 -------------------------------------------------------------


@pytest.mark.parametrize("public", ["default", "rule"])
def test_an_mcp_endpoint_with_a_policy_is_never_public(clock: ManualClock, idp: Issuer, public: str) -> None:
    """default="public" (or a public Rule over /mcp) must not switch the tool policies off."""
    options: dict[str, Any] = {"default": "public"} if public == "default" else {"rules": [Rule("/mcp", public=True)]}
    CALLS.clear()
    with TestClient(make_app(clock, **options), base_url=BASE) as client:
        anonymous = client.post("/mcp", content=json.dumps(_transfer_call()).encode(), headers=HEADERS)
        assert anonymous.status_code == 401
        assert call(client, token(idp, "accounts:read"), "transfer", {"to": "b", "amount": 1}).status_code == 403
        allowed = call(client, token(idp, "accounts:read payments:write"), "transfer", {"to": "b", "amount": 1})
        assert allowed.status_code == 200
        # A CORS preflight still needs no token.
        preflight = client.options(
            "/mcp", headers={"origin": "https://app.example", "access-control-request-method": "POST"}
        )
        assert preflight.status_code != 401
    assert CALLS == ["transfer"]


def _transfer_call() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "transfer", "arguments": {}}}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (ToolPolicy(acr_values="urn:gold"), ToolPolicy(acr_values="urn:silver")),
        (ToolPolicy(delegation="required"), ToolPolicy(delegation="refused")),
        (ToolPolicy(actors="x"), ToolPolicy(actors="y")),
    ],
)
def test_a_batch_of_calls_whose_policies_contradict_is_400_never_500(
    clock: ManualClock, idp: Issuer, first: ToolPolicy, second: ToolPolicy
) -> None:
    policy = MCPPolicy(tools={"get_balance": first, "statement": second})
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_balance", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "statement", "arguments": {}}},
    ]
    with TestClient(make_app(clock, policy), base_url=BASE) as client:
        response = post(client, token(idp, "accounts:read"), batch)
        assert response.status_code == 400
        assert 'error="invalid_request"' in challenge(response)


def test_a_tool_policy_that_contradicts_the_endpoints_stops_the_startup(clock: ManualClock) -> None:
    policy = MCPPolicy(tools={"transfer": ToolPolicy(acr_values="urn:silver")})
    with (
        pytest.raises(ConfigurationError, match=r"mcp: the tool 'transfer' contradicts the MCP endpoint's own policy"),
        TestClient(make_app(clock, policy, rules=[Rule("/mcp", acr_values="urn:gold")]), base_url=BASE),
    ):
        pass


@pytest.mark.parametrize(
    "path", ["/mcp", "/mcp/", "//mcp", "/MCP", "/mcp/x", "/mcp;x", "/mcp%2F", "/%6Dcp", "/api/../mcp", "/mcp?x=1"]
)
def test_whatever_path_reaches_the_mcp_server_gets_the_tool_policy(clock: ManualClock, idp: Issuer, path: str) -> None:
    """An attacker's spelling of the path: if the router runs the MCP endpoint, the tool's policy was applied."""
    CALLS.clear()
    body = json.dumps({**_transfer_call(), "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}}})
    with TestClient(make_app(clock), base_url=BASE) as client:
        weak = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read')}"}
        client.post(path, content=body.encode(), headers=weak)
        assert CALLS == []  # transfer needs payments:write: it never ran, whichever way the path was spelt
        strong = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read payments:write')}"}
        client.post(path, content=body.encode(), headers=strong)
    if path in ("/mcp", "/mcp?x=1"):
        assert CALLS == ["transfer"]  # the control: this spelling does reach the tool


# -- an MCP request is one the router hands to the MCP endpoint's route, however its path is spelt ------------


def _sdk_app() -> Any:
    return make_server().streamable_http_app(stateless_http=True, json_response=True)


def _lifespan_of(sdk: Any) -> Any:
    return lambda app: sdk.router.lifespan_context(sdk)


def _fastapi_root_path(clock: ManualClock, policy: MCPPolicy, **options: Any) -> Any:
    """``FastAPI(root_path="/api")`` wrapped by the guard directly: FastAPI writes its root into the scope
    when it is called, after the guard, and its router then sends ``/api/mcp`` to the ``/mcp`` route."""
    from fastapi import FastAPI

    sdk = _sdk_app()
    with pytest.warns(Warning, match="root_path"):  # FastAPI deprecates the option, still honours it
        app = FastAPI(root_path="/api", lifespan=_lifespan_of(sdk))
    app.router.routes.extend(sdk.routes)
    return TokenGuard(app, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy, **options)


def _template(clock: ManualClock, policy: MCPPolicy, **options: Any) -> Any:
    """The MCP endpoint on a route template, one per tenant."""
    sdk = _sdk_app()
    app = Starlette(routes=[Route("/t/{tenant}/mcp", sdk.routes[0].endpoint)], lifespan=_lifespan_of(sdk))
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy, **options)
    return app


def _mounted(clock: ManualClock, policy: MCPPolicy, **options: Any) -> Any:
    """The SDK's whole app mounted under a prefix."""
    from starlette.routing import Mount

    sdk = _sdk_app()
    app = Starlette(routes=[Mount("/v1", app=sdk)], lifespan=_lifespan_of(sdk))
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy, **options)
    return app


#: (app, MCPPolicy path, paths the router sends to the MCP endpoint, paths it sends nowhere near it)
ROUTED_SHAPES = {
    "FastAPI root_path, guard outside": (_fastapi_root_path, "/mcp", ["/mcp", "/api/mcp", "/api/mcp/"], ["/api/x"]),
    "template, the policy names it": (_template, "/t/{tenant}/mcp", ["/t/acme/mcp", "/t/other/mcp/"], ["/t/a/b"]),
    "mounted under /v1": (_mounted, "/v1/mcp", ["/v1/mcp", "/v1/mcp/"], ["/mcp"]),
}


@pytest.mark.parametrize("shape", sorted(ROUTED_SHAPES))
@pytest.mark.parametrize("default", ["authenticated", "public"])
def test_every_path_the_router_sends_to_the_mcp_endpoint_gets_the_tool_policy(
    clock: ManualClock, idp: Issuer, shape: str, default: str
) -> None:
    """Found by review: the guard compared the request's path with ``MCPPolicy.path``, so a request the router
    sent to the MCP endpoint by another path (an app's own root_path, a template's parameters) passed with
    only the route's policy — any valid token, or none under ``default="public"`` — and ran every tool.
    Now the tool runs exactly when the token holds its scopes, for every path that reaches it."""
    build, mcp_path, reaching, elsewhere = ROUTED_SHAPES[shape]
    policy = MCPPolicy(path=mcp_path, tools={"transfer": ToolPolicy(scopes="payments:write")})
    body = json.dumps({**_transfer_call(), "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}}})
    weak = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read')}"}
    strong = {**HEADERS, "authorization": f"Bearer {token(idp, 'payments:write')}"}
    with TestClient(build(clock, policy, default=default), base_url=BASE) as client:
        for path in reaching:
            CALLS.clear()
            anonymous = client.post(path, content=body.encode(), headers=HEADERS)
            assert (anonymous.status_code, CALLS) == (401, []), path  # the MCP endpoint is never public
            refused = client.post(path, content=body.encode(), headers=weak)
            assert (refused.status_code, CALLS) == (403, []), path
            assert 'scope="payments:write"' in challenge(refused)
            allowed = client.post(path, content=body.encode(), headers=strong, follow_redirects=True)
            assert (allowed.status_code, CALLS) == (200, ["transfer"]), path
        for path in elsewhere:  # no MCP endpoint there: the route's own policy, no body read
            CALLS.clear()
            response = client.post(path, content=b"not json", headers=weak)
            assert (response.status_code, CALLS) == (404, []), path


class _PredictedElsewhere(Route):
    """Matches inside the router, and for the guard only the literal template: the guard predicts
    another route for every real path, so only the dispatch check sees that this one runs."""

    def matches(self, scope: Any) -> Any:
        if "router" not in scope and scope["path"] != self.path:
            from starlette.routing import Match

            return Match.NONE, {}
        return super().matches(scope)


def test_a_dispatch_to_the_mcp_endpoint_the_guard_did_not_predict_gets_the_tool_policy(
    clock: ManualClock, idp: Issuer
) -> None:
    """The dispatch check lets an unpredicted route through when its requirement equals the one applied;
    the MCP endpoint's per-call policy is more than its requirement, so it is checked there."""

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    sdk = _sdk_app()
    app = Starlette(
        routes=[_PredictedElsewhere("/t/{tenant}/mcp", sdk.routes[0].endpoint), Route("/t/{tenant}/mcp", plain)],
        lifespan=_lifespan_of(sdk),
    )
    policy = MCPPolicy(path="/t/{tenant}/mcp", tools={"transfer": ToolPolicy(scopes="payments:write")})
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy)
    body = json.dumps({**_transfer_call(), "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}}})
    CALLS.clear()
    with TestClient(app, base_url=BASE) as client:
        weak = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read')}"}
        refused = client.post("/t/acme/mcp", content=body.encode(), headers=weak)
        assert (refused.status_code, CALLS) == (403, [])
        strong = {**HEADERS, "authorization": f"Bearer {token(idp, 'payments:write')}"}
        allowed = client.post("/t/acme/mcp", content=body.encode(), headers=strong)
        assert (allowed.status_code, CALLS) == (200, ["transfer"])
        guard = app.middleware_stack
        while not isinstance(guard, TokenGuard):
            guard = guard.app
        assert guard.resolver.mismatches == 2  # both were dispatches the guard did not predict


def test_a_catch_all_route_serving_the_mcp_path_stops_the_startup(clock: ManualClock) -> None:
    """Found by review: a gateway's catch-all route (``/{path:path}``) serving the MCP path made every path an
    MCP request (public pages 401), and matching its parameter exactly let ``/mcp//`` (which the gateway
    took for ``/mcp``) past every tool's policy: the endpoint decides itself which of its paths are MCP.
    Such a policy stops the startup, naming the fix: a route of its own for the MCP endpoint."""
    sdk = _sdk_app()
    mcp_endpoint = sdk.routes[0].endpoint

    class Gateway:  # an ASGI endpoint: every method, every path
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["path"].rstrip("/") == "/mcp":
                await mcp_endpoint(scope, receive, send)
            else:
                await PlainTextResponse(f"served {scope['path']}")(scope, receive, send)

    app = Starlette(routes=[Route("/{path:path}", Gateway())], lifespan=_lifespan_of(sdk))
    policy = MCPPolicy(tools={"transfer": ToolPolicy(scopes="payments:write")})
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy, default="public")
    with (
        pytest.raises(ConfigurationError, match=r"catch-all route '/\{path:path\}'.*a route of its own"),
        TestClient(app, base_url=BASE),
    ):
        pass


def test_a_typed_or_host_routed_mcp_endpoint_gets_the_tool_policy_for_every_value(
    clock: ManualClock, idp: Issuer
) -> None:
    """Found by review: a typed parameter (``{tenant:int}``) could not be named at all, and behind a ``Host``
    route the MCP path was probed without the request's Host, so with a catch-all after it the MCP endpoint
    was never taken for one. One tenant's path names the route; the request's Host goes with the probe."""
    from starlette.routing import Host, Router

    sdk = _sdk_app()
    frontend = PlainTextResponse("frontend")
    tenants = Router(routes=[Route("/t/{tenant:int}/mcp", sdk.routes[0].endpoint)])
    app = Starlette(
        routes=[Host("127.0.0.1", tenants), Route("/{path:path}", lambda request: frontend)],
        lifespan=_lifespan_of(sdk),
    )
    policy = MCPPolicy(path="/t/1/mcp", tools={"transfer": ToolPolicy(scopes="payments:write")})
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy)
    body = json.dumps({**_transfer_call(), "params": {"name": "transfer", "arguments": {"to": "b", "amount": 1}}})
    weak = {**HEADERS, "authorization": f"Bearer {token(idp, 'accounts:read')}"}
    strong = {**HEADERS, "authorization": f"Bearer {token(idp, 'payments:write')}"}
    CALLS.clear()
    with TestClient(app, base_url=BASE) as client:
        for path in ("/t/1/mcp", "/t/2/mcp", "/t/99/mcp/"):
            assert client.post(path, content=body.encode(), headers=HEADERS).status_code == 401, path
            assert (client.post(path, content=body.encode(), headers=weak).status_code, CALLS) == (403, []), path
        assert client.post("/t/2/mcp", content=body.encode(), headers=strong).status_code == 200
        assert CALLS == ["transfer"]


def test_an_mcp_path_into_a_mounted_app_without_readable_routes_stops_the_startup(clock: ManualClock) -> None:
    """Found by review: ``Mount("/api", app=raw_asgi)`` takes every path under ``/api``; only the exact MCP path
    counted as MCP, and ``/api/mcp//`` (which the app may serve as MCP) passed with the route's policy."""
    from starlette.routing import Mount

    sdk = _sdk_app()
    app = Starlette(routes=[Mount("/api", app=sdk.routes[0].endpoint)], lifespan=_lifespan_of(sdk))
    policy = MCPPolicy(path="/api/mcp", tools={"transfer": ToolPolicy(scopes="payments:write")})
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, clock=clock, mcp=policy)
    with (
        pytest.raises(ConfigurationError, match=r"leads into the mounted app '/api/\{path\}'.*a route of its own"),
        TestClient(app, base_url=BASE),
    ):
        pass
