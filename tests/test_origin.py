"""The URL the client used (``tokenguard._origin``), for the DPoP ``htu`` check (RFC 9449 §4.3 point 9).

Forwarded headers count only from ``trusted_proxies``; ``public_url`` overrides everything; the path
within the app follows Starlette's ``root_path`` rule (pinned against Starlette's own function, on
made-up and on real scopes); a real uvicorn behind a path-prefixing proxy shows what servers put in
the scope. Anything malformed is an ``InvalidRequest``, never another exception.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tokenguard._origin import (
    MAX_FORWARDED,
    _route_path,
    check_public_url,
    forwarded_pairs,
    parse_trusted_proxies,
    peer_is_trusted,
    request_url,
)
from tokenguard.errors import ConfigurationError, InvalidRequest
from tokenguard.testing._processes import UvicornProcess

PROXY = "10.0.0.5"
TRUSTED = parse_trusted_proxies(["10.0.0.0/8", "2001:db8::/32"])


def scope(
    *headers: tuple[str, str],
    path: str = "/items/1",
    root_path: str = "",
    raw_path: bytes | None = None,
    client: str | None = PROXY,
    scheme: str = "http",
    server: Any = ("127.0.0.1", 8000),
    kind: str = "http",
) -> dict[str, Any]:
    made: dict[str, Any] = {
        "type": kind,
        "scheme": scheme,
        "path": path,
        "root_path": root_path,
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": (client, 51000) if client is not None else None,
        "server": server,
    }
    if raw_path is not None:
        made["raw_path"] = raw_path
    return made


HOST = ("host", "internal:8000")


# -- trusted_proxies ------------------------------------------------------------------------------------------


def test_trusted_proxies_reads_addresses_and_networks() -> None:
    assert parse_trusted_proxies(None) == ()
    assert parse_trusted_proxies([]) == ()
    assert parse_trusted_proxies("127.0.0.1, 10.0.0.0/8 ,::1") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_trusted_proxies(("2001:db8::/32",)) == (ipaddress.ip_network("2001:db8::/32"),)
    given_objects = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_address("198.51.100.1")]
    assert parse_trusted_proxies(given_objects) == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("198.51.100.1/32"),
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nope", "'nope' is not an IP address"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("*", "does not take '*'"),
        ("10.0.0.1,,10.0.0.2", "must list IP addresses"),
        ([None], "must list IP addresses"),
        ([5], "must list IP addresses"),
        (5, "must be a list"),
        ("300.1.1.1", "is not an IP address"),
        ("fe80::/300", "is not an IP address"),
    ],
)
def test_trusted_proxies_refuses_junk_naming_the_option(value: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies") as raised:
        parse_trusted_proxies(value)
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("client", "trusted"),
    [
        ("10.0.0.5", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("2001:db8::7", True),  # IPv6 peer inside an IPv6 CIDR
        ("2001:db9::7", False),
        ("::ffff:10.0.0.5", True),  # IPv4-mapped IPv6: the IPv4 address it carries
        ("::ffff:11.0.0.5", False),
        ("2001:db8::7%eth0", True),  # a zone identifier does not change the address
        ("not-an-address", False),
        ("", False),
        ("1" * 100, False),
        ("/run/uvicorn.sock", False),
    ],
)
def test_peer_is_trusted(client: str, trusted: bool) -> None:
    assert peer_is_trusted(scope(client=client), TRUSTED) is trusted


def test_peer_without_client_or_without_trusted_list_is_never_trusted() -> None:
    assert not peer_is_trusted(scope(client=None), TRUSTED)
    assert not peer_is_trusted({"client": ["10.0.0.5"], "type": "http"}, ())
    assert peer_is_trusted({"client": ["10.0.0.5", 1]}, TRUSTED)
    assert not peer_is_trusted({"client": [None, 1]}, TRUSTED)
    assert not peer_is_trusted({"client": "10.0.0.5"}, TRUSTED)


# -- the scope alone ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "scheme", "expected"),
    [
        ([("host", "api.example.com")], "https", "https://api.example.com/items/1"),
        ([("host", "API.Example.COM:443")], "https", "https://api.example.com/items/1"),
        ([("host", "api.example.com:80")], "http", "http://api.example.com/items/1"),
        ([("host", "api.example.com:443")], "http", "http://api.example.com:443/items/1"),
        ([("host", "api.example.com:08443")], "https", "https://api.example.com:8443/items/1"),
        ([("host", "127.0.0.1:8000")], "http", "http://127.0.0.1:8000/items/1"),
        ([("host", "[2001:DB8::1]:8443")], "https", "https://[2001:db8::1]:8443/items/1"),
        ([("host", "  api.example.com\t")], "https", "https://api.example.com/items/1"),
        ([], "http", "http://127.0.0.1:8000/items/1"),  # no Host: the server's address
    ],
)
def test_from_the_scope(headers: list[tuple[str, str]], scheme: str, expected: str) -> None:
    assert request_url(scope(*headers, scheme=scheme, client="203.0.113.9")) == expected


def test_server_address_fallbacks() -> None:
    assert request_url(scope(server=("::1", 8443), scheme="https")) == "https://[::1]:8443/items/1"
    assert request_url(scope(server=["localhost", 443], scheme="https")) == "https://localhost/items/1"
    assert request_url(scope(server=("localhost", None))) == "http://localhost/items/1"
    with pytest.raises(InvalidRequest, match="not a valid host"):
        request_url(scope(server=("/run/app.sock", None)))  # a Unix socket names no host
    with pytest.raises(InvalidRequest, match="names no host"):
        request_url(scope(server=None))


def test_websocket_scopes_give_the_http_target_uri() -> None:
    """RFC 9112 §3.3: the upgrade request's target URI is http(s), whatever the ws/wss scope says."""
    assert request_url(scope(HOST, kind="websocket", scheme="wss")) == "https://internal:8000/items/1"
    assert request_url(scope(HOST, kind="websocket", scheme="ws")) == "http://internal:8000/items/1"
    no_scheme = scope(HOST, kind="websocket")
    del no_scheme["scheme"]
    assert request_url(no_scheme) == "http://internal:8000/items/1"


