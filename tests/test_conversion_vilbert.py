"""Original ViLBERT / 12-in-1 checkpoints converted into vlm_hf reproduce the original code's outputs."""

import json
import re
from pathlib import Path

import pytest
import torch
from vlm_hf.conversion.convert_vilbert import HEADS, convert_vilbert, convert_vilbert_state_dict, vilbert_config

from vlm_hf import VlmHfForQuestionAnswering

FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "original" / "vilbert"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"ViLBERT fixture not found at {FIXTURE}")

# The fixture README's tolerance for an fp32 converter.
TOLERANCE = dict(atol=1e-5, rtol=1e-5)

# config/bert_base_6layer_6conect.json of vilbert-multi-task, with which keys_base.tsv was built.
BASE_CONFIG = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "v_feature_size": 2048,
    "v_target_size": 1601,
    "v_hidden_size": 1024,
    "v_num_hidden_layers": 6,
    "v_num_attention_heads": 8,
    "v_intermediate_size": 1024,
    "bi_hidden_size": 1024,
    "bi_num_attention_heads": 8,
    "bi_intermediate_size": 1024,
    "bi_attention_type": 1,
    "v_attention_probs_dropout_prob": 0.1,
    "v_hidden_act": "gelu",
    "v_hidden_dropout_prob": 0.1,
    "v_initializer_range": 0.02,
    "v_biattention_id": [0, 1, 2, 3, 4, 5],
    "t_biattention_id": [6, 7, 8, 9, 10, 11],
    "pooling_method": "mul",
}


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    return (
        json.loads((FIXTURE / "config.json").read_text()),
        load_file(FIXTURE / "inputs.safetensors"),
        load_file(FIXTURE / "outputs.safetensors"),
    )


def vlm_hf_inputs(inputs, rows=slice(None), task_tokens=True) -> dict:
    """The fixture's inputs for vlm_hf: the regions without the [IMG] token at index 0 (the model adds its own)."""
    converted = {
        "input_ids": inputs["input_ids"][rows],
        "token_type_ids": inputs["token_type_ids"][rows],
        "attention_mask": inputs["attention_mask"][rows],
        "visual_embeds": inputs["image_feat"][rows, 1:],
        "visual_boxes": inputs["image_loc"][rows, 1:, :4],  # the model derives the area, the 5th feature
        "visual_attention_mask": inputs["image_attention_mask"][rows, 1:],
    }
    if task_tokens:
        converted["task_ids"] = inputs["task_ids"][rows]
    return converted


_converted = {}


def converted(checkpoint: str, head: str, task_tokens: bool = True):
    key = (checkpoint, head, task_tokens)
    if key not in _converted:
        config = json.loads((FIXTURE / "config.json").read_text())
        _converted[key] = convert_vilbert(FIXTURE / checkpoint, config, head=head, task_tokens=task_tokens)[0]
    return _converted[key]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, name
    torch.testing.assert_close(actual, expected, **TOLERANCE, msg=name)


@torch.no_grad()
def test_pretraining_model_reproduces_every_output_and_trace(fixture):
    _, inputs, outputs = fixture
    model = converted("pretrain.bin", "pretraining")
    batch = vlm_hf_inputs(inputs, task_tokens=False)
    base = model.vlm_hf(**batch, output_hidden_states=True)
    heads = model(**batch)
    expected = {
        "bert.sequence_output_t": base.last_hidden_state,
        "bert.sequence_output_v": base.visual_last_hidden_state,
        "bert.pooled_output_t": base.text_pooler_output,
        "bert.pooled_output_v": base.visual_pooler_output,
        "prediction_scores_t": heads.prediction_logits,
        "prediction_scores_v": heads.region_logits,
        # ViLBERT's alignment logits are (match, mismatch); vlm_hf's ITM logits (mismatch, match).
        "seq_relationship_score": heads.itm_logits.flip(-1),
    }
    for name, actual in expected.items():
        assert_matches(actual, outputs[f"pretrain.{name}"], name)
    assert_traces_match(base, outputs, "pretrain")


def assert_traces_match(base, outputs, prefix: str) -> None:
    """Every block's output, in the original's order: t0 t1 c0 t2 v0 c1 v1 t3 (tiny model)."""
    trace = f"{prefix}.trace.bert."
    text = ["embeddings", "encoder.layer.0", "encoder.layer.1", "encoder.c_layer.0.t", "encoder.layer.2"]
    text += ["encoder.c_layer.1.t", "encoder.layer.3"]
    visual = ["v_embeddings", "encoder.c_layer.0.v", "encoder.v_layer.0", "encoder.c_layer.1.v", "encoder.v_layer.1"]
    assert len(base.hidden_states) == len(text) and len(base.visual_hidden_states) == len(visual)
    for name, state in zip(text + visual, base.hidden_states + base.visual_hidden_states, strict=True):
        assert_matches(state, outputs[trace + name], trace + name)


