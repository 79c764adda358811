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
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg
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
    """The convolutional trunk of a torchvision ResNet (up to `config.vision_feature_layer`) or VGG, with
    torchvision's parameter names."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        model = torchvision.models.get_model(config.vision_backbone, weights=None)
        if config.vision_backbone.startswith(("resnet", "resnext", "wide_resnet")):
            last_stage = config.vision_feature_layer or "layer4"
            self.trunk = _RESNET_TRUNK[: _RESNET_TRUNK.index(last_stage) + 1]  # later stages are not built
        else:
            self.trunk = ("features",)
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
        unused_stages = tuple(f"{stage}." for stage in _RESNET_TRUNK if stage not in self.trunk)
        unused = _TORCHVISION_HEAD_PREFIXES + unused_stages  # the classifier, and stages after vision_feature_layer
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(unused)}
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

    has_token_type = True

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.feature_projection = nn.Linear(config.visual_feature_dim, config.hidden_size)
        self.location_projection = _location_projection(config)
        if self.has_token_type:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        embeddings = project_regions(self, features, boxes)
        if self.has_token_type:
            token_types = torch.full(features.shape[:2], self.config.visual_token_type_id, device=features.device)
            embeddings = embeddings + self.token_type_embeddings(token_types)
        return self.dropout(self.LayerNorm(embeddings))


def _location_projection(config: VlmHfConfig) -> nn.Linear | None:
    """The linear box embedding, or None when `visual_location_dim` is 0."""
    return nn.Linear(config.visual_location_dim, config.hidden_size) if config.visual_location_dim else None


def project_regions(embeddings: nn.Module, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """`embeddings.feature_projection` of the features, plus its `location_projection` of the boxes when it has one."""
    projected = embeddings.feature_projection(features)
    if embeddings.location_projection is not None:
        locations = box_location_features(boxes, embeddings.config.visual_location_dim).to(features.dtype)
        projected = projected + embeddings.location_projection(locations)
    return projected


class VlmHfVisualBertVisualEmbeddings(nn.Module):
    """
    VisualBERT's visual tokens: projection + visual token type + visual position embedding (position 0 for every
    region, as VisualBERT without `image_text_alignment`), normalised by the text embeddings' LayerNorm, i.e. one
    LayerNorm over the joint sequence. A box embedding is added only when `visual_location_dim` > 0 (not in the
    original, whose regions carry no location).
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.feature_projection = nn.Linear(config.visual_feature_dim, config.hidden_size)
        self.location_projection = _location_projection(config)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, text_embeddings: "VlmHfEmbeddings", *args, **kw):
        positions = torch.zeros(features.shape[:2], dtype=torch.long, device=features.device)
        embeddings = project_regions(self, features, boxes) + self.position_embeddings(positions)
        embeddings = embeddings + self.token_type_embeddings(positions + self.config.visual_token_type_id)
        return self.dropout(text_embeddings.LayerNorm(embeddings))


class VlmHfUniterVisualEmbeddings(nn.Module):
    """
    UNITER's image embeddings: LayerNorm(feature projection) + LayerNorm(linear embedding of the 7-d box
    [x1, y1, x2, y2, w, h, w*h]) + row `visual_token_type_id` of the *text* token-type table, then LayerNorm. No
    position embedding. Masked regions (zeroed features) receive a learned mask embedding.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.feature_projection = nn.Linear(config.visual_feature_dim, config.hidden_size)
        self.feature_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.location_projection = nn.Linear(config.visual_location_dim, config.hidden_size)
        self.location_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mask_feature_embedding = nn.Parameter(torch.zeros(config.visual_feature_dim))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        features: torch.Tensor,
        boxes: torch.Tensor,
        text_embeddings: "VlmHfEmbeddings",
        feature_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if feature_mask is not None:
            features = features + feature_mask.unsqueeze(-1).to(features.dtype) * self.mask_feature_embedding
        locations = box_location_features(boxes, self.config.visual_location_dim).to(features.dtype)
        token_type = text_embeddings.token_type_embeddings.weight[self.config.visual_token_type_id]
        embeddings = (
            self.feature_layer_norm(self.feature_projection(features))
            + self.location_layer_norm(self.location_projection(locations))
            + token_type
        )
        return self.dropout(self.LayerNorm(embeddings))


def box_sincos_embedding(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """
    VL-BERT's box embedding: the centre x, centre y, width and height of `[x1, y1, x2, y2]` (relative to the image,
    x100), each as `[sin(v / 1000^(i/d)), i < d]` then `[cos(...)]`, coordinate after coordinate (`dim` = 8 d).
    """
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    values = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1) * 100
    frequencies = dim // 8
    wavelengths = 1000 ** (torch.arange(frequencies, dtype=torch.float32, device=boxes.device) / frequencies)
    angles = values.unsqueeze(-1) / wavelengths
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class VlmHfVLBertVisualEmbeddings(nn.Module):
    """
    VL-BERT's visual side. Every visual token is an object: ReLU(linear([sin/cos box embedding | feature])); masked
    objects use a learned feature and word embedding. Object tokens are the shared object word embedding +
    LayerNorm(object representation), all at position (text length) and token type `visual_token_type_id`; an [END]
    token at position (text length + 1) closes the sequence. Every text token adds LayerNorm(representation of visual
    token 0, the whole-image box) (`text_visual_context`), or a learned embedding when there is no image. The text
    embeddings' LayerNorm normalises the joint sequence.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        hidden_size, feature_dim = config.hidden_size, config.visual_feature_dim
        self.object_projection = nn.Linear(config.visual_location_dim + feature_dim, hidden_size)
        self.object_word_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.mask_word_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.mask_feature_embedding = nn.Parameter(torch.zeros(feature_dim))
        self.text_only_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.end_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.text_visual_layer_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.object_visual_layer_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def object_representations(self, features, boxes, feature_mask=None) -> torch.Tensor:
        if feature_mask is not None:
            masked = feature_mask.bool().unsqueeze(-1)
            features = torch.where(masked, self.mask_feature_embedding.to(features.dtype), features)
        box_embeddings = box_sincos_embedding(boxes, self.config.visual_location_dim).to(features.dtype)
        return F.relu(self.object_projection(torch.cat([box_embeddings, features], dim=-1)))

    def text_visual_context(self, features=None, boxes=None, feature_mask=None) -> torch.Tensor:
        """What every text token adds: (batch, 1, hidden) from the whole-image token 0, or (hidden,) without image."""
        if features is None:
            return self.text_visual_layer_norm(self.text_only_embedding)
        whole_mask = None if feature_mask is None else feature_mask[:, :1]
        return self.text_visual_layer_norm(self.object_representations(features[:, :1], boxes[:, :1], whole_mask))

    def end_token(self, text_lengths: torch.Tensor, text_embeddings: "VlmHfEmbeddings") -> torch.Tensor:
        positions = (text_lengths + 1).unsqueeze(1)
        if int(positions.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"VL-BERT places its [END] token at position (text length + 1) = {int(positions.max())}, beyond "
                f"max_position_embeddings ({self.config.max_position_embeddings}); shorten the text."
            )
        embeddings = (
            self.end_embedding
            + text_embeddings.position_embeddings(positions)
            + text_embeddings.token_type_embeddings(torch.full_like(positions, self.config.visual_token_type_id))
        )
        return self.dropout(text_embeddings.LayerNorm(embeddings))

    def forward(
        self,
        features: torch.Tensor,
        boxes: torch.Tensor,
        text_embeddings: "VlmHfEmbeddings",
        feature_mask: torch.Tensor | None = None,
        text_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, num_objects + 1, hidden): the object tokens, then [END]."""
        if text_lengths is None:  # images encoded alone
            text_lengths = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        objects = self.object_representations(features, boxes, feature_mask)
        words = self.object_word_embedding.expand_as(objects)
        if feature_mask is not None:
            words = torch.where(feature_mask.bool().unsqueeze(-1), self.mask_word_embedding, words)
        positions = text_lengths.unsqueeze(1).expand(objects.shape[:2])
        embeddings = (
            words
            + self.object_visual_layer_norm(objects)
            + text_embeddings.position_embeddings(positions)
            + text_embeddings.token_type_embeddings(torch.full_like(positions, self.config.visual_token_type_id))
        )
        objects = self.dropout(text_embeddings.LayerNorm(embeddings))
        return torch.cat([objects, self.end_token(text_lengths, text_embeddings)], dim=1)


# visual_embedding_type -> module. ("vilbert" comes with the co-attention fusion.)
VISUAL_EMBEDDING_CLASSES = {
    "default": VlmHfVisualEmbeddings,
    "visualbert": VlmHfVisualBertVisualEmbeddings,
    "uniter": VlmHfUniterVisualEmbeddings,
    "vlbert": VlmHfVLBertVisualEmbeddings,
}


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
        visual_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`visual_context`: added to every token before the LayerNorm (VL-BERT's whole-image feature)."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if visual_context is not None:
            inputs_embeds = inputs_embeds + visual_context
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


def multi_head_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_attentions: bool = False,
    cache: Cache | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    (batch, length, width) projections split into `module.num_heads` heads, attended with the configured attention
    implementation, merged back to (batch, query length, width). `module` holds `config`, `num_heads`, `head_dim`,
    `scaling` and `dropout` (self-attention and co-attention alike). With a `cache`, the new keys and values are
    appended to layer `module.layer_idx`'s cached ones and the queries attend to all of them.
    """

    def split_heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:2], module.num_heads, module.head_dim).transpose(1, 2)

    key, value = split_heads(key), split_heads(value)
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx)
    # Attention weights exist only in the eager computation.
    implementation = "eager" if output_attentions else module.config._attn_implementation
    attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    output, weights = attention(
        module,
        split_heads(query),
        key,
        value,
        attention_mask,
        scaling=module.scaling,
        dropout=module.dropout.p if module.training else 0.0,
    )
    return output.reshape(*query.shape[:2], -1), weights


