"""Attach BPF programs to interfaces of the current network namespace: XDP and TC clsact.

Contract:
- attach_xdp() sets an XDP program with ONE RTM_SETLINK request, which replaces whatever
  program is attached in that mode atomically (no window without a program); with
  `expected_fd` it is a compare-and-swap (XDP_FLAGS_REPLACE). It returns the mode actually
  used and reads the attached program id back to prove it.
- attach_tc() owns exactly one direct-action bpf filter per direction, at TC_PRIO/TC_HANDLE;
  a second attach replaces it atomically (NLM_F_REPLACE on the same prio/handle); other
  filters are never modified or removed. A clsact qdisc is created only if absent, and the
  caller learns whether we created it (so it removes only what it created).
- Every netlink failure becomes KernelError naming the interface and the operation, with the
  kernel's extended-ack message when it sends one, and a hint.

Raw rtnetlink is used instead of pyroute2 0.7.2 for these requests: its IFLA_XDP_FLAGS
encoding is 2 bytes (the kernel answers ERANGE) and it does not decode TCA_BPF_ID, which we
need to read back what is attached.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
from dataclasses import dataclass

from ebpfw.errors import EbpfwError, KernelError

# --- rtnetlink constants (include/uapi/linux/{netlink,rtnetlink,if_link,pkt_cls}.h) ----------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000

RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

IFLA_XDP = 43
IFLA_XDP_FD, IFLA_XDP_ATTACHED, IFLA_XDP_FLAGS, IFLA_XDP_PROG_ID = 1, 2, 3, 4
IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID, IFLA_XDP_EXPECTED_FD = 5, 6, 8
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_REPLACE = 1 << 1, 1 << 2, 1 << 4
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)

TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_ID = 3, 6, 7, 8, 11
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000
TC_PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
ETH_P_ALL = 0x0003

# The one filter slot ebpfw owns in each clsact direction. A low prio so it runs before
# filters added with tc's defaults (49152) and libbpf's (1 is lower, but shares no handle).
TC_PRIO = 0xEB
TC_HANDLE = 0xEBF
OUR_FILTER_PREFIX = "ebpfw"

XDP_MODES = ("auto", "xdp", "xdp-generic")
RECV_TIMEOUT = 10.0
_MODE_FLAGS = {"xdp": XDP_FLAGS_DRV_MODE, "xdp-generic": XDP_FLAGS_SKB_MODE}
_ATTACHED_MODE = {XDP_ATTACHED_DRV: "xdp", XDP_ATTACHED_SKB: "xdp-generic", XDP_ATTACHED_HW: "xdp-offload"}

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_NLMSGHDR = struct.Struct("=IHHII")


class NetlinkError(OSError):
    """A negative ack; .errno plus the kernel's extended-ack text (may be '')."""

    def __init__(self, err: int, extack: str = ""):
        super().__init__(err, os.strerror(err))
        self.extack = extack

    def describe(self) -> str:
        return f"{self.strerror}" + (f" ({self.extack})" if self.extack else "")


# --- tiny rtnetlink client --------------------------------------------------------------------

def _nla(kind: int, payload: bytes) -> bytes:
    hdr = struct.pack("=HH", 4 + len(payload), kind)
    return hdr + payload + b"\0" * ((4 - len(payload) % 4) % 4)


def _nla_u32(kind: int, v: int) -> bytes:
    return _nla(kind, struct.pack("=I", v))


def _nla_s32(kind: int, v: int) -> bytes:
    return _nla(kind, struct.pack("=i", v))


def _nla_str(kind: int, s: str) -> bytes:
    return _nla(kind, s.encode() + b"\0")


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    """type -> payload (last one wins; flags stripped)."""
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


def _u32(b: bytes | None) -> int | None:
    return struct.unpack("=I", b[:4])[0] if b and len(b) >= 4 else None


