"""The DPoP proof core (``tokenguard._dpop``): RFC 9449 §4.3 checks, RFC 7638 thumbprints, htu
normalisation (RFC 3986 §6.2.2-6.2.3) and stateless server nonces (RFC 9449 §8, §9).

Proofs are signed with real keys (``cryptography`` keys, PyJWT's JWS algorithms) and built by hand where
a test needs a header or payload no well-behaved signer would write. The RFCs' own examples are verified
with an injected ``now``. Every refusal is its own case and names the check that refused it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import pickle
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from conftest import b64url, private_key
from tokenguard import _dpop
from tokenguard._dpop import (
    DEFAULT_DPOP_ALGORITHMS,
    MAX_PROOF_BYTES,
    DPoPNonces,
    DPoPProof,
    DPoPProofRefused,
    check_algorithms,
    check_proof,
    dpop_header_values,
    jwk_thumbprint,
    normalize_htu,
)
from tokenguard.errors import ConfigurationError, InvalidDPoPProof, Reason
from tokenguard.testing import SigningKey

NOW = 1_800_000_000.0
URL = "https://api.example.com/payments"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"  # what the proof's ath is computed over
ATH = b64url(hashlib.sha256(TOKEN.encode("ascii")).digest())

# -- the RFCs' own examples -----------------------------------------------------------------------------------

#: RFC 9449 §4.1, Figure 2 (line breaks removed): a proof for the token endpoint, no ath.
RFC9449_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0Rs"
    "cEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2"
    "In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2Vu"
    "IiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
#: RFC 9449 §7.1, Figure 12: the same key, for a protected resource, with ath over the §7.1 token.
RFC9449_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0Rs"
    "cEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2"
    "In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90"
    "ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFF"
    "byJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC9449_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
#: RFC 9449 §6.1 (Figure 8): the thumbprint of the examples' key, as a bound token's cnf.jkt.
RFC9449_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
#: RFC 7638 §3.1: the example RSA key (with members the thumbprint ignores) and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
    "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
    "6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJz"
    "KnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_rfc9449_token_endpoint_proof_verifies_at_its_time() -> None:
    """RFC 9449 §4.1: the example proof passes every check at its own iat, and yields its claims and key."""
    proof = check_proof(
        RFC9449_PROOF, method="POST", url="https://server.example.com/token", access_token=None, now=1562262616
    )
    assert proof == DPoPProof(
        jkt=RFC9449_JKT,
        jti="-BwC3ESc6acc2lTc",
        iat=1562262616.0,
        htm="POST",
        htu="https://server.example.com/token",
        nonce=None,
        alg="ES256",
    )


def test_the_rfc9449_token_endpoint_proof_is_refused_when_stale() -> None:
    """The same proof 61 seconds later is outside the default ±60 s window (RFC 9449 §4.3 point 11)."""
    with pytest.raises(DPoPProofRefused) as info:
        check_proof(
            RFC9449_PROOF, method="POST", url="https://server.example.com/token", access_token=None, now=1562262677
        )
    assert info.value.check == "iat"


def test_the_rfc9449_resource_proof_verifies_with_its_access_token() -> None:
    """RFC 9449 §7.1: the resource request's proof, with ath over the example access token."""
    proof = check_proof(
        RFC9449_RESOURCE_PROOF,
        method="GET",
        url="https://resource.example.org/protectedresource",
        access_token=RFC9449_TOKEN,
        now=1562262618,
    )
    assert (proof.jkt, proof.jti, proof.htm) == (RFC9449_JKT, "e1j3V_bKic8-LAEB", "GET")


def test_the_rfc9449_resource_proof_is_refused_with_another_access_token() -> None:
    with pytest.raises(DPoPProofRefused) as info:
        check_proof(
            RFC9449_RESOURCE_PROOF,
            method="GET",
            url="https://resource.example.org/protectedresource",
            access_token=RFC9449_TOKEN + "x",
            now=1562262618,
        )
    assert info.value.check == "ath"


def test_the_rfc7638_example_thumbprint() -> None:
    """RFC 7638 §3.1: the example key's thumbprint; alg and kid are not part of it."""
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_the_rfc9449_example_key_thumbprint() -> None:
    header = json.loads(base64.urlsafe_b64decode(RFC9449_PROOF.split(".")[0] + "=="))
    assert jwk_thumbprint(header["jwk"]) == RFC9449_JKT


# -- keys and signing -----------------------------------------------------------------------------------------

_KEYS: dict[str, Any] = {}


def key_for(alg: str, slot: int = 0) -> Any:
    """A private key for ``alg``: RSA 2048 for RS*/PS* (shared with conftest), the alg's curve for ES*."""
    name = f"{alg}-{slot}"
    if name not in _KEYS:
        if alg[:2] in ("RS", "PS"):
            _KEYS[name] = private_key("rsa", slot)
        elif alg == "ES256":
            _KEYS[name] = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            _KEYS[name] = ec.generate_private_key(ec.SECP384R1())
        elif alg == "ES512":
            _KEYS[name] = ec.generate_private_key(ec.SECP521R1())
        elif alg == "EdDSA":
            _KEYS[name] = ed25519.Ed25519PrivateKey.generate()
        elif alg == "Ed448":
            _KEYS[name] = ed448.Ed448PrivateKey.generate()
        else:
            raise ValueError(alg)
    return _KEYS[name]


