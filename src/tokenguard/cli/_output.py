"""Shared helpers of the ``tokenguard`` command: the printer (colour, and ASCII for a terminal that
cannot show more), durations, dates, token abbreviations, the issuer-URL rule, and why an issuer
could not be reached, in plain words.

Nothing here ever prints a whole token: ``abbreviate`` is the only way a token reaches the screen.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import socket
import ssl
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from tokenguard._http import FetchError, HttpClientOption, HttpClientPool, HttpResult, safe_url
from tokenguard.config import check_issuer, is_loopback_host
from tokenguard.errors import ConfigurationError

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


class CliError(Exception):
    """A failure the command reports as one line on stderr, with its exit code (2 by default)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


#: What the command prints beyond ASCII, and what stands in for it on a stream that cannot encode it.
_ASCII = {
    "→": "->",
    "←": "<-",
    "…": "...",
    "§": "sec. ",
    "—": "--",
    "\u2013": "-",  # en dash
    "✓": "ok",
    "✗": "x",
    "─": "-",
    "│": "|",
    "┌": "+",
    "┐": "+",
    "└": "+",
    "┘": "+",
    "├": "+",
    "┤": "+",
    "µ": "u",
    "\u2018": "'",  # curly quotes
    "\u2019": "'",
    "“": '"',
    "”": '"',
}
_ASCII_TABLE = str.maketrans(_ASCII)
#: Width budget of the text commands: no line they print is longer.
WIDTH = 100


def _encoding(stream: TextIO) -> str:
    """The stream's encoding, normalised (``utf-8`` when it names none, as ``io.StringIO`` does not)."""
    name = getattr(stream, "encoding", None)
    if not isinstance(name, str) or not name:
        return "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "ascii"


def to_ascii(text: str) -> str:
    """``text`` in ASCII: arrows, ellipses, box drawing replaced by look-alikes, anything else escaped."""
    if text.isascii():
        return text
    return text.translate(_ASCII_TABLE).encode("ascii", "backslashreplace").decode("ascii")


def wants_color(stream: TextIO, no_color: bool) -> bool:
    """Colour only on a terminal, and never when ``--no-color`` or ``NO_COLOR`` (no-color.org) says so."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Printer:
    """Writes lines to one stream, with ANSI colour when enabled.

    What the stream's encoding cannot carry (``PYTHONIOENCODING=ascii``, a ``C`` locale, a latin-1
    console) is written in ASCII instead (``->`` for an arrow, ``...`` for an ellipsis): the command
    never fails on its own output.
    """

    def __init__(self, stream: TextIO | None = None, *, color: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.color = color
        encoding = _encoding(self.stream)
        try:
            "".join(_ASCII).encode(encoding)
        except UnicodeEncodeError:
            self.unicode = False
        else:
            self.unicode = True
        self._encoding = encoding

    def fit(self, text: str) -> str:
        """``text`` as this stream will show it (ASCII look-alikes where the encoding needs them)."""
        if self.unicode:
            try:
                text.encode(self._encoding)
            except UnicodeEncodeError:
                return text.encode(self._encoding, "backslashreplace").decode(self._encoding)
            return text
        return to_ascii(text)

    def wrap(self, text: str, *, indent: str = "", width: int = WIDTH) -> list[str]:
        """``text`` in lines of at most ``width`` columns as shown, broken only at spaces (never
        inside a URL or a token abbreviation); every line starts with ``indent``."""
        return textwrap.wrap(
            self.fit(text),
            width=width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )

    def style(self, text: str, *names: str) -> str:
        if not self.color or not names:
            return text
        codes = ";".join(_CODES[name] for name in names)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def line(self, text: str = "") -> None:
        self.stream.write(self.fit(text) + "\n")

    def json(self, document: Any) -> None:
        # On a stream that cannot carry every character, \uXXXX escapes keep the document whole.
        text = json.dumps(document, indent=2, sort_keys=False, ensure_ascii=not self.unicode, default=str)
        self.stream.write(self.fit(text) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "  ") -> None:
        """A plain left-aligned table; colour is never used inside cells so widths stay right."""
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        self.line(indent + self.style(_join(headers, widths), "bold"))
        for row in rows:
            self.line(indent + _join(row, widths))


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def abbreviate(token: str, keep: int = 7) -> str:
    """``eyJhbGc…(812 chars)``: enough to tell tokens apart, never enough to use one."""
    if len(token) <= keep:
        return f"…({len(token)} chars)"
    return f"{token[:keep]}…({len(token)} chars)"


def duration(seconds: float) -> str:
    """``42s``, ``4m 10s``, ``2h``, ``2h 5m``, ``3d 4h``: at most two units, zero units dropped."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next((i for i, (value, _) in enumerate(units) if value), len(units) - 1)
    shown = [f"{value}{unit}" for value, unit in units[first : first + 2] if value]
    return " ".join(shown) or "0s"


