"""The orjson fast path of ``strict_loads`` never changes an answer (``_strictjson._canonical_object``).

Differential: every input is decoded with the fast path on and with it off (``_orjson_loads = None``,
the reference, the standard-library strict decoder alone), under each option combination the callers
use. Both must raise the same ``ValueError`` (same class, same message: ``NotAnObject`` stays
``NotAnObject``), or both must return values equal *including types* (``same``: int vs float, 1 vs True,
-0.0 vs 0.0, list vs tuple, dict key order). Inputs: JSON values serialised by orjson and by ``json``
(compact, default separators, ASCII or not, indented, sorted), hand-made texts no serialiser writes
(duplicate names, big integers, exponents, whitespace, BOM and UTF-16/32, NaN/Infinity, surrogate
escapes, invalid UTF-8, truncations, deep nesting, top-level non-objects), and byte mutations of
canonical texts. Two guards keep the differential from passing vacuously: the fast path is taken for a
typical JWT payload, and a duplicate member name is still refused with it on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tokenguard import _strictjson
from tokenguard._strictjson import MAX_DEPTH, NotAnObject, strict_loads

orjson = pytest.importorskip("orjson")

# The option combinations of the brief, then the ones the package's callers actually pass
# (_jose: defaults; introspection: answers and JWT answers; _http: issuer documents; _details: request
# bodies; fleet; revocation).
OPTIONS: tuple[dict[str, Any], ...] = (
    {},
    {"finite_floats": False},
    {"lone_surrogates": True},
    {"max_depth": None},
    {"object_only": False},
    {"detect_encoding": True},
    {"max_depth": None, "finite_floats": False, "lone_surrogates": True},
    {"max_depth": None, "lone_surrogates": True, "detect_encoding": True},
    {"object_only": False, "max_depth": None},
    {"max_depth": 2},
    {"object_only": False, "max_depth": None, "finite_floats": False, "lone_surrogates": True, "detect_encoding": True},
)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# --- comparison -----------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal including types at every level: 1 is not 1.0 nor True, -0.0 is not 0.0, key order counts.

    A recursive comparison unrolled onto a list, so values nested a thousand levels deep compare too.
    """
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))  # member names, in order
            pending.extend(zip(x.values(), y.values(), strict=True))
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if math.isnan(x) or math.isnan(y):
                if not (math.isnan(x) and math.isnan(y)):
                    return False
            elif x != y or math.copysign(1.0, x) != math.copysign(1.0, y):
                return False
        elif x != y:
            return False
    return True


def test_same_distinguishes_types() -> None:
    assert same({"a": [1, 2.5, None, True, "x"]}, {"a": [1, 2.5, None, True, "x"]})
    assert not same(1, 1.0)
    assert not same(1, True)
    assert not same(0, False)
    assert not same(-0.0, 0.0)
    assert not same([1], (1,))
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not same({"a": [1]}, {"a": [1.0]})
    assert same(float("inf"), float("inf"))
    assert not same(float("inf"), float("-inf"))
    assert not same({"a": 1}, {"b": 1})
    assert not same([1, 2], [1, 2, 3])
    deep_a: list[Any] = []
    deep_b: list[Any] = []
    for _ in range(5000):
        deep_a, deep_b = [deep_a], [deep_b]
    assert same(deep_a, deep_b)
    assert not same([*deep_a, 1], [*deep_b, 1.0])


# --- running both paths ---------------------------------------------------------------------------


