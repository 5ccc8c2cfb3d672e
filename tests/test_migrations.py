"""The app's migrations on a PostgreSQL table with thousands of rows, as a host upgrades: no table
or index is rewritten, readers and writers never wait on a migration for more than a moment, and
an upgraded database is one the app cannot tell from a new one.

Each migration runs in `migrate` processes of its own against a scratch database loaded at 0001,
while another connection keeps reading and updating evaluations with a short lock_timeout.
"""

from __future__ import annotations

import json
import os
import pkgutil
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connection

from tests.services import ROOT

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.dbserver

TABLE = "trusthub_eval_evaluation"
# Catalog changes hold their locks for tens of milliseconds, even on a loaded machine; rewriting
# this table, or building an index on it under a lock, holds them longer than this.
MOMENT = 0.5
PROFILES = 4_000
EVALUATIONS_PER_PROFILE = 15
# More than one batch of the backfill: profiles with an evaluation queued or running.
IN_FLIGHT = 1_200


def migration_names() -> list[str]:
    import trusthub_eval.migrations

    return sorted(
        module.name
        for module in pkgutil.iter_modules(trusthub_eval.migrations.__path__)
        if module.name[:4].isdigit()
    )


@dataclass
class Step:
    """One `migrate` run: what the probe saw meanwhile, and the relations it rewrote."""

    target: str
    longest_wait: float = 0.0
    blocked: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    output: str = ""


class Scratch:
    """A database of its own on the suite's PostgreSQL server, and `migrate` runs against it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"test_trusthub_migrations_{uuid.uuid4().hex[:8]}"
        self.steps: list[Step] = []

    def connect(self, **kwargs: Any) -> Any:
        return psycopg.connect(self.url, dbname=self.name, autocommit=True, **kwargs)

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TRUSTHUB_TEST_DB_NAME": self.name,
            "TRUSTHUB_TEST_EAGER": "0",
            "CELERY_BROKER_URL": "memory://",
        }

    def run(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )

    def migrate(self, target: str, *, probe: bool = True) -> Step:
        step = Step(target)
        before = self.relations()
        reader = Probe(self) if probe else None
        if reader is not None:
            reader.start()
        process = self.run("-m", "django", "migrate", "trusthub_eval", target, "-v", "1")
        step.output, _ = process.communicate(timeout=300)
        if reader is not None:
            reader.stop.set()
            reader.join()
            step.longest_wait, step.blocked = reader.longest, reader.blocked
        assert process.returncode == 0, step.output
        after = self.relations()
        step.rewritten = sorted(
            name for name in before.keys() & after.keys() if before[name] != after[name]
        )
        self.steps.append(step)
        return step

    def relations(self) -> dict[str, int]:
        """The app's tables and valid indexes by name, with the file that holds each (an invalid
        index, left by an interrupted concurrent build, is built again)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT class.relname, class.relfilenode FROM pg_class AS class "
                "LEFT JOIN pg_index AS index ON index.indexrelid = class.oid "
                "WHERE class.relkind IN ('r', 'i') AND class.relname LIKE 'trusthub%%' "
                "AND index.indisvalid IS NOT FALSE"
            ).fetchall()
        return dict(rows)

    def load(self) -> None:
        """Thousands of evaluations, some of them in flight, as a release at 0001 wrote them."""
        raw = json.dumps({"results": [{"requirement_name": "x" * 40, "passed": True}] * 8})
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO trusthub_eval_policy (sid, friendly_name) "
                "VALUES ('RN' || repeat('0', 32), 'Primary')"
            )
            conn.execute(
                "INSERT INTO trusthub_eval_customerprofile (sid, account_sid, friendly_name, email,"
                " status, compliance_status, failing_requirements, policy_id) "
                "SELECT 'BU' || lpad(to_hex(i), 32, '0'), '', 'Profile ' || i, '', "
                "'twilio-approved', '', 0, (SELECT id FROM trusthub_eval_policy) "
                "FROM generate_series(1, %s) AS i",
                [PROFILES],
            )
            conn.execute(
                "INSERT INTO trusthub_eval_evaluation (sid, status, state, trigger, requested_at, "
                "attempts, error_message, raw, customer_profile_id, policy_id) "
                "SELECT 'EL' || lpad(to_hex(n), 32, '0'), 'compliant', 'completed', 'schedule', "
                "now() - n * interval '1 minute', 1, '', %s::jsonb, profile.id, profile.policy_id "
                "FROM trusthub_eval_customerprofile AS profile, "
                "generate_series(1, %s) AS e, "
                "LATERAL (SELECT (profile.id - 1) * %s + e AS n) AS numbered",
                [raw, EVALUATIONS_PER_PROFILE, EVALUATIONS_PER_PROFILE],
            )
            # The newest evaluation of the first profiles is still in flight: queued or running.
            conn.execute(
                "UPDATE trusthub_eval_evaluation SET sid = NULL, status = NULL, "
                "state = CASE WHEN customer_profile_id %% 2 = 0 THEN 'queued' ELSE 'running' END "
                "WHERE id IN (SELECT max(id) FROM trusthub_eval_evaluation "
                "WHERE customer_profile_id <= %s GROUP BY customer_profile_id)",
                [IN_FLIGHT],
            )
            conn.execute("VACUUM ANALYZE trusthub_eval_evaluation")


