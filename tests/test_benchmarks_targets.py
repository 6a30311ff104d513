"""The benchmark suite's verdicts: issue 16's targets in a full run, none at all in a quick one.

No timing is run here: rows are built from made-up per-round seconds, and the suite's own comparison,
judging and table code turns them into verdicts.
"""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks import run, targets
from benchmarks._common import Result

ROUNDS = 3
UNCACHED, FLOOR = "tokenguard validator, uncached", "floor: cryptography verify"
DISTINCT = f"{targets.DISTINCT_PREFIX} (200 cycled)"


def _us(group: str, name: str, us: float, baseline: str | None = None) -> Result:
    return Result(group, name, "us", seconds=[us / 1e6] * ROUNDS, baseline=baseline)


def _rps(group: str, name: str, us_per_request: float, baseline: str | None = "bare app") -> Result:
    return Result(group, name, "rps", seconds=[us_per_request / 1e6] * ROUNDS, baseline=baseline)


def _run(
    *,
    rs256: float = 20.0,
    es256: float = 50.0,
    eddsa: float = 65.0,
    starlette_repeated: float = 2.0,
    fastapi_repeated: float = 5.0,
    first_sight_extra: float = 3.0,
    server_ratio: float = 1.0,
    introspection_hit: float = 1.5,
    peer_us: float = 200.0,
    memory_ok: bool = True,
) -> list[Result]:
    """One run's rows: floors of 15/45/60 µs, bare apps of 6 and 25 µs, and tokenguard's rows as given."""
    results: list[Result] = []
    for alg, floor, mine in (("RS256", 15.0, rs256), ("ES256", 45.0, es256), ("EdDSA", 60.0, eddsa)):
        results.append(_us(alg, FLOOR, floor))
        results += [_us(alg, peer, peer_us, FLOOR) for peer in targets.PEERS]
        results.append(_us(alg, UNCACHED, mine, FLOOR))
    results += [
        _rps(targets.STARLETTE, "bare app", 6.0, None),
        _rps(targets.STARLETTE, targets.REPEATED, 6.0 + starlette_repeated),
        _rps(targets.STARLETTE, DISTINCT, 6.0 + rs256 + first_sight_extra),
        _rps(targets.FASTAPI, "bare app", 25.0, None),
        _rps(targets.FASTAPI, targets.REPEATED, 25.0 + fastapi_repeated),
        _rps(targets.SERVER, "bare app", 40.0, None),
        _rps(targets.SERVER, targets.REPEATED, 40.0 / server_ratio),
        _us(targets.INTROSPECTION, targets.INTROSPECTION_HIT, introspection_hit),
    ]
    memory = Result("memory", "20,000 distinct garbage tokens", "single", value=40.0)
    memory.target_text, memory.target_ok = "<50 MB, ≤1 fetch/cool-down", memory_ok  # set by bench_memory
    run._compare(results)
    return [*results, memory]


def _verdicts(results: list[Result]) -> dict[tuple[str, str], bool | None]:
    return {(result.group, result.name): result.target_ok for result in results if result.target_text}


def test_quick_run_never_says_miss() -> None:
    every_target_missed: dict[str, Any] = {
        "rs256": 40.0,
        "es256": 90.0,
        "eddsa": 90.0,
        "starlette_repeated": 9.0,
        "fastapi_repeated": 17.0,
        "first_sight_extra": 16.0,
        "server_ratio": 0.7,
        "introspection_hit": 2.5,
        "peer_us": 30.0,
        "memory_ok": False,
    }
    results = _run(**every_target_missed)
    targets.judge(results, full=False)
    text = run.table(results)
    assert "MISS" not in text
    assert ": ok" not in text
    assert all(ok is None for ok in _verdicts(results).values())
    # The targets are still shown, so the numbers can be read against them.
    assert "≤1.5x floor, < every peer" in text
    assert "≤+3 µs" in text


