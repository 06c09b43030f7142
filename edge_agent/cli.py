"""``edge-agent``: the on-device daemon and its local tools."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lineside_common import cli as clitools

# Each module registers its subcommands; one module per concern.
COMMAND_MODULES: list[str] = ["edge_agent.cli_run", "edge_agent.cli_models"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = clitools.build_parser(
        "edge-agent",
        "Run vision models on a robot: inference, telemetry, verified model updates.",
        COMMAND_MODULES,
    )
    return clitools.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
