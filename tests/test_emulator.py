"""The local endpoint emulator: a real HTTP server on 127.0.0.1, deterministic CXRReportGen answers, faults."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from node.emulator import EMULATOR_HEADER_VALUE
from node.models.cxrreportgen.emulator import NO_BOX_SENTENCE, cell_box, emulate_findings
from node.emulator.requestlog import fingerprint
from node.emulator.server import EmulatorServer
from node.models.cxrreportgen.contract import build_request, denormalize_box, parse_response


def to_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def chest_like(width: int, height: int, bright: tuple[int, int, int, int], dark: tuple[int, int, int, int],
               dtype=np.uint8, fill: int = 100, hi: int = 250, lo: int = 3) -> bytes:
    """A flat image with one bright and one dark rectangle given as pixel (x0, y0, x1, y1), end exclusive."""
    arr = np.full((height, width), fill, dtype=dtype)
    x0, y0, x1, y1 = bright
    arr[y0:y1, x0:x1] = hi
    x0, y0, x1, y1 = dark
    arr[y0:y1, x0:x1] = lo
    return to_png(arr)


@pytest.fixture
def emulator():
    with EmulatorServer() as server:
        yield server


def post(server: EmulatorServer, payload, **kw) -> httpx.Response:
    with httpx.Client(timeout=5, trust_env=False) as client:
        return client.post(kw.pop("url", server.url), json=payload, **kw)


def test_same_png_same_answer(emulator):
    png = chest_like(300, 200, (50, 0, 117, 67), (184, 134, 250, 200))
    first = post(emulator, build_request(frontal_png=png))
    second = post(emulator, build_request(frontal_png=png, indication="other text"))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    # the default reply is the sample client's form: rows whose output is a JSON string
    body = first.json()
    assert isinstance(body, list) and isinstance(body[0]["output"], str)
    assert json.loads(body[0]["output"]) == emulate_findings(png)
    assert first.headers["x-ms-emulator"] == EMULATOR_HEADER_VALUE
    assert "x-ms-model-version" not in first.headers  # as the real service: no version header by default
    versioned = post(emulator, build_request(frontal_png=png), url=emulator.model_url("cxrreportgen", "versioned"))
    assert versioned.headers["x-ms-model-version"] == "cxrreportgen-emulator-1"
    assert first.headers["x-request-id"] and first.headers["x-request-id"] != second.headers["x-request-id"]
    assert float(first.headers["x-emulator-elapsed-ms"]) >= 0


@pytest.mark.parametrize("width, height", [(300, 200), (200, 301), (240, 240)])
def test_boxes_map_back_to_brightest_and_darkest_cells(emulator, width, height):
    c = min(width, height)
    dx, dy = (width - c) / 2, (height - c) / 2
    # bright: the cell of the patient's right upper zone (image left, top); dark: left lower zone
    bright = (int(np.ceil(dx)), int(np.ceil(dy)), int(dx + c / 3), int(dy + c / 3))
    dark = (int(np.ceil(dx + 2 * c / 3)), int(np.ceil(dy + 2 * c / 3)), int(dx + c), int(dy + c))
    png = chest_like(width, height, bright, dark)
    findings = parse_response(post(emulator, build_request(frontal_png=png)).json())
    opacity, lucency, no_box = findings
    assert opacity.text == "EMULATED: increased opacity in the right upper zone."
    assert lucency.text == "EMULATED: increased lucency in the left lower zone."
    assert no_box.text == NO_BOX_SENTENCE and no_box.boxes == ()
    assert opacity.boxes == (cell_box(0, 0),) and lucency.boxes == (cell_box(2, 2),)
    # mapped back with the sample client's centre-crop rule, the box is exactly that cell of the source image
    x0, y0, x1, y1 = denormalize_box(opacity.boxes[0], width, height, "center_crop")
    assert (x0, y0) == pytest.approx((dx, dy)) and (x1, y1) == pytest.approx((dx + c / 3, dy + c / 3))
    assert x0 <= bright[0] and y0 <= bright[1] and bright[2] <= x1 + 1e-9 and bright[3] <= y1 + 1e-9
    x0, y0, x1, y1 = denormalize_box(lucency.boxes[0], width, height, "center_crop")
    assert (x1, y1) == pytest.approx((dx + c, dy + c))
    # and the pixels inside the mapped box are the brightest region of the image
    arr = np.asarray(Image.open(io.BytesIO(png)))
    bx = denormalize_box(opacity.boxes[0], width, height, "center_crop")
    region = arr[int(np.ceil(bx[1])):int(bx[3]), int(np.ceil(bx[0])):int(bx[2])]
    assert region.mean() == 250


def test_middle_cell_sixteen_bit_and_sides():
    # 16-bit grey, bright block in the centre cell, dark block in the image's right column = patient's left
    arr = np.full((90, 90), 20000, dtype=np.uint16)
    arr[30:60, 30:60] = 60000
    arr[0:30, 60:90] = 10
    findings = emulate_findings(to_png(arr))
    assert findings[0] == ["EMULATED: increased opacity in the central middle zone.", [list(cell_box(1, 1))]]
    assert findings[1] == ["EMULATED: increased lucency in the left upper zone.", [list(cell_box(0, 2))]]


def test_uniform_and_tiny_images(emulator):
    assert emulate_findings(to_png(np.full((10, 10), 5, np.uint8)))[0][1] is None
    # the 2x2 example of the product page is answered
    tiny = to_png(np.array([[0, 255], [255, 0]], np.uint8))
    r = post(emulator, build_request(frontal_png=tiny))
    assert r.status_code == 200 and parse_response(r.json())


def test_lateral_prior_and_no_text_echo(emulator):
    png = chest_like(64, 64, (0, 0, 21, 21), (43, 43, 64, 64))
    secret = "Patient Jane Roe MRN 12345 cough"
    payload = build_request(frontal_png=png, lateral_png=png, prior_png=png, indication=secret,
                            technique=secret, comparison=secret, prior_report=secret)
    r = post(emulator, payload)
    assert r.status_code == 200
    texts = [f.text for f in parse_response(r.json())]
    assert any("lateral" in t for t in texts) and any("prior" in t for t in texts)
    assert all(t.startswith("EMULATED") for t in texts)
    assert "Jane" not in r.text and "12345" not in r.text and "cough" not in r.text
    [entry] = emulator.requests
    assert "Jane" not in json.dumps(entry)
    assert entry["columns"] == list(payload["input_data"]["columns"]) and entry["status"] == 200


def test_sample_client_encodebytes_and_object_shape():
    png = chest_like(64, 64, (0, 0, 21, 21), (43, 43, 64, 64))
    payload = {"input_data": {"columns": ["frontal_image"], "index": [0],
                              "data": [[base64.encodebytes(png).decode("utf-8")]]}}
    with EmulatorServer(response_shape="object") as server:
        body = post(server, payload).json()
        assert body == {"output": emulate_findings(png)}
        server.configure(response_shape="rows")
        assert isinstance(post(server, payload).json(), list)
        server.script_faults([{"shape": "object"}])
        assert isinstance(post(server, payload).json(), dict)
        # explicit model route
        assert post(server, payload, url=server.model_url("cxrreportgen")).status_code == 200
        assert post(server, payload, url=server.model_url("nosuchmodel")).status_code == 404


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        ({"input_data": {"columns": ["image", "text"], "index": [0], "data": [["x", "y"]]}}, 400, "no emulated model"),
        ({"input_data": {"columns": ["frontal_image", "bogus"], "index": [0], "data": [["x", "y"]]}}, 400, "unknown"),
        ({"input_data": {"columns": ["frontal_image"], "index": [0], "data": [["aGVsbG8="]]}}, 400, "cannot be decoded"),
        ({"input_data": {"columns": ["frontal_image"], "index": [0], "data": [["a", "b"]]}}, 400, "2 values"),
        ({"nothing": 1}, 400, "input_data"),
    ],
)
def test_bad_requests_are_refused_with_a_message(emulator, payload, status, fragment):
    # as Azure ML answers a model container's non-200: 424, the container's status and a reason in headers
    r = post(emulator, payload)
    assert r.status_code == 424
    assert r.headers["ms-azureml-model-error-statuscode"] == str(status)
    assert r.headers["ms-azureml-model-error-reason"]
    assert fragment in r.json()["message"]
    assert r.headers["x-ms-emulator"]
    assert emulator.requests[-1]["status"] == 424


def test_key_auth_and_admin_routes():
    png = chest_like(30, 30, (0, 0, 10, 10), (20, 20, 30, 30))
    payload = build_request(frontal_png=png)
    with EmulatorServer(key="s3cret") as server, httpx.Client(timeout=5, trust_env=False) as client:
        r = client.post(server.url, json=payload)
        assert r.status_code == 401 and "message" in r.json()
        r = client.post(server.url, json=payload, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        # admin routes need the key too
        assert client.post(f"{server.base_url}/_emulator/faults", json={"faults": []}).status_code == 401
        r = client.post(f"{server.base_url}/_emulator/faults", headers=ok,
                        json={"faults": [{"status": 503}, {"status": 429, "retry_after": 2, "retry_after_ms": 1500}]})
        assert r.json() == {"pending": 2}
        assert client.post(f"{server.base_url}/_emulator/faults", headers=ok,
                           json={"faults": [{"stauts": 500}]}).status_code == 400
        # an unauthenticated request consumes no fault
        assert client.post(server.url, json=payload).status_code == 401
        assert client.post(server.url, json=payload, headers=ok).status_code == 503
        r = client.post(server.url, json=payload, headers=ok)
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "1500"
        assert client.post(server.url, json=payload, headers=ok).status_code == 200
        log = client.get(f"{server.base_url}/_emulator/requests", headers=ok).json()
        assert [e["status"] for e in log["requests"]] == [401, 401, 401, 503, 429, 200]
        assert all("authorization" not in e["headers"] for e in log["requests"])
        assert log["requests"][-1]["authorization"] == fingerprint("Bearer s3cret")
        assert "s3cret" not in json.dumps(log)
        assert client.post(f"{server.base_url}/_emulator/reset", headers=ok).status_code == 200
        assert server.requests == [] and server.pending_faults == []
        assert client.get(f"{server.base_url}/").status_code == 200  # liveness needs no key


def test_fault_kinds(emulator):
    png = chest_like(30, 30, (0, 0, 10, 10), (20, 20, 30, 30))
    payload = build_request(frontal_png=png)
    emulator.script_faults([
        {"malformed": True},
        {"body": {"anything": [1, 2]}},
        {"status": 424, "model_status": 507, "model_reason": "oom"},
        {"close": True},
        {"status": 500, "repeat": 2},
    ])
    r = post(emulator, payload)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert post(emulator, payload).json() == {"anything": [1, 2]}
    r = post(emulator, payload)
    assert r.status_code == 424
    assert r.headers["ms-azureml-model-error-statuscode"] == "507"
    assert r.headers["ms-azureml-model-error-reason"] == "oom"
    with pytest.raises(httpx.RemoteProtocolError):
        post(emulator, payload)
    assert post(emulator, payload).status_code == 500
    assert post(emulator, payload).status_code == 500
    assert post(emulator, payload).status_code == 200
    statuses = [e["status"] for e in emulator.requests]
    assert statuses == [200, 200, 424, None, 500, 500, 200]
    assert emulator.requests[3]["state"] == "closed" and emulator.requests[3]["fault"] == {"close": True}
    with pytest.raises(ValueError):
        emulator.script_faults([{"status": "500"}])


def test_stall_and_delay():
    png = chest_like(30, 30, (0, 0, 10, 10), (20, 20, 30, 30))
    payload = build_request(frontal_png=png)
    with EmulatorServer(delay_seconds=0.2) as server:
        r = post(server, payload)
        assert r.status_code == 200 and float(r.headers["x-emulator-elapsed-ms"]) >= 200
        server.configure(delay_seconds=0)
        server.script_faults([{"stall_seconds": 0.3, "status": 503}])
        r = post(server, payload)
        assert r.status_code == 503 and float(r.headers["x-emulator-elapsed-ms"]) >= 300


def test_stop_frees_the_port_and_wakes_stalls():
    server = EmulatorServer().start()
    port = server.port
    server.script_faults([{"stall_seconds": 30}])
    import threading

    def call():
        try:
            post(server, {"input_data": {"columns": ["frontal_image"], "index": [0], "data": [["x"]]}})
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=call)
    t.start()
    import time

    deadline = time.monotonic() + 5
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    [entry] = server.requests  # logged on arrival, while still stalling
    assert entry["state"] == "in_progress" and entry["status"] is None
    started = time.monotonic()
    server.stop()
    t.join(5)
    assert time.monotonic() - started < 5 and not t.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/score", json={}, timeout=1, trust_env=False)
