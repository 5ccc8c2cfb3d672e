"""The API's OpenAPI schema: valid, describing the real shapes, and held to by fuzzing."""

from __future__ import annotations

import re

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.settings import SPECTACULAR_DEFAULTS, spectacular_settings
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate as validate_spec
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks

import trusthub_eval
from tests.factories import INITECH, STARK, sync_world
from tests.test_trust_products import UMBRELLA_A2P
from trusthub_eval import queue, services, sync
from trusthub_eval.models import TrustProduct

pytestmark = pytest.mark.django_db

SCHEMA_URL = "/api/schema/"
OPERATIONS = {
    ("GET", "/api/customer-profiles/"),
    ("GET", "/api/customer-profiles/{sid}/"),
    ("GET", "/api/customer-profiles/{sid}/evaluations/"),
    ("POST", "/api/customer-profiles/{sid}/evaluations/"),
    ("GET", "/api/trust-products/"),
    ("GET", "/api/trust-products/{sid}/"),
    ("GET", "/api/trust-products/{sid}/evaluations/"),
    ("POST", "/api/trust-products/{sid}/evaluations/"),
    ("GET", "/api/evaluations/"),
    ("GET", "/api/evaluations/{id}/"),
    ("GET", "/api/evaluations/{id}/diff/"),
    ("POST", "/api/evaluations/bulk/"),
    ("GET", "/api/policies/"),
    ("GET", "/api/policies/{sid}/"),
}
# Examples per operation and mode: enough to find the classic 500s (types, bounds, NUL bytes,
# malformed SIDs and cursors) while the whole fuzzing stays within a few seconds.
EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "30"))


@pytest.fixture
def client(client, django_user_model):
    """Signed in: the schema and its UI are not for anonymous callers."""
    client.force_login(django_user_model.objects.create_user("schema-reader"))
    return client


