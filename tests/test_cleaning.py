import pandas as pd
import pytest
from PIL import Image

from catalog_search import catalog
from catalog_search.catalog import CatalogError
from catalog_search.cleaning import clean_catalog
from catalog_search.cleaning.text import TitleRules, assemble_captions, clean_title


@pytest.fixture
def rules(clean_params):
    return TitleRules.from_params(clean_params["title"])


@pytest.mark.parametrize("raw, clean", [
    ("NORDVIK® - Red Striped Dress - Set of 2 - SKU 48213-XL - $19.99 - Free Shipping", "Red Striped Dress"),
    ("Maison Kade™, Yellow Checked Bag, Ships in 24h", "Yellow Checked Bag"),
    ("ACME Apparel | GREY POLKA DOT T-SHIRT | €24,95", "Grey Polka Dot T-shirt"),
    ("<b>Navy&nbsp;Coat</b> &amp; more | FAST DELIVERY", "Navy Coat & more"),
    ("Blue Sneakers, 3-pack, SKU: AB-12", "Blue Sneakers"),
])
def test_title_rules(rules, raw, clean):
    assert clean_title(raw, rules) == clean


def test_captions_are_unique_and_ordered():
    assert assemble_captions("Red Dress", ["a red dress", "Red Dress"], "") == ["Red Dress", "a red dress"]


def test_demo_titles_mostly_recovered(demo_raw, clean_params, tmp_path):
    raw_path, raw = demo_raw
    kept, rejected, metrics = clean_catalog(raw, raw_path, tmp_path, clean_params)
    assert metrics["rows_in"] == len(raw) == metrics["rows_kept"] + metrics["rows_rejected"]
    assert metrics["title_exact_match"] >= 0.9  # the rest are wrong-colour titles that rules cannot fix
    assert kept["title"].str.contains(r"SKU|\$|Set of|Shipping|NORDVIK", regex=True).sum() == 0
    assert all(kept.loc[i, "title"] in kept.loc[i, "captions"] for i in kept.index)


def _write(path, make):
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    return path.name


def test_bad_rows_are_set_aside_with_reasons(tmp_path, clean_params):
    src = tmp_path / "src"
    good = lambda p: Image.new("RGB", (64, 48), "blue").save(p)
    rows = [
        ("ok", _write(src / "ok.png", good), "Blue Shirt"),
        ("dup", _write(src / "d1.png", good), "Blue Shirt"),
        ("dup", _write(src / "d2.png", good), "Blue Shirt again"),
        ("missing", "nope.png", "Blue Shirt"),
        ("text", _write(src / "t.jpg", lambda p: p.write_text("not an image")), "Blue Shirt"),
        ("trunc", _write(src / "tr.jpg", lambda p: (Image.new("RGB", (64, 64), "red").save(p),
                                                     p.write_bytes(p.read_bytes()[:300]))), "Red Shirt"),
        ("tiny", _write(src / "tiny.png", lambda p: Image.new("RGB", (1, 1)).save(p)), "Red Shirt"),
        ("notitle", _write(src / "nt.png", good), "SKU 1234 | Free Shipping"),
        ("rgba", _write(src / "rgba.png", lambda p: Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(p)), "Clear Bag"),
    ]
    raw = catalog.conform(pd.DataFrame(rows, columns=["product_id", "image_path", "title_raw"]), "test")
    kept, rejected, metrics = clean_catalog(raw, src / "catalog.parquet", tmp_path / "out", clean_params)
    reasons = dict(zip(rejected["source_row"], rejected["reason"]))
    assert reasons == {2: "duplicate_product_id", 3: "missing_image", 4: "unreadable_image", 5: "unreadable_image",
                       6: "image_too_small", 7: "empty_title"}
    assert sorted(kept["product_id"]) == ["dup", "ok", "rgba"]
    assert metrics["rows_in"] == 9 and metrics["rows_kept"] + metrics["rows_rejected"] == 9
    assert all("row" in m and str(src) in m for m in rejected["message"])
    rgba = Image.open(tmp_path / "out" / kept.set_index("product_id").loc["rgba", "image_path"])
    assert rgba.mode == "RGB" and rgba.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white


def test_no_usable_row_is_an_error(tmp_path, clean_params):
    raw = catalog.conform(pd.DataFrame({"product_id": ["a"], "image_path": ["x.png"], "title_raw": ["Shirt"]}), "t")
    with pytest.raises(CatalogError, match="no usable row.*missing_image"):
        clean_catalog(raw, tmp_path / "catalog.parquet", tmp_path / "out", clean_params)
