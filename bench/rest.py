"""Benchmark of the REST API on PostgreSQL: pages against a floor that does the same work by hand.

    python bench/rest.py                                      # 1,000,000 evaluations
    python bench/rest.py --evaluations 20000 --profiles 200   # quick mode
    python bench/rest.py --pages-only                         # without the bulk triggers
    python bench/rest.py --pages-only --compare 566c9de       # and that commit's API, in turns
    python bench/rest.py --pages-only --host-auth             # and the floor with DRF's token auth
    python bench/rest.py --pages-only --stack                 # and the floor behind DRF and Django

Each page is fetched through Django's full stack (middleware, token authentication, permission
checks, the view, JSON rendering) in this process, without a network, at several cursor depths
and page sizes. Beside it, the floor: the same request's work written by hand over a plain
psycopg connection (the token joined to its user, the user's and groups' permissions, the page's
rows with the same keys and links, json.dumps); with --host-auth, the same floor authenticating
with the host's DRF TokenAuthentication instead of its own token query; with --stack, the
floor's page by hand inside a DRF view that the request reaches through Django's middleware,
the host's authentication classes and the API's permission check (the least any view of the
app could cost); and for the evaluation lists the same page from a plain DRF ModelViewSet with
PageNumberPagination (what a user would write first). With --compare, another commit's API
serves the same pages from a second process, taking turns with this one and the floor request
by request. The bulk trigger really enqueues: Celery is not eager and the broker is kombu's
filesystem transport in a temporary directory, so messages are written and nothing runs them.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
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
    parser.add_argument("--pages-only", action="store_true", help="skip the bulk triggers")
    parser.add_argument(
        "--prepared",
        action="store_true",
        help="let Django's connection prepare statements (OPTIONS server_side_binding and "
        "prepare_threshold), as a host may",
    )
    parser.add_argument(
        "--compare",
        metavar="COMMIT",
        help="also time that commit's API on the same pages, taking turns (pages only)",
    )
    parser.add_argument(
        "--host-auth",
        action="store_true",
        help="also time the floor authenticating with the host's DRF TokenAuthentication (a "
        "request more in each turn, which leaves the others' caches colder)",
    )
    parser.add_argument(
        "--stack",
        action="store_true",
        help="also time the floor's page by hand behind the host's whole stack (Django's "
        "middleware, DRF's dispatch, the host's authentication, the API's permission check); "
        "not with --compare",
    )
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stack and args.compare:
        parser.error("--stack times the stack in this process: it does not go with --compare")
    replies = sys.stdout
    if args.serve:
        # The other side of --compare: the API (trusthub_eval, project) of the tree in DIR.
        # Its answers go to stdout, and nothing else may.
        sys.path.insert(0, args.serve)
        sys.stdout = sys.stderr

    args.database_url = args.database_url or dataset_database_url(
        evaluations=args.evaluations, profiles=args.profiles
    )
    # The other side of --compare finds the database loaded and migrated.
    setup_django(args.database_url, migrate=not args.serve)
    if not args.serve:
        started = time.monotonic()
        ensure_dataset(evaluations=args.evaluations, profiles=args.profiles)
        print(f"dataset ready in {time.monotonic() - started:.1f}s", flush=True)
    if args.prepared:
        from django.db import connection

        connection.close()
        options = connection.settings_dict.setdefault("OPTIONS", {})
        options.update(server_side_binding=True, prepare_threshold=5)
    if args.serve:
        serve(args, replies)
    else:
        Bench(args).run()


@dataclass
class Page:
    """One page to fetch: the API's URL, and what the floor needs to fetch the same rows."""

    label: str
    url: str  # without page_size and cursor; ends with "?" or "&"
    list: str  # "evaluations", "profiles" or "policies": which floor query
    where: str = ""  # the floor's conditions for the API's filters
    params: list[Any] = field(default_factory=list)
    naive_url: str | None = None
    sizes: tuple[int, ...] = (PAGE_SIZE,)
    cursor: str | None = None
    reverse: bool = False  # the cursor is a previous link's


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from django.conf import settings
        from django.test import Client
        from django.urls import clear_url_caches
        from rest_framework.authtoken.models import Token

        from trusthub_eval.models import CustomerProfile, Policy

        self.args = args
        self.rows: list[tuple[str, ...]] = []
        self.ratios: list[float] = []
        self.query_counts: set[int] = set()
        settings.ROOT_URLCONF = _urlconf()
        clear_url_caches()
        self.token = Token.objects.get_or_create(user=_bench_user())[0].key
        self.client = Client(HTTP_AUTHORIZATION=f"Token {self.token}", HTTP_HOST="127.0.0.1")
        self.policy = Policy.objects.get(pk=PRIMARY_POLICY_ID)
        # A profile in the middle of the dataset, with its full share of history.
        self.profile = CustomerProfile.objects.get(pk=args.profiles // 2)
        compare = getattr(args, "compare", None)
        # With --compare, this checkout's API is served by a child too (see Other).
        self.mine = Other(args, None) if compare else None
        self.other = Other(args, compare) if compare else None
        self.other_ratios: list[float] = []
        self.stack_ratios: list[float] = []

    def run(self) -> None:
        import psycopg
        from django.db import connection

        # Autocommit, as Django's connection is: each query its own transaction. The floor
        # prepares statements exactly when Django's connection does (by default it does not,
        # so every query is planned each time on both sides); the prepared floor always does,
        # as psycopg does by default from a query's fifth run.
        # It also binds parameters where Django's connection does: in the client (Django's
        # default, a psycopg ClientCursor) unless OPTIONS has server_side_binding.
        params = connection.get_connection_params()
        prepare = params.get("prepare_threshold")
        client_side = issubclass(params.get("cursor_factory", object), psycopg.ClientCursor)
        factory: Any = psycopg.ClientCursor if client_side else psycopg.Cursor
        url = self.args.database_url
        with (
            psycopg.connect(
                url, autocommit=True, prepare_threshold=prepare, cursor_factory=factory
            ) as raw,
            psycopg.connect(url, autocommit=True, prepare_threshold=5) as prepared,
        ):
            for page in self.pages():
                for size in page.sizes:
                    self.page(raw, prepared, page, size)
        if not self.args.pages_only:
            self.bulk(f"{min(100, self.args.profiles)} profiles by SID", self._sids(100))
            n = min(self.args.profiles, 10_000)
            self.bulk(f"{n:,} profiles by SID", self._sids(n))
            self.bulk(
                "every profile of a policy, by filter", {"filter": {"policy": self.policy.sid}}
            )
        self.report(connection)

    def pages(self) -> list[Page]:
        total, profile_sid, policy_sid = self.args.evaluations, self.profile.sid, self.policy.sid
        middle = total // 2
        pages = [
            Page(
                "evaluations/, newest",
                "/api/evaluations/?",
                "evaluations",
                naive_url="/naive/evaluations/?",
                sizes=(1, PAGE_SIZE, 200),
            )
        ]
        pages += [
            Page(
                f"evaluations/, after {depth:,} rows",
                "/api/evaluations/?",
                "evaluations",
                sizes=(PAGE_SIZE, 200) if depth == middle else (PAGE_SIZE,),
                cursor=self._evaluation_cursor("", [], depth),
            )
            for depth in sorted({10_000, middle, total - 100})
            if 0 < depth < total
        ]
        if middle > 0:
            pages.append(
                Page(
                    f"evaluations/, previous page from {middle:,} rows",
                    "/api/evaluations/?",
                    "evaluations",
                    cursor=self._evaluation_cursor("", [], middle, reverse=True),
                    reverse=True,
                )
            )
        history = f"/api/customer-profiles/{profile_sid}/evaluations/?"
        pages += [
            Page(
                "one profile's history",
                history,
                "evaluations",
                where="cp.sid = %s",
                params=[profile_sid],
                naive_url=f"/naive/evaluations/?customer_profile__sid={profile_sid}&",
            ),
            Page(
                "one profile's history, second page",
                history,
                "evaluations",
                where="cp.sid = %s",
                params=[profile_sid],
                cursor=self._evaluation_cursor("WHERE cp.sid = %s", [profile_sid], PAGE_SIZE),
            ),
            Page(
                "filtered (noncompliant + policy + failing requirement)",
                f"/api/evaluations/?status=noncompliant&policy={policy_sid}"
                f"&failing_requirement={FAILING_REQUIREMENT}&",
                "evaluations",
                where="e.status = 'noncompliant' AND p.sid = %s AND EXISTS (SELECT 1"
                " FROM trusthub_eval_requirementresult AS r WHERE r.evaluation_id = e.id"
                " AND r.requirement_name = %s AND NOT r.passed)",
                params=[policy_sid, FAILING_REQUIREMENT],
                naive_url=f"/naive/evaluations/?status=noncompliant&policy__sid={policy_sid}"
                f"&failing_requirement={FAILING_REQUIREMENT}&",
            ),
            Page("customer-profiles/, first", "/api/customer-profiles/?", "profiles"),
            Page(
                f"customer-profiles/, after {self.args.profiles // 2:,} rows",
                "/api/customer-profiles/?",
                "profiles",
                cursor=self._profile_cursor(self.args.profiles // 2),
            ),
            Page("policies/", "/api/policies/?", "policies"),
        ]
        return pages

    def _evaluation_cursor(
        self, where: str, params: list[Any], depth: int, *, reverse: bool = False
    ) -> str:
        """The API's cursor of the row ``depth`` rows in (newest first), found off the clock."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT e.requested_at, e.id FROM trusthub_eval_evaluation AS e"
                " JOIN trusthub_eval_customerprofile AS cp ON cp.id = e.customer_profile_id"
                f" {where} ORDER BY e.requested_at DESC, e.id DESC OFFSET %s LIMIT 1",
                [*params, depth if reverse else depth - 1],
            )
            requested_at, id_ = cursor.fetchone()
        return _cursor(reverse, [requested_at.isoformat(), str(id_)])

    def _profile_cursor(self, depth: int) -> str:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT friendly_name, sid FROM trusthub_eval_customerprofile"
                " ORDER BY friendly_name, sid OFFSET %s LIMIT 1",
                [depth - 1],
            )
            name, sid = cursor.fetchone()
        return _cursor(False, [name, sid])

    # --- measurements ---

    def get(self, url: str) -> Any:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.content[:500])
        return response

    def page(self, raw: Any, prepared: Any, page: Page, size: int) -> None:
        cursor = f"&cursor={page.cursor}" if page.cursor else ""
        url = f"{page.url}page_size={size}{cursor}"
        naive_url = page.naive_url and f"{page.naive_url}page_size={size}"
        floor = Floor(raw, self.token, page, size)
        prepared_floor = Floor(prepared, self.token, page, size)
        ours = self.get(url).json()["results"]
        expected = floor()
        assert ours, (page.label, url)
        key = floor.shape.key
        assert [row[key] for row in ours] == [row[key] for row in expected], page.label
        calls: list[Callable[[], Any]] = [lambda: self.get(url), floor, prepared_floor]
        if self.args.host_auth:
            calls.append(Floor(raw, self.token, page, size, authenticate=_host_authentication))
        if self.args.stack:
            # The stack's views write the page this floor writes.
            _stack_floor_class().floor = Floor(None, self.token, page, size)
            stack_url = f"/stack/{page.list}/"
            stacked = self.get(stack_url).json()["results"]
            assert [row[key] for row in stacked] == [row[key] for row in ours], page.label
            calls.append(lambda: self.get(stack_url))
        if self.mine is not None:
            mine = self.mine
            calls[0] = lambda: Measured(mine.call("time", url))
        if self.other is not None:
            other = self.other
            theirs = other.call("results", url)
            assert [row[key] for row in theirs] == [row[key] for row in ours], page.label
            calls.append(lambda: Measured(other.call("time", url)))
        if naive_url:
            naive = self.get(naive_url).json()["results"]
            assert [row["id"] for row in naive] == [row["id"] for row in expected], page.label
            calls.append(lambda: self.get(naive_url))
        # Interleaved, so that a noisy neighbour on a shared machine slows all of them alike.
        ours_ms, floor_ms, prepared_ms, *more_ms = _medians_ms(calls, self.args.repeat)
        host_columns: tuple[str, ...] = ()
        if self.args.host_auth:
            host_ms = more_ms.pop(0)
            host_columns = (f"{host_ms:.1f}", f"{ours_ms / host_ms:.1f}x")
        stack_columns: tuple[str, ...] = ()
        if self.args.stack:
            stack_ms = more_ms.pop(0)
            self.stack_ratios.append(ours_ms / stack_ms)
            stack_columns = (
                f"{stack_ms:.1f}",
                f"{stack_ms / floor_ms:.1f}x",
                f"{ours_ms / stack_ms:.2f}x",
            )
        other_columns: tuple[str, ...] = ()
        if self.other is not None:
            other_ms = more_ms.pop(0)
            self.other_ratios.append(other_ms / floor_ms)
            other_columns = (
                f"{other_ms:.1f}",
                str(self.other.call("queries", url)),
                f"{other_ms / floor_ms:.1f}x",
            )
        naive_ms = more_ms
        ours_q = _queries(lambda: self.get(url))
        naive_q = _queries(lambda: self.get(naive_url)) if naive_url else None
        ratio = ours_ms / floor_ms
        self.ratios.append(ratio)
        self.query_counts.add(ours_q)
        self.rows.append(
            (
                f"{page.label}, {size}",
                str(len(ours)),
                f"{ours_ms:.1f}",
                str(ours_q),
                f"{floor_ms:.1f}",
                f"{ratio:.1f}x",
                f"{prepared_ms:.1f}",
                f"{ours_ms / prepared_ms:.1f}x",
                *host_columns,
                *stack_columns,
                f"{naive_ms[0]:.1f}" if naive_ms else "",
                "" if naive_q is None else str(naive_q),
                *other_columns,
            )
        )
        print(
            f"  {page.label}, {size}: {ours_ms:.1f} ms, {ours_q} queries, floor {floor_ms:.1f} ms "
            f"({ratio:.1f}x), prepared floor {prepared_ms:.1f} ms ({ours_ms / prepared_ms:.1f}x)",
            flush=True,
        )

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
        # The rest of a bulk trigger's row is left blank (see report()).
        self.rows.append((label, "", f"{median:.0f}", str(max(counts))))
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
        options = connection.settings_dict.get("OPTIONS", {})
        print(
            "Django's connection: "
            + ("server-side binding, " if options.get("server_side_binding") else "")
            + (
                "prepared statements"
                if connection.get_connection_params().get("prepare_threshold") is not None
                else "no prepared statements (Django's default)"
            )
        )
        header: tuple[str, ...] = (
            "page, page_size",
            "rows",
            "ours ms",
            "queries",
            "floor ms",
            "ours/floor",
            "prepared floor ms",
            "ours/prepared",
            *(("host-auth floor ms", "ours/host-auth") if self.args.host_auth else ()),
            *(("stack floor ms", "stack/floor", "ours/stack") if self.args.stack else ()),
            "naive DRF ms",
            "naive queries",
        )
        if self.other is not None:
            commit = self.other.commit
            header += (f"{commit} ms", f"{commit} queries", f"{commit}/floor")
        rows = [row + ("",) * (len(header) - len(row)) for row in self.rows]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
        print(line)
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        print(
            f"pages: ours/floor {min(self.ratios):.1f}x to {max(self.ratios):.1f}x "
            f"(median {statistics.median(self.ratios):.1f}x); queries per page: "
            f"{', '.join(map(str, sorted(self.query_counts)))}"
        )
        if self.stack_ratios:
            ratios = self.stack_ratios
            print(
                f"pages: ours/stack floor {min(ratios):.2f}x to {max(ratios):.2f}x "
                f"(median {statistics.median(ratios):.2f}x)"
            )
        if self.other is not None:
            ratios = self.other_ratios
            print(
                f"pages of {self.other.commit}: its/floor {min(ratios):.1f}x to {max(ratios):.1f}x "
                f"(median {statistics.median(ratios):.1f}x)"
            )


# --- the floor: the same request's work by hand, over psycopg -------------------------------

# DRF's TokenAuthentication: the token with its user.
_AUTH_SQL = """
SELECT u.id, u.is_active, u.is_superuser
FROM authtoken_token AS t JOIN auth_user AS u ON u.id = t.user_id
WHERE t.key = %s
"""
# Django's ModelBackend: the user's own permissions and their groups'.
_PERMISSIONS_SQL = """
SELECT ct.app_label, p.codename
FROM auth_user_user_permissions AS up
JOIN auth_permission AS p ON p.id = up.permission_id
JOIN django_content_type AS ct ON ct.id = p.content_type_id
WHERE up.user_id = %s
UNION ALL
SELECT ct.app_label, p.codename
FROM auth_user_groups AS ug
JOIN auth_group_permissions AS gp ON gp.group_id = ug.group_id
JOIN auth_permission AS p ON p.id = gp.permission_id
JOIN django_content_type AS ct ON ct.id = p.content_type_id
WHERE ug.user_id = %s
"""
_EVALUATIONS_SQL = """
SELECT e.requested_at, e.id, e.sid, cp.sid, p.sid, e.status, e.state, e.trigger, u.username,
       e.started_at, e.completed_at, e.date_created, e.attempts, e.error_code, e.error_message
FROM trusthub_eval_evaluation AS e
JOIN trusthub_eval_customerprofile AS cp ON cp.id = e.customer_profile_id
JOIN trusthub_eval_policy AS p ON p.id = e.policy_id
LEFT JOIN auth_user AS u ON u.id = e.requested_by_id
{where}
ORDER BY e.requested_at {direction}, e.id {direction}
LIMIT %s
"""
_PROFILES_SQL = """
SELECT cp.friendly_name, cp.sid, cp.account_sid, cp.email, cp.status, p.sid, cp.valid_until,
       cp.date_created, cp.date_updated, cp.synced_at, cp.compliance_status,
       cp.compliance_checked_at, cp.failing_requirements,
       le.id, le.status, le.state, le.requested_at, le.completed_at
FROM trusthub_eval_customerprofile AS cp
LEFT JOIN trusthub_eval_policy AS p ON p.id = cp.policy_id
LEFT JOIN trusthub_eval_evaluation AS le ON le.id = cp.latest_evaluation_id
{where}
ORDER BY cp.friendly_name {direction}, cp.sid {direction}
LIMIT %s
"""
_POLICIES_SQL = """
SELECT friendly_name, sid, requirements, synced_at
FROM trusthub_eval_policy
{where}
ORDER BY friendly_name {direction}, sid {direction}
LIMIT %s
"""
_HOST = "http://127.0.0.1/api"


@dataclass(frozen=True)
class Shape:
    """A list as the floor reads it: its query (the ordering columns first) and its rows."""

    sql: str
    position: str  # the ordering columns, for a cursor's WHERE
    descending: bool
    write: Callable[[tuple[Any, ...]], dict[str, Any]]
    key: str  # what identifies a row, to check that both sides return the same rows
    permission: str


class Floor:
    """One page's request done by hand: what the API must do at least, with no framework."""

    def __init__(
        self,
        raw: Any,
        token: str,
        page: Page,
        size: int,
        *,
        authenticate: Callable[[str], tuple[Any, ...]] | None = None,
    ) -> None:
        self.raw, self.token, self.page, self.size = raw, token, page, size
        self.authenticate = authenticate
        self.shape = shape = _SHAPES[page.list]
        # The SQL of the page's shape is written once, as the API compiles its own once; the
        # cursor's values are read from it on every call, as the API reads them.
        conditions = [page.where] if page.where else []
        if page.cursor is not None:
            after = ">" if shape.descending == page.reverse else "<"
            conditions.append(f"{shape.position} {after} (%s, %s)")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        direction = "DESC" if shape.descending != page.reverse else "ASC"
        self.sql = shape.sql.format(where=where, direction=direction)

    def __call__(self) -> list[dict[str, Any]]:
        self.authorize()
        results, _body = self.respond(self.raw)
        return results

    def authorize(self) -> None:
        raw = self.raw
        if self.authenticate is not None:
            user = self.authenticate(self.token)
        else:
            user = raw.execute(_AUTH_SQL, [self.token]).fetchone()
        if user is None or not user[1]:
            raise PermissionError("no such token or an inactive user")
        if not user[2]:
            rows = raw.execute(_PERMISSIONS_SQL, [user[0], user[0]]).fetchall()
            if self.shape.permission not in {f"{app}.{codename}" for app, codename in rows}:
                raise PermissionError(self.shape.permission)

    def respond(self, raw: Any) -> tuple[list[dict[str, Any]], bytes]:
        """The page's rows over ``raw`` (a psycopg connection), and its JSON body."""
        position = []
        if self.page.cursor is not None:
            _reverse, position = json.loads(_uncursor(self.page.cursor))
        rows = raw.execute(self.sql, [*self.page.params, *position, self.size + 1]).fetchall()
        more = len(rows) > self.size
        rows = rows[: self.size]
        reverse = self.page.reverse
        if reverse:
            rows.reverse()
        results = [self.shape.write(row) for row in rows]
        link = f"{_HOST}{self.page.url[4:]}page_size={self.size}&cursor="
        first = [str(value) for value in rows[0][:2]] if rows else []
        last = [str(value) for value in rows[-1][:2]] if rows else []
        has_previous = more if reverse else self.page.cursor is not None
        body = {
            "next": link + _cursor(False, last) if reverse or more else None,
            "previous": link + _cursor(True, first) if has_previous else None,
            "results": results,
        }
        return results, json.dumps(body, default=_iso, separators=(",", ":")).encode()


def _evaluation_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[1],
        "url": f"{_HOST}/evaluations/{row[1]}/",
        "sid": row[2],
        "customer_profile": row[3],
        "policy": row[4],
        "status": row[5],
        "state": row[6],
        "trigger": row[7],
        "requested_by": row[8],
        "requested_at": row[0],
        "started_at": row[9],
        "completed_at": row[10],
        "date_created": row[11],
        "attempts": row[12],
        "error_code": row[13],
        "error_message": row[14],
    }


def _profile_row(row: tuple[Any, ...]) -> dict[str, Any]:
    sid = row[1]
    latest = None
    if row[13] is not None:
        latest = {
            "id": row[13],
            "url": f"{_HOST}/evaluations/{row[13]}/",
            "status": row[14],
            "state": row[15],
            "requested_at": row[16],
            "completed_at": row[17],
        }
    return {
        "url": f"{_HOST}/customer-profiles/{sid}/",
        "sid": sid,
        "account_sid": row[2],
        "friendly_name": row[0],
        "email": row[3],
        "status": row[4],
        "policy": row[5],
        "valid_until": row[6],
        "date_created": row[7],
        "date_updated": row[8],
        "synced_at": row[9],
        "compliance_status": row[10] or None,
        "compliance_checked_at": row[11],
        "failing_requirements": row[12],
        "latest_evaluation": latest,
        "evaluations_url": f"{_HOST}/customer-profiles/{sid}/evaluations/",
    }


def _policy_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "url": f"{_HOST}/policies/{row[1]}/",
        "sid": row[1],
        "friendly_name": row[0],
        "requirements": row[2],
        "synced_at": row[3],
    }


