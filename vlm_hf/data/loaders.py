"""Loaders for the formats users have on disk: COCO captions, VQA v2, Karpathy splits and Hugging Face image folders.

Each returns a `datasets.Dataset` with the synthetic generator's schema (`FEATURES`), one row per image: `image`,
`image_id`, `captions`, and parallel lists `questions`, `question_types`, `answers`, `answer_scores` (VQA v2 adds
`question_ids` and `answer_accuracies`, the official accuracy of each answer). The image column holds file paths
and decodes each image only when a row is read, so loading never touches the pixels. `one_per_row` turns
image-grouped rows into one question (or caption) per row.
"""

import json
import os
from collections import defaultdict
from pathlib import Path

import datasets

from .synthetic import FEATURES
from .vqa_answers import official_accuracies, soft_scores

VQA_FEATURES = datasets.Features(
    {
        **FEATURES,
        "question_ids": datasets.Sequence(datasets.Value("int64")),
        "answer_accuracies": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    }
)
COCO_IMAGE_PATTERN = "COCO_{split}_{image_id:012d}.jpg"
KARPATHY_SPLITS = ("train", "val", "test", "restval")
QUESTION_COLUMNS = ("questions", "question_types", "answers", "answer_scores", "question_ids", "answer_accuracies")
UNKNOWN_TYPE = "unknown"  # question type of questions that come without annotations


def read_json(path, argument: str):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise ValueError(f"{argument} {str(path)!r}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{argument} {str(path)!r} is not a JSON file: {error}") from None


def expect_keys(data, keys: tuple[str, ...], path, argument: str, kind: str) -> None:
    if not isinstance(data, dict) or any(key not in data for key in keys):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{argument} {str(path)!r} is not a {kind} file: expected keys {list(keys)}, found {found}")


def check_images_exist(paths: list[str], argument: str, image_dir, hint: str = "") -> None:
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(paths)} images that {argument} lists are not in image_dir {str(image_dir)!r}, "
            f"e.g. {missing[0]!r}{hint}"
        )


def image_row(path, image_id, captions=(), questions=(), question_types=(), answers=(), answer_scores=()) -> dict:
    return {
        "image": str(path),  # the Image feature keeps the path and decodes on access
        "image_id": str(image_id),
        "captions": list(captions),
        "questions": list(questions),
        "question_types": list(question_types),
        "answers": [list(a) for a in answers],
        "answer_scores": [list(s) for s in answer_scores],
    }


def rows_to_dataset(rows: list[dict], features: datasets.Features, argument: str, image_dir, check_images: bool):
    if not rows:
        raise ValueError(f"{argument} lists no image with data to load")
    if check_images:
        check_images_exist([row["image"] for row in rows], argument, image_dir)
    return datasets.Dataset.from_list(rows, features=features)


# -- COCO captions ------------------------------------------------------------------------------------------------


def load_coco_captions(captions_file, image_dir, check_images: bool = True) -> datasets.Dataset:
    """
    COCO captions (`annotations/captions_train2017.json` with the images in `train2017/`): one row per image with all
    of its captions. Images without any caption are left out.
    """
    data = read_json(captions_file, "captions_file")
    expect_keys(data, ("images", "annotations"), captions_file, "captions_file", "COCO captions")
    captions = defaultdict(list)
    for annotation in data["annotations"]:
        if "caption" not in annotation:
            raise ValueError(f"captions_file {str(captions_file)!r} has annotations without a 'caption' (not captions)")
        captions[annotation["image_id"]].append(annotation["caption"].strip())
    image_dir = Path(image_dir).resolve()
    rows = [
        image_row(image_dir / image["file_name"], image["id"], captions=captions[image["id"]])
        for image in data["images"]
        if captions[image["id"]]
    ]
    return rows_to_dataset(rows, FEATURES, "captions_file", image_dir, check_images)


# -- VQA v2 -------------------------------------------------------------------------------------------------------


