"""Trainer-based pretraining and fine-tuning (`vlm-hf pretrain`, `vlm-hf finetune --task ...`)."""

from dataclasses import dataclass, field
from pathlib import Path

import datasets
from accelerate.data_loader import IterableDatasetShard
from datasets.distributed import split_dataset_by_node
from transformers import AutoProcessor, HfArgumentParser, Trainer, TrainingArguments, set_seed

from .configuration_vlm_hf import VlmHfConfig
from .data import (
    CaptioningCollator,
    PretrainingCollator,
    RegionLabeller,
    RetrievalCollator,
    VqaCollator,
    answer_vocabulary,
    generate_synthetic_dataset,
)
from .data.sources import DataSourceArguments, arrange_rows, check_data_arguments, load_data
from .data.streaming import ProcessPart
from .data.vqa_answers import answer_vocabulary_from
from .image_processing_vlm_hf import VlmHfImageProcessor
from .model_card import TrainingSummary, write_model_card
from .modeling_vlm_hf import (
    VlmHfForConditionalGeneration,
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
)
from .processing_vlm_hf import VlmHfProcessor
from .tokenization import special_token_ids, train_wordpiece_tokenizer

TASK_MODELS = {
    "vqa": VlmHfForQuestionAnswering,
    "retrieval": VlmHfForImageTextRetrieval,
    "captioning": VlmHfForConditionalGeneration,
}
UNITER_LOCATION_DIM = 7  # UNITER's box features: x1, y1, x2, y2, w, h, w*h
TOKENIZER_SAMPLE = 20_000  # rows of a stream that a new model's tokenizer learns from


@dataclass
class DataArguments(DataSourceArguments):
    """`--dataset` and its files (see `vlm_hf.data.sources`), and the synthetic scenes' settings."""

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
    num_attention_heads: int | None = field(default=None, metadata={"help": "default: hidden_size // 64"})
    visual_embedding_type: str = field(
        default="default",
        metadata={
            "help": "how visual tokens are embedded (`uniter`: feature and box each normalised before they are added, "
            "so where a token is weighs as much as what it shows: what questions about positions need)",
            "choices": ["default", "uniter"],
        },
    )
    vision_feature_layer: str | None = field(
        default=None, metadata={"help": "ResNet stage that gives the grid (layer1..layer4; default: the last)"}
    )
    visual_grid: int = field(default=4)
    initializer_range: float = field(
        default=0.02, metadata={"help": "std of a new model's Transformer weights (larger learns faster when small)"}
    )
    freeze_vision: bool | None = field(
        default=None,
        metadata={
            "help": "keep the vision backbone fixed (default: as the --model_name_or_path folder has it, else no)",
            "nargs": "?",  # a bare --freeze_vision means True, as for the Trainer's own flags
            "const": True,
        },
    )
    region_classification: str = field(
        default="none",
        metadata={
            "help": "pretraining: classify the visual tokens into the object classes of the data's `objects` boxes "
            "(the masked tokens, or all of them: this teaches a new backbone what its grid cells show)",
            "choices": ["none", "masked", "all"],
        },
    )
    vocab_size: int = field(default=1000, metadata={"help": "size of the WordPiece vocabulary trained for a new model"})
    hidden_dropout_prob: float | None = field(
        default=None, metadata={"help": "default: the --model_name_or_path folder's, else 0.1 (BERT's)"}
    )
    attention_probs_dropout_prob: float | None = field(
        default=None, metadata={"help": "default: the --model_name_or_path folder's, else 0.1 (BERT's)"}
    )


def parse_arguments(
    argv: list[str] | None, prog: str, task: str = "pretrain"
) -> tuple[DataArguments, ModelArguments, TrainingArguments]:
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainingArguments), prog=prog)
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    folder = model_args.model_name_or_path
    if folder and not Path(folder, "config.json").is_file():
        parser.error(f"--model_name_or_path {folder!r} is not a saved vlm_hf folder (no config.json)")
    try:  # every data file is checked before anything is written to --output_dir
        check_data_arguments(data_args, task, max_steps=training_args.max_steps)
    except ValueError as error:
        parser.error(str(error))
    if data_args.streaming:
        # Each process streams its own part (`for_this_process`). Batches dispatched from the main process would be
        # concatenated and re-sliced, which the image-grouped batches (questions per image vary) do not survive.
        training_args.accelerator_config.dispatch_batches = False
    training_args.remove_unused_columns = False  # the collators read the raw image and text columns
    set_seed(training_args.seed)  # before the model is built, so that a new model's weights follow --seed
    return data_args, model_args, training_args


