"""WordPiece tokenization, as in Google's BERT release of 2018.

``FullTokenizer`` runs ``BasicTokenizer`` (clean-up, optional lower-casing with accent
stripping, punctuation splitting) and then ``WordpieceTokenizer`` (greedy longest-match
subwords) on every basic token. The behaviour is the 2018 one that the BERT and PALs
code used: Chinese characters are *not* split into single-character tokens unless
``tokenize_chinese_chars=True`` is asked for (Google added that split later).

Character classes follow Google's definitions exactly, using Python's ``unicodedata``:

* whitespace: space, tab, newline, carriage return, or Unicode category ``Zs``;
* control: any category starting with ``C``, except tab, newline and carriage return;
* punctuation: the ASCII ranges 33-47, 58-64, 91-96 and 123-126 (so ``^ $ ` ~`` count
  even though Unicode calls them symbols), or any category starting with ``P``.
"""
import collections
import functools
import hashlib
import io
import unicodedata
from pathlib import Path

from errors import ConfigError, VocabError

# Tokens the models need: every sequence is framed by [CLS] ... [SEP], and WordPiece
# falls back to [UNK].
REQUIRED_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[UNK]")


class UnknownTokenError(KeyError):
    """A token (or id) is not in the vocabulary.

    A ``KeyError`` so that callers catching the plain dictionary lookup's error keep
    working; ``str()`` gives the readable message instead of a quoted repr.
    """

    def __str__(self):
        return str(self.args[0])


# ---------------------------------------------------------------------------------------
# Text conversion
# ---------------------------------------------------------------------------------------


def convert_to_unicode(text):
    """Return ``text`` as ``str``.

    Args:
        text: a ``str`` (returned unchanged) or ``bytes`` (decoded as UTF-8; undecodable
            bytes are dropped, as in the original).

    Returns:
        The text as ``str``.

    Raises:
        ValueError: for any other type (as in the original).
    """
    if isinstance(text, str):
        return text
    if isinstance(text, bytes):
        return text.decode("utf-8", "ignore")
    raise ValueError(f"Unsupported string type: {type(text).__name__}")


def printable_text(text):
    """Return ``text`` in a form suitable for printing or logging.

    On Python 3 this is the same as ``convert_to_unicode``.

    Args:
        text: a ``str`` or ``bytes``.

    Returns:
        The text as ``str``.
    """
    return convert_to_unicode(text)


# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------


