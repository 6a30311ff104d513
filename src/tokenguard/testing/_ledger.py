"""What a DevIdP has issued: grants, codes, access and refresh tokens, revoked ``jti`` s, and events.

Every store is bounded (``max_entries``) and drops an entry when the injected clock passes its
expiry (``cachetools.TLRUCache``). When a store is full, what happens depends on what forgetting
an entry would allow:

- access tokens, grants and revoked ``jti`` s: the least recently used entry goes; a forgotten
  token or grant is unknown from then on, so what it named is refused (it fails closed);
- refresh tokens, authorization codes and used DPoP proofs (``_KeptStore``): a live entry is never
  forgotten, and what would add one is refused with a 503 until entries expire. A forgotten *used*
  refresh token or code would turn its replay from "revoke the grant" into a plain "unknown" (an
  attacker rotating a stolen chain ten thousand times pushed the stolen token out, and the victim's
  replay then revoked nothing); a forgotten proof could be used again (RFC 9449 §11.1).

Entries are keyed by the token's SHA-256, never by the token itself. The protocol rules (who may
do what) live in ``_idp``; this module only records and answers, under the DevIdP's lock.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import jwt
from cachetools import TLRUCache

from tokenguard.errors import ConfigurationError
from tokenguard.testing._model import (
    AccessState,
    Audience,
    CodeState,
    Event,
    EventKind,
    Grant,
    OAuthError,
    RefreshState,
    TokenFormat,
    TokenSet,
    scope_string,
)

if TYPE_CHECKING:
    from tokenguard.testing._idp import DevIdP

V = TypeVar("V")
S = TypeVar("S", AccessState, RefreshState)
TokenState = AccessState | RefreshState
#: ``(grant, access tokens, reason)``: JWT access tokens of one grant, revoked while still usable, and why.
RevocationListener = Callable[[Grant | None, list[AccessState], str], None]


def digest(token: str) -> bytes:
    """The store key of a token: its SHA-256, so no store ever holds a token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_id(prefix: str) -> str:
    """A public, non-secret identifier for events and reprs."""
    return f"{prefix}{secrets.token_hex(8)}"


def _store(maxsize: int, clock: Callable[[], float], expires: Callable[[V], float]) -> TLRUCache[Any, V]:
    return TLRUCache(maxsize=maxsize, ttu=lambda _key, value, _now: expires(value), timer=clock)


class LedgerFull(OAuthError):
    """A store that never forgets a live entry is full: the request is refused until entries expire."""

    def __init__(self, what: str) -> None:
        super().__init__(
            "temporarily_unavailable", f"This server holds too many live {what}; try again later.", status_code=503
        )


