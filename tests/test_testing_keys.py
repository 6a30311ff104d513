"""``tokenguard.testing``'s signing keys: every algorithm a guard accepts by default, each with the
right key type, verified by PyJWT against the JWK the key publishes; and the ``ManualClock``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from conftest import private_key
from tokenguard.config import DEFAULT_ALGORITHMS
from tokenguard.errors import ConfigurationError
from tokenguard.testing import KeyRing, ManualClock, SigningKey
from tokenguard.testing._keys import ALGORITHMS, thumbprint

_EC_KEYS: dict[str, ec.EllipticCurvePrivateKey] = {}


def ec_key(curve: type[ec.EllipticCurve]) -> ec.EllipticCurvePrivateKey:
    if curve.__name__ not in _EC_KEYS:
        _EC_KEYS[curve.__name__] = ec.generate_private_key(curve())
    return _EC_KEYS[curve.__name__]


def key_for(alg: str) -> Any:
    """A private key of the type ``alg`` needs (the RSA key is the session's cached one)."""
    if alg.startswith(("RS", "PS")):
        return private_key("rsa")
    curves: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
    if alg in curves:
        return ec_key(curves[alg])
    return private_key("ed25519")


def verify(token: str, jwk: dict[str, Any]) -> dict[str, Any]:
    """Verify as a resource server would: with the published JWK, for the alg it names."""
    public = jwt.PyJWK(jwk)
    return jwt.decode(token, public.key, algorithms=[jwk["alg"]], audience="api")


def test_every_default_algorithm_has_a_key_type() -> None:
    assert set(ALGORITHMS) == set(DEFAULT_ALGORITHMS)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_each_algorithm_signs_and_verifies_against_its_public_jwk(alg: str) -> None:
    key = SigningKey(alg, key_for(alg), kid=f"k-{alg}")
    jwk = key.public_jwk()
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (f"k-{alg}", alg, "sig")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()
    token = jwt.encode({"sub": "alice", "aud": "api"}, key.private, algorithm=key.alg, headers={"kid": key.kid})
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert verify(token, jwk)["sub"] == "alice"


@pytest.mark.parametrize(
    ("alg", "kty", "crv"), [("ES384", "EC", "P-384"), ("ES512", "EC", "P-521"), ("EdDSA", "OKP", "Ed25519")]
)
def test_published_jwk_names_the_curve(alg: str, kty: str, crv: str) -> None:
    jwk = SigningKey(alg, key_for(alg)).public_jwk()
    assert (jwk["kty"], jwk["crv"]) == (kty, crv)


def test_ed448_signs_eddsa() -> None:
    key = SigningKey("EdDSA", ed448.Ed448PrivateKey.generate())
    jwk = key.public_jwk()
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed448", "EdDSA")
    assert verify(jwt.encode({"aud": "api"}, key.private, algorithm="EdDSA"), jwk) == {"aud": "api"}


@pytest.mark.parametrize("alg", ["PS256", "ES384", "ES512", "EdDSA"])
def test_default_kid_is_the_thumbprint(alg: str) -> None:
    key = SigningKey(alg, key_for(alg))
    assert key.kid == thumbprint(key.public_jwk())
    assert len(key.kid) == 43


def test_a_signature_from_another_key_does_not_verify() -> None:
    key = SigningKey("ES384", key_for("ES384"))
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(jwt.InvalidSignatureError):
        verify(jwt.encode({"aud": "api"}, other, algorithm="ES384"), key.public_jwk())


@pytest.mark.parametrize(
    ("alg", "private", "message"),
    [
        ("PS256", lambda: private_key("ec256"), "a PS256 signing key must be an RSA private key of at least 2048 bits"),
        ("RS512", lambda: rsa.generate_private_key(65537, 1024), "an RS512 signing key must be an RSA private key"),
        ("ES384", lambda: private_key("ec256"), "an ES384 signing key must be an EC P-384 private key"),
        ("ES512", lambda: ec_key(ec.SECP384R1), "an ES512 signing key must be an EC P-521 private key"),
        ("ES256", lambda: private_key("ed25519"), "an ES256 signing key must be an EC P-256 private key"),
        ("EdDSA", lambda: private_key("rsa"), "an EdDSA signing key must be an Ed25519 or Ed448 private key"),
        ("EdDSA", lambda: ed25519.Ed25519PrivateKey.generate().public_key(), "an EdDSA signing key must be"),
        ("HS256", lambda: private_key("rsa"), "signing algorithm must be one of"),
        ("none", lambda: private_key("rsa"), "signing algorithm must be one of"),
        ("eddsa", lambda: private_key("ed25519"), "signing algorithm must be one of"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused(alg: str, private: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SigningKey(alg, private())


def test_kid_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="kid must be a string"):
        SigningKey("RS256", private_key("rsa"), kid=7)  # type: ignore[arg-type]


def test_jwk_extra_adds_replaces_and_leaves_out_members() -> None:
    extra = {"alg": None, "x5t": "abc", "use": "enc", "key_ops": ["verify"]}
    key = SigningKey("ES256", private_key("ec256"), kid="ec-1", jwk_extra=extra)
    jwk = key.public_jwk()
    assert "alg" not in jwk
    assert (jwk["kid"], jwk["x5t"], jwk["use"], jwk["key_ops"]) == ("ec-1", "abc", "enc", ["verify"])
    assert SigningKey("ES256", private_key("ec256"), jwk_extra={"kid": None}).public_jwk().keys() == {
        "kty",
        "crv",
        "x",
        "y",
        "alg",
        "use",
    }
    # The key keeps its own copy: neither the mapping given nor a published JWK changes it.
    extra["x5t"] = "changed"
    jwk["key_ops"].append("sign")
    assert key.public_jwk()["x5t"] == "abc"
    assert key.public_jwk()["key_ops"] == ["verify"]
    # A key file keeps the key, its alg and kid only.
    assert key.private_jwk()["alg"] == "ES256"
    assert "x5t" not in key.private_jwk()


@pytest.mark.parametrize("member", ["kty", "n", "e", "crv", "x", "y", "d", "p", "k"])
def test_jwk_extra_cannot_change_the_key(member: str) -> None:
    for value in ("forged", None):
        with pytest.raises(ConfigurationError, match=f"cannot set or remove '{member}'"):
            SigningKey("RS256", private_key("rsa"), jwk_extra={member: value})


@pytest.mark.parametrize(("extra", "message"), [([("alg", None)], "must be a mapping"), ({1: "x"}, "must be strings")])
def test_jwk_extra_must_be_a_mapping_of_names(extra: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SigningKey("RS256", private_key("rsa"), jwk_extra=extra)


def test_keys_stay_frozen_and_hashable() -> None:
    key = SigningKey("EdDSA", private_key("ed25519"), jwk_extra={"alg": None})
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.kid = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        key.jwk_extra["alg"] = "EdDSA"  # type: ignore[index]
    assert hash(key) == hash(dataclasses.replace(key))
    assert dataclasses.replace(key, jwk_extra={}).public_jwk()["alg"] == "EdDSA"


@pytest.mark.parametrize("alg", ["PS384", "ES384", "ES512", "EdDSA"])
def test_generate_makes_a_key_of_the_right_type(alg: str) -> None:
    key = SigningKey.generate(alg, kid="fresh")
    assert (key.alg, key.kid) == (alg, "fresh")
    assert verify(jwt.encode({"aud": "api"}, key.private, algorithm=alg), key.public_jwk()) == {"aud": "api"}


def test_generate_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(ConfigurationError, match="signing algorithm must be one of"):
        SigningKey.generate("HS256")


def test_key_ring_round_trips_every_algorithm_through_a_key_file(tmp_path: Any) -> None:
    ring = KeyRing(SigningKey(alg, key_for(alg)) for alg in ALGORITHMS)
    assert ring.algorithms == ALGORITHMS
    ring.save(tmp_path / "keys.json")
    loaded = KeyRing.load(tmp_path / "keys.json")
    assert loaded.kids == ring.kids
    assert loaded.to_jwks() == ring.to_jwks()
    for alg in ALGORITHMS:
        token = jwt.encode({"aud": "api"}, loaded.key_for(alg).private, algorithm=alg)
        assert verify(token, ring.key_for(alg).public_jwk()) == {"aud": "api"}


def test_key_file_with_a_key_of_the_wrong_curve_is_refused() -> None:
    jwk = SigningKey("ES384", key_for("ES384")).private_jwk()
    with pytest.raises(ConfigurationError, match="an ES256 signing key must be an EC P-256 private key"):
        KeyRing.from_jwks({"keys": [{**jwk, "alg": "ES256"}]})


def test_key_ring_generate_takes_algorithms() -> None:
    ring = KeyRing.generate(["ES384", "EdDSA"])
    assert ring.algorithms == ("ES384", "EdDSA")
    assert [key["alg"] for key in ring.to_jwks()["keys"]] == ["ES384", "EdDSA"]
    with pytest.raises(ConfigurationError, match="not the string"):
        KeyRing.generate("ES384")
    with pytest.raises(ConfigurationError, match="more than one ES384 key"):
        KeyRing.generate(["ES384", "ES384"])
    with pytest.raises(ConfigurationError, match="at least one signing key"):
        KeyRing.generate([])


def test_key_ring_holds_signing_keys_only() -> None:
    with pytest.raises(ConfigurationError, match="holds SigningKey objects"):
        KeyRing([private_key("ec256")])


# -- ManualClock --------------------------------------------------------------------------------


def test_manual_clock_reads_moves_and_sets() -> None:
    clock = ManualClock(1_000.0)
    assert clock() == clock.now == 1_000.0
    assert clock.advance(1.5) == 1_001.5
    assert clock() == 1_001.5
    clock.now = 500
    assert (clock(), clock.now) == (500.0, 500.0)
    clock.set(2_000)
    assert clock.now == 2_000.0
    assert repr(clock) == "ManualClock(now=2000.0)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", True])
def test_manual_clock_refuses_non_finite_times(bad: Any) -> None:
    clock = ManualClock(0)
    with pytest.raises(ValueError, match="finite number of seconds"):
        clock.now = bad
    with pytest.raises(ValueError, match="finite number of seconds"):
        clock.advance(bad)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    assert clock.now == 0.0
