"""Local JWT validation (RFC 7515, RFC 7519, RFC 8725, RFC 9068) with real keys and real signed tokens.

Every validation test runs twice, against a validator with the verified-token cache and one without
(``cache_size`` fixture): both must reach the same decision. Every refusal also checks that the raw token
and its signature appear nowhere: not in the exception, its repr or traceback, the rendered response,
nor any log record.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

import tokenguard.jwt_validator as jwt_validator_module
from conftest import AUDIENCE, ISSUER, OPENID_URL, T0, Issuer, b64url, private_key
from tokenguard._claims import check_audience, check_lifetime, identity_of, scopes_of
from tokenguard._jose import classify
from tokenguard.authenticator import Authenticator
from tokenguard.challenge import challenge, render
from tokenguard.config import DEFAULT_ALGORITHMS, GuardConfig, IntrospectionOptions
from tokenguard.errors import REASONS, AuthError, InvalidToken, KeysUnavailable, TokenGuardError
from tokenguard.models import AccessToken
from tokenguard.testing import ManualClock, SigningKey

SECRET = b"0123456789abcdef0123456789abcdef-shared"
ATTACKER_URL = "https://attacker.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- harness ----------------------------------------------------------------------------------------------


def assert_no_leak(token: str, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """The token and its signature segment appear in no message, repr, traceback, response or log."""
    secrets = [part for part in (token, *token.split(".")[2:]) if len(part) >= 16]
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if isinstance(error, TokenGuardError):
        denial = render(error, realm="api")
        texts += [denial.body.decode(), repr(denial.headers)]
        if isinstance(error, AuthError):
            texts.append(challenge(error, realm="api"))
    texts.append(caplog.text)
    for record in caplog.records:
        texts += [record.getMessage(), repr(vars(record))]
    for secret in secrets:
        for text in texts:
            assert secret not in text


@dataclass
class Guard:
    """An Authenticator plus the checks every decision gets."""

    auth: Authenticator
    caplog: pytest.LogCaptureFixture

    @property
    def cached(self) -> bool:
        return self.auth.config.verified_cache_size > 0

    async def accept(self, token: str) -> AccessToken:
        """Validate twice (the second time through the cache, when there is one): same answer both times."""
        first = await self.auth.validate(token)
        second = await self.auth.validate(token)
        assert second == first
        assert (second is first) is self.cached
        assert first.source == "jwt"
        assert_no_leak(token, Exception(repr(first)), self.caplog)
        return first

    async def refuse(self, token: str, reason: str, error: type[TokenGuardError] = InvalidToken) -> TokenGuardError:
        """Validate twice; both refusals carry ``reason``, nothing leaks the token, nothing is cached."""
        cached_before = self.auth.validator.verified_cache_size
        for _ in range(2):
            with pytest.raises(error) as info:
                await self.auth.validate(token)
            assert info.value.reason == reason
            assert info.value.reason in REASONS
            assert_no_leak(token, info.value, self.caplog)
        if error is InvalidToken:
            assert info.value.status_code == 401
            assert info.value.error_code == "invalid_token"
        assert self.auth.validator.verified_cache_size <= cached_before
        return info.value


@pytest.fixture(params=[pytest.param(10_000, id="cached"), pytest.param(0, id="uncached")])
def cache_size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
async def build(
    idp: Issuer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Callable[..., Guard]]:
    """Make guards for the test; their HTTP clients are closed afterwards."""
    caplog.set_level(logging.DEBUG)
    made: list[Authenticator] = []

    def make(**options: Any) -> Guard:
        options.setdefault("issuer", ISSUER)
        options.setdefault("audience", AUDIENCE)
        options.setdefault("clock", clock)
        auth = Authenticator(GuardConfig(**options))
        made.append(auth)
        return Guard(auth, caplog)

    yield make
    for auth in made:
        await auth.aclose()


@pytest.fixture
def make_guard(build: Callable[..., Guard], cache_size: int) -> Callable[..., Guard]:
    """Guards with the verified-token cache on or off, as the test is parametrized."""
    return lambda **options: build(verified_cache_size=cache_size, **options)


@pytest.fixture
def guard(make_guard: Callable[..., Guard]) -> Guard:
    return make_guard()


def segment(value: Any) -> str:
    """A base64url segment of a JSON value, or of raw bytes/str given as is."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value).encode())


def sign(idp: Issuer, head: str, body: str, kid: str = "rsa-1", alg: str | None = None) -> str:
    """A compact JWS over exactly these two segments, signed by one of the issuer's keys."""
    key = idp.key(kid)
    algorithm = jwt.get_algorithm_by_name(alg or key.alg)
    signature = algorithm.sign(f"{head}.{body}".encode(), key.private)
    return f"{head}.{body}.{b64url(signature)}"


def header(**extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", **extra}


def signed_json(idp: Issuer, claims_text: str, head: dict[str, Any] | None = None) -> str:
    """A token whose payload is this exact JSON text (for numbers and shapes json.dumps cannot make)."""
    return sign(idp, segment(head or header()), segment(claims_text))


def claims_text(idp: Issuer, **replace: str) -> str:
    """The default claims as JSON text, with some values replaced by raw JSON text."""
    claims = idp.claims(**{name: f"@@{name}@@" for name in replace})
    text = json.dumps(claims)
    for name, raw in replace.items():
        text = text.replace(f'"@@{name}@@"', raw)
    return text


def attacker_cert() -> str:
    key = private_key("rsa", 1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.timezone.utc))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


