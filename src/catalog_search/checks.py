"""Up-front validation of params.yaml: every stage calls `validate` first, so a typo in any
section fails at once with the valid values, before ingest has done any work."""
from __future__ import annotations

import re

from catalog_search.attributes import MODES
from catalog_search.catalog import ATTRIBUTES
from catalog_search.cleaning import BACKENDS
from catalog_search.cleaning.dedupe import ACTIONS
from catalog_search.cleaning.openai_batch import ATTRIBUTE_FIELDS
from catalog_search.core.device import PRECISIONS
from catalog_search.core.labels import CLASS_WEIGHTS, check_heads
from catalog_search.evaluation import SCORES
from catalog_search.index import INDEX_KINDS
from catalog_search.models import open_clip_architectures, project_configs
from catalog_search.models.scenarios import LOSSES, POSITIVES, SCENARIOS, scenario_config, wise_ft_params
from catalog_search.params import ParamsError, check_choice
from catalog_search.serving.config import serve_params
from catalog_search.sources import READERS
from catalog_search.training.pretrain import check_templates

SECRET = re.compile(r"^sk-[A-Za-z0-9_-]{16,}$")


def validate(params: dict) -> None:
    check_choice("data.source", params["data"]["source"], READERS)
    check_choice("clean.backend", params["clean"]["backend"], BACKENDS)
    for kind in ("exact", "near"):
        check_choice(f"clean.dedupe.{kind}", params["clean"]["dedupe"][kind], ACTIONS)
    workers, chunk = params["clean"]["workers"], params["clean"]["chunk_rows"]
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ParamsError(f"params.yaml: clean.workers={workers!r} must be 0 (in-process), a positive integer, "
                          "or null (all cores)")
    if not isinstance(chunk, int) or chunk < 1:
        raise ParamsError(f"params.yaml: clean.chunk_rows={chunk!r} must be a positive integer")
    distance = params["clean"]["dedupe"]["max_distance"]
    if not isinstance(distance, int) or not 0 <= distance <= 63:
        raise ParamsError(f"params.yaml: clean.dedupe.max_distance={distance!r} must be an integer 0..63 "
                          "(bits of the 192-bit perceptual hash; 10 catches re-encoded and resized copies)")
    _check_openai_batch(params["clean"]["openai_batch"])
    _refuse_secrets(params)
    train = params["train"]
    for name in train["scenarios"]:
        check_choice("train.scenarios[]", name, SCENARIOS)
        if name not in train:
            raise ParamsError(f"params.yaml: train.{name} is missing; every scenario in train.scenarios needs "
                              "its own section of overrides (an empty one is `{}`)")
    for name in train["scenarios"]:
        _check_train(name, scenario_config(train, name))
    check_templates(params["pretrain"]["templates"], params["clean"]["captions"]["templates"])
    wise_ft_params(params)
    serve_params(params)
    check_choice("embed.index.kind", params["embed"]["index"]["kind"], INDEX_KINDS)
    _check_attributes(params["attributes"])
    _check_vlm(params["vlm"])
    name = params["model"]["name"]
    if name not in project_configs() + open_clip_architectures():
        raise ParamsError(f"params.yaml: model.name={name!r} is not known; choose a project config "
                          f"{project_configs()} or an open_clip architecture such as ViT-B-32, ViT-B-16, "
                          "ViT-B-16-SigLIP2-256 (all: open_clip.list_models())")


