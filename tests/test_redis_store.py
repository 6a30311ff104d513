"""``RedisStore`` against a real ``redis-server``: the replay store every process of a fleet shares.

``add_once`` is one ``SET NX PX`` (RFC 9449 §11.1: a proof's ``jti`` is used once): its answers, the
TTL Redis was given (read back with ``PTTL``), atomicity under concurrency, several stores on one
server, prefixes; a Redis that is down, slow or refusing the password is a 503, never "not seen",
and its password never shows. Last, the property the sender-constrained issue asks for: two real
uvicorn processes sharing one Redis, where a proof used on one is a replay on the other.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import RedisServer
from tokenguard import TokenGuard, sender_constrained
from tokenguard.dpop import DPoPKey
from tokenguard.errors import ConfigurationError, UnavailableError
from tokenguard.events import DecisionEvent
from tokenguard.redis_store import RedisStore
from tokenguard.store import SharedStore, StoreUnavailable
from tokenguard.testing import DEFAULT_AUDIENCE, DevIdP

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis package is not installed (the redis extra)")

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-Pw-0f-r3dis"
API = "https://api.example"


def fresh_key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
async def store(redis_server: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server)
    yield store
    await store.aclose()


@pytest.fixture
async def raw(redis_server: str) -> AsyncIterator[Any]:
    """A plain client on the same server, to look at what the store wrote."""
    client = redis_asyncio.Redis.from_url(redis_server)
    yield client
    await client.connection_pool.disconnect()


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own, to stop or to give a password without disturbing the session's."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


# -- add_once: SET <prefix><key> 1 NX PX <ms> ------------------------------------------------------------


async def test_a_key_is_new_once_while_it_lives(store: RedisStore, raw: Any) -> None:
    key = fresh_key()
    assert isinstance(store, SharedStore)
    assert await store.add_once(key, 60) is True
    assert await store.add_once(key, 60) is False
    assert await store.add_once(key, 1) is False  # a replay does not renew or shorten the entry
    assert await raw.get("tokenguard:" + key) == b"1"
    # The lifetime Redis was given is the TTL in milliseconds (PX), not rounded to seconds.
    assert 59_000 < await raw.pttl("tokenguard:" + key) <= 60_000


async def test_the_ttl_is_sent_in_milliseconds_rounded_up(store: RedisStore, raw: Any) -> None:
    key = fresh_key()
    assert await store.add_once(key, 1.2345)
    assert 1_100 < await raw.pttl("tokenguard:" + key) <= 1_235
    tiny = fresh_key()
    assert await store.add_once(tiny, 0.0001)  # never PX 0 (an error) nor a key without expiry
    assert await raw.pttl("tokenguard:" + tiny) in (-2, 0, 1)


async def test_an_expired_key_is_new_again(store: RedisStore, raw: Any) -> None:
    key = fresh_key()
    assert await store.add_once(key, 0.05)
    deadline = time.monotonic() + 5
    while await raw.exists("tokenguard:" + key):  # Redis drops it itself, 50 ms later
        assert time.monotonic() < deadline, "the key outlived its 50 ms"
        await asyncio.sleep(0.01)
    assert await store.add_once(key, 0.05) is True


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan"), True, "60"])
async def test_a_ttl_that_is_not_a_positive_number_is_a_bug(store: RedisStore, ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await store.add_once(fresh_key(), ttl)


async def test_fifty_concurrent_adds_of_one_key_let_exactly_one_through(store: RedisStore) -> None:
    key = fresh_key()
    results: list[bool] = []

    async def add() -> None:
        results.append(await store.add_once(key, 60))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(add)
    assert len(results) == 50
    assert results.count(True) == 1


async def test_two_stores_on_one_server_agree(redis_server: str) -> None:
    """Two stores (two pools, as two processes would have) see each other's keys, also when racing."""
    first, second = RedisStore(redis_server), RedisStore(redis_server)
    try:
        key = fresh_key()
        assert await first.add_once(key, 60)
        assert not await second.add_once(key, 60)
        racing = fresh_key()
        results = await asyncio.gather(*(store.add_once(racing, 60) for store in [first, second] * 25))
        assert results.count(True) == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_prefixes_keep_stores_apart(redis_server: str, raw: Any) -> None:
    one = RedisStore(redis_server, prefix="app-one:")
    two = RedisStore(redis_server, prefix="app-two:")
    try:
        key = fresh_key()
        assert await one.add_once(key, 60)
        assert await two.add_once(key, 60)  # another prefix: another key
        assert not await one.add_once(key, 60)
        assert await raw.exists("app-one:" + key, "app-two:" + key) == 2
        assert not await raw.exists("tokenguard:" + key)
    finally:
        await one.aclose()
        await two.aclose()


