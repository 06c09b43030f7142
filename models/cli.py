"""``edge-models``: Train, evaluate and quantise the package classifier; write model bundles."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lineside_common import cli as clitools

# Each module registers its subcommands; one module per concern.
COMMAND_MODULES: list[str] = ["models.cli_models", "models.cli_package", "models.cli_pipeline"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = clitools.build_parser(
        "edge-models",
        "Train, evaluate and quantise the package classifier; package any ONNX classifier; write model bundles.",
        COMMAND_MODULES,
    )
    return clitools.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
