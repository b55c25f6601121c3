"""`ctxlm serve`'s JSON API, in process (Starlette's TestClient, httpx over ASGI), on tiny models of every family and
the packaged MiniLM: every endpoint's answers agree with the library's own functions; bad requests get a 4xx with
one line saying why, and the server answers correctly after them; concurrent /embed and /predict requests share
forward passes, each caller getting its own result.

The server runs the default precision (`--precision auto`): its answers are held to the library's within bounds
derived from the dtype that path ran here (bf16 where the hardware has it, or with CTXLM_PRECISION=bf16)."""

import asyncio
import json
import re
import socket

import httpx
import pytest
import torch
from starlette.testclient import TestClient

import ctxlm
from ctxlm.serve import Limits, Served, create_app, load_served
from ctxlm.serve.batching import MicroBatcher, Worker
from ctxlm.transfer.data import Example, TaskSpec
from ctxlm.transfer.model import TaskModel
from helpers import assert_user_error, run_cli, tiny
from tolerances import assert_fp_close, default_dtype, tolerance

RUSSIAN = "Ворота замка закрыты на замок"
pytestmark = pytest.mark.default_precision
# Two runs of one model on other batches (other padding, another sum order): MiniLM's sums of up to 1536 terms
# through embeddings, 6 blocks and the pooling; a tiny BERT's task model: 64 terms, ~4 products a block, 2 blocks,
# the head and the softmax (tests/tolerances.py; bf16 autocast counts the chained products alone).
MINILM = dict(terms=1536, depth=8)
TINY_TASK = dict(terms=64, depth=12)


def assert_same_prediction(result: dict, want: dict) -> None:
    """A served prediction is `ctxlm.predict`'s: its probability within the default path's rounding, and its label
    wherever that rounding cannot move the probability across the decision (above one half, two labels)."""
    bound = tolerance(default_dtype(), **TINY_TASK)["rtol"]
    assert result["probability"] == pytest.approx(want["probability"], rel=bound, abs=bound)
    if want["probability"] - 0.5 > bound:
        assert result["label"] == want["label"]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def minilm():
    return load_served("minilm")


@pytest.fixture(scope="module")
def models(corpus_dir):
    """A tiny model of each family, with a tokenizer trained on the test corpus."""
    out = {family: tiny(family, corpus=corpus_dir, **({"max_positions": 64} if family in ("gpt2", "bert") else {}))
           for family in ("gpt2", "bert", "elmo", "transformer-xl")}
    return {family: model.eval() for family, model in out.items()}


def served(model, task_model=None, **limits) -> Served:
    return Served(f"tiny-{model.config.model_type}", model, task_model, Limits(**limits))


def client(target, **options) -> TestClient:
    return TestClient(create_app(target if isinstance(target, Served) else served(target), **options))


def post(c: TestClient, path: str, body) -> dict:
    response = c.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, status: int, *fragments: str) -> str:
    """A 4xx (`status`) answer: JSON {"error": one line} holding every fragment."""
    assert response.status_code == status, (response.status_code, response.text)
    reason = response.json()["error"]
    assert reason and "\n" not in reason
    for fragment in fragments:
        assert fragment in reason, reason
    return reason


# ----------------------------------------------------------------------------------------- model and capabilities
def test_health_info_and_openapi_describe_the_model(minilm):
    with client(minilm) as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["family"] == "bert"
        assert health["capabilities"] == {"tokenize": True, "embed": True, "layers": True, "neighbours": True,
                                          "attention": True, "fill_mask": False, "generate": False,
                                          "memory": False, "predict": False}
        info = c.get("/info").json()
        assert (info["layers"], info["heads"], info["dim"], info["causal"]) == (6, 12, 384, False)
        assert info["limits"]["texts"] == 64 and info["batching"]["max_batch"] == 64
        paths = c.get("/openapi.json").json()["paths"]
        for route in ("/embed", "/tokenize", "/predict", "/generate", "/fill-mask", "/attention", "/layers",
                      "/neighbours", "/memory", "/health", "/info"):
            assert route in paths
        page = c.get("/")
        assert page.status_code == 200 and "ctxlm explorer" in page.text
        for asset in ("/static/app.js", "/static/style.css"):
            assert c.get(asset).status_code == 200
        script = c.get("/static/app.js").text
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", page.text)  # no CDN: works offline
        assert not re.search(r"(?:fetch|import)\(?\s*[\"'`](?:https?:)?//", script)