def _jws_algorithm(alg: str) -> Any:
    return jwt.get_algorithm_by_name(alg)


def public_jwk(key: Any, alg: str) -> dict[str, Any]:
    public = key.public_key() if hasattr(key, "public_key") else key
    return dict(_jws_algorithm(alg).to_jwk(public, as_dict=True))


def private_jwk(key: Any, alg: str) -> dict[str, Any]:
    return dict(_jws_algorithm(alg).to_jwk(key, as_dict=True))


def compact(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: Any, alg: str) -> str:
    """A compact JWS with exactly this header and payload (JSON objects, or raw bytes), signed with ``key``."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(head)}.{b64url(body)}".encode("ascii")
    return f"{signing_input.decode()}.{b64url(_jws_algorithm(alg).sign(signing_input, key))}"


_OMIT = object()


def claims_of(**changes: Any) -> dict[str, Any]:
    """Valid claims for ``GET URL`` at ``NOW`` with ath over ``TOKEN``; a change of ``_OMIT`` removes a claim."""
    claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": URL, "iat": int(NOW), "ath": ATH}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not _OMIT}


def make_proof(
    alg: str = "ES256",
    *,
    key: Any = None,
    jwk: Any = _OMIT,
    header: dict[str, Any] | None = None,
    **claim_changes: Any,
) -> str:
    """A proof signed by ``key`` (default: this alg's key) whose header carries ``jwk`` (default: its public
    key) and ``header``'s changes, over ``claims_of(**claim_changes)``."""
    key = key_for(alg) if key is None else key
    head: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key, alg) if jwk is _OMIT else jwk}
    head.update(header or {})
    head = {name: value for name, value in head.items() if value is not _OMIT}
    return compact(head, claims_of(**claim_changes), key, alg if alg in _SIGNING_ALGS else "ES256")


_SIGNING_ALGS = frozenset(DEFAULT_DPOP_ALGORITHMS) | {"HS256"}


def check(proof: str, **options: Any) -> DPoPProof:
    arguments: dict[str, Any] = {"method": "GET", "url": URL, "access_token": TOKEN, "now": NOW}
    arguments.update(options)
    return check_proof(proof, **arguments)


def refused(proof: str, **options: Any) -> DPoPProofRefused:
    with pytest.raises(InvalidDPoPProof) as info:
        check(proof, **options)
    error = info.value
    assert isinstance(error, DPoPProofRefused)
    # The checks an operator must tell apart have reasons of their own; the rest is bad_dpop_proof.
    expected = {"htu": "dpop_htu_mismatch", "htm": "dpop_htm_mismatch", "iat": "dpop_iat_out_of_window"}
    expected["ath"] = "dpop_ath_mismatch"
    assert error.reason == expected.get(error.check, Reason.BAD_DPOP_PROOF)
    assert error.status_code == 401
    assert error.error_code == "invalid_dpop_proof"
    return error


# -- accepted proofs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", DEFAULT_DPOP_ALGORITHMS)
def test_a_proof_with_each_default_algorithm_is_accepted(alg: str) -> None:
    key = key_for(alg)
    proof = check(make_proof(alg, jti="jti-1"))
    assert proof.alg == alg
    assert proof.jkt == jwk_thumbprint(public_jwk(key, alg))
    assert (proof.jti, proof.htm, proof.htu, proof.iat, proof.nonce) == ("jti-1", "GET", URL, NOW, None)


def test_an_ed448_key_signs_eddsa_proofs() -> None:
    """RFC 8037 §3.1: EdDSA with either curve."""
    key = key_for("Ed448")
    jwk = public_jwk(key, "EdDSA")
    assert jwk["crv"] == "Ed448"
    assert check(make_proof("EdDSA", key=key)).jkt == jwk_thumbprint(jwk)


def test_the_thumbprint_is_the_one_signing_keys_use_as_kid() -> None:
    """``SigningKey``'s kid is its RFC 7638 thumbprint: the two computations agree for every key type."""
    for alg in ("RS256", "ES256", "ES384", "ES512", "EdDSA"):
        signing = SigningKey.generate(alg, kid="")
        assert jwk_thumbprint(signing.public_jwk()) == signing.kid


def test_the_result_is_frozen() -> None:
    proof = check(make_proof())
    with pytest.raises(dataclasses.FrozenInstanceError):
        proof.jti = "other"  # type: ignore[misc]


def test_a_proof_without_ath_is_accepted_without_an_access_token() -> None:
    """RFC 9449 §4.2: ath goes with an access token; a token endpoint's proof has none."""
    assert check(make_proof(ath=_OMIT), access_token=None).jti


def test_ath_is_ignored_without_an_access_token() -> None:
    assert check(make_proof(ath="not-the-hash"), access_token=None).jti


def test_the_nonce_is_returned_for_the_caller_to_check() -> None:
    nonces = DPoPNonces(b"k" * 32, clock=lambda: NOW)
    proof = check(make_proof(nonce=nonces.current()))
    assert proof.nonce == nonces.current()
    assert nonces.accepts(proof.nonce)


def test_optional_whitespace_around_the_header_value_is_not_part_of_it() -> None:
    """RFC 9110 §5.5: a field value's leading and trailing whitespace is not part of it."""
    assert check(" \t" + make_proof() + " ").alg == "ES256"


