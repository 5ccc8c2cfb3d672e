"""The admin of trust products, beside their profiles: their list and page, re-evaluation and
its permission, each profile's page with its trust products, TrustHub's rejection errors, and
the evaluations' list by kind and record. TrustHub is the sandbox serving the demo world."""

from __future__ import annotations

import datetime
import html
import re

import pytest
from django.utils import timezone

from tests.factories import ACME, STARK, UMBRELLA, bulk_evaluations, sync_world
from tests.test_admin import action_post, evaluate, message_texts, staff, text, url
from trusthub_eval import services, sync
from trusthub_eval.admin import evaluation as evaluation_admin
from trusthub_eval.models import (
    CustomerProfile,
    DuplicateEvaluation,
    Evaluation,
    Policy,
    TrustProduct,
)

pytestmark = pytest.mark.django_db

ACME_A2P = "BUb65649846535a13c146877e5d89a1eb4"  # compliant, built on Acme
ACME_SHAKEN = "BU27bc8b809723129776f79802c6ea05eb"
ACME_CNAM = "BUdd03e2e1a5c812328ed55e6d23848155"
UMBRELLA_A2P = "BU2e0e704ccf062d8b699b4e174a246d65"  # noncompliant: no company type
STARK_CNAM = "BU2d498b49f35d4585f8faab7b4008339c"  # rejected by Twilio, errors [18601]
VIEW_PRODUCTS = ("view_trustproduct", "view_evaluation", "view_policy")
VIEW_EVERYTHING = ("view_customerprofile", *VIEW_PRODUCTS)
REJECTION_ERROR_LINK = 'href="https://www.twilio.com/docs/errors/18601"'


@pytest.fixture
def products(sandbox) -> dict[str, TrustProduct]:
    """The sandbox's profiles and trust products; the products by SID."""
    sync_world()
    sync.sync_trust_products()
    return {p.sid: p for p in TrustProduct.objects.select_related("policy", "customer_profile")}


def rows(response) -> dict[str, str]:
    """The changelist's rows by the SID each shows."""
    body = response.content.decode()
    found = {}
    for row in re.findall(r"<tr>.*?</tr>", body, flags=re.S):
        sid = re.search(r"BU[0-9a-f]{32}", row)
        if sid:
            found[sid.group(0)] = row
    return found


def section(response, name: str) -> str:
    """The HTML of the page's section ``id="trusthub-{name}"``."""
    body = response.content.decode()
    return body.split(f'id="trusthub-{name}"')[1].split('<div class="module')[0]


# --- the trust products' list ------------------------------------------------------------------


def labelled(page: str, model, name: str, value: str) -> bool:
    """Whether ``page`` shows ``model``'s field ``name`` read-only with ``value``: its label,
    then its help text where the admin writes it there (Django 6.1, which also writes no colon
    after the label), then the value."""
    field = model._meta.get_field(name)
    label = re.escape(str(field.verbose_name).capitalize())
    help_text = re.escape(str(field.help_text))
    return re.search(rf"{label}:? (?:{help_text} )?{re.escape(value)}", page) is not None


def test_trust_product_list_shows_each_with_its_verdict_and_profile(admin_client, products):
    evaluate(products[ACME_A2P])
    evaluate(products[UMBRELLA_A2P])
    response = admin_client.get(url("trustproduct_changelist"))
    assert response.status_code == 200
    page = text(response)
    for header in ("Trust product SID", "Latest compliance", "Failing", "Customer profile"):
        assert header in page
    listed = rows(response)
    assert set(listed) == set(products)
    assert "trusthub-compliant" in listed[ACME_A2P]
    assert "trusthub-noncompliant" in listed[UMBRELLA_A2P]
    assert "Not evaluated" in listed[ACME_SHAKEN]
    assert "Acme Anvils Inc." in listed[ACME_A2P]
    assert "Rejected by Twilio" in listed[STARK_CNAM]
    assert url("trustproduct_change", products[ACME_A2P].pk) in listed[ACME_A2P]


