"""``tokenguard inspect``: decode a token without trusting it, flag risky parts, optionally verify it.

Decoding is deliberately lenient (padding and the standard base64 alphabet are tolerated, and said
so) so that a broken token can still be looked at; verification (``--issuer``/``--audience``) runs
the middleware's own extraction step and ``Authenticator``, so "valid here" means "valid behind
``TokenGuard``" with its default options: a token over the default ``max_token_bytes`` is refused
there before it is decoded, and ``inspect`` says so even without ``--issuer``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tokenguard._http import HttpClientOption
from tokenguard._jose import classify, parse_jws
from tokenguard._strictjson import strict_pairs
from tokenguard.authenticator import Authenticator
from tokenguard.cli._output import CliError, Printer, RecordingPool, checked_issuer, duration, utc
from tokenguard.config import DEFAULT_ALGORITHMS, HMAC_ALGORITHMS, GuardConfig, IntrospectionOptions
from tokenguard.errors import AuthError, ConfigurationError, UnavailableError
from tokenguard.extract import bearer_from

Severity = Literal["error", "warning"]

_SEGMENT = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")
_SEGMENT_NAMES = ("header", "claims", "signature")
_KEY_HEADERS = {
    "jku": "a URL to fetch keys from",
    "x5u": "a URL to fetch a certificate from",
    "x5c": "an embedded certificate chain",
    "jwk": "an embedded public key",
}
_ACCESS_TYP = frozenset({"at+jwt", "application/at+jwt"})
DEFAULT_LEEWAY = GuardConfig.leeway  # the middleware's default clock-skew allowance, in seconds
#: The middleware's default cap on a bearer token (``max_token_bytes``): larger ones are refused unread.
DEFAULT_MAX_TOKEN_BYTES = GuardConfig.max_token_bytes


@dataclass(frozen=True)
class Finding:
    """One thing worth saying about a token; an ``error`` means tokenguard refuses it whatever the setup."""

    severity: Severity
    code: str
    message: str


@dataclass
class Decoded:
    """What could be read from a token without any key."""

    kind: Literal["jws", "jwe", "opaque"]
    length: int
    header: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    signature_bytes: int = 0
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, code: str, message: str) -> None:
        self.findings.append(Finding(severity, code, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def over_cap(self) -> bool:
        """Longer than the middleware's default ``max_token_bytes`` (a token is ASCII: chars are bytes)."""
        return self.length > DEFAULT_MAX_TOKEN_BYTES


@dataclass(frozen=True)
class Verification:
    """The middleware's verdict on a token."""

    issuer: str
    audience: str
    valid: bool
    reason: str
    description: str
    identity: str | None = None
    scopes: tuple[str, ...] = ()
    source: str | None = None
    expires_at: float | None = None
    #: For a token refused only for its size: what the rest of the checks say (``None`` otherwise).
    beyond_cap: str | None = None


# -- reading the token ------------------------------------------------------------------------


def read_token(value: str, stdin_text: Callable[[], str]) -> str:
    """The token from the argument or, for ``-``, from stdin; a pasted ``Bearer `` prefix is dropped."""
    text = stdin_text() if value == "-" else value
    token = text.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise CliError("no token given (stdin was empty)" if value == "-" else "the token is empty")
    if any(ch.isspace() for ch in token):
        raise CliError("the token contains whitespace; pass exactly one token")
    if not token.isascii() or not token.isprintable():
        raise CliError("the token contains characters that are not printable ASCII")
    return token


def _segment(token_part: str, name: str) -> tuple[bytes, list[str]]:
    """Lenient base64url decoding of one segment; notes say what a strict decoder would refuse."""
    notes: list[str] = []
    if not _SEGMENT.fullmatch(token_part):
        raise CliError(f"the {name} segment is not base64url: it contains characters outside A-Z a-z 0-9 - _")
    if "=" in token_part:
        notes.append(f"the {name} segment is padded with '='; JWS uses unpadded base64url (RFC 7515 §2)")
    if "+" in token_part or "/" in token_part:
        notes.append(f"the {name} segment uses the standard base64 alphabet ('+' or '/'), not base64url")
    bare = token_part.rstrip("=").replace("+", "-").replace("/", "_")
    if len(bare) % 4 == 1:
        raise CliError(f"the {name} segment is not base64url: its length ({len(bare)}) cannot be decoded")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4)), notes
    except (binascii.Error, ValueError) as exc:
        raise CliError(f"the {name} segment is not valid base64url") from exc


