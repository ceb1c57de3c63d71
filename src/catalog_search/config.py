"""params.yaml, typed: one pydantic model per section, validated whole when any stage or command
starts (`start`), so a typo or an out-of-range value anywhere fails at once, before a stage
spends minutes, with one line per problem naming the dotted key and what it accepts.

Every key is required (params.yaml holds the values; serve's keep the defaults the server's
programmatic users rely on) and unknown keys are refused. Choices come from the code's own
constants. Importing this module stays cheap (pydantic, yaml, numpy; no torch, open_clip,
transformers, pandas or faiss): every stage and command pays it.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)

from catalog_search.attributes import MODES
from catalog_search.core.constants import ATTRIBUTES, PRECISIONS
from catalog_search.core.labels import CLASS_WEIGHTS, check_heads
from catalog_search.cleaning import ACTIONS, BACKENDS
from catalog_search.cleaning.openai_batch import ATTRIBUTE_FIELDS
from catalog_search.errors import exit_on_user_errors
from catalog_search.evaluation import SCORES
from catalog_search.models import open_clip_architectures, project_configs
from catalog_search.models.scenarios import LOSSES, POSITIVES, SCENARIOS, WISE_SUFFIX, scenario_config
from catalog_search.params import ParamsError, deep_merge, load_params
from catalog_search.training.pretrain import check_templates

# here, not beside the code they name: sources/ imports every reader (pandas, h5py), index.py faiss
SOURCES = ["demo", "table", "fashion_product", "fashiongen", "webdataset"]  # sources.READERS' keys (a test checks)
INDEX_KINDS = ["flat", "hnsw", "ivf"]  # FAISS: exact, graph, inverted lists
SECRET = re.compile(r"^sk-[A-Za-z0-9_-]{16,}$")

Attribute = Literal[tuple(ATTRIBUTES)]
IndexKind = Literal[tuple(INDEX_KINDS)]
Scenario = Literal[tuple(SCENARIOS)]
Text = Annotated[str, Field(pattern=r"\S")]  # not empty or blank
Seed = int
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """A params.yaml section: every key given, none unknown, YAML's own types (no "5" for 5)."""
    model_config = ConfigDict(extra="forbid", strict=True)


class LoraParams(Section):
    r: Positive
    alpha: Positive
    dropout: Fraction


class LoopParams(Section):
    """The keys every training loop takes, under the same names and meanings (CLIP scenarios,
    text embedder, attribute classifier, VLM): AdamW, `warmup_fraction` of the steps of warmup."""
    epochs: Count
    batch_size: Positive
    lr: Rate
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_fraction: Fraction
    grad_clip: Annotated[float, Field(ge=0)]
    seed: Seed
    precision: Literal[tuple(PRECISIONS)]


# --- data (ingest) -----------------------------------------------------------------------------

class DemoParams(Section):
    n_products: Positive
    image_size: Annotated[int, Field(ge=8)]
    seed: Seed
    variant_prob: Fraction
    wrong_color_prob: Fraction
    missing_attribute_prob: Fraction


class TableParams(Section):
    file: Text
    encoding: Text
    image_root: str | None
    url_folder: str | None
    columns: dict[str, Text]  # catalog column: the table's column (the reader checks the table has them)


class FilesParams(Section):
    files: Text  # a glob under data.path


class WebDatasetParams(Section):
    urls: Text | list[Text]


class DataParams(Section):
    source: Literal[tuple(SOURCES)]
    path: Text
    demo: DemoParams
    table: TableParams
    fashion_product: FilesParams
    fashiongen: FilesParams
    webdataset: WebDatasetParams


# --- clean ------------------------------------------------------------------------------------

class ImageParams(Section):
    min_size: Positive
    max_size: Positive
    max_pixels: Positive
    format: Literal["png", "jpg"]


class DedupeParams(Section):
    exact: Literal[tuple(ACTIONS)]
    near: Literal[tuple(ACTIONS)]
    max_distance: int = Field(ge=0, le=63, description="bits of the 192-bit perceptual hash; 10 catches "
                                                      "re-encoded and resized copies")


