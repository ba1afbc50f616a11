"""One image -> the 8-bit grayscale PNG a report model takes, with the exact mapping back to the source pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image
from pydicom.dataset import Dataset

from converters.pixels import to_uint8

__all__ = ["ModelImage", "to_model_image"]


@dataclass(frozen=True)
class ModelImage:
    """An 8-bit grayscale lossless PNG of one image and the exact mapping back to the source pixel grid.

    Coordinates are continuous, origin at the top-left corner of the top-left pixel, x along columns.
    """

    png: bytes = field(repr=False)
    sop_instance_uid: str
    source_rows: int
    source_columns: int
    png_width: int
    png_height: int
    scale_x: float  # source column = png x * scale_x
    scale_y: float  # source row = png y * scale_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """PNG (x, y) -> source (column, row), as floats."""
        # Multiply before dividing so the PNG corners land exactly on the source corners.
        return x * self.source_columns / self.png_width, y * self.source_rows / self.png_height

    def from_source(self, column: float, row: float) -> tuple[float, float]:
        """Source (column, row) -> PNG (x, y), as floats."""
        return column * self.png_width / self.source_columns, row * self.png_height / self.source_rows


def to_model_image(ds: Dataset, *, max_side: int | None = None, frame: int = 0) -> ModelImage:
    """Display-ready PNG of ``ds`` (see :func:`converters.pixels.to_uint8`).

    Full resolution by default; with ``max_side`` an image whose longer side exceeds it is downscaled with
    Lanczos, aspect kept (each side rounded to whole pixels, so ``scale_x`` and ``scale_y`` may differ slightly).
    Never upscales.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    pixels = to_uint8(ds, frame)
    rows, columns = pixels.shape
    image = Image.fromarray(pixels)
    width, height = columns, rows
    if max_side is not None and max(rows, columns) > max_side:
        factor = max_side / max(rows, columns)
        width, height = max(1, round(columns * factor)), max(1, round(rows * factor))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return ModelImage(
        png=buffer.getvalue(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        source_rows=rows,
        source_columns=columns,
        png_width=width,
        png_height=height,
        scale_x=columns / width,
        scale_y=rows / height,
    )
