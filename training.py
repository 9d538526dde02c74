"""Multi-task training, evaluation and prediction for run_multi_task.py.

The pieces, in the order a run uses them:

    load_task_data        read and featurise every task's train/dev (or test) files
    DistributedContext    single process, DataParallel, or torch.distributed (DDP)
    build_model           BertForMultiTask, pretrained weights, --freeze
    build_optimizers      the original's BERTAdam groups (and the --optim split)
    Trainer               the sampling loop: one task per optimizer step (train_step),
                          evaluation after every epoch, best-model selection,
                          resumable checkpoints
    predict_test_sets     GLUE submission files from a trained model

``TrainingSettings`` holds plain values only: what the original did differently
(``--replicate_original``) is turned into those values once, by run_multi_task.py, and
the loop never asks for a mode.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import checkpointing
import cli
import glue
import reports
from errors import CheckpointError, NonFiniteLossError, StopRequested, UsageError, WriteError
from kernels import Kernels
from modeling import (
    BertConfig,
    BertForMultiTask,
    BERTLayerNorm,
    BERTPals,
    is_task_specific,
    standard_layer_norm_init,
    task_of_key,
)
from optimization import BERTAdam

logger = logging.getLogger("run_multi_task")

ORIGINAL_STEPS_PER_TASK = 300  # optimizer steps per epoch per task in the original
ORIGINAL_EVAL_BATCH_SIZE = 8
SPLIT_OPTIMIZER_LR = 3e-4  # the original's hard-coded LR for PAL attention under --optim

# Settings a resumed run must share with the checkpoint, or it would silently end
# somewhere an uninterrupted run would not (flag name for the message -> attribute).
RESUME_INVARIANT_SETTINGS = {
    "--train_batch_size": "train_batch_size", "--gradient_accumulation_steps": "gradient_accumulation_steps",
    "--num_train_epochs": "num_train_epochs", "--steps_per_epoch": "steps_per_epoch",
    "--learning_rate": "learning_rate", "--warmup_proportion": "warmup_proportion", "--sample": "sample",
    "--seed": "seed", "--max_seq_length": "max_seq_length", "--optim": "split_attention_optimizer",
    # --replicate_original sets several fields at once; replay_first_pass is true exactly under it.
    "--replicate_original": "replay_first_pass", "--original_sizes": "use_original_sizes",
    "--update_unsampled": "skip_unsampled_updates", "--bf16": "bf16", "--fp16": "fp16",
    "--do_lower_case": "do_lower_case", "--freeze": "freeze", "--layer_norm_init": "layer_norm_init",
    "--no_group_by_length": "group_by_length",
    "--no_bias_correction": "bias_correction", "--task_learning_rate": "task_learning_rate",
    "--no_scale_regression": "scale_regression",
    # the files' contents, not their paths (a moved file is the same file)
    "--vocab_file": "vocab_sha256", "--bert_config_file": "config_sha256",
}
TRAINING_STATE_KEYS = ("model", "optimizers", "sampler", "streams", "global_step", "epoch", "step_in_epoch",
                       "best_score", "history", "probability_history", "epoch_losses", "dropout_disabled",
                       "task_names", "rng")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """One task's featurised data. ``dev`` maps a split name to its features."""

    name: str
    task_id: int
    train: list[glue.InputFeatures] = field(default_factory=list)
    dev: dict[str, list[glue.InputFeatures]] = field(default_factory=dict)

    @property
    def spec(self) -> glue.TaskSpec:
        return glue.TASKS[self.name]


def featurise(data_dir, task: str, split: str, tokenizer, max_seq_length: int) -> list[glue.InputFeatures]:
    examples = glue.read_examples(data_dir, task, split)
    return glue.convert_examples_to_features(examples, task, tokenizer, max_seq_length)


def load_task_data(data_dir, task_names: Sequence[str], tokenizer, max_seq_length: int,
                   with_train: bool, with_dev: bool) -> list[TaskData]:
    """Read and featurise the train and dev files of every task (eagerly, as the original)."""
    tasks = []
    with cli.Progress(total=len(task_names), desc="reading tasks", unit="task") as progress:
        for task_id, name in enumerate(task_names):
            data = TaskData(name=name, task_id=task_id)
            if with_train:
                data.train = featurise(data_dir, name, "train", tokenizer, max_seq_length)
            if with_dev:
                data.dev = {split: featurise(data_dir, name, split, tokenizer, max_seq_length)
                            for split in data.spec.dev_splits}
            tasks.append(data)
            progress.update(1, task=name)
    return tasks


def unknown_token_fraction(features: Sequence[glue.InputFeatures], unk_id: int) -> float:
    """The share of [UNK] among the real word pieces ([CLS] and [SEP] not counted)."""
    pieces = unknown = 0
    for feature in features:
        specials = 3 if 1 in feature.segment_ids else 2  # [CLS] A [SEP] (B [SEP])
        pieces += len(feature.input_ids) - specials
        unknown += feature.input_ids.count(unk_id)
    return unknown / pieces if pieces else 0.0


