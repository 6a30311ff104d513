"""The revocation list (``tokenguard.revocation``) and ``guard.revoke`` without a shared store.

First the list itself, on a ``ManualClock``: what an entry covers (``jti``, ``sub``, ``client_id``;
one issuer or any; ``iat`` < cut-off, a token without ``iat`` covered), ``revoke`` over ``recheck``,
expiry and ``purge``, the ``max_entries`` bound (``StoreFull``, never a live entry dropped), and the
wire form (``encode``/``decode``), checked against a plain model over many seeded random entries.

Then a real Starlette app behind ``TokenGuard``, its issuer a ``DevIdP`` reached through respx (the
introspection calls counted there): ``await guard.revoke(...)`` refuses on ordinary routes whatever
validated the token (verified cache, signature, introspection), a ``recheck`` entry asks the issuer
again once, and the options' misconfigurations are ``ConfigurationError`` naming the option.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import ConfigurationError, TokenGuard, sensitive
from tokenguard.errors import InvalidToken, RevocationsStale
from tokenguard.events import DecisionEvent
from tokenguard.models import AccessToken
from tokenguard.revocation import Revocation, RevocationList
from tokenguard.store import StoreFull
from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP, KeyRing, ManualClock

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example.com"
OTHER_ISSUER = "https://other-idp.example.com"
AUDIENCE = "https://api.example.com"
T0 = 1_800_000_000.0
REVOKED = "The access token was revoked."
CHANGED = "The access token's claims changed; a new access token is needed."


def token(
    *,
    jti: str | None = "j1",
    sub: str | None = "alice",
    client_id: str | None = "app",
    issuer: str | None = ISSUER,
    iat: Any = T0 - 10,
) -> AccessToken:
    claims: dict[str, Any] = {} if iat is None else {"iat": iat}
    return AccessToken(
        subject=sub,
        client_id=client_id,
        scopes=frozenset(),
        claims=claims,
        expires_at=T0 + 300,
        source="jwt",
        issuer=issuer,
        token_id=jti,
    )


def entry(kind: Any, value: str, before: float = T0, **options: Any) -> Revocation:
    return Revocation(
        kind, value, math.inf if kind == "jti" else before, options.pop("expires_at", T0 + 600), **options
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def revocations(clock: ManualClock) -> RevocationList:
    return RevocationList(max_entries=8, clock=clock)


# -- what an entry covers ---------------------------------------------------------------------------------


def test_an_empty_list_is_inactive_and_covers_nothing(revocations: RevocationList) -> None:
    assert not revocations.active
    assert len(revocations) == 0
    assert revocations.verdict(token()) is None
    assert revocations.check(token()) is None


def test_a_jti_entry_covers_that_token_only(revocations: RevocationList) -> None:
    assert revocations.add(entry("jti", "j1")) is True
    assert revocations.active
    assert revocations.verdict(token(jti="j1")) == ("revoke", math.inf)
    assert revocations.verdict(token(jti="j1", iat=T0 + 3600)) == ("revoke", math.inf)  # whenever it was issued
    assert revocations.verdict(token(jti="j2")) is None
    assert revocations.verdict(token(jti=None)) is None
    # A jti value is not a subject: kinds never mix.
    assert revocations.verdict(token(jti="x", sub="j1", client_id="j1")) is None
    with pytest.raises(InvalidToken) as refused:
        revocations.check(token(jti="j1"))
    assert refused.value.reason == "revoked"
    assert refused.value.description == REVOKED
    assert revocations.status() == {"entries": 1, "added": 1, "refused": 1}


@pytest.mark.parametrize("kind", ["sub", "client_id"])
def test_a_sub_or_client_entry_covers_tokens_issued_before_its_cutoff(revocations: RevocationList, kind: str) -> None:
    revocations.add(entry(kind, "v", before=T0))

    def of(value: str, iat: Any) -> AccessToken:
        return token(iat=iat, **{"sub" if kind == "sub" else "client_id": value})

    assert revocations.verdict(of("v", T0 - 1)) == ("revoke", T0)
    assert revocations.verdict(of("v", T0 - 0.001)) == ("revoke", T0)
    assert revocations.verdict(of("v", T0)) is None  # iat < cut-off, strictly: a token issued at it is not
    assert revocations.verdict(of("v", T0 + 1)) is None
    assert revocations.verdict(of("w", T0 - 1)) is None


@pytest.mark.parametrize("iat", [None, "1700000000", True, [1], float("nan")], ids=repr)
def test_a_token_without_a_numeric_iat_is_covered_by_every_cutoff(revocations: RevocationList, iat: Any) -> None:
    """It cannot show it was issued after the cut-off; ``True`` is not the number 1."""
    revocations.add(entry("sub", "alice", before=T0 - 10**6))
    assert revocations.verdict(token(iat=iat)) == ("revoke", T0 - 10**6)
    assert revocations.verdict(token(iat=T0 - 10**6 - 1)) == ("revoke", T0 - 10**6)
    assert revocations.verdict(token(iat=T0 - 10)) is None


def test_an_entry_naming_an_issuer_covers_that_issuers_tokens_only(revocations: RevocationList) -> None:
    revocations.add(entry("sub", "alice", issuer=ISSUER))
    assert revocations.verdict(token(issuer=ISSUER)) is not None
    assert revocations.verdict(token(issuer=OTHER_ISSUER)) is None
    assert revocations.verdict(token(issuer=None)) is None  # a token of no known issuer is not that issuer's


def test_an_entry_without_issuer_covers_every_issuers_tokens(revocations: RevocationList) -> None:
    revocations.add(entry("client_id", "app"))
    for issuer in (ISSUER, OTHER_ISSUER, None):
        assert revocations.verdict(token(issuer=issuer, sub="nobody")) == ("revoke", T0), issuer


def test_the_latest_cutoff_of_one_kind_value_and_issuer_wins(revocations: RevocationList) -> None:
    assert revocations.add(entry("sub", "alice", before=T0 - 100)) is True
    assert revocations.add(entry("sub", "alice", before=T0)) is True
    assert revocations.add(entry("sub", "alice", before=T0 - 50)) is False  # covers less: changes nothing
    assert len(revocations) == 1
    assert revocations.verdict(token(iat=T0 - 60)) == ("revoke", T0)


def test_revoke_wins_over_recheck_in_one_slot_and_across_slots(revocations: RevocationList) -> None:
    revocations.add(entry("sub", "alice", before=T0 - 100))
    revocations.add(entry("sub", "alice", before=T0, action="recheck"))
    assert revocations.verdict(token(iat=T0 - 200)) == ("revoke", T0 - 100)
    assert revocations.verdict(token(iat=T0 - 50)) == ("recheck", T0)
    assert revocations.verdict(token(iat=T0 + 1)) is None
    # A recheck of the jti and a revoke of the client: the revoke decides, whichever is looked at first.
    revocations.add(entry("jti", "j9", action="recheck"))
    revocations.add(entry("client_id", "app9", before=T0))
    assert revocations.verdict(token(jti="j9", sub="bob", client_id="app9", iat=T0 - 1))[0] == "revoke"
    assert revocations.verdict(token(jti="j9", sub="bob", client_id="app8", iat=T0 - 1))[0] == "recheck"


def test_several_rechecks_take_the_latest_cutoff(revocations: RevocationList) -> None:
    revocations.add(entry("sub", "alice", before=T0 - 5, action="recheck"))
    revocations.add(entry("client_id", "app", before=T0 - 1, action="recheck", issuer=ISSUER))
    assert revocations.verdict(token(iat=T0 - 20)) == ("recheck", T0 - 1)
    assert revocations.check(token(iat=T0 - 20)) == T0 - 1


def test_a_jti_recheck_asks_again_about_answers_older_than_the_entry_not_forever(
    revocations: RevocationList, clock: ManualClock
) -> None:
    """A jti entry covers its token whenever it was issued; for a recheck, the answers to ignore are
    those given before this process learned of it, not every answer ever (that would introspect the
    token on every request until the entry expires). The same entry heard again (its own publication
    coming back on the feed, a resync) does not move that time."""
    revocations.add(entry("jti", "j1", action="recheck"))
    learned = clock()
    assert revocations.verdict(token(jti="j1", iat=T0 + 3600)) == ("recheck", learned)
    clock.advance(5)
    assert revocations.add(entry("jti", "j1", action="recheck")) is False
    assert revocations.verdict(token(jti="j1")) == ("recheck", learned)
    revocations.add(entry("jti", "j1"))  # revoked after all
    assert revocations.verdict(token(jti="j1")) == ("revoke", math.inf)


def test_refuse_all_refuses_every_token_with_a_503(revocations: RevocationList) -> None:
    revocations.set_refuse_all("the revocation list is stale: down")
    assert revocations.active
    with pytest.raises(RevocationsStale) as refused:
        revocations.check(token())
    assert refused.value.status_code == 503
    assert refused.value.reason == "revocations_stale"
    revocations.set_refuse_all(None)
    assert not revocations.active
    assert revocations.check(token()) is None


# -- expiry, purge and the bound --------------------------------------------------------------------------


def test_an_entry_already_expired_is_not_added(revocations: RevocationList) -> None:
    assert revocations.add(entry("jti", "j1", expires_at=T0)) is False
    assert revocations.add(entry("jti", "j1", expires_at=T0 - 1)) is False
    assert len(revocations) == 0
    assert not revocations.active


def test_purge_drops_expired_entries_only_and_never_early(revocations: RevocationList, clock: ManualClock) -> None:
    revocations.add(entry("jti", "a", expires_at=T0 + 10))
    revocations.add(entry("jti", "b", expires_at=T0 + 20))
    revocations.add(entry("jti", "c", expires_at=T0 + 10))
    revocations.add(entry("jti", "c", expires_at=T0 + 30))  # extended: its first expiry must not drop it
    assert revocations.purge() == 0
    clock.set(T0 + 10)
    assert revocations.purge() == 1  # a
    assert revocations.verdict(token(jti="c")) is not None
    clock.set(T0 + 20)
    assert revocations.purge() == 1
    assert len(revocations) == 1
    assert revocations.verdict(token(jti="c")) is not None
    assert revocations.active
    clock.set(T0 + 30)
    assert revocations.purge() == 1
    assert len(revocations) == 0
    assert not revocations.active  # back to the one-test hot path


def test_a_full_list_of_live_entries_refuses_a_new_one_and_keeps_every_live_one(
    revocations: RevocationList, clock: ManualClock
) -> None:
    for index in range(8):
        revocations.add(entry("jti", f"j{index}", expires_at=T0 + 10 + index))
    with pytest.raises(StoreFull) as full:
        revocations.add(entry("jti", "new"))
    assert full.value.status_code == 503
    # An entry already held may still be extended or tightened; the refusal evicted nothing.
    assert revocations.add(entry("jti", "j0", expires_at=T0 + 100)) is False
    assert len(revocations) == 8
    assert all(revocations.verdict(token(jti=f"j{index}")) for index in range(8))
    assert revocations.verdict(token(jti="new")) is None
    clock.set(T0 + 11)  # j1 expired (j0 was extended): exactly one slot is free again
    assert revocations.add(entry("jti", "new")) is True
    with pytest.raises(StoreFull):
        revocations.add(entry("jti", "newer"))
    assert revocations.verdict(token(jti="j0")) is not None
    assert all(revocations.verdict(token(jti=f"j{index}")) for index in range(2, 8))


def test_replace_adds_what_fits_and_counts_the_rest(revocations: RevocationList) -> None:
    """A full read of the shared list never stops half-way: what this list cannot hold is counted."""
    entries = [entry("jti", f"j{index}") for index in range(11)]
    assert revocations.replace(entries) == 3
    assert len(revocations) == 8
    assert revocations.replace(entries) == 3  # the same read again: the same 8 held, no live one dropped
    assert [revocations.verdict(token(jti=f"j{index}")) is not None for index in range(11)] == [True] * 8 + [False] * 3


def test_entries_extended_again_and_again_keep_the_heap_bounded(clock: ManualClock) -> None:
    revocations = RevocationList(max_entries=4, clock=clock)
    for step in range(1, 2000):
        revocations.add(entry("jti", f"j{step % 3}", expires_at=T0 + step))
        if step % 100 == 0:
            revocations.purge()
    assert len(revocations) == 3
    assert len(revocations._heap) <= 2 * 64 + 100


# -- the wire form ---------------------------------------------------------------------------------------


def random_entry(rng: random.Random) -> Revocation:
    kind = rng.choice(["jti", "sub", "client_id"])
    value = "".join(rng.choice('abcé\u2603\U0001f600"\\/ \x00\n') for _ in range(rng.randint(1, 12)))
    before = math.inf if kind == "jti" and rng.random() < 0.8 else rng.uniform(0, 4e9)
    if rng.random() < 0.2:
        before = float(rng.randint(0, 4_000_000_000))
    issuer = rng.choice([None, ISSUER, OTHER_ISSUER, "https://idp.example.com/realms/é"])
    action = rng.choice(["revoke", "recheck"])
    return Revocation(kind, value, before, rng.uniform(1, 4e9), issuer, action)  # type: ignore[arg-type]


def test_encode_decode_round_trips_many_random_entries() -> None:
    rng = random.Random(20240607)
    for _ in range(2000):
        original = random_entry(rng)
        data = original.encode()
        assert Revocation.decode(data) == original
        assert Revocation.decode(data).encode() == data  # the same entry is the same bytes everywhere
        assert json.loads(data)["k"] == original.kind


def random_document(rng: random.Random) -> dict[str, Any]:
    return json.loads(random_entry(rng).encode())  # type: ignore[no-any-return]


BAD_MEMBERS: list[tuple[str, Any]] = [
    ("k", "iss"),
    ("k", None),
    ("k", ["jti"]),
    ("v", ""),
    ("v", 7),
    ("v", None),
    ("v", "x" * 1025),
    ("b", "1700000000"),
    ("b", True),
    ("b", [1]),
    ("x", None),
    ("x", "1700000000"),
    ("x", False),
    ("i", 3),
    ("i", ["https://idp.example.com"]),
    ("i", ""),
    ("a", "delete"),
    ("a", None),
]


@pytest.mark.parametrize(("member", "bad"), BAD_MEMBERS, ids=[f"{m}={v!r}"[:40] for m, v in BAD_MEMBERS])
def test_decode_refuses_an_entry_with_a_wrong_member(member: str, bad: Any) -> None:
    rng = random.Random(member + repr(bad))
    for _ in range(20):
        document = random_document(rng)
        document[member] = bad
        with pytest.raises(ValueError):
            Revocation.decode(json.dumps(document).encode())


@pytest.mark.parametrize("member", ["k", "v", "x", "a"])
def test_decode_refuses_an_entry_missing_a_member(member: str) -> None:
    document = random_document(random.Random(member))
    del document[member]
    with pytest.raises(ValueError):
        Revocation.decode(json.dumps(document).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'"jti"',
        b"\xff\xfe",
        b'{"k":"jti","v":"a","b":null,"x":1e999,"i":null,"a":"revoke"}',
        b'{"k":"jti","v":"a","b":null,"x":NaN,"i":null,"a":"revoke"}',
        b'{"k":"sub","v":"a","b":-Infinity,"x":2e9,"i":null,"a":"revoke"}',
        b'{"k":"jti","k":"sub","v":"a","b":null,"x":2e9,"i":null,"a":"revoke"}',
        b'{"k":"jti","v":"\\ud800","b":null,"x":2e9,"i":null,"a":"revoke"}',
        b'{"k":"jti","v":{"v":{"v":1}},"b":null,"x":2e9,"i":null,"a":"revoke"}',
        b'{"k":"jti","v":"a","b":null,"x":2e9,"i":null,"a":"revoke"} trailing',
    ],
)
def test_decode_refuses_what_is_not_an_entry(data: bytes) -> None:
    with pytest.raises(ValueError):
        Revocation.decode(data)


def test_damaged_bytes_are_a_value_error_or_an_entry_never_another_exception() -> None:
    """A damaged value in the store or on the feed: ``decode`` raises ``ValueError`` (the entry is
    skipped with a warning) or reads a well-formed entry; never a ``TypeError`` or ``KeyError`` that
    would end the listener's read of the whole list."""
    rng = random.Random(7)
    decoded = refused = 0
    for _ in range(3000):
        data = bytearray(random_entry(rng).encode())
        for _flip in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        try:
            entry = Revocation.decode(bytes(data))
        except ValueError:
            refused += 1
            continue
        decoded += 1
        assert Revocation.decode(entry.encode()) == entry
    assert decoded
    assert refused


