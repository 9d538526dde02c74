"""Tests for glue.py (registry, readers, features, sampling, metrics, submissions) and demo_data.py.

GLUE cannot be downloaded here, so the reader tests write small files in the
exact GLUE layouts (spec 3.3), oddities included, and check every parsed field.
"""
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import demo_data
import glue
from glue import DataError, InputExample, InputFeatures
from tokenization import FullTokenizer

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def write_lines(root: Path, rel: str, lines, newline="\n") -> Path:
    """Write a TSV: each line is a list of fields (joined by tabs) or a raw string."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(("\t".join(line) if isinstance(line, list) else line) + newline for line in lines)
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return FullTokenizer(str(vocab_file), do_lower_case=True)


def original_probs(sizes, alpha):
    """The original's computation (spec 3.7), written out independently."""
    weights = [p ** alpha for p in sizes]
    total = sum(weights)
    return [w / total for w in weights]


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

def test_registry_has_nine_tasks_with_consistent_specs():
    assert set(glue.TASKS) == {"cola", "mrpc", "mnli", "rte", "sts", "sst", "qqp", "qnli", "wnli"}
    assert glue.TASKS["sts"].is_regression and glue.TASKS["sts"].num_labels == 1
    assert glue.TASKS["mnli"].num_labels == 3
    assert glue.TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert glue.TASKS["qnli"].labels == ("not_entailment", "entailment")
    assert glue.TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert [glue.TASKS[t].folder for t in glue.ORIGINAL_TASK_ORDER] == \
        ["CoLA", "MRPC", "MNLI", "RTE", "STS-B", "SST-2", "QQP", "QNLI"]
    assert list(glue.ORIGINAL_SIZES) == list(glue.ORIGINAL_TASK_ORDER)


def test_resolve_task_names_presets():
    assert glue.resolve_task_names("all") == list(glue.ORIGINAL_TASK_ORDER)
    assert glue.resolve_task_names("inf") == ["qnli", "mnli", "rte"]
    assert glue.resolve_task_names("single", 1) == ["mrpc"]
    assert glue.resolve_task_names("single", 7) == ["qnli"]
    assert glue.resolve_task_names("single", "4") == ["sts"]  # argparse gives a string


def test_task_id_is_a_name_or_an_index_in_the_all_order():
    """--task_id means the same in run_multi_task.py and extract_features.py (issue 23, item 9)."""
    assert [glue.task_for_id(i) for i in range(8)] == ["cola", "mrpc", "mnli", "rte", "sts", "sst", "qqp", "qnli"]
    assert glue.task_for_id("SST-2") == glue.task_for_id(" 5 ") == glue.task_for_id(5) == "sst"
    assert glue.resolve_task_names("single", "rte") == ["rte"]
    assert glue.resolve_task_names("single", "wnli") == ["wnli"]  # by name: beyond the eight
    assert glue.task_id_argument("3") == 3 and glue.task_id_argument("mnli") == "mnli"


def test_resolve_task_names_lists_and_aliases_keep_order():
    assert glue.resolve_task_names("rte,STS-B,sst2,wnli") == ["rte", "sts", "sst", "wnli"]
    assert glue.resolve_task_names(" CoLA , mnli ") == ["cola", "mnli"]
    assert glue.resolve_task_names("stsb") == ["sts"]


