"""The Shared Signals transmitter of ``DevIdP`` (OpenID SSF 1.0): event streams, SETs, push and poll.

What it implements, and where:

- discovery (SSF 1.0 §7): the Transmitter Configuration Metadata (§7.1) at ``/.well-known/ssf-configuration``,
  inserted between the issuer's host and path (§7.2, as RFC 8414 §3.1 does); SETs are signed with the
  key the DevIdP signs access tokens with, published at its ``jwks_uri`` (§4.1.4);
- stream management (§8.1.1): create (POST, 201), read one or all of the receiver's streams (GET) and
  delete (DELETE, 204) at the configuration endpoint, for a receiver authenticated as a confidential
  client (HTTP Basic, RFC 6749 §2.3.1; §8 leaves the scheme to the parties), whose ``client_id`` is the
  stream's ``aud`` (§8.1.1: Transmitter-Supplied); verification (§8.1.4: POST, 204, then a verification
  SET on that stream, whose ``sub_id`` is the stream, RFC 9493 §3.2.4 ``opaque``);
- Security Event Tokens (RFC 8417) as SSF §4.1 profiles them: ``typ`` "secevent+jwt" (§4.1.1), a
  top-level ``sub_id`` (§3, RFC 9493) and never ``sub`` (§4.1.2), never ``exp`` (§4.1.7), exactly one
  event (§4.2.1), and a ``txn`` the SETs of one cause share (§4.1.9). Subjects: ``jwt_id`` for one JWT
  access token (§3.5.1), ``iss_sub`` for a user (RFC 9493 §3.2.3);
- event types: CAEP 1.0 session-revoked (§3.1), token-claims-change (§3.2) and credential-change
  (§3.3); RISC 1.0 account-purged (§2.2) and account-disabled (§2.3); SSF verification (§8.1.4.1).
  Every event carries ``event_timestamp`` (CAEP §2), integer seconds by the DevIdP's clock;
- push delivery (RFC 8935 §2.1): POST of the SET as ``application/secevent+jwt``, with the stream's
  ``authorization_header`` verbatim (SSF §6.1.1). 202 or 200 is delivered (§2.2); 400 with an
  ``err`` member (§2.3) is refused and not sent again (§4: a retry "is extremely unlikely to be
  successful"); anything else, or no answer, is tried again after ``retry_delay`` doubling, up to
  ``max_attempts`` attempts, then recorded as failed;
- poll delivery (RFC 8936 §2): ``maxEvents``, ``returnImmediately`` (a long poll, bounded by
  ``poll_wait`` and woken when a SET is queued), ``ack`` and ``setErrs`` (§2.4.4); SETs not
  acknowledged are sent again by the next poll; ``moreAvailable``.

Left out: the stream status endpoint (§8.1.2); adding and removing subjects (§8.1.3: every stream
gets events about every subject, ``default_subjects`` "ALL"); updating or replacing a stream
(PATCH and PUT, §8.1.1.3-4); the stream updated event (§8.1.5); ``min_verification_interval``,
``inactivity_timeout``; encrypted SETs.

Delivery runs wherever an event loop asks for it: ``Transmitter.deliver()`` settles every SET pending
now (a test awaits it), and ``Transmitter.running()`` (entered by the DevIdP app's lifespan, so by any
server) keeps a task that pushes each SET as soon as it is queued, from any thread: queueing wakes
every waiting loop with ``call_soon_threadsafe``. State is shared under the DevIdP's lock; network
I/O never holds it. Every store is bounded: ``max_streams`` streams, ``max_queue`` SETs per stream
(the oldest go first, counted as dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import jwt

from tokenguard._strictjson import strict_loads
from tokenguard.config import is_loopback_host
from tokenguard.errors import ConfigurationError
from tokenguard.testing._keys import SigningKey
from tokenguard.testing._model import EventKind, Grant

# -- names from the specifications -------------------------------------------------------------

#: CAEP 1.0 §3.1: the session (here: a token, or every session of a user) was revoked.
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
#: CAEP 1.0 §3.2: a claim in the subject's tokens changed (member ``claims``).
TOKEN_CLAIMS_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change"
#: CAEP 1.0 §3.3: a credential was created, changed, revoked or deleted (``credential_type``, ``change_type``).
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
#: RISC 1.0 §2.3: the account was disabled (optional ``reason``).
ACCOUNT_DISABLED = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
#: RISC 1.0 §2.2: the account was deleted.
ACCOUNT_PURGED = "https://schemas.openid.net/secevent/risc/event-type/account-purged"
#: SSF 1.0 §8.1.4.1: a stream check the receiver asked for (optional ``state``).
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
#: The event types this transmitter sends, in the order streams list them (``events_supported``).
EVENT_TYPES: tuple[str, ...] = (
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    CREDENTIAL_CHANGE,
    ACCOUNT_DISABLED,
    ACCOUNT_PURGED,
    VERIFICATION,
)
#: SSF 1.0 §6.1: delivery method URIs, RFC 8935 push and RFC 8936 poll.
PUSH_METHOD = "urn:ietf:rfc:8935"
POLL_METHOD = "urn:ietf:rfc:8936"
DeliveryMethod = Literal["push", "poll"]
_METHODS: dict[str, DeliveryMethod] = {PUSH_METHOD: "push", POLL_METHOD: "poll"}
#: SSF 1.0 §7.2: where the metadata is, before the issuer's path.
WELL_KNOWN = "/.well-known/ssf-configuration"
#: RFC 8417 §2.3 / SSF §4.1.1: the explicit ``typ`` of every SET, and the push body's media type (RFC 8935 §2.1).
SET_TYPE = "secevent+jwt"
SET_MEDIA_TYPE = "application/secevent+jwt"

# CAEP 1.0 §3.3: the change types a credential-change event may name.
_CHANGE_TYPES = frozenset({"create", "revoke", "update", "delete"})
# Why a DevIdP revocation happened, as CAEP §2 ``initiating_entity`` names who did it.
_INITIATORS = {
    "refresh_token_replay": "policy",
    "authorization_code_reuse": "policy",
    "logout": "user",
    "revoked": "admin",
}
_MAX_URL = 2048
_MAX_AUTHORIZATION = 4096
_MAX_EVENTS_REQUESTED = 64
_MAX_DESCRIPTION = 1024
_MAX_ANSWER = 16 * 1024  # what is read of a receiver's answer: enough for an RFC 8935 §2.3 error
_MAX_REASON = 256  # a receiver's error description, as recorded in an event
_CONCURRENCY = 16  # pushes in flight at once, per delivering loop
_POLL_MAX = 100  # SETs per poll answer when the receiver names no maxEvents (RFC 8936 §2.4)
_OUTCOME_COUNTS = ("queued", "delivered", "rejected", "failed", "dropped")

Outcome = Literal["delivered", "rejected", "retry"]


class StreamLimitReached(ConfigurationError):
    """The transmitter holds ``max_streams`` streams already (the HTTP side answers 409, SSF §8.1.1.1)."""


@dataclass(frozen=True)
class SSFSettings:
    """How the DevIdP's Shared Signals transmitter delivers, and how much it keeps.

    ``retry_delay``: seconds before the second push of a SET, doubling after each failed attempt, up to
    ``max_attempts`` attempts in all. ``push_timeout``: seconds one push may take. ``poll_wait``: how
    long a long poll (RFC 8936 ``returnImmediately`` false) waits for a SET. ``max_streams`` streams are
    kept, each with up to ``max_queue`` SETs not yet delivered (the oldest are dropped first). Delays are
    real time (``time.monotonic``), whatever clock the DevIdP has: they pace a network, not tokens.
    """

    retry_delay: float = 0.25
    max_attempts: int = 5
    push_timeout: float = 10.0
    poll_wait: float = 5.0
    max_streams: int = 100
    max_queue: int = 10_000

    def __post_init__(self) -> None:
        for name in ("retry_delay", "push_timeout", "poll_wait"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 3600:
                raise ConfigurationError(f"SSFSettings.{name} must be a number of seconds in (0, 3600), got {value!r}")
        for name in ("max_attempts", "max_streams", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"SSFSettings.{name} must be a whole number of at least 1, got {value!r}")


@dataclass(frozen=True)
class Stream:
    """One event stream (SSF 1.0 §8.1.1): the receiver (``audience``), what it asked for, and how it gets it.

    ``push_url``: where SETs are pushed (RFC 8935), ``None`` for a poll stream, whose receiver polls
    the transmitter (RFC 8936). ``authorization``: the ``Authorization`` header value each push carries
    (SSF §6.1.1 ``authorization_header``), never shown.
    """

    stream_id: str
    audience: str
    method: DeliveryMethod
    events_requested: tuple[str, ...]
    push_url: str | None = None
    authorization: str | None = field(default=None, repr=False)
    description: str | None = None

    @property
    def events_delivered(self) -> tuple[str, ...]:
        """SSF 1.0 §8.1.1: the events requested that this transmitter supports, in the order requested."""
        return tuple(dict.fromkeys(event for event in self.events_requested if event in EVENT_TYPES))

    def delivers(self, event_type: str) -> bool:
        """Whether a SET of ``event_type`` goes on this stream; verification always does (SSF §8.1.4)."""
        return event_type == VERIFICATION or event_type in self.events_delivered


# -- checking what a receiver or a test asks for --------------------------------------------------


def check_push_url(url: object, name: str) -> str:
    """A push endpoint: https, or http to a loopback host (a receiver on this machine); no credentials in it."""
    shape = f"{name} must be an https:// URL, or http:// to a loopback host, got {url!r}"
    if not isinstance(url, str) or not 0 < len(url) <= _MAX_URL or not url.isascii() or not url.isprintable():
        raise ConfigurationError(shape)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError as exc:
        raise ConfigurationError(shape) from exc
    if " " in url or not parts.hostname or parts.fragment or "#" in url:
        raise ConfigurationError(shape)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        raise ConfigurationError(shape)
    if parts.username is not None or parts.password is not None:
        # Credentials belong in authorization_header, which is never echoed; a URL is shown and logged.
        raise ConfigurationError(f"{name} must not hold credentials (user:password@): use the authorization header")
    return url


def check_authorization(value: object, name: str) -> str:
    """An ``Authorization`` header value sent verbatim: printable ASCII only, so no CR/LF can split the request."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_AUTHORIZATION:
        raise ConfigurationError(f"{name} must be a non-empty string of at most {_MAX_AUTHORIZATION} characters")
    if any(not " " <= char <= "~" for char in value):
        raise ConfigurationError(f"{name} must be printable ASCII (no line breaks or control characters)")
    return value


