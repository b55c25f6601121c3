"""The sub-word families' pipelines, and loading their files: ours, Hugging Face's, and the published ones.

Four kinds, each a recipe in `KINDS`:

- "gpt"  (Radford et al. 2018): lower-cased, BERT-style split on whitespace and punctuation, then BPE whose
  word-final symbols carry a "</w>" suffix. Same pipeline as HF's `openai-gpt` tokenizer.json. The original
  code used ftfy + spaCy before BPE; HF (and we) replace that with BERT's basic tokeniser, so rare inputs
  (contractions, odd unicode) can split differently from the 2018 release.
- "gpt2" (Radford et al. 2019): byte-level BPE, lossless, no unknown token. Same pipeline as HF's `gpt2`.
- "roberta" (Liu et al. 2019 §4.4): GPT-2's byte-level BPE with BERT's roles under other names: `<s>` opens an
  input, `</s>` closes each text (two between a pair's texts), `<pad>` pads (id 1 in published vocabularies),
  `<mask>` hides a token and takes the space before it with it, as in the published tokenizer. Same pipeline as
  HF's `roberta-base`; loads its vocab.json + merges.txt or tokenizer.json.
- "bert" (Devlin et al. 2019): BERT's basic tokeniser (clean-up, optional lower-casing with accent stripping,
  one token per CJK character, split on whitespace and punctuation), then WordPiece with "##" continuation
  pieces and [UNK] for words it cannot spell (or longer than 100 characters). Same pipeline as HF's
  `bert-base-uncased` tokenizer.json, and loads a published vocab.txt too.
- "sentencepiece" (Kudo & Richardson 2018, as ALBERT, XLNet and DeBERTa-v2/v3 use it): a Unigram language
  model over pieces, each word marked by a leading "▁" (Metaspace: "▁the", "▁castle"), so that decoding restores
  the spaces. Ours normalises as HF's AlbertTokenizer does (`` and '' to ", then optionally NFKD + accent
  stripping and lower-casing, both saved settings), and is trained by `tokenizers`' UnigramTrainer with ALBERT's
  special tokens <pad> <unk> [CLS] [SEP] [MASK] (ids 0-4, as the published ALBERT vocabulary). A published
  folder's tokenizer.json keeps its own normaliser, special tokens and input layout: the layout is read from its
  post-processor's template (ALBERT, DeBERTa `[CLS] A [SEP] B [SEP]`; XLNet `A <sep> B <sep> <cls>`, the <cls>
  of segment 2), the special tokens' roles from HF's tokenizer_config.json / special_tokens_map.json. The
  `sentencepiece` package is not used: a folder with only spiece.model is refused, saying how to write
  tokenizer.json from it.

`load_backend` reads a folder: tokenizer.json (ours, with the tokenizer_config.json that `Tokenizer.save` writes
beside it, or HF's), else a published vocab.json + merges.txt (GPT, GPT-2), else a published BERT vocab.txt.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from ctxlm.errors import UserError
from ctxlm.textfiles import read_text

EOS, UNK = "<|endoftext|>", "<unk>"
TASK_TOKENS = {"start": "<|start|>", "delimiter": "<|delimiter|>", "extract": "<|extract|>"}
# In BERT's vocabulary order: [PAD] is id 0 in every published BERT vocab.txt, and in the ones we train.
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
# In the published vocabulary's order: <s> <pad> </s> <unk> first (ids 0-3); <mask> is its last id, ours the fifth.
ROBERTA_SPECIALS = {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"}
BERT_MAX_WORD_CHARS = 100  # a longer word becomes one [UNK], as in BERT's WordpieceTokenizer
BYTE_LEVEL_KINDS = ("gpt2", "roberta")  # byte-level BPE: text as its bytes, a word inside text led by its space
SENTENCEPIECE = "sentencepiece"
# In ALBERT's vocabulary order (its published spiece.model numbers them 0-4, and so do ours).
SENTENCEPIECE_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
# Each role's token in the published SentencePiece vocabularies (ALBERT, DeBERTa-v2/v3; XLNet): what a folder
# without HF's role files is read with.
SENTENCEPIECE_ROLE_TOKENS = {"pad": ("<pad>", "[PAD]"), "unk": ("<unk>", "[UNK]"), "cls": ("[CLS]", "<cls>"),
                             "sep": ("[SEP]", "<sep>"), "mask": ("[MASK]", "<mask>")}
WORD_START = "▁"  # SentencePiece's mark of a word's first piece (U+2581)
NORMALISED_KINDS = ("gpt", "bert", SENTENCEPIECE)  # kinds with a normaliser whose case and accent handling is a setting


@dataclass(frozen=True)
class Kind:
    """How to build one tokeniser family: its pipeline around a model, its model settings and trainer."""

    pipeline: Callable[..., Backend]  # (model, **options) -> backend; "gpt" and "bert" take lowercase, strip_accents
    model: Callable[..., models.Model]  # models.BPE or models.WordPiece
    model_options: dict
    trainer: Callable[..., trainers.Trainer]
    specials: dict[str, str]  # role -> token, trained into the vocabulary first, in this order
    pad_from: str  # the role whose token pads batches when there is no "pad" token
    alphabet: int  # symbols every vocabulary of this kind holds, whatever the corpus
    task_tokens: bool = True  # GPT §3.3 tokens trained in after the specials
    lstrip: tuple[str, ...] = ()  # roles whose token takes the whitespace before it (RoBERTa's <mask>)

    def special_token(self, role: str, token: str) -> str | AddedToken:
        """`token` as the trainer or the backend registers it: with its `lstrip` where the role has one."""
        if role in self.lstrip:
            return AddedToken(token, lstrip=True, rstrip=False, normalized=False, special=True)
        return token


def _gpt_pipeline(model: models.Model, lowercase: bool = True, strip_accents: bool | None = None) -> Backend:
    """Lower-cased and accent-stripped by default, as HF openai-gpt; a trained vocabulary may keep either."""
    backend = Backend(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    return backend


def _gpt2_pipeline(model: models.Model) -> Backend:
    backend = Backend(model)
    # No prefix space: GPT-2 was trained so that "Hello" at the start of a text differs from " Hello".
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _bert_pipeline(model: models.Model, lowercase: bool = True, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> Backend:
    """BERT's BasicTokenizer then WordPiece. `strip_accents=None` strips them exactly when lower-casing."""
    backend = Backend(model)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return backend


