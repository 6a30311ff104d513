"""Local validation of one JWT access token (RFC 7515, RFC 7519, RFC 8725, RFC 9068).

The compact serialization is parsed strictly by ``_jose`` (``split_compact``, ``decode_compact``: canonical base64url,
strict JSON objects); the claim rules it shares with introspection (audience, lifetime, token kind,
identity, scopes) are in ``_claims``. PyJWT supplies the keys and the signature algorithms. Here:
the header checks, and the order that keeps an attacker from making us fetch keys (issuer and
lifetime before any key lookup, so a stale or foreign token never triggers a refetch), the signature,
and the verified-token cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from tokenguard._claims import (
    IssuerCheck,
    TenantIssuerCheck,
    check_audience,
    check_dates,
    check_lifetime,
    check_longest_life,
    check_token_kind,
    identity_of,
    issuer_difference,
    number_claim,
    scopes_of,
    string_claim,
)
from tokenguard._jose import ParsedJWS, decode_compact, split_compact
from tokenguard._jose import classify as classify  # re-exported for the CLI's ``inspect``; home: ``_jose``
from tokenguard._jose import parse_jws as parse_jws  # re-exported likewise
from tokenguard._lru import LRU
from tokenguard._signatures import Verifier, verifier
from tokenguard.config import HMAC_ALGORITHMS, GuardConfig
from tokenguard.errors import InvalidToken
from tokenguard.jwks import JWKSCache, KeyIdentity, KeySet
from tokenguard.models import AccessToken

__all__ = ["JWTValidator", "bytes_digest", "token_digest"]

_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_RFC9068_TYP = frozenset({"at+jwt", "application/at+jwt"})


#: An empty SHA-256 state, copied for each digest. ``hashlib.sha256(data)`` looks the algorithm up in
#: OpenSSL on every call: about as fast as a copy when the CPU caches are warm, but 6.4 µs against 2.6 µs
#: when a server's other work has evicted them between requests (issue 16). Never updated itself, so
#: copies from any thread see the same empty state.
_SHA256 = hashlib.sha256()


def bytes_digest(data: bytes) -> bytes:
    """SHA-256 of ``data``: the cache key of a token's bytes, so no cache ever holds the token itself."""
    state = _SHA256.copy()
    state.update(data)
    return state.digest()


def token_digest(token: str) -> bytes:
    """The cache key of a token: its SHA-256, so no cache ever holds the token itself."""
    # Any str hashes (a caller may hand us non-ASCII); such a token is refused later, never a crash here.
    return bytes_digest(token.encode("utf-8", "surrogatepass"))


#: A verified-cache entry: (token, exp, nbf, iat, the key set it was verified against, the identity
#: of the key that verified it). Key set and identity are None for an HMAC token (a static secret).
_Verified = tuple[AccessToken, float, "float | None", "float | None", "KeySet | None", "KeyIdentity | None"]


#: Integer dates below 2**53 convert to float exactly, so comparing them as ints decides the same.
_SAFE_INT = 2**53
_MAX_KIDLESS_TRIES = 8
#: At most this many decoded headers are remembered (``JWTValidator._headers``).
_MAX_KNOWN_HEADERS = 64
_ABSENT: Any = object()


class _NeedsKeys:
    """A token whose header and claims passed, waiting for keys to check its signature."""

    __slots__ = ("alg", "digest", "kid", "parsed")

    def __init__(self, parsed: ParsedJWS, alg: str, kid: str | None, digest: bytes) -> None:
        self.parsed = parsed
        self.alg = alg
        self.kid = kid
        self.digest = digest


