"""A ``logging.Filter`` that removes bearer tokens and JWT-shaped strings from every log record.

tokenguard never logs a token itself; this filter is for everything else in the process (access logs,
exception messages, a debug print of headers). Attach it to any handler::

    import logging
    from tokenguard.redaction import TokenRedactingFilter

    handler = logging.StreamHandler()
    handler.addFilter(TokenRedactingFilter())
    logging.getLogger().addHandler(handler)

    # uvicorn's own handlers (access log included):
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(TokenRedactingFilter())

What it finds, and replaces with ``[REDACTED]``:

- credentials after an ``Authorization`` scheme (``Bearer``, ``Basic``, ``DPoP``, any casing), and the
  value of an ``Authorization:`` / ``"authorization": ...`` field whatever its scheme;
- JWT-shaped strings (compact JWS/JWE whose first segment is a base64url JSON object), wherever they are;
- ``access_token=``, ``refresh_token=``, ``id_token=``, ``code=``, ``client_secret=``… in URLs and forms,
  ``"access_token": "..."`` in JSON or Python reprs, and passwords in URL userinfo;
- a value whose key names a credential (``{"authorization": "opaque"}``, ``(b"authorization", b"...")``,
  ``extra={"access_token": ...}``), and an argument placed right after such a key or scheme in the
  message (``logger.info("token=%s", opaque)``).

It rewrites the message, its arguments (keeping their types and number, so formatters such as uvicorn's
access log that unpack ``record.args`` keep working), extra fields (nested containers too), bytes, objects
whose ``str``/``repr`` shows a token, the exception text and traceback, and ``stack_info``. The record is
changed in place, so handlers that see it later see the redacted record too. The live exception is
dropped from the record (its formatted, redacted text is kept in ``exc_text``): a formatter must not
render its raw message.

It never drops a record and never raises (a filter that raises breaks the caller's log call): a record it
cannot rewrite is blanked instead. A JWT-shaped string is cut up to the first character that cannot be
part of it, base64's ``+`` and ``/`` included, so a JWT inside a URL path takes the rest of the path
with it. An opaque token logged with no scheme, key or shape around it cannot be told from any other
string.

Its work is linear in what is logged, whatever the text (it runs on the caller's thread: for uvicorn's
access log, the event loop, with a path the client chose): no pattern reads again what an earlier
attempt read (see ``_JOSE_START``, ``_SCHEME_RUN``, ``_CONVERSION_TAIL``). A string longer than
``MAX_REDACTED_CHARS`` (64 KiB) is cut there; the rest is replaced by a note of how much was withheld.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ["MAX_REDACTED_CHARS", "REDACTED", "SENSITIVE_KEYS", "TokenRedactingFilter", "redact"]

REDACTED = "[REDACTED]"

# Characters that may belong to a credential: anything but whitespace, quotes and bracketing punctuation
# (a malformed token is as secret as a well-formed one, so this is wider than RFC 6750 §2.1 b64token).
_CRED = r"[^\s\"'`,;<>()\[\]{}]"
# Words that follow "bearer"/"basic" in prose and challenges ("Bearer realm=", "basic auth"): not secrets.
_PROSE = (
    r"(?:of|the|a|an|and|or|to|is|in|for|token|tokens|access|auth|authentication|authorization|scheme|realm"
    r"|credential|credentials|header|challenge|error|error_description|scope)"
)
_SCHEMES = r"(?:bearer|basic|dpop)"
# Keys whose value is a credential in URLs and form bodies (RFC 6750 §2.3, RFC 6749 §4.1.2, RFC 7521 §4.2).
_URL_KEYS = (
    r"(?:access_token|refresh_token|id_token|subject_token|actor_token|token|device_code|client_secret"
    r"|client_assertion|assertion|password)"
)
# Keys whose value is a credential in JSON, Python reprs and header-style text ("token" only as a quoted
# member name or a keyword argument with a quoted value, token='...': "token: expired" is prose).
_FIELD_KEYS = (
    r"(?:access_token|refresh_token|id_token|subject_token|actor_token|client_secret|client_assertion|password)"
)
_FIELD_KEY = rf"(?:[\"']?\b{_FIELD_KEYS}[\"']?|[\"']token[\"']|\btoken(?=\s*=\s*b?[\"']))"

_AUTH_FIELD = re.compile(
    # Authorization: <scheme> <credentials> (RFC 9110 §11.6.2), and the same as a JSON/dict field; the scheme
    # is kept, whatever it is, and the credentials go.
    rf"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:b[\"'])?(?:[A-Za-z][\w-]*[ \t]+)?)"
    rf"(?!\[REDACTED\]|{_SCHEMES}(?:\s|$)){_CRED}+"
)
_SCHEME_CREDENTIALS = re.compile(
    # RFC 6750 §2.1 "Bearer" 1*SP b64token, RFC 7617 Basic, RFC 9449 DPoP; the scheme is case-insensitive.
    rf"(?i)\b({_SCHEMES})((?:[ \t]|%20)+)(?!{_PROSE}(?:[\s=,;\"']|$))(?!\[REDACTED\])({_CRED}+)"
)
# Candidates for a compact JWS/JWE (RFC 7515 §7.1, RFC 7516 §7.1): a first segment that starts like
# base64url of "{" ("ey" / "ew"), then one to four more dot-separated segments; padding and "+/" too,
# i.e. what r"e[wy][A-Za-z0-9_\-+/]*=*(?:\.[A-Za-z0-9_\-+/]*=*){1,4}" matches. That regex is not used:
# from every "ey" of "eyeyey..." it would read to the end of the run again (O(n²)); ``_redact_jose``
# finds the same candidates reading each character once. A candidate is redacted only when a JOSE
# header starts in it (``_JOSE_HEADER``).
_JOSE_START = re.compile(r"e[wy]")
#: One segment of a candidate: base64 digits of either alphabet (RFC 4648 §4, §5), then padding.
_JOSE_SEGMENT = re.compile(r"[A-Za-z0-9_\-+/]*=*")
_B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: Bytes that may precede the first member name of a JSON object: whitespace as Python's bytes ``\s``
#: reads it (RFC 8259 §2 allows only SP, HTAB, LF, CR; the filter errs on the wide side).
_JSON_SPACE = b"\t\n\x0b\x0c\r "


def _digits(values: range) -> frozenset[str]:
    """The base64 digits of these 6-bit values, in both alphabets (62 is "-" or "+", 63 "_" or "/")."""
    other = "+/"[max(values.start, 62) - 62 : max(values.stop, 62) - 62]
    return frozenset(_B64_DIGITS[values.start : values.stop] + other)


def _quartet(prefix: bytes) -> tuple[frozenset[str], ...]:
    """The four digits (a set of choices each) that decode to three bytes starting with ``prefix``.

    RFC 4648 §4: four digits carry 24 bits, the bytes' bits in order; a digit whose bits all come from
    ``prefix`` is fixed, one that straddles its end keeps its top bits, the others are free.
    """
    fixed, bits = 8 * len(prefix), int.from_bytes(prefix, "big")
    digits: list[frozenset[str]] = []
    for low in range(0, 24, 6):
        known = min(max(fixed - low, 0), 6)  # how many of this digit's 6 bits the prefix fixes
        top = (bits >> (fixed - low - known)) & ((1 << known) - 1) if known else 0
        digits.append(_digits(range(top << (6 - known), (top + 1) << (6 - known))))
    return tuple(digits)


def _alternatives(rows: Iterable[tuple[frozenset[str], ...]]) -> str:
    """A regex for a set of digit sequences (a trie: common heads shared, heads with one tail merged)."""
    tails: dict[frozenset[str], list[tuple[frozenset[str], ...]]] = {}
    for row in rows:
        if row:
            tails.setdefault(row[0], []).append(row[1:])
    if not tails:
        return ""
    heads: dict[str, set[str]] = {}
    for head, rest in tails.items():
        heads.setdefault(_alternatives(rest), set()).update(head)
    branches = [_char_class(chars) + tail for tail, chars in sorted(heads.items())]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def _char_class(chars: Iterable[str]) -> str:
    """``[A-Za-z0-9_+/-]``-style: runs of consecutive characters written as ranges."""
    codes = sorted(ord(char) for char in chars)
    if len(codes) == 1:
        return re.escape(chr(codes[0]))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    parts = (re.escape(chr(a)) + ("-" if b > a + 1 else "") + (re.escape(chr(b)) if b > a else "") for a, b in runs)
    return "[" + "".join(parts) + "]"


def _jose_header_pattern() -> str:
    """Where a JOSE header starts: base64 that decodes to ``\\s*{\\s*"``, the start of a JSON object
    with a member (RFC 7515 §4: the header is a JSON object), within its first 16 digits (12 bytes).

    Each quartet of digits decodes on its own (RFC 4648 §4), so the bytes are checked quartet by
    quartet, and a position is tested in at most 16 steps: no ``base64`` call per "ey" of a candidate.
    The first byte is "{" (it makes the "ew"/"ey"); then whitespace, until a quartet holds the '"'.
    """
    space = [bytes([byte]) for byte in _JSON_SPACE]
    pairs = [a + b for a in space for b in space]
    ends = [b'"', *(a + b'"' for a in space), *(a + b'"' for a in pairs)]  # the quartet holding the '"'
    first_end = _alternatives(_quartet(b"{" + end) for end in ends if len(end) < 3)
    first_space = _alternatives(_quartet(b"{" + pair) for pair in pairs)
    end = _alternatives(_quartet(end) for end in ends)
    more = _alternatives(_quartet(a + pair) for a in space for pair in pairs)
    return f"{first_end}|{first_space}(?:{end}|{more}(?:{end}|{more}{end}))"


_JOSE_HEADER = re.compile(_jose_header_pattern())
# "code" alone is too common a word ("status code=401"): only as a query or form parameter (RFC 6749 §4.1.2).
_URL_CREDENTIAL = re.compile(rf"(?i)(\b{_URL_KEYS}=|(?:(?<=[?&#;])|^)code=)(?!\[REDACTED\])[^&\s#\"'<>]+")
_FIELD_CREDENTIAL = re.compile(rf"(?i)({_FIELD_KEY}\s*[:=]\s*(?:b?[\"'])?)(?!\[REDACTED\]|{_SCHEMES}\s)[^\"',\s}}\]]+")
# RFC 3986 §3.2.1: "user:password@" in a URL; the password goes. What
# r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@\"']*):[^/\s@\"']+@" matches, found by ``_redact_userinfo``
# without that regex's O(n²) (it read "a.a.a.a..." to its end again from every letter). The scheme
# (RFC 3986 §3.1) is a maximal run of scheme characters before "://" (the lookbehind lets a search
# try only the first character of a run), starting at its first letter at a word boundary.
_SCHEME_CHARS = r"[a-z0-9+.\-]"
_SCHEME_RUN = re.compile(rf"(?i)(?<!{_SCHEME_CHARS}){_SCHEME_CHARS}+(?=://)")
_SCHEME_START = re.compile(r"(?i)\b[a-z]")
_USERINFO_TAIL = re.compile(r"(?i)(://[^/\s:@\"']*):[^/\s@\"']+@")

# A message argument right after one of these is a credential whatever it looks like.
_CREDENTIAL_CONTEXT = re.compile(
    rf"(?i)(?:\b{_SCHEMES}\s+|\b{_URL_KEYS}=|(?:(?<=[?&#;])|^)code=|\b(?:access[ _-]?)?token\s+"
    rf"|(?:{_FIELD_KEY}|[\"']?\b(?:proxy-)?authorization[\"']?)\s*[:=]\s*(?:b?[\"'])?(?:[A-Za-z][\w-]*[ \t]+)?)$"
)
# One %-conversion of a log message (the printf-style that ``LogRecord.getMessage`` applies) is
# r"%(?:\((?P<key>[^)]*)\))?[#0+ \-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?(?P<type>[a-zA-Z%])", found by
# ``_conversions``. That regex was O(n²) twice: from every "%(" of "%(%(%(..." it read to the next ")"
# again, and "%000...0!" could be split between the flags and the width in n² ways before failing.
# This is what follows the "%" or the "(key)": the width cannot start with "0" (a leading "0" is
# always a flag, and the greedy flags took it first anyway), so no text has two readings.
_CONVERSION_TAIL = re.compile(r"[#0+ \-]*(?:\*|[1-9]\d*)?(?:\.(?:\*|\d+))?[hlL]?(?P<type>[a-zA-Z%])")
#: ``_CREDENTIAL_CONTEXT`` reads only this much of the text rendered before an argument.
_CONTEXT_CHARS = 200
#: ``redact`` reads at most this many characters of one string (a message, one argument, an extra
#: field, a traceback): the rest is withheld, never printed unredacted. Redaction is linear, but the
#: filter runs on the caller's thread (the event loop, for uvicorn's access log), so the work one log
#: call can ask for is bounded too: 64 KiB, like the middleware's ``max_body_bytes``, and more than a
#: server accepts in a request line or a header (uvicorn's h11 stops at 16 KiB by default).
MAX_REDACTED_CHARS = 64 * 1024

#: Names (lowercase) whose value is a credential, as dict keys, header names and ``extra`` fields.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "access_token",
        "refresh_token",
        "id_token",
        "subject_token",
        "actor_token",
        "token",
        "client_secret",
        "client_assertion",
        "password",
        "dpop",
        "cookie",
        "set-cookie",
    }
)
_NEUTRAL = (int, float, bool, type(None))
_MAX_DEPTH = 16
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with every bearer credential and JWT-shaped string replaced by ``[REDACTED]``.

    Linear in ``len(text)``: every step reads each character a bounded number of times (see the
    patterns above), and past ``MAX_REDACTED_CHARS`` the text is cut (what is kept is redacted).
    """
    if len(text) > MAX_REDACTED_CHARS:  # the mark is added after redaction: nothing can redact it away
        return f"{redact(text[:MAX_REDACTED_CHARS])}...[{len(text) - MAX_REDACTED_CHARS} characters withheld]"
    text = _AUTH_FIELD.sub(r"\1" + REDACTED, text)
    text = _SCHEME_CREDENTIALS.sub(_scheme, text)
    text = _redact_jose(text)
    text = _URL_CREDENTIAL.sub(r"\1" + REDACTED, text)
    text = _FIELD_CREDENTIAL.sub(r"\1" + REDACTED, text)
    return _redact_userinfo(text)


def _scheme(match: re.Match[str]) -> str:
    """Redact the credentials after a scheme; for Basic, only what decodes to ``user:password`` (RFC 7617 §2)."""
    scheme, space, credentials = match.groups()
    if scheme.lower() == "basic" and not _is_basic_pair(credentials):
        return match.group(0)  # "a basic check": prose, not credentials
    return f"{scheme}{space}{REDACTED}"


def _is_basic_pair(credentials: str) -> bool:
    text = credentials.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _redact_jose(text: str) -> str:
    """Each candidate (see ``_JOSE_START``) redacted from where a JOSE header starts in it.

    Candidates are found left to right as a regex search would find them, in one pass: the first
    segment of a candidate ends where the run of base64 digits holding its "ew"/"ey" ends, whichever
    "ew"/"ey" of the run it starts at; so when that run is not followed by a "." (after its padding),
    no "ew"/"ey" in it starts a candidate, and the search goes on after the run, never inside it.
    """
    pieces: list[str] = []
    copied = position = 0
    while (found := _JOSE_START.search(text, position)) is not None:
        start = found.start()
        end = _segment_end(text, start)
        if not text.startswith(".", end):
            position = end  # past the whole run (end > start: "ew"/"ey" belong to it)
            continue
        for _ in range(4):  # one to four more segments (a JWS has two more, a JWE four)
            if not text.startswith(".", end):
                break
            end = _segment_end(text, end + 1)
        pieces += [text[copied:start], _jose(text[start:end])]
        copied = position = end
    pieces.append(text[copied:])
    return "".join(pieces)


def _segment_end(text: str, start: int) -> int:
    """Where the segment starting at ``start`` ends (the pattern matches the empty string too)."""
    match = _JOSE_SEGMENT.match(text, start)
    return start if match is None else match.end()


def _jose(candidate: str) -> str:
    """Redact from the first point of a candidate where a JOSE header (base64url of '{"') starts.

    Glued text ("...%3DeyJ...", "reviewing.eyJ...") may start the candidate early, so every later
    "ew"/"ey" in it counts: the header pattern is searched, at most 16 digits read per position.
    """
    header = _JOSE_HEADER.search(candidate)
    return candidate if header is None else candidate[: header.start()] + REDACTED


def _redact_userinfo(text: str) -> str:
    """The password of each ``scheme://user:password@`` replaced, in one pass (see ``_SCHEME_RUN``)."""
    pieces: list[str] = []
    copied = position = 0
    while (run := _SCHEME_RUN.search(text, position)) is not None:
        position = run.end()  # the "://": no later run starts before it
        scheme = _SCHEME_START.search(text, run.start(), run.end())
        # The userinfo stops at the next "/" (or space), so the tails of two "://" share no text.
        tail = None if scheme is None else _USERINFO_TAIL.match(text, run.end())
        if scheme is None or tail is None:
            continue
        pieces += [text[copied : scheme.start()], text[scheme.start() : tail.end(1)], ":", REDACTED, "@"]
        copied = position = tail.end()
    pieces.append(text[copied:])
    return "".join(pieces)


class _Shown:
    """Stands in for an object whose ``str``/``repr`` shows a credential: both are redacted.

    Other attributes are read from the object itself, so a handler that looks into it (a request object
    an error reporter reads) keeps working; only its text form is replaced.
    """

    __slots__ = ("_original", "_repr", "_str")

    def __init__(self, original: object, text: str, representation: str) -> None:
        self._original = original
        self._str = text
        self._repr = representation

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _redact_value(value: Any, key: object = None, depth: int = 0) -> Any:
    """``value`` with credentials removed, of the same type where it can be (str, bytes, containers)."""
    if isinstance(value, _NEUTRAL):
        return value
    if depth > _MAX_DEPTH:  # deeply nested or cyclic: judged by its text, which Python bounds
        return _redact_object(value)
    deeper = depth + 1
    if _is_sensitive_key(key) and isinstance(value, (str, bytes, bytearray)):
        return _redact_credential(value)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bytes, bytearray)):
        return type(value)(redact(bytes(value).decode("latin-1")).encode("latin-1"))
    if isinstance(value, tuple):
        if len(value) == 2 and _is_sensitive_key(value[0]):  # a (name, value) header pair
            return (value[0], _redact_value(value[1], value[0], deeper))
        items = [_redact_value(item, None, deeper) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_redact_value(item, None, deeper) for item in value]
    if isinstance(value, (set, frozenset)):
        return type(value)(_redact_value(item, None, deeper) for item in value)
    if isinstance(value, dict):
        return {_redact_value(name, None, deeper): _redact_value(item, name, deeper) for name, item in value.items()}
    return _redact_object(value)


