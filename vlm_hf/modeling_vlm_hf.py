"""PyTorch vlm_hf models: a torchvision image encoder feeding a BERT-style single-stream Transformer."""

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_vlm_hf import VlmHfConfig

# ----------------------------------------------------------------------------------------------------------------------
# Input checks: every public forward validates its tensors here, so mistakes surface as a ValueError naming the argument
# instead of a broadcast or an index error deep inside torch.
# ----------------------------------------------------------------------------------------------------------------------


def _check_rank(name: str, tensor: torch.Tensor, expected: str) -> None:
    if tensor.dim() != expected.count(",") + 1:
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(tensor.shape)}.")


def _check_leading(name: str, tensor: torch.Tensor, shape: tuple[int, ...], expected: str) -> None:
    if tuple(tensor.shape[: len(shape)]) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(tensor.shape)}.")


def _check_index_range(name: str, tensor: torch.Tensor, upper: int, what: str) -> None:
    if tensor.is_floating_point():
        raise ValueError(f"`{name}` must hold integer indices, got dtype {tensor.dtype}.")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() >= upper):
        raise ValueError(
            f"`{name}` holds values in [{int(tensor.min())}, {int(tensor.max())}] but must lie in [0, {upper - 1}] "
            f"({what})."
        )


def check_boxes(name: str, boxes: torch.Tensor) -> None:
    """Boxes are [x1, y1, x2, y2] normalised to the image size."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"`{name}` must end in 4 coordinates [x1, y1, x2, y2], got shape {tuple(boxes.shape)}.")
    if not torch.isfinite(boxes).all() or boxes.min() < 0 or boxes.max() > 1:
        raise ValueError(f"`{name}` must hold finite coordinates in [0, 1] (normalised by the image size).")
    if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
        raise ValueError(f"`{name}` must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1.")


# ----------------------------------------------------------------------------------------------------------------------
# Vision side
# ----------------------------------------------------------------------------------------------------------------------

# Classification heads of torchvision's models: not part of the feature trunk, dropped when loading their weights.
_TORCHVISION_HEAD_PREFIXES = ("fc.", "classifier.", "avgpool.")
_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_MIN_IMAGE_SIDE = 32  # every supported backbone downsamples by 32


def load_torchvision_weights(source: str, backbone: str) -> dict[str, torch.Tensor]:
    """A torchvision state dict, from a local file or a torchvision weights name (which torchvision downloads)."""
    if os.path.isfile(source):
        if source.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(source)
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
        return state_dict.get("state_dict", state_dict) if isinstance(state_dict, dict) else state_dict
    try:
        weights = (
            torchvision.models.get_weight(source)
            if "." in source
            else torchvision.models.get_model_weights(backbone)[source]
        )
    except (KeyError, ValueError, AttributeError) as error:
        available = [w.name for w in torchvision.models.get_model_weights(backbone)]
        raise ValueError(
            f"vision_pretrained={source!r} is neither a file nor a torchvision weights name of {backbone} "
            f"(available: {available + ['DEFAULT']})."
        ) from error
    return weights.get_state_dict(progress=False)


class VlmHfVisionBackbone(nn.Module):
    """The convolutional trunk of a torchvision ResNet or VGG, with torchvision's parameter names."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        model = torchvision.models.get_model(config.vision_backbone, weights=None)
        self.trunk = (
            _RESNET_TRUNK if config.vision_backbone.startswith(("resnet", "resnext", "wide_resnet")) else ("features",)
        )
        for name in self.trunk:
            self.add_module(name, getattr(model, name))
        if config.freeze_vision:
            self.requires_grad_(False)

    def train(self, mode: bool = True):
        # A frozen backbone also keeps its batch-norm statistics fixed. Re-freezing here covers parameters that
        # `from_pretrained` replaced after __init__ (it ends with `eval()`, as the Trainer starts with `train()`).
        if self.config.freeze_vision:
            self.requires_grad_(False)
        return super().train(mode and not self.config.freeze_vision)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = pixel_values
        for name in self.trunk:
            hidden = getattr(self, name)(hidden)
        return hidden

    @torch.no_grad()
    def load_torchvision_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a torchvision state dict into the trunk; every trunk tensor must be present with its shape."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_TORCHVISION_HEAD_PREFIXES)}
        own = self.state_dict(keep_vars=True)
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"The vision weights do not fit {self.config.vision_backbone}: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
            )
        for key, tensor in own.items():
            if tensor.shape != state_dict[key].shape:
                raise ValueError(
                    f"Vision weight {key!r} has shape {tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}."
                )
            tensor.copy_(state_dict[key])


