"""The URL the client used, for the DPoP ``htu`` check (RFC 9449 §4.3 point 9), safe behind proxies.

``request_url(scope, trusted_proxies=..., public_url=...)`` answers from, in this order:

1. ``public_url`` (an option, e.g. ``"https://api.example.com/prefix"``): its origin and path prefix,
   then the path within the app. Nothing the request says can change it.
2. Forwarded headers, only when the peer (``scope["client"]``) is inside ``trusted_proxies``: the
   first element of RFC 7239 ``Forwarded`` (``proto``, ``host``), else the first value of each of
   ``X-Forwarded-Proto`` and ``X-Forwarded-Host``; ``X-Forwarded-Prefix`` (which ``Forwarded`` has no
   parameter for) replaces ``root_path`` in either case. The first element is the one the edge proxy
   wrote, so that proxy must *set* these headers, never append to what the client sent.
3. The ASGI scope: ``scheme``, the ``Host`` header (else ``scope["server"]``), ``root_path`` + the
   path within the app.

The path within the app is ``scope["path"]`` minus ``root_path`` by the rule Starlette's routers
apply (``_route_path`` restates it; ``tests/test_origin.py`` pins it against Starlette's own), so the
URL is the same whether the server puts ``root_path`` in ``path`` (uvicorn, Starlette ≥ 0.33) or not.
It is taken, when the server gives one that fits, from ``raw_path`` — the bytes the client sent,
so a client's ``%3B`` stays ``%3B`` — else re-encoded from the decoded path.

The result is ``scheme://host[:port]/path`` with no query or fragment, scheme and host in lower case
and the scheme's default port left out (RFC 3986 §6.2.2.1, §6.2.3); the path is left as the client
encoded it, for the ``htu`` comparison to normalise. A WebSocket scope gives ``http``/``https``:
the proof of an upgrade request names the HTTP target URI (RFC 9110 §7.1, RFC 9112 §3.3).

A ``Host`` value (from the header, ``Forwarded`` or ``X-Forwarded-Host``) that is not a plain
``host[:port]``, several ``Host`` fields (RFC 9112 §3.2), an unknown scheme or an oversized header
are refused with ``InvalidRequest`` (400 ``invalid_request``): no URL is guessed for such a request.
Every header is cut to a fixed size before it is read, and every parser here runs in linear time:
each regular expression is a sequence of disjoint character classes, matched once per position.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import quote, unquote, urlsplit

from tokenguard.errors import ConfigurationError, InvalidRequest

__all__ = [
    "Network",
    "check_public_url",
    "forwarded_pairs",
    "parse_trusted_proxies",
    "peer_is_trusted",
    "request_url",
]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A ``Host`` value longer than this is refused unread (a DNS name is at most 253 characters).
MAX_HOST = 1024
#: Only this much of a list-valued forwarded header is read: its first element must end within it.
MAX_FORWARDED = 4096
#: A longer path (decoded or raw) is refused: servers' own request-line limits are of this order.
MAX_PATH = 16 * 1024
#: A peer address longer than this is not an IP address (it may come from X-Forwarded-For).
_MAX_ADDRESS = 64

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name, then §3.2.3 [ ":" port ]. A reg-name is
# limited here to what DNS names use (letters, digits, "-", ".", "_"): percent-encoding and sub-delims
# in a Host are refused. The classes are disjoint from ":" and "]", so the match never backtracks.
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::([0-9]{1,5}))?")
# RFC 9110 §5.6.2 token (RFC 7239 §4 parameter names).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_OWS = re.compile(r"[ \t]*")
# One forwarded-pair (RFC 7239 §4): token "=" ( token / quoted-string ). The quoted string is the
# "unrolled loop" form (RFC 9110 §5.6.4 quoted-pair), linear; an unquoted value runs to the next
# ";", "," or quote (a wider set than token, so Envoy's XFCC values such as URIs read the same way).
_PAIR = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^,;"]*))', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
# RFC 3986 §3.3 path characters: unreserved, sub-delims, ":", "@", "/" and "%" (checked below).
_PATH_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: What ``quote`` leaves alone when it re-encodes a decoded path: pchar and "/" (RFC 3986 §3.3).
_PATH_SAFE = "/!$&'()*+,;=:@"


def parse_trusted_proxies(value: Iterable[str] | str | None) -> tuple[Network, ...]:
    """The ``trusted_proxies`` option: IP addresses and CIDR networks, as a tuple of networks.

    A string may list several, separated by commas (``"10.0.0.0/8, ::1"``). An address is a network
    of one. A network with host bits set (``10.0.0.1/8``) and ``"*"`` are refused: the first is
    probably a typo, the second would let any client choose the URL; ``0.0.0.0/0`` and ``::/0``
    say "everyone" explicitly.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigurationError(f"trusted_proxies must be a list of IP addresses or CIDR networks, got {value!r}")
    networks: list[Network] = []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks.append(item)
            continue
        if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            networks.append(ipaddress.ip_network(item))
            continue
        if not isinstance(item, str) or not item.strip():
            raise ConfigurationError(f"trusted_proxies must list IP addresses or CIDR networks, got {item!r}")
        text = item.strip()
        if text == "*":
            raise ConfigurationError(
                "trusted_proxies does not take '*': list the proxies' addresses, or '0.0.0.0/0' and '::/0' "
                "to trust every client's forwarded headers"
            )
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
            raise ConfigurationError(f"trusted_proxies: {text!r} is not an IP address or CIDR network{hint}") from exc
    return tuple(networks)


