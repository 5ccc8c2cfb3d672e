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
                policies = services.sync_policies(client=client)
                self.stdout.write(f"Policies: {policies}")
                profiles = services.sync_customer_profiles(client=client)
                self.stdout.write(f"Customer profiles: {profiles}")
                if options["evaluations"]:
                    imported = sum(
                        services.sync_evaluations(profile, client=client)
                        for profile in CustomerProfile.objects.iterator()
                    )
                    self.stdout.write(f"Evaluations imported: {imported}")
        except TrustHubError as error:
            raise CommandError(f"TrustHub: {error}") from error
        self.stdout.write(self.style.SUCCESS("Synced."))