class VlmHfVisualEmbeddings(nn.Module):
    """Visual tokens: feature projection + box location embedding + visual token type, then LayerNorm."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.feature_projection = nn.Linear(config.visual_feature_dim, config.hidden_size)
        self.location_projection = nn.Linear(config.visual_location_dim, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        locations = box_location_features(boxes, self.config.visual_location_dim).to(features.dtype)
        token_types = torch.full(features.shape[:2], self.config.visual_token_type_id, device=features.device)
        embeddings = (
            self.feature_projection(features)
            + self.location_projection(locations)
            + self.token_type_embeddings(token_types)
        )
        return self.dropout(self.LayerNorm(embeddings))


def box_location_features(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """[x1, y1, x2, y2] -> the corners (4), plus area (5), or plus width, height and area (7)."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    extra = {4: [], 5: [width * height], 7: [width, height, width * height]}[dim]
    return torch.cat([boxes, *(e.unsqueeze(-1) for e in extra)], dim=-1)


def grid_boxes(grid: int, device=None) -> torch.Tensor:
    """(grid*grid, 4) boxes of the cells of a grid over the image, row-major like the flattened feature map."""
    edges = torch.arange(grid + 1, dtype=torch.float32, device=device) / grid
    y1, x1 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(grid * grid, 4)


# ----------------------------------------------------------------------------------------------------------------------
# Text embeddings and the Transformer (BERT's layer structure and parameter names)
# ----------------------------------------------------------------------------------------------------------------------


class VlmHfEmbeddings(nn.Module):
    """BERT's text embeddings: word + position + token type, then LayerNorm."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, seq_length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(seq_length, device=inputs_embeds.device).expand(batch_size, -1)
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch_size, seq_length), dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class VlmHfSelfAttention(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # text and visual tokens attend to each other in both directions
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_length, _ = hidden_states.shape
        head_shape = (batch_size, seq_length, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(head_shape).transpose(1, 2)
        key = self.key(hidden_states).view(head_shape).transpose(1, 2)
        value = self.value(hidden_states).view(head_shape).transpose(1, 2)

        # Attention weights exist only in the eager computation.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout.p if self.training else 0.0,
        )
        return output.reshape(batch_size, seq_length, -1), weights


class VlmHfSelfOutput(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class VlmHfAttention(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.self = VlmHfSelfAttention(config)
        self.output = VlmHfSelfOutput(config)

    def forward(self, hidden_states, attention_mask, output_attentions=False):
        attended, weights = self.self(hidden_states, attention_mask, output_attentions)
        return self.output(attended, hidden_states), weights


class VlmHfIntermediate(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class VlmHfOutput(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class VlmHfLayer(GradientCheckpointingLayer):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.attention = VlmHfAttention(config)
        self.intermediate = VlmHfIntermediate(config)
        self.output = VlmHfOutput(config)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        attention_output, weights = self.attention(hidden_states, attention_mask, output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), weights


class VlmHfEncoder(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.layer = nn.ModuleList([VlmHfLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            # Positional arguments: gradient checkpointing only forwards gradients through those.
            hidden_states, weights = layer(hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


class VlmHfPooler(nn.Module):
    """The first token's final state through a dense layer and tanh, as in BERT."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class VlmHfPredictionHeadTransform(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