class VlmHfSelfAttention(nn.Module):
    def __init__(self, config: VlmHfConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # where this layer's keys and values live in a generation cache
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # text and visual tokens attend to each other in both directions
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        return multi_head_attention(self, query, key, value, attention_mask, output_attentions, cache)


class VlmHfResidualOutput(nn.Module):
    """BERT's block ending: dense from `input_size` to `output_size`, dropout, residual, LayerNorm."""

    def __init__(self, config: VlmHfConfig, input_size: int, output_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, output_size)
        self.LayerNorm = nn.LayerNorm(output_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class VlmHfSelfOutput(VlmHfResidualOutput):
    """After self-attention."""

    def __init__(self, config: VlmHfConfig):
        super().__init__(config, config.hidden_size, config.hidden_size)


class VlmHfAttention(nn.Module):
    def __init__(self, config: VlmHfConfig, layer_idx: int | None = None):
        super().__init__()
        self.self = VlmHfSelfAttention(config, layer_idx)
        self.output = VlmHfSelfOutput(config)

    def forward(self, hidden_states, attention_mask, output_attentions=False, cache=None):
        attended, weights = self.self(hidden_states, attention_mask, output_attentions, cache)
        return self.output(attended, hidden_states), weights


class VlmHfIntermediate(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class VlmHfOutput(VlmHfResidualOutput):
    """After the feed-forward intermediate layer."""

    def __init__(self, config: VlmHfConfig):
        super().__init__(config, config.intermediate_size, config.hidden_size)


class VlmHfLayer(GradientCheckpointingLayer):
    def __init__(self, config: VlmHfConfig, layer_idx: int | None = None):
        super().__init__()
        self.attention = VlmHfAttention(config, layer_idx)
        self.intermediate = VlmHfIntermediate(config)
        self.output = VlmHfOutput(config)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, cache=None):
        attention_output, weights = self.attention(hidden_states, attention_mask, output_attentions, cache)
        return self.output(self.intermediate(attention_output), attention_output), weights


class VlmHfEncoder(nn.Module):
    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.layer = nn.ModuleList([VlmHfLayer(config, index) for index in range(config.num_hidden_layers)])

    def forward(
        self, hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False, cache=None
    ):
        """`cache`: a transformers `Cache` that receives every layer's keys and values (generation)."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            # Positional arguments: gradient checkpointing only forwards gradients through those. The cache goes by
            # keyword, so that gradient checkpointing in training can drop it.
            hidden_states, weights = layer(hidden_states, attention_mask, output_attentions, cache=cache)
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
# Two-stream fusions: ViLBERT's co-attention, and the pooled fusions of separately encoded streams
# ----------------------------------------------------------------------------------------------------------------------


class VlmHfStreamConfig:
    """
    The model config seen with other sizes (`hidden_size`, `num_attention_heads`, `intermediate_size`), so the BERT
    layer classes build the visual stream and the fusion layers unchanged. Every other attribute, the attention
    implementation included, is read from the model config when used, so `set_attn_implementation` reaches them too.
    """

    def __init__(self, config: VlmHfConfig, **sizes: int):
        self.__dict__.update(_config=config, _sizes=sizes)

    def __getattr__(self, name: str):
        # copy and pickle look up dunders before `__dict__` is restored: those must fail as plain attribute errors.
        if name.startswith("__") or "_sizes" not in self.__dict__:
            raise AttributeError(name)
        sizes = self.__dict__["_sizes"]
        return sizes[name] if name in sizes else getattr(self.__dict__["_config"], name)


def visual_stream_config(config: VlmHfConfig) -> VlmHfConfig:
    """The sizes of the visual tokens' states: the visual stream's with two streams, the model's otherwise."""
    if not config.is_two_stream:
        return config
    return VlmHfStreamConfig(
        config,
        hidden_size=config.visual_hidden_size,
        num_attention_heads=config.visual_num_attention_heads,
        intermediate_size=config.visual_intermediate_size,
    )


class VlmHfViLBertVisualEmbeddings(VlmHfVisualEmbeddings):
    """ViLBERT's visual tokens: feature projection + box location projection, then LayerNorm; no token type."""

    has_token_type = False


def zero_masked_features(features: torch.Tensor, visual_feature_mask: torch.Tensor | None) -> torch.Tensor:
    """The features of the tokens flagged in `visual_feature_mask` (batch, tokens) zeroed (masked-feature modelling)."""
    if visual_feature_mask is None:
        return features
    _check_leading("visual_feature_mask", visual_feature_mask, features.shape[:2], "(batch_size, num_visual_tokens)")
    return features.masked_fill(visual_feature_mask.bool().unsqueeze(-1), 0.0)


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None, keepdim: bool = False) -> torch.Tensor:
    """Mean of (batch, tokens, width) states over the tokens that `mask` (batch, tokens) keeps (all without a mask)."""
    weights = torch.ones(states.shape[:2], device=states.device) if mask is None else mask.to(states.device)
    weights = weights.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1, keepdim=keepdim) / weights.sum(1, keepdim=keepdim).clamp(min=1.0)


