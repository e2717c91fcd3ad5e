"""A throwaway PostgreSQL server for the storage tests (real server, no mocks).

``PgServer`` runs Debian's ``initdb``/``pg_ctl`` on a data directory in a fresh temp
directory, listening on a free loopback port and on a Unix socket in that directory,
with TLS on (a test CA and a server certificate for ``localhost``/127.0.0.1).
``initdb`` refuses to run as root, so as root the server runs as the ``postgres``
account Debian creates (or ``gatehouse-pg``, created when neither exists).

Durability: tests run with ``fsync=off`` (speed); ``PgServer(fsync=True)`` is a server
as operators run it (the benchmarks). Replication: ``init(replication=True)`` makes a
primary, :meth:`PgServer.standby` a streaming-replication standby of it
(``pg_basebackup``) that the primary waits for on every commit when
``synchronous=True``; :meth:`kill` ends a server the way a crash does and
:meth:`promote` turns a standby into the new primary.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PREFIX = "gatehouse-pg-"
SUPERUSER = "gatehouse"
PASSWORD = "pg-Secret-4711"
SERVER_USERS = ("postgres", "gatehouse-pg")


def find_bindir() -> str:
    """The newest /usr/lib/postgresql/*/bin with initdb; AssertionError if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise AssertionError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                             "run scripts/install-deps.sh or apt-get install -y postgresql")
    return os.path.dirname(found[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_account():
    """(uid, gid) to run the server as: ourselves unless root, else an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    SERVER_USERS[-1]], check=True, capture_output=True)
    entry = pwd.getpwnam(SERVER_USERS[-1])
    return entry.pw_uid, entry.pw_gid


def _write_tls_files(directory: str) -> None:
    """A test CA (ca.pem) and a server certificate for localhost and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse test PostgreSQL CA")])
    ca_cert = cert(ca_name, ca_name, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    server = cert(name, ca_name, key, ca_key, False,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca_cert.public_bytes(pem),
        "server.crt": server.public_bytes(pem),
        "server.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
    }
    for filename, data in files.items():
        with open(os.path.join(directory, filename), "wb") as fh:
            fh.write(data)


class PgServer:
    """One PostgreSQL cluster in a temp directory; ``start()``, ``stop()``, ``destroy()``."""

    def __init__(self, fsync: bool = False):
        self.bindir = find_bindir()
        self.account = _server_account()
        self.fsync = fsync
        self.tmp = tempfile.mkdtemp(prefix=PREFIX)
        self.data = os.path.join(self.tmp, "data")
        self.tls = os.path.join(self.tmp, "tls")
        self.port = free_port()
        self._databases = 0
        with open(os.path.join(self.tmp, "owner.pid"), "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))     # lets a later run clean up after a crashed one
        os.makedirs(self.tls)
        _write_tls_files(self.tls)
        self._chown(self.tmp, self.tls, *(os.path.join(self.tls, f) for f in os.listdir(self.tls)))
        os.chmod(os.path.join(self.tls, "server.key"), 0o600)

    # ------------------------------------------------------------------ process control

    def _chown(self, *paths: str) -> None:
        if self.account:
            for path in paths:
                os.chown(path, *self.account)

    @classmethod
    def remove_stale(cls) -> None:
        """Stop and delete servers left by test runs that died (crash, kill -9)."""
        for tmp in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
            try:
                with open(os.path.join(tmp, "owner.pid"), encoding="utf-8") as fh:
                    owner = int(fh.read().strip())
                os.kill(owner, 0)
                continue                      # its run is still going
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue                      # not ours to judge
            stale = cls.__new__(cls)
            stale.bindir, stale.account, stale.tmp = find_bindir(), _server_account(), tmp
            stale.data = os.path.join(tmp, "data")
            try:
                stale.destroy(mode="immediate")
            except (AssertionError, OSError, subprocess.SubprocessError):
                # its postmaster died too (stale postmaster.pid): nothing to stop
                shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        extra = {"user": self.account[0], "group": self.account[1], "extra_groups": []} if self.account else {}
        env = dict(os.environ, LC_ALL="C", PGTZ="UTC")
        result = subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], capture_output=True,
                                text=True, timeout=timeout, env=env, cwd=self.tmp, **extra)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args[:2])} failed (exit {result.returncode}): "
                                 f"{result.stdout}{result.stderr}")
        return result

    def init(self, replication: bool = False) -> None:
        pwfile = os.path.join(self.tmp, "pwfile")
        with open(pwfile, "w", encoding="utf-8") as fh:
            fh.write(PASSWORD + "\n")
        self._chown(pwfile)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as fh:
            fh.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.tmp}'
ssl = on
ssl_cert_file = '{self.tls}/server.crt'
ssl_key_file = '{self.tls}/server.key'
max_connections = 200
fsync = {"on" if self.fsync else "off"}
full_page_writes = {"on" if self.fsync else "off"}
shared_buffers = 32MB
log_min_messages = warning
""")
            if replication:
                fh.write("wal_level = replica\nmax_wal_senders = 5\nwal_keep_size = 256MB\nhot_standby = on\n")

    def standby(self, synchronous: bool = True) -> "PgServer":
        """A new server streaming from this one (pg_basebackup -R), started; with SYNCHRONOUS this
        primary's commits wait until the standby has flushed them (no acknowledged commit is lost
        when the standby is promoted). The backup starts with an immediate checkpoint: the default
        spread one takes minutes after a CREATE DATABASE."""
        standby = PgServer(fsync=self.fsync)
        shutil.rmtree(standby.tls)
        shutil.copytree(self.tls, standby.tls)
        standby._chown(standby.tls, *(os.path.join(standby.tls, f) for f in os.listdir(standby.tls)))
        name = f"standby_{standby.port}"
        standby._run("pg_basebackup", "-h", self.tmp, "-p", str(self.port), "-U", SUPERUSER, "-D", standby.data,
                     "-R", "-X", "stream", "--no-sync", "--checkpoint=fast", "-d",
                     f"host={self.tmp} port={self.port} user={SUPERUSER} application_name={name}")
        with open(os.path.join(standby.data, "postgresql.auto.conf"), "a", encoding="utf-8") as fh:
            # Its own port, socket and TLS files; once promoted it has no standby to wait for.
            fh.write(f"port = {standby.port}\nunix_socket_directories = '{standby.tmp}'\n"
                     f"ssl_cert_file = '{standby.tls}/server.crt'\nssl_key_file = '{standby.tls}/server.key'\n"
                     f"synchronous_standby_names = ''\n")
        standby.start()
        if synchronous:
            self.query("postgres", f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
            self.query("postgres", "SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while self.query("postgres", "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s"
                             " AND sync_state = 'sync'", (name,)) != [(1,)]:
                assert time.monotonic() < deadline, "the standby did not become synchronous"
                time.sleep(0.1)
        return standby

    def kill(self) -> None:
        """End the server as a crash would: SIGKILL to the postmaster (its backends follow)."""
        with open(os.path.join(self.data, "postmaster.pid"), encoding="utf-8") as fh:
            pid = int(fh.readline())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            assert time.monotonic() < deadline, "the killed PostgreSQL server still answers"
            time.sleep(0.05)
        time.sleep(0.5)   # its backends notice the postmaster is gone and exit
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.data, "postmaster.pid"))

    def promote(self) -> None:
        """Make this standby the primary (it stops replaying and accepts writes)."""
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.tmp, "server.log"), "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self, mode: str = "fast") -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self.stop(mode)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.tmp, "server.log"), encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ databases

    def conn_string(self, dbname: str = "postgres", **extra: str) -> str:
        """A TCP connection string with the password (what an operator would configure)."""
        params = {"host": "127.0.0.1", "port": str(self.port), "dbname": dbname, "user": SUPERUSER,
                  "password": PASSWORD, "sslmode": "disable", **extra}
        return " ".join(f"{k}={v}" for k, v in params.items())

    def failover_conn_string(self, standby: "PgServer", dbname: str = "postgres") -> str:
        """This primary and STANDBY in one libpq multi-host string that connects to whichever of
        them accepts writes (target_session_attrs=read-write): what a site with a standby configures."""
        return (self.conn_string(dbname).replace(f"host=127.0.0.1 port={self.port}",
                                                 f"host=127.0.0.1,127.0.0.1 port={self.port},{standby.port}")
                + " target_session_attrs=read-write connect_timeout=3")

    def admin_conn_string(self, dbname: str = "postgres") -> str:
        """Over the Unix socket (trust): for test set-up and inspection."""
        return f"host={self.tmp} port={self.port} dbname={dbname} user={SUPERUSER}"

    def create_database(self) -> str:
        import psycopg
        self._databases += 1
        name = f"gh_test_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.admin_conn_string(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.admin_conn_string(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def query(self, dbname: str, sql: str, params=()) -> list:
        import psycopg
        with psycopg.connect(self.admin_conn_string(dbname), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.query("postgres", "SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
