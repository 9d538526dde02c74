"""Tests for tokenization.py.

The main check is parity with the ``tokenizers`` library configured as Google's 2018
BERT tokenizer (BertNormalizer without CJK splitting, BertPreTokenizer, WordPiece with
100 characters per word), over several hundred deliberately awkward strings generated
deterministically below. Two documented behaviours of the 2018 Python code differ from
``tokenizers``; each has its own narrow test instead of a loophole in the parity check:

* unassigned code points (Unicode category Cn) count as control characters and are
  dropped (``_is_control`` treats every category starting with "C" as control);
* lower-casing uses Python's ``str.lower()``, which writes a word-final capital sigma
  as final sigma: "ΟΔΟΣ" -> "οδος", where ``tokenizers`` lower-cases character by
  character ("οδοσ").
"""
import random
import unicodedata

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

import tokenization
from tokenization import (
    BasicTokenizer,
    FullTokenizer,
    UnknownTokenError,
    VocabError,
    WordpieceTokenizer,
    convert_to_unicode,
    load_vocab,
    whitespace_tokenize,
)

# ---------------------------------------------------------------------------------------
# Hard strings
# ---------------------------------------------------------------------------------------

ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

# Building blocks for the generated strings. Capital sigma is deliberately absent: it
# is covered by test_final_sigma_follows_python_lower (see the module docstring).
FRAGMENTS = [
    # Plain English and WordPiece-splittable words.
    "Hello", "world", "unaffable", "UNAFFABLE", "tokenization", "don't", "U.S.A.",
    "e-mail", "state-of-the-art", "I'm", "can't", "1,234.56", "3.14159", "2019",
    # ASCII symbols that Google counts as punctuation, alone and inside words.
    "^_^", "$100", "`code`", "~tilde", "a+b=c", "#hashtag", "@user", "50%", "{json}",
    "<html>", "|pipe|", "back\\slash", "C++", "x^2", "foo_bar", "a&b", "q?r!s",
    # Literal special tokens in running text.
    "[SEP]", "[CLS]", "[UNK]", "[MASK]", "[PAD]", "[sep]",
    # Accents, precomposed and decomposed, and letters NFD does not decompose.
    "Café", "naïve", "résumé", "Ångström", "Crème brûlée", "façade", "Zoë", "São Paulo",
    "Ærøskøbing", "Łódź", "İstanbul", "ﬁnancial", "Ǆemal", "Straße", "ẞ", "Tiếng Việt",
    "cafe\u0301", "na\u0308ive", "A\u030a", "\u0301alone", "n\u0303", "e\u0301\u0301",
    "Z\u0335\u0327a\u0336l\u0338g\u0334o\u0337", "o\u0308\u0304", "\u0300\u0301\u0302",
    # Control characters and other category C characters.
    "\x01", "\x07", "\x1b[31mred\x1b[0m", "\x7f", "\x85", "\x0b", "\x0c", "\x1f",
    "\ue000private", "\U000f0000",
    # Zero-width characters and other format characters.
    "zero\u200bwidth", "\u200d", "\ufeffbom", "\u200c", "\u2060", "soft\u00adhyphen",
    "\u200e\u200f", "\u202ertl\u202c",
    # Unicode spaces and line separators.
    "non\u00a0breaking", "em\u2003space", "ideographic\u3000space", "\u2009", "\u202f",
    "\u1680", "line\u2028sep", "para\u2029sep", "\u205f",
    # NUL and the replacement character.
    "\x00", "nul\x00byte", "\ufffd", "bad\ufffdchar",
    # CJK, kana, Hangul.
    "中文字符", "日本語のテキスト", "カタカナ", "漢字かな混じり文", "𠀀", "㐀", "豈",
    "한국어 텍스트", "안녕하세요", "ｶﾀｶﾅ",
    # Emoji, modifiers, ZWJ sequences, flags, keycaps.
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "❤\ufe0f", "🇬🇧",
    "1\ufe0f\u20e3", "emoji😀inside", "☃", "snow☃man",
    # Punctuation of every kind.
    "!?", "...", "—", "–", "«quoted»", "“smart”", "‘single’", "¿Qué?", "¡Hola!", "、。",
    "・", "§", "¶", "†", "‰", "‽", "⁂", "【括弧】", "「引用」", "《书名》", "…", "٪",
    "؟", "।", "॥", "๏", "＂", "！", "（全角）", "‐", "‒", "⸺", "¦", "·",
    # Other scripts.
    "Καλημέρα κόσμε", "ελληνικά", "Привет, мир!", "ЁЖИК", "ёжик", "مرحبا بالعالم",
    "العَرَبِيَّة", "שָׁלוֹם", "नमस्ते दुनिया", "क्षत्रिय", "हिन्दी", "สวัสดีชาวโลก",
    "ภาษาไทย", "გამარჯობა", "Բարեւ", "வணக்கம்", "বাংলা", "ıİşŞğĞ", "ሰላም", "ᚠᛇᚻ",
    # Symbols, numbers, compatibility forms.
    "∑∫√∞≈", "①②③", "½", "x²", "ＡＢＣ１２３", "№", "℃", "Ω", "K", "Å",
    # Words over the 100-character limit, and right at it.
    "a" * 101, "b" * 100, "x" * 150, "supercalifragilistic" * 6, "é" * 100,
    "e\u0301" * 60, "İ" * 60, "ab-" * 40,
]

