"""A payments API guarded by what each token actually grants (Starlette).

A scope says "may make payments"; RFC 9396 ``authorization_details`` say "may transfer up to
500 EUR to account 12345". This API checks every transfer against the details in its token, and
asks for a fresh, strong sign-in (RFC 9470 step-up) before a new beneficiary is added.

Run it against the development identity provider, told about this API's audience and admin scope:

    tokenguard dev-idp --port 9000 --audience https://payments.example --scope payments:admin
    uvicorn examples.payments_app:app --port 8000

A client asks for a token for this API with ``resource=https://payments.example`` (RFC 8707). For
``POST /transfers`` with ``{"amount": 450, "to": "12345"}`` the token must carry::

    "authorization_details": [{"type": "payment_initiation",
                               "instructedAmount": {"amount": "500", "currency": "EUR"},
                               "creditorAccount": {"iban": "12345"}}]

which the DevIdP issues when the token request (or the authorization request) carries that
``authorization_details`` (RFC 9396 §6). 600, or another account, is refused with 403
``insufficient_scope`` and a description saying why. ``POST /beneficiaries`` needs
``payments:admin`` and a sign-in with MFA in the last 5 minutes: the DevIdP's token carries
``acr`` ``urn:tokenguard:acr:mfa`` when the request asks for it with ``acr_values``. README's
Examples section shows every request with curl.

Settings come from the environment: TOKENGUARD_ISSUER (default ``http://127.0.0.1:9000``),
TOKENGUARD_AUDIENCE (``https://payments.example``), and TOKENGUARD_CLIENT_ID and
TOKENGUARD_CLIENT_SECRET, the introspection credentials of ``@sensitive`` routes (the DevIdP's
resource-server client, ``dev-api`` / ``dev-api-secret``).
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import (
    InsufficientScope,
    RequestContext,
    TokenGuard,
    public,
    require_auth_level,
    require_authorization_details,
    require_scopes,
    sensitive,
)

#: The authentication context a beneficiary change needs (what the issuer calls multi-factor).
MFA = "urn:tokenguard:acr:mfa"


def _amount(value: Any) -> Decimal | None:
    """A positive, finite amount from JSON (a number or a numeric string); ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount > 0 else None


def covers_transfer(detail: dict[str, Any], request: RequestContext) -> bool:
    """The transfer in the body goes to the granted creditor account, within the granted amount."""
    body = request.body
    granted = detail.get("instructedAmount")
    creditor = detail.get("creditorAccount")
    if not isinstance(body, dict) or not isinstance(granted, dict) or not isinstance(creditor, dict):
        return False
    if body.get("to") != creditor.get("iban"):
        raise InsufficientScope((), "The payment authorization does not name this creditor account.")
    amount, limit = _amount(body.get("amount")), _amount(granted.get("amount"))
    if amount is None or limit is None:
        return False
    if body.get("currency", granted.get("currency")) != granted.get("currency"):
        raise InsufficientScope((), "The payment authorization is for another currency.")
    if amount > limit:
        raise InsufficientScope((), "The amount exceeds what the payment authorization allows.")
    return True


def lists_account(detail: dict[str, Any], request: RequestContext) -> bool:
    """The account in the path is one the account-information grant lists."""
    accounts = detail.get("accounts")
    return isinstance(accounts, list) and request.path_params.get("account_id") in accounts


@sensitive  # introspected on every call, and the JSON body is read for the check (then replayed)
@require_authorization_details("payment_initiation", check=covers_transfer)
async def transfer(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"transferred": body["amount"], "to": body["to"], "by": request.user.identity})


@require_authorization_details("account_information", check=lists_account)
async def balance(request: Request) -> JSONResponse:
    return JSONResponse({"account": request.path_params["account_id"], "balance": "1234.56", "currency": "EUR"})


@require_auth_level(acr_values=[MFA], max_age=300)  # signed in with MFA within the last 5 minutes
@require_scopes("payments:admin")
async def add_beneficiary(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"added": body.get("iban"), "by": request.user.identity}, status_code=201)


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(*, issuer: str, audience: str, **guard_options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/transfers", transfer, methods=["POST"]),
            Route("/accounts/{account_id}/balance", balance),
            Route("/beneficiaries", add_beneficiary, methods=["POST"]),
            Route("/health", health),
        ]
    )
    guard_options.setdefault("resource_metadata", {"resource_name": "Payments API"})
    app.add_middleware(TokenGuard, issuer=issuer, audience=audience, **guard_options)
    return app


app = create_app(
    issuer=os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000"),
    audience=os.environ.get("TOKENGUARD_AUDIENCE", "https://payments.example"),
    client_id=os.environ.get("TOKENGUARD_CLIENT_ID", "dev-api"),
    client_secret=os.environ.get("TOKENGUARD_CLIENT_SECRET", "dev-api-secret"),
)
