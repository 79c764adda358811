"""Safe loading: safetensors only unless pickle weights are explicitly allowed (and then without code), configs that
contradict the weights or belong to another model type are errors, missing and unexpected keys are reported by name."""

import json
import shutil

import pytest
import torch
from conftest import pixel_inputs, text_inputs, tiny_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForVisualQuestionAnswering, BertConfig, BertModel
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from vlm_hf import VlmHfForQuestionAnswering, VlmHfModel


def inputs():
    return dict(pixel_values=pixel_inputs(), **text_inputs())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved VQA model (ResNet stem + layer1: small files), its folder and its logits."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    model = VlmHfForQuestionAnswering(tiny_config(vision_feature_layer="layer1")).eval()
    model.save_pretrained(folder)
    with torch.no_grad():
        return folder, model(**inputs()).logits


def pickle_folder(source, target):
    """`source` with its weights as a pickle checkpoint (`pytorch_model.bin`) instead of safetensors."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(source / "model.safetensors"), target / "pytorch_model.bin")
    return target


def logits_of(model):
    with torch.no_grad():
        return model.eval()(**inputs()).logits


def test_pickle_weights_are_refused_unless_allowed(saved, tmp_path):
    folder, expected = saved
    pickled = pickle_folder(folder, tmp_path / "pickled")
    for load in (VlmHfForQuestionAnswering.from_pretrained, AutoModelForVisualQuestionAnswering.from_pretrained):
        with pytest.raises(OSError, match=r"only the pickle checkpoint pytorch_model\.bin.*allow_pickle_weights=True"):
            load(pickled)
        torch.testing.assert_close(logits_of(load(pickled, allow_pickle_weights=True)), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="use_safetensors=False asks for pickle weights"):
        VlmHfForQuestionAnswering.from_pretrained(pickled, use_safetensors=False)
    with pytest.raises(OSError, match="only the pickle checkpoint pytorch_model.bin"):  # a file path, not a folder
        VlmHfForQuestionAnswering.from_pretrained(pickled / "pytorch_model.bin", config=tiny_config())

    # A sharded pickle checkpoint: refused too, loaded with the opt-in.
    sharded = tmp_path / "sharded"
    shutil.copytree(pickled, sharded, ignore=shutil.ignore_patterns("*.bin"))
    state_dict = torch.load(pickled / "pytorch_model.bin", weights_only=True)
    keys = sorted(state_dict)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, shard_keys in shards.items():
        torch.save({k: state_dict[k] for k in shard_keys}, sharded / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(OSError, match=r"pytorch_model\.bin\.index\.json"):
        VlmHfForQuestionAnswering.from_pretrained(sharded)
    model = VlmHfForQuestionAnswering.from_pretrained(sharded, allow_pickle_weights=True)
    torch.testing.assert_close(logits_of(model), expected, atol=0, rtol=0)


class RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_allowed_pickle_weights_are_still_read_without_running_code(saved, tmp_path):
    folder, _ = saved
    pickled = pickle_folder(folder, tmp_path / "pickled")
    marker = tmp_path / "code_ran"
    torch.save({**load_file(folder / "model.safetensors"), "payload": RunsCode(marker)}, pickled / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only"):  # torch.load(weights_only=True) rejects the payload
        VlmHfForQuestionAnswering.from_pretrained(pickled, allow_pickle_weights=True)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True only"):
        VlmHfForQuestionAnswering.from_pretrained(pickled, allow_pickle_weights=True, weights_only=False)


def test_safetensors_are_read_when_a_folder_has_both(saved, tmp_path):
    folder, expected = saved
    both = shutil.copytree(folder, tmp_path / "both")
    zeros = {k: torch.zeros_like(v) for k, v in load_file(folder / "model.safetensors").items()}
    torch.save(zeros, both / "pytorch_model.bin")
    for allow in (False, True):
        model = VlmHfForQuestionAnswering.from_pretrained(both, allow_pickle_weights=allow)
        torch.testing.assert_close(logits_of(model), expected, atol=0, rtol=0)


def edit_config(folder, target, **changes):
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


def test_config_sizes_that_contradict_the_weights_name_the_parameters(saved, tmp_path):
    folder, _ = saved
    labels = {"id2label": {str(i): f"a{i}" for i in range(7)}, "label2id": {f"a{i}": i for i in range(7)}}
    more_answers = edit_config(folder, tmp_path / "labels", **labels)
    with pytest.raises(ValueError, match=r"classifier\.out_proj\.weight: \(5, 64\) in the weights, \(7, 64\) from"):
        VlmHfForQuestionAnswering.from_pretrained(more_answers)
    bigger_vocabulary = edit_config(folder, tmp_path / "vocab", vocab_size=120)
    with pytest.raises(ValueError, match=r"word_embeddings\.weight: \(99, 32\) in the weights, \(120, 32\)"):
        AutoModelForVisualQuestionAnswering.from_pretrained(bigger_vocabulary)

    # The explicit opt-out re-initialises them, and says which.
    model, info = VlmHfForQuestionAnswering.from_pretrained(
        more_answers, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert model.config.num_labels == 7
    assert {key for key, _, _ in info["mismatched_keys"]} == {"classifier.out_proj.weight", "classifier.out_proj.bias"}


def test_a_checkpoint_of_another_model_type_is_refused(saved, tmp_path):
    folder, _ = saved
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4)).save_pretrained(bert)
    with pytest.raises(ValueError, match="holds a 'bert' model, not a 'vlm_hf' one"):
        VlmHfModel.from_pretrained(bert)
    with pytest.raises(ValueError, match="config must be a VlmHfConfig, got a BertConfig"):
        VlmHfModel.from_pretrained(folder, config=BertConfig())


def test_missing_and_unexpected_keys_are_reported_by_name(saved, tmp_path):
    folder, _ = saved
    broken = shutil.copytree(folder, tmp_path / "broken")
    state_dict = load_file(folder / "model.safetensors")
    del state_dict["classifier.dense.weight"]
    state_dict["classifier.extra.weight"] = torch.zeros(3)
    save_file(state_dict, broken / "model.safetensors", metadata={"format": "pt"})

    logger = logging.get_logger("transformers.modeling_utils")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_warning()  # another test in this process (the demo's) may have quieted transformers
    try:
        with CaptureLogger(logger) as captured:
            _, info = VlmHfForQuestionAnswering.from_pretrained(broken, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    assert info["missing_keys"] == {"classifier.dense.weight"}
    assert info["unexpected_keys"] == {"classifier.extra.weight"}
    # Without asking for it, the user sees the same names in the load report (a warning).
    assert "classifier.dense.weight" in captured.out and "MISSING" in captured.out
    assert "classifier.extra.weight" in captured.out and "UNEXPECTED" in captured.out
    model = VlmHfForQuestionAnswering.from_pretrained(folder)
    assert not isinstance(model, tuple)  # the loading info only when asked for
