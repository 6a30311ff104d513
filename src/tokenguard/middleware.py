"""``TokenGuard``: the pure-ASGI middleware that guards every HTTP and WebSocket request. [adapter]

Shape after Starlette's own authentication middleware: pass other scope types through first,
answer a refusal with one ASGI response and return, put the results in ``scope``. Never
``BaseHTTPMiddleware``: it skips WebSockets and breaks contextvars.

``__call__`` reads as the pipeline (docs/ARCHITECTURE.md): which policy (``routing``), check the
token against it (``authenticator``, then ``_details`` for RFC 9396), refuse (``challenge.render``)
or go on, report (``events``). The options are assembled by ``config.guard_configs``; the RFC 9728
document is answered by ``resource_metadata.serve``; ``request.auth``/``request.user`` are
``credentials``' types.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from starlette.authentication import AuthCredentials, UnauthenticatedUser
from starlette.convertors import PathConvertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenguard._binding import Binding, DPoPMode, sender_constraints
from tokenguard._details import check_details, read_body
from tokenguard._http import HttpClientOption
from tokenguard._mcp import NOTHING_MORE, MCPPolicy, ToolsListFilter, filtering_send
from tokenguard._startup import FailedGuard, argument_problem, built_by_framework, fail_startup
from tokenguard._status import GuardStatus, MetricsSnapshot
from tokenguard._tenants import is_template, issuer_for
from tokenguard.authenticator import Authenticator, MultiIssuerAuthenticator
from tokenguard.challenge import render, send_denial
from tokenguard.config import (
    CONFIG_OPTIONS,
    ClientAuthMethod,
    DefaultPolicy,
    GuardConfig,
    IntrospectionResponse,
    check_count,
    guard_configs,
)
from tokenguard.credentials import TokenCredentials, TokenUser
from tokenguard.errors import AuthError, ConfigurationError, InvalidRequest, TokenGuardError, UnavailableError
from tokenguard.events import DecisionHook, Metrics, Outcome, decision_event, emit
from tokenguard.extract import client_of, host_and_authorization, is_preflight
from tokenguard.fleet import Fleet
from tokenguard.jwt_validator import bytes_digest
from tokenguard.models import AccessToken
from tokenguard.policy import AUTHENTICATED, PUBLIC, Requirement, Rule
from tokenguard.resource_metadata import ResourceMetadata, build_resource_metadata
from tokenguard.resource_metadata import serve as serve_metadata
from tokenguard.revocation import Revocation, RevocationKind, RevocationList
from tokenguard.routing import (
    DECISION_KEY,
    REQUIREMENT_KEY,
    RouteDecision,
    RouteResolver,
    declared_requirements,
    host_of,
    route_path,
    routed_app,
)
from tokenguard.ssf import SharedSignals, SignalReceiver
from tokenguard.store import FleetStore, MemoryStore, SharedStore

__all__ = ["TokenCredentials", "TokenGuard", "TokenUser"]

logger = logging.getLogger("tokenguard")

#: Where ``_enforce_call`` leaves the ``tools/list`` filter for ``__call__`` to wrap ``send`` with.
_TOOLS_LIST_KEY = "tokenguard.mcp_tools_list"


class TokenGuard:
    """Requires a valid OAuth 2.0 bearer access token on every route that is not ``@public``.

    ``app.add_middleware(TokenGuard, issuer=..., audience=...)`` is all an app needs: keys come
    from the issuer's metadata (RFC 8414, then OpenID discovery). See README for every option.

    ``issuer`` may list several issuers: each gets its own discovery, JWKS cache and introspection
    endpoint (``client_id``/``client_secret`` are shared), and a JWT's ``iss`` picks its issuer
    before any key is looked up. ``jwks_uri``, ``introspection_endpoint`` and ``shared_secret`` name
    one issuer's endpoints or keys, so they need a single issuer. An issuer holding ``{tenantid}`` is a
    tenant template (Entra multi-tenant apps) and needs ``tenants``; ``allowed_client_ids`` lets tokens
    without ``aud`` (Amazon Cognito access tokens) through by their ``client_id``. ``resource_metadata`` (on by
    default) serves RFC 9728 metadata for ``resource`` (default: the first https audience);
    ``False`` turns it off, a dict adds members such as ``resource_name``.

    A wrong, missing or unknown option is a ``ConfigurationError`` naming it. Built lazily by the
    framework (``add_middleware``), the guard fails the lifespan startup with that message instead,
    so the server refuses to start (``_startup``).
    """

    _failed: FailedGuard | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Python's own TypeError for a missing or unknown keyword says neither what the option is nor
        # the fix: check the names first. ``args[0]`` is the app. A subclass with its own ``__init__``
        # takes its own arguments, and ``copy.copy`` calls ``__new__`` with none: neither is checked.
        if (not args and not kwargs) or cls.__init__ is not TokenGuard.__init__:
            return super().__new__(cls)
        problem = argument_problem(TokenGuard.__init__, args[1:], {k: v for k, v in kwargs.items() if k != "app"})
        if problem is None:
            return super().__new__(cls)
        error = ConfigurationError(problem)
        if built_by_framework():
            return FailedGuard(args[0] if args else kwargs["app"], error)
        raise error

    def __init__(
        self,
        app: ASGIApp,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        jwks_uri: str | None = None,
        introspection_endpoint: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        introspection_auth_method: ClientAuthMethod = "client_secret_basic",
        algorithms: Sequence[str] | None = None,
        leeway: float = 30.0,
        introspection_cache_ttl: float = 30.0,
        introspection_negative_cache_ttl: float = 5.0,
        introspection_cache_size: int = 10_000,
        introspection_timeout: float = 3.0,
        introspection_requires_aud: bool = True,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
        introspection_first_sight_rate: float = 10.0,
        introspection_first_sight_burst: int = 20,
        introspection_first_sight_concurrency: int = 8,
        introspection_response: IntrospectionResponse = "json",
        default: DefaultPolicy = "authenticated",
        rules: Iterable[Rule] = (),
        http_client: HttpClientOption = None,
        shared_secret: bytes | None = None,
        strict_rfc9068: bool = False,
        max_token_bytes: int = 16 * 1024,
        realm: str | None = None,
        http_timeout: float = 5.0,
        retry_after: int = 5,
        verified_cache_size: int = 10_000,
        jwks_cache_ttl: float = 3600.0,
        jwks_min_ttl: float = 300.0,
        jwks_max_ttl: float = 86400.0,
        jwks_refetch_cooldown: float = 30.0,
        jwks_stale_ttl: float = 86400.0,
        route_cache_size: int = 4096,
        prefetch: bool = False,
        on_decision: DecisionHook | Sequence[DecisionHook] | None = None,
        introspection_credentials: Mapping[str, tuple[str, str]] | None = None,
        resource: str | None = None,
        resource_metadata: bool | Mapping[str, Any] = True,
        max_body_bytes: int = 64 * 1024,
        dpop: DPoPMode = "allowed",
        dpop_algorithms: Sequence[str] | None = None,
        dpop_iat_window: float = 60.0,
        dpop_nonce: bool = False,
        dpop_nonce_secret: bytes | None = None,
        replay_store: SharedStore | None = None,
        trusted_proxies: Sequence[str] | str | None = None,
        public_url: str | None = None,
        client_certificate_header: str | None = None,
        shared_store: str | FleetStore | Any | None = None,
        shared_signals: SharedSignals | None = None,
        revocation_fail_closed: bool = False,
        max_token_lifetime: float = 86400.0,
        revocation_max_entries: int = 100_000,
        mcp: MCPPolicy | None = None,
        allowed_client_ids: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
        tenants: Sequence[str] | Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        options = locals()
        try:
            self._configure(options)
        except Exception as exc:
            if not built_by_framework():
                raise
            # Any wrong option (a TypeError from a value of the wrong type included) must stop the
            # server, not only the ConfigurationErrors the validators raise.
            error = (
                exc
                if isinstance(exc, ConfigurationError)
                else ConfigurationError(
                    f"an option has a value of the wrong type ({type(exc).__name__}: {str(exc)[:200]})"
                )
            )
            self._failed = FailedGuard(app, error)

    def _configure(self, options: Mapping[str, Any]) -> None:
        """Validate and assemble every option (``__init__``'s arguments, by name)."""
        http_client, resource, rules = options["http_client"], options["resource"], options["rules"]
        on_decision = options["on_decision"]
        check_count("route_cache_size", options["route_cache_size"], allow_zero=True)
        rules = () if rules is None else rules
        if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Iterable):
            rules = (rules,)
        rules = tuple(rules)
        if not all(isinstance(rule, Rule) for rule in rules):
            raise ConfigurationError(
                "rules must be a list of tokenguard.Rule objects, e.g. Rule('/static', public=True)"
            )
        self.configs = guard_configs(**{name: options[name] for name in CONFIG_OPTIONS})
        self.config = self.configs[0]
        issuers = self.issuers
        # One issuer: the Authenticator is called directly, with no dispatch in between.
        self.authenticator: Authenticator | MultiIssuerAuthenticator = (
            Authenticator(self.config, http_client=http_client)
            if len(issuers) == 1
            else MultiIssuerAuthenticator(self.configs, http_client=http_client)
        )
        # Fleet mode: one store shared by every process (introspection answers, DPoP replay, revocations).
        store = _fleet_store(options["shared_store"])
        self.shared_store: FleetStore | None = store
        replay_store = options["replay_store"] if options["replay_store"] is not None else store
        # Sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS): proofs, nonces, the replay store.
        self.constraints = sender_constraints(
            dpop=options["dpop"],
            dpop_algorithms=options["dpop_algorithms"],
            dpop_iat_window=options["dpop_iat_window"],
            dpop_nonce=options["dpop_nonce"],
            dpop_nonce_secret=options["dpop_nonce_secret"],
            replay_store=replay_store,
            trusted_proxies=options["trusted_proxies"],
            public_url=options["public_url"],
            client_certificate_header=options["client_certificate_header"],
            leeway=self.config.leeway,
            clock=self.config.clock,
        )
        self.authenticator.constraints = self.constraints
        self._configure_fleet(options, store)
        self._dpop_algs = self.constraints.algs if self.constraints.dpop_enabled else ()
        self.resource_metadata: ResourceMetadata | None = build_resource_metadata(
            options["resource_metadata"],
            resource=resource,
            audience=self.config.audience,
            issuers=_metadata_issuers(self.configs),
        )
        self._metadata_url = self.resource_metadata.url if self.resource_metadata is not None else None
        self._metadata_paths = frozenset(self.resource_metadata.paths) if self.resource_metadata else frozenset()
        # Paths the guard answers itself: RFC 9728 metadata, the RFC 8935 push endpoint.
        self._own_paths = self._metadata_paths | ({self._push_path} if self._push_path else set())
        default_requirement = PUBLIC if options["default"] == "public" else AUTHENTICATED
        self.resolver = RouteResolver(tuple(rules), default_requirement, cache_size=options["route_cache_size"])
        self.resolver.enforce = self._enforce_at_dispatch
        self.resolver.checks_beyond_policy = self._checks_beyond_policy
        if options["mcp"] is not None and not isinstance(options["mcp"], MCPPolicy):
            raise ConfigurationError(
                "mcp must be a tokenguard.mcp.MCPPolicy, e.g. MCPPolicy(tools={'transfer': ToolPolicy(scopes='pay')})"
            )
        #: Per-tool policy of an MCP endpoint (``_mcp``): the JSON-RPC body says what a call needs.
        self.mcp: MCPPolicy | None = options["mcp"]
        self._prefetch = options["prefetch"]
        self._realm = self.config.effective_realm
        if on_decision is None:
            self._hooks: tuple[DecisionHook, ...] = ()
        elif callable(on_decision):
            self._hooks = (on_decision,)
        else:
            self._hooks = tuple(on_decision)
        if not all(callable(hook) for hook in self._hooks):
            raise ConfigurationError("on_decision must be a callable or a list of callables")
        self.metrics = Metrics()

    def _configure_fleet(self, options: Mapping[str, Any], store: FleetStore | None) -> None:
        """The revocation list, its feed, the shared introspection answers and the Shared Signals receiver."""
        lifetime, fail_closed = options["max_token_lifetime"], options["revocation_fail_closed"]
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 60 <= lifetime <= 30 * 86400:
            raise ConfigurationError(f"max_token_lifetime must be seconds between 60 and 30 days, got {lifetime!r}")
        if not isinstance(fail_closed, bool):
            raise ConfigurationError(f"revocation_fail_closed must be True or False, got {fail_closed!r}")
        check_count("revocation_max_entries", options["revocation_max_entries"])
        clock = self.config.clock
        self.max_token_lifetime = float(lifetime)
        self.revocations = RevocationList(max_entries=options["revocation_max_entries"], clock=clock)
        self.fleet = Fleet(self.revocations, store, fail_closed=fail_closed, clock=clock)
        self.authenticator.revocations = self.revocations
        if store is not None:
            self.authenticator.share(store)
        signals = options["shared_signals"]
        self.signals: SignalReceiver | None = None
        self._push_path: str | None = None
        if signals is not None:
            if not isinstance(signals, SharedSignals):
                raise ConfigurationError("shared_signals must be a tokenguard.SharedSignals(...)")
            audience = signals.audience if signals.audience is not None else options["client_id"]
            if audience is None:
                raise ConfigurationError(
                    "shared_signals needs audience= (what the transmitter puts in the SETs' aud), or client_id"
                )
            self.signals = SignalReceiver(
                signals,
                audience=(audience,) if isinstance(audience, str) else tuple(audience),
                token_issuers=self.issuers,
                fleet=self.fleet,
                dedup=store if store is not None else MemoryStore(clock=clock),
                http=self.authenticator.http,
                max_token_lifetime=self.max_token_lifetime,
                leeway=self.config.leeway,
                clock=clock,
            )
            self._push_path = signals.push_path
        self._background = store is not None or (signals is not None and signals.poll_url is not None)
        if store is not None or signals is not None:
            self._enforce_lifetime()

    def _enforce_lifetime(self) -> None:
        """Revocations are in use: refuse tokens that would outlive the entries covering them.

        An entry by ``sub``/``client_id`` is forgotten ``max_token_lifetime`` after its cut-off, so a
        token living longer could come back to life. Checked when a token is validated (the verified
        tokens of before are checked again), so a verified-cache hit costs nothing more.
        """
        if self.authenticator.max_lifetime is None:
            self.authenticator.limit_lifetime(self.max_token_lifetime)

    def _start_background(self) -> None:
        """The revocation feed's listener and the Shared Signals poller, in the running loop."""
        self.fleet.ensure_started()
        if self.signals is not None:
            self.signals.ensure_polling()

    async def revoke(
        self,
        *,
        jti: str | None = None,
        sub: str | None = None,
        client_id: str | None = None,
        issued_before: float | None = None,
        expires_at: float | None = None,
        issuer: str | None = None,
    ) -> None:
        """Refuse tokens before they expire, on every route (ordinary ones too), in every process.

        Exactly one of: ``jti`` (that one token), ``sub`` or ``client_id`` (every token of that subject or
        client issued before ``issued_before``; by default, up to the end of the current second). ``issuer``
        narrows it to one configured issuer. ``expires_at``: when the tokens covered expire at the latest (a
        ``jti``'s ``exp``), so the entry can be forgotten sooner; default now (or ``issued_before``) plus
        ``max_token_lifetime``. Applied in this process at once; with ``shared_store``, published to every
        process within a second. Raises ``tokenguard.store.StoreUnavailable`` when the store cannot take it now
        (it is applied here, and published when the store is back).
        """
        given = [(kind, value) for kind, value in (("jti", jti), ("sub", sub), ("client_id", client_id)) if value]
        if len(given) != 1 or not all(isinstance(value, str) for _kind, value in given):
            raise ValueError("revoke() needs exactly one of jti=, sub= or client_id= (a non-empty string)")
        kind: RevocationKind = given[0][0]  # type: ignore[assignment]
        value = given[0][1]
        assert value is not None
        if issuer is not None and issuer not in self.issuers:
            raise ValueError(f"revoke(issuer=...) must be one of the configured issuers {list(self.issuers)}")
        now = self.config.clock()
        keep = self.max_token_lifetime + self.config.leeway
        if kind == "jti":
            if issued_before is not None:
                raise ValueError(
                    "revoke(jti=...) covers one token whenever it was issued: issued_before does not apply"
                )
            cutoff, until = float("inf"), now + keep
        else:
            # Default: the end of this second. ``iat`` has whole seconds, so a token issued earlier in
            # this second is covered too (RevocationList: covered when ``iat`` < cut-off).
            cutoff = math.floor(now) + 1.0 if issued_before is None else float(issued_before)
            until = cutoff + keep
        if expires_at is not None:
            until = min(until, float(expires_at) + self.config.leeway)
        self._enforce_lifetime()
        await self.fleet.revoke(Revocation(kind, value, cutoff, max(until, now + 1.0), issuer))

    __signature__ = inspect.signature(__init__).replace(
        parameters=list(inspect.signature(__init__).parameters.values())[1:]
    )  # what ``help()`` and IDEs show: ``__init__``'s options, not ``__new__``'s ``*args, **kwargs``

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._failed is not None:
            await self._failed(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope["tokenguard"] = self
        started = time.perf_counter()
        if self._background:
            self._start_background()
        if scope["type"] == "http" and scope["path"] in self._own_paths:
            if scope["path"] == self._push_path:
                assert self.signals is not None
                status = await self.signals.serve(scope, receive, send)
                decision = RouteDecision(PUBLIC, scope["path"])
                self._decided(scope, decision, started, "allow" if status == 202 else "deny", "public", status, None)
                return
            assert self.resource_metadata is not None
            status = await serve_metadata(self.resource_metadata, scope, send, self._declared(scope))
            outcome: Outcome = "allow" if status == 200 else "deny"
            reason = "public" if status == 200 else "method_not_allowed"
            self._decided(scope, RouteDecision(PUBLIC, scope["path"]), started, outcome, reason, status, None)
            return
        # One pass over the headers: ``Host`` for the route decision, ``Authorization`` for the token.
        host, values = host_and_authorization(scope.get("headers", ()))
        try:
            decision = self.resolver.decide(scope, self.app, host)
        except Exception as exc:
            # Routing must fail closed: the endpoint's policy is unknown (marks that cannot be
            # combined, a route table that cannot be read), and no fallback policy is safe for it.
            logger.error("tokenguard: route resolution failed: %s", type(exc).__name__)
            decision = RouteDecision(self.resolver.default, None)
            self._decided(scope, decision, started, "unavailable", "internal_error", 503, None)
            denial = render(UnavailableError("route resolution failed"), realm=self._realm)
            await send_denial(scope, receive, send, denial)
            return
        # A preflight never carries credentials (Fetch §3.2.2), so it is not refused — unless the
        # endpoint itself answers OPTIONS (then a faked preflight would reach it anonymously). It
        # goes on as anonymous, for a CORS middleware inside the guard (or the router's 405) to answer.
        if scope.get("method") == "OPTIONS" and not decision.answers_options and is_preflight(scope):
            decision = decision._replace(requirement=PUBLIC)
        # The decision goes with the request: the dispatch check compares it with the route the
        # router actually picks (routing.py, ``_DispatchCheck``).
        scope[DECISION_KEY] = decision
        requirement = decision.requirement
        digest: bytes | None = None
        hit: AccessToken | None = None
        if requirement.plain and self.mcp is None and len(values) == 1:
            # The fast lane: a ``Bearer`` token on a route that asks only for scopes. A verified-cache hit
            # with nothing else to decide is allowed in one call (``Authenticator.hit``); a token seen
            # first is validated in one more (``Authenticator.miss``), which allows it or raises
            # the full path's own refusal. Anything else (keys to fetch, revocations, a proof to check,
            # a value that is not a compact JWS) goes through ``_enforce``, the digest already made.
            value = values[0]
            prefix = value[:7]
            if prefix == b"Bearer " or prefix.lower() == b"bearer ":
                raw = value[7:]
                digest = bytes_digest(raw)
                authenticator = self.authenticator
                hit = authenticator.hit(digest, requirement)
                if hit is None:
                    try:
                        hit = authenticator.miss(raw, digest, requirement)
                    except Exception as exc:
                        scope[REQUIREMENT_KEY] = requirement
                        await self._deny(exc, scope, receive, send, decision, started, None, None)
                        return
        if hit is not None:
            scope[REQUIREMENT_KEY] = requirement
            scope["auth"], scope["user"] = TokenCredentials(hit, None), TokenUser(hit)
            self._decided(scope, decision, started, "allow", "ok", 200, hit)
            checked: Receive | None = receive
        elif requirement.public and not self._mcp_call(scope):  # no token work, no extra frame on public routes
            self._allow_anonymous(scope, decision, started)
            checked = receive
        else:
            checked = await self._enforce(scope, receive, send, decision, requirement, started, values, digest)
        if checked is None:
            return
        if self.mcp is not None:
            rewrite = scope.pop(_TOOLS_LIST_KEY, None)
            if rewrite is not None:
                send = filtering_send(send, rewrite)
        # An ``AuthError`` the app raises (a ``tokenguard.fastapi`` dependency, an endpoint raising
        # ``InsufficientScope``) is rendered here, by the one renderer, so a refusal looks the same
        # whichever layer made it. Dependencies run before the endpoint answers; an app that raises
        # after it started its answer fails as any late exception does (the server ends the response).
        try:
            await self.app(scope, checked, send)
        except AuthError as exc:
            await self._refuse_raised(exc, scope, checked, send, decision, started)

    async def _refuse_raised(
        self, exc: AuthError, scope: Scope, receive: Receive, send: Send, decision: RouteDecision, started: float
    ) -> None:
        denial = render(exc, realm=self._realm, resource_metadata=self._metadata_url, dpop_algs=self._dpop_algs)
        token = exc.token if exc.token is not None else getattr(scope.get("auth"), "token", None)
        self._decided(scope, decision, started, "deny", exc.reason, denial.status, token)
        await send_denial(scope, receive, send, denial)

    def _allow_anonymous(self, scope: Scope, decision: RouteDecision, started: float) -> None:
        scope[REQUIREMENT_KEY] = decision.requirement
        scope["auth"], scope["user"] = AuthCredentials(), UnauthenticatedUser()
        self._decided(scope, decision, started, "allow", "public", 200, None)

    async def _enforce(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        decision: RouteDecision,
        requirement: Requirement,
        started: float,
        values: list[bytes] | None = None,
        digest: bytes | None = None,
    ) -> Receive | None:
        """Apply ``requirement``: the ``receive`` the app must use, or ``None`` once a refusal was sent.

        ``values``/``digest``: the ``Authorization`` values and the token's SHA-256 when ``__call__``
        read them already (``Authenticator.authenticate_request``)."""
        if requirement.public:
            if not self._mcp_call(scope):
                self._allow_anonymous(scope, decision, started)
                return receive
            # An MCP endpoint with a policy is never public, whatever the route or the default says:
            # its scopes and every tool's policy need a token to be checked against.
            requirement = AUTHENTICATED
        # The policy applied, for the app and for the dispatch check.
        scope[REQUIREMENT_KEY] = requirement
        token: AccessToken | None = None
        mcp = self.mcp
        on_mcp = self._at_mcp(scope)
        if on_mcp:
            assert mcp is not None
            # Every request to the MCP endpoint needs the endpoint's own scopes (MCPPolicy scopes=).
            if mcp.scopes:
                requirement = mcp.merged(requirement, mcp.endpoint)
        try:
            token, binding = await self.authenticator.authenticate_request(
                scope.get("headers", ()),
                requirement,
                client=client_of(scope),
                scope=scope,
                values=values,
                digest=digest,
            )
            if on_mcp and scope["method"] == "POST":
                assert mcp is not None
                token, binding, receive = await self._enforce_call(mcp, scope, receive, requirement, token, binding)
            if requirement.details:
                receive = await check_details(
                    scope,
                    receive,
                    requirement.details,
                    decision.path_params,
                    token,
                    read_body_too=requirement.needs_body,
                    max_body_bytes=self.config.max_body_bytes,
                )
        except Exception as exc:
            await self._deny(exc, scope, receive, send, decision, started, mcp if on_mcp else None, token)
            return None
        scope["auth"], scope["user"] = TokenCredentials(token, binding), TokenUser(token)
        self._decided(scope, decision, started, "allow", "ok", 200, token)
        return receive

    async def _deny(
        self,
        exc: Exception,
        scope: Scope,
        receive: Receive,
        send: Send,
        decision: RouteDecision,
        started: float,
        mcp: MCPPolicy | None,
        token: AccessToken | None,
    ) -> None:
        """Answer a request the token checks refused: ``exc``'s own challenge, or a 503 for anything else.

        ``mcp``: the policy of the MCP endpoint the request went to (its scopes go in a 401's challenge);
        ``token``: the token validated before the refusal, if any (for the decision event)."""
        if not isinstance(exc, TokenGuardError):  # a bug must still fail closed, without a traceback to the client
            logger.error("tokenguard: internal error while checking a token: %s", type(exc).__name__)
            error = UnavailableError(f"internal error: {type(exc).__name__}")
            self._decided(scope, decision, started, "unavailable", "internal_error", 503, None)
            await send_denial(scope, receive, send, render(error, realm=self._realm))
            return
        denial = render(
            exc,
            realm=self._realm,
            resource_metadata=self._metadata_url,
            dpop_algs=self._dpop_algs,
            # MCP 2025-11-25 scope selection: a 401 names the scopes to ask for first (RFC 6750 §3).
            scopes=_challenge_scopes(exc, mcp),
        )
        outcome: Outcome = "unavailable" if denial.status == 503 else "deny"
        refused = exc.token if isinstance(exc, AuthError) and exc.token is not None else token
        self._decided(scope, decision, started, outcome, exc.reason, denial.status, refused)
        await send_denial(scope, receive, send, denial)

    def _at_mcp(self, scope: Scope) -> bool:
        """An HTTP request to the MCP endpoint, any method, when ``mcp=`` is set.

        The endpoint is ``MCPPolicy.path`` as the app's routes see it, and the route that path leads to
        on this request's app and host: a request the router hands to that route is an MCP request
        however its path is spelled — through an app's own ``root_path`` (``FastAPI(root_path=...)``,
        applied after the guard), a template's parameters (``/t/{tenant}/mcp``) or a mount's prefix.
        A path comparison alone would send those past every tool's policy.
        """
        mcp = self.mcp
        if mcp is None or scope["type"] != "http":
            return False
        if mcp.at(route_path(scope)):
            return True
        decision = scope.get(DECISION_KEY)
        if not isinstance(decision, RouteDecision) or decision.route is None:
            return False
        return self._is_mcp_endpoint(decision.route, scope)

    def _is_mcp_endpoint(self, route: Any, scope: Mapping[str, Any]) -> bool:
        """Whether ``route`` is the one ``MCPPolicy.path`` leads to on this request's app, root and host: its
        endpoint serves every value of its path parameters (every tenant of ``/t/{tenant}/mcp``), so each of
        them is an MCP request. (A catch-all route, whose endpoint decides itself which paths are MCP, is
        refused at startup: ``_check_mcp_path``.)"""
        assert self.mcp is not None
        return route is self.resolver.decide_path(self.mcp.path, scope, self.app, host_of(scope)).route

    def _checks_beyond_policy(self, route: Any, scope: Mapping[str, Any]) -> bool:
        """At a dispatch the guard did not predict: the MCP endpoint needs its per-call policy checked,
        whatever the route's own requirement (``RouteResolver.confirm``)."""
        return self.mcp is not None and scope.get("type") == "http" and self._is_mcp_endpoint(route, scope)

    def _mcp_call(self, scope: Scope) -> bool:
        """A request to the MCP endpoint that is never public: any method but a CORS preflight's OPTIONS."""
        return scope.get("method") != "OPTIONS" and self._at_mcp(scope)

    async def _enforce_call(
        self,
        mcp: MCPPolicy,
        scope: Scope,
        receive: Receive,
        requirement: Requirement,
        token: AccessToken,
        binding: Binding | None,
    ) -> tuple[AccessToken, Binding | None, Receive]:
        """An MCP call: what its JSON-RPC body asks for, on top of the endpoint's policy (``_mcp``).

        The body is read only now, after the token passed the endpoint's own policy, so an anonymous
        client cannot make the guard buffer anything; it is capped by ``max_body_bytes``.
        """
        data, receive = await read_body(scope, receive, self.config.max_body_bytes)
        extra, message = mcp.requirement_for(data)
        if extra is not NOTHING_MORE:
            try:
                merged = mcp.merged(requirement, extra)
            except ConfigurationError as exc:  # checked at startup for the endpoint's policy; never a 500
                raise InvalidRequest("bad_request_body", "This call needs a policy that cannot hold here.") from exc
            try:
                if binding is None and not (merged.sensitive or merged.sender_constrained):
                    # A Bearer token, and the call asks nothing of validation: only its scopes and
                    # step-up are left to check, on the token already validated (no second pass).
                    try:
                        merged.authorize(token, clock=self.config.clock, leeway=self.config.leeway)
                    except AuthError as exc:
                        exc.token, exc.scheme = token, "bearer"
                        raise
                else:
                    # Again with the call's policy: introspection for a sensitive tool, a proof for a
                    # sender-constrained one, then its scopes (403 listing all it needs) and step-up.
                    token, binding = await self.authenticator.authenticate_request(
                        scope.get("headers", ()), merged, client=client_of(scope), scope=scope
                    )
            except AuthError as exc:
                # A token refused now (revoked, seen by introspection) is refused for this call: the
                # 401 names all it needs, so a client authorizing again asks for enough at once.
                exc.challenge_scopes = merged.required_scopes
                raise
        if mcp.filter_tools_list and isinstance(message, dict) and message.get("method") == "tools/list":
            config = self.config

            def keep(name: str) -> bool:
                return mcp.may_call(name, token, bound=binding is not None, clock=config.clock, leeway=config.leeway)

            scope[_TOOLS_LIST_KEY] = ToolsListFilter(message.get("id"), keep)
        return token, binding, receive

    async def _enforce_at_dispatch(
        self, scope: MutableMapping[str, Any], receive: Receive, send: Send, requirement: Requirement
    ) -> Receive | None:
        """The router picked another endpoint than predicted: apply that endpoint's own policy now."""
        predicted = scope.get(DECISION_KEY)
        params = scope.get("path_params")
        decision = RouteDecision(
            requirement,
            predicted.template if isinstance(predicted, RouteDecision) else None,
            MappingProxyType(dict(params)) if isinstance(params, Mapping) else MappingProxyType({}),
        )
        return await self._enforce(scope, receive, send, decision, requirement, time.perf_counter())

    def _declared(self, scope: Scope) -> list[Requirement]:
        """Every policy the app declares (marks and rules): what RFC 9728 metadata lists."""
        rules = (rule.requirement for rule in self.resolver.rules)
        mcp = self.mcp
        calls = [] if mcp is None else [mcp.endpoint, *mcp.tools.values(), *mcp.methods.values(), mcp.default]
        return [*declared_requirements(scope.get("app") or self.app), *rules, *calls]

    def _decided(
        self,
        scope: Scope,
        decision: RouteDecision,
        started: float,
        outcome: Outcome,
        reason: str,
        status: int,
        token: AccessToken | None,
    ) -> None:
        """Count the decision; build an event only when someone listens (hooks or the logger).

        Reporting never decides: whatever the token's claims hold, a failure here is logged (its type
        only) and the request goes on with the decision already made — never a 500.
        """
        level = logging.DEBUG if outcome == "allow" else logging.INFO
        if not self._hooks and not logger.isEnabledFor(level):
            self.metrics.count(outcome, reason)
            return
        try:
            latency = time.perf_counter() - started
            event = decision_event(scope, decision.template, outcome, reason, status, token, latency)
            emit(event, self.metrics, self._hooks)
        except Exception as exc:
            logger.error("tokenguard: decision reporting failed: %s", type(exc).__name__)

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def resource_metadata_url(self) -> str | None:
        """The RFC 9728 metadata URL named in challenges (``resource_metadata=``), or ``None`` when off."""
        return self._metadata_url

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(config.issuer for config in self.configs)

    def status(self) -> GuardStatus:
        """A snapshot for health endpoints: keys known, last fetch, stale or not, caches, breaker."""
        status = self.authenticator.status()
        fleet: dict[str, Any] = {"revocations": self.fleet.status()}
        if self.shared_store is not None:
            fleet["shared_introspection"] = self._shared_answers_status()
        if self.signals is not None:
            fleet["shared_signals"] = self.signals.status()
        return GuardStatus(
            **status,
            route_cache_entries=self.resolver.cache_entries,
            route_mismatches=self.resolver.mismatches,
            ready=status["jwks"]["usable"],
            fleet=fleet,
        )

    def _shared_answers_status(self) -> dict[str, int | bool]:
        authenticator = self.authenticator
        authenticators = (
            list(authenticator.by_issuer.values())
            if isinstance(authenticator, MultiIssuerAuthenticator)
            else [authenticator]
        )
        totals: dict[str, int | bool] = {"hits": 0, "waits": 0, "takeovers": 0, "failures": 0, "usable": True}
        for one in authenticators:
            shared = one.introspector.shared
            if shared is None:
                continue
            for name, value in shared.status().items():
                totals[name] = (bool(totals[name]) and bool(value)) if name == "usable" else int(totals[name]) + value
        return totals

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Counters as a plain dict: decisions by outcome and reason, JWKS fetches and failures,
        introspection calls, cache hits and misses, the breaker states (``_status.MetricsSnapshot``)."""
        status = self.authenticator.status()
        decisions = self.metrics.snapshot()
        return {
            "decisions": decisions["decisions"],
            "decisions_by_reason": decisions["decisions_by_reason"],
            "hook_errors": decisions["hook_errors"],
            "jwks_fetches": status["jwks"]["fetches"],
            "jwks_fetch_failures": status["jwks"]["failures"],
            "introspection_calls": status["introspection"]["calls"],
            "introspection_cache_hits": status["introspection"]["cache_hits"],
            "introspection_cache_misses": status["introspection"]["cache_misses"],
            "introspection_first_sight_refused": status["introspection"]["first_sight_refused"],
            "breaker_state": status["introspection"]["breaker"],
            "first_sight_breaker_state": status["introspection"]["first_sight_breaker"],
            "verified_cache_entries": status["verified_cache_entries"],
        }

    def ready(self) -> bool:
        """True when keys are usable now (those of every issuer), without waiting on the issuer.

        Called from a running app (a health endpoint), it also starts a background fetch when the keys
        are missing or due, so a process idle past the stale period becomes ready again by itself.
        """
        self.authenticator.warm()
        return self.authenticator.usable()

    async def _startup(self, app: Any) -> None:
        """Warm the keys when asked, and report at once a sensitive route that cannot be introspected."""
        if self._prefetch:
            try:
                await self.authenticator.prefetch()
            except UnavailableError as exc:
                logger.warning("tokenguard: could not prefetch keys at startup: %s", exc.cause)
        if self.mcp is not None:
            self._check_mcp_path(self.mcp, app or self.app)
        declared = declared_requirements(app or self.app)
        if self.resolver.has_sensitive_rules or any(requirement.sensitive for requirement in declared):
            if self._prefetch:
                await self.authenticator.check_introspection()
            elif (problem := self.authenticator.introspection_problem()) is not None:
                logger.error("tokenguard: sensitive routes cannot be introspected: %s", problem)

    def _check_mcp_path(self, mcp: MCPPolicy, app: Any) -> None:
        """``MCPPolicy.path`` must be a route of the app: a policy on a path no request reaches guards
        nothing, while the real endpoint would get only the route's policy. Apps whose routes cannot
        be read (a plain ASGI app) are not checked."""
        if routed_app(app) is None:
            logger.warning("tokenguard: cannot read the app's routes to check MCPPolicy path %r", mcp.path)
            return
        decision = self.resolver.decide_path(mcp.path, {}, app)  # a POST to it, no root, no Host
        if decision.template is None:
            raise ConfigurationError(
                f"mcp: MCPPolicy path {mcp.path!r} is not a route of this app, so no call would get its "
                "per-tool policy; give the MCP endpoint's path as the app's routes see it (e.g. '/mcp')"
            )
        if decision.route is None and decision.template.endswith("/{path}"):
            # A mounted app whose routes cannot be read (a raw ASGI app) takes every path under its mount:
            # as with a catch-all, which of them it serves as MCP is its own affair.
            raise ConfigurationError(
                f"mcp: MCPPolicy path {mcp.path!r} leads into the mounted app {decision.template!r}, whose routes "
                "the guard cannot read; give the MCP endpoint a route of its own (and let no other route reach it)"
            )
        convertors = getattr(decision.route, "param_convertors", None) or {}
        if any(isinstance(convertor, PathConvertor) for convertor in convertors.values()):
            # Every request the route takes would be an MCP request, public pages and webhooks included,
            # while the endpoint itself decides which of its paths are MCP (by rules the guard cannot see:
            # "/mcp//" may be "/mcp" to it). Only a route of its own says which requests reach MCP.
            raise ConfigurationError(
                f"mcp: MCPPolicy path {mcp.path!r} leads to the catch-all route {decision.template!r}, whose "
                "endpoint decides itself which paths are MCP; give the MCP endpoint a route of its own "
                f"(e.g. Route({mcp.path!r}, ...) before the catch-all), and let the catch-all pass nothing to it"
            )
        endpoint = AUTHENTICATED if decision.requirement.public else decision.requirement
        problem = mcp.problem_with(endpoint)
        if problem is not None:
            raise ConfigurationError(f"mcp: {problem}")

    async def _shutdown(self) -> None:
        """Stop the background work (revocation feed, Shared Signals poller) and close the HTTP clients and
        stores: the lifespan's shutdown, and ``tokenguard.mcp``'s verifiers' ``aclose``."""
        await self.fleet.stop()
        if self.signals is not None:
            await self.signals.stop()
        await self.authenticator.aclose()
        await self.constraints.store.aclose()
        if self.shared_store is not None and self.shared_store is not self.constraints.store:
            await self.shared_store.aclose()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app's lifespan, with the guard's own startup checks on the ``startup`` event.

        A ``ConfigurationError`` found then (marks that cannot be combined, …) fails the startup with
        its message — the ASGI way to stop the server — unless the app already reported a failure.
        """
        failure: list[ConfigurationError] = []
        answered = False

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup(scope.get("app"))
                    if self._background:
                        self._start_background()
                        await self.fleet.start(wait=2.0)
                except ConfigurationError as exc:
                    failure.append(exc)
                    raise
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
            return message

        async def wrapped_send(message: Message) -> None:
            nonlocal answered
            if message["type"] in ("lifespan.startup.complete", "lifespan.startup.failed"):
                answered = True
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except ConfigurationError as exc:
            if failure and exc is failure[0] and not answered:
                await fail_startup(send, exc)
            raise


def _metadata_issuers(configs: Sequence[GuardConfig]) -> tuple[str, ...]:
    """RFC 9728 §2 ``authorization_servers``: issuer identifiers a client can discover (RFC 8414).

    A tenant template (``{tenantid}``) is no issuer a client can use: each allowed tenant's own
    issuer is listed instead (``https://login.microsoftonline.com/<tid>/v2.0`` serves its metadata);
    with a callable allow-list the tenants are unknown, so the template is left out. v1 templates
    (``https://sts.windows.net/{tenantid}/``) have no metadata at their own host: left out too.
    """
    issuers: list[str] = []
    for config in configs:
        if not is_template(config.issuer):
            issuers.append(config.issuer)
        elif isinstance(config.tenants, frozenset) and urlsplit(config.issuer).hostname != "sts.windows.net":
            issuers.extend(issuer_for(config.issuer, tid) for tid in sorted(config.tenants))
    return tuple(dict.fromkeys(issuers))


def _challenge_scopes(exc: TokenGuardError, mcp: MCPPolicy | None) -> tuple[str, ...]:
    """The ``scope`` of a 401 from the MCP endpoint: what the refused call needs, else the endpoint's."""
    if mcp is None:
        return ()
    if isinstance(exc, AuthError) and exc.challenge_scopes:
        return exc.challenge_scopes
    return mcp.scope_hint


def _fleet_store(value: object) -> FleetStore | None:
    """``shared_store=``: a Redis URL, a ``redis.asyncio`` client, or any ``FleetStore``."""
    if value is None or isinstance(value, FleetStore):
        return value
    if not isinstance(value, str) and not type(value).__module__.startswith("redis."):
        raise ConfigurationError(
            "shared_store must be a Redis URL (redis://host:6379/0), a redis.asyncio.Redis client, or a "
            f"tokenguard.store.FleetStore, got {type(value).__name__}"
        )
    from tokenguard.redis_store import RedisStore

    try:
        return RedisStore(value) if isinstance(value, str) else RedisStore.from_client(value)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        # RedisStore's messages name the option it is usually given as; here it is this one.
        raise ConfigurationError(str(exc).replace("replay_store:", "shared_store:", 1)) from None
