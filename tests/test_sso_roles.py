"""The README's role table against the code's own table of roles (no node, no provider: the end-to-end proof is
tests/test_sso_browser.py and tests/test_sso_tokens.py, which take their expected values from the same table)."""

from __future__ import annotations

import pytest

from node.http.auth import NEEDS, STATIC_TOKEN_ROLES, Principal
from node.http.auth_settings import ROLES

from support.roles import readme_role_table

pytestmark = pytest.mark.security


def test_the_readme_role_table_is_what_the_code_allows() -> None:
    table = readme_role_table()
    assert set(ROLES) | {"no role of the node", "static token (http.token_env)",
                         "nobody signed in, without http.oidc"} == set(table), "one row per role"
    for role in ROLES:
        me = Principal("someone", frozenset({role}), "session")
        assert {cap: me.may(cap) for cap in NEEDS} == table[role], role
    nobody = Principal("someone", frozenset(), "session")
    assert {cap: nobody.may(cap) for cap in NEEDS} == table["no role of the node"]
    static = Principal("static-token", STATIC_TOKEN_ROLES, "token")
    assert {cap: static.may(cap) for cap in NEEDS} == table["static token (http.token_env)"]
    anonymous = Principal("anonymous", frozenset({"viewer"}), "open")  # http.show_phi: false
    assert {cap: anonymous.may(cap) for cap in NEEDS} == table["nobody signed in, without http.oidc"]


def test_a_role_map_value_may_give_several_roles() -> None:
    from node.config import parse_config
    from node.http.tokens import roles_from_claims

    oidc = parse_config({"http": {"port": 1, "tls": {"cert_file": "c", "key_file": "k"}, "oidc": {
        "issuer": "https://login.microsoftonline.com/tenant/v2.0", "client_id": "app",
        "roles_claim": "realm_access.roles", "role_map": {"Radiologist": ["phi-viewer", "operator"], "IT": "viewer"}}}
    }).http.oidc
    assert roles_from_claims({"realm_access": {"roles": ["Radiologist", "Other"]}}, oidc) == {"phi-viewer", "operator"}
    assert roles_from_claims({"realm_access": {"roles": "IT Other"}}, oidc) == {"viewer"}
    assert roles_from_claims({"roles": ["Radiologist"]}, oidc) == frozenset()  # not at roles_claim's path


def test_the_configuration_refuses_what_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import ConfigError, parse_config
    from node.http.checks import check_http_auth

    tls = {"cert_file": "c.pem", "key_file": "k.pem"}
    oidc = {"issuer": "https://login.microsoftonline.com/t/v2.0", "client_id": "app"}
    cases = {
        "http.oidc needs HTTPS": {"oidc": oidc},
        "http.show_phi applies to the open status page": {"tls": tls, "show_phi": True, "oidc": oidc},
        "http.oidc.issuer: must be an https:// URL": {"tls": tls, "oidc": {**oidc, "issuer": "http://idp.hospital"}},
        "http.oidc.role_map.G[0]: allowed: 'viewer'": {"tls": tls, "oidc": {**oidc, "role_map": {"G": "admin"}}},
        "http.oidc.scopes: must include openid": {"tls": tls, "oidc": {**oidc, "scopes": ["profile"]}},
    }
    for message, http in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            parse_config({"http": {"port": 8443, **http}})
    # behind a TLS proxy: public_url says https, and the node itself may speak plain HTTP
    assert parse_config({"http": {"port": 8081, "oidc": {**oidc, "public_url": "https://node.hospital"}}}).http.oidc
    cfg = parse_config({"http": {"port": 8443, "tls": tls, "oidc": {**oidc, "client_secret_env": "SSO_UNSET_X"}}})
    monkeypatch.delenv("SSO_UNSET_X", raising=False)
    with pytest.raises(ConfigError, match="http.oidc.client_secret_env: the environment variable SSO_UNSET_X"):
        check_http_auth(cfg)
    monkeypatch.setenv("SSO_UNSET_X", "s3cret")
    assert "login.microsoftonline.com" in check_http_auth(cfg)[0]
