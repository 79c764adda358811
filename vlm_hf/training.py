"""Trainer-based pretraining and fine-tuning (`vlm-hf pretrain`, `vlm-hf finetune --task ...`)."""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoProcessor, HfArgumentParser, Trainer, TrainingArguments, set_seed

from .configuration_vlm_hf import VlmHfConfig
from .data import PretrainingCollator, RetrievalCollator, VqaCollator, answer_vocabulary, generate_synthetic_dataset
from .image_processing_vlm_hf import VlmHfImageProcessor
from .modeling_vlm_hf import VlmHfForImageTextRetrieval, VlmHfForPreTraining, VlmHfForQuestionAnswering
from .processing_vlm_hf import VlmHfProcessor
from .tokenization import train_wordpiece_tokenizer

TASK_MODELS = {"vqa": VlmHfForQuestionAnswering, "retrieval": VlmHfForImageTextRetrieval}


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' (generated scenes)"})
    num_train_images: int = field(default=2000, metadata={"help": "synthetic scenes to train on"})
    image_size: int = field(default=128, metadata={"help": "side of the synthetic scenes, and of the processed images"})
    max_objects: int = field(default=3, metadata={"help": "most objects in a synthetic scene"})
    data_seed_offset: int = field(default=0, metadata={"help": "added to --seed for the synthetic data"})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a vlm_hf folder to start from (model and processor); else a new model"}
    )
    vision_backbone: str = field(default="resnet18")
    hidden_size: int = field(default=256)
    num_hidden_layers: int = field(default=4)
    visual_grid: int = field(default=4)
    freeze_vision: bool = field(default=False, metadata={"help": "keep the vision backbone fixed"})
    vocab_size: int = field(default=1000, metadata={"help": "size of the WordPiece vocabulary trained for a new model"})
    hidden_dropout_prob: float = field(default=0.1)
    attention_probs_dropout_prob: float = field(default=0.1)


def parse_arguments(argv: list[str] | None, prog: str) -> tuple[DataArguments, ModelArguments, TrainingArguments]:
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainingArguments), prog=prog)
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    folder = model_args.model_name_or_path
    if folder and not Path(folder, "config.json").is_file():
        parser.error(f"--model_name_or_path {folder!r} is not a saved vlm_hf folder (no config.json)")
    if data_args.dataset != "synthetic":
        parser.error(f"--dataset {data_args.dataset!r} is not supported yet; use 'synthetic'")
    training_args.remove_unused_columns = False  # the collators read the raw image and text columns
    set_seed(training_args.seed)  # before the model is built, so that a new model's weights follow --seed
    return data_args, model_args, training_args


def load_dataset(data_args: DataArguments, seed: int):
    return generate_synthetic_dataset(
        data_args.num_train_images,
        seed=seed + data_args.data_seed_offset,
        image_size=data_args.image_size,
        max_objects=data_args.max_objects,
    )


def corpus_of(dataset) -> list[str]:
    return [t for row in dataset.select_columns(["captions", "questions"]) for t in row["captions"] + row["questions"]]


def build_processor(model_args: ModelArguments, data_args: DataArguments, dataset) -> VlmHfProcessor:
    if model_args.model_name_or_path:
        return AutoProcessor.from_pretrained(model_args.model_name_or_path)
    tokenizer = train_wordpiece_tokenizer(corpus_of(dataset), vocab_size=model_args.vocab_size, min_frequency=1)
    side = data_args.image_size
    image_processor = VlmHfImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return VlmHfProcessor(image_processor, tokenizer)


def build_model(model_class, model_args: ModelArguments, processor, **config_overrides):
    training_options = {
        "freeze_vision": model_args.freeze_vision,
        "hidden_dropout_prob": model_args.hidden_dropout_prob,
        "attention_probs_dropout_prob": model_args.attention_probs_dropout_prob,
    }
    if model_args.model_name_or_path:
        return model_class.from_pretrained(model_args.model_name_or_path, **training_options, **config_overrides)
    config = VlmHfConfig(
        vocab_size=len(processor.tokenizer),
        vision_backbone=model_args.vision_backbone,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        visual_grid=model_args.visual_grid,
        **training_options,
        **config_overrides,
    )
    return model_class(config)


def train(model, processor, dataset, collator, training_args: TrainingArguments) -> Trainer:
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return trainer


def pretrain(argv: list[str] | None = None) -> Trainer:
    data_args, model_args, training_args = parse_arguments(argv, prog="vlm-hf pretrain")
    dataset = load_dataset(data_args, training_args.seed)
    processor = build_processor(model_args, data_args, dataset)
    model = build_model(VlmHfForPreTraining, model_args, processor)
    collator = PretrainingCollator(processor, model.config.num_visual_tokens, seed=training_args.seed)
    return train(model, processor, dataset, collator, training_args)


def finetune(task: str, argv: list[str] | None = None) -> Trainer:
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}.")
    data_args, model_args, training_args = parse_arguments(argv, prog=f"vlm-hf finetune --task {task}")
    dataset = load_dataset(data_args, training_args.seed)
    processor = build_processor(model_args, data_args, dataset)
    if task == "vqa":
        labels = answer_vocabulary(data_args.max_objects)
        label2id = {label: i for i, label in enumerate(labels)}
        model = build_model(
            VlmHfForQuestionAnswering,
            model_args,
            processor,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label2id,
        )
        collator = VqaCollator(processor, label2id)
    else:
        model = build_model(VlmHfForImageTextRetrieval, model_args, processor)
        collator = RetrievalCollator(processor, seed=training_args.seed)
    return train(model, processor, dataset, collator, training_args)


__all__ = ["pretrain", "finetune", "DataArguments", "ModelArguments"]