SEPARATORS = [" ", "", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u200b",
              "\u200d", "\ufeff", ",", "-", "\x00", "\ufffd"]

# Hand-written strings kept whole (the generator would rarely produce them).
FIXED_STRINGS = [
    "", " ", "\t\n\r", "\u00a0\u2003\u3000", "\x00\ufffd\x01", "\u200b\u200d\ufeff",
    "The quick brown fox jumps over the lazy dog.",
    "[CLS] a sentence [SEP] another one [SEP]",
    "Mr. O'Neil's co-op costs $1,000,000 (approx.)!",
    "tab\tseparated\tvalues\nnew line\r\ncarriage",
    "Der Ärger über die Größe",
    ASCII_PUNCTUATION,
    " ".join(ASCII_PUNCTUATION),
    "word" + ASCII_PUNCTUATION + "word",
    "mixed: English, Ελληνικά, Русский, العربية, हिन्दी, ไทย, 한국어, 中文.",
]


def _vocab_pieces_strings(vocab_file, count, seed):
    """Build words from real vocabulary pieces, to exercise greedy longest-match.

    Args:
        vocab_file: the WordPiece vocabulary.
        count: how many strings.
        seed: random seed.

    Returns:
        List of strings, each a few words glued from one initial piece and "##" pieces.
    """
    rng = random.Random(seed)
    tokens = [line.rstrip("\n") for line in open(vocab_file, encoding="utf-8")]
    initial = [t for t in tokens if not t.startswith("##") and not t.startswith("[")]
    continuation = [t[2:] for t in tokens if t.startswith("##")]
    strings = []
    for _ in range(count):
        words = [
            rng.choice(initial) + "".join(rng.choices(continuation, k=rng.randint(0, 3)))
            for _ in range(rng.randint(1, 4))
        ]
        strings.append(" ".join(words))
    return strings


def generate_hard_strings(vocab_file, count=500, seed=20190207):
    """Return the deterministic list of awkward strings used by the parity tests.

    Args:
        vocab_file: the WordPiece vocabulary (for words glued from real pieces).
        count: number of random compositions of FRAGMENTS.
        seed: random seed, fixed so every run checks the same strings.

    Returns:
        FIXED_STRINGS, every fragment alone, ``count`` random compositions of fragments
        joined by assorted separators, and words glued from vocabulary pieces.
    """
    rng = random.Random(seed)
    strings = list(FIXED_STRINGS) + list(FRAGMENTS)
    for _ in range(count):
        parts = rng.choices(FRAGMENTS, k=rng.randint(2, 6))
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(SEPARATORS) + part
        strings.append(text)
    strings += _vocab_pieces_strings(vocab_file, count=200, seed=seed + 1)
    return strings


# ---------------------------------------------------------------------------------------
# Reference tokenizer
# ---------------------------------------------------------------------------------------


def make_reference(vocab_file, lowercase, handle_chinese_chars=False):
    """Configure ``tokenizers`` as Google's 2018 BERT tokenizer.

    Args:
        vocab_file: the WordPiece vocabulary.
        lowercase: uncased (lower-case and strip accents) or cased (neither).
        handle_chinese_chars: split CJK ideographs (Google's later behaviour).

    Returns:
        A callable text -> list of tokens.
    """
    vocab = models.WordPiece.read_file(str(vocab_file))
    tokenizer = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=handle_chinese_chars,
        strip_accents=None if lowercase else False,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return lambda text: tokenizer.encode(text, add_special_tokens=False).tokens


