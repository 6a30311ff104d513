"""``tokenguard demo``: the leaked-refresh-token story, played against a real IdP and a real guarded API.

Both run in this process (httpx ``ASGITransport``), share one injected clock (expiry is shown by
moving it, never by sleeping), and every HTTP exchange is printed with its tokens abbreviated.

The story has two sides, told in equal measure. The identity provider's: rotation, replay detection,
chain revocation. The guard's: for every request to the API, what ``TokenGuard`` checked, what it
asked the IdP, and why it answered as it did. The guard's lines come from the guard itself: its own
HTTP calls to the IdP (recorded by the client it is given) and its decision events (``on_decision``);
nothing is made up. The demo checks its own story: any step that does not behave as told makes it
exit 1.

The story's client, photos-web, is a public client (a single-page app: no secret, RFC 6749 §2.1):
the case for which OAuth 2.1 §4.3.1 requires refresh-token rotation, since nothing but the refresh
token itself stands between whoever holds it and the token endpoint.

Every line fits in ``WIDTH`` (100) columns: exchanges wrap between fields, prose between words, and
tokens, codes and long values are abbreviated, never cut mid-URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import SharedSignals, TokenGuard, public, require_scopes, sensitive
from tokenguard.cli._inspect import decode
from tokenguard.cli._output import WIDTH, Printer, abbreviate, duration
from tokenguard.events import DecisionEvent
from tokenguard.policy import Requirement, requirement_of
from tokenguard.testing import DevIdP, ManualClock

API_URL = "https://photos.tokenguard.test"
CLIENT_ID = "photos-web"  # a public client: a single-page app has no secret to keep
API_CLIENT_ID = "photos-api"
API_CLIENT_SECRET = "photos-api-secret"
REDIRECT_URI = "http://127.0.0.1/callback"
SCOPES = "read:photos write:transfers"
USER = "alice"
LEEWAY = 30.0
#: Where the API receives the IdP's Shared Signals (RFC 8935 push), and the header the stream sends.
PUSH_PATH = "/ssf/events"
PUSH_AUTHORIZATION = "Bearer demo-push-" + secrets.token_urlsafe(24)

# Values never shown whole: tokens, codes, PKCE secrets, client secrets.
_SECRET_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "token", "code", "code_verifier", "code_challenge", "client_secret"}
)
_CHALLENGE_PARAM = re.compile(r'(error|error_description)="([^"]*)"')
#: Where every exchange's text starts: after "  photos-web → idp  " (the label column).
_TEXT = 20
_LONG_VALUE = 60
_METADATA_PATH = "/.well-known/oauth-authorization-server"


# -- the protected example API ----------------------------------------------------------------


@require_scopes("read:photos")
async def list_photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity, "photos": 2, "checked": request.auth.source})


@sensitive  # introspected on every call: a revoked token stops here at once
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"transferred": body.get("amount"), "to": body.get("to"), "checked": request.auth.source})


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


ROUTES = [
    Route("/photos", list_photos),
    Route("/transfers", transfer, methods=["POST"]),
    Route("/health", health),
]


def build_api(
    idp: DevIdP,
    clock: Callable[[], float],
    *,
    http_client: Callable[[], httpx.AsyncClient] | None = None,
    on_decision: Callable[[DecisionEvent], None] | None = None,
) -> TokenGuard:
    """The photos API behind its guard: GET /photos (local JWT validation), POST /transfers
    (@sensitive), GET /health (@public). ``http_client`` is how the guard reaches the IdP."""
    return TokenGuard(
        Starlette(routes=ROUTES),
        issuer=idp.issuer,
        audience=API_URL,
        client_id=API_CLIENT_ID,
        client_secret=API_CLIENT_SECRET,
        http_client=http_client or idp.http_client,
        leeway=LEEWAY,
        clock=clock,
        on_decision=on_decision,
        # The IdP's revocations, pushed as they happen (OpenID Shared Signals; step 8 opens the stream).
        shared_signals=SharedSignals(
            transmitter=idp.issuer, push_path=PUSH_PATH, push_authorization=PUSH_AUTHORIZATION, audience=API_CLIENT_ID
        ),
    )


def build_idp(clock: ManualClock, **options: Any) -> DevIdP:
    """The DevIdP with the demo's two clients: the web app (public), and the API (which may introspect)."""
    idp = DevIdP(clock=clock, default_clients=False, scopes=SCOPES, **options)
    idp.register_client(CLIENT_ID, scopes=SCOPES, redirect_uris=[REDIRECT_URI], audience=API_URL)
    idp.register_client(API_CLIENT_ID, API_CLIENT_SECRET, scopes=(), grant_types=(), introspection=True)
    return idp


