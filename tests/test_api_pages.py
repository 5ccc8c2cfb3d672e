"""List pages: the serializers' output, a flat query budget, permissions read on every request."""

from __future__ import annotations

import datetime
import json
import re

import pytest
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext, override_script_prefix
from django.urls import include, path
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from tests.factories import PRIMARY_POLICY, STARTER_POLICY, client_for, make_profile, sid
from trusthub_eval.api import serializers
from trusthub_eval.models import CustomerProfile, Evaluation, Policy
from trusthub_eval.permissions import has_perms

pytestmark = pytest.mark.django_db

LIST_ENDPOINTS = ("/api/customer-profiles/", "/api/evaluations/", "/api/policies/")
THIS_MODULE = __name__


def permissions(*codenames: str) -> list[Permission]:
    found = list(
        Permission.objects.filter(content_type__app_label="trusthub_eval", codename__in=codenames)
    )
    assert len(found) == len(codenames)
    return found


def queries_for(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured)


# --- the same output as the serializers ------------------------------------------------------


def serialized(serializer_class, instances, url: str, user=None) -> list[dict]:
    """What the DRF serializer writes for ``instances`` (to ``user``), through the same JSON
    renderer."""
    request = Request(APIRequestFactory().get(url))
    if user is not None:
        request.user = user
    data = serializer_class(instances, many=True, context={"request": request}).data
    return json.loads(JSONRenderer().render(data))


def assert_same_rows(response, expected: list[dict]) -> None:
    assert response.status_code == 200, response.content
    rows = response.json()["results"]
    assert rows == expected
    # Key order too, so the JSON text is the serializer's.
    assert [list(row) for row in rows] == [list(row) for row in expected]


@pytest.fixture
def varied(django_user_model):
    """Rows with every kind of value a list shows: nulls, microseconds, other users, Unicode."""
    primary = Policy.objects.create(
        sid=PRIMARY_POLICY,
        friendly_name="Primary",
        requirements={"end_user": [{"name": "business_info", "fields": ["x"]}]},
        synced_at=timezone.now(),
    )
    Policy.objects.create(sid=STARTER_POLICY, friendly_name="Ünïcode starter", requirements=None)
    operator = django_user_model.objects.create_user("opérateur")
    evaluated = make_profile(
        primary,
        friendly_name="Acme",
        email="ops@example.com",
        status="twilio-approved",
        valid_until=timezone.now() + datetime.timedelta(days=365),
        date_created=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        compliance_status="noncompliant",
        failing_requirements=2,
    )
    CustomerProfile.objects.create(sid=sid("BU"), friendly_name="No policy, never evaluated")
    base = timezone.now().replace(microsecond=0)
    Evaluation.objects.create(
        customer_profile=evaluated,
        policy=primary,
        trigger="api",
        requested_by=operator,
        requested_at=base,  # no microseconds: isoformat leaves them out
    )
    Evaluation.objects.create(
        customer_profile=evaluated,
        policy=primary,
        sid=sid("EL"),
        trigger="schedule",
        state="completed",
        status="noncompliant",
        requested_at=base - datetime.timedelta(minutes=1, microseconds=123),
        started_at=base - datetime.timedelta(seconds=50),
        completed_at=base - datetime.timedelta(seconds=49, microseconds=999_999),
        date_created=base - datetime.timedelta(seconds=49),
        attempts=2,
    )
    Evaluation.objects.create(
        customer_profile=evaluated,
        policy=primary,
        trigger="cli",
        state="failed",
        requested_at=base - datetime.timedelta(hours=1),
        attempts=5,
        error_code=20429,
        error_message='Too many "concurrent" requests — retry ✓',
    )
    CustomerProfile.objects.refresh_latest()
    return evaluated


@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns", "Asia/Kathmandu"])
def test_every_list_writes_what_its_serializer_writes(api, reader, varied, zone):
    with override_settings(TIME_ZONE=zone):
        evaluations = Evaluation.objects.select_related(
            "customer_profile", "policy", "requested_by"
        ).order_by("-requested_at", "-id")
        url = "/api/evaluations/"
        expected = serialized(serializers.EvaluationSerializer, evaluations, url)
        assert_same_rows(api.get(url), expected)

        url = f"/api/customer-profiles/{varied.sid}/evaluations/"
        history = evaluations.filter(customer_profile=varied)
        expected = serialized(serializers.EvaluationSerializer, history, url)
        assert_same_rows(api.get(url), expected)

        profiles = CustomerProfile.objects.with_latest_evaluation().order_by("friendly_name", "sid")
        url = "/api/customer-profiles/"
        expected = serialized(serializers.CustomerProfileSerializer, profiles, url, reader)
        assert_same_rows(api.get(url), expected)

        policies = Policy.objects.order_by("friendly_name", "sid")
        url = "/api/policies/"
        assert_same_rows(api.get(url), serialized(serializers.PolicySerializer, policies, url))


