"""Development identity provider and pytest plugin: tokens to test with, without running Keycloak.

``DevIdP`` is a real OAuth 2.0 authorization server (RSA and EC keys, a JWKS, RFC 8414 metadata,
authorization code + PKCE, client credentials, refresh-token rotation with replay detection, RFC 7662
introspection, RFC 7009 revocation, RFC 8693 token exchange) that runs in-process as an ASGI app or on
a port::

    from tokenguard.testing import DevIdP, RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET

    idp = DevIdP()
    app.add_middleware(TokenGuard, issuer=idp.issuer, audience=idp.default_audience,
                       http_client=idp.http_client,     # a factory: one client per event loop
                       client_id=RESOURCE_CLIENT_ID, client_secret=RESOURCE_CLIENT_SECRET)
    token = idp.issue_token(scopes=["read"])

A browser or native app is a public client, registered without a secret, and a browser app on
another origin needs the DevIdP to answer CORS for it::

    idp = DevIdP(cors_origins=["http://127.0.0.1:5173"])
    idp.register_client("my-spa", redirect_uris=["http://127.0.0.1/callback"])   # any loopback port

Sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS) are minted bound to a key or a certificate,
and the token endpoint takes DPoP proofs (``tokenguard.dpop.DPoPAuth`` signs them)::

    key = DPoPKey.generate()                                     # from tokenguard.dpop
    token = idp.issue_token(scopes=["read"], dpop_jkt=key.thumbprint)      # cnf.jkt
    token = idp.issue_token(scopes=["read"], cert_thumbprint=x5t_s256)     # cnf["x5t#S256"]
    idp = DevIdP(dpop_nonce=True)          # the token endpoint demands its DPoP-Nonce (§8)

It is also an OpenID Shared Signals (SSF 1.0) transmitter: a receiver subscribes (over HTTP, or
``add_stream``) and gets signed Security Event Tokens, CAEP session-revoked when a token or grant is
revoked or a user logs out, and any CAEP/RISC event a test sends with ``signal``::

    idp = DevIdP(ssf_http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)))
    idp.add_stream(push_url="https://api.tokenguard.test/ssf/events", audience=DEFAULT_CLIENT_ID)
    idp.logout("alice")                      # one session-revoked SET about alice (iss_sub)
    idp.signal(CREDENTIAL_CHANGE, {"format": "iss_sub", "iss": idp.issuer, "sub": "alice"},
               credential_type="password", change_type="update")
    await idp.deliver()                      # pushed (RFC 8935); served, the DevIdP pushes at once

It is for development and tests only: it approves every authorization request it is sent.
The pytest fixtures (``dev_idp``, ``issue_token``, ``guarded_app``, ``dpop_client``) are in
``pytest_plugin``.

The pieces work on their own too. ``SigningKey`` signs with any algorithm a guard accepts by
default (RS*, PS*, ES256/384/512, EdDSA; ``SigningKey.generate("PS256")`` makes a key of the right
type) and publishes its JWK, shaped like a given issuer's with ``jwk_extra`` (``{"alg": None}``
leaves ``alg`` out); ``KeyRing`` holds one key per algorithm (``KeyRing.generate(["ES384", "EdDSA"])``);
``ManualClock`` is a clock that moves only when told to (``clock.advance(301)``).
"""

from tokenguard.testing._clock import ManualClock
from tokenguard.testing._idp import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ISSUER,
    DEFAULT_REDIRECT_URIS,
    DEFAULT_SCOPES,
    DEFAULT_USER,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
)
from tokenguard.testing._keys import KeyRing, SigningKey
from tokenguard.testing._model import (
    ACCESS_TOKEN_TYPE,
    DEV_USER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    AccessState,
    Audience,
    Client,
    Event,
    Grant,
    OAuthError,
    RefreshState,
    TokenSet,
)
from tokenguard.testing._ssf import (
    ACCOUNT_DISABLED,
    ACCOUNT_PURGED,
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    VERIFICATION,
    SSFSettings,
    Stream,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ACCOUNT_DISABLED",
    "ACCOUNT_PURGED",
    "CREDENTIAL_CHANGE",
    "DEFAULT_AUDIENCE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_ISSUER",
    "DEFAULT_REDIRECT_URIS",
    "DEFAULT_SCOPES",
    "DEFAULT_USER",
    "DEV_USER_GRANT",
    "RESOURCE_CLIENT_ID",
    "RESOURCE_CLIENT_SECRET",
    "SESSION_REVOKED",
    "TOKEN_CLAIMS_CHANGE",
    "TOKEN_EXCHANGE_GRANT",
    "VERIFICATION",
    "AccessState",
    "Audience",
    "Client",
    "DevIdP",
    "Event",
    "Grant",
    "KeyRing",
    "ManualClock",
    "OAuthError",
    "RefreshState",
    "SSFSettings",
    "SigningKey",
    "Stream",
    "TokenSet",
]
