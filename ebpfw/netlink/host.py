"""What the current network namespace looks like: links, local IPv4 addresses, its identity.

Contract: every function reads the network namespace of the calling thread, through
rtnetlink (pyroute2, no IPDB) or /proc; nothing here changes the system. Failures become
EbpfwError/KernelError with a message naming what was asked.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from ebpfw.errors import EbpfwError, KernelError


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str
    mac: bytes  # b"" for links without a hardware address (lo has 6 zero bytes)
    kind: str  # IFLA_INFO_KIND ("veth", "bridge", ...) or "" for plain devices (lo, NICs)


def _iproute():
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - pyroute2 is a hard dependency
        raise EbpfwError("pyroute2 is not importable", hint="install python3-pyroute2") from exc
    try:
        return IPRoute()
    except OSError as exc:
        raise KernelError(f"cannot open an rtnetlink socket: {exc.strerror or exc}") from exc


def _mac_bytes(text: str | None) -> bytes:
    if not text:
        return b""
    try:
        return bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        return b""


def links() -> list[Link]:
    """All links of the current network namespace, ordered by ifindex."""
    with _iproute() as ipr:
        try:
            msgs = ipr.get_links()
        except Exception as exc:  # NetlinkError
            raise KernelError(f"cannot list network interfaces: {exc}") from exc
    out = []
    for m in msgs:
        info = m.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
        out.append(Link(ifindex=m["index"], name=m.get_attr("IFLA_IFNAME") or "",
                        mac=_mac_bytes(m.get_attr("IFLA_ADDRESS")), kind=kind))
    return sorted(out, key=lambda link: link.ifindex)


def local_addresses() -> list[tuple[int, int, int]]:
    """IPv4 addresses configured in this namespace: (ifindex, address as host-order int, prefixlen)."""
    with _iproute() as ipr:
        try:
            msgs = ipr.get_addr(family=socket.AF_INET)
        except Exception as exc:
            raise KernelError(f"cannot list IPv4 addresses: {exc}") from exc
    out = []
    for m in msgs:
        addr = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
        if addr is None:
            continue
        out.append((m["index"], int(ipaddress.IPv4Address(addr)), m["prefixlen"]))
    return sorted(out)


def ifindex(name: str) -> int:
    """The ifindex of interface `name` in this namespace."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise EbpfwError(f"no interface '{name}' in this network namespace",
                         hint="list them with: ip -br link") from None


def ifname(index: int) -> str:
    """The name of interface `index` in this namespace."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        raise EbpfwError(f"no interface with ifindex {index} in this network namespace",
                         hint="list them with: ip -br link") from None


SO_NETNS_COOKIE = 71


def netns_cookie() -> int | None:
    """The kernel's 64-bit cookie of the current network namespace (Linux 5.14+), never reused
    during one boot (unlike inode numbers, which a new namespace may recycle); None if the
    kernel is too old."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        except OSError:
            return None


def netns_key() -> str:
    """A stable identifier of the current network namespace: 'ns<inode>' of /proc/self/ns/net.
    The same namespace always gives the same key (while it exists); different namespaces differ.
    The initial namespace's inode is allocated early at boot and is in practice the same on
    every boot of a given kernel, but the kernel does not promise it. A namespace created later
    may reuse a dead one's inode, so callers that keep state beyond a namespace's lifetime
    should also record netns_cookie() and compare it."""
    try:
        st = os.stat("/proc/thread-self/ns/net")
    except OSError:
        try:
            st = os.stat("/proc/self/ns/net")
        except OSError as exc:
            raise EbpfwError(f"cannot identify the network namespace: {exc}",
                             hint="is /proc mounted?") from exc
    return f"ns{st.st_ino}"
