"""Task readers and metrics: small files in the real formats, the errors a user can cause, the real data sets."""

import json

import pytest

from ctxlm.errors import UserError
from ctxlm.paths import data_root
from ctxlm.transfer.data import TASKS, Example, TaskSpec, UserTaskOptions, load_task, task_texts
from ctxlm.transfer.metrics import compute_metrics
from helpers import write_file as write


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    return tmp_path


def raises(where: str, what: str):
    """A UserError whose message names the file and line (`where`, e.g. "dev.tsv:3") and says `what`."""
    return pytest.raises(UserError, match=rf"{where}: .*{what}")


# ---------------------------------------------------------------------------------------------------- GLUE TSV


def test_sst2_reads_gzipped_train_and_strips_the_space_before_the_tab(root):
    write(root / "sst2/train.tsv.gz", "sentence\tlabel\na fine film \t1\n\ndull \t0\ngood \t1\n")
    write(root / "sst2/dev.tsv", "sentence\tlabel\nbad \t0")  # no final newline
    data = load_task("sst2")
    assert data.spec == TaskSpec("sst2", "single", ("0", "1"), ("accuracy",))
    assert data.train[0] == Example(("a fine film",), 1, f"{root}/sst2/train.tsv.gz:2")
    assert [e.source.rsplit(":", 1)[1] for e in data.train] == ["2", "4", "5"]  # blank line 3 skipped
    assert data.dev == [Example(("bad",), 0, f"{root}/sst2/dev.tsv:2")] and data.test is None


def test_mrpc_skips_the_bom_and_keeps_quote_characters(root):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    write(root / "mrpc/train.tsv", header + '1\t1\t2\the said " the witness\tthe " witness\n0\t3\t4\ta\tb\n', bom=True)
    write(root / "mrpc/dev.tsv", header + "0\t5\t6\tc\td\n", bom=True)
    data = load_task("mrpc")
    assert data.spec.kind == "pair" and data.spec.labels == ("0", "1") and data.spec.metrics[0] == "f1"
    assert data.train[0].texts == ('he said " the witness', 'the " witness') and data.train[0].label == 1
    assert len(data.train) == 2 and data.dev[0].label == 0


def test_stsb_scores_are_floats_and_a_bad_score_names_its_line(root):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tg\tf\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t{}\n"
    write(root / "stsb/train.tsv", header + row.format("5.000") + row.format("3.8"))
    write(root / "stsb/dev.tsv", header + row.format("1.5") + row.format("high"))
    with raises("stsb/dev.tsv:3", "'high' is not a number"):
        load_task("stsb")
    write(root / "stsb/dev.tsv", header + row.format("1.5"))
    data = load_task("stsb")
    assert data.spec.regression and data.spec.labels == () and data.spec.num_labels == 1
    assert [e.label for e in data.train] == [5.0, 3.8] and data.train[0].texts == ("A plane.", "An air plane.")


def test_rte_label_names_and_a_dev_label_unseen_in_training(root):
    header = "index\tsentence1\tsentence2\tlabel\n"
    write(root / "rte/train.tsv", header + "0\ta\tb\tnot_entailment\n1\tc\td\tentailment\n")
    write(root / "rte/dev.tsv", header + "0\te\tf\tentailment\n")
    data = load_task("rte")
    assert data.spec.labels == ("entailment", "not_entailment") and [e.label for e in data.train] == [1, 0]
    write(root / "rte/dev.tsv", header + "0\te\tf\tentailment\n1\tg\th\tneutral\n")
    with raises("rte/dev.tsv:3", r"label 'neutral' does not occur in the training data \(known: entailment, not_"):
        load_task("rte")