def _sentencepiece_pipeline(model: models.Model, lowercase: bool = True, strip_accents: bool | None = None
                            ) -> Backend:
    """HF's AlbertTokenizer pipeline: `` and '' become ", accents are stripped (NFKD, then the combining marks
    dropped; `strip_accents=None`: exactly when lower-casing) and text lower-cased as the settings say; words are
    split on whitespace and each marked with a leading "▁"."""
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if lowercase if strip_accents is None else strip_accents:
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    backend = Backend(model)
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Metaspace(WORD_START, prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(WORD_START, prepend_scheme="always")
    return backend


def set_template(backend: Backend, single: str, pair: str, tokens: Iterable[str]) -> None:
    """The input layout a tokenizer.json records (HF's TemplateProcessing), e.g. "[CLS]:0 $A:0 [SEP]:0"."""
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, backend.token_to_id(t)) for t in tokens])


def template_of(backend: Backend) -> dict[str, list[tuple[str, int]]] | None:
    """The single and pair layouts of a tokenizer.json's TemplateProcessing post-processor: per position, "A",
    "B" or a special token's text, with its segment id; None when it has none."""
    data = json.loads(backend.to_str()).get("post_processor") or {}
    if data.get("type") != "TemplateProcessing":
        return None
    layouts = {}
    for name in ("single", "pair"):
        items = []
        for item in data[name]:
            (what, spec), = item.items()
            items.append((spec["id"] if what == "SpecialToken" else spec["id"].upper(), int(spec["type_id"])))
        layouts[name] = items
    return layouts


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes each byte as one printable character (its `bytes_to_unicode`): character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


