import ast
import copy
import shutil
import subprocess
import sys

import pytest
import yaml

from catalog_search.config import SOURCES, validate
from catalog_search.params import ParamsError, load_params
from conftest import ROOT


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


def with_value(params: dict, path: tuple, value) -> dict:
    """A copy of `params` with the key at `path` set to `value`."""
    bad = copy.deepcopy(params)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return bad


@pytest.mark.parametrize("path, value, message", [
    (("data", "source"), "s3", r"data.source='s3'.*'demo', 'table'"),
    (("clean", "backend"), "gpt", r"clean.backend='gpt'.*'rules'"),
    (("clean", "dedupe", "near"), "drop", r"clean.dedupe.near='drop'.*'reject', 'group', 'keep'"),
    (("clean", "dedupe", "max_distance"), 200, r"max_distance=200 must be an integer 0..63"),
    (("clean", "workers"), -1, r"clean.workers=-1 must be an integer >= 0 or null \(0 = in the main process"),
    (("clean", "chunk_rows"), 0, r"clean.chunk_rows=0 must be a positive integer"),
    (("clean", "openai_batch", "image_detail"), "ultra", r"image_detail='ultra'.*'low', 'high', 'auto'"),
    (("clean", "openai_batch", "max_attempts"), 0, r"max_attempts=0 must be a positive integer"),
    (("clean", "openai_batch", "vocabulary"), {"color": "Red"}, r"vocabulary.color='Red' must be a list"),
    (("clean", "openai_batch", "vocabulary"), {"colour": ["Red"]}, r"vocabulary key='colour'.*'color'"),
    (("clean", "openai_batch", "api_key"), "anything", r"clean.openai_batch.api_key looks like an API key.*OPENAI_API_KEY"),
    (("clean", "openai_batch", "base_url"), "sk-proj-abcdefghijklmnop1234", r"clean.openai_batch.base_url looks like an API key"),
    (("attributes", "mode"), "linear", r"attributes.mode='linear'.*'lora', 'frozen', 'full'"),
    (("attributes", "heads"), {"subcategory": ["category"], "category": []}, r"conditions on 'category'.*parents first"),
    (("attributes", "confusion"), "brand", r"attributes.confusion='brand'.*'article_type'"),
    (("attributes", "loss_weights"), {"colour": 2}, r"loss_weights=\{'colour': 2\} names \['colour'\], which are not heads"),
    (("attributes", "min_confidence"), 1.5, r"min_confidence=1.5 must be between 0 and 1"),
    (("train", "defaults", "loss"), "triplet", r"train.defaults.loss='triplet'.*'infonce', 'siglip'"),
    (("pretrain", "templates"), ["{color} {label}"], r"pretrain.templates entry '\{color\} \{label\}' has the shape"),
    (("train", "dual_lora", "precision"), "fp8", r"train.dual_lora.precision='fp8'.*'bf16', 'fp16'"),
    (("train", "dual_lora", "positives"), "title", r"train.dual_lora.positives='title'.*'pair', 'caption', 'caption_group'"),
    (("train", "defaults", "hard_negatives", "share"), 1.5, r"hard_negatives.share=1.5 must be between 0"),
    (("train", "defaults", "hard_negatives", "ranks"), [20, 10], r"hard_negatives.ranks=\[20, 10\] must be \[first, last\]"),
    (("train", "defaults", "hard_negatives", "cluster"), 1, r"hard_negatives.cluster=1 must be an integer >= 2"),
    (("wise_ft", "scenarios"), ["zero_shot"], r"wise_ft.scenarios names \['zero_shot'\]; choose scenarios that train"),
    (("wise_ft", "alpha"), 2, r"wise_ft.alpha=2 must be between 0 and 1"),
    (("wise_ft", "alphas"), [0.0, 1.5], r"wise_ft.alphas\[1\]=1.5 must be between 0 and 1"),
    (("serve", "scenarios"), ["linear_probe-wise"], r"serve.scenarios names \['linear_probe-wise'\].*'dual_lora-wise'"),
    (("train", "defaults", "early_stopping", "metric"), "loss", r"early_stopping.metric='loss'.*'text_to_image_R@10'"),
    (("train", "defaults", "micro_batch_size"), 1000, r"micro_batch_size=1000 must be between 1 and batch_size"),
    (("train", "defaults", "checkpoint_every"), 0, r"checkpoint_every=0 must be a positive integer"),
    (("model", "name"), "ViT-Q-1", r"model.name='ViT-Q-1'.*ViT-B-32"),
    (("vlm", "layers"), 0, r"vlm.layers=0 must be a positive integer or null"),
    (("vlm", "align_epochs"), -1, r"vlm.align_epochs=-1 must be an integer >= 0 \(0 = no alignment phase\)"),
    (("vlm", "extract"), "gaps", r"vlm.extract='gaps'.*'missing', 'all'"),
    (("vlm", "decoding"), "beam", r"vlm.decoding='beam'.*'constrained', 'free'"),
])
def test_invalid_choice_lists_valid_values(params, path, value, message):
    with pytest.raises(ParamsError, match=message):
        validate(with_value(params, path, value))


