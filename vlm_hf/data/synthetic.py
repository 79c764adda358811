"""The embedded default data: seeded synthetic scenes with captions and questions that need the image.

Each scene holds 1 to `max_objects` shapes (circle, square, triangle) of four colours and two sizes, one per cell of a
3x3 layout grid (with jitter), on a lightly tinted background. Questions ask for a colour, a shape, a count, whether
an object exists, and where an object is relative to the picture (which column or row of the layout); captions
describe the objects and one spatial relation between two of them.
Yes/no questions are balanced, so a model that ignores the image cannot beat chance on them.
"""

from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
SIZES = {"small": 0.09, "large": 0.15}  # radius as a fraction of the image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_TYPES = ("colour", "shape", "count", "exist", "position")
COLUMNS = ("left", "middle", "right")  # the 3x3 layout's columns and rows, as answers
ROWS = ("top", "middle", "bottom")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a fraction of the width
    y: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def answer_vocabulary(max_objects: int = 3) -> list[str]:
    """Every answer the generator can produce, in a fixed order (the classifier's labels)."""
    return [*COLOURS, *SHAPES, *NUMBER_WORDS[: max_objects + 1], "yes", "no", *dict.fromkeys(COLUMNS + ROWS)]


def sample_objects(rng: np.random.Generator, max_objects: int) -> list[SceneObject]:
    count = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=count, replace=False)
    objects = []
    for cell in cells:
        row, column = divmod(int(cell), 3)
        objects.append(
            SceneObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                size=list(SIZES)[rng.integers(len(SIZES))],
                x=(column + 0.5 + rng.uniform(-0.15, 0.15)) / 3,
                y=(row + 0.5 + rng.uniform(-0.15, 0.15)) / 3,
            )
        )
    return objects


def object_box(obj: SceneObject) -> list[float]:
    radius = SIZES[obj.size]
    return [obj.x - radius, obj.y - radius, obj.x + radius, obj.y + radius]


def draw_scene(objects: list[SceneObject], rng: np.random.Generator, image_size: int) -> Image.Image:
    tint = rng.integers(110, 150, 3)
    image = Image.new("RGB", (image_size, image_size), tuple(int(v) for v in tint))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        radius = SIZES[obj.size] * image_size
        cx, cy = obj.x * image_size, obj.y * image_size
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif obj.shape == "square":
            draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    return image


def unique_by(objects: list[SceneObject], key) -> list[SceneObject]:
    """Objects whose `key` no other object in the scene shares (so that a question about them is unambiguous)."""
    values = [key(obj) for obj in objects]
    return [obj for obj, value in zip(objects, values, strict=True) if values.count(value) == 1]


def ask_colour(objects, rng):
    candidates = unique_by(objects, lambda o: o.shape)
    if candidates:
        obj = candidates[rng.integers(len(candidates))]
        return f"what colour is the {obj.shape}?", obj.colour


def ask_shape(objects, rng):
    candidates = unique_by(objects, lambda o: o.colour)
    if candidates:
        obj = candidates[rng.integers(len(candidates))]
        return f"what shape is the {obj.colour} object?", obj.shape


def ask_count(objects, rng):
    kind = rng.integers(3)
    if kind == 0:
        return "how many objects are there?", NUMBER_WORDS[len(objects)]
    if kind == 1:
        shape = SHAPES[rng.integers(len(SHAPES))]
        return f"how many {shape}s are there?", NUMBER_WORDS[sum(o.shape == shape for o in objects)]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    return f"how many {colour} objects are there?", NUMBER_WORDS[sum(o.colour == colour for o in objects)]


def ask_exist(objects, rng):
    present = {o.name for o in objects}
    if rng.random() < 0.5:
        name = sorted(present)[rng.integers(len(present))]
    else:
        absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
        name = absent[rng.integers(len(absent))]
    return f"is there a {name}?", "yes" if name in present else "no"