def test_capabilities_follow_the_family(models):
    expected = {"gpt2": {"generate"}, "bert": {"fill_mask"}, "elmo": set(), "transformer-xl": {"generate", "memory"}}
    for family, model in models.items():
        capabilities = served(model).capabilities()
        optional = {name for name in ("generate", "fill_mask", "memory", "predict") if capabilities[name]}
        assert optional == expected[family], family
        assert capabilities["attention"] == (family != "elmo")


# ---------------------------------------------------------------------------------------------------- endpoints
@pytest.mark.parametrize("options", [
    {}, {"layers": "second-to-last", "pool": "cls", "normalize": True}, {"layers": "concat-last-4"},
    {"layers": "all", "pool": "mean"}, {"layers": [0, -1], "pool": "last"}, {"layers": 3, "pool": "words"},
    {"layers": "sum-last-4", "pool": "words", "word_pool": "mean"}, {"layers": "sum", "pool": "none"}])
def test_embed_gives_what_ctxlm_embed_gives(minilm, options):
    texts = ["a gorgeous, witty, seductive movie.", RUSSIAN, ""]
    with client(minilm) as c:
        got = post(c, "/embed", {"texts": texts, **options})
    expected = ctxlm.embed(texts, minilm.lm, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    assert got["count"] == 3
    for vector, want in zip(got["vectors"], expected, strict=True):  # (an empty text has no words: [])
        assert_fp_close(torch.tensor(vector).reshape(want.shape), want, **MINILM, dtype=default_dtype())


def test_tokenize_shows_ids_offsets_and_words_and_russian_round_trips(minilm, models):
    with client(minilm) as c:
        response = c.post("/tokenize", json={"text": RUSSIAN})
        assert RUSSIAN.encode() in response.content  # UTF-8 as it is, not \u escapes
        got = response.json()
    encoding = minilm.tokenizer.encode_text(RUSSIAN)
    assert got["text"] == RUSSIAN and got["ids"] == encoding.ids and got["word_ids"] == encoding.word_ids
    assert got["tokens"][0] == "[CLS]" and got["tokens"][-1] == "[SEP]" and got["special"][0] and got["special"][-1]
    assert [RUSSIAN[a:b] for a, b in got["offsets"]] == got["pieces"]
    assert "".join(got["pieces"]) == RUSSIAN.replace(" ", "")
    assert max(w for w in got["word_ids"] if w is not None) == 4  # five words
    with client(models["gpt2"]) as c:  # a decoder reads the plain text: no special tokens, byte-level pieces
        got = post(c, "/tokenize", {"text": "the cat sees замок"})
    assert not any(got["special"]) and got["ids"] == models["gpt2"].tokenizer.encode("the cat sees замок")
    assert any("Ġ" in t for t in got["tokens"]) and not any("Ġ" in t for t in got["display"])  # entries, read
    assert "".join(got["display"]).startswith("the cat sees ") and "\\x" in "".join(got["display"])  # a split "з"
    with client(models["transformer-xl"]) as c:  # Transformer-XL: words
        got = post(c, "/tokenize", {"text": "the cat  sees"})
    assert got["tokens"] == ["the", "cat", "sees"] and got["offsets"] == [[0, 3], [4, 7], [9, 13]]


def test_attention_per_layer_and_head(minilm, models):
    with client(minilm) as c:
        one = post(c, "/attention", {"text": "the bank raised its rates", "layer": 6})
        every = post(c, "/attention", {"text": "the bank raised its rates"})
    assert one["layer_numbers"] == [6] and one["heads"] == 12 and one["tokens"][0] == "[CLS]"
    weights = torch.tensor(one["attention"][0])  # (heads, queries, keys)
    assert weights.shape == (12, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(12, 7), atol=1e-3, rtol=0)
    assert every["layer_numbers"] == [1, 2, 3, 4, 5, 6] and every["attention"][5] == one["attention"][0]
    with client(models["gpt2"]) as c:
        causal = torch.tensor(post(c, "/attention", {"text": "the cat sees the house"})["attention"][0])
    assert float(causal.triu(1).abs().max()) == 0
    with client(models["transformer-xl"]) as c:
        assert len(post(c, "/attention", {"text": "the cat sees the house"})["attention"]) == 2
    with client(models["elmo"]) as c:
        refused(c.post("/attention", json={"text": "the cat"}), 400, "LSTM", "no attention")


def test_the_polysemy_view_compares_a_word_across_sentences_layer_by_layer(minilm, models):
    sentences = ["The bank raised its interest rates.", "We sat on the river bank.", "no such word here",
                 "She went to the BANK to get money."]
    with client(minilm) as c:
        got = post(c, "/layers", {"sentences": sentences, "word": "Bank"})
    assert got["word"] == "bank" and got["found"] == [0, 1, 3] and got["words"] == ["bank", "bank", "BANK"]
    assert got["layer_numbers"] == list(range(7)) and got["layer_names"][0] == "embeddings"
    cosine = torch.tensor(got["cosine"])  # (layers + 1, 3, 3)
    assert cosine.shape == (7, 3, 3)
    torch.testing.assert_close(cosine.diagonal(dim1=1, dim2=2), torch.ones(7, 3), atol=2e-4, rtol=0)
    # the same cosines from ctxlm.embed's word vectors
    words = [["The", "bank", "raised", "its", "interest", "rates", "."],
             ["We", "sat", "on", "the", "river", "bank", "."]]
    a, b = (v[i] for v, i in zip(ctxlm.embed(words, minilm.lm, layers="all", pool="words", word_pool="mean"), (1, 5),
                                  strict=True))
    torch.testing.assert_close(cosine[:, 0, 1], torch.nn.functional.cosine_similarity(a, b, dim=-1), atol=2e-4, rtol=0)
    # ELMo's character layer is context-free: the word's vectors there are one vector
    with client(models["elmo"]) as c:
        elmo = post(c, "/layers", {"sentences": ["the cat sees the house .", "a dog likes the house"], "word": "house"})
    assert elmo["layer_names"][0].startswith("characters") and elmo["cosine"][0][0][1] == pytest.approx(1, abs=1e-4)
    assert elmo["cosine"][-1][0][1] < 0.9999
    with client(minilm) as c:
        refused(c.post("/layers", json={"sentences": sentences, "word": "castle"}), 400, "castle", "in 0 of the 4")
        refused(c.post("/layers", json={"sentences": sentences, "word": "two words"}), 400, "one word")
        refused(c.post("/layers", json={"sentences": ["only one"], "word": "one"}), 400, "at least 2")


def test_neighbours_under_table_7s_layer_combinations(minilm, models):
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply.",
             "Shares dropped at the close of trading."]
    with client(minilm) as c:
        got = post(c, "/neighbours", {"texts": texts})
    names = [combination["name"] for combination in got["combinations"]]
    assert names == ["embeddings", "second-to-last", "last", "sum-last-4", "concat-last-4", "sum"]
    for combination in got["combinations"]:
        layers = {"embeddings": 0}.get(combination["name"], combination["name"])
        vectors = ctxlm.embed(texts, minilm.lm, layers=layers, pool="mean", normalize=True)
        cosine = vectors @ vectors.T
        torch.testing.assert_close(torch.tensor(combination["cosine"]), cosine, atol=2e-4, rtol=0)
        assert combination["nearest"] == cosine.fill_diagonal_(-2).argmax(-1).tolist()
    last = got["combinations"][2]
    assert last["nearest"][:2] == [1, 0] and last["nearest"][2:] == [3, 2]  # the sentence pairs find each other
    with client(models["gpt2"]) as c:  # two layers: the last-four readings do not exist
        assert [x["name"] for x in post(c, "/neighbours", {"texts": texts, "pool": "last"})["combinations"]] == [
            "embeddings", "second-to-last", "last", "sum"]
        refused(c.post("/neighbours", json={"texts": texts, "pool": "cls"}), 400, "cls", "encoder")


