"""Swagger UI in a real browser: sign in with the DevIdP (authorization code + PKCE), then "Try it out".

Headless Chromium (Debian's ``chromium`` package), driven by Playwright's Python package, opens
``/docs`` of ``examples/fastapi_oauth_app.py`` served by uvicorn on a loopback port, next to the
DevIdP on another (two origins, so the token request is a real cross-origin POST). Nothing is
faked between the browser and the servers.

The page loads Swagger UI's script and stylesheet from a CDN; the browser is handed the copies that
the ``swagger-ui-py`` package ships instead (``SWAGGER_UI_DIST`` may name another directory holding
``swagger-ui-bundle.js`` and ``swagger-ui.css``), and every other request that would leave the
loopback interface is refused, so the test never touches the network.

Skipped, with the reason, when ``/usr/bin/chromium``, ``playwright`` or Swagger UI's files are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (Debian) to run the browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install playwright (never `playwright install`)"
)
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is missing: pip install 'tokenguard-asgi[server]'")


def _swagger_ui_dist() -> Path | None:
    given = os.environ.get("SWAGGER_UI_DIST")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "static"


SWAGGER_UI_DIST = _swagger_ui_dist()
if SWAGGER_UI_DIST is None or not (SWAGGER_UI_DIST / "swagger-ui-bundle.js").is_file():
    pytest.skip(
        "Swagger UI's files are missing (the page's CDN is unreachable here): pip install swagger-ui-py, "
        "or set SWAGGER_UI_DIST to a directory holding swagger-ui-bundle.js and swagger-ui.css",
        allow_module_level=True,
    )

from examples.fastapi_oauth_app import DOCS_CLIENT_ID, create_app, create_idp  # noqa: E402

from tokenguard.testing import DevIdP, KeyRing  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Where FastAPI's /docs page loads Swagger UI from.
SWAGGER_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
LOOPBACK = "http://127.0.0.1:"


def _listening_socket() -> socket.socket:
    """A socket already listening on a free loopback port: connections wait in its backlog until
    uvicorn accepts them, so nobody has to poll for the server to be up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class _Served:
    """One uvicorn server on its own thread and event loop, on a pre-bound socket."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.socket = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{LOOPBACK}{self.socket.getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@dataclass
class Site:
    idp: DevIdP
    api_url: str


@pytest.fixture(scope="module")
def site(dev_idp_keys: KeyRing) -> Iterator[Site]:
    """The DevIdP (CORS open to the API's origin) and the example API, each on a free loopback port."""
    idp_socket, api_socket = _listening_socket(), _listening_socket()
    api_url = f"{LOOPBACK}{api_socket.getsockname()[1]}"
    idp = create_idp(idp_socket.getsockname()[1], keys=dev_idp_keys, cors_origins=[api_url])
    servers = [_Served(idp.app, idp_socket)]
    try:
        # The API reaches the DevIdP over HTTP like any issuer: metadata, then the JWKS.
        servers.append(_Served(create_app(issuer=idp.issuer), api_socket))
        yield Site(idp, api_url)
    finally:
        for served in reversed(servers):
            served.stop()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    """Headless Debian Chromium (started after the servers, so it is closed before they stop)."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _offline(route: Any) -> None:
    """Loopback goes through; Swagger UI's CDN files come from disk; anything else is refused."""
    url: str = route.request.url
    if url.startswith(LOOPBACK):
        route.continue_()
    elif url.startswith(SWAGGER_CDN) and SWAGGER_UI_DIST is not None:
        route.fulfill(path=str(SWAGGER_UI_DIST / url[len(SWAGGER_CDN) :].split("?")[0]))
    else:
        route.abort()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.route("**/*", _offline)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    try:
        yield tab
    finally:
        context.close()


class Docs:
    """What a person does on /docs, in Swagger UI's own words (its buttons and labels)."""

    def __init__(self, page: Any, api_url: str) -> None:
        self.page = page
        self.page.goto(f"{api_url}/docs")
        self.page.locator(".opblock").first.wait_for()

    def operation(self, method: str, path: str) -> Any:
        return self.page.locator(f".opblock-{method}").filter(has=self.page.locator(f'[data-path="{path}"]'))

    def open_authorizations(self) -> Any:
        """Click the page's Authorize button; the dialog's OAuth2 part."""
        self.page.locator(".auth-wrapper button.authorize").click()
        return self.page.locator(".auth-container").filter(has_text="authorizationCode")

    def sign_in(self, *scopes: str) -> None:
        """Authorize with these scopes ticked: a popup goes to /authorize, returns with a code, closes."""
        dialog = self.open_authorizations()
        for scope in scopes:
            dialog.get_by_text(scope, exact=True).click()
            assert dialog.locator(f'input[data-value="{scope}"]').is_checked()
        with self.page.expect_popup() as opened:
            dialog.locator("button.authorize").click()
        # The popup may redirect back and close before a "close" listener could be attached (waiting
        # for that event raced and timed out once under load): wait for what it leads to instead, the
        # "Logout" button Swagger UI shows once it has exchanged the code (and the PKCE verifier).
        dialog.locator("button.authorize", has_text="Logout").wait_for()
        assert opened.value.url.startswith("http")  # the popup did open (to /authorize)
        self.page.locator(".modal-ux button.btn-done").first.click()

    def try_it_out(self, method: str, path: str, **params: str) -> tuple[int, Any]:
        """Expand the operation, "Try it out", fill the parameters, "Execute": the status and body shown."""
        block = self.operation(method, path)
        block.locator(".opblock-summary").click()
        block.get_by_role("button", name="Try it out").click()
        for name, value in params.items():
            block.locator(f'tr[data-param-name="{name}"] input').fill(value)
        block.get_by_role("button", name="Execute").click()
        response = block.locator(".live-responses-table .response")
        status = response.locator(".response-col_status").inner_text()
        body = response.locator(".response-col_description pre").first.inner_text()
        return int(status.split()[0]), json.loads(body)


def test_docs_offer_sign_in_with_pkce(page: Any, site: Site) -> None:
    """The Authorize dialog shows the DevIdP's endpoints, the PKCE flow, the client id and the scopes."""
    docs = Docs(page, site.api_url)
    # A lock on guarded operations only.
    assert docs.operation("get", "/photos").locator(".authorization__btn").count() == 1
    assert docs.operation("get", "/health").locator(".authorization__btn").count() == 0
    dialog = docs.open_authorizations()
    text = dialog.inner_text()
    assert "authorizationCode with PKCE" in text
    assert f"{site.idp.issuer}/authorize" in text
    assert f"{site.idp.issuer}/token" in text
    assert dialog.locator('input[data-name="clientId"]').input_value() == DOCS_CLIENT_ID
    # A public client: no secret for Swagger UI to fill in (and show every visitor of /docs).
    assert dialog.locator('input[data-name="clientSecret"]').input_value() == ""
    offered = dialog.locator('input[type="checkbox"]')
    assert [offered.nth(i).get_attribute("data-value") for i in range(offered.count())] == [
        "read:photos",
        "write:photos",
    ]
    assert "Upload and delete your photos" in text  # the scope's description


def test_signed_in_swagger_ui_gets_200_within_the_granted_scope_and_403_beyond(page: Any, site: Site) -> None:
    """Authorize (code + PKCE, auto-approved) with read:photos: GET /photos 200; writes 403 insufficient_scope."""
    docs = Docs(page, site.api_url)
    docs.sign_in("read:photos")

    status, body = docs.try_it_out("get", "/photos")
    assert (status, body) == (200, {"owner": "alice", "scopes": ["read:photos"]})

    # Refused by the middleware (@require_scopes) and by the dependency (Security(require, ...)).
    status, body = docs.try_it_out("post", "/photos")
    assert (status, body["error"], body["scope"]) == (403, "insufficient_scope", "write:photos")
    status, body = docs.try_it_out("delete", "/photos/{photo_id}", photo_id="7")
    assert (status, body["error"], body["scope"]) == (403, "insufficient_scope", "write:photos")

    # The DevIdP saw the whole authorization-code flow (it refuses one without PKCE S256), cross-origin
    # through its own CORS answers, from a public client (which it refuses if a secret comes along).
    assert site.idp.clients[DOCS_CLIENT_ID].public
    issued = [e for e in site.idp.events if e.kind == "issued" and e.client_id == DOCS_CLIENT_ID]
    assert [(e.detail["grant_type"], e.detail["scope"], e.subject) for e in issued][-1:] == [
        ("authorization_code", "read:photos", "alice")
    ]


def test_without_signing_in_guarded_routes_answer_401(page: Any, site: Site) -> None:
    """Before Authorize: the public route answers 200, a guarded one 401 (no token sent)."""
    docs = Docs(page, site.api_url)
    assert docs.try_it_out("get", "/health") == (200, {"status": "ok"})
    status, _ = docs.try_it_out("get", "/photos")
    assert status == 401
