"""Model cards (`README.md`) for saved vlm_hf folders, filled through huggingface_hub's `ModelCard` / `ModelCardData`.

`write_model_card(folder, ...)` writes a new card from the saved config (or a model), a training record and evaluation
results; `update_model_card(folder, eval_results=..., model_id=...)` adds evaluation results to an existing card or
points its loading snippets at a Hub repository, keeping the rest of the card (hand edits included) as it is.

```python
>>> from vlm_hf.model_card import update_model_card, write_model_card
>>> write_model_card("vqa_model", training={"dataset_name": "my scenes", "global_step": 1000, "epochs": 3.0})
>>> update_model_card(
...     "vqa_model",
...     eval_results=[
...         {
...             "task_type": "visual-question-answering",
...             "dataset_type": "my-org/scenes",
...             "dataset_name": "Scenes (held out)",
...             "metric_type": "accuracy",
...             "metric_value": 0.95,
...         }
...     ],
... )
```
"""

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .configuration_vlm_hf import VlmHfConfig
from .modeling_vlm_hf import AUTO_MAP

logger = logging.get_logger(__name__)

TEMPLATE_PACKAGE = "vlm_hf.model_cards"
TEMPLATE_NAME = "vlm_hf_model_card.md"
CARD_NAME = "README.md"

# Head class -> Auto class that loads it, from the `auto_map` every saved folder carries.
AUTO_CLASS_OF_HEAD = {path.split(".")[-1]: auto for auto, path in AUTO_MAP.items() if auto != "AutoConfig"}

# Head class -> the Hub task it serves. The encoder and the pretraining model produce joint image-text features (no
# Hub task reads an image and a text into features more closely), the others have their pipelines.
PIPELINE_TAG_OF_HEAD = {
    "VlmHfModel": "feature-extraction",
    "VlmHfForPreTraining": "feature-extraction",
    "VlmHfForQuestionAnswering": "visual-question-answering",
    "VlmHfForImageTextRetrieval": "zero-shot-image-classification",
    "VlmHfForConditionalGeneration": "image-text-to-text",
}

# Files that `ProcessorMixin.save_pretrained` / `ImageProcessor.save_pretrained` write: their presence means the card
# can tell users to load the processor too.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# The card's sections that `update_model_card` re-renders; everything outside them is kept as it is.
UPDATABLE_SECTIONS = ("usage", "evaluation")


@dataclass
class TrainingSummary:
    """What a card says about how the weights were trained. Every field is optional: unknown facts are left out."""

    dataset_name: str | None = None  # a readable name of the training data
    num_examples: int | None = None  # rows of the training dataset (None for streamed data)
    global_step: int | None = None  # optimiser steps
    epochs: float | None = None
    train_batch_size: int | None = None  # rows per optimiser step, over all processes and accumulation steps
    learning_rate: float | None = None
    seed: int | None = None
    precision: str | None = None  # "fp32", "bf16" or "fp16"
    final_loss: float | None = None  # the mean training loss the Trainer reports at the end
    initialized_from: str | None = None  # the folder or Hub id training started from; None for a new model

    @classmethod
    def from_trainer(cls, trainer, dataset_name: str | None = None) -> "TrainingSummary":
        """Read a finished `transformers.Trainer`: its state, arguments and training dataset.

        The dataset name defaults to `train_dataset.info.dataset_name`, where a `datasets.Dataset` carries it.
        """
        state, args, dataset = trainer.state, trainer.args, trainer.train_dataset
        info = getattr(dataset, "info", None)
        final_losses = [entry["train_loss"] for entry in state.log_history if "train_loss" in entry]
        per_device = state.train_batch_size or args.per_device_train_batch_size
        return cls(
            dataset_name=dataset_name or getattr(info, "dataset_name", None),
            num_examples=len(dataset) if hasattr(dataset, "__len__") else None,
            global_step=state.global_step,
            epochs=state.epoch,
            train_batch_size=per_device * args.gradient_accumulation_steps * args.world_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            final_loss=final_losses[-1] if final_losses else None,
            initialized_from=getattr(trainer.model.config, "name_or_path", None) or None,
        )


