"""Original UNITER checkpoints (ChenRocks/UNITER) -> vlm_hf folders.

The checkpoint is a plain state dict (`ModelSaver.save`): pretraining (`UniterForPretraining`: MLM, ITM, MRFR, MRC
heads), VQA (`vqa_output`) or retrieval (`rank_output`), possibly float16. The config is the original
`config/uniter-*.json`; without it the sizes are read from the tensors (and 64-wide attention heads assumed).

```bash
vlm-hf convert uniter pretrain.pt --config uniter-base.json --output-dir uniter-base-vlm-hf --tokenizer bert-base-cased
```
"""

import json
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
    match_logit_to_itm,
    original_hyperparameters,
)

from vlm_hf.configuration_vlm_hf import VlmHfConfig
from vlm_hf.modeling_vlm_hf import (
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfModel,
)

_UNITER = r"(?:uniter\.)?"  # UniterModel's own state dict has no prefix
_VISUAL = "vlm_hf.visual_embeddings"

RULES = [
    (
        _UNITER + r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(weight|bias)",
        r"vlm_hf.embeddings.\1.\2",
    ),
    (_UNITER + r"img_embeddings\.img_linear\.(weight|bias)", _VISUAL + r".feature_projection.\1"),
    (_UNITER + r"img_embeddings\.img_layer_norm\.(weight|bias)", _VISUAL + r".feature_layer_norm.\1"),
    (_UNITER + r"img_embeddings\.pos_linear\.(weight|bias)", _VISUAL + r".location_projection.\1"),
    (_UNITER + r"img_embeddings\.pos_layer_norm\.(weight|bias)", _VISUAL + r".location_layer_norm.\1"),
    (_UNITER + r"img_embeddings\.mask_embedding\.weight", _VISUAL + ".mask_feature_embedding"),
    (_UNITER + r"img_embeddings\.LayerNorm\.(weight|bias)", _VISUAL + r".LayerNorm.\1"),
    (_UNITER + r"encoder\.layer\.(\d+)\.(.+)", r"vlm_hf.encoder.layer.\1.\2"),
    (_UNITER + r"pooler\.dense\.(weight|bias)", r"vlm_hf.pooler.dense.\1"),
    # Pretraining heads.
    (r"cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"cls.predictions.transform.\1.\2"),
    (r"cls\.predictions\.bias", "cls.predictions.decoder.bias"),
    (r"itm_output\.(weight|bias)", r"itm_head.\1"),
    (r"feat_regress\.net\.0\.(weight|bias)", r"mvf_head.transform.dense.\1"),
    (r"feat_regress\.net\.2\.(weight|bias)", r"mvf_head.transform.LayerNorm.\1"),
    (r"feat_regress\.bias", "mvf_head.bias"),
    (r"region_classifier\.net\.0\.(weight|bias)", r"mrc_head.dense.\1"),
    (r"region_classifier\.net\.2\.(weight|bias)", r"mrc_head.LayerNorm.\1"),
    (r"region_classifier\.net\.3\.(weight|bias)", r"mrc_head.decoder.\1"),
    # VQA: Linear(H, 2H), GELU, LayerNorm, Linear (Sequential indices 0, 2, 3).
    (r"vqa_output\.0\.(weight|bias)", r"classifier.dense.\1"),
    (r"vqa_output\.2\.(weight|bias)", r"classifier.LayerNorm.\1"),
    (r"vqa_output\.3\.(weight|bias)", r"classifier.out_proj.\1"),
    # Retrieval: the single match logit becomes row 1 of the two-way ITM head (see `match_logit_to_itm`).
    (r"rank_output\.(weight|bias)", r"itm_head.\1"),
]

# One parameter stored under two keys in UniterForPretraining checkpoints.
TIED_IN_SOURCE = [
    ("uniter.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    ("uniter.img_embeddings.img_linear.weight", "feat_regress.weight"),
]

# vlm_hf weights a UNITER checkpoint never has.
_BACKBONE = (r"(?:vlm_hf\.)?vision_backbone\..*", "vision backbone: UNITER reads detector region features")
EXPECTED_MISSING = {
    VlmHfModel: [_BACKBONE],
    VlmHfForQuestionAnswering: [_BACKBONE],
    VlmHfForPreTraining: [_BACKBONE],
    VlmHfForImageTextRetrieval: [
        _BACKBONE,
        (r"(text_projection|image_projection)\.weight|logit_scale", "separate image/text embeddings: not in UNITER"),
    ],
}


def head_class_of(state_dict: Mapping[str, torch.Tensor]) -> type:
    """The vlm_hf class matching the UNITER model the checkpoint was saved from."""
    keys = set(state_dict)
    if any(key.startswith("vqa_output.") for key in keys):
        return VlmHfForQuestionAnswering
    if any(key.startswith("rank_output.") for key in keys):
        return VlmHfForImageTextRetrieval
    if any(key.startswith(("cls.", "feat_regress.", "region_classifier.", "itm_output.")) for key in keys):
        return VlmHfForPreTraining
    return VlmHfModel


def uniter_config(state_dict: Mapping[str, torch.Tensor], original_config: Mapping | None = None, **overrides):
    """A VlmHfConfig from the original UNITER JSON config (or the tensor shapes) and the checkpoint's head sizes."""
    original = dict(original_config or {})
    words = _get(state_dict, "embeddings.word_embeddings.weight")
    hidden_size = original.get("hidden_size", words.shape[1])
    sizes = {
        "vocab_size": words.shape[0],
        "hidden_size": hidden_size,
        "num_hidden_layers": count_layers(state_dict),
        "intermediate_size": _get(state_dict, "encoder.layer.0.intermediate.dense.weight").shape[0],
        "max_position_embeddings": _get(state_dict, "embeddings.position_embeddings.weight").shape[0],
        "type_vocab_size": _get(state_dict, "embeddings.token_type_embeddings.weight").shape[0],
        "visual_feature_dim": _get(state_dict, "img_embeddings.img_linear.weight").shape[1],
    }
    sizes.update(original_hyperparameters(original, hidden_size))
    for key in ("vocab_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        if key in original and original[key] != sizes[key]:
            raise ValueError(f"config {key}={original[key]} does not match the checkpoint's {sizes[key]}.")
    if "vqa_output.3.weight" in state_dict:
        sizes["num_labels"] = state_dict["vqa_output.3.weight"].shape[0]
    if "region_classifier.net.3.weight" in state_dict:
        sizes["num_region_classes"] = state_dict["region_classifier.net.3.weight"].shape[0]
    else:
        sizes["num_region_classes"] = 0
    preset = "uniter-large" if hidden_size == 1024 else "uniter-base"
    # Region features, no backbone, unless the caller adds one (then it must be filled separately).
    return VlmHfConfig.from_preset(preset, **{"vision_backbone": None, **sizes, **overrides})


def _get(state_dict: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor:
    for prefix in ("uniter.", ""):
        if prefix + suffix in state_dict:
            return state_dict[prefix + suffix]
    raise ValueError(f"Not a UNITER checkpoint: no key 'uniter.{suffix}'.")


def convert_uniter_state_dict(
    state_dict: Mapping[str, torch.Tensor], model
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a UNITER state dict onto `model` (strict; see `vlm_hf.conversion.common.map_state_dict`)."""
    head = type(model)
    transforms = {}
    dropped = []
    if head is VlmHfForImageTextRetrieval:
        transforms = {"itm_head.weight": match_logit_to_itm, "itm_head.bias": match_logit_to_itm}
        dropped.append((r"itm_output\..*", "unused by UniterForImageTextRetrieval, which scores with rank_output"))
    # Row 0 of mask_embedding is never used (the original overwrites it with zeros); row 1 is the mask embedding.
    transforms[_VISUAL + ".mask_feature_embedding"] = lambda tensor: tensor[1]
    return map_state_dict(
        state_dict,
        model,
        RULES,
        dropped=dropped,
        tied_in_source=TIED_IN_SOURCE,
        transforms=transforms,
        expected_missing=EXPECTED_MISSING.get(head, [_BACKBONE]),
        source_name="UNITER checkpoint",
    )


def convert_uniter(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: str | Path | Mapping | None = None,
    output_dir: str | Path | None = None,
    *,
    tokenizer=None,
    verbose: bool = True,
    **config_overrides,
):
    """
    Convert an original UNITER checkpoint (path or state dict) into the matching vlm_hf model: pretraining ->
    `VlmHfForPreTraining`, VQA -> `VlmHfForQuestionAnswering`, retrieval -> `VlmHfForImageTextRetrieval` (its ITM head
    gives `rank_output`'s score as logit 1, logit 0 = 0), the bare `UniterModel` -> `VlmHfModel`.

    `config`: the original JSON config (path or dict). `output_dir`: write a complete folder there (with the processor
    when `tokenizer` is given: UNITER uses bert-base-cased). Returns `(model, report)`.
    """
    state_dict = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    vlm_config = uniter_config(state_dict, config, **config_overrides)
    model = head_class_of(state_dict)(vlm_config)
    converted, report = convert_uniter_state_dict(state_dict, model)
    source = "the original UNITER (ChenRocks/UNITER)"
    return finish_conversion(model, converted, report, output_dir, source=source, tokenizer=tokenizer, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    return checkpoint_converter_main(
        argv,
        "uniter",
        convert_uniter,
        checkpoint_help="UNITER .pt/.bin state dict (pretraining, VQA or retrieval)",
        config_help="the original config JSON (config/uniter-base.json)",
        tokenizer_help="tokenizer folder or name for the processor (bert-base-cased)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