@pytest.mark.parametrize("arg, task_id, fragment", [
    ("cola,bogus", None, "unknown task 'bogus'"),
    ("cola,CoLA", None, "more than once: cola"),
    ("sts,sts-b", None, "more than once: sts"),
    ("cola,,rte", None, "bad task list"),
    ("single", None, "needs a task id"),
    ("single", 8, "out of range"),
    ("single", "two", "must be a task name or an integer"),
    ("single", "-1", "out of range"),
])
def test_resolve_task_names_rejects_bad_input(arg, task_id, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        glue.resolve_task_names(arg, task_id)
    if "unknown" in fragment:
        assert "cola, mrpc, mnli" in str(err.value)  # lists the valid names


# ---------------------------------------------------------------------------
# sampling (spec 3.7)
# ---------------------------------------------------------------------------

SIZES = list(glue.ORIGINAL_SIZES.values())
SPEC_TABLE = {  # spec 3.7, order cola, mrpc, mnli, rte, sts, sst, qqp, qnli
    ("prop", 0): [.0090, .0038, .4122, .0026, .0060, .0707, .3819, .1138],
    ("anneal", 0): [.0090, .0038, .4122, .0026, .0060, .0707, .3819, .1138],
    ("anneal", 12): [.0330, .0198, .3276, .0157, .0260, .1137, .3129, .1513],
    ("anneal", 24): [.0910, .0768, .1956, .0711, .0840, .1375, .1927, .1512],
    ("sqrt", 0): [.0441, .0289, .2988, .0238, .0361, .1237, .2876, .1570],
}


@pytest.mark.parametrize("method, epoch", list(SPEC_TABLE))
def test_sampling_probabilities_match_spec_table(method, epoch):
    probs = glue.sampling_probabilities(SIZES, method, epoch, 25)
    np.testing.assert_array_equal(np.round(probs, 4), SPEC_TABLE[(method, epoch)])
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_sampling_probabilities_are_bit_identical_to_the_original_formula():
    for epoch in range(25):
        alpha = 1. - 0.8 * epoch / (25.0 - 1)
        assert glue.sampling_probabilities(SIZES, "anneal", epoch, 25).tolist() == original_probs(SIZES, alpha)
    assert glue.sampling_probabilities(SIZES, "sqrt").tolist() == original_probs(SIZES, 0.5)


def test_anneal_with_one_epoch_is_proportional():
    np.testing.assert_array_equal(glue.sampling_probabilities(SIZES, "anneal", 0, 1),
                                  glue.sampling_probabilities(SIZES, "prop"))


def test_uniform_and_rr_probabilities_are_equal():
    for method in ("uniform", "rr"):
        np.testing.assert_allclose(glue.sampling_probabilities([5, 100, 7], method), [1 / 3] * 3)


@pytest.mark.parametrize("sizes, method, epoch, fragment", [
    (SIZES, "temperature", 0, "unknown sampling method"),
    (SIZES, "anneal", 25, "epoch"),
    ([], "prop", 0, "non-empty"),
    ([3, 0], "prop", 0, "positive"),
])
def test_sampling_probabilities_reject_bad_input(sizes, method, epoch, fragment):
    with pytest.raises(ValueError, match=fragment):
        glue.sampling_probabilities(sizes, method, epoch, 25)


def _global_numpy_draws(seed, probs_per_epoch, steps):
    """The original's draws: np.random.seed(seed), then np.random.choice(8, p=probs)."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        return [int(np.random.choice(8, p=probs)) for probs in probs_per_epoch for _ in range(steps)]
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize("method", ["prop", "sqrt", "anneal"])
def test_task_sampler_draws_equal_the_originals_global_numpy_draws(method):
    epochs, steps = 5, 300
    alphas = {"prop": [1.0] * epochs, "sqrt": [0.5] * epochs,
              "anneal": [1. - 0.8 * e / (epochs - 1) for e in range(epochs)]}[method]
    expected = _global_numpy_draws(42, [original_probs(SIZES, a) for a in alphas], steps)
    sampler = glue.TaskSampler(SIZES, method, epochs, seed=42)
    drawn = []
    for epoch in range(epochs):
        sampler.start_epoch(epoch)
        drawn += [sampler.next_task() for _ in range(steps)]
    assert drawn == expected


def test_task_sampler_frequencies_match_probabilities():
    sampler = glue.TaskSampler(SIZES, "sqrt", 1, seed=3)
    n = 200_000
    counts = np.bincount([sampler.next_task() for _ in range(n)], minlength=8)
    probs = sampler.probs
    tolerance = 5 * np.sqrt(probs * (1 - probs) / n)  # five standard errors
    assert np.all(np.abs(counts / n - probs) < tolerance)


def test_task_sampler_round_robin_visits_every_task_in_turn_across_epochs():
    sampler = glue.TaskSampler([10, 20, 30], "rr", 3, seed=0)
    drawn = []
    for epoch in range(3):
        sampler.start_epoch(epoch)
        drawn += [sampler.next_task() for _ in range(5)]
    assert drawn == [0, 1, 2] * 5


def test_task_sampler_start_epoch_returns_that_epochs_probabilities():
    sampler = glue.TaskSampler(SIZES, "anneal", 25, seed=0)
    probs = sampler.start_epoch(12)
    np.testing.assert_array_equal(probs, glue.sampling_probabilities(SIZES, "anneal", 12, 25))
    np.testing.assert_array_equal(sampler.probs, probs)


@pytest.mark.parametrize("method", ["anneal", "rr"])
def test_task_sampler_state_dict_round_trip_continues_identically(method, tmp_path):
    reference = glue.TaskSampler(SIZES, method, 4, seed=7)
    reference.start_epoch(2)
    for _ in range(1001):
        reference.next_task()
    state = reference.state_dict()
    # The state must survive a weights-only torch checkpoint and JSON unchanged.
    torch.save({"sampler": state}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["sampler"]
    state = json.loads(json.dumps(state))
    resumed = glue.TaskSampler(SIZES, method, 4, seed=99)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.probs, reference.probs)
    assert [resumed.next_task() for _ in range(500)] == [reference.next_task() for _ in range(500)]


def test_task_sampler_refuses_state_of_another_setup():
    state = glue.TaskSampler(SIZES, "prop", 4, seed=7).state_dict()
    with pytest.raises(ValueError, match="sampler state"):
        glue.TaskSampler(SIZES, "sqrt", 4, seed=7).load_state_dict(state)


# ---------------------------------------------------------------------------
# readers: every real layout, with its oddities
# ---------------------------------------------------------------------------

MNLI_BASE = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
             "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
STS_COLUMNS = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]
QQP_COLUMNS = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]


def mnli_row(index, premise, hypothesis, labels=()):
    return [str(index), "31193", f"31193{index}", "government", "( ( x ) )", "( ( y ) )",
            "(ROOT (S x))", "(ROOT (S y))", premise, hypothesis, *labels]


def test_read_cola_train_has_no_header_and_keeps_quotes(tmp_path):
    write_lines(tmp_path, "CoLA/train.tsv", [
        ["gj04", "1", "", 'He said "hello" to us.'],
        ["gj04", "0", "*", "Us hello said he to."],
    ])
    assert glue.read_examples(tmp_path, "cola", "train") == [
        InputExample("train-0", 'He said "hello" to us.', None, "1"),
        InputExample("train-1", "Us hello said he to.", None, "0"),
    ]


def test_read_cola_dev_with_crlf_line_endings(tmp_path):
    write_lines(tmp_path, "CoLA/dev.tsv", [["bc01", "1", "", "The dog barked."]], newline="\r\n")
    assert glue.read_examples(tmp_path, "cola", "dev") == [InputExample("dev-0", "The dog barked.", None, "1")]


def test_read_sst_train_keeps_trailing_space_and_literal_quotes(tmp_path):
    write_lines(tmp_path, "SST-2/train.tsv", [
        ["sentence", "label"],
        ["hide new secretions from the parental units ", "0"],
        ['it \'s a charming and " often " affecting journey . ', "1"],
    ])
    assert glue.read_examples(tmp_path, "sst", "train") == [
        InputExample("train-1", "hide new secretions from the parental units ", None, "0"),
        InputExample("train-2", 'it \'s a charming and " often " affecting journey . ', None, "1"),
    ]


def test_read_mrpc_dev_label_first(tmp_path):
    write_lines(tmp_path, "MRPC/dev.tsv", [
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["1", "1355540", "1355592", 'He said " no " .', 'He answered " no " .'],
        ["0", "2029631", "2029565", "Prices rose .", "Prices fell ."],
    ])
    assert glue.read_examples(tmp_path, "mrpc", "dev") == [
        InputExample("dev-1", 'He said " no " .', 'He answered " no " .', "1"),
        InputExample("dev-2", "Prices rose .", "Prices fell .", "0"),
    ]


def test_read_sts_train_score_is_last_column(tmp_path):
    write_lines(tmp_path, "STS-B/train.tsv", [
        ["index", "genre", "filename", "year", "old_index", "source1", "source2",
         "sentence1", "sentence2", "score"],
        ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
         "A plane is taking off.", "An air plane is taking off.", "5.000"],
        ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
         "A man is playing a flute.", "A man is eating.", "0.500"],
    ])
    assert glue.read_examples(tmp_path, "sts", "train") == [
        InputExample("train-1", "A plane is taking off.", "An air plane is taking off.", "5.000"),
        InputExample("train-2", "A man is playing a flute.", "A man is eating.", "0.500"),
    ]


def test_read_qqp_train_drops_rows_without_exactly_six_fields(tmp_path, caplog):
    path = tmp_path / "QQP/train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "0\t1\t2\tHow do I cook?\tHow can I learn to cook?\t1\n"
        "1\t3\t4\tWhy is the sky blue?\t0\n"                          # question2 missing
        "2\t5\t6\tWhat is a\n"                                         # question1 broken by a newline
        "\"quote\"?\tWhat is a quote?\t1\n"
        "3\t7\t8\tIs it \"odd\"?\tIs it even?\t0\n", encoding="utf-8")
    assert glue.read_examples(tmp_path, "qqp", "train") == [
        InputExample("train-1", "How do I cook?", "How can I learn to cook?", "1"),
        InputExample("train-5", 'Is it "odd"?', "Is it even?", "0"),
    ]
    # ... but not without a word (issue 23, item 2): one warning, the rows' lines
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == f"{path}: skipped 3 row(s) without exactly 6 fields, as the original did (lines 3, 4, 5)"


def test_read_mnli_train_twelve_columns_guid_from_index(tmp_path):
    write_lines(tmp_path, "MNLI/train.tsv", [
        MNLI_BASE + ["label1", "gold_label"],
        mnli_row(0, "The cat sat.", "A cat sat.", ["entailment", "entailment"]),
        mnli_row(7, 'He said "go".', "He was silent.", ["neutral", "contradiction"]),
    ])
    assert glue.read_examples(tmp_path, "mnli", "train") == [
        InputExample("train-0", "The cat sat.", "A cat sat.", "entailment"),
        InputExample("train-7", 'He said "go".', "He was silent.", "contradiction"),
    ]


@pytest.mark.parametrize("split", ["dev_matched", "dev_mismatched"])
def test_read_mnli_dev_sixteen_columns_gold_label_last(tmp_path, split):
    write_lines(tmp_path, f"MNLI/{split}.tsv", [
        MNLI_BASE + ["label1", "label2", "label3", "label4", "label5", "gold_label"],
        mnli_row(3, "It rained.", "It was dry.", ["contradiction"] * 4 + ["neutral", "contradiction"]),
    ])
    assert glue.read_examples(tmp_path, "mnli", split) == [
        InputExample(f"{split}-3", "It rained.", "It was dry.", "contradiction")]


def test_read_mnli_dev_alias_is_matched(tmp_path):
    write_lines(tmp_path, "MNLI/dev_matched.tsv", [
        MNLI_BASE + ["label1", "label2", "label3", "label4", "label5", "gold_label"],
        mnli_row(0, "a", "b", ["neutral"] * 6)])
    assert glue.read_examples(tmp_path, "mnli", "dev") == glue.read_examples(tmp_path, "mnli", "dev_matched")


@pytest.mark.parametrize("task, folder, split, header", [
    ("qnli", "QNLI", "train", ["index", "question", "sentence", "label"]),
    ("rte", "RTE", "dev", ["index", "sentence1", "sentence2", "label"]),
    ("wnli", "WNLI", "train", ["index", "sentence1", "sentence2", "label"])])
def test_read_index_text_text_label_layouts(tmp_path, task, folder, split, header):
    labels = glue.TASKS[task].labels
    write_lines(tmp_path, f"{folder}/{split}.tsv", [
        header,
        ["0", "Where is \"it\"?", "It is here.", labels[1]],
        ["1", "Who came?", "Nobody knows.", labels[0]],
    ])
    assert glue.read_examples(tmp_path, task, split) == [
        InputExample(f"{split}-1", 'Where is "it"?', "It is here.", labels[1]),
        InputExample(f"{split}-2", "Who came?", "Nobody knows.", labels[0]),
    ]


TEST_LAYOUTS = [  # (task, file, header, row, expected text_a, text_b)
    ("cola", "CoLA/test.tsv", ["index", "sentence"], ["0", "Bill whistled."], "Bill whistled.", None),
    ("sst", "SST-2/test.tsv", ["index", "sentence"], ["0", "a \" fine \" film . "], 'a " fine " film . ', None),
    ("mrpc", "MRPC/test.tsv", ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
     ["0", "1089874", "1089925", "One .", "Two ."], "One .", "Two ."),
    ("sts", "STS-B/test.tsv", ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                               "sentence1", "sentence2"],
     ["0", "main-captions", "MSRvid", "2012test", "0024", "none", "none", "A girl sings.", "A girl dances."],
     "A girl sings.", "A girl dances."),
    ("qqp", "QQP/test.tsv", ["id", "question1", "question2"], ["0", "Why?", "Why not?"], "Why?", "Why not?"),
    ("qnli", "QNLI/test.tsv", ["index", "question", "sentence"], ["0", "Who?", "Me."], "Who?", "Me."),
    ("rte", "RTE/test.tsv", ["index", "sentence1", "sentence2"], ["0", "A b.", "C d."], "A b.", "C d."),
    ("wnli", "WNLI/test.tsv", ["index", "sentence1", "sentence2"], ["0", "E f.", "G h."], "E f.", "G h."),
]


@pytest.mark.parametrize("task, rel, header, row, text_a, text_b", TEST_LAYOUTS)
def test_read_test_files_use_index_as_guid_and_have_no_label(tmp_path, task, rel, header, row, text_a, text_b):
    second = ["17"] + row[1:]
    write_lines(tmp_path, rel, [header, row, second])
    assert glue.read_examples(tmp_path, task, "test") == [
        InputExample("0", text_a, text_b, None), InputExample("17", text_a, text_b, None)]


@pytest.mark.parametrize("split", ["test_matched", "test_mismatched"])
def test_read_mnli_test_ten_columns(tmp_path, split):
    write_lines(tmp_path, f"MNLI/{split}.tsv", [MNLI_BASE, mnli_row(9, "It is.", "It is not.")])
    assert glue.read_examples(tmp_path, "mnli", split) == [InputExample("9", "It is.", "It is not.", None)]


def test_read_diagnostic_set(tmp_path):
    write_lines(tmp_path, "diagnostic/diagnostic.tsv", [
        ["index", "sentence1", "sentence2"],
        ["0", "The cat sat on the mat.", "The cat did not sit on the mat."],
        ["1", 'A "b".', "C."],
    ])
    assert glue.read_examples(tmp_path, "mnli", "diagnostic") == [
        InputExample("0", "The cat sat on the mat.", "The cat did not sit on the mat.", None),
        InputExample("1", 'A "b".', "C.", None),
    ]


# GLUE's header rows, as the files of the GLUE download have them (CoLA's train and dev
# files have none); the label column of each labelled file, for a data row below them.
_NLI_BASE = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
             "sentence2_parse sentence1 sentence2")
GLUE_HEADERS = {  # (task, split): (header, label column or None, a valid label)
    ("sst", "train"): ("sentence label", 1, "1"),
    ("mrpc", "dev"): ("Quality|#1 ID|#2 ID|#1 String|#2 String", 0, "1"),
    ("sts", "train"): ("index genre filename year old_index source1 source2 sentence1 sentence2 score", -1, "3.2"),
    ("qqp", "dev"): ("id qid1 qid2 question1 question2 is_duplicate", -1, "0"),
    ("mnli", "train"): (_NLI_BASE + " label1 gold_label", -1, "neutral"),
    ("mnli", "dev_matched"): (_NLI_BASE + " label1 label2 label3 label4 label5 gold_label", -1, "neutral"),
    ("mnli", "dev_mismatched"): (_NLI_BASE + " label1 label2 label3 label4 label5 gold_label", -1, "neutral"),
    ("qnli", "train"): ("index question sentence label", -1, "entailment"),
    ("rte", "dev"): ("index sentence1 sentence2 label", -1, "not_entailment"),
    ("wnli", "train"): ("index sentence1 sentence2 label", -1, "1"),
    ("cola", "test"): ("index sentence", None, None),
    ("sst", "test"): ("index sentence", None, None),
    ("mrpc", "test"): ("index|#1 ID|#2 ID|#1 String|#2 String", None, None),
    ("sts", "test"): ("index genre filename year old_index source1 source2 sentence1 sentence2", None, None),
    ("qqp", "test"): ("id question1 question2", None, None),
    ("mnli", "test_matched"): (_NLI_BASE, None, None),
    ("mnli", "test_mismatched"): (_NLI_BASE, None, None),
    ("mnli", "diagnostic"): ("index sentence1 sentence2", None, None),
    ("qnli", "test"): ("index question sentence", None, None),
    ("rte", "test"): ("index sentence1 sentence2", None, None),
    ("wnli", "test"): ("index sentence1 sentence2", None, None),
}


def glue_file(root, task, split, lines):
    folder = "diagnostic" if split == "diagnostic" else glue.TASKS[task].folder
    return write_lines(root, f"{folder}/{split}.tsv", lines)


def data_row(width, label_column, label, index):
    row = [str(index)] + [f"text {index} {k}" for k in range(1, width)]
    if label_column is not None:
        row[label_column] = label
    return row


@pytest.mark.parametrize("task, split", list(GLUE_HEADERS))
def test_every_header_is_checked_and_a_missing_one_is_refused(tmp_path, task, split):
    """Issue 23, item 2: a file written without its header row lost its first example
    without a word. Now the header must be GLUE's (any case); without it, or with another
    one, the file is refused naming its line 1."""
    header, label_column, label = GLUE_HEADERS[(task, split)]
    columns = header.split("|") if "|" in header else header.split(" ")
    rows = [data_row(len(columns), label_column, label, k) for k in (7, 8, 9)]
    path = glue_file(tmp_path, task, split, [columns, *rows])
    assert len(glue.read_examples(tmp_path, task, split)) == 3
    glue_file(tmp_path, task, split, [[c.upper() for c in columns], *rows])  # any case
    assert len(glue.read_examples(tmp_path, task, split)) == 3
    glue_file(tmp_path, task, split, rows)  # no header: the first example must not vanish
    assert_data_error(lambda: glue.read_examples(tmp_path, task, split), f"{path}:1: expected the header row",
                      "<TAB>".join(columns))
    glue_file(tmp_path, task, split, [columns[:-1] + ["other"], *rows])  # another header
    assert_data_error(lambda: glue.read_examples(tmp_path, task, split), f"{path}:1: expected the header row")


def test_the_issues_three_line_sst_file_is_refused_not_shortened(tmp_path):
    path = write_lines(tmp_path, "SST-2/train.tsv", [["i loved it", "1"], ["awful", "0"], ["great", "1"]])
    assert_data_error(lambda: glue.read_examples(tmp_path, "sst", "train"),
                      f"{path}:1: expected the header row 'sentence<TAB>label', found 'i loved it<TAB>1'")


def test_a_cola_header_is_named_as_the_problem(tmp_path):
    path = write_lines(tmp_path, "CoLA/train.tsv", [["source", "label", "mark", "sentence"], ["gj04", "1", "", "A."]])
    assert_data_error(lambda: glue.read_examples(tmp_path, "cola", "train"), f"{path}:1: unknown label 'label'",
                      "CoLA's train and dev files have no header row")


def test_iter_text_lines_ignores_blank_lines_at_the_end_only(tmp_path):
    """Issue 23, item 5: most editors end a file with a blank line."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\n\n  \ntwo\r\n\n \t\n\r\n")
    assert list(glue.iter_text_lines(path)) == [(1, "one"), (2, ""), (3, "  "), (4, "two")]
    path.write_bytes(b"\n\n")
    assert list(glue.iter_text_lines(path)) == []