def template_text() -> str:
    """The card template, read as package data (it ships inside the installed package as `vlm_hf.model_cards`)."""
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def write_model_card(
    folder: str | Path,
    model=None,
    *,
    training: TrainingSummary | Mapping[str, Any] | None = None,
    eval_results: Iterable[EvalResult | Mapping[str, Any]] | None = None,
    base_model: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    model_name: str | None = None,
    model_id: str | None = None,
    license: str | None = "apache-2.0",
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> ModelCard:
    """
    Write `folder/README.md`, a model card for the vlm_hf model saved in `folder`, replacing any card there.

    Args:
        folder: the saved model folder (`save_pretrained` output).
        model: the model, to describe it without reading `folder/config.json`. Without it, the config is read from
            the folder and the parameter count taken from the architecture built on the meta device (no weights are
            read), which also works for sharded (FSDP / DeepSpeed) training.
        training: how the weights were trained (`TrainingSummary` or a dict of its fields); None for weights that
            were not trained here (a conversion, for example).
        eval_results: `huggingface_hub.EvalResult`s or dicts of their fields; written as `model-index` metadata (shown
            by the Hub) and as a table.
        base_model, datasets: Hub ids for the metadata. `base_model` defaults to the training's starting point when
            that is a Hub id (not a local folder).
        model_name: the name in the title and in `model-index`; defaults to the folder's name.
        model_id: what the loading snippets pass to `from_pretrained`; defaults to `folder` as given. `vlm-hf push`
            sets it to the repository id (`update_model_card(folder, model_id=repo_id)`).
        license, language, tags: metadata.
        description: a paragraph added under the title.

    Returns the `ModelCard` written.
    """
    folder = Path(folder)
    config, head = _describe_source(folder, model)
    num_parameters, num_trainable = _count_parameters(config, head, model)
    training = _as_training_summary(training)
    eval_results = _as_eval_results(eval_results)
    if base_model is None and training is not None:
        base_model = _as_hub_model_id(training.initialized_from)
    model_name = model_name or folder.resolve().name
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG_OF_HEAD.get(head),
        license=license,
        language=language,
        tags=_unique(["vlm_hf", "vision-language", *(tags or [])]),
        base_model=base_model,
        datasets=datasets,
        # `model-index` needs a name; without results ModelCardData would keep it as a stray metadata key.
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    context = {
        **_usage_context(folder, head, model_id),
        **_evaluation_context(eval_results),
        **_model_context(config, head, num_parameters, num_trainable),
        "model_name": model_name,
        "description": description,
        "training": _training_context(training),
    }
    card = ModelCard.from_template(card_data, template_str=template_text(), **context)
    folder.mkdir(parents=True, exist_ok=True)
    card.save(folder / CARD_NAME)
    return card


def update_model_card(
    folder: str | Path,
    *,
    eval_results: Iterable[EvalResult | Mapping[str, Any]] | None = None,
    model_id: str | None = None,
) -> ModelCard:
    """
    Update the card in `folder` written by `write_model_card`: add `eval_results` (a result with the same task,
    dataset and metric as one already there replaces it) and/or point the loading snippets at `model_id`. Only the
    card's usage and evaluation sections and its `model-index` metadata change; the rest is kept as it is.
    """
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ValueError(f"folder {str(folder)!r} has no {CARD_NAME}: write one with write_model_card first.")
    card = ModelCard.load(card_path)
    config, head = _describe_source(folder, None)
    new_results = _as_eval_results(eval_results)
    merged = _merge_eval_results(card.data.eval_results or [], new_results)
    if merged:
        card.data.eval_results = merged
        card.data.model_name = card.data.model_name or _title(card.text) or folder.resolve().name
    if model_id is None:
        model_id = _current_model_id(card.text) or str(folder)
    context = {**_usage_context(folder, head, model_id), **_evaluation_context(merged)}
    rendered = ModelCard.from_template(ModelCardData(), template_str=template_text(), **context).text
    text = card.text
    for section in UPDATABLE_SECTIONS:
        text = _replace_section(text, section, _section(rendered, section))
    updated = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
    updated.save(card_path)
    return updated


# -- what the model is ------------------------------------------------------------------------------------------------


def _describe_source(folder: Path, model) -> tuple[VlmHfConfig, str]:
    """The config and head class name, from the model when given, else from `folder/config.json`."""
    if model is not None:
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != VlmHfConfig.model_type:
            raise ValueError(
                f"model must be a vlm_hf model (config.model_type == 'vlm_hf'), got {type(model).__name__} with "
                f"model_type {getattr(config, 'model_type', None)!r}."
            )
        return config, type(model).__name__
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"folder {str(folder)!r} has no config.json: save the model there first (save_pretrained), or pass model."
        )
    config = VlmHfConfig.from_pretrained(folder)
    architectures = config.architectures or ["VlmHfModel"]
    return config, architectures[0]


