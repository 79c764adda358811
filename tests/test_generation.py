"""Caption and answer generation: the sequence-to-sequence mask, the cache, GenerationMixin, saving and the pipeline."""

import itertools
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import pixel_inputs, region_inputs, run_offline_script, tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, DynamicCache, pipeline

import vlm_hf
from vlm_hf import VlmHfConfig, VlmHfForConditionalGeneration

CLS, SEP, PAD = 2, 3, 0  # as in a tokenizer from `train_wordpiece_tokenizer`


def generation_config(**overrides) -> VlmHfConfig:
    # A wide initialisation spreads the logits, so that no greedy choice hangs on a rounding-level tie.
    values = dict(bos_token_id=CLS, eos_token_id=SEP, initializer_range=0.2)
    return tiny_config(**{**values, **overrides})


def generation_model(**overrides) -> VlmHfForConditionalGeneration:
    torch.manual_seed(0)
    return VlmHfForConditionalGeneration(generation_config(**overrides)).eval()


def prompt(*words: int) -> list[int]:
    return [CLS, *words, SEP]


def pad_prompts(prompts: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded `input_ids` and `attention_mask` of prompts of different lengths."""
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), PAD)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, tokens in enumerate(prompts):
        span = slice(length - len(tokens), length) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens)
        mask[row, span] = 1
    return ids, mask


PROMPTS = [prompt(), prompt(10, 11, 12, 13), prompt(20, 21)]  # a caption prompt and two questions


def batch_inputs(side="left"):
    input_ids, attention_mask = pad_prompts(PROMPTS, side)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_inputs(len(PROMPTS)))


def full_sequence_inputs(sequences, prompt_mask, pixel_values):
    """Inputs of one forward pass over prompts and generated tokens together, marked as the model marks them."""
    prompt_length = prompt_mask.shape[1]
    new_tokens = sequences.shape[1] - prompt_length
    token_type_ids = torch.cat([torch.zeros_like(prompt_mask), torch.ones(len(sequences), new_tokens).long()], 1)
    attention_mask = torch.cat([prompt_mask, torch.ones(len(sequences), new_tokens).long()], 1)
    return dict(
        input_ids=sequences,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
    )


def predicting_positions(prompt_mask: torch.Tensor, step: int) -> torch.Tensor:
    """Where the full sequence predicts new token `step` of each row: its last real prompt token (before any right
    padding) for the first, the token generated before it for the others."""
    if step == 0:
        return (prompt_mask * torch.arange(prompt_mask.shape[1])).argmax(1)
    return torch.full((prompt_mask.shape[0],), prompt_mask.shape[1] + step - 1)


def at(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(positions)), positions]


GREEDY = dict(do_sample=False)
MODES = {"greedy": GREEDY, "beam": dict(num_beams=3, do_sample=False), "sample": dict(do_sample=True, top_k=20)}


# -- the cache -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_cached_and_uncached_generation_give_identical_tokens(mode):
    model = generation_model()
    inputs = batch_inputs("right")
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        runs.append(model.generate(**inputs, **MODES[mode], use_cache=use_cache, max_new_tokens=8, min_new_tokens=8))
    assert runs[0].shape == (3, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_at_every_step_equal_a_full_recompute(side):
    model = generation_model()
    inputs = batch_inputs(side)
    out = model.generate(
        **inputs, **GREEDY, max_new_tokens=6, min_new_tokens=6, output_logits=True, return_dict_in_generate=True
    )
    full = model(**full_sequence_inputs(out.sequences, inputs["attention_mask"], inputs["pixel_values"])).logits
    assert len(out.logits) == 6
    for step, logits in enumerate(out.logits):
        expected = at(full, predicting_positions(inputs["attention_mask"], step))
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_each_new_token_is_one_step_over_the_cache():
    model = generation_model()
    inputs = batch_inputs("left")
    cache = DynamicCache(config=model.config)
    prefill = model(**inputs, cache=cache, use_cache=True)
    num_visual = model.config.visual_grid**2
    assert cache.get_seq_length() == num_visual + inputs["input_ids"].shape[1]
    next_token = prefill.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(next_token)], 1)
    # `past_key_values`, the name before transformers 5.24, still works (with transformers' deprecation warning).
    with pytest.warns(FutureWarning, match="past_key_values"):
        step = model(input_ids=next_token, attention_mask=mask, past_key_values=prefill.cache, use_cache=True)
    assert step.logits.shape == (3, 1, model.config.vocab_size)
    assert cache.get_seq_length() == num_visual + inputs["input_ids"].shape[1] + 1
    full = model(
        **full_sequence_inputs(
            torch.cat([inputs["input_ids"], next_token], 1), inputs["attention_mask"], inputs["pixel_values"]
        )
    ).logits
    torch.testing.assert_close(step.logits[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_padded_visual_tokens_stay_masked_after_the_first_step():
    # Image 1 is padded on the right: its right grid cells are masked at the first step and at every cached step.
    model = generation_model()
    pixel_mask = torch.ones(3, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 32:] = 0
    inputs = {**batch_inputs("left"), "pixel_mask": pixel_mask}
    out = model.generate(
        **inputs, **GREEDY, max_new_tokens=5, min_new_tokens=5, output_logits=True, return_dict_in_generate=True
    )
    full_inputs = full_sequence_inputs(out.sequences, inputs["attention_mask"], inputs["pixel_values"])
    full = model(**full_inputs, pixel_mask=pixel_mask).logits
    unmasked = model(**full_inputs).logits
    for step, logits in enumerate(out.logits):
        expected = at(full, predicting_positions(inputs["attention_mask"], step))
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(full[1], unmasked[1], atol=1e-3)  # the mask matters for the padded image
    torch.testing.assert_close(full[0], unmasked[0], atol=1e-5, rtol=0)


# -- the sequence-to-sequence mask ---------------------------------------------------------------------------------


def caption_batch(seed=0):
    """`[CLS] q [SEP] caption [SEP]` with token types 0 / 1, as `tokenizer(prompt, caption)` gives it."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (2, 9), generator=generator)
    input_ids[:, 0], input_ids[:, 3], input_ids[:, 8] = CLS, SEP, SEP
    token_type_ids = torch.tensor([[0] * 4 + [1] * 5] * 2)
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, pixel_values=pixel_inputs(2))