def test_root_path_and_raw_path() -> None:
    # uvicorn: path and raw_path include root_path; the raw bytes keep the client's encoding.
    assert (
        request_url(scope(HOST, path="/api/a;b", root_path="/api", raw_path=b"/api/a%3Bb"))
        == "http://internal:8000/api/a%3Bb"
    )
    # Starlette's TestClient and older servers: path and raw_path without root_path.
    assert (
        request_url(scope(HOST, path="/a;b", root_path="/api", raw_path=b"/a%3Bb")) == "http://internal:8000/api/a%3Bb"
    )
    # No raw_path, or one that does not encode the path: re-encoded from the decoded path.
    assert request_url(scope(HOST, path="/a b/ü%", root_path="/api")) == "http://internal:8000/api/a%20b/%C3%BC%25"
    assert request_url(scope(HOST, path="/x", raw_path=b"/something-else")) == "http://internal:8000/x"
    assert request_url(scope(HOST, path="/x", raw_path=b"/x?query=1")) == "http://internal:8000/x"
    assert request_url(scope(HOST, path="/a b", raw_path=b"/a b")) == "http://internal:8000/a%20b"
    # The app's root itself, and the empty path.
    assert request_url(scope(HOST, path="/api", root_path="/api")) == "http://internal:8000/api"
    assert request_url(scope(HOST, path="")) == "http://internal:8000/"
    # Inside a Mount, Starlette keeps the app's root in app_root_path: the URL is the same.
    mounted = scope(HOST, path="/api/sub/x", root_path="/api/sub")
    mounted["app_root_path"] = "/api"
    assert request_url(mounted) == "http://internal:8000/api/sub/x"
    assert request_url(mounted, public_url="https://pub.example/v1") == "https://pub.example/v1/sub/x"


# -- forwarded headers ----------------------------------------------------------------------------------------


