"""--replicate_original reproduces the original's training run step for step.

The reference is the original run_multi_task.py's own run (Bert-n-Pals at 9b40f4f, torch
2.13, CPU, one thread), recorded in ../shared/reference/replication/ (its README.md says
how): the command line, and for each of the first 20 optimizer steps the task, the
batch, the loss and the learning rate, with digests of the task modules' initial values
and of every parameter after step 20; once with dropout 0 and once with dropout 0.1.
The port runs the same command (run_multi_task.main, MiniLM as the pretrained weights)
and must agree at every step. The run is watched from outside, with torch's global
module and optimizer hooks, and stopped after step 20.

Also here: optimizer state in checkpoints/last.pt is keyed by parameter name, and a
last.pt of an earlier version (keyed by position, in that version's parameter order)
resumes exactly or is refused in one line; a run under --replicate_original resumes
exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tarfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import modeling
import run_multi_task
import training

REPO_ROOT = Path(__file__).resolve().parent.parent
REPLICATION = REPO_ROOT.parent / "shared" / "reference" / "replication"
STEPS = 20  # the steps the trajectories record
LOSS_RTOL = 1e-6
DIGEST_RTOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_logging():
    """run_multi_task.main sets up logging as if it had the process to itself."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as the reference ran (OMP_NUM_THREADS=1): the same summation order in
    every kernel, and no waiting on a second thread on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def replication_dir() -> Path:
    # Never skipped: the reference lies beside the clone (in CI too); without it the
    # faithfulness of --replicate_original would go unchecked.
    if not (REPLICATION / "trajectory_anneal-d0.json").is_file():
        pytest.fail(f"{REPLICATION} is missing: the original's recorded run (shared/reference/replication "
                    "beside the repository) is needed to test --replicate_original")
    return REPLICATION


