"""The validator's memo of decoded JWS headers (``JWTValidator._headers``), with real keys, real tokens, a real JWKS.

Its invariants (the comment in ``JWTValidator.__init__``): a header segment enters the memo only once its
token's signature verified; the memo is bounded (``_MAX_KNOWN_HEADERS``, nothing added when full); it starts
over when the validator sees a new ``KeySet`` object; and it only saves decoding and the header check, never
changes a verdict: a remembered header's verdict is the one ``_check_header`` gave it (a function of the header
and the validator's configuration), the signature is checked on every token. A validator whose memo is warm
and one whose memo is empty give the same answer for every token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenguard._jose as jose_module
import tokenguard.jwt_validator as jwt_validator_module
from conftest import AUDIENCE, ISSUER, T0, Issuer, b64url, private_key
from test_jwks import HOUR, new_key, run_ready_tasks
from test_jwt_validator import SECRET, hs256_with, segment, sign
from tokenguard._jose import ParsedJWS, decode_compact, parse_jws, split_compact
from tokenguard.authenticator import Authenticator
from tokenguard.config import DEFAULT_ALGORITHMS, GuardConfig
from tokenguard.errors import InvalidToken
from tokenguard.jwt_validator import JWTValidator
from tokenguard.models import AccessToken
from tokenguard.testing import ManualClock, SigningKey

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def build(idp: Issuer, clock: ManualClock) -> AsyncIterator[Callable[..., Authenticator]]:
    """Authenticators on the test's clock, without the verified-token cache (so every validation parses:
    the memo, not the cache, is what a second token meets); closed afterwards."""
    made: list[Authenticator] = []

    def make(**options: Any) -> Authenticator:
        options.setdefault("issuer", ISSUER)
        options.setdefault("audience", AUDIENCE)
        options.setdefault("clock", clock)
        options.setdefault("verified_cache_size", 0)
        auth = Authenticator(GuardConfig(**options))
        made.append(auth)
        return auth

    yield make
    for auth in made:
        await auth.aclose()


def parse_with(validator: JWTValidator, token: str) -> ParsedJWS:
    """``token`` parsed as the validator parses it: with the remembered header object, if any."""
    raw, first, second = split_compact(token)
    known = validator._headers.get(raw[:first])
    return decode_compact(raw, first, second, known[0] if known is not None else None)


def head_of(token: str) -> bytes:
    """The header segment as the token spells it: the memo's key."""
    return token.split(".", 1)[0].encode("ascii")


def fields(token: AccessToken) -> tuple[Any, ...]:
    return (
        token.subject,
        token.client_id,
        token.scopes,
        token.expires_at,
        token.issuer,
        token.token_id,
        token.key_id,
        token.username,
        dict(token.claims),
    )