@contextmanager
def fast_path_off() -> Iterator[None]:
    """The reference: the standard-library strict decoder alone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_strictjson, "_orjson_loads", None)
        yield


def outcome(data: bytes | str, options: dict[str, Any]) -> tuple[str, Any]:
    try:
        return ("value", strict_loads(data, **options))
    except Exception as exc:  # anything but ValueError is itself a finding: recorded, then compared
        return ("raised", exc)


def _short_repr(value: Any, limit: int = 400) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply for repr>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def describe(result: tuple[str, Any]) -> str:
    kind, payload = result
    if kind == "raised":
        return f"raised {type(payload).__module__}.{type(payload).__qualname__}: {payload}"
    return f"returned {_short_repr(payload)}"


def disagreement(fast: tuple[str, Any], reference: tuple[str, Any]) -> str | None:
    """Why the two outcomes differ, or ``None`` when they are the same answer."""
    if fast[0] != reference[0]:
        return "one raised, the other returned"
    if fast[0] == "value":
        return None if same(fast[1], reference[1]) else "different values (or types)"
    fast_exc, ref_exc = fast[1], reference[1]
    if not isinstance(fast_exc, ValueError):  # the documented contract: ValueError, nothing else
        return "the fast path raised something other than ValueError"
    if type(fast_exc) is not type(ref_exc) or isinstance(fast_exc, NotAnObject) != isinstance(ref_exc, NotAnObject):
        return "different exception classes"
    if str(fast_exc) != str(ref_exc):
        return "different messages"
    return None


def agree(data: bytes | str, options: dict[str, Any]) -> None:
    assert _strictjson._orjson_loads is not None, "the fast path must be on for the fast side"
    fast = outcome(data, options)
    with fast_path_off():
        reference = outcome(data, options)
    problem = disagreement(fast, reference)
    if problem is not None:
        raise AssertionError(
            f"{problem}\ninput={_short_repr(data, 2000)}\noptions={options}\n"
            f"fast path: {describe(fast)}\nreference: {describe(reference)}"
        )


def check(data: bytes) -> None:
    """Every option combination, on the bytes (the fast path's only input) and on their text (never fast)."""
    for options in OPTIONS:
        agree(data, options)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    agree(text, {})
    agree(text, {"object_only": False, "max_depth": None})


# --- strategies: JSON values ----------------------------------------------------------------------

SPECIAL_CHARS = (
    '"',
    "\\",
    "/",
    "\x00",
    "\x01",
    "\x08",
    "\t",
    "\n",
    "\x0c",
    "\r",
    "\x1f",
    " ",
    "\x7f",
    "\x80",
    "\xa0",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "\U0010ffff",
    "a",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "u",
    "0",
)
chars = st.one_of(st.sampled_from(SPECIAL_CHARS), st.characters(exclude_categories=("Cs",)))
#: Lone surrogates cannot be written by orjson (nor in UTF-8): the json.dumps serialisers write them
#: escaped (ensure_ascii) or as surrogatepass bytes (invalid UTF-8).
chars_with_surrogates = st.one_of(chars, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
texts = st.text(chars, max_size=10)
keys = st.one_of(st.sampled_from(["", "a", "A", "sub", "aud", "exp", "a\u0000", '"', "\\", "é"]), texts)

INT_EDGES = [
    0,
    1,
    -1,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    10**30,
    -(10**30),
    10**100,
]
ints = st.one_of(
    st.sampled_from(INT_EDGES),
    st.integers(min_value=-(2**64) - 2, max_value=2**64 + 2),
    st.integers(min_value=2**62, max_value=2**65),
    st.integers(min_value=-(2**65), max_value=-(2**62)),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(),
)
FLOAT_EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-7,
    1e15,
    1e16,
    1e21,
    1e22,
    123456789.0,
    2.0**53,
    2.0**63,
    2.0**64,
    1.8446744073709552e19,
    9.223372036854776e18,
    1.5e300,
]
floats = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(allow_nan=False, allow_infinity=False))
leaves = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=20,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
# Values only the json module can write: strings with lone surrogates, anywhere.
surrogate_values = st.recursive(
    st.one_of(leaves, st.text(chars_with_surrogates, max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(chars_with_surrogates, max_size=4), children, max_size=3),
    ),
    max_leaves=8,
)


def _orjson(value: Any, option: int = 0) -> bytes:
    try:
        return bytes(orjson.dumps(value, option=option))
    except TypeError:  # an integer beyond 64 bits, a lone surrogate: the json module's text instead
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


