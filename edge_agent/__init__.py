"""Lineside edge agent: camera frames → ONNX Runtime → decisions, telemetry and verified model updates."""

__version__ = "0.1.0"
