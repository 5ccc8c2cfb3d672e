"""The admin's pages checked with axe-core in Chromium, in the light and the dark theme.

axe-core (npm, pinned in package.json) runs its WCAG 2.x A/AA rules and best practices. Django's
own admin index passes them; every page this app adds must add no violation of its own. Parts of
the page that Django renders with its own templates and styles (header, breadcrumbs, navigation
sidebar, search box, filter sidebar) are Django's: violations there are listed in the output,
not counted against us.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.test_admin_browser import VIEW_ALL, log_in, staff
from tests.services import AXE_JS

pytestmark = [pytest.mark.browser, pytest.mark.axe, pytest.mark.django_db(transaction=True)]

# Each page as someone who may re-evaluate sees it: badges of every kind on striped rows, the
# timeline's links, the results and their diff, TrustHub's rejection errors, a profile's trust
# products, the confirmation pages.
PAGES = {
    "profiles": "/admin/trusthub_eval/customerprofile/",
    "profile": "/admin/trusthub_eval/customerprofile/{acme}/change/",
    "profile with a failure": "/admin/trusthub_eval/customerprofile/{stark}/change/",
    "profile with a noncompliant trust product": (
        "/admin/trusthub_eval/customerprofile/{umbrella}/change/"
    ),
    "trust products": "/admin/trusthub_eval/trustproduct/",
    "trust products of a profile": (
        "/admin/trusthub_eval/trustproduct/?customer_profile__id__exact={acme}"
    ),
    "trust product": "/admin/trusthub_eval/trustproduct/{product}/change/",
    "rejected trust product": "/admin/trusthub_eval/trustproduct/{rejected_product}/change/",
    "evaluations": "/admin/trusthub_eval/evaluation/",
    "evaluations, filtered": "/admin/trusthub_eval/evaluation/?state__exact=completed",
    "evaluations of trust products": (
        "/admin/trusthub_eval/evaluation/?kind=trust-product"
        "&trust_product__customer_profile__id__exact={umbrella}"
    ),
    "evaluation and diff": "/admin/trusthub_eval/evaluation/{regressed}/change/",
    "trust product's evaluation and diff": (
        "/admin/trusthub_eval/evaluation/{product_evaluation}/change/"
    ),
    "queue": "/admin/trusthub_eval/evaluation/health/",
    "policies": "/admin/trusthub_eval/policy/",
    "policy": "/admin/trusthub_eval/policy/{policy}/change/",
}
# The changelists whose bulk action leads to a confirmation page.
CONFIRMED = ("customerprofile", "trustproduct")


DJANGOS = "#header, .breadcrumbs, #nav-sidebar, #toggle-nav-sidebar, #toolbar, #changelist-filter"


def violations(page: Any, *, label: str = "") -> list[dict[str, Any]]:
    """axe-core's violations on the page as loaded that are ours: rule, impact, offending nodes.

    The ones in Django's own parts of the page are printed instead.
    """
    page.add_script_tag(path=str(AXE_JS))
    found: list[dict[str, Any]] = page.evaluate(
        """async (djangos) => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations.map(v => ({
                id: v.id,
                impact: v.impact,
                help: v.help,
                nodes: v.nodes.map(n => ({
                    target: n.target,
                    summary: n.failureSummary,
                    djangos: Boolean(document.querySelector(n.target[0])?.closest(djangos)),
                })),
            }));
        }""",
        DJANGOS,
    )
    ours = []
    for violation in found:
        nodes = [node for node in violation["nodes"] if not node["djangos"]]
        if len(nodes) < len(violation["nodes"]):
            print(f"Django's own, on {label}: {violation['id']} ({violation['help']})")
        if nodes:
            ours.append({**violation, "nodes": nodes})
    return ours


def describe(found: list[dict[str, Any]]) -> str:
    return json.dumps(found, indent=1)[:4000]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_admin_pages_add_no_accessibility_violations(page, live_server, history, theme):
    staff("operator", *VIEW_ALL, "view_trustproduct", "request_evaluation")
    log_in(page, live_server, "operator")
    page.emulate_media(color_scheme=theme)
    # The yardstick: Django's own index page passes, so whatever fails below is ours.
    page.goto(f"{live_server.url}/admin/")
    assert (baseline := violations(page, label="Django's index")) == [], describe(baseline)
    failures = {}
    for name, path in PAGES.items():
        page.goto(live_server.url + path.format(**history))
        found = violations(page, label=name)
        if found:
            failures[name] = found
    # The re-evaluation confirmation pages, reached as people reach them.
    for model in CONFIRMED:
        page.goto(f"{live_server.url}/admin/trusthub_eval/{model}/")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "reevaluate_selected")
        page.click("button[name=index]")
        page.wait_for_selector("form input[name=confirm]", state="attached")
        name = f"re-evaluate confirmation ({model})"
        found = violations(page, label=name)
        if found:
            failures[name] = found
    assert failures == {}, describe([{"page": k, "violations": v} for k, v in failures.items()])
