"""The API key: every route needs it except the probes and the metrics."""

from __future__ import annotations

from tests.api.conftest import API_KEY
from tests.api.server import ApiServer

OPEN_ROUTES = ("/healthz", "/readyz", "/metrics")
PROTECTED_ROUTES = (
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/x"),
    ("DELETE", "/v1/jobs/x"),
    ("GET", "/v1/jobs/x/result"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/avatars"),
    ("POST", "/v1/avatars"),
    ("GET", "/v1/avatars/x"),
    ("DELETE", "/v1/avatars/x"),
    ("POST", "/easy/submit"),
    ("GET", "/easy/query?code=x"),
    ("GET", "/v1/system"),
)


def test_protected_routes_refuse_a_missing_or_wrong_key(api: ApiServer) -> None:
    with api.client(api_key="") as anonymous, api.client(api_key="wrong") as wrong:
        for method, path in PROTECTED_ROUTES:
            for client in (anonymous, wrong):
                reply = client.request(method, path)
                assert reply.headers["www-authenticate"] == "Bearer"
                if path.startswith("/easy/"):
                    # HeyGem's client throws on any non-2xx: the refusal is its code 9999.
                    assert reply.status_code == 200, (method, path, reply.text)
                    assert reply.json()["code"] == 9999
                    assert reply.json()["msg"].startswith("auth:")
                else:
                    assert reply.status_code == 401, (method, path, reply.text)
                    assert reply.json()["error"]["stage"] == "auth"


def test_the_right_key_is_let_in(api: ApiServer) -> None:
    with api.client(api_key=API_KEY) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/avatars").status_code == 200
        system = client.get("/v1/system").json()
        assert {model["name"] for model in system["models"]} == {"lipsync", "face_detector"}
        assert system["readiness_problems"] == []


def test_probes_and_metrics_need_no_key(api: ApiServer) -> None:
    with api.client(api_key="") as anonymous:
        for path in OPEN_ROUTES:
            assert anonymous.get(path).status_code == 200, path
        ready = anonymous.get("/readyz").json()
        assert ready["ready"] is True
        assert ready["models"]["lipsync"]["face_size"] == 96


def test_openapi_docs_describe_every_route(api: ApiServer) -> None:
    with api.client(api_key="") as anonymous:
        assert anonymous.get("/docs").status_code == 200
        paths = set(anonymous.get("/openapi.json").json()["paths"])
    routes = {path.split("?")[0].replace("/x", "/{id}") for _, path in PROTECTED_ROUTES}
    assert {p.replace("{job_id}", "{id}").replace("{avatar_id}", "{id}") for p in paths} >= routes
