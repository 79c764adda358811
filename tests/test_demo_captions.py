"""The demo's captioning stage (`vlm_hf.demo_captions`) at tiny scale: fine-tuning from a pretrained folder with the
demo's Trainer flags, the saved folder, the scores and their printout."""

import argparse

import pytest
import torch
from conftest import TINY_TRAINING_FLAGS
from safetensors.torch import load_file

from vlm_hf.data import generate_synthetic_dataset
from vlm_hf.demo import EVAL_SEED, trainer_flags
from vlm_hf.demo_captions import caption_stage, print_captions
from vlm_hf.training import pretrain

IMAGE_SIZE = 64  # TINY_TRAINING_FLAGS' size
SCORES = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "pretrained"
    flags = "--num_train_images 16 --per_device_train_batch_size 8 --vocab_size 300 --save_strategy no --seed 0"
    pretrain([*TINY_TRAINING_FLAGS, *flags.split(), "--output_dir", str(folder), "--max_steps", "2"])
    return folder


@pytest.fixture(scope="module")
def held_out():
    return generate_synthetic_dataset(6, seed=EVAL_SEED, image_size=IMAGE_SIZE)


def demo_flags(output_dir, steps: int) -> list[str]:
    """The demo's common Trainer flags, for tiny data."""
    args = argparse.Namespace(train_images=16, image_size=IMAGE_SIZE, batch_size=8)
    return trainer_flags(args, output_dir, steps, learning_rate=1e-3)


def test_caption_stage_trains_saves_and_scores_the_held_out_scenes(pretrained, held_out, tmp_path):
    from transformers import AutoModelForImageTextToText

    # The common flags name another folder and step count: the stage's own arguments win.
    flags = demo_flags(tmp_path / "elsewhere", steps=50)
    result = caption_stage(pretrained, tmp_path / "captioning", held_out, steps=3, trainer_flags=flags)

    assert SCORES <= set(result) and all(0 <= result[name] for name in SCORES)
    assert "METEOR" not in result  # skipped: its Java start-up is slow
    assert result["num_images"] == len(held_out)
    assert [sample["references"] for sample in result["samples"]] == held_out["captions"][:5]
    assert all(isinstance(sample["generated"], str) for sample in result["samples"])

    folder = tmp_path / "captioning"
    assert not (tmp_path / "elsewhere").exists()
    training_args = torch.load(folder / "training_args.bin", weights_only=False)
    assert training_args.max_steps == 3
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == "VlmHfForConditionalGeneration"
    # The backbone stayed as pretraining left it, batch-norm statistics included.
    before, after = load_file(pretrained / "model.safetensors"), load_file(folder / "model.safetensors")
    backbone = [key for key in after if ".vision_backbone." in key]
    assert backbone and all(torch.equal(before[key], after[key]) for key in backbone)
    # ... while the text side learned.
    decoder = "cls.predictions.decoder.bias"
    assert not torch.equal(before[decoder], after[decoder])


def test_caption_stage_rejects_bad_arguments(pretrained, held_out, tmp_path):
    with pytest.raises(ValueError, match="pretrained.*no config.json"):
        caption_stage(tmp_path, tmp_path / "out", held_out, steps=1, trainer_flags=demo_flags(tmp_path, 1))
    with pytest.raises(ValueError, match="steps must be a positive"):
        caption_stage(pretrained, tmp_path / "out", held_out, steps=0, trainer_flags=demo_flags(tmp_path, 1))
    assert not (tmp_path / "out").exists()


def test_print_captions_shows_the_scores_and_samples_with_a_reference(capsys):
    result = {
        "CIDEr-D": 3.456,
        "BLEU-4": 0.612,
        "ROUGE-L": 0.789,
        "num_images": 300,
        "samples": [{"generated": f"caption {i}", "references": [f"reference {i}", f"other {i}"]} for i in range(5)],
    }
    print_captions(result, num_samples=2)
    printed = capsys.readouterr().out
    assert "CIDEr-D 3.46" in printed and "BLEU-4 0.61" in printed and "ROUGE-L 0.79" in printed
    assert "300 held-out scenes" in printed
    assert "'caption 0'" in printed and "'reference 1'" in printed
    assert "caption 2" not in printed and "other 0" not in printed
