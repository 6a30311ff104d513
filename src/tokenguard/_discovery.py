"""Issuer discovery: the one client that finds an issuer's metadata. [core]

RFC 8414 (OAuth 2.0 Authorization Server Metadata) and OpenID Connect Discovery 1.0. The JWKS cache
and introspection (through ``jwks.IssuerMetadata``), the OpenAPI document (``tokenguard.fastapi``) and
``tokenguard check`` all discover through ``discover``; ``check`` reports each URL it tries through
``on_attempt``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tokenguard._claims import issuer_difference
from tokenguard._http import FetchError, HttpClientPool, safe_url
from tokenguard.config import check_url
from tokenguard.errors import ConfigurationError

#: A metadata document larger than this is not an authorization server's metadata.
METADATA_MAX_BYTES = 256 * 1024
#: The endpoints the guard calls, whose URLs must be https (http on loopback).
_CHECKED_ENDPOINTS = ("jwks_uri", "introspection_endpoint")


def well_known_urls(issuer: str) -> tuple[str, ...]:
    """Metadata URLs to try, in order: RFC 8414 §3.1 (path-inserted), OpenID Connect Discovery 1.0 §4
    (appended), and for an issuer with a path the appended RFC 8414 form that several servers use
    instead of §3.1 (Keycloak, Okta, Spring Authorization Server). Each must name the issuer exactly."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    openid = issuer.rstrip("/") + "/.well-known/openid-configuration"
    if not path:
        return rfc8414, openid
    return rfc8414, openid, issuer.rstrip("/") + "/.well-known/oauth-authorization-server"


@dataclass(frozen=True)
class Attempt:
    """One metadata URL tried: its HTTP status (``None`` when unreachable), the document when one was
    read, and what made it unusable (``None`` for the document that was used)."""

    url: str
    status: int | None
    document: Mapping[str, Any] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Discovered:
    """The metadata document that was used, where it came from, and the answer's headers (for max-age)."""

    document: dict[str, Any]
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


class DiscoveryFailed(FetchError):
    """No metadata URL gave a usable document; ``attempts`` says what each one did."""

    def __init__(self, message: str, attempts: tuple[Attempt, ...]) -> None:
        super().__init__(message)
        self.attempts = attempts


def metadata_problem(document: Mapping[str, Any], issuer: str) -> str | None:
    """Why this metadata document must not be used for ``issuer`` (``None`` when it may).

    RFC 8414 §3.3: the ``issuer`` value returned MUST be identical to the issuer identifier, else the
    metadata MUST NOT be used (it stops an impersonating issuer's keys being trusted). RFC 7662 §4
    requires TLS to the introspection endpoint, and keys fetched over plain http could be swapped in
    transit: the endpoints must be https (http on loopback, for development).
    """
    named = document.get("issuer")
    if named != issuer:
        hint = ""
        if (difference := issuer_difference(named, issuer)) is not None:
            # The commonest misconfiguration (Auth0's issuer ends with "/", most others' do not).
            hint = f" ({difference}: configure the issuer exactly as the metadata spells it)"
        return f"names issuer {_shorten(repr(named))}, not {issuer!r}{hint}"
    for name in _CHECKED_ENDPOINTS:
        value = document.get(name)
        if value is not None:
            try:
                check_url(name, value)
            except ConfigurationError as exc:
                return _shorten(str(exc))
    return None


async def discover(
    http: HttpClientPool,
    issuer: str,
    *,
    timeout: float,
    max_bytes: int = METADATA_MAX_BYTES,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> Discovered:
    """The issuer's metadata: each well-known URL in turn, the first usable document wins.

    Raises ``DiscoveryFailed`` (a ``FetchError``) naming what each URL did when none is usable.
    """
    attempts: list[Attempt] = []

    def record(attempt: Attempt) -> None:
        attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt)

    for url in well_known_urls(issuer):
        try:
            result = await http.get(url, timeout=timeout, max_bytes=max_bytes)
        except FetchError as exc:
            record(Attempt(url, None, problem=str(exc)))
            continue
        if result.status != 200:
            record(Attempt(url, result.status, problem=f"GET {safe_url(url)} answered {result.status}"))
            continue
        try:
            document = result.json_object(url)
        except FetchError as exc:
            record(Attempt(url, result.status, problem=str(exc)))
            continue
        problem = metadata_problem(document, issuer)
        if problem is not None:
            record(Attempt(url, result.status, document, f"{safe_url(url)} {problem}"))
            continue
        record(Attempt(url, result.status, document))
        return Discovered(document, url, result.headers)
    raise DiscoveryFailed("; ".join(attempt.problem or attempt.url for attempt in attempts), tuple(attempts))


def _shorten(text: str, limit: int = 200) -> str:
    """Issuer-controlled text in a log line is bounded."""
    return text if len(text) <= limit else text[:limit] + "..."
