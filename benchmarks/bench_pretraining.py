"""Training-step and inference speed of VlmHfForPreTraining against transformers' VisualBertForPreTraining.

Both models have BERT-base sizes and see the same inputs in one process: 49 visual tokens of 2048-d precomputed
features, 24 text tokens, batch 16, 15% of the text masked, plus image-text matching labels. Prints samples/s of
each (median of alternating rounds) and the ratio vlm_hf / VisualBERT. Run with `make bench`.
"""

import argparse

import torch
from timing import compare
from transformers import VisualBertConfig, VisualBertForPreTraining

from vlm_hf import VlmHfConfig, VlmHfForPreTraining


def make_inputs(batch_size: int, text_length: int, num_visual: int, feature_dim: int, vocab_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch_size, text_length), generator=generator)
    masked = torch.rand(batch_size, text_length, generator=generator) < 0.15
    masked[:, 1] = True  # at least one masked token per text
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    return {
        "input_ids": input_ids.masked_fill(masked, 103),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
        "visual_embeds": torch.randn(batch_size, num_visual, feature_dim, generator=generator),
        "visual_attention_mask": torch.ones(batch_size, num_visual, dtype=torch.long),
        "labels": labels,
        "itm_labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }


def vlm_hf_batch(inputs):
    return dict(inputs)


def visual_bert_batch(inputs):
    batch = {k: v for k, v in inputs.items() if k not in ("labels", "itm_labels")}
    num_visual = inputs["visual_embeds"].shape[1]
    # VisualBERT scores every position (text and visual); visual positions are ignored in its loss.
    batch["labels"] = torch.cat([inputs["labels"], torch.full((inputs["labels"].shape[0], num_visual), -100)], dim=1)
    batch["sentence_image_labels"] = 1 - inputs["itm_labels"]  # VisualBERT: 0 = matched
    batch["visual_token_type_ids"] = torch.ones(inputs["visual_attention_mask"].shape, dtype=torch.long)
    return batch


def build_models(feature_dim: int):
    torch.manual_seed(0)
    ours = VlmHfForPreTraining(VlmHfConfig(vision_backbone=None, visual_feature_dim=feature_dim))
    theirs = VisualBertForPreTraining(VisualBertConfig(visual_embedding_dim=feature_dim))
    return ours, theirs


def training_step(model, batch):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_forward(model, batch):
    model.eval()

    def forward():
        with torch.inference_mode():
            model(**batch)

    return forward


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6, help="timed steps of each model, alternating")
    args = parser.parse_args()

    inputs = make_inputs(args.batch_size, text_length=24, num_visual=49, feature_dim=2048, vocab_size=30522)
    ours, theirs = build_models(feature_dim=2048)
    base_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "itm_labels")}
    their_base_inputs = {
        k: v for k, v in visual_bert_batch(inputs).items() if k not in ("labels", "sentence_image_labels")
    }

    rows = [
        (
            "training step (ForPreTraining)",
            *compare(
                training_step(ours, vlm_hf_batch(inputs)), training_step(theirs, visual_bert_batch(inputs)), args.rounds
            ),
        ),
        (
            "inference forward (base model)",
            *compare(
                inference_forward(ours.vlm_hf, base_inputs),
                inference_forward(theirs.visual_bert, their_base_inputs),
                args.rounds,
            ),
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print(f"{'measure':34s} {'vlm_hf samples/s':>17s} {'VisualBERT samples/s':>21s} {'ratio':>7s}")
    for name, ours_s, theirs_s in rows:
        print(
            f"{name:34s} {args.batch_size / ours_s:17.2f} {args.batch_size / theirs_s:21.2f} {theirs_s / ours_s:6.2f}x"
        )


if __name__ == "__main__":
    main()
