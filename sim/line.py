"""A line that changes state: a plan such as ``execute:20,changeover:5,execute:20`` (seconds).

Pure: :func:`parse_plan` and :func:`payload` — the player (``edge-sim line``) publishes them.
``changeover`` is a changeover outside Execute (PackML: Stopped with the changeover flag set);
every other step is a PackML-like state name the agent knows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edge_agent.update_window import LINE_STATES
from lineside_common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Step:
    """Hold ``state`` (with ``changeover``) for ``seconds``."""

    state: str
    changeover: bool
    seconds: float


def parse_plan(text: str) -> list[Step]:
    """``"execute:20,changeover:5,execute:20"`` → steps; ConfigError naming the bad part."""
    steps: list[Step] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, secs = part.partition(":")
        name = name.strip().lower()
        try:
            seconds = float(secs) if sep else float("nan")
        except ValueError:
            seconds = float("nan")
        if not seconds > 0:
            raise ConfigError(f"plan step {part!r}: expected STATE:SECONDS with SECONDS > 0", field="plan")
        if name == "changeover":
            steps.append(Step("stopped", True, seconds))
        elif name in LINE_STATES:
            steps.append(Step(name, False, seconds))
        else:
            raise ConfigError(
                f"plan step {part!r}: unknown state (known: changeover, {', '.join(LINE_STATES)})",
                field="plan",
            )
    if not steps:
        raise ConfigError("the plan has no steps", field="plan")
    return steps


def payload(step: Step) -> bytes:
    """What the line controller publishes (retained) for ``step``."""
    return json.dumps({"state": step.state.capitalize(), "changeover": step.changeover}).encode()
