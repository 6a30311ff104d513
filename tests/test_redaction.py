"""``tokenguard.redaction``: ``redact()`` and ``TokenRedactingFilter`` on real log records and formatters.

Tokens are real: JWTs signed by conftest's ``Issuer`` with real keys, and random opaque strings. The
end-to-end proof (every failure path of a guarded app, through a handler with the filter and uvicorn's
access-log formatter) is in ``test_observability.py``.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import string
import sys
from collections import namedtuple
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter, DefaultFormatter

from conftest import T0, Issuer
from tokenguard.redaction import REDACTED, TokenRedactingFilter, redact
from tokenguard.testing import ManualClock

ISSUER = Issuer(ManualClock(T0))
JWT = ISSUER.token()
EC_JWT = ISSUER.token("ec-1")
ACCESS_FORMAT = LOGGING_CONFIG["formatters"]["access"]["fmt"]
DEFAULT_FORMAT = LOGGING_CONFIG["formatters"]["default"]["fmt"]


def opaque() -> str:
    return secrets.token_urlsafe(24)


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def make_record(
    msg: Any,
    *args: Any,
    exc_info: Any = None,
    sinfo: str | None = None,
    extra: dict[str, Any] | None = None,
) -> logging.LogRecord:
    """A record as ``Logger.makeRecord`` builds it (a lone mapping argument is unwrapped the same way)."""
    record = logging.getLogger("app").makeRecord(
        "app", logging.INFO, __file__, 1, msg, args, exc_info, sinfo=sinfo, extra=extra
    )
    return record


def filtered(record: logging.LogRecord) -> logging.LogRecord:
    assert TokenRedactingFilter().filter(record) is True  # never drops a record
    return record


def text_of(record: logging.LogRecord) -> str:
    """Everything a handler could print from the record: the formatted line and every attribute."""
    formatted = logging.Formatter("%(message)s").format(record)
    return formatted + "\n" + repr(vars(record))


@pytest.fixture
def app_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose only handler carries the filter, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TokenRedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_redaction.app")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


# -- redact(): what is found ------------------------------------------------------------------------------

SECRET = "s3cr3t-Opaque_value.123~"

FOUND = [
    (f"Authorization: Bearer {SECRET}", f"Authorization: Bearer {REDACTED}"),
    (f"authorization: bearer {SECRET}", f"authorization: bearer {REDACTED}"),
    (f"AUTHORIZATION: BEARER {SECRET}", f"AUTHORIZATION: BEARER {REDACTED}"),
    (f"sent Bearer {SECRET} upstream", f"sent Bearer {REDACTED} upstream"),
    (f"sent bearer {SECRET} upstream", f"sent bearer {REDACTED} upstream"),
    (f"Bearer\t{SECRET}", f"Bearer\t{REDACTED}"),
    (f"/x?h=Bearer%20{SECRET}", f"/x?h=Bearer%20{REDACTED}"),
    ("Bearer ünïcødé-tökén", f"Bearer {REDACTED}"),
    (f"Authorization: token {SECRET}", f"Authorization: token {REDACTED}"),
    (f"Authorization: {SECRET}", f"Authorization: {REDACTED}"),
    (f"Proxy-Authorization: Basic {basic('svc', 'pw')}", f"Proxy-Authorization: Basic {REDACTED}"),
    (f"sent Basic {basic('alice', 'hunter2')}", f"sent Basic {REDACTED}"),
    (f"DPoP {SECRET}", f"DPoP {REDACTED}"),
    (f"{{'authorization': '{SECRET}'}}", f"{{'authorization': '{REDACTED}'}}"),
    (f"[(b'authorization', b'Bearer {SECRET}')]", f"[(b'authorization', b'Bearer {REDACTED}')]"),
    (
        f'{{"access_token": "{SECRET}", "token_type": "Bearer"}}',
        f'{{"access_token": "{REDACTED}", "token_type": "Bearer"}}',
    ),
    (f'{{"access_token":"{SECRET}"}}', f'{{"access_token":"{REDACTED}"}}'),
    (f'{{"refresh_token": "{SECRET}", "expires_in": 3600}}', f'{{"refresh_token": "{REDACTED}", "expires_in": 3600}}'),
    (f'{{"id_token": "x{SECRET}"}}', f'{{"id_token": "{REDACTED}"}}'),
    (f"{{'client_secret': '{SECRET}'}}", f"{{'client_secret': '{REDACTED}'}}"),
    (f'{{"token": "{SECRET}"}}', f'{{"token": "{REDACTED}"}}'),
    (f"Grant(token='{SECRET}', scope='x')", f"Grant(token='{REDACTED}', scope='x')"),
    (f"password: {SECRET}", f"password: {REDACTED}"),
    (f"GET /cb?access_token={SECRET}&state=1", f"GET /cb?access_token={REDACTED}&state=1"),
    (f"GET /cb?refresh_token={SECRET}", f"GET /cb?refresh_token={REDACTED}"),
    (f"GET /cb?code={SECRET}&state=1", f"GET /cb?code={REDACTED}&state=1"),
    (f"grant_type=authorization_code&code={SECRET}", f"grant_type=authorization_code&code={REDACTED}"),
    (f"code={SECRET}&state=1", f"code={REDACTED}&state=1"),
    (f"client_id=app&client_secret={SECRET}", f"client_id=app&client_secret={REDACTED}"),
    (f"https://svc:{SECRET}@idp.example.com/token", f"https://svc:{REDACTED}@idp.example.com/token"),
    (JWT, REDACTED),
    (f"id={JWT}", f"id={REDACTED}"),
    # Non-canonical tokens may use base64's '/', so a JWT in a path takes the rest of the path with it.
    (f"/tokens/{JWT}/revoke?x=1", f"/tokens/{REDACTED}?x=1"),
    (f"t%3D{JWT}", f"t%3D{REDACTED}"),
    (f"review.{JWT}", f"review.{REDACTED}"),
    (f"ew{EC_JWT}", f"ew{REDACTED}"),
]


@pytest.mark.parametrize(("text", "expected"), FOUND)
def test_redact_finds_credentials(text: str, expected: str) -> None:
    """Bearer/Basic/DPoP credentials, Authorization fields, JSON and URL credentials and JWTs are replaced."""
    assert redact(text) == expected


def test_redact_finds_jwts_in_non_canonical_shapes() -> None:
    """Padded segments, '+'/'/' instead of '-'/'_', a header with whitespace, a JWE, two segments."""
    head, body, signature = JWT.split(".")
    spaced = base64.urlsafe_b64encode(b'{\n  "alg": "RS256"\n}').decode().rstrip("=")
    jwe_header = base64.urlsafe_b64encode(b'{"alg":"RSA-OAEP","enc":"A256GCM"}').decode().rstrip("=")
    shapes = [
        f"{head}==.{body}=.{signature}",
        f"{head}.{body}.{signature.replace('-', '+').replace('_', '/')}",
        f"{spaced}.{body}.{signature}",
        f"{jwe_header}.{secrets.token_urlsafe(40)}.{secrets.token_urlsafe(12)}.{body}.{secrets.token_urlsafe(16)}",
        f"{head}.{body}",
    ]
    for shape in shapes:
        assert redact(f"seen {shape} here") == f"seen {REDACTED} here", shape


NOT_SECRETS = [
    "the bearer of bad news",
    "a basic check of the scheme",
    "A bearer access token is required.",
    'WWW-Authenticate: Bearer realm="https://api.example.com", error="invalid_token"',
    "Bearer realm",
    "introspection_auth_method=client_secret_basic",
    "status code=401, error_code=invalid_token",
    "invalid token: expired; refresh token: rotated",
    "tokenguard.middleware.TokenGuard",
    "eyes.example.com and honeywell.example.org",
    "tokenguard: deny GET /photos: expired (401)",
    "tokenguard: JWKS refresh failed, keeping the last good keys: GET https://idp.example.com/jwks answered 500",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_redact_leaves_prose_and_tokenguards_own_messages_alone(text: str) -> None:
    """Words after 'bearer'/'basic', challenges, dotted names and tokenguard's messages are not secrets."""
    assert redact(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=64),
    st.sampled_from(["Bearer", "bearer", "BEARER", "DPoP"]),
)
def test_any_credential_in_an_authorization_header_is_redacted(credential: str, scheme: str) -> None:
    """Whatever the b64token (RFC 6750 §2.1) and the scheme's casing, the header keeps only its scheme."""
    assert redact(f"Authorization: {scheme} {credential}") == f"Authorization: {scheme} {REDACTED}"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.sampled_from(["rsa-1", "ec-1", "ed-1"]))
