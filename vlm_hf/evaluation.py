"""Evaluation: VQA soft accuracy per question type, retrieval Recall@K both ways, image-text matching P/R/F1, caption
BLEU-1..4 / CIDEr-D / ROUGE-L / METEOR with pycocoevalcap (the `eval` extra)."""

import re
import shutil
from collections import Counter, defaultdict

import torch

from .data.collators import pick_captions
from .tokenization import special_token_ids


def batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


def vqa_accuracy(predictions: list[str], rows: list[dict]) -> dict:
    """
    Standard VQA accuracy, overall and per question type: the predicted answer's official accuracy where the rows
    carry `answer_accuracies` (VQA v2: min(matches / 3, 1) averaged over leaving out each annotator), else its soft
    score.
    """
    per_type = defaultdict(list)
    questions = [
        (question_type, dict(zip(answers, scores, strict=True)))
        for row in rows
        for question_type, answers, scores in zip(
            row["question_types"], row["answers"], row.get("answer_accuracies") or row["answer_scores"], strict=True
        )
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


# -- captioning -------------------------------------------------------------------------------------------------------

EVAL_EXTRA = "pip install 'vlm-hf[eval]'"
# Abbreviations whose final period Stanford's PTBTokenizer keeps as part of the word (mr. -> "mr.", bike. -> "bike .").
ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc inc co ltd mt ft ave jan feb".split())
PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
PTB_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me"}
CLITICS = r"(?:s|m|d|re|ve|ll)\b"


def require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"caption metrics need pycocoevalcap (the COCO caption evaluation), an optional dependency: {EVAL_EXTRA}"
        ) from error