def policy(requirement: Requirement | None) -> str:
    """A route's policy in plain words, read from its decorators (``requirement_of``)."""
    if requirement is None:
        return "any valid token (no decorator: the guard's default)"
    if requirement.public:
        return "@public: no token needed, the guard lets every request through"
    scopes = " ".join(sorted(requirement.all_scopes)) or "no particular scope"
    if requirement.sensitive:
        return f"a valid token with {scopes}; @sensitive: the guard also asks the IdP, every time"
    return f"a valid token with {scopes}; the guard checks it alone, without calling the IdP"


# -- the story's bookkeeping ------------------------------------------------------------------


class StepAborted(Exception):
    """A step cannot go on (a token it needs never came); the steps after it do not run."""


@dataclass
class Step:
    number: int
    name: str
    expected: str
    got: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ran: bool = False

    @property
    def ok(self) -> bool:
        return self.ran and not self.failures


@dataclass
class Tokens:
    access: str
    refresh: str
    expires_in: int


@dataclass(frozen=True)
class GuardCall:
    """One HTTP call the guard made to the IdP, as its client saw it."""

    method: str
    path: str
    status: int
    sent: dict[str, Any]
    answer: dict[str, Any]


class Story:
    """Plays the eight steps; each HTTP exchange is printed, each expectation checked."""

    def __init__(self, out: Printer, idp: DevIdP, clock: ManualClock) -> None:
        self.out = out
        self.idp = idp
        self.clock = clock
        self.decisions: list[DecisionEvent] = []
        self.guard_calls: list[GuardCall] = []
        self.guard = build_api(idp, clock, http_client=self._guard_client, on_decision=self.decisions.append)
        self.steps = [
            Step(1, "leak", "alice logs in; /photos and /transfers answer 200; the refresh token lands in a log"),
            Step(2, "attacker refresh", "the attacker refreshes first: 200 and fresh tokens; /photos 200"),
            Step(3, "legitimate replay", "photos-web refreshes with the token it holds, now a used one: 400"),
            Step(4, "detection", "the IdP answers invalid_grant and records a replay"),
            Step(5, "chain revocation", "every refresh and access token of the grant is inactive"),
            Step(6, "both refused", "refresh 400; /transfers 401 at once; /photos 200 until expiry, then 401"),
            Step(7, "re-authentication", "alice logs in again; /photos and /transfers answer 200; refresh works"),
            Step(
                8, "revocation pushed", "the IdP pushes alice's sign-out to the API: /photos 401 at once, no IdP call"
            ),
        ]
        self.current: Step = self.steps[0]
        self.idp_http: httpx.AsyncClient | None = None
        self.api_http: httpx.AsyncClient | None = None
        # What the story carries from one step to the next.
        self.leaked: Tokens | None = None
        self.attacker: Tokens | None = None
        self.replay: httpx.Response | None = None
        # Short names for the tokens, so that abbreviated ones can still be told apart: AT1/RT1, AT2/RT2...
        self.labels: dict[str, str] = {}
        self.keys_fetched = False
        self.fresh: Tokens | None = None

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> list[Step]:
        actions: list[Callable[[], Awaitable[None]]] = [
            self.leak,
            self.attacker_refresh,
            self.legitimate_replay,
            self.detection,
            self.chain_revocation,
            self.both_refused,
            self.reauthentication,
            self.revocation_pushed,
        ]
        async with self.idp.http_client() as idp_http, self._api_client() as api_http:
            self.idp_http, self.api_http = idp_http, api_http
            for step, action in zip(self.steps, actions, strict=True):
                self.current = step
                self._title(step)
                step.ran = True
                try:
                    await action()
                except StepAborted as exc:
                    step.failures.append(str(exc))
                    self._failed(str(exc))
                    break
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    step.failures.append(f"{type(exc).__name__}: {exc}")
                    self._failed(f"unexpected {type(exc).__name__}: {exc}")
                    break
        return self.steps

    def _api_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.guard), base_url=API_URL)

    def _guard_client(self) -> httpx.AsyncClient:
        """The guard's own client to the IdP (in process), recording each call it makes."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.idp.app),
            base_url=self.idp.issuer,
            event_hooks={"response": [self._guard_called]},
        )

    async def _guard_called(self, response: httpx.Response) -> None:
        await response.aread()  # the guard reads it next, from this copy
        request = response.request
        sent: dict[str, Any] = dict(parse_qsl(request.content.decode("ascii", "replace")))
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            client = base64.b64decode(credentials).decode("utf-8", "replace").partition(":")[0]
            sent["auth"] = f"Basic {client}"  # the client id only: the secret is never shown
        self.guard_calls.append(
            GuardCall(request.method, request.url.path, response.status_code, sent, _json(response))
        )

    def expect(self, condition: bool, what: str) -> bool:
        """Check one expectation of the current step; the story goes on either way."""
        if not condition:
            self.current.failures.append(what)
            self._failed(what)
        return condition

    def need(self, value: Any, what: str) -> Any:
        if value is None:
            raise StepAborted(what)
        return value

    # -- the eight steps ------------------------------------------------------------------------

    async def leak(self) -> None:
        self.say("alice signs in to photos-web (authorization code + PKCE; the IdP auto-approves her).")
        tokens = self.need(await self.login("photos-web"), "the login gave no tokens")
        self.say(
            "photos-web calls the API with AT1. This first request is the guard's first look at the IdP: "
            "it reads the IdP's metadata and public keys once, then checks tokens on its own."
        )
        photos = await self.api("photos-web", "GET", "/photos", tokens.access)
        transfer = await self.api("photos-web", "POST", "/transfers", tokens.access, body={"amount": 20, "to": "bob"})
        self.expect(photos.status_code == 200, "GET /photos with alice's token should answer 200")
        self.expect(transfer.status_code == 200, "POST /transfers with alice's token should answer 200")
        self.say("photos-web sends its errors and debug traces to a log service. One line, as shipped there:")
        self.out.line(
            self.out.style(
                f"    DEBUG oauth: POST /token client_id={CLIENT_ID} -> 200 refresh_token={abbreviate(tokens.refresh)}",
                "magenta",
            )
        )
        self.say(
            "The log line held the whole refresh token (shortened here; in the log it was not), and the "
            "attacker reads the log store. photos-web is a public client: it has no secret, so that token "
            "is all anyone needs at the token endpoint. Only rotation can tell a copy from the original."
        )
        self.leaked = tokens
        self.current.got.append(f"login 200, /photos {photos.status_code}, /transfers {transfer.status_code}; leaked")

    async def attacker_refresh(self) -> None:
        leaked = self.need(self.leaked, "nothing leaked in step 1")
        self.say(
            "The attacker uses the leaked refresh token before photos-web needs it, sending photos-web's "
            "client_id, which is public: it is in the app's JavaScript and in every authorization URL."
        )
        response = await self.token("attacker", {"grant_type": "refresh_token", "refresh_token": leaked.refresh})
        self.expect(response.status_code == 200, "the first use of the refresh token should succeed (200)")
        body = _json(response)
        new = self.need(_tokens(body), "the attacker's refresh gave no tokens")
        self.expect(new.refresh != leaked.refresh, "rotation: the refresh answer should carry a NEW refresh token")
        self.attacker = new
        photos = await self.api("attacker", "GET", "/photos", new.access)
        self.expect(photos.status_code == 200, "the attacker's fresh access token should work on /photos (200)")
        self.expect(_json(photos).get("owner") == USER, "the API should take the attacker for alice")
        self.say(
            "The IdP rotated: the leaked refresh token is now marked used, linked to its successor, which "
            "only the attacker holds. The guard cannot tell either: AT2 is a genuine token the IdP signed "
            "for alice, so to the API the attacker is alice."
        )
        self.current.got.append(f"refresh {response.status_code}, new tokens; /photos {photos.status_code} as alice")

    async def legitimate_replay(self) -> None:
        leaked = self.need(self.leaked, "nothing leaked in step 1")
        self.say(
            "photos-web's access token nears expiry; it refreshes with the only refresh token it has, "
            "the one the attacker already used."
        )
        self.replay = await self.token("photos-web", {"grant_type": "refresh_token", "refresh_token": leaked.refresh})
        self.expect(self.replay.status_code == 400, "presenting a used refresh token should answer 400")
        self.current.got.append(f"refresh with the used token: {self.replay.status_code}")

    async def detection(self) -> None:
        replay = self.need(self.replay, "step 3 sent nothing")
        body = _json(replay)
        self.say(f"The IdP refused with {body.get('error')!r}. Behind that answer, it recognised the token:")
        self.expect(body.get("error") == "invalid_grant", "the IdP should answer invalid_grant")
        events = [event for event in self.idp.events if event.kind == "replay_detected"]
        for event in events:
            self.event(
                f"replay_detected  grant {event.grant_id}: refresh token {event.detail.get('refresh_token')} "
                f"came back, though its successor {event.detail.get('successor')} exists"
            )
        self.expect(len(events) == 1, "the IdP should record exactly one replay")
        self.say(
            "A used refresh token came back: photos-web or the attacker holds a copy, and the IdP cannot "
            "tell which (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2). So it trusts neither."
        )
        self.current.got.append(f"{replay.status_code} {body.get('error')}; replay_detected recorded")

    async def chain_revocation(self) -> None:
        leaked = self.need(self.leaked, "nothing leaked in step 1")
        attacker = self.need(self.attacker, "the attacker got no tokens in step 2")
        revoked = [event for event in self.idp.events if event.kind == "chain_revoked"]
        for event in revoked:
            self.event(
                f"chain_revoked    grant {event.grant_id} ({event.detail.get('reason')}): "
                f"{len(event.detail.get('refresh_tokens', []))} refresh tokens, "
                f"{len(event.detail.get('access_tokens', []))} access tokens"
            )
        self.expect(len(revoked) == 1, "the IdP should revoke the grant once")
        self.say(
            "To show it, the demo asks the IdP about every token so far, with photos-api's credentials "
            "(RFC 7662 introspection, the question the guard asks on @sensitive routes):"
        )
        checks = [
            ("photos-web's refresh token", leaked.refresh),
            ("photos-web's access token", leaked.access),
            ("attacker's refresh token", attacker.refresh),
            ("attacker's access token", attacker.access),
        ]
        inactive = 0
        for label, token in checks:
            answer = await self.introspect(token)
            active = _json(answer).get("active")
            self.expect(answer.status_code == 200 and active is False, f"{label} should be inactive")
            inactive += active is False
        jti = decode(attacker.access).claims or {}
        self.expect(jti.get("jti") in self.idp.revoked_jtis, "the attacker's JWT should be listed as revoked by jti")
        self.say(
            "But AT2 is a JWT: a signed statement that stays genuine until it expires. The IdP cannot "
            "recall it; it can only answer 'not active' to whoever asks. The guard asks only on "
            "@sensitive routes. Step 6 shows what that means."
        )
        self.current.got.append(f"{inactive}/{len(checks)} tokens inactive; grant revoked")

    async def both_refused(self) -> None:
        attacker = self.need(self.attacker, "the attacker got no tokens in step 2")
        self.say("The attacker tries to refresh again with the token rotation gave them:")
        refresh = await self.token("attacker", {"grant_type": "refresh_token", "refresh_token": attacker.refresh})
        self.expect(refresh.status_code == 400, "the attacker's refresh should answer 400")
        self.expect(_json(refresh).get("error") == "invalid_grant", "the attacker's refresh should be invalid_grant")
        self.say("The attacker still holds AT2. On the @sensitive route first:")
        transfer = await self.api("attacker", "POST", "/transfers", attacker.access, body={"amount": 5000, "to": "eve"})
        self.expect(transfer.status_code == 401, "POST /transfers with the revoked token should answer 401 at once")
        self.expect(self._reason() == "inactive", "the guard should refuse /transfers because the IdP says inactive")
        self.say("The same token, the same second, on an ordinary route:")
        photos = await self.api("attacker", "GET", "/photos", attacker.access)
        self.expect(photos.status_code == 200, "GET /photos should still answer 200 until the JWT expires")
        self.expect(not self._called("/introspect"), "the guard should not call the IdP for GET /photos")
        self.out.line("    " + self.out.style("Why 401 there and 200 here?", "bold"))
        self.say(
            f"Same token, two answers, both correct for what each route asked of the guard. /transfers is "
            f"@sensitive: the guard asked the IdP, which knows the grant is revoked, so {transfer.status_code}. "
            f"/photos is not: the guard checked AT2 on its own, and on its own a revoked JWT looks exactly like "
            f"a good one (genuine signature, right issuer and audience, not expired), so {photos.status_code}. "
            "Local checks cost no call to the IdP, and leave a window: until the token expires. Keep access "
            "tokens short-lived, and mark @sensitive the routes where that window matters "
            "(RFC 7662 introspection; RFC 9068 JWT access tokens)."
        )
        exp = (decode(attacker.access).claims or {}).get("exp")
        if not isinstance(exp, (int, float)):
            raise StepAborted("the attacker's access token has no exp")
        jump = float(exp) - self.clock() + LEEWAY + 1
        self.clock.advance(jump)
        self.say(
            f"The clock moves on {duration(jump)}: past AT2's exp and the guard's {LEEWAY:.0f} s leeway "
            "(one injected clock, shared by the IdP and the guard: nobody sleeps)."
        )
        expired = await self.api("attacker", "GET", "/photos", attacker.access)
        self.expect(expired.status_code == 401, "GET /photos with the expired token should answer 401")
        self.expect(self._reason() == "expired", "the guard should refuse the expired token as expired")
        self.current.got.append(
            f"refresh {refresh.status_code}; /transfers {transfer.status_code}; /photos {photos.status_code}, "
            f"{expired.status_code} after expiry"
        )

    async def reauthentication(self) -> None:
        self.say("photos-web sends alice through the login again; a new grant starts, unrelated to the revoked one.")
        tokens = self.need(await self.login("photos-web"), "the new login gave no tokens")
        photos = await self.api("photos-web", "GET", "/photos", tokens.access)
        transfer = await self.api("photos-web", "POST", "/transfers", tokens.access, body={"amount": 20, "to": "bob"})
        refresh = await self.token("photos-web", {"grant_type": "refresh_token", "refresh_token": tokens.refresh})
        self.expect(photos.status_code == 200, "GET /photos after the new login should answer 200")
        self.expect(transfer.status_code == 200, "POST /transfers after the new login should answer 200")
        self.expect(refresh.status_code == 200, "the new grant's refresh token should rotate normally (200)")
        self.fresh = _tokens(_json(refresh)) or tokens
        self.current.got.append(
            f"login 200; /photos {photos.status_code}; /transfers {transfer.status_code}; refresh {refresh.status_code}"
        )

    async def revocation_pushed(self) -> None:
        fresh = self.need(self.fresh, "step 7 gave alice no new tokens")
        self.say(
            "Step 6 left a window: a revoked JWT still opened /photos until it expired. The IdP can close it by "
            "telling the API about each revocation as it happens: an OpenID Shared Signals stream (SSF 1.0). "
            f"The IdP pushes signed events (RFC 8417 SETs) to the API's {PUSH_PATH} (RFC 8935), and the guard "
            "adds what they revoke to its revocation list, which it checks on every route, ordinary ones too."
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.guard), base_url=API_URL) as pushes:
            self.idp.ssf_http_client = pushes
            self.idp.add_stream(push_url=API_URL + PUSH_PATH, authorization=PUSH_AUTHORIZATION, audience=API_CLIENT_ID)
            before = await self.api("photos-web", "GET", "/photos", fresh.access)
            self.expect(before.status_code == 200, "GET /photos with alice's new token should answer 200")
            self.say("alice reports her laptop stolen; the IdP signs her out everywhere (every grant revoked).")
            revoked = self.idp.logout(USER)
            delivered = await self.idp.deliver()
            self.event(
                f"IdP: {revoked} grant(s) revoked; {delivered} SET(s) pushed to the API: CAEP session-revoked, "
                f"subject iss_sub {USER}"
            )
            self.expect(delivered >= 1, "the IdP should push at least one session-revoked SET")
            pushed = self.signals_status()
            self.guard_says(
                f"verified {pushed.get('applied', 0)} SET(s) (signature with the IdP's key, iss, aud, iat, jti) "
                f"and revoked every token of {USER} issued before the sign-out"
            )
            self.guard_calls.clear()
            after = await self.api("photos-web", "GET", "/photos", fresh.access)
            self.idp.ssf_http_client = None
        self.expect(after.status_code == 401, "GET /photos with the signed-out token should answer 401 at once")
        self.expect(self._reason() == "revoked", "the guard should refuse it as revoked")
        self.expect(not self._called("/introspect"), "the guard should refuse it without calling the IdP")
        self.say(
            "Same kind of request as in step 6, now 401 within the second, with no call to the IdP: the push "
            "did the work. With several worker processes, shared_store= (Redis) gives every process the same "
            "list within a second (README, Fleet mode)."
        )
        self.current.got.append(f"/photos {before.status_code} before, {after.status_code} after the pushed sign-out")

    def signals_status(self) -> dict[str, Any]:
        fleet = self.guard.status().get("fleet", {})
        status = fleet.get("shared_signals", {})
        return status if isinstance(status, dict) else {}

    # -- the HTTP exchanges ---------------------------------------------------------------------

    async def login(self, actor: str) -> Tokens | None:
        """Authorization code + PKCE S256 (RFC 7636), as a real client does it, minus the browser."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(12)
        params = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPES,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": USER,
        }
        assert self.idp_http is not None
        self.request(actor, "idp", "GET", "/authorize", params)
        response = await self.idp_http.get(self._idp_path("/authorize") + "?" + urlencode(params))
        location = response.headers.get("location", "")
        answer = dict(parse_qsl(urlsplit(location).query))
        self.response(response, {"Location": REDIRECT_URI + "?…", **answer})
        self.expect(response.status_code == 302, "the authorization endpoint should redirect (302)")
        self.expect(answer.get("state") == state, "the redirect should carry our state back")
        self.expect(answer.get("iss") == self.idp.issuer, "the redirect should name the issuer (RFC 9207)")
        code = self.need(answer.get("code"), f"no authorization code: {answer.get('error', 'no redirect')}")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
        }
        response = await self.token(actor, form)
        self.expect(response.status_code == 200, "the code exchange should answer 200")
        return _tokens(_json(response))

    async def token(self, actor: str, form: Mapping[str, str]) -> httpx.Response:
        """A token request as a public client makes it (RFC 6749 §3.2.1): client_id in the form, no secret."""
        assert self.idp_http is not None
        sent = {**form, "client_id": CLIENT_ID}
        self.request(actor, "idp", "POST", "/token", sent)
        response = await self.idp_http.post(self._idp_path("/token"), data=sent)
        body = _json(response)
        self._label(body)
        # token_type (Bearer) and scope (as asked) are left out: the tokens and their lifetime are the story.
        self.response(response, {key: value for key, value in body.items() if key not in ("token_type", "scope")})
        return response

    def _label(self, body: Mapping[str, Any]) -> None:
        number = len(self.labels) // 2 + 1
        for field_name, prefix in (("access_token", "AT"), ("refresh_token", "RT")):
            value = body.get(field_name)
            if isinstance(value, str):
                self.labels.setdefault(value, f"{prefix}{number}")

    async def introspect(self, token: str) -> httpx.Response:
        assert self.idp_http is not None
        self.request("photos-api", "idp", "POST", "/introspect", {"token": token, "auth": f"Basic {API_CLIENT_ID}"})
        response = await self.idp_http.post(
            self._idp_path("/introspect"), data={"token": token}, auth=(API_CLIENT_ID, API_CLIENT_SECRET)
        )
        body = _json(response)
        self.response(response, {key: body[key] for key in ("active", "sub") if key in body})
        return response

    async def api(
        self, actor: str, method: str, path: str, token: str, *, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """One request to the guarded API: what was sent, what the guard did, what came back."""
        assert self.api_http is not None
        shown: dict[str, Any] = {"Authorization": f"Bearer {self.short(token)}", **(body or {})}
        self.request(actor, "api", method, path, shown)
        self.decisions.clear()
        self.guard_calls.clear()
        remembered = self.guard.status()["verified_cache_entries"]
        response = await self.api_http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json=dict(body) if body is not None else None
        )
        for call in self.guard_calls:
            self._guard_call(call)
        if self.expect(len(self.decisions) == 1, f"the guard should decide {method} {path} exactly once"):
            fresh = self.guard.status()["verified_cache_entries"] > remembered
            self.verdict(self.decisions[0], token, path, fresh=fresh, had_keys=self.keys_fetched)
        self.keys_fetched = self.keys_fetched or any(call.path.endswith("/jwks") for call in self.guard_calls)
        answer = _json(response)
        challenge = response.headers.get("www-authenticate")
        if challenge is not None:
            answer = dict(_CHALLENGE_PARAM.findall(challenge)) or {"WWW-Authenticate": challenge}
        self.response(response, answer)
        return response

    def _reason(self) -> str | None:
        return self.decisions[0].reason if len(self.decisions) == 1 else None

    def _called(self, path: str) -> bool:
        return any(call.path == self._idp_path(path) for call in self.guard_calls)

    def _idp_path(self, path: str) -> str:
        return urlsplit(self.idp.endpoint(path.lstrip("/"))).path

    # -- what the guard did, in plain words -------------------------------------------------------

    def _guard_call(self, call: GuardCall) -> None:
        if call.path.endswith("/jwks"):
            keys = call.answer.get("keys")
            entries = [key for key in keys if isinstance(key, dict)] if isinstance(keys, list) else []
            answer: dict[str, Any] = {
                "keys": ", ".join(f"{_kid(key.get('kid'))} ({key.get('kty')})" for key in entries)
            }
        elif call.path.endswith("/introspect"):
            answer = {key: call.answer[key] for key in ("active", "sub") if key in call.answer}
        else:
            answer = {key: call.answer[key] for key in ("jwks_uri", "introspection_endpoint") if key in call.answer}
        self.request("guard", "idp", call.method, call.path, call.sent)
        self._answer(call.status, answer)

    def verdict(self, decision: DecisionEvent, token: str, path: str, *, fresh: bool, had_keys: bool) -> None:
        """Why the guard answered as it did: what it checked, where, and what it asked the IdP.

        Read from the guard itself: its decision event, the calls it made to the IdP during this
        request, and whether its verified-token cache gained an entry (a full check) or not (a token
        it had checked before)."""
        name = self.labels.get(token, "the token")
        endpoint, requirement = _route(path)
        scopes = " ".join(sorted(requirement.all_scopes)) if requirement is not None else "nothing more"
        fetched = any(call.path.endswith("/jwks") for call in self.guard_calls)
        if fetched and had_keys:
            start = "found its copy of the IdP's keys past the max-age the IdP set and fetched them again, then "
        elif fetched:
            start = "read the IdP's metadata and public keys, which it keeps for later requests, then "
        else:
            start = ""
        # A refusal's event carries no token; the kid is then the one the token names (it passed the local check).
        kid = _kid(decision.kid or (decode(token).header or {}).get("kid"))
        sensitive = requirement is not None and requirement.sensitive
        alone = "" if sensitive or fetched else ", without calling the IdP"
        if fresh:
            local = (
                f"checked {name} on its own{alone}: signed with the IdP's key {kid}, the right issuer, "
                "meant for this API (audience), not expired"
            )
        else:
            local = (
                f"recognised {name}: it passed the full check in an earlier request (the guard keeps the "
                f"token's SHA-256, never the token), so it re-checked only that {name} has not expired and "
                f"that key {kid} is still published{alone}"
            )
        asked = "asked the IdP" if self._called("/introspect") else "used the IdP's answer from moments ago"
        refused = f"Refused with {decision.status}, before {endpoint} could run."
        if decision.outcome == "allow" and decision.source == "jwt":
            granted = f"{path} needs {scopes}, which {name} carries"
            text = f"{start}{local}. {granted}: {decision.status}, and {endpoint} runs."
        elif decision.outcome == "allow":
            text = (
                f"{start}{local}. {path} is @sensitive, so it also {asked}: active. {name} carries {scopes}: "
                f"{decision.status}, and {endpoint} runs."
            )
        elif decision.reason == "inactive":
            text = (
                f"{start}{local}: all right so far. But {path} is @sensitive, so it also {asked}, which answered: "
                f"not active (revoked). {refused}"
            )
        elif decision.reason == "expired":
            exp = (decode(token).claims or {}).get("exp")
            ago = f" {duration(self.clock() - float(exp))} ago" if isinstance(exp, (int, float)) else ""
            text = (
                f"{start}found {name} still signed by the IdP, but its exp passed{ago}, beyond the "
                f"{LEEWAY:.0f} s leeway it allows for clock skew. {refused}"
            )
        else:
            text = f"{start}refused {name}: {decision.reason}. {refused}"
        self.guard_says(text)

    # -- printing -------------------------------------------------------------------------------

    def _title(self, step: Step) -> None:
        self.out.line()
        self.out.line(self.out.style(f"Step {step.number}/{len(self.steps)}  {step.name}", "bold", "cyan"))

    def say(self, text: str) -> None:
        for line in self.out.wrap(text, indent="    "):
            self.out.line(self.out.style(line, "dim"))

    def guard_says(self, text: str) -> None:
        """The guard's verdict, under its label."""
        lines = self.out.wrap(text, indent=" " * _TEXT)
        for number, line in enumerate(lines):
            label = self.out.style(f"{'guard':>10}", "blue") if number == 0 else " " * 10
            self.out.line(f"  {label}{line[12:]}")

    def event(self, text: str) -> None:
        lines = self.out.wrap(text, indent=" " * _TEXT)
        for number, line in enumerate(lines):
            label = self.out.style(f"{'idp event':>10}", "yellow") if number == 0 else " " * 10
            self.out.line(f"  {label}{line[12:]}")

    def _failed(self, text: str) -> None:
        for number, line in enumerate(self.out.wrap(text, indent=" " * 16)):
            head = self.out.style("UNEXPECTED", "bold", "red") if number == 0 else " " * 10
            self.out.line(f"    {head}{line[14:]}")

    def request(self, actor: str, target: str, method: str, path: str, fields: Mapping[str, Any]) -> None:
        color = "blue" if actor == "guard" else "red" if actor == "attacker" else "green"
        head = self._head(self.out.style(f"{actor:>10}", color), "→", target)
        self._exchange(head, self.out.style(f"{method} {path}", "bold"), len(f"{method} {path}"), fields)

    def response(self, response: httpx.Response, fields: Mapping[str, Any]) -> None:
        self._answer(response.status_code, fields)

    def _answer(self, status: int, fields: Mapping[str, Any]) -> None:
        color = "green" if status < 300 else "yellow" if status < 400 else "red"
        head = self._head(" " * 10, "←", "")
        self._exchange(head, self.out.style(str(status), "bold", color), len(str(status)), fields)

    def _head(self, label: str, arrow: str, target: str) -> str:
        """``  photos-web → idp  ``, padded to the text column whatever the arrow becomes (``->`` in ASCII)."""
        shown = 2 + 10 + 1 + len(self.out.fit(arrow)) + 1 + len(target)
        return f"  {label} {arrow} {target}" + " " * max(1, _TEXT - shown)

    def _exchange(self, head: str, first: str, first_width: int, fields: Mapping[str, Any]) -> None:
        """``head`` + ``first`` + the fields, wrapped between fields at ``WIDTH`` columns, continuation
        lines aligned under the text column."""
        lines: list[str] = []
        current, width, gap = head + first, _TEXT + first_width, "  "
        for part in self._fields(fields):
            shown = len(self.out.fit(part))
            if width + len(gap) + shown > WIDTH:
                lines.append(current)
                current, width = " " * _TEXT + part, _TEXT + shown
            else:
                current, width = f"{current}{gap}{part}", width + len(gap) + shown
            gap = " "
        lines.append(current)
        for line in lines:
            self.out.line(line)

    def short(self, token: str) -> str:
        """``eyJhbGc…(758 chars) [AT1]``: abbreviated, with the story's name for it when it has one."""
        label = self.labels.get(token)
        return f"{abbreviate(token)} [{label}]" if label else abbreviate(token)

    def _fields(self, fields: Mapping[str, Any]) -> list[str]:
        """``name=value`` pairs, with tokens and secrets abbreviated, long values shortened and values
        with spaces quoted."""
        parts: list[str] = []
        for name, value in fields.items():
            if isinstance(value, bool):
                text = str(value).lower()
            elif name in _SECRET_FIELDS and isinstance(value, str):
                text = self.short(value)
            else:
                text = _shorten(value if isinstance(value, str) else repr(value))
                if " " in text and name not in ("Authorization", "auth"):
                    text = f'"{text}"'
            parts.append(f"{name}={text}")
        return parts


