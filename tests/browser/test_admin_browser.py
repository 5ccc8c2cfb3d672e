"""The admin in a real browser against a live server and a separate worker process.

Screenshots go to test-artifacts/; with TRUSTHUB_UPDATE_SCREENSHOTS=1 the documented ones are
also copied to docs/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from tests.factories import ACME, STARK, UMBRELLA, sync_world
from tests.services import ROOT
from tests.worker import celery_worker
from trusthub_eval import sync
from trusthub_eval.models import CustomerProfile, Evaluation, TrustProduct

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = ROOT / "test-artifacts"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"


def screenshot(page: Any, name: str, *, docs: bool = False) -> Path:
    """Save ``name``.png in test-artifacts/, and in docs/screenshots/ when asked to update."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("TRUSTHUB_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SCREENSHOTS / f"{name}.png")
    return path


def reload_until(page: Any, ready: Callable[[], bool], *, what: str, log: Any = None) -> None:
    """Reload, as a person waiting for TrustHub's answer would, until ``ready()``."""
    deadline = time.monotonic() + 90
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log.tail if log else ''}")
        time.sleep(0.5)
        page.reload()


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="trusthub_eval", codename__in=codenames)
    )
    return user


def log_in(page: Any, live_server: Any, username: str, *, fold_navigation: bool = True) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    if fold_navigation:
        # Fold the admin's navigation sidebar (the admin remembers it), as people with wide
        # lists do.
        page.goto(f"{live_server.url}/admin/trusthub_eval/customerprofile/")
        page.click("#toggle-nav-sidebar")


def profile_url(live_server: Any, profile: CustomerProfile) -> str:
    return f"{live_server.url}/admin/trusthub_eval/customerprofile/{profile.pk}/change/"


VIEW_ALL = ("view_customerprofile", "view_trustproduct", "view_evaluation", "view_policy")


