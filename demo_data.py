"""A small synthetic GLUE tree for the demo and the tests (GLUE cannot be downloaded here).

``write_demo_glue(out_dir, seed, scale)`` writes every task's train, dev and test files
(and the diagnostic set) in the exact real GLUE layouts, oddities included (CoLA without
a header, QQP rows with missing fields, MNLI's columns, literal quote characters). The
sentences come from a deterministic generator: every task is learnable from its text,
with about 10% label noise, and train sizes are unequal across tasks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from checkpointing import atomic_write_text
from glue import TASKS

# Label strings in class-id order, from the task registry.
_BINARY = TASKS["cola"].labels
_NLI3 = TASKS["mnli"].labels
_NLI2 = TASKS["rte"].labels

# Every word below is a whole token of bert-base-uncased's vocabulary.

_PEOPLE = ["man", "woman", "boy", "girl", "child", "teacher", "doctor", "farmer", "student",
           "king", "queen", "soldier", "singer", "writer", "driver", "nurse", "player", "artist"]
_ANIMALS = ["dog", "cat", "horse", "bird", "cow", "rabbit", "lion", "bear", "wolf", "fox"]
_THINGS = ["book", "car", "ball", "letter", "box", "boat", "chair", "table", "picture",
           "song", "cake", "door", "bag", "key", "phone", "map", "bike", "coat"]
_PLACES = ["park", "house", "city", "school", "river", "garden", "market", "church", "station",
           "forest", "village", "hospital", "library", "kitchen", "beach", "hotel"]
_TIMES = ["monday", "tuesday", "friday", "sunday", "saturday", "wednesday"]
_ADJECTIVES = ["big", "small", "old", "young", "happy", "quiet", "tall", "angry", "kind",
               "busy", "tired", "brave", "rich", "strong", "famous", "lonely"]
# (past tense, base form, past participle)
_VERBS = [("saw", "see", "seen"), ("liked", "like", "liked"), ("helped", "help", "helped"),
          ("found", "find", "found"), ("called", "call", "called"), ("watched", "watch", "watched"),
          ("followed", "follow", "followed"), ("visited", "visit", "visited"),
          ("heard", "hear", "heard"), ("met", "meet", "met"), ("chased", "chase", "chased"),
          ("painted", "paint", "painted"), ("carried", "carry", "carried"),
          ("pushed", "push", "pushed"), ("loved", "love", "loved")]
_SYNONYMS = {"big": "large", "small": "little", "city": "town", "house": "home",
             "happy": "glad", "angry": "mad", "famous": "known", "quiet": "silent",
             "saw": "noticed", "liked": "enjoyed", "found": "discovered", "helped": "assisted"}
_POSITIVE = ["good", "great", "excellent", "wonderful", "beautiful", "brilliant", "charming",
             "delightful", "enjoyable", "funny", "lovely", "perfect", "fine", "fresh", "smart",
             "clever", "warm", "moving", "solid", "sweet"]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "weak", "ugly",
             "stupid", "painful", "messy", "silly", "flat", "empty", "slow", "cheap", "lazy",
             "tired", "dead"]
_ASPECTS = ["movie", "film", "story", "plot", "acting", "cast", "director", "music", "ending",
            "script", "dialogue", "humor", "pace", "camera", "performance", "hero"]
_INTENSIFIERS = ["very", "really", "quite", "so", "pretty", "truly"]
_ACTIONS_ING = ["playing", "cutting", "riding", "eating", "holding", "reading", "drawing",
                "cleaning", "carrying", "watching", "opening", "throwing", "washing", "cooking",
                "pushing", "selling"]
# (base, -ing) skills for QQP questions
_SKILLS = [("cook", "cooking"), ("swim", "swimming"), ("drive", "driving"), ("paint", "painting"),
           ("sing", "singing"), ("dance", "dancing"), ("write", "writing"), ("draw", "drawing"),
           ("run", "running"), ("fish", "fishing"), ("play chess", "playing chess"),
           ("speak french", "speaking french"), ("play guitar", "playing guitar"),
           ("code", "coding"), ("ride a horse", "riding a horse"), ("teach", "teaching")]
_QQP_INTENTS = {
    "learn": ["how can i learn {b}?", "what is the best way to learn {b}?", "how do i get better at {i}?",
              "how should i start learning {i}?"],
    "hard": ["why is {i} so hard?", "what makes {i} difficult?", "is {i} hard to learn?"],
    "cost": ["how much does it cost to learn {i}?", "is learning {i} expensive?",
             "what is the cost of {i} lessons?"],
    "late": ["am i too old to learn {i}?", "is it too late to start {i}?",
             "can i learn {i} at the age of forty?"],
}
_COLA_SOURCES = ["gj04", "bc01", "ad03", "c-05", "w_80", "r-67", "l-93", "m_02", "ks08", "b_73"]
_MNLI_GENRES_MATCHED = ["fiction", "government", "slate", "telephone", "travel"]
_MNLI_GENRES_MISMATCHED = ["facetoface", "letters", "nineeleven", "oup", "verbatim"]

_LABEL_NOISE = 0.1

# Base sizes (scale 1.0): unequal across tasks, so proportional sampling matters.
_DEMO_TRAIN_SIZES = {"cola": 320, "mrpc": 160, "mnli": 640, "rte": 140, "sts": 240,
                     "sst": 360, "qqp": 560, "qnli": 400, "wnli": 160}
_DEMO_DEV_SIZE = 100
_DEMO_TEST_SIZE = 60


def _scaled(n: int, scale: float, floor: int) -> int:
    return max(floor, int(round(n * scale)))


def _noisy(rng: random.Random, label: str, labels) -> str:
    """Replace the label by another one with probability _LABEL_NOISE."""
    if rng.random() < _LABEL_NOISE:
        return rng.choice([other for other in labels if other != label])
    return label


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _subject(rng: random.Random) -> str:
    return rng.choice(_PEOPLE)


def _object(rng: random.Random) -> str:
    return rng.choice(_ANIMALS + _THINGS)


def _other(rng: random.Random, pool, *avoid) -> str:
    """A word from pool different from every word in avoid."""
    return rng.choice([word for word in pool if word not in avoid])


# --- SST-2: sentiment from word polarity, negation and "but" --------------------

def _sst_clause(rng: random.Random, aspect: str) -> tuple[str, int]:
    """A clause about one aspect and its polarity (+1/-1) after negation."""
    polarity = rng.choice((1, -1))
    word = rng.choice(_POSITIVE if polarity > 0 else _NEGATIVE)
    negated = rng.random() < 0.25
    if rng.random() < 0.05:
        aspect = f'" {aspect} "'  # literal quotes, as in real SST-2 text
    words = ["the", aspect, "is"]
    if negated:
        words.append("not")
    if rng.random() < 0.4:
        words.append(rng.choice(_INTENSIFIERS))
    words.append(word)
    return " ".join(words), -polarity if negated else polarity


def _sst_sentence(rng: random.Random) -> tuple[str, str]:
    """Sentence and label: the sign of the summed polarities; on a tie, the clause after "but"."""
    if rng.random() < 0.2:
        polarity = rng.choice((1, -1))
        word = rng.choice(_POSITIVE if polarity > 0 else _NEGATIVE)
        text = f"it 's a {word} {rng.choice(_ASPECTS)}"
        return text + " ", "1" if polarity > 0 else "0"
    clauses = [_sst_clause(rng, aspect) for aspect in rng.sample(_ASPECTS, rng.choice((1, 2, 3)))]
    score = sum(p for _, p in clauses)
    if len(clauses) == 2:
        text = f"{clauses[0][0]} , but {clauses[1][0]}"
        score = score or clauses[1][1]
    else:
        text = " , and ".join(c for c, _ in clauses)
    return text + " ", "1" if score > 0 else "0"


def _demo_sst(rng, n_train, n_dev, n_test):
    header = ["sentence", "label"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for _ in range(n):
            text, label = _sst_sentence(rng)
            rows.append([text, _noisy(rng, label, _BINARY)])
        files[split] = [header] + rows
    files["test"] = [["index", "sentence"]] + [[str(i), _sst_sentence(rng)[0]] for i in range(n_test)]
    return files


# --- CoLA: acceptability from word order ------------------------------------

def _cola_sentence(rng: random.Random) -> tuple[str, str]:
    """A simple transitive sentence; unacceptable ones break one word-order rule."""
    adj, subj, obj, place = rng.choice(_ADJECTIVES), _subject(rng), _object(rng), rng.choice(_PLACES)
    verb = rng.choice(_VERBS)[0]
    good = ["the", adj, subj, verb, "the", obj, "in", "the", place]
    if rng.random() < 0.1:
        good = ["the", subj, "said", '"', "the", obj, "is", adj, '"']
        bad = ["the", subj, "said", '"', "the", obj, adj, "is", '"']
    else:
        bad = rng.choice([
            [verb, "the", adj, subj, "the", obj, "in", "the", place],   # verb first
            ["the", subj, adj, verb, "the", obj, "in", "the", place],   # adjective after noun
            ["the", adj, subj, verb, obj, "the", "in", "the", place],   # determiner after noun
            ["the", adj, subj, "the", obj, verb, "in", "the", place],   # object before verb
            ["the", adj, subj, verb, "the", obj, "the", "in", place],   # determiner before preposition
        ])
    acceptable = rng.random() < 0.7
    words = good if acceptable else bad
    return _cap(" ".join(words)) + ".", "1" if acceptable else "0"


def _demo_cola(rng, n_train, n_dev, n_test):
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []  # no header: CoLA's train and dev files have none
        for _ in range(n):
            text, label = _cola_sentence(rng)
            label = _noisy(rng, label, _BINARY)
            rows.append([rng.choice(_COLA_SOURCES), label, "" if label == "1" else "*", text])
        files[split] = rows
    files["test"] = [["index", "sentence"]] + [[str(i), _cola_sentence(rng)[0]] for i in range(n_test)]
    return files


# --- Shared event sentences for MRPC, MNLI, RTE, QNLI, diagnostic ----------

@dataclass
class _Event:
    """Who did what to what, where and when."""

    adj: str
    subject: str
    verb: tuple
    obj: str
    place: str
    time: str

    @classmethod
    def random(cls, rng: random.Random) -> _Event:
        return cls(rng.choice(_ADJECTIVES), _subject(rng), rng.choice(_VERBS), _object(rng),
                   rng.choice(_PLACES), rng.choice(_TIMES))

    def sentence(self, with_time=True) -> str:
        text = f"the {self.adj} {self.subject} {self.verb[0]} the {self.obj} in the {self.place}"
        return text + (f" on {self.time}" if with_time else "")


def _synonymize(rng: random.Random, text: str) -> str:
    """Swap some words for synonyms, so paraphrases do not share every word."""
    return " ".join(_SYNONYMS[w] if w in _SYNONYMS and rng.random() < 0.5 else w
                    for w in text.split(" "))


# --- MRPC: paraphrase = same event in other words -------------------------

def _mrpc_pair(rng: random.Random) -> tuple[str, str, str]:
    event = _Event.random(rng)
    first = _cap(event.sentence()) + " ."
    if rng.random() < 0.68:  # MRPC is about two thirds paraphrases
        label, changed = "1", event
    else:
        label, changed = "0", _change_one_slot(rng, event)
    if rng.random() < 0.5:
        second = (f"On {changed.time} , the {changed.adj} {changed.subject} {changed.verb[0]} "
                  f"the {changed.obj} in the {changed.place} .")
    else:
        second = (f"The {changed.obj} was {changed.verb[2]} by the {changed.adj} {changed.subject} "
                  f"in the {changed.place} on {changed.time} .")
    if rng.random() < 0.1:
        speaker = _other(rng, _PEOPLE, event.subject)
        first = f'The {speaker} said " {first[0].lower() + first[1:-2]} " .'
    return label, first, _synonymize(rng, second)


def _change_one_slot(rng: random.Random, event: _Event) -> _Event:
    """The same event with one key detail changed (a near-paraphrase distractor)."""
    slot = rng.choice(("subject", "obj", "place", "time", "swap"))
    changed = _Event(**vars(event))
    if slot == "subject":
        changed.subject = _other(rng, _PEOPLE, event.subject)
    elif slot == "obj":
        changed.obj = _other(rng, _ANIMALS + _THINGS, event.obj)
    elif slot == "place":
        changed.place = _other(rng, _PLACES, event.place)
    elif slot == "time":
        changed.time = _other(rng, _TIMES, event.time)
    else:
        changed.subject, changed.obj = _other(rng, _PEOPLE, event.subject), event.subject
    return changed


def _demo_mrpc(rng, n_train, n_dev, n_test):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for _ in range(n):
            label, first, second = _mrpc_pair(rng)
            ids = [str(rng.randrange(10000, 3500000)) for _ in range(2)]
            rows.append([_noisy(rng, label, _BINARY), *ids, first, second])
        files[split] = rows
    test = [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
    for i in range(n_test):
        _, first, second = _mrpc_pair(rng)
        test.append([str(i), str(rng.randrange(10000, 3500000)), str(rng.randrange(10000, 3500000)),
                     first, second])
    files["test"] = test
    return files


# --- NLI: entailment, contradiction or neutral hypotheses about an event ---

def _nli_hypothesis(rng: random.Random, event: _Event, label: str, with_time: bool) -> str:
    """A hypothesis with the given relation to the premise event.sentence(with_time)."""
    past, base, participle = event.verb
    s, o = event.subject, event.obj
    if label == "entailment":
        options = [f"the {s} {past} the {o}", f"the {s} was in the {event.place}",
                   f"the {o} was {participle} by the {s}",
                   f"someone {past} the {o}" + (f" on {event.time}" if with_time else "")]
    elif label == "contradiction":
        options = [f"the {s} did not {base} the {o}", f"the {s} never went to the {event.place}",
                   f"the {s} {past} the {o} in the {_other(rng, _PLACES, event.place)}",
                   f"nobody {past} the {o}"]
    else:
        options = [f"the {s} {past} the {o} because it was {rng.choice(_ADJECTIVES)}",
                   f"the {s} {past} the {o} twice", f"the {s} is a {rng.choice(_PEOPLE)}",
                   f"the {s} also {past} the {_other(rng, _ANIMALS + _THINGS, o)}"]
    return _cap(rng.choice(options)) + " ."


def _nli_pair(rng: random.Random, labels=_NLI3) -> tuple[str, str, str]:
    """(premise, hypothesis, 3-way label) about one random event."""
    event = _Event.random(rng)
    label = rng.choice(labels)
    with_time = rng.random() < 0.7
    premise = _cap(event.sentence(with_time)) + " ."
    return premise, _nli_hypothesis(rng, event, label, with_time), label


def _parses(sentence: str) -> tuple[str, str]:
    """Flat stand-ins for MNLI's binary parse and full parse columns."""
    words = sentence.split(" ")
    return "( " + " ".join(words) + " )", "(ROOT (S " + " ".join(f"(X {w})" for w in words) + "))"