def utc(timestamp: float) -> str:
    """A NumericDate as ``2027-01-15 08:00:00 UTC``; out-of-range values are shown as they are."""
    try:
        return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp!r} (out of range)"


# -- the issuer URL: the library's one rule, said the same way by every command ---------------


def checked_issuer(issuer: str) -> str:
    """``issuer`` when TokenGuard would accept it (``tokenguard.config.check_issuer``: https, or plain
    http on loopback only; no query or fragment), else ``CliError`` (exit 2) saying why, in the same
    words for ``inspect`` and ``check``."""
    try:
        return check_issuer(issuer)
    except ConfigurationError as exc:
        reason = str(exc)
        try:
            plain_http = urlsplit(issuer).scheme == "http"
        except ValueError:
            plain_http = False
        if plain_http:
            # RFC 8414 §2: the issuer identifier is an https URL; keys fetched over plain HTTP off
            # this machine can be swapped by anyone on the path.
            reason += (
                " (loopback: localhost, 127.0.0.0/8, ::1; from anywhere else, keys fetched over plain "
                "HTTP could be swapped by anyone on the path)"
            )
        raise CliError(f"TokenGuard refuses this issuer: {reason}") from exc


# -- why an issuer could not be reached -------------------------------------------------------

#: OpenSSL's reasons for a TLS handshake that met something other than TLS (a plain-HTTP answer).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"}
)
#: getaddrinfo's "this name does not exist" (EAI_NODATA: the name exists without an address).
_NO_SUCH_NAME = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None
)
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})


@dataclass(frozen=True)
class Unreachable:
    """Why one URL could not be fetched: a stable ``code`` for ``--json``, and plain words."""

    code: str
    message: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (``__cause__``, ``__context__``, an exception group's
    members), each once, breadth first, at most 64."""
    seen: set[int] = set()
    queue = [exc]
    while queue and len(seen) < 64:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue.extend(inner for inner in (current.__cause__, current.__context__) if inner is not None)
        members = getattr(current, "exceptions", None)
        if isinstance(members, (tuple, list)):
            queue.extend(member for member in members if isinstance(member, BaseException))


def _first(chain: Sequence[BaseException], kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    return next((exc for exc in chain if isinstance(exc, kind)), None)


def _where(url: str) -> tuple[str, str, str]:
    """(scheme, host, ``host:port``) of ``url``, the port filled in from the scheme."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "", "?", "?"
    shown = f"[{host}]" if ":" in host else host
    return parts.scheme, host, f"{shown}:{port}"


