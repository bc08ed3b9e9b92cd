"""`ebpfw agent`: keep the configured ruleset enforced while the host's interfaces and
addresses change.

Contract:
- Start: read the configuration (ebpfw.toml(5)) and the ruleset it names, check both (a bad
  one is an error: exit 1, and whatever was enforced before stays enforced), then apply the
  ruleset to the interfaces the configuration selects. When the enforced ruleset already is
  that ruleset (a restart), the apply takes the maps-only path and keeps the counters, so a
  restart never opens a gap.
- Watch: an rtnetlink socket bound to RTMGRP_LINK | RTMGRP_IPV4_IFADDR is opened BEFORE the
  first apply (no event is lost in between). Events are coalesced for EVENT_SETTLE seconds,
  then the host is re-read and compared with what the agent last enforced:
    * the set of (ifindex, name) changed (an interface appeared, disappeared, was renamed):
      re-apply the enforced ruleset, with its counters, to the interfaces the configuration
      selects now (api.apply: maps-only when the program shape fits). The interface class
      tables are per name, so this also runs when a non-selected interface comes or goes.
    * only addresses or MAC addresses changed: rewrite the host view maps (local addresses,
      interface MACs/flags) through the pinned maps, under the apply lock.
  A full re-read also runs every RESYNC_SECONDS, and after a netlink buffer overrun.
- Control socket: `ebpfw apply` hands its ruleset to the agent of its namespace over a
  root-only unix socket (ebpfw.control), and the agent applies it between its other work.
- Sets: every SET_GC_SECONDS (EBPFW_SET_GC_SECONDS, default 30) the expired elements of ipset
  sets with timeouts are deleted, as the kernel's ipset collector does (a CrowdSec or fail2ban
  ban that ran out would otherwise stay in the trie until `ebpfw set list` or an add).
- SIGHUP: re-read configuration and ruleset and apply them atomically; if either is bad the
  problems are logged (FILE:LINE lines) and the old ruleset keeps enforcing.
- SIGTERM/SIGINT: exit 0, leaving the programs enforcing (on_stop = "keep") or detaching
  them (on_stop = "detach"). SIGKILL leaves them enforcing: they are pinned.
- If no interface matches, nothing is attached (an earlier attachment is detached) and the
  agent waits for one to appear.
- Logs go to stderr, one line per message, with a syslog priority prefix ("<3>") when
  stderr is the journal ($JOURNAL_STREAM). With $NOTIFY_SOCKET set, the agent speaks the
  sd_notify protocol: READY=1 after the first apply, RELOADING=1/READY=1 around SIGHUP,
  STOPPING=1, and a STATUS= line.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from . import api, control, sets, state
from .config import CT_ENV, Config, conntrack_env, load_config
from .datapath import Datapath, Shape
from .errors import EbpfwError
from .netlink import host

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
EVENT_SETTLE = 0.05       # seconds to let a burst of netlink events finish before acting
RESYNC_SECONDS = 10.0     # full re-read even without events (a safety net)
RETRY_SECONDS = 5.0       # after a failed re-apply
SET_GC_SECONDS = float(os.environ.get("EBPFW_SET_GC_SECONDS", "30"))   # expired ipset elements deleted
LOCK_TIMEOUT = 10.0

log = logging.getLogger("ebpfw.agent")


# ---- logging and sd_notify -------------------------------------------------------------------------

class _JournalFormatter(logging.Formatter):
    PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIO.get(record.levelno, 6)}>{record.getMessage()}"


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s ebpfw-agent[%(process)d] %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _log_error(what: str, exc: EbpfwError) -> None:
    log.error(what)
    for line in exc.render().splitlines():
        log.error("  %s", line)


def sd_notify(*lines: str) -> bool:
    """Send `lines` to $NOTIFY_SOCKET (systemd's notification socket); False if there is none."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), addr)
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc.strerror)
        return False


# ---- rtnetlink ----------------------------------------------------------------------------------------