def _mnli_rows(rng, n, genres, n_annotators, labelled=True):
    rows = []
    for index in range(n):
        premise, hypothesis, label = _nli_pair(rng)
        prompt = rng.randrange(1000, 150000)
        pair = f"{prompt}{label[0]}" if labelled else str(prompt)  # real pair ids end in e/n/c
        (premise_binary, premise_parse), (hypothesis_binary, hypothesis_parse) = \
            _parses(premise), _parses(hypothesis)
        row = [str(index), str(prompt), pair, rng.choice(genres),
               premise_binary, hypothesis_binary, premise_parse, hypothesis_parse, premise, hypothesis]
        if labelled:
            gold = _noisy(rng, label, _NLI3)
            annotators = [gold] * n_annotators
            if n_annotators > 1:
                annotators[-1] = rng.choice(_NLI3)  # one annotator sometimes disagrees
            row += [*annotators, gold]
        rows.append(row)
    return rows


def _demo_mnli(rng, n_train, n_dev, n_test):
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
            "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    train_header = base + ["label1", "gold_label"]
    dev_header = base + [f"label{k}" for k in range(1, 6)] + ["gold_label"]
    return {
        "train": [train_header] + _mnli_rows(rng, n_train, _MNLI_GENRES_MATCHED, 1),
        "dev_matched": [dev_header] + _mnli_rows(rng, n_dev, _MNLI_GENRES_MATCHED, 5),
        "dev_mismatched": [dev_header] + _mnli_rows(rng, n_dev, _MNLI_GENRES_MISMATCHED, 5),
        "test_matched": [base] + _mnli_rows(rng, n_test, _MNLI_GENRES_MATCHED, 0, labelled=False),
        "test_mismatched": [base] + _mnli_rows(rng, n_test, _MNLI_GENRES_MISMATCHED, 0, labelled=False),
    }