def test_an_htu_with_query_and_another_spelling_matches() -> None:
    """RFC 9449 §4.3 point 9: query and fragment ignored; both URLs normalised before comparing."""
    proof = check(make_proof(htu="HTTPS://API.Example.com:443/x/../payments?amount=5#top"), url=URL + "?other=1")
    assert proof.htu == URL


def test_a_float_iat_is_a_number() -> None:
    assert check(make_proof(iat=NOW - 0.5)).iat == NOW - 0.5


@pytest.mark.parametrize("offset", [-60, 60])
def test_iat_at_the_window_edges_is_accepted(offset: float) -> None:
    assert check(make_proof(iat=NOW + offset)).iat == NOW + offset


@pytest.mark.parametrize("offset", [-65, 65])
def test_leeway_widens_the_window(offset: float) -> None:
    assert check(make_proof(iat=NOW + offset), leeway=5.0).iat == NOW + offset


def test_a_jwk_with_matching_alg_use_and_key_ops_is_accepted() -> None:
    """RFC 7517 §4.2-4.4: members that allow verifying with this algorithm are fine (as WebCrypto exports)."""
    jwk = {**public_jwk(key_for("ES256"), "ES256"), "alg": "ES256", "use": "sig", "key_ops": ["verify"], "ext": True}
    assert check(make_proof(jwk=jwk)).jkt == jwk_thumbprint(jwk)


def test_a_jti_of_the_maximum_length_is_accepted() -> None:
    assert len(check(make_proof(jti="j" * _dpop.MAX_JTI_CHARS)).jti) == 256


def test_a_narrowed_allow_list_still_accepts_its_algorithms() -> None:
    assert check(make_proof("ES256"), algorithms=frozenset({"ES256"})).alg == "ES256"


# -- refused proofs: one case per check -----------------------------------------------------------------------

#: Client-chosen values that must never reach a description.
SECRET_JTI = "secret-jti-4f1c"
SECRET_PATH = "/secret-path-9a7b"


def _two_proofs() -> str:
    return make_proof() + "," + make_proof()


def _jwe_shaped() -> str:
    return make_proof() + ".AAAA.AAAA"


def _duplicate_member() -> str:
    header = (
        b'{"typ":"dpop+jwt","alg":"ES256","alg":"ES256","jwk":'
        + json.dumps(public_jwk(key_for("ES256"), "ES256")).encode()
        + b"}"
    )
    return compact(header, claims_of(), key_for("ES256"), "ES256")


def _padded() -> str:
    head, body, signature = make_proof().split(".")
    return f"{head}.{body}==.{signature}"


def _unsigned(alg: str) -> str:
    """alg none (or another name) with a dummy signature: parsing needs a non-empty third segment."""
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key_for("ES256"), "ES256")}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims_of()).encode())}.AAAA"


def _hs256() -> str:
    """A MAC-signed proof whose jwk is the symmetric key itself (kty oct): the classic confusion."""
    secret = b"s" * 32
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64url(secret)}}
    return compact(header, claims_of(), secret, "HS256")


def _hs256_public_jwk() -> str:
    """HS256 with a public EC jwk: refused on its algorithm before the key is looked at."""
    secret = b"s" * 32
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": public_jwk(key_for("ES256"), "ES256")}
    return compact(header, claims_of(), secret, "HS256")


def _other_key_signs() -> str:
    """The jwk names one key, another key signed."""
    return make_proof(jwk=public_jwk(key_for("ES256", 1), "ES256"))


def _tampered_payload() -> str:
    head, _, signature = make_proof().split(".")
    return f"{head}.{b64url(json.dumps(claims_of(htm='GET')).encode())}.{signature}"


def _short_signature() -> str:
    head, body, signature = make_proof().split(".")
    return f"{head}.{body}.{b64url(base64.urlsafe_b64decode(signature + '==')[:-2])}"


def _ec_jwk(**changes: Any) -> dict[str, Any]:
    """The ES256 key's public JWK with ``changes``; a change of ``_OMIT`` removes a member."""
    jwk = {**public_jwk(key_for("ES256"), "ES256"), **changes}
    return {name: value for name, value in jwk.items() if value is not _OMIT}


def _rsa_1024() -> str:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return make_proof("RS256", key=small)


def _rsa_leading_zero() -> str:
    jwk = public_jwk(key_for("RS256"), "RS256")
    jwk["n"] = b64url(b"\x00" + base64.urlsafe_b64decode(jwk["n"] + "=="))
    return make_proof("RS256", jwk=jwk)


def _off_curve() -> str:
    jwk = _ec_jwk()
    y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "=="))
    y[-1] ^= 1
    return make_proof(jwk={**jwk, "y": b64url(bytes(y))})


def _short_coordinate() -> str:
    jwk = _ec_jwk()
    return make_proof(jwk={**jwk, "x": b64url(base64.urlsafe_b64decode(jwk["x"] + "==")[1:])})


def _coordinates_split_elsewhere() -> str:
    """The same 64 octets as x (33) and y (31): the same point to a loader that concatenates them, but
    another JWK, so another thumbprint for one key (RFC 7518 §6.2.1.2-6.2.1.3: each is the full size)."""
    jwk = _ec_jwk()
    x, y = (base64.urlsafe_b64decode(jwk[name] + "==") for name in ("x", "y"))
    return make_proof(jwk={**jwk, "x": b64url(x + y[:1]), "y": b64url(y[1:])})