FORWARDED = ("forwarded", 'for=192.0.2.60;proto=https;host="api.example.com", for=10.0.0.9;proto=http;host=internal')
X_FORWARDED = [
    ("x-forwarded-proto", "https, http"),
    ("x-forwarded-host", "api.example.com:443, internal"),
    ("x-forwarded-prefix", "/edge/, /other"),
]


@pytest.mark.parametrize("client", [PROXY, "2001:db8::1", "::ffff:10.1.2.3"])
def test_forwarded_headers_from_a_trusted_proxy(client: str) -> None:
    assert request_url(scope(HOST, FORWARDED, client=client), trusted_proxies=TRUSTED) == (
        "https://api.example.com/items/1"
    )
    assert request_url(scope(HOST, *X_FORWARDED, client=client), trusted_proxies=TRUSTED) == (
        "https://api.example.com/edge/items/1"
    )


@pytest.mark.parametrize("client", ["203.0.113.9", "2001:db9::1", None])
def test_forwarded_headers_from_anyone_else_are_ignored(client: str | None) -> None:
    for headers in ([HOST, FORWARDED], [HOST, *X_FORWARDED]):
        assert request_url(scope(*headers, client=client), trusted_proxies=TRUSTED) == "http://internal:8000/items/1"
    # Even junk in them: they are never read.
    junk = scope(HOST, ("forwarded", 'host="'), ("x-forwarded-host", "a b"), client=client)
    assert request_url(junk, trusted_proxies=TRUSTED) == "http://internal:8000/items/1"


def test_forwarded_headers_without_trusted_proxies_are_ignored() -> None:
    assert request_url(scope(HOST, FORWARDED)) == "http://internal:8000/items/1"


def test_forwarded_and_x_forwarded_together_are_refused() -> None:
    """A proxy that writes one family may pass the other through from the client: which is the proxy's
    cannot be told, so a client's own Forwarded host is never believed over the proxy's X-Forwarded-Host."""
    both = scope(HOST, ("forwarded", "proto=https;host=a.example"), *X_FORWARDED, root_path="/api")
    with pytest.raises(InvalidRequest, match="Both Forwarded and X-Forwarded"):
        request_url(both, trusted_proxies=TRUSTED)
    bare = scope(HOST, ("forwarded", "for=192.0.2.1"), ("x-forwarded-host", "b.example"))
    with pytest.raises(InvalidRequest):
        request_url(bare, trusted_proxies=TRUSTED)
    # From an untrusted peer neither is read: no refusal, the scope's own URL.
    assert request_url(both) == "http://internal:8000/api/items/1"
    # The prefix alone still applies with Forwarded.
    prefixed = scope(HOST, ("forwarded", "proto=https;host=a.example"), ("x-forwarded-prefix", "/edge"))
    assert request_url(prefixed, trusted_proxies=TRUSTED) == "https://a.example/edge/items/1"


def test_each_x_forwarded_header_alone() -> None:
    def url(*headers: tuple[str, str], **kwargs: Any) -> str:
        return request_url(scope(HOST, *headers, **kwargs), trusted_proxies=TRUSTED)

    assert url(("x-forwarded-proto", "HTTPS")) == "https://internal:8000/items/1"
    assert url(("x-forwarded-host", "api.example.com")) == "http://api.example.com/items/1"
    assert (
        url(("x-forwarded-prefix", "/v2"), root_path="/api", path="/api/items/1") == "http://internal:8000/v2/items/1"
    )
    assert url(("x-forwarded-prefix", "/")) == "http://internal:8000/items/1"
    # The first field of a header repeated is the start of the list (RFC 9110 §5.3).
    assert url(("x-forwarded-host", "first.example"), ("x-forwarded-host", "second.example")) == (
        "http://first.example/items/1"
    )
    # The default port goes with the scheme the proxy reported.
    assert url(("x-forwarded-proto", "https"), ("x-forwarded-host", "a.example:443")) == "https://a.example/items/1"
    assert url(("forwarded", 'proto=https;host="[2001:db8::5]:8443"')) == "https://[2001:db8::5]:8443/items/1"
    assert url(("Forwarded", "PROTO=https;HOST=a.example")) == "https://a.example/items/1"


