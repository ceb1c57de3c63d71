"""Image checks: decode fully, normalise to RGB, refuse what cannot be used, store resized."""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps


class ImageRejected(Exception):
    """The image cannot be used; `reason` is a stable code, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white (catalog photos sit on white)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def check_and_store(src: Path, dst: Path, min_size: int, max_size: int, max_pixels: int) -> tuple[int, int]:
    """Validate `src` and write it as RGB to `dst`, shrunk so its longest side is <= max_size.

    Returns the original (width, height). Raises ImageRejected with a reason code.
    """
    if not src.is_file():
        raise ImageRejected("missing_image", f"image file not found: {src}")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                img.load()  # full decode: truncated files fail here, not later in training
                img = ImageOps.exif_transpose(img)
                size = img.size
                if min(size) < min_size:
                    raise ImageRejected("image_too_small", f"{src}: {size[0]}x{size[1]} is below clean.min_image_size={min_size}")
                rgb = to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("decompression_bomb", f"{src}: {e}") from e
    except ImageRejected:
        raise
    except Exception as e:  # PIL raises many types for corrupt input; all mean "not usable"
        raise ImageRejected("unreadable_image", f"{src}: cannot decode as an image ({type(e).__name__}: {e})") from e
    rgb.thumbnail((max_size, max_size), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(dst, quality=95) if dst.suffix.lower() in (".jpg", ".jpeg") else rgb.save(dst)
    return size