def _object(data: bytes, name: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"the {name} segment decodes to bytes that are not UTF-8 text, so not JSON") from exc
    try:
        value = json.loads(text, object_pairs_hook=strict_pairs)
    except ValueError as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise CliError(f"the {name} segment is base64url but not JSON ({detail})") from exc
    except RecursionError as exc:
        raise CliError(f"the {name} segment is JSON nested too deeply to read") from exc
    if not isinstance(value, dict):
        raise CliError(f"the {name} segment is JSON but not an object (it is a {type(value).__name__})")
    return value


def decode(token: str) -> Decoded:
    """Split and decode a token without verifying anything; raises ``CliError`` on unreadable input."""
    kind = classify(token)
    if kind == "opaque":
        return Decoded("opaque", len(token))
    if kind == "jwe":
        decoded = Decoded("jwe", len(token), header=_object(_segment(token.split(".")[0], "header")[0], "header"))
        decoded.add(
            "error",
            "jwe",
            "not a signed JWT: an encrypted JWE (or a JOSE token with extra parts); tokenguard refuses these",
        )
        return decoded
    parts = token.split(".")
    decoded_parts: list[bytes] = []
    notes: list[str] = []
    for part, name in zip(parts, _SEGMENT_NAMES, strict=True):
        if not part and name != "signature":
            raise CliError(f"the {name} segment is empty")
        data, part_notes = _segment(part, name)
        decoded_parts.append(data)
        notes.extend(part_notes)
    decoded = Decoded(
        "jws",
        len(token),
        header=_object(decoded_parts[0], "header"),
        claims=_object(decoded_parts[1], "claims"),
        signature_bytes=len(decoded_parts[2]),
    )
    for note in notes:
        decoded.add("error", "encoding", note)
    _check_strict_parse(token, decoded, notes)
    return decoded


def _check_strict_parse(token: str, decoded: Decoded, notes: list[str]) -> None:
    if notes or decoded.signature_bytes == 0:
        return  # already explained by a more precise finding
    try:
        parse_jws(token)  # the validator's own strict parser (RFC 7515 §7.1)
    except AuthError:
        decoded.add(
            "error",
            "encoding",
            "tokenguard's strict parser refuses this encoding (non-canonical "
            "base64url, an empty signature, or non-finite numbers)",
        )


# -- findings ---------------------------------------------------------------------------------


def assess(decoded: Decoded, now: float) -> None:
    """Add the findings about the size, the header and the claims."""
    if decoded.over_cap:
        # extract.parse_authorization: the size cap comes before any parsing.
        decoded.findings.insert(
            0,
            Finding(
                "warning",
                "token_too_large",
                f"{decoded.length} bytes, over TokenGuard's default cap of {DEFAULT_MAX_TOKEN_BYTES} "
                "(max_token_bytes): the middleware refuses it (401 invalid_token) before decoding "
                "anything; raise max_token_bytes if your issuer really issues tokens this large",
            ),
        )
    if decoded.header is not None:
        _assess_header(decoded, decoded.header)
    if decoded.claims is not None:
        _assess_claims(decoded, decoded.claims, now)
    if decoded.kind == "jws" and decoded.signature_bytes == 0:
        decoded.add("error", "unsigned", "the signature is empty: the token is unsigned")


def _assess_header(decoded: Decoded, header: dict[str, Any]) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str):
        decoded.add("error", "alg", "the header has no 'alg' string")
    elif alg.lower() == "none":
        # RFC 8725 §3.1: "none" is never accepted; any casing of it is the same attack.
        decoded.add("error", "alg_none", f"alg {alg!r}: an unsigned token; anyone can write one, never accept it")
    elif alg in HMAC_ALGORITHMS:
        decoded.add(
            "warning",
            "alg_hmac",
            f"alg {alg}: signed with a shared secret, so every verifier can also "
            "mint tokens; tokenguard refuses it unless a shared_secret is configured (RFC 8725 §3.1)",
        )
    elif alg not in DEFAULT_ALGORITHMS:
        decoded.add("error", "alg_unknown", f"alg {alg!r} is not on tokenguard's allow-list")
    for name, what in _KEY_HEADERS.items():
        if name in header:
            # RFC 8725 §3.10: keys named by the token itself must not be trusted blindly.
            decoded.add(
                "warning",
                name,
                f"header {name!r} carries {what}: a verifier that follows it trusts "
                "a key the attacker chose; tokenguard ignores it and uses only the issuer's JWKS",
            )
    if "crit" in header:
        # RFC 7515 §4.1.11: a recipient that does not understand a critical extension must reject.
        decoded.add(
            "error",
            "crit",
            "header 'crit' lists critical extensions; tokenguard understands none and refuses the token",
        )
    if header.get("b64", True) is not True:
        decoded.add("error", "b64", "header 'b64' is not true: an unencoded payload (RFC 7797), refused")
    if "kid" not in header:
        decoded.add(
            "warning",
            "no_kid",
            "no 'kid': the verifier cannot tell which key signed it, and key rotation becomes guesswork",
        )
    elif not isinstance(header["kid"], str):
        decoded.add("error", "bad_kid", "'kid' is not a string")
    _assess_typ(decoded, header.get("typ"))


