"""Image-processor throughput: VlmHfImageProcessor against transformers' ViltImageProcessor.

32 generated 640x480 PIL images go through each processor in one process; prints images/s of each (median of
alternating rounds) and the ratio vlm_hf / ViLT, both with vlm_hf's defaults (shortest edge 256, center crop 224) and
with vlm_hf set up for the same work as ViLT (shortest edge 384, padded batch with a pixel mask).
Run with `make bench` or `python benchmarks/bench_image_processor.py`.
"""

import argparse

import numpy as np
from PIL import Image
from timing import compare
from transformers import ViltImageProcessor

from vlm_hf import VlmHfImageProcessor


def generated_images(count: int, width: int = 640, height: int = 480) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    images = generated_images(args.images)
    vilt = ViltImageProcessor()
    setups = {
        "vlm_hf defaults (256 -> crop 224)": VlmHfImageProcessor(),
        "vlm_hf like ViLT (384, padded)": VlmHfImageProcessor(
            size={"shortest_edge": 384}, do_center_crop=False, do_pad=True
        ),
    }
    reference_shape = tuple(vilt(images, return_tensors="pt").pixel_values.shape)
    print(f"{args.images} images of 640x480; ViLT output {reference_shape}")
    print(f"{'setup':36s} {'vlm_hf images/s':>16s} {'ViLT images/s':>14s} {'ratio':>7s}")
    for name, processor in setups.items():
        ours_s, theirs_s = compare(
            lambda p=processor: p(images, return_tensors="pt"), lambda: vilt(images, return_tensors="pt"), args.rounds
        )
        print(f"{name:36s} {args.images / ours_s:16.1f} {args.images / theirs_s:14.1f} {theirs_s / ours_s:6.2f}x")


if __name__ == "__main__":
    main()
