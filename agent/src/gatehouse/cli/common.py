"""Output helpers shared by gatectl and gate: tables, errors, secrets from stdin/tty."""

from __future__ import annotations

import getpass
import os
import sys

from ..errors import BadParameter, GatehouseError


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    lines = [" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             " ".join("-" * w for w in widths)]
    lines += [" ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def fail(message: str, code: int = 1) -> int:
    print(f"ERROR: {message}", file=sys.stderr)
    return code


def read_secret(prompt: str, from_stdin: bool, confirm: bool = False) -> str:
    """A password from stdin (automation) or the terminal (people); never from argv."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        value = getpass.getpass(prompt)
        if confirm and getpass.getpass("Confirm: ") != value:
            raise BadParameter("the passwords do not match; try again")
    else:
        raise BadParameter("no terminal to ask for the password; pipe it in with --password-stdin")
    if not value:
        raise BadParameter("the password is empty")
    return value


def print_version(fmt: str = "text") -> int:
    """`gate version` / `gatectl version`: "Gatehouse v1.0.0 python3.11.7" (or JSON)."""
    import json
    import platform

    from .. import __version__
    if fmt == "json":
        print(json.dumps({"version": __version__, "python": platform.python_version()}))
    else:
        print(f"Gatehouse v{__version__} python{platform.python_version()}")
    return 0


def labels_text(labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def run(parser, argv) -> int:
    """Parse, dispatch to the command, and turn any Gatehouse error into one ERROR line."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GatehouseError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`gatectl get nodes | head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
