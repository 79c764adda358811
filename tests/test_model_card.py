"""Model cards: written by training, parsed back by huggingface_hub, loading snippets that run, and the template as
package data."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from huggingface_hub import EvalResult, ModelCard

import vlm_hf
from vlm_hf.model_card import update_model_card, write_model_card
from vlm_hf.training import finetune

REPO = Path(__file__).resolve().parent.parent

# What the Hub and transformers expect of each head: its pipeline task and the Auto class that loads it.
EXPECTED = {
    vlm_hf.VlmHfModel: ("feature-extraction", "AutoModel"),
    vlm_hf.VlmHfForPreTraining: ("feature-extraction", "AutoModelForPreTraining"),
    vlm_hf.VlmHfForQuestionAnswering: ("visual-question-answering", "AutoModelForVisualQuestionAnswering"),
    vlm_hf.VlmHfForImageTextRetrieval: ("zero-shot-image-classification", "AutoModelForZeroShotImageClassification"),
}

ACCURACY = EvalResult(
    task_type="visual-question-answering",
    dataset_type="vlm_hf/synthetic-scenes",
    dataset_name="Synthetic scenes (held out)",
    dataset_split="test",
    metric_type="accuracy",
    metric_value=0.875,
)


def card_of(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def parameter_count(card: ModelCard) -> int:
    return int(re.search(r"^\| Parameters \| ([\d,]+)", card.text, re.MULTILINE).group(1).replace(",", ""))


def code_blocks(card: ModelCard) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.text, re.DOTALL)


def run_snippet(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "<model card snippet>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-step VQA fine-tuning run through `vlm-hf finetune`'s code path: the card is written by training."""
    output_dir = tmp_path_factory.mktemp("trained") / "vqa_model"
    args = [
        "--output_dir", str(output_dir), "--hidden_size", "32", "--num_hidden_layers", "1", "--visual_grid", "2",
        "--image_size", "32", "--num_train_images", "8", "--per_device_train_batch_size", "4", "--max_steps", "2",
        "--vocab_size", "200", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--freeze_vision",
    ]  # fmt: skip
    return finetune("vqa", args), output_dir


def test_training_writes_a_card_that_describes_the_run(trained):
    trainer, folder = trained
    card = card_of(folder)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "visual-question-answering"
    assert parameter_count(card) == trainer.model.num_parameters()
    trainable = re.search(r"\(([\d,]+) trainable\)", card.text).group(1)  # the backbone is frozen
    assert int(trainable.replace(",", "")) == trainer.model.num_parameters(only_trainable=True)
    assert f"| Optimiser steps | {trainer.state.global_step} |" in card.text and trainer.state.global_step == 2
    assert re.search(r"^\| Data \| .*\(8 examples\) \|$", card.text, re.MULTILINE)
    assert "frozen" in card.text and "`resnet18`" in card.text
    assert card.data.eval_results is None and "model_name" not in card.data.to_dict()