def unreachable(exc: BaseException, url: str, *, timeout: float) -> Unreachable:
    """Why fetching ``url`` failed, read from the exception and the ones behind it (the httpx error
    and its OS or TLS cause), never from their text."""
    chain = list(_chain(exc))
    scheme, host, hostport = _where(url)
    certificate = _first(chain, ssl.SSLCertVerificationError)
    if certificate is not None:
        detail = certificate.verify_message or certificate.reason or "not trusted"
        return Unreachable(
            "tls_certificate",
            f"TLS certificate verification failed for {host}: {detail} (TokenGuard verifies it the same way)",
        )
    tls = _first(chain, ssl.SSLError)
    if tls is not None and tls.reason in _NOT_TLS_REASONS:
        hint = "use http://, which is allowed on loopback" if is_loopback_host(host) else "check the port"
        return Unreachable(
            "tls_to_plain_port",
            f"TLS spoken to a plain-HTTP port: {hostport} answered the https:// handshake with "
            f"something that is not TLS, so it does not serve TLS there ({hint})",
        )
    if tls is not None:
        if isinstance(tls, ssl.SSLEOFError):
            return Unreachable(
                "tls_failed",
                f"TLS handshake failed: {hostport} closed the connection in the middle of it (is it a TLS port?)",
            )
        return Unreachable("tls_failed", f"TLS handshake with {hostport} failed ({tls.reason or type(tls).__name__})")
    lookup = _first(chain, socket.gaierror)
    if lookup is not None:
        if lookup.errno in _NO_SUCH_NAME:
            return Unreachable("dns_not_found", f"DNS name not found: {host} has no address (a typo?)")
        return Unreachable(
            "dns_failed",
            f"DNS lookup of {host} failed ({lookup.strerror or 'no answer'}): is this machine offline?",
        )
    if _first(chain, ConnectionRefusedError) is not None:
        return Unreachable("connection_refused", f"connection refused: nothing is listening on {hostport}")
    timed_out = _first(chain, (httpx.TimeoutException, TimeoutError))
    if timed_out is not None:
        if isinstance(timed_out, httpx.ConnectTimeout):
            what = f"{hostport} did not accept a connection within {timeout:g}s (a firewall dropping packets?)"
        elif isinstance(timed_out, httpx.ReadTimeout):
            what = f"{hostport} accepted the connection but sent no answer within {timeout:g}s"
        else:
            what = f"no complete answer from {hostport} within {timeout:g}s"
        return Unreachable("timeout", f"timed out: {what}")
    if scheme == "http" and _first(chain, (ConnectionResetError, httpx.RemoteProtocolError)) is not None:
        return Unreachable(
            "plain_http_to_tls_port",
            f"{hostport} dropped the plain-HTTP request without an HTTP answer: the usual sign of "
            "plain HTTP sent to a TLS port (try https://)",
        )
    if _first(chain, ConnectionResetError) is not None:
        return Unreachable("connection_reset", f"connection reset: {hostport} accepted the connection, then dropped it")
    if _first(chain, httpx.RemoteProtocolError) is not None:
        return Unreachable("not_http", f"{hostport} answered with something that is not HTTP")
    unroutable = next((e for e in chain if isinstance(e, OSError) and e.errno in _NO_ROUTE), None)
    if unroutable is not None:
        return Unreachable("no_route", f"no route to {hostport} ({unroutable.strerror or 'unreachable'})")
    # Nothing more precise in the chain (an error from a test transport, a new kind of failure): its type.
    named = next((e for e in chain if not isinstance(e, FetchError)), exc)
    return Unreachable("failed", f"the request failed ({type(named).__name__})")


class RecordingPool(HttpClientPool):
    """tokenguard's own HTTP seam, keeping what went wrong with each URL (the exceptions, for
    ``unreachable``) and the headers of the first answer."""

    def __init__(self, client: HttpClientOption = None, *, timeout: float) -> None:
        super().__init__(client, timeout=timeout)
        self.timeout = timeout
        self.failures: dict[str, FetchError] = {}
        self.first_headers: Mapping[str, str] | None = None

    async def get(self, url: str, *, timeout: float, max_bytes: int) -> HttpResult:
        try:
            result = await super().get(url, timeout=timeout, max_bytes=max_bytes)
        except FetchError as exc:
            if exc.status is None and exc.__cause__ is not None:  # no answer at all, not a bad one
                self.failures[url] = exc
            raise
        if self.first_headers is None:
            self.first_headers = result.headers
        return result

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        headers: Mapping[str, str],
        timeout: float,
        max_bytes: int,
    ) -> HttpResult:
        try:
            return await super().post_form(url, form, headers=headers, timeout=timeout, max_bytes=max_bytes)
        except FetchError as exc:
            if exc.status is None and exc.__cause__ is not None:
                self.failures[url] = exc
            raise

    def why(self, url: str) -> Unreachable | None:
        """Why ``url`` could not be fetched, if it could not."""
        failure = self.failures.get(url)
        return unreachable(failure, url, timeout=self.timeout) if failure is not None else None

    def summary(self) -> Unreachable | None:
        """Every failure at once: one reason when they agree (the usual case, one host), else each URL's."""
        reasons = {url: unreachable(exc, url, timeout=self.timeout) for url, exc in self.failures.items()}
        if not reasons:
            return None
        distinct = {(reason.code, reason.message) for reason in reasons.values()}
        if len(distinct) == 1:
            return next(iter(reasons.values()))
        return Unreachable(
            "several", "; ".join(f"{safe_url(url)}: {reason.message}" for url, reason in reasons.items())
        )