def peer_is_trusted(scope: Mapping[str, Any], trusted_proxies: Sequence[Network]) -> bool:
    """True when the peer (``scope["client"][0]``) is an IP address inside one of ``trusted_proxies``.

    A peer that is not an IP address (a Unix socket, no ``client``) is never trusted. An IPv4-mapped
    IPv6 peer (``::ffff:10.0.0.1``) is matched as the IPv4 address it carries.
    """
    if not trusted_proxies:
        return False
    client = scope.get("client")
    if not isinstance(client, (tuple, list)) or not client:
        return False
    host = client[0]
    if not isinstance(host, str) or len(host) > _MAX_ADDRESS:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address.version == network.version and address in network for network in trusted_proxies)


def _public_parts(public_url: str) -> tuple[str, str]:
    """(origin, path prefix without a trailing "/") of a ``public_url``, or ``ConfigurationError``."""
    if not isinstance(public_url, str) or not public_url:
        raise ConfigurationError(f"public_url must be an absolute http(s) URL, got {public_url!r}")
    return _split_public_url(public_url)


@functools.lru_cache(maxsize=16)
def _split_public_url(public_url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(public_url)
    except ValueError as exc:
        raise ConfigurationError(f"public_url is not a valid URL, got {public_url!r}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"public_url must be an absolute http(s) URL, got {public_url!r}")
    if "@" in parts.netloc or parts.query or parts.fragment or "?" in public_url or "#" in public_url:
        raise ConfigurationError(f"public_url must be scheme://host[:port][/prefix], got {public_url!r}")
    authority = _authority(parts.netloc, scheme)
    if authority is None:
        raise ConfigurationError(f"public_url does not name a valid host[:port], got {public_url!r}")
    prefix = _prefix(parts.path)
    if prefix is None:
        raise ConfigurationError(f"public_url has a path that is not a valid URL path, got {public_url!r}")
    return f"{scheme}://{authority}", prefix


def check_public_url(value: str | None) -> str | None:
    """The ``public_url`` option, checked when the guard is configured: ``ConfigurationError`` naming it."""
    if value is not None:
        _public_parts(value)
    return value


def request_url(
    scope: Mapping[str, Any],
    *,
    trusted_proxies: Sequence[Network] = (),
    public_url: str | None = None,
) -> str:
    """The absolute URL (``scheme://host[:port]/path``, no query) the client used for this request.

    Raises ``InvalidRequest`` (400) when the request names no usable host (see the module docstring);
    ``ConfigurationError`` only for a bad ``public_url`` (check it with ``check_public_url`` first).
    """
    root = scope.get("app_root_path", scope.get("root_path", ""))
    path = scope.get("path", "")
    if not isinstance(root, str) or not isinstance(path, str):
        raise InvalidRequest(description="The request path is not a string.")
    if len(root) + len(path) > MAX_PATH:
        raise InvalidRequest(description="The request path is too long.")
    if (root and not root.startswith("/")) or (path and not path.startswith("/")):
        raise InvalidRequest(description="The request target is not a path.")
    app_path = _route_path(path, root)
    encoded_root, encoded_app_path = _encoded_paths(scope, root, app_path)

    if public_url is not None:
        origin, prefix = _public_parts(public_url)
        return origin + ((prefix + encoded_app_path) or "/")

    scheme: str | None = None
    authority: str | None = None
    host_value: str | None = None
    if peer_is_trusted(scope, trusted_proxies):
        headers = _headers(scope, (b"forwarded", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"))
        forwarded = headers.get(b"forwarded")
        if forwarded is not None and (b"x-forwarded-host" in headers or b"x-forwarded-proto" in headers):
            # A proxy writes one family and passes the other through from the client: which one is the
            # proxy's cannot be told, so both at once are refused rather than a client's host believed.
            raise InvalidRequest(description="Both Forwarded and X-Forwarded-* headers were sent.")
        if forwarded is not None:
            # RFC 7239 §4: the first forwarded-element is the one the first proxy (the client's) added.
            pairs = forwarded_pairs(forwarded)
            if pairs is None:
                raise InvalidRequest(description="The Forwarded header is malformed.")
            scheme = _scheme(pairs["proto"], "Forwarded proto") if "proto" in pairs else None  # RFC 7239 §5.4
            host_value = pairs.get("host")  # RFC 7239 §5.3: the Host header field the proxy received
        else:
            proto = headers.get(b"x-forwarded-proto")
            scheme = _scheme(_first_value(proto, "X-Forwarded-Proto"), "X-Forwarded-Proto") if proto else None
            host_header = headers.get(b"x-forwarded-host")
            host_value = _first_value(host_header, "X-Forwarded-Host") if host_header else None
        if host_value is not None:
            authority = _checked_authority(host_value, scheme or _scope_scheme(scope), "forwarded host")
        prefix_header = headers.get(b"x-forwarded-prefix")
        if prefix_header:
            forwarded_prefix = _prefix(_first_value(prefix_header, "X-Forwarded-Prefix"))
            if forwarded_prefix is None:
                raise InvalidRequest(description="The X-Forwarded-Prefix header is not a URL path.")
            encoded_root = forwarded_prefix

    scheme = scheme or _scope_scheme(scope)
    if authority is None:
        authority = _scope_authority(scope, scheme)
    return f"{scheme}://{authority}{(encoded_root + encoded_app_path) or '/'}"


def forwarded_pairs(value: str, *, limit: int = MAX_FORWARDED) -> dict[str, str] | None:
    """The parameters of the first element of a ``Forwarded``-shaped list, or ``None`` if malformed.

    RFC 7239 §4: ``Forwarded = 1#forwarded-element``, ``forwarded-element = [ forwarded-pair ] *( ";"
    [ forwarded-pair ] )``, ``forwarded-pair = token "=" value``, ``value = token / quoted-string``.
    Names are case-insensitive (lowercased here); a name given twice in the element is malformed
    ("each parameter MUST NOT occur more than once per forwarded-element"). Envoy's
    ``X-Forwarded-Client-Cert`` has the same shape. Only the first ``limit`` characters are read,
    and the element must end within them; later elements are never parsed.
    """
    window = value[:limit]
    end, pos = len(window), 0
    pairs: dict[str, str] = {}
    while True:
        pos = _ows_end(window, pos)
        if pos == end:
            return pairs if len(value) <= limit else None  # the element may go on past the window
        if window[pos] == ",":
            return pairs
        if window[pos] == ";":
            pos += 1
            continue
        match = _PAIR.match(window, pos)
        if match is None:
            return None
        name, quoted, plain = match.groups()
        name = name.lower()
        if name in pairs:
            return None
        pairs[name] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else plain.rstrip(" \t")
        pos = _ows_end(window, match.end())
        if pos < end and window[pos] not in ",;":
            return None  # e.g. text after a closing quote


def _ows_end(text: str, pos: int) -> int:
    match = _OWS.match(text, pos)
    return match.end() if match is not None else pos


def _first_value(value: str, name: str) -> str:
    """The first comma-separated value of a list header (RFC 9110 §5.6.1), read within ``MAX_FORWARDED``."""
    window = value[:MAX_FORWARDED]
    first, comma, _ = window.partition(",")
    if not comma and len(value) > MAX_FORWARDED:
        raise InvalidRequest(description=f"The {name} header is too long.")
    return first.strip(" \t")


def _headers(scope: Mapping[str, Any], names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The first field of each of ``names`` (lowercase), as text. Later fields of a list header only
    continue the list (RFC 9110 §5.3), so the first element is always in the first field."""
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers") or ():
        lowered = name.lower()
        if lowered in names and lowered not in found:
            found[lowered] = bytes(value).decode("latin-1")
    return found


def _scheme(value: str, source: str) -> str:
    scheme = _SCHEMES.get(value.strip(" \t").lower())
    if scheme is None:
        raise InvalidRequest(description=f"The {source} value is not http or https.")
    return scheme


def _scope_scheme(scope: Mapping[str, Any]) -> str:
    default = "ws" if scope.get("type") == "websocket" else "http"
    value = scope.get("scheme") or default
    scheme = _SCHEMES.get(value.lower()) if isinstance(value, str) else None
    if scheme is None:
        raise InvalidRequest(description="The request's scheme is not http or https.")
    return scheme


def _scope_authority(scope: Mapping[str, Any], scheme: str) -> str:
    hosts = [value for name, value in scope.get("headers") or () if name.lower() == b"host"]
    if len(hosts) > 1:
        # RFC 9112 §3.2: a request with more than one Host field is answered with 400.
        raise InvalidRequest(description="The request has more than one Host header.")
    if hosts:
        return _checked_authority(bytes(hosts[0]).decode("latin-1"), scheme, "Host header")
    # No Host (HTTP/1.0): the address the server listens on (ASGI ``server``: (host, port) or (path, None)).
    server = scope.get("server")
    if isinstance(server, (tuple, list)) and len(server) == 2 and isinstance(server[0], str):
        host, port = server
        if ":" in host:
            host = f"[{host}]"
        if isinstance(port, int) and not isinstance(port, bool):
            host = f"{host}:{port}"
        return _checked_authority(host, scheme, "server address")
    raise InvalidRequest(description="The request names no host.")


def _checked_authority(value: str, scheme: str, source: str) -> str:
    authority = _authority(value.strip(" \t"), scheme)
    if authority is None:
        raise InvalidRequest(description=f"The {source} is not a valid host[:port].")
    return authority


def _authority(value: str, scheme: str) -> str | None:
    """``host[:port]`` in lower case without the scheme's default port, or ``None`` (RFC 3986 §3.2.2)."""
    if len(value) > MAX_HOST:
        return None
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    literal, name, port = match.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)  # no zone identifiers, no IPvFuture
        except ValueError:
            return None
        host = f"[{literal.lower()}]"
    else:
        host = name.lower()
    if port is None:
        return host
    number = int(port)
    if number > 65535:
        return None
    return host if number == _DEFAULT_PORTS[scheme] else f"{host}:{number}"


def _prefix(value: str) -> str | None:
    """A path prefix (``public_url``'s path, ``X-Forwarded-Prefix``) as URL text without a trailing "/",
    or ``None`` when it is not an absolute URL path in RFC 3986 §3.3 characters."""
    if len(value) > MAX_PATH:
        return None
    if not value:
        return ""
    if not value.startswith("/") or not _is_uri_path(value):
        return None
    return value.rstrip("/")


def _is_uri_path(text: str) -> bool:
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        return False
    return not data.translate(None, _PATH_CHARS) and _BAD_PERCENT.search(text) is None


def _route_path(path: str, root: str) -> str:
    """The path within the app: ``path`` without the ``root`` prefix.

    Starlette's routers apply this rule (its private ``starlette._utils.get_route_path``); it is
    restated here so the core imports no framework. Since Starlette 0.33 and uvicorn, ``path``
    includes ``root_path``; a server that leaves it out gives a ``path`` that does not start with
    it, which is used whole. ``tests/test_origin.py`` compares the two on many inputs.
    """
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _encoded_paths(scope: Mapping[str, Any], root: str, app_path: str) -> tuple[str, str]:
    """(root, path within the app) as URL text: from ``raw_path`` when it encodes exactly these
    decoded paths (servers differ on whether ``raw_path`` includes ``root_path``), else re-encoded."""
    encoded_root = quote(root, safe=_PATH_SAFE)
    raw = scope.get("raw_path")
    if isinstance(raw, (bytes, bytearray)) and len(raw) <= MAX_PATH:
        text = bytes(raw).decode("latin-1").partition("?")[0]
        if _is_uri_path(text):
            if unquote(text) == app_path:
                return encoded_root, text
            for candidate in (root, encoded_root):
                if candidate and text.startswith(candidate) and unquote(text[len(candidate) :]) == app_path:
                    return candidate, text[len(candidate) :]
    return encoded_root, quote(app_path, safe=_PATH_SAFE)
