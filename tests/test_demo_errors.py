"""benchmarks/demo_errors.py reads each MRPC and SST-2 example's label back from its text.

The reference is the generator itself (demo_data.py) with its label noise switched off:
every label written must be the one read back, for every kind of example.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import demo_data
import glue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import demo_errors  # noqa: E402


@pytest.fixture(scope="module")
def noiseless_glue(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_data, "_LABEL_NOISE", 0.0)
        out = tmp_path_factory.mktemp("noiseless")
        demo_data.write_demo_glue(out, seed=3, scale=2.0)
    return out


@pytest.mark.parametrize("task, truth, kinds", [
    ("mrpc", lambda e: demo_errors.mrpc_truth(e.text_a, e.text_b),
     {"paraphrase", "subject", "object", "place", "day", "swapped"}),
    ("sst", lambda e: demo_errors.sst_truth(e.text_a),
     {"it's a ...", "1 clause", "1 clause + not", "2 clauses (but)", "2 clauses (but) + not", "3 clauses",
      "3 clauses + not"}),
])
def test_the_label_read_from_the_text_is_the_generators(noiseless_glue, task, truth, kinds):
    examples = [e for split in ("train", "dev") for e in glue.read_examples(noiseless_glue, task, split)]
    found = [truth(e) for e in examples]
    wrong = [(e.text_a, e.text_b, e.label, label) for e, (label, _) in zip(examples, found) if label != e.label]
    assert not wrong, f"{len(wrong)} of {len(examples)} read wrongly, e.g. {wrong[:3]}"
    assert {kind for _, kind in found} == kinds


def test_a_model_answering_the_files_labels_errs_exactly_on_the_flipped_ones(make_glue_dir):
    data_dir = make_glue_dir(0, 1.0)  # with the usual label noise

    class FileLabels:  # stands in for a trained model: it answers each example's file label
        def __call__(self, task, inputs):
            labels = {(e.text_a, e.text_b) if e.text_b else e.text_a: e.label
                      for split in ("train", "dev") for e in glue.read_examples(data_dir, task, split)}
            return [{"label": labels[item]} for item in inputs]

    class OneLabel:  # answers "1" to everything
        def __call__(self, task, inputs):
            return [{"label": "1"} for _ in inputs]

    for task in ("mrpc", "sst"):
        found = demo_errors.task_errors(FileLabels(), data_dir, task)
        n = len(glue.read_examples(data_dir, task, "dev"))
        assert found["accuracy"] == 1.0
        assert 0 < found["flipped_labels"] < 0.25 * n
        assert found["true_accuracy"] == pytest.approx(1 - found["flipped_labels"] / n)
        errors = sum(int(count.split("/")[0]) for count in found["errors"].values())
        examples = sum(int(count.split("/")[1]) for count in found["errors"].values())
        assert (errors, examples) == (found["flipped_labels"], n)
        # per true label: the flipped dev labels of each class, counted here from the raw files
        dev = glue.read_examples(data_dir, task, "dev")
        truth = [(demo_errors.mrpc_truth(e.text_a, e.text_b) if task == "mrpc" else demo_errors.sst_truth(e.text_a))[0]
                 for e in dev]
        assert found["errors_by_label"] == {label: f"{sum(t == label != e.label for t, e in zip(truth, dev))}"
                                                   f"/{truth.count(label)}" for label in ("0", "1")}

        train = glue.read_examples(data_dir, task, "train")
        truth = [(demo_errors.mrpc_truth(e.text_a, e.text_b) if task == "mrpc" else demo_errors.sst_truth(e.text_a))[0]
                 for e in train]
        flipped = {label: sum(t == label != e.label for t, e in zip(truth, train)) for label in ("0", "1")}
        assert all(flipped.values())
        # answering the file's labels reproduces every flipped one, except where the same
        # text is in the file twice with both labels: a model answers one label per text (the
        # stand-in, the later line's); answering "1" reproduces exactly those whose text says 0
        answer = {(e.text_a, e.text_b): e.label for e in train}
        reproduced = {label: sum(t == label != e.label == answer[e.text_a, e.text_b] for t, e in zip(truth, train))
                      for label in ("0", "1")}
        assert reproduced["0"] + reproduced["1"] >= sum(flipped.values()) - 2
        assert demo_errors.memorised(FileLabels(), data_dir, task) == {label: f"{reproduced[label]}/{n}"
                                                                      for label, n in flipped.items()}
        assert demo_errors.memorised(OneLabel(), data_dir, task) == {"0": f"{flipped['0']}/{flipped['0']}",
                                                                    "1": f"0/{flipped['1']}"}


def test_word_probes_count_the_sentences_a_model_calls_wrongly():
    class Rule:  # the generator's rule for one clause: the sentiment word decides
        def __call__(self, task, inputs):
            return [{"label": "1" if text.split()[-1] in demo_data._POSITIVE else "0"} for text in inputs]

    class Backwards(Rule):  # the rule, but "fresh" is negative
        def __call__(self, task, inputs):
            return [{"label": "0" if text.endswith(" fresh") else answer["label"]}
                    for text, answer in zip(inputs, super().__call__(task, inputs))]

    words = len(demo_data._POSITIVE) + len(demo_data._NEGATIVE)
    per_word = len(demo_data._ASPECTS) * (1 + len(demo_data._INTENSIFIERS))  # 16 aspects x 7
    assert demo_errors.word_probes(Rule()) == {"probes": words * per_word, "wrong": 0, "per_word": {}}
    assert demo_errors.word_probes(Backwards()) == {"probes": words * per_word, "wrong": per_word,
                                                    "per_word": {"fresh": per_word}}
    # every probe of a negative word is wrong for a model that answers "1"
    ones = demo_errors.word_probes(lambda task, inputs: [{"label": "1"} for _ in inputs])
    assert ones["wrong"] == len(demo_data._NEGATIVE) * per_word
    assert set(ones["per_word"]) == set(demo_data._NEGATIVE)


@pytest.mark.parametrize("task", ["mrpc", "sst"])
def test_ranking_tells_the_order_from_the_cut(noiseless_glue, task):
    """Stand-ins that give each example a log-odds from its label in the noiseless files
    (the truth there): the AUC is 1 when every "1" is above every "0", 0 reversed, 0.5
    when all tie; the cut is fitted on the training set, not on dev."""
    def labels(split):
        return {(e.text_a, e.text_b) if e.text_b else e.text_a: e.label
                for e in glue.read_examples(noiseless_glue, task, split)}
    train, dev = labels("train"), labels("dev")

    def stand_in(log_odds):
        def answer(_task, inputs):
            zs = [log_odds(train.get(item, dev.get(item)), item not in dev) for item in inputs]
            return [{"label": "1" if z > 0 else "0", "probabilities": {"1": 1 / (1 + np.exp(-z)), "0": 1 / (1 + np.exp(z))}}
                    for z in zs]
        return answer

    # on the training set every log-odds is 3 lower (but for the few texts in dev too): the
    # cut that fits it lies between -4 and -2, and on dev (log-odds +-1) it calls everything "1"
    shifted = demo_errors.ranking(stand_in(lambda label, in_train: (1 if label == "1" else -1) - 3 * in_train),
                                  noiseless_glue, task)
    dev_labels = [e.label for e in glue.read_examples(noiseless_glue, task, "dev")]
    ones = dev_labels.count("1") / len(dev_labels)
    assert 0 < ones < 1
    assert shifted["auc"] == 1.0
    assert -4 < shifted["cut"] < -2
    assert shifted["accuracy_at_cut"] == pytest.approx(ones)
    backwards = demo_errors.ranking(stand_in(lambda label, _: -1 if label == "1" else 1), noiseless_glue, task)
    assert backwards["auc"] == 0.0
    assert demo_errors.ranking(stand_in(lambda *_: 0.5), noiseless_glue, task)["auc"] == 0.5
