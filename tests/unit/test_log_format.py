"""ebpfw.log.format_event against the text nf_log_syslog (net/netfilter/nf_log_syslog.c) writes
for the same packet: the field order, spacing (MAC=.. then two spaces, a trailing space), the
TOS/PREC split, flags, RES, options and the ICMP recursion into the quoted header."""

from __future__ import annotations

import struct

from ebpfw.datapath.abi import LOG_CAP, LOG_CFG, LOG_EV, LOGF_MACDEC, LOGF_TCPOPT, LOGF_TCPSEQ
from ebpfw.log import format_event

MAC = bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + b"\x08\x00"


def ip_hdr(proto: int, l4: bytes, tos=0, ttl=64, ipid=7, frag=0x4000, src="10.0.0.1", dst="10.0.0.2") -> bytes:
    a = bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    return struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(l4), ipid, frag, ttl, proto, 0) + a + l4


def event(frame: bytes, prefix=b"", flags=0, hook=0, iif=3, oif=0, egress=0, mark=0) -> bytes:
    cfg = LOG_CFG.pack(prefix, 4, flags, 0, 0)
    return LOG_EV.pack(1, 0, hook, 0, min(len(frame), LOG_CAP), iif, oif, len(frame), egress, mark, 0, cfg,
                       frame[:LOG_CAP].ljust(LOG_CAP, b"\0"))


def test_tcp_syn_line():
    tcp = struct.pack("!HHIIBBHHH", 40000, 22, 1000, 0, 0x50, 0x02, 64240, 0, 0)
    line = format_event(event(MAC + ip_hdr(6, tcp), b"in: "), {3: "eth0"})
    assert line == ("in: IN=eth0 OUT= MAC=02:00:00:00:00:02:02:00:00:00:00:01:08:00  SRC=10.0.0.1 DST=10.0.0.2 "
                    "LEN=40 TOS=0x00 PREC=0x00 TTL=64 ID=7 DF PROTO=TCP SPT=40000 DPT=22 WINDOW=64240 RES=0x00 "
                    "SYN URGP=0 ")


def test_tcp_sequence_options_and_forward_ttl():
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 5, 6, 0x6E, 0xD1, 9, 0, 3) + bytes.fromhex("020405b4")
    line = format_event(event(MAC + ip_hdr(6, tcp, tos=0xB8, ttl=10), flags=LOGF_TCPSEQ | LOGF_TCPOPT, hook=1,
                              iif=3, oif=4), {3: "a", 4: "b"})
    assert line == ("IN=a OUT=b MAC=02:00:00:00:00:02:02:00:00:00:00:01:08:00  SRC=10.0.0.1 DST=10.0.0.2 LEN=44 "
                    "TOS=0x18 PREC=0xA0 TTL=9 ID=7 DF PROTO=TCP SPT=1 DPT=2 SEQ=5 ACK=6 WINDOW=9 RES=0x38 "
                    "CWR ECE ACK FIN URGP=3 OPT (020405B4) ")


def test_output_udp_has_no_mac_and_macdecode():
    udp = struct.pack("!HHHH", 5, 53, 12, 0) + b"abcd"
    assert format_event(event(MAC + ip_hdr(17, udp, frag=0), hook=2, iif=0, oif=4, egress=1), {4: "vb"}) == (
        "IN= OUT=vb SRC=10.0.0.1 DST=10.0.0.2 LEN=32 TOS=0x00 PREC=0x00 TTL=64 ID=7 PROTO=UDP SPT=5 DPT=53 LEN=12 ")
    assert format_event(event(MAC + ip_hdr(17, udp, frag=0), flags=LOGF_MACDEC), {3: "va"}).startswith(
        "IN=va OUT= MACSRC=02:00:00:00:00:01 MACDST=02:00:00:00:00:02 MACPROTO=0800 SRC=")


def test_icmp_error_recurses_once_and_fragments():
    inner = ip_hdr(17, struct.pack("!HHHH", 7, 9, 8, 0), frag=0)
    icmp = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + inner
    line = format_event(event(MAC + ip_hdr(1, icmp, tos=0xC0, frag=0)), {3: "va"})
    assert line.endswith("PROTO=ICMP TYPE=3 CODE=3 [SRC=10.0.0.1 DST=10.0.0.2 LEN=28 TOS=0x00 PREC=0x00 TTL=64 "
                         "ID=7 PROTO=UDP SPT=7 DPT=9 LEN=8 ] ")
    assert " PREC=0xC0 " in line
    echo = bytes([8, 0, 0, 0, 0, 5, 0, 1])
    assert format_event(event(MAC + ip_hdr(1, echo, frag=0)), {3: "va"}).endswith("TYPE=8 CODE=0 ID=5 SEQ=1 ")
    frag = format_event(event(MAC + ip_hdr(1, echo, frag=0x2000 | 3)), {3: "va"})
    assert frag.endswith("ID=7 MF FRAG:3 PROTO=ICMP ")


def test_mark_is_printed_last_in_hex_when_not_zero():
    udp = struct.pack("!HHHH", 5353, 53, 12, 0) + b"abcd"
    base = format_event(event(MAC + ip_hdr(17, udp)), {3: "eth0"})
    assert base.endswith("PROTO=UDP SPT=5353 DPT=53 LEN=12 ")
    assert format_event(event(MAC + ip_hdr(17, udp), mark=0x2a), {3: "eth0"}) == base + "MARK=0x2a "
    # ICMP errors: the quoted packet is dumped without a mark of its own; the outer line ends in it
    quoted = ip_hdr(17, udp)[:28]
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    line = format_event(event(MAC + ip_hdr(1, icmp), mark=0xffffffff), {3: "eth0"})
    assert line.count("MARK=") == 1 and line.endswith("] MARK=0xffffffff ")


def test_mark_is_not_printed_where_the_kernel_returns_early():
    # dump_ipv4_packet() returns before its MARK= tail for an incomplete TCP or UDP header
    # (nf_log_dump_tcp_header / nf_log_dump_udp_header return 1); an incomplete ICMP header
    # only breaks out of the switch, so the mark is still printed
    for proto, l4 in ((6, b"\x00" * 10), (17, b"\x00" * 4)):
        frame = MAC + ip_hdr(proto, l4)
        line = format_event(event(frame, mark=7), {3: "eth0"})
        assert "INCOMPLETE" in line and "MARK=" not in line
    line = format_event(event(MAC + ip_hdr(1, b"\x08\x00\x00"), mark=7), {3: "eth0"})
    assert "INCOMPLETE" in line and line.endswith("MARK=0x7 ")
