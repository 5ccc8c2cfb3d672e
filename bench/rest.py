"""Benchmark of the REST API on PostgreSQL: page times and queries, against a floor and naive DRF.

    python bench/rest.py                                      # 1,000,000 evaluations
    python bench/rest.py --evaluations 20000 --profiles 200   # quick mode

Each page is fetched through Django's full stack (middleware, token authentication, permission
checks, the view, JSON rendering) in this process, without a network. Beside it: the same rows
fetched by one hand-written SQL query over psycopg and serialised with json.dumps (the floor),
and the same page from a plain DRF ModelViewSet with PageNumberPagination (what a user would
write first). The bulk trigger really enqueues: Celery is not eager and the broker is kombu's
filesystem transport in a temporary directory, so messages are written and nothing runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import (
    DEFAULT_DATABASE_URL,
    FAILING_REQUIREMENT,
    PRIMARY_POLICY_ID,
    dataset_database_url,
    ensure_dataset,
    setup_django,
)

PAGE_SIZE = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help=f"default: {DEFAULT_DATABASE_URL}, with the sizes appended unless they are the "
        "defaults",
    )
    parser.add_argument("--evaluations", type=int, default=1_000_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30, help="runs per page (median)")
    parser.add_argument("--bulk-repeat", type=int, default=3, help="runs per bulk trigger")
    args = parser.parse_args()

    args.database_url = args.database_url or dataset_database_url(
        evaluations=args.evaluations, profiles=args.profiles
    )
    setup_django(args.database_url)
    started = time.monotonic()
    ensure_dataset(evaluations=args.evaluations, profiles=args.profiles)
    print(f"dataset ready in {time.monotonic() - started:.1f}s", flush=True)
    Bench(args).run()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from django.conf import settings
        from django.test import Client
        from django.urls import clear_url_caches
        from rest_framework.authtoken.models import Token

        from trusthub_eval.models import CustomerProfile, Policy

        self.args = args
        self.rows: list[tuple[str, ...]] = []
        settings.ROOT_URLCONF = _urlconf()
        clear_url_caches()
        token = Token.objects.get_or_create(user=_bench_user())[0].key
        self.client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
        self.policy = Policy.objects.get(pk=PRIMARY_POLICY_ID)
        # A profile in the middle of the dataset, with its full share of history.
        self.profile = CustomerProfile.objects.get(pk=args.profiles // 2)

    def run(self) -> None:
        import psycopg
        from django.db import connection

        with psycopg.connect(self.args.database_url) as raw:
            self.page(
                "newest page of evaluations/",
                "/api/evaluations/?",
                raw,
                "",
                [],
                "/naive/evaluations/?",
            )
            self.page(
                "newest page of evaluations/, fixed cost",
                "/api/evaluations/?",
                raw,
                "",
                [],
                "/naive/evaluations/?",
                size=1,
            )
            self.page(
                "one profile's history page",
                f"/api/customer-profiles/{self.profile.sid}/evaluations/?",
                raw,
                "WHERE cp.sid = %s",
                [self.profile.sid],
                f"/naive/evaluations/?customer_profile__sid={self.profile.sid}&",
            )
            self.page(
                "filtered page (noncompliant + policy + failing requirement)",
                f"/api/evaluations/?status=noncompliant&policy={self.policy.sid}"
                f"&failing_requirement={FAILING_REQUIREMENT}&",
                raw,
                "WHERE e.status = 'noncompliant' AND p.sid = %s AND EXISTS (SELECT 1"
                " FROM trusthub_eval_requirementresult AS r WHERE r.evaluation_id = e.id"
                " AND r.requirement_name = %s AND NOT r.passed)",
                [self.policy.sid, FAILING_REQUIREMENT],
                f"/naive/evaluations/?status=noncompliant&policy__sid={self.policy.sid}"
                f"&failing_requirement={FAILING_REQUIREMENT}&",
            )
        self.bulk(f"{min(100, self.args.profiles)} profiles by SID", self._sids(100))
        n = min(self.args.profiles, 10_000)
        self.bulk(f"{n:,} profiles by SID", self._sids(n))
        self.bulk("every profile of a policy, by filter", {"filter": {"policy": self.policy.sid}})
        self.report(connection)

    # --- measurements ---

    def get(self, url: str) -> Any:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.content[:500])
        return response

    def page(
        self,
        label: str,
        url: str,
        raw: Any,
        where: str,
        params: list[str],
        naive_url: str,
        *,
        size: int = PAGE_SIZE,
    ) -> None:
        url, naive_url = f"{url}page_size={size}", f"{naive_url}page_size={size}"
        ours = self.get(url).json()["results"]
        floor = _floor_page(raw, where, params, size)
        naive = self.get(naive_url).json()["results"]
        assert len(ours) == size, (label, len(ours))
        assert [row["id"] for row in ours] == [row["id"] for row in floor], label
        assert [row["id"] for row in naive] == [row["id"] for row in floor], label
        # Interleaved, so that a noisy neighbour on a shared machine slows all three alike.
        ours_ms, floor_ms, naive_ms = _medians_ms(
            [
                lambda: self.get(url),
                lambda: _floor_page(raw, where, params, size),
                lambda: self.get(naive_url),
            ],
            self.args.repeat,
        )
        ours_q, naive_q = _queries(lambda: self.get(url)), _queries(lambda: self.get(naive_url))
        self.rows.append(
            (
                f"{label} {size} row{'s' if size > 1 else ''}",
                f"{ours_ms:.1f}",
                str(ours_q),
                f"{floor_ms:.1f}",
                f"{ours_ms / floor_ms:.1f}x",
                f"{naive_ms:.1f}",
                str(naive_q),
            )
        )
        print(f"  {label}: {ours_ms:.1f} ms, {ours_q} queries", flush=True)

    def _sids(self, n: int) -> dict[str, list[str]]:
        from trusthub_eval.models import CustomerProfile

        profiles = CustomerProfile.objects.order_by("pk").values_list("sid", flat=True)
        return {"customer_profiles": list(profiles[:n])}

    def bulk(self, label: str, payload: dict[str, Any]) -> None:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        body = json.dumps(payload)
        times, counts, result = [], [], {}
        for _ in range(self.args.bulk_repeat):
            with CaptureQueriesContext(connection) as captured:
                start = time.perf_counter()
                response = self.client.post(
                    "/api/evaluations/bulk/", body, content_type="application/json"
                )
                times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 202, response.content[:500]
            result = response.json()
            counts.append(len(captured))
            # Put the dataset back as it was for the next run (and the next bench).
            ensure_dataset(evaluations=self.args.evaluations, profiles=self.args.profiles)
        label = (
            f"bulk trigger of {label}: {result['queued']:,} queued, "
            f"{result['in_flight']:,} in flight"
        )
        median = statistics.median(times)
        self.rows.append((label, f"{median:.0f}", str(max(counts)), "", "", "", ""))
        print(f"  {label}: {median:.0f} ms, {max(counts)} queries", flush=True)

    def report(self, connection: Any) -> None:
        import django
        import rest_framework

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            server = cursor.fetchone()[0]
        cpu = _cpu_model()
        print()
        print(
            f"dataset: {self.args.evaluations:,} evaluations, {self.args.profiles:,} profiles; "
            f"medians of {self.args.repeat} runs "
            f"({self.args.bulk_repeat} for bulk)"
        )
        print(
            f"machine: {cpu}, {os.cpu_count()} CPUs, {_memory_gb():.0f} GB RAM; "
            f"PostgreSQL {server}; Python {platform.python_version()}, "
            f"Django {django.__version__}, DRF {rest_framework.__version__}"
        )
        header = (
            "scenario",
            "ours ms",
            "queries",
            "raw floor ms",
            "ours/floor",
            "naive DRF ms",
            "naive queries",
        )
        widths = [max(len(str(row[i])) for row in [header, *self.rows]) for i in range(7)]
        line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
        print(line)
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


# --- the floor: one SQL query and json.dumps ---------------------------------------------------


_FLOOR_SQL = """
SELECT e.id, e.sid, cp.sid, p.sid, e.status, e.state, e.trigger, u.username, e.requested_at,
       e.started_at, e.completed_at, e.date_created, e.attempts, e.error_code, e.error_message