def extended_attention_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(batch, seq) 1/0 mask -> additive (batch, 1, 1, seq) mask; None when nothing is masked (fast SDPA path)."""
    if mask is None or bool(mask.all()):
        return None
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    additive = additive.masked_fill(~mask.bool(), torch.finfo(dtype).min)
    return additive[:, None, None, :]


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------

AUTO_MAP = {
    "AutoConfig": "configuration_vlm_hf.VlmHfConfig",
    "AutoModel": "modeling_vlm_hf.VlmHfModel",
    "AutoModelForPreTraining": "modeling_vlm_hf.VlmHfForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_vlm_hf.VlmHfForQuestionAnswering",
    "AutoModelForZeroShotImageClassification": "modeling_vlm_hf.VlmHfForImageTextRetrieval",
}


class VlmHfPreTrainedModel(PreTrainedModel):
    config_class = VlmHfConfig
    config: VlmHfConfig
    base_model_prefix = "vlm_hf"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["VlmHfEmbeddings", "VlmHfVisualEmbeddings", "VlmHfLayer", "VlmHfVisionBackbone"]

    def __init__(self, config: VlmHfConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if type(self)._auto_class is not None:
            # List every head in `auto_map`, not only this one, so that any Auto class loads the saved folder
            # through `trust_remote_code`.
            config.auto_map = {**AUTO_MAP, **(getattr(config, "auto_map", None) or {})}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            # torchvision's own initialisation of its convolutions.
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VlmHfForImageTextRetrieval):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        else:
            super()._init_weights(module)


@dataclass
class VlmHfModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length + num_visual_tokens, hidden_size)`):
        Final states of the text tokens followed by the visual tokens.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The first ([CLS]) token's final state through the pooler.
    visual_features (`torch.FloatTensor` of shape `(batch_size, num_visual_tokens, visual_feature_dim)`):
        The visual features before any masking: the targets of masked visual-feature regression.
    """

    visual_features: torch.FloatTensor | None = None


