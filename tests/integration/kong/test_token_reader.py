"""One bearer reader, Kong's: `fastguard.extract_token` and the Kong plugins read an Authorization value by Kong's
jwt plugin rule (ngx.re.gmatch with [[\\s*[Bb]earer\\s+(.+)]], first match) — the two copies disagreed on
"BEARER abc", "bearer\\tabc" and "Bearer  abc  ". Expected answers written from Kong's Lua rule, checked against
both the Python API and a real plugin server."""

from __future__ import annotations

import json

import pytest

import fastguard as fg
from fastguard.testing.tokens import jwk, sign

TOKEN = sign({"iss": "https://idp.example", "sub": "alice", "exp": 4_000_000_000}, "HS256",
             {"alg": "HS256", "typ": "JWT", "kid": "k1"})
JWKS = json.dumps({"keys": [jwk("oct", kid="k1", alg="HS256")]})

#: header value -> the token Kong's rule reads (None: no token)
CASES = {
    f"Bearer {TOKEN}": TOKEN,
    f"bearer {TOKEN}": TOKEN,
    f"BEARER {TOKEN}": None,                 # [Bb]earer: not upper case
    f"bearer\t{TOKEN}": TOKEN,               # \s+: a tab separates too
    f"Bearer  {TOKEN}  ": f"{TOKEN}  ",      # (.+): the rest as it is, trailing spaces included
    f"xBearer {TOKEN}": TOKEN,               # gmatch: the match need not start the value
    f"Token t, Bearer {TOKEN}": TOKEN,
    "Bearer ": None,
    f"Basic {TOKEN}": None,
}


@pytest.mark.parametrize("value", list(CASES), ids=[repr(v.replace(TOKEN, "<jwt>")) for v in CASES])
def test_extract_token_reads_a_header_as_kong_does(value):
    assert fg.extract_token({"Authorization": value}) == CASES[value]
    assert fg.bearer_token(value) == CASES[value]


def test_the_kong_plugin_reads_the_same_tokens(jwt_server):
    """Through the real plugin server: a readable, verifying token is admitted; no token is 401 "Unauthorized";
    a token read with trailing spaces does not verify (401, not "Unauthorized")."""
    client = jwt_server.client()
    try:
        iid = client.start("fastguard-jwt", {"jwks": JWKS, "uri_param_names": []})
        for value, token in CASES.items():
            outcome = client.event(iid, {"kong.request.get_headers": {"authorization": value}})
            body = outcome.exit[1] if outcome.exit else None
            if token == TOKEN:
                assert outcome.status == 200, (value, body)
            elif token is None:
                assert outcome.status == 401 and body == {"message": "Unauthorized"}, (value, body)
            else:
                assert outcome.status == 401 and body != {"message": "Unauthorized"}, (value, body)
    finally:
        client.close()
