import io
import re
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from catalog_search import catalog
from catalog_search.catalog import CatalogError
from catalog_search.cleaning.rules import clean_catalog
from catalog_search.cleaning.text import CaptionTemplates, TitleRules, assemble_captions, clean_text, clean_title
from catalog_search.sources import ingest


@pytest.fixture
def rules(clean_params):
    return TitleRules.from_params(clean_params["title"])


@pytest.mark.parametrize("raw, clean", [
    ("NORDVIK® - Red Striped Dress - Set of 2 - SKU 48213-XL - $19.99 - Free Shipping", "Red Striped Dress"),
    ("Maison Kade™, Yellow Checked Bag, Ships in 24h", "Yellow Checked Bag"),
    ("ACME Apparel | GREY POLKA DOT T-SHIRT | €24,95", "Grey Polka Dot T-shirt"),
    ("<b>Navy&nbsp;Coat</b> &amp; more | FAST DELIVERY", "Navy Coat & more"),
    ("Blue Sneakers, 3-pack, SKU: AB-12", "Blue Sneakers"),
    ("Ｗｉｄｅ  Ｌｅｇ Trousers", "Wide Leg Trousers"),  # full-width letters: NFKC
    ("HOT DEAL!! Linen Shirt - 30% OFF", "Linen Shirt"),
    # punctuation the removals leave behind; marks inside a token stay
    ("Linen Shirt - SALE !!!", "Linen Shirt"),
    ("Linen Shirt??? Free Shipping!!", "Linen Shirt"),
    ("Wool Scarf - Made in Portugal . Free Returns!", "Wool Scarf Made in Portugal"),
    ("Cotton Tee . Made in Portugal", "Cotton Tee. Made in Portugal"),
    ("3.5 Inch T-shirt Dress, Made in the U.S.", "3.5 Inch T-shirt Dress Made in the U.S."),
])
def test_title_rules(rules, raw, clean):
    assert clean_title(raw, rules) == clean


def test_descriptions_captions_and_templates():
    assert clean_text("<p>Soft&nbsp;cotton,\n\n  <i>relaxed</i> fit</p>") == "Soft cotton, relaxed fit"
    templates = CaptionTemplates.from_params(["{gender} {article_type} in {color}", "{color} {subcategory}"])
    rendered = templates.render({"gender": "Men", "article_type": "Tshirts", "color": "Navy Blue", "subcategory": None})
    assert rendered == ["men tshirts in navy blue"]  # the second names an unknown attribute: skipped
    assert assemble_captions("Red Dress", ["a red dress", "Red  Dress"], "", ["red dresses"]) == \
        ["Red Dress", "a red dress", "red dresses"]


def test_c1_controls_read_as_cp1252_in_every_text_field(tmp_path, clean_params, rules):
    """A feed decoded as Latin-1 keeps cp1252's punctuation as C1 controls (It\\x92s)."""
    assert clean_text("It\x92s \x93new\x94\x81, \x80 5\x85") == "It’s “new”, € 5..."  # \x81: undefined in cp1252
    assert clean_title("NORDVIK\x99 Men\x92s Shirt \x96 \x8019.99", rules) == "Men’s Shirt"  # ™ and € are seen
    pattern(0).save(tmp_path / "a.png")
    raw = pd.DataFrame({"product_id": ["a"], "image_path": ["a.png"], "title_raw": ["Men\x92s Shirt"],
                        "description": ["It\x92s soft"], "query": ["men\x92s shirt"],
                        "captions": [["a \x93soft\x94 shirt"]], "gender": ["Men\x92s"]})
    catalog.save(catalog.conform(raw, "t"), tmp_path / "catalog.parquet")
    clean_catalog(tmp_path / "catalog.parquet", tmp_path / "out", {**clean_params, "workers": 0})
    row = catalog.load(tmp_path / "out" / "catalog.parquet").iloc[0]
    assert (row["title"], row["description"], row["query"], row["gender"]) == \
        ("Men’s Shirt", "It’s soft", "men’s shirt", "Men’s")
    assert row["captions"] == ["Men’s Shirt", "a “soft” shirt", "It’s soft"]
    written = [v for k, v in row.items() if isinstance(v, str) and k != "title_raw"] + row["captions"]
    assert not [v for v in written if re.search("[\x80-\x9f]", v)]  # title_raw stays as the source gave it


