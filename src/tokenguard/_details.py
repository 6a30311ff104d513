"""RFC 9396 Rich Authorization Requests on the resource server: ``authorization_details`` checks. [core]

What a route's ``@require_authorization_details`` guards see (``RequestContext``), how they run
(``DetailsGuard``: the check's own refusal, or 403 ``insufficient_scope``; a broken check refuses,
never a 500), the token's entries (``authorization_details_of``, RFC 9396 §2), and the request data
they may look at: path parameters, the query, and on ``@sensitive`` routes the JSON body, read once
(size-capped) and replayed to the endpoint (``read_body``, ``parse_json_body``). Framework-free: it
speaks ASGI messages, not a framework's request objects.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from tokenguard._strictjson import strict_loads
from tokenguard.errors import AuthError, InsufficientScope, InvalidRequest, InvalidToken, Reason
from tokenguard.models import AccessToken

logger = logging.getLogger("tokenguard")

#: An ASGI ``receive``: the details code reads the body through it and hands the app a replay.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


@dataclass(frozen=True)
class RequestContext:
    """What an ``authorization_details`` check sees of the request; framework-free and read-only.

    ``query`` maps each name to its last value, as Starlette's ``request.query_params[name]`` and
    FastAPI's scalar query parameters read it; ``query_items`` has every pair in order. ``body`` is
    the parsed JSON body on ``@sensitive`` routes (``None`` when empty, and on other routes).
    """

    method: str
    path: str
    token: AccessToken
    path_params: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    query_items: tuple[tuple[str, str], ...] = ()
    body: Any = None


#: ``check(entry, request) -> bool`` (or an awaitable of it): ``True`` when ``entry`` covers the request.
DetailsCheck = Callable[[dict[str, Any], RequestContext], "bool | Awaitable[bool]"]


@dataclass(frozen=True)
class DetailsGuard:
    """One ``@require_authorization_details`` mark: an entry of ``type`` that ``check`` accepts."""

    type: str
    check: DetailsCheck | None = None

    async def enforce(self, entries: tuple[dict[str, Any], ...], context: RequestContext) -> None:
        """Pass when one entry of this type is accepted by the check; else raise the refusal."""
        candidates = [entry for entry in entries if entry["type"] == self.type]
        if not candidates:
            raise _details_denied(f'The access token grants no authorization_details of type "{self.type}".')
        if self.check is None:
            return
        refusal: AuthError | None = None
        for entry in candidates:
            try:
                if await self._run(entry, context):
                    return
            except AuthError as exc:  # the check's own refusal, with its own description
                refusal = refusal or exc
        raise refusal or _details_denied(
            f'The request is not covered by the access token\'s authorization_details of type "{self.type}".'
        )

    async def _run(self, entry: dict[str, Any], context: RequestContext) -> bool:
        assert self.check is not None
        try:
            # A copy: a check that edits its entry must not edit the claims of a cached token.
            result = self.check(copy.deepcopy(entry), context)
            if inspect.isawaitable(result):
                result = await result
        except AuthError as exc:
            if isinstance(exc, InsufficientScope) and exc.reason == Reason.INSUFFICIENT_SCOPE:
                # The check's own 403, counted as an authorization_details refusal (a new error: the
                # check's exception is never edited after it was raised).
                denied = InsufficientScope(
                    exc.required, exc.description, reason=Reason.INSUFFICIENT_AUTHORIZATION_DETAILS
                )
                raise denied from exc
            raise
        except Exception as exc:
            # A broken check refuses (fail closed, 403), never a 500; the log names the check, not the data.
            name = getattr(self.check, "__qualname__", type(self.check).__name__)
            logger.error(
                "tokenguard: authorization_details check %s for type %r raised %s; refusing the request",
                name,
                self.type,
                type(exc).__name__,
            )
            raise _details_denied(
                f'The access token\'s authorization_details of type "{self.type}" could not be checked.',
                reason=Reason.AUTHORIZATION_DETAILS_CHECK_FAILED,
            ) from exc
        # Only an explicit True allows: a check that forgets to return (None) refuses.
        return result is True


def _details_denied(
    description: str, *, reason: Reason = Reason.INSUFFICIENT_AUTHORIZATION_DETAILS
) -> InsufficientScope:
    # RFC 6750 §3.1 insufficient_scope: the token is valid but does not grant this request (RFC 9396 §9).
    return InsufficientScope((), description, reason=reason)


def authorization_details_of(claims: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """The ``authorization_details`` of a token (empty when absent); 401 when malformed."""
    if "authorization_details" not in claims:
        return ()
    value = claims["authorization_details"]
    # RFC 9396 §2: a JSON array of JSON objects, each with a "type" string (REQUIRED).
    if not isinstance(value, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"] for entry in value
    ):
        raise InvalidToken("bad_claim", "The access token's authorization_details claim is malformed.")
    # Each request's checks get their own copies: a check that edits an entry cannot change what the
    # next request with the same (cached) token is checked against.
    return tuple(copy.deepcopy(value))


def parse_json_body(data: bytes) -> Any:
    """The request body as JSON for the checks: ``None`` when empty, 400 when it is not strict JSON."""
    if not data.strip():
        return None
    try:
        return strict_loads(data, object_only=False, max_depth=None)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidRequest("bad_request_body", "The request body is not valid JSON.") from exc


async def enforce_details(guards: Sequence[DetailsGuard], token: AccessToken, context: RequestContext) -> None:
    """RFC 9396 §9: each required type has an entry in the token that the route's check accepts."""
    if not guards:
        return
    entries = authorization_details_of(token.claims)
    for guard in guards:
        await guard.enforce(entries, context)


async def check_details(
    scope: Mapping[str, Any],
    receive: Receive,
    guards: Sequence[DetailsGuard],
    path_params: Mapping[str, Any],
    token: AccessToken,
    *,
    read_body_too: bool,
    max_body_bytes: int,
) -> Receive:
    """Run a route's ``authorization_details`` guards; return the ``receive`` the app must use.

    The body is read only when the checks may look at it (``read_body_too``: ``@sensitive`` routes),
    and only after the token passed every other check, so an anonymous client cannot make us
    buffer anything.
    """
    body: Any = None
    if read_body_too and scope["type"] == "http":
        data, receive = await read_body(scope, receive, max_body_bytes)
        body = parse_json_body(data)
    # As Starlette's QueryParams reads it: latin-1, blank values kept; ``query`` keeps each name's last value.
    raw_query = scope.get("query_string", b"")
    items = tuple(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else ()
    context = RequestContext(
        method=scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET",
        path=scope["path"],
        token=token,
        path_params=path_params,
        query=dict(items),
        query_items=items,
        body=body,
    )
    await enforce_details(guards, token, context)
    return receive


async def read_body(scope: Mapping[str, Any], receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Read the whole body (at most ``limit`` bytes) and return it with a ``receive`` that replays it."""
    declared = next((value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"), b"")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        # Refused before reading a byte: the announced size alone is over the cap.
        raise InvalidRequest("bad_request_body", "The request body is too large.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise InvalidRequest("bad_request_body", "The request body was not received completely.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest("bad_request_body", "The request body is too large.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    data = b"".join(chunks)
    replayed = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()  # after the body: http.disconnect, when the client goes

    return data, replay
