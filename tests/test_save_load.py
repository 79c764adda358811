"""Auto classes, save/load round trips, remote code, device placement and backbone weights."""

import json
import os
import textwrap

import pytest
import torch
import torchvision
from conftest import HEADS, pixel_inputs, run_offline_script, text_inputs, tiny_config
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

import vlm_hf
from vlm_hf import VlmHfConfig, VlmHfForQuestionAnswering, VlmHfModel

AUTO_CLASSES = {
    vlm_hf.VlmHfModel: AutoModel,
    vlm_hf.VlmHfForPreTraining: AutoModelForPreTraining,
    vlm_hf.VlmHfForQuestionAnswering: AutoModelForVisualQuestionAnswering,
    vlm_hf.VlmHfForImageTextRetrieval: AutoModelForZeroShotImageClassification,
    vlm_hf.VlmHfForVisualReasoning: AutoModelForSequenceClassification,
    vlm_hf.VlmHfForRegionGrounding: AutoModelForTokenClassification,
    vlm_hf.VlmHfForConditionalGeneration: AutoModelForImageTextToText,
}


def example_inputs():
    return dict(pixel_values=pixel_inputs(), **text_inputs())


def tensors_of(output):
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def test_registration_is_idempotent_and_complete():
    vlm_hf.register()
    vlm_hf.register()
    assert type(AutoConfig.for_model("vlm_hf")) is VlmHfConfig
    for model_class, auto_class in AUTO_CLASSES.items():
        assert type(auto_class.from_config(tiny_config())) is model_class


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_auto_round_trip_gives_identical_outputs(head, tmp_path):
    auto_class = AUTO_CLASSES[head]
    model = auto_class.from_config(tiny_config()).eval()
    expected = tensors_of(model(**example_inputs()))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "pytorch_model.bin").exists()
    assert {"configuration_vlm_hf.py", "modeling_vlm_hf.py"} <= set(os.listdir(tmp_path))
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", *(a.__name__ for a in AUTO_CLASSES.values())}

    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is head
    for key, value in tensors_of(loaded(**example_inputs())).items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0, msg=key)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items() if k in saved)


@pytest.mark.parametrize(
    "head, config",
    [
        # ViLBERT's NLVR2 head: rows 2k, 2k+1 (one text with each of its two images) classified together.
        (vlm_hf.VlmHfForVisualReasoning, dict(visual_reasoning_pairs=True, visual_reasoning_head="mlp")),
        (vlm_hf.VlmHfForRegionGrounding, {}),
        (vlm_hf.VlmHfForRegionGrounding, dict(preset="vilbert-tiny")),
    ],
    ids=["visual-reasoning-pairs", "grounding", "grounding-vilbert"],
)
def test_pair_reasoning_and_grounding_round_trip_from_pixels(head, config, tmp_path):
    preset = config.pop("preset", None)
    config = VlmHfConfig.from_preset(preset, num_labels=2) if preset else tiny_config(**config)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 32:] = 0  # image 1 padded on the right: the grid cells there are masked
    inputs = dict(pixel_values=pixel_inputs(), pixel_mask=pixel_mask, **text_inputs(vocab_size=config.vocab_size))
    model = AUTO_CLASSES[head].from_config(config).eval()
    expected = tensors_of(model(**inputs))
    model.save_pretrained(tmp_path)
    loaded = AUTO_CLASSES[head].from_pretrained(tmp_path).eval()
    assert type(loaded) is head
    fields = ("fusion", "visual_reasoning_pairs", "visual_reasoning_head", "num_labels")
    assert all(getattr(loaded.config, name) == getattr(model.config, name) for name in fields)
    outputs = tensors_of(loaded(**inputs))
    assert outputs.keys() == expected.keys()
    for key, value in outputs.items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0, msg=key)
    if head is vlm_hf.VlmHfForVisualReasoning:
        assert outputs["logits"].shape == (1, config.num_labels)  # two rows, one example
    else:
        masked = loaded.vlm_hf(**inputs).visual_attention_mask == 0
        assert masked[1].any() and not masked[0].any()
        assert bool((outputs["logits"][masked] < -9000).all()) and bool((outputs["logits"][~masked] > -100).all())


