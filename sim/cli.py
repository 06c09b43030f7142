"""``edge-sim``: Conveyor-camera simulator: record, replay, simulated fleets and the end-to-end demo."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lineside_common import cli as clitools

# Each module registers its subcommands; one module per concern.
COMMAND_MODULES: list[str] = [
    "sim.cli_record",
    "sim.cli_fleet",
    "sim.cli_demo",
    "sim.cli_line",
    "sim.cli_checker",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = clitools.build_parser(
        "edge-sim",
        "Conveyor-camera simulator: record, replay, simulated fleets and the end-to-end demo.",
        COMMAND_MODULES,
    )
    return clitools.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
