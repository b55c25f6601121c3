"""ALBERT (Lan et al. 2019): parity with `transformers` on locally built models, its defining properties (one set of
layer weights; sentence order's negatives are its positives swapped), its layer groups under the strategies, and
the jobs (pretrain, finetune, embed, serve) on tiny models."""

import random

import numpy as np
import pytest
import torch

from ctxlm.config import AlbertConfig
from ctxlm.errors import UserError
from ctxlm.models.albert import AlbertModel
from ctxlm.pretrain.masked_lm import IN_ORDER, SWAPPED, Vocabulary, build_instances
from tolerances import assert_fp_close

# (layers, heads, head width, embedding width, intermediate, vocab): odd sizes, E < H as published
CONFIGS = [(2, 4, 16, 24, 128, 97), (3, 2, 16, 16, 80, 131)]


def fp32(layers, heads, head_dim, embedding, intermediate, vocab) -> dict:
    """Both sides' float32 rounding (tests/tolerances.py): sums of up to `intermediate` terms (the MLP's second
    product; the widths and 13 positions are fewer), through the embeddings, their projection, the layers and a
    head."""
    return dict(terms=max(intermediate, heads * head_dim), depth=layers + 3)


def reference_pair(layers, heads, head_dim, embedding, intermediate, vocab, layout="AlbertForPreTraining",
                   **extra):
    """A random `transformers` ALBERT (eval mode) with order-1 activations, and its conversion to ctxlm."""
    transformers = pytest.importorskip("transformers")
    from ctxlm.convert.hf_albert import config_from_hf, state_dict_from_hf

    torch.manual_seed(0)
    config = transformers.AlbertConfig(vocab_size=vocab, embedding_size=embedding, hidden_size=heads * head_dim,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       intermediate_size=intermediate, max_position_embeddings=64,
                                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                       classifier_dropout_prob=0.0, **extra)
    ref = getattr(transformers, layout)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "embeddings" not in name:  # unit-scale products: a wrong GELU form shows
                p.normal_(0.0, p.shape[1] ** -0.5)
        if hasattr(ref, "predictions"):  # the decoder's bias is the head's bias (HF ties them)
            ref.predictions.decoder.bias = ref.predictions.bias
    state = ref.state_dict()
    ours_config = config_from_hf(config.to_dict(), state)
    ours = AlbertModel(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours_config))
    return ref, ours


def padded_pairs(vocab):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, 13))
    segments = torch.zeros_like(ids)
    segments[:, 7:] = 1
    lengths = torch.tensor([13, 10, 6])
    return ids, segments, torch.arange(13)[None] < lengths[:, None], lengths


# ---------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def sentencepiece_albert():
    """A tiny Unigram tokenizer of ours and `transformers`' AlbertTokenizer built from its pieces and scores."""
    import json

    transformers = pytest.importorskip("transformers")
    from ctxlm.tokenizers import Tokenizer

    corpus = ["the castle gate is closed with a lock .", "the cat sees the house .", "a dog finds the tall tree ."]
    tokenizer = Tokenizer.train(iter(corpus * 20), "sentencepiece", 80)
    pieces = [tuple(entry) for entry in json.loads(tokenizer.backend.to_str())["model"]["vocab"]]
    return tokenizer, transformers.AlbertTokenizer(vocab=pieces, do_lower_case=True, keep_accents=False)


@pytest.mark.numeric
@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"L{s[0]}-H{s[1]}x{s[2]}-E{s[3]}")
def test_pretraining_model_matches_reference(spec):
    ref, ours = reference_pair(*spec)
    ids, segments, mask, lengths = padded_pairs(spec[-1])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), token_type_ids=segments, output_hidden_states=True)
        got = ours(ids, mask=mask, segments=segments)
    assert len(got.hidden.states) == len(expected.hidden_states) == spec[0] + 1
    for i, n in enumerate(lengths.tolist()):  # real positions only: padding carries no meaning
        for layer, (a, b) in enumerate(zip(got.hidden.states, expected.hidden_states, strict=True)):
            assert_fp_close(a[i, :n], b[i, :n], **fp32(*spec), msg=f"layer {layer}")
        assert_fp_close(got.mlm_logits[i, :n], expected.prediction_logits[i, :n], **fp32(*spec))
    assert_fp_close(got.nsp_logits, expected.sop_logits, **fp32(*spec))