_BYTES = _byte_alphabet()


def byte_level_text(entry: str) -> str:
    """A byte-level vocabulary entry as the text its bytes spell ("Ġare" → " are", "Ð·" → "з"); bytes that are only
    part of a character as escapes ("\\xd0"), never as mojibake; an entry outside the byte alphabet (a special
    token) as it is."""
    if not all(ch in _BYTES for ch in entry):
        return entry
    raw = bytes(_BYTES[ch] for ch in entry)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{b:02x}" for b in raw)


def set_bert_post_processor(backend: Backend) -> None:
    """[CLS] A [SEP] (B [SEP]), for HF loading our tokenizer.json; our own encode_* add them by hand."""
    cls, sep = BERT_SPECIALS["cls"], BERT_SPECIALS["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])


def set_roberta_post_processor(backend: Backend) -> None:
    """<s> A </s> (</s> B </s>), for HF loading our tokenizer.json; our own encode_* add them by hand."""
    cls, sep = ROBERTA_SPECIALS["cls"], ROBERTA_SPECIALS["sep"]
    backend.post_processor = processors.RobertaProcessing((sep, backend.token_to_id(sep)),
                                                          (cls, backend.token_to_id(cls)), add_prefix_space=False)


KINDS: dict[str, Kind] = {
    "gpt": Kind(_gpt_pipeline, models.BPE, {"unk_token": UNK, "end_of_word_suffix": "</w>"},
                lambda **kw: trainers.BpeTrainer(end_of_word_suffix="</w>", **kw),
                {"unk": UNK, "eos": EOS}, pad_from="unk", alphabet=0),
    "gpt2": Kind(_gpt2_pipeline, models.BPE, {},
                 # Every byte is in the alphabet, so no text is ever out of vocabulary.
                 lambda **kw: trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                  **kw),
                 {"eos": EOS}, pad_from="eos", alphabet=256),
    "bert": Kind(_bert_pipeline, models.WordPiece,
                 {"unk_token": BERT_SPECIALS["unk"], "max_input_chars_per_word": BERT_MAX_WORD_CHARS},
                 lambda **kw: trainers.WordPieceTrainer(continuing_subword_prefix="##", **kw),
                 BERT_SPECIALS, pad_from="pad", alphabet=0, task_tokens=False),
    # Unigram training has no frequency threshold (it prunes pieces by likelihood): min_frequency does not apply.
    SENTENCEPIECE: Kind(_sentencepiece_pipeline, models.Unigram, {},
                        lambda min_frequency, **kw: trainers.UnigramTrainer(unk_token=SENTENCEPIECE_SPECIALS["unk"],
                                                                            **kw),
                        SENTENCEPIECE_SPECIALS, pad_from="pad", alphabet=0, task_tokens=False),
}
KINDS["roberta"] = Kind(_gpt2_pipeline, models.BPE, {}, KINDS["gpt2"].trainer, ROBERTA_SPECIALS, pad_from="pad",
                        alphabet=256, task_tokens=False, lstrip=("mask",))
# the roles every vocabulary of these kinds must hold
REQUIRED_SPECIALS = {"bert": BERT_SPECIALS, "roberta": ROBERTA_SPECIALS}


