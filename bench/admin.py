"""Admin pages at a million evaluations on PostgreSQL: queries, median time, and their SQL.

    .venv/bin/python bench/admin.py [--database-url URL] [--repeat 15] [--sql all|changelists|none]

Loads the shared dataset (``bench/data.py``) and requests each page through Django's test client
(no network, DEBUG off), so the figures are the server's own: ORM, SQL and templates. Every
changelist's SQL is printed with each COUNT marked, and the run fails if any changelist counts a
whole table. When ``bench/rest.py`` can measure a REST page, its time is printed alongside.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import (
    DEFAULT_DATABASE_URL,
    dataset_database_url,
    ensure_dataset,
    setup_django,
)

ADMIN = "/admin/trusthub_eval"


@dataclass
class Measured:
    label: str
    path: str
    queries: int
    times_ms: list[float]
    sql: list[str] = field(default_factory=list)
    status: int = 200

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def worst(self) -> float:
        return max(self.times_ms)


def count_kind(sql: str) -> str:
    """'' for a query without COUNT, else 'bounded' (LIMIT/WHERE) or 'FULL TABLE'."""
    if not re.search(r"\bCOUNT\(", sql, re.I):
        return ""
    if re.search(r"\b(LIMIT|WHERE)\b", sql, re.I):
        return "bounded"
    return "FULL TABLE"


def measure(client: Any, label: str, path: str, repeat: int, **post: Any) -> Measured:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    def request() -> Any:
        return client.post(path, post) if post else client.get(path)

    request()  # warm: templates, content types, the planner's caches
    # Each request clears the query log when it starts (request_started -> reset_queries); an
    # empty log before capturing keeps CaptureQueriesContext's slice of it right.
    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        response = request()
    # captured_queries reads the connection's log when asked: copy it before it is reset.
    sql = [query["sql"] for query in queries.captured_queries]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        request()
        times.append((time.perf_counter() - started) * 1000)
    return Measured(label, path, len(sql), times, sql, response.status_code)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def rest_pages(profile_sid: str) -> list[tuple[str, str]]:
    """The pages bench/rest.py times, at its page size, to time them in this same run."""
    try:
        from bench.rest import PAGE_SIZE
    except ImportError:  # the REST bench is not there: nothing to compare with
        return []
    return [
        ("REST: newest page of evaluations/", f"/api/evaluations/?page_size={PAGE_SIZE}"),
        (
            "REST: one profile's history page",
            f"/api/customer-profiles/{profile_sid}/evaluations/?page_size={PAGE_SIZE}",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url",
        help=f"default: {DEFAULT_DATABASE_URL}, with the sizes appended unless they are the "
        "defaults (as bench/rest.py does, so both benches share a dataset)",
    )
    parser.add_argument("--evaluations", type=int, default=1_000_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sql", choices=["all", "changelists", "none"], default="changelists")
    parser.add_argument(
        "--skip-action",
        action="store_true",
        help="skip the 'select all' re-evaluation (it queues, then removes, 10,000 evaluations)",
    )
    args = parser.parse_args()

    args.database_url = args.database_url or dataset_database_url(
        evaluations=args.evaluations, profiles=args.profiles
    )
    setup_django(args.database_url)
    ensure_dataset(evaluations=args.evaluations, profiles=args.profiles)

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from trusthub_eval.models import Evaluation, Policy
    from trusthub_eval.templatetags.trusthub_admin import _non_empty

    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)

    # A noncompliant evaluation with earlier completed ones of the same profile and policy, so
    # that its page shows failing results and a diff; its profile for the profile pages.
    evaluation = (
        Evaluation.objects.filter(status="noncompliant", customer_profile_id__lte=100)
        .order_by("customer_profile_id", "-requested_at", "-id")
        .first()
    )
    assert evaluation is not None
    profile = evaluation.customer_profile
    policy = Policy.objects.order_by("pk").first()
    assert policy is not None

    cp, ev = f"{ADMIN}/customerprofile/", f"{ADMIN}/evaluation/"
    changelists = [
        ("profiles", cp),
        ("profiles, page 50", f"{cp}?p=50"),
        ("profiles, noncompliant", f"{cp}?compliance=noncompliant"),
        ("profiles, policy + status", f"{cp}?policy__id__exact={policy.pk}&status=draft"),
        ("profiles, search SID", f"{cp}?q={profile.sid}"),
        ("evaluations", ev),
        ("evaluations, page 5000", f"{ev}?p=5000"),
        ("evaluations, noncompliant", f"{ev}?status__exact=noncompliant"),
        ("evaluations, queued", f"{ev}?state__exact=queued"),
        (
            "evaluations, trigger + policy",
            f"{ev}?trigger__exact=admin&policy__id__exact={policy.pk}",
        ),
        ("evaluations, 2024", f"{ev}?requested_at__year=2024"),
        ("evaluations, 2024-06", f"{ev}?requested_at__year=2024&requested_at__month=6"),
        ("evaluations, search profile SID", f"{ev}?q={profile.sid}"),
        ("evaluations of one profile", f"{ev}?customer_profile__id__exact={profile.pk}"),
        ("policies", f"{ADMIN}/policy/"),
    ]
    pages = [
        ("profile page (history, timeline)", f"{ADMIN}/customerprofile/{profile.pk}/change/"),
        ("evaluation page (results, diff)", f"{ADMIN}/evaluation/{evaluation.pk}/change/"),
        ("policy page", f"{ADMIN}/policy/{policy.pk}/change/"),
    ]
    print(
        f"\nAdmin bench on {connection.settings_dict['NAME']}: "
        f"{args.evaluations:,} evaluations, {args.profiles:,} profiles; "
        f"median of {args.repeat} requests through the test client, DEBUG off.\n"
    )
    results = [measure(client, label, path, args.repeat) for label, path in changelists]
    page_results = [measure(client, label, path, args.repeat) for label, path in pages]

    width = max(len(r.label) for r in results + page_results) + 2
    print(f"{'page':<{width}}  queries  median ms  max ms  COUNTs")
    full_counts = []
    for r in results + page_results:
        kinds = [count_kind(sql) for sql in r.sql]
        counted = ", ".join(k for k in kinds if k) or "none"
        print(
            f"{r.label:<{width}}  {r.queries:>7}  {r.median:>9.1f}  {r.worst:>6.1f}  {counted}"
            + ("" if r.status == 200 else f"  (HTTP {r.status})")
        )
        full_counts += [
            (r.label, sql) for sql, kind in zip(r.sql, kinds, strict=True) if kind == "FULL TABLE"
        ]

    for label, path in rest_pages(profile.sid):
        r = measure(client, label, path, args.repeat)
        print(
            f"{label:<{width}}  {r.queries:>7}  {r.median:>9.1f}  {r.worst:>6.1f}"
            + ("" if r.status == 200 else f"  (HTTP {r.status})")
        )

    # The same changelist with Django's defaults: full COUNT, a second COUNT for "N total",
    # SELECT DISTINCT for the date drill-down, plain OFFSET paging, payloads read.
    print("\nThe evaluation changelist with the admin's defaults instead, for comparison:")
    with stock_admin(Evaluation):
        for label, path in (("evaluations", ev), ("evaluations, page 5000", f"{ev}?p=5000")):
            r = measure(client, f"stock: {label}", path, max(args.repeat // 3, 3))
            kinds = ", ".join(k for k in map(count_kind, r.sql) if k) or "none"
            print(f"{r.label:<{width}}  {r.queries:>7}  {r.median:>9.1f}  {r.worst:>6.1f}  {kinds}")

    # What the admin does not do, for scale.
    print("\nAvoided work (what stock Django would run on these pages):")
    count_ms = timed(lambda: Evaluation.objects.count(), args.repeat)
    print(f"  SELECT COUNT(*) of all evaluations (Django's paginator): {count_ms:.1f} ms")
    year_distinct_ms = timed(
        lambda: list(Evaluation.objects.datetimes("requested_at", "month")), args.repeat
    )
    from django.utils import timezone

    months = [
        (timezone.make_aware(timezone.datetime(2024, m, 1)),
         timezone.make_aware(timezone.datetime(2024 + m // 12, m % 12 + 1, 1)))
        for m in range(1, 13)
    ]  # fmt: skip
    probes_ms = timed(lambda: _non_empty(Evaluation.objects.all(), "requested_at", months), 5)
    print(
        "  date drill-down, months of the table: Django's SELECT DISTINCT "
        f"{year_distinct_ms:.1f} ms, our 12 EXISTS probes {probes_ms:.1f} ms"
    )

    if not args.skip_action:
        queries, elapsed, message = select_all_action(client, profile.pk)
        queued = Evaluation.objects.filter(pk__gt=args.evaluations).count()
        print(
            f"\nRe-evaluate action, 'select all' on {args.profiles:,} profiles, confirmed: "
            f"{queries} queries, {elapsed:.0f} ms; {queued:,} evaluations queued.\n"
            f"  Its message: {message}"
        )
        ensure_dataset(evaluations=args.evaluations, profiles=args.profiles)  # removes them

    if args.sql != "none":
        print("\nSQL of each changelist request (COUNTs marked):")
        shown = results if args.sql == "changelists" else results + page_results
        for r in shown:
            print(f"\n-- {r.label}: GET {r.path}")
            for sql in r.sql:
                mark = count_kind(sql)
                print(f"   {'[' + mark + '] ' if mark else ''}{sql}")

    if full_counts:
        print("\nFAILED: a changelist counted a whole table:")
        for label, sql in full_counts:
            print(f"  {label}: {sql}")
        return 1
    print("\nNo changelist ran a full-table COUNT.")
    return 0


@contextlib.contextmanager
def stock_admin(model: Any) -> Iterator[None]:
    """Give the model's registered admin Django's defaults for big-table behaviour, for a while."""
    from django.contrib import admin
    from django.contrib.admin.views.main import ChangeList
    from django.core.paginator import Paginator

    model_admin = admin.site.get_model_admin(model)
    stock = {
        "paginator": Paginator,
        "show_full_result_count": True,
        "change_list_template": None,
        "get_changelist": lambda request, **kwargs: ChangeList,
    }
    for name, value in stock.items():
        setattr(model_admin, name, value)  # on the instance, over the class's
    try:
        yield
    finally:
        for name in stock:
            delattr(model_admin, name)


def select_all_action(client: Any, profile_pk: int) -> tuple[int, float, str]:
    """Queries, milliseconds and message of the request that queues every profile."""
    from django.contrib.messages import get_messages
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.post(
            f"{ADMIN}/customerprofile/",
            {
                "action": "reevaluate_selected",
                "_selected_action": [str(profile_pk)],
                "select_across": "1",
                "confirm": "yes",
                "policy": "",
            },
        )
        elapsed = (time.perf_counter() - started) * 1000
    count = len(queries.captured_queries)
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    return count, elapsed, " ".join(messages)


if __name__ == "__main__":
    sys.exit(main())
