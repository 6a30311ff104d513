"""OAuth 2.0 Protected Resource Metadata (RFC 9728): what this resource publishes about itself.

Framework-free: ``ResourceMetadata`` builds the document and knows where it is served; ``serve``
answers a request for it (plain ASGI messages); the guard routes such requests here and puts the
URL in every challenge (RFC 9728 §5.1).

The resource identifier is the ``resource=`` option when given, else the first audience that is an
absolute https URL (http on loopback, for development) without query or fragment. Without one,
nothing is served and the reason is logged: a client cannot use metadata that names no resource.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tokenguard.config import check_url
from tokenguard.errors import ConfigurationError

if TYPE_CHECKING:
    from tokenguard.policy import Requirement

__all__ = [
    "CACHE_CONTROL",
    "WELL_KNOWN_PATH",
    "ResourceMetadata",
    "build_resource_metadata",
    "check_resource",
    "metadata_url",
    "resource_identifier",
    "serve",
]

logger = logging.getLogger("tokenguard")

#: RFC 9728 §3: the well-known URI suffix.
WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"
#: The document changes only with the code: public, and cacheable for an hour.
CACHE_CONTROL = "public, max-age=3600"

#: Members tokenguard derives from the configuration; the user may not set them.
_DERIVED = {
    "resource": "the resource identifier comes from resource= (or the audience)",
    "authorization_servers": "the authorization servers are the configured issuer(s)",
}


def check_resource(name: str, value: str) -> str:
    """RFC 9728 §1.2: an https URL (http on loopback, for development) with no fragment; no query here."""
    url = check_url(name, value)  # refuses non-strings, other schemes and fragments
    if urlsplit(url).query:
        raise ConfigurationError(f"{name} must not have a query to serve RFC 9728 metadata, got {url!r}")
    return url


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known string goes between the host and the path of the resource.

    "Any terminating slash (/) following the host component MUST be removed" first, as in RFC 8414.
    """
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN_PATH + parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class ResourceMetadata:
    """The RFC 9728 §2 document of one protected resource, and the paths it is served at."""

    resource: str
    authorization_servers: tuple[str, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The absolute metadata URL, for the ``resource_metadata`` challenge parameter (§5.1)."""
        return metadata_url(self.resource)

    @property
    def paths(self) -> tuple[str, ...]:
        """The path-inserted form (§3.1), and the bare well-known path for a resource with a path."""
        inserted = urlsplit(self.url).path
        return (inserted,) if inserted == WELL_KNOWN_PATH else (inserted, WELL_KNOWN_PATH)

    def document(self, scopes: Iterable[str] = (), details_types: Iterable[str] = ()) -> dict[str, Any]:
        """The metadata: derived members, then the user's own (which may replace the two lists)."""
        document: dict[str, Any] = {
            # RFC 9728 §3.3: "resource" MUST be identical to the identifier the URL was built from.
            "resource": self.resource,
        }
        if self.authorization_servers:
            # RFC 9728 §2: OPTIONAL; left out when no issuer is one a client can discover (a tenant
            # template with a callable allow-list).
            document["authorization_servers"] = list(self.authorization_servers)
        # RFC 6750 §2.1 only: tokens in a form body or query are never read.
        document["bearer_methods_supported"] = ["header"]
        scope_list = sorted(set(scopes))
        if scope_list:
            document["scopes_supported"] = scope_list
        type_list = sorted(set(details_types))
        if type_list:
            document["authorization_details_types_supported"] = type_list
        document.update(self.fields)
        return document

    def body(self, scopes: Iterable[str] = (), details_types: Iterable[str] = ()) -> bytes:
        return json.dumps(self.document(scopes, details_types), separators=(",", ":")).encode("utf-8")


def _checked_fields(option: Mapping[Any, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in option.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"resource_metadata keys must be non-empty strings, got {name!r}")
        if name in _DERIVED:
            raise ConfigurationError(f"resource_metadata cannot set {name!r}: {_DERIVED[name]}")
        if name == "bearer_methods_supported" and value != ["header"]:
            raise ConfigurationError(
                "resource_metadata: bearer_methods_supported can only be ['header'] (RFC 6750 §2.1 only)"
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"resource_metadata[{name!r}] is not JSON-serialisable") from exc
        fields[name] = value
    return fields


def resource_identifier(audience: Sequence[str], resource: str | None) -> str | None:
    """``resource`` when given (checked), else the first audience usable as an identifier, else ``None``."""
    if resource is not None:
        return check_resource("resource", resource)
    for candidate in audience:
        try:
            return check_resource("audience", candidate)
        except ConfigurationError:
            continue
    return None


def build_resource_metadata(
    option: bool | Mapping[str, Any] | None,
    *,
    resource: str | None,
    audience: Sequence[str],
    issuers: Sequence[str],
) -> ResourceMetadata | None:
    """The metadata to serve, or ``None`` (turned off, or no resource identifier: logged)."""
    if option is not None and not isinstance(option, (bool, Mapping)):
        raise ConfigurationError("resource_metadata must be True, False, or a dict of extra metadata members")
    fields = _checked_fields(option) if isinstance(option, Mapping) else {}
    identifier = resource_identifier(audience, resource)
    if option is False:
        return None
    if identifier is None:
        level = logging.WARNING if isinstance(option, Mapping) else logging.INFO
        logger.log(
            level,
            "tokenguard: RFC 9728 resource metadata is not served: no audience is an https URL; "
            "pass resource='https://...' to name this resource",
        )
        return None
    return ResourceMetadata(identifier, tuple(issuers), fields)


async def serve(
    metadata: ResourceMetadata,
    scope: Mapping[str, Any],
    send: Callable[[dict[str, Any]], Awaitable[None]],
    requirements: Iterable[Requirement],
) -> int:
    """RFC 9728 §3.2: the metadata as JSON, to anyone (no token), cacheable; GET and HEAD only.

    ``requirements`` are the app's declared policies, whose scopes and ``authorization_details``
    types the document lists. Returns the status sent (200, or 405 for another method).
    """
    if scope.get("method") not in ("GET", "HEAD"):
        headers = [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 405
    declared = list(requirements)
    body = metadata.body(
        (name for requirement in declared for name in requirement.required_scopes),
        (name for requirement in declared for name in requirement.details_types),
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", CACHE_CONTROL.encode("ascii")),
        # Public data: a browser-based client on another origin may read it.
        (b"access-control-allow-origin", b"*"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body if scope.get("method") == "GET" else b""})
    return 200
