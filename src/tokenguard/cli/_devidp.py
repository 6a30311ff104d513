"""``tokenguard dev-idp``: the development identity provider on a port, with uvicorn.

The socket is bound before anything is printed, so a port in use is a one-line error, ``--port 0``
picks a free port, and a client that reads the printed issuer URL can connect at once.

Besides the DevIdP's own clients it registers ``dev-spa``, a public client (RFC 6749 §2.1) for a
browser or native app on loopback; ``--cors-origin`` lets a browser app on that origin call the
token endpoint (CORS), e.g. Swagger UI on ``http://127.0.0.1:8000``. ``--audience AUD`` adds an
API the DevIdP issues tokens for; a client asks for one with ``resource=AUD`` (RFC 8707).

The DevIdP is a Shared Signals (SSF 1.0) transmitter too, and the banner prints where its metadata is.
``--ssf-push URL`` (repeatable) creates a push stream to URL at startup (RFC 8935): every revocation,
logout and signal is POSTed there as a signed SET as soon as it happens, with
``--ssf-push-authorization VALUE`` as the ``Authorization`` header, for the receiver ``--ssf-audience AUD``
(the SETs' ``aud``; by default the ``dev-client`` client, which may manage the stream over HTTP).

Every error is one line with the hint that fits it, and only that one.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tokenguard.cli._output import CliError, Printer
from tokenguard.config import check_url, is_loopback_host
from tokenguard.errors import ConfigurationError
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEV_USER_GRANT,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    Client,
    DevIdP,
)
from tokenguard.testing._idp import cors_origin_list, is_resource_indicator
from tokenguard.testing._ssf import check_authorization, check_push_url

_ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - refused unless --allow-remote
#: The public client registered out of the box: a browser or native app, no secret, PKCE.
SPA_CLIENT_ID = "dev-spa"
#: Loopback, any port (RFC 8252 §7.3): an app's /callback, and Swagger UI's redirect page.
SPA_REDIRECT_URIS: tuple[str, ...] = tuple(
    f"http://{host}{path}" for path in ("/callback", "/docs/oauth2-redirect") for host in ("127.0.0.1", "localhost")
)


def main(
    out: Printer,
    *,
    host: str,
    port: int,
    keys: str | None,
    allow_remote: bool,
    issuer: str | None = None,
    scopes: tuple[str, ...] = (),
    cors_origins: tuple[str, ...] = (),
    audiences: tuple[str, ...] = (),
    ssf_push: tuple[str, ...] = (),
    ssf_push_authorization: str | None = None,
    ssf_audience: str | None = None,
) -> int:
    """Serve until interrupted; refuse a non-loopback host unless ``allow_remote``."""
    _check_host(host, allow_remote)
    if not 0 <= port <= 65535:
        raise CliError(f"--port must be between 0 and 65535, got {port}")
    origins = _cors_origins(cors_origins)
    _check_audiences(audiences)
    push = _ssf_push(ssf_push, ssf_push_authorization, ssf_audience)
    try:
        import uvicorn  # noqa: F401 - only to say early and clearly that it is missing
    except ImportError as exc:
        raise CliError("serving the DevIdP needs uvicorn: pip install 'tokenguard-asgi[server]'") from exc
    origin = _key_origin(keys)  # before the DevIdP writes a missing key file
    sock = _bind(host, port)
    try:
        idp = _build(host, sock.getsockname()[1], keys, issuer, origins, audiences, push)
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


_LISTEN_HINTS = {
    errno.EADDRINUSE: " (another server has it: pick another --port, or --port 0 for a free one)",
    errno.EACCES: " (ports below 1024 need privileges: pick a --port above 1023)",
    errno.EADDRNOTAVAIL: " (--host must be an address of this machine)",
}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio then sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = _LISTEN_HINTS.get(exc.errno or 0, "")
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{netloc}:{port}"


def _cors_origins(given: tuple[str, ...]) -> tuple[str, ...]:
    """The ``--cors-origin`` values, checked before the port is bound."""
    try:
        return cors_origin_list(given)
    except ConfigurationError as exc:
        raise CliError(f"--cors-origin: {exc}") from exc


def _check_audiences(given: tuple[str, ...]) -> None:
    """The ``--audience`` values, checked before the port is bound: what a client can name as a resource."""
    for audience in given:
        if not is_resource_indicator(audience):
            raise CliError(
                "--audience must be an absolute URI without a fragment, as a client names it in resource= "
                f"(RFC 8707 §2), e.g. https://payments.example; got {audience!r}"
            )


@dataclass(frozen=True)
class SsfPush:
    """The push streams ``--ssf-push`` asks for: where, with which Authorization header, for whom."""

    urls: tuple[str, ...] = ()
    authorization: str | None = field(default=None, repr=False)
    audience: str = DEFAULT_CLIENT_ID


def _ssf_push(urls: tuple[str, ...], authorization: str | None, audience: str | None) -> SsfPush:
    """The ``--ssf-*`` values, checked before the port is bound."""
    if not urls and (authorization is not None or audience is not None):
        given = "--ssf-push-authorization" if authorization is not None else "--ssf-audience"
        raise CliError(f"{given} is for the stream --ssf-push URL creates: give --ssf-push too")
    try:
        checked = tuple(check_push_url(url, "--ssf-push") for url in urls)
        if authorization is not None:
            check_authorization(authorization, "--ssf-push-authorization")
    except ConfigurationError as exc:
        raise CliError(str(exc)) from exc
    if audience is not None and (not audience or not audience.isprintable()):
        raise CliError(f"--ssf-audience must be a non-empty printable string, got {audience!r}")
    return SsfPush(checked, authorization, audience or DEFAULT_CLIENT_ID)


def _build(
    host: str,
    port: int,
    keys: str | None,
    issuer: str | None,
    cors_origins: tuple[str, ...] = (),
    audiences: tuple[str, ...] = (),
    push: SsfPush = SsfPush(),
) -> DevIdP:
    issuer = _issuer(host, port, issuer)
    try:
        idp = DevIdP(issuer, key_file=keys, cors_origins=cors_origins)
    except ConfigurationError as exc:
        if keys is None:  # the issuer and the origins are checked already: only the key file is left
            raise
        raise CliError(f"--keys: {exc}") from exc
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CliError(f"--keys: cannot use the key file {keys!r}: {reason}") from exc
    for audience in audiences:
        idp.add_audience(audience)
    idp.register_client(SPA_CLIENT_ID, redirect_uris=SPA_REDIRECT_URIS)
    for url in push.urls:
        idp.add_stream(push_url=url, authorization=push.authorization, audience=push.audience)
    return idp


def _issuer(host: str, port: int, given: str | None) -> str:
    """The issuer to advertise: ``--issuer``, or ``http://HOST:PORT``; http only on loopback (RFC 8414 §2)."""
    if given is None:
        # Listening everywhere: the issuer names loopback, reachable from this machine; listening on
        # one non-loopback address, plain http would name an issuer no client may trust.
        if host not in _ALL_INTERFACES and not is_loopback_host(host.strip("[]")):
            raise CliError(
                f"serving on {host} needs --issuer https://... (a TLS proxy in front): a plain http "
                "issuer is only allowed on loopback (RFC 8414 §2)"
            )
        return _url("127.0.0.1" if host in _ALL_INTERFACES else host, port)
    try:
        check_url("--issuer", given)
    except ConfigurationError as exc:
        hint = "; put a TLS proxy in front and give its https:// URL" if _plain_http(given) else ""
        raise CliError(f"{exc}{hint}") from exc
    if urlsplit(given).query:
        raise CliError(f"--issuer must not have a query (RFC 8414 §2), got {given!r}")
    return given


