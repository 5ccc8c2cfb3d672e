"""A PostgreSQL bench database and a large, reproducible dataset of evaluations loaded into it.

Shared by the benchmarks (``bench/rest.py``, ``bench/admin.py``)::

    from bench.data import setup_django, ensure_dataset

    setup_django("postgres://postgres@127.0.0.1:5432/trusthub_bench")
    ensure_dataset(evaluations=1_000_000, profiles=10_000)

The rows are generated inside PostgreSQL (``INSERT … SELECT … generate_series``), so a million
evaluations with four requirement rows each load in a few minutes, not hours. The dataset is
deterministic: the same sizes always give the same rows, ids and SIDs.

``python bench/data.py --fresh`` loads the dataset into a database of its own, prints how long
each step took (creating and migrating the database, generating the rows, ``VACUUM ANALYZE``),
and drops the database: the figure ``docs/BENCHMARKS.md`` quotes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = os.environ.get(
    "TRUSTHUB_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/trusthub_bench"
)

# Bump when the generator changes, so an old dataset is reloaded rather than silently reused.
DATASET_VERSION = 2
MARKER_TABLE = "trusthub_bench_dataset"
# pg_advisory_lock keys (any constants unique to this module): one for migrating, one for loading.
_MIGRATE_LOCK = 7_311_900_001
_LOAD_LOCK = 7_311_900_002

# The dataset's shape, which the benchmarks' filters rely on.
PRIMARY_POLICY_ID = 1  # 4 profiles out of 5
STARTER_POLICY_ID = 2  # every fifth profile
ACCOUNT_SID = "AC" + "0" * 32
# Evaluation i was requested at BASE + i * STEP: ids and requested_at grow together.
BASE = "2024-01-01T00:00:00+00:00"
STEP_SECONDS = 30
# With h = ((id * 2654435761) >> 13) mod 1000 (a multiplicative hash; the shift takes higher
# bits, so that ids 10,000 apart, the same profile's, do not share an outcome): h < 10 failed,
# h < 300 noncompliant, otherwise compliant. A noncompliant evaluation fails requirement
# h mod 3, and also requirement 3 when h is even.
FAILED_PER_MILLE = 10
NONCOMPLIANT_PER_MILLE = 300
# The newest evaluation of every hundredth profile is still queued (in flight).
IN_FLIGHT_EVERY = 100


def _valid(*fields: str) -> list[dict[str, Any]]:
    return [
        {
            "object_field": field,
            "error_code": None,
            "friendly_name": field.replace("_", " ").title(),
            "passed": True,
            "failure_reason": None,
        }
        for field in fields
    ]


def _invalid(code: int, reason: str, *fields: str) -> list[dict[str, Any]]:
    return [
        {
            "friendly_name": field.replace("_", " ").title(),
            "object_field": field,
            "failure_reason": reason.format(field.replace("_", " ").title()),
            "error_code": code,
        }
        for field in fields
    ]


# One row per requirement of the primary policy, in the sandbox's wording and error codes.
REQUIREMENTS: tuple[dict[str, Any], ...] = (
    {
        "requirement_name": "customer_profile_business_information",
        "requirement_friendly_name": "Customer Profile Business Information",
        "friendly_name": "Business Information",
        "object_type": "customer_profile_business_information",
        "failure_reason": "The Business Information End-User is missing required information. "
        "Please complete the fields listed as invalid.",
        "error_code": 22215,
        "valid": _valid("business_name", "business_type", "website_url"),
        "invalid": _invalid(
            22215,
            "The {0} is missing. Please enter in a {0} on the Business information.",
            "business_registration_number",
            "business_identity",
        ),
    },
    {
        "requirement_name": "authorized_representative_1",
        "requirement_friendly_name": "Authorized Representative 1",
        "friendly_name": "Authorized Representative 1",
        "object_type": "authorized_representative_1",
        "failure_reason": "An Authorized Representative 1 End-User is missing. "
        "Please add one to the regulatory bundle.",
        "error_code": 22214,
        "valid": _valid("first_name", "last_name", "email"),
        "invalid": _invalid(
            22215,
            "The {0} is missing. Please enter in a {0} on the Authorized Representative 1 "
            "information.",
            "first_name",
            "last_name",
            "email",
            "phone_number",
        ),
    },
    {
        "requirement_name": "customer_profile_address",
        "requirement_friendly_name": "Physical Business Address",
        "friendly_name": "Physical Business Address",
        "object_type": "customer_profile_address",
        "failure_reason": "A Physical Business Address is missing. "
        "Please add one to the regulatory bundle.",
        "error_code": 22216,
        "valid": _valid("address_sids"),
        "invalid": _invalid(
            22219,
            "The Address is missing. Please enter in the address shown on the Physical Business "
            "Address.",
            "address_sids",
        ),
    },
    {
        "requirement_name": "authorized_representative_2",
        "requirement_friendly_name": "Authorized Representative 2",
        "friendly_name": "Authorized Representative 2",
        "object_type": "authorized_representative_2",
        "failure_reason": "An Authorized Representative 2 End-User is missing. "
        "Please add one to the regulatory bundle.",
        "error_code": 22214,
        "valid": _valid("first_name", "last_name"),
        "invalid": _invalid(
            22215,
            "The {0} is missing. Please enter in a {0} on the Authorized Representative 2 "
            "information.",
            "first_name",
            "last_name",
        ),
    },
)
FAILING_REQUIREMENT = REQUIREMENTS[0]["requirement_name"]  # fails in ~1/3 of noncompliant ones


def _failed_positions(variant: int) -> set[int]:
    """Variant 0 passes everything; 1..6 are noncompliant outcomes (see the comment above)."""
    if variant == 0:
        return set()
    first, both = divmod(variant - 1, 2)
    return {first, 3} if both else {first}


def _result_item(requirement: dict[str, Any], passed: bool) -> dict[str, Any]:
    return {
        "friendly_name": requirement["friendly_name"],
        "object_type": requirement["object_type"],
        "passed": passed,
        "failure_reason": None if passed else requirement["failure_reason"],
        "error_code": None if passed else requirement["error_code"],
        "valid": requirement["valid"] if passed else [],
        "invalid": [] if passed else requirement["invalid"],
        "requirement_friendly_name": requirement["requirement_friendly_name"],
        "requirement_name": requirement["requirement_name"],
    }


def dataset_database_url(
    *, evaluations: int, profiles: int, base: str = DEFAULT_DATABASE_URL
) -> str:
    """The database for a dataset of these sizes: ``base`` itself for the default sizes.

    Other sizes get their own database (``trusthub_bench_20000_200``), so a quick run never
    reloads the million rows a full run, or another bench, uses.
    """
    if (evaluations, profiles) == (1_000_000, 10_000):
        return base
    parts = urllib.parse.urlsplit(base)
    name = parts.path.lstrip("/") or "trusthub_bench"
    return parts._replace(path=f"/{name}_{evaluations}_{profiles}").geturl()


#: Seconds each step of this process's setup and load took, in order, for the record.
TIMINGS: dict[str, float] = {}


def setup_django(database_url: str = DEFAULT_DATABASE_URL, *, migrate: bool = True) -> None:
    """Configure Django with the example project's settings on ``database_url``, for a bench run.

    Creates the database if it is missing and migrates it. Celery gets the filesystem broker in
    a fresh temporary directory and runs nothing eagerly, so tasks are really sent but never
    run. DEBUG is off, as in production; query counts still work through
    ``CaptureQueriesContext``. Calling it again in the same process does nothing.
    """
    import django
    from django.conf import settings

    if settings.configured:
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    started = time.monotonic()
    _create_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(32))
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"
    # project.settings puts the filesystem broker's folders under TRUSTHUB_VAR_DIR.
    var_dir = tempfile.mkdtemp(prefix="trusthub-bench-")
    atexit.register(shutil.rmtree, var_dir, ignore_errors=True)
    os.environ["TRUSTHUB_VAR_DIR"] = var_dir
    django.setup()
    if migrate:
        from django.core.management import call_command
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_MIGRATE_LOCK])
            try:
                call_command("migrate", interactive=False, verbosity=0)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_MIGRATE_LOCK])
    TIMINGS["create and migrate the database"] = time.monotonic() - started


def _create_database(database_url: str) -> None:
    """CREATE DATABASE for ``database_url`` unless it exists (connecting to ``postgres``)."""
    import psycopg
    from psycopg import errors, sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(database_url)
    name = str(params.get("dbname") or "postgres")
    maintenance = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(maintenance, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists:
            return
        # Another bench process may create it meanwhile.
        with contextlib.suppress(errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def ensure_dataset(*, evaluations: int = 1_000_000, profiles: int = 10_000) -> None:
    """Load ``evaluations`` evaluations across ``profiles`` profiles unless already loaded.

    Idempotent and safe to run from several processes at once (an advisory lock serialises
    them). With the same sizes already loaded it only removes what earlier bench runs added
    (evaluations beyond the dataset's ids); with other sizes it empties the app's tables and
    reloads. It refuses to empty tables it did not fill.
    """
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connection

    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            "bench.data.ensure_dataset needs PostgreSQL; call setup_django(database_url) first."
        )
    if evaluations < 0 or profiles < 1:
        raise ValueError("Need at least one profile and no negative number of evaluations.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_LOAD_LOCK])
        # Loading a million rows takes longer than a host's statement_timeout (the example
        # project's is 30 s): none while loading, the host's again for the measurements.
        cursor.execute("SHOW statement_timeout")
        (timeout,) = cursor.fetchone()
        cursor.execute("SELECT set_config('statement_timeout', '0', false)")
        try:
            _ensure_locked(evaluations, profiles)
        finally:
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOAD_LOCK])


def _tables() -> dict[str, str]:
    from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult

    return {
        "policy": Policy._meta.db_table,
        "profile": CustomerProfile._meta.db_table,
        "evaluation": Evaluation._meta.db_table,
        "result": RequirementResult._meta.db_table,
    }


def _ensure_locked(evaluations: int, profiles: int) -> None:
    from django.db import connection, transaction

    t = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} ("
            " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL,"
            " evaluations bigint NOT NULL, profiles integer NOT NULL,"
            " loaded_at timestamptz NOT NULL, seconds double precision NOT NULL)"
        )
        cursor.execute(
            f"SELECT version, evaluations, profiles, loaded_at, seconds FROM {MARKER_TABLE}"
        )
        row = cursor.fetchone()
        marker = row[:3] if row else None
        if row is not None and marker == (DATASET_VERSION, evaluations, profiles):
            print(
                f"bench dataset: already loaded ({row[3]:%Y-%m-%d %H:%M}, "
                f"loading took {row[4]:.0f}s)",
                flush=True,
            )
            with transaction.atomic():
                removed = _remove_extras(cursor, t, evaluations, profiles)
            if removed:
                # The removed rows were the newest: until a vacuum their dead index entries
                # sit at the very start of every newest-first scan and slow it down.
                for table in (t["evaluation"], t["profile"]):
                    cursor.execute(f"VACUUM {table}")
                print(f"bench dataset: removed {removed} evaluations left by earlier runs")
            return
        if marker is None:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {t['profile']})")
            row = cursor.fetchone()
            if row is not None and row[0]:
                raise RuntimeError(
                    "This database has customer profiles that bench.data did not load; refusing "
                    "to empty it. Point the bench at its own database (e.g. trusthub_bench)."
                )
    started = time.monotonic()
    print(
        f"bench dataset: loading {evaluations:,} evaluations across {profiles:,} profiles …",
        flush=True,
    )
    with transaction.atomic(), connection.cursor() as cursor:
        _load(cursor, t, evaluations, profiles)
        cursor.execute(f"DELETE FROM {MARKER_TABLE}")
        cursor.execute(
            f"INSERT INTO {MARKER_TABLE} VALUES (1, %s, %s, %s, now(), 0)",
            [DATASET_VERSION, evaluations, profiles],
        )
    TIMINGS["generate the rows (one transaction)"] = time.monotonic() - started
    vacuumed = time.monotonic()
    with connection.cursor() as cursor:
        _vacuum(cursor, t)
        TIMINGS["VACUUM ANALYZE"] = time.monotonic() - vacuumed
        # The whole load, VACUUM included: what a run that finds no dataset waits for.
        seconds = time.monotonic() - started
        cursor.execute(f"UPDATE {MARKER_TABLE} SET seconds = %s", [seconds])
    print(
        f"bench dataset: loaded in {seconds:.1f}s (rows "
        f"{TIMINGS['generate the rows (one transaction)']:.1f}s, VACUUM ANALYZE "
        f"{TIMINGS['VACUUM ANALYZE']:.1f}s)",
        flush=True,
    )


def _vacuum(cursor: Any, t: dict[str, str]) -> None:
    """Fresh planner statistics, no dead rows, and a visibility map for index-only scans.

    Outside any transaction (VACUUM refuses to run in one); autocommit is Django's default.
    """
    for table in t.values():
        cursor.execute(f"VACUUM (ANALYZE) {table}")


def _remove_extras(cursor: Any, t: dict[str, str], evaluations: int, profiles: int) -> int:
    """Delete evaluations (and profiles) added after the load, restoring the profiles' links."""
    # The FK from profile to its latest evaluation has no ON DELETE in the database (Django
    # emulates SET_NULL), so repoint the profiles before deleting.
    cursor.execute(
        f"UPDATE {t['profile']} AS p SET latest_evaluation_id = ("
        f" SELECT max(e.id) FROM {t['evaluation']} AS e"
        f" WHERE e.customer_profile_id = p.id AND e.id <= %s)"
        f" WHERE p.latest_evaluation_id > %s",
        [evaluations, evaluations],
    )
    cursor.execute(f"DELETE FROM {t['result']} WHERE evaluation_id > %s", [evaluations])
    cursor.execute(
        f"DELETE FROM {t['evaluation']} WHERE id > %s OR customer_profile_id > %s",
        [evaluations, profiles],
    )
    removed: int = cursor.rowcount
    cursor.execute(f"DELETE FROM {t['profile']} WHERE id > %s", [profiles])
    return removed


def _load(cursor: Any, t: dict[str, str], evaluations: int, profiles: int) -> None:
    cursor.execute("SET LOCAL synchronous_commit TO off")
    cursor.execute("SET LOCAL work_mem TO '256MB'")
    cursor.execute(
        f"TRUNCATE {t['result']}, {t['evaluation']}, {t['profile']}, {t['policy']}"
        " RESTART IDENTITY CASCADE"
    )
    policy_requirements = {
        "end_user": [
            {"requirement_name": r["requirement_name"], "name": r["requirement_friendly_name"]}
            for r in REQUIREMENTS
        ]
    }
    cursor.execute(
        f"INSERT INTO {t['policy']} (id, sid, friendly_name, requirements, raw, synced_at) VALUES"
        " (%s, 'RN' || md5('bench-policy-1'), 'Primary Customer Profile of type Business',"
        "  %s::jsonb, NULL, now()),"
        " (%s, 'RN' || md5('bench-policy-2'), 'Starter Customer Profile', %s::jsonb, NULL, now())",
        [
            PRIMARY_POLICY_ID,
            json.dumps(policy_requirements),
            STARTER_POLICY_ID,
            json.dumps(policy_requirements),
        ],
    )
    params = {
        "m": evaluations,
        "n": profiles,
        "base": BASE,
        "step": STEP_SECONDS,
        "account": ACCOUNT_SID,
        "primary": PRIMARY_POLICY_ID,
        "starter": STARTER_POLICY_ID,
        "failed": FAILED_PER_MILLE,
        "noncompliant": NONCOMPLIANT_PER_MILLE,
        "every": IN_FLIGHT_EVERY,
    }
    cursor.execute(
        f"INSERT INTO {t['profile']} (id, sid, account_sid, friendly_name, email, status,"
        " policy_id, valid_until, date_created, date_updated, raw, synced_at, compliance_status,"
        " compliance_checked_at, failing_requirements, latest_evaluation_id)"
        " SELECT p, 'BU' || md5('bench-profile-' || p), %(account)s,"
        "  'Profile ' || lpad(p::text, 6, '0'), 'owner' || p || '@example.com',"
        "  (ARRAY['draft', 'pending-review', 'in-review', 'twilio-rejected',"
        "   'twilio-approved'])[1 + mod(p, 5)],"
        "  CASE WHEN mod(p, 5) = 0 THEN %(starter)s ELSE %(primary)s END,"
        "  NULL, %(base)s::timestamptz, %(base)s::timestamptz, NULL, %(base)s::timestamptz,"
        "  '', NULL, 0, NULL"
        " FROM generate_series(1, %(n)s) AS p",
        params,
    )
    # The results array of each outcome, for the evaluations' raw payloads.
    cursor.execute(
        "CREATE TEMPORARY TABLE bench_variant (variant integer PRIMARY KEY, results jsonb)"
        " ON COMMIT DROP"
    )
    cursor.executemany(
        "INSERT INTO bench_variant VALUES (%s, %s::jsonb)",
        [
            (
                variant,
                json.dumps(
                    [
                        _result_item(r, position not in _failed_positions(variant))
                        for position, r in enumerate(REQUIREMENTS)
                    ]
                ),
            )
            for variant in range(7)
        ],
    )
    cursor.execute(
        f"INSERT INTO {t['evaluation']} (id, sid, customer_profile_id, policy_id, status, state,"
        " trigger, requested_by_id, requested_at, started_at, completed_at, date_created,"
        " attempts, posted_at, error_code, error_message, raw)"
        " SELECT i, sid, p, policy_id, status, state,"
        "  (ARRAY['schedule', 'schedule', 'api', 'admin', 'sync', 'webhook'])[1 + mod(i, 6)],"
        "  NULL, requested_at,"
        "  CASE WHEN state <> 'queued' THEN requested_at + interval '1 second' END,"
        "  CASE WHEN state <> 'queued' THEN requested_at + interval '4 seconds' END,"
        "  CASE WHEN sid IS NOT NULL THEN date_trunc('second', requested_at) END,"
        "  CASE WHEN state = 'queued' THEN 0 ELSE 1 END, NULL,"
        "  CASE WHEN state = 'failed' THEN 20404 END,"
        "  CASE WHEN state = 'failed' THEN 'The requested resource was not found' ELSE '' END,"
        "  CASE WHEN sid IS NOT NULL THEN jsonb_build_object("
        "   'sid', sid, 'account_sid', %(account)s::text,"
        "   'policy_sid', 'RN' || md5('bench-policy-' || policy_id),"
        "   'customer_profile_sid', 'BU' || md5('bench-profile-' || p), 'status', status,"
        "   'date_created', to_char(requested_at AT TIME ZONE 'UTC',"
        '    \'YYYY-MM-DD"T"HH24:MI:SS"Z"\'),'
        "   'url', 'https://trusthub.twilio.com/v1/CustomerProfiles/BU'"
        "    || md5('bench-profile-' || p) || '/Evaluations/' || sid,"
        "   'results', v.results) END"
        " FROM ("
        "  SELECT i, p, policy_id, requested_at, state,"
        "   CASE WHEN state = 'completed' THEN 'EL' || md5('bench-evaluation-' || i) END AS sid,"
        "   CASE WHEN state <> 'completed' THEN NULL"
        "    WHEN h < %(noncompliant)s THEN 'noncompliant' ELSE 'compliant' END AS status,"
        "   CASE WHEN state <> 'completed' OR h >= %(noncompliant)s THEN 0"
        "    ELSE 1 + mod(h, 3) * 2 + CASE WHEN mod(h, 2) = 0 THEN 1 ELSE 0 END END AS variant"
        "  FROM ("
        "   SELECT i, p, h,"
        "    CASE WHEN mod(p, 5) = 0 THEN %(starter)s ELSE %(primary)s END AS policy_id,"
        "    %(base)s::timestamptz + i * make_interval(secs => %(step)s) AS requested_at,"
        "    CASE WHEN i > %(m)s - %(n)s AND mod(p, %(every)s) = 0 THEN 'queued'"
        "     WHEN h < %(failed)s THEN 'failed' ELSE 'completed' END AS state"
        "   FROM ("
        "    SELECT i, 1 + mod(i - 1, %(n)s) AS p, mod((i * 2654435761) >> 13, 1000) AS h"
        "    FROM generate_series(1::bigint, %(m)s) AS i"
        "   ) AS numbered"
        "  ) AS stated"
        " ) AS e JOIN bench_variant AS v USING (variant)"
        " ORDER BY i",
        params,
    )
    cursor.execute(
        "CREATE TEMPORARY TABLE bench_requirement ("
        " position integer PRIMARY KEY, requirement_name text, requirement_friendly_name text,"
        " friendly_name text, object_type text, failure_reason text, error_code integer,"
        " valid jsonb, invalid jsonb) ON COMMIT DROP"
    )
    cursor.executemany(
        "INSERT INTO bench_requirement VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)",
        [
            (
                position,
                r["requirement_name"],
                r["requirement_friendly_name"],
                r["friendly_name"],
                r["object_type"],
                r["failure_reason"],
                r["error_code"],
                json.dumps(r["valid"]),
                json.dumps(r["invalid"]),
            )
            for position, r in enumerate(REQUIREMENTS)
        ],
    )
    count = len(REQUIREMENTS)
    cursor.execute(
        f"INSERT INTO {t['result']} (id, evaluation_id, position, requirement_name,"
        " requirement_friendly_name, friendly_name, object_type, passed, failure_reason,"
        " error_code, valid, invalid)"
        " SELECT (e.id - 1) * %(count)s + r.position + 1, e.id, r.position, r.requirement_name,"
        "  r.requirement_friendly_name, r.friendly_name, r.object_type, NOT f.failed,"
        "  CASE WHEN f.failed THEN r.failure_reason ELSE '' END,"
        "  CASE WHEN f.failed THEN r.error_code END,"
        "  CASE WHEN f.failed THEN '[]'::jsonb ELSE r.valid END,"
        "  CASE WHEN f.failed THEN r.invalid ELSE '[]'::jsonb END"
        f" FROM {t['evaluation']} AS e CROSS JOIN bench_requirement AS r"
        " CROSS JOIN LATERAL (SELECT e.status = 'noncompliant' AND ("
        "   r.position = mod(mod(e.id * 2654435761, 1000), 3)"
        "   OR (r.position = 3 AND mod(mod(e.id * 2654435761, 1000), 2) = 0)) AS failed) AS f"
        " WHERE e.state = 'completed'"
        " ORDER BY e.id, r.position",
        {"count": count},
    )
    # The denormalised columns services keep up to date on every request and result.
    cursor.execute(
        f"UPDATE {t['profile']} AS p SET latest_evaluation_id = newest.id"
        f" FROM (SELECT customer_profile_id, max(id) AS id FROM {t['evaluation']}"
        "  GROUP BY customer_profile_id) AS newest"
        " WHERE newest.customer_profile_id = p.id"
    )
    cursor.execute(
        f"UPDATE {t['profile']} AS p SET compliance_status = done.status,"
        " compliance_checked_at = done.completed_at, failing_requirements = ("
        f"  SELECT count(*) FROM {t['result']} AS r"
        "  WHERE r.evaluation_id = done.id AND NOT r.passed)"
        " FROM (SELECT DISTINCT ON (customer_profile_id) customer_profile_id, id, status,"
        f"  completed_at FROM {t['evaluation']} WHERE state = 'completed'"
        "  ORDER BY customer_profile_id, completed_at DESC, id DESC) AS done"
        " WHERE done.customer_profile_id = p.id"
    )
    for table in t.values():
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
            f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)",
            [table],
        )


