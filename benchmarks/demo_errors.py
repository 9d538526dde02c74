"""Which demo dev examples a run gets wrong, for MRPC and SST-2, and of what kind.

The demo data's labels follow rules written in demo_data.py, so each dev example's true
label can be read back from its text. That splits a run's misses into label noise (the
~10% of dev labels flipped on purpose, which no model can get right) and the model's
own errors, and sorts those by kind: for MRPC the detail that differs between the two
sentences (subject, object, place, weekday, or subject and object swapped), for SST-2
the sentence's form and whether a clause is negated. The same reading on the training
set counts the flipped training labels the model answers with the flipped label: noise
it has learned by heart, which costs it dev examples that resemble them; and SST-2's
one-clause probes, every sentiment word in every aspect, show which words' polarity the
model has learned backwards. The dev AUC of the model's log-odds against the text's labels,
and its accuracy at a cut fitted on the training set, tell how well it orders the
examples apart from where it cuts.

    python benchmarks/demo_errors.py demo_output [more run folders]

A run folder is what run_multi_task.py writes (best_model.pth, config.json, tasks.json,
vocab.txt); the dev sets are read from --data_dir (default: the demo's).
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
import demo  # noqa: E402
import demo_data  # noqa: E402
import glue  # noqa: E402
from errors import DataError, UsageError  # noqa: E402
from inference import Predictor  # noqa: E402

POSITIVE, NEGATIVE = set(demo_data._POSITIVE), set(demo_data._NEGATIVE)
UNSYNONYM = {synonym: word for word, synonym in demo_data._SYNONYMS.items()}
VERB_OF = {form: i for i, forms in enumerate(demo_data._VERBS) for form in forms}

# MRPC's first sentence, lower-cased: [the SPEAKER said "] the ADJ SUBJECT VERB the OBJECT in the PLACE on DAY [" ] .
FIRST = re.compile(r'(?:the \w+ said " )?the \w+ (\w+) (\w+) the (\w+) in the (\w+) on (\w+)(?: ")? \.')
# The second, after undoing the synonyms: active with the weekday in front, or passive.
ACTIVE = re.compile(r"on (?P<day>\w+) , the \w+ (?P<subject>\w+) (?P<verb>\w+) the (?P<object>\w+) in the (?P<place>\w+) \.")
PASSIVE = re.compile(r"the (?P<object>\w+) was (?P<verb>\w+) by the \w+ (?P<subject>\w+) in the (?P<place>\w+) on (?P<day>\w+) \.")
SLOTS = ("subject", "verb", "object", "place", "day")


def _event(match: re.Match | None, text: str) -> dict:
    if match is None:
        raise ValueError(f"not a demo MRPC sentence: {text!r}")
    event = dict(zip(SLOTS, match.groups())) if match.re is FIRST else match.groupdict()
    event["verb"] = VERB_OF[event["verb"]]  # past tense or participle: the same verb
    return event


def mrpc_truth(first: str, second: str) -> tuple[str, str]:
    """(label, kind) of an MRPC pair from its text: "1" if both sentences tell the same
    event; otherwise "0", and the kind names the detail that differs."""
    a = _event(FIRST.fullmatch(first.lower()), first)
    unsynonymised = " ".join(UNSYNONYM.get(word, word) for word in second.lower().split())
    b = _event(ACTIVE.fullmatch(unsynonymised) or PASSIVE.fullmatch(unsynonymised), second)
    differ = [slot for slot in SLOTS if a[slot] != b[slot]]
    if not differ:
        return "1", "paraphrase"
    if differ == ["subject", "object"] and b["object"] == a["subject"]:
        return "0", "swapped"
    if len(differ) != 1:
        raise ValueError(f"MRPC pair differs in {differ}, not one detail: {first!r} / {second!r}")
    return "0", differ[0]


def _clause_polarity(clause: str) -> tuple[int, bool]:
    """(+1 or -1, negated) of "the ASPECT is [not] [INTENSIFIER] WORD" or "it 's a WORD"."""
    words = clause.split()
    polarity = 1 if words[-1] in POSITIVE else -1 if words[-1] in NEGATIVE else 0
    if polarity == 0:
        raise ValueError(f"no sentiment word at the end of {clause!r}")
    negated = "not" in words
    return (-polarity if negated else polarity), negated


def sst_truth(sentence: str) -> tuple[str, str]:
    """(label, kind) of an SST-2 sentence from its text: the sign of its clauses' summed
    polarities (a clause's word, flipped by "not"); on a tie, the clause after "but".
    The kind: the sentence's form, "+ not" if a clause is negated."""
    text = sentence.strip()
    if text.startswith("it 's a "):  # it 's a WORD ASPECT
        return ("1" if _clause_polarity(" ".join(text.split()[:4]))[0] > 0 else "0"), "it's a ..."
    but = " , but " in text
    clauses = [_clause_polarity(clause) for clause in text.split(" , but " if but else " , and ")]
    total = sum(polarity for polarity, _ in clauses)
    if but and total == 0:
        total = clauses[1][0]
    kind = "2 clauses (but)" if but else f"{len(clauses)} clause{'s' * (len(clauses) > 1)}"
    return ("1" if total > 0 else "0"), kind + (" + not" if any(negated for _, negated in clauses) else "")


def _truth(task: str, example: glue.InputExample) -> tuple[str, str]:
    return mrpc_truth(example.text_a, example.text_b) if task == "mrpc" else sst_truth(example.text_a)


def _answers_with_probabilities(predictor: Predictor, task: str, examples: list) -> list[dict]:
    return predictor(task, [(e.text_a, e.text_b) if e.text_b else e.text_a for e in examples])


def _answers(predictor: Predictor, task: str, examples: list) -> list[str]:
    return [result["label"] for result in _answers_with_probabilities(predictor, task, examples)]


def task_errors(predictor: Predictor, data_dir: Path, task: str) -> dict:
    """Dev accuracy against the file's labels and against the labels read from the text,
    the flipped labels, and the model's own errors per kind and per true label
    ("errors/examples")."""
    examples = glue.read_examples(data_dir, task, "dev")
    truth = [_truth(task, e) for e in examples]
    predicted = _answers(predictor, task, examples)
    errors, totals = collections.Counter(), collections.Counter()
    by_label, label_totals = collections.Counter(), collections.Counter()
    for guess, (label, kind) in zip(predicted, truth):
        totals[kind] += 1
        errors[kind] += guess != label
        label_totals[label] += 1
        by_label[label] += guess != label
    n = len(examples)
    return {"accuracy": sum(g == e.label for g, e in zip(predicted, examples)) / n,
            "true_accuracy": sum(g == label for g, (label, _) in zip(predicted, truth)) / n,
            "flipped_labels": sum(e.label != label for e, (label, _) in zip(examples, truth)),
            "errors": {kind: f"{errors[kind]}/{totals[kind]}" for kind in sorted(totals)},
            "errors_by_label": {label: f"{by_label[label]}/{label_totals[label]}" for label in sorted(label_totals)}}


def memorised(predictor: Predictor, data_dir: Path, task: str) -> dict:
    """The training examples whose file label was flipped, per true label, and how many
    of them the model answers with the flipped label: label noise it has learned by heart."""
    examples = [e for e in glue.read_examples(data_dir, task, "train") if e.label != _truth(task, e)[0]]
    flipped, learned = collections.Counter(), collections.Counter()
    for example, guess in zip(examples, _answers(predictor, task, examples)):
        label = _truth(task, example)[0]
        flipped[label] += 1
        learned[label] += guess == example.label
    return {label: f"{learned[label]}/{flipped[label]}" for label in sorted(flipped)}


def ranking(predictor: Predictor, data_dir: Path, task: str) -> dict:
    """How well the model orders the dev examples, apart from where it cuts: each
    example's log-odds z = log p("1") - log p("0"); the dev AUC against the labels read
    from the text (the chance that a true "1" gets a higher z than a true "0", ties
    half), and the dev accuracy against the text at the cut that fits the training set's
    text labels best (of those, the one nearest 0), so that the cut is not fitted on dev."""
    def log_odds(examples):
        answers = _answers_with_probabilities(predictor, task, examples)
        return np.array([np.log(a["probabilities"]["1"]) - np.log(a["probabilities"]["0"]) for a in answers])

    def split(name):
        examples = glue.read_examples(data_dir, task, name)
        return log_odds(examples), np.array([_truth(task, e)[0] == "1" for e in examples])

    z, positive = split("train")
    values = np.unique(z)
    cuts = np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    accuracy = ((z[None, :] > cuts[:, None]) == positive[None, :]).mean(axis=1)
    best = cuts[accuracy == accuracy.max()]
    cut = best[np.argmin(np.abs(best))]
    z, positive = split("dev")
    above = z[positive][:, None] - z[~positive][None, :]
    return {"auc": float((above > 0).mean() + 0.5 * (above == 0).mean()), "cut": float(cut),
            "accuracy_at_cut": float(((z > cut) == positive).mean())}


def word_probes(predictor: Predictor) -> dict:
    """SST-2's one-clause sentences "the ASPECT is [INTENSIFIER] WORD" for every aspect,
    intensifier (or none) and sentiment word of the generator: how many the model calls
    wrongly, per word. A word wrong in most of its probes is a polarity the model has
    learned backwards."""
    probes = [(f"the {aspect} is {intensifier + ' ' if intensifier else ''}{word}", word)
              for word in [*demo_data._POSITIVE, *demo_data._NEGATIVE] for aspect in demo_data._ASPECTS
              for intensifier in ["", *demo_data._INTENSIFIERS]]
    answers = predictor("sst", [text for text, _ in probes])
    wrong = collections.Counter(word for (_, word), answer in zip(probes, answers)
                                if answer["label"] != ("1" if word in POSITIVE else "0"))
    return {"probes": len(probes), "wrong": sum(wrong.values()), "per_word": dict(wrong.most_common())}


def run(args: argparse.Namespace) -> None:
    for run_dir in args.runs:
        predictor = Predictor.from_run(run_dir)
        tasks = [task for task in ("mrpc", "sst") if task in predictor.task_names]
        if not tasks:
            raise UsageError(f"{run_dir}: the model was trained on {', '.join(predictor.task_names)}, "
                             f"neither MRPC nor SST-2")
        for task in tasks:
            try:
                found = task_errors(predictor, args.data_dir, task)
                learned = memorised(predictor, args.data_dir, task)
                ranked = ranking(predictor, args.data_dir, task)
            except ValueError as err:  # not the demo's sentences
                raise DataError(f"{args.data_dir}: {err}; this script reads only the demo data") from None
            print(f"{run_dir}  {task:4s}  dev accuracy {found['accuracy']:.2f} ({found['flipped_labels']} labels "
                  f"flipped), against the text's labels {found['true_accuracy']:.2f}; errors by kind:")
            print("    " + "; ".join(f"{kind} {count}" for kind, count in found["errors"].items()))
            print("    errors by the text's label: " + "; ".join(f"{label} {count}" for label, count in
                                                               found["errors_by_label"].items()))
            print("    flipped training labels the model reproduces, by the text's label: "
                  + "; ".join(f"{label} {count}" for label, count in learned.items()))
            print(f"    dev AUC against the text's labels {ranked['auc']:.3f}; at the cut that fits the training "
                  f"set's text labels best (log-odds of 1 > {ranked['cut']:+.2f}) {ranked['accuracy_at_cut']:.2f}")
            if task == "sst":
                probed = word_probes(predictor)
                print(f"    one-clause probes wrong: {probed['wrong']} of {probed['probes']}"
                      + "".join(f"; {word} {count}" for word, count in probed["per_word"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of run_multi_task.py")
    parser.add_argument("--data_dir", type=Path, default=demo.DATA_DIR, help="the demo GLUE folder")
    return cli.run_main(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