@pytest.fixture(scope="module")
def glue_data(replication_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("replication")
    with tarfile.open(replication_dir / "glue.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    return folder / "glue"


def port_argv(trajectory: dict, replication_dir: Path, glue_dir: Path, minilm_dir: Path, output_dir: Path) -> list[str]:
    """The original's command line with this machine's paths (``<work>`` holds the data
    and configs, ``<minilm>`` the MiniLM folder; the original read MiniLM's weights
    converted to its key layout, the port reads the folder), plus --replicate_original."""
    argv = []
    for arg in trajectory["original_argv"]:
        if arg == "<work>/pytorch_model.bin":
            arg = str(minilm_dir)
        elif arg.startswith("<work>/runs/"):
            arg = str(output_dir)
        elif arg.startswith("<work>/glue"):
            arg = arg.replace("<work>/glue", str(glue_dir))
        else:
            arg = arg.replace("<work>", str(replication_dir)).replace("<minilm>", str(minilm_dir))
        assert "<" not in arg, arg
        argv.append(arg)
    return [*argv, "--replicate_original"]


def digest(tensor: torch.Tensor) -> dict:
    """The reference's digest: sum, sum of squares, first four and last two values
    (float64 over the flattened tensor)."""
    flat = tensor.detach().double().reshape(-1)
    return {"numel": flat.numel(), "sum": flat.sum().item(), "sum_sq": flat.square().sum().item(),
            "first": flat[:4].tolist(), "last": flat[-2:].tolist()}


def digest_mismatch(mine: dict, reference: dict) -> str | None:
    """None when ``mine`` agrees with ``reference`` within DIGEST_RTOL, each number on its
    own scale: the sum on the tensor's norm sqrt(sum_sq) (the sum of differences that
    rounding leaves grows with the norm, not with the sum, which can cancel to about 0),
    the sum of squares on itself, each value on itself; every scale at least 1."""
    if mine["numel"] != reference["numel"]:
        return f"{mine['numel']} values, the reference {reference['numel']}"
    norm = math.sqrt(reference["sum_sq"])
    pairs = [("sum", mine["sum"], reference["sum"], norm), ("sum_sq", mine["sum_sq"], reference["sum_sq"], None)]
    pairs += [(f"{field}[{i}]", a, b, None) for field in ("first", "last")
              for i, (a, b) in enumerate(zip(mine[field], reference[field], strict=True))]
    for name, value, expected, scale in pairs:
        scale = max(1.0, abs(expected) if scale is None else scale)
        if abs(value - expected) > DIGEST_RTOL * scale:
            return f"{name} {value!r}, the reference {expected!r}"
    return None


def sha256_int64(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


class _StopAfterLastStep(BaseException):
    """Raised from the optimizer hook after step STEPS: the run has given what it is tested on."""


def watch_run(argv: list[str]) -> dict:
    """Run run_multi_task.main(argv) for STEPS optimizer steps and record, from torch's
    global hooks: every training forward of the model (task, batch, loss), the learning
    rate each step applies, the model's tensors before the first step and after the last."""
    record = {"steps": [], "lrs": [], "init": None, "final": None}
    models = []

    def on_forward(module, args, kwargs, output):
        if not (isinstance(module, modeling.BertForMultiTask) and module.training and "labels" in kwargs):
            return
        if record["init"] is None:
            models.append(module)
            record["init"] = {key: digest(t) for key, t in module.state_dict().items()}
        input_ids, segment_ids, input_mask, task_id = args[:4]
        record["steps"].append({"task": int(task_id), "loss": output[0].item(), "input_ids": input_ids.tolist(),
                                "labels": kwargs["labels"].tolist(), "segment_ids_sha256": sha256_int64(segment_ids),
                                "input_mask_sha256": sha256_int64(input_mask)})

    def before_step(optimizer, args, kwargs):
        if not record["lrs"] or len(record["lrs"]) < len(record["steps"]):  # the first optimizer (shared BERT)
            # get_lr() lists the learning rate of every parameter with state, in group
            # order: the first is the word embeddings' (shared, updated from step 1); [0]
            # before any update, when every schedule is at 0.
            record["lrs"].append(float(optimizer.get_lr()[0]))

    def after_step(optimizer, args, kwargs):
        if len(record["steps"]) == STEPS:
            record["final"] = {key: digest(t) for key, t in models[0].state_dict().items()}
            raise _StopAfterLastStep

    hooks = [torch.nn.modules.module.register_module_forward_hook(on_forward, with_kwargs=True),
             register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step)]
    try:
        with pytest.raises(_StopAfterLastStep):
            run_multi_task.main(argv)
    finally:
        for hook in hooks:
            hook.remove()
    return record


@pytest.mark.slow
@pytest.mark.parametrize("trajectory_name", ["anneal-d0", "anneal-dcfg"])
def test_replicate_original_reproduces_the_originals_steps(trajectory_name, replication_dir, glue_data,
                                                           minilm_dir, tmp_path):
    """Same task, same batch (ids, labels, segment ids, mask), loss within 1e-6 relative
    and the same learning rate at each of 20 steps; the task modules' initial values and
    every parameter after step 20 within 1e-5 (digest_mismatch)."""
    trajectory = json.loads((replication_dir / f"trajectory_{trajectory_name}.json").read_text(encoding="utf-8"))
    assert len(trajectory["steps"]) == STEPS
    record = watch_run(port_argv(trajectory, replication_dir, glue_data, minilm_dir, tmp_path / "out"))

    assert len(record["steps"]) == STEPS and len(record["lrs"]) == STEPS
    assert_digests_agree("initial", record["init"], trajectory["init_task_tensors"])
    for number, (mine, reference, lr) in enumerate(zip(record["steps"], trajectory["steps"], record["lrs"]), 1):
        where = f"step {number}"
        assert mine["task"] == reference["task"], where
        assert mine["input_ids"] == reference["input_ids"], where
        assert mine["labels"] == reference["labels"], where
        assert mine["segment_ids_sha256"] == reference["segment_ids_sha256"], where
        assert mine["input_mask_sha256"] == reference["input_mask_sha256"], where
        assert mine["loss"] == pytest.approx(reference["loss"], rel=LOSS_RTOL, abs=0), where
        assert lr == reference["lr"], where

    assert_digests_agree("after step 20", record["final"], trajectory["after_last_step"])


def assert_digests_agree(what: str, mine: dict, expected: dict) -> None:
    assert set(expected) <= set(mine), sorted(set(expected) - set(mine))[:5]
    wrong = {key: problem for key in expected if (problem := digest_mismatch(mine[key], expected[key]))}
    assert not wrong, f"{len(wrong)} of {len(expected)} tensors differ {what}, e.g. {list(wrong.items())[:3]}"


# ---------------------------------------------------------------------------------------
# Every architecture draws its initial values as the original did
# ---------------------------------------------------------------------------------------

def original_random_draws(config: modeling.BertConfig, labels: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    """The random numbers the original's ``BertForMultiTask(config, labels)`` draws, in
    order, as (distribution, shape), read from its modeling.py (Bert-n-Pals 9b40f4f).

    First the construction: each nn.Linear draws its weight, then its bias (uniform),
    each nn.Embedding its weight (normal); a module the original deep-copies per task
    (or per layer) is built, and draws, once. Then ``init_weights`` over the module tree,
    depth first in registration order (a tied module wherever it is registered): every
    Linear and Embedding weight, every LayerNorm's beta then gamma (normal).
    """
    H, A, T = config.hidden_size, config.hidden_size_aug, config.num_tasks
    width = config.extra_dim or A  # BERTLowRank's width
    built = []

    def linear(n_in, n_out):  # returns the draws of its initialisation
        built.extend([("uniform", (n_out, n_in)), ("uniform", (n_out,))])
        return [("normal", (n_out, n_in))]

    def embedding(rows, n):
        built.append(("normal", (rows, n)))
        return [("normal", (rows, n))]

    def layer_norm(n):  # BERTLayerNorm: nothing at construction
        return [("normal", (n,)), ("normal", (n,))]

    def self_attention(n):  # BERTSelfAttention: query, key, value
        return linear(n, n) + linear(n, n) + linear(n, n)

    def low_rank():  # BERTLowRank: aug_dense, aug_dense2
        return linear(H, width) + linear(width, H)

    def pal():  # BERTPals: aug_dense, aug_dense2, attn
        return linear(H, A) + linear(A, H) + self_attention(A)

    def adapter():
        return pal() if config.pals else low_rank()

    def attention(n, houlsby=False):  # BERTAttention: self, output (multi_layers, dense, LayerNorm)
        draws = self_attention(n)
        if houlsby:
            draws += low_rank() * T
        return draws + linear(n, n) + layer_norm(n)

    def layer(mult=False, houlsby=False):  # BERTLayer: attention, intermediate, output, (multi_lhuc), (multi_layers)
        draws = attention(H, houlsby) + linear(H, config.intermediate_size)
        draws += linear(config.intermediate_size, H) + layer_norm(H)
        if houlsby:
            draws += adapter() * T  # BERTOutput's multi_layers
        if mult:
            draws += adapter() * T  # (multi_lhuc: zeros, nothing drawn)
        return draws

    draws = embedding(config.vocab_size, H) + embedding(config.max_position_embeddings, H)
    draws += embedding(config.type_vocab_size, H) + layer_norm(H)
    if config.houlsby:
        draws += [d for _ in range(config.num_hidden_layers) for d in layer(houlsby=True)]
    elif config.mult:
        draws += [d for _ in range(config.num_hidden_layers) for d in layer(mult=True)]
    else:
        draws += layer() * config.num_hidden_layers
    if config.top and config.bert_lay_top:
        draws += layer() * T
    elif config.top:
        dense, dense2 = linear(H, A), linear(A, H)
        blocks = [d for _ in range(6) for d in attention(A)]
        draws += dense * T + dense2 * T + blocks * T
    if config.pals and (config.mult or config.houlsby):  # the tied V_E, V_D per task
        dense, dense2 = linear(H, A), linear(A, H)
        draws += dense * T + dense2 * T
        if config.houlsby:
            linear(H, A)  # a third Linear, never registered
    draws += linear(H, H)  # pooler
    for n in labels:
        draws += linear(H, n)  # classifier
    return built + draws


class RecordRandomDraws(torch.overrides.TorchFunctionMode):
    """Records the random initialisations torch is asked for (nn.init's and the tensor
    methods init_weights calls), as (distribution, shape)."""

    KINDS = {"kaiming_uniform_": "uniform", "uniform_": "uniform", "normal_": "normal"}

    def __init__(self):
        super().__init__()
        self.draws = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self.KINDS.get(getattr(func, "__name__", ""))
        if kind is not None:
            tensor = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            self.draws.append((kind, tuple(tensor.shape)))
        return func(*args, **kwargs)


ARCHITECTURES = {
    "shared only": {},
    "PALs": {"mult": True, "pals": True},
    "low-rank": {"mult": True},
    "low-rank, extra_dim": {"mult": True, "extra_dim": 5},
    "Houlsby": {"houlsby": True},
    "Houlsby + PALs": {"houlsby": True, "pals": True, "extra_dim": 5},
    "top attention": {"top": True},
    "top BERT layer": {"top": True, "bert_lay_top": True},
    "LHUC": {"lhuc": True},
    "LHUC + PALs": {"lhuc": True, "mult": True, "pals": True},
}


@pytest.mark.parametrize("flags", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_every_architecture_draws_its_initial_values_as_the_original(flags):
    """The same draws in the same order: with one seed, the same initial values."""
    config = modeling.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=20, max_position_embeddings=24, type_vocab_size=2,
                                 hidden_size_aug=12, num_tasks=3, **flags)
    labels = [2, 3, 1]
    with RecordRandomDraws() as recorder:
        modeling.BertForMultiTask(config, labels)
    expected = original_random_draws(config, labels)
    first = next((i for i, (a, b) in enumerate(zip(recorder.draws, expected)) if a != b), None)
    assert recorder.draws == expected, (f"{len(recorder.draws)} draws, the original {len(expected)}; first "
                                        f"difference at draw {first}")


# ---------------------------------------------------------------------------------------
# Checkpoints: optimizer state keyed by parameter name; earlier versions' last.pt
# ---------------------------------------------------------------------------------------

def tiny_config(path: Path, **flags) -> Path:
    values = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, mult=True, pals=True, hidden_size_aug=12)
    values.update(flags)
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def tiny_run_argv(glue_dir, config, vocab_file, output_dir, *extra) -> list[str]:
    return [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", vocab_file, "--output_dir", output_dir,
        "--tasks", "cola,sts,mnli", "--do_lower_case", "--max_seq_length", "32", "--train_batch_size", "4",
        "--eval_batch_size", "32", "--seed", "3", "--sample", "anneal", "--num_train_epochs", "2",
        "--steps_per_epoch", "4", "--learning_rate", "1e-3", "--no_plot", "--do_train", "--no_save_adapters",
        "--keep_epoch_checkpoints", "--keep_last_checkpoint",
        # one learning rate for all: the optimizer's two groups, as the earlier version wrote them
        "--task_learning_rate", "0", *extra]]


@pytest.fixture(scope="module")
def pals_run(glue_data, vocab_file, tmp_path_factory):
    """A finished two-epoch run of a tiny PALs model: the checkpoint after the first epoch and the final one."""
    folder = tmp_path_factory.mktemp("pals_run")
    config = tiny_config(folder / "config.json")
    out = folder / "out"
    assert run_multi_task.main(tiny_run_argv(glue_data, config, vocab_file, out)) == 0
    return folder, config, out


def resume_from(state: dict, run_folder: Path, target: Path) -> None:
    """A copy of a run folder with ``state`` as its last.pt (the run stopped there)."""
    shutil.copytree(run_folder, target, ignore=shutil.ignore_patterns("checkpoints", "train.log", ".lock"))
    (target / "checkpoints").mkdir()
    torch.save(state, target / "checkpoints" / "last.pt")


def test_optimizer_state_in_last_pt_is_keyed_by_parameter_name(pals_run):
    _, _, out = pals_run
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    (optimizer,) = state["optimizers"]
    model_keys = state["model"]
    assert optimizer["state"] and all(isinstance(name, str) for name in optimizer["state"])
    for name, entry in optimizer["state"].items():
        assert entry["next_m"].shape == model_keys[name].shape, name
    names = [name for group in optimizer["param_groups"] for name in group["params"]]
    assert len(names) == len(set(names)) and set(optimizer["state"]) <= set(names) <= set(model_keys)
    # the original's groups: no weight decay for biases and LayerNorm parameters
    decay, no_decay = optimizer["param_groups"]
    assert all(not any(m in n for m in ("bias", "gamma", "beta")) for n in decay["params"])
    assert all(any(m in n for m in ("bias", "gamma", "beta")) for n in no_decay["params"])


def earlier_parameter_order(config: Path) -> tuple[list[str], list[str]]:
    """The model keys and parameter names in the order of the version before this
    change, which registered a PAL's attention before its V_D (attn, then aug_dense2)."""
    model = training.build_model(modeling.BertConfig.from_json_file(config), ["cola", "sts", "mnli"], None, False)
    for module in model.modules():
        if isinstance(module, modeling.BERTPals):
            module._modules = OrderedDict((name, module._modules[name]) for name in ("aug_dense", "attn", "aug_dense2"))
    return list(model.state_dict()), [name for name, _ in model.named_parameters()]


def as_earlier_version(state: dict, config: Path) -> dict:
    """``state`` as the earlier version wrote it: model tensors in its order, optimizer
    state keyed by position in its parameter order (decay group, then no-decay group)."""
    keys, names = earlier_parameter_order(config)
    (optimizer,) = state["optimizers"]
    groups = [[n for n in names if n in set(group["params"])] for group in optimizer["param_groups"]]
    positions = {name: i for i, name in enumerate(groups[0] + groups[1])}
    earlier = dict(state)
    earlier["model"] = {key: state["model"][key] for key in keys}
    earlier["optimizers"] = [{
        "state": {positions[name]: entry for name, entry in optimizer["state"].items()},
        "param_groups": [{**group, "params": [positions[n] for n in names]}
                         for group, names in zip(optimizer["param_groups"], groups)]}]
    return earlier


def final_parameters(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_resume_from_an_earlier_versions_checkpoint_keyed_by_position(pals_run, glue_data, vocab_file, tmp_path):
    """The earlier version's parameter order differs from this one's (PALs), so its
    positions must be read in its own order: resuming then equals the uninterrupted run.
    Read in this version's order instead, moments would go to the wrong parameters."""
    folder, config, out = pals_run
    after_epoch_1 = torch.load(out / "checkpoints" / "epoch_1.pt", weights_only=True)
    earlier = as_earlier_version(after_epoch_1, config)
    assert list(earlier["model"]) != list(after_epoch_1["model"])  # the orders differ
    resumed = tmp_path / "resumed"
    resume_from(earlier, out, resumed)
    assert run_multi_task.main(tiny_run_argv(glue_data, config, vocab_file, resumed, "--resume")) == 0
    expected, got = final_parameters(out), final_parameters(resumed)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_resume_refuses_an_earlier_checkpoint_that_does_not_fit_in_one_line(pals_run, glue_data, vocab_file,
                                                                            tmp_path, capsys):
    folder, config, out = pals_run
    earlier = as_earlier_version(torch.load(out / "checkpoints" / "epoch_1.pt", weights_only=True), config)
    group = earlier["optimizers"][0]["param_groups"][0]
    group["params"] = group["params"][:-1]  # one parameter fewer than this model has in that group
    resumed = tmp_path / "resumed"
    resume_from(earlier, out, resumed)
    assert run_multi_task.main(tiny_run_argv(glue_data, config, vocab_file, resumed, "--resume")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert str(resumed / "checkpoints" / "last.pt") in errors[0]
    assert "keyed by position" in errors[0] and "does not fit this model's parameters" in errors[0]


def test_resume_under_replicate_original_continues_the_originals_batches(glue_data, vocab_file, tmp_path):
    """The per-task DataLoader seeds join the checkpoint, and torch's generator state is
    restored: a resumed run under --replicate_original equals an uninterrupted one."""
    config = tiny_config(tmp_path / "config.json")
    out = tmp_path / "out"
    assert run_multi_task.main(tiny_run_argv(glue_data, config, vocab_file, out, "--replicate_original")) == 0
    after_epoch_1 = torch.load(out / "checkpoints" / "epoch_1.pt", weights_only=True)
    seeds = [stream.get("sampler_seed") for stream in after_epoch_1["streams"]]
    assert all(isinstance(seed, int) for seed, stream in zip(seeds, after_epoch_1["streams"]) if stream["batches_drawn"])
    resumed = tmp_path / "resumed"
    resume_from(after_epoch_1, out, resumed)
    assert run_multi_task.main(tiny_run_argv(glue_data, config, vocab_file, resumed, "--resume")) == 0
    expected, got = final_parameters(out), final_parameters(resumed)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_batch_stream_in_the_originals_dataloader_order():
    """The order is what the original's DataLoader(RandomSampler) gave (torch's own
    classes, driven from the same generator state), replayed pass after pass."""
    torch.manual_seed(5)
    loader_iterator = iter(torch.utils.data.DataLoader(range(10), batch_size=4,
                                                       sampler=torch.utils.data.RandomSampler(range(10))))
    torch.randn(7)  # random numbers drawn between setup and the first batch (dropout)
    expected = [batch.tolist() for batch in loader_iterator]
    torch.manual_seed(5)
    stream = training.BatchStream(10, 4, seed=1, task_id=0, replay_first_pass=True, torch_sampler=True)
    torch.randn(7)
    batches = [stream.next_indices().tolist() for _ in range(6)]
    assert batches == expected + expected
    with pytest.raises(ValueError, match="replay_first_pass"):
        training.BatchStream(10, 4, seed=1, task_id=0, torch_sampler=True)


@pytest.mark.slow  # two gloo processes (about 15 s)
def test_two_processes_under_replicate_original_cut_the_same_batches(glue_data, vocab_file, tmp_path):
    """With dropout, ranks holding shards of different sizes draw different numbers of
    dropout values, and their torch generators part. A task's DataLoader seed drawn
    after that must still be one for all ranks (rank 0's): the ranks compare digests of
    the tasks and batches they drew when the run ends, and a mismatch fails the run.

    Round robin over CoLA (21 examples), STS-B (13) and MNLI (30) with batches of 16:
    step 1 splits 8 + 8, step 2 (STS-B's only batch) 7 + 6, step 3 draws MNLI's seed."""
    data = tmp_path / "glue"
    for folder, train_lines in (("CoLA", 21), ("STS-B", 1 + 13), ("MNLI", 1 + 30)):
        shutil.copytree(glue_data / folder, data / folder)
        train = data / folder / "train.tsv"
        train.write_text("".join(train.read_text(encoding="utf-8").splitlines(keepends=True)[:train_lines]),
                         encoding="utf-8")
    config = tiny_config(tmp_path / "config.json")
    out = tmp_path / "out"
    argv = tiny_run_argv(data, config, vocab_file, out, "--replicate_original")
    for flag, value in (("--sample", "rr"), ("--train_batch_size", "16"), ("--num_train_epochs", "1")):
        argv[argv.index(flag) + 1] = value
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "run_multi_task.py"), *argv]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 ranks drew the same 4 tasks and batches" in (out / "train.log").read_text(encoding="utf-8")
