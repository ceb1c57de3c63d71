"""Up-front validation of params.yaml: every stage calls `validate` first, so a typo in any
section fails at once with the valid values, before ingest has done any work."""
from __future__ import annotations

from catalog_search.cleaning import BACKENDS
from catalog_search.models import open_clip_architectures, project_configs
from catalog_search.models.scenarios import LOSSES, SCENARIOS
from catalog_search.params import ParamsError, check_choice
from catalog_search.sources import READERS


def validate(params: dict) -> None:
    check_choice("data.source", params["data"]["source"], READERS)
    check_choice("clean.backend", params["clean"]["backend"], BACKENDS)
    train = params["train"]
    for name in train["scenarios"]:
        check_choice("train.scenarios[]", name, SCENARIOS)
        if name not in train:
            raise ParamsError(f"params.yaml: train.{name} is missing; every scenario in train.scenarios needs "
                              "its own section of overrides (an empty one is `{}`)")
    check_choice("train.defaults.loss", train["defaults"]["loss"], LOSSES)
    for name in train["scenarios"]:
        if "loss" in train[name]:
            check_choice(f"train.{name}.loss", train[name]["loss"], LOSSES)
    name = params["model"]["name"]
    if name not in project_configs() + open_clip_architectures():
        raise ParamsError(f"params.yaml: model.name={name!r} is not known; choose a project config "
                          f"{project_configs()} or an open_clip architecture such as ViT-B-32, ViT-B-16, "
                          "ViT-B-16-SigLIP2-256 (all: open_clip.list_models())")