class _KeptStore(TLRUCache[Any, V]):
    """A ``TLRUCache`` that never evicts a live entry: adding one to a full store raises ``LedgerFull``.

    ``TLRUCache.__setitem__`` drops the expired entries first, then asks ``popitem`` for room before it
    inserts anything, so a refusal leaves the store as it was.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float], expires: Callable[[V], float], what: str) -> None:
        super().__init__(maxsize=maxsize, ttu=lambda _key, value, _now: expires(value), timer=clock)
        self.what = what

    def popitem(self) -> tuple[Any, V]:
        raise LedgerFull(self.what)

    def room(self) -> None:
        """Raise ``LedgerFull`` now when adding an entry would: before anything else of a request is done."""
        self.expire()
        if len(self) >= self.maxsize:
            raise LedgerFull(self.what)


class Ledger:
    """The bounded, expiring record of everything one DevIdP issued, and its event log."""

    def __init__(
        self, idp: DevIdP, *, max_entries: int, max_events: int, on_revoked: RevocationListener | None = None
    ) -> None:
        self._idp = idp
        #: Told of JWT access tokens revoked while still usable: the DevIdP's Shared Signals transmitter.
        self.on_revoked = on_revoked
        self.max_entries = max_entries
        clock = idp.clock
        self.codes: _KeptStore[CodeState] = _KeptStore(
            max_entries, clock, lambda s: s.expires_at, "authorization codes"
        )
        self.access: TLRUCache[bytes, AccessState] = _store(max_entries, clock, lambda s: s.expires_at)
        self.refresh: _KeptStore[RefreshState] = _KeptStore(
            max_entries, clock, lambda s: s.expires_at, "refresh tokens"
        )
        self.grants: TLRUCache[str, Grant] = _store(max_entries, clock, lambda g: g.expires_at)
        # Revoked JWTs cannot be recalled: they stay listed by jti until they would have expired anyway.
        self.revoked_jtis: TLRUCache[str, float] = _store(max_entries, clock, lambda exp: exp)
        # RFC 9449 §11.1: the DPoP proofs the token endpoint accepted, by digest of (key, jti), each
        # until its iat falls out of the accepted window, after which the proof is refused anyway.
        self.dpop_jtis: _KeptStore[float] = _KeptStore(max_entries, clock, lambda until: until, "DPoP proofs")
        self.events: deque[Event] = deque(maxlen=max_events)

    def now(self) -> float:
        return self._idp.clock()

    def emit(self, kind: EventKind, grant: Grant | None = None, **detail: Any) -> None:
        """Record an event; ``detail`` holds ids, never tokens."""
        client_id = grant.client_id if grant else detail.pop("client_id", None)
        self.events.append(
            Event(
                kind=kind,
                at=self.now(),
                grant_id=grant.id if grant else None,
                client_id=client_id,
                subject=grant.subject if grant else None,
                detail=detail,
            )
        )

    def record(
        self, kind: EventKind, *, grant_id: str | None, client_id: str | None, subject: str | None, **detail: Any
    ) -> None:
        """Record an event about a grant known by id only (the Shared Signals transmitter's); never a token."""
        event = Event(kind=kind, at=self.now(), grant_id=grant_id, client_id=client_id, subject=subject, detail=detail)
        self.events.append(event)

    def counts(self) -> dict[str, int]:
        stores: dict[str, TLRUCache[Any, Any]] = {
            "codes": self.codes,
            "access_tokens": self.access,
            "refresh_tokens": self.refresh,
            "grants": self.grants,
            "revoked_jtis": self.revoked_jtis,
        }
        for store in stores.values():
            store.expire()
        return {name: len(store) for name, store in stores.items()}

    # -- finding -------------------------------------------------------------------------------

    def find(self, token: str, hint: str | None = None) -> TokenState | None:
        # RFC 7009 §2.1 / RFC 7662 §2.1: the hint only orders the search; both stores are tried.
        key = digest(token)
        lookups: list[Callable[[], TokenState | None]] = [lambda: self.access.get(key), lambda: self.refresh.get(key)]
        if hint == "refresh_token":
            lookups.reverse()
        return next((found for lookup in lookups if (found := lookup()) is not None), None)

    def grant_of(self, state: TokenState | None) -> Grant | None:
        return self.grants.get(state.grant_id) if state is not None else None

    def is_active(self, state: TokenState) -> bool:
        grant = self.grants.get(state.grant_id)
        if grant is None or grant.revoked or self.now() >= state.expires_at:
            return False
        if isinstance(state, RefreshState):
            return state.status == "active"
        return not state.revoked and state.id not in self.revoked_jtis

    def describe(self, state: TokenState, grant: Grant) -> dict[str, Any]:
        """The RFC 7662 §2.2 members of an active token."""
        if isinstance(state, AccessState):
            answer: dict[str, Any] = {**state.claims, "active": True, "token_type": "access_token"}
        else:
            answer = {
                "active": True,
                "token_type": "refresh_token",
                "iss": self._idp.issuer,
                "client_id": grant.client_id,
                "iat": int(state.issued_at),
                "exp": int(state.expires_at),
                "jti": state.id,
            }
            if grant.scopes:
                answer["scope"] = scope_string(grant.scopes)
            if grant.subject is not None:
                answer["sub"] = grant.subject
            if state.jkt is not None:
                answer["cnf"] = {"jkt": state.jkt}
        if grant.subject is not None:
            answer["username"] = grant.subject
        return answer

    # -- issuing -------------------------------------------------------------------------------

    def new_grant(
        self,
        kind: str,
        client_id: str,
        subject: str | None,
        scopes: frozenset[str],
        audience: str,
        claims: Mapping[str, Any] | None = None,
        resources: tuple[str, ...] = (),
    ) -> Grant:
        return Grant(
            id=new_id("grant_"),
            kind=kind,
            client_id=client_id,
            subject=subject,
            scopes=scopes,
            audience=audience,
            created_at=self.now(),
            claims=dict(claims or {}),
            resources=resources,
        )

    def issue(
        self,
        grant: Grant,
        scopes: frozenset[str],
        *,
        refresh: bool,
        parent: RefreshState | None = None,
        audience: str | None = None,
        jkt: str | None = None,
        bind_refresh: bool = False,
    ) -> TokenSet:
        """An access token (and a refresh token if asked) from ``grant``; rotates ``parent`` if given.

        ``audience``: the access token's ``aud`` when a request named a resource (RFC 8707 §2.2);
        by default the grant's audience. ``jkt``: the thumbprint of the DPoP key the request proved,
        which the access token is bound to (``cnf.jkt``, RFC 9449 §6), and the refresh token too
        with ``bind_refresh`` (a public client's, §5).
        """
        if refresh:
            self.refresh.room()  # refused before anything is minted or rotated
        confirmation = {"jkt": jkt} if jkt is not None else None
        access, access_state = self.mint_access(
            grant, scopes, parent=parent, audience=audience, confirmation=confirmation
        )
        refresh_jkt = jkt if bind_refresh else None
        refresh_token, refresh_state = self._mint_refresh(grant, parent, refresh_jkt) if refresh else (None, None)
        bound = {"dpop_jkt": jkt} if jkt is not None else {}  # a thumbprint names a public key: no secret
        if parent is not None and refresh_state is not None:
            # OAuth 2.1 §4.3.1: the old refresh token is used up, and points at its successor.
            parent.status, parent.successor, parent.used_at = "used", refresh_state.id, self.now()
            self.emit(
                "rotated",
                grant,
                used=parent.id,
                refresh_token=refresh_state.id,
                access_token=access_state.id,
                **bound,
            )
        else:
            self.emit(
                "issued",
                grant,
                grant_type=grant.kind,
                access_token=access_state.id,
                refresh_token=refresh_state.id if refresh_state else None,
                format=access_state.format,
                scope=scope_string(scopes),
                **bound,
            )
        self.keep(grant)
        return TokenSet(
            access_token=access,
            expires_in=max(0, int(access_state.expires_at - access_state.issued_at)),
            scope=scope_string(scopes),
            grant_id=grant.id,
            refresh_token=refresh_token,
            token_type="DPoP" if jkt is not None else "Bearer",
            authorization_details=grant.claims.get("authorization_details"),
        )

    def mint_access(
        self,
        grant: Grant,
        scopes: frozenset[str],
        *,
        expires_in: float | None = None,
        token_format: TokenFormat | None = None,
        alg: str | None = None,
        extra: Mapping[str, Any] | None = None,
        parent: RefreshState | None = None,
        audience: str | None = None,
        confirmation: Mapping[str, Any] | None = None,
    ) -> tuple[str, AccessState]:
        """Mint one access token; ``confirmation`` is its ``cnf`` claim (RFC 7800 §3.1), if bound."""
        idp = self._idp
        iat = int(self.now())
        lifetime = idp.access_token_ttl if expires_in is None else int(expires_in)
        aud = audience or grant.audience
        # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat and jti are required; scope when granted.
        # RFC 9068 §3: with a "resource" parameter (RFC 8707), aud is that resource.
        claims: dict[str, Any] = {
            "iss": idp.issuer,
            "aud": aud,
            "sub": grant.subject if grant.subject is not None else grant.client_id,
            "client_id": grant.client_id,
            "iat": iat,
            "exp": iat + lifetime,
            "jti": secrets.token_hex(16),
        }
        if scopes:
            claims["scope"] = scope_string(scopes)
        claims.update(grant.claims)
        if confirmation:
            # RFC 9449 §6.1 (cnf.jkt), RFC 8705 §3.1 (cnf["x5t#S256"]): the key the token is bound to.
            claims["cnf"] = dict(confirmation)
        claims.update(extra or {})
        target = idp.audiences.get(aud) or Audience(aud)
        fmt = token_format or target.format
        if fmt == "jwt":
            key = idp.keys.key_for(alg or target.alg)
            # RFC 9068 §2.1: the header's typ is "at+jwt"; the kid names the key in the JWKS.
            token = jwt.encode(claims, key.private, algorithm=key.alg, headers={"typ": "at+jwt", "kid": key.kid})
        elif fmt == "opaque":
            token = secrets.token_urlsafe(32)
        else:
            raise ConfigurationError(f"token_format must be 'jwt' or 'opaque', got {fmt!r}")
        exp = claims.get("exp")
        state = AccessState(
            id=str(claims.get("jti") or new_id("at_")),
            grant_id=grant.id,
            format=fmt,
            claims=claims,
            issued_at=float(iat),
            expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else iat + lifetime,
            from_refresh=parent.id if parent is not None else None,
            revoked=grant.revoked,
        )
        self.access[digest(token)] = state
        grant.access_tokens = [*self._live(grant.access_tokens), state]
        return token, state

    def _mint_refresh(
        self, grant: Grant, parent: RefreshState | None, jkt: str | None = None
    ) -> tuple[str, RefreshState]:
        now = self.now()
        token = secrets.token_urlsafe(32)
        state = RefreshState(
            id=new_id("rt_"),
            grant_id=grant.id,
            issued_at=now,
            expires_at=now + self._idp.refresh_token_ttl,
            parent=parent.id if parent is not None else None,
            jkt=jkt,
        )
        self.refresh[digest(token)] = state
        grant.refresh_tokens = [*self._live(grant.refresh_tokens), state]
        return token, state

    def _live(self, states: list[S]) -> list[S]:
        """A grant's token list without expired entries, capped: grants stay bounded too."""
        now = self.now()
        live = [state for state in states if state.expires_at > now]
        return live[-(self.max_entries - 1) :] if len(live) >= self.max_entries else live

    def keep(self, grant: Grant) -> None:
        """(Re)store a grant until its last token expires."""
        expiries = [state.expires_at for state in grant.access_tokens]
        expiries += [state.expires_at for state in grant.refresh_tokens]
        grant.expires_at = max(expiries, default=grant.created_at)
        self.grants[grant.id] = grant

    # -- revoking ------------------------------------------------------------------------------

    def revoke_grant(self, grant: Grant, reason: str, *, announce: bool = True) -> None:
        """Revoke every refresh and access token of ``grant`` (once).

        ``on_revoked`` hears of the JWT access tokens that were still usable (``announce=False``: not,
        for a caller that tells the world in its own words, as a user's logout does).
        """
        if grant.revoked:
            return
        grant.revoked_at, grant.revoked_reason = self.now(), reason
        for refresh in grant.refresh_tokens:
            if refresh.status == "active":
                refresh.status = "revoked"
        usable = [access for access in grant.access_tokens if self.revoke_access(access, announce=False)]
        self.emit(
            "chain_revoked",
            grant,
            reason=reason,
            refresh_tokens=grant.chain,
            access_tokens=[access.id for access in grant.access_tokens],
        )
        if announce:
            self._announce(grant, usable, reason)

    def revoke_access(self, state: AccessState, reason: str = "access_token_revoked", *, announce: bool = True) -> bool:
        """Revoke one access token; True when it was a JWT still usable until now (not expired, not revoked).

        Such a token is the one kind a resource server may go on accepting without asking (RFC 7009 §1):
        ``on_revoked`` hears of it, unless ``announce=False``.
        """
        now = self.now()
        usable = not state.revoked and state.format == "jwt" and state.expires_at > now
        state.revoked = True
        if state.format == "jwt" and state.expires_at > now:
            self.revoked_jtis[state.id] = state.expires_at
        if usable and announce:
            self._announce(self.grants.get(state.grant_id), [state], reason)
        return usable

    def _announce(self, grant: Grant | None, revoked: list[AccessState], reason: str) -> None:
        if revoked and self.on_revoked is not None:
            self.on_revoked(grant, revoked, reason)
