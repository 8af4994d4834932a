"""Images sent by the page (data URLs or base64): size-checked before decoding, re-encoded as PNG."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from .limits import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MAX_UPLOAD_SIDE, ApiError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def decode_bytes(value: object, what: str) -> bytes:
    """The bytes of a data URL ("data:image/png;base64,…") or of plain base64, within the size cap."""
    if not isinstance(value, str) or not value:
        raise ApiError(f"{what} must be an image as a data URL or base64 text")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    if len(text) > MAX_UPLOAD_BYTES * 4 // 3 + 8:
        raise ApiError(f"{what} is larger than {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{what} is not valid base64") from None


def open_image(data: bytes, what: str) -> Image.Image:
    """The decoded image; refused when it is not an image, too large, or truncated."""
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in FORMATS:
            raise ApiError(f"{what} must be PNG, JPEG, WebP, GIF or BMP, got {im.format}")
        w, h = im.size
        if max(w, h) > MAX_UPLOAD_SIDE or w * h > MAX_UPLOAD_PIXELS:
            raise ApiError(f"{what} is {w}×{h} pixels; the studio takes at most {MAX_UPLOAD_SIDE} on a side")
        im.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ApiError(f"{what} is not a readable image ({type(err).__name__})") from None
    return im


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def read_upload(value: object, what: str = "the image") -> bytes:
    """An uploaded image as PNG bytes (mode kept: the model's loader converts channels and size)."""
    im = open_image(decode_bytes(value, what), what)
    if im.mode not in ("L", "RGB", "RGBA", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode in ("P", "PA") else "RGB")
    return png_bytes(im)


def read_mask(value: object) -> bytes:
    """A painted mask as a greyscale PNG, white = fill; a transparent part counts as black (keep)."""
    im = open_image(decode_bytes(value, "the mask"), "the mask")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return png_bytes(im.convert("L"))
