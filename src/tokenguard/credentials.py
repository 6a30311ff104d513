"""What the guard puts in ``request.auth`` and ``request.user``: Starlette's authentication types,
filled from the validated ``AccessToken``. [adapter]"""

from __future__ import annotations

import copy
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser

from tokenguard._binding import Binding
from tokenguard.models import AccessToken, Actor, IdentitySource

__all__ = ["TokenCredentials", "TokenUser"]


class TokenCredentials(AuthCredentials):
    """``request.auth``: the granted scopes, the claims, and what decided (``"jwt"``/``"introspection"``)."""

    def __init__(self, token: AccessToken, binding: Binding | None = None) -> None:
        # AuthCredentials.__init__ only stores the list of scopes, which ``scopes`` makes on first use.
        self._scopes: list[str] | None = None
        self.token = token
        self.source = token.source
        #: How the request proved it holds the token: ``Binding("dpop", <key thumbprint>)``,
        #: ``Binding("mtls", <certificate thumbprint>)``, or ``None`` for a bearer token.
        self.binding = binding
        self._claims: dict[str, Any] | None = None

    @property
    def scopes(self) -> list[str]:
        """The granted scopes, sorted (Starlette's ``requires`` reads them). Made when first read: most
        requests never read them (the guard checked the route's scopes already), and sorting a
        first-sight token's scopes cost ≈ 1 µs of its request (issue 16). A list of this request's own."""
        scopes = self._scopes
        if scopes is None:
            scopes = self._scopes = list(self.token.sorted_scopes)
        return scopes

    @scopes.setter
    def scopes(self, value: list[str]) -> None:
        self._scopes = value

    @property
    def actor(self) -> Actor | None:
        """Who acts on behalf of the subject (RFC 8693 §4.1 ``act``, the outermost one), or ``None``.

        Only this current actor is relevant for access decisions (RFC 8693 §4.1); ``request.user``
        stays the subject the token is about.
        """
        return self.token.actor

    @property
    def actors(self) -> tuple[Actor, ...]:
        """The whole delegation chain, current actor first, then prior actors (nested ``act``); ``()`` if none."""
        return self.token.actors

    @property
    def claims(self) -> dict[str, Any]:
        """The token's claims as a dict of this request's own (a cached token is shared: copy on first use)."""
        if self._claims is None:
            self._claims = copy.deepcopy(dict(self.token.claims))  # nested lists and objects too
        return self._claims

    def __repr__(self) -> str:
        method = self.binding.method if self.binding is not None else None
        return f"TokenCredentials(scopes={self.scopes!r}, source={self.source!r}, binding={method!r})"


class TokenUser(BaseUser):
    """``request.user``: ``identity`` is ``sub``, else ``username``, else the client id.

    ``identity_source`` says which of the three it is (``"sub"``, ``"username"``, ``"client_id"``): a
    user's token without ``sub`` is told apart from a client-credentials token by it.
    """

    def __init__(self, token: AccessToken) -> None:
        self.token = token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.token.identity

    @property
    def identity(self) -> str:
        return self.token.identity

    @property
    def identity_source(self) -> IdentitySource:
        return self.token.identity_source

    @property
    def subject(self) -> str | None:
        return self.token.subject

    @property
    def username(self) -> str | None:
        return self.token.username

    @property
    def client_id(self) -> str | None:
        return self.token.client_id

    def __repr__(self) -> str:
        return f"TokenUser(identity={self.identity!r})"
