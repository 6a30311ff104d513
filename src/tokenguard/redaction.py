"""A ``logging.Filter`` that removes bearer tokens and JWT-shaped strings from every log record.

tokenguard never logs a token itself; this filter is for everything else in the process (access logs,
exception messages, a debug print of headers). Attach it to any handler::

    import logging
    from tokenguard.redaction import TokenRedactingFilter

    handler = logging.StreamHandler()
    handler.addFilter(TokenRedactingFilter())
    logging.getLogger().addHandler(handler)

    # uvicorn's own handlers (access log included):
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(TokenRedactingFilter())

What it finds, and replaces with ``[REDACTED]``:

- credentials after an ``Authorization`` scheme (``Bearer``, ``Basic``, ``DPoP``, any casing), and the
  value of an ``Authorization:`` / ``"authorization": ...`` field whatever its scheme;
- JWT-shaped strings (compact JWS/JWE whose first segment is a base64url JSON object), wherever they are;
- ``access_token=``, ``refresh_token=``, ``id_token=``, ``code=``, ``client_secret=``… in URLs and forms,
  ``"access_token": "..."`` in JSON or Python reprs, and passwords in URL userinfo;
- a value whose key names a credential (``{"authorization": "opaque"}``, ``(b"authorization", b"...")``,
  ``extra={"access_token": ...}``), and an argument placed right after such a key or scheme in the
  message (``logger.info("token=%s", opaque)``).

It rewrites the message, its arguments (keeping their types and number, so formatters such as uvicorn's
access log that unpack ``record.args`` keep working), extra fields (nested containers too), bytes, objects
whose ``str``/``repr`` shows a token, the exception text and traceback, and ``stack_info``. The record is
changed in place, so handlers that see it later see the redacted record too. The live exception is
dropped from the record (its formatted, redacted text is kept in ``exc_text``): a formatter must not
render its raw message.

It never drops a record and never raises (a filter that raises breaks the caller's log call): a record it
cannot rewrite is blanked instead. A JWT-shaped string is cut up to the first character that cannot be
part of it, base64's ``+`` and ``/`` included, so a JWT inside a URL path takes the rest of the path
with it. An opaque token logged with no scheme, key or shape around it cannot be told from any other
string.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import traceback
from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Characters that may belong to a credential: anything but whitespace, quotes and bracketing punctuation
# (a malformed token is as secret as a well-formed one, so this is wider than RFC 6750 §2.1 b64token).
_CRED = r"[^\s\"'`,;<>()\[\]{}]"
# Words that follow "bearer"/"basic" in prose and challenges ("Bearer realm=", "basic auth"): not secrets.
_PROSE = (
    r"(?:of|the|a|an|and|or|to|is|in|for|token|tokens|access|auth|authentication|authorization|scheme|realm"
    r"|credential|credentials|header|challenge|error|error_description|scope)"
)
_SCHEMES = r"(?:bearer|basic|dpop)"
# Keys whose value is a credential in URLs and form bodies (RFC 6750 §2.3, RFC 6749 §4.1.2, RFC 7521 §4.2).
_URL_KEYS = (
    r"(?:access_token|refresh_token|id_token|subject_token|actor_token|token|device_code|client_secret"
    r"|client_assertion|assertion|password)"
)
# Keys whose value is a credential in JSON, Python reprs and header-style text ("token" only as a quoted
# member name or a keyword argument with a quoted value, token='...': "token: expired" is prose).
_FIELD_KEYS = (
    r"(?:access_token|refresh_token|id_token|subject_token|actor_token|client_secret|client_assertion|password)"
)
_FIELD_KEY = rf"(?:[\"']?\b{_FIELD_KEYS}[\"']?|[\"']token[\"']|\btoken(?=\s*=\s*b?[\"']))"

_AUTH_FIELD = re.compile(
    # Authorization: <scheme> <credentials> (RFC 9110 §11.6.2), and the same as a JSON/dict field; the scheme
    # is kept, whatever it is, and the credentials go.
    rf"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:b[\"'])?(?:[A-Za-z][\w-]*[ \t]+)?)"
    rf"(?!\[REDACTED\]|{_SCHEMES}(?:\s|$)){_CRED}+"
)
_SCHEME_CREDENTIALS = re.compile(
    # RFC 6750 §2.1 "Bearer" 1*SP b64token, RFC 7617 Basic, RFC 9449 DPoP; the scheme is case-insensitive.
    rf"(?i)\b({_SCHEMES})((?:[ \t]|%20)+)(?!{_PROSE}(?:[\s=,;\"']|$))(?!\[REDACTED\])({_CRED}+)"
)
# Candidates for a compact JWS/JWE (RFC 7515 §7.1, RFC 7516 §7.1): a first segment that starts like
# base64url of "{" ("ey" / "ew"), then one to four more dot-separated segments; padding and "+/" too.
# A candidate is redacted only when its first segment decodes to the start of a JSON object.
_JOSE_CANDIDATE = re.compile(r"e[wy][A-Za-z0-9_\-+/]*=*(?:\.[A-Za-z0-9_\-+/]*=*){1,4}")
_JOSE_START = re.compile(r"e[wy]")
_JSON_OBJECT_START = re.compile(rb"\s*\{\s*\"")
# "code" alone is too common a word ("status code=401"): only as a query or form parameter (RFC 6749 §4.1.2).
_URL_CREDENTIAL = re.compile(rf"(?i)(\b{_URL_KEYS}=|(?:(?<=[?&#;])|^)code=)(?!\[REDACTED\])[^&\s#\"'<>]+")
_FIELD_CREDENTIAL = re.compile(rf"(?i)({_FIELD_KEY}\s*[:=]\s*(?:b?[\"'])?)(?!\[REDACTED\]|{_SCHEMES}\s)[^\"',\s}}\]]+")
# RFC 3986 §3.2.1: "user:password@" in a URL; the password goes.
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@\"']*):[^/\s@\"']+@")

# A message argument right after one of these is a credential whatever it looks like.
_CREDENTIAL_CONTEXT = re.compile(
    rf"(?i)(?:\b{_SCHEMES}\s+|\b{_URL_KEYS}=|(?:(?<=[?&#;])|^)code=|\b(?:access[ _-]?)?token\s+"
    rf"|(?:{_FIELD_KEY}|[\"']?\b(?:proxy-)?authorization[\"']?)\s*[:=]\s*(?:b?[\"'])?(?:[A-Za-z][\w-]*[ \t]+)?)$"
)
# One %-conversion of a log message (the printf-style that ``LogRecord.getMessage`` applies).
_CONVERSION = re.compile(r"%(?:\((?P<key>[^)]*)\))?[#0+ \-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?(?P<type>[a-zA-Z%])")

#: Names (lowercase) whose value is a credential, as dict keys, header names and ``extra`` fields.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "access_token",
        "refresh_token",
        "id_token",
        "subject_token",
        "actor_token",
        "token",
        "client_secret",
        "client_assertion",
        "password",
        "dpop",
        "cookie",
        "set-cookie",
    }
)
_NEUTRAL = (int, float, bool, type(None))
_MAX_DEPTH = 16
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with every bearer credential and JWT-shaped string replaced by ``[REDACTED]``."""
    text = _AUTH_FIELD.sub(r"\1" + REDACTED, text)
    text = _SCHEME_CREDENTIALS.sub(_scheme, text)
    text = _JOSE_CANDIDATE.sub(_jose, text)
    text = _URL_CREDENTIAL.sub(r"\1" + REDACTED, text)
    text = _FIELD_CREDENTIAL.sub(r"\1" + REDACTED, text)
    return _USERINFO.sub(r"\1:" + REDACTED + "@", text)


