"""RoBERTa: the converted reference matches `transformers` (padded batches too), its byte-level tokenizer gives the
reference tokenizer's ids, the objective has its defining properties (a new mask every epoch, full sentences packed
across documents with a separator), and `ctxlm pretrain`, `finetune`, `embed` and `serve` run on the family."""

import csv
import json

import pytest
import torch

import ctxlm
from ctxlm.config import RobertaConfig, preset
from ctxlm.convert.hf_roberta import config_from_hf, state_dict_from_hf
from ctxlm.errors import UserError
from ctxlm.models.roberta import RobertaModel
from ctxlm.pretrain.job import objective_of
from ctxlm.pretrain.masked_lm import IGNORE, MaskedLMBatches, Vocabulary, pack_full_sentences, word_starts
from ctxlm.tokenizers import Tokenizer
from ctxlm.transfer.model import TaskModel
from ctxlm.transfer.predict import parse_inputs, predict
from helpers import metrics_records, run_cli, tiny_tokenizer, write_documents
from tolerances import assert_fp_close

TEXTS = ["the cat sees the house .", "Hello  world, isn't it?", " a leading space", "Ворота замка закрыты"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # the published vocabulary's ids 0-3, and its <mask>


# ----------------------------------------------------------------------------------- parity with `transformers`
CONFIGS = [  # (layers, heads, head width, intermediate, vocab) — odd sizes on purpose
    (2, 4, 16, 128, 97),
    (3, 6, 16, 200, 211),
]


def fp32(layers, heads, head_dim, intermediate, vocab) -> dict:
    """Both sides' float32 rounding (tests/tolerances.py), as for BERT (tests/test_bert_parity.py): sums of up to
    `intermediate` terms through the embeddings, the blocks and the masked-LM head."""
    return dict(terms=max(intermediate, heads * head_dim), depth=layers + 2)


def reference_pair(layers, heads, head_dim, intermediate, vocab, layout="RobertaForMaskedLM"):
    """A random `transformers` RoBERTa in the published shape (one token type, LayerNorm eps 1e-5, positions from
    pad_token_id + 1 = 2) with order-1 activations (test_bert_parity's scaling), and its conversion."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=vocab, hidden_size=heads * head_dim, num_hidden_layers=layers,
                                        num_attention_heads=heads, intermediate_size=intermediate,
                                        max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
                                        pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = getattr(transformers, layout)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
            elif "embeddings" in name:  # positions and the one token type large enough that a shift shows
                p.normal_(0.0, 0.5)
    state = ref.state_dict()
    ours_config = config_from_hf(config.to_dict(), state)
    ours = RobertaModel(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours_config))
    return ref, ours


def padded(vocab, left=False):
    """Three rows of 13, 10 and 6 tokens, padded with <pad> (id 1) on the right (or the same rows on the left)."""
    torch.manual_seed(1)
    lengths = torch.tensor([13, 10, 6])
    mask = torch.arange(13)[None] < lengths[:, None]
    ids = torch.randint(5, vocab, (3, 13)).masked_fill(~mask, 1)
    if left:
        ids = torch.stack([row.roll(13 - n) for row, n in zip(ids, lengths.tolist(), strict=True)])
        mask = mask.flip(1)
    return ids, mask, lengths


@pytest.mark.numeric
@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"L{s[0]}-H{s[1]}x{s[2]}")
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_masked_lm_matches_reference_layer_by_layer(spec, left):
    ref, ours = reference_pair(*spec)
    assert ours.config.max_positions == 64 and ours.config.n_segments == 1 and not ours.config.nsp_head
    ids, mask, lengths = padded(spec[4], left)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), output_hidden_states=True)
        got = ours(ids, mask=mask)
    assert len(got.hidden.states) == spec[0] + 1
    for i in range(len(ids)):  # real positions only: padding carries no meaning
        real = mask[i]
        for layer, (a, b) in enumerate(zip(got.hidden.states, expected.hidden_states, strict=True)):
            assert_fp_close(a[i, real], b[i, real], **fp32(*spec), msg=f"layer {layer}")
        assert_fp_close(got.logits[i, real], expected.logits[i, real], **fp32(*spec))


@pytest.mark.numeric
def test_positions_count_real_tokens_so_padding_changes_nothing():
    """A text reads the same states alone, right-padded and left-padded (the reference's positions skip padding)."""
    _, ours = reference_pair(*CONFIGS[0])
    right, mask, lengths = padded(CONFIGS[0][4])
    left, left_mask, _ = padded(CONFIGS[0][4], left=True)
    n = int(lengths[2])
    with torch.no_grad():
        alone = ours(right[2:3, :n]).logits[0]
        from_right = ours(right, mask=mask).logits[2, :n]
        from_left = ours(left, mask=left_mask).logits[2, -n:]
    assert_fp_close(from_right, alone, **fp32(*CONFIGS[0]))
    assert_fp_close(from_left, alone, **fp32(*CONFIGS[0]))


@pytest.mark.numeric
def test_the_encoder_layout_keeps_its_pooler():
    ref, ours = reference_pair(*CONFIGS[0], layout="RobertaModel")
    assert (ours.config.pooler, ours.config.mlm_head, ours.config.nsp_head) == (True, False, False)
    ids, mask, _ = padded(CONFIGS[0][4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long())
        got = ours(ids, mask=mask)
    assert got.logits is None
    assert_fp_close(got.pooled, expected.pooler_output, **fp32(*CONFIGS[0]))


def test_the_config_refuses_what_roberta_is_not():
    with pytest.raises(UserError, match="no next-sentence prediction"):
        RobertaConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, nsp_head=True, pooler=True).validate()
    with pytest.raises(UserError, match="model_type 'roberta'"):
        config_from_hf({"model_type": "bert"}, {})
    with pytest.raises(UserError, match="no position after"):
        config_from_hf({"model_type": "roberta", "max_position_embeddings": 2, "pad_token_id": 1}, {})


# --------------------------------------------------------------------------------------------- the tokenizer
def byte_level_folder(folder, *, tokenizer_json: bool):
    """A tiny byte-level BPE trained with `tokenizers` as RoBERTa's was made: the specials first (<mask> taking the
    space before it), saved as vocab.json + merges.txt, or as a tokenizer.json (the published folders hold both)."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    lines = [*TEXTS, "a dog likes an open door, the cat follows the dog ."] * 10
    bpe.train_from_iterator(lines, vocab_size=400, min_frequency=1, special_tokens=[
        *SPECIALS[:4], AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)])
    folder.mkdir()
    if tokenizer_json:
        bpe.save(str(folder / "tokenizer.json"))
    else:
        bpe.save_model(str(folder))
    return folder


@pytest.mark.parametrize("tokenizer_json", [False, True], ids=["vocab-merges", "tokenizer-json"])
def test_ids_equal_the_reference_tokenizers(tmp_path, tokenizer_json):
    transformers = pytest.importorskip("transformers")
    folder = byte_level_folder(tmp_path / "tok", tokenizer_json=tokenizer_json)
    ref = transformers.RobertaTokenizerFast.from_pretrained(str(folder))
    ours = Tokenizer.from_files(folder)
    assert ours.kind == "roberta" and (ours.cls_id, ours.pad_id, ours.sep_id, ours.unk_id) == (0, 1, 2, 3)
    for text in TEXTS:
        assert ours.encode_text(text).ids == ref(text)["input_ids"], text
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
    assert ours.encode_pair(TEXTS[0], TEXTS[1]).ids == ref(TEXTS[0], TEXTS[1])["input_ids"]  # <s> a </s></s> b </s>
    assert ours.encode_pair(TEXTS[0], TEXTS[1], max_length=12).ids == ref(
        TEXTS[0], TEXTS[1], max_length=12, truncation="longest_first")["input_ids"]
    if tokenizer_json:  # the published <mask> takes the space before it
        masked = "the <mask> sees the house."
        assert ours.encode_text(masked).ids == ref(masked)["input_ids"]
        assert ours.encode_text(masked).ids.count(ours.mask_id) == 1
        assert ours.encode(" <mask>") == [ours.mask_id]


def test_a_trained_tokenizer_has_robertas_specials_and_inputs(tmp_path, corpus_dir):
    tok = tiny_tokenizer("roberta", corpus_dir, vocab_size=300)
    assert [tok.backend.id_to_token(i) for i in range(5)] == SPECIALS  # <pad> = 1 as published; <mask> ours at 4
    assert (tok.lowercase, tok.strip_accents, tok.word_prefix) == (False, False, " ")
    pair = tok.encode_pair("the cat", "a dog")
    assert pair.segments is None  # one token type
    a, b = tok.encode("the cat"), tok.encode("a dog")
    assert pair.ids == [tok.cls_id, *a, tok.sep_id, tok.sep_id, *b, tok.sep_id]
    middle = slice(len(a) + 1, len(a) + 3)
    assert pair.word_ids[middle] == [None, None] and pair.offsets[middle] == [(0, 0), (0, 0)]
    choices = tok.encode_choices("which ?", ["the cat", "a dog"])
    assert [c.ids for c in choices] == [tok.encode_pair("which ?", c).ids for c in ("the cat", "a dog")]
    with pytest.raises(UserError, match="integer >= 4"):  # <s> a </s></s> b </s>: four special tokens
        tok.encode_pair("a", "b", max_length=3)
    words = tok.encode_words(["the", "cat", "sees"])  # <s> pieces </s>, words after the first read after a space
    assert words.ids == tok.encode_text("the cat sees").ids
    assert [words.word_ids[i] for i in words.word_starts()] == [0, 1, 2]
    cut = tok.encode_words(["the", "cat", "sees"], max_length=5)  # whole words dropped from the end, </s> kept
    assert len(cut.ids) <= 5 and cut.ids[-1] == tok.sep_id
    assert cut.ids[:-1] == words.ids[:len(cut.ids) - 1] and words.word_ids[len(cut.ids) - 1] != cut.word_ids[-2]
    tok.save(tmp_path / "tok")
    again = Tokenizer.from_files(tmp_path / "tok")
    assert again.kind == "roberta" and again.encode_text("the cat <mask>").ids == tok.encode_text("the cat <mask>").ids
    assert tok.encode(" <mask>") == [tok.mask_id]
    transformers = pytest.importorskip("transformers")  # our tokenizer.json reads in HF with RoBERTa's templates
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    assert hf("the cat", "a dog")["input_ids"] == pair.ids


def test_whole_word_masking_reads_byte_level_word_starts(corpus_dir):
    tok = tiny_tokenizer("roberta", corpus_dir, vocab_size=300)
    vocab = Vocabulary.of(tok)
    words = ["the", "cat", "remembers", "the", "house"]
    encoding = tok.encode_words(words)  # as the running text, `<s> pieces </s>`, with each piece's word
    ids = torch.tensor([encoding.ids])
    starts = word_starts(ids, ~torch.isin(ids, vocab.special_tensor), vocab.continuation)[0]
    assert starts.nonzero().flatten().tolist() == encoding.word_starts()  # "remembers" is several pieces, one word
    assert len(encoding.ids) > len(words) + 2


# ------------------------------------------------------------------------------------------------- the objective
def vocabulary(size=100) -> Vocabulary:
    return Vocabulary(cls_id=0, sep_id=2, mask_id=4, pad_id=1, size=size, special_ids=frozenset(range(5)))


def test_full_sentences_cross_document_boundaries_with_a_separator():
    docs = [[[10, 11], [12]], [[20, 21], [22, 23]], [list(range(30, 40))]]  # the last sentence is over-long
    packed = pack_full_sentences(docs, vocabulary(), max_length=10, seed=0)
    rows = sorted(packed.ids[s:e].tolist() for s, e in zip(packed.offsets[:-1], packed.offsets[1:], strict=True))
    assert rows == [
        [0, 10, 11, 12, 2, 20, 21, 22, 23, 2],  # documents 1 and 2 in one input, </s> between them
        [0, 30, 31, 32, 33, 34, 35, 36, 37, 2],  # document 3 opens the next input with no separator; cut to fit
        [0, 38, 39, 2],
    ]
    assert not packed.pairs and packed.documents == 3 and "3 sequences" in packed.describe()
    assert (packed.first_segment_length == packed.lengths()).all()  # one segment


def test_full_sentences_keep_every_token_in_order():
    import random

    rng = random.Random(0)
    docs = [[[rng.randrange(5, 100) for _ in range(rng.randrange(1, 9))] for _ in range(rng.randrange(1, 6))]
            for _ in range(40)]
    packed = pack_full_sentences(docs, vocabulary(), max_length=16, seed=3)
    lengths = packed.lengths()
    assert lengths.max() <= 16 and len(packed) > 10
    rows = [packed.ids[s:e].tolist() for s, e in zip(packed.offsets[:-1], packed.offsets[1:], strict=True)]
    assert all(r[0] == 0 and r[-1] == 2 and r[1] != 2 for r in rows)  # <s> first, </s> last, never </s> first
    body = sorted(t for r in rows for t in r[1:-1] if t != 2)
    assert body == sorted(t for d in docs for s in d for t in s)  # nothing lost or repeated
    separators = sum(r[1:-1].count(2) for r in rows)
    assert 0 < separators < len(docs)  # between documents inside an input, not at the inputs' edges


def test_dynamic_masking_draws_a_new_mask_each_epoch():
    docs = [[[5 + (7 * d + k) % 90 for k in range(40)]] for d in range(8)]  # 8 sequences of 40 tokens
    packed = pack_full_sentences(docs, vocabulary(), max_length=42, seed=0)
    batches = MaskedLMBatches(packed, vocabulary(), batch_size=2, seed=0)
    assert len(batches) == 4

    def masks_by_sequence(epoch):
        out = {}
        for step in range(epoch * len(batches), (epoch + 1) * len(batches)):
            batch = batches.batch(step)
            assert set(batch) == {"ids", "mask", "mlm_labels"}  # no segments, no next-sentence labels
            chosen = batch["mlm_labels"] != IGNORE
            original = torch.where(chosen, batch["mlm_labels"], batch["ids"])
            for row in range(len(original)):
                out[tuple(original[row].tolist())] = chosen[row].nonzero().flatten().tolist()
        return out

    first, second = masks_by_sequence(0), masks_by_sequence(1)
    assert first.keys() == second.keys() and len(first) == 8  # every sequence served once an epoch
    assert all(first[s] != second[s] for s in first)  # and masked anew each time
    assert all(len(m) == 6 for m in first.values())  # 15 % of 40
    again = MaskedLMBatches(packed, vocabulary(), batch_size=2, seed=0)
    for step in (0, 5):  # the same seed gives the same masks: a resumed run sees the same batches
        assert all(torch.equal(a, b) for a, b in zip(again.batch(step).values(), batches.batch(step).values(),
                                                     strict=True))


def test_the_objective_follows_the_flags():
    config = preset("roberta", dim=32, heads=2)
    assert isinstance(config, RobertaConfig) and objective_of(config) == "masked-lm"
    assert config.pair_objective is None and not config.nsp_head and not config.has_segments


# ------------------------------------------------------------------------------------ the jobs on a tiny model
PRETRAIN = dict(steps=4, block_size=32, batch_size=4, vocab_size=300, layers=2, dim=32, heads=2, eval_every=2,
                warmup=1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_dir):
    """A tiny RoBERTa pretrained for a few steps on documents of the test corpus (`ctxlm.pretrain`, which the
    command line calls; see test_pretrain_from_the_command_line): its run folder."""
    root = tmp_path_factory.mktemp("roberta")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CTXLM_CACHE", str(root / "cache"))
        ctxlm.pretrain(model="roberta", data=write_documents(corpus_dir, root / "data"), out=root / "run", **PRETRAIN)
    return root / "run"


def test_pretrain_from_the_command_line(tmp_path, monkeypatch, capsys, corpus_dir):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    options = [x for key, value in PRETRAIN.items() for x in (f"--{key.replace('_', '-')}", value)]
    result = run_cli(monkeypatch, capsys, "pretrain", "--model", "roberta", "--data",
                     write_documents(corpus_dir, tmp_path / "data"), "--out", tmp_path / "run", *options)
    assert result.code == 0, result.err
    assert "masked LM on full sentences" in result.out and "sequences from" in result.out
    assert "next-sentence" not in result.out
    records = metrics_records(tmp_path / "run")
    assert any("valid_mlm_accuracy" in r for r in records)
    assert not any("nsp" in key for r in records for key in r)
    model = ctxlm.load(tmp_path / "run" / "checkpoint")
    assert isinstance(model, RobertaModel) and model.tokenizer.kind == "roberta"
    assert (model.config.nsp_head, model.config.pooler, model.config.vocab_size) == (False, False, 300)
    encoding = model.tokenizer.encode_text("the cat <mask> the house .")
    with torch.no_grad():
        logits = model(torch.tensor([encoding.ids])).logits
    assert logits.shape == (1, len(encoding.ids), 300)


def write_task(path, n=32):
    import random

    rng = random.Random(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for _ in range(n):
            animal = rng.random() < 0.5
            writer.writerow([f"the {rng.choice(['cat', 'dog'] if animal else ['house', 'tree'])} sees the door .",
                             "animal" if animal else "thing"])
    return path


@pytest.mark.fp32
@pytest.mark.parametrize("strategy", ["adapters:adapter_dim=8", "lora:lora_rank=4"])
def test_finetune_with_a_parameter_efficient_strategy(pretrained, tmp_path, monkeypatch, capsys, strategy):
    run = pretrained
    task = write_task(tmp_path / "task.csv")
    result = run_cli(monkeypatch, capsys, "finetune", "--model", run / "checkpoint", "--task", f"csv:{task}",
                     "--strategy", strategy, "--epochs", 1, "--batch-size", 8, "--max-length", 32, "--device",
                     "cpu", "--out", tmp_path / "ft")
    assert result.code == 0, result.err
    before, after = ctxlm.load(run / "checkpoint").state_dict(), ctxlm.load(tmp_path / "ft" / "model")
    changed = {name for name, value in before.items() if not torch.equal(value, after.state_dict()[name])}
    if strategy.startswith("adapters"):  # only the blocks' LayerNorms train besides the new adapters
        assert after.config.adapter_dim == 8
        assert changed and all(".blocks." in n and "norm" in n for n in changed), changed
    else:  # LoRA merged into a plain model: only the query and value projections moved
        assert after.config.lora_rank == 0 and before.keys() == after.state_dict().keys()
        assert changed == {f"backbone.blocks.{i}.attn.qkv.weight" for i in range(2)}
        for i in range(2):
            name = f"backbone.blocks.{i}.attn.qkv.weight"
            delta = after.state_dict()[name] - before[name]
            q, k, v = (delta[i * 32:(i + 1) * 32].abs().max() > 0 for i in range(3))
            assert (q, k, v) == (True, False, True), name  # the default targets: queries and values
    task_model = TaskModel.load(tmp_path / "ft")
    (labelled,) = predict(task_model, parse_inputs(["the cat sees the door ."], task_model.spec, "<test>"))
    assert labelled["label"] in ("animal", "thing")


@pytest.mark.fp32
@pytest.mark.numeric
@pytest.mark.parametrize("layers, manual", [
    ("last", lambda s: s[2]),
    ("second-to-last", lambda s: s[1]),
    ("sum", lambda s: s[1] + s[2]),
    ("all", lambda s: torch.stack(s, -2)),
    ([2, 0], lambda s: torch.cat([s[2], s[0]], -1)),
])
def test_embed_layer_modes_read_robertas_states(pretrained, layers, manual):
    model = ctxlm.load(pretrained / "checkpoint")
    text = "the old man follows a small bird ."
    ids = model.tokenizer.encode_text(text).ids
    with torch.no_grad():
        states = [s[0] for s in model.backbone(torch.tensor([ids])).states]
    # one run of 2 blocks of 32 wide (MLP 128): the same run on both sides, a sum of <= 3 layers apart
    assert_fp_close(ctxlm.embed(text, model, layers=layers, pool="none"), manual(states), terms=3)
    batch = ctxlm.embed([text, "a dog ."], model, layers=layers, pool="mean")  # padded: positions unchanged
    assert_fp_close(batch[0], manual(states).mean(0), terms=128, depth=4)


@pytest.mark.fp32
@pytest.mark.numeric
def test_embed_from_the_command_line(pretrained, tmp_path, monkeypatch, capsys):
    texts = ["the cat sees the house .", "a dog ."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    output = tmp_path / "vectors.jsonl"
    result = run_cli(monkeypatch, capsys, "embed", pretrained / "checkpoint", "--input", tmp_path / "texts.txt",
                     "--layers", "second-to-last", "--output", output, "--precision", "fp32")
    assert result.code == 0, result.err
    got = [json.loads(line)["embedding"] for line in output.read_text().splitlines()]
    expected = ctxlm.embed(texts, ctxlm.load(pretrained / "checkpoint"), layers="second-to-last")
    for vector, want in zip(got, expected, strict=True):  # the same computation, in batches of another shape
        assert_fp_close(torch.tensor(vector), want, terms=128, depth=4)


@pytest.mark.default_precision
def test_serve_offers_fill_mask_and_the_panels(pretrained):
    from starlette.testclient import TestClient

    from ctxlm.serve import Limits, Served, create_app

    model = ctxlm.load(pretrained / "checkpoint")
    served = Served("tiny-roberta", model, None, Limits())
    capabilities = served.capabilities()
    assert capabilities["fill_mask"] and capabilities["attention"]
    assert not capabilities["generate"] and not capabilities["memory"]
    with TestClient(create_app(served)) as c:
        filled = c.post("/fill-mask", json={"text": "the cat <mask> the house .", "top_k": 3})
        assert filled.status_code == 200, filled.text
        (mask,) = filled.json()["masks"]
        assert mask["position"] == model.tokenizer.encode_text("the cat <mask> the house .").ids.index(4)
        assert len(mask["candidates"]) == 3 and all(c["id"] >= 5 for c in mask["candidates"])  # never a special
        refused = c.post("/fill-mask", json={"text": "no mask here"})
        assert refused.status_code == 400 and "<mask>" in refused.json()["error"]
        tokens = c.post("/tokenize", json={"text": "the cat sees"}).json()
        assert tokens["tokens"][0] == "<s>" and tokens["tokens"][-1] == "</s>" and tokens["segments"] is None
        assert "".join(tokens["display"][1:-1]) == "the cat sees" and any("Ġ" in t for t in tokens["tokens"])
        attention = c.post("/attention", json={"text": "the cat sees", "layer": 2}).json()
        assert attention["heads"] == 2 and len(attention["attention"][0][0]) == len(tokens["ids"])
        info = c.get("/info").json()
        assert info["family"] == "roberta" and info["mask_token"] == "<mask>" and info["tokenizer"] == "roberta"
        embedded = c.post("/embed", json={"texts": ["the cat sees"], "layers": "all"})
        assert embedded.status_code == 200, embedded.text


def test_convert_a_hub_folder_and_continue_its_pretraining(tmp_path, monkeypatch, corpus_dir):
    """A folder as the Hub ships RoBERTa (config.json, model.safetensors, vocab.json + merges.txt) converts, and
    `--init` continues its masked LM on full sentences."""
    transformers = pytest.importorskip("transformers")
    ref, ours = reference_pair(2, 2, 16, 64, 400)  # room for the tokenizer's vocabulary
    ref.save_pretrained(tmp_path / "hub")
    tokenizer_folder = byte_level_folder(tmp_path / "tok", tokenizer_json=False)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "hub" / name).write_bytes((tokenizer_folder / name).read_bytes())
    ctxlm.convert(tmp_path / "hub", tmp_path / "converted")
    model = ctxlm.load(tmp_path / "converted")
    assert isinstance(model, RobertaModel) and model.tokenizer.kind == "roberta"
    ref_tok = transformers.RobertaTokenizerFast.from_pretrained(str(tokenizer_folder))
    assert model.tokenizer.encode_text(TEXTS[0]).ids == ref_tok(TEXTS[0])["input_ids"]
    for name, value in ours.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    result = ctxlm.pretrain(data=write_documents(corpus_dir, tmp_path / "data"), out=tmp_path / "run",
                            init=tmp_path / "converted", steps=2, block_size=32, batch_size=4, eval_every=2, warmup=1)
    assert result["objective"] == "masked-lm" and "valid_mlm_accuracy" in result["final"]
    assert isinstance(result["model"], RobertaModel) and result["model"].config.max_positions == 64


@pytest.mark.fp32
def test_span_extraction_reads_robertas_pair_template(pretrained, tmp_path):
    """SQuAD's windows are `<s> question </s></s> passage piece </s>`, an answer's tokens map back to its word (not
    the space a byte-level token carries), and a span model trains and answers on the family."""
    from ctxlm.qa.finetune import answer_questions
    from ctxlm.qa.model import SpanModel
    from ctxlm.qa.options import SquadOptions
    from ctxlm.qa.spans import make_windows
    from ctxlm.qa.squad import read_squad
    from ctxlm.transfer.config import FinetuneConfig
    from ctxlm.transfer.finetune import finetune
    from ctxlm.transfer.model import load_finetuned
    from helpers import animal_articles

    train = tmp_path / "train.json"
    train.write_text(json.dumps({"version": "1.1", "data": animal_articles(3, 4)}))
    tok = ctxlm.load(pretrained / "checkpoint").tokenizer
    questions = read_squad(train)
    windows = make_windows(tok, questions, max_length=24, doc_stride=8)
    assert len(windows) > len(questions)  # long passages were cut
    for w in windows:
        question = tok.encode(questions[w.question].question)
        assert w.ids[:w.passage_start] == [tok.cls_id, *question, tok.sep_id, tok.sep_id] and w.ids[-1] == tok.sep_id
        if w.start:
            (start, _), (_, end) = w.offsets[w.start - w.passage_start], w.offsets[w.end - w.passage_start]
            assert questions[w.question].context[start:end] == questions[w.question].answers[0][0]
    config = FinetuneConfig(model=str(pretrained / "checkpoint"), task="squad", epochs=1, batch_size=16, lr=3e-3,
                            max_length=24, device="cpu",
                            task_options={"squad": SquadOptions(train_file=str(train), holdout_articles=1,
                                                                doc_stride=8)})
    result = finetune(config, tmp_path / "run")
    assert result["train_windows"] > result["train_questions"]
    model = load_finetuned(tmp_path / "run")
    assert isinstance(model, SpanModel)
    (answers,) = answer_questions(model, [("which animal is here ?", "the ball sees a bird sees the tree .")])
    assert answers[0]["answer"] and not answers[0]["answer"][0].isspace()
