"""Mixed-task batches: one forward pass whose rows belong to different tasks equals one
call per task, for every architecture in configs/ (MiniLM size, real MiniLM BERT weights,
random-initialised adapters), and bad task ids are one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glue
import modeling
import tokenization
from checkpointing import load_pretrained_weights
from errors import UsageError
from modeling import BertConfig, BertForMultiTask

# The heads of the 'all' order: cola, mrpc, mnli, rte, sts (regression), sst, qqp, qnli.
LABELS = [2, 2, 3, 2, 1, 2, 2, 2]
# Twelve rows over all eight tasks, out of task order, some tasks twice.
TASK_OF_ROW = [5, 2, 0, 7, 4, 1, 6, 3, 2, 5, 4, 0]
TEXTS = [
    ("a gripping, beautifully acted film", None),
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("The book was read by everyone in the class.", None),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris, the capital of France."),
    ("A man is playing a guitar.", "Someone is making music on a stage in front of a crowd."),
    ("Stocks fell sharply on Monday.", "Markets dropped."),
    ("How do I learn Python?", "What is the best way to learn Python quickly?"),
    ("He said he would come.", "He came."),
    ("Paris is in France.", "Berlin is the capital of Germany and its largest city."),
    ("dull", None),
    ("A woman slices an onion.", "A woman is cutting an onion."),
    ("Him saw the dog the.", None),
]
# Every MiniLM-size config file in configs/ (named by its architecture), and two mixes.
CONFIGS = {path.name.removeprefix("minilm_").removesuffix("_config.json"): (path.name, {})
           for path in sorted((Path(__file__).resolve().parent.parent / "configs").glob("minilm_*_config.json"))}
CONFIGS["pals_lhuc"] = ("minilm_pals_config.json", {"lhuc": True})
CONFIGS["houlsby_lhuc"] = ("minilm_houlsby_config.json", {"lhuc": True})
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def batch(vocab_file):
    """The twelve rows, tokenised by the project's tokenizer and padded (pairs, padding, types)."""
    tokenizer = tokenization.FullTokenizer(str(vocab_file), do_lower_case=True)
    features = [glue.example_to_features(glue.InputExample(k, a, b), tokenizer, 64) for k, (a, b) in enumerate(TEXTS)]
    collated = glue.collate_features(features)
    assert (collated["input_mask"] == 0).any() and (collated["segment_ids"] == 1).any()
    return collated["input_ids"], collated["segment_ids"], collated["input_mask"]


def build_model(repo_root, minilm_dir, name: str) -> BertForMultiTask:
    file, extra = CONFIGS[name]
    config = BertConfig.from_json_file(repo_root / "configs" / file).replace(num_tasks=len(LABELS), **extra)
    torch.manual_seed(0)
    model = BertForMultiTask(config, LABELS)
    # gamma 1, beta 0 for the LayerNorms no checkpoint loads: with the original init the
    # modules on top give near-zero outputs, and tasks would hardly differ.
    modeling.standard_layer_norm_init(model)
    load_pretrained_weights(model, minilm_dir)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("lhuc"):
                param.normal_()  # LHUC starts at the identity for every task: make tasks differ
    return model.eval()


def rows_of(task: int) -> list[int]:
    return [row for row, t in enumerate(TASK_OF_ROW) if t == task]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixed_batch_equals_one_call_per_task(repo_root, minilm_dir, batch, name):
    model = build_model(repo_root, minilm_dir, name)
    ids, types, mask = batch
    calls, handles = record_batch_sizes(model)
    mixed, layers, pooled = forward(model, batch, torch.tensor(TASK_OF_ROW))  # logits [12, 3]
    for handle in handles:
        handle.remove()
    check_each_part_ran_on_its_rows(calls, len(TEXTS))
    assert mixed.shape == (len(TEXTS), max(LABELS))
    # The same rows, each with the next task: the comparison below has teeth only if
    # another task's parts give other outputs.
    shifted, shifted_layers, _ = forward(model, batch, (torch.tensor(TASK_OF_ROW) + 1) % len(LABELS))
    for task, num_labels in enumerate(LABELS):
        rows = rows_of(task)
        alone, alone_layers, alone_pooled = forward(model, (ids[rows], types[rows], mask[rows]), task)
        assert alone.shape == (len(rows), num_labels)
        torch.testing.assert_close(mixed[rows, :num_labels], alone, rtol=0, atol=TOLERANCE)
        assert torch.isneginf(mixed[rows, num_labels:]).all()  # columns past the task's labels
        for layer, alone_layer in zip(layers, alone_layers, strict=True):
            torch.testing.assert_close(layer[rows], alone_layer, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(pooled[rows], alone_pooled, rtol=0, atol=TOLERANCE)
        if model.config.has_task_modules:
            assert (shifted_layers[-1][rows] - alone_layers[-1]).abs().max() > 1e-3, (name, task)
        width = min(num_labels, LABELS[(task + 1) % len(LABELS)])
        assert (shifted[rows, :width] - alone[:, :width]).abs().max() > 1e-3, (name, task)


def forward(model: BertForMultiTask, batch, task):
    """Logits and, from the same call, BERT's layers and pooled output."""
    captured = {}
    handle = model.bert.register_forward_hook(lambda _module, _inputs, output: captured.update(output=output))
    try:
        with torch.inference_mode():
            logits = model(*batch, task)
    finally:
        handle.remove()
    layers, pooled = captured["output"]
    return logits, layers, pooled


def record_batch_sizes(model: BertForMultiTask):
    """For every module, the (task, rows) of each call: the task from its name (None =
    shared). Returns the record and the hook handles."""
    calls: dict[str, list[tuple[int | None, int]]] = {}

    def hook(name):
        def record(_module, inputs, _output):
            calls.setdefault(name, []).append((modeling.task_of_key(name + "."), inputs[0].size(0)))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if name and not isinstance(module, torch.nn.ModuleList)]
    return calls, handles


