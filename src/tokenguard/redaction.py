"""A ``logging.Filter`` that removes bearer tokens and JWT-shaped strings from every log record.

tokenguard never logs a token itself; this filter is for everything else in the process (access logs,
exception messages, a debug print of headers). Attach it to any handler::

    handler.addFilter(TokenRedactingFilter())

It rewrites the message, its arguments (keeping their shape, so formatters such as uvicorn's access
log that unpack ``record.args`` keep working), extra fields, and the formatted exception text.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

REDACTED = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization schemes followed by credentials (RFC 6750 §2.1 b64token, RFC 7617 Basic, RFC 9449 DPoP).
    (re.compile(r"(?i)\b(bearer|basic|dpop)(\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1\2" + REDACTED),
    # Compact JWS/JWE: a base64url JSON header ("eyJ" is '{"') followed by two or more segments.
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}"), REDACTED),
    # Credentials in URLs and form bodies (RFC 6750 §2.3 access_token in a query, among others).
    (
        re.compile(
            r"(?i)(\b(?:access_token|refresh_token|id_token|token|code|client_secret|password|assertion)=)"
            r"[^&\s#\"']+"
        ),
        r"\1" + REDACTED,
    ),
    # JSON or header-style fields holding credentials: "access_token": "...", authorization: ...
    (
        re.compile(
            r"(?i)([\"']?\b(?:access_token|refresh_token|id_token|client_secret|authorization)[\"']?\s*[:=]\s*[\"']?)"
            r"(?!\[REDACTED|(?:bearer|basic|dpop)\s)[^\"',\s}]+"
        ),
        r"\1" + REDACTED,
    ),
)

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with every bearer credential and JWT-shaped string replaced by ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    if isinstance(value, tuple):
        return tuple(_redact_value(item) for item in value)
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


class TokenRedactingFilter(logging.Filter):
    """Redacts tokens from a record in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        elif record.msg is not None and not isinstance(record.msg, (int, float)):
            record.msg = redact(str(record.msg))
        if record.args:
            record.args = _redact_value(record.args)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_value(value))
        if record.exc_info and record.exc_info[1] is not None:
            # Format now and drop the live exception: a formatter must not render its raw message.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
