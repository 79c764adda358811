"""Processor of the vlm_hf models: images and texts -> one `BatchFeature` the models take as is."""

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_vlm_hf import flatten_images


class VlmHfProcessor(ProcessorMixin):
    r"""
    Wraps a [`VlmHfImageProcessor`] and a BERT-style fast tokenizer.

    Texts and images pair up in three ways:
    - one text per image (`images=[a, b]`, `text=["q about a", "q about b"]`);
    - several texts about one image (`images=a`, `text=["q1", "q2"]`): the image is processed once and
      `image_index` (all zeros) tells the model which image each text uses;
    - a list of texts per image (`images=[a, b]`, `text=[["q1", "q2"], ["q3"]]`), flattened with `image_index`.
    """

    text_kwargs = {"padding": True, "truncation": True}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("Pass `images`, `text` or both.")
        kwargs.setdefault("return_tensors", "pt")
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        texts, image_index = pair_texts_with_images(images, text)
        data = {}
        if images is not None:
            data.update(self.image_processor(images, **merged["images_kwargs"]))
        if texts is not None:
            data.update(self.tokenizer(texts, **merged["text_kwargs"]))
        if image_index is not None:
            data["image_index"] = torch.tensor(image_index)
        return BatchFeature(data, tensor_type=merged["text_kwargs"].get("return_tensors"))

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, *self.image_processor.model_input_names, "image_index"]


def pair_texts_with_images(images, text) -> tuple[list[str] | None, list[int] | None]:
    """Flatten the texts and, when they do not map one to one onto the images, say which image each text uses."""
    if text is None:
        return None, None
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, (list, tuple)) or not text:
        raise ValueError("`text` must be a string, a non-empty list of strings, or a list of lists of strings.")
    if images is None:
        return list(text), None
    num_images = len(flatten_images(images))
    if any(isinstance(t, (list, tuple)) for t in text):
        if len(text) != num_images:
            raise ValueError(f"`text` holds {len(text)} lists of texts for {num_images} images: one list per image.")
        per_image = [[t] if isinstance(t, str) else list(t) for t in text]
        return [t for texts in per_image for t in texts], [i for i, texts in enumerate(per_image) for _ in texts]
    if num_images == len(text):
        return list(text), None
    if num_images == 1:
        return list(text), [0] * len(text)
    raise ValueError(
        f"Got {num_images} images and {len(text)} texts: pass one text per image, any number of texts with one image, "
        "or one list of texts per image."
    )


__all__ = ["VlmHfProcessor"]