def test_a_long_forwarded_chain_is_read_up_to_its_first_element() -> None:
    long_chain = "proto=https;host=a.example" + ", for=10.0.0.1" * 2000
    assert len(long_chain) > 4 * MAX_FORWARDED
    assert request_url(scope(HOST, ("forwarded", long_chain)), trusted_proxies=TRUSTED) == "https://a.example/items/1"
    long_list = "b.example" + ", internal" * 2000
    assert request_url(scope(HOST, ("x-forwarded-host", long_list)), trusted_proxies=TRUSTED) == (
        "http://b.example/items/1"
    )


# -- public_url -----------------------------------------------------------------------------------------------


def test_public_url_overrides_everything() -> None:
    forwarded = scope(HOST, FORWARDED, *X_FORWARDED, path="/api/items/1", root_path="/api", raw_path=b"/api/items/1")
    assert request_url(forwarded, trusted_proxies=TRUSTED, public_url="https://pub.example/v1") == (
        "https://pub.example/v1/items/1"
    )
    assert request_url(forwarded, public_url="HTTPS://Pub.Example:443/v1/") == "https://pub.example/v1/items/1"
    assert request_url(forwarded, public_url="https://pub.example") == "https://pub.example/items/1"
    assert request_url(forwarded, public_url="http://pub.example:8080/") == "http://pub.example:8080/items/1"
    at_root = scope(HOST, path="/api", root_path="/api")
    assert request_url(at_root, public_url="https://pub.example") == "https://pub.example/"
    assert request_url(at_root, public_url="https://pub.example/v1") == "https://pub.example/v1"
    # Even a Host the scope path would refuse plays no part.
    assert request_url(scope(("host", "bad host")), public_url="https://pub.example") == "https://pub.example/items/1"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "api.example.com",
        "ftp://api.example.com",
        "https://",
        "https://user@api.example.com",
        "https://api.example.com/x?q=1",
        "https://api.example.com/x#f",
        "https://api.example.com:99999",
        "https://api example.com",
        "https://[::1",
        "https://api.example.com/a b",
        5,
    ],
)
def test_public_url_junk_is_a_configuration_error(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="public_url"):
        check_public_url(value)
    with pytest.raises(ConfigurationError, match="public_url"):
        request_url(scope(HOST), public_url=value)


def test_check_public_url_passes_good_values_through() -> None:
    assert check_public_url(None) is None
    assert check_public_url("https://api.example.com/prefix") == "https://api.example.com/prefix"


# -- refusals -------------------------------------------------------------------------------------------------


BAD_HOSTS = [
    "",
    "a b",
    "user@host",
    "host:",
    "host:port",
    "host:65536",
    "host:123456",
    "[::1",
    "[fe80::1%25eth0]",
    "[v1.future]",
    "[1.2.3.4]",
    "exämple.com",
    "host/path",
    "host?q",
    "a" * 2000,
    "host\x00",
]


