"""The long route differential run: the guard decides exactly what the router will run.

    python scripts/route_differential_long.py [--cases 100000] [--seed 0] [--workers N]
                                              [--requests-per-tree 25] [--extended] [--behaviour-only]

The same generator, app builder and oracle as ``tests/test_route_differential.py`` (they live in
``tests/route_model.py``; see its docstring for the property), driven by seeded ``random`` instead of
hypothesis. One app is built per generated route tree and many requests are run against it; a *case*
is one (tree, request) pair, each sent with a god token, anonymously, and with a token lacking a
required scope / revoked / with a weak authentication where the policy calls for it.

The work is split in chunks of cases, each with its own seed (``seed:chunk``), so a run is the same
whatever ``--workers`` is. Prints progress, the first disagreements (minimised: fewer routes, the
shortest request history that still disagrees), and a final line
``cases=N disagreements=M elapsed=...s``; exits 1 on any disagreement.

``--extended`` also adds routes after the first requests by binding a new list to a router's
``routes`` and by replacing a route in place (beyond the documented ways: appending, add_route).
``--strict-handlers`` refuses the guard adding the marks of a class handler Starlette does not
dispatch for the method (a 405 answered by ``method_not_allowed``; stricter, tolerated by default).
``--behaviour-only`` checks statuses and what ran, not ``scope["tokenguard.requirement"]`` (for a guard
that does not record it).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import route_model as rm

CHUNK = 2_000


def _configure(options: dict[str, Any]) -> None:
    rm.CHECK_APPLIED = not options["behaviour_only"]
    rm.STRICT_HANDLERS = options["strict_handlers"]
    # The guard logs each dispatch-check correction as a warning: the disagreements report them.
    logging.getLogger("tokenguard").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def run_chunk(task: tuple[int, int, int, dict[str, Any]]) -> dict[str, Any]:
    """Run ``target`` cases with the chunk's own seed; the counts and the disagreements found."""
    seed, index, target, options = task
    _configure(options)
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - reproducible test data, not secrets
    source = rm.RandomSource(rng)
    late_modes = rm.LATE_MODES + (rm.EXTRA_LATE_MODES if options["extended"] else ())
    cases, trees = 0, 0
    stats: dict[str, int] = {}
    found: list[dict[str, Any]] = []
    while cases < target:
        tree = rm.gen_tree(source, late_modes=late_modes)
        plan = rm.gen_plan(source, tree, options["requests_per_tree"])
        room = target - cases
        if len(plan.before) + len(plan.after) > room:
            plan = rm.Plan(plan.before[:room], plan.after[: max(0, room - len(plan.before))])
        ran, disagreements = rm.run_plan_sync(tree, plan, stats=stats)
        cases += ran
        trees += 1
        for disagreement in disagreements:
            if len(found) < 20:
                found.append({"disagreement": disagreement, "plan": plan})
            stats["disagreements"] = stats.get("disagreements", 0) + 1
            tag = "disagreements with " + "+".join(disagreement.tags())
            stats[tag] = stats.get(tag, 0) + 1
    stats["trees"] = trees
    return {"cases": cases, "stats": stats, "found": found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000, help="(tree, request) pairs to run (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)")
    parser.add_argument("--requests-per-tree", type=int, default=25, help="requests per generated tree (default 25)")
    parser.add_argument("--show", type=int, default=3, help="disagreements to print, minimised (default 3)")
    parser.add_argument("--extended", action="store_true", help="also rebind route lists and replace routes in place")
    parser.add_argument("--strict-handlers", action="store_true", help="no tolerance for undispatched handlers' marks")
    parser.add_argument("--behaviour-only", action="store_true", help="do not compare scope['tokenguard.requirement']")
    args = parser.parse_args(argv)
    options = {
        "extended": args.extended,
        "strict_handlers": args.strict_handlers,
        "behaviour_only": args.behaviour_only,
        "requests_per_tree": max(1, args.requests_per_tree),
    }
    _configure(options)
    chunks = [
        (args.seed, i, min(CHUNK, args.cases - i * CHUNK), options) for i in range((args.cases + CHUNK - 1) // CHUNK)
    ]
    print(
        f"route differential: cases={args.cases} seed={args.seed} workers={args.workers} "
        f"requests/tree={options['requests_per_tree']} extended={args.extended}",
        flush=True,
    )
    started = time.perf_counter()
    cases = 0
    stats: Counter[str] = Counter()
    found: list[dict[str, Any]] = []
    if args.workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(args.workers)
        results = pool.imap_unordered(run_chunk, chunks)
    else:
        pool = None
        results = map(run_chunk, chunks)
    try:
        for done, result in enumerate(results, 1):
            cases += result["cases"]
            stats.update(result["stats"])
            found += result["found"]
            if done % 5 == 0 or done == len(chunks):
                elapsed = time.perf_counter() - started
                print(
                    f"  {cases:>8} cases  {stats['trees']:>6} trees  {stats['disagreements']} disagreements  "
                    f"{elapsed:7.1f}s  ({cases / max(elapsed, 1e-9):.0f} cases/s)",
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - started
    print(
        f"outcomes with the god token: endpoint ran {stats['ran']}, FastAPI docs {stats['docs']}, "
        f"no endpoint (404/405/redirect) {stats['none']}; undispatched handler's marks tolerated {stats['tolerated']}"
    )
    for name, count in sorted(stats.items()):
        if name.startswith("disagreements with "):
            print(f"  {name}: {count}")
    for number, item in enumerate(found[: args.show], 1):
        disagreement = item["disagreement"]
        tree, plan = rm.shrink(disagreement.tree, disagreement, item["plan"])
        _, again = rm.run_plan_sync(tree, plan, stop_at_first=True)
        shown = again[0] if again else disagreement
        print(f"\n--- disagreement {number} (minimised) ---")
        print(shown.describe())
    disagreements = stats["disagreements"]
    print(f"\ncases={cases} disagreements={disagreements} elapsed={elapsed:.1f}s")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
