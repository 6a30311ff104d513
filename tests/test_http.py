"""The HTTP seam: bounded reads, one exception type at the boundary, per-loop clients, no secrets in errors."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from tokenguard._http import FetchError, HttpClientPool, HttpResult, _Timeout, safe_url

URL = "https://idp.example.com/jwks"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
SECRET = "s3cr3t-client-password"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get(pool: HttpClientPool, url: str = URL, *, max_bytes: int = 1024, timeout: float = 5.0) -> HttpResult:
    return await pool.get(url, timeout=timeout, max_bytes=max_bytes)


# -- reading responses ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_returns_status_headers_and_body(respx_mock: respx.MockRouter) -> None:
    """A GET yields the status, the headers (lower-case names) and the whole body."""
    respx_mock.get(URL).respond(200, json={"keys": []}, headers={"Cache-Control": "max-age=60"})
    result = await get(HttpClientPool())
    assert result.status == 200
    assert result.headers["cache-control"] == "max-age=60"
    assert result.json_object(URL) == {"keys": []}


@pytest.mark.anyio
async def test_requests_ask_for_json_and_name_the_library(respx_mock: respx.MockRouter) -> None:
    """Requests carry ``Accept: application/json`` and the tokenguard User-Agent."""
    route = respx_mock.get(URL).respond(200, json={})
    await get(HttpClientPool())
    request = route.calls.last.request
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"] == "tokenguard"


@pytest.mark.anyio
async def test_redirects_are_not_followed(respx_mock: respx.MockRouter) -> None:
    """A redirect is returned as is, never followed to a host nobody configured."""
    respx_mock.get(URL).respond(302, headers={"Location": "https://evil.example/jwks"})
    evil = respx_mock.get("https://evil.example/jwks").respond(200, json={"keys": []})
    result = await get(HttpClientPool())
    assert result.status == 302
    assert not evil.called


@pytest.mark.anyio
async def test_non_200_status_is_a_result_not_an_error(respx_mock: respx.MockRouter) -> None:
    """A 500 answer is returned with its status; deciding what it means is the caller's job."""
    respx_mock.get(URL).respond(500, text="oops")
    result = await get(HttpClientPool())
    assert (result.status, result.body) == (500, b"oops")


@pytest.mark.anyio
async def test_post_form_sends_form_and_headers(respx_mock: respx.MockRouter) -> None:
    """``post_form`` sends an url-encoded form with the given headers."""
    route = respx_mock.post("https://idp.example.com/introspect").respond(200, json={"active": False})
    pool = HttpClientPool()
    result = await pool.post_form(
        "https://idp.example.com/introspect",
        {"token": "abc", "token_type_hint": "access_token"},
        headers={"Authorization": "Basic eDp5"},
        timeout=5.0,
        max_bytes=1024,
    )
    request = route.calls.last.request
    assert result.json_object("x") == {"active": False}
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic eDp5"
    assert request.content == b"token=abc&token_type_hint=access_token"


# -- size cap ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_body_over_the_cap_is_refused(respx_mock: respx.MockRouter) -> None:
    """A body larger than ``max_bytes`` raises FetchError naming the URL, however it is framed."""
    respx_mock.get(URL).respond(200, content=b"x" * 2048)
    with pytest.raises(FetchError, match=r"GET https://idp\.example\.com/jwks .*1024") as caught:
        await get(HttpClientPool(), max_bytes=1024)
    assert "x" * 16 not in str(caught.value)


@pytest.mark.anyio
async def test_streamed_body_over_the_cap_is_refused(respx_mock: respx.MockRouter) -> None:
    """A body without Content-Length is counted while it is read and refused past the cap."""

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b"y" * 256

    respx_mock.get(URL).mock(return_value=httpx.Response(200, content=chunks()))
    with pytest.raises(FetchError, match="more than 1024 bytes"):
        await get(HttpClientPool(), max_bytes=1024)


@pytest.mark.anyio
async def test_announced_length_over_the_cap_is_refused(respx_mock: respx.MockRouter) -> None:
    """A Content-Length above the cap is refused before the body is read."""
    response = httpx.Response(200, content=b"{}", headers={"Content-Length": str(10**12)})
    respx_mock.get(URL).mock(return_value=response)
    with pytest.raises(FetchError, match="announced"):
        await get(HttpClientPool(), max_bytes=1024)