def test_trust_product_list_filters_by_profile_and_finds_a_profiles_sid(admin_client, products):
    acme = CustomerProfile.objects.get(sid=ACME)
    mine = {ACME_A2P, ACME_SHAKEN, ACME_CNAM}
    response = admin_client.get(
        url("trustproduct_changelist") + f"?customer_profile__id__exact={acme.pk}"
    )
    assert {p.sid for p in response.context["cl"].result_list} == mine
    # The chosen profile shows in the sidebar, and only it: no list of every profile there.
    sidebar = response.content.decode().split('id="changelist-filter"')[1]
    assert "By customer profile" in sidebar and "Acme Anvils Inc." in sidebar
    assert "Umbrella" not in sidebar
    assert (
        "By customer profile"
        not in admin_client.get(url("trustproduct_changelist")).content.decode()
    )
    for query, expected in (
        (f"q={ACME}", mine),
        (f"q={UMBRELLA_A2P}", {UMBRELLA_A2P}),
        ("q=cnam", {ACME_CNAM, STARK_CNAM}),
        ("compliance=none", set(products)),
    ):
        response = admin_client.get(url("trustproduct_changelist") + "?" + query)
        assert {p.sid for p in response.context["cl"].result_list} == expected, query


@pytest.mark.parametrize("value", ["abc", "%C2%B2", "9" * 30, "%00"])
def test_a_bad_profile_in_the_trust_product_filter_is_a_clean_answer(admin_client, products, value):
    response = admin_client.get(
        url("trustproduct_changelist") + f"?customer_profile__id__exact={value}"
    )
    assert response.status_code in (200, 302)


# --- a trust product's page --------------------------------------------------------------------


def test_trust_product_page_shows_history_timeline_results_and_its_profile(admin_client, products):
    product = products[UMBRELLA_A2P]
    first = evaluate(product)
    second = evaluate(product)
    response = admin_client.get(url("trustproduct_change", product.pk))
    assert response.status_code == 200
    body, page = response.content.decode(), text(response)
    assert [e.pk for e in response.context["history"]] == [second.pk, first.pk]
    for evaluation in (first, second):
        assert url("evaluation_change", evaluation.pk) in body
    svg = re.search(r"<svg class=\"trusthub-timeline\".*?</svg>", body, flags=re.S)
    assert svg is not None and svg.group(0).count("tl-noncompliant") == 2
    # Built on its profile, linked; re-evaluation and the history of its own evaluations.
    umbrella = product.customer_profile
    assert url("customerprofile_change", umbrella.pk) in body
    assert labelled(page, TrustProduct, "customer_profile", "Umbrella Logistics")
    assert url("trustproduct_reevaluate", product.pk) in body
    link = re.search(r'<a href="([^"]+)" class="historylink"', body)
    listing = admin_client.get(html.unescape(link.group(1)))
    assert [e.pk for e in listing.context["cl"].result_list] == [second.pk, first.pk]
    assert url("trustproduct_history", product.pk) not in body
    # Its evaluation's page: results and the diff with its own previous evaluation.
    response = admin_client.get(url("evaluation_change", second.pk))
    assert response.context["previous"].pk == first.pk
    assert "previous completed evaluation of this trust product" in text(response)
    assert second.requirement_results.failing().count() > 0
    assert "requirements failed" in text(response)


def test_a_trust_products_first_evaluation_is_compared_with_none_of_another_product(
    admin_client, products
):
    # Both A2P products are evaluated against the same policy, and neither has a profile
    # column on its evaluations: the previous one is the same product's, or none.
    evaluate(products[UMBRELLA_A2P])
    first = evaluate(products[ACME_A2P])
    response = admin_client.get(url("evaluation_change", first.pk))
    assert response.context["previous"] is None
    assert "This is the first completed evaluation of this trust product" in text(response)


def test_trust_product_page_of_a_never_evaluated_product(admin_client, products):
    response = admin_client.get(url("trustproduct_change", products[ACME_SHAKEN].pk))
    assert response.status_code == 200
    assert "This trust product has not been evaluated yet." in text(response)
    assert "Failing: -" in text(response)


def test_trust_product_pages_are_read_only(admin_client, products):
    product = products[ACME_A2P]
    response = admin_client.get(url("trustproduct_change", product.pk))
    body = response.content.decode()
    assert 'name="_save"' not in body and "deletelink" not in body
    assert admin_client.get(url("trustproduct_add")).status_code == 403
    assert admin_client.post(url("trustproduct_delete", product.pk)).status_code == 403
    changelist = admin_client.get(url("trustproduct_changelist")).content.decode()
    assert url("trustproduct_add") not in changelist