class VlmHfModel(VlmHfPreTrainedModel):
    """
    Single-stream vision-language encoder: text embeddings and visual tokens (from `pixel_values` through the
    backbone, or precomputed `visual_embeds`) concatenated into one BERT-style Transformer.
    """

    def __init__(self, config: VlmHfConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = VlmHfEmbeddings(config)
        self.vision_backbone = VlmHfVisionBackbone(config) if config.vision_backbone else None
        self.visual_pool = nn.AdaptiveAvgPool2d(config.visual_grid)
        self.visual_embeddings = VlmHfVisualEmbeddings(config)
        self.encoder = VlmHfEncoder(config)
        self.pooler = VlmHfPooler(config) if add_pooling_layer else None
        self.post_init()
        self._load_pretrained_backbone()

    def _load_pretrained_backbone(self) -> None:
        """Fill the backbone from `config.vision_pretrained` when the model is built from a config.

        Under `from_pretrained` the model is first built on the meta device and the checkpoint brings the backbone's
        weights, so nothing is read then.
        """
        if self.vision_backbone is None or not self.config.vision_pretrained:
            return
        if next(self.vision_backbone.parameters()).is_meta:
            return
        self.vision_backbone.load_torchvision_state_dict(
            load_torchvision_weights(self.config.vision_pretrained, self.config.vision_backbone)
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    # -- inputs ------------------------------------------------------------------------------------------------------

    def check_text_inputs(self, input_ids, attention_mask, token_type_ids, inputs_embeds) -> tuple[int, int]:
        """Validate the text inputs; returns (batch_size, text_length)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` (batch_size, text_length) or `inputs_embeds`.")
        if input_ids is not None:
            _check_rank("input_ids", input_ids, "(batch_size, text_length)")
            _check_index_range("input_ids", input_ids, self.config.vocab_size, "the vocabulary size")
            shape = tuple(input_ids.shape)
        else:
            _check_rank("inputs_embeds", inputs_embeds, "(batch_size, text_length, hidden_size)")
            shape = tuple(inputs_embeds.shape[:2])
        if shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"The text has {shape[1]} tokens but max_position_embeddings is {self.config.max_position_embeddings}."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(
                f"`attention_mask` must have shape {shape} like the text, got {tuple(attention_mask.shape)}."
            )
        if token_type_ids is not None:
            if tuple(token_type_ids.shape) != shape:
                raise ValueError(f"`token_type_ids` must have shape {shape}, got {tuple(token_type_ids.shape)}.")
            _check_index_range("token_type_ids", token_type_ids, self.config.type_vocab_size, "type_vocab_size")
        return shape

    def get_visual_features(
        self,
        pixel_values: torch.Tensor | None = None,
        visual_embeds: torch.Tensor | None = None,
        visual_boxes: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Visual features, boxes and mask of each distinct image: the grid features and cell boxes of `pixel_values`
        (num_images, grid*grid, ...), or the given `visual_embeds` and `visual_boxes` (the whole image by default).
        """
        if (pixel_values is None) == (visual_embeds is None):
            raise ValueError(
                "Pass exactly one of `pixel_values` (num_images, 3, height, width) or precomputed `visual_embeds` "
                f"(num_images, num_regions, {self.config.visual_feature_dim})."
            )
        if pixel_values is not None:
            if visual_boxes is not None:
                raise ValueError(
                    "`visual_boxes` go with `visual_embeds`; grid tokens of `pixel_values` have fixed boxes."
                )
            features = self._grid_features(pixel_values)
            boxes = grid_boxes(self.config.visual_grid, device=features.device)
            if pixel_mask is not None:
                visual_attention_mask = self._grid_mask(pixel_mask, pixel_values, visual_attention_mask)
        else:
            features = self._check_visual_embeds(visual_embeds)
            boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=features.device) if visual_boxes is None else visual_boxes
        num_images, num_tokens = features.shape[:2]
        if visual_boxes is not None:
            _check_leading("visual_boxes", visual_boxes, (num_images, num_tokens), "(num_images, num_regions, 4)")
            check_boxes("visual_boxes", visual_boxes)
        if visual_attention_mask is not None:
            _check_leading(
                "visual_attention_mask",
                visual_attention_mask,
                (num_images, num_tokens),
                "(num_images, num_visual_tokens)",
            )
        return features, boxes.expand(num_images, num_tokens, 4), visual_attention_mask

    def _grid_mask(self, pixel_mask, pixel_values, visual_attention_mask) -> torch.Tensor:
        """Grid cells that cover no real pixel (only padding) are masked out."""
        expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
        if tuple(pixel_mask.shape) != expected:
            raise ValueError(
                f"`pixel_mask` must have shape {expected} like `pixel_values`, got {tuple(pixel_mask.shape)}."
            )
        covered = self.visual_pool(pixel_mask[:, None].float()).flatten(1) > 0
        if visual_attention_mask is not None:
            covered &= visual_attention_mask.to(covered.device).bool()
        return covered.long()

    def _check_visual_embeds(self, visual_embeds: torch.Tensor) -> torch.Tensor:
        expected = f"(num_images, num_regions, {self.config.visual_feature_dim})"
        _check_rank("visual_embeds", visual_embeds, expected)
        if visual_embeds.shape[-1] != self.config.visual_feature_dim or not visual_embeds.is_floating_point():
            raise ValueError(
                f"`visual_embeds` must be a float tensor of shape {expected}, got {tuple(visual_embeds.shape)}."
            )
        return visual_embeds.to(self.dtype)

    def _grid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.vision_backbone is None:
            raise ValueError("This model has no vision backbone (vision_backbone=None): pass `visual_embeds` instead.")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"`pixel_values` must have shape (num_images, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        if min(pixel_values.shape[-2:]) < _MIN_IMAGE_SIDE:
            raise ValueError(
                f"`pixel_values` images must be at least {_MIN_IMAGE_SIDE}x{_MIN_IMAGE_SIDE}, got "
                f"{tuple(pixel_values.shape[-2:])}."
            )
        pixel_values = pixel_values.to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            feature_map = self.vision_backbone(pixel_values)
        return self.visual_pool(feature_map).flatten(2).transpose(1, 2)

    def embed_visual(
        self, features: torch.Tensor, boxes: torch.Tensor, visual_feature_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Visual token embeddings; tokens flagged in `visual_feature_mask` get zeroed features (masked regression)."""
        if visual_feature_mask is not None:
            _check_leading(
                "visual_feature_mask", visual_feature_mask, features.shape[:2], "(batch_size, num_visual_tokens)"
            )
            features = features.masked_fill(visual_feature_mask.bool().unsqueeze(-1), 0.0)
        return self.visual_embeddings(features, boxes)

    def encode(
        self,
        embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Run the Transformer and pooler over already embedded tokens."""
        sequence, hidden_states, attentions = self.encoder(
            embeddings,
            extended_attention_mask(attention_mask, embeddings.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence,
            pooler_output=self.pooler(sequence) if self.pooler is not None else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        visual_feature_mask: torch.BoolTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfModelOutput:
        r"""
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds:
            The text, as for [`BertModel`]; shape `(batch_size, text_length)`.
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, height, width)`):
            Images, encoded by the vision backbone into `visual_grid**2` tokens each.
        visual_embeds (`torch.FloatTensor` of shape `(num_images, num_regions, visual_feature_dim)`):
            Precomputed region features, instead of `pixel_values`.
        visual_boxes (`torch.FloatTensor` of shape `(num_images, num_regions, 4)`):
            Boxes `[x1, y1, x2, y2]` of the regions, normalised to `[0, 1]`. Defaults to the whole image.
        visual_attention_mask (`torch.Tensor` of shape `(num_images, num_visual_tokens)`):
            1 for real visual tokens, 0 for padding.
        image_index (`torch.LongTensor` of shape `(batch_size,)`):
            Text `i` is paired with image `image_index[i]`; each image goes through the backbone once however many
            texts share it. Without it, `num_images` must equal `batch_size` and text `i` uses image `i`.
        visual_feature_mask (`torch.BoolTensor` of shape `(batch_size, num_visual_tokens)`):
            Visual tokens whose input features are zeroed (masked visual-feature modelling).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        batch_size, text_length = self.check_text_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)
        features, boxes, visual_mask = self.get_visual_features(
            pixel_values, visual_embeds, visual_boxes, visual_attention_mask, pixel_mask
        )
        features, boxes, visual_mask = pair_with_texts(batch_size, image_index, features, boxes, visual_mask)

        text_embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        visual_embeddings = self.embed_visual(features, boxes, visual_feature_mask)
        embeddings = torch.cat([text_embeddings, visual_embeddings], dim=1)
        mask = joint_attention_mask(
            attention_mask, visual_mask, batch_size, text_length, features.shape[1], embeddings.device
        )

        outputs = self.encode(embeddings, mask, output_attentions, output_hidden_states)
        return VlmHfModelOutput(**outputs, visual_features=features)


def pair_with_texts(batch_size: int, image_index, *per_image: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Select, for each text, the per-image tensors of its image (`image_index`), or check they already align."""
    num_images = per_image[0].shape[0]
    if image_index is None:
        if num_images != batch_size:
            raise ValueError(
                f"Got {num_images} images for {batch_size} texts: pass one image per text, or `image_index` of shape "
                f"({batch_size},) saying which image each text uses."
            )
        return list(per_image)
    if image_index.shape != (batch_size,):
        raise ValueError(f"`image_index` must have shape ({batch_size},), got {tuple(image_index.shape)}.")
    _check_index_range("image_index", image_index, num_images, f"one of the {num_images} images")
    return [t if t is None else t.index_select(0, image_index.to(t.device)) for t in per_image]


def joint_attention_mask(text_mask, visual_mask, batch_size, text_length, num_visual, device) -> torch.Tensor | None:
    """Concatenate the text and visual masks; None when neither masks anything."""
    if text_mask is None and visual_mask is None:
        return None
    if text_mask is None:
        text_mask = torch.ones(batch_size, text_length, dtype=torch.long, device=device)
    if visual_mask is None:
        visual_mask = torch.ones(batch_size, num_visual, dtype=torch.long, device=device)
    return torch.cat([text_mask.to(device).long(), visual_mask.to(device).long()], dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Pretraining: masked LM, image-text matching, masked visual-feature regression
# ----------------------------------------------------------------------------------------------------------------------


class VlmHfLMPredictionHead(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.transform = VlmHfPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied to the word embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class VlmHfPreTrainingHeads(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.predictions = VlmHfLMPredictionHead(config)


class VlmHfVisualRegressionHead(nn.Module):
    """Predicts the original feature of each masked visual token."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.transform = VlmHfPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.visual_feature_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


@dataclass
class VlmHfForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Sum of the objectives whose labels were given.
    mlm_loss, itm_loss, mvf_loss (`torch.FloatTensor` of shape `()`):
        Masked LM, image-text matching and masked visual-feature regression losses, each when its labels were given.
    prediction_logits (`torch.FloatTensor`):
        Masked LM scores. With `labels`: `(num_masked_tokens, vocab_size)`, only at the masked positions (in
        row-major order of `labels != -100`); without: `(batch_size, text_length, vocab_size)`.
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
        Image-text matching scores; index 1 means "the text describes the image".
    visual_predictions (`torch.FloatTensor` of shape `(num_masked_visual_tokens, visual_feature_dim)`):
        Regressed features of the masked visual tokens, when `visual_feature_mask` is given.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mvf_loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    visual_predictions: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _sum_losses(*losses: torch.Tensor | None) -> torch.Tensor | None:
    present = [loss for loss in losses if loss is not None]
    return torch.stack(present).sum() if present else None


class VlmHfForPreTraining(VlmHfPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "vlm_hf.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.cls = VlmHfPreTrainingHeads(config)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.mvf_head = VlmHfVisualRegressionHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        visual_feature_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        itm_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForPreTrainingOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, text_length)`):
            Masked LM targets: the original token at masked positions, -100 elsewhere.
        itm_labels (`torch.LongTensor` of shape `(batch_size,)`):
            1 when the text describes its image, 0 for a mismatched pair.
        visual_feature_mask (`torch.BoolTensor` of shape `(batch_size, num_visual_tokens)`):
            Visual tokens to mask; their original features are regressed (mean squared error).
        """
        outputs = self.vlm_hf(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            visual_embeds=visual_embeds,
            visual_boxes=visual_boxes,
            visual_attention_mask=visual_attention_mask,
            image_index=image_index,
            visual_feature_mask=visual_feature_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        text_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        text_states = outputs.last_hidden_state[:, :text_length]
        visual_states = outputs.last_hidden_state[:, text_length:]

        mlm_loss = None
        if labels is not None:
            if labels.shape != text_states.shape[:2]:
                raise ValueError(f"`labels` must have shape {tuple(text_states.shape[:2])}, got {tuple(labels.shape)}.")
            masked = labels != -100
            # Scoring only the masked positions saves the vocabulary projection of every other token.
            prediction_logits = self.cls.predictions(text_states[masked])
            if masked.any():
                _check_index_range("labels", labels[masked], self.config.vocab_size, "the vocabulary size, or -100")
                mlm_loss = F.cross_entropy(prediction_logits.float(), labels[masked])
        else:
            prediction_logits = self.cls.predictions(text_states)

        itm_logits = self.itm_head(outputs.pooler_output)
        itm_loss = None
        if itm_labels is not None:
            if itm_labels.shape != itm_logits.shape[:1]:
                raise ValueError(
                    f"`itm_labels` must have shape ({itm_logits.shape[0]},), got {tuple(itm_labels.shape)}."
                )
            _check_index_range("itm_labels", itm_labels, 2, "0 = mismatched, 1 = matched")
            itm_loss = F.cross_entropy(itm_logits.float(), itm_labels)

        visual_predictions = mvf_loss = None
        if visual_feature_mask is not None:
            masked_visual = visual_feature_mask.bool()
            visual_predictions = self.mvf_head(visual_states[masked_visual])
            if masked_visual.any():
                targets = outputs.visual_features[masked_visual].detach()
                mvf_loss = F.mse_loss(visual_predictions.float(), targets.float())

        return VlmHfForPreTrainingOutput(
            loss=_sum_losses(mlm_loss, itm_loss, mvf_loss),
            mlm_loss=mlm_loss,
            itm_loss=itm_loss,
            mvf_loss=mvf_loss,
            prediction_logits=prediction_logits,
            itm_logits=itm_logits,
            visual_predictions=visual_predictions,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Visual question answering
# ----------------------------------------------------------------------------------------------------------------------


class VlmHfAnswerHead(nn.Module):
    """Two-layer answer classifier over the pooled output (UNITER's VQA head)."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(2 * config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.LayerNorm(self.activation(self.dense(pooled)))))


@dataclass
class VlmHfForQuestionAnsweringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Binary cross-entropy against the soft answer scores, summed over answers and averaged over questions.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Answer scores; `config.id2label` names the answers.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VlmHfForQuestionAnswering(VlmHfPreTrainedModel):
    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.classifier = VlmHfAnswerHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForQuestionAnsweringOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)` or `torch.LongTensor` of shape `(batch_size,)`):
            Soft answer scores in [0, 1] (VQA v2: min(#annotators who gave the answer / 3, 1)), or one answer id
            per question.
        """
        outputs = self.vlm_hf(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            visual_embeds=visual_embeds,
            visual_boxes=visual_boxes,
            visual_attention_mask=visual_attention_mask,
            image_index=image_index,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            targets = self._soft_targets(labels, logits)
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / logits.shape[0]
        return VlmHfForQuestionAnsweringOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _soft_targets(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        batch_size, num_labels = logits.shape
        if labels.is_floating_point():
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Soft-score `labels` must have shape ({batch_size}, {num_labels}), got {tuple(labels.shape)}."
                )
            if not torch.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
                raise ValueError("Soft-score `labels` must lie in [0, 1].")
            return labels.float()
        if labels.shape != (batch_size,):
            raise ValueError(f"Answer-id `labels` must have shape ({batch_size},), got {tuple(labels.shape)}.")
        _check_index_range("labels", labels, num_labels, "num_labels")
        return F.one_hot(labels, num_labels).float()


# ----------------------------------------------------------------------------------------------------------------------
# Image-text retrieval
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VlmHfForImageTextRetrievalOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Sum of `contrastive_loss` and `itm_loss`, those that were computed.
    logits_per_image (`torch.FloatTensor` of shape `(num_images, num_texts)`):
        Scaled cosine similarities of every image with every text.
    logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_images)`):
        The transpose of `logits_per_image`.
    text_embeds (`torch.FloatTensor` of shape `(num_texts, retrieval_embed_dim)`), image_embeds (same for images):
        Normalised embeddings of each text and image, encoded separately.
    itm_logits (`torch.FloatTensor` of shape `(num_texts, 2)`):
        Image-text matching scores of each text with its own image (through the joint Transformer), when pairs are
        defined: `image_index` given, or as many images as texts.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None


class VlmHfForImageTextRetrieval(VlmHfPreTrainedModel):
    """
    Two ways of scoring image-text pairs with one Transformer: separately encoded image and text embeddings compared
    by a scaled cosine similarity (fast ranking of many images against many texts), and an image-text matching head
    over the joint encoding of a pair (precise re-ranking).
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.text_projection = nn.Linear(config.hidden_size, config.retrieval_embed_dim, bias=False)
        self.image_projection = nn.Linear(config.hidden_size, config.retrieval_embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """(num_texts, retrieval_embed_dim) projections of the texts encoded alone (pooled [CLS])."""
        self.vlm_hf.check_text_inputs(input_ids, attention_mask, token_type_ids, None)
        outputs = self.vlm_hf.encode(self.vlm_hf.embeddings(input_ids, token_type_ids), attention_mask)
        return self.text_projection(outputs.pooler_output)

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        """(num_images, retrieval_embed_dim) projections of the images encoded alone (mean of their visual tokens)."""
        visual = self.vlm_hf.get_visual_features(
            pixel_values, visual_embeds, visual_boxes, visual_attention_mask, pixel_mask
        )
        return self._project_images(*visual)

    def _project_images(self, features, boxes, mask) -> torch.FloatTensor:
        outputs = self.vlm_hf.encode(self.vlm_hf.embed_visual(features, boxes), mask)
        states = outputs.last_hidden_state
        weights = torch.ones(states.shape[:2], device=states.device) if mask is None else mask.to(states.device)
        weights = weights.to(states.dtype).unsqueeze(-1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.image_projection(pooled)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForImageTextRetrievalOutput:
        r"""
        image_index (`torch.LongTensor` of shape `(num_texts,)`):
            The image each text is paired with (for `itm_logits` and the contrastive positives).
        labels (`torch.LongTensor` of shape `(num_texts,)`):
            Image-text matching targets of the pairs: 1 matched, 0 mismatched. Mismatched pairs are not used as
            contrastive positives.
        return_loss (`bool`):
            Compute the symmetric contrastive loss over the similarity matrix.
        """
        text_embeds = F.normalize(self.get_text_features(input_ids, attention_mask, token_type_ids), dim=-1)
        # The backbone runs once: its features serve both the separate image embeddings and the joint ITM pass.
        features, boxes, visual_mask = self.vlm_hf.get_visual_features(
            pixel_values, visual_embeds, visual_boxes, visual_attention_mask, pixel_mask
        )
        image_embeds = F.normalize(self._project_images(features, boxes, visual_mask), dim=-1)
        logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()

        num_texts, num_images = logits_per_text.shape
        paired = image_index is not None or num_images == num_texts
        if labels is not None and not paired:
            raise ValueError(
                f"`labels` score text-image pairs: pass `image_index` ({num_texts},) or one image per text "
                f"(got {num_images} images for {num_texts} texts)."
            )
        itm_logits = itm_loss = contrastive_loss = None
        if paired:
            joint = self.vlm_hf(
                input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                visual_embeds=features,
                visual_boxes=boxes,
                visual_attention_mask=visual_mask,
                image_index=image_index,
            )
            itm_logits = self.itm_head(joint.pooler_output)
            if labels is not None:
                if labels.shape != (num_texts,):
                    raise ValueError(f"`labels` must have shape ({num_texts},), got {tuple(labels.shape)}.")
                _check_index_range("labels", labels, 2, "0 = mismatched, 1 = matched")
                itm_loss = F.cross_entropy(itm_logits.float(), labels)
        if return_loss:
            if not paired:
                raise ValueError("`return_loss` needs text-image pairs: pass `image_index` or one image per text.")
            contrastive_loss = contrastive_pair_loss(logits_per_text, image_index, labels)

        return VlmHfForImageTextRetrievalOutput(
            loss=_sum_losses(contrastive_loss, itm_loss),
            contrastive_loss=contrastive_loss,
            itm_loss=itm_loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            itm_logits=itm_logits,
        )


def contrastive_pair_loss(logits_per_text: torch.Tensor, image_index=None, labels=None) -> torch.Tensor:
    """
    Symmetric InfoNCE. Text `i`'s positive is image `image_index[i]` (or `i`); an image may have several positive
    texts (VQA/COCO: several captions per image), which share its target probability. Mismatched pairs
    (`labels == 0`) are never positives.
    """
    num_texts, num_images = logits_per_text.shape
    if image_index is None:
        image_index = torch.arange(num_texts, device=logits_per_text.device)
    positive = F.one_hot(image_index.to(logits_per_text.device), num_images).bool()
    if labels is not None:
        positive &= labels.bool().to(positive.device).unsqueeze(1)
    logits = logits_per_text.float()
    text_rows = positive.any(1)
    image_rows = positive.any(0)
    if not text_rows.any():
        return logits.sum() * 0.0
    text_loss = F.cross_entropy(logits[text_rows], positive[text_rows].float().argmax(1))
    image_targets = positive.t()[image_rows].float()
    image_targets = image_targets / image_targets.sum(1, keepdim=True)
    image_loss = F.cross_entropy(logits.t()[image_rows], image_targets)
    return (text_loss + image_loss) / 2


__all__ = [
    "VlmHfPreTrainedModel",
    "VlmHfModel",
    "VlmHfForPreTraining",
    "VlmHfForQuestionAnswering",
    "VlmHfForImageTextRetrieval",
]
