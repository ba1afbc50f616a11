"""MedImageParse 2D input: square PNG, exact geometry both ways, CT windows, prompts and frame selection."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from converters.parse2d import (
    CT_WINDOWS,
    SquareTransform,
    choose_ct_window,
    join_prompts,
    select_frames,
    split_prompts,
    to_parse_image,
)

REAL = {
    "cr": "cxr/cr_pa_mono1_uncompressed.dcm",
    "us_rgb": "other/us_rgb_rle.dcm",
    "xa": "other/xa_uncompressed.dcm",
    "ct": "compressed/CT1_UNC.dcm",
}


def synthetic(rows: int, columns: int, value: int = 200, frames: int = 1, instance: int | None = None) -> Dataset:
    """An 8-bit MONOCHROME2 secondary capture filled with ``value`` (window 128/256: identity on 0..255)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    if frames > 1:
        ds.NumberOfFrames = frames
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PixelData = np.full((frames, rows, columns), value, dtype=np.uint8).tobytes()
    return ds


def png_array(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def image_region(t: SquareTransform) -> tuple[slice, slice]:
    oy, ox = int(t.offset_y), int(t.offset_x)
    return slice(oy, oy + t.image_height), slice(ox, ox + t.image_width)


def model_rectangle(t: SquareTransform, r0: float, r1: float, c0: float, c1: float) -> np.ndarray:
    """Model pixels whose CENTRE maps (to_source) inside the source rectangle [c0, c1) x [r0, r1)."""
    ys, xs = np.mgrid[0 : t.size, 0 : t.size] + 0.5
    cols, rows = t.to_source(xs, ys)
    return (cols >= c0) & (cols < c1) & (rows >= r0) & (rows < r1)


SHAPES = [(300, 700), (700, 300), (1955, 1841), (1841, 1955), (2000, 3001), (3001, 2000), (1, 5), (512, 512)]


@pytest.mark.parametrize("rows,columns", SHAPES)
def test_synthetic_png_is_square_black_padded_and_centred(rows: int, columns: int) -> None:
    ds = synthetic(rows, columns)
    image = to_parse_image(ds)
    t = image.transform
    assert (t.source_rows, t.source_columns, t.size) == (rows, columns, 1024)
    assert t.scale == pytest.approx(1024 / max(rows, columns))
    assert max(t.image_width, t.image_height) == 1024
    pixels = png_array(image.png)
    assert pixels.shape == (1024, 1024, 3)  # grey images are sent as RGB
    region = image_region(t)
    inside = np.zeros((1024, 1024), dtype=bool)
    inside[region] = True
    assert (pixels[inside] == 200).all()  # the image fills exactly the region the transform says
    assert (pixels[~inside] == 0).all()  # black padding
    # centred: the padding on both sides differs by at most one model pixel
    for offset, extent in ((t.offset_x, t.image_width), (t.offset_y, t.image_height)):
        assert offset == (1024 - extent) // 2
    assert image.sop_instance_uid == ds.SOPInstanceUID and image.frame == 0


@pytest.mark.parametrize("rows,columns", SHAPES)
def test_to_source_inverts_to_model(rows: int, columns: int) -> None:
    t = SquareTransform.for_shape(rows, columns)
    rng = np.random.default_rng(1)
    points = [(0.0, 0.0), (columns, rows), (columns / 2, rows / 3)] + list(rng.random((20, 2)) * (columns, rows))
    for col, row in points:
        x, y = t.to_model(col, row)
        assert t.to_source(x, y) == pytest.approx((col, row), abs=1e-9)
        assert t.to_model(*t.to_source(x, y)) == pytest.approx((x, y), abs=1e-9)
    assert t.to_model(0, 0) == (t.offset_x, t.offset_y)
    # the image region is floor(n * scale) model pixels: the source's far edge lies less than one pixel beyond it
    x, y = t.to_model(columns, rows)
    assert t.offset_x + t.image_width <= x + 1e-9 < t.offset_x + t.image_width + 1
    assert t.offset_y + t.image_height <= y + 1e-9 < t.offset_y + t.image_height + 1


@pytest.mark.parametrize("rows,columns", [(300, 700), (700, 300), (480, 640), (1, 5), (512, 512)])
def test_upsampled_rectangle_comes_back_exactly(rows: int, columns: int) -> None:
    """scale >= 1: any source rectangle drawn in model space returns as exactly its pixel-centre set."""
    t = SquareTransform.for_shape(rows, columns)
    rng = np.random.default_rng(rows + columns)
    for _ in range(10):
        r0, r1 = sorted(rng.integers(0, rows + 1, 2))
        c0, c1 = sorted(rng.integers(0, columns + 1, 2))
        back = t.mask_to_source(model_rectangle(t, r0, r1, c0, c1))
        expected = np.zeros((rows, columns), dtype=bool)
        expected[r0:r1, c0:c1] = True
        np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("rows,columns", [(1955, 1841), (1841, 1955), (2000, 3001), (3001, 2000)])
def test_downsampled_rectangle_comes_back_exactly(rows: int, columns: int) -> None:
    """scale < 1: a rectangle whose edges lie on model pixel edges returns as the source pixels whose CENTRE lies in
    it (to_source of the edges); nothing else."""
    t = SquareTransform.for_shape(rows, columns)
    oy, ox = int(t.offset_y), int(t.offset_x)
    h, w = t.image_height, t.image_width
    for y0, y1, x0, x1 in [(oy + 100, oy + 313, ox + 7, ox + 500), (oy, oy + h, ox, ox + 1),
                           (oy + h - 3, oy + h, ox + 900 % w, ox + w)]:
        model = np.zeros((1024, 1024), dtype=np.uint8)
        model[y0:y1, x0:x1] = 1
        c0, r0 = t.to_source(x0, y0)
        c1, r1 = t.to_source(x1, y1)
        # source pixels whose centre falls in the last partial model pixel (beyond the image region) take the
        # image's last model pixel (documented clamp), so a rectangle reaching the far edge takes them too
        if y1 == oy + t.image_height:
            r1 = np.inf
        if x1 == ox + t.image_width:
            c1 = np.inf
        centres_c = np.arange(columns) + 0.5
        centres_r = np.arange(rows) + 0.5
        expected = ((centres_r >= r0) & (centres_r < r1))[:, None] & ((centres_c >= c0) & (centres_c < c1))[None, :]
        back = t.mask_to_source(model)
        assert back.dtype == np.uint8 and back.shape == (rows, columns)
        np.testing.assert_array_equal(back.astype(bool), expected)
        assert expected.any()


@pytest.mark.parametrize("rows,columns", SHAPES)
def test_padding_produces_nothing_and_image_region_everything(rows: int, columns: int) -> None:
    t = SquareTransform.for_shape(rows, columns)
    padding = np.ones((1024, 1024), dtype=bool)
    padding[image_region(t)] = False
    assert not t.mask_to_source(padding).any()
    assert t.mask_to_source(~padding).all()
    stack = np.stack([padding, ~padding])
    back = t.mask_to_source(stack)
    assert back.shape == (2, rows, columns) and not back[0].any() and back[1].all()
    with pytest.raises(ValueError):
        t.mask_to_source(np.zeros((512, 512)))


@pytest.mark.parametrize("kind", list(REAL))
def test_real_files(data: Path, kind: str) -> None:
    ds = pydicom.dcmread(data / REAL[kind])
    image = to_parse_image(ds, prompt="left lung")
    pixels = png_array(image.png)
    assert pixels.shape == (1024, 1024, 3)
    t = image.transform
    assert (t.source_rows, t.source_columns) == (ds.Rows, ds.Columns)
    inside = np.zeros((1024, 1024), dtype=bool)
    inside[image_region(t)] = True
    assert (pixels[~inside] == 0).all()
    assert pixels[inside].std() > 5  # a real picture, not a flat field
    assert image.sop_instance_uid == ds.SOPInstanceUID
    if kind == "us_rgb":
        assert (t.offset_x, t.offset_y) == (0, 128)  # 480x640 landscape: centred vertically
        assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).max() > 30  # colour kept
    else:
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    if kind == "cr":  # 1955 x 1841 portrait: near-square, centred horizontally
        assert t.offset_y == 0 and t.image_height == 1024 and t.offset_x == (1024 - t.image_width) // 2 > 0