@pytest.mark.parametrize("bad", BAD_HOSTS)
def test_a_bad_host_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="host"):
        request_url(scope(("host", bad)))
    if bad:  # an empty X-Forwarded-Host is no header at all
        with pytest.raises(InvalidRequest, match="host"):
            request_url(scope(HOST, ("x-forwarded-host", bad)), trusted_proxies=TRUSTED)
    quoted = bad.replace("\\", "\\\\").replace('"', '\\"')
    with pytest.raises(InvalidRequest):
        request_url(scope(HOST, ("forwarded", f'host="{quoted}"')), trusted_proxies=TRUSTED)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([("host", "a.example"), ("host", "b.example")], "more than one Host"),
        ([HOST, ("forwarded", 'host="a.example')], "Forwarded header is malformed"),
        ([HOST, ("forwarded", "host=a.example;host=b.example")], "Forwarded header is malformed"),
        ([HOST, ("forwarded", "host")], "Forwarded header is malformed"),
        ([HOST, ("forwarded", 'host="a.example"junk')], "Forwarded header is malformed"),
        ([HOST, ("forwarded", "proto=ftp")], "not http or https"),
        ([HOST, ("forwarded", "host=a.example;proto=" + "x" * (MAX_FORWARDED + 10))], "Forwarded header is malformed"),
        ([HOST, ("x-forwarded-proto", "gopher")], "not http or https"),
        ([HOST, ("x-forwarded-host", "a" * (MAX_FORWARDED + 1))], "too long"),
        ([HOST, ("x-forwarded-prefix", "edge")], "not a URL path"),
        ([HOST, ("x-forwarded-prefix", "/a b")], "not a URL path"),
        ([HOST, ("x-forwarded-prefix", "/a?b")], "not a URL path"),
        ([HOST, ("x-forwarded-prefix", "/a%zz")], "not a URL path"),
    ],
)
def test_malformed_headers_are_refused(headers: list[tuple[str, str]], says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as raised:
        request_url(scope(*headers), trusted_proxies=TRUSTED)
    assert raised.value.status_code == 400


def test_bad_scopes_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="scheme"):
        request_url(scope(HOST, scheme="ftp"))
    with pytest.raises(InvalidRequest, match="not a path"):
        request_url(scope(HOST, path="*"))
    with pytest.raises(InvalidRequest, match="not a path"):
        request_url(scope(HOST, root_path="api"))
    with pytest.raises(InvalidRequest, match="too long"):
        request_url(scope(HOST, path="/" + "a" * 20_000))


def test_forwarded_pairs_grammar() -> None:
    """RFC 7239 §4: tokens and quoted strings, case-insensitive names, empty pairs, one element only."""
    assert forwarded_pairs('for="[2001:db8:cafe::17]:4711";proto=https ; host="a.example"') == {
        "for": "[2001:db8:cafe::17]:4711",
        "proto": "https",
        "host": "a.example",
    }
    assert forwarded_pairs('Host="a\\"b";;proto=http;, host=c') == {"host": 'a"b', "proto": "http"}
    assert forwarded_pairs("") == {}
    assert forwarded_pairs(", host=a") == {}
    assert forwarded_pairs('host="a,b;c", proto=x') == {"host": "a,b;c"}
    for junk in ('host="a', "=a", "host=a;host=b", 'host="a"b', "host a", "ho st=a"):
        assert forwarded_pairs(junk) is None, junk


# -- no exception escapes -------------------------------------------------------------------------------------


HEADER_NAMES = st.sampled_from(["host", "forwarded", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"])
HEADER_VALUES = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=255), max_size=60),
    st.text(alphabet='a.:[]";=,/ %\\-0123456789', max_size=60),
    st.sampled_from(["proto=https;host=a.example", "https", "a.example:8443", "/edge", "[::1]:80"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5),
    path=st.text(max_size=30),
    root_path=st.sampled_from(["", "/api", "/api/"]),
    raw_path=st.one_of(st.none(), st.binary(max_size=30)),
    client=st.sampled_from([PROXY, "203.0.113.9", "2001:db8::1", "junk"]),
)
def test_only_a_url_or_invalid_request(
    headers: list[tuple[str, str]], path: str, root_path: str, raw_path: bytes | None, client: str
) -> None:
    made = scope(*headers, path=path, root_path=root_path, raw_path=raw_path, client=client)
    try:
        url = request_url(made, trusted_proxies=TRUSTED)
    except InvalidRequest:
        return
    assert re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url), url
    assert url.isascii()


