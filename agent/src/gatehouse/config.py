"""Load and validate the agent's YAML config (`gatehouse start -c FILE`).

The shape mirrors what operators of this kind of system already know: a general
`gatehouse:` section plus `auth_service`, `proxy_service` and `ssh_service`. Unknown
keys are errors (a typo must never be silently ignored) and every error names the
file, the key path and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from .errors import BadParameter
from .wire import (AUTH_PORT, MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL, NODE_PORT, PROXY_SSH_PORT, TOKEN_TYPES,
                   TUNNEL_PORT, WEB_PORT, heartbeat_interval)

DEFAULT_CONFIG_PATH = "/etc/gatehouse.yaml"
DEFAULT_DATA_DIR = "/var/lib/gatehouse"


@dataclass
class LogConfig:
    output: str = "stderr"
    severity: str = "INFO"
    format: str = "text"


@dataclass
class AuthConfig:
    enabled: bool = False
    cluster_name: str = ""
    listen_addr: str = f"0.0.0.0:{AUTH_PORT}"
    public_addr: str = ""
    tokens: list = field(default_factory=list)
    storage: dict = field(default_factory=dict)
    login_rate: float = 5.0          # password attempts per minute per user and per client
    validate_rate: float = 10.0      # trusted-cluster validations per minute per client
    identity_ttl: str = "8760h"      # node and proxy certificates (members renew them at half-life)
    tunnel_cert_ttl: str = "168h"    # a root proxy's tunnel certificate (renewed at half-life)


@dataclass
class ProxyConfig:
    enabled: bool = False
    web_listen_addr: str = f"0.0.0.0:{WEB_PORT}"
    public_addr: str = ""
    listen_addr: str = f"0.0.0.0:{PROXY_SSH_PORT}"
    ssh_public_addr: str = ""
    tunnel_listen_addr: str = f"0.0.0.0:{TUNNEL_PORT}"
    tunnel_public_addr: str = ""
    https_cert_file: str = ""
    https_key_file: str = ""
    # How often this proxy reports itself to auth (it counts as gone after 3 missed); tunnels beat as
    # the leaf's trusted_cluster heartbeat_mode says (wire.HEARTBEAT_TIMING).
    tunnel_heartbeat_interval: float = 3.0
    presence_interval: float = 30.0  # summary of the leaves holding tunnels here (on change, too)
    # Caps (sshserver.ListenerLimits): channels on one user connection (3023), channels on all
    # user connections and on all tunnels, unauthenticated connections per listener (3023, 3024).
    max_channels_per_connection: int = 10
    max_sessions: int = 10000
    max_startups: int = 100


@dataclass
class SSHConfig:
    enabled: bool = False
    listen_addr: str = f"0.0.0.0:{NODE_PORT}"
    public_addr: str = ""
    labels: dict = field(default_factory=dict)
    # Caps (sshserver.ListenerLimits): channels on one connection, on all connections, and
    # connections that have not authenticated yet (like sshd's MaxStartups).
    max_channels_per_connection: int = 10
    max_sessions: int = 1000
    max_startups: int = 100


@dataclass
class AuditConfig:
    """The `audit:` section (docs/audit.md): retention of the audit log and of session recordings."""

    log_max_size: str = "100MB"       # each process's local audit.jsonl is rotated at this size
    log_max_files: int = 10           # rotated local files kept; an unsent one pushed out is reported
    log_max_age: str = "720h"         # rotated local files older than this are removed once sent
    events_max_age: str = "8760h"     # auth: events older than this leave storage ("0s": never)
    events_max_count: int = 10000000  # auth: the most events kept per cluster stream
    recordings_dir: str = ""          # auth: where recordings are stored (default data_dir/recordings)
    recordings_max_age: str = "8760h"  # auth: recordings older than this are removed ("0s": never)
    recordings_max_size: str = "50GB"  # auth: the most bytes of recordings kept (the oldest go first)
    spool_max_size: str = "2GB"       # node: recordings not yet uploaded to auth
    anchor_interval: str = "5m"       # auth: a signed anchor at least this often while events arrive
    forward_buffer_max: int = 1000000  # leaf: events kept from retention until the root has them
    retention_interval: str = "10m"   # auth: how often retention runs

    def seconds(self, name: str) -> int:
        from .durations import parse_duration
        return parse_duration(getattr(self, name), f"audit.{name}")

    def bytes(self, name: str) -> int:
        return size_bytes(getattr(self, name), f"audit.{name}")


@dataclass
class Config:
    path: str = ""
    nodename: str = ""
    data_dir: str = DEFAULT_DATA_DIR
    auth_servers: list = field(default_factory=list)
    join_token: str = ""
    ca_pin: str = ""
    join_insecure: bool = False
    heartbeat_interval: float = 5.0
    insecure: bool = False
    debug: bool = False
    #: After a reload (SIGHUP) hands the listeners to a new process, the old one lets its sessions
    #: and tunnels finish for at most this many seconds (reload.py).
    drain_timeout: int = 3600
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    ssh: SSHConfig = field(default_factory=SSHConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    @property
    def auth_addr(self) -> str:
        """Where this process reaches the auth API (itself when it runs auth)."""
        return self.auth_addrs[0]

    @property
    def auth_addrs(self) -> list[str]:
        """Every auth server address, in the order to try them: this process's own auth service first
        (when it runs one), then `gatehouse.auth_servers` (several auth servers sharing one backend,
        or one load-balanced address)."""
        addrs = []
        if self.auth.enabled:
            host, port = split_hostport(self.auth.listen_addr, AUTH_PORT)
            addrs.append(join_hostport(_loopback_if_any(host), port))
        return addrs + [a for a in self.auth_servers if a not in addrs]


_SECTIONS = {
    "gatehouse": {"nodename", "data_dir", "auth_servers", "auth_token", "join_token", "ca_pin", "join_insecure",
                  "log", "heartbeat_interval", "insecure", "drain_timeout"},
    "auth_service": {f.name for f in dataclasses.fields(AuthConfig)},
    "proxy_service": {f.name for f in dataclasses.fields(ProxyConfig)},
    "ssh_service": {f.name for f in dataclasses.fields(SSHConfig)},
    "audit": {f.name for f in dataclasses.fields(AuditConfig)},
    "version": None,
}


def load(path: str, *, debug: bool = False, insecure: bool = False) -> Config:
    """Read, validate and return the config at `path`; raise BadParameter on any problem."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise BadParameter(f"config file {path} does not exist; pass the right path with -c") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadParameter(f"invalid YAML in {path}{where}: {problem}") from None
    cfg = parse(raw, path)
    cfg.debug = cfg.debug or debug
    cfg.insecure = cfg.insecure or insecure
    return cfg


