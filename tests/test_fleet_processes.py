"""Fleet mode with real processes: one redis-server, one DevIdP over HTTP, four uvicorn processes of one app.

Everything here talks over real sockets: the DevIdP (``tokenguard.testing.DevIdP`` served by uvicorn in a
thread of this process, so its event ledger can be read to count introspection calls) on
``http://127.0.0.1:PORT``; the app ``tests/fleet_app.py`` run by ``uvicorn tests.fleet_app:app`` four
times, each process on its own port. Four processes on four ports rather than ``uvicorn --workers 4``:
with ``--workers`` the kernel picks the worker of each connection, so a test could neither spread its
requests over every worker for sure nor ask each worker in turn whether it refuses a revoked token;
with one port per process it can do both, and the processes share nothing but Redis, as a fleet does.

What is checked:

- fleet-wide single-flight: 40 concurrent requests with one new opaque token to the ``@sensitive`` route,
  10 to each process, make exactly one introspection call at the DevIdP (and the four processes' own
  counters agree); the control, four processes without ``shared_store``, makes four;
- revocation pushed by the DevIdP's Shared Signals stream to ONE process (RFC 7009 ``/revoke`` of a JWT
  access token → a CAEP session-revoked SET with a ``jwt_id`` subject) is refused within 1 s by EVERY
  process on the ORDINARY route, where the JWT is validated locally; likewise ``guard.revoke()`` called
  in one process (``POST /admin/revoke``); the control refuses it in the revoking process only.

Readiness is a line each process prints once it listens, read by a thread, with deadlines; every
process is stopped in a ``finally``. Skipped only when ``redis-server`` is not installed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("redis")

from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEV_USER_GRANT, DevIdP
from tokenguard.testing import _processes as processes

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
CONCURRENT = 40
STARTUP = 30.0  # seconds a process may take to listen, on a loaded 2-core machine
PROPAGATION = 1.0  # seconds within which every process must refuse a revoked token
PUSH_AUTHORIZATION = "Bearer fleet-test-push-secret-0123456789"
ADMIN_SECRET = "fleet-test-admin-secret"
SSF_AUDIENCE = "dev-api"  # the guard's client_id, as the SETs' aud
CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
#: The Redis database of this module: keys apart from the other Redis tests' on the session's server.
DATABASE = 3
#: One client for the whole module: a new one costs ≈ 40 ms (its TLS context), which would be counted in
#: the latencies measured here; its connections are kept alive too.
HTTP = httpx.Client(timeout=10)


# -- the DevIdP, served over HTTP from a thread of this process --------------------------------------------


#: Opaque tokens for their own audience: the ones only introspection can check.
OPAQUE_AUDIENCE = "https://opaque.fleet.test"


def _devidp(issuer: str) -> DevIdP:
    idp = DevIdP(issuer)
    idp.add_audience(OPAQUE_AUDIENCE, format="opaque")
    return idp


class ServedIdP(processes.ServedIdP):
    """The shared served ``DevIdP`` (issuer ``http://127.0.0.1:PORT``), with an audience of opaque tokens."""

    opaque_audience = OPAQUE_AUDIENCE

    def __init__(self) -> None:
        super().__init__(make=_devidp)

    def introspections(self, token: str) -> int:
        """How many times the DevIdP answered an introspection request about ``token`` (its ledger's events)."""
        grant = self.idp.grant_of(token)
        assert grant is not None, "the DevIdP does not know this token"
        ids = {state.id for state in grant.access_tokens}
        return sum(1 for event in self.idp.events if event.kind == "introspected" and event.detail.get("token") in ids)


# -- the app's processes -----------------------------------------------------------------------------------


class AppProcess(processes.UvicornProcess):
    """``uvicorn tests.fleet_app:app --port 0`` from the repository root, configured by ``env``."""

    def __init__(self, env: dict[str, str]) -> None:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("FLEET_")}
        super().__init__(
            "tests.fleet_app:app", "--no-access-log", "--log-level", "info", env={**environment, **env}, cwd=ROOT
        )

    def ready(self, deadline: float) -> str:
        # uvicorn runs the lifespan startup (the guard reads the revocation feed) before it binds.
        self.wait_for(r"Application startup complete", deadline)
        return super().ready(deadline)


