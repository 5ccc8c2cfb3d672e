"""The admin pages through Django's test client: what each shows, re-evaluation, permissions."""

from __future__ import annotations

import datetime
import html
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import JSONField, Value
from django.db.models.functions import Cast
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    ACME,
    HOOLI,
    INITECH,
    PRIMARY_POLICY,
    STARK,
    STARTER_POLICY,
    UMBRELLA,
    make_profile,
    sid,
    sync_world,
)
from trusthub_eval import queue, services, sync
from trusthub_eval.models import (
    CustomerProfile,
    DuplicateEvaluation,
    Evaluation,
    Policy,
    RequirementResult,
    TrustProduct,
)

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "twilio"

VIEW_ALL = ["view_customerprofile", "view_evaluation", "view_policy"]
ADDRESS_DOCUMENT = {
    "type": "customer_profile_address",
    "friendly_name": "Stark HQ address",
    "attributes": {"address_sids": ["AD" + "1" * 32]},
}


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="trusthub_eval", codename__in=codenames)
    )
    return user


def url(name: str, *args: object) -> str:
    return reverse(f"admin:trusthub_eval_{name}", args=args)


def evaluate(profile: CustomerProfile, **kwargs: object) -> Evaluation:
    """Request and run an evaluation against the sandbox, as a worker would."""
    evaluation, _ = services.request_evaluation(profile, trigger="cli", **kwargs)
    queue.run_evaluation(evaluation.pk)
    evaluation.refresh_from_db()
    return evaluation


def text(response) -> str:
    """The page's text without tags or extra whitespace, for assertions on what people read."""
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", response.content.decode(), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def message_texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def world(sandbox):
    """The sandbox's profiles and policies, with Acme's history of five evaluations imported."""
    profiles = sync_world()
    sync.sync_evaluations(profiles[ACME])
    return profiles


# --- customer profiles: the list ---------------------------------------------------------------


def test_profile_list_shows_the_columns_people_triage_by(admin_client, world):
    evaluate(world[INITECH])
    response = admin_client.get(url("customerprofile_changelist"))
    assert response.status_code == 200
    page = text(response)
    for header in (
        "Friendly name",
        "Customer profile SID",
        "TrustHub status",
        "Latest compliance",
        "Last evaluated",
        "Failing",
        "Policy",
    ):
        assert header in page
    rows = {
        profile.sid: row
        for profile in CustomerProfile.objects.all()
        for row in re.findall(r"<tr>.*?</tr>", response.content.decode(), flags=re.S)
        if profile.sid in row
    }
    assert "trusthub-compliant" in rows[ACME] and "icon-yes.svg" in rows[ACME]
    assert "Approved by Twilio" in rows[ACME]
    assert "trusthub-noncompliant" in rows[INITECH] and "icon-no.svg" in rows[INITECH]
    failing = world[INITECH].evaluations.get().requirement_results.failing().count()
    assert f'<td class="field-failing">{failing}</td>' in rows[INITECH]
    assert "Not evaluated" in rows[STARK]
    assert '<td class="field-failing">-</td>' in rows[STARK]


def test_profile_list_marks_a_profile_with_an_evaluation_in_flight(admin_client, world):
    services.request_evaluation(world[UMBRELLA], trigger="cli")
    response = admin_client.get(url("customerprofile_changelist"))
    row = next(
        r
        for r in re.findall(r"<tr>.*?</tr>", response.content.decode(), flags=re.S)
        if UMBRELLA in r
    )
    assert "trusthub-in-flight" in row and "An evaluation is Queued" in row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=draft", {INITECH, "BUb163d766c1893a7e21bdf7fe506755f2"}),
        ("compliance=compliant", {ACME}),
        ("compliance=noncompliant", {INITECH}),
        ("q=BU0c94a6739989d2d0335a3cf9fc125bde", {INITECH}),
        ("q=umbrella", {UMBRELLA}),
        ("q=compliance@acme.example", {ACME}),
    ],
)
def test_profile_list_filters_and_search(admin_client, world, query, expected):
    evaluate(world[INITECH])
    response = admin_client.get(url("customerprofile_changelist") + "?" + query)
    assert response.status_code == 200
    shown = {p.sid for p in response.context["cl"].result_list}
    assert shown == expected


def test_profile_list_filters_on_policy_and_never_evaluated(admin_client, world):
    starter = Policy.objects.get(sid=STARTER_POLICY)
    response = admin_client.get(
        url("customerprofile_changelist") + f"?policy__id__exact={starter.pk}"
    )
    shown = {p.sid for p in response.context["cl"].result_list}
    assert shown == set(starter.customer_profiles.values_list("sid", flat=True))
    assert HOOLI in shown and ACME not in shown
    response = admin_client.get(url("customerprofile_changelist") + "?compliance=none")
    shown = {p.sid for p in response.context["cl"].result_list}
    assert ACME not in shown and STARK in shown


# --- customer profiles: the page ---------------------------------------------------------------