def check_each_part_ran_on_its_rows(calls, batch_size: int) -> None:
    """Shared modules ran once over all rows; each task's modules only on that task's rows."""
    assert calls, "no module was called"
    tasks_seen = set()
    for name, records in calls.items():
        for task, rows in records:
            if task is None:
                assert rows == batch_size, (name, rows)
            else:
                assert rows == len(rows_of(task)), (name, task, rows)
                tasks_seen.add(task)
        if records[0][0] is None:
            assert len(records) == 1, f"shared module {name} ran {len(records)} times"
    assert tasks_seen == set(range(len(LABELS)))  # at least the heads of every task ran


def test_rows_grouped_by_task_give_the_same_result(repo_root, minilm_dir, batch):
    """Rows already grouped by task take slices instead of gathers: the same numbers."""
    model = build_model(repo_root, minilm_dir, "houlsby_plus_pals")
    ids, types, mask = batch
    order = sorted(range(len(TASK_OF_ROW)), key=TASK_OF_ROW.__getitem__)
    grouped_tasks = torch.tensor([TASK_OF_ROW[k] for k in order])
    with torch.inference_mode():
        scattered = model(ids, types, mask, torch.tensor(TASK_OF_ROW))
        grouped = model(ids[order], types[order], mask[order], grouped_tasks)
    assert modeling.resolve_task(grouped_tasks, len(LABELS), len(order)).restore is None  # the slice path
    torch.testing.assert_close(grouped, scattered[order], rtol=0, atol=TOLERANCE)


def test_one_task_as_a_tensor_equals_the_int_call(repo_root, minilm_dir, batch):
    model = build_model(repo_root, minilm_dir, "pals")
    ids, types, mask = batch
    with torch.inference_mode():
        as_int = model(ids, types, mask, 2)  # [12, 3]
        as_tensor = model(ids, types, mask, torch.full((len(TEXTS),), 2))
        as_scalar = model(ids, types, mask, torch.tensor(2))
    torch.testing.assert_close(as_tensor, as_int, rtol=0, atol=0)
    torch.testing.assert_close(as_scalar, as_int, rtol=0, atol=0)
    with torch.inference_mode():
        regression = model(ids, types, mask, torch.full((len(TEXTS),), 4))  # sts: one output, padded
    assert regression.shape == (len(TEXTS), 3) and torch.isneginf(regression[:, 1:]).all()


@pytest.mark.parametrize("task_id, message", [
    (8, r"^task id 8 is out of range: the model has 8 task\(s\), 0\.\.7$"),
    (-1, r"^task id -1 is out of range"),
    (True, r"^a task id must be an int"),
    (2.0, r"^a task id must be an int"),
    ("sst", r"^a task id must be an int"),
    (torch.tensor([0, 1]), r"^per-row task ids must be an integer tensor of 3 values .* shape \(2,\)$"),
    (torch.tensor([0.0, 1.0, 2.0]), r"^per-row task ids must be an integer tensor"),
    (torch.tensor([0, 9, 1]), r"^task id 9 \(row 1\) is out of range"),
    (torch.tensor([[0, 1, 2]]), r"^a task id must be an int or a 1-D tensor"),
])
def test_bad_task_ids_are_one_line_errors(task_id, message):
    config = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, mult=True, pals=True, hidden_size_aug=12, num_tasks=len(LABELS))
    model = BertForMultiTask(config, LABELS).eval()
    ids = torch.ones(3, 5, dtype=torch.long)
    for call in (lambda: model(ids, None, None, task_id), lambda: model.bert(ids, i=task_id)):
        with pytest.raises(UsageError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_labels_passed_where_name_goes_are_refused():
    """The fifth argument is the original's unused task name: labels there must not be
    silently ignored (they used to be, returning logits only)."""
    config = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_tasks=2)
    model = BertForMultiTask(config, [2, 2])
    ids = torch.ones(3, 5, dtype=torch.long)
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(UsageError, match="not the labels; pass them as labels=labels"):
        model(ids, None, None, 1, labels)
    loss, logits = model(ids, None, None, 1, "sst", labels)  # the original's positional call
    assert logits.shape == (3, 2) and loss.dim() == 0
    with pytest.raises(UsageError, match="labels need one task per batch"):
        model(ids, None, None, torch.tensor([0, 1, 0]), labels=labels)
