"""The benchmark suite's ``dpop`` group: a tiny smoke run end to end, and the derived row's arithmetic.

The smoke run is ``python -m benchmarks --quick --only dpop --rounds 1`` with the rows read back from
its JSON: every case ran against the real guard (a fresh proof per DPoP request, each answered 200),
and a quick run gives no verdict. The arithmetic is checked on made-up rows, with no timing at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmarks import bench_dpop, run, targets
from benchmarks._common import Result


def _rows(path: Path) -> dict[tuple[str, str], dict[str, object]]:
    document = json.loads(path.read_text())
    return {(row["group"], row["case"]): row for row in document["results"]}


def test_quick_dpop_group_runs_and_makes_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same run whether the peer is installed or not (CI installs only the dev extra): pydpop is hidden.
    monkeypatch.setitem(sys.modules, "pydpop", None)
    out = tmp_path / "dpop.json"
    assert run.main(["--quick", "--only", "dpop", "--rounds", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    expected = {
        (bench_dpop.GROUP, bench_dpop.FLOOR),
        (bench_dpop.GROUP, bench_dpop.FLOOR_LOADED),
        (bench_dpop.GROUP, bench_dpop.CHECK_PROOF),
        (bench_dpop.GROUP, bench_dpop.ADDED),
        (bench_dpop.ASGI_GROUP, bench_dpop.BEARER),
        (bench_dpop.ASGI_GROUP, bench_dpop.DPOP),
    }
    assert expected <= set(rows), sorted(rows)
    assert {group for group, _ in rows} == {bench_dpop.GROUP, bench_dpop.ASGI_GROUP}
    for row in rows.values():
        samples = row["samples"]
        assert isinstance(samples, list), row
        assert len(samples) == 1, row
        assert samples[0] > 0, row
        assert row["target"] is None  # no target, and no verdict
        assert row["target_ok"] is None
    assert rows[(bench_dpop.GROUP, bench_dpop.ADDED)]["baseline"] == bench_dpop.FLOOR
    assert rows[(bench_dpop.ASGI_GROUP, bench_dpop.DPOP)]["baseline"] == bench_dpop.BEARER
    assert "MISS" not in printed
    assert ": ok" not in printed
    assert "dpop: a DPoP request adds" in printed
    assert "skipped: pydpop is not installed: its cases are skipped (pip install pydpop)" in printed


def _result(group: str, name: str, unit: str, us: list[float], baseline: str | None = None) -> Result:
    return Result(group, name, unit, seconds=[value / 1e6 for value in us], baseline=baseline)


def test_added_row_is_the_same_round_difference_against_the_floor() -> None:
    results = [
        _result(bench_dpop.GROUP, bench_dpop.FLOOR, "us", [50.0, 60.0, 50.0]),
        _result(bench_dpop.GROUP, bench_dpop.CHECK_PROOF, "us", [90.0, 100.0, 90.0], bench_dpop.FLOOR),
        _result(bench_dpop.ASGI_GROUP, bench_dpop.BEARER, "rps", [15.0, 30.0, 15.0]),
        _result(bench_dpop.ASGI_GROUP, bench_dpop.DPOP, "rps", [115.0, 150.0, 115.0], bench_dpop.BEARER),
    ]
    found = bench_dpop.with_added(results)
    run._compare(found)
    assert [result.name for result in found] == [
        bench_dpop.FLOOR,
        bench_dpop.CHECK_PROOF,
        bench_dpop.ADDED,  # after the last row of its own group, before the ASGI rows
        bench_dpop.BEARER,
        bench_dpop.DPOP,
    ]
    added = found[2]
    assert added.values() == pytest.approx([100.0, 120.0, 100.0])
    assert added.ratios == pytest.approx([2.0, 2.0, 2.0])  # added time / floor, round by round
    assert added.deltas_us == pytest.approx([50.0, 60.0, 50.0])  # beyond the floor
    targets.judge(found, full=True)
    assert all(result.target_ok is None and not result.target_text for result in found)  # no target, no verdict
    assert "2.00x the ES256 verify (50.0 µs)" in bench_dpop.summary(found)


def test_added_row_needs_both_requests_and_the_floor() -> None:
    floor = _result(bench_dpop.GROUP, bench_dpop.FLOOR, "us", [50.0])
    bearer = _result(bench_dpop.ASGI_GROUP, bench_dpop.BEARER, "rps", [15.0])
    assert bench_dpop.with_added([floor, bearer]) == [floor, bearer]
    assert bench_dpop.summary([floor, bearer]) == bench_dpop.NOTE