def _plain_http(url: str) -> bool:
    try:
        return urlsplit(url).scheme == "http" and bool(urlsplit(url).hostname)
    except ValueError:
        return False


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
        *_audience_rows(idp),
        ("cors", _cors_row(idp)),
        *_ssf_rows(idp),
    ]
    for name, value in rows:
        out.line(f"  {name:<11}{value}")
    out.line()
    out.line(out.style("Clients", "bold"))
    out.line("  confidential: client_secret_basic or client_secret_post; public: client_id alone, with PKCE S256")
    out.table(["CLIENT_ID", "SECRET", "MAY"], [_client_row(client) for client in idp.clients.values()])
    spa = idp.clients.get(SPA_CLIENT_ID)
    if spa is not None:
        paths = " or ".join(sorted({urlsplit(uri).path for uri in spa.redirect_uris}))
        out.line(f"  {SPA_CLIENT_ID} redirects to http://127.0.0.1 or http://localhost, any port, path {paths}")
    _examples(out, idp)
    out.line()
    out.line(out.style(f"Listening on {listen}", "bold") + " (Ctrl+C to stop)")


def _audience_rows(idp: DevIdP) -> list[tuple[str, str]]:
    """The audiences (APIs) it issues tokens for: the default first, then those of ``--audience``."""
    others = [audience for audience in idp.audiences if audience != idp.default_audience]
    kinds = {"jwt": "JWT", "opaque": "opaque"}
    formats = sorted({kinds[entry.format] for entry in idp.audiences.values()})
    rows = [("audiences", ", ".join([f"{idp.default_audience} (the default)", *others]))]
    how = f"{' and '.join(formats)} access tokens, {idp.access_token_ttl} s"
    if others:
        how += "; a client asks for another with resource=AUDIENCE, RFC 8707"
    else:
        how += "; --audience AUD adds another"
    return [*rows, ("", f"({how})")]