def assert_parity(ours, reference, strings):
    """Assert ``ours(s) == reference(s)`` for every string, listing all mismatches."""
    mismatches = [
        (text, ours(text), reference(text)) for text in strings if ours(text) != reference(text)
    ]
    report = "\n".join(f"{text!r}:\n  ours {a}\n  ref  {b}" for text, a, b in mismatches[:10])
    assert not mismatches, f"{len(mismatches)} of {len(strings)} strings differ:\n{report}"


@pytest.fixture(scope="module")
def hard_strings(vocab_file):
    strings = generate_hard_strings(vocab_file)
    assert len(strings) >= 600
    # Guard for the documented differences: these belong to their own tests only.
    assert not any("Σ" in s for s in strings)
    assert not any(unicodedata.category(c) == "Cn" for s in strings for c in s)
    return strings


@pytest.fixture(scope="module")
def uncased(vocab_file):
    return FullTokenizer(vocab_file, do_lower_case=True)


@pytest.fixture(scope="module")
def cased(vocab_file):
    return FullTokenizer(vocab_file, do_lower_case=False)


# ---------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------


def test_parity_uncased(uncased, vocab_file, hard_strings):
    assert_parity(uncased.tokenize, make_reference(vocab_file, lowercase=True), hard_strings)


def test_parity_cased(cased, vocab_file, hard_strings):
    assert_parity(cased.tokenize, make_reference(vocab_file, lowercase=False), hard_strings)


def test_hard_strings_exercise_the_edge_cases(uncased, cased, hard_strings):
    """The parity checks are only as good as their inputs: make sure they bite."""
    uncased_tokens = [t for s in hard_strings for t in uncased.tokenize(s)]
    cased_basic_tokens = [t for s in hard_strings for t in cased.basic_tokenizer.tokenize(s)]
    assert "[UNK]" in uncased_tokens  # long words and unknown characters
    assert any(t.startswith("##") for t in uncased_tokens)  # real WordPiece splits
    assert set(ASCII_PUNCTUATION) <= set(uncased_tokens)  # every ASCII symbol splits
    assert "café" not in uncased_tokens and "cafe" in uncased_tokens  # accent stripped
    assert any("é" in t for t in cased_basic_tokens)  # accents kept when cased
    # Literal special tokens in text are split like any bracketed word.
    assert uncased.tokenize("[SEP]") == ["[", "sep", "]"]


def test_parity_with_cjk_splitting(vocab_file, hard_strings):
    """tokenize_chinese_chars=True matches tokenizers' handle_chinese_chars=True."""
    cjk_strings = [s for s in hard_strings if any(tokenization._is_chinese_char(ord(c)) for c in s)]
    assert len(cjk_strings) >= 50
    for lowercase in (True, False):
        ours = FullTokenizer(vocab_file, do_lower_case=lowercase, tokenize_chinese_chars=True)
        reference = make_reference(vocab_file, lowercase, handle_chinese_chars=True)
        assert_parity(ours.tokenize, reference, cjk_strings)


def test_cjk_split_only_when_asked(vocab_file, uncased):
    splitting = FullTokenizer(vocab_file, do_lower_case=True, tokenize_chinese_chars=True)
    assert "中" in uncased.vocab and "文" in uncased.vocab and "##文" in uncased.vocab
    assert "字" not in uncased.vocab and "##字" not in uncased.vocab
    assert splitting.tokenize("中文") == ["中", "文"]
    assert splitting.tokenize("中字") == ["中", "[UNK]"]
    # 2018 behaviour: the ideographs stay one word and go through WordPiece as such,
    # so one unknown ideograph makes the whole run [UNK].
    assert uncased.tokenize("中文") == ["中", "##文"]
    assert uncased.tokenize("中字") == ["[UNK]"]
    # Kana and Hangul are never split per character.
    assert splitting.tokenize("カタカナ") == uncased.tokenize("カタカナ")


# ---------------------------------------------------------------------------------------
# Documented differences from tokenizers (2018 behaviours)
# ---------------------------------------------------------------------------------------

