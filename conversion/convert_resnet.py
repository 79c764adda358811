"""A torchvision ResNet state dict -> the vision tower of a vlm_hf model.

The vision backbone keeps torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`, ...), so the mapping is a
prefix; the ImageNet classifier (`fc.*`) is dropped, every trunk tensor (batch-norm statistics included) must be present
with its shape. Everything else in the model is kept as it is.

```bash
vlm-hf convert resnet resnet101.pth --model uniter-base-vlm-hf --output-dir uniter-base-from-pixels
vlm-hf convert resnet resnet18.pth --preset uniter-tiny --output-dir tiny   # a new model from a preset
```
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from vlm_hf.conversion.common import (
    ConversionReport,
    converter_parser,
    load_checkpoint,
    load_converted,
    map_state_dict,
)
from vlm_hf.conversion.common import save_converted_folder as save_folder

import vlm_hf
from vlm_hf.configuration_vlm_hf import VlmHfConfig

DROPPED = [(r"fc\.(weight|bias)", "ImageNet classifier, not part of the trunk")]


def convert_resnet_state_dict(
    state_dict: Mapping[str, torch.Tensor], model
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a torchvision ResNet state dict onto `model.vision_backbone` (the rest of the model is not touched)."""
    backbone = getattr(model, model.base_model_prefix, model).vision_backbone
    if backbone is None:
        raise ValueError("The model has no vision backbone (vision_backbone=None); build it with one first.")
    name = model.config.vision_backbone
    if not name.startswith(("resnet", "resnext", "wide_resnet")):
        raise ValueError(f"The model's backbone is {name!r}, not a torchvision ResNet.")
    state_dict = dict(state_dict.get("state_dict", state_dict))
    return map_state_dict(
        {key.removeprefix("module."): value for key, value in state_dict.items()},
        model,
        [(r"((?:conv1|bn1|layer[1-4])\..+)", r"vlm_hf.vision_backbone.\1")],
        dropped=DROPPED,
        expected_missing=[(r"(?!(?:vlm_hf\.)?vision_backbone\.).*", "not part of the vision tower (kept as it was)")],
        source_name=f"torchvision {name} state dict",
    )


def load_resnet_vision_tower(model, state_dict: Mapping[str, torch.Tensor] | str | Path, verbose: bool = True):
    """Fill `model`'s vision backbone from a torchvision ResNet state dict (or its file); returns the report."""
    if isinstance(state_dict, (str, Path)):
        state_dict = load_checkpoint(state_dict)
    converted, report = convert_resnet_state_dict(state_dict, model)
    load_converted(model, converted)
    if verbose:
        print(report.summary())
    return report


def convert_resnet(
    weights: str | Path | Mapping[str, torch.Tensor],
    output_dir: str | Path | None = None,
    *,
    model: str | Path | None = None,
    preset: str | None = None,
    head: str = "VlmHfModel",
    verbose: bool = True,
):
    """
    Put a torchvision ResNet into a vlm_hf model: an existing folder (`model`), or a new model from `preset` (its
    `head` class, `VlmHfModel` by default). The weights must fit the config's `vision_backbone`. Returns
    `(model, report)`; with `output_dir`, writes the complete folder (with the source folder's processor).
    """
    if (model is None) == (preset is None):
        raise ValueError("Pass exactly one of `model` (a vlm_hf folder) or `preset`.")
    if model is not None:
        config = VlmHfConfig.from_pretrained(model)
        head = (config.architectures or [head])[0]
        vlm_model = getattr(vlm_hf, head).from_pretrained(model)
    else:
        vlm_model = getattr(vlm_hf, head)(VlmHfConfig.from_preset(preset))
    report = load_resnet_vision_tower(vlm_model, weights, verbose=verbose)
    vlm_model.eval()
    if output_dir is not None:
        processor = _folder_processor(model)
        save_folder(vlm_model, output_dir, report, source="a torchvision ResNet (vision tower)")
        if processor is not None:
            processor.save_pretrained(output_dir)
    return vlm_model, report


def _folder_processor(folder):
    if folder is None or not Path(folder, "processor_config.json").is_file():
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    weights_help = "torchvision ResNet state dict (.pth / .safetensors)"
    parser = converter_parser("resnet", convert_resnet, "weights", weights_help)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="an existing vlm_hf folder whose backbone is replaced")
    source.add_argument("--preset", help="build a new model from this preset")
    parser.add_argument("--head", default="VlmHfModel", help="vlm_hf class for --preset")
    args = parser.parse_args(argv)
    convert_resnet(args.weights, args.output_dir, model=args.model, preset=args.preset, head=args.head)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
