"""``DevIdP``: a real OAuth 2.0 authorization server for development and tests.

What it implements, and where:

- RFC 6749 grants ``authorization_code`` (with RFC 7636 PKCE S256 required), ``client_credentials``
  and ``refresh_token``, plus a development-only grant (``DEV_USER_GRANT``) that issues a user's
  access + refresh pair without a browser;
- confidential clients (``client_secret_basic``, ``client_secret_post``) and public ones (RFC 6749
  §2.1, token endpoint auth method ``none``: ``client_id`` only, authorization code + refresh only);
- CORS on the endpoints a browser app calls (token, revocation, metadata, JWKS) for ``cors_origins``;
- refresh-token rotation with replay detection (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2): a used refresh
  token presented again revokes its whole grant, refresh and access tokens alike;
- RFC 9068 JWT access tokens or opaque ones, chosen per audience;
- RFC 8707 resource indicators: ``resource`` on /authorize (several) and the token endpoint (one)
  chooses the access token's ``aud`` among the audiences it knows (``add_audience``), matched as the
  same canonical URI (``tokenguard._uri.canonical_uri``) when not spelled exactly as registered;
- RFC 7591 dynamic client registration (``register_dynamic_client``, ``POST /register``), open to
  anyone: public or confidential clients for the authorization code grant, as MCP clients register;
- for step-up and rich authorization tests: ``acr`` (from the RFC 9470 / OpenID ``acr_values``
  request parameter), ``auth_time`` on every user token, and RFC 9396 ``authorization_details``
  (from the authorization or token request), in tokens, introspection answers and token responses;
- RFC 8693 token exchange (``exchange_token``, ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``):
  a confidential client trades an access token for one that names it (or an actor token's subject) as
  the acting party in ``act`` (§4.1), nesting any earlier ``act``; the subject token's ``may_act``
  (§4.4), when present, must name that party;
- RFC 7662 introspection and RFC 7009 revocation;
- RFC 8414 metadata and a JWKS (served by ``_endpoints``, which is the HTTP side of this class);
- RFC 9449 DPoP at the token endpoint (§5): a request with a valid ``DPoP`` proof gets an access
  token bound to the proof's key (``cnf.jkt``, ``token_type`` "DPoP"), a public client's refresh
  token is bound to that key too, a proof's ``jti`` is accepted once, ``dpop_nonce=True`` demands
  the server's nonce (§8), and ``dpop_jkt`` on /authorize binds the code to a key (§10);
  ``issue_token(dpop_jkt=..., cert_thumbprint=...)`` mints DPoP- and certificate-bound tokens
  (RFC 8705 §3.1) directly, and introspection answers carry their ``cnf``;
- an OpenID Shared Signals (SSF 1.0) transmitter (``_ssf``): discovery (§7), streams managed over
  HTTP (§8.1.1) or with ``add_stream``, CAEP session-revoked SETs when a JWT access token or a grant
  is revoked (``jwt_id`` subjects) or a user logs out (``logout``, ``iss_sub``), any other CAEP/RISC
  event with ``signal``, verification (§8.1.4), delivered by RFC 8935 push (``deliver()``, or at once
  when served) or RFC 8936 poll.

State lives in memory, in bounded stores whose entries expire by the injected ``clock``.
Every method is safe to call from the test thread while the ASGI app serves on another.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import jwt

from tokenguard._dpop import DEFAULT_DPOP_ALGORITHMS, DPoPNonces, check_algorithms, check_proof
from tokenguard._strictjson import strict_loads
from tokenguard._uri import canonical_uri
from tokenguard.config import check_issuer, is_loopback_host
from tokenguard.errors import ConfigurationError, InvalidDPoPProof
from tokenguard.models import MAX_ACT_DEPTH
from tokenguard.testing._keys import ALGORITHMS, KeyRing, SigningKey
from tokenguard.testing._ledger import Ledger, digest, new_id
from tokenguard.testing._model import (
    ACCESS_TOKEN_TYPE,
    DEV_USER_GRANT,
    GRANT_TYPES,
    PUBLIC_GRANT_TYPES,
    SCOPE_TOKEN,
    TOKEN_EXCHANGE_GRANT,
    AccessState,
    Audience,
    Client,
    CodeState,
    Event,
    Grant,
    OAuthError,
    RefreshState,
    TokenFormat,
    TokenSet,
    scope_set,
    scope_string,
)
from tokenguard.testing._ssf import (
    EVENT_TYPES,
    SESSION_REVOKED,
    VERIFICATION,
    WELL_KNOWN,
    DeliveryMethod,
    SSFSettings,
    Stream,
    StreamRequest,
    Transmitter,
    check_authorization,
    check_description,
    check_event_fields,
    check_events,
    check_push_url,
    check_subject,
    new_txn,
    revocation_fields,
)

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

#: RFC 9701 §4, §5: the media type a resource server asks for (``Accept``) to get a signed answer.
INTROSPECTION_JWT = "application/token-introspection+jwt"

DEFAULT_ISSUER = "https://idp.tokenguard.test"
DEFAULT_AUDIENCE = "https://api.tokenguard.test"
DEFAULT_SCOPES: tuple[str, ...] = ("read", "write", "admin")
DEFAULT_USER = "alice"
#: The confidential client registered out of the box (every grant type, every supported scope).
DEFAULT_CLIENT_ID = "dev-client"
DEFAULT_CLIENT_SECRET = "dev-client-secret"
#: Loopback redirect URIs: any port matches (RFC 8252 §7.3), so a local test callback just works.
DEFAULT_REDIRECT_URIS: tuple[str, ...] = ("http://127.0.0.1/callback", "http://localhost/callback")
#: The resource-server client registered out of the box: it may introspect any token, and get none.
RESOURCE_CLIENT_ID = "dev-api"
RESOURCE_CLIENT_SECRET = "dev-api-secret"

# RFC 7636 §4.1: code-verifier = 43*128unreserved; §4.2: an S256 challenge is 43 base64url characters.
_CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_USERNAME = re.compile(r"[\x21-\x7e]{1,255}")
# RFC 9470 §3 / OpenID Connect Core §3.1.2.1: acr_values is a space-separated list of printable values.
_ACR_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")
_MAX_AUTHORIZATION_DETAILS = 16 * 1024
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":"; and a URI holds
# printable US-ASCII only (§2), so no space or control character.
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]*")
_UNSET: Any = object()  # "not given", where None is a value a test may want to send
# RFC 9449 §10: dpop_jkt is an RFC 7638 SHA-256 thumbprint, 32 bytes in base64url.
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")
#: RFC 9449 §11.1: how far a proof's iat may be from now at the token endpoint (seconds, either way).
DPOP_IAT_WINDOW = 60.0

#: RFC 7591 §2 ``token_endpoint_auth_method`` values a dynamically registered client may ask for:
#: "none" makes a public client (RFC 6749 §2.1), the other two a confidential one with a secret.
REGISTRATION_AUTH_METHODS: tuple[str, ...] = ("none", "client_secret_basic", "client_secret_post")
#: RFC 7591 §2 ``grant_types`` a dynamically registered client may ask for. Never
#: ``client_credentials`` nor the development user grant: anyone may register here, without an
#: initial access token (§3), and neither should hand a registrant tokens straight from the token
#: endpoint. That is no consent check: ``/authorize`` auto-approves whichever user ``login_hint``
#: names (README, "The development identity provider"), so a registrant still gets any user's tokens
#: through the redirect. What keeps strangers out is where the DevIdP listens (``tokenguard dev-idp``
#: binds loopback unless ``--allow-remote``): it is a development server, never an exposed one.
REGISTRATION_GRANT_TYPES: tuple[str, ...] = ("authorization_code", "refresh_token")
# Bounds on one registration request's metadata: a development server still refuses unbounded input.
_MAX_REDIRECT_URIS = 16
_MAX_URI_LENGTH = 2048
_MAX_CLIENT_NAME = 256


def parse_authorization_details(value: str, allowed: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The ``authorization_details`` request parameter, checked (RFC 9396 §2, error codes §5)."""
    if len(value) > _MAX_AUTHORIZATION_DETAILS:
        raise OAuthError("invalid_authorization_details", "authorization_details is too large.")
    try:
        # Strict, as every JSON an outsider writes (``_strictjson``): NaN, 1e999 (infinity), a lone surrogate
        # or a duplicate member would be echoed in the token response and in tokens, where no JSON writer
        # (or another reader) takes them as this one did; a 500 at /token once the tokens were minted.
        details = strict_loads(value, object_only=False, lone_surrogates=False)
    except ValueError as exc:
        raise OAuthError("invalid_authorization_details", "authorization_details is not valid JSON.") from exc
    # RFC 9396 §2: "a JSON array of JSON objects", each with a "type" string (REQUIRED).
    if not isinstance(details, list) or not details:
        raise OAuthError("invalid_authorization_details", "authorization_details must be a non-empty JSON array.")
    for entry in details:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or not entry["type"]:
            raise OAuthError("invalid_authorization_details", "Each authorization_details entry needs a type.")
        if allowed is not None and entry["type"] not in allowed:
            # RFC 9396 §5: an unknown type is invalid_authorization_details.
            raise OAuthError("invalid_authorization_details", "An authorization_details type is not supported.")
    return details


def _acr_of(value: str | None) -> str | None:
    """The ``acr`` a request for ``acr_values`` gets: the first (most preferred) value (RFC 9470 §4)."""
    if value is None:
        return None
    values = value.split(" ")
    if any(_ACR_VALUE.fullmatch(item) is None for item in values):
        raise OAuthError("invalid_request", "The acr_values parameter is malformed.")
    return values[0]


def is_resource_indicator(value: object) -> bool:
    """RFC 8707 §2: an absolute URI (RFC 3986 §4.3) that "MUST NOT include a fragment component"."""
    return isinstance(value, str) and _ABSOLUTE_URI.fullmatch(value) is not None and "#" not in value


def _resource_list(values: Iterable[str]) -> tuple[str, ...]:
    """The ``resource`` values of a request, in order, each once; ``invalid_target`` if one is malformed."""
    resources: dict[str, None] = {}  # ordered, each once, in linear time
    for value in values:
        if not is_resource_indicator(value):
            # RFC 8707 §2: invalid_target, "the requested resource is invalid, missing, unknown, or malformed".
            raise OAuthError("invalid_target", "A resource must be an absolute URI without a fragment (RFC 8707 §2).")
        resources[value] = None
        if len(resources) > _MAX_RESOURCES:
            raise OAuthError("invalid_target", f"At most {_MAX_RESOURCES} resources may be requested at once.")
    return tuple(resources)


#: RFC 8707 puts no limit on repeated ``resource`` parameters; a development server still bounds them.
_MAX_RESOURCES = 16


def _resources_of(params: Mapping[str, str], resources: Sequence[str] | None) -> Sequence[str]:
    """The ``resource`` values of a request: given apart (repeatable), or the one in ``params``."""
    if resources is not None:
        if isinstance(resources, str):
            raise TypeError("resources must be a sequence of strings, not a string")
        return resources
    single = params.get("resource")
    return (single,) if single else ()


