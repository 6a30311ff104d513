"""Issue 13 behind a real path-prefixing proxy: DPoP proofs name the URL the client used.

A real uvicorn process (``--root-path /api --proxy-headers --forwarded-allow-ips 127.0.0.1``) serves
a guarded app; the DevIdP runs in that process too, with the test's signing keys. The client is
``httpx`` with ``DPoPAuth`` and a transport that does what the proxy in front of the app does: it
takes ``https://api.example.com/api/...``, strips ``/api`` and forwards to uvicorn with
``X-Forwarded-Proto``/``X-Forwarded-Host``. So proofs are made for the public URL, as a real client's
are, and the guard must rebuild that URL from the scope and the trusted proxy's headers.

uvicorn's ``--proxy-headers`` replaces ``scope["client"]`` with the ``X-Forwarded-For`` address
(``tests/test_origin.py``): a proxy that sends it is then no longer the trusted peer, and only
``public_url`` gives the public URL. Both are shown.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tokenguard.dpop import DPoPAuth, DPoPKey
from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DevIdP
from tokenguard.testing._processes import UvicornProcess

pytest.importorskip("uvicorn")

PUBLIC = "https://api.example.com/api"

SERVED_APP = """
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard
from tokenguard.testing import DevIdP

# The test's DevIdP, in this process: the same issuer and signing keys, reached in-process.
idp = DevIdP(key_file=os.environ["DEVIDP_KEYS"])


async def item(request):
    binding = request.auth.binding
    return JSONResponse({"binding": [binding.method, binding.thumbprint] if binding else None})


def guarded(**options):
    app = Starlette(routes=[Route("/items/{name}", item, methods=["GET", "POST"])])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=idp.default_audience,
        http_client=idp.http_client,
        dpop_nonce=True,
        **options,
    )
    return app


trusted = guarded(trusted_proxies=["127.0.0.1"])
public = guarded(public_url="https://api.example.com/api")
"""


@contextmanager
def uvicorn_serving(directory: Path, app: str, keys: Path) -> Iterator[str]:
    """``uvicorn <app>`` behind the proxy's options, on a free port; yields its base URL once it serves."""
    (directory / "served.py").write_text(textwrap.dedent(SERVED_APP))
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(directory), src, *sys.path]), DEVIDP_KEYS=str(keys))
    options = ("--root-path", "/api", "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1")
    server = UvicornProcess(f"served:{app}", *options, env=env, cwd=directory)
    try:
        try:
            base = server.ready(time.monotonic() + 60)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield base
    finally:
        server.stop()


class PathPrefixingProxy(httpx.BaseTransport):
    """The reverse proxy in front of the app: ``https://api.example.com/api/<rest>`` is forwarded to
    ``<upstream>/<rest>`` with the proxy's own headers (it sets them; it never passes the client's on)."""

    def __init__(self, upstream: str, *, forwarded_for: str | None = None) -> None:
        self.upstream = httpx.URL(upstream)
        self.forwarded_for = forwarded_for
        self.inner = httpx.HTTPTransport()
        self.forwarded: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert (request.url.scheme, request.url.host) == ("https", "api.example.com")
        assert request.url.raw_path.startswith(b"/api/")
        names = {b"host", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for"}
        headers = [(name, value) for name, value in request.headers.raw if name.lower() not in names]
        headers += [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"api.example.com")]
        if self.forwarded_for is not None:
            headers.append((b"X-Forwarded-For", self.forwarded_for.encode()))
        upstream = httpx.Request(
            request.method,
            self.upstream.copy_with(raw_path=request.url.raw_path[len(b"/api") :]),
            headers=headers,
            content=request.read(),
        )
        self.forwarded.append(upstream)
        return self.inner.handle_request(upstream)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def keys(tmp_path: Path, dev_idp: DevIdP) -> Path:
    path = tmp_path / "devidp-keys.json"
    dev_idp.save_keys(path)
    return path