# --- TrustHub's rejection errors ---------------------------------------------------------------


def test_rejection_errors_are_readable_on_the_product_and_the_profile_pages(admin_client, products):
    for page in (
        url("trustproduct_change", products[STARK_CNAM].pk),
        url("customerprofile_change", CustomerProfile.objects.get(sid=STARK).pk),
    ):
        response = admin_client.get(page)
        errors = section(response, "errors")
        assert "TrustHub's rejection errors" in errors
        assert REJECTION_ERROR_LINK in errors and ">18601</a>" in errors
    response = admin_client.get(url("trustproduct_change", products[ACME_A2P].pk))
    assert 'id="trusthub-errors"' not in response.content.decode()


def test_rejection_errors_of_any_shape_are_shown_escaped(admin_client, products):
    product = products[ACME_A2P]
    errors = [
        {"code": 18601, "message": "<b>Address</b> mismatch"},
        {"code": "<script>x</script>"},
        "a bare <i>string</i>",
        {"nested": {"deep": [1, 2]}},
    ]
    TrustProduct.objects.filter(pk=product.pk).update(raw={"sid": product.sid, "errors": errors})
    response = admin_client.get(url("trustproduct_change", product.pk))
    assert response.status_code == 200
    shown = section(response, "errors")
    assert REJECTION_ERROR_LINK in shown
    assert "&lt;b&gt;Address&lt;/b&gt; mismatch" in shown
    assert "&lt;script&gt;x&lt;/script&gt;" in shown and "<script>x" not in shown
    assert "a bare &lt;i&gt;string&lt;/i&gt;" in shown
    assert "nested:" in shown


@pytest.mark.parametrize("raw", [None, [], "text", {"errors": None}, {"errors": "18601"}, {}])
def test_a_record_without_readable_errors_shows_none(admin_client, products, raw):
    product = products[STARK_CNAM]
    TrustProduct.objects.filter(pk=product.pk).update(raw=raw)
    response = admin_client.get(url("trustproduct_change", product.pk))
    assert response.status_code == 200
    assert 'id="trusthub-errors"' not in response.content.decode()


# --- re-evaluating a trust product -------------------------------------------------------------


def test_reevaluate_button_queues_an_evaluation_of_the_trust_product(client, products):
    user = staff("operator", *VIEW_PRODUCTS, "request_evaluation")
    client.force_login(user)
    product = products[ACME_A2P]
    body = client.get(url("trustproduct_change", product.pk)).content.decode()
    assert "Re-evaluate now" in body
    response = client.post(url("trustproduct_reevaluate", product.pk))
    assert response.status_code == 302
    assert response["Location"] == url("trustproduct_change", product.pk)
    evaluation = Evaluation.objects.get(trust_product=product)
    assert evaluation.customer_profile_id is None
    assert (evaluation.trigger, evaluation.requested_by, evaluation.policy) == (
        "admin",
        user,
        product.policy,
    )
    assert any("queued" in message for message in message_texts(response))
    page = text(client.post(url("trustproduct_reevaluate", product.pk), follow=True))
    assert "already in flight (Queued)" in page
    assert Evaluation.objects.filter(trust_product=product).count() == 1


@pytest.mark.parametrize(
    "codenames",
    [
        VIEW_EVERYTHING,  # no permission to request
        ("view_customerprofile", "view_evaluation", "request_evaluation"),  # no products
        ("view_trustproduct", "request_evaluation"),  # no evaluations
    ],
    ids=["not-allowed-to-request", "no-products", "no-evaluations"],
)
def test_reevaluating_a_trust_product_needs_the_permission(client, products, codenames):
    client.force_login(staff("someone", *codenames))
    product = products[ACME_A2P]
    for target in (
        url("trustproduct_reevaluate", product.pk),
        url("trustproduct_reevaluate", 999999),
    ):
        assert client.post(target).status_code == 403
    response = client.get(url("trustproduct_change", product.pk))
    assert "Re-evaluate now" not in response.content.decode()
    response = client.get(url("trustproduct_changelist"))
    assert "reevaluate_selected" not in response.content.decode()
    response = client.post(
        url("trustproduct_changelist"), action_post([product.pk], confirm="yes", policy="")
    )
    assert not Evaluation.objects.exists()