def _route(path: str) -> tuple[str, Requirement | None]:
    """The endpoint's name and its marks, for the route the story calls."""
    for route in ROUTES:
        if route.path == path:
            return route.endpoint.__name__, requirement_of(route.endpoint)
    return "the endpoint", None


def _kid(kid: object) -> str:
    """A key id, shortened: thumbprint kids are 43 characters of base64url."""
    text = str(kid)
    return text if len(text) <= 12 else text[:8] + "…"


def _shorten(text: str) -> str:
    """A long value, shortened where that cannot mislead: a URL keeps its scheme, host and the start
    of its path and says how long it was; other text is cut at a word."""
    if len(text) <= _LONG_VALUE:
        return text
    if "://" in text:
        parts = urlsplit(text)
        return f"{parts.scheme}://{parts.netloc}/…({len(text)} chars)"
    cut = text[: _LONG_VALUE - 1].rsplit(" ", 1)[0]
    return cut + "…"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _tokens(body: Mapping[str, Any]) -> Tokens | None:
    access, refresh = body.get("access_token"), body.get("refresh_token")
    if not isinstance(access, str) or not isinstance(refresh, str):
        return None
    expires_in = body.get("expires_in")
    return Tokens(access, refresh, expires_in if isinstance(expires_in, int) else 0)


