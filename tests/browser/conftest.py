"""A Playwright page in Debian's Chromium (the system's browser; none is ever downloaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from tests.factories import ACME, INITECH, STARK, UMBRELLA, sync_world
from tests.services import CHROMIUM_BIN
from trusthub_eval import queue, services, sync
from trusthub_eval.models import Evaluation, Policy, TrustProduct

UMBRELLA_A2P = "BU2e0e704ccf062d8b699b4e174a246d65"  # noncompliant: no company type
ACME_A2P = "BUb65649846535a13c146877e5d89a1eb4"  # compliant, built on Acme
STARK_CNAM = "BU2d498b49f35d4585f8faab7b4008339c"  # rejected by Twilio

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A page in a fresh headless Chromium profile, closed after the test."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still synchronous, so Django's guard against ORM calls from async code does not apply.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM_BIN),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
            locale="en-US",
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            context.close()
            # While Playwright's loop runs, Django keeps this thread's connections per context
            # (asgiref's Local), apart from pytest-django's: close them, or PostgreSQL refuses
            # to drop the test database at the end ("being accessed by other users").
            connections.close_all()


@pytest.fixture
def history(sandbox) -> dict[str, Any]:
    """Profiles and trust products with every kind of verdict and state, TrustHub's rejection
    errors, and an evaluation with a diff."""
    profiles = sync_world()
    sync.sync_trust_products()
    products = {p.sid: p for p in TrustProduct.objects.select_related("policy")}
    for sid in (ACME_A2P, UMBRELLA_A2P, UMBRELLA_A2P):
        evaluation, _ = services.request_evaluation(products[sid], trigger="cli")
        queue.run_evaluation(evaluation.pk)
    sync.sync_evaluations(profiles[ACME])
    for sid in (INITECH, UMBRELLA):
        evaluation, _ = services.request_evaluation(profiles[sid], trigger="cli")
        queue.run_evaluation(evaluation.pk)
    # A failed one (TrustHub refused it for good) and one still queued.
    sandbox.add_fault(method="POST", path="Evaluations$", status=400, code=21000, times=1)
    failed, _ = services.request_evaluation(profiles[STARK], trigger="cli")
    queue.run_evaluation(failed.pk)
    assert Evaluation.objects.get(pk=failed.pk).state == "failed"
    services.request_evaluation(profiles[STARK], trigger="cli")
    acme_history = list(profiles[ACME].evaluations.order_by("requested_at"))
    return {
        "acme": profiles[ACME].pk,
        "stark": profiles[STARK].pk,
        "umbrella": profiles[UMBRELLA].pk,
        "regressed": acme_history[2].pk,
        "policy": Policy.objects.order_by("pk").first().pk,
        "product": products[UMBRELLA_A2P].pk,
        "rejected_product": products[STARK_CNAM].pk,
        "product_evaluation": products[UMBRELLA_A2P].evaluations.latest().pk,
    }