def test_cola_has_no_header_and_wrong_field_counts_name_the_line(root):
    write(root / "cola/train.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThem left.\n")
    write(root / "cola/dev.tsv", "gj04\t1\t\tShe left.")
    data = load_task("cola")
    assert len(data.train) == 2 and data.train[0].texts == ("Our friends won't buy this.",)
    assert data.spec.metrics == ("mcc", "accuracy") and [e.label for e in data.train] == [1, 0]
    write(root / "cola/dev.tsv", "gj04\t1\t\tShe left.\ngj04\t1\tShe left.\n")
    with raises("cola/dev.tsv:2", "expected 4 tab-separated fields, got 3"):
        load_task("cola")


def test_an_empty_split_and_bad_utf8_are_reported_with_the_file(root):
    write(root / "cola/train.tsv", "gj04\t1\t\tShe left.\n")
    write(root / "cola/dev.tsv", "\n\n")
    with raises("cola/dev.tsv", "no examples"):
        load_task("cola")
    (root / "cola/dev.tsv").write_bytes(b"gj04\t1\t\tShe left.\ngj04\t1\t\tCaf\xe9.\n")
    with raises("cola/dev.tsv:2", "not valid UTF-8"):
        load_task("cola")


# ---------------------------------------------------------------------------------------------------- CoNLL


CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


