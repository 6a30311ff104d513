"""Reproductions of what ``scripts/fuzz_long.py`` found, each the smallest request that shows it.

A finding still open is marked ``xfail(strict=True)``; once fixed, the mark goes and the test stays as
its regression test.
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import TokenGuard


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        ("DPoP " + "A" * (16 * 1024 + 1), 401, "invalid_token"),  # over max_token_bytes: token_too_large
        ("DPoP  abc.def.ghi", 400, "invalid_request"),  # two spaces: a malformed credential
    ],
    ids=["oversized", "malformed"],
)
def test_a_dpop_scheme_token_refused_while_parsing_is_refused_on_the_dpop_challenge(
    authorization: str, status: int, error: str
) -> None:
    """Found by the long run: refusals raised while the Authorization value was parsed carried no scheme,
    so their error went on the Bearer challenge; README: the DPoP challenge carries the error when the
    client used the DPoP scheme (RFC 9449 §7.1)."""
    app = Starlette(routes=[Route("/me", me)])
    app.add_middleware(TokenGuard, issuer="https://idp.example.com", audience="https://api.example.com")
    client = TestClient(app, base_url="https://api.example.com")

    reply = client.get("/me", headers={"Authorization": authorization})

    assert reply.status_code == status
    assert reply.json()["error"] == error
    bearer, dpop = reply.headers["www-authenticate"].split(', DPoP realm="')
    assert "error=" not in bearer
    assert f'error="{error}"' in dpop
