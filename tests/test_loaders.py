"""Loaders for COCO captions, VQA v2, Karpathy splits, image folders and streamed shards, and the `--dataset` wiring.

The fixtures (tests/fixtures, written by make_fixtures.py) hold a few 32x32 images in each format; the expected
values below are worked out by hand from those files and the VQA rules.
"""

import functools
import json
import math
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from conftest import TINY_TRAINING_FLAGS
from datasets.distributed import split_dataset_by_node

from vlm_hf.cli import main
from vlm_hf.data import (
    VqaCollator,
    answer_vocabulary_from,
    load_coco_captions,
    load_image_text_pairs,
    load_imagefolder,
    load_karpathy,
    load_vqa_v2,
    normalize_answer,
    official_accuracies,
    official_accuracy,
    one_per_row,
    soft_scores,
)
from vlm_hf.data.sources import DataSourceArguments
from vlm_hf.data.vqa_answers import has_answers

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VQA = FIXTURES / "vqa_v2"
TRAIN_QUESTIONS = VQA / "v2_OpenEnded_mscoco_train2014_questions.json"
TRAIN_ANNOTATIONS = VQA / "v2_mscoco_train2014_annotations.json"
VAL_QUESTIONS = VQA / "v2_OpenEnded_mscoco_val2014_questions.json"
VAL_ANNOTATIONS = VQA / "v2_mscoco_val2014_annotations.json"
TEST_QUESTIONS = VQA / "v2_OpenEnded_mscoco_test2015_questions.json"
KARPATHY = FIXTURES / "karpathy"
SHARDS = FIXTURES / "shards"


@pytest.fixture(scope="module")
def vqa_train():
    return load_vqa_v2(TRAIN_QUESTIONS, VQA / "train2014", annotations_file=TRAIN_ANNOTATIONS)


def stored_paths(dataset) -> list[dict]:
    """What the Arrow table holds for the images (path and bytes), read without decoding."""
    return dataset.cast_column("image", datasets.Image(decode=False))["image"]


# -- VQA answers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("  Ten\n", "10"),
        ("An apple.", "apple"),  # articles go, a final period goes
        ("the dog", "dog"),
        ("mr. smith", "mr smith"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes!", "yes"),
        ("t-shirt", "t shirt"),  # a mark between letters becomes a space
        ("left / right", "left right"),  # a mark next to a space is deleted
        ("red, white and blue", "red white and blue"),
        ("hot dog (s)", "hot dog s"),  # "(" follows a space (deleted), ")" does not (a space)
        ("1,000", "1000"),  # digit-comma-digit: every mark is deleted
        ("dont know", "don't know"),  # contractions get their apostrophe back
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("man's hat", "man's hat"),  # apostrophes are kept
        ("its", "its"),  # a word, not a contraction
    ],
)
def test_answer_normalisation_follows_the_official_rules(answer, expected):
    assert normalize_answer(answer) == expected


def test_soft_scores_count_normalised_human_answers():
    # "2": Two, 2, two., the 2, 2 (5 of 10); "3": 3, three, 3 (3); "4" and "yes" once each.
    answers = ["Two", "2", "two.", "3", "three", "3", "4", "the 2", "2", "yes"]
    candidates, scores = soft_scores(answers)
    assert candidates == ["2", "3", "4", "yes"]
    assert scores == pytest.approx([1.0, 1.0, 1 / 3, 1 / 3])
    assert soft_scores(["Yes", "yes", "?"]) == (["yes"], [pytest.approx(2 / 3)])  # "?" normalises to nothing


def leave_one_out_accuracy(prediction: str, human_answers: list[str]) -> float:
    """The VQA evaluation's definition, step by step: for each annotator, min(1, matches among the others / 3)."""
    normalised = [normalize_answer(a) for a in human_answers]
    per_annotator = [
        min(1.0, sum(other == prediction for other in normalised[:i] + normalised[i + 1 :]) / 3)
        for i in range(len(normalised))
    ]
    return sum(per_annotator) / len(per_annotator)


def test_official_accuracies_match_the_leave_one_annotator_out_definition():
    answers = ["Two", "2", "two.", "3", "three", "3", "4", "the 2", "2", "?"]
    candidates, _ = soft_scores(answers)
    expected = [leave_one_out_accuracy(candidate, answers) for candidate in candidates]
    assert official_accuracies(answers) == pytest.approx(expected)
    assert official_accuracies(answers) == pytest.approx([1.0, 0.9, 0.3])  # "2" x5, "3" x3, "4" x1; "?" counts too
    for count in range(11):
        humans = ["yes"] * count + ["no"] * (10 - count)
        assert official_accuracy(count, 10) == pytest.approx(leave_one_out_accuracy("yes", humans))
    for count, num_annotators in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError, match=f"got count {count} of {num_annotators}"):
            official_accuracy(count, num_annotators)


