"""Import TrustHub's policies, customer profiles and, optionally, their past evaluations."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trusthub_eval import sync
from trusthub_eval.client import TrustHubClient
from trusthub_eval.exceptions import TrustHubError


class Command(BaseCommand):
    help = (
        "Import policies, Customer Profiles and Trust Products from TrustHub (and their past "
        "evaluations)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--evaluations",
            action="store_true",
            help="Also import the evaluations of each profile and Trust Product made outside "
            "this app.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with TrustHubClient.from_settings() as client:
                synced = sync.sync_all(evaluations=options["evaluations"], client=client)
        except TrustHubError as error:
            raise CommandError(f"TrustHub: {error}") from error
        for name, what in _SAID.items():
            if name in synced:
                self.report(what, synced[name])
        self.stdout.write(self.style.SUCCESS("Synced."))

    def report(self, what: str, synced: sync.Synced) -> None:
        """One line of what was stored; one more for each record skipped, on stderr."""
        if not synced.skipped:
            self.stdout.write(f"{what}: {synced.stored}")
            return
        self.stdout.write(f"{what}: {synced.stored} ({len(synced.skipped)} skipped as unusable)")
        for line in synced.skipped:
            self.stderr.write(f"Skipped: {line}")


_SAID = {
    "policies": "Policies",
    "customer_profiles": "Customer profiles",
    "trust_products": "Trust Products",
    "evaluations": "Evaluations imported",
}