def load_vqa_v2(
    questions_file,
    image_dir,
    annotations_file=None,
    image_pattern: str | None = None,
    question_type_field: str = "answer_type",
    normalize_answers: bool = True,
    check_images: bool = True,
) -> datasets.Dataset:
    """
    VQA v2 (`v2_OpenEnded_mscoco_train2014_questions.json`, `v2_mscoco_train2014_annotations.json`, images in
    `train2014/`): one row per image with all of its questions. Each question's candidate answers are the distinct
    normalised human answers with their soft scores min(count / 3, 1) (the training targets) and their official
    accuracies (`answer_accuracies`: min(matches / 3, 1) averaged over leaving out each annotator, what the VQA
    evaluation server scores and `vlm-hf evaluate` reports).

    Args:
        questions_file: the questions JSON (`questions` list of `image_id`, `question`, `question_id`).
        image_dir: the folder of the images.
        annotations_file: the annotations JSON with the human answers; without it (a test split) the questions load
            with no answers, for prediction.
        image_pattern: image file names, a `str.format` pattern of `image_id` and `split` (the questions file's
            `data_subtype`); default COCO's `"COCO_{split}_{image_id:012d}.jpg"`.
        question_type_field: the annotation field that becomes `question_types`: `"answer_type"` (yes/no, number,
            other) or `"question_type"` (the question's first words, e.g. "what color is the").
        normalize_answers: apply the official answer normalisation (punctuation, articles, number words,
            contractions) before counting.
    """
    if question_type_field not in ("answer_type", "question_type"):
        raise ValueError(f"question_type_field must be 'answer_type' or 'question_type', got {question_type_field!r}")
    data = read_json(questions_file, "questions_file")
    expect_keys(data, ("questions",), questions_file, "questions_file", "VQA questions")
    split = data.get("data_subtype")
    pattern = image_pattern or COCO_IMAGE_PATTERN
    annotations = None if annotations_file is None else vqa_annotations(annotations_file)

    by_image: dict[int, dict] = {}
    image_dir = Path(image_dir).resolve()
    for question in data["questions"]:
        image_id = question["image_id"]
        if image_id not in by_image:
            by_image[image_id] = image_row(image_dir / image_file_name(pattern, image_id, split), image_id)
            by_image[image_id].update(question_ids=[], answer_accuracies=[])
        row = by_image[image_id]
        row["questions"].append(question["question"].strip())
        row["question_ids"].append(question["question_id"])
        if annotations is None:
            row["question_types"].append(UNKNOWN_TYPE)
            row["answers"].append([])
            row["answer_scores"].append([])
            row["answer_accuracies"].append([])
            continue
        annotation = annotations.get(question["question_id"])
        if annotation is None:
            raise ValueError(
                f"annotations_file {str(annotations_file)!r} has no answers for question {question['question_id']} "
                f"of questions_file {str(questions_file)!r}; are they the same split?"
            )
        human_answers = [a["answer"] for a in annotation["answers"]]
        answers, scores = soft_scores(human_answers, normalize=normalize_answers)
        row["question_types"].append(str(annotation.get(question_type_field, UNKNOWN_TYPE)))
        row["answers"].append(answers)
        row["answer_scores"].append(scores)
        row["answer_accuracies"].append(official_accuracies(human_answers, normalize=normalize_answers))
    rows = list(by_image.values())
    if check_images and rows:
        hint = "; set image_pattern if the files are named otherwise" if image_pattern is None else ""
        check_images_exist([row["image"] for row in rows], "questions_file", image_dir, hint)
    return rows_to_dataset(rows, VQA_FEATURES, "questions_file", image_dir, check_images=False)


def image_file_name(pattern: str, image_id: int, split: str | None) -> str:
    try:
        return pattern.format(image_id=image_id, split=split)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"image_pattern {pattern!r} cannot name image {image_id}: {error!r}; use the fields {{image_id}} and "
            "{split}, e.g. 'COCO_{split}_{image_id:012d}.jpg'"
        ) from None


def vqa_annotations(annotations_file) -> dict[int, dict]:
    data = read_json(annotations_file, "annotations_file")
    if not isinstance(data, dict) or "annotations" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"annotations_file {str(annotations_file)!r} has no answers: expected an 'annotations' list, found "
            f"{found} (a questions file?)"
        )
    annotations = {}
    for annotation in data["annotations"]:
        if not annotation.get("answers"):
            raise ValueError(
                f"annotations_file {str(annotations_file)!r} has no answers for question "
                f"{annotation.get('question_id')}"
            )
        annotations[annotation["question_id"]] = annotation
    return annotations


# -- Karpathy splits ----------------------------------------------------------------------------------------------