def test_reader_skips_blank_lines_and_utf8_bom(tmp_path):
    path = tmp_path / "SST-2/dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbfsentence\tlabel\n\ncaf\xc3\xa9 ok\t1\n\n")
    assert glue.read_examples(tmp_path, "sst", "dev") == [InputExample("dev-2", "café ok", None, "1")]


# --- bad input -------------------------------------------------------------

def assert_data_error(call, *fragments):
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_names_the_path(tmp_path):
    assert_data_error(lambda: glue.read_examples(tmp_path, "rte", "train"),
                      str(tmp_path / "RTE" / "train.tsv"), "not found")


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "RTE/train.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tcaf\xe9\tb\tentailment\n")
    assert_data_error(lambda: glue.read_examples(tmp_path, "rte", "train"), f"{path}:3:", "UTF-8")


@pytest.mark.parametrize("task, rel, lines, expected", [
    ("sst", "SST-2/train.tsv", [["sentence", "label"], ["too short"]], ":2: expected 2 fields, got 1"),
    ("cola", "CoLA/train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "1", "Short."]],
     ":2: expected 4 fields, got 3"),
    ("mnli", "MNLI/dev_matched.tsv",
     [MNLI_BASE + ["label1", "label2", "label3", "label4", "label5", "gold_label"],
      mnli_row(0, "a", "b", ["neutral", "neutral"])], ":2: expected 16 fields, got 12"),
    ("sts", "STS-B/test.tsv", [STS_COLUMNS[:9], ["0", "main-news", "a", "b"]], ":2: expected 9 fields, got 4"),
])
def test_short_row_names_file_line_and_counts(tmp_path, task, rel, lines, expected):
    path = write_lines(tmp_path, rel, lines)
    split = Path(rel).stem
    assert_data_error(lambda: glue.read_examples(tmp_path, task, split), f"{path}{expected}")


