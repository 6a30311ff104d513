"""Tenant-templated issuers (Microsoft Entra multi-tenant apps): the template's shape, nothing more. [core]

Entra's multi-tenant metadata (``https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration``
and ``/organizations/...``) names the issuer ``https://login.microsoftonline.com/{tenantid}/v2.0``; v1
tokens name ``https://sts.windows.net/{tenantid}/``. The issuer of one token is the template with the
literal ``{tenantid}`` replaced by the token's ``tid``. The rules a token must meet are in
``_claims.TenantIssuerCheck``; the options are checked in ``config``; here only string shapes.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["GUID", "PLACEHOLDER", "is_template", "issuer_for", "metadata_url", "shape", "template_problem"]

#: The literal Entra's metadata puts where the tenant goes.
PLACEHOLDER = "{tenantid}"
#: An Entra tenant id as Entra writes it in ``tid`` and ``iss``: a lowercase GUID (RFC 9562 §4 text form).
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: v1 tokens name ``https://sts.windows.net/{tenantid}/``, whose multi-tenant metadata Entra serves at
#: login.microsoftonline.com: the "common" v1 document names exactly that template as its issuer.
_V1_HOST = "sts.windows.net"
_V1_METADATA = "https://login.microsoftonline.com/common/.well-known/openid-configuration"


def is_template(issuer: str) -> bool:
    """Whether ``issuer`` is a tenant template (holds the literal ``{tenantid}``)."""
    return PLACEHOLDER in issuer


def template_problem(issuer: str) -> str | None:
    """Why ``issuer`` is not a usable template; ``None`` when it is.

    ``{tenantid}`` must occur once, as one whole path segment (never in the host, the query or beside
    other text), and no other brace may appear: a token's issuer is then exactly one path segment away
    from the template, and a ``tid`` (a GUID, never a ``/``) can fill only that segment.
    """
    if issuer.count(PLACEHOLDER) != 1 or issuer.count("{") != 1 or issuer.count("}") != 1:
        return f"must hold {PLACEHOLDER} exactly once and no other braces"
    try:
        parts = urlsplit(issuer)
    except ValueError:
        return "is not a valid URL"
    if PLACEHOLDER not in parts.path or PLACEHOLDER not in parts.path.split("/"):
        return f"must hold {PLACEHOLDER} as a whole path segment, e.g. https://login.microsoftonline.com/{PLACEHOLDER}/v2.0"
    return None


def shape(template: str) -> tuple[str, str]:
    """The text before and after ``{tenantid}``: an ``iss`` of this template's shape starts and ends so."""
    prefix, _, suffix = template.partition(PLACEHOLDER)
    return prefix, suffix


def issuer_for(template: str, tid: str) -> str:
    """The issuer of a token of tenant ``tid``: the template with ``{tenantid}`` replaced by it."""
    return template.replace(PLACEHOLDER, tid, 1)


def metadata_url(template: str) -> str:
    """Where the metadata of a template issuer is read: the ``common`` tenant's OpenID document.

    Entra serves, and names the template as ``issuer`` in, ``https://login.microsoftonline.com/common/v2.0/
    .well-known/openid-configuration`` (v2, ``jwks_uri`` ``.../common/discovery/v2.0/keys``) and
    ``https://login.microsoftonline.com/common/.well-known/openid-configuration`` (v1: issuer
    ``https://sts.windows.net/{tenantid}/``, ``jwks_uri`` ``.../common/discovery/keys``). Other hosts
    (national clouds) are read the v2 way: the template with ``common`` for ``{tenantid}``, OpenID path
    appended.
    """
    if urlsplit(template).hostname == _V1_HOST:
        return _V1_METADATA
    return issuer_for(template, "common").rstrip("/") + "/.well-known/openid-configuration"
