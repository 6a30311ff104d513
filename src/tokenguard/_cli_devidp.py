"""``tokenguard dev-idp``: the development identity provider on a port, with uvicorn.

The socket is bound before anything is printed, so a port in use is a one-line error, ``--port 0``
picks a free port, and a client that reads the printed issuer URL can connect at once.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from tokenguard._cli_output import CliError, Printer
from tokenguard.config import check_url, is_loopback_host
from tokenguard.errors import ConfigurationError
from tokenguard.testing import DEV_USER_GRANT, RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP

_ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - refused unless --allow-remote


def main(
    out: Printer,
    *,
    host: str,
    port: int,
    keys: str | None,
    allow_remote: bool,
    issuer: str | None = None,
    scopes: tuple[str, ...] = (),
) -> int:
    """Serve until interrupted; refuse a non-loopback host unless ``allow_remote``."""
    _check_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise CliError(f"--port must be between 0 and 65535, got {port}")
    try:
        import uvicorn  # noqa: F401 - only to say early and clearly that it is missing
    except ImportError as exc:
        raise CliError("serving the DevIdP needs uvicorn: pip install 'tokenguard[server]'") from exc
    origin = _key_origin(keys)  # before the DevIdP writes a missing key file
    sock = _bind(host, port)
    try:
        idp = _build(host, sock.getsockname()[1], keys, issuer)
        if scopes:
            idp.add_scopes(*scopes)
        _describe(out, idp, origin, listen=_url(host, sock.getsockname()[1]))
        out.stream.flush()
        server = idp.server(log_level="info")
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _check_host(host: str, allow_remote: bool) -> None:
    if is_loopback_host(host) or allow_remote:
        return
    where = "every interface" if host in _ALL_INTERFACES else host
    raise CliError(
        f"refusing to serve the development IdP on {where}: it approves every login and hands tokens to "
        "anyone who can reach it; use a loopback --host, or --allow-remote on a network you trust"
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{netloc}:{port}"


def _build(host: str, port: int, keys: str | None, issuer: str | None) -> DevIdP:
    if issuer is None:
        # Listening everywhere: the issuer names loopback, reachable from this machine (http is only
        # allowed there, RFC 8414 §2); behind a TLS proxy, --issuer names the https URL instead.
        issuer = _url("127.0.0.1" if host in _ALL_INTERFACES else host, port)
    try:
        check_url("--issuer", issuer)
        return DevIdP(issuer, key_file=keys)
    except ConfigurationError as exc:
        raise CliError(f"{exc}; a non-loopback DevIdP needs --issuer https://... (a TLS proxy in front)") from exc
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot use the key file {keys!r}: {exc}") from exc


def _describe(out: Printer, idp: DevIdP, key_origin: str, *, listen: str) -> None:
    meta = idp.metadata()
    out.line(out.style("tokenguard dev-idp", "bold") + ": a development identity provider.")
    out.line(out.style("DEVELOPMENT ONLY: it approves every login it is asked for and prints its secrets.", "yellow"))
    out.line()
    rows = [
        ("issuer", idp.issuer),
        ("metadata", f"{idp.issuer.rstrip('/')}/.well-known/oauth-authorization-server"),
        ("jwks", meta["jwks_uri"]),
        ("authorize", meta["authorization_endpoint"]),
        ("token", meta["token_endpoint"]),
        ("introspect", meta["introspection_endpoint"]),
        ("revoke", meta["revocation_endpoint"]),
        ("keys", f"{', '.join(idp.keys.kids)} ({key_origin})"),
        ("scopes", " ".join(sorted(idp.scopes))),
        ("audience", f"{idp.default_audience} (JWT access tokens, {idp.access_token_ttl} s)"),
    ]
    for name, value in rows:
        out.line(f"  {name:<11}{value}")
    out.line()
    out.line(out.style("Clients (client_secret_basic or client_secret_post)", "bold"))
    out.table(["CLIENT_ID", "SECRET", "MAY"], [_client_row(client) for client in idp.clients.values()])
    _examples(out, idp)
    out.line()
    out.line(out.style(f"Listening on {listen}", "bold") + " (Ctrl+C to stop)")


def _key_origin(keys: str | None) -> str:
    if keys is None:
        return "generated now; --keys FILE keeps them across restarts"
    return f"loaded from {keys}" if os.path.exists(keys) else f"generated now and saved to {keys}"


def _client_row(client: Any) -> list[str]:
    if client.introspection and not client.grant_types:
        return [client.client_id, client.client_secret, "introspect any token (a resource server)"]
    grants = sorted("dev-user" if g == DEV_USER_GRANT else g for g in client.grant_types)
    scopes = " ".join(sorted(client.scopes)) if client.scopes is not None else "every scope"
    return [client.client_id, client.client_secret, f"{' '.join(grants)}; {scopes}"]


def _examples(out: Printer, idp: DevIdP) -> None:
    token = idp.endpoint("token")
    user = next((c for c in idp.clients.values() if c.grant_types), None)
    out.line()
    out.line(out.style("Try it", "bold"))
    if user is not None:
        credentials = f"{user.client_id}:{user.client_secret}"
        out.line(f"  curl -s -u {credentials} -d grant_type=client_credentials {token}")
        out.line(f"  curl -s -u {credentials} -d grant_type={DEV_USER_GRANT} -d username=alice {token}")
    out.line(f"  tokenguard check --issuer {idp.issuer} --audience {idp.default_audience}")
    out.line(out.style("Protect an app with it", "bold"))
    out.line(
        f'  app.add_middleware(TokenGuard, issuer="{idp.issuer}", audience="{idp.default_audience}",\n'
        f'                     client_id="{RESOURCE_CLIENT_ID}", client_secret="{RESOURCE_CLIENT_SECRET}")'
    )
