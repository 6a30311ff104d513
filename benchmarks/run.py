"""Run the benchmark suite and print one table: ``python -m benchmarks [--quick] [--rounds N] [--json FILE]``.

Every case is calibrated once to a batch of a fixed duration, then the cases run round-robin for N
rounds (the starting case rotates each round), so machine noise hits all of them alike. For each case
the table shows the median and the interquartile range over the rounds, and the median of the
per-round ratios to the group's baseline measured in the same round. Once the run is in, the rows are
held to issue 16's targets (``benchmarks.targets``); only a full run gets ``ok``/``MISS`` verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/run.py``: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import targets
from benchmarks._common import SKIPPED, Case, Keys, Result

GROUPS = ("validation", "asgi", "dpop", "introspection", "mcp", "memory", "server", "fleet")
#: Groups that start processes of their own: run only when named (``--only``, ``--server``).
ON_REQUEST = frozenset({"server", "fleet"})
#: Distributions whose versions head the table (tokenguard's distribution is ``tokenguard-asgi``).
_PACKAGES = (
    "tokenguard-asgi",
    "PyJWT",
    "cryptography",
    "joserfc",
    "Authlib",
    "pydpop",
    "starlette",
    "fastapi",
    "httpx",
    "uvicorn",
    "mcp",
    "fastmcp",
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _call(case: Case, n: int, loop: asyncio.AbstractEventLoop) -> float:
    outcome = case.batch(n)
    if inspect.isawaitable(outcome):
        return float(loop.run_until_complete(outcome))
    return float(outcome)


def calibrate(case: Case, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
    """Find the batch size that takes about ``seconds``, after a warm-up batch."""
    n = 1
    while True:
        elapsed = _call(case, n, loop)
        if elapsed >= seconds / 5 or n >= 10_000_000:
            break
        n *= 8 if elapsed < seconds / 50 else 2
    case.n = max(1, round(n * seconds / max(elapsed, 1e-9)))


def round_robin(cases: Sequence[Case], rounds: int, seconds: float, loop: asyncio.AbstractEventLoop) -> list[Result]:
    """Calibrate, then run every case once per round, rotating the order; seconds per operation per round."""
    for index, case in enumerate(cases, 1):
        _log(f"  calibrating {index}/{len(cases)}: {case.group} / {case.name}")
        calibrate(case, seconds, loop)
    results = [Result(case.group, case.name, case.unit, baseline=case.baseline) for case in cases]
    for number in range(rounds):
        _log(f"  round {number + 1}/{rounds}")
        shift = number % len(cases)
        for index in [*range(shift, len(cases)), *range(shift)]:
            case = cases[index]
            gc.collect()
            results[index].seconds.append(_call(case, case.n, loop) / case.n)
    _compare(results)
    return results


def _compare(results: list[Result]) -> None:
    """Per-round ratios (case / baseline in display units) and per-operation deltas, same round only."""
    by_key = {(result.group, result.name): result for result in results}
    for result in results:
        if result.baseline is None:
            continue
        base = by_key[(result.group, result.baseline)]
        pairs = list(zip(result.seconds, base.seconds, strict=True))
        if result.unit == "rps":
            result.ratios = [theirs / mine for mine, theirs in pairs]
        else:
            result.ratios = [mine / theirs for mine, theirs in pairs]
        result.deltas_us = [(mine - theirs) * 1e6 for mine, theirs in pairs]


# -- the table -----------------------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _number(value: float, unit: str) -> str:
    if unit == "rps":
        return f"{value:,.0f}/s"
    return f"{value:,.1f} µs" if value < 1000 else f"{value:,.0f} µs"


def _bare(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "rps" or value >= 1000 else f"{value:,.1f}"


def _row(result: Result) -> list[str]:
    target = targets.verdict(result)
    if result.value is not None:
        return [result.group, result.name, f"{result.value:+,.1f} MB", "—", "—", "—", target]
    values = result.values()
    if not values:
        return [result.group, result.name, "—", "—", "—", "—", result.note]
    q1, median, q3 = _quartiles(values)
    spread = f"{_bare(q1, result.unit)} - {_bare(q3, result.unit)}"
    if result.baseline is None:
        return [result.group, result.name, _number(median, result.unit), spread, "baseline", "", target]
    r1, ratio, r3 = _quartiles(result.ratios)
    delta = statistics.median(result.deltas_us)
    return [
        result.group,
        result.name,
        _number(median, result.unit),
        spread,
        f"{ratio:.2f}x [{r1:.2f}-{r3:.2f}]",
        f"{delta:+,.1f} µs",
        target,
    ]


HEADER = ["group", "case", "median", "spread (IQR)", "vs baseline [IQR]", "Δ per op", "target"]


def table(results: Sequence[Result]) -> str:
    rows = [HEADER] + [_row(result) for result in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    right = {2, 3, 4, 5}

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines, previous = [line(rows[0]), rule], None
    for result, row in zip(results, rows[1:], strict=True):
        if previous is not None and result.group != previous:
            lines.append("")
        previous = result.group
        lines.append(line(row))
    return "\n".join(lines)


def _versions() -> str:
    found = []
    for name in _PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _describe(args: argparse.Namespace, rounds: int) -> str:
    python = f"{platform.python_implementation()} {platform.python_version()}"
    machine = f"{python}, {platform.system()} {platform.machine()}"
    mode = "quick" if args.quick else "full"
    return f"{machine}, {os.cpu_count()} CPUs; {mode} run, {rounds} interleaved rounds\n{_versions()}"


# -- groups that are not plain round-robin cases ---------------------------------------------------


def _introspection(rounds: int) -> list[Result]:
    """Rows from ``benchmarks.bench_introspection.run(rounds)``, when that module exists."""
    try:
        module = importlib.import_module("benchmarks.bench_introspection")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.bench_introspection":
            raise
        _log("  benchmarks/bench_introspection.py not found: introspection skipped")
        return []
    rows = module.run(rounds)
    return [_foreign(row) for row in rows]


def _foreign(row: dict[str, Any]) -> Result:
    """A result dict from another module: ``group``, ``case`` (or ``name``), ``unit``, ``samples``, ``baseline``.

    ``samples`` are per-round values in display units (µs per operation for ``"us"``/``"µs"``/``"µs/op"``,
    requests per second for ``"rps"``/``"req/s"``); a row may give ``median``/``q1``/``q3`` instead.
    """
    unit = "rps" if str(row.get("unit", "us")).lower() in ("rps", "req/s", "requests/s") else "us"
    result = Result(str(row.get("group", "introspection")), str(row.get("case", row.get("name", "?"))), unit)
    result.baseline = row.get("baseline")
    result.note = str(row.get("note", ""))
    samples = row.get("samples", row.get("samples_us", row.get("values")))
    if samples is None and row.get("median", row.get("median_us")) is not None:
        samples = [row.get("median", row.get("median_us"))]
    samples = [float(value) for value in samples or []]
    result.seconds = [1.0 / value if unit == "rps" else value / 1e6 for value in samples]
    return result


def _with_baselines(results: list[Result]) -> list[Result]:
    """Ratios for foreign rows whose baseline is in the same list with as many rounds; the rest stand alone."""
    by_key = {(result.group, result.name): result for result in results}
    for result in results:
        base = by_key.get((result.group, result.baseline)) if result.baseline is not None else None
        if base is None or len(base.seconds) != len(result.seconds):
            result.baseline = None
    _compare(results)
    return results


# -- entry point -----------------------------------------------------------------------------------


def _fast_loop() -> asyncio.AbstractEventLoop:
    """uvloop for the load generator when it is installed (the server gets it from uvicorn too), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in seconds: 3 short rounds, small counts, targets shown but not judged",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, or 3 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="also write every per-round sample to FILE")
    parser.add_argument("--server", action="store_true", help="add the uvicorn cases, 1 and 2 workers (80 s more)")
    parser.add_argument(
        "--memory-requests",
        type=int,
        metavar="N",
        help="requests in the memory case (default 1,000,000, or 20,000 with --quick)",
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help=f"comma-separated subset of {','.join(GROUPS)} (server and fleet start processes: only when named)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the table: cProfile of tokenguard's uncached validator, per algorithm",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    selected = set(GROUPS) - ON_REQUEST if args.only is None else set(args.only.split(","))
    if args.server:
        selected.add("server")
    unknown = selected - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    args.groups = selected
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if args.profile:
            from benchmarks.profile_validator import profile

            profile(loop, quick=args.quick)
            return 0
        return _run(args, rounds, loop)
    finally:
        loop.close()


def _run(args: argparse.Namespace, rounds: int, loop: asyncio.AbstractEventLoop) -> int:
    started = time.perf_counter()
    _log(f"tokenguard benchmarks: {rounds} rounds, groups {', '.join(g for g in GROUPS if g in args.groups)}")
    keys = Keys()
    distinct = 200 if args.quick else 2000
    results: list[Result] = []
    notes: list[tuple[str, Callable[[], str]]] = []
    failures: list[str] = []

    def attempt(name: str, step: Callable[[], list[Result]]) -> None:
        if name not in args.groups:
            return
        _log(f"{name}:")
        try:
            results.extend(step())
        except Exception:
            failures.append(f"{name}: {traceback.format_exc()}")
            _log(f"  {name} failed:\n{traceback.format_exc()}")

    def in_process() -> list[Result]:
        from benchmarks import bench_asgi, bench_validation

        cases: list[Case] = []
        if "validation" in args.groups:
            cases += bench_validation.cases(keys, loop)
        if "asgi" in args.groups:
            cases += bench_asgi.cases(keys, loop, distinct=distinct)
        return round_robin(cases, rounds, 0.02 if args.quick else 0.15, loop)

    def dpop() -> list[Result]:
        from benchmarks import bench_dpop

        cases = bench_dpop.cases(keys, loop, pool=distinct)
        found = bench_dpop.with_added(round_robin(cases, rounds, 0.02 if args.quick else 0.15, loop))
        _compare(found)
        notes.append(("dpop", lambda: bench_dpop.summary(found)))
        return found

    def server() -> list[Result]:
        from benchmarks import bench_server

        bundle = bench_server.cases(keys, distinct=distinct)
        server_loop = _fast_loop()
        try:
            found = round_robin(bundle.cases, rounds, 0.4 if args.quick else 1.5, server_loop)
        finally:
            bundle.close()
            server_loop.close()
            asyncio.set_event_loop(loop)
        notes.extend(bundle.notes())
        notes.append(
            (
                "uvicorn",
                lambda: (
                    f"1 worker, and 2 workers (a supervisor + 2 worker processes), {bench_server.server_stack()}, "
                    f"{bench_server.CONNECTIONS} keep-alive connections from a load generator in this process, "
                    "127.0.0.1 only"
                ),
            )
        )
        order = [group for pair in bench_server.GROUPS.values() for group in pair]  # each req/s, then its CPU
        rows = found + _with_baselines(bundle.cpu_results(rounds))
        return sorted(rows, key=lambda result: order.index(result.group))

    def mcp() -> list[Result]:
        from benchmarks import bench_mcp

        bundle = bench_mcp.Bundle(keys, loop)  # every app's lifespan runs until close()
        try:
            return round_robin(bundle.cases, rounds, 0.02 if args.quick else 0.15, loop) if bundle.cases else []
        finally:
            bundle.close()

    def memory() -> list[Result]:
        from benchmarks import bench_memory

        requests = args.memory_requests or (20_000 if args.quick else 1_000_000)
        found = bench_memory.run(keys, loop, requests)
        notes.append((f"memory / {found.name}", lambda: found.note))
        return [found]

    def fleet() -> list[Result]:
        from benchmarks import bench_fleet

        setup = bench_fleet.Fleet()
        try:
            try:
                redis_url = setup.start_redis()
            except bench_fleet.Unavailable as exc:
                bench_fleet.skipped(str(exc))
                return []
            hot = bench_fleet.HotPath(keys, loop, redis_url)
            try:
                hot_rows = round_robin(hot.cases, rounds, 0.02 if args.quick else 0.15, loop)
            finally:
                hot.close()
            if hot.request_path_commands():
                raise AssertionError(f"the JWT hot path sent commands to Redis: {dict(hot.commands)}")
            setup.start_workers(_log)
            calls = _with_baselines(setup.calls_per_token(rounds, _log))
        finally:
            setup.close()
        notes.append(("fleet", lambda: bench_fleet.summary(hot_rows, setup.calls, hot)))
        return hot_rows + calls

    if args.groups & {"validation", "asgi"}:
        attempt("validation" if "validation" in args.groups else "asgi", in_process)
    attempt("dpop", dpop)
    attempt("introspection", lambda: _with_baselines(_introspection(rounds)))
    attempt("mcp", mcp)
    attempt("server", server)
    attempt("memory", memory)
    attempt("fleet", fleet)

    judged = not args.quick
    targets.judge(results, full=judged)
    print(f"\ntokenguard benchmarks — {_describe(args, rounds)}")
    if not judged:
        print(targets.NOT_JUDGED)
    print()
    print(table(results))
    print()
    print(f"  targets: {targets.SOURCE}")
    if judged and any(result.target_text.endswith(f": {targets.UNJUDGEABLE}") for result in results):
        print(f"  {targets.UNJUDGEABLE_NOTE}")
    for label, note in notes:
        print(f"  {label}: {note()}")
    for skipped in SKIPPED:
        print(f"  skipped: {skipped}")
    for result in results:
        if result.note and result.group not in ("memory",) and result.value is None:
            print(f"  {result.group} / {result.name}: {result.note}")
    elapsed = time.perf_counter() - started
    print(
        f"\nµs rows: lower is better, ratio = case / baseline; req/s rows: higher is better, ratio = case / baseline."
        f"\nΔ per op: time added per operation over the baseline, same round. Total time {elapsed:.0f} s."
    )
    if args.json:
        _write_json(args.json, results, args, rounds, elapsed, judged=judged)
    for failure in failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def _write_json(
    path: str, results: Sequence[Result], args: argparse.Namespace, rounds: int, elapsed: float, *, judged: bool
) -> None:
    rows = []
    for result in results:
        values = result.values()
        row: dict[str, Any] = {
            "group": result.group,
            "case": result.name,
            "unit": {"us": "µs/op", "rps": "req/s"}.get(result.unit, result.value_unit),
            "baseline": result.baseline,
            "samples": values,
            "ratios": result.ratios,
            "deltas_us": result.deltas_us,
            "note": result.note,
            "target": result.target_text or None,
            "target_ok": result.target_ok,
        }
        if values:
            row["q1"], row["median"], row["q3"] = _quartiles(values)
            row["min"], row["max"] = min(values), max(values)
        if result.ratios:
            row["ratio_q1"], row["ratio_median"], row["ratio_q3"] = _quartiles(result.ratios)
        if result.value is not None:
            row["value"] = result.value
        rows.append(row)
    document = {
        "environment": _describe(args, rounds),
        "rounds": rounds,
        "seconds": elapsed,
        "targets": targets.SOURCE,
        "targets_judged": judged,
        "results": rows,
    }
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
