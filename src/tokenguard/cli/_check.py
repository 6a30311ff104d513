"""``tokenguard check``: is this issuer fit to be a ``TokenGuard`` issuer?

Finds the metadata with the middleware's own discovery client (``tokenguard._discovery``: the RFC 8414
path, then OpenID discovery, each document held to the exact-issuer and https-endpoint rules), fetches
the JWKS through tokenguard's own HTTP seam and key parser, lists the keys, flags problems, measures
clock skew against the issuer's ``Date`` header, and finally loads the keys with the middleware's own
``Authenticator``.

The issuer URL is held to the library's own rule first (``tokenguard.config.check_issuer``: https, or
plain http on loopback only, or a ``{tenantid}`` template), with the same words as ``inspect``, and the
``TokenGuard`` options the check is given (``GuardOptions``: ``allowed_client_ids``, ``tenants``,
``introspection_response``) go into the ``GuardConfig`` it builds before any fetch, so TokenGuard's own
validation judges them (a refusal is exit 2). An issuer that cannot be reached at all is an
``IssuerUnreachable`` (exit 2) that says which failure it is (DNS, refused, TLS, timeout).

The server families the README's "Interoperability" section lists are recognised from the issuer URL
and the metadata, each a note (or a warning or error when something will fail) naming the option to
set: Amazon Cognito (``allowed_client_ids``), Microsoft Entra multi-tenant (the ``{tenantid}`` template
with ``tenants``), RFC 9701 signed introspection answers (``introspection_response``) and RFC 8693
token exchange (``request.auth.actor``, ``@require_delegation``/``@refuse_delegation``).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from tokenguard._discovery import Attempt, Discovered, DiscoveryFailed, discover, metadata_problem
from tokenguard._http import FetchError, HttpClientOption, safe_url
from tokenguard._tenants import is_template, issuer_for, template_problem
from tokenguard.authenticator import Authenticator
from tokenguard.cli._output import CliError, Printer, RecordingPool, Unreachable, checked_issuer
from tokenguard.config import GuardConfig, IntrospectionOptions, IntrospectionResponse, check_url
from tokenguard.errors import ConfigurationError, UnavailableError
from tokenguard.jwks import parse_jwk

Severity = Literal["error", "warning", "note"]

_MAX_BYTES = 512 * 1024
_TIMEOUT = 5.0
_LEEWAY = 30.0  # the middleware's default leeway, for the clock-skew warning
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_PLACEHOLDER_AUDIENCE = "urn:tokenguard:check"
#: What a guard with introspection configured asks discovery for: the check reports what it would find.
_NEEDS = frozenset({"jwks_uri", "introspection_endpoint"})
#: An Amazon Cognito user pool's issuer: ``https://cognito-idp.REGION.amazonaws.com/POOL_ID``.
_COGNITO_HOST = re.compile(r"cognito-idp(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com")
#: RFC 8693 §2.1: the token-exchange grant, as ``grant_types_supported`` names it (RFC 8414 §2).
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 9701 §7: the algorithms an issuer signs introspection answers with.
_INTROSPECTION_ALGS = "introspection_signing_alg_values_supported"
#: Each TokenGuard option the check takes, and the check's flag for it (named in a refusal).
_FLAGS = (
    ("tenants", "--tenant TID"),
    ("allowed_client_ids", "--allowed-client-id ID"),
    ("introspection_response", "--introspection-response"),
)


@dataclass(frozen=True)
class GuardOptions:
    """The ``TokenGuard`` options the check is given (``--allowed-client-id``, ``--tenant``,
    ``--introspection-response``): each changes what an issuer's tokens need."""

    allowed_client_ids: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    introspection_response: IntrospectionResponse = "json"

    def keywords(self) -> list[str]:
        """The options as ``TokenGuard`` keyword arguments (those that differ from the defaults)."""
        words = []
        if self.allowed_client_ids:
            words.append(f"allowed_client_ids={json.dumps(list(self.allowed_client_ids))}")
        if self.tenants:
            words.append(f"tenants={json.dumps(list(self.tenants))}")
        if self.introspection_response != "json":
            words.append(f'introspection_response="{self.introspection_response}"')
        return words

    def as_json(self) -> dict[str, Any]:
        return {
            "allowed_client_ids": list(self.allowed_client_ids) or None,
            "tenants": list(self.tenants) or None,
            "introspection_response": self.introspection_response,
        }