def _private(alg: str) -> str:
    return make_proof(alg, jwk=private_jwk(key_for(alg), alg))


#: name → (proof builder, check options, the ``check`` code that must refuse it)
REFUSALS: dict[str, tuple[Callable[[], str], dict[str, Any], str]] = {
    # size before decoding
    "oversized": (lambda: make_proof(pad="x" * MAX_PROOF_BYTES), {}, "size"),
    # RFC 9449 §4.3 point 2: one well-formed JWT
    "not a JWT": (lambda: "not-a-jwt", {}, "malformed"),
    "two proofs in one value": (_two_proofs, {}, "malformed"),
    "JWE-shaped (five segments)": (_jwe_shaped, {}, "malformed"),
    "two segments": (lambda: make_proof().rsplit(".", 1)[0], {}, "malformed"),
    "duplicate header member": (_duplicate_member, {}, "malformed"),
    "padded base64url": (_padded, {}, "malformed"),
    "non-ASCII": (lambda: make_proof() + "é", {}, "malformed"),
    "bytes, not text": (lambda: make_proof().encode(), {}, "malformed"),  # type: ignore[return-value,arg-type]
    # point 4: typ
    "typ missing": (lambda: make_proof(header={"typ": _OMIT}), {}, "typ"),
    "typ JWT": (lambda: make_proof(header={"typ": "JWT"}), {}, "typ"),
    "typ at+jwt": (lambda: make_proof(header={"typ": "at+jwt"}), {}, "typ"),
    "typ in another case": (lambda: make_proof(header={"typ": "DPoP+JWT"}), {}, "typ"),
    # point 5: alg
    "alg none": (lambda: _unsigned("none"), {}, "alg"),
    "alg HS256 with an oct key": (_hs256, {}, "alg"),
    "alg HS256 with a public key": (_hs256_public_jwk, {}, "alg"),
    "alg HS256 even when listed": (_hs256, {"algorithms": frozenset({"HS256", "ES256"})}, "alg"),
    "alg not a string": (lambda: make_proof(header={"alg": ["ES256"]}), {}, "alg"),
    "alg unknown": (lambda: _unsigned("ES256K"), {}, "alg"),
    "alg off the narrowed list": (lambda: make_proof("RS256"), {"algorithms": frozenset({"ES256"})}, "alg"),
    # RFC 7515 §4.1.11
    "crit": (lambda: make_proof(header={"crit": ["exp"], "exp": 1}), {}, "crit"),
    # point 7 and §4.2 jwk
    "jwk missing": (lambda: make_proof(header={"jwk": _OMIT}), {}, "jwk"),
    "jwk not an object": (lambda: make_proof(jwk="a-key"), {}, "jwk"),
    "private EC key": (lambda: _private("ES256"), {}, "private_key"),
    "private RSA key": (lambda: _private("RS256"), {}, "private_key"),
    "private Ed25519 key": (lambda: _private("EdDSA"), {}, "private_key"),
    "one private member": (lambda: make_proof(jwk=_ec_jwk(d="AAAA")), {}, "private_key"),
    "kty oct": (lambda: make_proof(jwk={"kty": "oct", "alg": "ES256"}), {}, "private_key"),
    # the key fits the algorithm (RFC 7518 §3.3-3.5, RFC 8037 §3.1) and allows it (RFC 7517 §4.2-4.4)
    "ES256 with a P-384 key": (lambda: make_proof("ES256", jwk=public_jwk(key_for("ES384"), "ES384")), {}, "key"),
    "ES384 signed, P-256 jwk": (lambda: make_proof("ES384", jwk=_ec_jwk()), {}, "key"),
    "RS256 with an EC key": (lambda: make_proof("RS256", jwk=_ec_jwk()), {}, "key"),
    "EdDSA with an EC key": (lambda: make_proof("EdDSA", jwk=_ec_jwk()), {}, "key"),
    "ES256 with an RSA key": (lambda: make_proof("ES256", jwk=public_jwk(key_for("RS256"), "RS256")), {}, "key"),
    "jwk alg differs": (lambda: make_proof(jwk=_ec_jwk(alg="ES384")), {}, "key"),
    "jwk use enc": (lambda: make_proof(jwk=_ec_jwk(use="enc")), {}, "key"),
    "jwk key_ops without verify": (lambda: make_proof(jwk=_ec_jwk(key_ops=["sign"])), {}, "key"),
    "unknown kty": (lambda: make_proof(jwk={"kty": "XYZ"}), {}, "key"),
    # a valid public key
    "x missing": (lambda: make_proof(jwk=_ec_jwk(x=_OMIT)), {}, "jwk"),
    "x not a string": (lambda: make_proof(jwk=_ec_jwk(x=7)), {}, "jwk"),
    "x padded": (lambda: make_proof(jwk=_ec_jwk(x=_ec_jwk()["x"] + "=")), {}, "jwk"),
    "point off the curve": (_off_curve, {}, "jwk"),
    "short coordinate": (_short_coordinate, {}, "jwk"),
    "coordinates split elsewhere": (_coordinates_split_elsewhere, {}, "jwk"),
    "RSA 1024": (_rsa_1024, {}, "jwk"),
    "RSA modulus with a leading zero": (_rsa_leading_zero, {}, "jwk"),
    # point 6: the signature
    "signed by another key": (_other_key_signs, {}, "signature"),
    "payload changed": (_tampered_payload, {}, "signature"),
    "signature truncated": (_short_signature, {}, "signature"),
    # point 3, §4.2: jti
    "jti missing": (lambda: make_proof(jti=_OMIT), {}, "jti"),
    "jti empty": (lambda: make_proof(jti=""), {}, "jti"),
    "jti a number": (lambda: make_proof(jti=12345), {}, "jti"),
    "jti too long": (lambda: make_proof(jti="j" * 257), {}, "jti"),
    # point 8: htm
    "htm missing": (lambda: make_proof(htm=_OMIT), {}, "htm"),
    "htm other method": (lambda: make_proof(htm="POST"), {}, "htm"),
    "htm lower case": (lambda: make_proof(htm="get"), {}, "htm"),
    "htm not a string": (lambda: make_proof(htm=["GET"]), {}, "htm"),
    # point 9: htu
    "htu missing": (lambda: make_proof(htu=_OMIT), {}, "htu"),
    "htu other path": (lambda: make_proof(htu="https://api.example.com" + SECRET_PATH), {}, "htu"),
    "htu other host": (lambda: make_proof(htu="https://evil.example.com/payments"), {}, "htu"),
    "htu other scheme": (lambda: make_proof(htu="http://api.example.com/payments"), {}, "htu"),
    "htu other port": (lambda: make_proof(htu="https://api.example.com:8443/payments"), {}, "htu"),
    "htu not http": (lambda: make_proof(htu="ftp://api.example.com/payments"), {}, "htu"),
    "htu relative": (lambda: make_proof(htu="/payments"), {}, "htu"),
    "htu not a string": (lambda: make_proof(htu={"url": URL}), {}, "htu"),
    "htu path with a slash encoded": (lambda: make_proof(htu=URL + "%2Fx"), {"url": URL + "/x"}, "htu"),
    "request URL unusable": (lambda: make_proof(), {"url": "not a url"}, "htu"),
    # point 11: iat
    "iat missing": (lambda: make_proof(iat=_OMIT), {}, "iat"),
    "iat a string": (lambda: make_proof(iat=str(int(NOW))), {}, "iat"),
    "iat true": (lambda: make_proof(iat=True), {}, "iat"),
    "iat too old": (lambda: make_proof(iat=NOW - 60.5), {}, "iat"),
    "iat in the future": (lambda: make_proof(iat=NOW + 60.5), {}, "iat"),
    "iat past a narrower window": (lambda: make_proof(iat=NOW - 11), {"iat_window": 10.0}, "iat"),
    "iat past the leeway": (lambda: make_proof(iat=NOW - 66), {"leeway": 5.0}, "iat"),
    "iat huge": (lambda: make_proof(iat=10**400), {}, "iat"),
    "now is NaN": (lambda: make_proof(), {"now": float("nan")}, "iat"),
    # point 12, §4.2: ath
    "ath missing": (lambda: make_proof(ath=_OMIT), {}, "ath"),
    "ath of another token": (lambda: make_proof(ath=b64url(hashlib.sha256(b"other").digest())), {}, "ath"),
    "ath padded": (lambda: make_proof(ath=ATH + "="), {}, "ath"),
    "ath hex": (lambda: make_proof(ath=hashlib.sha256(TOKEN.encode()).hexdigest()), {}, "ath"),
    "ath not a string": (lambda: make_proof(ath=1), {}, "ath"),
    "non-ASCII access token": (lambda: make_proof(), {"access_token": "tökén"}, "ath"),
    # §4.2, §8.1: nonce syntax
    "nonce a number": (lambda: make_proof(nonce=5), {}, "nonce"),
    "nonce empty": (lambda: make_proof(nonce=""), {}, "nonce"),
    "nonce with a quote": (lambda: make_proof(nonce='a"b'), {}, "nonce"),
    "nonce with a space": (lambda: make_proof(nonce="a b"), {}, "nonce"),
    "nonce too long": (lambda: make_proof(nonce="n" * 257), {}, "nonce"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_check_refuses(name: str) -> None:
    build, options, expected = REFUSALS[name]
    error = refused(build(), **options)
    assert error.check == expected, error.description


@pytest.mark.parametrize("name", ["htu other path", "jti too long", "nonce with a quote", "alg unknown"])
def test_descriptions_never_repeat_client_values(name: str) -> None:
    """Descriptions are fixed sentences: nothing of the proof, the token or the request reaches them."""
    build, options, _ = REFUSALS[name]
    proof = build()
    error = refused(proof, **options)
    text = f"{error} {error!r} {error.description}"
    for value in (proof[:20], SECRET_PATH, "jjjjjjjj", 'a"b', "ES256K", TOKEN[:12]):
        assert value not in text
    assert error.description.startswith("The DPoP proof")


def test_a_secret_jti_never_reaches_the_description() -> None:
    error = refused(make_proof(jti=SECRET_JTI, htm="POST"))
    assert error.check == "htm"
    assert SECRET_JTI not in f"{error} {error!r}"


def test_the_size_cap_applies_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """An oversized proof is refused without being parsed at all."""

    parsed: list[int] = []

    def recording_parse(token: str) -> Any:
        parsed.append(len(token))
        raise ValueError("not parsed for real in this test")

    monkeypatch.setattr(_dpop, "parse_jws", recording_parse)
    error = refused("a" * (MAX_PROOF_BYTES + 1))
    assert error.check == "size"
    assert parsed == []
    with pytest.raises(InvalidDPoPProof):
        check("a" * MAX_PROOF_BYTES)  # at the cap it is parsed: the patch above is really in the path
    assert parsed == [MAX_PROOF_BYTES]


def test_a_proof_at_the_cap_is_read() -> None:
    """The cap is inclusive: a valid proof padded to just under or at MAX_PROOF_BYTES passes."""
    pad = (MAX_PROOF_BYTES - len(make_proof(pad=""))) * 3 // 4 + 3
    while len(proof := make_proof(pad="x" * pad)) > MAX_PROOF_BYTES:
        pad -= 1
    assert MAX_PROOF_BYTES - 3 <= len(proof) <= MAX_PROOF_BYTES
    assert check(proof).alg == "ES256"


def test_every_refusal_is_an_invalid_dpop_proof_with_its_reason() -> None:
    error = DPoPProofRefused("htu", "The DPoP proof's htu claim does not match the request URL.")
    assert isinstance(error, InvalidDPoPProof)
    assert (error.reason, error.check, error.status_code) == ("dpop_htu_mismatch", "htu", 401)
    assert DPoPProofRefused("typ", "x").reason == "bad_dpop_proof"
    copied = pickle.loads(pickle.dumps(error))  # e.g. across a process pool
    assert (type(copied), copied.check, copied.description) == (DPoPProofRefused, "htu", error.description)


# -- RFC 7638 thumbprints -------------------------------------------------------------------------------------


def test_the_thumbprint_ignores_member_order_and_other_members() -> None:
    jwk = public_jwk(key_for("ES256"), "ES256")
    reordered = {"y": jwk["y"], "x": jwk["x"], "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig"}
    assert jwk_thumbprint(reordered) == jwk_thumbprint(jwk)
    canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    assert jwk_thumbprint(jwk) == b64url(hashlib.sha256(canonical.encode()).digest())


def test_the_thumbprint_of_an_okp_key() -> None:
    """RFC 8037 §2: crv, kty, x."""
    jwk = public_jwk(key_for("EdDSA"), "EdDSA")
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{jwk["x"]}"}}'
    assert jwk_thumbprint(jwk) == b64url(hashlib.sha256(canonical.encode()).digest())


def test_different_keys_have_different_thumbprints() -> None:
    first = jwk_thumbprint(public_jwk(key_for("ES256"), "ES256"))
    assert first != jwk_thumbprint(public_jwk(key_for("ES256", 1), "ES256"))
    assert len(first) == 43
    assert "=" not in first


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": 5},
        {"kty": "EC", "crv": "secp256k1", "x": "AAAA", "y": "AAAA"},
        {"kty": "OKP", "crv": "X25519", "x": "AAAA"},
        {"kty": "RSA", "n": "AAAA", "e": "AQAB="},
        {"kty": "RSA", "n": "AA+A", "e": "AQAB"},
        {"kty": "RSA", "n": "", "e": "AQAB"},
        {"n": "AAAA", "e": "AQAB"},
        {"kty": ["RSA"], "n": "AAAA", "e": "AQAB"},
    ],
    ids=["oct", "no y", "y number", "unknown curve", "X25519", "padded", "bad char", "empty", "no kty", "kty list"],
)
def test_a_malformed_or_unsupported_key_has_no_thumbprint(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_a_non_mapping_has_no_thumbprint() -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(["kty", "EC"])  # type: ignore[arg-type]


# -- htu normalisation (RFC 9449 §4.3 point 9, RFC 3986 §6.2.2-6.2.3) ------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # §6.2.2.1: scheme and host case
        ("HTTPS://API.Example.COM/Pay", "https://api.example.com/Pay"),
        ("Http://h/", "http://h/"),
        # §6.2.3: default and empty ports
        ("https://h:443/a", "https://h/a"),
        ("http://h:80/a", "http://h/a"),
        ("https://h:80/a", "https://h:80/a"),
        ("http://h:443/a", "http://h:443/a"),
        ("https://h:/a", "https://h/a"),
        ("https://h:08443/a", "https://h:8443/a"),
        # §6.2.2.1-6.2.2.2: percent-encoding
        ("https://h/a%7eb", "https://h/a~b"),
        ("https://h/%41%62%2D%5F%2e", "https://h/Ab-_."),
        ("https://h/a%2fb", "https://h/a%2Fb"),
        ("https://h/caf%c3%a9", "https://h/caf%C3%A9"),
        ("https://h/café", "https://h/caf%C3%A9"),
        ("https://h/a b", "https://h/a%20b"),
        ("https://ex%41mple.COM/", "https://example.com/"),
        ("https://h/a:b@c;d=e,f", "https://h/a:b@c;d=e,f"),
        # §6.2.2.3 (§5.2.4): dot segments
        ("https://h/a/b/c/./../../g", "https://h/a/g"),
        ("https://h/a/.", "https://h/a/"),
        ("https://h/a/..", "https://h/"),
        ("https://h/../../a", "https://h/a"),
        ("https://h/a/%2E%2E/b", "https://h/b"),
        ("https://h/a/.b/..c", "https://h/a/.b/..c"),
        ("https://h/a//b/", "https://h/a//b/"),
        # §6.2.3: empty path
        ("https://h", "https://h/"),
        ("https://h:443", "https://h/"),
        # RFC 9449 §4.3 point 9: query and fragment removed
        ("https://h/a?b=c#d", "https://h/a"),
        ("https://h/a#frag?x", "https://h/a"),
        ("https://h?x=/y", "https://h/"),
        # IP literals
        ("http://[2001:DB8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("https://[::1]:443/", "https://[::1]/"),
        ("http://192.0.2.1:80/", "http://192.0.2.1/"),
    ],
)
def test_htu_normalisation(url: str, expected: str) -> None:
    assert normalize_htu(url) == expected
    assert normalize_htu(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/a",
        "ws://h/a",
        "javascript:alert(1)",
        "",
        "/a",
        "h/a",
        "//h/a",
        "https:h/a",
        "https:/h/a",
        "https://",
        "https:///a",
        "https://:443/a",
        "https://user@h/a",
        "https://user:pw@h/a",
        "https://h:99999/a",
        "https://h:8o/a",
        "https://h:+80/a",
        "https://h:1:2/a",
        "https://h/%zz",
        "https://h/%4",
        "https://h/a%",
        "https://[::1/a",
        "https://[]/a",
        "https://[::1]x/a",
        "https://h\u212a.com/",
        "https://h h/",
        "https://h/\ud800",
        "\uff48\uff54\uff54\uff50\uff53://h/",  # full-width letters
        "https://" + "a" * _dpop.MAX_URL_CHARS,
    ],
)
def test_htu_that_is_not_an_absolute_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


