"""The validated access token handed to the application, and the actors of a delegated one."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from tokenguard.errors import InvalidToken

__all__ = ["MAX_ACT_DEPTH", "AccessToken", "Actor", "IdentitySource", "TokenSource", "actors_of"]

TokenSource = Literal["jwt", "introspection"]
#: Which claim ``AccessToken.identity`` came from.
IdentitySource = Literal["sub", "username", "client_id"]

#: The deepest ``act`` chain accepted (the current actor and 15 prior ones); a deeper one is refused.
MAX_ACT_DEPTH = 16

_BAD_ACT = "The access token's act (delegation) claim is malformed."


@dataclass(frozen=True)
class Actor:
    """One level of an RFC 8693 §4.1 ``act`` claim: a party acting on behalf of the token's subject.

    ``sub`` names the actor (required here); ``iss`` (the issuer that names it, RFC 8693 §4.1 shows
    ``iss`` with ``sub``) and ``client_id`` (RFC 8693 §4.3) when the claim carries them. ``claims``
    holds the level's members as the issuer wrote them, read-only, without its nested ``act`` (which
    is the next, prior, actor of ``AccessToken.actors``).
    """

    sub: str
    iss: str | None = None
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)


def actors_of(claims: Mapping[str, Any]) -> tuple[Actor, ...]:
    """The ``act`` chain of ``claims``, current actor first; ``()`` when there is no ``act`` claim.

    RFC 8693 §4.1: ``act`` is a JSON object whose members identify the actor; a nested ``act`` names
    the actor before it. Refused with ``InvalidToken("bad_act")`` (401): an ``act`` that is not an
    object (``null`` included), a level without a non-empty string ``sub``, an ``iss`` or ``client_id``
    that is present but not a non-empty string, a chain deeper than ``MAX_ACT_DEPTH``. Read with a
    loop, never recursion, so depth costs no stack.
    """
    if "act" not in claims:
        return ()
    actors: list[Actor] = []
    level: object = claims["act"]
    while True:
        if not isinstance(level, Mapping) or len(actors) == MAX_ACT_DEPTH:
            raise InvalidToken("bad_act", _BAD_ACT)
        sub, iss, client_id = level.get("sub"), level.get("iss"), level.get("client_id")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("bad_act", _BAD_ACT)
        for value in (iss, client_id):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidToken("bad_act", _BAD_ACT)
        if ("iss" in level and iss is None) or ("client_id" in level and client_id is None):
            raise InvalidToken("bad_act", _BAD_ACT)  # null is not absent
        members = MappingProxyType({name: value for name, value in level.items() if name != "act"})
        actors.append(Actor(sub, iss, client_id, members))
        if "act" not in level:
            return tuple(actors)
        level = level["act"]


@dataclass(frozen=True)
class AccessToken:
    """An access token that passed every check; it never holds the raw token string.

    It may be shared by every request that carries the same token (the verified and introspection
    caches): ``claims`` is a read-only mapping. ``request.auth.claims`` is a private, mutable copy.
    """

    subject: str | None
    client_id: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False)
    expires_at: float | None
    source: TokenSource
    issuer: str | None = None
    token_id: str | None = None
    #: ``kid`` of the JWKS key that verified the signature (also for a token whose header names none).
    key_id: str | None = None
    #: RFC 7662 §2.2 ``username`` (also read from a JWT that carries it): a non-empty string, else ``None``.
    username: str | None = None
    #: RFC 8693 §4.1 delegation: the ``act`` chain, current actor first, prior actors after it; ``()``
    #: for a token that is not delegated. Read from ``claims`` once, when the token is built (and so
    #: once per validated token: tokens are cached); a malformed ``act`` refuses the token (``bad_act``).
    actors: tuple[Actor, ...] = field(init=False, default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actors", actors_of(self.claims))

    @functools.cached_property
    def sorted_scopes(self) -> tuple[str, ...]:
        """``scopes`` sorted, made on first use and kept (``request.auth.scopes`` is a list of them): a
        cached token sorts once, however many requests carry it."""
        return tuple(sorted(self.scopes))

    @property
    def actor(self) -> Actor | None:
        """The current actor (the outermost ``act``), or ``None`` for a token that is not delegated.

        RFC 8693 §4.1: the outermost ``act`` is the party now acting for the subject; nested ``act``
        claims are prior actors, kept for information (audit) only: "only the top-level claims and the
        outermost act claim are relevant for access control decisions". The guard's delegation checks
        (``@require_delegation(actors=...)``) look at this one alone.
        """
        actors = self.actors
        return actors[0] if actors else None

    @property
    def identity(self) -> str:
        """``sub``, else ``username`` (a user's token without ``sub``), else the client id.

        The client id is the identity only of a token that names no user (client credentials).
        """
        if self.subject is not None:
            return self.subject
        if self.username is not None:
            return self.username
        assert self.client_id is not None  # the validators refuse tokens naming no one
        return self.client_id

    @property
    def identity_source(self) -> IdentitySource:
        """Which claim ``identity`` is: ``"sub"``, ``"username"`` or ``"client_id"``."""
        if self.subject is not None:
            return "sub"
        return "username" if self.username is not None else "client_id"

    @classmethod
    def _from_validation(
        cls,
        subject: str | None,
        client_id: str | None,
        scopes: frozenset[str],
        claims: Mapping[str, Any],
        expires_at: float | None,
        source: TokenSource,
        issuer: str | None,
        token_id: str | None,
        key_id: str | None,
        username: str | None = None,
    ) -> AccessToken:
        """Build one from values a validator already checked, without the frozen ``__init__``.

        The generated ``__init__`` of a frozen dataclass sets each field through
        ``object.__setattr__``; on the validation hot path one ``__dict__`` update does the same.
        """
        token = object.__new__(cls)
        token.__dict__.update(
            subject=subject,
            client_id=client_id,
            scopes=scopes,
            # The verified cache hands this token to every request that carries the same bytes: its
            # claims are read-only, so no endpoint can change what a later request's checks will read.
            claims=MappingProxyType(claims),
            expires_at=expires_at,
            source=source,
            issuer=issuer,
            token_id=token_id,
            key_id=key_id,
            username=username,
            # One lookup for a token that is not delegated (RFC 8693 §4.1 act).
            actors=actors_of(claims) if "act" in claims else (),
        )
        return token
