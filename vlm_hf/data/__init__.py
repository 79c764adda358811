"""Data for vlm_hf: the synthetic default scenes and the collators that turn rows into model inputs."""

from .collators import PretrainingCollator, RetrievalCollator, VqaCollator, soft_score_targets
from .synthetic import QUESTION_TYPES, answer_vocabulary, generate_synthetic_dataset

__all__ = [
    "PretrainingCollator",
    "RetrievalCollator",
    "VqaCollator",
    "soft_score_targets",
    "QUESTION_TYPES",
    "answer_vocabulary",
    "generate_synthetic_dataset",
]
