"""Regression tests for flaws 7, 9, 10 and 11, each visible at the HTTP level of a real guarded app.

- 7: a verified-cache hit outlived its key (a withdrawn key's token was accepted 20 hours later) and
  the stale period (a cached token kept passing past ``jwks_stale_ttl`` during an outage).
- 9: scopes were split on any whitespace: ``"doc:read:1\\u00a0admin"`` granted ``admin``.
- 10: an introspection answer's ``scp`` was ignored when merged with a JWT's own ``scope``.
- 11: a ``sub`` holding a lone surrogate (legal JSON) made decision reporting raise: a 500.

The issuer's keys are ``tokenguard.testing.KeyRing``s, its metadata, JWKS and RFC 7662 endpoint are
served through respx (``assurance_kit.RespxIssuer``), time is a ``ManualClock``; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio.lowlevel
import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from assurance_kit import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    HOUR,
    ISSUER,
    RespxIssuer,
    app,
    bearer,
    guard_of,
    guarded,
    junk,
    ring,
)
from tokenguard import TokenGuard
from tokenguard.events import DecisionEvent
from tokenguard.testing import KeyRing, ManualClock, SigningKey

pytestmark = pytest.mark.respx(assert_all_called=False)


# -- flaw 7: a cached token never outlives its key, nor the key set's stale period ----------------------


def test_a_cached_token_of_a_withdrawn_key_is_refused_once_the_jwks_is_past_its_max_age(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    """Flaw 7 as reported: key withdrawn, JWKS max-age 1 h; the cached token is 401 as soon as the hour is up.

    Before the fix, cache hits never looked at the keys: with only cached tokens arriving the JWKS was
    never refetched, and the withdrawn key's token kept passing for its whole 20-hour life.
    """
    old, new = ring(1), ring(2)
    issuer.published = [old, new]
    token = issuer.token(keys=old, exp=int(clock() + 20 * HOUR))
    with guarded(clock) as client:
        assert client.get("/me", headers=bearer(token)).status_code == 200
        issuer.published = [new]  # the issuer withdraws the old key
        clock.advance(HOUR - 60)
        assert client.get("/me", headers=bearer(token)).status_code == 200  # keys still fresh: the hit stands
        statuses = []
        for _ in range(20):
            clock.advance(HOUR)
            statuses.append(client.get("/me", headers=bearer(token)).status_code)
        refused = client.get("/me", headers=bearer(token))
    assert statuses == [401] * 20
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert issuer.calls["jwks"] >= 2  # the hit made the guard fetch the keys again


def test_a_kid_reused_for_other_key_material_drops_the_cached_token(clock: ManualClock, issuer: RespxIssuer) -> None:
    """The key is (kid, thumbprint): the issuer publishing other material under the same kid withdraws the old key."""
    old = ring(1)
    replacement = KeyRing([SigningKey("RS256", ring(2).key_for("RS256").private, kid=old.key_for("RS256").kid)])
    issuer.published = [old]
    token = issuer.token(keys=old, exp=int(clock() + 20 * HOUR))
    with guarded(clock) as client:
        assert client.get("/me", headers=bearer(token)).status_code == 200
        issuer.published = [replacement]
        clock.advance(HOUR + 1)
        assert client.get("/me", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize("cache", [10_000, 0], ids=["cached", "uncached"])
def test_cached_and_uncached_tokens_get_the_same_answer_through_an_outage(
    clock: ManualClock, issuer: RespxIssuer, cache: int
) -> None:
    """Flaw 7, the stale period: JWKS down; 200 while within jwks_stale_ttl, 503 + Retry-After after it.

    Before the fix the cached token kept passing past the stale period, while the same token with the
    verified cache off got 503: the cache decided differently from the checks it stands for.
    """
    token = issuer.token(exp=int(clock() + 20 * HOUR))
    with guarded(clock, jwks_stale_ttl=2 * HOUR, verified_cache_size=cache) as client:
        assert client.get("/me", headers=bearer(token)).status_code == 200
        issuer.jwks_down = True
        answers = []
        for _ in range(6):  # max-age 1 h + stale 2 h: usable until 3 h, then refused
            clock.advance(HOUR - 1)
            response = client.get("/me", headers=bearer(token))
            answers.append(response.status_code)
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"] == "temporarily_unavailable"
    assert answers == [200, 200, 200, 503, 503, 503]


@pytest.mark.anyio
async def test_a_hit_due_for_refresh_starts_one_and_the_next_hit_obeys_it(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    """Within the refresh-ahead window a hit is served at once and starts a background refresh; once that
    refresh has dropped the key, the same token is refused (without waiting for the max-age)."""
    old, new = ring(1), ring(2)
    issuer.published = [old, new]
    token = issuer.token(keys=old, exp=int(clock() + 20 * HOUR))
    guard = TokenGuard(app(clock).router, **_settings(clock))
    transport = httpx.ASGITransport(guard)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.assurance.test") as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        assert issuer.calls["jwks"] == 1
        issuer.published = [new]
        clock.advance(0.9 * HOUR)  # past 80% of the max-age: due for refresh, still fresh
        assert (await client.get("/me", headers=bearer(token))).status_code == 200  # served, not waited on
        for _ in range(10_000):
            if guard.status()["jwks"]["kids"] == [new.key_for("RS256").kid, new.key_for("ES256").kid]:
                break
            await anyio.lowlevel.checkpoint()
        assert issuer.calls["jwks"] == 2
        assert (await client.get("/me", headers=bearer(token))).status_code == 401
    await guard.authenticator.aclose()


def _settings(clock: ManualClock) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "clock": clock,
    }


# -- flaw 9: RFC 6749 §3.3 scope parsing, one parser for JWTs and introspection answers -------------------

#: Separators ``str.split()`` split on that RFC 6749 §3.3 does not: only SP (%x20) separates scope tokens.
NOT_SP = ["\u00a0", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2003"]
NOT_SP += ["\u2028", "\u3000"]


@pytest.mark.parametrize("separator", NOT_SP, ids=[f"U+{ord(c):04X}" for c in NOT_SP])
def test_a_scope_split_on_other_whitespace_grants_nothing(
    clock: ManualClock, issuer: RespxIssuer, separator: str
) -> None:
    """Flaw 9: ``"doc:read:1\\u00a0admin"`` is one invalid piece: it grants neither ``admin`` nor a prefix."""
    token = issuer.token(scope=f"read doc:read:1{separator}admin")
    with guarded(clock) as client:
        assert client.get("/admin", headers=bearer(token)).status_code == 403
        response = client.get("/me", headers=bearer(token))
    assert response.json()["scopes"] == ["read"]


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({"scope": "read  admin"}, ["admin", "read"]),  # empty pieces between two SPs grant nothing, harm nothing
        ({"scope": 'read ad"min'}, ["read"]),  # '"' (%x22) is not in a scope token
        ({"scope": "read ad\\min"}, ["read"]),  # nor '\\' (%x5C)
        ({"scope": "read admín"}, ["read"]),  # nor anything beyond %x7E
        ({"scope": None, "scp": "read admin"}, ["admin", "read"]),  # a scp string is read like scope
        ({"scope": None, "scp": "read\u00a0admin"}, []),
        ({"scope": None, "scp": ["read", "read admin", "x\tadmin"]}, ["read"]),  # array elements: one token each
        ({"scope": None, "scp": ["read", "admin"]}, ["admin", "read"]),
    ],
)
def test_only_valid_scope_tokens_are_granted(
    clock: ManualClock, issuer: RespxIssuer, claims: dict[str, Any], granted: list[str]
) -> None:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), separated by SP; others are dropped whole."""
    token = issuer.token(**claims)
    with guarded(clock) as client:
        response = client.get("/me", headers=bearer(token))
        admin = client.get("/admin", headers=bearer(token)).status_code
    assert response.json()["scopes"] == granted
    assert admin == (200 if "admin" in granted else 403)