-DOCSTART- -X- -X- O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER"""


def test_conll_sentences_skip_docstart_and_put_o_first(root):
    write(root / "conll2003/train.txt.gz", CONLL_TRAIN)
    write(root / "conll2003/valid.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n\n")
    write(root / "conll2003/test.txt", "Peter NNP B-NP B-PER\n")
    data = load_task("conll2003")
    assert data.spec.labels == ("O", "B-MISC", "B-ORG", "B-PER", "I-PER") and data.spec.kind == "tag"
    assert [e.texts for e in data.train] == [("EU", "rejects", "German"), ("Peter", "Blackburn")]
    assert [e.label for e in data.train] == [(2, 0, 1), (3, 4)]
    assert data.train[1].source.endswith("train.txt.gz:10") and len(data.dev) == len(data.test) == 1


def test_conll_errors_name_the_line(root):
    write(root / "conll2003/train.txt.gz", CONLL_TRAIN)
    write(root / "conll2003/valid.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    write(root / "conll2003/test.txt", "Peter NNP B-NP B-PER\n")
    with raises("valid.txt:2", "expected 4 space-separated columns"):
        load_task("conll2003")
    write(root / "conll2003/valid.txt", "\nEU NNP B-NP B-ORG\nParis NNP I-NP B-LOC\n")
    with raises("valid.txt:2", r"label 'B-LOC' \(word 2\) does not occur in the training data"):
        load_task("conll2003")


# ---------------------------------------------------------------------------------------------------- choices


def copa_line(id_: int, question: str = "cause", label: int = 0) -> str:
    return json.dumps({"id": id_, "premise": f"Premise {id_}.", "choice1": "One.", "choice2": "Two.",
                       "question": question, "label": label}) + "\n"


def test_copa_splits_by_id_and_says_cause_or_effect(root):
    write(root / "copa/copa_dev.jsonl", copa_line(1) + copa_line(400, "effect", 1) + copa_line(401) + copa_line(500))
    data = load_task("copa")
    assert [e.texts[0] for e in data.train] == ["Premise 1. What was the cause?",
                                                "Premise 400. What happened as a result?"]
    assert len(data.dev) == 2 and data.train[1].label == 1 and data.train[1].texts[1:] == ("One.", "Two.")
    assert data.spec.labels == () and data.spec.num_labels == 1
    write(root / "copa/copa_dev.jsonl", copa_line(1) + '{"id": 2, "premise": \n' + copa_line(401))
    with raises("copa_dev.jsonl:2", "not valid JSON"):
        load_task("copa")
    write(root / "copa/copa_dev.jsonl", copa_line(1) + copa_line(401, "why"))
    with raises("copa_dev.jsonl:2", "cause"):
        load_task("copa")


def arc_item(key: str, labels=("A", "B", "C", "D")) -> dict:
    return {"id": "q", "question": "Which?", "choices": {"text": [f"t{x}" for x in labels], "label": list(labels)},
            "answerKey": key}


def test_arc_json_arrays_with_numeric_labels_and_a_bad_answer_key(root):
    write(root / "arc_easy/train.json", json.dumps([arc_item("B"), arc_item("3", ("1", "2", "3", "4"))], indent=2))
    write(root / "arc_easy/validation.json", json.dumps([arc_item("E", tuple("ABCDE"))], indent=2))
    write(root / "arc_easy/test.json.gz", json.dumps([arc_item("A", ("A", "B", "C"))]))
    data = load_task("arc_easy")
    assert data.train[0] == Example(("Which?", "tA", "tB", "tC", "tD"), 1, f"{root}/arc_easy/train.json:2")
    assert data.train[1].label == 2 and data.train[1].source.endswith("train.json:21")
    assert data.dev[0].label == 4 and len(data.dev[0].texts) == 6 and data.test[0].texts == ("Which?", "tA", "tB", "tC")
    write(root / "arc_easy/validation.json", json.dumps([arc_item("A"), arc_item("E")], indent=2))
    with raises("validation.json:21", r"answerKey 'E' is not among the choice labels \(A, B, C, D\)"):
        load_task("arc_easy")


def test_commonsenseqa_is_split_80_20_in_file_order(root):
    lines = [json.dumps({**arc_item("ABCDE"[i % 5], tuple("ABCDE")), "question": f"q{i}"}) for i in range(10)]
    write(root / "commonsenseqa/dev_rand_split.jsonl", "\n".join(lines) + "\n")
    data = load_task("commonsenseqa")
    assert [e.texts[0] for e in data.train] == [f"q{i}" for i in range(8)] and [e.label for e in data.dev] == [3, 4]


# ---------------------------------------------------------------------------------------------------- IMDb


def imdb_file(per_label: int, split: str = "train") -> str:
    """An IMDb split as PROVENANCE.md describes the files: header `id rating label sentence`, negative reviews
    then positive ones, by id."""
    rows = [f"{'pos' if label else 'neg'}_{i}\t{8 if label else 2}\t{label}\t{split} review {label}-{i} . So it ends ."
            for label in (0, 1) for i in range(per_label)]
    return "id\trating\tlabel\tsentence\n" + "\n".join(rows) + "\n"


def test_imdb_dev_is_a_fixed_balanced_part_of_the_training_reviews(root):
    write(root / "imdb/train.tsv.gz", imdb_file(40))
    write(root / "imdb/test.tsv.gz", imdb_file(5, "test"))
    data = load_task("imdb")
    assert data.spec == TaskSpec("imdb", "single", ("0", "1"), ("accuracy",)) and TASKS["imdb"].long_text == "windows"
    train, dev = [e.texts[0] for e in data.train], [e.texts[0] for e in data.dev]
    assert len(dev) == 8 and [e.label for e in data.dev].count(1) == 4  # a tenth of each label
    assert not set(train) & set(dev) and sorted(train + dev) == sorted(f"train review {k}-{i} . So it ends ."
                                                                        for k in (0, 1) for i in range(40))
    lines = {name: [int(e.source.rsplit(":", 1)[1]) for e in split] for name, split in (("train", data.train),
                                                                                          ("dev", data.dev))}
    assert all(numbers == sorted(numbers) for numbers in lines.values())  # both in file order
    assert sorted(lines["train"] + lines["dev"]) == list(range(2, 82))
    assert [e.texts[0] for e in data.test] == [f"test review {k}-{i} . So it ends ." for k in (0, 1) for i in range(5)]
    assert load_task("imdb", train_size=10, seed=3).dev == data.dev  # fixed: not the training seed's
    assert [t for (t,) in task_texts("imdb")] == train  # pretraining text: the training split, never dev or test


def test_imdb_holds_out_500_reviews_of_each_label(root):
    write(root / "imdb/train.tsv.gz", imdb_file(5_100))
    write(root / "imdb/test.tsv.gz", imdb_file(1, "test"))
    data = load_task("imdb")
    assert len(data.dev) == 1_000 and sum(e.label for e in data.dev) == 500 and len(data.train) == 9_200
    held_out = {e.source for e in data.dev}
    write(root / "imdb/test.tsv.gz", imdb_file(2, "test"))
    assert {e.source for e in load_task("imdb").dev} == held_out  # the same reviews, whatever else changes


def test_imdb_without_its_test_split_never_opens_the_test_file(root):
    write(root / "imdb/train.tsv.gz", imdb_file(40))
    write(root / "imdb/test.tsv.gz", "not\ta review file\n")  # read, it would fail
    with pytest.raises(UserError, match="test.tsv.gz"):
        load_task("imdb")
    data = load_task("imdb", train_size=10, seed=3, test=False)
    assert data.test is None and len(data.train) == 10 and len(data.dev) == 8
    write(root / "imdb/test.tsv.gz", imdb_file(5, "test"))
    whole = load_task("imdb", train_size=10, seed=3)
    assert (whole.train, whole.dev) == (data.train, data.dev) and len(whole.test) == 10  # the same splits


# ---------------------------------------------------------------------------------------------------- user files


def test_user_csv_with_quotes_pairs_and_a_held_out_dev(tmp_path):
    rows = "".join(f'"text, number {i}",second {i},{"yes" if i % 3 else "no"}\n' for i in range(20))
    path = write(tmp_path / "mine.csv", "sentence,other,label\n" + rows)
    options = UserTaskOptions(text_column="sentence", text_pair_column="other")
    data = load_task(f"csv:{path}", csv_options=options)
    assert data.spec == TaskSpec("csv", "pair", ("no", "yes"), ("accuracy", "macro_f1"))
    assert len(data.train) == 18 and len(data.dev) == 2
    assert data.train[0].texts[0].startswith("text, number ") and data.train[0].texts[1].startswith("second ")
    again = load_task(f"csv:{path}", csv_options=options, seed=1)
    assert again.dev == data.dev  # the held-out set does not depend on the training seed


def test_user_tsv_and_jsonl_with_a_dev_file_and_numeric_labels(tmp_path):
    train = write(tmp_path / "train.tsv", 'text\tlabel\nsay "hi\t10\nbye\t2\n')
    dev = write(tmp_path / "dev.jsonl", '{"text": "hello", "label": 10}\n')
    data = load_task(f"csv:{train}", csv_options=UserTaskOptions(dev_path=str(dev)))
    assert data.spec.labels == ("2", "10") and data.train[0].texts == ('say "hi',)  # numbers sort as numbers
    assert data.dev == [Example(("hello",), 1, f"{dev}:1")]
    reg = write(tmp_path / "scores.jsonl", "".join(json.dumps({"text": f"t{i}", "y": i / 2}) + "\n" for i in range(10)))
    data = load_task(f"csv:{reg}", csv_options=UserTaskOptions(label_column="y", regression=True))
    assert data.spec.metrics == ("spearman", "pearson") and data.spec.num_labels == 1
    assert sorted(e.label for e in data.train + data.dev) == [i / 2 for i in range(10)]


def test_user_file_errors(tmp_path):
    path = write(tmp_path / "mine.csv", "sentence,label\nhello,a\n")
    with pytest.raises(UserError, match=r"mine.csv: no column 'text' \(columns: sentence, label\)"):
        load_task(f"csv:{path}")
    path = write(tmp_path / "rows.csv", "text,label\nhello,a\nworld\nagain,b\n")
    with raises("rows.csv:3", "expected 2 fields"):
        load_task(f"csv:{path}")
    path = write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with raises("bad.jsonl:2", "no field 'label'"):
        load_task(f"csv:{path}")
    path = write(tmp_path / "scores.csv", "text,label\nhi,n/a\nho,1\n")
    with raises("scores.csv:2", "'n/a' is not a number"):
        load_task(f"csv:{path}", csv_options=UserTaskOptions(regression=True))
    path = write(tmp_path / "data.xlsx", "x")
    with pytest.raises(UserError, match="expected a .csv, .tsv, .jsonl"):
        load_task(f"csv:{path}")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown task 'sst3'.*sst2, mrpc.*commonsenseqa.*csv:PATH"):
        load_task("sst3")


def test_train_size_is_a_seeded_subset(tmp_path):
    path = write(tmp_path / "mine.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(200)))
    texts = {seed: [e.texts for e in load_task(f"csv:{path}", train_size=20, seed=seed).train] for seed in (0, 1)}
    assert len(texts[0]) == 20 and texts[0] == [e.texts for e in load_task(f"csv:{path}", train_size=20).train]
    assert texts[0] != texts[1]
    assert len(load_task(f"csv:{path}", train_size=10_000).train) == 180  # more than there are: all of them
    assert load_task(f"csv:{path}", train_size=1).spec.labels == ("0", "1")  # labels come from the whole split


# ---------------------------------------------------------------------------------------------------- metrics


def test_class_metrics_against_hand_computed_values():
    spec = TaskSpec("t", "single", ("0", "1"), ("mcc", "accuracy", "f1"))
    result = compute_metrics(spec, [1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0])  # TP 2, TN 2, FP 1, FN 1
    assert result == pytest.approx({"mcc": 1 / 3, "accuracy": 4 / 6, "f1": 2 / 3})
    assert all(type(v) is float for v in result.values())
    three = TaskSpec("t", "single", ("a", "b", "c"), ("macro_f1",))
    assert compute_metrics(three, [0, 1, 1, 2], [0, 0, 1, 2])["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_correlations_and_a_constant_prediction():
    spec = TaskSpec("t", "pair", (), ("spearman", "pearson"), regression=True)
    result = compute_metrics(spec, [1.0, 2.0, 5.0], [1.0, 2.0, 3.0])
    assert result == pytest.approx({"spearman": 1.0, "pearson": 4 / (2 * 78 / 9) ** 0.5})
    assert compute_metrics(spec, [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"spearman": 0.0, "pearson": 0.0}


def test_entity_f1_counts_whole_entities_unlike_word_accuracy():
    spec = TaskSpec("t", "tag", ("O", "B-LOC", "B-PER", "I-PER"), ("entity_f1", "accuracy"))
    labels = [[2, 3, 0, 1]]  # B-PER I-PER O B-LOC
    predictions = [[2, 0, 0, 1]]  # the person is cut short: 1 of 2 entities right, 3 of 4 words
    assert compute_metrics(spec, predictions, labels) == pytest.approx({"entity_f1": 0.5, "accuracy": 0.75})


# ---------------------------------------------------------------------------------------------------- real data

SIZES = {"sst2": (67_349, 872, None), "mrpc": (3_668, 408, None), "stsb": (5_749, 1_500, None),
         "rte": (2_490, 277, None), "cola": (8_551, 1_043, None), "conll2003": (14_041, 3_250, 3_453),
         "copa": (400, 100, None), "arc_easy": (2_251, 570, 2_376), "commonsenseqa": (976, 245, None),
         "imdb": (24_000, 1_000, 25_000)}


@pytest.mark.parametrize("name", SIZES)
def test_real_data_set_sizes(name):
    path = data_root() / name
    if not path.is_dir():
        pytest.skip(f"data set folder {path} absent")
    data = load_task(name)
    sizes = (len(data.train), len(data.dev), None if data.test is None else len(data.test))
    assert sizes == SIZES[name]
    assert data.spec.metrics == TASKS[name].metrics
