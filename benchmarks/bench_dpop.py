"""What a DPoP request (RFC 9449) costs over a Bearer one, against the ES256 verify that is its floor (issue 13).

Every DPoP request carries a proof signed by the client, fresh for that request: the server verifies it
with the public key the proof itself carries, so the least a resource server does per request is one
ES256 verify with a key it has never prepared. The cases:

- **floor**: ``cryptography``'s ES256 verify of one proof's signature, key prepared once (r‖s → DER
  included), as the ES256 floor of ``bench_validation``; and the same verify with the P-256 key loaded
  from its point for every proof, which is what a verifier without a key cache cannot avoid;
- **check_proof**: ``tokenguard._dpop.check_proof`` on a pool of distinct proofs (each its own ``jti``,
  all made before timing with ``DPoPKey``, ``iat`` within the window of a fixed ``now``), cycled;
- **pydpop** (when installed): ``pydpop.verify_proof`` on the same pool, the only Python library found
  that verifies DPoP proofs on its own (see benchmarks/README.md);
- **in-process Starlette + TokenGuard**, a repeated token either way (a verified-cache hit): a Bearer
  token, and a DPoP-bound token (``cnf.jkt``) with a fresh proof per request. The proofs of a batch are
  made before its timer starts and none is ever sent twice, so the replay store (a ``MemoryStore``
  sized for the whole run) accepts each one: the measured path includes the ``jti`` insert;
- **added per request**: per round, the DPoP request minus the Bearer request, as a row of the ES256
  group, so its ratio is *(time DPoP adds) / (ES256 verify)* and its Δ is what DPoP adds beyond it.

Issue 13 sets no target beyond "an ES256 verify is the floor": these rows are printed without verdicts.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.types import ASGIApp, Message

from benchmarks._common import Case, IssuerTransport, Keys, Result, mint, optional
from benchmarks.bench_asgi import _SCOPE, PATH, _receive, guarded, starlette_app
from benchmarks.bench_validation import _b64, _loop_batch, _raw_verifier
from tokenguard._dpop import check_proof
from tokenguard.dpop import DPoPKey
from tokenguard.store import MemoryStore

GROUP = "DPoP ES256"
ASGI_GROUP = "DPoP ASGI Starlette"
FLOOR = "floor: cryptography ES256 verify"
FLOOR_LOADED = "floor + P-256 key loaded per proof"
CHECK_PROOF = "tokenguard check_proof, distinct proofs"
PYDPOP = "pydpop verify_proof, distinct proofs"
BEARER = "+ TokenGuard, Bearer token"
DPOP = "+ TokenGuard, DPoP-bound token + fresh proof"
ADDED = "Starlette: DPoP request - Bearer request"
NOTE = "issue 13 sets no target beyond 'an ES256 verify is the floor', so these rows get no verdict"

HOST = "api.example.com"
URL = f"http://{HOST}{PATH}"  # what the guard rebuilds from the harness's scope and Host header
METHOD = "GET"
#: The guard's proof window (its default ``dpop_iat_window`` + ``leeway``), passed to ``check_proof`` alone too.
IAT_WINDOW, LEEWAY = 60.0, 30.0

Headers = list[tuple[bytes, bytes]]


class Proofs:
    """Fresh proofs for one key and access token, never the same ``jti`` twice, ``iat`` from ``clock``."""

    def __init__(self, key: DPoPKey, access_token: str, clock: Callable[[], float] = time.time) -> None:
        self.key, self.access_token, self.clock = key, access_token, clock

    def take(self, n: int) -> list[str]:
        """``n`` new proofs, each with its own ``jti`` (``DPoPKey`` draws 128 random bits)."""
        iat = int(self.clock())
        return [self.key.proof(METHOD, URL, access_token=self.access_token, iat=iat) for _ in range(n)]


class RequestHarness:
    """Drives one ASGI app with the header lists ``headers(n)`` makes before the timer starts.

    The timed loop is the same for every app: a fresh scope dict per request, an empty body, the status
    recorded and checked. Bearer and DPoP rows therefore differ only in what the guard does.
    """

    def __init__(self, app: ASGIApp, headers: Callable[[int], list[Headers]], expect: int = 200) -> None:
        self.app, self.headers, self.expect = app, headers, expect
        self.status = 0

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]

    async def statuses(self, requests: Sequence[Headers]) -> list[int]:
        """One status per request, untimed: for the checks made before timing."""
        found = []
        for headers in requests:
            self.status = 0
            await self.app({**_SCOPE, "headers": headers}, _receive, self._send)
            found.append(self.status)
        return found

    async def batch(self, n: int) -> float:
        requests = self.headers(n)  # proofs are signed here, before the timer
        app, send, expect = self.app, self._send, self.expect
        unexpected = 0
        start = time.perf_counter()
        for headers in requests:
            self.status = 0
            await app({**_SCOPE, "headers": headers}, _receive, send)
            unexpected += self.status != expect
        elapsed = time.perf_counter() - start
        if unexpected:
            raise AssertionError(f"{unexpected} of {n} requests did not answer {expect}")
        return elapsed


def _bearer_headers(token: str) -> Callable[[int], list[Headers]]:
    headers = [(b"host", HOST.encode()), (b"authorization", b"Bearer " + token.encode("ascii"))]
    return lambda n: [headers] * n


def _dpop_headers(token: str, proofs: Proofs) -> Callable[[int], list[Headers]]:
    host, authorization = (b"host", HOST.encode()), (b"authorization", b"DPoP " + token.encode("ascii"))
    return lambda n: [[host, authorization, (b"dpop", proof.encode("ascii"))] for proof in proofs.take(n)]


def _proof_cases(key: DPoPKey, public: ec.EllipticCurvePublicKey, token: str, pool: int) -> list[Case]:
    """The floor, ``check_proof`` and (when installed) pydpop on ``pool`` distinct proofs of a fixed ``now``."""
    now = float(int(time.time()))
    proofs = Proofs(key, token, clock=lambda: now).take(pool)
    assert len({proof.split(".")[1] for proof in proofs}) == pool  # distinct jti, so distinct payloads

    verify = _raw_verifier("ES256", public)  # prepared once, as for the ES256 access-token floor
    signing_input, _, signature_b64 = proofs[0].rpartition(".")
    data, signature = signing_input.encode("ascii"), _b64(signature_b64)
    verify(signature, data)
    # What a verifier without a key cache cannot avoid: each proof brings its key, so the P-256 point is
    # loaded (and checked to be on the curve) for every proof before the same verify.
    point = b"\x04" + _b64(key.public_jwk["x"]) + _b64(key.public_jwk["y"])
    curve, ecdsa = ec.SECP256R1(), ec.ECDSA(hashes.SHA256())
    signed = itertools.cycle([(_b64(proof.rpartition(".")[2]), proof.rpartition(".")[0].encode()) for proof in proofs])

    def verify_loaded() -> None:
        sig, message = next(signed)
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        ec.EllipticCurvePublicKey.from_encoded_point(curve, point).verify(der, message, ecdsa)

    verify_loaded()

    def checked(proof: str) -> Any:
        return check_proof(
            proof, method=METHOD, url=URL, access_token=token, now=now, iat_window=IAT_WINDOW, leeway=LEEWAY
        )

    assert {checked(proof).jkt for proof in proofs} == {key.thumbprint}
    cycle = itertools.cycle(proofs)
    cases = [
        Case(GROUP, FLOOR, "us", _loop_batch(lambda: verify(signature, data))),
        Case(GROUP, FLOOR_LOADED, "us", _loop_batch(verify_loaded), baseline=FLOOR),
        Case(GROUP, CHECK_PROOF, "us", _loop_batch(lambda: checked(next(cycle))), baseline=FLOOR),
    ]
    return cases + optional("pydpop", lambda: [_pydpop_case(key, token, proofs, now)], hint="pip install pydpop")


def _pydpop_case(key: DPoPKey, token: str, proofs: list[str], now: float) -> Case:
    """``pydpop.verify_proof`` with the same request, token and ``now``; no jti store (neither has check_proof)."""
    from pydpop import verify_proof

    def verified(proof: str) -> Any:
        return verify_proof(proof=proof, htm=METHOD, htu=URL, access_token=token, now=int(now), clock_skew=90)

    assert {verified(proof)["jwk_thumbprint"] for proof in proofs} == {key.thumbprint}
    cycle = itertools.cycle(proofs)
    return Case(GROUP, PYDPOP, "us", _loop_batch(lambda: verified(next(cycle))), baseline=FLOOR)


def _asgi_cases(
    keys: Keys, key: DPoPKey, loop: asyncio.AbstractEventLoop, *, replay_entries: int, warmup: int
) -> list[Case]:
    """Starlette + TokenGuard, a repeated token: Bearer, and DPoP-bound with a fresh proof per request."""
    transport = IssuerTransport(keys.jwks())
    bearer_token = mint(keys, "RS256")
    bound_token = mint(keys, "RS256", cnf={"jkt": key.thumbprint})
    proofs = Proofs(key, bound_token)

    def app() -> Any:  # the same options for both: a replay store large enough never to fill
        return guarded(starlette_app(), transport, replay_store=MemoryStore(max_entries=replay_entries))

    bearer = RequestHarness(app(), _bearer_headers(bearer_token))
    dpop = RequestHarness(app(), _dpop_headers(bound_token, proofs))
    # Warm both (builds the middleware stack, fetches the JWKS, fills the verified and route caches),
    # then check the DPoP path is the real one: a proof sent twice is refused by the replay store, and
    # the bound token is refused as a Bearer token (RFC 9449 §7.2).
    for harness in (bearer, dpop):
        statuses = loop.run_until_complete(harness.statuses(harness.headers(warmup)))
        if set(statuses) != {200}:
            raise AssertionError(f"{ASGI_GROUP}: warm-up requests answered {sorted(set(statuses))}, not 200")
    replayed = dpop.headers(1) * 2
    if loop.run_until_complete(dpop.statuses(replayed)) != [200, 401]:
        raise AssertionError(f"{ASGI_GROUP}: a replayed proof was not refused")
    if loop.run_until_complete(dpop.statuses(_bearer_headers(bound_token)(1))) != [401]:
        raise AssertionError(f"{ASGI_GROUP}: a DPoP-bound token was accepted as a Bearer token")
    return [
        Case(ASGI_GROUP, BEARER, "rps", bearer.batch),
        Case(ASGI_GROUP, DPOP, "rps", dpop.batch, baseline=BEARER),
    ]


def cases(
    keys: Keys,
    loop: asyncio.AbstractEventLoop,
    *,
    pool: int,
    replay_entries: int = 1_000_000,
    warmup: int = 50,
) -> list[Case]:
    """Every DPoP case for one client key (ES256): ``pool`` distinct proofs for the proof-only rows.

    ``replay_entries`` bounds the guard's ``MemoryStore``: every proof of the run stays live in it (its
    lifetime is 2 x (60 + 30) s), so it must hold every request the DPoP row will send.
    """
    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private, "ES256")
    token = mint(keys, "RS256", cnf={"jkt": key.thumbprint})
    return _proof_cases(key, private.public_key(), token, pool) + _asgi_cases(
        keys, key, loop, replay_entries=replay_entries, warmup=warmup
    )


def with_added(results: list[Result]) -> list[Result]:
    """``results`` with the derived row placed after the last row of the ES256 group.

    Its per-round seconds are the DPoP request's minus the Bearer request's of the same round; its
    baseline is the floor, so once ratios are computed (``run._compare``) the ratio column is the time
    DPoP adds over the ES256 verify. Unchanged when a row it needs is missing.
    """
    by_name = {(result.group, result.name): result for result in results}
    bearer, dpop = by_name.get((ASGI_GROUP, BEARER)), by_name.get((ASGI_GROUP, DPOP))
    if bearer is None or dpop is None or (GROUP, FLOOR) not in by_name:
        return results
    added = Result(GROUP, ADDED, "us", baseline=FLOOR)
    added.seconds = [mine - theirs for mine, theirs in zip(dpop.seconds, bearer.seconds, strict=True)]
    last = max(index for index, result in enumerate(results) if result.group == GROUP)
    return [*results[: last + 1], added, *results[last + 1 :]]


def summary(results: Sequence[Result]) -> str:
    """One line for under the table: what DPoP adds per request, against the floor; no verdict."""
    by_name = {(result.group, result.name): result for result in results}
    added, floor = by_name.get((GROUP, ADDED)), by_name.get((GROUP, FLOOR))
    if added is None or floor is None or not added.ratios:
        return NOTE
    added_us = statistics.median(added.values())
    floor_us = statistics.median(floor.values())
    return (
        f"a DPoP request adds {added_us:,.1f} µs over a Bearer one ('{ADDED}': per round, the difference of the "
        f"{ASGI_GROUP} rows) = {statistics.median(added.ratios):.2f}x the ES256 verify ({floor_us:,.1f} µs), "
        f"{statistics.median(added.deltas_us):+,.1f} µs beyond it; {NOTE}"
    )
