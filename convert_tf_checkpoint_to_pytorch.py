"""Convert a Google TensorFlow BERT checkpoint into a PyTorch state dict.

    python convert_tf_checkpoint_to_pytorch.py \\
        --tf_checkpoint_path uncased_L-12_H-768_A-12/bert_model.ckpt \\
        --bert_config_file uncased_L-12_H-768_A-12/bert_config.json \\
        --pytorch_dump_path uncased_L-12_H-768_A-12/pytorch_model.bin

The output holds one contiguous float32 tensor per weight of ``BertModel`` under this
project's key names (``embeddings.LayerNorm.gamma``, ``encoder.layer.0.attention.self.
query.weight`` ...), saved with ``torch.save`` or, for a ``.safetensors`` path (or
``--format safetensors``), as safetensors. It loads with
``checkpointing.load_pretrained_weights`` and with ``--init_checkpoint`` of
``run_multi_task.py`` and ``extract_features.py``.

What a Google checkpoint holds besides BERT is skipped and counted in one log line:
Adam slots (``.../adam_m``, ``.../adam_v``), ``global_step``, the pre-training heads
(``cls/...``) and a fine-tuned classifier (``output_weights``, ``output_bias``).
With ``--map_classifier [TASK_ID]`` (alias ``--classifier_task_id``) that classifier is
kept instead: it becomes ``classifier.TASK_ID.weight``/``.bias`` and every BERT key gets
the ``bert.`` prefix, so the file is a (partial) ``BertForMultiTask`` state dict.

Every other variable must map onto a BertModel weight of the right shape, and every
BertModel weight must be found; otherwise the script stops with one line naming the
TensorFlow variable. Adapter settings in the config are ignored: a Google checkpoint
holds no adapters, and the training script initialises them.

TensorFlow is needed only here (``pip install tensorflow-cpu``); it is read only through
``tf.train.list_variables`` and ``tf.train.load_variable``.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

import checkpointing
import cli
from configuration import ARCHITECTURE_FLAGS
from errors import ConversionError
from modeling import BertConfig, BertModel

logger = logging.getLogger("convert_tf_checkpoint_to_pytorch")

OPTIMIZER_SLOTS = ("adam_m", "adam_v")
CLASSIFIER_VARIABLES = {"output_weights": "weight", "output_bias": "bias"}
_LAYER_COMPONENT = re.compile(r"layer_(\d+)")




# --------------------------------------------------------------------------------------
# Name mapping (Google TF names <-> this project's keys)
# --------------------------------------------------------------------------------------


class MappedName(NamedTuple):
    """Where a TF variable goes: the state-dict key and whether to transpose it."""

    key: str
    transpose: bool


def skip_reason(tf_name: str, map_classifier: bool) -> str | None:
    """Why a TF variable is not converted (a summary category), or None to convert it."""
    components = tf_name.split("/")
    if components[-1] in OPTIMIZER_SLOTS:
        return "optimizer slots (adam_m/adam_v)"
    if tf_name == "global_step":
        return "global_step"
    if components[0] == "cls":
        return "pre-training heads (cls/...)"
    if tf_name in CLASSIFIER_VARIABLES and not map_classifier:
        return "classifier variables (output_weights/output_bias; see --map_classifier)"
    return None


def tf_name_to_key(tf_name: str) -> MappedName | None:
    """Map a Google BERT variable name onto a BertModel state-dict key.

    ``bert/`` is dropped; ``layer_N`` becomes ``layer.N``; ``kernel`` becomes a
    transposed ``weight`` (TF stores dense kernels [in, out], torch [out, in]);
    ``*_embeddings`` tables get ``.weight``; ``LayerNorm/gamma|beta`` keep their names
    (this project's LayerNorm uses them). Returns None for names outside ``bert/``.
    Whether the key exists in the model is checked by the caller.
    """
    components = tf_name.split("/")
    if len(components) < 2 or components[0] != "bert":
        return None
    parts: list[str] = []
    transpose = False
    for component in components[1:]:
        layer = _LAYER_COMPONENT.fullmatch(component)
        if layer:
            parts += ["layer", layer.group(1)]
        elif component == "kernel":
            parts.append("weight")
            transpose = True
        else:
            parts.append(component)
    if parts[-1].endswith("_embeddings"):
        parts.append("weight")
    return MappedName(".".join(parts), transpose)


def key_to_tf_name(key: str) -> str:
    """The Google variable name a BertModel key comes from (inverse of tf_name_to_key)."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] == "weight" and parts[-2].endswith("_embeddings"):
        parts = parts[:-1]  # embedding tables are stored without '.weight'
    elif parts[-1] == "weight":
        parts[-1] = "kernel"
    components: list[str] = []
    index = 0
    while index < len(parts):
        if parts[index] == "layer" and index + 1 < len(parts) and parts[index + 1].isdigit():
            components.append(f"layer_{parts[index + 1]}")
            index += 2
        else:
            components.append(parts[index])
            index += 1
    return "bert/" + "/".join(components)


def classifier_key(tf_name: str, task_id: int) -> str:
    """``output_weights``/``output_bias`` -> ``classifier.{task_id}.weight``/``.bias``.

    Google's run_classifier stores ``output_weights`` as [num_labels, H] (it multiplies
    with transpose_b=True), which is already torch's [out, in]: no transpose.
    """
    return f"classifier.{task_id}.{CLASSIFIER_VARIABLES[tf_name]}"


# --------------------------------------------------------------------------------------
# Reading the TF checkpoint
# --------------------------------------------------------------------------------------


def resolve_tf_checkpoint(path: str) -> str:
    """The checkpoint prefix (``.../bert_model.ckpt``) for a prefix, a file or a folder.

    Checked on the file system before TensorFlow is imported, so a wrong path fails
    fast. A folder must hold exactly one ``*.index`` file; ``X.index`` or
    ``X.data-00000-of-00001`` are accepted for the prefix ``X``.
    """
    if os.path.isdir(path):
        indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
        if len(indexes) != 1:
            found = ", ".join(os.path.basename(p) for p in indexes) or "none"
            raise ConversionError(f"{path}: a checkpoint folder must hold exactly one *.index file "
                                  f"(found: {found}); pass the checkpoint prefix instead")
        return indexes[0][: -len(".index")]
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
    if not os.path.isfile(prefix + ".index"):
        raise ConversionError(f"{path}: TensorFlow checkpoint not found (no {prefix}.index)")
    return prefix


def import_tensorflow():
    """Import TensorFlow on demand, quietly; a one-line install hint if it is missing."""
    # TF's C++ start-up chatter would bury our own messages; the user can still override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ConversionError(
            f"TensorFlow is needed to read TF checkpoints and is not installed ({err}); "
            f"run: pip install tensorflow-cpu") from None
    return tf


