"""The server's OpenAPI 3.1 description, served at /openapi.json (any OpenAPI viewer or client generator reads it)."""

from __future__ import annotations

from typing import Any

from ctxlm.embed import LAYER_NAMES, POOLS, WORD_POOLS

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_ERROR = {"type": "object", "properties": {"error": {"type": "string", "description": "one line: what was wrong"}},
          "required": ["error"]}


def _body(properties: dict[str, Any], required: list[str]) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}}


def _post(summary: str, properties: dict[str, Any], required: list[str], returns: dict[str, Any],
          description: str = "") -> dict:
    errors = {str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
              for code, text in ((400, "a malformed request, a bad value, or an endpoint this model does not serve"),
                                 (413, "over a limit (body size, texts, characters, tokens)"),
                                 (429, "too many requests waiting for the model"))}
    return {"post": {"summary": summary, "description": description, "requestBody": _body(properties, required),
                     "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                         "type": "object", "properties": returns}}}}, **errors}}}


def openapi(info: dict[str, Any]) -> dict[str, Any]:
    """The description for a server holding the model `info` describes (`Served.info()`)."""
    layers = {"description": f"one of {', '.join(LAYER_NAMES)}; a layer number (0 = embeddings, -1 = top); or a "
                             "list of layer numbers, concatenated",
              "oneOf": [{"type": "string", "enum": list(LAYER_NAMES)}, _INT, {"type": "array", "items": _INT}],
              "default": "last"}
    candidate = {"type": "object", "properties": {"token": _STR, "display": _STR, "id": _INT, "text": _STR,
                                                  "probability": _NUM}}
    paths = {
        "/health": {"get": {"summary": "Liveness, the model and what it can do", "responses": {"200": {
            "description": "OK"}}}},
        "/info": {"get": {"summary": "The model's shape, capabilities, limits and batching statistics",
                          "responses": {"200": {"description": "OK"}}}},
        "/embed": _post(
            "Contextual vectors (ctxlm.embed), micro-batched with concurrent requests",
            {"texts": _STRS, "layers": layers, "pool": {"type": "string", "enum": list(POOLS), "default": "mean"},
             "word_pool": {"type": "string", "enum": list(WORD_POOLS), "default": "first"},
             "normalize": {"type": "boolean", "default": False}},
            ["texts"], {"vectors": {"type": "array", "description": "one vector per text (pool cls/mean/last); "
                                    "a list of vectors per text (words/none); (layers + 1) x dim with layers='all'"},
                        "dim": _INT}),
        "/tokenize": _post(
            "The tokens the model reads, with ids, character offsets and word ids", {"text": _STR}, ["text"],
            {"tokens": _STRS, "ids": {"type": "array", "items": _INT}, "offsets": {"type": "array"},
             "word_ids": {"type": "array"}, "pieces": _STRS, "special": {"type": "array"}}),
        "/attention": _post(
            "Attention weights of every head, per layer", {"text": _STR, "layer": {
                **_INT, "description": "1 = the lowest block; omit for every layer"}}, ["text"],
            {"tokens": _STRS, "attention": {"type": "array", "description": "[layer][head][query][key]"},
             "layer_numbers": {"type": "array", "items": _INT}}),
        "/layers": _post(
            "The polysemy view: one word's vectors in several sentences, their cosines at every layer",
            {"sentences": _STRS, "word": _STR}, ["sentences", "word"],
            {"cosine": {"type": "array", "description": "[layer][sentence][sentence]"},
             "mean_cosine": {"type": "array", "items": _NUM}, "found": {"type": "array", "items": _INT}}),
        "/neighbours": _post(
            "BERT's Table 7 layer combinations, each text's nearest other text under each",
            {"texts": _STRS, "pool": {"type": "string", "enum": ["mean", "cls", "last"], "default": "mean"}},
            ["texts"], {"combinations": {"type": "array"}}),
        "/fill-mask": _post(
            "Masked-word predictions (encoders with a masked-LM head)",
            {"text": {**_STR, "description": f"with {info.get('mask_token') or '[MASK]'} where a word is missing"},
             "top_k": {**_INT, "default": 5}}, ["text"],
            {"masks": {"type": "array", "items": {"type": "object", "properties": {
                "position": _INT, "candidates": {"type": "array", "items": candidate}}}}}),
        "/generate": _post(
            "Continue a prompt (decoders); with stream=true, server-sent events, one per token",
            {"prompt": _STR, "max_new_tokens": {**_INT, "default": 32}, "temperature": {**_NUM, "default": 0.0},
             "top_k": _INT, "top_p": _NUM, "seed": _INT, "stream": {"type": "boolean", "default": False},
             "candidates": {**_INT, "default": 5}}, ["prompt"],
            {"text": _STR, "steps": {"type": "array", "items": {"type": "object", "properties": {
                "token": _STR, "display": _STR, "id": _INT, "probability": _NUM,
                "candidates": {"type": "array", "items": candidate},
                "text": _STR, "finished": _STR}}}},
            "stream=true answers text/event-stream: `data: {step}` per token, then `event: done` with the "
            "whole result (or `event: error`)."),
        "/memory": _post(
            "Transformer-XL: what the memory holds as segments are read one after another",
            {"segments": _STRS, "mem_len": _INT}, ["segments"], {"segments": {"type": "array"}}),
        "/predict": _post(
            "A fine-tuned run's predictions with probabilities, micro-batched",
            {"inputs": {"type": "array", "description": "per input: a text; [a, b] for pairs; {context, choices} "
                        "for multiple choice; words for tagging; {question, context} for question answering"}},
            ["inputs"], {"predictions": {"type": "array"}}),
    }
    return {"openapi": "3.1.0",
            "info": {"title": f"ctxlm serve: {info['model']} ({info['family']})", "version": "1",
                     "description": "A local server for one contextual language model; the explorer page is at /."},
            "paths": paths}
