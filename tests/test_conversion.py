"""Converters: parity with the originals' saved outputs, full-size key coverage, transformers parity, strictness."""

import re
from pathlib import Path

import pytest
import torch
import torchvision
import transformers
from safetensors.torch import load_file
from vlm_hf.conversion.common import map_state_dict
from vlm_hf.conversion.convert_bert import convert_bert_state_dict, convert_bert_text_tower
from vlm_hf.conversion.convert_resnet import load_resnet_vision_tower
from vlm_hf.conversion.convert_uniter import convert_uniter, convert_uniter_state_dict, uniter_config
from vlm_hf.conversion.convert_uniter import head_class_of as uniter_head_class
from vlm_hf.conversion.convert_visualbert import convert_visualbert
from vlm_hf.conversion.convert_vlbert import convert_vlbert, convert_vlbert_state_dict, vlbert_config
from vlm_hf.conversion.convert_vlbert import head_class_of as vlbert_head_class

from vlm_hf import (
    VlmHfConfig,
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfModel,
)
from vlm_hf.cli import main as cli_main
from vlm_hf.modeling_vlm_hf import box_sincos_embedding

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "original"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"the original-implementation fixtures are not beside the checkout ({FIXTURES})"
)
UNITER, VLBERT = FIXTURES / "uniter", FIXTURES / "vlbert"


def assert_close(actual, expected, atol, name=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=atol, msg=lambda m: f"{name}: {m}")


# -- UNITER: every saved output (README: atol = rtol = 1e-5 at valid positions) ---------------------------------------


@pytest.fixture(scope="module")
def uniter_data():
    inputs, outputs = load_file(UNITER / "inputs.safetensors"), load_file(UNITER / "outputs.safetensors")
    text_length, num_regions = inputs["input_ids"].shape[1], inputs["img_feat"].shape[1]
    return (
        inputs,
        outputs,
        {
            "attention_mask": (torch.arange(text_length) < inputs["txt_lens"][:, None]).long(),
            "visual_attention_mask": (torch.arange(num_regions) < inputs["num_bbs"][:, None]).long(),
            # vlm_hf takes [x1, y1, x2, y2] and computes w, h, w*h itself (the fixture's 7-d features).
            "visual_boxes": inputs["img_pos_feat"][..., :4],
        },
    )


def _uniter_inputs(data, input_ids=None, img_feat=None):
    inputs, _, common = data
    return dict(
        input_ids=inputs["input_ids"] if input_ids is None else input_ids,
        visual_embeds=inputs["img_feat"] if img_feat is None else img_feat,
        **common,
    )


def _packed(sequence, gather_index):
    """vlm_hf's [text; regions] layout -> UNITER's packed layout (its `gather_index` over the same concatenation)."""
    return sequence.gather(1, gather_index[..., None].expand(-1, -1, sequence.shape[-1]))


@needs_fixtures
def test_uniter_box_features_are_the_fixture_7d_locations(uniter_data):
    from vlm_hf.modeling_vlm_hf import box_location_features

    inputs, _, common = uniter_data
    assert_close(box_location_features(common["visual_boxes"], 7), inputs["img_pos_feat"], 1e-6)


@needs_fixtures
@pytest.mark.parametrize("name", ["pretrain", "vqa", "itm"])
def test_uniter_conversion_reproduces_the_original_encoder(uniter_data, name):
    inputs, outputs, _ = uniter_data
    model, report = convert_uniter(UNITER / f"{name}.bin", UNITER / "config.json", verbose=False)
    assert set(report.missing) <= {"text_projection.weight", "image_projection.weight", "logit_scale"}  # retrieval
    valid, gather = inputs["attn_masks"].bool(), inputs["gather_index"]
    with torch.no_grad():
        out = model.vlm_hf(**_uniter_inputs(uniter_data), output_hidden_states=True)
    assert_close(_packed(out.hidden_states[0], gather)[valid], outputs[f"{name}.embedding_output"][valid], 1e-5)
    layers = torch.stack([_packed(states, gather) for states in out.hidden_states[1:]])
    assert_close(layers[:, valid], outputs[f"{name}.encoder_layers"][:, valid], 1e-5)
    assert_close(_packed(out.last_hidden_state, gather)[valid], outputs[f"{name}.sequence_output"][valid], 1e-5)
    assert_close(out.pooler_output, outputs[f"{name}.pooled_output"], 1e-5)


