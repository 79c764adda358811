"""Processor, tokenizer training, the CLI and the pipelines, end to end from saved folders."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS, run_offline_script, tiny_config
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer, BertTokenizer, pipeline

from vlm_hf import (
    VlmHfForImageTextRetrieval,
    VlmHfForQuestionAnswering,
    VlmHfImageProcessor,
    VlmHfProcessor,
    train_wordpiece_tokenizer,
)

VENV_BIN = Path(sys.executable).parent


def scene(colour, size=(96, 72)) -> Image.Image:
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste(Image.new("RGB", (30, 30), colour), (20, 20))
    return image


# -- tokenizer ------------------------------------------------------------------------------------------------------


def test_trained_tokenizer_has_bert_special_tokens_and_round_trips(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token_id == 4
    ids = tokenizer("How many squares are there?").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "how many squares are there?"
    # Words never seen are spelled with the always-present alphabet, not mapped to [UNK].
    assert tokenizer.unk_token_id not in tokenizer("zebra 42 !").input_ids


def test_tokenizer_training_rejects_an_empty_corpus():
    with pytest.raises(ValueError, match="empty"):
        train_wordpiece_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece_tokenizer(CORPUS, vocab_size=100)


def test_train_tokenizer_cli(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    result = subprocess.run(
        [
            VENV_BIN / "vlm-hf",
            "train-tokenizer",
            corpus,
            "--vocab-size",
            "300",
            "--min-frequency",
            "1",
            "--output-dir",
            tmp_path / "tok",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.convert_ids_to_tokens(loaded("what colour?").input_ids)[1:3] == ["what", "colour"]

    missing = subprocess.run(
        [VENV_BIN / "vlm-hf", "train-tokenizer", tmp_path / "nope.txt", "--output-dir", tmp_path / "tok2"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "nope.txt" in missing.stderr and "does not exist" in missing.stderr
    assert not (tmp_path / "tok2").exists()


# -- processor ------------------------------------------------------------------------------------------------------


def test_one_text_per_image(processor):
    out = processor(images=[scene("red"), scene("blue")], text=["what colour is the circle?", "how many?"])
    assert set(out) == {"pixel_values", "input_ids", "attention_mask", "token_type_ids"}
    assert out.pixel_values.shape == (2, 3, 224, 224)
    assert out.input_ids.shape[0] == 2 and out.attention_mask[1].sum() < out.attention_mask[0].sum()


def test_several_texts_share_one_image(processor):
    out = processor(images=scene("red"), text=["what colour?", "how many squares?", "is it red?"])
    assert out.pixel_values.shape[0] == 1
    assert out.image_index.tolist() == [0, 0, 0]
    nested = processor(images=[scene("red"), scene("blue")], text=[["a?", "b?"], ["c?"]])
    assert nested.pixel_values.shape[0] == 2 and nested.image_index.tolist() == [0, 0, 1]


def test_processor_errors_on_mismatched_counts(processor):
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        processor(images=[scene("red")] * 3, text=["a", "b"])
    with pytest.raises(ValueError, match="one list per image"):
        processor(images=[scene("red")] * 2, text=[["a"], ["b"], ["c"]])
    with pytest.raises(ValueError, match="images"):
        processor()


def test_padding_truncation_and_max_length_reach_the_tokenizer(processor):
    long = "what colour is the circle left of the red square above the blue triangle?"
    out = processor(text=[long, "a?"], max_length=6, truncation=True)
    assert out.input_ids.shape == (2, 6) and out.input_ids[0, -1] == processor.tokenizer.sep_token_id
    out = processor(text=["a?"], padding="max_length", max_length=10)
    assert out.input_ids.shape == (1, 10) and out.attention_mask.sum() == 4


def test_decode_and_batch_decode(processor):
    out = processor(text=["what colour is the circle?", "how many squares?"])
    assert processor.batch_decode(out.input_ids, skip_special_tokens=True) == [
        "what colour is the circle?",
        "how many squares?",
    ]
    assert processor.decode(out.input_ids[1], skip_special_tokens=True) == "how many squares?"


def test_works_with_any_bert_style_tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "colour", "is", "it", "?"]
    bert = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    out = VlmHfProcessor(VlmHfImageProcessor(), bert)(images=scene("red"), text="what colour is it?")
    assert out.input_ids.tolist() == [[2, 5, 6, 7, 8, 9, 3]]


def test_processor_round_trip_through_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VlmHfProcessor and type(loaded.image_processor) is VlmHfImageProcessor
    inputs = dict(images=[scene("red"), scene("green")], text=["what colour?", "how many squares are there?"])
    expected, got = processor(**inputs), loaded(**inputs)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_model_takes_processor_output_with_shared_images(processor):
    model = VlmHfForQuestionAnswering(tiny_config(vocab_size=len(processor.tokenizer))).eval()
    questions = ["what colour?", "how many squares are there?", "is it red?"]
    shared = model(**processor(images=scene("red"), text=questions)).logits
    separate = model(**processor(images=[scene("red")] * 3, text=questions)).logits
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)


REMOTE_PROCESSOR = textwrap.dedent(
    """
    import sys
    sys.modules["vlm_hf"] = None
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    image = Image.new("RGB", (96, 72), (200, 30, 30))
    out = processor(images=image, text=["what colour?", "how many?"])
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1] + "/remote.safetensors")
    """
)


def test_processor_loads_through_remote_code_without_the_package(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    run_offline_script(REMOTE_PROCESSOR, tmp_path)
    remote = load_file(tmp_path / "remote.safetensors")
    expected = processor(images=Image.new("RGB", (96, 72), (200, 30, 30)), text=["what colour?", "how many?"])
    for key, value in expected.items():
        torch.testing.assert_close(remote[key], value)


# -- pipelines ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory, processor):
    labels = ["red", "green", "blue", "two", "yes"]
    config = tiny_config(
        vocab_size=len(processor.tokenizer),
        num_labels=5,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = VlmHfForQuestionAnswering(config).eval()
    folder = tmp_path_factory.mktemp("vqa")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model


def test_vqa_pipeline_answers_like_the_model(vqa_folder, processor, tmp_path):
    folder, model = vqa_folder
    vqa = pipeline("visual-question-answering", model=str(folder))
    image_path = tmp_path / "scene.png"
    scene("red").save(image_path)
    images = [scene("red"), str(image_path), np.asarray(scene("blue"))]
    questions = ["what colour is the circle?", "how many squares?", "is there a triangle?"]
    answers = vqa(image=images, question=questions, top_k=3)
    logits = model(**processor(images=images, text=questions)).logits
    for answer, row in zip(answers, logits, strict=True):
        scores, indices = row.sigmoid().topk(3)
        assert [a["answer"] for a in answer] == [model.config.id2label[i] for i in indices.tolist()]
        np.testing.assert_allclose([a["score"] for a in answer], scores.tolist(), atol=1e-5)
    # One image, one question: a flat list; batching does not change the answers.
    single = vqa(image=images[0], question=questions[0], top_k=1)
    assert len(single) == 1 and single[0]["answer"] == answers[0][0]["answer"]
    assert single[0]["score"] == pytest.approx(answers[0][0]["score"], abs=1e-5)
    batched = pipeline("visual-question-answering", model=str(folder), batch_size=2)(
        image=images, question=questions, top_k=3
    )
    assert [[a["answer"] for a in x] for x in batched] == [[a["answer"] for a in x] for x in answers]


def test_zero_shot_classification_pipeline_uses_image_text_similarity(processor, tmp_path):
    torch.manual_seed(0)
    model = VlmHfForImageTextRetrieval(tiny_config(vocab_size=len(processor.tokenizer), initializer_range=0.2)).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    labels = ["red square", "blue circle", "two triangles"]
    result = classifier(scene("red"), candidate_labels=labels)
    prompts = [f"This is a photo of {label}." for label in labels]
    probabilities = model(**processor(images=scene("red"), text=prompts)).logits_per_image.softmax(-1)[0]
    expected = sorted(zip(probabilities.tolist(), labels, strict=True), reverse=True)
    assert [r["label"] for r in result] == [label for _, label in expected]
    np.testing.assert_allclose([r["score"] for r in result], [p for p, _ in expected], atol=1e-5)


def test_vqa_pipeline_rejects_unpaired_inputs(vqa_folder):
    vqa = pipeline("visual-question-answering", model=str(vqa_folder[0]))
    with pytest.raises(ValueError, match="2 images and 3 questions"):
        vqa(image=[scene("red")] * 2, question=["a", "b", "c"])
    with pytest.raises(ValueError, match="image"):
        vqa(image=None, question="what?")
