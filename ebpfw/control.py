"""The agent's control socket: `ebpfw apply` hands its ruleset to a running agent.

Contract:
- A running `ebpfw agent` listens on a unix stream socket, state_dir()/agent.sock (mode 0600 in
  the 0700 state directory of its network namespace), and serves one request per connection,
  in its main loop (so requests never run beside its own applies). Only a peer with the
  agent's user id (root) is served (SO_PEERCRED); others get an error answer.
- A request is one JSON object, sent before the client shuts its side down: {"op": "apply",
  "text", "filename", "ifaces", "mode", "modes", "counters"}. The answer is one JSON object:
  {"ok": true, "result": <api.apply's result>, "pid": agent pid} or {"ok": false, "error":
  {"kind", "message", "problems", "hint"}}; the error is re-raised in the client as the same
  EbpfwError class, so the CLI prints exactly what a direct apply would have printed.
- The agent applies with api.apply in its own process, where the last applied ruleset is kept:
  an edit of a few rules is parsed, compiled and written incrementally (milliseconds instead of
  a full parse and compile in a fresh process). The apply itself is the same call a direct
  `ebpfw apply` makes, in the same namespace, under the same lock.
- `try_apply()` returns None when no agent listens (no socket, or a stale one): the caller
  applies directly. Nothing here imports the heavy parts of ebpfw (parser, compiler, bcc).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Optional

from . import state
from .errors import EbpfwError, KernelError, RulesetError, StateError

SOCKET_NAME = "agent.sock"
MAX_REQUEST = 64 << 20          # bytes: a ruleset of a million rules fits
READ_TIMEOUT = 10.0             # the agent waits this long for a request to arrive
ANSWER_TIMEOUT = 900.0          # the client waits this long for the apply (bcc may build programs)
_KINDS = {"EbpfwError": EbpfwError, "RulesetError": RulesetError, "KernelError": KernelError,
          "StateError": StateError}


def socket_path() -> Path:
    return state.state_dir() / SOCKET_NAME


class _Addr:
    """A path usable as a unix socket address: sun_path holds 107 bytes, deeper paths go
    through /proc/self/fd/N of their directory."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None
        self.addr = str(path)
        if len(os.fsencode(self.addr)) > 100:
            self.fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.addr = f"/proc/self/fd/{self.fd}/{path.name}"

    def __enter__(self) -> str:
        return self.addr

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _recv_all(sock: socket.socket, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        b = sock.recv(1 << 20)
        if not b:
            return b"".join(chunks)
        size += len(b)
        if size > limit:
            raise EbpfwError(f"control request larger than {limit} bytes")
        chunks.append(b)


# ---- the client (ebpfw apply) --------------------------------------------------------------------

def try_apply(text: str, filename: str, ifaces: list[str], mode: str, counters: bool,
              modes: Optional[dict] = None) -> Optional[dict]:
    """Apply through the running agent of this namespace; None when there is none."""
    try:
        path = socket_path()
    except EbpfwError:
        return None
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(READ_TIMEOUT)
        try:
            with _Addr(path) as addr:
                s.connect(addr)
        except (ConnectionRefusedError, FileNotFoundError):
            return None            # an agent that is gone left its socket behind
        req = {"op": "apply", "text": text, "filename": filename, "ifaces": list(ifaces), "mode": mode,
               "modes": modes or {}, "counters": counters}
        s.sendall(json.dumps(req).encode())
        s.shutdown(socket.SHUT_WR)
        s.settimeout(ANSWER_TIMEOUT)
        raw = _recv_all(s, MAX_REQUEST)
    except OSError as exc:
        raise EbpfwError(f"the agent's control socket {path} failed: {exc.strerror or exc}",
                         hint="EBPFW_NO_AGENT=1 ebpfw apply ... applies without the agent") from None
    finally:
        s.close()
    try:
        ans = json.loads(raw)
    except ValueError:
        raise EbpfwError(f"the agent closed {path} without an answer (did it stop?)",
                         hint="EBPFW_NO_AGENT=1 ebpfw apply ... applies without the agent") from None
    if ans.get("ok"):
        res = dict(ans["result"])
        res["agent_pid"] = ans.get("pid")
        return res
    err = ans.get("error") or {}
    cls = _KINDS.get(err.get("kind"), EbpfwError)
    raise cls(err.get("message") or "the agent refused the apply", problems=err.get("problems"),
              hint=err.get("hint"))


# ---- the server (ebpfw agent) --------------------------------------------------------------------

def listen() -> Optional[socket.socket]:
    """The agent's listening socket, non-blocking; None (and nothing changed) when another agent
    already serves this namespace."""
    path = socket_path()
    state.state_dir(create=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _Addr(path) as addr:
            probe.connect(addr)
        return None                 # a live agent answers there: leave it alone
    except OSError:
        pass
    finally:
        probe.close()
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        with _Addr(path) as addr:
            s.bind(addr)
    except OSError:
        s.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(8)
    return s


def close(sock: socket.socket) -> None:
    """Stop listening and remove the socket file."""
    sock.close()
    try:
        socket_path().unlink()
    except (OSError, EbpfwError):
        pass


def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


def serve_one(listener: socket.socket, handle) -> Optional[str]:
    """Accept one connection and answer it with handle(request) -> result dict (an EbpfwError
    becomes an error answer). Returns a line for the log, or None when nobody was waiting."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return None
    with conn:
        conn.setblocking(True)
        conn.settimeout(READ_TIMEOUT)
        try:
            uid = peer_uid(conn)
            if uid not in (0, os.geteuid()):
                _answer(conn, EbpfwError(f"user {uid} may not apply through the agent", hint="run as root"))
                return f"refused a control request from uid {uid}"
            req = json.loads(_recv_all(conn, MAX_REQUEST))
            if not isinstance(req, dict) or req.get("op") != "apply":
                _answer(conn, EbpfwError(f"unknown control request {str(req)[:60]!r}"))
                return "refused an unknown control request"
            conn.settimeout(None)
            try:
                res = handle(req)
            except EbpfwError as exc:
                _answer(conn, exc)
                return f"apply of {req.get('filename')} (from ebpfw apply) refused: {exc}"
            conn.sendall(json.dumps({"ok": True, "result": res, "pid": os.getpid()}).encode())
            return None
        except (OSError, ValueError, EbpfwError) as exc:
            return f"control connection failed: {exc}"


def _answer(conn: socket.socket, exc: EbpfwError) -> None:
    kind = type(exc).__name__ if type(exc).__name__ in _KINDS else "EbpfwError"
    conn.sendall(json.dumps({"ok": False, "error": {"kind": kind, "message": str(exc),
                                                    "problems": exc.problems, "hint": exc.hint}}).encode())