def test_demo_titles_mostly_recovered(demo_raw, clean_params, tmp_path):
    raw_path, raw = demo_raw
    metrics = clean_catalog(raw_path, tmp_path, clean_params)
    kept = catalog.load(tmp_path / "catalog.parquet")
    assert metrics["rows_in"] == len(raw) == metrics["rows_kept"] + metrics["rows_rejected"]
    assert metrics["title_exact_match"] >= 0.9  # the rest are wrong-colour titles that rules cannot fix
    assert kept["title"].str.contains(r"SKU|\$|Set of|Shipping|NORDVIK", regex=True).sum() == 0
    assert all(kept.loc[i, "title"] in kept.loc[i, "captions"] for i in kept.index)
    assert (kept["captions"].map(len) >= 4).all()  # title, source captions, description, templates


def test_perceptual_hash_is_imagehash_phash_per_channel():
    import imagehash

    from catalog_search.cleaning.images import perceptual_hash

    for seed in range(5):
        rgb = pattern(seed, (90, 70))
        small = rgb.resize((32, 32), Image.LANCZOS)
        reference = b"".join(np.packbits(imagehash.phash(c).hash.ravel()).tobytes() for c in small.split())
        assert perceptual_hash(rgb) == reference


# ---- the bad-catalog corpus: every failure a real catalog has, in one CSV -------------------------

