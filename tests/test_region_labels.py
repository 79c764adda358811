"""Region classification labels from object boxes: grid geometry, the processor's crop, and the pretraining head."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image, ImageDraw

from vlm_hf import VlmHfConfig, VlmHfForPreTraining
from vlm_hf.data import RegionLabeller, generate_synthetic_dataset
from vlm_hf.data.collators import boxes_in_crop, grid_region_labels
from vlm_hf.image_processing_vlm_hf import VlmHfImageProcessor


def test_grid_cells_take_the_smallest_box_on_their_centre():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.6, 0.6], [0.7, 0.0, 0.9, 0.2]])
    labels = grid_region_labels(boxes, torch.tensor([1, 2, 3]), grid=3)
    # The whole-image box covers every centre; the small middle box wins the middle cell; the top-right box wins its
    # cell although the big box covers it too.
    assert labels.tolist() == [1, 1, 3, 1, 2, 1, 1, 1, 1]
    assert grid_region_labels(boxes[1:2], torch.tensor([5]), grid=3).tolist() == [0, 0, 0, 0, 5, 0, 0, 0, 0]
    assert grid_region_labels(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), grid=2).tolist() == [0] * 4


def red_rectangle_bounds(pixel_values: torch.Tensor) -> tuple[float, float, float, float]:
    """Fractions (x0, y0, x1, y1) of the red pixels' extent in one processed image."""
    red = (pixel_values[0] > 1.5) & (pixel_values[1] < 0) & (pixel_values[2] < 0)
    ys, xs = red.nonzero(as_tuple=True)
    height, width = red.shape
    return (
        xs.min().item() / width,
        ys.min().item() / height,
        (xs.max().item() + 1) / width,
        (ys.max().item() + 1) / height,
    )


@pytest.mark.parametrize("size", [(200, 100), (90, 180), (120, 120)])
def test_boxes_follow_the_processors_resize_and_center_crop(size):
    width, height = size
    box = (0.55, 0.3, 0.8, 0.7)  # fractions of the original image
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle(
        (box[0] * width, box[1] * height, box[2] * width - 1, box[3] * height - 1), fill=(255, 0, 0)
    )
    processor = VlmHfImageProcessor(size={"shortest_edge": 60}, crop_size={"height": 60, "width": 60})
    pixel_values = processor(image, return_tensors="pt")["pixel_values"][0]
    mapped = boxes_in_crop(torch.tensor([box]), width, height, processor)[0]
    # What the processor drew, within a pixel (bilinear resizing blurs the edges), against the mapped box (clipped).
    np.testing.assert_allclose(red_rectangle_bounds(pixel_values), mapped.clamp(0, 1).tolist(), atol=1.5 / 60)


def test_padding_processor_is_refused():
    processor = VlmHfImageProcessor(do_pad=True, do_center_crop=False)
    with pytest.raises(ValueError, match="do_pad"):
        boxes_in_crop(torch.tensor([[0.1, 0.1, 0.2, 0.2]]), 64, 64, processor)


@pytest.fixture(scope="module")
def scenes():
    return generate_synthetic_dataset(40, seed=5, image_size=48)


def class_names(scenes) -> list[str]:
    return ["background", *sorted({name for row in scenes["objects"] for name in row["name"]})]


def test_synthetic_objects_label_their_layout_cells(scenes):
    """On a 3x3 grid, each object labels exactly the cell of the layout it sits in; every other cell is background."""
    processor = VlmHfImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    names = class_names(scenes)
    labeller = RegionLabeller(names, visual_grid=3, num_visual_tokens=10, image_processor=processor)
    labels = labeller([scenes[i] for i in range(len(scenes))])
    assert labels.shape == (len(scenes), 10) and (labels[:, 0] == -100).all()  # a leading [IMG]-like token
    for row, row_labels in zip(scenes, labels, strict=True):
        expected = [0] * 9
        for name, (x0, y0, x1, y1) in zip(row["objects"]["name"], row["objects"]["box"], strict=True):
            column, layout_row = int((x0 + x1) / 2 * 3), int((y0 + y1) / 2 * 3)
            expected[layout_row * 3 + column] = names.index(name)
        assert row_labels[1:].tolist() == expected