def _metadata_string(metadata: Mapping[str, Any], name: str, default: str | None) -> str | None:
    """An RFC 7591 §2 string member, or ``default`` when absent (or null); another JSON type is refused."""
    value = metadata.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise OAuthError("invalid_client_metadata", f"{name} must be a non-empty string.")
    return value


def _metadata_strings(metadata: Mapping[str, Any], name: str, default: list[str]) -> list[str]:
    """An RFC 7591 §2 array-of-strings member (redirect_uris, grant_types, response_types), or ``default``."""
    value = metadata.get(name)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise OAuthError("invalid_client_metadata", f"{name} must be an array of non-empty strings.")
    return list(value)


def _user_claims(acr: str | None, auth_time: float | None, authorization_details: Any, now: float) -> dict[str, Any]:
    """What a user's authentication adds to a grant: ``auth_time`` always, ``acr`` and RAR when given."""
    # OpenID Connect Core §2: auth_time is when the user authenticated, in whole seconds.
    claims: dict[str, Any] = {"auth_time": int(now) if auth_time is None else auth_time}
    if acr is not None:
        claims["acr"] = acr
    if authorization_details is not None:
        claims["authorization_details"] = authorization_details
    return claims


def _act_depth(act: object) -> int:
    """How many levels an ``act`` chain has (RFC 8693 §4.1), counting no further than ``MAX_ACT_DEPTH``;
    a level that is not an object counts as too deep (the chain is not extended)."""
    depth = 0
    while depth < MAX_ACT_DEPTH:
        if not isinstance(act, dict):
            return MAX_ACT_DEPTH
        depth += 1
        if "act" not in act:
            return depth
        act = act["act"]
    return depth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a number greater than 0, got {value!r}")
    return value


def _dpop_algorithms(algorithms: Iterable[str] | None) -> tuple[str, ...]:
    """``dpop_algorithms`` checked (asymmetric JWS algorithms, RFC 9449 §4.3), in the library's order."""
    chosen = check_algorithms(DEFAULT_DPOP_ALGORITHMS if algorithms is None else algorithms)
    return tuple(alg for alg in DEFAULT_DPOP_ALGORITHMS if alg in chosen)


def _confirmation(dpop_jkt: str | None, cert_thumbprint: str | None) -> dict[str, str] | None:
    """The ``cnf`` claim of a bound token: RFC 9449 §6.1 ``jkt``, RFC 8705 §3.1 ``x5t#S256``."""
    cnf = {"jkt": dpop_jkt, "x5t#S256": cert_thumbprint}
    return {name: value for name, value in cnf.items() if value is not None} or None


def cors_origin_list(origins: str | Iterable[str] | None) -> tuple[str, ...]:
    """``cors_origins`` checked: ``"*"`` or serialized origins, ``scheme://host[:port]`` (RFC 6454 §6.2)."""
    if origins is None:
        return ()
    items = [origins] if isinstance(origins, str) else list(origins)
    return tuple(origin if origin == "*" else _origin(origin) for origin in items)