def _assess_typ(decoded: Decoded, typ: object) -> None:
    if typ is None:
        decoded.add(
            "warning",
            "typ",
            "no 'typ': RFC 9068 §2.1 access tokens say typ 'at+jwt' "
            "(tokenguard accepts it unless strict_rfc9068 is on)",
        )
    elif not isinstance(typ, str) or typ.lower() not in (_ACCESS_TYP | {"jwt"}):
        # RFC 8725 §3.11: explicit typing keeps ID tokens and other JWTs out.
        decoded.add("error", "typ", f"typ {typ!r} is not an access-token type; tokenguard refuses it")
    elif typ.lower() not in _ACCESS_TYP:
        decoded.add(
            "warning",
            "typ",
            f"typ {typ!r}, not 'at+jwt' (RFC 9068 §2.1): it could be another kind of JWT, such as an ID token",
        )


def _number(claims: dict[str, Any], name: str, decoded: Decoded) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # RFC 7519 §2: a NumericDate is a JSON number.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        decoded.add("error", name, f"'{name}' is not a number ({type(value).__name__})")
        return None
    return float(value)


def _assess_claims(decoded: Decoded, claims: dict[str, Any], now: float) -> None:
    exp, nbf, iat = (_number(claims, name, decoded) for name in ("exp", "nbf", "iat"))
    if "exp" not in claims:
        decoded.add("error", "exp", "no 'exp': a token that never expires; tokenguard requires exp")
    elif exp is not None and now >= exp:
        decoded.add(_past_leeway(now - exp), "expired", f"expired {duration(now - exp)} ago{_leeway_note(now - exp)}")
    if nbf is not None and now < nbf:
        decoded.add(
            _past_leeway(nbf - now),
            "not_yet_valid",
            f"not valid for another {duration(nbf - now)}{_leeway_note(nbf - now)}",
        )
    if iat is not None and now < iat:
        decoded.add(
            _past_leeway(iat - now),
            "iat_future",
            f"issued {duration(iat - now)} in the future (clock skew?){_leeway_note(iat - now)}",
        )
    for name in ("iss", "aud"):
        if name not in claims:
            decoded.add("error", name, f"no '{name}': tokenguard refuses tokens without it")
    if not claims.get("sub") and not claims.get("client_id"):
        decoded.add("error", "no_identity", "neither 'sub' nor 'client_id': the token names nobody")
    scope = claims.get("scope", claims.get("scp"))
    if scope is not None and not (
        isinstance(scope, str) or (isinstance(scope, list) and all(isinstance(s, str) for s in scope))
    ):
        decoded.add("error", "scope", "'scope' is neither a space-separated string nor a list of strings")


def _past_leeway(seconds: float) -> Severity:
    """Within the middleware's default leeway a time claim is only a warning (RFC 7519 §4.1.4 skew)."""
    return "error" if seconds >= DEFAULT_LEEWAY else "warning"


def _leeway_note(seconds: float) -> str:
    if seconds >= DEFAULT_LEEWAY:
        return ""
    return f" (still inside tokenguard's default {DEFAULT_LEEWAY:.0f} s leeway)"


def times(claims: dict[str, Any], now: float) -> list[tuple[str, float, str]]:
    """``(name, timestamp, relative phrase)`` for iat, nbf and exp, where they are numbers."""
    rows: list[tuple[str, float, str]] = []
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        rows.append((name, float(value), _relative(name, float(value) - now)))
    return rows


def _relative(name: str, delta: float) -> str:
    span = duration(delta)
    if name == "exp":
        return f"expires in {span}" if delta > 0 else f"expired {span} ago"
    if name == "nbf":
        return f"valid in {span}" if delta > 0 else f"valid since {span} ago"
    return f"issued {span} ago" if delta <= 0 else f"issued {span} in the future"