@pytest.fixture
def bound(dev_idp: DevIdP) -> tuple[DPoPKey, str]:
    """A DPoP key and a token bound to it, from the DevIdP's token endpoint (RFC 9449 §5)."""
    key = DPoPKey.generate("ES256")
    credentials = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()

    async def fetch() -> httpx.Response:
        async with dev_idp.http_client() as client:
            return await client.post(
                "/token",
                data={"grant_type": "client_credentials", "scope": "read"},
                auth=DPoPAuth(key, clock=dev_idp.clock),
                headers={"Authorization": f"Basic {credentials}"},
            )

    answer = asyncio.run(fetch())
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] == "DPoP"
    return key, answer.json()["access_token"]


def test_through_a_path_prefixing_proxy(tmp_path: Path, keys: Path, bound: tuple[DPoPKey, str]) -> None:
    key, token = bound
    with uvicorn_serving(tmp_path, "trusted", keys) as base:
        # The client calls the public URL; its proofs name it. The guard asks for its nonce once.
        auth = DPoPAuth(key, token)  # real time, as the server's clock
        proxy = PathPrefixingProxy(base)
        with httpx.Client(base_url=PUBLIC, transport=proxy, timeout=10) as client:
            response = client.get("/items/a%3Bb?page=2", auth=auth)
            assert response.status_code == 200, response.text
            assert response.json() == {"binding": ["dpop", key.thumbprint]}
            assert [answer.status_code for answer in response.history] == [401]
            assert response.history[0].json()["error"] == "use_dpop_nonce"
            assert auth.nonce_for(PUBLIC) == response.history[0].headers["dpop-nonce"]
            # What reached uvicorn: the prefix stripped, the proxy's headers.
            assert proxy.forwarded[-1].url.raw_path == b"/items/a%3Bb?page=2"
            assert proxy.forwarded[-1].headers["x-forwarded-host"] == "api.example.com"

            posted = client.post("/items/x", auth=auth, json={"a": 1})
            assert (posted.status_code, posted.history) == (200, [])

        # A proof for the internal URL (what a client calling uvicorn directly signs) is refused, though
        # the request carries the proxy's headers and the current nonce.
        with httpx.Client(base_url=base, timeout=10) as direct:
            proxy_headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
            internal = direct.get("/items/x", auth=auth, headers=proxy_headers)
            assert internal.status_code == 401
            assert internal.json()["error"] == "invalid_dpop_proof"
            assert "htu" in internal.json()["error_description"]
            challenge = internal.headers["www-authenticate"]
            assert challenge.index('error="invalid_dpop_proof"') > challenge.index("DPoP realm=")

        # A proxy that also sends X-Forwarded-For: uvicorn makes that address the peer, which is not a
        # trusted proxy, so the forwarded host is not used and the public URL cannot be rebuilt.
        relaying = PathPrefixingProxy(base, forwarded_for="203.0.113.9")
        with httpx.Client(base_url=PUBLIC, transport=relaying, timeout=10) as client:
            relayed = client.get("/items/x", auth=auth)
            assert relayed.status_code == 401
            assert relayed.json()["error"] == "invalid_dpop_proof"
            assert "htu" in relayed.json()["error_description"]


def test_public_url_behind_a_proxy_that_sends_x_forwarded_for(
    tmp_path: Path, keys: Path, bound: tuple[DPoPKey, str]
) -> None:
    key, token = bound
    with uvicorn_serving(tmp_path, "public", keys) as base:
        auth = DPoPAuth(key, token)
        relaying = PathPrefixingProxy(base, forwarded_for="203.0.113.9")
        with httpx.Client(base_url=PUBLIC, transport=relaying, timeout=10) as client:
            response = client.get("/items/x", auth=auth)
            assert response.status_code == 200, response.text
            assert response.json() == {"binding": ["dpop", key.thumbprint]}
            assert [answer.status_code for answer in response.history] == [401]
        with httpx.Client(base_url=base, timeout=10) as direct:
            internal = direct.get("/items/x", auth=auth)
            assert (internal.status_code, internal.json()["error"]) == (401, "invalid_dpop_proof")