def _origin(value: object) -> str:
    """One origin, lower-cased as browsers send it; with a path (even "/") it would never match."""
    shape = f"cors_origins must hold '*' or origins like http://127.0.0.1:8000, got {value!r}"
    if not isinstance(value, str):
        raise ConfigurationError(shape)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a port out of range, an unclosed IPv6 literal
        raise ConfigurationError(shape) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigurationError(shape)
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")) or "@" in parts.netloc:
        raise ConfigurationError(f"a CORS origin is scheme://host[:port], with no path or slash, got {value!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _root_slash(canonical: str | None) -> str | None:
    """An empty path as "/" (RFC 3986 §6.2.3): the AS maps both spellings of a root resource to the
    audience it registered. The resource server itself compares paths exactly (``tokenguard._uri``)."""
    if canonical is None:
        return None
    after_scheme = canonical.index("://") + 3
    return canonical if "/" in canonical[after_scheme:] or "?" in canonical else canonical + "/"


def redirect_uri_matches(registered: str, given: str) -> bool:
    """Exact string match (RFC 9700 §4.1.3), except the port of a loopback IP literal (RFC 8252 §7.3)."""
    if hmac.compare_digest(registered.encode(), given.encode()):
        return True
    try:
        # urlsplit itself refuses some URIs (an unclosed IPv6 literal: "http://[::1/cb"); the port too.
        mine, theirs = urlsplit(registered), urlsplit(given)
        theirs.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        return False
    if mine.scheme != "http" or theirs.scheme != "http" or not is_loopback_host(mine.hostname):
        return False
    same_host = mine.hostname == theirs.hostname and theirs.username is None and theirs.password is None
    return same_host and (mine.path, mine.query, theirs.fragment) == (theirs.path, theirs.query, "")


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    """Append parameters to a redirect URI, keeping its own query (RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class DevIdP:
    """A development identity provider: a real authorization server that runs in-process or on a port.

    ``idp.app`` is its ASGI app and ``idp.http_client`` a factory of ``httpx.AsyncClient`` bound to
    it, so ``TokenGuard(app, issuer=idp.issuer, audience=..., http_client=idp.http_client,
    client_id=RESOURCE_CLIENT_ID, client_secret=RESOURCE_CLIENT_SECRET)`` talks to it without a
    network. ``idp.issue_token(scopes=[...])`` mints an access token in one call.

    Registered out of the box (``default_clients=True``): ``dev-client`` / ``dev-client-secret``,
    a confidential client allowed every grant type and every supported scope, whose redirect URIs
    are ``http://127.0.0.1/callback`` and ``http://localhost/callback`` (any port); and ``dev-api``
    / ``dev-api-secret``, a resource server that may introspect every token.
    ``register_client(client_id)`` without a secret adds a public client (a browser or native app).

    ``cors_origins=["http://127.0.0.1:8000"]`` (or ``["*"]``, for development) lets a browser app on
    those origins call the token and revocation endpoints and read the metadata and JWKS: preflights
    are answered and responses carry ``Access-Control-Allow-Origin``. Off by default.

    Access tokens are for the client's audience (``default_audience`` unless registered with
    another) unless the request names another with ``resource`` (RFC 8707): one of the audiences
    ``add_audience`` registered, else ``invalid_target``. See ``_targets`` for why a token request
    names one resource at most.

    DPoP (RFC 9449): a token request with a ``DPoP`` proof header gets a token bound to the proof's
    key. ``dpop_nonce=True`` makes the token endpoint demand its own nonce in proofs (§8), and
    ``dpop_algorithms`` narrows the proof algorithms it accepts (advertised in the metadata).

    Shared Signals (SSF 1.0): ``add_stream(push_url=..., audience=...)`` (or a receiver, over HTTP)
    subscribes to Security Event Tokens, signed with the DevIdP's key: revoking a JWT access token or a
    grant, and ``logout(user)``, send CAEP session-revoked; ``signal(event_type, subject, ...)`` sends the
    others. ``await idp.deliver()`` pushes what is pending, through ``ssf_http_client`` when given (an
    ``httpx.ASGITransport`` to the app under test); served (``serve``, ``tokenguard dev-idp``), the
    DevIdP pushes each SET as soon as it is queued. ``ssf=SSFSettings(...)`` tunes retries and bounds.
    """

    def __init__(
        self,
        issuer: str = DEFAULT_ISSUER,
        *,
        keys: KeyRing | None = None,
        key_file: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        default_audience: str = DEFAULT_AUDIENCE,
        token_format: TokenFormat = "jwt",
        signing_alg: str = "RS256",
        scopes: str | Iterable[str] = DEFAULT_SCOPES,
        users: Iterable[str] | None = None,
        access_token_ttl: float = 300,
        refresh_token_ttl: float = 86_400,
        code_ttl: float = 60,
        max_entries: int = 10_000,
        max_events: int = 1_000,
        default_clients: bool = True,
        authorization_details_types: Iterable[str] | None = None,
        cors_origins: str | Iterable[str] | None = None,
        dpop_nonce: bool = False,
        dpop_algorithms: Iterable[str] | None = None,
        ssf: SSFSettings | None = None,
        ssf_http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = check_issuer(issuer)
        if not callable(clock):
            raise ConfigurationError("clock must be a callable returning seconds since the epoch")
        self.clock = clock
        self.keys = self._key_ring(keys, key_file)
        # Keys given as ``keys=`` are exactly what this DevIdP signs with; generated ones (saved to
        # ``key_file`` if given) gain a key when an audience asks for a new algorithm.
        self._key_file = key_file if keys is None else None
        self._owns_keys = keys is None
        self.access_token_ttl = int(_positive("access_token_ttl", access_token_ttl))
        self.refresh_token_ttl = _positive("refresh_token_ttl", refresh_token_ttl)
        self.code_ttl = _positive("code_ttl", code_ttl)
        self.max_entries = int(_positive("max_entries", max_entries))
        self.default_audience = default_audience
        self.users = frozenset(users) if users is not None else None
        self._lock = threading.RLock()
        self._scopes: set[str] = set(scope_set(scopes))
        #: RFC 9396 types accepted in requests (``None``: any type; the metadata then lists none).
        self.authorization_details_types = (
            frozenset(authorization_details_types) if authorization_details_types is not None else None
        )
        #: Browser origins allowed to call the token and revocation endpoints, metadata and JWKS.
        self.cors_origins = cors_origin_list(cors_origins)
        #: RFC 9449 §5.1: the algorithms a DPoP proof at the token endpoint may use.
        self.dpop_algorithms = _dpop_algorithms(dpop_algorithms)
        #: RFC 9449 §8: the nonces the token endpoint hands out and demands (``None``: no nonce needed).
        self.dpop_nonces = DPoPNonces(secrets.token_bytes(32), clock=clock) if dpop_nonce else None
        self._audiences: dict[str, Audience] = {}
        self._clients: dict[str, Client] = {}
        #: The ids of the clients ``register_dynamic_client`` made (at most ``max_entries`` of them).
        self._dynamic_clients: set[str] = set()
        self._ledger = Ledger(
            self,
            max_entries=self.max_entries,
            max_events=int(_positive("max_events", max_events)),
            on_revoked=self._access_revoked,
        )
        if ssf is not None and not isinstance(ssf, SSFSettings):
            raise ConfigurationError(f"ssf must be an SSFSettings, got {type(ssf).__name__}")
        self._transmitter = Transmitter(
            issuer=self.issuer,
            clock=clock,
            lock=self._lock,
            signing_key=self._set_signing_key,
            record=self._ledger.record,
            settings=ssf or SSFSettings(),
            http_client=ssf_http_client,
        )
        self._app: Starlette | None = None
        self.add_audience(default_audience, format=token_format, alg=signing_alg)
        if default_clients:
            self.register_client(
                DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, redirect_uris=DEFAULT_REDIRECT_URIS, audience=default_audience
            )
            self.register_client(
                RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, scopes=(), grant_types=(), introspection=True
            )

    @classmethod
    def local(cls, port: int = 9000, host: str = "127.0.0.1", **options: Any) -> DevIdP:
        """A DevIdP whose issuer is ``http://HOST:PORT``, ready for ``serve()`` (http only on loopback)."""
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(f"http://{netloc}", **options)

    @staticmethod
    def _key_ring(keys: KeyRing | None, key_file: str | os.PathLike[str] | None) -> KeyRing:
        if keys is not None and key_file is not None:
            raise ConfigurationError("give keys or key_file, not both")
        if keys is not None:
            return keys
        if key_file is None:
            return KeyRing.generate()
        if os.path.exists(key_file):
            return KeyRing.load(key_file)
        ring = KeyRing.generate()
        ring.save(key_file)  # the next start loads these, so tokens and caches survive a restart
        return ring

    # -- configuration -----------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        scopes: str | Iterable[str] | None = None,
        redirect_uris: Iterable[str] = (),
        audience: str | None = None,
        grant_types: Iterable[str] | None = None,
        introspection: bool = False,
    ) -> Client:
        """Register (or replace) a client: confidential with a ``client_secret``, public without one.

        ``scopes``: what it may ask for (``None``: every scope the DevIdP supports); the scopes
        named are added to the supported ones. ``grant_types`` defaults to all four for a
        confidential client. ``introspection=True`` lets it introspect any token (a resource
        server); other confidential clients may introspect their own tokens only.

        A public client (RFC 6749 §2.1: a single-page or native app, which cannot keep a secret)
        sends its ``client_id`` alone; it needs ``redirect_uris``, may use only the authorization
        code grant (PKCE S256, as for every client here) and refresh tokens, which rotate on every
        use (OAuth 2.1 §4.3.1), and may revoke its own tokens but never introspect.
        """
        if not isinstance(client_id, str) or not client_id.isprintable() or not client_id:
            raise ConfigurationError(f"client_id must be a non-empty printable string, got {client_id!r}")
        if client_secret is not None and (not isinstance(client_secret, str) or not client_secret):
            raise ConfigurationError("client_secret must be a non-empty string, or None for a public client")
        public = client_secret is None
        allowed = scope_set(scopes) if scopes is not None else None
        kinds = frozenset((PUBLIC_GRANT_TYPES if public else GRANT_TYPES) if grant_types is None else grant_types)
        if not kinds <= set(GRANT_TYPES):
            raise ConfigurationError(f"grant_types must be among {list(GRANT_TYPES)}, got {sorted(kinds)}")
        uris = tuple(redirect_uris)
        for uri in uris:
            self._check_redirect_uri(uri)
        if public:
            self._check_public_client(kinds, uris, introspection)
        client = Client(
            client_id=client_id,
            client_secret=client_secret,
            scopes=allowed,
            redirect_uris=uris,
            audience=audience or self.default_audience,
            grant_types=kinds,
            introspection=introspection,
        )
        with self._lock:
            if allowed:
                self._scopes |= allowed
            if client.audience not in self._audiences:
                self.add_audience(client.audience)
            self._clients[client_id] = client
        return client

    @staticmethod
    def _check_public_client(kinds: frozenset[str], uris: tuple[str, ...], introspection: bool) -> None:
        # OAuth 2.1 §2.1 / RFC 6749 §4.4: a client that cannot authenticate gets no client credentials
        # grant (nor the development user grant, which would hand anyone a user's tokens), and
        # RFC 7662 §2.1: the introspection endpoint is for authorized (authenticated) callers only.
        refused = sorted(kinds - set(PUBLIC_GRANT_TYPES))
        if refused:
            raise ConfigurationError(
                f"a public client (no client_secret) may use only {list(PUBLIC_GRANT_TYPES)}, got {refused}"
            )
        if introspection:
            raise ConfigurationError("a public client (no client_secret) may not introspect tokens")
        if not uris:
            raise ConfigurationError("a public client signs users in with the authorization code: give redirect_uris")

    @staticmethod
    def _check_redirect_uri(uri: str) -> None:
        parts = urlsplit(uri) if isinstance(uri, str) else None
        # RFC 6749 §3.1.2: an absolute URI without a fragment.
        if parts is None or not parts.scheme or not parts.netloc or parts.fragment or "#" in uri:
            raise ConfigurationError(f"redirect_uris must be absolute URIs without a fragment, got {uri!r}")

    # -- RFC 7591 dynamic client registration ---------------------------------------------------

    def register_dynamic_client(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Register a client from its RFC 7591 §2 metadata; the §3.2.1 client information response.

        What ``POST {issuer}/register`` does, open to anyone: this is a development IdP, so there is no
        initial access token (RFC 7591 §3) and no software statement. ``token_endpoint_auth_method``
        "none" registers a public client (no secret); "client_secret_basic" (the default, §2) or
        "client_secret_post" a confidential one, whose ``client_secret`` never expires
        (``client_secret_expires_at`` 0, §3.2.1). ``grant_types`` (default ``["authorization_code"]``,
        §2) may hold ``authorization_code`` and ``refresh_token`` only, ``response_types`` only
        ``code``; ``redirect_uris`` is required, each https or http on a loopback host (RFC 8252 §7.3,
        any port), without a fragment. ``scope`` (space-separated, known scopes only) is checked, but a
        dynamically registered client may ask for every scope the DevIdP supports: an MCP client
        registers with the scope of the first challenge and later steps up to more (MCP 2025-11-25
        scope challenges), which a registration capped at its first scope would refuse. RFC 7591
        §3.2.1 lets the server replace requested metadata; the response's ``scope`` says what was
        registered. Metadata it does not know
        (``client_uri``, ``application_type``, ...) is ignored (§2). Refusals are ``OAuthError`` with
        the RFC 7591 §3.2.2 codes ``invalid_redirect_uri`` and ``invalid_client_metadata``; so is a
        registration beyond ``max_entries`` dynamically registered clients.
        """
        if not isinstance(metadata, Mapping):
            raise OAuthError("invalid_client_metadata", "The client metadata must be a JSON object (RFC 7591 §3.1).")
        method = _metadata_string(metadata, "token_endpoint_auth_method", "client_secret_basic")
        if method not in REGISTRATION_AUTH_METHODS:
            raise OAuthError(
                "invalid_client_metadata",
                f"token_endpoint_auth_method must be one of {', '.join(REGISTRATION_AUTH_METHODS)}.",
            )
        # RFC 7591 §2: grant_types defaults to ["authorization_code"], response_types to ["code"].
        grant_types = _metadata_strings(metadata, "grant_types", ["authorization_code"])
        refused = sorted(set(grant_types) - set(REGISTRATION_GRANT_TYPES))
        if refused:
            raise OAuthError(
                "invalid_client_metadata",
                f"grant_types may hold only {', '.join(REGISTRATION_GRANT_TYPES)} here, not {' '.join(refused)}.",
            )
        response_types = _metadata_strings(metadata, "response_types", ["code"])
        if set(response_types) != {"code"}:
            raise OAuthError("invalid_client_metadata", 'response_types must be ["code"]: the only one supported.')
        # RFC 7591 §2.1: response_type "code" goes with the authorization_code grant type.
        if "authorization_code" not in grant_types:
            raise OAuthError(
                "invalid_client_metadata", "grant_types must include authorization_code, as response_types code does."
            )
        redirect_uris = self._registration_redirect_uris(metadata)
        scopes = self._registration_scopes(metadata)
        client_name = _metadata_string(metadata, "client_name", None)
        if client_name is not None and (len(client_name) > _MAX_CLIENT_NAME or not client_name.isprintable()):
            raise OAuthError(
                "invalid_client_metadata", f"client_name must be printable, at most {_MAX_CLIENT_NAME} characters."
            )
        public = method == "none"
        with self._lock:
            self._dynamic_clients &= set(self._clients)  # a client removed or replaced meanwhile no longer counts
            if len(self._dynamic_clients) >= self.max_entries:
                # RFC 7591 §3.2.2 defines no code for a server that will hold no more clients; its
                # invalid_client_metadata is the code clients know, and the description says why.
                raise OAuthError(
                    "invalid_client_metadata",
                    f"This development IdP holds at most {self.max_entries} dynamically registered clients "
                    "(max_entries), and has that many: restart it, or raise max_entries.",
                )
            client_id = "dyn-" + secrets.token_urlsafe(16)
            while client_id in self._clients:  # pragma: no cover - 128 random bits
                client_id = "dyn-" + secrets.token_urlsafe(16)
            # RFC 7591 §3.2.1: a secret for a confidential client only; "none" means the client has none.
            client_secret = None if public else secrets.token_urlsafe(32)
            self.register_client(
                client_id,
                client_secret,
                scopes=None,  # every supported scope: the registration's scope is not a cap (see above)
                redirect_uris=redirect_uris,
                grant_types=grant_types,
            )
            self._dynamic_clients.add(client_id)
            issued_at = int(self.clock())
        # RFC 7591 §3.2.1: client_id, the secret with its expiry (0: never), and the registered
        # metadata, "including any fields provisioned by the authorization server itself".
        answer: dict[str, Any] = {"client_id": client_id, "client_id_issued_at": issued_at}
        if client_secret is not None:
            answer["client_secret"] = client_secret
            answer["client_secret_expires_at"] = 0
        answer.update(
            redirect_uris=list(redirect_uris),
            grant_types=list(dict.fromkeys(grant_types)),
            response_types=["code"],
            token_endpoint_auth_method=method,
        )
        if client_name is not None:
            answer["client_name"] = client_name
        if scopes is not None:
            answer["scope"] = scope_string(self._scopes)
        return answer

    @property
    def dynamic_clients(self) -> frozenset[str]:
        """The ids of the clients registered with ``register_dynamic_client`` (RFC 7591) and still registered."""
        with self._lock:
            return frozenset(self._dynamic_clients & set(self._clients))

    def _registration_redirect_uris(self, metadata: Mapping[str, Any]) -> tuple[str, ...]:
        """RFC 7591 §2 ``redirect_uris``: required here (every client uses the code grant), each checked."""
        if metadata.get("redirect_uris") is None:
            raise OAuthError("invalid_redirect_uri", "redirect_uris is required: the code grant redirects.")
        uris = _metadata_strings(metadata, "redirect_uris", [])
        if not uris:
            raise OAuthError("invalid_redirect_uri", "redirect_uris must name at least one redirect URI.")
        if len(uris) > _MAX_REDIRECT_URIS:
            raise OAuthError("invalid_redirect_uri", f"At most {_MAX_REDIRECT_URIS} redirect_uris may be registered.")
        for uri in uris:
            self._check_registration_redirect_uri(uri)
        return tuple(dict.fromkeys(uris))

    def _check_registration_redirect_uri(self, uri: str) -> None:
        """One redirect URI an anonymous registrant asks for: ``invalid_redirect_uri`` (RFC 7591 §3.2.2) if refused.

        What ``register_client`` demands (an absolute URI, no fragment: RFC 6749 §3.1.2), and on top, as
        a registrant here is anyone: https (RFC 6749 §3.1.2.1, RFC 9700 §4.1.1), or http to a loopback
        host, where a native app listens (RFC 8252 §7.3). No private-use scheme: ``register_client``
        takes none (it wants a host), so a native app registers a loopback redirect URI.
        """
        refusal = OAuthError(
            "invalid_redirect_uri",
            "Each redirect URI must be an https:// URI, or http:// to a loopback host, without a fragment.",
        )
        if len(uri) > _MAX_URI_LENGTH or _ABSOLUTE_URI.fullmatch(uri) is None:
            raise refusal
        try:
            self._check_redirect_uri(uri)
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - a malformed port raises here
        except (ConfigurationError, ValueError) as exc:
            raise refusal from exc
        secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))
        if not secure or not parts.hostname or "@" in parts.netloc:
            raise refusal

    def _registration_scopes(self, metadata: Mapping[str, Any]) -> frozenset[str] | None:
        """RFC 7591 §2 ``scope``: space-separated scopes the client may ask for; known ones only here."""
        value = _metadata_string(metadata, "scope", None)
        if value is None:
            return None  # every supported scope, as for a client registered without scopes
        items = value.split(" ")
        if any(SCOPE_TOKEN.fullmatch(item) is None for item in items):
            raise OAuthError("invalid_client_metadata", "scope must be space-separated scope tokens (RFC 6749 §3.3).")
        unknown = set(items) - self._scopes
        if unknown:
            # Registering a scope must not add it to scopes_supported: only the DevIdP's owner does that.
            raise OAuthError("invalid_client_metadata", f"Unknown scope: {scope_string(unknown)}.")
        return frozenset(items)

    def add_audience(self, audience: str, *, format: TokenFormat = "jwt", alg: str = "RS256") -> None:
        """Issue access tokens for ``audience`` as RFC 9068 JWTs signed with ``alg``, or opaque strings.

        ``alg`` is any algorithm a ``SigningKey`` signs with (RS*, PS*, ES256/384/512, EdDSA). When
        the DevIdP generated its keys and has none for ``alg``, it generates one, publishes it in
        its JWKS and, with ``key_file``, saves it there; keys given as ``keys=`` must include it.
        A client asks for a token for ``audience`` with ``resource=AUDIENCE`` (RFC 8707).
        """
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("audience must be a non-empty string")
        if format not in ("jwt", "opaque"):
            raise ConfigurationError(f"format must be 'jwt' or 'opaque', got {format!r}")
        if alg not in ALGORITHMS:
            raise ConfigurationError(f"alg must be one of {list(ALGORITHMS)}, got {alg!r}")
        with self._lock:
            if alg not in self.keys.algorithms and self._owns_keys:
                # A new ring, never the old one edited: a guard refetches the JWKS when it meets the new kid.
                self.keys = self.keys.with_key(SigningKey.generate(alg))
                if self._key_file is not None:
                    self.keys.save(self._key_file)  # so the next start signs and verifies with it too
            self.keys.key_for(alg)
            self._audiences[audience] = Audience(audience, format, alg)

    def add_scopes(self, *scopes: str) -> None:
        """Add scopes to ``scopes_supported`` (and so to clients registered with ``scopes=None``)."""
        names = scope_set(scopes)
        with self._lock:
            self._scopes |= names

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self._scopes)

    @property
    def clients(self) -> Mapping[str, Client]:
        return dict(self._clients)

    @property
    def audiences(self) -> Mapping[str, Audience]:
        return dict(self._audiences)

    def allowed_scopes(self, client: Client) -> frozenset[str]:
        return client.scopes if client.scopes is not None else frozenset(self._scopes)

    # -- HTTP surface ------------------------------------------------------------------------

    def endpoint(self, name: str) -> str:
        """The URL of an endpoint: ``authorize``, ``token``, ``introspect``, ``revoke``, ``jwks``, ``logout``,
        ``register`` (RFC 7591 dynamic client registration, open to anyone), or the Shared Signals ones:
        ``ssf/streams``, ``ssf/verify``, ``ssf/poll/<stream id>``."""
        return f"{self.issuer.rstrip('/')}/{name}"

    def metadata(self) -> dict[str, Any]:
        """The RFC 8414 §2 authorization server metadata document."""
        auth_methods = ["client_secret_basic", "client_secret_post"]
        # RFC 8414 §2 / RFC 7591 §2: "none" is a public client's method (token and revocation only).
        public_methods = [*auth_methods, "none"]
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("authorize"),
            "token_endpoint": self.endpoint("token"),
            "jwks_uri": self.endpoint("jwks"),
            "introspection_endpoint": self.endpoint("introspect"),
            "revocation_endpoint": self.endpoint("revoke"),
            # RFC 8414 §2 / RFC 7591 §3: where clients register themselves (no initial access token here).
            "registration_endpoint": self.endpoint("register"),
            "scopes_supported": sorted(self._scopes),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            # RFC 8414 §2; RFC 8693 §2.1's token-exchange grant is among them.
            "grant_types_supported": list(GRANT_TYPES),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": public_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": public_methods,
            "authorization_response_iss_parameter_supported": True,
            # RFC 9449 §5.1: the JWS algorithms this server accepts in DPoP proofs.
            "dpop_signing_alg_values_supported": list(self.dpop_algorithms),
            # RFC 9701 §7: the algorithm signed introspection answers (``Accept: INTROSPECTION_JWT``) use.
            "introspection_signing_alg_values_supported": [self._set_signing_key().alg],
            **(
                {"authorization_details_types_supported": sorted(self.authorization_details_types)}
                if self.authorization_details_types is not None
                else {}
            ),
        }

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (RFC 7517 §5): one RSA and one EC key, each with ``kid``, ``alg`` and ``use``."""
        return self.keys.to_jwks()

    @property
    def app(self) -> Starlette:
        """The ASGI app serving metadata, JWKS, /authorize, /token, /introspect, /revoke, /logout, /register and SSF.

        Its lifespan runs the Shared Signals delivery task: served, it pushes each SET once queued.
        """
        if self._app is None:
            from tokenguard.testing._endpoints import build_app

            self._app = build_app(self)
        return self._app

    def http_client(self) -> httpx.AsyncClient:
        """A new ``httpx.AsyncClient`` that reaches this DevIdP in-process (pass the method as a factory)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.issuer)

    def server(self, host: str | None = None, port: int | None = None, **options: Any) -> uvicorn.Server:
        """A ``uvicorn.Server`` for this DevIdP, not yet started; host and port default to the issuer's."""
        try:
            import uvicorn
        except ImportError as exc:
            raise ConfigurationError(
                "serving the DevIdP on a port needs uvicorn: pip install 'tokenguard-asgi[server]'"
            ) from exc
        if self.issuer == DEFAULT_ISSUER:
            # Tokens and metadata would name an issuer that no client can reach at this address.
            raise ConfigurationError(
                "the in-process issuer cannot be served on a port: use DevIdP.local(port) (issuer http://127.0.0.1:PORT)"
            )
        parts = urlsplit(self.issuer)
        host = host or parts.hostname or "127.0.0.1"
        port = port if port is not None else parts.port or (443 if parts.scheme == "https" else 80)
        options.setdefault("log_level", "info")
        return uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, **options))

    def serve(self, host: str | None = None, port: int | None = None, **options: Any) -> None:
        """Serve on a port until interrupted (blocking). See ``DevIdP.local`` for a loopback issuer."""
        self.server(host, port, **options).run()

    def save_keys(self, path: str | os.PathLike[str]) -> None:
        """Write the private signing keys to ``path`` (mode 0600), for ``DevIdP(key_file=path)``."""
        self.keys.save(path)

    # -- events and state, for tests and the demo ---------------------------------------------

    @property
    def events(self) -> list[Event]:
        """What happened, oldest first (bounded): issued, rotated, replay_detected, chain_revoked, ..."""
        with self._lock:
            return list(self._ledger.events)

    def clear_events(self) -> None:
        with self._lock:
            self._ledger.events.clear()

    def grant_of(self, token: str) -> Grant | None:
        """The grant an access or refresh token was issued from (``None`` if unknown or expired).

        A live view, for reading: ``revoked``, ``revoked_reason``, ``chain``, ``refresh_tokens``
        (each ``used``/``active``/``revoked`` with its ``successor``) and ``access_tokens``.
        """
        with self._lock:
            return self._ledger.grant_of(self._ledger.find(token))

    def grant(self, grant_id: str) -> Grant | None:
        with self._lock:
            return self._ledger.grants.get(grant_id)

    @property
    def revoked_jtis(self) -> frozenset[str]:
        """The ``jti`` of every revoked JWT access token that has not expired yet."""
        with self._lock:
            self._ledger.revoked_jtis.expire()
            return frozenset(self._ledger.revoked_jtis.keys())

    def stored(self) -> dict[str, int]:
        """How many entries each bounded store holds now (expired ones dropped first)."""
        with self._lock:
            return self._ledger.counts()

    # -- issuing, from Python ------------------------------------------------------------------

    def issue_token(
        self,
        scopes: str | Iterable[str] = (),
        *,
        subject: str | None = DEFAULT_USER,
        audience: str | None = None,
        client_id: str = DEFAULT_CLIENT_ID,
        expires_in: float | None = None,
        token_format: TokenFormat | None = None,
        alg: str | None = None,
        acr: str | None = None,
        auth_time: float | None = None,
        authorization_details: Any = _UNSET,
        dpop_jkt: str | None = None,
        cert_thumbprint: str | None = None,
        **claims: Any,
    ) -> str:
        """Mint one access token and return it: the one-call minter for tests.

        ``subject=None`` makes a client token (``sub`` is the client id, no ``username``). Scopes
        are not checked against any client: the caller is the test author. Extra ``claims`` are
        added last, so they may also override standard ones to build wrong tokens on purpose.
        The format (JWT or opaque) comes from the audience unless ``token_format`` says otherwise.

        ``acr``, ``auth_time`` (RFC 9470 step-up) and ``authorization_details`` (RFC 9396) become
        claims when given, unchecked, so a test may also hand a malformed value on purpose (even
        ``authorization_details=None``, a null claim).

        ``dpop_jkt`` binds the token to a DPoP key (``cnf.jkt``, RFC 9449 §6.1: the key's RFC 7638
        thumbprint, ``DPoPKey.thumbprint``); ``cert_thumbprint`` to a client certificate
        (``cnf["x5t#S256"]``, RFC 8705 §3.1: base64url SHA-256 of its DER). Both may be given; a
        ``cnf`` in ``claims`` replaces them. Introspection answers carry the same ``cnf``.
        """
        given = {"acr": acr, "auth_time": auth_time}
        extra = {name: value for name, value in given.items() if value is not None}
        if authorization_details is not _UNSET:
            extra["authorization_details"] = authorization_details
        claims = {**extra, **claims}
        with self._lock:
            grant = self._new_grant("direct", client_id, subject, scope_set(scopes), audience)
            token, state = self._ledger.mint_access(
                grant,
                grant.scopes,
                expires_in=expires_in,
                token_format=token_format,
                alg=alg,
                extra=claims,
                confirmation=_confirmation(dpop_jkt, cert_thumbprint),
            )
            self._ledger.emit("issued", grant, grant_type="direct", access_token=state.id, format=state.format)
            self._ledger.keep(grant)
            return token

    def issue_user_tokens(
        self,
        user: str = DEFAULT_USER,
        scopes: str | Iterable[str] = (),
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        audience: str | None = None,
        acr: str | None = None,
        auth_time: float | None = None,
        authorization_details: Any = None,
        dpop_jkt: str | None = None,
        **claims: Any,
    ) -> TokenSet:
        """A user's access + refresh pair, as the development grant issues it (scopes unchecked).

        Its tokens carry ``auth_time`` (now, unless given), and ``acr`` and ``authorization_details``
        when given; refreshed tokens keep them, as the user did not authenticate again.
        ``dpop_jkt``: as if the request proved that DPoP key (RFC 9449 §5): the access token is bound
        to it, and the refresh token too when ``client_id`` is a public client's.
        """
        with self._lock:
            client = self._clients.get(client_id)
            claims = {**_user_claims(acr, auth_time, authorization_details, self.clock()), **claims}
            grant = self._new_grant(DEV_USER_GRANT, client_id, user, scope_set(scopes), audience, claims)
            bind = client is not None and client.public
            return self._ledger.issue(grant, grant.scopes, refresh=True, jkt=dpop_jkt, bind_refresh=bind)

    def refresh(
        self,
        refresh_token: str,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        scopes: str | Iterable[str] | None = None,
        resource: str | None = None,
        dpop_jkt: str | None = None,
    ) -> TokenSet:
        """Use a refresh token as ``client_id`` would at the token endpoint; ``OAuthError`` on refusal.

        ``scopes`` and ``resource`` narrow the new access token to what the grant holds (RFC 6749 §6,
        RFC 8707 §2.2). ``dpop_jkt``: as if the request proved that DPoP key (RFC 9449 §5).
        """
        with self._lock:
            client = self._client(client_id)
            requested = scope_set(scopes) if scopes is not None else None
            targets = self._targets(() if resource is None else (resource,), at_most_one=True)
            return self._refresh_grant(client, refresh_token, requested, targets, dpop_jkt)

    def exchange_token(
        self,
        subject_token: str,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        actor_token: str | None = None,
        scopes: str | Iterable[str] | None = None,
        resource: str | None = None,
        audience: str | None = None,
    ) -> TokenSet:
        """RFC 8693 token exchange as ``client_id`` would ask at the token endpoint; ``OAuthError`` on refusal.

        The issued access token is about the subject token's ``sub`` and carries ``act`` naming the
        acting party: ``client_id``, or ``actor_token``'s ``sub`` when given (see ``_token_exchange_grant``).
        """
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        if actor_token is not None:
            form.update(actor_token=actor_token, actor_token_type=ACCESS_TOKEN_TYPE)
        if scopes is not None:
            form["scope"] = scope_string(scope_set(scopes))
        if audience is not None:
            form["audience"] = audience
        if resource is not None:
            form["resource"] = resource
        return self.token_request(self._client(client_id), form)

    # -- the token endpoint (RFC 6749 §4, §6) ----------------------------------------------------

    def authenticate_client(self, client_id: str, client_secret: str | None) -> Client:
        """The client these credentials name; ``invalid_client`` (401) otherwise (RFC 6749 §5.2).

        ``client_secret=None``: the caller sent its ``client_id`` alone, which only a public client may do.
        """
        client = self._clients.get(client_id)
        if client_secret is None:
            # RFC 6749 §2.3: a confidential client MUST authenticate; only a public one goes without.
            if client is None or not client.public:
                raise OAuthError("invalid_client", "Client authentication failed.", status_code=401)
            return client
        expected = client.client_secret if client is not None else None
        # Compared in constant time, and a secret is compared even for an unknown client id.
        matches = hmac.compare_digest(
            client_secret.encode("utf-8", "surrogatepass"), (expected or secrets.token_urlsafe(16)).encode("utf-8")
        )
        # A public client presenting a secret is refused too: it has none, so someone guessed one.
        if client is None or expected is None or not matches:
            raise OAuthError("invalid_client", "Client authentication failed.", status_code=401)
        return client

    def token_request(
        self,
        client: Client,
        form: Mapping[str, str],
        *,
        resources: Sequence[str] | None = None,
        dpop: str | None = None,
    ) -> TokenSet:
        """Answer a token request from an authenticated client (RFC 6749 §3.2).

        ``resources``: every ``resource`` parameter of the request (RFC 8707 §2, which lets it repeat);
        by default ``form["resource"]``, if any. At most one is accepted here (see ``_targets``).
        ``dpop``: the request's ``DPoP`` proof header (RFC 9449 §5), checked before the grant is
        (so a proof refused for want of a nonce does not use up an authorization code).
        """
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "The grant_type parameter is missing.")
        handlers: dict[str, Callable[[Client, Mapping[str, str], tuple[str, ...], str | None], TokenSet]] = {
            "authorization_code": self._code_grant,
            "client_credentials": self._client_credentials_grant,
            "refresh_token": self._refresh_token_grant,
            DEV_USER_GRANT: self._dev_user_grant,
            TOKEN_EXCHANGE_GRANT: self._token_exchange_grant,
        }
        handler = handlers.get(grant_type)
        if handler is None:
            raise OAuthError("unsupported_grant_type", "This grant type is not supported.")
        # OAuth 2.1 §2.1: whatever its registration says, a public client gets no grant but these two.
        public_refused = client.public and grant_type not in PUBLIC_GRANT_TYPES
        if grant_type not in client.grant_types or public_refused:
            raise OAuthError("unauthorized_client", "This client may not use this grant type.")
        with self._lock:
            jkt = self._proved_key(client, dpop) if dpop is not None else None
            targets = self._targets(_resources_of(form, resources), at_most_one=True)
            return handler(client, form, targets, jkt)

    def _proved_key(self, client: Client, proof: str) -> str:
        """The thumbprint of the key a token request's DPoP proof proves (RFC 9449 §4.3, §5, §8, §11.1).

        ``invalid_dpop_proof`` for a proof that fails a check or was seen before; ``use_dpop_nonce``
        with a fresh ``DPoP-Nonce`` when nonces are demanded and the proof has no current one.
        """
        now = self.clock()
        try:
            checked = check_proof(
                proof,
                method="POST",
                url=self.endpoint("token"),
                access_token=None,
                now=now,
                algorithms=frozenset(self.dpop_algorithms),
                iat_window=DPOP_IAT_WINDOW,
            )
        except InvalidDPoPProof as exc:
            raise OAuthError("invalid_dpop_proof", exc.description) from exc
        if self.dpop_nonces is not None and not self.dpop_nonces.accepts(checked.nonce):
            # RFC 9449 §8: "use_dpop_nonce", with the nonce to use in a DPoP-Nonce header.
            raise OAuthError(
                "use_dpop_nonce",
                "The DPoP proof must carry the nonce this server provides.",
                headers={"DPoP-Nonce": self.dpop_nonces.current()},
            )
        seen = digest(f"{checked.jkt} {checked.jti}")
        if seen in self._ledger.dpop_jtis:
            # RFC 9449 §11.1: a proof is good for one request; its jti is remembered while its iat is.
            self._ledger.emit("dpop_replay_detected", None, client_id=client.client_id, dpop_jkt=checked.jkt)
            raise OAuthError("invalid_dpop_proof", "The DPoP proof was already used.")
        self._ledger.dpop_jtis[seen] = max(now, checked.iat) + DPOP_IAT_WINDOW
        return checked.jkt

    def _targets(self, values: Iterable[str], *, at_most_one: bool) -> tuple[str, ...]:
        """The ``resource`` values of a request, checked: well-formed, and audiences this DevIdP knows.

        RFC 8707 §2 lets a request name several resources, and leaves the AS to decide what it
        issues. Here an access token has one audience: RFC 9700 §2.3 says access tokens "SHOULD be
        audience-restricted", "preferably to a single resource server", so one leaked to or replayed
        by one resource server is refused by the others. So an authorization request may name several
        (``at_most_one=False``: the grant covers them all) and a token request one at most; the client
        gets a token for each other resource with its refresh token, as RFC 8707 §2.2 shows.
        """
        registered = [self._audience_named(value) for value in _resource_list(values)]
        if None in registered:
            # RFC 8707 §2: "unknown" resources are invalid_target too. The value is not echoed.
            raise OAuthError("invalid_target", "This server issues no tokens for that resource.")
        resources = tuple(dict.fromkeys(audience for audience in registered if audience is not None))
        if at_most_one and len(resources) > 1:
            raise OAuthError(
                "invalid_target",
                "Name one resource per token request: each access token has one audience (RFC 9700 §2.3).",
            )
        return resources

    def _audience_named(self, resource: str) -> str | None:
        """The registered audience ``resource`` names: itself, else the same canonical URI (``None``: neither).

        RFC 3986 §6.2.2.1 and §6.2.3: ``HTTP://127.0.0.1:80/mcp`` and ``http://127.0.0.1/mcp`` are one
        resource, and MCP clients send the server URL as they hold it (a root URL often with a "/" added).
        The token names the audience as registered, the string the resource server was told to expect.
        Several audiences with one canonical form: the first registered wins. Other values match exactly.
        """
        if resource in self._audiences:
            return resource
        canonical = _root_slash(canonical_uri(resource))
        if canonical is None:
            return None
        return next(
            (audience for audience in self._audiences if _root_slash(canonical_uri(audience)) == canonical), None
        )

    def _requested_scopes(self, client: Client, value: str | None) -> frozenset[str]:
        """RFC 6749 §3.3: unknown or disallowed scopes are ``invalid_scope``; none asked means the default."""
        allowed = self.allowed_scopes(client)
        if value is None:
            return allowed
        requested = value.split(" ")
        if any(SCOPE_TOKEN.fullmatch(item) is None for item in requested):
            raise OAuthError("invalid_scope", "The scope parameter is malformed.")
        unknown = set(requested) - self._scopes
        if unknown:
            raise OAuthError("invalid_scope", f"Unknown scope: {scope_string(unknown)}.")
        if not set(requested) <= allowed:
            refused = scope_string(set(requested) - allowed)
            raise OAuthError("invalid_scope", f"Scope not allowed for this client: {refused}.")
        return frozenset(requested)

    def _client_credentials_grant(
        self, client: Client, form: Mapping[str, str], targets: tuple[str, ...], jkt: str | None
    ) -> TokenSet:
        scopes = self._requested_scopes(client, form.get("scope"))
        claims = self._details_claims(form.get("authorization_details"))
        audience = targets[0] if targets else client.audience
        grant = self._new_grant("client_credentials", client.client_id, None, scopes, audience, claims, targets)
        # RFC 6749 §4.4.3: "A refresh token SHOULD NOT be included."
        return self._ledger.issue(grant, scopes, refresh=False, jkt=jkt)

    def _dev_user_grant(
        self, client: Client, form: Mapping[str, str], targets: tuple[str, ...], jkt: str | None
    ) -> TokenSet:
        username = form.get("username")
        if not username:
            raise OAuthError("invalid_request", "The username parameter is missing.")
        # RFC 6749 §5.2: invalid resource-owner credentials are "invalid_grant" at the token endpoint.
        self._check_user(username, refusal="invalid_grant")
        scopes = self._requested_scopes(client, form.get("scope"))
        claims = self._authentication_claims(form)
        audience = targets[0] if targets else client.audience
        grant = self._new_grant(DEV_USER_GRANT, client.client_id, username, scopes, audience, claims, targets)
        refresh = "refresh_token" in client.grant_types
        return self._ledger.issue(grant, scopes, refresh=refresh, jkt=jkt, bind_refresh=client.public)

    def _token_exchange_grant(
        self, client: Client, form: Mapping[str, str], targets: tuple[str, ...], jkt: str | None
    ) -> TokenSet:
        """RFC 8693 §2.1: an access token for the subject of ``subject_token``, acted for by the client.

        RFC 8693 §2.2.2: a request that is not valid, and a subject or actor token that is invalid or
        unacceptable by policy (inactive, not an access token of this server, ``may_act`` not naming
        the actor), are ``invalid_request``; a ``resource`` or ``audience`` this server issues no
        tokens for is ``invalid_target``. Policy here (RFC 8693 leaves it to the server): only a
        confidential client exchanges (``token_request`` refuses public ones), any active access token
        of this server may be the subject token unless its ``may_act`` says otherwise, scopes may only
        narrow, no refresh token is issued, and the ``act`` chain is at most ``MAX_ACT_DEPTH`` deep.
        """
        if client.public:
            raise OAuthError("unauthorized_client", "A public client may not exchange tokens.")
        subject_token, subject_type = form.get("subject_token"), form.get("subject_token_type")
        if not subject_token or not subject_type:
            raise OAuthError("invalid_request", "subject_token and subject_token_type are required (RFC 8693 §2.1).")
        if subject_type != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", "Only access tokens are exchanged here.")
        requested_type = form.get("requested_token_type")
        if requested_type is not None and requested_type != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", "Only access tokens are issued by an exchange here.")
        subject = self._exchanged_claims(subject_token, "subject_token")
        self._check_exchange_binding(subject, jkt)
        actor_token, actor_type = form.get("actor_token"), form.get("actor_token_type")
        if actor_token is None:
            if actor_type is not None:  # RFC 8693 §2.1: "MUST NOT be included otherwise"
                raise OAuthError("invalid_request", "actor_token_type is given without an actor_token.")
            actor = client.client_id  # the authenticated client acts for the subject
        else:
            if actor_type != ACCESS_TOKEN_TYPE:  # REQUIRED with actor_token; only access tokens here
                raise OAuthError("invalid_request", "actor_token_type must name an access token.")
            actor_claims = self._exchanged_claims(actor_token, "actor_token")
            self._check_exchange_binding(actor_claims, jkt)  # a bound actor token proves its holder too
            actor = actor_claims["sub"]
        self._check_may_act(subject.get("may_act"), actor, "may_act" in subject)
        act: dict[str, Any] = {"sub": actor}
        if "act" in subject:
            # RFC 8693 §4.1: the subject token was itself delegated; its actor becomes the prior one.
            if _act_depth(subject["act"]) >= MAX_ACT_DEPTH:
                raise OAuthError("invalid_request", "The subject token's delegation chain is too long (or malformed).")
            act["act"] = subject["act"]
        value = subject.get("scope")
        granted = (
            frozenset(s for s in value.split(" ") if SCOPE_TOKEN.fullmatch(s))
            if isinstance(value, str)
            else frozenset()
        )
        scope = form.get("scope")
        scopes = self._scope_subset(scope) if scope is not None else granted
        if not scopes <= granted:
            raise OAuthError("invalid_scope", "The scope exceeds what the subject token grants.")
        audience = self._exchange_audience(client, form, targets)
        # The user's authentication is the subject token's: step-up claims carry over, unchanged.
        claims: dict[str, Any] = {name: subject[name] for name in ("acr", "auth_time") if name in subject}
        claims["act"] = act
        grant = self._new_grant(TOKEN_EXCHANGE_GRANT, client.client_id, subject["sub"], scopes, audience, claims)
        tokens = self._ledger.issue(grant, scopes, refresh=False, jkt=jkt)
        # RFC 8693 §2.2.1: issued_token_type is REQUIRED in the response.
        return dataclasses.replace(tokens, issued_token_type=ACCESS_TOKEN_TYPE)

    @staticmethod
    def _check_exchange_binding(subject: Mapping[str, Any], jkt: str | None) -> None:
        """A sender-constrained subject token is exchanged only by a request proving its key, and the token
        issued is bound to that key (``jkt``): an exchange must not turn a token useless without its key
        (RFC 9449 §1, RFC 8705 §3) into a bearer token. A confirmation of another kind (``x5t#S256``) is not
        proved at this endpoint, so such a token is not exchanged (RFC 8693 §2.2.2: unacceptable by policy).
        """
        confirmation = subject.get("cnf")
        if confirmation is None:
            return
        bound = confirmation.get("jkt") if isinstance(confirmation, Mapping) else None
        if not isinstance(bound, str) or set(confirmation) != {"jkt"}:
            raise OAuthError("invalid_request", "The subject_token is bound in a way this endpoint cannot check.")
        if jkt != bound:
            raise OAuthError("invalid_request", "The subject_token is bound to a DPoP key this request does not prove.")

    def _exchanged_claims(self, token: str, name: str) -> dict[str, Any]:
        """The claims of an active access token this server issued (JWT or opaque); ``invalid_request`` otherwise."""
        found = self._ledger.find(token, "access_token")
        if not isinstance(found, AccessState) or not self._ledger.is_active(found):
            raise OAuthError("invalid_request", f"The {name} is not an active access token of this server.")
        claims = dict(found.claims)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OAuthError("invalid_request", f"The {name} names no subject.")
        return claims

    def _check_may_act(self, may_act: object, actor: str, present: bool) -> None:
        """RFC 8693 §4.4: a subject token's ``may_act`` names who may act for its subject; others may not.

        ``may_act`` is an object of claims identifying that party: ``sub`` (required here) and, when
        given, ``iss``, which must be this server (the actor is named by its tokens or clients).
        """
        if not present:
            return
        if not isinstance(may_act, dict) or not isinstance(may_act.get("sub"), str):
            raise OAuthError("invalid_request", "The subject token's may_act claim is malformed.")
        if may_act["sub"] != actor or may_act.get("iss", self.issuer) != self.issuer:
            raise OAuthError("invalid_request", "The subject token does not allow this party to act for its subject.")

    def _exchange_audience(self, client: Client, form: Mapping[str, str], targets: tuple[str, ...]) -> str:
        """RFC 8693 §2.1 ``resource`` (RFC 8707) and ``audience``: one registered audience, else ``invalid_target``."""
        named = self._targets((form["audience"],), at_most_one=True) if "audience" in form else ()
        if targets and named and targets != named:
            raise OAuthError("invalid_target", "resource and audience name different targets; name one.")
        chosen = targets or named
        return chosen[0] if chosen else client.audience

    def _details_claims(self, value: str | None) -> dict[str, Any]:
        """RFC 9396 §6: ``authorization_details`` in a token request, for grants without /authorize."""
        if value is None:
            return {}
        return {"authorization_details": parse_authorization_details(value, self.authorization_details_types)}

    def _authentication_claims(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The user "authenticates" now, at the level asked for first in ``acr_values`` (RFC 9470 §4).

        ``max_age`` is checked for shape only: every authentication here is a fresh one.
        """
        max_age = params.get("max_age")
        if max_age is not None and not (max_age.isascii() and max_age.isdigit()):
            raise OAuthError("invalid_request", "The max_age parameter must be a whole number of seconds.")
        details = params.get("authorization_details")
        parsed = parse_authorization_details(details, self.authorization_details_types) if details else None
        return _user_claims(_acr_of(params.get("acr_values")), None, parsed, self.clock())

    def _check_user(self, username: str, *, refusal: str = "access_denied") -> None:
        if _USERNAME.fullmatch(username) is None:
            raise OAuthError("invalid_request", "The user name is malformed.")
        if self.users is not None and username not in self.users:
            raise OAuthError(refusal, "This user may not sign in here.")

    def _refresh_token_grant(
        self, client: Client, form: Mapping[str, str], targets: tuple[str, ...], jkt: str | None
    ) -> TokenSet:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "The refresh_token parameter is missing.")
        scope = form.get("scope")
        requested = self._scope_subset(scope) if scope is not None else None
        return self._refresh_grant(client, token, requested, targets, jkt)

    @staticmethod
    def _scope_subset(value: str) -> frozenset[str]:
        items = value.split(" ")
        if any(SCOPE_TOKEN.fullmatch(item) is None for item in items):
            raise OAuthError("invalid_scope", "The scope parameter is malformed.")
        return frozenset(items)

    def _refresh_grant(
        self,
        client: Client,
        token: str,
        requested: frozenset[str] | None,
        targets: tuple[str, ...] = (),
        jkt: str | None = None,
    ) -> TokenSet:
        state = self._ledger.refresh.get(digest(token))
        grant = self._ledger.grants.get(state.grant_id) if state is not None else None
        if state is None or grant is None:
            raise OAuthError("invalid_grant", "The refresh token is invalid or expired.")
        # RFC 6749 §6: the refresh token must have been issued to the authenticated client.
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "The refresh token was issued to another client.")
        if state.jkt is not None and jkt != state.jkt:
            # RFC 9449 §5: a public client's refresh token is bound to its DPoP key; a request that
            # does not prove that key gets nothing, and (not being its holder) changes nothing.
            raise OAuthError("invalid_grant", "The refresh token is bound to a DPoP key this request does not prove.")
        if state.status == "used":
            # OAuth 2.1 §4.3.1 / RFC 9700 §4.14.2: a rotated-away refresh token came back. Either the
            # legitimate client or an attacker holds a copy; the server cannot tell which, so the
            # whole grant goes: every refresh token and every access token issued from it.
            self._ledger.emit("replay_detected", grant, refresh_token=state.id, successor=state.successor)
            self._ledger.revoke_grant(grant, "refresh_token_replay")
            raise OAuthError("invalid_grant", "The refresh token was already used; the grant is revoked.")
        if state.status == "revoked" or grant.revoked:
            raise OAuthError("invalid_grant", "The refresh token has been revoked.")
        scopes = grant.scopes if requested is None else requested
        # RFC 6749 §6: the requested scope "MUST NOT include any scope not originally granted".
        if not scopes <= grant.scopes:
            raise OAuthError("invalid_scope", "The scope exceeds what was originally granted.")
        # RFC 8707 §2.2: a refresh request may name a resource, to narrow the new access token's
        # audience to one of the grant's; never to widen it to another.
        if targets and targets[0] not in grant.targets:
            raise OAuthError("invalid_target", "The resource is not one this grant was issued for.")
        # OAuth 2.1 §4.3.1: a public client's refresh tokens MUST rotate (or be sender-constrained);
        # here every client's do, so a leaked one is good for one use and its reuse is detected.
        audience = targets[0] if targets else None
        # RFC 9449 §5: a confidential client's refresh token stays bound to its client authentication
        # (it may change keys); a public client's is bound to the key it proves from now on.
        return self._ledger.issue(
            grant, scopes, refresh=True, parent=state, audience=audience, jkt=jkt, bind_refresh=client.public
        )

    def _code_grant(
        self, client: Client, form: Mapping[str, str], targets: tuple[str, ...], jkt: str | None
    ) -> TokenSet:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code:
            raise OAuthError("invalid_request", "The code parameter is missing.")
        state = self._ledger.codes.get(digest(code))
        # RFC 6749 §4.1.3: the code must have been issued to this client.
        if state is None or state.client_id != client.client_id:
            raise OAuthError("invalid_grant", "The authorization code is invalid or expired.")
        if state.used:
            # RFC 6749 §4.1.2: a code used twice is refused, and what it issued SHOULD be revoked.
            grant = self._ledger.grants.get(state.grant_id) if state.grant_id else None
            self._ledger.emit("code_reuse_detected", grant, code=state.id, client_id=client.client_id)
            if grant is not None:
                self._ledger.revoke_grant(grant, "authorization_code_reuse")
            raise OAuthError("invalid_grant", "The authorization code was already used.")
        # RFC 6749 §4.1.3: redirect_uri must be identical to the one in the authorization request.
        if state.redirect_uri_given and form.get("redirect_uri") != state.redirect_uri:
            raise OAuthError("invalid_grant", "The redirect_uri does not match the authorization request.")
        if not verifier:
            raise OAuthError("invalid_request", "The code_verifier parameter is missing (PKCE is required).")
        if _CODE_VERIFIER.fullmatch(verifier) is None:
            raise OAuthError("invalid_request", "The code_verifier is malformed (RFC 7636 §4.1).")
        # RFC 8707 §2.2: the token request's resource must be one the authorization request named
        # (when it named any). Checked before the code is spent: a wrong resource is a client's mistake
        # to correct, not a sign of a stolen code.
        if targets and state.resources and targets[0] not in state.resources:
            raise OAuthError("invalid_target", "The resource was not named in the authorization request.")
        # A full ledger answers 503 before the code is spent: "try again later" must not burn it, or the
        # retry would read as a stolen code's reuse and revoke the grant. Only a refresh token needs room.
        if "refresh_token" in client.grant_types:
            self._ledger.refresh.room()
        state.used = True  # one attempt per code: a wrong verifier burns it (a code injection attempt)
        # RFC 7636 §4.6: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) == code_challenge.
        computed = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        if not hmac.compare_digest(computed, state.code_challenge):
            raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge.")
        if state.dpop_jkt is not None and jkt != state.dpop_jkt:
            # RFC 9449 §10: the code is bound to the key named by dpop_jkt; another key (or none) is refused.
            raise OAuthError(
                "invalid_grant", "The authorization code is bound to a DPoP key this request does not prove."
            )
        # Without a resource, the token is for the first the authorization request named.
        resources = state.resources or targets
        audience = targets[0] if targets else resources[0] if resources else client.audience
        grant = self._new_grant(
            "authorization_code", client.client_id, state.subject, state.scopes, audience, state.claims, resources
        )
        state.grant_id = grant.id
        refresh = "refresh_token" in client.grant_types
        return self._ledger.issue(grant, state.scopes, refresh=refresh, jkt=jkt, bind_refresh=client.public)

    # -- the authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3) ----------------------------

    def authorize(self, params: Mapping[str, str], *, resources: Sequence[str] | None = None) -> str:
        """Auto-approve an authorization request and return the redirect URL (with code or error).

        Raises ``OAuthError`` only when the client or redirect URI is invalid: then the user must
        not be sent anywhere (RFC 6749 §4.1.2.1). The user is ``login_hint`` (default ``alice``).
        ``resources``: every ``resource`` parameter (RFC 8707 §2.1, several allowed); by default
        ``params["resource"]``, if any.
        """
        with self._lock:
            client = self._clients.get(params.get("client_id") or "")
            if client is None:
                raise OAuthError("invalid_request", "Unknown or missing client_id.")
            redirect_uri = self._redirect_uri(client, params.get("redirect_uri"))
            answer: dict[str, str]
            try:
                answer = {"code": self._new_code(client, redirect_uri, params, _resources_of(params, resources))}
            except OAuthError as exc:
                answer = exc.as_dict()
            if params.get("state"):
                answer["state"] = params["state"]
            # RFC 9207 §2: the issuer identifies itself in the authorization response (mix-up defence).
            answer["iss"] = self.issuer
            return _with_query(redirect_uri, answer)

    def _redirect_uri(self, client: Client, given: str | None) -> str:
        if given is None:
            # RFC 6749 §3.1.2.3: may be omitted only when exactly one is registered.
            if len(client.redirect_uris) != 1:
                raise OAuthError("invalid_request", "The redirect_uri parameter is required for this client.")
            return client.redirect_uris[0]
        if not any(redirect_uri_matches(registered, given) for registered in client.redirect_uris):
            raise OAuthError("invalid_request", "The redirect_uri is not registered for this client.")
        return given

    def _new_code(self, client: Client, redirect_uri: str, params: Mapping[str, str], resources: Sequence[str]) -> str:
        response_type = params.get("response_type")
        if not response_type:
            raise OAuthError("invalid_request", "The response_type parameter is missing.")
        if response_type != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        if "authorization_code" not in client.grant_types:
            raise OAuthError("unauthorized_client", "This client may not use the authorization code grant.")
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        # RFC 7636 §4.4.1 and OAuth 2.1 §4.1.1: PKCE is required here, and only with S256.
        if not challenge:
            raise OAuthError("invalid_request", "PKCE is required: code_challenge is missing.")
        if method != "S256":
            raise OAuthError("invalid_request", "Only code_challenge_method=S256 is supported.")
        if _S256_CHALLENGE.fullmatch(challenge) is None:
            raise OAuthError("invalid_request", "The code_challenge is malformed.")
        scopes = self._requested_scopes(client, params.get("scope"))
        targets = self._targets(resources, at_most_one=False)
        user = params.get("login_hint") or DEFAULT_USER
        self._check_user(user)
        claims = self._authentication_claims(params)
        dpop_jkt = params.get("dpop_jkt")
        if dpop_jkt is not None and _JKT.fullmatch(dpop_jkt) is None:
            # RFC 9449 §10: the JWK SHA-256 thumbprint (RFC 7638) of the key the client will prove.
            raise OAuthError("invalid_request", "The dpop_jkt parameter is not a JWK SHA-256 thumbprint.")
        code = secrets.token_urlsafe(32)
        state = CodeState(
            id=new_id("code_"),
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            redirect_uri_given="redirect_uri" in params,
            subject=user,
            scopes=scopes,
            code_challenge=challenge,
            expires_at=self.clock() + self.code_ttl,
            claims=claims,
            resources=targets,
            dpop_jkt=dpop_jkt,
        )
        self._ledger.codes[digest(code)] = state
        scope = scope_string(scopes)
        self._ledger.emit("code_issued", None, client_id=client.client_id, code=state.id, user=user, scope=scope)
        return code

    # -- introspection (RFC 7662) and revocation (RFC 7009) -------------------------------------

    def introspect(
        self, token: str, *, token_type_hint: str | None = None, client_id: str | None = None
    ) -> dict[str, Any]:
        """The RFC 7662 §2.2 answer for ``token``, as seen by ``client_id`` (``None``: any token).

        A public client may not introspect: ``OAuthError`` ``unauthorized_client``.
        """
        with self._lock:
            caller = self._clients.get(client_id) if client_id is not None else None
            if caller is not None and caller.public:
                # RFC 7662 §2.1: the endpoint answers authorized callers only, and a public client
                # cannot authenticate: anyone could call with its client_id.
                raise OAuthError("unauthorized_client", "A public client may not introspect tokens.")
            found = self._ledger.find(token, token_type_hint)
            answer: dict[str, Any] = {"active": False}
            if found is not None and self._ledger.is_active(found):
                grant = self._ledger.grants.get(found.grant_id)
                # RFC 7662 §2.2: a client not allowed to see this token gets {"active": false}.
                visible = client_id is None or (caller is not None and caller.introspection)
                if grant is not None and (visible or grant.client_id == client_id):
                    answer = self._ledger.describe(found, grant)
            self._ledger.emit(
                "introspected",
                self._ledger.grants.get(found.grant_id) if found is not None else None,
                token=found.id if found is not None else None,
                active=answer["active"],
                by=client_id,
            )
            return answer

    def introspect_jwt(self, token: str, *, client_id: str, token_type_hint: str | None = None) -> str:
        """The RFC 9701 §5 answer for ``token``: ``introspect``'s answer, signed, for the client ``client_id``.

        A compact JWS with header ``typ`` ``token-introspection+jwt`` and the signing key's ``kid``,
        signed with the key of the default audience's algorithm (the one the metadata advertises in
        ``introspection_signing_alg_values_supported``); claims ``iss``, ``aud`` (the client that
        asked), ``iat`` and ``token_introspection`` (the RFC 7662 answer, ``{"active": false}``
        included). No ``sub`` or ``exp`` at the top: it is not an access token (RFC 9701 §5, §8.1).
        """
        answer = self.introspect(token, token_type_hint=token_type_hint, client_id=client_id)
        key = self._set_signing_key()
        claims = {"iss": self.issuer, "aud": client_id, "iat": int(self.clock()), "token_introspection": answer}
        headers = {"typ": "token-introspection+jwt", "kid": key.kid}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=headers)

    def revoke(self, token: str, *, token_type_hint: str | None = None, client_id: str | None = None) -> bool:
        """Revoke ``token`` (RFC 7009 §2.1); a refresh token takes its whole grant with it.

        ``client_id``: the client asking, which may revoke its own tokens only (``None``: any).
        Returns whether something was revoked; the endpoint answers 200 either way.
        """
        with self._lock:
            found = self._ledger.find(token, token_type_hint)
            grant = self._ledger.grants.get(found.grant_id) if found is not None else None
            if found is None or grant is None or (client_id is not None and grant.client_id != client_id):
                return False
            if isinstance(found, RefreshState):
                # RFC 7009 §2.1: revoking a refresh token SHOULD invalidate the access tokens of its grant.
                self._ledger.emit("revoked", grant, token_type="refresh_token", token=found.id)
                self._ledger.revoke_grant(grant, "refresh_token_revoked")
            else:
                self._ledger.emit("revoked", grant, token_type="access_token", token=found.id)
                self._ledger.revoke_access(found)
            return True

    def revoke_grant(self, grant_id: str, reason: str = "revoked") -> bool:
        """Revoke a whole grant by id; ``False`` when it is unknown or expired."""
        with self._lock:
            grant = self._ledger.grants.get(grant_id)
            if grant is None:
                return False
            self._ledger.revoke_grant(grant, reason)
            return True

    # -- Shared Signals (SSF 1.0): the transmitter, in _ssf ------------------------------------

    @property
    def transmitter(self) -> Transmitter:
        """The Shared Signals transmitter: its streams, their outboxes, and delivery."""
        return self._transmitter

    @property
    def ssf_http_client(self) -> httpx.AsyncClient | None:
        """The client SETs are pushed through (``None``: a plain ``httpx.AsyncClient`` per delivering loop).

        A client given is used from whichever event loop delivers: give one whose transport does not
        tie it to one loop (``httpx.ASGITransport``), or deliver from a single loop.
        """
        return self._transmitter.http_client

    @ssf_http_client.setter
    def ssf_http_client(self, client: httpx.AsyncClient | None) -> None:
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise ConfigurationError(f"ssf_http_client must be an httpx.AsyncClient, got {type(client).__name__}")
        self._transmitter.http_client = client

    @property
    def ssf_metadata_url(self) -> str:
        """Where the SSF metadata is: ``/.well-known/ssf-configuration`` before the issuer's path (SSF §7.2)."""
        parts = urlsplit(self.issuer)
        return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + parts.path.rstrip("/"), "", ""))

    def ssf_metadata(self) -> dict[str, Any]:
        """The SSF 1.0 §7.1 Transmitter Configuration Metadata (apart from, not in, the RFC 8414 document)."""
        return {
            "spec_version": "1_0",
            "issuer": self.issuer,
            # SSF §4.1.4: SETs are signed with a key of the DevIdP's own JWKS.
            "jwks_uri": self.endpoint("jwks"),
            "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
            "configuration_endpoint": self.endpoint("ssf/streams"),
            "verification_endpoint": self.endpoint("ssf/verify"),
            # SSF §7.1.1: receivers authenticate as OAuth clients (here: HTTP Basic, RFC 6749 §2.3.1).
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            # SSF §7.1: no subject endpoints here, so a stream gets events about every subject.
            "default_subjects": "ALL",
        }

    def add_stream(
        self,
        *,
        push_url: str | None = None,
        authorization: str | None = None,
        audience: str,
        events: Iterable[str] | None = None,
        method: DeliveryMethod = "push",
        description: str | None = None,
    ) -> str:
        """Create an event stream to the receiver ``audience`` (the SETs' ``aud``); returns its id.

        ``method="push"`` (RFC 8935) needs ``push_url`` (https, or http to a loopback host), and
        ``authorization`` is sent verbatim as each push's ``Authorization`` header; ``method="poll"``
        (RFC 8936): the receiver polls ``endpoint("ssf/poll/<id>")``, authenticated as the client whose
        ``client_id`` is ``audience``. ``events``: the event types requested (``None``: all supported);
        verification events are always sent (SSF §8.1.4).
        """
        if method not in ("push", "poll"):
            raise ConfigurationError(f"method must be 'push' or 'poll', got {method!r}")
        if not isinstance(audience, str) or not audience or not audience.isprintable():
            raise ConfigurationError(f"audience must be a non-empty printable string, got {audience!r}")
        if method == "poll" and (push_url is not None or authorization is not None):
            raise ConfigurationError("a poll stream takes no push_url or authorization: its receiver polls")
        if method == "push" and push_url is None:
            raise ConfigurationError("a push stream needs push_url, where its SETs are POSTed (RFC 8935)")
        request = StreamRequest(
            method=method,
            events=None if events is None else check_events(events, "events"),
            push_url=None if push_url is None else check_push_url(push_url, "push_url"),
            authorization=None if authorization is None else check_authorization(authorization, "authorization"),
            description=check_description(description, "description"),
        )
        return self._transmitter.add(request, audience).stream_id

    def remove_stream(self, stream_id: str) -> bool:
        """Delete a stream and its undelivered SETs; ``False`` when there is no such stream."""
        return self._transmitter.remove(stream_id)

    @property
    def streams(self) -> Mapping[str, Stream]:
        """The event streams by id, read-only (a snapshot)."""
        return MappingProxyType(self._transmitter.streams)

    def stream_configuration(self, stream: Stream) -> dict[str, Any]:
        """A stream's configuration, as the configuration endpoint answers with it (SSF §8.1.1)."""
        return self._transmitter.configuration(stream, self.endpoint(f"ssf/poll/{stream.stream_id}"))

    def signal(
        self, event_type: str, subject: Mapping[str, Any], *, txn: str | None = None, **fields: Any
    ) -> list[str]:
        """Queue a SET of ``event_type`` about ``subject`` to every stream that asked for it; their ``jti`` s.

        ``subject``: an RFC 9493 subject identifier, e.g. ``{"format": "iss_sub", "iss": idp.issuer,
        "sub": "alice"}``. ``fields``: the event's members, e.g. ``credential_type="password",
        change_type="update"`` (CAEP §3.3) or ``claims={...}`` (§3.2); ``event_timestamp`` defaults to
        now. ``txn`` (SSF §4.1.9) defaults to a new one, shared by the SETs of this call.
        """
        if event_type not in EVENT_TYPES:
            raise ConfigurationError(f"event_type must be one of {list(EVENT_TYPES)}, got {event_type!r}")
        if event_type == VERIFICATION:
            raise ConfigurationError("a verification event is about one stream: use verify_stream(stream_id)")
        sub_id = check_subject(subject)
        check_event_fields(event_type, fields)
        try:
            json.dumps([sub_id, fields], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the subject and fields of an event must be JSON: {exc}") from exc
        if txn is not None and (not isinstance(txn, str) or not txn):
            raise ConfigurationError("txn must be a non-empty string")
        return self._transmitter.queue(event_type, sub_id, fields, txn=txn or new_txn())

    def verify_stream(self, stream_id: str, state: str | None = None) -> str:
        """Queue a verification SET on one stream (SSF §8.1.4.1), echoing ``state``; its ``jti``."""
        if self._transmitter.get(stream_id) is None:
            raise ConfigurationError(f"no stream {stream_id!r}")
        if state is not None and not isinstance(state, str):
            raise ConfigurationError("state must be a string")
        # SSF §8.1.4.1: the subject of a verification event is the stream itself, an opaque id.
        subject = {"format": "opaque", "id": stream_id}
        fields = {} if state is None else {"state": state}
        jtis = self._transmitter.queue(VERIFICATION, subject, fields, txn=new_txn(), stream_id=stream_id)
        if not jtis:
            raise ConfigurationError(f"no stream {stream_id!r}")  # deleted meanwhile
        return jtis[0]

    def logout(self, user: str) -> int:
        """End every session of ``user``: revoke all their grants, and send one session-revoked SET.

        The SET's subject is the user (``iss_sub``, RFC 9493 §3.2.3), its ``event_timestamp`` now: a
        receiver refuses every token of theirs issued until then. (The grants' access tokens get no
        ``jwt_id`` SET of their own: the user's covers them.) Returns how many grants were revoked.
        """
        self._check_logout_user(user)
        with self._lock:
            self._ledger.grants.expire()
            grants = [grant for grant in list(self._ledger.grants.values()) if grant.subject == user]
            live = [grant for grant in grants if not grant.revoked]
            for grant in live:
                self._ledger.revoke_grant(grant, "logout", announce=False)
            self._ledger.record("logout", grant_id=None, client_id=None, subject=user, grants=len(live))
            subject = {"format": "iss_sub", "iss": self.issuer, "sub": user}
            fields = revocation_fields("logout", int(self.clock()))
            self._transmitter.queue(SESSION_REVOKED, subject, fields, txn=new_txn())
            return len(live)

    async def deliver(self) -> int:
        """Push every SET pending now (RFC 8935), retrying as ``SSFSettings`` says; how many were delivered."""
        return await self._transmitter.deliver()

    def delivering(self) -> AbstractAsyncContextManager[None]:
        """``async with idp.delivering():`` pushes each SET as soon as it is queued (the app's lifespan does this)."""
        return self._transmitter.running()

    def ssf_status(self, stream_id: str | None = None) -> dict[str, int]:
        """SETs ``queued``, ``delivered``, ``rejected``, ``failed``, ``dropped`` (ever) and ``pending`` (now).

        For every stream (with ``streams``, how many exist), or for one.
        """
        status = self._transmitter.status(stream_id)
        if status is None:
            raise ConfigurationError(f"no stream {stream_id!r}")
        return status

    @staticmethod
    def _check_logout_user(user: object) -> None:
        if not isinstance(user, str) or _USERNAME.fullmatch(user) is None:
            raise ConfigurationError(f"the user must be a user name (printable, no spaces), got {user!r}")

    def _set_signing_key(self) -> SigningKey:
        """The key SETs and signed introspection answers are signed with: the one that signs the default
        audience's access tokens."""
        return self.keys.key_for(self._audiences[self.default_audience].alg)

    def _access_revoked(self, grant: Grant | None, revoked: list[AccessState], reason: str) -> None:
        """JWT access tokens revoked while usable: a CAEP session-revoked SET each (``jwt_id``, SSF §3.5.1)."""
        if not self._transmitter.active:
            return
        txn = new_txn()  # SSF §4.1.9: one cause, one txn for all its SETs
        fields = revocation_fields(reason, int(self.clock()))
        for state in revoked:
            jti, iss = state.claims.get("jti"), state.claims.get("iss")
            if not isinstance(jti, str):
                continue  # a token minted without a jti on purpose names no subject a receiver could match
            subject = {"format": "jwt_id", "iss": iss if isinstance(iss, str) else self.issuer, "jti": jti}
            self._transmitter.queue(SESSION_REVOKED, subject, fields, txn=txn, grant=grant)

    # -- the machinery -------------------------------------------------------------------------

    def _client(self, client_id: str) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            raise ConfigurationError(f"no client {client_id!r} is registered")
        return client

    def _new_grant(
        self,
        kind: str,
        client_id: str,
        subject: str | None,
        scopes: frozenset[str],
        audience: str | None,
        claims: Mapping[str, Any] | None = None,
        resources: tuple[str, ...] = (),
    ) -> Grant:
        client = self._clients.get(client_id)
        audience = audience or (client.audience if client is not None else self.default_audience)
        return self._ledger.new_grant(kind, client_id, subject, scopes, audience, claims, resources)

    def __repr__(self) -> str:
        return f"DevIdP(issuer={self.issuer!r}, clients={sorted(self._clients)!r})"
