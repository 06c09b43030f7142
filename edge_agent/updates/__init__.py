"""Model updates on the device: verify → stage → self-test → swap → probation → commit | rollback.

One concern per module:

    updater.py            Updater: the orchestration of install, rollback and the CLI's commands
    staging.py            the one download-and-verify pipeline (stage_verified) every path uses
    install.py            the install sequence after staging: commit, self-test, window, swap
    probation_monitor.py  probation windows, the verdict, commit and rollback
    swap.py               the swap between two frames and its DecisionMeter
    shadowing.py          shadow deploys, the side-loaded shadow, probation's reverse shadow
    store_changes.py      start-up recovery and changes the CLI made to the store
    outcome.py            Outcome, and which event a refused update is
    settings.py           UpdaterSettings, built from ``[updates]`` in one place; fault points
    seams.py              what the updater needs of a model runner and of the agent
    wiring.py             the daemon's updater and its hooks into the Agent
"""

from edge_agent.updates.install import provider_choice
from edge_agent.updates.outcome import Outcome, OutcomeStatus
from edge_agent.updates.seams import Host, Runner
from edge_agent.updates.settings import FAULT_POINTS, UpdaterSettings, settings_from_config
from edge_agent.updates.staging import StagedRelease, stage_verified
from edge_agent.updates.swap import DecisionMeter
from edge_agent.updates.updater import Updater
from edge_agent.updates.wiring import STORE_SUBDIR, attach_to_agent, daemon_updater, store_dir

__all__ = [
    "FAULT_POINTS",
    "STORE_SUBDIR",
    "DecisionMeter",
    "Host",
    "Outcome",
    "OutcomeStatus",
    "Runner",
    "StagedRelease",
    "Updater",
    "UpdaterSettings",
    "attach_to_agent",
    "daemon_updater",
    "provider_choice",
    "settings_from_config",
    "stage_verified",
    "store_dir",
]