def parse(raw: Any, path: str = "<config>") -> Config:
    if not isinstance(raw, dict):
        raise BadParameter(f"{path} must be a YAML mapping with gatehouse, auth_service, proxy_service or ssh_service sections")
    _check_keys(raw, _SECTIONS.keys(), path, "")
    general = _section(raw, "gatehouse", path)
    cfg = Config(path=path)
    cfg.nodename = str(general.get("nodename") or socket.gethostname().split(".")[0])
    cfg.data_dir = str(general.get("data_dir") or DEFAULT_DATA_DIR)
    cfg.auth_servers = [str(a) for a in _list(general.get("auth_servers"), path, "gatehouse.auth_servers")]
    cfg.join_token = str(general.get("join_token") or general.get("auth_token") or "")
    cfg.ca_pin = str(general.get("ca_pin") or "")
    cfg.join_insecure = _bool(general.get("join_insecure", False), path, "gatehouse.join_insecure")
    cfg.heartbeat_interval = _positive(general.get("heartbeat_interval", 5.0), path, "gatehouse.heartbeat_interval")
    cfg.insecure = bool(general.get("insecure", False))
    cfg.drain_timeout = _drain_timeout(general.get("drain_timeout", "1h"), path)
    log = general.get("log") or {}
    _check_keys(log, {"output", "severity", "format"}, path, "gatehouse.log.")
    cfg.log = LogConfig(output=str(log.get("output", "stderr")), severity=str(log.get("severity", "INFO")).upper(),
                        format=str(log.get("format", "text")))
    if cfg.log.severity not in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR"):
        raise BadParameter(f"{path}: gatehouse.log.severity must be DEBUG, INFO, WARN or ERROR, not {cfg.log.severity!r}")
    if cfg.log.format not in ("text", "json"):
        raise BadParameter(f"{path}: gatehouse.log.format must be text or json, not {cfg.log.format!r}")

    cfg.auth = _dataclass(AuthConfig, _section(raw, "auth_service", path), path, "auth_service")
    cfg.proxy = _dataclass(ProxyConfig, _section(raw, "proxy_service", path), path, "proxy_service")
    cfg.ssh = _dataclass(SSHConfig, _section(raw, "ssh_service", path), path, "ssh_service")
    cfg.audit = _dataclass(AuditConfig, _section(raw, "audit", path), path, "audit")
    _validate(cfg, path)
    return cfg


