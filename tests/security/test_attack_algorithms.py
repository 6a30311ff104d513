"""Attacks on the signature algorithm: alg none, HMAC keyed with the public key, alg/key confusion,
ECDSA psychic signatures, signature stripping and algorithm downgrade (RFC 8725 §2.1, §3.1, §3.2, §3.3).

Each test sends the attack through a real Starlette app guarded by TokenGuard and asserts the exact
status, RFC 6750 ``error`` code and refusal reason; a control shows the same app accepts the real token.
"""

from __future__ import annotations

import pytest
from attack_kit import (
    assert_ok,
    assert_refused,
    attack_target,
    header,
    hmac_token,
    rsa_public_bytes,
    segment,
    sign_segments,
    signed,
)
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Issuer, b64url, private_key
from tokenguard.config import DEFAULT_ALGORITHMS
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

SECRET = b"a-shared-secret-of-at-least-32-bytes!"
# The order n of the P-256 group (SEC 2 §2.4.2): r = s = n is as "psychic" as r = s = 0.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "NoNe", "none "])
@pytest.mark.parametrize(
    ("signature", "why"),
    [("", "malformed_token"), ("real", "disallowed_alg"), ("junk", "disallowed_alg")],
    ids=["unsigned", "with-real-signature", "with-junk-signature"],
)
def test_alg_none_in_every_casing_is_refused(
    idp: Issuer, clock: ManualClock, alg: str, signature: str, why: str
) -> None:
    """RFC 8725 §2.1/§3.1 (alg "none" class, e.g. CVE-2018-1000531): "none" in any casing is never accepted."""
    head, body = segment(header(alg=alg)), segment(idp.claims())
    sig = {"": "", "real": signed(idp, header(), idp.claims()).split(".")[2], "junk": b64url(b"\x00" * 32)}[signature]
    with attack_target(clock) as target:
        assert_refused(target, target.get(f"{head}.{body}.{sig}"), 401, "invalid_token", why)
        assert_ok(target, target.get(idp.token()))


@pytest.mark.parametrize("encoding", ["pem", "pem-no-newline", "pkcs1-pem", "der", "der-newline"])
@pytest.mark.parametrize("kid", ["rsa-1", None], ids=["kid", "no-kid"])
def test_hs256_keyed_with_the_rsa_public_key_is_refused(
    idp: Issuer, clock: ManualClock, encoding: str, kid: str | None
) -> None:
    """RFC 8725 §2.1, CVE-2015-9235 / CVE-2022-29217 class: HS256 "signed" with the public key is refused."""
    key = {
        "pem": rsa_public_bytes("pem"),
        "pem-no-newline": rsa_public_bytes("pem").rstrip(b"\n"),
        "pkcs1-pem": rsa_public_bytes("pkcs1-pem"),
        "der": rsa_public_bytes("der"),
        "der-newline": rsa_public_bytes("der") + b"\n",
    }[encoding]
    token = hmac_token(idp, key, kid=kid)
    with attack_target(clock) as target:
        # HMAC is not on the default allow-list at all.
        assert_refused(target, target.get(token), 401, "invalid_token", "disallowed_alg")
    hs = {"algorithms": [*DEFAULT_ALGORITHMS, "HS256"], "shared_secret": SECRET}
    with attack_target(clock, **hs) as target:
        # With HS256 enabled, the HMAC key is the configured secret, never a JWKS key.
        assert_refused(target, target.get(token), 401, "invalid_token", "bad_signature")
        assert_ok(target, target.get(hmac_token(idp, SECRET, kid=kid)))


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512", "RS384", "RS512"])
def test_rsa_key_published_for_rs256_is_not_used_with_another_rsa_alg(
    idp: Issuer, clock: ManualClock, alg: str
) -> None:
    """RFC 8725 §3.1 / RFC 7517 §4.4: a JWK with alg RS256 verifies RS256 only, not PS*/RS384 with the same key."""
    idp.republish("rsa-1", alg="RS256")
    with attack_target(clock) as target:
        assert_refused(target, target.get(idp.token("rsa-1", alg=alg)), 401, "invalid_token", "key_mismatch")
        assert_ok(target, target.get(idp.token("rsa-1")))