def _best_of(func: Any, arg: Any, repeats: int = 7, number: int = 20) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            func(arg)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "unit",
    [
        ";",  # empty pairs
        'a="\\',  # quoted-pairs in a string that never closes
        "a=b;",  # many pairs (each name distinct would be a dict; the same name stops at the second)
        " ",
    ],
)
def test_forwarded_parsing_is_bounded_by_its_window(unit: str) -> None:
    """A forwarded header a megabyte long costs what one of twice the window costs: it is never read past it."""
    small = unit * (2 * MAX_FORWARDED // len(unit))
    large = unit * (1024 * 1024 // len(unit))
    assert forwarded_pairs(large) == forwarded_pairs(small)
    ratio = _best_of(forwarded_pairs, large) / _best_of(forwarded_pairs, small)
    assert ratio < 8, ratio


# -- the root_path rule is Starlette's ------------------------------------------------------------------------


def test_route_path_is_starlettes_rule() -> None:
    """``_origin._route_path`` restates Starlette's private ``get_route_path``: fail loudly if it changes."""
    paths = ["", "/", "/api", "/api/", "/api/x", "/apix", "/apix/y", "/x/api", "//api", "/api//x", "/ä/ö"]
    roots = ["", "/", "/api", "/api/", "/ap", "/ä", "//"]
    for path, root in itertools.product(paths, roots):
        assert _route_path(path, root) == get_route_path({"type": "http", "path": path, "root_path": root}), (
            path,
            root,
        )


def _capture_app(seen: list[dict[str, Any]]) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        seen.append(dict(request.scope))
        return JSONResponse({"url": request_url(request.scope)})

    return Starlette(
        routes=[
            Route("/items/{name}", endpoint),
            Mount("/sub", routes=[Route("/items/{name}", endpoint)]),
        ]
    )


STARLETTE_CASES = [
    (root_path, path_has_root, target)
    for root_path, path_has_root in [("", True), ("/api", True), ("/api", False)]
    for target in ["/items/a%3Bb", "/sub/items/a%3Bb", "/items/%C3%BC"]
    # Starlette's Mount does not route a path that leaves root_path out.
    if path_has_root or not target.startswith("/sub")
]


@pytest.mark.parametrize(("root_path", "path_has_root", "target"), STARLETTE_CASES)
def test_real_starlette_scopes(root_path: str, path_has_root: bool, target: str) -> None:
    """On the scopes Starlette really builds (TestClient, Mount child scopes): the URL the client used,
    and the path within the app is the one Starlette's routers read. Servers since uvicorn 0.26 put
    ``root_path`` in ``path`` (sent here as the request path); older ones and Starlette's TestClient
    leave it out, which Starlette's routing supports except under a Mount."""
    seen: list[dict[str, Any]] = []
    with TestClient(_capture_app(seen), root_path=root_path, base_url="https://api.example.com") as client:
        response = client.get((root_path if path_has_root else "") + target + "?q=1")
    assert response.status_code == 200
    assert response.json()["url"] == f"https://api.example.com{root_path}{target}"
    (inner,) = seen
    root = inner.get("app_root_path", inner["root_path"])
    assert (root != inner["root_path"]) is target.startswith("/sub")  # a Mount's child scope
    assert _route_path(inner["path"], root) == get_route_path({"path": inner["path"], "root_path": root})


# -- a real server behind a path-prefixing proxy --------------------------------------------------------------


UVICORN_APP = """
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard._origin import parse_trusted_proxies, request_url
from tokenguard.errors import InvalidRequest

TRUSTED = parse_trusted_proxies("127.0.0.1")


async def where(request):
    scope = request.scope
    try:
        request_url(scope)
    except InvalidRequest as refused:
        return JSONResponse({"refused": refused.description}, status_code=400)
    return JSONResponse({
        "trusted": request_url(scope, trusted_proxies=TRUSTED),
        "untrusted": request_url(scope),
        "public": request_url(scope, public_url="https://public.example/v1"),
        "scheme": scope["scheme"],
        "client": scope["client"][0],
        "path": scope["path"],
        "root_path": scope["root_path"],
        "raw_path": scope["raw_path"].decode("ascii"),
        "route_path": get_route_path(scope),
    })


app = Starlette(routes=[Route("/items/{name}", where)])
"""


@contextmanager
def uvicorn_server(directory: Path, *options: str) -> Iterator[str]:
    """``uvicorn app:app`` on a free port; yields its base URL once it says it is serving."""
    (directory / "app.py").write_text(textwrap.dedent(UVICORN_APP))
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(directory), src, *sys.path]))
    server = UvicornProcess("app:app", *options, env=env, cwd=directory)
    try:
        try:
            base = server.ready(time.monotonic() + 60)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield base
    finally:
        server.stop()