def test_htu_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError):
        normalize_htu(b"https://h/")  # type: ignore[arg-type]


def test_a_long_query_does_not_count_against_the_cap() -> None:
    assert normalize_htu("https://h/a?" + "q" * 100_000) == "https://h/a"


# -- the DPoP header ------------------------------------------------------------------------------------------


def test_every_dpop_header_value_is_found() -> None:
    headers = [
        (b"dpop", b"one"),
        (b"authorization", b"DPoP t"),
        (b"DPoP", b"two"),
        (b"dpop-nonce", b"n"),
        (b"dpo", b"x"),
    ]
    assert dpop_header_values(headers) == [b"one", b"two"]
    assert dpop_header_values([]) == []
    assert dpop_header_values(iter([(b"DPOP", b"v")])) == [b"v"]


# -- the algorithm allow-list as an option --------------------------------------------------------------------


def test_check_algorithms_accepts_a_subset() -> None:
    assert check_algorithms(["ES256", "EdDSA"]) == frozenset({"ES256", "EdDSA"})
    assert check_algorithms(DEFAULT_DPOP_ALGORITHMS) == frozenset(DEFAULT_DPOP_ALGORITHMS)


@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["ES256", "HS512"], [], "ES256", ["ES256K"]])
def test_check_algorithms_refuses_others(algorithms: Any) -> None:
    with pytest.raises(ConfigurationError):
        check_algorithms(algorithms)


