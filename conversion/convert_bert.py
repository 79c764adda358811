"""The text tower from any Hugging Face BERT checkpoint -> a vlm_hf model.

Every vlm_hf model's text side has BERT's structure and names (`embeddings`, `encoder.layer.N`, `pooler`), so a BERT
checkpoint (`BertModel`, `BertForPreTraining`, `BertForMaskedLM`, ..., old TensorFlow ports with `gamma` / `beta`
LayerNorms included) fills it; `cls.predictions` fills the masked-LM head of `VlmHfForPreTraining`. The visual side
keeps its initialisation (reported as missing), as when VisualBERT / UNITER / VL-BERT start from BERT.

```bash
vlm-hf convert bert path/to/bert-base-uncased --preset visualbert-base --head pretraining --output-dir vb-init
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
    load_checkpoint,
    map_state_dict,
)

from vlm_hf.configuration_vlm_hf import VlmHfConfig
from vlm_hf.modeling_vlm_hf import (
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfForVisualReasoning,
    VlmHfModel,
)

HEADS = {
    "model": VlmHfModel,
    "pretraining": VlmHfForPreTraining,
    "vqa": VlmHfForQuestionAnswering,
    "visual-reasoning": VlmHfForVisualReasoning,
    "retrieval": VlmHfForImageTextRetrieval,
}

_BERT = r"(?:bert\.)?"  # BertModel's own state dict has no prefix
RULES = [
    (
        _BERT + r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(weight|bias)",
        r"vlm_hf.embeddings.\1.\2",
    ),
    (_BERT + r"encoder\.layer\.(\d+)\.(.+)", r"vlm_hf.encoder.layer.\1.\2"),
    (_BERT + r"pooler\.dense\.(weight|bias)", r"vlm_hf.pooler.dense.\1"),
]
MLM_RULES = [
    (r"cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"cls.predictions.transform.\1.\2"),
    (r"cls\.predictions\.bias", "cls.predictions.decoder.bias"),
]
DROPPED = [
    (_BERT + r"embeddings\.(position_ids|token_type_ids)", "buffer, recomputed by the model"),
    (r"cls\.seq_relationship\..*", "next-sentence prediction head: not an image-text objective"),
    (r"(classifier|qa_outputs)\..*", "text-only task head"),
]
TIED_IN_SOURCE = [
    ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    ("cls.predictions.bias", "cls.predictions.decoder.bias"),
]
EXPECTED_MISSING = [
    (r"(?:vlm_hf\.)?pooler\..*", "this BERT checkpoint has no pooler (e.g. BertForMaskedLM)"),
    (r"cls\.predictions\..*", "this BERT checkpoint has no masked-LM head"),
    (r"(?!(?:vlm_hf\.)?(embeddings|encoder|pooler)\.).*", "not part of a BERT text tower (kept initialised)"),
]


def bert_text_config(bert_config, preset: str | None = None, **overrides) -> VlmHfConfig:
    """A vlm_hf config with the text sizes of a transformers `BertConfig` (and `preset`'s recipe for the rest)."""
    if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("Only BERT with absolute position embeddings fits the vlm_hf text tower.")
    values = bert_config_values(bert_config)
    if preset is not None:
        preset_values = VlmHfConfig.from_preset(preset)
        # VL-BERT's objects use token type 2: keep the preset's larger type table (new rows stay initialised).
        values["type_vocab_size"] = max(values["type_vocab_size"], preset_values.type_vocab_size)
        return VlmHfConfig.from_preset(preset, **{**values, **overrides})
    return VlmHfConfig(**{**values, **overrides})


def convert_bert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a BERT state dict onto `model`'s text tower (and MLM head for `VlmHfForPreTraining`)."""
    state_dict = dict(state_dict)
    rules, dropped = list(RULES), list(DROPPED)
    if isinstance(model, VlmHfForPreTraining):
        rules += MLM_RULES
    else:
        dropped.append((r"cls\.predictions\..*", f"masked-LM head: {type(model).__name__} has none"))
    tied = [(kept.removeprefix("bert."), dup) for kept, dup in TIED_IN_SOURCE if kept not in state_dict]
    transforms = {}
    target_types = model.state_dict()[_type_table_key(model)]
    type_tables = [v for k, v in state_dict.items() if k.endswith("embeddings.token_type_embeddings.weight")]
    source_types = type_tables[0] if type_tables else None
    if source_types is not None and source_types.shape[0] < target_types.shape[0]:
        # A larger type table than BERT's (VL-BERT's object type 2): BERT's rows, then the model's initialised rows.
        extra = target_types[source_types.shape[0] :].detach().clone()
        transforms["vlm_hf.embeddings.token_type_embeddings.weight"] = lambda t: torch.cat([t, extra.to(t.dtype)])
    return map_state_dict(
        state_dict,
        model,
        rules,
        dropped=dropped,
        tied_in_source=TIED_IN_SOURCE + tied,
        transforms=transforms,
        expected_missing=EXPECTED_MISSING,
        source_name="BERT checkpoint",
    )


def _type_table_key(model) -> str:
    key = "embeddings.token_type_embeddings.weight"
    return key if isinstance(model, VlmHfModel) else f"vlm_hf.{key}"


def convert_bert_text_tower(
    bert,
    output_dir: str | Path | None = None,
    *,
    head: str = "model",
    preset: str | None = None,
    config: VlmHfConfig | None = None,
    tokenizer=None,
    verbose: bool = True,
    **config_overrides,
):
    """
    Build a vlm_hf model whose text tower is `bert`: a transformers BERT model instance, a local folder, or a state
    dict file (then `config` is required). `head`: one of `HEADS`. `preset`: the vlm_hf recipe for the visual side
    (sizes come from BERT). `config`: a complete vlm_hf config instead. Returns `(model, report)`; with `output_dir`,
    writes a complete folder (processor from `tokenizer`, or the BERT folder's tokenizer).
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}.")
    if isinstance(bert, (str, Path)) and Path(bert).is_dir():
        bert_config = BertConfig.from_pretrained(bert)
        files = [Path(bert, name) for name in ("model.safetensors", "pytorch_model.bin") if Path(bert, name).is_file()]
        state_dict = load_checkpoint(files[0]) if files else BertModel.from_pretrained(bert).state_dict()
        if tokenizer is None and Path(bert, "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(bert)
    elif isinstance(bert, (str, Path)):
        if config is None:
            raise ValueError("A BERT state-dict file needs `config` (the vlm_hf config to build).")
        bert_config, state_dict = None, load_checkpoint(bert)
    else:
        bert_config, state_dict = bert.config, bert.state_dict()
    if config is None:
        config = bert_text_config(bert_config, preset, **config_overrides)
    model = HEADS[head](config)
    converted, report = convert_bert_state_dict(state_dict, model)
    source = "a BERT text tower"
    return finish_conversion(model, converted, report, output_dir, source=source, tokenizer=tokenizer, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    parser = converter_parser(
        "bert",
        convert_bert_text_tower,
        "bert",
        "a local BERT folder (save_pretrained output)",
        tokenizer_help="tokenizer folder or name, if the BERT folder has none",
    )
    parser.add_argument("--head", choices=sorted(HEADS), default="model")
    parser.add_argument("--preset", help="vlm_hf preset for the visual side, e.g. uniter-base")
    parser.add_argument("--vision-backbone", help="torchvision backbone to add (e.g. resnet50); default: the preset's")
    parser.add_argument("--vision-pretrained", help="torchvision weights name or file for that backbone")
    args = parser.parse_args(argv)
    overrides = {}
    if args.vision_backbone:
        overrides["vision_backbone"] = args.vision_backbone
    if args.vision_pretrained:
        overrides["vision_pretrained"] = args.vision_pretrained
    convert_bert_text_tower(
        args.bert, args.output_dir, head=args.head, preset=args.preset, tokenizer=args.tokenizer, **overrides
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
