"""Per-tool policy for MCP servers: what a JSON-RPC call needs, read from its body. [core]

MCP (Streamable HTTP transport, 2025-06-18 and 2025-11-25) sends every call through one ``POST``
to one endpoint, so a route's policy cannot tell ``tools/call`` of ``get_balance`` from ``transfer``.
``MCPPolicy`` maps tool names and JSON-RPC methods to ``ToolPolicy`` objects; the guard reads the
body once (size-capped by ``max_body_bytes``, strict JSON, as for RFC 9396 checks) after the token
passed the endpoint's own policy, and applies the endpoint's requirement merged with the call's.

What a body asks for (``requirement_for``):

- a JSON-RPC request or notification ``{"method": m, ...}``: ``methods[m]`` if listed; for
  ``tools/call`` also ``tools[params.name]``, or ``default`` for a tool not listed;
- a JSON-RPC response (a client answering the server: no ``method``): nothing more;
- a batch (a JSON array, JSON-RPC 2.0 §6, allowed by MCP 2025-03-26): every element's, merged.

Anything the server could read differently from this reading is refused with 400, never let
through under a weaker policy: a body that is not strict JSON (duplicate member names, NaN, lone
surrogates, bytes that are not UTF-8), a ``method`` that is not a string, a ``tools/call`` whose
``params`` is not an object or whose ``name`` is not a string.

``filter_tools_list`` (opt-in) removes from a ``tools/list`` answer the tools the token may not
call (scopes, authentication level, sender constraint): ``ToolsListFilter`` rewrites the JSON or
Server-Sent Events answer, one event at a time, each bounded. It hides, it does not protect: every
call is still checked. It also hides the tools a client could reach by stepping up, which is why
it is off by default.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from tokenguard._details import parse_json_body
from tokenguard.errors import AuthError, ConfigurationError, InvalidRequest
from tokenguard.models import AccessToken
from tokenguard.policy import Delegation, Requirement, Rule, ScopesArg

__all__ = ["NOTHING_MORE", "MCPPolicy", "ToolPolicy", "ToolsListFilter", "call_of"]

logger = logging.getLogger("tokenguard")

_NOTHING_MORE = Requirement()
#: What ``requirement_for`` answers for a call that needs nothing beyond the endpoint (this very object).
NOTHING_MORE = _NOTHING_MORE
#: A ``tools/list`` answer larger than this is passed on unfiltered (filtering only hides; calls are checked).
MAX_FILTERED_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ToolPolicy:
    """What calling one tool (or one JSON-RPC method) needs, beyond the endpoint's own policy.

    The same vocabulary as the route decorators: ``scopes`` (all of them), ``any_scopes`` (at least
    one), ``sensitive`` (RFC 7662 introspection, so a revoked token stops within the cache TTL),
    ``acr_values``/``max_age`` (RFC 9470 step-up), ``sender_constrained`` (DPoP or mTLS only),
    ``delegation="required"``/``"refused"`` and ``actors`` (RFC 8693 §4.1 delegated tokens, as
    ``@require_delegation(actors=...)`` and ``@refuse_delegation``).
    """

    requirement: Requirement = field(repr=False)
    scopes: frozenset[str] = frozenset()
    any_scopes: frozenset[str] = frozenset()
    sensitive: bool = False
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    sender_constrained: bool = False
    delegation: Delegation | None = None
    actors: frozenset[str] | None = None

    def __init__(
        self,
        *,
        scopes: ScopesArg = (),
        any_scopes: ScopesArg = (),
        sensitive: bool = False,
        acr_values: str | Iterable[str] = (),
        max_age: int | None = None,
        sender_constrained: bool = False,
        delegation: Delegation | None = None,
        actors: str | Iterable[str] | None = None,
    ) -> None:
        if not isinstance(sensitive, bool) or not isinstance(sender_constrained, bool):
            raise ConfigurationError("ToolPolicy sensitive and sender_constrained must be True or False")
        # Rule validates the vocabulary exactly as for paths (scope syntax, acr_values, max_age).
        rule = Rule(
            "/",
            scopes=scopes,
            any_scopes=any_scopes,
            sensitive=sensitive,
            acr_values=acr_values,
            max_age=max_age,
            sender_constrained=sender_constrained,
            delegation=delegation,
            actors=actors,
        )
        object.__setattr__(self, "requirement", rule.requirement)
        for name in _RULE_FIELDS:  # as Rule normalised them
            object.__setattr__(self, name, getattr(rule, name))


#: The ``Rule`` members a ``ToolPolicy`` shares (all but ``path``, ``methods`` and ``public``).
_RULE_FIELDS = (
    "scopes",
    "any_scopes",
    "sensitive",
    "acr_values",
    "max_age",
    "sender_constrained",
    "delegation",
    "actors",
)


def _merged(requirement: Requirement, extra: Requirement | None) -> Requirement:
    return requirement if extra is None else requirement.merge(extra)


def _policies(option: str, value: object) -> dict[str, Requirement]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"MCPPolicy {option} must be a mapping of names to ToolPolicy objects")
    found: dict[str, Requirement] = {}
    for name, policy in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"MCPPolicy {option} keys must be non-empty strings, got {name!r}")
        if not isinstance(policy, ToolPolicy):
            raise ConfigurationError(
                f"MCPPolicy {option}[{name!r}] must be a ToolPolicy, e.g. ToolPolicy(scopes='write'),"
                f" got {type(policy).__name__}"
            )
        found[name] = policy.requirement
    return found


@dataclass(frozen=True)
class MCPPolicy:
    """The policy of an MCP endpoint, per tool and per JSON-RPC method (TokenGuard's ``mcp=`` option).

    ``path``: the endpoint, as the app's routes see it (``/mcp`` for the SDK's and FastMCP's
    Streamable HTTP app); every ``POST`` there is read. ``scopes``: what every request to the
    endpoint needs (``initialize`` included), named in its 401 challenges so that an MCP client asks
    for these first and steps up per tool (MCP 2025-11-25 scope selection). ``tools``: tool name → ``ToolPolicy``;
    ``default``: for a tool not listed (``None``: nothing beyond the endpoint's policy — list every
    tool, or set a default, to be least-privilege). ``methods``: JSON-RPC method → ``ToolPolicy``
    (``"resources/read"``, ``"prompts/get"``, or ``"tools/call"`` for every tool call); methods not
    listed need only the endpoint's policy, so ``initialize``, ``ping`` and ``tools/list`` work for
    any valid token. ``filter_tools_list``: remove from ``tools/list`` answers the tools the token
    may not call (off by default: it also hides what a client could step up to).
    """

    path: str = "/mcp"
    scopes: frozenset[str] = frozenset()
    tools: Mapping[str, Requirement] = field(default_factory=dict)
    methods: Mapping[str, Requirement] = field(default_factory=dict)
    default: Requirement = _NOTHING_MORE
    filter_tools_list: bool = False
    # Worked out once in __init__: what a call of each listed tool (and of any other) needs, the
    # endpoint's requirement, and the memo of merges (``merged``).
    _calls: Mapping[str, Requirement] = field(default_factory=dict, init=False, repr=False, compare=False)
    _other_call: Requirement = field(default=_NOTHING_MORE, init=False, repr=False, compare=False)
    _endpoint: Requirement = field(default=_NOTHING_MORE, init=False, repr=False, compare=False)
    _merges: dict[tuple[Requirement, Requirement], Requirement] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __init__(
        self,
        *,
        path: str = "/mcp",
        scopes: ScopesArg = (),
        tools: Mapping[str, ToolPolicy] | None = None,
        methods: Mapping[str, ToolPolicy] | None = None,
        default: ToolPolicy | None = None,
        filter_tools_list: bool = False,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"MCPPolicy path must start with '/', got {path!r}")
        if default is not None and not isinstance(default, ToolPolicy):
            raise ConfigurationError(f"MCPPolicy default must be a ToolPolicy or None, got {type(default).__name__}")
        if not isinstance(filter_tools_list, bool):
            raise ConfigurationError("MCPPolicy filter_tools_list must be True or False")
        object.__setattr__(self, "path", path.rstrip("/") or "/")
        object.__setattr__(self, "scopes", Rule("/", scopes=scopes).scopes if scopes else frozenset())
        object.__setattr__(self, "tools", _policies("tools", tools))
        object.__setattr__(self, "methods", _policies("methods", methods))
        object.__setattr__(self, "default", default.requirement if default is not None else _NOTHING_MORE)
        object.__setattr__(self, "filter_tools_list", filter_tools_list)
        every_call = self.methods.get("tools/call")
        calls = {name: _merged(policy, every_call) for name, policy in self.tools.items()}
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_other_call", _merged(self.default, every_call))
        object.__setattr__(self, "_endpoint", Requirement(all_scopes=self.scopes))
        object.__setattr__(self, "_merges", {})

    def at(self, path: str) -> bool:
        """Whether a request goes to this endpoint (``path``, with or without a final slash), any method."""
        return path == self.path or path == self.path + "/"

    @property
    def endpoint(self) -> Requirement:
        """What every request to the endpoint needs (``scopes``), whatever it calls: GET and DELETE too."""
        return self._endpoint

    def merged(self, requirement: Requirement, extra: Requirement) -> Requirement:
        """``requirement.merge(extra)``, memoised: both are immutable, so an entry never goes stale.

        Bounded: the pairs are the app's endpoint policies times the policies named here; past 256
        (an app whose policies are built per request), the memo is emptied and refilled.
        """
        merges = self._merges
        key = (requirement, extra)
        found = merges.get(key)
        if found is None:
            if len(merges) >= 256:
                merges.clear()
            found = merges[key] = requirement.merge(extra)
        return found

    @property
    def scope_hint(self) -> tuple[str, ...]:
        """The ``scope`` of a 401 challenge from the endpoint: the scopes a client should ask for first."""
        return tuple(sorted(self.scopes))

    def tool_requirement(self, name: str) -> Requirement:
        """What calling tool ``name`` needs beyond the endpoint: its policy merged with ``methods["tools/call"]``."""
        found = self._calls.get(name)
        return found if found is not None else self._other_call

    def requirement_for(self, body: bytes) -> tuple[Requirement, Any]:
        """What the call(s) in ``body`` need beyond the endpoint, and the parsed body; 400 when unreadable."""
        message = parse_json_body(body)
        if isinstance(message, list):
            requirement = _NOTHING_MORE
            try:
                for element in message:
                    requirement = self.merged(requirement, self._one(element))
            except ConfigurationError as exc:
                # Two calls of one batch need policies no token can meet together (other acr values,
                # delegation required and refused): the client picked them, so it is a bad request.
                raise InvalidRequest(
                    "bad_request_body", "The calls of this batch need policies that cannot hold together."
                ) from exc
            return requirement, message
        return self._one(message), message

    def problem_with(self, endpoint: Requirement) -> str | None:
        """Why some call could never be allowed under the endpoint's own policy (checked at startup)."""
        named = [("tool", name, policy) for name, policy in self._calls.items()]
        named += [("method", name, policy) for name, policy in self.methods.items()]
        named.append(("default tool policy", "", self._other_call))
        for kind, name, policy in named:
            try:
                endpoint.merge(self._endpoint).merge(policy)
            except ConfigurationError as exc:
                label = f"{kind} {name!r}" if name else kind
                return f"the {label} contradicts the MCP endpoint's own policy: {exc}"
        return None

    def _one(self, message: object) -> Requirement:
        if not isinstance(message, dict) or "method" not in message:
            return _NOTHING_MORE  # a response, or not JSON-RPC: the server answers it; no call is made
        method, params = call_of(message)
        if method == "tools/call":
            name = params.get("name") if params is not None else None
            if not isinstance(name, str):
                # JSON-RPC §4.2 / MCP tools/call: params is an object naming the tool. The server would
                # refuse it too; here it must not pass under the default tool's policy.
                raise InvalidRequest("bad_request_body", "A tools/call request must name its tool.")
            return self.tool_requirement(name)
        return self.methods.get(method, _NOTHING_MORE)

    def may_call(
        self, name: str, token: AccessToken, *, bound: bool, clock: Callable[[], float], leeway: float
    ) -> bool:
        """Whether ``token`` passes what tool ``name`` needs that the token alone shows (``tools/list`` filter)."""
        requirement = self.tool_requirement(name)
        if requirement.sender_constrained and not bound:
            return False
        try:
            requirement.authorize(token, clock=clock, leeway=leeway)
        except AuthError:
            return False
        return True