def test_base_model_loads_from_a_head_checkpoint(tmp_path):
    model = VlmHfForQuestionAnswering(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        base(**example_inputs()).pooler_output, model.vlm_hf(**example_inputs()).pooler_output, atol=0, rtol=0
    )


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["vlm_hf"] = None  # make the package unimportable: only the folder's code may be used
    import torch, transformers
    from safetensors.torch import load_file, save_file
    folder = sys.argv[1]
    inputs = load_file(folder + "/inputs.safetensors")
    for name in ("AutoModelForVisualQuestionAnswering", "AutoModel"):
        model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
        assert not type(model).__module__.startswith("vlm_hf"), type(model).__module__
        out = model(**inputs)
        key = "logits" if "logits" in out else "pooler_output"
        save_file({"output": out[key].contiguous()}, f"{folder}/{name}.safetensors")
    """
)


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = VlmHfForQuestionAnswering(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    inputs = example_inputs()
    save_file(inputs, tmp_path / "inputs.safetensors")
    run_offline_script(REMOTE_LOAD, tmp_path)
    remote_qa = load_file(tmp_path / "AutoModelForVisualQuestionAnswering.safetensors")["output"]
    remote_base = load_file(tmp_path / "AutoModel.safetensors")["output"]
    torch.testing.assert_close(remote_qa, model(**inputs).logits, atol=0, rtol=0)
    torch.testing.assert_close(remote_base, model.vlm_hf(**inputs).pooler_output, atol=0, rtol=0)


def test_device_map_offload_keeps_outputs_identical(tmp_path):
    # The transformer must outweigh the ResNet-18 trunk, so that a budget can hold the trunk and some layers.
    config = tiny_config(hidden_size=256, num_hidden_layers=8, intermediate_size=1024)
    model = VlmHfForQuestionAnswering(config).eval()
    expected = model(**example_inputs()).logits
    model.save_pretrained(tmp_path / "model")
    budget = int(model.get_memory_footprint() * 0.8)
    offloaded = VlmHfForQuestionAnswering.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path / "offload"
    ).eval()
    assert {"cpu", "disk"} <= set(offloaded.hf_device_map.values()), offloaded.hf_device_map
    torch.testing.assert_close(offloaded(**example_inputs()).logits, expected, atol=0, rtol=0)


def test_device_map_auto_loads_whole_model(tmp_path):
    model = VlmHfModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, device_map="auto").eval()
    torch.testing.assert_close(loaded(**example_inputs()).pooler_output, model(**example_inputs()).pooler_output)


# -- backbone weights -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that a missed buffer shows
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def layer4_features(reference, pixels):
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    return trunk(pixels)


def test_vision_pretrained_file_gives_torchvision_features(torchvision_resnet18, tmp_path):
    reference, path = torchvision_resnet18
    model = VlmHfModel(tiny_config(vision_pretrained=str(path), visual_grid=7)).eval()
    pixels = pixel_inputs(size=224)
    with torch.no_grad():
        expected = layer4_features(reference, pixels).flatten(2).transpose(1, 2)
        out = model(pixel_values=pixels, **text_inputs())
    torch.testing.assert_close(out.visual_features, expected, atol=1e-5, rtol=1e-5)

    # A saved model keeps its own backbone weights: the file is not needed (or re-read) any more.
    model.save_pretrained(tmp_path / "saved")
    moved = tmp_path / "moved.pth"
    os.rename(path, moved)
    try:
        loaded = VlmHfModel.from_pretrained(tmp_path / "saved").eval()
    finally:
        os.rename(moved, path)
    torch.testing.assert_close(loaded(pixel_values=pixels, **text_inputs()).visual_features, out.visual_features)


def test_earlier_feature_layer_gives_torchvision_features_of_that_stage(torchvision_resnet18):
    reference, path = torchvision_resnet18
    config = tiny_config(vision_pretrained=str(path), vision_feature_layer="layer2", visual_grid=8)
    model = VlmHfModel(config).eval()
    assert config.visual_feature_dim == 128 and not hasattr(model.vision_backbone, "layer3")
    pixels = pixel_inputs(size=64)  # stride 8: an 8x8 map, one cell per grid token
    with torch.no_grad():
        stem_to_layer2 = torch.nn.Sequential(*list(reference.children())[:6])
        expected = stem_to_layer2(pixels).flatten(2).transpose(1, 2)
        out = model(pixel_values=pixels, **text_inputs())
    torch.testing.assert_close(out.visual_features, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 8x8"):
        model(pixel_values=pixel_inputs(size=4), **text_inputs())


def test_vision_pretrained_safetensors_file(torchvision_resnet18, tmp_path):
    reference, _ = torchvision_resnet18
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    model = VlmHfModel(tiny_config(vision_pretrained=str(path)))
    torch.testing.assert_close(model.vision_backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_vision_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        VlmHfModel(tiny_config(vision_pretrained="NOT_A_WEIGHTS_NAME"))
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        VlmHfModel(tiny_config(vision_pretrained=str(wrong)))