def test_fill_mask_for_a_masked_lm(models, minilm):
    bert = models["bert"]
    with client(bert) as c:
        got = post(c, "/fill-mask", {"text": "the cat [MASK] the house .", "top_k": 3})
        refused(c.post("/fill-mask", json={"text": "no mask here"}), 400, "[MASK]")
    (mask,) = got["masks"]
    encoding = bert.tokenizer.encode_text("the cat [MASK] the house .")
    assert mask["position"] == encoding.ids.index(bert.tokenizer.mask_id)
    with torch.no_grad():
        logits = bert(torch.tensor([encoding.ids])).logits[0, mask["position"]]
    logits[sorted(bert.tokenizer.special_ids)] = float("-inf")
    best = logits.softmax(-1).topk(3)
    assert [c["id"] for c in mask["candidates"]] == best.indices.tolist()
    assert [c["probability"] for c in mask["candidates"]] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert [c["display"] for c in mask["candidates"]] == bert.tokenizer.token_texts(best.indices.tolist())
    with client(minilm) as c:
        refused(c.post("/fill-mask", json={"text": "a [MASK] b"}), 400, "no masked-LM head")
    with client(models["gpt2"]) as c:
        refused(c.post("/fill-mask", json={"text": "a [MASK] b"}), 400, "no masked-LM head", "/generate")