def test_behind_a_path_prefixing_proxy_with_real_uvicorn(tmp_path: Path) -> None:
    """The proxy serves ``https://api.example.com/api/...`` and forwards ``/items/...`` (prefix stripped);
    uvicorn runs with ``--root-path /api --proxy-headers --forwarded-allow-ips 127.0.0.1``."""
    pytest.importorskip("uvicorn")
    options = ("--root-path", "/api", "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1")
    with uvicorn_server(tmp_path, *options) as base:
        port = base.rsplit(":", 1)[1]
        proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
        with httpx.Client(base_url=base, timeout=10) as client:
            seen = client.get("/items/a%3Bb?page=2", headers=proxy).json()
            # What uvicorn puts in the scope: root_path in path and raw_path, the client's encoding in
            # raw_path, and (from a forwarded-allow-ips peer) the scheme from X-Forwarded-Proto.
            assert seen["path"] == "/api/items/a;b"
            assert seen["root_path"] == "/api"
            assert seen["raw_path"] == "/api/items/a%3Bb"
            assert seen["route_path"] == "/items/a;b"
            assert seen["scheme"] == "https"
            assert seen["client"] == "127.0.0.1"
            # The URL the client used, with the proxy trusted; without, the Host uvicorn was reached at.
            assert seen["trusted"] == "https://api.example.com/api/items/a%3Bb"
            assert seen["untrusted"] == f"https://127.0.0.1:{port}/api/items/a%3Bb"
            assert seen["public"] == "https://public.example/v1/items/a%3Bb"

            # A proxy that names its prefix itself: the prefix replaces root_path.
            prefixed = client.get("/items/x", headers={**proxy, "X-Forwarded-Prefix": "/edge"}).json()
            assert prefixed["trusted"] == "https://api.example.com/edge/items/x"

            # With X-Forwarded-For, uvicorn replaces scope["client"] by the forwarded address: the peer
            # is no longer the proxy, so its forwarded Host is not used (configure public_url then).
            relayed = client.get("/items/x", headers={**proxy, "X-Forwarded-For": "203.0.113.9"}).json()
            assert relayed["client"] == "203.0.113.9"
            assert relayed["trusted"] == f"https://127.0.0.1:{port}/api/items/x"
            assert relayed["public"] == "https://public.example/v1/items/x"

            # A Host that is not host[:port] is refused, not turned into a URL.
            bad = client.get("/items/x", headers={"Host": "api.example.com@evil.example"})
            assert bad.status_code == 400
            assert bad.json() == {"refused": "The Host header is not a valid host[:port]."}


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "a" * n,  # one long name that never reaches "=" (the name is read, then given back)
        lambda n: 'Cert="' + "\\x" * (n // 2),  # quoted-pairs in a string that never closes
        lambda n: ";".join(f"k{i}=v" for i in range(n // 8)),  # many distinct pairs (dict inserts)
        lambda n: "a=" + "b" * n,  # one long unquoted value
        lambda n: "a=b" + " " * n + "x",  # whitespace, then text that is not a separator
    ],
    ids=["long-name", "open-quote", "many-pairs", "long-value", "spaces-then-junk"],
)
def test_forwarded_parsing_is_linear_within_its_window(make: Any) -> None:
    """Inside the window (16 KiB for a client-certificate header) the work grows with the input, not its
    square: four times the input costs about four times the time."""
    limit = 16 * 1024
    small, large = make(limit // 8), make(limit // 2)
    parse = lambda text: forwarded_pairs(text, limit=limit)  # noqa: E731
    ratio = _best_of(parse, large) / _best_of(parse, small)
    if ratio >= 8:  # measured again before failing: a busy machine is not a quadratic parser
        ratio = _best_of(parse, large) / _best_of(parse, small)
    assert ratio < 8, ratio
