"""Where the service may connect on a client's behalf: webhooks and input URLs, one rule.

A URL is http(s) only and parses cleanly. Its host is resolved once, and every address it
resolves to must be public: loopback, link-local (the cloud metadata service at
169.254.169.254 included), private, CGNAT, multicast, unspecified and reserved addresses
are refused, also when wrapped in an IPv4-mapped IPv6 address. An allow-listed host is
trusted as it is, whatever it resolves to (that is how a private receiver is reached).

The check runs where the connection is made, on the address then connected to: the
client's network backend resolves the name, checks each address and connects to that
literal address, so a name that resolves to a public address for a check and to
127.0.0.1 a moment later (DNS rebinding) gains nothing. The Host header and TLS SNI stay
the original name: httpcore takes both from the request, not from the socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from orchestrator.errors import BadInput
from orchestrator.settings import Settings

HTTP_SCHEMES = frozenset({"http", "https"})
# In an allow-list, this entry lets any host through (public addresses only).
ANY_HOST = "*"
# Shared address space (RFC 6598): carrier-grade NAT, not routable on the internet.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
METADATA = ipaddress.ip_address("169.254.169.254")  # AWS, GCP, Azure, OpenStack
# Names that resolve to loopback by convention (RFC 6761), refused without a lookup.
LOOPBACK_NAMES = ("localhost",)

# The pool of a plain httpx.AsyncClient (httpx's DEFAULT_LIMITS).
MAX_CONNECTIONS, MAX_KEEPALIVE_CONNECTIONS, KEEPALIVE_EXPIRY_S = 100, 20, 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses the host resolves to; asyncio's getaddrinfo by default.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class OutboundRefused(BadInput):
    """A URL that the service will not connect to; the message says why."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Which URLs one kind of outbound request may use.

    `allowed_hosts` empty with `any_host` True: any host with public addresses.
    Hosts listed are trusted whatever they resolve to; with `any_host` False only they
    are reached."""

    stage: str  # the stage errors carry: "webhook", "fetch"
    setting: str  # the allow-list's setting, for messages
    schemes: frozenset[str]
    allowed_hosts: frozenset[str]
    any_host: bool

    def trusts(self, host: str) -> bool:
        return normalise_host(host) in self.allowed_hosts


def normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _hosts(entries: Iterable[str]) -> frozenset[str]:
    return frozenset(normalise_host(entry) for entry in entries if entry.strip() != ANY_HOST)


def webhook_policy(settings: Settings) -> OutboundPolicy:
    """DH_WEBHOOK_ALLOWED_HOSTS empty: any public host; else only those hosts (or "*")."""
    listed = settings.webhook_allowed_hosts
    return OutboundPolicy(
        stage="webhook",
        setting="DH_WEBHOOK_ALLOWED_HOSTS",
        schemes=HTTP_SCHEMES,
        allowed_hosts=_hosts(listed),
        any_host=not listed or ANY_HOST in listed,
    )


def fetch_policy(settings: Settings) -> OutboundPolicy:
    """DH_URL_FETCH_ALLOWED_HOSTS empty: no URL is fetched; "*": any public host."""
    listed = settings.url_fetch_allowed_hosts
    return OutboundPolicy(
        stage="fetch",
        setting="DH_URL_FETCH_ALLOWED_HOSTS",
        # Never beyond http(s), whatever DH_URL_FETCH_ALLOWED_SCHEMES names.
        schemes=HTTP_SCHEMES & {s.lower() for s in settings.url_fetch_allowed_schemes},
        allowed_hosts=_hosts(listed),
        any_host=ANY_HOST in listed,
    )


def refusal(address: IPAddress) -> str | None:
    """Why the service must not connect to `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address == METADATA:
        return "the cloud metadata address"
    for kind, matches in (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a reserved", address.is_reserved),
        ("a shared (CGNAT)", isinstance(address, ipaddress.IPv4Address) and address in CGNAT),
        ("a private", address.is_private),
    ):
        if matches:
            return f"{kind} address"
    if not address.is_global:
        return "an address that is not public"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normalise_host(host))
    except ValueError:
        return None


def parse_url(url: str, stage: str, field: str) -> SplitResult:
    """The URL's parts; BadInput naming `field` for anything that does not parse."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port out of range raises only when read
        httpx.URL(url)  # what the client will send must parse for it too
    except (ValueError, httpx.InvalidURL) as exc:
        raise BadInput(stage, f"{field}: '{url}' is not a valid URL ({exc})") from None
    return parts


def check_url(url: str, policy: OutboundPolicy, field: str) -> SplitResult:
    """Everything that can be known before connecting: syntax, scheme, the allow-list, and
    a literal address or loopback name. The resolved address is checked on connection."""
    parts = parse_url(url, policy.stage, field)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes)) or "none"
        raise OutboundRefused(
            policy.stage, f"{field}: scheme '{scheme}' is not allowed (allowed: {allowed})"
        )
    if not parts.hostname:
        raise BadInput(policy.stage, f"{field}: '{url}' has no host")
    reason = refusal_by_name(parts.hostname or "", policy)
    if reason is not None:
        raise OutboundRefused(policy.stage, f"{field}: {reason}")
    return parts


def refusal_by_name(host: str, policy: OutboundPolicy) -> str | None:
    """Why `host` is refused before any lookup (not listed; a literal non-public address;
    a loopback name), or None when only its resolved addresses can tell."""
    host = normalise_host(host)
    if policy.trusts(host):
        return None
    if not policy.any_host:
        listed = ", ".join(sorted(policy.allowed_hosts)) or "none"
        return f"host '{host}' is not allowed ({policy.setting}: {listed})"
    address = _literal(host)
    reason = refusal(address) if address is not None else None
    if reason is None and (host in LOOPBACK_NAMES or host.endswith(".localhost")):
        reason = "a loopback name"
    if reason is not None:
        return f"host '{host}' is {reason}; list it in {policy.setting} to allow it"
    return None


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend behind the policy: resolve once, check, connect to the
    checked literal address."""

    def __init__(self, policy: OutboundPolicy, resolve: Resolver = _system_resolver) -> None:
        self.policy = policy
        self.resolve = resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        host = normalise_host(host)
        reason = refusal_by_name(host, self.policy)
        if reason is not None:
            raise OutboundRefused(self.policy.stage, reason)
        addresses = await self._addresses(host, port, timeout)
        failure: httpcore.ConnectError | None = None
        for address in addresses:  # each one checked already; the first that answers wins
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None, "a host resolves to at least one address"
        raise failure

    async def _addresses(self, host: str, port: int, limit_s: float | None) -> list[str]:
        if _literal(host) is not None:
            addresses = [host]
        else:
            try:
                async with asyncio.timeout(limit_s):
                    addresses = await self.resolve(host, port)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving '{host}' timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve '{host}': {exc}") from None
            if not addresses:
                raise httpcore.ConnectError(f"'{host}' resolves to no address")
        if self.policy.trusts(host):
            return addresses
        for address in addresses:
            # One bad answer refuses the host: a mix of public and private answers is
            # how rebinding attacks pick the private one.
            reason = refusal(ipaddress.ip_address(address.split("%")[0]))
            if reason is not None:
                raise OutboundRefused(
                    self.policy.stage,
                    f"host '{host}' resolves to {reason}; list it in {self.policy.setting} "
                    "to allow it",
                )
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused(self.policy.stage, "unix sockets are never connected to")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool that connects through GuardedBackend.

    No proxy: a proxy would be the address checked, not the destination."""

    def __init__(self, policy: OutboundPolicy, resolve: Resolver = _system_resolver) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=GuardedBackend(policy, resolve),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            reply = await self._pool.handle_async_request(core_request)
        except httpcore.TimeoutException as exc:
            raise _as_httpx(exc) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx(exc) from exc
        return httpx.Response(
            status_code=reply.status,
            headers=reply.headers,
            stream=_ReplyStream(reply.stream),
            extensions=reply.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _as_httpx(error: Exception) -> httpx.TransportError:
    """httpcore's error as httpx's class of the same name (httpx mirrors them one to one)."""
    kind: Any = getattr(httpx, type(error).__name__, httpx.TransportError)
    if not (isinstance(kind, type) and issubclass(kind, httpx.TransportError)):
        kind = httpx.TransportError
    mapped: httpx.TransportError = kind(str(error))
    return mapped


class _ReplyStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx(exc) from exc

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


def guarded_client(
    policy: OutboundPolicy, resolve: Resolver = _system_resolver
) -> httpx.AsyncClient:
    """An httpx client that can only reach what `policy` allows; redirects not followed."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, resolve), follow_redirects=False, trust_env=False
    )
