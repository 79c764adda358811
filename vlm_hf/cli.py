"""The `vlm-hf` command line."""

import argparse
import sys


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))  # exits with status 2 and the message


if __name__ == "__main__":
    sys.exit(main())
