"""Shared helpers of the benchmarks: timing, and the synthetic scenes and model size the scene benchmarks use."""

import statistics
import time
from collections.abc import Callable

from vlm_hf import VlmHfImageProcessor, VlmHfProcessor
from vlm_hf.data import generate_synthetic_dataset
from vlm_hf.tokenization import train_wordpiece_tokenizer

SCENE_SIDE = 128
# The model the scene benchmarks time: ResNet-18 pooled to a 4x4 grid, 4 layers, hidden 256.
SCENE_MODEL = dict(vision_backbone="resnet18", hidden_size=256, num_hidden_layers=4, visual_grid=4)


def scenes_and_processor(num_images: int, texts_of) -> tuple[list[dict], VlmHfProcessor]:
    """`num_images` synthetic 128x128 scenes (seed 0) and a processor whose WordPiece vocabulary is trained on the
    texts `texts_of(row)` gives for each scene."""
    scenes = generate_synthetic_dataset(num_images, seed=0, image_size=SCENE_SIDE)
    rows = [scenes[i] for i in range(len(scenes))]
    corpus = [text for row in rows for text in texts_of(row)]
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=300, min_frequency=1)
    crop = {"height": SCENE_SIDE, "width": SCENE_SIDE}
    image_processor = VlmHfImageProcessor(size={"shortest_edge": SCENE_SIDE}, crop_size=crop)
    return rows, VlmHfProcessor(image_processor, tokenizer)


def compare(ours: Callable[[], object], theirs: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of each callable, timed in alternating order so that drift in machine speed hits both alike."""
    ours(), theirs()  # warm-up
    times = {ours: [], theirs: []}
    for round_index in range(rounds):
        for fn in (ours, theirs) if round_index % 2 == 0 else (theirs, ours):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[ours]), statistics.median(times[theirs])
