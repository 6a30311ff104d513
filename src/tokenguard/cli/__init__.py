"""The ``tokenguard`` command: ``demo``, ``dev-idp``, ``inspect``, ``check``.

Exit codes: 0 ok; 1 a check failed or the token is invalid; 2 a usage or input error, or an issuer
that cannot be reached. Errors are one line on stderr, never a traceback, and never hold a token.

``main(argv, *, http_client=..., clock=...)`` takes the same ``http_client`` option as
``TokenGuard`` (a client or a factory), so tests reach an in-process issuer without a network.

This module parses the arguments and dispatches; each command lives in its own private module,
imported only when that command runs:

    _demo     ``tokenguard demo``     the leaked-refresh-token story, in process
    _fleet_demo  ``tokenguard demo --fleet``  a revocation across worker processes (runs ``_fleet_app``)
    _devidp   ``tokenguard dev-idp``  the development IdP on a port (uvicorn)
    _inspect  ``tokenguard inspect``  decode a token, flag risky parts, verify it with the middleware's code
    _check    ``tokenguard check``    an issuer's metadata (through ``tokenguard._discovery``), keys and clock
    _output   what they share: the printer (colour, ASCII fallback), durations, dates, token
              abbreviations, the issuer-URL rule, why an issuer cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tokenguard import __version__
from tokenguard._http import HttpClientOption
from tokenguard.cli._output import CliError, Printer, abbreviate, checked_issuer, wants_color

_PROG = "tokenguard"
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_.~+/=-]{32,}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> _Parser:
    parser = _Parser(
        prog=_PROG,
        description="OAuth 2.0 bearer-token protection for Starlette and FastAPI: tools to see it work.",
        epilog="Exit codes: 0 ok, 1 check failed or token invalid, 2 usage/input error or issuer unreachable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(commands)
    _add_dev_idp(commands)
    _add_inspect(commands)
    _add_check(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="play the leaked-refresh-token story against an in-process IdP and API",
        description="Starts the development IdP and a protected example API in this process (no network, no "
        "configuration) and plays the leaked-refresh-token story step by step: leak, attacker refresh, "
        "legitimate replay, detection, chain revocation, both refused, re-authentication. For every request "
        "to the API it shows what the guard checked, what it asked the IdP, and why it answered as it did. "
        "Exits 1 if any step behaves unexpectedly.",
    )
    demo.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    demo.add_argument(
        "--fleet",
        action="store_true",
        help="instead, show a revocation reaching ordinary routes across several worker processes: starts "
        "redis-server (must be on PATH), the development IdP and 3 API workers on loopback ports; exits 1 "
        "unless every worker refuses the revoked token within 1 s, 2 without redis-server",
    )


def _add_dev_idp(commands: Any) -> None:
    dev = commands.add_parser(
        "dev-idp",
        help="serve the development identity provider on a port (development only)",
        description="Serves tokenguard's development identity provider with uvicorn and prints its issuer URL, "
        "endpoints and registered clients (with their secrets: development only). Needs uvicorn "
        "(pip install 'tokenguard-asgi[server]').",
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000; 0 picks a free one)")
    dev.add_argument(
        "--keys", metavar="FILE", help="signing keys: loaded from FILE, or generated and saved there (mode 0600)"
    )
    dev.add_argument(
        "--issuer", help="issuer URL to advertise (default http://HOST:PORT; https:// when a TLS proxy fronts it)"
    )
    dev.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help="a scope clients may ask for, in addition to read/write/admin and the examples' scopes (repeatable)",
    )
    dev.add_argument(
        "--audience",
        action="append",
        dest="audiences",
        metavar="AUD",
        help="an API (absolute URI) to issue tokens for, besides https://api.tokenguard.test; a client asks for "
        "it with resource=AUD, RFC 8707 (repeatable)",
    )
    dev.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="a browser origin (e.g. http://127.0.0.1:8000, or '*') allowed to call the token endpoint (repeatable)",
    )
    dev.add_argument(
        "--ssf-push",
        action="append",
        dest="ssf_push",
        metavar="URL",
        help="push every revocation and logout as a Shared Signals SET to URL (RFC 8935; repeatable)",
    )
    dev.add_argument("--ssf-push-authorization", metavar="VALUE", help="the Authorization header sent with each push")
    dev.add_argument(
        "--ssf-audience", metavar="AUD", help="the receiver (the SETs' aud) of --ssf-push; default dev-client"
    )
    dev.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (never do this on a shared network)"
    )
    dev.add_argument("--no-color", action="store_true", help="plain output even on a terminal")


#: The scopes the shipped examples declare, so ``tokenguard dev-idp`` can grant them out of the box.
EXAMPLE_SCOPES = ("read:photos", "write:photos", "write:transfers")


def _add_inspect(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="decode a token (without trusting it) and flag risky parts; verify it with --issuer",
        description="Decodes a token's header and claims WITHOUT verifying it, shows its times, and warns on "
        "risky headers (alg none, HS*, jku, x5u, x5c, jwk, crit, missing kid, typ other than at+jwt). With "
        "--issuer and --audience it is verified with the same code as the middleware. Exit 1 when the token is "
        "invalid (or, without --issuer, when tokenguard would refuse it whatever the configuration: expired, "
        "alg none, opaque...).",
    )
    inspect.add_argument(
        "token", metavar="TOKEN", help="the token, or '-' to read it from stdin (keeps it out of shell history)"
    )
    inspect.add_argument("--issuer", help="verify against this issuer (needs --audience)")
    inspect.add_argument("--audience", help="the audience this API expects (needs --issuer)")
    inspect.add_argument("--client-id", help="client id for RFC 7662 introspection (opaque tokens, --introspect)")
    inspect.add_argument(
        "--client-secret",
        help="client secret for introspection (default: $TOKENGUARD_CLIENT_SECRET; a flag shows in 'ps')",
    )
    inspect.add_argument("--introspect", action="store_true", help="also ask the issuer (as a @sensitive route does)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--no-color", action="store_true", help="plain output even on a terminal")


def _add_check(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="check an issuer's metadata, keys and clock before pointing TokenGuard at it",
        description="Fetches the issuer's metadata (RFC 8414, then OpenID discovery) and JWKS, lists the keys, "
        "flags problems (issuer mismatch, keys without kid, symmetric or short keys, missing jwks_uri or "
        "introspection endpoint) and reports the clock skew against the issuer's Date header. It recognises "
        "Amazon Cognito, Microsoft Entra multi-tenant metadata, signed introspection answers (RFC 9701) and token "
        "exchange (RFC 8693), and says which TokenGuard option each needs. An issuer URL or options TokenGuard "
        "refuses (http:// off loopback, a {tenantid} template without --tenant) are refused before any fetch. "
        "Exit 1 when there are errors, 2 when the issuer URL or options are refused or the issuer cannot be "
        "reached (and why: DNS, refused, TLS, timeout).",
    )
    check.add_argument(
        "--issuer",
        required=True,
        help="the issuer identifier (URL), or a tenant template such as "
        "'https://login.microsoftonline.com/{tenantid}/v2.0' (with --tenant)",
    )
    check.add_argument("--audience", help="the audience your API will expect")
    check.add_argument(
        "--allowed-client-id",
        action="append",
        dest="allowed_client_ids",
        metavar="ID",
        help="TokenGuard's allowed_client_ids: a token without aud passes by this client_id, as Amazon "
        "Cognito access tokens need (repeatable)",
    )
    check.add_argument(
        "--tenant",
        action="append",
        dest="tenants",
        metavar="TID",
        help="TokenGuard's tenants: an Entra tenant id a {tenantid} template issuer accepts (repeatable; "
        "required with a template)",
    )
    check.add_argument(
        "--introspection-response",
        choices=("json", "jwt"),
        default="json",
        help="TokenGuard's introspection_response: 'jwt' for RFC 9701 signed answers (default json)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--no-color", action="store_true", help="plain output even on a terminal")


# -- the commands -----------------------------------------------------------------------------


def _printer(args: argparse.Namespace) -> Printer:
    stream = sys.stdout
    return Printer(stream, color=wants_color(stream, args.no_color or getattr(args, "json", False)))


def _cmd_inspect(args: argparse.Namespace, http_client: HttpClientOption, clock: Callable[[], float]) -> int:
    from tokenguard.cli import _inspect as inspector

    if (args.issuer is None) != (args.audience is None):
        raise CliError("--issuer and --audience go together")
    if args.issuer is not None:
        checked_issuer(args.issuer)  # the library's rule, in the same words as `check`, before any work
    if args.introspect and (args.issuer is None or args.client_id is None):
        raise CliError("--introspect needs --issuer, --audience and --client-id (the API's introspection client)")
    secret = (args.client_secret or os.environ.get("TOKENGUARD_CLIENT_SECRET")) if args.client_id else None
    if args.client_id and not secret:
        raise CliError("--client-id needs --client-secret (or $TOKENGUARD_CLIENT_SECRET)")
    if args.client_secret and not args.client_id:
        raise CliError("--client-secret needs --client-id")
    token = inspector.read_token(args.token, sys.stdin.read)
    decoded = inspector.decode(token)
    now = clock()
    inspector.assess(decoded, now)
    verification = None
    if args.issuer is not None:
        verification = asyncio.run(
            inspector.verify(
                token,
                issuer=args.issuer,
                audience=args.audience,
                client_id=args.client_id,
                client_secret=secret,
                introspect=args.introspect,
                http_client=http_client,
                clock=clock,
            )
        )
    out = _printer(args)
    if args.json:
        out.json(inspector.as_json(decoded, verification, now))
    else:
        inspector.render_text(out, decoded, verification, now)
    return inspector.exit_code(decoded, verification)


def _cmd_check(args: argparse.Namespace, http_client: HttpClientOption, clock: Callable[[], float]) -> int:
    from tokenguard.cli import _check as check

    out = _printer(args)
    options = check.GuardOptions(
        allowed_client_ids=tuple(args.allowed_client_ids or ()),
        tenants=tuple(args.tenants or ()),
        introspection_response=args.introspection_response,
    )
    try:
        report = asyncio.run(
            check.run(args.issuer, args.audience, http_client=http_client, clock=clock, options=options)
        )
    except Exception as exc:
        if args.json:  # every outcome of --json is one JSON document on stdout (the one line still goes to stderr)
            code = exc.code if isinstance(exc, CliError) else 2
            out.json(check.error_json(args.issuer, args.audience, exc, code, options))
        raise
    if args.json:
        out.json(check.as_json(report))
    else:
        check.render_text(out, report)
    return check.exit_code(report)


def _cmd_demo(args: argparse.Namespace, http_client: HttpClientOption, clock: Callable[[], float]) -> int:
    if args.fleet:
        from tokenguard.cli import _fleet_demo as fleet_demo

        return fleet_demo.main(_printer(args))
    from tokenguard.cli import _demo as demo

    return demo.main(_printer(args))


def _cmd_dev_idp(args: argparse.Namespace, http_client: HttpClientOption, clock: Callable[[], float]) -> int:
    from tokenguard.cli import _devidp as dev_idp

    return dev_idp.main(
        _printer(args),
        scopes=(*EXAMPLE_SCOPES, *(args.scopes or ())),
        host=args.host,
        port=args.port,
        keys=args.keys,
        allow_remote=args.allow_remote,
        issuer=args.issuer,
        cors_origins=tuple(args.cors_origins or ()),
        audiences=tuple(args.audiences or ()),
        ssf_push=tuple(args.ssf_push or ()),
        ssf_push_authorization=args.ssf_push_authorization,
        ssf_audience=args.ssf_audience,
    )


_COMMANDS = {"inspect": _cmd_inspect, "check": _cmd_check, "demo": _cmd_demo, "dev-idp": _cmd_dev_idp}


def _tokens_as_operands(argv: list[str]) -> list[str]:
    """``inspect -abc…``: a token may start with '-' (base64url); keep argparse from reading it as options.

    Every argument of ``inspect`` that starts with a single '-' and is longer than a short option is
    moved after a ``--``, where argparse takes it as the TOKEN operand.
    """
    if not argv or argv[0] != "inspect" or "--" in argv:
        return argv
    tokens = [arg for arg in argv[1:] if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2]
    if not tokens:
        return argv
    rest = [arg for arg in argv[1:] if arg not in tokens]
    return [argv[0], *rest, "--", *tokens]


def main(
    argv: Sequence[str] | None = None,
    *,
    http_client: HttpClientOption = None,
    clock: Callable[[], float] | None = None,
) -> int:
    """Run the command; returns the exit code (``http_client``/``clock`` are injected by tests)."""
    parser = _parser()
    try:
        args = parser.parse_args(_tokens_as_operands(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    # The library logs for servers; here every failure is reported by the command itself, once.
    quiet = logging.NullHandler()
    logger = logging.getLogger("tokenguard")
    logger.addHandler(quiet)
    try:
        return _COMMANDS[args.command](args, http_client, clock or time.time)
    except CliError as exc:
        _fail(f"{_PROG} {args.command}: error: {exc.message}")
        return exc.code
    except KeyboardInterrupt:
        _fail(f"{_PROG} {args.command}: interrupted")
        return 130
    except Exception as exc:  # one line, never a traceback; the type name tells a bug report enough
        _fail(f"{_PROG} {args.command}: internal error: {type(exc).__name__}: {_one_line(str(exc))}")
        return 2
    finally:
        logger.removeHandler(quiet)


def _fail(message: str) -> None:
    sys.stdout.flush()
    Printer(sys.stderr).line(message)  # in ASCII when stderr cannot carry more


def _one_line(text: str, limit: int = 200) -> str:
    """One line, short, and with anything token-shaped abbreviated: a message may quote its input."""
    text = _TOKEN_SHAPED.sub(lambda match: abbreviate(match.group()), " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