def kind_spec(kind: str | None, where: str) -> Kind:
    if kind not in KINDS:
        raise UserError(f"{where}: unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind]


def load_backend(directory: Path, kind: str | None, lowercase: bool | None) -> tuple[Backend, str, dict | None]:
    """The backend in `directory`, its kind, and the special tokens' roles when our tokenizer_config.json gives
    them (None: take them from the vocabulary). See `Tokenizer.from_files`."""
    if kind is not None:
        kind_spec(kind, "Tokenizer.from_files")
    if lowercase is not None and not isinstance(lowercase, bool):
        raise UserError(f"Tokenizer.from_files: lowercase={lowercase!r}; expected True, False or None")
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; expected a folder with tokenizer.json, "
                        "vocab.json + merges.txt, or vocab.txt")
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    roles = None
    kind_how = "was asked for"
    # HF writes a tokenizer_config.json too, without our "kind": then it is not ours to read.
    if isinstance(config, dict) and "kind" in config:
        saved_kind, roles = config["kind"], config.get("special_tokens", {})
        kind_spec(saved_kind, f"{config_path}: 'kind'")
        if kind is not None and kind != saved_kind:
            raise UserError(f"{config_path}: tokenizer kind is {saved_kind!r} but {kind!r} was asked for")
        if not (isinstance(roles, dict) and all(isinstance(t, str) for t in roles.values())):
            raise UserError(f"{config_path}: 'special_tokens' must map roles to token strings")
        if kind is None:
            kind_how = f"is written in {config_path}"
        kind = saved_kind
    if (directory / "tokenizer.json").is_file():
        path = directory / "tokenizer.json"
        try:
            backend = Backend.from_str(read_text(path))
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the Rust parser's errors all mean "this file is bad"
            raise UserError(f"{path}: not a valid tokenizers JSON file ({err})") from None
        kind = _check_kind(kind, _infer_kind(backend), path, kind_how)
        if kind == "bert":
            _check_lowercase(backend, lowercase, path, "was asked for")
        if kind in NORMALISED_KINDS and roles is not None:  # our own config must agree with the file beside it
            _check_normaliser(backend, config, config_path, path)
    elif (directory / "vocab.json").is_file() or (directory / "merges.txt").is_file():
        path = directory / "merges.txt"
        backend, kind = _from_vocab_merges(directory, kind)
    elif (directory / "vocab.txt").is_file():
        path = directory / "vocab.txt"
        kind = _check_kind(kind, "bert", path, kind_how)
        backend = _from_vocab_txt(path, _vocab_txt_options(config, config_path, lowercase))
    elif (directory / "spiece.model").is_file():
        raise UserError(f"{directory}: has spiece.model but no tokenizer.json; ctxlm reads SentencePiece vocabularies "
                        "from tokenizer.json and does not use the sentencepiece package. Write one where "
                        "sentencepiece and transformers are installed: AutoTokenizer.from_pretrained(FOLDER)"
                        ".save_pretrained(FOLDER), then convert again")
    else:
        raise UserError(f"{directory}: no tokenizer.json, nor vocab.json + merges.txt, nor vocab.txt")
    if lowercase is not None and kind != "bert":
        raise UserError(f"Tokenizer.from_files: lowercase= applies to bert tokenizers only; {path} holds a "
                        f"{kind} tokenizer")
    if roles is not None:
        missing = sorted(t for t in roles.values() if backend.token_to_id(t) is None)
        if missing:
            raise UserError(f"{config_path}: special tokens {missing} are not in the vocabulary")
        lacking = [role for role in REQUIRED_SPECIALS.get(kind, {}) if role not in roles]
        if lacking:
            raise UserError(f"{config_path}: 'special_tokens' lacks the roles {lacking} a {kind} tokenizer needs")
    elif kind == "bert":
        _require_bert_specials(backend, path)
    elif kind == "roberta":
        _require_specials(backend, path, kind)
    elif kind == SENTENCEPIECE:
        roles = _published_roles(backend, config, directory)
    if kind == "gpt":
        _ensure_unk(backend)
    return backend, kind, roles