# -- COCO captions --------------------------------------------------------------------------------------------------


def test_coco_captions_rows_hold_all_captions_and_image_paths():
    dataset = load_coco_captions(
        FIXTURES / "coco_captions" / "captions_val2017.json", FIXTURES / "coco_captions" / "val2017"
    )
    assert len(dataset) == 3  # image 4 has no caption
    assert dataset["image_id"] == ["1", "2", "3"]
    assert dataset[0]["captions"] == ["A red ball on a table.", "a ball"]
    assert len(dataset[2]["captions"]) == 3 and dataset[0]["questions"] == []
    stored = stored_paths(dataset)[0]
    assert stored["bytes"] is None
    assert stored["path"] == str(FIXTURES / "coco_captions" / "val2017" / "000000000001.jpg")
    assert dataset[0]["image"].size == (32, 32)  # decoded when the row is read


def test_missing_images_are_reported_with_the_folder(tmp_path):
    with pytest.raises(ValueError, match="image_dir"):
        load_coco_captions(FIXTURES / "coco_captions" / "captions_val2017.json", tmp_path)


# -- VQA v2 ---------------------------------------------------------------------------------------------------------


def test_vqa_v2_groups_questions_by_image_with_soft_scores(vqa_train):
    assert len(vqa_train) == 3 and vqa_train["image_id"] == ["1", "2", "3"]
    first, second, third = vqa_train[0], vqa_train[1], vqa_train[2]
    assert first["question_ids"] == [101, 102] and first["question_types"] == ["other", "number"]
    # Red x5, red. x1, the red x2 -> "red" 8 times; dark red x2.
    assert first["answers"][0] == ["red", "dark red"]
    assert first["answer_scores"][0] == pytest.approx([1.0, 2 / 3])
    assert first["answer_accuracies"][0] == pytest.approx([1.0, 0.6])  # what the evaluation server would score
    # Two x4 + 2 x2 -> "2" 6 times; 3 x3 + three x1 -> "3" 4 times.
    assert first["answers"][1] == ["2", "3"] and first["answer_scores"][1] == pytest.approx([1.0, 1.0])
    assert second["answers"] == [["yes", "no"], ["shirt", "t shirt"]]
    assert second["answer_scores"][0] == pytest.approx([1.0, 1 / 3])
    assert third["answers"][1] == ["stop", "don't walk"]  # dont walk x2 + don't walk x2 = 4
    assert stored_paths(vqa_train)[0]["path"].endswith("train2014/COCO_train2014_000000000001.jpg")


def test_vqa_v2_question_types_from_the_chosen_annotation_field():
    dataset = load_vqa_v2(
        TRAIN_QUESTIONS, VQA / "train2014", annotations_file=TRAIN_ANNOTATIONS, question_type_field="question_type"
    )
    assert dataset[0]["question_types"] == ["what color is the", "how many"]


def test_answer_vocabulary_comes_from_the_training_answers(vqa_train):
    # Best answers of the six training questions: red, 2, yes, shirt, yes, stop.
    assert answer_vocabulary_from(vqa_train) == ["yes", "2", "red", "shirt", "stop"]
    assert answer_vocabulary_from(vqa_train, min_count=2) == ["yes"]
    assert answer_vocabulary_from(vqa_train, max_answers=2) == ["yes", "2"]
    val = load_vqa_v2(VAL_QUESTIONS, VQA / "val2014", annotations_file=VAL_ANNOTATIONS)
    assert answer_vocabulary_from(val) == ["1", "black", "no"]


def test_vqa_v2_test_split_loads_without_answers():
    dataset = load_vqa_v2(TEST_QUESTIONS, VQA / "test2015")
    assert dataset[0]["questions"] == ["What is this?", "Is it daytime?"]
    assert dataset[0]["answers"] == [[], []] and dataset[0]["question_types"] == ["unknown", "unknown"]
    assert not has_answers(dataset)


def test_vqa_v2_image_name_pattern():
    renamed = load_vqa_v2(
        VAL_QUESTIONS, VQA / "renamed", annotations_file=VAL_ANNOTATIONS, image_pattern="img_{image_id}.jpg"
    )
    assert [Path(s["path"]).name for s in stored_paths(renamed)] == ["img_11.jpg", "img_12.jpg"]
    with pytest.raises(ValueError, match="image_pattern"):
        load_vqa_v2(VAL_QUESTIONS, VQA / "renamed", annotations_file=VAL_ANNOTATIONS)


