"""Configuration of the vlm_hf vision-language models."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

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
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")  # each halves the resolution (strides 4, 8, 16, 32)


def vision_feature_channels(backbone: str, feature_layer: str | None) -> int:
    """Channels of the backbone's feature map after `feature_layer` (None: its last stage)."""
    last = VISION_BACKBONE_CHANNELS[backbone]
    if feature_layer is None:
        return last
    # Every ResNet stage doubles the width of the one before it.
    return last >> (len(RESNET_STAGES) - 1 - RESNET_STAGES.index(feature_layer))


# Features derived from a box [x1, y1, x2, y2]: the corners, then area (ViLBERT, 5-d) or w, h, w*h (UNITER, 7-d);
# 0 = no location embedding (VisualBERT's original visual tokens carry none).
SUPPORTED_LOCATION_DIMS = (0, 4, 5, 7)

# How visual tokens are embedded; each original system's own recipe (see `VlmHfConfig`).
VISUAL_EMBEDDING_TYPES = ("default", "visualbert", "uniter", "vlbert", "vilbert")
# How text and image meet: one joint Transformer, ViLBERT's two co-attending streams, or two separate streams whose
# pooled vectors are combined (the design document's pooled fusions).
FUSIONS = ("single_stream", "co_attention", "add", "multiply", "concat", "outer")
POOLED_FUSIONS = ("add", "multiply", "concat", "outer")
JOINT_POOLINGS = ("product", "sum")
ANSWER_HEADS = ("mlp", "linear")
ANSWER_POOLINGS = ("pooler", "answer_token")
REGION_CLASSIFICATION_TOKENS = ("masked", "all")