def _ssf_rows(idp: DevIdP) -> list[tuple[str, str]]:
    """Shared Signals: where the transmitter's metadata is, and each push stream made at startup."""
    rows = [("ssf", f"{idp.ssf_metadata_url} (Shared Signals transmitter, SSF 1.0)")]
    for stream in idp.streams.values():
        if stream.push_url is not None:
            authorization = ", with the --ssf-push-authorization header" if stream.authorization else ""
            rows.append(("", f"pushes SETs to {stream.push_url} for aud {stream.audience}{authorization}"))
    if len(rows) == 1:
        rows.append(("", "(--ssf-push URL pushes every revocation and logout there as a SET, RFC 8935)"))
    return rows


def _key_origin(keys: str | None) -> str:
    if keys is None:
        return "generated now; --keys FILE keeps them across restarts"
    return f"loaded from {keys}" if os.path.exists(keys) else f"generated now and saved to {keys}"


def _cors_row(idp: DevIdP) -> str:
    if not idp.cors_origins:
        return "off (--cors-origin ORIGIN lets a browser app there call the token endpoint)"
    return f"{' '.join(idp.cors_origins)} (token, revoke, metadata, jwks)"


def _client_row(client: Client) -> list[str]:
    secret = client.client_secret if client.client_secret is not None else "none (public)"
    if client.introspection and not client.grant_types:
        return [client.client_id, secret, "introspect any token (a resource server)"]
    grants = sorted("dev-user" if g == DEV_USER_GRANT else g for g in client.grant_types)
    scopes = " ".join(sorted(client.scopes)) if client.scopes is not None else "every scope"
    return [client.client_id, secret, f"{' '.join(grants)}; {scopes}"]


def _examples(out: Printer, idp: DevIdP) -> None:
    token = idp.endpoint("token")
    user = next((c for c in idp.clients.values() if "client_credentials" in c.grant_types and not c.public), None)
    out.line()
    out.line(out.style("Try it", "bold"))
    if user is not None:
        credentials = f"{user.client_id}:{user.client_secret}"
        out.line(f"  curl -s -u {credentials} -d grant_type=client_credentials {token}")
        out.line(f"  curl -s -u {credentials} -d grant_type={DEV_USER_GRANT} -d username=alice {token}")
        for audience in [audience for audience in idp.audiences if audience != idp.default_audience][:1]:
            out.line(f"  curl -s -u {credentials} -d grant_type=client_credentials -d resource={audience} {token}")
    out.line(f"  tokenguard check --issuer {idp.issuer} --audience {idp.default_audience}")
    out.line(out.style("Protect an app with it", "bold"))
    out.line(
        f'  app.add_middleware(TokenGuard, issuer="{idp.issuer}", audience="{idp.default_audience}",\n'
        f'                     client_id="{RESOURCE_CLIENT_ID}", client_secret="{RESOURCE_CLIENT_SECRET}")'
    )
    if SPA_CLIENT_ID in idp.clients:
        where = f"from {' '.join(idp.cors_origins)}" if idp.cors_origins else "with --cors-origin http://127.0.0.1:8000"
        out.line(f'  install_openapi(app, client_id="{SPA_CLIENT_ID}")   # FastAPI: Swagger UI signs in {where}')
