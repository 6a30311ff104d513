"""Claim rules shared by both validators: what a claim set must say to be an access token here.

Local JWT validation (``jwt_validator``) and introspection answers (``introspection``) read claims
with the same rules, from this one place: audience (RFC 7519 §4.1.3), lifetime and numeric dates
(RFC 7519 §4.1.4-§4.1.6), token kind (RFC 8725 §3.11, RFC 9068 §4, RFC 9449 §7), identity (``sub``,
``username`` and the client id, RFC 9068 §2.2, RFC 7662 §2.2) and scopes (RFC 6749 §3.3). Each
refusal is an ``InvalidToken`` whose reason the caller passes on unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from tokenguard._tenants import GUID, issuer_for
from tokenguard._uri import canonical_uri
from tokenguard.errors import InvalidToken

logger = logging.getLogger("tokenguard")


def issuer_difference(named: object, configured: str) -> str | None:
    """How an issuer that is *almost* the configured one differs from it; ``None`` for any other value."""
    if not isinstance(named, str) or named == configured or len(named) > len(configured) + 8:
        return None
    if named.rstrip("/") == configured.rstrip("/"):
        return "they differ only by a trailing '/'"
    if named.lower() == configured.lower():
        return "they differ only in letter case"
    return None


class IssuerCheck:
    """RFC 7519 §4.1.1, RFC 9068 §4, RFC 7662 §4: ``iss`` must equal the configured issuer, exactly.

    An ``iss`` that misses it by a trailing ``/`` or letter case is nearly always the guard's
    configuration, not an attack. The caller reports it (``report``) only when the issuer itself
    vouches for the value — a JWT whose signature verifies with the issuer's keys, an introspection
    answer — so a forged token can neither write this line nor use it up; at most once an hour.
    """

    __slots__ = ("clock", "configured", "reported_at")

    #: Seconds between two reports of one check.
    INTERVAL = 3600.0

    def __init__(self, configured: str, clock: Callable[[], float] = time.time) -> None:
        self.configured = configured
        self.clock = clock
        self.reported_at: float | None = None

    def __call__(self, named: object) -> None:
        """Raise ``InvalidToken("wrong_issuer")`` unless ``named`` is the configured issuer."""
        if named != self.configured:
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")

    def report(self, named: object, vouched_by: str) -> None:
        """Log a near miss that the issuer vouched for (``vouched_by`` says how), once an hour."""
        difference = issuer_difference(named, self.configured)
        now = self.clock()
        if difference is None or (self.reported_at is not None and now - self.reported_at < self.INTERVAL):
            return
        self.reported_at = now
        logger.error(
            "tokenguard: %s names the issuer %r but the guard is configured with issuer=%r: %s. Issuers are "
            "compared exactly (RFC 9068 section 4): configure issuer exactly as the issuer spells it "
            "(tokenguard check --issuer URL shows its metadata). Every such token is refused.",
            vouched_by,
            named,
            self.configured,
            difference,
        )


class TenantIssuerCheck:
    """A tenant template issuer (Microsoft Entra multi-tenant, ``_tenants``): the tenant, then ``iss``.

    RFC 7519 §4.1.1 / RFC 9068 §4 compare ``iss`` exactly with the issuer; a multi-tenant app has one
    issuer per tenant, ``template`` with ``{tenantid}`` replaced by the tenant id. So the token's ``tid``
    must be a tenant id as Entra writes it (a lowercase GUID), ``iss`` must equal the template filled
    with exactly that ``tid``, and the tenant must be allowed. ``check_issuer`` runs before any key is
    looked up (with an allow-list, the whole decision); ``check_tenant`` runs after the signature
    verified when ``tenants`` is a callable, so forged tokens never reach the application's code.
    """

    __slots__ = ("prefix", "suffix", "template", "tenants")

    def __init__(self, template: str, tenants: frozenset[str] | Callable[[str], bool]) -> None:
        self.template = template
        self.tenants = tenants
        self.prefix, _, self.suffix = template.partition("{tenantid}")

    @property
    def deferred(self) -> bool:
        """The tenant is decided by a callable, after the signature: ``check_tenant`` must be called then."""
        return not isinstance(self.tenants, frozenset)

    def check_issuer(self, claims: Mapping[str, Any]) -> None:
        """``tid`` is a tenant id, ``iss`` is the template filled with it, and (allow-list) it is allowed."""
        iss = claims.get("iss")
        if not isinstance(iss, str) or not (iss.startswith(self.prefix) and iss.endswith(self.suffix)):
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
        tid = claims.get("tid")
        if tid is None:
            raise InvalidToken("missing_claim", "The access token lacks a required claim.")
        if not isinstance(tid, str) or GUID.fullmatch(tid) is None:
            raise InvalidToken("bad_claim", "The access token has a malformed claim.")
        if iss != issuer_for(self.template, tid):
            # Tenant A's tid under tenant B's issuer (or any other spelling): exact, as for any issuer.
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
        tenants = self.tenants
        if isinstance(tenants, frozenset) and tid not in tenants:
            raise InvalidToken("wrong_tenant", "The access token comes from a tenant this API does not accept.")

    def check_tenant(self, claims: Mapping[str, Any]) -> None:
        """The callable's decision on a token whose ``tid``/``iss`` (``check_issuer``) and signature passed.

        Only ``True`` allows; anything else, and an exception, refuses (logged without the token).
        """
        tenants = self.tenants
        if isinstance(tenants, frozenset):
            return  # decided in check_issuer
        tid = claims["tid"]
        try:
            allowed = tenants(tid)
        except Exception as exc:  # the application's code: whatever it raises, the tenant is not allowed
            logger.error(
                "tokenguard: the tenants callable raised %s for tenant %s: the token is refused",
                type(exc).__name__,
                tid,
            )
            allowed = False
        if allowed is not True:
            raise InvalidToken("wrong_tenant", "The access token comes from a tenant this API does not accept.")


def number_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    """A NumericDate claim as a finite float; ``None`` when absent and not ``required`` (null is not absent)."""
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise InvalidToken("missing_claim", "The access token lacks a required claim.")
        return None
    # RFC 7519 §2 NumericDate is a JSON number: "1700000000" (a string) and true are refused.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken("bad_claim", "The access token has a malformed claim.")
    try:
        number = float(value)
    except OverflowError as exc:
        raise InvalidToken("bad_claim", "The access token has a malformed claim.") from exc
    # NaN compares false with everything, so an "exp" of NaN (lenient JSON, e.g. an introspection
    # answer) would never expire; infinities are refused with it.
    if not math.isfinite(number):
        raise InvalidToken("bad_claim", "The access token has a malformed claim.")
    return number


def string_claim(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim that, when present and not null, must be a string."""
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidToken("bad_claim", "The access token has a malformed claim.")
    return value