@contextmanager
def fleet(env: dict[str, str], count: int = PROCESSES) -> Iterator[list[AppProcess]]:
    """``count`` processes of the app, started together; yields them once every one listens."""
    processes = [AppProcess(env) for _ in range(count)]
    try:
        deadline = time.monotonic() + STARTUP
        for process in processes:
            process.ready(deadline)
        yield processes
    finally:
        for process in processes:
            process.stop()


def _flush(port: int, database: int) -> None:
    """``SELECT database`` + ``FLUSHDB`` in raw RESP: this module's keys gone, before and after."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"SELECT {database}\r\nFLUSHDB\r\n".encode())
        received = b""
        while received.count(b"\r\n") < 2:
            chunk = sock.recv(64)
            if not chunk:
                break
            received += chunk
        assert received == b"+OK\r\n+OK\r\n", received


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture(scope="module")
def idp() -> Iterator[ServedIdP]:
    served = ServedIdP()
    served.start(STARTUP)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def shared_url(redis_server: str) -> Iterator[str]:
    url = redis_server.rsplit("/", 1)[0] + f"/{DATABASE}"
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    _flush(port, DATABASE)
    yield url
    _flush(port, DATABASE)


def app_env(idp: ServedIdP, shared_store: str | None, *, audience: str) -> dict[str, str]:
    env = {
        "FLEET_ISSUER": idp.issuer,
        "FLEET_AUDIENCE": audience,
        "FLEET_ADMIN_SECRET": ADMIN_SECRET,
        "FLEET_SSF_AUTHORIZATION": PUSH_AUTHORIZATION,
        "FLEET_SSF_AUDIENCE": SSF_AUDIENCE,
    }
    if shared_store is not None:
        env["FLEET_SHARED_STORE"] = shared_store
    return env


@pytest.fixture(scope="module")
def shared_fleet(idp: ServedIdP, shared_url: str) -> Iterator[list[AppProcess]]:
    """Four processes with ``shared_store``, each a Shared Signals receiver; the DevIdP pushes to the first."""
    env = app_env(idp, shared_url, audience=f"{idp.idp.default_audience} {idp.opaque_audience}")
    with fleet(env) as processes:
        stream = idp.idp.add_stream(
            push_url=f"{processes[0].url}/ssf/events", authorization=PUSH_AUTHORIZATION, audience=SSF_AUDIENCE
        )
        try:
            yield processes
        finally:
            idp.idp.remove_stream(stream)


# -- helpers -----------------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def access_token(idp: ServedIdP, **form: str) -> str:
    """A token from the DevIdP's token endpoint over HTTP, for ``dev-client`` (client_secret_basic)."""
    response = HTTP.post(f"{idp.issuer}/token", data={"grant_type": "client_credentials", **form}, auth=CLIENT)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def introspection_calls(processes: list[AppProcess]) -> list[int]:
    """Each process's own count of introspection calls it made (``guard.status()``)."""
    counts = []
    for process in processes:
        status = HTTP.get(f"{process.url}/status").json()["status"]
        counts.append(int(status["introspection"]["calls"]))
    return counts


async def _burst(processes: list[AppProcess], path: str, token: str) -> list[tuple[int, int]]:
    """``CONCURRENT`` requests at once, spread evenly over the processes: (status, answering pid) each."""
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:

        async def one(index: int) -> tuple[int, int]:
            response = await client.get(f"{processes[index % len(processes)].url}{path}", headers=bearer(token))
            return response.status_code, response.json().get("pid", 0) if response.status_code == 200 else 0

        return await asyncio.gather(*(one(index) for index in range(CONCURRENT)))


def burst(processes: list[AppProcess], path: str, token: str) -> list[tuple[int, int]]:
    return asyncio.run(_burst(processes, path, token))