def default_roles(backend: Backend, kind: str) -> dict[str, str]:
    """Roles of a vocabulary that came without our tokenizer_config.json: the standard strings it holds.
    They are registered as special tokens, which keeps them whole inside text and lets decode skip them."""
    spec = KINDS[kind]
    known = {**spec.specials, **TASK_TOKENS}
    roles = {role: t for role, t in known.items() if backend.token_to_id(t) is not None}
    backend.add_special_tokens([spec.special_token(role, t) for role, t in roles.items()])
    return with_pad(roles, spec)


def with_pad(roles: dict[str, str], spec: Kind) -> dict[str, str]:
    if "pad" not in roles and spec.pad_from in roles:
        roles = {**roles, "pad": roles[spec.pad_from]}
    return roles


def pipeline_options(kind: str, lowercase: bool | None, strip_accents: bool | None, where: str) -> dict:
    """The normaliser settings a new vocabulary is trained with. "gpt" and "bert" lower-case by default (the
    papers' uncased vocabularies); accents are stripped only when asked, or by default when lower-casing (as BERT's
    uncased normaliser), never silently from cased text. "gpt2" reads bytes as they are and takes neither."""
    if kind not in NORMALISED_KINDS:
        if lowercase is not None or strip_accents is not None:
            raise UserError(f"{where}: lowercase= and strip_accents= apply to gpt, bert and sentencepiece tokenizers "
                            f"only ({kind} keeps text as it is)")
        return {}
    for name, value in (("lowercase", lowercase), ("strip_accents", strip_accents)):
        if value is not None and not isinstance(value, bool):
            raise UserError(f"{where}: {name}={value!r}; expected True, False or None")
    lowercase = True if lowercase is None else lowercase
    return {"lowercase": lowercase, "strip_accents": lowercase if strip_accents is None else strip_accents}


def normalizer_lowercase(backend: Backend) -> bool | None:
    normalizer = backend.normalizer
    if isinstance(normalizer, normalizers.BertNormalizer):
        return normalizer.lowercase
    steps = _normalizer_steps(backend)
    return None if steps is None else "Lowercase" in steps


def normalizer_strip_accents(backend: Backend) -> bool | None:
    """Whether the normaliser strips accents: its own setting, or when unset (None), exactly when it lower-cases
    (BERT's rule); for a sequence of normalisers (SentencePiece), whether it has a StripAccents step."""
    normalizer = backend.normalizer
    if isinstance(normalizer, normalizers.BertNormalizer):
        return normalizer.lowercase if normalizer.strip_accents is None else normalizer.strip_accents
    steps = _normalizer_steps(backend)
    return None if steps is None else "StripAccents" in steps


def _normalizer_steps(backend: Backend) -> list[str] | None:
    """The types of a Unigram tokenizer's normaliser steps (none: an empty list); None for the other models,
    whose case handling is not read this way."""
    if not isinstance(backend.model, models.Unigram):
        return None
    data = json.loads(backend.to_str()).get("normalizer") or {}
    steps = data.get("normalizers", [data]) if data.get("type") == "Sequence" else [data]
    return [step.get("type") for step in steps if step]


def _check_lowercase(backend: Backend, wanted: bool | None, path: Path, how: str) -> None:
    actual = normalizer_lowercase(backend)
    if wanted is not None and actual is not None and wanted != actual:
        raise UserError(f"{path}: its normaliser has lowercase={actual}, but lowercase={wanted} {how}")


def _check_normaliser(backend: Backend, config: object, config_path: Path, path: Path) -> None:
    """Our tokenizer_config.json's "lowercase" and "strip_accents" (absent from folders written before they were
    saved: then nothing to check) against the normaliser in tokenizer.json, which is what encodes."""
    how = f"is written in {config_path}"
    _check_lowercase(backend, _config_flag(config, "lowercase", config_path), path, how)
    wanted, actual = _config_flag(config, "strip_accents", config_path), normalizer_strip_accents(backend)
    if wanted is not None and actual is not None and wanted != actual:
        raise UserError(f"{path}: its normaliser has strip_accents={actual}, but strip_accents={wanted} {how}")


