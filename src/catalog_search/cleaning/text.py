"""Text normalisation by rules: the patterns come from params.yaml (clean.title), not from code."""
from __future__ import annotations

import html
import re
import string
import unicodedata
from dataclasses import dataclass

_TAG = re.compile(r"<[^>]+>")
_SYMBOLS = re.compile(r"[®™©℠]")  # before NFKC, which would turn ™ into the letters "TM"
_SEPARATORS = re.compile(r"\s*[|,;/]\s*|\s+[-–—]\s+")
_SPACE = re.compile(r"\s+")
# C1 controls are what a Latin-1 decode leaves of cp1252 punctuation (It\x92s): read them as cp1252
# does; the five code points it leaves undefined are dropped
_CP1252_C1 = {c: bytes([c]).decode("cp1252", "ignore") for c in range(0x80, 0xA0)}
_SPACE_BEFORE_MARK = re.compile(r"\s+(?=[.,;:!?])")
_MARK_RUN = re.compile(r"([.,;:!?])[.,;:!?]+")
_LEADING = re.compile(r"^[\s.,;:!?\-–—]+")
# a final dot stays after an abbreviation (U.S.): one letter, a dot, one letter
_TRAILING = re.compile(r"(?:[\s,;:!?\-–—]|(?<!\b[^\W\d_]\.[^\W\d_])\.)+$")


@dataclass(frozen=True)
class TitleRules:
    """Compiled removal rules: brand names (matched as whole words) and regex patterns."""

    patterns: tuple[re.Pattern, ...]

    @classmethod
    def from_params(cls, cfg: dict) -> "TitleRules":
        brands = [re.escape(b) for b in cfg.get("brands", [])]
        sources = ([rf"(?<!\w)(?:{'|'.join(brands)})(?!\w)"] if brands else []) + list(cfg.get("remove", []))
        return cls(tuple(re.compile(p, re.IGNORECASE) for p in sources))


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def _unescape(raw: str | None) -> str:
    """HTML entities, then C1 controls as cp1252 reads them (after unescape, which leaves
    `&#x81;` and the other cp1252 gaps as controls): the text a right decode would have given."""
    return html.unescape(raw or "").translate(_CP1252_C1)


def _tidy_punctuation(text: str) -> str:
    """Punctuation the removals leave behind: no space before a mark ("Portugal ." -> "Portugal."),
    a run of marks keeps its first ("!!!" -> "!"), none dangling at either end. Marks inside a
    token (3.5, T-shirt, U.S.) are untouched."""
    text = _MARK_RUN.sub(r"\1", _SPACE_BEFORE_MARK.sub("", text))
    return _TRAILING.sub("", _LEADING.sub("", text))


def clean_text(raw: str | None) -> str:
    """HTML entities, C1 controls, Unicode (NFKC), tags, whitespace: for every text field clean
    writes but the title (clean_title)."""
    text = unicodedata.normalize("NFKC", _unescape(raw))
    return _SPACE.sub(" ", _TAG.sub(" ", text)).strip()


def clean_title(raw: str, rules: TitleRules) -> str:
    """Strip markup, brands, SKUs, prices, pack sizes and shipping text, then the punctuation
    they leave behind; fix shouting case."""
    text = unicodedata.normalize("NFKC", _SYMBOLS.sub(" ", _unescape(raw)))
    text = _TAG.sub(" ", text)
    for pattern in rules.patterns:
        text = pattern.sub(" ", text)
    text = _tidy_punctuation(_SPACE.sub(" ", _SEPARATORS.sub(" ", text)))
    if text.isupper():
        text = " ".join(_capitalise(w) for w in text.split(" "))
    return text


@dataclass(frozen=True)
class CaptionTemplates:
    """Captions from attributes, e.g. "a photo of a {color} {article_type}" (clean.captions.templates).

    A template is used for a row only when every attribute it names is known there.
    """

    templates: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_params(cls, templates: list[str]) -> "CaptionTemplates":
        return cls(tuple((t, tuple(f for _, f, _, _ in string.Formatter().parse(t) if f)) for t in templates))

    def render(self, attributes: dict) -> list[str]:
        out = []
        for template, fields in self.templates:
            values = {f: attributes.get(f) for f in fields}
            if all(isinstance(v, str) and v.strip() for v in values.values()):
                out.append(template.format(**{f: v.strip().lower() for f, v in values.items()}))
        return out


def assemble_captions(title: str, source_captions: list[str], description: str | None,
                      templated: list[str] = ()) -> list[str]:
    """Several texts per image (caption augmentation): title, the source's captions, description,
    then the attribute templates; duplicates dropped, order kept."""
    texts = [title, *(clean_text(c) for c in source_captions), description or "", *templated]
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