@needs_fixtures
def test_uniter_vqa_and_retrieval_heads_reproduce_the_original_scores(uniter_data):
    _, outputs, _ = uniter_data
    vqa, _ = convert_uniter(UNITER / "vqa.bin", UNITER / "config.json", verbose=False)
    itm, report = convert_uniter(UNITER / "itm.bin", UNITER / "config.json", verbose=False)
    assert set(report.dropped) == {"itm_output.weight", "itm_output.bias"}  # unused by UNITER's retrieval model
    with torch.no_grad():
        assert_close(vqa(**_uniter_inputs(uniter_data)).logits, outputs["vqa.answer_scores"], 1e-5)
        itm_logits = itm(**_uniter_inputs(uniter_data)).itm_logits
    assert_close(itm_logits[:, 1:], outputs["itm.rank_scores"], 1e-5)
    assert not itm_logits[:, 0].any()  # softmax over (0, score) is UNITER's sigmoid(score)


@needs_fixtures
def test_uniter_pretraining_heads_reproduce_the_original_scores(uniter_data):
    inputs, outputs, _ = uniter_data
    model, report = convert_uniter(UNITER / "pretrain.bin", UNITER / "config.json", verbose=False)
    assert set(report.dropped) == {"cls.predictions.decoder.weight", "feat_regress.weight"}  # tied duplicates
    assert model.cls.predictions.decoder.weight is model.vlm_hf.embeddings.word_embeddings.weight
    valid, gather = inputs["attn_masks"].bool(), inputs["gather_index"]
    labels = inputs["mlm_txt_labels"].masked_fill(inputs["mlm_txt_labels"] == -1, -100)
    mrm = dict(img_feat=inputs["mrm_img_feat"])
    with torch.no_grad():
        assert_close(model(**_uniter_inputs(uniter_data)).itm_logits, outputs["pretrain.itm_scores"], 1e-5)
        mlm = model(**_uniter_inputs(uniter_data, input_ids=inputs["mlm_input_ids"]), labels=labels)
        mlm_states = model.vlm_hf(**_uniter_inputs(uniter_data, input_ids=inputs["mlm_input_ids"])).last_hidden_state
        masked = model(**_uniter_inputs(uniter_data, **mrm), visual_feature_mask=inputs["mrm_img_masks"])
        mrm_states = model.vlm_hf(**_uniter_inputs(uniter_data, **mrm), visual_feature_mask=inputs["mrm_img_masks"])
    assert_close(mlm.prediction_logits, outputs["pretrain.mlm_scores"], 1e-5)
    assert_close(_packed(mlm_states, gather)[valid], outputs["pretrain.mlm_sequence_output"][valid], 1e-5)
    assert_close(masked.visual_predictions, outputs["pretrain.mrfr_feat"], 1e-5)
    assert_close(masked.region_logits, outputs["pretrain.mrc_scores"], 1e-5)
    mrm_packed = _packed(mrm_states.last_hidden_state, gather)
    assert_close(mrm_packed[valid], outputs["pretrain.mrm_sequence_output"][valid], 1e-5)


@needs_fixtures
def test_uniter_float16_checkpoints_are_upcast(uniter_data):
    state_dict = torch.load(UNITER / "vqa.bin", weights_only=True)
    half = {key: value.half() for key, value in state_dict.items()}
    model, report = convert_uniter(half, UNITER / "config.json", verbose=False)
    reference, _ = convert_uniter({k: v.float() for k, v in half.items()}, UNITER / "config.json", verbose=False)
    assert len(report.upcast) == len(state_dict) and model.dtype == torch.float32
    with torch.no_grad():
        logits = model(**_uniter_inputs(uniter_data)).logits
    assert torch.equal(logits, reference(**_uniter_inputs(uniter_data)).logits)


# -- VL-BERT: every saved output (README: atol = rtol = 1e-4; 2e-5 is achievable on CPU) -------------------------------