def ask_position(objects, rng):
    candidates = unique_by(objects, lambda o: o.name)
    if not candidates:
        return None
    obj = candidates[rng.integers(len(candidates))]
    # Objects sit in a 3x3 layout with a jitter of at most 0.05, so the column and row are never ambiguous.
    if rng.random() < 0.5:
        return f"is the {obj.name} on the left, in the middle or on the right?", COLUMNS[int(obj.x * 3)]
    return f"is the {obj.name} at the top, in the middle or at the bottom?", ROWS[int(obj.y * 3)]


ASKERS = {"colour": ask_colour, "shape": ask_shape, "count": ask_count, "exist": ask_exist, "position": ask_position}


def scene_questions(objects, rng, per_image: int) -> list[tuple[str, str, str]]:
    """Up to `per_image` (question, answer, type) triples, cycling through the question types."""
    questions = []
    order = list(rng.permutation(len(QUESTION_TYPES)))
    for question_type in (QUESTION_TYPES[i] for i in order * 2):
        if len(questions) == per_image:
            break
        asked = ASKERS[question_type](objects, rng)
        if asked is not None and asked[0] not in {q for q, _, _ in questions}:
            questions.append((*asked, question_type))
    return questions


def describe(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def scene_captions(objects, rng) -> list[str]:
    listing = ", ".join(describe(o) for o in sorted(objects, key=lambda o: o.x))
    captions = [f"{listing}." if len(objects) > 1 else f"{describe(objects[0])} on its own."]
    if len(objects) > 1:
        a, b = (objects[i] for i in rng.choice(len(objects), 2, replace=False))
        relation = (
            ("left of" if a.x < b.x else "right of")
            if abs(a.x - b.x) > abs(a.y - b.y)
            else ("above" if a.y < b.y else "below")
        )
        captions.append(f"{describe(a)} {relation} {describe(b)}.")
    captions.append(f"{NUMBER_WORDS[len(objects)]} object{'s' if len(objects) > 1 else ''} in the picture.")
    return captions


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "questions": datasets.Sequence(datasets.Value("string")),
        "question_types": datasets.Sequence(datasets.Value("string")),
        "answers": datasets.Sequence(datasets.Sequence(datasets.Value("string"))),
        "answer_scores": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    }
)
# The scenes add the objects they drew: names ("red circle") and boxes (x0, y0, x1, y1) as fractions of the image side,
# the targets of region classification.
SCENE_FEATURES = datasets.Features(
    {
        **FEATURES,
        "objects": {
            "name": datasets.Sequence(datasets.Value("string")),
            "box": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        },
    }
)


def generate_synthetic_dataset(
    num_images: int,
    seed: int = 0,
    image_size: int = 128,
    max_objects: int = 3,
    questions_per_image: int = 5,
) -> datasets.Dataset:
    """
    One row per scene: `image`, `captions`, and parallel lists `questions`, `question_types`, `answers` (candidate
    answers per question) and `answer_scores` (their VQA soft scores; 1.0 here, as every annotator would agree), and
    the drawn `objects` (`name`s and `box`es).
    The same seed gives the same data everywhere.
    """
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be between 1 and 9 (a 3x3 layout), got {max_objects}.")

    def rows():
        rng = np.random.default_rng(seed)
        for index in range(num_images):
            objects = sample_objects(rng, max_objects)
            image = draw_scene(objects, rng, image_size)
            questions = scene_questions(objects, rng, questions_per_image)
            yield {
                "image": image,
                "image_id": f"synthetic-{seed}-{index}",
                "captions": scene_captions(objects, rng),
                "questions": [q for q, _, _ in questions],
                "question_types": [t for _, _, t in questions],
                "answers": [[a] for _, a, _ in questions],
                "answer_scores": [[1.0] for _ in questions],
                "objects": {"name": [o.name for o in objects], "box": [object_box(o) for o in objects]},
            }

    return datasets.Dataset.from_list(list(rows()), features=SCENE_FEATURES)