def test_the_default_algorithms_are_asymmetric_only() -> None:
    assert "none" not in DEFAULT_DPOP_ALGORITHMS
    assert not [alg for alg in DEFAULT_DPOP_ALGORITHMS if alg.startswith("HS")]
    assert len(DEFAULT_DPOP_ALGORITHMS) == 10


# -- server nonces (RFC 9449 §8, §9) --------------------------------------------------------------------------

SECRET = b"n" * 32


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_current_nonce_is_accepted() -> None:
    nonces = DPoPNonces(SECRET, clock=Clock())
    nonce = nonces.current()
    assert nonces.accepts(nonce)
    assert len(nonce) == 43
    assert set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_previous_windows_nonce_is_accepted_and_older_ones_are_not() -> None:
    clock = Clock(300.0 * 6_000_000)  # the start of a window
    nonces = DPoPNonces(SECRET, lifetime=300.0, clock=clock)
    first = nonces.current()
    clock.now += 299.0
    assert nonces.current() == first  # same window
    clock.now += 1.0
    second = nonces.current()
    assert second != first
    assert nonces.accepts(first)  # previous
    assert nonces.accepts(second)  # current
    clock.now += 300.0
    assert not nonces.accepts(first)  # two windows old
    assert nonces.accepts(second)


def test_a_nonce_from_another_secret_is_refused() -> None:
    clock = Clock()
    assert not DPoPNonces(SECRET, clock=clock).accepts(DPoPNonces(b"m" * 32, clock=clock).current())