def changed(batch, position, value=42):
    ids = batch["input_ids"].clone()
    ids[:, position] = value
    return {**batch, "input_ids": ids}


def test_caption_tokens_see_only_earlier_caption_tokens():
    model = generation_model()
    batch = caption_batch()
    logits = model(**batch).logits
    later = model(**changed(batch, 6)).logits  # a caption token
    torch.testing.assert_close(later[:, :6], logits[:, :6], atol=1e-6, rtol=0)  # prompt and earlier caption
    assert (later[:, 6:] - logits[:, 6:]).abs().amax(-1).min() > 1e-4  # the changed token and those after it


def test_prompt_and_image_reach_every_position():
    model = generation_model()
    batch = caption_batch()
    logits = model(**batch).logits
    for other in (changed(batch, 2), {**batch, "pixel_values": pixel_inputs(2, seed=5)}):
        # Prompt tokens see each other both ways, so even the [CLS] before the changed word moves.
        assert (model(**other).logits - logits).abs().amax(-1).min() > 1e-4


def test_prompt_states_do_not_depend_on_the_caption_with_regions():
    model = generation_model(vision_backbone=None, visual_feature_dim=12)
    batch = {**caption_batch(), "pixel_values": None, **region_inputs(2)}
    prompt_only = {**batch, "input_ids": batch["input_ids"][:, :4], "token_type_ids": batch["token_type_ids"][:, :4]}
    # The prompt's states do not depend on the caption: the same with and without it.
    torch.testing.assert_close(model(**prompt_only).logits, model(**batch).logits[:, :4], atol=1e-5, rtol=0)


