"""Built-in synthetic data sets, generated in code so the demo and tests need no download.

``builtin:demo`` — product reviews in three classes (negative / neutral / positive). Classes share
their vocabulary (the same products, aspects and filler sentences appear everywhere); negation flips
an opinion ("not bad" counts as positive), mixed reviews are neutral, lengths vary from one to six
sentences, and a few labels are flipped on purpose. A bag of words gets part of the way; a model that
reads word order does better.

``builtin:demo-pairs`` — question pairs (duplicate / not_duplicate) in the style of Quora Question
Pairs: duplicates are paraphrases (synonyms, other templates), hard negatives change one slot.

``builtin:demo-unlabeled`` — 12,000 more reviews from the demo's generator, text only, for
``data.unlabeled_source`` (distillation's transfer set); as ``data.source`` it is refused (no labels).

All are deterministic: the same rows every time, whatever the run's seed.
"""

from __future__ import annotations

import random

PRODUCTS = ["phone", "laptop", "blender", "headset", "camera", "kettle", "monitor", "keyboard", "tablet", "speaker",
            "printer", "router", "watch", "vacuum", "heater", "drone"]
ASPECTS = ["battery", "screen", "price", "delivery", "design", "sound", "build", "software", "manual", "packaging",
           "support", "size", "weight", "cable", "charger", "fan"]
POSITIVE = ["great", "excellent", "good", "solid", "reliable", "lovely", "impressive", "fantastic", "decent", "superb"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "flimsy", "disappointing", "useless", "weak", "noisy", "broken"]
NEUTRAL = ["average", "standard", "typical", "ordinary", "fine for the money", "as described", "normal", "plain"]
INTENSIFIERS = ["", "", "very ", "really ", "quite ", "pretty ", "extremely "]
FILLER = [
    "i bought it for my {person} last {day}",
    "it arrived on {day} in a {color} box",
    "i have used the {product} for {n} weeks now",
    "we compared it with two other {product}s",
    "the {product} comes in {color} and grey",
    "my {person} uses it every {day}",
    "i ordered it online after reading the reviews",
    "this is my {nth} {product} from this brand",
]
PERSONS = ["wife", "husband", "son", "daughter", "father", "mother", "friend", "office", "team", "neighbour"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "morning"]
COLORS = ["black", "white", "red", "blue", "green", "silver"]
NTH = ["first", "second", "third", "fourth"]

DEMO_LABELS = ["negative", "neutral", "positive"]
PAIR_LABELS = ["not_duplicate", "duplicate"]


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        person=rng.choice(PERSONS), day=rng.choice(DAYS), color=rng.choice(COLORS), n=rng.randint(2, 9),
        nth=rng.choice(NTH), product=rng.choice(PRODUCTS),
    )


def _opinion(rng: random.Random, polarity: int, product: str) -> str:
    """One sentence with the given polarity (+1, -1) or 0 (neutral statement)."""
    aspect = rng.choice(ASPECTS)
    intensity = rng.choice(INTENSIFIERS)
    if polarity == 0:
        choice = rng.random()
        if choice < 0.6:
            return f"the {aspect} is {rng.choice(NEUTRAL)}"
        if choice < 0.75:
            return f"the {aspect} is neither {rng.choice(POSITIVE)} nor {rng.choice(NEGATIVE)}"
        return f"nothing special about the {aspect} of this {product}"
    negate = rng.random() < 0.25
    words = NEGATIVE if (polarity > 0) == negate else POSITIVE
    adjective = rng.choice(words)
    if negate:
        form = rng.choice(["the {a} is not {i}{w}", "the {a} of the {p} is not {i}{w} at all", "i would not call the {a} {w}",
                           "the {a} is never {w}"])
    else:
        form = rng.choice(["the {a} is {i}{w}", "the {p} has a {i}{w} {a}", "what a {w} {a}", "honestly the {a} is {i}{w}",
                           "i found the {a} {i}{w}"])
    return form.format(a=aspect, i=intensity, w=adjective, p=product)


