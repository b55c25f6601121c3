"""Task data for fine-tuning: the built-in data sets and the user's own CSV/TSV/JSONL files → `TaskData`.

One small reader per format (GLUE TSV, CoNLL columns, COPA JSONL, ARC-style JSON or JSONL, user CSV/JSONL) returns
examples whose labels are as written in the file; `_task_data` then turns class names into indices, so that every
task gets the same label order (the training split's names, sorted) and the same errors. Every example keeps the
`path:line` it came from, so a bad row or an unknown label is reported where the user can fix it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlm.errors import UserError
from ctxlm.paths import dataset_path
from ctxlm.textfiles import check_json_unicode, read_text


@dataclass(frozen=True)
class TaskSpec:
    """What a task head needs to know: the input layout, the classes and how results are scored."""

    name: str  # "sst2", ..., or "csv" for user files
    kind: str  # "single" | "pair" | "choice" | "tag" | "multi" (a text → zero or more labels)
    labels: tuple[str, ...]  # class names in index order (tag names for "tag"); () for regression and choice
    metrics: tuple[str, ...]  # names understood by metrics.compute_metrics; the FIRST is the main one
    regression: bool = False  # STS-B: one float per example
    # pair tasks: whether (a, b) and (b, a) may differ. Entailment has an order (GPT §3.3: premise, delimiter,
    # hypothesis); similarity and paraphrase do not, and decoders then read both orderings (GPT §3.3).
    order_matters: bool = True
    # multi-label: a label is predicted where its sigmoid reaches this (fixed, or tuned on dev by fine-tuning)
    threshold: float = 0.5

    @classmethod
    def from_dict(cls, values: dict) -> TaskSpec:
        """The spec saved in a task.json. Pair models saved before `order_matters` existed read both orderings."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        values.setdefault("order_matters", values.get("kind") != "pair")
        return cls(**values)

    @property
    def one_text(self) -> bool:
        """Whether each input is a single text (classified, or multi-labelled), which may be read in windows."""
        return self.kind in ("single", "multi")

    @property
    def num_labels(self) -> int:
        """Outputs per scored slot: one score for regression and for each choice, else one per class."""
        return 1 if self.regression or self.kind == "choice" else len(self.labels)


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]  # single: (text,); pair: (a, b); choice: (context, choice_1, ..., choice_n); tag: words
    # class / choice index; score; tag index per word; multi-label: the indices of its labels; None = unlabelled
    label: int | float | tuple[int, ...] | None
    source: str = ""  # "path:line" where it was read, for error messages


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    dev: list[Example]
    test: list[Example] | None = None  # only where labelled test data ships (conll2003, arc_easy)


@dataclass(frozen=True)
class UserTaskOptions:
    """How to read a `csv:PATH` task: which columns hold the texts and the label."""

    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None  # pair task when set
    dev_path: str | None = None  # else the last 10% of the train file (after a seeded shuffle) is held out as dev
    regression: bool = False  # float labels
    symmetric: bool = False  # pair task: the order of the two texts carries no meaning (similarity, paraphrase)
    multi_label: bool = False  # each label cell holds zero or more labels, split on `label_separator`
    label_separator: str = ","


Splits = tuple[list[Example], list[Example], list[Example] | None]  # train, dev, test; labels as in the files
_DEV_FRACTION = 10  # where a task has no dev file, 1 in 10 training examples is held out (imdb: at most 500 a label)
_DEV_SEED = 0  # the held-out dev set does not change with the training seed, so runs with different seeds compare