class JWTValidator:
    """Validates JWT access tokens of one issuer against its cached JWKS."""

    def __init__(self, config: GuardConfig, jwks: JWKSCache) -> None:
        self._config = config
        self._check_issuer = IssuerCheck(config.issuer, config.clock)
        #: A tenant template issuer (Entra multi-tenant): ``iss`` is checked against the token's ``tid``.
        self._tenant: TenantIssuerCheck | None = None
        if config.is_template:
            assert config.tenants is not None  # config refuses a template without tenants
            self._tenant = TenantIssuerCheck(config.issuer, config.tenants)
        self._jwks = jwks
        self._algorithms = frozenset(config.algorithms)
        self._accepted_typ = _RFC9068_TYP if config.strict_rfc9068 else _ACCEPTED_TYP
        # The verified-token cache (ARCHITECTURE.md, "Caches never outlive what they stand for"):
        # SHA-256 of the token bytes -> (token, exp, nbf, iat, key set, key identity).
        # - a hit is served only while exp/nbf/iat hold against the clock (floats read once: an app
        #   that mutates ``token.claims`` cannot stretch the life of a cached token);
        # - and only while the key that verified it, by (kid, thumbprint, alg), is in the CURRENT key set
        #   and that set is usable now (fresh, or stale while the issuer fails): the entry remembers
        #   the KeySet object it was checked against, so the usual hit is one ``is`` comparison;
        #   a new set is searched once and the entry re-stamped, or the entry is dropped;
        # - when the set is due for refresh the hit starts it; past max-age or past the stale period
        #   the hit falls through to the full path, which waits for the fetch or answers 503;
        # - at most ``verified_cache_size`` entries, least recently used evicted first.
        self._verified: LRU[bytes, _Verified] | None = (
            LRU(config.verified_cache_size) if config.verified_cache_size else None
        )
        # Prepared verifiers, memoised per KeySet object (a refresh starts a new memo), at most 256.
        self._memo_keys: KeySet | None = None
        self._memo: dict[tuple[str | None, str], tuple[tuple[KeyIdentity, Verifier], ...]] = {}
        # Decoded and checked headers, by their segment as the token spells it: an issuer signs with a
        # handful of headers ({"alg", "kid", "typ"} per key), so a new token's header is usually one
        # seen before. Segment -> (decoded header, alg, kid), what ``_check_header`` returned for it.
        # - a decoded header is a function of the segment's bytes alone, and ``_check_header``'s verdict
        #   a function of the header and this validator's configuration, fixed at construction: an
        #   entry is never wrong, whatever token brings the segment again;
        # - only headers of tokens whose signature verified are added, so a forger cannot fill it;
        # - dropped whole with the verifier memo the first time a signature is checked against a new key
        #   set (retired kids leave with their keys; until then an entry is still right), never for a
        #   validator that only checks shared-secret tokens; at most ``_MAX_KNOWN_HEADERS`` entries:
        #   when full, nothing more is added until that reset.
        self._headers: dict[bytes, tuple[dict[str, Any], str, str | None]] = {}
        jwks.subscribe(self._forget_keys)
        #: Set while revocations are in use (``Authenticator.limit_lifetime``): longer-lived tokens are
        #: refused here, before they enter the verified cache, so a cache hit needs no second look.
        self.max_lifetime: float | None = None

    async def validate(self, token: str, digest: bytes | None = None) -> AccessToken:
        """Return the validated token, or raise ``InvalidToken`` / ``KeysUnavailable``.

        ``digest``: ``token_digest(token)`` when the caller computed it already (a request's verified-cache
        lookup): a first-sight token is then hashed once, not twice.
        """
        result = self.validate_nowait(token, digest)
        if isinstance(result, AccessToken):
            return result
        # The keys must be fetched first (cold cache, unknown kid): the only path that awaits.
        keys = await self._keys_for(result.kid)
        return self._finish(result.parsed, result.alg, result.kid, result.digest, keys)

    def validate_nowait(self, token: str, digest: bytes | None = None) -> AccessToken | _NeedsKeys:
        """Validate without awaiting when the cache or the current keys allow; else say what is missing."""
        if digest is None:
            digest = token_digest(token) if self._verified is not None else b""
        cached = self._verified.get(digest) if self._verified is not None else None
        if cached is not None:
            hit = self._still_valid(digest, cached)
            if hit is not None:
                return hit
        raw, first, second = split_compact(token)
        known = self._headers.get(raw[:first])
        if known is None:
            parsed = decode_compact(raw, first, second)
            alg, kid = self._check_header(parsed.header)
        else:
            header, alg, kid = known
            parsed = decode_compact(raw, first, second, header)
        try:
            self._check_issuer_and_lifetime(parsed.claims)
        except InvalidToken as exc:
            if exc.reason == "wrong_issuer" and issuer_difference(parsed.claims.get("iss"), self._config.issuer):
                self._near_miss(parsed, alg, kid)
            raise
        if alg in HMAC_ALGORITHMS:
            return self._finish(parsed, alg, kid, digest, None)
        keys = self._jwks.current()
        if keys is None or (kid is not None and not keys.knows(kid)):
            return _NeedsKeys(parsed, alg, kid, digest)
        return self._finish(parsed, alg, kid, digest, keys)

    def _near_miss(self, parsed: ParsedJWS, alg: str, kid: str | None) -> None:
        """An ``iss`` almost the configured one: report it if the issuer's own keys verify the token.

        The keys at hand only, never a fetch on this request; without any, a background fetch starts,
        and discovery reports a metadata document that spells the issuer the other way.
        """
        keys = self._jwks.current()
        if keys is None:
            self._jwks.warm()
            return
        try:
            self._verify_signature(parsed, alg, kid, keys)
        except InvalidToken:
            return  # not the issuer's token: nothing to report
        self._check_issuer.report(parsed.claims.get("iss"), "a token signed with the issuer's key")

    def _finish(self, parsed: ParsedJWS, alg: str, kid: str | None, digest: bytes, keys: KeySet | None) -> AccessToken:
        identity = self._verify_signature(parsed, alg, kid, keys)
        headers = self._headers
        if len(headers) < _MAX_KNOWN_HEADERS and parsed.header_segment not in headers:
            headers[parsed.header_segment] = (parsed.header, alg, kid)  # the issuer signed it
        access_token = self._access_token(parsed.claims, identity[0] if identity is not None else None)
        if self._verified is None and self.max_lifetime is None:
            return access_token
        claims = parsed.claims
        exp, iat = float(claims["exp"]), number_claim(claims, "iat", required=False)
        if self.max_lifetime is not None:
            check_longest_life(exp, iat, self._config.clock(), self.max_lifetime, self._config.leeway)
        if self._verified is not None:
            self._verified[digest] = (
                access_token,
                exp,
                number_claim(claims, "nbf", required=False),
                iat,
                keys if identity is not None else None,
                identity,
            )
        return access_token

    def limit_lifetime(self, limit: float) -> None:
        """Refuse tokens living longer than ``limit`` from now on; the verified ones are checked again."""
        self.max_lifetime = limit
        if self._verified is not None:
            self._verified.clear()

    def cached(self, raw_token: bytes) -> AccessToken | None:
        """The validated token for these exact bytes if the verified cache holds it, else ``None``.

        The hot path for a repeated token: no syntax check, no parse, no signature — the bytes are
        the ones that passed all of that before (the key is their SHA-256). exp/nbf/iat are checked,
        and the key that verified them must still be in the current, usable key set; ``None`` sends
        the request down the full path (which fetches keys or answers 503, as for a new token).
        """
        return self.cached_digest(bytes_digest(raw_token)) if self._verified is not None else None

    def cached_digest(self, digest: bytes) -> AccessToken | None:
        """``cached`` for a token whose SHA-256 the caller computed (one hash per request, however many
        lookups): the same checks on a hit."""
        verified = self._verified
        if verified is None:
            return None
        cached = verified.get(digest)
        if cached is None:
            return None
        token, exp, nbf, iat, keys, _identity = cached
        now = self._config.clock()
        leeway = self._config.leeway
        # The common case is decided here: verified against the current key set, dates fine (the same
        # comparisons as check_dates). Anything else goes through ``_still_valid``, which says why not.
        if (
            keys is not None
            and keys is self._jwks.current(now)
            and now < exp + leeway
            and (nbf is None or now + leeway >= nbf)
            and (iat is None or now + leeway >= iat)
        ):
            return token
        return self._still_valid(digest, cached)

    @property
    def caches(self) -> bool:
        """Whether this validator has a verified-token cache (``verified_cache_size`` > 0)."""
        return self._verified is not None

    def holds(self, digest: bytes) -> bool:
        """Whether the verified cache has an entry for this SHA-256, usable now or not (its order untouched)."""
        return self._verified is not None and digest in self._verified

    def _still_valid(self, digest: bytes, cached: _Verified) -> AccessToken | None:
        """A cache hit skips the signature, never the clock (RFC 7519 §4.1.4, §4.1.5, §4.1.6) nor the keys.

        ``None`` when the keys cannot vouch for the entry now: the set is unusable (past its max-age
        with nobody having tried a refetch, or past the stale period), or the verifying key is gone.
        """
        token, exp, nbf, iat, keys, identity = cached
        now = self._config.clock()
        if keys is not None:
            current = self._jwks.current(now)  # also starts a background refresh when one is due
            if current is not keys:
                if current is None:
                    return None  # the full path waits for the fetch, or answers 503 past the stale period
                verified = self._verified
                assert identity is not None  # a JWKS key set implies the key's identity
                assert verified is not None  # a hit implies a cache
                if not current.holds(identity):
                    # The issuer withdrew the key (or a kid now names other material): never served again.
                    verified.pop(digest, None)
                    return None
                # The same key in a newer set: re-stamped, so the next hit is one comparison again.
                verified[digest] = (token, exp, nbf, iat, current, identity)
        check_dates(exp, nbf, iat, now, self._config.leeway)
        return token

    @property
    def verified_cache_size(self) -> int:
        return len(self._verified) if self._verified is not None else 0

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str | None]:
        alg = header.get("alg")
        # RFC 8725 §3.1: only algorithms on the allow-list; "none" and its casings are never on it.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("disallowed_alg", "The access token uses a disallowed algorithm.")
        # RFC 7515 §4.1.11: extensions listed in "crit" must be understood; we understand none.
        if "crit" in header:
            raise InvalidToken("bad_header", "The access token has an unsupported critical header.")
        # RFC 7797 §3: an unencoded payload is an extension we do not support.
        if header.get("b64", True) is not True:
            raise InvalidToken("bad_header", "The access token has an unsupported header.")
        # RFC 9068 §4 and RFC 8725 §3.11: explicit typing keeps other JWT kinds out. A present "typ"
        # must be a string (RFC 7515 §4.1.9): null is not "absent".
        if "typ" not in header:
            if self._config.strict_rfc9068:
                raise InvalidToken("bad_typ", "The access token has the wrong type.")
        elif not isinstance(header["typ"], str) or header["typ"].lower() not in self._accepted_typ:
            raise InvalidToken("bad_typ", "The access token has the wrong type.")
        # RFC 7515 §4.1.4: "kid" is a string; a null kid must not turn into "try every key".
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):
            raise InvalidToken("bad_header", "The access token has a malformed key id.")
        # jku, x5u, x5c and jwk are never read: keys come from the configured issuer only (RFC 8725 §3.10).
        return alg, kid

    def _check_issuer_and_lifetime(self, claims: Mapping[str, Any]) -> None:
        # RFC 7519 §4.1.1 / RFC 9068 §4: "iss" MUST exactly match the issuer; no normalisation. A tenant
        # template's issuer is the template filled with the token's "tid" (``TenantIssuerCheck``).
        if self._tenant is not None:
            self._tenant.check_issuer(claims)
        elif claims.get("iss") != self._config.issuer:
            self._check_issuer(claims.get("iss"))
        now, leeway = self._config.clock(), self._config.leeway
        exp, nbf, iat = claims.get("exp"), claims.get("nbf", _ABSENT), claims.get("iat", _ABSENT)
        # The common shape (integer dates, each comfortably inside a double's range) is decided here;
        # anything else (null, floats, strings, huge numbers) goes through check_lifetime, which says
        # precisely what is wrong.
        if (
            type(exp) is int
            and -_SAFE_INT < exp < _SAFE_INT
            and now < exp + leeway
            and (nbf is _ABSENT or (type(nbf) is int and -_SAFE_INT < nbf < _SAFE_INT and now + leeway >= nbf))
            and (iat is _ABSENT or (type(iat) is int and -_SAFE_INT < iat < _SAFE_INT and now + leeway >= iat))
        ):
            return
        check_lifetime(claims, now, leeway, require_exp=True)

    def _verify_signature(
        self, parsed: ParsedJWS, alg: str, kid: str | None, keys: KeySet | None
    ) -> KeyIdentity | None:
        """Check the signature; return (kid, thumbprint, alg) of the JWKS key that verified it (None for HMAC)."""
        if alg in HMAC_ALGORITHMS:
            assert self._config.shared_secret is not None  # config refuses HS* without a secret
            candidates: tuple[tuple[KeyIdentity | None, Verifier], ...] = (
                (None, verifier(alg, self._config.shared_secret)),
            )
        else:
            assert keys is not None
            candidates = self._verifiers(keys, kid, alg)
            if kid is None:
                # A token that names no key is tried against the keys that fit its alg, a bounded
                # number of them: a forged kid-less token must not cost one verify per JWKS key.
                candidates = candidates[:_MAX_KIDLESS_TRIES]
            if not candidates:
                # The key the token names cannot do this alg (RFC 8725 §3.1: alg/key confusion).
                raise InvalidToken("key_mismatch", "The access token's algorithm does not fit its key.")
        for identity, verify in candidates:
            try:
                if verify(parsed.signing_input, parsed.signature):
                    # A token without "kid" is remembered under the key that verified it, so removing
                    # that key from the JWKS also drops the token from the verified cache.
                    return identity
            except (ValueError, TypeError) as exc:
                raise InvalidToken("bad_signature", "The access token's signature is invalid.") from exc
        raise InvalidToken("bad_signature", "The access token's signature is invalid.")

    def _verifiers(self, keys: KeySet, kid: str | None, alg: str) -> tuple[tuple[KeyIdentity, Verifier], ...]:
        """((kid, thumbprint, alg), prepared verifier) of each candidate key, memoised per key set.

        A refresh brings a new KeySet object, hence a new memo: a verifier never outlives its key.
        """
        if keys is not self._memo_keys:
            self._memo_keys, self._memo, self._headers = keys, {}, {}
        found = self._memo.get((kid, alg))
        if found is None:
            found = tuple(((key.kid, key.thumbprint, alg), verifier(alg, key.key)) for key in keys.candidates(kid, alg))
            if len(self._memo) < 256:  # bounded: kids come from tokens, but only known ones get here
                self._memo[(kid, alg)] = found
        return found

    async def _keys_for(self, kid: str | None) -> KeySet:
        keys = self._jwks.current() or await self._jwks.keys()
        if kid is not None and not keys.knows(kid):
            keys = await self._jwks.refetch_for(kid)
        return keys

    def _access_token(self, claims: dict[str, Any], kid: str | None) -> AccessToken:
        check_audience(claims, self._config.audience, client_ids=self._config.allowed_client_ids)
        check_token_kind(claims)
        if self._tenant is not None and self._tenant.deferred:
            self._tenant.check_tenant(claims)  # a callable sees only tokens whose signature verified
        if self._config.strict_rfc9068:
            # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat and jti are REQUIRED.
            for name in ("sub", "client_id", "jti"):
                value = claims.get(name)
                if not isinstance(value, str) or not value:
                    raise InvalidToken("missing_claim", "The access token lacks a required claim.")
            if claims.get("iat") is None:
                raise InvalidToken("missing_claim", "The access token lacks a required claim.")
        subject, client_id, username = identity_of(claims)
        return AccessToken._from_validation(
            subject,
            client_id,
            scopes_of(claims),
            claims,
            float(claims["exp"]),
            "jwt",
            self._config.issuer,
            string_claim(claims, "jti"),
            kid,
            username,
        )

    def _forget_keys(self, removed: frozenset[str], everything: bool = False) -> None:
        """Drop verified tokens signed by keys the issuer no longer publishes."""
        if self._verified is None:
            return
        if everything:
            self._verified.clear()
            return
        # Only for memory: a hit checks its key against the current set anyway (``_still_valid``).
        for digest, (token, *_) in list(self._verified.items()):
            if token.key_id in removed:
                self._verified.pop(digest, None)