# -- the summary and the entry point ----------------------------------------------------------


def summary(out: Printer, steps: list[Step]) -> None:
    out.line()
    out.line(out.style("Summary", "bold"))
    rows = []
    for step in steps:
        result = "ok" if step.ok else "FAILED" if step.ran else "not run"
        got = "; ".join(step.got) or ("; ".join(step.failures) if step.failures else "-")
        rows.append([str(step.number), step.name, _shorten(got) if len(got) > _LONG_VALUE else got, result])
    out.table(["#", "STEP", "WHAT HAPPENED", "RESULT"], rows)
    out.line()
    if all(step.ok for step in steps):
        out.line(out.style("Every step behaved as expected.", "bold", "green"))
        for line in out.wrap(
            "The IdP: rotation turned a silent leak into a detected one, and it revoked the whole grant. "
            "The guard: it checked every token itself (signature, issuer, audience, expiry, scopes) "
            "before the API's code ran; on the @sensitive route it also asked the IdP, so the "
            "revocation stopped the attacker there at once; elsewhere the token's short lifetime "
            "ended it, until the IdP pushed its revocations (Shared Signals) and every route refused at once.",
            indent="",
        ):
            out.line(line)
    else:
        failed = ", ".join(str(step.number) for step in steps if step.ran and not step.ok)
        skipped = sum(1 for step in steps if not step.ran)
        tail = f"; {skipped} later step(s) did not run" if skipped else ""
        out.line(out.style(f"The story did not go as told: step {failed} failed{tail}.", "bold", "red"))