@pytest.fixture
def openapi(client) -> dict:
    response = client.get(SCHEMA_URL, HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("path", [SCHEMA_URL, "/api/docs/"])
def test_the_schema_and_its_ui_are_for_signed_in_users(path, settings, django_user_model):
    from django.test import Client

    anonymous = Client()
    assert anonymous.get(path).status_code in (401, 403)
    signed_in = Client()
    signed_in.force_login(django_user_model.objects.create_user("someone"))
    assert signed_in.get(path).status_code == 200
    # A host whose default is stricter keeps it for the schema too.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    }
    assert signed_in.get(path).status_code == 403
    signed_in.force_login(django_user_model.objects.create_superuser("boss"))
    assert signed_in.get(path).status_code == 200


def test_schema_is_valid_openapi_3(openapi):
    assert openapi["openapi"].startswith("3.")
    validate_spec(openapi)  # openapi-spec-validator
    validate_schema(openapi)  # drf-spectacular's own check against the OpenAPI 3.0 JSON schema


def test_schema_is_generated_without_warnings(client):
    GENERATOR_STATS.reset()
    assert client.get(SCHEMA_URL).status_code == 200
    assert not GENERATOR_STATS._warn_cache
    assert not GENERATOR_STATS._error_cache


def test_schema_lists_every_operation_and_nothing_else(openapi):
    operations = {
        (method.upper(), path)
        for path, item in openapi["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    # The fuzzing below is parametrized by this list: a new operation must be added there.
    assert operations == OPERATIONS


def resolve(openapi: dict, schema: dict) -> dict:
    # A reference with a description of its own comes wrapped in a one-item allOf.
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = schema["allOf"][0]
    while "$ref" in schema:
        schema = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def body_schema(openapi: dict, path: str, method: str, status: str | None = None) -> dict:
    operation = openapi["paths"][path][method]
    holder = operation["responses"][status] if status else operation["requestBody"]
    return resolve(openapi, holder["content"]["application/json"]["schema"])


def test_schema_describes_the_trigger_request_and_its_202(openapi):
    path = "/api/customer-profiles/{sid}/evaluations/"
    request = body_schema(openapi, path, "post")
    assert request["properties"]["policy"]["pattern"] == "^RN[0-9a-fA-F]{32}$"
    assert request["additionalProperties"] is False
    accepted = openapi["paths"][path]["post"]["responses"]["202"]
    assert "Location" in accepted["headers"]
    evaluation = body_schema(openapi, path, "post", "202")
    assert {"id", "url", "state", "status", "customer_profile", "policy"} <= set(
        evaluation["properties"]
    )
    assert evaluation["properties"]["customer_profile"]["pattern"] == "^BU[0-9a-fA-F]{32}$"
    parameters = {p["name"]: p for p in openapi["paths"][path]["post"]["parameters"]}
    assert parameters["sid"]["schema"]["pattern"] == "^BU[0-9a-fA-F]{32}$"


def test_schema_describes_the_bulk_request_and_its_202(openapi):
    request = body_schema(openapi, "/api/evaluations/bulk/", "post")
    assert set(request["properties"]) == {"customer_profiles", "trust_products", "filter", "policy"}
    assert request["additionalProperties"] is False
    assert request["oneOf"] == [
        {"required": ["customer_profiles"]},
        {"required": ["trust_products"]},
        {"required": ["filter"]},
    ]
    for name in ("customer_profiles", "trust_products"):
        assert request["properties"][name]["maxItems"] == 10_000
        assert request["properties"][name]["items"]["pattern"] == "^BU[0-9a-fA-F]{32}$"
    criteria = resolve(openapi, request["properties"]["filter"])
    assert set(criteria["properties"]) == {
        "kind",
        "policy",
        "status",
        "compliance_status",
        "customer_profile",
    }
    assert criteria["additionalProperties"] is False
    # A criterion besides the kind; a profile's Trust Products for Trust Products only.
    assert {"required": ["kind"]} not in criteria["anyOf"]
    assert {"required": ["customer_profile"]} in criteria["anyOf"]
    assert criteria["not"]["required"] == ["customer_profile"]
    result = body_schema(openapi, "/api/evaluations/bulk/", "post", "202")
    assert set(result["properties"]) == {
        "queued",
        "in_flight",
        "skipped",
        "evaluation_ids",
        "dispatched",
    }


def test_schema_describes_lists_as_cursor_pages_and_the_filters(openapi):
    page = body_schema(openapi, "/api/evaluations/", "get", "200")
    assert set(page["properties"]) == {"next", "previous", "results"}
    row = resolve(openapi, page["properties"]["results"]["items"])
    assert "requested_at" in row["properties"]
    parameters = {p["name"]: p for p in openapi["paths"]["/api/evaluations/"]["get"]["parameters"]}
    assert {
        "cursor",
        "page_size",
        "customer_profile",
        "policy",
        "status",
        "state",
        "trigger",
        "requested_after",
        "requested_before",
        "failing_requirement",
    } <= set(parameters)
    assert parameters["page_size"]["schema"]["maximum"] == 200
    # The SID filters' schemas are given; their labels describe them all the same.
    assert parameters["customer_profile"]["description"] == (
        "Evaluations of this Customer Profile (BU…)."
    )
    assert parameters["customer_profile"]["schema"]["pattern"] == "^BU[0-9a-fA-F]{32}$"
    assert parameters["policy"]["description"] == "Evaluations against this policy (RN…)."
    assert parameters["state"]["schema"]["enum"] == ["completed", "failed", "queued", "running"]
    detail = body_schema(openapi, "/api/evaluations/{id}/", "get", "200")
    result = resolve(openapi, detail["properties"]["results"]["items"])
    assert {"passed", "failure_reason", "error_code", "invalid"} <= set(result["properties"])
    invalid = result["properties"]["invalid"]["items"]["properties"]
    assert {"object_field", "failure_reason", "error_code"} <= set(invalid)


def test_schema_describes_the_diff_with_the_previous_evaluation(openapi):
    diff = body_schema(openapi, "/api/evaluations/{id}/diff/", "get", "200")
    assert set(diff["properties"]) == {"previous", "newly_failing", "fixed", "unchanged"}
    assert diff["properties"]["previous"]["nullable"]
    changes = diff["properties"]["newly_failing"]
    assert changes["nullable"]
    assert changes["type"] == "array"
    change = resolve(openapi, changes["items"])
    assert set(change["properties"]) == {
        "requirement_name",
        "requirement_friendly_name",
        "before",
        "after",
    }
    assert change["properties"]["before"]["nullable"]


def empty_schemas(node: object, where: str = "") -> list[str]:
    """Places where a schema says nothing at all ({}), other than free-form extra keys."""
    found = []
    if isinstance(node, dict):
        if "schema" in node and node["schema"] == {}:
            found.append(where)
        for key, value in node.items():
            if key != "additionalProperties":
                found += empty_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += empty_schemas(value, f"{where}/{index}")
    return found


def test_no_operation_has_an_empty_schema(openapi):
    assert empty_schemas(openapi["paths"]) == []
    for name, component in openapi["components"]["schemas"].items():
        for prop, schema in component.get("properties", {}).items():
            assert schema != {}, f"{name}.{prop}"


def test_swagger_ui_points_at_the_schema(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert SCHEMA_URL.encode() in response.content


# --- fuzzing -------------------------------------------------------------------------------


@pytest.fixture
def api_schema(sandbox, settings, django_user_model):
    """The schema as served, and a world to fuzz it against: profiles, policies, results."""
    # Fuzzing posts many triggers; the throttle is tested elsewhere, here it would only hide
    # bodies behind 429s. (This also runs the throttle's "no rate configured" path.)
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"])
    rates.pop("trusthub_eval_trigger")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    profiles = sync_world()
    sync.sync_trust_products()
    records = [profiles[INITECH], profiles[STARK], TrustProduct.objects.get(sid=UMBRELLA_A2P)]
    for record in records:
        evaluation, _ = services.request_evaluation(record, trigger="cli")
        queue.run_evaluation(evaluation.pk)
    admin = django_user_model.objects.create_superuser("fuzzer")
    settings.FUZZ_TOKEN = Token.objects.create(user=admin).key
    # A real WSGI handler closes the database connection after each request, which would
    # end the test's transaction; Django's test client detaches the same receivers.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi(
            SCHEMA_URL,
            get_wsgi_application(),
            headers={"Authorization": f"Token {settings.FUZZ_TOKEN}"},
        )
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_fuzzed_requests_get_no_server_error_and_conforming_responses(
    api_schema, settings, method, path, mode
):
    # schemathesis' own pytest plugin (schema.parametrize) does not run under pytest 9 yet
    # (it reads Function._nodeid), so each operation is driven through Hypothesis here.
    operation = api_schema[path][method]
    headers = {"Authorization": f"Token {settings.FUZZ_TOKEN}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not __import__("os").environ.get("FUZZ_EXAMPLES"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        # Posts inside the test's transaction queue evaluations whose tasks would run on
        # commit, which never comes; the sandbox fixture is active in case one runs anyway.
        # ignored_auth is left out: it expects the generated credentials (a random session
        # cookie) to be refused, but the valid token sent alongside rightly lets the request
        # in. Refusing callers without credentials is tested in test_api.py.
        excluded = [checks.ignored_auth]
        body = case.body if isinstance(case.body, dict) else {}
        named = {"policy", "customer_profiles", "trust_products"} & set(body)
        if "cursor" in (case.query or {}) or named:
            # Any string is a cursor to the schema, and any well-formed SID a record; but only
            # cursors this API issued and SIDs it knows are accepted, the others are a 400 with
            # a field message, which the positive-data check would count as a failure.
            excluded.append(checks.positive_data_acceptance)
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    fuzz()


@pytest.mark.django_db
def test_swagger_ui_is_served_without_a_cdn(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn.jsdelivr.net" not in html
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html


@pytest.fixture
def unconfigured_host(settings, monkeypatch):
    """A host that never configured drf-spectacular: its settings are the defaults.

    drf-spectacular reads SPECTACULAR_SETTINGS once, at import, so its settings object is
    set as such a host's would be.
    """
    settings.SPECTACULAR_SETTINGS = {}
    names = ("TITLE", "DESCRIPTION", "VERSION", "SWAGGER_UI_DIST", "SWAGGER_UI_FAVICON_HREF")
    for name in names:
        monkeypatch.setattr(spectacular_settings, name, SPECTACULAR_DEFAULTS[name])


def test_the_schema_has_the_apps_title_and_version(client, unconfigured_host):
    for _ in range(2):  # and again: the host's settings are as they were
        info = client.get(SCHEMA_URL, HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["info"]
        assert info["title"] == "TrustHub evaluations API"
        assert info["version"] == trusthub_eval.__version__
        assert spectacular_settings.TITLE == ""


def hosts_named(page) -> set[str]:
    assert page.status_code == 200
    return set(re.findall(r"https?://([^/\"'\s]+)", page.content.decode()))


def test_swagger_ui_needs_no_other_host_when_the_sidecar_is_installed(
    client, unconfigured_host, settings, monkeypatch
):
    page = client.get("/api/docs/")
    assert hosts_named(page) <= {"testserver"}
    html = page.content.decode()
    assert "<title>TrustHub evaluations API</title>" in html
    for name in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert f"/static/drf_spectacular_sidecar/swagger-ui-dist/{name}" in html
    # A host that says where the files are is followed.
    mirror = "https://mirror.example/swagger-ui"
    settings.SPECTACULAR_SETTINGS = {"SWAGGER_UI_DIST": mirror}
    monkeypatch.setattr(spectacular_settings, "SWAGGER_UI_DIST", mirror)
    assert "mirror.example" in hosts_named(client.get("/api/docs/"))
    # Without the sidecar, drf-spectacular's CDN (the README says how to get the sidecar).
    settings.SPECTACULAR_SETTINGS = {}
    monkeypatch.setattr(
        spectacular_settings, "SWAGGER_UI_DIST", SPECTACULAR_DEFAULTS["SWAGGER_UI_DIST"]
    )
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if "sidecar" not in app]
    assert "cdn.jsdelivr.net" in hosts_named(client.get("/api/docs/"))
