import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catalog_search import catalog
from catalog_search.catalog import CatalogError
from catalog_search.params import ParamsError
from catalog_search.sources import ingest
from catalog_search.sources.demo import COLORS, build_demo
from catalog_search.sources.table import read_table
from conftest import FMNIST


def test_demo_is_deterministic_and_attributes_are_visible(tmp_path, demo_raw):
    raw_path, df = demo_raw
    again = build_demo(FMNIST, tmp_path, n_products=120, image_size=32, seed=1, variant_prob=0.3, wrong_color_prob=0.05)
    assert again["title_raw"].tolist() == df["title_raw"].tolist()
    first = df.iloc[0]
    assert (tmp_path / first["image_path"]).read_bytes() == (raw_path.parent / first["image_path"]).read_bytes()
    # the garment's dominant colour is the labelled one (solid items: no pattern tint)
    for _, row in df[df["pattern"] == "solid"].head(10).iterrows():
        pixels = np.asarray(Image.open(raw_path.parent / row["image_path"]), np.float32).reshape(-1, 3)
        garment = pixels[pixels.min(1) < 200]
        mean = garment.mean(0)
        nearest = min(COLORS, key=lambda c: np.linalg.norm(np.array(COLORS[c]) * 0.8 - mean))
        assert nearest == row["color"], (row["title_true"], mean)
    assert df.groupby("group_id")["pattern"].nunique().max() == 1  # variants differ only in colour
    assert {"title_raw", "description", "query", "captions", "article_type", "category"} <= set(df.columns)
    assert all(len(c) >= 2 for c in df["captions"])


def test_other_seed_gives_other_catalog(tmp_path, demo_raw):
    other = build_demo(FMNIST, tmp_path, n_products=30, image_size=32, seed=2, variant_prob=0.3, wrong_color_prob=0.05)
    assert other["title_raw"].tolist() != demo_raw[1]["title_raw"].head(30).tolist()


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_demo(tmp_path, tmp_path, 10, 32, 0, 0.0, 0.0)


def test_table_source_maps_columns_and_resolves_images(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "img" / "a.png")
    pd.DataFrame({"sku": ["a"], "name": ["Red Shirt"], "pic": ["img/a.png"]}).to_csv(tmp_path / "cat.csv", index=False)
    params = {"source": "table", "path": str(tmp_path),
              "table": {"file": "cat.csv", "columns": {"product_id": "sku", "title_raw": "name", "image_path": "pic"}}}
    df = ingest(params, tmp_path / "out")
    assert df.loc[0, "product_id"] == "a" and df.loc[0, "title_raw"] == "Red Shirt"
    assert catalog.resolve_image(tmp_path / "out" / "catalog.parquet", df.loc[0, "image_path"]).exists()
    assert list(df.columns[: len(catalog.COLUMNS)]) == catalog.COLUMNS


def test_table_errors_name_the_file_and_the_fix(tmp_path):
    pd.DataFrame({"id": ["a"], "title": ["x"]}).to_csv(tmp_path / "cat.csv", index=False)
    with pytest.raises(CatalogError, match=r"cat.csv.*\['image'\].*data.table.columns"):
        read_table(tmp_path / "cat.csv", {"product_id": "id", "title_raw": "title", "image_path": "image"})
    (tmp_path / "latin.csv").write_bytes("id,title,image\na,Caf\xe9 Shirt,x.png\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="latin.csv: not valid utf-8.*data.table.encoding"):
        read_table(tmp_path / "latin.csv", {"product_id": "id", "title_raw": "title", "image_path": "image"})
    df = read_table(tmp_path / "latin.csv", {"product_id": "id", "title_raw": "title", "image_path": "image"}, "latin-1")
    assert df.loc[0, "title_raw"] == "Café Shirt"


def test_missing_required_column_and_unknown_source():
    with pytest.raises(CatalogError, match=r"catalog.csv: missing required column\(s\) \['image_path'\]"):
        catalog.conform(pd.DataFrame({"product_id": ["a"], "title_raw": ["x"]}), "catalog.csv")
    with pytest.raises(ParamsError, match=r"data.source='s3'.*\['demo', 'table'\]"):
        ingest({"source": "s3", "path": "."}, None)
