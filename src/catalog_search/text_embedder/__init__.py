"""Short shopper query -> product description embedder: a BERT-family sentence-transformers model
tuned with a LoRA adapter (peft) and the in-batch-negatives ranking loss.

Built on sentence-transformers throughout: MultipleNegativesRankingLoss, its trainer (with the
no-duplicates batch sampler, so an identical query twice in a batch is not its own negative),
peft adapter support, and InformationRetrievalEvaluator for the metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from catalog_search.core import packaged
from catalog_search.core.adapters import lora_config
from catalog_search.core.names import parse_name
from catalog_search.params import ParamsError

def resolve_base(name: str) -> str:
    """`packaged:all-MiniLM-L6-v2` (offline default), a Hugging Face name, or a local path."""
    parsed = parse_name(name, "text_embedder.base")
    if parsed.scheme == "packaged" and parsed.value == "all-MiniLM-L6-v2":
        return packaged.minilm_path()
    if parsed.scheme != "hub":
        raise ParamsError(f"params.yaml: text_embedder.base={name!r}: use packaged:all-MiniLM-L6-v2, a Hugging Face "
                          "BERT-family name or a local folder")
    return name


def training_pairs(samples: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(anchor, positive) pairs: query -> description and title -> description."""
    anchors, positives = [], []
    for s in samples:
        if not s.get("description"):
            continue
        for anchor in (s.get("query"), s.get("title")):
            if anchor:
                anchors.append(anchor)
                positives.append(s["description"])
    if not anchors:
        raise ValueError("no (query or title, description) pair in the training split; the catalog needs descriptions")
    return anchors, positives


def retrieval_task(samples: Sequence[dict]) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Queries (unique texts), corpus (descriptions by product id) and relevance.

    A query is relevant to every product that has that same query: identical products are common
    in a catalog and any of them answers the shopper.
    """
    corpus = {s["product_id"]: s["description"] for s in samples if s.get("description")}
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for s in samples:
        if s.get("query") and s["product_id"] in corpus:
            qid = queries.setdefault(s["query"], f"q{len(queries)}")
            relevant.setdefault(qid, set()).add(s["product_id"])
    return {qid: text for text, qid in queries.items()}, corpus, relevant


def text_lora_config(cfg: dict):
    """LoRA on the `targets` projections of every layer (sentence-transformers' feature-extraction task)."""
    from peft import TaskType

    return lora_config(cfg, list(cfg["targets"]), task_type=TaskType.FEATURE_EXTRACTION)


def load_model(base: str, adapter: str | Path | None = None, max_length: int = 128, device: str | None = None):
    """The sentence-transformers model with a trained adapter if given; embeddings L2-normalised.

    A plain Hugging Face BERT (no sentence-transformers config) loads with mean pooling only, so the
    normalisation is added here: tuned and base models are always compared on the same footing.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.normalize import Normalize

    model = SentenceTransformer(resolve_base(base), device=device)
    if not any(isinstance(m, Normalize) for m in model):
        model.append(Normalize())
    model.max_seq_length = max_length
    if adapter is not None:
        model.load_adapter(str(adapter))
    return model
