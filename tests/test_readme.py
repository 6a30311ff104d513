"""Every ```python block in README.md runs as written, against the library's own DevIdP.

The blocks are read from README.md itself, so a snippet can never rot: a new block is run by
``test_every_block_runs`` without anyone adding a case. README's examples name the issuer
``https://idp.example.com``; here a DevIdP serves that issuer (its metadata, JWKS, token and
introspection endpoints), reached through ``respx`` by the guard's own ``httpx`` calls. Blocks that
build an ``app`` are then started (lifespan included) and requested with real tokens; blocks that
define ``test_*`` functions are run by pytest, as a user's test file would be.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import TokenGuard
from tokenguard.testing import DevIdP, KeyRing

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"
ISSUER = "https://idp.example.com"
AUDIENCES = ("https://photos.example", "https://api.example.com", "api://photos", "https://mcp.example.com/mcp")
SECRET = "photos-api-secret-for-the-readme-test"
MFA = "urn:example:mfa"


@dataclass(frozen=True)
class Block:
    heading: str
    line: int
    source: str

    @property
    def id(self) -> str:
        return f"{self.heading or 'top'}@{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks, each with the ``##`` heading it stands under and its first line number."""
    blocks: list[Block] = []
    heading, start, body = "", 0, None
    for number, line in enumerate(text.splitlines(), start=1):
        if body is None:
            if line.startswith("## "):
                heading = line[3:].strip()
            elif line.strip() == "```python":
                start, body = number + 1, []
        elif line.strip() == "```":
            blocks.append(Block(heading, start, textwrap.dedent("\n".join(body))))
            body = None
        else:
            body.append(line)
    assert body is None, "an unterminated ```python block"
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_the_blocks_this_file_checks_in_detail() -> None:
    headings = {block.heading for block in BLOCKS}
    for expected in ("", "Quick start", "Routes and policies", "FastAPI", "Logs, decision events and metrics"):
        assert expected in headings, f"README lost its {expected or 'first'} python block"
    assert len(BLOCKS) >= 12


# -- the world README's snippets live in ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def idp(keys: KeyRing, monkeypatch: pytest.MonkeyPatch) -> Iterator[DevIdP]:
    """README's issuer, served by a DevIdP; README's environment variable holds its client's secret."""
    idp = DevIdP(ISSUER, keys=keys)
    for audience in AUDIENCES:
        idp.add_audience(audience)
    idp.register_client("photos-api", SECRET, introspection=True, audience=AUDIENCES[0])
    monkeypatch.setenv("PHOTOS_API_CLIENT_SECRET", SECRET)

    async def forward(request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=idp.app), base_url=ISSUER) as client:
            answer = await client.request(
                request.method, str(request.url), headers=request.headers, content=request.content
            )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    with respx.mock(assert_all_called=False) as router:
        router.route(host="idp.example.com").mock(side_effect=forward)
        yield idp


