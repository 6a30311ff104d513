"""Issue 16's performance targets, in one place, and the verdict of one run against them.

Issue 16 replaced issue 5's ratios to a bare app (they depend on how cheap the app is: a bare Starlette
route costs ≈ 6 µs in-process, so "≥ 0.45x bare with distinct RS256 tokens" asked for less than the RSA
verify alone) with **time added per request, measured against the signature floor in the same run**:

- uncached validation: RS256 ≤ 1.5x the floor, ES256 ≤ 1.15x, EdDSA ≤ 1.1x, and faster than every peer;
- a first-sight token through the middleware adds at most the validator's own time + 4 µs (per round,
  the in-process Starlette Δ against the RS256 uncached validator row of the same round);
- a repeated token adds ≤ 3 µs on Starlette, ≤ 6 µs on FastAPI (in-process Δ over the bare app), and
  keeps ≥ 0.95x the bare app's req/s under uvicorn;
- an introspection cache hit costs ≤ 2 µs.

Fleet mode adds one: ``shared_store`` costs a repeated JWT on an ordinary route ≤ 2 µs over the same
guard without a store (in-process Δ, ``bench_fleet``): the JWT path never waits on the network (a
loopback Redis round trip alone is tens of µs), and ``bench_fleet`` also fails the group outright if
the request path sent Redis any command.

The memory row keeps issue 5's bound, checked by ``bench_memory`` itself.

Verdicts are given only in full runs. A ``--quick`` run (3 rounds of 0.02 s batches) is a smoke test:
its numbers are too noisy to judge, so it shows each target without ``ok``/``MISS``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from benchmarks import bench_asgi, bench_fleet, bench_introspection, bench_server, bench_validation
from benchmarks._common import Result

# The names of the rows held to a target, as the modules that make the rows spell them.
TG_UNCACHED = bench_validation.TG_UNCACHED
PEERS = bench_validation.PEERS
STARLETTE, FASTAPI = bench_asgi.STARLETTE, bench_asgi.FASTAPI
REPEATED, DISTINCT_PREFIX = bench_asgi.REPEATED, bench_asgi.DISTINCT_PREFIX
SERVER = bench_server.GROUP
INTROSPECTION = bench_introspection.GROUP
INTROSPECTION_HIT = f"{bench_introspection.TOKENGUARD}: repeated token"
FLEET_HOT, FLEET_WITH_STORE = bench_fleet.HOT_GROUP, bench_fleet.WITH_STORE

#: Uncached validation, as a multiple of the raw-verify floor of the same algorithm.
FLOOR_TARGET = {"RS256": 1.5, "ES256": 1.15, "EdDSA": 1.1}
#: A first-sight token through the middleware: µs added beyond the uncached validator's own time.
FIRST_SIGHT_EXTRA_US = 4.0
#: A repeated token (verified-cache hit) through the middleware: µs added over the bare app.
REPEATED_ADDED_US = {STARLETTE: 3.0, FASTAPI: 6.0}
#: A repeated token under uvicorn: req/s as a fraction of the bare app's.
SERVER_REPEATED_RATIO = 0.95
#: An introspection cache hit, µs.
INTROSPECTION_HIT_US = 2.0
#: A repeated JWT with ``shared_store`` configured: µs added over the same guard without a store.
FLEET_STORE_ADDED_US = 2.0

SOURCE = "issue 16: time added per request against the signature floor, same run; memory: issue 5"
NOT_JUDGED = "targets are judged only in full runs: a --quick run is too short to judge, so no verdicts are given"
UNJUDGEABLE = "n/a"
UNJUDGEABLE_NOTE = f"{UNJUDGEABLE}: a row the target is measured against was not run (see --only)"

Rows = Mapping[tuple[str, str], Result]


@dataclass(frozen=True)
class Target:
    """What one row is held to: a text for the table and a check over the run's rows.

    ``check`` returns ``True``/``False``, or ``None`` when a row it needs is not in this run (``--only``).
    """

    text: str
    check: Callable[[Result, Rows], bool | None]


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _same_round(mine: Sequence[float], theirs: Sequence[float]) -> float:
    """Median of per-round differences when both rows have every round, else the difference of medians."""
    if len(mine) == len(theirs) and mine:
        return _median(a - b for a, b in zip(mine, theirs, strict=True))
    return _median(mine) - _median(theirs)


def uncached(alg: str) -> Target:
    bound = FLOOR_TARGET[alg]

    def check(result: Result, rows: Rows) -> bool | None:
        if not result.ratios:
            return None
        mine = _median(result.values())
        peers = [_median(rows[alg, name].values()) for name in PEERS if (alg, name) in rows]
        return _median(result.ratios) <= bound and all(mine < peer for peer in peers)

    return Target(f"≤{bound:g}x floor, < every peer", check)


def first_sight() -> Target:
    """Δ over the bare app ≤ the RS256 uncached validator's time in the same round + 4 µs."""

    def check(result: Result, rows: Rows) -> bool | None:
        validator = rows.get(("RS256", TG_UNCACHED))
        if validator is None or not result.deltas_us:
            return None
        return _same_round(result.deltas_us, validator.values()) <= FIRST_SIGHT_EXTRA_US

    return Target(f"≤ validator +{FIRST_SIGHT_EXTRA_US:g} µs", check)