FROM trusthub_eval_evaluation AS e
JOIN trusthub_eval_customerprofile AS cp ON cp.id = e.customer_profile_id
JOIN trusthub_eval_policy AS p ON p.id = e.policy_id
LEFT JOIN auth_user AS u ON u.id = e.requested_by_id
{where}
ORDER BY e.requested_at DESC, e.id DESC
LIMIT {limit}
"""
_FLOOR_KEYS = (
    "id",
    "sid",
    "customer_profile",
    "policy",
    "status",
    "state",
    "trigger",
    "requested_by",
    "requested_at",
    "started_at",
    "completed_at",
    "date_created",
    "attempts",
    "error_code",
    "error_message",
)


def _floor_page(raw: Any, where: str, params: list[str], size: int) -> list[dict[str, Any]]:
    """The page's rows with the API's keys, as cheaply as Python can produce the JSON."""
    rows = raw.execute(_FLOOR_SQL.format(where=where, limit=size + 1), params).fetchall()
    page = []
    for row in rows[:size]:
        item = dict(zip(_FLOOR_KEYS, row, strict=True))
        item["url"] = f"http://127.0.0.1/api/evaluations/{item['id']}/"
        page.append(item)
    json.dumps({"next": "", "previous": None, "results": page}, default=_iso)
    return page


def _iso(value: Any) -> str:
    return str(value.isoformat())


# --- the naive API: a plain ModelViewSet with PageNumberPagination -----------------------------


def _urlconf() -> str:
    """A URLconf with the real API under /api/ and the naive one under /naive/."""
    import django_filters
    from django.urls import include, path
    from django_filters.rest_framework import DjangoFilterBackend
    from rest_framework import pagination, permissions, routers, serializers, viewsets

    from trusthub_eval.models import Evaluation

    class NaivePagination(pagination.PageNumberPagination):
        page_size = PAGE_SIZE
        page_size_query_param = "page_size"

    class NaiveEvaluationSerializer(serializers.ModelSerializer[Evaluation]):
        class Meta:
            model = Evaluation
            fields = "__all__"

    class NaiveEvaluationFilter(django_filters.FilterSet):  # type: ignore[misc]
        failing_requirement = django_filters.CharFilter(method="filter_failing")

        class Meta:
            model = Evaluation
            fields = ["status", "state", "trigger", "customer_profile__sid", "policy__sid"]

        def filter_failing(self, queryset: Any, name: str, value: str) -> Any:
            # The join one writes first (one filter() call, so both conditions hold for the
            # same result row; two calls would match different rows).
            return queryset.filter(
                requirement_results__requirement_name=value, requirement_results__passed=False
            )

    class NaiveEvaluationViewSet(viewsets.ModelViewSet[Evaluation]):
        queryset = Evaluation.objects.all()  # ordered by Meta.ordering: -requested_at, -id
        serializer_class = NaiveEvaluationSerializer
        pagination_class = NaivePagination
        permission_classes = [permissions.DjangoModelPermissions]
        filter_backends = [DjangoFilterBackend]
        filterset_class = NaiveEvaluationFilter

    router = routers.SimpleRouter()
    router.register("evaluations", NaiveEvaluationViewSet, basename="naive-evaluation")
    module = types.ModuleType("bench_rest_urls")
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("api/", include("trusthub_eval.api.urls")),
        path("naive/", include(router.urls)),
    ]
    sys.modules[module.__name__] = module
    return module.__name__


# --- helpers ---------------------------------------------------------------------------------


def _bench_user() -> Any:
    """A consumer with the permissions the API asks for, not a superuser (which skips them)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user, _ = get_user_model().objects.get_or_create(username="bench")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="trusthub_eval"))
    return user


def _medians_ms(calls: list[Callable[[], Any]], repeat: int) -> list[float]:
    """The median time of each call, taking turns."""
    for call in calls:
        call()  # warm: the URL resolver, the serializer classes, PostgreSQL's cache
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for call, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            spent.append((time.perf_counter() - start) * 1000)
    return [statistics.median(spent) for spent in times]


def _queries(call: Callable[[], Any]) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        return 0.0


if __name__ == "__main__":
    main()
