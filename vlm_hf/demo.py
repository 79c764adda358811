"""The main job (`make demo`): train a WordPiece tokenizer on generated questions, build a small VQA model and its
processor, run them on generated scenes, save both, and show that new processes reload them through the Auto classes
(with the package, and with `trust_remote_code` alone) and give identical outputs."""

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

SHAPES = ("circle", "square")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}


def generate_scene(rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, str, str]:
    """A grey canvas with one coloured shape; returns the image, its shape and its colour."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    image = Image.new("RGB", (size, size), (128, 128, 128))
    cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
    radius = size // 6
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image, shape, colour


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "remote":
        sys.modules["vlm_hf"] = None  # prove the folder's own code is enough
    else:
        import vlm_hf  # registers the classes with the Auto classes
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
    remote = mode == "remote"
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=remote).eval()
    images = [Image.open(f"{folder}/scenes/{i}.png") for i in range(int(sys.argv[3]))]
    questions = open(f"{folder}/scenes/questions.txt").read().splitlines()
    with torch.no_grad():
        logits = model(**processor(images=images, text=questions)).logits
    save_file({"logits": logits}, f"{folder}/reloaded_{mode}.safetensors")
    print(f"  [{mode}] {type(processor).__name__} + {type(model).__name__} from {type(model).__module__}")
    """
)


def reload_in_new_process(folder: Path, mode: str, num_scenes: int) -> torch.Tensor:
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder), mode, str(num_scenes)], check=True)
    return load_file(folder / f"reloaded_{mode}.safetensors")["logits"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="demo_output", help="where the model is saved (default: demo_output)")
    parser.add_argument("--num-scenes", type=int, default=6)
    args = parser.parse_args(argv)

    from transformers import AutoModelForVisualQuestionAnswering

    from vlm_hf import VlmHfConfig, VlmHfImageProcessor, VlmHfProcessor, train_wordpiece_tokenizer

    start = time.time()
    rng = np.random.default_rng(0)
    scenes = [generate_scene(rng) for _ in range(args.num_scenes)]
    questions = [f"what colour is the {shape}?" for _, shape, _ in scenes]
    print(f"1. Generated {len(scenes)} scenes (128x128) with questions, e.g. {questions[0]!r}.")

    corpus = [f"what colour is the {s}?" for s in SHAPES] + [f"is the {s} {c}?" for s in SHAPES for c in COLOURS]
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=200, min_frequency=1)
    processor = VlmHfProcessor(VlmHfImageProcessor(), tokenizer)
    print(f"2. Trained a {len(tokenizer)}-token WordPiece tokenizer; processor ready.")

    labels = sorted(COLOURS)
    config = VlmHfConfig(
        vision_backbone="resnet18",
        hidden_size=256,
        num_hidden_layers=4,
        vocab_size=len(tokenizer),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = AutoModelForVisualQuestionAnswering.from_config(config).eval()
    print(
        f"3. Built {type(model).__name__}: {model.num_parameters() / 1e6:.1f}M parameters, {config.vision_backbone} "
        f"grid of {config.num_visual_tokens} visual tokens, {config.num_hidden_layers} layers."
    )

    inputs = processor(images=[image for image, _, _ in scenes], text=questions)
    answers = torch.tensor([labels.index(colour) for _, _, colour in scenes])
    with torch.no_grad():
        out = model(**inputs, labels=answers)
    predicted = [config.id2label[i] for i in out.logits.argmax(-1).tolist()]
    print(f"4. Forward pass: loss {out.loss.item():.4f}; untrained answers {predicted}.")

    folder = Path(args.output_dir)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "scenes").mkdir(exist_ok=True)
    for i, (image, _, _) in enumerate(scenes):
        image.save(folder / "scenes" / f"{i}.png")
    (folder / "scenes" / "questions.txt").write_text("\n".join(questions))
    print(f"5. Saved model and processor to {folder}/: {', '.join(sorted(p.name for p in folder.glob('*.*')))}.")

    print("6. Reloading in new processes with AutoProcessor / AutoModelForVisualQuestionAnswering.from_pretrained:")
    all_match = True
    for mode in ("package", "remote"):
        reloaded = reload_in_new_process(folder, mode, len(scenes))
        difference = (reloaded - out.logits).abs().max().item()
        all_match &= torch.equal(reloaded, out.logits)
        print(f"  [{mode}] max |logits difference| = {difference:.3g}")
    verdict = "OK: outputs match exactly" if all_match else "MISMATCH: outputs differ"
    print(f"{verdict} ({time.time() - start:.1f}s).")
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
