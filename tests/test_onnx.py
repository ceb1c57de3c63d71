"""ONNX serving path: the default architecture (packaged weights) exported, then checked against open_clip."""
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from sklearn.datasets import load_sample_image

from catalog_search import catalog
from catalog_search.index import file_fingerprint
from catalog_search.models.export import save_model
from catalog_search.models.registry import create_model
from catalog_search.serving.encoders import OnnxEncoder, TorchEncoder, load_encoder, preprocess_image
from catalog_search.serving.onnx_export import export_onnx
from conftest import ROOT

N = 64
ODD_TEXTS = ["", "   ", "ÉTÉ Robe &amp;amp; Ceinture", "tab\tand\nnewline", "word " * 60, "日本 の ドレス"]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The default model (MiniLM + EfficientNet-Lite0, packaged weights, untrained projections), saved as train does."""
    torch.manual_seed(0)
    bundle = create_model("minilm-efficientnet-lite0", "packaged", image_size=64)
    out = tmp_path_factory.mktemp("model")
    save_model(out, bundle, None, {})
    return out / "merged"


@pytest.fixture(scope="module")
def exported(merged):
    start = time.perf_counter()
    spec = export_onnx(merged, merged.parent / "onnx")
    print(f"export {time.perf_counter() - start:.1f} s")
    return merged.parent / "onnx", spec


@pytest.fixture(scope="module")
def samples(demo_raw):
    """64 demo catalog images and titles, plus two large non-square photos (real downscale + crop)."""
    path, df = demo_raw
    images = [Image.open(catalog.resolve_image(path, p)) for p in df["image_path"][:N]]
    photos = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    return images + photos, list(df["title_raw"][:N]) + ODD_TEXTS


def test_export_writes_the_torch_free_side_its_inputs(exported, merged):
    out, spec = exported
    assert {"image.onnx", "text.onnx", "tokenizer.json", "vocab.txt", "encoder.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "encoder.json").read_text()) == spec
    assert spec["model_fingerprint"] == file_fingerprint(merged / "open_clip_model.safetensors")
    assert spec["embed_dim"] == 256 and spec["image"]["size"] == [64, 64] and spec["text"]["context_length"] == 32
    assert min(spec["check"].values()) >= 0.9999
    assert not list(out.parent.glob(".onnx.*")), "the temp folder is gone"


def test_onnx_matches_open_clip_on_real_images_and_titles(exported, merged, samples):
    out, spec = exported
    images, titles = samples
    onnx, torch_enc = OnnxEncoder(out), TorchEncoder(merged)
    assert onnx.fingerprint == torch_enc.fingerprint and onnx.dim == torch_enc.dim == 256
    # inputs: bit-identical to open_clip's transform and tokenizer
    transform = image_transform_v2(PreprocessCfg(**json.loads((merged / "open_clip_config.json").read_text())
                                                 ["preprocess_cfg"]), is_train=False)
    for im in images:
        assert np.array_equal(preprocess_image(im, spec["image"]), transform(im.convert("RGB")).numpy())
    np.testing.assert_array_equal(onnx.tokenize(titles), open_clip.get_tokenizer(f"local-dir:{merged}")(titles).numpy())
    # outputs: each side through its own preprocessing
    for a, b, kind in ((onnx.encode_image(images), torch_enc.encode_image(images), "image"),
                       (onnx.encode_text(titles), torch_enc.encode_text(titles), "text")):
        assert a.dtype == np.float32 and a.shape == b.shape == (len(images if kind == "image" else titles), 256)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
        cos = (a * b).sum(1)
        print(f"{kind}: min cosine {cos.min():.7f}")
        assert cos.min() >= 0.9999, kind


@pytest.mark.parametrize("cfg", [
    {"size": [64, 64], "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": [48, 80], "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": [64, 64], "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 7},
    {"size": [40, 72], "resize_mode": "squash", "interpolation": "bicubic"},
])
def test_every_resize_mode_equals_open_clips_transform(cfg, samples):
    full = {"mean": [0.48, 0.45, 0.4], "std": [0.26, 0.26, 0.27], "fill_color": 0, **cfg}
    transform = open_clip.image_transform(tuple(full["size"]), is_train=False, mean=full["mean"], std=full["std"],
                                          resize_mode=full["resize_mode"], interpolation=full["interpolation"],
                                          fill_color=full["fill_color"])
    images = samples[0][:2] + samples[0][-2:] + [Image.new("L", (20, 90), 200), Image.new("RGB", (7, 5), (9, 99, 199))]
    for im in images:
        assert np.array_equal(preprocess_image(im, full), transform(im.convert("RGB")).numpy()), (cfg, im.size)


def test_onnx_encoder_never_imports_torch(exported, samples):
    out, _ = exported
    image = samples[0][0].filename
    code = ("import sys; from PIL import Image; from catalog_search.serving.encoders import load_encoder; "
            f"e = load_encoder('onnx', {str(out)!r}, threads=1); "
            f"assert e.encode_text(['red dress']).shape == e.encode_image([Image.open({image!r})]).shape == (1, 256); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]


def test_encoders_are_safe_from_several_threads(exported, merged, samples):
    images, titles = samples
    for enc in (OnnxEncoder(exported[0], threads=1), TorchEncoder(merged)):
        serial = [enc.encode_text([t]) for t in titles[:8]] + [enc.encode_image([im]) for im in images[:8]]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(enc.encode_text, [t]) for t in titles[:8]]
            futures += [pool.submit(enc.encode_image, [im]) for im in images[:8]]
            for want, fut in zip(serial, futures):
                np.testing.assert_allclose(fut.result(), want, atol=1e-6)
        assert enc.encode_text([]).shape == enc.encode_image([]).shape == (0, 256)


def test_a_model_without_hf_tokenizer_is_refused_with_the_fix(tmp_path):
    save_model(tmp_path, create_model("tiny", "none"), None, {})
    with pytest.raises(ValueError, match="needs a Hugging Face tokenizer.*torch encoder"):
        export_onnx(tmp_path / "merged", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_missing_model_folder_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"onnx/dual_lora.*catalog-search export-onnx dual_lora"):
        load_encoder("onnx", tmp_path / "models" / "onnx" / "dual_lora")
    with pytest.raises(FileNotFoundError, match=r"dual_lora/merged.*dvc repro train@dual_lora"):
        load_encoder("torch", tmp_path / "models" / "dual_lora" / "merged")


def test_serve_answers_with_onnx_and_never_imports_torch(exported, demo_raw, tmp_path):
    """`catalog-search serve --encoder onnx` in a project whose serving index this model built."""
    import shutil
    import socket

    import httpx

    from catalog_search.serving.catalog_index import build_image_index

    raw, _ = demo_raw
    root = tmp_path / "project"
    shutil.copytree(raw.parent, root / "data/clean")
    shutil.copytree(exported[0], root / "models/onnx/dual_lora")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    build_image_index(root / "data/clean/catalog.parquet", None, OnnxEncoder(root / "models/onnx/dual_lora"),
                      root / "data/serving/dual_lora", root / "data/serving_cache/dual_lora", 32, {"scenario": "dual_lora"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [sys.executable, "-c", "from catalog_search.cli import main; main()"]
    server = subprocess.Popen([*cli, "serve", "--encoder", "onnx", "--port", str(port)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None and time.time() < deadline, server.stdout.read() if server.poll() else "timeout"
            try:
                httpx.get(url + "/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        hits = httpx.get(url + "/api/search", params={"q": "red dress", "k": 5}, timeout=30).json()["results"]
        image = httpx.get(url + hits[0]["image_url"]).content
        by_photo = httpx.post(url + "/api/search/image", files={"image": ("q.png", image, "image/png")}, timeout=30)
        health = httpx.get(url + "/api/health").json()
    finally:
        server.terminate()
        server.wait(10)
    assert len(hits) == 5 and by_photo.status_code == 200
    assert by_photo.json()["results"][0]["score"] > 0.999  # a product's own photo finds its own vector
    assert health == {"scenarios": {"dual_lora": 120}, "encoder": "onnx", "torch_imported": False, "arena": None}