class BatchStream:
    """Endless training batches of one task, as example indices.

    Examples form one long sequence of independent permutations (one per pass over
    the data, derived from (seed, task, pass) so no generator state is needed), cut
    into full batches. Every pass is reshuffled, and the state is one integer.

    With ``lengths`` (one per example), each pass is length-grouped
    (``glue.length_grouped_pass``): shuffled, sorted by length within mega-batches of
    up to 50 batches, batches shuffled, so a batch padded to its longest example
    carries little padding. Only the batch that spans two passes mixes lengths.

    With ``replay_first_pass`` (the original's ``itertools.cycle``), the first pass's
    batches, the last one partial, are replayed in the same order forever.

    With ``torch_sampler`` as well (``--replicate_original``), that first pass is the
    original's ``DataLoader(RandomSampler)``, drawn from torch's global generator at the
    moments the original drew: the stream is built where the original called
    ``iter(DataLoader)``, which draws one int64 (the workers' base seed, unused here);
    the task's first batch draws the sampler's seed, and the pass is
    ``torch.randperm(n)`` of a generator seeded with it. That seed joins the state.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, task_id: int,
                 replay_first_pass: bool = False, lengths: Sequence[int] | None = None,
                 torch_sampler: bool = False):
        if num_examples < 1:
            raise UsageError(f"task {task_id} has no training examples")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        if torch_sampler and (lengths is not None or not replay_first_pass):
            raise ValueError("torch_sampler is the original's plain shuffle, replayed: it needs "
                             "replay_first_pass and no lengths")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.task_id = task_id
        self.replay_first_pass = replay_first_pass
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.torch_sampler = torch_sampler
        self.sampler_seed: int | None = None  # (torch_sampler) drawn at the task's first batch
        self.batches_drawn = 0
        self._cached_pass: int | None = None
        self._cached_order: np.ndarray | None = None
        if torch_sampler:
            _draw_torch_int64()  # what iter(DataLoader(...)) draws: its base seed

    def _pass_order(self, pass_index: int) -> np.ndarray:
        if self._cached_pass != pass_index:
            rng = np.random.default_rng([self.seed, self.task_id, pass_index])
            if self.torch_sampler:  # (replayed: only pass 0 is ever asked for)
                generator = torch.Generator().manual_seed(self.draw_sampler_seed())
                self._cached_order = torch.randperm(self.num_examples, generator=generator).numpy()
            elif self.lengths is None:
                self._cached_order = rng.permutation(self.num_examples)
            else:
                # The pass starts at example position pass_index * num_examples of the
                # stream; its first `head` examples complete the batch begun before it.
                head = (-pass_index * self.num_examples) % self.batch_size
                self._cached_order = glue.length_grouped_pass(self.lengths, self.batch_size, rng, head)
            self._cached_pass = pass_index
        return self._cached_order

    def draw_sampler_seed(self) -> int:
        """(torch_sampler) The sampler's seed, drawn from torch's global generator the
        first time, as RandomSampler.__iter__ draws it at the task's first batch."""
        if self.sampler_seed is None:
            self.sampler_seed = _draw_torch_int64()
        return self.sampler_seed

    def next_indices(self) -> np.ndarray:
        """Indices of the next batch (global, before sharding across ranks)."""
        batch = self.batches_drawn
        self.batches_drawn += 1
        if self.replay_first_pass:
            batches_per_pass = math.ceil(self.num_examples / self.batch_size)
            start = (batch % batches_per_pass) * self.batch_size
            return self._pass_order(0)[start:start + self.batch_size]
        start = batch * self.batch_size
        end = start + self.batch_size
        chunks = []
        while start < end:
            pass_index, offset = divmod(start, self.num_examples)
            take = min(end - start, self.num_examples - offset)
            chunks.append(self._pass_order(pass_index)[offset:offset + take])
            start += take
        return np.concatenate(chunks)

    def state_dict(self) -> dict[str, int | None]:
        state = {"batches_drawn": self.batches_drawn}
        if self.torch_sampler:
            state["sampler_seed"] = self.sampler_seed  # None before the task's first batch
        return state

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        batches_drawn = int(state["batches_drawn"])
        if self.torch_sampler and batches_drawn and state.get("sampler_seed") is None:
            # A checkpoint of an earlier version, whose batches came from NumPy.
            raise ValueError(f"task {self.task_id}'s batches were not drawn in the original's DataLoader "
                             "order (a checkpoint of a version before --replicate_original drew it from torch)")
        self.batches_drawn = batches_drawn
        self.sampler_seed = None if state.get("sampler_seed") is None else int(state["sampler_seed"])
        self._cached_pass = self._cached_order = None


def _draw_torch_int64() -> int:
    """One int64 from torch's global generator, drawn as DataLoader and RandomSampler draw it."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


# --------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------

@dataclass
class DistributedContext:
    """Where this process runs and how it talks to the others."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    n_gpu: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def all_reduce_int(self, value: int, op: str) -> int:
        """``value`` reduced over all ranks by "min" or "max" (itself in one process)."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
        return int(flag.item())


def setup_distributed(local_rank: int, no_cuda: bool) -> DistributedContext:
    """torchrun (LOCAL_RANK) or --local_rank: DDP with NCCL on GPU, gloo on CPU."""
    env_rank = os.environ.get("LOCAL_RANK")
    if local_rank == -1 and env_rank is not None:
        local_rank = int(env_rank)
    use_cuda = torch.cuda.is_available() and not no_cuda
    if local_rank == -1:
        device = torch.device("cuda" if use_cuda else "cpu")
        return DistributedContext(device=device, n_gpu=torch.cuda.device_count() if use_cuda else 0)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(),
                              n_gpu=1 if use_cuda else 0, distributed=True)


def autocast_context(device: torch.device, bf16: bool, fp16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if fp16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --------------------------------------------------------------------------------------
# Model and optimizers
# --------------------------------------------------------------------------------------

LAYER_NORM_INITS = ("original", "standard")


def build_model(config: BertConfig, task_names: Sequence[str], init_checkpoint: str | None,
                freeze: bool, layer_norm_init: str = "original", kernels: Kernels | None = None,
                loaded_next_from: str | None = None) -> BertForMultiTask:
    """BertForMultiTask with pretrained BERT weights (adapters and heads keep their init).

    ``layer_norm_init`` "standard" starts the LayerNorms no checkpoint overwrites at
    gamma 1, beta 0 instead of the original's N(0, 0.02) for both. ``kernels``: the
    model's speed kernels (default all fast; ``Kernels.plain()``: torch's dropout).
    ``loaded_next_from``: where the caller loads the task modules from next (the log
    line says so).
    """
    config = config.replace(num_tasks=len(task_names))
    model = BertForMultiTask(config, [glue.TASKS[name].num_labels for name in task_names], kernels=kernels)
    if layer_norm_init == "standard":
        standard_layer_norm_init(model)
    elif config.top:
        logger.warning("the modules on top start with the original LayerNorm init (gamma and beta ~ N(0, %g)): "
                       "their outputs start near zero and short runs may not learn; "
                       "--layer_norm_init standard starts them at gamma 1, beta 0", config.initializer_range)
    if init_checkpoint:
        checkpointing.load_pretrained_weights(model, init_checkpoint, log=logger, loaded_next_from=loaded_next_from)
    if freeze:
        freeze_shared_bert(model)
    return model


def freeze_shared_bert(model: BertForMultiTask) -> int:
    """The original's --freeze: train only the task-specific parts (modeling.TASK_LISTS:
    adapters, LHUC, modules on top; the heads are outside ``bert``) and the LayerNorms.
    Returns the count frozen."""
    layer_norms = layer_norm_parameters(model.bert)
    frozen = 0
    for name, param in model.bert.named_parameters():
        if task_of_key(name) is None and name not in layer_norms:
            param.requires_grad = False
            frozen += param.numel()
    return frozen


def layer_norm_parameters(model: nn.Module) -> set[str]:
    """The names of the LayerNorms' gains and shifts (BERT's ``gamma``/``beta``, or an
    adapter's own ``nn.LayerNorm``)."""
    return {f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules()
            if isinstance(module, (BERTLayerNorm, nn.LayerNorm))
            for name, _ in module.named_parameters(recurse=False)}