def _redact_object(value: Any) -> Any:
    """Any other object: kept as is unless its ``str`` or ``repr`` shows a credential."""
    try:
        text, representation = str(value), repr(value)
    except Exception:  # a broken __str__ fails the same way when the record is formatted
        return value
    clean_text, clean_repr = redact(text), redact(representation)
    if clean_text == text and clean_repr == representation:
        return value
    return _Shown(value, clean_text, clean_repr)


def _is_sensitive_key(key: object) -> bool:
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).decode("latin-1")
    return isinstance(key, str) and key.lower() in SENSITIVE_KEYS


def _redact_credential(value: str | bytes | bytearray) -> Any:
    """The value of a credential field: the scheme word (if any) is kept, the rest goes."""
    text = value if isinstance(value, str) else bytes(value).decode("latin-1")
    scheme, _, rest = text.strip().partition(" ")
    clean = f"{scheme} {REDACTED}" if rest and re.fullmatch(r"[A-Za-z][\w-]*", scheme) else REDACTED
    return clean if isinstance(value, str) else type(value)(clean.encode("latin-1"))


class _Conversion(NamedTuple):
    """One %-conversion of a message: where it is, its text, its ``(key)`` if any, its type letter."""

    start: int
    end: int
    text: str
    key: str | None
    type: str


