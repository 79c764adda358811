"""Captioning: the teacher-forcing collator, `finetune("captioning")`, coco-caption metrics and `vlm-hf evaluate`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING_FLAGS
from pycocoevalcap.bleu.bleu import Bleu  # the dev extra installs pycocoevalcap
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

import vlm_hf
from vlm_hf.data import CaptioningCollator, generate_synthetic_dataset, one_per_row
from vlm_hf.evaluation import evaluate_captioning, ptb_tokenize, score_captions, tokenize_captions
from vlm_hf.training import finetune, pretrain

VLM_HF = Path(sys.executable).parent / "vlm-hf"
HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="PTBTokenizer and METEOR run on Java")


@pytest.fixture(scope="module")
def scenes():
    return generate_synthetic_dataset(24, seed=3, image_size=64)


@pytest.fixture(scope="module")
def processor(scenes):
    # A vocabulary of the scenes' own words, so that every caption tokenizes without [UNK].
    corpus = [text for row in scenes for text in row["captions"] + row["questions"]]
    tokenizer = vlm_hf.train_wordpiece_tokenizer(corpus, vocab_size=300, min_frequency=1)
    image_processor = vlm_hf.VlmHfImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return vlm_hf.VlmHfProcessor(image_processor, tokenizer)


# -- collator -------------------------------------------------------------------------------------------------------


def caption_ids(processor, caption: str) -> list[int]:
    return processor.tokenizer(caption, add_special_tokens=False)["input_ids"]


def test_collator_labels_are_exactly_one_own_caption_and_its_sep(scenes, processor):
    tokenizer = processor.tokenizer
    rows = [scenes[i] for i in range(8)]
    batch = CaptioningCollator(processor, seed=0)(rows)
    # The images exactly as the processor gives them to `generate`.
    inputs = processor(images=[r["image"] for r in rows], text=[""] * len(rows))
    torch.testing.assert_close(batch["pixel_values"], inputs["pixel_values"], rtol=0, atol=0)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["token_type_ids"].shape
    for row, ids, labels, mask in zip(rows, batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        real = ids[mask == 1].tolist()
        assert real[:2] == [tokenizer.cls_token_id, tokenizer.sep_token_id]  # the empty prompt
        assert (labels[:2] == -100).all() and (labels[mask == 0] == -100).all()
        targets = labels[labels != -100].tolist()
        assert targets == real[2:]  # every caption token and the final [SEP], nothing else
        assert targets in [caption_ids(processor, c) + [tokenizer.sep_token_id] for c in row["captions"]]


def picked_captions(processor, rows, batch) -> list[str]:
    picked = []
    for row, labels in zip(rows, batch["labels"], strict=True):
        targets = labels[labels != -100].tolist()[:-1]
        picked += [c for c in row["captions"] if caption_ids(processor, c) == targets][:1]
    return picked


def test_collator_draws_captions_at_random_reproducibly(scenes, processor):
    rows = [scenes[i] for i in range(8)]

    def draws(seed, batches=6):
        collator = CaptioningCollator(processor, seed=seed)
        return [picked_captions(processor, rows, collator(rows)) for _ in range(batches)]

    first = draws(0)
    assert first == draws(0)  # the seed fixes every batch's choices
    assert first != draws(1)
    for image in range(8):  # each image's draws vary between its captions
        if len(set(rows[image]["captions"])) > 1:
            assert len({batch[image] for batch in first}) > 1


def test_collator_takes_rows_of_one_caption(scenes, processor):
    rows = one_per_row(scenes.select(range(3)), by="captions")
    batch = CaptioningCollator(processor)([rows[i] for i in range(len(rows))])
    assert picked_captions(processor, list(rows), batch) == [row["captions"][0] for row in rows]


# -- training -------------------------------------------------------------------------------------------------------

TINY = [
    *TINY_TRAINING_FLAGS,
    *"--num_train_images 16 --per_device_train_batch_size 16 --learning_rate 2e-3 --vocab_size 300".split(),
    *"--save_strategy no --seed 0".split(),
]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_finetune_captioning_lowers_the_loss_and_saves_a_folder_that_generates(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    args = ["--output_dir", str(tmp_path), "--max_steps", "30", "--learning_rate", "1e-2"]
    history = losses(finetune("captioning", [*TINY, *args]))
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])

    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    tokenizer = processor.tokenizer
    assert type(model).__name__ == "VlmHfForConditionalGeneration"
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert model.generation_config.eos_token_id == tokenizer.sep_token_id
    images = [row["image"] for row in generate_synthetic_dataset(2, seed=9, image_size=64)]
    inputs = processor(images=images, text=["", ""])
    tokens = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new = tokens[:, inputs["input_ids"].shape[1] :]
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 12
    # Trained on 16 scenes, the tiny model already writes caption words.
    words = " ".join(processor.batch_decode(new, skip_special_tokens=True)).split()
    assert {"a", "the", "objects", "object", "picture."} & set(words)


def test_finetune_captioning_from_a_pretrained_folder(tmp_path):
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    pretrain([*TINY, "--output_dir", str(tmp_path / "pretrained"), "--max_steps", "2"])
    pretrained = load_file(tmp_path / "pretrained" / "model.safetensors")
    args = ["--model_name_or_path", str(tmp_path / "pretrained"), "--output_dir", str(tmp_path / "captioning")]
    model = finetune("captioning", [*TINY, *args, "--max_steps", "1", "--learning_rate", "0"]).model
    tokenizer = vlm_hf.VlmHfProcessor.from_pretrained(tmp_path / "captioning").tokenizer
    # The pretraining folder's config has no [CLS] / [SEP] ids: they come from its tokenizer, into the saved
    # generation config too.
    assert json.loads((tmp_path / "pretrained" / "config.json").read_text()).get("eos_token_id") is None
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    saved = GenerationConfig.from_pretrained(tmp_path / "captioning")
    assert (saved.bos_token_id, saved.eos_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert saved.use_cache  # not the `use_cache: false` the pretraining Trainer wrote into its config.json
    # The pretrained Transformer and masked-LM head are the starting point (a zero learning rate keeps them).
    state = model.state_dict()
    for key in (
        "cls.predictions.transform.dense.weight",
        "cls.predictions.decoder.bias",
        "vlm_hf.embeddings.word_embeddings.weight",
        "vlm_hf.encoder.layer.0.output.dense.weight",
    ):
        torch.testing.assert_close(state[key], pretrained[key])


@pytest.mark.parametrize("dataset", ["vqa_v2", "imagefolder"])
def test_finetune_captioning_refuses_data_without_captions(dataset, tmp_path):
    # VQA v2 has no captions at all (refused before loading); this image folder has questions only (refused once read).
    folder = tmp_path / "vqa_only"
    folder.mkdir()
    generate_synthetic_dataset(1, seed=0, image_size=32)[0]["image"].save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "question": "q?", "answer": "a"}))
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"questions": []}))
    data = {
        "vqa_v2": ["--questions_file", questions, "--image_dir", folder],
        "imagefolder": ["--image_dir", folder, "--max_steps", 1],
    }
    out = tmp_path / "out"
    result = run_cli("finetune", "--task", "captioning", "--dataset", dataset, *data[dataset], "--output_dir", out)
    assert result.returncode == 2, result.stderr
    assert "has no captions" in result.stderr and "captioning" in result.stderr
    assert not out.exists()


# -- metrics --------------------------------------------------------------------------------------------------------

CANDIDATES = ["a man riding a red bike.", "two dogs play on the grass", "a cat", "a red circle above a blue square."]
REFERENCES = [
    ["A man rides a red bicycle.", "a person riding a bike down the street", "A man on a red bike."],
    ["Two dogs are playing in the grass.", "two brown dogs running on a lawn"],
    ["a kitten sleeping on a sofa.", "A cat lies on the couch."],
    ["a red circle above a blue square.", "a large red circle, a small blue square."],
]


def by_hand(candidates, references, tokenization):
    gts = tokenize_captions(dict(enumerate(references)), tokenization)
    res = tokenize_captions({i: [c] for i, c in enumerate(candidates)}, tokenization)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        **{f"BLEU-{n}": b for n, b in enumerate(bleu, 1)},
        "CIDEr-D": Cider().compute_score(gts, res)[0],
        "ROUGE-L": Rouge().compute_score(gts, res)[0],
    }


@pytest.mark.parametrize("tokenization", ["python", pytest.param("ptb", marks=needs_java)])
def test_scores_equal_pycocoevalcap_scorers_called_by_hand(tokenization):
    scores = score_captions(CANDIDATES, REFERENCES, tokenization=tokenization, meteor=False)
    expected = by_hand(CANDIDATES, REFERENCES, tokenization)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < scores["BLEU-4"] < scores["BLEU-1"] < 1 and scores["CIDEr-D"] > 0
    assert scores["METEOR_skipped"] and "METEOR" not in scores


def test_a_caption_equal_to_a_reference_scores_one():
    references = [["a red circle above a blue square.", "two objects in the picture."], ["a small green triangle."]]
    exact = score_captions(["A red circle above a blue square", "a small green triangle"], references, "python", False)
    assert exact["BLEU-1"] == pytest.approx(1.0) and exact["BLEU-4"] == pytest.approx(1.0)
    assert exact["ROUGE-L"] == pytest.approx(1.0)
    partial = score_captions(["a red circle", "a small green triangle"], references, "python", False)
    assert partial["BLEU-4"] < 1 and partial["CIDEr-D"] < exact["CIDEr-D"]


# Stanford PTBTokenizer's output (pycocoevalcap's jar, `-preserveLines -lowerCase`) with pycocoevalcap's punctuation
# removed, for captions with punctuation, quotes, brackets, clitics, numbers and abbreviations.
PTB_CASES = [
    ("A man (in a red shirt) rides a bike.", "a man -lrb- in a red shirt -rrb- rides a bike"),
    ("Two dogs don't play; they're \"sleeping\" on the grass!", "two dogs do n't play they 're sleeping on the grass"),
    (
        "It's a black-and-white photo of Mr. Smith's cat, e.g. 3.5 cm long...",
        "it 's a black-and-white photo of mr. smith 's cat e.g. 3.5 cm long",
    ),
    (
        "What's that? A [red] {blue} cat -- and/or a dog: 50% off & $5",
        "what 's that a -lsb- red -rsb- -lcb- blue -rcb- cat and/or a dog 50 % off & $ 5",
    ),
    ("the dogs' toys cost 5,000 dollars at #1 store @ 10:30", "the dogs toys cost 5,000 dollars at # 1 store @ 10:30"),
    (
        "A Cafe near the U.K. office; he said 'hi' and \"bye\". Yes.",
        "a cafe near the u.k. office he said hi and bye yes",
    ),
    ("people's   kids' it's. 1990s '90s the 80's", "people 's kids it 's 1990s '90s the 80 's"),
    ("wow!? !!! I can't, won't, cannot", "wow !? !!! i ca n't wo n't can not"),
    ("a photo of vitamin c.", "a photo of vitamin c."),
    ("a man wearing a hat -- and a coat - walks.", "a man wearing a hat and a coat walks"),
]


@pytest.mark.parametrize(("caption", "tokens"), PTB_CASES)
def test_python_tokenization_gives_ptbtokenizers_tokens(caption, tokens):
    assert ptb_tokenize(caption) == tokens


@needs_java
def test_python_tokenization_equals_ptbtokenizer_on_captions(scenes):
    captions = [
        *(c for c, _ in PTB_CASES),
        *CANDIDATES,
        *(c for refs in REFERENCES for c in refs),
        *scenes[0]["captions"],
    ]
    java = tokenize_captions(dict(enumerate([c] for c in captions)), "ptb")
    assert [ptb_tokenize(c) for c in captions] == [java[i][0] for i in range(len(captions))]


@needs_java
def test_meteor_with_java_equals_pycocoevalcap_by_hand():
    from pycocoevalcap.meteor.meteor import Meteor

    scores = score_captions(CANDIDATES, REFERENCES, tokenization="ptb", meteor=True)
    gts = tokenize_captions(dict(enumerate(REFERENCES)), "ptb")
    res = tokenize_captions({i: [c] for i, c in enumerate(CANDIDATES)}, "ptb")
    scorer = Meteor()
    assert scores["METEOR"] == pytest.approx(scorer.compute_score(gts, res)[0], abs=1e-9)
    del scorer


def test_bad_metric_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="as long as each other"):
        score_captions(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one reference"):
        score_captions(["a"], [[]])
    with pytest.raises(ValueError, match="tokenization"):
        score_captions(["a"], [["a"]], tokenization="nltk")


# -- evaluation and the command line ----------------------------------------------------------------------------------


def run_cli(*args, python_code: str | None = None):
    command = [VLM_HF, *map(str, args)]
    if python_code is not None:
        command = [sys.executable, "-c", python_code, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def caption_model_folder(processor, tmp_path_factory):
    from conftest import tiny_config

    tokenizer = processor.tokenizer
    config = tiny_config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id
    )
    folder = tmp_path_factory.mktemp("caption_model")
    vlm_hf.VlmHfForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_evaluate_captioning_scores_the_generated_captions(caption_model_folder, scenes):
    from transformers import AutoProcessor

    model = vlm_hf.VlmHfForConditionalGeneration.from_pretrained(caption_model_folder)
    processor = AutoProcessor.from_pretrained(caption_model_folder)
    rows = scenes.select(range(5))
    result = evaluate_captioning(model, processor, rows, batch_size=2, max_new_tokens=6, meteor=False, num_samples=3)
    assert result["num_images"] == 5 and len(result["samples"]) == 3
    assert [s["references"] for s in result["samples"]] == [rows[i]["captions"] for i in range(3)]
    generated = [s["generated"] for s in result["samples"]]
    inputs = processor(images=[rows[i]["image"] for i in range(3)], text=[""] * 3)
    tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated == processor.batch_decode(tokens[:, 2:], skip_special_tokens=True)  # batches of 2 change nothing
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"):
        assert 0 <= result[name] <= 1
    assert result["CIDEr-D"] >= 0


def test_cli_evaluate_captioning_prints_the_metrics(caption_model_folder):
    result = run_cli(
        "evaluate", caption_model_folder, "--task", "captioning", "--num-images", 4, "--image-size", 64,
        "--max-new-tokens", 5, "--no-meteor",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L", "num_images", "samples"} <= set(report)
    assert report["num_images"] == 4 and "METEOR" not in report and report["METEOR_skipped"]


def test_cli_evaluate_captioning_without_pycocoevalcap_says_how_to_install(caption_model_folder):
    hide_package = (
        "import sys; sys.modules['pycocoevalcap'] = None; from vlm_hf.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = run_cli("evaluate", caption_model_folder, "--task", "captioning", python_code=hide_package)
    assert result.returncode == 1
    assert "pip install 'vlm-hf[eval]'" in result.stderr