@pytest.mark.parametrize(
    ("alg", "key_kind"),
    [("RS256", "rsa"), ("PS256", "rsa"), ("RS512", "rsa"), ("ES384", "ec384"), ("EdDSA", "ed25519")],
)
def test_ec_kid_with_an_rsa_or_other_alg_is_refused(idp: Issuer, clock: ManualClock, alg: str, key_kind: str) -> None:
    """RFC 8725 §3.1 (alg/key confusion): the EC P-256 key named by kid never verifies RS*/PS*/ES384/EdDSA."""
    with attack_target(clock) as target:
        token = idp.token("ec-1", alg=alg, key=private_key(key_kind))
        assert_refused(target, target.get(token), 401, "invalid_token", "key_mismatch")
        assert_ok(target, target.get(idp.token("ec-1")))


def _raw_ecdsa(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.parametrize(
    "signature",
    [_raw_ecdsa(0, 0), _raw_ecdsa(P256_ORDER, P256_ORDER), _raw_ecdsa(0, 1), _raw_ecdsa(1, 0), b"\x00" * 63],
    ids=["r=s=0", "r=s=n", "r=0", "s=0", "short-zeros"],
)
@pytest.mark.parametrize("kid", ["ec-1", None], ids=["kid", "no-kid"])
def test_ecdsa_psychic_signature_is_refused(idp: Issuer, clock: ManualClock, signature: bytes, kid: str | None) -> None:
    """CVE-2022-21449 ("psychic signatures", RFC 8725 §3.3): an ES256 signature with r or s 0 (or n) never verifies."""
    head, body = segment(header(alg="ES256", kid=kid)), segment(idp.claims())
    with attack_target(clock) as target:
        response = target.get(f"{head}.{body}.{b64url(signature)}")
        assert_refused(target, response, 401, "invalid_token", "bad_signature")
        assert_ok(target, target.get(idp.token("ec-1")))


def test_ecdsa_signature_from_another_p256_key_is_refused(idp: Issuer, clock: ManualClock) -> None:
    """RFC 8725 §3.3: a well-formed ES256 signature by a key the issuer does not publish fails under kid ec-1."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = sign_segments(segment(header(alg="ES256", kid="ec-1")), segment(idp.claims()), attacker, "ES256")
    with attack_target(clock) as target:
        assert_refused(target, target.get(token), 401, "invalid_token", "bad_signature")


@pytest.mark.parametrize(
    ("shape", "why"),
    [("{h}.{p}.", "malformed_token"), ("{h}.{p}", "unsupported_token"), ("{h}.{p}..", "unsupported_token")],
    ids=["empty-signature", "two-segments", "empty-fourth-segment"],
)
def test_signature_stripping_is_refused(idp: Issuer, clock: ManualClock, shape: str, why: str) -> None:
    """RFC 8725 §2.1, §3.3 / RFC 7515 §5.2: a JWS with its signature removed (empty or missing segment): 401."""
    head, body, _ = idp.token().split(".")
    stripped = shape.format(h=head, p=body)
    with attack_target(clock) as target:
        assert_refused(target, target.get(stripped), 401, "invalid_token", why)
        assert idp.jwks_calls == 0  # refused before any key is looked up


@pytest.mark.parametrize(
    ("alg", "kid", "key_kind"),
    [
        ("RS256", "rsa-1", "rsa"),
        ("PS256", "rsa-1", "rsa"),
        ("EdDSA", "ed-1", "ed25519"),
        ("ES384", "ec-1", "ec384"),
        ("ES512", "ec-1", "ec384"),
    ],
)
def test_algorithm_downgrade_outside_the_configured_list_is_refused(
    idp: Issuer, clock: ManualClock, alg: str, kid: str, key_kind: str
) -> None:
    """RFC 8725 §3.1: with algorithms=["ES256"], tokens under any other alg (even the issuer's RS256) are refused."""
    with attack_target(clock, algorithms=["ES256"]) as target:
        signing_alg = "ES384" if alg == "ES512" else alg  # PyJWT cannot sign ES512 with a P-384 key
        token = sign_segments(
            segment(header(alg=alg, kid=kid)), segment(idp.claims()), private_key(key_kind), signing_alg
        )
        assert_refused(target, target.get(token), 401, "invalid_token", "disallowed_alg")
        assert_refused(
            target, target.get(hmac_token(idp, rsa_public_bytes("pem"))), 401, "invalid_token", "disallowed_alg"
        )
        assert_ok(target, target.get(idp.token("ec-1")))