def test_a_questions_file_given_as_annotations_has_no_answers():
    with pytest.raises(ValueError, match="annotations_file .* has no answers"):
        load_vqa_v2(TRAIN_QUESTIONS, VQA / "train2014", annotations_file=TRAIN_QUESTIONS)


# -- Karpathy splits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split, include_restval, ids",
    [("train", True, ["1", "2", "3"]), ("train", False, ["1", "2"]), ("val", True, ["4"]), ("test", True, ["5", "6"])],
)
def test_karpathy_split_selection(split, include_restval, ids):
    dataset = load_karpathy(KARPATHY / "dataset_coco.json", KARPATHY, split, include_restval=include_restval)
    assert dataset["image_id"] == ids


def test_karpathy_rows_hold_raw_sentences_and_paths_under_filepath():
    dataset = load_karpathy(KARPATHY / "dataset_coco.json", KARPATHY, "test")
    assert dataset[1]["captions"] == ["Kids playing football.", "Children with a ball."]
    assert stored_paths(dataset)[0]["path"] == str(KARPATHY / "val2014" / "COCO_val2014_000000000005.jpg")
    with pytest.raises(ValueError, match="split"):
        load_karpathy(KARPATHY / "dataset_coco.json", KARPATHY, "validation")


def test_karpathy_flickr30k_images_sit_flat_and_are_named_by_imgid(tmp_path):
    # Karpathy's dataset_flickr30k.json has no `filepath` or `cocoid`: the images lie in one folder.
    from PIL import Image

    images = [
        {"filename": f"{n}.jpg", "imgid": i, "split": "test", "sentences": [{"raw": f"Photo {i} "}]}
        for i, n in enumerate(("1000092795", "10002456"))
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    for i, image in enumerate(images):
        Image.new("RGB", (8 + i, 8), "red").save(tmp_path / image["filename"])
    dataset = load_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path, "test")
    assert dataset["image_id"] == ["0", "1"] and dataset["captions"] == [["Photo 0"], ["Photo 1"]]
    assert [row["image"].size for row in dataset] == [(8, 8), (9, 8)]


# -- image folders --------------------------------------------------------------------------------------------------


def test_imagefolder_question_rows_are_grouped_by_image(tmp_path):
    dataset = load_imagefolder(FIXTURES / "imagefolder_vqa", cache_dir=str(tmp_path))
    assert dataset["image_id"] == ["a.png", "b.png", "c.png"]
    assert dataset[0]["questions"] == ["What colour is the ball?", "How many balls?"]
    assert dataset[0]["answers"] == [["red"], ["1"]] and dataset[0]["answer_scores"] == [[1.0], [1.0]]
    assert dataset[0]["question_types"] == ["colour", "count"]
    assert dataset[1]["answers"] == [["yes", "no"]]  # annotators' answers: yes x2, no x1
    assert dataset[1]["answer_scores"][0] == pytest.approx([2 / 3, 1 / 3])
    assert dataset[2]["answers"] == [["blue"]]  # "the blue"
    assert stored_paths(dataset)[0]["bytes"] is None


def test_imagefolder_caption_rows_and_split_selection(tmp_path):
    train = load_imagefolder(FIXTURES / "imagefolder_captions", "train", cache_dir=str(tmp_path))
    assert train["image_id"] == ["train/a.png", "train/b.png", "train/c.png"]
    assert train[0]["captions"] == ["A ball on grass.", "A green field with a ball."]  # two rows, one image
    assert train[1]["captions"] == ["A small circle.", "A dot."]  # a `captions` list
    test = load_imagefolder(FIXTURES / "imagefolder_captions", "test", cache_dir=str(tmp_path))
    assert test["captions"][:] == [["A blue dot.", "A dot on blue."], ["A yellow disc."]]
    with pytest.raises(ValueError, match="has no 'validation' split"):
        load_imagefolder(FIXTURES / "imagefolder_captions", "validation", cache_dir=str(tmp_path))


# -- grouping -------------------------------------------------------------------------------------------------------


