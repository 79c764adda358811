"""Train a BERT WordPiece vocabulary on a text corpus, so that a new domain needs no downloaded tokenizer."""

import string
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def special_token_ids(tokenizer) -> dict:
    """The generation ids of a BERT tokenizer: [CLS] starts the empty prompt, [SEP] ends the text, [PAD] pads."""
    return {
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def read_lines(paths: Iterable[str | Path]) -> Iterator[str]:
    """The non-empty lines of text files, read lazily."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"corpus file {str(path)!r} does not exist.")
        with path.open(encoding="utf-8") as lines:
            yield from (line.strip() for line in lines if line.strip())


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 30522,
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> BertTokenizer:
    """
    Learn a WordPiece vocabulary with the `tokenizers` library (BERT's normalisation and pre-tokenisation) and return
    it as a transformers BERT tokenizer whose special tokens are [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4, [PAD] = 0
    as `VlmHfConfig.pad_token_id` expects).
    """
    # Every letter, digit and punctuation mark gets a token, word-initial and as a "##" continuation, even when the
    # corpus lacks it, so that no ASCII text maps to [UNK].
    alphabet = string.ascii_lowercase + string.digits + string.punctuation
    alphabet += "" if lowercase else string.ascii_uppercase
    if vocab_size < len(SPECIAL_TOKENS) + 2 * len(alphabet):
        raise ValueError(
            f"vocab_size must be at least {len(SPECIAL_TOKENS) + 2 * len(alphabet)} (special tokens and the alphabet "
            f"with its continuations), got {vocab_size}."
        )
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size - len(alphabet),  # room for the continuations the corpus did not produce
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list(alphabet),
        show_progress=False,
    )
    counted = _CountingIterator(texts)
    wordpiece.train_from_iterator(counted, trainer=trainer)
    if counted.count == 0:
        raise ValueError("The corpus is empty: no text to learn a vocabulary from.")
    vocab = wordpiece.get_vocab()
    for continuation in (f"##{character}" for character in alphabet):
        vocab.setdefault(continuation, len(vocab))
    return BertTokenizer(vocab=vocab, do_lower_case=lowercase, model_max_length=model_max_length)


class _CountingIterator:
    """Passes texts through while counting them, so that an empty corpus is reported."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count = texts, 0

    def __iter__(self):
        for text in self.texts:
            if not isinstance(text, str):
                raise ValueError(f"corpus items must be strings, got {type(text).__name__}.")
            self.count += 1
            yield text
