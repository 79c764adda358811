"""Evaluation: VQA soft accuracy per question type, retrieval Recall@K both ways, image-text matching P/R/F1."""

from collections import Counter, defaultdict

import torch

from .data.collators import pick_captions


def batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


def vqa_accuracy(predictions: list[str], rows: list[dict]) -> dict:
    """Standard VQA soft accuracy (the predicted answer's soft score), overall and per question type."""
    per_type = defaultdict(list)
    questions = [
        (t, dict(zip(a, s, strict=True)))
        for row in rows
        for t, a, s in zip(row["question_types"], row["answers"], row["answer_scores"], strict=True)
    ]
    for prediction, (question_type, scores) in zip(predictions, questions, strict=True):
        per_type[question_type].append(min(1.0, scores.get(prediction, 0.0)))
    everything = [score for scores in per_type.values() for score in scores]
    return {
        "accuracy": sum(everything) / max(len(everything), 1),
        "per_type": {t: sum(s) / len(s) for t, s in sorted(per_type.items())},
        "num_questions": len(everything),
    }


@torch.inference_mode()
def evaluate_vqa(model, processor, dataset, batch_size: int = 32) -> dict:
    model.eval()
    predictions = []
    for rows in batches(dataset, batch_size):
        inputs = processor(images=[r["image"] for r in rows], text=[list(r["questions"]) for r in rows])
        logits = model(**inputs).logits
        predictions += [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    return vqa_accuracy(predictions, list(answer_columns(dataset)))


def answer_columns(dataset):
    """The rows without their images, so that scoring decodes no image."""
    return dataset.select_columns(["questions", "question_types", "answers", "answer_scores"])


def question_only_baseline(train_dataset, eval_dataset) -> dict:
    """The best any model that ignores the image can do on this data: the most frequent training answer of each
    question (falling back to the most frequent answer overall)."""
    by_question, overall = defaultdict(Counter), Counter()
    for row in train_dataset.select_columns(["questions", "answers"]):
        for question, answers in zip(row["questions"], row["answers"], strict=True):
            by_question[question][answers[0]] += 1
            overall[answers[0]] += 1
    default = overall.most_common(1)[0][0]
    rows = list(answer_columns(eval_dataset))
    predictions = [
        by_question[q].most_common(1)[0][0] if q in by_question else default for row in rows for q in row["questions"]
    ]
    return vqa_accuracy(predictions, rows)


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Share of queries (rows of `similarity`) whose top k candidates hold a positive (`positives`, same shape)."""
    ranking = similarity.argsort(dim=1, descending=True)
    hits = positives.gather(1, ranking)
    return {f"R@{k}": hits[:, :k].any(1).float().mean().item() for k in ks}


@torch.inference_mode()
def evaluate_retrieval(model, processor, dataset, batch_size: int = 32, seed: int = 0) -> dict:
    """Recall@1/5/10 text->image and image->text over every caption, and ITM precision/recall/F1 on matched and
    mismatched pairs."""
    model.eval()
    image_embeds, text_embeds, text_image = [], [], []
    true_positive = false_positive = false_negative = 0
    generator = torch.Generator().manual_seed(seed)
    for offset, rows in zip(range(0, len(dataset), batch_size), batches(dataset, batch_size), strict=True):
        # One pass per batch: each image with one caption (its own or another's) gives the image embeddings and
        # the image-text matching decisions; every caption is then embedded on its own.
        texts, labels = pick_captions(rows, 0.5, generator)
        out = model(**processor(images=[r["image"] for r in rows], text=texts))
        image_embeds.append(out.image_embeds)
        itm, labels = out.itm_logits.argmax(-1), torch.tensor(labels)
        captions = [c for r in rows for c in r["captions"]]
        text_embeds.append(model.get_text_features(**processor.tokenizer(captions, padding=True, return_tensors="pt")))
        text_image += [offset + i for i, r in enumerate(rows) for _ in r["captions"]]
        true_positive += int(((itm == 1) & (labels == 1)).sum())
        false_positive += int(((itm == 1) & (labels == 0)).sum())
        false_negative += int(((itm == 0) & (labels == 1)).sum())
    images = torch.nn.functional.normalize(torch.cat(image_embeds), dim=-1)
    texts = torch.nn.functional.normalize(torch.cat(text_embeds), dim=-1)
    positives = torch.nn.functional.one_hot(torch.tensor(text_image), len(images)).bool()
    similarity = texts @ images.t()
    precision = true_positive / max(true_positive + false_positive, 1)
    recall = true_positive / max(true_positive + false_negative, 1)
    return {
        "text_to_image": recall_at_k(similarity, positives),
        "image_to_text": recall_at_k(similarity.t(), positives.t()),
        "itm": {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        },
    }