def test_the_trust_product_rule_asks_to_see_products_not_profiles(client, products):
    client.force_login(staff("products-only", *VIEW_PRODUCTS, "request_evaluation"))
    acme = CustomerProfile.objects.get(sid=ACME)
    assert client.post(url("trustproduct_reevaluate", products[ACME_A2P].pk)).status_code == 302
    assert client.post(url("customerprofile_reevaluate", acme.pk)).status_code == 403
    assert Evaluation.objects.get().trust_product_id == products[ACME_A2P].pk


def test_a_trust_product_without_policy_says_why(admin_client, products):
    product = products[ACME_SHAKEN]
    TrustProduct.objects.filter(pk=product.pk).update(policy=None)
    response = admin_client.post(url("trustproduct_reevaluate", product.pk), follow=True)
    assert f"{product} has no policy to be evaluated against." in text(response)
    assert admin_client.post(url("trustproduct_reevaluate", 999999)).status_code == 404


def test_bulk_action_confirms_then_queues_the_trust_products(client, products):
    user = staff("operator", *VIEW_PRODUCTS, "request_evaluation")
    client.force_login(user)
    chosen = [products[ACME_A2P], products[STARK_CNAM]]
    ids = [p.pk for p in chosen]
    changelist = client.get(url("trustproduct_changelist")).content.decode()
    assert '<option value="reevaluate_selected">Re-evaluate selected trust products</option>' in (
        changelist
    )
    response = client.post(url("trustproduct_changelist"), action_post(ids, index="0"))
    assert response.status_code == 200
    page = text(response)
    assert "Ask TrustHub to evaluate these 2 trust products?" in page
    assert "Re-evaluate trust products" in page
    for product in chosen:
        assert product.sid in page
    assert not Evaluation.objects.exists()
    services.request_evaluation(products[STARK_CNAM], trigger="cli")  # already in flight
    response = client.post(
        url("trustproduct_changelist"), action_post(ids, confirm="yes", policy=""), follow=True
    )
    assert "Queued 1 evaluation. 1 was already in flight." in text(response)
    queued = Evaluation.objects.get(trigger="admin")
    assert (queued.trust_product_id, queued.requested_by) == (products[ACME_A2P].pk, user)


# --- a profile's page: the profile and its trust products --------------------------------------


def test_profile_page_lists_its_trust_products_with_verdicts_failures_and_links(
    admin_client, products
):
    umbrella = CustomerProfile.objects.get(sid=UMBRELLA)
    own = evaluate(umbrella)
    product_evaluation = evaluate(products[UMBRELLA_A2P])
    response = admin_client.get(url("customerprofile_change", umbrella.pk))
    business = section(response, "business")
    rows = re.findall(r"<tr class=.*?</tr>", business, flags=re.S)
    assert len(rows) == 2
    profile_row, product_row = rows
    # The profile first (this page), then each product linking to its page and its history.
    assert "Umbrella Logistics" in profile_row and "<a href" not in profile_row.split("</th>")[0]
    assert url("trustproduct_change", products[UMBRELLA_A2P].pk) in product_row
    history = (
        url("evaluation_changelist") + f"?trust_product__id__exact={products[UMBRELLA_A2P].pk}"
    )
    assert html.escape(history) in product_row
    assert html.escape(
        url("evaluation_changelist") + f"?customer_profile__id__exact={umbrella.pk}"
    ) in (profile_row)
    # Each one's verdict and the requirements that failed, side by side.
    for row, evaluation in ((profile_row, own), (product_row, product_evaluation)):
        assert "trusthub-noncompliant" in row
        for result in evaluation.requirement_results.failing():
            assert html.escape(result.requirement_friendly_name or result.requirement_name) in row
    assert "Trust Product" in product_row and str(products[UMBRELLA_A2P].policy) in product_row
    # The product's history opens on its own evaluations.
    listing = admin_client.get(history)
    assert [e.pk for e in listing.context["cl"].result_list] == [product_evaluation.pk]
    # And the list of the products built on it.
    products_link = re.search(r'<a href="([^"]*trustproduct/\?[^"]*)"', business).group(1)
    listing = admin_client.get(html.unescape(products_link))
    assert [p.sid for p in listing.context["cl"].result_list] == [UMBRELLA_A2P]


