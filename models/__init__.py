"""The package classifier's pipeline: train, export, evaluate, quantise, release bundles.

Torch is imported only by ``models.net``, ``models.train`` and ``models.export``
(the ``train`` extra); everything re-exported here works without it.
"""

from models.bundle import Bundle, check_selftest, load_bundle, write_bundle
from models.faulty import make_nan, make_unconfident
from models.metrics import ReleaseGate, check_gate

__all__ = [
    "Bundle",
    "ReleaseGate",
    "check_gate",
    "check_selftest",
    "load_bundle",
    "make_nan",
    "make_unconfident",
    "write_bundle",
]