def load_dataset(data_args: DataArguments, seed: int, task: str = "pretrain"):
    if data_args.dataset != "synthetic":
        return load_data(data_args, task)
    scenes = generate_synthetic_dataset(
        data_args.num_train_images,
        seed=seed + data_args.data_seed_offset,
        image_size=data_args.image_size,
        max_objects=data_args.max_objects,
    )
    return arrange_rows(scenes, data_args.group_by_image, task)


def for_this_process(dataset, data_args: DataArguments, training_args: TrainingArguments):
    """A stream, shuffled with the same seed everywhere, then split so that each process reads only its own part."""
    if not isinstance(dataset, datasets.IterableDataset):
        return dataset  # map-style: Accelerate's sampler gives each process its own rows
    if data_args.shuffle_buffer_size > 0:
        dataset = dataset.shuffle(seed=training_args.seed, buffer_size=data_args.shuffle_buffer_size)
    if training_args.world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=training_args.process_index, world_size=training_args.world_size)
    return ProcessPart(dataset)


def corpus_of(dataset) -> list[str]:
    rows = dataset.select_columns(["captions", "questions"])
    if isinstance(rows, datasets.IterableDataset):
        rows = rows.take(TOKENIZER_SAMPLE)  # the start of the (unsplit) stream, the same in every process
    return [t for row in rows for t in row["captions"] + row["questions"]]


def build_processor(model_args: ModelArguments, data_args: DataArguments, dataset) -> VlmHfProcessor:
    if model_args.model_name_or_path:
        return AutoProcessor.from_pretrained(model_args.model_name_or_path)
    tokenizer = train_wordpiece_tokenizer(corpus_of(dataset), vocab_size=model_args.vocab_size, min_frequency=1)
    side = data_args.image_size
    image_processor = VlmHfImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return VlmHfProcessor(image_processor, tokenizer)


def visual_embedding_options(kind: str) -> dict:
    if kind == "uniter":
        return {"visual_embedding_type": kind, "visual_location_dim": UNITER_LOCATION_DIM}
    return {"visual_embedding_type": kind}


def training_options(model_args: ModelArguments) -> dict:
    """The backbone freezing and dropout flags given on the command line: a saved folder keeps its own settings for
    the others, a new model takes the config's defaults (backbone trained, BERT's dropout 0.1)."""
    options = {
        "freeze_vision": model_args.freeze_vision,
        "hidden_dropout_prob": model_args.hidden_dropout_prob,
        "attention_probs_dropout_prob": model_args.attention_probs_dropout_prob,
    }
    return {name: value for name, value in options.items() if value is not None}


def build_model(model_class, model_args: ModelArguments, processor, **config_overrides):
    options = training_options(model_args)
    if model_args.model_name_or_path:
        return model_class.from_pretrained(model_args.model_name_or_path, **options, **config_overrides)
    config = VlmHfConfig(
        vocab_size=len(processor.tokenizer),
        vision_backbone=model_args.vision_backbone,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        **visual_embedding_options(model_args.visual_embedding_type),
        vision_feature_layer=model_args.vision_feature_layer,
        visual_grid=model_args.visual_grid,
        initializer_range=model_args.initializer_range,
        **options,
        **config_overrides,
    )
    return model_class(config)


class VlmHfTrainer(Trainer):
    """transformers' Trainer, told that a streamed `ProcessPart` is this process's share already."""

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        shard = getattr(dataloader, "dataset", None)
        if isinstance(shard, IterableDatasetShard) and isinstance(shard.dataset, ProcessPart):
            # Accelerate would keep one batch in `num_processes` of what this process reads: make it a pass-through
            # (as the Trainer does for its own rank-aware samplers).
            shard.num_processes, shard.process_index = 1, 0
        return dataloader


