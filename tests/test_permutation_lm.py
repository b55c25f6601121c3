"""XLNet's permutation LM objective: its defining properties on a tiny random model (the query stream never reads
its own token; a target depends on exactly the tokens before it in the factorisation order), partial prediction's
count, the loss, and segment recurrence."""

import math

import pytest
import torch
import torch.nn.functional as F

from ctxlm.config import XLNetConfig
from ctxlm.errors import UserError
from ctxlm.models.xlnet import XLNetLanguageModel
from ctxlm.pretrain import permutation_lm
from ctxlm.pretrain.causal_lm import LMData
from ctxlm.pretrain.corpus import TokenSpan
from ctxlm.pretrain.permutation_lm import (
    PermutationRecurrence,
    factorisation_of,
    n_predicted,
    permutation_loss,
    predict_position,
    pretrain_permutation_lm,
    sample_factorisation,
    segment_generator,
)
from ctxlm.pretrain.xl import StreamBatches
from ctxlm.tokenizers import Tokenizer
from ctxlm.train import TrainConfig
from helpers import Interrupt, dying_at, metrics_records

VOCAB, T = 40, 9


def tiny_model(mem_len=0, seed=0) -> XLNetLanguageModel:
    torch.manual_seed(seed)
    config = XLNetConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, mlp_dim=64, dropout=0.0,
                         attn_dropout=0.0, mem_len=mem_len, init_std=0.3)
    return XLNetLanguageModel(config).eval()


def target_logits(model, ids, order, n, memory=None):
    f = factorisation_of(order, n)
    with torch.no_grad():
        return model(ids, memory=memory, perm_mask=f.perm_mask, predict_at=f.predict_at).logits, f


@pytest.mark.parametrize(("length", "k", "expected"), [(12, 6, 2), (13, 6, 2), (5, 6, 1), (9, 1, 8), (2, 2, 1)])
def test_partial_prediction_predicts_the_last_floor_length_over_k_of_the_order(length, k, expected):
    assert n_predicted(length, k) == expected
    f = sample_factorisation(3, length, k, torch.Generator().manual_seed(0))
    assert f.predict_at.shape == (3, expected)
    assert torch.equal(f.predict_at, f.order[:, length - expected:])  # the end of each row's order
    for row in f.order:
        assert sorted(row.tolist()) == list(range(length))  # a permutation of the positions


def test_partial_prediction_refuses_what_cannot_be_predicted():
    with pytest.raises(UserError, match="K must be 1 or more"):
        n_predicted(10, 0)
    with pytest.raises(UserError, match="2 tokens or more"):
        n_predicted(1, 6)


def test_perm_mask_lets_each_target_see_only_what_comes_before_it():
    order = torch.tensor([[3, 0, 4, 1, 2]])  # targets: the last two read, positions 1 then 2
    f = factorisation_of(order, 2)
    hidden = f.perm_mask[0]
    assert hidden[1].tolist() == [False, True, True, False, False]  # 1 sees the context 3, 0, 4 only
    assert hidden[2].tolist() == [False, False, True, False, False]  # 2 sees the context and 1, not itself
    for context in (0, 3, 4):  # the context sees the whole context, both ways, and no target
        assert hidden[context].tolist() == [False, True, True, False, False]


def test_query_stream_never_sees_its_own_token():
    model = tiny_model()
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, T))
    order = torch.stack([torch.randperm(T) for _ in range(2)])
    before, f = target_logits(model, ids, order, 3)
    for m in range(3):
        changed = ids.clone()
        rows = torch.arange(2)
        changed[rows, f.predict_at[:, m]] = (ids[rows, f.predict_at[:, m]] + 1) % VOCAB  # the target's own token
        after, _ = target_logits(model, changed, order, 3)
        assert torch.equal(after[:, m], before[:, m]), f"target {m} read its own token"


