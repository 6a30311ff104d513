"""The validated access token handed to the application."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["AccessToken", "IdentitySource", "TokenSource"]

TokenSource = Literal["jwt", "introspection"]
#: Which claim ``AccessToken.identity`` came from.
IdentitySource = Literal["sub", "username", "client_id"]


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
        )
        return token