class Probe(threading.Thread):
    """Reads an evaluation and updates it, again and again, giving up on a lock after MOMENT."""

    def __init__(self, scratch: Scratch) -> None:
        super().__init__(daemon=True)
        self.scratch = scratch
        self.stop = threading.Event()
        self.longest = 0.0
        self.blocked: list[str] = []

    def run(self) -> None:
        with self.scratch.connect() as conn:
            conn.execute(f"SET lock_timeout = '{int(MOMENT * 1000)}ms'")
            (top,) = conn.execute("SELECT max(id) FROM trusthub_eval_evaluation").fetchone()
            while not self.stop.is_set():
                pk = random.randint(1, top)
                started = time.monotonic()
                try:
                    conn.execute(
                        "SELECT id, state FROM trusthub_eval_evaluation WHERE id = %s", [pk]
                    ).fetchone()
                    conn.execute(
                        "UPDATE trusthub_eval_evaluation SET error_message = error_message "
                        "WHERE id = %s",
                        [pk],
                    )
                except psycopg.errors.LockNotAvailable as error:
                    self.blocked.append(str(error).strip())
                self.longest = max(self.longest, time.monotonic() - started)
                time.sleep(0.005)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's locks and files; the other databases keep Django's operations")
    url = os.environ["TRUSTHUB_TEST_DATABASE_URL"]
    database = Scratch(url)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database.name}"')
    try:
        database.migrate(migration_names()[0], probe=False)
        database.load()
        yield database
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def upgraded(scratch: Scratch) -> list[Step]:
    """Each migration after 0001 applied in turn, as a host at 0001 upgrades."""
    return [scratch.migrate(name) for name in migration_names()[1:]]


def test_no_migration_rewrites_a_table_or_rebuilds_an_index(upgraded):
    rewritten = {step.target: step.rewritten for step in upgraded if step.rewritten}
    assert not rewritten, "rewritten under an exclusive lock"


def test_no_migration_stops_readers_or_writers_for_more_than_a_moment(upgraded):
    blocked = {step.target: step.blocked for step in upgraded if step.blocked}
    assert not blocked
    assert all(step.longest_wait < MOMENT for step in upgraded)


def in_flight_mismatches(conn) -> int:
    """Rows whose in_flight is not what the generated column's expression says."""
    (count,) = conn.execute(
        "SELECT count(*) FROM trusthub_eval_evaluation WHERE in_flight IS DISTINCT FROM "
        "(CASE WHEN state IN ('queued', 'running') THEN TRUE END)"
    ).fetchone()
    return count


def test_rows_in_flight_before_the_upgrade_are_in_flight_after(upgraded, scratch):
    with scratch.connect() as conn:
        assert in_flight_mismatches(conn) == 0
        (in_flight,) = conn.execute(
            "SELECT count(*) FROM trusthub_eval_evaluation WHERE in_flight"
        ).fetchone()
    assert in_flight == IN_FLIGHT