def train(
    model, processor, dataset, collator, training_args: TrainingArguments, dataset_name: str | None = None
) -> Trainer:
    trainer = VlmHfTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        # The card describes the saved folder (read back from its config, so sharded training counts right too).
        training = TrainingSummary.from_trainer(trainer, dataset_name=dataset_name)
        write_model_card(training_args.output_dir, training=training)
    return trainer


def has_objects(dataset) -> bool:
    """Whether the rows carry `objects` (names and boxes); a stream may know only its features."""
    return "objects" in (dataset.column_names or dataset.features or {})


def object_names(dataset) -> list[str]:
    """The object classes named in the data's `objects` column (the start of a stream), sorted."""
    rows = dataset.select_columns(["objects"])
    if isinstance(rows, datasets.IterableDataset):
        rows = rows.take(TOKENIZER_SAMPLE)
    return sorted({name for row in rows for name in row["objects"]["name"]})


def region_head_options(model_args: ModelArguments, dataset) -> dict:
    """Config of the region classification head that `--region_classification` asks for: a new model's classes are
    background plus the objects the data names; a saved model keeps its own."""
    if model_args.region_classification == "none":
        return {}
    if not has_objects(dataset):
        raise ValueError(
            f"--region_classification {model_args.region_classification} needs an `objects` column (names and boxes) "
            "in the data, as the synthetic scenes have."
        )
    options = {"region_classification_tokens": model_args.region_classification}
    if model_args.model_name_or_path:
        return options
    names = ["background", *object_names(dataset)]
    return {**options, "num_region_classes": len(names), "region_class_names": names}


def region_labeller(config: VlmHfConfig, dataset, processor) -> RegionLabeller | None:
    """Region labels for the pretraining batches when the model has named region classes and the data has boxes."""
    if not config.region_class_names or not has_objects(dataset):
        return None
    return RegionLabeller(
        config.region_class_names, config.visual_grid, config.num_visual_tokens, processor.image_processor
    )


def pretrain(argv: list[str] | None = None) -> Trainer:
    data_args, model_args, training_args = parse_arguments(argv, prog="vlm-hf pretrain", task="pretrain")
    dataset = load_dataset(data_args, training_args.seed, task="pretrain")
    processor = build_processor(model_args, data_args, dataset)
    model = build_model(VlmHfForPreTraining, model_args, processor, **region_head_options(model_args, dataset))
    collator = PretrainingCollator(
        processor,
        model.config.num_visual_tokens,
        seed=training_args.seed,
        region_labeller=region_labeller(model.config, dataset, processor),
    )
    return train(model, processor, for_this_process(dataset, data_args, training_args), collator, training_args)


def build_captioning_model(model_args: ModelArguments, processor) -> VlmHfForConditionalGeneration:
    # From the tokenizer: a pretrained folder's config may lack them.
    token_ids = special_token_ids(processor.tokenizer)
    model = build_model(VlmHfForConditionalGeneration, model_args, processor, **token_ids)
    # From a folder without generation_config.json, transformers reads the generation config from its config.json
    # file: without these overrides, and with the `use_cache: false` the Trainer wrote there (generation would then
    # recompute the whole sequence at every step). The saved folder gets this generation config.
    model.generation_config.update(**token_ids, use_cache=True)
    return model


def finetune(task: str, argv: list[str] | None = None) -> Trainer:
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}.")
    data_args, model_args, training_args = parse_arguments(argv, prog=f"vlm-hf finetune --task {task}", task=task)
    dataset = load_dataset(data_args, training_args.seed, task=task)
    processor = build_processor(model_args, data_args, dataset)
    if task == "vqa":
        labels = (  # the synthetic scenes' fixed answers, else the most frequent training answers
            answer_vocabulary(data_args.max_objects)
            if data_args.dataset == "synthetic"
            else answer_vocabulary_from(dataset, data_args.max_answers, data_args.min_answer_count)
        )
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
    elif task == "captioning":
        model = build_captioning_model(model_args, processor)
        collator = CaptioningCollator(processor, seed=training_args.seed)
    else:
        model = build_model(VlmHfForImageTextRetrieval, model_args, processor)
        collator = RetrievalCollator(processor, seed=training_args.seed)
    return train(model, processor, for_this_process(dataset, data_args, training_args), collator, training_args)


__all__ = ["pretrain", "finetune", "DataArguments", "ModelArguments"]
