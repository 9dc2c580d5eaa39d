"""Access tokens: pinned algorithm, audience, issuer, expiry, key rotation and the JWKS."""

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from currencyex.kernel.errors import InvalidToken
from currencyex.platform.security.tokens import (
    UNKNOWN_KID_SECONDS,
    JwksVerifier,
    TokenIssuer,
    generate_key,
    load_keys,
    unverified_expiry,
)

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def now_is_when_the_test_runs() -> None:
    """NOW as the test starts: verifying checks a token's expiry against the real clock, and a
    long session would otherwise outlive the tokens its first tests issue."""
    global NOW
    NOW = datetime.now(UTC)


def issuer(folder, **kwargs) -> TokenIssuer:
    options = {"issuer": "currencyex", "audience": "currencyex-api", "ttl_seconds": 900, **kwargs}
    return TokenIssuer(load_keys(folder), **options)


def b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_issued_token_carries_every_required_claim_and_verifies(tmp_path):
    tokens = issuer(tmp_path)
    token = tokens.issue(subject="user-1", role="CUSTOMER", now=NOW)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA"
    assert header["kid"] == tokens.jwks()["keys"][0]["kid"]
    assert set(claims) == {"iss", "aud", "sub", "role", "exp", "iat", "jti"}
    assert tokens.verify(token).sub == "user-1"


def test_the_expiry_of_a_token_is_read_without_a_check(tmp_path):
    token = issuer(tmp_path, ttl_seconds=60).issue(subject="user-1", role="CUSTOMER", now=NOW)
    assert unverified_expiry(token) == int((NOW + timedelta(seconds=60)).timestamp())
    assert unverified_expiry("not.a.jwt") is None
    assert unverified_expiry(f"{b64({'alg': 'none'})}.{b64({'sub': 'x'})}.") is None


def test_alg_none_token_is_refused(tmp_path):
    tokens = issuer(tmp_path)
    kid = tokens.jwks()["keys"][0]["kid"]
    claims = jwt.decode(
        tokens.issue(subject="u", role="ADMIN", now=NOW), options={"verify_signature": False}
    )
    forged = f"{b64({'alg': 'none', 'kid': kid, 'typ': 'JWT'})}.{b64(claims)}."
    with pytest.raises(InvalidToken):
        tokens.verify(forged)


def test_token_signed_by_an_unknown_key_is_refused(tmp_path):
    tokens = issuer(tmp_path / "ours")
    kid = tokens.jwks()["keys"][0]["kid"]
    stranger = Ed25519PrivateKey.generate()
    claims = jwt.decode(
        tokens.issue(subject="u", role="ADMIN", now=NOW), options={"verify_signature": False}
    )
    forged = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": kid})
    with pytest.raises(InvalidToken):
        tokens.verify(forged)


def test_hmac_token_keyed_with_the_public_key_is_refused(tmp_path):
    tokens = issuer(tmp_path)
    kid = tokens.jwks()["keys"][0]["kid"]
    claims = jwt.decode(
        tokens.issue(subject="u", role="ADMIN", now=NOW), options={"verify_signature": False}
    )
    public_x = tokens.jwks()["keys"][0]["x"].encode()
    forged = jwt.encode(claims, public_x * 2, algorithm="HS256", headers={"kid": kid})
    with pytest.raises(InvalidToken):
        tokens.verify(forged)


def test_wrong_audience_and_wrong_issuer_are_refused(tmp_path):
    other_audience = issuer(tmp_path, audience="another-api")
    other_issuer = issuer(tmp_path, issuer="someone-else")
    ours = issuer(tmp_path)
    for foreign in (other_audience, other_issuer):
        with pytest.raises(InvalidToken):
            ours.verify(foreign.issue(subject="u", role="CUSTOMER", now=NOW))


def test_expired_token_is_refused(tmp_path):
    tokens = issuer(tmp_path, ttl_seconds=60)
    token = tokens.issue(subject="u", role="CUSTOMER", now=NOW - timedelta(minutes=5))
    with pytest.raises(InvalidToken):
        tokens.verify(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 5000, "Bearer"])
