"""DH_TRITON_URL, parsed once: which Triton servers the gRPC channel balances over.

Three forms, all handed to gRPC's own resolvers (nothing here resolves or balances):
- `host:port`: one server, or every address the name resolves to (as before);
- `dns:///name:port` (or `dns://resolver/name:port`): every address of a DNS name, e.g. a
  Kubernetes headless service; gRPC re-resolves the name when a connection closes;
- `ip:port,ip:port,...`: a fixed list, turned into gRPC's multi-address target
  (`ipv4:10.0.0.1:8001,10.0.0.2:8001`, `ipv6:[::1]:8001,[::2]:8001`); `ipv4:`/`ipv6:`
  targets are accepted as written too.
Requests are spread over the servers by the channel's `round_robin` policy (orchestrator.triton).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from orchestrator.errors import BadInput

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
# gRPC target schemes (and URL schemes people write by habit) that name no Triton list.
_OTHER_SCHEMES = frozenset({"unix", "unix-abstract", "vsock", "xds", "http", "https", "grpc"})
_FORMS = (
    "host:port, dns:///name:port (every address of a DNS name) "
    "or a comma-separated list ip:port,ip:port"
)


@dataclass(frozen=True)
class TritonTarget:
    """`target` is what the gRPC channel dials; `addresses` the host:port parts named."""

    target: str
    addresses: tuple[str, ...]

    @property
    def several(self) -> bool:
        """Whether the setting can name more than one server (a list or a DNS name)."""
        return len(self.addresses) > 1 or self.target.startswith("dns:")


def _invalid(value: str, why: str) -> BadInput:
    return BadInput("startup", f"DH_TRITON_URL={value!r}: {why}; expected {_FORMS}")


def _split_host_port(value: str, address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise _invalid(value, f"'{address}' has no port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _invalid(value, f"'{address}' has no valid port (1-65535)")
    return host, int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        return None
    if address.version == 6 and literal == host:
        return None  # an IPv6 address must be bracketed, or its port cannot be told apart
    return address


def _checked_host(value: str, address: str) -> str:
    host, port = _split_host_port(value, address)
    if _ip(host) is None and not _HOST_NAME.fullmatch(host):
        raise _invalid(value, f"'{host}' is neither a host name nor an IP address ([...] for IPv6)")
    return f"{host}:{port}"


def _address_list(value: str, addresses: list[str], family: int | None) -> TritonTarget:
    """A fixed list of IP literals of one family, as gRPC's ipv4:/ipv6: target."""
    checked, families = [], set()
    for address in addresses:
        if not address:
            raise _invalid(value, "an empty entry in the list")
        host, port = _split_host_port(value, address)
        ip = _ip(host)
        if ip is None:
            raise _invalid(
                value,
                f"'{host}' in a list is not an IP address; to balance over the addresses "
                "of a name use dns:///name:port",
            )
        families.add(ip.version)
        checked.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1 or (family is not None and families != {family}):
        raise _invalid(value, "a list holds IPv4 or IPv6 addresses, not both")
    version = families.pop()
    return TritonTarget(f"ipv{version}:{','.join(checked)}", tuple(checked))


def parse_triton_url(value: str) -> TritonTarget:
    """The gRPC target of DH_TRITON_URL; BadInput naming the setting when malformed."""
    text = ",".join(part.strip() for part in value.strip().split(","))
    if not text:
        raise _invalid(value, "empty")
    if any(c.isspace() for c in text):
        raise _invalid(value, "contains white space")
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return _address_list(value, rest.split(","), int(scheme[-1]))
    if sep and scheme == "dns":
        # dns:[//authority/]host:port, gRPC's naming (doc/naming.md).
        if not rest.startswith("//") or rest.count("/") != 3:
            raise _invalid(value, "a dns: target is dns:///name:port")
        address = rest.rsplit("/", 1)[1]
        if "," in address:
            raise _invalid(value, "a dns: target names one DNS name")
        _checked_host(value, address)
        return TritonTarget(text, (address,))
    if "://" in text or scheme in _OTHER_SCHEMES:
        raise _invalid(value, f"'{scheme}:' is not a target this service dials")
    if "," in text:
        return _address_list(value, text.split(","), None)
    return TritonTarget(text, (_checked_host(value, text),))