# -- happy paths --------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        ("rsa-1", "RS256"),
        ("rsa-1", "RS384"),
        ("rsa-1", "RS512"),
        ("rsa-1", "PS256"),
        ("rsa-1", "PS384"),
        ("rsa-1", "PS512"),
        ("ec-1", "ES256"),
        ("ec384-1", "ES384"),
        ("ed-1", "EdDSA"),
    ],
)
async def test_valid_token_per_algorithm(idp: Issuer, make_guard: Callable[..., Guard], kid: str, alg: str) -> None:
    """A token signed with each allowed algorithm by the issuer's key validates into an AccessToken."""
    idp.keys.append(SigningKey("ES384", private_key("ec384"), kid="ec384-1"))
    token = idp.token(kid, alg=alg, jti="t-1")
    result = await make_guard().accept(token)
    assert result.subject == "alice"
    assert result.client_id == "photos-app"
    assert result.identity == "alice"
    assert result.scopes == frozenset({"read:photos"})
    assert result.issuer == ISSUER
    assert result.expires_at == T0 + 300
    assert result.token_id == "t-1"
    assert result.key_id == kid
    assert result.claims["aud"] == AUDIENCE


@pytest.mark.anyio
async def test_algorithms_option_restricts(idp: Issuer, make_guard: Callable[..., Guard]) -> None:
    """algorithms= is an allow-list: other algorithms are refused even with a good key and signature."""
    guard = make_guard(algorithms=("ES256", "RS256"))
    await guard.accept(idp.token("ec-1"))
    await guard.accept(idp.token("rsa-1"))
    await guard.refuse(idp.token("rsa-1", alg="PS256"), "disallowed_alg")
    await guard.refuse(idp.token("rsa-1", alg="RS512"), "disallowed_alg")
    await guard.refuse(idp.token("ed-1"), "disallowed_alg")


# -- alg: none and algorithm confusion -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_unsigned_is_refused(idp: Issuer, guard: Guard, alg: str) -> None:
    """An unsigned token (empty signature) is refused whatever the casing of "none" (RFC 8725 §3.1)."""
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(idp.claims())}."
    await guard.refuse(token, "malformed_token")
    assert classify(token) == "jws"


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", ["rsa-1", None])
async def test_alg_none_with_a_signature_is_refused(idp: Issuer, guard: Guard, alg: str, kid: str | None) -> None:
    """ "none" with a real signature attached is still refused: the alg is not on the allow-list."""
    head = segment({"alg": alg, "kid": kid} if kid else {"alg": alg})
    body = segment(idp.claims())
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{head}.{body}".encode(), private_key("rsa"))
    await guard.refuse(f"{head}.{body}.{b64url(signature)}", "disallowed_alg")
    assert idp.jwks_calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("alg", [None, "", "RS256 ", "rs256", "HS256", "ES256K", 256, ["RS256"]])
async def test_other_disallowed_algs(idp: Issuer, guard: Guard, alg: Any) -> None:
    """A missing, mis-cased, unknown or non-string alg is refused before any key is looked at."""
    head = {"typ": "at+jwt", "kid": "rsa-1"} if alg is None else header(alg=alg)
    token = sign(idp, segment(head), segment(idp.claims()))
    await guard.refuse(token, "disallowed_alg")
    assert idp.jwks_calls == 0


def _public_pem() -> bytes:
    return (
        private_key("rsa")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def hs256_with(idp: Issuer, key: bytes, kid: str | None = "rsa-1", alg: str = "HS256") -> str:
    head = segment({"alg": alg, "typ": "at+jwt", **({"kid": kid} if kid else {})})
    body = segment(idp.claims())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    return f"{head}.{body}.{b64url(hmac.new(key, f'{head}.{body}'.encode(), digest).digest())}"


@pytest.mark.anyio
@pytest.mark.parametrize("kid", ["rsa-1", None])
@pytest.mark.parametrize("form", ["pem", "pem-stripped", "jwk-json"])
async def test_hs256_signed_with_the_public_key_is_refused(
    idp: Issuer, make_guard: Callable[..., Guard], form: str, kid: str | None
) -> None:
    """Alg confusion (RFC 8725 §2.1): HS256 keyed with the issuer's public key is refused, secret or not."""
    key = {
        "pem": _public_pem(),
        "pem-stripped": _public_pem().strip(),
        "jwk-json": json.dumps(idp.key("rsa-1").public_jwk()).encode(),
    }[form]
    token = hs256_with(idp, key, kid)
    await make_guard().refuse(token, "disallowed_alg")
    with_secret = make_guard(algorithms=(*DEFAULT_ALGORITHMS, "HS256"), shared_secret=SECRET)
    await with_secret.refuse(token, "bad_signature")


@pytest.mark.anyio
async def test_hs256_with_the_configured_secret(idp: Issuer, make_guard: Callable[..., Guard]) -> None:
    """With a shared secret configured, an HS256 token signed with it passes; RS256 keeps working."""
    guard = make_guard(algorithms=(*DEFAULT_ALGORITHMS, "HS256"), shared_secret=SECRET)
    result = await guard.accept(hs256_with(idp, SECRET, kid=None))
    assert result.subject == "alice"
    assert result.key_id is None
    await guard.accept(hs256_with(idp, SECRET, kid="whatever"))
    await guard.accept(idp.token("rsa-1"))
    await guard.refuse(hs256_with(idp, SECRET, alg="HS384"), "disallowed_alg")
    await guard.refuse(hs256_with(idp, SECRET[:-1] + b"!"), "bad_signature")


# -- key selection ------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kid", "alg", "key_kind"),
    [
        ("ec-1", "RS256", "rsa"),
        ("ec-1", "PS256", "rsa"),
        ("ec-1", "ES384", "ec384"),
        ("ec-1", "EdDSA", "ed25519"),
        ("rsa-1", "ES256", "ec256"),
        ("rsa-1", "EdDSA", "ed25519"),
        ("ed-1", "RS256", "rsa"),
        ("ed-1", "ES256", "ec256"),
    ],
)
async def test_kid_naming_a_key_of_another_type_is_key_mismatch(
    idp: Issuer, guard: Guard, kid: str, alg: str, key_kind: str
) -> None:
    """The key a kid names must fit the header's alg (kty/crv); it is never swapped for another key."""
    token = idp.token(kid, alg=alg, key=private_key(key_kind))
    await guard.refuse(token, "key_mismatch")