def call_of(message: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """The ``method`` and ``params`` of a JSON-RPC request; 400 when the method is not a string."""
    method = message["method"]
    if not isinstance(method, str):
        raise InvalidRequest("bad_request_body", "The JSON-RPC method must be a string.")
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        params = None  # positional params: no tool name can be read from them
    return method, params


class ToolsListFilter:
    """Rewrite one ``tools/list`` answer (JSON, or Server-Sent Events) to the tools ``keep`` accepts.

    ``request_id`` is the id of the ``tools/list`` request: only the JSON-RPC response with that id
    is changed. Whatever cannot be read (too large, not JSON, an unexpected shape) is passed on as it
    came: the filter only hides, every call is still checked.
    """

    def __init__(self, request_id: object, keep: Callable[[str], bool]) -> None:
        self.request_id = request_id
        self.keep = keep

    def rewrite_json(self, body: bytes) -> bytes:
        try:
            message = json.loads(body)
        except ValueError:
            return body
        changed = self._filter(message)
        return json.dumps(message, separators=(",", ":")).encode() if changed else body

    def rewrite_event(self, event: bytes) -> bytes:
        """One Server-Sent Event (WHATWG HTML §9.2.6), any of its line endings kept as they came."""
        lines = event.splitlines(keepends=True)
        data = [index for index, line in enumerate(lines) if line.startswith(b"data:")]
        if len(data) != 1:
            return event  # the SDKs send each JSON-RPC message as one data line
        line = lines[data[0]]
        content = line.rstrip(b"\r\n")
        payload = content[5:].removeprefix(b" ")
        rewritten = self.rewrite_json(payload)
        if rewritten is payload:
            return event
        lines[data[0]] = b"data: " + rewritten + line[len(content) :]
        return b"".join(lines)

    def _filter(self, message: object) -> bool:
        if not isinstance(message, dict) or message.get("id") != self.request_id:
            return False
        result = message.get("result")
        if not isinstance(result, dict):
            return False
        tools = result.get("tools")
        if not isinstance(tools, list):
            return False
        kept = [tool for tool in tools if isinstance(tool, dict) and self._allowed(tool.get("name"))]
        if len(kept) == len(tools):
            return False
        result["tools"] = kept
        return True

    def _allowed(self, name: object) -> bool:
        return isinstance(name, str) and self.keep(name)


#: An ASGI ``send``.
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _event_end(buffer: bytearray, search_from: int) -> int:
    """The end of the first complete SSE event in ``buffer`` whose blank line starts at or after
    ``search_from`` (after that blank line), or -1. One left-to-right scan that stops at the first
    blank line (literal alternatives of at most 4 bytes: no backtracking), so over a whole answer each
    byte is looked at a bounded number of times when callers move ``search_from`` past what they searched."""
    found = _EVENT_END.search(buffer, search_from)
    return found.end() if found is not None else -1


#: An event ends with a blank line, whichever line ending the server uses (WHATWG HTML §9.2.5).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def filtering_send(send: Send, rewrite: ToolsListFilter, *, limit: int = MAX_FILTERED_BYTES) -> Send:
    """An ASGI ``send`` that passes a ``tools/list`` answer through ``rewrite``.

    A JSON answer is held until complete (at most ``limit`` bytes) and sent with its new
    ``content-length``; an event stream is rewritten one event at a time, each at most ``limit``
    bytes. Past the limit, or for any other content type, everything goes on unchanged.
    """
    mode = "pass"
    start: dict[str, Any] | None = None
    # Linear in the answer by construction, however it is chunked: JSON chunks are joined once; the
    # event stream is searched from where the last search stopped, and trimmed once per chunk.
    chunks: list[bytes] = []
    size = 0
    pending = bytearray()
    searched = 0

    async def flush_json(body: bytes, more_body: bool) -> None:
        assert start is not None
        headers = [(name, value) for name, value in start.get("headers", ()) if name.lower() != b"content-length"]
        if not more_body:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        nonlocal mode, start, size, searched
        if message["type"] == "http.response.start":
            content_type = next(
                (value for name, value in message.get("headers", ()) if name.lower() == b"content-type"), b""
            ).lower()
            if content_type.startswith(b"application/json"):
                mode, start = "json", dict(message)
                return
            if content_type.startswith(b"text/event-stream"):
                mode = "sse"
            await send(message)
            return
        if message["type"] != "http.response.body" or mode == "pass":
            await send(message)
            return
        chunk, more = message.get("body", b""), message.get("more_body", False)
        if mode == "json":
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                mode = "pass"
                await flush_json(b"".join(chunks), more)
                chunks.clear()
            elif not more:
                await flush_json(rewrite.rewrite_json(b"".join(chunks)), False)
                chunks.clear()
            return
        pending.extend(chunk)
        out: list[bytes] = []
        begin = 0
        end = _event_end(pending, searched)
        while end != -1:
            out.append(rewrite.rewrite_event(bytes(pending[begin:end])))
            begin = end
            end = _event_end(pending, begin)
        del pending[:begin]
        # What is left holds no complete event; a separator may still straddle its last 3 bytes.
        searched = max(0, len(pending) - 3)
        if len(pending) > limit or not more:
            out.append(bytes(pending))
            pending.clear()
            searched = 0
            if more:
                mode = "pass"
        await send({**message, "body": b"".join(out)})

    return wrapped