def ptb_tokenize(caption: str) -> str:
    """
    coco-caption's tokenisation without Java: what Stanford's PTBTokenizer (`-preserveLines -lowerCase`, the jar
    pycocoevalcap runs) followed by pycocoevalcap's removal of its PUNCTUATIONS gives, for ordinary caption text.
    Lowercased; quotes, periods, commas, colons, semicolons, a single ! or ?, dashes and ellipses go; clitics split
    (do n't, it 's, they 're); $ % # @ + * and !!! / ?! stay as tokens; numbers keep 5,000 / 3.5 / 10:30. Brackets
    become -lrb- -rrb- ... and stay, as in pycocoevalcap, whose list holds only the upper-case -LRB-, which
    `-lowerCase` never produces. Rarer cases differ from the Java tokenizer: abbreviations outside ABBREVIATIONS lose
    their period, PTB's context rules ("no. 5") and odd words ('tis, rock'n'roll, a....b) are not reproduced.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    text = caption.replace("\n", " ").lower()
    for bracket, token in PTB_BRACKETS.items():
        text = text.replace(bracket, f" {token} ")
    text = re.sub(r'"|\.\.\.+|--+', " ", text)  # quotes (`` ''), ellipses and dashes: removed
    text = re.sub(r"[!?]+|[;$%#@+*]", r" \g<0> ", text)
    text = re.sub(r"(?<!\d)[,:]|[,:](?!\d)", " ", text)  # removed, but kept inside numbers
    text = re.sub(rf"(?<!\S)'(?!{CLITICS}|\d)", " ", text)  # an opening single quote (`), not '90s
    text = re.sub(rf"(?<=[a-z0-9])'({CLITICS})", r" '\1", text)  # it's -> it 's
    text = re.sub(r"'(?=\s|$)", " ", text)  # a closing quote, or the dogs' -> dogs '
    text = re.sub(r"n't\b", " n't", text)  # don't -> do n't
    tokens = []
    for word in text.split():
        word = PTB_SPLIT_WORDS.get(word, word)
        if len(word) > 1 and word.endswith(".") and not is_abbreviation(word):
            word = word.rstrip(".")  # the sentence's period, split off and removed
        tokens += word.split()
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


def is_abbreviation(word: str) -> bool:
    return re.fullmatch(r"(?:[a-z]\.)+", word) is not None or word[:-1] in ABBREVIATIONS


def tokenize_captions(captions: dict[int, list[str]], tokenization: str) -> dict[int, list[str]]:
    """Each image's captions tokenized as coco-caption does: `"ptb"` runs pycocoevalcap's PTBTokenizer (Java),
    `"python"` `ptb_tokenize`."""
    if tokenization == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    return {key: [ptb_tokenize(c) for c in texts] for key, texts in captions.items()}


def score_captions(
    candidates: list[str], references: list[list[str]], tokenization: str = "auto", meteor: bool | None = None
) -> dict:
    """
    coco-caption's scores of one candidate per image against the image's references, with pycocoevalcap's scorers:
    BLEU-1..4 (Bleu(4)), CIDEr-D (its Cider), ROUGE-L (Rouge) and, where Java runs, METEOR (Meteor). The captions are
    first tokenized with PTBTokenizer (`tokenization="ptb"`, Java) or its Python equivalent (`"python"`); `"auto"`
    takes PTBTokenizer when `java` is on the PATH. `meteor=None` scores METEOR when Java is there; without it the
    result says why it is missing (`METEOR_skipped`). CIDEr-D's document frequencies come from these references.
    """
    require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not candidates or len(candidates) != len(references):
        raise ValueError(
            f"candidates and references must be non-empty and as long as each other, got {len(candidates)} "
            f"candidates and {len(references)} reference lists"
        )
    if not all(references):
        raise ValueError("references: every image needs at least one reference caption")
    if tokenization not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenization must be 'auto', 'ptb' or 'python', got {tokenization!r}")
    has_java = shutil.which("java") is not None
    if tokenization == "auto":
        tokenization = "ptb" if has_java else "python"
    if (tokenization == "ptb" or meteor) and not has_java:
        raise ValueError("PTBTokenizer and METEOR run on Java, and no `java` is on the PATH")
    references_by_image = tokenize_captions(dict(enumerate(references)), tokenization)
    candidate_by_image = tokenize_captions({i: [c] for i, c in enumerate(candidates)}, tokenization)
    bleu, _ = Bleu(4).compute_score(references_by_image, candidate_by_image, verbose=0)
    scores = {f"BLEU-{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["CIDEr-D"] = float(Cider().compute_score(references_by_image, candidate_by_image)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(references_by_image, candidate_by_image)[0])
    if meteor is None:
        meteor = has_java
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()  # a Java process, ended when the scorer is deleted
        scores["METEOR"] = float(scorer.compute_score(references_by_image, candidate_by_image)[0])
        del scorer
    else:
        scores["METEOR_skipped"] = "no `java` on the PATH" if not has_java else "not asked for (meteor=False)"
    scores["tokenization"] = "PTBTokenizer (Java)" if tokenization == "ptb" else "Python equivalent of PTBTokenizer"
    return scores


@torch.inference_mode()
def evaluate_captioning(
    model,
    processor,
    dataset,
    batch_size: int = 32,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    meteor: bool | None = None,
    num_samples: int = 5,
) -> dict:
    """
    Caption every image (the empty prompt, greedy or beam search) and score the captions against all of the image's
    reference `captions` with `score_captions`. Returns the metrics, `num_images` and the first `num_samples`
    generated captions with their references. Images without captions are left out.
    """
    require_pycocoevalcap()
    model.eval()
    references = [list(captions) for captions in dataset.select_columns(["captions"])["captions"]]
    captioned = [i for i, captions in enumerate(references) if captions]
    if not captioned:
        raise ValueError("the dataset has no captions to score generated captions against")
    if len(captioned) < len(references):
        dataset, references = dataset.select(captioned), [references[i] for i in captioned]
    tokenizer = processor.tokenizer
    special = special_token_ids(tokenizer)
    generated = []
    for rows in batches(dataset, batch_size):
        inputs = processor(images=[r["image"] for r in rows], text=[""] * len(rows)).to(model.device)
        tokens = model.generate(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, use_cache=True, **special
        )
        generated += tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    result = score_captions(generated, references, meteor=meteor)
    result["num_images"] = len(generated)
    result["samples"] = [
        {"generated": text, "references": refs} for text, refs in zip(generated[:num_samples], references, strict=False)
    ]
    return result