def test_a_target_depends_on_exactly_the_tokens_before_it_in_the_order():
    model = tiny_model()
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, T))
    order = torch.randperm(T)[None]
    n = 4  # several targets, so that some come after others in the order
    before, f = target_logits(model, ids, order, n)
    rank = {p: r for r, p in enumerate(order[0].tolist())}
    for j in range(T):
        changed = ids.clone()
        changed[0, j] = (ids[0, j] + 7) % VOCAB
        after, _ = target_logits(model, changed, order, n)
        for m, position in enumerate(f.predict_at[0].tolist()):
            if rank[j] < rank[position]:
                assert (after[0, m] - before[0, m]).abs().max() > 1e-3, f"{position} ignored {j}, before it"
            else:  # itself, or later in the order
                assert torch.equal(after[0, m], before[0, m]), f"{position} saw {j}, not before it in the order"


def test_predict_position_reads_every_other_token_but_never_its_own():
    model = tiny_model()
    torch.manual_seed(3)
    ids = torch.randint(0, VOCAB, (1, T))
    base = predict_position(model, ids, 4)
    own = ids.clone()
    own[0, 4] = (ids[0, 4] + 1) % VOCAB
    assert torch.equal(predict_position(model, own, 4), base)
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % VOCAB
    assert (predict_position(model, other, 4) - base).abs().max() > 1e-3


def test_loss_is_the_mean_cross_entropy_of_the_targets():
    model = tiny_model()
    torch.manual_seed(4)
    ids = torch.randint(0, VOCAB, (2, T))
    f = sample_factorisation(2, T, 3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss = permutation_loss(model, ids, f).loss
        logits = model(ids, perm_mask=f.perm_mask, predict_at=f.predict_at).logits
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), ids.gather(1, f.predict_at).reshape(-1))
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


def test_segments_recur_with_memory_and_draw_the_same_orders_for_the_same_index():
    model = tiny_model(mem_len=T)
    span = TokenSpan(torch.arange(200).remainder(VOCAB).numpy())
    batches = StreamBatches(span, T, 2)
    recurrence = PermutationRecurrence(batches, k=3, seed=7)
    first, second = batches.batch(0), batches.batch(1)
    with torch.no_grad():
        loss0, _ = recurrence(model, first)
        assert recurrence.memory is not None and recurrence.memory[0].shape == (2, T, 32)
        with_memory, _ = recurrence(model, second)
        recurrence.memory = None
        alone = recurrence.forward(model, second)
    assert loss0.isfinite()
    assert not math.isclose(with_memory.item(), alone.loss.item(), rel_tol=1e-4)  # the previous segment is read
    orders = [sample_factorisation(2, T, 3, segment_generator(7, 1)).order for _ in range(2)]
    assert torch.equal(*orders)  # a pure function of seed and index: an exact resume redraws them
    with pytest.raises(UserError, match="2 tokens or more"):
        PermutationRecurrence(StreamBatches(span, 1, 2), k=3)


@pytest.mark.usefixtures("isolated_cache")
def test_resumed_run_matches_uninterrupted(tmp_path, corpus_dir, monkeypatch):
    """The orders are a function of the segment's index and the memory is saved beside each checkpoint: a run
    killed mid-way and resumed ends with the uninterrupted run's weights and metrics, bit for bit."""
    tokenizer = Tokenizer.train([corpus_dir / "train.txt"], kind="gpt2", vocab_size=300)

    def run(run_dir, resume=False):
        train = TrainConfig(steps=6, lr=1e-2, warmup_steps=2, eval_every=3, save_every=3, log_every=1)
        config = XLNetConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, mlp_dim=64, mem_len=8)  # dropout 0.1
        return pretrain_permutation_lm(LMData.resolve(corpus_dir), run_dir, config, train, block_size=8,
                                       batch_size=4, tokenizer=tokenizer, resume=resume, k=3, eval_batches=2)

    reference = run(tmp_path / "a")
    with monkeypatch.context() as patch:  # as if the process died in step 5; the last checkpoint is step 3
        patch.setattr(permutation_lm, "StreamBatches", dying_at(StreamBatches, 4))
        with pytest.raises(Interrupt):
            run(tmp_path / "b")
    resumed = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]  # noqa: E731
    assert strip(metrics_records(tmp_path / "a")) == strip(metrics_records(tmp_path / "b"))
