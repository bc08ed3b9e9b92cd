"""Kernel networking plumbing: what the namespace holds (host) and hooking programs in (attach).

Everything acts on the network namespace of the calling thread. The names below are loaded
from their module on first use (PEP 562), so `import ebpfw.netlink.host` (what ebpfw.state
needs on every command) does not pay for the attach code."""

_ATTACH = (
    "TC_HANDLE", "TC_PRIO", "XDP_MODES", "TcFilter", "XdpState", "attach_tc", "attach_xdp",
    "attached_prog_ids", "detach_tc", "detach_xdp", "ensure_clsact", "has_clsact",
    "prog_id_of_fd", "remove_clsact", "tc_filters", "xdp_state",
)
_HOST = ("Link", "ifindex", "ifname", "links", "local_addresses", "netns_cookie", "netns_key")

__all__ = [*_ATTACH, *_HOST]


def __getattr__(name: str):
    if name in _ATTACH:
        from ebpfw.netlink import attach
        return getattr(attach, name)
    if name in _HOST:
        from ebpfw.netlink import host
        return getattr(host, name)
    raise AttributeError(f"module 'ebpfw.netlink' has no attribute {name!r}")