def _vlbert_visual(inputs, prefix):
    """VL-BERT's [x1, y1, x2, y2, RoI feature] rows (padding -2) -> normalised boxes, features and the box mask."""
    boxes, image_size = inputs[f"{prefix}.boxes"], inputs[f"{prefix}.im_info"][:, None, [0, 1, 0, 1]]
    valid = boxes[..., 0] > -1.5
    return dict(
        visual_embeds=torch.where(valid[..., None], boxes[..., 4:], 0.0),
        visual_boxes=torch.where(valid[..., None], boxes[..., :4] / image_size, 0.0),
        visual_attention_mask=valid.long(),
    )


def _vlbert_layout(states, text_lengths, num_objects):
    """vlm_hf's [text (T) | objects (N) | END] -> VL-BERT's per-example [text | objects | END | padding]."""
    text_width, num_slots = states.shape[1] - 1 - num_objects.max(), num_objects.max()
    length = int((text_lengths + num_objects).max()) + 1
    result = states.new_zeros(states.shape[0], length, states.shape[-1])
    for row, (text, objects) in enumerate(zip(text_lengths.tolist(), num_objects.tolist(), strict=True)):
        result[row, :text] = states[row, :text]
        result[row, text : text + objects] = states[row, text_width : text_width + objects]
        result[row, text + objects] = states[row, text_width + num_slots]
    return result


@pytest.fixture(scope="module")
def vlbert_data():
    return load_file(VLBERT / "inputs.safetensors"), load_file(VLBERT / "outputs.safetensors")


@needs_fixtures
def test_vlbert_vqa_conversion_reproduces_every_saved_output(vlbert_data):
    inputs, outputs = vlbert_data
    model, report = convert_vlbert(VLBERT / "vqa.bin", VLBERT / "config.yaml", verbose=False)
    assert len(report.mapped) == 67 and not report.dropped
    visual = _vlbert_visual(inputs, "vqa")
    text = dict(
        input_ids=outputs["vqa.text_input_ids"],  # `[CLS] question [SEP] [MASK] [SEP]` as the original builds it
        token_type_ids=outputs["vqa.text_token_type_ids"],
        attention_mask=outputs["vqa.text_mask"],
    )
    valid = visual["visual_attention_mask"].bool()
    embeddings = model.vlm_hf.visual_embeddings
    with torch.no_grad():
        box_embedding = box_sincos_embedding(visual["visual_boxes"], model.config.visual_location_dim)
        object_reps = embeddings.object_representations(visual["visual_embeds"], visual["visual_boxes"])
        out = model.vlm_hf(**text, **visual, output_hidden_states=True)
        logits = model(**text, **visual).logits
    obj_input = torch.cat([box_embedding, visual["visual_embeds"]], dim=-1)[valid]
    assert_close(obj_input, outputs["vqa.obj_downsample_input"], 2e-5)
    assert_close(object_reps[valid], outputs["vqa.obj_reps"][valid], 2e-5)
    sequence_mask = outputs["vqa.attention_mask"].bool()
    layout = lambda states: _vlbert_layout(states, text["attention_mask"].sum(1), valid.sum(1))[sequence_mask]  # noqa: E731
    assert_close(layout(out.hidden_states[0]), outputs["vqa.embedding_output"][sequence_mask], 2e-5)
    for index, states in enumerate(out.hidden_states[1:]):
        assert_close(layout(states), outputs["vqa.encoder_layers"][index][sequence_mask], 2e-5, f"layer {index}")
    assert_close(layout(out.last_hidden_state), outputs["vqa.sequence_output"][sequence_mask], 2e-5)
    text_width = text["input_ids"].shape[1]
    objects = out.last_hidden_state[:, text_width : text_width + valid.shape[1]]
    assert_close(objects[valid], outputs["vqa.object_hidden"][valid], 2e-5)
    answer = out.last_hidden_state[torch.arange(3), outputs["vqa.answer_position"]]
    assert_close(answer, outputs["vqa.answer_hidden"], 2e-5)
    assert_close(logits, outputs["vqa.label_logits"], 2e-5)