def _events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
        events.append((kind, data))
    return events


@pytest.mark.parametrize("family", ["gpt2", "transformer-xl"])
def test_generate_step_by_step_as_ctxlm_generate_does(models, family):
    model = models[family]
    prompt = "the cat sees"
    with client(model) as c:
        greedy = post(c, "/generate", {"prompt": prompt, "max_new_tokens": 6})
        sampled = post(c, "/generate", {"prompt": prompt, "max_new_tokens": 6, "temperature": 0.9, "top_k": 20,
                                        "top_p": 0.95, "seed": 3, "candidates": 4})
        streamed = c.post("/generate", json={"prompt": prompt, "max_new_tokens": 6, "temperature": 0.9,
                                             "top_k": 20, "top_p": 0.95, "seed": 3, "candidates": 4,
                                             "stream": True})
    assert greedy["text"] == ctxlm.generate(model, prompt, max_new_tokens=6)[0]
    assert sampled["text"] == ctxlm.generate(model, prompt, max_new_tokens=6, temperature=0.9, top_k=20,
                                             top_p=0.95, seed=3)[0]
    for result in (greedy, sampled):  # each step's piece of text, joined, is the continuation
        assert "".join(step["piece"] for step in result["steps"]) == result["text"]
    for step in greedy["steps"]:  # greedy: the chosen token is the first candidate
        assert step["id"] == step["candidates"][0]["id"]
    for step in greedy["steps"] + sampled["steps"]:  # tokens shown as text, the raw entries kept beside them
        assert step["display"] == model.tokenizer.token_texts([step["id"]])[0]
        assert [c["display"] for c in step["candidates"]] == model.tokenizer.token_texts(
            [c["id"] for c in step["candidates"]])
        assert not any(c["display"].startswith("Ġ") for c in step["candidates"])
    for step in sampled["steps"]:
        probabilities = [c["probability"] for c in step["candidates"]]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) <= 4
        assert 0 < step["probability"] <= 1
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    assert [kind for kind, _ in events] == ["message"] * len(sampled["steps"]) + ["done"]
    assert [data for _, data in events[:-1]] == sampled["steps"]
    assert events[-1][1]["text"] == sampled["text"] and events[-1][1]["finished"] in ("eos", "length")


def test_transformer_xl_memory_holds_the_last_positions(models):
    with client(models["transformer-xl"]) as c:
        got = post(c, "/memory", {"segments": ["the cat sees the house", "a dog likes", "the old man finds"],
                                  "mem_len": 4})
    first, second, third = got["segments"]
    assert first["memory"] == [] and first["tokens"] == ["the", "cat", "sees", "the", "house"]
    assert second["memory"] == [{"segment": 0, "token": t} for t in ["cat", "sees", "the", "house"]]
    assert third["memory"] == [{"segment": 0, "token": "house"}] + [{"segment": 1, "token": t}
                                                                    for t in ["a", "dog", "likes"]]
    assert got["memory"] == [{"segment": 2, "token": t} for t in ["the", "old", "man", "finds"]]
    for segment in got["segments"]:
        for layer in segment["attention_by_segment"]:
            assert len(layer) == segment["segment"] + 1 and sum(layer) == pytest.approx(1, abs=1e-3)
    assert third["attention_by_segment"][0][0] > 0  # the memory's word of segment 1 is looked at


