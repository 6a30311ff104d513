"""An OpenID Shared Signals Framework (SSF 1.0) receiver: revocations pushed or polled from the issuer.

``TokenGuard(..., shared_signals=SharedSignals(transmitter=..., push_path="/ssf/events",
push_authorization="Bearer <secret>"))`` makes the guard a SET Recipient:

- **Push** (RFC 8935): the transmitter POSTs one Security Event Token (RFC 8417) to ``push_path``,
  ``Content-Type: application/secevent+jwt``, with the ``Authorization`` header configured for the
  stream. 202 when the SET was accepted (§2.2), 400 with ``{"err": ..., "description": ...}`` when
  it was not (§2.3, codes of §2.4); 503 when it cannot be recorded now (the transmitter retries).
- **Poll** (RFC 8936): every ``poll_interval`` seconds the guard POSTs to ``poll_url`` and
  acknowledges (``ack``) or reports (``setErrs``) each SET on the next poll (§2.4). In a fleet
  (``shared_store``) one process polls at a time.

A SET is accepted only when (SSF §4.1, RFC 8417 §2.2): its JWS header ``typ`` is ``secevent+jwt``
and ``alg`` an asymmetric algorithm, its signature verifies with a key of the transmitter's JWKS
(``jwks_uri`` of ``/.well-known/ssf-configuration``, SSF §7.1), ``iss`` is the transmitter,
``aud`` names this receiver, ``iat`` is within ``max_age`` in the past (and not in the future
beyond leeway), ``jti`` is present, it has no ``exp`` and no ``sub`` (the subject is ``sub_id``),
and ``events`` holds exactly one event. A SET whose ``jti`` was seen already is acknowledged and
not applied again (the dedup key lives as long as a SET may be accepted at all). A ``jti`` is
recorded as seen only once its event is applied: a SET answered 503 (the revocation list was full)
is applied when the transmitter sends it again. Applying an event twice (two processes of a fleet
racing on one SET) changes nothing: entries only ever extend.

Events and what they do to the revocation list (``tokenguard.revocation``), for a subject of a
trusted token issuer:

==================================  ===========================================================
CAEP ``session-revoked``            ``jwt_id`` subject: that token; ``iss_sub``: the subject's
                                    tokens issued before ``event_timestamp``
CAEP ``credential-change``,         the subject's tokens issued before ``event_timestamp``
RISC ``account-disabled``,
RISC ``account-purged``
CAEP ``token-claims-change``        re-check those tokens with the issuer (introspection)
SSF ``verification``                accepted; its ``state`` is kept in ``status()``
==================================  ===========================================================

Subjects it cannot process (another format, another issuer) and event types it does not know are
accepted and dropped, as SSF §3.6 lets a receiver do; ``status()`` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tokenguard._details import read_body
from tokenguard._http import FetchError, HttpClientPool, safe_url
from tokenguard._jose import parse_jws
from tokenguard._lru import LRU
from tokenguard._signatures import verifier
from tokenguard.config import DEFAULT_ALGORITHMS, check_url
from tokenguard.errors import ConfigurationError, InvalidRequest, InvalidToken, UnavailableError
from tokenguard.fleet import Fleet, stop_if_cancelled
from tokenguard.jwks import KeySet, parse_jwks
from tokenguard.revocation import Revocation, RevocationAction, entry_text, finite_number
from tokenguard.store import FleetStore, SharedStore, StoreUnavailable

__all__ = ["EVENT_TYPES", "SetRefused", "SharedSignals", "SignalReceiver"]

logger = logging.getLogger("tokenguard")

_CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
_RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SESSION_REVOKED = _CAEP + "session-revoked"
CREDENTIAL_CHANGE = _CAEP + "credential-change"
TOKEN_CLAIMS_CHANGE = _CAEP + "token-claims-change"
ACCOUNT_DISABLED = _RISC + "account-disabled"
ACCOUNT_PURGED = _RISC + "account-purged"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
#: The event types this receiver acts on (the table in the module doc).
EVENT_TYPES: tuple[str, ...] = (
    SESSION_REVOKED,
    CREDENTIAL_CHANGE,
    TOKEN_CLAIMS_CHANGE,
    ACCOUNT_DISABLED,
    ACCOUNT_PURGED,
    VERIFICATION,
)
_PUSH = "urn:ietf:rfc:8935"
_POLL = "urn:ietf:rfc:8936"
_MAX_SET_BYTES = 64 * 1024
_MAX_JTI = 256
_KEYS_TTL = 3600.0
_REFETCH_COOLDOWN = 30.0
_MAX_POLL_EVENTS = 100


class SetRefused(Exception):
    """A SET that is not accepted: ``err`` is an RFC 8935 §2.4 error code, ``description`` says why."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


