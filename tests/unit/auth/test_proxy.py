"""Trusted reverse-proxy header: believed only from the listed proxy addresses."""

from __future__ import annotations

import pytest

from finetune_core.auth.access import AccessConfigError, load_access_settings
from finetune_core.auth.proxy import REWRITE_HELP, parse_proxies, trusted_identity

HEADER = "X-Forwarded-Email"
PROXIES = parse_proxies("10.0.0.5, 127.0.0.1", "test")


def decide(headers: dict[str, str], peer: str | None, **kwargs) -> tuple[str, str]:
    decision = trusted_identity(headers, peer, header=HEADER, proxies=PROXIES, **kwargs)
    return decision.identity, decision.reason


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.5", True),  # the listed proxy
        (None, True),  # Streamlit reports 127.0.0.1 / ::1 as None; 127.0.0.1 is listed
        ("10.0.0.6", False),  # its neighbour
        ("203.0.113.9", False),  # anybody else
        ("::ffff:10.0.0.5", False),  # an IPv6 spelling is another address
        ("not an ip", False),
    ],
)
def test_the_header_counts_only_from_a_listed_proxy(peer: str | None, trusted: bool) -> None:
    identity, reason = decide({"x-forwarded-email": "ann@x.com"}, peer, forwarded_allow="")
    assert identity == ("ann@x.com" if trusted else "")
    assert (reason == "") is trusted
    if not trusted:
        assert "sign-in proxy" in reason


def test_loopback_peer_is_untrusted_unless_listed() -> None:
    only_remote = parse_proxies("10.0.0.5", "test")
    decision = trusted_identity({HEADER: "ann@x.com"}, None, header=HEADER, proxies=only_remote,
                                forwarded_allow="")  # fmt: skip
    assert decision.identity == ""


def test_a_peer_uvicorn_may_have_rewritten_is_refused() -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default and then reports the
    # forwarded client as the peer: the real peer is unknown, so nothing is believed.
    headers = {HEADER: "ann@x.com", "X-Forwarded-For": "10.0.0.5"}
    assert decide(headers, "10.0.0.5") == ("", REWRITE_HELP)
    assert decide(headers, "10.0.0.5", forwarded_allow="*") == ("", REWRITE_HELP)
    # with FORWARDED_ALLOW_IPS='' (or not covering our proxies) the peer is the proxy itself
    assert decide(headers, "10.0.0.5", forwarded_allow="")[0] == "ann@x.com"
    assert decide(headers, "10.0.0.5", forwarded_allow="192.168.0.0/16")[0] == "ann@x.com"
    assert decide({HEADER: "ann@x.com"}, "10.0.0.5")[0] == "ann@x.com"  # no X-Forwarded-For


@pytest.mark.parametrize("value", ["", "   ", "a" * 201, "ann\x00@x.com"])
def test_a_missing_or_unusable_header_gives_nothing(value: str) -> None:
    assert decide({HEADER: value}, "10.0.0.5", forwarded_allow="")[0] == ""
    assert decide({}, "10.0.0.5", forwarded_allow="")[0] == ""


def test_proxy_settings() -> None:
    env = {"FINETUNE_TRUSTED_HEADER": HEADER, "FINETUNE_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/24"}
    settings = load_access_settings(None, env)
    assert settings.auth_mode == "proxy" and settings.trusted_header == HEADER
    assert [str(n) for n in settings.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/24"]
    secrets = {"auth": {"client_id": "c"}}
    assert load_access_settings(secrets, env).auth_mode == "oidc"  # OIDC still wins
    bad = [
        ({"FINETUNE_TRUSTED_HEADER": HEADER}, "FINETUNE_TRUSTED_PROXIES is not"),
        ({**env, "FINETUNE_TRUSTED_PROXIES": "*"}, "trust everybody"),
        ({**env, "FINETUNE_TRUSTED_PROXIES": "proxy.local"}, "not an IP address"),
        ({**env, "FINETUNE_TRUSTED_HEADER": "X Email:"}, "not a header name"),
    ]
    for environ, message in bad:
        with pytest.raises(AccessConfigError, match=message):
            load_access_settings(None, environ)
