"""The two base64url decoders of ``_jose`` decide alike: pybase64 (SIMD) and the standard-library fallback.

``tokenguard._jose`` picks its decoder once, at import: pybase64 where it is installed, else ``binascii``
(translated to the standard alphabet, ``strict_mode`` on 3.11+). Here a second, independent copy of the
module is executed with pybase64 hidden, so both paths run in one process against the same inputs: they
accept the same segments, decode them to the same bytes, refuse the rest with ``malformed_token``, and an
accepted segment is always the canonical unpadded base64url encoding of what it decodes to (RFC 7515 §2,
RFC 4648 §3.5, §5). The real module is never reloaded nor replaced.
"""

from __future__ import annotations

import base64
import importlib.util
import string
import warnings
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import tokenguard._jose as jose
from conftest import T0, Issuer, b64url
from tokenguard.errors import InvalidToken
from tokenguard.testing import ManualClock

PYBASE64_INSTALLED = importlib.util.find_spec("pybase64") is not None


def _load_without_pybase64() -> ModuleType:
    """A fresh copy of ``tokenguard._jose`` executed while ``pybase64`` cannot be found; not in sys.modules."""
    spec = importlib.util.spec_from_file_location("tokenguard._jose_stdlib", jose.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        if name == "pybase64" or name.startswith("pybase64."):
            return None
        return real_find_spec(name, package)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", find_spec)
        spec.loader.exec_module(module)
    assert importlib.util.find_spec is real_find_spec
    return module


STDLIB = _load_without_pybase64()

ALPHABET = (string.ascii_letters + string.digits + "-_").encode()
#: What a segment must not contain: the other alphabet, padding, whitespace, NUL, a separator, high bytes.
FOREIGN = b"+/= \t\r\n\x0b\x0c\x00." + bytes([0x7F, 0x80, 0xC3, 0xA9, 0xFF])


def _mostly_alphabet() -> st.SearchStrategy[int]:
    """A byte, from the base64url alphabet about five times in six."""
    foreign = st.one_of(st.sampled_from(FOREIGN), st.integers(0, 255))
    return st.integers(0, 5).flatmap(lambda n: foreign if n == 5 else st.sampled_from(ALPHABET))


def canonical(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@st.composite
def segments(draw: st.DrawFn) -> bytes:
    """Segments of 0..40 bytes: drawn byte by byte, or a canonical encoding, or one with a small change."""
    kind = draw(st.sampled_from(["bytes", "canonical", "changed"]))
    if kind == "bytes":
        return bytes(draw(st.lists(_mostly_alphabet(), max_size=40)))
    encoded = canonical(draw(st.binary(max_size=30)))
    if kind == "canonical" or not encoded:
        return encoded
    position = draw(st.integers(0, len(encoded) - 1))
    change = draw(st.sampled_from(["replace", "drop", "insert", "pad"]))
    byte = bytes([draw(_mostly_alphabet())])
    if change == "replace":
        return encoded[:position] + byte + encoded[position + 1 :]
    if change == "drop":
        return encoded[:position] + encoded[position + 1 :]
    if change == "insert":
        return encoded[:position] + byte + encoded[position:]
    return encoded + b"=" * draw(st.integers(1, 3))


def decoded(module: ModuleType, segment: str | bytes) -> tuple[str, Any]:
    try:
        return ("ok", module._b64decode(segment))
    except InvalidToken as exc:
        return ("refused", exc.reason)


def test_the_copy_decodes_with_the_standard_library() -> None:
    """The copy chose the fallback; the real module pybase64 (where installed). The copy is its own module."""
    assert STDLIB is not jose
    assert STDLIB._PYBASE64 is False
    assert STDLIB._b64url is not jose._b64url
    assert "_a2b" in STDLIB._b64url.__code__.co_names
    assert "_decode" not in vars(STDLIB)
    assert STDLIB.InvalidToken is InvalidToken  # refusals are the same class in both
    if not PYBASE64_INSTALLED:
        pytest.skip("pybase64 is not installed: both modules decode with the standard library")
    assert jose._PYBASE64 is True
    assert "_decode" in jose._b64url.__code__.co_names


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(segment=segments())
@example(segment=b"")
@example(segment=b"A")
@example(segment=b"AB")  # non-canonical: the unused low bits of B are not zero
@example(segment=b"AQ")
@example(segment=b"AA==")
@example(segment=b"AAA=")
@example(segment=b"ab+/")
@example(segment=b"ab-_")
@example(segment=b"AAAA\n")
@example(segment=b"AA AA")
@example(segment=b"QUJD\x00")
@example(segment=b"\xc3\xa9AAA")
def test_both_decoders_decide_alike(segment: bytes) -> None:
    """``_b64decode`` of the real module and of the copy: both refuse (malformed_token) or both return the
    same bytes, whose canonical unpadded encoding is the segment itself. As bytes and as str."""
    for value in (segment, segment.decode("latin-1")):
        real, fallback = decoded(jose, value), decoded(STDLIB, value)
        assert real == fallback, value
        verdict, result = real
        event(f"{type(value).__name__}: {verdict}")
        if verdict == "refused":
            assert result == "malformed_token"
        else:
            assert canonical(result) == segment


@pytest.mark.skipif(
    not STDLIB._DECODER_CHECKS_ALPHABET,
    reason="Python 3.10's binascii has no strict mode: without pybase64 the compact-JWS regex checks the "
    "alphabet before _b64url (split_compact, _b64decode), so _b64url alone is not held to it there",
)
@FUZZ
@given(segment=segments().map(lambda segment: segment.translate(None, b"+/=")))
def test_both_b64url_agree_where_parse_jws_leaves_it_to_them(segment: bytes) -> None:
    """``parse_jws`` refuses ``+``, ``/`` and ``=`` itself and leaves every other byte to ``_b64url``: on such
    segments (whitespace, NUL, high bytes, separators included) both decoders give the same answer."""
    results = []
    for module in (jose, STDLIB):
        try:
            results.append(("ok", module._b64url(segment)))
        except InvalidToken as exc:
            results.append(("refused", exc.reason))
    assert results[0] == results[1]
    event(results[0][0])
    if results[0][0] == "ok":
        assert canonical(results[0][1]) == segment
    else:
        assert results[0][1] == "malformed_token"


@FUZZ
@given(data=st.binary(max_size=40))
def test_every_canonical_encoding_round_trips(data: bytes) -> None:
    """Every canonical unpadded base64url encoding is accepted by both and decodes to what was encoded."""
    encoded = canonical(data)
    for module in (jose, STDLIB):
        assert module._b64decode(encoded) == data
        assert module._b64decode(encoded.decode("ascii")) == data
        assert module._b64url(encoded) == data


# -- whole tokens ------------------------------------------------------------------------------------------


def _tokens() -> list[str]:
    idp = Issuer(ManualClock(T0))
    return [
        idp.token("rsa-1"),
        idp.token("ec-1", scope="a b c", name="Zoë ✓"),
        idp.token("ed-1", headers={"typ": "JWT"}),
        idp.token(None, alg="RS256"),
        idp.raw_token({"alg": "RS256"}, {"sub": "x", "n": [1, 2.5, None, True]}),
    ]


TOKENS = _tokens()
#: What a mutation puts in place of one character.
REPLACEMENTS = ["+", "/", "=", ".", "é", "\x00", " ", "\n", "€", "\udcff", "A", "_", "-", "Q", "w"]


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    token = draw(st.sampled_from(TOKENS))
    kind = draw(st.sampled_from(["none", "replace", "replace", "truncate", "pad", "random"]))
    if kind == "none":
        return token
    if kind == "replace":
        position = draw(st.integers(0, len(token) - 1))
        replacement = draw(st.one_of(st.sampled_from(REPLACEMENTS), st.characters(max_codepoint=0x2FF)))
        return token[:position] + replacement + token[position + 1 :]
    parts = token.split(".")
    index = draw(st.integers(0, 2))
    if kind == "truncate":
        parts[index] = parts[index][: -draw(st.integers(1, 3))]
    elif kind == "pad":
        parts[index] += "=" * draw(st.integers(1, 2))
    else:
        parts[index] = bytes(draw(st.lists(_mostly_alphabet(), max_size=12))).decode("latin-1")
    return ".".join(parts)


def parsed(module: ModuleType, token: str, known: dict[bytes, dict[str, Any]] | None = None) -> tuple[Any, ...]:
    try:
        if known is None:
            result = module.parse_jws(token)
        else:  # as the validator parses: the remembered header object for a segment it knows
            raw, first, second = module.split_compact(token)
            result = module.decode_compact(raw, first, second, known.get(raw[:first]))
    except InvalidToken as exc:
        return ("refused", exc.reason)
    return ("ok", result.header, result.claims, result.signing_input, result.signature, result.header_segment)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=mutated_tokens())
def test_parse_jws_decides_alike(token: str) -> None:
    """Real tokens and mutations of them (a character replaced, a segment truncated or padded or redrawn):
    both modules give the same header, claims, signing input and signature, or both refuse them; a memo of
    the genuine tokens' headers changes nothing."""
    real, fallback = parsed(jose, token), parsed(STDLIB, token)
    assert real == fallback, token
    event(real[0])
    known = {genuine.split(".")[0].encode(): jose.parse_jws(genuine).header for genuine in TOKENS}
    assert parsed(jose, token, known) == real, token
    assert parsed(STDLIB, token, known) == real, token
    if real[0] == "refused":
        assert real[1] == "malformed_token"
        return
    _, header, claims, signing_input, signature, header_segment = real
    head, body, tail = token.split(".")
    assert signing_input == f"{head}.{body}".encode()
    assert header_segment == head.encode()
    assert b64url(signature) == tail
    assert jose.json_segment(jose._b64decode(head)) == header
    assert jose.json_segment(jose._b64decode(body)) == claims


def test_the_genuine_tokens_parse() -> None:
    """The differential above starts from tokens both modules accept."""
    for token in TOKENS:
        real = parsed(jose, token)
        assert real[0] == "ok"
        assert real == parsed(STDLIB, token)


# -- no DeprecationWarning --------------------------------------------------------------------------------


@st.composite
def with_other_alphabet(draw: st.DrawFn) -> str:
    """A real token, or a bare segment, with ``+`` or ``/`` put in (and some ``=``)."""
    value = draw(st.one_of(st.sampled_from(TOKENS), st.sampled_from(TOKENS).map(lambda t: t.split(".")[1])))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(value)))
        value = value[:position] + draw(st.sampled_from(["+", "/", "+/", "/=", "+=="])) + value[position:]
    return value


