"""The main job (`make demo`): generate synthetic scenes -> pretrain (masked LM + image-text matching + masked visual
features + region classification of every grid cell) -> fine-tune VQA -> evaluate on held-out scenes against a
question-only baseline -> fine-tune captioning and score the held-out scenes' captions (CIDEr-D) -> reload the saved
folder with the Auto classes in a new process -> answer questions about new scenes, drawn into a picture."""

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .demo_captions import CAPTION_LEARNING_RATE, CAPTION_STEPS, caption_stage, print_captions

EVAL_SEED = 1234  # held-out scenes: a different seed from the training scenes
NEW_SCENES_SEED = 4321

RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    folder, scenes, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "remote":
        sys.modules["vlm_hf"] = None  # only the saved folder's code may be used
    else:
        import vlm_hf  # registers the classes with the Auto classes
    import torch
    from PIL import Image
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
    remote = mode == "remote"
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=remote).eval()
    questions = json.load(open(f"{scenes}/questions.json"))
    images = [Image.open(f"{scenes}/{i}.png") for i in range(len(questions))]
    with torch.no_grad():
        logits = model(**processor(images=images, text=questions)).logits
    answers = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    json.dump({"module": type(model).__module__, "answers": answers}, open(f"{scenes}/answers_{mode}.json", "w"))
    """
)


def stage(number: int, text: str) -> None:
    print(f"\n[{number}/7] {text}", flush=True)


def trainer_flags(args, output_dir: Path, steps: int, learning_rate: float) -> list[str]:
    return [
        "--output_dir",
        str(output_dir),
        "--num_train_images",
        str(args.train_images),
        "--image_size",
        str(args.image_size),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--learning_rate",
        str(learning_rate),
        "--warmup_steps",
        str(max(1, steps // 10)),
        "--lr_scheduler_type",
        "cosine",
        "--weight_decay",
        "0.01",
        "--logging_steps",
        str(max(1, steps // 10)),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "false",  # progress bars, although transformers' logging is quieted below
        "--dataloader_pin_memory",
        "false",  # CPU only
        "--seed",
        "0",
    ]


def new_model_flags(args) -> list[str]:
    """The architecture of the demo's new model: a ResNet-18 (up to `--vision-feature-layer`) pooled to a
    `--visual-grid` grid of visual tokens, under a small Transformer without dropout (the scenes are plentiful)."""
    return [
        "--vision_backbone",
        "resnet18",
        "--vision_feature_layer",
        args.vision_feature_layer,
        "--visual_grid",
        str(args.visual_grid),
        "--hidden_size",
        str(args.hidden_size),
        "--num_hidden_layers",
        str(args.num_layers),
        "--num_attention_heads",
        str(args.num_heads),
        "--visual_embedding_type",
        args.visual_embedding_type,
        "--initializer_range",
        str(args.initializer_range),
        "--hidden_dropout_prob",
        "0",
        "--attention_probs_dropout_prob",
        "0",
    ]


def reload_and_answer(folder: Path, scenes: Path, mode: str) -> dict:
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder), str(scenes), mode], check=True)
    return json.loads((scenes / f"answers_{mode}.json").read_text())


def save_scenes(rows: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        row["image"].save(folder / f"{index}.png")
    (folder / "questions.json").write_text(json.dumps([list(row["questions"]) for row in rows]))


def draw_answers(scenes, answers: list[str], path: Path) -> None:
    """A picture of the new scenes, each with its questions and the model's answers underneath (green when right,
    red when wrong), wrapped to the picture's width."""
    from PIL import Image, ImageDraw

    side, line_height, characters = 256, 14, 40  # PIL's default font is about 6 pixels a character
    answer_iter = iter(answers)
    panels = []
    for row in scenes:
        panel = []
        for question, truth in zip(row["questions"], row["answers"], strict=True):
            answer = next(answer_iter)
            colour = "darkgreen" if answer in truth else "red"
            panel += [(line, colour) for line in textwrap.wrap(f"{question} -> {answer}", characters)]
        panels.append(panel)
    text_height = line_height * max(map(len, panels)) + 8
    sheet = Image.new("RGB", (side * len(scenes), side + text_height), "white")
    draw = ImageDraw.Draw(sheet)
    for column, (row, panel) in enumerate(zip(scenes, panels, strict=True)):
        sheet.paste(row["image"].resize((side, side)), (column * side, 0))
        for line_number, (line, colour) in enumerate(panel):
            draw.text((column * side + 4, side + 4 + line_height * line_number), line, fill=colour)
    sheet.save(path)


def card_results(result: dict) -> list[dict]:
    """Held-out accuracy, overall and per question type, as model-index entries of the model card."""
    common = {
        "task_type": "visual-question-answering",
        "dataset_type": "synthetic-scenes",
        "dataset_name": f"vlm_hf synthetic scenes (seed {EVAL_SEED}, held out)",
        "metric_type": "accuracy",
    }
    overall = [{**common, "metric_name": "VQA accuracy", "metric_value": round(result["accuracy"], 4)}]
    return overall + [
        {**common, "metric_name": f"VQA accuracy ({kind})", "metric_config": kind, "metric_value": round(value, 4)}
        for kind, value in result["per_type"].items()
    ]


