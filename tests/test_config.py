"""Configuration is validated when it is built, and every error names its field (STYLE habit 7)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conftest import AUDIENCE, ISSUER
from tokenguard.config import (
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    GuardConfig,
    IntrospectionOptions,
    JWKSOptions,
    check_url,
    is_loopback_host,
)
from tokenguard.errors import ConfigurationError
from tokenguard.testing import ManualClock

SECRET = b"s" * 32


def build(**options: Any) -> GuardConfig:
    options.setdefault("issuer", ISSUER)
    options.setdefault("audience", AUDIENCE)
    return GuardConfig(**options)


# (options, the field the message must name)
BAD_GUARD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"issuer": "http://idp.example.com"}, "issuer"),
    ({"issuer": "http://10.0.0.1"}, "issuer"),
    ({"issuer": "http://localhost.evil.example"}, "issuer"),
    ({"issuer": "http://127.0.0.1.evil.example"}, "issuer"),
    ({"issuer": "ftp://idp.example.com"}, "issuer"),
    ({"issuer": "idp.example.com"}, "issuer"),
    ({"issuer": "/relative/path"}, "issuer"),
    ({"issuer": "https://"}, "issuer"),
    ({"issuer": ""}, "issuer"),
    ({"issuer": None}, "issuer"),
    ({"issuer": 42}, "issuer"),
    ({"issuer": "https://idp.example.com#frag"}, "issuer"),
    ({"issuer": "https://idp.example.com?tenant=a"}, "issuer"),
    ({"issuer": "https://[::1"}, "issuer"),
    ({"audience": ""}, "audience"),
    ({"audience": ()}, "audience"),
    ({"audience": ("ok", "")}, "audience"),
    ({"audience": ("ok", 5)}, "audience"),
    ({"jwks_uri": "http://idp.example.com/jwks"}, "jwks_uri"),
    ({"jwks_uri": "not a url"}, "jwks_uri"),
    ({"algorithms": ()}, "algorithms"),
    ({"algorithms": ("none",)}, "algorithms"),
    ({"algorithms": ("RS256", "None")}, "algorithms"),
    ({"algorithms": ("RS256", "NONE")}, "algorithms"),
    ({"algorithms": ("RS1",)}, "algorithms"),
    ({"algorithms": ("rs256",)}, "algorithms"),
    ({"algorithms": ("HS256",)}, "shared_secret"),
    ({"algorithms": (*DEFAULT_ALGORITHMS, "HS512")}, "shared_secret"),
    ({"algorithms": ("HS256",), "shared_secret": b"short"}, "shared_secret"),
    ({"algorithms": ("HS256",), "shared_secret": b"x" * 31}, "shared_secret"),
    ({"algorithms": ("HS256",), "shared_secret": "s" * 40}, "shared_secret"),
    ({"shared_secret": SECRET}, "shared_secret"),
    ({"leeway": -1}, "leeway"),
    ({"leeway": 601}, "leeway"),
    ({"leeway": float("nan")}, "leeway"),
    ({"leeway": float("inf")}, "leeway"),
    ({"leeway": "30"}, "leeway"),
    ({"leeway": True}, "leeway"),
    ({"max_token_bytes": 0}, "max_token_bytes"),
    ({"max_token_bytes": 1.5}, "max_token_bytes"),
    ({"http_timeout": 0}, "http_timeout"),
    ({"retry_after": 0}, "retry_after"),
    ({"retry_after": 2.5}, "retry_after"),
    ({"verified_cache_size": -1}, "verified_cache_size"),
    ({"verified_cache_size": 10.0}, "verified_cache_size"),
    ({"default": "open"}, "default"),
    ({"realm": 'a"b'}, "realm"),
    ({"realm": 5}, "realm"),
    ({"clock": 12.0}, "clock"),
]


@pytest.mark.parametrize(("options", "field"), BAD_GUARD_OPTIONS, ids=lambda v: repr(v)[:60])
def test_bad_guard_option_names_its_field(options: dict[str, Any], field: str) -> None:
    """A wrong GuardConfig option raises ConfigurationError at build time, naming the field."""
    with pytest.raises(ConfigurationError) as info:
        build(**options)
    assert field in str(info.value)


@pytest.mark.parametrize(
    "issuer",
    [
        "http://127.0.0.1",
        "http://127.0.0.1:8080/realms/x",
        "http://127.9.9.9",
        "http://localhost",
        "http://LOCALHOST:9000",
        "http://[::1]",
        "http://[::1]:8443/tenant",
        "https://idp.example.com",
        "https://idp.example.com/",
        "https://idp.example.com/tenants/a",
    ],
)
def test_accepted_issuers(issuer: str) -> None:
    """https anywhere and plain http on loopback (RFC 8252 §8.3) are allowed, exactly as given."""
    assert build(issuer=issuer).issuer == issuer


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("::2", False),
        ("localhost.example", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_host(host: str | None, loopback: bool) -> None:
    """Only localhost, 127.0.0.0/8 and ::1 count as loopback."""
    assert is_loopback_host(host) is loopback


def test_check_url_returns_the_url_unchanged() -> None:
    """check_url validates and returns its argument untouched (no normalisation)."""
    assert check_url("introspection_endpoint", "https://idp.example.com/a?b=c") == "https://idp.example.com/a?b=c"


def test_defaults() -> None:
    """Defaults: asymmetric algorithms only, 30 s leeway, audience as a tuple, realm from the audience."""
    config = build()
    assert config.algorithms == DEFAULT_ALGORITHMS
    assert not set(config.algorithms) & set(HMAC_ALGORITHMS)
    assert "none" not in {alg.lower() for alg in config.algorithms}
    assert config.leeway == 30.0
    assert config.audience == (AUDIENCE,)
    assert config.effective_realm == AUDIENCE
    assert build(realm="photos").effective_realm == "photos"


def test_audience_list_is_kept_in_order() -> None:
    """Several audiences are accepted and kept as a tuple."""
    config = build(audience=["https://a.example", "https://b.example"])
    assert config.audience == ("https://a.example", "https://b.example")


def test_hmac_with_a_long_enough_secret_is_accepted() -> None:
    """HS256 is allowed next to the asymmetric algorithms once a 32-byte secret is configured."""
    config = build(algorithms=(*DEFAULT_ALGORITHMS, "HS256"), shared_secret=SECRET)
    assert "HS256" in config.algorithms
    assert config.shared_secret == SECRET


def test_shared_secret_is_not_in_the_repr() -> None:
    """The shared secret never shows in repr(config)."""
    config = build(algorithms=("HS256",), shared_secret=b"super-secret-value-" * 2)
    assert "super-secret-value" not in repr(config)


def test_credentials_in_url_queries_are_not_in_reprs() -> None:
    """Found by review: messages drop URL queries (they may hold a credential; userinfo is refused at startup),
    but the reprs of the configuration and the introspector printed them whole, into tracebacks and debug
    pages."""
    from starlette.applications import Starlette

    from tokenguard import TokenGuard

    guard = TokenGuard(
        Starlette(),
        issuer="https://idp.example.com",
        audience="https://api.example.com",
        client_id="api",
        client_secret="client-secret-123456",
        introspection_endpoint="https://idp.example.com/introspect?key=query-secret",
        jwks_uri="https://idp.example.com/jwks?key=query-secret",
    )
    for shown in (repr(guard.config), repr(guard.config.introspection), repr(guard.authenticator.introspector)):
        assert "query-secret" not in shown
        assert "client-secret-123456" not in shown
        assert "idp.example.com/" in shown  # the URL is still named, without its secrets
    assert "jwks_uri='https://idp.example.com/jwks'" in repr(guard.config)


@pytest.mark.parametrize("leeway", [0, 0.5, 600])
def test_leeway_bounds_are_inclusive(leeway: float) -> None:
    """Leeway may be 0 (exact checks) up to 600 seconds."""
    assert build(leeway=leeway).leeway == leeway


def test_verified_cache_can_be_disabled() -> None:
    """verified_cache_size=0 is a valid way to turn the verified-token cache off."""
    assert build(verified_cache_size=0).verified_cache_size == 0


def test_config_is_frozen() -> None:
    """A built configuration cannot be changed afterwards."""
    config = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.issuer = "https://evil.example"  # type: ignore[misc]


def test_clock_is_injectable() -> None:
    """clock= accepts any callable; it is not part of equality."""
    clock = ManualClock()
    assert build(clock=clock).clock is clock
    assert build(clock=clock) == build()


# (options, the field the message must name)
BAD_INTROSPECTION_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"endpoint": "http://idp.example.com/introspect"}, "introspection_endpoint"),
    ({"endpoint": "introspect"}, "introspection_endpoint"),
    ({"client_id": "api"}, "client_secret"),
    ({"client_secret": "s3cret"}, "client_id"),
    ({"auth_method": "private_key_jwt"}, "introspection_auth_method"),
    ({"cache_ttl": -1}, "introspection_cache_ttl"),
    ({"negative_cache_ttl": -0.5}, "introspection_negative_cache_ttl"),
    ({"cache_size": -1}, "introspection_cache_size"),
    ({"cache_size": 1.5}, "introspection_cache_size"),
    ({"timeout": 0}, "introspection_timeout"),
    ({"breaker_threshold": 0}, "breaker_threshold"),
    ({"breaker_cooldown": -1}, "breaker_cooldown"),
]


@pytest.mark.parametrize(("options", "field"), BAD_INTROSPECTION_OPTIONS, ids=lambda v: repr(v)[:60])
def test_bad_introspection_option_names_its_field(options: dict[str, Any], field: str) -> None:
    """A wrong introspection option raises ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as info:
        IntrospectionOptions(**options)
    assert field in str(info.value)