# -- the client: built from a URL, or yours ---------------------------------------------------------------


async def test_aclose_closes_the_connections_of_a_client_it_built(redis_server: str, raw: Any) -> None:
    name = f"tg-{uuid.uuid4().hex[:8]}"
    store = RedisStore(f"{redis_server}?client_name={name}")
    await asyncio.gather(*(store.add_once(fresh_key(), 60) for _ in range(5)))

    async def connections() -> int:
        return sum(1 for client in await raw.client_list() if client.get("name") == name)

    assert await connections() >= 1
    await store.aclose()
    deadline = time.monotonic() + 5
    while await connections():
        assert time.monotonic() < deadline, "the store's connections stayed open after aclose()"
        await asyncio.sleep(0.01)


async def test_a_client_passed_in_is_used_and_left_open(redis_server: str) -> None:
    client = redis_asyncio.Redis.from_url(redis_server)
    try:
        store = RedisStore.from_client(client, prefix="mine:", timeout=1)
        key = fresh_key()
        assert await store.add_once(key, 60)
        assert await client.exists("mine:" + key)
        await store.aclose()
        assert await client.ping()  # still the owner's to use and to close
        assert "Redis client" in repr(store)
        assert repr(RedisStore(client=client)).startswith("RedisStore('<Redis client>'")
    finally:
        await client.connection_pool.disconnect()


def test_a_store_built_from_a_url_follows_the_event_loop(redis_server: str) -> None:
    """Each ``asyncio.run`` (each TestClient) is a new loop: the store opens connections there, never
    reusing one of a closed loop (which would be a 503 on the first request)."""
    store = RedisStore(redis_server)
    key = fresh_key()
    assert asyncio.run(store.add_once(key, 60)) is True
    assert asyncio.run(store.add_once(key, 60)) is False
    assert asyncio.run(store.add_once(fresh_key(), 60)) is True
    asyncio.run(store.aclose())


def test_a_blocking_client_or_two_sources_are_refused() -> None:
    import redis

    with pytest.raises(ConfigurationError, match=r"replay_store.*redis\.asyncio\.Redis"):
        RedisStore.from_client(redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not both"):
        RedisStore("redis://other:6379/0", client=redis_asyncio.Redis())


# -- what is refused at construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{PASSWORD}@localhost:6379/0",
        f"redis+sentinel://:{PASSWORD}@localhost/0",
        "localhost:6379",
        "",
        None,
        6379,
    ],
)
def test_a_url_of_another_scheme_is_refused_naming_the_option_and_the_schemes(url: Any) -> None:
    with pytest.raises(ConfigurationError) as refused:
        RedisStore(url)
    message = str(refused.value)
    assert "replay_store" in message
    assert "redis://" in message
    assert "rediss://" in message
    assert "unix://" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:{PASSWORD}@localhost:6379/zero", "database number"),
        (f"redis://:{PASSWORD}@localhost:99999/0", "not a valid"),
        (f"redis://:{PASSWORD}@localhost:port/0", "not a valid"),
        (f"redis://:{PASSWORD}@localhost:0/0", "port 0"),
        (f"redis://:{PASSWORD}@localhost:6379/0?socket_timeout=soon", "option redis cannot use"),
        ("unix://", "socket path"),
    ],
)
def test_a_malformed_url_is_refused_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        RedisStore(url)
    assert "replay_store" in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_accepted_url_forms() -> None:
    for url in (
        "redis://localhost",
        "redis://localhost:6379",
        "redis://user:pw@redis.internal:6380/3",
        "rediss://redis.example:6380/0",
        "REDIS://localhost/0",
        "unix:///run/redis/redis.sock?db=2",
        "redis://[::1]:6379/0",
    ):
        RedisStore(url)  # no connection is made until the first command


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"prefix": None}, "prefix"),
        ({"prefix": b"tg:"}, "prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"timeout": 600}, "timeout"),
    ],
)
def test_wrong_options_are_refused_naming_them(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        RedisStore("redis://localhost/0", **options)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@localhost:6379/0",
        f"redis://default:{PASSWORD}@localhost:6379/0",
        f"rediss://{PASSWORD}@localhost:6379/0",  # a lone userinfo: some clients read it as a password
        f"unix:///run/redis.sock?password={PASSWORD}&db=1",
    ],
)
def test_repr_never_shows_a_password(url: str) -> None:
    shown = repr(RedisStore(url))
    assert PASSWORD not in shown
    assert "***" in shown
    assert url.replace(PASSWORD, "***") in shown  # otherwise the URL as written