def test_whole_numbers_decode_as_the_same_entry() -> None:
    data = b'{"a":"revoke","b":1700000000,"i":null,"k":"sub","v":"alice","x":1800000000}'
    assert Revocation.decode(data) == Revocation("sub", "alice", 1_700_000_000.0, 1_800_000_000.0)


@pytest.mark.parametrize(
    "arguments",
    [
        ("jwt", "a", math.inf, T0),
        ("sub", "a", math.inf, T0, ["https://idp.example.com"]),
        ("jti", "", math.inf, T0),
        ("jti", "x" * 1025, math.inf, T0),
        ("jti", 7, math.inf, T0),
        ("jti", "\ud800", math.inf, T0),
        ("sub", "a", -math.inf, T0),  # covers nothing here, and would travel as "every token"
        ("sub", "a", math.nan, T0),
        ("sub", "a", T0, math.inf),
        ("sub", "a", T0, math.nan),
        ("sub", "a", "1700000000", T0),
        ("sub", "a", T0, T0, ""),
        ("sub", "a", T0, T0, None, "delete"),
    ],
    ids=lambda arguments: repr(arguments)[:60],
)
def test_an_entry_that_could_not_travel_is_refused_when_built(arguments: tuple[Any, ...]) -> None:
    """What ``decode`` would refuse (or read differently) on the other processes is a ``ValueError`` here."""
    with pytest.raises(ValueError):
        Revocation(*arguments)