def test_loss_is_next_token_cross_entropy_over_caption_tokens_only():
    model = generation_model()
    batch = caption_batch()
    labels = torch.where(batch["token_type_ids"] == 1, batch["input_ids"], -100)
    out = model(**batch, labels=labels)
    # Position t predicts token t + 1: the first caption token from the prompt's [SEP].
    predicted = out.logits[:, 3:8].reshape(-1, model.config.vocab_size)
    expected = F.cross_entropy(predicted, batch["input_ids"][:, 4:9].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    # What the prompt positions would predict does not enter the loss.
    prompt_changed = model(**changed(batch, 1), labels=labels)
    assert not torch.allclose(prompt_changed.logits[:, :3], out.logits[:, :3])
    assert abs(prompt_changed.loss.item() - out.loss.item()) > 1e-5  # ... but the prompt conditions the caption
    with pytest.raises(ValueError, match="labels"):
        model(**batch, labels=labels[:, :5])
    with pytest.raises(ValueError, match="labels"):
        model(**batch, labels=labels.masked_fill(labels == -100, 500))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = generation_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    batch = caption_batch()
    batch["labels"] = torch.where(batch["token_type_ids"] == 1, batch["input_ids"], -100)
    model(**batch).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert all(layer.gradient_checkpointing for layer in model.vlm_hf.encoder.layer)
    model(**batch, use_cache=True).loss.backward()  # the cache is dropped under checkpointing
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5, msg=name)


def test_eager_and_sdpa_attention_agree():
    model = generation_model()
    inputs = batch_inputs("right")
    sdpa = model.generate(**inputs, **GREEDY, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
    model.set_attn_implementation("eager")
    eager = model.generate(**inputs, **GREEDY, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(sdpa.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(sdpa.logits), torch.stack(eager.logits), atol=1e-5, rtol=0)


# -- GenerationMixin -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_generates_what_each_prompt_generates_alone(side):
    model = generation_model()
    inputs = batch_inputs(side)
    settings = dict(**GREEDY, max_new_tokens=7, min_new_tokens=7, output_logits=True, return_dict_in_generate=True)
    batch = model.generate(**inputs, **settings)
    new_tokens = batch.sequences[:, inputs["input_ids"].shape[1] :]
    for row, tokens in enumerate(PROMPTS):
        alone = model.generate(
            input_ids=torch.tensor([tokens]), pixel_values=inputs["pixel_values"][row : row + 1], **settings
        )
        assert torch.equal(alone.sequences[0, len(tokens) :], new_tokens[row]), row
        for step, logits in enumerate(alone.logits):
            torch.testing.assert_close(logits[0], batch.logits[step][row], atol=1e-5, rtol=0)


def test_beam_search_finds_the_most_likely_sequence():
    # With as many beams as there are two-token prefixes, beam search is exhaustive: its best sequence must be the
    # brute-force best of all vocab^3 continuations, each scored by one uncached forward pass.
    model = generation_model(vocab_size=7, eos_token_id=None)
    image = pixel_inputs(1)
    start = torch.tensor([prompt(5)])
    out = model.generate(
        input_ids=start,
        pixel_values=image,
        num_beams=49,
        max_new_tokens=3,
        length_penalty=0.0,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    candidates = torch.tensor(list(itertools.product(range(7), repeat=3)))
    sequences = torch.cat([start.expand(len(candidates), -1), candidates], 1)
    full = full_sequence_inputs(
        sequences, torch.ones(len(candidates), 3).long(), image.expand(len(candidates), -1, -1, -1)
    )
    log_probs = model(**full).logits[:, 2:5].log_softmax(-1)
    scores = log_probs.gather(-1, candidates[..., None]).squeeze(-1).sum(-1)
    assert torch.equal(out.sequences[0, 3:], candidates[scores.argmax()])
    torch.testing.assert_close(out.sequences_scores[0], scores.max(), atol=1e-4, rtol=0)
    # ... and the best of three beams is at least as likely as the greedy sequence.
    greedy = model.generate(input_ids=start, pixel_values=image, max_new_tokens=3, do_sample=False)
    beams = model.generate(input_ids=start, pixel_values=image, num_beams=3, max_new_tokens=3, length_penalty=0.0)
    score_of = {tuple(c.tolist()): s for c, s in zip(candidates, scores, strict=True)}
    assert score_of[tuple(beams[0, 3:].tolist())] >= score_of[tuple(greedy[0, 3:].tolist())] - 1e-6


def test_generation_stops_at_max_new_tokens_and_at_eos():
    model = generation_model(eos_token_id=None)
    inputs = batch_inputs("left")
    free = model.generate(**inputs, **GREEDY, max_new_tokens=9)
    prompt_length = inputs["input_ids"].shape[1]
    assert free.shape[1] - prompt_length == 9
    for limit in (1, 4):
        assert model.generate(**inputs, **GREEDY, max_new_tokens=limit).shape[1] - prompt_length <= limit
    # Make the token that row 0 generates fourth the end token: row 0 stops there, the other rows are padded after
    # their own first end token (or run to the limit).
    end = int(free[0, prompt_length + 3])
    stopped = model.generate(**inputs, **GREEDY, max_new_tokens=9, eos_token_id=end, pad_token_id=PAD)
    for row in range(3):
        new = free[row, prompt_length:].tolist()
        expected = new[: new.index(end) + 1] if end in new else new
        got = stopped[row, prompt_length:].tolist()
        assert got[: len(expected)] == expected and set(got[len(expected) :]) <= {PAD}, row
    assert stopped.shape[1] - prompt_length == max(
        (n.index(end) + 1 if end in n else 9) for n in free[:, prompt_length:].tolist()
    )


def test_without_a_prompt_the_model_captions_from_cls_sep():
    model = generation_model()
    images = pixel_inputs(2)
    default = model.generate(pixel_values=images, **GREEDY, max_new_tokens=5)
    explicit = model.generate(input_ids=torch.tensor([prompt()] * 2), pixel_values=images, **GREEDY, max_new_tokens=5)
    assert torch.equal(default, explicit)
    no_tokens = generation_model(bos_token_id=None)
    with pytest.raises(ValueError, match="bos_token_id"):
        no_tokens.generate(pixel_values=images, max_new_tokens=2)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_several_prompts_about_one_image_with_image_index(num_beams):
    model = generation_model()
    image = pixel_inputs(1)
    input_ids, attention_mask = pad_prompts(PROMPTS, "left")
    settings = dict(num_beams=num_beams, do_sample=False, max_new_tokens=5, min_new_tokens=5)
    shared = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=image,
        image_index=torch.zeros(3).long(),
        **settings,
    )
    repeated = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=image.expand(3, -1, -1, -1), **settings
    )
    assert torch.equal(shared, repeated)


def test_bad_inputs_raise_clear_errors():
    model = generation_model()
    ids = torch.tensor([prompt(7)])
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=ids)
    out = model(input_ids=ids, pixel_values=pixel_inputs(1), use_cache=True)
    with pytest.raises(ValueError, match="already in `cache`"):
        model(input_ids=ids[:, :1], pixel_values=pixel_inputs(1), cache=out.cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=ids[:, :1], attention_mask=torch.ones(1, 9).long(), cache=out.cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=ids, pixel_values=pixel_inputs(1), position_ids=torch.tensor([[0, 1, 64]]))
    with pytest.raises(ValueError, match="single_stream"):
        VlmHfForConditionalGeneration(VlmHfConfig.from_preset("vilbert-tiny"))
    with pytest.raises(ValueError, match="vlbert"):
        VlmHfForConditionalGeneration(VlmHfConfig.from_preset("vlbert-tiny"))