SERIALISERS: dict[str, Callable[[Any], bytes]] = {
    "orjson": _orjson,
    "orjson-sorted": lambda v: _orjson(v, orjson.OPT_SORT_KEYS),
    "orjson-indent": lambda v: _orjson(v, orjson.OPT_INDENT_2),
    "orjson-newline": lambda v: _orjson(v, orjson.OPT_APPEND_NEWLINE),
    "json-compact": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"),
    "json-compact-ascii": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=True).encode(),
    "json-default": lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    "json-default-ascii": lambda v: json.dumps(v).encode(),
    "json-indent": lambda v: json.dumps(v, indent=1, ensure_ascii=False).encode("utf-8", "surrogatepass"),
}
serialisers = st.sampled_from(sorted(SERIALISERS))


# --- strategies: texts no serialiser writes --------------------------------------------------------

NUMBER_TEXTS = [
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1E2",
    "1e2",
    "1.0e+2",
    "1.0E-2",
    "100",
    "100.0",
    "1e400",
    "-1e400",
    "1e-400",
    "5e-324",
    "4e-324",
    "2e-324",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "-18446744073709551616",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "1.8446744073709552e+19",
    "1.8446744073709552e19",
    "9.223372036854776e+18",
    "1e+16",
    "1e16",
    "1e-7",
    "1e-07",
    "0.30000000000000004",
    "1" * 400,
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    "01",
    "-01",
    "1.",
    ".5",
    "+1",
    "1e",
    "-",
    "0x10",
    "true",
    "false",
    "null",
    "True",
]
number_texts = st.one_of(
    st.sampled_from(NUMBER_TEXTS),
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.from_regex(r"[-+]?[0-9.eE+-]{1,8}", fullmatch=True),
    st.integers().map(str),
)
STRING_BODIES = [
    r"\ud800",
    r"\udc00",
    r"\uD800",
    r"\uDBFF",
    r"\udfff",
    r"\ud83d\ude00",
    r"\uD83D\uDE00",
    r"\ude00\ud83d",
    r"\ud800\u0041",
    r"\ud800\ud800",
    r"\ud800x",
    r"x\udc00",
    r"\u0061",
    r"\u0000",
    r"\u001f",
    r"\u007f",
    r"\u00e9",
    r"\/",
    r"\b\f\n\r\t",
    r"\"",
    r"\\",
    r"\\ud800",
    r"\\\ud800",
    r"\x41",
    r"\u12",
    "\x00",
    "\x1f",
    "\t",
    "\u2028",
    "\U0001f600",
    "\ufeff",
]
string_bodies = st.one_of(
    st.sampled_from(STRING_BODIES),
    st.lists(st.sampled_from(STRING_BODIES), min_size=1, max_size=3).map("".join),
    st.from_regex(r"(\\u[dD][89abAB][0-9a-fA-F]{2}|\\u[dD][c-fC-F][0-9a-fA-F]{2}|[a-z]){1,3}", fullmatch=True),
)
WHITESPACE = [" ", "\t", "\n", "\r", "\r\n", "  ", "\x0b", "\x0c", "\xa0", "\u2028", "\ufeff", "\x00"]
whitespace = st.sampled_from(WHITESPACE)
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xb0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3",
]
BOMS = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"]
ENCODINGS = ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def _escape_one(name: str, index: int) -> str:
    """``name`` (JSON-escaped) with the character at ``index`` written as a \\u escape instead."""
    encoded = [json.dumps(c)[1:-1] for c in name]
    if name:
        encoded[index % len(name)] = "".join(f"\\u{unit:04x}" for unit in _utf16_units(name[index % len(name)]))
    return "".join(encoded)


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _wrap(inner: str, how: str) -> str:
    """Put ``inner`` (an object's members) at top level or nested."""
    if how == "top":
        return "{" + inner + "}"
    if how == "nested":
        return '{"n":{' + inner + '},"z":1}'
    return '{"l":[1,{' + inner + "}]}"