def test_profile_page_shows_history_newest_first_and_the_timeline(admin_client, world):
    acme = world[ACME]
    response = admin_client.get(url("customerprofile_change", acme.pk))
    assert response.status_code == 200
    body = response.content.decode()
    history = response.context["history"]
    assert len(history) == 5
    assert [e.requested_at for e in history] == sorted(
        (e.requested_at for e in history), reverse=True
    )
    # The third evaluation of Acme's history failed both authorized representatives.
    assert [e.failing_count for e in history] == [0, 0, 2, 0, 1]
    for evaluation in history:
        assert url("evaluation_change", evaluation.pk) in body
    svg = re.search(r"<svg class=\"trusthub-timeline\".*?</svg>", body, flags=re.S)
    assert svg is not None
    assert svg.group(0).count("<circle") == 5
    assert svg.group(0).count("tl-compliant") == 3
    assert svg.group(0).count("tl-noncompliant") == 2
    assert "<script" not in body.split('id="trusthub-timeline"')[1].split("</svg>")[0]


def test_profile_page_history_is_bounded_and_links_to_all(admin_client, world):
    profile = world[STARK]
    policy = profile.policy
    start = timezone.now() - datetime.timedelta(days=60)
    Evaluation.objects.bulk_create(
        Evaluation(
            customer_profile=profile,
            policy=policy,
            trigger="schedule",
            state="completed",
            status="noncompliant" if i % 2 else "compliant",
            requested_at=start + datetime.timedelta(days=i),
            completed_at=start + datetime.timedelta(days=i, seconds=3),
        )
        for i in range(25)
    )
    response = admin_client.get(url("customerprofile_change", profile.pk))
    assert len(response.context["history"]) == 20
    assert response.context["history"][0].requested_at == start + datetime.timedelta(days=24)
    assert "Showing the latest 20 evaluations" in text(response)
    all_url = response.context["history_url"]
    listing = admin_client.get(all_url)
    assert listing.status_code == 200
    assert {e.customer_profile_id for e in listing.context["cl"].result_list} == {profile.pk}
    assert len(listing.context["cl"].result_list) == 25
    # The timeline shows them all (fewer than its bound).
    assert response.content.decode().count("<circle") == 25


def test_profile_page_of_a_never_evaluated_profile(admin_client, world):
    response = admin_client.get(url("customerprofile_change", world[STARK].pk))
    assert "This customer profile has not been evaluated yet." in text(response)
    assert "No finished evaluations yet." in text(response)


def test_profile_page_is_read_only(admin_client, world):
    change = url("customerprofile_change", world[ACME].pk)
    response = admin_client.get(change)
    assert 'name="_save"' not in response.content.decode()
    assert "Delete" not in text(response)
    before = CustomerProfile.objects.get(pk=world[ACME].pk).friendly_name
    response = admin_client.post(change, {"friendly_name": "Hacked"})
    assert response.status_code == 403
    assert CustomerProfile.objects.get(pk=world[ACME].pk).friendly_name == before
    assert admin_client.get(url("customerprofile_add")).status_code == 403


def test_profile_page_escapes_what_trusthub_sent(admin_client, world):
    profile = world[UMBRELLA]
    CustomerProfile.objects.filter(pk=profile.pk).update(
        friendly_name='<img src=x onerror="alert(1)">',
        raw={"friendly_name": "<script>alert(2)</script>"},
    )
    body = admin_client.get(url("customerprofile_change", profile.pk)).content.decode()
    assert "<img src=x" not in body and "<script>alert(2)" not in body
    assert "&lt;img src=x" in body and "&lt;script&gt;alert(2)" in body


# --- the re-evaluate button --------------------------------------------------------------------


def test_reevaluate_button_posts_with_csrf_to_the_reevaluate_view(admin_client, world):
    body = admin_client.get(url("customerprofile_change", world[UMBRELLA].pk)).content.decode()
    form = re.search(
        r'<form method="post" action="([^"]+)" class="trusthub-reevaluate">(.*?)</form>', body, re.S
    )
    assert form is not None
    assert form.group(1) == url("customerprofile_reevaluate", world[UMBRELLA].pk)
    assert 'name="csrfmiddlewaretoken"' in form.group(2)
    assert "Re-evaluate now" in form.group(2)


def test_reevaluate_button_queues_one_and_then_says_it_is_in_flight(client, world):
    user = staff("operator", *VIEW_ALL, "request_evaluation")
    client.force_login(user)
    profile = world[UMBRELLA]
    target = url("customerprofile_reevaluate", profile.pk)

    response = client.post(target)
    assert response.status_code == 302
    assert response["Location"] == url("customerprofile_change", profile.pk)
    evaluation = Evaluation.objects.get(customer_profile=profile)
    assert (evaluation.trigger, evaluation.requested_by, evaluation.state) == (
        "admin",
        user,
        "queued",
    )
    assert any("queued" in m for m in message_texts(response))

    response = client.post(target, follow=True)
    assert Evaluation.objects.filter(customer_profile=profile).count() == 1
    page = text(response)
    assert "already in flight (Queued)" in page
    assert str(evaluation) in page


def test_reevaluate_view_runs_the_evaluation_once_the_request_commits(
    admin_client, world, django_capture_on_commit_callbacks
):
    profile = world[UMBRELLA]
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url("customerprofile_reevaluate", profile.pk))
    evaluation = Evaluation.objects.get(customer_profile=profile)
    assert evaluation.state == "completed" and evaluation.status == "noncompliant"
    response = admin_client.get(url("customerprofile_change", profile.pk))
    assert response.context["history"][0].pk == evaluation.pk
    assert response.content.decode().count("<circle") == 1


def test_reevaluate_view_only_answers_post(admin_client, world):
    response = admin_client.get(url("customerprofile_reevaluate", world[ACME].pk))
    assert response.status_code == 405
    assert not Evaluation.objects.filter(trigger="admin").exists()


