"""The one discovery client (``tokenguard._discovery``): RFC 8414 / OpenID Connect Discovery over respx."""

from __future__ import annotations

import httpx
import pytest
import respx

from tokenguard._discovery import Attempt, DiscoveryFailed, discover, metadata_problem, well_known_urls
from tokenguard._http import HttpClientPool

ISSUER = "https://idp.example.com"
RFC8414, OPENID = well_known_urls(ISSUER)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def metadata(issuer: str = ISSUER, **extra: str) -> dict[str, str]:
    return {"issuer": issuer, "jwks_uri": f"{ISSUER}/jwks", **extra}


async def test_the_first_usable_document_wins_and_each_attempt_is_reported(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(RFC8414).respond(404)
    respx_mock.get(OPENID).respond(200, json=metadata(), headers={"cache-control": "max-age=600"})
    seen: list[Attempt] = []
    found = await discover(HttpClientPool(None, timeout=1), ISSUER, timeout=1, on_attempt=seen.append)
    assert found.url == OPENID
    assert found.document["jwks_uri"] == f"{ISSUER}/jwks"
    assert found.headers["cache-control"] == "max-age=600"
    assert [(a.url, a.status, a.problem is None) for a in seen] == [(RFC8414, 404, False), (OPENID, 200, True)]


async def test_metadata_naming_another_issuer_is_never_used(respx_mock: respx.MockRouter) -> None:
    """RFC 8414 §3.3: the issuer value MUST be identical; the document is reported, not used."""
    respx_mock.get(RFC8414).respond(200, json=metadata("https://evil.example.com"))
    respx_mock.get(OPENID).respond(200, json=metadata("https://evil.example.com"))
    with pytest.raises(DiscoveryFailed) as failed:
        await discover(HttpClientPool(None, timeout=1), ISSUER, timeout=1)
    assert [attempt.document is not None for attempt in failed.value.attempts] == [True, True]
    assert "evil.example.com" in str(failed.value)


async def test_a_trailing_slash_difference_is_named(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(RFC8414).respond(200, json=metadata(ISSUER + "/"))
    respx_mock.get(OPENID).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(DiscoveryFailed, match="differ only by a trailing '/'"):
        await discover(HttpClientPool(None, timeout=1), ISSUER, timeout=1)


def test_plain_http_key_and_introspection_urls_are_refused() -> None:
    assert metadata_problem(metadata(jwks_uri="http://keys.example.com/jwks"), ISSUER) is not None
    assert metadata_problem(metadata(introspection_endpoint="http://idp.example.com/i"), ISSUER) is not None
    assert metadata_problem(metadata(jwks_uri="http://127.0.0.1:8000/jwks"), ISSUER) is None
    assert metadata_problem(metadata(), ISSUER) is None