@dataclass(frozen=True)
class Problem:
    severity: Severity
    message: str


@dataclass(frozen=True)
class KeyRow:
    """One JWKS entry as published, and whether tokenguard would verify with it."""

    kid: str | None
    kty: str
    alg: str | None
    use: str | None
    size: str
    usable: bool


class IssuerUnreachable(CliError):
    """No metadata URL answered at all: exit 2, with the reason in plain words and for ``--json``."""

    def __init__(self, issuer: str, reason: Unreachable, attempts: list[dict[str, Any]]) -> None:
        super().__init__(f"cannot reach the issuer {issuer}: {reason.message}")
        self.reason = reason
        self.attempts = attempts


@dataclass
class Report:
    issuer: str
    audience: str | None
    metadata_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    jwks_uri: str | None = None
    keys: list[KeyRow] = field(default_factory=list)
    skew: float | None = None
    loaded_kids: list[str] | None = None
    problems: list[Problem] = field(default_factory=list)
    #: Why discovery refused the metadata shown (``None`` when it was used).
    refusal: str | None = None
    #: Each metadata URL tried: its status, or why it could not be fetched (for ``--json``).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    #: The document each metadata member came from, when discovery merged several.
    sources: dict[str, str] = field(default_factory=dict)
    #: The TokenGuard options checked (as TokenGuard normalised them, once it accepted them).
    options: GuardOptions = field(default_factory=GuardOptions)
    #: The server families and features recognised (stable names, for ``--json``).
    recognised: list[str] = field(default_factory=list)

    def add(self, severity: Severity, message: str) -> None:
        self.problems.append(Problem(severity, message))

    def count(self, severity: Severity) -> int:
        return sum(1 for problem in self.problems if problem.severity == severity)


# -- running the checks -----------------------------------------------------------------------


async def run(
    issuer: str,
    audience: str | None,
    *,
    http_client: HttpClientOption,
    clock: Callable[[], float],
    options: GuardOptions | None = None,
) -> Report:
    """Every check, in order; ``CliError`` (exit 2) for an issuer URL or options TokenGuard refuses,
    and ``IssuerUnreachable`` (exit 2) when the issuer cannot be reached at all."""
    report = Report(checked_issuer(issuer), audience, options=options or GuardOptions())
    config = _guard_config(report, clock)  # before any fetch, as the middleware refuses at startup
    http = RecordingPool(http_client, timeout=_TIMEOUT)
    try:
        headers = await _discover(report, http)
        report.skew = _skew(headers, clock())
        _check_metadata(report)
        await _fetch_jwks(report, http)
    finally:
        await http.aclose()
    _check_skew(report)
    await _load_with_tokenguard(report, config, http_client)
    _check_audience(report)
    _recognise(report, config)
    return report


def _guard_config(report: Report, clock: Callable[[], float]) -> GuardConfig:
    """The ``GuardConfig`` the middleware would build from these options, judged by its own
    validation; a refusal is ``CliError`` (exit 2) in its words, naming the check's flag."""
    options = report.options
    try:
        config = GuardConfig(
            issuer=report.issuer,
            audience=(report.audience or _PLACEHOLDER_AUDIENCE,),
            clock=clock,
            # Lists, as TokenGuard is given them: GuardConfig validates and normalises them itself.
            allowed_client_ids=cast("frozenset[str] | None", list(options.allowed_client_ids) or None),
            tenants=cast("frozenset[str] | None", list(options.tenants) or None),
            introspection=IntrospectionOptions(response=options.introspection_response),
        )
    except ConfigurationError as exc:
        flag = next((flag for name, flag in _FLAGS if name in str(exc)), None)
        hint = f" (set with {flag})" if flag is not None else ""
        raise CliError(f"TokenGuard refuses this configuration: {exc}{hint}") from exc
    tenants = config.tenants if isinstance(config.tenants, frozenset) else frozenset()
    report.options = GuardOptions(
        allowed_client_ids=tuple(dict.fromkeys(options.allowed_client_ids)),
        tenants=tuple(dict.fromkeys(tenant.lower() for tenant in options.tenants if tenant.lower() in tenants)),
        introspection_response=config.introspection.response,
    )
    return config