# ------------------------------------------------------------------------------------------- fine-tuned runs
def test_predict_from_a_fine_tuned_run_folder(models, tmp_path):
    spec = TaskSpec("sentiment", "single", ("neg", "pos"), ("accuracy",))
    torch.manual_seed(0)
    TaskModel(models["bert"], spec, max_length=32).save_checkpoint(tmp_path / "run" / "model")
    target = load_served(tmp_path / "run")
    assert target.task_model is not None and target.capabilities()["predict"]
    texts = ["the cat sees the house .", "a dog likes an open door ."]
    with client(target) as c:
        got = post(c, "/predict", {"inputs": [texts[0], {"text": texts[1]}]})
        assert c.get("/info").json()["task"] == {"name": "sentiment", "kind": "single", "labels": ["neg", "pos"],
                                                 "regression": False}
        refused(c.post("/predict", json={"inputs": [["two", "texts"]]}), 400, "inputs[0]", "a text")
    from ctxlm.transfer.predict import predict

    expected = predict(target.task_model, [Example((t,), None) for t in texts])
    for result, want in zip(got["predictions"], expected, strict=True):
        assert_same_prediction(result, want)
        assert sum(p["probability"] for p in result["probabilities"]) == pytest.approx(1, abs=1e-3)
        assert result["probabilities"][0]["label"] == result["label"]


def test_predict_every_task_kind(models):
    from ctxlm.qa.model import SpanModel

    bert = models["bert"]
    kinds = {
        "pair": (TaskSpec("nli", "pair", ("yes", "no"), ("accuracy",)), [["the cat", "a dog"], "the cat\ta dog"]),
        "regression": (TaskSpec("sts", "pair", (), ("pearson",), regression=True, order_matters=False),
                       [["the cat", "a dog"]]),
        "choice": (TaskSpec("copa", "choice", (), ("accuracy",)),
                   [{"context": "the cat sees", "choices": ["the house", "a red ball", "the tree"]}]),
        "tag": (TaskSpec("ner", "tag", ("O", "PER", "LOC"), ("f1",)), ["the old man sees the river", ["a", "dog"]]),
        "multi": (TaskSpec("emotions", "multi", ("joy", "fear", "anger"), ("macro_f1",), threshold=0.45),
                  ["the cat sees the house", {"text": "a dog"}]),
    }
    for name, (spec, inputs) in kinds.items():
        torch.manual_seed(0)
        task_model = TaskModel(bert, spec, max_length=32).eval()
        with client(served(bert, task_model)) as c:
            results = post(c, "/predict", {"inputs": inputs})["predictions"]
        assert len(results) == len(inputs), name
        if name == "pair":
            assert results[0] == results[1] and {p["label"] for p in results[0]["probabilities"]} == {"yes", "no"}
        elif name == "regression":
            assert isinstance(results[0]["label"], float) and "probabilities" not in results[0]
        elif name == "multi":  # every label's probability; the labels that reach the model's threshold
            for result in results:
                assert list(result["probabilities"]) == ["joy", "fear", "anger"]
                assert result["labels"] == [label for label, p in result["probabilities"].items() if p >= 0.45]
        elif name == "choice":
            assert len(results[0]["probabilities"]) == 3 and sum(results[0]["probabilities"]) == pytest.approx(1, 1e-3)
            assert results[0]["label"] in (0, 1, 2)
        else:
            assert results[0]["words"] == ["the", "old", "man", "sees", "the", "river"]
            assert len(results[0]["label"]) == 6 and set(results[0]["label"]) <= {"O", "PER", "LOC"}
            assert len(results[1]["label"]) == 2
    torch.manual_seed(0)
    squad = SpanModel(bert, max_length=64, doc_stride=16, max_question_tokens=16).eval()
    with client(served(bert, squad)) as c:
        (answer,) = post(c, "/predict", {"inputs": [{"question": "who sees the house ?",
                                                     "context": "the old man sees the house ."}]})["predictions"]
        refused(c.post("/predict", json={"inputs": ["a bare text"]}), 400, "question", "context")
    assert 1 <= len(answer["n_best"]) <= 5 and answer["answer"] == answer["n_best"][0]["answer"]
    assert answer["answer"] in "the old man sees the house ." and 0 < answer["probability"] <= 1