def test_a_percent_encoded_password_is_kept_out_in_both_forms() -> None:
    store = RedisStore("redis://:p%40ss%3Aword@localhost:6379/0")
    assert {"p%40ss%3Aword", "p@ss:word"} <= set(store._secrets)
    assert "ss" not in repr(store)


def test_without_the_redis_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=re.escape("pip install 'tokenguard-asgi[redis]'")):
        RedisStore("redis://localhost/0")


def test_the_module_imports_without_redis() -> None:
    """Importing ``tokenguard.redis_store`` (or the package) never needs redis: it is imported when a store is built."""
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['redis.asyncio'] = None\n"
        "import tokenguard, tokenguard.redis_store, tokenguard.store\n"
        "try:\n    tokenguard.redis_store.RedisStore()\nexcept ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "tokenguard-asgi[redis]" in done.stdout


# -- when Redis cannot answer: 503, never "not seen" ----------------------------------------------------


async def test_a_stopped_server_is_unavailable_not_unseen() -> None:
    with private_redis() as server:
        store = RedisStore(server.url)
        try:
            key = fresh_key()
            assert await store.add_once(key, 60)
            server.stop()
            for attempt in (key, fresh_key()):  # a replay and a new proof alike: neither can be told
                started = time.monotonic()
                with pytest.raises(StoreUnavailable) as unavailable:
                    await store.add_once(attempt, 60)
                assert time.monotonic() - started < 2
                assert isinstance(unavailable.value, UnavailableError)
                assert unavailable.value.status_code == 503
                assert unavailable.value.reason == "replay_store_unavailable"
                assert f"127.0.0.1:{server.port}" in unavailable.value.cause
        finally:
            await store.aclose()


async def test_a_restarted_server_is_used_again_by_the_same_store() -> None:
    """Recovery needs no new store: the dead pooled connections are replaced on the next call."""
    with private_redis() as server:
        store = RedisStore(server.url)
        try:
            assert await store.add_once(fresh_key(), 60)
            # Restarted between two calls: the pooled connection is dead, the one retry opens another.
            server.stop()
            server.start(server.port)
            assert await store.add_once(fresh_key(), 60) is True
            # Down for a call (503), then back.
            server.stop()
            with pytest.raises(StoreUnavailable):
                await store.add_once(fresh_key(), 60)
            server.start(server.port)
            key = fresh_key()
            assert await store.add_once(key, 60) is True
            assert await store.add_once(key, 60) is False
        finally:
            await store.aclose()