def model_verdict(entries: list[tuple[Revocation, float]], subject: AccessToken) -> tuple[str, float] | None:
    """The list's verdict, spelled out: every entry (with when it was added) looked at one by one."""
    iat = subject.claims.get("iat")
    issued = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else -math.inf
    fields = {"jti": subject.token_id, "sub": subject.subject, "client_id": subject.client_id}
    revoke: float | None = None
    recheck: float | None = None
    first_seen: dict[tuple[str, str, str], float] = {}
    for item, added_at in entries:
        if fields[item.kind] != item.value or (item.issuer is not None and item.issuer != subject.issuer):
            continue
        if not issued < item.issued_before:
            continue
        if item.action == "revoke":
            revoke = max(revoke or -math.inf, item.issued_before)
        else:
            cutoff = item.issued_before
            if math.isinf(cutoff):  # a jti recheck: answers older than when this process first heard of it
                cutoff = first_seen.setdefault((item.kind, item.issuer or "", item.value), added_at)
            recheck = max(recheck or -math.inf, cutoff)
    if revoke is not None:
        return "revoke", revoke
    return ("recheck", recheck) if recheck is not None else None


def same(found: tuple[str, float] | None, expected: tuple[str, float] | None) -> bool:
    """A revoke is a revoke whichever cut-off refused it; a recheck's cut-off matters (answers older are ignored)."""
    if found is None or expected is None:
        return found is expected
    return found[0] == expected[0] and (found[0] == "revoke" or found[1] == expected[1])