def no_decay_parameters(model: nn.Module) -> set[str]:
    """The parameters without weight decay, as in the original: biases and LayerNorms."""
    biases = {name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    return biases | layer_norm_parameters(model)


def pal_attention_parameters(model: nn.Module) -> set[str]:
    """The names of the PALs' attention parameters (``--optim`` trains them apart)."""
    return {f"{module_name}.attn.{name}" for module_name, module in model.named_modules()
            if isinstance(module, BERTPals) for name, _ in module.attn.named_parameters()}


def _decay_groups(named_params, no_decay: set[str], lr: float | None = None):
    """Weight decay 0.01 except for ``no_decay`` (the original's groups); ``lr``
    overrides the optimizer's learning rate for these parameters."""
    named_params = list(named_params)
    override = {} if lr is None else {"lr": lr}
    return [
        {"params": [p for n, p in named_params if n not in no_decay], "weight_decay_rate": 0.01, **override},
        {"params": [p for n, p in named_params if n in no_decay], "weight_decay_rate": 0.0, **override},
    ]


def _learning_rate_groups(named_params, no_decay: set[str], task_learning_rate: float | None):
    """The decay groups, with the task-specific parameters (adapters and heads, which
    start from random values) at ``task_learning_rate`` when it is given."""
    named_params = list(named_params)
    if task_learning_rate is None:
        return _decay_groups(named_params, no_decay)
    shared = [(n, p) for n, p in named_params if not is_task_specific(n)]
    own = [(n, p) for n, p in named_params if is_task_specific(n)]
    return _decay_groups(shared, no_decay) + _decay_groups(own, no_decay, lr=task_learning_rate)


def build_optimizers(model: nn.Module, learning_rate: float, warmup: float, t_total: int,
                     split_attention: bool, update_unsampled: bool = True, bias_correction: bool = False,
                     task_learning_rate: float | None = None) -> list[BERTAdam]:
    """BERTAdam over decay / no-decay groups; with ``split_attention`` (the original's
    ``--optim`` other than 'normal') the PAL attention gets its own BERTAdam at 3e-4.

    ``update_unsampled`` reproduces the original's in-place ``zero_grad()``: once a
    task's parameters have been used, BERTAdam keeps updating them (momentum, weight
    decay) on steps that drew another task. It follows from the optimizer state, so a
    resumed run behaves exactly like an uninterrupted one. ``bias_correction`` is
    Adam's (BERTAdam's option); ``task_learning_rate``, if given, is the peak learning
    rate of the task-specific parameters (the rest keep ``learning_rate``).
    """
    named = list(model.named_parameters())
    no_decay = no_decay_parameters(model)
    options = dict(warmup=warmup, t_total=t_total, zero_grad_updates=update_unsampled,
                   bias_correction=bias_correction)
    if not split_attention:
        return [BERTAdam(_learning_rate_groups(named, no_decay, task_learning_rate), lr=learning_rate, **options)]
    pal_attention = pal_attention_parameters(model)
    attention = [(n, p) for n, p in named if n in pal_attention]
    rest = [(n, p) for n, p in named if n not in pal_attention]
    if not attention:
        raise UsageError("--optim splits off the PAL attention parameters, but this config has none")
    return [BERTAdam(_learning_rate_groups(rest, no_decay, task_learning_rate), lr=learning_rate, **options),
            BERTAdam(_decay_groups(attention, no_decay), lr=SPLIT_OPTIMIZER_LR, **options)]


def start_regression_heads(model: BertForMultiTask, tasks: Sequence[TaskData]) -> list[float]:
    """Start each regression head's bias at its task's mean training label, and return
    per task the factor its loss is scaled by: 1 / the label variance for a regression
    task, 1 for a classification task.

    Why: STS-B trains on score / 5 (mean about 0.5, variance about 0.07). From a bias of
    0, the head first spends its few steps fitting the mean (Adam moves a bias by about
    the learning rate per step, 1e-4 of the 0.5 needed), and an MSE of 0.07 weighs
    little beside the other tasks' cross-entropies of about 0.7 in the shared layers'
    Adam moments. Pearson correlation, the task's score, ignores both the offset and the
    scale, so neither changes what is measured. Resumed runs load their heads afterwards.
    """
    scales = []
    for task in tasks:
        labels = np.array([f.label_id for f in task.train if f.label_id is not None], dtype=np.float64)
        if not task.spec.is_regression or labels.size == 0:
            scales.append(1.0)
            continue
        with torch.no_grad():
            unwrap(model).classifier[task.task_id].bias.fill_(float(labels.mean()))
        variance = float(labels.var())
        scales.append(1.0 / variance if variance > 0 else 1.0)
    return scales


def unwrap(model: nn.Module) -> BertForMultiTask:
    return model.module if hasattr(model, "module") else model


def first_non_finite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf, or None if all are finite."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return name
    return None


def gradients_finite(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


# --------------------------------------------------------------------------------------
# Evaluation and prediction
# --------------------------------------------------------------------------------------

def predict_features(model: BertForMultiTask, features: Sequence[glue.InputFeatures], task_id: int,
                     batch_size: int, device: torch.device, regression: bool, bf16: bool = False,
                     fp16: bool = False, pad_to: int | None = None, desc: str = "") -> np.ndarray:
    """Predictions in input order: class ids, or floats for regression.

    Batches are grouped by length (longest first) so little compute goes to padding;
    the order does not change any prediction.
    """
    order = glue.length_grouped_order([len(f.input_ids) for f in features], batch_size, None)
    outputs = np.zeros(len(features), dtype=np.float64 if regression else np.int64)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), cli.Progress(total=len(order), desc=desc, unit="example",
                                              enabled=bool(desc)) as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = glue.collate_features([features[i] for i in indices], pad_to=pad_to, regression=regression)
            with autocast_context(device, bf16, fp16):
                logits = model(batch["input_ids"].to(device), batch["segment_ids"].to(device),
                               batch["input_mask"].to(device), task_id)
            logits = logits.float().cpu()
            outputs[indices] = logits[:, 0].numpy() if regression else logits.argmax(dim=-1).numpy()
            progress.update(len(indices))
    model.train(was_training)
    return outputs


def labels_of(features: Sequence[glue.InputFeatures]) -> np.ndarray:
    return np.array([f.label_id for f in features])


def score_key(task: str, split: str) -> str:
    """The GLUE entry a dev split counts as: MNLI mismatched is its own entry."""
    return "mnli-mm" if split == "dev_mismatched" else task


def evaluate_tasks(model: BertForMultiTask, tasks: Sequence[TaskData], settings: TrainingSettings,
                   device: torch.device, epoch: int = 0, global_step: int = 0,
                   train_losses: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Score every task's dev split(s); returns scores, the GLUE average, the selection
    score and one record per task and split (as written to metrics.jsonl).

    The selection score is the GLUE average, or with ``select_by_original_sum`` the
    original's sum of per-batch metrics over the matched splits.
    """
    by_original_sum = settings.select_by_original_sum
    scores, records, original_sum = {}, [], 0.0
    for task in tasks:
        for split, features in task.dev.items():
            preds = predict_features(model, features, task.task_id, settings.eval_batch_size, device,
                                     task.spec.is_regression, settings.bf16, settings.fp16, settings.pad_to,
                                     desc=f"eval {task.name} {split}")
            labels = labels_of(features)
            metrics = glue.compute_metrics(task.name, preds, labels)
            key = score_key(task.name, split)
            scores[key] = glue.task_score(task.name, metrics)
            record = {"epoch": epoch, "global_step": global_step, "task": key, "split": split, **metrics,
                      "score": scores[key], "train_loss": (train_losses or {}).get(task.name)}
            if by_original_sum and split != "dev_mismatched":
                record["original_metric"] = glue.original_batch_metric(task.name, preds, labels,
                                                                       settings.eval_batch_size)
                original_sum += record["original_metric"]
            records.append(record)
            logger.info("epoch %d %s: %s", epoch, key, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    average = glue.glue_average(scores)
    logger.info("epoch %d: GLUE average %.4f%s", epoch, average,
                f", original total {original_sum:.4f}" if by_original_sum else "")
    return {"epoch": epoch, "global_step": global_step, "scores": scores, "glue_average": average,
            "selection_score": original_sum if by_original_sum else average, "records": records}


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

@dataclass
class TrainingSettings:
    """What the training loop needs beyond the model and data (validated by the CLI).

    The seven fields after ``max_seq_length`` are what ``--replicate_original`` changes;
    run_multi_task.py sets them once, and nothing else looks at that flag.
    """

    output_dir: Path
    vocab_file: str
    train_batch_size: int
    eval_batch_size: int
    gradient_accumulation_steps: int
    num_train_epochs: int
    steps_per_epoch: int
    learning_rate: float
    warmup_proportion: float
    sample: str
    seed: int
    max_seq_length: int
    pad_to: int | None = None  # pad every batch to this length (the original: max_seq_length)
    replay_first_pass: bool = False  # the original's itertools.cycle over the first pass's batches
    group_by_length: bool = True  # length-grouped training batches (the original: plain shuffling)
    # each task's batch order drawn from torch's global generator as the original's
    # DataLoader(RandomSampler) drew it (needs replay_first_pass, no grouping)
    original_batch_order: bool = False
    select_by_original_sum: bool = False  # best model by the sum of per-batch metrics, not the GLUE average
    dropout_off_after_first_eval: bool = False  # the original's model.eval() that was never undone
    use_original_sizes: bool = False  # sample by the original's hard-coded task sizes
    split_attention_optimizer: bool = False
    # What this port does to learn every task in a short run (issue 19; README "Why tasks
    # stayed at their baseline"); --replicate_original turns all four off:
    # a task's parameters move only on the steps that draw it. The original's in-place
    # zero_grad let BERTAdam move them on every step after their first draw, and Adam's
    # second moment then averages in the zero gradients of the other steps: a task drawn
    # with probability p takes steps about 1/sqrt(p) times larger per draw, the rarest
    # tasks the largest (benchmarks/README.md has the figures).
    skip_unsampled_updates: bool = True
    bias_correction: bool = True  # Adam's bias correction in BERTAdam
    task_learning_rate: float | None = None  # peak LR of adapters and heads (None: learning_rate)
    scale_regression: bool = True  # regression heads start at the mean label; MSE over the label variance
    save_checkpoints_steps: int = 1000
    bf16: bool = False
    fp16: bool = False
    skip_nonfinite_loss: bool = False
    save_adapters: bool = True
    plot: bool = True
    keep_epoch_checkpoints: bool = False
    keep_last_checkpoint: bool = False  # keep checkpoints/last.pt when the run finishes
    logging_steps: int = 50  # a progress line in the log (and TensorBoard scalars) every N steps; 0: none
    logging_dir: Path | None = None  # TensorBoard event files (torch.utils.tensorboard)
    # Not used by the loop: how the model and its inputs were built, recorded in every
    # checkpoint so that --resume refuses a run built differently.
    do_lower_case: bool = False
    freeze: bool = False
    layer_norm_init: str = "original"
    vocab_sha256: str = ""
    config_sha256: str = ""
    # Recorded in every adapter file (with lower-casing and max_seq_length), so that a
    # prediction with another vocabulary is refused: tokenization.vocab_fingerprint.
    vocab_fingerprint: str = ""


class Trainer:
    """One task per optimizer step, sampled by size or in turn; evaluation per epoch."""

    def __init__(self, model: BertForMultiTask, tasks: list[TaskData], settings: TrainingSettings,
                 ctx: DistributedContext):
        self.settings = settings
        self.ctx = ctx
        self.tasks = tasks
        self.task_names = [t.name for t in tasks]
        self.model = model.to(ctx.device)
        self.wrapped = self._wrap(self.model)
        self.t_total = settings.steps_per_epoch * settings.num_train_epochs
        # 1 / the variance of each regression task's training labels: its MSE then
        # starts near 1, like a cross-entropy, instead of at 0.05 (STS-B's score / 5).
        self.loss_scales = [1.0] * len(tasks)
        if settings.scale_regression:
            self.loss_scales = start_regression_heads(self.model, tasks)
        self.optimizers = build_optimizers(self.model, settings.learning_rate, settings.warmup_proportion,
                                           self.t_total, settings.split_attention_optimizer,
                                           update_unsampled=not settings.skip_unsampled_updates,
                                           bias_correction=settings.bias_correction,
                                           task_learning_rate=settings.task_learning_rate)
        self.scaler = torch.amp.GradScaler("cuda") if settings.fp16 else None
        self.sampler = glue.TaskSampler(self.task_sizes(), settings.sample, settings.num_train_epochs, settings.seed)
        micro_batch = settings.train_batch_size // settings.gradient_accumulation_steps
        # (Under original_batch_order each stream draws from torch's generator as it is
        # built, in task order, where the original called iter(DataLoader) for each task.)
        self.streams = [BatchStream(len(t.train), micro_batch, settings.seed, t.task_id,
                                    replay_first_pass=settings.replay_first_pass,
                                    lengths=[len(f.input_ids) for f in t.train] if settings.group_by_length else None,
                                    torch_sampler=settings.original_batch_order)
                        for t in tasks]
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_score = -math.inf
        self.history: list[dict[str, Any]] = []  # one record per task, split and evaluation
        self.probability_history: list[list[float]] = []
        self.draw_digest = hashlib.sha256()
        self.epoch_losses = self._empty_losses()
        self.dropout_disabled = False
        self.last_checkpoint_step: int | None = None
        self.nonfinite_steps_skipped = 0
        self._stop_signal: int | None = None
        # Step lines, TensorBoard scalars and the closing summary (rank 0 writes them).
        self.log = reports.TrainingLog(self.t_total, settings, enabled=ctx.is_main)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            # Unsampled tasks' modules get no gradient at a step.
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                       find_unused_parameters=True)
        if self.ctx.n_gpu > 1:
            return nn.DataParallel(model)
        return model

    def task_sizes(self) -> list[float]:
        if self.settings.use_original_sizes:
            unknown = [n for n in self.task_names if n not in glue.ORIGINAL_SIZES]
            if unknown:
                raise UsageError(f"no hard-coded original size for task(s) {', '.join(unknown)}")
            return [glue.ORIGINAL_SIZES[n] for n in self.task_names]
        return [len(t.train) for t in self.tasks]

    def _empty_losses(self) -> dict[str, list[float]]:
        return {name: [0.0, 0] for name in self.task_names}

    # ---- the loop -------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run (or continue) training; returns the best evaluation."""
        settings, ctx = self.settings, self.ctx
        self.log.start(self.global_step)
        if ctx.is_main:
            self.warn_if_short_of_space()
        with self._on_a_failed_write(), self._signals_request_a_checkpoint(), self.log:
            self.wrapped.train(not self.dropout_disabled)
            while self.epoch < settings.num_train_epochs:
                if self.step_in_epoch == 0:  # a new epoch (not one resumed halfway)
                    self.probability_history.append([float(p) for p in self.sampler.start_epoch(self.epoch)])
                    self.epoch_losses = self._empty_losses()
                    logger.info("epoch %d: task probabilities %s", self.epoch,
                                ", ".join(f"{n} {p:.4f}" for n, p in zip(self.task_names, self.sampler.probs)))
                with cli.Progress(total=settings.steps_per_epoch, initial=self.step_in_epoch, unit="step",
                                  desc=f"epoch {self.epoch}", enabled=ctx.is_main) as progress:
                    while self.step_in_epoch < settings.steps_per_epoch:
                        # Every rank draws the same task: the sampler is seeded alike everywhere
                        # (the digest of the draws, and of the batches, is compared across
                        # ranks at the end).
                        task_id = self.sampler.next_task()
                        self.draw_digest.update(bytes([task_id % 256]))
                        loss = self.train_step(task_id)
                        self.step_in_epoch += 1
                        self.global_step += 1
                        progress.update(1, task=self.task_names[task_id], loss=f"{loss:.4f}")
                        self.log.step(self.global_step, self.epoch, self.task_names[task_id], loss,
                                      self.current_learning_rate)
                        # A stop signal is agreed by all ranks, so that they save the same step.
                        stop_signal = ctx.all_reduce_int(self._stop_signal or 0, "max")
                        if stop_signal:
                            checkpoint = self.save_checkpoint()
                            raise StopRequested(stop_signal, checkpoint=checkpoint,
                                                message=self._resume_hint(stop_signal, checkpoint))
                        every = settings.save_checkpoints_steps
                        if every > 0 and self.global_step % every == 0:
                            self.save_checkpoint()
                self.end_epoch()
            self._check_ranks_drew_the_same_tasks()
            self._finish()
        return reports.read_eval_results(settings.output_dir)

    def _finish(self) -> None:
        """The end of a run: the training state marked finished (checkpoints/last.pt
        removed unless --keep_last_checkpoint), then the summary in the log."""
        if not self.ctx.is_main:
            return
        best = reports.read_eval_results(self.settings.output_dir)
        checkpointing.mark_training_finished(
            self.settings.output_dir, {"global_step": self.global_step, "epochs": self.epoch,
                                       "best_glue_average": best.get("glue_average"), "best_epoch": best.get("epoch")},
            keep_last=self.settings.keep_last_checkpoint)
        self.log.finish(self.global_step, self.epoch, best,
                        {name: self._mean_train_loss(name) for name in self.task_names},
                        self.nonfinite_steps_skipped, self.settings.keep_last_checkpoint)

    def current_learning_rate(self) -> float:
        """The scheduled learning rate of the shared parameters (the first optimizer)."""
        return float(max(self.optimizers[0].get_lr(self.optimizers[0].param_groups[:2])))

    def _resume_hint(self, signum: int, checkpoint: Path) -> str:
        return (f"signal {signum} at step {self.global_step}; resume with --resume: "
                f"run_multi_task.py --output_dir {self.settings.output_dir} --resume continues from {checkpoint}")

    def train_step(self, task_id: int) -> float:
        """One optimizer step on one task: forward and backward over the accumulation
        micro-batches, then the update. Returns the step's loss (NaN if skipped)."""
        settings, ctx = self.settings, self.ctx
        task = self.tasks[task_id]
        accumulation = settings.gradient_accumulation_steps
        # Every rank draws the same global micro-batches. The step's gradient is the mean
        # over all its examples: each micro-batch (and each rank's share of it) counts by
        # its number of examples, which matters when a batch is partial (the last batch of
        # a pass under --replicate_original).
        stream = self.streams[task_id]
        if stream.torch_sampler and stream.sampler_seed is None and ctx.distributed:
            # The task's first batch: each rank draws the seed as the original would, and
            # all keep rank 0's, since the ranks' generators can differ (dropout on
            # shards of different sizes) and every rank must cut the same batches.
            drawn = stream.draw_sampler_seed()
            stream.sampler_seed = ctx.all_reduce_int(drawn if ctx.is_main else -1, "max")
        micro_batches = [stream.next_indices() for _ in range(accumulation)]
        self.draw_digest.update(np.concatenate(micro_batches).astype(np.int64).tobytes())
        step_examples = sum(len(indices) for indices in micro_batches)
        step_loss, local_examples = 0.0, 0
        for micro_step, global_indices in enumerate(micro_batches):
            self.log.count(len(global_indices), sum(len(task.train[i].input_ids) for i in global_indices))
            # Each rank takes every world_size-th example: together the ranks see each once.
            indices = global_indices[ctx.rank::ctx.world_size]
            # A rank left without an example still runs forward and backward (the
            # all-reduce needs every rank), on one example that counts 0.
            weight = len(indices) * ctx.world_size / step_examples  # DDP averages over ranks
            batch = glue.collate_features([task.train[i] for i in (indices if len(indices) else global_indices[:1])],
                                          pad_to=settings.pad_to, regression=task.spec.is_regression)
            batch = {name: tensor.to(ctx.device) for name, tensor in batch.items()}
            # DDP averages gradients over ranks during backward; only the last micro-step
            # needs that, the others accumulate locally under no_sync().
            last_micro_step = micro_step == accumulation - 1
            sync = self.wrapped.no_sync() if ctx.distributed and not last_micro_step else contextlib.nullcontext()
            with sync:
                with autocast_context(ctx.device, settings.bf16, settings.fp16):
                    loss, _ = self.wrapped(batch["input_ids"], batch["segment_ids"], batch["input_mask"], task_id,
                                           labels=batch["label_ids"])
                if ctx.n_gpu > 1 and not ctx.distributed:
                    # DataParallel returns one mean loss per chunk of the batch (torch.chunk
                    # sizes): weighted by chunk size, the mean over the batch.
                    sizes = [len(chunk) for chunk in torch.arange(len(batch["input_ids"])).chunk(ctx.n_gpu)]
                    loss = (loss * torch.tensor(sizes, dtype=loss.dtype, device=loss.device)).sum() / sum(sizes)
                mean_loss = loss.detach()
                loss = loss * weight * self.loss_scales[task_id]
                # All ranks must agree to go on: a rank that skipped backward while the others
                # entered it would leave them waiting in the all-reduce forever.
                if not ctx.all_reduce_int(int(bool(torch.isfinite(mean_loss).all())), "min"):
                    return self._non_finite_step(task, "loss")
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()  # fp16: scaled so that small gradients survive
                else:
                    loss.backward()
            step_loss += mean_loss.item() * len(indices)  # (waits for the device)
            local_examples += len(indices)
        step_loss /= max(local_examples, 1)  # this rank's mean over the step's examples
        # A finite loss can still give inf/NaN gradients; DDP has averaged them already, so
        # every rank gives the same answer. (Under fp16 the scaler checks and skips itself.)
        if settings.skip_nonfinite_loss and self.scaler is None and not gradients_finite(self.model):
            return self._non_finite_step(task, "gradient")
        for optimizer in self.optimizers:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)  # BERTAdam clips per tensor: it needs the true gradients
                self.scaler.step(optimizer)  # skipped (step counters untouched) when gradients overflowed
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        # None, not zeros: a task not drawn next step gets no gradient (see build_optimizers).
        self.model.zero_grad(set_to_none=True)
        self.epoch_losses[task.name][0] += step_loss
        self.epoch_losses[task.name][1] += 1
        return step_loss

    def _non_finite_step(self, task: TaskData, what: str) -> float:
        """Stop with an error naming the step and task, or (--skip_nonfinite_loss) skip
        the step. Either way nothing is written: the best model and the last checkpoint
        stay as they were, and the parameters are untouched (no update was applied)."""
        message = (f"non-finite training {what} at step {self.global_step + 1} "
                   f"(epoch {self.epoch}, task {task.name})")
        self.model.zero_grad(set_to_none=True)
        if not self.settings.skip_nonfinite_loss:
            if self.last_checkpoint_step is not None:
                hint = (f"; the last checkpoint (step {self.last_checkpoint_step}) continues with "
                        f"--resume, add --skip_nonfinite_loss to skip such steps")
            else:
                hint = "; rerun with --skip_nonfinite_loss to skip such steps"
            kept = "the best saved model is untouched" if self.best_score > -math.inf else "nothing was saved"
            raise NonFiniteLossError(f"{message}; {kept}{hint}")
        self.nonfinite_steps_skipped += 1
        logger.warning("%s; skipping this step (%d skipped so far)", message, self.nonfinite_steps_skipped)
        return float("nan")

    def end_epoch(self) -> None:
        """Evaluate on rank 0 (keeping the best model), write the reports, checkpoint."""
        if self.ctx.is_main:
            train_losses = {name: self._mean_train_loss(name) for name in self.task_names}
            result = evaluate_tasks(self.model, self.tasks, self.settings, self.ctx.device, self.epoch,
                                    self.global_step, train_losses)
            self.history.extend(result["records"])
            self._save_if_best(result)
            self.log.evaluation(result, train_losses, self.global_step)
        self.ctx.barrier()
        if self.settings.dropout_off_after_first_eval:
            self.dropout_disabled = True
        self.wrapped.train(not self.dropout_disabled)
        self.epoch += 1
        self.step_in_epoch = 0
        if self.ctx.is_main:
            reports.write_epoch_reports(self.settings.output_dir, self.history, self.probability_history,
                                        self.task_names, plot=self.settings.plot)
        finished = self.epoch >= self.settings.num_train_epochs
        if finished and not (self.settings.keep_last_checkpoint or self.settings.keep_epoch_checkpoints):
            return  # the run is done: a last.pt written now would be removed at once
        self.save_checkpoint(keep_epoch_copy=self.settings.keep_epoch_checkpoints)

    def _mean_train_loss(self, task_name: str) -> float | None:
        total, steps = self.epoch_losses[task_name]
        return total / steps if steps else None

    def _save_if_best(self, result: dict[str, Any]) -> None:
        score = result["selection_score"]
        if not score > self.best_score:  # NaN never wins
            return
        self._refuse_non_finite_parameters("saving the best model")
        self.best_score = score
        output_dir = self.settings.output_dir
        with checkpointing.atomic_group():  # the previous best model's files stay until all new ones are written
            checkpointing.save_model_folder(self.model, self.task_names, self.settings.vocab_file, output_dir)
            if self.settings.save_adapters:
                trained_with = {"do_lower_case": self.settings.do_lower_case,
                                "max_seq_length": self.settings.max_seq_length}
                if self.settings.vocab_fingerprint:
                    trained_with["vocab_sha256"] = self.settings.vocab_fingerprint
                checkpointing.save_adapter_checkpoints(self.model, self.task_names,
                                                       output_dir / checkpointing.ADAPTER_DIR, trained_with=trained_with)
            reports.write_eval_results(output_dir, result)
        logger.info("new best model (score %.4f) saved to %s", score, output_dir)

    def _refuse_non_finite_parameters(self, about_to: str) -> None:
        """Never save NaN/inf weights: an all-NaN model predicts class 0 everywhere and
        could even 'win' an evaluation, and a poisoned checkpoint cannot be resumed."""
        name = first_non_finite_parameter(self.model)
        if name is not None:
            raise NonFiniteLossError(f"parameter '{name}' became non-finite by step {self.global_step} "
                                     f"(epoch {self.epoch}); not {about_to}: the best saved model and "
                                     f"the last checkpoint are untouched")

    def _check_ranks_drew_the_same_tasks(self) -> None:
        digests = self.ctx.gather_objects(self.draw_digest.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks drew different task or batch sequences: {digests}")
        if self.ctx.distributed:
            logger.info("all %d ranks drew the same %d tasks and batches (sha256 %s)", self.ctx.world_size,
                        self.global_step, digests[0][:16])

    # ---- checkpoints ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": checkpointing.optimizer_states_by_name(self.optimizers, self.model),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.sampler.state_dict(),
            "streams": [stream.state_dict() for stream in self.streams],
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_score": self.best_score,
            "history": json.dumps(self.history),
            "probability_history": self.probability_history,
            "epoch_losses": json.dumps(self.epoch_losses),
            "dropout_disabled": self.dropout_disabled,
            "task_names": list(self.task_names),
            "settings": self.invariant_settings(),
        }

    def invariant_settings(self) -> dict[str, Any]:
        return {flag: getattr(self.settings, name) for flag, name in RESUME_INVARIANT_SETTINGS.items()}

    def save_checkpoint(self, keep_epoch_copy: bool = False) -> Path:
        """All ranks contribute their RNG state; rank 0 writes (atomically)."""
        self._refuse_non_finite_parameters("writing a checkpoint")
        rng_states = self.ctx.gather_objects(checkpointing.capture_rng_state())
        path = checkpointing.training_checkpoint_path(self.settings.output_dir)
        if self.ctx.is_main:
            state = self.state_dict()
            state["rng"] = rng_states
            try:
                checkpointing.save_training_checkpoint(state, self.settings.output_dir,
                                                       keep_epoch_copy=self.epoch if keep_epoch_copy else None)
            except WriteError as err:
                if err.path != path:  # last.pt was written, its epoch copy was not
                    self.last_checkpoint_step = self.global_step
                raise
        self.ctx.barrier()
        self.last_checkpoint_step = self.global_step
        return path

    def load_state_dict(self, state: dict[str, Any], source: Any = "the training checkpoint") -> None:
        """Continue from a saved state. Anything that does not fit this run (another
        script's file, other tasks, another architecture, settings that would change
        the result) is a one-line error naming the checkpoint and the key or flag."""
        missing = [key for key in TRAINING_STATE_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"{source}: not a training checkpoint of this script (no '{missing[0]}')")
        if list(state["task_names"]) != self.task_names:
            raise UsageError(f"{source} was trained on tasks {list(state['task_names'])}, "
                             f"not {self.task_names}: resume with the same --tasks")
        saved_settings = state.get("settings") or {}
        for flag, mine in self.invariant_settings().items():
            if flag not in saved_settings or saved_settings[flag] == mine:
                continue  # (a checkpoint of an older version may lack a setting)
            theirs = saved_settings[flag]
            if RESUME_INVARIANT_SETTINGS[flag].endswith("_sha256"):
                raise UsageError(f"{source} was trained with another {flag} (content sha256 {str(theirs)[:12]}), "
                                 f"this run's has sha256 {str(mine)[:12]}: resume with the file the run started with")
            if isinstance(mine, bool):
                if flag.startswith("--no_"):  # the setting is true when the flag is absent
                    theirs, mine = not theirs, not mine
                raise UsageError(f"{source} was trained {'with' if theirs else 'without'} {flag}, this run "
                                 f"{'has' if mine else 'lacks'} it: resume with the checkpoint's settings")
            raise UsageError(f"{source} was trained with {flag} {theirs}, this run has "
                             f"{mine}: resume with the checkpoint's settings")
        checkpointing.check_state_dict(state["model"], self.model.state_dict(), source, what="model tensor")
        self.model.load_state_dict(state["model"])
        optimizer_states = checkpointing.optimizer_states_by_position(state["optimizers"], self.optimizers,
                                                                      self.model, list(state["model"]), source)
        try:
            if len(state["streams"]) != len(self.streams):
                raise ValueError("it holds a different number of task streams")
            for optimizer, saved in zip(self.optimizers, optimizer_states):
                optimizer.load_state_dict(saved)
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.sampler.load_state_dict(state["sampler"])
            for stream, saved in zip(self.streams, state["streams"]):
                stream.load_state_dict(saved)
            self.global_step = int(state["global_step"])
            self.epoch = int(state["epoch"])
            self.step_in_epoch = int(state["step_in_epoch"])
            self.best_score = float(state["best_score"])
            self.history = json.loads(state["history"])
            self.probability_history = [list(p) for p in state["probability_history"]]
            self.epoch_losses = json.loads(state["epoch_losses"])
            self.dropout_disabled = bool(state["dropout_disabled"])
            rng_states = state["rng"]
            checkpointing.restore_rng_state(rng_states[min(self.ctx.rank, len(rng_states) - 1)])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{source}: does not fit this run ({reason}); was it "
                                  f"written with other flags or another config?") from None
        if not 0 <= self.step_in_epoch <= self.settings.steps_per_epoch:
            raise UsageError(f"{source} stopped at step {self.step_in_epoch} of an epoch, but "
                             f"--steps_per_epoch is {self.settings.steps_per_epoch}")
        if self.epoch >= self.settings.num_train_epochs:
            raise UsageError(already_finished_message(self.settings.output_dir, self.global_step, self.epoch))
        self.wrapped.train(not self.dropout_disabled)
        self.last_checkpoint_step = self.global_step
        logger.info("resumed from step %d (epoch %d, step %d of %d)", self.global_step, self.epoch,
                    self.step_in_epoch, self.settings.steps_per_epoch)

    # ---- disk space -----------------------------------------------------------------

    def warn_if_short_of_space(self) -> None:
        """One warning line when the output folder lacks the space this run's
        checkpoints and best model will take (estimated from the parameters)."""
        epochs_left = self.settings.num_train_epochs - self.epoch
        warning = checkpointing.free_space_warning(
            self.settings.output_dir, self.model, self.settings.save_adapters,
            epoch_copies=epochs_left if self.settings.keep_epoch_checkpoints else 0)
        if warning:
            logger.warning(warning)

    @contextlib.contextmanager
    def _on_a_failed_write(self):
        """A file that cannot be written ends the run (one ``WriteError`` line): it says
        which checkpoint is intact and how to go on."""
        try:
            yield
        except WriteError as err:
            checkpoint = checkpointing.training_checkpoint_path(self.settings.output_dir)
            remedy = "free space" if err.out_of_space else "remove the cause"
            if self.last_checkpoint_step is not None and checkpoint.is_file():
                resume = (f"the checkpoint of step {self.last_checkpoint_step} in {checkpoint} is intact: "
                          f"{remedy} and add --resume")
            else:
                resume = (f"no training checkpoint was written yet: {remedy} and run the same command again "
                          f"with --overwrite_output_dir")
            err.intact = resume if err.path == checkpoint else f"{err.intact}; {resume}"
            raise

    # ---- signals --------------------------------------------------------------------

    def _signals_request_a_checkpoint(self):
        """SIGINT/SIGTERM: finish the current step, save a resumable checkpoint, stop.
        A second signal stops at once (the last checkpoint is kept)."""
        def request_stop(signum, _frame):
            if self._stop_signal is not None:
                if self.last_checkpoint_step is None:
                    raise StopRequested(signum, message=(
                        f"signal {signum} again, before the first checkpoint: nothing can be resumed; "
                        f"start the run again"))
                checkpoint = checkpointing.training_checkpoint_path(self.settings.output_dir)
                raise StopRequested(signum, checkpoint=checkpoint, message=(
                    f"signal {signum} again: stopped at once; resume with --resume, which continues from the "
                    f"last checkpoint (step {self.last_checkpoint_step}, {checkpoint})"))
            self._stop_signal = signum
            logger.warning("signal %d: saving a checkpoint after this step (a second signal stops at once)", signum)

        return cli.on_stop_signals(request_stop)