def test_garbage_is_refused(tmp_path, garbage):
    with pytest.raises(InvalidToken):
        issuer(tmp_path).verify(garbage)


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(tmp_path):
    before = issuer(tmp_path)
    old_token = before.issue(subject="u", role="CUSTOMER", now=NOW)
    new_key = generate_key(tmp_path)
    after = issuer(tmp_path)
    assert after.verify(old_token).sub == "u"
    new_token = after.issue(subject="u", role="CUSTOMER", now=NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert {key["kid"] for key in after.jwks()["keys"]} == {
        before.jwks()["keys"][0]["kid"],
        new_key.kid,
    }


def test_jwks_publishes_public_keys_only(tmp_path):
    keys = issuer(tmp_path).jwks()["keys"]
    assert keys[0]["kty"] == "OKP"
    assert keys[0]["crv"] == "Ed25519"
    assert "d" not in keys[0]
    jwk = jwt.PyJWK(keys[0])
    token = issuer(tmp_path).issue(subject="u", role="CUSTOMER", now=NOW)
    assert jwt.decode(token, jwk.key, algorithms=["EdDSA"], audience="currencyex-api")["sub"] == "u"


def test_processes_starting_together_on_an_empty_folder_share_one_first_key(tmp_path):
    # Separate interpreters, as separate `serve` and `worker` processes would be, each ready
    # and waiting (imports done) until all are let go at once.
    script = """
import sys, time
from pathlib import Path
from currencyex.platform.security.tokens import load_keys
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
print(",".join(key.kid for key in load_keys(Path(sys.argv[1]))), flush=True)
"""
    go = tmp_path / "go"
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "keys"), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for start in starts:
        assert start.stdout is not None
        assert start.stdout.readline().strip() == "ready"
    go.touch()
    kids = {start.communicate(timeout=60)[0].strip() for start in starts}
    assert all(start.returncode == 0 for start in starts)
    assert len(kids) == 1
    assert [path.stem for path in (tmp_path / "keys").glob("*.pem")] == list(kids)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signed_with(key) -> str:
    """A valid token signed by `key` (a SigningKey), whichever key the issuer signs with."""
    claims = {
        "iss": "currencyex",
        "aud": "currencyex-api",
        "sub": "u",
        "role": "CUSTOMER",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 900,
        "jti": "j",
    }
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


def following(folder, ticks: Ticks, reload_seconds: float = 30.0) -> TokenIssuer:
    """An issuer whose ring follows `folder`, as the app builds it."""
    options = {"issuer": "currencyex", "audience": "currencyex-api", "ttl_seconds": 900}
    return TokenIssuer(
        load_keys(folder), folder=folder, reload_seconds=reload_seconds, monotonic=ticks, **options
    )


def test_a_removed_key_file_stops_verifying_its_tokens_within_the_reload_interval(tmp_path):
    ticks = Ticks()
    old = load_keys(tmp_path)[0]
    generate_key(tmp_path)  # a newer key signs; the old one only verifies
    tokens = following(tmp_path, ticks)
    old_token = signed_with(old)
    new_token = tokens.issue(subject="u", role="CUSTOMER", now=NOW)
    assert tokens.verify(old_token).sub == "u"  # verified once: now in the verified cache

    (tmp_path / f"{old.kid}.pem").unlink()
    ticks.now += 29.0  # within the interval the folder is not looked at
    assert tokens.verify(old_token).sub == "u"
    ticks.now += 1.0
    with pytest.raises(InvalidToken):
        tokens.verify(old_token)
    assert tokens.verify(new_token).sub == "u"
    assert old.kid not in {key["kid"] for key in tokens.jwks()["keys"]}


def test_a_key_file_added_verifies_and_signs_within_the_reload_interval(tmp_path):
    ticks = Ticks()
    tokens = following(tmp_path, ticks, reload_seconds=5.0)
    added = generate_key(tmp_path)  # another process rotates the key and signs with it
    elsewhere = issuer(tmp_path).issue(subject="u", role="CUSTOMER", now=NOW)

    with pytest.raises(InvalidToken):  # not looked for yet: the interval has not passed
        tokens.verify(elsewhere)
    ticks.now += 5.0
    assert tokens.verify(elsewhere).sub == "u"
    signed = tokens.issue(subject="u", role="CUSTOMER", now=NOW)
    assert jwt.get_unverified_header(signed)["kid"] == added.kid


def test_a_folder_emptied_gets_a_new_first_key_and_refuses_every_old_token(tmp_path):
    ticks = Ticks()
    tokens = following(tmp_path, ticks, reload_seconds=1.0)
    old_token = tokens.issue(subject="u", role="CUSTOMER", now=NOW)
    for path in tmp_path.glob("*.pem"):
        path.unlink()
    ticks.now += 1.0
    with pytest.raises(InvalidToken):
        tokens.verify(old_token)
    assert [path.stem for path in tmp_path.glob("*.pem")] == [
        key["kid"] for key in tokens.jwks()["keys"]
    ]
    assert tokens.verify(tokens.issue(subject="u", role="CUSTOMER", now=NOW)).sub == "u"


def test_an_unreadable_new_key_file_is_skipped_while_removals_still_apply(tmp_path):
    ticks = Ticks()
    first = load_keys(tmp_path)[0]
    second = generate_key(tmp_path)
    tokens = following(tmp_path, ticks, reload_seconds=1.0)
    first_token = signed_with(first)
    assert tokens.verify(first_token).sub == "u"
    (tmp_path / f"{first.kid}.pem").unlink()
    (tmp_path / "zz-not-a-key.pem").write_text("garbage")
    ticks.now += 1.0
    with pytest.raises(InvalidToken):
        tokens.verify(first_token)
    assert [key["kid"] for key in tokens.jwks()["keys"]] == [second.kid]


