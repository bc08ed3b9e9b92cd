"""What the current network namespace looks like: links, local IPv4 addresses, its identity.

Contract: every function reads the network namespace of the calling thread, through
rtnetlink (the raw client in ebpfw.netlink.attach) or /proc; nothing here changes the system. Failures become
EbpfwError/KernelError with a message naming what was asked.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from ebpfw.errors import EbpfwError, KernelError


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str
    mac: bytes  # b"" for links without a hardware address (lo has 6 zero bytes)
    kind: str  # IFLA_INFO_KIND ("veth", "bridge", ...) or "" for plain devices (lo, NICs)


# rtnetlink numbers (include/uapi/linux/{rtnetlink,if_link,if_addr}.h)
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 1, 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index


def _dump(msg_type: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """One rtnetlink dump with the raw client of ebpfw.netlink.attach (no pyroute2: importing
    it costs ~0.1 s, more than the whole dump)."""
    from ebpfw.netlink.attach import NLM_F_DUMP, NetlinkError, _Rtnl
    try:
        with _Rtnl() as nl:
            return nl.request(msg_type, NLM_F_DUMP, body)
    except NetlinkError as exc:
        raise KernelError(f"cannot list {what}: {exc.describe()}") from exc
    except OSError as exc:
        raise KernelError(f"cannot list {what}: {exc.strerror or exc}") from exc


def links() -> list[Link]:
    """All links of the current network namespace, ordered by ifindex."""
    from ebpfw.netlink.attach import _parse_attrs, _str
    out = []
    for rtype, payload in _dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                                "network interfaces"):
        if rtype != RTM_NEWLINK or len(payload) < _IFINFOMSG.size:
            continue
        index = _IFINFOMSG.unpack_from(payload)[2]
        attrs = _parse_attrs(payload[_IFINFOMSG.size:])
        info = attrs.get(IFLA_LINKINFO)
        kind = _str(_parse_attrs(info).get(IFLA_INFO_KIND)) if info else ""
        out.append(Link(ifindex=index, name=_str(attrs.get(IFLA_IFNAME)),
                        mac=bytes(attrs.get(IFLA_ADDRESS) or b""), kind=kind))
    return sorted(out, key=lambda link: link.ifindex)


def local_addresses() -> list[tuple[int, int, int]]:
    """IPv4 addresses configured in this namespace: (ifindex, address as host-order int, prefixlen)."""
    from ebpfw.netlink.attach import _parse_attrs
    out = []
    for rtype, payload in _dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0),
                                "IPv4 addresses"):
        if rtype != RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
            continue
        family, plen, _, _, index = _IFADDRMSG.unpack_from(payload)
        if family != socket.AF_INET:
            continue
        attrs = _parse_attrs(payload[_IFADDRMSG.size:])
        addr = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if addr is None or len(addr) != 4:
            continue
        out.append((index, int.from_bytes(addr, "big"), plen))
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
