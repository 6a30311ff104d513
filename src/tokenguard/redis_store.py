"""A ``SharedStore`` on Redis, shared by every process of a fleet (``pip install 'tokenguard-asgi[redis]'``).

One Redis shared by every worker makes DPoP replay detection fleet-wide: a proof used on one process
is refused on every other (RFC 9449 §11.1)::

    from tokenguard.redis_store import RedisStore

    app.add_middleware(TokenGuard, issuer=..., audience=..., replay_store=RedisStore("redis://redis:6379/0"))

``add_once`` is one atomic command, ``SET <prefix><key> 1 NX PX <ttl in ms>``: of any number of
concurrent calls with one key, on any number of processes, exactly one gets ``True``, and Redis
forgets the key when its lifetime ends (memory is bounded by the TTLs, never by eviction of a live
key). When Redis cannot answer within ``timeout`` (down, slow, restarting, refusing the password)
``add_once`` raises ``StoreUnavailable``: the guard answers 503, never "not seen".

The client: ``RedisStore(url)`` builds one from a ``redis://``, ``rediss://`` or ``unix://`` URL,
with a bounded pool (``MAX_CONNECTIONS``; a request that waits longer than ``timeout`` for a
connection is a 503 too), and closes it in ``aclose()``. ``RedisStore.from_client(client)`` uses a
``redis.asyncio.Redis`` you configured yourself (Sentinel, cluster, TLS options, your own pool)
and leaves closing it to you. Connections open on the first command and belong to the event loop
that opened them: a store built from a URL that finds itself in another loop (a second
``TestClient``, ``asyncio.run`` again) starts a new pool there; a client passed in is used as is.

A URL's password never appears in ``repr`` or in an error's text.

What only Redis can give: a Redis restarted without persistence (or a failover to a replica that
had not caught up) forgets the keys it held, so a proof whose ``iat`` is still acceptable
(``dpop_iat_window`` + ``leeway`` either side of now, 90 s by default) could be used once more;
older proofs are refused by their ``iat`` anyway. Keys are stored as ``prefix + key``; the
guard's keys start with ``dpop-jti:`` (so ``tokenguard:dpop-jti:`` with the default prefix).

Every command goes through ``_run``, which bounds it by ``timeout`` and turns any failure into
``StoreUnavailable``.

Fleet mode (``shared_store=``, a ``FleetStore``) uses more keys under the same prefix:

- ``intro:<hex>`` — an introspection answer, ``SET … PX`` with the answer's own lifetime;
  ``intro:<hex>:lock`` — the fleet-wide single-flight lock (``SET NX PX``, released by a script
  only by its owner). ``<hex>`` is a keyed hash of the token, never the token.
- ``revocations`` — a sorted set of revocation entries scored by when they may be forgotten; each
  addition runs one script (drop the expired, refuse past the cap, add, keep the key's own expiry
  at the latest entry's, ``PUBLISH`` on the channel ``revocations:<db>``), so the list is bounded by
  its TTLs and by ``max_entries``. Pub/sub channels are one namespace for the whole server, whatever
  the database: the channel names the database, so fleets on two databases of one server (staging and
  production, two tenants) never hear each other's revocations; and every entry carries a MAC under
  ``revocations:key``, a random key kept in the database itself (``SET NX``), so a message published
  from another database, which cannot read that key, is never applied. (The key is read again for each
  revocation, every ``KEY_CHECK`` seconds and a second after a message failed its MAC; a key made anew
  after a restart or an eviction makes the feed read the whole list again. The sorted set, which only
  the database's own clients write, is read whatever its entries' MACs, so entries written before seals
  or under a lost key are never dropped.) Scores are on the guard's
  clock, as is the ``now`` each call passes; the key's lifetime is set relative to that ``now``
  (``PEXPIRE``), never as an instant on Redis's own clock, so a guard whose clock differs from the
  Redis host's keeps its entries their full life.

Subscriptions (``subscribe``) hold one connection each, outside the pool's timeouts, and ``PING``
it every ``FEED_PING`` seconds: a subscription whose Redis died or went silent raises
``StoreUnavailable`` within ``FEED_PING + timeout``, even when no TCP reset ever arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlsplit

from tokenguard.errors import ConfigurationError
from tokenguard.store import StoreFull, StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStore"]

logger = logging.getLogger("tokenguard")

#: The MAC in front of each revocation entry: 128 bits of HMAC-SHA256, as hex.
_SEAL_CHARS = 32

_T = TypeVar("_T")

DEFAULT_URL = "redis://localhost:6379/0"
_SCHEMES = ("redis", "rediss", "unix")
_INSTALL = "pip install 'tokenguard-asgi[redis]'"

# Give a lock back only if it is still ours (a holder that overran its lifetime must not free another's).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Add one revocation: drop the expired, refuse past the cap, add, keep the key's expiry at the
# latest entry's, publish (on the channel ARGV[5]: a channel is no key, and a cluster refuses a script
# whose keys fall in two slots). One script, so every process sees the same list and the same order.
# Times are the guard's (ARGV[1] the entry's expiry, ARGV[2] now): the key's lifetime is relative
# (PEXPIRE), so it does not depend on Redis's clock agreeing with the guard's. An entry already
# expired changes nothing: it is neither kept nor published.
_REVOKE = """
local expires, now = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if expires <= now then return 1 end
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
local wanted = math.ceil((expires - now) * 1000)
local left = redis.call('PTTL', KEYS[1])
if left < 0 or left < wanted then redis.call('PEXPIRE', KEYS[1], wanted) end
redis.call('PUBLISH', ARGV[5], ARGV[3])
return 1
"""


def _redis_asyncio() -> Any:
    """``redis.asyncio``, imported when a store is built: the core never needs it."""
    try:
        return importlib.import_module("redis.asyncio")
    except ImportError as exc:
        raise ImportError(f"RedisStore needs the redis package (redis>=5); install it with: {_INSTALL}") from exc


def _check_url(url: object) -> tuple[str, tuple[str, ...]]:
    """The URL as it may be shown (password masked) and the secrets to keep out of messages.

    ``ConfigurationError`` (naming ``replay_store`` and the schemes) for anything Redis would refuse
    or, worse, read differently (a database that is not a number would silently be database 0).
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"replay_store: RedisStore needs a redis://, rediss:// or unix:// URL, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "replay_store: the Redis URL is not a valid redis://, rediss:// or unix:// URL"
        ) from None
    userinfo = parts.password if parts.password is not None else parts.username
    given = (userinfo, *(value for name, value in parse_qsl(parts.query) if name == "password"))
    # As written and as sent (percent-decoded): neither may appear in a message.
    secrets = tuple({form for secret in given if secret for form in (secret, unquote(secret))})
    shown = _mask(url, parts)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"replay_store: the Redis URL must start with redis://, rediss:// or unix://, got {shown!r}"
        )
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"replay_store: a unix:// Redis URL needs a socket path, got {shown!r}")
    else:
        database = parts.path.lstrip("/")
        if database and not database.isdigit():
            raise ConfigurationError(
                f"replay_store: the Redis URL's path must be a database number (redis://host:port/0), got {shown!r}"
            )
        if port == 0:
            raise ConfigurationError(f"replay_store: the Redis URL has port 0, got {shown!r}")
    return shown, secrets