@pytest.mark.anyio
async def test_jwk_alg_restricts_the_key(idp: Issuer, guard: Guard) -> None:
    """An RSA JWK that declares alg RS256 verifies RS256 only: PS256 with the same key is refused."""
    idp.republish("rsa-1", alg="RS256")
    await guard.accept(idp.token("rsa-1"))
    await guard.refuse(idp.token("rsa-1", alg="PS256"), "key_mismatch")
    await guard.refuse(idp.token(None, alg="PS256", key=private_key("rsa")), "key_mismatch")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("alg", "key_kind", "verified_by"),
    [("RS256", "rsa", "rsa-1"), ("PS512", "rsa", "rsa-1"), ("ES256", "ec256", "ec-1"), ("EdDSA", "ed25519", "ed-1")],
)
async def test_token_without_kid_uses_fitting_keys(
    idp: Issuer, guard: Guard, alg: str, key_kind: str, verified_by: str
) -> None:
    """A token without kid is verified by a JWKS key that fits its alg, and remembers which one."""
    result = await guard.accept(idp.token(None, alg=alg, key=private_key(key_kind)))
    assert result.key_id == verified_by


@pytest.mark.anyio
async def test_token_without_kid_and_no_fitting_key(idp: Issuer, guard: Guard) -> None:
    """Without kid, an alg that no published key can verify is key_mismatch, not a try with other keys."""
    await guard.refuse(idp.token(None, alg="ES384", key=private_key("ec384")), "key_mismatch")


@pytest.mark.anyio
async def test_token_without_kid_signed_by_another_key(idp: Issuer, guard: Guard) -> None:
    """Without kid, a signature from a key the issuer does not publish fails every fitting key."""
    await guard.refuse(idp.token(None, alg="RS256", key=private_key("rsa", 1)), "bad_signature")


@pytest.mark.anyio
async def test_unknown_kid_is_refused_after_one_refetch(idp: Issuer, guard: Guard) -> None:
    """A kid not in the JWKS triggers one refetch, then 401 unknown_kid; the cool-down stops more refetches."""
    await guard.refuse(idp.token("rsa-1", headers={"kid": "rotated-away"}), "unknown_kid")
    assert idp.jwks_calls == 2


@pytest.mark.anyio
async def test_kid_of_one_key_signed_by_another(idp: Issuer, guard: Guard) -> None:
    """A kid is never "fixed" by trying the other keys: rsa-1's kid with another RSA signature fails."""
    await guard.refuse(idp.token("rsa-1", key=private_key("rsa", 1)), "bad_signature")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"crit": ["exp"], "exp": 1}, "bad_header"),
        ({"crit": ["https://example.com/ext"]}, "bad_header"),
        ({"crit": []}, "bad_header"),
        ({"b64": False, "crit": ["b64"]}, "bad_header"),
        ({"b64": False}, "bad_header"),
        ({"kid": 7}, "bad_header"),
        ({"kid": ["rsa-1"]}, "bad_header"),
        ({"kid": None}, "bad_header"),
    ],
    ids=repr,
)
async def test_bad_headers(idp: Issuer, guard: Guard, extra: dict[str, Any], reason: str) -> None:
    """Unknown crit extensions (RFC 7515 §4.1.11), b64=false (RFC 7797) and non-string kids are refused."""
    await guard.refuse(sign(idp, segment(header(**extra)), segment(idp.claims())), reason)


@pytest.mark.anyio
async def test_b64_true_is_harmless(idp: Issuer, guard: Guard) -> None:
    """b64: true is the default encoding and is accepted."""
    await guard.accept(sign(idp, segment(header(b64=True)), segment(idp.claims())))


ATTACKER_HEADERS = {
    "jku": lambda: {"jku": f"{ATTACKER_URL}/jwks.json"},
    "x5u": lambda: {"x5u": f"{ATTACKER_URL}/cert.pem"},
    "x5c": lambda: {"x5c": [attacker_cert()]},
    "jwk": lambda: {"jwk": json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 1).public_key()))},
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(ATTACKER_HEADERS))
@pytest.mark.parametrize(
    ("kid", "reason"), [("rsa-1", "bad_signature"), (None, "bad_signature"), ("attacker-1", "unknown_kid")]
)
async def test_key_headers_are_never_followed(
    idp: Issuer, guard: Guard, respx_mock: respx.MockRouter, name: str, kid: str | None, reason: str
) -> None:
    """jku, x5u, x5c and jwk pointing to the attacker's key are ignored (RFC 8725 §3.10): no call, 401."""
    token = idp.token(kid, alg="RS256", key=private_key("rsa", 1), headers=ATTACKER_HEADERS[name]())
    await guard.refuse(token, reason)
    hosts = {call.request.url.host for call in respx_mock.calls}
    assert hosts == {"idp.example.com"}


# -- issuer and audience ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.example.com",
        "https://idp.example.com/",
        "https://IDP.example.com",
        "HTTPS://idp.example.com",
        "https://idp.example.com:443",
        "http://idp.example.com",
        "https://idp.example.com/tenant",
        "",
        None,
        ["https://idp.example.com"],
        {"iss": "https://idp.example.com"},
        1,
    ],
    ids=repr,
)
async def test_issuer_must_match_exactly(idp: Issuer, guard: Guard, iss: Any) -> None:
    """iss must equal the configured issuer exactly: no normalisation of slash, case or port."""
    claims = {**idp.claims(), "iss": iss} if iss is not None else idp.claims(iss=None)
    await guard.refuse(sign(idp, segment(header()), segment(claims)), "wrong_issuer")