def test_two_instances_sharing_a_secret_agree() -> None:
    """Two guards (or processes) with the same secret and no shared store accept each other's nonces."""
    clock = Clock()
    first, second = DPoPNonces(SECRET, clock=clock), DPoPNonces(bytearray(SECRET), clock=clock)
    assert first.current() == second.current()
    assert second.accepts(first.current())
    assert first.accepts(second.current())


def test_a_nonce_from_the_future_window_is_refused() -> None:
    clock = Clock(300.0 * 6_000_000)
    nonces = DPoPNonces(SECRET, clock=clock)
    clock.now += 600.0
    later = nonces.current()
    clock.now -= 600.0
    assert not nonces.accepts(later)


@pytest.mark.parametrize("value", [None, "", "x" * 43, "é" * 43, 43, "a" * 44])
def test_other_values_are_not_nonces(value: Any) -> None:
    assert DPoPNonces(SECRET, clock=Clock()).accepts(value) is False


def test_a_truncated_or_extended_nonce_is_refused() -> None:
    nonces = DPoPNonces(SECRET, clock=Clock())
    nonce = nonces.current()
    assert not nonces.accepts(nonce[:-1])
    assert not nonces.accepts(nonce + "A")
    assert not nonces.accepts(nonce[:-1] + ("A" if nonce[-1] != "A" else "B"))