@st.composite
def duplicates(draw: st.DrawFn) -> bytes:
    name = draw(keys)
    escaped = draw(st.booleans())
    first = json.dumps(name, ensure_ascii=draw(st.booleans()))[1:-1]
    second = _escape_one(name, draw(st.integers(0, 10))) if escaped else first
    v1 = _orjson(draw(json_values))
    v2 = v1 if draw(st.booleans()) else _orjson(draw(json_values))
    members = [f'"{first}":{v1.decode()}', f'"{second}":{v2.decode()}']
    for extra in draw(st.lists(st.sampled_from(['"x":1', '"y":[]', '"zz":{}']), max_size=2, unique=True)):
        members.insert(draw(st.integers(0, len(members))), extra)  # other members before, between, after
    return _wrap(",".join(members), draw(st.sampled_from(["top", "nested", "list"]))).encode("utf-8", "surrogatepass")


@st.composite
def numbers(draw: st.DrawFn) -> bytes:
    n = draw(number_texts)
    shape = draw(st.sampled_from(['{"a":%s}', '{"a":[%s]}', '{"a":{"b":%s},"c":0}', "%s", "[%s]", '{"a":%s,"b":%s}']))
    return (shape.replace("%s", n)).encode()


@st.composite
def strings(draw: st.DrawFn) -> bytes:
    body = draw(string_bodies)
    shape = draw(st.sampled_from(['{"a":"%s"}', '{"%s":1}', '{"a":["%s"]}', '"%s"', '["%s"]', '{"a":{"%s":"%s"}}']))
    return shape.replace("%s", body).encode("utf-8", "surrogatepass")


@st.composite
def spaced(draw: st.DrawFn) -> bytes:
    text = _orjson(draw(json_objects)).decode("utf-8", "surrogatepass")
    where = draw(st.sampled_from(["before", "after", "both", "after-colon", "after-comma", "before-close"]))
    ws = draw(whitespace)
    if where in ("before", "both"):
        text = ws + text
    if where in ("after", "both"):
        text = text + draw(whitespace)
    if where == "after-colon":
        text = text.replace(":", ":" + ws, 1)
    if where == "after-comma":
        text = text.replace(",", "," + ws, 1)
    if where == "before-close":
        text = text[:-1] + ws + "}"
    return text.encode("utf-8", "surrogatepass")


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """BOM-prefixed UTF-8, UTF-16/32 with or without BOM, or a BOM glued onto the wrong encoding."""
    text = _orjson(draw(json_objects)).decode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        return draw(st.sampled_from(BOMS)) + text.encode("utf-8", "surrogatepass")
    return text.encode(draw(st.sampled_from(ENCODINGS)), "surrogatepass")


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    data = _orjson(draw(json_objects))
    bad = draw(st.sampled_from(INVALID_UTF8))
    where = draw(st.integers(0, len(data)))
    if draw(st.booleans()):  # inside a string value, where a decoder that skips validation would keep it
        return b'{"a":"x' + bad + b'y"}'
    return data[:where] + bad + data[where:]


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    data = draw(
        st.one_of(
            json_objects.map(_orjson), json_objects.flatmap(lambda v: serialisers.map(lambda s: SERIALISERS[s](v)))
        )
    )
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data[cut:]


@st.composite
def shallow_nesting(draw: st.DrawFn) -> bytes:
    """Nesting just below, at and just above MAX_DEPTH (and the revocation caller's 2), brackets in strings too."""
    depth = draw(st.sampled_from([1, 2, 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2]))
    return _nested(draw, depth)


def _nested(draw: st.DrawFn, depth: int) -> bytes:
    opener = draw(st.sampled_from(['{"a":', "[", "mixed"]))
    leaf = draw(st.sampled_from(["1", "[]", "{}", '"[{"', '"x"', "null", "1e400", '"\\ud800"']))
    openers: list[str] = []
    for i in range(depth - 1):
        kind = opener if opener != "mixed" else ('{"a":' if i % 2 else "[")
        openers.append(kind)
    closers = ["}" if o.startswith("{") else "]" for o in reversed(openers)]
    # Always an object at the top: that is where the fast path is tried.
    text = '{"a":' + "".join(openers) + leaf + "".join(closers) + "}"
    if draw(st.booleans()):
        text = text[:-1] + ',"b":"' + draw(st.sampled_from(["[[[[", "}}}", "{{{{", "\\\\[", '\\"[{'])) + '"}'
    return text.encode()