class ZoneOfTheUser:
    """A host's middleware that activates each user's time zone (here Kathmandu's, +05:45)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with timezone.override("Asia/Kathmandu"):
            return self.get_response(request)


def test_a_zone_a_host_activates_per_request_is_written_as_the_serializer_writes(api, varied):
    middleware = [*settings.MIDDLEWARE, f"{THIS_MODULE}.ZoneOfTheUser"]
    with override_settings(TIME_ZONE="UTC", MIDDLEWARE=middleware):
        response = api.get("/api/evaluations/")
        with timezone.override("Asia/Kathmandu"):
            evaluations = Evaluation.objects.order_by("-requested_at", "-id")
            expected = serialized(
                serializers.EvaluationSerializer, evaluations, "/api/evaluations/"
            )
    assert_same_rows(response, expected)
    assert expected[0]["requested_at"].endswith("+05:45")


@pytest.mark.parametrize("micro", [0, 1, 999_999, 500_000], ids=["none", "one", "most", "half"])
def test_each_date_time_is_written_to_the_microsecond_as_the_serializer_writes(api, varied, micro):
    moment = datetime.datetime(1970, 1, 1, 0, 0, 7, micro, tzinfo=datetime.UTC)
    Evaluation.objects.update(requested_at=moment, started_at=None, date_created=moment)
    evaluations = Evaluation.objects.order_by("-requested_at", "-id")
    expected = serialized(serializers.EvaluationSerializer, evaluations, "/api/evaluations/")
    assert_same_rows(api.get("/api/evaluations/"), expected)
    assert expected[0]["requested_at"] == (
        "1970-01-01T00:00:07Z" if not micro else f"1970-01-01T00:00:07.{micro:06d}Z"
    )


def test_postgresql_writes_the_date_times_of_a_page_in_utc_and_no_other_database_does(varied):
    from trusthub_eval.api.rows import plan_for

    plan = plan_for(serializers.EvaluationSerializer)
    assert plan is not None
    on_postgresql = connection.vendor == "postgresql"
    assert plan.iso_times(connection.alias) is on_postgresql
    with timezone.override("Asia/Kathmandu"):
        assert not plan.iso_times(connection.alias)
    if on_postgresql:
        completed = Evaluation.objects.get(state="completed")
        (row,) = plan.select(Evaluation.objects.filter(pk=completed.pk), "requested_at", iso=True)
        field = serializers.EvaluationSerializer().fields["completed_at"]
        assert row.completed_at__iso == field.to_representation(completed.completed_at)
        # The pagination reads its position as the model's value.
        assert row.requested_at == completed.requested_at


def test_a_filtered_page_after_a_cursor_writes_what_the_serializer_writes(api, varied):
    first = api.get("/api/evaluations/?page_size=1&trigger=schedule&state=completed")
    assert first.status_code == 200
    expected = serialized(
        serializers.EvaluationSerializer,
        Evaluation.objects.filter(trigger="schedule"),
        "/api/evaluations/",
    )
    assert_same_rows(first, expected)
    page = api.get("/api/evaluations/?page_size=1")
    second = api.get(page.json()["next"])
    expected = serialized(
        serializers.EvaluationSerializer,
        Evaluation.objects.order_by("-requested_at", "-id")[1:2],
        "/api/evaluations/",
    )
    assert_same_rows(second, expected)


def test_a_host_datetime_format_is_followed_as_the_serializer_follows_it(api, varied):
    framework = {**settings.REST_FRAMEWORK, "DATETIME_FORMAT": "%d/%m/%Y %H:%M"}
    with override_settings(REST_FRAMEWORK=framework):
        evaluations = Evaluation.objects.order_by("-requested_at", "-id")
        expected = serialized(serializers.EvaluationSerializer, evaluations, "/api/evaluations/")
        assert_same_rows(api.get("/api/evaluations/"), expected)
        assert "/" in expected[0]["requested_at"]


@override_settings(ALLOWED_HOSTS=["testserver", "other.example"])
def test_each_request_gets_urls_under_its_own_host_script_prefix_and_format(api, varied):
    # The path part of a list's URLs is reversed once and kept: what a request brings (its
    # host, the prefix it is mounted under, DRF's ?format=) must still be its own.
    def urls(path: str, **extra: str) -> list[str]:
        response = api.get(path, **extra)
        assert response.status_code == 200, response.content
        return [row["url"] for row in response.json()["results"]]

    plain = urls("/api/policies/")
    sids = [url.rstrip("/").rsplit("/", 1)[1] for url in plain]
    assert plain == [f"http://testserver/api/policies/{sid}/" for sid in sids]
    # What Django's WSGI handler does for a request under SCRIPT_NAME (the test client does not).
    with override_script_prefix("/compliance/"):
        mounted = urls("/api/policies/", HTTP_HOST="other.example")
        history = urls(f"/api/customer-profiles/{varied.sid}/evaluations/")
    assert mounted == [f"http://other.example/compliance/api/policies/{sid}/" for sid in sids]
    assert history
    assert all(url.startswith("http://testserver/compliance/api/evaluations/") for url in history)
    assert urls("/api/policies/?format=json") == [f"{url}?format=json" for url in plain]
    assert urls("/api/policies/") == plain
    with override_settings(ROOT_URLCONF=THIS_MODULE):  # a host that mounts the API elsewhere
        assert urls("/compliance/api/policies/") == [
            f"http://testserver/compliance/api/policies/{sid}/" for sid in sids
        ]
    assert urls("/api/policies/") == plain


# A host's URLconf for the test above.
urlpatterns = [path("compliance/api/", include("trusthub_eval.api.urls"))]


# --- a query budget that does not grow --------------------------------------------------------


def fill(rows: int) -> CustomerProfile:
    """``rows`` evaluations (and as many profiles, each pointing at its latest), quickly."""
    policy = Policy.objects.for_sid(PRIMARY_POLICY)
    CustomerProfile.objects.bulk_create(
        CustomerProfile(sid=f"BU{i:032x}", friendly_name=f"P{i:05d}", policy=policy)
        for i in range(1, rows + 1)
    )
    profile_ids = list(CustomerProfile.objects.values_list("pk", flat=True))
    now = timezone.now()
    Evaluation.objects.bulk_create(
        Evaluation(
            customer_profile_id=profile_ids[i % len(profile_ids)] if i % 2 else profile_ids[0],
            policy=policy,
            trigger="schedule",
            state="completed",
            status="noncompliant",
            requested_at=now - datetime.timedelta(seconds=i),
        )
        for i in range(rows)
    )
    CustomerProfile.objects.refresh_latest()
    return CustomerProfile.objects.get(pk=profile_ids[0])


@pytest.mark.parametrize("rows", [10, 10_000])
def test_list_pages_cost_three_queries_whatever_the_sizes(api, rows):
    profile = fill(rows)
    history = f"/api/customer-profiles/{profile.sid}/evaluations/"
    counts = {
        (path, size): queries_for(api, f"{path}?page_size={size}")
        for path in (*LIST_ENDPOINTS, history)
        for size in (1, 50, 200)
    }
    filtered = (
        f"/api/evaluations/?page_size=100&status=noncompliant&policy={PRIMARY_POLICY}"
        f"&customer_profile={profile.sid}&failing_requirement=x&state=completed"
    )
    counts[("filtered", 100)] = queries_for(api, filtered)
    # The token with its user (1), the user's and groups' permissions (1), the page (1).
    assert set(counts.values()) == {3}, counts


@pytest.mark.parametrize("path", ["/api/evaluations/", "/api/customer-profiles/", "history"])
def test_pages_deep_into_a_list_cost_the_same_as_the_first(api, path):
    profile = fill(3_000)
    if path == "history":
        path = f"/api/customer-profiles/{profile.sid}/evaluations/"
    url, counts, pages = f"{path}?page_size=200", [], 0
    while url:
        with CaptureQueriesContext(connection) as captured:
            response = api.get(url)
        assert response.status_code == 200
        counts.append(len(captured))
        pages += 1
        url = response.json()["next"]
        last = response.json()
    assert pages >= 8
    # And back from the last page, by its previous link.
    assert queries_for(api, last["previous"]) == 3
    assert set(counts) == {3}, counts


def page_query(client: APIClient, url: str) -> str:
    """The SQL of the page's rows: the last query of the request."""
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return captured.captured_queries[-1]["sql"]