@pytest.mark.parametrize("preset", ["visualbert-tiny", "uniter-tiny"])
def test_presets_generate_the_same_with_and_without_cache(preset):
    torch.manual_seed(0)
    model = VlmHfForConditionalGeneration(VlmHfConfig.from_preset(preset, initializer_range=0.2)).eval()
    inputs = batch_inputs("right")
    cached = model.generate(**inputs, **GREEDY, max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(cached, model.generate(**inputs, **GREEDY, max_new_tokens=5, min_new_tokens=5, use_cache=False))


# -- saving, Auto classes, the pipeline -----------------------------------------------------------------------------


def test_lm_head_is_tied_and_save_reload_generates_the_same(tmp_path):
    model = generation_model()
    assert model.cls.predictions.decoder.weight is model.vlm_hf.embeddings.word_embeddings.weight
    inputs = batch_inputs("left")
    expected = model.generate(**inputs, **GREEDY, max_new_tokens=6)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is VlmHfForConditionalGeneration
    assert loaded.cls.predictions.decoder.weight is loaded.vlm_hf.embeddings.word_embeddings.weight
    assert loaded.generation_config.eos_token_id == SEP
    assert torch.equal(loaded.generate(**inputs, **GREEDY, max_new_tokens=6), expected)


def test_a_pretraining_checkpoint_initialises_the_language_model_head(tmp_path):
    pretrained = vlm_hf.VlmHfForPreTraining(generation_config()).eval()
    pretrained.save_pretrained(tmp_path)
    model = VlmHfForConditionalGeneration.from_pretrained(tmp_path)
    for name, tensor in model.cls.state_dict().items():
        assert torch.equal(tensor, pretrained.cls.state_dict()[name]), name


REMOTE_GENERATE = textwrap.dedent(
    """
    import sys
    import transformers
    from safetensors.torch import load_file, save_file
    folder = sys.argv[1]
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("vlm_hf"), type(model).__module__
    inputs = load_file(folder + "/inputs.safetensors")
    save_file({"tokens": model.generate(**inputs, do_sample=False, max_new_tokens=6)}, folder + "/tokens.safetensors")
    """
)


def test_trust_remote_code_generates_without_the_package(tmp_path):
    model = generation_model()
    model.save_pretrained(tmp_path)
    inputs = batch_inputs("right")
    save_file(inputs, tmp_path / "inputs.safetensors")
    run_offline_script(REMOTE_GENERATE, tmp_path)
    remote = load_file(tmp_path / "tokens.safetensors")["tokens"]
    assert torch.equal(remote, model.generate(**inputs, **GREEDY, max_new_tokens=6))


@pytest.fixture
def captioning_folder(tmp_path, tokenizer):
    image_processor = vlm_hf.VlmHfImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = vlm_hf.VlmHfProcessor(image_processor, tokenizer)
    config = generation_config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id
    )
    torch.manual_seed(0)
    model = VlmHfForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path, model, processor