@pytest.mark.anyio
async def test_foreign_or_stale_token_triggers_no_key_fetch(idp: Issuer, guard: Guard, clock: ManualClock) -> None:
    """Issuer and lifetime are checked before any key lookup: an unknown kid then costs no JWKS fetch."""
    await guard.refuse(idp.token("rsa-1", headers={"kid": "new"}, iss="https://evil.example.com"), "wrong_issuer")
    await guard.refuse(idp.token("rsa-1", headers={"kid": "new"}, exp=int(clock()) - 3600), "expired")
    assert idp.jwks_calls == 0
    assert idp.metadata_calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "aud",
    [
        AUDIENCE,
        [AUDIENCE],
        ["https://other.example", AUDIENCE],
        [AUDIENCE, AUDIENCE],
        "HTTPS://API.EXAMPLE.COM",
        [AUDIENCE + ":443"],
    ],
    ids=repr,
)
async def test_audience_accepted(idp: Issuer, guard: Guard, aud: Any) -> None:
    """aud as a string, or a list containing the audience (RFC 7519 §4.1.3), is accepted."""
    await guard.accept(idp.token("rsa-1", aud=aud))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        ("https://other.example", "wrong_audience"),
        (["https://other.example"], "wrong_audience"),
        ([], "wrong_audience"),
        (None, "wrong_audience"),
        ("https://api.example.com/", "wrong_audience"),
        ("http://api.example.com", "wrong_audience"),
        ("https://api.example.com:8443", "wrong_audience"),
        ([AUDIENCE, 5], "bad_claim"),
        ([[AUDIENCE]], "bad_claim"),
        ([None], "bad_claim"),
        (5, "bad_claim"),
        ({"aud": AUDIENCE}, "bad_claim"),
        (True, "bad_claim"),
    ],
    ids=repr,
)
async def test_audience_refused(idp: Issuer, guard: Guard, aud: Any, reason: str) -> None:
    """A missing, foreign or malformed aud is refused."""
    await guard.refuse(idp.token("rsa-1", aud=aud), reason)


@pytest.mark.anyio
async def test_several_configured_audiences(idp: Issuer, make_guard: Callable[..., Guard]) -> None:
    """With several configured audiences, a token for any one of them is accepted."""
    guard = make_guard(audience=("https://a.example", AUDIENCE))
    await guard.accept(idp.token("rsa-1", aud="https://a.example"))
    await guard.accept(idp.token("rsa-1", aud=AUDIENCE))
    await guard.accept(idp.token("rsa-1", aud=["https://z.example", "https://a.example"]))
    await guard.refuse(idp.token("rsa-1", aud="https://c.example"), "wrong_audience")


# -- lifetime -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": None}, "missing_claim"),
        ({"exp": -3600}, "expired"),
        ({"exp": -31}, "expired"),
        ({"exp": -30}, "expired"),
        ({"nbf": 31}, "not_yet_valid"),
        ({"nbf": 3600}, "not_yet_valid"),
        ({"iat": 31}, "not_yet_valid"),
        ({"iat": 86400}, "not_yet_valid"),
    ],
    ids=repr,
)
async def test_lifetime_refused(
    idp: Issuer, guard: Guard, clock: ManualClock, claims: dict[str, Any], reason: str
) -> None:
    """exp is required; expired (beyond the 30 s leeway), not-yet-valid nbf and future iat are refused."""
    values = {name: None if offset is None else int(clock()) + offset for name, offset in claims.items()}
    await guard.refuse(idp.token("rsa-1", **values), reason)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "claims",
    [{"exp": -29}, {"exp": 1}, {"nbf": 30}, {"nbf": 0}, {"iat": 30}, {"iat": -86400}, {"iat": None}],
    ids=repr,
)
async def test_lifetime_within_leeway(idp: Issuer, guard: Guard, clock: ManualClock, claims: dict[str, Any]) -> None:
    """Clock skew up to the leeway is tolerated for exp, nbf and iat; iat is optional."""
    values = {name: None if offset is None else int(clock()) + offset for name, offset in claims.items()}
    await guard.accept(idp.token("rsa-1", **values))


@pytest.mark.anyio
async def test_zero_leeway(idp: Issuer, make_guard: Callable[..., Guard], clock: ManualClock) -> None:
    """With leeway=0, exp equal to now is expired and nbf one second ahead is not valid yet."""
    guard = make_guard(leeway=0)
    now = int(clock())
    await guard.refuse(idp.token("rsa-1", exp=now), "expired")
    await guard.refuse(idp.token("rsa-1", nbf=now + 1), "not_yet_valid")
    await guard.accept(idp.token("rsa-1", exp=now + 1, nbf=now))


@pytest.mark.anyio
async def test_fractional_numeric_dates(idp: Issuer, guard: Guard, clock: ManualClock) -> None:
    """NumericDate may be a non-integer JSON number (RFC 7519 §2)."""
    result = await guard.accept(idp.token("rsa-1", exp=clock() + 10.5, iat=clock() - 0.25))
    assert result.expires_at == clock() + 10.5


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "raw",
    ['"1800000300"', '"1e9"', "true", "false", "[1800000300]", '{"t": 1800000300}', "null"],
)
async def test_numeric_dates_must_be_json_numbers(idp: Issuer, guard: Guard, name: str, raw: str) -> None:
    """exp, nbf and iat as strings, booleans, arrays, objects or null are refused (RFC 7519 §2)."""
    reason = "missing_claim" if raw == "null" else "bad_claim"
    await guard.refuse(signed_json(idp, claims_text(idp, **{name: raw})), reason)


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "raw",
    ["1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 400, "9" * 309, "1" * 5000, "1E999999999"],
    ids=["1e400", "-1e400", "10**400", "-400-nines", "309-nines", "5000-digits", "1E999999999"],
)
async def test_huge_numbers_are_refused_not_a_crash(idp: Issuer, guard: Guard, name: str, raw: str) -> None:
    """Numbers beyond a double (1e400, a 400-digit integer) are a 401, never an OverflowError.

    Floats out of range and integers past Python's digit limit fail while parsing (malformed); an
    integer that parses but no double can hold is refused where the date is read (bad_claim).
    """
    reason = "bad_claim" if raw.lstrip("-").isdigit() and len(raw) <= 4300 else "malformed_token"
    await guard.refuse(signed_json(idp, claims_text(idp, **{name: raw})), reason)


