"""transformers' VisualBERT checkpoints (`VisualBert*` classes) -> vlm_hf folders.

| transformers class | vlm_hf class |
| --- | --- |
| `VisualBertModel` | `VlmHfModel` |
| `VisualBertForPreTraining` | `VlmHfForPreTraining` (MLM; `seq_relationship` -> `itm_head`, rows swapped) |
| `VisualBertForQuestionAnswering` | `VlmHfForQuestionAnswering` (linear head on the answer token) |
| `VisualBertForVisualReasoning` | `VlmHfForVisualReasoning` |

VisualBERT's sentence-image head says 0 = "the text matches the image"; vlm_hf's `itm_logits` say 1 = match, so the two
rows are swapped: `itm_logits[:, ::-1]` equals VisualBERT's `seq_relationship_logits`.

```bash
vlm-hf convert visualbert path/to/visualbert-vqa-folder --output-dir visualbert-vqa-vlm-hf
```
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from vlm_hf.conversion.common import (
    ConversionReport,
    bert_config_values,
    converter_parser,
    finish_conversion,
    map_state_dict,
    swap_itm_rows,
)

from vlm_hf.configuration_vlm_hf import VlmHfConfig
from vlm_hf.modeling_vlm_hf import (
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfForVisualReasoning,
    VlmHfModel,
)

HEAD_CLASSES = {
    "VisualBertModel": VlmHfModel,
    "VisualBertForPreTraining": VlmHfForPreTraining,
    "VisualBertForQuestionAnswering": VlmHfForQuestionAnswering,
    "VisualBertForVisualReasoning": VlmHfForVisualReasoning,
}

_BASE = r"(?:visual_bert\.)?"  # VisualBertModel's own state dict has no prefix
_VISUAL = "vlm_hf.visual_embeddings"

RULES = [
    (_BASE + r"embeddings\.visual_projection\.(weight|bias)", _VISUAL + r".feature_projection.\1"),
    (_BASE + r"embeddings\.visual_token_type_embeddings\.weight", _VISUAL + ".token_type_embeddings.weight"),
    (_BASE + r"embeddings\.visual_position_embeddings\.weight", _VISUAL + ".position_embeddings.weight"),
    (
        _BASE + r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(weight|bias)",
        r"vlm_hf.embeddings.\1.\2",
    ),
    (_BASE + r"encoder\.layer\.(\d+)\.(.+)", r"vlm_hf.encoder.layer.\1.\2"),
    (_BASE + r"pooler\.dense\.(weight|bias)", r"vlm_hf.pooler.dense.\1"),
    (r"cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"cls.predictions.transform.\1.\2"),
    (r"cls\.predictions\.bias", "cls.predictions.decoder.bias"),
    (r"cls\.seq_relationship\.(weight|bias)", r"itm_head.\1"),
]
HEAD_RULES = {
    VlmHfForQuestionAnswering: [(r"cls\.(weight|bias)", r"classifier.out_proj.\1")],
    VlmHfForVisualReasoning: [(r"cls\.(weight|bias)", r"classifier.\1")],
}
TIED_IN_SOURCE = [
    ("visual_bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    ("cls.predictions.bias", "cls.predictions.decoder.bias"),
]
_MISSING = [(r"(?:vlm_hf\.)?vision_backbone\..*", "vision backbone: VisualBERT reads detector region features")]
EXPECTED_MISSING = {
    # VisualBERT pretrains with masked LM and sentence-image prediction only.
    VlmHfForPreTraining: [*_MISSING, (r"mvf_head\..*", "masked visual-feature regression: not a VisualBERT objective")],
}


def visualbert_config(visualbert_config, **overrides) -> VlmHfConfig:
    """The vlm_hf config of a transformers `VisualBertConfig`."""
    if getattr(visualbert_config, "bypass_transformer", False):
        raise ValueError("VisualBERT with bypass_transformer=True is not supported.")
    values = bert_config_values(visualbert_config)
    values["visual_feature_dim"] = visualbert_config.visual_embedding_dim
    if getattr(visualbert_config, "id2label", None):
        values["id2label"] = dict(visualbert_config.id2label)
    return VlmHfConfig.from_preset("visualbert-base", **{"vision_backbone": None, **values, **overrides})


def convert_visualbert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a transformers VisualBERT state dict onto `model` (the vlm_hf class matching the VisualBERT class)."""
    state_dict = dict(state_dict)
    # transformers' base-model state dicts drop the prefix; the tie then is between unprefixed keys.
    tied = [(kept.removeprefix("visual_bert."), dup) for kept, dup in TIED_IN_SOURCE if kept not in state_dict]
    return map_state_dict(
        state_dict,
        model,
        HEAD_RULES.get(type(model), []) + RULES,
        tied_in_source=TIED_IN_SOURCE + tied,
        transforms={"itm_head.weight": swap_itm_rows, "itm_head.bias": swap_itm_rows},
        expected_missing=EXPECTED_MISSING.get(type(model), _MISSING),
        source_name="VisualBERT checkpoint",
    )


def convert_visualbert(
    source,
    output_dir: str | Path | None = None,
    *,
    head: str | None = None,
    tokenizer=None,
    verbose: bool = True,
    **config_overrides,
):
    """
    Convert a transformers VisualBERT model (an instance, or a local folder `from_pretrained` reads) into the matching
    vlm_hf model. `head` names the VisualBERT class when a folder's config does not (`architectures`). With
    `output_dir`, writes a complete folder, with the processor when `tokenizer` is given (or found in the folder).
    Returns `(model, report)`.
    """
    from transformers import AutoTokenizer, VisualBertConfig

    if isinstance(source, (str, Path)):
        config = VisualBertConfig.from_pretrained(source)
        head = head or (config.architectures or ["VisualBertModel"])[0]
        if head not in HEAD_CLASSES:
            raise ValueError(f"Unsupported VisualBERT class {head!r}; supported: {sorted(HEAD_CLASSES)}.")
        import transformers

        source_model = getattr(transformers, head).from_pretrained(source)
        if tokenizer is None and Path(source, "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        source_model, head = source, head or type(source).__name__
        if head not in HEAD_CLASSES:
            raise ValueError(f"Unsupported VisualBERT class {head!r}; supported: {sorted(HEAD_CLASSES)}.")
    model = HEAD_CLASSES[head](visualbert_config(source_model.config, **config_overrides))
    converted, report = convert_visualbert_state_dict(source_model.state_dict(), model)
    origin = f"transformers' {head}"
    return finish_conversion(model, converted, report, output_dir, source=origin, tokenizer=tokenizer, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    parser = converter_parser(
        "visualbert",
        convert_visualbert,
        "model",
        "a local VisualBERT folder (save_pretrained output)",
        tokenizer_help="tokenizer folder or name, if the model folder has none",
    )
    parser.add_argument("--head", choices=sorted(HEAD_CLASSES), help="the VisualBERT class, if config.json lacks it")
    args = parser.parse_args(argv)
    convert_visualbert(args.model, args.output_dir, head=args.head, tokenizer=args.tokenizer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