def _demo_diagnostic(rng, n):
    rows = [["index", "sentence1", "sentence2"]]
    for index in range(n):
        premise, hypothesis, _ = _nli_pair(rng)
        rows.append([str(index), premise, hypothesis])
    return rows


def _rte_pair(rng: random.Random) -> tuple[str, str, str]:
    """A longer premise (event plus an unrelated distractor sentence) and a binary label."""
    premise, hypothesis, label = _nli_pair(rng)
    distractor = _cap(_Event.random(rng).sentence()) + " ."
    if rng.random() < 0.5:
        premise = f"{premise} {distractor}"
    else:
        premise = f"{distractor} {premise}"
    return premise, hypothesis, "entailment" if label == "entailment" else "not_entailment"


def _demo_pairs(rng, make_pair, header, test_header, labels, n_train, n_dev, n_test):
    """train/dev/test files for tasks laid out as index, text a, text b[, label]."""
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for index in range(n):
            first, second, label = make_pair(rng)
            rows.append([str(index), first, second, _noisy(rng, label, labels)])
        files[split] = rows
    files["test"] = [test_header] + [[str(i), *make_pair(rng)[:2]] for i in range(n_test)]
    return files


def _demo_rte(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _rte_pair, ["index", "sentence1", "sentence2", "label"],
                       ["index", "sentence1", "sentence2"], _NLI2, n_train, n_dev, n_test)


