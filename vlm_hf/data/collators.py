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


def same_image(row: dict, other: dict) -> bool:
    """Whether two rows show the same image, as far as their `image_id`s tell (one-caption rows of a pair corpus
    repeat an image under its id)."""
    return bool(row.get("image_id")) and row.get("image_id") == other.get("image_id")


def pick_captions(rows: list[dict], negative_rate: float, generator: torch.Generator) -> tuple[list[str], list[int]]:
    """One caption per image; with probability `negative_rate` it comes from another image (another row, not with
    the same `image_id`) and is not one of the image's own captions (label 0), else from the image itself (label 1)."""
    texts, labels = [], []
    for i, row in enumerate(rows):
        own = list(row["captions"])
        others = [other for j, other in enumerate(rows) if j != i and not same_image(row, other)]
        foreign = [c for other in others for c in other["captions"] if c not in own]
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


def boxes_in_crop(boxes: torch.Tensor, width: int, height: int, image_processor) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1) given as fractions of a `width` x `height` image, as fractions of what the image processor
    makes of it: the shortest edge resized, then (with `do_center_crop`) the center crop."""
    if image_processor.do_pad:
        raise ValueError(
            "region labels from object boxes need the image processor's center-crop layout; it pads (do_pad=True)."
        )
    if not image_processor.do_center_crop:
        return boxes  # a resize keeps fractions as they are
    scale = image_processor.size["shortest_edge"] / min(width, height)
    crop_width, crop_height = image_processor.crop_size["width"], image_processor.crop_size["height"]
    offset_x, offset_y = (width * scale - crop_width) / 2, (height * scale - crop_height) / 2
    pixels = boxes * torch.tensor([width, height, width, height]) * scale
    return (pixels - torch.tensor([offset_x, offset_y, offset_x, offset_y])) / torch.tensor(
        [crop_width, crop_height, crop_width, crop_height]
    )


def grid_region_labels(boxes: torch.Tensor, class_ids: torch.Tensor, grid: int) -> torch.Tensor:
    """
    (grid * grid,) class ids of the cells of a `grid` x `grid` visual grid, row by row: the class of the smallest box
    that covers the cell's centre (the object in front, usually), 0 (background) where none does. Boxes are
    (x0, y0, x1, y1) fractions of the processed image.
    """
    if len(boxes) == 0:
        return torch.zeros(grid * grid, dtype=torch.long)
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # (cells, 1) against (boxes,)
    covers = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    labels = class_ids[torch.where(covers, area, torch.inf).argmin(dim=1)]
    return torch.where(covers.any(dim=1), labels, 0)


class RegionLabeller:
    """Per-visual-token class ids from a row's `objects` (`name`s and `box`es as fractions of the image), for the
    region classification head: grid cells get the class of the object on their centre; tokens before the grid
    (ViLBERT's [IMG], VL-BERT's whole image) get -100."""

    def __init__(self, class_names: list[str], visual_grid: int, num_visual_tokens: int, image_processor):
        self.class2id = {name: i for i, name in enumerate(class_names)}
        self.grid, self.image_processor = visual_grid, image_processor
        self.leading_tokens = num_visual_tokens - visual_grid**2

    def __call__(self, rows: list[dict]) -> torch.Tensor:
        return torch.stack([self.row_labels(row) for row in rows])

    def row_labels(self, row: dict) -> torch.Tensor:
        objects = row["objects"]
        unknown = sorted(set(objects["name"]) - set(self.class2id))
        if unknown:
            raise ValueError(f"objects named {unknown} are not region classes of this model ({list(self.class2id)}).")
        boxes = torch.tensor(objects["box"], dtype=torch.float32).reshape(-1, 4)
        width, height = row["image"].size
        boxes = boxes_in_crop(boxes, width, height, self.image_processor)
        class_ids = torch.tensor([self.class2id[name] for name in objects["name"]], dtype=torch.long)
        cells = grid_region_labels(boxes, class_ids, self.grid)
        return torch.cat([torch.full((self.leading_tokens,), -100), cells])


class PretrainingCollator:
    """
    Masked LM, image-text matching and masked visual-feature regression, and region classification when a
    `region_labeller` is given (rows with `objects`). Half the captions (`itm_negative_rate`) belong to another
    image; masked LM and masked visual features apply to matching pairs only, since a caption of another image says
    nothing reliable about this one.
    """

    def __init__(
        self,
        processor,
        num_visual_tokens: int,
        mlm_probability: float = 0.15,
        itm_negative_rate: float = 0.5,
        mvf_probability: float = 0.15,
        seed: int = 0,
        region_labeller: RegionLabeller | None = None,
    ):
        self.processor, self.num_visual_tokens = processor, num_visual_tokens
        self.mlm_probability, self.itm_negative_rate, self.mvf_probability = (
            mlm_probability,
            itm_negative_rate,
            mvf_probability,
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.region_labeller = region_labeller

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
        if self.region_labeller is not None:
            batch["region_labels"] = self.region_labeller(rows)
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


class CaptioningCollator:
    """
    Teacher forcing for `VlmHfForConditionalGeneration`: each image with one of its own captions, drawn at random,
    after the empty prompt. The tokenizer's text pair gives `[CLS] [SEP] caption [SEP]` with token type 0 on the
    prompt and 1 on the caption; `labels` are the caption tokens and their [SEP], -100 on the prompt and padding (the
    model shifts them).
    """

    def __init__(self, processor, seed: int = 0):
        self.processor = processor
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: list[dict]) -> dict:
        captions, _ = pick_captions(rows, 0.0, self.generator)
        # The processor takes no text pairs: it makes the images, its tokenizer the pairs (with the processor's
        # padding and truncation).
        batch = dict(self.processor(images=[row["image"] for row in rows]))
        prompts = [""] * len(rows)
        text = self.processor.tokenizer(prompts, captions, padding=True, truncation=True, return_tensors="pt")
        batch.update(text)
        prompt_or_padding = (text["token_type_ids"] == 0) | (text["attention_mask"] == 0)
        batch["labels"] = text["input_ids"].masked_fill(prompt_or_padding, -100)
        return batch
