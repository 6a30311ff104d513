"""The one seam between tokenguard and its HTTP client library.

Everything that talks to an issuer goes through here, so moving from ``httpx`` to ``httpx2`` is a
change to this module alone. Foreign exceptions are translated once, at this boundary, into
``FetchError`` (httpx ``map_httpcore_exceptions`` style); callers turn that into a 503.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import sys
import weakref
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tokenguard._strictjson import NotAnObject, strict_loads

#: What a user may pass as ``http_client``: a client used as given, or a factory called per event loop.
HttpClientOption = httpx.AsyncClient | Callable[[], httpx.AsyncClient] | None

_USER_AGENT = "tokenguard"


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext | bool:
    """httpx's own default TLS context (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set), built once.

    ``httpx.AsyncClient()`` builds a new one each time, loading the whole CA bundle: ≈ 23 ms, paid by
    every guard for every event loop it serves (issue 16). One context serves any number of clients;
    ``True`` (httpx builds its own) where httpx has no public ``create_ssl_context``.
    """
    create = getattr(httpx, "create_ssl_context", None)
    return create() if callable(create) else True


class FetchError(Exception):
    """An upstream call failed; the message names the URL and the cause, never a token.

    ``status`` is the HTTP status when the server answered (a 4xx/5xx), ``None`` for a transport
    failure, a timeout or an unusable body.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def safe_url(url: str) -> str:
    """``url`` fit for a message: userinfo and query dropped, since either may hold a credential."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = "?..." if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


@dataclass(frozen=True)
class HttpResult:
    """A fully read, size-bounded response."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json_object(self, url: str) -> dict[str, Any]:
        """Parse the body as a JSON object, or raise ``FetchError``.

        Strict (``_strictjson``): duplicate member names and NaN/Infinity (or a number no double can
        hold) are refused, as in tokens: with two ``jwks_uri`` or two ``keys`` members, two readers
        could each see a different one. Read as ``json.loads`` read it otherwise: UTF-16/32 and a
        UTF-8 BOM are accepted, and depth is bounded by the size cap and Python's recursion limit.
        """
        try:
            return strict_loads(self.body, max_depth=None, lone_surrogates=True, detect_encoding=True)
        except NotAnObject as exc:
            raise FetchError(f"{safe_url(url)} returned JSON that is not an object") from exc
        except ValueError as exc:
            raise FetchError(f"{safe_url(url)} returned a body that is not JSON") from exc


class HttpClientPool:
    """Hands out one ``httpx.AsyncClient`` per running event loop, created lazily.

    One app may be driven by several loops in turn (``asyncio.run`` called more than once, a test
    suite with a loop per test); a client, its connection pool and its locks belong to the loop that
    made them, so none is built at import or construction. A client the user supplied is used as
    given; a factory is called once per loop.
    """

    def __init__(self, client: HttpClientOption = None, *, timeout: float = 5.0) -> None:
        self._given = client if isinstance(client, httpx.AsyncClient) else None
        self._factory = None if isinstance(client, httpx.AsyncClient) else client
        self._timeout = timeout
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            self._drop_dead_loops()
            client = self._factory() if self._factory is not None else self._new_client()
            self._clients[loop] = client
        return client

    def _drop_dead_loops(self) -> None:
        # A client's connections belong to its loop; once that loop is closed the client is useless
        # (and cannot be closed from another loop), so it is only forgotten.
        for loop in [loop for loop in list(self._clients) if loop.is_closed()]:
            self._clients.pop(loop, None)

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=_default_tls(),
            timeout=self._timeout,
            follow_redirects=False,
            headers={"User-Agent": _USER_AGENT},
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        """Close the client of the running loop (user-supplied clients are left to their owner)."""
        if self._given is not None:
            return
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def get(self, url: str, *, timeout: float, max_bytes: int) -> HttpResult:
        return await self._send("GET", url, timeout=timeout, max_bytes=max_bytes)

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        headers: Mapping[str, str],
        timeout: float,
        max_bytes: int,
    ) -> HttpResult:
        return await self._send("POST", url, timeout=timeout, max_bytes=max_bytes, form=form, headers=headers)

    async def post_json(
        self, url: str, document: Any, *, headers: Mapping[str, str], timeout: float, max_bytes: int
    ) -> HttpResult:
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **headers}
        return await self._send("POST", url, timeout=timeout, max_bytes=max_bytes, content=body, headers=headers)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        max_bytes: int,
        form: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResult:
        # Identity only: a compressed answer would be decompressed past every size cap before it is
        # counted (a few KiB of stacked gzip are gigabytes); ``_read_bounded`` reads what is sent anyway.
        request_headers = {"Accept": "application/json", **(headers or {}), "Accept-Encoding": "identity"}
        # Messages name the URL without userinfo or query, and never the form (it holds the token).
        where = f"{method} {safe_url(url)}"
        try:
            async with (
                _deadline(timeout),
                self.client().stream(
                    method, url, data=form, content=content, headers=request_headers, timeout=timeout
                ) as response,
            ):
                body = await _read_bounded(response, max_bytes, where)
                return HttpResult(response.status_code, dict(response.headers), body)
        except FetchError:
            raise
        except (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException) as exc:
            raise FetchError(f"{where} timed out after {timeout:g}s") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchError(f"{where} failed: {type(exc).__name__}") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            # Transports (ASGI, mocks) may raise plain errors; they are failures to fetch all the same.
            raise FetchError(f"{where} failed: {type(exc).__name__}") from exc


#: RFC 9110 §8.4.1: the codings read despite ``Accept-Encoding: identity`` (a server may ignore it), with
#: their ``zlib`` window: the gzip wrapper (§8.4.1.3), the zlib wrapper of "deflate" (§8.4.1.2).
_ZLIB_WINDOW = {"gzip": 31, "x-gzip": 31, "deflate": 15}


async def _read_bounded(response: httpx.Response, max_bytes: int, where: str) -> bytes:
    """The body, refused as soon as it (or its announced length) passes ``max_bytes``.

    Counted after decoding: the bytes read from the socket are decompressed here, never more than what
    still fits plus one byte per chunk (``max_length``), so a small compressed answer cannot become a
    large one in memory first. One gzip or deflate coding is read; any other (stacked ones included)
    is refused.
    """
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise FetchError(f"{where} announced {declared} bytes, more than the {max_bytes} allowed")
    if response.is_stream_consumed:
        # An event hook of the caller's own client read (and httpx decoded) the body already.
        body = response.content
        if len(body) > max_bytes:
            raise FetchError(f"{where} returned more than {max_bytes} bytes")
        return body
    coding = response.headers.get("content-encoding", "").strip().lower()
    inflate = None
    if coding not in ("", "identity"):
        if coding not in _ZLIB_WINDOW:
            raise FetchError(f"{where} answered with a content coding that is not read ({coding[:40]!r})")
        inflate = zlib.decompressobj(_ZLIB_WINDOW[coding])
    chunks: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            chunk = raw if inflate is None else inflate.decompress(raw, max_bytes - size + 1)
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{where} returned more than {max_bytes} bytes")
            chunks.append(chunk)
    except zlib.error as exc:
        raise FetchError(f"{where} returned a body that does not decode as {coding}") from exc
    if inflate is not None and not inflate.eof:
        raise FetchError(f"{where} returned a truncated {coding} body")
    return b"".join(chunks)


class _Timeout:
    """``asyncio.timeout`` for Python 3.10, which lacks it."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self._delay, self._expire)

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - exercised on Python 3.10 only
    _deadline = _Timeout
