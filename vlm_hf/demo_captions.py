"""The demo's captioning stage: fine-tune `VlmHfForConditionalGeneration` from the pretrained folder (teacher forcing
on the scenes' captions), then caption the held-out scenes and score them with coco-caption's metrics (CIDEr-D,
BLEU-4, ROUGE-L)."""

from pathlib import Path

# Measured on the demo's default scenes with one thread: 1000 steps train in about 1.5 min and reach CIDEr-D 3.3 on the
# held-out scenes (greedy; 2000 steps: 4.0, in twice the time).
CAPTION_STEPS = 1000
CAPTION_LEARNING_RATE = 1e-3
# Greedy decoding writes the listing of the objects, the caption that says the most. Beam search finds the most
# probable caption instead, the short count sentence ("two objects in the picture."), which scores a higher CIDEr-D
# (its n-grams recur among the references) but says nothing of the objects.
NUM_BEAMS = 1
MAX_NEW_TOKENS = 20  # the longest scene caption (three objects listed) is 16 tokens with its [SEP]


def caption_stage(
    pretrained: Path,
    output_dir: Path,
    held_out,
    steps: int,
    trainer_flags: list[str],
    num_beams: int = NUM_BEAMS,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """
    Fine-tune captioning from the `pretrained` folder for `steps` steps into `output_dir`, with the demo's common
    Trainer flags (`trainer_flags`; the `output_dir` and `steps` given here take precedence over any in them), then
    caption the `held_out` scenes and score them against their reference captions (METEOR left out: its Java
    start-up is slow). Returns `evaluate_captioning`'s dict: BLEU-1..4, CIDEr-D, ROUGE-L, `num_images`, `samples`.

    The vision backbone stays fixed, as in the demo's VQA stage: region classification trained it to tell what each
    grid cell shows, and without its backward pass a step costs less.
    """
    from transformers import AutoProcessor

    from .evaluation import evaluate_captioning
    from .modeling_vlm_hf import VlmHfForConditionalGeneration
    from .training import finetune

    if not Path(pretrained, "config.json").is_file():
        raise ValueError(f"pretrained: {str(pretrained)!r} is not a saved vlm_hf folder (no config.json)")
    if steps < 1:
        raise ValueError(f"steps must be a positive number of training steps, got {steps}")
    finetune(
        "captioning",
        [
            *trainer_flags,
            # argparse keeps the last value of a repeated flag: these win over the common flags.
            "--output_dir",
            str(output_dir),
            "--max_steps",
            str(steps),
            "--model_name_or_path",
            str(pretrained),
            "--freeze_vision",
            "true",
        ],
    )
    model = VlmHfForConditionalGeneration.from_pretrained(output_dir)
    processor = AutoProcessor.from_pretrained(output_dir)
    return evaluate_captioning(
        model, processor, held_out, max_new_tokens=max_new_tokens, num_beams=num_beams, meteor=False
    )


def print_captions(result: dict, num_samples: int = 3) -> None:
    """The scores in plain words, then a few generated captions, each beside one of the scene's reference captions."""
    print(
        f"  On {result['num_images']} held-out scenes: CIDEr-D {result['CIDEr-D']:.2f}, BLEU-4 {result['BLEU-4']:.2f}, "
        f"ROUGE-L {result['ROUGE-L']:.2f}\n"
        "  (how well the generated captions agree with each scene's three reference captions; CIDEr-D weighs most the "
        "words that tell scenes apart, such as the objects' colours and shapes)"
    )
    for index, sample in enumerate(result["samples"][:num_samples]):
        print(f"  scene {index}: generated {sample['generated']!r}")
        print(f"  {' ' * len(f'scene {index}:')} reference {sample['references'][0]!r}")