def test_the_list_agrees_with_a_plain_model_over_random_entries_and_tokens(clock: ManualClock) -> None:
    rng = random.Random(99)
    values = ["a", "b", "c"]
    for _round in range(30):
        revocations = RevocationList(clock=clock)
        added: list[tuple[Revocation, float]] = []
        for _ in range(rng.randint(1, 25)):
            clock.advance(rng.choice([0, 0, 1, 2.5]))
            kind = rng.choice(["jti", "sub", "client_id"])
            before = math.inf if kind == "jti" else clock() - rng.choice([0, 1, 5, 50])
            item = Revocation(
                kind,  # type: ignore[arg-type]
                rng.choice(values),
                before,
                clock() + 10**6,
                rng.choice([None, ISSUER, OTHER_ISSUER]),
                rng.choice(["revoke", "recheck"]),  # type: ignore[arg-type]
            )
            revocations.add(item)
            added.append((item, clock()))
        for _ in range(40):
            subject = token(
                jti=rng.choice([*values, None]),
                sub=rng.choice([*values, None]),
                client_id=rng.choice([*values, None]),
                issuer=rng.choice([ISSUER, OTHER_ISSUER, None]),
                iat=rng.choice([None, clock() - rng.choice([0, 1, 3, 10, 100]), clock() + 1]),
            )
            assert same(revocations.verdict(subject), model_verdict(added, subject)), (added, subject)