def _mask(url: str, parts: SplitResult) -> str:
    """``url`` as written, with its password (in the userinfo or a ``password=`` parameter) as ``***``."""
    shown = url
    if "@" in parts.netloc:
        # A lone userinfo is masked too: some clients read ``redis://secret@host`` as a password.
        user = f"{parts.username or ''}:" if parts.password is not None else ""
        shown = shown.replace(parts.netloc, f"{user}***@{parts.netloc.rpartition('@')[2]}", 1)
    if parts.query:
        query = "&".join(
            f"{piece.partition('=')[0]}=***" if unquote_plus(piece.partition("=")[0]) == "password" else piece
            for piece in parts.query.split("&")
        )
        shown = shown.replace(parts.query, query, 1)
    return shown


def _client_secrets(client: Any) -> tuple[str, ...]:
    """The password a client was configured with, to scrub from error text (its own messages omit it)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    password = kwargs.get("password") if isinstance(kwargs, dict) else None
    return (password,) if isinstance(password, str) and password else ()


def _check_options(prefix: object, timeout: object) -> float:
    if not isinstance(prefix, str):
        raise ConfigurationError(f"replay_store: RedisStore prefix must be a string, got {prefix!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ConfigurationError(f"replay_store: RedisStore timeout must be seconds in (0, 60], got {timeout!r}")
    return float(timeout)


class RedisStore:
    """A ``SharedStore`` on Redis: one atomic ``SET NX PX`` per ``add_once``; 503 when Redis cannot answer."""

    #: The pool of a store built from a URL: at most this many connections to Redis per process.
    MAX_CONNECTIONS = 64

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        client: redis.asyncio.Redis | None = None,
        prefix: str = "tokenguard:",
        timeout: float = 0.5,
    ) -> None:
        self.prefix = prefix
        self.timeout = _check_options(prefix, timeout)
        self._seal_key: bytes | None = None
        #: A published message failed its MAC since the key was last read (``_Subscription.next``).
        self._mac_failed = False
        #: The key was found made anew since the subscription last read the list (``_key``).
        self._key_swapped = False
        self._unsealed_warned_at = -math.inf
        if client is not None:
            if url != DEFAULT_URL:
                raise ConfigurationError("replay_store: give RedisStore a url or a client, not both")
            self._adopt(client)
            return
        self._shown, self._secrets = _check_url(url)
        module = _redis_asyncio()
        retry_module = importlib.import_module("redis.asyncio.retry")
        backoff = importlib.import_module("redis.backoff")
        exceptions = importlib.import_module("redis.exceptions")

        def connect() -> redis.asyncio.Redis:
            pool = module.BlockingConnectionPool.from_url(
                url,
                max_connections=self.MAX_CONNECTIONS,
                timeout=self.timeout,  # waiting for a free connection
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                # One immediate retry: a pooled connection found dead (Redis restarted) is replaced at
                # once. A retried SET NX that had in fact been applied answers "seen": a refusal, never
                # a replay let through. The whole call stays within ``timeout`` (``_run``).
                retry=retry_module.Retry(backoff.NoBackoff(), 1),
                retry_on_error=[exceptions.ConnectionError],  # redis 5 retries only what is listed
            )
            client: redis.asyncio.Redis = module.Redis(connection_pool=pool)
            return client

        try:
            self.client = connect()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"replay_store: the Redis URL {self._shown!r} has an option redis cannot use: {self._scrub(exc)}"
            ) from None
        self._connect: Callable[[], redis.asyncio.Redis] | None = connect
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_client(
        cls, client: redis.asyncio.Redis, *, prefix: str = "tokenguard:", timeout: float = 0.5
    ) -> RedisStore:
        """A store on a ``redis.asyncio.Redis`` you built; ``aclose()`` leaves it open (it is yours)."""
        return cls(client=client, prefix=prefix, timeout=timeout)

    def _adopt(self, client: object) -> None:
        module = _redis_asyncio()
        accepted = tuple(
            kind for kind in (getattr(module, "Redis", None), getattr(module, "RedisCluster", None)) if kind
        )
        if not isinstance(client, accepted):
            raise ConfigurationError(
                "replay_store: RedisStore needs a redis.asyncio.Redis client (not the blocking redis.Redis), "
                f"got {type(client).__name__}"
            )
        self.client = client  # a RedisCluster too: it runs the same commands
        self._shown = f"<{type(client).__name__} client>"
        self._secrets = _client_secrets(client)
        self._connect = None  # not ours: its owner decides where it runs and when it closes
        self._loop = None

    # -- SharedStore -------------------------------------------------------------------------

    async def add_once(self, key: str, ttl: float) -> bool:
        """``SET <prefix><key> 1 NX PX <ttl ms>``: ``True`` if the key was not live, recorded now for ``ttl`` s."""
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        milliseconds = max(1, math.ceil(ttl * 1000))
        name = self.prefix + key
        answer = await self._run("SET NX", lambda: self.client.set(name, b"1", nx=True, px=milliseconds))
        return bool(answer)  # True for OK; None when the key was already there

    # -- FleetStore ---------------------------------------------------------------------------

    #: Seconds between two PINGs on a quiet subscription.
    FEED_PING = 1.0
    #: Seconds between two reads of the revocation list's key by a subscription (sooner after a failed MAC).
    KEY_CHECK = 10.0

    async def get(self, key: str) -> bytes | None:
        name = self.prefix + key
        return _bytes(await self._run("GET", lambda: self.client.get(name)))

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        name, milliseconds = self.prefix + key, _milliseconds(ttl)
        await self._run("SET PX", lambda: self.client.set(name, value, px=milliseconds))

    async def claim(self, key: str, owner: bytes, ttl: float) -> bool:
        name, milliseconds = self.prefix + key, _milliseconds(ttl)
        return bool(await self._run("SET NX", lambda: self.client.set(name, owner, nx=True, px=milliseconds)))

    async def release(self, key: str, owner: bytes) -> None:
        name = self.prefix + key
        await self._run("EVAL release", lambda: self.client.eval(_RELEASE, 1, name, owner))

    async def record_revocation(self, entry: bytes, expires_at: float, *, now: float, max_entries: int) -> None:
        # The key is read again for each revocation (rare, never on a request's path): a publisher always
        # seals with the one the fleet has now, even after a Redis restart or eviction made a new one.
        sealed = _seal(await self._key(fresh=True), entry) + entry
        args = (repr(float(expires_at)), repr(float(now)), sealed, str(int(max_entries)), self._channel())
        added = await self._run("EVAL revoke", lambda: self.client.eval(_REVOKE, 1, self.prefix + "revocations", *args))
        if not added:
            raise StoreFull(f"the shared revocation list holds {max_entries} live entries", retry_after=60)

    async def revocations(self, now: float) -> list[bytes]:
        name = self.prefix + "revocations"
        found = await self._run("ZRANGEBYSCORE", lambda: self.client.zrangebyscore(name, f"({float(now)!r}", "+inf"))
        # The sorted set is in the fleet's own database, which only its own clients can write: its entries
        # are read as they are, sealed (the MAC is the channel's concern) or not (written before seals, or
        # sealed under a key since lost), so no revocation is dropped by an upgrade or a lost key.
        return [_unsealed(item) for item in map(_bytes, found) if item is not None]

    def _channel(self) -> str:
        """``<prefix>revocations:<db>``: pub/sub ignores databases, so the channel names its own."""
        kwargs = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", None)
        db = kwargs.get("db", 0) if isinstance(kwargs, dict) else 0
        return f"{self.prefix}revocations:{db}"

    async def _key(self, *, fresh: bool = False) -> bytes:
        """The revocation list's MAC key, made by whichever process needs it first (``SET NX``) and kept in
        the database, never in a message. ``fresh``: read again (after a resubscription: a Redis that
        restarted without persistence made a new one)."""
        if self._seal_key is None or fresh:
            name = self.prefix + "revocations:key"
            made = secrets.token_hex(32).encode()
            await self._run("SET NX", lambda: self.client.set(name, made, nx=True))
            stored = _bytes(await self._run("GET", lambda: self.client.get(name)))
            if not stored:
                raise StoreUnavailable(f"Redis at {self._shown} lost the revocation list's key")
            if self._seal_key is not None and stored != self._seal_key:
                # Whoever read it (a revocation, the subscription), messages sealed with the new key may have
                # been dropped under the old one: the subscription reads the whole list again.
                self._key_swapped = True
            self._seal_key = stored
        return self._seal_key

    def _opened(self, data: bytes) -> bytes | None:
        """The entry of a published message when its MAC is right under the fleet's key; ``None`` (reported
        once a minute) if not. A failed MAC also has the subscription read the key again soon
        (``_Subscription.next``): it may be a key made anew, not a message from outside."""
        if self._sealed_by(data, self._seal_key):
            return data[_SEAL_CHARS:]
        self._mac_failed = True
        now = time.monotonic()
        if now - self._unsealed_warned_at >= 60.0:
            self._unsealed_warned_at = now
            logger.warning(
                "tokenguard: a revocation entry without this fleet's MAC was ignored (from another database, "
                "or written by something that is not a guard)"
            )
        return None

    async def _key_changed(self) -> bool:
        """Whether the key was made anew since the subscription read the list (read again now, too)."""
        await self._key(fresh=True)
        swapped, self._key_swapped = self._key_swapped, False
        return swapped

    @staticmethod
    def _sealed_by(data: bytes, key: bytes | None) -> bool:
        return (
            key is not None
            and len(data) > _SEAL_CHARS
            and hmac.compare_digest(data[:_SEAL_CHARS], _seal(key, data[_SEAL_CHARS:]))
        )

    async def subscribe(self) -> _Subscription:
        self._follow_loop()
        await self._key(fresh=True)
        self._key_swapped = False  # the feed reads the whole list right after subscribing
        pubsub = self.client.pubsub()
        subscription = _Subscription(self, pubsub)
        # redis-py reconnects a subscription by itself and resubscribes: what was published meanwhile is
        # lost. Counting connects lets ``next`` report it, so the feed reads the whole list again.
        subscription.counter = _ConnectCounter(subscription, pubsub.on_connect)
        # Before the first connect, which registers it (as a weak bound method: the subscription keeps it).
        pubsub.on_connect = subscription.counter.on_connect  # type: ignore[method-assign]
        try:
            await self._run("SUBSCRIBE", lambda: pubsub.subscribe(self._channel()))
        except StoreUnavailable:
            await _quietly(pubsub.aclose())
            raise
        subscription.baseline = subscription.connects  # the first connect may or may not call back
        return subscription

    async def aclose(self) -> None:
        """Close the connections of a client this store built; a client passed in is left to its owner."""
        if self._connect is not None:
            self._follow_loop()  # connections of a loop that is gone cannot be closed, only dropped
            await self.client.connection_pool.disconnect()

    # -- for every command -------------------------------------------------------------------

    async def _run(self, command: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call within ``timeout``; any failure is ``StoreUnavailable`` (503), with a safe cause."""
        self._follow_loop()
        try:
            return await asyncio.wait_for(call(), self.timeout)
        except asyncio.TimeoutError:
            cause = f"Redis at {self._shown} did not answer {command} within {self.timeout:g} s"
        except Exception as exc:  # never CancelledError (a BaseException): a cancelled request stays cancelled
            # redis.exceptions.RedisError (connection refused, reset, AUTH, OOM, READONLY replica…), OSError.
            cause = f"Redis at {self._shown} failed {command}: {type(exc).__name__}: {self._scrub(exc)}"
        raise StoreUnavailable(cause)

    def _follow_loop(self) -> None:
        """Connections belong to the loop that opened them: in another loop (a second TestClient,
        ``asyncio.run`` again) a client this store built starts afresh; one passed in is left alone."""
        if self._connect is None:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                self.client = self._connect()
            self._loop = loop

    def _failure(self, command: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"Redis at {self._shown} failed {command}: {type(exc).__name__}: {self._scrub(exc)}")

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def __repr__(self) -> str:
        return f"RedisStore({self._shown!r}, prefix={self.prefix!r}, timeout={self.timeout:g})"


