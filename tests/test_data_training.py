"""Synthetic data, collators, Trainer runs and the training / evaluation command line."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING_FLAGS
from huggingface_hub import ModelCard

from vlm_hf.data import (
    PretrainingCollator,
    RetrievalCollator,
    VqaCollator,
    answer_vocabulary,
    generate_synthetic_dataset,
)
from vlm_hf.data.collators import pick_captions
from vlm_hf.evaluation import question_only_baseline, recall_at_k, vqa_accuracy
from vlm_hf.training import finetune, pretrain

VLM_HF = Path(sys.executable).parent / "vlm-hf"


@pytest.fixture(scope="module")
def scenes():
    return generate_synthetic_dataset(64, seed=3, image_size=64)


# -- synthetic data -------------------------------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate_synthetic_dataset(5, seed=7, image_size=64), generate_synthetic_dataset(5, seed=7, image_size=64)
    c = generate_synthetic_dataset(5, seed=8, image_size=64)
    assert a["questions"] == b["questions"] and a["captions"] == b["captions"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["image"], b["image"], strict=True))
    assert a["questions"] != c["questions"]


def test_questions_cover_every_type_with_known_answers(scenes):
    vocabulary = set(answer_vocabulary(3))
    types = Counter(t for row in scenes["question_types"] for t in row)
    assert set(types) == {"colour", "shape", "count", "exist", "position"}
    answers = [a[0] for row in scenes["answers"] for a in row]
    assert set(answers) <= vocabulary
    yes_no = [a for a in answers if a in ("yes", "no")]
    assert 0.3 < yes_no.count("yes") / len(yes_no) < 0.7  # balanced: the image is needed


def test_question_only_baseline_is_far_from_perfect():
    train = generate_synthetic_dataset(400, seed=0, image_size=32)
    held_out = generate_synthetic_dataset(100, seed=1, image_size=32)
    baseline = question_only_baseline(train, held_out)
    assert baseline["accuracy"] < 0.65
    assert baseline["per_type"]["exist"] < 0.7 and baseline["per_type"]["colour"] < 0.5


def test_vqa_accuracy_uses_soft_scores():
    rows = [
        {
            "question_types": ["colour", "count"],
            "answers": [["red", "blue"], ["two"]],
            "answer_scores": [[1.0, 0.3], [1.0]],
        }
    ]
    result = vqa_accuracy(["blue", "two"], rows)
    assert result["accuracy"] == pytest.approx(0.65) and result["per_type"] == {"colour": 0.3, "count": 1.0}


def test_vqa_accuracy_prefers_the_official_accuracies_when_rows_have_them():
    rows = [
        {
            "question_types": ["colour", "count"],
            "answers": [["red", "blue"], ["two"]],
            "answer_scores": [[1.0, 2 / 3], [1.0]],
            "answer_accuracies": [[1.0, 0.6], [0.9]],
        }
    ]
    result = vqa_accuracy(["blue", "two"], rows)
    assert result["per_type"] == {"colour": 0.6, "count": 0.9} and result["accuracy"] == pytest.approx(0.75)


def test_recall_at_k():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    positives = torch.tensor([[False, False, True], [False, False, True]])
    assert recall_at_k(similarity, positives, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}


# -- collators ------------------------------------------------------------------------------------------------------


def test_vqa_collator_groups_questions_by_image(scenes, processor):
    labels = answer_vocabulary(3)
    rows = [scenes[i] for i in range(4)]
    batch = VqaCollator(processor, {a: i for i, a in enumerate(labels)})(rows)
    counts = [len(r["questions"]) for r in rows]
    assert batch["pixel_values"].shape[0] == 4
    assert batch["image_index"].tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert batch["labels"].shape == (sum(counts), len(labels)) and (batch["labels"].sum(1) == 1).all()
    first_answer = rows[0]["answers"][0][0]
    assert batch["labels"][0, labels.index(first_answer)] == 1


def test_pretraining_collator_statistics(scenes, processor):
    collator = PretrainingCollator(processor, num_visual_tokens=16, seed=0)
    tokenizer = processor.tokenizer
    chosen = masked = kept = real = negatives = total = 0
    for start in range(0, 64, 16):
        rows = [scenes[i] for i in range(start, start + 16)]
        batch = collator(rows)
        itm = batch["itm_labels"]
        negatives += int((itm == 0).sum())
        total += len(itm)
        targets = batch["labels"] != -100
        # No masked LM and no masked visual features on mismatched pairs.
        assert not targets[itm == 0].any() and not batch["visual_feature_mask"][itm == 0].any()
        special = torch.tensor([[t in tokenizer.all_special_ids for t in row] for row in batch["labels"].clamp(min=0)])
        real += int(((batch["attention_mask"] == 1) & (itm == 1)[:, None]).sum()) - 2 * int((itm == 1).sum())
        chosen += int(targets.sum())
        masked += int((batch["input_ids"][targets] == tokenizer.mask_token_id).sum())
        kept += int((batch["input_ids"][targets] == batch["labels"][targets]).sum())
        assert not special[targets].any()
    randomised = chosen - masked - kept
    assert 0.35 < negatives / total < 0.65
    assert 0.10 < chosen / real < 0.20
    assert 0.7 < masked / chosen < 0.9 and randomised / chosen < 0.2 and kept / chosen < 0.2


def test_itm_negatives_never_use_the_images_own_captions(scenes, processor):
    collator = PretrainingCollator(processor, num_visual_tokens=16, seed=1, itm_negative_rate=1.0)
    rows = [scenes[i] for i in range(8)]
    batch = collator(rows)
    texts = processor.batch_decode(batch["input_ids"], skip_special_tokens=True)
    for row, text, label in zip(rows, texts, batch["itm_labels"].tolist(), strict=True):
        assert label == 0 and text not in row["captions"]


def test_itm_negatives_skip_other_rows_of_the_same_image():
    # One caption per row, as a pair corpus has: rows 0-2 show image "a", row 3 image "b".
    rows = [{"image_id": "a", "captions": [f"caption {i} of a"]} for i in range(3)]
    rows.append({"image_id": "b", "captions": ["the caption of b"]})
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        texts, labels = pick_captions(rows, 1.0, generator)
        assert labels == [0, 0, 0, 0]
        assert texts[:3] == ["the caption of b"] * 3 and texts[3].endswith("of a")


def test_retrieval_collator_pairs_and_labels(scenes, processor):
    rows = [scenes[i] for i in range(6)]
    batch = RetrievalCollator(processor, itm_negative_rate=1.0, seed=0)(rows)
    texts = processor.batch_decode(batch["input_ids"], skip_special_tokens=True)
    for text, image, label in zip(texts, batch["image_index"].tolist(), batch["labels"].tolist(), strict=True):
        assert (text in rows[image]["captions"]) == (label == 1)
    assert batch["labels"].sum() == 6 and batch["return_loss"]


# -- Trainer runs ---------------------------------------------------------------------------------------------------


TINY = [
    *TINY_TRAINING_FLAGS,
    *"--num_train_images 16 --per_device_train_batch_size 8 --learning_rate 2e-3 --vocab_size 300".split(),
]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("command", ["pretrain", "vqa", "retrieval"])
def test_trainer_run_lowers_the_loss_and_saves_a_loadable_folder(command, tmp_path):
    # Whole-dataset batches, so that the loss is compared on the same scenes (masking stays random).
    args = [
        *TINY,
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "30",
        "--save_strategy",
        "no",
        "--seed",
        "0",
        "--per_device_train_batch_size",
        "16",
    ]
    trainer = pretrain(args) if command == "pretrain" else finetune(command, args)
    history = losses(trainer)
    assert np.mean(history[-5:]) < 0.9 * np.mean(history[:5])
    from transformers import AutoModel, AutoProcessor

    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "VlmHfProcessor"
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "VlmHfModel"


def test_finetuning_keeps_the_folders_dropout_and_freezing_unless_a_flag_sets_them(tmp_path):
    one_step = [*TINY, "--max_steps", "1", "--save_strategy", "no"]
    pretrain([*one_step, "--output_dir", str(tmp_path / "pretrained"), "--hidden_dropout_prob", "0", "--freeze_vision"])
    from_folder = [*one_step, "--model_name_or_path", str(tmp_path / "pretrained")]
    kept = finetune("vqa", [*from_folder, "--output_dir", str(tmp_path / "kept")]).model
    assert (kept.config.hidden_dropout_prob, kept.config.attention_probs_dropout_prob) == (0, 0.1)
    assert kept.config.freeze_vision and not any(p.requires_grad for p in kept.vlm_hf.vision_backbone.parameters())
    changed = finetune(
        "vqa",
        [
            *from_folder,
            *("--output_dir", str(tmp_path / "changed"), "--attention_probs_dropout_prob", "0.3"),
            *("--freeze_vision", "false"),
        ],
    ).model
    assert (changed.config.hidden_dropout_prob, changed.config.attention_probs_dropout_prob) == (0, 0.3)
    assert not changed.config.freeze_vision and all(
        p.requires_grad for p in changed.vlm_hf.vision_backbone.parameters()
    )
    new = finetune("vqa", [*one_step, "--output_dir", str(tmp_path / "new")]).model.config
    assert (new.hidden_dropout_prob, new.attention_probs_dropout_prob, new.freeze_vision) == (0.1, 0.1, False)


def test_resume_from_checkpoint_continues_like_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--max_steps", "6", "--save_steps", "3", "--save_strategy", "steps", "--seed", "0"]
    straight = finetune("vqa", [*common, "--output_dir", str(tmp_path / "straight")])
    resumed = finetune(
        "vqa",
        [
            *common,
            "--output_dir",
            str(tmp_path / "resumed"),
            "--resume_from_checkpoint",
            str(tmp_path / "straight" / "checkpoint-3"),
        ],
    )
    assert resumed.state.global_step == straight.state.global_step == 6
    assert len(losses(resumed)) == 6  # the checkpoint's log history plus steps 4-6
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-4)


# -- command line ---------------------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([VLM_HF, *map(str, args)], capture_output=True, text=True)


def test_cli_help_and_clear_errors(tmp_path):
    assert run_cli("--help").returncode == 0
    help_text = run_cli("finetune", "--task", "vqa", "--help")
    assert help_text.returncode == 0 and "--per_device_train_batch_size" in help_text.stdout
    unknown = run_cli("finetune", "--task", "captions", "--output_dir", tmp_path / "out")
    assert unknown.returncode == 2 and "invalid choice: 'captions'" in unknown.stderr
    missing = run_cli(
        "finetune", "--task", "vqa", "--model_name_or_path", tmp_path / "nope", "--output_dir", tmp_path / "out"
    )
    assert missing.returncode == 2 and "not a saved vlm_hf folder" in missing.stderr
    assert not (tmp_path / "out").exists()
    no_model = run_cli("evaluate", tmp_path, "--task", "vqa")
    assert no_model.returncode == 2 and "no config.json" in no_model.stderr
    no_question = run_cli("predict", tmp_path, "image.png")
    assert no_question.returncode == 2


def test_main_job_runs_end_to_end_at_small_scale(tmp_path):
    from vlm_hf.demo import main

    status = main(
        [
            "--output-dir",
            str(tmp_path),
            "--train-images",
            "16",
            "--eval-images",
            "8",
            "--image-size",
            "64",
            "--pretrain-steps",
            "2",
            "--finetune-steps",
            "2",
            "--caption-steps",
            "2",
            "--batch-size",
            "8",
            "--new-scenes",
            "2",
        ]
    )
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["model"]["per_type"]) <= {"colour", "shape", "count", "exist", "position"}
    assert results["captioning"]["num_images"] == 8 and 0 <= results["captioning"]["CIDEr-D"]
    card = ModelCard.load(tmp_path / "model" / "README.md")
    overall = [r for r in card.data.eval_results if r.metric_config is None]
    assert [r.metric_value for r in overall] == [round(results["model"]["accuracy"], 4)]
    assert {r.metric_config for r in card.data.eval_results} - {None} == set(results["model"]["per_type"])
    assert (tmp_path / "new_scenes.png").is_file() and (tmp_path / "model" / "model.safetensors").is_file()


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with `--use_cpu` (DDP over gloo) against one process, global
    batch 8 in both. (`accelerate launch --cpu` starts several processes only through MPI; the torchrun launcher behind
    `--multi_gpu` with the Trainer's `--use_cpu` is how multi-process CPU training runs without it.)

    Dropout is off and the backbone frozen (batch-norm statistics would otherwise differ between 4- and 8-image
    batches). The logged loss of two processes is the mean of their two half-batch losses, the one-process loss the
    mean over the whole batch; as scenes have 4 or 5 questions, the two can differ slightly: tolerance 1%.
    """
    common = [
        *TINY,
        "--max_steps",
        "3",
        "--save_strategy",
        "no",
        "--seed",
        "0",
        "--freeze_vision",
        "--hidden_dropout_prob",
        "0",
        "--attention_probs_dropout_prob",
        "0",
    ]
    single = finetune("vqa", [*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8"])
    launched = subprocess.run(
        [
            Path(sys.executable).parent / "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "vlm_hf.cli",
            "finetune",
            "--task",
            "vqa",
            *common,
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "info"},
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    # Two processes of 4: the Trainer reports the global batch across the processes.
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in launched.stderr
    two = [
        float(line.split("'loss': '")[1].split("'")[0]) for line in launched.stdout.splitlines() if "'loss': '" in line
    ]
    assert len(two) == 3
    np.testing.assert_allclose(two, losses(single), rtol=0.01)


def saved_model(head, processor, folder, **config):
    from conftest import tiny_config

    model = head(tiny_config(vocab_size=len(processor.tokenizer), **config)).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def test_predict_answers_questions_and_ranks_captions(processor, tmp_path):
    from vlm_hf import VlmHfForImageTextRetrieval, VlmHfForQuestionAnswering

    labels = answer_vocabulary(3)
    saved_model(
        VlmHfForQuestionAnswering,
        processor,
        tmp_path / "vqa",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={a: i for i, a in enumerate(labels)},
    )
    saved_model(VlmHfForImageTextRetrieval, processor, tmp_path / "retrieval")
    image = tmp_path / "scene.png"
    generate_synthetic_dataset(1, seed=5, image_size=64)[0]["image"].save(image)

    answered = run_cli("predict", tmp_path / "vqa", image, "--question", "what colour is the circle?", "--top-k", "2")
    assert answered.returncode == 0, answered.stderr
    lines = answered.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[1] in labels for line in lines)

    ranked = run_cli("predict", tmp_path / "retrieval", image, "--captions", "a red circle.", "two blue squares.")
    assert ranked.returncode == 0, ranked.stderr
    scores = [float(line.split()[0]) for line in ranked.stdout.strip().splitlines()]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)

    missing_image = run_cli("predict", tmp_path / "vqa", tmp_path / "nope.png", "--question", "what?")
    assert missing_image.returncode == 2 and "no image file" in missing_image.stderr


def test_retrieval_evaluation_reports_recall_and_itm_scores(processor, tmp_path):
    from vlm_hf import VlmHfForImageTextRetrieval
    from vlm_hf.evaluation import evaluate_retrieval

    model = saved_model(VlmHfForImageTextRetrieval, processor, tmp_path)
    result = evaluate_retrieval(model, processor, generate_synthetic_dataset(12, seed=2, image_size=64), batch_size=5)
    assert set(result) == {"text_to_image", "image_to_text", "itm"}
    for direction in ("text_to_image", "image_to_text"):
        recalls = [result[direction][k] for k in ("R@1", "R@5", "R@10")]
        assert recalls == sorted(recalls) and 0 <= recalls[0] and recalls[-1] <= 1
    assert set(result["itm"]) == {"precision", "recall", "f1"}