@dataclass(frozen=True)
class SharedSignals:
    """Where Shared Signals events come from, and how they are delivered (``TokenGuard(shared_signals=...)``).

    ``transmitter``: the transmitter's issuer identifier; its SSF configuration is read from
    ``/.well-known/ssf-configuration`` (SSF §7.1). ``audience``: what the SETs' ``aud`` must name
    (default: the guard's ``client_id``, which most transmitters use as the stream's audience).
    ``push_path`` + ``push_authorization`` (the exact ``Authorization`` header value the stream was
    configured to send; required, so nobody else can push) serve RFC 8935 push; ``poll_url`` (+
    ``poll_authorization``) polls per RFC 8936. ``max_age``: the oldest ``iat`` accepted.
    """

    transmitter: str
    audience: str | Sequence[str] | None = None
    push_path: str | None = None
    push_authorization: str | None = None
    poll_url: str | None = None
    poll_authorization: str | None = None
    poll_interval: float = 5.0
    max_age: float = 3600.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        check_url("shared_signals.transmitter", self.transmitter)
        if self.push_path is None and self.poll_url is None:
            raise ConfigurationError("shared_signals needs push_path (RFC 8935 push) or poll_url (RFC 8936 poll)")
        if self.push_path is not None:
            if not isinstance(self.push_path, str) or not self.push_path.startswith("/") or "?" in self.push_path:
                raise ConfigurationError(
                    f"shared_signals.push_path must be a path such as '/ssf/events', got {self.push_path!r}"
                )
            value = self.push_authorization
            if not isinstance(value, str) or len(value) < 16 or not _header_value(value):
                raise ConfigurationError(
                    "shared_signals.push_authorization must be the Authorization header value the transmitter "
                    "sends (at least 16 printable ASCII characters, e.g. 'Bearer <random secret>'): an open "
                    "push endpoint would let anyone replay SETs at it"
                )
        if self.poll_authorization is not None and (
            not isinstance(self.poll_authorization, str) or not _header_value(self.poll_authorization)
        ):
            raise ConfigurationError(
                "shared_signals.poll_authorization must be an Authorization header value (printable ASCII)"
            )
        if self.poll_url is not None:
            check_url("shared_signals.poll_url", self.poll_url)
        for name in ("poll_interval", "max_age", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigurationError(f"shared_signals.{name} must be a positive number of seconds, got {value!r}")
        if self.audience is not None and not _audiences(self.audience):
            raise ConfigurationError("shared_signals.audience must be a string or a non-empty list of strings")

    def __repr__(self) -> str:  # the authorization values are secrets
        return (
            f"SharedSignals(transmitter={self.transmitter!r}, push_path={self.push_path!r}, "
            f"poll_url={safe_url(self.poll_url) if self.poll_url else None!r})"
        )


def _audiences(value: object) -> tuple[str, ...]:
    """``value`` as a non-empty tuple of non-empty strings, or ``()`` when it is not one."""
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        return ()
    texts = tuple(item for item in items if isinstance(item, str) and item)
    return texts if texts and len(texts) == len(items) else ()


def _header_value(value: str) -> bool:
    """What an HTTP client can send and a server hands over unchanged: printable ASCII, no outer spaces."""
    return value.isascii() and value.isprintable() and value == value.strip()


def configuration_url(issuer: str) -> str:
    """SSF §7.1: ``/.well-known/ssf-configuration`` between the host and the issuer's path."""
    parts = urlsplit(issuer)
    return urlunsplit((parts.scheme, parts.netloc, "/.well-known/ssf-configuration" + parts.path.rstrip("/"), "", ""))


class SignalReceiver:
    """Verifies SETs from one transmitter and applies their events to the fleet's revocation list."""

    def __init__(
        self,
        signals: SharedSignals,
        *,
        audience: Sequence[str],
        token_issuers: Sequence[str],
        fleet: Fleet,
        dedup: SharedStore,
        http: HttpClientPool,
        max_token_lifetime: float,
        leeway: float,
        clock: Callable[[], float],
    ) -> None:
        self.signals = signals
        self.audience = frozenset(audience)
        self.token_issuers = frozenset(token_issuers)
        self.fleet = fleet
        self.dedup = dedup
        self.http = http
        self.max_token_lifetime = max_token_lifetime
        self.leeway = leeway
        self.clock = clock
        self._keys: KeySet | None = None
        self._keys_at = -math.inf
        self._refetched_at = -math.inf
        self._keys_lock: asyncio.Lock | None = None
        self._seen_here: LRU[str, bool] = LRU(4096)
        self._acks: list[str] = []
        self._errors: dict[str, dict[str, str]] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_loop: asyncio.AbstractEventLoop | None = None
        self.counts = {
            "accepted": 0,
            "duplicates": 0,
            "refused": 0,
            "dropped": 0,
            "applied": 0,
            "polls": 0,
            "polls_past_a_stuck_lock": 0,
        }
        #: When this process was first refused the fleet's poll lock in a row (``None``: it polls, or got it).
        self._lock_refused_since: float | None = None
        self._stuck_warned_at = -math.inf
        #: The "polled" mark this process left last (``poll_once``), and what in it names this process.
        self._own_mark: bytes | None = None
        self._process_id = secrets.token_hex(8)
        self.last_verification_state: str | None = None

    # -- one SET ------------------------------------------------------------------------------

    async def accept(self, set_token: str) -> str:
        """Verify and apply one SET; ``"applied"``, ``"dropped"``, ``"duplicate"`` or ``"verified"``.

        Raises ``SetRefused`` (not accepted: 400) or ``UnavailableError`` (cannot be recorded now: 503).
        """
        try:
            parsed = parse_jws(set_token)
        except InvalidToken:
            raise self._refused("invalid_request", "The request body is not a compact JWS.") from None
        header, claims = parsed.header, parsed.claims
        typ = header.get("typ")
        # SSF §4.1 / RFC 8417 §2.3: explicitly typed; RFC 7515 §4.1.9 lets "application/" be left out.
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "secevent+jwt":
            raise self._refused("invalid_request", "The SET's typ is not secevent+jwt.")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in DEFAULT_ALGORITHMS or "crit" in header:
            raise self._refused("invalid_key", "The SET's alg is not an accepted asymmetric algorithm.")
        if kid is not None and not isinstance(kid, str):
            raise self._refused("invalid_key", "The SET's kid is not a string.")
        await self._verify(parsed.signing_input, parsed.signature, alg, kid)
        if claims.get("iss") != self.signals.transmitter:
            raise self._refused("invalid_issuer", "The SET comes from another issuer.")
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if not any(isinstance(item, str) and item in self.audience for item in audiences):
            raise self._refused("invalid_audience", "The SET is for another audience.")
        now = self.clock()
        iat, jti = claims.get("iat"), claims.get("jti")
        if not finite_number(iat) or iat > now + self.leeway or iat < now - self.signals.max_age:
            raise self._refused("invalid_request", "The SET's iat is missing, in the future, or too old.")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise self._refused("invalid_request", "The SET has no usable jti.")
        if "exp" in claims or "sub" in claims:  # SSF §4.1: no exp; the subject is sub_id, never sub
            raise self._refused("invalid_request", "A SET carries no exp and no sub claim.")
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1:
            raise self._refused("invalid_request", "A SET carries exactly one event.")
        ((event_type, event),) = events.items()
        if not isinstance(event, dict):
            raise self._refused("invalid_request", "The SET's event is not an object.")
        if event_type == VERIFICATION:
            state = event.get("state")
            self.last_verification_state = state if isinstance(state, str) else None
            self.counts["accepted"] += 1
            return "verified"
        entries = self._entries(event_type, event, claims, float(iat), now)
        if entries is None:
            self.counts["accepted"] += 1
            self.counts["dropped"] += 1
            return "dropped"
        key = "ssf-jti:" + hashlib.sha256(f"{self.signals.transmitter}\0{jti}".encode()).hexdigest()
        if self._seen_here.get(key):
            return self._duplicate()
        for entry in entries:
            try:
                await self.fleet.revoke(entry)
            except StoreUnavailable:
                # Applied here already; the fleet gets it when the store is back (``Fleet.pending``).
                logger.warning("tokenguard: a Shared Signals event was applied here; the shared store has it later")
        # Seen only now that it is applied: a SET refused with 503 above (``StoreFull``) comes again and
        # must then be applied, not acknowledged as a duplicate of itself.
        try:
            fresh = await self.dedup.add_once(key, self.signals.max_age + self.leeway + 1)
        except UnavailableError:
            fresh = True  # applied all the same; only a duplicate from another process may go uncounted
        self._seen_here[key] = True
        if not fresh:
            return self._duplicate()
        self.counts["accepted"] += 1
        self.counts["applied"] += 1
        return "applied"

    def _duplicate(self) -> str:
        self.counts["accepted"] += 1
        self.counts["duplicates"] += 1
        return "duplicate"

    def _refused(self, err: str, description: str) -> SetRefused:
        self.counts["refused"] += 1
        return SetRefused(err, description)

    def _entries(
        self, event_type: str, event: Mapping[str, Any], claims: Mapping[str, Any], iat: float, now: float
    ) -> list[Revocation] | None:
        """The revocation entries an event asks for; ``None`` when it is dropped (SSF §3.6)."""
        if event_type not in EVENT_TYPES:
            return None
        subject = claims.get("sub_id", event.get("subject"))  # SSF §4.1 sub_id; older CAEP drafts: in the event
        if isinstance(subject, Mapping) and subject.get("format") == "complex":
            subject = subject.get("user")
        if not isinstance(subject, Mapping):
            return None
        stamp = event.get("event_timestamp")
        # The cut-off: when the event happened, never later than now (a clock ahead cannot revoke the future).
        at = min(float(stamp), now + self.leeway) if finite_number(stamp) else iat
        # ``iat`` has whole seconds: a token issued in the event's own second may predate it, so it is
        # covered too (the cut-off is the end of that second; tokens need ``iat`` < cut-off).
        cutoff = math.floor(at) + 1.0
        action: RevocationAction = "recheck" if event_type == TOKEN_CLAIMS_CHANGE else "revoke"
        issuer = subject.get("iss")
        if not isinstance(issuer, str) or issuer not in self.token_issuers:
            return None  # not about tokens this guard accepts
        keep = self.max_token_lifetime + self.leeway
        if subject.get("format") == "jwt_id" and entry_text(subject.get("jti")):
            value = subject["jti"]
            return [Revocation("jti", value, math.inf, max(now, cutoff) + keep, issuer, action)]
        if subject.get("format") == "iss_sub" and entry_text(subject.get("sub")):
            return [Revocation("sub", subject["sub"], cutoff, cutoff + keep, issuer, action)]
        return None

    # -- the transmitter's keys ---------------------------------------------------------------

    async def _verify(self, signing_input: bytes, signature: bytes, alg: str, kid: str | None) -> None:
        keys = await self._current_keys()
        candidates = keys.candidates(kid, alg)
        if not candidates and kid is not None and not keys.knows(kid):
            keys = await self._current_keys(refetch=True)  # the transmitter rotated its keys
            candidates = keys.candidates(kid, alg)
        if not any(verifier(alg, key.key)(signing_input, signature) for key in candidates):
            raise self._refused("invalid_key", "The SET's signature does not verify with the transmitter's keys.")

    async def _current_keys(self, *, refetch: bool = False) -> KeySet:
        now = time.monotonic()
        fresh = self._keys is not None and now - self._keys_at < _KEYS_TTL
        if fresh and not (refetch and now - self._refetched_at >= _REFETCH_COOLDOWN):
            assert self._keys is not None
            return self._keys
        if self._keys_lock is None:
            self._keys_lock = asyncio.Lock()
        async with self._keys_lock:
            if self._keys is not None and self._keys_at > now:  # fetched while this call waited
                return self._keys
            try:
                self._keys = await self._fetch_keys()
                self._keys_at = time.monotonic()
                if refetch:
                    self._refetched_at = self._keys_at
            except FetchError as exc:
                if self._keys is None:
                    raise UnavailableError(f"the transmitter's keys could not be fetched: {exc}") from exc
                logger.warning("tokenguard: could not refresh the Shared Signals transmitter's keys: %s", exc)
            return self._keys

    async def _fetch_keys(self) -> KeySet:
        url = configuration_url(self.signals.transmitter)
        result = await self.http.get(url, timeout=self.signals.timeout, max_bytes=256 * 1024)
        if result.status != 200:
            raise FetchError(f"GET {safe_url(url)} answered {result.status}", result.status)
        document = result.json_object(url)
        if document.get("issuer") != self.signals.transmitter:
            raise FetchError(f"{safe_url(url)} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError(f"{safe_url(url)} has no jwks_uri")
        try:
            check_url("the transmitter's jwks_uri", jwks_uri)
        except ConfigurationError as exc:  # the transmitter's document is wrong, not this guard's options
            raise FetchError(f"{safe_url(url)}: {exc}") from None
        answer = await self.http.get(jwks_uri, timeout=self.signals.timeout, max_bytes=256 * 1024)
        if answer.status != 200:
            raise FetchError(f"GET {safe_url(jwks_uri)} answered {answer.status}", answer.status)
        try:
            return parse_jwks(answer.json_object(jwks_uri), max_keys=100)
        except ValueError as exc:
            raise FetchError(f"{safe_url(jwks_uri)}: {exc}") from exc

    # -- RFC 8935 push ------------------------------------------------------------------------

    async def serve(self, scope: Mapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> int:
        """Answer one push request (ASGI); returns the status sent."""
        if scope.get("method") != "POST":
            await _answer(send, 405, None, extra=[(b"allow", b"POST")])
            return 405
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        given = headers.get(b"authorization", b"")
        expected = (self.signals.push_authorization or "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            self.counts["refused"] += 1
            return await _refuse(send, SetRefused("authentication_failed", "The transmitter is not authenticated."))
        media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if media != b"application/secevent+jwt":  # RFC 8935 §2.1
            return await _refuse(send, self._refused("invalid_request", "The body must be application/secevent+jwt."))
        try:
            body, _replay = await read_body(scope, receive, _MAX_SET_BYTES)
        except InvalidRequest as exc:  # too large (announced or read), or the client went away
            return await _refuse(send, self._refused("invalid_request", exc.description))
        try:
            text = body.decode("ascii").strip()
            await self.accept(text)
        except UnicodeDecodeError:
            return await _refuse(send, self._refused("invalid_request", "The request body is not a compact JWS."))
        except SetRefused as exc:
            logger.info("tokenguard: Shared Signals SET refused (%s): %s", exc.err, exc.description)
            return await _refuse(send, exc)
        except UnavailableError as exc:
            logger.warning("tokenguard: Shared Signals SET not recorded now (503): %s", exc.cause)
            await _answer(send, 503, None, extra=[(b"retry-after", str(exc.retry_after).encode())])
            return 503
        except Exception as exc:  # a bug: the SET is not taken, and the transmitter sends it again later
            logger.error("tokenguard: Shared Signals SET not processed (503): %s", type(exc).__name__)
            await _answer(send, 503, None, extra=[(b"retry-after", b"5")])
            return 503
        await _answer(send, 202, None)
        return 202

    # -- RFC 8936 poll ------------------------------------------------------------------------

    def ensure_polling(self) -> None:
        """Start the poller in the running loop when polling is configured and it is not running there."""
        if self.signals.poll_url is None:
            return
        loop = asyncio.get_running_loop()
        if self._poll_loop is loop and self._poll_task is not None and not self._poll_task.done():
            return
        self._poll_loop = loop
        self._poll_task = loop.create_task(self._poll_forever(), name="tokenguard-ssf-poll")

    async def stop(self) -> None:
        task, self._poll_task = self._poll_task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll_forever(self) -> None:
        while True:
            stop_if_cancelled()
            more = False
            try:
                more = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except (FetchError, UnavailableError) as exc:
                logger.warning("tokenguard: Shared Signals poll failed: %s", exc)
            except Exception as exc:  # the poller must outlive a bug in one round
                logger.error("tokenguard: Shared Signals poll failed: %s", type(exc).__name__)
            if not more:
                await asyncio.sleep(self.signals.poll_interval)

    async def poll_once(self) -> bool:
        """One RFC 8936 §2.4 poll: acknowledge what was processed, apply what comes; ``moreAvailable``."""
        signals = self.signals
        assert signals.poll_url is not None
        store = self.fleet.store
        owner = secrets.token_bytes(16)
        # One lock (and one "last polled" mark) per transmitter's poll URL: fleets that share a prefix but
        # poll different transmitters never wait on each other.
        name = hashlib.sha256(signals.poll_url.encode()).hexdigest()[:16]
        lock, polled_mark = f"ssf-poll:{name}", f"ssf-polled:{name}"
        held = isinstance(store, FleetStore) and await store.claim(lock, owner, signals.poll_interval + signals.timeout)
        if held:
            self._lock_refused_since = None
        elif isinstance(store, FleetStore) and not await self._lock_is_stuck(store, polled_mark):
            return False  # another process of the fleet polls this round
        if isinstance(store, FleetStore):
            # Marked before the transmitter is asked: a process whose polls fail (the transmitter is down)
            # still polls, and the others must not take the lock it holds for a stuck one. The mark names
            # this process, so that polling past a stuck lock it does not take its own mark for another's.
            self._own_mark = f"{float(self.clock())!r} {self._process_id}".encode()
            with contextlib.suppress(StoreUnavailable):
                await store.put(polled_mark, self._own_mark, 4 * self._lock_patience())
        try:
            request: dict[str, Any] = {"maxEvents": _MAX_POLL_EVENTS, "returnImmediately": True}
            acks, errors = self._acks, self._errors
            if acks:
                request["ack"] = list(acks)
            if errors:
                request["setErrs"] = dict(errors)
            headers = {"Authorization": signals.poll_authorization} if signals.poll_authorization else {}
            result = await self.http.post_json(
                signals.poll_url, request, headers=headers, timeout=signals.timeout, max_bytes=4 * 1024 * 1024
            )
            if result.status != 200:
                raise FetchError(f"POST {safe_url(signals.poll_url)} answered {result.status}", result.status)
            self._acks, self._errors = [], {}  # delivered with this poll (§2.4)
            self.counts["polls"] += 1
            document = result.json_object(signals.poll_url)
            sets = document.get("sets")
            if not isinstance(sets, dict):
                raise FetchError(f"{safe_url(signals.poll_url)} answered without a sets object")
            received = list(sets.items())[:_MAX_POLL_EVENTS]
            for jti, set_token in received:
                if not isinstance(set_token, str) or len(set_token) > _MAX_SET_BYTES:
                    # Reported, not skipped: a SET never acknowledged nor refused would come back forever.
                    refused = self._refused("invalid_request", "The SET is not a compact JWS of at most 64 KiB.")
                    self._errors[jti] = {"err": refused.err, "description": refused.description}
                    continue
                try:
                    await self.accept(set_token)
                except SetRefused as exc:
                    self._errors[jti] = {"err": exc.err, "description": exc.description}
                    continue
                except UnavailableError:
                    continue  # not acknowledged: it comes again with a later poll
                self._acks.append(jti)
            # More only when this answer had SETs: "more" with none must not make the poller spin.
            return document.get("moreAvailable") is True and bool(received)
        finally:
            if held and isinstance(store, FleetStore):
                with contextlib.suppress(StoreUnavailable):  # the lock ends with its TTL anyway
                    await store.release(lock, owner)

    def _lock_patience(self) -> float:
        """How long the fleet may go without a poll before a refused lock counts as stuck: three rounds."""
        return 3 * (self.signals.poll_interval + self.signals.timeout)

    async def _lock_is_stuck(self, store: FleetStore, polled_mark: str) -> bool:
        """The poll lock was refused: whether no process has tried a poll for ``_lock_patience`` all the same.

        A holder that dies loses the lock with its TTL; a lock that never ends (set without one by
        something that is not a guard) would stop every process from polling, silently, and the
        transmitter's revocations would never arrive. Then this process polls anyway, and says so.
        """
        now = self.clock()
        if self._lock_refused_since is None:
            self._lock_refused_since = now
        if now - self._lock_refused_since < self._lock_patience():
            return False
        mark = await store.get(polled_mark)
        try:
            polled_at = float(mark.split(b" ")[0]) if mark is not None and mark != self._own_mark else -math.inf
        except ValueError:
            polled_at = -math.inf
        if now - polled_at < self._lock_patience():
            self._lock_refused_since = now  # another process polls: the lock works
            return False
        self.counts["polls_past_a_stuck_lock"] += 1
        if now - self._stuck_warned_at >= 60.0:
            self._stuck_warned_at = now
            logger.warning(
                "tokenguard: the fleet's Shared Signals poll lock has been held for %.0f s with no poll made; "
                "polling anyway",
                now - self._lock_refused_since,
            )
        return True

    def status(self) -> dict[str, Any]:
        return {**self.counts, "last_verification_state": self.last_verification_state}


async def _refuse(send: Any, exc: SetRefused) -> int:
    """RFC 8935 §2.3: 400 with a JSON body naming the error (§2.4 codes) and why."""
    body = json.dumps({"err": exc.err, "description": exc.description}).encode()
    await _answer(send, 400, body)
    return 400


async def _answer(send: Any, status: int, body: bytes | None, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"cache-control", b"no-store"), *extra]
    if body is not None:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    else:
        headers.append((b"content-length", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})