def test_a_jwt_anywhere_in_any_text_is_redacted(prefix: str, suffix: str, kid: str) -> None:
    """A real signed JWT glued to arbitrary text loses its payload and signature."""
    token = ISSUER.token(kid)
    _, body, signature = token.split(".")
    clean = redact(prefix + token + suffix)
    assert body not in clean
    assert signature not in clean


# -- the filter: messages and arguments --------------------------------------------------------------------


def test_message_text_is_redacted() -> None:
    """A token written into the message itself is removed."""
    record = filtered(make_record(f"calling upstream with Authorization: Bearer {JWT}"))
    assert record.getMessage() == f"calling upstream with Authorization: Bearer {REDACTED}"


def test_arguments_keep_their_types_and_number() -> None:
    """Ints, floats, None and clean strings pass untouched; a leaking str stays a str, bytes stay bytes."""
    record = filtered(
        make_record("%s %d %.1f %s %s %r", f"Bearer {JWT}", 401, 0.5, None, "plain", f"Bearer {SECRET}".encode())
    )
    assert record.args == (f"Bearer {REDACTED}", 401, 0.5, None, "plain", f"Bearer {REDACTED}".encode())
    assert record.getMessage() == f"Bearer {REDACTED} 401 0.5 None plain b'Bearer {REDACTED}'"


