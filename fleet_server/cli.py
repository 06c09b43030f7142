"""``fleet``: Fleet server and the operator's CLI: releases, devices, staged rollouts, alerts."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lineside_common import cli as clitools

# Each module registers its subcommands; one module per concern.
COMMAND_MODULES: list[str] = [
    "fleet_server.cli_keys",
    "fleet_server.cli_serve",
    "fleet_server.cli_ops",
    "fleet_server.cli_enroll",
    "fleet_server.cli_db",
    "fleet_server.cli_samples",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = clitools.build_parser(
        "fleet",
        "Fleet server and the operator's CLI: releases, devices, staged rollouts, alerts.",
        COMMAND_MODULES,
    )
    return clitools.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
