"""Original ViLBERT / 12-in-1 checkpoints (facebookresearch/vilbert-multi-task) -> vlm_hf folders.

Both released checkpoints are plain state dicts: `pretrained_model.bin` (`BertForMultiModalPreTraining`: masked LM,
region classification and image-text alignment heads) and `multi_task_model.bin` (`VILBertForVLTasks`: the same
`bert.*` with 20 task embeddings, the `cls.*` heads and the 12-in-1 task heads). The config is the original JSON
(`config/bert_base_6layer_6conect.json`). One task head is converted per folder (`head`):

| `head` | vlm_hf class | source keys |
| --- | --- | --- |
| `pretraining` | `VlmHfForPreTraining` | `cls.predictions`, `cls.imagePredictions`, `cls.bi_seq_relationship` |
| `vqa` | `VlmHfForQuestionAnswering` | `vil_prediction` (3129 answers) |
| `gqa` | `VlmHfForQuestionAnswering` | `vil_prediction_gqa` (1533 answers) |
| `visual_entailment` | `VlmHfForQuestionAnswering` (linear head) | `vil_tri_prediction` (SNLI-VE, 3 classes) |
| `retrieval` | `VlmHfForImageTextRetrieval` | `vil_logit` (or `cls.bi_seq_relationship` of a pretraining checkpoint) |
| `nlvr2` | `VlmHfForVisualReasoning` (`visual_reasoning_pairs`) | `vil_binary_prediction` (rows 2k, 2k+1 = one pair) |
| `grounding` | `VlmHfForRegionGrounding` | `vision_logit` (region scores), `linguisic_logit` (token scores) |
| `base` | `VlmHfModel` | `bert.*` only |

The `q_dense*` weights, which the original never uses, are reported as dropped. ViLBERT's alignment label 0 means "the
caption matches"; vlm_hf's ITM index 1 does, so `cls.bi_seq_relationship`'s two rows are swapped. (With an odd batch
the original's `vil_binary_prediction` output is that alignment head's: convert with `head="pretraining"`.)

```bash
vlm-hf convert vilbert multi_task_model.bin --config bert_base_6layer_6conect.json --head vqa \\
    --output-dir vilbert-vqa-vlm-hf --tokenizer bert-base-uncased
```
"""

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from vlm_hf.conversion.common import (
    ConversionReport,
    converter_parser,
    finish_conversion,
    load_checkpoint,
    map_state_dict,
    match_logit_to_itm,
    swap_itm_rows,
)

from vlm_hf.configuration_vlm_hf import PRESETS, VlmHfConfig
from vlm_hf.modeling_vlm_hf import (
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfForRegionGrounding,
    VlmHfForVisualReasoning,
    VlmHfModel,
)

HEADS = {
    "pretraining": VlmHfForPreTraining,
    "vqa": VlmHfForQuestionAnswering,
    "gqa": VlmHfForQuestionAnswering,
    "visual_entailment": VlmHfForQuestionAnswering,
    "retrieval": VlmHfForImageTextRetrieval,
    "nlvr2": VlmHfForVisualReasoning,
    "grounding": VlmHfForRegionGrounding,
    "base": VlmHfModel,
}

