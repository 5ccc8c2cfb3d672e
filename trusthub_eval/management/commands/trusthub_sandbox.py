"""``manage.py trusthub_sandbox``: serve the offline TrustHub sandbox."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trusthub_eval.sandbox import SandboxServer, WorldError


class Command(BaseCommand):
    help = "Serve an offline Twilio TrustHub v1 (the sandbox) until interrupted."
    # The sandbox reads none of the project's settings: it starts whatever TRUSTHUB_EVAL says,
    # including in a project being pointed at it for the first time.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
        parser.add_argument("--world", default=None, help="world JSON file (default: packaged)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            server = SandboxServer(options["world"], host=options["host"], port=options["port"])
        except WorldError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(
                f"Cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc
        self.stdout.write(server.startup_message())
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
