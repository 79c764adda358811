"""VQA answers: the official evaluation's normalisation, soft scores from human answers, and the answer vocabulary.

The normalisation follows the rules of the official VQA evaluation (`vqaEval.py`): punctuation is deleted or turned
into a space, periods that do not start a decimal go, number words become digits, articles go, and contractions
written without their apostrophe get it back.
"""

import re
from collections import Counter
from collections.abc import Iterable

# Marks the official evaluation handles one by one; apostrophes, colons and periods are not among them.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern's look-behind is malformed and acts as a no-op, so only the look-ahead counts: a period goes
# unless a digit follows ("3.5" and ".5" keep theirs, "3." does not).
PERIOD = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions the official table restores. Plain words that look like a contraction without its apostrophe ("its",
# "well", "were", "ill", "shell", "lets") are not in it, and neither are "I'm", "I've" and "I'd've", which the table
# spells capitalised and so never match lower-cased text.
CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've he's
how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock
oughtn't shan't she'd've should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when'd
when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't
wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def contraction_spellings(contracted: str) -> set[str]:
    """The spellings that mean `contracted`: without any apostrophe, and (for double contractions) without one."""
    positions = [i for i, char in enumerate(contracted) if char == "'"]
    spellings = {contracted.replace("'", "")}
    if len(positions) > 1:
        spellings |= {contracted[:i] + contracted[i + 1 :] for i in positions}
    return spellings - {contracted}


CONTRACTIONS = {spelling: word for word in CONTRACTED for spelling in contraction_spellings(word)}


def strip_punctuation(text: str) -> str:
    """A mark next to a space is deleted, elsewhere it becomes a space ("t-shirt" -> "t shirt"); in a text with a
    digit-comma-digit ("1,000") every mark is deleted. Periods go unless a digit follows."""
    delete_every_mark = DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        # As in the official code, the test looks at the original text, the replacement at the running result.
        deleted = delete_every_mark or f"{mark} " in text or f" {mark}" in text
        result = result.replace(mark, "" if deleted else " ")
    return PERIOD.sub("", result)


def normalize_words(text: str) -> str:
    """Lower-case words; number words -> digits, articles dropped, contractions restored."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """An answer as the official VQA evaluation compares it: `"Two dogs!"` -> `"2 dogs"`, `"the T-shirt"` ->
    `"t shirt"`, `"1,000"` -> `"1000"`, `"dont know"` -> `"don't know"`."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(answer))


def ranked_answer_counts(human_answers: Iterable[str], normalize: bool = True) -> list[tuple[str, int]]:
    """The distinct answers of one question with how many annotators gave them, by count (ties alphabetically)."""
    counts = Counter(normalize_answer(a) if normalize else a.strip() for a in human_answers)
    counts.pop("", None)  # an answer that normalises to nothing ("?", "the") says nothing
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def soft_scores(human_answers: Iterable[str], normalize: bool = True) -> tuple[list[str], list[float]]:
    """
    The distinct answers of one question and their soft scores min(count / 3, 1): an answer three of the (usually
    ten) annotators gave is fully right. Ordered by count (ties alphabetically), so the first is the consensus.
    """
    ranked = ranked_answer_counts(human_answers, normalize)
    return [answer for answer, _ in ranked], [min(count / 3, 1.0) for _, count in ranked]


def official_accuracy(count: int, num_annotators: int) -> float:
    """
    The official VQA accuracy of an answer that `count` of `num_annotators` gave: min(matches / 3, 1) among the other
    annotators, averaged over leaving out each one in turn (0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and 4 of ten).
    """
    if num_annotators < 1 or not 0 <= count <= num_annotators:
        raise ValueError(
            f"need num_annotators >= 1 and count between 0 and num_annotators; got count {count} of {num_annotators}"
        )
    left_out_match = count * min((count - 1) / 3, 1.0)  # leaving out one who gave it leaves count - 1 matches
    left_out_other = (num_annotators - count) * min(count / 3, 1.0)
    return (left_out_match + left_out_other) / num_annotators


def official_accuracies(human_answers: Iterable[str], normalize: bool = True) -> list[float]:
    """The official accuracy of each answer `soft_scores` lists, in its order (every annotator counts, even one whose
    answer normalises to nothing)."""
    human_answers = list(human_answers)
    ranked = ranked_answer_counts(human_answers, normalize)
    return [official_accuracy(count, len(human_answers)) for _, count in ranked]


def answer_vocabulary_from(dataset, max_answers: int | None = 3129, min_count: int = 1) -> list[str]:
    """
    The classifier's labels from training rows: each question's best-scored answer counts once, and the answers
    given as best at least `min_count` times are kept, most frequent first (ties alphabetically), at most
    `max_answers` of them (3129, as usual for VQA v2, by default; None keeps all).
    """
    counts = Counter()
    for row in dataset.select_columns(["answers", "answer_scores"]):
        for candidates, scores in zip(row["answers"], row["answer_scores"], strict=True):
            if candidates:
                best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
                counts[candidates[best]] += 1
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    if not ranked:
        raise ValueError(
            f"no answer is the best answer of at least {min_count} training questions (min_answer_count); "
            "the data has no usable answers."
        )
    return [answer for answer, _ in ranked[:max_answers]]


def has_answers(dataset) -> bool:
    """Whether any question of the rows has an answer (a questions-only file, e.g. a VQA test split, has none)."""
    return any(any(candidates) for candidates in dataset.select_columns(["answers"])["answers"])