def test_loading_snippet_of_a_trained_folder_loads_its_weights_and_processor(trained):
    trainer, folder = trained
    with_package, _ = code_blocks(card_of(folder))
    assert "AutoModelForVisualQuestionAnswering.from_pretrained" in with_package
    loaded = run_snippet(with_package)
    assert type(loaded["model"]) is vlm_hf.VlmHfForQuestionAnswering
    assert type(loaded["processor"]) is vlm_hf.VlmHfProcessor
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(loaded["model"].state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_eval_results_added_later_round_trip_and_keep_the_rest_of_the_card(trained, tmp_path):
    folder = shutil.copytree(trained[1], tmp_path / "vqa_model")  # the other tests read the original card
    before = (folder / "README.md").read_text()
    update_model_card(folder, eval_results=[ACCURACY])
    card = card_of(folder)
    assert card.data.eval_results == [ACCURACY]
    assert card.data.to_dict()["model-index"][0]["name"] == "vqa_model"  # the card's title
    assert "| visual-question-answering | Synthetic scenes (held out) | test | accuracy | 0.875 |" in card.text
    # Everything before the evaluation section (details, training record, loading snippets) is unchanged.
    head = before.split("<!-- vlm_hf:evaluation -->")[0].split("\n---\n", 1)[1]
    assert head in card.text

    # The same task, dataset and metric measured again replaces the old value; another metric is added.
    better = EvalResult(**{**ACCURACY.__dict__, "metric_value": 0.95})
    recall = {**ACCURACY.__dict__, "metric_type": "recall", "metric_value": 0.5}
    update_model_card(folder, eval_results=[better, recall], model_id="my-org/vqa-model")
    card = card_of(folder)
    assert card.data.eval_results == [better, EvalResult(**recall)]
    assert all('from_pretrained("my-org/vqa-model"' in code for code in code_blocks(card))
    assert "| Optimiser steps | 2 |" in card.text


@pytest.mark.parametrize("head", list(EXPECTED), ids=lambda head: head.__name__)
def test_card_of_each_head_names_its_task_and_auto_class(head, tmp_path):
    pipeline_tag, auto_class = EXPECTED[head]
    model = head(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    for card in (write_model_card(tmp_path, model), write_model_card(tmp_path)):  # from the model, from the folder
        assert card.data.pipeline_tag == pipeline_tag and card.data.library_name == "transformers"
        assert parameter_count(card) == model.num_parameters()
    with_package, with_remote_code = code_blocks(card_of(tmp_path))
    assert f"from transformers import {auto_class}\n" in with_package
    assert "trust_remote_code=True" in with_remote_code and auto_class in with_remote_code
    assert "AutoProcessor" not in with_package  # no processor was saved in this folder
    loaded = run_snippet(with_package)["model"]
    assert type(loaded) is head
    first = next(iter(model.state_dict()))
    torch.testing.assert_close(loaded.state_dict()[first], model.state_dict()[first])


def test_eval_results_given_at_writing_round_trip(tmp_path):
    model = vlm_hf.VlmHfForImageTextRetrieval(tiny_config())
    model.save_pretrained(tmp_path)
    results = [
        EvalResult(
            task_type="zero-shot-image-classification",
            dataset_type="nlphuji/flickr30k",
            dataset_name="Flickr30k (Karpathy test)",
            dataset_split="test",
            metric_type="recall",
            metric_name="Text-to-image R@1",
            metric_config="text_to_image@1",
            metric_value=0.25,
        ),
        {
            "task_type": "zero-shot-image-classification",
            "dataset_type": "nlphuji/flickr30k",
            "dataset_name": "Flickr30k (Karpathy test)",
            "dataset_split": "test",
            "metric_type": "recall",
            "metric_name": "Text-to-image R@5",
            "metric_config": "text_to_image@5",
            "metric_value": 0.5,
        },
    ]
    write_model_card(tmp_path, model, eval_results=results, model_name="tiny-retrieval", datasets=["nlphuji/flickr30k"])
    card = card_of(tmp_path)
    assert card.data.eval_results == [results[0], EvalResult(**results[1])]
    assert card.data.model_name == "tiny-retrieval" and card.data.datasets == ["nlphuji/flickr30k"]
    assert "| Text-to-image R@5 | 0.5 |" in card.text


def test_remote_code_snippet_loads_without_the_package(trained, tmp_path):
    _, folder = trained
    _, with_remote_code = code_blocks(card_of(folder))
    script = (
        "import sys\n"
        "sys.modules['vlm_hf'] = None  # the package is not importable: only the folder's code files are\n"
        f"exec({with_remote_code!r})\n"
        "print(type(model).__name__, type(model).__module__.split('.')[0], type(processor).__name__)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["VlmHfForQuestionAnswering", "transformers_modules", "VlmHfProcessor"]


def test_bad_arguments_give_clear_errors(trained, tmp_path):
    _, folder = trained
    with pytest.raises(ValueError, match=r"eval_results\[0\].*missing \['metric_value'\]"):
        write_model_card(folder, eval_results=[{k: v for k, v in ACCURACY.__dict__.items() if k != "metric_value"}])
    with pytest.raises(ValueError, match=r"eval_results must be a list"):
        write_model_card(folder, eval_results=ACCURACY)
    with pytest.raises(ValueError, match=r"eval_results\[0\].metric_value must be finite"):
        update_model_card(folder, eval_results=[EvalResult(**{**ACCURACY.__dict__, "metric_value": float("nan")})])
    with pytest.raises(ValueError, match=r"training has unknown fields \['steps'\]"):
        write_model_card(folder, training={"steps": 3})
    with pytest.raises(ValueError, match=r"has no config.json"):
        write_model_card(tmp_path)
    with pytest.raises(ValueError, match=r"has no README.md"):
        update_model_card(tmp_path, eval_results=[ACCURACY])
    with pytest.raises(ValueError, match=r"model must be a vlm_hf model"):
        write_model_card(tmp_path, torch.nn.Linear(2, 2))
    assert not (tmp_path / "README.md").exists()


def test_template_ships_in_the_built_package(tmp_path):
    """Built into a wheel and imported from there (not from the repository), the template is found as package data."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("vlm_hf", "conversion", "model_cards"):
        if (REPO / package).is_dir():
            shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("vlm_hf-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    assert (installed / "vlm_hf" / "model_cards" / "vlm_hf_model_card.md").is_file()

    script = (
        "import json, vlm_hf, vlm_hf.model_card as card\n"
        "print(json.dumps([vlm_hf.__file__, str(card.resources.files('vlm_hf.model_cards')), card.template_text()]))"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    # Run away from the repository, whose vlm_hf/ would otherwise be found first (the working directory leads sys.path).
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, template_folder, text = json.loads(result.stdout)
    assert Path(package_file).is_relative_to(installed) and Path(template_folder).is_relative_to(installed)
    assert text == resources.files("vlm_hf.model_cards").joinpath("vlm_hf_model_card.md").read_text(encoding="utf-8")
