"""Sharing saved vlm_hf folders on the Hugging Face Hub: `vlm-hf push <folder> <repo_id>`.

`push_to_hub_folder` checks that the folder is a complete, safe vlm_hf model (config with `auto_map`, safetensors
weights and no pickle files, the code files `trust_remote_code` needs), writes or refreshes its model card so that the
loading snippets name the repository, and uploads everything through huggingface_hub's `HfApi` in one commit.

```python
>>> from vlm_hf.hub import push_to_hub_folder
>>> commit = push_to_hub_folder("vqa_model", "my-org/vlm-hf-vqa", private=True)
>>> commit.commit_url
```
"""

import fnmatch
import json
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_relative_imports
from transformers.utils import logging

from .configuration_vlm_hf import VlmHfConfig
from .model_card import CARD_NAME, PROCESSOR_FILES, update_model_card, write_model_card

logger = logging.get_logger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Formats read with pickle: loading them can run arbitrary code, so they are never uploaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What the Trainer and tools leave beside a model (its arguments, checkpoints, logs, caches): not uploaded.
NOT_UPLOADED = ("training_args.bin", "checkpoint-*", "runs", ".git", ".cache", "__pycache__", ".ipynb_checkpoints")
# Files whose `auto_map` names code files that must travel with the weights.
AUTO_MAP_FILES = ("config.json", *PROCESSOR_FILES, "tokenizer_config.json")


def push_to_hub_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> CommitInfo:
    """
    Upload the vlm_hf model saved in `folder` to the Hub repository `repo_id`, in one commit.

    The folder is checked first (`files_to_upload`); then its model card (`README.md`) is written, or refreshed, with
    loading snippets for `repo_id`; the repository is created if needed, and the branch `revision` too.

    Args:
        folder: a folder written by `save_pretrained` (training, conversion and the demo write complete ones).
        repo_id: `namespace/name` of the model repository.
        private: create the repository private. A repository that already exists keeps its visibility, so pushing
            with `private=True` to an existing public repository is refused rather than publishing the model.
        revision: the branch to commit to (created from the default branch when missing); defaults to `main`.
        commit_message: defaults to "Upload <model class> with vlm-hf".
        token: a Hub token with write access; defaults to `HF_TOKEN` or the saved login.

    Returns huggingface_hub's `CommitInfo` (`commit_url`, `oid`, `repo_url`).
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    files = files_to_upload(folder)
    refresh_model_card(folder, repo_id)
    if CARD_NAME not in files:
        files.append(CARD_NAME)

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.model_info(repo_id).private:
        raise ValueError(
            f"repo_id {repo_id!r} already exists and is public; private=True only applies to a new repository. "
            "Make it private on the Hub first, or push without --private."
        )
    if revision not in (None, "main") and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in files]
    # `create_commit`, not `upload_folder`: with hf_xet installed, `upload_folder` may split a folder into several
    # commits, and the model's files must change together.
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {_head_class(folder)} with vlm-hf",
        revision=revision,
    )


def files_to_upload(folder: str | Path) -> list[str]:
    """
    The files of the saved model in `folder` to upload (paths relative to it), after checking that the folder is a
    complete vlm_hf model that loads safely: a vlm_hf `config.json` with `auto_map`, safetensors weights (every shard
    of a sharded checkpoint), the code files that `auto_map` and their relative imports name, and no pickle files.
    Raises `ValueError` naming the problem otherwise. Trainer leftovers (`NOT_UPLOADED`) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a folder.")
    config = _read_json(folder, "config.json")
    if config is None:
        raise ValueError(f"folder {str(folder)!r} has no config.json: save the model there with save_pretrained first.")
    if config.get("model_type") != VlmHfConfig.model_type:
        raise ValueError(
            f"folder {str(folder)!r} holds a {config.get('model_type')!r} model, not a {VlmHfConfig.model_type!r} one."
        )
    if not config.get("auto_map"):
        raise ValueError(
            f"folder {str(folder)!r}: config.json has no auto_map, so the model would not load without vlm_hf "
            "installed. Save it with a vlm_hf model's save_pretrained (with `import vlm_hf` done)."
        )
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not _skipped(path.relative_to(folder))
    )
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"folder {str(folder)!r} holds pickle files {pickles}: only safetensors weights are uploaded, because "
            "loading pickle files can run arbitrary code. Save the model with save_pretrained (which writes "
            f"{SAFE_WEIGHTS_NAME}) and remove them."
        )
    _check_weights(folder, files)
    _check_code_files(folder, files)
    if not any(name in files for name in PROCESSOR_FILES):
        logger.warning(
            f"{folder} has no processor files ({', '.join(PROCESSOR_FILES)}): users will need their own "
            "processor. Save one there with VlmHfProcessor.save_pretrained to include it."
        )
    return files


def refresh_model_card(folder: str | Path, repo_id: str) -> None:
    """Point the card's loading snippets at `repo_id`, keeping the rest of it; write a new card if there is none."""
    if (Path(folder) / CARD_NAME).is_file():
        update_model_card(folder, model_id=repo_id)
    else:
        write_model_card(folder, model_id=repo_id)


def _skipped(relative: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in NOT_UPLOADED)


def _read_json(folder: Path, name: str) -> dict | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"folder {str(folder)!r}: {name} is not valid JSON ({error}).") from error


def _check_weights(folder: Path, files: list[str]) -> None:
    if SAFE_WEIGHTS_NAME in files:
        return
    index = _read_json(folder, SAFE_WEIGHTS_INDEX_NAME)
    if index is None:
        raise ValueError(
            f"folder {str(folder)!r} has no safetensors weights ({SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}): "
            "save the model there with save_pretrained."
        )
    missing = sorted(set(index.get("weight_map", {}).values()) - set(files))
    if missing:
        raise ValueError(
            f"folder {str(folder)!r} lacks the weight shards {missing} that {SAFE_WEIGHTS_INDEX_NAME} lists."
        )


def _check_code_files(folder: Path, files: list[str]) -> None:
    """Every module an `auto_map` names, and every module those import relatively, must be in the folder."""
    modules = {module for name in AUTO_MAP_FILES for module in _auto_map_modules(_read_json(folder, name))}
    checked = set()
    while modules - checked:
        module = min(modules - checked)
        checked.add(module)
        if f"{module}.py" not in files:
            raise ValueError(
                f"folder {str(folder)!r} lacks {module}.py, which auto_map (or its imports) needs to load the model "
                "with trust_remote_code. Save the model and processor there again with save_pretrained."
            )
        modules.update(get_relative_imports(folder / f"{module}.py"))


def _auto_map_modules(value) -> set[str]:
    """The module names in every `auto_map` of a JSON file (`"module.Class"` entries, also nested and in lists)."""
    modules = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "auto_map" and isinstance(item, dict):
                for reference in item.values():
                    references = reference if isinstance(reference, list) else [reference]
                    # "repo--module.Class" names code in another repository, which is not uploaded from here.
                    modules.update(r.rsplit(".", 1)[0] for r in references if isinstance(r, str) and "--" not in r)
            else:
                modules |= _auto_map_modules(item)
    return modules


def _head_class(folder: Path) -> str:
    architectures = (_read_json(folder, "config.json") or {}).get("architectures") or ["VlmHfModel"]
    return architectures[0]


__all__ = ["push_to_hub_folder", "files_to_upload", "refresh_model_card"]
