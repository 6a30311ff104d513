"""Issuer discovery: the one client that finds an issuer's metadata. [core]

RFC 8414 (OAuth 2.0 Authorization Server Metadata) and OpenID Connect Discovery 1.0. The JWKS cache
and introspection (through ``jwks.IssuerMetadata``), the OpenAPI document (``tokenguard.fastapi``) and
``tokenguard check`` all discover through ``discover``; ``check`` reports each URL it tries through
``on_attempt``.

Discovery reads the well-known URLs in RFC 8414's order until the documents read so far name every
endpoint the caller ``needs``, and merges the usable ones: servers split their metadata (an OpenID
Connect document has no ``introspection_endpoint``, which belongs to RFC 8414 / RFC 7662, while the
RFC 8414 document beside it has one: django-oauth-toolkit with OpenID on). Each merged document passes
``metadata_problem`` on its own; for a member two documents both give, the earlier one wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tokenguard._claims import issuer_difference
from tokenguard._http import FetchError, HttpClientPool, safe_url
from tokenguard._tenants import is_template, metadata_url
from tokenguard.config import check_url
from tokenguard.errors import ConfigurationError

#: A metadata document larger than this is not an authorization server's metadata.
METADATA_MAX_BYTES = 256 * 1024
#: The endpoints the guard calls, whose URLs must be https (http on loopback).
_CHECKED_ENDPOINTS = ("jwks_uri", "introspection_endpoint")


def well_known_urls(issuer: str) -> tuple[str, ...]:
    """Metadata URLs to try, in order: RFC 8414 §3.1 (path-inserted), OpenID Connect Discovery 1.0 §4
    (appended), and for an issuer with a path the appended RFC 8414 form that several servers use
    instead of §3.1 (Keycloak, Okta, Spring Authorization Server). Each must name the issuer exactly.

    A tenant template issuer (``{tenantid}``, Entra multi-tenant) has one URL: the ``common`` tenant's
    OpenID document (``_tenants.metadata_url``), whose ``issuer`` is the template itself."""
    if is_template(issuer):
        return (metadata_url(issuer),)
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
    """The metadata that was used: the usable documents merged (an earlier document wins on a member
    both give), where each member came from, and each document's headers (for max-age).

    ``url`` and ``headers`` are the first usable document's; ``urls`` and ``all_headers`` name every
    merged one, in the order read. ``missing`` lists the needed members no document gave.
    """

    document: dict[str, Any]
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    all_headers: tuple[Mapping[str, str], ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()


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
    needs: frozenset[str] = frozenset(),
    on_attempt: Callable[[Attempt], None] | None = None,
) -> Discovered:
    """The issuer's metadata: the well-known URLs in turn, until the usable documents read so far give
    every member in ``needs`` (with no needs, the first usable document, as with one that has them all).

    Usable documents are merged (RFC 8414 §3.3: one naming another issuer never is); on a member two of
    them give, the earlier one wins. When no document gives a needed member, what was found is
    returned (``missing`` names it; the caller reports it). At most the well-known URLs, each read up
    to ``max_bytes``. Raises ``DiscoveryFailed`` (a ``FetchError``) naming what each URL did when none
    is usable.
    """
    attempts: list[Attempt] = []
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    used: list[tuple[str, Mapping[str, str]]] = []

    def record(attempt: Attempt) -> None:
        attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt)

    for url in well_known_urls(issuer):
        if used and _lacking(merged, needs) == frozenset():
            break  # everything needed is known: no further fetch
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
        for name, value in document.items():
            if _given(value) and not _given(merged.get(name)):
                merged[name] = value
                sources[name] = url
            elif name not in merged:
                merged[name] = value  # an empty value, kept only until a document gives one
        used.append((url, result.headers))
    if not used:
        raise DiscoveryFailed("; ".join(attempt.problem or attempt.url for attempt in attempts), tuple(attempts))
    return Discovered(
        merged,
        used[0][0],
        used[0][1],
        urls=tuple(url for url, _ in used),
        all_headers=tuple(headers for _, headers in used),
        sources=sources,
        missing=_lacking(merged, needs),
    )


def _given(value: object) -> bool:
    """A member a document actually gives: ``null`` and ``""`` say nothing."""
    return value is not None and value != ""


def _lacking(document: Mapping[str, Any], needs: frozenset[str]) -> frozenset[str]:
    """The needed endpoints the document does not give as a URL string."""
    return frozenset(name for name in needs if not (isinstance(document.get(name), str) and document[name]))


def _shorten(text: str, limit: int = 200) -> str:
    """Issuer-controlled text in a log line is bounded."""
    return text if len(text) <= limit else text[:limit] + "..."
