"""The `catalog-search` command.

    catalog-search search "black maxi dress" --scenario dual_lora -k 10 [--json]
    catalog-search search --image photo.jpg --where color=black --where category=dresses
    catalog-search search "black maxi dress" --text-embedder [-k 10] [--json]
    catalog-search serve [--arena zero_shot dual_lora] [--encoder onnx] [--port 8000]   # API + search page
    catalog-search arena --a zero_shot --b dual_lora [--port 8000]   # the same server, arena at /arena/
    catalog-search export-onnx dual_lora            # models/onnx/dual_lora: image + text towers, tokenizer
    catalog-search push-shards s3://bucket/catalog/shards   # then shard.read_from: s3://... (no local copy needed)
    catalog-search arena-report                     # votes -> metrics/arena.json
    catalog-search attributes photo.jpg [more.jpg ...]   # structured attributes (JSON) from the classifier
    catalog-search clean prepare [--dry-run] | dispatch | monitor [--wait] | finalize | cancel
                                                    # clean.backend openai_batch, by hand over hours
    catalog-search run-catalog runs/fashion-product-images.yaml   # another catalog: sweep, seeds -> results/
    catalog-search run-recipes runs/fashion-product-images.yaml   # its recipes vs the plain one -> results/
    catalog-search run-attributes runs/fashion-product-images.yaml   # classifier and VLM side by side -> results/

Run it in the project folder after `dvc repro`: it reads params.yaml (validated whole first, whatever
the command), models/ and data/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from catalog_search.config import AttributesParams, Params, ServeParams, TextEmbedderParams, start


def search_text_embedder(query: str, k: int, p: TextEmbedderParams) -> list[dict]:
    """Query -> product description search with the tuned text embedder, over the description
    index serve_text_index saved (only the query is encoded here)."""
    from catalog_search.index import ProductIndex
    from catalog_search.serving.catalog_index import folder_fingerprint
    from catalog_search.text_embedder import load_model

    index = ProductIndex(Path("data/serving/text_embedder"), build_hint="run `dvc repro serve_text_index`")
    if index.info["model_fingerprint"] != f"{p.base}+{folder_fingerprint(Path('models/text_embedder'))}":
        raise SystemExit("catalog-search: data/serving/text_embedder was built with another text embedder; "
                         "run `dvc repro serve_text_index`")
    model = load_model(p.base, "models/text_embedder", max_length=p.max_length)
    hits = index.query(np.asarray(model.encode([query], convert_to_numpy=True), np.float32), k)[0]
    descriptions = index.items.set_index("product_id")["description"]
    return [{**h, "description": descriptions[h["product_id"]]} for h in hits]


def image_attributes(paths: list[Path], model_dir: Path, p: AttributesParams) -> list[dict]:
    """The classifier's attributes for each image file, with confidences; `value` is null below
    attributes.min_confidence (or for "other"), as in predict_attributes."""
    from PIL import Image

    from catalog_search.attributes.evaluate import catalog_predictions
    from catalog_search.attributes.model import load_classifier
    from catalog_search.attributes.train import predict_probs
    from catalog_search.core.device import pick_device

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, ValueError) as e:
            raise SystemExit(f"catalog-search: {path}: not a readable image ({e})")
    try:
        model, labels, _ = load_classifier(model_dir)
    except FileNotFoundError as e:
        raise SystemExit(f"catalog-search: {e}")
    device = pick_device()
    probs = predict_probs(model.to(device), [path.read_bytes() for path in paths], p.batch_size, device)
    records = catalog_predictions(labels, [{"product_id": str(path)} for path in paths], probs, p.min_confidence)
    return [{"image": r["product_id"], "attributes": r["attributes"]} for r in records]


def clean_step(args: argparse.Namespace, params: Params) -> int:
    """One step of openai_batch cleaning, on the stage's paths (data/raw -> data/clean)."""
    if params.clean.backend != "openai_batch":
        raise SystemExit("catalog-search: clean.backend is not openai_batch in params.yaml; set it to run these steps "
                         "(the rules backend has one step: `dvc repro clean`)")
    if args.dry_run and args.step != "prepare":
        raise SystemExit("catalog-search: --dry-run goes with `clean prepare`")
    from catalog_search.cleaning.openai_batch.workflow import run_step

    return run_step(args.step, Path("data/raw/catalog.parquet"), Path("data/clean"), params.clean.model_dump(),
                    dry_run=args.dry_run, wait=args.wait)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catalog-search", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="rank products for a text query or a query image")
    s.add_argument("query", nargs="?")
    s.add_argument("--image", type=Path, help="search with this photo instead of text")
    s.add_argument("--scenario", help="scenario whose serving index to search (default: the first of serve.scenarios)")
    s.add_argument("--text-embedder", action="store_true", help="rank product descriptions with models/text_embedder")
    s.add_argument("--where", action="append", default=[], metavar="ATTR=VALUE",
                   help="keep products whose attribute equals VALUE (repeatable; case-insensitive)")
    s.add_argument("--attributes-from", choices=["classifier", "vlm"], default="classifier",
                   help="which model's filled-in attributes --where also matches (predict_attributes or extract_vlm)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    v = sub.add_parser("serve", help="HTTP API + search page over the serving index (and the arena with --arena)")
    v.add_argument("--arena", nargs=2, metavar=("A", "B"), help="also serve the blind A/B arena of two scenarios")
    v.add_argument("--encoder", choices=["torch", "onnx"], help="query encoder (default: serve.encoder)")
    v.add_argument("--host", help="default: serve.host (127.0.0.1)")
    v.add_argument("--port", type=int, help="default: serve.port")
    v.add_argument("--db", type=Path, default=Path("arena/votes.sqlite"), help="the arena's votes")
    a = sub.add_parser("arena", help="blind A/B comparison of two scenarios in the browser (serve --arena A B)")
    a.add_argument("--a", required=True, help="scenario A")
    a.add_argument("--b", required=True, help="scenario B")
    a.add_argument("--host")
    a.add_argument("--port", type=int)
    a.add_argument("--db", type=Path, default=Path("arena/votes.sqlite"))
    ps = sub.add_parser("push-shards", help="upload data/shards to a URL (s3://bucket/prefix) that shard.read_from "
                        "can name; credentials from the environment")
    ps.add_argument("url")
    x = sub.add_parser("export-onnx", help="ONNX image and text towers of a trained scenario -> models/onnx/<s>")
    x.add_argument("scenario")
    r = sub.add_parser("arena-report", help="win rates with 95%% Wilson intervals -> metrics/arena.json")
    r.add_argument("--db", type=Path, default=Path("arena/votes.sqlite"))
    r.add_argument("--out", type=Path, default=Path("metrics/arena.json"))
    t = sub.add_parser("attributes", help="predict attributes of images with models/attributes (JSON lines)")
    t.add_argument("images", nargs="+", type=Path)
    t.add_argument("--model", type=Path, default=Path("models/attributes"))
    rc = sub.add_parser("run-catalog", help="the graph on another catalog with a fair tuning sweep and seeds, "
                        "in a clone under .runs/ -> results/<name>/")
    rc.add_argument("run_file", type=Path, help="e.g. runs/fashion-product-images.yaml")
    rr = sub.add_parser("run-recipes", help="the run file's recipes (levers) against the plain one, with seeds and "
                        "paired intervals, in the run-catalog clone -> its recipes.results")
    rr.add_argument("run_file", type=Path, help="e.g. runs/fashion-product-images.yaml")
    rr.add_argument("--no-train", action="store_true", help="only assemble the results of the finished runs")
    ra = sub.add_parser("run-attributes", help="the attribute classifier and the VLM side by side on the run file's "
                        "catalog, in the run-catalog clone -> its attributes.results")
    ra.add_argument("run_file", type=Path, help="e.g. runs/fashion-product-images.yaml")
    c = sub.add_parser("clean", help="VLM cleaning through the OpenAI Batch API, one step at a time "
                                     "(clean.backend: openai_batch; `dvc repro clean` runs every step)")
    c.add_argument("step", choices=["prepare", "dispatch", "monitor", "finalize", "cancel"])
    c.add_argument("--dry-run", action="store_true", help="prepare: print requests, tokens and cost; send nothing")
    c.add_argument("--wait", action="store_true", help="monitor: poll with backoff until every batch has finished")
    args = parser.parse_args(argv)
    params = start()
    if args.command == "clean":
        sys.exit(clean_step(args, params))
    if args.command in ("run-catalog", "run-recipes", "run-attributes"):
        if not args.run_file.exists():
            raise SystemExit(f"catalog-search: run file {args.run_file} not found (e.g. runs/fashion-product-images.yaml)")
        if args.command == "run-catalog":
            from catalog_search.runs import run_catalog

            run_catalog(args.run_file)
        elif args.command == "run-attributes":
            from catalog_search.attribute_runs import run_attributes

            run_attributes(args.run_file)
        else:
            from catalog_search.recipes import run_recipes

            run_recipes(args.run_file, train=not args.no_train)
        return
    if args.command == "attributes":
        for row in image_attributes(args.images, args.model, params.attributes):
            print(json.dumps(row))
    elif args.command in ("serve", "arena"):
        serve_command(args, params.serve)
    elif args.command == "push-shards":
        from catalog_search.shards import push_shards

        if not Path("data/shards/manifest.json").exists():
            raise SystemExit("catalog-search: no data/shards/manifest.json: run `dvc repro shard` first")
        names = push_shards(Path("data/shards"), args.url)
        print(f"{args.url}: {len(names)} files (the manifest last); set shard.read_from: {args.url}")
    elif args.command == "export-onnx":
        from catalog_search.serving.onnx_export import export_onnx

        from catalog_search.search import encoder_dir

        merged, out = encoder_dir(Path("."), args.scenario, "torch"), encoder_dir(Path("."), args.scenario, "onnx")
        if not merged.exists():
            raise SystemExit(f"catalog-search: no {merged}: run `dvc repro train@{args.scenario}` first")
        try:
            info = export_onnx(merged, out)
        except ValueError as e:
            raise SystemExit(f"catalog-search: {e}")
        print(f"{out}: image.onnx, text.onnx, tokenizer (model {info['model_fingerprint']})")
    elif args.command == "arena-report":
        from catalog_search.arena.store import VoteStore
        from catalog_search.io import write_json

        if not args.db.exists():
            raise SystemExit(f"catalog-search: no votes at {args.db}; collect some with `catalog-search arena`")
        stats = VoteStore(args.db).stats()
        write_json(args.out, stats)
        print(f"{args.out}: {stats['votes']} votes")
    else:
        search(parser, args, params)


def serve_command(args: argparse.Namespace, cfg: ServeParams) -> None:
    """`serve` and `arena`: params.yaml's serve section, with the command line's overrides."""
    from catalog_search.serving.app import serve

    overrides = {k: getattr(args, k) for k in ("host", "port", "encoder") if getattr(args, k, None) is not None}
    cfg = cfg.model_copy(update=overrides)
    arena = tuple(args.arena) if getattr(args, "arena", None) else (args.a, args.b) if args.command == "arena" else None
    try:
        serve(Path("."), cfg, arena, args.db)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"catalog-search: {e}")


def search(parser: argparse.ArgumentParser, args: argparse.Namespace, params: Params) -> None:
    if (args.query is None) == (args.image is None):
        parser.error("give a text query or --image PATH (one of them)")
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            parser.error(f"--where {item!r}: expected ATTR=VALUE, e.g. --where color=black")
        where[key.strip()] = value.strip()
    if args.text_embedder:
        if args.image or where:
            parser.error("--text-embedder ranks descriptions for a text query; --image/--where need --scenario")
        results = search_text_embedder(args.query, args.k, params.text_embedder)
    else:
        from catalog_search.search import ScenarioSearch

        serve = params.serve
        try:
            engine = ScenarioSearch(args.scenario or serve.scenarios[0], attributes_from=args.attributes_from,
                                    qdrant_url=serve.qdrant.url)
            results = (engine.search_image(args.image, args.k, where) if args.image
                       else engine.search_text(args.query, args.k, where))
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise SystemExit(f"catalog-search: {e}")
    if not results and not args.json:
        print("no products match")
    for row in results:
        print(json.dumps(row) if args.json else f"{row['rank']:>3}  {row['score']:.3f}  {row['product_id']}  {row['title']}")


if __name__ == "__main__":
    main(sys.argv[1:])
