"""Strict state-dict mapping shared by every converter, and writing a complete vlm_hf folder.

A converter describes its source format with ordered rename rules (regular expressions; the first that matches wins),
the source keys it deliberately drops (with the reason), the tied pairs the source stores twice, and the target keys it
knows it cannot fill. `map_state_dict` then guarantees that:

- every source key is either mapped onto a target key or listed as dropped, otherwise it is an error naming the keys;
- old `gamma` / `beta` LayerNorm names are read as `weight` / `bias`;
- a key whose shape differs from the target's is an error naming both keys and shapes;
- a tied pair in the source holds equal tensors (otherwise the checkpoint is not what the converter assumes), and
  target weights that the model ties (one `nn.Parameter` under several names) stay tied;
- float16 / bfloat16 checkpoints are upcast to the model's dtype;
- every target key that is not filled is reported as missing (left at its initialisation), and an error unless the
  converter expected it (e.g. a head the source model does not have).

The result is a `ConversionReport` whose `summary()` lists what was mapped, dropped and missing.
"""

import argparse
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Older BERT checkpoints (TensorFlow ports, early pytorch-pretrained-bert) name LayerNorm parameters gamma / beta.
_LEGACY_LAYER_NORM_NAMES = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))

# A rename rule: (source pattern, target replacement) for `re.fullmatch` / `re.sub`-style group references (\1 ...).
Rule = tuple[str, str]
# A transform applied to a source tensor before the shape check (e.g. swapping the rows of a classifier).
Transform = Callable[[torch.Tensor], torch.Tensor]

# `BertConfig` attributes that VisualBERT's config and any BERT text tower share with `VlmHfConfig`, under one name.
BERT_CONFIG_ATTRIBUTES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
# Hyperparameters an original JSON / YAML config states and its tensors do not show.
_ORIGINAL_HYPERPARAMETERS = (
    "num_attention_heads",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
)


@dataclass
class ConversionReport:
    """What a conversion did with every key: `mapped` source -> target, `dropped` / `missing` key -> reason."""

    source_name: str = "checkpoint"
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    upcast: list[str] = field(default_factory=list)

    def summary(self, max_listed: int = 4) -> str:
        """Counts, then the dropped and missing keys grouped by reason (a few examples of each)."""
        lines = [
            f"Converted {self.source_name}: {len(self.mapped)} keys mapped, {len(self.dropped)} dropped, "
            f"{len(self.missing)} target keys missing (left at their initialisation)."
        ]
        if self.upcast:
            lines.append(f"  {len(self.upcast)} tensors upcast from half precision.")
        for title, entries in (("dropped", self.dropped), ("missing", self.missing)):
            by_reason: dict[str, list[str]] = {}
            for key, reason in sorted(entries.items()):
                by_reason.setdefault(reason, []).append(key)
            for reason, keys in by_reason.items():
                examples = ", ".join(keys[:max_listed]) + (", ..." if len(keys) > max_listed else "")
                lines.append(f"  {title} ({reason}): {len(keys)} key{'s' * (len(keys) > 1)}: {examples}")
        return "\n".join(lines)


def normalize_legacy_names(key: str) -> str:
    """`...LayerNorm.gamma` -> `...LayerNorm.weight`, `...beta` -> `...bias`."""
    for pattern, replacement in _LEGACY_LAYER_NORM_NAMES:
        key = pattern.sub(replacement, key)
    return key