@pytest.mark.anyio
@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("name", ["exp", "nbf", "sub"])
async def test_nan_and_infinity_are_malformed(idp: Issuer, guard: Guard, name: str, raw: str) -> None:
    """NaN and Infinity are not JSON (RFC 8259 §6) and never reach a comparison."""
    await guard.refuse(signed_json(idp, claims_text(idp, **{name: raw})), "malformed_token")


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), 10**400, -(10**400), "1800000000", True, [1]],
    ids=["nan", "inf", "-inf", "10**400", "-10**400", "string", "true", "list"],
)
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_check_lifetime_on_lenient_json(name: str, value: Any) -> None:
    """check_lifetime (also used for introspection answers, parsed leniently) refuses what JSON should not hold."""
    claims = {"exp": T0 + 300, name: value}
    with pytest.raises(InvalidToken) as info:
        check_lifetime(claims, T0, 30, require_exp=True)
    assert info.value.reason == "bad_claim"


# -- typ ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt", "APPLICATION/AT+JWT"], ids=repr
)
async def test_accepted_typ(idp: Issuer, guard: Guard, typ: str | None) -> None:
    """typ may be absent, JWT, at+jwt or application/at+jwt, in any case (RFC 9068 §4)."""
    await guard.accept(idp.token("rsa-1", headers={"typ": typ}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "typ",
    [
        "dpop+jwt",
        "secevent+jwt",
        "logout+jwt",
        "application/jwt",
        "at+jwt ",
        "JOSE",
        "JOSE+JSON",
        "",
        1,
        True,
        ["at+jwt"],
        {"typ": "JWT"},
    ],
    ids=repr,
)
async def test_refused_typ(idp: Issuer, guard: Guard, typ: Any) -> None:
    """Other JWT kinds (DPoP proofs, SETs, logout tokens) and non-string typ are bad_typ (RFC 8725 §3.11)."""
    await guard.refuse(sign(idp, segment(header(typ=typ)), segment(idp.claims())), "bad_typ")


@pytest.mark.anyio
async def test_null_typ_is_refused(idp: Issuer, guard: Guard) -> None:
    """A present "typ": null is not a string, and not the same as no typ."""
    await guard.refuse(sign(idp, segment(header(typ=None)), segment(idp.claims())), "bad_typ")


# -- strict RFC 9068 ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
async def test_strict_accepts_rfc9068_tokens(idp: Issuer, make_guard: Callable[..., Guard], typ: str) -> None:
    """strict_rfc9068 accepts an at+jwt token carrying sub, client_id, iat and jti."""
    await make_guard(strict_rfc9068=True).accept(idp.token("rsa-1", headers={"typ": typ}))


@pytest.mark.anyio
@pytest.mark.parametrize(("typ", "reason"), [(None, "bad_typ"), ("JWT", "bad_typ"), ("jwt", "bad_typ")], ids=repr)
async def test_strict_requires_at_jwt_typ(
    idp: Issuer, make_guard: Callable[..., Guard], typ: str | None, reason: str
) -> None:
    """strict_rfc9068 refuses a token typed JWT or untyped (RFC 9068 §4)."""
    await make_guard(strict_rfc9068=True).refuse(idp.token("rsa-1", headers={"typ": typ}), reason)


@pytest.mark.anyio
@pytest.mark.parametrize("claim", ["sub", "client_id", "iat", "jti"])
async def test_strict_requires_claims(idp: Issuer, make_guard: Callable[..., Guard], claim: str) -> None:
    """strict_rfc9068 requires sub, client_id, iat and jti (RFC 9068 §2.2)."""
    guard = make_guard(strict_rfc9068=True)
    await guard.refuse(idp.token("rsa-1", **{claim: None}), "missing_claim")
    # The same token is fine outside strict mode.
    await make_guard().accept(idp.token("rsa-1", **{claim: None}))


# -- scopes and identity --------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "read write"}, {"read", "write"}),
        ({"scope": "  read   write  "}, {"read", "write"}),
        ({"scope": "read read"}, {"read"}),
        ({"scope": ""}, set()),
        ({"scope": None}, set()),
        ({"scope": None, "scp": ["read", "write"]}, {"read", "write"}),
        ({"scope": None, "scp": "read write"}, {"read", "write"}),
        ({"scope": None, "scp": []}, set()),
        ({"scope": "a", "scp": ["b"]}, {"a"}),
        ({"scope": "read:photos READ:PHOTOS"}, {"read:photos", "READ:PHOTOS"}),
    ],
    ids=repr,
)
async def test_scopes(idp: Issuer, guard: Guard, claims: dict[str, Any], scopes: set[str]) -> None:
    """Scopes come from scope (space-separated) or scp (list or string); scope wins when both are there."""
    result = await guard.accept(idp.token("rsa-1", **claims))
    assert result.scopes == frozenset(scopes)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "claims",
    [
        {"scope": 5},
        {"scope": True},
        {"scope": {"read": True}},
        {"scope": ["read", 5]},
        {"scope": None, "scp": [None]},
        {"scope": None, "scp": 5},
        {"scope": None, "scp": {"read": 1}},
    ],
    ids=repr,
)
async def test_malformed_scope_claim(idp: Issuer, guard: Guard, claims: dict[str, Any]) -> None:
    """A scope claim that is neither a string nor a list of strings is a 401, not an empty grant."""
    await guard.refuse(idp.token("rsa-1", **claims), "bad_claim")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": None, "client_id": None}, "no_identity"),
        ({"sub": "", "client_id": None}, "no_identity"),
        ({"sub": "", "client_id": ""}, "no_identity"),
        ({"sub": 42}, "bad_claim"),
        ({"sub": ["alice"]}, "bad_claim"),
        ({"client_id": 7}, "bad_claim"),
        ({"sub": None, "client_id": {"id": "x"}}, "bad_claim"),
    ],
    ids=repr,
)
async def test_identity_refused(idp: Issuer, guard: Guard, claims: dict[str, Any], reason: str) -> None:
    """A token naming neither a subject nor a client has no identity; non-string ones are malformed."""
    await guard.refuse(idp.token("rsa-1", **claims), reason)