@pytest.mark.numeric
@pytest.mark.parametrize("layout", ["AlbertModel", "AlbertForMaskedLM"])
def test_layouts_without_some_heads(layout):
    ref, ours = reference_pair(*CONFIGS[0], layout=layout)
    config = ours.config
    assert (config.pooler, config.mlm_head, config.nsp_head) == (
        (True, False, False) if layout == "AlbertModel" else (False, True, False))
    ids, segments, mask, lengths = padded_pairs(CONFIGS[0][-1])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), token_type_ids=segments)
        got = ours(ids, mask=mask, segments=segments)
    if layout == "AlbertModel":
        assert_fp_close(got.pooled, expected.pooler_output, **fp32(*CONFIGS[0]))
        assert got.logits is None
    else:
        for i, n in enumerate(lengths.tolist()):
            assert_fp_close(got.logits[i, :n], expected.logits[i, :n], **fp32(*CONFIGS[0]))


def test_unshared_groups_are_refused_naming_them():
    with pytest.raises(UserError, match="num_hidden_groups=2"):
        reference_pair(*CONFIGS[0], layout="AlbertModel", num_hidden_groups=2)


def test_hub_folder_converts_with_its_tokenizer_and_spiece_alone_is_refused(tmp_path, sentencepiece_albert):
    import shutil

    import ctxlm

    tokenizer, reference_tokenizer = sentencepiece_albert
    ref, ours = reference_pair(*CONFIGS[0][:-1], tokenizer.vocab_size)
    ref.save_pretrained(tmp_path / "hub")
    reference_tokenizer.save_pretrained(tmp_path / "hub")
    model = ctxlm.load(tmp_path / "hub")
    assert model.config.model_type == "albert" and model.tokenizer.kind == "sentencepiece"
    text = "the castle gate is closed"
    assert model.tokenizer.encode_text(text).ids == reference_tokenizer(text)["input_ids"]
    folder = ctxlm.convert(tmp_path / "hub", tmp_path / "native")
    again = ctxlm.load(folder)
    ids = torch.tensor([again.tokenizer.encode_text(text).ids])
    with torch.no_grad():
        assert torch.equal(again(ids).nsp_logits, model(ids).nsp_logits)
    (tmp_path / "hub" / "tokenizer.json").unlink()
    shutil.copy(tmp_path / "hub" / "config.json", tmp_path / "hub" / "spiece.model")  # its content is not read
    with pytest.raises(UserError, match=r"spiece\.model but no tokenizer\.json.*save_pretrained"):
        ctxlm.load(tmp_path / "hub")


# ------------------------------------------------------------------------------------ the shared layer weights
def tiny_albert(n_layers=2, **overrides) -> AlbertModel:
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=64, max_positions=32, embedding_size=16, dim=32, n_layers=n_layers, n_heads=2,
                          dropout=0.0, attn_dropout=0.0, **overrides)
    return AlbertModel(config)


def test_parameter_count_does_not_depend_on_depth():
    counts = {n: sum(p.numel() for p in tiny_albert(n).parameters()) for n in (1, 2, 6)}
    assert len(set(counts.values())) == 1
    names = tiny_albert(6).state_dict().keys()
    assert not any(".blocks." in name for name in names)  # one block, not one per layer
    e, h, v = 16, 32, 64
    embeddings = v * e + 32 * e + 2 * e + 2 * e + e * h + h  # tokens, positions, segments, LayerNorm, projection
    assert sum(p.numel() for p in tiny_albert(1).backbone.embed.parameters()) + e * h + h == embeddings


