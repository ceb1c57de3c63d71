"""Decoding an answer: free greedy generation (AttributeVLM.generate_text, whose validity is what
`valid_json_raw` measures) or decoding under the template, which can only produce a valid object.

Under the template only the values vary, so the decoder asks the model for a choice only where
the allowed values branch: the JSON between values and a value's tokens once its first token
settles it are fed in one forward pass without a choice. Rows run as one batch, each at its own
place in the template: every call feeds each row's pending tokens, left-padded to one width with
masked positions (explicit position ids keep each row's numbering as if it ran alone), so the
last column holds the logits every undecided row needs. The shared prefix (the prompt) is
computed once per batch. The choice is greedy per token among the allowed ones."""
from __future__ import annotations

import torch
from torch import nn

from catalog_search.vlm.model import shared_cache
from catalog_search.vlm.template import JsonTemplate


class _Row:
    """One answer's place in the template: the attribute, the values still possible (their
    remaining tokens, ended by the next piece's first token) and the tokens not yet fed."""

    def __init__(self, template: JsonTemplate):
        self.t, self.i, self.answer, self.done = template, 0, {}, False
        self.pending: list[int] = []
        self.candidates = self._candidates()

    def _candidates(self) -> dict[str, list[int]]:
        end = self.t.pieces[self.i + 1][0]
        return {v: ids + [end] for v, ids in self.t.value_ids[self.t.attributes[self.i]].items()}

    def choose(self, logits: torch.Tensor) -> None:
        """Take the most likely allowed token, then every token that follows without a choice."""
        allowed = sorted({s[0] for s in self.candidates.values()})
        self._take(allowed[int(logits[allowed].argmax())])
        while not self.done and len(nxt := {s[0] for s in self.candidates.values()}) == 1:
            self._take(nxt.pop())

    def _take(self, token: int) -> None:
        self.pending.append(token)
        self.candidates = {v: s[1:] for v, s in self.candidates.items() if s[0] == token}
        finished = [v for v, s in self.candidates.items() if not s]
        if not finished:
            return
        self.answer[self.t.attributes[self.i]] = finished[0]
        self.i += 1
        if self.i == len(self.t.attributes):
            self.done, self.pending = True, []
            return
        self.pending += self.t.pieces[self.i][1:]
        self.candidates = self._candidates()


@torch.no_grad()
def decode_constrained(model: nn.Module, template: JsonTemplate, inputs: torch.Tensor) -> list[dict[str, str]]:
    """One valid answer per row of `inputs` (image features, or pixels on the HF path)."""
    lm, embed = model.lm, model.lm.get_input_embeddings()
    images = model.image_embeds(inputs)
    shared = model.shared_prefix().to(images.dtype)
    n = len(images)
    cache, start = shared_cache(lm, shared, n)
    seen = torch.ones(n, start, dtype=torch.long, device=images.device)

    # With tied embeddings the head's rows are the input embeddings: score only the tokens the
    # template can ever allow (~100 of 49,152) instead of the whole vocabulary at every call.
    vocab = sorted({t for ids in template.value_ids.values() for seq in ids.values() for t in seq}
                   | {piece[0] for piece in template.pieces[1:]})
    tied = getattr(lm.config, "tie_word_embeddings", False) and hasattr(getattr(lm, "model", None), "norm")
    rows_of = embed.weight[vocab].float() if tied else None

    def feed(embeds: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        nonlocal cache, seen
        positions = seen.sum(1, keepdim=True) + (real.cumsum(1) - 1).clamp(min=0)
        seen = torch.cat([seen, real], 1)
        kwargs = dict(inputs_embeds=embeds, attention_mask=seen, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        if rows_of is None:
            out = lm(**kwargs, logits_to_keep=1)
            cache = out.past_key_values
            return out.logits[:, -1].float()
        out = lm.model(**kwargs)  # the decoder with its final norm; the head is applied here
        cache = out.past_key_values
        logits = torch.full((len(embeds), embed.num_embeddings), float("-inf"), device=embeds.device)
        logits[:, vocab] = out.last_hidden_state[:, -1].float() @ rows_of.T
        return logits

    rows = [_Row(template) for _ in range(n)]
    first = torch.tensor(template.pieces[0], device=images.device)
    logits = feed(torch.cat([images, embed(first).to(images.dtype).expand(n, -1, -1)], 1),
                  torch.ones(n, images.shape[1] + len(first), dtype=torch.long, device=images.device))
    while True:
        for row, row_logits in zip(rows, logits):
            if not row.done:
                row.choose(row_logits)
        if all(row.done for row in rows):
            return [row.answer for row in rows]
        width = max(len(row.pending) for row in rows)
        ids = torch.full((n, width), template.eos, device=images.device)
        real = torch.zeros(n, width, dtype=torch.long, device=images.device)
        for r, row in enumerate(rows):
            if row.pending:
                ids[r, width - len(row.pending):] = torch.tensor(row.pending)
                real[r, width - len(row.pending):] = 1
                row.pending = []
        logits = feed(embed(ids).to(images.dtype), real)