crafted = st.one_of(
    duplicates(),
    numbers(),
    strings(),
    spaced(),
    encoded(),
    invalid_utf8(),
    truncated(),
    shallow_nesting(),
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda b: b"{" + b),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_orjson(draw(json_objects)))
    interesting = b'{}[]",:\\ /0123456789eE.+-utfnal\x00\x1f\x7f\x80\xc3\xed\xff'
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.one_of(st.sampled_from(interesting), st.integers(0, 255)))
        if op == "insert":
            data.insert(draw(st.integers(0, len(data))), byte)
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            if op == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


# --- the differential tests -----------------------------------------------------------------------


@SETTINGS
@given(value=st.one_of(json_objects, json_values), serialiser=serialisers)
@example(value={"a": 1, "b": [True, None, 1.5, -0.0, "x"]}, serialiser="orjson")
@example(value={"a": 2**64 - 1, "b": 2**64, "c": -(2**63) - 1, "d": 10**30}, serialiser="json-compact")
@example(value={"a": 1e308, "b": 5e-324, "c": 1e16, "d": 1e-7, "e": -0.0}, serialiser="orjson")
@example(value={"s": '"\\/\x00\x1f\x7f\u2028\U0001f600'}, serialiser="orjson")
@example(value={"s": '"\\/\x00\x1f\x7f\u2028\U0001f600'}, serialiser="json-compact-ascii")
@example(value=[1, 2], serialiser="orjson")
@example(value="x", serialiser="orjson")
def test_serialised_values_agree(value: Any, serialiser: str) -> None:
    check(SERIALISERS[serialiser](value))


@SETTINGS
@given(value=st.one_of(surrogate_values, st.dictionaries(st.text(chars_with_surrogates, max_size=4), surrogate_values)))
@example(value={"a": "\ud800"})
@example(value={"\udc00": 1})
@example(value={"a": "\ud83d\ude00"})
def test_surrogate_values_agree(value: Any) -> None:
    for name in ("json-compact", "json-compact-ascii", "json-default-ascii"):
        check(SERIALISERS[name](value))


@SETTINGS
@given(data=crafted)
@example(data=b'{"a":1,"a":1}')
@example(data=b'{"a":1,"\\u0061":1}')
@example(data=b'{"n":{"a":1,"a":2}}')
@example(data=b'{"a":18446744073709551616}')
@example(data=b'{"a":-9223372036854775809}')
@example(data=b'{"a":123456789012345678901234567890}')
@example(data=b'{"a":1E2}')
@example(data=b'{"a":1.0e+2}')
@example(data=b'{"a":-0}')
@example(data=b' {"a":1}')
@example(data=b'{"a":1}\n')
@example(data=b'\xef\xbb\xbf{"a":1}')
@example(data=b'{"a":NaN}')
@example(data=b'{"a":-Infinity}')
@example(data=b'{"a":"\\ud800"}')
@example(data=b'{"a":"\\ud83d\\ude00"}')
@example(data=b'{"a":"\xff"}')
@example(data=b'{"a":"\xed\xa0\x80"}')
@example(data=b'{"a":1')
@example(data=b"[1]")
@example(data=b"1")
def test_crafted_texts_agree(data: bytes) -> None:
    check(data)


@SETTINGS
@given(data=mutated())
def test_byte_mutations_agree(data: bytes) -> None:
    check(data)


