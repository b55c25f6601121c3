"""Generation: cache equals no cache, greedy equals the reference, sampling filters and batches behave."""

import pytest
import torch

from ctxlm.generate import filter_logits, generate_ids
from helpers import GPT_CONFIGS, gpt_fp32, gpt_reference_pair
from tolerances import assert_fp_close

pytest.importorskip("transformers")  # the reference pairs


@pytest.mark.numeric
@pytest.mark.fp32  # exact semantics: the cache changes nothing but the work
@pytest.mark.parametrize("spec", [GPT_CONFIGS[1], GPT_CONFIGS[3]], ids=["gpt2", "gpt"])
def test_cached_generation_equals_uncached(spec):
    _, model = gpt_reference_pair(*spec)
    prompts = [[5, 6, 7, 8, 9], [3, 1], [4, 4, 4]]  # ragged: left padding and a per-row position offset
    cached = generate_ids(model, prompts, max_new_tokens=12, return_scores=True)
    uncached = generate_ids(model, prompts, max_new_tokens=12, return_scores=True, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert_fp_close(cached.scores, uncached.scores, **gpt_fp32(*spec))


@pytest.mark.numeric
@pytest.mark.fp32  # exact semantics: padding and batching change nothing but the work
@pytest.mark.parametrize("spec", [GPT_CONFIGS[1], GPT_CONFIGS[3]], ids=["gpt2", "gpt"])
def test_batched_rows_equal_single_prompts(spec):
    _, model = gpt_reference_pair(*spec)
    prompts = [[5, 6, 7, 8, 9], [3, 1]]
    batch = generate_ids(model, prompts, max_new_tokens=8, return_scores=True)
    for i, prompt in enumerate(prompts):
        alone = generate_ids(model, [prompt], max_new_tokens=8, return_scores=True)
        assert batch.tokens[i] == alone.tokens[0]
        assert_fp_close(batch.scores[i], alone.scores[0], **gpt_fp32(*spec))


@pytest.mark.numeric
@pytest.mark.parametrize("spec", [GPT_CONFIGS[0], GPT_CONFIGS[2]], ids=["gpt2", "gpt"])
@pytest.mark.fp32
def test_greedy_continuation_equals_reference_generate(spec):
    ref, model = gpt_reference_pair(*spec)
    prompt = [11, 12, 13, 14]
    expected = ref.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False, pad_token_id=0,
                            attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0, len(prompt):]
    assert generate_ids(model, [prompt], max_new_tokens=15).tokens[0] == expected.tolist()


@pytest.mark.default_precision
def test_eos_ends_a_row_and_generation_stops_at_context():
    _, model = gpt_reference_pair(*GPT_CONFIGS[0])  # 64 positions
    first = generate_ids(model, [[1, 2, 3]], max_new_tokens=5).tokens[0]
    eos = first[2]
    out = generate_ids(model, [[1, 2, 3]], max_new_tokens=5, eos_id=eos).tokens[0]
    assert out == first[: first.index(eos) + 1]
    long = generate_ids(model, [[1] * 60], max_new_tokens=50).tokens[0]
    assert len(long) == 4  # 60 + 4 = the 64-position context


@pytest.mark.default_precision
def test_sampling_is_seeded_and_filters_apply():
    _, model = gpt_reference_pair(*GPT_CONFIGS[0])
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=5, seed=3)
    assert generate_ids(model, [[1, 2]], **kwargs).tokens == generate_ids(model, [[1, 2]], **kwargs).tokens
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, ...: top_p=0.8 keeps the first two
    assert probs[0] < 0.8 < probs[0] + probs[1]
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True, True]]
    top1 = generate_ids(model, [[1, 2]], max_new_tokens=6, temperature=1.0, top_k=1, seed=0).tokens
    assert top1 == generate_ids(model, [[1, 2]], max_new_tokens=6).tokens  # top-1 sampling is greedy


@pytest.mark.default_precision
def test_text_generation_stops_before_stop_strings(tiny_model_dir):
    import ctxlm

    model = ctxlm.load(tiny_model_dir)
    free = ctxlm.generate(model, ["the cat", "a dog sees"], max_new_tokens=12)
    assert len(free) == 2 and all(isinstance(t, str) for t in free)
    cut = free[0][len(free[0]) // 2:][:2]
    assert cut, free
    stopped = ctxlm.generate(model, ["the cat"], max_new_tokens=12, stop=[cut])[0]
    assert stopped == free[0][: free[0].index(cut)]


@pytest.mark.default_precision
def test_empty_prompt_generates_unconditionally(tiny_model_dir):
    import ctxlm

    model = ctxlm.load(tiny_model_dir)
    assert isinstance(ctxlm.generate(model, "", max_new_tokens=5)[0], str)
