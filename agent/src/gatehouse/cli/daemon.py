"""`gatehouse start -c FILE [--debug] [--insecure] [--pid-file PATH]` — run the agent;
`gatehouse reload -c FILE --pid-file PATH` — apply a new config or build without dropping sessions;
`gatehouse migrate -c FILE --to CONN` — move its auth service's storage from SQLite to PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .. import __version__
from ..errors import GatehouseError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Gatehouse agent: auth, proxy and node services.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the services enabled in the config")
    start.add_argument("-c", "--config", default=os.environ.get("GATEHOUSE_CONFIG", "/etc/gatehouse.yaml"))
    start.add_argument("-d", "--debug", action="store_true", help="DEBUG logs")
    start.add_argument("--insecure", action="store_true",
                       help="accept a self-signed root web certificate (tests only)")
    start.add_argument("--pid-file", help="write the process id here (for supervisors without systemd)")
    _add_reload_parser(sub)
    sub.add_parser("version", help="print the version")
    move = sub.add_parser("migrate", help="copy this auth server's site from SQLite into an empty PostgreSQL "
                                          "database (stop the auth service first)")
    move.add_argument("-c", "--config", default=os.environ.get("GATEHOUSE_CONFIG", "/etc/gatehouse.yaml"))
    move.add_argument("--to", required=True, metavar="CONN",
                      help="libpq connection string or postgresql:// URI of the target database (keep the "
                           "password in PGPASSWORD or ~/.pgpass rather than here)")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"Gatehouse v{__version__} python{sys.version_info.major}.{sys.version_info.minor}")
        return 0
    if args.command == "reload":
        return _reload(args)
    if args.command == "migrate":
        return _migrate(args)
    from .. import config, logs, reload
    reload.setup(args.pid_file)
    try:
        cfg = config.load(args.config, debug=args.debug, insecure=args.insecure)
        logs.setup(cfg.log.output, cfg.log.severity, cfg.log.format, debug=cfg.debug)
    except GatehouseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        reload.report_failure(str(exc))
        return 1
    if cfg.insecure:
        logging.getLogger("gatehouse").warning(
            "INSECURE MODE: certificate verification of root web proxies is disabled; never use this in production")
    if not reload.is_successor():  # a successor writes it once it is ready
        reload.write_pid_file(args.pid_file)
    from ..process import run
    try:
        asyncio.run(run(cfg))
    except GatehouseError as exc:
        logging.getLogger("gatehouse").error("%s", exc)
        print(f"ERROR: {exc}", file=sys.stderr)
        reload.report_failure(str(exc))
        return 1
    except OSError as exc:
        message = f"cannot start: {exc.strerror or exc}; is another gatehouse already using the port?"
        print(f"ERROR: {message}", file=sys.stderr)
        reload.report_failure(message)
        return 1
    finally:
        reload.remove_pid_file(args.pid_file)
    return 0


def _add_reload_parser(sub) -> None:
    cmd = sub.add_parser("reload", help="apply a new config or build without dropping sessions (SIGHUP, then wait)",
                         description="Check the config, then signal the running agent (SIGHUP): a new process "
                                     "takes over its listening sockets and the old one lets its sessions finish. "
                                     "A config the new process refuses leaves the running one as it is.")
    cmd.add_argument("-c", "--config", default=os.environ.get("GATEHOUSE_CONFIG", "/etc/gatehouse.yaml"))
    cmd.add_argument("--pid-file", required=True, help="the running agent's pidfile (gatehouse start --pid-file)")
    cmd.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the outcome (default 180)")
    cmd.add_argument("--insecure", action="store_true", help="as given to gatehouse start")


def _reload(args) -> int:
    from ..reload import request
    status, line = request(args.config, args.pid_file, args.timeout, insecure=args.insecure)
    print(line, file=sys.stderr if status else sys.stdout)
    return status


def _migrate(args) -> int:
    """`gatehouse migrate -c FILE --to CONN`: one summary on success, one ERROR sentence otherwise."""
    import json

    from .. import config
    from ..process import migrate_storage
    try:
        cfg = config.load(args.config)
        done = asyncio.run(migrate_storage(cfg, args.to))
    except GatehouseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{n} {kind}" for kind, n in done["copied"].items())
    print(f"Copied {sum(done['copied'].values())} records ({kinds}) from {done['source']} to the PostgreSQL "
          f"{done['target']} at revision {done['revision']}; left behind {done['skipped']} presence records "
          f"(heartbeats, logins in progress, rate-limit counts).")
    print(f"Next: in {cfg.path} set auth_service.storage to "
          f"{json.dumps({'type': 'postgresql', 'conn_string': '...'})} with this connection string, then start "
          f"gatehouse; members and leaves reconnect with the certificates they have.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
