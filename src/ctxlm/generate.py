"""Text generation for decoders: greedy, temperature, top-k, top-p; batches of prompts with left padding and a
pre-allocated KV cache, so each new token costs one position of compute rather than the whole prefix.

Transformer-XL needs no KV cache: its memory (each layer's states of the last `mem_len` positions) is the cache.
The prompt goes through in segments of at most `mem_len` tokens, then each new token is one forward over
[memory ‖ token], whatever the length of the text so far (older positions fall out of the memory).

`dtype` ("auto", the default; "fp32"; "bf16") is the precision of the forward passes (`ctxlm.precision`): bf16
autocast where the device has bf16 units, fp32 elsewhere. Tokens are chosen from float32 logits either way; greedy
continuations under bf16 can part from the fp32 ones where two tokens score nearly alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctxlm.errors import UserError
from ctxlm.precision import inference_context, resolve_precision


@dataclass
class Generated:
    tokens: list[list[int]]  # the new tokens of each prompt, without the prompt, cut after eos / a stop string
    scores: Tensor | None = None  # (batch, steps, vocab) logits that chose each token, when asked for


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set whose probability exceeds top_p."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_tokens(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_ids(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 eos_id: int | None = None, pad_id: int = 0, seed: int | None = None, use_cache: bool = True,
                 return_scores: bool = False, mem_len: int | None = None,
                 dtype: str | torch.dtype | None = "auto") -> Generated:
    """Continue each prompt (token ids); `temperature=0` is greedy decoding. `dtype`: see the module docstring.

    Transformer-XL: `mem_len` positions of memory (default the model's); `use_cache=False` recomputes the
    whole text at every step instead (slow; equal to the memory path while the text fits in the memory)."""
    if has_memory(model):
        return generate_xl_ids(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, eos_id=eos_id, pad_id=pad_id, seed=seed, use_memory=use_cache,
                               return_scores=return_scores, mem_len=mem_len, dtype=dtype)
    if not hasattr(model, "new_cache"):
        raise UserError(f"generation needs a decoder (gpt, gpt2); this model is a {model.config.model_type} encoder")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    context = model.config.max_positions
    longest = max(len(p) for p in prompts)
    if longest > context:
        raise UserError(f"prompt of {longest} tokens is longer than the model's context of {context} positions")
    max_new_tokens = min(max_new_tokens, context - longest)  # generation stops at the end of the context
    device = next(model.parameters()).device
    autocast_dtype = resolve_precision(dtype, device)
    precision = inference_context(autocast_dtype, device)
    batch, total = len(prompts), longest + max_new_tokens
    # Ids and mask of the whole run are allocated once and filled in as tokens come: a step slices them
    # rather than concatenating. Left padding puts every row's last prompt token in column longest - 1.
    ids = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    mask = torch.ones(batch, total, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):longest] = torch.tensor(p, device=device)
        mask[i, :longest - len(p)] = False
    padded = not bool(mask.all())
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    was_training = model.training
    model.eval()
    cache = None
    if use_cache:  # in the autocast dtype under autocast: keys and values are then not cast again at every step
        cache = model.new_cache(batch, total, dtype=autocast_dtype) if autocast_dtype else model.new_cache(batch, total)
    end, scores = longest, []  # ids[:, :end] are known
    step_ids = ids[:, :end]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    with precision:  # one autocast region for every step: each weight is cast once (tokens are chosen from
        # float32 logits; no op of next_tokens is one that autocast lowers)
        for _ in range(max_new_tokens):
            out = model(step_ids, mask=mask[:, :end] if padded else None, cache=cache, last_only=True)
            logits = out.logits[:, -1].float()
            token = next_tokens(logits, temperature, top_k, top_p, generator)
            token = token.masked_fill(done, pad_id)
            # Tokens after a row's eos are never read back (attention stays within a row), so they need no masking.
            ids[:, end] = token
            end += 1
            if return_scores:
                scores.append(logits)
            if eos_id is not None:
                done |= token == eos_id
                if bool(done.all()):
                    break
            step_ids = ids[:, end - 1:end] if use_cache else ids[:, :end]
    model.train(was_training)

    tokens = ids[:, longest:end].tolist()
    if eos_id is not None:
        tokens = [row[: row.index(eos_id) + 1] if eos_id in row else row for row in tokens]
    return Generated(tokens, torch.stack(scores, 1) if return_scores and scores else None)


def has_memory(model: nn.Module) -> bool:
    """A decoder that carries states across segments (Transformer-XL) generates through its memory, not a cache;
    an encoder with a memory (XLNet) does not generate."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "has_memory", False) and getattr(config, "causal", False))


@torch.inference_mode()
def generate_xl_ids(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int = 64,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    eos_id: int | None = None, pad_id: int = 0, seed: int | None = None, use_memory: bool = True,
                    return_scores: bool = False, mem_len: int | None = None,
                    dtype: str | torch.dtype | None = "auto") -> Generated:
    """`generate_ids` for Transformer-XL: the memory carries the text across segments.

    Prompts of one length go through together (no padding: the memory has no mask); each new token is one
    forward over [memory ‖ token]. `use_memory=False` recomputes the whole text at each step, from no memory.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    mem_len = model.config.mem_len if mem_len is None else mem_len
    if mem_len < 0:
        raise UserError(f"memory length must be 0 or more, got {mem_len}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    tokens: list[list[int]] = [[] for _ in prompts]
    scores: list[Tensor | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)

    with inference_context(dtype, device):  # see generate_ids
        for rows in by_length.values():
            ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
            batch = len(rows)
            memory, logits = None, None
            if use_memory:  # the prompt in segments of at most mem_len (all at once without memory)
                step = mem_len or ids.shape[1]
                for start in range(0, ids.shape[1], step):
                    out = model(ids[:, start:start + step], memory=memory, mem_len=mem_len, last_only=True)
                    memory, logits = out.hidden.memory, out.logits[:, -1]
            new, chosen = [], []
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            for n in range(max_new_tokens):
                if not use_memory:
                    logits = model(torch.cat([ids, *[t[:, None] for t in new]], 1), last_only=True).logits[:, -1]
                logits = logits.float()
                token = next_tokens(logits, temperature, top_k, top_p, generator).masked_fill(done, pad_id)
                new.append(token)
                chosen.append(logits)
                if eos_id is not None:
                    done |= token == eos_id
                    if bool(done.all()):
                        break
                if use_memory and n + 1 < max_new_tokens:
                    out = model(token[:, None], memory=memory, mem_len=mem_len, last_only=True)
                    memory, logits = out.hidden.memory, out.logits[:, -1]
            generated = torch.stack(new, 1).tolist() if new else [[] for _ in rows]
            for j, i in enumerate(rows):
                row = generated[j]
                tokens[i] = row[: row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row
                if return_scores and chosen:
                    scores[i] = torch.stack([c[j] for c in chosen])
    model.train(was_training)
    if return_scores and all(s is not None for s in scores) and len({len(s) for s in scores}) == 1:
        return Generated(tokens, torch.stack(scores))  # rows of one length stack as for GPT
    return Generated(tokens, None)


def generate(model: nn.Module, prompts: str | list[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop: list[str] | None = None,
             seed: int | None = None, use_cache: bool = True, mem_len: int | None = None,
             dtype: str | torch.dtype | None = "auto") -> list[str]:
    """Continue text prompts with the model's own tokenizer; returns the continuations (prompt excluded).

    Each continuation ends at the end-of-text token, or just before the first of the `stop` strings.
    Transformer-XL: `mem_len` overrides the model's memory length; a word-level tokenizer's continuation
    starts with the space that separates it from the prompt. `dtype`: "auto", "fp32" or "bf16" (see the module
    docstring).
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UserError("this model has no tokenizer; load it with ctxlm.load or pass token ids to generate_ids")
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    encoded = tokenizer.encode_batch(texts)
    if tokenizer.eos_id is not None:  # an empty prompt is unconditional generation: start after end-of-text
        encoded = [ids or [tokenizer.eos_id] for ids in encoded]
    out = generate_ids(model, encoded, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id,
                       pad_id=tokenizer.pad_id, seed=seed, use_cache=use_cache, mem_len=mem_len, dtype=dtype)
    words = getattr(tokenizer, "kind", None) == "transformer-xl"  # words joined by spaces, none before the first
    results = []
    for prompt, row in zip(texts, out.tokens, strict=True):
        text = tokenizer.decode(row)
        if words and text and prompt.strip() and not prompt[-1].isspace() and not text[0].isspace():
            text = " " + text
        for s in stop or []:
            if s in text:
                text = text[: text.index(s)]
        results.append(text)
    return results
