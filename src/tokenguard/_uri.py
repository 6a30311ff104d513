"""Canonical resource URIs: when two spellings of an ``aud`` name the same resource. [core]

MCP (authorization spec 2025-06-18 and 2025-11-25, "Canonical Server URI") makes the audience of a
token for an MCP server that server's canonical URI, and RFC 8707 §2 the ``resource`` a client asks
for: an absolute URI without a fragment. RFC 3986 §6.2.2.1 makes scheme and host case-insensitive,
§6.2.3 drops a scheme's default port. So ``HTTPS://MCP.Example.com:443/mcp`` and
``https://mcp.example.com/mcp`` are one resource, while the path stays exactly as given: paths are
case-sensitive, ``/mcp`` and ``/mcp/`` may be two resources, and even ``https://api.example.com/``
stays apart from ``https://api.example.com`` (RFC 3986 would equate those two; an audience
configured one way is not silently widened to the other).

Only ``http`` and ``https`` URIs have a canonical form here; anything else (a plain name such as
``api://photos``, a URI with user information or a fragment) is compared as the exact string.
Linear in the length of the value: ``urlsplit`` and ``str`` methods, no regular expression.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["canonical_uri"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longer values are never URIs anyone configures as an audience; they are compared exactly.
_MAX_LENGTH = 2048


def canonical_uri(value: str) -> str | None:
    """The canonical form of an http(s) resource URI, or ``None`` when ``value`` has none.

    >>> canonical_uri("HTTPS://MCP.Example.com:443/mcp")
    'https://mcp.example.com/mcp'
    >>> canonical_uri("https://mcp.example.com/")
    'https://mcp.example.com/'
    >>> canonical_uri("https://mcp.example.com/mcp#frag") is None
    True
    """
    # RFC 3986 §2: a URI is ASCII. Non-ASCII never gets a canonical form: str.lower() would fold
    # characters such as U+212A KELVIN SIGN into ASCII letters.
    if len(value) > _MAX_LENGTH or not value.isascii() or value[:4].lower() != "http":
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc or "#" in value:
        return None
    if not value.isprintable() or " " in value:
        return None
    host = parts.hostname.lower()  # urlsplit lowers it, and drops the IPv6 brackets
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if not parts.query and "?" in value:
        return None  # an empty query is still a query (RFC 3986 §6.2.3): compared exactly
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))
