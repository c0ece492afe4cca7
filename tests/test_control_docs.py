"""The OpenAPI document and /docs page against the app itself: no route undocumented, no stale path,
and the documented response fields really present in answers from a real broker."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from control import create_app
from control_support import start_control
from protocol.config import load_config

HIDDEN_METHODS = {"HEAD", "OPTIONS"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def openapi_path(rule: str) -> str:
    """Werkzeug's ``/api/trials/<int:trial_id>`` -> OpenAPI's ``/api/trials/{trial_id}``."""
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


@pytest.fixture
def app():
    app = create_app(load_config({}))
    yield app
    app.extensions["phantomlink"]["broker"].close()


def routes(app) -> set[tuple[str, str]]:
    """Every (path, method) the app serves, except static files (Swagger UI's JS and CSS)."""
    return {(openapi_path(rule.rule), method.lower())
            for rule in app.url_map.iter_rules() if not rule.endpoint.endswith(".static")
            for method in rule.methods - HIDDEN_METHODS}


def test_every_route_is_in_the_openapi_document_and_nothing_else(app):
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    served = routes(app)
    assert served - documented == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "documented routes that do not exist"
    assert len(served) >= 24


def test_every_operation_documents_its_errors_with_the_error_schema(app):
    spec = app.test_client().get("/openapi.json").get_json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["tags"], (method, path)
            assert "200" in op["responses"]
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            for param in op.get("parameters", []):
                assert param["in"] in ("path", "query"), (method, path, param)
                assert (param["in"] == "path") == ("{" + param["name"] + "}" in path), param
            refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(op).replace("'", '"'))
            assert set(refs) <= set(spec["components"]["schemas"]), (method, path)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")
def test_docs_page_renders_every_operation_in_a_browser_offline(app, broker, spawn):
    """Headless Chromium opens /docs of a real control; Swagger UI, loaded only from control's
    own files, lists every route of the app."""
    _, http = start_control(spawn, broker.ready["control"])
    url = f"http://{http.host}:{http.port}/docs"
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=90)
    dom = run.stdout
    assert "swagger-ui" in dom, run.stderr[-2000:]
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {path for path, _ in routes(app)} <= rendered, run.stderr[-2000:]
    assert "Failed to load API definition" not in dom


def documented_fields(spec: dict, name: str) -> set[str]:
    schema = spec["components"]["schemas"][name]
    fields: set[str] = set()
    for part in schema.get("allOf", [schema]):
        if "$ref" in part:
            fields |= documented_fields(spec, part["$ref"].rsplit("/", 1)[-1])
        fields |= set(part.get("properties", {}))
    return fields


def test_live_answers_carry_every_documented_field(broker):
    config = load_config({}, control_endpoint=broker.ready["control"])
    app = create_app(config)
    client = app.test_client()
    try:
        spec = client.get("/openapi.json").get_json()
        created = client.post("/api/sessions/create", json={"custom_code": "doc-fields"})
        assert created.status_code == 200
        trial_id = client.get("/api/trials").get_json()["trials"][0]["trial_id"]
        checks = [
            ("post", "/api/sessions/create", {"custom_code": "doc-fields-2"}, "Created"),
            ("get", "/api/sessions/doc-fields", None, "Session"),
            ("get", "/api/stats/doc-fields", None, "Stats"),
            ("get", "/api/stats", None, "Overall"),
            ("post", "/api/control/doc-fields/pause", None, "ControlResult"),
            ("get", f"/api/trials/{trial_id}", None, "Trial"),
            ("get", "/api/trials", None, "TrialList"),
            ("get", "/api/metadata", None, "Metadata"),
            ("get", "/health", None, "Health"),
            ("get", "/metrics", None, "Metrics"),
            ("post", "/api/sessions/cleanup", None, "Cleanup"),
            ("delete", "/api/sessions/doc-fields-2", None, "Deleted"),
            ("get", "/api/control/doc-fields/pause", None, "Error"),
        ]
        for method, path, body, schema in checks:
            reply = getattr(client, method)(path, json=body)
            doc = reply.get_json()
            missing = documented_fields(spec, schema) - set(doc)
            assert not missing, f"{method.upper()} {path}: documented but absent: {missing}"
        listed = client.get("/api/sessions").get_json()
        entry = listed["sessions"]["doc-fields"]
        assert documented_fields(spec, "SessionSummary") <= set(entry)
    finally:
        app.extensions["phantomlink"]["broker"].close()


def test_every_example_body_in_the_docs_is_accepted(broker):
    """"Try it out" in /docs pre-fills these bodies: each one must succeed against a real broker."""
    app = create_app(load_config({}, control_endpoint=broker.ready["control"]))
    client = app.test_client()
    try:
        assert client.post("/api/sessions/create", json={"custom_code": "doc-examples"}).status_code == 200
        spec = client.get("/openapi.json").get_json()
        tried = 0
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
                if "example" not in media:
                    continue
                reply = client.open(path.replace("{code}", "doc-examples"), method=method.upper(),
                                    json=media["example"])
                assert reply.status_code == 200, (method, path, media["example"], reply.get_json())
                tried += 1
        assert tried >= 9
    finally:
        app.extensions["phantomlink"]["broker"].close()
