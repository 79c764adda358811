"""VQA training samples/s with image-grouped batches against one image copy per question.

A batch of 8 synthetic scenes with all their questions (about 5 each) trains a ResNet-18 + 4-layer model, once with
each image passed once and `image_index` pointing every question at it (what `VqaCollator` does), once with the
image repeated for every question (what an ungrouped, one-row-per-question dataset gives). Prints questions/s of each
and the ratio. Run with `make bench` or `python benchmarks/bench_grouping.py`.
"""

import argparse

import torch
from timing import SCENE_MODEL, compare, scenes_and_processor

from vlm_hf import VlmHfConfig, VlmHfForQuestionAnswering
from vlm_hf.data import VqaCollator, answer_vocabulary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    rows, processor = scenes_and_processor(args.images, lambda row: row["questions"])
    labels = answer_vocabulary()
    grouped = VqaCollator(processor, {a: i for i, a in enumerate(labels)})(rows)
    ungrouped = {key: value for key, value in grouped.items() if key != "image_index"}
    ungrouped["pixel_values"] = grouped["pixel_values"][grouped["image_index"]]
    num_questions = len(grouped["labels"])

    torch.manual_seed(0)
    config = VlmHfConfig(**SCENE_MODEL, vocab_size=len(processor.tokenizer), num_labels=len(labels))
    model = VlmHfForQuestionAnswering(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        def run():
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    grouped_s, ungrouped_s = compare(step(grouped), step(ungrouped), args.rounds)
    print(f"{args.images} images, {num_questions} questions per step (128x128, ResNet-18, 4 layers, hidden 256)")
    print(f"{'batches':28s} {'questions/s':>12s}")
    print(f"{'image-grouped (image_index)':28s} {num_questions / grouped_s:12.1f}")
    print(f"{'one image per question':28s} {num_questions / ungrouped_s:12.1f}")
    print(f"speed-up of grouping: {ungrouped_s / grouped_s:.2f}x")


if __name__ == "__main__":
    main()