async def _discover(report: Report, http: RecordingPool) -> Mapping[str, str]:
    """The metadata as the middleware finds it; returns the headers to read the clock skew from.

    Each URL tried is an ``Attempt`` (unreachable, which status, or why its document was refused).
    None answering at all is ``IssuerUnreachable`` (exit 2); the headers of the first answer are
    where the clock skew is read from when no metadata is usable. A document that was read but
    refused is still shown, keys and all, with the reason as an error; refused ones the middleware
    skips for a later usable one are warnings.
    """
    attempts: list[Attempt] = []
    found: Discovered | None
    try:
        found = await discover(
            http, report.issuer, timeout=_TIMEOUT, max_bytes=_MAX_BYTES, needs=_NEEDS, on_attempt=attempts.append
        )
    except DiscoveryFailed:
        found = None  # what each URL did is in `attempts`
    report.attempts = [_attempt_json(attempt, http) for attempt in attempts]
    refused = [attempt for attempt in attempts if attempt.document is not None and attempt.problem is not None]
    if found is not None:
        report.metadata, report.metadata_url = dict(found.document), found.url
        report.sources = dict(found.sources)
        for attempt in refused:
            report.add("warning", f"{attempt.problem}: TokenGuard skips it and uses {', '.join(found.urls)}")
        return found.headers
    if http.first_headers is None:  # no URL answered at all
        reason = http.summary() or Unreachable(
            "failed", "; ".join(attempt.problem or attempt.url for attempt in attempts)
        )
        raise IssuerUnreachable(report.issuer, reason, report.attempts)
    if not refused:
        report.add("error", "no authorization-server metadata: " + "; ".join(_problems(attempts, http)))
        return http.first_headers
    # The first document read is still shown, keys and all, with the reason discovery refused it.
    first = refused[0]
    document = first.document or {}
    report.metadata, report.metadata_url = dict(document), first.url
    report.refusal = metadata_problem(document, report.issuer) or first.problem
    report.add("error", f"the metadata {report.refusal}; TokenGuard refuses this metadata{_template_hint(report)}")
    return http.first_headers


def _template_hint(report: Report) -> str:
    """For metadata naming a tenant template (Microsoft Entra's ``common`` and ``organizations``
    documents name ``https://login.microsoftonline.com/{tenantid}/v2.0``): how to configure it."""
    named = report.metadata.get("issuer")
    if not isinstance(named, str) or not is_template(named) or template_problem(named) is not None:
        return ""
    if is_template(report.issuer):
        return ""
    report.recognised.append("entra_multi_tenant")
    return (
        f": it is multi-tenant metadata (Microsoft Entra), whose issuer is the tenant template; configure "
        f'issuer="{named}" literally with tenants=[...] listing the allowed tenant ids '
        f"(here: --issuer '{named}' --tenant TID)"
    )


def _problems(attempts: list[Attempt], http: RecordingPool) -> list[str]:
    """What each URL did: the ones that answered first, then the unreachable ones, in plain words."""
    answered = [attempt.problem or attempt.url for attempt in attempts if attempt.status is not None]
    return answered + [_unanswered(attempt, http) for attempt in attempts if attempt.status is None]


def _unanswered(attempt: Attempt, http: RecordingPool) -> str:
    why = http.why(attempt.url)
    if why is None or why.code == "failed":
        return attempt.problem or attempt.url
    return f"GET {safe_url(attempt.url)}: {why.message}"


