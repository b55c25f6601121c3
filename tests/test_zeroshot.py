"""Zero-shot reading comprehension: prompts, truncation, decoding to the first line break, scoring with the SQuAD
metric, the heuristic baseline, data readers and `ctxlm zeroshot` end to end."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import ctxlm as api
from ctxlm.errors import UserError
from ctxlm.qa.squad import Question, token_f1
from ctxlm.qa.zeroshot import (
    DEFAULT_TEMPLATE,
    build_prompt,
    check_template,
    conversation_histories,
    evaluate,
    fit_prompt,
    heuristic_answer,
    question_type,
    read_coqa,
    read_questions,
    sample_questions,
    zero_shot,
)
from helpers import assert_user_error, run_cli, tiny, tiny_tokenizer

pytestmark = pytest.mark.default_precision  # zero-shot answers as users get them: fp32 or bf16, as auto decides

PASSAGE = ("The committee was founded in 1975 in a small town. It met in Paris in 1998, when the chairman, "
           "John Smith, opened the session. The club that hosted it had 250 members, and it hired 3 coaches "
           "for the visitors.")


class ForcedDecoder(nn.Module):
    """A decoder whose every row emits the tokens of `text`, one per step, whatever the prompt (the last one
    repeats): what generation returns is known. It records the prompts it is given."""

    def __init__(self, tokenizer, text: str, max_positions: int = 1024) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # generation reads the device off a parameter
        self.tokenizer = tokenizer
        self.config = SimpleNamespace(model_type="gpt2", max_positions=max_positions)
        self.plan = tokenizer.encode(text)
        self.prompts: list[list[int]] = []

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> dict:
        return {"step": 0}

    def forward(self, ids, mask=None, cache=None, last_only=False):
        step = cache["step"]
        if step == 0:  # the prompts, each without its left padding
            real = mask if mask is not None else torch.ones_like(ids, dtype=torch.bool)
            self.prompts += [row[keep].tolist() for row, keep in zip(ids, real, strict=True)]
        cache["step"] += 1
        logits = torch.zeros(ids.shape[0], 1, self.tokenizer.vocab_size)
        logits[:, -1, self.plan[min(step, len(self.plan) - 1)]] = 1.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return api.load(tiny_model_dir).tokenizer


@pytest.fixture(scope="module")
def qa_model_dir(tmp_path_factory, tokenizer):
    """A tiny GPT-2 (untrained) with room for a short passage, a question and an answer."""
    return tiny("gpt2", tokenizer=tokenizer, max_positions=160, save_to=tmp_path_factory.mktemp("models") / "qa")


def question(qid="q1", text="Who opened the session?", context=PASSAGE, answer="John Smith", title="t"):
    return Question(qid, text, context, ((answer, context.find(answer)),), title)


def decoded_prompts(model):
    return [model.tokenizer.decode(p) for p in model.prompts]


# ------------------------------------------------------------------------------------------------------- prompts

def test_prompt_puts_document_then_history_then_the_question():
    prompt = build_prompt(DEFAULT_TEMPLATE, "The doc.", "And then?", [("Who?", "Ann"), ("Where?", "Rome")])
    assert prompt == "The doc.\n\nQ: Who?\nA: Ann\nQ: Where?\nA: Rome\nQ: And then?\nA:"
    assert build_prompt(DEFAULT_TEMPLATE, "The doc.", "Who?") == "The doc.\n\nQ: Who?\nA:"
    assert build_prompt("Story: {document} | {question} ->", "D", "Q?") == "Story: D | Q? ->"


def test_template_placeholders_are_checked():
    assert check_template("{document} {{literal}} {question}") == "{document} {{literal}} {question}"
    with pytest.raises(UserError, match=r"unknown placeholder \{passage\}.*\{document\}, \{history\}, \{question\}"):
        check_template("{passage}\nQ: {question}\nA:")
    with pytest.raises(UserError, match=r"unknown placeholder \{\}"):
        check_template("{} {question}")
    with pytest.raises(UserError, match=r"no \{question\}"):
        check_template("{document}\nA:")
    with pytest.raises(UserError, match="literal braces"):
        check_template("{document")
    with pytest.raises(UserError, match=r"no \{history\}"):
        check_template("{document} Q: {question} A:", history=True)


def test_conversations_are_a_paragraphs_questions_in_file_order():
    other = "Another paragraph, about Rome."
    questions = [question("a", "First?", answer="John Smith"), question("b", "Second?", answer="Paris"),
                 question("c", "Third?", answer="1998"), question("d", "New?", other, answer="Rome")]
    histories = conversation_histories(questions)
    assert histories["a"] == ()
    assert histories["c"] == (("First?", "John Smith"), ("Second?", "Paris"))
    assert histories["d"] == ()  # a new paragraph starts a new conversation


def test_the_model_is_prompted_with_the_history_and_a_custom_template(tokenizer):
    model = ForcedDecoder(tokenizer, " Paris\n")
    q = question("b", "Where did it meet?", answer="Paris")
    zero_shot(model, [q], history={"b": [("Who opened the session?", "John Smith")]})
    assert decoded_prompts(model) == [PASSAGE + "\n\nQ: Who opened the session?\nA: John Smith\n"
                                      "Q: Where did it meet?\nA:"]
    model.prompts.clear()
    zero_shot(model, [q], template="Q: {question} Passage: {document} A:")
    assert decoded_prompts(model) == [f"Q: Where did it meet? Passage: {PASSAGE} A:"]


def test_a_long_prompt_loses_the_documents_end_and_keeps_the_question(tokenizer):
    document = "the cat sees the house . " * 60
    ids, cut = fit_prompt(tokenizer, DEFAULT_TEMPLATE, document, "who sees the house?", [("first?", "one")], 80)
    prompt = tokenizer.decode(ids)
    assert cut and len(ids) <= 80
    assert prompt.startswith("the cat sees the house") and len(prompt) < len(document)
    assert prompt.endswith("\n\nQ: first?\nA: one\nQ: who sees the house?\nA:")

    short, cut = fit_prompt(tokenizer, DEFAULT_TEMPLATE, "the cat .", "who?", [], 80)
    assert not cut and tokenizer.decode(short) == "the cat .\n\nQ: who?\nA:"


def test_the_oldest_turns_go_when_the_history_alone_does_not_fit(tokenizer):
    turns = [(f"question number {i} about the cat?", f"answer {i}") for i in range(12)]
    ids, cut = fit_prompt(tokenizer, DEFAULT_TEMPLATE, "the cat sees the house .", "and now?", turns, 60)
    prompt = tokenizer.decode(ids)
    assert cut and len(ids) <= 60
    assert "answer 11\nQ: and now?\nA:" in prompt and "answer 0\n" not in prompt
    with pytest.raises(UserError, match=r"'why why .*\.\.\.' alone takes \d+ prompt tokens, more than the 60"):
        fit_prompt(tokenizer, DEFAULT_TEMPLATE, "doc", "why " * 80 + "?", [], 60)


def test_truncated_prompts_are_counted_and_warned_about(tokenizer):
    model = ForcedDecoder(tokenizer, " the cat\n", max_positions=64)
    questions = [question("long", "Who sees the house?", "the cat sees the house . " * 40, "the cat"),
                 question("short", "Who sees the house?", "the cat sees the house .", "the cat")]
    with pytest.warns(UserWarning, match="1 of 2 prompts were longer than the model's context of 64 tokens"):
        result = zero_shot(model, questions, max_answer_tokens=8)
    assert result.truncated == ["long"]
    assert max(len(p) for p in model.prompts) <= 64 - 8
    assert all(p.endswith("Q: Who sees the house?\nA:") for p in decoded_prompts(model))


# ------------------------------------------------------------------------------------------------------ decoding

def test_the_answer_ends_at_the_first_line_break(tokenizer):
    model = ForcedDecoder(tokenizer, " John Smith\nQ: who else?\nA: nobody")
    result = zero_shot(model, [question()])
    assert result.predictions == {"q1": "John Smith"}


def test_the_answer_ends_after_max_answer_tokens(tokenizer):
    model = ForcedDecoder(tokenizer, " the cat sees the house and the dog")
    result = zero_shot(model, [question()], max_answer_tokens=3)
    assert len(model.plan) > 3 and result.predictions["q1"] == tokenizer.decode(model.plan[:3]).strip()


def test_batches_keep_each_answer_with_its_question(qa_model_dir):
    model = api.load(qa_model_dir)
    questions = [question(f"q{i}", "Who sees the " + "big " * i + "house?", "the cat sees the house .", "the cat")
                 for i in range(5)]
    batched = zero_shot(model, questions, batch_size=2, max_answer_tokens=6).predictions
    alone = {q.id: zero_shot(model, [q], max_answer_tokens=6).predictions[q.id] for q in questions}
    assert batched == alone
    assert all("\n" not in answer for answer in batched.values())


def test_transformer_xl_sees_line_breaks_as_eos_and_answers():
    from ctxlm.qa.zeroshot import encode
    from ctxlm.tokenizers import WordTokenizer

    words = WordTokenizer(["<eos>", "<unk>", "the", "cat", "sat", "Q:", "A:", "who"])
    assert encode(words, "the cat\nQ: who\nA:") == [2, 3, 0, 5, 7, 0, 6]  # no <eos> after the open last line
    model = tiny("transformer-xl", tokenizer=words, dim=16, n_layers=1, head_dim=8, mlp_dim=32, mem_len=8,
                 clamp_len=1000, same_length=True)
    result = zero_shot(model, [question(text="who sat?", context="the cat sat", answer="the cat")],
                       max_answer_tokens=5)
    assert set(result.predictions["q1"].split()) <= set(words.words[1:])  # words, never the <eos> that ends it


def test_a_tokenizer_without_line_breaks_is_warned_about(corpus_dir):
    gpt = tiny_tokenizer("gpt", corpus_dir)
    with pytest.warns(UserWarning, match="drops line breaks"):
        zero_shot(ForcedDecoder(gpt, "the cat"), [question(context="the cat sat .")], max_answer_tokens=2)


def test_answers_are_scored_with_the_squad_metric(tokenizer):
    q = question(answer="John Smith")
    right = evaluate(ForcedDecoder(tokenizer, " John Smith.\n"), [q])
    assert right.model_metrics == {"exact_match": 1.0, "f1": 1.0}  # punctuation and case are normalised away
    partial = evaluate(ForcedDecoder(tokenizer, " Mr Smith\n"), [q])
    assert partial.model_metrics == {"exact_match": 0.0, "f1": token_f1("Mr Smith", "John Smith")}
    assert partial.heuristic_answers == {"q1": "John Smith"} and partial.heuristic_metrics["exact_match"] == 1.0
    assert partial.records() == [{"id": "q1", "question": q.question, "gold": ["John Smith"], "model": "Mr Smith",
                                  "heuristic": "John Smith", "truncated": False}]


def test_encoders_are_refused_with_a_pointer_to_fine_tuning():
    encoder = tiny("bert", seed=None, vocab_size=50, dim=16, n_layers=1)
    with pytest.raises(UserError, match="BERT encoder.*ctxlm finetune --model ... --task squad"):
        zero_shot(encoder, [question()])


# ----------------------------------------------------------------------------------------------------- heuristic

@pytest.mark.parametrize("text, kind", [
    ("Who opened the session?", "name"), ("When did it meet in Paris?", "date"),
    ("In what year was the committee founded?", "date"), ("How many coaches did the club hire?", "number"),
    ("How much did it cost?", "number"), ("Where did the committee meet?", "place"),
    ("Which club hosted it?", "name"), ("Was the session opened?", "yes/no"),
    ("Was it Paris or Rome?", "other"), ("What was opened?", "other"),
])
def test_question_types(text, kind):
    assert question_type(text) == kind


@pytest.mark.parametrize("text, answer", [
    ("Who opened the session?", "John Smith"),
    ("In what year did it meet in Paris?", "1998"),
    ("When was the committee founded?", "1975"),
    ("How many coaches did the club hire?", "3"),
    ("How many members did the club have?", "250"),
    ("Where did the committee meet?", "Paris"),
    ("Was the session opened by the chairman?", "yes"),
])
def test_heuristic_answers_by_type_and_window(text, answer):
    assert heuristic_answer(text, PASSAGE) == answer


def test_heuristic_skips_what_the_question_already_names_and_falls_back():
    assert heuristic_answer("Who did Denver beat in the final?", "Denver beat Carolina in the final.") == "Carolina"
    assert heuristic_answer("How many were there?", "Six-time winners met.") == "Six"  # not "Six-time"
    assert heuristic_answer("Who came?", "it was the one that came") == "it was the"  # no candidate at all
    assert heuristic_answer("When did it rain?", "rain fell on the old green town") == "fell"  # no date: a short span


# ---------------------------------------------------------------------------------------------------------- data

def write_squad(path, paragraphs):
    """paragraphs: [(context, [(id, question, answer)])] → a SQuAD v1.1 file."""
    data = [{"title": "T", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": text,
                                      "answers": [{"text": answer, "answer_start": context.find(answer)}]}
                                     for qid, text, answer in qas]} for context, qas in paragraphs]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def write_coqa(path, stories):
    """stories: [(id, story, [(question, answer)])] → a CoQA file, turns numbered from 1."""
    data = [{"id": sid, "story": story,
             "questions": [{"input_text": q, "turn_id": t} for t, (q, _) in enumerate(turns, 1)],
             "answers": [{"input_text": a, "turn_id": t} for t, (_, a) in enumerate(turns, 1)]}
            for sid, story, turns in stories]
    path.write_text(json.dumps({"version": "1.0", "data": data}))
    return path


def test_coqa_files_are_read_as_conversations(tmp_path):
    path = write_coqa(tmp_path / "coqa.json", [("s1", "Ann went to Rome.", [("Who went?", "Ann"), ("Where?", "Rome")]),
                                               ("s2", "Bob slept.", [("Who slept?", "Bob")])])
    questions = read_questions(path)
    assert [(q.id, q.question, q.answer_texts) for q in questions] == [
        ("s1_1", "Who went?", ["Ann"]), ("s1_2", "Where?", ["Rome"]), ("s2_1", "Who slept?", ["Bob"])]
    assert conversation_histories(questions)["s1_2"] == (("Who went?", "Ann"),)
    assert conversation_histories(questions)["s2_1"] == ()
    data = json.loads(path.read_text())
    del data["data"][1]["answers"][0]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"coqa.json: data\[1\] \(story 's2'\): question turn 1 has no answer"):
        read_coqa(path)
    path.write_text('{"data": 3}')
    with pytest.raises(UserError, match="expected SQuAD or CoQA JSON"):
        read_questions(path)


def test_the_sample_is_seeded_and_in_file_order():
    questions = [question(f"q{i}") for i in range(50)]
    sample = sample_questions(questions, 10, seed=1)
    assert sample == sample_questions(questions, 10, seed=1) != sample_questions(questions, 10, seed=2)
    assert [int(q.id[1:]) for q in sample] == sorted(int(q.id[1:]) for q in sample)
    assert sample_questions(questions, 500) == questions


# ----------------------------------------------------------------------------------------------------------- CLI

def test_cli_answers_scores_and_writes_jsonl(monkeypatch, capsys, tmp_path, qa_model_dir):
    data = write_squad(tmp_path / "squad.json", [
        ("The cat sees the house in 1990.", [("a", "Who sees the house?", "The cat"),
                                             ("b", "When does the cat see the house?", "1990")]),
        ("A dog follows the tall tree.", [("c", "What does the dog follow?", "the tall tree")])])
    out = tmp_path / "answers.jsonl"
    code, stdout, err = run_cli(monkeypatch, capsys, "zeroshot", "--model", qa_model_dir, "--task", "coqa-style",
                                "--data", data, "--max-answer-tokens", "4", "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "| model (" in stdout and "| heuristic (answer type + window) " in stdout
    assert "3 questions (coqa-style" in stdout and "prompts cut to the model's context: 0" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert records[1]["gold"] == ["1990"] and records[1]["heuristic"] == "1990"
    assert all(isinstance(r["model"], str) and "\n" not in r["model"] for r in records)


def test_cli_refuses_bad_input_in_one_line(monkeypatch, capsys, tmp_path, qa_model_dir):
    data = write_squad(tmp_path / "squad.json", [("The cat sat.", [("a", "Who sat?", "The cat")])])
    assert_user_error(run_cli(monkeypatch, capsys, "zeroshot", "--model", qa_model_dir, "--data", data,
                              "--prompt", "{passage} {question}"), "unknown placeholder {passage}")
    assert_user_error(run_cli(monkeypatch, capsys, "zeroshot", "--model", qa_model_dir, "--data", data,
                              "--task", "coqa-style", "--prompt", "{document}\\nQ: {question}\\nA:"), "no {history}")
    assert_user_error(run_cli(monkeypatch, capsys, "zeroshot", "--model", qa_model_dir, "--data", tmp_path / "no.json"),
                      "no.json")