def test_unknown_label_names_file_line_and_label(tmp_path):
    path = write_lines(tmp_path, "RTE/dev.tsv", [
        ["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "entailment"], ["1", "a", "b", "maybe"]])
    assert_data_error(lambda: glue.read_examples(tmp_path, "rte", "dev"), f"{path}:3:", "'maybe'")


@pytest.mark.parametrize("score", ["high", "7.5", "nan", ""])
def test_bad_sts_score_names_file_line_and_score(tmp_path, score):
    path = write_lines(tmp_path, "STS-B/dev.tsv", [
        STS_COLUMNS, ["0", "g", "f", "y", "o", "s1", "s2", "a", "b", score]])
    assert_data_error(lambda: glue.read_examples(tmp_path, "sts", "dev"), f"{path}:2:", repr(score))


@pytest.mark.parametrize("content", ["", "sentence\tlabel\n", "\n\n"])
def test_file_without_examples_is_an_error(tmp_path, content):
    path = tmp_path / "SST-2/train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    assert_data_error(lambda: glue.read_examples(tmp_path, "sst", "train"), str(path), "no examples")


def test_qqp_file_with_only_malformed_rows_has_no_examples(tmp_path):
    path = write_lines(tmp_path, "QQP/dev.tsv", [QQP_COLUMNS, ["0", "1", "2", "q1", "1"]])
    assert_data_error(lambda: glue.read_examples(tmp_path, "qqp", "dev"), str(path), "no examples")


@pytest.mark.parametrize("task, split", [("rte", "dev_matched"), ("cola", "diagnostic"), ("sst", "validation")])
def test_unknown_split_is_rejected(tmp_path, task, split):
    with pytest.raises(ValueError, match="unknown split"):
        glue.read_examples(tmp_path, task, split)


# ---------------------------------------------------------------------------
# features (spec 3.4) with the real tokenizer
# ---------------------------------------------------------------------------

def ids(tokenizer, tokens):
    return [tokenizer.vocab[token] for token in tokens]


def test_pair_features_segments_and_label(tokenizer):
    assert tokenizer.tokenize("The cat sat.") == ["the", "cat", "sat", "."]
    example = InputExample("x", "The cat sat.", "A dog ran", "neutral")
    [feature] = glue.convert_examples_to_features([example], "mnli", tokenizer, 128)
    tokens = ["[CLS]", "the", "cat", "sat", ".", "[SEP]", "a", "dog", "ran", "[SEP]"]
    assert feature == InputFeatures(ids(tokenizer, tokens), [0] * 6 + [1] * 4, 2)


def test_pair_truncation_pops_the_longer_then_b_on_ties(tokenizer):
    example = InputExample("x", "one two three four five six", "seven eight nine", "1")
    [feature] = glue.convert_examples_to_features([example], "mrpc", tokenizer, 8)
    # limit 5: a 6->5->4->3, then equal lengths 3/3 pop b -> 3/2
    tokens = ["[CLS]", "one", "two", "three", "[SEP]", "seven", "eight", "[SEP]"]
    assert feature.input_ids == ids(tokenizer, tokens)
    assert feature.segment_ids == [0] * 5 + [1] * 3


def test_truncate_seq_pair_directly():
    a, b = list("abcd"), list("xyzw")
    glue.truncate_seq_pair(a, b, 5)
    assert (a, b) == (list("abc"), list("xy"))
    a, b = list("ab"), list("xyzuvw")
    glue.truncate_seq_pair(a, b, 4)
    assert (a, b) == (list("ab"), list("xy"))
    a, b = list("ab"), list("x")
    glue.truncate_seq_pair(a, b, 10)
    assert (a, b) == (list("ab"), list("x"))


def test_pair_truncated_to_empty_b_is_formatted_as_single(tokenizer):
    # limit 1 with one token each: b is popped to nothing and then omitted, as the original
    [feature] = glue.convert_examples_to_features([InputExample("x", "cat", "dog", "1")], "mrpc", tokenizer, 4)
    assert feature.input_ids == ids(tokenizer, ["[CLS]", "cat", "[SEP]"])
    assert feature.segment_ids == [0, 0, 0]


def test_single_sentence_keeps_first_max_minus_two_tokens(tokenizer):
    [feature] = glue.convert_examples_to_features(
        [InputExample("x", "one two three four five", None, "1")], "sst", tokenizer, 5)
    assert feature.input_ids == ids(tokenizer, ["[CLS]", "one", "two", "three", "[SEP]"])
    assert feature.segment_ids == [0] * 5
    assert feature.label_id == 1


@pytest.mark.parametrize("text_b", ["", "   ", "\x00"])
def test_empty_text_b_gives_single_sentence_format(tokenizer, text_b):
    [feature] = glue.convert_examples_to_features([InputExample("x", "hello world", text_b, "0")],
                                                  "qqp", tokenizer, 16)
    assert feature.input_ids == ids(tokenizer, ["[CLS]", "hello", "world", "[SEP]"])
    assert feature.segment_ids == [0, 0, 0, 0]


def test_sts_label_is_score_over_five_and_test_label_is_none(tokenizer):
    examples = [InputExample("a", "x", "y", "3.8"), InputExample("b", "x", "y", None)]
    features = glue.convert_examples_to_features(examples, "sts", tokenizer, 16)
    assert features[0].label_id == pytest.approx(3.8 / 5)
    assert isinstance(features[0].label_id, float)
    assert features[1].label_id is None


def test_features_reject_bad_input(tokenizer):
    with pytest.raises(ValueError, match="unknown label"):
        glue.convert_examples_to_features([InputExample("a", "x", None, "2")], "cola", tokenizer, 16)
    with pytest.raises(ValueError, match="max_seq_length"):
        glue.convert_examples_to_features([InputExample("a", "x", None, "1")], "cola", tokenizer, 2)


def test_example_to_features_keeps_tokens_and_guid_only_on_request(tokenizer):
    example = InputExample(7, "The cat sat.", "A dog ran")  # extract_features' kind: an int guid, no label
    kept = glue.example_to_features(example, tokenizer, 128, keep_tokens=True)
    tokens = ["[CLS]", "the", "cat", "sat", ".", "[SEP]", "a", "dog", "ran", "[SEP]"]
    assert kept == InputFeatures(ids(tokenizer, tokens), [0] * 6 + [1] * 4, None, tokens=tokens, guid=7)
    plain = glue.example_to_features(example, tokenizer, 128)
    assert plain == InputFeatures(ids(tokenizer, tokens), [0] * 6 + [1] * 4)  # what training gets
    labelled = glue.example_to_features(InputExample("x", "The cat sat.", "A dog ran", "neutral"), tokenizer,
                                        128, task="mnli")
    assert labelled.label_id == 2 and labelled.tokens is None and labelled.guid is None


# --- collate and length grouping --------------------------------------------

FEATURES = [InputFeatures([101, 7, 102], [0, 0, 0], 1),
            InputFeatures([101, 5, 102, 6, 102], [0, 0, 0, 1, 1], 0)]


def test_collate_pads_to_the_longest_in_the_batch():
    batch = glue.collate_features(FEATURES)
    assert batch["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 5, 102, 6, 102]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["input_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["label_ids"].tolist() == [1, 0]
    assert batch["input_ids"].dtype == batch["label_ids"].dtype == torch.int64


def test_collate_fixed_padding_and_regression_labels():
    features = [InputFeatures(f.input_ids, f.segment_ids, 0.25) for f in FEATURES]
    batch = glue.collate_features(features, pad_to=8, regression=True)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_mask"].sum(1).tolist() == [3, 5]
    assert batch["label_ids"].dtype == torch.float32
    assert batch["label_ids"].tolist() == [0.25, 0.25]


def test_collate_without_labels_and_bad_input():
    unlabelled = [InputFeatures(f.input_ids, f.segment_ids, None) for f in FEATURES]
    assert "label_ids" not in glue.collate_features(unlabelled)
    with pytest.raises(ValueError, match="shorter"):
        glue.collate_features(FEATURES, pad_to=4)
    with pytest.raises(ValueError, match="mixes"):
        glue.collate_features([FEATURES[0], unlabelled[1]])
    with pytest.raises(ValueError, match="empty"):
        glue.collate_features([])


def test_length_grouped_order_for_inference_is_sorted_and_stable():
    assert glue.length_grouped_order([3, 9, 3, 5, 9], 2, None) == [1, 4, 3, 0, 2]


def test_length_grouped_order_for_training_is_a_shuffled_grouping():
    lengths = np.random.default_rng(0).integers(5, 128, size=1000).tolist()
    order = glue.length_grouped_order(lengths, 16, np.random.default_rng(1))
    assert sorted(order) == list(range(1000))
    assert order == glue.length_grouped_order(lengths, 16, np.random.default_rng(1))
    assert order != glue.length_grouped_order(lengths, 16, np.random.default_rng(2))

    def padding(indexes):
        batches = [indexes[i:i + 16] for i in range(0, len(indexes), 16)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)
    shuffled = np.random.default_rng(1).permutation(1000).tolist()
    assert padding(order) < padding(shuffled) / 5


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------

# TP = 2 (items 0, 4), FP = 1 (item 1), TN = 2 (items 2, 3), FN = 1 (item 5)
PREDS = np.array([1, 1, 0, 0, 1, 0])
GOLD = np.array([1, 0, 0, 0, 1, 1])


def test_mcc_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert glue.compute_metrics("cola", PREDS, GOLD) == {"mcc": pytest.approx(1 / 3)}


def test_accuracy_and_f1_by_hand():
    # accuracy 4/6; precision 2/3, recall 2/3, so F1 = 2/3
    metrics = glue.compute_metrics("mrpc", PREDS, GOLD)
    assert metrics == {"acc": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3), "acc_and_f1": pytest.approx(2 / 3)}
    assert glue.compute_metrics("rte", PREDS, GOLD) == {"acc": pytest.approx(4 / 6)}


def test_pearson_and_spearman_by_hand_after_clipping():
    # clipped preds (0, .5, 1) vs gold (0, 1, .5): deviations (-.5, 0, .5) and (-.5, .5, 0)
    # Pearson = .25 / sqrt(.5 * .5) = .5; Spearman: ranks (1,2,3) vs (1,3,2), 1 - 6*2/(3*8) = .5
    metrics = glue.compute_metrics("sts", np.array([-0.3, 0.5, 1.7]), np.array([0.0, 1.0, 0.5]))
    assert metrics == {"pearson": pytest.approx(0.5), "spearman": pytest.approx(0.5), "corr": pytest.approx(0.5)}


def test_constant_predictions_give_zero_not_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert glue.compute_metrics("cola", np.ones(6, int), GOLD) == {"mcc": 0.0}
        assert glue.compute_metrics("sts", np.full(4, 0.3), np.array([0.1, 0.4, 0.2, 0.9])) == \
            {"pearson": 0.0, "spearman": 0.0, "corr": 0.0}
        assert glue.compute_metrics("qqp", np.zeros(6, int), GOLD)["f1"] == 0.0


def test_metrics_accept_a_column_of_regression_outputs_and_reject_mismatches():
    column = np.array([[0.0], [0.5], [1.0]])
    assert glue.compute_metrics("sts", column, np.array([0.0, 1.0, 0.5]))["pearson"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        glue.compute_metrics("sst", [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        glue.compute_metrics("sst", [], [])


def test_original_batch_mcc_differs_from_corpus_mcc():
    # batch 1 is all class 1 (per-batch MCC 0), batch 2 is perfect (MCC 1): (0*8 + 1*8) / 16 = .5
    gold = np.array([1] * 8 + [0, 0, 0, 0, 1, 1, 1, 1])
    assert glue.original_batch_metric("cola", gold.copy(), gold, eval_batch_size=8) == pytest.approx(0.5)
    assert glue.compute_metrics("cola", gold.copy(), gold)["mcc"] == pytest.approx(1.0)


def test_original_batch_pearson_weights_batches_and_keeps_nan():
    preds = np.array([-0.3, 0.5, 1.7, 0.1, 0.2, 0.3])
    gold = np.array([0.0, 1.0, 0.5, 0.2, 0.4, 0.6])
    # batch 1 (clipped) has Pearson .5 (see above), batch 2 is exactly linear (1.0): (.5*3 + 1*3) / 6
    assert glue.original_batch_metric("sts", preds, gold, eval_batch_size=3) == pytest.approx(0.75)
    constant_batch = np.array([0.4, 0.4, 0.4, 0.1, 0.2, 0.3])
    assert math.isnan(glue.original_batch_metric("sts", constant_batch, gold, eval_batch_size=3))
    assert glue.original_batch_metric("sst", PREDS, GOLD) == pytest.approx(4 / 6)


def test_task_score_and_glue_average():
    assert glue.task_score("cola", {"mcc": 0.4}) == 0.4
    assert glue.task_score("mrpc", {"acc": 0.8, "f1": 0.6, "acc_and_f1": 0.7}) == pytest.approx(0.7)
    assert glue.task_score("sts", {"pearson": 0.9, "spearman": 0.7}) == pytest.approx(0.8)
    assert glue.task_score("mnli", {"acc": 0.84}) == 0.84
    with pytest.raises(ValueError, match="lack f1"):
        glue.task_score("qqp", {"acc": 0.9})
    # MNLI matched and mismatched are two entries, as on the GLUE leaderboard
    assert glue.glue_average({"cola": 0.5, "mnli": 0.8, "mnli-mm": 0.6}) == pytest.approx(1.9 / 3)
    with pytest.raises(ValueError):
        glue.glue_average({})


# ---------------------------------------------------------------------------
# submission files
# ---------------------------------------------------------------------------

def test_submission_file_names_cover_glue():
    assert sorted(glue.SUBMISSION_FILE_NAMES.values()) == sorted([
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
        "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"])
    used = {key for splits in glue.TEST_SPLITS.values() for _, key in splits}
    assert used == set(glue.SUBMISSION_FILE_NAMES)


def test_prediction_labels():
    assert glue.prediction_label("mnli", 1) == "entailment"
    assert glue.prediction_label("qnli", np.int64(0)) == "not_entailment"
    assert glue.prediction_label("cola", 1) == "1"
    assert glue.prediction_label("ax", 2) == "neutral"
    assert glue.prediction_label("sts", 0.7654) == "3.827"
    assert glue.prediction_label("sts", 1.3) == "5.000"
    assert glue.prediction_label("sts", -0.2) == "0.000"
    with pytest.raises(ValueError, match="not a class id"):
        glue.prediction_label("rte", 2)


def test_write_submission_tsv(tmp_path):
    path = tmp_path / "out" / glue.SUBMISSION_FILE_NAMES["mnli-mm"]
    glue.write_submission(path, "mnli", ["5", "0", "3"], np.array([2, 0, 1]))
    assert path.read_text(encoding="utf-8") == \
        "index\tprediction\n5\tneutral\n0\tcontradiction\n3\tentailment\n"
    glue.write_submission(path, "sts", ["0", "1"], [0.5, 0.0])  # overwrites in place
    assert path.read_text(encoding="utf-8") == "index\tprediction\n0\t2.500\n1\t0.000\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["MNLI-mm.tsv"]  # no temp files left


def test_write_submission_by_submission_key(tmp_path):
    for key in ("mnli-mm", "ax"):  # predicted by the MNLI classifier
        path = tmp_path / glue.SUBMISSION_FILE_NAMES[key]
        glue.write_submission(path, key, ["0"], [1])
        assert path.read_text(encoding="utf-8") == "index\tprediction\n0\tentailment\n"


def test_write_submission_rejects_bad_input_and_keeps_old_file(tmp_path):
    path = tmp_path / "RTE.tsv"
    glue.write_submission(path, "rte", ["0"], [1])
    with pytest.raises(ValueError, match="2 guids for 1 predictions"):
        glue.write_submission(path, "rte", ["0", "1"], [1])
    with pytest.raises(ValueError, match="not a class id"):
        glue.write_submission(path, "rte", ["0", "1"], [1, 7])
    assert path.read_text(encoding="utf-8") == "index\tprediction\n0\tentailment\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RTE.tsv"]



# ---------------------------------------------------------------------------
# synthetic GLUE data
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_glue")
    sizes = demo_data.write_demo_glue(root, seed=0)
    return root, sizes


def all_splits(task):
    if task == "mnli":
        return ["train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched", "diagnostic"]
    return ["train", "dev", "test"]


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_in_the_seed(demo_dir, tmp_path):
    root, sizes = demo_dir
    assert demo_data.write_demo_glue(tmp_path / "same", seed=0) == sizes
    assert tree_bytes(tmp_path / "same") == tree_bytes(root)
    demo_data.write_demo_glue(tmp_path / "other", seed=1)
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == tree_bytes(root).keys()
    assert other != tree_bytes(root)


def test_demo_writes_every_split_in_a_readable_layout(demo_dir):
    root, sizes = demo_dir
    assert set(sizes) == set(glue.TASKS)
    for task in glue.TASKS:
        for split in all_splits(task):
            examples = glue.read_examples(root, task, split)
            labelled = split == "train" or split.startswith("dev")
            assert all((e.label is not None) == labelled for e in examples), (task, split)
            if split == "train":
                assert len(examples) == sizes[task]
            elif labelled:
                assert len(examples) == 100


def test_demo_sizes_are_unequal_and_scale(tmp_path, demo_dir):
    _, sizes = demo_dir
    eight = {t: sizes[t] for t in glue.ORIGINAL_TASK_ORDER}
    assert sorted(eight, key=eight.get)[-2:] in (["qqp", "mnli"], ["mnli", "qqp"])
    assert set(sorted(eight, key=eight.get)[:2]) == {"rte", "mrpc"}
    assert all(100 <= n <= 1000 for n in sizes.values())
    half = demo_data.write_demo_glue(tmp_path, seed=0, scale=0.5)
    assert half == {t: round(n / 2) for t, n in sizes.items()}
    assert len(glue.read_examples(tmp_path, "qqp", "train")) == half["qqp"]


def test_demo_label_balance_is_sane(demo_dir):
    root, _ = demo_dir
    for task, spec in glue.TASKS.items():
        labels = [e.label for e in glue.read_examples(root, task, "train")]
        if spec.is_regression:
            scores = np.array([float(label) for label in labels])
            assert scores.min() < 1.0 and scores.max() > 4.0 and 1.5 < scores.mean() < 3.5
            continue
        shares = np.array([labels.count(label) for label in spec.labels]) / len(labels)
        assert shares.min() > 0.15 and shares.max() < 0.75, (task, shares)


def test_demo_has_the_real_oddities(demo_dir):
    root, _ = demo_dir
    cola_first = (root / "CoLA/train.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    assert len(cola_first) == 4 and cola_first[1] in ("0", "1")  # a data row, not a header
    qqp_widths = [len(line.split("\t")) for line in
                  (root / "QQP/train.tsv").read_text(encoding="utf-8").split("\n") if line]
    assert sum(width != 6 for width in qqp_widths) >= 2
    mnli = (root / "MNLI").glob("*.tsv")
    widths = {p.stem: len(p.read_text(encoding="utf-8").split("\n")[1].split("\t")) for p in mnli}
    assert widths == {"train": 12, "dev_matched": 16, "dev_mismatched": 16,
                      "test_matched": 10, "test_mismatched": 10}
    texts = [e.text_a + (e.text_b or "") for task in glue.TASKS for e in glue.read_examples(root, task, "train")]
    assert any('"' in text for text in texts)


def test_demo_uses_only_whole_words_of_the_bert_vocabulary(demo_dir, tokenizer):
    root, _ = demo_dir
    unknown = set()
    for task in glue.TASKS:
        for split in all_splits(task):
            for example in glue.read_examples(root, task, split):
                for text in (example.text_a, example.text_b or ""):
                    unknown.update(t for t in tokenizer.tokenize(text) if t.startswith("##") or t == "[UNK]")
    assert not unknown


def _probe_features(example):
    """Words and bigrams of a and b, words b adds or drops, and their overlap (a linear probe)."""
    a = re.findall(r"\w+", example.text_a.lower())
    b = re.findall(r"\w+", (example.text_b or "").lower())
    features = {f"a:{w}": 1 for w in a}
    features.update({f"b:{w}": 1 for w in b})
    features.update({f"a2:{x}_{y}": 1 for x, y in zip(a, a[1:])})
    features.update({f"b2:{x}_{y}": 1 for x, y in zip(b, b[1:])})
    features.update({f"new:{w}": 1 for w in set(b) - set(a)})
    features.update({f"gone:{w}": 1 for w in set(a) - set(b)})
    features["overlap"] = len(set(a) & set(b)) / max(1, len(set(a) | set(b)))
    return features


@pytest.mark.parametrize("task", ["sst", "mnli", "qnli"])
def test_demo_tasks_are_learnable_but_not_trivial(demo_dir, task):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    root, _ = demo_dir
    train = glue.read_examples(root, task, "train")
    dev = glue.read_examples(root, task, glue.TASKS[task].dev_splits[0])
    vectorizer = DictVectorizer()
    model = LogisticRegression(max_iter=2000, C=3.0).fit(
        vectorizer.fit_transform([_probe_features(e) for e in train]), [e.label for e in train])
    accuracy = model.score(vectorizer.transform([_probe_features(e) for e in dev]), [e.label for e in dev])
    majority = max(np.unique([e.label for e in dev], return_counts=True)[1]) / len(dev)
    assert majority + 0.1 < accuracy < 0.97


def test_demo_sts_score_follows_word_overlap_with_noise(demo_dir):
    from scipy.stats import pearsonr
    root, _ = demo_dir
    examples = glue.read_examples(root, "sts", "train")

    def overlap(e):
        a, b = set(e.text_a.split()), set(e.text_b.split())
        return len(a & b) / len(a | b)
    r = pearsonr([overlap(e) for e in examples], [float(e.label) for e in examples])[0]
    assert 0.7 < r < 0.99


def test_demo_generator_lives_outside_glue(repo_root):
    """glue holds no demo generator and does not import demo_data (demo_data imports glue)."""
    assert not hasattr(glue, "write_demo_glue")
    assert not [name for name in vars(glue) if name.startswith(("_demo", "_sst", "_Event"))]
    assert "demo_data" not in (repo_root / "glue.py").read_text(encoding="utf-8")


def test_demo_rejects_bad_scale(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        demo_data.write_demo_glue(tmp_path, scale=0)