# -- through a guarded app ------------------------------------------------------------------------------


class World:
    """A DevIdP on a ManualClock, reached through respx; every introspection call is counted."""

    def __init__(self, router: respx.MockRouter, keys: KeyRing, clock: ManualClock) -> None:
        self.clock = clock
        self.idp = DevIdP(ISSUER, keys=keys, default_audience=AUDIENCE, clock=clock)
        self.introspections = 0
        self.events: list[DecisionEvent] = []

        async def forward(request: httpx.Request) -> httpx.Response:
            transport = httpx.ASGITransport(app=self.idp.app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
                answer = await client.request(
                    request.method, str(request.url), headers=request.headers, content=request.content
                )
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        async def introspect(request: httpx.Request) -> httpx.Response:
            self.introspections += 1
            return await forward(request)

        router.post(f"{ISSUER}/introspect").mock(side_effect=introspect)
        router.route(host="idp.example.com").mock(side_effect=forward)

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]


@pytest.fixture
def world(dev_idp_keys: KeyRing) -> Iterator[World]:
    with respx.mock(assert_all_called=False) as router:
        yield World(router, dev_idp_keys, ManualClock(T0))


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


def guarded_app(world: World, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/me", whoami), Route("/transfer", transfer, methods=["POST"])])
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": RESOURCE_CLIENT_ID,
        "client_secret": RESOURCE_CLIENT_SECRET,
        "clock": world.clock,
        "on_decision": world.events.append,
    }
    app.add_middleware(TokenGuard, **{**settings, **options})
    return app


