"""Caption generation tokens/s with the key-value cache against a full recompute at every step.

`VlmHfForConditionalGeneration` (ResNet-18 pooled to a 4x4 grid at 128x128, 4 layers, hidden 256, BERT-size
vocabulary) generates 32 new tokens greedily for a batch of synthetic scenes, half of them captioned (empty prompt)
and half answering a question (prompts of different lengths, left-padded), once with `use_cache=True` (the image and
the prompt are encoded once, each new token is one step over the cache) and once with `use_cache=False` (every step
runs the backbone and the Transformer over the whole sequence). `min_new_tokens` keeps [SEP] from ending either run
early. Prints tokens/s of each and the ratio, and checks that both runs produce the same text. Run with
`make bench` or `python benchmarks/bench_generation.py`.
"""

import argparse

import torch
from timing import SCENE_MODEL, compare, scenes_and_processor

from vlm_hf import VlmHfConfig, VlmHfForConditionalGeneration


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows, processor = scenes_and_processor(args.images, lambda row: [*row["captions"], *row["questions"]])
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    prompts = ["" if i % 2 == 0 else row["questions"][0] for i, row in enumerate(rows)]
    inputs = processor(images=[row["image"] for row in rows], text=prompts)

    torch.manual_seed(0)
    config = VlmHfConfig(
        **SCENE_MODEL,
        vocab_size=30522,  # BERT's: the language-model head's cost per token as in a real model
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.2,  # spread-out logits, so that greedy choices are no rounding-level ties
    )
    model = VlmHfForConditionalGeneration(config).eval()
    settings = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    outputs = {}

    def run(use_cache):
        def generate():
            outputs[use_cache] = model.generate(**inputs, **settings, use_cache=use_cache)

        return generate

    cached_s, uncached_s = compare(run(True), run(False), args.rounds)
    prompt_length = inputs["input_ids"].shape[1]
    texts = {key: processor.batch_decode(tokens[:, prompt_length:]) for key, tokens in outputs.items()}
    assert all(len(tokens) - prompt_length == args.new_tokens for tokens in outputs[True]), "a run stopped early"
    assert texts[True] == texts[False], "the cached and the recomputed runs generated different text"

    new_tokens = args.images * args.new_tokens
    print(
        f"{args.images} prompts x {args.new_tokens} new tokens (128x128, ResNet-18 4x4 grid, 4 layers, hidden 256, "
        f"vocabulary {config.vocab_size}), greedy, {torch.get_num_threads()} torch thread(s)"
    )
    print(f"{'generation':28s} {'tokens/s':>10s}")
    print(f"{'use_cache=True':28s} {new_tokens / cached_s:10.1f}")
    print(f"{'use_cache=False':28s} {new_tokens / uncached_s:10.1f}")
    print(f"speed-up of the cache: {uncached_s / cached_s:.2f}x (same text: {texts[True] == texts[False]})")


if __name__ == "__main__":
    main()
