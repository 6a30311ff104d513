"""The revocation list: tokens refused before they expire, on every route, without a network call.

Local JWT validation cannot see a revocation (RFC 7009 §1); introspection can, but only on routes
that ask. The revocation list closes that gap on **ordinary** routes too: ``await guard.revoke(...)``
(or a Shared Signals event, ``tokenguard.ssf``) adds an entry, and every request's token is checked
against the entries after it is validated, whatever path validated it (verified cache, signature,
introspection). The check is in-process dict lookups; with no entry it costs one attribute test.

An entry covers:

- ``jti``: the one token with that ``jti`` (RFC 7519 §4.1.7; SSF §3.5.1 ``jwt_id`` subjects);
- ``sub`` or ``client_id``: every token of that subject or client **issued before** a cut-off
  (its ``iat`` < ``issued_before``; RFC 7519 §4.1.6). A token with no ``iat`` cannot show it was
  issued later, so it is covered too. ``iat`` has whole seconds: a token issued in the same second
  as the cut-off may be covered, never one issued a second later.

Each entry is ``revoke`` (the token is refused: 401 ``invalid_token``) or ``recheck`` (CAEP
``token-claims-change``: the token is asked about again with the issuer, RFC 7662, ignoring any
answer cached before the cut-off; without introspection it is refused). A ``jti`` entry has no
cut-off (``issued_before`` is infinite: it covers its token whenever it was issued); for a
``recheck`` of one, the answers ignored are those given before this process first heard of the
entry — once re-checked, the token is not asked about again on every request.

**Invariants** (docs/ARCHITECTURE.md, "Revocation list"): an entry is kept until no token it covers
can still be valid — ``expires_at``: the token's ``exp`` plus leeway when known, else the cut-off
plus ``max_token_lifetime`` plus leeway — and is never dropped before. At most ``max_entries`` are
held; when every one is live, ``add`` raises ``StoreFull`` (503) rather than forget a revocation.
Expired entries are dropped lazily (``purge``), oldest first. An entry kept past its expiry changes
nothing: every token it covers has expired anyway.

Entries travel between processes as compact JSON (``Revocation.encode``/``decode``), through the
fleet's store and its feed (``tokenguard.fleet``).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from tokenguard._strictjson import strict_loads
from tokenguard.errors import InvalidToken, RevocationsStale
from tokenguard.models import AccessToken
from tokenguard.store import StoreFull

__all__ = ["Revocation", "RevocationAction", "RevocationKind", "RevocationList"]

RevocationKind = Literal["jti", "sub", "client_id"]
RevocationAction = Literal["revoke", "recheck"]
_KINDS: tuple[RevocationKind, ...] = ("jti", "sub", "client_id")
_MAX_VALUE = 1024


@dataclass(frozen=True)
class Revocation:
    """One entry: which tokens (``kind`` = ``value``, of ``issuer`` or of any issuer), until when."""

    kind: RevocationKind
    value: str
    issued_before: float  # ``math.inf`` for a ``jti``: the token is covered whenever it was issued
    expires_at: float
    issuer: str | None = None
    action: RevocationAction = "revoke"

    def __post_init__(self) -> None:
        """Only what ``decode`` reads back as the same entry on every other process: ``ValueError`` else.

        ``issued_before`` is a number or ``math.inf`` (never ``-inf``, which would travel as "no
        cut-off", nor NaN); ``expires_at`` is finite; ``value`` and ``issuer`` are non-empty UTF-8 text.
        """
        if self.kind not in _KINDS or self.action not in ("revoke", "recheck"):
            raise ValueError(f"not a revocation entry: kind {self.kind!r}, action {self.action!r}")
        if not entry_text(self.value) or (self.issuer is not None and not entry_text(self.issuer)):
            raise ValueError("a revocation entry's value and issuer must be non-empty text of at most 1024 characters")
        before, expires = self.issued_before, self.expires_at
        if not (finite_number(before) or before == math.inf) or not finite_number(expires):
            raise ValueError(
                f"a revocation entry needs a cut-off (a number, or math.inf) and a finite expiry, got "
                f"{before!r} and {expires!r}"
            )

    def encode(self) -> bytes:
        """Compact JSON, sorted: the same entry is the same bytes on every process."""
        document = {
            "k": self.kind,
            "v": self.value,
            "b": None if math.isinf(self.issued_before) else self.issued_before,
            "x": self.expires_at,
            "i": self.issuer,
            "a": self.action,
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        """The entry ``encode`` wrote; ``ValueError`` for anything else (a foreign or damaged value)."""
        document: dict[str, Any] = strict_loads(data, max_depth=2)
        kind: Any = document.get("k")
        action: Any = document.get("a")
        value, before = document.get("v"), document.get("b")
        expires, issuer = document.get("x"), document.get("i")
        if not isinstance(value, str) or (issuer is not None and not isinstance(issuer, str)):
            raise ValueError("not a revocation entry")
        if not finite_number(expires) or (before is not None and not finite_number(before)):
            raise ValueError("not a revocation entry")
        cutoff = math.inf if before is None else float(before)
        return cls(kind, value, cutoff, float(expires), issuer, action)  # checked by __post_init__


def finite_number(value: object) -> TypeGuard[float]:
    """A JSON number a double holds: not a bool, not NaN or infinite, not an integer past a double's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int such as 10**400: math.isfinite converts it to a float first
        return False


def entry_text(value: object) -> bool:
    """Non-empty, at most ``_MAX_VALUE`` characters, and UTF-8 (JSON of a lone surrogate is refused)."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_VALUE:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# One slot per (kind, issuer or "", value): the latest cut-off per action, and until when the slot lives.
# (revoke_before, recheck_before, recheck_since, expires_at); -inf: no such entry. ``recheck_since``:
# when this process first heard of an infinite recheck cut-off (a jti's), the time answers must postdate.
_Slot = tuple[float, float, float, float]
_EMPTY: _Slot = (-math.inf, -math.inf, -math.inf, -math.inf)


class RevocationList:
    """The process's copy of the revocation list (module doc for what entries mean and their invariants).

    ``active`` is the hot path's one test: ``True`` when there is any entry, or when the guard must
    refuse every token (``refuse_all``: a fleet that fails closed while its feed is stale).
    """

    def __init__(self, *, max_entries: int = 100_000, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._slots: dict[tuple[str, str, str], _Slot] = {}
        self._heap: list[tuple[float, tuple[str, str, str]]] = []
        self.active = False
        #: Set by the fleet feed: why every token is refused now (503), or ``None``.
        self.refuse_all: str | None = None
        self.added = 0
        self.covered = 0

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, entry: Revocation) -> bool:
        """Record ``entry``; ``False`` if it changes nothing (already covered, or already expired)."""
        now = self._clock()
        if entry.expires_at <= now:
            return False
        slot_key = (entry.kind, entry.issuer or "", entry.value)
        revoke_before, recheck_before, recheck_since, expires_at = self._slots.get(slot_key, _EMPTY)
        if slot_key not in self._slots and len(self._slots) >= self.max_entries:
            self.purge(now)
            if len(self._slots) >= self.max_entries:
                raise StoreFull(f"the revocation list holds {self.max_entries} live entries", retry_after=60)
        if entry.action == "revoke":
            changed = entry.issued_before > revoke_before
            revoke_before = max(revoke_before, entry.issued_before)
        else:
            changed = entry.issued_before > recheck_before
            recheck_before = max(recheck_before, entry.issued_before)
            if changed and recheck_before == math.inf:
                recheck_since = now
        if entry.expires_at > expires_at:
            changed = changed or slot_key not in self._slots
            expires_at = entry.expires_at
            heapq.heappush(self._heap, (expires_at, slot_key))
        self._slots[slot_key] = (revoke_before, recheck_before, recheck_since, expires_at)
        self.active = True
        if changed:
            self.added += 1
        return changed

    def holds(self, entry: Revocation) -> bool:
        """Whether this list already covers ``entry`` as far and as long."""
        slot = self._slots.get((entry.kind, entry.issuer or "", entry.value))
        if slot is None:
            return False
        before = slot[0] if entry.action == "revoke" else slot[1]
        return before >= entry.issued_before and slot[3] >= entry.expires_at

    def entries(self) -> list[Revocation]:
        """What this list holds, as entries (one per slot and action): what a resync gives back to a
        store that lost them."""
        found: list[Revocation] = []
        for (kind, issuer, value), (revoke_before, recheck_before, _since, expires_at) in self._slots.items():
            for action, before in (("revoke", revoke_before), ("recheck", recheck_before)):
                if before != -math.inf:
                    found.append(Revocation(kind, value, before, expires_at, issuer or None, action))  # type: ignore[arg-type]
        return found

    def replace(self, entries: Iterable[Revocation]) -> int:
        """Add every entry of a full read of the shared list (after a (re)subscription); how many
        could not be held (the list is full of live entries: ``add`` would raise ``StoreFull``).

        Entries are only ever added, never dropped early: one this process knew that the shared
        list lost (a Redis restarted without persistence) is kept until it expires.
        """
        overflow = 0
        for entry in entries:
            try:
                self.add(entry)
            except StoreFull:
                overflow += 1
        return overflow

    def purge(self, now: float | None = None) -> int:
        """Drop the entries whose tokens have all expired; how many were dropped."""
        now = self._clock() if now is None else now
        heap, slots, dropped = self._heap, self._slots, 0
        while heap and heap[0][0] <= now:
            when, slot_key = heapq.heappop(heap)
            slot = slots.get(slot_key)
            if slot is not None and slot[3] == when:
                del slots[slot_key]
                dropped += 1
        if len(heap) > 2 * max(len(slots), 64):  # entries extended in place leave stale heap items behind
            self._heap = [(slot[3], slot_key) for slot_key, slot in slots.items()]
            heapq.heapify(self._heap)
        self.active = bool(slots) or self.refuse_all is not None
        return dropped

    def set_refuse_all(self, reason: str | None) -> None:
        self.refuse_all = reason
        self.active = bool(self._slots) or reason is not None

    def verdict(self, token: AccessToken) -> tuple[RevocationAction, float] | None:
        """``("revoke", cut-off)``, ``("recheck", cut-off)`` or ``None`` for a validated token."""
        slots = self._slots
        issuer = token.issuer or ""
        iat = token.claims.get("iat")
        issued = float(iat) if finite_number(iat) else -math.inf  # no iat: covered by every cut-off
        recheck: float | None = None
        for kind, value in (("jti", token.token_id), ("sub", token.subject), ("client_id", token.client_id)):
            if value is None:
                continue
            for slot in (slots.get((kind, issuer, value)), slots.get((kind, "", value)) if issuer else None):
                if slot is None:
                    continue
                revoke_before, recheck_before, recheck_since, _expires = slot
                if issued < revoke_before:
                    return "revoke", revoke_before
                if issued < recheck_before:
                    # Answers given before the cut-off are ignored; with no cut-off (a jti), those
                    # given before this process heard of the entry.
                    cutoff = recheck_since if recheck_before == math.inf else recheck_before
                    recheck = cutoff if recheck is None else max(recheck, cutoff)
        return ("recheck", recheck) if recheck is not None else None

    def check(self, token: AccessToken) -> float | None:
        """Refuse a revoked token (401); the cut-off when it must be re-checked with the issuer, else ``None``."""
        if self.refuse_all is not None:
            raise RevocationsStale(self.refuse_all)
        found = self.verdict(token)
        if found is None:
            return None
        self.covered += 1
        if found[0] == "revoke":
            raise InvalidToken("revoked", "The access token was revoked.")
        return found[1]

    def status(self) -> dict[str, Any]:
        return {"entries": len(self._slots), "added": self.added, "refused": self.covered}

    def __repr__(self) -> str:
        return f"RevocationList(entries={len(self._slots)}, max_entries={self.max_entries})"
