"""DeBERTa (v2/v3 layout): parity with transformers' DebertaV2Model on random local models, the properties that
define disentangled attention and the enhanced mask decoder, and the family through every job (pretrain,
finetune with full and LoRA training, embed's layer modes, serve)."""


import json

import pytest
import torch

from ctxlm.config import DebertaConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.nn.disentangled_attention import log_bucket_positions
from helpers import run_cli, write_documents
from tolerances import assert_fp_close, fp_close

# (layers, heads, head width, intermediate, vocab, position_buckets, max_relative_positions, pos_att_type)
CONFIGS = [
    (2, 4, 8, 96, 97, 8, -1, "p2c|c2p"),  # the v3 layout: 20 tokens reach 5 buckets past the exact ±4
    (2, 2, 16, 64, 61, -1, 6, ["c2p"]),  # no buckets: distances clamped at ±6; one position term (scale sqrt(2d))
]
TIME = 20


def fp32(layers, heads, head_dim, intermediate, *_) -> dict:
    """Both sides' float32 rounding (tests/tolerances.py): sums of up to `intermediate` terms (the MLP's second
    product; the width and the 20 positions are fewer), through the embeddings, the blocks and a head."""
    return dict(terms=max(intermediate, heads * head_dim), depth=layers + 2)


def hf_config(layers, heads, head_dim, intermediate, vocab, buckets, reach, terms, **more):
    transformers = pytest.importorskip("transformers")
    return transformers.DebertaV2Config(
        vocab_size=vocab, hidden_size=heads * head_dim, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, relative_attention=True, position_buckets=buckets,
        max_relative_positions=reach, pos_att_type=terms, share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, **more)


def reference_pair(spec, cls_name="DebertaV2Model", **more):
    """A transformers model with weights of order-1 products (as test_bert_parity draws them, so that a wrong
    scale or GELU shows) and its conversion."""
    transformers = pytest.importorskip("transformers")
    from ctxlm.convert.hf_deberta import config_from_hf, state_dict_from_hf

    torch.manual_seed(0)
    config = hf_config(*spec, **more)
    ref = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
    state = ref.state_dict()
    ours_config = config_from_hf(config.to_dict(), state)
    ours = build_model(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours_config))
    return ref, ours


def padded_batch(vocab):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, TIME))
    lengths = torch.tensor([TIME, 14, 7])
    mask = torch.arange(TIME)[None] < lengths[:, None]
    return ids, mask, lengths


# ------------------------------------------------------------------------------------------ parity with the reference