def test_every_layer_applies_the_one_block_and_a_step_changes_them_all():
    model = tiny_albert(3).eval()
    ids = torch.randint(5, 64, (2, 9))
    hidden = model.backbone(ids)
    block = model.backbone.block
    for k in range(3):
        assert torch.equal(block(hidden.states[k]), hidden.states[k + 1])
    # a step on a loss that reads the first layer alone moves what every layer computes
    before = [block(s).detach() for s in hidden.states[:3]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.backbone(ids, n_blocks=1).last.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        for k, state in enumerate(hidden.states[:3]):
            assert not torch.allclose(block(state.detach()), before[k]), f"layer {k + 1} did not change"


# -------------------------------------------------------------------------------------- sentence order (SOP)
def numbered_documents(n_documents=30, seed=0):
    """Documents whose tokens count up by one through the whole document (each id used once in the corpus), cut
    into sentences of 1-6 tokens: a segment is consecutive text exactly when its ids count up by one."""
    rng = random.Random(seed)
    documents, next_id = [], 10
    for _ in range(n_documents):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            length = rng.randint(1, 6)
            sentences.append(list(range(next_id, next_id + length)))
            next_id += length
        documents.append(sentences)
        next_id += 1  # documents do not continue one another
    return documents, next_id


def consecutive(ids) -> bool:
    return bool(np.all(np.diff(np.asarray(ids)) == 1))


def test_sentence_order_negatives_are_the_positives_swapped():
    documents, size = numbered_documents()
    vocab = Vocabulary(cls_id=1, sep_id=2, mask_id=3, pad_id=0, size=size, special_ids=frozenset({0, 1, 2, 3}))
    pairs = build_instances(documents, vocab, max_length=64, seed=0, short_seq_prob=0.0, dupe_factor=20,
                            pair_objective="sop")
    swapped = 0
    for k in range(len(pairs)):
        row = pairs.ids[pairs.offsets[k]:pairs.offsets[k + 1]]
        first = pairs.first_segment_length[k]
        assert row[0] == 1 and row[first - 1] == 2 and row[-1] == 2
        a, b = row[1:first - 1], row[first:-1]
        assert consecutive(a) and consecutive(b)  # each segment is consecutive text
        if pairs.is_random_next[k] == SWAPPED:  # B then A is the text: the same two segments, swapped
            swapped += 1
            assert b[-1] + 1 == a[0]
        else:
            assert pairs.is_random_next[k] == IN_ORDER and a[-1] + 1 == b[0]
    assert 0.4 < swapped / len(pairs) < 0.6, f"{swapped} of {len(pairs)} swapped"
    # NSP from the same documents: half its negatives come from another document, which SOP never does
    nsp = build_instances(documents, vocab, max_length=64, seed=0, short_seq_prob=0.0, dupe_factor=5)
    joined = [nsp.ids[nsp.offsets[k] + 1:nsp.offsets[k + 1] - 1] for k in range(len(nsp)) if nsp.is_random_next[k]]
    assert any(not consecutive(np.delete(row, np.flatnonzero(row == 2))) for row in joined)


def test_sentence_order_needs_one_document_only():
    documents = [[list(range(10, 40))]]  # one document of one sentence: every pair is cut inside it
    vocab = Vocabulary(cls_id=1, sep_id=2, mask_id=3, pad_id=0, size=100, special_ids=frozenset({0, 1, 2, 3}))
    pairs = build_instances(documents, vocab, max_length=64, seed=0, dupe_factor=10, pair_objective="sop")
    assert len(pairs) == 10


# ------------------------------------------------------------------------ layer groups under the strategies
def test_layer_groups_partition_the_parameters_into_embeddings_and_the_shared_block():
    model = tiny_albert(4)
    groups = model.layer_groups()
    assert len(groups) == 2
    placed = [id(p) for group in groups for p in group]
    assert len(placed) == len(set(placed)) == len(list(model.parameters()))  # each parameter exactly once
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in groups[0]} == {"embed", "project"}
    assert {names[id(p)].split(".")[0] for p in groups[1]} == {"backbone", "pooler", "mlm", "sop"}
    assert {id(p) for p in model.backbone.block.parameters()} <= {id(p) for p in groups[1]}