def test_a_column_read_alone_through_a_relation_is_a_subquery_and_filters_still_join(api):
    # A join per relation made PostgreSQL plan the page for longer than it ran it.
    profile = fill(3)
    table = '[`"]trusthub_eval_customerprofile[`"]'
    assert "JOIN" not in page_query(api, "/api/evaluations/")
    # The profile list joins the one relation it reads several columns through.
    joins = re.findall(r"JOIN ([`\"]\w+[`\"])", page_query(api, "/api/customer-profiles/"))
    assert [name.strip('`"') for name in joins] == ["trusthub_eval_evaluation"]
    # A filter on the column compares the profile's own column (its unique index), by a join.
    filtered = page_query(api, f"/api/evaluations/?customer_profile={profile.sid}")
    assert re.search(rf"JOIN {table} ON", filtered)
    assert re.search(rf"WHERE .*{table}\.[`\"]sid[`\"] = ", filtered)


# --- permissions: the host's backends, on every request ---------------------------------------


def test_a_revoked_permission_is_refused_on_the_next_request(api, reader):
    assert api.get("/api/evaluations/").status_code == 200
    reader.user_permissions.remove(*permissions("view_evaluation"))
    assert api.get("/api/evaluations/").status_code == 403
    assert api.get("/api/policies/").status_code == 200
    reader.user_permissions.add(*permissions("view_evaluation"))
    assert api.get("/api/evaluations/").status_code == 200