def pattern(seed: int, size=(64, 48), mode="RGB") -> Image.Image:
    """A distinct picture per seed (solid images all share one perceptual hash)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        box = [x0, y0, x0 + rng.integers(6, size[0] // 2), y0 + rng.integers(6, size[1] // 2)]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img.convert(mode)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height pixels (the data is tiny)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write_corpus(folder):
    """(rows for a CSV, expected outcome per product id): kept, or the rejection reason."""
    img = folder / "img"
    img.mkdir(parents=True)
    pattern(0).save(img / "good.png")
    buffer = io.BytesIO()
    pattern(1).save(buffer, "JPEG", quality=95)
    (img / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (img / "empty.jpg").write_bytes(b"")
    (img / "text.jpg").write_text("<html>404 not found</html>")
    pattern(2).convert("CMYK").save(img / "cmyk.jpg", quality=95)
    palette = pattern(3).convert("P", palette=Image.ADAPTIVE, colors=16)
    hidden = palette.getpixel((0, 0))
    colours = palette.getpalette()
    colours[3 * hidden: 3 * hidden + 3] = [255, 0, 0]  # red where the picture is transparent
    palette.putpalette(colours)
    palette.save(img / "palette.png", transparency=hidden)
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)).save(img / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    pattern(4, (80, 40)).save(img / "rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (1, 1)).save(img / "tiny.png")
    (img / "bomb.png").write_bytes(bomb_png(20000, 20000))
    shutil.copy(img / "good.png", img / "good_copy.png")
    pattern(0).resize((60, 45)).save(img / "good_resized.jpg", quality=80)
    pattern(5, mode="RGBA").save(img / "rgba.png")
    rows = [  # id, image, title, expected
        ("ok", "img/good.png", "Blue Shirt", "kept"),
        ("trunc", "img/truncated.jpg", "Red Shirt", "truncated_image"),
        ("zero", "img/empty.jpg", "Red Shirt", "empty_image_file"),
        ("text", "img/text.jpg", "Red Shirt", "not_an_image"),
        ("cmyk", "img/cmyk.jpg", "Print Shirt", "kept"),
        ("palette", "img/palette.png", "Clear Bag", "kept"),
        ("gray16", "img/gray16.png", "Grey Scarf", "kept"),
        ("rotated", "img/rotated.jpg", "Tall Boot", "kept"),
        ("tiny", "img/tiny.png", "Red Shirt", "image_too_small"),
        ("bomb", "img/bomb.png", "Huge Poster", "decompression_bomb"),
        ("missing", "img/nope.png", "Red Shirt", "image_not_found"),
        ("ok", "img/cmyk.jpg", "Blue Shirt again", "duplicate_product_id"),
        ("copy", "img/good_copy.png", "Blue Shirt copy", "duplicate_image_exact"),
        ("resized", "img/good_resized.jpg", "Blue Shirt small", "kept"),
        ("notitle", "img/rgba.png", "SKU 1234 | Free Shipping", "empty_title"),
        ("untitled", "img/rgba.png", "", "missing_title"),
        ("url", "https://cdn.example.com/p/9.jpg", "Web Shirt", "image_not_downloaded"),
        ("", "img/rgba.png", "Nameless Shirt", "missing_product_id"),
        ("rgba", "img/rgba.png", "Clear Tote", "kept"),
    ]
    pd.DataFrame([r[:3] for r in rows], columns=["id", "image", "title"]).to_csv(folder / "catalog.csv", index=False)
    return rows


def ingest_table(folder, out):
    params = {"source": "table", "path": str(folder),
              "table": {"file": "catalog.csv", "columns": {"product_id": "id", "image_path": "image", "title_raw": "title"}}}
    raw = ingest(params, out)
    catalog.save(raw, out / "catalog.parquet")
    return out / "catalog.parquet"


def test_bad_catalog_corpus_every_row_lands_where_it_should(tmp_path, clean_params):
    rows = write_corpus(tmp_path / "src")
    raw_path = ingest_table(tmp_path / "src", tmp_path / "raw")
    metrics = clean_catalog(raw_path, tmp_path / "out", clean_params)
    kept = catalog.load(tmp_path / "out" / "catalog.parquet").set_index("product_id")
    rejected = pd.read_parquet(tmp_path / "out" / "rejected.parquet")

    outcome = {int(r): reason for r, reason in zip(rejected["source_row"], rejected["reason"])}
    for i in kept.index.map(lambda pid: next(i for i, r in enumerate(rows) if r[0] == pid and r[3] == "kept")):
        outcome[i] = "kept"
    assert outcome == {i: r[3] for i, r in enumerate(rows)}
    assert metrics["rows_in"] == len(rows) == metrics["rows_kept"] + metrics["rows_rejected"]
    assert metrics["rejected_by_reason"]["duplicate_image_exact"] == 1 and metrics["duplicates_grouped"] == {"near": 1}
    # every message names the CSV and its row, and says what is wrong
    csv, said = tmp_path / "src" / "catalog.csv", {}
    for _, r in rejected.iterrows():
        where = f"{csv} row {r['source_row'] + 1}: "
        assert r["message"].startswith(where)
        said[r["reason"]] = r["message"].removeprefix(where)
    assert said["missing_title"] == "product 'untitled' has no title; give it one in the source (the column mapped " \
                                    "to title_raw)"
    first = f"{csv} row 1"  # product "ok": its id and its image come back later in the corpus
    assert said["duplicate_product_id"] == f"product_id 'ok' is already used at {first} (the first row with an id " \
                                           "wins); ids must be unique (fix the source)"
    assert said["duplicate_image_exact"] == f"the same image file bytes as product 'ok' at {first}, which is kept " \
                                            "(clean.dedupe.exact: reject; group or keep keeps both)"
    assert rejected.set_index("reason").loc["duplicate_image_exact", "duplicate_of"] == "ok"
    # the near-identical copy is kept, in the original's group, pointing at it
    assert kept.loc["resized", "duplicate_of"] == "ok" and kept.loc["resized", "group_id"] == kept.loc["ok", "group_id"]

    # an RGB PNG within the storage size is copied byte for byte; the rest are re-encoded as RGB PNG
    assert (tmp_path / "out" / kept.loc["ok", "image_path"]).read_bytes() == (tmp_path / "src/img/good.png").read_bytes()
    stored = {pid: Image.open(tmp_path / "out" / kept.loc[pid, "image_path"]) for pid in kept.index}
    assert all(im.mode == "RGB" for im in stored.values())
    assert stored["rotated"].size == (40, 80)  # EXIF orientation applied
    assert stored["palette"].getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white
    assert stored["gray16"].getpixel((10, 1)) == ((64 + 10) * 21 >> 8,) * 3  # top 8 bits, not clipped to white
    cmyk = np.asarray(stored["cmyk"], np.int16) - np.asarray(pattern(2), np.int16)
    assert np.abs(cmyk).mean() < 8  # CMYK converted back to the picture's colours
    assert not (tmp_path / "out" / "images" / "copy").exists()
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(kept)  # rejected duplicates leave no file


def test_chunks_and_workers_do_not_change_the_result(tmp_path, clean_params):
    write_corpus(tmp_path / "src")
    raw_path = ingest_table(tmp_path / "src", tmp_path / "raw")
    results = []
    for name, workers, chunk in [("a", 2, 1000), ("b", 0, 3)]:
        metrics = clean_catalog(raw_path, tmp_path / name, {**clean_params, "workers": workers, "chunk_rows": chunk})
        results.append((metrics, pd.read_parquet(tmp_path / name / "catalog.parquet"),
                        pd.read_parquet(tmp_path / name / "rejected.parquet")))
    (m1, k1, r1), (m2, k2, r2) = results
    assert m1 == m2
    pd.testing.assert_frame_equal(k1, k2)
    pd.testing.assert_frame_equal(r1, r2)


def test_duplicate_policies(tmp_path, clean_params):
    write_corpus(tmp_path / "src")
    raw_path = ingest_table(tmp_path / "src", tmp_path / "raw")
    group = {**clean_params, "dedupe": {"exact": "group", "near": "reject", "max_distance": 10}}
    metrics = clean_catalog(raw_path, tmp_path / "g", group)
    kept = catalog.load(tmp_path / "g" / "catalog.parquet").set_index("product_id")
    assert kept.loc["copy", "group_id"] == kept.loc["ok", "group_id"] and "resized" not in kept.index
    assert metrics["rejected_by_reason"]["duplicate_image_near"] == 1
    keep = {**clean_params, "dedupe": {"exact": "keep", "near": "keep", "max_distance": 10}}
    kept = catalog.load(tmp_path / "k" / "catalog.parquet") if clean_catalog(raw_path, tmp_path / "k", keep) else None
    assert {"copy", "resized"} <= set(kept["product_id"]) and kept["duplicate_of"].isna().all()


def test_non_utf8_csv_and_missing_column_stop_ingest_with_the_fix(tmp_path):
    (tmp_path / "catalog.csv").write_bytes("id,image,title\na,a.png,Shirt\nb,b.png,Caf\xe9 Shirt\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"catalog.csv: not valid utf-8 at byte \d+ \(line 3: .*data.table.encoding"):
        ingest_table(tmp_path, tmp_path / "raw")
    pd.DataFrame({"id": ["a"], "title": ["x"]}).to_csv(tmp_path / "catalog.csv", index=False)
    with pytest.raises(CatalogError, match=r"catalog.csv: column\(s\) \['image'\] .*Fix data.table.columns"):
        ingest_table(tmp_path, tmp_path / "raw")


def test_no_usable_row_is_an_error_and_keeps_the_reasons(tmp_path, clean_params):
    raw = catalog.conform(pd.DataFrame({"product_id": ["a"], "image_path": ["x.png"], "title_raw": ["Shirt"]}), "t")
    catalog.save(raw, tmp_path / "catalog.parquet")
    with pytest.raises(CatalogError, match="no usable row.*image_not_found"):
        clean_catalog(tmp_path / "catalog.parquet", tmp_path / "out", clean_params)
    assert pd.read_parquet(tmp_path / "out" / "rejected.parquet")["reason"].tolist() == ["image_not_found"]