# --- QNLI: does the sentence answer the question? ---------------------------

def _qnli_pair(rng: random.Random) -> tuple[str, str, str]:
    event = _Event.random(rng)
    past, base, _ = event.verb
    kind = rng.choice(("where", "when", "who", "what"))
    question = {
        "where": f"where did the {event.subject} {base} the {event.obj}?",
        "when": f"when did the {event.subject} {base} the {event.obj}?",
        "who": f"who {past} the {event.obj} in the {event.place}?",
        "what": f"what did the {event.subject} {base} in the {event.place}?",
    }[kind]
    answers = rng.random() < 0.5
    told = event if answers else _unanswering_event(rng, event, kind)
    with_time = kind == "when" or rng.random() < 0.5
    sentence = told.sentence(with_time=with_time)
    if not answers and kind == "where":
        sentence = f"the {told.adj} {told.subject} {told.verb[0]} the {told.obj} on {told.time}"
    return _cap(question), _cap(sentence) + " .", "entailment" if answers else "not_entailment"


def _unanswering_event(rng: random.Random, event: _Event, kind: str) -> _Event:
    """A similar event that does not answer the question (other actor or thing)."""
    changed = _Event(**vars(event))
    if kind in ("where", "when", "what"):
        changed.subject = _other(rng, _PEOPLE, event.subject)
    if kind in ("who", "where", "when") and rng.random() < 0.5:
        changed.obj = _other(rng, _ANIMALS + _THINGS, event.obj)
    if kind == "who":
        changed.place = _other(rng, _PLACES, event.place)
    return changed


