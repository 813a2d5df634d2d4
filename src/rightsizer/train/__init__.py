"""Shared training machinery: HF Trainer setup, collators, metrics, callbacks."""

from rightsizer.train.finetune import FineTuneResult, classification_metrics, fine_tune, training_texts

__all__ = ["FineTuneResult", "classification_metrics", "fine_tune", "training_texts"]
