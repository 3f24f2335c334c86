"""Tokenizers and text encoders: a local Bio_ClinicalBERT, or our own WordPiece + small BERT.

Nothing here downloads: Hugging Face loads use ``local_files_only=True``. A trained model's
tokenizer travels inside its checkpoint as the fast tokenizer's JSON, so evaluating a
checkpoint never needs the original BERT files.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from fundbench_flair.text import TOKENIZER_ENV, tokenize  # noqa: F401 - shared with flair
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.models.checkpoints import resolve_hf_folder
from fundbench_keepfit_v2.config import Config

#: Environment variable naming a local Bio_ClinicalBERT folder (shared with ``flair``).
BERT_PATH_ENV = TOKENIZER_ENV
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def resolve_pretrained(name_or_path: str) -> str:
    """A local folder for ``text.pretrained``: the path itself, $FUNDBENCH_BIO_CLINICALBERT,
    or the hub id resolved from the local Hugging Face cache only (else the name unchanged,
    which then fails with :func:`_missing`)."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    env = os.environ.get(BERT_PATH_ENV)
    if env and Path(env).expanduser().is_dir():
        return str(Path(env).expanduser())
    cached = resolve_hf_folder(name_or_path)
    return str(cached) if cached else name_or_path


def _missing(name: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"text.pretrained={name!r}: not found locally and fundbench does not download it "
        f"({type(exc).__name__}); provide a folder with config.json, vocab.txt and the weights "
        f"via --set text.pretrained=/path/to/Bio_ClinicalBERT, or {BERT_PATH_ENV}=/path, or put "
        "it in the Hugging Face cache (HF_HOME); or use --preset tiny"
    )