@pytest.mark.anyio
async def test_client_credentials_identity_is_client_id(idp: Issuer, guard: Guard) -> None:
    """A client-credentials token (no sub) is identified by its client_id."""
    result = await guard.accept(idp.token("rsa-1", sub=None, client_id="billing-batch"))
    assert result.subject is None
    assert result.client_id == "billing-batch"
    assert result.identity == "billing-batch"


@pytest.mark.anyio
async def test_user_token_without_client_id(idp: Issuer, guard: Guard) -> None:
    """sub alone is enough outside strict mode."""
    result = await guard.accept(idp.token("rsa-1", client_id=None))
    assert result.identity == "alice"
    assert result.client_id is None


# -- malformed serialization ----------------------------------------------------------------------------------


def _retoken(token: str, index: int, new: str) -> str:
    parts = token.split(".")
    parts[index] = new
    return ".".join(parts)


def _sibling(char: str) -> str:
    """The next base64url character: same high bits, a non-zero unused low bit."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(char) + 1]


def _token_with_sig_chars(idp: Issuer, *chars: str) -> str:
    for attempt in range(200):
        token = idp.token("rsa-1", jti=f"j{attempt}")
        if all(char in token.split(".")[2] for char in chars):
            return token
    raise AssertionError("no signature with those characters")


def _remainder_claims(idp: Issuer, remainder: int) -> dict[str, Any]:
    for pad in range(8):
        claims = idp.claims(jti="j", pad="x" * pad)
        if len(segment(claims)) % 4 == remainder:
            return claims
    raise AssertionError


def _standard_alphabet_signature(token: str) -> str:
    """The same signature bytes in the standard base64 alphabet ('+', '/'): lenient decoders accept it."""
    raw = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    return _retoken(token, 2, base64.b64encode(raw).decode().rstrip("="))


def _noncanonical_last(token: str) -> str:
    """Same decoded bytes, different string: a non-zero unused low bit in the last character (RFC 4648 §3.5)."""
    return token[:-1] + _sibling(token[-1])


def _noncanonical_payload(idp: Issuer, remainder: int) -> str:
    """A correctly signed token whose payload segment has non-zero unused low bits."""
    body = segment(_remainder_claims(idp, remainder))
    return sign(idp, segment(header()), body[:-1] + _sibling(body[-1]))


MALFORMED: dict[str, Callable[[Issuer], str]] = {
    "padded-signature": lambda idp: idp.token("rsa-1") + "==",
    "padded-header": lambda idp: _retoken(idp.token("rsa-1"), 0, idp.token("rsa-1").split(".")[0] + "="),
    "plus-in-signature": lambda idp: _token_with_sig_chars(idp, "-").replace("-", "+"),
    "slash-in-signature": lambda idp: _token_with_sig_chars(idp, "_").replace("_", "/"),
    "std-alphabet-signature": lambda idp: _standard_alphabet_signature(_token_with_sig_chars(idp, "-", "_")),
    "trailing-bits-signature": lambda idp: _noncanonical_last(idp.token("rsa-1")),
    "trailing-bits-payload-2": lambda idp: _noncanonical_payload(idp, 2),
    "trailing-bits-payload-3": lambda idp: _noncanonical_payload(idp, 3),
    "length-1-mod-4": lambda idp: sign(idp, segment(header()), segment(idp.claims()) + "A"),
    "empty-header": lambda idp: _retoken(idp.token("rsa-1"), 0, ""),
    "empty-payload": lambda idp: _retoken(idp.token("rsa-1"), 1, ""),
    "empty-signature": lambda idp: _retoken(idp.token("rsa-1"), 2, ""),
    "dots-only": lambda idp: "..",
    "space-inside": lambda idp: idp.token("rsa-1").replace(".", ". ", 1),
    "header-array": lambda idp: sign(idp, segment([header()]), segment(idp.claims())),
    "header-string": lambda idp: sign(idp, segment('"RS256"'), segment(idp.claims())),
    "payload-array": lambda idp: sign(idp, segment(header()), segment([idp.claims()])),
    "payload-string": lambda idp: sign(idp, segment(header()), segment('"alice"')),
    "payload-null": lambda idp: sign(idp, segment(header()), segment("null")),
    "payload-number": lambda idp: sign(idp, segment(header()), segment("1800000000")),
    "payload-true": lambda idp: sign(idp, segment(header()), segment("true")),
    "payload-empty": lambda idp: sign(idp, segment(header()), segment("")),
    "payload-not-json": lambda idp: sign(idp, segment(header()), segment("sub=alice")),
    "payload-trailing-garbage": lambda idp: sign(idp, segment(header()), segment(json.dumps(idp.claims()) + " x")),
    "payload-two-objects": lambda idp: sign(idp, segment(header()), segment(json.dumps(idp.claims()) * 2)),
    "payload-bom": lambda idp: sign(idp, segment(header()), segment(b"\xef\xbb\xbf" + claims_text(idp).encode())),
    "duplicate-sub": lambda idp: signed_json(idp, claims_text(idp)[:-1] + ', "sub": "admin"}'),
    "duplicate-exp": lambda idp: signed_json(idp, claims_text(idp)[:-1] + ', "exp": 9999999999}'),
    "duplicate-nested": lambda idp: signed_json(idp, claims_text(idp)[:-1] + ', "cnf": {"a": 1, "a": 2}}'),
    "duplicate-alg": lambda idp: sign(
        idp, segment('{"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", "alg": "none"}'), segment(idp.claims())
    ),
    "nested-arrays": lambda idp: sign(idp, segment(header()), segment("[" * 100_000)),
    "nested-objects": lambda idp: sign(idp, segment(header()), segment('{"a":' * 50_000)),
    "nested-header": lambda idp: sign(idp, segment("[" * 100_000 + "]" * 100_000), segment(idp.claims())),
    "invalid-utf8": lambda idp: sign(idp, segment(header()), segment(b'{"sub": "\xff"}')),
    "overlong-utf8": lambda idp: sign(idp, segment(header()), segment(b'{"sub": "\xc0\xaf"}')),
    "utf16-payload": lambda idp: sign(idp, segment(header()), segment(json.dumps(idp.claims()).encode("utf-16"))),
    "invalid-utf8-header": lambda idp: sign(idp, segment(b'{"alg": "RS256", "x": "\xfe"}'), segment(idp.claims())),
    "non-ascii-token": lambda idp: "é" + idp.token("rsa-1"),
    "non-ascii-segments": lambda idp: "é.é.é",
    "lone-surrogate": lambda idp: "\ud800.a.b",
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_token(idp: Issuer, guard: Guard, name: str) -> None:
    """Non-canonical base64url, non-object or duplicate-member JSON, deep nesting, bad UTF-8: malformed_token."""
    token = MALFORMED[name](idp)
    await guard.refuse(token, "malformed_token")
    assert idp.jwks_calls == 0


@pytest.mark.anyio
async def test_canonical_token_passes_before_mutation(idp: Issuer, guard: Guard) -> None:
    """Control for the mutation cases: the untouched tokens they start from are valid."""
    await guard.accept(_token_with_sig_chars(idp, "-", "_"))
    await guard.accept(sign(idp, segment(header()), segment(_remainder_claims(idp, 2))))
    await guard.accept(sign(idp, segment(header()), segment(_remainder_claims(idp, 3))))
    await guard.accept(signed_json(idp, claims_text(idp)))


@pytest.mark.anyio
async def test_tampered_payload_is_bad_signature(idp: Issuer, guard: Guard) -> None:
    """Changing one claim after signing breaks the signature."""
    token = idp.token("rsa-1", scope="read:photos")
    head, _, signature = token.split(".")
    forged = f"{head}.{segment(idp.claims(scope='read:photos admin'))}.{signature}"
    await guard.refuse(forged, "bad_signature")


# -- classify, JWE, opaque ------------------------------------------------------------------------------------

JWE_HEADER = segment({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "rsa-1"})


@pytest.mark.parametrize(
    ("token", "kind"),
    [
        (f"{JWE_HEADER}.ZW5j.aXY.Y2lwaGVy.dGFn", "jwe"),
        (f"{JWE_HEADER}..aXY.Y2lwaGVy.dGFn", "jwe"),
        (f"{JWE_HEADER}.a.b.c", "jwe"),
        (f"{segment(header())}.{segment({'sub': 'a'})}", "jwe"),
        (f"{segment(header())}", "jwe"),
        (f"{JWE_HEADER}.a.b", "jws"),
        ("x.y.z", "jws"),
        ("..", "jws"),
        ("2YotnFZFEjr1zCsicMWpAA", "opaque"),
        ("tGzv3JOkF0XG5Qx2TlKWIA", "opaque"),
        ("abc", "opaque"),
        ("", "opaque"),
        ("a.b", "opaque"),
        ("a.b.c.d.e", "opaque"),
        (f"{segment([1])}.a.b.c.d", "opaque"),
        ("mF_9.B5f-4.1JqM", "jws"),
    ],
    ids=lambda value: repr(value)[-24:],
)
def test_classify(token: str, kind: str) -> None:
    """Three segments are a JWS; a JSON-object header in another shape is JOSE to refuse; the rest is opaque."""
    assert classify(token) == kind


def test_classify_a_real_token(idp: Issuer) -> None:
    """An issuer's token is a JWS."""
    assert classify(idp.token("rsa-1")) == "jws"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    [
        f"{JWE_HEADER}.ZW5jcnlwdGVka2V5.aXZpdml2aXY.Y2lwaGVydGV4dGNpcGhlcnRleHQ.dGFndGFndGFndGFn",
        f"{segment(header())}.{segment({'sub': 'alice'})}",
        f"{segment(header())}.{segment({'sub': 'alice'})}.c2ln.ZXh0cmE",
    ],
    ids=["jwe", "two-parts", "four-parts"],
)
async def test_jwe_and_other_jose_shapes_are_refused(idp: Issuer, guard: Guard, token: str) -> None:
    """Encrypted tokens and JOSE objects with the wrong number of parts are refused, without a key fetch."""
    await guard.refuse(token, "unsupported_token")
    assert idp.jwks_calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["2YotnFZFEjr1zCsicMWpAAzzzzzzzzzz", "opaque-token-value-0123456789", "a.b"])