def _validate(cfg: Config, path: str) -> None:
    if not (cfg.auth.enabled or cfg.proxy.enabled or cfg.ssh.enabled):
        raise BadParameter(f"{path} enables no service; set enabled: true under auth_service, proxy_service or ssh_service")
    if cfg.auth.enabled:
        if not cfg.auth.cluster_name:
            raise BadParameter(f"{path}: auth_service.cluster_name is required; name the cluster, e.g. cluster_name: root.example.com")
        from .resources import MIN_TOKEN_LENGTH, validate_name  # the rules resources follow too
        validate_name(cfg.auth.cluster_name, "auth_service.cluster_name")
        for tok in cfg.auth.tokens:
            kind, _unused, secret = str(tok).partition(":")
            if kind not in TOKEN_TYPES or not secret:
                raise BadParameter(f"{path}: static token {kind or tok!r} must look like trusted_cluster:SECRET, node:SECRET or proxy:SECRET")
            if len(secret) < MIN_TOKEN_LENGTH:
                raise BadParameter(f"{path}: the secret of static {kind} token is shorter than {MIN_TOKEN_LENGTH} "
                                   f"characters; use a longer random secret, e.g. from 'openssl rand -hex 16'")
        for ttl_field in ("identity_ttl", "tunnel_cert_ttl"):
            _certificate_ttl(getattr(cfg.auth, ttl_field), path, f"auth_service.{ttl_field}")
    elif not cfg.auth_servers:
        raise BadParameter(f"{path}: this process runs no auth service, so gatehouse.auth_servers must list the auth server address (host:3025)")
    elif not cfg.join_token and not os.path.exists(os.path.join(cfg.data_dir, "identity")):
        raise BadParameter(f"{path}: set gatehouse.join_token to a node or proxy token from 'gatectl tokens add' so this process can join the cluster")
    for interval_field in ("tunnel_heartbeat_interval", "presence_interval"):
        value = getattr(cfg.proxy, interval_field)
        if heartbeat_interval(value) is None:
            raise BadParameter(f"{path}: proxy_service.{interval_field} must be from {MIN_HEARTBEAT_INTERVAL:g} "
                               f"to {MAX_HEARTBEAT_INTERVAL:g} seconds, not {value:g}")
    _validate_audit(cfg.audit, path)
    for addr_field in ("auth.listen_addr", "proxy.web_listen_addr", "proxy.listen_addr",
                       "proxy.tunnel_listen_addr", "ssh.listen_addr"):
        section, name = addr_field.split(".")
        value = getattr(getattr(cfg, section), name)
        split_hostport(value, 0, what=f"{path}: {name}")


