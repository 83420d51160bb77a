"""JPEG renderings of DICOM images for web content and the media view (IHE PDI Web Content
option: JPEG, windowed per the image's VOI), with mammograms turned to the display
orientation of their laterality and view.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

MAX_SIDE = 1024  # renderings are for viewing in a browser, not for diagnosis
MAX_FRAMES = 500  # frames of one multi-frame object shown on its page; more are sampled evenly


def frame_indices(n: int, limit: int = MAX_FRAMES) -> list[int]:
    """The (0-based) frames of an n-frame object that its page shows: all, or ``limit`` of them
    evenly spread from the first to the last."""
    if n <= limit:
        return list(range(n))
    return sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})


class RenderError(Exception):
    """The image cannot be decoded or rendered."""


def _to8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _window(ds, frame: np.ndarray) -> np.ndarray:
    """Grey levels 0-255: Modality LUT, then the first VOI (window or VOI LUT), else min-max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(frame, ds)
    has_voi = "WindowCenter" in ds and "WindowWidth" in ds or "VOILUTSequence" in ds
    if has_voi:
        try:
            arr = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        except Exception:
            pass
    out = _to8(arr)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


_OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}


def mammo_target(laterality: str, orientation: list[str]) -> tuple[str, str] | None:
    """Display orientation (row direction, column direction) of a mammogram (PS3.3 C.8.11.7.1.1):
    the chest wall on the side away from the other breast, so the two breasts hang back to
    back: a left breast has rows running anterior (A), a right one posterior (P); columns run
    to the foot (F) in oblique and lateral views, else towards the other side (R or L)."""
    lat = (laterality or "").strip().upper()[:1]
    if lat not in ("L", "R") or not orientation or len(orientation) != 2:
        return None
    main = [o.strip().upper()[:1] for o in orientation]
    if any(m not in _OPPOSITE for m in main):
        return None
    row = "A" if lat == "L" else "P"
    if any(m in ("H", "F") for m in main):
        col = "F"
    else:
        col = "R" if lat == "L" else "L"
    return row, col


def orient(arr: np.ndarray, current: list[str], target: tuple[str, str]) -> np.ndarray:
    """Flip and transpose a 2-D (or 2-D x channels) array from one orientation to another.

    Orientation (row direction, column direction): the patient direction in which the column
    index grows along a row, then the one in which the row index grows down a column.
    """
    cur = [c.strip().upper()[:1] for c in current]
    row, col = target

    def same_axis(a, b):
        return a == b or _OPPOSITE.get(a) == b

    if same_axis(cur[0], col) and same_axis(cur[1], row):
        arr = arr.swapaxes(0, 1)
        cur = [cur[1], cur[0]]
    if not (same_axis(cur[0], row) and same_axis(cur[1], col)):
        return arr  # orientations on other axes: leave the image as it is
    if cur[0] != row:
        arr = arr[:, ::-1]
    if cur[1] != col:
        arr = arr[::-1, :]
    return arr


