"""The demo catalog: Fashion-MNIST silhouettes turned into coloured, patterned product photos.

Every attribute in the text is visible in the image (article type and its hierarchy, colour,
pattern), so retrieval can really be learned, and the ground-truth clean title lets the clean
stage be scored against the noisy marketplace title. Deterministic for a seed.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

# Fashion-MNIST label -> (article_type, category, subcategory, shopper synonyms)
ARTICLES = [
    ("T-shirt", "Apparel", "Topwear", ["t-shirt", "tee", "top"]),
    ("Trousers", "Apparel", "Bottomwear", ["trousers", "pants"]),
    ("Pullover", "Apparel", "Topwear", ["pullover", "sweater", "jumper"]),
    ("Dress", "Apparel", "Dresses", ["dress"]),
    ("Coat", "Apparel", "Outerwear", ["coat", "jacket"]),
    ("Sandals", "Footwear", "Sandals", ["sandals"]),
    ("Shirt", "Apparel", "Topwear", ["shirt", "button-up shirt"]),
    ("Sneakers", "Footwear", "Shoes", ["sneakers", "trainers"]),
    ("Bag", "Accessories", "Bags", ["bag", "handbag", "tote"]),
    ("Ankle Boots", "Footwear", "Shoes", ["ankle boots", "boots"]),
]
COLORS = {
    "Black": (35, 35, 38), "Grey": (128, 128, 132), "Red": (200, 30, 35), "Blue": (40, 95, 210),
    "Navy": (25, 35, 95), "Green": (40, 140, 60), "Yellow": (235, 200, 40), "Pink": (240, 130, 180),
    "Purple": (120, 50, 150), "Brown": (115, 70, 40), "Orange": (240, 120, 30),
}
PATTERNS = ["solid", "striped", "polka dot", "checked"]
HIDEABLE = ["category", "subcategory", "article_type", "color", "pattern"]
NOISE_BRANDS = ["NORDVIK®", "Urban-Co", "LUMIERE", "Maison Kade™", "ACME Apparel"]
NOISE_SHIPPING = ["Free Shipping", "FAST DELIVERY", "Ships in 24h", "Free Returns"]
DESCRIPTIONS = [
    "{a_color} {article} with a {pattern_phrase}. Part of our {subcategory} range in {category}.",
    "This {article} comes in {color} with a {pattern_phrase}; a {subcategory} piece for everyday wear.",
    "{Color} {article}, {pattern_phrase}. Category: {category} / {subcategory}.",
]


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the Fashion-MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (need {images.name}, {labels.name}). Install it with "
            "`apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist), or "
            "where internet exists download it with torchvision.datasets.FashionMNIST(download=True) "
            "and set data.path to the folder holding the .gz files."
        )
    return read_idx(images), read_idx(labels)


def pattern_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """1 where the pattern's secondary colour shows, for a size x size image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / rng.uniform(5.0, 8.0)
    phase = rng.uniform(0, period)
    if kind == "solid":
        return np.zeros((size, size), np.float32)
    if kind == "striped":
        return (((yy + phase) % period) < period * 0.4).astype(np.float32)
    if kind == "checked":
        return ((((yy + phase) // (period / 1.3)) + ((xx + phase) // (period / 1.3))) % 2).astype(np.float32)
    # polka dot: a disc in every cell of a period-sized grid
    cy, cx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
    return ((cy ** 2 + cx ** 2) < (period * 0.22) ** 2).astype(np.float32)


def render(silhouette: np.ndarray, color: str, pattern: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Colour and pattern a 28x28 silhouette inside its own mask, on a white background."""
    gray = np.asarray(Image.fromarray(silhouette).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    alpha = np.clip((gray - 0.04) / 0.12, 0.0, 1.0)[..., None]
    shade = (0.55 + 0.45 * gray)[..., None]
    base = np.array(COLORS[color], np.float32) + rng.normal(0, 8, 3)
    second = base * 0.25 + 255 * 0.75  # a light tint of the base colour
    pmask = pattern_mask(pattern, size, rng)[..., None]
    garment = (base * (1 - pmask) + second * pmask) * shade
    pixels = 255.0 * (1 - alpha) + garment * alpha
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def noisy_title(title: str, rng: np.random.Generator) -> str:
    """A marketplace title: brand, SKU, pack size, price and shipping text around the real title."""
    parts = [title.upper() if rng.random() < 0.15 else title]
    if rng.random() < 0.6:
        parts.insert(0, str(rng.choice(NOISE_BRANDS)))
    if rng.random() < 0.4:
        parts.append(f"Set of {rng.integers(2, 5)}")
    if rng.random() < 0.5:
        parts.append(f"SKU {rng.integers(10000, 99999)}-{str(rng.choice(['XS', 'M', 'XL']))}")
    if rng.random() < 0.4:
        parts.append(f"${rng.integers(9, 120)}.{rng.choice([0, 49, 95, 99]):02d}")
    if rng.random() < 0.4:
        parts.append(str(rng.choice(NOISE_SHIPPING)))
    return str(rng.choice([" - ", " | ", ", "])).join(parts)


def build_demo(folder: Path, out_dir: Path, n_products: int, image_size: int, seed: int,
               variant_prob: float, wrong_color_prob: float, missing_attribute_prob: float = 0.0) -> pd.DataFrame:
    """Write `n_products` images to `out_dir/images` and return their catalog rows.

    With `missing_attribute_prob` each attribute value is left out (null) independently, as in a
    real marketplace feed; the true value stays in `<attribute>_true`, so predicted fills can be
    scored. The gaps come from their own random stream: the images and texts do not change."""
    images, labels = load_fashion_mnist(folder)
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    colors = list(COLORS)
    rows, item = [], 0
    pbar = tqdm(total=n_products, desc="demo catalog", unit="img")
    while len(rows) < n_products:
        src = int(rng.integers(len(images)))
        article, category, subcategory, synonyms = ARTICLES[int(labels[src])]
        pattern = str(rng.choice(PATTERNS))
        n_variants = int(rng.integers(2, 4)) if rng.random() < variant_prob else 1
        for color in rng.choice(colors, size=n_variants, replace=False)[: n_products - len(rows)]:
            color = str(color)
            pid = f"demo-{len(rows):06d}"
            render(images[src], color, pattern, image_size, rng).save(out_dir / "images" / f"{pid}.png")
            pattern_word = "" if pattern == "solid" else f"{pattern.title()} "
            title = f"{color} {pattern_word}{article}"
            shown_color = color
            if rng.random() < wrong_color_prob:  # the marketplace title contradicts the photo
                shown_color = str(rng.choice([c for c in colors if c != color]))
            pattern_phrase = "plain, solid colour" if pattern == "solid" else f"{pattern} pattern"
            fields = dict(a_color=("An " if color[0] in "AEIOU" else "A ") + color.lower(), color=color.lower(), Color=color, article=article.lower(), pattern_phrase=pattern_phrase,
                          category=category, subcategory=subcategory)
            synonym = str(rng.choice(synonyms))
            rows.append({
                "product_id": pid,
                "image_path": f"images/{pid}.png",
                "title_raw": noisy_title(title.replace(color, shown_color, 1), rng),
                "title_true": title,
                "description": str(rng.choice(DESCRIPTIONS)).format(**fields),
                "query": f"{color.lower()} {'' if pattern == 'solid' or rng.random() < 0.3 else pattern + ' '}{synonym}",
                "captions": [f"a photo of {fields['a_color'].lower()} {pattern_word.lower()}{article.lower()}",
                             f"{pattern} {synonym} in {color.lower()}"],
                "category": category, "subcategory": subcategory, "article_type": article,
                "color": color, "pattern": pattern, "group_id": f"demo-item-{item:06d}",
            })
            pbar.update(1)
        item += 1
    pbar.close()
    df = pd.DataFrame(rows)
    gaps = np.random.default_rng([seed, 1]).random((len(df), len(HIDEABLE))) < missing_attribute_prob
    for j, column in enumerate(HIDEABLE):
        df[f"{column}_true"] = df[column]
        df[column] = df[column].mask(gaps[:, j])
    return df