def test_introspection_credentials_together() -> None:
    """client_id with client_secret is accepted and reported as credentials."""
    options = IntrospectionOptions(client_id="api", client_secret="s3cret")
    assert options.has_credentials
    assert not IntrospectionOptions().has_credentials


BAD_JWKS_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"default_ttl": 0}, "jwks.default_ttl"),
    ({"min_ttl": -1}, "jwks.min_ttl"),
    ({"max_ttl": float("inf")}, "jwks.max_ttl"),
    ({"stale_ttl": 0}, "jwks.stale_ttl"),
    ({"refetch_cooldown": -1}, "jwks.refetch_cooldown"),
    ({"min_ttl": 500, "max_ttl": 400}, "jwks.min_ttl"),
    ({"refresh_ahead": 1}, "jwks.refresh_ahead"),
    ({"refresh_ahead": -0.1}, "jwks.refresh_ahead"),
    ({"max_keys": 0}, "jwks.max_keys"),
    ({"max_bytes": 1.5}, "jwks.max_bytes"),
]


@pytest.mark.parametrize(("options", "field"), BAD_JWKS_OPTIONS, ids=lambda v: repr(v)[:60])
def test_bad_jwks_option_names_its_field(options: dict[str, Any], field: str) -> None:
    """A wrong JWKS option raises ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as info:
        JWKSOptions(**options)
    assert field in str(info.value)


def test_jwks_refetch_cooldown_may_be_zero() -> None:
    """A zero refetch cool-down is allowed (tests, or issuers that rotate often)."""
    assert JWKSOptions(refetch_cooldown=0).refetch_cooldown == 0