def test_full_run_meets_every_restated_target() -> None:
    results = _run()
    targets.judge(results, full=True)
    verdicts = _verdicts(results)
    assert len(verdicts) == 9  # 3 algorithms, Starlette x2, FastAPI, uvicorn, introspection, memory
    del verdicts[("memory", "20,000 distinct garbage tokens")]
    assert all(verdicts.values()), verdicts
    assert "MISS" not in run.table(results)


@pytest.mark.parametrize(
    ("option", "met", "missed", "row"),
    [
        ("rs256", 22.4, 22.6, ("RS256", UNCACHED)),  # ≤ 1.5 x 15 µs
        ("es256", 51.7, 51.8, ("ES256", UNCACHED)),  # ≤ 1.15 x 45 µs
        ("eddsa", 65.9, 66.1, ("EdDSA", UNCACHED)),  # ≤ 1.1 x 60 µs
        ("starlette_repeated", 2.9, 3.1, (targets.STARLETTE, targets.REPEATED)),
        ("fastapi_repeated", 5.9, 6.1, (targets.FASTAPI, targets.REPEATED)),
        ("first_sight_extra", 3.9, 4.1, (targets.STARLETTE, DISTINCT)),
        ("server_ratio", 0.96, 0.94, (targets.SERVER, targets.REPEATED)),
        ("introspection_hit", 1.9, 2.1, (targets.INTROSPECTION, targets.INTROSPECTION_HIT)),
    ],
)
def test_full_run_compares_against_issue_16_targets(
    option: str, met: float, missed: float, row: tuple[str, str]
) -> None:
    for value, expected in ((met, True), (missed, False)):
        results = _run(**{option: value})  # type: ignore[arg-type]
        targets.judge(results, full=True)
        assert _verdicts(results)[row] is expected, (option, value)
        assert ("MISS" in run.table(results)) is not expected


def test_uncached_validator_must_also_beat_every_peer() -> None:
    results = _run(rs256=20.0, peer_us=19.0)  # within 1.5x the floor, but a peer is faster
    targets.judge(results, full=True)
    assert _verdicts(results)[("RS256", UNCACHED)] is False


def test_first_sight_is_measured_against_the_validator_of_the_same_round() -> None:
    results = _run(first_sight_extra=3.0)
    by_key = {(result.group, result.name): result for result in results}
    validator, distinct = by_key[("RS256", UNCACHED)], by_key[(targets.STARLETTE, DISTINCT)]
    # A slow round for both rows: per round the guard adds 3 µs beyond the validator, so the target holds.
    validator.seconds = [20e-6, 20e-6, 60e-6]
    distinct.seconds = [29e-6, 29e-6, 69e-6]
    run._compare(results)
    targets.judge(results, full=True)
    assert _verdicts(results)[(targets.STARLETTE, DISTINCT)] is True


def test_a_target_whose_reference_row_was_not_run_is_not_judged() -> None:
    results = [result for result in _run() if result.group != "RS256"]  # as with --only asgi
    targets.judge(results, full=True)
    distinct = next(result for result in results if result.name == DISTINCT)
    assert distinct.target_ok is None
    assert targets.verdict(distinct).endswith(": n/a")


def test_old_ratio_to_bare_targets_are_gone() -> None:
    results = _run(starlette_repeated=2.0)  # 6 µs bare + 2 µs = 0.75x bare: issue 5 said MISS
    targets.judge(results, full=True)
    text = run.table(results)
    assert "0.85x" not in text
    assert "0.45x" not in text
    assert _verdicts(results)[(targets.STARLETTE, targets.REPEATED)] is True


def test_quick_flag_reaches_the_judge(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--quick`` end to end through ``main``, with the groups replaced by canned rows (no timing)."""
    monkeypatch.setattr(run, "_introspection", lambda rounds: _run(rs256=40.0, starlette_repeated=9.0))
    assert run.main(["--quick", "--only", "introspection"]) == 0
    out = capsys.readouterr().out
    assert "MISS" not in out
    assert out.count(targets.NOT_JUDGED) == 1

    assert run.main(["--only", "introspection"]) == 0
    out = capsys.readouterr().out
    assert "MISS" in out
    assert targets.NOT_JUDGED not in out