@pytest.mark.anyio
async def test_body_exactly_at_the_cap_is_accepted(respx_mock: respx.MockRouter) -> None:
    """The cap is inclusive: a body of exactly ``max_bytes`` is read."""
    respx_mock.get(URL).respond(200, content=b"z" * 1024)
    assert len((await get(HttpClientPool(), max_bytes=1024)).body) == 1024


# -- content codings: counted after decoding, never decoded past the cap ---------------------------------


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    """The body as a stream of 16 KiB chunks without a Content-Length, as a server streams it."""
    for start in range(0, len(body), 16384):
        yield body[start : start + 16384]


def _gzip(data: bytes, *, wbits: int = 31) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.anyio
async def test_requests_ask_for_the_identity_coding(respx_mock: respx.MockRouter) -> None:
    """``Accept-Encoding: identity``, whatever headers the caller passes."""
    route = respx_mock.get(URL).respond(200, json={})
    await get(HttpClientPool())
    assert route.calls.last.request.headers["accept-encoding"] == "identity"


@pytest.mark.anyio
@pytest.mark.parametrize(("coding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), (" GZIP ", 31)])
async def test_a_compressed_answer_is_read_when_a_server_sends_one_anyway(
    respx_mock: respx.MockRouter, coding: str, wbits: int
) -> None:
    document = json.dumps({"keys": [{"kid": str(number)} for number in range(50)]}).encode()
    body = _gzip(document, wbits=wbits)
    respx_mock.get(URL).respond(200, content=body, headers={"Content-Encoding": coding})
    assert (await get(HttpClientPool(), max_bytes=len(document))).body == document
    with pytest.raises(FetchError, match=f"more than {len(document) - 1} bytes"):
        await get(HttpClientPool(), max_bytes=len(document) - 1)  # the cap counts the decoded bytes


@pytest.mark.anyio
async def test_a_decompression_bomb_is_refused_without_being_decompressed(respx_mock: respx.MockRouter) -> None:
    """Found by review: httpx decoded a response before it was counted, so 3.5 KB of stacked gzip became
    4 GiB in memory (and 12 s of a blocked event loop) before any cap applied. A single layer of 256 MiB
    of zeros (≈ 250 KB on the wire) is refused now having decoded at most the cap plus a chunk's slack."""
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = b"".join(zeros.compress(bytes(1 << 20)) for _ in range(256)) + zeros.flush()
    respx_mock.get(URL).mock(
        return_value=httpx.Response(200, content=_chunked(body), headers={"Content-Encoding": "gzip"})
    )
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="more than 1048576 bytes"):
            await get(HttpClientPool(), max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # the compressed body and the cap's worth of zeros, never the 256 MiB


@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd", "compress", "gzip;q=1"])
async def test_other_content_codings_are_refused(respx_mock: respx.MockRouter, coding: str) -> None:
    """Stacked codings (the 4 GiB answer stacked two gzips) and codings nobody asked for are not read."""
    respx_mock.get(URL).respond(200, content=_gzip(_gzip(b"{}")), headers={"Content-Encoding": coding})
    with pytest.raises(FetchError, match="content coding that is not read"):
        await get(HttpClientPool())


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"not gzip at all", _gzip(b'{"keys": []}')[:-6]])
async def test_a_body_that_does_not_decode_is_a_fetch_error(respx_mock: respx.MockRouter, body: bytes) -> None:
    respx_mock.get(URL).mock(
        return_value=httpx.Response(200, content=_chunked(body), headers={"Content-Encoding": "gzip"})
    )
    with pytest.raises(FetchError, match=r"does not decode|truncated"):
        await get(HttpClientPool())