# ------------------------------------------------------------------------------ bad requests: 4xx, never a 500
def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_keeps_answering(minilm, models):
    limits = Limits(texts=4, chars=100, total_chars=250, body_bytes=2000, attention_tokens=12, new_tokens=16,
                    numbers=50_000)
    text = "the cat sees the house ."
    cases = [
        ("/embed", b"{not json", 400, "not valid JSON"),
        ("/embed", b"", 400, "empty"),
        ("/embed", b"[1, 2]", 400, "JSON object"),
        ("/embed", b'{"texts": [NaN]}', 400, "NaN"),
        ("/embed", b"\xff\xfe", 400, "UTF-8"),
        ("/embed", {"texts": "one string"}, 400, "list of strings"),
        ("/embed", {"texts": []}, 400, "at least 1"),
        ("/embed", {"texts": [1, 2]}, 400, "texts[0]"),
        ("/embed", {"texts": ["a"] * 5}, 413, "limit of 4"),
        ("/embed", {"texts": ["x" * 101]}, 413, "characters"),
        ("/embed", {"texts": ["x" * 90] * 3}, 413, "per request"),
        ("/embed", {"texts": ["x" * 3000]}, 413, "bytes"),
        ("/embed", {"texts": [text], "layers": "sum-last-9"}, 400, "layers='sum-last-9'"),
        ("/embed", {"texts": [text], "layers": 99}, 400, "layers=99"),
        ("/embed", {"texts": [text], "layers": [0, "x"]}, 400, "layers="),
        ("/embed", {"texts": [text], "pool": "max"}, 400, "pool"),
        ("/embed", {"texts": [text], "normalize": "yes"}, 400, "normalize"),
        ("/embed", {"texts": [text], "colour": "red"}, 400, "unknown field 'colour'"),
        ("/embed", {"texts": [text] * 4, "pool": "none", "layers": "all"}, 413, "numbers"),
        ("/tokenize", {"text": None}, 400, "text"),
        ("/tokenize", {}, 400, "missing field 'text'"),
        ("/attention", {"text": " ".join(["word"] * 20)}, 413, "at most 12"),
        ("/attention", {"text": text, "layer": 7}, 400, "layer=7"),
        ("/attention", {"text": text, "layer": 1.5}, 400, "layer=1.5"),
        ("/layers", {"sentences": [text, text], "word": ""}, 400, "word is empty"),
        ("/neighbours", {"texts": [text]}, 400, "at least 2"),
        ("/generate", {"prompt": text}, 400, "not a decoder"),
        ("/predict", {"inputs": [text]}, 400, "not a fine-tuned model"),
        ("/memory", {"segments": [text]}, 400, "no segment memory"),
    ]
    target = Served("minilm", minilm.lm, None, limits)
    with client(target) as c:
        good = post(c, "/embed", {"texts": [text]})["vectors"]
        for path, body, status, fragment in cases:
            response = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
            refused(response, status, fragment)
        refused(c.get("/embed"), 405, "Method Not Allowed")
        refused(c.get("/no/such/page"), 404, "Not Found")
        assert post(c, "/embed", {"texts": [text]})["vectors"] == good  # still there, still right
        assert c.get("/health").json()["status"] == "ok"
    decoder = Served("gpt2", models["gpt2"], None, Limits(new_tokens=16))  # 64 positions
    with client(decoder) as c:
        for body, fragment in [({"prompt": text, "max_new_tokens": 0}, "max_new_tokens=0"),
                               ({"prompt": text, "max_new_tokens": 17}, "from 1 to 16"),
                               ({"prompt": text, "temperature": -1}, "temperature"),
                               ({"prompt": text, "top_p": 0}, "top_p"),
                               ({"prompt": text, "top_k": 0}, "top_k"),
                               ({"prompt": text, "seed": -1}, "seed"),
                               ({"prompt": text, "stream": 1}, "stream"),
                               ({"prompt": "the " * 70}, "context")]:
            refused(c.post("/generate", json=body), 413 if fragment == "context" else 400, fragment)
        assert post(c, "/generate", {"prompt": text, "max_new_tokens": 3})["text"] == ctxlm.generate(
            models["gpt2"], text, max_new_tokens=3)[0]


# ------------------------------------------------------------------------------------------------ micro-batching
def _concurrently(app, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(c.post(path, json=body) for path, body in requests))

    return asyncio.run(run())


def _count_forwards(monkeypatch, module) -> list[int]:
    calls = []
    forward = module.forward

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", counted)
    return calls