def _conversions(msg: str) -> Iterator[_Conversion]:
    """The %-conversions of ``msg`` (see ``_CONVERSION_TAIL``), left to right, in linear time.

    A "(key)" ends at the first ")" after it; that ")" and whether a conversion follows it are the same
    for every "%(" before it, so both are found once and kept, never looked up again per "%(".
    """
    position = 0
    close = -1  # the first ")" after the last "%(" looked at (len(msg): there is none)
    after_close: re.Match[str] | None = None  # the conversion tail right after that ")"
    while (start := msg.find("%", position)) != -1:
        key: str | None = None
        if msg.startswith("(", start + 1):
            if close < start + 2:
                found = msg.find(")", start + 2)
                close = len(msg) if found == -1 else found
                after_close = _CONVERSION_TAIL.match(msg, close + 1) if found != -1 else None
            # No ")" or no conversion after it: "%(" is no conversion (what follows "%" is "(").
            tail = after_close
            key = msg[start + 2 : close]
        else:
            tail = _CONVERSION_TAIL.match(msg, start + 1)
        if tail is None:
            position = start + 1
            continue
        position = tail.end()
        yield _Conversion(start, position, msg[start:position], key, tail.group("type"))


def _redact_args(msg: str, args: tuple[Any, ...] | Mapping[str, Any]) -> tuple[str, Any]:
    """Redact a %-style message and its arguments, keeping every conversion and the arguments' types.

    Literal text is redacted piece by piece (so no conversion is ever eaten); each argument is redacted
    by itself, and replaced whole when the text rendered before it ends in a scheme or credential key.
    Linear in the message and the arguments: only the last ``_CONTEXT_CHARS`` rendered characters are
    kept for that test (joining all of them again before every argument was quadratic), and a lone
    mapping argument is redacted once however many "%s" show it.
    """
    mapping = args if isinstance(args, Mapping) else None
    positional = list(args) if mapping is None else []
    clean_mapping: dict[Any, Any] = {}
    whole_mapping: dict[Any, Any] | None = None
    pieces: list[str] = []
    context = ""  # the end of the text rendered so far
    index, position = 0, 0
    for conversion in _conversions(msg):
        literal = redact(msg[position : conversion.start])
        pieces += [literal, conversion.text]
        context = (context + literal[-_CONTEXT_CHARS:])[-_CONTEXT_CHARS:]
        position = conversion.end
        if conversion.type == "%":
            context = (context + "%")[-_CONTEXT_CHARS:]
            continue
        if "*" in conversion.text:
            raise ValueError("'*' widths are not followed")
        key = conversion.key
        if mapping is None:
            value = _redact_value(positional[index])
        elif key is None:
            # "%s" % {...}: the one mapping argument is the value (logging unwraps a lone dict argument).
            if whole_mapping is None:
                whole_mapping = _redact_value(dict(mapping))
            rendered = conversion.text % (whole_mapping,)
            context = (context + rendered[-_CONTEXT_CHARS:])[-_CONTEXT_CHARS:]
            continue
        else:
            value = clean_mapping[key] if key in clean_mapping else _redact_value(mapping[key], key)
        if _CREDENTIAL_CONTEXT.search(context):
            value = _replace_whole(value)
        if mapping is not None:
            clean_mapping[key] = value
        else:
            positional[index] = value
            index += 1
        rendered = conversion.text % ({key: value} if key is not None else (value,))
        context = (context + rendered[-_CONTEXT_CHARS:])[-_CONTEXT_CHARS:]
    pieces.append(redact(msg[position:]))
    if mapping is not None:
        clean: Any = {**{k: _redact_value(v, k) for k, v in mapping.items()}, **clean_mapping}
    elif index != len(positional):
        raise TypeError("not all arguments converted")  # logging would print them raw to stderr
    else:
        clean = tuple(positional)
    return "".join(pieces), clean