class Decodes:
    """Counts the JSON objects ``_jose`` decodes (``strict_loads``): a header found in the memo is not one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[bytes] = []
        real = jose_module.strict_loads

        def counting(data: bytes) -> Any:
            self.inputs.append(bytes(data))
            return real(data)

        monkeypatch.setattr(jose_module, "strict_loads", counting)

    def take(self) -> list[bytes]:
        inputs, self.inputs = self.inputs, []
        return inputs


async def refusal(auth: Authenticator, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        await auth.validate(token)
    return info.value.reason


# -- a verified header is remembered and reused ---------------------------------------------------------------


async def test_a_verified_header_is_remembered_and_saves_its_decoding(
    idp: Issuer, build: Callable[..., Authenticator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first token's header enters the memo; a second token with the same header and another payload is
    parsed with the remembered object (not decoded again) and gives what a memo-less validator gives."""
    auth, reference = build(), build()
    await auth.prefetch()
    await reference.prefetch()
    validator = auth.validator
    assert validator._headers == {}

    first = idp.token("rsa-1", jti="t-1")
    head = head_of(first)
    await auth.validate(first)
    assert list(validator._headers) == [head]
    assert validator._headers[head] == ({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}, "RS256", "rsa-1")
    remembered = validator._headers[head][0]

    second = idp.token("rsa-1", sub="bob", scope="read:photos write:photos", jti="t-2", exp=int(T0) + 120)
    assert head_of(second) == head
    assert second.split(".")[1] != first.split(".")[1]
    assert parse_with(validator, second).header is remembered
    assert parse_jws(second).header is not remembered

    judged: list[Any] = []
    check_header = validator._check_header

    def judging(header: Any) -> Any:
        judged.append(header)
        return check_header(header)

    monkeypatch.setattr(validator, "_check_header", judging)
    decodes = Decodes(monkeypatch)
    result = await auth.validate(second)
    payload = jose_module._b64decode(second.split(".")[1])
    assert decodes.take() == [payload]  # the payload only: the header came from the memo
    assert judged == []  # and its verdict too: ("RS256", "rsa-1"), what _check_header said of it before
    expected = await reference.validate(second)
    assert decodes.take() == [jose_module._b64decode(head), payload]  # an empty memo decodes both
    assert fields(result) == fields(expected)
    assert result == expected
    assert (result.subject, result.scopes, result.expires_at) == (
        "bob",
        frozenset({"read:photos", "write:photos"}),
        T0 + 120,
    )
    assert list(validator._headers) == [head]
    assert validator._headers[head][0] is remembered  # a hit neither adds nor replaces


async def test_a_verified_hs256_header_is_remembered(idp: Issuer, build: Callable[..., Authenticator]) -> None:
    """A shared-secret token whose signature verified is remembered as well; one with a wrong secret is not."""
    auth = build(algorithms=(*DEFAULT_ALGORITHMS, "HS256"), shared_secret=SECRET)
    forged = hs256_with(idp, SECRET[:-1] + b"!", kid=None)
    assert await refusal(auth, forged) == "bad_signature"
    assert auth.validator._headers == {}
    token = hs256_with(idp, SECRET, kid=None)
    assert head_of(token) == head_of(forged)
    await auth.validate(token)
    assert list(auth.validator._headers) == [head_of(token)]
    assert await refusal(auth, forged) == "bad_signature"  # the remembered header vouches for nothing


# -- refused tokens add nothing -------------------------------------------------------------------------------


def _forged(idp: Issuer) -> str:
    return idp.token("rsa-1", key=private_key("rsa", 1))


