"""Kernel networking plumbing: what the namespace holds (host) and hooking programs in (attach).

Everything acts on the network namespace of the calling thread."""

from ebpfw.netlink.attach import (
    TC_HANDLE,
    TC_PRIO,
    XDP_MODES,
    TcFilter,
    XdpState,
    attach_tc,
    attach_xdp,
    attached_prog_ids,
    detach_tc,
    detach_xdp,
    ensure_clsact,
    has_clsact,
    prog_id_of_fd,
    remove_clsact,
    tc_filters,
    xdp_state,
)
from ebpfw.netlink.host import Link, ifindex, ifname, links, local_addresses, netns_cookie, netns_key

__all__ = [
    "TC_HANDLE", "TC_PRIO", "XDP_MODES", "TcFilter", "XdpState", "attach_tc", "attach_xdp",
    "attached_prog_ids", "detach_tc", "detach_xdp", "ensure_clsact", "has_clsact",
    "prog_id_of_fd", "remove_clsact", "tc_filters", "xdp_state",
    "Link", "ifindex", "ifname", "links", "local_addresses", "netns_cookie", "netns_key",
]