def main() -> int:
    """Load a dataset (into a throwaway database with ``--fresh``) and say how long it took."""
    import argparse

    parser = argparse.ArgumentParser(description="Load the bench dataset and time it.")
    parser.add_argument("--evaluations", type=int, default=1_000_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--database-url", help="default: the benchmarks' database for the sizes")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="load into a new database of its own and drop it afterwards (to time a load)",
    )
    args = parser.parse_args()
    url = args.database_url or dataset_database_url(
        evaluations=args.evaluations, profiles=args.profiles
    )
    if args.fresh:
        parts = urllib.parse.urlsplit(url)
        name = f"trusthub_bench_fresh_{secrets.token_hex(4)}"
        url = parts._replace(path=f"/{name}").geturl()
    started = time.monotonic()
    try:
        setup_django(url)
        ensure_dataset(evaluations=args.evaluations, profiles=args.profiles)
    finally:
        if args.fresh:
            from django.db import connections

            connections.close_all()
            _drop_database(url)
    print(
        f"bench dataset: {args.evaluations:,} evaluations, {args.profiles:,} profiles: "
        f"{time.monotonic() - started:.1f}s in all ("
        + ", ".join(f"{step} {value:.1f}s" for step, value in TIMINGS.items())
        + ")",
        flush=True,
    )
    return 0


def _drop_database(database_url: str) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = str(conninfo_to_dict(database_url).get("dbname"))
    with psycopg.connect(make_conninfo(database_url, dbname="postgres"), autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


if __name__ == "__main__":
    sys.exit(main())