def test_reevaluate_of_a_profile_without_policy_says_why(admin_client, world):
    profile = make_profile(friendly_name="Orphan")
    CustomerProfile.objects.filter(pk=profile.pk).update(policy=None)
    response = admin_client.post(url("customerprofile_reevaluate", profile.pk), follow=True)
    assert "Orphan has no policy to be evaluated against." in text(response)
    assert not Evaluation.objects.filter(customer_profile=profile).exists()


def test_reevaluate_of_an_unknown_profile_is_404(admin_client, world):
    assert admin_client.post(url("customerprofile_reevaluate", 999999)).status_code == 404


def test_without_the_permission_reevaluate_says_403_whether_the_profile_exists_or_not(
    client, world
):
    client.force_login(staff("viewer", *VIEW_ALL))
    assert client.post(url("customerprofile_reevaluate", 999999)).status_code == 403
    assert client.post(url("customerprofile_reevaluate", world[UMBRELLA].pk)).status_code == 403


def test_without_the_permission_there_is_no_button_and_the_view_refuses(client, world):
    client.force_login(staff("viewer", *VIEW_ALL))
    profile = world[UMBRELLA]
    body = client.get(url("customerprofile_change", profile.pk)).content.decode()
    assert "Re-evaluate now" not in body
    assert "trusthub-reevaluate" not in body
    assert client.post(url("customerprofile_reevaluate", profile.pk)).status_code == 403
    assert not Evaluation.objects.filter(customer_profile=profile).exists()


def test_requesting_also_needs_to_see_evaluations_as_in_the_api(client, world):
    # The API's rule (trusthub_eval.permissions): the permission is not enough without seeing
    # the evaluation it makes.
    client.force_login(staff("no-evaluations", "view_customerprofile", "request_evaluation"))
    profile = world[UMBRELLA]
    body = client.get(url("customerprofile_change", profile.pk)).content.decode()
    assert "Re-evaluate now" not in body
    assert client.post(url("customerprofile_reevaluate", profile.pk)).status_code == 403
    changelist = client.get(url("customerprofile_changelist")).content.decode()
    assert "reevaluate_selected" not in changelist
    assert not Evaluation.objects.filter(customer_profile=profile).exists()


def test_without_view_evaluation_the_profile_page_shows_no_evaluation_history(client, world):
    acme = world[ACME]
    evaluate(acme, requested_by=staff("requester", *VIEW_ALL))
    client.force_login(staff("profiles-only", "view_customerprofile"))
    response = client.get(url("customerprofile_change", acme.pk))
    assert response.status_code == 200
    body, page = response.content.decode(), text(response)
    # What the API's profile shows stays: the latest verdict.
    assert "Latest compliance: Compliant" in page
    assert "Evaluation history" not in page and "Compliance over time" not in page
    assert "requester" not in page
    for evaluation in acme.evaluations.all():
        assert url("evaluation_change", evaluation.pk) not in body
        assert evaluation.sid not in body
    assert url("evaluation_changelist") not in body
    assert "historylink" not in body


def test_with_view_evaluation_history_opens_the_profiles_evaluations(client, world):
    acme = world[ACME]
    evaluate(acme, requested_by=staff("requester", *VIEW_ALL))
    client.force_login(staff("viewer", "view_customerprofile", "view_evaluation"))
    response = client.get(url("customerprofile_change", acme.pk))
    body, page = response.content.decode(), text(response)
    assert "Evaluation history" in page and "requester" in page
    assert len(response.context["history"]) == 6
    # "History" beside "Re-evaluate now" is the evaluations, not Django's (empty) change log.
    link = re.search(r'<a href="([^"]+)" class="historylink"', body)
    assert link is not None
    assert url("customerprofile_history", acme.pk) not in body
    listing = client.get(html.unescape(link.group(1)))
    assert listing.status_code == 200
    shown = listing.context["cl"].result_list
    assert {e.pk for e in shown} == set(acme.evaluations.values_list("pk", flat=True))


def test_the_other_pages_link_to_no_empty_change_log(admin_client, world):
    evaluation = world[ACME].evaluations.first()
    policy = Policy.objects.get(sid=PRIMARY_POLICY)
    for name, pk in (("evaluation", evaluation.pk), ("policy", policy.pk)):
        body = admin_client.get(url(f"{name}_change", pk)).content.decode()
        assert url(f"{name}_history", pk) not in body


def test_anonymous_users_are_sent_to_the_login_page(client, world):
    response = client.post(url("customerprofile_reevaluate", world[ACME].pk))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not Evaluation.objects.filter(trigger="admin").exists()


# --- the bulk action ---------------------------------------------------------------------------


def action_post(ids, *, select_across=False, **extra):
    return {
        "action": "reevaluate_selected",
        "_selected_action": [str(pk) for pk in ids],
        "select_across": "1" if select_across else "0",
        **extra,
    }


def test_action_asks_for_confirmation_before_queueing(admin_client, world):
    chosen = [world[UMBRELLA], world[STARK]]
    response = admin_client.post(
        url("customerprofile_changelist"), action_post([p.pk for p in chosen], index="0")
    )
    assert response.status_code == 200
    assert response.templates[0].name == "trusthub_eval/admin/reevaluate_confirmation.html"
    page = text(response)
    assert "Ask TrustHub to evaluate these 2 customer profiles?" in page
    for profile in chosen:
        assert profile.sid in page
    assert "Each one's own policy" in page
    assert not Evaluation.objects.filter(trigger="admin").exists()
    body = response.content.decode()
    for profile in chosen:
        assert f'name="_selected_action" value="{profile.pk}"' in body
    assert 'name="confirm"' in body and 'name="csrfmiddlewaretoken"' in body


