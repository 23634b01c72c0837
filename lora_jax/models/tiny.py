"""The in-memory tokenizer of the tiny random-init models (tests): no files, ~100 words.

Encoders use it as is ([CLS] ... [SEP]); decoders without the wrapping (`wrap=False`).
"""

from __future__ import annotations

# A small word list for `tiny_tokenizer` (ids 5..): enough for test sentences.
_TINY_WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "these",
    "those",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "me",
    "my",
    "your",
    "his",
    "her",
    "our",
    "their",
    "of",
    "to",
    "in",
    "on",
    "at",
    "for",
    "with",
    "by",
    "from",
    "as",
    "up",
    "down",
    "out",
    "over",
    "under",
    "good",
    "bad",
    "great",
    "terrible",
    "fine",
    "best",
    "worst",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "acting",
    "music",
    "scene",
    "love",
    "hate",
    "like",
    "dull",
    "fun",
    "funny",
    "boring",
    "slow",
    "fast",
    "long",
    "short",
    "very",
    "too",
    "so",
    "more",
    "most",
    "less",
    "really",
    "quite",
    "just",
    ".",
    ",",
    "!",
    "?",
    "'",
    "-",
    "hello",
    "world",
]


def tiny_tokenizer(max_length: int | None = None, wrap: bool = True):
    """An in-memory WordLevel tokenizer over ~100 tokens for the tiny models (no files needed).

    Lower-cases, splits on whitespace and punctuation as BERT, wraps with [CLS] ... [SEP]
    (unless `wrap=False`: a decoder's prompt is not wrapped);
    ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then `_TINY_WORDS`.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(_TINY_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    if not wrap:
        tok.post_processor = None
    if max_length:
        tok.enable_truncation(max_length)
    return tok
