"""Original VL-BERT checkpoints (jackroos/VL-BERT) -> vlm_hf folders.

A released `.model` file is `{'state_dict': {...}, 'optimizer': ...}` with DataParallel's `module.` prefix. Covered:
the pretraining model (`ResNetVLBERTForPretrainingMultitask`: MLM, MVRC, and the relationship head when trained with
it) and the VQA model (`ResNetVLBERT`, `CLASSIFIER_TYPE: "mlm"`). The Fast R-CNN detector keys of end-to-end
checkpoints are reported and skipped: this package's ResNet replaces the detector. The config is the original YAML
(only `NETWORK.VLBERT.num_attention_heads` is needed; without it 64-wide heads are assumed).

```bash
vlm-hf convert vlbert vl-bert-base-prec.model --config base_prec_4x16G_fp32.yaml --output-dir vlbert-base-vlm-hf
```

Inputs of the converted model: texts as VL-BERT builds them (`[CLS] question [SEP] [MASK] [SEP]` with token types
0 / 1 for VQA), `visual_embeds` with the whole-image box first (VL-BERT's `ADD_IMAGE_AS_A_BOX`), boxes divided by the
(resized) image width and height.
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from vlm_hf.conversion.common import (
    ConversionReport,
    checkpoint_converter_main,
    count_layers,
    finish_conversion,
    load_checkpoint,
    map_state_dict,
    original_hyperparameters,
)

from vlm_hf.configuration_vlm_hf import VlmHfConfig
from vlm_hf.modeling_vlm_hf import VlmHfForPreTraining, VlmHfForQuestionAnswering, VlmHfModel

_VISUAL = "vlm_hf.visual_embeddings"

RULES = [
    (r"image_feature_extractor\.obj_downsample\.1\.(weight|bias)", _VISUAL + r".object_projection.\1"),
    (r"object_linguistic_embeddings\.weight", _VISUAL + ".object_word_embedding"),
    (r"object_mask_word_embedding\.weight", _VISUAL + ".mask_word_embedding"),
    (r"object_mask_visual_embedding\.weight", _VISUAL + ".mask_feature_embedding"),
    (r"aux_text_visual_embedding\.weight", _VISUAL + ".text_only_embedding"),
    (r"vlbert\.end_embedding\.weight", _VISUAL + ".end_embedding"),
    (r"vlbert\.visual_ln_text\.(weight|bias)", _VISUAL + r".text_visual_layer_norm.\1"),
    (r"vlbert\.visual_ln_object\.(weight|bias)", _VISUAL + r".object_visual_layer_norm.\1"),
    (r"vlbert\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight", r"vlm_hf.embeddings.\1.weight"),
    (r"vlbert\.embedding_LayerNorm\.(weight|bias)", r"vlm_hf.embeddings.LayerNorm.\1"),
    (r"vlbert\.encoder\.layer\.(\d+)\.(.+)", r"vlm_hf.encoder.layer.\1.\2"),
    (r"vlbert\.pooler\.dense\.(weight|bias)", r"vlm_hf.pooler.dense.\1"),
    # VQA (CLASSIFIER_TYPE "mlm"): BertPredictionHeadTransform, Dropout, Linear on the [MASK] state.
    (r"final_mlp\.0\.(dense|LayerNorm)\.(weight|bias)", r"classifier.\1.\2"),
    (r"final_mlp\.2\.(weight|bias)", r"classifier.out_proj.\1"),
    # Pretraining heads.
    (r"vlbert\.mlm_head\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"cls.predictions.transform.\1.\2"),
    (r"vlbert\.mlm_head\.predictions\.bias", "cls.predictions.decoder.bias"),
    (r"vlbert\.mvrc_head\.transform\.dense\.(weight|bias)", r"mrc_head.dense.\1"),
    (r"vlbert\.mvrc_head\.region_cls_pred\.(weight|bias)", r"mrc_head.decoder.\1"),
    # WITH_REL_LOSS: caption-image relationship on the pooled [CLS], label 1 = the caption belongs to the image.
    (r"vlbert\.relationsip_head\.caption_image_relationship\.(weight|bias)", r"itm_head.\1"),
]

DROPPED = [
    (r"image_feature_extractor\.(?!obj_downsample\.).*", "Fast R-CNN detector; this package's ResNet replaces it"),
]
TIED_IN_SOURCE = [("vlbert.word_embeddings.weight", "vlbert.mlm_head.predictions.decoder.weight")]

_MISSING_ALWAYS = [
    (r"(?:vlm_hf\.)?vision_backbone\..*", "vision backbone: VL-BERT's detector is not converted"),
    (r"(?:vlm_hf\.)?pooler\.dense\..*", "pooler: VL-BERT is trained with_pooler=false"),
]
_PRETRAINING_ONLY = (
    r"(?:vlm_hf\.)?visual_embeddings\.(mask_word_embedding|mask_feature_embedding|text_only_embedding)",
    "pretraining-only embedding (masked objects, text-only corpus)",
)
EXPECTED_MISSING = {
    VlmHfModel: [*_MISSING_ALWAYS, _PRETRAINING_ONLY],
    VlmHfForQuestionAnswering: [*_MISSING_ALWAYS, _PRETRAINING_ONLY],
    VlmHfForPreTraining: [
        *_MISSING_ALWAYS,
        (r"itm_head\..*", "image-text matching: VL-BERT's released pretraining has no relationship head"),
        (r"mvf_head\..*", "masked feature regression: VL-BERT classifies masked regions instead (mrc_head)"),
    ],
}


def _unwrap(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """`{'state_dict': ...}` (other top-level entries ignored) without DataParallel's `module.` prefix."""
    state_dict = checkpoint.get("state_dict", checkpoint)
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def head_class_of(state_dict: Mapping[str, torch.Tensor]) -> type:
    if any(key.startswith("final_mlp.") for key in state_dict):
        return VlmHfForQuestionAnswering
    if any(key.startswith("vlbert.mlm_head.") or key.startswith("vlbert.mvrc_head.") for key in state_dict):
        return VlmHfForPreTraining
    return VlmHfModel


