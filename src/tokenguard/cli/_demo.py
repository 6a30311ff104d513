"""``tokenguard demo``: the leaked-refresh-token story, played against a real IdP and a real guarded API.

Both run in this process (httpx ``ASGITransport``), share one injected clock (expiry is shown by
moving it, never by sleeping), and every HTTP exchange is printed with its tokens abbreviated.
The demo checks its own story: any step that does not behave as told makes it exit 1.

The story's client, photos-web, is a public client (a single-page app: no secret, RFC 6749 §2.1):
the case for which OAuth 2.1 §4.3.1 requires refresh-token rotation, since nothing but the refresh
token itself stands between whoever holds it and the token endpoint.
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

from tokenguard import TokenGuard, public, require_scopes, sensitive
from tokenguard.cli._inspect import decode
from tokenguard.cli._output import Printer, abbreviate, duration
from tokenguard.testing import DevIdP, ManualClock

API_URL = "https://photos.tokenguard.test"
CLIENT_ID = "photos-web"  # a public client: a single-page app has no secret to keep
API_CLIENT_ID = "photos-api"
API_CLIENT_SECRET = "photos-api-secret"
REDIRECT_URI = "http://127.0.0.1/callback"
SCOPES = "read:photos write:transfers"
USER = "alice"
LEEWAY = 30.0

# Values never shown whole: tokens, codes, PKCE secrets, client secrets.
_SECRET_FIELDS = frozenset(
    {"access_token", "refresh_token", "id_token", "token", "code", "code_verifier", "code_challenge", "client_secret"}
)
_CHALLENGE_PARAM = re.compile(r'(error|error_description)="([^"]*)"')


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


def build_api(idp: DevIdP, clock: Callable[[], float]) -> Starlette:
    """The photos API: GET /photos (local JWT validation), POST /transfers (@sensitive), GET /health."""
    app = Starlette(
        routes=[
            Route("/photos", list_photos),
            Route("/transfers", transfer, methods=["POST"]),
            Route("/health", health),
        ]
    )
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=API_URL,
        client_id=API_CLIENT_ID,
        client_secret=API_CLIENT_SECRET,
        http_client=idp.http_client,
        leeway=LEEWAY,
        clock=clock,
    )
    return app


def build_idp(clock: ManualClock, **options: Any) -> DevIdP:
    """The DevIdP with the demo's two clients: the web app (public), and the API (which may introspect)."""
    idp = DevIdP(clock=clock, default_clients=False, scopes=SCOPES, **options)
    idp.register_client(CLIENT_ID, scopes=SCOPES, redirect_uris=[REDIRECT_URI], audience=API_URL)
    idp.register_client(API_CLIENT_ID, API_CLIENT_SECRET, scopes=(), grant_types=(), introspection=True)
    return idp


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