@dataclass
class TFCheckpoint:
    """The two TF reading functions the converter uses, bound to one checkpoint."""

    prefix: str
    variables: list[tuple[str, list[int]]]
    load: Callable[[str], np.ndarray]


def open_tf_checkpoint(path: str) -> TFCheckpoint:
    prefix = resolve_tf_checkpoint(path)
    tf = import_tensorflow()
    try:
        variables = [(name, list(shape)) for name, shape in tf.train.list_variables(prefix)]
    except Exception as err:  # TF raises DataLossError, NotFoundError, ValueError ...
        raise ConversionError(f"{prefix}: unreadable TensorFlow checkpoint: {_first_line(err)}") from None

    def load(name: str) -> np.ndarray:
        try:
            return tf.train.load_variable(prefix, name)
        except Exception as err:
            raise ConversionError(f"{prefix}: cannot read variable '{name}': {_first_line(err)}") from None

    return TFCheckpoint(prefix, variables, load)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    state_dict: dict[str, torch.Tensor]
    skipped: Counter

    def summary(self, source: str, destination: str) -> str:
        line = f"converted {len(self.state_dict)} tensors from {source} to {destination}"
        if self.skipped:
            total = sum(self.skipped.values())
            parts = ", ".join(f"{count} {reason}" for reason, count in self.skipped.items())
            line += f"; skipped {total} variables: {parts}"
        return line


