"""Settings, system checks, SIDs and migrations."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.test import override_settings

from tests.services import ROOT
from trusthub_eval.checks import check_credentials, check_settings
from trusthub_eval.client import TrustHubClient
from trusthub_eval.conf import DEFAULTS, TWILIO_BASE_URL, app_settings
from trusthub_eval.sids import (
    InvalidSid,
    SidKind,
    check_sid,
    is_sid,
    validate_customer_profile_sid,
)

GOOD_AC = "AC" + "0123456789abcdef" * 2


def check_ids(**trusthub_eval):
    with override_settings(TRUSTHUB_EVAL=trusthub_eval):
        return sorted(message.id for message in [*check_settings(), *check_credentials()])


def project_check_ids(*, deploy, **trusthub_eval):
    """The app's ids among everything Django's check framework reports for the project."""
    with override_settings(TRUSTHUB_EVAL=trusthub_eval):
        messages = run_checks(include_deployment_checks=deploy)
    return sorted(m.id for m in messages if m.id.startswith("trusthub_eval."))


def clear_twilio_environment(monkeypatch):
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY", "TWILIO_API_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_settings_are_read_on_every_access():
    with override_settings(TRUSTHUB_EVAL={"READ_TIMEOUT": 7}):
        assert app_settings.READ_TIMEOUT == 7.0
    with override_settings(TRUSTHUB_EVAL={}):
        assert app_settings.READ_TIMEOUT == 30.0
        assert app_settings.BASE_URL == TWILIO_BASE_URL


def test_credentials_fall_back_to_twilio_environment_variables(monkeypatch):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", GOOD_AC)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "env-token")
    monkeypatch.setenv("TWILIO_API_KEY", "SK" + "1" * 32)
    with override_settings(TRUSTHUB_EVAL={"AUTH_TOKEN": "setting-token"}):
        assert app_settings.ACCOUNT_SID == GOOD_AC
        assert app_settings.AUTH_TOKEN == "setting-token"  # the setting wins
        assert app_settings.API_KEY_SID == "SK" + "1" * 32


def test_base_url_loses_its_trailing_slash():
    with override_settings(TRUSTHUB_EVAL={"BASE_URL": "http://127.0.0.1:8765/"}):
        assert app_settings.BASE_URL == "http://127.0.0.1:8765"


def test_checks_pass_for_a_sound_configuration(monkeypatch):
    clear_twilio_environment(monkeypatch)
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t") == []
    assert check_ids(API_KEY_SID="SK" + "2" * 32, API_KEY_SECRET="s") == []
    assert check_ids(BASE_URL="http://127.0.0.1:8765") == []  # a sandbox needs no real ones


def test_checks_report_bad_configuration(monkeypatch):
    clear_twilio_environment(monkeypatch)
    assert check_ids() == ["trusthub_eval.E003"]
    assert "trusthub_eval.E002" in check_ids(ACCOUNT_SID="ACnope", AUTH_TOKEN="t")
    assert "trusthub_eval.E002" in check_ids(
        ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", DEFAULT_POLICY_SID="RN123"
    )
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", BASE_URL="ftp://x") == [
        "trusthub_eval.E004"
    ]
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", TYPO=1) == ["trusthub_eval.W001"]
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", RETRY_BACKOFF_MAX=7200) == [
        "trusthub_eval.W003"
    ]
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", CONCURRENCY_LIMIT=0) == [
        "trusthub_eval.E005"
    ]
    assert check_ids(ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t", CONCURRENCY_LIMIT=5) == [
        "trusthub_eval.E006"
    ]
    assert (
        check_ids(
            ACCOUNT_SID=GOOD_AC,
            AUTH_TOKEN="t",
            CONCURRENCY_LIMIT=5,
            CONCURRENCY_REDIS_URL="redis://127.0.0.1:6379/0",
        )
        == []
    )
    with override_settings(TRUSTHUB_EVAL=["not", "a", "dict"]):
        assert [m.id for m in check_settings()] == ["trusthub_eval.E001"]


def test_missing_credentials_are_a_deployment_error_only(monkeypatch):
    # A project that wants the sandbox has no credentials yet: migrate, makemigrations and
    # trusthub_sandbox must run; `check --deploy` says what a deployment would lack.
    clear_twilio_environment(monkeypatch)
    assert project_check_ids(deploy=False) == []
    assert project_check_ids(deploy=True) == ["trusthub_eval.E003"]
    assert project_check_ids(deploy=True, BASE_URL="http://127.0.0.1:8765") == []
    assert project_check_ids(deploy=True, ACCOUNT_SID=GOOD_AC, AUTH_TOKEN="t") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://trusthub.twilio.com",
        "http://127.0.0.1:8765/",
        "http://[::1]:8765",
        "ftp://trusthub.twilio.com",
        "https://",
        "https:///v1",
        "trusthub.twilio.com",
        "http://[::1",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:port",
        "https://AC0123:sekrit-in-url@trusthub.twilio.com",
        "https://trusthub.twilio.com/?PageSize=5",
        "https://trusthub.twilio.com/#top",
    ],
)
def test_base_url_check_is_the_clients_own_rule(url):
    try:
        TrustHubClient(base_url=url, account_sid=GOOD_AC, auth_token="t")
        refused = None
    except ImproperlyConfigured as error:
        refused = str(error)
    with override_settings(TRUSTHUB_EVAL={"BASE_URL": url}):
        reported = [m for m in check_settings() if m.id == "trusthub_eval.E004"]
    assert [m.msg for m in reported] == ([refused] if refused else [])
    assert all("sekrit" not in str(m) for m in reported)


def test_check_messages_never_contain_the_token(monkeypatch):
    with override_settings(TRUSTHUB_EVAL={"ACCOUNT_SID": "ACbad", "AUTH_TOKEN": "sekrit-123"}):
        assert all("sekrit-123" not in str(message) for message in check_settings())


@pytest.mark.parametrize(
    ("value", "kind", "ok"),
    [
        ("BU" + "a" * 32, SidKind.CUSTOMER_PROFILE, True),
        ("BU" + "A" * 32, SidKind.CUSTOMER_PROFILE, True),
        ("BU" + "a" * 31, SidKind.CUSTOMER_PROFILE, False),
        ("BU" + "g" * 32, SidKind.CUSTOMER_PROFILE, False),
        ("RN" + "a" * 32, SidKind.CUSTOMER_PROFILE, False),
        ("BU" + "a" * 32 + "\n", SidKind.CUSTOMER_PROFILE, False),
        (None, SidKind.POLICY, False),
        ("EL" + "0" * 32, SidKind.EVALUATION, True),
    ],
)
def test_sid_patterns(value, kind, ok):
    assert is_sid(value, kind) is ok
    if ok:
        assert check_sid(value, kind) == value
    else:
        with pytest.raises(InvalidSid, match=kind.label):
            check_sid(value, kind)


def test_sid_validator_for_forms_and_models():
    validate_customer_profile_sid("BU" + "b" * 32)
    with pytest.raises(ValidationError) as error:
        validate_customer_profile_sid("BU123")
    assert "Customer Profile SID" in str(error.value.messages[0])


@pytest.mark.django_db
def test_no_migrations_are_missing():
    out = StringIO()
    call_command("makemigrations", "trusthub_eval", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_a_setting_never_changes_the_schema(settings):
    settings.DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    settings.TRUSTHUB_EVAL = {"TASK_QUEUE": "elsewhere", "MAX_ATTEMPTS": 2}
    out = StringIO()
    call_command("makemigrations", "trusthub_eval", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_documents_every_setting_and_every_check():
    section = readme_section("Settings")
    block = re.search(r"```python\n(TRUSTHUB_EVAL = \{.*?\n\})\n```", section, re.DOTALL).group(1)
    keys = re.findall(r'^    "([A-Z_]+)":', block, re.MULTILINE)
    assert sorted(keys) == sorted(DEFAULTS)
    for name, default in DEFAULTS.items():
        if default is not None and name != "BASE_URL":
            assert re.search(rf'"{name}": {re.escape(repr(default))},', block), name
    source = (ROOT / "trusthub_eval" / "checks.py").read_text()
    ids = set(re.findall(r'id="trusthub_eval\.([EW]\d{3})"', source))
    documented = set(re.findall(r"\b([EW]\d{3})\b", section))
    assert ids == documented
