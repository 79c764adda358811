"""Data for vlm_hf: the synthetic default scenes, loaders for COCO captions, VQA v2, Karpathy splits, image folders
and streamed shards, and the collators that turn rows into model inputs."""

from .collators import (
    CaptioningCollator,
    PretrainingCollator,
    RegionLabeller,
    RetrievalCollator,
    VqaCollator,
    soft_score_targets,
)
from .loaders import load_coco_captions, load_imagefolder, load_karpathy, load_vqa_v2, one_per_row
from .streaming import load_image_text_pairs
from .synthetic import FEATURES, QUESTION_TYPES, answer_vocabulary, generate_synthetic_dataset
from .vqa_answers import answer_vocabulary_from, normalize_answer, official_accuracies, official_accuracy, soft_scores

__all__ = [
    "CaptioningCollator",
    "PretrainingCollator",
    "RegionLabeller",
    "RetrievalCollator",
    "VqaCollator",
    "soft_score_targets",
    "QUESTION_TYPES",
    "answer_vocabulary",
    "generate_synthetic_dataset",
    "FEATURES",
    "load_coco_captions",
    "load_vqa_v2",
    "load_karpathy",
    "load_imagefolder",
    "load_image_text_pairs",
    "one_per_row",
    "normalize_answer",
    "soft_scores",
    "official_accuracy",
    "official_accuracies",
    "answer_vocabulary_from",
]
