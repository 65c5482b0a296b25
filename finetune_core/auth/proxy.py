"""Trusted reverse-proxy sign-in: an identity header believed only from listed proxies.

Behind an authenticating proxy (oauth2-proxy, Authelia, a corporate gateway) the proxy
puts the signed-in person in a header such as ``X-Forwarded-Email``. Anyone can send that
header, so it counts only when the connection's peer is one of the configured proxy
addresses (``FINETUNE_TRUSTED_PROXIES``).

Streamlit 1.67 serves through uvicorn, whose proxy-headers middleware replaces the peer
with the ``X-Forwarded-For`` client when the peer is in ``FORWARDED_ALLOW_IPS`` (default
``127.0.0.1,::1``). Then the real peer is unknown, so such requests are refused with a
message for the admin (see :data:`REWRITE_HELP`). ``st.context.ip_address`` reports a
loopback peer as None; :func:`trusted_identity` takes None to mean loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# st.context.ip_address turns exactly these two peers into None
LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
UVICORN_DEFAULT_FORWARDED = "127.0.0.1,::1"
MAX_IDENTITY_CHARS = 200
REWRITE_HELP = (
    "This request came through a proxy whose address the web server replaced with the "
    "X-Forwarded-For client, so it cannot be checked. Start the dashboard with "
    "FORWARDED_ALLOW_IPS='' in its environment (the proxy's own address then reaches the "
    "app), or have the proxy not send X-Forwarded-For."
)


class ProxyConfigError(ValueError):
    """A proxy setting cannot be understood; the message says which and how to fix it."""


@dataclass(frozen=True)
class ProxyDecision:
    """The identity the header gives (``""`` when refused) and, if refused, why."""

    identity: str = ""
    reason: str = ""


def parse_proxies(raw: str | Iterable[str], where: str) -> tuple[Network, ...]:
    """Addresses or networks ("127.0.0.1, 10.0.0.0/24"); ProxyConfigError if one is not."""
    items = raw.split(",") if isinstance(raw, str) else [str(item) for item in raw]
    networks = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "*":
            raise ProxyConfigError(f"{where}: '*' would trust everybody; list the proxy's address.")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ProxyConfigError(
                f"{where}: {item!r} is not an IP address or network (e.g. 127.0.0.1 or "
                "10.0.0.0/24)."
            ) from None
    return tuple(networks)


def _peer_addresses(peer: str | None) -> tuple[Address, ...]:
    if peer is None:
        return LOOPBACK
    try:
        return (ipaddress.ip_address(peer.strip("[]")),)
    except ValueError:
        return ()


def _uvicorn_may_rewrite(proxies: tuple[Network, ...], forwarded_allow: str) -> bool:
    """Whether uvicorn trusts X-Forwarded-For from any of our proxies' addresses."""
    allowed = [item.strip() for item in forwarded_allow.split(",") if item.strip()]
    if "*" in allowed:
        return True
    for item in allowed:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            continue
        if any(p.version == network.version and p.overlaps(network) for p in proxies):
            return True
    return False


def trusted_identity(
    headers: Mapping[str, str],
    peer: str | None,
    *,
    header: str,
    proxies: tuple[Network, ...],
    forwarded_allow: str = UVICORN_DEFAULT_FORWARDED,
) -> ProxyDecision:
    """Who the proxy says this is, if the request provably came from a listed proxy.

    ``headers`` are the request's (case-insensitive lookup is the caller's mapping's job),
    ``peer`` the connection's address as Streamlit reports it (None: loopback),
    ``forwarded_allow`` uvicorn's ``FORWARDED_ALLOW_IPS``.
    """
    if not header or not proxies:
        return ProxyDecision(reason="The proxy sign-in is not configured.")
    from_proxy = any(address in p for address in _peer_addresses(peer) for p in proxies)
    if not from_proxy:
        return ProxyDecision(reason="Sign in through the organisation's sign-in proxy.")
    if _has(headers, "X-Forwarded-For") and _uvicorn_may_rewrite(proxies, forwarded_allow):
        return ProxyDecision(reason=REWRITE_HELP)
    identity = " ".join(str(_get(headers, header) or "").split())
    if not identity:
        return ProxyDecision(reason=f"The sign-in proxy sent no {header} header.")
    if len(identity) > MAX_IDENTITY_CHARS or not identity.isprintable():
        return ProxyDecision(reason=f"The sign-in proxy sent an unusable {header} header.")
    return ProxyDecision(identity=identity)


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up without case
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def _has(headers: Mapping[str, str], name: str) -> bool:
    return _get(headers, name) is not None