@needs_fixtures
def test_vlbert_pretraining_conversion_reproduces_every_saved_output(vlbert_data):
    inputs, outputs = vlbert_data
    model, report = convert_vlbert(VLBERT / "pretrain.bin", VLBERT / "config_pretrain.yaml", verbose=False)
    assert report.dropped == {"vlbert.mlm_head.predictions.decoder.weight": "tied to vlbert.word_embeddings.weight"}
    visual = _vlbert_visual(inputs, "pretrain")
    text, masked_regions = inputs["pretrain.text"], inputs["pretrain.mvrc_ops"].bool()
    text_mask = (text > 0).long()
    mlm_labels = inputs["pretrain.mlm_labels"].masked_fill(inputs["pretrain.mlm_labels"] == -1, -100)
    aux, aux_labels = inputs["pretrain.aux_text"], inputs["pretrain.aux_mlm_labels"]
    aux_mask = (aux > 0).long()
    with torch.no_grad():
        context = model.vlm_hf.visual_embeddings.object_representations(
            visual["visual_embeds"], visual["visual_boxes"], masked_regions
        )
        out = model(
            input_ids=text,
            attention_mask=text_mask,
            **visual,
            visual_feature_mask=masked_regions,
            labels=mlm_labels,
            region_labels=inputs["pretrain.mvrc_labels"],
            output_hidden_states=True,
        )
        all_text_logits = model(input_ids=text, attention_mask=text_mask, **visual, visual_feature_mask=masked_regions)
        aux_out = model.vlm_hf.encode_text(aux, attention_mask=aux_mask, output_hidden_states=True)
        aux_logits = model.cls.predictions(aux_out.last_hidden_state[:, : aux.shape[1]])
    valid = visual["visual_attention_mask"].bool()
    assert_close(context[valid], outputs["pretrain.obj_reps"][valid], 2e-5)
    sequence_mask = outputs["pretrain.attention_mask"][:3].bool()
    layout = _vlbert_layout(out.hidden_states[-1], text_mask.sum(1), valid.sum(1))
    assert_close(layout[sequence_mask], outputs["pretrain.sequence_output"][:3][sequence_mask], 2e-5)
    text_valid = text_mask.bool()
    assert_close(all_text_logits.prediction_logits[text_valid], outputs["pretrain.mlm_logits_wvc"][text_valid], 2e-5)
    assert_close(out.region_logits, outputs["pretrain.mvrc_logits"][masked_regions], 2e-5)
    assert_close(out.mlm_loss, outputs["pretrain.mlm_loss_wvc"], 2e-5)
    assert_close(out.mrc_loss, outputs["pretrain.mvrc_loss"], 2e-5)
    # The text-only corpus rows: the learned text-only visual embedding, [END] at position (length + 1).
    aux_valid = aux_mask.bool()
    aux_layout = torch.zeros(2, outputs["pretrain.sequence_output"].shape[1], aux_out.last_hidden_state.shape[-1])
    for row, length in enumerate(aux_mask.sum(1).tolist()):
        aux_layout[row, : length + 1] = aux_out.last_hidden_state[row, list(range(length)) + [aux.shape[1]]]
    aux_sequence_mask = outputs["pretrain.attention_mask"][3:].bool()
    assert_close(aux_layout[aux_sequence_mask], outputs["pretrain.sequence_output"][3:][aux_sequence_mask], 2e-5)
    assert_close(aux_logits[aux_valid], outputs["pretrain.mlm_logits_aux"][:, : aux.shape[1]][aux_valid], 2e-5)
    aux_loss = torch.nn.functional.cross_entropy(aux_logits.flatten(0, 1), aux_labels.flatten(), ignore_index=-1)
    assert_close(aux_loss, outputs["pretrain.mlm_loss_aux"], 2e-5)