def test_a_folder_left_with_only_unreadable_files_gets_a_key_and_refuses_the_old(tmp_path):
    ticks = Ticks()
    tokens = following(tmp_path, ticks, reload_seconds=1.0)
    old_token = tokens.issue(subject="u", role="CUSTOMER", now=NOW)
    for path in tmp_path.glob("*.pem"):
        path.unlink()
    (tmp_path / "broken.pem").write_text("garbage")
    ticks.now += 1.0
    with pytest.raises(InvalidToken):
        tokens.verify(old_token)
    assert tokens.verify(tokens.issue(subject="u", role="CUSTOMER", now=NOW)).sub == "u"


class Jwks:
    """The auth service's JWKS as another process fetches it; counts the fetches."""

    def __init__(self, source: TokenIssuer) -> None:
        self.source = source
        self.fetches = 0
        self.down = False

    async def __call__(self) -> dict:
        self.fetches += 1
        if self.down:
            raise ConnectionError("auth service unreachable")
        return self.source.jwks()


def jwks_verifier(jwks: Jwks, clock: list[float], **kwargs) -> JwksVerifier:
    options = {"issuer": "currencyex", "audience": "currencyex-api", **kwargs}
    return JwksVerifier(jwks, monotonic=lambda: clock[0], **options)


async def test_another_process_verifies_tokens_with_the_published_keys(tmp_path):
    auth = issuer(tmp_path)
    jwks, clock = Jwks(auth), [0.0]
    verifier = jwks_verifier(jwks, clock)
    token = auth.issue(subject="u", role="CUSTOMER", now=NOW)
    assert (await verifier.verify(token)).sub == "u"
    assert (await verifier.verify(token)).sub == "u"
    assert jwks.fetches == 1  # fetched once, then kept
    forged = issuer(tmp_path / "forger").issue(subject="u", role="ADMIN", now=NOW)
    with pytest.raises(InvalidToken):
        await verifier.verify(forged)
    other_audience = issuer(tmp_path, audience="someone-else").issue(
        subject="u", role="CUSTOMER", now=NOW
    )
    with pytest.raises(InvalidToken):
        await verifier.verify(other_audience)


async def test_a_new_key_is_fetched_when_a_token_names_it_but_not_on_every_request(tmp_path):
    auth = following(tmp_path, Ticks())
    jwks, clock = Jwks(auth), [0.0]
    verifier = jwks_verifier(jwks, clock)
    await verifier.verify(auth.issue(subject="u", role="CUSTOMER", now=NOW))
    generate_key(tmp_path)
    auth.reload_keys()
    rotated = auth.issue(subject="u", role="CUSTOMER", now=NOW)
    assert (await verifier.verify(rotated)).sub == "u"  # unknown kid: fetched again at once
    assert jwks.fetches == 2
    # Made-up kids fetch at most once per UNKNOWN_KID_SECONDS.
    forged = issuer(tmp_path / "forger").issue(subject="u", role="ADMIN", now=NOW)
    for second in range(3):
        for _ in range(5):
            with pytest.raises(InvalidToken):
                await verifier.verify(forged)
        assert jwks.fetches == 2 + second
        clock[0] += UNKNOWN_KID_SECONDS


async def test_a_removed_key_stops_verifying_and_an_outage_keeps_the_known_keys(tmp_path):
    auth = following(tmp_path, Ticks())
    old_kid = auth.jwks()["keys"][0]["kid"]
    jwks, clock = Jwks(auth), [0.0]
    verifier = jwks_verifier(jwks, clock, reload_seconds=30.0)
    old_token = auth.issue(subject="u", role="CUSTOMER", now=NOW)
    assert (await verifier.verify(old_token)).sub == "u"
    generate_key(tmp_path)
    (tmp_path / f"{old_kid}.pem").unlink()
    auth.reload_keys()
    clock[0] += 30.0
    with pytest.raises(InvalidToken):
        await verifier.verify(old_token)  # the periodic fetch dropped the key
    new_token = auth.issue(subject="u", role="CUSTOMER", now=NOW)
    jwks.down = True
    clock[0] += 30.0
    assert (await verifier.verify(new_token)).sub == "u"  # known keys verify meanwhile

    fresh = jwks_verifier(Jwks(auth), [0.0])
    with pytest.raises(InvalidToken):
        await fresh.verify("not.a.jwt")  # refused without a fetch
    assert fresh._fetch.fetches == 0
    fresh._fetch.down = True
    with pytest.raises(ConnectionError):
        await fresh.verify(new_token)  # no key known yet: the outage is the answer