@settings(max_examples=200, deadline=None)
@given(value=with_other_alphabet())
def test_the_other_alphabet_is_refused_without_a_deprecation_warning(value: str) -> None:
    """``+`` and ``/`` never reach pybase64 (which reads them beside ``altchars`` with a DeprecationWarning):
    the entry points refuse them first, silently."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidToken) as refused:
            jose._b64decode(value)
        assert refused.value.reason == "malformed_token"
        with pytest.raises(InvalidToken):
            jose._b64decode(value.encode("ascii"))
        with pytest.raises(InvalidToken):
            jose.parse_jws(value)
        with pytest.raises(InvalidToken):
            jose.split_compact(value)
        if value.count(".") == 2:
            with pytest.raises(InvalidToken):
                jose.split_jws(value)
        else:
            assert jose.classify(value) == "opaque"
    assert [str(warning.message) for warning in caught] == []


@pytest.mark.skipif(not PYBASE64_INSTALLED, reason="pybase64 is not installed")
def test_pybase64_itself_would_read_the_other_alphabet() -> None:
    """Why the entry points check first: pybase64, given ``+`` or ``/`` beside ``altchars=b"-_"``, decodes
    them (with a DeprecationWarning) or, in a later version, refuses them; it never refuses silently."""
    import pybase64

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = pybase64.b64decode(b"ab+/", altchars=b"-_", validate=True)
        except ValueError:
            return  # a pybase64 that refuses the other alphabet outright
    assert result == b"i\xbf\xbf"
    assert any(issubclass(warning.category, DeprecationWarning) for warning in caught)