# No shrinking: the depths that matter are pinned in REGRESSIONS, and shrinking texts of a thousand
# brackets costs half a minute.
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    depth=st.one_of(
        st.sampled_from([253, 254, 255, 256, 300, 512, 1000, 1023, 1024, 1025, 1026]), st.integers(33, 1100)
    ),
    data=st.data(),
)
def test_deep_nesting_agrees(depth: int, data: st.DataObject) -> None:
    """Depths the MAX_DEPTH check does not stop when ``max_depth`` is ``None`` (issuer documents,
    introspection answers, request bodies): orjson's own reading and writing limits meet Python's."""
    check(_nested(data.draw, depth))


# --- explicit regressions -------------------------------------------------------------------------

REGRESSIONS = [
    pytest.param(b'{"a":1,"a":1}', id="duplicate-same-value"),
    pytest.param(b'{"a":1,"a":2}', id="duplicate-other-value"),
    pytest.param(b'{"a":1,"\\u0061":1}', id="duplicate-via-escape"),
    pytest.param(b'{"x":{"a":1,"a":1}}', id="duplicate-nested"),
    pytest.param(b'{"x":[{"a":1,"a":1}]}', id="duplicate-in-list"),
    pytest.param(b'{"a":18446744073709551615}', id="u64-max"),
    pytest.param(b'{"a":18446744073709551616}', id="u64-max-plus-one"),
    pytest.param(b'{"a":-9223372036854775808}', id="i64-min"),
    pytest.param(b'{"a":-9223372036854775809}', id="i64-min-minus-one"),
    pytest.param(b'{"a":123456789012345678901234567890}', id="30-digits"),
    pytest.param(b'{"a":1.8446744073709552e+19}', id="2-64-as-float"),
    pytest.param(b'{"a":1E2}', id="exponent-upper"),
    pytest.param(b'{"a":1.0e+2}', id="exponent-plus"),
    pytest.param(b'{"a":1e+16}', id="orjson-exponent-form"),
    pytest.param(b'{"a":1e-7}', id="orjson-small-exponent"),
    pytest.param(b'{"a":1e+308}', id="1e308"),
    pytest.param(b'{"a":1e400}', id="1e400"),
    pytest.param(b'{"a":5e-324}', id="denormal-min"),
    pytest.param(b'{"a":-0}', id="minus-zero-int"),
    pytest.param(b'{"a":-0.0}', id="minus-zero-float"),
    pytest.param(b'{"a":true,"b":false,"c":null,"d":1,"e":1.0}', id="bool-int-float"),
    pytest.param(b' {"a":1}', id="leading-space"),
    pytest.param(b'{"a":1} ', id="trailing-space"),
    pytest.param(b'{"a":1}\n', id="trailing-newline"),
    pytest.param(b'\xef\xbb\xbf{"a":1}', id="utf8-bom"),
    pytest.param('{"a":1}'.encode("utf-16"), id="utf16-bom"),
    pytest.param('{"a":1}'.encode("utf-32-le"), id="utf32-le"),
    pytest.param(b'{"a":NaN}', id="nan"),
    pytest.param(b'{"a":Infinity}', id="infinity"),
    pytest.param(b'{"a":-Infinity}', id="minus-infinity"),
    pytest.param(b'{"a":"\\ud800"}', id="lone-high-surrogate"),
    pytest.param(b'{"\\udc00":1}', id="lone-low-surrogate-name"),
    pytest.param(b'{"a":"\\ud83d\\ude00"}', id="surrogate-pair"),
    pytest.param(b'{"a":"\xf0\x9f\x98\x80"}', id="non-bmp-raw"),
    pytest.param(b'{"a":"\\u0000\\u001f\\"\\\\/"}', id="orjson-escapes"),
    pytest.param(b'{"a":"\\/"}', id="escaped-solidus"),
    pytest.param(b'{"a":"\x7f\xe2\x80\xa8"}', id="del-and-line-separator-raw"),
    pytest.param(b'{"a":"\xff"}', id="invalid-utf8"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', id="encoded-surrogate"),
    pytest.param(b'{"a":1', id="truncated"),
    pytest.param(b'{"a":"', id="truncated-in-string"),
    pytest.param(b"{", id="open-brace"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"[]", id="top-level-array"),
    pytest.param(b"1", id="top-level-number"),
    pytest.param(b'"{}"', id="top-level-string"),
    pytest.param(b"null", id="top-level-null"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1), id="depth-31"),
    pytest.param(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, id="depth-32"),
    pytest.param(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), id="depth-33"),
    pytest.param(b'{"a":' * 254 + b"1" + b"}" * 254, id="depth-254"),
    pytest.param(b'{"a":' * 255 + b"1" + b"}" * 255, id="depth-255"),
    pytest.param(b'{"a":' + b"[" * 299 + b"]" * 299 + b"}", id="depth-300-arrays"),
    pytest.param(b'{"a":' * 1024 + b"1" + b"}" * 1024, id="depth-1024"),
    pytest.param(b'{"a":' * 1025 + b"1" + b"}" * 1025, id="depth-1025"),
]