def test_profile_page_shows_each_trust_product_built_on_it(admin_client, products):
    acme = CustomerProfile.objects.get(sid=ACME)
    evaluate(products[ACME_A2P])
    response = admin_client.get(url("customerprofile_change", acme.pk))
    business = section(response, "business")
    for sid in (ACME_A2P, ACME_SHAKEN, ACME_CNAM):
        assert url("trustproduct_change", products[sid].pk) in business
    assert UMBRELLA_A2P not in business and str(products[UMBRELLA_A2P]) not in business
    assert business.count("Not evaluated") == 3  # the profile, SHAKEN/STIR and CNAM
    assert business.count("trusthub-compliant") == 1
    assert "In review" in business


def test_profile_page_says_when_no_trust_product_is_built_on_it(admin_client, products):
    hooli = CustomerProfile.objects.get(sid="BU4e61d8e55f52a2c61f9636063688d5e5")
    response = admin_client.get(url("customerprofile_change", hooli.pk))
    assert "No trust product is built on this profile." in text(response)


def test_without_view_evaluation_the_profile_page_shows_counts_and_no_history(client, products):
    umbrella = CustomerProfile.objects.get(sid=UMBRELLA)
    evaluation = evaluate(products[UMBRELLA_A2P])
    client.force_login(staff("records-only", "view_customerprofile", "view_trustproduct"))
    response = client.get(url("customerprofile_change", umbrella.pk))
    business = section(response, "business")
    product_row = re.search(r'<tr class="trusthub-trust-product">.*?</tr>', business, re.S).group(0)
    cells = [
        " ".join(re.sub(r"<[^>]+>", " ", c).split())
        for c in re.findall(r"<td>(.*?)</td>", product_row, re.S)
    ]
    failing = evaluation.requirement_results.failing()
    # TrustHub status, latest compliance, failing (a count: the names are the evaluation's).
    assert cells[1:3] == ["Noncompliant", str(failing.count())]
    for result in failing:
        assert html.escape(result.requirement_friendly_name) not in business
    assert url("evaluation_changelist") not in response.content.decode()
    assert url("trustproduct_change", products[UMBRELLA_A2P].pk) in business


def test_without_view_trustproduct_the_profile_page_lists_no_products(client, products):
    acme = CustomerProfile.objects.get(sid=ACME)
    client.force_login(staff("profiles", "view_customerprofile", "view_evaluation"))
    response = client.get(url("customerprofile_change", acme.pk))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="trusthub-business"' not in body
    assert str(products[ACME_A2P]) not in body
    assert client.get(url("trustproduct_changelist")).status_code == 403
    assert client.get(url("trustproduct_change", products[ACME_A2P].pk)).status_code == 403


def test_without_view_customerprofile_a_trust_product_names_no_profile_link(client, products):
    client.force_login(staff("products", *VIEW_PRODUCTS))
    product = products[ACME_A2P]
    response = client.get(url("trustproduct_change", product.pk))
    assert response.status_code == 200
    assert (
        url("customerprofile_change", product.customer_profile_id) not in response.content.decode()
    )


def test_profile_page_queries_do_not_grow_with_its_trust_products(
    admin_client, products, django_assert_max_num_queries
):
    acme = CustomerProfile.objects.get(sid=ACME)
    for sid in (ACME_A2P, ACME_SHAKEN):
        evaluate(products[sid])
    page = url("customerprofile_change", acme.pk)
    admin_client.get(page)  # warm caches (content types) first
    with django_assert_max_num_queries(40) as few:
        assert admin_client.get(page).status_code == 200
    policy = Policy.objects.get(sid=products[ACME_A2P].policy.sid)
    built = TrustProduct.objects.bulk_create(
        TrustProduct(
            sid=f"BU{n:032x}", friendly_name=f"Product {n}", policy=policy, customer_profile=acme
        )
        for n in range(30)
    )
    for product in built:
        bulk_evaluations(product, [timezone.now()], took=datetime.timedelta(seconds=1))
    with django_assert_max_num_queries(len(few)):
        response = admin_client.get(page)
    assert section(response, "business").count("<tr class=") == 1 + 3 + 30