#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) — printable ASCII but '"' and '\\'.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
#: The bytes of a scope token, and SP (%x20) that separates them: what ``bytes.translate`` deletes from a
#: well-formed ``scope`` string, leaving nothing.
_SCOPE_BYTES_AND_SP = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")


def has_scope_claim(claims: Mapping[str, Any]) -> bool:
    """Whether ``claims`` say anything about scopes (``scope`` or ``scp``, even null or empty)."""
    return "scope" in claims or "scp" in claims


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (RFC 8693 §4.2 / RFC 9068 §2.2.3, space-separated) or ``scp``.

    The one scope parser, for JWT claims and introspection answers alike. RFC 6749 §3.3: scope tokens
    are separated by SP (%x20) only, and each is ``1*( %x21 / %x23-5B / %x5D-7E )``. A piece that is
    not a valid scope token grants nothing: it is dropped whole, never split further (so
    ``"read\u00a0admin"`` grants neither ``read`` nor ``admin``). A ``scp`` string is read like
    ``scope``; each element of a ``scope``/``scp`` list must be one scope token, else it is dropped.
    A claim of another JSON type (a number, an object, a list holding a non-string) is malformed.
    """
    value = claims.get("scope", claims.get("scp"))
    if value is None:
        return frozenset()
    if isinstance(value, str):
        if value.isascii() and not value.encode("ascii").translate(None, _SCOPE_BYTES_AND_SP):
            # The common case: only scope-token characters and SP, so every piece is a scope token and
            # ``split()`` (which splits at SP here, dropping empty pieces) is ``split(" ")`` less the "".
            return frozenset(value.split())
        return frozenset(piece for piece in value.split(" ") if SCOPE_TOKEN.fullmatch(piece) is not None)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item for item in value if SCOPE_TOKEN.fullmatch(item) is not None)
    raise InvalidToken("bad_claim", "The access token has a malformed scope claim.")


def check_lifetime(claims: Mapping[str, Any], now: float, leeway: float, *, require_exp: bool) -> float | None:
    """``exp``, ``nbf``, ``iat`` against the clock with leeway (RFC 7519 §4.1.4, §4.1.5, §4.1.6)."""
    exp = number_claim(claims, "exp", required=require_exp)
    nbf, iat = number_claim(claims, "nbf", required=False), number_claim(claims, "iat", required=False)
    check_dates(exp, nbf, iat, now, leeway)
    return exp


def check_dates(exp: float | None, nbf: float | None, iat: float | None, now: float, leeway: float) -> None:
    """Dates already read as numbers, against the clock with leeway."""
    # RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time".
    if exp is not None and now >= exp + leeway:
        raise InvalidToken("expired", "The access token has expired.")
    # RFC 7519 §4.1.5: "the current date/time MUST be after or equal to the not-before date/time".
    if nbf is not None and now + leeway < nbf:
        raise InvalidToken("not_yet_valid", "The access token is not valid yet.")
    if iat is not None and now + leeway < iat:
        raise InvalidToken("not_yet_valid", "The access token was issued in the future.")


def check_longest_life(exp: float | None, iat: float | None, now: float, limit: float, leeway: float) -> None:
    """Refuse a token whose life (``exp`` - ``iat``, or ``exp`` - now without ``iat``) exceeds ``limit``.

    Used while revocations are in use (``max_token_lifetime``): a revocation by ``sub``/``client_id`` is
    forgotten ``limit`` after its cut-off, so a token living longer could come back to life.

    Without ``exp`` (RFC 7662 §2.2 makes it optional in an introspection answer, and the issuer, which
    knows nothing of this API's own revocations, keeps calling the token active), the token's age
    (now - ``iat``) is held to ``limit``; with neither ``exp`` nor ``iat`` nothing bounds its life, so no
    revocation could be kept long enough to cover it: refused.
    """
    if exp is None:
        if iat is None or now - iat > limit + leeway:
            raise InvalidToken("bad_claim", "The access token lives longer than this API accepts.")
        return
    if exp - (now if iat is None else iat) > limit + leeway:
        raise InvalidToken("bad_claim", "The access token lives longer than this API accepts.")


def check_audience(
    claims: Mapping[str, Any],
    audiences: tuple[str, ...],
    *,
    required: bool = True,
    client_ids: frozenset[str] | None = None,
) -> None:
    """RFC 7519 §4.1.3: the recipient MUST identify itself with a value in ``aud``, else reject.

    ``client_ids`` (``allowed_client_ids``, off by default) is the one exception, for issuers whose access
    tokens carry no ``aud`` at all: Amazon Cognito's access tokens name the app client in ``client_id``
    and say ``token_use: access`` instead (its ID tokens carry ``aud``; "Using the access token", Amazon
    Cognito Developer Guide). A token *without* ``aud`` (absent, null or ``[]``) then passes only if its
    ``client_id`` claim (RFC 9068 §2.2, RFC 7662 §2.2: the same name in an introspection answer) is one of
    them; a token that has an ``aud`` is judged by it alone, so a foreign ``aud`` is refused as ever.
    """
    aud = claims.get("aud")
    if type(aud) is str and aud in audiences:  # the common case, decided at once
        return
    if aud is None or aud == []:
        # An empty list names no audience, like an absent claim (ORY Hydra sends "aud": [] for a token
        # granted none): refused when the audience is required, let through only when it is relaxed.
        if client_ids is not None:
            client_id = claims.get("client_id")
            if type(client_id) is str and client_id in client_ids:
                return
        if required:
            raise InvalidToken("wrong_audience", "The access token is not meant for this resource.")
        return
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise InvalidToken("bad_claim", "The access token has a malformed audience claim.")
    if not any(value in audiences for value in values) and matched_audience(values, audiences) is None:
        raise InvalidToken("wrong_audience", "The access token is not meant for this resource.")


def matched_audience(values: list[str] | tuple[str, ...], audiences: tuple[str, ...]) -> str | None:
    """The configured audience one of ``values`` names, exactly or as the same canonical resource URI.

    MCP's "Canonical Server URI" and RFC 3986 §6.2.2-6.2.3: ``HTTPS://API.example.com:443/mcp`` names
    the resource ``https://api.example.com/mcp`` does (``_uri.canonical_uri``); plain names match only
    exactly. At most 64 values are looked at (a claim listing more is refused by the caller's miss).
    """
    for value in values[:64]:
        if value in audiences:
            return value
    canonical = _canonical_audiences(audiences)
    if not canonical:
        return None
    for value in values[:64]:
        form = canonical_uri(value) if isinstance(value, str) else None
        if form is not None and form in canonical:
            return canonical[form]
    return None


@functools.lru_cache(maxsize=64)
def _canonical_audiences(audiences: tuple[str, ...]) -> dict[str, str]:
    """Canonical form -> configured audience, for the configured values that have one (cached per tuple)."""
    forms: dict[str, str] = {}
    for audience in audiences:
        form = canonical_uri(audience)
        if form is not None:
            forms.setdefault(form, audience)
    return forms


#: Vendor markers of tokens that are not access tokens: Keycloak's "typ" claim ("ID", "Refresh",
#: "Offline", "Logout") and Amazon Cognito's "token_use" ("id").
_NOT_ACCESS_TYP = frozenset({"id", "refresh", "offline", "logout", "id_token", "refresh_token"})
_ACCESS_TOKEN_USE = frozenset({"access", "access_token"})
#: Claims only an OpenID Connect ID token carries (OIDC Core §3.1.3.6 at_hash, §3.3.2.11 c_hash).
_ID_TOKEN_ONLY = ("at_hash", "c_hash")


def check_token_kind(claims: Mapping[str, Any]) -> None:
    """Refuse ID, refresh and logout tokens that an issuer marks as such in the claims.

    RFC 8725 §3.11 / RFC 9068 §4: a JWT of another kind must not be accepted as an access token. The
    header ``typ`` catches issuers that type their tokens; these markers catch those that do not (an
    ID token whose ``aud`` happens to equal the API's audience would otherwise pass).
    """
    if not ("typ" in claims or "token_use" in claims or "cnf" in claims or "at_hash" in claims or "c_hash" in claims):
        return  # the common case: none of the markers, decided with five lookups
    typ = claims.get("typ")
    use = claims.get("token_use")
    if (
        (isinstance(typ, str) and typ.lower() in _NOT_ACCESS_TYP)
        or (use is not None and (not isinstance(use, str) or use.lower() not in _ACCESS_TOKEN_USE))
        or any(name in claims for name in _ID_TOKEN_ONLY)
    ):
        raise InvalidToken("unsupported_token", "The token is not an access token.")
    confirmation = claims.get("cnf")
    # RFC 9449 §6 (DPoP "jkt") and RFC 8705 §3.1 (mTLS "x5t#S256") bind the token to a key or a
    # certificate whose possession the request must prove: ``_binding`` checks that proof, and refuses
    # such a token presented as a plain bearer token (RFC 9449 §7.2). Any other confirmation method
    # (RFC 7800 §3: jwk, jwe, jku, kid) binds it to a key whose possession is never proven here.
    if confirmation is not None and not _provable(confirmation):
        raise bound_token_refused()


def bound_token_refused() -> InvalidToken:
    """The 401 for a token bound to a key (``cnf``) where no proof of that key can be checked."""
    return InvalidToken("unsupported_token", "The access token is bound to a key and cannot be used as a bearer token.")


#: The confirmation members a request can prove: a DPoP key thumbprint, a certificate thumbprint.
_PROVABLE = frozenset({"jkt", "x5t#S256"})


def _provable(confirmation: object) -> bool:
    """A ``cnf`` of only ``jkt`` and/or ``x5t#S256``, each a non-empty string (RFC 9449 §6.1, RFC 8705 §3.1)."""
    if not isinstance(confirmation, dict) or not confirmation.keys() <= _PROVABLE:
        return False  # an empty object binds to nothing, as before
    return all(isinstance(value, str) and 0 < len(value) <= 128 for value in confirmation.values())


#: Where issuers that predate RFC 9068's ``client_id`` put the client: OpenID Connect's ``azp``
#: (Auth0, Keycloak, Entra v2), Okta's ``cid``, Entra v1's ``appid``.
_CLIENT_ID_FALLBACKS = ("azp", "cid", "appid")


def identity_of(claims: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``sub``, the client id and ``username``; a token with none of them names nobody and is refused.

    The client id is ``client_id`` (RFC 9068 §2.2), else the first string among the vendor claims that
    carry it; ``strict_rfc9068`` still requires ``client_id`` itself.

    ``username`` is RFC 7662 §2.2's "human-readable identifier for the resource owner who authorized
    this token": an issuer that answers with it and no ``sub`` (django-oauth-toolkit does) still names
    the user, so a token with only ``username`` has an identity. It never replaces ``sub`` (the
    caller's ``AccessToken.identity`` prefers ``sub``), and only a non-empty string counts: a value
    of another type is ignored, not refused. That is the conservative reading: RFC 7662 §2.2 defines
    it only as a human-readable string, and in a JWT it is a private claim name (RFC 7519 §4.3) whose
    type no RFC fixes, so a malformed one must neither become an identity nor refuse a token that
    names its subject or client by the claims that do have a defined form.
    """
    subject, client_id = string_claim(claims, "sub"), string_claim(claims, "client_id")
    if not client_id:
        client_id = next((v for n in _CLIENT_ID_FALLBACKS if isinstance(v := claims.get(n), str) and v), None)
    username = claims.get("username")
    if not isinstance(username, str) or not username:
        username = None
    if not subject and not client_id and username is None:
        raise InvalidToken("no_identity", "The access token names no subject or client.")
    return subject or None, client_id or None, username