def intro(out: Printer, idp: DevIdP) -> None:
    out.line(out.style("tokenguard demo: a leaked refresh token, from the leak to the lockout", "bold"))
    for line in out.wrap(
        "Two real parts run in this process (no network, no configuration): an identity provider "
        "that issues tokens (the IdP, tokenguard.testing.DevIdP), and a photos API behind TokenGuard, "
        "the middleware that checks each request's token before the API's code runs.",
        indent="",
    ):
        out.line(line)
    out.line()
    out.line(f"  IdP          {idp.issuer}")
    out.line(f"  photos API   {API_URL}, behind TokenGuard(issuer=the IdP, audience=its URL)")
    for route in ROUTES:
        methods = sorted((route.methods or set()) - {"HEAD"})
        head = f"{' '.join(methods)} {route.path}"
        for number, line in enumerate(out.wrap(policy(requirement_of(route.endpoint)), indent=" " * 34)):
            out.line((f"               {head:<19}" + line[34:]) if number == 0 else line)
    out.line(f"  client       {CLIENT_ID}, a single-page app: a public client (no secret), so its refresh")
    out.line("               tokens rotate on every use (OAuth 2.1 §4.3.1 requires it for public clients)")
    out.line(f"  user         {USER}, scopes {SCOPES}")
    out.line()
    for line in out.wrap(
        "Tokens are shown as eyJhbGc…(789 chars) [AT1], never whole: AT1/RT1 are the first access and "
        "refresh token, AT2/RT2 the next pair, and so on. Lines marked 'guard' are TokenGuard at work "
        "inside the API: the calls it makes to the IdP, and what it checked and why it answered as it did.",
        indent="  ",
    ):
        out.line(line)


async def play(out: Printer, **idp_options: Any) -> int:
    clock = ManualClock()
    idp = build_idp(clock, **idp_options)
    intro(out, idp)
    steps = await Story(out, idp, clock).run()
    summary(out, steps)
    return 0 if all(step.ok for step in steps) else 1


def main(out: Printer, **idp_options: Any) -> int:
    """Play the story; 0 when every step behaved as told, 1 otherwise."""
    return asyncio.run(play(out, **idp_options))