def display_array(ds, frame_index: int = 0, frame: np.ndarray | None = None) -> np.ndarray:
    """The frame as 8-bit grey or RGB, windowed and, for mammograms, oriented for display
    (``frame``: that frame's pixels, already decoded; else decoded from ``ds``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            nframes = int(ds.get("NumberOfFrames", 1) or 1)
            if frame is not None:
                arr = frame
            elif nframes > 1:
                arr = ds.pixel_array[frame_index]
            else:
                arr = ds.pixel_array
        except Exception as e:
            raise RenderError(f"cannot decode the pixel data: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        pi = str(ds.get("PhotometricInterpretation", "")).strip()
        if pi == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            out = _to8(apply_color_lut(arr, ds))
        elif spp > 1:
            if pi.startswith("YBR") and ds.file_meta.get("TransferSyntaxUID") in (None, "1.2.840.10008.1.2.1",
                                                                                   "1.2.840.10008.1.2"):
                from pydicom.pixels import convert_color_space

                arr = convert_color_space(arr, pi, "RGB")
            out = arr if arr.dtype == np.uint8 else _to8(arr)
        else:
            out = _window(ds, arr)
    if str(ds.get("Modality", "")).upper() == "MG":
        lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "")
        po = ds.get("PatientOrientation")
        current = [str(x) for x in po] if po is not None and len(po) == 2 else None
        target = mammo_target(lat, current) if current else None
        if target:
            out = orient(out, current, target)
    return np.ascontiguousarray(out)


def jpeg_bytes(arr: np.ndarray, quality: int = 88, max_side: int = MAX_SIDE) -> tuple[bytes, int, int]:
    img = Image.fromarray(arr)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), img.size[0], img.size[1]


def read_image(path: str, defer: bool = False):
    """The dataset of a DICOM file, for rendering (``defer``: values over 1 MiB, the pixel data,
    read from the file only when used); raises RenderError."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True, defer_size=1 << 20 if defer else None)
    except Exception as e:
        raise RenderError(f"cannot read {path}: {e}") from None


def render_file(path: str, frame_index: int = 0) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height) of one frame of a DICOM file; raises RenderError."""
    return render_dataset(read_image(path), frame_index)


def render_dataset(ds, frame_index: int = 0, frame: np.ndarray | None = None) -> tuple[bytes, int, int]:
    if frame is None and "PixelData" not in ds and "FloatPixelData" not in ds:
        raise RenderError("no pixel data")
    return jpeg_bytes(display_array(ds, frame_index, frame))


def _frames_of(src: str, ds, indices: list[int]):
    """(index, pixels) of the frames ``indices`` of a multi-frame file, decoded one at a time from
    the file (pydicom's iter_pixels), so that memory holds one frame and not the object, which
    may be gigabytes; files it cannot read so (a broken offset table) are decoded whole."""
    from pydicom.pixels import iter_pixels

    k = -1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, arr in zip(indices, iter_pixels(src, indices=indices)):
                yield k, arr
        return
    except Exception:
        if k >= 0:
            raise  # some frames came: the one that did not cannot be shown
    whole = read_image(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = whole.pixel_array
    for k in indices:
        yield k, arrays[k]


def render_to(job: tuple[str, str, str | None]) -> tuple[str, int, int, int, str, list]:
    """Worker entry (a process pool): render the first frame of the file ``src`` to the JPEG
    file ``dst`` and, when ``frames_dir`` is given and the object has several frames, the others
    that its page shows (``frame_indices``) to frames_dir/Fnnnnnnn.JPG (the frame number).

    Returns (dst, size, width, height, error, frames): frames lists (number, file name, size,
    width, height) of the other frames written, in order."""
    src, dst, frames_dir = job
    try:
        ds = read_image(src, defer=True)  # the pixel data left on disk until it is decoded
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if n > 1 and "PixelData" in ds:
            shown = iter(_frames_of(src, ds, frame_indices(n) if frames_dir else [0]))
            data, w, h = render_dataset(ds, 0, next(shown)[1])
        else:
            shown = None
            data, w, h = render_dataset(ds)
    except RenderError as e:
        return dst, 0, 0, 0, str(e), []
    except Exception as e:  # a decoder failing on hostile data
        return dst, 0, 0, 0, f"{type(e).__name__}: {e}", []
    with open(dst, "wb") as f:
        f.write(data)
    frames = []
    if shown is not None and frames_dir:
        import os

        os.makedirs(frames_dir, exist_ok=True)
        try:
            for k, arr in shown:
                fdata, fw, fh = render_dataset(ds, k, arr)
                name = f"F{k + 1:07d}.JPG"
                with open(os.path.join(frames_dir, name), "wb") as f:
                    f.write(fdata)
                frames.append((k + 1, name, len(fdata), fw, fh))
        except Exception:  # noqa: BLE001 - a frame that cannot be shown ends the sequence shown
            pass
    return dst, len(data), w, h, "", frames
