"""Reload without dropping a session: SIGHUP hands the listeners to a new process.

On SIGHUP a running `gatehouse start` (the predecessor):

1. starts the same command line again (the installed build and the configuration file as
   they are now), handing it its listening sockets (``GATEHOUSE_LISTEN_FDS``, see
   `listeners.py`) and the write end of a pipe (``GATEHOUSE_READY_FD``);
2. the successor loads the configuration, adopts the sockets whose address is unchanged,
   starts every service, waits a little for its tunnels to its roots, writes the pidfile,
   tells systemd ``MAINPID=<its pid>`` and ``READY=1`` (``NOTIFY_SOCKET``, for a
   ``Type=notify`` unit with ``NotifyAccess=all``), and writes ``READY`` into the pipe;
   any failure (a configuration error above all) is written there as one sentence, and the
   successor exits;
3. on ``READY`` the predecessor stops accepting, tells its tunnel peers it is draining
   (they route new sessions to, and dial, the successor), lets its SSH sessions, forwards
   and tunnels finish — closing each connection once it carries nothing — for at most
   ``gatehouse.drain_timeout``, then ends what is left and exits. On a failure it keeps
   serving as before and logs the successor's sentence.

The predecessor records the outcome next to the pidfile (``PIDFILE.reload``, JSON) for
`gatehouse reload`, which checks the configuration first, sends the signal, and waits.
Nothing here imports a service: the services meet this module through `listeners.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from . import listeners
from .errors import GatehouseError
from .pki import write_public

log = logging.getLogger("gatehouse.reload")

READY_FD_ENV = "GATEHOUSE_READY_FD"
#: How long a successor may take to start before the predecessor gives up on it.
START_TIMEOUT = 120.0
#: How long a successor waits for its tunnels before it says it is ready anyway.
READY_CHECK_TIMEOUT = 10.0
#: Seconds between "still draining" log lines.
DRAIN_LOG_EVERY = 60.0

_ready_fd: int | None = None
_pid_file: str | None = None


# ------------------------------------------------------------------ both ends
def setup(pid_file: str | None) -> None:
    """Called by `gatehouse start` before anything else: note the pidfile and, in a successor,
    take the readiness pipe out of the environment (no session ever inherits it)."""
    global _ready_fd, _pid_file
    _pid_file = pid_file
    text = os.environ.pop(READY_FD_ENV, "")
    if text.isdigit():
        _ready_fd = int(text)
        try:
            os.set_inheritable(_ready_fd, False)
        except OSError:
            _ready_fd = None


def is_successor() -> bool:
    """Whether this process was started by a reload (and has not reported yet)."""
    return _ready_fd is not None


def write_pid_file(path: str | None) -> None:
    if path:
        write_public(path, f"{os.getpid()}\n")


def remove_pid_file(path: str | None) -> None:
    """At exit: remove the pidfile only when it still names this process (a successor owns it otherwise)."""
    if path and read_pid(path) == os.getpid():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def status_path(pid_file: str) -> str:
    return pid_file + ".reload"


def report_failure(message: str) -> None:
    """A successor that cannot start: its one sentence goes to the predecessor, which keeps serving."""
    global _ready_fd
    if _ready_fd is None:
        return
    try:
        os.write(_ready_fd, ("ERROR " + " ".join(message.split()) + "\n").encode()[:4000])
        os.close(_ready_fd)
    except OSError:
        pass
    _ready_fd = None


def sd_notify(*fields: str) -> None:
    """Tell systemd (a Type=notify unit) about this process; nothing without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)


def successor_argv() -> list[str]:
    """The command line this process was started with, run by the same interpreter."""
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    argv[0] = sys.executable
    return argv