def test_action_confirmed_queues_and_reports_in_flight(client, world):
    user = staff("operator", *VIEW_ALL, "request_evaluation")
    client.force_login(user)
    services.request_evaluation(world[STARK], trigger="cli")  # already in flight
    ids = [world[UMBRELLA].pk, world[STARK].pk, world[INITECH].pk]
    response = client.post(
        url("customerprofile_changelist"), action_post(ids, confirm="yes", policy=""), follow=True
    )
    assert response.status_code == 200
    assert "Queued 2 evaluations. 1 was already in flight." in text(response)
    queued = Evaluation.objects.filter(trigger="admin")
    assert set(queued.values_list("customer_profile__sid", flat=True)) == {UMBRELLA, INITECH}
    assert set(queued.values_list("requested_by", flat=True)) == {user.pk}
    assert set(queued.values_list("policy__sid", flat=True)) == {PRIMARY_POLICY}


def test_action_can_evaluate_against_a_chosen_policy(admin_client, world):
    starter = Policy.objects.get(sid=STARTER_POLICY)
    ids = [world[UMBRELLA].pk, world[ACME].pk]
    admin_client.post(
        url("customerprofile_changelist"),
        action_post(ids, confirm="yes", policy=str(starter.pk)),
    )
    queued = Evaluation.objects.filter(trigger="admin")
    assert queued.count() == 2
    assert set(queued.values_list("policy", flat=True)) == {starter.pk}


def test_action_with_an_invalid_policy_shows_the_confirmation_again(admin_client, world):
    response = admin_client.post(
        url("customerprofile_changelist"),
        action_post([world[UMBRELLA].pk], confirm="yes", policy="999999"),
    )
    assert response.status_code == 200
    assert "Select a valid choice" in text(response)
    assert not Evaluation.objects.filter(trigger="admin").exists()


def test_action_select_all_queues_every_matching_profile_in_a_few_queries(admin_client, world):
    for i in range(300):
        make_profile(friendly_name=f"Bulk {i:03}")
    matching = CustomerProfile.objects.filter(friendly_name__startswith="Bulk")
    page_ids = list(matching.values_list("pk", flat=True)[:100])
    changelist = url("customerprofile_changelist") + "?q=Bulk"
    response = admin_client.post(changelist, action_post(page_ids, select_across=True, index="0"))
    assert "Ask TrustHub to evaluate these 300 customer profiles?" in text(response)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(
            changelist, action_post(page_ids, select_across=True, confirm="yes", policy="")
        )
    assert response.status_code == 302
    # Only the filtered profiles (the search), not the seven others.
    assert Evaluation.objects.filter(trigger="admin").count() == 300
    assert (
        not Evaluation.objects.filter(trigger="admin")
        .exclude(customer_profile__in=matching)
        .exists()
    )
    # No query per profile: SQLite inserts in batches of its variable limit, PostgreSQL in one.
    assert len(queries) < 40, [q["sql"][:120] for q in queries]
    follow = admin_client.get(response["Location"])
    assert "Queued 300 evaluations." in text(follow)


def test_a_page_never_lists_more_rows_than_its_form_can_send_back(
    admin_client, world, settings, monkeypatch
):
    from django.contrib import admin

    # A host that shows long pages, and a low limit so that the test stays small.
    profile_admin = admin.site._registry[CustomerProfile]
    monkeypatch.setattr(profile_admin, "list_per_page", 5000)
    monkeypatch.setattr(profile_admin, "list_max_show_all", 5000)
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 60
    for i in range(100):
        make_profile(friendly_name=f"Many {i:03}")
    changelist = url("customerprofile_changelist") + "?q=Many"
    shown = list(admin_client.get(changelist).context["cl"].result_list)
    assert len(shown) == 40  # the limit, less room for the form's other fields
    ids = [profile.pk for profile in shown]
    # Every row of the page selected by hand: the confirmation, then the evaluations.
    response = admin_client.post(changelist, action_post(ids, index="0"))
    assert response.status_code == 200
    assert "Ask TrustHub to evaluate these 40 customer profiles?" in text(response)
    response = admin_client.post(changelist, action_post(ids, confirm="yes", policy=""))
    assert response.status_code == 302
    assert Evaluation.objects.filter(trigger="admin").count() == 40
    # A page of 60 would have been refused by Django itself, before any view ran.
    all_ids = CustomerProfile.objects.values_list("pk", flat=True)[:60]
    assert admin_client.post(changelist, action_post(all_ids, index="0")).status_code == 400


def test_action_is_offered_only_with_the_permission(client, world):
    client.force_login(staff("viewer", *VIEW_ALL))
    response = client.get(url("customerprofile_changelist"))
    assert "reevaluate_selected" not in response.content.decode()
    assert 'name="action"' not in response.content.decode()
    response = client.post(
        url("customerprofile_changelist"),
        action_post([world[UMBRELLA].pk], confirm="yes", policy=""),
        follow=True,
    )
    assert not Evaluation.objects.filter(trigger="admin").exists()


def test_action_is_offered_with_the_permission(client, world):
    client.force_login(staff("operator", *VIEW_ALL, "request_evaluation"))
    body = client.get(url("customerprofile_changelist")).content.decode()
    assert (
        '<option value="reevaluate_selected">Re-evaluate selected customer profiles</option>'
        in body
    )


