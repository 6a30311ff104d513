"""Sender-constrained tokens, per request: DPoP (RFC 9449) and mTLS certificate binding (RFC 8705).

A token carrying ``cnf.jkt`` is bound to a DPoP key: it is accepted only as ``Authorization: DPoP``
with one valid ``DPoP`` proof signed by that key (RFC 9449 §7.1), never as Bearer (§7.2). A token
carrying ``cnf["x5t#S256"]`` is bound to a TLS client certificate: it is accepted only when the
request came over that certificate (RFC 8705 §3). A route marked ``@sender_constrained`` (or every
protected route with ``dpop="required"``) accepts nothing else.

The proof itself is checked by ``_dpop.check_proof``; here: the binding, the server nonce (§9) and
jti replay (§11.1) through a ``SharedStore``. The request URL the proof must name comes from
``_origin.request_url`` (trusted proxies, ``public_url``); the certificate from ``_mtls``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenguard._dpop import DEFAULT_DPOP_ALGORITHMS, DPoPNonces, check_algorithms, check_proof, dpop_header_values
from tokenguard._mtls import client_certificate_thumbprint
from tokenguard._origin import check_public_url, parse_trusted_proxies, request_url
from tokenguard.errors import ConfigurationError, InvalidDPoPProof, InvalidToken, UseDPoPNonce
from tokenguard.models import AccessToken
from tokenguard.store import MemoryStore, SharedStore

__all__ = ["Binding", "DPoPMode", "SenderConstraints", "sender_constraints"]

logger = logging.getLogger("tokenguard")

DPoPMode = Literal["off", "allowed", "required"]
#: Scope key: the replay-store key of the proof this request already recorded.
_RECORDED = "tokenguard.dpop_recorded"
_MODES = ("off", "allowed", "required")
#: Algorithms a proof may use: asymmetric only (RFC 9449 §4.3 point 5; never "none" or a MAC).
_ASYMMETRIC = frozenset(DEFAULT_DPOP_ALGORITHMS)


@dataclass(frozen=True)
class Binding:
    """How this request's token was bound and proven: ``dpop`` (key thumbprint) or ``mtls`` (certificate)."""

    method: Literal["dpop", "mtls"]
    thumbprint: str


@dataclass(frozen=True)
class SenderConstraints:
    """The sender-constraint options of one guard, and the per-request check."""

    mode: DPoPMode = "allowed"
    algorithms: frozenset[str] = _ASYMMETRIC
    iat_window: float = 60.0
    leeway: float = 30.0
    nonces: DPoPNonces | None = field(default=None, repr=False)
    store: SharedStore = field(default_factory=MemoryStore)
    trusted_proxies: tuple[Any, ...] = ()
    public_url: str | None = None
    certificate_header: str | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    #: One warning per guard when ``htu`` is checked against a client-named host (no ``public_url``).
    _warned: list[bool] = field(default_factory=list, repr=False, compare=False)
    #: ``dpop="required"``: every protected route takes only proven, bound tokens (a plain attribute:
    #: the hot path reads it on every request).
    required: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", self.mode == "required")

    @property
    def dpop_enabled(self) -> bool:
        return self.mode != "off"

    @property
    def algs(self) -> tuple[str, ...]:
        """The ``algs`` of the DPoP challenge (RFC 9449 §7.1), in a stable order."""
        return tuple(alg for alg in DEFAULT_DPOP_ALGORITHMS if alg in self.algorithms)

    async def check(
        self,
        scheme: str,
        raw_token: str,
        token: AccessToken,
        *,
        sender_constrained: bool,
        headers: Iterable[tuple[bytes, bytes]],
        scope: Mapping[str, Any],
    ) -> Binding | None:
        """The binding this request proved, or the refusal (InvalidToken, InvalidDPoPProof, UseDPoPNonce)."""
        confirmation = token.claims.get("cnf")
        jkt = confirmation.get("jkt") if isinstance(confirmation, Mapping) else None
        x5t = confirmation.get("x5t#S256") if isinstance(confirmation, Mapping) else None
        binding: Binding | None = None
        if scheme == "dpop":
            binding = await self._check_dpop(raw_token, jkt, headers, scope)
        elif jkt is not None:
            # RFC 9449 §7.2: a DPoP-bound token presented as a bearer token MUST be refused.
            raise InvalidToken(
                "dpop_binding_mismatch", "The access token is bound to a DPoP key: send it with the DPoP scheme."
            )
        if x5t is not None:
            # RFC 8705 §3: the certificate of this TLS connection must be the one the token is bound to.
            presented = client_certificate_thumbprint(
                scope, header=self.certificate_header, trusted_proxies=self.trusted_proxies
            )
            if presented is None or not isinstance(x5t, str) or not hmac.compare_digest(presented, x5t):
                raise InvalidToken("certificate_mismatch", "The access token is bound to another client certificate.")
            binding = binding or Binding("mtls", x5t)
        if binding is None and (sender_constrained or self.required):
            raise InvalidToken(
                "sender_constraint_required", "This resource requires a sender-constrained (DPoP or mTLS) token."
            )
        return binding

    async def _check_dpop(
        self, raw_token: str, jkt: object, headers: Iterable[tuple[bytes, bytes]], scope: Mapping[str, Any]
    ) -> Binding:
        proofs = dpop_header_values(headers)
        # RFC 9449 §4.3 point 1: exactly one DPoP header; §7.1: without one, the DPoP scheme proves nothing.
        if len(proofs) != 1:
            raise InvalidDPoPProof(description="Exactly one DPoP proof header is required.")
        try:
            proof_text = proofs[0].decode("ascii")
        except UnicodeDecodeError:
            raise InvalidDPoPProof(description="The DPoP proof is malformed.") from None
        # RFC 9449 §4.3 point 8: for a WebSocket the upgrade request's method, GET.
        method = scope.get("method") or "GET"
        url = request_url(scope, trusted_proxies=self.trusted_proxies, public_url=self.public_url)
        if self.public_url is None and not self._warned:
            self._warned.append(True)
            logger.warning(
                "tokenguard: DPoP proofs are checked against the URL this request names (its Host header%s); "
                "set public_url to the API's public URL so a proof made for another server is refused",
                " or a trusted proxy's forwarded headers" if self.trusted_proxies else "",
            )
        proof = check_proof(
            proof_text,
            method=method,
            url=url,
            access_token=raw_token,
            now=self.clock(),
            algorithms=self.algorithms,
            iat_window=self.iat_window,
            leeway=self.leeway,
        )
        # RFC 9449 §7.1 / §6.1: the proof key must be the key the token is bound to (cnf.jkt).
        if not isinstance(jkt, str):
            raise InvalidToken("dpop_binding_mismatch", "The access token is not bound to a DPoP key.")
        if not hmac.compare_digest(jkt, proof.jkt):
            raise InvalidDPoPProof(
                "dpop_binding_mismatch", "The DPoP proof is signed by another key than the token is bound to."
            )
        # RFC 9449 §9: a proof without the server's current nonce is answered with a fresh one.
        if self.nonces is not None and not self.nonces.accepts(proof.nonce):
            raise UseDPoPNonce(nonce=self.nonces.current())
        # RFC 9449 §11.1: a proof is used once. The key is a digest: fixed size, no client text.
        digest = hashlib.sha256(f"{proof.jkt}\n{proof.jti}".encode()).digest()
        key = "dpop-jti:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        if scope.get(_RECORDED) == key:
            # The same request checked again (the dispatch check, when the router runs another endpoint
            # than predicted): its own proof was recorded a moment ago, by this request.
            return Binding("dpop", proof.jkt)
        # Kept exactly as long as this proof could still be accepted — until its own ``iat`` leaves the
        # window — plus a second for the boundary and clock rounding: a proof made long ago holds a slot
        # for seconds, not for the longest possible life (2 x (window + leeway) at most).
        ttl = max(1.0, proof.iat + self.iat_window + self.leeway + 1 - self.clock())
        if not await self.store.add_once(key, ttl):
            raise InvalidDPoPProof("dpop_replay", "The DPoP proof was used before.")
        if isinstance(scope, MutableMapping):
            scope[_RECORDED] = key
        return Binding("dpop", proof.jkt)


