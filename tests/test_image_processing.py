"""The image processor: every input form a user has, against a torchvision reference, and clear errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF
from transformers import AutoImageProcessor

import vlm_hf  # noqa: F401  (registers the Auto classes)
from vlm_hf import VlmHfImageProcessor

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def random_rgb(width=120, height=90, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference(rgb_uint8_hwc: np.ndarray, shortest=256, crop=224) -> torch.Tensor:
    """torchvision's own resize / center-crop / normalise on the same pixels."""
    image = torch.from_numpy(rgb_uint8_hwc).permute(2, 0, 1)
    image = tvF.resize(image, shortest, interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
    image = tvF.center_crop(image, [crop, crop])
    return (image.float() / 255 - MEAN) / STD


@pytest.fixture(scope="module")
def image_processor():
    return VlmHfImageProcessor()


def test_matches_torchvision_reference(image_processor):
    rgb = random_rgb(640, 480)
    out = image_processor(Image.fromarray(rgb), return_tensors="pt").pixel_values
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0], reference(rgb), atol=1e-5, rtol=1e-5)


def test_every_array_layout_and_dtype_gives_the_same_pixels(image_processor):
    rgb = random_rgb()
    forms = [
        Image.fromarray(rgb),
        rgb,  # HWC uint8
        np.ascontiguousarray(rgb.transpose(2, 0, 1)),  # CHW uint8
        torch.from_numpy(rgb).permute(2, 0, 1),  # CHW tensor
        torch.from_numpy(rgb),  # HWC tensor
        rgb.astype(np.float32) / 255,  # float in [0, 1]
        rgb.astype(np.uint16) * 257,  # 16-bit
    ]
    out = image_processor(forms, return_tensors="pt").pixel_values
    for index in range(1, len(forms)):
        torch.testing.assert_close(out[index], out[0], atol=2e-2, rtol=0, msg=f"form {index}")


def test_files_bytes_and_mixed_sizes(image_processor, tmp_path):
    png, jpeg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(random_rgb(300, 200)).save(png)
    Image.fromarray(random_rgb(50, 400, seed=1)).save(jpeg)
    out = image_processor([str(png), jpeg, png.read_bytes(), random_rgb(33, 40)], return_tensors="pt")
    assert out.pixel_values.shape == (4, 3, 224, 224)
    torch.testing.assert_close(out.pixel_values[2], out.pixel_values[0])


def white_after_normalisation():
    return ((1 - MEAN) / STD).flatten()


@pytest.mark.parametrize(
    "image, expected_rgb",
    [
        (Image.new("RGBA", (64, 64), (10, 200, 30, 0)), (255, 255, 255)),  # fully transparent -> white
        (Image.new("RGBA", (64, 64), (10, 200, 30, 255)), (10, 200, 30)),
        (Image.new("LA", (64, 64), (0, 0)), (255, 255, 255)),
        (Image.new("L", (64, 64), 77), (77, 77, 77)),
        (Image.new("1", (64, 64), 1), (255, 255, 255)),
        (Image.new("I;16", (64, 64), 65535), (255, 255, 255)),
        (Image.new("I", (64, 64), 128), (128, 128, 128)),
        (Image.new("F", (64, 64), 0.5), (127.5, 127.5, 127.5)),
        (Image.new("CMYK", (64, 64), (0, 0, 0, 0)), (255, 255, 255)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la-clear", "l", "1", "i16", "i", "f", "cmyk"],
)
def test_pil_modes_convert_to_rgb(image_processor, image, expected_rgb):
    out = image_processor(image, return_tensors="pt").pixel_values[0]
    expected = (torch.tensor(expected_rgb, dtype=torch.float32) / 255 - MEAN.flatten()) / STD.flatten()
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=2e-2, rtol=0)


def test_palette_images_are_expanded(image_processor):
    palette_image = Image.new("P", (64, 64), 3)
    palette_image.putpalette([0, 0, 0] * 3 + [200, 10, 90] + [0, 0, 0] * 252)
    out = image_processor(palette_image, return_tensors="pt").pixel_values[0].mean(dim=(1, 2))
    expected = (torch.tensor([200.0, 10.0, 90.0]) / 255 - MEAN.flatten()) / STD.flatten()
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=0)
    palette_image.info["transparency"] = 3
    out = image_processor(palette_image, return_tensors="pt").pixel_values[0].mean(dim=(1, 2))
    torch.testing.assert_close(out, white_after_normalisation(), atol=2e-2, rtol=0)