async def test_a_server_that_never_answers_is_unavailable_within_the_timeout() -> None:
    """A peer that accepts the connection and then says nothing (a hung Redis, a black-holed route)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.add_once(fresh_key(), 60)
            assert 0.15 < time.monotonic() - started < 2
        finally:
            await store.aclose()


async def test_the_password_is_used_and_never_shown_in_errors() -> None:
    with private_redis() as server:
        setup = redis_asyncio.Redis(port=server.port)
        await setup.config_set("requirepass", PASSWORD)
        await setup.connection_pool.disconnect()
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        store, wrong = RedisStore(url), RedisStore(url.replace(PASSWORD, PASSWORD[::-1]))
        nopass = RedisStore(server.url)
        try:
            assert await store.add_once(fresh_key(), 60)  # the password from the URL opens the server
            for refused in (wrong, nopass):
                with pytest.raises(StoreUnavailable) as denied:  # AUTH refused: a 503, not a guess
                    await refused.add_once(fresh_key(), 60)
                assert PASSWORD not in str(denied.value)
                assert PASSWORD[::-1] not in str(denied.value)
                assert PASSWORD not in repr(denied.value)
            server.stop()
            with pytest.raises(StoreUnavailable) as down:
                await store.add_once(fresh_key(), 60)
            for text in (str(down.value), repr(down.value), down.value.cause, repr(store)):
                assert PASSWORD not in text
            assert ":***@127.0.0.1" in down.value.cause
        finally:
            for each in (store, wrong, nopass):
                await each.aclose()


# -- through the guard ------------------------------------------------------------------------------------


def guarded_app(idp: DevIdP, store: RedisStore, events: list[DecisionEvent]) -> TokenGuard:
    @sender_constrained
    async def pay(request: Request) -> JSONResponse:
        return JSONResponse({"binding": request.auth.binding.method})

    app = Starlette(routes=[Route("/pay", pay, methods=["POST"])])
    return TokenGuard(
        app,
        issuer=idp.issuer,
        audience=DEFAULT_AUDIENCE,
        http_client=idp.http_client,
        replay_store=store,
        public_url=API,
        on_decision=events.append,
    )


def dpop_headers(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


async def test_the_guard_refuses_a_replay_and_answers_503_when_redis_is_down() -> None:
    idp, key, events = DevIdP(), DPoPKey.generate(), []
    token = idp.issue_token("read", dpop_jkt=key.thumbprint)
    with private_redis() as server:
        store = RedisStore(server.url)
        guard = guarded_app(idp, store, events)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url=API) as client:
                proof = key.proof("POST", f"{API}/pay", access_token=token)
                assert (await client.post("/pay", headers=dpop_headers(token, proof))).status_code == 200
                replay = await client.post("/pay", headers=dpop_headers(token, proof))
                assert replay.status_code == 401
                assert events[-1].reason == "dpop_replay"
                server.stop()
                fresh = key.proof("POST", f"{API}/pay", access_token=token)
                down = await client.post("/pay", headers=dpop_headers(token, fresh))
            assert down.status_code == 503
            assert down.headers["retry-after"]
            assert down.json()["error"] == "temporarily_unavailable"
            assert events[-1].reason == "replay_store_unavailable"
        finally:
            await store.aclose()


# -- across processes: two uvicorn servers, one Redis ------------------------------------------------------

APP = """
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard, sender_constrained
from tokenguard.redis_store import RedisStore
from tokenguard.testing import DEFAULT_AUDIENCE, DevIdP

# The same keys and issuer as the test's DevIdP: its tokens verify here, against this process's own
# in-process copy of the issuer (metadata and JWKS, no network).
idp = DevIdP(key_file=os.environ["TG_KEY_FILE"])


@sender_constrained
async def pay(request):
    return JSONResponse({"pid": os.getpid(), "binding": request.auth.binding.method})


