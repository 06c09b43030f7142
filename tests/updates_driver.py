"""A device process for the crash-safety tests: boot the updater, install one release, exit.

    python -m tests.updates_driver STATE_DIR ROOT_JSON REPO_DIR VERSION [FAULT_POINT]

It prints ``ready`` once imported and booted (the test may SIGKILL it at any moment after that),
then the outcome as JSON. ``FAULT_POINT`` makes the updater SIGKILL itself at that step.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.store import ModelStore
from edge_agent.updates import Updater, UpdaterSettings
from tests.updates_support import OrtRunner, window


def main(argv: list[str]) -> int:
    state_dir, root_json, repo, version = argv[:4]
    fault = argv[4] if len(argv) > 4 else None
    settings = UpdaterSettings(root_json=Path(root_json), fault_point=fault, crash_loop_threshold=10_000)
    updater = Updater(ModelStore(state_dir), settings, load_runner=OrtRunner)
    updater.boot()
    print("ready", flush=True)
    out = updater.install_from_dir(Path(repo), name="tiny", version=version)
    # One telemetry window: judges probation (and reaches the during_probation fault point).
    updater.on_window(window(datetime.now(UTC) + timedelta(seconds=1), frames=1))
    print(json.dumps(out.to_dict()), flush=True)
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
