"""Image checks, run in worker processes: decode fully, normalise to RGB, refuse what cannot be
used, store resized, and fingerprint (content hash + perceptual hash) for the duplicate checks."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


@dataclass(frozen=True)
class ImageSettings:
    """clean.image in params.yaml."""

    min_size: int
    max_size: int
    max_pixels: int
    format: str


@dataclass
class ImageResult:
    """What a worker found: a reason code + message when rejected, else the fingerprints."""

    reason: str | None = None
    message: str = ""
    sha256: bytes = b""
    phash: bytes = b""  # 3 x 64-bit pHash (one per RGB channel): 24 bytes
    size: tuple[int, int] = (0, 0)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is composited on white (catalog photos sit on white)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey: keep the top 8 bits
        return Image.fromarray((np.asarray(img, np.uint32) >> 8).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def perceptual_hash(rgb: Image.Image) -> bytes:
    """pHash of each RGB channel: a re-encoded or resized copy stays within a few bits, while a
    colour variant of the same garment (same shape, other colour) mostly does not, as a grey pHash
    would. imagehash.phash's algorithm (32x32 Lanczos, 2-D DCT, 8x8 low frequencies above their
    median; a test checks the bits are equal), for the three channels in one pass."""
    small = np.asarray(rgb.resize((32, 32), Image.LANCZOS), np.float64).transpose(2, 0, 1)
    low = scipy.fft.dct(scipy.fft.dct(small, axis=1), axis=2)[:, :8, :8].reshape(3, 64)
    return np.packbits(low > np.median(low, axis=1, keepdims=True)).tobytes()


def _storable_as_is(img: Image.Image, settings: ImageSettings) -> bool:
    """Already RGB, in the storage format, small enough and upright: copy the file's bytes instead
    of re-encoding (no JPEG generation loss, and encoding is most of the cost of a small image)."""
    return (img.format == {"jpg": "JPEG", "png": "PNG"}[settings.format] and img.mode == "RGB"
            and max(img.size) <= settings.max_size and img.getexif().get(ExifTags.Base.Orientation, 1) == 1)


def inspect_image(src: str | None, dst: str, settings: ImageSettings) -> ImageResult:
    """Check `src` and store it as RGB at `dst`, shrunk so its longest side is <= max_size."""
    if src is None:
        return ImageResult("missing_image", "no image_path given")
    if src.startswith(("http://", "https://")):
        return ImageResult("image_not_downloaded", f"{src} is a URL; download the images into a folder and set "
                                                   "data.table.url_folder (nothing is downloaded at run time)")
    path = Path(src)
    if not path.is_file():
        return ImageResult("image_not_found", f"image file not found: {src}")
    data = path.read_bytes()
    if not data:
        return ImageResult("empty_image_file", f"{src} is an empty (0-byte) file")
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # the header alone tells a bomb: nothing is allocated
                img.load()  # full decode: truncated files fail here, not later in training
                as_is = _storable_as_is(img, settings)
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return ImageResult("decompression_bomb", f"{src}: {e} (clean.image.max_pixels={settings.max_pixels})")
    except UnidentifiedImageError:
        return ImageResult("not_an_image", f"{src} is not an image file PIL can identify "
                                           f"(starts with {data[:12]!r})")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "corrupt"
        reason = "truncated_image" if "truncated" in str(e).lower() or "broken data stream" in str(e) else "unreadable_image"
        return ImageResult(reason, f"{src}: cannot decode ({type(e).__name__}: {e})")
    except Exception as e:  # corrupt input makes PIL raise many other types; none may stop the stage
        return ImageResult("unreadable_image", f"{src}: cannot decode ({type(e).__name__}: {e})")
    if min(rgb.size) < settings.min_size:
        return ImageResult("image_too_small", f"{src}: {rgb.size[0]}x{rgb.size[1]} is below "
                                              f"clean.image.min_size={settings.min_size}")
    if as_is:
        Path(dst).write_bytes(data)
    else:
        rgb.thumbnail((settings.max_size, settings.max_size), Image.BICUBIC)
        rgb.save(dst, quality=95) if settings.format == "jpg" else rgb.save(dst, format=settings.format.upper())
    return ImageResult(None, "", hashlib.sha256(data).digest(), perceptual_hash(rgb), rgb.size)


def inspect_batch(tasks: list[tuple[str | None, str]], settings: ImageSettings) -> list[ImageResult]:
    """One pool task: many images, so inter-process overhead is paid per batch, not per image."""
    for folder in {Path(dst).parent for _, dst in tasks}:
        folder.mkdir(parents=True, exist_ok=True)
    return [inspect_image(src, dst, settings) for src, dst in tasks]