def load_karpathy(
    karpathy_file, image_dir, split: str = "train", include_restval: bool = True, check_images: bool = True
) -> datasets.Dataset:
    """
    Karpathy's retrieval splits (`dataset_coco.json`, `dataset_flickr30k.json`): one row per image of `split` with
    its captions (`sentences[].raw`). Images are at `image_dir/filepath/filename` (Flickr30k has no `filepath`).
    `train` takes in `restval` as well unless `include_restval=False` (the usual 113k COCO training images).
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"split must be one of {list(KARPATHY_SPLITS)} for a Karpathy file, got {split!r}")
    data = read_json(karpathy_file, "karpathy_file")
    expect_keys(data, ("images",), karpathy_file, "karpathy_file", "Karpathy split")
    wanted = {split, "restval"} if split == "train" and include_restval else {split}
    image_dir = Path(image_dir).resolve()
    rows = [
        image_row(
            image_dir / image.get("filepath", "") / image["filename"],
            image.get("cocoid", image.get("imgid", image["filename"])),
            captions=[sentence["raw"].strip() for sentence in image["sentences"]],
        )
        for image in data["images"]
        if image.get("split") in wanted and image.get("sentences")
    ]
    if not rows:
        present = sorted({str(image.get("split")) for image in data["images"]})
        raise ValueError(f"karpathy_file {str(karpathy_file)!r} has no image in split {split!r}; it has {present}")
    return rows_to_dataset(rows, FEATURES, "karpathy_file", image_dir, check_images)


# -- Hugging Face image folders -----------------------------------------------------------------------------------


def load_imagefolder(
    image_dir, split: str = "train", normalize_answers: bool = True, cache_dir: str | None = None
) -> datasets.Dataset:
    """
    A Hugging Face image folder (`metadata.jsonl` beside the images, with a `file_name` column), read with
    `datasets.load_dataset("imagefolder")`, then grouped by image. The metadata has either

    - question rows: `question` and `answer` (one answer) or `answers` (the annotators' answers, scored VQA-style),
      optionally `question_type`; without an answer column the questions load for prediction; or
    - caption rows: `caption` (one per row) or `captions` (a list per row).

    Several rows may name the same file; an `image_id` column names the images (else their path in the folder).
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"image_dir {str(image_dir)!r}: no such folder")
    try:
        splits = datasets.load_dataset("imagefolder", data_dir=str(image_dir), cache_dir=cache_dir)
    except FileNotFoundError as error:
        raise ValueError(f"image_dir {str(image_dir)!r} holds no image folder dataset: {error}") from None
    if split not in splits:
        raise ValueError(f"image_dir {str(image_dir)!r} has no {split!r} split; it has {sorted(splits)}")
    table = splits[split].cast_column("image", datasets.Image(decode=False))
    columns = set(table.column_names)
    if not columns & {"question", "caption", "captions"}:
        raise ValueError(
            f"image_dir {str(image_dir)!r}: the metadata needs question/answer or caption/captions columns beside "
            f"file_name; found {sorted(columns - {'image'})}"
        )
    records = table.to_list()  # the metadata only: images stay undecoded paths
    root = image_dir.resolve()
    by_image: dict[str, dict] = {}
    for record in records:
        path = record["image"]["path"]
        if path not in by_image:
            image_id = record.get("image_id") or os.path.relpath(path, root)
            by_image[path] = image_row(path, image_id)
        row = by_image[path]
        for caption in [record.get("caption")] + list(record.get("captions") or []):
            if caption and caption.strip() not in row["captions"]:
                row["captions"].append(caption.strip())
        if record.get("question"):
            add_question(row, record, normalize_answers)
    return datasets.Dataset.from_list(list(by_image.values()), features=FEATURES)


def add_question(row: dict, record: dict, normalize_answers: bool) -> None:
    if record.get("answers") is not None:  # the annotators' answers
        answers, scores = soft_scores(record["answers"], normalize=normalize_answers)
    else:  # one given answer (or none, for prediction) is fully right
        answers, _ = soft_scores([record["answer"]] if record.get("answer") else [], normalize=normalize_answers)
        scores = [1.0] * len(answers)
    row["questions"].append(record["question"].strip())
    row["question_types"].append(str(record.get("question_type") or UNKNOWN_TYPE))
    row["answers"].append(answers)
    row["answer_scores"].append(scores)


# -- grouping -----------------------------------------------------------------------------------------------------


def one_per_row(dataset: datasets.Dataset, by: str = "questions") -> datasets.Dataset:
    """
    One question (`by="questions"`) or one caption (`by="captions"`) per row, the image repeated, in the same schema
    (one-element lists), so the collators work unchanged; rows without any are dropped. Image-grouped rows (the
    default) pass each image through the backbone once for all of its questions; these do not.
    """
    if by not in ("questions", "captions"):
        raise ValueError(f"by must be 'questions' or 'captions', got {by!r}")
    split_columns = [c for c in QUESTION_COLUMNS if c in dataset.column_names] if by == "questions" else ["captions"]

    def explode(batch: dict) -> dict:
        out = {column: [] for column in batch}
        for i in range(len(batch["image_id"])):
            for k in range(len(batch[by][i])):
                for column in batch:
                    value = batch[column][i]
                    out[column].append(value[k : k + 1] if column in split_columns else value)
        return out

    image_feature = dataset.features["image"]
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))  # move paths/bytes, decode nothing
    exploded = undecoded.map(explode, batched=True, desc=f"one {by[:-1]} per row")
    return exploded.cast_column("image", image_feature)
