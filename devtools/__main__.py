"""`python -m devtools stack up|down|status [--cluster] ...` and `python -m devtools produce ...`
(run from the repository's root, as the Makefile does)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m devtools {stack,produce} ..."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "stack":
        from .stack import main_stack

        return main_stack(rest)
    if command == "produce":
        from programuser_dagster import client_logs

        from .produce import main as produce

        client_logs.install()
        return produce(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