def refused_everywhere(processes: list[AppProcess], token: str, started: float) -> dict[int, float]:
    """Poll ``/photos`` on every process until each answers 401; seconds from ``started`` to each one's 401.

    Fails with the latencies measured so far when ``PROPAGATION`` seconds pass first.
    """
    latencies: dict[int, float] = {}
    statuses: dict[int, int] = {}
    while len(latencies) < len(processes):
        for index, process in enumerate(processes):
            if index in latencies:
                continue
            status = HTTP.get(f"{process.url}/photos", headers=bearer(token)).status_code
            statuses[index] = status
            if status == 401:
                latencies[index] = time.monotonic() - started
            else:
                assert status == 200, f"process {index} answered {status}"
        if time.monotonic() - started > PROPAGATION:
            break
        time.sleep(0.005)  # a poll interval, bounded by PROPAGATION
    shown = {index: f"{seconds * 1000:.0f} ms" for index, seconds in sorted(latencies.items())}
    message = f"not refused by every process within {PROPAGATION:g} s: refused by {shown}, last statuses {statuses}"
    assert len(latencies) == len(processes), message
    assert max(latencies.values()) <= PROPAGATION, message
    return latencies


def accepted_everywhere(processes: list[AppProcess], token: str) -> None:
    for index, process in enumerate(processes):
        response = HTTP.get(f"{process.url}/photos", headers=bearer(token))
        assert response.status_code == 200, (index, response.status_code, response.text)


def fleet_status(process: AppProcess) -> dict[str, Any]:
    fleet_part: dict[str, Any] = HTTP.get(f"{process.url}/status").json()["status"]["fleet"]
    return fleet_part


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


# -- fleet-wide single-flight ------------------------------------------------------------------------------


def test_one_introspection_call_for_a_new_token_across_four_processes(
    idp: ServedIdP, shared_fleet: list[AppProcess]
) -> None:
    """40 concurrent first requests with one new opaque token, over 4 processes: 1 call at the issuer."""
    token = access_token(idp, resource=idp.opaque_audience)
    assert token.count(".") != 2, "the token must be opaque, so that only introspection can check it"
    before = introspection_calls(shared_fleet)
    answers = burst(shared_fleet, "/transfers", token)
    assert [status for status, _pid in answers] == [200] * CONCURRENT
    assert len({pid for _status, pid in answers}) == PROCESSES, "every process answered some of the requests"
    at_issuer = idp.introspections(token)
    made = [after - earlier for after, earlier in zip(introspection_calls(shared_fleet), before, strict=True)]
    assert at_issuer == 1, f"{at_issuer} introspection calls at the DevIdP (per process: {made})"
    assert sum(made) == 1, made
    shared = [fleet_status(process)["shared_introspection"] for process in shared_fleet]
    assert sum(item["hits"] for item in shared) >= PROCESSES - 1, shared  # the others read the shared answer


def test_control_without_a_shared_store_each_process_asks_and_revokes_alone(idp: ServedIdP) -> None:
    """The same burst without ``shared_store``: every process asks the issuer (so the test above can fail),
    and ``guard.revoke()`` in one process leaves the others accepting the token."""
    env = app_env(idp, None, audience=f"{idp.idp.default_audience} {idp.opaque_audience}")
    with fleet(env) as processes:
        token = access_token(idp, resource=idp.opaque_audience)
        answers = burst(processes, "/transfers", token)
        assert [status for status, _pid in answers] == [200] * CONCURRENT
        assert idp.introspections(token) == PROCESSES
        assert sum(introspection_calls(processes)) == PROCESSES

        jwt_token = access_token(idp)
        accepted_everywhere(processes, jwt_token)
        revoked = HTTP.post(
            f"{processes[0].url}/admin/revoke",
            params={"jti": jti_of(jwt_token)},
            headers={"X-Admin-Secret": ADMIN_SECRET},
        )
        assert revoked.status_code == 200, revoked.text
        time.sleep(PROPAGATION)  # what the fleet would have been given; nothing can reach the others
        statuses = [HTTP.get(f"{process.url}/photos", headers=bearer(jwt_token)).status_code for process in processes]
        assert statuses == [401, 200, 200, 200]


