"""Behaviour of the models: heads, invariances, gradients, masking, input validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import HEADS, pixel_inputs, region_inputs, text_inputs, tiny_config, tiny_features_config, train_steps

from vlm_hf import (
    VlmHfConfig,
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfModel,
)


def tensors_of(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


# -- configuration ----------------------------------------------------------------------------------------------------


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(
        vision_backbone="resnet50",
        freeze_vision=True,
        visual_grid=3,
        visual_location_dim=7,
        vision_pretrained="/some/weights.pth",
        num_labels=2,
        id2label={0: "yes", 1: "no"},
    )
    config.save_pretrained(tmp_path)
    loaded = VlmHfConfig.from_pretrained(tmp_path)
    for key, value in config.to_dict().items():
        if key not in ("_name_or_path", "transformers_version"):
            assert loaded.to_dict()[key] == value, key
    assert loaded.visual_feature_dim == 2048
    assert loaded.num_visual_tokens == 9
    assert loaded.id2label == {0: "yes", 1: "no"}


def test_config_derives_bert_proportions():
    config = VlmHfConfig(vision_backbone="resnet18", hidden_size=256, num_hidden_layers=4, num_labels=10)
    assert (config.num_attention_heads, config.intermediate_size, config.visual_feature_dim) == (4, 1024, 512)
    assert VlmHfConfig().vision_backbone == "resnet101"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vision_backbone": "resnet99"}, "vision_backbone"),
        ({"vision_backbone": None}, "visual_feature_dim is required"),
        ({"visual_feature_dim": 100}, "does not match"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        ({"visual_location_dim": 6}, "visual_location_dim"),
        ({"visual_grid": 0}, "visual_grid"),
        ({"vision_feature_layer": "layer5"}, "vision_feature_layer must be one of"),
        ({"vision_backbone": "vgg11", "vision_feature_layer": "layer2"}, "needs a ResNet-family"),
        ({"vision_feature_layer": "layer3", "visual_feature_dim": 512}, "does not match the 256 channels"),
    ],
)
def test_config_rejects_inconsistent_values(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


# -- forward shapes and options ----------------------------------------------------------------------------------------


def test_base_model_shapes_from_pixels():
    model = VlmHfModel(tiny_config()).eval()
    out = model(pixel_values=pixel_inputs(), **text_inputs(), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 7 + 4, 32)
    assert out.pooler_output.shape == (2, 32)
    assert out.visual_features.shape == (2, 4, 512)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 11, 11)
    # Attention weights of padded text tokens are exactly zero.
    assert out.attentions[0][1, :, :, 5:7].abs().max() == 0


def test_return_dict_false_gives_tuple():
    model = VlmHfModel(tiny_config()).eval()
    out = model(pixel_values=pixel_inputs(), **text_inputs(), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, 11, 32)


@pytest.mark.parametrize("backbone", ["vgg11", "resnet50"])
def test_other_backbones_run_end_to_end(backbone):
    model = VlmHfForQuestionAnswering(tiny_config(vision_backbone=backbone)).eval()
    out = model(pixel_values=pixel_inputs(size=64), **text_inputs())
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()


def test_grid_of_one_is_a_single_pooled_vector():
    model = VlmHfModel(tiny_config(visual_grid=1)).eval()
    pixels = pixel_inputs()
    out = model(pixel_values=pixels, **text_inputs())
    assert out.visual_features.shape == (2, 1, 512)
    pooled = model.vision_backbone(pixels).mean(dim=(2, 3))
    torch.testing.assert_close(out.visual_features[:, 0], pooled)


def test_eager_and_sdpa_agree():
    # Large weights make attention peaked, so that a wrong scale or mask could not hide in near-uniform weights.
    config = tiny_config(initializer_range=0.2)
    sdpa = VlmHfForPreTraining(config).eval()
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    inputs = dict(pixel_values=pixel_inputs(), **text_inputs())
    for key, value in tensors_of(sdpa(**inputs)).items():
        torch.testing.assert_close(eager(**inputs)[key], value, atol=1e-5, rtol=1e-5)


# -- invariances -------------------------------------------------------------------------------------------------------


def test_padded_text_tokens_do_not_change_real_outputs():
    model = VlmHfModel(tiny_config(initializer_range=0.2)).eval()
    pixels = pixel_inputs(num_images=1)
    short = text_inputs(batch_size=1, length=5, pad_last=False)
    padded = {
        "input_ids": F.pad(short["input_ids"], (0, 4)),
        "attention_mask": F.pad(short["attention_mask"], (0, 4)),
    }
    a = model(pixel_values=pixels, **short)
    b = model(pixel_values=pixels, **padded)
    torch.testing.assert_close(b.last_hidden_state[:, :5], a.last_hidden_state[:, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.last_hidden_state[:, 9:], a.last_hidden_state[:, 5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-5)


def test_masked_visual_tokens_do_not_change_real_outputs():
    model = VlmHfModel(tiny_features_config(initializer_range=0.2)).eval()
    text = text_inputs(batch_size=1, pad_last=False)
    regions = region_inputs(num_images=1, num_regions=3)
    extra = region_inputs(num_images=1, num_regions=2, seed=9)
    padded = {k: torch.cat([regions[k], extra[k]], dim=1) for k in regions}
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    a = model(**text, **regions)
    b = model(**text, **padded, visual_attention_mask=mask)
    torch.testing.assert_close(b.last_hidden_state[:, :10], a.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS[1:3])
def test_example_alone_equals_example_in_batch(head):
    model = head(tiny_config(initializer_range=0.2)).eval()
    pixels = pixel_inputs(num_images=3)
    text = text_inputs(batch_size=3)
    batched = tensors_of(model(pixel_values=pixels, **text))
    alone = tensors_of(model(pixel_values=pixels[2:], **{k: v[2:] for k, v in text.items()}))
    for key, value in alone.items():
        torch.testing.assert_close(batched[key][2:], value, atol=1e-5, rtol=1e-5)


def test_image_index_runs_each_image_once_and_matches_repeated_images():
    model = VlmHfForQuestionAnswering(tiny_config()).eval()
    calls = []
    model.vlm_hf.vision_backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = pixel_inputs(num_images=2)
    text = text_inputs(batch_size=5)
    image_index = torch.tensor([0, 0, 1, 1, 1])
    shared = model(pixel_values=images, image_index=image_index, **text)
    repeated = model(pixel_values=images[image_index], **text)
    assert calls == [2, 5]
    torch.testing.assert_close(shared.logits, repeated.logits, atol=1e-5, rtol=1e-5)


# -- heads -------------------------------------------------------------------------------------------------------------


def test_pretraining_scores_only_masked_tokens_with_the_full_head():
    model = VlmHfForPreTraining(tiny_config()).eval()
    inputs = dict(pixel_values=pixel_inputs(), **text_inputs())
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 5, 6, 7
    full = model(**inputs).prediction_logits
    assert full.shape == (2, 7, 99)
    out = model(**inputs, labels=labels)
    masked = labels != -100
    assert out.prediction_logits.shape == (3, 99)
    torch.testing.assert_close(out.prediction_logits, full[masked], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mlm_loss, F.cross_entropy(full[masked], labels[masked]), atol=1e-5, rtol=1e-5)
    assert out.loss == out.mlm_loss and out.itm_loss is None and out.mvf_loss is None


def test_pretraining_reports_each_objective_and_their_sum():
    model = VlmHfForPreTraining(tiny_config()).eval()
    inputs = dict(pixel_values=pixel_inputs(), **text_inputs())
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = 11
    visual_mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    out = model(**inputs, labels=labels, itm_labels=torch.tensor([1, 0]), visual_feature_mask=visual_mask)
    torch.testing.assert_close(out.loss, out.mlm_loss + out.itm_loss + out.mvf_loss)
    assert out.itm_logits.shape == (2, 2)
    assert out.visual_predictions.shape == (3, 512)
    # The regression targets are the features before masking, and masked tokens really see zeros.
    unmasked = model.vlm_hf(**inputs)
    expected = F.mse_loss(out.visual_predictions, unmasked.visual_features[visual_mask])
    torch.testing.assert_close(out.mvf_loss, expected)
    masked_run = model.vlm_hf(**inputs, visual_feature_mask=visual_mask)
    assert not torch.allclose(masked_run.last_hidden_state, unmasked.last_hidden_state)


def test_mlm_decoder_is_tied_to_word_embeddings(tmp_path):
    model = VlmHfForPreTraining(tiny_config())
    assert model.cls.predictions.decoder.weight is model.vlm_hf.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = VlmHfForPreTraining.from_pretrained(tmp_path)
    assert loaded.cls.predictions.decoder.weight is loaded.vlm_hf.embeddings.word_embeddings.weight


def test_resize_token_embeddings_keeps_the_tie_and_accepts_new_ids():
    model = VlmHfForPreTraining(tiny_config()).eval()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.cls.predictions.decoder.weight is model.vlm_hf.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias.shape == (120,)
    ids = torch.tensor([[1, 110, 119]])
    out = model(pixel_values=pixel_inputs(num_images=1), input_ids=ids)
    assert out.prediction_logits.shape == (1, 3, 120)


def test_question_answering_accepts_soft_scores_or_answer_ids():
    model = VlmHfForQuestionAnswering(tiny_config()).eval()
    inputs = dict(pixel_values=pixel_inputs(), **text_inputs())
    by_id = model(**inputs, labels=torch.tensor([1, 3]))
    soft = model(**inputs, labels=F.one_hot(torch.tensor([1, 3]), 5).float())
    torch.testing.assert_close(by_id.loss, soft.loss)
    expected = (
        F.binary_cross_entropy_with_logits(soft.logits, F.one_hot(torch.tensor([1, 3]), 5).float(), reduction="sum") / 2
    )
    torch.testing.assert_close(soft.loss, expected)


def test_retrieval_ranks_every_image_against_every_text():
    model = VlmHfForImageTextRetrieval(tiny_config()).eval()
    images = pixel_inputs(num_images=2)
    text = text_inputs(batch_size=3)
    out = model(
        pixel_values=images,
        **text,
        image_index=torch.tensor([0, 1, 1]),
        return_loss=True,
        labels=torch.tensor([1, 1, 0]),
    )
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    torch.testing.assert_close(out.logits_per_image, out.logits_per_text.t())
    text_embeds = F.normalize(model.get_text_features(**text), dim=-1)
    image_embeds = F.normalize(model.get_image_features(pixel_values=images), dim=-1)
    torch.testing.assert_close(out.logits_per_text, model.logit_scale.exp() * text_embeds @ image_embeds.t())
    assert out.itm_logits.shape == (3, 2)
    joint = model.vlm_hf(pixel_values=images, **text, image_index=torch.tensor([0, 1, 1]))
    torch.testing.assert_close(out.itm_logits, model.itm_head(joint.pooler_output), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, out.contrastive_loss + out.itm_loss)
    # Text embeddings do not depend on which images are in the batch.
    alone = model(pixel_values=images[:1], **text)
    torch.testing.assert_close(alone.text_embeds, out.text_embeds, atol=1e-5, rtol=1e-5)
    assert alone.itm_logits is None


def test_retrieval_runs_the_backbone_once_per_forward():
    model = VlmHfForImageTextRetrieval(tiny_config()).eval()
    calls = []
    model.vlm_hf.vision_backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model(pixel_values=pixel_inputs(num_images=2), **text_inputs(batch_size=2), return_loss=True)
    assert calls == [2]


def test_contrastive_loss_ignores_mismatched_pairs():
    model = VlmHfForImageTextRetrieval(tiny_config()).eval()
    images, text = pixel_inputs(num_images=2), text_inputs(batch_size=2)
    with_negative = model(pixel_values=images, **text, return_loss=True, labels=torch.tensor([1, 0]))
    logits = with_negative.logits_per_text
    # Only text 0 / image 0 is a positive pair.
    expected = (F.cross_entropy(logits[:1], torch.tensor([0])) + F.cross_entropy(logits.t()[:1], torch.tensor([0]))) / 2
    torch.testing.assert_close(with_negative.contrastive_loss, expected)


# -- training behaviour ------------------------------------------------------------------------------------------------


def full_training_batch(head, config):
    text = text_inputs(batch_size=2, vocab_size=config.vocab_size)
    batch = dict(pixel_values=pixel_inputs(), **text)
    if head is VlmHfForPreTraining:
        labels = torch.full_like(text["input_ids"], -100)
        labels[:, 1] = text["input_ids"][:, 1]
        batch.update(
            labels=labels,
            itm_labels=torch.tensor([1, 0]),
            visual_feature_mask=torch.tensor([[True, False, False, False], [False, False, True, False]]),
        )
    elif head is VlmHfForQuestionAnswering:
        batch.update(labels=torch.tensor([[0.0, 1.0, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.6]]))
    elif head is VlmHfForImageTextRetrieval:
        batch.update(labels=torch.tensor([1, 0]), return_loss=True)
    return batch


def loss_of(model, batch):
    out = model(**batch)
    return out.loss if "loss" in out else out.last_hidden_state.square().mean() + out.pooler_output.sum()


@pytest.mark.parametrize("head", HEADS)
def test_gradient_reaches_every_trainable_parameter(head):
    config = tiny_config()
    model = head(config).train()
    loss_of(model, full_training_batch(head, config)).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("head", [VlmHfForPreTraining, VlmHfForQuestionAnswering])
def test_gradient_checkpointing_gives_the_same_gradients(head):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = head(config).train()
    batch = full_training_batch(head, config)
    loss_of(model, batch).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # transformers renamed gradient_checkpointing_enable to activation_checkpointing_enable in v5.
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert all(layer.gradient_checkpointing for layer in model.vlm_hf.encoder.layer)
    loss_of(model, batch).backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("head", HEADS[1:])
def test_each_head_overfits_a_tiny_batch(head):
    config = tiny_features_config(
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
    )
    model = head(config).train()
    text = text_inputs(batch_size=4, seed=3)
    batch = dict(**region_inputs(num_images=4), **text)
    if head is VlmHfForPreTraining:
        labels = torch.full_like(text["input_ids"], -100)
        labels[:, 2] = text["input_ids"][:, 2]
        batch.update(
            input_ids=text["input_ids"].masked_fill(labels != -100, 3),
            labels=labels,
            itm_labels=torch.tensor([1, 0, 1, 0]),
        )
    elif head is VlmHfForQuestionAnswering:
        batch.update(labels=torch.tensor([0, 1, 2, 3]))
    else:
        batch.update(return_loss=True, labels=torch.tensor([1, 1, 1, 1]))
    first, last = train_steps(model, batch, steps=60, lr=2e-3)
    assert last < 0.05 * first
    if head is VlmHfForQuestionAnswering:
        assert model.eval()(**batch).logits.argmax(-1).tolist() == [0, 1, 2, 3]


def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics(tmp_path):
    model = VlmHfForQuestionAnswering(tiny_config(freeze_vision=True)).train()
    backbone = model.vlm_hf.vision_backbone
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    running_mean = backbone.bn1.running_mean.clone()
    model(**full_training_batch(VlmHfForQuestionAnswering, model.config)).loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    torch.testing.assert_close(backbone.bn1.running_mean, running_mean)
    model.save_pretrained(tmp_path)
    loaded = VlmHfForQuestionAnswering.from_pretrained(tmp_path).train()
    assert not loaded.vlm_hf.vision_backbone.training
    assert not any(p.requires_grad for p in loaded.vlm_hf.vision_backbone.parameters())


# -- bad input ---------------------------------------------------------------------------------------------------------


BAD_INPUTS = {
    "pixel rank": (dict(pixel_values=torch.randn(3, 64, 64)), "pixel_values"),
    "channel count": (dict(pixel_values=torch.randn(2, 1, 64, 64)), r"pixel_values.*\(num_images, 3, height, width\)"),
    "tiny image": (dict(pixel_values=torch.randn(2, 3, 8, 8)), "at least 32x32"),
    "batch sizes differ": (dict(pixel_values=torch.randn(3, 3, 64, 64)), "3 images for 2 texts"),
    "no visual input": ({}, "pixel_values.*visual_embeds"),
    "both visual inputs": (
        dict(pixel_values=torch.randn(2, 3, 64, 64), visual_embeds=torch.randn(2, 3, 512)),
        "exactly one",
    ),
    "visual_embeds width": (
        dict(visual_embeds=torch.randn(2, 3, 100)),
        r"visual_embeds.*\(num_images, num_regions, 512\)",
    ),
    "visual_embeds rank": (dict(visual_embeds=torch.randn(2, 512)), "visual_embeds"),
    "boxes outside [0, 1]": (
        dict(visual_embeds=torch.randn(2, 3, 512), visual_boxes=torch.full((2, 3, 4), 1.5)),
        r"visual_boxes.*\[0, 1\]",
    ),
    "boxes flipped": (
        dict(visual_embeds=torch.randn(2, 3, 512), visual_boxes=torch.tensor([0.5, 0.5, 0.1, 0.9]).expand(2, 3, 4)),
        "x2 >= x1",
    ),
    "boxes shape": (dict(visual_embeds=torch.randn(2, 3, 512), visual_boxes=torch.rand(2, 4, 4)), "visual_boxes"),
    "visual mask shape": (
        dict(visual_embeds=torch.randn(2, 3, 512), visual_attention_mask=torch.ones(2, 5)),
        "visual_attention_mask",
    ),
    "boxes with pixels": (
        dict(pixel_values=torch.randn(2, 3, 64, 64), visual_boxes=torch.rand(2, 4, 4)),
        "visual_boxes",
    ),
    "pixel visual mask shape": (
        dict(pixel_values=torch.randn(2, 3, 64, 64), visual_attention_mask=torch.ones(2, 9)),
        r"visual_attention_mask.*\(num_images, num_visual_tokens\)",
    ),
    "image_index range": (
        dict(pixel_values=torch.randn(2, 3, 64, 64), image_index=torch.tensor([0, 2])),
        "image_index",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_visual_input_is_a_clear_value_error(case):
    model = VlmHfModel(tiny_config()).eval()
    visual, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        model(**text_inputs(), **visual)


@pytest.mark.parametrize(
    "text, message",
    [
        (dict(input_ids=torch.tensor([[1, 2, 99]] * 2)), r"input_ids.*\[0, 98\]"),
        (dict(input_ids=torch.tensor([[1, -2, 3]] * 2)), "input_ids"),
        (dict(input_ids=torch.tensor([1, 2, 3])), r"input_ids.*\(batch_size, text_length\)"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)), "attention_mask"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), token_type_ids=torch.full((2, 3), 2)), "token_type_ids"),
        (dict(input_ids=torch.ones(2, 70, dtype=torch.long)), "max_position_embeddings"),
        ({}, "input_ids"),
    ],
)
def test_bad_text_input_is_a_clear_value_error(text, message):
    model = VlmHfModel(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixel_inputs(), **text)


def test_bad_labels_are_clear_value_errors():
    inputs = dict(pixel_values=pixel_inputs(), **text_inputs())
    qa = VlmHfForQuestionAnswering(tiny_config())
    with pytest.raises(ValueError, match="labels"):
        qa(**inputs, labels=torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        qa(**inputs, labels=torch.full((2, 5), 2.0))
    pretraining = VlmHfForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="itm_labels"):
        pretraining(**inputs, itm_labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels"):
        pretraining(**inputs, labels=torch.zeros(2, 3, dtype=torch.long))
    retrieval = VlmHfForImageTextRetrieval(tiny_config())
    with pytest.raises(ValueError, match="image_index"):
        retrieval(pixel_values=pixel_inputs(num_images=1), **text_inputs(), labels=torch.tensor([1, 0]))


def test_model_without_backbone_refuses_pixels():
    model = VlmHfModel(tiny_features_config())
    assert model.vision_backbone is None
    with pytest.raises(ValueError, match="visual_embeds"):
        model(pixel_values=pixel_inputs(), **text_inputs())


def test_bfloat16_model_takes_float32_inputs():
    model = VlmHfForQuestionAnswering(tiny_config()).eval().to(torch.bfloat16)
    out = model(pixel_values=pixel_inputs(), **text_inputs(), labels=torch.tensor([0, 4]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    features_model = VlmHfModel(tiny_features_config()).eval().to(torch.bfloat16)
    assert features_model(**region_inputs(), **text_inputs()).last_hidden_state.dtype == torch.bfloat16