@needs_fixtures
def test_vlbert_end_to_end_checkpoints_report_and_skip_the_detector():
    checkpoint = torch.load(VLBERT / "vqa.bin", weights_only=True)
    checkpoint["state_dict"]["module.image_feature_extractor.backbone.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    checkpoint["state_dict"]["module.image_feature_extractor.head.0.layer4.0.conv1.weight"] = torch.zeros(2, 2)
    checkpoint["optimizer"] = {"state": {}}
    _, report = convert_vlbert(checkpoint, VLBERT / "config.yaml", verbose=False)
    assert set(report.dropped) == {
        "image_feature_extractor.backbone.conv1.weight",
        "image_feature_extractor.head.0.layer4.0.conv1.weight",
    }
    assert "Fast R-CNN" in report.summary()


# -- full-size releases: every key of keys_*.tsv is accounted for ------------------------------------------------------


def _read_key_listing(path: Path, model_name: str | None = None) -> tuple[dict[str, torch.Size], list[tuple]]:
    """(key -> shape, tied pairs) of a keys_*.tsv listing (UNITER: `AxB`, one model per row; VL-BERT: `[A, B]`)."""
    shapes, tied = {}, []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        columns = line.split("\t")
        if model_name is not None and columns[2] != model_name:
            continue
        shapes[columns[0]] = torch.Size(int(size) for size in re.findall(r"\d+", columns[1]))
        marker = columns[-1]
        if marker.startswith("tied:"):
            tied.append((marker.removeprefix("tied:"), columns[0]))
    return shapes, tied


def _zero_state_dict(shapes, tied_keys) -> dict[str, torch.Tensor]:
    """Zeros for the tied tensors (the converter compares them); shape-only meta tensors for the rest (no memory)."""
    return {
        key: torch.zeros(shape) if key in tied_keys else torch.empty(shape, device="meta")
        for key, shape in shapes.items()
    }


@needs_fixtures
@pytest.mark.parametrize("size", ["base", "large"])
@pytest.mark.parametrize(
    "original, head",
    [
        ("UniterForPretraining", VlmHfForPreTraining),
        ("UniterForVisualQuestionAnswering", VlmHfForQuestionAnswering),
        ("UniterForImageTextRetrieval", VlmHfForImageTextRetrieval),
    ],
)
def test_full_size_uniter_key_listings_convert_completely(size, original, head):
    shapes, _ = _read_key_listing(UNITER / f"keys_{size}.tsv", original)
    tied = {
        "uniter.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.weight",
        "uniter.img_embeddings.img_linear.weight",
        "feat_regress.weight",
    }
    state_dict = _zero_state_dict(shapes, tied)
    config = uniter_config(state_dict, {"num_attention_heads": {"base": 12, "large": 16}[size]})
    assert config.preset == f"uniter-{size}" and config.vocab_size == 28996
    assert uniter_head_class(state_dict) is head
    with torch.device("meta"):
        model = head(config)
    _, report = convert_uniter_state_dict(state_dict, model)  # raises on anything unaccounted
    assert len(report.mapped) + len(report.dropped) == len(shapes)
    assert set(report.missing) <= {"text_projection.weight", "image_projection.weight", "logit_scale"}


@needs_fixtures
@pytest.mark.parametrize("listing", ["keys_base.tsv", "keys_base_pretrain.tsv"])
def test_full_size_vlbert_key_listings_convert_completely(listing):
    shapes, tied = _read_key_listing(VLBERT / listing)
    state_dict = {"state_dict": _zero_state_dict(shapes, {key for pair in tied for key in pair})}
    unwrapped = {key.removeprefix("module."): value for key, value in state_dict["state_dict"].items()}
    with pytest.warns(UserWarning, match="No num_attention_heads"):  # the one size the tensors do not show
        config = vlbert_config(unwrapped)
    assert config.num_attention_heads == 12
    assert (config.visual_feature_dim, config.visual_location_dim, config.hidden_size) == (2048, 2048, 768)
    with torch.device("meta"):
        model = vlbert_head_class(unwrapped)(config)
    _, report = convert_vlbert_state_dict(state_dict, model)
    assert len(report.mapped) + len(report.dropped) == len(shapes)


# -- transformers' VisualBERT: every VisualBert* class agrees within 1e-5 --------------------------------------------


@pytest.fixture(scope="module")
def visualbert_setup():
    config = transformers.VisualBertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        visual_embedding_dim=24,
        max_position_embeddings=40,
        num_labels=5,
    )
    generator = torch.Generator().manual_seed(0)
    text_mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2, [1] * 4 + [0] * 4])
    inputs = dict(
        input_ids=torch.randint(1, 99, (3, 8), generator=generator) * text_mask,
        attention_mask=text_mask,
        token_type_ids=torch.tensor([[0] * 3 + [1] * 5] * 3),
        visual_embeds=torch.randn(3, 5, 24, generator=generator),
        visual_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1] * 5]),
    )
    return config, inputs


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (LayerNorms and biases included), so a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.mark.parametrize(
    "name",
    ["VisualBertModel", "VisualBertForPreTraining", "VisualBertForQuestionAnswering", "VisualBertForVisualReasoning"],
)
def test_visualbert_classes_convert_with_identical_outputs(visualbert_setup, name):
    config, inputs = visualbert_setup
    source = _randomised(getattr(transformers, name)(config))
    model, _ = convert_visualbert(source, verbose=False)
    with torch.no_grad():
        expected, actual = source(**inputs), model(**inputs)
    if name == "VisualBertModel":
        real = torch.cat([inputs["attention_mask"], inputs["visual_attention_mask"]], dim=1).bool()
        assert_close(actual.last_hidden_state[real], expected.last_hidden_state[real], 1e-5)
        assert_close(actual.pooler_output, expected.pooler_output, 1e-5)
    elif name == "VisualBertForPreTraining":
        text = inputs["attention_mask"].bool()
        assert_close(actual.prediction_logits[text], expected.prediction_logits[:, :8][text], 1e-5)
        # VisualBERT: index 0 = "matches"; vlm_hf: index 1.
        assert_close(actual.itm_logits.flip(-1), expected.seq_relationship_logits, 1e-5)
    else:
        assert_close(actual.logits, expected.logits, 1e-5)