def sender_constraints(
    *,
    dpop: DPoPMode,
    dpop_algorithms: Sequence[str] | None,
    dpop_iat_window: float,
    dpop_nonce: bool,
    dpop_nonce_secret: bytes | None,
    replay_store: SharedStore | None,
    trusted_proxies: Iterable[str] | str | None,
    public_url: str | None,
    client_certificate_header: str | None,
    leeway: float,
    clock: Callable[[], float],
) -> SenderConstraints:
    """``TokenGuard``'s sender-constraint options, validated; a ``ConfigurationError`` names the wrong one."""
    if dpop not in _MODES:
        raise ConfigurationError(f"dpop must be one of 'off', 'allowed' or 'required', got {dpop!r}")
    try:
        algorithms = check_algorithms(dpop_algorithms) if dpop_algorithms is not None else _ASYMMETRIC
    except ConfigurationError as exc:
        raise ConfigurationError(f"dpop_algorithms: {exc}") from None
    if isinstance(dpop_iat_window, bool) or not isinstance(dpop_iat_window, (int, float)):
        raise ConfigurationError("dpop_iat_window must be a number of seconds")
    if not 1 <= dpop_iat_window <= 600:
        raise ConfigurationError(f"dpop_iat_window must be between 1 and 600 seconds, got {dpop_iat_window!r}")
    if dpop_nonce_secret is not None and (not isinstance(dpop_nonce_secret, bytes) or len(dpop_nonce_secret) < 32):
        raise ConfigurationError("dpop_nonce_secret must be at least 32 bytes (the same on every process)")
    if dpop_nonce_secret is not None and not dpop_nonce:
        raise ConfigurationError("dpop_nonce_secret is set but dpop_nonce is not True")
    if replay_store is not None and not isinstance(replay_store, SharedStore):
        raise ConfigurationError("replay_store must implement tokenguard.store.SharedStore (add_once, aclose)")
    check_public_url(public_url)
    header = client_certificate_header
    if header is not None and (not isinstance(header, str) or not header or not header.isascii() or " " in header):
        raise ConfigurationError("client_certificate_header must be an HTTP header name")
    nonces = None
    if dpop_nonce:
        # Without a configured secret the nonces are this process's own: enough for one process; a
        # fleet shares ``dpop_nonce_secret`` so any process accepts any other's nonce, with no store.
        nonces = DPoPNonces(dpop_nonce_secret or os.urandom(32), clock=clock)
    return SenderConstraints(
        mode=dpop,
        algorithms=algorithms,
        iat_window=float(dpop_iat_window),
        leeway=leeway,
        nonces=nonces,
        store=replay_store if replay_store is not None else MemoryStore(clock=clock),
        trusted_proxies=parse_trusted_proxies(trusted_proxies),
        public_url=public_url,
        certificate_header=header.lower() if header is not None else None,
        clock=clock,
    )
