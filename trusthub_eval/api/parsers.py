"""The JSON body parser of the trigger endpoints."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a 400 for JSON nested too deeply to parse.

    ``json.loads`` raises RecursionError (not a ValueError) at about a thousand levels, which
    DRF would let through as a 500. The body is parsed even before the permission check when a
    session's CSRF token is looked for, so this matters for callers without permission too.
    """

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Any = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(_("JSON parse error - nested too deeply.")) from None
