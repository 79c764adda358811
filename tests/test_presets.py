"""Presets of the single-stream originals (VisualBERT, UNITER, VL-BERT): configs, every head from pixels, packing."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from vlm_hf import (
    VlmHfConfig,
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfForVisualReasoning,
    VlmHfModel,
)
from vlm_hf.configuration_vlm_hf import PRESETS

SINGLE_STREAM_TINY = ["visualbert-tiny", "uniter-tiny", "vlbert-tiny"]


# -- configuration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_config_that_records_its_name(name, tmp_path):
    config = VlmHfConfig.from_preset(name)
    assert config.preset == name
    config.save_pretrained(tmp_path)
    assert VlmHfConfig.from_pretrained(tmp_path).preset == name


@pytest.mark.parametrize(
    "name, expected",
    [
        # The originals' own numbers (released configs; keys_*.tsv of the fixtures give the vocabulary sizes).
        ("visualbert-base", dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, visual_feature_dim=2048)),
        ("uniter-base", dict(vocab_size=28996, hidden_size=768, num_attention_heads=12, visual_location_dim=7)),
        ("uniter-large", dict(vocab_size=28996, hidden_size=1024, num_hidden_layers=24, intermediate_size=4096)),
        ("vlbert-base", dict(vocab_size=30522, type_vocab_size=3, visual_token_type_id=2, visual_location_dim=2048)),
    ],
)
def test_base_presets_have_the_original_hyperparameters(name, expected):
    config = VlmHfConfig.from_preset(name)
    assert {key: getattr(config, key) for key in expected} == expected
    assert (config.hidden_act, config.layer_norm_eps) == ("gelu", 1e-12)


def test_from_preset_applies_overrides_and_rejects_unknown_names():
    config = VlmHfConfig.from_preset("uniter-base", num_hidden_layers=3, num_labels=7)
    assert (config.num_hidden_layers, config.num_labels, config.vocab_size) == (3, 7, 28996)
    with pytest.raises(ValueError, match="Unknown preset 'uniter-huge'.*uniter-base"):
        VlmHfConfig.from_preset("uniter-huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(visual_embedding_type="lxmert"), "visual_embedding_type must be one of"),
        (dict(visual_embedding_type="uniter", visual_location_dim=5), "needs visual_location_dim=7"),
        (dict(visual_embedding_type="vlbert", visual_location_dim=12, type_vocab_size=3), "multiple of 8"),
        (dict(visual_embedding_type="vlbert", visual_location_dim=16, tie_visual_regression_weights=True), "tie_"),
        (dict(answer_head="bilinear"), "answer_head must be one of"),
        (dict(answer_pooling="mean"), "answer_pooling must be one of"),
        (dict(num_region_classes=-1), "num_region_classes"),
    ],
)
def test_config_rejects_bad_single_stream_values(overrides, message):
    # huggingface_hub's strict dataclasses wrap the ValueError of validate_architecture.
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        VlmHfConfig(vision_backbone="resnet18", hidden_size=32, num_hidden_layers=1, **overrides)


# -- every preset runs from pixels with every head ---------------------------------------------------------------------


def _inputs(config, num_texts=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (num_texts, 8), generator=generator)
    attention_mask = torch.ones(num_texts, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return dict(
        pixel_values=torch.randn(2, 3, 32, 32, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
        image_index=torch.tensor([0, 1, 1])[:num_texts],
    )


def _head_labels(head, config, inputs):
    num_texts, num_visual = inputs["input_ids"].shape[0], config.num_visual_tokens
    if head is VlmHfForPreTraining:
        visual_mask = torch.zeros(num_texts, num_visual, dtype=torch.bool)
        visual_mask[:, 1] = True
        labels = dict(
            labels=torch.where(torch.arange(8) == 2, inputs["input_ids"], -100),
            itm_labels=torch.tensor([1, 0, 1]),
            visual_feature_mask=visual_mask,
        )
        if config.num_region_classes:
            labels["region_labels"] = torch.randint(0, config.num_region_classes, (num_texts, num_visual))
        return labels
    if head is VlmHfForQuestionAnswering:
        return dict(labels=torch.rand(num_texts, config.num_labels))
    if head is VlmHfForVisualReasoning:
        return dict(labels=torch.tensor([0, 1, 1]))
    if head is VlmHfForImageTextRetrieval:
        return dict(return_loss=True)
    return {}


@pytest.mark.parametrize("name", SINGLE_STREAM_TINY)
def test_tiny_presets_train_every_head_from_pixels(name):
    config = VlmHfConfig.from_preset(name, num_labels=4)
    inputs = _inputs(config)
    heads = (VlmHfModel, VlmHfForPreTraining, VlmHfForQuestionAnswering, VlmHfForVisualReasoning)
    for head in (*heads, VlmHfForImageTextRetrieval):
        model = head(config)
        outputs = model(**inputs, **_head_labels(head, config, inputs))
        if head is VlmHfModel:
            extra = 1 if name == "vlbert-tiny" else 0  # VL-BERT's [END]
            assert outputs.last_hidden_state.shape == (3, 8 + config.num_visual_tokens + extra, config.hidden_size)
            continue
        assert torch.isfinite(outputs.loss), (name, head.__name__)
        outputs.loss.backward()
        # The text-side and the visual-side parameters both learn from the loss.
        assert model.vlm_hf.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        visual_grads = [p.grad for p in model.vlm_hf.visual_embeddings.parameters() if p.grad is not None]
        assert visual_grads and sum(g.abs().sum() for g in visual_grads) > 0, (name, head.__name__)
        if head is VlmHfForQuestionAnswering:
            _check_padding_invariance(model.eval(), inputs)


def _check_padding_invariance(model, inputs):
    """Text 1 (padded in the batch) gets the same answer scores alone, without padding."""
    with torch.no_grad():
        batched = model(**inputs).logits
        alone = model(
            pixel_values=inputs["pixel_values"][1:],
            input_ids=inputs["input_ids"][1:2, :5],
            attention_mask=inputs["attention_mask"][1:2, :5],
        ).logits
    torch.testing.assert_close(alone, batched[1:2], atol=1e-5, rtol=1e-5)


def test_vlbert_reads_the_whole_image_as_its_first_visual_token():
    config = VlmHfConfig.from_preset("vlbert-tiny")
    model = VlmHfModel(config).eval()
    inputs = {**_inputs(config), "pixel_values": torch.randn(2, 3, 96, 96)}  # a 3x3 feature map: distinct cells
    with torch.no_grad():
        outputs = model(**inputs)
    features = outputs.visual_features
    assert not torch.allclose(features[:, 1], features[:, 2])
    assert features.shape[1] == config.visual_grid**2 + 1 == config.num_visual_tokens
    torch.testing.assert_close(features[:, 0], features[:, 1:].mean(1))


def test_packing_gives_the_unpacked_results_at_real_tokens():
    packed_config = VlmHfConfig.from_preset("uniter-tiny", vision_backbone=None, visual_feature_dim=12)
    model = VlmHfModel(packed_config).eval()
    generator = torch.Generator().manual_seed(3)
    text_mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8, [1] * 3 + [0] * 5])
    visual_mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    inputs = dict(
        input_ids=torch.randint(5, 1000, (3, 8), generator=generator) * text_mask,
        attention_mask=text_mask,
        visual_embeds=torch.randn(3, 5, 12, generator=generator),
        visual_boxes=torch.tensor([0.1, 0.2, 0.6, 0.9]).expand(3, 5, 4),
        visual_attention_mask=visual_mask,
    )
    with torch.no_grad():
        packed = model(**inputs, output_hidden_states=True, output_attentions=True)
        model.config.pack_text_and_visual_tokens = False
        unpacked = model(**inputs, output_hidden_states=True)
    real = torch.cat([text_mask, visual_mask], dim=1).bool()
    torch.testing.assert_close(packed.last_hidden_state[real], unpacked.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.pooler_output, unpacked.pooler_output, atol=1e-5, rtol=1e-5)
    assert len(packed.hidden_states) == len(unpacked.hidden_states)
    # The Transformer ran over the longest example's real tokens only (5 + 6), not 8 + 5 positions.
    assert packed.attentions[0].shape[-1] == int(real.sum(1).max()) == 11