@pytest.mark.worker
def test_operator_reevaluates_and_watches_the_answer_arrive(
    page, live_server, sandbox, settings, tmp_path
):
    profiles = sync_world()
    sync.sync_trust_products()
    sync.sync_evaluations(profiles[ACME])
    acme = profiles[ACME]
    staff("operator", *VIEW_ALL, "request_evaluation")

    with celery_worker("filesystem", sandbox=sandbox, settings=settings, tmp_path=tmp_path) as w:
        log_in(page, live_server, "operator")

        # The list: latest compliance at a glance.
        page.goto(f"{live_server.url}/admin/trusthub_eval/customerprofile/")
        acme_row = page.locator("#result_list tr", has_text="Acme Anvils Inc.")
        assert acme_row.locator(".trusthub-badge.trusthub-compliant").is_visible()

        # The profile: its trust products, its history and the timeline picture.
        page.click("text=Acme Anvils Inc.")
        page.wait_for_url(profile_url(live_server, acme))
        assert page.locator("#trusthub-business tbody tr").count() == 1 + 3
        assert page.locator("#trusthub-history tbody tr").count() == 5
        timeline = page.locator("svg.trusthub-timeline")
        assert timeline.is_visible()
        assert timeline.locator("circle.tl-compliant").count() == 3
        assert timeline.locator("circle.tl-noncompliant").count() == 2

        # "Re-evaluate now", then reload until TrustHub's answer is on the page.
        page.click("button:has-text('Re-evaluate now')")
        page.wait_for_url(profile_url(live_server, acme))
        assert "queued" in page.locator("ul.messagelist").inner_text()
        newest = page.locator("#trusthub-history tbody tr").first
        assert "Admin" in newest.inner_text() and "operator" in newest.inner_text()
        reload_until(
            page,
            lambda: (
                "trusthub-state-completed"
                in (page.locator("#trusthub-history tbody tr").first.get_attribute("class") or "")
            ),
            what="the button's evaluation to complete",
            log=w,
        )
        assert page.locator("#trusthub-history tbody tr").count() == 6
        assert page.locator("svg.trusthub-timeline circle").count() == 6
        first_row = page.locator("#trusthub-history tbody tr").first.inner_text()
        assert "Compliant" in first_row and "operator" in first_row
        screenshot(page, "profile", docs=True)
        page.emulate_media(color_scheme="dark")
        screenshot(page, "profile-dark", docs=True)
        page.emulate_media(color_scheme="light")

        # An evaluation: results per requirement and what changed since the one before.
        history = list(acme.evaluations.order_by("requested_at"))
        regressed = history[2]  # both authorized representatives had been unassigned
        page.goto(f"{live_server.url}/admin/trusthub_eval/evaluation/{regressed.pk}/change/")
        assert page.locator(".trusthub-results tr.trusthub-failed").count() == 2
        diff = page.locator("#trusthub-diff")
        assert "2 newly failing" in diff.inner_text()
        assert (
            "Authorized Representative 1"
            in diff.locator("tbody.trusthub-diff-noncompliant").inner_text()
        )
        error_link = page.locator(".trusthub-results a.trusthub-error-code").first
        assert error_link.get_attribute("href").startswith("https://www.twilio.com/docs/errors/")
        assert not page.locator("details.trusthub-raw pre").is_visible()  # collapsed
        screenshot(page, "evaluation", docs=True)

        # The bulk action, through its confirmation page.
        page.goto(f"{live_server.url}/admin/trusthub_eval/customerprofile/")
        chosen = [profiles[UMBRELLA], profiles[STARK]]
        for profile in chosen:
            page.check(f"input.action-select[value='{profile.pk}']")
        page.select_option("select[name=action]", "reevaluate_selected")
        page.click("button[name=index]")
        assert "Ask TrustHub to evaluate these 2 customer profiles?" in page.inner_text(
            "#content-main"
        )
        screenshot(page, "reevaluate-confirmation", docs=True)
        page.click("input[type=submit][value='Yes, re-evaluate']")
        assert "Queued 2 evaluations." in page.locator("ul.messagelist").inner_text()

        # A trust product of Acme's, from the profile's page.
        page.goto(profile_url(live_server, acme))
        page.click("#trusthub-business a:has-text('A2P Messaging Profile')")
        page.click("button:has-text('Re-evaluate now')")
        assert "queued" in page.locator("ul.messagelist").inner_text()

        # Watch them arrive in the evaluation list.
        page.goto(f"{live_server.url}/admin/trusthub_eval/evaluation/?trigger__exact=admin")
        reload_until(
            page,
            lambda: (
                page.locator("#result_list tbody tr").count() == 4
                and "Queued" not in page.locator("#result_list tbody").inner_text()
                and "Running" not in page.locator("#result_list tbody").inner_text()
            ),
            what="the action's evaluations to complete",
            log=w,
        )
        screenshot(page, "evaluation-list", docs=True)

        # Back in the list of profiles, the new verdicts and their failing requirements.
        page.goto(f"{live_server.url}/admin/trusthub_eval/customerprofile/")
        stark_row = page.locator("#result_list tr", has_text="Stark Widgets")
        assert stark_row.locator(".trusthub-badge.trusthub-noncompliant").is_visible()
        assert stark_row.locator("td.field-failing").inner_text() != "-"
        screenshot(page, "profile-list", docs=True)

    queued = Evaluation.objects.filter(customer_profile__in=chosen, trigger="admin")
    assert {(e.state, e.requested_by.username) for e in queued} == {("completed", "operator")}
    product = Evaluation.objects.get(trust_product__isnull=False, trigger="admin")
    assert (product.trust_product.customer_profile, product.state) == (acme, "completed")
    assert "trusthub_eval.run_evaluation" in w.output


