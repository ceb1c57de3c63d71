"""The table source reads its images in place: a picture overwritten there, inside data.path or
outside it, must re-run clean (DVC would otherwise keep the old picture: ingest only stores paths).
A real DVC repo in a temporary folder, `dvc repro clean` on a three-product catalog."""
import json

import pandas as pd
from PIL import Image

from test_pipeline import default_params, project, run, stages_run


def png(path, colour: str) -> None:
    Image.new("RGB", (40, 40), colour).save(path)


def stored_colour(root, product_id: str) -> tuple:
    kept = pd.read_parquet(root / "data/clean/catalog.parquet").set_index("product_id")
    return Image.open(root / "data/clean" / kept.at[product_id, "image_path"]).convert("RGB").getpixel((20, 20))


def status(root) -> dict:
    return json.loads(run(["dvc", "status", "--with-deps", "--json", "clean"], root).stdout)


def test_an_image_overwritten_in_place_reruns_clean(tmp_path):
    data, elsewhere = tmp_path / "catalog", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    png(data / "a.png", "red")
    png(data / "b.png", "green")
    png(elsewhere / "c.png", "blue")  # an absolute path outside data.path
    pd.DataFrame({"id": ["a", "b", "c"], "title": ["Red Shirt", "Green Shirt", "Blue Shirt"],
                  "image": ["a.png", "b.png", str(elsewhere / "c.png")]}).to_csv(data / "catalog.csv", index=False)
    params = default_params()
    params["data"].update(source="table", path=str(data))
    params["data"]["table"].update(columns={"product_id": "id", "image_path": "image", "title_raw": "title"})
    params["clean"]["workers"] = 0
    root = project(tmp_path / "project", params)
    assert stages_run(run(["dvc", "repro", "clean"], root).stdout) == {"ingest", "image_hashes", "clean"}
    assert stored_colour(root, "a") == (255, 0, 0) and stored_colour(root, "c") == (0, 0, 255)
    # nothing changed: only the always-run hashing, whose output is the same, so clean is skipped
    assert stages_run(run(["dvc", "repro", "clean"], root).stdout) == {"image_hashes"}

    png(data / "a.png", "yellow")  # inside data.path: ingest's dep changed, ingest's output does not
    assert set(status(root)) == {"ingest", "image_hashes"}
    assert stages_run(run(["dvc", "repro", "clean"], root).stdout) == {"ingest", "image_hashes", "clean"}
    assert stored_colour(root, "a") == (255, 255, 0)

    png(elsewhere / "c.png", "magenta")  # outside data.path: no dep of ingest changed
    assert status(root) == {"image_hashes": ["always changed"]}
    assert stages_run(run(["dvc", "repro", "clean"], root).stdout) == {"image_hashes", "clean"}
    assert stored_colour(root, "c") == (255, 0, 255)
