"""Conformance traffic agent: one long-lived process per network namespace.

Run as a script inside a namespace (`nsenter --net=/run/netns/NS python nsagent.py`); it reads
one JSON command per line on stdin and answers one JSON line on stdout. Standard library only
(no scapy: frames arrive already built, as hex), so it starts in a few milliseconds.

Commands (every answer has "ok": true, or "ok": false and "error"):
  {"op": "sniff", "ifaces": [...]}      capture every frame RECEIVED on these interfaces
                                        (AF_PACKET taps; outgoing frames are ignored)
  {"op": "local", "protos": [...]}      raw IP sockets: record packets delivered to this host's
                                        stack (they see a packet only after netfilter INPUT let it in)
  {"op": "sendp", "iface": I, "frames": [hex]}   send full Ethernet frames out of I
  {"op": "send3", "packets": [hex]}     send IPv4 packets (header included) through the IP stack,
                                        so they traverse OUTPUT like locally generated traffic;
                                        "errors": [[index, errno name]] for sends that failed
  {"op": "tcp_listen", "addr": A, "port": P}     a listening socket that never accepts
  {"op": "reset_listeners"}             close them all (no state survives into the next run)
  {"op": "tcp_connect", "src": A, "sport": P, "dst": A, "dport": P, "timeout": s}
                                        one handshake, then an abortive close (RST if connected);
                                        answers "result": connected | refused | timeout
  {"op": "udp_send", "src": A, "sport": P, "dst": A, "dport": P, "payload": hex}
  {"op": "drain"}                       everything captured since the last drain:
                                        "frames": [[where, hex], ...], "drops": n (socket overflow)
  {"op": "quit"}
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
RCVBUF = 16 * 1024 * 1024


class Agent:
    def __init__(self) -> None:
        self.taps: dict[socket.socket, str] = {}
        self.locals: dict[socket.socket, str] = {}
        self.listeners: list[socket.socket] = []
        self.senders: dict[str, socket.socket] = {}
        self.raw_out: socket.socket | None = None

    # -- capture ---------------------------------------------------------------------------
    def op_sniff(self, ifaces: list[str]) -> dict:
        for name in ifaces:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            s.bind((name, ETH_P_ALL))
            s.setblocking(False)
            self.taps[s] = name
        self._read_all(discard=True)
        return {}

    def op_local(self, protos: list[int]) -> dict:
        for proto in protos:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            s.setblocking(False)
            self.locals[s] = f"local/{proto}"
        return {}

    def _read_all(self, discard: bool = False) -> list[list[str]]:
        out: list[list[str]] = []
        for s, name in list(self.taps.items()) + list(self.locals.items()):
            is_tap = s in self.taps
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if is_tap and addr[2] == PACKET_OUTGOING:
                    continue
                if not discard:
                    out.append([name, data.hex()])
        return out

    def _drops(self) -> int:
        total = 0
        for s in self.taps:
            raw = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            _packets, drops = struct.unpack("II", raw)   # reading resets the counters
            total += drops
        return total

    def op_drain(self) -> dict:
        return {"frames": self._read_all(), "drops": self._drops()}

    # -- sending ---------------------------------------------------------------------------
    def op_sendp(self, iface: str, frames: list[str]) -> dict:
        s = self.senders.get(iface)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind((iface, 0))
            self.senders[iface] = s
        for f in frames:
            s.send(bytes.fromhex(f))
        return {"sent": len(frames)}

    def op_send3(self, packets: list[str]) -> dict:
        if self.raw_out is None:
            self.raw_out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        errors = []
        for i, p in enumerate(packets):
            data = bytes.fromhex(p)
            dst = socket.inet_ntoa(data[16:20])
            try:
                self.raw_out.sendto(data, (dst, 0))
            except OSError as exc:   # e.g. EPERM when OUTPUT dropped it: an observation
                errors.append([i, errno.errorcode.get(exc.errno, str(exc.errno))])
        return {"sent": len(packets), "errors": errors}

    def op_tcp_listen(self, addr: str, port: int) -> dict:
        if any(s.getsockname() == (addr, port) for s in self.listeners):
            return {}
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(128)
        self.listeners.append(s)
        return {}

    def op_reset_listeners(self) -> dict:
        """Close every listener: drops their half-open and never-accepted connections, so no
        TCP state carries over from one run to the next (same ports are reused per case)."""
        for s in self.listeners:
            s.close()
        self.listeners.clear()
        return {}

    def op_tcp_connect(self, src: str, sport: int, dst: str, dport: int,
                       timeout: float = 0.3) -> dict:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, sport))
            s.setblocking(False)
            rc = s.connect_ex((dst, dport))
            if rc not in (0, errno.EINPROGRESS):
                return {"result": f"error {errno.errorcode.get(rc, rc)}"}
            _r, w, _x = select.select([], [s], [], timeout)
            if not w:
                result = "timeout"      # still SYN_SENT: closing it sends nothing
            else:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                result = "connected" if err == 0 else (
                    "refused" if err == errno.ECONNREFUSED else f"error {errno.errorcode.get(err, err)}")
            # abortive close: a connected socket sends exactly one RST, nothing lingers
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return {"result": result}
        finally:
            s.close()

    def op_udp_send(self, src: str, sport: int, dst: str, dport: int, payload: str = "") -> dict:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, sport))
            try:
                s.sendto(bytes.fromhex(payload), (dst, dport))
            except OSError as exc:   # EPERM when OUTPUT dropped it: an observation
                return {"send_error": errno.errorcode.get(exc.errno, str(exc.errno))}
        finally:
            s.close()
        return {}


def main() -> int:
    agent = Agent()
    out = sys.stdout
    out.write(json.dumps({"ok": True, "ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            fn = getattr(agent, "op_" + op, None)
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": True, **fn(**cmd)}
        except Exception as exc:  # reported to the harness, which raises it there
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
