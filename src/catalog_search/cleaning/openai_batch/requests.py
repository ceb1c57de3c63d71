"""One chat-completions request per product, and the JSONL files that carry them to the Batch API.

A request's key hashes everything that decides its answer (product id, raw title, image bytes,
model, prompt, schema, image settings): the same key is never sent again once answered, and a
changed prompt or model makes new keys, i.e. a deliberate new request.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from PIL import Image

ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class RequestBuilder:
    """Turns (raw title, image bytes) into a batch input line; settings from clean.openai_batch."""

    model: str
    prompt: str
    response_format: dict
    image_size: int
    image_detail: str
    max_output_tokens: int

    @classmethod
    def from_params(cls, cfg: dict, response_format: dict) -> "RequestBuilder":
        return cls(cfg["model"], cfg["prompt"].strip(), response_format, cfg["image_size"], cfg["image_detail"],
                   cfg["max_output_tokens"])

    @property
    def config_hash(self) -> str:
        settings = [self.model, self.prompt, self.response_format, self.image_size, self.image_detail,
                    self.max_output_tokens]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def parts(self, title_raw: str, image: bytes) -> dict[str, str]:
        """What decides an answer besides the product id, as hashes: the ledger keeps them so that a
        re-sent product can be explained (title, image bytes or request settings changed)."""
        return {"title": hashlib.sha256(title_raw.encode()).hexdigest()[:16],
                "image": hashlib.sha256(image).hexdigest(), "settings": self.config_hash}

    def key(self, product_id: str, title_raw: str, image: bytes) -> str:
        parts = [product_id, title_raw, hashlib.sha256(image).hexdigest(), self.config_hash]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def data_url(self, image: bytes) -> str:
        """The image shrunk so its longest side fits image_size, as a JPEG data URL."""
        with Image.open(io.BytesIO(image)) as im:
            im = im.convert("RGB")
            im.thumbnail((self.image_size, self.image_size))
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()

    def user_text(self, title_raw: str) -> str:
        return f"Marketplace title: {title_raw}"

    def line(self, key: str, title_raw: str, image: bytes) -> bytes:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": [
                    {"type": "text", "text": self.user_text(title_raw)},
                    {"type": "image_url", "image_url": {"url": self.data_url(image), "detail": self.image_detail}},
                ]},
            ],
            "response_format": self.response_format,
            "max_completion_tokens": self.max_output_tokens,
        }
        return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                          ensure_ascii=False).encode() + b"\n"

    def estimated_input_tokens(self, title_raw: str, tokens_per_image: int) -> int:
        """~4 characters a token for the text (prompt, title, schema), plus the image's tokens."""
        text = self.prompt + self.user_text(title_raw) + json.dumps(self.response_format)
        return len(text) // 4 + tokens_per_image


class RequestFiles:
    """Streams request lines into files of at most `max_requests` lines and `max_bytes` bytes (the
    Batch API's limits per input file). `on_file(path, [(key, product_id, parts)], bytes, tokens)`
    records each file once it is complete on disk, with its estimated input tokens (what the
    account's enqueued-token limit counts); with `dry_run` nothing is written, only counts move."""

    def __init__(self, folder: Path, first_number: int, max_requests: int, max_bytes: int,
                 on_file: Callable[[Path, list[tuple[str, str, str]], int, int], None], dry_run: bool = False):
        self.folder, self.number, self.max_requests, self.max_bytes = folder, first_number, max_requests, max_bytes
        self.on_file, self.dry_run = on_file, dry_run
        self.files = 0
        self._out: BinaryIO | None = None
        self._items: list[tuple[str, str, str]] = []
        self._bytes = self._tokens = 0

    def fits(self, line: bytes) -> bool:
        return len(line) <= self.max_bytes

    def add(self, key: str, product_id: str, line: bytes, parts: str = "{}", tokens: int = 0) -> None:
        if self._items and (len(self._items) >= self.max_requests or self._bytes + len(line) > self.max_bytes):
            self.flush()
        if self._out is None and not self.dry_run:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._out = open(self._path().with_suffix(".partial"), "wb")
        if self._out is not None:
            self._out.write(line)
        self._items.append((key, product_id, parts))
        self._bytes += len(line)
        self._tokens += tokens

    def _path(self) -> Path:
        return self.folder / f"requests-{self.number + self.files:05d}.jsonl"

    def flush(self) -> None:
        """Close the current file (fsync, then rename: a file on disk is always whole) and record it."""
        if not self._items:
            return
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None
            os.replace(self._path().with_suffix(".partial"), self._path())
            self.on_file(self._path(), self._items, self._bytes, self._tokens)
        self.files += 1
        self._items, self._bytes, self._tokens = [], 0, 0