def prepend_image_token(
    features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ViLBERT's [IMG] token in front of the regions: the mean of the real region features, the whole image as box."""
    image_feature = masked_mean(features, mask, keepdim=True)
    whole_image = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    features = torch.cat([image_feature, features], dim=1)
    boxes = torch.cat([whole_image.expand(boxes.shape[0], 1, 4), boxes], dim=1)
    if mask is not None:
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    return features, boxes, mask


class VlmHfCoAttention(nn.Module):
    """
    ViLBERT's bi-attention at `fusion_hidden_size`: the text queries attend to the visual keys and values, and the
    visual queries to the text keys and values.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.fusion_num_attention_heads
        self.head_dim = config.fusion_hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        width = config.fusion_hidden_size
        self.text_query = nn.Linear(config.hidden_size, width)
        self.text_key = nn.Linear(config.hidden_size, width)
        self.text_value = nn.Linear(config.hidden_size, width)
        self.visual_query = nn.Linear(config.visual_hidden_size, width)
        self.visual_key = nn.Linear(config.visual_hidden_size, width)
        self.visual_value = nn.Linear(config.visual_hidden_size, width)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, text, visual, text_mask=None, visual_mask=None, output_attentions=False):
        # Each stream's queries attend to the other stream's keys and values, under the other stream's mask.
        text_query, visual_key, visual_value = self.text_query(text), self.visual_key(visual), self.visual_value(visual)
        text_context, text_weights = multi_head_attention(
            self, text_query, visual_key, visual_value, visual_mask, output_attentions
        )
        visual_query, text_key, text_value = self.visual_query(visual), self.text_key(text), self.text_value(text)
        visual_context, visual_weights = multi_head_attention(
            self, visual_query, text_key, text_value, text_mask, output_attentions
        )
        return text_context, visual_context, text_weights, visual_weights


class VlmHfCoAttentionOutput(VlmHfResidualOutput):
    """Co-attention context (fusion width) back to a stream's width, residual, LayerNorm."""

    def __init__(self, config: VlmHfConfig, hidden_size: int):
        super().__init__(config, config.fusion_hidden_size, hidden_size)


class VlmHfCoAttentionLayer(GradientCheckpointingLayer):
    """
    ViLBERT's connection layer: co-attention (no self-attention), then each stream's own feed-forward. Both directions
    read the layer's inputs, so the two streams are updated simultaneously.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        visual_config = visual_stream_config(config)
        self.co_attention = VlmHfCoAttention(config)
        self.text_attention_output = VlmHfCoAttentionOutput(config, config.hidden_size)
        self.visual_attention_output = VlmHfCoAttentionOutput(config, config.visual_hidden_size)
        self.text_intermediate = VlmHfIntermediate(config)
        self.text_output = VlmHfOutput(config)
        self.visual_intermediate = VlmHfIntermediate(visual_config)
        self.visual_output = VlmHfOutput(visual_config)

    def forward(self, text, visual, text_mask=None, visual_mask=None, output_attentions=False):
        text_context, visual_context, text_weights, visual_weights = self.co_attention(
            text, visual, text_mask, visual_mask, output_attentions
        )
        text = self.text_attention_output(text_context, text)
        visual = self.visual_attention_output(visual_context, visual)
        text = self.text_output(self.text_intermediate(text), text)
        visual = self.visual_output(self.visual_intermediate(visual), visual)
        return text, visual, text_weights, visual_weights


def two_stream_schedule(config: VlmHfConfig) -> list[tuple[str, int]]:
    """
    The order of the blocks, ViLBERT's: before co-attention layer `c`, each stream runs its own layers up to depth
    `co_attention_{text,visual}_layers[c]`; the layers left over run at the end.
    """
    steps, text_done, visual_done = [], 0, 0
    text_depths, visual_depths = config.co_attention_text_layers or [], config.co_attention_visual_layers or []
    for index, (text_depth, visual_depth) in enumerate(zip(text_depths, visual_depths, strict=True)):
        steps += [("text", i) for i in range(text_done, text_depth)]
        steps += [("visual", i) for i in range(visual_done, visual_depth)]
        steps.append(("co_attention", index))
        text_done, visual_done = text_depth, visual_depth
    steps += [("visual", i) for i in range(visual_done, config.visual_num_hidden_layers)]
    return steps + [("text", i) for i in range(text_done, config.num_hidden_layers)]


@dataclass
class VlmHfTwoStreamEncoderOutput(ModelOutput):
    r"""
    Final states, and per block (with `output_hidden_states` / `output_attentions`) the states of each stream after
    every block that updates it, the self-attention weights of each stream and the co-attention weights of the text
    queries (`cross_attentions`) and the visual queries (`visual_cross_attentions`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class VlmHfTwoStreamEncoder(nn.Module):
    """
    A text stream (BERT layers, `encoder.layer.N` as in the single-stream model), a visual stream with its own sizes
    (`encoder.visual_layer.N`) and the co-attention layers between them (`encoder.co_attention_layer.N`, none for
    the pooled fusions). With one stream missing, the other runs alone, without co-attention.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        visual_config = visual_stream_config(config)
        self.layer = nn.ModuleList([VlmHfLayer(config) for _ in range(config.num_hidden_layers)])
        self.visual_layer = nn.ModuleList([VlmHfLayer(visual_config) for _ in range(config.visual_num_hidden_layers)])
        num_co_attention = len(config.co_attention_text_layers or [])
        self.co_attention_layer = nn.ModuleList([VlmHfCoAttentionLayer(config) for _ in range(num_co_attention)])
        self.schedule = two_stream_schedule(config)

    def forward(
        self,
        text: torch.Tensor | None,
        visual: torch.Tensor | None,
        text_mask: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> VlmHfTwoStreamEncoderOutput:
        record = {
            "hidden_states": [text] if output_hidden_states and text is not None else [],
            "visual_hidden_states": [visual] if output_hidden_states and visual is not None else [],
        }
        for name in ("attentions", "visual_attentions", "cross_attentions", "visual_cross_attentions"):
            record[name] = []
        for kind, index in self.schedule:
            # Positional arguments: gradient checkpointing only forwards gradients through those.
            if kind == "text" and text is not None:
                text, weights = self.layer[index](text, text_mask, output_attentions)
                updated = {"hidden_states": text, "attentions": weights}
            elif kind == "visual" and visual is not None:
                visual, weights = self.visual_layer[index](visual, visual_mask, output_attentions)
                updated = {"visual_hidden_states": visual, "visual_attentions": weights}
            elif kind == "co_attention" and text is not None and visual is not None:
                text, visual, text_weights, visual_weights = self.co_attention_layer[index](
                    text, visual, text_mask, visual_mask, output_attentions
                )
                updated = {
                    "hidden_states": text,
                    "visual_hidden_states": visual,
                    "cross_attentions": text_weights,
                    "visual_cross_attentions": visual_weights,
                }
            else:
                continue
            for name, value in updated.items():
                if (output_hidden_states if "hidden" in name else output_attentions) and value is not None:
                    record[name].append(value)
        return VlmHfTwoStreamEncoderOutput(
            last_hidden_state=text,
            visual_last_hidden_state=visual,
            **{name: tuple(values) if values else None for name, values in record.items()},
        )


class VlmHfStreamPooler(nn.Module):
    """
    One stream's summary projected to `fusion_hidden_size`: its first token ([CLS], or ViLBERT's [IMG]) or, for
    visual tokens without a summary token, the mean of the real tokens.
    """

    def __init__(self, config: VlmHfConfig, input_size: int, summary_token: bool = True):
        super().__init__()
        self.summary_token = summary_token
        self.dense = nn.Linear(input_size, config.fusion_hidden_size)
        self.activation = ACT2FN[config.pooler_act]

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        summary = states[:, 0] if self.summary_token else masked_mean(states, mask)
        return self.activation(self.dense(summary))


class VlmHfPooledFusion(nn.Module):
    """
    The joint vector from the two pooled vectors: product or sum (co-attention, `joint_pooling`), `add`, `multiply`,
    `concat`, or `outer`: the outer product of the bias-augmented vectors `[t; 1] (x) [v; 1]` mapped through a
    rank-`outer_product_rank` factorised weight, `P((U t + a) * (V v + b)) + c`, linear in the width.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.fusion = config.joint_pooling if config.fusion == "co_attention" else config.fusion
        if self.fusion == "outer":
            width, rank = config.fusion_hidden_size, config.outer_product_rank
            # The factors' biases are the "1" appended to each vector: they give the unimodal terms of the product.
            self.text_factor = nn.Linear(width, rank)
            self.visual_factor = nn.Linear(width, rank)
            self.output = nn.Linear(rank, width)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        if self.fusion in ("add", "sum"):
            return text + visual
        if self.fusion in ("multiply", "product"):
            return text * visual
        if self.fusion == "concat":
            return torch.cat([text, visual], dim=-1)
        return self.output(self.text_factor(text) * self.visual_factor(visual))


class VlmHfFusionInteraction(nn.Module):
    """
    Attention interaction after a fusion: Transformer layers at the joint width over `[joint vector; text tokens;
    visual tokens]` (each projected and given a modality embedding); the joint token's final state is returned.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        width = config.joint_hidden_size
        heads = config.fusion_num_attention_heads
        layer_config = VlmHfStreamConfig(
            config, hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width
        )
        self.text_projection = nn.Linear(config.hidden_size, width)
        self.visual_projection = nn.Linear(config.visual_hidden_size, width)
        self.modality_embeddings = nn.Embedding(3, width)  # 0 joint token, 1 text, 2 visual
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer = nn.ModuleList([VlmHfLayer(layer_config) for _ in range(config.fusion_interaction_layers)])

    def forward(self, joint, text_states, visual_states, text_mask=None, visual_mask=None) -> torch.Tensor:
        batch_size, text_length, num_visual = joint.shape[0], text_states.shape[1], visual_states.shape[1]
        tokens = torch.cat(
            [joint[:, None], self.text_projection(text_states), self.visual_projection(visual_states)], dim=1
        )
        modality = torch.tensor([0] + [1] * text_length + [2] * num_visual, device=tokens.device)
        tokens = self.dropout(self.LayerNorm(tokens + self.modality_embeddings(modality)))
        mask = joint_attention_mask(text_mask, visual_mask, batch_size, text_length, num_visual, tokens.device)
        if mask is not None:
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        mask = extended_attention_mask(mask, tokens.dtype)
        for layer in self.layer:
            tokens, _ = layer(tokens, mask)
        return tokens[:, 0]


class VlmHfTwoStreamPooler(nn.Module):
    """Each stream's pooler, the fusion of the two pooled vectors, and the optional interaction layers."""

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        self.text_pooler = VlmHfStreamPooler(config, config.hidden_size)
        self.visual_pooler = VlmHfStreamPooler(
            config, config.visual_hidden_size, summary_token=config.visual_embedding_type == "vilbert"
        )
        self.fusion = VlmHfPooledFusion(config)
        self.interaction = VlmHfFusionInteraction(config) if config.fusion_interaction_layers else None

    def forward(self, text_states, visual_states, text_mask=None, visual_mask=None):
        """Returns the joint vector, the pooled text and the pooled visual vector."""
        text_pooled = self.text_pooler(text_states, text_mask)
        visual_pooled = self.visual_pooler(visual_states, visual_mask)
        joint = self.fusion(text_pooled, visual_pooled)
        if self.interaction is not None:
            joint = self.interaction(joint, text_states, visual_states, text_mask, visual_mask)
        return joint, text_pooled, visual_pooled


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------

AUTO_MAP = {
    "AutoConfig": "configuration_vlm_hf.VlmHfConfig",
    "AutoModel": "modeling_vlm_hf.VlmHfModel",
    "AutoModelForPreTraining": "modeling_vlm_hf.VlmHfForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_vlm_hf.VlmHfForQuestionAnswering",
    "AutoModelForZeroShotImageClassification": "modeling_vlm_hf.VlmHfForImageTextRetrieval",
    "AutoModelForSequenceClassification": "modeling_vlm_hf.VlmHfForVisualReasoning",
    # Scores every (visual and text) token: the closest Auto class to referring-expression grounding.
    "AutoModelForTokenClassification": "modeling_vlm_hf.VlmHfForRegionGrounding",
    "AutoModelForImageTextToText": "modeling_vlm_hf.VlmHfForConditionalGeneration",
}


# -- safe loading -----------------------------------------------------------------------------------------------------
# `VlmHfPreTrainedModel.from_pretrained` reads weights from safetensors only: unpickling a checkpoint (`torch.load`)
# can run arbitrary code, so pickle weights load only with an explicit `allow_pickle_weights=True`.
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def _check_checkpoint_model_type(model_class, path, kwargs: dict) -> None:
    """Refuse a config of another model type (a BERT folder, say) rather than load part of it with warnings."""
    config, expected = kwargs.get("config"), model_class.config_class
    if config is not None and not isinstance(config, (str, os.PathLike)):
        # By model type, not class: the package's VlmHfConfig and a `trust_remote_code` copy of it are both right.
        if getattr(config, "model_type", None) != expected.model_type:
            raise ValueError(f"config must be a {expected.__name__}, got a {type(config).__name__}.")
        return
    if path is None or kwargs.get("gguf_file"):
        return
    try:
        config_dict, _ = expected.get_config_dict(config or path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
    except OSError:  # no readable config: transformers' own loading reports it
        return
    model_type = config_dict.get("model_type")
    if model_type is not None and model_type != expected.model_type:
        raise ValueError(
            f"{config or path} holds a {model_type!r} model, not a {expected.model_type!r} one: load it with its own "
            "class, or convert it first (`vlm-hf convert --help` lists the converters)."
        )


def _pickle_weights_in(path, kwargs: dict) -> str | None:
    """The pickle checkpoint that the folder or Hub repository `path` holds, if any (to explain a refused load)."""
    from transformers.utils.hub import has_file  # only needed once a load has failed

    subfolder = kwargs.get("subfolder") or ""
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs and k not in ("subfolder", "force_download")}
    for name in PICKLE_WEIGHTS_NAMES:
        try:
            if has_file(path, f"{subfolder}/{name}" if subfolder else name, **hub_kwargs):
                return name
        except OSError:  # the repository cannot be reached: transformers' own error says more
            return None
    return None


def _pickle_refusal(path, pickle_file: str) -> str:
    return (
        f"{path} has no safetensors weights (model.safetensors or model.safetensors.index.json), only the pickle "
        f"checkpoint {pickle_file}. vlm_hf refuses pickle weights by default because unpickling can run arbitrary "
        "code. If you trust their source, pass allow_pickle_weights=True to read them with "
        "torch.load(weights_only=True), then save_pretrained to convert them to safetensors once."
    )


class VlmHfPreTrainedModel(PreTrainedModel):
    config_class = VlmHfConfig
    config: VlmHfConfig
    base_model_prefix = "vlm_hf"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = [
        "VlmHfEmbeddings",
        "VlmHfVisualEmbeddings",
        "VlmHfLayer",
        "VlmHfVisionBackbone",
        "VlmHfViLBertVisualEmbeddings",
        "VlmHfCoAttentionLayer",
    ]

    def __init__(self, config: VlmHfConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if type(self)._auto_class is not None:
            # List every head in `auto_map`, not only this one, so that any Auto class loads the saved folder
            # through `trust_remote_code`.
            config.auto_map = {**AUTO_MAP, **(getattr(config, "auto_map", None) or {})}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_pickle_weights: bool = False, **kwargs):
        r"""
        `PreTrainedModel.from_pretrained`, loading safely:

        - weights are read from safetensors only (`model.safetensors` or a sharded index). A folder or Hub repository
          with only pickle weights (`pytorch_model.bin`) raises an `OSError` unless `allow_pickle_weights=True`; with
          it, they are read with `torch.load(weights_only=True)` (tensors and plain containers, no code);
        - a `config.json`, or a `config` object, of another `model_type` raises a `ValueError`;
        - weights whose shapes contradict the config raise a `ValueError` naming each parameter and both shapes
          (unless `ignore_mismatched_sizes=True`, which initialises them anew);
        - missing and unexpected keys are listed in transformers' load report (logged as a warning) and returned
          with `output_loading_info=True`.
        """
        path = pretrained_model_name_or_path
        _check_checkpoint_model_type(cls, path, kwargs)
        if allow_pickle_weights:
            if kwargs.get("weights_only") is False:
                raise ValueError("allow_pickle_weights=True reads pickle weights with weights_only=True only.")
            # transformers' `load_state_dict` reads `.bin` files with `torch.load(..., weights_only=True)` (after
            # `check_torch_load_is_safe`); safetensors still win when a folder has both.
            kwargs["weights_only"] = True
        else:
            if kwargs.get("use_safetensors") is False:
                raise ValueError("use_safetensors=False asks for pickle weights: pass allow_pickle_weights=True too.")
            if path is not None and os.path.isfile(path) and not str(path).endswith(".safetensors"):
                raise OSError(_pickle_refusal(path, os.path.basename(path)))
            kwargs["use_safetensors"] = True
        wants_loading_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            # Mismatched sizes are let through here, to be raised below with their names.
            model, loading_info = super().from_pretrained(
                path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except OSError as error:
            pickle_file = None if allow_pickle_weights or path is None else _pickle_weights_in(path, kwargs)
            if pickle_file is not None:
                raise OSError(_pickle_refusal(path, pickle_file)) from error
            raise
        mismatched = sorted(loading_info["mismatched_keys"])
        if mismatched and not ignore_mismatched_sizes:
            shapes = "; ".join(
                f"{key}: {tuple(saved)} in the weights, {tuple(built)} from the config"
                for key, saved, built in mismatched
            )
            raise ValueError(
                f"The weights at {path} do not fit the sizes its config describes: {shapes}. Check config.json "
                "(hidden_size, num_labels, vocab_size, ...), or pass ignore_mismatched_sizes=True to initialise "
                "these weights anew."
            )
        return (model, loading_info) if wants_loading_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            # torchvision's own initialisation of its convolutions.
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VlmHfForImageTextRetrieval):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, VlmHfVLBertVisualEmbeddings):
            # VL-BERT's initialisation: learned vectors ~ N(0, initializer_range), the masked-object feature 0, and the
            # visual LayerNorm scales 0 (`visual_scale_*_init`), so visual features enter the text gradually.
            vectors = (module.object_word_embedding, module.mask_word_embedding, module.text_only_embedding)
            for vector in (*vectors, module.end_embedding):
                init.normal_(vector, std=self.config.initializer_range)
            init.zeros_(module.mask_feature_embedding)
            init.zeros_(module.text_visual_layer_norm.weight)
            init.zeros_(module.object_visual_layer_norm.weight)
        elif isinstance(module, VlmHfUniterVisualEmbeddings):
            init.normal_(module.mask_feature_embedding, std=self.config.initializer_range)
        else:
            super()._init_weights(module)