def test_gradual_unfreezing_and_discriminative_rates_over_the_two_groups():
    from ctxlm.transfer.strategies import get_strategy

    model = tiny_albert(4)
    head = list(torch.nn.Linear(32, 2).parameters())
    groups = model.layer_groups()
    plan = get_strategy("ulmfit").plan(groups, head, lr=1e-3, head_lr=None, weight_decay=0.01, steps_per_epoch=5,
                                       total_steps=20)
    rates = {g["name"].split(".")[0]: g["lr"] for g in plan.param_groups}
    assert rates == {"head": 1e-3, "layer1": pytest.approx(1e-3 / 2.6), "layer0": pytest.approx(1e-3 / 2.6 ** 2)}

    def trainable() -> set[int]:
        return {id(p) for p in [*model.parameters(), *head] if p.requires_grad}

    ids = {unit: {id(p) for p in params} for unit, params in (("head", head), ("block", groups[1]),
                                                               ("embeddings", groups[0]))}
    expected = [ids["head"], ids["head"] | ids["block"], ids["head"] | ids["block"] | ids["embeddings"]]
    for stage, step in enumerate((0, 5, 10)):
        plan.before_step(step)
        assert trainable() == expected[stage], f"stage {stage}"
    plan.before_step(19)
    assert trainable() == expected[-1]


@pytest.mark.parametrize("method", ["lora", "adapters"])
def test_peft_in_the_shared_block_trains_and_leaves_the_base_weights(method):
    from ctxlm.nn.peft import add_adapters, add_lora, peft_parameters

    model = tiny_albert(3).train()
    added = add_lora(model, 4) if method == "lora" else add_adapters(model, 8)
    assert added == (2 * 2 * 32 * 4 if method == "lora" else 2 * (2 * 32 * 8 + 8 + 32))  # one layer's worth
    trained = peft_parameters(model, method)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if all(p is not q for q in trained)}
    start = {id(p): p.detach().clone() for p in trained}
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in trained))
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    ids = torch.randint(5, 64, (4, 9))
    for _ in range(3):
        optimizer.zero_grad()
        model(ids).logits.logsumexp(-1).mean().backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert any(not torch.equal(p, start[id(p)]) for p in trained)
    assert model.config.lora_rank == (4 if method == "lora" else 0)


