"""One exception root, codes registered once, errors that carry what they are about."""

from __future__ import annotations

import pytest

import fastguard as fg
from fastguard import errors
from fastguard.testing.tokens import jwk, sign


def test_every_exception_is_a_fastguard_error_and_keeps_its_base():
    for cls in (fg.InvalidToken, fg.InvalidKey, fg.ConfigError, fg.StoreError, *errors.CODES.values()):
        assert issubclass(cls, fg.FastguardError), cls
    assert issubclass(fg.InvalidKey, ValueError) and issubclass(fg.ConfigError, ValueError)


def test_token_failure_codes_are_unique_and_complete():
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, fg.InvalidToken)]
    assert sorted(errors.CODES) == sorted(cls.code for cls in classes)
    assert len({cls.code for cls in classes}) == len(classes)
    assert all(errors.CODES[cls.code] is cls for cls in classes)


def test_missing_claim_names_the_claim_on_every_path():
    v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256", kid="a")), required_claims=("exp", "sub"))
    token = sign({"exp": 1_800_000_600}, "ES256", {"alg": "ES256", "kid": "a"})
    for _ in range(2):                                  # uncached, then from the failure cache
        with pytest.raises(fg.MissingClaim) as caught:
            v.verify(token, now=1_800_000_000)
        assert caught.value.claim == "sub" and caught.value.code == "missing_claim"


@pytest.mark.redis
def test_store_errors_wrap_redis_faults_of_reset_and_ban():
    from fastguard.redis import RedisStore
    from fastguard.testing.servers import free_port

    lim = fg.RateLimiter("5/minute", store=RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0"),
                         ban_for=60)
    assert lim.hit("k").allowed                          # decisions never raise: on_error="allow"
    for call in (lambda: lim.reset("k"), lambda: lim.ban("k", 10), lambda: lim.unban("k")):
        with pytest.raises(fg.StoreError) as caught:
            call()
        assert caught.value.__cause__ is not None