def guard_of(app: Starlette) -> TokenGuard:
    """The app's TokenGuard instance (Starlette builds its middleware on the first call: built here)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, TokenGuard):
        layer = layer.app
    return layer


@pytest.fixture
async def app(world: World) -> Starlette:
    return guarded_app(world)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
        yield client


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def jti_of(value: str) -> str:
    return str(jwt.decode(value, options={"verify_signature": False})["jti"])


def assert_revoked(response: httpx.Response, description: str = REVOKED) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "invalid_token", "error_description": description}
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'error_description="{description}"' in challenge


async def test_revoke_jti_refuses_that_jwt_on_an_ordinary_route_even_from_the_verified_cache(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    revoked, other = world.idp.issue_token("read"), world.idp.issue_token("read")
    assert (await client.get("/me", headers=bearer(revoked))).status_code == 200  # now in the verified cache
    assert (await client.get("/me", headers=bearer(other))).status_code == 200
    guard = guard_of(app)
    assert guard.authenticator.validator.verified_cache_size == 2
    await guard.revoke(jti=jti_of(revoked))
    assert_revoked(await client.get("/me", headers=bearer(revoked)))
    assert_revoked(await client.get("/me", headers=bearer(revoked)))
    assert (await client.get("/me", headers=bearer(other))).status_code == 200
    assert world.reasons() == ["ok", "ok", "revoked", "revoked", "ok"]
    assert world.introspections == 0  # the list is checked in-process, without asking the issuer
    assert guard.status()["fleet"]["revocations"] == {
        "entries": 1,
        "added": 1,
        "refused": 2,
        "shared": False,
        "stale": False,
        "stale_since": None,
        "pending": 0,
        "resyncs": 0,
        "received": 0,
        "overflow": 0,
        "fail_closed": False,
    }


async def test_revoke_jti_refuses_on_a_sensitive_route_too(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    revoked = world.idp.issue_token("read")
    assert (await client.post("/transfer", headers=bearer(revoked))).status_code == 200
    await guard_of(app).revoke(jti=jti_of(revoked))
    assert_revoked(await client.post("/transfer", headers=bearer(revoked)))


async def test_revoke_sub_covers_tokens_issued_before_not_after(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    world.clock.advance(0.25)
    before, bob = world.idp.issue_token("read", subject="alice"), world.idp.issue_token("read", subject="bob")
    assert (await client.get("/me", headers=bearer(before))).status_code == 200
    world.clock.advance(0.5)  # iat has whole seconds: a token of this second is covered (the cut-off is its end)
    await guard_of(app).revoke(sub="alice")
    world.clock.advance(0.25)
    after = world.idp.issue_token("read", subject="alice")  # the next second
    assert_revoked(await client.get("/me", headers=bearer(before)))
    assert (await client.get("/me", headers=bearer(after))).status_code == 200
    assert (await client.get("/me", headers=bearer(bob))).status_code == 200


async def test_revoke_sub_with_an_earlier_cutoff(world: World, app: Starlette, client: httpx.AsyncClient) -> None:
    old = world.idp.issue_token("read")
    world.clock.advance(100)
    recent = world.idp.issue_token("read")
    await guard_of(app).revoke(sub="alice", issued_before=T0 + 50)
    assert_revoked(await client.get("/me", headers=bearer(old)))
    assert (await client.get("/me", headers=bearer(recent))).status_code == 200


async def test_revoke_client_id(world: World, app: Starlette, client: httpx.AsyncClient) -> None:
    world.idp.register_client("other-app", "other-secret")
    mine, theirs = world.idp.issue_token("read"), world.idp.issue_token("read", client_id="other-app")
    world.clock.advance(1)
    await guard_of(app).revoke(client_id="other-app")
    assert (await client.get("/me", headers=bearer(mine))).status_code == 200
    assert_revoked(await client.get("/me", headers=bearer(theirs)))


async def test_revoke_naming_the_issuer(world: World, app: Starlette, client: httpx.AsyncClient) -> None:
    value = world.idp.issue_token("read")
    world.clock.advance(1)
    await guard_of(app).revoke(sub="alice", issuer=ISSUER)
    assert_revoked(await client.get("/me", headers=bearer(value)))


async def test_opaque_introspected_tokens_are_covered(world: World, app: Starlette, client: httpx.AsyncClient) -> None:
    by_sub = world.idp.issue_token("read", subject="carol", token_format="opaque")
    by_jti = world.idp.issue_token("read", subject="dave", token_format="opaque")
    kept = world.idp.issue_token("read", subject="erin", token_format="opaque")
    for value in (by_sub, by_jti, kept):
        response = await client.get("/me", headers=bearer(value))
        assert response.status_code == 200
        assert response.json()["source"] == "introspection"
    assert world.introspections == 3
    guard = guard_of(app)
    world.clock.advance(1)
    await guard.revoke(sub="carol")
    await guard.revoke(jti=world.idp.introspect(by_jti)["jti"])
    assert_revoked(await client.get("/me", headers=bearer(by_sub)))  # from the introspection cache
    assert_revoked(await client.get("/me", headers=bearer(by_jti)))
    assert (await client.get("/me", headers=bearer(kept))).status_code == 200
    assert world.introspections == 3


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({}, "exactly one of"),
        ({"jti": "a", "sub": "b"}, "exactly one of"),
        ({"sub": "b", "client_id": "c"}, "exactly one of"),
        ({"jti": ""}, "exactly one of"),
        ({"sub": 42}, "exactly one of"),
        ({"sub": "b", "issuer": "https://elsewhere.example"}, "configured issuers"),
        ({"jti": "a", "issued_before": T0}, "issued_before"),
        ({"sub": "b", "issued_before": float("nan")}, "cut-off"),
        ({"sub": "b", "issued_before": float("-inf")}, "cut-off"),
    ],
    ids=repr,
)
async def test_revoke_refuses_bad_arguments(app: Starlette, arguments: dict[str, Any], words: str) -> None:
    guard = guard_of(app)
    with pytest.raises(ValueError, match=words):
        await guard.revoke(**arguments)
    assert len(guard.revocations) == 0


async def test_revoke_expires_at_shortens_the_entry(world: World, app: Starlette) -> None:
    guard = guard_of(app)
    await guard.revoke(jti="j1", expires_at=T0 + 60)
    await guard.revoke(sub="alice")
    (jti_expiry, sub_expiry) = sorted(slot[-1] for slot in guard.revocations._slots.values())
    assert jti_expiry == T0 + 60 + guard.config.leeway
    assert sub_expiry == T0 + 1 + guard.max_token_lifetime + guard.config.leeway  # cut-off: the second's end
    world.clock.set(T0 + 61 + guard.config.leeway)
    assert guard.revocations.purge() == 1


# -- recheck entries --------------------------------------------------------------------------------------


async def test_a_recheck_entry_asks_the_issuer_again_once_despite_a_cached_answer(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    value = world.idp.issue_token("read", token_format="opaque")
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    assert world.introspections == 1  # the second came from the introspection cache
    guard = guard_of(app)
    world.clock.advance(1)
    await guard.fleet.revoke(Revocation("sub", "alice", world.clock(), world.clock() + 600, action="recheck"))
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    assert world.introspections == 2
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    assert world.introspections == 2  # the answer given after the cut-off is good from now on


async def test_a_recheck_sees_what_the_issuer_says_now(world: World, app: Starlette, client: httpx.AsyncClient) -> None:
    value = world.idp.issue_token("read", token_format="opaque")
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    world.idp.revoke(value)  # at the issuer: the cached answer still says active
    assert (await client.get("/me", headers=bearer(value))).status_code == 200
    world.clock.advance(1)
    await guard_of(app).fleet.revoke(Revocation("sub", "alice", world.clock(), world.clock() + 600, action="recheck"))
    response = await client.get("/me", headers=bearer(value))
    assert response.status_code == 401
    assert response.json()["error_description"] == "The access token is not active."
    assert world.reasons()[-1] == "inactive"


async def test_a_jti_recheck_asks_again_once_not_on_every_request(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    value = world.idp.issue_token("read")
    assert (await client.post("/transfer", headers=bearer(value))).status_code == 200
    assert world.introspections == 1
    guard = guard_of(app)
    world.clock.advance(1)
    await guard.fleet.revoke(Revocation("jti", jti_of(value), math.inf, world.clock() + 600, action="recheck"))
    for _ in range(3):
        assert (await client.get("/me", headers=bearer(value))).status_code == 200  # an ordinary route
    assert world.introspections == 2


async def test_a_recheck_of_a_jwt_on_an_ordinary_route_introspects_it(
    world: World, app: Starlette, client: httpx.AsyncClient
) -> None:
    value = world.idp.issue_token("read")
    assert (await client.get("/me", headers=bearer(value))).json()["source"] == "jwt"
    world.clock.advance(1)
    await guard_of(app).fleet.revoke(Revocation("client_id", "dev-client", world.clock(), T0 + 600, action="recheck"))
    response = await client.get("/me", headers=bearer(value))
    assert response.status_code == 200
    assert response.json()["source"] == "introspection"
    assert world.introspections == 1


async def test_without_introspection_credentials_a_recheck_covered_token_is_refused(world: World) -> None:
    app = guarded_app(world, client_id=None, client_secret=None)
    value, other = world.idp.issue_token("read"), world.idp.issue_token("read", subject="bob")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
        assert (await client.get("/me", headers=bearer(value))).status_code == 200
        world.clock.advance(1)
        await guard_of(app).fleet.revoke(Revocation("sub", "alice", world.clock(), T0 + 600, action="recheck"))
        assert_revoked(await client.get("/me", headers=bearer(value)), CHANGED)
        assert (await client.get("/me", headers=bearer(other))).status_code == 200
    assert world.reasons()[-2:] == ["revoked", "ok"]
    assert world.introspections == 0


# -- misconfiguration --------------------------------------------------------------------------------------


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({})


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("max_token_lifetime", 59, "max_token_lifetime"),
        ("max_token_lifetime", 30 * 86400 + 1, "max_token_lifetime"),
        ("max_token_lifetime", True, "max_token_lifetime"),
        ("max_token_lifetime", "3600", "max_token_lifetime"),
        ("max_token_lifetime", float("nan"), "max_token_lifetime"),
        ("revocation_fail_closed", "yes", "revocation_fail_closed"),
        ("revocation_fail_closed", 1, "revocation_fail_closed"),
        ("shared_store", 42, "shared_store"),
        ("shared_store", "http://x", "shared_store"),
        ("shared_store", "redis://h:6379/zero", "shared_store"),
        ("revocation_max_entries", 0, "revocation_max_entries"),
    ],
    ids=repr,
)
def test_misconfigured_fleet_options_name_the_option(option: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        TokenGuard(Starlette(routes=[Route("/", ok)]), issuer=ISSUER, audience=AUDIENCE, **{option: value})


def test_the_option_bounds_themselves_are_accepted() -> None:
    for lifetime in (60, 30 * 86400, 3600.5):
        guard = TokenGuard(Starlette(), issuer=ISSUER, audience=AUDIENCE, max_token_lifetime=lifetime)
        assert guard.max_token_lifetime == lifetime
    guard = TokenGuard(Starlette(), issuer=ISSUER, audience=AUDIENCE, revocation_max_entries=1)
    assert guard.revocations.max_entries == 1
    assert guard.fleet.store is None
    assert not guard.fleet.stale
