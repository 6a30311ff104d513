"""Local validation of one JWT access token (RFC 7515, RFC 7519, RFC 8725, RFC 9068).

The compact serialization is parsed here, strictly: canonical unpadded base64url only, JSON objects
only, no duplicate member names, no NaN/Infinity or out-of-range floats, nesting at most 32 deep; the
numeric dates it reads must be finite JSON numbers. PyJWT supplies the keys and the signature
algorithms; claims are checked here, in the order that keeps an attacker from making us fetch keys
(issuer and lifetime before any key lookup, so a stale or foreign token never triggers a refetch).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import json.scanner
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

from tokenguard._lru import LRU
from tokenguard._signatures import Verifier, verifier
from tokenguard._strictjson import reject_lone_surrogates, strict_decoder
from tokenguard.config import HMAC_ALGORITHMS, GuardConfig
from tokenguard.errors import InvalidToken
from tokenguard.jwks import JWKSCache, KeyIdentity, KeySet
from tokenguard.models import AccessToken

TokenKind = Literal["jws", "jwe", "opaque"]

# RFC 7515 §2 / RFC 4648 §5: base64url without padding. Three segments, non-empty signature.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# The last character of a canonical encoding has its unused low bits set to zero (RFC 4648 §3.5).
_CANONICAL_LAST = {
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_RFC9068_TYP = frozenset({"at+jwt", "application/at+jwt"})


_B64URL_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
_CANONICAL_LAST_BYTES = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}


def _b64decode(segment: str | bytes) -> bytes:
    """Strict base64url: rejects padding, stray characters and non-canonical trailing bits."""
    raw = segment.encode("ascii", "replace") if isinstance(segment, str) else segment
    if _B64URL_SEGMENT.fullmatch(raw) is None:
        raise InvalidToken("malformed_token", "The access token is malformed.")
    return _b64decode_checked(raw)


if sys.version_info >= (3, 11):
    #: Python 3.11+ can refuse non-alphabet characters while decoding (binascii strict_mode).
    _STRICT_A2B = True

    def _a2b(data: bytes) -> bytes:
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - Python 3.10: the compact-JWS regex checks the alphabet instead
    _STRICT_A2B = False
    _a2b = binascii.a2b_base64


def _b64decode_checked(raw: bytes) -> bytes:
    """``_b64decode`` for a segment whose alphabet is already checked (the compact-JWS match)."""
    remainder = len(raw) % 4
    if remainder == 1 or (remainder and raw[-1] not in _CANONICAL_LAST_BYTES[remainder]):
        raise InvalidToken("malformed_token", "The access token is malformed.")
    try:
        return _a2b(raw.translate(_TO_STANDARD) + _PADDING[remainder])
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("malformed_token", "The access token is malformed.") from exc


# No per-integer hook: tokens carry many integers and a hook costs a Python call each. Python's own
# limit (sys.get_int_max_str_digits, 4300 digits) and the token size cap bound the parsing work; the
# numbers the validator reads go through ``_number``, which refuses what no double can hold.
_FAST_DECODER = strict_decoder(finite_floats=True)


_SCAN: Any = json.scanner.make_scanner(_FAST_DECODER)  # type: ignore[arg-type]  # typeshed names the class oddly

#: RFC 8259 §9: "An implementation may set limits on the maximum depth of nesting." Real claim sets
#: nest a few levels; a fixed limit gives the same answer on every Python, whose own limit differs
#: (3.13 parses 6000 levels that 3.11 refuses), and keeps out structures deep enough to overflow the
#: stack of the app's own code (e.g. json.dumps of request.auth.claims).
_MAX_DEPTH = 32
#: The escapes that decide where JSON strings end (RFC 8259 §7): "\\\\" (a backslash) and '\\"' (a quote
#: that does not end the string). ``str.replace`` removes them left to right, pairing backslashes as
#: the decoder does (a run of 2k+1 keeps its last one, which escapes what follows); after that every '"'
#: opens or closes a string. (The regex this replaces, r'"(?:[^"\\]|\\.)*"', retried from every escaped
#: quote of a string that never closes and read the rest of the text again each time: O(n²), 250 ms
#: for a forged 16 KiB token, before any key or signature was looked at.)
_JSON_ESCAPES = ("\\\\", '\\"')
#: ``bytes.translate`` arguments that turn the text outside strings into one signed byte per bracket:
#: +1 for "[" and "{", -1 (0xFF) for "]" and "}"; every other byte is deleted.
_BRACKET_STEPS = (bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff"), bytes(set(range(256)) - set(b"[]{}")))


def _too_deep(text: str) -> bool:
    """True when ``text`` opens more than ``_MAX_DEPTH`` arrays/objects at once (strings skipped).

    Brackets count as the JSON decoder meets them, up to its first error: inside a string they do not
    count, and after a string that never closes there is nothing it would read. Linear by construction:
    a fixed number of passes in C (replace, split, join, encode, translate) and one running sum.
    """
    if text.count("[") + text.count("{") <= _MAX_DEPTH:
        return False  # the common case, decided without scanning
    from itertools import accumulate  # here, on the rare path: this helper's only import

    backslash, quote = _JSON_ESCAPES
    # Every other piece is outside a string; a string that never closes is the last, odd, piece.
    outside = "".join(text.replace(backslash, "").replace(quote, "").split('"')[::2])
    # Non-ASCII is never a bracket: dropped by the encoder, the other non-brackets by translate.
    steps = outside.encode("ascii", "ignore").translate(*_BRACKET_STEPS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > _MAX_DEPTH


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        if _too_deep(text):
            raise ValueError("nested too deeply")
        if text[:1] == "{":
            # The common shape, straight to the C scanner (what JSONDecoder.decode does after skipping
            # leading whitespace); only whitespace may follow the object (RFC 8259 §2).
            value, end = _SCAN(text, 0)
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise ValueError("extra data after the JSON value")
        else:
            value = _FAST_DECODER.decode(text)
        reject_lone_surrogates(text, value)
    except StopIteration as exc:
        raise InvalidToken("malformed_token", "The access token is malformed.") from exc
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise InvalidToken("malformed_token", "The access token is malformed.") from exc
    if not isinstance(value, dict):
        raise InvalidToken("malformed_token", "The access token is malformed.")
    return value


def classify(token: str) -> TokenKind:
    """JWS (three segments), refused JOSE (a JSON header with another shape, e.g. JWE), or opaque."""
    if token.count(".") == 2:
        return "jws"
    head = token.split(".", 1)[0]
    try:
        _json_object(_b64decode(head))
    except InvalidToken:
        return "opaque"
    return "jwe"


class ParsedJWS:
    """A compact JWS split and decoded, not yet trusted."""

    __slots__ = ("claims", "header", "signature", "signing_input")

    def __init__(self, header: dict[str, Any], claims: dict[str, Any], signing_input: bytes, signature: bytes) -> None:
        self.header = header
        self.claims = claims
        self.signing_input = signing_input
        self.signature = signature


def parse_jws(token: str) -> ParsedJWS:
    """Split and decode a compact JWS strictly (RFC 7515 §7.1)."""
    if _STRICT_A2B:
        # a2b_base64(strict_mode=True) refuses any character outside the (translated) alphabet, so
        # only the characters translation would smuggle in (+, /, =) and the shape are checked here.
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidToken("malformed_token", "The access token is malformed.") from exc
        first = raw.find(b".")
        second = raw.find(b".", first + 1)
        if (
            first < 1
            or second < first + 2
            or second == len(raw) - 1
            or raw.find(b".", second + 1) != -1
            or b"+" in raw
            or b"/" in raw
            or b"=" in raw
        ):
            raise InvalidToken("malformed_token", "The access token is malformed.")
    else:
        if _COMPACT_JWS.fullmatch(token) is None:
            raise InvalidToken("malformed_token", "The access token is malformed.")
        raw = token.encode("ascii")
        first = raw.index(b".")
        second = raw.index(b".", first + 1)
    return ParsedJWS(
        _json_object(_b64decode_checked(raw[:first])),
        _json_object(_b64decode_checked(raw[first + 1 : second])),
        raw[:second],
        _b64decode_checked(raw[second + 1 :]),
    )


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
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


def _string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidToken("bad_claim", "The access token has a malformed claim.")
    return value


#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) — printable ASCII but '"' and '\\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


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
        if value.isascii() and _SCOPE_TOKEN.fullmatch(value.replace(" ", "!")) is not None:
            return frozenset(value.split(" ")) - {""}  # the common case: every piece is a scope token
        return frozenset(piece for piece in value.split(" ") if _SCOPE_TOKEN.fullmatch(piece) is not None)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item for item in value if _SCOPE_TOKEN.fullmatch(item) is not None)
    raise InvalidToken("bad_claim", "The access token has a malformed scope claim.")


def check_lifetime(claims: Mapping[str, Any], now: float, leeway: float, *, require_exp: bool) -> float | None:
    """``exp``, ``nbf``, ``iat`` against the clock with leeway (RFC 7519 §4.1.4, §4.1.5, §4.1.6)."""
    exp = _number(claims, "exp", required=require_exp)
    check_dates(exp, _number(claims, "nbf", required=False), _number(claims, "iat", required=False), now, leeway)
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


def check_audience(claims: Mapping[str, Any], audiences: tuple[str, ...], *, required: bool = True) -> None:
    """RFC 7519 §4.1.3: the recipient MUST identify itself with a value in ``aud``, else reject."""
    aud = claims.get("aud")
    if type(aud) is str and aud in audiences:  # the common case, decided at once
        return
    if aud is None or aud == []:
        # An empty list names no audience, like an absent claim (ORY Hydra sends "aud": [] for a token
        # granted none): refused when the audience is required, let through only when it is relaxed.
        if required:
            raise InvalidToken("wrong_audience", "The access token is not meant for this resource.")
        return
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise InvalidToken("bad_claim", "The access token has a malformed audience claim.")
    if not any(value in audiences for value in values):
        raise InvalidToken("wrong_audience", "The access token is not meant for this resource.")


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
    if not (
        "typ" in claims or "token_use" in claims or "cnf" in claims or "at_hash" in claims or "c_hash" in claims
    ):
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
    # RFC 9449 §7.1 (DPoP "jkt") and RFC 8705 §3 (mTLS "x5t#S256"): a sender-constrained token must be
    # presented with proof of possession, which a bearer-only resource server cannot check; accepted
    # as a plain bearer token it would let a thief use it (RFC 9449 §7.2: MUST NOT).
    # RFC 7800 §3.1: any confirmation member (jwk, jwe, jku, kid, and the two above) binds the token to
    # a key whose possession is never proven here.
    if confirmation is not None and (not isinstance(confirmation, dict) or confirmation):
        raise InvalidToken(
            "unsupported_token", "The access token is bound to a key and cannot be used as a bearer token."
        )


#: Where issuers that predate RFC 9068's ``client_id`` put the client: OpenID Connect's ``azp``
#: (Auth0, Keycloak, Entra v2), Okta's ``cid``, Entra v1's ``appid``.
_CLIENT_ID_FALLBACKS = ("azp", "cid", "appid")


def identity_of(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``sub`` and the client id; a token with neither names nobody and is refused.

    The client id is ``client_id`` (RFC 9068 §2.2), else the first string among the vendor claims that
    carry it; ``strict_rfc9068`` still requires ``client_id`` itself.
    """
    subject, client_id = _string(claims, "sub"), _string(claims, "client_id")
    if not client_id:
        client_id = next((v for n in _CLIENT_ID_FALLBACKS if isinstance(v := claims.get(n), str) and v), None)
    if not subject and not client_id:
        raise InvalidToken("no_identity", "The access token names no subject or client.")
    return subject or None, client_id or None