class TitleParams(Section):
    brands: list[Text]
    remove: list[Text]

    @field_validator("remove")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"holds {pattern!r}, not a regular expression ({e})") from None
        return patterns


class CaptionsParams(Section):
    templates: list[Text]


class EstimateParams(Section):
    tokens_per_image: Count
    output_tokens: Count
    usd_per_million_input: Annotated[float, Field(ge=0)]
    usd_per_million_output: Annotated[float, Field(ge=0)]


class OpenaiBatchParams(Section):
    model: Text
    base_url: str | None
    prompt: Text
    vocabulary: dict[Literal[tuple(ATTRIBUTE_FIELDS)], list[str]] | None  # answer field -> allowed values
    image_size: Positive
    image_detail: Literal["low", "high", "auto"]
    max_output_tokens: Positive
    max_attempts: Positive
    max_requests_per_file: Positive
    max_file_mb: Rate
    poll_seconds: Rate
    max_poll_seconds: Rate
    max_enqueued_tokens: int | None = Field(ge=1, description="null: one request file in flight; else your "
                                                             "tier's batch queue limit, in tokens")
    file_id_wait_minutes: Rate
    max_wait_hours: Rate
    max_retries: Count
    timeout_seconds: Rate
    state_dir: Text
    estimate: EstimateParams


class CleanParams(Section):
    backend: Literal[tuple(BACKENDS)]
    workers: int | None = Field(ge=0, description="0 = in the main process, null = all cores")
    chunk_rows: Positive
    image: ImageParams
    dedupe: DedupeParams
    title: TitleParams
    captions: CaptionsParams
    openai_batch: OpenaiBatchParams


# --- shard, model, pretrain -------------------------------------------------------------------

class ShardParams(Section):
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    test_fraction: Annotated[float, Field(ge=0, lt=1)]
    stratify_by: Attribute | None
    seed: Seed
    mini_train_size: Positive
    samples_per_shard: Positive
    read_from: Text  # a folder, or the URL push-shards wrote to

    @field_validator("test_fraction")
    @classmethod
    def _leaves_train(cls, test: float, info: ValidationInfo) -> float:
        if test + info.data.get("val_fraction", 0) >= 1:
            raise ValueError(f"leaves no train split beside val_fraction={info.data['val_fraction']}")
        return test


class ModelParams(Section):
    name: Text
    pretrained: str | None  # the pretrain stage's output | packaged | none | an open_clip tag | a checkpoint file
    image_size: Annotated[int, Field(ge=16)]

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        """Lazy: open_clip's architectures are listed from its config files, without importing it."""
        if name not in project_configs() + open_clip_architectures():
            raise ValueError(f"is not known; choose a project config {project_configs()} or an open_clip "
                             "architecture such as ViT-B-32, ViT-B-16, ViT-B-16-SigLIP2-256 (all: open_clip.list_models())")
        return name


class PretrainParams(Section):
    base: Text
    caption_size: Annotated[int, Field(ge=32)]
    templates: list[str]  # check_templates: the captioner's words, in no evaluation template's shape
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: Seed
    train: dict[str, Any]  # over train.defaults (checked merged, with train)


# --- train ------------------------------------------------------------------------------------

class HardNegativesParams(Section):
    share: Fraction = Field(description="0 = random batches, 1 = all of each batch in mined clusters")
    ranks: list[int]
    cluster: int = Field(ge=2, description="a seed product and at least one mined neighbour")

    @field_validator("ranks")
    @classmethod
    def _range(cls, ranks: list[int]) -> list[int]:
        if len(ranks) != 2 or not 1 <= ranks[0] <= ranks[1]:
            raise ValueError("must be [first, last] with 1 <= first <= last: the rank range of the mined "
                             "neighbours (e.g. [10, 100])")
        return ranks


class EarlyStoppingParams(Section):
    metric: Literal[tuple(SCORES)]
    patience: Count
    min_delta: Annotated[float, Field(ge=0)]


class TrainLoraParams(LoraParams):
    image_last_blocks: Positive | None
    text_last_blocks: Positive | None