@pytest.mark.parametrize("member", ["scope", "scp"])
@pytest.mark.parametrize("kind", ["jwt", "opaque"])
def test_introspection_answers_are_parsed_by_the_same_rules(
    clock: ManualClock, issuer: RespxIssuer, member: str, kind: str
) -> None:
    """Flaw 9 through introspection: an answer's ``"transfer\\u00a0admin"`` grants no admin on a @sensitive route."""
    token = issuer.token(scope="transfer") if kind == "jwt" else junk()
    issuer.activate(token, **{"scope": None, "scp": None, member: "transfer\u00a0admin read"})
    with guarded(clock) as client:
        assert client.post("/sensitive-admin", headers=bearer(token)).status_code == 403
        response = client.post("/transfers", headers=bearer(token))
    assert response.status_code == 403  # "transfer\u00a0admin" is one invalid piece: no transfer either
    assert response.headers["www-authenticate"].count('scope="transfer"') == 1


# -- flaw 10: the issuer's answer decides the scopes, whichever claim carries them ---------------------------


@pytest.mark.parametrize("answer", [{"scp": ["read"]}, {"scp": "read"}, {"scope": "read"}, {"scope": ""}, {"scp": []}])
def test_the_introspection_answer_decides_the_scopes_of_a_jwt(
    clock: ManualClock, issuer: RespxIssuer, answer: dict[str, Any]
) -> None:
    """Flaw 10: the JWT says ``read transfer``, the issuer now answers ``scp: ["read"]``: the transfer is 403.

    The JWT's own scope claim is not left in ``request.auth.claims`` beside the issuer's answer.
    """
    token = issuer.token(scope="read transfer")
    issuer.activate(token, **{"scope": None, **answer})
    with guarded(clock) as client:
        refused = client.post("/transfers", headers=bearer(token))
        narrowed = client.post("/sensitive-admin", headers=bearer(token))
    assert refused.status_code == 403, refused.text
    assert narrowed.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_an_answer_without_any_scope_claim_keeps_the_jwt_scopes_and_never_more(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    """RFC 7662 §2.2 makes ``scope`` optional: an answer naming none leaves the JWT's verified scopes, no more."""
    token = issuer.token(scope="read transfer")
    issuer.activate(token, scope=None, scp=None)
    with guarded(clock) as client:
        allowed = client.post("/transfers", headers=bearer(token))
        assert client.post("/sensitive-admin", headers=bearer(token)).status_code == 403
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["scopes"] == ["read", "transfer"]


def test_merged_claims_carry_the_issuers_scope_claim_only(clock: ManualClock, issuer: RespxIssuer) -> None:
    """``request.auth.claims`` shows the issuer's ``scp``, not the JWT's stale ``scope`` next to it."""
    token = issuer.token(scope="read transfer admin")
    issuer.activate(token, scope=None, scp=["transfer"])
    with guarded(clock) as client:
        response = client.post("/transfers", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == ["transfer"]
    assert response.json()["scope_claims"] == {"scope": None, "scp": ["transfer"]}


# -- flaw 11: no claim value can make decision reporting raise ---------------------------------------------


class StrictLog(logging.Handler):
    """A real handler: formats every record with all its ``tg_`` fields and writes it as UTF-8 (strictly).

    ``handleError`` is what logging calls when a handler raises (by default it prints a traceback to
    stderr); here it records the failure so a test can assert there was none.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        self.failures: list[BaseException | None] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = " ".join(f"{k}={v}" for k, v in sorted(vars(record).items()) if k.startswith("tg_"))
            self.stream.write(f"{record.levelname} {record.getMessage()} {fields}\n")
            self.stream.flush()
            self.records.append(record)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failures.append(sys.exc_info()[1])

    def text(self) -> str:
        raw = self.stream.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue().decode("utf-8")


@pytest.fixture
def strict_log() -> Iterator[StrictLog]:
    handler = StrictLog()
    logger = logging.getLogger("tokenguard")
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_reportable(event: DecisionEvent) -> None:
    """Every text of the event encodes to UTF-8 and the event serialises to JSON: no consumer can fail on it."""
    for value in dataclasses.asdict(event).values():
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str):
                text.encode("utf-8")
    json.dumps(dataclasses.asdict(event), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("reporting", ["on_decision", "debug_log"])
def test_a_lone_surrogate_subject_is_reported_not_a_500(
    clock: ManualClock, issuer: RespxIssuer, strict_log: StrictLog, reporting: str
) -> None:
    """Flaw 11: ``"sub": "\\ud800"`` with a decision hook (or DEBUG logging) is a clean report, never a 500.

    Such a string is refused as malformed (RFC 7493 §2.1: it has no UTF-8 form, so the app could not
    write it out either): a 401 whose refusal is reported like any other."""
    events: list[DecisionEvent] = []
    options: dict[str, Any] = {"on_decision": events.append} if reporting == "on_decision" else {}
    if reporting == "on_decision":
        logging.getLogger("tokenguard").setLevel(logging.WARNING)
    token = issuer.token(sub="\ud800")
    with guarded(clock, **options) as client:
        response = client.get("/me", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert strict_log.failures == []
    if reporting == "on_decision":
        (event,) = events  # reported, not lost to an exception
        assert_reportable(event)
        assert event.reason == "malformed_token"
    else:
        (record,) = [r for r in strict_log.records if getattr(r, "tg_decision", None) == "deny"]
        assert vars(record)["tg_reason"] == "malformed_token"
        assert "\\ud800" not in strict_log.text()  # the subject is never logged


def test_a_paired_surrogate_subject_is_an_ordinary_character(clock: ManualClock, issuer: RespxIssuer) -> None:
    """``"\\ud83d\\ude00"`` is one character (U+1F600), not a lone surrogate: accepted."""
    with guarded(clock) as client:
        response = client.get("/me", headers=bearer(issuer.token(sub="\U0001f600")))
    assert response.status_code == 200, response.text
    assert response.json()["identity"] == "\U0001f600"


@pytest.mark.parametrize(
    "kid", ["\ud800", "a\udfffb", "line\nbreak", "tab\there", "\u2028", "k" * 3000], ids=lambda k: repr(k)[:12]
)
def test_key_ids_of_any_shape_are_reported_safely(
    respx_mock: respx.MockRouter, clock: ManualClock, strict_log: StrictLog, kid: str
) -> None:
    """A JWKS ``kid`` (the issuer's text, reported as the event's ``kid``) cannot break a handler or forge a line."""
    keys = KeyRing([SigningKey("ES256", ec.generate_private_key(ec.SECP256R1()), kid=kid)])
    issuer = RespxIssuer(respx_mock, clock, keys)
    events: list[DecisionEvent] = []
    token = issuer.token(alg="ES256")
    with guarded(clock, on_decision=events.append) as client:
        response = client.get("/me", headers=bearer(token))
    lone = any(0xD800 <= ord(char) <= 0xDFFF for char in kid)
    # A lone surrogate in the token's header is malformed JSON for us (RFC 7493 §2.1): 401, reported.
    assert response.status_code == (401 if lone else 200), response.text
    assert strict_log.failures == []
    assert "\n" not in "".join(record.getMessage() + str(vars(record).get("tg_kid")) for record in strict_log.records)
    (event,) = events
    assert_reportable(event)
    if not lone:
        assert event.kid is not None
        assert len(event.kid) <= 6 * 256 + 3


def test_a_raising_hook_is_contained_and_reported_by_type_only(
    clock: ManualClock, issuer: RespxIssuer, strict_log: StrictLog
) -> None:
    """A hook that raises (with the token in its message) leaves the request alone; the log names its type only."""
    token = issuer.token(sub="alice\n\u2028")

    def leaky(event: DecisionEvent) -> None:
        raise RuntimeError(f"cannot handle {token}")

    class Shady:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(token)

        def __call__(self, event: DecisionEvent) -> None:
            raise ValueError(token)

    with guarded(clock, on_decision=[leaky, Shady()]) as client:
        response = client.get("/me", headers=bearer(token))
        snapshot = guard_of(client).metrics_snapshot()
    assert response.status_code == 200
    assert snapshot["hook_errors"] == 2
    assert strict_log.failures == []
    text = strict_log.text()
    assert "RuntimeError" in text
    assert "ValueError" in text
    assert token not in text


# The fuzz: claim values that reach reporting, of every JSON shape and the worst strings.

_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
_AWKWARD_TEXT = st.one_of(
    st.text(max_size=16),
    st.lists(st.one_of(_SURROGATE, st.characters()), min_size=1, max_size=8).map("".join),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "line\nbreak", "\u2028", "\x1b[31mred", "read\u00a0admin"]),
    st.integers(1000, 6000).map(lambda n: "x" * n),
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _AWKWARD_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_AWKWARD_TEXT, children, max_size=3),
    max_leaves=6,
)


def _has_lone_surrogate(value: Any) -> bool:
    """As the guard sees it after a JSON round trip: a high+low pair of escapes is one character."""
    try:
        json.dumps(json.loads(json.dumps(value)), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_REPORTED = st.sampled_from(["sub", "client_id", "azp", "scope", "scp", "iss", "acr", "jti", "auth_time", "name"])
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        pytest.param("jwt", ["/me", "/photos", "/admin", "/step-up"], id="jwt-claims"),
        pytest.param("jwt-answer", ["/transfers", "/sensitive-admin"], id="jwt-introspection-answer"),
        pytest.param("opaque-answer", ["/transfers"], id="opaque-introspection-answer"),
    ],
)
def test_fuzzed_claim_values_never_break_reporting(
    clock: ManualClock, issuer: RespxIssuer, strict_log: StrictLog, kind: str, paths: list[str]
) -> None:
    """Flaw 11, fuzzed: sub, client_id, scope, iss, acr... as lone surrogates, huge strings, numbers, lists,
    objects, null, booleans, in a JWT or in an introspection answer, with ``on_decision`` set and the
    ``tokenguard`` logger at DEBUG through a strict UTF-8 handler: never a 500, never a traceback or a
    logging error, every event reportable, no token in any log line."""
    events: list[DecisionEvent] = []
    statuses: Counter[int] = Counter()

    def hook(event: DecisionEvent) -> None:
        assert_reportable(event)  # inside the hook: a failure here counts as a hook error
        events.append(event)

    with guarded(clock, on_decision=hook) as client:
        guard = guard_of(client)

        @FUZZ
        @given(changes=st.dictionaries(_REPORTED, _JSON, min_size=1, max_size=4), path=st.sampled_from(paths))
        @example(changes={"sub": "\ud800"}, path=paths[0])
        @example(changes={"sub": "a\udfffb", "client_id": "\ud800\n" * 4000}, path=paths[0])
        @example(changes={"client_id": "\udbff", "azp": ["\ud800"], "acr": {"\ud800": None}}, path=paths[-1])
        def run(changes: dict[str, Any], path: str) -> None:
            clock.advance(1)  # refills the first-sight budget; tokens are minted against the new time
            before = len(events)
            if kind == "jwt":
                token = issuer.token(**changes)
                response = client.get(path, headers=bearer(token))
            else:
                token = issuer.token(scope="read transfer admin") if kind == "jwt-answer" else junk()
                issuer.activate(token, **{"scope": "read transfer admin", **changes})
                response = client.post(path, headers=bearer(token))
            statuses[response.status_code] += 1
            # A lone surrogate (RFC 7493 §2.1) in a JWT is a malformed token, in an active introspection
            # answer a bad claim: 401 either way, never a 503 (the issuer is healthy) nor a 500.
            assert response.status_code in (200, 401, 403), (response.status_code, response.text)
            if _has_lone_surrogate(changes):
                assert response.status_code == 401, response.text
            assert "Traceback" not in response.text
            assert token not in response.text
            assert len(events) == before + 1
            assert strict_log.failures == []
            assert token not in strict_log.text()

        run()
        assert guard.metrics_snapshot()["hook_errors"] == 0
    assert statuses[200] > 0  # the generator reaches accepted tokens too, so their reporting is exercised


# RFC 7493 §2.1: strings with a lone surrogate have no UTF-8 form; the guard refuses them where it reads JSON.


def test_a_lone_surrogate_in_an_introspection_answer_is_a_401_and_moves_no_breaker(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    token = issuer.token(scope="read transfer")
    issuer.activate(token, scope="read transfer", username="\ud800")
    with guarded(clock) as client:
        for _ in range(8):
            clock.advance(10)  # past the negative-cache lifetime: each request asks the issuer again
            response = client.post("/transfers", headers=bearer(token))
            assert response.status_code == 401, response.text
        status = guard_of(client).status()["introspection"]
    assert status["breaker"] == "closed"


def test_request_bodies_with_a_lone_surrogate_are_a_400() -> None:
    from tokenguard._details import parse_json_body
    from tokenguard.errors import InvalidRequest

    assert parse_json_body(b'{"amount": "\\ud83d\\ude00"}') == {"amount": "\U0001f600"}
    assert parse_json_body(b'{"note": "\\\\ud800"}') == {"note": "\\ud800"}  # an escaped backslash: text
    with pytest.raises(InvalidRequest):
        parse_json_body(b'{"amount": "\\ud800"}')
    with pytest.raises(InvalidRequest):
        parse_json_body(b'{"\\udfff": 1}')


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("levels", "status"), [(31, 200), (32, 401), (600, 401)])
def test_an_introspection_answer_nests_no_deeper_than_a_tokens_claims(
    clock: ManualClock, issuer: RespxIssuer, levels: int, status: int
) -> None:
    """Found by review: answers were read without a depth limit, so a claim nested 600 deep (an issuer may echo
    what a client asked for, e.g. ``authorization_details``) passed, and ``request.auth.claims`` (a deep copy)
    raised RecursionError: a 500 on every request with that token while its answer stayed cached. A token's
    claims nest at most ``MAX_DEPTH`` (32) levels, the answer object included; past that the token is
    refused (401), and the issuer, which did answer, is not counted as failing."""
    token = junk()
    issuer.activate(token, detail=_nested(levels))
    with guarded(clock) as client:
        response = client.get("/me", headers=bearer(token))
        assert response.status_code == status, response.text
        if status == 401:
            assert "nests too deeply" in response.headers["www-authenticate"]
        assert guard_of(client).status()["introspection"]["breaker"] == "closed"
