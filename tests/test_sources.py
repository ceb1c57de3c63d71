import io
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from catalog_search import catalog
from catalog_search.catalog import CatalogError
from catalog_search.params import ParamsError, load_params
from catalog_search.sources import ingest
from catalog_search.sources.demo import COLORS, build_demo
from catalog_search.sources.table import read_table
from conftest import FMNIST, ROOT


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
    with pytest.raises(CatalogError, match=r"latin.csv: not valid utf-8.*data.table.encoding \(cp1252 for a Windows export\)"):
        read_table(tmp_path / "latin.csv", {"product_id": "id", "title_raw": "title", "image_path": "image"})
    df = read_table(tmp_path / "latin.csv", {"product_id": "id", "title_raw": "title", "image_path": "image"}, "latin-1")
    assert df.loc[0, "title_raw"] == "Café Shirt"


def test_table_description_is_optional_and_a_missing_required_column_names_its_key(tmp_path):
    columns = load_params(ROOT / "params.yaml")["data"]["table"]["columns"]  # the default mapping
    pd.DataFrame({"id": ["a"], "title": ["Red Shirt"], "image": ["a.png"]}).to_csv(tmp_path / "plain.csv", index=False)
    df = ingest({"source": "table", "path": str(tmp_path), "table": {"file": "plain.csv", "columns": columns}}, tmp_path)
    assert pd.isna(df.loc[0, "description"])
    pd.DataFrame({"id": ["a"], "title": ["Red Shirt"], "image": ["a.png"], "description": ["Soft cotton"]}).to_csv(
        tmp_path / "described.csv", index=False)
    assert read_table(tmp_path / "described.csv", columns).loc[0, "description"] == "Soft cotton"
    with pytest.raises(CatalogError, match=r"plain.csv: column\(s\) \['image_path'\] not found; .*"
                                           r"Fix data.table.columns.image_path in params.yaml"):
        read_table(tmp_path / "plain.csv", {"product_id": "id", "title_raw": "title"})
    with pytest.raises(CatalogError, match=r"plain.csv: column\(s\) \['picture'\] not found; .*columns.image_path"):
        read_table(tmp_path / "plain.csv", {**columns, "image_path": "picture"})