def _redact_template(template: str) -> str:
    """A %-template (uvicorn's ``color_message``) with its literal text redacted and its conversions kept."""
    pieces: list[str] = []
    position = 0
    for conversion in _conversions(template):
        pieces += [redact(template[position : conversion.start]), conversion.text]
        position = conversion.end
    pieces.append(redact(template[position:]))
    return "".join(pieces)


def _replace_whole(value: Any) -> Any:
    """An argument in a credential position: strings and bytes go whole, unless already redacted."""
    if isinstance(value, str):
        return value if REDACTED in value else REDACTED
    if isinstance(value, (bytes, bytearray)):
        return value if REDACTED.encode() in value else type(value)(REDACTED.encode())
    if isinstance(value, _NEUTRAL):
        return value
    return value if REDACTED in str(value) else _Shown(value, REDACTED, REDACTED)


class TokenRedactingFilter(logging.Filter):
    """Redacts tokens from a record in place; never drops a record, never raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception as exc:  # a filter that raises breaks the caller's log call: blank the record instead
            record.msg, record.args = f"<log record withheld: it could not be redacted ({type(exc).__name__})>", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            if "message" in vars(record):
                record.message = record.msg
            for name in list(vars(record)):
                if name not in _STANDARD_ATTRS:
                    setattr(record, name, REDACTED)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        self._message(record)
        for name, value in list(vars(record).items()):
            if name == "color_message" and isinstance(value, str):
                # uvicorn formats this template with record.args: its conversions must survive.
                record.color_message = _redact_template(value)
            elif name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_value(value, name))
        if isinstance(getattr(record, "message", None), str):
            record.message = redact(record.message)
        self._exception(record)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)

    @staticmethod
    def _message(record: logging.LogRecord) -> None:
        msg, args = record.msg, record.args
        if not isinstance(msg, str):
            if isinstance(msg, _NEUTRAL):
                return
            msg = str(msg)  # what getMessage() would do with it
        if not args:
            record.msg = redact(msg)
            return
        try:
            record.msg, record.args = _redact_args(msg, args)
            return
        except (KeyError, IndexError, TypeError, ValueError):
            pass
        # A message its own arguments do not fit: keep what logging would print, redacted.
        record.msg, record.args = redact(_safe_message(record.getMessage)), ()

    @staticmethod
    def _exception(record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            # Format now and drop the live exception: a formatter must not render its raw message.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)


def _safe_message(get_message: Callable[[], str]) -> str:
    try:
        return get_message()
    except Exception as exc:  # logging would report it as an error; the filter must not
        return f"<unformattable log message: {type(exc).__name__}>"
