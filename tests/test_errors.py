"""CONTRACT.md section 9: every error is JSON {status_code, detail, extra}, with nothing internal in it."""

import asyncio
import logging

import httpx
from litestar import get
from litestar.testing import TestClient

from app.main import create_app
from tests.conftest import OPERATOR_TOKEN


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status_code", "detail", "extra"} and body["status_code"] == status
    assert "Traceback" not in response.text and "SELECT" not in response.text
    return body


def test_unknown_route_is_404(api: TestClient) -> None:
    assert_error(api.get("/api/no-such-thing"), 404)


def test_wrong_method_is_405(api: TestClient) -> None:
    assert_error(api.delete("/api/health"), 405)


def test_malformed_json_is_400_and_invalid_value_is_422(api: TestClient) -> None:
    assert_error(api.post("/api/workspaces", content=b'{"name":', headers={"Content-Type": "application/json"}), 400)
    body = assert_error(api.post("/api/workspaces", json={"name": 3}), 422)
    assert body["extra"] == [{"field": "name", "message": "Expected `str`, got `int`"}]
    missing = assert_error(api.post("/api/users", json={}), 422)
    assert missing["extra"][0]["field"] == "email"
    deep = b'{"name": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    assert_error(api.post("/api/workspaces", content=deep, headers={"Content-Type": "application/json"}), 400)


def test_a_body_error_names_the_field_as_the_client_sent_it(api: TestClient) -> None:
    json_type = {"Content-Type": "application/json"}
    assert_error(api.post("/api/workspaces", headers=json_type), 400)  # no body at all
    unknown = assert_error(api.post("/api/workspaces", json={"name": "a", "colour": "blue"}), 422)
    assert [item["field"] for item in unknown["extra"]] == ["colour"]
    not_object = assert_error(api.post("/api/workspaces", json=[1]), 422)
    assert [item["field"] for item in not_object["extra"]] == ["body"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_unexpected_failure_is_500_with_a_request_id_only(settings) -> None:
    @get("/api/explode")
    async def explode() -> None:
        raise RuntimeError("SELECT secret FROM internal_table")

    app = create_app(settings)
    app.register(explode)
    collected = Collect()
    logging.getLogger("app.errors").addHandler(collected)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/api/explode", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    finally:
        logging.getLogger("app.errors").removeHandler(collected)
    body = assert_error(response, 500)
    assert "secret" not in response.text and "internal_table" not in response.text
    logged = [record for record in collected.records if body["extra"]["request_id"] in record.getMessage()]
    assert logged and logged[0].exc_info is not None  # the trace stays on the server


def test_a_long_garbage_token_is_401(api: TestClient) -> None:
    response = api.get("/api/workspaces", headers={"Authorization": "Bearer " + "x" * 5000})
    assert response.status_code == 401


def test_two_authorization_headers_are_401(api: TestClient) -> None:
    # Each would be let in alone; together, a proxy in front may have checked the other one. Sent as two headers
    # (the test client would join them into one), to a route that answers the operator without ClickHouse.
    async def request() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app), base_url="http://test") as client:
            return await client.get("/api/metrics/limits", headers=[("Authorization", f"Bearer {OPERATOR_TOKEN}"),
                                                                    ("Authorization", f"Bearer {OPERATOR_TOKEN}")])

    assert_error(asyncio.run(request()), 401)