# --- the evaluations' list ---------------------------------------------------------------------


@pytest.fixture
def mixed(products):
    """Evaluations of profiles and of trust products."""
    umbrella = CustomerProfile.objects.get(sid=UMBRELLA)
    acme = CustomerProfile.objects.get(sid=ACME)
    return {
        "umbrella": evaluate(umbrella),
        "acme": evaluate(acme),
        "umbrella_a2p": evaluate(products[UMBRELLA_A2P]),
        "acme_a2p": evaluate(products[ACME_A2P]),
        "acme_shaken": evaluate(products[ACME_SHAKEN]),
    }


def shown(admin_client, query: str) -> set[int]:
    response = admin_client.get(url("evaluation_changelist") + query)
    assert response.status_code == 200, query
    return {e.pk for e in response.context["cl"].result_list}


def test_evaluation_list_shows_what_was_evaluated_linked(admin_client, products, mixed):
    response = admin_client.get(url("evaluation_changelist"))
    body = response.content.decode()
    row = next(
        r for r in re.findall(r"<tr>.*?</tr>", body, flags=re.S) if str(mixed["acme_a2p"]) in r
    )
    product = products[ACME_A2P]
    assert (
        f'<a href="{url("trustproduct_change", product.pk)}">{html.escape(str(product))}</a>' in row
    )
    assert f"Trust Product · {html.escape(str(product.policy))}" in row
    row = next(r for r in re.findall(r"<tr>.*?</tr>", body, flags=re.S) if str(mixed["acme"]) in r)
    assert url("customerprofile_change", mixed["acme"].customer_profile_id) in row
    assert "Customer Profile · " in row


def test_evaluation_list_filters_by_kind_and_record(admin_client, products, mixed):
    ids = {name: e.pk for name, e in mixed.items()}
    acme = CustomerProfile.objects.get(sid=ACME)
    products_only = {ids["umbrella_a2p"], ids["acme_a2p"], ids["acme_shaken"]}
    assert shown(admin_client, "?kind=trust-product") == products_only
    assert shown(admin_client, "?kind=customer-profile") == {ids["umbrella"], ids["acme"]}
    assert shown(admin_client, "?kind=nonsense") == set(ids.values())
    assert shown(admin_client, f"?trust_product__id__exact={products[ACME_A2P].pk}") == {
        ids["acme_a2p"]
    }
    built_on_acme = f"?trust_product__customer_profile__id__exact={acme.pk}"
    assert shown(admin_client, built_on_acme) == {ids["acme_a2p"], ids["acme_shaken"]}
    assert shown(admin_client, f"?customer_profile__id__exact={acme.pk}") == {ids["acme"]}
    # Filters combine.
    a2p = products[ACME_A2P].policy_id
    assert shown(admin_client, built_on_acme + f"&policy__id__exact={a2p}") == {ids["acme_a2p"]}
    # The sidebar offers the kinds, and shows a chosen record (only while one is chosen).
    sidebar = admin_client.get(url("evaluation_changelist") + built_on_acme).content.decode()
    sidebar = sidebar.split('id="changelist-filter"')[1]
    assert "By what was evaluated" in sidebar and "Trust Product" in sidebar
    assert "By trust product&#x27;s customer profile" in sidebar and "Acme Anvils Inc." in sidebar
    plain = admin_client.get(url("evaluation_changelist")).content.decode()
    assert "By trust product&#x27;s customer profile" not in plain


def test_evaluation_list_searches_trust_products(admin_client, products, mixed):
    ids = {name: e.pk for name, e in mixed.items()}
    assert shown(admin_client, f"?q={ACME_A2P}") == {ids["acme_a2p"]}
    assert shown(admin_client, f"?q={ACME}") == {ids["acme"]}
    assert shown(admin_client, "?q=umbrella") == {ids["umbrella"], ids["umbrella_a2p"]}
    assert shown(admin_client, "?q=shaken") == {ids["acme_shaken"]}
    assert shown(admin_client, f"?q=BU{'0' * 32}") == set()


