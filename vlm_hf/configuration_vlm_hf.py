"""Configuration of the vlm_hf vision-language models."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# Output channels of each supported torchvision backbone's last feature map (ResNet layer 4, VGG `features`).
VISION_BACKBONE_CHANNELS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "resnext50_32x4d": 2048,
    "resnext101_32x8d": 2048,
    "resnext101_64x4d": 2048,
    "wide_resnet50_2": 2048,
    "wide_resnet101_2": 2048,
    **{f"vgg{depth}{bn}": 512 for depth in (11, 13, 16, 19) for bn in ("", "_bn")},
}

# Features derived from a box [x1, y1, x2, y2]: the corners, then area (ViLBERT, 5-d) or w, h, w*h (UNITER, 7-d).
SUPPORTED_LOCATION_DIMS = (4, 5, 7)


@strict
class VlmHfConfig(PreTrainedConfig):
    r"""
    Configuration of a vlm_hf model: a BERT-style Transformer over text tokens and visual tokens, the latter coming
    either from a torchvision backbone's grid features (`pixel_values`) or from precomputed region features
    (`visual_embeds`).

    Text arguments follow [`BertConfig`]; `num_attention_heads` defaults to `hidden_size // 64` and
    `intermediate_size` to `4 * hidden_size`, BERT's proportions. Vision arguments:

    vision_backbone (`str` or `None`, defaults to `"resnet101"`):
        A torchvision ResNet (`resnet18` ... `resnet152`, ResNeXt, Wide ResNet) or VGG (`vgg11` ... `vgg19`, with
        or without `_bn`). `None` builds no backbone: the model then only takes precomputed `visual_embeds`.
    vision_pretrained (`str` or `None`):
        Weights for the backbone when the model is built from a config: a torchvision weights name
        (`"DEFAULT"`, `"IMAGENET1K_V2"`, `"ResNet50_Weights.IMAGENET1K_V2"`), downloaded by torchvision, or the
        path of a local torchvision state dict (`.pth`/`.pt`/`.bin` or `.safetensors`).
    freeze_vision (`bool`, defaults to `False`):
        Keep the backbone's weights and batch-norm statistics fixed during training.
    visual_grid (`int`, defaults to 7):
        The backbone's last feature map is average-pooled to a `visual_grid x visual_grid` grid; each cell is one
        visual token. 1 gives a single pooled image vector.
    visual_feature_dim (`int`, *optional*):
        Width of a visual feature. Defaults to the backbone's channel count; required when `vision_backbone=None`.
    visual_location_dim (`int`, defaults to 5):
        Features computed from each token's box: 4 (corners), 5 (corners + area) or 7 (corners, w, h, w*h).
    visual_token_type_id (`int`, defaults to 1):
        Token type of the visual tokens (text uses the `token_type_ids` given, 0 by default).
    num_labels (`int`):
        Size of the answer vocabulary of [`VlmHfForQuestionAnswering`].
    retrieval_embed_dim (`int`, defaults to 256):
        Width of the image and text embeddings of [`VlmHfForImageTextRetrieval`].
    logit_scale_init_value (`float`, defaults to 2.6592):
        Initial log temperature of the retrieval similarities (CLIP's `log(1 / 0.07)`).

    Example:

    ```python
    >>> from vlm_hf import VlmHfConfig, VlmHfForQuestionAnswering
    >>> config = VlmHfConfig(vision_backbone="resnet18", hidden_size=256, num_hidden_layers=4, num_labels=10)
    >>> model = VlmHfForQuestionAnswering(config)
    ```
    """

    model_type = "vlm_hf"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0

    vision_backbone: str | None = "resnet101"
    vision_pretrained: str | None = None
    freeze_vision: bool = False
    visual_grid: int = 7
    visual_feature_dim: int | None = None
    visual_location_dim: int = 5
    visual_token_type_id: int = 1

    retrieval_embed_dim: int = 256
    logit_scale_init_value: float | int = 2.6592
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # BERT's proportions: 64-wide attention heads and a 4x feed-forward, so any hidden_size works unchanged.
        if self.num_attention_heads is None:
            self.num_attention_heads = max(1, self.hidden_size // 64)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.visual_feature_dim is None and self.vision_backbone is not None:
            self.visual_feature_dim = VISION_BACKBONE_CHANNELS.get(self.vision_backbone)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: every size must describe a model that can be built."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.vision_backbone is not None and self.vision_backbone not in VISION_BACKBONE_CHANNELS:
            raise ValueError(
                f"vision_backbone={self.vision_backbone!r} is not supported; expected one of "
                f"{sorted(VISION_BACKBONE_CHANNELS)} or None."
            )
        if self.vision_backbone is None and self.visual_feature_dim is None:
            raise ValueError("visual_feature_dim is required when vision_backbone=None (precomputed features only).")
        backbone_channels = VISION_BACKBONE_CHANNELS.get(self.vision_backbone)
        if backbone_channels is not None and self.visual_feature_dim != backbone_channels:
            raise ValueError(
                f"visual_feature_dim={self.visual_feature_dim} does not match the {backbone_channels} channels of "
                f"vision_backbone={self.vision_backbone!r}; leave it unset or set vision_backbone=None."
            )
        if self.visual_grid < 1:
            raise ValueError(f"visual_grid must be a positive integer, got {self.visual_grid}.")
        if self.visual_location_dim not in SUPPORTED_LOCATION_DIMS:
            raise ValueError(
                f"visual_location_dim must be one of {SUPPORTED_LOCATION_DIMS}, got {self.visual_location_dim}."
            )
        if not 0 <= self.visual_token_type_id < self.type_vocab_size:
            raise ValueError(
                f"visual_token_type_id ({self.visual_token_type_id}) must be below type_vocab_size "
                f"({self.type_vocab_size})."
            )

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens produced from `pixel_values`."""
        return self.visual_grid**2


__all__ = ["VlmHfConfig"]