def _scheme(match: re.Match[str]) -> str:
    """Redact the credentials after a scheme; for Basic, only what decodes to ``user:password`` (RFC 7617 §2)."""
    scheme, space, credentials = match.groups()
    if scheme.lower() == "basic" and not _is_basic_pair(credentials):
        return match.group(0)  # "a basic check": prose, not credentials
    return f"{scheme}{space}{REDACTED}"


def _is_basic_pair(credentials: str) -> bool:
    text = credentials.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _jose(match: re.Match[str]) -> str:
    """Redact from the first point of a candidate where a JOSE header (base64url of '{"') starts.

    Glued text ("...%3DeyJ...", "reviewing.eyJ...") may start the candidate early, so each later
    "ew"/"ey" in it is tried in turn.
    """
    candidate = match.group(0)
    start: int | None = 0
    while start is not None:
        if _is_jose_header(candidate[start:].split(".", 1)[0]):
            return candidate[:start] + REDACTED
        following = _JOSE_START.search(candidate, start + 1)
        start = following.start() if following is not None else None
    return candidate


def _is_jose_header(segment: str) -> bool:
    head = segment.rstrip("=")[:16]
    head = head[: len(head) - len(head) % 4]
    try:
        decoded = base64.urlsafe_b64decode(head.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        return False
    return _JSON_OBJECT_START.match(decoded) is not None


class _Shown:
    """Stands in for an object whose ``str``/``repr`` shows a credential: both are redacted.

    Other attributes are read from the object itself, so a handler that looks into it (a request object
    an error reporter reads) keeps working; only its text form is replaced.
    """

    __slots__ = ("_original", "_repr", "_str")

    def __init__(self, original: object, text: str, representation: str) -> None:
        self._original = original
        self._str = text
        self._repr = representation

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _redact_value(value: Any, key: object = None, depth: int = 0) -> Any:
    """``value`` with credentials removed, of the same type where it can be (str, bytes, containers)."""
    if isinstance(value, _NEUTRAL):
        return value
    if depth > _MAX_DEPTH:  # deeply nested or cyclic: judged by its text, which Python bounds
        return _redact_object(value)
    deeper = depth + 1
    if _is_sensitive_key(key) and isinstance(value, (str, bytes, bytearray)):
        return _redact_credential(value)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bytes, bytearray)):
        return type(value)(redact(bytes(value).decode("latin-1")).encode("latin-1"))
    if isinstance(value, tuple):
        if len(value) == 2 and _is_sensitive_key(value[0]):  # a (name, value) header pair
            return (value[0], _redact_value(value[1], value[0], deeper))
        items = [_redact_value(item, None, deeper) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_redact_value(item, None, deeper) for item in value]
    if isinstance(value, (set, frozenset)):
        return type(value)(_redact_value(item, None, deeper) for item in value)
    if isinstance(value, dict):
        return {_redact_value(name, None, deeper): _redact_value(item, name, deeper) for name, item in value.items()}
    return _redact_object(value)


