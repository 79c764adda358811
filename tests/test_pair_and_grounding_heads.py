"""ViLBERT-style heads: NLVR2 pair classification (VlmHfForVisualReasoning pairs) and region grounding."""

import pytest
import torch
from conftest import region_inputs, text_inputs, tiny_features_config
from huggingface_hub.errors import StrictDataclassClassValidationError

from vlm_hf import VlmHfConfig, VlmHfForRegionGrounding, VlmHfForVisualReasoning

PAIRS = dict(visual_reasoning_pairs=True, visual_reasoning_head="mlp", num_labels=2)


def pair_inputs():
    """Two examples, each a text repeated for its two images: rows (text 0, image 0), (text 0, image 1), ..."""
    texts = text_inputs(batch_size=2, pad_last=True)
    return dict(
        input_ids=texts["input_ids"].repeat_interleave(2, dim=0),
        attention_mask=texts["attention_mask"].repeat_interleave(2, dim=0),
        **region_inputs(num_images=4),
    )


def permute_rows(inputs: dict, order: list[int]) -> dict:
    return {name: value[order] for name, value in inputs.items()}


@torch.no_grad()
def test_pair_head_reads_each_example_s_two_rows_in_order():
    model = VlmHfForVisualReasoning(tiny_features_config(**PAIRS)).eval()
    inputs = pair_inputs()
    logits = model(**inputs).logits
    assert logits.shape == (2, 2)
    # Swapping the examples swaps their logits; swapping an example's two images changes only its own logits.
    torch.testing.assert_close(model(**permute_rows(inputs, [2, 3, 0, 1])).logits, logits.flip(0))
    swapped = model(**permute_rows(inputs, [1, 0, 2, 3])).logits
    torch.testing.assert_close(swapped[1], logits[1])
    assert not torch.allclose(swapped[0], logits[0], atol=1e-4)


def test_pair_head_trains_and_rejects_odd_batches_and_row_labels():
    model = VlmHfForVisualReasoning(tiny_features_config(**PAIRS))
    inputs = pair_inputs()
    loss = model(**inputs, labels=torch.tensor([1, 0])).loss
    loss.backward()
    assert torch.isfinite(loss) and model.classifier.dense.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="even number of rows, got 3"):
        model(**permute_rows(inputs, [0, 1, 2]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\)"):
        model(**inputs, labels=torch.tensor([1, 0, 1, 0]))  # one label per example, not per row
    with pytest.raises(StrictDataclassClassValidationError, match="visual_reasoning_head must be one of"):
        tiny_features_config(visual_reasoning_head="bilinear")


def grounding_inputs():
    inputs = dict(**text_inputs(batch_size=2), **region_inputs(num_images=2, num_regions=4))
    inputs["visual_attention_mask"] = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return inputs


@torch.no_grad()
def test_grounding_masks_padded_regions_and_ignores_their_features():
    config = VlmHfConfig.from_preset("vilbert-tiny", vision_backbone=None, visual_feature_dim=12)
    model = VlmHfForRegionGrounding(config).eval()
    inputs = grounding_inputs()
    out = model(**inputs)
    # ViLBERT's visual tokens: [IMG] then the 4 regions; text tokens as given (no task token here).
    assert out.logits.shape == (2, 5) and out.token_logits.shape == (2, 7)
    assert bool((out.logits[1, 3:] < -9000).all()) and bool((out.logits[:, :3].abs() < 100).all())
    noisy = dict(inputs, visual_embeds=inputs["visual_embeds"].clone())
    noisy["visual_embeds"][1, 2:] = 100.0  # padded regions' features must not reach any real token
    again = model(**noisy)
    torch.testing.assert_close(again.logits[:, :3], out.logits[:, :3])
    torch.testing.assert_close(again.token_logits, out.token_logits)


@pytest.mark.parametrize("preset", ["uniter-tiny", "vlbert-tiny"])
@torch.no_grad()
def test_single_stream_grounding_scores_the_visual_tokens_whatever_the_text_padding(preset):
    """A text padded in the batch gets the same region and token scores alone: the visual slice is found right."""
    config = VlmHfConfig.from_preset(preset, vision_backbone=None, visual_feature_dim=12)
    model = VlmHfForRegionGrounding(config).eval()
    inputs = grounding_inputs()
    batched = model(**inputs)
    assert batched.logits.shape == (2, 4) and batched.token_logits.shape == (2, 7)
    alone = model(
        input_ids=inputs["input_ids"][1:, :5],
        attention_mask=inputs["attention_mask"][1:, :5],
        **{name: inputs[name][1:] for name in ("visual_embeds", "visual_boxes", "visual_attention_mask")},
    )
    torch.testing.assert_close(alone.logits[0, :2], batched.logits[1, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.token_logits[0], batched.token_logits[1, :5], atol=1e-5, rtol=1e-5)


def test_grounding_losses_and_label_errors():
    model = VlmHfForRegionGrounding(tiny_features_config())
    inputs = grounding_inputs()
    out = model(**inputs, labels=torch.tensor([3, 1]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([3, 1]))
    torch.testing.assert_close(out.loss, expected)
    soft = torch.tensor([[0.0, 0.7, 1.0, 0.0], [0.6, 0.0, 0.0, 0.0]])
    soft_out = model(**inputs, labels=soft)
    # Binary cross-entropy over the real regions only, summed per text and averaged over texts.
    real = inputs["visual_attention_mask"].bool()
    terms = torch.nn.functional.binary_cross_entropy_with_logits(soft_out.logits[real], soft[real], reduction="sum")
    torch.testing.assert_close(soft_out.loss, terms / 2)
    soft_out.loss.backward()
    assert model.region_classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="padded visual tokens"):
        model(**inputs, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"Soft `labels` must have shape \(2, 4\)"):
        model(**inputs, labels=torch.rand(2, 3))
    with pytest.raises(ValueError, match="must lie in"):
        model(**inputs, labels=soft * 2)