def _attempt_json(attempt: Attempt, http: RecordingPool) -> dict[str, Any]:
    why = http.why(attempt.url)
    return {
        "url": safe_url(attempt.url),
        "status": attempt.status,
        "used": attempt.problem is None,
        "problem": why.message if why is not None else attempt.problem,
        "reason": why.code if why is not None else None,
    }


def _check_metadata(report: Report) -> None:
    """The fields the guard needs, one error or warning for each (the issuer was held to RFC 8414
    §3.3 by discovery, above)."""
    document = report.metadata
    if not document:
        return
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        report.add("error", "the metadata has no jwks_uri: there are no keys to verify tokens with")
    elif _url_ok(report, "jwks_uri", jwks_uri):
        report.jwks_uri = jwks_uri
    introspection = document.get("introspection_endpoint")
    if is_template(report.issuer):
        # A template never introspects (GuardConfig refuses an endpoint for it): Entra has none.
        report.add(
            "warning",
            "a tenant template issuer cannot be introspected (Microsoft Entra has no introspection "
            "endpoint): @sensitive routes answer 503 and opaque tokens are refused under it",
        )
    elif not isinstance(introspection, str) or not introspection:
        report.add(
            "warning",
            "the metadata has no introspection_endpoint: @sensitive routes and opaque tokens "
            "need one (pass introspection_endpoint= to TokenGuard, or they answer 503)",
        )
    else:
        _url_ok(report, "introspection_endpoint", introspection)


def _url_ok(report: Report, name: str, url: str) -> bool:
    try:
        check_url(name, url)
    except ConfigurationError as exc:
        # Discovery refuses a document for the first such URL it meets; that refusal, already an
        # error (possibly cut short), is not said twice.
        if report.refusal is None or not str(exc).startswith(report.refusal.removesuffix("...")):
            report.add("error", f"metadata {exc}")
        return False
    return True


async def _fetch_jwks(report: Report, http: RecordingPool) -> None:
    if report.jwks_uri is None:
        return
    try:
        result = await http.get(report.jwks_uri, timeout=_TIMEOUT, max_bytes=_MAX_BYTES)
        if result.status != 200:
            raise FetchError(f"GET {report.jwks_uri} answered {result.status}")
        document = result.json_object(report.jwks_uri)
    except FetchError as exc:
        why = http.why(report.jwks_uri)
        detail = f"GET {safe_url(report.jwks_uri)}: {why.message}" if why is not None else str(exc)
        report.add("error", f"the JWKS cannot be had: {detail}")
        return
    entries = document.get("keys")
    if not isinstance(entries, list):
        report.add("error", "the JWKS is not an object with a 'keys' list (RFC 7517 §5)")
        return
    for entry in entries:
        if isinstance(entry, dict):
            report.keys.append(_key_row(report, entry))
        else:
            report.add("error", "the JWKS holds an entry that is not a JSON object")
    _check_key_set(report)


def _key_row(report: Report, entry: Mapping[str, Any]) -> KeyRow:
    kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
    kty = str(entry.get("kty"))
    alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
    use = entry.get("use") if isinstance(entry.get("use"), str) else None
    size = _size(entry)
    name = f"key {kid!r}" if kid is not None else f"a {kty} key without kid"
    if kid is None:
        report.add(
            "error", f"{name}: tokens that name a kid can never select it, and key rotation needs kids (RFC 7517 §4.5)"
        )
    if kty == "oct" or (alg or "").startswith("HS"):
        # RFC 8725 §2.1/§3.1: a symmetric key in a public document invites algorithm confusion.
        report.add(
            "error",
            f"{name}: a symmetric (oct/HS*) key in a public JWKS; whoever reads it can forge "
            "tokens for any verifier that uses it (tokenguard ignores it)",
        )
    leaked = [member for member in _PRIVATE_MEMBERS if member in entry]
    if leaked and kty != "oct":
        report.add("error", f"{name}: private key material published ({', '.join(leaked)})")
    if kty == "RSA" and size.isdigit() and int(size) < 2048:
        # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
        report.add("error", f"{name}: RSA key of {size} bits; at least 2048 are required (tokenguard ignores it)")
    usable = parse_jwk(dict(entry)) is not None
    if not usable and use not in (None, "sig") and kty != "oct":
        report.add("note", f"{name}: use {use!r}, not a signature key (ignored for tokens)")
    return KeyRow(kid, kty, alg, use, size, usable)


