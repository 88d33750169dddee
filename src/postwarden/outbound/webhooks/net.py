"""Outgoing HTTP that cannot be pointed at Postwarden's own network (no SSRF).

Every request Postwarden makes on someone else's say (a webhook endpoint's URL, an Amazon SNS
certificate or subscription URL) resolves the host, checks every address it resolves to, and
then connects to the checked address itself, never to the name again: a DNS answer that
changes between the check and the connection (rebinding) cannot slip a private address in.
The URL's host stays what TLS verifies (SNI) and what the ``Host`` header says.

Refused: loopback, private (RFC 1918, unique local), link-local, shared (100.64/10), multicast,
reserved and unspecified addresses, IPv4 inside IPv6 included, unless ``allow_private``
(``POSTWARDEN_HTTP_ALLOW_PRIVATE``) is set. ``resolve`` (``POSTWARDEN_HTTP_RESOLVE``) maps a
host and port to an address of one's choosing, as curl's ``--resolve`` does; the address is
checked all the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx

from postwarden import errors
from postwarden.settings import HTTPSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(errors.PostwardenError):
    """The request's address is not one Postwarden may reach."""


def refusal(ip: IPAddress) -> str | None:
    """Why Postwarden must not connect to ``ip`` on someone else's say; None if it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's request goes: the checked address and the name it is for."""

    url: str  # the URL with the address in place of the host
    host: str  # the URL's host (SNI, certificate)
    host_header: str
    address: str


def split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; InvalidInput for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise errors.InvalidInput(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidInput("the URL must start with http:// or https:// and name a host")
    if parts.username or parts.password:
        raise errors.InvalidInput("the URL must not carry a user name or password")
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int, settings: HTTPSettings) -> list[tuple[str, int]]:
    """The addresses to try for ``host:port`` (the ``resolve`` setting first)."""
    forced = settings.resolve.get((host, port))
    if forced is not None:
        return [forced]
    try:
        return [(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise Refused(f"{host} cannot be resolved: {exc.strerror}") from exc
    found: list[tuple[str, int]] = []
    for info in infos:
        address = str(info[4][0]).partition("%")[0]
        if (address, port) not in found:
            found.append((address, port))
    return found


async def target(url: str, settings: HTTPSettings) -> Target:
    """Resolve and check ``url``'s host: Refused when any address it resolves to may not be
    reached (a name with one private address among public ones is refused too)."""
    scheme, host, port = split(url)
    addresses = await resolve(host, port, settings)
    if not addresses:
        raise Refused(f"{host} resolves to no address")
    if not settings.allow_private:
        for address, _port in addresses:
            why = refusal(ipaddress.ip_address(address))
            if why:
                raise Refused(f"{host} resolves to {address}, {why}: not allowed")
    address, real_port = addresses[0]
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{real_port}"
    default = 443 if scheme == "https" else 80
    return Target(
        urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")),
        host,
        host if port == default else f"{host}:{port}",
        address,
    )


@cache
def _tls(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def client(settings: HTTPSettings, *, timeout: float, connections: int = 10) -> httpx.AsyncClient:
    """A client for :func:`send`: no redirects followed (a 3xx is an answer, not an
    invitation), no proxy from the environment, TLS verified against the URL's host."""
    return httpx.AsyncClient(
        verify=_tls(settings.ca_file),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes  # at most ``limit`` bytes of it


async def send(
    http: httpx.AsyncClient,
    settings: HTTPSettings,
    method: str,
    url: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    limit: int = 1024,
) -> Answer:
    """One request to ``url``'s checked address (see :func:`target`); reads at most ``limit``
    bytes of the answer. Refused, or httpx's errors (connection refused, timed out...)."""
    where = await target(url, settings)
    request = http.build_request(
        method,
        where.url,
        content=content,
        headers={**(headers or {}), "host": where.host_header},
        extensions={"sni_hostname": where.host},
    )
    response = await http.send(request, stream=True)
    try:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= limit:
                break
        return Answer(response.status_code, bytes(body[:limit]))
    finally:
        await response.aclose()


async def check_url(url: str, settings: HTTPSettings) -> None:
    """InvalidInput unless ``url`` is an http(s) URL whose host may be reached now (the same
    check is made again at every request)."""
    try:
        await target(url, settings)
    except Refused as exc:
        raise errors.InvalidInput(f"this URL is refused: {exc.message}") from exc