@dataclass
class VlmHfModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length + num_visual_tokens, hidden_size)`):
        Final states of the text tokens followed by the visual tokens (VL-BERT: then its [END] token, one more
        position). Padding positions carry no meaning (with `pack_text_and_visual_tokens`, often zeros).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The first ([CLS]) token's final state through the pooler.
    visual_features (`torch.FloatTensor` of shape `(batch_size, num_visual_tokens, visual_feature_dim)`):
        The visual features before any masking: the targets of masked visual-feature regression (with ViLBERT's
        embeddings, token 0 is the [IMG] token's mean feature).
    visual_attention_mask (`torch.LongTensor` of shape `(batch_size, num_visual_tokens)`):
        1 for the real visual tokens of each text's image, 0 for padding (regions, or grid cells covering only
        `pixel_mask` padding), as the encoder saw them (ViLBERT's [IMG] token included); None when nothing is masked.

    Two-stream fusions (`config.fusion != "single_stream"`): `last_hidden_state` and `hidden_states` / `attentions`
    are the text stream's (`(batch_size, text_length, hidden_size)`, one more token with `task_ids`), `pooler_output`
    is the joint vector `(batch_size, config.joint_hidden_size)`, and:

    visual_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_visual_tokens, visual_hidden_size)`):
        Final states of the visual stream.
    text_pooler_output, visual_pooler_output (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`):
        Each stream's pooled vector, before their fusion.
    visual_hidden_states, visual_attentions, cross_attentions, visual_cross_attentions:
        The visual stream's states and self-attention weights, and the co-attention weights of the text queries
        over the visual tokens and of the visual queries over the text tokens.
    """

    visual_features: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    text_pooler_output: torch.FloatTensor | None = None
    visual_pooler_output: torch.FloatTensor | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    visual_attention_mask: torch.LongTensor | None = None


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
        if config.is_two_stream:
            # Separate streams: visual tokens at the visual stream's width, two-stream encoder, poolers and fusion.
            visual_config = visual_stream_config(config)
            self.visual_embeddings = (
                VlmHfViLBertVisualEmbeddings(visual_config)
                if config.visual_embedding_type == "vilbert"
                else VlmHfVisualEmbeddings(visual_config)
            )
            self.task_embeddings = (
                nn.Embedding(config.num_task_tokens, config.hidden_size) if config.num_task_tokens else None
            )
            self.encoder = VlmHfTwoStreamEncoder(config)
            self.pooler = VlmHfTwoStreamPooler(config) if add_pooling_layer else None
        else:
            self.visual_embeddings = VISUAL_EMBEDDING_CLASSES[config.visual_embedding_type](config)
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
        boxes = boxes.expand(num_images, num_tokens, 4)
        if pixel_values is not None and self.config.visual_embedding_type == "vlbert":
            # VL-BERT reads the whole image as box 0 (its text tokens all receive that box's feature).
            features, boxes, visual_attention_mask = prepend_image_token(features, boxes, visual_attention_mask)
        return features, boxes, visual_attention_mask

    def _grid_mask(self, pixel_mask, pixel_values, visual_attention_mask) -> torch.Tensor:
        """Grid cells that cover no real pixel (only padding) are masked out."""
        expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
        if tuple(pixel_mask.shape) != expected:
            raise ValueError(
                f"`pixel_mask` must have shape {expected} like `pixel_values`, got {tuple(pixel_mask.shape)}."
            )
        return self.covered_cells(pixel_mask, visual_attention_mask).long()

    def covered_cells(self, pixel_mask, visual_attention_mask=None) -> torch.Tensor:
        """(num_images, grid * grid) True for the grid cells over some real pixel (and not masked already)."""
        covered = self.visual_pool(pixel_mask[:, None].float()).flatten(1) > 0
        if visual_attention_mask is not None:
            covered &= visual_attention_mask.to(covered.device).bool()
        return covered

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
        smallest = self.config.vision_stride  # one cell of the feature map
        if min(pixel_values.shape[-2:]) < smallest:
            raise ValueError(
                f"`pixel_values` images must be at least {smallest}x{smallest}, got {tuple(pixel_values.shape[-2:])}."
            )
        pixel_values = pixel_values.to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            feature_map = self.vision_backbone(pixel_values)
        return self.visual_pool(feature_map).flatten(2).transpose(1, 2)

    def embed_visual(
        self,
        features: torch.Tensor,
        boxes: torch.Tensor,
        visual_feature_mask: torch.Tensor | None = None,
        text_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Visual token embeddings (VL-BERT: followed by its [END] token); tokens flagged in `visual_feature_mask` get
        zeroed features (masked regression; UNITER and VL-BERT add their learned mask embedding). `text_lengths`
        (real text tokens per example) place VL-BERT's objects in the position table.
        """
        features = zero_masked_features(features, visual_feature_mask)
        return self.visual_embeddings(features, boxes, self.embeddings, visual_feature_mask, text_lengths)

    def text_visual_context(self, features=None, boxes=None, visual_feature_mask=None) -> torch.Tensor | None:
        """What every text token adds before the LayerNorm: VL-BERT's whole-image feature; None for the others."""
        if self.config.visual_embedding_type != "vlbert":
            return None
        return self.visual_embeddings.text_visual_context(features, boxes, visual_feature_mask)

    def encode_text(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """
        The Transformer over the text alone: `BertModel`'s forward for a converted BERT text tower. VL-BERT adds its
        text-only visual embedding to every token and closes the sequence with [END] (its text-only corpus input);
        `last_hidden_state` then has one more position than the text.
        """
        batch_size, text_length = self.check_text_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)
        if self.config.is_two_stream:  # the text stream alone, without co-attention; pooled by its own pooler
            text = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
            return self.encode_two_streams(text, attention_mask, None, None, output_attentions, output_hidden_states)
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, self.text_visual_context())
        if self.config.visual_embedding_type == "vlbert":
            text_lengths = real_text_lengths(attention_mask, batch_size, text_length, embeddings.device)
            end = self.visual_embeddings.end_token(text_lengths, self.embeddings)
            embeddings = torch.cat([embeddings, end], dim=1)
            if attention_mask is not None:
                attention_mask = pad_mask(attention_mask, embeddings.shape[1])
        return self.encode(embeddings, attention_mask, output_attentions, output_hidden_states)

    def encode(
        self,
        embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """
        Run the Transformer and pooler over already embedded tokens. With `pack_text_and_visual_tokens`, the real
        tokens of each example are moved to the front (padding only at the end, UNITER's packing), the Transformer
        runs over the shortest length that holds them, and the states are put back in place (padding positions
        the packed run did not reach are zeros); attention weights stay in the packed order.
        """
        full_length = embeddings.shape[1]
        order = None
        if self.config.pack_text_and_visual_tokens and attention_mask is not None and not bool(attention_mask.all()):
            order = packing_order(attention_mask)
            embeddings = embeddings.gather(1, order.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1]))
            attention_mask = attention_mask.gather(1, order.to(attention_mask.device))
        sequence, hidden_states, attentions = self.encoder(
            embeddings,
            extended_attention_mask(attention_mask, embeddings.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if order is not None:
            sequence = unpack_tokens(sequence, order, full_length)
            if hidden_states is not None:
                hidden_states = tuple(unpack_tokens(states, order, full_length) for states in hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence,
            pooler_output=self.pooler(sequence) if self.pooler is not None else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    # -- two-stream fusions ------------------------------------------------------------------------------------------

    def embed_visual_stream(
        self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None, visual_feature_mask=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        The visual stream's input tokens (ViLBERT's [IMG] token first, with `visual_embedding_type="vilbert"`), with
        the features and mask of those tokens; tokens flagged in `visual_feature_mask` get zeroed features.
        """
        if self.config.visual_embedding_type == "vilbert":
            features, boxes, mask = prepend_image_token(features, boxes, mask)
        return self.visual_embeddings(zero_masked_features(features, visual_feature_mask), boxes), features, mask

    def insert_task_token(
        self, text: torch.Tensor, attention_mask: torch.Tensor | None, task_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """12-in-1's task token: inserted after [CLS], normalised like the text embeddings, with no position or type."""
        if task_ids is None:
            return text, attention_mask
        batch_size = text.shape[0]
        if task_ids.dim() == 2 and task_ids.shape[1] == 1:
            task_ids = task_ids[:, 0]
        if tuple(task_ids.shape) != (batch_size,):
            raise ValueError(
                f"`task_ids` must have shape ({batch_size},) or ({batch_size}, 1), got {tuple(task_ids.shape)}."
            )
        _check_index_range("task_ids", task_ids, self.config.num_task_tokens, "num_task_tokens")
        task_token = self.embeddings.dropout(self.embeddings.LayerNorm(self.task_embeddings(task_ids)))
        text = torch.cat([text[:, :1], task_token[:, None].to(text.dtype), text[:, 1:]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat(
                [attention_mask[:, :1], torch.ones_like(attention_mask[:, :1]), attention_mask[:, 1:]], dim=1
            )
        return text, attention_mask

    def encode_two_streams(
        self,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        visual: torch.Tensor | None,
        visual_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> "VlmHfModelOutput":
        """
        Run the two streams over embedded tokens, then the poolers and the fusion. Either stream may be None: the
        other then runs alone (no co-attention), and `pooler_output` is its pooled vector (retrieval embeddings).
        """
        dtype = (text if text is not None else visual).dtype
        encoded = self.encoder(
            text,
            visual,
            extended_attention_mask(text_mask, dtype),
            extended_attention_mask(visual_mask, dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        text_states, visual_states = encoded.last_hidden_state, encoded.visual_last_hidden_state
        joint = text_pooled = visual_pooled = None
        if self.pooler is not None and text is not None and visual is not None:
            joint, text_pooled, visual_pooled = self.pooler(text_states, visual_states, text_mask, visual_mask)
        elif self.pooler is not None:
            text_pooled = self.pooler.text_pooler(text_states) if text is not None else None
            visual_pooled = self.pooler.visual_pooler(visual_states, visual_mask) if visual is not None else None
            joint = text_pooled if visual is None else visual_pooled
        return VlmHfModelOutput(
            last_hidden_state=text_states,
            pooler_output=joint,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            visual_last_hidden_state=visual_states,
            text_pooler_output=text_pooled,
            visual_pooler_output=visual_pooled,
            visual_hidden_states=encoded.visual_hidden_states,
            visual_attentions=encoded.visual_attentions,
            cross_attentions=encoded.cross_attentions,
            visual_cross_attentions=encoded.visual_cross_attentions,
        )

    def _two_stream_forward(
        self, text_inputs, attention_mask, features, boxes, visual_mask, visual_feature_mask, task_ids, **outputs
    ) -> "VlmHfModelOutput":
        text = self.embeddings(*text_inputs)
        text, attention_mask = self.insert_task_token(text, attention_mask, task_ids)
        visual, features, visual_mask = self.embed_visual_stream(features, boxes, visual_mask, visual_feature_mask)
        encoded = self.encode_two_streams(text, attention_mask, visual, visual_mask, **outputs)
        encoded.visual_features = features
        encoded.visual_attention_mask = visual_mask
        return encoded

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
        task_ids: torch.LongTensor | None = None,
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
            Visual tokens whose input features are zeroed (masked visual-feature modelling). With ViLBERT's
            embeddings the tokens are the [IMG] token followed by the regions.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`):
            With `config.num_task_tokens`: the task token inserted after [CLS] (12-in-1); text outputs then have one
            more position, at index 1.
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
        if task_ids is not None and getattr(self, "task_embeddings", None) is None:
            raise ValueError("`task_ids` need task tokens: this model has none (config.num_task_tokens=0).")
        if self.config.is_two_stream:
            text_inputs = (input_ids, token_type_ids, position_ids, inputs_embeds)
            return self._two_stream_forward(
                text_inputs,
                attention_mask,
                features,
                boxes,
                visual_mask,
                visual_feature_mask,
                task_ids,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )

        text_lengths = real_text_lengths(attention_mask, batch_size, text_length, features.device)
        visual_embeddings = self.embed_visual(features, boxes, visual_feature_mask, text_lengths)
        visual_context = self.text_visual_context(features, boxes, visual_feature_mask)
        text_embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, visual_context)
        embeddings = torch.cat([text_embeddings, visual_embeddings], dim=1)
        mask = joint_attention_mask(
            attention_mask, visual_mask, batch_size, text_length, visual_embeddings.shape[1], embeddings.device
        )

        outputs = self.encode(embeddings, mask, output_attentions, output_hidden_states)
        return VlmHfModelOutput(**outputs, visual_features=features, visual_attention_mask=visual_mask)


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
    # Tokens after the visual ones (VL-BERT's [END]) are always attended to.
    visual_mask = pad_mask(visual_mask.to(device), num_visual)
    return torch.cat([text_mask.to(device).long(), visual_mask.long()], dim=1)


def pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Extend a (batch, n) mask with ones up to `length` tokens."""
    extra = length - mask.shape[1]
    return mask if extra <= 0 else torch.cat([mask, mask.new_ones(mask.shape[0], extra)], dim=1)


def real_text_lengths(attention_mask, batch_size: int, text_length: int, device) -> torch.Tensor:
    """Real (unpadded) text tokens per example; texts are right-padded."""
    if attention_mask is None:
        return torch.full((batch_size,), text_length, dtype=torch.long, device=device)
    return attention_mask.to(device).long().sum(1)


def packing_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """
    (batch, packed_length) positions that gather each example's real tokens, in order, to the front; packed_length is
    the largest number of real tokens in the batch.
    """
    valid = attention_mask.bool()
    packed_length = max(int(valid.sum(1).max()), 1)
    # A stable sort on "is padding" keeps the real tokens' order and moves the padding behind them.
    return torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :packed_length]


def unpack_tokens(packed: torch.Tensor, order: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of the packing gather: states back at their original positions, zeros where nothing was computed."""
    index = order.to(packed.device).unsqueeze(-1).expand(-1, -1, packed.shape[-1])
    return packed.new_zeros(packed.shape[0], length, packed.shape[-1]).scatter(1, index, packed)


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
        if config.tie_visual_regression_weights:
            # UNITER's feat_regress: the decoder is the visual feature projection's weight, transposed (no own weight).
            self.decoder = None
            self.bias = nn.Parameter(torch.zeros(config.visual_feature_dim))
        else:
            self.decoder = nn.Linear(config.hidden_size, config.visual_feature_dim)

    def forward(self, hidden_states: torch.Tensor, projection_weight: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.transform(hidden_states)
        if self.decoder is None:
            return F.linear(hidden_states, projection_weight.t(), self.bias)
        return self.decoder(hidden_states)


class VlmHfRegionClassificationHead(nn.Module):
    """
    Masked region classification: dense, activation, LayerNorm (UNITER's MRC; VL-BERT's MVRC has none), then the
    object classes (`num_region_classes`) of the detector that labelled the regions.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__()
        hidden_size = config.visual_stream_hidden_size
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps) if config.region_head_layer_norm else None
        self.decoder = nn.Linear(hidden_size, config.num_region_classes)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.dense(hidden_states))
        if self.LayerNorm is not None:
            hidden_states = self.LayerNorm(hidden_states)
        return self.decoder(hidden_states)


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
    region_logits (`torch.FloatTensor`):
        Object-class scores of the region classification head (`num_region_classes` > 0): `(num_scored_tokens,
        num_region_classes)` at the scored tokens (`config.region_classification_tokens`: the masked ones when
        `visual_feature_mask` is given, or every real one), else `(batch_size, num_visual_tokens, num_region_classes)`.
    mrc_loss (`torch.FloatTensor` of shape `()`):
        Region classification loss, when `region_labels` are given.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mvf_loss: torch.FloatTensor | None = None
    mrc_loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    visual_predictions: torch.FloatTensor | None = None
    region_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _class_id_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, what: str) -> torch.Tensor:
    """Cross-entropy of (batch, classes) logits against one class id per row, after checking the ids."""
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"`{name}` must have shape ({logits.shape[0]},), got {tuple(labels.shape)}.")
    _check_index_range(name, labels, logits.shape[-1], what)
    return F.cross_entropy(logits.float(), labels)


def _sum_losses(*losses: torch.Tensor | None) -> torch.Tensor | None:
    present = [loss for loss in losses if loss is not None]
    return torch.stack(present).sum() if present else None


class VlmHfForPreTraining(VlmHfPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "vlm_hf.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.cls = VlmHfPreTrainingHeads(config)
        self.itm_head = nn.Linear(config.joint_hidden_size, 2)
        self.mvf_head = VlmHfVisualRegressionHead(visual_stream_config(config))
        self.mrc_head = VlmHfRegionClassificationHead(config) if config.num_region_classes else None
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
        region_labels: torch.Tensor | None = None,
        task_ids: torch.LongTensor | None = None,
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
        region_labels (`torch.FloatTensor` of shape `(batch_size, num_visual_tokens, num_region_classes)` or
        `torch.LongTensor` of shape `(batch_size, num_visual_tokens)`):
            Object classes of the visual tokens for the region classification head: the detector's class
            distribution (soft cross-entropy, UNITER's MRC-kl / VL-BERT's MVRC) or class ids (-100: no label).
            Only the tokens `config.region_classification_tokens` names are scored: the masked ones, or all.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`):
            Task tokens (`config.num_task_tokens`); `labels` keep the text's shape, the task position is not scored.
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
            task_ids=task_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        text_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        text_states, visual_states = text_and_visual_states(outputs, text_length)
        two_streams_with_task = outputs.visual_last_hidden_state is not None and task_ids is not None
        if two_streams_with_task and labels is not None and labels.shape == (text_states.shape[0], text_length):
            # The text stream has the task token after [CLS]; it is not scored.
            labels = torch.cat([labels[:, :1], torch.full_like(labels[:, :1], -100), labels[:, 1:]], dim=1)

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
            itm_loss = _class_id_loss("itm_labels", itm_logits, itm_labels, "0 = mismatched, 1 = matched")

        visual_predictions = mvf_loss = None
        if visual_feature_mask is not None:
            masked_visual = visual_feature_mask.bool()
            projection = getattr(self.vlm_hf.visual_embeddings, "feature_projection", None)
            visual_predictions = self.mvf_head(
                visual_states[masked_visual], projection.weight if projection is not None else None
            )
            if masked_visual.any():
                targets = outputs.visual_features[masked_visual].detach()
                mvf_loss = F.mse_loss(visual_predictions.float(), targets.float())
        region_logits, mrc_loss = self._region_classification(
            visual_states, visual_feature_mask, outputs.visual_attention_mask, region_labels
        )

        return VlmHfForPreTrainingOutput(
            loss=_sum_losses(mlm_loss, itm_loss, mvf_loss, mrc_loss),
            mlm_loss=mlm_loss,
            itm_loss=itm_loss,
            mvf_loss=mvf_loss,
            mrc_loss=mrc_loss,
            prediction_logits=prediction_logits,
            itm_logits=itm_logits,
            visual_predictions=visual_predictions,
            region_logits=region_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _region_classification(self, visual_states, visual_feature_mask, visual_attention_mask, region_labels):
        """
        Region logits at the tokens `config.region_classification_tokens` names (the masked ones, or every real one)
        and their cross-entropy against `region_labels`.
        """
        if self.mrc_head is None:
            if region_labels is not None:
                raise ValueError("`region_labels` need a region classification head: set config.num_region_classes.")
            return None, None
        if self.config.region_classification_tokens == "all":
            scored = torch.ones(visual_states.shape[:2], dtype=torch.bool, device=visual_states.device)
            if visual_attention_mask is not None:
                scored &= visual_attention_mask.bool()
        elif visual_feature_mask is not None:
            scored = visual_feature_mask.bool()
        else:
            if region_labels is not None:
                raise ValueError("`region_labels` score masked regions: pass `visual_feature_mask` too.")
            return self.mrc_head(visual_states), None
        logits = self.mrc_head(visual_states[scored])
        if region_labels is None:
            return logits, None
        num_classes = self.config.num_region_classes
        if region_labels.is_floating_point():
            _check_leading("region_labels", region_labels, (*scored.shape, num_classes), "(batch, tokens, classes)")
            targets = region_labels[scored].float()
            return logits, F.cross_entropy(logits.float(), targets) if len(targets) else None
        _check_leading("region_labels", region_labels, scored.shape, "(batch_size, num_visual_tokens)")
        targets = region_labels[scored]
        labelled = targets != -100  # tokens without a label (ViLBERT's [IMG], cells no annotation covers)
        _check_index_range("region_labels", targets[labelled], num_classes, "num_region_classes, or -100")
        if not labelled.any():
            return logits, None
        return logits, F.cross_entropy(logits.float(), targets, ignore_index=-100)


# ----------------------------------------------------------------------------------------------------------------------
# Visual question answering
# ----------------------------------------------------------------------------------------------------------------------


class VlmHfAnswerHead(nn.Module):
    """
    Answer classifier: dense, activation, LayerNorm, linear (UNITER's VQA head at width 2H, VL-BERT's at H), or a
    single linear layer (`answer_head="linear"`, VisualBERT).
    """

    def __init__(self, config: VlmHfConfig, input_size: int | None = None, head_type: str | None = None):
        super().__init__()
        # Defaults: the VQA head over the joint vector; other heads (NLVR2 pairs) read other widths.
        width = input_size or config.joint_hidden_size
        self.dense = self.activation = self.LayerNorm = None
        if (head_type or config.answer_head) == "mlp":
            width, hidden_width = config.answer_head_hidden_size, width
            self.dense = nn.Linear(hidden_width, width)
            self.activation = ACT2FN[config.hidden_act]
            self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(width, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            pooled = self.LayerNorm(self.activation(self.dense(pooled)))
        return self.out_proj(self.dropout(pooled))


def answer_token_states(sequence: torch.Tensor, attention_mask, text_length: int) -> torch.Tensor:
    """The state of the text token at position (text length - 2): VisualBERT's and VL-BERT's answer position."""
    batch_size = sequence.shape[0]
    if attention_mask is None:
        index = torch.full((batch_size,), text_length - 2, device=sequence.device)
    else:
        index = attention_mask.to(sequence.device).long().sum(1) - 2
    if bool((index < 0).any()):
        raise ValueError("answer_pooling='answer_token' reads text position (text length - 2): texts need 2+ tokens.")
    return sequence[torch.arange(batch_size, device=sequence.device), index]


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
        task_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForQuestionAnsweringOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)` or `torch.LongTensor` of shape `(batch_size,)`):
            Soft answer scores in [0, 1] (VQA v2: min(#annotators who gave the answer / 3, 1)), or one answer id
            per question.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`):
            Task tokens (`config.num_task_tokens`, 12-in-1).
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
            task_ids=task_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if self.config.answer_pooling == "answer_token":
            text_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            logits = self.classifier(answer_token_states(outputs.last_hidden_state, attention_mask, text_length))
        else:
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
# Visual reasoning (image-text pair classification)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VlmHfForVisualReasoningOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Cross-entropy against `labels`.
    logits (`torch.FloatTensor` of shape `(num_examples, num_labels)`):
        Class scores of each example, e.g. NLVR2's false / true: one per row, or one per pair of rows with
        `config.visual_reasoning_pairs` (`hidden_states` and `attentions` stay per row).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VlmHfForVisualReasoning(VlmHfPreTrainedModel):
    """
    Classifies each text with its image(s) (NLVR2: is the statement true of the image pair?) from the pooled output.
    By default, dropout and a linear layer over each row, as VisualBERT's `VisualBertForVisualReasoning` (for NLVR2's
    two images, pass the regions of both as one image's `visual_embeds`). With `config.visual_reasoning_pairs`, as
    ViLBERT's NLVR2 head: rows `2k` and `2k + 1` are example `k`'s text with its first and its second image, each
    encoded on its own, and the classifier (`config.visual_reasoning_head`) reads their two joint vectors
    concatenated.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        width = config.joint_hidden_size * (2 if config.visual_reasoning_pairs else 1)
        if config.visual_reasoning_head == "mlp":
            self.classifier = VlmHfAnswerHead(config, input_size=width, head_type="mlp")
        else:
            self.classifier = nn.Linear(width, config.num_labels)
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
        labels: torch.LongTensor | None = None,
        task_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForVisualReasoningOutput:
        r"""
        labels (`torch.LongTensor` of shape `(num_examples,)`):
            The class of each example, in `[0, num_labels)` (NLVR2: 1 = true). `num_examples` is `batch_size`, or
            `batch_size // 2` with `config.visual_reasoning_pairs`.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`):
            Task tokens (`config.num_task_tokens`, 12-in-1: 12 for NLVR2).

        With `config.visual_reasoning_pairs`, `batch_size` is even: repeat each text for its two images
        (`input_ids.repeat_interleave(2, dim=0)`) and give the images in the order first, second of each example (or
        point at them with `image_index`).
        """
        batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if self.config.visual_reasoning_pairs and batch_size % 2:
            raise ValueError(
                "With config.visual_reasoning_pairs, rows 2k and 2k+1 are one example's text with its two images: "
                f"the batch must have an even number of rows, got {batch_size}."
            )
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
            task_ids=task_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled = outputs.pooler_output
        if self.config.visual_reasoning_pairs:
            # ViLBERT's `pooled_output.view(-1, 2 * width)`: an example's two (text, image) rows side by side.
            pooled = pooled.reshape(batch_size // 2, 2 * pooled.shape[-1])
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else _class_id_loss("labels", logits, labels, "num_labels")
        return VlmHfForVisualReasoningOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# ----------------------------------------------------------------------------------------------------------------------
# Region grounding (referring expressions)
# ----------------------------------------------------------------------------------------------------------------------


def text_and_visual_states(outputs: VlmHfModelOutput, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The final states of the text tokens and of the visual tokens: each stream's own with two streams (the text then
    includes a task token), the two parts of the joint sequence otherwise (without VL-BERT's [END]).
    """
    if outputs.visual_last_hidden_state is not None:
        return outputs.last_hidden_state, outputs.visual_last_hidden_state
    num_visual = outputs.visual_features.shape[1]
    sequence = outputs.last_hidden_state
    return sequence[:, :text_length], sequence[:, text_length : text_length + num_visual]


@dataclass
class VlmHfForRegionGroundingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Cross-entropy over the visual tokens against the referred token's index, or binary cross-entropy against
        soft per-token targets (summed over the real tokens, averaged over texts), as `labels` say.
    logits (`torch.FloatTensor` of shape `(batch_size, num_visual_tokens)`):
        How much each visual token (region or grid cell; ViLBERT's [IMG] token first) is what the text refers to.
        Padded tokens get -10000 added, so that a softmax over a row ignores them.
    token_logits (`torch.FloatTensor` of shape `(batch_size, text_length)`):
        A score of each text token (ViLBERT's `linguisic_logit`; with `task_ids`, one more position: the task token
        at index 1). Padding is not masked.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    token_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VlmHfForRegionGrounding(VlmHfPreTrainedModel):
    """
    Region grounding (referring expressions: which region does the text describe?): a linear layer scores every
    visual token's final state, and another one every text token's, as ViLBERT's `vision_logit` and `linguisic_logit`
    (12-in-1's RefCOCO / RefCOCO+ / RefCOCOg, Visual7W and GuessWhat pointing). Works with every fusion: with one
    stream the visual tokens' states are their part of the joint sequence.
    """

    def __init__(self, config: VlmHfConfig):
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.region_classifier = nn.Linear(config.visual_stream_hidden_size, 1)
        self.token_classifier = nn.Linear(config.hidden_size, 1)
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
        task_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlmHfForRegionGroundingOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape
        `(batch_size, num_visual_tokens)`):
            The index of the referred visual token (cross-entropy), or a soft target in [0, 1] per visual token
            (binary cross-entropy; ViLBERT's RefCOCO targets: each region's IoU with the referred box, when at least
            0.5). Visual tokens are numbered as in `logits` (with ViLBERT's embeddings, region `i` is token `i + 1`).
        task_ids (`torch.LongTensor` of shape `(batch_size,)`):
            Task tokens (`config.num_task_tokens`, 12-in-1: e.g. 11 for RefCOCO).
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
            task_ids=task_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        text_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        text_states, visual_states = text_and_visual_states(outputs, text_length)
        logits = self.region_classifier(self.dropout(visual_states)).squeeze(-1)
        visual_mask = outputs.visual_attention_mask
        if visual_mask is not None:
            # ViLBERT's additive -10000 (not -inf): the value is part of its outputs.
            logits = logits + (1.0 - visual_mask.to(logits.device, logits.dtype)) * -10000.0
        token_logits = self.token_classifier(self.dropout(text_states)).squeeze(-1)
        loss = None if labels is None else self._grounding_loss(logits, labels, visual_mask)
        return VlmHfForRegionGroundingOutput(
            loss=loss,
            logits=logits,
            token_logits=token_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @staticmethod
    def _grounding_loss(logits: torch.Tensor, labels: torch.Tensor, visual_mask: torch.Tensor | None) -> torch.Tensor:
        if visual_mask is None:
            visual_mask = torch.ones_like(logits, dtype=torch.bool)
        valid = visual_mask.to(logits.device).bool()
        if labels.is_floating_point():
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Soft `labels` must have shape {tuple(logits.shape)} (batch_size, num_visual_tokens), got "
                    f"{tuple(labels.shape)}."
                )
            if not torch.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
                raise ValueError("Soft `labels` must lie in [0, 1].")
            per_token = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
            return (per_token * valid).sum() / logits.shape[0]
        loss = _class_id_loss("labels", logits, labels, "num_visual_tokens")
        rows = torch.arange(logits.shape[0], device=logits.device)
        if not bool(valid[rows, labels.to(logits.device)].all()):
            raise ValueError("`labels` point at padded visual tokens (visual_attention_mask 0); point at real ones.")
        return loss


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
        self.itm_head = nn.Linear(config.joint_hidden_size, 2)
        self.text_projection = nn.Linear(config.stream_pooled_size, config.retrieval_embed_dim, bias=False)
        self.image_projection = nn.Linear(config.stream_pooled_size, config.retrieval_embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """
        (num_texts, retrieval_embed_dim) projections of the texts encoded alone (pooled [CLS]; with two streams, the
        text stream without co-attention).
        """
        outputs = self.vlm_hf.encode_text(input_ids, attention_mask, token_type_ids)
        return self.text_projection(outputs.pooler_output)

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        """
        (num_images, retrieval_embed_dim) projections of the images encoded alone: the mean of their visual tokens,
        or with two streams the visual stream's pooled vector (without co-attention).
        """
        visual = self.vlm_hf.get_visual_features(
            pixel_values, visual_embeds, visual_boxes, visual_attention_mask, pixel_mask
        )
        return self._project_images(*visual)

    def _project_images(self, features, boxes, mask) -> torch.FloatTensor:
        if self.config.is_two_stream:  # the visual stream alone, pooled by its own pooler
            visual, _, mask = self.vlm_hf.embed_visual_stream(features, boxes, mask)
            return self.image_projection(self.vlm_hf.encode_two_streams(None, None, visual, mask).pooler_output)
        embeddings = self.vlm_hf.embed_visual(features, boxes)
        mask = None if mask is None else pad_mask(mask, embeddings.shape[1])  # VL-BERT's [END]
        outputs = self.vlm_hf.encode(embeddings, mask)
        return self.image_projection(masked_mean(outputs.last_hidden_state, mask))

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
        task_ids: torch.LongTensor | None = None,
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
        task_ids (`torch.LongTensor` of shape `(num_texts,)`):
            Task tokens of the joint image-text matching pass (`config.num_task_tokens`, 12-in-1).
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
                task_ids=task_ids,
            )
            itm_logits = self.itm_head(joint.pooler_output)
            if labels is not None:
                itm_loss = _class_id_loss("labels", itm_logits, labels, "0 = mismatched, 1 = matched")
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


# ----------------------------------------------------------------------------------------------------------------------
# Caption and answer generation: one Transformer under a sequence-to-sequence mask (Unified VLP, OSCAR)
# ----------------------------------------------------------------------------------------------------------------------

# `token_type_ids` of the generation head, BERT's two segments, as a BERT tokenizer gives them for the text pair
# `tokenizer(prompt, caption)`: 0 for the prompt `[CLS] prompt [SEP]`, 1 for the generated caption or answer.
PROMPT_TOKEN_TYPE = 0
CAPTION_TOKEN_TYPE = 1


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each text token's position among the real tokens of its row (padding gets 0): the same with left or right
    padding, and the generated tokens continue from each row's own prompt length."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def seq2seq_attention_mask(
    key_valid: torch.Tensor, chunk_is_caption: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """
    The additive (batch, 1, chunk, keys) mask of the tokens of one call (the chunk) over the cached tokens followed by
    the chunk's own. `key_valid` (batch, keys) is False for padding; `chunk_is_caption` (batch, chunk) marks the
    chunk's caption tokens. Every token sees the real cached tokens (images and prompts come before what is generated
    from them) and the chunk's real visual and prompt tokens; a caption token also sees the chunk's caption tokens up
    to itself, a visual or prompt token none. None when nothing is hidden (the fast SDPA path).
    """
    batch_size, chunk_length = chunk_is_caption.shape
    past_length = key_valid.shape[1] - chunk_length
    order = torch.arange(chunk_length, device=chunk_is_caption.device)
    earlier_or_same = order[None, :] <= order[:, None]  # (query, key)
    caption_query, caption_key = chunk_is_caption[:, :, None], chunk_is_caption[:, None, :]
    chunk_visible = ~caption_key | (caption_query & earlier_or_same)
    visible = torch.cat([chunk_visible.new_ones(batch_size, chunk_length, past_length), chunk_visible], dim=2)
    visible = visible & key_valid[:, None, :].bool()
    if bool(visible.all()):
        return None
    additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return additive.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def kept_states(states: torch.Tensor, mask: torch.Tensor | None, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """
    The text states to score: all (`logits_to_keep=0`), the given positions, or each row's last `logits_to_keep`
    real tokens. A right-padded prompt's last real token is before its padding: generation predicts the first new
    token from there, as for the same prompt alone.
    """
    if not isinstance(logits_to_keep, int):
        return states[:, logits_to_keep]
    if mask is None or logits_to_keep == 0 or bool(mask[:, -1].all()):
        return states[:, -logits_to_keep:]
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    last_real = (mask.to(positions.device).bool() * positions).topk(logits_to_keep, dim=1).indices.sort(dim=1).values
    return states.gather(1, last_real.to(states.device)[..., None].expand(-1, -1, states.shape[-1]))


def check_generation_support(config: VlmHfConfig) -> None:
    """The generation head needs one joint Transformer whose text tokens do not depend on the image's embedding."""
    if config.is_two_stream:
        raise ValueError(
            f"VlmHfForConditionalGeneration runs one joint Transformer: it needs fusion='single_stream', got "
            f"fusion={config.fusion!r}."
        )
    if config.visual_embedding_type == "vlbert":
        raise ValueError(
            "VlmHfForConditionalGeneration does not support visual_embedding_type='vlbert': VL-BERT adds the image "
            "feature to every text token and closes the sequence with [END], which generated tokens cannot follow."
        )


class VlmHfForConditionalGeneration(VlmHfPreTrainedModel, GenerationMixin):
    """
    Caption and answer generation with the single-stream Transformer, as Unified VLP and OSCAR: the visual tokens and
    the prompt `[CLS] prompt [SEP]` (token type 0) attend to each other in both directions, and each generated token
    (token type 1) attends to them and to the generated tokens before it. A language-model head, tied to the word
    embeddings (the pretraining MLM head's parameters, `cls.predictions.*`), predicts the next token. The empty prompt
    `[CLS] [SEP]` (`processor(images=image, text="")`) captions; a question as prompt generates a free-form answer;
    generation ends with [SEP] (`config.eos_token_id`).

    `generate` encodes the image and the prompt once, in the call that fills the cache; every new token is then one
    step over the cache. The sequence is `[visual tokens; prompt; generated tokens]`, text positions count each row's
    real tokens, so left- and right-padded prompts give the same result as each prompt alone.
    """

    _tied_weights_keys = {"cls.predictions.decoder.weight": "vlm_hf.embeddings.word_embeddings.weight"}
    # The Trainer passes `num_items_in_batch`, so that gradient accumulation averages the loss over all caption tokens.
    accepts_loss_kwargs = True

    def __init__(self, config: VlmHfConfig):
        check_generation_support(config)
        super().__init__(config)
        self.vlm_hf = VlmHfModel(config, add_pooling_layer=False)
        self.cls = VlmHfPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        visual_embeds: torch.FloatTensor | None = None,
        visual_boxes: torch.FloatTensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            The text of this call: `[CLS] prompt [SEP]` followed, in training, by the caption and its [SEP]
            (`tokenizer(prompts, captions)`); with a filled `cache`, only the new tokens.
        attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, or `(batch_size, past_text_length +
        text_length)` with a cache):
            1 for real text tokens, 0 for padding (left or right), over all the text so far.
        token_type_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            0 for prompt tokens, 1 for caption (generated) tokens; decides the attention pattern. Default: 0 without a
            cache (the whole text is the prompt), 1 with a filled cache (new tokens are generated ones).
        position_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            Text positions. Default: counted over the real tokens of `attention_mask`.
        pixel_values, pixel_mask, visual_embeds, visual_boxes, visual_attention_mask, image_index:
            The image, as for [`VlmHfModel`], in the call that starts the cache (and in every call without one).
            Later calls take no image: its visual tokens are in the cache (`pixel_mask` / `visual_attention_mask`
            may be repeated, to mask the padded ones).
        labels (`torch.LongTensor` of shape `(batch_size, text_length)`):
            The caption tokens to predict, -100 elsewhere (prompt, padding). Position `t` is predicted from the
            states up to `t - 1` (the shift happens inside); the loss averages over the caption tokens.
        cache (`Cache`):
            Keys and values of the earlier calls (`past_key_values` is the older name); `use_cache=True` creates a
            `DynamicCache` when none is given.
        logits_to_keep (`int` or `torch.Tensor`):
            Score only each row's last `logits_to_keep` real text tokens (0: every position; a right-padded row's
            last tokens are those before its padding), or the given position indices.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        batch_size, text_length = self.vlm_hf.check_text_inputs(input_ids, None, token_type_ids, None)
        if attention_mask is not None and (
            attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] < text_length
        ):
            raise ValueError(
                f"`attention_mask` must have shape ({batch_size}, text length so far >= {text_length}), got "
                f"{tuple(attention_mask.shape)}."
            )
        use_cache = use_cache if use_cache is not None else cache is not None
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0

        image = (pixel_values, pixel_mask, visual_embeds, visual_boxes, visual_attention_mask, image_index)
        visual, visual_mask = self._visual_tokens(batch_size, past_length, *image)
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, CAPTION_TOKEN_TYPE if past_length else PROMPT_TOKEN_TYPE)
        position_ids = self._text_positions(position_ids, attention_mask, past_length, text_length)
        text = self.vlm_hf.embeddings(input_ids, token_type_ids, position_ids)
        embeddings = text if visual is None else torch.cat([visual, text], dim=1)

        num_keys = past_length + embeddings.shape[1]
        key_valid = self._key_padding_mask(attention_mask, visual_mask, batch_size, num_keys, embeddings.device)
        chunk_is_caption = token_type_ids == CAPTION_TOKEN_TYPE
        if visual is not None:
            chunk_is_caption = torch.cat([chunk_is_caption.new_zeros(visual.shape[:2]), chunk_is_caption], dim=1)
        mask = seq2seq_attention_mask(key_valid, chunk_is_caption, embeddings.dtype)

        sequence, hidden_states, attentions = self.vlm_hf.encoder(
            embeddings, mask, output_attentions, output_hidden_states, cache=cache
        )
        text_mask = None if attention_mask is None else attention_mask[:, -text_length:]
        logits = self.cls.predictions(kept_states(sequence[:, -text_length:], text_mask, logits_to_keep))
        loss = None if labels is None else self._caption_loss(logits, labels, input_ids, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def _visual_tokens(
        self, batch_size, past_length, pixel_values, pixel_mask, visual_embeds, visual_boxes, visual_mask, image_index
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The visual token embeddings when the image is encoded in this call (else None), and their padding mask."""
        has_image = pixel_values is not None or visual_embeds is not None
        if has_image and past_length:
            raise ValueError(
                "The image is already in `cache` (encoded by the call that filled it): pass only the new text tokens, "
                "without `pixel_values` / `visual_embeds`."
            )
        if not has_image and not past_length:
            raise ValueError(
                "Without a filled `cache`, pass the image: `pixel_values` (num_images, 3, height, width) or "
                "`visual_embeds`."
            )
        if has_image:
            features, boxes, visual_mask = self.vlm_hf.get_visual_features(
                pixel_values, visual_embeds, visual_boxes, visual_mask, pixel_mask
            )
            features, boxes, visual_mask = pair_with_texts(batch_size, image_index, features, boxes, visual_mask)
            return self.vlm_hf.embed_visual(features, boxes), visual_mask
        # A later call: the visual tokens are cached; only their padding is needed, from the same masks as before.
        if pixel_mask is not None:
            visual_mask = self.vlm_hf.covered_cells(pixel_mask, visual_mask)
        if visual_mask is None:
            return None, None
        return None, pair_with_texts(batch_size, image_index, visual_mask)[0]

    def _text_positions(self, position_ids, attention_mask, past_length: int, text_length: int) -> torch.Tensor:
        if position_ids is None:
            if attention_mask is not None:
                position_ids = text_position_ids(attention_mask)[:, -text_length:]
            elif not past_length:
                position_ids = torch.arange(text_length, device=self.device)[None]
            else:
                raise ValueError(
                    "With a filled `cache`, pass `attention_mask` (over all the text so far) or `position_ids`: the "
                    "text positions of the new tokens."
                )
        if position_ids.numel() and int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"Text position {int(position_ids.max())} is beyond max_position_embeddings "
                f"({self.config.max_position_embeddings}): shorten the prompt or lower `max_new_tokens`."
            )
        return position_ids

    @staticmethod
    def _key_padding_mask(attention_mask, visual_mask, batch_size: int, num_keys: int, device) -> torch.Tensor:
        """
        (batch, num_keys) True for the real tokens among `[visual tokens; text so far]`. How many of the keys are
        visual tokens comes from their mask, or from the keys that `attention_mask` (the text so far) leaves over.
        """
        if attention_mask is None and visual_mask is None:
            return torch.ones(batch_size, num_keys, dtype=torch.bool, device=device)
        num_visual = visual_mask.shape[1] if visual_mask is not None else num_keys - attention_mask.shape[1]
        num_text = attention_mask.shape[1] if attention_mask is not None else num_keys - num_visual
        if num_visual < 0 or num_visual + num_text != num_keys:
            raise ValueError(
                f"`attention_mask` covers {num_text} text tokens, but the cache and this call hold "
                f"{num_keys - max(num_visual, 0)} after the visual tokens: pass the mask of all the text so far."
            )
        if visual_mask is None:
            visual_mask = torch.ones(batch_size, num_visual, dtype=torch.bool, device=device)
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, num_text, dtype=torch.bool, device=device)
        return torch.cat([visual_mask.to(device).bool(), attention_mask.to(device).bool()], dim=1)

    def _caption_loss(self, logits, labels, input_ids, num_items_in_batch) -> torch.Tensor:
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
            )
        if logits.shape[1] != labels.shape[1]:
            raise ValueError("`labels` need the logits of every position: leave `logits_to_keep` at 0.")
        scored = labels != -100
        _check_index_range("labels", labels[scored], self.config.vocab_size, "the vocabulary size, or -100")
        return self.loss_function(logits, labels, self.config.vocab_size, num_items_in_batch=num_items_in_batch)

    # -- generation ----------------------------------------------------------------------------------------------------

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """
        [`GenerationMixin.generate`] with the prompt marked as such: `token_type_ids` default to 0 over `input_ids`
        (the generated tokens get 1). Without `input_ids` the prompt is the empty one, `[CLS] [SEP]`
        (`bos_token_id`, `eos_token_id`), which captions. Several prompts about one image (`image_index`) each get
        their own copy of the image.
        """
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            input_ids = self._empty_prompts(generation_config or self.generation_config, kwargs)
        if kwargs.get("token_type_ids") is None:
            kwargs["token_type_ids"] = torch.full_like(input_ids, PROMPT_TOKEN_TYPE)
        if kwargs.get("image_index") is not None:
            # Beam search and several samples repeat every input per row: each row needs its own image.
            image_index = kwargs.pop("image_index")
            for name in ("pixel_values", "pixel_mask", "visual_embeds", "visual_boxes", "visual_attention_mask"):
                if kwargs.get(name) is not None:
                    kwargs[name] = pair_with_texts(input_ids.shape[0], image_index, kwargs[name])[0]
        return super().generate(input_ids, generation_config, **kwargs)

    def _empty_prompts(self, generation_config, kwargs) -> torch.Tensor:
        """`[CLS] [SEP]` for every image (or `image_index` entry)."""
        start = kwargs.get("bos_token_id", generation_config.bos_token_id)
        end = kwargs.get("eos_token_id", generation_config.eos_token_id)
        end = end[0] if isinstance(end, (list, tuple)) else end
        if start is None or end is None:
            raise ValueError(
                "Pass `input_ids` (the prompt, e.g. `processor(images=image, text='')` for a caption), or set "
                "config.bos_token_id / eos_token_id to the tokenizer's [CLS] / [SEP] ids."
            )
        rows = next(
            (kwargs[name] for name in ("image_index", "pixel_values", "visual_embeds") if kwargs.get(name) is not None),
            None,
        )
        batch_size = 1 if rows is None else rows.shape[0]
        return torch.tensor([[start, end]], device=self.device).expand(batch_size, 2)

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, pixel_values=None, pixel_mask=None, visual_embeds=None, visual_boxes=None, **kwargs
    ):
        model_inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)
        # The call that starts the cache (every call, without one) encodes the image; later calls find its visual
        # tokens in the cache and only need to know which of them are padding.
        if cache is None or cache.get_seq_length() == 0:
            model_inputs.update(pixel_values=pixel_values, visual_embeds=visual_embeds, visual_boxes=visual_boxes)
        model_inputs["pixel_mask"] = pixel_mask
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder, num_new_tokens
        )
        # The new tokens are generated ones (the default repeats the last token type, the prompt's)...
        if (token_type_ids := model_kwargs.get("token_type_ids")) is not None:
            token_type_ids = token_type_ids.clone()
            token_type_ids[:, -num_new_tokens:] = CAPTION_TOKEN_TYPE
            model_kwargs["token_type_ids"] = token_type_ids
        # ... and their positions follow each row's real tokens (the default continues from the last position, a
        # padding position after a right-padded prompt).
        if (attention_mask := model_kwargs.get("attention_mask")) is not None and "position_ids" in model_kwargs:
            model_kwargs["position_ids"] = text_position_ids(attention_mask)
        return model_kwargs


__all__ = [
    "VlmHfPreTrainedModel",
    "VlmHfModel",
    "VlmHfForPreTraining",
    "VlmHfForQuestionAnswering",
    "VlmHfForVisualReasoning",
    "VlmHfForImageTextRetrieval",
    "VlmHfForConditionalGeneration",
]