# -- revocation, everywhere within a second ----------------------------------------------------------------


def test_a_revocation_pushed_to_one_process_is_refused_by_every_process_within_a_second(
    idp: ServedIdP, shared_fleet: list[AppProcess]
) -> None:
    """RFC 7009 revocation at the DevIdP → its SSF push to process 0 → 401 on the ordinary route everywhere."""
    token = access_token(idp)
    assert token.count(".") == 2, "a JWT, validated locally on the ordinary route"
    accepted_everywhere(shared_fleet, token)  # every process has it in its verified cache now
    applied_before = fleet_status(shared_fleet[0])["shared_signals"]["applied"]
    started = time.monotonic()
    response = HTTP.post(f"{idp.issuer}/revoke", data={"token": token, "token_type_hint": "access_token"}, auth=CLIENT)
    assert response.status_code == 200
    latencies = refused_everywhere(shared_fleet, token, started)
    print(f"SSF push revocation refused by every process after {max(latencies.values()) * 1000:.0f} ms: {latencies}")
    # Pushed to process 0 only; the others learned it from the shared store's feed.
    assert fleet_status(shared_fleet[0])["shared_signals"]["applied"] == applied_before + 1
    for process in shared_fleet[1:]:
        assert fleet_status(process)["shared_signals"]["applied"] == 0
    # Another JWT of the same client is not affected: the SET named this token (jwt_id), not the client.
    accepted_everywhere(shared_fleet, access_token(idp))


def test_guard_revoke_in_one_process_is_refused_by_every_process_within_a_second(
    shared_fleet: list[AppProcess], idp: ServedIdP
) -> None:
    """``guard.revoke(jti=...)`` in process 0 → 401 on the ordinary route in all four within 1 s."""
    token = access_token(idp)
    accepted_everywhere(shared_fleet, token)
    started = time.monotonic()
    response = HTTP.post(
        f"{shared_fleet[0].url}/admin/revoke",
        params={"jti": jti_of(token)},
        headers={"X-Admin-Secret": ADMIN_SECRET},
    )
    assert response.json() == {"revoked": jti_of(token), "published": True, "pid": response.json()["pid"]}
    latencies = refused_everywhere(shared_fleet, token, started)
    print(f"guard.revoke() refused by every process after {max(latencies.values()) * 1000:.0f} ms: {latencies}")
    for process in shared_fleet:
        revocations = fleet_status(process)["revocations"]
        assert revocations["shared"] is True
        assert revocations["stale"] is False


def user_token(idp: ServedIdP, user: str) -> str:
    return access_token(idp, grant_type=DEV_USER_GRANT, username=user)


def logout(idp: ServedIdP, user: str) -> None:
    response = HTTP.post(f"{idp.issuer}/logout", data={"username": user}, auth=CLIENT)
    assert response.status_code == 200, response.text


def test_a_logout_pushed_to_one_process_is_refused_by_every_process_within_a_second(
    idp: ServedIdP, shared_fleet: list[AppProcess]
) -> None:
    """``POST /logout`` at the DevIdP → an ``iss_sub`` session-revoked SET to process 0 → the user's token is
    refused by all four on the ordinary route, though issued in the logout's own second (``iat`` has whole
    seconds); another user's token is not."""
    while time.time() % 1 > 0.5:  # the start of a second, so that the token and the logout share it
        time.sleep(0.05)
    token, other = user_token(idp, "carol"), user_token(idp, "dave")
    accepted_everywhere(shared_fleet, token)
    started = time.monotonic()
    logout(idp, "carol")
    latencies = refused_everywhere(shared_fleet, token, started)
    print(f"logout refused by every process after {max(latencies.values()) * 1000:.0f} ms: {latencies}")
    accepted_everywhere(shared_fleet, other)
