"""The model a server holds, what it can do, and the inference behind each endpoint but /predict and /generate.

`load_served(name)` reads a model (`ctxlm.load`: "minilm", a model folder, a pretraining run) or a fine-tuned run
(`load_finetuned`; its language model then serves every other endpoint too). Each method here is synchronous
and runs in the server's inference thread; its arguments are already checked (`limits`), but what only the
model can tell (a text too long for its context, a word that is in none of the sentences) is refused here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.api import load
from ctxlm.embed import choose_layers, embed  # embed's own parser of `layers`: refusals read as embed's
from ctxlm.errors import UserError
from ctxlm.nn.attention import MultiHeadAttention, RelativeMultiHeadAttention, recording_attention
from ctxlm.serve.limits import Limits, Refused
from ctxlm.tokenizers import Encoding
from ctxlm.train import pick_device
from ctxlm.transfer.model import HeadedModel, finetuned_folder, load_finetuned

# BERT's feature-based study (Devlin et al. 2018, Table 7): which layers make the best features.
COMBINATIONS = (("embeddings", "Embeddings"), ("second-to-last", "Second-to-last hidden"),
                ("last", "Last hidden"), ("sum-last-4", "Sum of the last four hidden"),
                ("concat-last-4", "Concat of the last four hidden"), ("sum", "Sum of all hidden layers"))
WORDS = re.compile(r"\w+|[^\w\s]")  # the polysemy view's words: runs of letters and digits, single other marks


def _round(values: Tensor, digits: int = 4) -> list:
    """A tensor as nested lists of floats with `digits` decimals (in float64, so that they print short)."""
    scale = 10.0 ** digits
    return values.double().mul(scale).round().div(scale).tolist()


@dataclass
class Served:
    """A loaded model: `lm` (with .config, .tokenizer, .backbone), and `task_model` for a fine-tuned run."""

    name: str
    lm: nn.Module
    task_model: HeadedModel | None = None
    limits: Limits = Limits()

    @property
    def config(self):
        return self.lm.config

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # ---- what it can do ---------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, bool]:
        """Which endpoints (and explorer panels) this model supports."""
        config = self.config
        attention = any(isinstance(m, MultiHeadAttention | RelativeMultiHeadAttention)
                        for m in self.lm.backbone.modules())
        return {"tokenize": True, "embed": True, "layers": True, "neighbours": True, "attention": attention,
                "fill_mask": getattr(self.lm, "mlm", None) is not None,
                "generate": bool(config.causal) and (hasattr(self.lm, "new_cache") or config.has_memory),
                "memory": bool(config.has_memory), "predict": self.task_model is not None}

    def info(self) -> dict[str, Any]:
        config, tokenizer = self.config, self.tokenizer
        heads = getattr(config, "n_heads", None) if self.capabilities()["attention"] else None
        task = None
        if self.task_model is not None:
            spec = self.task_model.spec
            task = {"name": spec.name, "kind": spec.kind, "labels": list(spec.labels),
                    "regression": bool(getattr(spec, "regression", False))}
        return {"model": self.name, "family": config.model_type, "layers": config.n_layers, "heads": heads,
                "dim": config.hidden_dim, "max_positions": config.max_positions,
                "causal": config.causal, "has_segments": config.has_segments, "word_level": config.word_level,
                "has_memory": config.has_memory, "mem_len": getattr(config, "mem_len", None),
                "mask_token": (getattr(tokenizer, "special_tokens", {}) or {}).get("mask"),
                "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                "combinations": [{"name": n, "label": label} for n, label in self.combinations()],
                "capabilities": self.capabilities(), "task": task, "limits": self.limits.public(),
                "device": str(self.device)}

    def combinations(self) -> list[tuple[str, str]]:
        """Table 7's readings this model has (the last four need four layers)."""
        return [(n, label) for n, label in COMBINATIONS if not n.endswith("-4") or self.config.n_layers >= 4]

    def require(self, capability: str, endpoint: str) -> None:
        """Refuse an endpoint the model cannot serve, saying why."""
        if self.capabilities()[capability]:
            return
        family = self.config.model_type
        reasons = {
            "attention": f"{family} is an LSTM language model: it has no attention weights to show",
            "fill_mask": f"this {family} model has no masked-LM head" + (
                " (a decoder predicts the next token: use /generate)" if self.config.causal else
                " (a sentence-embedding encoder such as MiniLM ships without one)"),
            "generate": f"{family} is not a decoder: /generate needs a causal language model (gpt, gpt2, "
                        "transformer-xl)",
            "memory": f"{family} has no segment memory: only Transformer-XL carries states across segments",
            "predict": "this is not a fine-tuned model: serve a run folder written by `ctxlm finetune` to use "
                       "/predict",
        }
        raise Refused(f"{endpoint}: {reasons[capability]}", 400)

    # ---- tokens -----------------------------------------------------------------------------------------
    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id's vocabulary entry (GPT-2's "Ġthe", BERT's "##ing", ELMo's and Transformer-XL's words)."""
        tokenizer = self.tokenizer
        backend = getattr(tokenizer, "backend", None)
        if backend is not None:
            return [backend.id_to_token(i) or "" for i in ids]
        words = tokenizer.words.words if hasattr(tokenizer.words, "words") else tokenizer.words
        return [words[i] for i in ids]

    def readable(self, ids: list[int]) -> list[str]:
        """Each token as a reader sees it (`token_texts`: GPT-2's "Ġthe" as " the", Cyrillic as Cyrillic)."""
        return self.tokenizer.token_texts(ids)

    def model_input(self, text: str) -> Encoding:
        """`text` as the model reads it: BERT `[CLS] text [SEP]`, ELMo `<S> words </S>`, a decoder's plain tokens
        (a text without tokens as end-of-text, as `ctxlm.embed` reads it)."""
        tokenizer = self.tokenizer
        if not self.config.causal or self.config.word_level:
            encoding = tokenizer.encode_text(text)
        else:
            encoding = tokenizer.encode_plain_batch([text])[0]
        if not encoding.ids:
            stand_in = next(i for i in (tokenizer.eos_id, getattr(tokenizer, "start_id", None), tokenizer.pad_id)
                            if i is not None)
            encoding = Encoding([stand_in], None, [None], [(0, 0)])
        return encoding

    def tokenize(self, text: str) -> dict[str, Any]:
        encoding = self.model_input(text)
        special = self.tokenizer.special_ids
        tokens = self.token_strings(encoding.ids)
        return {"text": text, "tokens": tokens, "display": self.readable(encoding.ids), "ids": encoding.ids,
                "offsets": [list(span) for span in encoding.offsets], "word_ids": encoding.word_ids,
                "pieces": [text[a:b] for a, b in encoding.offsets],
                "special": [i in special and w is None for i, w in zip(encoding.ids, encoding.word_ids, strict=True)],
                "segments": encoding.segments, "count": len(encoding.ids),
                "max_positions": self.config.max_positions, "fits": len(encoding.ids) <= self.config.max_positions}

    # ---- embeddings -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_batch(self, options: tuple, texts: list[str]) -> list[Tensor]:
        """`ctxlm.embed` over the texts of several requests with the same options: one tensor per text (a vector,
        or for pool "words" / "none" one vector per word or token)."""
        layers, pool, word_pool, normalize = options
        return list(embed(texts, self.lm, layers=layers, pool=pool, word_pool=word_pool, normalize=normalize))

    def check_embed_options(self, layers: object, pool: str) -> object:
        """`layers` as ctxlm.embed takes it (a name, a number, or a list of numbers), refused here when the
        model cannot give it (so that a bad request never joins a batch)."""
        if isinstance(layers, list):
            layers = tuple(layers)
        try:
            choose_layers(list(layers) if isinstance(layers, tuple) else layers, self.config.n_layers)
        except UserError as err:
            raise Refused(str(err)) from None
        if pool == "cls" and self.config.causal:
            raise Refused(f"pool='cls' needs an encoder; a {self.config.model_type} decoder's first state has seen "
                          "only the first token (use pool='last' or 'mean')")
        if pool == "concat" and layers == "all":
            raise Refused("pool='concat' gives one flat vector per text: choose layers other than 'all'")
        return layers

    # ---- attention --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def attention(self, text: str, layer: int | None) -> dict[str, Any]:
        """Every head's attention weights of `text` in one layer (1 = the lowest block), or in every layer."""
        encoding = self.model_input(text)
        limit = min(self.limits.attention_tokens, self.config.max_positions)
        if len(encoding.ids) > limit:
            raise Refused(f"text is {len(encoding.ids)} tokens; /attention takes at most {limit}", 413)
        n_layers = self.config.n_layers
        if layer is not None and not 1 <= layer <= n_layers:
            raise Refused(f"layer={layer}: expected 1 to {n_layers} (the model's attention layers)")
        ids = torch.tensor([encoding.ids], device=self.device)
        with recording_attention(self.lm.backbone) as weights:
            self.lm.backbone(ids, **self._segments(encoding))
        picked = range(1, n_layers + 1) if layer is None else [layer]
        return {"tokens": self.token_strings(encoding.ids), "display": self.readable(encoding.ids), "ids": encoding.ids,
                "offsets": [list(span) for span in encoding.offsets], "word_ids": encoding.word_ids,
                "layers": n_layers, "heads": int(weights[0].shape[1]), "layer_numbers": list(picked),
                "attention": [_round(weights[k - 1][0], 4) for k in picked]}

    def _segments(self, encoding: Encoding) -> dict[str, Tensor]:
        if self.config.has_segments and encoding.segments is not None:
            return {"segments": torch.tensor([encoding.segments], device=self.device)}
        return {}

    # ---- the polysemy view: one word in several sentences, layer by layer ---------------------------------
    @torch.inference_mode()
    def layers(self, sentences: list[str], word: str) -> dict[str, Any]:
        """Cosine similarities between the vectors of `word` in `sentences`, at every layer (0 = embeddings or
        ELMo's character layer). A word is a run of letters and digits; its vector the mean of its tokens'."""
        target = WORDS.findall(word.strip())
        if len(target) != 1:
            raise Refused(f"word={word!r}: expected one word (letters and digits, no spaces)")
        target = target[0].casefold()
        split = [WORDS.findall(s) for s in sentences]
        where = [next((j for j, w in enumerate(words) if w.casefold() == target), None) for words in split]
        found = [i for i, j in enumerate(where) if j is not None]
        if len(found) < 2:
            raise Refused(f"the word {target!r} is in {len(found)} of the {len(sentences)} sentences; give at least "
                          "two sentences that use it")
        vectors = embed([split[i] for i in found], self.lm, layers="all", pool="words", word_pool="mean")
        picked, kept = [], []
        for i, v in zip(found, vectors, strict=True):
            if where[i] < len(v):  # a word past the model's context has no vector
                picked.append(v[where[i]])
                kept.append(i)
        if len(picked) < 2:
            raise Refused("the word falls past the model's context in all but one sentence; use shorter ones")
        stacked = F.normalize(torch.stack(picked).transpose(0, 1), dim=-1)  # (layers + 1, sentences, dim)
        cosine = stacked @ stacked.transpose(1, 2)
        n = len(picked)
        off_diagonal = ~torch.eye(n, dtype=torch.bool)
        mean = cosine[:, off_diagonal].mean(-1)
        return {"word": target, "sentences": sentences, "found": kept,
                "words": [split[i][where[i]] for i in kept], "word_index": [where[i] for i in kept],
                "layer_numbers": list(range(len(cosine))), "layer_names": self.layer_names(),
                "cosine": _round(cosine), "mean_cosine": _round(mean)}

    def layer_names(self) -> list[str]:
        n = self.config.n_layers
        if self.config.model_type == "elmo":
            return ["characters (context-free)"] + [f"LSTM {k}" for k in range(1, n + 1)]
        return ["embeddings"] + [f"layer {k}" for k in range(1, n + 1)]

    # ---- BERT's Table 7: which layers make the features, judged by nearest neighbours ----------------------
    @torch.inference_mode()
    def neighbours(self, texts: list[str], pool: str) -> dict[str, Any]:
        """Each text's nearest other text by the cosine of its vectors under each of Table 7's combinations.
        One forward pass: the pooled states of every layer, combined afterwards (pooling is linear, so a sum
        or concatenation of pooled layers is the pooled sum or concatenation)."""
        states = embed(texts, self.lm, layers="all", pool=pool)  # (texts, layers + 1, dim)
        top = self.config.n_layers
        readings = {"embeddings": states[:, 0], "second-to-last": states[:, top - 1], "last": states[:, top],
                    "sum": states[:, 1:].sum(1)}
        if top >= 4:
            readings["sum-last-4"] = states[:, top - 3:].sum(1)
            readings["concat-last-4"] = states[:, top - 3:].flatten(1)
        out = []
        for name, label in self.combinations():
            unit = F.normalize(readings[name], dim=-1)
            cosine = unit @ unit.T
            others = cosine.masked_fill(torch.eye(len(texts), dtype=torch.bool), float("-inf"))
            best = others.max(-1)
            out.append({"name": name, "label": label, "dim": int(readings[name].shape[-1]),
                        "nearest": best.indices.tolist(), "nearest_cosine": _round(best.values),
                        "cosine": _round(cosine)})
        return {"texts": texts, "pool": pool, "combinations": out}

    # ---- masked words -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def fill_mask(self, text: str, top_k: int) -> dict[str, Any]:
        tokenizer = self.tokenizer
        encoding = tokenizer.encode_text(text)
        positions = [i for i, t in enumerate(encoding.ids) if t == tokenizer.mask_id]
        mask_token = tokenizer.special_tokens.get("mask", "[MASK]")
        if not positions:
            raise Refused(f"text has no {mask_token}: put {mask_token} where a word is missing")
        if len(encoding.ids) > self.config.max_positions:
            raise Refused(f"text is {len(encoding.ids)} tokens, longer than the model's "
                          f"{self.config.max_positions} positions", 413)
        ids = torch.tensor([encoding.ids], device=self.device)
        logits = self.lm(ids, **self._segments(encoding)).logits[0, positions].float()
        special = sorted(tokenizer.special_ids)
        logits[:, special] = float("-inf")  # a special token is never the missing word
        probs = logits.softmax(-1)
        best = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        masks = []
        for position, p, i in zip(positions, best.values, best.indices, strict=True):
            ids_ = i.tolist()
            masks.append({"position": position, "candidates": [
                {"token": token, "display": shown, "id": t, "text": tokenizer.decode([t]), "probability": prob}
                for token, shown, t, prob in zip(self.token_strings(ids_), self.readable(ids_), ids_, _round(p),
                                                 strict=True)]})
        return {"text": text, "tokens": self.token_strings(encoding.ids), "display": self.readable(encoding.ids),
                "masks": masks}

    # ---- Transformer-XL's memory --------------------------------------------------------------------------
    @torch.inference_mode()
    def memory(self, segments: list[str], mem_len: int | None) -> dict[str, Any]:
        """Segments read one after another, each with the memory the ones before left: what the memory holds
        when each segment is read, and the share of each layer's attention that goes to each earlier segment."""
        mem_len = self.config.mem_len if mem_len is None else mem_len
        tokenizer = self.tokenizer
        memory, held, out = None, [], []  # held: (segment, word) of each memory position
        for s, text in enumerate(segments):
            ids = tokenizer.encode(text)
            if not ids:
                raise Refused(f"segments[{s}] has no words")
            words = self.token_strings(ids)
            with recording_attention(self.lm.backbone) as weights:
                hidden = self.lm.backbone(torch.tensor([ids], device=self.device), memory=memory, mem_len=mem_len)
            owner = torch.tensor([seg for seg, _ in held] + [s] * len(ids))
            share = []
            for w in weights:  # (1, heads, queries, memory + queries)
                mass = w[0].mean((0, 1))  # each key's mean weight over heads and queries
                share.append(_round(torch.zeros(s + 1).index_add(0, owner, mass.cpu())))
            out.append({"segment": s, "tokens": words,
                        "memory": [{"segment": seg, "token": word} for seg, word in held],
                        "attention_by_segment": share})
            held = (held + [(s, w) for w in words])[max(0, len(held) + len(words) - mem_len):] if mem_len else []
            memory = hidden.memory
            if memory is not None and len(held) != memory[0].shape[1]:
                raise RuntimeError(f"memory holds {memory[0].shape[1]} positions, expected {len(held)}")
        return {"mem_len": mem_len, "segments": out,
                "memory": [{"segment": seg, "token": word} for seg, word in held]}


def load_served(name: str | Path, *, device: str = "auto", limits: Limits | None = None) -> Served:
    """The model to serve: "minilm", a model folder, a pretraining run, or a fine-tuned run (its task model, and
    its language model for the other endpoints)."""
    device = pick_device(device)
    task_model = None
    path = Path(name)
    if path.is_dir() and _is_finetuned(path):
        import ctxlm.qa  # noqa: F401 - registers question answering's model with transfer/

        task_model = load_finetuned(path, device=device).eval()
        lm = task_model.lm
    else:
        lm = load(name, device=device)
    lm.eval()
    if lm.tokenizer is None:
        raise UserError(f"{name}: the model has no tokenizer (save one beside its weights)")
    return Served(str(name), lm, task_model, limits or Limits())


def _is_finetuned(path: Path) -> bool:
    try:
        finetuned_folder(path)
    except UserError:
        return False
    return True