def scene(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (70, 90, 3), dtype=np.uint8))


def test_image_text_to_text_pipeline_captions_and_answers_like_generate(captioning_folder):
    folder, model, processor = captioning_folder
    assert processor.tokenizer("")["input_ids"] == [processor.tokenizer.cls_token_id, processor.tokenizer.sep_token_id]
    captioner = pipeline("image-text-to-text", model=str(folder))
    assert type(captioner.model) is VlmHfForConditionalGeneration
    for text in ("", "what colour is the circle?"):
        inputs = processor(images=scene(1), text=text)
        tokens = model.generate(**inputs, do_sample=False, max_new_tokens=6)
        # The pipeline's full text is the prompt followed by what was generated: the decoded sequence.
        expected = processor.batch_decode(tokens, skip_special_tokens=True)[0]
        result = captioner(images=scene(1), text=text, max_new_tokens=6)
        assert result[0]["generated_text"] == expected, text
        assert len(expected) > len(text)  # something was generated (no [SEP] first from this seed)


def test_a_tokenizer_text_pair_builds_the_training_batch(tokenizer):
    # The README's recipe: `tokenizer(prompts, captions)` marks the caption (and its [SEP]) with token type 1, the
    # labels keep exactly those tokens, and the loss is the caption's next-token cross-entropy.
    model = generation_model(vocab_size=len(tokenizer))
    prompts, captions = ["", "what colour is the circle?"], ["a red circle.", "red"]
    pair = tokenizer(prompts, captions, padding=True, return_tensors="pt")
    labels = pair["input_ids"].masked_fill((pair["token_type_ids"] == 0) | (pair["attention_mask"] == 0), -100)
    for row, caption in enumerate(captions):
        caption_ids = tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        assert labels[row][labels[row] != -100].tolist() == caption_ids
    out = model(**pair, pixel_values=pixel_inputs(2), labels=labels)
    manual = [
        F.cross_entropy(out.logits[row, t - 1], pair["input_ids"][row, t], reduction="none")
        for row in range(2)
        for t in range(1, labels.shape[1])
        if labels[row, t] != -100
    ]
    torch.testing.assert_close(out.loss, torch.stack(manual).mean())
    # The same batch one row at a time gives the same logits: right padding changes nothing.
    for row in range(2):
        alone = tokenizer(prompts[row], captions[row], return_tensors="pt")
        logits = model(**alone, pixel_values=pixel_inputs(2)[row : row + 1]).logits
        length = alone["input_ids"].shape[1]
        torch.testing.assert_close(logits[0], out.logits[row, :length], atol=1e-5, rtol=0)
