"""Batch collators: raw dataset rows (PIL images and strings) -> model inputs with the targets of each objective.

Rows are per image (`image`, `captions`, and parallel `questions` / `answers` / `answer_scores` lists), so a batch
of images carries all of their questions and each image goes through the backbone once (`image_index`).
"""

import torch


def soft_score_targets(answers, scores, label2id: dict[str, int]) -> torch.Tensor:
    """(num_questions, num_labels) VQA targets; answers outside the vocabulary score nothing."""
    targets = torch.zeros(len(answers), len(label2id))
    for row, (candidates, values) in enumerate(zip(answers, scores, strict=True)):
        for answer, score in zip(candidates, values, strict=True):
            if answer in label2id:
                targets[row, label2id[answer]] = score
    return targets


class VqaCollator:
    """Questions with their images; `labels` are soft answer scores over `label2id`."""

    def __init__(self, processor, label2id: dict[str, int]):
        self.processor, self.label2id = processor, label2id

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.processor(images=[row["image"] for row in rows], text=[list(row["questions"]) for row in rows])
        answers = [a for row in rows for a in row["answers"]]
        scores = [s for row in rows for s in row["answer_scores"]]
        batch["labels"] = soft_score_targets(answers, scores, self.label2id)
        return dict(batch)


def pick_captions(rows: list[dict], negative_rate: float, generator: torch.Generator) -> tuple[list[str], list[int]]:
    """One caption per image; with probability `negative_rate` it comes from another image and is not one of the
    image's own captions (label 0), else from the image itself (label 1)."""
    texts, labels = [], []
    for i, row in enumerate(rows):
        own = list(row["captions"])
        foreign = [c for j, other in enumerate(rows) if j != i for c in other["captions"] if c not in own]
        if foreign and torch.rand((), generator=generator) < negative_rate:
            texts.append(foreign[int(torch.randint(len(foreign), (), generator=generator))])
            labels.append(0)
        else:
            texts.append(own[int(torch.randint(len(own), (), generator=generator))])
            labels.append(1)
    return texts, labels


def mask_tokens(input_ids, special_tokens_mask, tokenizer, probability: float, generator: torch.Generator):
    """BERT's masking: `probability` of the real tokens are targets; of those 80% become [MASK], 10% a random
    token and 10% stay. Returns the new ids and the labels (-100 where nothing is predicted)."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special_tokens_mask
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    randomised = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[randomised] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomised]
    return masked, labels


class PretrainingCollator:
    """
    Masked LM, image-text matching and masked visual-feature regression. Half the captions (`itm_negative_rate`)
    belong to another image; masked LM and masked visual features apply to matching pairs only, since a caption of
    another image says nothing reliable about this one.
    """

    def __init__(
        self,
        processor,
        num_visual_tokens: int,
        mlm_probability: float = 0.15,
        itm_negative_rate: float = 0.5,
        mvf_probability: float = 0.15,
        seed: int = 0,
    ):
        self.processor, self.num_visual_tokens = processor, num_visual_tokens
        self.mlm_probability, self.itm_negative_rate, self.mvf_probability = (
            mlm_probability,
            itm_negative_rate,
            mvf_probability,
        )
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: list[dict]) -> dict:
        texts, matched = pick_captions(rows, self.itm_negative_rate, self.generator)
        batch = dict(self.processor(images=[row["image"] for row in rows], text=texts, return_special_tokens_mask=True))
        special = batch.pop("special_tokens_mask").bool()
        itm_labels = torch.tensor(matched)
        non_matching = itm_labels == 0
        special[non_matching] = True  # no masked LM on mismatched pairs
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], special, self.processor.tokenizer, self.mlm_probability, self.generator
        )
        visual_mask = torch.rand(len(rows), self.num_visual_tokens, generator=self.generator) < self.mvf_probability
        visual_mask[non_matching] = False
        batch["itm_labels"], batch["visual_feature_mask"] = itm_labels, visual_mask
        return batch


class RetrievalCollator:
    """Each image with one of its captions, plus (at `itm_negative_rate`) a caption of another image as a
    mismatched pair: contrastive loss on the matching pairs, image-text matching on all."""

    def __init__(self, processor, itm_negative_rate: float = 0.5, seed: int = 0):
        self.processor, self.itm_negative_rate = processor, itm_negative_rate
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: list[dict]) -> dict:
        positives, _ = pick_captions(rows, 0.0, self.generator)
        negatives, negative_labels = pick_captions(rows, 1.0, self.generator)  # label 1: no other image to draw from
        texts, itm_labels = [], []  # per image: its own caption, then maybe another image's
        for positive, negative, label in zip(positives, negatives, negative_labels, strict=True):
            add_negative = label == 0 and torch.rand((), generator=self.generator) < self.itm_negative_rate
            texts.append([positive, negative] if add_negative else [positive])
            itm_labels += [1, 0] if add_negative else [1]
        batch = dict(self.processor(images=[row["image"] for row in rows], text=texts))
        batch["labels"] = torch.tensor(itm_labels)
        batch["return_loss"] = True
        return batch