@pytest.mark.parametrize("model", [CustomerProfile, TrustProduct])
def test_action_on_records_without_a_policy_says_nothing_was_queued(admin_client, world, model):
    orphan = model.objects.create(sid=sid("BU"), friendly_name="Orphan")
    response = admin_client.post(
        url(f"{model._meta.model_name}_changelist"),
        action_post([orphan.pk], confirm="yes", policy=""),
        follow=True,
    )
    page = text(response)
    assert "Nothing was queued" in page
    assert f"none of the selected {model._meta.verbose_name_plural} has a policy" in page


# --- evaluations -------------------------------------------------------------------------------


def test_evaluation_list_shows_who_what_when_and_how_long(admin_client, world):
    user = User.objects.get(username="admin")
    mine = evaluate(world[UMBRELLA], requested_by=user)
    response = admin_client.get(url("evaluation_changelist"))
    assert response.status_code == 200
    thead = response.content.decode().split('id="result_list"')[1].split("</thead>")[0]
    headers = [
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", header)).split())
        for header in re.findall(r"<th scope=\"col\".*?</th>", thead, re.S)
    ]
    assert headers == [
        "Evaluation",
        "What was evaluated",
        "Compliance",
        "Requested by",
        "Requested at",
        "Duration",
    ]
    row = next(
        r
        for r in re.findall(r"<tr>.*?</tr>", response.content.decode(), flags=re.S)
        if str(mine) in r
    )
    assert url("customerprofile_change", world[UMBRELLA].pk) in row
    assert str(world[UMBRELLA].policy) in row
    # The badge tells the state when there is no verdict; a verdict means it completed.
    assert "Noncompliant" in row
    assert 'admin<div class="trusthub-quiet">Command line</div>' in row
    assert re.search(r'<td class="field-duration">\d+(\.\d)? (ms|s)</td>', row)


def test_duration_is_the_time_it_ran_and_the_time_queued_is_shown_as_waited(admin_client, world):
    requested = timezone.now() - datetime.timedelta(hours=1)
    evaluation = Evaluation.objects.create(
        customer_profile=world[UMBRELLA],
        policy=world[UMBRELLA].policy,
        trigger="schedule",
        state="completed",
        status="noncompliant",
        requested_at=requested,
        started_at=requested + datetime.timedelta(minutes=10),
        completed_at=requested + datetime.timedelta(minutes=10, seconds=2),
    )
    page = text(admin_client.get(url("evaluation_change", evaluation.pk)))
    assert "Duration: 2.0 s" in page
    assert "Waited: 10 min 0 s" in page
    listing = admin_client.get(url("evaluation_changelist")).content.decode()
    row = next(r for r in re.findall(r"<tr>.*?</tr>", listing, flags=re.S) if str(evaluation) in r)
    assert '<td class="field-duration">2.0 s</td>' in row
    history = admin_client.get(url("customerprofile_change", world[UMBRELLA].pk)).content.decode()
    assert '<td class="nowrap">2.0 s</td>' in history.split('id="trusthub-history"')[1]


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("status__exact=compliant", 3),
        ("status__exact=noncompliant", 3),
        ("state__exact=completed", 6),
        ("state__exact=queued", 1),
        ("trigger__exact=sync", 5),
        ("trigger__exact=cli", 2),
        (f"q={ACME}", 5),
        (f"q={INITECH}", 2),
        ("q=initech", 2),
        ("requested_at__year=2025", 5),
        ("requested_at__year=2025&requested_at__month=3", 1),
    ],
)
def test_evaluation_list_filters_and_search(admin_client, world, query, count):
    evaluate(world[INITECH])
    services.request_evaluation(world[INITECH], trigger="cli")  # queued, not run
    response = admin_client.get(url("evaluation_changelist") + "?" + query)
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == count


def test_evaluation_list_filters_on_policy_and_searches_an_evaluation_sid(admin_client, world):
    starter = Policy.objects.get(sid=STARTER_POLICY)
    hooli = evaluate(world[HOOLI])
    response = admin_client.get(url("evaluation_changelist") + f"?policy__id__exact={starter.pk}")
    assert [e.pk for e in response.context["cl"].result_list] == [hooli.pk]
    response = admin_client.get(url("evaluation_changelist") + f"?q={hooli.sid}")
    assert [e.pk for e in response.context["cl"].result_list] == [hooli.pk]
    response = admin_client.get(url("evaluation_changelist") + f"?q=%23{hooli.pk}")
    assert [e.pk for e in response.context["cl"].result_list] == [hooli.pk]
    response = admin_client.get(url("evaluation_changelist") + "?q=" + "9" * 30)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize(
    "query",
    [
        "q=%C2%B2",  # "²": a digit to str.isdigit(), none to int()
        "q=%23%C2%B2",
        "q=%D9%A3",  # "٣", an Arabic-Indic three: int() reads it, no id is written so
        "requested_at__year=%C2%B2",
        "requested_at__year=%D9%A2%D9%A0%D9%A2%D9%A5",
        "requested_at__year=2025&requested_at__month=%C2%B2",
    ],
)
def test_evaluation_list_takes_digits_that_are_not_ascii(admin_client, query):
    evaluation = Evaluation.objects.create(
        customer_profile=make_profile(friendly_name="Numbered"),
        policy=Policy.objects.for_sid(PRIMARY_POLICY),
        trigger="cli",
    )
    Evaluation.objects.filter(pk=evaluation.pk).update(id=3)
    response = admin_client.get(url("evaluation_changelist") + "?" + query)
    assert response.status_code in (200, 302)
    if response.status_code == 200 and query.startswith("q="):
        assert list(response.context["cl"].result_list) == []