@pytest.mark.parametrize("data", REGRESSIONS)
def test_regressions_agree(data: bytes) -> None:
    check(data)


# --- the differential is not vacuous ----------------------------------------------------------------

JWT_PAYLOAD = orjson.dumps(
    {
        "iss": "https://idp.example.com",
        "sub": "user-42",
        "aud": ["https://api.example.com", "https://other.example.com"],
        "exp": 1_800_000_300,
        "iat": 1_800_000_000,
        "nbf": 1_800_000_000,
        "jti": "4f1c2a9e-7b7d-4c55-9a0e-2b0d1a3c5e7f",
        "scope": "read:items write:items",
        "client_id": "spa-client",
        "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        "authorization_details": [{"type": "payment", "amount": 12.5, "currency": "EUR"}],
        "name": "Zoë ✓ 😀",
    }
)


def test_fast_path_is_taken_for_a_jwt_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _strictjson._canonical_object(JWT_PAYLOAD) is not None
    calls: list[int] = []
    scanner = _strictjson._SCAN_FINITE

    def counting(text: str, index: int) -> Any:
        calls.append(index)
        return scanner(text, index)

    monkeypatch.setattr(_strictjson, "_SCAN_FINITE", counting)
    fast = strict_loads(JWT_PAYLOAD)
    assert calls == []  # answered by orjson alone
    with fast_path_off():
        reference = strict_loads(JWT_PAYLOAD)
    assert calls == [0]  # the counter does see the standard decoder
    assert same(fast, reference)
    assert fast == orjson.loads(JWT_PAYLOAD)


def test_fast_path_is_taken_for_most_generated_objects() -> None:
    """Over a fixed sample, the orjson serialisations of generated objects mostly take the fast path."""
    taken = 0
    samples = [
        {"a": 1},
        {"a": [1, 2.5, None, True, False, "x"], "b": {"c": -0.0}},
        {"exp": 2**63 - 1, "n": -(2**63), "u": 2**64 - 1},
        {"f": 1e308, "g": 5e-324, "h": 1e16, "i": 1e-7},
        {"s": '"\\/\x00\x1f\u2028\U0001f600'},
        {"": {"": [[]]}},
    ]
    for sample in samples:
        data = orjson.dumps(sample)
        if _strictjson._canonical_object(data) is not None:
            taken += 1
        check(data)
    assert taken == len(samples)


@pytest.mark.parametrize(
    "data",
    [
        b'{"sub":"alice","sub":"bob"}',
        b'{"aud":"a","aud":"a"}',
        b'{"active":true,"\\u0061ctive":false}',
        b'{"cnf":{"jkt":"x","jkt":"y"}}',
    ],
)
def test_duplicate_member_name_refused_with_fast_path_on(data: bytes) -> None:
    assert _strictjson._orjson_loads is not None
    assert _strictjson._canonical_object(data) is None
    with pytest.raises(ValueError, match="duplicate member name"):
        strict_loads(data)
    with pytest.raises(ValueError, match="duplicate member name"):
        strict_loads(data, max_depth=None, finite_floats=False, lone_surrogates=True)
