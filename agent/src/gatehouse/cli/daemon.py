"""`gatehouse start -c FILE [--debug] [--insecure] [--pid-file PATH]` — run the agent."""

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
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"Gatehouse v{__version__} python{sys.version_info.major}.{sys.version_info.minor}")
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