def test_visualbert_folder_converts_into_a_complete_loadable_folder(visualbert_setup, tmp_path, tokenizer):
    config, inputs = visualbert_setup
    config = transformers.VisualBertConfig(**{**config.to_dict(), "vocab_size": len(tokenizer)})
    source = _randomised(transformers.VisualBertForQuestionAnswering(config))
    source.save_pretrained(tmp_path / "visualbert")
    tokenizer.save_pretrained(tmp_path / "visualbert")
    cli_main(["convert", "visualbert", str(tmp_path / "visualbert"), "--output-dir", str(tmp_path / "converted")])
    files = {path.name for path in (tmp_path / "converted").iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "README.md"} <= files
    model = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "converted").eval()
    assert isinstance(model, VlmHfForQuestionAnswering) and model.config.preset == "visualbert-base"
    card = (tmp_path / "converted" / "README.md").read_text()
    assert "Converted from transformers' VisualBertForQuestionAnswering" in card
    with torch.no_grad():
        assert_close(model(**inputs).logits, source(**inputs).logits, 1e-5)


# -- BERT text tower -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_setup():
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    text = dict(
        input_ids=torch.randint(1, 99, (3, 9), generator=torch.Generator().manual_seed(2)),
        attention_mask=torch.tensor([[1] * 9, [1] * 7 + [0] * 2, [1] * 3 + [0] * 6]),
        token_type_ids=torch.tensor([[0] * 4 + [1] * 5] * 3),
    )
    return config, text


def test_bert_text_tower_text_only_forward_equals_bert(bert_setup):
    config, text = bert_setup
    bert = _randomised(transformers.BertModel(config))
    model, _ = convert_bert_text_tower(
        bert, preset="uniter-tiny", vision_backbone=None, visual_feature_dim=16, verbose=False
    )
    with torch.no_grad():
        expected, actual = bert(**text), model.encode_text(**text)
    real = text["attention_mask"].bool()
    assert_close(actual.last_hidden_state[real], expected.last_hidden_state[real], 1e-5)
    assert_close(actual.pooler_output, expected.pooler_output, 1e-5)


def test_bert_pretraining_checkpoint_with_legacy_layer_norm_names_fills_the_mlm_head(bert_setup):
    config, text = bert_setup
    bert = _randomised(transformers.BertForPreTraining(config))
    # Old TensorFlow ports name LayerNorm parameters gamma / beta.
    legacy = {
        re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", key)): value
        for key, value in bert.state_dict().items()
    }
    assert any(key.endswith(".gamma") for key in legacy)
    vlm_config = VlmHfConfig.from_preset(
        "visualbert-tiny",
        vocab_size=99,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
        vision_backbone=None,
        visual_feature_dim=16,
    )
    model = VlmHfForPreTraining(vlm_config)
    converted, report = convert_bert_state_dict(legacy, model)
    model.load_state_dict(converted, strict=False)
    model.eval()
    assert "cls.seq_relationship.weight" in report.dropped  # next-sentence prediction is not image-text matching
    with torch.no_grad():
        expected = bert(**text).prediction_logits
        states = model.vlm_hf.encode_text(**text).last_hidden_state
        actual = model.cls.predictions(states)
    real = text["attention_mask"].bool()
    assert_close(actual[real], expected[real], 1e-5)