def _str(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace") if b else ""


class _Rtnl:
    """One NETLINK_ROUTE socket in the calling thread's network namespace."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_ROUTE)
        except OSError as exc:
            raise KernelError(f"cannot open an rtnetlink socket: {exc.strerror or exc}") from exc
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass  # old kernels: no extended acks, the errno is still there
        self.sock.bind((0, 0))
        self.sock.settimeout(RECV_TIMEOUT)
        self.seq = 0

    def __enter__(self) -> "_Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) replies. Raises NetlinkError on a nack."""
        self.seq += 1
        seq = self.seq
        hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0)
        replies: list[tuple[int, bytes]] = []
        try:
            self.sock.send(hdr + body)
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO) from None
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                raise KernelError(f"rtnetlink did not answer within {RECV_TIMEOUT:.0f} s") from None
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, rtype, rflags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    raise KernelError("malformed netlink reply")
                payload = data[off + _NLMSGHDR.size: off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    if len(payload) >= 4 and struct.unpack_from("=i", payload)[0] < 0:
                        raise NetlinkError(-struct.unpack_from("=i", payload)[0])
                    return replies
                if rtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err == 0:
                        return replies
                    extack = ""
                    if rflags & NLM_F_ACK_TLVS:
                        # the echoed request header follows the error code (capped: header only)
                        orig_len = struct.unpack_from("=I", payload, 4)[0]
                        tlv_off = 4 + (_NLMSGHDR.size if rflags & 0x100 else orig_len)
                        extack = _str(_parse_attrs(payload[tlv_off:]).get(NLMSGERR_ATTR_MSG))
                    raise NetlinkError(err, extack)
                replies.append((rtype, payload))
                if not (rflags & NLM_F_MULTI) and not (flags & NLM_F_DUMP) and not (flags & NLM_F_ACK):
                    return replies


# --- helpers ------------------------------------------------------------------------------------

def _ifname(ifindex: int) -> str:
    try:
        return f"'{socket.if_indextoname(ifindex)}'"
    except OSError:
        return f"ifindex {ifindex}"


def _hint_for(err: NetlinkError, ifindex: int) -> str | None:
    if err.errno == errno.ENODEV:
        return "the interface disappeared (or is in another network namespace): check `ip -br link`"
    if err.errno == errno.EPERM:
        return "run as root (CAP_NET_ADMIN and CAP_BPF are needed)"
    return None


def _kernel_error(what: str, ifindex: int, err: NetlinkError, hint: str | None = None) -> KernelError:
    return KernelError(f"{what} on {_ifname(ifindex)}: {err.describe()}",
                       hint=hint or _hint_for(err, ifindex))


_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
BPF_OBJ_GET_INFO_BY_FD = 15


def prog_id_of_fd(prog_fd: int) -> int:
    """The kernel id of the BPF program behind `prog_fd` (bpf(BPF_OBJ_GET_INFO_BY_FD))."""
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        raise EbpfwError(f"unsupported architecture {platform.machine()} for bpf() info queries")
    info = ctypes.create_string_buffer(16)  # struct bpf_prog_info: __u32 type, id; __u8 tag[8]
    attr = ctypes.create_string_buffer(struct.pack("=IIQ", prog_fd, 16, ctypes.addressof(info)), 16)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(nr), ctypes.c_long(BPF_OBJ_GET_INFO_BY_FD), attr, ctypes.c_uint(16)) != 0:
        e = ctypes.get_errno()
        raise KernelError(f"cannot read the id of BPF program fd {prog_fd}: {os.strerror(e)}")
    return struct.unpack_from("=II", info.raw)[1]


# --- XDP ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class XdpState:
    mode: str | None  # "xdp", "xdp-generic", "xdp-offload", "multi" or None
    prog_id: int | None  # the single attached program (None if none or several)
    drv_prog_id: int | None
    skb_prog_id: int | None


def xdp_state(ifindex: int) -> XdpState:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
    try:
        with _Rtnl() as nl:
            replies = nl.request(RTM_GETLINK, 0, body)
    except NetlinkError as err:
        raise _kernel_error("cannot read the XDP state", ifindex, err) from err
    for rtype, payload in replies:
        if rtype != RTM_NEWLINK:
            continue
        attrs = _parse_attrs(payload[_IFINFOMSG.size:])
        xdp = _parse_attrs(attrs.get(IFLA_XDP, b""))
        attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
        mode = "multi" if attached == XDP_ATTACHED_MULTI else _ATTACHED_MODE.get(attached)
        return XdpState(mode=mode, prog_id=_u32(xdp.get(IFLA_XDP_PROG_ID)),
                        drv_prog_id=_u32(xdp.get(IFLA_XDP_DRV_PROG_ID)),
                        skb_prog_id=_u32(xdp.get(IFLA_XDP_SKB_PROG_ID)))
    raise KernelError(f"no link reply for {_ifname(ifindex)}")