_CO = r"bert\.encoder\.c_layer\.(\d+)\."
_CO_TARGET = r"encoder.co_attention_layer.\1."
# The base model's keys; `{p}` is the head classes' `vlm_hf.` prefix (empty for VlmHfModel). In co-attention layers,
# suffix 1 is the visual side and 2 the text side (queries, keys, values, output dense and LayerNorm).
_BASE_RULES = [
    (
        r"bert\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(weight|bias)",
        r"{p}embeddings.\1.\2",
    ),
    (r"bert\.embeddings\.task_embeddings\.weight", "{p}task_embeddings.weight"),
    (r"bert\.v_embeddings\.image_embeddings\.(weight|bias)", r"{p}visual_embeddings.feature_projection.\1"),
    (r"bert\.v_embeddings\.image_location_embeddings\.(weight|bias)", r"{p}visual_embeddings.location_projection.\1"),
    (r"bert\.v_embeddings\.LayerNorm\.(weight|bias)", r"{p}visual_embeddings.LayerNorm.\1"),
    (r"bert\.encoder\.layer\.(\d+)\.(.+)", r"{p}encoder.layer.\1.\2"),
    (r"bert\.encoder\.v_layer\.(\d+)\.(.+)", r"{p}encoder.visual_layer.\1.\2"),
    (_CO + r"biattention\.query1\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.visual_query.\2"),
    (_CO + r"biattention\.key1\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.visual_key.\2"),
    (_CO + r"biattention\.value1\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.visual_value.\2"),
    (_CO + r"biattention\.query2\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.text_query.\2"),
    (_CO + r"biattention\.key2\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.text_key.\2"),
    (_CO + r"biattention\.value2\.(weight|bias)", "{p}" + _CO_TARGET + r"co_attention.text_value.\2"),
    (_CO + r"biOutput\.dense1\.(weight|bias)", "{p}" + _CO_TARGET + r"visual_attention_output.dense.\2"),
    (_CO + r"biOutput\.LayerNorm1\.(weight|bias)", "{p}" + _CO_TARGET + r"visual_attention_output.LayerNorm.\2"),
    (_CO + r"biOutput\.dense2\.(weight|bias)", "{p}" + _CO_TARGET + r"text_attention_output.dense.\2"),
    (_CO + r"biOutput\.LayerNorm2\.(weight|bias)", "{p}" + _CO_TARGET + r"text_attention_output.LayerNorm.\2"),
    (_CO + r"v_intermediate\.dense\.(weight|bias)", "{p}" + _CO_TARGET + r"visual_intermediate.dense.\2"),
    (_CO + r"v_output\.(dense|LayerNorm)\.(weight|bias)", "{p}" + _CO_TARGET + r"visual_output.\2.\3"),
    (_CO + r"t_intermediate\.dense\.(weight|bias)", "{p}" + _CO_TARGET + r"text_intermediate.dense.\2"),
    (_CO + r"t_output\.(dense|LayerNorm)\.(weight|bias)", "{p}" + _CO_TARGET + r"text_output.\2.\3"),
    (r"bert\.t_pooler\.dense\.(weight|bias)", r"{p}pooler.text_pooler.dense.\1"),
    (r"bert\.v_pooler\.dense\.(weight|bias)", r"{p}pooler.visual_pooler.dense.\1"),
]
# `SimpleClassifier`: Linear, GELU, LayerNorm, Linear (Sequential indices 0, 2, 3) -> VlmHfAnswerHead.
_CLASSIFIER = [
    (r"\.logit_fc\.0\.(weight|bias)", r"classifier.dense.\1"),
    (r"\.logit_fc\.2\.(weight|bias)", r"classifier.LayerNorm.\1"),
    (r"\.logit_fc\.3\.(weight|bias)", r"classifier.out_proj.\1"),
]
_HEAD_RULES = {
    "pretraining": [
        (r"cls\.predictions\.bias", "cls.predictions.decoder.bias"),
        (r"cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"cls.predictions.transform.\1.\2"),
        (r"cls\.imagePredictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"mrc_head.\1.\2"),
        (r"cls\.imagePredictions\.decoder\.(weight|bias)", r"mrc_head.decoder.\1"),
        (r"cls\.bi_seq_relationship\.(weight|bias)", r"itm_head.\1"),
    ],
    "vqa": [(r"vil_prediction" + pattern, target) for pattern, target in _CLASSIFIER],
    "gqa": [(r"vil_prediction_gqa" + pattern, target) for pattern, target in _CLASSIFIER],
    "visual_entailment": [(r"vil_tri_prediction\.(weight|bias)", r"classifier.out_proj.\1")],
    "retrieval": [(r"vil_logit\.(weight|bias)", r"itm_head.\1")],
    "nlvr2": [(r"vil_binary_prediction" + pattern, target) for pattern, target in _CLASSIFIER],
    "grounding": [
        (r"vision_logit\.(weight|bias)", r"region_classifier.\1"),
        (r"linguisic_logit\.(weight|bias)", r"token_classifier.\1"),
    ],
    "base": [],
}
_TASK_HEADS = {
    "vqa": r"vil_prediction\.",
    "gqa": r"vil_prediction_gqa\.",
    "visual_entailment": r"vil_tri_prediction\.",
    "retrieval": r"vil_logit\.",
    "nlvr2": r"vil_binary_prediction\.",
    "grounding": r"(vision_logit|linguisic_logit)\.",
}
_NO_COUNTERPART = [
    (r"bert\.encoder\.c_layer\.\d+\.biOutput\.q_dense[12]\.(weight|bias)", "unused by the original forward"),
]
_TIED_IN_SOURCE = [("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight")]
_BACKBONE = (r"(?:vlm_hf\.)?vision_backbone\..*", "vision backbone: ViLBERT reads detector region features")


def vilbert_config(
    original: Mapping, state_dict: Mapping[str, torch.Tensor], head: str = "pretraining", **overrides
) -> VlmHfConfig:
    """A VlmHfConfig from the original ViLBERT JSON config, with the head sizes read from the checkpoint."""
    original = dict(original)
    if not original.get("with_coattention", True) or original.get("dynamic_attention", False):
        raise ValueError("Only ViLBERT with co-attention and without dynamic attention is supported (the releases).")
    if original.get("v_hidden_act", original.get("hidden_act", "gelu")) != original.get("hidden_act", "gelu"):
        raise ValueError("The visual stream's v_hidden_act must equal hidden_act in vlm_hf.")
    fusion_method = original.get("fusion_method", "mul")  # `pooling_method` is not read by the original code
    if fusion_method not in ("mul", "sum"):
        raise ValueError(f"fusion_method={fusion_method!r} is not supported; ViLBERT uses 'mul' (or 'sum').")
    sizes = {
        "vocab_size": original["vocab_size"],
        "hidden_size": original["hidden_size"],
        "num_hidden_layers": original["num_hidden_layers"],
        "num_attention_heads": original["num_attention_heads"],
        "intermediate_size": original["intermediate_size"],
        "hidden_act": original.get("hidden_act", "gelu"),
        "max_position_embeddings": original["max_position_embeddings"],
        "type_vocab_size": original["type_vocab_size"],
        "visual_feature_dim": original["v_feature_size"],
        "visual_hidden_size": original["v_hidden_size"],
        "visual_num_hidden_layers": original["v_num_hidden_layers"],
        "visual_num_attention_heads": original["v_num_attention_heads"],
        "visual_intermediate_size": original["v_intermediate_size"],
        "fusion_hidden_size": original["bi_hidden_size"],
        "fusion_num_attention_heads": original["bi_num_attention_heads"],
        "co_attention_text_layers": list(original["t_biattention_id"]),
        "co_attention_visual_layers": list(original["v_biattention_id"]),
        "joint_pooling": "product" if fusion_method == "mul" else "sum",
        "answer_head_hidden_size": 2 * original["bi_hidden_size"],
        "num_task_tokens": _rows(state_dict, "bert.embeddings.task_embeddings.weight"),
        "num_region_classes": _rows(state_dict, "cls.imagePredictions.decoder.weight") if head == "pretraining" else 0,
        "vision_backbone": None,  # region features, unless the caller adds a backbone (to be filled separately)
    }
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"):
        if key in original:
            sizes[key] = original[key]
    if head in ("vqa", "gqa"):
        classifier = "vil_prediction_gqa" if head == "gqa" else "vil_prediction"
        sizes["num_labels"] = _rows(state_dict, classifier + ".logit_fc.3.weight")
    elif head == "nlvr2":
        # The pair classifier reads two joint vectors side by side (vil_binary_prediction: 2 bi -> 2 bi -> 2).
        sizes.update(
            num_labels=_rows(state_dict, "vil_binary_prediction.logit_fc.3.weight"),
            visual_reasoning_pairs=True,
            visual_reasoning_head="mlp",  # at answer_head_hidden_size = 2 bi, like vil_prediction
            id2label={0: "False", 1: "True"},  # nlvr2_dataset.py: label 1 when the statement is true
        )
    elif head == "visual_entailment":
        sizes.update(num_labels=3, answer_head="linear", id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
    values = {**PRESETS["vilbert-base"], **sizes, **overrides}
    is_release = all(values[key] == PRESETS["vilbert-base"][key] for key in ("hidden_size", "visual_hidden_size"))
    return VlmHfConfig(**values, preset="vilbert-base" if is_release else None)


def _rows(state_dict: Mapping[str, torch.Tensor], key: str) -> int:
    return state_dict[key].shape[0] if key in state_dict else 0


def convert_vilbert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model, head: str = "pretraining", task_tokens: bool = True
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a ViLBERT state dict onto `model` (strict; see `vlm_hf.conversion.common.map_state_dict`)."""
    prefix = "" if head == "base" else "vlm_hf."
    rules = [(pattern, target.replace("{p}", prefix)) for pattern, target in _BASE_RULES]
    rules += _HEAD_RULES[head]
    dropped = list(_NO_COUNTERPART)
    if not task_tokens:
        dropped.append((r"bert\.embeddings\.task_embeddings\.weight", "task tokens not used (task_tokens=False)"))
    for other, pattern in _TASK_HEADS.items():
        if other != head:
            dropped.append((pattern + ".*", f"12-in-1 task head of another task ({other})"))
    transforms = {}
    expected_missing = [_BACKBONE]
    pretraining_heads = r"cls\..*"
    if head == "pretraining":
        transforms = {"itm_head.weight": swap_itm_rows, "itm_head.bias": swap_itm_rows}
        expected_missing.append((r"mvf_head\..*", "masked visual-feature regression: ViLBERT classifies regions"))
    elif head == "retrieval" and "vil_logit.weight" not in state_dict:
        # A pretraining checkpoint: its alignment head is an image-text matching head.
        rules = rules[:-1] + [(r"cls\.bi_seq_relationship\.(weight|bias)", r"itm_head.\1")]
        pretraining_heads = r"cls\.(predictions|imagePredictions)\..*"
        transforms = {"itm_head.weight": swap_itm_rows, "itm_head.bias": swap_itm_rows}
    elif head == "retrieval":
        transforms = {"itm_head.weight": match_logit_to_itm, "itm_head.bias": match_logit_to_itm}
    if head == "retrieval":
        separate = r"(text_projection|image_projection)\.weight|logit_scale"
        expected_missing.append((separate, "separate image/text embeddings: not in ViLBERT"))
    if head != "pretraining":
        dropped.append((pretraining_heads, "pretraining heads (convert with head='pretraining')"))
    return map_state_dict(
        state_dict,
        model,
        rules,
        dropped=dropped,
        tied_in_source=_TIED_IN_SOURCE,
        transforms=transforms,
        expected_missing=expected_missing,
        source_name="ViLBERT checkpoint",
    )


def convert_vilbert(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: str | Path | Mapping,
    output_dir: str | Path | None = None,
    *,
    head: str = "pretraining",
    task_tokens: bool = True,
    tokenizer=None,
    verbose: bool = True,
    **config_overrides,
):
    """
    Convert an original ViLBERT / 12-in-1 checkpoint (path or state dict) into a vlm_hf model with
    `fusion="co_attention"`: `head` picks the task head (`pretraining`, `vqa`, `gqa`, `visual_entailment`,
    `retrieval`, `nlvr2`, `grounding`, `base`; see the module docstring). A multi-task checkpoint keeps its task
    tokens (pass `task_ids`: 12-in-1's task number, e.g. 1 for VQA) unless `task_tokens=False`.

    `config`: the original JSON config (path or dict). `output_dir`: write a complete folder there (with the processor
    when `tokenizer` is given: ViLBERT uses bert-base-uncased). The model reads region features (`visual_embeds`,
    without the [IMG] token, which it adds); `vision_backbone="resnet101"` adds a ResNet (to be loaded separately,
    e.g. with `vision_pretrained`). Returns `(model, report)`.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}.")
    state_dict = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if not task_tokens:
        config_overrides.setdefault("num_task_tokens", 0)
    model = HEADS[head](vilbert_config(config, state_dict, head, **config_overrides))
    converted, report = convert_vilbert_state_dict(state_dict, model, head, task_tokens)
    source = "the original ViLBERT (facebookresearch/vilbert-multi-task)"
    return finish_conversion(model, converted, report, output_dir, source=source, tokenizer=tokenizer, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    parser = converter_parser(
        "vilbert",
        convert_vilbert,
        "checkpoint",
        "ViLBERT .bin state dict (pretrained_model.bin or multi_task_model.bin)",
        tokenizer_help="tokenizer folder or name for the processor (bert-base-uncased)",
    )
    parser.add_argument("--config", required=True, help="the original config JSON (bert_base_6layer_6conect.json)")
    parser.add_argument("--head", default="pretraining", choices=sorted(HEADS), help="the task head to convert")
    parser.add_argument("--no-task-tokens", action="store_true", help="drop a multi-task checkpoint's task tokens")
    parser.add_argument("--vision-backbone", help="add a torchvision backbone (e.g. resnet101) to run from pixels")
    args = parser.parse_args(argv)
    convert_vilbert(
        args.checkpoint,
        args.config,
        args.output_dir,
        head=args.head,
        task_tokens=not args.no_task_tokens,
        tokenizer=args.tokenizer,
        **({"vision_backbone": args.vision_backbone} if args.vision_backbone else {}),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