def _demo_qnli(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _qnli_pair, ["index", "question", "sentence", "label"],
                       ["index", "question", "sentence"], _NLI2, n_train, n_dev, n_test)


# --- WNLI: pronoun resolution ---------------------------------------------

# (sentence, degree word, adjective pointing at {a}, adjective pointing at {b}, pool of a, pool of b)
_WNLI_TEMPLATES = [
    ("the {a} could not lift the {b} because it was too {adj} .", "too", "weak", "heavy", _ANIMALS, _THINGS),
    ("the {a} did not fit into the {b} because it was too {adj} .", "too", "big", "small", _THINGS, _THINGS),
    ("the {a} thanked the {b} because he was so {adj} .", "so", "grateful", "helpful", _PEOPLE, _PEOPLE),
    ("the {a} was afraid of the {b} because it was so {adj} .", "so", "small", "dangerous", _ANIMALS, _ANIMALS),
]


def _wnli_pair(rng: random.Random) -> tuple[str, str, str]:
    """A Winograd-style sentence; the hypothesis names a candidate for the pronoun."""
    template, degree, a_adj, b_adj, a_pool, b_pool = rng.choice(_WNLI_TEMPLATES)
    a = rng.choice(a_pool)
    b = _other(rng, b_pool, a)
    adj = rng.choice((a_adj, b_adj))
    referent = a if adj == a_adj else b
    candidate = rng.choice((a, b))
    hypothesis = f"The {candidate} was {degree} {adj} ."
    return _cap(template.format(a=a, b=b, adj=adj)), hypothesis, "1" if candidate == referent else "0"