@pytest.mark.parametrize("max_batch", [64, 1])
def test_concurrent_embed_requests_share_forward_passes(minilm, monkeypatch, max_batch):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(16)]
    expected = ctxlm.embed(texts, minilm.lm)
    app = create_app(minilm, max_batch=max_batch, max_wait=0.25)
    calls = _count_forwards(monkeypatch, minilm.lm.backbone)
    responses = _concurrently(app, [("/embed", {"texts": [t]}) for t in texts])
    for response, want in zip(responses, expected, strict=True):  # each caller its own vector
        assert response.status_code == 200
        assert_fp_close(torch.tensor(response.json()["vectors"][0]), want, **MINILM, dtype=default_dtype())
    stats = app.state.embedder.stats
    if max_batch == 1:
        assert len(calls) == 16 and stats.batches == 16 and stats.largest == 1
    else:
        assert len(calls) <= 2 and stats.batches <= 2 and stats.largest >= 8, (calls, stats)


def test_requests_with_other_options_batch_apart_and_each_gets_its_own(minilm):
    app = create_app(minilm, max_wait=0.25)
    requests = [("/embed", {"texts": ["the cat", "a dog"]}), ("/embed", {"texts": ["the cat"], "normalize": True}),
                ("/embed", {"texts": ["a bird"], "layers": "second-to-last"}), ("/embed", {"texts": ["a dog"]})]
    responses = _concurrently(app, requests)
    for (_, body), response in zip(requests, responses, strict=True):
        options = {k: v for k, v in body.items() if k != "texts"}
        assert_fp_close(torch.tensor(response.json()["vectors"]), ctxlm.embed(body["texts"], minilm.lm, **options),
                        **MINILM, dtype=default_dtype())
    assert app.state.embedder.stats.batches == 3  # plain (two requests), normalized, second-to-last


def test_concurrent_predict_requests_share_forward_passes(models, monkeypatch):
    bert = models["bert"]
    spec = TaskSpec("sentiment", "single", ("neg", "pos"), ("accuracy",))
    torch.manual_seed(0)
    task_model = TaskModel(bert, spec, max_length=32).eval()
    texts = [f"the cat sees the house {'.' * (i % 3)}" for i in range(10)]
    from ctxlm.transfer.predict import predict

    expected = predict(task_model, [Example((t,), None) for t in texts])
    app = create_app(served(bert, task_model), max_wait=0.25)
    calls = _count_forwards(monkeypatch, bert.backbone)
    responses = _concurrently(app, [("/predict", {"inputs": [t]}) for t in texts])
    assert len(calls) == 1 and calls[0] == 10
    for response, want in zip(responses, expected, strict=True):
        (result,) = response.json()["predictions"]
        assert_same_prediction(result, want)


def test_a_failing_batch_fails_only_the_request_at_fault():
    def run_batch(key, items):
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def scenario():
        batcher = MicroBatcher(run_batch, Worker(), max_batch=8, max_wait=0.1)
        results = await asyncio.gather(batcher.submit("k", ["a", "b"]), batcher.submit("k", ["bad"]),
                                       batcher.submit("k", ["c"]), return_exceptions=True)
        after = await batcher.submit("k", ["d"])  # the batcher lives on
        await batcher.close()
        return results, after, batcher.stats

    (first, bad, third), after, stats = asyncio.run(scenario())
    assert first == ["A", "B"] and third == ["C"] and after == ["D"]
    assert isinstance(bad, ValueError)
    assert stats.batches == 3  # the failed batch of three requests, run again one by one (two succeed), then "d"


# ---------------------------------------------------------------------------------------------- the command line
def test_serve_binds_loopback_by_default_and_says_when_a_port_is_taken(monkeypatch, capsys, tiny_model_dir):
    import ctxlm.serve.server

    started = {}
    monkeypatch.setattr(ctxlm.serve.server, "run", lambda app, host, port, log_level: started.update(
        app=app, host=host, port=port))
    code, _, err = run_cli(monkeypatch, capsys, "serve", tiny_model_dir, "--port", "0")
    assert code in (0, None), err
    assert started["host"] == "127.0.0.1" and started["port"] == 0 and started["app"].state.served.lm is not None
    assert "warning" not in err
    code, _, err = run_cli(monkeypatch, capsys, "serve", tiny_model_dir, "--host", "0.0.0.0", "--port", "0")
    assert started["host"] == "0.0.0.0" and "warning: listening on 0.0.0.0" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_user_error(run_cli(monkeypatch, capsys, "serve", tiny_model_dir, "--port", port), str(port),
                          "--port")
    assert_user_error(run_cli(monkeypatch, capsys, "serve", "no/such/model", "--port", "0"), "no/such/model")
