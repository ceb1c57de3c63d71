"""The answer format: one compact JSON object, {"category": "Apparel", "color": "Red", ...}, with
keys in a fixed order and values from each attribute's classes (derived from the catalog).

Each piece of the template and each value is tokenized on its own, so training targets and
decoding under the template share one segmentation. `decode_constrained` can only produce a
valid object: it is the repair for a free generation that is not one."""
from __future__ import annotations

import json
from typing import Literal

import torch
from pydantic import ConfigDict, ValidationError, create_model

IGNORE = -100


class JsonTemplate:
    def __init__(self, tokenizer, values: dict[str, list[str]]):
        self.attributes, self.values = list(values), values
        names = self.attributes
        texts = [f'{{"{names[0]}": "'] + [f'", "{a}": "' for a in names[1:]] + ['"}']
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

    @torch.no_grad()
    def decode_constrained(self, lm, prefix: torch.Tensor) -> dict[str, str]:
        """Greedy decoding where each step may only pick a token that continues the template:
        the forced pieces, then a token of one of the attribute's allowed values (ended by the
        next piece's first token). `prefix` is (1, L, hidden) input embeddings."""
        out = lm(inputs_embeds=prefix, use_cache=True)
        state = {"past": out.past_key_values, "logits": out.logits[0, -1]}

        def feed(tokens: list[int]) -> None:
            if tokens:
                o = lm(input_ids=torch.tensor([tokens], device=prefix.device), past_key_values=state["past"],
                       use_cache=True)
                state["past"], state["logits"] = o.past_key_values, o.logits[0, -1]

        answer, forced = {}, self.pieces[0]
        for i, a in enumerate(self.attributes):
            feed(forced)
            end = self.pieces[i + 1][0]
            candidates = {v: ids + [end] for v, ids in self.value_ids[a].items()}
            chosen: list[int] = []
            while True:
                allowed = sorted({s[len(chosen)] for s in candidates.values() if len(s) > len(chosen)})
                token = max(allowed, key=lambda t: state["logits"][t].item())
                chosen.append(token)
                feed([token])
                candidates = {v: s for v, s in candidates.items() if s[:len(chosen)] == chosen}
                finished = [v for v, s in candidates.items() if len(s) == len(chosen)]
                if finished:
                    answer[a] = finished[0]
                    break
            forced = self.pieces[i + 1][1:]
        return answer

    def dumps(self, answer: dict[str, str]) -> str:
        return json.dumps({a: answer[a] for a in self.attributes})