def test_a_search_matching_many_records_reads_them_by_subquery(admin_client, mixed, monkeypatch):
    # Past the keys it reads, a search asks for the records' evaluations by a subquery.
    monkeypatch.setattr(evaluation_admin, "SEARCH_KEYS", 1)
    ids = {name: e.pk for name, e in mixed.items()}
    assert shown(admin_client, "?q=acme") == {ids["acme"], ids["acme_a2p"], ids["acme_shaken"]}
    assert shown(admin_client, "?q=umbrella") == {ids["umbrella"], ids["umbrella_a2p"]}


@pytest.mark.parametrize(
    "query",
    [
        "trust_product__id__exact=abc",
        "trust_product__customer_profile__id__exact=%C2%B2",
        "trust_product__customer_profile__id__exact=" + "9" * 30,
        "customer_profile__id__exact=%00",
        "kind=%00",
    ],
)
def test_bad_record_filters_are_a_clean_answer(admin_client, products, mixed, query):
    response = admin_client.get(url("evaluation_changelist") + "?" + query)
    assert response.status_code in (200, 302)


def test_evaluation_list_queries_do_not_grow_with_trust_product_rows(
    admin_client, products, mixed, django_assert_max_num_queries
):
    queries = ("", "?kind=trust-product", f"?trust_product__id__exact={products[ACME_A2P].pk}")
    admin_client.get(url("evaluation_changelist"))  # warm caches (content types) first
    few = {}
    for query in queries:
        with django_assert_max_num_queries(30) as captured:
            assert admin_client.get(url("evaluation_changelist") + query).status_code == 200
        few[query] = len(captured)
    now = timezone.now()
    for product in products.values():
        bulk_evaluations(product, [now - datetime.timedelta(hours=n) for n in range(4)])
    for query in queries:
        with django_assert_max_num_queries(few[query]):
            response = admin_client.get(url("evaluation_changelist") + query)
        for row in response.context["cl"].result_list:
            assert "raw" in row.get_deferred_fields()
            if row.trust_product_id:
                assert "raw" in row.trust_product.get_deferred_fields()


def test_evaluation_page_of_a_trust_product_names_it_not_a_profile(admin_client, products, mixed):
    evaluation = mixed["acme_a2p"]
    response = admin_client.get(url("evaluation_change", evaluation.pk))
    page = text(response)
    assert labelled(page, Evaluation, "trust_product", str(products[ACME_A2P]))
    assert not labelled(page, Evaluation, "customer_profile", "")
    assert url("trustproduct_change", products[ACME_A2P].pk) in response.content.decode()


def test_queue_page_names_a_trust_product_in_flight(admin_client, products):
    services.request_evaluation(products[ACME_A2P], trigger="cli")
    response = admin_client.get(url("evaluation_health"))
    assert response.status_code == 200
    oldest = response.content.decode().split("Oldest in flight")[1]
    assert html.escape(str(products[ACME_A2P])) in oldest and "Trust Product" in oldest


def test_every_page_opens_for_a_user_with_the_view_permissions(client, products, mixed):
    client.force_login(staff("viewer", *VIEW_EVERYTHING))
    for page in (
        url("trustproduct_changelist"),
        url("trustproduct_change", products[STARK_CNAM].pk),
        url("customerprofile_change", CustomerProfile.objects.get(sid=ACME).pk),
        url("evaluation_change", mixed["acme_a2p"].pk),
        url("evaluation_changelist") + "?kind=trust-product",
    ):
        assert client.get(page).status_code == 200, page


def test_a_duplicate_of_a_trust_products_evaluation_names_the_product(admin_client, products):
    product = products[ACME_A2P]
    evaluation = evaluate(product)
    duplicate = DuplicateEvaluation.objects.create(
        sid="EL" + "d" * 32, evaluation=evaluation, trust_product=product, policy=product.policy
    )
    listing = admin_client.get(url("duplicateevaluation_changelist")).content.decode()
    row = next(r for r in re.findall(r"<tr>.*?</tr>", listing, flags=re.S) if duplicate.sid in r)
    assert f'<td class="field-record">{html.escape(str(product))}</td>' in row
    page = admin_client.get(url("duplicateevaluation_change", duplicate.pk))
    assert url("trustproduct_change", product.pk) in page.content.decode()