def _size(entry: Mapping[str, Any]) -> str:
    if entry.get("kty") == "RSA" and isinstance(entry.get("n"), str):
        return str(_b64_bits(entry["n"]))
    crv = entry.get("crv")
    return crv if isinstance(crv, str) else "-"


def _b64_bits(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


def _check_key_set(report: Report) -> None:
    kids = [row.kid for row in report.keys if row.kid is not None]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        report.add(
            "warning",
            f"several keys share a kid ({', '.join(duplicates)}): RFC 7517 §4.5 wants them distinct within a set",
        )
    if not any(row.usable for row in report.keys):
        report.add("error", "the JWKS has no key tokenguard can verify signatures with")


def _skew(headers: Mapping[str, str], now: float) -> float | None:
    date = next((value for name, value in headers.items() if name.lower() == "date"), None)
    if date is None:
        return None
    try:
        return parsedate_to_datetime(date).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def _check_skew(report: Report) -> None:
    if report.skew is None:
        report.add("note", "the issuer sent no usable Date header, so the clock skew is unknown")
    elif abs(report.skew) > _LEEWAY:
        report.add(
            "warning",
            f"the clocks differ by {abs(report.skew):.0f}s, more than tokenguard's default "
            f"leeway of {_LEEWAY:.0f}s: fresh tokens may be refused as not yet valid or expired",
        )


async def _load_with_tokenguard(report: Report, config: GuardConfig, http_client: HttpClientOption) -> None:
    """What the middleware itself makes of this issuer, configured as ``config`` (``_guard_config``):
    the keys it loads, or why it cannot."""
    if report.count("error"):
        return  # the middleware would refuse for a reason already listed
    http = RecordingPool(http_client, timeout=config.http_timeout)
    authenticator = Authenticator(config, http=http)
    try:
        await authenticator.prefetch()
        report.loaded_kids = list(authenticator.jwks.status()["kids"])
    except UnavailableError as exc:
        why = http.summary()
        report.add("error", f"TokenGuard cannot load the keys: {why.message if why is not None else exc.cause}")
    finally:
        await authenticator.aclose()


def _check_audience(report: Report) -> None:
    if report.audience is not None and report.audience == report.issuer:
        report.add(
            "warning",
            "the audience equals the issuer: the audience should name this API, the resource "
            "server (RFC 9068 §3), so tokens minted for the issuer itself are not accepted here",
        )


# -- recognising server families -------------------------------------------------------------


def _recognise(report: Report, config: GuardConfig) -> None:
    """The families and features the README's "Interoperability" section names, from the issuer URL
    and the metadata TokenGuard would use: a note each, a warning when tokens will be refused."""
    _recognise_cognito(report)
    _recognise_template(report)
    if report.metadata and report.refusal is None:  # only metadata TokenGuard would use says what it offers
        _recognise_signed_introspection(report, config)
        _recognise_token_exchange(report)


def _is_cognito(issuer: str) -> bool:
    try:
        parts = urlsplit(issuer)
    except ValueError:
        return False
    return bool(_COGNITO_HOST.fullmatch(parts.hostname or "")) and parts.path.strip("/") != ""


def _recognise_cognito(report: Report) -> None:
    clients = report.options.allowed_client_ids
    if _is_cognito(report.issuer):
        report.recognised.append("amazon_cognito")
        if not clients:
            report.add(
                "warning",
                "Amazon Cognito access tokens carry no aud: TokenGuard refuses them unless "
                "allowed_client_ids=[...] names your app clients (here: --allowed-client-id ID)",
            )
            return
        report.add(
            "note",
            f"Amazon Cognito: access tokens without aud pass when their client_id is one of "
            f"allowed_client_ids ({', '.join(clients)}); ID tokens (token_use id) are still refused",
        )
    elif clients:
        report.add(
            "note",
            f"allowed_client_ids: a token without aud passes when its client_id is one of {', '.join(clients)}; "
            "a token with aud is judged by it alone",
        )


def _recognise_template(report: Report) -> None:
    if not is_template(report.issuer):
        return
    report.recognised.append("entra_multi_tenant")
    tenants = report.options.tenants
    issuers = ", ".join(issuer_for(report.issuer, tenant) for tenant in tenants)
    report.add(
        "note",
        f"tenant template (Microsoft Entra multi-tenant): TokenGuard accepts tokens of the {len(tenants)} "
        f"tenant(s) in tenants=[...] only, each under its own issuer ({issuers}); every other tenant is refused",
    )


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _recognise_signed_introspection(report: Report, config: GuardConfig) -> None:
    """RFC 9701: ``introspection_signing_alg_values_supported`` (§7) says the issuer signs answers; the
    guard takes only the asymmetric algorithms of its allow-list for them."""
    wanted = report.options.introspection_response == "jwt"
    if _INTROSPECTION_ALGS not in report.metadata:
        if wanted:
            report.add(
                "warning",
                f'introspection_response="jwt", but the metadata does not say the issuer signs introspection '
                f"answers (no {_INTROSPECTION_ALGS}, RFC 9701 section 7): if it answers plain JSON, every "
                'introspection is a 503; keep introspection_response="json" unless it signs them',
            )
        return
    advertised = _strings(report.metadata[_INTROSPECTION_ALGS])
    usable = [alg for alg in advertised if alg in config.introspection_algorithms]
    report.recognised.append("signed_introspection")
    shown = ", ".join(advertised) or "none"
    if usable and wanted:
        report.add(
            "note",
            f'introspection_response="jwt": the issuer signs introspection answers (RFC 9701) with {shown}; '
            "TokenGuard verifies them with its keys",
        )
    elif usable:
        report.add(
            "note",
            f"the issuer signs introspection answers on request (RFC 9701, {_INTROSPECTION_ALGS}: {shown}): "
            'introspection_response="jwt" asks for them and verifies them (here: --introspection-response jwt)',
        )
    else:
        severity: Severity = "warning" if wanted else "note"
        consequence = (
            'introspection_response="jwt" will refuse every answer (503)'
            if wanted
            else 'keep introspection_response="json"'
        )
        report.add(
            severity,
            f"the issuer signs introspection answers only with {shown}, which TokenGuard never accepts for "
            f"answers (only asymmetric algorithms of its allow-list: {', '.join(config.introspection_algorithms)}): "
            + consequence,
        )


def _recognise_token_exchange(report: Report) -> None:
    if _TOKEN_EXCHANGE not in _strings(report.metadata.get("grant_types_supported")):
        return
    report.recognised.append("token_exchange")
    report.add(
        "note",
        "the issuer offers token exchange (RFC 8693, grant_types_supported): an exchanged token names "
        "the acting party in act, which TokenGuard shows as request.auth.actor (the chain: "
        "request.auth.actors); mark routes @require_delegation or @refuse_delegation to insist on or "
        "refuse delegated tokens",
    )


# -- output -----------------------------------------------------------------------------------


def exit_code(report: Report) -> int:
    """0 ok, 1 the check found errors (a refused URL or an unreachable issuer never gets a report: 2)."""
    return 1 if report.count("error") else 0


def render_text(out: Printer, report: Report) -> None:
    out.line(out.style(f"Issuer  {report.issuer}", "bold"))
    if report.options.keywords():
        out.line(f"Options  {', '.join(report.options.keywords())}")
    out.line(f"Metadata  {report.metadata_url or '(none found)'}")
    for name in ("issuer", "jwks_uri", "token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        value = report.metadata.get(name)
        if value is not None:
            source = report.sources.get(name, report.metadata_url)
            origin = f"  (from {safe_url(source)})" if source != report.metadata_url and source else ""
            out.line(f"  {name:<24}{value}{origin}")
    _render_keys(out, report)
    out.line()
    out.line(f"Clock  {_skew_phrase(report.skew)}")
    if report.loaded_kids is not None:
        out.line(f"TokenGuard  loads {len(report.loaded_kids)} key(s): {', '.join(report.loaded_kids) or '-'}")
        if report.audience is not None:
            options = "".join(f", {word}" for word in report.options.keywords())
            out.line(
                f'  app.add_middleware(TokenGuard, issuer="{report.issuer}", audience="{report.audience}"{options})'
            )
    _render_problems(out, report)


def _render_keys(out: Printer, report: Report) -> None:
    if report.jwks_uri is None:
        return
    out.line()
    out.line(out.style(f"Keys  {report.jwks_uri} ({len(report.keys)})", "bold"))
    rows = [
        [row.kid or "(none)", row.kty, row.alg or "-", row.use or "-", row.size, "yes" if row.usable else "no"]
        for row in report.keys
    ]
    if rows:
        out.table(["KID", "KTY", "ALG", "USE", "SIZE/CRV", "USABLE"], rows)


def _skew_phrase(skew: float | None) -> str:
    if skew is None:
        return "unknown (no Date header)"
    if abs(skew) < 2:
        return "in step with this machine (within the Date header's 1 s resolution)"
    direction = "ahead of" if skew > 0 else "behind"
    return f"the issuer is {math.floor(abs(skew))}s {direction} this machine (from its Date header)"


def _render_problems(out: Printer, report: Report) -> None:
    out.line()
    colors = {"error": "red", "warning": "yellow", "note": "dim"}
    for problem in report.problems:
        out.line(f"  {out.style(f'{problem.severity:<7}', colors[problem.severity])}  {problem.message}")
    errors, warnings = report.count("error"), report.count("warning")
    verdict = out.style("FAIL", "bold", "red") if errors else out.style("OK", "bold", "green")
    out.line(f"{verdict}  {errors} error(s), {warnings} warning(s)")


def as_json(report: Report) -> dict[str, Any]:
    """The report as one JSON document; ``error_json`` gives the same shape for a check that could
    not run (``error`` is ``null`` here)."""
    return {
        "issuer": report.issuer,
        "audience": report.audience,
        "ok": not report.count("error"),
        "exit_code": exit_code(report),
        "error": None,
        "metadata_attempts": report.attempts,
        "metadata_url": report.metadata_url,
        "metadata_sources": {name: safe_url(url) for name, url in report.sources.items()} or None,
        "metadata": report.metadata or None,
        "jwks_uri": report.jwks_uri,
        "keys": [
            {"kid": r.kid, "kty": r.kty, "alg": r.alg, "use": r.use, "size": r.size, "usable": r.usable}
            for r in report.keys
        ],
        "clock_skew_seconds": report.skew,
        "tokenguard_kids": report.loaded_kids,
        "guard_options": report.options.as_json(),
        "recognised": list(dict.fromkeys(report.recognised)),
        "problems": [{"severity": p.severity, "message": p.message} for p in report.problems],
    }


def error_json(
    issuer: str, audience: str | None, error: Exception, code: int, options: GuardOptions | None = None
) -> dict[str, Any]:
    """The document ``check --json`` prints when the check could not run: the report's shape, empty,
    with ``error`` saying why (``kind``: ``unreachable``, ``usage`` or ``internal``)."""
    document = as_json(Report(issuer, audience, options=options or GuardOptions()))
    if isinstance(error, IssuerUnreachable):
        kind, reason, message = "unreachable", error.reason.code, error.message
        document["metadata_attempts"] = error.attempts
    elif isinstance(error, CliError):
        kind, reason, message = "usage", None, error.message
    else:
        kind, reason, message = "internal", type(error).__name__, "internal error"
    document.update(ok=False, exit_code=code, error={"kind": kind, "reason": reason, "message": message})
    return document