def test_exif_orientation_turns_camera_images_upright(tmp_path):
    processor = VlmHfImageProcessor(do_resize=False, do_center_crop=False)
    upright = random_rgb(40, 80)  # 80 tall, 40 wide
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # sensor data, 80 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "camera.png"
    stored.save(path, exif=exif)
    out = processor(str(path), return_tensors="pt").pixel_values[0]
    assert out.shape == (3, 80, 40)
    expected = (torch.from_numpy(upright).permute(2, 0, 1).float() / 255 - MEAN) / STD
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_padding_returns_a_pixel_mask_and_backbone_friendly_sizes():
    processor = VlmHfImageProcessor(do_center_crop=False, do_pad=True)
    out = processor([random_rgb(400, 300), random_rgb(300, 600)], return_tensors="pt")
    height, width = out.pixel_values.shape[-2:]
    assert height % 32 == 0 and width % 32 == 0
    assert out.pixel_mask.shape == (2, height, width)
    # Image 0 resizes to 256 x 341 (h x w): mask covers exactly that corner.
    assert out.pixel_mask[0].sum() == 256 * 341 and out.pixel_mask[0, :256, :341].all()
    assert (out.pixel_values[0, :, 256:] == 0).all()


def test_padded_grid_cells_are_masked_in_the_model():
    model = vlm_hf.VlmHfModel(
        vlm_hf.VlmHfConfig(
            vision_backbone="resnet18", hidden_size=32, num_hidden_layers=1, vocab_size=50, visual_grid=4
        )
    ).eval()
    processor = VlmHfImageProcessor(do_center_crop=False, do_pad=True, size={"shortest_edge": 64})
    inputs = processor([random_rgb(64, 64), random_rgb(64, 128)], return_tensors="pt")  # second: 128 tall
    features, _, mask = model.get_visual_features(pixel_values=inputs.pixel_values, pixel_mask=inputs.pixel_mask)
    assert mask[0].view(4, 4)[:2].all() and not mask[0].view(4, 4)[2:].any()  # top half is the real image
    assert mask[1].all()


def test_save_and_load_with_auto_image_processor(tmp_path):
    processor = VlmHfImageProcessor(size={"shortest_edge": 160}, crop_size={"height": 128, "width": 96})
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VlmHfImageProcessor
    image = random_rgb()
    torch.testing.assert_close(
        loaded(image, return_tensors="pt").pixel_values, processor(image, return_tensors="pt").pixel_values
    )
    assert loaded(image, return_tensors="pt").pixel_values.shape == (1, 3, 128, 96)


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(100, 100)).save(buffer, format="PNG")
    return buffer.getvalue()[:2000]


BAD_IMAGES = {
    "missing file": ("/no/such/image.png", "no image file"),
    "not an image": (b"plain text, not pixels", "not an image"),
    "truncated": (truncated_png(), "truncated"),
    "zero pixels": (np.zeros((0, 10, 3), dtype=np.uint8), "no pixels"),
    "too many pixels": (Image.new("RGB", (200, 200)), "max_pixels"),
    "nan": (np.full((40, 40, 3), np.nan, dtype=np.float32), "NaN"),
    "wrong rank": (np.zeros((2, 2, 40, 40, 3), dtype=np.uint8), "2 or 3 dimensions"),
    "no channel dimension": (np.zeros((40, 40, 7), dtype=np.uint8), "channel dimension"),
    "float out of range": (np.full((40, 40, 3), 255.0, dtype=np.float32), r"\[0, 1\]"),
    "unsupported type": (12345, "unsupported image type"),
}


@pytest.mark.parametrize("case", BAD_IMAGES, ids=list(BAD_IMAGES))
def test_bad_images_name_their_position(case):
    processor = VlmHfImageProcessor(max_pixels=30_000)
    bad, message = BAD_IMAGES[case]
    with pytest.raises(ValueError, match=rf"images\[1\]: .*{message}"):
        processor([random_rgb(), bad])


def test_small_crop_size_is_refused():
    with pytest.raises(ValueError, match="at least 32x32"):
        VlmHfImageProcessor()(random_rgb(), crop_size={"height": 16, "width": 16})