def token_digest(token: str) -> bytes:
    """The cache key of a token: its SHA-256, so no cache ever holds the token itself."""
    # Any str hashes (a caller may hand us non-ASCII); such a token is refused later, never a crash here.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


#: A verified-cache entry: (token, exp, nbf, iat, the key set it was verified against, the identity
#: of the key that verified it). Key set and identity are None for an HMAC token (a static secret).
_Verified = tuple[AccessToken, float, "float | None", "float | None", "KeySet | None", "KeyIdentity | None"]


#: Integer dates below 2**53 convert to float exactly, so comparing them as ints decides the same.
_SAFE_INT = 2**53
_MAX_KIDLESS_TRIES = 8
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
        jwks.subscribe(self._forget_keys)

    async def validate(self, token: str) -> AccessToken:
        """Return the validated token, or raise ``InvalidToken`` / ``KeysUnavailable``."""
        result = self.validate_nowait(token)
        if isinstance(result, AccessToken):
            return result
        # The keys must be fetched first (cold cache, unknown kid): the only path that awaits.
        keys = await self._keys_for(result.kid)
        return self._finish(result, keys)

    def validate_nowait(self, token: str) -> AccessToken | _NeedsKeys:
        """Validate without awaiting when the cache or the current keys allow; else say what is missing."""
        digest = token_digest(token) if self._verified is not None else b""
        cached = self._verified.get(digest) if self._verified is not None else None
        if cached is not None:
            hit = self._still_valid(digest, cached)
            if hit is not None:
                return hit
        parsed = parse_jws(token)
        alg, kid = self._check_header(parsed.header)
        self._check_issuer_and_lifetime(parsed.claims)
        pending = _NeedsKeys(parsed, alg, kid, digest)
        if alg in HMAC_ALGORITHMS:
            return self._finish(pending, None)
        keys = self._jwks.current()
        if keys is None or (kid is not None and not keys.knows(kid)):
            return pending
        return self._finish(pending, keys)

    def _finish(self, pending: _NeedsKeys, keys: KeySet | None) -> AccessToken:
        parsed = pending.parsed
        identity = self._verify_signature(parsed, pending.alg, pending.kid, keys)
        access_token = self._access_token(parsed.claims, identity[0] if identity is not None else None)
        if self._verified is not None:
            claims = parsed.claims
            self._verified[pending.digest] = (
                access_token,
                float(claims["exp"]),
                _number(claims, "nbf", required=False),
                _number(claims, "iat", required=False),
                keys if identity is not None else None,
                identity,
            )
        return access_token

    def cached(self, raw_token: bytes) -> AccessToken | None:
        """The validated token for these exact bytes if the verified cache holds it, else ``None``.

        The hot path for a repeated token: no syntax check, no parse, no signature — the bytes are
        the ones that passed all of that before (the key is their SHA-256). exp/nbf/iat are checked,
        and the key that verified them must still be in the current, usable key set; ``None`` sends
        the request down the full path (which fetches keys or answers 503, as for a new token).
        """
        if self._verified is None:
            return None
        digest = hashlib.sha256(raw_token).digest()
        cached = self._verified.get(digest)
        return self._still_valid(digest, cached) if cached is not None else None

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
        # RFC 7519 §4.1.1 / RFC 9068 §4: "iss" MUST exactly match the issuer; no normalisation.
        if claims.get("iss") != self._config.issuer:
            raise InvalidToken("wrong_issuer", "The access token comes from another issuer.")
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
            self._memo_keys, self._memo = keys, {}
        found = self._memo.get((kid, alg))
        if found is None:
            found = tuple(
                ((key.kid, key.thumbprint, alg), verifier(alg, key.key)) for key in keys.candidates(kid, alg)
            )
            if len(self._memo) < 256:  # bounded: kids come from tokens, but only known ones get here
                self._memo[(kid, alg)] = found
        return found

    async def _keys_for(self, kid: str | None) -> KeySet:
        keys = self._jwks.current() or await self._jwks.keys()
        if kid is not None and not keys.knows(kid):
            keys = await self._jwks.refetch_for(kid)
        return keys

    def _access_token(self, claims: dict[str, Any], kid: str | None) -> AccessToken:
        check_audience(claims, self._config.audience)
        check_token_kind(claims)
        if self._config.strict_rfc9068:
            # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat and jti are REQUIRED.
            for name in ("sub", "client_id", "jti"):
                value = claims.get(name)
                if not isinstance(value, str) or not value:
                    raise InvalidToken("missing_claim", "The access token lacks a required claim.")
            if claims.get("iat") is None:
                raise InvalidToken("missing_claim", "The access token lacks a required claim.")
        subject, client_id = identity_of(claims)
        return AccessToken._from_validation(
            subject,
            client_id,
            scopes_of(claims),
            claims,
            float(claims["exp"]),
            "jwt",
            self._config.issuer,
            _string(claims, "jti"),
            kid,
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