@pytest.mark.anyio
async def test_a_body_a_response_hook_of_the_callers_client_read_already_is_used(respx_mock: respx.MockRouter) -> None:
    """A client given as ``http_client`` may read answers in a response hook (a wire log, as ``tokenguard demo``'s
    does): the body read there is used, and still counted against the cap."""
    seen: list[bytes] = []

    async def wire_log(response: httpx.Response) -> None:
        seen.append(await response.aread())

    respx_mock.get(URL).mock(side_effect=lambda request: httpx.Response(200, content=_chunked(b'{"keys":[]}')))
    pool = HttpClientPool(lambda: httpx.AsyncClient(event_hooks={"response": [wire_log]}))
    assert (await get(pool)).body == seen[0] == b'{"keys":[]}'
    with pytest.raises(FetchError, match="more than 5 bytes"):  # no Content-Length: counted as read
        await get(pool, max_bytes=5)


# -- failures become FetchError ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("slow")],
    ids=["read", "connect", "pool"],
)
async def test_httpx_timeout_is_a_fetch_error_naming_the_url(respx_mock: respx.MockRouter, error: Exception) -> None:
    """Every httpx timeout becomes FetchError saying which URL timed out, and after how long."""
    respx_mock.get(URL).mock(side_effect=error)
    with pytest.raises(FetchError, match=r"GET https://idp\.example\.com/jwks timed out after 2s") as caught:
        await get(HttpClientPool(), timeout=2.0)
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


