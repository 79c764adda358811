"""The main job (`make demo`): build a small VQA model, run it on generated scenes and questions, save it, and show
that a new process reloads it through the Auto classes (with the package, and with `trust_remote_code` alone) with
identical outputs."""

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHAPES = ("circle", "square")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def generate_scene(generator: torch.Generator, size: int = 128) -> tuple[torch.Tensor, str, str]:
    """A grey canvas with one coloured shape; returns the image (3, H, W) in [0, 1], its shape and colour."""
    shape = SHAPES[int(torch.randint(len(SHAPES), (1,), generator=generator))]
    colour = list(COLOURS)[int(torch.randint(len(COLOURS), (1,), generator=generator))]
    image = torch.full((3, size, size), 0.5)
    cx, cy = (torch.randint(size // 4, 3 * size // 4, (2,), generator=generator)).tolist()
    radius = size // 6
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    else:
        inside = ((xs - cx).abs() <= radius) & ((ys - cy).abs() <= radius)
    image[:, inside] = torch.tensor(COLOURS[colour], dtype=torch.float32).unsqueeze(1) / 255
    return image, shape, colour


def build_batch(num_scenes: int, seed: int = 0):
    """Images, questions as token ids (a word-level vocabulary of the generated text) and the answers."""
    generator = torch.Generator().manual_seed(seed)
    scenes = [generate_scene(generator) for _ in range(num_scenes)]
    questions = [f"what colour is the {shape} ?" for _, shape, _ in scenes]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w for q in questions for w in q.split()} | set(SHAPES)):
        vocab.setdefault(word, len(vocab))
    ids = [[vocab["[CLS]"], *(vocab[w] for w in q.split()), vocab["[SEP]"]] for q in questions]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = (torch.stack([image for image, _, _ in scenes]) - mean[:, None, None]) / std[:, None, None]
    inputs = {
        "pixel_values": pixels,
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long),
    }
    answers = [colour for _, _, colour in scenes]
    return inputs, questions, answers, len(vocab)


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "remote":
        sys.modules["vlm_hf"] = None  # prove the folder's own code is enough
    else:
        import vlm_hf  # registers the classes with the Auto classes
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForVisualQuestionAnswering
    model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=(mode == "remote")).eval()
    with torch.no_grad():
        logits = model(**load_file(folder + "/demo_inputs.safetensors")).logits
    save_file({"logits": logits}, f"{folder}/reloaded_{mode}.safetensors")
    print(f"  [{mode}] loaded {type(model).__name__} from {type(model).__module__}")
    """
)


def reload_in_new_process(folder: Path, mode: str) -> torch.Tensor:
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder), mode], check=True)
    return load_file(folder / f"reloaded_{mode}.safetensors")["logits"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="demo_output", help="where the model is saved (default: demo_output)")
    parser.add_argument("--num-scenes", type=int, default=6)
    args = parser.parse_args(argv)

    from transformers import AutoModelForVisualQuestionAnswering

    from vlm_hf import VlmHfConfig

    start = time.time()
    inputs, questions, answers, vocab_size = build_batch(args.num_scenes)
    print(f"1. Generated {len(questions)} scenes (128x128) and questions, e.g. {questions[0]!r}.")

    labels = sorted(COLOURS)
    config = VlmHfConfig(
        vision_backbone="resnet18",
        hidden_size=256,
        num_hidden_layers=4,
        vocab_size=vocab_size,
        max_position_embeddings=32,
        visual_grid=4,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = AutoModelForVisualQuestionAnswering.from_config(config).eval()
    print(
        f"2. Built {type(model).__name__}: {model.num_parameters() / 1e6:.1f}M parameters, "
        f"{config.vision_backbone} grid of {config.num_visual_tokens} visual tokens, {config.num_hidden_layers} layers."
    )

    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([labels.index(a) for a in answers]))
    predicted = [config.id2label[i] for i in out.logits.argmax(-1).tolist()]
    print(f"3. Forward pass: loss {out.loss.item():.4f}; untrained answers {predicted}.")

    folder = Path(args.output_dir)
    model.save_pretrained(folder)
    save_file(inputs, folder / "demo_inputs.safetensors")
    print(f"4. Saved to {folder}/: {', '.join(sorted(p.name for p in folder.iterdir()))}.")

    print("5. Reloading in new processes with AutoModelForVisualQuestionAnswering.from_pretrained:")
    all_match = True
    for mode in ("package", "remote"):
        reloaded = reload_in_new_process(folder, mode)
        difference = (reloaded - out.logits).abs().max().item()
        all_match &= torch.equal(reloaded, out.logits)
        print(f"  [{mode}] max |logits difference| = {difference:.3g}")
    print(
        f"{'OK' if all_match else 'MISMATCH'}: outputs {'match exactly' if all_match else 'differ'} "
        f"({time.time() - start:.1f}s)."
    )
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
