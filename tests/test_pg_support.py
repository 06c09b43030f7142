"""The test run's own PostgreSQL, and the rule that a missing program fails CI instead of skipping."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.pg_support import PostgresDatabases, require_program


def test_postgres_is_the_cluster_this_run_started(postgres_databases: PostgresDatabases) -> None:
    """Never a server the machine happens to run (this machine has one on 5432)."""
    if os.environ.get("LINESIDE_TEST_POSTGRES_URL"):
        pytest.skip("LINESIDE_TEST_POSTGRES_URL chose an existing server explicitly")
    url = make_url(postgres_databases.admin_url)
    assert url.host == "127.0.0.1" and url.port != 5432
    with postgres_databases.engine.connect() as c:
        data_dir = c.execute(text("SHOW data_directory")).scalar()
    assert "/lineside-pg-" in str(data_dir)  # the temporary directory PostgresCluster made


def test_each_test_gets_its_own_database(postgres_databases: PostgresDatabases) -> None:
    a, b = postgres_databases.create(), postgres_databases.create()
    assert make_url(a).database != make_url(b).database
    engine = create_engine(a)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    engine.dispose()
    postgres_databases.drop(a)
    postgres_databases.drop(b)
    with postgres_databases.engine.connect() as c:
        names = set(c.execute(text("SELECT datname FROM pg_database")).scalars())
    assert make_url(a).database not in names and make_url(b).database not in names


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_program_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        require_program("initdb", "apt-get install postgresql")
