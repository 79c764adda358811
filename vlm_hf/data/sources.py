"""`--dataset` and its file arguments, shared by `vlm-hf pretrain`, `vlm-hf finetune` and `vlm-hf evaluate`.

`check_data_arguments` validates them up front (ValueErrors that name the flag), `load_data` reads the chosen
dataset (anything but the synthetic scenes, which the commands generate themselves) and `arrange_rows` applies
`--group_by_image`.
"""

import glob
import os
from dataclasses import dataclass, field
from typing import Literal

import datasets

from .loaders import KARPATHY_SPLITS, load_coco_captions, load_imagefolder, load_karpathy, load_vqa_v2, one_per_row
from .streaming import load_image_text_pairs
from .vqa_answers import has_answers

DATASETS = ("synthetic", "coco_captions", "vqa_v2", "karpathy", "imagefolder", "parquet", "webdataset")
TASKS = ("pretrain", "vqa", "retrieval", "captioning")
# What each dataset needs, and every file argument it may use.
REQUIRED = {
    "coco_captions": ("captions_file", "image_dir"),
    "vqa_v2": ("questions_file", "image_dir"),
    "karpathy": ("karpathy_file", "image_dir"),
    "imagefolder": ("image_dir",),
    "parquet": ("data_files",),
    "webdataset": ("data_files",),
}
USED = {**REQUIRED, "vqa_v2": ("questions_file", "image_dir", "annotations_file", "image_pattern")}
SOURCE_ARGUMENTS = tuple(dict.fromkeys(flag for flags in USED.values() for flag in flags))
WITH_QUESTIONS = ("synthetic", "vqa_v2", "imagefolder")
WITH_CAPTIONS = ("synthetic", "coco_captions", "karpathy", "imagefolder", "parquet", "webdataset")


@dataclass
class DataSourceArguments:
    """Where the data comes from. Every file argument is checked before anything is written."""

    dataset: Literal[DATASETS] = field(
        default="synthetic",
        metadata={
            "help": "synthetic (generated scenes), coco_captions (--captions_file, --image_dir), vqa_v2 "
            "(--questions_file [--annotations_file], --image_dir), karpathy (--karpathy_file, --image_dir, --split), "
            "imagefolder (--image_dir with metadata.jsonl), parquet or webdataset (--data_files [--streaming])"
        },
    )
    image_dir: str | None = field(
        default=None, metadata={"help": "the images; for imagefolder the folder with metadata.jsonl"}
    )
    captions_file: str | None = field(default=None, metadata={"help": "COCO captions_*.json"})
    questions_file: str | None = field(default=None, metadata={"help": "VQA v2 questions JSON"})
    annotations_file: str | None = field(
        default=None, metadata={"help": "VQA v2 annotations JSON (the answers); none for a test split"}
    )
    image_pattern: str | None = field(
        default=None,
        metadata={
            "help": "VQA v2 image file names from {image_id} and {split}; default COCO_{split}_{image_id:012d}.jpg"
        },
    )
    question_type_field: Literal["answer_type", "question_type"] = field(
        default="answer_type", metadata={"help": "VQA v2 annotation field reported as the question type"}
    )
    normalize_answers: bool = field(
        default=True, metadata={"help": "official VQA answer normalisation (vqa_v2 and imagefolder answers)"}
    )
    max_answers: int = field(default=3129, metadata={"help": "most VQA labels, the most frequent training answers"})
    min_answer_count: int = field(
        default=1, metadata={"help": "training questions an answer must be the best answer of to become a label"}
    )
    karpathy_file: str | None = field(default=None, metadata={"help": "dataset_coco.json / dataset_flickr30k.json"})
    split: str | None = field(
        default=None,
        metadata={
            "help": "karpathy (train, val, test, restval) or imagefolder split; default train (test to evaluate)"
        },
    )
    include_restval: bool = field(default=True, metadata={"help": "karpathy train split includes restval"})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "parquet or WebDataset .tar shards: paths, globs or URLs"}
    )
    streaming: bool = field(default=False, metadata={"help": "stream the shards (needs --max_steps to train)"})
    image_column: str | None = field(
        default=None, metadata={"help": "shards' image column (default: jpg, jpeg, png, webp or image)"}
    )
    caption_column: str | None = field(
        default=None, metadata={"help": "shards' text column (default: txt, caption, text or captions)"}
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "streamed pairs shuffled in a buffer; 0: off"})
    group_by_image: bool = field(
        default=True,
        metadata={"help": "rows of an image with all its questions/captions; false: one question (or caption) per row"},
    )


def is_remote(path: str) -> bool:
    return "://" in path


def check_file_argument(flag: str, value: str) -> None:
    if not os.path.isfile(value):
        raise ValueError(f"--{flag} {value!r}: no such file")


def check_data_files(patterns: list[str]) -> None:
    for pattern in patterns:
        if is_remote(pattern):
            continue
        if glob.has_magic(pattern) and not glob.glob(pattern, recursive=True):
            raise ValueError(f"--data_files {pattern!r} matches no file")
        if not glob.has_magic(pattern) and not os.path.isfile(pattern):
            raise ValueError(f"--data_files {pattern!r}: no such file")


