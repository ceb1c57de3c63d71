"""Training and evaluation of the text embedder with sentence-transformers' own trainer and evaluator."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from catalog_search.core.adapters import trainable_summary
from catalog_search.text_embedder import retrieval_task, text_lora_config, training_pairs

KS = (1, 5, 10)


def evaluate(model, samples: Sequence[dict], batch_size: int = 128) -> dict[str, float]:
    """query -> description R@1/5/10 (a hit when any relevant product is in the top k), MRR@10, nDCG@10."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    queries, corpus, relevant = retrieval_task(samples)
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, accuracy_at_k=list(KS), precision_recall_at_k=[10],
                                              mrr_at_k=[10], ndcg_at_k=[10], map_at_k=[10], batch_size=batch_size,
                                              show_progress_bar=False)
    raw = evaluator(model)
    get = lambda name: float(next(v for k, v in raw.items() if k.endswith(name)))
    return {**{f"R@{k}": round(get(f"accuracy@{k}"), 4) for k in KS},
            "MRR@10": round(get("mrr@10"), 4), "nDCG@10": round(get("ndcg@10"), 4),
            "n_queries": len(queries), "n_descriptions": len(corpus)}


def train(model, samples: Sequence[dict], cfg: dict, seed: int, live=None) -> dict:
    """Add a LoRA adapter and train with MultipleNegativesRankingLoss (scale = 1 / temperature),
    in `cfg["precision"]` (the Trainer's own autocast)."""
    import torch

    from catalog_search.core.device import resolve_precision
    from datasets import Dataset
    from sentence_transformers import losses
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                         SentenceTransformerTrainingArguments)

    from transformers import set_seed

    anchors, positives = training_pairs(samples)
    set_seed(seed)  # before the adapter exists: LoRA's A matrices are drawn at creation
    model.add_adapter(text_lora_config(cfg["lora"]))
    loss = losses.MultipleNegativesRankingLoss(model, scale=1.0 / cfg["temperature"])
    gpu = torch.cuda.is_available()
    precision = resolve_precision(torch.device("cuda" if gpu else "cpu"), cfg["precision"])
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=cfg["epochs"], per_device_train_batch_size=cfg["batch_size"],
            learning_rate=cfg["lr"], warmup_steps=float(cfg["warmup_fraction"]), lr_scheduler_type="linear",
            max_grad_norm=cfg["grad_clip"], weight_decay=cfg["weight_decay"], seed=seed, data_seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none",
            logging_steps=cfg["log_every"], disable_tqdm=True, use_cpu=not gpu, dataloader_drop_last=True,
            bf16=precision == "bf16", fp16=precision == "fp16")
        callbacks = [_dvclive_callback(live)] if live is not None else []
        trainer = SentenceTransformerTrainer(model=model, args=args, loss=loss, callbacks=callbacks,
                                             train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}))
        result = trainer.train()
    sizes = trainable_summary(model)
    return {"pairs": len(anchors), "steps": result.global_step, "train_seconds": round(result.metrics["train_runtime"], 2),
            "final_loss": round(result.training_loss, 4), **sizes,
            "trainable_fraction": round(sizes["trainable_params"] / sizes["base_params"], 6)}


def _dvclive_callback(live):
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=live)


def save(model, out_dir: Path) -> None:
    """peft format (adapter_config.json + adapter_model.safetensors) plus the tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    transformer = model[0].auto_model
    transformer.save_pretrained(str(out_dir))
    model.tokenizer.save_pretrained(str(out_dir))