def _set_xdp(ifindex: int, fd: int, flags: int, expected_fd: int | None) -> None:
    nested = _nla_s32(IFLA_XDP_FD, fd)
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        nested += _nla_s32(IFLA_XDP_EXPECTED_FD, expected_fd)
    nested += _nla_u32(IFLA_XDP_FLAGS, flags)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + _nla(IFLA_XDP | NLA_F_NESTED, nested)
    with _Rtnl() as nl:
        nl.request(RTM_SETLINK, NLM_F_ACK, body)


def _xdp_hint(err: NetlinkError, mode: str, ifindex: int, cas: bool) -> str | None:
    if cas and err.errno == errno.EEXIST:
        return ("the attached XDP program is not the expected one: something else changed it "
                "since it was read (another tool, or a concurrent apply)")
    if err.errno == errno.EOPNOTSUPP and mode == "xdp":
        return "the driver has no native XDP: use mode xdp-generic (or auto)"
    if err.errno in (errno.EEXIST, errno.EBUSY):
        return ("another XDP program is attached in the other mode or through a bpf_link "
                "(see `ip link show`); detach it first, e.g. `ip link set dev IFACE xdpgeneric off` "
                "or `ip link set dev IFACE xdp off`")
    return _hint_for(err, ifindex)


def attach_xdp(ifindex: int, prog_fd: int, mode: str = "auto", expected_fd: int | None = None) -> str:
    """Attach (or atomically replace) the XDP program on `ifindex`; return the mode used.

    mode: "xdp" (native, driver), "xdp-generic" (skb) or "auto": the mode a program is already
    attached in (so the swap stays atomic), else native, falling back to generic.
    expected_fd: replace only if this program is the one attached (else KernelError, EEXIST)."""
    if mode not in XDP_MODES:
        raise EbpfwError(f"unknown XDP mode {mode!r}, expected one of {', '.join(XDP_MODES)}")
    want_id = prog_id_of_fd(prog_fd)
    if mode == "auto":
        cur = xdp_state(ifindex)
        if cur.mode in ("xdp", "xdp-generic"):
            tries = [cur.mode]
        else:
            tries = ["xdp", "xdp-generic"]
    else:
        tries = [mode]
    native_error: NetlinkError | None = None
    for m in tries:
        try:
            _set_xdp(ifindex, prog_fd, _MODE_FLAGS[m], expected_fd)
        except NetlinkError as err:
            fatal = err.errno in (errno.EPERM, errno.ENODEV, errno.EBADF)
            if m == "xdp" and len(tries) > 1 and not fatal and expected_fd is None:
                native_error = err
                continue
            what = f"cannot attach the XDP program ({m} mode)"
            if native_error is not None:
                what += f" (native mode failed first: {native_error.describe()})"
            raise _kernel_error(what, ifindex, err, _xdp_hint(err, m, ifindex, expected_fd is not None)) from err
        got = xdp_state(ifindex)
        got_id = got.drv_prog_id if m == "xdp" else got.skb_prog_id
        if got_id is None and got.mode == m:
            got_id = got.prog_id
        if got_id != want_id:
            raise KernelError(f"XDP attach on {_ifname(ifindex)} was acknowledged but program "
                              f"{got_id} is attached instead of {want_id}")
        return m
    raise AssertionError("unreachable")  # pragma: no cover


def detach_xdp(ifindex: int, mode: str = "auto") -> bool:
    """Remove the XDP program attached in `mode` ("auto": whichever mode is in use).
    Returns True if a program was attached. Idempotent."""
    if mode not in XDP_MODES:
        raise EbpfwError(f"unknown XDP mode {mode!r}, expected one of {', '.join(XDP_MODES)}")
    cur = xdp_state(ifindex)
    if mode == "auto":
        modes = [m for m, pid in (("xdp", cur.drv_prog_id), ("xdp-generic", cur.skb_prog_id)) if pid]
        if not modes and cur.mode in _MODE_FLAGS:
            modes = [cur.mode]
    else:
        modes = [mode]
    was = False
    for m in modes:
        present = (cur.drv_prog_id if m == "xdp" else cur.skb_prog_id) or (cur.mode == m and cur.prog_id)
        try:
            _set_xdp(ifindex, -1, _MODE_FLAGS[m], None)
        except NetlinkError as err:
            raise _kernel_error(f"cannot detach the XDP program ({m} mode)", ifindex, err) from err
        was = was or bool(present)
    return was


