"""TrustHub's credentials: where they come from, checked before use, and kept out of every
repr, pickle, log and message (the secret, and the basic-auth pair made of it)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from trusthub_eval.exceptions import ImproperlyConfiguredCredentials
from trusthub_eval.sids import SidKind, is_sid

REDACTED = "[redacted]"


_CREDENTIALS_HELP = (
    "Set TRUSTHUB_EVAL['ACCOUNT_SID'] and TRUSTHUB_EVAL['AUTH_TOKEN'] (or "
    "TRUSTHUB_EVAL['API_KEY_SID'] and TRUSTHUB_EVAL['API_KEY_SECRET']) in your settings, or the "
    "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET) "
    "environment variables."
)

#: The settings (and constructor arguments, lower-cased) that hold credentials.
CREDENTIAL_NAMES = ("ACCOUNT_SID", "AUTH_TOKEN", "API_KEY_SID", "API_KEY_SECRET")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


class Credentials:
    """A basic-auth pair whose secret stays out of reprs, ``vars()`` dumps and pickles;
    ``source`` says where the pair came from (settings, environment), for messages."""

    __slots__ = ("_secret", "source", "username")

    def __init__(self, username: str, secret: str, source: str) -> None:
        self.username = username
        self._secret = secret
        self.source = source

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret='********')"

    def __reduce__(self) -> Any:
        raise TypeError("TrustHub credentials cannot be pickled.")

    def apply(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        prepared: requests.PreparedRequest = HTTPBasicAuth(self.username, self._secret)(request)
        return prepared

    def redact(self, text: str) -> str:
        """``text`` with the secret, and what is made of it to send it (the basic-auth pair in
        base64, the secret percent-encoded), replaced: TrustHub's text may echo them."""
        pair = f"{self.username}:{self._secret}".encode()
        for form in sorted(
            {
                self._secret,
                quote(self._secret, safe=""),
                base64.b64encode(pair).decode(),
                base64.urlsafe_b64encode(pair).decode(),
            },
            key=len,
            reverse=True,
        ):
            if form:
                text = text.replace(form, REDACTED)
        return text


class Auth(AuthBase):
    """Per-request basic auth, so the session object never holds the secret."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"Auth({self._credentials!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return self._credentials.apply(request)


def credential_problem(value: str | None) -> str | None:
    """Why a secret cannot be sent in HTTP basic auth, without quoting it; None if it can.

    Twilio's tokens and secrets are printable ASCII; anything else is a paste gone wrong (a
    zero-width space, a newline) that requests would fail to encode mid-call.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return "is not a string"
    for position, character in enumerate(value, start=1):
        if not (character.isascii() and character.isprintable()) or character.isspace():
            return (
                f"contains a character that cannot be sent (position {position}: "
                f"{'whitespace' if character.isspace() else 'not printable ASCII'}); re-enter it"
            )
    return None


def credentials_from(
    account_sid: str | None,
    auth_token: str | None,
    api_key_sid: str | None,
    api_key_secret: str | None,
    sources: Mapping[str, str],
) -> Credentials:
    # The values are never echoed: a secret pasted into the wrong setting must not leak.
    for name, value in (("AUTH_TOKEN", auth_token), ("API_KEY_SECRET", api_key_secret)):
        problem = credential_problem(value)
        if problem:
            raise ImproperlyConfiguredCredentials(
                f"{_capitalised(sources[name])} {problem}. " + _CREDENTIALS_HELP
            )
    if account_sid is not None and not is_sid(account_sid, SidKind.ACCOUNT):
        raise ImproperlyConfiguredCredentials(
            f"The Account SID ({sources['ACCOUNT_SID']}) is not valid: expected 'AC' "
            "followed by 32 hexadecimal digits. " + _CREDENTIALS_HELP
        )
    if api_key_sid is not None or api_key_secret is not None:
        # An API key authenticates for the account that owns it (Twilio docs: "API keys").
        if api_key_sid is None or api_key_secret is None:
            given = sources["API_KEY_SID" if api_key_sid is not None else "API_KEY_SECRET"]
            raise ImproperlyConfiguredCredentials(
                f"An API key needs both its SID and its secret; only {given} is set. "
                + _CREDENTIALS_HELP
            )
        if not is_sid(api_key_sid, SidKind.API_KEY):
            raise ImproperlyConfiguredCredentials(
                f"The API Key SID ({sources['API_KEY_SID']}) is not valid: expected 'SK' "
                "followed by 32 hexadecimal digits. " + _CREDENTIALS_HELP
            )
        source = f"{sources['API_KEY_SID']} and {sources['API_KEY_SECRET']}"
        return Credentials(api_key_sid, api_key_secret, source)
    if account_sid is not None and auth_token is not None:
        source = f"{sources['ACCOUNT_SID']} and {sources['AUTH_TOKEN']}"
        return Credentials(account_sid, auth_token, source)
    if account_sid is not None:
        raise ImproperlyConfiguredCredentials(
            f"An Account SID ({sources['ACCOUNT_SID']}) was given without its Auth Token. "
            + _CREDENTIALS_HELP
        )
    raise ImproperlyConfiguredCredentials("No TrustHub credentials. " + _CREDENTIALS_HELP)