def test_unknown_object_names_are_refused(scenes):
    processor = VlmHfImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    labeller = RegionLabeller(
        ["background", "red circle"], visual_grid=3, num_visual_tokens=9, image_processor=processor
    )
    with pytest.raises(ValueError, match="not region classes"):
        labeller([scenes[i] for i in range(len(scenes))])


def region_model(tokens: str, num_classes: int) -> VlmHfForPreTraining:
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=100,
        num_hidden_layers=1,
        vision_feature_layer="layer2",
        visual_grid=3,
        num_region_classes=num_classes,
        region_classification_tokens=tokens,
    )
    return VlmHfForPreTraining(config).eval()


def test_region_classification_of_all_tokens_scores_every_labelled_token():
    model = region_model("all", num_classes=4)
    inputs = {"input_ids": torch.randint(5, 100, (2, 6)), "pixel_values": torch.randn(2, 3, 48, 48)}
    labels = torch.randint(0, 4, (2, 9))
    labels[0, :3] = -100  # unlabelled tokens do not count
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, 4] = True
    output = model(**inputs, region_labels=labels, visual_feature_mask=mask)
    assert output.region_logits.shape == (18, 4)  # every token, not only the masked ones
    expected = F.cross_entropy(output.region_logits, labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(output.mrc_loss, expected)
    with pytest.raises(ValueError, match="region_labels"):
        model(**inputs, region_labels=torch.full((2, 9), 4))  # class 4 of 4 classes


def test_masked_region_classification_scores_only_the_masked_tokens():
    model = region_model("masked", num_classes=4)
    inputs = {"input_ids": torch.randint(5, 100, (2, 6)), "pixel_values": torch.randn(2, 3, 48, 48)}
    labels = torch.randint(0, 4, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 2] = mask[1, 7] = True
    output = model(**inputs, region_labels=labels, visual_feature_mask=mask)
    assert output.region_logits.shape == (2, 4)
    torch.testing.assert_close(output.mrc_loss, F.cross_entropy(output.region_logits, labels[mask]))


def test_bad_region_classification_tokens_setting_is_refused():
    with pytest.raises(StrictDataclassClassValidationError, match="region_classification_tokens must be one of"):
        VlmHfConfig(region_classification_tokens="some")
    with pytest.raises(StrictDataclassClassValidationError, match="region_class_names has 2 names"):
        VlmHfConfig(num_region_classes=3, region_class_names=["background", "a"])


def test_pretraining_with_region_classification_names_the_scene_objects(tmp_path):
    from conftest import TINY_TRAINING_FLAGS

    from vlm_hf.training import pretrain

    flags = [*TINY_TRAINING_FLAGS, "--num_train_images", "16", "--vocab_size", "300", "--max_steps", "2"]
    flags += ["--visual_grid", "3", "--output_dir", str(tmp_path), "--save_strategy", "no"]
    trainer = pretrain([*flags, "--region_classification", "all"])
    config = trainer.model.config
    scenes = generate_synthetic_dataset(16, seed=trainer.args.seed, image_size=64)  # the training scenes
    assert config.region_class_names == class_names(scenes)
    assert config.num_region_classes == len(config.region_class_names)
    assert config.region_classification_tokens == "all"
    assert VlmHfConfig.from_pretrained(tmp_path).region_class_names == config.region_class_names
    batch = trainer.data_collator([scenes[i] for i in range(4)])
    assert batch["region_labels"].shape == (4, 9) and (batch["region_labels"] > 0).any()


def test_region_classification_needs_object_boxes_in_the_data():
    from vlm_hf.training import ModelArguments, region_head_options

    scenes = generate_synthetic_dataset(4, seed=0, image_size=32).remove_columns("objects")
    with pytest.raises(ValueError, match="needs an `objects` column"):
        region_head_options(ModelArguments(region_classification="masked"), scenes)
    assert region_head_options(ModelArguments(), scenes) == {}
