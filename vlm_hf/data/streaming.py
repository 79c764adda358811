"""Image-text pairs from parquet or WebDataset shards, streamed for corpora larger than a disk.

`load_image_text_pairs` reads local paths, globs or URLs through `datasets.load_dataset(..., streaming=True)` and
yields rows of the synthetic generator's schema, one caption per row. Under DDP each process reads its own part
(`datasets.distributed.split_dataset_by_node`); `ProcessPart` keeps Accelerate from splitting that part again.
"""

import datasets
import torch

from .synthetic import FEATURES

FORMATS = ("parquet", "webdataset")
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image")  # WebDataset file extensions, then the usual parquet name
CAPTION_COLUMNS = ("txt", "caption", "text", "captions")
ID_COLUMNS = ("image_id", "__key__", "key", "id")  # what names the image first


def pick_column(columns: list[str], wanted: str | None, defaults: tuple[str, ...], argument: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{argument} {wanted!r} is not a column of the shards; they have {columns}")
        return wanted
    for name in defaults:
        if name in columns:
            return name
    raise ValueError(f"the shards have none of the {argument} defaults {list(defaults)}; pass {argument} ({columns})")


def as_captions(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def load_image_text_pairs(
    data_files: str | list[str],
    format: str = "parquet",
    streaming: bool = True,
    image_column: str | None = None,
    caption_column: str | None = None,
    cache_dir: str | None = None,
) -> datasets.IterableDataset | datasets.Dataset:
    """
    Image-text pairs from parquet or WebDataset (`.tar`) shards: local paths, globs or URLs.

    Columns: the image is `image_column` (default: the first of `jpg`, `jpeg`, `png`, `webp`, `image`), the text
    `caption_column` (default: `txt`, `caption`, `text` or `captions`; a list gives several captions). Pairs
    without text are skipped. Images stay encoded until a row is read. With `streaming=False` the shards are
    converted to a cached `datasets.Dataset` first (random access, a length).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    files = [data_files] if isinstance(data_files, str) else list(data_files)
    if not files:
        raise ValueError("data_files is empty: pass shard paths, globs or URLs")
    pairs = datasets.load_dataset(format, data_files=files, split="train", streaming=streaming, cache_dir=cache_dir)
    columns = list(pairs.column_names or [])
    image_column = pick_column(columns, image_column, IMAGE_COLUMNS, "image_column")
    caption_column = pick_column(columns, caption_column, CAPTION_COLUMNS, "caption_column")
    id_column = next((name for name in ID_COLUMNS if name in columns), None)
    # Undecoded, so that filtering and renaming move bytes; the Image feature of FEATURES decodes at the end.
    pairs = pairs.cast_column(image_column, datasets.Image(decode=False))
    pairs = pairs.filter(lambda text: bool(as_captions(text)), input_columns=[caption_column])

    def to_row(example: dict) -> dict:
        return {
            "image": example[image_column],
            "image_id": "" if id_column is None else str(example[id_column]),
            "captions": as_captions(example[caption_column]),
            "questions": [],
            "question_types": [],
            "answers": [],
            "answer_scores": [],
        }

    # Cast after mapping: a stream applies the cast's Image feature (decoding) as each row is read.
    return pairs.map(to_row, remove_columns=columns).cast(FEATURES)


class ProcessPart(torch.utils.data.IterableDataset):
    """
    This process's part of a stream (already split with `split_dataset_by_node`). Given to the Trainer, it hides the
    stream from Accelerate's own handling of `datasets.IterableDataset` (which would shard it again); the Trainer of
    `vlm_hf.training` then turns Accelerate's batch-level split into a pass-through.
    """

    def __init__(self, dataset: datasets.IterableDataset):
        self.dataset = dataset

    def __iter__(self):
        return iter(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)  # a shuffled stream reshuffles each epoch