# ------------------------------------------------------------------ the running process
class Reloader:
    """SIGHUP handling for one `gatehouse start` process (``proc``: a GatehouseProcess)."""

    def __init__(self, proc):
        self.proc = proc
        self.cfg = proc.cfg
        self.pid_file = _pid_file
        self.state = "starting"   # starting, serving, reloading, draining
        self.successor: subprocess.Popen | None = None
        self._task: asyncio.Task | None = None
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)

    async def started(self) -> None:
        """Every service runs: a successor waits for its tunnels, then takes over the pidfile and
        tells systemd and its predecessor; a first start tells systemd."""
        global _ready_fd
        if _ready_fd is not None:
            await listeners.ready_checks(READY_CHECK_TIMEOUT)
            listeners.close_unused_inherited()
            write_pid_file(self.pid_file)
            sd_notify(f"MAINPID={os.getpid()}", "READY=1")
            try:
                os.write(_ready_fd, b"READY\n")
                os.close(_ready_fd)
            except OSError as exc:
                log.warning("reload: cannot tell the previous process that this one is ready: %s", exc)
            _ready_fd = None
        else:
            await listeners.ready_checks(0)
            sd_notify(f"MAINPID={os.getpid()}", "READY=1")
        self.state = "serving"

    def _on_signal(self) -> None:
        if self.state == "serving":
            self._task = asyncio.ensure_future(self.reload())
        elif self.state == "draining":
            log.warning("reload: SIGHUP ignored: this process (pid %d) already handed over to pid %s and is "
                        "draining; signal that one", os.getpid(), self.successor.pid if self.successor else "?")
        else:
            log.warning("reload: SIGHUP ignored: this process is still %s", self.state)

    async def reload(self) -> None:
        self.state = "reloading"
        log.info("reload: SIGHUP: starting a new process with the configuration in %s", self.cfg.path)
        try:
            new_pid = await self._start_successor()
        except GatehouseError as exc:
            self.state = "serving"
            message = f"{exc}; pid {os.getpid()} keeps serving with the configuration it has"
            log.error("reload failed: %s", message)
            self._write_status("failed", error=message)
            return
        self.state = "draining"
        self._write_status("ready", new_pid=new_pid)
        log.info("reload: pid %d serves now; this process (pid %d) stops accepting and lets its sessions "
                 "finish (at most %ds)", new_pid, os.getpid(), self.cfg.drain_timeout)
        await self.drain()

    async def _start_successor(self) -> int:
        socks = listeners.sockets()
        fds = [sock.fileno() for sock in socks.values()]
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env[listeners.LISTEN_FDS_ENV] = ",".join(map(str, fds))
        env[READY_FD_ENV] = str(write_end)
        try:
            self.successor = subprocess.Popen(successor_argv(), pass_fds=[*fds, write_end], env=env,
                                              stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            os.close(read_end)
            raise GatehouseError(f"cannot start a new gatehouse process ({exc.strerror or exc})") from None
        finally:
            os.close(write_end)
        try:
            answer = await _read_line(read_end, START_TIMEOUT)
        finally:
            os.close(read_end)
        if answer == "READY":
            return self.successor.pid
        await self._end_successor()
        if answer.startswith("ERROR "):
            raise GatehouseError(f"the new process refused to start: {answer[6:].removeprefix('ERROR: ')}")
        if answer == "TIMEOUT":
            raise GatehouseError(f"the new process did not get ready within {START_TIMEOUT:g}s; its log says why")
        raise GatehouseError(f"the new process exited (status {self.successor.returncode}) before it was ready; "
                             f"its log says why")

    async def _end_successor(self) -> None:
        child = self.successor
        if child.poll() is None:
            child.terminate()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, child.wait, 15)
        except subprocess.TimeoutExpired:
            child.kill()
            await loop.run_in_executor(None, child.wait, 5)

    async def drain(self) -> None:
        """Stop accepting, let sessions and tunnels finish (bounded), then stop this process."""
        await listeners.stop_accepting()
        start = time.monotonic()
        deadline, next_log = start + self.cfg.drain_timeout, start + DRAIN_LOG_EVERY
        while True:
            busy = listeners.drain_step()
            now = time.monotonic()
            if not busy:
                log.info("reload: drained in %.1fs; this process (pid %d) exits", now - start, os.getpid())
                break
            summary = ", ".join(f"{n} on {what}" for what, n in sorted(busy.items()))
            if now >= deadline:
                log.warning("reload: gatehouse.drain_timeout (%ds) is over with connections still open (%s); "
                            "ending them", self.cfg.drain_timeout, summary)
                break
            if now >= next_log:
                next_log = now + DRAIN_LOG_EVERY
                log.info("reload: draining: connections still open: %s", summary)
            await asyncio.sleep(0.5)
        self.proc.stopped.set()

    def _write_status(self, state: str, **fields) -> None:
        if not self.pid_file:
            return
        record = {"pid": os.getpid(), "state": state, "time": time.time(), **fields}
        try:
            write_public(status_path(self.pid_file), json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("reload: cannot record the outcome in %s: %s", status_path(self.pid_file), exc)


async def _read_line(fd: int, timeout: float) -> str:
    """The first line written into the pipe FD: "" at end of file, "TIMEOUT" after TIMEOUT seconds."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    buf = bytearray()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or b"\n" in buf or len(buf) > 8192) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return "TIMEOUT"
    finally:
        loop.remove_reader(fd)
    return bytes(buf).split(b"\n", 1)[0].decode("utf-8", "replace").strip()


# ------------------------------------------------------------------ `gatehouse reload`
def request(config_path: str, pid_file: str, timeout: float, *, debug: bool = False,
            insecure: bool = False) -> tuple[int, str]:
    """`gatehouse reload`: (exit status, one line). Checks the configuration first (a broken one
    is refused here and the agent is not signalled), then signals the pidfile's process and waits
    for the outcome it records. Exit 3: not running."""
    from . import config
    try:
        config.load(config_path, debug=debug, insecure=insecure)
    except GatehouseError as exc:
        return 1, f"ERROR: {exc}; nothing was reloaded, the running agent keeps its configuration"
    pid = read_pid(pid_file)
    if pid is None or not _alive(pid):
        return 3, f"ERROR: gatehouse is not running (no live process in {pid_file}); start it instead of reloading it"
    status = status_path(pid_file)
    try:
        os.unlink(status)
    except FileNotFoundError:
        pass
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return 1, f"ERROR: cannot signal gatehouse (pid {pid}): {exc.strerror}; run this as the agent's user or root"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _read_status(status)
        if record.get("pid") == pid and record.get("state") == "ready":
            return 0, (f"gatehouse has been reloaded: pid {record.get('new_pid')} serves now, pid {pid} lets "
                       f"its sessions finish")
        if record.get("pid") == pid and record.get("state") == "failed":
            return 1, f"ERROR: reload failed: {record.get('error') or 'see the agent log'}"
        if not _alive(pid):
            return 1, f"ERROR: gatehouse (pid {pid}) exited during the reload; see its log"
        time.sleep(0.2)
    return 1, f"ERROR: gatehouse (pid {pid}) did not report a reload within {timeout:g}s; see its log"


def _read_status(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
