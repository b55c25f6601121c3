"""Generation one token at a time, each step with the candidates it was drawn from.

`Stepper` continues one prompt as `ctxlm.generate` does (the same forward passes, the same sampling calls, so a
seeded or greedy run gives the same tokens): GPT and GPT-2 through a key/value cache, Transformer-XL through its
memory. Each `step()` is one forward pass, so a server can run the steps of a stream as separate jobs of its
inference thread, between other requests' batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctxlm.generate import filter_logits, next_tokens
from ctxlm.serve.limits import Refused


@dataclass
class Step:
    index: int  # 0 for the first new token
    id: int
    token: str  # its vocabulary entry
    display: str  # the token as a person reads it (`token_texts`: GPT-2's "Ġare" as " are")
    probability: float  # in the distribution it was drawn from (the model's own for greedy decoding)
    candidates: list[dict]  # the likeliest tokens of that distribution: {"token", "display", "id", "text",
    #                         "probability"}
    text: str  # the continuation so far
    piece: str  # what this step added to it (a byte-level token that is part of a character adds it later)
    finished: str | None  # "eos", "length", or None while it goes on

    def public(self) -> dict:
        return {"index": self.index, "id": self.id, "token": self.token, "display": self.display,
                "probability": self.probability,
                "candidates": self.candidates, "text": self.text, "piece": self.piece, "finished": self.finished}


class Stepper:
    """One prompt continued token by token: `start()` reads the prompt, then each `step()` adds one token until
    `finished`. Construct, start and step it in the model's thread."""

    def __init__(self, lm: nn.Module, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 candidates: int = 5) -> None:
        self.lm, self.prompt, self.tokenizer = lm, prompt, lm.tokenizer
        self.temperature, self.top_k, self.top_p, self.n_candidates = temperature, top_k, top_p, candidates
        self.xl = bool(getattr(lm.config, "has_memory", False))
        self.prompt_ids = self.tokenizer.encode(prompt)
        if not self.prompt_ids and self.tokenizer.eos_id is not None:  # unconditional: start after end-of-text
            self.prompt_ids = [self.tokenizer.eos_id]
        if not self.prompt_ids:
            raise Refused("the prompt has no tokens")
        if not self.xl:
            context = lm.config.max_positions
            if len(self.prompt_ids) >= context:
                raise Refused(f"the prompt is {len(self.prompt_ids)} tokens; this model's context of {context} "
                              "positions leaves no room for new ones", 413)
            max_new_tokens = min(max_new_tokens, context - len(self.prompt_ids))
        self.max_new_tokens = max_new_tokens
        self.device = next(lm.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        self.new: list[int] = []
        self.shown = ""  # the continuation's text as far as the steps have given it out
        self.finished: str | None = None
        self._logits: Tensor | None = None
        self._cache = self._memory = None

    @torch.inference_mode()
    def start(self) -> Stepper:
        ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=self.device)
        if self.xl:
            mem_len = self.lm.config.mem_len
            step = mem_len or ids.shape[1]
            for begin in range(0, ids.shape[1], step):  # the prompt in segments of at most mem_len
                out = self.lm(ids[:, begin:begin + step], memory=self._memory, mem_len=mem_len, last_only=True)
                self._memory, self._logits = out.hidden.memory, out.logits[:, -1]
        else:
            self._cache = self.lm.new_cache(1, len(self.prompt_ids) + self.max_new_tokens)
            self._logits = self.lm(ids, cache=self._cache, last_only=True).logits[:, -1]
        if self.max_new_tokens == 0:
            self.finished = "length"
        return self

    @torch.inference_mode()
    def step(self) -> Step:
        if self.finished is not None:
            raise RuntimeError("the generation has finished")
        logits = self._logits.float()
        token = next_tokens(logits, self.temperature, self.top_k, self.top_p, self.generator)
        if self.temperature <= 0:
            probs = logits.softmax(-1)[0]
        else:
            probs = filter_logits(logits / self.temperature, top_k=self.top_k, top_p=self.top_p).softmax(-1)[0]
        chosen = int(token[0])
        self.new.append(chosen)
        eos = self.tokenizer.eos_id
        if eos is not None and chosen == eos:
            self.finished = "eos"
        elif len(self.new) >= self.max_new_tokens:
            self.finished = "length"
        else:  # the next step's distribution, read now: one forward pass per step
            if self.xl:
                out = self.lm(token[:, None], memory=self._memory, mem_len=self.lm.config.mem_len, last_only=True)
                self._memory = out.hidden.memory
            else:
                out = self.lm(token[:, None], cache=self._cache, last_only=True)
            self._logits = out.logits[:, -1]
        best = probs.topk(min(self.n_candidates, probs.shape[-1]))
        ids = [i for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True) if p > 0]
        candidates = [{"token": self._entry(i), "display": display, "id": i, "text": self.tokenizer.decode([i]),
                       "probability": round(float(probs[i]), 4)}
                      for i, display in zip(ids, self.tokenizer.token_texts(ids), strict=True)]
        text = self.text()
        # A character split over byte-level tokens decodes as U+FFFD until its last byte comes: hold it back.
        settled = text if self.finished else text.rstrip("\ufffd")
        piece = settled[len(self.shown):] if settled.startswith(self.shown) else settled
        self.shown = settled
        return Step(len(self.new) - 1, chosen, self._entry(chosen), self.tokenizer.token_texts([chosen])[0],
                    round(float(probs[chosen]), 4), candidates, text, piece, self.finished)

    def text(self) -> str:
        """The continuation so far, as `ctxlm.generate` returns it (the end-of-text token dropped)."""
        text = self.tokenizer.decode(self.new)
        words = getattr(self.tokenizer, "kind", None) == "transformer-xl"
        if words and text and self.prompt.strip() and not self.prompt[-1].isspace() and not text[0].isspace():
            text = " " + text
        return text

    def _entry(self, i: int) -> str:
        backend = getattr(self.tokenizer, "backend", None)
        if backend is not None:
            return backend.id_to_token(i) or ""
        return self.tokenizer.decode([i], skip_special_tokens=False)
