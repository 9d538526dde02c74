"""benchmarks/bench.py: the script runs end to end, and its FLOP count is torch's.

``--smoke`` runs every part of the benchmark once at toy sizes (batch 2 x 16, one
repeat, 128 x 128 matmuls): this proves the script and its report work, not any speed
(the figures mean nothing). ``make bench`` measures.

The FLOP count behind every MFU figure, ``training_flops(config, lengths)``, must equal
what torch.utils.flop_counter.FlopCounterMode counts for one training step as the bench
runs it (``make_step``: forward, backward, BERTAdam), padding included, at MiniLM and
BERT-base shapes. With dropout (the bench's setting) the attention runs as explicit
matrix products, which the counter sees. (Without dropout the CPU runs SDPA's fused
kernel, which FlopCounterMode does not count: it would report the attention as 0.)
benchmarks/gpu_check.py's MFU figures use the same function.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench  # noqa: E402

import glue  # noqa: E402
import modeling  # noqa: E402
from optimization import BERTAdam  # noqa: E402


@pytest.mark.slow
def test_bench_smoke_run(repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "bench.py"), "--smoke", "--threads", "1"],
                            capture_output=True, text=True, cwd="/", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = result.stdout
    assert "command: `python benchmarks/bench.py --smoke --threads 1`" in report
    assert "training step" in report and "| minilm | fp32 |" in report
    # The memory profile ran (--smoke profiles the first mode only): a figure in MiB, not n/a.
    first_row = next(line for line in report.splitlines() if line.startswith("| minilm | fp32 |"))
    ours_mib, hf_mib = first_row.strip(" |").split(" | ")[-2:]
    assert ours_mib.replace(",", "").isdigit() and hf_mib.replace(",", "").isdigit(), first_row


def padded_batch(vocab_size: int, lengths, seq: int):
    generator = torch.Generator().manual_seed(0)
    features = [glue.InputFeatures(torch.randint(1000, vocab_size, (n,), generator=generator).tolist(),
                                   [0] * (n // 2) + [1] * (n - n // 2), row % 2) for row, n in enumerate(lengths)]
    return glue.collate_features(features, pad_to=seq)


@pytest.mark.parametrize("config_file, layers", [("minilm_bert_config.json", 6), ("bert_base_config.json", 2)])
def test_flop_count_equals_flop_counter_mode(repo_root, config_file, layers):
    """BERT-base widths with 2 of its 12 layers (the layer count is MiniLM's to vary)."""
    config = modeling.BertConfig.from_json_file(repo_root / "configs" / config_file).replace(num_hidden_layers=layers)
    assert config.hidden_dropout_prob > 0 and config.attention_probs_dropout_prob > 0
    torch.manual_seed(0)
    model = modeling.BertForSequenceClassification(config, 2).train()
    batch_size, seq = 3, 24
    batch = padded_batch(config.vocab_size, [24, 9, 17], seq)  # padding is computed, so counted
    step = bench.make_step(model, False, batch, "fp32", BERTAdam(model.parameters(), lr=1e-5))
    with FlopCounterMode(display=False) as counter:
        step()
    counted = counter.get_total_flops()
    assert counted > 0
    assert bench.training_flops(config, [seq] * batch_size) == counted
