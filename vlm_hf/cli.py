"""The `vlm-hf` command line."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch


def train_tokenizer_command(args: argparse.Namespace) -> int:
    from .tokenization import read_lines, train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(
        read_lines(args.corpus),
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        lowercase=not args.cased,
        model_max_length=args.model_max_length,
    )
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved a {len(tokenizer)}-token WordPiece tokenizer to {args.output_dir}")
    return 0


def existing_model_folder(path: str) -> str:
    if not Path(path, "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{path!r} is not a saved vlm_hf model folder (no config.json)")
    return path


def pretrain_command(args: argparse.Namespace) -> int:
    from .training import pretrain

    pretrain(args.trainer_arguments)
    return 0


def finetune_command(args: argparse.Namespace) -> int:
    from .training import finetune

    finetune(args.task, args.trainer_arguments)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from transformers import AutoProcessor

    from .data import generate_synthetic_dataset
    from .data.sources import DataSourceArguments, arrange_rows, check_data_arguments, first_rows, load_data
    from .evaluation import evaluate_captioning, evaluate_retrieval, evaluate_vqa, require_pycocoevalcap
    from .training import TASK_MODELS

    # The data arguments of the training commands, checked before the model is read.
    source = DataSourceArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataSourceArguments)})
    check_data_arguments(source, args.task)
    if args.task == "captioning":
        if not source.group_by_image:
            raise ValueError("--group_by_image false: captions are scored per image, against all of its references")
        try:
            require_pycocoevalcap()
        except ImportError as error:
            print(f"vlm-hf evaluate: {error}", file=sys.stderr)
            return 1
    model_class = TASK_MODELS[args.task]
    model = model_class.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    if source.dataset == "synthetic":
        scenes = generate_synthetic_dataset(
            args.num_images or 300, seed=args.seed, image_size=args.image_size, max_objects=args.max_objects
        )
        dataset = arrange_rows(scenes, source.group_by_image, args.task)
    else:
        dataset = first_rows(load_data(source, args.task, default_split="test"), args.num_images)
    if args.task == "captioning":
        result = evaluate_captioning(
            model,
            processor,
            dataset,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            meteor=False if args.no_meteor else None,
        )
    else:
        evaluate = evaluate_vqa if args.task == "vqa" else evaluate_retrieval
        result = evaluate(model, processor, dataset, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from PIL import Image
    from transformers import AutoProcessor

    from .modeling_vlm_hf import VlmHfForImageTextRetrieval
    from .pipelines import VisualQuestionAnsweringPipeline

    if (args.question is None) == (args.captions is None):
        raise ValueError("pass either --question or --captions")
    if not Path(args.image).is_file():
        raise ValueError(f"no image file at {args.image!r}")
    if args.question is not None:
        from transformers import pipeline

        vqa = pipeline("visual-question-answering", model=args.model, pipeline_class=VisualQuestionAnsweringPipeline)
        for answer in vqa(image=args.image, question=args.question, top_k=args.top_k):
            print(f"{answer['score']:.3f}  {answer['answer']}")
        return 0
    model = VlmHfForImageTextRetrieval.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    with torch.inference_mode():
        out = model(**processor(images=Image.open(args.image), text=args.captions))
    for score, caption in sorted(zip(out.logits_per_image[0].tolist(), args.captions, strict=True), reverse=True):
        print(f"{score:.3f}  {caption}")
    return 0


def hub_repo_id(value: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repository id (namespace/name): {error}") from None
    return value


def push_command(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import push_to_hub_folder

    try:
        commit = push_to_hub_folder(
            args.folder,
            args.repo_id,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
        )
    except HfHubHTTPError as error:  # refused by the Hub (token, permissions, ...): not a bad argument
        print(f"vlm-hf push: the Hub refused the upload: {error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.folder} to {commit.repo_url} (branch {args.revision or 'main'}): {commit.commit_url}")
    return 0


def convert_command(args: argparse.Namespace) -> int:
    from .conversion import run_converter

    return run_converter(args.source, args.converter_arguments)


def data_source_parser() -> argparse.ArgumentParser:
    """The training commands' data arguments (`vlm_hf.data.sources.DataSourceArguments`), to share with evaluate."""
    from transformers import HfArgumentParser

    from .data.sources import DataSourceArguments

    return HfArgumentParser(DataSourceArguments, add_help=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-hf", description="vision-language models on Hugging Face transformers")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train-tokenizer", help="learn a WordPiece vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK]) from text files"
    )
    train.add_argument("corpus", nargs="+", help="text files, one sentence or document per line")
    train.add_argument("--output-dir", required=True, help="folder to save the tokenizer in")
    train.add_argument("--vocab-size", type=int, default=30522)
    train.add_argument("--min-frequency", type=int, default=2, help="rarest pair that is still merged")
    train.add_argument("--cased", action="store_true", help="keep case and accents (default: lowercase)")
    train.add_argument("--model-max-length", type=int, default=512)
    train.set_defaults(run=train_tokenizer_command)

    trainer_help = "every transformers TrainingArguments flag is accepted (see `--help` after the command)"
    pretrain = commands.add_parser(
        "pretrain",
        help="masked LM + image-text matching + masked visual features, with transformers' Trainer",
        add_help=False,
        description=trainer_help,
    )
    pretrain.set_defaults(run=pretrain_command)
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune VQA, retrieval or captioning with transformers' Trainer",
        add_help=False,
        description=trainer_help,
    )
    finetune.add_argument("--task", required=True, choices=["vqa", "retrieval", "captioning"])
    finetune.set_defaults(run=finetune_command)

    evaluate = commands.add_parser(
        "evaluate",
        help="VQA accuracy per question type, retrieval Recall@K and ITM F1, or caption BLEU/CIDEr-D/ROUGE-L/METEOR",
        description="The data arguments (--dataset, --image_dir, ...) are those of the training commands; "
        "--split defaults to test.",
        parents=[data_source_parser()],
    )
    evaluate.add_argument("model", type=existing_model_folder, help="a saved model folder")
    evaluate.add_argument("--task", required=True, choices=["vqa", "retrieval", "captioning"])
    evaluate.add_argument(
        "--num-images", type=int, default=None, help="held-out synthetic scenes (300), or the first rows of a dataset"
    )
    evaluate.add_argument("--seed", type=int, default=1234, help="seed of the held-out scenes (not the training seed)")
    evaluate.add_argument("--image-size", type=int, default=128)
    evaluate.add_argument("--max-objects", type=int, default=3)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--max-new-tokens", type=int, default=20, help="captioning: longest generated caption")
    evaluate.add_argument("--num-beams", type=int, default=1, help="captioning: 1 is greedy, more is beam search")
    evaluate.add_argument(
        "--no-meteor", action="store_true", help="captioning: skip METEOR (a Java process; skipped anyway without Java)"
    )
    evaluate.set_defaults(run=evaluate_command)

    predict = commands.add_parser("predict", help="answer a question about an image, or rank captions for it")
    predict.add_argument("model", type=existing_model_folder, help="a saved model folder")
    predict.add_argument("image", help="an image file")
    predict.add_argument("--question")
    predict.add_argument("--captions", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(run=predict_command)

    push = commands.add_parser(
        "push",
        help="upload a saved model folder (weights, config, code, processor, model card) to the Hub in one commit",
    )
    push.add_argument("folder", type=existing_model_folder, help="a saved model folder")
    push.add_argument("repo_id", type=hub_repo_id, help="the Hub repository, namespace/name (created if needed)")
    push.add_argument(
        "--private", action="store_true", help="create the repository private (refused if it exists and is public)"
    )
    push.add_argument("--revision", help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--commit-message", help='default: "Upload <model class> with vlm-hf"')
    push.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the saved login)")
    push.set_defaults(run=push_command)

    from .conversion import CONVERTERS

    convert = commands.add_parser(
        "convert",
        help="convert an original checkpoint (VisualBERT, UNITER, VL-BERT, ViLBERT, BERT, ResNet) into a vlm_hf folder",
        add_help=False,
        description="`vlm-hf convert <source> --help` lists the converter's arguments",
    )
    convert.add_argument("source", choices=sorted(CONVERTERS))
    convert.set_defaults(run=convert_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Training commands hand everything they do not know to HfArgumentParser (Trainer flags, --help included).
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("pretrain", "finetune"):
        args.trainer_arguments = unknown
    elif args.command == "convert":
        args.converter_arguments = unknown  # the converter's own parser reads them (--help included)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))  # exits with status 2 and the message


if __name__ == "__main__":
    sys.exit(main())
