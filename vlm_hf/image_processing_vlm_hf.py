"""Image processor of the vlm_hf models: any image a user has on hand -> normalised `pixel_values` for the backbone."""

import io
import math
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

# PIL's own default decompression-bomb threshold (about 89 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485
_CHANNEL_COUNTS = (1, 2, 3, 4)  # grey, grey + alpha, RGB, RGBA


class VlmHfImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, defaults to 32):
        With `do_pad`, the padded height and width are rounded up to a multiple of it (the backbone's stride).
    max_pixels (`int`, defaults to about 89 million):
        Images with more pixels are refused before they are decoded (decompression bombs).
    """

    size_divisor: int
    max_pixels: int


class VlmHfImageProcessor(TorchvisionBackend):
    r"""
    Resizes the shortest edge (keeping the aspect ratio), then either center-crops to `crop_size` (the default) or,
    with `do_pad=True`, pads the batch to a common size divisible by `size_divisor` and returns a `pixel_mask`;
    rescales to [0, 1] and normalises with the ImageNet mean and std that torchvision's backbones were trained with.

    Accepts PIL images of any mode, file paths, encoded bytes, numpy arrays and torch tensors (HWC or CHW; uint8,
    uint16 or float in [0, 1]), one at a time or as lists of images of different sizes. Problems with an input raise
    a `ValueError` that names its position in the batch.
    """

    valid_kwargs = VlmHfImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = False
    do_convert_rgb = True
    size_divisor = 32
    max_pixels = DEFAULT_MAX_PIXELS

    # -- reading inputs --------------------------------------------------------------------------------------------

    def fetch_images(self, images):
        # Paths and bytes are opened in `process_image`, where a failure can name the image's position.
        return images

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs) -> list[torch.Tensor]:
        max_pixels = kwargs.get("max_pixels") or self.max_pixels
        input_data_format = kwargs.get("input_data_format")
        prepared = []
        for position, image in enumerate(flatten_images(images)):
            try:
                prepared.append(to_rgb_tensor(image, max_pixels, input_data_format))
            except (ValueError, OSError, TypeError) as error:
                raise ValueError(f"images[{position}]: {error}") from error
        if not prepared:
            raise ValueError("`images` is empty: pass at least one image.")
        if len({image.dtype for image in prepared}) > 1:  # one batch, one dtype (0-255 scale either way)
            prepared = [image.float() for image in prepared]
        device = kwargs.get("device")
        return [image.to(device) for image in prepared] if device is not None else prepared

    # -- processing ------------------------------------------------------------------------------------------------

    def _validate_preprocess_kwargs(self, crop_size=None, do_center_crop=None, **kwargs):
        super()._validate_preprocess_kwargs(crop_size=crop_size, do_center_crop=do_center_crop, **kwargs)
        if do_center_crop and crop_size is not None and min(crop_size.height, crop_size.width) < 32:
            raise ValueError(f"crop_size must be at least 32x32 for the vision backbones, got {dict(crop_size)}.")

    def _preprocess(self, images, do_pad=False, size_divisor=32, return_tensors=None, **kwargs) -> BatchFeature:
        kwargs.pop("pad_size", None)
        processed = super()._preprocess(images, do_pad=False, pad_size=None, return_tensors=None, **kwargs)
        images = processed["pixel_values"]
        if do_pad:
            pixel_values, pixel_mask = pad_to_common_size(images, size_divisor)
            data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        else:
            if len({tuple(image.shape) for image in images}) > 1:
                raise ValueError(
                    "The images have different sizes after resizing; set do_center_crop=True or do_pad=True "
                    "to batch them."
                )
            data = {"pixel_values": torch.stack(images)}
        return BatchFeature(data=data, tensor_type=return_tensors)


def flatten_images(images) -> list:
    """One image, a list of images, or a batched 4-D array/tensor -> a flat list of single images."""
    if isinstance(images, (list, tuple)):
        return (
            [image for item in images for image in flatten_images(item)]
            if any(isinstance(item, (list, tuple)) for item in images)
            else list(images)
        )
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def to_rgb_tensor(image, max_pixels: int, input_data_format=None) -> torch.Tensor:
    """
    Any supported image -> an RGB tensor (3, H, W) in the 0-255 scale: uint8 for 8-bit sources, float32 for deeper
    or floating-point ones.
    """
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, max_pixels)
    elif isinstance(image, (bytes, bytearray)):
        image = open_image(io.BytesIO(image), max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_rgb_tensor(image, max_pixels)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.require(image, requirements=["C", "W"]))  # copies only read-only or strided
    if isinstance(image, torch.Tensor):
        return array_to_rgb_tensor(image, max_pixels, input_data_format)
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, a file path, bytes, a numpy array or a "
        "torch tensor."
    )


def open_image(source, max_pixels: int) -> Image.Image:
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ValueError(f"no image file at {os.fspath(source)!r}.")
    try:
        image = Image.open(source)
    except UnidentifiedImageError as error:
        raise ValueError("the data is not an image PIL can read.") from error
    check_pixel_count(image.width, image.height, max_pixels)
    try:
        image.load()  # decode now, so that truncated files fail here
    except OSError as error:
        raise ValueError(f"the image could not be decoded ({error}); the file may be truncated.") from error
    return image


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"the image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ValueError(
            f"the image has {width * height} pixels ({width}x{height}), above max_pixels={max_pixels} "
            "(raise max_pixels if the image is trusted)."
        )


def pil_to_rgb_tensor(image: Image.Image, max_pixels: int) -> torch.Tensor:
    """PIL image of any mode -> RGB: upright by EXIF, palettes expanded, transparency composited on white."""
    check_pixel_count(image.width, image.height, max_pixels)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = np.asarray(image, dtype=np.float32)
        scale = {"F": 255.0, "I": 255 / 65535 if grey.max(initial=0) > 255 else 1.0}.get(image.mode, 255 / 65535)
        grey = torch.from_numpy(grey * scale).clamp_(0, 255)
        if not torch.isfinite(grey).all():
            raise ValueError("the image holds NaN or infinite values.")
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def array_to_rgb_tensor(image: torch.Tensor, max_pixels: int, input_data_format=None) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) array with 1-4 channels -> RGB (3, H, W) in the 0-255 scale."""
    if image.ndim == 2:
        image = image.unsqueeze(0)
    elif image.ndim == 3:
        image = image if channels_first(image, input_data_format) else image.permute(2, 0, 1)
    else:
        raise ValueError(
            f"an image array must have 2 or 3 dimensions (H, W[, C]) or (C, H, W), got shape {tuple(image.shape)}."
        )
    channels, height, width = image.shape
    check_pixel_count(width, height, max_pixels)
    image = to_0_255_scale(image)
    if channels in (2, 4):  # alpha: composite on white
        alpha = image[-1:].float() / 255
        colour = image[:-1].float() * alpha + 255 * (1 - alpha)
        image = colour.round().to(torch.uint8) if image.dtype == torch.uint8 else colour
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


def channels_first(image: torch.Tensor, input_data_format=None) -> bool:
    if input_data_format is not None:
        return str(getattr(input_data_format, "value", input_data_format)) == "channels_first"
    first, last = image.shape[0] in _CHANNEL_COUNTS, image.shape[-1] in _CHANNEL_COUNTS
    if not (first or last):
        raise ValueError(
            f"cannot find the channel dimension of shape {tuple(image.shape)}: expected 1-4 channels first or last."
        )
    return first and not last or (first and last and image.shape[0] <= image.shape[-1])


def to_0_255_scale(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.bool:
        return image.to(torch.uint8) * 255
    if image.is_floating_point():
        image = image.float()
        if not torch.isfinite(image).all():
            raise ValueError("the image holds NaN or infinite values.")
        low, high = image.min().item(), image.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"float pixel values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; pass uint8 for 0-255 data."
            )
        return image * 255
    if image.dtype == torch.uint16:
        return image.float() * (255 / 65535)
    if image.dtype in (torch.int16, torch.int32, torch.int64):  # 8- or 16-bit values in a wider integer type
        high = image.max().item()
        depth = 255 if high <= 255 else 65535
        if image.min().item() < 0 or high > 65535:
            raise ValueError("integer pixel values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit).")
        return image.float() * (255 / depth)
    raise ValueError(f"unsupported pixel dtype {image.dtype}.")


def pad_to_common_size(images: list[torch.Tensor], size_divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom and right to the batch's largest size rounded up to `size_divisor`; 1 marks real pixels."""
    height = math.ceil(max(image.shape[-2] for image in images) / size_divisor) * size_divisor
    width = math.ceil(max(image.shape[-1] for image in images) / size_divisor) * size_divisor
    pixel_values = torch.zeros(len(images), images[0].shape[0], height, width, dtype=images[0].dtype)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
    for index, image in enumerate(images):
        h, w = image.shape[-2:]
        pixel_values[index, :, :h, :w] = image
        pixel_mask[index, :h, :w] = 1
    return pixel_values, pixel_mask


__all__ = ["VlmHfImageProcessor"]