def check_events(events: object, name: str) -> tuple[str, ...]:
    """``events_requested``: a list of event type URIs; unknown ones are kept, and not delivered (SSF §8.1.1)."""
    if isinstance(events, str) or not isinstance(events, Iterable):
        raise ConfigurationError(f"{name} must be a list of event type URIs, got {events!r}")
    items = list(islice(iter(events), _MAX_EVENTS_REQUESTED + 1))
    if len(items) > _MAX_EVENTS_REQUESTED:
        raise ConfigurationError(f"{name} may list at most {_MAX_EVENTS_REQUESTED} event types")
    for item in items:
        if not isinstance(item, str) or not 0 < len(item) <= _MAX_URL or not item.isprintable():
            raise ConfigurationError(f"{name} must hold event type URIs (non-empty strings), got {item!r}")
    return tuple(dict.fromkeys(items))


def check_description(value: object, name: str) -> str | None:
    """SSF §8.1.1: a description for people; the transmitter "MAY truncate" a long one, and does."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    return value[:_MAX_DESCRIPTION]


@dataclass(frozen=True)
class StreamRequest:
    """What a receiver asks for when it creates a stream: the Receiver-Supplied members (SSF §8.1.1.1)."""

    method: DeliveryMethod
    events: tuple[str, ...] | None
    push_url: str | None = None
    authorization: str | None = field(default=None, repr=False)
    description: str | None = None


def parse_stream_request(document: Mapping[str, Any]) -> StreamRequest:
    """A create-stream request body (SSF §8.1.1.1), checked; ``ConfigurationError`` names what is wrong."""
    delivery = document.get("delivery")
    if delivery is None:
        # SSF §8.1.1.1: "If the request does not contain the delivery property, then the Transmitter
        # MUST assume that the method is urn:ietf:rfc:8936 (poll)."
        delivery = {"method": POLL_METHOD}
    if not isinstance(delivery, dict):
        raise ConfigurationError("delivery must be a JSON object")
    name = delivery.get("method")
    method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ConfigurationError(f"delivery.method must be one of {sorted(_METHODS)}")
    events = document.get("events_requested")
    request = StreamRequest(
        method=method,
        events=None if events is None else check_events(events, "events_requested"),
        description=check_description(document.get("description"), "description"),
    )
    if method == "poll":
        return request  # SSF §6.1.2: the poll endpoint_url is the transmitter's to say
    if "endpoint_url" not in delivery:
        raise ConfigurationError("delivery.endpoint_url is required for push delivery (urn:ietf:rfc:8935)")
    url = check_push_url(delivery["endpoint_url"], "delivery.endpoint_url")
    header = delivery.get("authorization_header")
    authorization = None if header is None else check_authorization(header, "delivery.authorization_header")
    return StreamRequest("push", request.events, url, authorization, request.description)


def check_subject(subject: object) -> dict[str, Any]:
    """A subject identifier (RFC 9493 §3): a JSON object whose ``format`` names its format."""
    if not isinstance(subject, Mapping) or not isinstance(subject.get("format"), str) or not subject["format"]:
        raise ConfigurationError(f'a subject is a mapping with a "format" member (RFC 9493 §3), got {subject!r}')
    return dict(subject)


def check_event_fields(event_type: str, fields: Mapping[str, Any]) -> None:
    """The members an event type requires (CAEP 1.0 §3.2, §3.3; RISC 1.0 §2.3), of the right types."""
    if event_type == CREDENTIAL_CHANGE:
        if not isinstance(fields.get("credential_type"), str) or not fields["credential_type"]:
            raise ConfigurationError("credential-change needs credential_type, e.g. 'password' (CAEP §3.3)")
        if fields.get("change_type") not in _CHANGE_TYPES:
            raise ConfigurationError(f"credential-change needs change_type, one of {sorted(_CHANGE_TYPES)} (CAEP §3.3)")
    elif event_type == TOKEN_CLAIMS_CHANGE:
        if not isinstance(fields.get("claims"), Mapping) or not fields["claims"]:
            raise ConfigurationError("token-claims-change needs claims, a non-empty mapping of new values (CAEP §3.2)")
    elif event_type == ACCOUNT_DISABLED and "reason" in fields and not isinstance(fields["reason"], str):
        raise ConfigurationError("account-disabled's reason must be a string, e.g. 'hijacking' (RISC §2.3)")
    stamp = fields.get("event_timestamp")
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
        raise ConfigurationError("event_timestamp must be whole seconds since the epoch (CAEP §2)")


def revocation_fields(reason: str, at: int) -> dict[str, Any]:
    """The members of a session-revoked event (CAEP §3.1) for a DevIdP revocation: when, who, and why."""
    fields: dict[str, Any] = {"event_timestamp": at}
    initiator = _INITIATORS.get(reason)
    if initiator is not None:
        fields["initiating_entity"] = initiator
    # CAEP §2: reason_admin is a localizable message for logs, keyed by language tag.
    fields["reason_admin"] = {"en": reason}
    return fields


def new_txn() -> str:
    """SSF §4.1.9: a ``txn`` unique to the event that caused the SETs, shared by all of them."""
    return secrets.token_hex(16)


# -- the transmitter ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Outgoing:
    """One SET waiting in a stream's outbox. ``busy``: a loop is pushing it (or waiting to retry)."""

    jti: str
    event_type: str
    token: str = field(repr=False)
    grant_id: str | None
    subject: str | None
    attempts: int = 0
    busy: bool = False


