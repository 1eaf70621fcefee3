"""Where a webhook may send: public http(s) addresses, unless the allow-list says more.

A webhook's URL comes from whoever registered it, and the runner sends from inside
the deployment's network: without a check, a URL could make it post to a database,
a cloud metadata service or anything else that only the inside can reach. So every
address the host resolves to must be a public one; loopback, private, link-local,
shared, multicast, reserved and unspecified addresses are refused, including IPv4
addresses carried inside IPv6 ones. `RUNNER_WEBHOOK_ALLOW` names the exceptions:
networks (CIDR) and host names, separated by spaces or commas.

The check runs at registration and again at each delivery, which then connects to
an address that was checked: a name that resolves differently a moment later
(DNS rebinding) cannot redirect the request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

import httpx

from runner.errors import ConfigurationError, JobError, PermanentError

ALLOW_ENV = "RUNNER_WEBHOOK_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The well-known NAT64 prefix (RFC 6052): on a network that runs NAT64, an address
# in it reaches the IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(PermanentError):
    """The URL is not one a webhook may send to."""


class HostUnresolved(JobError):
    """The host name did not resolve; DNS may answer later."""


@dataclass(frozen=True)
class Destination:
    """A checked URL and the addresses to connect to for it, in resolver order."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def host(self) -> str:
        return self.url.host

    def pinned_url(self, address: IPAddress) -> httpx.URL:
        """The URL with a checked address in place of the host name."""
        return self.url.copy_with(host=str(address))


@dataclass(frozen=True)
class AllowList:
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> AllowList:
        return cls.parse(os.environ.get(ALLOW_ENV, ""))

    @classmethod
    def parse(cls, text: str) -> AllowList:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in text.replace(",", " ").split():
            if _looks_like_address(item):
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigurationError(
                        f"{ALLOW_ENV}: {item!r} is not a network such as 10.0.0.0/8"
                    ) from None
            else:
                hosts.add(item.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def permits(self, host: str, address: IPAddress) -> bool:
        return host in self.hosts or any(address in n for n in self.networks)


def check(url: str, allow: AllowList | None = None) -> Destination:
    """The destination of `url`; AddressRefused when a webhook may not send there."""
    allow = AllowList.from_env() if allow is None else allow
    parsed = _parse(url)
    addresses = _resolve(parsed)

    # One address refused refuses the name: whichever the name resolves to next
    # time must be acceptable too.
    host = parsed.host.rstrip(".")
    for address in addresses:
        if not (is_public(address) or allow.permits(host, address)):
            raise AddressRefused(f"{_naming(host, address)}; {ALLOW_ENV} may allow it")
    return Destination(parsed, tuple(addresses))


def _naming(host: str, address: IPAddress) -> str:
    if host.strip("[]") == str(address):
        return f"webhook address {address} is not a public address"
    return f"webhook host {host} resolves to {address}, not a public address"


def is_public(address: IPAddress) -> bool:
    """Whether the address is globally reachable unicast, as is any IPv4 inside it."""
    if address.is_multicast or not address.is_global:
        return False
    inner = _embedded_ipv4(address)
    return inner is None or is_public(inner)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise AddressRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise AddressRefused("a webhook URL must start with http:// or https://")
    if not parsed.host:
        raise AddressRefused("a webhook URL must name a host")
    if parsed.userinfo:
        # Credentials in the URL would show wherever the URL is shown.
        raise AddressRefused("a webhook URL must not carry a user name or password")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # The socket layer would take the port modulo 65536: another port.
        raise AddressRefused(f"port {parsed.port} is not a TCP port (1 to 65535)")
    return parsed


def _resolve(url: httpx.URL) -> list[IPAddress]:
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolved(f"cannot resolve webhook host {url.host}: {exc}") from None
    # The scope of an IPv6 link-local address ("fe80::1%eth0") is cut off: such an
    # address is refused all the same.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise HostUnresolved(f"webhook host {url.host} has no address")
    return list(dict.fromkeys(addresses))


def _looks_like_address(item: str) -> bool:
    """Whether an allow-list entry is meant as an address or network."""
    return "/" in item or ":" in item or item.replace(".", "").isdigit()