def added(bound_us: float) -> Target:
    def check(result: Result, rows: Rows) -> bool | None:
        return _median(result.deltas_us) <= bound_us if result.deltas_us else None

    return Target(f"≤+{bound_us:g} µs", check)


def ratio_at_least(bound: float) -> Target:
    def check(result: Result, rows: Rows) -> bool | None:
        return _median(result.ratios) >= bound if result.ratios else None

    return Target(f"≥{bound:g}x bare", check)


def at_most_us(bound_us: float) -> Target:
    def check(result: Result, rows: Rows) -> bool | None:
        values = result.values()
        return _median(values) <= bound_us if values else None

    return Target(f"≤{bound_us:g} µs", check)


def target_for(group: str, name: str) -> Target | None:
    """The target row ``group`` / ``name`` is held to, or ``None``."""
    if group in FLOOR_TARGET and name == TG_UNCACHED:
        return uncached(group)
    if group in REPEATED_ADDED_US and name == REPEATED:
        return added(REPEATED_ADDED_US[group])
    if group == STARLETTE and name.startswith(DISTINCT_PREFIX):
        return first_sight()
    if group == SERVER and name == REPEATED:
        return ratio_at_least(SERVER_REPEATED_RATIO)
    if group == INTROSPECTION and name == INTROSPECTION_HIT:
        return at_most_us(INTROSPECTION_HIT_US)
    if group == FLEET_HOT and name == FLEET_WITH_STORE:
        return added(FLEET_STORE_ADDED_US)
    return None


def judge(results: Sequence[Result], *, full: bool) -> None:
    """Set every row's target text, and its verdict in a full run; a quick run keeps no verdict at all.

    Rows that set their own target (memory) keep their text; a quick run clears their verdict too.
    """
    rows = {(result.group, result.name): result for result in results}
    for result in results:
        target = target_for(result.group, result.name)
        if target is not None:
            result.target_text, result.target_ok = target.text, None
            if full:
                result.target_ok = target.check(result, rows)
                if result.target_ok is None:
                    result.target_text = f"{target.text}: {UNJUDGEABLE}"
        elif not full:
            result.target_ok = None


def verdict(result: Result) -> str:
    """The target cell: ``text: ok`` or ``text: MISS`` in a full run, else the text alone (or ``text: n/a``)."""
    if not result.target_text:
        return ""
    if result.target_ok is None:
        return result.target_text
    return f"{result.target_text}: {'ok' if result.target_ok else 'MISS'}"
