"""Run one SSH session's command or login shell as a Unix login on this node.

The node server (``node/server.py``) authenticates the user certificate and
decides access; it then hands the asyncssh process to :func:`run_session`,
which owns everything from there until the channel closes:

* resolve the login (``pwd``) and refuse with one clear stderr line and exit
  status 1 when it does not exist (or when the service cannot switch to it);
* start ``$SHELL -c COMMAND`` (or the login shell as ``-bash`` style login
  shell, or ``$SHELL -c /usr/lib/openssh/sftp-server`` for the ``sftp``
  subsystem, see :class:`SessionProcess` and :func:`find_sftp_server`) as
  that login: supplementary groups from the group database, then gid, then
  uid, in a new session and process group, with a fresh environment,
  ``umask 022`` and the home directory as cwd;
* without a PTY, pump bytes between the channel and three pipes in 256 KiB
  chunks with flow control in both directions (the channel stops being read
  while the child's stdin pipe is full; the child's output stops being read
  while the channel's send window is exhausted);
* with a PTY, pump the PTY master, apply the client's terminal modes and
  window size, and follow window changes (``TIOCSWINSZ``: the foreground
  process group gets ``SIGWINCH``);
* deliver client ``signal`` / ``break`` requests to the child's process group
  (with a PTY: also to the terminal's foreground process group);
* when the child exits, drain its output, then send ``exit-status`` or
  ``exit-signal`` and close the channel;
* when the client goes away first, send ``SIGHUP`` to the process group and
  ``SIGKILL`` after :data:`KILL_GRACE` seconds if the child is still there.
  The child is always reaped: no zombies.

Works with channels opened with ``encoding=None`` (bytes, the fast path) and
with a text encoding.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import fcntl
import grp
import inspect
import logging
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import asyncssh

from ..waits import wait_event

__all__ = ["SessionResult", "SessionProcess", "run_session", "refuse_session", "find_sftp_server", "SAFE_PATH",
           "KILL_GRACE", "DRAIN_IDLE"]

log = logging.getLogger(__name__)

#: PATH given to every session (the login shell's profile may extend it).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Bytes moved per read/write on the data path.
CHUNK = 256 * 1024

#: Pipe buffer size asked for on the exec data path (best effort).
PIPE_SIZE = 1024 * 1024

#: Seconds between SIGHUP and SIGKILL when the client went away.
KILL_GRACE = 2.0

#: After the child exited, output pipes that stay open (held by a background
#: process) but silent for this many seconds are abandoned so the session ends.
DRAIN_IDLE = 1.0

#: Where the OpenSSH sftp-server binary lives on common distributions (Debian and
#: Ubuntu, Fedora/RHEL/SUSE, Arch, Alpine, Gentoo, FreeBSD ports).
SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/ssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/misc/sftp-server",
    "/usr/local/libexec/sftp-server",
)

#: sshd's own configuration, consulted for its ``Subsystem sftp PATH`` line.
SSHD_CONFIG = "/etc/ssh/sshd_config"

#: Signals a client may send (RFC 4254 section 6.10 names, without "SIG").
ALLOWED_SIGNALS = ("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE",
                   "QUIT", "SEGV", "TERM", "USR1", "USR2")

# Environment variables taken from the ``env`` argument (client supplied):
# locale and time zone only, plus GATEHOUSE_* for the server's own use.
_ENV_ALLOWED = re.compile(r"(LANG|LANGUAGE|TZ|COLORTERM|LC_[A-Z_]+|GATEHOUSE_[A-Z0-9_]+)\Z")
_ENV_VALUE_MAX = 4096

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

# RFC 4254 section 8 terminal mode opcodes -> termios names.
_TTY_CC = {1: "VINTR", 2: "VQUIT", 3: "VERASE", 4: "VKILL", 5: "VEOF", 6: "VEOL",
           7: "VEOL2", 8: "VSTART", 9: "VSTOP", 10: "VSUSP", 12: "VREPRINT",
           13: "VWERASE", 14: "VLNEXT", 18: "VDISCARD"}
_TTY_FLAGS = {  # opcode -> (index in tcgetattr list, flag name)
    30: (0, "IGNPAR"), 31: (0, "PARMRK"), 32: (0, "INPCK"), 33: (0, "ISTRIP"),
    34: (0, "INLCR"), 35: (0, "IGNCR"), 36: (0, "ICRNL"), 37: (0, "IUCLC"),
    38: (0, "IXON"), 39: (0, "IXANY"), 40: (0, "IXOFF"), 41: (0, "IMAXBEL"),
    42: (0, "IUTF8"),
    50: (3, "ISIG"), 51: (3, "ICANON"), 52: (3, "XCASE"), 53: (3, "ECHO"),
    54: (3, "ECHOE"), 55: (3, "ECHOK"), 56: (3, "ECHONL"), 57: (3, "NOFLSH"),
    58: (3, "TOSTOP"), 59: (3, "IEXTEN"), 60: (3, "ECHOCTL"), 61: (3, "ECHOKE"),
    62: (3, "PENDIN"),
    70: (1, "OPOST"), 71: (1, "OLCUC"), 72: (1, "ONLCR"), 73: (1, "OCRNL"),
    74: (1, "ONOCR"), 75: (1, "ONLRET"),
    92: (2, "PARENB"), 93: (2, "PARODD"),
}

# Background terminations still running (kept referenced until done).
_BACKGROUND: "set[asyncio.Task]" = set()


@dataclass
class SessionResult:
    """What happened in one session, for the audit log.

    ``exit_status`` is set when the child exited normally (or the session was
    refused: 1); ``exit_signal`` is the signal name without ``SIG`` when it was
    killed by a signal. Both are None when the child's end was not observed.
    ``started``/``ended`` are Unix times; ``pid`` is the child's pid (None when
    nothing was started).
    """

    exit_status: Optional[int]
    exit_signal: Optional[str]
    command: Optional[str]
    pty: bool
    started: float
    ended: float
    pid: Optional[int]
    login: str = ""
    subsystem: Optional[str] = None
    core_dumped: bool = False
    #: The client disconnected (or closed the channel) before the child exited.
    disconnected: bool = False
    #: The one-line refusal shown to the user, when the session was refused (or ended by a limit).
    error: Optional[str] = None
    #: Set when the node ended the session itself: "idle_timeout", "deadline" or "recording_failed".
    ended_by: Optional[str] = None


async def run_session(process: asyncssh.SSHServerProcess, login: str, *, node_name: str,
                      env: Optional[Mapping[str, str]] = None,
                      permit_pty: bool = True, deadline: Optional[float] = None, deadline_message: str = "",
                      idle_timeout: float = 0, tap=None) -> SessionResult:
    """Run the session's command (or shell) as Unix user ``login``; see the module doc.

    ``env`` holds extra environment variables; only locale/time-zone names
    (``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``COLORTERM``) and ``GATEHOUSE_*``
    are passed on. ``None`` means "use what the client sent" (``process.env``,
    filtered the same way), ``{}`` means nothing. ``permit_pty=False`` runs the
    session without a terminal (with a one-line warning) even if one was asked
    for. At ``deadline`` (a Unix time) the session is ended with
    ``deadline_message`` on the client's stderr; after ``idle_timeout`` seconds
    without input from the client (data, signals, window changes) likewise. The
    result's ``ended_by`` and ``error`` say so. Returns when the session is over;
    never raises for session failures.

    ``tap`` (optional; node/recording.py's SessionRecorder) sees what the client sees:
    ``tap.output(bytes)`` for every chunk of output before the client does (False: the chunk
    must not be shown, the tap is ending the session) and ``tap.resize(cols, rows)`` for
    every window change; ``tap.bind(stop)`` gives it ``stop(ended_by, message)``, which
    ends the session like a limit does. A tap never raises into the session.
    """
    return await _Session(process, login, node_name, env, permit_pty, deadline, deadline_message,
                          idle_timeout, tap).run()


def refuse_session(process: asyncssh.SSHServerProcess, login: str, node_name: str, message: str) -> SessionResult:
    """End a session before it starts: MESSAGE on the client's stderr, exit status 1."""
    return _Session(process, login, node_name, None, False)._refuse(message)


class SessionProcess(asyncssh.SSHServerProcess):
    """A server process that hands every session, the ``sftp`` subsystem included, to
    the process factory.

    asyncssh alone either refuses ``sftp`` (no ``sftp_factory``) or serves it in
    process, as the agent's own user. Nodes instead run the system's ``sftp-server``
    as the requested login (:func:`run_session`), so file access is exactly what
    that login may do, as with sshd. Other subsystems reach the factory too, and
    :func:`run_session` refuses them with a one-line message.
    """

    def __init__(self, process_factory):
        super().__init__(process_factory, None, 0, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        chan = self.channel
        if chan.get_subsystem() != "sftp":
            super().session_started()
            return
        # The base class would start asyncssh's in-process SFTP server here.
        handler = self._start_process(
            asyncssh.SSHReader(self, chan), asyncssh.SSHWriter(self, chan),
            asyncssh.SSHWriter(self, chan, asyncssh.EXTENDED_DATA_STDERR))
        if inspect.isawaitable(handler):
            chan.get_connection().create_task(handler)


_sftp_server_cache: Dict[str, Optional[str]] = {}


def find_sftp_server(sshd_config: str = SSHD_CONFIG) -> Optional[str]:
    """Path of the OpenSSH ``sftp-server`` binary on this host, or None.

    Looks, in order, at the ``Subsystem sftp`` line of sshd's configuration (when it
    names an executable, not ``internal-sftp``), the usual install locations of
    every common distribution, and ``PATH``. The answer is cached per config path
    once found; a miss is looked up again next time (the package may be installed
    while the node runs).
    """
    hit = _sftp_server_cache.get(sshd_config)
    if hit and os.access(hit, os.X_OK):
        return hit
    candidates: List[str] = []
    try:
        with open(sshd_config, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                words = line.split()
                if len(words) >= 3 and words[0].lower() == "subsystem" and words[1] == "sftp":
                    candidates.append(words[2])
    except OSError:
        pass
    candidates.extend(SFTP_SERVER_PATHS)
    found = shutil.which("sftp-server")
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
            _sftp_server_cache[sshd_config] = path
            return path
    return None


# --------------------------------------------------------------------------- helpers


def _wait_status(status: int) -> Tuple[Optional[int], Optional[str], bool]:
    """Turn a waitpid status into (exit_status, signal name, core dumped)."""
    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        try:
            name = signal.Signals(num).name[3:]
        except ValueError:
            name = f"SIG{num}@gatehouse"
        return None, name, os.WCOREDUMP(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None, False
    return None, None, False


async def _wait_fd(fd: int, write: bool = False) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the non-blocking ``fd``, waiting while it is full."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await _wait_fd(fd, write=True)
            continue
        view = view[n:]


def _close_fd(fd: Optional[int]) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _set_winsize(fd: int, size: Tuple[int, int, int, int]) -> None:
    width, height, pixwidth, pixheight = (max(0, min(int(v), 0xFFFF)) for v in size)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def _apply_modes(fd: int, modes: Mapping[int, int]) -> None:
    """Apply the client's RFC 4254 terminal modes to the PTY."""
    if not modes:
        return
    attrs = termios.tcgetattr(fd)
    for opcode, value in modes.items():
        if opcode in _TTY_CC:
            index = getattr(termios, _TTY_CC[opcode], None)
            if index is not None and index < len(attrs[6]):
                attrs[6][index] = bytes([0 if value == 255 else value & 0xFF])
        elif opcode in _TTY_FLAGS:
            where, name = _TTY_FLAGS[opcode]
            flag = getattr(termios, name, None)
            if flag is not None:
                attrs[where] = (attrs[where] | flag) if value else (attrs[where] & ~flag)
        elif opcode in (90, 91) and value:  # CS7 / CS8
            attrs[2] = (attrs[2] & ~termios.CSIZE) | (termios.CS7 if opcode == 90 else termios.CS8)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _acquire_ctty() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Make the PTY on stdin the controlling terminal of the new session."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _filter_env(env: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        if _ENV_ALLOWED.match(name) and "\0" not in value and len(value) <= _ENV_VALUE_MAX:
            out[name] = value
    return out


def _addr(info: Any) -> Optional[Tuple[str, int]]:
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


class _Pump:
    """One output stream (child -> channel) and its idle bookkeeping."""

    def __init__(self) -> None:
        self.task: Optional[asyncio.Task] = None
        self.idle_since: Optional[float] = None  # waiting on an empty fd since


class _Spawned:
    """Child-side resources the parent keeps."""

    def __init__(self) -> None:
        self.stdin: Optional[int] = None
        self.stdout: Optional[int] = None
        self.stderr: Optional[int] = None
        self.master: Optional[int] = None


# --------------------------------------------------------------------------- the session


class _Session:
    def __init__(self, process: asyncssh.SSHServerProcess, login: str, node_name: str,
                 env: Optional[Mapping[str, str]], permit_pty: bool, deadline: Optional[float] = None,
                 deadline_message: str = "", idle_timeout: float = 0, tap=None):
        self.tap = tap
        self._stopped: Optional[Tuple[str, str]] = None
        self._stop_event = asyncio.Event()
        if tap is not None:
            tap.bind(self._stop)
        self.deadline = deadline
        self.deadline_message = deadline_message
        self.idle_timeout = idle_timeout
        self.last_input = time.monotonic()
        self.process = process
        self.login = login
        self.node = node_name
        self.env_in = env
        self.permit_pty = permit_pty
        self.encoding, self.errors = process.channel.get_encoding()
        self.want_pty = process.get_terminal_type() is not None
        self.eol = "\r\n" if self.want_pty else "\n"
        self.io = _Spawned()
        self.pid: Optional[int] = None
        self.pgid: Optional[int] = None
        self.reaped = False
        self.status: Optional[int] = None
        self.exit_task: Optional[asyncio.Task] = None
        self.io_stopped = False  # no pump task is running any more
        self.result = SessionResult(
            exit_status=None, exit_signal=None, command=process.command, pty=False,
            started=time.time(), ended=0.0, pid=None, login=login,
            subsystem=process.subsystem)

    # ----- small I/O helpers

    def _to_channel(self) -> Callable[[bytes], Any]:
        """Converter for child output -> channel data (bytes, or str in text mode)."""
        if self.encoding is None:
            return lambda data: data
        decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
        return decoder.decode

    def _from_channel(self, data: Any) -> bytes:
        if isinstance(data, str):
            return data.encode(self.encoding or "utf-8", "replace")
        return bytes(data) if not isinstance(data, bytes) else data

    def _say(self, message: str) -> None:
        """One line on the client's stderr (best effort)."""
        line = message + self.eol
        try:
            self.process.stderr.write(line if self.encoding else line.encode("utf-8", "replace"))
        except Exception:  # channel already gone
            log.debug("could not write to the session's stderr: %s", message)

    def _refuse(self, message: str, status: int = 1) -> SessionResult:
        log.info("session refused on node %s for login %s: %s", self.node, self.login, message)
        self._say(message)
        try:
            self.process.exit(status)
        except Exception:
            pass
        self.result.exit_status = status
        self.result.error = message
        self.result.ended = time.time()
        return self.result

    # ----- main flow

    async def run(self) -> SessionResult:
        loop = asyncio.get_running_loop()
        try:
            pw, groups = await loop.run_in_executor(None, _lookup, self.login)
        except KeyError:
            return self._refuse(
                f'gatehouse: login "{self.login}" does not exist on node "{self.node}"; '
                "ask the node's administrator to create it or use another login")

        creds: Dict[str, Any] = {}
        euid = os.geteuid()
        if euid == 0:
            creds = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}
        elif pw.pw_uid != euid:
            me = pwd.getpwuid(euid).pw_name if _has_uid(euid) else str(euid)
            return self._refuse(
                f'gatehouse: the node service on "{self.node}" runs as "{me}", not root, so it '
                f'cannot start a session as login "{self.login}"; use login "{me}" or run the '
                "node service as root")

        use_pty = self.want_pty and not self.process.subsystem
        if use_pty and not self.permit_pty:
            self._say("gatehouse: PTY not permitted by your roles; running without a terminal")
            use_pty = False

        spec = self._command(pw)
        if isinstance(spec, str):
            return self._refuse(spec)
        argv, executable, what = spec

        home = pw.pw_dir or "/"
        cwd = home
        if not os.path.isdir(home):
            self._say(f'gatehouse: home directory "{home}" of login "{self.login}" does not '
                      'exist; starting in "/"')
            cwd = "/"

        env = self._environment(pw, home)
        try:
            self._spawn(argv, executable, env, cwd, creds, pw, use_pty)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._close_all()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return self._refuse(f'gatehouse: cannot start {what} as login "{self.login}" on '
                                f'node "{self.node}": {reason}')

        self.result.pid = self.pid
        self.result.pty = use_pty
        log.info("session started on node %s: login %s, pid %s, pty %s", self.node, self.login, self.pid, use_pty)
        log.debug("session %s runs command %r", self.pid, self.process.command)  # commands only at DEBUG
        try:
            await self._supervise(use_pty)
        finally:
            self.result.ended = time.time()
        return self.result

    def _command(self, pw: pwd.struct_passwd):
        """(argv, executable, description) for this session, or a refusal message."""
        shell = pw.pw_shell or "/bin/sh"
        name = os.path.basename(shell)
        subsystem = self.process.subsystem
        if subsystem:
            if subsystem != "sftp":
                return (f'gatehouse: subsystem "{subsystem}" is not available on node '
                        f'"{self.node}"; only "sftp" is served')
            path = find_sftp_server()
            if path is None:
                return (f'gatehouse: sftp is not available on node "{self.node}": no sftp-server '
                        "program is installed; ask the node's administrator to install "
                        "OpenSSH's sftp server (Debian: openssh-sftp-server)")
            # Through the login shell, as sshd does: a nologin shell blocks it.
            return [name, "-c", path], shell, "the sftp subsystem"
        command = self.process.command
        if command is None:
            return ["-" + name], shell, f"the login shell {shell}"
        return [name, "-c", command], shell, f"the command with shell {shell}"

    def _environment(self, pw: pwd.struct_passwd, home: str) -> Dict[str, str]:
        env = _filter_env(self.process.env if self.env_in is None else self.env_in)
        env.update({
            "HOME": home,
            "USER": pw.pw_name,
            "LOGNAME": pw.pw_name,
            "SHELL": pw.pw_shell or "/bin/sh",
            "PATH": SAFE_PATH,
            "MAIL": f"/var/mail/{pw.pw_name}",
        })
        peer = _addr(self.process.get_extra_info("peername"))
        local = _addr(self.process.get_extra_info("sockname"))
        if peer and local:
            env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
            env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
        return env

    def _spawn(self, argv: List[str], executable: str, env: Dict[str, str], cwd: str,
               creds: Dict[str, Any], pw: pwd.struct_passwd, use_pty: bool) -> None:
        child_fds: List[int] = []
        try:
            if use_pty:
                master, slave = os.openpty()
                self.io.master = master
                child_fds.append(slave)
                term = self.process.get_terminal_type() or "dumb"
                try:
                    _apply_modes(slave, self.process.term_modes)
                except (OSError, termios.error) as exc:
                    log.debug("could not apply the client's terminal modes: %s", exc)
                _set_winsize(master, self.process.get_terminal_size())
                if os.geteuid() == 0:
                    try:
                        tty_gid = grp.getgrnam("tty").gr_gid
                    except KeyError:
                        tty_gid = pw.pw_gid
                    os.fchown(slave, pw.pw_uid, tty_gid)
                    os.fchmod(slave, 0o620)
                env["TERM"] = term
                env["SSH_TTY"] = os.ttyname(slave)
                stdio = {"stdin": slave, "stdout": slave, "stderr": slave}
                preexec = _acquire_ctty
            else:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                self.io.stdin = in_w
                child_fds.append(in_r)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                self.io.stdout = out_r
                child_fds.append(out_w)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                self.io.stderr = err_r
                child_fds.append(err_w)
                for fd in (in_w, out_r):
                    try:
                        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
                    except OSError:
                        pass
                stdio = {"stdin": in_r, "stdout": out_w, "stderr": err_w}
                preexec = None

            popen = subprocess.Popen(
                argv, executable=executable, **stdio, cwd=cwd, env=env, close_fds=True,
                start_new_session=True, umask=0o022, preexec_fn=preexec, **creds)
        finally:
            for fd in child_fds:
                _close_fd(fd)
        # We reap the child ourselves; tell Popen so it never waits on a recycled pid.
        popen.returncode = 0
        self.pid = self.pgid = popen.pid
        for fd in (self.io.stdin, self.io.stdout, self.io.stderr, self.io.master):
            if fd is not None:
                os.set_blocking(fd, False)

    # ----- running

    async def _supervise(self, use_pty: bool) -> None:
        loop = asyncio.get_running_loop()
        process = self.process
        self._install_hooks(use_pty)
        self.exit_task = loop.create_task(self._wait_child())
        closed_task = loop.create_task(process.channel.wait_closed())
        pumps: List[_Pump] = []
        if use_pty:
            assert self.io.master is not None
            pumps.append(self._start_pump(self.io.master, process.stdout))
            in_fd = self.io.master
        else:
            assert self.io.stdout is not None and self.io.stderr is not None
            pumps.append(self._start_pump(self.io.stdout, process.stdout))
            pumps.append(self._start_pump(self.io.stderr, process.stderr))
            in_fd = self.io.stdin
        in_task = loop.create_task(self._pump_in(in_fd, use_pty))
        limit_task = loop.create_task(self._watch_limits())
        try:
            await asyncio.wait({self.exit_task, closed_task, limit_task},
                               return_when=asyncio.FIRST_COMPLETED)
            if limit_task.done() and not self.exit_task.done() and not closed_task.done():
                await self._end_by_limit(limit_task.result(), in_task, pumps)
                return
            if self.exit_task.done() and not closed_task.done():
                await self._drain(pumps, closed_task)
            if not closed_task.done() and not process.is_closing():
                self._stopped_after_exit()
                await self._send_exit()
            else:
                if not self.reaped:
                    self.result.disconnected = True
                    log.info("client left session on node %s (login %s, pid %s); ending it",
                             self.node, self.login, self.pid)
                # Stop the pumps before any fd is closed (no stale selector entries).
                await self._cancel(in_task, *[p.task for p in pumps])
                self.io_stopped = True
                await self._terminate()
        finally:
            io_tasks = [in_task, *[p.task for p in pumps]]
            try:
                await self._cancel(closed_task, limit_task, *io_tasks)
            finally:
                # fds are closed only once no pump can still touch them (a pump's
                # selector registration must never outlive its fd number).
                self._close_when_done(io_tasks)
                if not self.reaped:
                    # Cancelled (server shutting down): finish the child in the background.
                    task = loop.create_task(self._terminate())
                    _BACKGROUND.add(task)
                    task.add_done_callback(_BACKGROUND.discard)

    async def _end_by_limit(self, limit: Tuple[str, str], in_task: asyncio.Task, pumps: List[_Pump]) -> None:
        """The node ends the session (idle timeout, certificate or max_session_ttl): say why on the
        client's stderr, end the child as if the client had left, then close the channel."""
        self.result.ended_by, self.result.error = limit
        log.info("ending session %s on node %s (login %s): %s", self.pid, self.node, self.login, self.result.error)
        self._say(self.result.error)
        await self._cancel(in_task, *[p.task for p in pumps])
        self.io_stopped = True
        await self._terminate()
        self.process.channel.close()  # what was written (the reason) is sent before the close

    def _stopped_after_exit(self) -> None:
        """The child exited, but the session was stopped first (its output could not be recorded under
        fail_closed): the client is told why and gets a failing exit status, not the child's."""
        if self._stopped is None or self.result.ended_by:
            return
        self.result.ended_by, self.result.error = self._stopped
        self._say(self.result.error)
        self.result.exit_signal = None
        self.result.exit_status = 255

    def _stop(self, ended_by: str, message: str) -> None:
        """End the session from outside (a recording that cannot be written): as a limit does."""
        if self._stopped is None:
            self._stopped = (ended_by, message)
            self._stop_event.set()

    async def _watch_limits(self) -> Tuple[str, str]:
        """Wait until the deadline passes, the client stays idle too long, or the session is stopped:
        (ended_by, message)."""
        if not self.deadline and not self.idle_timeout:
            await self._stop_event.wait()  # no limit: only a stop ends it (cancelled with the session)
            return self._stopped
        while True:
            if self._stopped is not None:
                return self._stopped
            waits = []
            if self.deadline:
                left = self.deadline - time.time()
                if left <= 0:
                    return "deadline", self.deadline_message
                waits.append(left)
            if self.idle_timeout:
                idle = time.monotonic() - self.last_input
                if idle >= self.idle_timeout:
                    return "idle_timeout", (f"gatehouse: session closed after {_seconds(self.idle_timeout)} "
                                            f"without input from the client (client_idle_timeout of your roles "
                                            f'on node "{self.node}")')
                waits.append(self.idle_timeout - idle)
            await wait_event(self._stop_event, max(min(waits), 0.05))

    def _input_seen(self) -> None:
        self.last_input = time.monotonic()

    def _install_hooks(self, use_pty: bool) -> None:
        """Take signal, break and window-change requests out of band.

        asyncssh would otherwise queue them behind stdin data; the documented
        SSHServerSession callbacks are overridden on this process instance.
        """
        process = self.process
        process.signal_received = self._on_signal
        process.break_received = self._on_break
        process.terminal_size_changed = self._on_resize if use_pty else _ignore_resize

    def _on_signal(self, name: str) -> None:
        self._input_seen()
        name = name[3:] if name.upper().startswith("SIG") else name
        if name.upper() not in ALLOWED_SIGNALS:
            log.info("ignored signal %r requested by the client", name)
            return
        self._signal(getattr(signal, "SIG" + name.upper()), foreground=True)

    def _on_break(self, msec: int) -> bool:
        self._input_seen()
        self._signal(signal.SIGINT, foreground=True)
        return True

    def _on_resize(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._input_seen()
        if self.tap is not None and self.io.master is not None:
            self.tap.resize(width, height)
        if self.io.master is not None:
            try:
                _set_winsize(self.io.master, (width, height, pixwidth, pixheight))
            except OSError as exc:
                log.debug("window change failed: %s", exc)

    def _signal(self, sig: int, foreground: bool = False) -> None:
        """Signal the child's process group (and the PTY's foreground group)."""
        if self.reaped or self.pgid is None:
            return  # the pid may be reused now: never signal after reaping
        groups = [self.pgid]
        if foreground and self.io.master is not None:
            try:
                fg = os.tcgetpgrp(self.io.master)
                if fg > 0 and fg not in groups:
                    groups.append(fg)
            except OSError:
                pass
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    async def _wait_child(self) -> None:
        """Reap the child (pidfd when available) and record how it ended."""
        assert self.pid is not None
        pidfd = None
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pass
        delay = 0.005
        try:
            while True:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # someone else reaped it
                    pid, status = self.pid, None
                if pid:
                    break
                if pidfd is not None:
                    await _wait_fd(pidfd)
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
        finally:
            _close_fd(pidfd)
        self.reaped = True
        self.status = status
        if status is not None:
            code, sig, core = _wait_status(status)
            self.result.exit_status, self.result.exit_signal = code, sig
            self.result.core_dumped = core
        log.debug("session child %s ended: status %s signal %s", self.pid,
                  self.result.exit_status, self.result.exit_signal)

    def _start_pump(self, fd: int, writer: asyncssh.SSHWriter) -> _Pump:
        pump = _Pump()
        pump.task = asyncio.get_running_loop().create_task(self._pump_out(pump, fd, writer))
        return pump

    async def _pump_out(self, pump: _Pump, fd: int, writer: asyncssh.SSHWriter) -> None:
        """Child output -> channel, 256 KiB at a time, honouring the channel's window."""
        convert = self._to_channel()
        try:
            while True:
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    pump.idle_since = time.monotonic()
                    await _wait_fd(fd)
                    pump.idle_since = None
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:  # PTY: every slave fd is closed
                        break
                    raise
                if not data:
                    break
                if self.tap is not None and self.tap.output(data) is False:
                    break   # recording_failure: fail_closed, and this output could not be recorded: not shown
                writer.write(convert(data))
                await writer.drain()
            if self.encoding:
                tail = convert(b"", True)  # type: ignore[call-arg]
                if tail:
                    writer.write(tail)
        except (OSError, asyncssh.Error) as exc:
            log.debug("output pump stopped: %s", exc)

    async def _pump_in(self, fd: Optional[int], use_pty: bool) -> None:
        """Channel -> child stdin; EOF closes the child's stdin pipe."""
        stdin = self.process.stdin
        broken = fd is None
        try:
            while True:
                try:
                    data = await stdin.read(CHUNK)
                except asyncssh.TerminalSizeChanged as exc:
                    self._on_resize(exc.width, exc.height, exc.pixwidth, exc.pixheight)
                    continue
                except asyncssh.SignalReceived as exc:
                    self._on_signal(exc.signal)
                    continue
                except asyncssh.BreakReceived as exc:
                    self._on_break(exc.msec)
                    continue
                except (OSError, asyncssh.Error) as exc:
                    log.debug("input pump stopped: %s", exc)
                    break
                if not data:
                    break
                self._input_seen()
                if broken:
                    continue  # the child stopped reading: discard, keep the window open
                try:
                    await _write_all(fd, self._from_channel(data))  # type: ignore[arg-type]
                except OSError as exc:  # EPIPE (pipe) or EIO (PTY after exit)
                    log.debug("child stdin closed: %s", exc)
                    broken = True
                    if not use_pty:
                        self._close_stdin()
        finally:
            if not use_pty:
                self._close_stdin()

    def _close_stdin(self) -> None:
        fd, self.io.stdin = self.io.stdin, None
        _close_fd(fd)

    async def _drain(self, pumps: List[_Pump], closed_task: asyncio.Task) -> None:
        """After the child exited: forward what is left of its output.

        Ends when every output stream hit EOF, or when the remaining ones are
        held open by some other process and have been silent for DRAIN_IDLE.
        """
        exited = time.monotonic()
        while True:
            live = [p for p in pumps if p.task and not p.task.done()]
            if not live or closed_task.done():
                return
            now = time.monotonic()
            if all(p.idle_since is not None and now - max(p.idle_since, exited) >= DRAIN_IDLE
                   for p in live):
                log.info("session %s: output still held open by another process after the "
                         "command exited; closing it", self.pid)
                return
            await asyncio.wait([p.task for p in live] + [closed_task], timeout=0.1,
                               return_when=asyncio.FIRST_COMPLETED)

    async def _send_exit(self) -> None:
        """Flush everything written, then send exit-status/exit-signal and close."""
        process = self.process
        try:
            process.channel.set_write_buffer_limits(high=0, low=0)
            await process.stdout.drain()  # returns once the send buffer is empty
        except (OSError, asyncssh.Error) as exc:
            log.debug("flush before exit failed: %s", exc)
            return
        try:
            if self.result.exit_signal:
                process.exit_with_signal(self.result.exit_signal, self.result.core_dumped,
                                         "", "en-US")
            else:
                status = self.result.exit_status
                process.exit(255 if status is None else status)
        except (OSError, asyncssh.Error) as exc:
            log.debug("could not send the exit status: %s", exc)

    async def _terminate(self) -> None:
        """SIGHUP the child's process group, SIGKILL it after KILL_GRACE, reap."""
        if self.reaped or self.exit_task is None:
            return
        self._signal(signal.SIGHUP, foreground=True)
        self._signal(signal.SIGCONT, foreground=True)
        if self.io_stopped:
            master, self.io.master = self.io.master, None
            _close_fd(master)  # hangs up the terminal, if any
        try:
            await asyncio.wait_for(asyncio.shield(self.exit_task), KILL_GRACE)
            return
        except asyncio.TimeoutError:
            pass
        log.info("session child %s ignored SIGHUP for %.0fs; killing its process group",
                 self.pid, KILL_GRACE)
        self._signal(signal.SIGKILL)
        await asyncio.shield(self.exit_task)

    async def _cancel(self, *tasks: Optional[asyncio.Task]) -> None:
        live = [t for t in tasks if t is not None and not t.done()]
        for task in live:
            task.cancel()
        if live:
            await asyncio.gather(*live, return_exceptions=True)

    def _close_when_done(self, tasks: List[Optional[asyncio.Task]]) -> None:
        live = {t for t in tasks if t is not None and not t.done()}
        if not live:
            self.io_stopped = True
            self._close_all()
            return

        def one_done(task: asyncio.Task) -> None:
            live.discard(task)
            if not live:
                self.io_stopped = True
                self._close_all()

        for task in live:
            task.add_done_callback(one_done)

    def _close_all(self) -> None:
        io = self.io
        for name in ("stdin", "stdout", "stderr", "master"):
            fd = getattr(io, name)
            setattr(io, name, None)
            _close_fd(fd)


def _seconds(seconds: float) -> str:
    return f"{seconds:g} seconds" if seconds < 120 else f"{seconds / 60:g} minutes"


def _ignore_resize(width: int, height: int, pixwidth: int, pixheight: int) -> None:
    """Window changes without a PTY have nothing to resize."""


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _lookup(login: str) -> Tuple[pwd.struct_passwd, List[int]]:
    """pwd entry and group list for ``login`` (raises KeyError when unknown)."""
    if not login or "\0" in login or "/" in login:
        raise KeyError(login)
    pw = pwd.getpwnam(login)
    try:
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        groups = [pw.pw_gid]
    return pw, groups