@pytest.mark.parametrize(
    ("msg", "args", "expected"),
    [
        ("token=%s", (SECRET,), f"token={REDACTED}"),
        ("Authorization: Bearer %s", (SECRET,), f"Authorization: Bearer {REDACTED}"),
        ("authorization: %s", (SECRET,), f"authorization: {REDACTED}"),
        ("%s=%s", ("access_token", SECRET), f"access_token={REDACTED}"),
        ('{"refresh_token": "%s"}', (SECRET,), f'{{"refresh_token": "{REDACTED}"}}'),
        ("rejected token %s", (SECRET.encode(),), f"rejected token b'{REDACTED}'"),
        ("/cb?state=%s&code=%s", ("xyz", SECRET), f"/cb?state=xyz&code={REDACTED}"),
    ],
)
def test_an_argument_in_a_credential_position_is_replaced_whole(msg: str, args: tuple[Any, ...], expected: str) -> None:
    """An opaque token has no shape; after a scheme or a credential key in the message it goes all the same."""
    record = filtered(make_record(msg, *args))
    assert record.getMessage() == expected
    assert SECRET not in text_of(record)


def test_mapping_arguments_are_redacted_by_key_and_context() -> None:
    """``%(name)s`` arguments: a credential key, a credential context, and the other values kept as they are."""
    record = filtered(
        make_record("user=%(user)s access_token=%(opaque)s n=%(n)d", {"user": "alice", "opaque": SECRET, "n": 3})
    )
    assert record.getMessage() == f"user=alice access_token={REDACTED} n=3"
    assert record.args == {"user": "alice", "opaque": REDACTED, "n": 3}


def test_a_lone_dict_argument_is_redacted_by_key() -> None:
    """``log("headers %s", {...})``: logging unwraps the dict; credential keys lose their values."""
    headers = {"authorization": SECRET, "Cookie": "session=abc", "accept": "application/json"}
    record = filtered(make_record("headers %s", headers))
    assert record.args == {"authorization": REDACTED, "Cookie": REDACTED, "accept": "application/json"}
    assert SECRET not in record.getMessage()
    assert "application/json" in record.getMessage()


def test_header_pairs_and_named_tuples_keep_their_shape() -> None:
    """ASGI header lists lose the credential, named tuples stay named tuples."""
    Pair = namedtuple("Pair", "name value")
    headers = [(b"authorization", SECRET.encode()), (b"host", b"api.example.com")]
    record = filtered(make_record("%r %r", headers, Pair("x", f"Bearer {JWT}")))
    assert record.args is not None
    pairs, pair = record.args  # type: ignore[misc]
    assert pairs == [(b"authorization", REDACTED.encode()), (b"host", b"api.example.com")]
    assert isinstance(pair, Pair)
    assert pair.value == f"Bearer {REDACTED}"


def test_objects_whose_text_shows_a_token_are_replaced_others_kept() -> None:
    """An argument object is kept as is unless its str or repr shows a token; then both are redacted."""

    class Leaky:
        def __str__(self) -> str:
            return f"Bearer {SECRET}"

        def __repr__(self) -> str:
            return f"Leaky(token={SECRET!r})"

    clean = object()
    record = filtered(make_record("%s %r %s", Leaky(), Leaky(), clean))
    assert record.args is not None
    assert record.args[2] is clean  # type: ignore[index]
    assert record.getMessage() == f"Bearer {REDACTED} Leaky(token='{REDACTED}') {clean}"