UNASSIGNED = ["\u0378", "\u0380", "\U000e0080", "\U0003ffff"]


def test_unassigned_code_points_are_dropped(uncased, cased, vocab_file):
    """Category Cn counts as control in the 2018 code (any category starting with "C").

    ``tokenizers`` keeps such characters (so a word holding one becomes [UNK]). The
    expectation is therefore: our output equals the reference's output on the text with
    the unassigned characters removed.
    """
    for char in UNASSIGNED:
        assert unicodedata.category(char) == "Cn"
    texts = [f"hello{c}world" for c in UNASSIGNED] + ["".join(UNASSIGNED) + " cafe"]
    for ours, lowercase in ((uncased, True), (cased, False)):
        reference = make_reference(vocab_file, lowercase)
        for text in texts:
            stripped = "".join(c for c in text if unicodedata.category(c) != "Cn")
            assert ours.tokenize(text) == reference(stripped)
    assert uncased.tokenize("hello\u0378world") == uncased.tokenize("helloworld")


GREEK_WITH_CAPITAL_SIGMA = ["ΟΔΟΣ", "ΣΙΣΥΦΟΣ", "Ο ΚΟΣΜΟΣ ΕΙΝΑΙ ΩΡΑΙΟΣ.", "ΧΑΟΣ, ΛΟΓΟΣ!"]


def test_final_sigma_follows_python_lower(uncased, cased, vocab_file):
    """Python's str.lower() writes a word-final capital sigma as final sigma (ς).

    ``tokenizers`` maps every Σ to σ. The expectation: our output equals the
    reference's output on the text lower-cased by Python first. (These strings hold no
    control characters, so lower-casing before or after clean-up is the same.)
    """
    reference = make_reference(vocab_file, lowercase=True)
    for text in GREEK_WITH_CAPITAL_SIGMA:
        assert uncased.tokenize(text) == reference(text.lower())
    assert uncased.tokenize("ΟΔΟΣ") != reference("ΟΔΟΣ")  # the difference is real
    # Cased tokenization does not lower-case, so the libraries agree there.
    cased_reference = make_reference(vocab_file, lowercase=False)
    assert_parity(cased.tokenize, cased_reference, GREEK_WITH_CAPITAL_SIGMA)


# ---------------------------------------------------------------------------------------
# WordPiece behaviour
# ---------------------------------------------------------------------------------------


def write_vocab(path, tokens):
    """Write ``tokens`` one per line and return the path."""
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return path


# Google's test vocabulary, plus pieces for the longest-match and length checks.
SMALL_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un",
               "runn", "##ing", ",", "a", "##a"]


def test_wordpiece_greedy_longest_match(tmp_path):
    tokenizer = FullTokenizer(write_vocab(tmp_path / "vocab.txt", SMALL_VOCAB))
    # "want" wins over the shorter "wa"; accents are stripped before matching.
    assert tokenizer.tokenize("UNwant\u00e9d,running") == [
        "un", "##want", "##ed", ",", "runn", "##ing"
    ]
    assert tokenizer.tokenize("wanted") == ["want", "##ed"]


def test_whole_word_becomes_unk(tmp_path, uncased):
    tokenizer = FullTokenizer(write_vocab(tmp_path / "vocab.txt", SMALL_VOCAB))
    # "un" + "##want" + "##ed" match but no piece covers the final "x", so the whole
    # word is unknown, not just its tail.
    assert tokenizer.tokenize("unwantedx running") == ["[UNK]", "runn", "##ing"]
    # The same with the real vocabulary: the snowman has no "##" piece.
    assert "##☃" not in uncased.vocab and "hello" in uncased.vocab
    assert uncased.tokenize("hello☃world hello") == ["[UNK]", "hello"]


def test_words_over_100_characters_are_unk(tmp_path, uncased, cased):
    tokenizer = FullTokenizer(write_vocab(tmp_path / "vocab.txt", SMALL_VOCAB))
    assert tokenizer.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]
    # The limit counts characters after clean-up and accent stripping: 60 decomposed
    # "é" are 120 characters when cased but 60 "e" when lower-cased.
    assert cased.tokenize("e\u0301" * 60) == ["[UNK]"]
    assert uncased.tokenize("e\u0301" * 60) != ["[UNK]"]
    wordpiece = WordpieceTokenizer(vocab={"x", "##x"}, max_input_chars_per_word=3)
    assert wordpiece.tokenize("xxx xxxx") == ["x", "##x", "##x", "[UNK]"]