def _demo_wnli(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _wnli_pair, ["index", "sentence1", "sentence2", "label"],
                       ["index", "sentence1", "sentence2"], _BINARY, n_train, n_dev, n_test)


# --- QQP: duplicate questions ---------------------------------------------

def _qqp_pair(rng: random.Random) -> tuple[str, str, str]:
    intent = rng.choice(list(_QQP_INTENTS))
    skill = rng.choice(_SKILLS)
    first_template = rng.choice(_QQP_INTENTS[intent])
    if rng.random() < 0.37:  # about a third of QQP pairs are duplicates
        label, other_intent, other_skill = "1", intent, skill
    elif rng.random() < 0.5:
        label, other_intent, other_skill = "0", _other(rng, list(_QQP_INTENTS), intent), skill
    else:
        label, other_intent, other_skill = "0", intent, _other(rng, _SKILLS, skill)
    second_template = _other(rng, _QQP_INTENTS[other_intent], first_template) \
        if other_intent == intent else rng.choice(_QQP_INTENTS[other_intent])
    first = first_template.format(b=skill[0], i=skill[1])
    second = second_template.format(b=other_skill[0], i=other_skill[1])
    return _cap(first), _cap(second), label


def _demo_qqp(rng, n_train, n_dev, n_test):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for index in range(n):
            first, second, label = _qqp_pair(rng)
            rows.append([str(index), str(2 * index + 1), str(2 * index + 2), first, second,
                         _noisy(rng, label, _BINARY)])
        if split == "train":
            _add_broken_qqp_rows(rng, rows)
        files[split] = rows
    files["test"] = [["id", "question1", "question2"]] + [[str(i), *_qqp_pair(rng)[:2]] for i in range(n_test)]
    return files