def schema(cursor, table: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a table's columns, indexes and constraints are, leaving out how a column's value is
    computed (a generated column's expression, or a trigger)."""
    queries = {
        "columns": "SELECT column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY 1",
        "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) ORDER BY 1",
    }
    found = {}
    for what, sql in queries.items():
        cursor.execute(sql, [table])
        found[what] = [tuple(row) for row in cursor.fetchall()]
    return found


@pytest.mark.django_db
def test_an_upgraded_database_has_the_schema_of_a_new_one(upgraded, scratch):
    tables = [
        name for name in connection.introspection.table_names() if name.startswith("trusthub")
    ]
    with connection.cursor() as cursor:
        new = {table: schema(cursor, table) for table in tables}
    with scratch.connect() as conn, conn.cursor() as cursor:
        upgraded_schema = {table: schema(cursor, table) for table in new}
    assert upgraded_schema == new


APP_CHECK = """
import json
import django

django.setup()
from django.db import connection
from trusthub_eval import services
from trusthub_eval.models import CustomerProfile, Evaluation

idle = CustomerProfile.objects.exclude(evaluations__state__in=["queued", "running"])
profile = idle.order_by("pk").first()
first, created = services.request_evaluation(profile, trigger="cli")
again, created_again = services.request_evaluation(profile, trigger="cli")
Evaluation.objects.filter(pk=first.pk).update(state="completed")
after, created_after = services.request_evaluation(profile, trigger="cli")
bulk = services.request_evaluations(CustomerProfile.objects.all(), trigger="schedule")
print(json.dumps({
    "created": [created, created_again, created_after],
    "same": again.pk == first.pk,
    "bulk": [bulk.queued, bulk.in_flight],
    "in_flight": Evaluation.objects.filter(in_flight=True).count(),
    "vendor": connection.vendor,
}))
"""


def test_the_app_keeps_one_evaluation_in_flight_on_an_upgraded_database(upgraded, scratch):
    process = scratch.run("-c", APP_CHECK)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["vendor"] == "postgresql"
    # A second request meets the first in the constraint; once it completes, a third is new.
    assert seen["created"] == [True, False, True]
    assert seen["same"]
    # The bulk request (one INSERT … ON CONFLICT over the constraint) skips the busy profiles:
    # the IN_FLIGHT loaded at 0001 and the one requested above.
    assert seen["bulk"] == [PROFILES - IN_FLIGHT - 1, IN_FLIGHT + 1]
    assert seen["in_flight"] == PROFILES
    with scratch.connect() as conn:
        assert in_flight_mismatches(conn) == 0
        # Whatever a statement writes into the column, it holds what the state says.
        conn.execute(
            "UPDATE trusthub_eval_evaluation SET in_flight = TRUE WHERE state = 'completed'"
        )
        conn.execute(
            "UPDATE trusthub_eval_evaluation SET state = 'failed' WHERE id IN "
            "(SELECT id FROM trusthub_eval_evaluation WHERE in_flight LIMIT 10)"
        )
        assert in_flight_mismatches(conn) == 0


def test_back_to_0001_and_an_interrupted_upgrade_finishes_when_run_again(upgraded, scratch):
    first = migration_names()[0]
    down = scratch.migrate(first)
    assert not down.rewritten and not down.blocked, down
    with scratch.connect() as conn:
        (has_column,) = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = %s "
            "AND column_name = 'in_flight'",
            [TABLE],
        ).fetchone()
        assert has_column == 0
    # A transaction that stays open keeps the concurrent index build waiting: `migrate` is
    # stopped there, as a deploy that times out would stop it, leaving an invalid index.
    # (A snapshot held open; no lock on the table, which would hold up the catalog changes.)
    holder = scratch.connect()
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1").fetchone()
    process = scratch.run("-m", "django", "migrate", "trusthub_eval", migration_names()[1])
    try:
        with scratch.connect() as watcher:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                waiting = watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%%' "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()
                if waiting or process.poll() is not None:
                    break
                time.sleep(0.05)
            assert waiting, process.communicate()[0]
            process.kill()
            process.communicate()
            watcher.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'CREATE UNIQUE INDEX%%'"
            )
    finally:
        holder.close()
        if process.poll() is None:
            process.kill()
    again = scratch.migrate(migration_names()[-1])
    assert not again.rewritten and not again.blocked, again
    with scratch.connect() as conn:
        assert in_flight_mismatches(conn) == 0
        invalid = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s) AND NOT indisvalid",
            [TABLE],
        ).fetchone()
        assert invalid == (0,)
        (constraint,) = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'trusthub_eval_one_in_flight'"
        ).fetchone()
    assert constraint == "UNIQUE (customer_profile_id, policy_id, in_flight)"