# ---------------------------------------------------------------------------------------
# Basic tokenizer and helpers
# ---------------------------------------------------------------------------------------


def test_basic_tokenizer_lower_strips_accents():
    assert BasicTokenizer(do_lower_case=True).tokenize(" \tHeLLo!how  \n Are yoU?  ") == [
        "hello", "!", "how", "are", "you", "?"
    ]
    assert BasicTokenizer(do_lower_case=True).tokenize("H\u00e9llo") == ["hello"]


def test_basic_tokenizer_cased_keeps_accents():
    assert BasicTokenizer(do_lower_case=False).tokenize(" \tHeLLo!how  \n Are yoU?  ") == [
        "HeLLo", "!", "how", "Are", "yoU", "?"
    ]
    assert BasicTokenizer(do_lower_case=False).tokenize("H\u00e9llo") == ["H\u00e9llo"]


def test_clean_text_drops_controls_and_maps_whitespace():
    assert BasicTokenizer._clean_text("a\x00b\ufffdc\x01d\u200be\u3000f\tg") == "abcde f g"


def test_bytes_input_and_convert_to_unicode(uncased):
    assert convert_to_unicode(b"caf\xc3\xa9\xff") == "café"  # bad bytes are dropped
    assert uncased.tokenize("café".encode()) == uncased.tokenize("café")
    assert tokenization.printable_text("abc") == "abc"
    with pytest.raises(ValueError, match="Unsupported string type: int"):
        convert_to_unicode(3)


def test_whitespace_tokenize():
    assert whitespace_tokenize("  a b\t c\n") == ["a", "b", "c"]
    assert whitespace_tokenize(" \t\n") == []
    assert whitespace_tokenize("") == []


def test_token_id_round_trip(uncased):
    tokens = uncased.tokenize("The quick brown fox, unaffable!")
    ids = uncased.convert_tokens_to_ids(tokens)
    assert ids == [uncased.vocab[t] for t in tokens]
    assert uncased.convert_ids_to_tokens(ids) == tokens
    assert uncased.convert_tokens_to_ids(["[CLS]", "[SEP]", "[UNK]"]) == [101, 102, 100]


def test_unknown_token_raises_key_error_naming_it(uncased):
    with pytest.raises(KeyError) as info:
        uncased.convert_tokens_to_ids(["the", "notavocabtoken"])
    assert isinstance(info.value, UnknownTokenError)
    assert str(info.value) == "token 'notavocabtoken' is not in the vocabulary"
    with pytest.raises(KeyError, match="id 99999999"):
        uncased.convert_ids_to_tokens([99999999])


# ---------------------------------------------------------------------------------------
# Vocabulary loading
# ---------------------------------------------------------------------------------------


def test_load_vocab_ids_are_line_numbers(vocab_file, tmp_path):
    vocab = load_vocab(vocab_file)
    lines = vocab_file.read_text(encoding="utf-8").splitlines()
    assert len(vocab) == len(lines) == 30522
    assert all(vocab[token] == index for index, token in enumerate(lines))
    # Windows line endings and surrounding spaces are stripped; a repeated token keeps
    # its later id, as the original's line-by-line loop did.
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"[PAD]\r\n  a  \r\nb\r\na\r\n")
    assert load_vocab(path) == {"[PAD]": 0, "a": 3, "b": 2}


def test_missing_vocab_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(VocabError, match="not found") as info:
        FullTokenizer(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_vocab_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(VocabError, match="empty") as info:
        load_vocab(path)
    assert str(path) in str(info.value)


def test_non_utf8_vocab_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("[PAD]\n[UNK]\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(VocabError, match="not valid UTF-8") as info:
        load_vocab(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "\n" not in message


@pytest.mark.parametrize("missing", ["[CLS]", "[SEP]", "[UNK]"])
def test_vocab_without_special_token(tmp_path, missing):
    path = write_vocab(tmp_path / "vocab.txt", [t for t in SMALL_VOCAB if t != missing])
    with pytest.raises(VocabError) as info:
        FullTokenizer(path)
    assert missing in str(info.value) and str(path) in str(info.value)