def load_pretrained(
    config: Config, weights: bool = True, notes: list[str] | None = None
) -> tuple[PreTrainedTokenizerFast, BertModel | None]:
    """Bio_ClinicalBERT (or any local BERT) tokenizer and weights, offline only; BERT with
    the attention of ``perf.sdpa`` (:func:`with_attention`, whose note goes to ``notes``)."""
    from transformers import AutoTokenizer

    name = config.text.pretrained
    where = resolve_pretrained(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise _missing(name, exc) from None
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ConfigError(
            f"text.pretrained={name!r}: needs a fast tokenizer (got {type(tokenizer).__name__})"
        )
    tokenizer.model_max_length = config.text.max_length
    if not weights:
        return tokenizer, None
    try:
        bert, note = with_attention(
            lambda **kw: BertModel.from_pretrained(
                where, local_files_only=True, add_pooling_layer=True, **kw
            ),
            config.perf.sdpa,
        )
    except (OSError, ValueError) as exc:
        raise _missing(name, exc) from None
    if note and notes is not None:
        notes.append(note)
    return tokenizer, bert


def train_wordpiece(
    sentences: list[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """A lowercasing BERT WordPiece tokenizer whose vocabulary is learnt from ``sentences``.

    Normalisation, pre-tokenisation, the WordPiece model, [CLS]/[SEP] post-processing and
    decoding are Hugging Face ``tokenizers`` components. The vocabulary is learnt by
    :func:`wordpiece_vocab` rather than ``WordPieceTrainer``, whose ties between equally
    frequent merges depend on Rust hash-map order and so change from process to process.
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(sentences, vocab_size, normalizer, pre)
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(
        models.WordPiece(ids, unk_token=SPECIAL_TOKENS["unk_token"], max_input_chars_per_word=100)
    )
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre
    backend.post_processor = processors.BertProcessing(
        (SPECIAL_TOKENS["sep_token"], ids[SPECIAL_TOKENS["sep_token"]]),
        (SPECIAL_TOKENS["cls_token"], ids[SPECIAL_TOKENS["cls_token"]]),
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return wrap_tokenizer(backend.to_str(), max_length)


def wordpiece_vocab(sentences: list[str], vocab_size: int, normalizer, pre) -> list[str]:
    """Special tokens, the alphabet (word-initial and ``##`` continuation characters), then
    the most frequent adjacent-piece merges (BPE-style counting, as the ``tokenizers``
    WordPiece trainer does) until ``vocab_size``. Ties go to the alphabetically first pair,
    so the result depends only on the sentences."""
    counts: Counter[str] = Counter()
    for sentence in sentences:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(sentence)):
            counts[word] += 1
    words = sorted(counts)
    freq = [counts[w] for w in words]
    pieces = [[w[0]] + ["##" + ch for ch in w[1:]] for w in words]
    vocab = list(SPECIAL_TOKENS.values())
    vocab += sorted({p for seq in pieces for p in seq} - set(vocab))
    known = set(vocab)
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)

    def account(i: int, sign: int) -> set:
        touched = set()
        for pair in zip(pieces[i], pieces[i][1:], strict=False):
            pair_count[pair] += sign * freq[i]
            touched.add(pair)
            if sign > 0:
                pair_words[pair].add(i)
        return touched

    for i in range(len(words)):
        account(i, +1)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale entry
        a, b = pair
        merged = a + b[2:] if b.startswith("##") else a + b
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        touched = set()
        for i in sorted(pair_words.pop(pair, ())):
            seq = pieces[i]
            if not any(x == a and y == b for x, y in zip(seq, seq[1:], strict=False)):
                continue
            touched |= account(i, -1)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            pieces[i] = out
            touched |= account(i, +1)
        pair_count.pop(pair, None)
        for p in sorted(touched):
            if p != pair and pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return vocab


def wrap_tokenizer(tokenizer_json: str, max_length: int) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer from a ``tokenizers`` JSON string."""
    try:
        backend = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # noqa: BLE001 - corrupt checkpoint field
        raise CheckpointError(f"stored tokenizer cannot be read ({exc})") from None
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, **SPECIAL_TOKENS
    )
    return tokenizer


def tokenizer_json(tokenizer: PreTrainedTokenizerFast) -> str:
    return tokenizer.backend_tokenizer.to_str()


def build_bert(bert_config: dict, attn_implementation: str | None = None) -> BertModel:
    """A randomly initialised BertModel (with pooler, as V1) from a stored config dict;
    ``attn_implementation`` (``sdpa``/``eager``): transformers' attention (None: its default)."""
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return BertModel(BertConfig(**bert_config, **extra), add_pooling_layer=True)


def with_attention(build: Callable[..., BertModel], sdpa: bool) -> tuple[BertModel, str | None]:
    """``build(attn_implementation="sdpa" or "eager")``; if the installed transformers refuses
    that attention for BERT, ``build()`` with its default and a one-line note (to show; the
    run goes on). Other errors propagate."""
    import transformers

    want = "sdpa" if sdpa else "eager"
    try:
        return build(attn_implementation=want), None
    except (ValueError, ImportError, TypeError) as exc:
        text = str(exc).strip()
        if not any(word in text.lower() for word in ("attn", "attention", "sdpa")):
            raise
        reason = text.splitlines()[0] if text else type(exc).__name__
    bert = build()
    used = getattr(bert.config, "_attn_implementation", None) or "eager"
    return bert, (
        f"perf.sdpa={str(sdpa).lower()}: transformers {transformers.__version__} cannot build "
        f"BERT with {want!r} attention ({reason[:200]}); using {used!r}"
    )


def set_attention(bert: BertModel, sdpa: bool) -> tuple[str, str | None]:
    """Switch ``bert`` to transformers' ``sdpa`` (``torch.nn.functional.
    scaled_dot_product_attention``) or ``eager`` attention in place.

    Returns (the implementation now in use, None) or, when the installed transformers cannot
    switch, (the implementation kept, a one-line explanation) -- the caller shows the line
    and trains on; nothing is raised.
    """
    import transformers

    want = "sdpa" if sdpa else "eager"
    current = getattr(bert.config, "_attn_implementation", None) or "eager"
    if current == want:
        return want, None
    setter = getattr(bert, "set_attn_implementation", None)
    if setter is None:
        return current, (
            f"perf.sdpa={str(sdpa).lower()}: transformers {transformers.__version__} cannot "
            f"switch BERT attention at run time; using {current!r}"
        )
    try:
        setter(want)
    except (ValueError, ImportError, NotImplementedError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return current, (
            f"perf.sdpa={str(sdpa).lower()}: transformers {transformers.__version__} cannot use "
            f"{want!r} attention for BERT ({reason}); using {current!r}"
        )
    return bert.config._attn_implementation, None


def bert_config_dict(bert: BertModel) -> dict:
    keep = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
    )
    full = bert.config.to_dict()
    return {k: full[k] for k in keep if k in full}