def test_one_question_per_row_keeps_the_schema_and_the_collator(vqa_train, processor):
    rows = one_per_row(vqa_train, by="questions")
    assert len(rows) == 6 and rows.features == vqa_train.features
    assert rows["question_ids"][:] == [[101], [102], [201], [202], [301], [302]]
    assert rows[1]["answers"] == [["2", "3"]] and rows[1]["image_id"] == "1"
    # Every question-parallel column is split with the questions (the official accuracies too).
    assert all(len(rows[i][c]) == 1 for i in range(6) for c in ("answers", "answer_scores", "answer_accuracies"))
    assert rows[1]["answer_accuracies"] == [pytest.approx(vqa_train[0]["answer_accuracies"][1])]
    assert stored_paths(rows)[0]["path"] == stored_paths(rows)[1]["path"]  # the image repeated, as a path
    labels = ["yes", "2", "red", "shirt", "stop"]
    batch = VqaCollator(processor, {a: i for i, a in enumerate(labels)})([rows[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 4 and batch["image_index"].tolist() == [0, 1, 2, 3]
    grouped = VqaCollator(processor, {a: i for i, a in enumerate(labels)})([vqa_train[0], vqa_train[1]])
    assert grouped["pixel_values"].shape[0] == 2 and grouped["image_index"].tolist() == [0, 0, 1, 1]


def test_one_caption_per_row():
    captions = load_karpathy(KARPATHY / "dataset_coco.json", KARPATHY, "train")
    rows = one_per_row(captions, by="captions")
    assert rows["captions"][:] == [
        ["A man rides a horse."],
        ["Horse and rider."],
        ["A bowl of fruit."],
        ["A red car parked outside."],
    ]
    assert rows["image_id"] == ["1", "1", "2", "3"]


# -- streamed shards ------------------------------------------------------------------------------------------------


PARQUET_KEYS = [f"p{k}" for k in range(6)]
WEBDATASET_KEYS = [f"sample{k:04d}" for k in (0, 1, 2, 4, 5)]  # sample 3 has no text


@pytest.mark.parametrize(
    "format, shard, keys",
    [("parquet", "pairs-00000.parquet", PARQUET_KEYS), ("webdataset", "pairs-00000.tar", WEBDATASET_KEYS)],
)
def test_streaming_yields_the_pairs_and_two_ranks_split_them(format, shard, keys):
    stream = load_image_text_pairs(str(SHARDS / shard), format=format, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    assert [r["image_id"] for r in rows] == keys
    assert rows[0]["captions"] == [f"{format} picture 0."] and rows[0]["questions"] == []
    assert rows[0]["image"].size == (32, 32)
    parts = [[r["image_id"] for r in split_dataset_by_node(stream, rank=rank, world_size=2)] for rank in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(keys)


class QuietFileHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def shard_url():
    """The shard folder served over http on a free local port (no Range support, like many plain file servers)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFileHandler, directory=str(SHARDS)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("format, shard", [("parquet", "pairs-00000.parquet"), ("webdataset", "pairs-00000.tar")])
def test_shards_stream_from_urls_like_from_disk(format, shard, shard_url):
    remote = list(load_image_text_pairs(f"{shard_url}/{shard}", format=format, streaming=True))
    local = list(load_image_text_pairs(str(SHARDS / shard), format=format, streaming=True))
    assert [(r["image_id"], r["captions"]) for r in remote] == [(r["image_id"], r["captions"]) for r in local]
    assert [r["image"].tobytes() for r in remote] == [r["image"].tobytes() for r in local]


def test_shuffled_stream_parts_are_disjoint_and_cover_the_stream(monkeypatch):
    from vlm_hf.training import for_this_process

    # datasets waits 5 s after a shuffled parquet stream ends (an Arrow thread workaround); not needed here.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

    stream = load_image_text_pairs(str(SHARDS / "pairs-00000.parquet"), format="parquet")
    args = DataSourceArguments(shuffle_buffer_size=4)
    parts = [
        [r["image_id"] for r in for_this_process(stream, args, SimpleNamespace(seed=3, world_size=2, process_index=i))]
        for i in (0, 1)
    ]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == PARQUET_KEYS


def test_stream_columns_are_configurable():
    stream = load_image_text_pairs(str(SHARDS / "pairs-00000.parquet"), image_column="image", caption_column="key")
    assert next(iter(stream))["captions"] == ["p0"]
    with pytest.raises(ValueError, match="image_column 'jpg'"):
        load_image_text_pairs(str(SHARDS / "pairs-00000.parquet"), image_column="jpg")


# -- training and evaluation on loaded data --------------------------------------------------------------------------

TINY = [*TINY_TRAINING_FLAGS, *"--vocab_size 200 --save_strategy no --per_device_train_batch_size 2".split()]
VQA_TRAIN = ["--dataset", "vqa_v2", "--questions_file", str(TRAIN_QUESTIONS), "--image_dir", str(VQA / "train2014")]


def test_vqa_finetuning_on_vqa_v2_labels_the_training_answers(tmp_path):
    from vlm_hf.training import finetune

    args = [*TINY, *VQA_TRAIN, "--annotations_file", str(TRAIN_ANNOTATIONS), "--max_steps", "3"]
    trainer = finetune("vqa", [*args, "--output_dir", str(tmp_path / "vqa")])
    assert list(trainer.model.config.id2label.values()) == ["yes", "2", "red", "shirt", "stop"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)

    # The saved model evaluates on the val split through the same data arguments (3 questions, 3 answer types).
    result = run_main(
        "evaluate",
        tmp_path / "vqa",
        "--task",
        "vqa",
        "--dataset",
        "vqa_v2",
        "--questions_file",
        VAL_QUESTIONS,
        "--annotations_file",
        VAL_ANNOTATIONS,
        "--image_dir",
        VQA / "val2014",
    )
    scores = json.loads(result.out[result.out.index("{") :])
    assert scores["num_questions"] == 3 and set(scores["per_type"]) == {"number", "other", "yes/no"}


PROBE = """
import json, os, sys
import vlm_hf.training as training

seen = []
collate = training.PretrainingCollator.__call__
def recording(self, rows):
    seen.extend(row["image_id"] for row in rows)
    return collate(self, rows)
training.PretrainingCollator.__call__ = recording
trainer = training.pretrain(sys.argv[2:])
record = {"world_size": trainer.args.world_size, "seen": seen}
with open(os.path.join(sys.argv[1], f"rank{trainer.args.process_index}.json"), "w") as file:
    json.dump(record, file)
"""


def test_two_processes_stream_disjoint_parts_that_cover_the_shard(tmp_path):
    """torchrun, 2 CPU processes (DDP over gloo): each rank trains on its own part of the WebDataset shard, and the
    Trainer neither dispatches batches from rank 0 nor splits the part again."""
    (tmp_path / "probe.py").write_text(PROBE)
    command = [
        Path(sys.executable).parent / "torchrun",
        "--nproc_per_node",
        "2",
        tmp_path / "probe.py",
        tmp_path,
        *TINY,
        "--use_cpu",
        "--dataset",
        "webdataset",
        "--data_files",
        SHARDS / "pairs-00000.tar",
        "--streaming",
        "--shuffle_buffer_size",
        "0",
        "--per_device_train_batch_size",
        "1",
        "--max_steps",
        "3",
        "--output_dir",
        tmp_path / "out",
    ]
    launched = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["seen"]) for r in ranks]
    assert not seen[0] & seen[1] and sorted(seen[0] | seen[1]) == WEBDATASET_KEYS


# -- command-line errors --------------------------------------------------------------------------------------------


def run_main(*argv):
    """`vlm-hf` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit:
            status = exit.code
    return SimpleNamespace(status=status, out=out.getvalue(), err=err.getvalue())


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "pretrain",
                "--dataset",
                "karpathy",
                "--karpathy_file",
                KARPATHY / "dataset_coco.json",
                "--image_dir",
                "nope",
            ],
            "--image_dir 'nope': no such folder",
        ),
        (["finetune", "--task", "retrieval", "--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
        (["finetune", "--task", "vqa", *VQA_TRAIN], "--questions_file .* has no answers"),
        (
            ["finetune", "--task", "vqa", *VQA_TRAIN, "--annotations_file", TRAIN_QUESTIONS],
            "annotations_file .* has no answers",
        ),
        (
            ["finetune", "--task", "vqa", "--dataset", "imagefolder", "--image_dir", FIXTURES / "imagefolder_captions"],
            "--image_dir .* has no questions",
        ),
        (
            ["pretrain", "--dataset", "coco_captions", "--image_dir", FIXTURES / "coco_captions"],
            "needs --captions_file",
        ),
        (["pretrain", "--dataset", "parquet", "--data_files", SHARDS / "*.arrow"], "--data_files .* matches no file"),
        (
            ["pretrain", "--dataset", "parquet", "--data_files", SHARDS / "pairs-00000.parquet", "--streaming"],
            "--streaming needs --max_steps",
        ),
    ],
)
def test_bad_data_arguments_exit_2_naming_the_argument_and_write_nothing(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))  # the image folder's cache
    result = run_main(*argv, *TINY, "--output_dir", tmp_path / "out")
    assert result.status == 2 and re.search(message, result.err), result.err
    assert not (tmp_path / "out").exists()


def test_evaluate_checks_its_data_arguments(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # passes the folder check; the data check comes first
    result = run_main(
        "evaluate",
        tmp_path,
        "--task",
        "vqa",
        "--dataset",
        "vqa_v2",
        "--questions_file",
        TEST_QUESTIONS,
        "--image_dir",
        VQA / "test2015",
    )
    assert result.status == 2 and "has no answers" in result.err