def run(block: Block) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"readme_{block.line}"}
    exec(compile(block.source, f"README.md:{block.line}", "exec"), namespace)
    return namespace


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- every block ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_every_block_runs(
    block: Block,
    idp: DevIdP,
    pytester: pytest.Pytester,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each block runs as written; an app it builds starts and refuses a request without a token."""
    if "fastmcp" in block.source:
        pytest.importorskip("fastmcp")  # FastMCP 4 needs Python 3.11+; CI also runs 3.10
    if "REDIS_URL" in block.source:  # fleet mode: README's Redis is a real redis-server here
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server"))
    monkeypatch.setenv("SSF_PUSH_SECRET", "a-long-random-secret-for-the-readme-test")
    if re.search(r"^def test_", block.source, flags=re.MULTILINE):
        pytester.makepyfile(test_from_readme=block.source)
        result = pytester.runpytest("-p", "no:cacheprovider", "-q")
        result.assert_outcomes(passed=len(re.findall(r"^def test_", block.source, flags=re.MULTILINE)))
        return
    namespace = run(block)
    app = namespace.get("app")
    if isinstance(app, Starlette):
        # An MCP SDK server guarding itself with a tokenguard verifier guards its endpoint, /mcp, only.
        path = "/mcp" if "TokenVerifier(" in block.source else "/no-route-of-the-readme"
        with TestClient(
            app, base_url="http://127.0.0.1"
        ) as client:  # the lifespan runs: a wrong option would raise here
            response = client.post(path) if path == "/mcp" else client.get(path)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")


# -- blocks whose app is exercised in detail ------------------------------------------------------------


def block_under(heading: str, containing: str = "") -> Block:
    found = [block for block in BLOCKS if block.heading == heading and containing in block.source]
    assert found, f"no python block under {heading!r} containing {containing!r}"
    return found[0]


def test_the_headline_line_guards_an_app(idp: DevIdP) -> None:
    app = run(block_under(""))["app"]
    token = idp.issue_token(audience="https://photos.example")
    with TestClient(app) as client:
        assert client.get("/", headers=bearer(token)).status_code == 404  # allowed, and no such route
        assert client.get("/").status_code == 401


def test_quick_start(idp: DevIdP) -> None:
    """Scopes per route, introspection on the sensitive one (through the DevIdP), a public health check."""
    app = run(block_under("Quick start", "add_middleware"))["app"]
    photos = idp.issue_token(audience="https://photos.example", scopes=["read:photos"])
    writer = idp.issue_token(audience="https://photos.example", scopes=["write:transfers"])
    revoked = idp.issue_token(audience="https://photos.example", scopes=["write:transfers"])
    assert idp.revoke(revoked)
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/photos").status_code == 401
        ok = client.get("/photos", headers=bearer(photos))
        assert ok.status_code == 200
        assert ok.json() == {"owner": "alice", "scopes": ["read:photos"]}
        assert client.get("/photos", headers=bearer(writer)).status_code == 403
        transfer = client.post("/transfers", headers=bearer(writer))
        assert transfer.status_code == 200
        assert transfer.json() == {"by": "alice", "checked": "introspection"}
        refused = client.post("/transfers", headers=bearer(revoked))  # revoked: the issuer says inactive
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_rules(idp: DevIdP) -> None:
    app = run(block_under("Routes and policies", "Rule("))["app"]
    with TestClient(app) as client:
        assert client.get("/static/missing.css").status_code == 404  # public: the app answers
        assert client.post("/admin/users").status_code == 401
        plain = idp.issue_token(audience="https://photos.example")
        assert client.post("/admin/users", headers=bearer(plain)).status_code == 403
        admin = idp.issue_token(audience="https://photos.example", scopes=["admin"])
        assert client.post("/admin/users", headers=bearer(admin)).status_code == 404  # allowed, after introspection
        assert client.get("/admin/users").status_code == 401  # GET: not the rule's methods, the default


def test_fastapi(idp: DevIdP) -> None:
    app = run(block_under("FastAPI", "install_openapi"))["app"]
    reader = idp.issue_token(audience="https://photos.example", scopes=["read:photos"])
    writer = idp.issue_token(audience="https://photos.example", scopes=["write:photos"])
    with TestClient(app) as client:
        assert client.get("/photos", headers=bearer(reader)).json() == {"owner": "alice"}
        denied = client.delete("/photos/7", headers=bearer(reader))
        assert denied.status_code == 403
        assert denied.json()["error"] == "insufficient_scope"
        assert client.delete("/photos/7", headers=bearer(writer)).json() == {"deleted": 7, "by": "alice"}
        document = client.get("/openapi.json").json()
        assert "authorizationCode" in str(document["components"]["securitySchemes"])


def test_health_and_decision_hook(idp: DevIdP, capsys: pytest.CaptureFixture[str]) -> None:
    app = run(block_under("Logs, decision events and metrics", "on_decision"))["app"]
    with TestClient(app) as client:  # prefetch=True: the keys are fetched during startup
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["ready"] is True
        assert health.json()["metrics"]["jwks_fetches"] == 1
    assert capsys.readouterr().out.startswith("allow public 200 /health")


def test_resource_metadata(idp: DevIdP) -> None:
    app = run(block_under("Protected Resource Metadata (RFC 9728)"))["app"]
    with TestClient(app) as client:
        document = client.get("/.well-known/oauth-protected-resource").json()
    assert document["resource"] == "https://api.example.com"
    assert document["authorization_servers"] == [ISSUER]
    assert document["resource_name"] == "Photos API"


def _guarded(endpoint: Callable[..., Any], **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/x", endpoint, methods=["GET", "POST"])])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience="https://photos.example", **options)
    return app


def test_step_up(idp: DevIdP) -> None:
    endpoint = run(block_under("Step-up authentication (RFC 9470)"))["add_beneficiary"]
    now = idp.clock()
    weak = idp.issue_token(audience="https://photos.example", scopes=["payments:admin"])
    strong = idp.issue_token(audience="https://photos.example", scopes=["payments:admin"], acr=MFA, auth_time=now)
    with TestClient(_guarded(endpoint)) as client:
        refused = client.post("/x", headers=bearer(weak))
        assert refused.status_code == 401
        assert 'error="insufficient_user_authentication"' in refused.headers["www-authenticate"]
        assert client.post("/x", headers=bearer(strong)).status_code == 201


def test_authorization_details(idp: DevIdP) -> None:
    endpoint = run(block_under("Rich authorization: `authorization_details` (RFC 9396)"))["transfer"]
    details = [
        {
            "type": "payment_initiation",
            "instructedAmount": {"amount": "500", "currency": "EUR"},
            "creditorAccount": {"iban": "12345"},
        }
    ]
    token = idp.issue_token(audience="https://photos.example", authorization_details=details)
    app = _guarded(endpoint, client_id="photos-api", client_secret=SECRET)
    with TestClient(app) as client:
        ok = client.post("/x", json={"amount": 450, "to": "12345"}, headers=bearer(token))
        assert ok.status_code == 200
        assert ok.json() == {"transferred": 450, "to": "12345"}
        assert client.post("/x", json={"amount": 600, "to": "12345"}, headers=bearer(token)).status_code == 403


def test_several_issuers(idp: DevIdP) -> None:
    app = run(block_under("Several issuers and audiences"))["app"]
    token = idp.issue_token(audience="api://photos")
    stranger = idp.issue_token(audience="https://elsewhere.example")
    with TestClient(app) as client:
        assert client.get("/", headers=bearer(token)).status_code == 404  # allowed; no such route
        assert client.get("/", headers=bearer(stranger)).status_code == 401


FLEET = "Fleet mode: shared state on Redis, revocation on every route"


def test_fleet_mode_revokes_a_user_on_ordinary_routes_of_two_processes(
    idp: DevIdP, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's fleet app, twice (two guards, one Redis): a revocation made through one refuses the
    user's token on the other's ordinary route; the sensitive route is introspected once for both."""
    monkeypatch.setenv("REDIS_URL", redis_server)
    block = block_under(FLEET, "sign_out_everywhere")
    first, second = run(block)["app"], run(block)["app"]
    alice = idp.issue_token(audience="https://photos.example", scopes=["write:transfers"])
    admin = idp.issue_token(audience="https://photos.example", subject="admin", scopes=["admin:tokens"])
    with TestClient(first) as one, TestClient(second) as two:
        assert two.get("/photos", headers=bearer(alice)).json() == {"owner": "alice"}
        calls = len([event for event in idp.events if event.kind == "introspected"])
        assert one.post("/transfers", headers=bearer(alice)).status_code == 200
        assert two.post("/transfers", headers=bearer(alice)).status_code == 200
        assert len([event for event in idp.events if event.kind == "introspected"]) == calls + 1
        assert one.post("/admin/users/alice/revoke", headers=bearer(admin)).json() == {"revoked": "alice"}
        refused = None
        for _ in range(200):  # the other process hears it through Redis pub/sub
            refused = two.get("/photos", headers=bearer(alice))
            if refused.status_code == 401:
                break
        assert refused is not None
        assert refused.status_code == 401
        assert 'error_description="The access token was revoked."' in refused.headers["www-authenticate"]
        assert two.get("/photos", headers=bearer(admin)).status_code == 200


MCP = "MCP servers"


def test_mcp_server_policy_per_tool(idp: DevIdP) -> None:
    """README's MCP server: the 401 names bank:read; transfer without bank:write is 403 naming what it
    needs; with it, the sensitive tool is introspected and a revoked token refused."""
    app = run(block_under(MCP, "MCPPolicy"))["app"]
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "transfer", "arguments": {"source": "a", "target": "b", "amount": 1}},
    }
    reader = idp.issue_token(audience="https://mcp.example.com/mcp", scopes=["bank:read"])
    writer = idp.issue_token(audience="https://mcp.example.com/mcp", scopes=["bank:read", "bank:write"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:  # the SDK checks the Host header
        first = client.post("/mcp", json=call, headers=headers)
        assert first.status_code == 401
        assert 'scope="bank:read"' in first.headers["www-authenticate"]
        assert (
            'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
            in first.headers["www-authenticate"]
        )
        refused = client.post("/mcp", json=call, headers={**headers, **bearer(reader)})
        assert refused.status_code == 403
        assert 'scope="bank:read bank:write"' in refused.headers["www-authenticate"]
        initialize = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        opened = client.post("/mcp", json=initialize, headers={**headers, **bearer(writer)})
        assert opened.status_code == 200
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]  # the SDK's server is stateful
        headers["mcp-protocol-version"] = "2025-11-25"
        allowed = client.post("/mcp", json=call, headers={**headers, **bearer(writer)})
        assert allowed.status_code == 200
        assert "moved 1 EUR" in allowed.text
        revoked = idp.issue_token(audience="https://mcp.example.com/mcp", scopes=["bank:read", "bank:write"])
        idp.revoke(revoked)  # sensitive: introspected, so refused at once (an answer is cached 30 s)
        assert client.post("/mcp", json=call, headers={**headers, **bearer(revoked)}).status_code == 401
        metadata = client.get("/.well-known/oauth-protected-resource/mcp").json()
        assert {"bank:read", "bank:write", "bank:admin"} <= set(metadata["scopes_supported"])
