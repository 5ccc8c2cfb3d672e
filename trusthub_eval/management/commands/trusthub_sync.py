"""Import TrustHub's policies, customer profiles and, optionally, their past evaluations."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trusthub_eval import services
from trusthub_eval.client import TrustHubClient
from trusthub_eval.exceptions import TrustHubError
from trusthub_eval.models import CustomerProfile


class Command(BaseCommand):
    help = "Import policies and customer profiles from TrustHub (and their past evaluations)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--evaluations",
            action="store_true",
            help="Also import each profile's evaluations made outside this app.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with TrustHubClient.from_settings() as client:
                self.report("Policies", services.sync_policies(client=client))
                self.report("Customer profiles", services.sync_customer_profiles(client=client))
                if options["evaluations"]:
                    imported, skipped = 0, list[str]()
                    for profile in CustomerProfile.objects.iterator():
                        synced = services.sync_evaluations(profile, client=client)
                        imported += synced.stored
                        skipped.extend(synced.skipped)
                    self.report("Evaluations imported", services.Synced(imported, tuple(skipped)))
        except TrustHubError as error:
            raise CommandError(f"TrustHub: {error}") from error
        self.stdout.write(self.style.SUCCESS("Synced."))

    def report(self, what: str, synced: services.Synced) -> None:
        """One line of what was stored; one more for each record skipped, on stderr."""
        if not synced.skipped:
            self.stdout.write(f"{what}: {synced.stored}")
            return
        self.stdout.write(f"{what}: {synced.stored} ({len(synced.skipped)} skipped as unusable)")
        for line in synced.skipped:
            self.stderr.write(f"Skipped: {line}")