def test_evaluation_page_shows_results_per_requirement(admin_client, world):
    evaluation = evaluate(world[INITECH])
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    assert response.status_code == 200
    body = response.content.decode()
    failing = evaluation.requirement_results.failing()
    assert failing.exists()
    assert f"{failing.count()} of {evaluation.requirement_results.count()} requirements failed" in (
        text(response)
    )
    for result in evaluation.requirement_results.all():
        assert html.escape(result.requirement_friendly_name or result.requirement_name) in body
    first_failing = failing.first()
    assert first_failing.failure_reason in text(response)
    assert f'href="https://www.twilio.com/docs/errors/{first_failing.error_code}"' in body
    assert body.count('class="trusthub-failed"') == failing.count()
    # Invalid fields of a failed requirement, each with its own linked code.
    with_fields = next(r for r in failing if r.invalid)
    field = with_fields.invalid[0]
    assert f"<code>{field['object_field']}</code>" in body
    assert f'href="https://www.twilio.com/docs/errors/{field["error_code"]}"' in body
    # The raw payload, collapsed.
    assert '<details class="trusthub-raw">' in body
    assert "<summary>TrustHub's answer (JSON)</summary>" in body
    assert html.escape(f'"sid": "{evaluation.sid}"', quote=True) in body


def test_evaluation_page_diffs_against_the_previous_one_of_the_same_profile_and_policy(
    admin_client, world, sandbox
):
    stark = world[STARK]
    before = evaluate(stark)
    assert before.status == "noncompliant"
    response = admin_client.get(url("evaluation_change", before.pk))
    assert response.context["diff"] is None
    assert "This is the first completed evaluation" in text(response)

    sandbox.set_assigned_items(STARK, supporting_documents=[ADDRESS_DOCUMENT], merge=True)
    after = evaluate(stark)
    response = admin_client.get(url("evaluation_change", after.pk))
    diff = response.context["diff"]
    fixed = set(before.requirement_results.failing().values_list("requirement_name", flat=True))
    now_failing = set(
        after.requirement_results.failing().values_list("requirement_name", flat=True)
    )
    assert {c.name for c in diff.fixed} == fixed - now_failing
    assert "customer_profile_address" in {c.name for c in diff.fixed}
    assert {c.name for c in diff.newly_failing} == now_failing - fixed
    assert response.context["previous"].pk == before.pk
    page = text(response)
    assert f"{len(diff.fixed)} fixed" in page
    assert url("evaluation_change", before.pk) in response.content.decode()


def test_evaluation_diff_skips_other_policies_and_unfinished_evaluations(admin_client, world):
    acme = world[ACME]
    newest = acme.evaluations.order_by("-requested_at").first()
    starter = Policy.objects.get(sid=STARTER_POLICY)
    # Between Acme's two newest: one against another policy, one that failed.
    second = acme.evaluations.order_by("-requested_at")[1]
    between = second.requested_at + (newest.requested_at - second.requested_at) / 2
    for policy, state in ((starter, "completed"), (acme.policy, "failed")):
        Evaluation.objects.create(
            customer_profile=acme,
            policy=policy,
            trigger="cli",
            state=state,
            status="noncompliant" if state == "completed" else None,
            requested_at=between,
        )
    response = admin_client.get(url("evaluation_change", newest.pk))
    assert response.context["previous"].pk == second.pk


def test_acme_history_diff_names_the_representatives_that_went_missing(admin_client, world):
    history = list(world[ACME].evaluations.order_by("requested_at"))
    response = admin_client.get(url("evaluation_change", history[2].pk))
    diff = response.context["diff"]
    assert {c.name for c in diff.newly_failing} == {
        "authorized_representative_1",
        "authorized_representative_2",
    }
    assert not diff.fixed
    response = admin_client.get(url("evaluation_change", history[3].pk))
    assert {c.name for c in response.context["diff"].fixed} == {
        "authorized_representative_1",
        "authorized_representative_2",
    }


def test_evaluation_page_of_a_queued_and_of_a_failed_evaluation(admin_client, world, sandbox):
    queued, _ = services.request_evaluation(world[UMBRELLA], trigger="cli")
    response = admin_client.get(url("evaluation_change", queued.pk))
    assert "Waiting for TrustHub's answer" in text(response)
    unknown = make_profile(friendly_name="Unknown to TrustHub")
    failed = evaluate(unknown)
    assert failed.state == "failed"
    response = admin_client.get(url("evaluation_change", failed.pk))
    assert 'href="https://www.twilio.com/docs/errors/20404"' in response.content.decode()
    assert "failed before TrustHub gave an answer" in text(response)
    # The evaluation failed, not the profile's compliance.
    assert "Compliance: Evaluation failed" in text(response)
    assert "Compliance: Failed" not in text(response)
    history = admin_client.get(url("customerprofile_change", unknown.pk))
    row = history.content.decode().split('class="trusthub-state-failed"')[1].split("</tr>")[0]
    assert "Evaluation failed" in row


