"""Fast dropout (kernels.py): its masks are independent, and a model trained with it sees
the same loss distribution as with torch's dropout.

Masks come from 16-bit lanes of 64-bit random words, four lanes per word, so the ways
they could fail to be independent are specific: neighbouring elements (lanes of one word,
or the last lane of a word and the first of the next), the four lanes of one word, and
the masks of consecutive calls (a generator reseeded alike every call). For each, the
Pearson correlation of the keep indicators over n pairs is below 5 / sqrt(n) (five
standard errors of an independent pair; fixed seeds, so the test is deterministic).
Keep rates per lane alone cannot see four identical lanes.

Then the loss of a small PALs model in training mode on one batch, over 200 seeds, under
fast and under torch's dropout (the model built with Kernels.plain()): the means agree
by Welch's t-test and the variances by Levene's test, each at p > 0.01. The model's
weights are random at a size where dropout moves the loss by about 10% (with the
original init the logits are near 0 and the loss barely moves); at this setting the test
fails, for example, when the kept values are not scaled by 1 / (1 - p) (p = 5e-4) or when
p is doubled (1e-4) or halved (3e-5), measured by patching kernels.dropout_mask.

What this cannot see: dependence other than linear correlation between these pairs, and
a distribution difference too small for 200 draws (about 0.3 standard deviations of the
loss for the means).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kernels
from kernels import Kernels
from modeling import BertConfig, BertForMultiTask

N = 1 << 20  # mask elements per draw
P = 0.1


def keep_mask(n: int = N, p: float = P) -> np.ndarray:
    """Keep indicators of one fast-dropout call on n elements (float64, 0 or 1)."""
    out = kernels.dropout(torch.ones(n), p, fast=True)
    return (out != 0).double().numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def bound(pairs: int) -> float:
    return 5.0 / math.sqrt(pairs)


def test_keep_rate_and_scale():
    torch.manual_seed(0)
    mask = keep_mask()
    levels = round(P * 65536)
    assert abs(mask.mean() - (1 - levels / 65536)) < 5 * math.sqrt(P * (1 - P) / N)


def test_neighbouring_elements_are_uncorrelated():
    torch.manual_seed(1)
    mask = keep_mask()
    assert abs(correlation(mask[:-1], mask[1:])) < bound(N - 1)
    # also two apart (lanes 0-2, 1-3 of one word and across words)
    assert abs(correlation(mask[:-2], mask[2:])) < bound(N - 2)


@pytest.mark.parametrize("first, second", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
def test_the_lanes_of_one_random_word_are_uncorrelated(first, second):
    torch.manual_seed(2)
    lanes = keep_mask().reshape(-1, 4)  # row k: the four 16-bit lanes of 64-bit word k
    assert abs(correlation(lanes[:, first], lanes[:, second])) < bound(len(lanes))


def test_consecutive_calls_are_uncorrelated():
    torch.manual_seed(3)
    first, second = keep_mask(), keep_mask()
    assert abs(correlation(first, second)) < bound(N)
    # and a reseeded generator repeats exactly (the masks come from torch's generator)
    torch.manual_seed(3)
    assert np.array_equal(keep_mask(), first)


def test_attention_dropout_masks_are_uncorrelated_across_lanes():
    """The attention path draws its masks through dropout_mask on the probabilities."""
    torch.manual_seed(4)
    mask, _ = kernels.dropout_mask(torch.empty(16, 4, 128, 128), P)
    lanes = mask.double().reshape(-1, 4).numpy()
    for first in range(4):
        for second in range(first + 1, 4):
            assert abs(correlation(lanes[:, first], lanes[:, second])) < bound(len(lanes))


# ---------------------------------------------------------------------------------------
# A training loss: fast against torch's dropout, 200 seeds
# ---------------------------------------------------------------------------------------

SEEDS = 200
ALPHA = 0.01


def losses_over_seeds(model, batch, seeds=SEEDS):
    ids, types, mask, labels = batch
    values = []
    with torch.no_grad():
        for seed in range(seeds):
            torch.manual_seed(seed)
            loss, _ = model(ids, types, mask, 0, labels=labels)
            values.append(loss.item())
    return np.array(values)


def test_loss_distribution_under_fast_and_torch_dropout_agrees():
    stats = pytest.importorskip("scipy.stats")
    config = BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2, hidden_size_aug=24,
                        hidden_dropout_prob=P, attention_probs_dropout_prob=P, mult=True, pals=True, num_tasks=1)
    torch.manual_seed(2)
    model = BertForMultiTask(config, [3]).train()
    with torch.no_grad():  # weights of a useful size: the original init leaves the logits near 0
        for name, param in model.named_parameters():
            if name.endswith("weight"):
                param.normal_(0.0, 1.0)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (8, 16), generator=generator)
    batch = (ids, torch.zeros_like(ids), torch.ones_like(ids), torch.randint(0, 3, (8,), generator=generator))
    fast = losses_over_seeds(kernels.set_kernels(model, Kernels()), batch)
    plain = losses_over_seeds(kernels.set_kernels(model, Kernels.plain()), batch)
    # dropout matters here: the loss varies by about 10% with the seed
    assert fast.std() > 0.05 * fast.mean() and plain.std() > 0.05 * plain.mean()
    means = stats.ttest_ind(fast, plain, equal_var=False)
    variances = stats.levene(fast, plain)
    assert means.pvalue > ALPHA, (fast.mean(), plain.mean(), means)
    assert variances.pvalue > ALPHA, (fast.std(), plain.std(), variances)
