"""What every Lineside package shares: the error hierarchy, durable writes and the CLI frame.

The robot installs this package with ``edge_agent`` (it needs nothing beyond the standard library),
and ``fleet_server``, ``models`` and ``sim`` import it too. It is not the contract: the bundle
manifest and the MQTT message schemas stay in ``edge_agent`` (``manifest.py``, ``messages.py``),
because the device is the authority on what it accepts.

    errors.py   the one exception hierarchy; every error carries a ``reason`` code
    atomic.py   durable writes: temp file, fsync, rename, directory fsync
    retry.py    the one backoff and retry rule
    cli.py      the CLI frame: one line and a non-zero exit for every failure, ``--json``
"""