def _check_openai_batch(cfg: dict) -> None:
    for key in ("model", "prompt", "state_dir"):
        if not isinstance(cfg[key], str) or not cfg[key].strip():
            raise ParamsError(f"params.yaml: clean.openai_batch.{key} must be a non-empty string")
    check_choice("clean.openai_batch.image_detail", cfg["image_detail"], ["low", "high", "auto"])
    for key, least in (("image_size", 1), ("max_output_tokens", 1), ("max_attempts", 1),
                       ("max_requests_per_file", 1), ("max_retries", 0)):
        if not isinstance(cfg[key], int) or cfg[key] < least:
            raise ParamsError(f"params.yaml: clean.openai_batch.{key}={cfg[key]!r} must be an integer >= {least}")
    budget = cfg["max_enqueued_tokens"]
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise ParamsError(f"params.yaml: clean.openai_batch.max_enqueued_tokens={budget!r} must be null (one request "
                          "file in flight) or an integer >= 1 (your tier's batch queue limit, in tokens)")
    for key in ("max_file_mb", "poll_seconds", "max_poll_seconds", "max_wait_hours", "timeout_seconds",
                "file_id_wait_minutes"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise ParamsError(f"params.yaml: clean.openai_batch.{key}={cfg[key]!r} must be a positive number")
    vocabulary = cfg["vocabulary"] or {}
    if not isinstance(vocabulary, dict) or not all(isinstance(v, list) for v in vocabulary.values()):
        raise ParamsError("params.yaml: clean.openai_batch.vocabulary must map an answer field to a list of values, "
                          "e.g. {color: [Black, Red]}")
    for name in vocabulary:
        check_choice("clean.openai_batch.vocabulary key", name, ATTRIBUTE_FIELDS)


def _check_vlm(cfg: dict) -> None:
    if not cfg["attributes"]:
        raise ParamsError("params.yaml: vlm.attributes is empty; name the catalog attributes the JSON answer holds")
    for name in cfg["attributes"]:
        check_choice("vlm.attributes[]", name, ATTRIBUTES)
    for key in ("image_size", "min_count", "epochs", "batch_size", "extract_batch", "zero_shot_rows"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ParamsError(f"params.yaml: vlm.{key}={cfg[key]!r} must be a positive integer")
    for key in ("train_rows", "free_rows", "layers"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1):
            raise ParamsError(f"params.yaml: vlm.{key}={cfg[key]!r} must be a positive integer or null (all)")
    if not isinstance(cfg["align_epochs"], int) or cfg["align_epochs"] < 0:
        raise ParamsError(f"params.yaml: vlm.align_epochs={cfg['align_epochs']!r} must be 0 (no alignment phase) or more")
    check_choice("vlm.extract", cfg["extract"], ("missing", "all"))
    check_choice("vlm.decoding", cfg["decoding"], ("constrained", "free"))
    check_choice("vlm.quantize", cfg["quantize"], (None, "int8"))


def _refuse_secrets(params: dict, where: str = "") -> None:
    """API keys belong in the environment: params.yaml is in git and its values reach dvc.lock."""
    for key, value in params.items() if isinstance(params, dict) else enumerate(params):
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, (dict, list)):
            _refuse_secrets(value, path)
        elif str(key).lower() in ("api_key", "openai_api_key") or (isinstance(value, str) and SECRET.match(value)):
            raise ParamsError(f"params.yaml: {path} looks like an API key; remove it (and rotate it if it was "
                              "committed). Keys are read from the environment only, e.g. OPENAI_API_KEY.")


def _check_train(name: str, cfg: dict) -> None:
    """One scenario's merged training config (train.defaults + train.<name>)."""
    check_choice(f"train.{name}.loss", cfg["loss"], LOSSES)
    check_choice(f"train.{name}.precision", cfg["precision"], PRECISIONS)
    check_choice(f"train.{name}.positives", cfg["positives"], POSITIVES)
    hard = cfg["hard_negatives"]
    if not isinstance(hard["share"], (int, float)) or not 0 <= hard["share"] <= 1:
        raise ParamsError(f"params.yaml: train.{name}.hard_negatives.share={hard['share']!r} must be between 0 "
                          "(random batches) and 1 (all of each batch in mined clusters)")
    lo, hi = (list(hard["ranks"]) + [None, None])[:2] if isinstance(hard["ranks"], list) else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi) or len(hard["ranks"]) != 2:
        raise ParamsError(f"params.yaml: train.{name}.hard_negatives.ranks={hard['ranks']!r} must be [first, last] "
                          "with 1 <= first <= last: the rank range of the mined neighbours (e.g. [10, 100])")
    if not isinstance(hard["cluster"], int) or hard["cluster"] < 2:
        raise ParamsError(f"params.yaml: train.{name}.hard_negatives.cluster={hard['cluster']!r} must be an "
                          "integer >= 2 (a seed product and at least one mined neighbour)")
    check_choice(f"train.{name}.early_stopping.metric", cfg["early_stopping"]["metric"], SCORES)
    micro = cfg["micro_batch_size"]
    if micro is not None and not 1 <= micro <= cfg["batch_size"]:
        raise ParamsError(f"params.yaml: train.{name}.micro_batch_size={micro} must be between 1 and "
                          f"batch_size={cfg['batch_size']} (null = batch_size)")
    for key in ("checkpoint_every", "nproc"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ParamsError(f"params.yaml: train.{name}.{key}={cfg[key]!r} must be a positive integer")


def _check_attributes(cfg: dict) -> None:
    check_choice("attributes.mode", cfg["mode"], MODES)
    check_choice("attributes.class_weights", cfg["class_weights"], CLASS_WEIGHTS)
    check_heads(cfg["heads"])
    check_choice("attributes.confusion", cfg["confusion"], list(cfg["heads"]))
    unknown = set(cfg["loss_weights"] or {}) - set(cfg["heads"])
    if unknown:
        raise ParamsError(f"params.yaml: attributes.loss_weights names {sorted(unknown)}, which are not heads "
                          f"{list(cfg['heads'])}")
    if not 0 <= cfg["min_confidence"] <= 1:
        raise ParamsError(f"params.yaml: attributes.min_confidence={cfg['min_confidence']!r} must be between 0 and 1")