_SHAPES = {
    "evaluations": Shape(
        _EVALUATIONS_SQL,
        "(e.requested_at, e.id)",
        True,
        _evaluation_row,
        "id",
        "trusthub_eval.view_evaluation",
    ),
    "profiles": Shape(
        _PROFILES_SQL,
        "(cp.friendly_name, cp.sid)",
        False,
        _profile_row,
        "sid",
        "trusthub_eval.view_customerprofile",
    ),
    "policies": Shape(
        _POLICIES_SQL,
        "(friendly_name, sid)",
        False,
        _policy_row,
        "sid",
        "trusthub_eval.view_policy",
    ),
}


def _cursor(reverse: bool, position: list[str]) -> str:
    token = json.dumps([int(reverse), position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")


def _uncursor(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def _iso(value: Any) -> str:
    return str(value.isoformat())


# --- the naive API: a plain ModelViewSet with PageNumberPagination -----------------------------


def _urlconf() -> str:
    """A URLconf with the real API under /api/ and the naive one under /naive/."""
    import django_filters
    from django.urls import include, path
    from django_filters.rest_framework import DjangoFilterBackend
    from rest_framework import pagination, permissions, routers, serializers, viewsets

    from trusthub_eval.models import CustomerProfile, Evaluation, Policy

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
    # The stack floor's views, one per list.
    stacks = [
        path(
            f"stack/{name}/",
            _stack_floor_class().as_view(queryset=queryset),
        )
        for name, queryset in (
            ("evaluations", Evaluation.objects.all()),
            ("profiles", CustomerProfile.objects.all()),
            ("policies", Policy.objects.all()),
        )
    ]
    module = types.ModuleType("bench_rest_urls")
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("api/", include("trusthub_eval.api.urls")),
        path("naive/", include(router.urls)),
        *stacks,
    ]
    sys.modules[module.__name__] = module
    return module.__name__


@functools.cache
def _stack_floor_class() -> type[Any]:
    from django.db import connection
    from django.http import HttpResponse
    from rest_framework.request import Request
    from rest_framework.views import APIView

    from trusthub_eval.api.permissions import ModelPermissions

    class StackFloor(APIView):
        """The floor's page by hand, behind what every view of the API goes through.

        The request passes Django's handler and the host's middleware, DRF's dispatch and
        content negotiation, the host's DEFAULT_AUTHENTICATION_CLASSES and the API's
        permission check (one query, as the API's); then the floor's own page query and
        json.dumps on Django's connection, answered as bytes. No view of the app's own could
        cost less; what ours costs above it is the app's share.
        """

        permission_classes = [ModelPermissions]
        queryset: Any = None  # each list's, for the permission check's model (see _urlconf)
        floor: Floor | None = None  # set by Bench.page for the page being timed

        def get(self, request: Request) -> HttpResponse:
            assert self.floor is not None
            connection.ensure_connection()
            _results, body = self.floor.respond(connection.connection)
            return HttpResponse(body, content_type="application/json")

    return StackFloor


# --- --compare: another commit's API in a second process ------------------------------------


@dataclass(frozen=True)
class Measured:
    """A time the other process measured itself, in milliseconds."""

    ms: float


class Other:
    """An API served by this script in a child process (``--serve``), for ``--compare``.

    The child imports ``trusthub_eval`` and the example project from ``tree`` (this checkout,
    or another commit's tree extracted with ``git archive``) and everything else (Django, DRF,
    this bench's data) as this process does. With --compare both APIs are served this way, by
    children set up alike, and each child times its own requests: an API timed in this process,
    which also runs the floor and holds the results, measured a few per cent slower than the
    same code in a child. Each answers one request at a time, so the two APIs and the floor
    take turns request by request.
    """

    def __init__(self, args: argparse.Namespace, revision: str | None) -> None:
        root = Path(__file__).resolve().parent.parent
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if revision is None:
            self.commit, tree = "this checkout", str(root)
        else:
            self.commit = subprocess.run(
                ["git", "rev-parse", "--short", revision],
                cwd=root,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            self.tmp = tempfile.TemporaryDirectory(prefix="rest-bench-")
            tree = self.tmp.name
            archive = subprocess.run(
                ["git", "archive", "--format=tar", self.commit],
                cwd=root,
                check=True,
                capture_output=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(tree, filter="data")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            tree,
            "--database-url",
            args.database_url,
            "--evaluations",
            str(args.evaluations),
            "--profiles",
            str(args.profiles),
        ]
        if args.prepared:
            command.append("--prepared")
        # In the tree: Celery's Django fixup puts the working directory first on sys.path.
        self.process = subprocess.Popen(
            command, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def call(self, what: str, url: str) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps([what, url]) + "\n")
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the API of {self.commit} stopped answering")
        return json.loads(answer)


def serve(args: argparse.Namespace, replies: Any) -> None:
    """Answer ``[what, url]`` lines from stdin: a page's results, its time, its queries."""
    bench = Bench(args)
    for line in sys.stdin:
        what, url = json.loads(line)
        if what == "results":
            answer: Any = bench.get(url).json()["results"]
        elif what == "time":
            start = time.perf_counter()
            bench.get(url)
            answer = (time.perf_counter() - start) * 1000
        else:
            answer = _queries(functools.partial(bench.get, url))
        replies.write(json.dumps(answer) + "\n")
        replies.flush()


# --- helpers ---------------------------------------------------------------------------------


def _host_authentication(token: str) -> tuple[Any, ...]:
    """The token's user as the host's DRF ``TokenAuthentication`` finds it (on Django's
    connection): (id, is_active, is_superuser), as the floor's own token query returns them."""
    from rest_framework.authentication import TokenAuthentication

    user, _ = TokenAuthentication().authenticate_credentials(token)
    return user.pk, user.is_active, user.is_superuser


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
            result = call()
            elapsed = (time.perf_counter() - start) * 1000
            # The other process times its own request, without the round trip to it.
            spent.append(result.ms if isinstance(result, Measured) else elapsed)
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