def test_a_replaced_object_still_answers_attribute_reads() -> None:
    """An extra object whose repr leaks (a request, say) is redacted as text, but handlers that read its
    attributes (error reporters) still get them."""

    class CapturedRequest:
        method = "GET"

        def __repr__(self) -> str:
            return f"<Request GET /cb?code={SECRET}>"

    record = filtered(make_record("failed", extra={"request": CapturedRequest()}))
    assert repr(record.request) == f"<Request GET /cb?code={REDACTED}>"
    assert record.request.method == "GET"


@pytest.mark.parametrize(
    "msg",
    [
        ValueError(f"upstream said Bearer {SECRET}"),
        f"Bearer {SECRET}".encode(),
        {"access_token": JWT},
    ],
)
def test_a_message_that_is_not_a_string_is_redacted(msg: Any) -> None:
    """``logger.error(exc)``, bytes and dicts as the message: what ``getMessage`` would print, redacted."""
    record = filtered(make_record(msg))
    assert SECRET not in record.getMessage()
    assert JWT not in record.getMessage()
    assert REDACTED in record.getMessage()


def test_a_numeric_message_is_left_alone() -> None:
    """``logger.info(42)`` keeps its message object."""
    assert filtered(make_record(42)).msg == 42


def test_arguments_that_do_not_fit_the_message_never_reach_the_output() -> None:
    """Too many arguments (logging would print them raw to stderr): a placeholder, no token, no error."""
    record = filtered(make_record("only %s", "one", f"Bearer {SECRET}"))
    assert record.args == ()
    assert SECRET not in record.getMessage()
    assert record.getMessage() == "<unformattable log message: TypeError>"


def test_cyclic_and_deeply_nested_values_are_redacted_by_their_text() -> None:
    """A list that contains itself, or nesting past the depth bound, is judged by its repr (no recursion error)."""
    cyclic: list[Any] = [f"Bearer {SECRET}"]
    cyclic.append(cyclic)
    deep: Any = {"access_token": SECRET}
    for _ in range(40):
        deep = [deep]
    record = filtered(make_record("%r %r", cyclic, deep))
    assert SECRET not in record.getMessage()
    assert "[...]" in record.getMessage()


