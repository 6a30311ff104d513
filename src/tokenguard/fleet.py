"""Fleet mode (``shared_store=``): what every process of a deployment shares, and how it degrades.

Two pieces, each usable without the other (docs/ARCHITECTURE.md, "Fleet mode"):

- ``SharedAnswers``: the introspection answers of every process in one store, with a fleet-wide
  single-flight. One process takes the token's lock (``claim``) and asks the issuer; the others
  read the store until its answer is there, for at most ``wait`` seconds, and take over when the
  lock is gone without an answer (its holder died: the lock lives ``lock_ttl``, a little more than
  the introspection timeout). Keys are ``HMAC-SHA256(secret, token)``: the token never reaches the
  store, and without the secret nobody can tell whether a token is in it. Values are MAC'd with the
  same secret, so a value the store did not get from a guard of this fleet (or got for another
  key) is never used. The secret is derived from the issuer and the introspection credentials,
  which every process of one resource server shares.
- ``Fleet``: the revocation list's feed. ``revoke`` applies an entry in this process at once and
  records it in the store, which publishes it; a listener task in every process adds what is
  published to its own ``RevocationList`` (the hot path never waits on the store). After every
  (re)subscription the listener reads the whole list again, so nothing published while it was
  away is missed, and publishes what this process could not record meanwhile.

When the store fails, nothing fails open and nothing answers 500: introspection is done by this
process alone (its own cache and single-flight, as without a store), for ``_BACKOFF`` seconds
before the store is tried again; the revocation list keeps what it holds, is marked stale
(``status``, a warning), and — with ``revocation_fail_closed`` — every token is refused with 503
until the feed is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from tokenguard._strictjson import strict_loads
from tokenguard.errors import UnavailableError
from tokenguard.revocation import Revocation, RevocationList
from tokenguard.store import FleetStore, StoreFull, StoreUnavailable

__all__ = ["Fleet", "SharedAnswers", "SharedRecord"]

logger = logging.getLogger("tokenguard")

#: Seconds the shared tier is left alone after the store failed (introspection goes on per process).
_BACKOFF = 5.0
#: Seconds between two warnings that the store failed.
_WARN_EVERY = 60.0
#: Seconds a failed upstream call is remembered fleet-wide, so waiters do not all retry at once.
_FAILURE_TTL = 1.0
#: The MAC in front of each shared answer: 128 bits, as hex. Values are ASCII throughout (the answer's
#: JSON is ASCII-escaped), so a client that decodes responses to text (``decode_responses=True``)
#: reads them back unchanged.
_MAC_CHARS = 32


class SharedRecord:
    """One introspection outcome as the fleet shares it: the issuer's answer, or a refusal, or a failure."""

    __slots__ = ("checked_at", "description", "document", "expires", "failed", "reason")

    def __init__(
        self,
        *,
        document: dict[str, Any] | None,
        reason: str,
        description: str,
        expires: float,
        checked_at: float,
        failed: bool = False,
    ) -> None:
        self.document = document
        self.reason = reason
        self.description = description
        self.expires = expires
        self.checked_at = checked_at
        self.failed = failed

    def encode(self) -> bytes:
        return json.dumps(
            {
                "a": self.document,
                "r": self.reason,
                "d": self.description,
                "x": self.expires,
                "t": self.checked_at,
                "f": self.failed,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> SharedRecord:
        record = strict_loads(data, max_depth=None)
        document, reason, description = record.get("a"), record.get("r"), record.get("d")
        expires, checked_at, failed = record.get("x"), record.get("t"), record.get("f")
        if document is not None and not isinstance(document, dict):
            raise ValueError("not a shared answer")
        if not isinstance(reason, str) or not isinstance(description, str) or not isinstance(failed, bool):
            raise ValueError("not a shared answer")
        if not isinstance(expires, (int, float)) or not isinstance(checked_at, (int, float)):
            raise ValueError("not a shared answer")
        return cls(
            document=document,
            reason=reason,
            description=description,
            expires=float(expires),
            checked_at=float(checked_at),
            failed=failed,
        )


class _StoreHealth:
    """When the store last failed: the shared tier is skipped for ``_BACKOFF`` s after a failure."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self._down_until = 0.0
        self._warned_at: float | None = None

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.failures += 1
        self._down_until = now + _BACKOFF
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            cause = exc.cause if isinstance(exc, UnavailableError) else type(exc).__name__
            logger.warning("tokenguard: shared store failed (%s); %s", cause, self.what)


class SharedAnswers:
    """Introspection answers shared by the fleet, with a fleet-wide single-flight (module doc)."""

    def __init__(
        self,
        store: FleetStore,
        secret: bytes,
        *,
        wait: float,
        lock_ttl: float,
    ) -> None:
        self.store = store
        self._secret = hashlib.sha256(b"tokenguard shared introspection\0" + secret).digest()
        self.wait = wait
        self.lock_ttl = lock_ttl
        self.health = _StoreHealth(f"introspecting from this process alone for {_BACKOFF:g} s")
        self.hits = 0
        self.waits = 0
        self.takeovers = 0

    def key(self, token: str) -> str:
        """``intro:`` + HMAC-SHA256 of the token: never the token, and useless without the secret."""
        return "intro:" + hmac.new(self._secret, token.encode("ascii", "replace"), hashlib.sha256).hexdigest()

    def usable(self) -> bool:
        return self.health.usable()

    async def get(self, key: str) -> SharedRecord | None:
        data = await self.store.get(key)
        if data is None or len(data) <= _MAC_CHARS:
            return None
        mac, payload = data[:_MAC_CHARS], data[_MAC_CHARS:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            logger.warning("tokenguard: a shared introspection answer failed its MAC; ignored")
            return None
        try:
            return SharedRecord.decode(payload)
        except ValueError:
            return None

    async def put(self, key: str, record: SharedRecord, ttl: float) -> None:
        payload = record.encode()
        await self.store.put(key, self._mac(key, payload) + payload, ttl)

    async def claim(self, key: str, not_before: float | None = None) -> bytes | None:
        """The lock for ``key`` (an owner token to release it with), or ``None`` if another holds it.

        Also ``None`` when the answer is in the store once the lock is ours: its holder stored it and
        let go between the caller's look at the store and this claim, and asking the issuer again
        would be a second call for one token. The caller looks again and finds it. An answer given
        before ``not_before`` (a ``recheck`` cut-off) does not count, as for the caller.
        """
        owner = secrets.token_hex(16).encode()
        if not await self.store.claim(key + ":lock", owner, self.lock_ttl):
            return None
        try:
            record = await self.get(key)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.release(key, owner)
            raise
        if record is not None and (not_before is None or record.checked_at >= not_before):
            with contextlib.suppress(StoreUnavailable):  # it lapses by itself otherwise
                await self.release(key, owner)
            return None
        return owner

    async def release(self, key: str, owner: bytes) -> None:
        await self.store.release(key + ":lock", owner)

    def _mac(self, key: str, payload: bytes) -> bytes:
        mac = hmac.new(self._secret, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest()[:_MAC_CHARS]
        return mac.encode()

    @staticmethod
    def failure(now: float) -> tuple[SharedRecord, float]:
        """What the lock holder leaves when its call failed: waiters answer 503 instead of all retrying."""
        return SharedRecord(
            document=None,
            reason="introspection_unavailable",
            description="",
            expires=now + _FAILURE_TTL,
            checked_at=now,
            failed=True,
        ), _FAILURE_TTL

    async def pause(self, attempt: int) -> None:
        """Between two looks at a lock another process holds: 5 ms doubling, at most 100 ms."""
        await asyncio.sleep(min(0.1, 0.005 * (2 ** min(attempt, 5))))

    def status(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "waits": self.waits,
            "takeovers": self.takeovers,
            "failures": self.health.failures,
            "usable": self.usable(),
        }


class Fleet:
    """The revocation list and its feed through the fleet's store (module doc).

    Without a store it is the process's own list: ``revoke`` applies locally and nothing is stale.
    """

    def __init__(
        self,
        revocations: RevocationList,
        store: FleetStore | None,
        *,
        fail_closed: bool,
        clock: Callable[[], float],
    ) -> None:
        self.revocations = revocations
        self.store = store
        self.fail_closed = fail_closed
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()  # set by each full read; a new one for each loop
        self._pending: dict[bytes, Revocation] = {}
        self.stale_since: float | None = None
        self.stale_cause: str | None = None
        self.resyncs = 0
        self.published = 0
        self.received = 0
        #: Entries from the store this process could not hold: its list was full of live entries.
        self.overflow = 0
        self._overflow_warned_at: float | None = None
        if store is not None:
            self._lost("the revocation feed has not been read yet")

    @property
    def shared(self) -> bool:
        return self.store is not None

    @property
    def stale(self) -> bool:
        return self.stale_since is not None

    async def revoke(self, entry: Revocation) -> bool:
        """Apply ``entry`` here at once, and record it for the fleet.

        Raises ``StoreUnavailable`` when the store cannot take it now: the entry is applied in this
        process already and is recorded as soon as the feed is back (``pending``).
        """
        changed = self.revocations.add(entry)
        if self.store is None:
            return changed
        try:
            await self.store.record_revocation(
                entry.encode(), entry.expires_at, now=self._clock(), max_entries=self.revocations.max_entries
            )
        except StoreUnavailable:
            self._keep_pending(entry)
            raise
        self.published += 1
        return changed

    def _keep_pending(self, entry: Revocation) -> None:
        """Hold ``entry`` for the store; at most ``max_entries``, those already expired dropped first."""
        pending = self._pending
        if len(pending) >= self.revocations.max_entries:
            now = self._clock()
            for encoded, held in list(pending.items()):
                if held.expires_at <= now:
                    del pending[encoded]
        if len(pending) >= self.revocations.max_entries:
            logger.error(
                "tokenguard: %d revocations wait for the store already; one stays in this process only", len(pending)
            )
            return
        pending[entry.encode()] = entry

    @property
    def pending(self) -> int:
        """Entries applied here that the store has not taken yet (it was unreachable)."""
        return len(self._pending)

    def ensure_started(self) -> None:
        """Start the listener in the running loop if it is not running there (cheap when it is)."""
        if self.store is None:
            return
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._ready = asyncio.Event()
        self._task = loop.create_task(self._listen(), name="tokenguard-revocation-feed")

    async def start(self, wait: float) -> None:
        """Start the listener and wait up to ``wait`` seconds for its first full read (lifespan startup)."""
        if self.store is None:
            return
        self.ensure_started()
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except asyncio.TimeoutError:
            logger.warning(
                "tokenguard: the revocation feed could not be read within %g s of startup; serving with an "
                "empty list marked stale until it can",
                wait,
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            # It ends here, whatever it was doing; bounded, so a store that stopped answering cannot hold
            # the app's shutdown (redis-py shields its connection teardown from cancellation).
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 2.0)

    async def _listen(self) -> None:
        store = self.store
        assert store is not None
        delay = 0.1
        while True:
            stop_if_cancelled()
            try:
                feed = await store.subscribe()
                try:
                    await self._resync(store)
                    delay = 0.1
                    purged_at = retried_at = time.monotonic()
                    while True:
                        stop_if_cancelled()
                        data = await feed.next(1.0)
                        if data is not None:
                            self._apply(data)
                        if self._pending and time.monotonic() - retried_at >= 1.0:
                            # A ``revoke`` the store failed while the subscription stayed up (a
                            # timeout, a failover): publish it now, not only after a resubscription.
                            retried_at = time.monotonic()
                            with contextlib.suppress(StoreUnavailable):
                                await self._publish_pending(store)
                        if time.monotonic() - purged_at >= 10.0:
                            self.revocations.purge()
                            purged_at = time.monotonic()
                finally:
                    await feed.aclose()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                self._lost(exc.cause)
            except Exception as exc:  # a bug must not end the listener for good
                logger.error("tokenguard: revocation feed listener failed: %s", type(exc).__name__)
                self._lost(f"listener failed: {type(exc).__name__}")
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _resync(self, store: FleetStore) -> None:
        now = self._clock()
        entries = [entry for entry in (_decoded(data) for data in await store.revocations(now)) if entry is not None]
        self._overflowed(self.revocations.replace(entries))
        await self._publish_pending(store)
        await self._give_back(store, entries)
        self.resyncs += 1
        if self.stale_since is not None and self.resyncs > 1:
            logger.info("tokenguard: revocation feed is back; the list is current again")
        self.stale_since = self.stale_cause = None
        self.revocations.set_refuse_all(None)
        self._ready.set()

    async def _give_back(self, store: FleetStore, stored: list[Revocation]) -> None:
        """Record the entries this process holds that the store lacks (a Redis restarted without
        persistence forgot them), so a process started afterwards reads them too."""
        held = RevocationList(max_entries=self.revocations.max_entries, clock=self._clock)
        held.replace(stored)
        for entry in self.revocations.entries():
            if held.holds(entry):
                continue
            try:
                await store.record_revocation(
                    entry.encode(), entry.expires_at, now=self._clock(), max_entries=self.revocations.max_entries
                )
            except StoreFull:
                logger.error("tokenguard: the shared revocation list is full; an entry stays in this process only")
                return
            self.published += 1

    async def _publish_pending(self, store: FleetStore) -> None:
        """Record what ``revoke`` applied here while the store could not take it (``StoreUnavailable`` stops)."""
        for encoded, entry in list(self._pending.items()):
            try:
                await store.record_revocation(
                    encoded, entry.expires_at, now=self._clock(), max_entries=self.revocations.max_entries
                )
            except StoreFull:
                logger.error("tokenguard: the shared revocation list is full; an entry stays in this process only")
            else:
                self.published += 1
            self._pending.pop(encoded, None)

    def _apply(self, data: bytes) -> None:
        entry = _decoded(data)
        if entry is not None:
            self.received += 1
            try:
                self.revocations.add(entry)
            except StoreFull:
                self._overflowed(1)

    def _overflowed(self, count: int) -> None:
        """Entries of the shared list this process cannot hold: logged (once a minute) and counted.

        The feed goes on: a full list must not make it stale for good (nor, failing closed, refuse
        every token); the entries held keep being applied, and room comes back as entries expire.
        """
        if not count:
            return
        self.overflow += count
        now = time.monotonic()
        if self._overflow_warned_at is None or now - self._overflow_warned_at >= _WARN_EVERY:
            self._overflow_warned_at = now
            logger.error(
                "tokenguard: the revocation list is full (%d live entries): %d entr%s of the shared list "
                "not applied in this process; raise revocation_max_entries",
                self.revocations.max_entries,
                count,
                "y" if count == 1 else "ies",
            )

    def _lost(self, cause: str) -> None:
        if self.stale_since is None:
            self.stale_since = self._clock()
            if self.resyncs:
                logger.warning(
                    "tokenguard: revocation feed lost (%s); the revocation list is stale and %s",
                    cause,
                    "every token is refused with 503 until it is back"
                    if self.fail_closed
                    else "keeps its last state until it is back",
                )
        self.stale_cause = cause
        if self.fail_closed:
            self.revocations.set_refuse_all(f"the revocation list is stale: {cause}")

    def status(self) -> dict[str, Any]:
        return {
            **self.revocations.status(),
            "shared": self.shared,
            "stale": self.stale,
            "stale_since": self.stale_since,
            "pending": self.pending,
            "resyncs": self.resyncs,
            "received": self.received,
            "overflow": self.overflow,
            "fail_closed": self.fail_closed,
        }


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` when the running task was asked to stop, even if that request was lost.

    On Python 3.10 and 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives as the awaited
    call finishes (fixed in 3.12): a background loop that only relied on the exception would then run on,
    and a loop closing after it (an app's shutdown, a test's end) would wait for it forever. The task's
    own count of pending cancellations (``Task.cancelling``, 3.11) still says so; loops check it each round.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _decoded(data: bytes) -> Revocation | None:
    try:
        return Revocation.decode(data)
    except ValueError:
        logger.warning("tokenguard: an entry of the shared revocation list could not be read; ignored")
        return None