def bert_only_config(config: BertConfig) -> BertConfig:
    """The config without adapters: the model whose weights a Google checkpoint holds."""
    adapters = [flag for flag in ARCHITECTURE_FLAGS if getattr(config, flag)]
    if adapters:
        logger.info("config sets %s: adapters are not in TF checkpoints; converting the BERT "
                    "weights only (training initialises the adapters)", ", ".join(adapters))
    return config.without_adapters()


def convert_checkpoint(checkpoint: TFCheckpoint, config: BertConfig,
                       classifier_task_id: int | None = None) -> ConversionResult:
    """Map, check and copy every TF variable into a state dict of float32 tensors.

    The expected keys and shapes come from ``BertModel(config)`` (without adapters).
    With ``classifier_task_id`` set, the classifier is mapped too and BERT keys get the
    ``bert.`` prefix of BertForMultiTask.
    """
    expected = {key: tuple(t.shape) for key, t in BertModel(bert_only_config(config)).state_dict().items()}
    map_classifier = classifier_task_id is not None
    prefix = "bert." if map_classifier else ""
    converted: dict[str, torch.Tensor] = {}
    skipped: Counter = Counter()
    classifier: dict[str, np.ndarray] = {}
    for tf_name, tf_shape in checkpoint.variables:
        reason = skip_reason(tf_name, map_classifier)
        if reason:
            skipped[reason] += 1
            continue
        if tf_name in CLASSIFIER_VARIABLES:
            classifier[tf_name] = _as_float32(checkpoint.load(tf_name), tf_name)
            continue
        mapped = tf_name_to_key(tf_name)
        if mapped is None or mapped.key not in expected:
            raise ConversionError(f"TF variable '{tf_name}' maps to no BertModel weight"
                                  + (f" (no key '{mapped.key}')" if mapped else "")
                                  + "; is this a BERT checkpoint matching the config?")
        array = _as_float32(checkpoint.load(tf_name), tf_name)
        if mapped.transpose:
            array = array.T  # [in, out] -> [out, in]
        if tuple(array.shape) != expected[mapped.key]:
            raise ConversionError(f"TF variable '{tf_name}' has shape {tuple(tf_shape)}, "
                                  f"'{mapped.key}' of the model built from the config needs "
                                  f"{_tf_shape(expected[mapped.key], mapped.transpose)}"
                                  + (" (TF kernels are stored [in, out])" if mapped.transpose else ""))
        converted[prefix + mapped.key] = torch.from_numpy(np.ascontiguousarray(array))
    for key in expected:
        if prefix + key not in converted:
            raise ConversionError(f"TF variable '{key_to_tf_name(key)}' (for '{key}') is missing "
                                  f"from the checkpoint")
    if map_classifier:
        converted.update(_classifier_tensors(classifier, classifier_task_id, config.hidden_size))
    # The model's own key order, then the classifier: a familiar layout for readers.
    ordered = {prefix + key: converted.pop(prefix + key) for key in expected}
    ordered.update(converted)
    return ConversionResult(ordered, skipped)


def _tf_shape(torch_shape: tuple[int, ...], transpose: bool) -> tuple[int, ...]:
    """A torch shape as the TF variable would store it, so both sides of the message compare."""
    return tuple(reversed(torch_shape)) if transpose else torch_shape


def _as_float32(value, tf_name: str) -> np.ndarray:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"):
        raise ConversionError(f"TF variable '{tf_name}' has dtype {array.dtype}, expected floats")
    return array.astype(np.float32)  # also turns bfloat16/float16 checkpoints into float32


