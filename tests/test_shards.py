import hashlib
import json

import pandas as pd
import pytest

from catalog_search.catalog import CatalogError
from catalog_search.shards import assign_splits, iter_samples, shard_urls


def test_splits_keep_groups_together_and_stratify():
    df = pd.DataFrame({"group_id": [f"g{i // 2}" for i in range(400)],
                       "article_type": [["Dress", "Coat", "Bag", "Shirt"][(i // 2) % 4] for i in range(400)]})
    split = assign_splits(df, 0.1, 0.1, "article_type", 0)
    assert (df.assign(split=split).groupby("group_id")["split"].nunique() == 1).all()
    counts = split.value_counts()
    assert 30 <= counts["test"] <= 50 and 30 <= counts["val"] <= 50
    per_type = df[split == "test"]["article_type"].value_counts()
    assert per_type.min() >= 5  # every type is represented in test
    assert split.tolist() == assign_splits(df, 0.1, 0.1, "article_type", 0).tolist()  # deterministic


def test_classes_rarer_than_the_folds_do_not_stop_a_small_catalog():
    """Alone, scikit-learn stops here: "n_splits=7 cannot be greater than the number of members in
    each class" (the test holdout: 7 folds, no type with 7 rows). Rare types share one bucket."""
    rows = [(f"{t}{k}", t) for t in ["Dress", "Coat", "Bag"] for k in range(3) for _ in (0, 1)] + [("hat", "Hat")]
    df = pd.DataFrame(rows, columns=["group_id", "article_type"])  # 9 groups of 2 rows, and a single hat
    split = assign_splits(df, 0.1, 0.15, "article_type", 0)
    assert (df.assign(split=split).groupby("group_id")["split"].nunique() == 1).all()
    assert set(split) == {"train", "val", "test"}
    assert split.tolist() == assign_splits(df, 0.1, 0.15, "article_type", 0).tolist()


def test_too_few_groups_is_an_error():
    with pytest.raises(CatalogError, match="at least 3"):
        assign_splits(pd.DataFrame({"group_id": ["a", "a", "b"], "article_type": ["x"] * 3}), 0.1, 0.1, None, 0)


def test_shards_round_trip_with_manifest(demo_shards):
    shards, kept = demo_shards
    manifest = json.loads((shards / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        samples = list(iter_samples(shards, split))
        expected = kept[kept["split"] == split]
        assert len(samples) == manifest["splits"][split]["samples"] == len(expected)
        assert sorted(s["product_id"] for s in samples) == sorted(expected["product_id"])
        for entry, url in zip(manifest["splits"][split]["shards"], shard_urls(shards, split)):
            assert hashlib.sha256(open(url, "rb").read()).hexdigest() == entry["sha256"]
    sample = next(iter_samples(shards, "test"))
    row = kept.set_index("product_id").loc[sample["product_id"]]
    assert sample["captions"] == list(row["captions"]) and sample["color"] == row["color"]
    assert sample["image"][:8] == b"\x89PNG\r\n\x1a\n"
    assert not set(s["group_id"] for s in iter_samples(shards, "train")) & set(s["group_id"] for s in iter_samples(shards, "test"))


def test_shards_are_webdataset_tars_without_importing_torch(demo_shards):
    """The stdlib writer/reader keeps the shard stage free of torch; webdataset itself reads the files."""
    import subprocess
    import sys

    import webdataset as wds

    shards, _ = demo_shards
    ours = [(s["key"], s["image"], s["product_id"]) for s in iter_samples(shards, "val")]
    theirs = [(s["__key__"], s["png"], json.loads(s["json"])["product_id"])
              for s in wds.WebDataset(shard_urls(shards, "val"), shardshuffle=False, empty_check=False)]
    assert ours == theirs and ours
    probe = "import sys, catalog_search.shards, catalog_search.sources, catalog_search.cleaning; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