app = Starlette(routes=[Route("/pay", pay, methods=["POST"])])
app.add_middleware(
    TokenGuard,
    issuer=idp.issuer,
    audience=DEFAULT_AUDIENCE,
    http_client=idp.http_client,
    replay_store=RedisStore(os.environ["TG_REDIS_URL"]),
    public_url=os.environ["TG_PUBLIC_URL"],  # one htu for both, as behind one load balancer
)
"""


@contextmanager
def uvicorn_processes(directory: Path, count: int, env: dict[str, str]) -> Iterator[list[str]]:
    """``count`` uvicorn processes serving ``app:app`` on free ports; yields their base URLs once all serve."""
    (directory / "app.py").write_text(textwrap.dedent(APP))
    src = str(Path(__file__).resolve().parent.parent / "src")
    environ = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(directory), src]), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0", "--lifespan", "on"]
    processes = [
        subprocess.Popen(argv, cwd=directory, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(count)
    ]
    outputs: list[list[str]] = [[] for _ in processes]
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def drain(index: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put((index, line))
        lines.put((index, None))

    for index, process in enumerate(processes):
        threading.Thread(target=drain, args=(index, process), daemon=True).start()
    bases: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 30
        while len(bases) < count:
            try:
                index, line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"uvicorn did not start within 30 s:\n{outputs}")
            if line is None:
                pytest.fail(f"uvicorn exited before serving:\n{''.join(outputs[index])}")
            outputs[index].append(line)
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                bases[index] = found.group(1)
        yield [bases[index] for index in range(count)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_a_proof_used_on_one_process_is_a_replay_on_another(redis_server: str, tmp_path: Path) -> None:
    """RFC 9449 §11.1 across a fleet: process A accepts a proof, process B refuses the same one."""
    key_file = tmp_path / "idp-keys.json"
    idp = DevIdP(key_file=key_file)  # writes the keys both servers load
    key = DPoPKey.generate()
    token = idp.issue_token("payments:write", dpop_jkt=key.thumbprint)
    env = {"TG_KEY_FILE": str(key_file), "TG_REDIS_URL": redis_server, "TG_PUBLIC_URL": API}
    with uvicorn_processes(tmp_path, 2, env) as (first, second):
        async with httpx.AsyncClient(timeout=10) as client:

            async def pay(base: str, proof: str) -> httpx.Response:
                return await client.post(f"{base}/pay", headers=dpop_headers(token, proof))

            def new_proof() -> str:
                return key.proof("POST", f"{API}/pay", access_token=token)

            proof = new_proof()
            accepted = await pay(first, proof)
            assert accepted.status_code == 200, accepted.text
            assert accepted.json()["binding"] == "dpop"
            replay = await pay(second, proof)
            assert replay.status_code == 401
            assert 'error="invalid_dpop_proof"' in replay.headers["www-authenticate"]
            assert replay.json() == {
                "error": "invalid_dpop_proof",
                "error_description": "The DPoP proof was used before.",
            }
            # Process B is a working server: a fresh proof passes there (the refusal was the replay).
            served = await pay(second, new_proof())
            assert served.status_code == 200
            assert served.json()["pid"] != accepted.json()["pid"]
            # One fresh proof sent to both at once, ten times: exactly one request gets through.
            racing = new_proof()
            answers = await asyncio.gather(*(pay(base, racing) for base in [first, second] * 5))
            assert sorted(answer.status_code for answer in answers) == [200] + [401] * 9


# -- a Redis Cluster client -----------------------------------------------------------------------------


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[int]:
    """A real one-node Redis Cluster (``cluster-enabled``, every slot on it) on a free loopback port."""
    binary = RedisServer().binary
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = 65535
    while port > 55535:  # a cluster node also listens on port + 10000 (its bus): it refuses ports above this
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 10.0
        while True:
            assert process.poll() is None, "the cluster node exited"
            assert time.monotonic() < deadline, "the cluster node did not come up within 10 s"
            try:
                if b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"):
                    break
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            except redis.RedisError:
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.kill()
        process.wait()


@pytest.mark.anyio
async def test_revocations_are_recorded_and_read_through_a_redis_cluster_client(cluster_node: int) -> None:
    """Found by review: the revocation script named the sorted set and the channel as two keys, which a
    cluster refuses (two slots): every ``revoke`` through a ``RedisCluster`` client failed. The channel is
    an argument now, as it is no key."""
    import redis.asyncio as redis_asyncio

    from tokenguard.revocation import Revocation

    client = redis_asyncio.RedisCluster(host="127.0.0.1", port=cluster_node)
    store = RedisStore.from_client(client, prefix=f"t{uuid.uuid4().hex}:")
    try:
        now = time.time()
        entry = Revocation("sub", "alice", now, now + 3600).encode()
        await store.record_revocation(entry, now + 3600, now=now, max_entries=10)
        assert await store.revocations(now) == [entry]
    finally:
        await client.aclose()