def check_data_arguments(args: DataSourceArguments, task: str, max_steps: int | None = None) -> None:
    """
    Raise a ValueError naming the flag for arguments that cannot work: a missing file or folder, an argument the
    dataset does not use, a dataset without what `task` needs (questions with answers, captions), `--streaming`
    without shards or (to train, `max_steps` given) without `--max_steps`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    name = args.dataset
    if name not in DATASETS:
        raise ValueError(f"--dataset {name!r} is not one of {list(DATASETS)}")
    for flag in REQUIRED.get(name, ()):
        if getattr(args, flag) is None:
            raise ValueError(f"--dataset {name} needs --{flag}")
    for flag in SOURCE_ARGUMENTS:
        if getattr(args, flag) is not None and flag not in USED.get(name, ()):
            raise ValueError(f"--{flag} is not used by --dataset {name}")
    for flag in ("captions_file", "questions_file", "annotations_file", "karpathy_file"):
        if getattr(args, flag) is not None:
            check_file_argument(flag, getattr(args, flag))
    if args.image_dir is not None and not os.path.isdir(args.image_dir):
        raise ValueError(f"--image_dir {args.image_dir!r}: no such folder")
    if args.data_files is not None:
        check_data_files(args.data_files)
    if name == "karpathy" and args.split is not None and args.split not in KARPATHY_SPLITS:
        raise ValueError(f"--split {args.split!r}: a Karpathy file has the splits {list(KARPATHY_SPLITS)}")
    if task == "vqa" and name not in WITH_QUESTIONS:
        raise ValueError(f"--dataset {name} has no questions; VQA needs one of {list(WITH_QUESTIONS)}")
    if task == "vqa" and name == "vqa_v2" and args.annotations_file is None:
        raise ValueError(
            f"--questions_file {args.questions_file!r} has no answers without --annotations_file: it loads for "
            "prediction, but fine-tuning or evaluating VQA needs the annotations"
        )
    if task != "vqa" and name not in WITH_CAPTIONS:
        raise ValueError(f"--dataset {name} has no captions; {task} needs one of {list(WITH_CAPTIONS)}")
    if args.streaming and name not in ("parquet", "webdataset"):
        raise ValueError(f"--streaming reads parquet or webdataset shards, not --dataset {name}")
    if args.streaming and max_steps is not None and max_steps <= 0:
        raise ValueError("--streaming needs --max_steps: a stream has no length for the Trainer to count epochs by")
    if args.max_answers < 1 or args.min_answer_count < 1:
        raise ValueError("--max_answers and --min_answer_count must be at least 1")


def load_data(
    args: DataSourceArguments, task: str, default_split: str = "train", cache_dir: str | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """The dataset `args` name (not `synthetic`), checked to have what `task` needs and arranged by
    `--group_by_image`. Streams come back whole: shuffling and splitting between processes is the caller's."""
    split = args.split or default_split
    if args.dataset == "coco_captions":
        dataset = load_coco_captions(args.captions_file, args.image_dir)
    elif args.dataset == "vqa_v2":
        dataset = load_vqa_v2(
            args.questions_file,
            args.image_dir,
            annotations_file=args.annotations_file,
            image_pattern=args.image_pattern,
            question_type_field=args.question_type_field,
            normalize_answers=args.normalize_answers,
        )
    elif args.dataset == "karpathy":
        dataset = load_karpathy(args.karpathy_file, args.image_dir, split, include_restval=args.include_restval)
    elif args.dataset == "imagefolder":
        dataset = load_imagefolder(args.image_dir, split, normalize_answers=args.normalize_answers, cache_dir=cache_dir)
    elif args.dataset in ("parquet", "webdataset"):
        dataset = load_image_text_pairs(
            args.data_files,
            format=args.dataset,
            streaming=args.streaming,
            image_column=args.image_column,
            caption_column=args.caption_column,
            cache_dir=cache_dir,
        )
    else:
        raise ValueError(f"--dataset {args.dataset!r} is generated, not loaded")
    if isinstance(dataset, datasets.Dataset):
        check_contents(dataset, args, task)
    return arrange_rows(dataset, args.group_by_image, task)


def check_contents(dataset: datasets.Dataset, args: DataSourceArguments, task: str) -> None:
    source = f"--image_dir {args.image_dir!r}" if args.dataset == "imagefolder" else f"--dataset {args.dataset}"
    if task == "vqa" and not any(dataset.select_columns(["questions"])["questions"]):
        raise ValueError(f"{source} has no questions (a 'question' column); VQA needs questions with answers")
    if task == "vqa" and not has_answers(dataset):
        raise ValueError(f"{source} has no answers (an 'answer' or 'answers' column); VQA needs them")
    if task != "vqa" and not any(dataset.select_columns(["captions"])["captions"]):
        raise ValueError(f"{source} has no captions (a 'caption' or 'captions' column); {task} needs them")


def arrange_rows(dataset, group_by_image: bool, task: str):
    """Image-grouped rows as they are, or one question (VQA) or caption (other tasks) per row. Streamed pairs hold
    one caption each already."""
    if group_by_image or not isinstance(dataset, datasets.Dataset):
        return dataset
    return one_per_row(dataset, by="questions" if task == "vqa" else "captions")


def first_rows(dataset, limit: int | None = None) -> datasets.Dataset:
    """At most `limit` rows (all without a limit) as a `datasets.Dataset`, for evaluation: a stream is read up to
    `limit` with its images left encoded."""
    if isinstance(dataset, datasets.IterableDataset):
        undecoded = dataset.cast_column("image", datasets.Image(decode=False))
        rows = list(undecoded.take(limit) if limit is not None else undecoded)
        return datasets.Dataset.from_list(rows, features=undecoded.features).cast_column("image", datasets.Image())
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))