def _unsealed(data: bytes) -> bytes:
    """An entry of the sorted set without its MAC, if it has one (an entry itself is a JSON object)."""
    return data[_SEAL_CHARS:] if data[:1] != b"{" and len(data) > _SEAL_CHARS else data


def _seal(key: bytes, entry: bytes) -> bytes:
    """The MAC a revocation entry carries in the store and on the channel (``_SEAL_CHARS`` hex digits)."""
    return hmac.new(key, b"tokenguard revocation\0" + entry, hashlib.sha256).hexdigest()[:_SEAL_CHARS].encode()


def _bytes(value: object) -> bytes | None:
    """A value as bytes, also from a client that decodes responses (``decode_responses=True``): every
    value fleet mode stores is ASCII, so its text is its bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def _milliseconds(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


async def _quietly(closing: Awaitable[Any]) -> None:
    try:
        await closing
    except Exception:  # a connection already gone has nothing left to close
        return


class _ConnectCounter:
    """Counts a subscription's connects, then lets redis-py resubscribe as it would have."""

    def __init__(self, subscription: _Subscription, resubscribe: Callable[[Any], Awaitable[None]]) -> None:
        self._subscription = subscription
        self._resubscribe = resubscribe

    async def on_connect(self, connection: Any) -> None:
        self._subscription.connects += 1
        await self._resubscribe(connection)