def _head_class(head: str):
    import vlm_hf

    model_class = getattr(vlm_hf, head, None)
    if model_class is None:
        raise ValueError(f"config.architectures names {head!r}, which is not a vlm_hf model class.")
    return model_class


def _count_parameters(config: VlmHfConfig, head: str, model) -> tuple[int, int]:
    """Total and trainable parameters (tied weights counted once), as `PreTrainedModel.num_parameters` counts them."""
    if model is None:
        # Built on the meta device: shapes only, no memory and no weights read.
        with torch.device("meta"):
            model = _head_class(head)(config)
    return model.num_parameters(), model.num_parameters(only_trainable=True)


def _model_context(config: VlmHfConfig, head: str, num_parameters: int, num_trainable: int) -> dict[str, Any]:
    return {
        "head": head,
        "preset": getattr(config, "preset", None),
        "architecture": _architecture_text(config),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "attn_implementation": getattr(config, "_attn_implementation", None) or "sdpa",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "num_parameters": f"{num_parameters:,}",
        "num_trainable": f"{num_trainable:,}" if num_trainable != num_parameters else None,
        "vision_backbone": config.vision_backbone,
        "vision_pretrained": config.vision_pretrained,
        "freeze_vision": config.freeze_vision,
        "visual_grid": config.visual_grid,
        "num_visual_tokens": config.num_visual_tokens,
        "visual_feature_dim": config.visual_feature_dim,
        "visual_location_dim": config.visual_location_dim,
        "num_labels": config.num_labels,
        "retrieval_embed_dim": config.retrieval_embed_dim,
    }


def _architecture_text(config: VlmHfConfig) -> str:
    """How text and image meet (`config.fusion`; configs from before that option are single-stream)."""
    fusion = getattr(config, "fusion", None) or "single_stream"
    if fusion == "single_stream":
        return (
            "single-stream Transformer: BERT-style text embeddings and visual tokens concatenated into one encoder "
            "(early fusion)"
        )
    visual_stream = (
        f"a visual stream of {getattr(config, 'visual_num_hidden_layers', None)} layers, hidden size "
        f"{getattr(config, 'visual_hidden_size', None)}"
    )
    if fusion == "co_attention":
        return f"two-stream Transformer (ViLBERT-style): the text stream and {visual_stream}, joined by co-attention"
    return f"two streams (the text stream and {visual_stream}) whose pooled vectors are combined by `{fusion}` fusion"


# -- how to load it ---------------------------------------------------------------------------------------------------


def _usage_context(folder: Path, head: str, model_id: str | None) -> dict[str, Any]:
    auto_class = AUTO_CLASS_OF_HEAD.get(head)
    if auto_class is None:
        logger.warning(f"No Auto class is registered for {head}; the card's loading snippets use AutoModel.")
        auto_class = "AutoModel"
    return {
        "auto_class": auto_class,
        # A JSON string is a valid Python string literal, so paths with quotes or backslashes stay correct.
        "model_id_literal": json.dumps(str(folder) if model_id is None else model_id),
        "has_processor": any((folder / name).is_file() for name in PROCESSOR_FILES),
    }


def _current_model_id(text: str) -> str | None:
    """The id the card's loading snippet passes to `from_pretrained`, to keep it when only results are added."""
    match = re.search(r"\.from_pretrained\((\"(?:[^\"\\]|\\.)*\")", text)
    return json.loads(match.group(1)) if match else None


# -- training ---------------------------------------------------------------------------------------------------------