def _redact_object(value: Any) -> Any:
    """Any other object: kept as is unless its ``str`` or ``repr`` shows a credential."""
    try:
        text, representation = str(value), repr(value)
    except Exception:  # a broken __str__ fails the same way when the record is formatted
        return value
    clean_text, clean_repr = redact(text), redact(representation)
    if clean_text == text and clean_repr == representation:
        return value
    return _Shown(value, clean_text, clean_repr)


def _is_sensitive_key(key: object) -> bool:
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).decode("latin-1")
    return isinstance(key, str) and key.lower() in SENSITIVE_KEYS


def _redact_credential(value: str | bytes | bytearray) -> Any:
    """The value of a credential field: the scheme word (if any) is kept, the rest goes."""
    text = value if isinstance(value, str) else bytes(value).decode("latin-1")
    scheme, _, rest = text.strip().partition(" ")
    clean = f"{scheme} {REDACTED}" if rest and re.fullmatch(r"[A-Za-z][\w-]*", scheme) else REDACTED
    return clean if isinstance(value, str) else type(value)(clean.encode("latin-1"))


def _redact_args(msg: str, args: tuple[Any, ...] | Mapping[str, Any]) -> tuple[str, Any]:
    """Redact a %-style message and its arguments, keeping every conversion and the arguments' types.

    Literal text is redacted piece by piece (so no conversion is ever eaten); each argument is redacted
    by itself, and replaced whole when the text rendered before it ends in a scheme or credential key.
    """
    mapping = args if isinstance(args, Mapping) else None
    positional = list(args) if mapping is None else []
    clean_mapping: dict[Any, Any] = {}
    pieces: list[str] = []
    rendered: list[str] = []
    index, position = 0, 0
    for match in _CONVERSION.finditer(msg):
        literal = redact(msg[position : match.start()])
        pieces.append(literal)
        rendered.append(literal)
        pieces.append(match.group(0))
        position = match.end()
        if match.group("type") == "%":
            rendered.append("%")
            continue
        if "*" in match.group(0):
            raise ValueError("'*' widths are not followed")
        key = match.group("key")
        if mapping is not None and key is None:
            # "%s" % {...}: the one mapping argument is the value (logging unwraps a lone dict argument).
            rendered.append(match.group(0) % (_redact_value(dict(mapping)),))
            continue
        if mapping is not None:
            value = clean_mapping[key] if key in clean_mapping else _redact_value(mapping[key], key)
        else:
            value = _redact_value(positional[index])
        if _CREDENTIAL_CONTEXT.search("".join(rendered)[-200:]):
            value = _replace_whole(value)
        if mapping is not None:
            clean_mapping[key] = value
        else:
            positional[index] = value
            index += 1
        rendered.append(match.group(0) % ({key: value} if key is not None else (value,)))
    pieces.append(redact(msg[position:]))
    if mapping is not None:
        clean: Any = {**{k: _redact_value(v, k) for k, v in mapping.items()}, **clean_mapping}
    elif index != len(positional):
        raise TypeError("not all arguments converted")  # logging would print them raw to stderr
    else:
        clean = tuple(positional)
    return "".join(pieces), clean


