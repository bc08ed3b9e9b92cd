"""`ebpfw apply --confirm DURATION` and `ebpfw confirm`: apply, and put the previous ruleset
back unless the change is confirmed in time (like iptables-apply, but each step is atomic).

Contract:
- `apply_with_rollback(...)` first records the previous state in state_dir()/rollback.json
  (the enforced canonical ruleset text, its source name, and each interface with its mode;
  `previous` is null when nothing was enforced), then starts the rollback process (double
  fork, new session, stdio on /dev/null, so a dying terminal or SSH session cannot take it
  down), then applies. A failed apply changes nothing and cancels the rollback.
- The deadline (CLOCK_MONOTONIC) is set only once the apply finished, so the user gets the
  whole window to test. If the applying process dies before that, the rollback process
  starts the window itself.
- The rollback process polls the file every POLL seconds: gone or carrying another token
  -> confirmed or superseded, it exits. At the deadline it claims the file by renaming it to
  rollback.running (atomic against `ebpfw confirm`, which unlinks rollback.json), re-applies
  the previous ruleset to those of its interfaces that still exist (or detaches when there
  was none), logs to state_dir()/rollback.log and syslog, and records the outcome in
  rollback.last.json. If the enforced ruleset is no longer the trial one (a plain `ebpfw
  apply` or a detach replaced it), that was deliberate and nothing is rolled back.
- A second `apply --confirm` while one is pending keeps the *first* previous ruleset (the
  last confirmed one) and supersedes the first rollback process.
- `confirm()` unlinks rollback.json; it fails with a clear message when nothing is pending or
  the rollback has already started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Optional

from . import state
from .errors import EbpfwError

PENDING = "rollback.json"
RUNNING = "rollback.running"
LAST = "rollback.last.json"
LOG = "rollback.log"
POLL = 0.1
MAX_SECONDS = 24 * 3600


def parse_duration(text: str) -> float:
    """'30s', '2m', '90', '1m30s', '500ms' -> seconds (0 < d <= 24 h)."""
    t = text.strip().lower()
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?", t)
    if t and re.fullmatch(r"\d+(?:\.\d+)?", t):
        secs = float(t)
    elif t and m and any(m.groups()):
        h, mi, s, ms = m.groups()
        secs = int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0) + int(ms or 0) / 1000
    else:
        raise EbpfwError(f"invalid --confirm duration {text!r}, expected a time like 30s, 2m or 1m30s")
    if not 0 < secs <= MAX_SECONDS:
        raise EbpfwError(f"invalid --confirm duration {text!r}, expected more than 0 and at most 24h")
    return secs


def _path(name: str) -> Path:
    return state.state_dir(create=True) / name


def _read(name: str) -> Optional[dict]:
    try:
        return json.loads(_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _log(msg: str) -> None:
    line = time.strftime("%Y-%m-%d %H:%M:%S ") + msg
    try:
        with open(_path(LOG), "a") as f:
            f.write(line + "\n")
    except (OSError, EbpfwError):
        pass
    try:
        import syslog
        syslog.openlog("ebpfw-rollback", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, msg)
    except Exception:  # no syslog socket: the log file has it
        pass


def snapshot() -> Optional[dict]:
    """What is enforced now, enough to apply it again; None when nothing is."""
    cur = state.read_json("current.json")
    if not cur:
        return None
    path = state.state_dir() / "ruleset.rules"
    try:
        text = path.read_text()
    except OSError as exc:
        raise EbpfwError(f"cannot read the enforced ruleset {path}: {exc.strerror}; refusing to apply "
                         "with --confirm because the previous ruleset could not be restored") from None
    return {"text": text, "source": cur.get("source") or str(path),
            "ifaces": [{"name": r["name"], "mode": r.get("mode") or "auto"} for r in cur["ifaces"]]}


def _spawn(token: str) -> int:
    """Start `python -m ebpfw.rollback TOKEN` detached (double fork, setsid); its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new session, fork again, report the grandchild, exit
        try:
            os.close(r)
            os.setsid()
            pid2 = os.fork()
            if pid2:
                os.write(w, str(pid2).encode())
                os._exit(0)
            os.close(w)
            os.chdir("/")
            fd = os.open(os.devnull, os.O_RDWR)
            for n in (0, 1, 2):
                os.dup2(fd, n)
            if fd > 2:
                os.close(fd)
            os.execv(sys.executable, [sys.executable, "-m", "ebpfw.rollback", token])
        finally:
            os._exit(127)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 32)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    if not data:
        raise EbpfwError("could not start the rollback process; nothing was applied")
    return int(data)