# -- verification -----------------------------------------------------------------------------


async def verify(
    token: str,
    *,
    issuer: str,
    audience: str,
    client_id: str | None,
    client_secret: str | None,
    introspect: bool,
    http_client: HttpClientOption,
    clock: Callable[[], float],
) -> Verification:
    """Run the middleware's extraction and ``Authenticator`` on the token; ``CliError`` when the issuer
    is refused or the token cannot be checked (the issuer unreachable: said in plain words)."""
    checked_issuer(issuer)
    try:
        config = GuardConfig(
            issuer=issuer,
            audience=(audience,),
            clock=clock,
            introspection=IntrospectionOptions(client_id=client_id, client_secret=client_secret),
        )
    except ConfigurationError as exc:
        raise CliError(str(exc)) from exc
    try:
        # What the middleware does with the Authorization header first: the size cap, the b64token shape.
        bearer_from([b"Bearer " + token.encode("ascii")], config.max_token_bytes)
    except AuthError as exc:
        refused = Verification(issuer, audience, False, exc.reason, exc.description)
        if exc.reason != "token_too_large":
            return refused
        unbounded = GuardConfig(
            issuer=issuer,
            audience=(audience,),
            clock=clock,
            introspection=config.introspection,
            max_token_bytes=len(token),
        )
        rest = await _validate(token, unbounded, issuer, audience, introspect, http_client)
        return replace(refused, beyond_cap=_beyond_cap(rest, len(token)))
    return await _validate(token, config, issuer, audience, introspect, http_client)


def _beyond_cap(rest: Verification, length: int) -> str:
    if rest.valid:
        return f"with max_token_bytes={length} or more, it is VALID (identity {rest.identity}, source {rest.source})"
    return f"with max_token_bytes={length} or more, it is still INVALID: {rest.reason}: {rest.description}"


def _binding_note(confirmation: object) -> str:
    """What else the guard asks of a sender-constrained token (RFC 9449 §7, RFC 8705 §3)."""
    if not isinstance(confirmation, Mapping) or not confirmation:
        return ""
    needs = []
    if isinstance(confirmation.get("jkt"), str):
        needs.append(f"a DPoP proof signed by the key with thumbprint {confirmation['jkt']} (Authorization: DPoP)")
    if isinstance(confirmation.get("x5t#S256"), str):
        needs.append(f"the TLS client certificate with thumbprint {confirmation['x5t#S256']}")
    return " It is sender-constrained: the guard also needs " + " and ".join(needs) + "." if needs else ""


async def _validate(
    token: str,
    config: GuardConfig,
    issuer: str,
    audience: str,
    introspect: bool,
    http_client: HttpClientOption,
) -> Verification:
    http = RecordingPool(http_client, timeout=config.http_timeout)
    authenticator = Authenticator(config, http=http)
    try:
        result = await authenticator.validate(token, sensitive=introspect)
    except AuthError as exc:
        return Verification(issuer, audience, False, exc.reason, exc.description)
    except UnavailableError as exc:
        why = http.summary() if http.first_headers is None else None  # only when nothing answered at all
        cause = f"cannot reach it: {why.message}" if why is not None else exc.cause
        raise CliError(f"could not check the token against {issuer}: {cause}") from exc
    finally:
        await authenticator.aclose()
    return Verification(
        issuer,
        audience,
        True,
        "ok",
        "The access token is valid." + _binding_note(result.claims.get("cnf")),
        identity=result.identity,
        scopes=tuple(sorted(result.scopes)),
        source=result.source,
        expires_at=result.expires_at,
    )


# -- output -----------------------------------------------------------------------------------

_UNVERIFIED = "Decoded WITHOUT verifying the signature: these claims are not trusted"


def first_line(verifying: bool) -> str:
    if verifying:
        return _UNVERIFIED + "; verification with tokenguard follows below."
    return _UNVERIFIED + " (add --issuer and --audience to verify)."