@dataclass(eq=False)
class _Outbox:
    stream: Stream
    pending: OrderedDict[str, _Outgoing] = field(default_factory=OrderedDict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_OUTCOME_COUNTS, 0))
    removed: bool = False


#: ``(kind, grant_id, client_id, subject, detail)``: how the transmitter records an event in the DevIdP's log.
Recorder = Callable[..., None]


class Transmitter:
    """The streams of one DevIdP, their outboxes, and the delivery of their SETs (see the module docstring)."""

    def __init__(
        self,
        *,
        issuer: str,
        clock: Callable[[], float],
        lock: threading.RLock,
        signing_key: Callable[[], SigningKey],
        record: Recorder,
        settings: SSFSettings,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = issuer
        self.settings = settings
        #: Pushes go through this client when given (e.g. an ``httpx.ASGITransport`` to an app under
        #: test); otherwise each delivering loop opens its own ``httpx.AsyncClient``.
        self.http_client = http_client
        self._clock = clock
        self._lock = lock
        self._signing_key = signing_key
        self._record = record
        self._outboxes: dict[str, _Outbox] = {}
        self._totals = dict.fromkeys(_OUTCOME_COUNTS, 0)
        self._wakers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    # -- streams ---------------------------------------------------------------------------------

    def add(self, request: StreamRequest, audience: str) -> Stream:
        """Create a stream for ``audience`` (its receiver); ``StreamLimitReached`` when full."""
        stream = Stream(
            stream_id=secrets.token_hex(16),  # SSF §8.1.1: unique, from RFC 3986 §2.3 unreserved characters
            audience=audience,
            method=request.method,
            events_requested=EVENT_TYPES if request.events is None else request.events,
            push_url=request.push_url,
            authorization=request.authorization,
            description=request.description,
        )
        with self._lock:
            if len(self._outboxes) >= self.settings.max_streams:
                raise StreamLimitReached(f"the transmitter holds {self.settings.max_streams} streams already")
            self._outboxes[stream.stream_id] = _Outbox(stream)
            self._record(
                "ssf_stream_created", grant_id=None, client_id=audience, subject=None, stream_id=stream.stream_id
            )
        return stream

    def remove(self, stream_id: str) -> bool:
        """Delete a stream and what it had not delivered yet; ``False`` when there is no such stream."""
        with self._lock:
            outbox = self._outboxes.pop(stream_id, None)
            if outbox is None:
                return False
            outbox.removed = True
            audience = outbox.stream.audience
            self._record("ssf_stream_removed", grant_id=None, client_id=audience, subject=None, stream_id=stream_id)
        self._wake()  # a long poll on it ends now
        return True

    def get(self, stream_id: str, audience: str | None = None) -> Stream | None:
        """The stream, if it exists and (when ``audience`` is given) belongs to that receiver."""
        with self._lock:
            outbox = self._outboxes.get(stream_id)
        if outbox is None or (audience is not None and outbox.stream.audience != audience):
            return None
        return outbox.stream

    @property
    def streams(self) -> dict[str, Stream]:
        with self._lock:
            return {stream_id: outbox.stream for stream_id, outbox in self._outboxes.items()}

    @property
    def active(self) -> bool:
        """Whether any stream exists: without one, nothing is signed or queued."""
        return bool(self._outboxes)

    def configuration(self, stream: Stream, poll_url: str) -> dict[str, Any]:
        """The stream's configuration as SSF §8.1.1 shapes it (``authorization_header`` left out)."""
        delivery: dict[str, Any] = {"method": PUSH_METHOD if stream.method == "push" else POLL_METHOD}
        # SSF §6.1: a push stream's endpoint_url is the receiver's, a poll stream's the transmitter's.
        delivery["endpoint_url"] = stream.push_url if stream.method == "push" else poll_url
        document: dict[str, Any] = {
            "stream_id": stream.stream_id,
            "iss": self.issuer,
            "aud": stream.audience,
            "delivery": delivery,
            "events_supported": list(EVENT_TYPES),
            "events_requested": list(stream.events_requested),
            "events_delivered": list(stream.events_delivered),
        }
        if stream.description is not None:
            document["description"] = stream.description
        return document

    def status(self, stream_id: str | None = None) -> dict[str, int] | None:
        """Counts: SETs queued, delivered, rejected, failed, dropped (all streams, ever), and pending now."""
        with self._lock:
            if stream_id is None:
                pending = sum(len(outbox.pending) for outbox in self._outboxes.values())
                return {"streams": len(self._outboxes), **self._totals, "pending": pending}
            outbox = self._outboxes.get(stream_id)
            return None if outbox is None else {**outbox.counts, "pending": len(outbox.pending)}

    # -- SETs ----------------------------------------------------------------------------------------

    def queue(
        self,
        event_type: str,
        subject: Mapping[str, Any],
        fields: Mapping[str, Any],
        *,
        txn: str,
        grant: Grant | None = None,
        stream_id: str | None = None,
    ) -> list[str]:
        """Sign one SET for every stream that delivers ``event_type`` (or for ``stream_id`` alone) and queue it.

        Returns the SETs' ``jti`` s. The SET (RFC 8417 §2.2, SSF §4.1): ``iss``, ``aud`` (the stream's),
        ``iat``, ``jti``, ``txn``, ``sub_id`` and ``events`` with this one event; no ``sub``, no ``exp``.
        """
        with self._lock:
            if stream_id is not None:
                chosen = [outbox for outbox in (self._outboxes.get(stream_id),) if outbox is not None]
            else:
                chosen = [outbox for outbox in self._outboxes.values() if outbox.stream.delivers(event_type)]
            if not chosen:
                return []
            key = self._signing_key()
            iat = int(self._clock())
            event = {"event_timestamp": iat, **fields}
            jtis = [self._enqueue(outbox, key, iat, event_type, subject, event, txn, grant) for outbox in chosen]
        self._wake()
        return jtis

    def _enqueue(
        self,
        outbox: _Outbox,
        key: SigningKey,
        iat: int,
        event_type: str,
        subject: Mapping[str, Any],
        event: Mapping[str, Any],
        txn: str,
        grant: Grant | None,
    ) -> str:
        stream = outbox.stream
        jti = secrets.token_hex(16)
        claims = {
            "iss": self.issuer,
            "aud": stream.audience,
            "iat": iat,
            "jti": jti,
            "txn": txn,
            "sub_id": dict(subject),
            "events": {event_type: dict(event)},
        }
        # SSF §4.1.1: explicit typing, so a SET is never taken for an access or ID token.
        token = jwt.encode(claims, key.private, algorithm=key.alg, headers={"typ": SET_TYPE, "kid": key.kid})
        grant_id, user = (grant.id, grant.subject) if grant is not None else (None, None)
        if len(outbox.pending) >= self.settings.max_queue:
            _, oldest = outbox.pending.popitem(last=False)
            self._settled(outbox, oldest, "dropped", "ssf_dropped", {})
        outbox.pending[jti] = _Outgoing(jti, event_type, token, grant_id, user)
        self._count(outbox, "queued")
        self._record(
            "ssf_queued",
            grant_id=grant_id,
            client_id=stream.audience,
            subject=user,
            stream_id=stream.stream_id,
            jti=jti,
            event_type=event_type,
            subject_format=subject.get("format"),
            txn=txn,
        )
        return jti

    def _count(self, outbox: _Outbox, outcome: str) -> None:
        outbox.counts[outcome] += 1
        self._totals[outcome] += 1

    def _settled(
        self, outbox: _Outbox, item: _Outgoing, outcome: str, kind: EventKind, detail: Mapping[str, Any]
    ) -> None:
        """Count and record the end of one SET's delivery (under the lock)."""
        self._count(outbox, outcome)
        self._record(
            kind,
            grant_id=item.grant_id,
            client_id=outbox.stream.audience,
            subject=item.subject,
            stream_id=outbox.stream.stream_id,
            jti=item.jti,
            event_type=item.event_type,
            attempts=item.attempts,
            **detail,
        )

    # -- waking the loops that deliver or long-poll ------------------------------------------------

    def _wake(self) -> None:
        """Wake every waiting loop, whichever thread runs it."""
        with self._lock:
            wakers = list(self._wakers.values())
        for loop, event in wakers:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there any more
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def _waker(self, event: asyncio.Event) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._wakers[id(event)] = (loop, event)
        try:
            yield
        finally:
            with self._lock:
                self._wakers.pop(id(event), None)

    # -- push delivery (RFC 8935) -----------------------------------------------------------------

    def _claim(self, limit: int | None) -> list[tuple[_Outbox, _Outgoing]]:
        """Take up to ``limit`` SETs of push streams that no loop is pushing yet, oldest first."""
        claimed: list[tuple[_Outbox, _Outgoing]] = []
        with self._lock:
            for outbox in self._outboxes.values():
                if outbox.stream.method != "push":
                    continue
                for item in outbox.pending.values():
                    if limit is not None and len(claimed) >= limit:
                        return claimed
                    if not item.busy:
                        item.busy = True
                        claimed.append((outbox, item))
        return claimed

    def _release(self, item: _Outgoing) -> None:
        with self._lock:
            item.busy = False

    async def deliver(self) -> int:
        """Push every SET pending now, retrying as configured; returns how many were delivered.

        SETs another loop is pushing already (a served DevIdP's) are left to it.
        """
        claimed = self._claim(None)
        if not claimed:
            return 0
        given = self.http_client
        client = given if given is not None else httpx.AsyncClient()
        room = asyncio.Semaphore(_CONCURRENCY)

        async def settle(outbox: _Outbox, item: _Outgoing) -> bool:
            async with room:
                return await self._settle(client, outbox, item)

        try:
            results = await asyncio.gather(*(settle(outbox, item) for outbox, item in claimed))
        finally:
            for _, item in claimed:  # one cancelled before it started still holds its claim
                self._release(item)
            if given is None:
                await client.aclose()
        return sum(results)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While inside, a task of this loop pushes each SET as soon as it is queued (a server's lifespan)."""
        task = asyncio.create_task(self._work())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _work(self) -> None:
        wake = asyncio.Event()
        flying: dict[asyncio.Task[bool], _Outgoing] = {}
        owned: httpx.AsyncClient | None = None

        def landed(task: asyncio.Task[bool]) -> None:
            flying.pop(task, None)
            if not task.cancelled():
                task.exception()  # retrieved: _settle raises nothing it should, and a bug shows in tests
            wake.set()

        with self._waker(wake):
            try:
                while True:
                    wake.clear()
                    claimed = self._claim(_CONCURRENCY - len(flying)) if len(flying) < _CONCURRENCY else []
                    if claimed:
                        client = self.http_client
                        if client is None:
                            owned = owned if owned is not None else httpx.AsyncClient()
                            client = owned
                        for outbox, item in claimed:
                            task = asyncio.create_task(self._settle(client, outbox, item))
                            flying[task] = item
                            task.add_done_callback(landed)
                    await wake.wait()
            finally:
                for task in list(flying):
                    task.cancel()
                await asyncio.gather(*flying, return_exceptions=True)
                for item in flying.values():
                    self._release(item)
                if owned is not None:
                    await owned.aclose()

    async def _settle(self, client: httpx.AsyncClient, outbox: _Outbox, item: _Outgoing) -> bool:
        """Push one SET until it is delivered, refused or given up on; True when delivered."""
        try:
            while True:
                with self._lock:
                    if outbox.removed or outbox.pending.get(item.jti) is not item:
                        return False  # its stream was deleted, or it was dropped from a full outbox
                outcome, detail = await self._push(client, outbox.stream, item)
                delay = self._after_attempt(outbox, item, outcome, detail)
                if delay is None:
                    return outcome == "delivered"
                await asyncio.sleep(delay)
        finally:
            self._release(item)

    async def _push(self, client: httpx.AsyncClient, stream: Stream, item: _Outgoing) -> tuple[Outcome, dict[str, Any]]:
        """One RFC 8935 §2.1 transmission, and what the answer means."""
        # Identity only, and the answer read as sent (``_read_capped``): a compressed answer is never inflated.
        headers = {"Content-Type": SET_MEDIA_TYPE, "Accept": "application/json", "Accept-Encoding": "identity"}
        if stream.authorization is not None:
            # SSF §6.1.1: "the Transmitter MUST provide this value with every HTTP request to the endpoint_url".
            headers["Authorization"] = stream.authorization
        assert stream.push_url is not None  # a push stream always has one
        try:
            async with client.stream(
                "POST",
                stream.push_url,
                content=item.token.encode("ascii"),
                headers=headers,
                timeout=self.settings.push_timeout,
            ) as response:
                body = await _read_capped(response)
        except Exception as exc:
            # Whatever the way to the receiver raises (a refused connection, a timeout, an in-process
            # app's own exception) is a failed attempt, never the end of the delivering task.
            return "retry", {"error": type(exc).__name__}
        status = response.status_code
        if status in (200, 202):
            return "delivered", {"status": status}  # RFC 8935 §2.2: 202 Accepted (200 taken too)
        refusal = _set_error(body) if status == 400 else None
        if refusal is not None:
            return "rejected", {"status": status, **refusal}  # RFC 8935 §2.3
        return "retry", {"status": status}

    def _after_attempt(
        self, outbox: _Outbox, item: _Outgoing, outcome: Outcome, detail: Mapping[str, Any]
    ) -> float | None:
        """Record an attempt; the seconds to wait before the next one, or ``None`` when the SET is settled."""
        with self._lock:
            item.attempts += 1
            if outcome == "retry" and item.attempts < self.settings.max_attempts:
                return float(self.settings.retry_delay * 2 ** (item.attempts - 1))
            if outbox.pending.get(item.jti) is item:
                del outbox.pending[item.jti]
            if outcome == "delivered":
                self._settled(outbox, item, "delivered", "ssf_delivered", detail)
            elif outcome == "rejected":
                self._settled(outbox, item, "rejected", "ssf_rejected", detail)
            else:
                self._settled(outbox, item, "failed", "ssf_failed", detail)
            return None

    # -- poll delivery (RFC 8936) -------------------------------------------------------------------

    async def poll(
        self,
        stream: Stream,
        *,
        max_events: int | None,
        return_immediately: bool,
        ack: Iterable[str],
        errors: Mapping[str, Mapping[str, str]],
    ) -> tuple[dict[str, str], bool]:
        """Answer one poll of ``stream`` (RFC 8936 §2.4): ``(sets by jti, moreAvailable)``.

        Acknowledged and refused SETs leave the outbox first; then up to ``max_events`` of those left,
        oldest first, are returned, and stay until acknowledged (sent again by the next poll).
        """
        with self._lock:
            outbox = self._outboxes.get(stream.stream_id)
            if outbox is None:
                return {}, False
            self._acknowledge(outbox, ack, errors)
        limit = _POLL_MAX if max_events is None else min(max_events, _POLL_MAX)
        if limit > 0 and not return_immediately:
            await self._await_sets(outbox)
        with self._lock:
            items = list(islice(outbox.pending.values(), limit))
            return {item.jti: item.token for item in items}, len(outbox.pending) > len(items)

    def _acknowledge(self, outbox: _Outbox, ack: Iterable[str], errors: Mapping[str, Mapping[str, str]]) -> None:
        # RFC 8936 §2.4: jtis the transmitter does not hold (any more) are ignored.
        for jti in ack:
            item = outbox.pending.pop(jti, None)
            if item is not None:
                item.attempts += 1
                self._settled(outbox, item, "delivered", "ssf_delivered", {"method": "poll"})
        for jti, error in errors.items():
            item = outbox.pending.pop(jti, None)
            if item is not None:
                item.attempts += 1
                refusal = {name: value[:_MAX_REASON] for name, value in error.items()}
                self._settled(outbox, item, "rejected", "ssf_rejected", {"method": "poll", **refusal})

    async def _await_sets(self, outbox: _Outbox) -> None:
        """A long poll (RFC 8936 §2.4 ``returnImmediately`` false): until a SET is queued, or ``poll_wait``."""
        wake = asyncio.Event()
        deadline = time.monotonic() + self.settings.poll_wait
        with self._waker(wake):
            while True:
                wake.clear()
                with self._lock:
                    if outbox.pending or outbox.removed:
                        return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining)


async def _read_capped(response: httpx.Response) -> bytes:
    """The first ``_MAX_ANSWER`` bytes of a receiver's answer: a receiver cannot make the transmitter read more.

    Read as sent (``aiter_raw``): httpx would inflate a compressed answer before this count, so a small
    gzip bomb would become gigabytes first; one sent compressed despite ``Accept-Encoding: identity`` is
    no RFC 8935 error object, so its attempt is retried like any other unreadable answer."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= _MAX_ANSWER:
            break
    return bytes(body[:_MAX_ANSWER])


def _set_error(body: bytes) -> dict[str, str] | None:
    """RFC 8935 §2.3: a 400 whose body is a JSON object with an ``err`` string (and a ``description``)."""
    try:
        document = strict_loads(body)
    except ValueError:
        return None
    err, description = document.get("err"), document.get("description")
    if not isinstance(err, str) or not err:
        return None
    refusal = {"err": err[:_MAX_REASON]}
    if isinstance(description, str):
        refusal["description"] = description[:_MAX_REASON]
    return refusal


def parse_poll_request(document: Mapping[str, Any]) -> tuple[int | None, bool, list[str], dict[str, dict[str, str]]]:
    """An RFC 8936 §2.4 poll request body, checked: ``(maxEvents, returnImmediately, ack, setErrs)``."""
    max_events = document.get("maxEvents")
    if max_events is not None and (isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0):
        raise ConfigurationError("maxEvents must be a non-negative integer")
    immediately = document.get("returnImmediately", False)
    if not isinstance(immediately, bool):
        raise ConfigurationError("returnImmediately must be true or false")
    ack = document.get("ack", [])
    if not isinstance(ack, list) or not all(isinstance(jti, str) for jti in ack) or len(ack) > _POLL_MAX * 10:
        raise ConfigurationError(f"ack must be a list of at most {_POLL_MAX * 10} jti strings")
    errs = document.get("setErrs", {})
    if not isinstance(errs, dict) or len(errs) > _POLL_MAX * 10:
        raise ConfigurationError(f"setErrs must be an object of at most {_POLL_MAX * 10} members, jti to error")
    errors: dict[str, dict[str, str]] = {}
    for jti, error in errs.items():
        # RFC 8936 §2.4.4: each member's value holds "err" and "description" (RFC 8935 §2.3).
        if not isinstance(error, dict) or not isinstance(error.get("err"), str) or not error["err"]:
            raise ConfigurationError('each setErrs member must be an object with an "err" string')
        description = error.get("description")
        if description is not None and not isinstance(description, str):
            raise ConfigurationError('a setErrs "description" must be a string')
        errors[jti] = {"err": error["err"], **({"description": description} if description is not None else {})}
    return max_events, immediately, list(ack), errors