def _as_training_summary(training) -> TrainingSummary | None:
    if training is None or isinstance(training, TrainingSummary):
        return training
    if not isinstance(training, Mapping):
        raise ValueError(f"training must be a TrainingSummary, a dict of its fields or None, got {type(training)}.")
    known = {f.name for f in fields(TrainingSummary)}
    unknown = sorted(set(training) - known)
    if unknown:
        raise ValueError(f"training has unknown fields {unknown}; expected some of {sorted(known)}.")
    return TrainingSummary(**training)


def _training_context(training: TrainingSummary | None) -> dict[str, Any] | None:
    if training is None:
        return None
    values = dataclasses.asdict(training)
    if training.num_examples is not None:
        values["num_examples"] = f"{training.num_examples:,}"
    if training.epochs is not None:
        values["epochs"] = f"{training.epochs:.3g}"
    if training.final_loss is not None:
        values["final_loss"] = f"{training.final_loss:.4g}"
    if training.learning_rate is not None:
        values["learning_rate"] = f"{training.learning_rate:g}"
    return values


def _as_hub_model_id(name_or_path: str | None) -> str | None:
    """`name_or_path` when it names a Hub repository (`namespace/name`), None for local folders and new models."""
    if not name_or_path or Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")):
        return None
    return name_or_path if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) else None


# -- evaluation -------------------------------------------------------------------------------------------------------


def _as_eval_results(eval_results) -> list[EvalResult]:
    if eval_results is None:
        return []
    if isinstance(eval_results, (EvalResult, Mapping, str)):
        raise ValueError("eval_results must be a list of EvalResult (or of dicts of EvalResult's fields).")
    required = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
    known = {f.name for f in fields(EvalResult)}
    results = []
    for i, result in enumerate(eval_results):
        if isinstance(result, Mapping):
            missing = [name for name in required if result.get(name) is None]
            unknown = sorted(set(result) - known)
            if missing or unknown:
                raise ValueError(
                    f"eval_results[{i}] must give {list(required)} (and optionally other EvalResult fields); "
                    f"missing {missing}, unknown {unknown}."
                )
            result = EvalResult(**result)
        elif not isinstance(result, EvalResult):
            raise ValueError(f"eval_results[{i}] must be an EvalResult or a dict, got {type(result).__name__}.")
        value = result.metric_value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"eval_results[{i}].metric_value must be a number or a string, got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"eval_results[{i}].metric_value must be finite, got {value}.")
        results.append(result)
    return results


def _result_key(result: EvalResult) -> tuple:
    return (result.unique_identifier, result.metric_type, result.metric_config)


def _merge_eval_results(old: list[EvalResult], new: list[EvalResult]) -> list[EvalResult]:
    """`old` with each result that `new` measures again replaced in place, then the other new results."""
    replacements = {_result_key(r): r for r in new}
    merged = [replacements.pop(_result_key(r), r) for r in old]
    return merged + [r for r in new if _result_key(r) in replacements]


def _evaluation_context(eval_results: list[EvalResult]) -> dict[str, Any]:
    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")  # a pipe would end the table cell

    rows = [
        {
            "task": cell(r.task_name or r.task_type),
            "dataset": cell(r.dataset_name),
            "split": cell(r.dataset_split or ""),
            "metric": cell(r.metric_name or r.metric_type),
            "value": cell(r.metric_value),
        }
        for r in eval_results
    ]
    return {"eval_rows": rows}


# -- card sections ----------------------------------------------------------------------------------------------------


def _section_pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- vlm_hf:{name} -->\n.*?<!-- /vlm_hf:{name} -->", re.DOTALL)


def _section(text: str, name: str) -> str:
    return _section_pattern(name).search(text).group(0)


def _replace_section(text: str, name: str, section: str) -> str:
    """Swap a marked section; a card whose markers were edited away gets the section at its end."""
    pattern = _section_pattern(name)
    if pattern.search(text) is None:
        return f"{text.rstrip()}\n\n{section}\n"
    return pattern.sub(lambda _: section, text, count=1)


def _title(text: str) -> str | None:
    match = re.search(r"^# (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


__all__ = ["TrainingSummary", "write_model_card", "update_model_card", "template_text"]