def vlbert_config(state_dict: Mapping[str, torch.Tensor], original_config: Mapping | None = None, **overrides):
    """
    A VlmHfConfig from the checkpoint's shapes and the original YAML config (`NETWORK.VLBERT`). The RoI feature width
    D and the box embedding width 8 d are read from `object_mask_visual_embedding` (pretraining) or, for VQA
    checkpoints, from obj_downsample's input width 8 d + D with D = 8 d (as in every released model).
    """
    network = dict((original_config or {}).get("NETWORK", {}).get("VLBERT", {}))
    if any(key.startswith("vlbert.visual_1x1_") for key in state_dict):
        raise ValueError("visual_size != hidden_size (vlbert.visual_1x1_* layers) is not supported.")
    words = state_dict["vlbert.word_embeddings.weight"]
    hidden_size = words.shape[1]
    downsample_in = state_dict["image_feature_extractor.obj_downsample.1.weight"].shape[1]
    if "object_mask_visual_embedding.weight" in state_dict:
        feature_dim = state_dict["object_mask_visual_embedding.weight"].shape[1]
    else:
        feature_dim = overrides.pop("visual_feature_dim", downsample_in // 2)
    sizes = {
        "vocab_size": words.shape[0],
        "hidden_size": hidden_size,
        "num_hidden_layers": count_layers(state_dict),
        "intermediate_size": state_dict["vlbert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state_dict["vlbert.position_embeddings.weight"].shape[0],
        "type_vocab_size": state_dict["vlbert.token_type_embeddings.weight"].shape[0],
        "visual_feature_dim": feature_dim,
        "visual_location_dim": downsample_in - feature_dim,
        "answer_head_hidden_size": hidden_size,
    }
    sizes.update(original_hyperparameters(network, hidden_size))
    if "final_mlp.2.weight" in state_dict:
        sizes["num_labels"] = state_dict["final_mlp.2.weight"].shape[0]
    regions = state_dict.get("vlbert.mvrc_head.region_cls_pred.weight")
    sizes["num_region_classes"] = 0 if regions is None else regions.shape[0]
    return VlmHfConfig.from_preset("vlbert-base", **{"vision_backbone": None, **sizes, **overrides})


def convert_vlbert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a VL-BERT state dict (with or without `module.` / the `state_dict` wrapper) onto `model`, strictly."""
    state_dict = _unwrap(state_dict)
    # The original stores one-row embeddings as nn.Embedding(1, width); vlm_hf keeps the vector.
    vectors = ("object_word_embedding", "mask_word_embedding", "mask_feature_embedding", "text_only_embedding")
    transforms = {f"{_VISUAL}.{name}": lambda tensor: tensor.reshape(-1) for name in (*vectors, "end_embedding")}
    return map_state_dict(
        state_dict,
        model,
        RULES,
        dropped=DROPPED,
        tied_in_source=TIED_IN_SOURCE,
        transforms=transforms,
        expected_missing=EXPECTED_MISSING.get(type(model), _MISSING_ALWAYS),
        source_name="VL-BERT checkpoint",
    )


def convert_vlbert(
    checkpoint: str | Path | Mapping,
    config: str | Path | Mapping | None = None,
    output_dir: str | Path | None = None,
    *,
    tokenizer=None,
    verbose: bool = True,
    **config_overrides,
):
    """
    Convert an original VL-BERT checkpoint (path, or the loaded dict) into `VlmHfForPreTraining` (pretraining: MLM,
    MVRC as `mrc_head`), `VlmHfForQuestionAnswering` (VQA, reading the [MASK] answer token) or `VlmHfModel`.
    `config`: the original YAML config (path or parsed dict). Returns `(model, report)`; with `output_dir`, writes a
    complete folder (processor when `tokenizer` is given: VL-BERT uses bert-base-uncased).
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = load_checkpoint(checkpoint)
    state_dict = _unwrap(checkpoint)
    if isinstance(config, (str, Path)):
        import yaml

        config = yaml.safe_load(Path(config).read_text())
    model = head_class_of(state_dict)(vlbert_config(state_dict, config, **config_overrides))
    converted, report = convert_vlbert_state_dict(state_dict, model)
    source = "the original VL-BERT (jackroos/VL-BERT)"
    return finish_conversion(model, converted, report, output_dir, source=source, tokenizer=tokenizer, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    return checkpoint_converter_main(
        argv,
        "vlbert",
        convert_vlbert,
        checkpoint_help="VL-BERT .model file ({'state_dict': ...})",
        config_help="the original YAML config (cfgs/.../*.yaml)",
        tokenizer_help="tokenizer folder or name for the processor (bert-base-uncased)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
