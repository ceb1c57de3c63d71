"""The fine-tuning scenarios (README, "The stage graph": the scenarios table): per tower frozen, LoRA or fully trained.

Kept free of torch/peft imports so params can be validated before any stage does work.
"""
from __future__ import annotations

from dataclasses import dataclass

from catalog_search.params import ParamsError, deep_merge

LOSSES = ["infonce", "siglip"]  # open_clip's ClipLoss and SigLipLoss
# a batch's positives: a row's own caption (open_clip) | every caption whose text is one of the
# image's captions | also every caption of the image's group (near-duplicate photos, variants)
POSITIVES = ["pair", "caption", "caption_group"]


@dataclass(frozen=True)
class Scenario:
    image: str          # frozen | lora | full
    text: str
    projections: bool   # projections + logit scale/bias trained
    start: str = "pretrained"  # pretrained: model.pretrained (the aligned start) | base: pretrain.base (unaligned)

    @property
    def trains(self) -> bool:
        return self.projections or "frozen" != self.image or "frozen" != self.text

    def tower_mode(self, tower: str) -> str:
        return self.image if tower == "image" else self.text


SCENARIOS: dict[str, Scenario] = {
    "chance": Scenario("frozen", "frozen", False, start="base"),  # the towers before alignment: a reference floor
    "zero_shot": Scenario("frozen", "frozen", False),
    "linear_probe": Scenario("frozen", "frozen", True),
    "vision_lora": Scenario("lora", "frozen", True),
    "text_lora": Scenario("frozen", "lora", True),
    "dual_lora": Scenario("lora", "lora", True),
    "full": Scenario("full", "full", True),
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ParamsError(f"scenario {name!r} is not valid; choose from {list(SCENARIOS)}")
    return SCENARIOS[name]


def scenario_config(train_params: dict, name: str) -> dict:
    """train.defaults with train.<name>'s overrides applied (what train@<name> depends on)."""
    return deep_merge(train_params["defaults"], train_params.get(name) or {})


WISE_SUFFIX = "-wise"  # models/<scenario>-wise: wise_ft@<scenario>'s interpolation at wise_ft.alpha
