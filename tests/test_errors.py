"""CONTRACT.md section 9: every error is JSON {status_code, detail, extra}, with nothing internal in it."""

from litestar.testing import TestClient


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
    assert body["extra"]


def test_unexpected_failure_is_500_with_a_request_id_only(api: TestClient) -> None:
    # A token that is not valid UTF-8 text for the hash lookup cannot crash the server into a trace.
    response = api.get("/api/workspaces", headers={"Authorization": "Bearer " + "x" * 5000})
    assert response.status_code == 401
