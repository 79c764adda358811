"""Converters from the original checkpoints into vlm_hf folders (installed as `vlm_hf.conversion`).

`vlm-hf convert <source> ...` runs `CONVERTERS[source]`'s `main`; each module also has an importable `convert_*`
function (see conversion/README.md for the key maps).
"""

import importlib

# source name -> module of this package with `main(argv)`.
CONVERTERS = {
    "visualbert": "convert_visualbert",
    "uniter": "convert_uniter",
    "vlbert": "convert_vlbert",
    "vilbert": "convert_vilbert",
    "bert": "convert_bert",
    "resnet": "convert_resnet",
}


def run_converter(source: str, argv: list[str]) -> int:
    """Run the command line of the converter for `source` with `argv`."""
    if source not in CONVERTERS:
        raise ValueError(f"Unknown conversion source {source!r}; expected one of {sorted(CONVERTERS)}.")
    return importlib.import_module(f"{__name__}.{CONVERTERS[source]}").main(argv)