def test_ct_windows(data: Path) -> None:
    ds = pydicom.dcmread(data / REAL["ct"])
    lung = to_parse_image(ds, prompt="lung nodule")
    abdomen = to_parse_image(ds, prompt="abdominal aorta")
    assert lung.png != abdomen.png
    assert to_parse_image(ds, window="lung").png == lung.png
    assert to_parse_image(ds, prompt="liver", window=(-1000, 1000)).png == lung.png
    # the lung window shows air darker than soft tissue; a narrow window saturates more pixels
    lung_px, abd_px = png_array(lung.png)[..., 0], png_array(abdomen.png)[..., 0]
    assert (abd_px == 255).sum() > (lung_px == 255).sum()
    # CT without a CT-specific prompt: the header window / percentiles (to_uint8), not a CT_WINDOWS window
    plain = to_parse_image(ds, prompt="tumor")
    assert plain.png not in (lung.png, abdomen.png)


def test_choose_ct_window() -> None:
    assert choose_ct_window("lung nodules") == CT_WINDOWS["lung"]
    assert choose_ct_window("pulmonary nodule") == CT_WINDOWS["lung"]
    assert choose_ct_window("liver tumor") == CT_WINDOWS["liver"]
    assert choose_ct_window("Pancreas & liver") == CT_WINDOWS["pancreas"]  # first keyword in the prompt wins
    assert choose_ct_window("liver & pancreas") == CT_WINDOWS["liver"]
    assert choose_ct_window("colon cancer") == CT_WINDOWS["colon"]
    assert choose_ct_window("urinary bladder") == CT_WINDOWS["pelvis"]
    assert choose_ct_window("left kidney") == CT_WINDOWS["abdomen"]
    assert choose_ct_window("tumor") is None
    assert choose_ct_window("") is None
    assert choose_ct_window("tumor", "liver") == CT_WINDOWS["liver"]
    assert choose_ct_window("lung", (-100, 300)) == (-100.0, 300.0)
    with pytest.raises(ValueError):
        choose_ct_window("", "bone")
    with pytest.raises(ValueError):
        choose_ct_window("", (300, -100))
    assert set(CT_WINDOWS) == {"abdomen", "lung", "pelvis", "liver", "colon", "pancreas"}
    assert CT_WINDOWS["abdomen"] == (-150, 250) and CT_WINDOWS["colon"] == (-68, 187)