def _validate_audit(audit: AuditConfig, path: str) -> None:
    for name in ("log_max_age", "events_max_age", "recordings_max_age", "anchor_interval", "retention_interval"):
        try:
            seconds = audit.seconds(name)
        except BadParameter as exc:
            raise BadParameter(f"{path}: {exc}") from None
        if seconds < 0 or (seconds == 0 and name in ("anchor_interval", "retention_interval")):
            raise BadParameter(f"{path}: audit.{name} must be a positive duration like 5m or 720h, not {getattr(audit, name)!r}")
    for name in ("log_max_size", "recordings_max_size", "spool_max_size"):
        try:
            audit.bytes(name)
        except BadParameter as exc:
            raise BadParameter(f"{path}: {exc}") from None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def size_bytes(value, what: str = "size") -> int:
    """``100MB``, ``2GiB``, ``512KiB`` or a whole number of bytes → bytes (at least 1)."""
    import re
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) * _SIZE_UNITS[unit] < 1:
        raise BadParameter(f"{what} must be a size like 100MB, 2GiB or 512KiB, not {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


MIN_CERT_TTL = 10


def _certificate_ttl(value, path: str, where: str) -> int:
    """A certificate lifetime setting (``8760h``, ``30m``): at least MIN_CERT_TTL seconds."""
    from .durations import parse_duration
    try:
        seconds = parse_duration(value, where)
    except BadParameter as exc:
        raise BadParameter(f"{path}: {exc}") from None
    if seconds < MIN_CERT_TTL:
        raise BadParameter(f"{path}: {where} must be at least {MIN_CERT_TTL}s, not {value!r}; certificates are "
                           f"renewed at half their lifetime")
    return seconds


def certificate_ttl(value) -> int:
    """Seconds of a certificate lifetime setting already checked by load()."""
    return _certificate_ttl(value, "<config>", "ttl")


def _bool(value, path: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadParameter(f"{path}: {where} must be true or false, not {value!r}")
    return value


def split_hostport(addr: str, default_port: int, what: str = "address") -> tuple[str, int]:
    """Split 'host:port' (IPv6 in brackets); a bare host gets default_port."""
    addr = str(addr).strip()
    if not addr:
        raise BadParameter(f"{what} is empty; use host:port")
    if addr.startswith("["):
        host, _unused, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, port = addr.split(":")
    else:
        host, port = addr, ""
    if not port:
        if not default_port:
            raise BadParameter(f"{what} {addr!r} has no port; use host:port")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadParameter(f"{what} {addr!r} has an invalid port; use host:port with a port from 1 to 65535")
    return host, int(port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(value: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _loopback_if_any(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def public_addr(public: str, listen: str, default_port: int) -> str:
    """The address others should use: the configured public one, else the listen address."""
    if public:
        host, port = split_hostport(public, default_port)
    else:
        host, port = split_hostport(listen, default_port)
        host = _loopback_if_any(host) if host in ("0.0.0.0", "::", "") else host
    return join_hostport(host, port)


def _section(raw: dict, name: str, path: str) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise BadParameter(f"{path}: {name} must be a mapping")
    return value


def _dataclass(cls, values: dict, path: str, prefix: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(values, names.keys(), path, prefix + ".")
    kwargs = {}
    for key, value in values.items():
        default = names[key].default if names[key].default is not dataclasses.MISSING else names[key].default_factory()
        kwargs[key] = _coerce(value, default, path, f"{prefix}.{key}")
    return cls(**kwargs)


def _coerce(value, default, path, where):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise BadParameter(f"{path}: {where} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        number = _positive(value, path, where)
        if number != int(number):
            raise BadParameter(f"{path}: {where} must be a whole number, not {value!r}")
        return int(number)
    if isinstance(default, float):
        return _positive(value, path, where)
    if isinstance(default, list):
        return _list(value, path, where)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise BadParameter(f"{path}: {where} must be a mapping")
        return {str(k): v for k, v in value.items()}
    return "" if value is None else str(value)


def _list(value, path, where) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise BadParameter(f"{path}: {where} must be a list")
    return value


def _drain_timeout(value, path: str) -> int:
    from .durations import parse_duration
    try:
        seconds = parse_duration(value, "gatehouse.drain_timeout")
    except BadParameter as exc:
        raise BadParameter(f"{path}: {exc}") from None
    if seconds < 0:
        raise BadParameter(f"{path}: gatehouse.drain_timeout must be 0 or more, like 10m or 1h, not {value!r}")
    return seconds


def _positive(value, path, where) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1
    if number <= 0:
        raise BadParameter(f"{path}: {where} must be a positive number, not {value!r}")
    return number


def _check_keys(mapping: dict, allowed, path: str, prefix: str) -> None:
    if not isinstance(mapping, dict):
        raise BadParameter(f"{path}: {prefix.rstrip('.')} must be a mapping")
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; allowed keys are {', '.join(sorted(allowed))}"
            raise BadParameter(f'{path}: unknown key "{prefix}{key}"{hint}')