def test_evaluation_page_escapes_results(admin_client, world):
    evaluation = evaluate(world[INITECH])
    RequirementResult.objects.filter(evaluation=evaluation, passed=False).update(
        failure_reason="<script>alert(1)</script>",
        invalid=[{"friendly_name": "<b>x</b>", "object_field": "<i>", "error_code": "<u>"}],
    )
    body = admin_client.get(url("evaluation_change", evaluation.pk)).content.decode()
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)" in body
    assert "<b>x</b>" not in body and "&lt;b&gt;x&lt;/b&gt;" in body
    assert "<u>" not in body


def test_evaluation_pages_are_read_only(admin_client, world):
    evaluation = evaluate(world[UMBRELLA])
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    assert 'name="_save"' not in response.content.decode()
    assert admin_client.post(url("evaluation_change", evaluation.pk), {}).status_code == 403
    assert (
        admin_client.post(url("evaluation_delete", evaluation.pk), {"post": "yes"}).status_code
        == 403
    )
    assert Evaluation.objects.filter(pk=evaluation.pk).exists()


# --- policies ----------------------------------------------------------------------------------


def test_policy_list_and_page_render_requirements_readably(admin_client, world):
    response = admin_client.get(url("policy_changelist"))
    assert response.status_code == 200
    page = text(response)
    assert "Primary Customer Profile of type Business" in page
    assert PRIMARY_POLICY in page
    policy = Policy.objects.get(sid=PRIMARY_POLICY)
    response = admin_client.get(url("policy_change", policy.pk))
    page = text(response)
    assert "End-user types" in page
    assert "Business Information" in page
    assert "business_registration_number" in page
    assert "Supporting documents" in page
    assert "Any one of these documents: Physical Business Address customer_profile_address" in page
    assert "address_sids" in page
    assert '<details class="trusthub-raw">' in response.content.decode()
    assert admin_client.post(url("policy_change", policy.pk), {}).status_code == 403


def test_a_placeholder_policy_says_it_has_not_been_described(admin_client, world):
    placeholder = Policy.objects.for_sid("RN" + "0" * 32)
    response = admin_client.get(url("policy_change", placeholder.pk))
    assert "TrustHub has not described this policy's requirements" in text(response)


def test_a_user_with_view_permissions_sees_every_page(client, world):
    client.force_login(staff("viewer", *VIEW_ALL))
    evaluation = evaluate(world[UMBRELLA])
    policy = Policy.objects.get(sid=PRIMARY_POLICY)
    for page in (
        url("customerprofile_changelist"),
        url("customerprofile_change", world[UMBRELLA].pk),
        url("evaluation_changelist"),
        url("evaluation_change", evaluation.pk),
        url("policy_changelist"),
        url("policy_change", policy.pk),
    ):
        assert client.get(page).status_code == 200, page


def test_a_staff_user_without_view_permissions_sees_nothing(client, world):
    client.force_login(staff("nobody"))
    assert client.get(url("customerprofile_changelist")).status_code == 403
    assert client.get(url("customerprofile_change", world[ACME].pk)).status_code == 403


# --- bad input in the query string ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changelist", "query"),
    [
        ("customerprofile_changelist", "?status=%00"),
        ("customerprofile_changelist", "?compliance=%00"),
        ("customerprofile_changelist", "?q=%00"),
        ("customerprofile_changelist", "?policy__id__exact=%00"),
        ("evaluation_changelist", "?status__exact=%00"),
        ("evaluation_changelist", "?state__exact=a%00b"),
        ("evaluation_changelist", "?trigger__exact=%00"),
        ("evaluation_changelist", "?q=%00"),
        ("evaluation_changelist", "?q=BU%00"),
        ("evaluation_changelist", "?requested_at__year=%00"),
        ("evaluation_changelist", "?customer_profile__id__exact=%00"),
        ("policy_changelist", "?q=%00"),
    ],
)
def test_a_nul_character_in_a_filter_is_a_clean_answer_not_a_500(
    admin_client, world, changelist, query
):
    # PostgreSQL refuses NUL in text; the admin's answer to a bad filter is its "?e=1" page.
    response = admin_client.get(url(changelist) + query)
    assert response.status_code in (200, 302, 400)
    if response.status_code == 302:
        assert response["Location"].endswith("?e=1")
        assert admin_client.get(response["Location"]).status_code == 200


# --- throttling ----------------------------------------------------------------------------------


@pytest.fixture
def one_trigger_a_minute(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"trusthub_eval_trigger": "1/minute"},
    }