def _first_match(key: str, patterns: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    for pattern, value in patterns:
        match = re.fullmatch(pattern, key)
        if match:
            return match, value
    return None


def _resolve_target(key: str, target: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """Rules name head-model keys (`vlm_hf.encoder...`); the bare base model has the same keys without the prefix."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if key not in target and key.startswith(prefix) and key[len(prefix) :] in target:
        return key[len(prefix) :]
    return key


def _target_groups(model: nn.Module) -> dict[str, list[str]]:
    """Target key -> every name of the same tensor (tied parameters appear under several names)."""
    by_tensor: dict[int, list[str]] = {}
    names = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(name)
        names[name] = id(tensor)
    return {name: by_tensor[names[name]] for name in names}


def map_state_dict(
    source: Mapping[str, torch.Tensor],
    model: nn.Module,
    rules: Iterable[Rule],
    *,
    dropped: Iterable[tuple[str, str]] = (),
    tied_in_source: Iterable[tuple[str, str]] = (),
    transforms: Mapping[str, Transform] | None = None,
    expected_missing: Iterable[tuple[str, str]] = (),
    source_name: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """
    Map `source` onto `model`'s state dict.

    Args:
        source: the original state dict (any float dtype).
        model: the vlm_hf model that will receive the weights (its state dict gives names, shapes and dtypes).
        rules: ordered `(source regex, target template)`; `re.fullmatch` on the source key (after gamma/beta
            normalisation), the first matching rule renames it with `match.expand(template)`.
        dropped: `(source regex, reason)` for keys deliberately not converted. Checked before the rules.
        tied_in_source: `(kept key, duplicate key)` pairs the source stores twice for one tied parameter; the
            duplicate must equal the kept tensor and is then accounted for as dropped.
        transforms: target key -> function applied to its source tensor (transpose, row swap, padding).
        expected_missing: `(target regex, reason)` for target keys the source cannot fill.
        source_name: the name shown in the summary.

    Returns the converted state dict (target names, the model's dtypes; tied target names all present) and the report.
    """
    transforms = dict(transforms or {})
    dropped, expected_missing = list(dropped), list(expected_missing)
    report = ConversionReport(source_name=source_name)
    target = model.state_dict()
    groups = _target_groups(model)
    source = {normalize_legacy_names(key): value for key, value in source.items()}

    for kept, duplicate in tied_in_source:
        if kept in source and duplicate in source:
            if source[kept].shape != source[duplicate].shape or not torch.equal(source[kept], source[duplicate]):
                raise ValueError(
                    f"{duplicate!r} should be tied to {kept!r} (one parameter stored twice) but the tensors differ; "
                    "this checkpoint is not the layout the converter expects."
                )
            report.dropped[duplicate] = f"tied to {kept}"

    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in source.items():
        if key in report.dropped:
            continue
        drop = _first_match(key, dropped)
        if drop is not None:
            report.dropped[key] = drop[1]
            continue
        rule = _first_match(key, rules)
        if rule is None:
            unknown.append(key)
            continue
        target_key = _resolve_target(rule[0].expand(rule[1]), target, model)
        if target_key not in target:
            raise ValueError(
                f"Source key {key!r} maps to {target_key!r}, which the {type(model).__name__} does not have "
                "(the config does not match the checkpoint)."
            )
        if target_key in converted:
            raise ValueError(
                f"Source keys {[k for k, v in report.mapped.items() if target_key in groups[v]]} and {key!r} both map "
                f"to {target_key!r} (or a weight tied to it)."
            )
        head_key = f"{getattr(model, 'base_model_prefix', '')}.{target_key}"  # transforms may name the head form
        value = transforms.get(target_key, transforms.get(head_key, lambda t: t))(tensor)
        if tuple(value.shape) != tuple(target[target_key].shape):
            raise ValueError(
                f"Shape mismatch: source key {key!r} has shape {tuple(value.shape)}, target key {target_key!r} "
                f"expects {tuple(target[target_key].shape)}."
            )
        if value.is_floating_point() and value.dtype != target[target_key].dtype:
            if value.dtype in (torch.float16, torch.bfloat16):
                report.upcast.append(key)
            value = value.to(target[target_key].dtype)
        for name in groups[target_key]:
            if name in converted and not torch.equal(converted[name], value):
                raise ValueError(f"{target_key!r} and {name!r} are tied in the model but receive different tensors.")
            converted[name] = value
        report.mapped[key] = target_key
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) of {source_name} are neither converted nor deliberately dropped: {sorted(unknown)}"
        )

    unexpected_missing = []
    for key in target:
        if key in converted:
            continue
        reason = _first_match(key, expected_missing)
        if reason is None:
            unexpected_missing.append(key)
        else:
            report.missing[key] = reason[1]
    if unexpected_missing:
        raise ValueError(
            f"{len(unexpected_missing)} weight(s) of the {type(model).__name__} get no value from {source_name}: "
            f"{sorted(unexpected_missing)}"
        )
    return converted, report


def count_layers(state_dict: Mapping[str, torch.Tensor], marker: str = "encoder.layer.") -> int:
    """Number of numbered layers `...{marker}N...` in a state dict."""
    indices = [int(key.split(marker, 1)[1].split(".", 1)[0]) for key in state_dict if marker in key]
    if not indices:
        raise ValueError(f"The checkpoint has no {marker}N keys.")
    return 1 + max(indices)


def bert_config_values(config) -> dict:
    """The `BERT_CONFIG_ATTRIBUTES` of a transformers BERT-family config, as `VlmHfConfig` arguments."""
    return {name: getattr(config, name) for name in BERT_CONFIG_ATTRIBUTES}


def original_hyperparameters(original: Mapping, hidden_size: int) -> dict:
    """
    The attention heads, activation, dropouts and initializer range that an original config states. Without
    `num_attention_heads` (the one size the tensors do not show), 64-wide heads are assumed, with a warning.
    """
    values = {key: original[key] for key in _ORIGINAL_HYPERPARAMETERS if key in original}
    if "num_attention_heads" not in values:
        values["num_attention_heads"] = max(1, hidden_size // 64)
        warnings.warn(
            f"No num_attention_heads in the original config: assuming 64-wide heads ({values['num_attention_heads']}); "
            "pass the original config if the model used another width.",
            stacklevel=3,  # the caller of the converter's config function
        )
    return values


def swap_itm_rows(tensor: torch.Tensor) -> torch.Tensor:
    """An original (match, mismatch) head's rows -> vlm_hf's image-text matching rows (mismatch, match)."""
    return tensor.flip(0)


def match_logit_to_itm(tensor: torch.Tensor) -> torch.Tensor:
    """
    A single match-logit head (1 x H weight or 1 bias) -> ITM rows [0, w]: logit 1 is the original score, logit 0 is
    0, so the ITM softmax gives sigmoid(original score) for "match", as the original scores.
    """
    return torch.cat([torch.zeros_like(tensor), tensor], dim=0)


def load_converted(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy a `map_state_dict` result into `model`; the keys it lacks are the report's expected-missing ones."""
    result = model.load_state_dict(dict(state_dict), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"Unexpected keys after conversion: {result.unexpected_keys}")
    return model


def finish_conversion(
    model: nn.Module,
    converted: Mapping[str, torch.Tensor],
    report: ConversionReport,
    output_dir: str | Path | None,
    *,
    source: str,
    tokenizer=None,
    verbose: bool = True,
) -> tuple[nn.Module, ConversionReport]:
    """
    The end of every `convert_*` function: load the converted weights into `model` (in eval mode), print the report
    when `verbose`, and with `output_dir` write the complete folder (`save_converted_folder`). Returns
    `(model, report)`.
    """
    load_converted(model, converted)
    model.eval()
    if verbose:
        print(report.summary())
    if output_dir is not None:
        save_converted_folder(model, output_dir, report, tokenizer=tokenizer, source=source)
    return model, report


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file or a `torch.save` file (tensors only, loaded without unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No checkpoint file at {str(path)!r}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # e.g. a training checkpoint that pickles custom objects next to its weights; never unpickle code implicitly.
        raise ValueError(
            f"{str(path)!r} holds more than tensors and cannot be read safely; load it yourself in a trusted "
            "environment and pass its state dict to the converter function."
        ) from error


def save_converted_folder(
    model,
    output_dir: str | Path,
    report: ConversionReport | None = None,
    *,
    tokenizer=None,
    image_processor=None,
    source: str | None = None,
    base_model: str | None = None,
) -> Path:
    """
    Write a complete vlm_hf folder: `model.safetensors` + `config.json` (+ code files for `trust_remote_code`), the
    processor when a tokenizer is known (`tokenizer`: a tokenizer object or a local path/name `AutoTokenizer` can
    load), and a model card describing the conversion.
    """
    from transformers import AutoTokenizer

    from vlm_hf.image_processing_vlm_hf import VlmHfImageProcessor
    from vlm_hf.processing_vlm_hf import VlmHfProcessor

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        processor = VlmHfProcessor(image_processor or VlmHfImageProcessor(), tokenizer)
        processor.save_pretrained(output_dir)
    elif image_processor is not None:
        image_processor.save_pretrained(output_dir)
    write_conversion_card(model, output_dir, report, source=source, base_model=base_model)
    return output_dir


def converter_parser(
    source: str, convert: Callable, input_name: str, input_help: str, tokenizer_help: str | None = None
) -> argparse.ArgumentParser:
    """
    The command line every converter shares: `vlm-hf convert <source> <input> --output-dir DIR [--tokenizer T]`,
    described by the `convert` function's docstring. Each converter adds its own options.
    """
    parser = argparse.ArgumentParser(prog=f"vlm-hf convert {source}", description=convert.__doc__)
    parser.add_argument(input_name, help=input_help)
    parser.add_argument("--output-dir", required=True)
    if tokenizer_help is not None:
        parser.add_argument("--tokenizer", help=tokenizer_help)
    return parser


def checkpoint_converter_main(
    argv: list[str] | None,
    source: str,
    convert: Callable,
    *,
    checkpoint_help: str,
    config_help: str,
    tokenizer_help: str,
) -> int:
    """
    The whole command line of a converter from an original checkpoint and its optional original config:
    `vlm-hf convert <source> CHECKPOINT [--config FILE] --output-dir DIR [--tokenizer T]` runs
    `convert(checkpoint, config, output_dir, tokenizer=...)`.
    """
    parser = converter_parser(source, convert, "checkpoint", checkpoint_help, tokenizer_help=tokenizer_help)
    parser.add_argument("--config", help=config_help)
    args = parser.parse_args(argv)
    convert(args.checkpoint, args.config, args.output_dir, tokenizer=args.tokenizer)
    return 0


def write_conversion_card(model, output_dir: Path, report: ConversionReport | None, *, source, base_model) -> None:
    """The model card of a converted folder, through `vlm_hf.model_card` when it is installed."""
    try:
        from vlm_hf.model_card import write_model_card
    except ImportError:  # the card module ships with the Hub features; weights and config are complete without it
        return
    description = f"Converted from {source or 'an original checkpoint'} with `vlm_hf.conversion`."
    if getattr(model.config, "preset", None):
        description += f" Preset: `{model.config.preset}`."
    if report is not None:
        description += (
            f" {len(report.mapped)} source tensors mapped, {len(report.dropped)} dropped"
            + (f" ({', '.join(sorted(set(report.dropped.values())))})" if report.dropped else "")
            + f", {len(report.missing)} target tensors newly initialised"
            + (f" ({', '.join(sorted(set(report.missing.values())))})" if report.missing else "")
            + "."
        )
    write_model_card(output_dir, model, base_model=base_model, description=description, tags=["conversion"])


__all__ = [
    "ConversionReport",
    "map_state_dict",
    "normalize_legacy_names",
    "count_layers",
    "load_converted",
    "load_checkpoint",
    "finish_conversion",
    "save_converted_folder",
    "converter_parser",
    "checkpoint_converter_main",
    "bert_config_values",
    "original_hyperparameters",
    "swap_itm_rows",
    "match_logit_to_itm",
]
