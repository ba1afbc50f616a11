"""MedImageParse (2D) and MedImageParse 3D contracts: request shapes, reply parsing (every shape seen), the emulator
handlers, and a real HTTP round trip through EndpointClient."""

from __future__ import annotations

import base64
import gzip
import io
import json
import uuid

import nibabel
import numpy as np
import pytest
from PIL import Image

from converters.volume import Volume
from node.config import EndpointSection
from node.emulator import RequestError
from node.models.medimageparse.emulator2d import emulate_category, emulate_masks, threshold_for
from node.models.medimageparse.emulator3d import MedImageParse3DHandler, emulate_volume_mask
from node.emulator.server import EmulatorServer
from node.models.medimageparse import contract2d as mip
from node.models.medimageparse import contract3d as mip3d
from node.invoke.client import EndpointClient

SIZE = 1024


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def gradient_png(mode: str = "L") -> bytes:
    """Horizontal ramp 0..255 over 1024 columns (so every threshold cuts at a known column)."""
    ramp = np.tile((np.arange(SIZE) // 4).astype(np.uint8), (SIZE, 1))
    if mode == "RGB":
        return png_bytes(np.stack([ramp, ramp, ramp], axis=-1))
    return png_bytes(ramp)


def features(masks: np.ndarray) -> dict:
    return {"data": base64.b64encode(masks.tobytes()).decode("ascii"), "shape": list(masks.shape),
            "dtype": str(masks.dtype)}


def ct_volume() -> Volume:
    rng = np.random.default_rng(7)
    data = rng.integers(-1024, 1500, size=(12, 10, 6)).astype(np.int16)
    affine = np.array([[-0.7, 0.02, 0.0, 120.5],
                       [0.01, -0.7, 0.1, 98.25],
                       [0.0, 0.05, 2.5, -310.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return Volume(data=data, affine=affine, source_sop_uids=[f"1.2.3.{k}" for k in range(6)])


def mr_nifti_gz() -> bytes:
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    image = nibabel.Nifti1Image(data, np.diag([1.5, 1.5, 4.0, 1.0]))
    return gzip.compress(image.to_bytes())


def section(url: str, model: str) -> EndpointSection:
    return EndpointSection(model=model, url=url, auth="none", backoff_initial_seconds=0.01,
                           backoff_max_seconds=0.05, timeout_seconds=30, connect_timeout_seconds=2, max_attempts=2)


def client(url: str, model: str) -> EndpointClient:
    return EndpointClient(f"{model}-{uuid.uuid4().hex[:8]}", section(url, model))


# --- 2D request ---------------------------------------------------------------------------------------

def test_2d_request_shape():
    a, b = gradient_png(), png_bytes(np.zeros((8, 8), np.uint8))
    payload = mip.build_request([a, b], ["liver", " pancreas "])
    data = payload["input_data"]
    assert data["columns"] == ["image", "text"]
    assert data["index"] == [0, 1]
    assert [row[1] for row in data["data"]] == ["liver & pancreas", "liver & pancreas"]
    assert base64.b64decode(data["data"][0][0]) == a and base64.b64decode(data["data"][1][0]) == b
    json.dumps(payload)


@pytest.mark.parametrize("images, prompts, exc", [
    ([], ["liver"], ValueError),
    ([b"not a png"], ["liver"], ValueError),
    ([gradient_png()], [], ValueError),
    ([gradient_png()], ["liver & lung"], ValueError),
    ([gradient_png()], "liver", TypeError),
    (gradient_png(), ["liver"], TypeError),
])
def test_2d_request_refuses_bad_input(images, prompts, exc):
    with pytest.raises(exc):
        mip.build_request(images, prompts)


# --- 2D reply -----------------------------------------------------------------------------------------

def test_2d_parse_json_strings():
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[0, :10, :20] = 255
    masks[1, 5, 5] = 200
    body = [{"image_features": json.dumps(features(masks)), "text_features": ["liver", "pancreas"]}]
    [result] = mip.parse_response(json.dumps(body).encode(), n_prompts=2, n_images=1)
    assert result.masks.dtype == np.uint8 and result.masks.shape == (2, SIZE, SIZE)
    assert np.array_equal(result.masks, masks)
    assert result.categories == ["liver", "pancreas"]


def test_2d_parse_product_page_single_quotes():
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[1, -1, -1] = 255
    f = features(masks)
    # the product page's example: a Python-literal string with newlines, and text_features possibly a string too
    image_features = "{ \n    'data': '%s',\n    'shape': [2, 1024, 1024], \n    'dtype': 'uint8'}" % f["data"]
    for text_features in (["liver", "pancreas"], "['liver', 'pancreas']", '["liver", "pancreas"]'):
        [result] = mip.parse_response([{"image_features": image_features, "text_features": text_features}])
        assert np.array_equal(result.masks, masks)
        assert result.categories == ["liver", "pancreas"]
    # rows that are themselves JSON strings ("a list of JSON-formatted strings"), and a lone object
    row = json.dumps({"image_features": json.dumps(f), "text_features": ["liver", "pancreas"]})
    assert np.array_equal(mip.parse_response([row])[0].masks, masks)
    assert np.array_equal(mip.parse_response({"image_features": f, "text_features": ["a", "b"]})[0].masks, masks)


def test_2d_parse_bool_masks_become_0_255():
    masks = np.zeros((1, SIZE, SIZE), bool)
    masks[0, 3, 4] = True
    [result] = mip.parse_response([{"image_features": json.dumps(features(masks)), "text_features": ["x"]}])
    assert result.masks.dtype == np.uint8 and result.masks[0, 3, 4] == 255 and result.masks.sum() == 255


@pytest.mark.parametrize("masks, categories, kw, fragment", [
    (np.zeros((2, 512, 512), np.uint8), ["a", "b"], {}, "shape"),
    (np.zeros((SIZE, SIZE), np.uint8), ["a"], {}, "shape"),
    (np.zeros((2, SIZE, SIZE), np.float32), ["a", "b"], {}, "dtype"),
    (np.zeros((2, SIZE, SIZE), np.uint8), ["a"], {}, "categories"),
    (np.zeros((2, SIZE, SIZE), np.uint8), ["a", "b"], {"n_prompts": 3}, "2 masks for 3 prompts"),
    (np.zeros((1, SIZE, SIZE), np.uint8), ["a"], {"n_images": 2}, "1 rows for 2 images"),
])
def test_2d_wrong_masks_are_value_errors(masks, categories, kw, fragment):
    body = [{"image_features": json.dumps(features(masks)), "text_features": categories}]
    with pytest.raises(ValueError, match=fragment):
        mip.parse_response(body, **kw)


def test_2d_data_not_matching_shape_is_a_value_error():
    f = features(np.zeros((2, SIZE, SIZE), np.uint8))
    f["shape"] = [3, SIZE, SIZE]
    with pytest.raises(ValueError, match="bytes of data for shape"):
        mip.parse_response([{"image_features": json.dumps(f), "text_features": ["a", "b", "c"]}])
    for bad in ([], [{"text_features": ["a"]}], "not json {", [{"image_features": "{'data': 1}"}]):
        with pytest.raises(ValueError):
            mip.parse_response(bad)


# --- 2D emulator --------------------------------------------------------------------------------------

def test_2d_emulated_masks_follow_the_documented_thresholds():
    for mode in ("L", "RGB"):
        masks, categories = emulate_masks(gradient_png(mode), ["liver", "neoplastic cells", "left kidney", "xyz"])
        assert masks.shape == (4, SIZE, SIZE) and masks.dtype == np.uint8
        assert set(np.unique(masks)) <= {0, 255}
        value = np.arange(SIZE) // 4
        for k in range(4):
            assert threshold_for(k) == 128 >> k
            assert np.array_equal(masks[k, 0] == 255, value > (128 >> k))
        assert categories == ["liver", "histology structure", "kidney", "other"]
    assert threshold_for(20) == 0
    assert emulate_category("Pleural EFFUSION") == "fluid disturbance"


def test_2d_emulator_refuses_wrong_size_and_garbage():
    from node.models.medimageparse.emulator2d import HANDLER

    small = base64.b64encode(png_bytes(np.zeros((8, 8), np.uint8))).decode()
    with pytest.raises(RequestError, match="1024x1024"):
        HANDLER.score({"columns": ["image", "text"], "index": [0], "data": [[small, "liver"]]}, {})
    with pytest.raises(RequestError, match="cannot be decoded"):
        HANDLER.score({"columns": ["image", "text"], "index": [0], "data": [["aGVsbG8=", "liver"]]}, {})
    with pytest.raises(RequestError, match="columns"):
        HANDLER.score({"columns": ["image"], "index": [0], "data": [["x"]]}, {})


def test_2d_round_trip_over_http_both_reply_shapes():
    png = gradient_png("RGB")
    payload = mip.build_request([png], ["liver", "cell nuclei"])
    expected, categories = emulate_masks(png, ["liver", "cell nuclei"])
    with EmulatorServer(model="medimageparse", variants=["versioned"]) as server:
        with client(server.url, "medimageparse") as c:
            reply = c.score(payload)
            assert reply.emulated and reply.model_version == "medimageparse-emulator-1"
            [result] = mip.parse_response(reply.body, n_prompts=2, n_images=1)
            assert np.array_equal(result.masks, expected) and result.categories == categories
            server.script_faults([{"shape": "object"}])  # the product page's single-quoted form
            reply = c.score(payload)
            assert reply.body[0]["image_features"].startswith("{'data': '")
            assert np.array_equal(mip.parse_response(reply.body)[0].masks, expected)
        # the explicit route works without model=
        with client(server.model_url("medimageparse"), "medimageparse") as c:
            assert np.array_equal(mip.parse_response(c.score(payload).body)[0].masks, expected)


# --- 3D request ---------------------------------------------------------------------------------------

def test_3d_request_shape_and_size_check():
    nii = ct_volume().to_nifti_gz_bytes()
    payload = mip3d.build_request(nii, " pancreas ")
    assert payload == {"input_data": {"columns": ["image", "text"], "index": [0],
                                      "data": [[base64.b64encode(nii).decode("ascii"), "pancreas"]]}}
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert mip3d.request_size(len(nii), "pancreas") == len(body)
    mip3d.check_request_size(len(body), len(body))  # at the limit: fine
    with pytest.raises(ValueError, match=rf"{len(body) + 1} bytes .* exceeds .* limit of {len(body)} bytes"):
        mip3d.check_request_size(len(body) + 1, len(body))
    with pytest.raises(ValueError, match="exceeds the endpoint's limit"):
        mip3d.build_request(nii, "pancreas", max_request_bytes=len(body) - 1)
    assert mip3d.MAX_REQUEST_BYTES > 0
    with pytest.raises(ValueError):
        mip3d.build_request(b"plain", "pancreas")
    with pytest.raises(ValueError):
        mip3d.build_request(nii, "  ")


# --- 3D reply -----------------------------------------------------------------------------------------

def test_3d_parse_nifti_file_form_keeps_the_affine():
    nii = ct_volume().to_nifti_gz_bytes()
    source = nibabel.Nifti1Image.from_bytes(gzip.decompress(nii))
    mask = emulate_volume_mask(nii)
    b64 = base64.b64encode(gzip.compress(mask.to_bytes())).decode()
    for body in ([{"nifti_file": json.dumps({"data": b64})}], [{"nifti_file": {"data": b64}}],
                 json.dumps([{"nifti_file": json.dumps({"data": b64})}])):
        image = mip3d.parse_response(body, expected_shape=source.shape)
        assert np.array_equal(image.affine, source.affine)
        assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(mask.dataobj))
    # an uncompressed .nii inside is fine too
    raw = base64.b64encode(mask.to_bytes()).decode()
    assert mip3d.parse_response([{"nifti_file": json.dumps({"data": raw})}]).shape == source.shape


def test_3d_parse_image_features_form_takes_the_request_affine():
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[1, 2, 0] = 1
    affine = np.array([[0.0, 0.0, 2.0, -5.0], [0.8, 0.0, 0.0, 3.0], [0.0, 0.8, 0.0, 7.0], [0, 0, 0, 1]])
    body = [{"image_features": json.dumps(features(arr))}]
    image = mip3d.parse_response(body, affine=affine, expected_shape=(4, 5, 3))
    assert np.array_equal(image.affine, affine) and np.array_equal(np.asanyarray(image.dataobj), arr)
    assert np.array_equal(mip3d.parse_response(body).affine, np.eye(4))
    single_quoted = [{"image_features": repr(features(arr))}]
    assert np.array_equal(np.asanyarray(mip3d.parse_response(single_quoted).dataobj), arr)
    # image_features holding a NIfTI file instead of a raw array
    nifti = nibabel.Nifti1Image(arr, affine)
    b64 = base64.b64encode(gzip.compress(nifti.to_bytes())).decode()
    assert np.allclose(mip3d.parse_response([{"image_features": {"data": b64}}]).affine, affine)


@pytest.mark.parametrize("body, fragment", [
    ([], "0 rows"),
    ([{"nifti_file": "{}"}, {"nifti_file": "{}"}], "2 rows"),
    ([{"other": 1}], "without nifti_file"),
    ([{"nifti_file": json.dumps({"data": base64.b64encode(b"garbage" * 100).decode()})}], "NIfTI"),
    ([{"nifti_file": json.dumps({"data": base64.b64encode(b"\x1f\x8bgarbage").decode()})}], "gzip"),
    ([{"image_features": json.dumps(features(np.zeros((4, 5), np.uint8)))}], "3-D"),
])
def test_3d_bad_replies_are_value_errors(body, fragment):
    with pytest.raises(ValueError, match=fragment):
        mip3d.parse_response(body)


def test_3d_wrong_shape_is_a_value_error():
    body = [{"image_features": json.dumps(features(np.zeros((4, 5, 3), np.uint8)))}]
    with pytest.raises(ValueError, match="shape"):
        mip3d.parse_response(body, expected_shape=(4, 5, 4))


# --- 3D emulator --------------------------------------------------------------------------------------

def test_3d_emulated_mask_thresholds():
    volume = ct_volume()
    mask = emulate_volume_mask(volume.to_nifti_gz_bytes())
    assert np.array_equal(np.asanyarray(mask.dataobj), (volume.data > 0).astype(np.uint8))  # CT: > 0 HU
    mr = mr_nifti_gz()
    mr_mask = np.asanyarray(emulate_volume_mask(mr).dataobj)
    data = np.arange(60, dtype=np.float32).reshape(4, 5, 3)
    assert np.array_equal(mr_mask, (data > np.median(data)).astype(np.uint8))  # otherwise: > median
    with pytest.raises(RequestError):
        emulate_volume_mask(b"\x1f\x8bnot gzip")


def test_3d_round_trip_over_http_preserves_the_affine():
    nii = ct_volume().to_nifti_gz_bytes()
    source = nibabel.Nifti1Image.from_bytes(gzip.decompress(nii))
    expected = np.asanyarray(emulate_volume_mask(nii).dataobj)
    payload = mip3d.build_request(nii, "pancreas")
    with EmulatorServer(model="medimageparse3d", variants=["versioned"]) as server:
        with client(server.url, "medimageparse3d") as c:
            reply = c.score(payload)
            assert reply.emulated and reply.model_version == "medimageparse3d-emulator-1"
            assert set(reply.body[0]) == {"nifti_file"} and isinstance(reply.body[0]["nifti_file"], str)
            image = mip3d.parse_response(reply.body, expected_shape=source.shape)
            assert image.shape == source.shape
            assert np.array_equal(image.affine, source.affine)  # exactly
            assert np.array_equal(image.header.get_sform(), source.header.get_sform())
            assert np.array_equal(np.asanyarray(image.dataobj), expected)

            server.script_faults([{"shape": "object"}])  # the earlier sample's image_features form
            reply = c.score(payload)
            assert set(reply.body[0]) == {"image_features"}
            image = mip3d.parse_response(reply.body, affine=source.affine, expected_shape=source.shape)
            assert np.array_equal(image.affine, source.affine)
            assert np.array_equal(np.asanyarray(image.dataobj), expected)


def test_3d_handler_reply_form_option_and_refusals():
    nii = mr_nifti_gz()
    data = [[base64.b64encode(nii).decode(), "brain"]]
    handler = MedImageParse3DHandler(reply_form="image_features")
    reply = handler.score({"columns": ["image", "text"], "index": [0], "data": data}, {"response_shape": "rows"})
    assert set(reply[0]) == {"image_features"}
    with pytest.raises(RequestError, match="at most 1"):
        handler.score({"columns": ["image", "text"], "index": [0, 1], "data": data * 2}, {})
    with pytest.raises(RequestError, match="blank"):
        handler.score({"columns": ["image", "text"], "index": [0], "data": [[data[0][0], " "]]}, {})
    with pytest.raises(ValueError):
        MedImageParse3DHandler(reply_form="bogus")  # type: ignore[arg-type]
