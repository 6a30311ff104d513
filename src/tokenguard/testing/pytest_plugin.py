"""pytest plugin: a development identity provider and one-call tokens for your own tests.

Installing tokenguard registers this plugin (entry point ``pytest11: tokenguard``); its fixtures
are then available in every test, with nothing to import:

``dev_idp``
    A fresh ``tokenguard.testing.DevIdP`` per test, at ``https://idp.tokenguard.test``, whose
    clock is a ``ManualClock`` (``dev_idp.clock.advance(301)`` expires a 5-minute token, no sleep).
    Clients ``dev-client``/``dev-client-secret`` and ``dev-api``/``dev-api-secret`` (a resource
    server allowed to introspect) are registered; tokens go to ``https://api.tokenguard.test``.
``issue_token``
    ``issue_token(scopes=["read:photos"], **claims) -> str``: a signed RFC 9068 access token from
    ``dev_idp`` (``subject="alice"`` by default; ``subject=None`` for a client token; also
    ``audience=``, ``client_id=``, ``expires_in=``, ``token_format="opaque"``, ``alg="ES256"``).
``guarded_app``
    ``guarded_app(app, audience=None, **options) -> app``: installs ``TokenGuard`` on a Starlette
    or FastAPI app, pointed at ``dev_idp`` in-process (``http_client=dev_idp.http_client``), with
    the introspection credentials of ``dev-api`` and ``dev_idp``'s clock; ``options`` go to
    ``TokenGuard`` and override these. Any other ASGI app comes back wrapped in a ``TokenGuard``.
``guard_options``
    ``guard_options(audience=None, **options) -> dict``: the same settings, for an app factory that
    adds its own guard (``create_app(**guard_options())``). ``guarded_app`` refuses an app that
    already has a ``TokenGuard``: a second guard would refuse every ``dev_idp`` token.
``dev_idp_keys``
    Session-scoped signing keys shared by every ``dev_idp`` (RSA keys are slow to generate).
``dpop_client``
    A DPoP client (RFC 9449) for ``dev_idp``'s tokens: ``.key``, a fresh ``tokenguard.dpop.DPoPKey``
    (ES256); ``.token(scopes=[...], **claims) -> str``, an access token from ``dev_idp`` bound to
    that key (``cnf.jkt``); ``.headers(method, url, token, nonce=None) -> dict``, the
    ``Authorization: DPoP <token>`` and ``DPoP`` proof headers for one request, for Starlette's
    ``TestClient`` (a path such as ``"/photos"`` is taken as ``http://testserver/photos``, the
    ``TestClient``'s own base URL); ``.auth(token=None)``, a ``DPoPAuth`` for ``httpx`` clients.
    Proofs are dated by ``dev_idp.clock``, as the guard reads it. A proof is good for one request:
    call ``.headers`` again for the next one.

Example::

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    from tokenguard import require_scopes

    @require_scopes("read:photos")
    async def photos(request):
        return JSONResponse({"owner": request.user.identity})

    def test_photos_need_a_scope(guarded_app, issue_token):
        app = guarded_app(Starlette(routes=[Route("/photos", photos)]))
        with TestClient(app) as client:
            ok = client.get("/photos", headers={"Authorization": f"Bearer {issue_token(scopes=['read:photos'])}"})
            assert ok.json() == {"owner": "alice"}
            assert client.get("/photos", headers={"Authorization": f"Bearer {issue_token()}"}).status_code == 403

With DPoP::

    def test_photos_with_dpop(guarded_app, dpop_client):
        app = guarded_app(Starlette(routes=[Route("/photos", photos)]))
        token = dpop_client.token(scopes=["read:photos"])
        with TestClient(app) as client:
            ok = client.get("/photos", headers=dpop_client.headers("GET", "/photos", token))

Revocation on ``@sensitive`` routes: the guard caches introspection answers (30 s by default, as in
production); pass ``introspection_cache_ttl=0`` to ``guarded_app`` or advance ``dev_idp.clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

if TYPE_CHECKING:
    from tokenguard.dpop import DPoPAuth, DPoPKey
    from tokenguard.testing import DevIdP, KeyRing

A = TypeVar("A")


class GuardedAppFactory(Protocol):
    """The ``guarded_app`` fixture: install a guard pointed at ``dev_idp`` and return the app."""

    def __call__(self, app: A, *, audience: str | None = None, **options: Any) -> A: ...


@pytest.fixture(scope="session")
def dev_idp_keys() -> KeyRing:
    """Signing keys (RSA 2048 + EC P-256) made once per test session."""
    from tokenguard.testing import KeyRing

    return KeyRing.generate()


@pytest.fixture
def dev_idp(dev_idp_keys: KeyRing) -> DevIdP:
    """A fresh development identity provider with a controllable clock (``dev_idp.clock``)."""
    from tokenguard.testing import DevIdP, ManualClock

    return DevIdP(keys=dev_idp_keys, clock=ManualClock())


@pytest.fixture
def issue_token(dev_idp: DevIdP) -> Callable[..., str]:
    """``issue_token(scopes=[...], **claims) -> str``: an access token signed by ``dev_idp``."""
    return dev_idp.issue_token


class GuardOptions(Protocol):
    """The ``guard_options`` fixture: the ``TokenGuard`` options that point a guard at ``dev_idp``."""

    def __call__(self, *, audience: str | None = None, **options: Any) -> dict[str, Any]: ...


_FACTORY_PATTERN = """\
Build the app without a guard of its own in tests, or let its factory take the guard's options:

    def create_app(**guard_options):
        app = Starlette(routes=[...])
        app.add_middleware(TokenGuard, **guard_options)
        return app

    app = create_app(issuer="https://idp.example.com", audience="https://photos.example")  # production

    def test_photos(guard_options, issue_token):                                         # tests
        app = create_app(**guard_options())"""


def _existing_guard(app: Any) -> bool:
    """Whether ``app`` already has a ``TokenGuard``: added to it, or wrapping it."""
    from tokenguard import TokenGuard

    if isinstance(app, TokenGuard):
        return True
    for middleware in getattr(app, "user_middleware", None) or ():
        cls = getattr(middleware, "cls", None)
        if isinstance(cls, type) and issubclass(cls, TokenGuard):
            return True
    return False


@pytest.fixture
def guard_options(dev_idp: DevIdP) -> GuardOptions:
    """``guard_options(audience=None, **options) -> dict``: ``TokenGuard`` options trusting ``dev_idp``."""
    from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET

    def options_for(*, audience: str | None = None, **options: Any) -> dict[str, Any]:
        return {
            "issuer": dev_idp.issuer,
            "audience": audience or dev_idp.default_audience,
            "http_client": dev_idp.http_client,
            "client_id": RESOURCE_CLIENT_ID,
            "client_secret": RESOURCE_CLIENT_SECRET,
            "clock": dev_idp.clock,
            **options,
        }

    return options_for


@pytest.fixture
def guarded_app(guard_options: GuardOptions) -> GuardedAppFactory:
    """``guarded_app(app, audience=None, **options)``: the app, guarded by a TokenGuard trusting ``dev_idp``.

    An app that already has a guard is refused: a second guard in front of it would send every
    ``dev_idp`` token to the first one, which trusts another issuer (401 for every request).
    """
    from tokenguard import ConfigurationError, TokenGuard

    def install(app: Any, *, audience: str | None = None, **options: Any) -> Any:
        if _existing_guard(app):
            raise ConfigurationError(
                "guarded_app: this app already has a TokenGuard; a second one in front of it would refuse "
                "every dev_idp token as coming from another issuer.\n" + _FACTORY_PATTERN
            )
        settings = guard_options(audience=audience, **options)
        if hasattr(app, "add_middleware"):
            app.add_middleware(TokenGuard, **settings)
            return app
        return TokenGuard(app, **settings)

    return install


#: The base URL of Starlette's ``TestClient``: a path given to ``DPoPClient.headers`` is under it.
TESTCLIENT_BASE_URL = "http://testserver"


class DPoPClient:
    """The ``dpop_client`` fixture: a DPoP key, ``dev_idp`` tokens bound to it, and the proof headers."""

    def __init__(self, idp: DevIdP, key: DPoPKey) -> None:
        self.idp = idp
        self.key = key

    def token(self, scopes: str | Iterable[str] = (), **claims: Any) -> str:
        """An access token from ``dev_idp`` bound to ``key`` (``cnf.jkt``); ``claims`` as ``issue_token``'s."""
        return self.idp.issue_token(scopes, dpop_jkt=self.key.thumbprint, **claims)

    def headers(self, method: str, url: str, token: str, nonce: str | None = None) -> dict[str, str]:
        """``Authorization: DPoP <token>`` and a fresh ``DPoP`` proof for one ``method`` ``url`` request."""
        target = TESTCLIENT_BASE_URL + url if url.startswith("/") else url
        proof = self.key.proof(method, target, access_token=token, nonce=nonce, iat=int(self.idp.clock()))
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    def auth(self, token: str | None = None) -> DPoPAuth:
        """A ``DPoPAuth`` with ``key`` (and ``token``) for an ``httpx`` client, dated by ``dev_idp.clock``."""
        from tokenguard.dpop import DPoPAuth

        return DPoPAuth(self.key, token, clock=self.idp.clock)

    def __repr__(self) -> str:
        return f"DPoPClient(key={self.key!r})"


@pytest.fixture
def dpop_client(dev_idp: DevIdP) -> DPoPClient:
    """A fresh DPoP key (ES256), tokens from ``dev_idp`` bound to it, and the headers that prove it."""
    from tokenguard.dpop import DPoPKey

    return DPoPClient(dev_idp, DPoPKey.generate("ES256"))