def _config_flag(config: object, key: str, config_path: Path) -> bool | None:
    value = config.get(key) if isinstance(config, dict) else None
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{config_path}: {key!r} is {value!r}; expected true, false or null")
    return value


def _vocab_txt_options(config: object, config_path: Path, asked: bool | None) -> dict:
    """Normaliser settings for a bare vocab.txt, from tokenizer_config.json (ours: "lowercase"; HF's:
    "do_lower_case", "strip_accents", "tokenize_chinese_chars"), else `asked`, else uncased."""
    options: dict[str, bool] = {}
    for key, option in (("lowercase", "lowercase"), ("do_lower_case", "lowercase"),
                        ("strip_accents", "strip_accents"), ("tokenize_chinese_chars", "chinese_chars")):
        value = _config_flag(config, key, config_path)
        if value is not None:
            if option in options and options[option] != value:
                raise UserError(f"{config_path}: contradicts itself on {option}")
            options[option] = value
    if asked is not None and options.get("lowercase", asked) != asked:
        raise UserError(f"{config_path}: says the vocabulary is {'un' if options['lowercase'] else ''}cased, "
                        f"but lowercase={asked} was asked for")
    options.setdefault("lowercase", True if asked is None else asked)
    return options


def _require_bert_specials(backend: Backend, path: Path) -> None:
    _require_specials(backend, path, "bert")


def _require_specials(backend: Backend, path: Path, kind: str) -> None:
    wanted = REQUIRED_SPECIALS[kind].values()
    missing = [t for t in wanted if backend.token_to_id(t) is None]
    if missing:
        raise UserError(f"{path}: lacks the special tokens {' '.join(missing)}; a {kind} vocabulary needs all of "
                        f"{' '.join(wanted)}")


def _from_vocab_txt(path: Path, options: dict) -> Backend:
    """A published BERT vocab.txt: one token per line, its id the line number from 0 (as HF `load_vocab`). A token
    on several lines keeps the last line's id, as in HF, and a warning counts such lines (their ids go unused)."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    repeated = []  # (token, its earlier line)
    for i, line in enumerate(lines):
        token = line.removesuffix("\r")
        if token in vocab:
            repeated.append((token, vocab[token] + 1))
        vocab[token] = i
    if repeated:
        token, first = repeated[0]
        warnings.warn(f"{path}: {len(repeated)} line(s) repeat an earlier token (the first: {token!r} of line {first}, "
                      f"again on line {vocab[token] + 1}); each such token gets the id of its last line, as in "
                      "Hugging Face, and the earlier ids are never produced", stacklevel=4)
    spec = KINDS["bert"]
    try:
        backend = spec.pipeline(spec.model(vocab=vocab, **spec.model_options), **options)
    except Exception as err:  # noqa: BLE001 - the Rust model's errors all mean "this file is bad"
        raise UserError(f"{path}: not a usable WordPiece vocabulary ({err})") from None
    _require_bert_specials(backend, path)
    set_bert_post_processor(backend)
    return backend


def _published_roles(backend: Backend, config: object, directory: Path) -> dict[str, str]:
    """The special tokens' roles of a published SentencePiece tokenizer: as HF's tokenizer_config.json or
    special_tokens_map.json name them ("cls_token": "<cls>", or {"content": "<cls>", ...}), else the usual tokens
    of each role that the vocabulary holds (`SENTENCEPIECE_ROLE_TOKENS`), the unknown piece the model's own.
    They are registered as special tokens, which keeps them whole inside text and lets decode skip them."""
    sources = [config]
    if (directory / "special_tokens_map.json").is_file():
        sources.append(_read_json(directory / "special_tokens_map.json"))
    roles: dict[str, str] = {}
    unk_id = json.loads(backend.to_str())["model"].get("unk_id")
    if unk_id is not None:
        roles["unk"] = backend.id_to_token(unk_id)
    for role, usual in SENTENCEPIECE_ROLE_TOKENS.items():
        named = [value.get("content") if isinstance(value, dict) else value
                 for source in sources if isinstance(source, dict) and (value := source.get(f"{role}_token"))]
        found = [t for t in [*named, *usual] if isinstance(t, str) and backend.token_to_id(t) is not None]
        if found and role not in roles:
            roles[role] = found[0]
    missing = [role for role in ("cls", "sep") if role not in roles]
    if missing:
        raise UserError(f"{directory}: this SentencePiece vocabulary has no token for the roles {missing}; a "
                        "tokenizer_config.json naming them (e.g. \"cls_token\": \"[CLS]\") is needed")
    backend.add_special_tokens(list(roles.values()))
    return roles


def _infer_kind(backend: Backend) -> str | None:
    model = backend.model
    if isinstance(model, models.Unigram):
        return SENTENCEPIECE
    if isinstance(model, models.WordPiece):
        return "bert"
    if isinstance(model, models.BPE):
        if model.end_of_word_suffix == "</w>":
            return "gpt"
        if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel) or isinstance(backend.decoder,
                                                                                      decoders.ByteLevel):
            return _byte_level_kind(backend.get_vocab(with_added_tokens=True))
    return None


def _byte_level_kind(vocab: dict[str, int]) -> str:
    """A byte-level BPE vocabulary with RoBERTa's <s> and <mask> is "roberta"'s, any other "gpt2"'s."""
    return "roberta" if {ROBERTA_SPECIALS["cls"], ROBERTA_SPECIALS["mask"]} <= vocab.keys() else "gpt2"