# Each saved 12-in-1 output and where the converted models give it: (head, output -> tensor).
TASK_OUTPUTS = {
    "linguisic_prediction": ("pretraining", lambda out: out.prediction_logits),
    "vision_prediction": ("pretraining", lambda out: out.region_logits),
    "vil_prediction": ("vqa", lambda out: out.logits),
    "vil_prediction_gqa": ("gqa", lambda out: out.logits),
    "vil_tri_prediction": ("visual_entailment", lambda out: out.logits),
    "vil_logit": ("retrieval", lambda out: out.itm_logits[:, 1:]),
}


@pytest.mark.parametrize(
    "prefix, rows, task_tokens",
    [("vl", slice(None), True), ("vl_b2", slice(0, 2), True), ("vl_notask", slice(None), False)],
)
@torch.no_grad()
def test_task_model_reproduces_every_convertible_head(fixture, prefix, rows, task_tokens):
    _, inputs, outputs = fixture
    batch = vlm_hf_inputs(inputs, rows, task_tokens)
    for name, (head, read) in TASK_OUTPUTS.items():
        model = converted("vl_tasks.bin", head, task_tokens)
        assert_matches(read(model(**batch)), outputs[f"{prefix}.{name}"], f"{prefix}.{name}")
    grounding = converted("vl_tasks.bin", "grounding", task_tokens)(**batch)
    assert_grounding_matches(grounding, inputs, outputs, prefix, rows)
    if prefix == "vl_b2":
        # Even batch: vil_binary_prediction is the NLVR2 pair head over rows 0 and 1 side by side. No bert.* outputs.
        pairs = converted("vl_tasks.bin", "nlvr2", task_tokens)(**batch).logits
        assert_matches(pairs, outputs["vl_b2.vil_binary_prediction"], "vl_b2.vil_binary_prediction")
        return
    pretraining = converted("vl_tasks.bin", "pretraining", task_tokens)
    # Odd batch: the original's vil_binary_prediction is the cls.bi_seq_relationship output.
    assert_matches(pretraining(**batch).itm_logits.flip(-1), outputs[f"{prefix}.vil_binary_prediction"], "binary")
    base = pretraining.vlm_hf(**batch, output_hidden_states=True)
    for name, actual in {
        "sequence_output_t": base.last_hidden_state,
        "sequence_output_v": base.visual_last_hidden_state,
        "pooled_output_t": base.text_pooler_output,
        "pooled_output_v": base.visual_pooler_output,
    }.items():
        assert_matches(actual, outputs[f"{prefix}.bert.{name}"], name)
    if prefix == "vl":  # the task token sits at index 1 of every text-side trace
        assert_traces_match(base, outputs, prefix)


def assert_grounding_matches(grounding, inputs, outputs, prefix: str, rows) -> None:
    """vision_logit (real regions at 1e-5, padded ones within float32 spacing at -1e4) and linguisic_logit."""
    valid = inputs["image_attention_mask"][rows].bool()  # [IMG] at index 0, like the model's visual tokens
    expected = outputs[f"{prefix}.vision_logit"][..., 0]
    assert grounding.logits.shape == expected.shape and (~valid).any()
    assert_matches(grounding.logits[valid], expected[valid], f"{prefix}.vision_logit (real regions)")
    # The README's tolerance for the padded entries (about -9999.x, where float32 values are 1e-3 apart).
    torch.testing.assert_close(grounding.logits[~valid], expected[~valid], atol=2e-3, rtol=0)
    assert bool((grounding.logits[~valid] < -9000).all())
    assert_matches(grounding.token_logits, outputs[f"{prefix}.linguisic_logit"][..., 0], f"{prefix}.linguisic_logit")


def base_state_dict(section: str) -> dict[str, torch.Tensor]:
    """A zero state dict with every key and shape of the full-size release (stride-0 views: no memory)."""
    state_dict, current = {}, None
    for line in (FIXTURE / "keys_base.tsv").read_text().splitlines():
        if line.startswith("# === section:"):
            current = line.split()[3]
        elif line and not line.startswith("#") and current == section:
            key, shape = line.split("\t")[:2]
            state_dict[key] = torch.zeros(1).expand(json.loads(shape))
    return state_dict