# Hyperparameters of the original releases. The tiny variants keep each original's recipe (embedding type, heads,
# activation, eps, location features) at test sizes.
_TINY_SIZES = dict(
    vocab_size=1024,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vision_backbone="resnet18",
    visual_grid=3,
)
_BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    # Every original read 2048-d Faster R-CNN ResNet-101 region features; the ResNet-101 grid has that width.
    vision_backbone="resnet101",
)
_VISUALBERT = dict(
    _BERT_BASE,
    visual_embedding_type="visualbert",
    vocab_size=30522,  # bert-base-uncased
    type_vocab_size=2,
    visual_location_dim=0,
    visual_token_type_id=1,
    answer_head="linear",  # VisualBertForQuestionAnswering: dropout + one Linear ...
    answer_pooling="answer_token",  # ... on the state at position (text length - 2)
)
_UNITER = dict(
    _BERT_BASE,
    visual_embedding_type="uniter",
    vocab_size=28996,  # bert-base-cased
    type_vocab_size=2,
    visual_location_dim=7,  # [x1, y1, x2, y2, w, h, w*h]
    visual_token_type_id=1,
    pack_text_and_visual_tokens=True,
    answer_head="mlp",  # vqa_output: Linear(H, 2H), GELU, LayerNorm, Linear
    answer_pooling="pooler",
    tie_visual_regression_weights=True,  # feat_regress uses img_linear's weight, transposed
    num_region_classes=1601,  # Visual Genome object classes (+ background) of the MRC head
    region_head_layer_norm=True,
)
_VLBERT = dict(
    _BERT_BASE,
    visual_embedding_type="vlbert",
    vocab_size=30522,  # bert-base-uncased
    type_vocab_size=3,  # 0 / 1 text segments, 2 objects and [END]
    visual_token_type_id=2,
    visual_location_dim=2048,  # sin/cos box embedding: 4 coordinates x (sin, cos) x 256
    pack_text_and_visual_tokens=True,
    answer_head="mlp",  # final_mlp: dense, GELU, LayerNorm (width H), Linear
    answer_head_hidden_size=768,
    answer_pooling="answer_token",  # the [MASK] of `[CLS] question [SEP] [MASK] [SEP]`
    num_region_classes=1601,  # MVRC head
    region_head_layer_norm=False,
)
# ViLBERT's 6-layer co-attention release (config/bert_base_6layer_6conect.json of vilbert-multi-task, also the
# 12-in-1 multi-task model): BERT-base text stream, 6-layer 1024-wide visual stream, a co-attention layer after
# each of the last 6 text layers and each visual layer, ReLU poolers to 1024, joint vector by product.
_VILBERT = dict(
    _BERT_BASE,
    vocab_size=30522,  # bert-base-uncased
    type_vocab_size=2,
    fusion="co_attention",
    visual_embedding_type="vilbert",
    visual_location_dim=5,  # [x1, y1, x2, y2, area]
    visual_hidden_size=1024,
    visual_num_hidden_layers=6,
    visual_num_attention_heads=8,
    visual_intermediate_size=1024,
    fusion_hidden_size=1024,
    fusion_num_attention_heads=8,
    co_attention_text_layers=[6, 7, 8, 9, 10, 11],
    co_attention_visual_layers=[0, 1, 2, 3, 4, 5],
    joint_pooling="product",
    pooler_act="relu",
    answer_head="mlp",  # vil_prediction: Linear(bi, 2 bi), GELU, LayerNorm, Linear
    answer_head_hidden_size=2048,
    num_region_classes=1601,  # imagePredictions: Visual Genome classes of the detector
    region_head_layer_norm=True,
)
PRESETS: dict[str, dict] = {
    "visualbert-base": _VISUALBERT,
    "visualbert-tiny": {**_VISUALBERT, **_TINY_SIZES},
    "uniter-base": _UNITER,
    "uniter-large": {
        **_UNITER,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "uniter-tiny": {**_UNITER, **_TINY_SIZES, "num_region_classes": 11},
    "vlbert-base": _VLBERT,
    "vlbert-tiny": {
        **_VLBERT,
        **_TINY_SIZES,
        "visual_location_dim": 64,
        "answer_head_hidden_size": 32,
        "num_region_classes": 11,
    },
    "vilbert-base": _VILBERT,
    "vilbert-tiny": {
        **_VILBERT,
        **_TINY_SIZES,
        "visual_hidden_size": 24,
        "visual_num_hidden_layers": 2,
        "visual_num_attention_heads": 2,
        "visual_intermediate_size": 48,
        "fusion_hidden_size": 16,
        "fusion_num_attention_heads": 2,
        "co_attention_text_layers": [1, 2],
        "co_attention_visual_layers": [0, 1],
        "answer_head_hidden_size": 32,
        "num_region_classes": 11,
    },
}


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
    vision_feature_layer (`str` or `None`):
        The ResNet stage whose feature map gives the grid (`"layer1"` ... `"layer4"`); the stages after it are not
        built. An earlier stage sees finer detail at a lower cost (strides 4, 8, 16, 32). `None`: the last stage.
    visual_grid (`int`, defaults to 7):
        The backbone's feature map is average-pooled to a `visual_grid x visual_grid` grid; each cell is one
        visual token. 1 gives a single pooled image vector.
    visual_feature_dim (`int`, *optional*):
        Width of a visual feature. Defaults to the backbone's channel count; required when `vision_backbone=None`.
    visual_location_dim (`int`, defaults to 5):
        Features computed from each token's box: 4 (corners), 5 (corners + area) or 7 (corners, w, h, w*h).
    visual_token_type_id (`int`, defaults to 1):
        Token type of the visual tokens (text uses the `token_type_ids` given, 0 by default).
    num_labels (`int`):
        Size of the answer vocabulary of [`VlmHfForQuestionAnswering`].
    visual_embedding_type (`str`, defaults to `"default"`):
        How visual tokens are embedded. `"default"`: feature projection + box location + visual token type, then
        LayerNorm. `"visualbert"`: projection + visual token type + visual position (0) embeddings, normalised by the
        text LayerNorm (one LayerNorm over the joint sequence). `"uniter"`: LayerNorm(projection) +
        LayerNorm(7-d location linear) + token type 1 of the text table, then LayerNorm. `"vlbert"`: every text token
        also receives the whole-image feature (visual token 0), object tokens get a sin/cos box embedding
        concatenated with their feature and projected (ReLU), a shared object word embedding, and the sequence ends
        with an [END] token. Grid cells from `pixel_values` are boxes like any region, so every type runs from pixels.
    visual_location_dim (`int`, defaults to 5):
        `"default"`, `"visualbert"`: 0 (no location embedding), 4, 5 or 7 box features. `"uniter"`: 7.
        `"vlbert"`: width of the sin/cos box embedding, a multiple of 8 (4 coordinates x sin, cos).
    pack_text_and_visual_tokens (`bool`, defaults to `False`):
        Run the Transformer over each example's real text tokens immediately followed by its real visual tokens,
        padded only at the end (UNITER, VL-BERT): a shorter sequence when texts are padded. Outputs keep the
        `[text; visual]` layout.
    answer_head (`str`, defaults to `"mlp"`), answer_head_hidden_size (`int`, defaults to `2 * hidden_size`):
        VQA classifier: `"mlp"` (dense, activation, LayerNorm, linear) or `"linear"` (VisualBERT).
    answer_pooling (`str`, defaults to `"pooler"`):
        What the VQA classifier reads: the pooled [CLS] (`"pooler"`) or the state of the text token at position
        (text length - 2) (`"answer_token"`: VisualBERT; VL-BERT's [MASK] in `[CLS] q [SEP] [MASK] [SEP]`).
    visual_reasoning_pairs (`bool`, defaults to `False`):
        [`VlmHfForVisualReasoning`] classifies pairs of rows (ViLBERT's NLVR2 head): rows `2k` and `2k + 1` hold
        example `k`'s text with each of its two images, and their joint vectors are concatenated. `False`: each row
        is classified alone (VisualBERT's NLVR2 head reads both images' regions as one image).
    visual_reasoning_head (`str`, defaults to `"linear"`):
        [`VlmHfForVisualReasoning`]'s classifier: `"linear"` (VisualBERT) or `"mlp"` (dense to
        `answer_head_hidden_size`, activation, LayerNorm, linear: ViLBERT's `vil_binary_prediction`).
    tie_visual_regression_weights (`bool`, defaults to `False`):
        Masked visual-feature regression decodes with the transposed feature projection (UNITER's `feat_regress`).
    num_region_classes (`int`, defaults to 0), region_head_layer_norm (`bool`, defaults to `True`):
        Masked region classification head of [`VlmHfForPreTraining`] (UNITER MRC with LayerNorm, VL-BERT MVRC
        without); 0 builds none.
    region_classification_tokens (`str`, defaults to `"masked"`):
        Which visual tokens the region classification head scores: `"masked"` (UNITER, VL-BERT, ViLBERT: only the
        masked regions, predicted from their context) or `"all"` (every real visual token; with a trainable backbone
        this teaches its grid cells what they show, from object boxes mapped onto the grid).
    region_class_names (`list[str]`, *optional*):
        The names of the region classes (index = class id), recorded when they come from the training data.
    fusion (`str`, defaults to `"single_stream"`):
        How text and image meet. `"single_stream"`: one Transformer over `[text; visual]` tokens (VisualBERT,
        VL-BERT, UNITER). `"co_attention"`: ViLBERT's two streams — the text stream (`hidden_size`,
        `num_hidden_layers`, ...) and a visual stream with its own sizes, joined by co-attention layers in which each
        stream's queries attend to the other stream's keys and values. `"add"`, `"multiply"`, `"concat"`, `"outer"`:
        the two streams run separately and their pooled vectors are combined (element-wise sum or product,
        concatenation, or a bilinear "outer product" factorised to rank `outer_product_rank`).
    visual_hidden_size, visual_num_hidden_layers, visual_num_attention_heads, visual_intermediate_size (`int`):
        Sizes of the visual stream of two-stream fusions (ViLBERT's `v_*`); default to the text stream's, with
        64-wide heads and a 4x feed-forward.
    co_attention_text_layers, co_attention_visual_layers (`list[int]`, *optional*):
        ViLBERT's `t_biattention_id` / `v_biattention_id`: co-attention layer `c` runs once the text stream has
        passed `co_attention_text_layers[c]` of its own layers and the visual stream `co_attention_visual_layers[c]`
        of its own; the remaining layers of each stream run afterwards. Default: one co-attention layer after each of
        the last `k` text layers and the first `k` visual layers, `k = min(num_hidden_layers,
        visual_num_hidden_layers)`, as in ViLBERT.
    fusion_hidden_size, fusion_num_attention_heads (`int`, *optional*):
        Width and heads of co-attention (ViLBERT's `bi_hidden_size`); both streams' poolers project to this width.
        Default: `hidden_size`, 64-wide heads.
    joint_pooling (`str`, defaults to `"product"`):
        `fusion="co_attention"`: the joint vector is the `"product"` or `"sum"` of the two pooled vectors.
    outer_product_rank (`int`, defaults to 128):
        `fusion="outer"`: rank of the factorised bilinear map, `z = P((U t + a) * (V v + b))` — the outer product of
        the bias-augmented pooled vectors `[t; 1] (x) [v; 1]` projected through a rank-`r` weight, so parameters and
        memory grow linearly with the hidden size instead of with its square.
    fusion_interaction_layers (`int`, defaults to 0):
        Two-stream fusions: Transformer layers at the joint width over `[joint vector; text tokens; visual tokens]`
        after the fusion (attention interaction); the joint token's final state becomes `pooler_output`.
    pooler_act (`str`, defaults to `"tanh"`):
        Activation of the poolers (BERT's tanh; ViLBERT's ReLU).
    num_task_tokens (`int`, defaults to 0):
        Two-stream fusions: learned task embeddings (12-in-1's task tokens; 20 in the release), one inserted after
        [CLS] when `task_ids` is passed.
    preset (`str`, *optional*):
        The preset the config was built from ([`VlmHfConfig.from_preset`]), shown on model cards.
    retrieval_embed_dim (`int`, defaults to 256):
        Width of the image and text embeddings of [`VlmHfForImageTextRetrieval`].
    logit_scale_init_value (`float`, defaults to 2.6592):
        Initial log temperature of the retrieval similarities (CLIP's `log(1 / 0.07)`).
    bos_token_id, eos_token_id (`int`, *optional*):
        Generation ([`VlmHfForConditionalGeneration`]): the tokenizer's [CLS] and [SEP] ids. A prompt is
        `[CLS] prompt [SEP]` (the empty prompt, for captions, is `[CLS] [SEP]`) and the generated text ends with
        [SEP]; `generate` stops there. Unset, generation runs to its length limit.

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
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    vision_backbone: str | None = "resnet101"
    vision_pretrained: str | None = None
    freeze_vision: bool = False
    vision_feature_layer: str | None = None
    visual_grid: int = 7
    visual_feature_dim: int | None = None
    visual_location_dim: int = 5
    visual_token_type_id: int = 1
    visual_embedding_type: str = "default"
    pack_text_and_visual_tokens: bool = False

    fusion: str = "single_stream"
    visual_hidden_size: int | None = None
    visual_num_hidden_layers: int | None = None
    visual_num_attention_heads: int | None = None
    visual_intermediate_size: int | None = None
    co_attention_text_layers: list[int] | None = None
    co_attention_visual_layers: list[int] | None = None
    fusion_hidden_size: int | None = None
    fusion_num_attention_heads: int | None = None
    joint_pooling: str = "product"
    outer_product_rank: int = 128
    fusion_interaction_layers: int = 0
    pooler_act: str = "tanh"
    num_task_tokens: int = 0

    answer_head: str = "mlp"
    answer_head_hidden_size: int | None = None
    answer_pooling: str = "pooler"
    visual_reasoning_pairs: bool = False
    visual_reasoning_head: str = "linear"
    tie_visual_regression_weights: bool = False
    num_region_classes: int = 0
    region_head_layer_norm: bool = True
    region_classification_tokens: str = "masked"
    region_class_names: list[str] | None = None
    preset: str | None = None

    retrieval_embed_dim: int = 256
    logit_scale_init_value: float | int = 2.6592
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # BERT's proportions: 64-wide attention heads and a 4x feed-forward, so any hidden_size works unchanged.
        if self.num_attention_heads is None:
            self.num_attention_heads = max(1, self.hidden_size // 64)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.fusion in FUSIONS and self.fusion != "single_stream":
            self._set_stream_defaults()
        if self.answer_head_hidden_size is None:
            # Twice the width the head reads (an unknown fusion is reported by the validation that follows).
            self.answer_head_hidden_size = 2 * (self.joint_hidden_size if self.fusion in FUSIONS else self.hidden_size)
        if self.visual_feature_dim is None and self.vision_backbone in VISION_BACKBONE_CHANNELS:
            if self.vision_feature_layer in (None, *RESNET_STAGES):
                self.visual_feature_dim = vision_feature_channels(self.vision_backbone, self.vision_feature_layer)
        super().__post_init__(**kwargs)

    def _set_stream_defaults(self) -> None:
        """Two-stream sizes left unset: the visual stream mirrors the text stream, fusion happens at its width."""
        if self.visual_hidden_size is None:
            self.visual_hidden_size = self.hidden_size
        if self.visual_num_hidden_layers is None:
            self.visual_num_hidden_layers = self.num_hidden_layers
        if self.visual_num_attention_heads is None:
            self.visual_num_attention_heads = max(1, self.visual_hidden_size // 64)
        if self.visual_intermediate_size is None:
            self.visual_intermediate_size = 4 * self.visual_hidden_size
        if self.fusion_hidden_size is None:
            self.fusion_hidden_size = self.hidden_size
        if self.fusion_num_attention_heads is None:
            self.fusion_num_attention_heads = max(1, self.fusion_hidden_size // 64)
        if self.fusion == "co_attention" and self.co_attention_text_layers is None is self.co_attention_visual_layers:
            # ViLBERT's placement: one co-attention layer after each of the last k text layers and each of the first
            # k visual layers (the first one sees the visual embeddings).
            count = min(self.num_hidden_layers, self.visual_num_hidden_layers)
            self.co_attention_text_layers = list(range(self.num_hidden_layers - count + 1, self.num_hidden_layers + 1))
            self.co_attention_visual_layers = list(range(count))

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
        self._validate_vision_feature_layer()
        backbone_channels = (
            vision_feature_channels(self.vision_backbone, self.vision_feature_layer) if self.vision_backbone else None
        )
        if backbone_channels is not None and self.visual_feature_dim != backbone_channels:
            raise ValueError(
                f"visual_feature_dim={self.visual_feature_dim} does not match the {backbone_channels} channels of "
                f"vision_backbone={self.vision_backbone!r}; leave it unset or set vision_backbone=None."
            )
        if self.visual_grid < 1:
            raise ValueError(f"visual_grid must be a positive integer, got {self.visual_grid}.")
        self._validate_visual_embedding_type()
        if not 0 <= self.visual_token_type_id < self.type_vocab_size:
            raise ValueError(
                f"visual_token_type_id ({self.visual_token_type_id}) must be below type_vocab_size "
                f"({self.type_vocab_size})."
            )

        self._validate_heads()
        self._validate_fusion()

    def _validate_vision_feature_layer(self) -> None:
        if self.vision_feature_layer is None:
            return
        if self.vision_backbone is None or self.vision_backbone.startswith("vgg"):
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer!r} needs a ResNet-family vision_backbone, got "
                f"{self.vision_backbone!r}."
            )
        if self.vision_feature_layer not in RESNET_STAGES:
            raise ValueError(
                f"vision_feature_layer must be one of {list(RESNET_STAGES)} or None, got {self.vision_feature_layer!r}."
            )

    @property
    def vision_stride(self) -> int:
        """How many pixels one cell of the backbone's feature map spans."""
        if self.vision_feature_layer is None:
            return 32
        return 4 << RESNET_STAGES.index(self.vision_feature_layer)

    def _validate_visual_embedding_type(self) -> None:
        kind, location_dim = self.visual_embedding_type, self.visual_location_dim
        if kind not in VISUAL_EMBEDDING_TYPES:
            raise ValueError(f"visual_embedding_type must be one of {VISUAL_EMBEDDING_TYPES}, got {kind!r}.")
        if kind == "uniter" and location_dim != 7:
            raise ValueError(f"visual_embedding_type='uniter' needs visual_location_dim=7, got {location_dim}.")
        elif kind == "vlbert" and (location_dim <= 0 or location_dim % 8):
            raise ValueError(
                "visual_embedding_type='vlbert' needs visual_location_dim to be a positive multiple of 8 (the sin/cos "
                f"box embedding width), got {location_dim}."
            )
        elif kind not in ("uniter", "vlbert") and location_dim not in SUPPORTED_LOCATION_DIMS:
            raise ValueError(f"visual_location_dim must be one of {SUPPORTED_LOCATION_DIMS}, got {location_dim}.")
        if kind == "vlbert" and self.tie_visual_regression_weights:
            raise ValueError(
                "tie_visual_regression_weights needs a plain feature projection; visual_embedding_type='vlbert' "
                "projects features together with the box embedding."
            )

    def _validate_heads(self) -> None:
        if self.answer_head not in ANSWER_HEADS:
            raise ValueError(f"answer_head must be one of {ANSWER_HEADS}, got {self.answer_head!r}.")
        if self.answer_pooling not in ANSWER_POOLINGS:
            raise ValueError(f"answer_pooling must be one of {ANSWER_POOLINGS}, got {self.answer_pooling!r}.")
        if self.visual_reasoning_head not in ANSWER_HEADS:
            raise ValueError(
                f"visual_reasoning_head must be one of {ANSWER_HEADS}, got {self.visual_reasoning_head!r}."
            )
        if self.answer_head_hidden_size < 1:
            raise ValueError(f"answer_head_hidden_size must be positive, got {self.answer_head_hidden_size}.")
        if self.num_region_classes < 0:
            raise ValueError(f"num_region_classes must be >= 0 (0 = no region head), got {self.num_region_classes}.")
        if self.region_classification_tokens not in REGION_CLASSIFICATION_TOKENS:
            raise ValueError(
                f"region_classification_tokens must be one of {REGION_CLASSIFICATION_TOKENS}, "
                f"got {self.region_classification_tokens!r}."
            )
        names = self.region_class_names
        if names is not None and len(names) != self.num_region_classes:
            raise ValueError(
                f"region_class_names has {len(names)} names but num_region_classes is {self.num_region_classes}."
            )

    def _validate_fusion(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}.")
        if self.pooler_act not in ACT2FN:
            raise ValueError(f"pooler_act must be an activation name such as 'tanh', 'relu', got {self.pooler_act!r}.")
        if not self.is_two_stream:
            two_stream_only = (
                "visual_hidden_size",
                "visual_num_hidden_layers",
                "visual_num_attention_heads",
                "visual_intermediate_size",
                "fusion_hidden_size",
                "fusion_num_attention_heads",
                "fusion_interaction_layers",
                "num_task_tokens",
            )
            stray = [name for name in two_stream_only if getattr(self, name)]  # unset: None, or 0 for the counts
            if stray:
                raise ValueError(
                    f"{stray} only apply to the two-stream fusions {FUSIONS[1:]}; fusion='single_stream' "
                    "runs one joint Transformer."
                )
            if self.visual_embedding_type == "vilbert":
                raise ValueError(
                    "visual_embedding_type='vilbert' embeds tokens for ViLBERT's separate visual stream; use it with "
                    f"fusion in {FUSIONS[1:]}."
                )
        else:
            self._validate_two_stream()
        if self.fusion != "co_attention" and (self.co_attention_text_layers or self.co_attention_visual_layers):
            raise ValueError(
                "co_attention_text_layers / co_attention_visual_layers place co-attention layers; "
                f"fusion={self.fusion!r} has none (use fusion='co_attention')."
            )

    def _validate_two_stream(self) -> None:
        for size, heads in (
            ("visual_hidden_size", "visual_num_attention_heads"),
            ("fusion_hidden_size", "fusion_num_attention_heads"),
        ):
            if getattr(self, size) < 1 or getattr(self, heads) < 1 or getattr(self, size) % getattr(self, heads):
                raise ValueError(
                    f"{size} ({getattr(self, size)}) must be a positive multiple of {heads} ({getattr(self, heads)})."
                )
        if self.visual_num_hidden_layers < 0 or self.visual_intermediate_size < 1:
            raise ValueError(
                f"visual_num_hidden_layers must be >= 0 and visual_intermediate_size positive, got "
                f"{self.visual_num_hidden_layers} and {self.visual_intermediate_size}."
            )
        if self.visual_embedding_type not in ("default", "vilbert"):
            raise ValueError(
                f"visual_embedding_type={self.visual_embedding_type!r} builds a joint sequence; the two-stream fusion "
                f"{self.fusion!r} takes 'default' or 'vilbert' visual embeddings."
            )
        if self.pack_text_and_visual_tokens or self.answer_pooling != "pooler":
            raise ValueError(
                f"fusion={self.fusion!r} keeps text and visual tokens in separate streams: it needs "
                "pack_text_and_visual_tokens=False and answer_pooling='pooler'."
            )
        if self.joint_pooling not in JOINT_POOLINGS:
            raise ValueError(f"joint_pooling must be one of {JOINT_POOLINGS}, got {self.joint_pooling!r}.")
        if self.outer_product_rank < 1:
            raise ValueError(f"outer_product_rank must be positive, got {self.outer_product_rank}.")
        if self.fusion_interaction_layers < 0 or self.num_task_tokens < 0:
            raise ValueError(
                f"fusion_interaction_layers and num_task_tokens must be >= 0, got {self.fusion_interaction_layers} "
                f"and {self.num_task_tokens}."
            )
        if self.fusion_interaction_layers and self.joint_hidden_size % self.fusion_num_attention_heads:
            raise ValueError(
                f"The interaction layers run at the joint width {self.joint_hidden_size}, which must be a multiple of "
                f"fusion_num_attention_heads ({self.fusion_num_attention_heads})."
            )
        if self.fusion == "co_attention":
            self._validate_co_attention_layers()

    def _validate_co_attention_layers(self) -> None:
        text, visual = self.co_attention_text_layers, self.co_attention_visual_layers
        if text is None or visual is None or len(text) != len(visual):
            raise ValueError(
                "co_attention_text_layers and co_attention_visual_layers must be lists of the same length (one entry "
                f"per co-attention layer), got {text} and {visual}."
            )
        for name, depths, num_layers in (
            ("co_attention_text_layers", text, self.num_hidden_layers),
            ("co_attention_visual_layers", visual, self.visual_num_hidden_layers),
        ):
            if any(not 0 <= depth <= num_layers for depth in depths) or list(depths) != sorted(depths):
                raise ValueError(
                    f"{name} must be non-decreasing stream depths in [0, {num_layers}] (co-attention layer c runs "
                    f"after that many of the stream's own layers), got {depths}."
                )

    @property
    def is_two_stream(self) -> bool:
        """Text and image have their own Transformer streams (every fusion but 'single_stream')."""
        return self.fusion != "single_stream"

    @property
    def visual_stream_hidden_size(self) -> int:
        """Width of the visual tokens' states."""
        return self.visual_hidden_size if self.is_two_stream else self.hidden_size

    @property
    def stream_pooled_size(self) -> int:
        """Width of each stream's pooled vector: `fusion_hidden_size` for two streams."""
        return self.fusion_hidden_size if self.is_two_stream else self.hidden_size

    @property
    def joint_hidden_size(self) -> int:
        """Width of the joint vector (`pooler_output`) that the task heads read."""
        if not self.is_two_stream:
            return self.hidden_size
        return 2 * self.fusion_hidden_size if self.fusion == "concat" else self.fusion_hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VlmHfConfig":
        """
        The configuration of an original release (`PRESETS`: "visualbert-base", "uniter-base", "uniter-large",
        "vlbert-base", and "*-tiny" test sizes of each), with `overrides` (any config argument) applied on top.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides, "preset": name})

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens produced from `pixel_values`."""
        # ViLBERT's [IMG] token, VL-BERT's whole-image box: one more token before the grid cells.
        return self.visual_grid**2 + (1 if self.visual_embedding_type in ("vilbert", "vlbert") else 0)


__all__ = ["VlmHfConfig", "PRESETS"]