class _Subscription:
    """One ``SUBSCRIBE`` to the revocation channel (``RevocationFeed``), checked by PING when quiet."""

    def __init__(self, store: RedisStore, pubsub: Any) -> None:
        self._store = store
        self._pubsub = pubsub
        self._heard = time.monotonic()  # the last message or pong
        self._pinged: float | None = None
        self._key_checked_at = time.monotonic()  # ``subscribe`` read it just now
        #: Connects seen (redis-py's reconnects included); any after ``baseline`` means messages may be lost.
        self.connects = 0
        self.baseline = 0
        self.counter: _ConnectCounter | None = None

    async def next(self, timeout: float) -> bytes | None:
        store = self._store
        if self.connects > self.baseline:
            raise StoreUnavailable(f"the subscription to Redis at {store._shown} was reconnected")
        now = time.monotonic()
        # The key is read again every KEY_CHECK seconds, and a second after a message failed its MAC: a key
        # made anew (a Redis restart, an eviction) means entries sealed with it may have been dropped here,
        # so the feed reads the whole list again (``StoreUnavailable`` makes it resubscribe and resync).
        # At most one GET a second, however many messages from outside fail.
        since = now - self._key_checked_at
        if store._key_swapped or since >= store.KEY_CHECK or (store._mac_failed and since >= 1.0):
            self._key_checked_at, store._mac_failed = now, False
            if await store._key_changed():
                raise StoreUnavailable(f"the revocation list's key at {store._shown} was made anew; reading it again")
        if self._pinged is not None and now - self._pinged > store.FEED_PING + store.timeout:
            raise StoreUnavailable(f"Redis at {store._shown} stopped answering the revocation subscription")
        if self._pinged is None and now - self._heard >= store.FEED_PING:
            try:
                await asyncio.wait_for(self._pubsub.ping(), store.timeout)
            except Exception as exc:
                raise store._failure("PING", exc) from None
            self._pinged = now
        wait = max(0.0, min(timeout, store.FEED_PING))
        try:
            message = await asyncio.wait_for(
                self._pubsub.get_message(ignore_subscribe_messages=True, timeout=wait), wait + store.timeout
            )
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"Redis at {store._shown} did not answer the subscription") from None
        except Exception as exc:
            raise store._failure("SUBSCRIBE", exc) from None
        if message is None:
            return None
        self._heard, self._pinged = time.monotonic(), None
        if message.get("type") == "message":
            data = _bytes(message.get("data"))
            return store._opened(data) if data is not None else None
        return None  # a pong, or a subscription notice

    async def aclose(self) -> None:
        # Bounded: redis-py shields its teardown, which can wait on a Redis that stopped answering.
        await _quietly(asyncio.wait_for(self._pubsub.aclose(), self._store.timeout))