def _none(idp: Issuer) -> str:
    head = segment({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"})
    body = segment(idp.claims())
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{head}.{body}".encode(), private_key("rsa"))
    return f"{head}.{body}.{b64url(signature)}"


def _swapped(idp: Issuer) -> str:
    head, _, signature = idp.token("rsa-1").split(".")
    return f"{head}.{idp.token('rsa-1', sub='mallory').split('.')[1]}.{signature}"


REFUSED: dict[str, tuple[Callable[[Issuer], str], str]] = {
    "forged signature": (_forged, "bad_signature"),
    "payload swapped under a genuine signature": (_swapped, "bad_signature"),
    "foreign issuer": (lambda idp: idp.token("rsa-1", iss="https://attacker.example"), "wrong_issuer"),
    # A near miss has its signature checked (to report it), yet is refused: nothing is remembered.
    "near-miss issuer": (lambda idp: idp.token("rsa-1", iss=ISSUER + "/"), "wrong_issuer"),
    "expired": (lambda idp: idp.token("rsa-1", iat=int(T0) - 7200, exp=int(T0) - 3600), "expired"),
    "not yet valid": (lambda idp: idp.token("rsa-1", nbf=int(T0) + 3600), "not_yet_valid"),
    "alg none": (_none, "disallowed_alg"),
    "HS256 without a secret": (lambda idp: hs256_with(idp, b"guess"), "disallowed_alg"),
    "kid of a key of another type": (
        lambda idp: idp.token("ec-1", alg="RS256", key=private_key("rsa")),
        "key_mismatch",
    ),
    "unknown kid": (lambda idp: idp.token("rsa-1", headers={"kid": "rotated-away"}), "unknown_kid"),
    "bad typ": (lambda idp: idp.token("rsa-1", headers={"typ": "JWS"}), "bad_typ"),
    "crit": (lambda idp: idp.token("rsa-1", headers={"crit": ["x"], "x": 1}), "bad_header"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_refused_token_adds_no_header(idp: Issuer, build: Callable[..., Authenticator], case: str) -> None:
    """Only a token whose signature verified contributes its header: a forger cannot fill the memo."""
    make, reason = REFUSED[case]
    auth = build()
    await auth.prefetch()
    token = make(idp)
    for _ in range(2):
        assert await refusal(auth, token) == reason
        assert auth.validator._headers == {}
        assert head_of(token) not in auth.validator._headers


async def test_a_genuine_token_fills_the_memo_a_forged_twin_could_not(
    idp: Issuer, build: Callable[..., Authenticator]
) -> None:
    """The forged token and the genuine one share their header segment: only the genuine one adds it."""
    auth = build()
    forged, genuine = _forged(idp), idp.token("rsa-1")
    assert head_of(forged) == head_of(genuine)
    assert await refusal(auth, forged) == "bad_signature"
    assert auth.validator._headers == {}
    await auth.validate(genuine)
    assert list(auth.validator._headers) == [head_of(genuine)]


# -- a remembered header never changes a verdict --------------------------------------------------------------


async def test_a_remembered_header_does_not_vouch_for_a_signature(
    idp: Issuer, build: Callable[..., Authenticator]
) -> None:
    """After a good RS256 token is remembered, tokens with the identical header segment and a bad signature
    are still refused bad_signature, each parsed with the remembered header object."""
    auth = build()
    good = idp.token("rsa-1")
    await auth.validate(good)
    validator = auth.validator
    head, body, signature = good.split(".")
    entry = validator._headers[head.encode()]
    remembered = entry[0]
    other_body = segment(idp.claims(sub="mallory"))
    raw_signature = jwt.utils.base64url_decode(signature)
    rs256 = jwt.get_algorithm_by_name("RS256")
    twins = {
        "another RSA key": f"{head}.{body}.{b64url(rs256.sign(f'{head}.{body}'.encode(), private_key('rsa', 1)))}",
        "RS384 signature under RS256": sign(idp, head, body, kid="rsa-1", alg="RS384"),
        "genuine signature, other payload": f"{head}.{other_body}.{signature}",
        "signature cut short": f"{head}.{body}.{b64url(raw_signature[:-3])}",
        "signature bit flipped": f"{head}.{body}.{b64url(raw_signature[:-1] + bytes([raw_signature[-1] ^ 1]))}",
        "one byte of signature": f"{head}.{body}.{b64url(b'x')}",
    }
    for name, twin in twins.items():
        assert head_of(twin) == head.encode(), name
        assert parse_with(validator, twin).header is remembered, name
        assert await refusal(auth, twin) == "bad_signature", name
        assert validator._headers == {head.encode(): entry}, name
        assert validator._headers[head.encode()] is entry, name
    assert (await auth.validate(good)).subject == "alice"


async def test_a_remembered_header_does_not_open_the_door_to_other_headers(
    idp: Issuer, build: Callable[..., Authenticator]
) -> None:
    """With the issuer's header remembered, headers naming a disallowed alg or a bad typ are refused as on a
    validator that never saw a token, and are not remembered."""
    auth, reference = build(), build()
    await auth.validate(idp.token("rsa-1"))
    assert len(auth.validator._headers) == 1
    tokens = {
        "none": (_none(idp), "disallowed_alg"),
        "HS256 keyed with nothing configured": (hs256_with(idp, b"guess"), "disallowed_alg"),
        "HS256 keyed with the public JWK": (
            hs256_with(idp, json.dumps(idp.key("rsa-1").public_jwk()).encode()),
            "disallowed_alg",
        ),
        "rs256": (
            sign(idp, segment({"alg": "rs256", "typ": "at+jwt", "kid": "rsa-1"}), segment(idp.claims())),
            "disallowed_alg",
        ),
        "typ JWS": (idp.token("rsa-1", headers={"typ": "JWS"}), "bad_typ"),
        "typ null": (idp.raw_token({"alg": "RS256", "typ": None, "kid": "rsa-1"}, idp.claims()), "bad_typ"),
        "b64 false": (idp.raw_token({"alg": "RS256", "typ": "at+jwt", "b64": False}, idp.claims()), "bad_header"),
    }
    for name, (token, reason) in tokens.items():
        expected = await refusal(reference, token)
        assert expected == reason, name
        assert await refusal(auth, token) == expected, name
        assert len(auth.validator._headers) == 1, name


async def test_a_remembered_header_is_judged_by_each_validator_alike(
    idp: Issuer, build: Callable[..., Authenticator]
) -> None:
    """The memo is the validator's own: a header remembered by a lenient validator is refused by a strict one
    (RFC 9068 typ) and by one whose allow-list lacks its alg, warm memo or not."""
    lenient = build()
    token = idp.token("rsa-1", headers={"typ": "JWT"})
    await lenient.validate(token)
    assert head_of(token) in lenient.validator._headers
    strict = build(strict_rfc9068=True)
    narrow = build(algorithms=("ES256",))
    for _ in range(2):
        assert await refusal(strict, token) == "bad_typ"
        assert await refusal(narrow, token) == "disallowed_alg"
    assert strict.validator._headers == narrow.validator._headers == {}


# -- the memo is bounded ----------------------------------------------------------------------------------------


HEADER_VARIANTS: list[dict[str, Any]] = [
    {"typ": "at+jwt"},
    {"typ": "AT+JWT"},
    {"typ": "application/at+jwt"},
    {"typ": "JWT"},
    {},
    {"typ": "at+jwt", "x-extra": 1},
    {"typ": "Application/AT+jwt", "cty": "none"},
]


async def test_the_memo_is_bounded_and_validation_goes_on(
    idp: Issuer, build: Callable[..., Authenticator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bound at 2: the first two headers are remembered, later ones are not (nothing is evicted),
    and every token validates, remembered header or not."""
    monkeypatch.setattr(jwt_validator_module, "_MAX_KNOWN_HEADERS", 2)
    auth = build()
    await auth.prefetch()
    validator = auth.validator
    tokens = [
        idp.raw_token({"alg": "RS256", "kid": "rsa-1", **variant}, idp.claims(jti=f"t-{n}"))
        for n, variant in enumerate(HEADER_VARIANTS)
    ]
    heads = [head_of(token) for token in tokens]
    assert len(set(heads)) == len(heads)
    decodes = Decodes(monkeypatch)
    for round_ in range(2):
        for number, token in enumerate(tokens):
            result = await auth.validate(token)
            assert (result.subject, result.token_id, result.key_id) == ("alice", f"t-{number}", "rsa-1")
            assert len(validator._headers) <= 2
            # Round one decodes every header; round two only those that found no room.
            header_decoded = round_ == 0 or number >= 2
            assert len(decodes.take()) == (2 if header_decoded else 1), (round_, number)
    assert list(validator._headers) == heads[:2]


async def test_the_default_bound(idp: Issuer, build: Callable[..., Authenticator]) -> None:
    """At most ``_MAX_KNOWN_HEADERS`` (64) entries, however many distinct headers verify."""
    assert jwt_validator_module._MAX_KNOWN_HEADERS == 64
    auth = build()
    for number in range(70):
        await auth.validate(idp.token("ec-1", headers={"n": number}))
        assert len(auth.validator._headers) == min(number + 1, 64)
    assert (await auth.validate(idp.token("ec-1", headers={"n": 69}))).key_id == "ec-1"


# -- the memo starts over with each key set ------------------------------------------------------------------


async def test_a_rotation_empties_the_memo(
    idp: Issuer, build: Callable[..., Authenticator], clock: ManualClock
) -> None:
    """A token naming a new kid brings a new KeySet (an unknown-kid refetch): the headers remembered under the
    old set are gone; once the issuer withdraws the old key, its remembered header vouches for nothing."""
    auth = build()
    validator = auth.validator
    old = idp.token("rsa-1")
    await auth.validate(old)
    await auth.validate(idp.token("ec-1"))
    old_set = auth.jwks.current()
    assert set(validator._headers) == {head_of(old), head_of(idp.token("ec-1"))}

    new_key(idp, "rsa-2", 1)
    rotated = idp.token("rsa-2")
    assert (await auth.validate(rotated)).key_id == "rsa-2"
    assert idp.jwks_calls == 2
    assert auth.jwks.current() is not old_set
    assert validator._memo_keys is auth.jwks.current()
    assert list(validator._headers) == [head_of(rotated)]

    # The old key is still published: its header is remembered again once a token verifies with it.
    await auth.validate(idp.token("rsa-1"))
    assert list(validator._headers) == [head_of(rotated), head_of(old)]

    # The issuer withdraws rsa-1 (and publishes rsa-3, so a token naming it fetches the new set).
    idp.keys = [key for key in idp.keys if key.kid != "rsa-1"]
    idp.keys.append(SigningKey("RS256", private_key("rsa", 2), kid="rsa-3"))
    clock.advance(30)  # past the unknown-kid cool-down
    newest = idp.token("rsa-3")
    await auth.validate(newest)
    assert list(validator._headers) == [head_of(newest)]
    assert "rsa-1" not in auth.jwks.status()["kids"]
    assert await refusal(auth, old) == "unknown_kid"
    assert head_of(old) not in validator._headers


async def test_a_scheduled_refresh_empties_the_memo(
    idp: Issuer, build: Callable[..., Authenticator], clock: ManualClock
) -> None:
    """A refresh that publishes the same keys is still a new KeySet object: the memo starts over with it."""
    auth = build()
    validator = auth.validator
    rsa_token = idp.token("rsa-1")
    await auth.validate(rsa_token)
    assert list(validator._headers) == [head_of(rsa_token)]
    first_set = auth.jwks.current()

    clock.advance(0.8 * HOUR)
    await auth.validate(idp.token("rsa-1"))  # schedules the refresh
    await run_ready_tasks()
    assert idp.jwks_calls == 2
    refreshed = auth.jwks.current()
    assert refreshed is not None
    assert refreshed is not first_set
    assert first_set is not None
    assert refreshed.kids == first_set.kids

    ec_token = idp.token("ec-1")
    await auth.validate(ec_token)
    assert validator._memo_keys is auth.jwks.current()
    assert list(validator._headers) == [head_of(ec_token)]
    await auth.validate(idp.token("rsa-1"))
    assert list(validator._headers) == [head_of(ec_token), head_of(rsa_token)]


# -- differential: a warm memo and an empty one decide alike ----------------------------------------------------

_ABSENT: Any = object()
_RSA_ALGS = ("RS256", "RS384", "PS256")


def _mostly(usual: Any, *others: Any) -> st.SearchStrategy[Any]:
    """One of ``usual`` (a value, or a list of values) about five times in six, else one of ``others``."""
    common = st.sampled_from(usual) if isinstance(usual, list) else st.just(usual)
    rare = st.sampled_from(others)
    return st.integers(0, 5).flatmap(lambda n: rare if n == 5 else common)


_TYPS = _mostly(
    [_ABSENT, "at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt", "Application/AT+JWT", "jwt", "JWT"],
    *["JWS", "", "at+jwt ", None, 7],
)
_KIDS = _mostly([_ABSENT, "rsa-1"], "ec-1", "rotated-away", None, 7)
_ALGS = _mostly(list(_RSA_ALGS), "ES256", "none", "None", "HS256", "rs256")
_EXTRA_VALUES = st.one_of(
    st.booleans(), st.integers(-3, 3), st.text(max_size=3), st.lists(st.text(max_size=2), max_size=2)
)
_EXTRAS = st.integers(0, 5).flatmap(
    lambda n: st.dictionaries(
        st.sampled_from(["jku", "b64", "crit"] if n == 5 else ["x-extra", "cty", "x5t", "zip"]),
        _EXTRA_VALUES,
        max_size=2,
    )
)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": draw(_ALGS)}
    for name, value in (("typ", draw(_TYPS)), ("kid", draw(_KIDS))):
        if value is not _ABSENT:
            header[name] = value
    header.update(draw(_EXTRAS))
    order = draw(st.permutations(list(header)))  # the same members in another order are another segment
    return {name: header[name] for name in order}


@st.composite
def claim_changes(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "sub": draw(st.sampled_from(["alice", "bob", None, ""])),
        "scope": draw(st.sampled_from(["read:photos", "a b c", "", None, 5])),
        "exp": int(T0) + draw(_mostly(300, 31, -29, -31, -3600)),
        "aud": draw(_mostly(AUDIENCE, [AUDIENCE, "other"], "https://other.example")),
        "iss": draw(_mostly(ISSUER, ISSUER + "/", "https://attacker.example")),
    }


def signed(header: dict[str, Any], claims: dict[str, Any], genuine: bool) -> str:
    """A JWS over exactly this header (its member order kept) and these claims, signed by the issuer's key
    (``genuine``) or by a key of the same type it does not publish; an alg that is not a real one gets an
    RS256 signature."""
    head, body = segment(header), segment(claims)
    alg = header["alg"]
    slot = 0 if genuine else 1
    signer = private_key("ec256", slot) if alg == "ES256" else private_key("rsa", slot)
    algorithm = jwt.get_algorithm_by_name(alg if alg in (*_RSA_ALGS, "ES256") else "RS256")
    return f"{head}.{body}.{b64url(algorithm.sign(f'{head}.{body}'.encode(), signer))}"


def outcome(validator: JWTValidator, token: str) -> tuple[Any, ...]:
    try:
        result = validator.validate_nowait(token)
    except InvalidToken as exc:
        return ("refused", exc.reason)
    if not isinstance(result, AccessToken):
        return ("needs keys", result.kid)
    return ("accepted", *fields(result))


async def test_a_warm_memo_and_an_empty_one_decide_alike(idp: Issuer, build: Callable[..., Authenticator]) -> None:
    """For generated headers (typ present, absent or cased; kid present or not; extra members; member order)
    and claims, the warm validator (the same header validated just before with good claims, so remembered
    whenever it verifies) and a fresh validator (empty memo) give the same AccessToken or the same reason."""
    auth = build()
    await auth.prefetch()
    warm = auth.validator
    seen = {"remembered": 0, "accepted": 0}

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(header=headers(), changes=claim_changes(), genuine=_mostly(True, False))
    def check(header: dict[str, Any], changes: dict[str, Any], genuine: bool) -> None:
        primer = signed(header, idp.claims(), genuine=True)
        outcome(warm, primer)
        token = signed(header, idp.claims(**changes), genuine)
        head = head_of(token)
        assert head == head_of(primer)
        if head in warm._headers:
            seen["remembered"] += 1
            assert parse_with(warm, token).header is warm._headers[head][0]
        fresh = JWTValidator(auth.config, auth.jwks)
        assert fresh._headers == {}
        warm_outcome = outcome(warm, token)
        assert warm_outcome == outcome(fresh, token), (header, changes, genuine)
        seen["accepted"] += warm_outcome[0] == "accepted"
        assert len(warm._headers) <= jwt_validator_module._MAX_KNOWN_HEADERS

    check()
    # The property ran through the memo, and through acceptances, not only through refusals.
    assert seen["remembered"] >= 5
    assert seen["accepted"] >= 5
