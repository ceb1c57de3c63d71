"""The answer format: one compact JSON object, {"category":"Apparel","color":"Red",...}, with keys
in a fixed order and values from each attribute's classes (derived from the catalog). Compact
separators: `","` and `":"` are one token each in SmolLM2's vocabulary, a quarter fewer tokens per
answer than `", "`.

Each piece of the template and each value is tokenized on its own, so training targets and
decoding under the template (decode.py) share one segmentation."""
from __future__ import annotations

import json
from typing import Literal

from pydantic import ConfigDict, ValidationError, create_model

IGNORE = -100


class JsonTemplate:
    def __init__(self, tokenizer, values: dict[str, list[str]]):
        self.attributes, self.values = list(values), values
        names = self.attributes
        texts = [f'{{"{names[0]}":"'] + [f'","{a}":"' for a in names[1:]] + ['"}']
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.pieces = [encode(t) for t in texts]
        self.value_ids = {a: {v: encode(v) for v in vs} for a, vs in values.items()}
        self.eos = tokenizer.eos_token_id
        self.schema = create_model("Attributes", __config__=ConfigDict(extra="forbid"),
                                   **{a: (Literal[tuple(vs)], ...) for a, vs in values.items()})

    def target(self, row: dict[str, str | None]) -> tuple[list[int], list[int]]:
        """(token ids, labels) of one product's answer. An unknown value still takes a place in the
        sequence (the first class) but is masked out of the loss: the model is not taught to guess it."""
        ids, labels = [], []
        for piece, a in zip(self.pieces, self.attributes):
            ids += piece
            labels += piece
            value = row.get(a)
            tokens = self.value_ids[a][value if value is not None else self.values[a][0]]
            ids += tokens
            labels += tokens if value is not None else [IGNORE] * len(tokens)
        tail = self.pieces[-1] + [self.eos]
        return ids + tail, labels + tail

    @property
    def max_tokens(self) -> int:
        return (sum(map(len, self.pieces)) + 1
                + sum(max(len(t) for t in ids.values()) for ids in self.value_ids.values()))

    def parse(self, text: str) -> tuple[dict[str, str] | None, str | None]:
        """(attributes, None) when `text` is the JSON object of the schema, else (None, why)."""
        try:
            return self.schema.model_validate_json(text.strip()).model_dump(), None
        except ValidationError as e:
            return None, e.errors()[0]["type"]

    def dumps(self, answer: dict[str, str]) -> str:
        return json.dumps({a: answer[a] for a in self.attributes}, separators=(",", ":"))