def test_multiframe_frame_argument() -> None:
    ds = synthetic(50, 80, frames=3)
    frames = np.stack([np.full((50, 80), v, np.uint8) for v in (10, 100, 250)])
    ds.PixelData = frames.tobytes()
    image = to_parse_image(ds, frame=2)
    assert image.frame == 2
    pixels = png_array(image.png)
    assert pixels[image_region(image.transform)].min() == 250


def test_prompts() -> None:
    assert join_prompts(["neoplastic cells", " inflammatory cells ", ""]) == "neoplastic cells & inflammatory cells"
    assert join_prompts("liver &pancreas & ") == "liver & pancreas"
    assert split_prompts(" tumor core & enhancing tumor && non-enhancing tumor ") == [
        "tumor core", "enhancing tumor", "non-enhancing tumor"]
    assert split_prompts("") == []
    assert split_prompts(join_prompts(["a", "b c"])) == ["a", "b c"]
    with pytest.raises(ValueError):
        join_prompts(["a & b"])


def test_select_frames() -> None:
    series = [(Path(f"/s/{n}.dcm"), synthetic(4, 4, instance=n)) for n in (5, 1, 4, 2, 3)]
    assert select_frames(series) == [(Path("/s/3.dcm"), 0)]
    assert select_frames(series, "all") == [(Path(f"/s/{n}.dcm"), 0) for n in (1, 2, 3, 4, 5)]
    assert select_frames(series, "every:2") == [(Path(f"/s/{n}.dcm"), 0) for n in (1, 3, 5)]
    assert select_frames(series[:4], "middle") == [(Path("/s/2.dcm"), 0)]  # even count: the lower middle
    single = [(Path("/x.dcm"), synthetic(4, 4))]
    assert select_frames(single) == [(Path("/x.dcm"), 0)]
    multi = [(Path("/m.dcm"), synthetic(4, 4, frames=5))]
    assert select_frames(multi) == [(Path("/m.dcm"), 2)]
    assert select_frames(multi, "every:3") == [(Path("/m.dcm"), 0), (Path("/m.dcm"), 3)]
    assert select_frames([]) == []
    for bad in ("every:0", "first", "every:x"):
        with pytest.raises(ValueError):
            select_frames(series, bad)