def _read_vocab_text(vocab_file):
    """Read a vocabulary file and decode it as strict UTF-8.

    Args:
        vocab_file: path of the file.

    Returns:
        The decoded text.

    Raises:
        VocabError: if the file cannot be read, is empty, or is not UTF-8 (the message
            names the file and the line of the first bad byte).
    """
    try:
        data = Path(vocab_file).read_bytes()
    except FileNotFoundError:
        raise VocabError(f"vocabulary file not found: {vocab_file}") from None
    except OSError as err:
        raise VocabError(f"cannot read vocabulary file {vocab_file}: {err.strerror}") from None
    if not data:
        raise VocabError(f"vocabulary file is empty: {vocab_file}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # Everything before the first bad byte is valid UTF-8, so it can be decoded to
        # count the lines with the same universal-newline rule used for reading.
        prefix = data[: err.start].decode("utf-8")
        line = prefix.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
        raise VocabError(
            f"vocabulary file is not valid UTF-8: {vocab_file}, line {line} "
            f"(byte {err.start}: {err.reason})"
        ) from None


def load_vocab(vocab_file):
    """Load a WordPiece vocabulary: one token per line, id = line number (from 0).

    Each line is stripped of surrounding whitespace, as in the original. A token that
    appears twice keeps its later id, and a blank line becomes the empty token, both
    exactly as the original's line-by-line loop did.

    Args:
        vocab_file: path of a UTF-8 text file.

    Returns:
        An ``OrderedDict`` mapping token to id.

    Raises:
        VocabError: if the file is missing, unreadable, empty or not UTF-8.
    """
    text = _read_vocab_text(vocab_file)
    vocab = collections.OrderedDict()
    # newline=None splits on \n, \r\n and \r, like the original's text-mode readline().
    for index, line in enumerate(io.StringIO(text, newline=None)):
        vocab[line.strip()] = index
    return vocab


def _lookup(mapping, items, kind):
    """Map every item through ``mapping`` with a plain dictionary lookup.

    Args:
        mapping: the dictionary (token -> id or id -> token).
        items: the keys to look up.
        kind: "token" or "id", for the error message.

    Returns:
        The list of looked-up values.

    Raises:
        UnknownTokenError: (a KeyError) naming the first missing key.
    """
    try:
        return [mapping[item] for item in items]
    except KeyError as err:
        raise UnknownTokenError(f"{kind} {err.args[0]!r} is not in the vocabulary") from None


def convert_tokens_to_ids(vocab, tokens):
    """Convert tokens to ids with the vocabulary.

    Args:
        vocab: mapping token -> id (as returned by ``load_vocab``).
        tokens: iterable of tokens.

    Returns:
        List of ids.

    Raises:
        UnknownTokenError: (a KeyError) if a token is not in the vocabulary. WordPiece
            output never triggers this: unknown words become [UNK].
    """
    return _lookup(vocab, tokens, "token")


def convert_ids_to_tokens(inv_vocab, ids):
    """Convert ids to tokens with the inverse vocabulary.

    Args:
        inv_vocab: mapping id -> token.
        ids: iterable of ids.

    Returns:
        List of tokens.

    Raises:
        UnknownTokenError: (a KeyError) if an id is not in the vocabulary.
    """
    return _lookup(inv_vocab, ids, "id")


def whitespace_tokenize(text):
    """Strip ``text`` and split it on whitespace (Python's ``str.split()``).

    Args:
        text: the text.

    Returns:
        List of tokens; empty for empty or all-whitespace text.
    """
    text = text.strip()
    if not text:
        return []
    return text.split()


# ---------------------------------------------------------------------------------------
# Character classes (cached: tokenizing a corpus asks about the same characters often)
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _is_whitespace(char):
    """Return True if ``char`` is whitespace: space, \\t, \\n, \\r or category Zs."""
    # \t, \n and \r are technically control characters, but are treated as whitespace.
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


@functools.lru_cache(maxsize=65536)
def _is_control(char):
    """Return True if ``char`` is a control character (category C*, except \\t\\n\\r)."""
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char).startswith("C")


@functools.lru_cache(maxsize=65536)
def _is_punctuation(char):
    """Return True if ``char`` is punctuation (ASCII non-alphanumerics or category P*)."""
    cp = ord(char)
    # Every non-letter, non-digit ASCII character counts, so that symbols such as
    # "^", "$" and "`" (Unicode category S*) split words like punctuation does.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp):
    """Return True if code point ``cp`` is in a CJK Unified Ideographs block.

    These are the blocks Google's later tokenizer splits into single characters. Hangul,
    Hiragana and Katakana are not included: they are written with spaces.
    """
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# ---------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------


class BasicTokenizer:
    """Clean-up, optional lower-casing and accent stripping, punctuation splitting.

    Args:
        do_lower_case: lower-case the text and strip accents (for uncased models).
        tokenize_chinese_chars: put spaces around every CJK ideograph (off by default,
            as in the 2018 code the BERT and PALs results were produced with).
    """

    def __init__(self, do_lower_case=True, tokenize_chinese_chars=False):
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def tokenize(self, text):
        """Split ``text`` into basic tokens.

        Args:
            text: ``str`` or UTF-8 ``bytes``.

        Returns:
            List of tokens (words and single punctuation characters).
        """
        text = self._clean_text(convert_to_unicode(text))
        if self.tokenize_chinese_chars:
            text = self._tokenize_chinese_chars(text)
        split_tokens = []
        for token in whitespace_tokenize(text):
            if self.do_lower_case:
                token = self._run_strip_accents(token.lower())
            split_tokens.extend(self._run_split_on_punc(token))
        # Lower-casing and accent stripping can empty a token (e.g. a lone combining
        # mark), so join and split again rather than keep empty strings.
        return whitespace_tokenize(" ".join(split_tokens))

    @staticmethod
    def _run_strip_accents(text):
        """Decompose ``text`` (NFD) and drop the non-spacing marks (category Mn)."""
        text = unicodedata.normalize("NFD", text)
        return "".join(char for char in text if unicodedata.category(char) != "Mn")

    @staticmethod
    def _run_split_on_punc(text):
        """Make every punctuation character its own token; keep other runs together.

        Args:
            text: a whitespace-free token.

        Returns:
            List of pieces, in order.
        """
        pieces = []
        piece_start = 0
        for index, char in enumerate(text):
            if _is_punctuation(char):
                if piece_start < index:
                    pieces.append(text[piece_start:index])
                pieces.append(char)
                piece_start = index + 1
        if piece_start < len(text):
            pieces.append(text[piece_start:])
        return pieces

    @staticmethod
    def _tokenize_chinese_chars(text):
        """Surround every CJK ideograph with spaces."""
        return "".join(f" {char} " if _is_chinese_char(ord(char)) else char for char in text)

    @staticmethod
    def _clean_text(text):
        """Drop NUL, U+FFFD and control characters; turn each whitespace into one space."""
        output = []
        for char in text:
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            output.append(" " if _is_whitespace(char) else char)
        return "".join(output)