def open_rtnetlink() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link and IPv4 address changes. The agent
    re-reads the whole host view on any message, so it only needs to know *that* something
    changed (the same subscription as pyroute2's IPRoute().bind(), without the parser)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
    except OSError:
        s.close()
        raise
    return s


def drain(sock: socket.socket) -> tuple[int, bool]:
    """Read every queued message; (number of datagrams, whether the kernel dropped some)."""
    n, overrun = 0, False
    while True:
        try:
            sock.recv(1 << 16)
            n += 1
        except BlockingIOError:
            return n, overrun
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overrun = True
                continue
            raise


# ---- the agent --------------------------------------------------------------------------------------

class Agent:
    def __init__(self, config_path: Optional[str] = None):
        self.config_path = config_path
        self.cfg: Optional[Config] = None
        self.text = ""          # the configured ruleset, checked
        self.links: dict[int, tuple[str, bytes]] = {}   # what the agent last acted on
        self.addrs: list = []
        self.stop = False
        self.hup = False
        self.retry_at: Optional[float] = None
        self.next_resync = 0.0
        # the conntrack environment the agent was started with; [conntrack] settings go on top
        self.base_ct_env = {k: os.environ[k] for k in CT_ENV if k in os.environ}

    def use_conntrack_settings(self, cfg: Config) -> None:
        """Make cfg's [conntrack] the environment the datapath reads at apply time."""
        for k in CT_ENV:
            os.environ.pop(k, None)
        os.environ.update(self.base_ct_env)
        os.environ.update(conntrack_env(cfg.conntrack))

    # -- configuration and ruleset ---------------------------------------------------------
    def load(self) -> tuple[Config, str]:
        """Configuration and ruleset text, both checked (parse, check, compile), or raise."""
        cfg = load_config(self.config_path)
        try:
            raw = cfg.ruleset.read_bytes()
        except OSError as exc:
            raise EbpfwError(f"cannot read ruleset {cfg.ruleset} (named in {cfg.path}): {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise EbpfwError(f"{cfg.ruleset}:{line}: not UTF-8 text, expected an iptables-save file, "
                             f"found byte 0x{raw[exc.start]:02x}") from None
        api.import_ruleset(text, str(cfg.ruleset))  # parse + check + compile, no kernel
        return cfg, text

    # -- applying ---------------------------------------------------------------------------
    def _enforced_text(self, cur: Optional[dict]) -> Optional[str]:
        """The enforced canonical ruleset; None when nothing is enforced, including state left
        in the state directory (it persists) by a boot whose pins are gone (bpffs does not)."""
        if not cur:
            return None
        if not Path(cur.get("gen_dir", "")).is_dir():
            log.warning("state from an earlier boot (pins gone: %s); applying afresh", cur.get("gen_dir"))
            return None
        try:
            return (state.state_dir() / api.RULES_FILE).read_text()
        except OSError:
            return None

    @staticmethod
    def _saved_with_counters() -> Optional[str]:
        try:
            return api.save(counters=True)
        except EbpfwError as exc:
            _log_error("cannot read the enforced counters; they start from zero", exc)
            return None

    def apply_now(self, new_text: Optional[str] = None, why: str = "") -> None:
        """Apply to the interfaces selected now: `new_text` (start, SIGHUP), else the enforced
        ruleset (interfaces changed). The counters are kept when the ruleset does not change.
        Re-applying what was read is a compare-and-swap: if another apply (`ebpfw apply` by
        hand) lands in between, read again rather than put the old ruleset back."""
        for attempt in range(3):
            try:
                return self._apply_once(new_text, why)
            except api.ChangedMeanwhile:
                log.info("another apply happened meanwhile; reading the state again")
        self._apply_once(new_text, why)

    def _apply_once(self, new_text: Optional[str], why: str) -> None:
        assert self.cfg is not None
        links = host.links()
        addrs = host.local_addresses()
        selected = self.cfg.select([l.name for l in links])
        cur = api.status()
        if cur:
            self._detach_renamed(cur, links, {n for n, _ in selected})
        if not selected:
            if cur:
                log.warning("no interface matches the configuration now%s; detaching", why)
                for line in api.detach():
                    log.info("%s", line)
            else:
                log.info("no interface matches the configuration yet%s; waiting for one", why)
            self._remember(links, addrs)
            return
        enforced = self._enforced_text(cur)
        source = str(self.cfg.ruleset)
        keep_counters = False
        expect = None
        if new_text is not None:
            text = new_text
            if enforced is not None and enforced == self._canonical(new_text, source):
                counted = self._saved_with_counters()
                if counted is not None:
                    text, keep_counters = counted, True
        elif enforced is not None:
            source = (cur or {}).get("source") or source
            counted = self._saved_with_counters()
            text, keep_counters = (counted, True) if counted is not None else (enforced, False)
        else:
            text = self.text
        if keep_counters or new_text is None:
            expect = (cur or {}).get("applied_at", 0.0)
        names = [n for n, _ in selected]
        res = api.apply(text, source, names, mode=self.cfg.mode, counters=keep_counters,
                        modes={n: m for n, m in selected}, expect_applied_at=expect)
        how = "new programs" if res["recompiled"] else "maps only"
        log.info("applied %s%s: %d rules on %s; generation %s, %s, %.3f s", source, why, res["rules"],
                 ", ".join(f"{i['name']} ({i['ingress']})" for i in res["ifaces"]), res["generation"], how,
                 res["seconds"])
        self._remember(links, addrs)
        sd_notify(f"STATUS=enforcing {source} on {', '.join(names)}")

    @staticmethod
    def _detach_renamed(cur: dict, links, selected: set[str]) -> None:
        """An enforced interface renamed to a name the configuration does not select: take
        ebpfw off it (api.apply and api.detach only know it by its old name, now gone)."""
        now = {l.ifindex: l.name for l in links}
        for rec in cur["ifaces"]:
            new = now.get(rec["ifindex"])
            if new is not None and new != rec["name"] and new not in selected:
                with state.ApplyLock(timeout=LOCK_TIMEOUT):
                    for line in api._detach_iface(dict(rec, name=new)):
                        log.info("%s (was %s)", line, rec["name"])

    @staticmethod
    def _canonical(text: str, name: str) -> str:
        from .iptables import parse_ruleset, save_ruleset
        return save_ruleset(parse_ruleset(text, name))

    def _remember(self, links, addrs) -> None:
        self.links = {l.ifindex: (l.name, l.mac) for l in links}
        self.addrs = addrs

    def write_host(self, links, addrs) -> None:
        """Refresh the local-address and interface maps of the enforced programs."""
        with state.ApplyLock(timeout=LOCK_TIMEOUT):
            cur = state.read_json(api.CURRENT)
            if cur:
                dp = Datapath.open_pinned(Path(cur["gen_dir"]), Shape.from_json(cur["shape"]))
                try:
                    dp.write_host(links, addrs, {r["ifindex"] for r in cur["ifaces"]})
                finally:
                    dp.close()
        self._remember(links, addrs)

    def control_apply(self, req: dict) -> dict:
        """An `ebpfw apply` handed over the control socket (ebpfw.control): the same api.apply
        call, in this process, where the last applied ruleset is kept for incremental applies."""
        ifaces, mode = req.get("ifaces"), req.get("mode", "auto")
        if not isinstance(ifaces, list) or not all(isinstance(i, str) for i in ifaces) or not isinstance(mode, str):
            raise EbpfwError("malformed control request, expected interface names and a mode")
        name = str(req.get("filename") or "<ebpfw apply>")
        res = api.apply(str(req.get("text", "")), name, ifaces, mode=mode, counters=bool(req.get("counters")),
                        modes=req.get("modes") or None)
        log.info("applied %s (from ebpfw apply): %d rules on %s; generation %s, %s, %.3f s", name, res["rules"],
                 ", ".join(f"{i['name']} ({i['ingress']})" for i in res["ifaces"]), res["generation"],
                 "new programs" if res["recompiled"] else "maps only", res["seconds"])
        return res

    # -- reacting -------------------------------------------------------------------------------
    def sync(self) -> None:
        """Compare the host with what was last enforced and act on the difference."""
        links = host.links()
        addrs = host.local_addresses()
        before = {i: n for i, (n, _) in self.links.items()}
        now = {l.ifindex: l.name for l in links}
        if before != now or (self.retry_at is not None and time.monotonic() >= self.retry_at):
            gone = [f"{n} ({i})" for i, n in before.items() if now.get(i) != n]
            new = [f"{n} ({i})" for i, n in now.items() if before.get(i) != n]
            detail = "; ".join(x for x in (f"gone: {', '.join(gone)}" if gone else "",
                                            f"new: {', '.join(new)}" if new else "") if x)
            log.info("interfaces changed (%s)", detail or "retrying")
            try:
                self.apply_now(why=" after an interface change")
                self.retry_at = None
            except EbpfwError as exc:
                _log_error("re-apply after an interface change failed; will retry", exc)
                self.retry_at = time.monotonic() + RETRY_SECONDS
            return
        macs = {l.ifindex: l.mac for l in links}
        if addrs != self.addrs or macs != {i: m for i, (_, m) in self.links.items()}:
            try:
                self.write_host(links, addrs)
                log.info("local addresses now: %s", ", ".join(_addr_text(a) for a in addrs) or "none")
            except EbpfwError as exc:
                _log_error("updating the local address map failed", exc)

    def gc_sets(self) -> None:
        """Delete expired ipset elements (the kernel's ipset collector runs every
        min(timeout/3, 180) s): until then an expired element costs its -m set rule a second
        lookup per packet. Skipped, for the next round, while an apply holds the lock."""
        try:
            with state.ApplyLock(timeout=0.5):
                freed = sets.gc_expired()
        except EbpfwError as exc:
            log.debug("set gc skipped: %s", exc)
            return
        for name, n in sorted(freed.items()):
            log.info("set %s: %d expired element%s deleted", name, n, "" if n == 1 else "s")

    def reload(self) -> None:
        sd_notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        log.info("SIGHUP: reloading %s", self.config_path or os.environ.get("EBPFW_CONFIG") or "the configuration")
        try:
            cfg, text = self.load()
        except EbpfwError as exc:
            _log_error("reload refused; the enforced ruleset stays", exc)
            sd_notify("READY=1", "STATUS=reload refused (see the log); the previous ruleset stays")
            return
        old = self.cfg
        self.cfg, self.text = cfg, text
        self.use_conntrack_settings(cfg)
        try:
            self.apply_now(text, why=" (reload)")
        except EbpfwError as exc:
            self.cfg = old
            self.use_conntrack_settings(old)
            _log_error("reload failed; the enforced ruleset stays", exc)
            sd_notify("STATUS=reload failed (see the log); the previous ruleset stays")
        sd_notify("READY=1")

    # -- main loop ---------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = True

    def run(self) -> int:
        import select

        self.cfg, self.text = self.load()       # a bad configuration or ruleset: exit 1
        self.use_conntrack_settings(self.cfg)
        log.info("configuration %s: ruleset %s, interfaces %s%s, on stop: %s", self.cfg.path, self.cfg.ruleset,
                 ", ".join(r.match + (f" ({r.mode})" if r.mode else "") for r in self.cfg.interfaces),
                 f", excluding {', '.join(self.cfg.exclude)}" if self.cfg.exclude else "", self.cfg.on_stop)
        try:
            ctl = control.listen()
            if ctl is None:
                log.warning("another agent serves %s; `ebpfw apply` goes to that one", control.socket_path())
        except (OSError, EbpfwError) as exc:
            ctl = None
            log.warning("no control socket (ebpfw apply will apply by itself): %s", exc)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        sock = open_rtnetlink()
        try:
            self.apply_now(self.text, why=" (start)")
            sd_notify("READY=1")
            self.next_resync = time.monotonic() + RESYNC_SECONDS
            next_gc = time.monotonic() + SET_GC_SECONDS
            while not self.stop:
                if self.hup:
                    self.hup = False
                    self.reload()
                    continue
                timeout = max(0.0, min(self.next_resync, next_gc) - time.monotonic())
                if self.retry_at is not None:
                    timeout = min(timeout, max(0.0, self.retry_at - time.monotonic()))
                ready, _, _ = select.select([sock, wake_r] + ([ctl] if ctl else []), [], [], min(timeout, 1.0))
                if ctl is not None and ctl in ready:
                    line = control.serve_one(ctl, self.control_apply)
                    if line:
                        log.warning("%s", line)
                if wake_r in ready:
                    try:
                        os.read(wake_r, 256)
                    except BlockingIOError:
                        pass
                if self.stop or self.hup:
                    continue
                due = time.monotonic() >= self.next_resync or (
                    self.retry_at is not None and time.monotonic() >= self.retry_at)
                if sock in ready:
                    n, overrun = drain(sock)
                    time.sleep(EVENT_SETTLE)
                    n2, overrun2 = drain(sock)
                    if overrun or overrun2:
                        log.warning("rtnetlink buffer overrun: re-reading everything")
                    log.debug("%d netlink messages", n + n2)
                    due = True
                if due:
                    try:
                        self.sync()
                    except EbpfwError as exc:
                        _log_error("reading the host's interfaces failed", exc)
                    self.next_resync = time.monotonic() + RESYNC_SECONDS
                if time.monotonic() >= next_gc:
                    self.gc_sets()
                    next_gc = time.monotonic() + SET_GC_SECONDS
        finally:
            sock.close()
            if ctl is not None:
                control.close(ctl)
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
        sd_notify("STOPPING=1")
        if self.cfg.on_stop == "detach":
            log.info("stopping: on_stop = detach, removing the programs")
            for line in api.detach():
                log.info("%s", line)
        else:
            log.info("stopping: the ruleset stays enforced (on_stop = keep); `ebpfw detach` removes it")
        return 0


def _addr_text(a: tuple[int, int, int]) -> str:
    import ipaddress
    return f"{ipaddress.IPv4Address(a[1])}/{a[2]}"


def run_agent(config_path: Optional[str] = None, verbose: bool = False) -> int:
    setup_logging(verbose)
    return Agent(config_path).run()