def print_table(result: dict, baseline: dict, seconds: float) -> None:
    print(f"\n{'question type':15s} {'model':>8s} {'question only':>14s}")
    for question_type in result["per_type"]:
        print(
            f"{question_type:15s} {result['per_type'][question_type]:8.1%} "
            f"{baseline['per_type'].get(question_type, 0):14.1%}"
        )
    print(f"{'overall':15s} {result['accuracy']:8.1%} {baseline['accuracy']:14.1%}")
    print(f"({result['num_questions']} held-out questions; training took {seconds / 60:.1f} min)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (each with all its questions)")
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--caption-steps", type=int, default=CAPTION_STEPS, help="caption fine-tuning steps")
    parser.add_argument("--vision-feature-layer", default="layer2", help="ResNet-18 stage that gives the grid")
    parser.add_argument(
        "--visual-grid", type=int, default=3, help="visual tokens per side (3: one per cell of the scenes' layout)"
    )
    parser.add_argument(
        "--freeze-vision",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the backbone that region classification trained fixed while fine-tuning VQA",
    )
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument(
        "--visual-embedding-type",
        default="uniter",
        choices=["default", "uniter"],
        help="uniter: grid features and cell boxes each normalised before they are added, so the cell's place "
        "weighs as much as what it shows (position questions need it)",
    )
    parser.add_argument(
        "--initializer-range",
        type=float,
        default=0.1,
        help="std of the new Transformer's weights: about 1/sqrt(hidden size), as BERT's 0.02 is for 768 and far too "
        "small for a narrow model to learn in minutes",
    )
    parser.add_argument("--new-scenes", type=int, default=4)
    args = parser.parse_args(argv)

    from transformers import AutoProcessor
    from transformers.utils import logging as transformers_logging

    from .data import generate_synthetic_dataset
    from .evaluation import evaluate_vqa, question_only_baseline
    from .model_card import update_model_card
    from .modeling_vlm_hf import VlmHfForQuestionAnswering
    from .training import finetune, pretrain

    transformers_logging.set_verbosity_error()  # the stages below say what happens
    start = time.time()
    stage(
        1,
        f"Generating {args.train_images} training and {args.eval_images} held-out scenes "
        f"({args.image_size}x{args.image_size}, 1-3 shapes, 5 questions and 3 captions each).",
    )
    train_scenes = generate_synthetic_dataset(args.train_images, seed=0, image_size=args.image_size)
    held_out = generate_synthetic_dataset(args.eval_images, seed=EVAL_SEED, image_size=args.image_size)
    print(f"  e.g. {train_scenes[0]['captions'][0]!r} / {train_scenes[0]['questions'][0]!r}")

    pretrained, model_dir = args.output_dir / "pretrained", args.output_dir / "model"
    stage(
        2,
        f"Pretraining a new model for {args.pretrain_steps} steps "
        "(masked LM + image-text matching + masked visual features + region classification).",
    )
    training_start = time.time()
    pretrain(
        [
            *trainer_flags(args, pretrained, args.pretrain_steps, args.learning_rate),
            *new_model_flags(args),
            "--region_classification",
            "all",  # the grid cells learn which object they show, from the scenes' object boxes
        ]
    )

    stage(3, f"Fine-tuning visual question answering for {args.finetune_steps} steps from the pretrained model.")
    finetune(
        "vqa",
        [
            *trainer_flags(args, model_dir, args.finetune_steps, args.learning_rate),
            "--model_name_or_path",
            str(pretrained),
            "--freeze_vision",
            str(args.freeze_vision),
        ],
    )
    training_seconds = time.time() - training_start

    stage(4, "Evaluating on the held-out scenes, beside the best question-only baseline.")
    model = VlmHfForQuestionAnswering.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    result = evaluate_vqa(model, processor, held_out)
    baseline = question_only_baseline(train_scenes, held_out)
    print_table(result, baseline, training_seconds)
    update_model_card(model_dir, eval_results=card_results(result))

    stage(
        5,
        f"Fine-tuning caption generation for {args.caption_steps} steps from the pretrained model, then captioning "
        "the held-out scenes.",
    )
    caption_dir = args.output_dir / "captioning"
    captions = caption_stage(
        pretrained,
        caption_dir,
        held_out,
        args.caption_steps,
        trainer_flags(args, caption_dir, args.caption_steps, CAPTION_LEARNING_RATE),
    )
    print_captions(captions)
    results = {"model": result, "question_only": baseline, "captioning": captions}
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))

    stage(
        6,
        "Reloading the saved folder in new processes with AutoProcessor / AutoModelForVisualQuestionAnswering "
        "(with vlm_hf installed, and with trust_remote_code only), on new scenes.",
    )
    new_scenes = generate_synthetic_dataset(args.new_scenes, seed=NEW_SCENES_SEED, image_size=args.image_size)
    rows = [new_scenes[i] for i in range(len(new_scenes))]
    scenes_dir = args.output_dir / "new_scenes"
    save_scenes(rows, scenes_dir)
    answers = {mode: reload_and_answer(model_dir, scenes_dir, mode) for mode in ("package", "remote")}
    for mode, reply in answers.items():
        print(f"  [{mode}] loaded from {reply['module']}")
    same = answers["package"]["answers"] == answers["remote"]["answers"]
    print(f"  both give the same answers: {same}")

    stage(7, "Answers about the new scenes:")
    predicted = iter(answers["package"]["answers"])
    for index, row in enumerate(rows):
        for question, truth in zip(row["questions"], row["answers"], strict=True):
            answer = next(predicted)
            print(f"  scene {index}: {question:55s} -> {answer:8s} ({'right' if answer == truth[0] else 'wrong'})")
    picture = args.output_dir / "new_scenes.png"
    draw_answers(rows, answers["package"]["answers"], picture)
    print(
        f"\nDone in {(time.time() - start) / 60:.1f} min. Model: {model_dir}/  Picture: {picture}  "
        f"Results: {args.output_dir / 'results.json'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
