"""Error reports that hide credentials written into URLs."""

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@host: the password part, whatever the scheme (postgres, redis, amqp…).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)", re.IGNORECASE)


class CredentialsHidingFilter(SafeExceptionReporterFilter):
    """Django's filter (hides settings and request.META keys named like secrets), plus the
    password of any URL in them, e.g. DATABASE_URL or CELERY_BROKER_URL."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return _URL_PASSWORD.sub(rf"\g<head>{self.cleansed_substitute}", cleansed)
        return cleansed