def _check_kind(asked: str | None, found: str | None, path: Path, how: str = "was asked for") -> str:
    """The kind to use: the one asked for (or saved) must agree with what the file holds."""
    if asked is not None and found is not None and asked != found:
        raise UserError(f"{path}: holds a {found} tokenizer, but kind {asked!r} {how}")
    kind = asked or found
    if kind is None:
        raise UserError(f"{path}: cannot tell which tokenizer kind this is; pass kind= "
                        f"(one of {', '.join(KINDS)})")
    return kind


def _ensure_unk(backend: Backend) -> None:
    """GPT's published vocabulary may lack <unk>; the Rust BPE would then fail on any unseen character. The
    original OpenAI code mapped unknown symbols to id 0 (`encoder.get(t, 0)`), so we do the same."""
    model = backend.model
    if isinstance(model, models.BPE) and model.unk_token and backend.token_to_id(model.unk_token) is None:
        model.unk_token = backend.id_to_token(0)


def _from_vocab_merges(directory: Path, kind: str | None) -> tuple[Backend, str]:
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise UserError(f"{path}: missing; vocab.json and merges.txt go together")
    vocab = _read_json(vocab_path)
    if not (isinstance(vocab, dict) and all(isinstance(i, int) for i in vocab.values())):
        raise UserError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
    merges = []
    for line_no, line in enumerate(read_text(merges_path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (line_no == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise UserError(f"{merges_path}:{line_no}: expected two symbols separated by one space, "
                            f"got {line!r}")
        merges.append((pair[0], pair[1]))
    # GPT's word-final symbols end in "</w>"; GPT-2 has no such suffix.
    ends_in_w = any(b.endswith("</w>") for _, b in merges) or any(t.endswith("</w>") for t in vocab)
    kind = _check_kind(kind, "gpt" if ends_in_w else _byte_level_kind(vocab), merges_path)
    spec = KINDS[kind]
    try:
        model = spec.model(vocab=vocab, merges=merges, **spec.model_options)
    except Exception as err:  # noqa: BLE001 - e.g. a merge whose symbols are not in the vocabulary
        raise UserError(f"{merges_path}: does not fit {vocab_path} ({err})") from None
    return spec.pipeline(model), kind


def _read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None