def render_text(out: Printer, decoded: Decoded, verification: Verification | None, now: float) -> None:
    out.line(out.style(first_line(verification is not None), "bold", "yellow"))
    out.line()
    if decoded.over_cap:
        out.line(
            out.style("warning", "bold", "yellow")
            + f"  {decoded.length} bytes: TokenGuard (default max_token_bytes={DEFAULT_MAX_TOKEN_BYTES}) "
            "refuses this token before decoding it"
        )
        out.line()
    if decoded.kind == "opaque":
        out.line(f"Token: opaque ({decoded.length} chars): not a JWT, so there is nothing to decode.")
        out.line("Only its issuer can say what it means (RFC 7662 introspection).")
        if decoded.findings:
            _render_findings(out, decoded.findings)
    else:
        kind = "JWS (signed JWT)" if decoded.kind == "jws" else "JWE / other JOSE token"
        sig = f", signature {decoded.signature_bytes} bytes (not verified)" if decoded.kind == "jws" else ""
        out.line(f"Token: {kind}, {decoded.length} chars{sig}")
        _render_json(out, "Header", decoded.header)
        _render_json(out, "Claims", decoded.claims)
        _render_times(out, decoded.claims, now)
        _render_findings(out, decoded.findings)
    if verification is not None:
        _render_verification(out, verification)


def _render_json(out: Printer, title: str, document: dict[str, Any] | None) -> None:
    if document is None:
        return
    out.line()
    out.line(out.style(title, "bold"))
    for line in json.dumps(document, indent=2, ensure_ascii=False).splitlines():
        out.line("  " + line)


def _render_times(out: Printer, claims: dict[str, Any] | None, now: float) -> None:
    rows = times(claims or {}, now)
    if not rows:
        return
    out.line()
    out.line(out.style(f"Times (now {utc(now)})", "bold"))
    for name, value, phrase in rows:
        color = "red" if phrase.startswith("expired") or phrase.startswith("valid in") else "green"
        out.line(f"  {name}  {utc(value)}  {out.style(phrase, color)}")


def _render_findings(out: Printer, findings: list[Finding]) -> None:
    out.line()
    if not findings:
        out.line(out.style("Findings: none", "bold"))
        return
    out.line(out.style("Findings", "bold"))
    for finding in findings:
        label = out.style(f"{finding.severity:<7}", "red" if finding.severity == "error" else "yellow")
        out.line(f"  {label}  {finding.message}")


def _render_verification(out: Printer, result: Verification) -> None:
    out.line()
    out.line(out.style(f"Verification against {result.issuer} (audience {result.audience})", "bold"))
    if result.valid:
        out.line("  " + out.style("VALID", "bold", "green") + f"  identity {result.identity}, source {result.source}")
        out.line(f"  scopes: {' '.join(result.scopes) or '(none)'}")
        note = result.description.removeprefix("The access token is valid.").strip()
        if note:  # a sender-constrained token: what the guard also asks for (wrapped to 100 columns)
            for line in textwrap.wrap(note, width=96):
                out.line(f"  {line}")
    else:
        out.line("  " + out.style("INVALID", "bold", "red") + f"  {result.reason}: {result.description}")
        if result.beyond_cap is not None:
            out.line(f"  {result.beyond_cap}")


def as_json(decoded: Decoded, verification: Verification | None, now: float) -> dict[str, Any]:
    document: dict[str, Any] = {
        "verified": False,
        "note": first_line(verification is not None),
        "kind": decoded.kind,
        "length": decoded.length,
        "header": decoded.header,
        "claims": decoded.claims,
        "signature_bytes": decoded.signature_bytes if decoded.kind == "jws" else None,
        "size": {
            "bytes": decoded.length,
            "default_max_token_bytes": DEFAULT_MAX_TOKEN_BYTES,
            "over_default_max": decoded.over_cap,
        },
        "times": {
            name: {"timestamp": value, "utc": utc(value), "relative": phrase}
            for name, value, phrase in times(decoded.claims or {}, now)
        },
        "findings": [{"severity": f.severity, "code": f.code, "message": f.message} for f in decoded.findings],
    }
    if verification is not None:
        document["verified"] = verification.valid
        document["verification"] = {
            "issuer": verification.issuer,
            "audience": verification.audience,
            "valid": verification.valid,
            "reason": verification.reason,
            "description": verification.description,
            "identity": verification.identity,
            "scopes": list(verification.scopes),
            "source": verification.source,
            "expires_at": verification.expires_at,
            "beyond_cap": verification.beyond_cap,
        }
    return document


def exit_code(decoded: Decoded, verification: Verification | None) -> int:
    """0 ok; 1 when the verification failed or, without one, when tokenguard would refuse the token."""
    if verification is not None:
        return 0 if verification.valid else 1
    return 1 if decoded.kind == "opaque" or decoded.errors else 0