# ---------------------------------------------------------------------------------------------------- file access


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line with some text; split on "\\n" only so numbers agree with editors."""
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def _tsv_rows(path: Path, fields: int, header: bool) -> Iterator[tuple[str, list[str]]]:
    """("path:line", fields) per row. Fields are split on tabs alone: MRPC has unbalanced quotes inside them."""
    lines = _lines(read_text(path))
    if header:
        next(lines, None)
    for number, line in lines:
        parts = line.split("\t")
        if len(parts) != fields:
            raise UserError(f"{path}:{number}: expected {fields} tab-separated fields, got {len(parts)}")
        yield f"{path}:{number}", parts


_SPACE = re.compile(r"\s*")


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """("path:line", value) for each element of a JSON array file, or for each line of a JSON-lines file."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        for number, line in _lines(text):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            check_json_unicode(value, line, path, number)
            yield f"{path}:{number}", value
        return
    # Decode the array one element at a time, so each element can be reported by the line where it starts.
    decoder, pos, line, counted = json.JSONDecoder(), text.index("[") + 1, 1, 0
    while True:
        pos = _SPACE.match(text, pos).end()
        if text.startswith("]", pos):
            rest = _SPACE.match(text, pos + 1).end()
            if rest < len(text):  # e.g. a second array: dropping it silently would lose its examples
                where = text.count("\n", 0, rest) + 1
                raise UserError(f"{path}:{where}: text after the end of the JSON array; expected one array per file "
                                "(or JSON lines: one object per line)")
            return
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        check_json_unicode(value, text[pos:end], path, line)
        pos = end
        yield f"{path}:{line}", value
        pos = _SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            where = text.count("\n", 0, pos) + 1
            raise UserError(f"{path}:{where}: expected ',' or ']' between the elements of the JSON array")


def _label_set(cell: str, separator: str, where: str) -> tuple[str, ...]:
    """The labels of a multi-label cell: names split on `separator`, stripped, each once; an empty cell means no
    label, but an empty name between separators is a mistake (a doubled or trailing separator)."""
    if not cell.strip():
        return ()
    names = [name.strip() for name in cell.split(separator)]
    if not all(names):
        raise UserError(f"{where}: empty label name in {cell!r} (labels separated by {separator!r})")
    return tuple(dict.fromkeys(names))


def _nonempty(path: Path, examples: list[Example]) -> list[Example]:
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):  # "nan" and "inf" parse as floats, but no loss can be learned from them
        raise UserError(f"{where}: label {value!r} is not a number, expected a score such as 3.5")
    return number


# ---------------------------------------------------------------------------------------------------- built-in tasks


@dataclass(frozen=True)
class _Glue:
    """A GLUE TSV layout: where the texts and the label are among a fixed number of fields."""

    fields: int
    texts: tuple[int, ...]
    label: int
    header: bool = True

    def read(self, path: Path) -> list[Example]:
        return _nonempty(path, [Example(tuple(row[i].strip() for i in self.texts), row[self.label].strip(), where)
                                for where, row in _tsv_rows(path, self.fields, self.header)])


def _glue(name: str, layout: _Glue, train: str = "train.tsv") -> Callable[[], Splits]:
    def read() -> Splits:
        return tuple(layout.read(dataset_path(name, file)) for file in (train, "dev.tsv")) + (None,)

    return read


def _conll(path: Path) -> list[Example]:
    """Sentences of `word POS chunk NER` lines; blank lines end a sentence and -DOCSTART- lines are skipped."""
    sentences, words, tags, start = [], [], [], 0
    for number, line in enumerate([*read_text(path).split("\n"), ""], 1):  # "": the last sentence ends too
        parts = line.split()
        if parts and parts[0] != "-DOCSTART-":
            if len(parts) != 4:
                raise UserError(f"{path}:{number}: expected 4 space-separated columns (word POS chunk NER), "
                                f"got {len(parts)}")
            start = start or number
            words.append(parts[0])
            tags.append(parts[3])
        elif words:
            sentences.append(Example(tuple(words), tuple(tags), f"{path}:{start}"))
            words, tags, start = [], [], 0
    return _nonempty(path, sentences)


def _read_conll() -> Splits:
    return tuple(_conll(dataset_path("conll2003", file)) for file in ("train.txt.gz", "valid.txt", "test.txt"))


_COPA_QUESTIONS = {"cause": " What was the cause?", "effect": " What happened as a result?"}
_COPA_TRAIN_IDS = 400  # SuperGLUE COPA train is ids 1-400 of the original dev set; its validation set is 401-500