@pytest.mark.numeric
@pytest.mark.parametrize("spec", CONFIGS, ids=["v3-buckets", "clamped-c2p-only"])
def test_backbone_matches_debertav2model_on_every_layer(spec):
    ref, ours = reference_pair(spec)
    ids, mask, lengths = padded_batch(spec[4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        got = ours(ids, mask=mask).hidden.states
    assert len(got) == len(expected) == spec[0] + 1
    for i, n in enumerate(lengths.tolist()):  # real positions only: padding carries no meaning
        for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_fp_close(a[i, :n], b[i, :n], **fp32(*spec), msg=f"row {i}, layer {layer}")


@pytest.mark.numeric
@pytest.mark.parametrize("legacy", [False, True])
def test_mlm_head_matches_debertav2formaskedlm_which_has_no_emd(legacy):
    ref, ours = reference_pair(CONFIGS[0], "DebertaV2ForMaskedLM", legacy=legacy)
    assert ours.config.mlm_head and ours.config.emd_layers == 0  # transformers' model: the head on the top layer
    ids, mask, lengths = padded_batch(CONFIGS[0][4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long()).logits
        got = ours(ids, mask=mask).logits
    for i, n in enumerate(lengths.tolist()):
        assert_fp_close(got[i, :n], expected[i, :n], **fp32(*CONFIGS[0]))


def test_log_buckets_are_the_references():
    reference = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
    make_log_bucket_position = reference.make_log_bucket_position

    delta = torch.arange(-600, 601)
    for buckets, reach in [(256, 512), (8, 32), (6, 20)]:
        assert torch.equal(log_bucket_positions(delta, buckets, reach), make_log_bucket_position(delta, buckets, reach))
    exact = log_bucket_positions(delta, 256, 512)
    assert torch.equal(exact[600 - 128:600 + 129], delta[600 - 128:600 + 129])  # ±k/2 exact
    assert exact[600 + 511] == 255 and exact[600 - 511] == -255  # k - 1 at the reach (max_positions - 1)


@pytest.mark.parametrize(("field", "value"), [("conv_kernel_size", 3), ("position_biased_input", True),
                                              ("share_att_key", False), ("type_vocab_size", 2),
                                              ("norm_rel_ebd", "none")])
def test_unsupported_variants_are_refused_naming_the_field(field, value):
    from ctxlm.convert.hf_deberta import config_from_hf

    config = hf_config(*CONFIGS[0]).to_dict() | {field: value}
    with pytest.raises(UserError, match=field):
        config_from_hf(config, {})
    with pytest.raises(UserError, match="v1"):
        config_from_hf(hf_config(*CONFIGS[0]).to_dict() | {"model_type": "deberta"}, {})


def test_a_folder_converts_with_its_tokenizer_json_and_refuses_a_bare_sentencepiece_model(tmp_path, corpus_dir):
    import ctxlm
    from helpers import tiny_tokenizer

    ref, ours = reference_pair(CONFIGS[0])
    ref.save_pretrained(tmp_path / "hub")
    tiny_tokenizer("bert", corpus_dir).backend.save(str(tmp_path / "hub" / "tokenizer.json"))
    converted = ctxlm.load(ctxlm.convert(tmp_path / "hub", tmp_path / "ours"))
    assert converted.config.model_type == "deberta" and converted.tokenizer.kind == "bert"
    for a, b in zip(converted.state_dict().values(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "hub" / "tokenizer.json").unlink()
    (tmp_path / "hub" / "spm.model").write_bytes(b"\x0a\x05piece")
    with pytest.raises(UserError, match=r"spm\.model.*tokenizer\.json"):
        ctxlm.convert(tmp_path / "hub", tmp_path / "again")


def test_the_authors_layout_with_absolute_positions_converts_with_the_decoder():
    from ctxlm.convert.hf_deberta import config_from_hf, state_dict_from_hf

    ref, _ = reference_pair(CONFIGS[0], "DebertaV2ForMaskedLM", legacy=False)
    state = ref.state_dict() | {"deberta.embeddings.position_embeddings.weight": torch.randn(32, 32)}
    config = config_from_hf(ref.config.to_dict(), state)
    assert config.emd_layers == 2
    model = build_model(config)
    model.load_state_dict(state_dict_from_hf(state, config))
    assert torch.equal(model.emd.positions.weight, state["deberta.embeddings.position_embeddings.weight"])


# ------------------------------------------------------------------------- what defines the attention and the EMD

def order_one(model):
    """Weights whose products are of order 1 (as the parity models'), so that every term visibly moves the output."""
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "tokens" not in name and "relative" not in name and "positions" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model.eval()


def tiny_deberta(**overrides):
    fields = dict(vocab_size=61, max_positions=32, dim=32, n_layers=2, n_heads=2, mlp_dim=64, position_buckets=8,
                  dropout=0.0, attn_dropout=0.0) | overrides
    torch.manual_seed(0)
    return order_one(build_model(DebertaConfig(**fields)))


def same_weights(model, **overrides):
    """A model of `model`'s config changed by `overrides`, with its weights (those the new config has)."""
    import dataclasses

    other = build_model(dataclasses.replace(model.config, **overrides)).eval()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in other.state_dict()}, strict=False)
    return other


ROUNDING = dict(terms=64, depth=4)  # float32 sums of up to 64 terms (the MLP), 2 blocks, embeddings, head


@pytest.mark.numeric
def test_each_position_term_moves_the_scores_and_without_them_token_order_is_lost():
    model = tiny_deberta()
    torch.manual_seed(3)
    ids = torch.randint(0, 61, (1, TIME))
    order = torch.randperm(TIME)
    outputs = {}
    for terms in (["c2p", "p2c"], ["c2p"], ["p2c"], []):
        variant = same_weights(model, position_terms=terms)
        with torch.no_grad():
            top = variant.backbone(ids).last[0]
            permuted = variant.backbone(ids[:, order]).last[0]
        outputs[tuple(terms)] = top
        # Content alone sees a bag of tokens: permuting them permutes the states; either position term breaks that
        assert fp_close(permuted, top[order], **ROUNDING) == (not terms), terms
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not fp_close(outputs[a], outputs[b], **ROUNDING), (a, b)


@pytest.mark.numeric
def test_backbone_states_depend_on_relative_positions_only():
    """Left padding moves every real token 6 positions on; DeBERTa's states stay (BERT's would not): the bucketed
    distances between real tokens are all its positions. The enhanced mask decoder's logits move: it alone adds
    absolute positions; without it (emd_layers 0, the same weights) the logits stay too."""
    model = tiny_deberta()
    plain = same_weights(model, emd_layers=0)
    torch.manual_seed(4)
    ids = torch.randint(5, 61, (1, TIME))
    shifted = torch.cat([torch.zeros(1, 6, dtype=torch.long), ids], 1)
    mask = torch.arange(TIME + 6)[None] >= 6
    with torch.no_grad():
        alone, padded = model(ids), model(shifted, mask=mask)
        plain_alone, plain_padded = plain(ids).logits[0], plain(shifted, mask=mask).logits[0, 6:]
    for layer, (a, b) in enumerate(zip(alone.hidden.states, padded.hidden.states, strict=True)):
        assert_fp_close(b[0, 6:], a[0], **ROUNDING, msg=f"layer {layer}")
    assert_fp_close(plain_padded, plain_alone, **ROUNDING)
    assert not fp_close(padded.logits[0, 6:], alone.logits[0], **ROUNDING)


@pytest.mark.numeric
def test_the_decoder_is_the_top_layer_again_with_absolute_positions_in_its_queries():
    model = tiny_deberta()
    torch.manual_seed(5)
    ids = torch.randint(5, 61, (2, TIME))
    with torch.no_grad():
        before = model(ids)
        model.emd.positions.weight.normal_()
        after = model(ids)
        # with P = 0 and one pass, I = H: the top layer itself, so the head reads the backbone's top states
        once = same_weights(model, emd_layers=1)
        once.emd.positions.weight.zero_()
        plain = same_weights(model, emd_layers=0)
        assert_fp_close(once(ids).logits, plain(ids).logits, **ROUNDING)
    for a, b in zip(before.hidden.states, after.hidden.states, strict=True):
        assert torch.equal(a, b)  # the backbone never reads the absolute positions
    assert not fp_close(after.logits, before.logits, **ROUNDING)


def test_gradient_checkpointing_gives_the_same_gradients():
    from ctxlm.nn.blocks import use_gradient_checkpointing

    model = tiny_deberta().train()
    ids = torch.randint(5, 61, (2, 12))
    grads = []
    for enabled in (False, True):
        assert use_gradient_checkpointing(model, enabled) == 2
        model.zero_grad()
        model(ids).logits.square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ the family through every job

@pytest.fixture(scope="module")
def deberta_dir(tmp_path_factory, corpus_dir):
    """A saved tiny DeBERTa (random weights) with a WordPiece tokenizer trained on the test corpus."""
    import ctxlm
    from helpers import tiny_tokenizer

    tokenizer = tiny_tokenizer("bert", corpus_dir)
    torch.manual_seed(0)
    model = build_model(DebertaConfig(vocab_size=tokenizer.vocab_size, max_positions=48, dim=32, n_layers=2,
                                      n_heads=2, mlp_dim=64, position_buckets=16))
    model.tokenizer = tokenizer
    return ctxlm.save(model, tmp_path_factory.mktemp("models") / "deberta")


def test_pretrain_deberta_from_the_command_line(monkeypatch, capsys, tmp_path, corpus_dir):
    import ctxlm

    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    result = run_cli(monkeypatch, capsys, "pretrain", "--model", "deberta",
                     "--data", write_documents(corpus_dir, tmp_path / "docs"), "--out", tmp_path / "run",
                     "--steps", 3, "--block-size", 24, "--batch-size", 4, "--vocab-size", 200, "--layers", 2,
                     "--dim", 32, "--heads", 2, "--eval-every", 3)
    assert result.exit_code == 0, result.output
    assert "masked-LM accuracy" in result.output and "next-sentence" not in result.output
    assert "sequences from" in result.output and "fill-in:" in result.output
    model = ctxlm.load(tmp_path / "run" / "checkpoint")
    assert model.config.model_type == "deberta" and model.config.emd_layers == 2
    assert model.tokenizer.kind == "bert" and model.config.vocab_size == model.tokenizer.vocab_size
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_mlm_accuracy" in r for r in records) and not any("nsp_loss" in r for r in records)


@pytest.mark.fp32
@pytest.mark.parametrize("strategy", ["full", "adapters:adapter_dim=8,lr=3e-2", "lora:lora_rank=4,lr=1e-2"])
def test_finetune_classification_with_every_kind_of_training(deberta_dir, tmp_path, strategy):
    import ctxlm
    from ctxlm.transfer.finetune import finetune
    from test_transfer import quick, synthetic_task

    full = strategy == "full"
    finetune(quick(deberta_dir, strategy, epochs=6 if full else 2, lr=5e-3), tmp_path,
             data=synthetic_task("single", n=48))
    losses = [r["loss"] for r in (json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    if full:  # 18 steps: the model learns the task (the small updates are checked for what they change)
        quarter = len(losses) // 4
        assert sum(losses[-quarter:]) < 0.7 * sum(losses[:quarter]), losses
    before, after = ctxlm.load(deberta_dir).state_dict(), ctxlm.load(tmp_path / "model")
    changed = {name for name, value in after.state_dict().items()
               if name not in before or not torch.equal(value, before[name])}
    if strategy.startswith("adapters"):
        assert after.config.adapter_dim == 8 and all("adapter" in n or "norm" in n for n in changed)
    if strategy.startswith("lora"):  # merged into the query and value rows of the fused projection, nothing else
        assert after.config.lora_rank == 0 and changed == {f"backbone.blocks.{i}.attn.qkv.weight" for i in (0, 1)}
        dim = after.config.dim
        for i in (0, 1):
            name = f"backbone.blocks.{i}.attn.qkv.weight"
            rows = [torch.equal(before[name][j * dim:(j + 1) * dim], after.state_dict()[name][j * dim:(j + 1) * dim])
                    for j in range(3)]
            assert rows == [False, True, False]


@pytest.mark.fp32
@pytest.mark.numeric
@pytest.mark.parametrize(("layers", "manual"), [
    ("last", lambda s: s[2]), ("second-to-last", lambda s: s[1]), ("sum", lambda s: s[1] + s[2]),
    ("all", lambda s: torch.stack(s, -2)), ([2, 0], lambda s: torch.cat([s[2], s[0]], -1)),
])
def test_embed_layer_modes_read_the_backbones_states(deberta_dir, layers, manual):
    import ctxlm

    model = ctxlm.load(deberta_dir)
    text = "the cat sees the house ."
    ids = model.tokenizer.encode_text(text).ids
    with torch.no_grad():
        states = [s[0] for s in model.backbone(torch.tensor([ids])).states]
    assert_fp_close(ctxlm.embed(text, model=model, layers=layers, pool="none"), manual(states), terms=2)


@pytest.mark.default_precision
def test_serve_fills_masks_shows_attention_and_embeds(deberta_dir):
    from starlette.testclient import TestClient

    import ctxlm
    from ctxlm.serve import Served, create_app
    from tolerances import default_dtype, tolerance

    model = ctxlm.load(deberta_dir)
    served = Served("tiny-deberta", model)
    capabilities = served.capabilities()
    assert capabilities["attention"] and capabilities["fill_mask"] and not capabilities["generate"]
    text = "the cat [MASK] the house ."
    with TestClient(create_app(served)) as c:
        filled = c.post("/fill-mask", json={"text": text, "top_k": 3})
        attention = c.post("/attention", json={"text": "the cat sees the house"})
        embedded = c.post("/embed", json={"texts": ["the cat sees the house ."], "layers": "second-to-last"})
    assert filled.status_code == attention.status_code == embedded.status_code == 200
    (mask,) = filled.json()["masks"]
    ids = model.tokenizer.encode_text(text).ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, ids.index(model.tokenizer.mask_id)]
    logits[sorted(model.tokenizer.special_ids)] = float("-inf")
    best = logits.softmax(-1).topk(3)
    bound = tolerance(default_dtype(), terms=64, depth=6)["rtol"] + 5e-5  # the answer's 4 decimals
    assert [c["probability"] for c in mask["candidates"]] == pytest.approx(best.values.tolist(), abs=bound)
    weights = torch.tensor(attention.json()["attention"][0])  # (heads, queries, keys), layer 1
    assert weights.shape == (2, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7), atol=1e-3, rtol=0)
    assert len(embedded.json()["vectors"][0]) == 32


@pytest.mark.default_precision
def test_a_span_head_answers_from_a_passage(deberta_dir):
    from starlette.testclient import TestClient

    import ctxlm
    from ctxlm.qa.model import SpanModel
    from ctxlm.serve import Served, create_app

    model = ctxlm.load(deberta_dir)
    torch.manual_seed(0)
    squad = SpanModel(model, max_length=48, doc_stride=16, max_question_tokens=16).eval()
    context = "the old man sees the house ."
    with TestClient(create_app(Served("tiny-deberta", model, squad))) as c:
        response = c.post("/predict", json={"inputs": [{"question": "who sees the house ?", "context": context}]})
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer["answer"] in context and 0 < answer["probability"] <= 1