def _classifier_tensors(found: dict[str, np.ndarray], task_id: int, hidden_size: int) -> dict[str, torch.Tensor]:
    """Check and map output_weights [num_labels, H] and output_bias [num_labels]."""
    for name in CLASSIFIER_VARIABLES:
        if name not in found:
            raise ConversionError(f"TF variable '{name}' is missing from the checkpoint "
                                  f"(--map_classifier needs a fine-tuned classifier)")
    weights, bias = found["output_weights"], found["output_bias"]
    if weights.ndim != 2 or weights.shape[1] != hidden_size:
        raise ConversionError(f"TF variable 'output_weights' has shape {tuple(weights.shape)}, "
                              f"expected [num_labels, {hidden_size}]")
    if tuple(bias.shape) != (weights.shape[0],):
        raise ConversionError(f"TF variable 'output_bias' has shape {tuple(bias.shape)}, expected "
                              f"({weights.shape[0]},) to match 'output_weights'")
    return {classifier_key(name, task_id): torch.from_numpy(np.ascontiguousarray(found[name]))
            for name in CLASSIFIER_VARIABLES}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def output_format(path: str, requested: str | None) -> str:
    """The --format given, else from the extension: .safetensors -> safetensors, else torch."""
    if requested:
        return requested
    return "safetensors" if path.endswith(".safetensors") else "torch"


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str, fmt: str) -> None:
    """Write atomically (``checkpointing.atomic_path``: a temporary file in the same
    folder, flushed to disk, then renamed), so a crash never leaves a partial file; a
    failed write (a full disk) is one ``WriteError`` line."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConversionError(f"{path}: output folder {folder} does not exist")
    if os.path.isdir(path):
        raise ConversionError(f"{path}: is a folder; --pytorch_dump_path must name a file")
    if fmt == "safetensors":
        from safetensors.torch import save_file
        with checkpointing.atomic_path(path, expected_bytes=checkpointing.serialized_size(state_dict)) as temporary:
            save_file(state_dict, str(temporary))  # safetensors writes it: no second copy in memory
    else:
        checkpointing.atomic_torch_save(state_dict, path)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tf_checkpoint_path", required=True,
                        help="TF checkpoint prefix (e.g. bert_model.ckpt), or its folder")
    parser.add_argument("--bert_config_file", required=True,
                        help="bert_config.json of the checkpoint")
    parser.add_argument("--pytorch_dump_path", required=True, help="output file")
    parser.add_argument("--format", choices=("torch", "safetensors"), default=None,
                        help="output format (default: safetensors for a .safetensors path, else torch)")
    parser.add_argument("--map_classifier", "--classifier_task_id", dest="classifier_task_id",
                        nargs="?", const=0, type=int, default=None, metavar="TASK_ID",
                        help="keep a fine-tuned classifier (output_weights/output_bias) as "
                             "classifier.TASK_ID.* (TASK_ID defaults to 0) and prefix BERT keys "
                             "with 'bert.', giving a BertForMultiTask state dict")
    cli.add_debug_flag(parser)
    return parser


def run(args: argparse.Namespace) -> ConversionResult:
    if args.classifier_task_id is not None and args.classifier_task_id < 0:
        raise ConversionError(f"--map_classifier: task id must be >= 0, got {args.classifier_task_id}")
    config = BertConfig.from_json_file(args.bert_config_file)
    checkpoint = open_tf_checkpoint(args.tf_checkpoint_path)
    result = convert_checkpoint(checkpoint, config, args.classifier_task_id)
    fmt = output_format(args.pytorch_dump_path, args.format)
    save_state_dict(result.state_dict, args.pytorch_dump_path, fmt)
    logger.info(result.summary(checkpoint.prefix, args.pytorch_dump_path))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as in cli.py: 0 done, 2 bad input (one ``error:`` line), 128 + N after signal N."""
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    return cli.run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