def test_unknown_scenario_and_missing_overrides(params):
    with pytest.raises(ParamsError, match=r"train.scenarios\[1\]='dual'.*'dual_lora'"):
        validate({**params, "train": {**params["train"], "scenarios": ["zero_shot", "dual"]}})
    train = {k: v for k, v in params["train"].items() if k != "text_lora"}
    with pytest.raises(ParamsError, match="train.text_lora is missing"):
        validate({**params, "train": train})


def test_default_params_are_valid(params):
    validate(params)


def test_first_stage_refuses_bad_params_before_any_work(tmp_path, params):
    """A real stage process: the error names the key and the valid values; nothing is written."""
    params["train"]["scenarios"] = ["zero_shot", "dual"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    run = subprocess.run([sys.executable, "stages/ingest.py"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "train.scenarios[1]='dual' is not valid" in run.stderr and "dual_lora" in run.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("path, value, line", [
    (("data", "demo", "seed"), "0", "data.demo.seed='0' must be an integer"),
    (("clean", "image", "min_size"), 0, "clean.image.min_size=0 must be a positive integer"),
    (("clean", "title", "remove"), ["(open"], "clean.title.remove=['(open'] holds '(open', not a regular expression"),
    (("shard", "test_fraction"), 0.95, "shard.test_fraction=0.95 leaves no train split beside val_fraction=0.1"),
    (("shard", "stratify_by"), "colour", "shard.stratify_by='colour' is not valid; choose one of ['category'"),
    (("model", "image_size"), 8, "model.image_size=8 must be an integer >= 16"),
    (("pretrain", "val_fraction"), 1.0, "pretrain.val_fraction=1.0 must be > 0 and < 1"),
    (("pretrain", "train", "lr"), -1, "pretrain.train.lr=-1 must be > 0"),
    (("train", "defaults", "lr"), -1, "train.defaults.lr=-1 must be > 0"),
    (("train", "defaults", "betas"), [0.9, 1.0], "train.defaults.betas[1]=1.0 must be >= 0 and < 1"),
    (("train", "dual_lora", "lora"), {"r": 0}, "train.dual_lora.lora.r=0 must be a positive integer"),
    (("wise_ft", "alphas"), [0.5], "wise_ft.alphas=[0.5]: List should have at least 2 items"),
    (("embed", "index", "kind"), "annoy", "embed.index.kind='annoy' is not valid; choose one of ['flat', 'hnsw', 'ivf']"),
    (("evaluate", "attributes"), ["colour"], "evaluate.attributes[0]='colour' is not valid; choose one of"),
    (("report", "gallery_queries"), True, "report.gallery_queries=True must be a positive integer"),
    (("serve", "port"), 70000, "serve.port=70000 must be an integer 0..65535"),
    (("text_embedder", "temperature"), 0, "text_embedder.temperature=0 must be > 0"),
    (("attributes", "head_dropout"), 1.0, "attributes.head_dropout=1.0 must be >= 0 and < 1"),
    (("vlm", "quantize"), "int4", "vlm.quantize='int4' is not valid; choose one of ['int8']"),
])
def test_each_section_names_the_key_of_a_bad_type_or_range(params, path, value, line):
    with pytest.raises(ParamsError) as error:
        validate(with_value(params, path, value))
    assert str(error.value).startswith(f"params.yaml: {line}"), str(error.value)


@pytest.mark.parametrize("section", ["data", "clean", "shard", "model", "pretrain", "train", "wise_ft", "embed",
                                     "evaluate", "report", "serve", "text_embedder", "attributes", "vlm"])
def test_an_unknown_key_in_any_section_is_refused_with_the_known_ones(params, section):
    params[section]["layerz"] = 12
    with pytest.raises(ParamsError) as error:
        validate(params)
    known = ", ".join(sorted(k for k in params[section] if k != "layerz"))  # params.yaml has every key
    assert str(error.value) == f"params.yaml: {section}.layerz is not a known key; known keys: {known}"


def test_every_problem_is_one_line(params):
    params["vlm"]["layerz"] = 12
    params["train"]["defaults"]["lr"] = -1
    del params["train"]["defaults"]["warmup_fraction"]
    params["serve"]["scenarios"] = ["linear_probe"]  # cross-section checks wait for the sections to be valid
    with pytest.raises(ParamsError) as error:
        validate(params)
    assert str(error.value).splitlines() == [
        "params.yaml: train.defaults.lr=-1 must be > 0",
        "params.yaml: train.defaults.warmup_fraction is missing; add it (every key of a section is required)",
        "params.yaml: vlm.layerz is not a known key; known keys: " + ", ".join(sorted(k for k in params["vlm"] if k != "layerz")),
    ]


def test_scenario_overrides_merge_over_the_defaults(params):
    params["train"]["dual_lora"] = {"lr": 0.01, "lora": {"r": 4}}
    train = validate(params).train
    assert train.scenario("dual_lora").lr == 0.01 and train.scenario("dual_lora").lora.r == 4
    assert train.scenario("dual_lora").lora.alpha == train.defaults.lora.alpha
    assert train.scenario("linear_probe").epochs == 8 and train.scenario("linear_probe").seed == train.defaults.seed
    with pytest.raises(ParamsError, match="train.dual_lorra is not a known key; known keys: chance, defaults, dual_lora"):
        validate({**params, "train": {**params["train"], "dual_lorra": {}}})


def test_source_choices_are_the_readers():
    from catalog_search.sources import READERS

    assert SOURCES == list(READERS)


def test_validation_imports_nothing_heavy():
    """Every stage and command validates first: that must not cost torch's seconds (or pandas', faiss')."""
    code = ("import sys, catalog_search.config, catalog_search.cli; "
            "print(sorted({'torch', 'open_clip', 'transformers', 'pandas', 'faiss'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _calls_start_first(body: list[ast.stmt]) -> bool:
    first = next(stmt for stmt in body if any(isinstance(n, ast.Call) for n in ast.walk(stmt)))
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "start" for n in ast.walk(first))


def test_every_stage_and_the_cli_validate_params_before_any_work():
    """The first call of each stage's main block, and of the CLI after parsing its arguments, is
    config.start(): params.yaml validated whole, user errors reported without a traceback. A stage
    imports only the standard library and config.start before it: nothing heavy runs first."""
    stages = sorted((ROOT / "stages").glob("*.py"))
    assert {p.stem for p in stages} >= {c.split("stages/")[1].split(".py")[0] for c in
                                       (ROOT / "dvc.yaml").read_text().split() if c.startswith("stages/")}
    for path in stages:
        tree = ast.parse(path.read_text())
        imported = {n.module if isinstance(n, ast.ImportFrom) else a.name for n in tree.body
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert "catalog_search.config" in imported, path.name
        assert all(m == "catalog_search.config" or m.split(".")[0] in sys.stdlib_module_names for m in imported), path.name
        main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
        assert _calls_start_first(main.body), path.name
    cli = ast.parse((ROOT / "src/catalog_search/cli.py").read_text())
    body = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == "main").body
    parsed = next(i for i, stmt in enumerate(body) if "parse_args" in ast.unparse(stmt))
    assert _calls_start_first(body[parsed + 1:])


def _run_stage(tmp_path, script: str, params: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))  # heads list parents first
    shutil.copytree(ROOT / "stages", tmp_path / "stages", dirs_exist_ok=True)
    return subprocess.run([sys.executable, f"stages/{script}"], cwd=tmp_path, capture_output=True, text=True)


def test_user_errors_end_the_stage_with_their_message_and_no_traceback(tmp_path, params):
    bad = copy.deepcopy(params)
    bad["report"]["seed"] = "0"
    bad["vlm"]["layerz"] = 12
    run = _run_stage(tmp_path, "report.py", bad)  # a stage that reads two sections: all of them are checked
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == ["params.yaml: report.seed='0' must be an integer",
                                       "params.yaml: vlm.layerz is not a known key; known keys: "
                                       + ", ".join(sorted(params["vlm"]))]
    run = _run_stage(tmp_path, "shard.py", params)  # valid params, no catalog yet
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == ("data/clean/catalog.parquet: catalog file not found; run the stage that writes "
                                  "it (dvc repro).")


def test_an_unexpected_error_keeps_its_traceback(tmp_path, params):
    (tmp_path / "data/clean").mkdir(parents=True)
    (tmp_path / "data/clean/catalog.parquet").write_bytes(b"not parquet")
    run = _run_stage(tmp_path, "shard.py", params)
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