def test_without_the_permission_there_is_no_action_and_no_button(page, live_server, sandbox):
    profiles = sync_world()
    staff("viewer", *VIEW_ALL)
    log_in(page, live_server, "viewer")
    page.goto(f"{live_server.url}/admin/trusthub_eval/customerprofile/")
    assert page.locator("#result_list").is_visible()
    assert page.locator("select[name=action]").count() == 0
    assert page.locator("input.action-select").count() == 0
    page.goto(profile_url(live_server, profiles[UMBRELLA]))
    assert page.locator("#trusthub-history").is_visible()
    assert page.locator("button:has-text('Re-evaluate now')").count() == 0
    screenshot(page, "profile-view-only")
    assert not Evaluation.objects.exists()


def test_every_column_of_the_lists_shows_at_1400_px_beside_the_navigation(
    page, live_server, history
):
    # Someone who may re-evaluate: the lists of profiles have their checkbox column too.
    staff("operator", *VIEW_ALL, "request_evaluation")
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, live_server, "operator", fold_navigation=False)
    for changelist in ("customerprofile", "trustproduct", "evaluation"):
        page.goto(f"{live_server.url}/admin/trusthub_eval/{changelist}/")
        assert page.locator("#nav-sidebar").is_visible()
        assert page.locator("#changelist-filter").is_visible()
        frame = page.locator("#changelist .results").bounding_box()
        headers = page.locator("#result_list thead th")
        assert headers.count() >= 6
        for index in range(headers.count()):
            box = headers.nth(index).bounding_box()
            name = headers.nth(index).inner_text()
            assert box["x"] >= frame["x"] - 0.5, name
            assert box["x"] + box["width"] <= frame["x"] + frame["width"] + 0.5, name
        # Nothing hidden to scroll to either.
        assert page.evaluate(
            "() => { const r = document.querySelector('#changelist .results');"
            " return r.scrollWidth <= r.clientWidth; }"
        )
        screenshot(page, f"{changelist}-list-1400")


def test_a_trust_product_and_the_profile_it_is_built_on(page, live_server, history):
    staff("operator", *VIEW_ALL, "request_evaluation")
    log_in(page, live_server, "operator")

    # The profile's page: the profile and its trust product side by side.
    umbrella = (
        f"{live_server.url}/admin/trusthub_eval/customerprofile/{history['umbrella']}/change/"
    )
    page.goto(umbrella)
    rows = page.locator("#trusthub-business tbody tr")
    assert rows.count() == 2
    product_row = rows.nth(1)
    assert product_row.locator(".trusthub-badge.trusthub-noncompliant").is_visible()
    assert product_row.locator("ul.trusthub-fields li").count() > 0
    screenshot(page, "profile-trust-products", docs=True)

    # Its page, from there: history, timeline, the button, the profile it is built on.
    product = f"{live_server.url}/admin/trusthub_eval/trustproduct/{history['product']}/change/"
    product_row.locator("th a").click()
    page.wait_for_url(product)
    assert page.locator("#trusthub-history tbody tr").count() == 2
    assert page.locator("svg.trusthub-timeline circle.tl-noncompliant").count() == 2
    assert page.locator("button:has-text('Re-evaluate now')").is_visible()
    assert (
        page.locator(".field-customer_profile a")
        .get_attribute("href")
        .endswith(f"/customerprofile/{history['umbrella']}/change/")
    )
    screenshot(page, "trust-product", docs=True)

    # TrustHub's rejection errors, above the fields.
    rejected = history["rejected_product"]
    page.goto(f"{live_server.url}/admin/trusthub_eval/trustproduct/{rejected}/change/")
    errors = page.locator("#trusthub-errors")
    assert errors.is_visible()
    assert errors.locator("a.trusthub-error-code").inner_text() == "18601"
    screenshot(page, "trust-product-rejected")

    # The list of trust products, and the evaluations of those built on the profile.
    page.goto(f"{live_server.url}/admin/trusthub_eval/trustproduct/")
    assert page.locator("#result_list tbody tr").count() == TrustProduct.objects.count()
    screenshot(page, "trust-product-list", docs=True)
    page.goto(umbrella)
    page.click("text=Evaluations of these trust products")
    assert page.locator("#result_list tbody tr").count() == 2
    assert "Trust Product" in page.locator("#result_list tbody tr").first.inner_text()