def _redact_template(template: str) -> str:
    """A %-template (uvicorn's ``color_message``) with its literal text redacted and its conversions kept."""
    pieces: list[str] = []
    position = 0
    for match in _CONVERSION.finditer(template):
        pieces += [redact(template[position : match.start()]), match.group(0)]
        position = match.end()
    pieces.append(redact(template[position:]))
    return "".join(pieces)


def _replace_whole(value: Any) -> Any:
    """An argument in a credential position: strings and bytes go whole, unless already redacted."""
    if isinstance(value, str):
        return value if REDACTED in value else REDACTED
    if isinstance(value, (bytes, bytearray)):
        return value if REDACTED.encode() in value else type(value)(REDACTED.encode())
    if isinstance(value, _NEUTRAL):
        return value
    return value if REDACTED in str(value) else _Shown(value, REDACTED, REDACTED)


class TokenRedactingFilter(logging.Filter):
    """Redacts tokens from a record in place; never drops a record, never raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception as exc:  # a filter that raises breaks the caller's log call: blank the record instead
            record.msg, record.args = f"<log record withheld: it could not be redacted ({type(exc).__name__})>", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            if "message" in vars(record):
                record.message = record.msg
            for name in list(vars(record)):
                if name not in _STANDARD_ATTRS:
                    setattr(record, name, REDACTED)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        self._message(record)
        for name, value in list(vars(record).items()):
            if name == "color_message" and isinstance(value, str):
                # uvicorn formats this template with record.args: its conversions must survive.
                record.color_message = _redact_template(value)
            elif name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_value(value, name))
        if isinstance(getattr(record, "message", None), str):
            record.message = redact(record.message)
        self._exception(record)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)

    @staticmethod
    def _message(record: logging.LogRecord) -> None:
        msg, args = record.msg, record.args
        if not isinstance(msg, str):
            if isinstance(msg, _NEUTRAL):
                return
            msg = str(msg)  # what getMessage() would do with it
        if not args:
            record.msg = redact(msg)
            return
        try:
            record.msg, record.args = _redact_args(msg, args)
            return
        except (KeyError, IndexError, TypeError, ValueError):
            pass
        # A message its own arguments do not fit: keep what logging would print, redacted.
        record.msg, record.args = redact(_safe_message(record.getMessage)), ()

    @staticmethod
    def _exception(record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            # Format now and drop the live exception: a formatter must not render its raw message.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)


def _safe_message(get_message: Callable[[], str]) -> str:
    try:
        return get_message()
    except Exception as exc:  # logging would report it as an error; the filter must not
        return f"<unformattable log message: {type(exc).__name__}>"
