"""The CXRReportGen request/reply contract: build_request, parse_response, denormalize_box (no network)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from node.models.cxrreportgen.contract import COLUMNS, RawFinding, build_request, denormalize_box, parse_response

FINDINGS = [
    ["The heart size is normal.", None],
    ["Lungs demonstrate blunting of both costophrenic angles.", [[0.005, 0.555, 0.965, 0.865]]],
    ["Bilateral effusions.", [[0.1, 0.6, 0.3, 0.8], [0.7, 0.6, 0.9, 0.8]]],
]
EXPECTED = [
    RawFinding("The heart size is normal.", ()),
    RawFinding("Lungs demonstrate blunting of both costophrenic angles.", ((0.005, 0.555, 0.965, 0.865),)),
    RawFinding("Bilateral effusions.", ((0.1, 0.6, 0.3, 0.8), (0.7, 0.6, 0.9, 0.8))),
]


def png(width: int = 4, height: int = 3, value: int = 7) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, "PNG")
    return buf.getvalue()


# --- parse_response ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"output": FINDINGS}, id="product-page-object"),
        pytest.param([{"output": json.dumps(FINDINGS)}], id="sample-client-rows-json-string"),
        pytest.param([{"output": FINDINGS}], id="rows-list"),
        pytest.param({"output": json.dumps(FINDINGS)}, id="object-json-string"),
        pytest.param(json.dumps({"output": FINDINGS}), id="string-of-object"),
        pytest.param(json.dumps([{"output": json.dumps(FINDINGS)}]), id="string-of-rows"),
        pytest.param(json.dumps(json.dumps([{"output": json.dumps(FINDINGS)}])), id="doubly-encoded"),
        pytest.param(FINDINGS, id="bare-findings"),
    ],
)
def test_parse_every_shape(body):
    assert parse_response(body) == EXPECTED


def test_parse_empty_findings_and_empty_box_list():
    assert parse_response({"output": []}) == []
    assert parse_response([{"output": "[]"}]) == []
    assert parse_response({"output": [["Clear lungs.", []]]}) == [RawFinding("Clear lungs.", ())]


def test_parse_clamps_float_noise():
    [f] = parse_response({"output": [["x", [[-1e-9, 0.0, 1.00000001, 1]]]]})
    assert f.boxes == ((0.0, 0.0, 1.0, 1.0),)
    assert all(isinstance(v, float) for v in f.boxes[0])


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('[{"output": "[[\\"x\\", nul', "not valid JSON"),
        ([{"output": '[["x", [[0.1, 0.2'}], "not valid JSON"),
        ({"result": []}, "without 'output'"),
        ([], "empty list"),
        ([{"output": "[]"}, {"output": "[]"}], "2 rows"),
        ({"output": [["x"]]}, "finding 1"),
        ({"output": [[3, None]]}, "not a string"),
        ({"output": [["x", [[0.1, 0.2, 0.3]]]]}, "4 numbers"),
        ({"output": [["x", [[0.1, 0.2, 1.3, 0.4]]]]}, "outside [0, 1]"),
        ({"output": [["x", [[0.5, 0.2, 0.4, 0.4]]]]}, "x_min 0.5 > x_max 0.4"),
        ({"output": [["x", [[0.1, 0.5, 0.4, 0.4]]]]}, "y_min 0.5 > y_max 0.4"),
        ({"output": [["x", [[0.1, "0.2", 0.4, 0.4]]]]}, "not a number"),
        ({"output": [["x", [[0.1, True, 0.4, 0.4]]]]}, "not a number"),
        ({"output": [["x", [[0.1, float("nan"), 0.4, 0.4]]]]}, "not a finite number"),
        ({"output": [["x", "0.1,0.2"]]}, "boxes must be"),
        ({"output": {"a": 1}}, "expected a list"),
        (42, "unexpected int"),
    ],
)
def test_parse_rejects_malformed(body, fragment):
    with pytest.raises(ValueError) as info:
        parse_response(body)
    assert fragment in str(info.value)
    assert "CXRReportGen reply" in str(info.value)


# --- denormalize_box ---------------------------------------------------------------------------------

BOX = (0.25, 0.5, 0.75, 1.0)


def test_denormalize_landscape():
    # W=400, H=300: c=300, x offset 50, y offset 0
    assert denormalize_box(BOX, 400, 300, "center_crop") == (0.25 * 300 + 50, 0.5 * 300, 0.75 * 300 + 50, 300.0)
    assert denormalize_box(BOX, 400, 300, "center_crop") == (125.0, 150.0, 275.0, 300.0)
    assert denormalize_box(BOX, 400, 300, "full_image") == (100.0, 150.0, 300.0, 300.0)


def test_denormalize_portrait():
    # W=300, H=501: c=300, y offset 100.5 (fractional: no rounding)
    assert denormalize_box(BOX, 300, 501, "center_crop") == (75.0, 250.5, 225.0, 400.5)
    assert denormalize_box(BOX, 300, 501, "full_image") == (75.0, 250.5, 225.0, 501.0)


def test_denormalize_square_and_default():
    assert denormalize_box([0, 0, 1, 1], 512, 512) == (0.0, 0.0, 512.0, 512.0)
    assert denormalize_box((0.1, 0.2, 0.3, 0.4), 1000, 1000, "full_image") == pytest.approx((100, 200, 300, 400))


def test_denormalize_rejects_bad_arguments():
    with pytest.raises(ValueError):
        denormalize_box(BOX, 0, 10, "center_crop")
    with pytest.raises(ValueError):
        denormalize_box(BOX, 10, 10, "whole")  # type: ignore[arg-type]


# --- build_request -----------------------------------------------------------------------------------

def test_build_request_frontal_only():
    frontal = png()
    req = build_request(frontal_png=frontal)
    assert req == {"input_data": {"columns": ["frontal_image"], "index": [0],
                                  "data": [[base64.b64encode(frontal).decode()]]}}
    assert base64.b64decode(req["input_data"]["data"][0][0], validate=True) == frontal
    json.dumps(req)  # serialisable


def test_build_request_all_inputs_in_documented_order():
    frontal, lateral, prior = png(value=1), png(value=2), png(value=3)
    req = build_request(prior_report="Prior: clear.", comparison="None", technique="PA and lateral",
                        indication="Cough", prior_png=prior, lateral_png=lateral, frontal_png=frontal)
    data = req["input_data"]
    assert data["columns"] == list(COLUMNS)
    assert data["index"] == [0]
    row = data["data"][0]
    assert len(row) == len(COLUMNS)
    values = dict(zip(data["columns"], row))
    assert base64.b64decode(values["frontal_image"], validate=True) == frontal
    assert base64.b64decode(values["lateral_image"], validate=True) == lateral
    assert base64.b64decode(values["prior_image"], validate=True) == prior
    assert values["indication"] == "Cough" and values["technique"] == "PA and lateral"
    assert values["comparison"] == "None" and values["prior_report"] == "Prior: clear."


def test_build_request_leaves_out_absent_and_blank_inputs():
    req = build_request(frontal_png=png(), technique="AP portable", indication="  ", comparison=None)
    assert req["input_data"]["columns"] == ["frontal_image", "technique"]
    assert req["input_data"]["data"][0][1] == "AP portable"


def test_build_request_refuses_non_images():
    with pytest.raises(ValueError):
        build_request(frontal_png=b"not an image")
    with pytest.raises(TypeError):
        build_request(frontal_png="iVBOR...")  # type: ignore[arg-type]