def _add_broken_qqp_rows(rng: random.Random, rows: list) -> None:
    """Real QQP has rows with missing fields: one without question2, and one
    whose question1 contains a newline (so it spans two lines of 4 and 3 fields)."""
    n = len(rows) - 1
    first, _, label = _qqp_pair(rng)
    rows.insert(1 + n // 3, [str(n), str(2 * n + 1), str(2 * n + 2), first, label])
    first, second, label = _qqp_pair(rng)
    head, _, tail = first.partition(" ")
    rows.insert(1 + 2 * n // 3, [str(n + 1), str(2 * n + 3), str(2 * n + 4), head + "\n" + tail, second, label])


# --- STS-B: similarity = fraction of shared details ----------------------

def _sts_pair(rng: random.Random) -> tuple[str, str, float]:
    """Two captions; the score is 5 x the fraction of the five slots they share, plus noise."""
    slots = [rng.choice(_ADJECTIVES), _subject(rng), rng.choice(_ACTIONS_ING), _object(rng), rng.choice(_PLACES)]
    pools = [_ADJECTIVES, _PEOPLE, _ACTIONS_ING, _ANIMALS + _THINGS, _PLACES]
    keep = rng.random()
    other = [word if rng.random() < keep else _other(rng, pool, word) for word, pool in zip(slots, pools)]
    shared = sum(a == b for a, b in zip(slots, other)) / len(slots)
    score = min(5.0, max(0.0, 5.0 * shared + rng.gauss(0.0, 0.5)))

    def caption(words):
        adj, who, action, what, where = words
        return f"A {adj} {who} is {action} a {what} in the {where} ."
    return caption(slots), caption(other), score


def _demo_sts(rng, n_train, n_dev, n_test):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = [header + ([] if split == "test" else ["score"])]
        for index in range(n):
            first, second, score = _sts_pair(rng)
            row = [str(index), rng.choice(("main-captions", "main-news", "main-forums")),
                   "MSRvid", "2012test", f"{index + 1:04d}", "none", "none", first, second]
            rows.append(row if split == "test" else row + [f"{score:.3f}"])
        files[split] = rows
    return files


_DEMO_MAKERS = {"cola": _demo_cola, "mrpc": _demo_mrpc, "mnli": _demo_mnli, "rte": _demo_rte,
                "sts": _demo_sts, "sst": _demo_sst, "qqp": _demo_qqp, "qnli": _demo_qnli,
                "wnli": _demo_wnli}


def _write_tsv(path: Path, rows: list) -> None:
    atomic_write_text(path, "".join("\t".join(row) + "\n" for row in rows))


def write_demo_glue(out_dir, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write a small synthetic GLUE tree in the exact real layouts; return {task: n_train}.

    Deterministic in `seed` (each task has its own random stream, so tasks do not
    depend on each other). Every task is learnable from its text, with about 10%
    label noise so that no task is trivially solved. Train sizes are unequal
    (MNLI and QQP largest, RTE and MRPC smallest) and scale with `scale`, as do
    the dev (100) and test (60) sizes.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out_dir = Path(out_dir)
    n_train = {task: _scaled(size, scale, 20) for task, size in _DEMO_TRAIN_SIZES.items()}
    n_dev, n_test = _scaled(_DEMO_DEV_SIZE, scale, 10), _scaled(_DEMO_TEST_SIZE, scale, 5)
    for task, make in _DEMO_MAKERS.items():
        # A string seed is hashed deterministically (unaffected by PYTHONHASHSEED).
        rng = random.Random(f"bert-pals-demo-glue/{seed}/{task}")
        for split, rows in make(rng, n_train[task], n_dev, n_test).items():
            _write_tsv(out_dir / TASKS[task].folder / f"{split}.tsv", rows)
    rng = random.Random(f"bert-pals-demo-glue/{seed}/diagnostic")
    _write_tsv(out_dir / "diagnostic" / "diagnostic.tsv", _demo_diagnostic(rng, n_test))
    return n_train