# --- TC clsact ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TcFilter:
    direction: str
    prio: int
    handle: int
    kind: str
    name: str  # TCA_BPF_NAME for bpf filters
    prog_id: int | None
    direct_action: bool

    @property
    def ours(self) -> bool:
        return self.prio == TC_PRIO and self.handle == TC_HANDLE


def _check_direction(direction: str) -> int:
    try:
        return TC_PARENT[direction]
    except KeyError:
        raise EbpfwError(f"unknown TC direction {direction!r}, expected ingress or egress") from None


def qdisc_kinds(ifindex: int) -> list[str]:
    """Kinds of the qdiscs on `ifindex` (e.g. ['noqueue', 'clsact'])."""
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, 0, 0)
    try:
        with _Rtnl() as nl:
            replies = nl.request(RTM_GETQDISC, NLM_F_DUMP, body)
    except NetlinkError as err:
        raise _kernel_error("cannot list qdiscs", ifindex, err) from err
    kinds = []
    for rtype, payload in replies:
        if rtype != RTM_NEWQDISC:
            continue
        _fam, idx, _handle, _parent, _info = _TCMSG.unpack_from(payload)
        if idx == ifindex:
            kinds.append(_str(_parse_attrs(payload[_TCMSG.size:]).get(TCA_KIND)))
    return kinds


def has_clsact(ifindex: int) -> bool:
    return "clsact" in qdisc_kinds(ifindex)


def ensure_clsact(ifindex: int) -> bool:
    """Make sure a clsact qdisc exists; return True if this call created it."""
    kinds = qdisc_kinds(ifindex)
    if "clsact" in kinds:
        return False
    if "ingress" in kinds:
        raise KernelError(f"{_ifname(ifindex)} has an 'ingress' qdisc; ebpfw needs a clsact qdisc there",
                          hint="remove it if nothing needs it: tc qdisc del dev IFACE ingress")
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + _nla_str(TCA_KIND, "clsact")
    try:
        with _Rtnl() as nl:
            nl.request(RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
    except NetlinkError as err:
        if err.errno == errno.EEXIST:  # created concurrently by someone else
            return False
        raise _kernel_error("cannot create the clsact qdisc", ifindex, err) from err
    return True


def tc_filters(ifindex: int, direction: str) -> list[TcFilter]:
    """Every filter in the clsact `direction` of `ifindex` (ours and others')."""
    parent = _check_direction(direction)
    if not has_clsact(ifindex):
        return []
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0)
    try:
        with _Rtnl() as nl:
            replies = nl.request(RTM_GETTFILTER, NLM_F_DUMP, body)
    except NetlinkError as err:
        raise _kernel_error(f"cannot list {direction} filters", ifindex, err) from err
    out = []
    for rtype, payload in replies:
        if rtype != RTM_NEWTFILTER:
            continue
        _fam, idx, handle, fparent, info = _TCMSG.unpack_from(payload)
        if idx != ifindex or fparent != parent or handle == 0:
            continue  # handle 0 is the per-prio chain header, not a filter
        attrs = _parse_attrs(payload[_TCMSG.size:])
        opts = _parse_attrs(attrs.get(TCA_OPTIONS, b""))
        kind = _str(attrs.get(TCA_KIND))
        flags = (_u32(opts.get(TCA_BPF_FLAGS)) or 0) if kind == "bpf" else 0
        out.append(TcFilter(direction=direction, prio=info >> 16, handle=handle, kind=kind,
                            name=_str(opts.get(TCA_BPF_NAME)) if kind == "bpf" else "",
                            prog_id=_u32(opts.get(TCA_BPF_ID)) if kind == "bpf" else None,
                            direct_action=bool(flags & TCA_BPF_FLAG_ACT_DIRECT)))
    return out