class WordpieceTokenizer:
    """Greedy longest-match-first subword tokenizer.

    Args:
        vocab: mapping (or set-like) of known tokens; non-initial pieces carry "##".
        unk_token: token emitted for a word that cannot be split into known pieces.
        max_input_chars_per_word: longer words become ``unk_token`` without search.
    """

    def __init__(self, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text):
        """Split whitespace-separated words into WordPiece tokens.

        For example ``"unaffable"`` becomes ``["un", "##aff", "##able"]``.

        Args:
            text: text already passed through ``BasicTokenizer``.

        Returns:
            List of WordPiece tokens.
        """
        output_tokens = []
        for token in whitespace_tokenize(convert_to_unicode(text)):
            output_tokens.extend(self._tokenize_word(token))
        return output_tokens

    def _tokenize_word(self, word):
        """Split one word into pieces, or return ``[unk_token]`` for the whole word.

        Args:
            word: a single whitespace-free word.

        Returns:
            The pieces, or ``[unk_token]`` if the word is too long or if at some
            position no vocabulary piece matches (the whole word is then unknown, not
            just the unmatched part).
        """
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < len(word):
            piece = self._longest_piece_at(word, start)
            if piece is None:
                return [self.unk_token]
            pieces.append(piece)
            start += len(piece) - (2 if start > 0 else 0)
        return pieces

    def _longest_piece_at(self, word, start):
        """Return the longest vocabulary piece of ``word`` starting at ``start``.

        Args:
            word: the word.
            start: character offset; pieces after the first carry the "##" prefix.

        Returns:
            The piece as it appears in the vocabulary (with "##" if ``start > 0``), or
            None if no prefix of ``word[start:]`` is in the vocabulary.
        """
        prefix = "##" if start > 0 else ""
        for end in range(len(word), start, -1):
            candidate = prefix + word[start:end]
            if candidate in self.vocab:
                return candidate
        return None


class FullTokenizer:
    """End-to-end tokenization: ``BasicTokenizer`` then ``WordpieceTokenizer``.

    Args:
        vocab_file: path of the WordPiece vocabulary (one token per line).
        do_lower_case: lower-case and strip accents (True for uncased models).
        tokenize_chinese_chars: split CJK ideographs into single characters (off by
            default, as in 2018).

    Attributes:
        vocab: ``OrderedDict`` token -> id.
        inv_vocab: dict id -> token.

    Raises:
        VocabError: if the vocabulary cannot be loaded or lacks [CLS], [SEP] or [UNK].
    """

    def __init__(self, vocab_file, do_lower_case=True, tokenize_chinese_chars=False):
        self.vocab = load_vocab(vocab_file)
        _check_special_tokens(self.vocab, vocab_file)
        self.inv_vocab = {index: token for token, index in self.vocab.items()}
        self.basic_tokenizer = BasicTokenizer(
            do_lower_case=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars
        )
        self.wordpiece_tokenizer = WordpieceTokenizer(vocab=self.vocab)

    def tokenize(self, text):
        """Tokenize ``text`` into WordPiece tokens.

        Args:
            text: ``str`` or UTF-8 ``bytes``.

        Returns:
            List of WordPiece tokens, every one of them in the vocabulary.
        """
        split_tokens = []
        for token in self.basic_tokenizer.tokenize(text):
            split_tokens.extend(self.wordpiece_tokenizer.tokenize(token))
        return split_tokens

    def convert_tokens_to_ids(self, tokens):
        """Convert tokens to ids (plain lookup; see the module-level function)."""
        return convert_tokens_to_ids(self.vocab, tokens)

    def convert_ids_to_tokens(self, ids):
        """Convert ids to tokens (plain lookup; see the module-level function)."""
        return convert_ids_to_tokens(self.inv_vocab, ids)