@pytest.mark.anyio
async def test_overall_deadline_stops_a_hanging_upstream(respx_mock: respx.MockRouter) -> None:
    """An upstream that never answers is cut off by the overall deadline: FetchError, not a hang."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.get_running_loop().create_future()  # never resolved
        raise AssertionError("unreachable")

    respx_mock.get(URL).mock(side_effect=hang)
    with pytest.raises(FetchError, match=r"idp\.example\.com/jwks timed out"):
        await get(HttpClientPool(), timeout=0.01)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.ReadError("reset"),
        OSError("network unreachable"),
        httpx.InvalidURL("bad"),
    ],
    ids=["connect", "protocol", "read", "oserror", "invalid-url"],
)
async def test_connection_errors_are_fetch_errors(respx_mock: respx.MockRouter, error: Exception) -> None:
    """Connection failures of any kind become FetchError naming the URL and the kind of failure."""
    respx_mock.get(URL).mock(side_effect=error)
    with pytest.raises(FetchError, match=rf"GET https://idp\.example\.com/jwks failed: {type(error).__name__}"):
        await get(HttpClientPool())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>down for maintenance</html>", "not JSON"),
        (b"\xff\xfe\xfa", "not JSON"),
        (b"[1, 2, 3]", "not an object"),
        (b'"keys"', "not an object"),
        (b"null", "not an object"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=["html", "not-utf8", "array", "string", "null", "deeply-nested"],
)
def test_json_object_refuses_what_is_not_a_json_object(body: bytes, message: str) -> None:
    """``json_object`` raises FetchError naming the URL for a non-JSON body or JSON that is not an object."""
    with pytest.raises(FetchError, match=message) as caught:
        HttpResult(200, {}, body).json_object(URL)
    assert URL in str(caught.value)


# -- no secret in any message --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "side_effect",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, content=b"x" * 4096)],
    ids=["connect", "timeout", "too-big"],
)
async def test_post_failure_never_mentions_token_or_secret(respx_mock: respx.MockRouter, side_effect: object) -> None:
    """A failed introspection POST says which URL failed, never the token in the form or the credentials."""
    respx_mock.post("https://idp.example.com/introspect").mock(side_effect=[side_effect])
    with pytest.raises(FetchError) as caught:
        await HttpClientPool().post_form(
            "https://idp.example.com/introspect",
            {"token": TOKEN, "client_secret": SECRET},
            headers={"Authorization": f"Basic {SECRET}"},
            timeout=1.0,
            max_bytes=1024,
        )
    text = f"{caught.value} {caught.value!r}"
    assert "https://idp.example.com/introspect" in text
    assert TOKEN not in text
    assert "eyJ" not in text
    assert SECRET not in text


@pytest.mark.anyio
async def test_credentials_in_the_url_are_not_repeated(respx_mock: respx.MockRouter) -> None:
    """Userinfo and query (where some deployments put an API key) are dropped from messages."""
    url = f"https://reader:{SECRET}@idp.example.com/jwks?api_key={SECRET}"
    respx_mock.get(url__startswith="https://").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(FetchError) as caught:
        await get(HttpClientPool(), url)
    assert SECRET not in str(caught.value)
    assert "reader" not in str(caught.value)
    assert "https://idp.example.com/jwks?..." in str(caught.value)
    with pytest.raises(FetchError) as parsed:
        HttpResult(200, {}, b"nope").json_object(url)
    assert SECRET not in str(parsed.value)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://idp.example.com/jwks", "https://idp.example.com/jwks"),
        ("https://u:p@idp.example.com:8443/jwks", "https://idp.example.com:8443/jwks"),
        ("https://idp.example.com/jwks?key=v#frag", "https://idp.example.com/jwks?..."),
        ("http://[::1]:8080/jwks", "http://[::1]:8080/jwks"),
        ("https://[::1", "<unparsable URL>"),
    ],
)
def test_safe_url(url: str, safe: str) -> None:
    """``safe_url`` keeps scheme, host, port and path, and drops userinfo, query and fragment."""
    assert safe_url(url) == safe


# -- clients per event loop ----------------------------------------------------------------------


def test_one_client_per_event_loop() -> None:
    """Each event loop gets its own client, reused for every call on that loop."""
    pool = HttpClientPool()

    async def clients() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return pool.client(), pool.client()

    first_a, first_b = asyncio.run(clients())
    second_a, _ = asyncio.run(clients())
    assert first_a is first_b
    assert second_a is not first_a


def test_same_pool_fetches_from_two_loops_in_turn(respx_mock: respx.MockRouter) -> None:
    """A pool used from one ``asyncio.run`` and then another keeps working (no client bound to a dead loop)."""
    respx_mock.get(URL).respond(200, json={"ok": True})
    pool = HttpClientPool()
    assert asyncio.run(get(pool)).status == 200
    assert asyncio.run(get(pool)).status == 200
    assert respx_mock.routes[0].call_count == 2


def test_clients_of_closed_loops_are_forgotten() -> None:
    """A client made for a loop that has closed (but is still referenced) is dropped when another loop asks."""
    pool = HttpClientPool()

    async def client() -> httpx.AsyncClient:
        return pool.client()

    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    try:
        first = loops[0].run_until_complete(client())
        loops[0].close()
        second = loops[1].run_until_complete(client())
        assert second is not first
        assert list(pool._clients.values()) == [second]
    finally:
        loops[1].run_until_complete(pool.aclose())
        loops[1].close()


def test_factory_is_called_once_per_loop() -> None:
    """A client factory given as ``http_client`` is called once for each event loop."""
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    pool = HttpClientPool(factory)

    async def clients() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return pool.client(), pool.client()

    assert asyncio.run(clients()) == (made[0], made[0])
    asyncio.run(clients())
    assert len(made) == 2


@pytest.mark.anyio
async def test_given_client_is_used_as_is_and_left_open(respx_mock: respx.MockRouter) -> None:
    """A client the user passes is used for requests and is not closed by ``aclose``."""
    respx_mock.get(URL).respond(200, json={})
    async with httpx.AsyncClient() as given:
        pool = HttpClientPool(given)
        assert pool.client() is given
        await get(pool)
        await pool.aclose()
        assert not given.is_closed


@pytest.mark.anyio
async def test_aclose_closes_own_client_and_a_new_one_follows() -> None:
    """``aclose`` closes the pool's client for the running loop; a later call gets a fresh one."""
    pool = HttpClientPool()
    first = pool.client()
    await pool.aclose()
    assert first.is_closed
    second = pool.client()
    assert second is not first
    assert not second.is_closed
    await pool.aclose()


# -- the Python 3.10 deadline --------------------------------------------------------------------


@pytest.mark.anyio
async def test_fallback_deadline_raises_timeout_error() -> None:
    """The Python 3.10 stand-in for ``asyncio.timeout`` turns its own cancellation into TimeoutError."""
    with pytest.raises(TimeoutError):
        async with _Timeout(0.0):
            await asyncio.get_running_loop().create_future()


@pytest.mark.anyio
async def test_fallback_deadline_lets_fast_work_finish() -> None:
    """Work that finishes before the deadline is untouched, and the timer is cancelled."""
    deadline = _Timeout(60.0)
    async with deadline:
        value = json.loads("[1]")
    assert value == [1]
    assert deadline._handle is not None
    assert deadline._handle.cancelled()