@pytest.mark.parametrize(
    "section, head",
    [("pretrain", "pretraining"), ("pretrain", "retrieval")] + [("vl_tasks", head) for head in HEADS],
)
def test_full_size_key_lists_convert_with_nothing_unaccounted(section, head):
    state_dict = base_state_dict(section)
    assert len(state_dict) == {"pretrain": 533, "vl_tasks": 560}[section]
    config = vilbert_config(BASE_CONFIG, state_dict, head)
    assert config.preset == "vilbert-base"
    with torch.device("meta"):  # shapes only: no 250M-parameter allocation
        model = HEADS[head](config)
    # Raises on any source key neither mapped nor dropped, any shape mismatch and any unexpected missing weight.
    converted_state, report = convert_vilbert_state_dict(state_dict, model, head)
    assert set(report.mapped) | set(report.dropped) == set(state_dict)
    assert not set(report.mapped) & set(report.dropped)
    filled = {name for name in model.state_dict() if name in converted_state}
    assert filled | set(report.missing) == set(model.state_dict())
    if head == "pretraining":
        assert set(report.missing) == {k for k in model.state_dict() if k.startswith("mvf_head.")}
        assert report.mapped["cls.imagePredictions.decoder.weight"] == "mrc_head.decoder.weight"
        assert config.num_region_classes == 1601
    if head == "vqa":
        assert config.num_labels == 3129 and report.mapped["vil_prediction.logit_fc.3.weight"].endswith(
            "out_proj.weight"
        )
    if head == "nlvr2":
        assert (config.visual_reasoning_pairs, config.visual_reasoning_head, config.num_labels) == (True, "mlp", 2)
        assert report.mapped["vil_binary_prediction.logit_fc.0.weight"] == "classifier.dense.weight"
    if head == "grounding":
        assert report.mapped["vision_logit.weight"] == "region_classifier.weight"
        assert report.mapped["linguisic_logit.bias"] == "token_classifier.bias"
    if section == "vl_tasks":
        assert config.num_task_tokens == 20
    dropped_reasons = {reason for key, reason in report.dropped.items() if ".q_dense" in key}
    assert dropped_reasons == {"unused by the original forward"}


def test_unknown_keys_and_shape_mismatches_are_errors_naming_the_key(fixture):
    config, _, _ = fixture
    state_dict = torch.load(FIXTURE / "pretrain.bin", map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match=r"bert\.encoder\.c_layer\.0\.gate\.weight"):
        convert_vilbert({**state_dict, "bert.encoder.c_layer.0.gate.weight": torch.zeros(3)}, config, verbose=False)
    bad = {**state_dict, "bert.t_pooler.dense.weight": torch.zeros(24, 47)}
    with pytest.raises(ValueError, match=r"bert\.t_pooler\.dense\.weight"):
        convert_vilbert(bad, config, verbose=False)
    with pytest.raises(ValueError, match="head must be one of"):
        convert_vilbert(state_dict, config, head="captioning", verbose=False)


def test_converted_folder_loads_and_answers_the_same(fixture, tmp_path):
    config, inputs, outputs = fixture
    convert_vilbert(FIXTURE / "vl_tasks.bin", config, tmp_path, head="vqa", verbose=False)
    model = VlmHfForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert (model.config.fusion, model.config.num_task_tokens, model.config.num_labels) == ("co_attention", 20, 3129)
    with torch.no_grad():
        logits = model(**vlm_hf_inputs(inputs)).logits
    assert_matches(logits, outputs["vl.vil_prediction"], "vil_prediction after save/load")
    # Tied weights stay tied in the saved pretraining model.
    pretraining_dir = tmp_path / "pretraining"
    convert_vilbert(FIXTURE / "pretrain.bin", config, pretraining_dir, verbose=False)
    from vlm_hf import VlmHfForPreTraining

    reloaded = VlmHfForPreTraining.from_pretrained(pretraining_dir)
    assert reloaded.cls.predictions.decoder.weight is reloaded.vlm_hf.embeddings.word_embeddings.weight


def test_command_line_writes_a_folder_the_auto_classes_load(fixture, tmp_path, capsys):
    from transformers import AutoModelForZeroShotImageClassification

    from vlm_hf.cli import main

    # A pretraining checkpoint as a retrieval model: its alignment head becomes the image-text matching head.
    argv = ["convert", "vilbert", str(FIXTURE / "pretrain.bin"), "--config", str(FIXTURE / "config.json")]
    assert main([*argv, "--output-dir", str(tmp_path), "--head", "retrieval"]) == 0
    summary = capsys.readouterr().out
    dropped_co_attention_key = r"dropped \(.*\): \d+ keys: .*bert\.encoder\.c_layer\.0\.biOutput\.q_dense1\.bias"
    assert re.search(dropped_co_attention_key, summary), summary
    model = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path).eval()
    _, inputs, outputs = fixture
    with torch.no_grad():
        itm_logits = model(**vlm_hf_inputs(inputs, task_tokens=False)).itm_logits
    assert_matches(itm_logits.flip(-1), outputs["pretrain.seq_relationship_score"], "seq_relationship_score")