async def test_opaque_token_without_introspection(idp: Issuer, guard: Guard, token: str) -> None:
    """An opaque token is a 401 when no introspection client is configured, and is sent nowhere."""
    await guard.refuse(token, "opaque_not_supported")
    assert idp.jwks_calls == 0
    assert idp.metadata_calls == 0


@pytest.mark.anyio
async def test_opaque_token_when_the_issuer_has_no_introspection_endpoint(
    idp: Issuer, make_guard: Callable[..., Guard], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With credentials but no introspection endpoint (configured or discovered), an opaque token is a 401."""
    metadata = {key: value for key, value in idp.metadata().items() if key != "introspection_endpoint"}
    monkeypatch.setattr(idp, "metadata", lambda: metadata)
    guard = make_guard(introspection=IntrospectionOptions(client_id="api", client_secret="s3cret"))
    await guard.refuse("2YotnFZFEjr1zCsicMWpAAzzzzzzzzzz", "opaque_not_supported")


# -- the verified-token cache ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cache_hit_skips_the_signature(
    idp: Issuer, make_guard: Callable[..., Guard], cache_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second validation of a cached token does not verify the signature again; uncached ones do."""
    calls = 0
    real_verifier = jwt_validator_module.verifier

    def counting(alg: str, key: Any) -> Any:
        verify = real_verifier(alg, key)

        def counted(message: bytes, signature: bytes) -> bool:
            nonlocal calls
            calls += 1
            return verify(message, signature)

        return counted

    monkeypatch.setattr(jwt_validator_module, "verifier", counting)
    guard = make_guard()
    token = idp.token("rsa-1")
    first = await guard.auth.validate(token)
    second = await guard.auth.validate(token)
    assert calls == (1 if cache_size else 2)
    assert (second is first) is bool(cache_size)
    assert guard.auth.validator.verified_cache_size == (1 if cache_size else 0)


@pytest.mark.anyio
async def test_cached_token_expires_with_the_clock(idp: Issuer, guard: Guard, clock: ManualClock) -> None:
    """A cached token is refused once the injected clock passes exp + leeway, exactly like an uncached one."""
    token = idp.token("rsa-1", exp=int(clock()) + 60)
    first = await guard.accept(token)
    clock.advance(60 + 29)
    assert await guard.auth.validate(token) == first
    clock.advance(1)
    await guard.refuse(token, "expired")


@pytest.mark.anyio
async def test_mutating_returned_claims_does_not_extend_a_cached_token(
    idp: Issuer, guard: Guard, clock: ManualClock
) -> None:
    """An app cannot edit token.claims (read-only: the token is shared), nor stretch a cached token's life."""
    token = idp.token("rsa-1", exp=int(clock()) + 60)
    result = await guard.accept(token)
    with pytest.raises(TypeError):
        result.claims["exp"] = int(clock()) + 10**6  # type: ignore[index]
    with pytest.raises(AttributeError):
        result.claims.pop("nbf", None)  # type: ignore[attr-defined]
    clock.advance(120)
    await guard.refuse(token, "expired")


@pytest.mark.anyio
async def test_cached_token_does_not_cover_a_forged_twin(idp: Issuer, guard: Guard) -> None:
    """The cache is keyed by the whole token: same header and claims with another signature is verified."""
    token = idp.token("rsa-1")
    await guard.accept(token)
    head, body, _ = token.split(".")
    forged = sign(idp, head, body, kid="rsa-1", alg="RS384")
    await guard.refuse(forged, "bad_signature")


@pytest.mark.anyio
@pytest.mark.parametrize(("kid", "reason"), [("rsa-1", "unknown_kid"), (None, "bad_signature")])
async def test_key_removed_from_jwks_drops_cached_tokens(
    idp: Issuer, guard: Guard, kid: str | None, reason: str
) -> None:
    """Once the issuer stops publishing a key, tokens it signed are refused, cached or not, kid or not."""
    token = idp.token(kid, alg="RS256", key=private_key("rsa"))
    await guard.accept(token)
    idp.keys = [SigningKey("RS256", private_key("rsa", 1), kid="rsa-2"), *idp.keys[1:]]
    await guard.accept(idp.token("rsa-2"))  # names an unknown kid: the JWKS is refetched
    assert "rsa-1" not in guard.auth.jwks.status()["kids"]
    await guard.refuse(token, reason)


@pytest.mark.anyio
async def test_cache_disabled(idp: Issuer, build: Callable[..., Guard]) -> None:
    """verified_cache_size=0 keeps nothing: each validation builds a new AccessToken."""
    guard = build(verified_cache_size=0)
    token = idp.token("rsa-1")
    first = await guard.auth.validate(token)
    assert await guard.auth.validate(token) is not first
    assert guard.auth.validator.verified_cache_size == 0


@pytest.mark.anyio
async def test_cache_is_bounded(idp: Issuer, build: Callable[..., Guard]) -> None:
    """The verified-token cache holds at most verified_cache_size entries."""
    guard = build(verified_cache_size=2)
    for number in range(5):
        await guard.auth.validate(idp.token("rsa-1", jti=f"t{number}"))
    assert guard.auth.validator.verified_cache_size == 2


# -- availability and the access token itself ------------------------------------------------------------------


@pytest.mark.anyio
async def test_unreachable_issuer_is_unavailable_not_invalid(
    idp: Issuer, guard: Guard, respx_mock: respx.MockRouter
) -> None:
    """With no keys cached and the issuer down, a good token is 503 (could not check), never 401."""
    respx_mock.get(OPENID_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    idp.down = True
    await guard.refuse(idp.token("rsa-1"), "issuer_unavailable", error=KeysUnavailable)


@pytest.mark.anyio
async def test_access_token_repr_has_no_claims_or_token(idp: Issuer, guard: Guard) -> None:
    """repr(AccessToken) shows no claims (they may be personal data) and never the token."""
    token = idp.token("rsa-1", email="alice@example.com")
    result = await guard.accept(token)
    assert "alice@example.com" not in repr(result)
    assert token.split(".")[2] not in repr(result)


def test_pure_claim_helpers() -> None:
    """The claim helpers shared with introspection behave as the validator does."""
    assert scopes_of({"scope": "a b"}) == frozenset({"a", "b"})
    assert scopes_of({}) == frozenset()
    assert identity_of({"client_id": "svc"}) == (None, "svc", None)
    check_audience({}, (AUDIENCE,), required=False)
    with pytest.raises(InvalidToken):
        check_audience({}, (AUDIENCE,))
    assert check_lifetime({"exp": T0 + 1}, T0, 0, require_exp=True) == T0 + 1
    assert check_lifetime({}, T0, 0, require_exp=False) is None