def test_a_value_that_cannot_be_rebuilt_withholds_the_record_instead_of_raising(
    app_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """A filter exception would break the caller's log call: the record is blanked, the caller goes on."""

    class Stubborn(tuple):  # type: ignore[type-arg]
        _fields = ("a",)

        def __new__(cls, *items: Any) -> Stubborn:
            if len(items) != 1 or not isinstance(items[0], tuple):
                raise TypeError("built only from one tuple")
            return super().__new__(cls, items[0])

    logger, stream = app_log
    logger.info("value %s", Stubborn((f"Bearer {SECRET}",)))  # an argument: the message is redacted whole
    logger.info("detail", extra={"detail": Stubborn((f"Bearer {SECRET}",)), "url": f"/cb?code={SECRET}"})
    lines = stream.getvalue().splitlines()
    assert lines == [
        f"INFO value ('Bearer {REDACTED}',)",
        "INFO <log record withheld: it could not be redacted (TypeError)>",
    ]
    record = filtered(make_record("detail", extra={"detail": Stubborn(("x",)), "url": f"/cb?code={SECRET}"}))
    assert (record.detail, record.url, record.args) == (REDACTED, REDACTED, ())


def test_a_literal_percent_survives() -> None:
    """``%%`` and conversions are kept: the message still formats."""
    record = filtered(make_record("%d%% of token=%s", 50, SECRET))
    assert record.getMessage() == f"50% of token={REDACTED}"


# -- the filter: extra fields, exceptions, stack ----------------------------------------------------------


def test_extra_fields_are_redacted_at_any_depth() -> None:
    """Strings, bytes, nested dicts and lists in ``extra``; fields named like a credential lose their value."""
    record = filtered(
        make_record(
            "request",
            extra={
                "url": f"https://api.example.com/cb?access_token={SECRET}",
                "raw": f"Bearer {SECRET}".encode(),
                "nested": {"headers": [{"authorization": SECRET}], "body": {"refresh_token": JWT}},
                "access_token": SECRET,
                "tg_reason": "expired",
                "tg_status": 401,
            },
        )
    )
    assert record.url == f"https://api.example.com/cb?access_token={REDACTED}"
    assert record.raw == f"Bearer {REDACTED}".encode()
    assert record.nested == {"headers": [{"authorization": REDACTED}], "body": {"refresh_token": REDACTED}}
    assert record.access_token == REDACTED
    assert (record.tg_reason, record.tg_status) == ("expired", 401)  # structured fields untouched


def _raise_with(token: str) -> None:
    try:
        raise KeyError(token)
    except KeyError as exc:
        raise RuntimeError(f"upstream refused Bearer {token}") from exc


def test_exception_messages_and_chained_tracebacks_are_redacted() -> None:
    """The formatted traceback (cause included) replaces the live exception; the token is in neither."""
    try:
        _raise_with(JWT)
    except RuntimeError:
        record = filtered(make_record("failed", exc_info=sys.exc_info()))
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "Traceback (most recent call last)" in record.exc_text
    assert f"RuntimeError: upstream refused Bearer {REDACTED}" in record.exc_text
    assert f"KeyError: '{REDACTED}'" in record.exc_text
    output = logging.Formatter("%(message)s").format(record)
    assert JWT not in output
    assert "RuntimeError" in output


def test_exception_text_formatted_by_an_earlier_handler_is_redacted() -> None:
    """A record whose ``exc_text`` (and ``message``) were already filled in by another handler."""
    record = make_record("boom")
    record.exc_text = f"Traceback...\nValueError: {JWT}"
    record.message = f"boom Bearer {SECRET}"
    filtered(record)
    assert record.exc_text == f"Traceback...\nValueError: {REDACTED}"
    assert record.message == f"boom Bearer {REDACTED}"


def test_stack_info_is_redacted() -> None:
    """``stack_info=True`` output (source lines may hold a token) is redacted."""
    record = filtered(make_record("here", sinfo=f'Stack (most recent call last):\n  token = "{JWT}"'))
    assert record.stack_info == f'Stack (most recent call last):\n  token = "{REDACTED}"'


def test_a_handler_with_the_filter_writes_no_token(app_log: tuple[logging.Logger, io.StringIO]) -> None:
    """Through a real logger and handler: messages, args, exceptions and stack info all come out clean."""
    logger, stream = app_log
    token = opaque()
    logger.debug("Authorization: Bearer %s", token)
    logger.info("callback %s", f"/cb?code={token}&state=s")
    logger.warning("body %s", {"access_token": JWT, "token_type": "Bearer"})
    try:
        raise ValueError(f"refused {JWT}")
    except ValueError:
        logger.exception("failed for %s", f"Basic {basic('alice', token)}")
    logger.error("where", stack_info=True)
    output = stream.getvalue()
    assert token not in output
    assert JWT not in output
    assert basic("alice", token) not in output
    assert output.count(REDACTED) >= 5
    assert "ValueError: refused [REDACTED]" in output
    assert "Stack (most recent call last)" in output


# -- uvicorn's formatters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_colors", [False, True])
def test_uvicorns_access_formatter_still_works_and_leaks_nothing(use_colors: bool) -> None:
    """uvicorn's AccessFormatter (default format) unpacks the five args: it still can, with the token gone."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter(ACCESS_FORMAT, use_colors=use_colors))
    handler.addFilter(TokenRedactingFilter())
    logger = logging.getLogger("test_redaction.uvicorn.access")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = opaque()
    try:
        # The exact call uvicorn's HTTP protocols make for each response.
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", f"/cb?code={token}&state=s", "1.1", 200)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", f"/items?access_token={JWT}", "1.1", 401)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", f"/tokens/{JWT}", "1.1", 404)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert token not in output
    assert JWT not in output
    lines = output.splitlines()
    assert len(lines) == 3
    if not use_colors:
        assert lines == [
            f'INFO:     127.0.0.1:50000 - "GET /cb?code={REDACTED}&state=s HTTP/1.1" 200 OK',
            f'INFO:     127.0.0.1:50000 - "GET /items?access_token={REDACTED} HTTP/1.1" 401 Unauthorized',
            f'INFO:     127.0.0.1:50000 - "GET /tokens/{REDACTED} HTTP/1.1" 404 Not Found',
        ]
    else:
        assert "\x1b[" in output  # colours still applied
        assert "200 OK" in lines[0]


def test_uvicorns_color_message_keeps_its_conversions() -> None:
    """uvicorn formats ``extra={"color_message": ...}`` with the same args: its %s survive, args are redacted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(DefaultFormatter(DEFAULT_FORMAT, use_colors=True))
    handler.addFilter(TokenRedactingFilter())
    logger = logging.getLogger("test_redaction.uvicorn.error")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "Rejected Authorization: Bearer %s", SECRET, extra={"color_message": "Rejected \x1b[1mBearer %s\x1b[0m"}
        )
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert SECRET not in output
    assert f"Rejected \x1b[1mBearer {REDACTED}\x1b[0m" in output