def demo_rows(n: int = 4000, noise: float = 0.05) -> list[dict]:
    rng = random.Random(20261123)
    rows = []
    for index in range(n):
        label = index % 3  # balanced: 0 negative, 1 neutral, 2 positive
        product = rng.choice(PRODUCTS)
        sentences = [_fill(rng, rng.choice(FILLER)) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
        if label == 1:
            if rng.random() < 0.25:  # mixed review: one good thing, one bad thing
                opinions = [_opinion(rng, 1, product), _opinion(rng, -1, product)]
            else:
                opinions = [_opinion(rng, 0, product) for _ in range(rng.randint(1, 2))]
        else:
            polarity = 1 if label == 2 else -1
            opinions = [_opinion(rng, polarity, product) for _ in range(rng.randint(1, 2))]
            if rng.random() < 0.15:  # a minor complaint/praise the other way, outweighed
                opinions.append(_opinion(rng, -polarity, product))
                opinions.append(_opinion(rng, polarity, product))
            if rng.random() < 0.3:
                opinions.append(_opinion(rng, 0, product))
        rng.shuffle(opinions)
        body = opinions + sentences
        rng.shuffle(body)
        if rng.random() < 0.5:
            body.insert(0, f"review of the {product}")
        text = ". ".join(body) + "."
        if rng.random() < noise:
            label = rng.choice([c for c in range(3) if c != label])
        rows.append({"text": text, "label": DEMO_LABELS[label]})
    return rows


QUESTION_TEMPLATES = [
    ("how do i {verb} a {obj}", "how can i {verb} my {obj}", "what is the way to {verb} a {obj}"),
    ("what is the best way to {verb} a {obj}", "how should i {verb} a {obj}", "best method to {verb} a {obj}"),
    ("why does my {obj} not {action}", "why won't my {obj} {action}", "what stops my {obj} from {action}ing"),
    ("is it safe to {verb} a {obj} at home", "can i {verb} a {obj} myself safely", "is {verb}ing a {obj} at home dangerous"),
]
VERBS = {"fix": "repair", "clean": "wash", "paint": "colour", "sell": "trade", "buy": "purchase", "reset": "restart",
         "build": "assemble", "store": "keep"}
OBJECTS = ["bike", "car", "laptop", "phone", "sofa", "fridge", "guitar", "printer", "door", "window", "boat", "watch"]
ACTIONS = ["start", "charge", "turn", "connect", "work", "print"]


def pair_rows(n: int = 3000, noise: float = 0.03) -> list[dict]:
    rng = random.Random(20261124)
    rows = []
    verbs = list(VERBS)
    for index in range(n):
        duplicate = index % 2 == 1
        templates = rng.choice(QUESTION_TEMPLATES)
        verb, obj, action = rng.choice(verbs), rng.choice(OBJECTS), rng.choice(ACTIONS)
        first_template, second_template = rng.sample(templates, 2)
        first = first_template.format(verb=verb, obj=obj, action=action)
        if duplicate:
            other_verb = VERBS[verb] if rng.random() < 0.5 else verb
            second = second_template.format(verb=other_verb, obj=obj, action=action)
        else:
            change = rng.random()
            if change < 0.4:
                second = second_template.format(verb=verb, obj=rng.choice([o for o in OBJECTS if o != obj]), action=action)
            elif change < 0.7:
                other_verb = rng.choice([v for v in verbs if v != verb])
                other_action = rng.choice([a for a in ACTIONS if a != action])
                second = second_template.format(verb=other_verb, obj=obj, action=other_action)
            else:
                other = rng.choice([t for t in QUESTION_TEMPLATES if t is not templates])
                second = rng.choice(other).format(verb=verb, obj=obj, action=action)
        if rng.random() < 0.5:
            first, second = second, first
        label = int(duplicate)
        if rng.random() < noise:
            label = 1 - label
        rows.append({"question1": first + "?", "question2": second + "?", "label": PAIR_LABELS[label]})
    return rows


def demo_unlabeled_rows(n: int = 12000) -> list[dict]:
    """``n`` more reviews from the demo's generator, past the 4,000 that ``builtin:demo`` is made of, text only:
    in-domain text without labels for distillation's transfer set (``data.unlabeled_source``)."""
    return [{"text": row["text"]} for row in demo_rows(4000 + n)[4000:]]


BUILTIN = {
    "demo": {"rows": demo_rows, "text_column": "text", "text_pair_column": None, "labels": DEMO_LABELS},
    "demo-unlabeled": {"rows": demo_unlabeled_rows, "text_column": "text", "text_pair_column": None, "labels": None},
    "demo-pairs": {"rows": pair_rows, "text_column": "question1", "text_pair_column": "question2", "labels": PAIR_LABELS},
}
