"""Two-stream fusions: ViLBERT's co-attention and the pooled fusions (add, multiply, concat, outer)."""

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
from vlm_hf.modeling_vlm_hf import VlmHfPooledFusion, two_stream_schedule

FUSIONS = ["co_attention", "add", "multiply", "concat", "outer"]
# A visual stream narrower than the text stream and a third width for co-attention, so that a size mix-up fails.
STREAMS = dict(
    visual_hidden_size=24,
    visual_num_hidden_layers=2,
    visual_num_attention_heads=2,
    visual_intermediate_size=40,
    fusion_hidden_size=16,
    fusion_num_attention_heads=2,
)


def two_stream_config(fusion="co_attention", features=True, **overrides) -> VlmHfConfig:
    make = tiny_features_config if features else tiny_config
    return make(fusion=fusion, **{**STREAMS, **overrides})


def no_dropout(**overrides):
    return dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)


# -- configuration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fusion": "bilinear"}, "fusion must be one of"),
        ({"visual_hidden_size": 24}, "only apply to the two-stream fusions"),
        ({"fusion_interaction_layers": 1}, "only apply to the two-stream fusions"),
        ({"visual_embedding_type": "vilbert"}, "visual_embedding_type='vilbert'"),
        ({"fusion": "add", "co_attention_text_layers": [1], "co_attention_visual_layers": [1]}, "has none"),
        ({"fusion": "co_attention", "visual_hidden_size": 30, "visual_num_attention_heads": 4}, "visual_hidden_size"),
        ({"fusion": "co_attention", "co_attention_text_layers": [1, 2]}, "same length"),
        ({"fusion": "co_attention", "co_attention_text_layers": [2, 1], "co_attention_visual_layers": [0, 1]}, "non-"),
        ({"fusion": "co_attention", "co_attention_text_layers": [3], "co_attention_visual_layers": [0]}, r"\[0, 2\]"),
        ({"fusion": "co_attention", "joint_pooling": "max"}, "joint_pooling"),
        ({"fusion": "outer", "outer_product_rank": 0}, "outer_product_rank"),
        ({"fusion": "add", "visual_embedding_type": "uniter", "visual_location_dim": 7}, "two-stream fusion"),
        ({"fusion": "add", "pooler_act": "swishy"}, "pooler_act"),
    ],
)
def test_config_rejects_inconsistent_fusion_settings(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_two_stream_defaults_follow_vilbert():
    config = tiny_config(fusion="co_attention", num_hidden_layers=5, visual_num_hidden_layers=3)
    # One co-attention layer after each of the last 3 text layers and each of the first 3 visual layers.
    assert (config.co_attention_text_layers, config.co_attention_visual_layers) == ([3, 4, 5], [0, 1, 2])
    assert (config.visual_hidden_size, config.fusion_hidden_size, config.joint_hidden_size) == (32, 32, 32)
    assert tiny_config(fusion="concat").joint_hidden_size == 64


def test_vilbert_base_preset_matches_the_released_sizes():
    config = VlmHfConfig.from_preset("vilbert-base")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (
        768,
        12,
        12,
        30522,
    )
    assert (config.visual_hidden_size, config.visual_num_hidden_layers, config.visual_intermediate_size) == (
        1024,
        6,
        1024,
    )
    assert (config.fusion_hidden_size, config.fusion_num_attention_heads, config.num_region_classes) == (1024, 8, 1601)
    assert (config.pooler_act, config.visual_location_dim, config.preset) == ("relu", 5, "vilbert-base")
    # README of the fixture: the full-size encoder order.
    expected = "t0 t1 t2 t3 t4 t5 c0 t6 v0 c1 t7 v1 c2 t8 v2 c3 t9 v3 c4 t10 v4 c5 v5 t11".split()
    assert [f"{kind[0]}{index}" for kind, index in two_stream_schedule(config)] == expected


# -- every head with every fusion, from pixels ------------------------------------------------------------------------


@pytest.mark.parametrize("fusion, pixels", [(fusion, fusion == "co_attention") for fusion in FUSIONS])
def test_every_head_trains_every_parameter(fusion, pixels):
    config = two_stream_config(fusion, features=not pixels, visual_embedding_type="vilbert", num_region_classes=5)
    text = text_inputs()
    # From pixels: each cell of the ResNet grid is a region; from features: 4 regions.
    visual = dict(pixel_values=pixel_inputs()) if pixels else region_inputs(num_regions=4)
    for head in HEADS[1:]:
        model = head(config).train()
        batch = dict(**visual, **text)
        if head is VlmHfForPreTraining:
            tokens = 5  # ViLBERT's [IMG] + 2x2 grid cells or 4 regions
            batch.update(
                labels=text["input_ids"].masked_fill(torch.arange(7) % 2 == 0, -100),
                itm_labels=torch.tensor([1, 0]),
                visual_feature_mask=torch.tensor([[0, 1, 0, 0, 1], [1, 0, 1, 0, 0]]).bool(),
                region_labels=torch.randint(0, 5, (2, tokens)),
            )
        elif head is VlmHfForQuestionAnswering:
            batch.update(labels=torch.tensor([0, 3]))
        else:
            batch.update(return_loss=True, labels=torch.tensor([1, 1]))
        output = model(**batch)
        output.loss.backward()
        frozen = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not frozen, (head.__name__, frozen)
        if head is VlmHfForPreTraining:
            feature_dim = 512 if pixels else 12
            assert output.region_logits.shape == (4, 5) and output.visual_predictions.shape == (4, feature_dim)


@pytest.mark.parametrize("fusion", ["co_attention", "concat"])
def test_model_output_exposes_both_streams(fusion):
    config = two_stream_config(fusion, visual_embedding_type="vilbert")
    model = VlmHfModel(config).eval()
    regions = region_inputs(num_regions=3)
    out = model(**regions, **text_inputs(), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 7, 32)
    assert out.visual_last_hidden_state.shape == (2, 4, 24)  # [IMG] + 3 regions
    assert out.text_pooler_output.shape == out.visual_pooler_output.shape == (2, 16)
    assert out.pooler_output.shape == (2, config.joint_hidden_size)
    # [IMG]'s feature is the mean of the regions'.
    torch.testing.assert_close(out.visual_features[:, 0], regions["visual_embeds"].mean(1))
    num_co = len(config.co_attention_text_layers or [])
    assert len(out.hidden_states) == 1 + config.num_hidden_layers + num_co
    assert len(out.visual_hidden_states) == 1 + config.visual_num_hidden_layers + num_co
    if fusion == "co_attention":
        assert out.cross_attentions[0].shape == (2, 2, 7, 4)  # text queries over [IMG] + regions
        assert out.visual_cross_attentions[0].shape == (2, 2, 4, 7)
        # Padded text tokens get no attention from the visual queries.
        assert out.visual_cross_attentions[0][1, :, :, 5:].abs().max() == 0
    else:
        assert out.cross_attentions is None


def test_pooled_fusions_combine_the_pooled_vectors_as_named():
    torch.manual_seed(0)
    text, visual = torch.randn(3, 16), torch.randn(3, 16)
    expected = {
        "add": text + visual,
        "multiply": text * visual,
        "concat": torch.cat([text, visual], -1),
    }
    for fusion, value in expected.items():
        torch.testing.assert_close(VlmHfPooledFusion(two_stream_config(fusion))(text, visual), value)
    for pooling, value in (("product", text * visual), ("sum", text + visual)):
        fused = VlmHfPooledFusion(two_stream_config("co_attention", joint_pooling=pooling))(text, visual)
        torch.testing.assert_close(fused, value)


def test_outer_fusion_is_the_bilinear_form_of_the_augmented_vectors():
    fusion = VlmHfPooledFusion(two_stream_config("outer", outer_product_rank=5))
    for parameter in fusion.parameters():
        torch.nn.init.normal_(parameter)
    text, visual = torch.randn(3, 16), torch.randn(3, 16)
    # The full third-order weight W[k, i, j] over [t; 1] and [v; 1], built from the rank-5 factors.
    u = torch.cat([fusion.text_factor.weight, fusion.text_factor.bias[:, None]], 1)
    v = torch.cat([fusion.visual_factor.weight, fusion.visual_factor.bias[:, None]], 1)
    weight = torch.einsum("kr,ri,rj->kij", fusion.output.weight, u, v)
    augmented_text, augmented_visual = F.pad(text, (0, 1), value=1.0), F.pad(visual, (0, 1), value=1.0)
    expected = torch.einsum("kij,bi,bj->bk", weight, augmented_text, augmented_visual) + fusion.output.bias
    torch.testing.assert_close(fusion(text, visual), expected, atol=1e-4, rtol=1e-4)


def test_outer_fusion_parameters_grow_linearly_with_the_hidden_size():
    def count(width: int) -> int:
        config = two_stream_config(
            "outer", fusion_hidden_size=width, fusion_num_attention_heads=1, outer_product_rank=16
        )
        return sum(p.numel() for p in VlmHfPooledFusion(config).parameters())

    counts = [count(width) for width in (64, 128, 192, 256)]
    steps = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    assert steps[0] == steps[1] == steps[2] > 0  # linear: constant increments
    # A dense outer product would need 256^3 weights, and 256^2 activations per example for its input alone.
    assert counts[-1] < 256**2


# -- numerics --------------------------------------------------------------------------------------------------------


def masked_inputs():
    regions = region_inputs(num_regions=4)
    mask = torch.ones(2, 4, dtype=torch.long)
    mask[1, 2:] = 0
    return dict(**regions, visual_attention_mask=mask, **text_inputs())


@pytest.mark.parametrize("fusion", ["co_attention", "outer"])
def test_eager_and_sdpa_agree(fusion):
    # Large weights make attention peaked, so that a wrong scale or mask could not hide in near-uniform weights.
    config = two_stream_config(
        fusion, visual_embedding_type="vilbert", initializer_range=0.2, fusion_interaction_layers=1
    )
    sdpa = VlmHfModel(config).eval()
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert sdpa.encoder.layer[0].attention.self.config._attn_implementation == "sdpa"
    if fusion == "co_attention":
        assert eager.encoder.co_attention_layer[0].co_attention.config._attn_implementation == "eager"
    inputs = masked_inputs()
    expected, actual = sdpa(**inputs), eager(**inputs)
    for key in ("last_hidden_state", "visual_last_hidden_state", "pooler_output"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["co_attention", "multiply"])
def test_padding_of_either_stream_does_not_change_real_outputs(fusion):
    model = VlmHfModel(two_stream_config(fusion, visual_embedding_type="vilbert", initializer_range=0.2)).eval()
    regions = region_inputs(num_images=1, num_regions=3)
    text = text_inputs(batch_size=1, length=5, pad_last=False)
    reference = model(**regions, **text)
    padded = model(
        visual_embeds=F.pad(regions["visual_embeds"], (0, 0, 0, 2), value=7.0),
        visual_boxes=F.pad(regions["visual_boxes"], (0, 0, 0, 2)),
        visual_attention_mask=torch.tensor([[1, 1, 1, 0, 0]]),
        input_ids=F.pad(text["input_ids"], (0, 3)),
        attention_mask=F.pad(text["attention_mask"], (0, 3)),
    )
    torch.testing.assert_close(padded.last_hidden_state[:, :5], reference.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        padded.visual_last_hidden_state[:, :4], reference.visual_last_hidden_state, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(padded.pooler_output, reference.pooler_output, atol=1e-5, rtol=1e-5)


def test_streams_meet_only_in_co_attention():
    inputs = masked_inputs()
    other_image = dict(inputs, visual_embeds=inputs["visual_embeds"].flip(0))
    for fusion, image_reaches_text in (("co_attention", True), ("add", False)):
        model = VlmHfModel(two_stream_config(fusion)).eval()
        a, b = model(**inputs), model(**other_image)
        assert not torch.allclose(a.pooler_output, b.pooler_output)
        assert torch.allclose(a.text_pooler_output, b.text_pooler_output) != image_reaches_text


def test_retrieval_embeddings_are_each_stream_alone():
    model = VlmHfForImageTextRetrieval(two_stream_config("add")).eval()
    inputs = masked_inputs()
    joint = model.vlm_hf(**inputs)
    # Pooled fusions keep the streams apart: the separately encoded text and image are the joint model's streams.
    torch.testing.assert_close(
        model.get_text_features(inputs["input_ids"], inputs["attention_mask"]),
        model.text_projection(joint.text_pooler_output),
    )
    image = model.get_image_features(
        visual_embeds=inputs["visual_embeds"],
        visual_boxes=inputs["visual_boxes"],
        visual_attention_mask=inputs["visual_attention_mask"],
    )
    torch.testing.assert_close(image, model.image_projection(joint.visual_pooler_output))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_overfits_a_tiny_vqa_batch(fusion):
    config = two_stream_config(fusion, **no_dropout(num_hidden_layers=1, visual_num_hidden_layers=1))
    model = VlmHfForQuestionAnswering(config).train()
    # The same question about four images with four different answers: only the image can tell them apart.
    text = text_inputs(batch_size=1, seed=3, pad_last=False)
    batch = dict(
        **region_inputs(num_images=4),
        input_ids=text["input_ids"].expand(4, -1),
        labels=torch.tensor([0, 1, 2, 3]),
    )
    first, last = train_steps(model, batch, steps=80, lr=5e-3)
    assert last < 0.1 * first
    assert model.eval()(**batch).logits.argmax(-1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("fusion", ["co_attention", "concat"])
def test_gradient_checkpointing_gives_the_same_gradients(fusion):
    config = two_stream_config(fusion, **no_dropout(visual_embedding_type="vilbert", fusion_interaction_layers=1))
    model = VlmHfForQuestionAnswering(config).train()
    batch = dict(**masked_inputs(), labels=torch.tensor([1, 4]))
    model(**batch).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    encoder = model.vlm_hf.encoder
    checkpointed = [*encoder.layer, *encoder.visual_layer, *encoder.co_attention_layer]
    assert checkpointed and all(layer.gradient_checkpointing for layer in checkpointed)
    model(**batch).loss.backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("fusion", ["co_attention", "outer"])
def test_save_load_round_trip(fusion, tmp_path):
    config = two_stream_config(fusion, visual_embedding_type="vilbert", num_task_tokens=3, fusion_interaction_layers=1)
    model = VlmHfForPreTraining(config).eval()
    model.save_pretrained(tmp_path)
    loaded = VlmHfForPreTraining.from_pretrained(tmp_path).eval()
    assert loaded.config.co_attention_text_layers == config.co_attention_text_layers
    inputs = dict(**masked_inputs(), task_ids=torch.tensor([2, 0]))
    for key, value in model(**inputs).items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(loaded(**inputs)[key], value, msg=key)
    base = VlmHfModel.from_pretrained(tmp_path).eval()  # the base model out of the head checkpoint
    torch.testing.assert_close(base(**inputs).pooler_output, model.vlm_hf(**inputs).pooler_output)


def test_task_tokens_are_inserted_after_cls():
    config = two_stream_config(num_task_tokens=4)
    model = VlmHfForPreTraining(config).eval()
    inputs = masked_inputs()
    out = model(**inputs, task_ids=torch.tensor([[1], [3]]))
    assert out.prediction_logits.shape == (2, 8, config.vocab_size)
    # MLM labels keep the text's shape: the task position is not scored.
    labels = inputs["input_ids"].masked_fill(torch.arange(7) != 2, -100)
    assert model(**inputs, task_ids=torch.tensor([1, 3]), labels=labels).prediction_logits.shape == (
        2,
        config.vocab_size,
    )
    with pytest.raises(ValueError, match="task_ids"):
        model(**inputs, task_ids=torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="task_ids"):
        VlmHfModel(two_stream_config())(**inputs, task_ids=torch.tensor([0, 0]))


def test_vilbert_tiny_preset_runs_end_to_end_from_pixels():
    config = VlmHfConfig.from_preset("vilbert-tiny", num_labels=4)
    model = VlmHfForQuestionAnswering(config).eval()
    out = model.vlm_hf(pixel_values=pixel_inputs(), **text_inputs(vocab_size=config.vocab_size))
    assert out.visual_last_hidden_state.shape == (2, config.visual_grid**2 + 1, config.visual_hidden_size)
    assert model(pixel_values=pixel_inputs(), **text_inputs(vocab_size=config.vocab_size)).logits.shape == (2, 4)
