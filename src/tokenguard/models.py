"""The validated access token handed to the application."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["AccessToken", "TokenSource"]

TokenSource = Literal["jwt", "introspection"]


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

    @property
    def identity(self) -> str:
        """``sub``, or ``client_id`` for a client-credentials token without a subject."""
        identity = self.subject if self.subject is not None else self.client_id
        assert identity is not None  # the validators refuse tokens with neither
        return identity

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
        )
        return token
