"""Rendered images (PS3.18 8.3.5, 10.4.1.1.3; WADO-URI image/jpeg and image/png): one frame to
8-bit pixels through the modality LUT, a window (asked for, stored, or the frame's range) and
MONOCHROME1 inversion, encoded with Pillow.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ihecli.web.common import WebError


def frame_array(ds, frame: int) -> np.ndarray:
    """Pixels of one frame (1-based), decoded; colour as RGB."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frame < 1 or frame > n:
        raise WebError(404, f"no frame {frame}: the instance has {n}")
    if "PixelData" not in ds:
        raise WebError(406, "the instance has no pixel data to render")
    try:
        from pydicom.pixels import pixel_array

        arr = pixel_array(ds, index=frame - 1) if n > 1 else ds.pixel_array
    except Exception as e:
        raise WebError(406, f"cannot decode the pixel data: {e}") from None
    return arr


def to_8bit(ds, arr: np.ndarray, window: tuple[float, float, str] | None) -> np.ndarray:
    """8-bit grey or RGB for display."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if spp > 1 or photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:
            bits = int(getattr(ds, "BitsStored", 8) or 8)
            arr = (arr.astype(np.float64) * (255.0 / max(1, (1 << bits) - 1))).clip(0, 255)
        return arr.astype(np.uint8)
    from pydicom.pixels import apply_modality_lut

    try:
        values = apply_modality_lut(arr, ds).astype(np.float64)
    except Exception:
        values = arr.astype(np.float64)
    if window is None:
        wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
        if wc is not None and ww is not None:
            wc = wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc
            ww = ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww
            window = (float(wc), float(ww), "LINEAR")
    if window is not None and window[1] > 0:
        c, w, fn = window
        if fn.upper() == "SIGMOID":
            out = 255.0 / (1 + np.exp(-4 * (values - c) / w))
        elif fn.upper() == "LINEAR_EXACT":
            out = (values - (c - w / 2)) / w * 255.0
        else:  # LINEAR (PS3.3 C.11.2.1.2.1)
            out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    out = out.clip(0, 255)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return out.astype(np.uint8)


def parse_window(text: str | None) -> tuple[float, float, str] | None:
    """The window query parameter: center,width[,function]."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        c, w = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise WebError(400, f"bad window {text!r}: center,width[,linear|linear_exact|sigmoid]") from None
    fn = parts[2] if len(parts) > 2 else "LINEAR"
    return c, w, fn


def render(ds, frame: int, media: str, *, window=None, quality: int = 90, viewport: tuple[int, int] | None = None) -> bytes:
    """One frame as image/jpeg or image/png bytes."""
    img = Image.fromarray(to_8bit(ds, frame_array(ds, frame), window))
    if viewport:
        img.thumbnail(viewport)
    buf = io.BytesIO()
    if media == "image/png":
        img.save(buf, "PNG")
    elif media == "image/gif":
        img.save(buf, "GIF")
    else:
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