# ------------------------------------------------------------------------------------------------ the jobs
@pytest.fixture(scope="module")
def albert_run(tmp_path_factory, corpus_dir):
    """`ctxlm pretrain --model albert` on the test corpus cut into documents: a few steps, a tiny model."""
    from ctxlm.cli import main
    from helpers import write_documents

    root = tmp_path_factory.mktemp("albert")
    data = write_documents(corpus_dir, root / "data")
    mp = pytest.MonkeyPatch()
    mp.setenv("CTXLM_CACHE", str(root / "cache"))
    mp.setattr("sys.argv", ["ctxlm", "pretrain", "--model", "albert", "--data", str(data), "--out", str(root / "run"),
                            "--steps", "4", "--block-size", "32", "--batch-size", "4", "--vocab-size", "120",
                            "--layers", "2", "--dim", "32", "--heads", "2", "--eval-every", "2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    mp.undo()
    assert exit_info.value.code in (0, None)
    return root / "run"


def test_pretrain_albert_writes_a_loadable_model(albert_run):
    import ctxlm
    from helpers import metrics_records

    model = ctxlm.load(albert_run / "checkpoint")
    assert isinstance(model, AlbertModel) and model.config.embedding_size == 32 and model.config.n_layers == 2
    assert model.tokenizer.kind == "sentencepiece" and model.tokenizer.lowercase  # English: uncased by default
    assert any("valid_nsp_accuracy" in r for r in metrics_records(albert_run))  # the pair task's: sentence order


@pytest.mark.default_precision
@pytest.mark.parametrize("strategy", ["ulmfit", "lora"])
def test_finetune_albert(albert_run, tmp_path, monkeypatch, capsys, strategy):
    from helpers import run_cli
    from test_transfer import synthetic_task, write_csv

    train = tmp_path / "reviews.csv"
    write_csv(train, synthetic_task("single", n=32))
    code, out, err = run_cli(monkeypatch, capsys, "finetune", "--model", albert_run / "checkpoint", "--task",
                             f"csv:{train}", "--text-column", "review", "--label-column", "stars", "--epochs", 3,
                             "--device", "cpu", "--batch-size", 8, "--strategy", strategy, "--out", tmp_path / "run")
    assert code in (0, None), err
    assert "dev_accuracy" in out and (tmp_path / "run" / "model" / "task.json").is_file()
    import ctxlm

    tuned = ctxlm.load(tmp_path / "run" / "model")  # the backbone, LoRA merged into its one block
    assert isinstance(tuned, AlbertModel) and tuned.config.lora_rank == 0


@pytest.mark.fp32
def test_embed_layer_modes_read_every_application_of_the_block(albert_run):
    import ctxlm

    model = ctxlm.load(albert_run / "checkpoint")
    texts = ["the cat sees the house .", "a dog finds the tall tree ."]
    every = ctxlm.embed(texts, model=model, layers="all", pool="mean")
    assert every.shape == (2, 3, 32)  # the projected embeddings and each of the 2 layers
    top = ctxlm.embed(texts, model=model, layers="last", pool="mean")
    torch.testing.assert_close(top, every[:, -1])
    assert not torch.allclose(every[:, 1], every[:, 2])  # one block, but each application its own state


@pytest.mark.default_precision
def test_serve_albert(albert_run):
    from starlette.testclient import TestClient

    import ctxlm
    from ctxlm.serve import Limits, Served, create_app

    model = ctxlm.load(albert_run / "checkpoint")
    with TestClient(create_app(Served("tiny-albert", model, None, Limits()))) as c:
        info = c.get("/info").json()
        assert info["family"] == "albert" and info["tokenizer"] == "sentencepiece" and info["layers"] == 2
        assert info["capabilities"]["fill_mask"] and info["mask_token"] == "[MASK]"
        filled = c.post("/fill-mask", json={"text": "the cat [MASK] the house .", "top_k": 3})
        assert filled.status_code == 200, filled.text
        assert len(filled.json()["masks"][0]["candidates"]) == 3
        attention = c.post("/attention", json={"text": "the cat sees the house ."}).json()
        assert attention["layers"] == 2 and len(attention["attention"]) == 2  # the block, read once per layer
        embedded = c.post("/embed", json={"texts": ["the cat sees the house ."]})
        assert embedded.status_code == 200, embedded.text


def test_finetune_help_says_what_the_groups_are_when_layers_share_weights(monkeypatch, capsys):
    from helpers import run_cli

    code, out, _ = run_cli(monkeypatch, capsys, "finetune", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "share one set of weights (albert) there are two" in text and "every layer at once" in text
    assert "the embeddings / 2.6²" in text


def test_pretraining_continues_from_an_albert_with_whole_word_masking(albert_run, tmp_path, monkeypatch, capsys):
    from helpers import run_cli

    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", "--init", albert_run / "checkpoint", "--data",
                             albert_run.parent / "data", "--out", tmp_path / "run", "--steps", 2, "--block-size", 32,
                             "--batch-size", 4, "--eval-every", 2, "--whole-word-masking")
    assert code in (0, None), err
    assert "masked LM + sentence order" in out and "sentence-order accuracy" in out
