"""`gatehouse start -c FILE [--debug] [--insecure] [--pid-file PATH]` — run the agent;
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
    if args.command == "migrate":
        return _migrate(args)
    from .. import config, logs
    try:
        cfg = config.load(args.config, debug=args.debug, insecure=args.insecure)
        logs.setup(cfg.log.output, cfg.log.severity, cfg.log.format, debug=cfg.debug)
    except GatehouseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if cfg.insecure:
        logging.getLogger("gatehouse").warning(
            "INSECURE MODE: certificate verification of root web proxies is disabled; never use this in production")
    if args.pid_file:
        from ..pki import write_public
        write_public(args.pid_file, f"{os.getpid()}\n")
    from ..process import run
    try:
        asyncio.run(run(cfg))
    except GatehouseError as exc:
        logging.getLogger("gatehouse").error("%s", exc)
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ERROR: cannot start: {exc.strerror or exc}; is another gatehouse already using the port?",
              file=sys.stderr)
        return 1
    finally:
        if args.pid_file and os.path.exists(args.pid_file):
            os.unlink(args.pid_file)
    return 0


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
