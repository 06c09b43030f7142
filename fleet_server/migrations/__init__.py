"""Alembic migrations of the fleet database (see README.md here and fleet_server.migrate)."""