def apply_with_rollback(text: str, filename: str, ifaces: list[str], mode: str, counters: bool,
                        seconds: float) -> dict:
    from . import api

    previous = snapshot()
    pending = _read(PENDING)
    if pending is not None:  # a trial in progress: the one to return to is still its previous
        previous = pending.get("previous")
    token = secrets.token_hex(8)
    record = {"token": token, "previous": previous, "state": "applying", "apply_pid": os.getpid(),
              "seconds": seconds, "source": filename, "created": time.time()}
    state.write_json_atomic(PENDING, record)
    try:
        record["rollback_pid"] = _spawn(token)
        state.write_json_atomic(PENDING, record)
        res = api.apply(text, filename, ifaces, mode=mode, counters=counters)
    except BaseException:
        cur = _read(PENDING)
        if cur is not None and cur.get("token") == token:
            if pending is not None:
                # the earlier trial goes on, watched by a new process (the old one saw the
                # token change and left)
                pending["token"] = secrets.token_hex(8)
                state.write_json_atomic(PENDING, pending)
                pending["rollback_pid"] = _spawn(pending["token"])
                state.write_json_atomic(PENDING, pending)
            else:
                _path(PENDING).unlink(missing_ok=True)
        raise
    record.update(state="armed", deadline=time.monotonic() + seconds, applied_at=time.time(),
                  trial_sha256=_enforced_sha256())
    state.write_json_atomic(PENDING, record)
    res["rollback_pid"] = record["rollback_pid"]
    res["previous"] = (previous or {}).get("source")
    return res


def _enforced_sha256() -> Optional[str]:
    try:
        return hashlib.sha256((state.state_dir() / "ruleset.rules").read_bytes()).hexdigest()
    except OSError:
        return None


def confirm() -> str:
    p = _path(PENDING)
    data = _read(PENDING)
    try:
        p.unlink()
    except FileNotFoundError:
        if _path(RUNNING).exists():
            raise EbpfwError("too late: the rollback to the previous ruleset is running now") from None
        last = _read(LAST)
        if last:
            when = time.strftime("%H:%M:%S", time.localtime(last.get("at", 0)))
            raise EbpfwError(f"nothing to confirm: the last `apply --confirm` was not confirmed in time and "
                             f"was rolled back at {when} ({last.get('result', '')})") from None
        raise EbpfwError("nothing to confirm: no `ebpfw apply --confirm` is pending in this network namespace") from None
    src = (data or {}).get("source", "the new ruleset")
    return f"confirmed: {src} stays enforced; the rollback is cancelled"


def pending() -> Optional[dict]:
    return _read(PENDING)


# ---- the rollback process ------------------------------------------------------------------------------

def _restore(previous: Optional[dict]) -> str:
    from . import api
    from .netlink import host

    if previous is None:
        api.detach()
        return "nothing was enforced before: detached"
    present = {l.name for l in host.links()}
    ifaces = [i for i in previous["ifaces"] if i["name"] in present]
    if not ifaces:
        api.detach()
        return "none of the previous interfaces exists any more: detached"
    names = [i["name"] for i in ifaces]
    api.apply(previous["text"], previous["source"], names, mode="auto",
              modes={i["name"]: i["mode"] for i in ifaces})
    return f"restored {previous['source']} on {', '.join(names)}"


def run(token: str) -> int:
    died_at: Optional[float] = None
    while True:
        rec = _read(PENDING)
        if rec is None or rec.get("token") != token:
            return 0  # confirmed, cancelled or superseded
        now = time.monotonic()
        if rec.get("state") == "armed":
            if now >= rec["deadline"]:
                break
        elif not _alive(int(rec.get("apply_pid", 0))):
            died_at = died_at if died_at is not None else now
            if now - died_at >= float(rec.get("seconds", 0)):
                break
        time.sleep(POLL)
    try:
        os.rename(_path(PENDING), _path(RUNNING))
    except FileNotFoundError:
        return 0  # confirmed at the last moment
    claimed = _read(RUNNING)
    if claimed is None or claimed.get("token") != token:  # replaced between the read and the rename
        os.rename(_path(RUNNING), _path(PENDING))
        return 0
    _log(f"{claimed.get('source')} was not confirmed within {claimed.get('seconds')} s: rolling back")
    try:
        trial = claimed.get("trial_sha256")
        if trial is not None and _enforced_sha256() != trial:
            # a plain `ebpfw apply` (or a detach) replaced the trial ruleset: that was deliberate
            result = "not rolled back: the trial ruleset was replaced by another apply meanwhile"
        else:
            result = _restore(claimed.get("previous"))
        ok = True
    except EbpfwError as exc:
        result, ok = "rollback FAILED: " + exc.render().replace("\n", "; "), False
    except Exception as exc:  # a bug; say so where the admin looks
        result, ok = f"rollback FAILED (bug): {exc!r}", False
    _log(result)
    try:
        state.write_json_atomic(LAST, {"at": time.time(), "result": result, "ok": ok,
                                       "source": claimed.get("source")})
    finally:
        _path(RUNNING).unlink(missing_ok=True)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m ebpfw.rollback TOKEN (started by `ebpfw apply --confirm`)", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1]))