def _read_copa() -> Splits:
    """The 500 original COPA dev items, split as SuperGLUE does. The context says whether a cause or an effect is
    asked for: the same premise can have a different answer for each."""
    path = dataset_path("copa", "copa_dev.jsonl")
    train, dev = [], []
    for where, item in _json_records(path):
        try:
            question, label, split = _COPA_QUESTIONS[item["question"]], item["label"], int(item["id"])
            texts = (item["premise"] + question, item["choice1"], item["choice2"])
            if not all(isinstance(t, str) for t in texts):
                raise TypeError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise UserError(f'{where}: expected {{"id": int, "premise", "choice1", "choice2" (strings), "question": '
                            f'"cause" or "effect", "label": 0 or 1}}') from None
        if isinstance(label, bool) or label not in (0, 1):
            raise UserError(f"{where}: label {label!r} should be 0 or 1")
        (train if split <= _COPA_TRAIN_IDS else dev).append(Example(texts, label, where))
    return _nonempty(path, train), _nonempty(path, dev), None


def _choice_questions(path: Path) -> list[Example]:
    """ARC-style questions: {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}, as a JSON array
    or JSON lines. The answer becomes an index, since the labels vary (A-E, or 1-4 in some ARC questions)."""
    examples = []
    for where, item in _json_records(path):
        try:
            question, answers, names, key = (item["question"], item["choices"]["text"], item["choices"]["label"],
                                             item["answerKey"])
            if not (isinstance(question, str) and _strings(answers) and _strings(names) and isinstance(key, str)):
                raise TypeError
        except (KeyError, TypeError):
            raise UserError(f'{where}: expected {{"question", "choices": {{"text": [...], "label": [...]}}, '
                            f'"answerKey"}}, with strings and lists of strings') from None
        if len(answers) != len(names):
            raise UserError(f"{where}: {len(answers)} choice texts but {len(names)} choice labels")
        if key not in names:
            raise UserError(f"{where}: answerKey {key!r} is not among the choice labels ({', '.join(names)})")
        examples.append(Example((question, *answers), names.index(key), where))
    return _nonempty(path, examples)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _read_arc() -> Splits:
    return tuple(_choice_questions(dataset_path("arc_easy", file))
                 for file in ("train.json", "validation.json", "test.json.gz"))


def _read_commonsenseqa() -> Splits:
    """Only the dev file ships (no train, and test is unlabelled): our split is its first 80% for training and the
    last 20% as dev, in file order."""
    questions = _choice_questions(dataset_path("commonsenseqa", "dev_rand_split.jsonl"))
    cut = len(questions) * 4 // 5
    return questions[:cut], questions[cut:], None


_IMDB = _Glue(4, (3,), 2)  # id, rating, label, sentence (the review)
_IMDB_DEV_PER_LABEL = 500


def _imdb_train_dev() -> tuple[list[Example], list[Example]]:
    """IMDb's training reviews, split into our training and dev sets.

    Maas et al. ship a training and a test split only, and the test split is for final figures (ULMFiT reports
    on it; choosing recipes on it would overstate them). Dev is therefore held out of the training reviews:
    500 of each label (a tenth of a label's reviews where a file has fewer than 5,000), drawn with a fixed seed,
    the same for every run and training seed; the other 24,000 are the training split. Both keep file order.
    """
    reviews = _IMDB.read(dataset_path("imdb", "train.tsv.gz"))
    held_out = _balanced_sample([e.label for e in reviews], _IMDB_DEV_PER_LABEL)
    return ([e for i, e in enumerate(reviews) if i not in held_out],
            [e for i, e in enumerate(reviews) if i in held_out])