def test_the_button_and_the_action_are_throttled_like_the_api(client, world, one_trigger_a_minute):
    from rest_framework.authtoken.models import Token

    user = staff("operator", *VIEW_ALL, "request_evaluation")
    client.force_login(user)
    umbrella, initech = world[UMBRELLA], world[INITECH]
    # The one request of the minute, made through the API.
    token = Token.objects.create(user=user)
    api = client.post(
        f"/api/customer-profiles/{umbrella.sid}/evaluations/",
        {},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert api.status_code == 202
    # The admin counts against the same rate, for the same user.
    response = client.post(url("customerprofile_reevaluate", initech.pk), follow=True)
    assert any("Too many evaluation requests" in m for m in message_texts(response))
    response = client.post(
        url("customerprofile_changelist"),
        action_post([initech.pk], confirm="yes", policy=""),
        follow=True,
    )
    assert any("Too many evaluation requests" in m for m in message_texts(response))
    assert not Evaluation.objects.filter(customer_profile=initech).exists()
    # Another user has a count of their own.
    client.force_login(staff("colleague", *VIEW_ALL, "request_evaluation"))
    client.post(url("customerprofile_reevaluate", initech.pk))
    assert Evaluation.objects.filter(customer_profile=initech, trigger="admin").count() == 1


# --- whatever TrustHub sent, the page renders ----------------------------------------------------


def test_a_result_whose_invalid_fields_are_sparse_completes_and_renders(admin_client, sandbox):
    profile = sync_world()[UMBRELLA]
    answer = json.loads((FIXTURES / "evaluation_create.json").read_text())
    answer["customer_profile_sid"] = profile.sid
    answer["policy_sid"] = profile.policy.sid
    answer["results"][0]["invalid"] = [{"friendly_name": "Business"}, {}, {"object_field": "x"}]
    sandbox.add_fault(
        method="POST",
        path=f"/v1/CustomerProfiles/{UMBRELLA}/Evaluations$",
        after_processing=True,
        body=json.dumps(answer),
    )
    evaluation = evaluate(profile)
    assert evaluation.state == "completed"
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    assert response.status_code == 200
    assert "Business" in text(response)


@pytest.mark.parametrize(
    "invalid",
    [[{}], [{"friendly_name": "Business"}], ["business_name"], [1, None], {"a": 1}, "x"],
    ids=["empty-object", "name-only", "string", "scalars", "object", "text"],
)
def test_the_evaluation_page_renders_whatever_was_stored(admin_client, invalid):
    """Rows stored before the answer's items were checked, or by hand."""
    profile = make_profile()
    evaluation = Evaluation.objects.create(
        customer_profile=profile,
        policy=profile.policy,
        trigger="cli",
        state="completed",
        status="noncompliant",
        sid="EL" + "e" * 32,
    )
    RequirementResult.objects.create(
        evaluation=evaluation,
        position=0,
        requirement_name="business_information",
        passed=False,
        invalid=invalid,
    )
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    assert response.status_code == 200


def test_a_never_evaluated_profile_shows_no_count_of_failing_requirements(admin_client, world):
    profile = world[UMBRELLA]
    page = text(admin_client.get(url("customerprofile_change", profile.pk)))
    assert re.search(r"Failing: -", page)
    evaluate(profile)
    page = text(admin_client.get(url("customerprofile_change", profile.pk)))
    assert re.search(r"Failing: [1-9]", page)


def test_a_payload_nested_deeper_than_python_decodes_leaves_every_page_working(admin_client, world):
    acme = world[ACME]
    newest, previous = acme.evaluations.order_by("-requested_at")[:2]
    duplicate = DuplicateEvaluation.objects.create(
        sid="EL" + "d" * 32, evaluation=newest, customer_profile=acme, policy=acme.policy
    )
    # Written as JSON text: Python's own encoder gives up long before this depth.
    deep = "[" * 1500 + '"deep"' + "]" * 1500
    try:
        with transaction.atomic():
            for model, pks in (
                (Evaluation, [newest.pk, previous.pk]),
                (CustomerProfile, [acme.pk]),
                (DuplicateEvaluation, [duplicate.pk]),
            ):
                model.objects.filter(pk__in=pks).update(raw=Cast(Value(deep), JSONField()))
    except (IntegrityError, OperationalError) as refused:
        pytest.skip(f"this database stores no JSON nested this deep: {refused}")
    for page in (
        url("evaluation_change", previous.pk),
        url("evaluation_change", newest.pk),  # compared with the previous one
        url("customerprofile_change", acme.pk),  # its latest evaluation, history, timeline
        url("duplicateevaluation_change", duplicate.pk),
        url("evaluation_changelist"),
        url("customerprofile_changelist"),
    ):
        response = admin_client.get(page)
        assert response.status_code == 200, page
    # Shown as stored, escaped.
    body = admin_client.get(url("evaluation_change", newest.pk)).content.decode()
    assert "[" * 1500 + "&quot;deep&quot;" + "]" * 1500 in body


def test_a_huge_payload_is_shown_in_part_and_said_so(admin_client, world):
    evaluation = world[ACME].evaluations.first()
    Evaluation.objects.filter(pk=evaluation.pk).update(raw=["x" * 300_000, "THE END"])
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    assert response.status_code == 200
    assert "THE END" not in response.content.decode()
    assert re.search(r"The first 100,000 of 300,\d{3} characters", text(response))


def test_no_page_reads_a_payload_it_does_not_show(admin_client, world):
    acme = world[ACME]
    response = admin_client.get(url("customerprofile_change", acme.pk))
    profile = response.context["original"]
    # Its own payload is shown, read as text; the others are not shown at all.
    assert "raw" in profile.get_deferred_fields()
    assert "raw" in profile.latest_evaluation.get_deferred_fields()
    assert {"raw", "requirements"} <= profile.policy.get_deferred_fields()
    assert response.context["history"]
    for row in response.context["history"]:
        assert "raw" in row.get_deferred_fields()

    newest = acme.evaluations.order_by("-requested_at").first()
    response = admin_client.get(url("evaluation_change", newest.pk))
    evaluation = response.context["original"]
    assert "raw" in evaluation.get_deferred_fields()
    assert "raw" in evaluation.customer_profile.get_deferred_fields()
    assert {"raw", "requirements"} <= evaluation.policy.get_deferred_fields()
    assert "raw" in response.context["previous"].get_deferred_fields()

    for changelist in ("customerprofile_changelist", "evaluation_changelist"):
        rows = admin_client.get(url(changelist)).context["cl"].result_list
        assert rows
        for row in rows:
            assert "raw" in row.get_deferred_fields()
