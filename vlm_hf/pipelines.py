"""The `visual-question-answering` pipeline (transformers 5 removed its own) for answer-classification models."""

import torch
from transformers import AutoModelForVisualQuestionAnswering, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS

TASK = "visual-question-answering"


class VisualQuestionAnsweringPipeline(Pipeline):
    """
    Answers questions about images with a model that classifies over an answer vocabulary (`config.id2label`), such
    as [`VlmHfForQuestionAnswering`].

    ```python
    >>> from transformers import pipeline
    >>> vqa = pipeline("visual-question-answering", model="path/to/model")
    >>> vqa(image="scene.png", question="what colour is the circle?", top_k=3)
    [{'answer': 'red', 'score': 0.93}, {'answer': 'blue', 'score': 0.04}, {'answer': 'green', 'score': 0.01}]
    ```

    Inputs: `image` (PIL image, file path or array) and `question`; lists of both (paired one to one, or several
    questions about one image); or a list of `{"image": ..., "question": ...}` dicts. Scores are the sigmoid of the
    logits, as the models are trained with binary cross-entropy against soft answer scores.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, image=None, question=None, **kwargs):
        if isinstance(image, dict) or (isinstance(image, list) and image and isinstance(image[0], dict)):
            return super().__call__(image, **kwargs)
        if image is None or question is None:
            raise ValueError("The visual-question-answering pipeline needs an `image` and a `question`.")
        single = not isinstance(question, (list, tuple)) and not isinstance(image, (list, tuple))
        questions = [question] if isinstance(question, str) else list(question)
        images = list(image) if isinstance(image, (list, tuple)) else [image] * len(questions)
        if len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        if len(images) != len(questions):
            raise ValueError(f"Got {len(images)} images and {len(questions)} questions: pair them one to one.")
        pairs = [{"image": i, "question": q} for i, q in zip(images, questions, strict=True)]
        results = super().__call__(pairs, **kwargs)
        return results[0] if single else results

    def _sanitize_parameters(self, top_k=None, padding=None, truncation=None, **kwargs):
        preprocess_params = {k: v for k, v in {"padding": padding, "truncation": truncation}.items() if v is not None}
        postprocess_params = {"top_k": top_k} if top_k is not None else {}
        return preprocess_params, {}, postprocess_params

    def preprocess(self, inputs, padding=False, truncation=True):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError("Each input must be a dict with an 'image' and a 'question'.")
        model_inputs = self.image_processor(inputs["image"], return_tensors="pt")
        model_inputs = model_inputs.to(self.dtype)
        model_inputs.update(
            self.tokenizer(inputs["question"], return_tensors="pt", padding=padding, truncation=truncation)
        )
        return model_inputs

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k=5):
        scores = model_outputs["logits"][0].float().sigmoid()
        top_k = min(top_k, scores.shape[-1])
        values, indices = torch.topk(scores, top_k)
        labels = self.model.config.id2label
        return [{"answer": labels[i], "score": s} for s, i in zip(values.tolist(), indices.tolist(), strict=True)]


def register_pipeline() -> None:
    """Make `pipeline("visual-question-answering", ...)` available again (idempotent)."""
    for task in (TASK, "vqa"):
        REMOVED_TASKS.pop(task, None)
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is not VisualQuestionAnsweringPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK,
            pipeline_class=VisualQuestionAnsweringPipeline,
            pt_model=AutoModelForVisualQuestionAnswering,
            type="multimodal",
        )