def test_group_permissions_count_and_their_revocation_too(django_user_model):
    user = django_user_model.objects.create_user("member")
    group = Group.objects.create(name="readers")
    group.permissions.add(*permissions("view_evaluation"))
    user.groups.add(group)
    client = client_for(user)
    assert client.get("/api/evaluations/").status_code == 200
    assert client.get("/api/policies/").status_code == 403
    group.permissions.remove(*permissions("view_evaluation"))
    assert client.get("/api/evaluations/").status_code == 403
    group.permissions.add(*permissions("view_evaluation"))
    assert client.get("/api/evaluations/").status_code == 200
    user.groups.remove(group)
    assert client.get("/api/evaluations/").status_code == 403


def test_a_deactivated_user_is_refused_on_the_next_request(api, reader):
    assert api.get("/api/evaluations/").status_code == 200
    reader.is_active = False
    reader.save()
    assert api.get("/api/evaluations/").status_code in (401, 403)


def test_revocation_counts_for_session_authentication_too(client, reader):
    client.force_login(reader)
    assert client.get("/api/evaluations/").status_code == 200
    reader.user_permissions.remove(*permissions("view_evaluation"))
    assert client.get("/api/evaluations/").status_code == 403


def test_session_users_get_their_permissions_in_one_query_too(client, reader):
    client.force_login(reader)
    # The session, its user, the permissions, the page.
    with CaptureQueriesContext(connection) as captured:
        assert client.get("/api/evaluations/").status_code == 200
    assert len(captured) == 4


def test_a_user_model_that_answers_itself_is_left_alone():
    class OwnRules:
        """A user model without PermissionsMixin: has_perms() is its own, no backend is asked."""

        is_authenticated = True
        is_active = True
        is_superuser = False

        def has_perms(self, perms):
            return list(perms) == ["trusthub_eval.view_policy"]

    user = OwnRules()
    with CaptureQueriesContext(connection) as captured:
        assert has_perms(user, ["trusthub_eval.view_policy"])
        assert not has_perms(user, ["trusthub_eval.view_evaluation"])
    assert not captured.captured_queries


def test_a_superuser_needs_no_permission_query(django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "x")
    assert queries_for(client_for(admin), "/api/evaluations/") == 2


ASKED = (
    "trusthub_eval.view_evaluation",
    "trusthub_eval.view_policy",
    "trusthub_eval.request_evaluation",
    "trusthub_eval.view_customerprofile",
    "auth.view_user",
    "nobody.has_this",
)