def _balanced_sample(labels: list[str], per_label: int) -> set[int]:
    """Indices of `per_label` rows of each label (a tenth of its rows, at least one, where it has fewer than ten
    times that), drawn with `_DEV_SEED`: a function of the labels alone."""
    rng = random.Random(_DEV_SEED)
    chosen: set[int] = set()
    for label in sorted(set(labels)):
        rows = [i for i, name in enumerate(labels) if name == label]
        chosen.update(rng.sample(rows, max(1, min(per_label, len(rows) // _DEV_FRACTION))))
    return chosen


def _read_imdb() -> Splits:
    """Train and dev from the training reviews (`_imdb_train_dev`); test = the test reviews."""
    return *_imdb_train_dev(), _IMDB.read(dataset_path("imdb", "test.tsv.gz"))


_CEDR_LABELS = ("joy", "sadness", "surprise", "fear", "anger")  # the data set's label ids 0-4


def _cedr_sentences(path: Path) -> list[Example]:
    """`sentence<TAB>labels<TAB>source` rows under a header; labels comma-separated, empty for no emotion."""
    return _nonempty(path, [Example((row[0].strip(),), _label_set(row[1], ",", where), where)
                            for where, row in _tsv_rows(path, 3, header=True)])


def _cedr_train_dev() -> tuple[list[Example], list[Example]]:
    """CEDR ships train and test only, and test is for final figures: dev is held out of the training sentences
    as `_holdout` does for user files (a fixed seeded 10 %, 752 of 7,528), the same for every run and seed."""
    path = dataset_path("cedr", "train.tsv.gz")
    sentences = _cedr_sentences(path)
    kept, held_out = _holdout(len(sentences), path)
    return [sentences[i] for i in kept], [sentences[i] for i in held_out]


def _read_cedr() -> Splits:
    return *_cedr_train_dev(), _cedr_sentences(dataset_path("cedr", "test.tsv"))


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in task: its input layout and metrics, and the reader of its files under `data_root()`."""

    kind: str
    metrics: tuple[str, ...]
    read: Callable[[], Splits]
    regression: bool = False
    order_matters: bool = True  # pair tasks: see TaskSpec
    # the training split alone, where it has files of its own (else `read()`'s first split): pretraining text
    read_train: Callable[[], list[Example]] | None = None
    # the training and dev splits without the test split, where the test split has files of its own: what
    # choosing a recipe reads (`load_task(test=False)`), never a test file
    read_train_dev: Callable[[], tuple[list[Example], list[Example]]] | None = None
    long_text: str = "truncate"  # how fine-tuning reads a text longer than max_length (ctxlm.nn.long_text)
    labels: tuple[str, ...] = ()  # the data set's own label order; (): the training split's names, sorted

    def labelled(self, test: bool = True) -> Splits:
        """(train, dev, test), labels as written; without `test` the test split is None and, where it has files of
        its own (`read_train_dev`), not read at all."""
        if test:
            return self.read()
        if self.read_train_dev is not None:
            return *self.read_train_dev(), None
        return *self.read()[:2], None

    def train_examples(self) -> list[Example]:
        """The training split, labels as written; a task whose training split has files of its own reads no
        other file."""
        return self.read_train() if self.read_train is not None else self.read()[0]


def _glue_task(name: str, kind: str, metrics: tuple[str, ...], layout: _Glue, train: str = "train.tsv",
               **options) -> BuiltinTask:
    """A GLUE task, whose training split is a file of its own (`BuiltinTask.read_train`)."""
    return BuiltinTask(kind, metrics, _glue(name, layout, train),
                       read_train=lambda: layout.read(dataset_path(name, train)), **options)


_MULTI_METRICS = ("macro_f1", "micro_f1", "exact_match")  # and the F1 of each label (metrics.compute_metrics)

TASKS: dict[str, BuiltinTask] = {
    "sst2": _glue_task("sst2", "single", ("accuracy",), _Glue(2, (0,), 1), train="train.tsv.gz"),
    "mrpc": _glue_task("mrpc", "pair", ("f1", "accuracy"), _Glue(5, (3, 4), 0), order_matters=False),
    "stsb": _glue_task("stsb", "pair", ("spearman", "pearson"), _Glue(10, (7, 8), 9), regression=True,
                       order_matters=False),
    "rte": _glue_task("rte", "pair", ("accuracy",), _Glue(4, (1, 2), 3)),
    "cola": _glue_task("cola", "single", ("mcc", "accuracy"), _Glue(4, (3,), 1, header=False)),
    "conll2003": BuiltinTask("tag", ("entity_f1", "accuracy"), _read_conll,
                             read_train=lambda: _conll(dataset_path("conll2003", "train.txt.gz"))),
    "copa": BuiltinTask("choice", ("accuracy",), _read_copa),  # train and dev share one file
    "arc_easy": BuiltinTask("choice", ("accuracy",), _read_arc,
                            read_train=lambda: _choice_questions(dataset_path("arc_easy", "train.json"))),
    "commonsenseqa": BuiltinTask("choice", ("accuracy",), _read_commonsenseqa),
    # whole reviews, read in windows: 88 % are longer than 128 MiniLM tokens, 12 % longer than 512 (3,000 drawn)
    "imdb": BuiltinTask("single", ("accuracy",), _read_imdb, read_train=lambda: _imdb_train_dev()[0],
                        read_train_dev=_imdb_train_dev, long_text="windows"),
    # Russian sentences with none, one or several of five emotions
    "cedr": BuiltinTask("multi", _MULTI_METRICS, _read_cedr, labels=_CEDR_LABELS, read_train_dev=_cedr_train_dev),
}

# ---------------------------------------------------------------------------------------------------- user files


def _csv_records(path: Path, delimiter: str, columns: list[str]) -> list[tuple[str, dict[str, str]]]:
    """("path:line", {column: value}) per row of a CSV/TSV file with a header (blank lines are no rows). A TSV is
    split on tabs alone, as the GLUE files are; a CSV may quote fields (and then a row can span lines)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # the default 128 Ki characters would refuse long texts
    records = []
    try:
        header = next((row for row in reader if row), None)
        if not header:
            raise UserError(f"{path}: no examples (the file is empty, expected a header row and then examples)")
        for column in columns:
            if column not in header:
                raise UserError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
            if header.count(column) > 1:
                raise UserError(f"{path}: the header names column {column!r} {header.count(column)} times")
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{where}: expected {len(header)} fields as in the header, got {len(row)}")
            records.append((where, dict(zip(header, row, strict=True))))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return records


def _user_examples(path: Path, options: UserTaskOptions, labelled: bool = True) -> list[Example]:
    """The examples of a .csv, .tsv or JSON-lines file (optionally gzipped), format by suffix. Not `labelled`:
    the texts alone (label None), and the file needs no label column."""
    texts = [options.text_column, *filter(None, [options.text_pair_column])]
    columns = [*texts, options.label_column] if labelled else texts
    suffix = path.name.removesuffix(".gz").rpartition(".")[2].lower()
    if suffix in ("csv", "tsv"):
        records = _csv_records(path, "," if suffix == "csv" else "\t", columns)
    elif suffix in ("jsonl", "json"):
        records = _json_records(path)
    else:
        raise UserError(f"{path}: unknown file type, expected a .csv, .tsv, .jsonl or .json (JSON lines) file")
    examples = []
    for where, record in records:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with the fields {', '.join(columns)}")
        missing = [c for c in columns if c not in record]
        if missing:
            raise UserError(f"{where}: no field {missing[0]!r} (fields: {', '.join(record)})")
        values = tuple(record[c] for c in texts)
        if not all(isinstance(t, str) for t in values):
            raise UserError(f"{where}: the text fields ({', '.join(texts)}) should be strings")
        if not labelled:
            examples.append(Example(values, None, where))
            continue
        label = record[options.label_column]
        if options.multi_label:
            examples.append(Example(values, _user_label_set(label, options.label_separator, where), where))
            continue
        if label is None or str(label).strip() == "":
            raise UserError(f"{where}: no label in {options.label_column!r}")
        if not isinstance(label, str | int | float):  # bool is an int
            raise UserError(f"{where}: label {label!r} in {options.label_column!r} should be a string or a number")
        examples.append(Example(values, str(label).strip(), where))
    return _nonempty(path, examples)


def _user_label_set(value: Any, separator: str, where: str) -> tuple[str, ...]:
    """A multi-label field: a cell of names split on `separator` (empty: no label), or in JSON a list of names."""
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return _label_set(separator.join(value), separator, where) if value else ()
    if not isinstance(value, str):
        raise UserError(f"{where}: labels {value!r} should be a string of names separated by {separator!r} "
                        "(or a JSON list of names)")
    return _label_set(value, separator, where)


def _read_user(path: Path, options: UserTaskOptions) -> Splits:
    train = _user_examples(path, options)
    if options.dev_path:
        return train, _user_examples(Path(options.dev_path), options), None
    kept, held_out = _holdout(len(train), path)
    return [train[i] for i in kept], [train[i] for i in held_out], None


def _holdout(count: int, path: Path) -> tuple[list[int], list[int]]:
    """The rows (indices in file order) of a training file without a dev file (a user's, CEDR's) that finetune
    trains on and holds out as dev: after a seeded shuffle, the same for every run, the last 10 % (at least one) is
    dev. Both lists are in the shuffled order, which is finetune's."""
    if count < 2:
        raise UserError(f"{path}: only {count} example, need at least 2 to hold one out as dev "
                        f"(or give a dev file)")
    order = list(range(count))
    random.Random(_DEV_SEED).shuffle(order)  # the permutation depends on the count alone, not on the rows
    cut = count - max(1, count // _DEV_FRACTION)
    return order[:cut], order[cut:]


# ---------------------------------------------------------------------------------------------------- labels, load


def _label_names(train: list[Example], kind: str) -> tuple[str, ...]:
    """Class names in index order: the training split's, sorted (numerically when all are integers); for tags "O"
    comes first, so index 0 means "no entity" (words cut off by the length limit are tagged with it)."""
    names = {t for e in train for t in e.label} if kind in ("tag", "multi") else {e.label for e in train}
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names, key=lambda n: (n != "O", n) if kind == "tag" else n))


def _indexed(examples: list[Example], labels: tuple[str, ...], kind: str) -> list[Example]:
    """The examples with class names replaced by their index in `labels`."""
    index = {name: i for i, name in enumerate(labels)}

    def lookup(name: str, example: Example, word: int | None = None) -> int:
        if name not in index:
            what = "" if word is None else f" (word {word + 1})"
            raise UserError(f"{example.source}: label {name!r}{what} does not occur in the training data "
                            f"(known: {', '.join(labels)})")
        return index[name]

    if kind == "tag":
        return [Example(e.texts, tuple(lookup(t, e, i) for i, t in enumerate(e.label)), e.source) for e in examples]
    if kind == "multi":
        return [Example(e.texts, tuple(sorted(lookup(t, e) for t in e.label)), e.source) for e in examples]
    return [Example(e.texts, lookup(e.label, e), e.source) for e in examples]


def _task_data(name: str, kind: str, metrics: tuple[str, ...], regression: bool, splits: Splits,
               order_matters: bool = True, labels: tuple[str, ...] = ()) -> TaskData:
    """The spec and the examples with final labels: class indices, scores as floats, choice indices as read."""
    if kind == "choice":
        return TaskData(TaskSpec(name, kind, (), metrics), *splits)
    if regression:
        scores = [None if split is None else [Example(e.texts, _number(e.label, e.source), e.source) for e in split]
                  for split in splits]
        return TaskData(TaskSpec(name, kind, (), metrics, regression=True, order_matters=order_matters), *scores)
    labels = labels or _label_names(splits[0], kind)
    indexed = [None if split is None else _indexed(split, labels, kind) for split in splits]
    return TaskData(TaskSpec(name, kind, labels, metrics, order_matters=order_matters), *indexed)


def load_task(name: str, *, train_size: int | None = None, seed: int = 0,
              csv_options: UserTaskOptions | None = None, test: bool = True) -> TaskData:
    """A built-in task (files under `data_root()`), or `csv:PATH` for the user's own file read with `csv_options`.

    `train_size` keeps a random subset of that many training examples, the same for the same `seed`; the label
    names always come from the whole training split, so the subset does not change the model's outputs.
    `test=False`: no test split (`data.test` None), and imdb's test file is not even opened: choosing a recipe or
    a rate on dev cannot lean on the reviews kept for the final figures.
    """
    if train_size is not None and train_size < 1:
        raise UserError(f"train size {train_size}: expected a positive number of examples")
    if name.startswith("csv:"):
        options = csv_options or UserTaskOptions()
        kind = "pair" if options.text_pair_column else "multi" if options.multi_label else "single"
        metrics = (("spearman", "pearson") if options.regression else _MULTI_METRICS if options.multi_label
                   else ("accuracy", "macro_f1"))
        if options.symmetric and kind != "pair":
            raise UserError("--symmetric says the two texts of a pair have no order: it needs --pair-column")
        if options.multi_label and (options.text_pair_column or options.regression):
            raise UserError("--multi-label labels single texts with names: it takes neither --pair-column nor "
                            "--regression")
        if options.multi_label and not options.label_separator:
            raise UserError("--label-separator: expected a non-empty string between label names")
        data = _task_data("csv", kind, metrics, options.regression, _read_user(Path(name[4:]), options),
                          order_matters=not options.symmetric)
    elif name in TASKS:
        task = TASKS[name]
        data = _task_data(name, task.kind, task.metrics, task.regression, task.labelled(test), task.order_matters,
                          task.labels)
    else:
        raise _unknown_task(name)
    if train_size is not None and train_size < len(data.train):
        data.train = random.Random(seed).sample(data.train, train_size)
    return data


def _unknown_task(name: str) -> UserError:
    return UserError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}, or csv:PATH for your own "
                     f".csv, .tsv or .jsonl file")


def task_texts(name: str, csv_options: UserTaskOptions | None = None) -> list[tuple[str, ...]]:
    """The texts of a task's training examples, never their labels: text to pretrain on (`ctxlm pretrain --data
    task:NAME` or `csv:PATH`). One tuple per example, in file order: (text,); a pair's (a, b); a multiple-choice
    question's (context, *choices); a tagged sentence's (its words joined by spaces,).

    A built-in task's dev and test examples are never among them: where its training split has files of its own
    (GLUE, CoNLL-2003, ARC), no other file is read. `csv:PATH` reads `csv_options`' text columns and needs no label
    column; with a dev file (`dev_path`) the whole file is training text, else only the rows that finetune trains
    on, so pretraining never sees the 10 % that finetune holds out as dev.
    """
    if name.startswith("csv:"):
        options, path = csv_options or UserTaskOptions(), Path(name[4:])
        examples = _user_examples(path, options, labelled=False)
        if not options.dev_path:
            kept, _ = _holdout(len(examples), path)
            examples = [examples[i] for i in sorted(kept)]
        return [e.texts for e in examples]
    if name not in TASKS:
        raise _unknown_task(name)
    task = TASKS[name]
    examples = task.train_examples()
    return [(" ".join(e.texts),) if task.kind == "tag" else e.texts for e in examples]


def _imdb_corpus() -> tuple[list[str], list[str]]:
    """ULMFiT's language-model text for IMDb (Howard & Ruder 2018 §4): the training and the unlabelled reviews,
    never a test review. The validation reviews are the imdb task's dev reviews, held out of the training text:
    a model pretrained here has not read the reviews that fine-tuning recipes are chosen on.

    IMDb repeats some reviews across its files (54 training and 118 unlabelled reviews have the very text of a
    test review): a review whose text is a test review's is left out of both, and one whose text is a dev
    review's out of the training text."""
    train, dev = ([e.texts[0] for e in split] for split in _imdb_train_dev())
    unlabelled = [line for line in read_text(dataset_path("imdb", "unsup.txt.gz")).split("\n") if line.strip()]
    test = {e.texts[0] for e in _IMDB.read(dataset_path("imdb", "test.tsv.gz"))}
    held_out = test | set(dev)
    return [text for text in train + unlabelled if text not in held_out], [text for text in dev if text not in test]


# Data sets whose folders hold a task's files rather than text files, read by `ctxlm pretrain --data NAME` as
# (training texts, validation texts), one document each
CORPORA: dict[str, Callable[[], tuple[list[str], list[str]]]] = {"imdb": _imdb_corpus}