@pytest.mark.parametrize(
    "options",
    [
        {"secret": b"short"},
        {"secret": "n" * 32},
        {"secret": SECRET, "lifetime": 0},
        {"secret": SECRET, "lifetime": -1.0},
        {"secret": SECRET, "lifetime": float("nan")},
        {"secret": SECRET, "lifetime": float("inf")},
        {"secret": SECRET, "lifetime": True},
    ],
    ids=["short secret", "str secret", "zero lifetime", "negative", "nan", "inf", "bool"],
)
def test_nonce_options_are_checked(options: dict[str, Any]) -> None:
    secret = options.pop("secret")
    with pytest.raises(ConfigurationError):
        DPoPNonces(secret, **options)


def test_the_nonce_lifetime_sets_the_window() -> None:
    clock = Clock(60.0 * 30_000_000)
    nonces = DPoPNonces(SECRET, lifetime=60.0, clock=clock)
    first = nonces.current()
    clock.now += 60.0
    assert nonces.current() != first
    assert nonces.accepts(first)
    clock.now += 60.0
    assert not nonces.accepts(first)


# -- linear time ----------------------------------------------------------------------------------------------
# As tests/test_linear_time.py: ratios only (n against 4n), minimum of batches, measured again before failing.

GROWTH = 8.0


def _seconds(func: Callable[[str], object], arg: str) -> float:
    number = 1
    while True:
        start = perf_counter()
        for _ in range(number):
            func(arg)
        elapsed = perf_counter() - start
        if elapsed >= 0.002:
            return elapsed / number
        number *= 2


def _growth(func: Callable[[str], object], small: str, large: str) -> float:
    best_small = min(_seconds(func, small) for _ in range(5))
    best_large = min(_seconds(func, large) for _ in range(5))
    return best_large / best_small


def _quietly(arg: str) -> None:
    with contextlib.suppress(ValueError):
        normalize_htu(arg)


HTU_ATTACKS: dict[str, Callable[[int], str]] = {
    "dot-dot segments": lambda n: "https://h" + "/.." * (n // 3),
    "deep then up": lambda n: "https://h" + "/a" * (n // 4) + "/.." * (n // 6),
    "encoded dots": lambda n: "https://h" + "/%2E%2e" * (n // 7),
    "percent triplets": lambda n: "https://h/" + "%41" * (n // 3),
    "reserved triplets": lambda n: "https://h/" + "%2f" * (n // 3),
    "non-ASCII": lambda n: "https://h/" + "é" * (n // 2),
    "bad percent at the end": lambda n: "https://h/" + "%41" * (n // 3) + "%",
    "long host": lambda n: "https://" + "a%41" * (n // 4) + "/",
    "colons in the port": lambda n: "https://h" + ":" * n + "/",
    "many question marks": lambda n: "https://h/" + "?" * n,
}


@pytest.fixture(params=list(HTU_ATTACKS))
def htu_attack(request: pytest.FixtureRequest) -> Callable[[int], str]:
    return HTU_ATTACKS[request.param]


def test_htu_normalisation_is_linear(htu_attack: Callable[[int], str]) -> None:
    """Adversarial URLs up to the cap: 4 times the input costs well under 8 times the time."""
    large = htu_attack(_dpop.MAX_URL_CHARS - 16)
    small = htu_attack((_dpop.MAX_URL_CHARS - 16) // 4)
    assert len(large) <= _dpop.MAX_URL_CHARS + 16
    ratios = []
    for _ in range(3):
        ratios.append(_growth(_quietly, small, large))
        if ratios[-1] < GROWTH:
            break
    assert min(ratios) < GROWTH, f"growth from n to 4n: {ratios}"


@pytest.mark.parametrize("crv", [["Ed25519"], {"a": 1}, 5, None])
@pytest.mark.parametrize("kty_alg", [("OKP", "EdDSA"), ("EC", "ES256")])
def test_a_curve_of_the_wrong_type_is_a_refusal_not_a_crash(crv: object, kty_alg: tuple[str, str]) -> None:
    """A ``crv`` that is not a string (a list, an object) is the client's malformed proof: 401, never a
    TypeError the guard would turn into a 503 with an error in the log."""
    import base64 as b64
    import json as js

    kty, alg = kty_alg

    def part(value: object) -> str:
        return b64.urlsafe_b64encode(js.dumps(value).encode()).rstrip(b"=").decode()

    header = {"typ": "dpop+jwt", "alg": alg, "jwk": {"kty": kty, "crv": crv, "x": "AAAA", "y": "AAAA"}}
    proof = f"{part(header)}.{part({'jti': 'j', 'htm': 'GET', 'htu': 'https://a.example/', 'iat': 0})}.AAAA"
    with pytest.raises(InvalidDPoPProof):
        check_proof(proof, method="GET", url="https://a.example/", access_token=None, now=0.0)
    with pytest.raises(ValueError, match=r"curve|crv|key"):
        jwk_thumbprint(header["jwk"])  # type: ignore[arg-type]