class Story:
    """Plays the seven steps; each HTTP exchange is printed, each expectation checked."""

    def __init__(self, out: Printer, idp: DevIdP, clock: ManualClock) -> None:
        self.out = out
        self.idp = idp
        self.clock = clock
        self.api_app = build_api(idp, clock)
        self.steps = [
            Step(1, "leak", "alice logs in; /photos and /transfers answer 200; the refresh token lands in a log"),
            Step(2, "attacker refresh", "the attacker refreshes first: 200 and fresh tokens; /photos 200"),
            Step(3, "legitimate replay", "photos-web refreshes with the token it holds, now a used one: 400"),
            Step(4, "detection", "the IdP answers invalid_grant and records a replay"),
            Step(5, "chain revocation", "every refresh and access token of the grant is inactive"),
            Step(6, "both refused", "refresh 400; /transfers 401 at once; /photos 200 until expiry, then 401"),
            Step(7, "re-authentication", "alice logs in again; /photos and /transfers answer 200; refresh works"),
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
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.api_app), base_url=API_URL)

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

    # -- the seven steps ------------------------------------------------------------------------

    async def leak(self) -> None:
        self.say("alice signs in to photos-web (authorization code + PKCE; the IdP auto-approves her).")
        tokens = self.need(await self.login("photos-web"), "the login gave no tokens")
        photos = await self.api("photos-web", "GET", "/photos", tokens.access)
        transfer = await self.api("photos-web", "POST", "/transfers", tokens.access, body={"amount": 20, "to": "bob"})
        self.expect(photos.status_code == 200, "GET /photos with alice's token should answer 200")
        self.expect(transfer.status_code == 200, "POST /transfers with alice's token should answer 200")
        self.say("photos-web sends its errors and debug traces to a log service. One line, as shipped there:")
        self.out.line(
            self.out.style(
                f"    DEBUG photos-web.oauth POST /token client_id={CLIENT_ID} -> 200 "
                f"refresh_token={abbreviate(tokens.refresh)}",
                "magenta",
            )
        )
        self.say("The log line held the whole refresh token (shortened here; in the log it was not), and the")
        self.say("attacker reads the log store. photos-web is a public client: it has no secret, so that token")
        self.say("is all anyone needs at the token endpoint. Only rotation can tell a copy from the original.")
        self.leaked = tokens
        self.current.got.append(f"login 200, /photos {photos.status_code}, /transfers {transfer.status_code}; leaked")

    async def attacker_refresh(self) -> None:
        leaked = self.need(self.leaked, "nothing leaked in step 1")
        self.say("The attacker uses the leaked refresh token before photos-web needs it, sending photos-web's")
        self.say("client_id, which is public: it is in the app's JavaScript and in every authorization URL.")
        response = await self.token("attacker", {"grant_type": "refresh_token", "refresh_token": leaked.refresh})
        self.expect(response.status_code == 200, "the first use of the refresh token should succeed (200)")
        body = _json(response)
        new = self.need(_tokens(body), "the attacker's refresh gave no tokens")
        self.expect(new.refresh != leaked.refresh, "rotation: the refresh answer should carry a NEW refresh token")
        self.attacker = new
        photos = await self.api("attacker", "GET", "/photos", new.access)
        self.expect(photos.status_code == 200, "the attacker's fresh access token should work on /photos (200)")
        self.expect(_json(photos).get("owner") == USER, "the API should take the attacker for alice")
        self.say("The IdP rotated: the leaked refresh token is now marked used, linked to its successor,")
        self.say("which only the attacker holds. To the API, the attacker is alice.")
        self.current.got.append(f"refresh {response.status_code}, new tokens; /photos {photos.status_code} as alice")

    async def legitimate_replay(self) -> None:
        leaked = self.need(self.leaked, "nothing leaked in step 1")
        self.say("photos-web's access token nears expiry; it refreshes with the only refresh token it has,")
        self.say("the one the attacker already used.")
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
        self.say("A used refresh token came back: photos-web or the attacker holds a copy, and the IdP cannot")
        self.say("tell which (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2). So it trusts neither.")
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
        self.say("The API asks the IdP (RFC 7662 introspection) about every token of the story so far:")
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
        self.say("The attacker's access token is a JWT: it cannot be recalled, only listed as revoked (by jti)")
        self.say("until it expires. Whoever asks the IdP learns it is dead; whoever does not, does not.")
        self.current.got.append(f"{inactive}/{len(checks)} tokens inactive; grant revoked")

    async def both_refused(self) -> None:
        attacker = self.need(self.attacker, "the attacker got no tokens in step 2")
        self.say("The attacker tries to refresh again with the token rotation gave them:")
        refresh = await self.token("attacker", {"grant_type": "refresh_token", "refresh_token": attacker.refresh})
        self.expect(refresh.status_code == 400, "the attacker's refresh should answer 400")
        self.expect(_json(refresh).get("error") == "invalid_grant", "the attacker's refresh should be invalid_grant")
        self.say("The attacker's access token on the @sensitive route (introspected on every call):")
        transfer = await self.api("attacker", "POST", "/transfers", attacker.access, body={"amount": 5000, "to": "eve"})
        self.expect(transfer.status_code == 401, "POST /transfers with the revoked token should answer 401 at once")
        self.say("The same token on an ordinary route (local JWT validation: signature, issuer, audience, expiry):")
        photos = await self.api("attacker", "GET", "/photos", attacker.access)
        self.expect(photos.status_code == 200, "GET /photos should still answer 200 until the JWT expires")
        self.out.line(
            "    "
            + self.out.style("Contrast:", "bold")
            + f" /transfers {transfer.status_code} (asked the IdP),"
            + f" /photos {photos.status_code} (trusted the signature)."
        )
        self.say("That window is the price of local validation: keep access tokens short-lived, and mark the")
        self.say("routes where the window matters @sensitive.")
        exp = (decode(attacker.access).claims or {}).get("exp")
        if not isinstance(exp, (int, float)):
            raise StepAborted("the attacker's access token has no exp")
        jump = float(exp) - self.clock() + LEEWAY + 1
        self.clock.advance(jump)
        self.out.line(
            "    "
            + self.out.style(f"clock +{duration(jump)}", "bold", "blue")
            + f"  past the token's exp and the guard's {LEEWAY:.0f} s leeway (one injected clock, shared by the"
        )
        self.out.line("    IdP and the guard: nobody sleeps)")
        expired = await self.api("attacker", "GET", "/photos", attacker.access)
        self.expect(expired.status_code == 401, "GET /photos with the expired token should answer 401")
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
        self.current.got.append(
            f"login 200; /photos {photos.status_code}; /transfers {transfer.status_code}; refresh {refresh.status_code}"
        )

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
        self.response(response, body)
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
        self.response(response, {key: body[key] for key in ("active", "sub", "scope") if key in body})
        return response

    async def api(
        self, actor: str, method: str, path: str, token: str, *, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        assert self.api_http is not None
        shown: dict[str, Any] = {"Authorization": f"Bearer {self.short(token)}", **(body or {})}
        self.request(actor, "api", method, path, shown)
        response = await self.api_http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json=dict(body) if body is not None else None
        )
        answer = _json(response)
        challenge = response.headers.get("www-authenticate")
        if challenge is not None:
            answer = dict(_CHALLENGE_PARAM.findall(challenge)) or {"WWW-Authenticate": challenge}
        self.response(response, answer)
        return response

    def _idp_path(self, path: str) -> str:
        return urlsplit(self.idp.endpoint(path.lstrip("/"))).path

    # -- printing -------------------------------------------------------------------------------

    def _title(self, step: Step) -> None:
        self.out.line()
        self.out.line(self.out.style(f"Step {step.number}/7  {step.name}", "bold", "cyan"))

    def say(self, text: str) -> None:
        self.out.line("    " + self.out.style(text, "dim"))

    def event(self, text: str) -> None:
        self.out.line("    " + self.out.style("idp event  ", "yellow") + text)

    def _failed(self, text: str) -> None:
        self.out.line("    " + self.out.style("UNEXPECTED", "bold", "red") + f"  {text}")

    def request(self, actor: str, target: str, method: str, path: str, fields: Mapping[str, Any]) -> None:
        color = "red" if actor == "attacker" else "green"
        who = self.out.style(f"{actor:>10}", color)
        line = f"  {who} → {target:<3}  {self.out.style(f'{method} {path}', 'bold')}  {self._fields(fields)}"
        self.out.line(line)

    def response(self, response: httpx.Response, fields: Mapping[str, Any]) -> None:
        status = response.status_code
        color = "green" if status < 300 else "yellow" if status < 400 else "red"
        self.out.line(f"  {'':>10} ← {'':<3}  {self.out.style(str(status), 'bold', color)}  {self._fields(fields)}")

    def short(self, token: str) -> str:
        """``eyJhbGc…(758 chars) [AT1]``: abbreviated, with the story's name for it when it has one."""
        label = self.labels.get(token)
        return f"{abbreviate(token)} [{label}]" if label else abbreviate(token)

    def _fields(self, fields: Mapping[str, Any]) -> str:
        """``name=value`` pairs, with tokens and secrets abbreviated and long values cut."""
        parts: list[str] = []
        for name, value in fields.items():
            if isinstance(value, bool):
                text = str(value).lower()
            elif name in _SECRET_FIELDS and isinstance(value, str):
                text = self.short(value)
            else:
                text = value if isinstance(value, str) else repr(value)
                text = text if len(text) <= 72 else text[:71] + "…"
            parts.append(f"{name}={text}")
        return " ".join(parts)


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
        rows.append([str(step.number), step.name, got, result])
    out.table(["#", "STEP", "WHAT HAPPENED", "RESULT"], rows)
    out.line()
    if all(step.ok for step in steps):
        out.line(
            out.style("Every step behaved as expected.", "bold", "green")
            + " Rotation turned a silent leak into a detected one; introspection on"
        )
        out.line("@sensitive routes made the revocation bite at once; short JWT lifetimes bound the rest.")
    else:
        failed = ", ".join(str(step.number) for step in steps if step.ran and not step.ok)
        skipped = sum(1 for step in steps if not step.ran)
        tail = f"; {skipped} later step(s) did not run" if skipped else ""
        out.line(out.style(f"The story did not go as told: step {failed} failed{tail}.", "bold", "red"))


def intro(out: Printer, idp: DevIdP) -> None:
    out.line(out.style("tokenguard demo: a leaked refresh token, from the leak to the lockout", "bold"))
    out.line(f"  identity provider  {idp.issuer}  (tokenguard.testing.DevIdP, in this process)")
    out.line(f"  photos API         {API_URL}  (Starlette + TokenGuard, in this process)")
    out.line("                     GET /photos     @require_scopes('read:photos')            local JWT validation")
    out.line("                     POST /transfers @sensitive @require_scopes('write:transfers')  introspected")
    out.line("                     GET /health     @public")
    out.line(f"  client             {CLIENT_ID} (public: a single-page app, no secret; its refresh tokens rotate")
    out.line("                     on every use, as OAuth 2.1 §4.3.1 requires for public clients)")
    out.line(f"  user               {USER}, scopes {SCOPES}")
    out.line("  Tokens are shown as eyJhbGc…(789 chars) [AT1]: the first characters and the length, never")
    out.line("  whole; [AT1]/[RT1] name the first access and refresh token, [AT2]/[RT2] the next pair, and so on.")


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
