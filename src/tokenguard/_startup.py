"""A misconfigured guard stops the server at startup, with the option named. [adapter]

Starlette and FastAPI build their middleware lazily, on the app's first ASGI call — the lifespan
``startup`` event under a real server. An exception raised there, before the app has answered the
lifespan protocol, is read by uvicorn's and hypercorn's default ``lifespan="auto"`` as "this app
does not speak lifespan": they log a line at INFO/WARNING and serve anyway, and every request then
fails with a traceback. A wrong option must instead keep the server from starting.

So a ``TokenGuard`` built by the framework's lazy builder does not raise: it becomes a
``FailedGuard``, which answers the lifespan ``startup`` with ``lifespan.startup.failed`` carrying
the message (ASGI lifespan spec: the server then logs it and exits) and raises the error after it
(Starlette's router does the same, and its ``TestClient`` re-raises it). If the server runs without
lifespan, every request fails closed: a 500 without details, and an ERROR line with the message.
Built directly (``TokenGuard(app, ...)``), the guard raises ``ConfigurationError`` as it always did.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenguard.challenge import render, send_denial
from tokenguard.errors import ConfigurationError

__all__ = ["FailedGuard", "argument_problem", "built_by_framework", "fail_startup", "startup_message"]

logger = logging.getLogger("tokenguard")

#: How far up the stack a lazy build is looked for (a guard built inside another middleware's
#: ``__init__`` is built lazily too).
_MAX_DEPTH = 64

#: What each required option is, for the message that says it is missing.
_REQUIRED_HELP: Mapping[str, str] = {
    "issuer": "the authorization server's issuer identifier, exactly as its metadata and tokens spell it "
    "(RFC 8414 section 2), e.g. issuer='https://idp.example.com'",
    "audience": "this API's identifier, which every access token must name in 'aud' (RFC 9068 section 4, "
    "RFC 7519 section 4.1.3), e.g. audience='https://photos.example'",
}


def built_by_framework() -> bool:
    """True while a Starlette (or FastAPI) app builds its middleware stack, lazily, on its first call."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame.f_code.co_name == "build_middleware_stack" and isinstance(frame.f_locals.get("self"), Starlette):
            return True
        if frame.f_back is None:
            return False
        frame = frame.f_back
    return False


def argument_problem(function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """What is wrong with calling ``function(app, *args, **kwargs)``, said as a configuration error.

    Python would raise a bare ``TypeError`` ("missing 1 required keyword-only argument"); the guard
    names the option, what it is, and for an unknown one the closest known name.
    """
    parameters = inspect.signature(function).parameters
    known = [name for name in parameters if name not in ("self", "app")]
    if args:
        return f"TokenGuard options are keyword-only: pass them as name=value ({len(args)} positional given)"
    for name in kwargs:
        if name not in parameters or name in ("self", "app"):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{name!r} is not a TokenGuard option{hint}; README lists every option"
    for name, parameter in parameters.items():
        if name in ("self", "app") or parameter.default is not inspect.Parameter.empty or name in kwargs:
            continue
        return f"{name} is required: {_REQUIRED_HELP.get(name, 'see README, Options')}"
    return None


def startup_message(error: ConfigurationError) -> str:
    """The line a server prints when it refuses to start."""
    return f"tokenguard: TokenGuard is misconfigured: {error}"


async def fail_startup(send: Send, error: ConfigurationError) -> None:
    """Answer the lifespan ``startup`` event with ``startup.failed`` and the message."""
    logger.critical("%s", startup_message(error))
    await send({"type": "lifespan.startup.failed", "message": startup_message(error)})


class FailedGuard:
    """Stands where a misconfigured ``TokenGuard`` would: refuses to start, and refuses every request."""

    def __init__(self, app: ASGIApp, error: ConfigurationError) -> None:
        self.app = app
        self.error = error
        self._logged = False
        logger.critical("%s", startup_message(error))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": startup_message(self.error)})
            raise self.error
        if scope["type"] not in ("http", "websocket"):
            raise self.error
        # A server without lifespan: fail closed, the details in the log — once, not at every request.
        if not self._logged:
            self._logged = True
            logger.error("%s; every request is refused with 500", startup_message(self.error))
        await send_denial(scope, receive, send, render(self.error, realm="tokenguard"))

    def __repr__(self) -> str:
        return f"FailedGuard({self.error})"