def _our_filter(ifindex: int, direction: str) -> TcFilter | None:
    for f in tc_filters(ifindex, direction):
        if f.ours:
            if f.kind != "bpf" or not f.name.startswith(OUR_FILTER_PREFIX):
                raise KernelError(
                    f"{_ifname(ifindex)} has a foreign {f.kind} filter '{f.name}' at ebpfw's slot "
                    f"(prio {TC_PRIO}, handle {TC_HANDLE:#x}, {direction}); refusing to touch it",
                    hint="move that filter to another prio/handle")
            return f
    return None


def attach_tc(ifindex: int, prog_fd: int, direction: str, name: str) -> bool:
    """Attach (or atomically replace) ebpfw's direct-action bpf filter in clsact `direction`.
    `name` must start with 'ebpfw'. Returns True if a clsact qdisc had to be created."""
    parent = _check_direction(direction)
    if not name.startswith(OUR_FILTER_PREFIX):
        raise EbpfwError(f"TC filter name {name!r} must start with {OUR_FILTER_PREFIX!r}")
    want_id = prog_id_of_fd(prog_fd)
    created = ensure_clsact(ifindex)
    _our_filter(ifindex, direction)  # refuses if a foreign filter sits in our slot
    info = (TC_PRIO << 16) | socket.htons(ETH_P_ALL)
    opts = (_nla_u32(TCA_BPF_FD, prog_fd) + _nla_str(TCA_BPF_NAME, name)
            + _nla_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
    body = (_TCMSG.pack(socket.AF_UNSPEC, ifindex, TC_HANDLE, parent, info)
            + _nla_str(TCA_KIND, "bpf") + _nla(TCA_OPTIONS | NLA_F_NESTED, opts))
    try:
        with _Rtnl() as nl:
            nl.request(RTM_NEWTFILTER, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)
    except NetlinkError as err:
        if created:
            remove_clsact(ifindex)
        raise _kernel_error(f"cannot attach the TC {direction} program", ifindex, err) from err
    got = _our_filter(ifindex, direction)
    if got is None or got.prog_id != want_id:
        raise KernelError(f"TC {direction} attach on {_ifname(ifindex)} was acknowledged but program "
                          f"{got.prog_id if got else None} is attached instead of {want_id}")
    return created


def detach_tc(ifindex: int, direction: str) -> bool:
    """Remove ebpfw's filter from clsact `direction` (others' filters stay). Returns True if
    it was there. Idempotent."""
    parent = _check_direction(direction)
    if _our_filter(ifindex, direction) is None:
        return False
    info = (TC_PRIO << 16) | socket.htons(ETH_P_ALL)
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, TC_HANDLE, parent, info) + _nla_str(TCA_KIND, "bpf")
    try:
        with _Rtnl() as nl:
            nl.request(RTM_DELTFILTER, NLM_F_ACK, body)
    except NetlinkError as err:
        if err.errno == errno.ENOENT:
            return False
        raise _kernel_error(f"cannot detach the TC {direction} program", ifindex, err) from err
    return True


def remove_clsact(ifindex: int) -> bool:
    """Delete the clsact qdisc, but only if no filter is left on it (ours or anyone's).
    Call it only for a clsact that attach_tc() reported as created. Returns True if removed."""
    if not has_clsact(ifindex):
        return False
    if tc_filters(ifindex, "ingress") or tc_filters(ifindex, "egress"):
        return False
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + _nla_str(TCA_KIND, "clsact")
    try:
        with _Rtnl() as nl:
            nl.request(RTM_DELQDISC, NLM_F_ACK, body)
    except NetlinkError as err:
        if err.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise _kernel_error("cannot remove the clsact qdisc", ifindex, err) from err
    return True


def attached_prog_ids(ifindex: int) -> dict:
    """{'xdp': id|None, 'xdp_mode': 'xdp'|'xdp-generic'|...|None,
        'tc_ingress': id|None, 'tc_egress': id|None} — TC ids are ebpfw's own filters only."""
    x = xdp_state(ifindex)
    xdp_id = x.prog_id if x.mode != "multi" else (x.drv_prog_id or x.skb_prog_id)
    out = {"xdp": xdp_id or None, "xdp_mode": x.mode}
    for direction in ("ingress", "egress"):
        f = _our_filter(ifindex, direction)
        out[f"tc_{direction}"] = f.prog_id if f else None
    return out