# -- torchvision ResNet vision tower ---------------------------------------------------------------------------------


def test_torchvision_resnet_fills_the_vision_tower():
    resnet = _randomised_batch_norm(torchvision.models.resnet18(weights=None).eval())
    model = VlmHfModel(VlmHfConfig.from_preset("uniter-tiny")).eval()
    report = load_resnet_vision_tower(model, resnet.state_dict(), verbose=False)
    assert set(report.dropped) == {"fc.weight", "fc.bias"}
    assert all(key.startswith("vision_backbone.") for key in report.mapped.values())
    pixels = torch.randn(1, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(resnet.children())[:-2])
    with torch.no_grad():
        assert_close(model.vision_backbone(pixels), trunk(pixels), 1e-5)
    with pytest.raises(ValueError, match=r"layer1\.2\.conv1\.weight"):  # a ResNet-34 has a third block
        load_resnet_vision_tower(model, torchvision.models.resnet34(weights=None).state_dict(), verbose=False)


def _randomised_batch_norm(model):
    """Random running statistics, so that a missed buffer shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


# -- strictness ------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_model():
    return VlmHfModel(VlmHfConfig.from_preset("uniter-tiny", vision_backbone=None, visual_feature_dim=16))


RULES = [(r"embeddings\.(.+)", r"embeddings.\1")]
LEFT = [(r"(?!embeddings\.).*", "not in this test's source")]


def _embedding_source(model):
    return {key: value.clone() for key, value in model.state_dict().items() if key.startswith("embeddings.")}


def test_unknown_source_keys_are_an_error_naming_them(small_model):
    source = {**_embedding_source(small_model), "mystery.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"neither converted nor deliberately dropped.*mystery\.weight"):
        map_state_dict(source, small_model, RULES, expected_missing=LEFT)
    _, report = map_state_dict(source, small_model, RULES, dropped=[("mystery.*", "test")], expected_missing=LEFT)
    assert report.dropped == {"mystery.weight": "test"}


def test_shape_mismatch_is_an_error_naming_the_key(small_model):
    source = _embedding_source(small_model)
    source["embeddings.position_embeddings.weight"] = torch.zeros(7, 32)
    with pytest.raises(ValueError, match=r"'embeddings\.position_embeddings\.weight' has shape \(7, 32\)"):
        map_state_dict(source, small_model, RULES, expected_missing=LEFT)


def test_unaccounted_target_weights_and_untied_duplicates_are_errors(small_model):
    with pytest.raises(ValueError, match=r"get no value.*encoder\.layer\.0"):
        map_state_dict(_embedding_source(small_model), small_model, RULES)
    source = {**_embedding_source(small_model), "decoder.weight": torch.ones(1024, 32)}
    tie = [("embeddings.word_embeddings.weight", "decoder.weight")]
    with pytest.raises(ValueError, match="should be tied"):
        map_state_dict(source, small_model, RULES, tied_in_source=tie, expected_missing=LEFT)


@needs_fixtures
def test_tied_target_weights_stay_tied_after_conversion():
    model, _ = convert_uniter(UNITER / "pretrain.bin", UNITER / "config.json", verbose=False)
    with torch.no_grad():
        model.vlm_hf.embeddings.word_embeddings.weight.add_(1.0)
    assert torch.equal(model.cls.predictions.decoder.weight, model.vlm_hf.embeddings.word_embeddings.weight)
    # UNITER's feature regression decodes with the transposed image projection: one parameter, no copy.
    assert model.mvf_head.decoder is None


@needs_fixtures
def test_convert_command_writes_a_folder_that_reproduces_the_original(uniter_data, tmp_path, capsys):
    code = cli_main(
        [
            "convert",
            "uniter",
            str(UNITER / "vqa.bin"),
            "--config",
            str(UNITER / "config.json"),
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0 and "72 keys mapped, 0 dropped" in capsys.readouterr().out
    model = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert model.config.preset == "uniter-base" and model.config.num_hidden_layers == 3
    with torch.no_grad():
        assert_close(model(**_uniter_inputs(uniter_data)).logits, uniter_data[1]["vqa.answer_scores"], 1e-5)