class TrainConfig(LoopParams):
    """One scenario's training: train.defaults, or them with train.<scenario>'s overrides."""
    loss: Literal[tuple(LOSSES)]
    positives: Literal[tuple(POSITIVES)]
    hard_negatives: HardNegativesParams
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=2, max_length=2)
    eps: Rate
    train_split: Literal["train", "mini_train"]
    micro_batch_size: Positive | None
    max_steps: Positive | None
    eval_every: Count
    early_stopping: EarlyStoppingParams
    checkpoint_every: Positive
    feature_cache: bool
    workers: Count
    nproc: Positive
    lora: TrainLoraParams

    @field_validator("micro_batch_size")
    @classmethod
    def _within_batch(cls, micro: int | None, info: ValidationInfo) -> int | None:
        batch = info.data.get("batch_size")
        if micro is not None and batch is not None and micro > batch:
            raise ValueError(f"must be between 1 and batch_size={batch} (null = batch_size)")
        return micro


class _TrainParams(Section):
    """`train`: the scenarios run, their defaults, and per scenario its overrides (deep-merged over
    the defaults, as train@<scenario> merges them: `scenario_config`)."""
    scenarios: list[Scenario] = Field(min_length=1)
    defaults: TrainConfig
    _configs: dict[str, TrainConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _overrides(self) -> _TrainParams:
        problems = [_missing(name) for name in self.scenarios if getattr(self, name) is None]
        raw = {"defaults": self.defaults.model_dump()} | {s: getattr(self, s) for s in SCENARIOS}
        for name in SCENARIOS:
            if getattr(self, name) is not None:
                try:
                    self._configs[name] = TrainConfig.model_validate(scenario_config(raw, name))
                except ValidationError as e:
                    problems += problem_lines(e, TrainConfig, ("train", name))
        if problems:
            raise ParamsError("\n".join(problems))
        return self

    def scenario(self, name: str) -> TrainConfig:
        """train@<name>'s config: the defaults with its overrides."""
        if name not in self._configs:
            raise ParamsError(_missing(name))
        return self._configs[name]


def _missing(scenario: str) -> str:
    return (f"params.yaml: train.{scenario} is missing; every scenario in train.scenarios needs its own section "
            "of overrides (an empty one is `{}`)")


# one optional field of overrides per scenario, so a misspelt scenario section is an unknown key
TrainParams = create_model("TrainParams", __base__=_TrainParams, **{name: (dict[str, Any] | None, None) for name in SCENARIOS})


class WiseFtParams(Section):
    scenarios: list[Scenario] = Field(min_length=1)
    alphas: list[Fraction] = Field(min_length=2, description="0 = zero_shot, 1 = tuned")
    alpha: Fraction  # models/<scenario>-wise


# --- embed, evaluate, report ------------------------------------------------------------------

class EmbedIndexParams(Section):
    kind: IndexKind
    hnsw_m: Annotated[int, Field(ge=4)]
    ef_construction: Positive
    ef_search: Positive
    nlist: Positive | None  # null = sqrt(n)
    nprobe: Positive


class EmbedParams(Section):
    split: Literal["train", "val", "test"]
    batch_size: Positive
    workers: Count
    index: EmbedIndexParams


class SampledParams(Section):
    queries: Positive
    negatives: Positive
    group_by: Attribute


class EvaluateParams(Section):
    max_k: Positive
    bootstrap: Positive
    seed: Seed
    attributes: list[Attribute]
    sampled: SampledParams


class ReportParams(Section):
    gallery_queries: Positive
    seed: Seed


# --- serve (defaults: the server is also built in code, by tests and bench/serve.py) ------------

class IndexParams(Section):
    backend: Literal["faiss", "qdrant"] = "faiss"
    kind: IndexKind = "flat"
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(128, ge=1)


class QdrantParams(Section):
    url: str | None = None  # None: local mode, a folder beside the index
    collection: str | None = None  # None: the scenario's name


class RayParams(Section):
    address: str | None = None  # None: a local Ray started for the run
    actors: int = Field(2, ge=1)  # one model each
    batch_size: int = Field(64, ge=1)


class ArenaParams(Section):
    k: int = Field(8, ge=1, le=50)
    votes_per_minute: int = Field(20, ge=1)
    sessions_per_minute: int = Field(10, ge=1)
    round_ttl_minutes: float = Field(60, gt=0)


class ServeParams(Section):
    scenarios: list[str] = Field(min_length=1)
    batch_size: int = Field(64, ge=1)
    fill_attributes: bool = True
    index: IndexParams = IndexParams()
    qdrant: QdrantParams = QdrantParams()
    engine: Literal["local", "ray"] = "local"
    ray: RayParams = RayParams()
    encoder: Literal["torch", "onnx"] = "torch"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allowed_hosts: list[str] = []
    max_k: int = Field(100, ge=1, le=10_000)
    max_query_chars: int = Field(200, ge=1)
    max_upload_mb: float = Field(8, gt=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    read_timeout_seconds: float = Field(10, gt=0)
    arena: ArenaParams = ArenaParams()


# --- text_embedder, attributes, vlm -----------------------------------------------------------

class TextLoraParams(LoraParams):
    targets: list[Text] = Field(min_length=1)


class TextEmbedderParams(LoopParams):
    base: Text
    max_length: Annotated[int, Field(ge=8)]
    lora: TextLoraParams
    temperature: Rate
    epochs: Positive
    batch_size: Annotated[int, Field(ge=2)]  # in-batch negatives
    log_every: Positive


class AttributesLoraParams(LoraParams):
    last_blocks: Positive | None


class AttributesParams(LoopParams):
    backbone: Text
    image_size: Annotated[int, Field(ge=16)]
    heads: dict[Attribute, list[Attribute]] = Field(min_length=1)  # head: the heads it conditions on
    hierarchy: bool
    head_hidden: Count
    head_dropout: Annotated[float, Field(ge=0, lt=1)]
    loss_weights: dict[str, Annotated[float, Field(ge=0)]]
    min_count: Count
    class_weights: Literal[tuple(CLASS_WEIGHTS)]
    mode: Literal[tuple(MODES)]
    lora: AttributesLoraParams
    augment: bool
    workers: Count
    min_confidence: Fraction
    confusion: str

    @field_validator("heads")
    @classmethod
    def _parents_first(cls, heads: dict[str, list[str]]) -> dict[str, list[str]]:
        check_heads(heads)
        return heads

    @field_validator("loss_weights")
    @classmethod
    def _of_heads(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        heads = info.data.get("heads", {})
        if unknown := sorted(set(weights) - set(heads)):
            raise ValueError(f"names {unknown}, which are not heads {list(heads)}")
        return weights

    @field_validator("confusion")
    @classmethod
    def _a_head(cls, name: str, info: ValidationInfo) -> str:
        heads = list(info.data.get("heads", {}))
        if heads and name not in heads:
            raise ValueError(f"is not valid; choose one of {heads}")
        return name


class VlmParams(LoopParams):
    language: Text
    layers: Positive | None  # null = all
    backbone: Text
    image_size: Annotated[int, Field(ge=16)]
    attributes: list[Attribute] = Field(min_length=1)
    min_count: Positive
    prompt: Text
    lora: LoraParams
    train_rows: Positive | None  # null = all
    align_epochs: Count = Field(description="0 = no alignment phase")
    align_lr: Rate
    epochs: Positive
    extract_batch: Positive
    quantize: Literal["int8"] | None
    extract: Literal["missing", "all"]
    decoding: Literal["constrained", "free"]
    free_rows: Positive | None  # null = all
    zero_shot_rows: Positive
    cache_dir: str | None


# --- the whole file ---------------------------------------------------------------------------

class Params(Section):
    """params.yaml. Sections are validated in this order, so the checks across sections below see
    the sections they compare with."""
    data: DataParams
    clean: CleanParams
    shard: ShardParams
    model: ModelParams
    pretrain: PretrainParams
    train: TrainParams
    wise_ft: WiseFtParams
    embed: EmbedParams
    evaluate: EvaluateParams
    report: ReportParams
    serve: ServeParams
    text_embedder: TextEmbedderParams
    attributes: AttributesParams
    vlm: VlmParams

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, raw: Any) -> Any:
        """API keys belong in the environment: params.yaml is in git and its values reach dvc.lock."""
        if found := _secrets(raw):
            raise ParamsError("\n".join(f"params.yaml: {path} looks like an API key; remove it (and rotate it if it "
                                        "was committed). Keys are read from the environment only, e.g. "
                                        "OPENAI_API_KEY." for path in found))
        return raw

    @field_validator("pretrain")
    @classmethod
    def _pretrain_templates(cls, pretrain: PretrainParams, info: ValidationInfo) -> PretrainParams:
        if "clean" in info.data:
            check_templates(pretrain.templates, info.data["clean"].captions.templates)
        return pretrain

    @field_validator("train")
    @classmethod
    def _pretrain_train(cls, train: _TrainParams, info: ValidationInfo) -> _TrainParams:
        """pretrain.train overrides train.defaults as pretrain merges them."""
        if "pretrain" in info.data:
            try:
                TrainConfig.model_validate(deep_merge(train.defaults.model_dump(), info.data["pretrain"].train))
            except ValidationError as e:
                raise ParamsError("\n".join(problem_lines(e, TrainConfig, ("pretrain", "train")))) from None
        return train

    @field_validator("wise_ft")
    @classmethod
    def _wise_ft_trains(cls, wise: WiseFtParams, info: ValidationInfo) -> WiseFtParams:
        """Each interpolates a scenario that trains with zero_shot's weights (the other end of alpha)."""
        if "train" not in info.data:
            return wise
        trained = info.data["train"].scenarios
        if "zero_shot" not in trained:
            raise ParamsError("params.yaml: wise_ft interpolates with zero_shot's weights; add zero_shot to "
                              "train.scenarios")
        if wrong := [s for s in wise.scenarios if s not in trained or not SCENARIOS[s].trains]:
            raise ParamsError(f"params.yaml: wise_ft.scenarios names {wrong}; choose scenarios that train, from "
                              f"{[s for s in trained if SCENARIOS[s].trains]}")
        return wise

    @field_validator("serve")
    @classmethod
    def _servable(cls, serve: ServeParams, info: ValidationInfo) -> ServeParams:
        """Every model served is made: a scenario of train.scenarios, or <scenario>-wise of wise_ft.scenarios."""
        if "train" not in info.data or "wise_ft" not in info.data:
            return serve
        servable = [*info.data["train"].scenarios, *(s + WISE_SUFFIX for s in info.data["wise_ft"].scenarios)]
        if missing := [s for s in serve.scenarios if s not in servable]:
            raise ParamsError(f"params.yaml: serve.scenarios names {missing}, which neither train.scenarios nor "
                              f"wise_ft.scenarios makes; choose from {servable}")
        return serve


def _secrets(node: Any, where: str = "") -> list[str]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, (dict, list)):
            found += _secrets(value, path)
        elif str(key).lower() in ("api_key", "openai_api_key") or (isinstance(value, str) and SECRET.match(value)):
            found.append(path)
    return found


def validate(raw: dict) -> Params:
    """The typed params, or ParamsError with every problem found, one line each."""
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError("\n".join(problem_lines(e, Params))) from None


def load_config(path: str | Path = "params.yaml") -> Params:
    if not Path(path).is_file():
        raise ParamsError(f"{path}: no such file; run this in the project folder (the one with params.yaml)")
    return validate(load_params(path))


def start(path: str | Path = "params.yaml") -> Params:
    """The first call of every stage script and CLI command: from here on a user error (params,
    catalog) ends the process with its message and status 1, no traceback; then params.yaml is
    validated whole, before any work. Stage scripts import the rest after it, so a typo fails in
    half a second, not after torch's import."""
    exit_on_user_errors()
    return load_config(path)


# --- one line per problem ---------------------------------------------------------------------

def problem_lines(error: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    """`params.yaml: <dotted key>=<value> <what it accepts>` per error of validating `model` at
    `prefix` (a validator's ParamsError as it is: it names its keys itself)."""
    lines = []
    for err in error.errors():
        cause = (err.get("ctx") or {}).get("error")
        text = str(cause) if isinstance(cause, ParamsError) else _line(err, model, prefix)
        lines += [line for line in text.splitlines() if line not in lines]
    return lines


def _line(err: dict, model: type[BaseModel], prefix: tuple) -> str:
    loc, kind, value = err["loc"], err["type"], err.get("input")
    if loc[-1:] == ("[key]",):  # a mapping's key: the key is the value
        key, value = _dotted((*prefix, *loc[:-3], f"{loc[-3]} key")), loc[-2]
    else:
        key = _dotted((*prefix, *loc))
    known = next(i for i in range(len(loc) + 1) if i == len(loc) or not _schema_at(model, loc[:i + 1])[0])
    if known < len(loc) and "anyOf" in (union := _schema_at(model, loc[:known])[0]):  # one line for a union's members
        kinds = " or ".join(_expected(*_resolve(o, _schema(model).get("$defs", {})), typed=True) for o in union["anyOf"])
        return f"params.yaml: {_dotted((*prefix, *loc[:known]))} must be {kinds}"
    if kind == "extra_forbidden":
        known = _schema_at(model, loc[:-1])[0].get("properties", {})
        return f"params.yaml: {key} is not a known key; known keys: {', '.join(sorted(known))}"
    if kind == "missing":
        return f"params.yaml: {key} is missing; add it (every key of a section is required)"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        return f"params.yaml: {key}={value!r} is not valid; choose one of {choices}"
    if kind == "value_error":
        return f"params.yaml: {key}={value!r} {err['ctx']['error']}"
    if kind == "string_pattern_mismatch":
        return f"params.yaml: {key}={value!r} must be a non-empty string"
    if kind.endswith(("_type", "greater_than", "greater_than_equal", "less_than", "less_than_equal")):
        return f"params.yaml: {key}={value!r} must be {_expected(*_schema_at(model, loc), typed=kind.endswith('_type'))}"
    return f"params.yaml: {key}={value!r}: {err['msg']}"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _expected(node: dict, nullable: bool, typed: bool) -> str:
    """What a key accepts, from its JSON schema: range (and type, where that was wrong), null, and
    its description's hint."""
    integer = node.get("type") == "integer"
    lo, above, hi, below = (node.get(k) for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"))
    if integer and hi is None and (lo == 1 or above == 0):
        text = "a positive integer"
    elif lo is not None and hi is not None:
        text = f"an integer {lo}..{hi}" if integer else f"{'a number ' if typed else ''}between {lo} and {hi}"
    elif bounds := [f"{op} {v}" for op, v in ((">=", lo), (">", above), ("<=", hi), ("<", below)) if v is not None]:
        text = ("an integer " if integer else "a number " if typed else "") + " and ".join(bounds)
    else:
        text = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
                "array": "a list", "object": "a mapping"}.get(node.get("type"), "of another type")
    return text + (" or null" if nullable else "") + (f" ({node['description']})" if node.get("description") else "")


@functools.cache
def _schema(model: type[BaseModel]) -> dict:
    return model.model_json_schema()


def _schema_at(model: type[BaseModel], loc: tuple) -> tuple[dict, bool]:
    """The JSON schema of the key at `loc` in `model` (references and null alternatives resolved),
    and whether null is allowed there."""
    defs = _schema(model).get("$defs", {})
    node, nullable = _resolve(_schema(model), defs)
    for part in loc:
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}, False
        node, nullable = _resolve(node, defs)
    return node, nullable


def _resolve(node: dict, defs: dict) -> tuple[dict, bool]:
    nullable = False
    while True:
        if "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            nullable = nullable or len(options) < len(node["anyOf"])
            if len(options) != 1:
                return node, nullable
            node = {**options[0], **{k: v for k, v in node.items() if k not in ("anyOf", "default")}}
        else:
            return node, nullable