def _check_special_tokens(vocab, vocab_file):
    """Raise VocabError unless ``vocab`` holds every token in REQUIRED_SPECIAL_TOKENS.

    Args:
        vocab: the loaded vocabulary.
        vocab_file: its path, for the message.
    """
    for token in REQUIRED_SPECIAL_TOKENS:
        if token not in vocab:
            raise VocabError(f"vocabulary file {vocab_file} has no {token} token")


# The share of words holding a capital letter: bert-base-uncased has 2 in about 28,000
# (the symbol ℝ); a cased vocabulary has thousands (names, sentence starts).
UNCASED_AT_MOST = 0.001
CASED_AT_LEAST = 0.02
CASING_MIN_WORDS = 100


def vocabulary_casing(vocab):
    """Whether a vocabulary was built from lower-cased text.

    Args:
        vocab: tokens (a loaded vocabulary or any iterable of tokens).

    Returns:
        ``"uncased"`` when (almost) no word has a capital letter, ``"cased"`` when many
        do, ``None`` when it cannot tell (fewer than 100 words with letters, or in
        between). Bracketed special tokens ([CLS], [unused0]) do not count; ``##``
        continuation pieces count as words.
    """
    with_capital = with_letters = 0
    for token in vocab:
        if token.startswith("[") and token.endswith("]"):
            continue
        word = token[2:] if token.startswith("##") else token
        if any(char.isupper() for char in word):
            with_capital += 1
            with_letters += 1
        elif any(char.islower() for char in word):
            with_letters += 1
    if with_letters < CASING_MIN_WORDS:
        return None
    share = with_capital / with_letters
    if share <= UNCASED_AT_MOST:
        return "uncased"
    if share >= CASED_AT_LEAST:
        return "cased"
    return None


def vocabulary_warnings(vocab, vocab_size, do_lower_case):
    """Mismatches between a vocabulary, the model and lower-casing that would otherwise
    pass silently (each a phrase to follow the vocabulary file's name).

    Args:
        vocab: the loaded vocabulary.
        vocab_size: the model's ``vocab_size``.
        do_lower_case: whether the text is lower-cased.

    Returns:
        A list of phrases, empty when everything agrees.
    """
    found = []
    if len(vocab) != vocab_size:
        found.append(f"has {len(vocab)} entries but the model's vocab_size is {vocab_size}: is it the "
                     f"vocabulary of this model?")
    casing = vocabulary_casing(vocab)
    if casing == "uncased" and not do_lower_case:
        found.append("looks uncased (no capital letters) but lower-casing is off: capitalised words will "
                     "become [UNK] or odd pieces")
    elif casing == "cased" and do_lower_case:
        found.append("looks cased (it has capitalised words) but lower-casing is on: the model will never "
                     "see a capital letter")
    return found


def vocab_fingerprint(vocab):
    """sha256 of a vocabulary's (token, id) pairs: the same for the same vocabulary
    whatever its file's line endings or trailing newline. Adapter files record it, so
    that a prediction with another vocabulary is refused.

    Args:
        vocab: the loaded vocabulary (token -> id).

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    return digest.hexdigest()


def check_vocab_fits(vocab, vocab_size, vocab_file="the vocabulary", config_source="the model's config"):
    """Raise ConfigError unless every token id indexes the model's embedding table
    (else an IndexError in the middle of a run).

    Args:
        vocab: the loaded vocabulary (token -> id).
        vocab_size: the model's ``vocab_size``.
        vocab_file, config_source: where each comes from, for the message.
    """
    largest = max(vocab.values())
    if largest >= vocab_size:
        raise ConfigError(f"{vocab_file} has token ids up to {largest}, but vocab_size in {config_source} is "
                          f"{vocab_size}: the vocabulary does not belong to this model")
