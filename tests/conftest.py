import os
import subprocess
import sys

import pytest
import torch

import vlm_hf
from vlm_hf import VlmHfConfig

if "PYTEST_XDIST_WORKER" in os.environ:
    # `make test` runs one worker per core: a second torch thread per worker only makes them fight over the cores.
    torch.set_num_threads(1)


def run_offline_script(script: str, folder) -> None:
    """Run `script` in a new Python process with `folder` as its argument and working directory, offline (the Hub
    cannot be reached), and fail with its stderr unless it succeeds."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def tiny_config(**overrides) -> VlmHfConfig:
    """A few-layer model with a ResNet-18 trunk pooled to a 2x2 grid: small enough for CPU tests."""
    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        vision_backbone="resnet18",
        visual_grid=2,
        num_labels=5,
        retrieval_embed_dim=16,
    )
    values.update(overrides)
    return VlmHfConfig(**values)


def tiny_features_config(**overrides) -> VlmHfConfig:
    """No backbone: the model takes precomputed 12-d region features."""
    return tiny_config(vision_backbone=None, visual_feature_dim=12, **overrides)


def text_inputs(batch_size=2, length=7, vocab_size=99, seed=0, pad_last=True):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    if pad_last and batch_size > 1:
        attention_mask[-1, length - 2 :] = 0
        input_ids[-1, length - 2 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pixel_inputs(num_images=2, size=64, seed=1):
    return torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(seed))


def region_inputs(num_images=2, num_regions=3, dim=12, seed=2):
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num_images, num_regions, 2, 2, generator=generator).sort(dim=2).values
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    return {
        "visual_embeds": torch.randn(num_images, num_regions, dim, generator=generator),
        "visual_boxes": boxes,
    }


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def train_steps(model, batch: dict, steps: int, lr: float) -> tuple[float, float]:
    """`steps` AdamW steps on one batch; returns the first and the last loss (the overfitting tests compare them)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return first, loss.item()


# Command-line flags of a tiny, quiet Trainer run; each test adds its data, batch size and steps.
TINY_TRAINING_FLAGS = (
    "--hidden_size 32 --num_hidden_layers 1 --visual_grid 2 --image_size 64 "
    "--report_to none --disable_tqdm true --logging_steps 1"
).split()


HEADS = [
    vlm_hf.VlmHfModel,
    vlm_hf.VlmHfForPreTraining,
    vlm_hf.VlmHfForQuestionAnswering,
    vlm_hf.VlmHfForImageTextRetrieval,
]


CORPUS = [
    "what colour is the circle?",
    "how many squares are there?",
    "is there a red triangle left of the blue circle?",
    "a green square above two yellow circles.",
] * 5


@pytest.fixture(scope="session")
def tokenizer():
    return vlm_hf.train_wordpiece_tokenizer(CORPUS, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="session")
def processor(tokenizer):
    return vlm_hf.VlmHfProcessor(vlm_hf.VlmHfImageProcessor(), tokenizer)
