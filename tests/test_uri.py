"""Canonical resource URIs (``tokenguard._uri``) and the audience check that uses them (``_claims``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenguard._claims import check_audience, matched_audience
from tokenguard._uri import canonical_uri
from tokenguard.errors import InvalidToken


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
        ("HTTPS://MCP.Example.COM/mcp", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"),
        ("http://127.0.0.1:80/mcp", "http://127.0.0.1/mcp"),
        ("http://127.0.0.1:8000/mcp", "http://127.0.0.1:8000/mcp"),
        ("https://mcp.example.com/", "https://mcp.example.com/"),  # the path as given, even "/"
        ("https://mcp.example.com", "https://mcp.example.com"),
        ("https://mcp.example.com/MCP", "https://mcp.example.com/MCP"),  # the path keeps its case
        ("https://mcp.example.com/mcp/", "https://mcp.example.com/mcp/"),  # and its trailing slash
        ("https://mcp.example.com/mcp?tenant=a", "https://mcp.example.com/mcp?tenant=a"),
        ("http://[::1]:8000/mcp", "http://[::1]:8000/mcp"),
        ("https://mcp.example.com:8443/mcp", "https://mcp.example.com:8443/mcp"),
    ],
)
def test_canonical_forms(value: str, canonical: str) -> None:
    assert canonical_uri(value) == canonical


@pytest.mark.parametrize(
    "value",
    [
        "api://photos",
        "urn:example:resource",
        "photos",
        "https://mcp.example.com/mcp#fragment",  # RFC 8707 §2: no fragment
        "https://user@mcp.example.com/mcp",  # user information is never part of a resource
        "https://mcp.example.com:99999/mcp",
        "https://mcp.example.com:abc/mcp",
        "https:///mcp",
        "https://mcp.example.com/a b",
        "https://mcp.example.com/\x00",
        "ftp://mcp.example.com/mcp",
        "https://\u212ams.example.com/mcp",  # KELVIN SIGN: str.lower() would make it "k"
        "https://mcp.example.com/mcp?",  # an empty query is still a query
        "https://" + "a" * 3000,
        "",
    ],
)
def test_values_without_a_canonical_form(value: str) -> None:
    assert canonical_uri(value) is None


@given(
    host=st.sampled_from(["mcp.example.com", "api.example.org", "127.0.0.1"]),
    path=st.sampled_from(["", "/mcp", "/a/b", "/MCP/"]),
    flips=st.lists(st.booleans(), min_size=40, max_size=40),
    explicit_port=st.booleans(),
)
def test_case_of_scheme_and_host_and_the_default_port_never_matter(
    host: str, path: str, flips: list[bool], explicit_port: bool
) -> None:
    plain = f"https://{host}{path}"
    spelled = "".join(c.upper() if flip else c for c, flip in zip(f"https://{host}", flips, strict=False))
    spelled += (":443" if explicit_port else "") + path
    assert canonical_uri(spelled) == canonical_uri(plain)
    check_audience({"aud": spelled}, (plain,))
    check_audience({"aud": [plain]}, (spelled,))


def test_matched_audience_returns_the_configured_value() -> None:
    configured = ("api://photos", "HTTPS://MCP.example.com/mcp")
    assert matched_audience(["https://mcp.example.com:443/mcp"], configured) == "HTTPS://MCP.example.com/mcp"
    assert matched_audience(["api://photos"], configured) == "api://photos"
    assert matched_audience(["API://photos"], configured) is None  # not http(s): exact only
    assert matched_audience(["https://mcp.example.com/MCP"], configured) is None


@pytest.mark.parametrize(
    "aud",
    [
        "https://mcp.example.com/mcp/",
        "https://mcp.example.com/mcp#x",
        "https://mcp.example.com/mcp/.",
        "https://evil.example.com/mcp",
        "https://mcp.example.com.evil.com/mcp",
        "https://mcp.example.com:444/mcp",
        "http://mcp.example.com/mcp",
    ],
)
def test_near_misses_are_still_wrong_audiences(aud: str) -> None:
    with pytest.raises(InvalidToken) as refused:
        check_audience({"aud": aud}, ("https://mcp.example.com/mcp",))
    assert refused.value.reason == "wrong_audience"