@pytest.mark.parametrize(
    "kind", ["own", "groups", "both", "none", "inactive", "superuser", "inactive superuser"]
)
def test_the_answers_are_model_backends_in_one_query(django_user_model, kind):
    user = django_user_model.objects.create_user(
        "mixed",
        is_active="inactive" not in kind,
        is_superuser="superuser" in kind,
    )
    if kind in ("own", "both", "inactive", "inactive superuser"):
        user.user_permissions.add(*permissions("view_evaluation", "view_policy"))
    if kind in ("groups", "both", "inactive"):
        group = Group.objects.create(name="mixed")
        group.permissions.add(*permissions("view_policy", "request_evaluation"))
        user.groups.add(group, Group.objects.create(name="empty"))
    asked = [[perm] for perm in ASKED]
    asked += [list(ASKED[:2]), list(ASKED[1:3]), list(ASKED[:3]), list(ASKED), []]
    fresh = django_user_model.objects.get(pk=user.pk)
    expected = [fresh.has_perms(perms) for perms in asked]
    ours = django_user_model.objects.get(pk=user.pk)
    with CaptureQueriesContext(connection) as captured:
        answers = [has_perms(ours, perms) for perms in asked]
    assert answers == expected
    assert len(captured) == (1 if kind in ("own", "groups", "both", "none") else 0)
    # And Django's own answers on the same object are unchanged by ours.
    assert [ours.has_perms(perms) for perms in asked] == expected


class GroupsDoNotCountBackend(ModelBackend):
    """A host's backend that reads permissions its own way: only the user's own count."""

    def _get_group_permissions(self, user_obj):
        return Permission.objects.none()


class CachesItsOwnWayBackend(ModelBackend):
    """A host's backend that answers without ModelBackend's cache."""

    def get_all_permissions(self, user_obj, obj=None):
        return {*self.get_user_permissions(user_obj), *self.get_group_permissions(user_obj)}


class RefusesNoOneBackend:
    """A backend that grants every permission to a user named "trusted", before ModelBackend."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user_obj, perm, obj=None):
        return user_obj.get_username() == "trusted"


class RefusesEveryoneBackend:
    """A backend that vetoes every permission, before ModelBackend."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user_obj, perm, obj=None):
        raise PermissionDenied


def member_of_readers(django_user_model, username: str):
    user = django_user_model.objects.create_user(username)
    group = Group.objects.create(name=f"readers of {username}")
    group.permissions.add(*permissions("view_evaluation"))
    user.groups.add(group)
    return user


@override_settings(AUTHENTICATION_BACKENDS=[f"{THIS_MODULE}.GroupsDoNotCountBackend"])
def test_a_backend_with_its_own_querysets_is_followed(django_user_model):
    client = client_for(member_of_readers(django_user_model, "member"))
    assert client.get("/api/evaluations/").status_code == 403
    own = django_user_model.objects.create_user("own")
    own.user_permissions.add(*permissions("view_evaluation"))
    assert queries_for(client_for(own), "/api/evaluations/") == 3


@override_settings(AUTHENTICATION_BACKENDS=[f"{THIS_MODULE}.CachesItsOwnWayBackend"])
def test_a_backend_that_caches_its_own_way_is_left_to_it(django_user_model):
    client = client_for(member_of_readers(django_user_model, "member"))
    # Its two queries, as it runs them: it is asked through user.has_perms().
    assert queries_for(client, "/api/evaluations/") == 4
    nobody = client_for(django_user_model.objects.create_user("nobody"))
    assert nobody.get("/api/evaluations/").status_code == 403


@override_settings(
    AUTHENTICATION_BACKENDS=[
        f"{THIS_MODULE}.RefusesNoOneBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
)
def test_other_backends_are_still_asked(django_user_model):
    trusted = django_user_model.objects.create_user("trusted")
    assert client_for(trusted).get("/api/evaluations/").status_code == 200
    member = client_for(member_of_readers(django_user_model, "member"))
    assert member.get("/api/evaluations/").status_code == 200
    assert member.get("/api/policies/").status_code == 403


@override_settings(
    AUTHENTICATION_BACKENDS=[
        f"{THIS_MODULE}.RefusesEveryoneBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
)
def test_a_backend_that_vetoes_still_vetoes(django_user_model):
    member = client_for(member_of_readers(django_user_model, "member"))
    assert member.get("/api/evaluations/").status_code == 403


@override_settings(
    AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.AllowAllUsersModelBackend"]
)
def test_django_backend_for_inactive_logins_reads_permissions_as_model_backend(django_user_model):
    member = member_of_readers(django_user_model, "member")
    client = client_for(member)
    assert queries_for(client, "/api/evaluations/") == 3
    assert client.get("/api/policies/").status_code == 403