def already_finished_message(output_dir: Path, global_step: int, epochs: int) -> str:
    best = Path(output_dir) / checkpointing.BEST_MODEL_FILE
    return (f"{output_dir}: this run already finished (step {global_step}, {epochs} epochs): nothing to resume; "
            f"to train further, start a new run from its best model (--init_checkpoint {best})")


# --------------------------------------------------------------------------------------
# Test-set prediction
# --------------------------------------------------------------------------------------

def predict_test_sets(model: BertForMultiTask, task_names: Sequence[str], data_dir, tokenizer,
                      max_seq_length: int, batch_size: int, device: torch.device, folder: Path,
                      bf16: bool = False, fp16: bool = False) -> list[Path]:
    """GLUE submission files (one TSV per task; MNLI-m, MNLI-mm and AX from the MNLI head)."""
    written = []
    model = model.to(device)
    for task_id, name in enumerate(task_names):
        spec = glue.TASKS[name]
        for split, submission_key in glue.TEST_SPLITS[name]:
            if split == "diagnostic" and not (Path(data_dir) / "diagnostic" / "diagnostic.tsv").is_file():
                logger.info("no diagnostic set under %s: AX.tsv not written", data_dir)
                continue
            examples = glue.read_examples(data_dir, name, split)
            features = glue.convert_examples_to_features(examples, name, tokenizer, max_seq_length)
            preds = predict_features(model, features, task_id, batch_size, device, spec.is_regression,
                                     bf16, fp16, desc=f"predict {submission_key}")
            path = folder / glue.SUBMISSION_FILE_NAMES[submission_key]
            glue.write_submission(path, submission_key, [e.guid for e in examples], preds)
            written.append(path)
    return written