def test_rows_are_numbered_alike_in_csv_tsv_and_parquet(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "title": ["x", "y"], "image": ["a.png", "b.png"]})
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_csv(tmp_path / "c.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "c.parquet")
    for name in ["c.csv", "c.tsv", "c.parquet"]:  # data rows from 1, the header not counted
        df = read_table(tmp_path / name, {"product_id": "id", "title_raw": "title", "image_path": "image"})
        assert df["source"].tolist() == [f"{tmp_path / name} row 1", f"{tmp_path / name} row 2"]


def test_missing_required_column_and_unknown_source():
    with pytest.raises(CatalogError, match=r"catalog.csv: missing required column\(s\) \['image_path'\]"):
        catalog.conform(pd.DataFrame({"product_id": ["a"], "title_raw": ["x"]}), "catalog.csv")
    with pytest.raises(ParamsError, match=r"data.source='s3'.*\['demo', 'table', 'fashion_product', 'fashiongen', 'webdataset'\]"):
        ingest({"source": "s3", "path": "."}, None)


def png(color, size=(40, 40), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


FASHION_PRODUCT = {
    "id": [15970, 39386, 59263], "gender": ["Men", "Men", "Women"], "masterCategory": ["Apparel"] * 2 + ["Accessories"],
    "subCategory": ["Topwear", "Bottomwear", "Watches"], "articleType": ["Shirts", "Jeans", "Watches"],
    "baseColour": ["Navy Blue", "Blue", "Silver"], "season": ["Fall", "Summer", "Winter"], "year": [2011.0, 2012.0, None],
    "usage": ["Casual", "Casual", "Casual"],
    "productDisplayName": ["Turtle Check Men Navy Blue Shirt", "Peter England Men Party Blue Jeans", "Titan Women Watch"],
}


def test_fashion_product_parquet_maps_the_hierarchy_and_writes_images(tmp_path):
    images = [{"bytes": png("navy"), "path": "15970.jpg"}, {"bytes": png("blue", fmt="JPEG"), "path": None}, None]
    pd.DataFrame({**FASHION_PRODUCT, "image": images}).to_parquet(tmp_path / "train-00000-of-00001.parquet")
    df = ingest({"source": "fashion_product", "path": str(tmp_path), "fashion_product": {"files": "*.parquet"}},
                tmp_path / "raw")
    assert df["product_id"].tolist() == ["15970", "39386", "59263"]
    assert df.loc[0, ["category", "subcategory", "article_type", "color", "gender", "season", "usage"]].tolist() == \
        ["Apparel", "Topwear", "Shirts", "Navy Blue", "Men", "Fall", "Casual"]
    assert df.loc[0, "title_raw"] == "Turtle Check Men Navy Blue Shirt" and df.loc[0, "year"] == "2011"
    assert (tmp_path / "raw" / df.loc[0, "image_path"]).read_bytes() == images[0]["bytes"]
    assert df.loc[1, "image_path"].endswith(".jpg")  # no name: the bytes say JPEG
    assert pd.isna(df.loc[2, "image_path"])  # no image: clean rejects the row as missing_image
    assert df.loc[2, "source"].endswith("train-00000-of-00001.parquet row 3")


def test_fashion_product_wrong_layout_names_the_missing_columns(tmp_path):
    pd.DataFrame({k: v for k, v in FASHION_PRODUCT.items() if k != "articleType"}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(CatalogError, match=r"x.parquet: missing column\(s\) \['articleType', 'image'\]; .*expects"):
        ingest({"source": "fashion_product", "path": str(tmp_path), "fashion_product": {"files": "*.parquet"}}, tmp_path)
    with pytest.raises(CatalogError, match=r"no parquet files matching '\*.pq'.*data.fashion_product.files"):
        ingest({"source": "fashion_product", "path": str(tmp_path), "fashion_product": {"files": "*.pq"}}, tmp_path)


def test_fashion_product_image_column_of_file_names_stops_ingest(tmp_path):
    pd.DataFrame({**FASHION_PRODUCT, "image": ["15970.jpg", "39386.jpg", "59263.jpg"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(CatalogError, match=r"x.parquet: column 'image' is \w+; .*expects a struct \{bytes.*data.source: table"):
        ingest({"source": "fashion_product", "path": str(tmp_path), "fashion_product": {"files": "*.parquet"}}, tmp_path)


def write_fashiongen(path, n=5, keys=None):
    fields = {
        "input_image": np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(n)]),
        "input_productID": np.array([[101], [101], [102], [103], [103]])[:n],
        "input_name": np.array([[b"LEATHER JACKET"], [b"LEATHER JACKET"], [b"Caf\xe9 Shirt"], [b"Tee"], [b"Tee"]])[:n],
        "input_description": np.array([[b"<p>Soft lambskin</p>"]] * n),
        "input_category": np.array([[b"JACKETS & COATS"]] * n),
        "input_subcategory": np.array([[b"LEATHER JACKETS"]] * n),
    }
    with h5py.File(path, "w") as h5:
        for key, value in fields.items():
            if keys is None or key in keys:
                h5.create_dataset(key, data=value)


def test_fashiongen_hdf5_groups_the_poses_of_a_product(tmp_path):
    write_fashiongen(tmp_path / "fashiongen_256_256_train.h5")
    df = ingest({"source": "fashiongen", "path": str(tmp_path), "fashiongen": {"files": "*.h5"}}, tmp_path / "raw")
    assert df["product_id"].tolist() == ["101-0", "101-1", "102-0", "103-0", "103-1"]
    assert df["group_id"].tolist() == ["101", "101", "102", "103", "103"]
    assert df.loc[2, "title_raw"] == "Café Shirt"  # not UTF-8: read as Latin-1, not a crash
    assert df.loc[0, "category"] == "JACKETS & COATS" and df.loc[0, "subcategory"] == "LEATHER JACKETS"
    pixels = np.asarray(Image.open(tmp_path / "raw" / df.loc[3, "image_path"]))
    assert pixels.shape == (32, 32, 3) and (pixels == 120).all()  # lossless
    assert df.loc[4, "source"].endswith("fashiongen_256_256_train.h5 index 4")


def test_fashiongen_reads_gender_season_brand_and_pose(tmp_path):
    write_fashiongen(tmp_path / "f.h5", n=2)
    with h5py.File(tmp_path / "f.h5", "a") as h5:
        h5["input_gender"] = np.array([[b"MEN"], [b"WOMEN"]])
        h5["input_season"] = np.array([[b"SS2017"], [b"FW2016"]])
        h5["input_brand"] = np.array([[b"Saint Laurent"], [b"Acne Studios"]])
        h5["input_pose"] = np.array([[b"id_gridfs_1"], [b"id_gridfs_2"]])
    df = ingest({"source": "fashiongen", "path": str(tmp_path), "fashiongen": {"files": "*.h5"}}, tmp_path / "raw")
    assert df[["gender", "season", "brand", "pose"]].values.tolist() == [
        ["MEN", "SS2017", "Saint Laurent", "id_gridfs_1"], ["WOMEN", "FW2016", "Acne Studios", "id_gridfs_2"]]


def test_fashiongen_wrong_layout_names_the_missing_keys(tmp_path):
    write_fashiongen(tmp_path / "f.h5", keys={"input_image", "input_name"})
    with pytest.raises(CatalogError, match=r"f.h5: missing dataset\(s\) \['input_productID', 'input_description'"):
        ingest({"source": "fashiongen", "path": str(tmp_path), "fashiongen": {"files": "*.h5"}}, tmp_path)


def test_webdataset_shards_keep_every_caption(tmp_path):
    for shard, samples in enumerate([
        [{"__key__": "p001", "jpg": png("red", fmt="JPEG"), "txt": "red wool coat"},
         {"__key__": "p002", "png": png("blue"),
          "json": json.dumps({"captions": ["blue jeans", "denim trousers"], "color": "Blue", "group_id": "g2"})}],
        [{"__key__": "p003", "json": json.dumps({"title": "Lost Image Shirt"})}],
    ]):
        with wds.TarWriter(str(tmp_path / f"shard-{shard:06d}.tar")) as sink:
            for sample in samples:
                sink.write(sample)
    df = ingest({"source": "webdataset", "path": str(tmp_path), "webdataset": {"urls": "shard-{000000..000001}.tar"}},
                tmp_path / "raw")
    assert df["product_id"].tolist() == ["p001", "p002", "p003"]
    assert df["captions"].map(list).tolist() == [["red wool coat"], ["blue jeans", "denim trousers"], []]
    assert df["title_raw"].tolist() == ["red wool coat", "blue jeans", "Lost Image Shirt"]
    assert df.loc[1, "color"] == "Blue" and df.loc[1, "group_id"] == "g2" and df.loc[0, "group_id"] == "p001"
    assert (tmp_path / "raw" / df.loc[1, "image_path"]).read_bytes() == png("blue") and pd.isna(df.loc[2, "image_path"])
    assert df.loc[2, "source"].endswith("shard-000001.tar key p003")


def test_webdataset_nested_attributes_fill_the_catalog_columns(tmp_path):
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "p1", "png": png("red"), "json": json.dumps({
            "title": "Red Shirt", "pattern": "solid", "attributes": {"color": "Red", "pattern": "striped", "fit": "slim"}})})
        sink.write({"__key__": "p2", "png": png("blue"), "json": json.dumps({"title": "Blue Shirt", "color": "Blue"})})
    with wds.TarWriter(str(tmp_path / "b.tar")) as sink:
        sink.write({"__key__": "p3", "png": png("red"), "json": json.dumps({"attributes": {"title": "Red Shirt"}})})

    def read(urls):
        return ingest({"source": "webdataset", "path": str(tmp_path), "webdataset": {"urls": urls}}, tmp_path / "raw")

    df = read("a.tar")
    assert df["color"].tolist() == ["Red", "Blue"] and df.loc[0, "pattern"] == "solid"  # the top level wins
    assert df.loc[0, "fit"] == "slim" and pd.isna(df.loc[1, "fit"])  # not a Catalog attribute: an extra column
    with pytest.raises(CatalogError, match=r"b.tar key p3: json 'attributes' is \{'title'.*top level"):
        read("b.tar")


def test_webdataset_wrong_layout_says_what_a_sample_needs(tmp_path):
    with wds.TarWriter(str(tmp_path / "labels.tar")) as sink:
        sink.write({"__key__": "a", "cls": b"3"})
    with pytest.raises(CatalogError, match=r"labels.tar: samples have \['cls'\]; .*expects an image"):
        ingest({"source": "webdataset", "path": str(tmp_path), "webdataset": {"urls": "labels.tar"}}, tmp_path / "raw")
    with pytest.raises(CatalogError, match=r"nope.tar: shard not found"):
        ingest({"source": "webdataset", "path": str(tmp_path), "webdataset": {"urls": ["nope.tar"]}}, tmp_path / "raw")


def test_webdataset_default_urls_read_every_shard_in_the_folder(tmp_path):
    for shard in range(11):
        with wds.TarWriter(str(tmp_path / f"shards-{shard:06d}.tar")) as sink:
            sink.write({"__key__": f"p{shard:03d}", "png": png("red"), "txt": f"shirt {shard}"})

    def read(urls):
        params = {"source": "webdataset", "path": str(tmp_path), "webdataset": {"urls": urls}}
        return ingest(params, tmp_path / "raw")["product_id"].tolist()

    assert read(load_params(ROOT / "params.yaml")["data"]["webdataset"]["urls"]) == [f"p{i:03d}" for i in range(11)]
    assert read(["shards-00000{0..1}.tar", "shards-000010.tar"]) == ["p000", "p001", "p010"]
    with pytest.raises(CatalogError, match=r"no shards matching '\*.tgz'; .*data.webdataset.urls"):
        read("*.tgz")


def test_table_images_by_root_absolute_path_or_downloaded_url(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "dl" / "cdn.example.com" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "pics" / "r.png")
    Image.new("RGB", (40, 40), "blue").save(tmp_path / "dl" / "cdn.example.com" / "a" / "img.png")
    Image.new("RGB", (40, 40), "green").save(tmp_path / "dl" / "g.png")
    pd.DataFrame({"id": list("abcde"), "title": ["x"] * 5, "image": [
        "r.png", str(tmp_path / "pics" / "r.png"), "https://cdn.example.com/a/img.png", "https://other.net/x/g.png",
        "https://cdn.example.com/never.png"]}).to_csv(tmp_path / "cat.csv", index=False)
    params = {"source": "table", "path": str(tmp_path), "table": {
        "file": "cat.csv", "image_root": "pics", "url_folder": "dl",
        "columns": {"product_id": "id", "title_raw": "title", "image_path": "image"}}}
    df = ingest(params, tmp_path / "raw")
    assert df["image_path"].tolist()[:4] == [str(tmp_path / "pics" / "r.png")] * 2 + [
        str(tmp_path / "dl" / "cdn.example.com" / "a" / "img.png"), str(tmp_path / "dl" / "g.png")]
    assert df.loc[4, "image_path"] == "https://cdn.example.com/never.png"  # clean: image_not_downloaded
