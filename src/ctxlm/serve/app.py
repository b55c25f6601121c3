"""The ASGI app: the JSON API's routes, the explorer page, /openapi.json.

Each route checks its request (`limits`), refuses what the model cannot do (`Served.require`), then hands the work
to the inference thread: /embed and /predict through a `MicroBatcher` (concurrent requests share forward passes),
the others as one job each, /generate as one job per token. Whatever a request holds, the answer is JSON: 200, or
a 4xx with {"error": one line}; a 500 would be a bug, and the server stays up after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ctxlm.embed import POOLS, WORD_POOLS
from ctxlm.errors import UserError
from ctxlm.serve.batching import MicroBatcher, Worker
from ctxlm.serve.generation import Stepper
from ctxlm.serve.limits import (
    Refused,
    field_bool,
    field_choice,
    field_float,
    field_int,
    field_text,
    field_texts,
    only_fields,
    read_json,
)
from ctxlm.serve.openapi import openapi
from ctxlm.serve.predict import input_chars, parse_input, predict_batch
from ctxlm.serve.served import Served

log = logging.getLogger("ctxlm.serve")
STATIC = resources.files("ctxlm.serve") / "static"
Handler = Callable[[Request], Awaitable[Response]]


class JSON(JSONResponse):
    """JSON that keeps non-ASCII text as it is (Russian stays readable) and refuses NaN."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def error(reason: str, status: int) -> JSON:
    return JSON({"error": reason}, status_code=status)


def endpoint(handler: Handler) -> Handler:
    """A route whose refusals become 4xx answers and whose bugs become a logged 500, never a dead server."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as err:
            return error(err.reason, err.status)
        except UserError as err:
            return error(str(err).splitlines()[0] if str(err) else "bad request", 400)
        except (MemoryError, torch.OutOfMemoryError):
            return error("out of memory: send fewer or shorter texts", 503)
        except Exception:  # noqa: BLE001 - a bug: log it, answer, keep serving
            log.exception("internal error in %s", request.url.path)
            return error("internal error (a bug in ctxlm; the server's log has the traceback)", 500)

    guarded.__name__ = handler.__name__
    return guarded


def create_app(served: Served, *, max_batch: int = 64, max_wait: float = 0.005) -> Starlette:
    """The app serving `served`. `max_batch`: most texts (or /predict inputs) in one micro-batch, 1 to run one
    request at a time; `max_wait`: seconds a request waits for others to join its batch."""
    limits = served.limits
    worker = Worker()
    embedder = MicroBatcher(served.embed_batch, worker, max_batch=max_batch, max_wait=max_wait,
                            max_pending=limits.pending)
    predictor = MicroBatcher(lambda _key, items: predict_batch(served.task_model, items), worker,
                             max_batch=max_batch, max_wait=max_wait, max_pending=limits.pending)

    async def home(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html; charset=utf-8")

    async def health(request: Request) -> Response:
        info = served.info()
        return JSON({"status": "ok", "model": info["model"], "family": info["family"],
                     "capabilities": info["capabilities"]})

    async def info(request: Request) -> Response:
        return JSON({**served.info(), "batching": {"max_batch": max_batch, "max_wait_ms": max_wait * 1000,
                                                   "embed": embedder.stats.public(),
                                                   "predict": predictor.stats.public()}})

    async def openapi_json(request: Request) -> Response:
        return JSON(openapi(served.info()))

    async def embed(request: Request) -> Response:
        body = await read_json(request, limits)
        only_fields(body, ("texts", "layers", "pool", "word_pool", "normalize"))
        texts = field_texts(body, "texts", limits)
        pool = field_choice(body, "pool", "mean", POOLS)
        word_pool = field_choice(body, "word_pool", "first", WORD_POOLS)
        normalize = field_bool(body, "normalize", False)
        layers = served.check_embed_options(body.get("layers", "last"), pool)
        vectors = await embedder.submit((layers, pool, word_pool, normalize), texts)
        numbers = sum(v.numel() for v in vectors)
        if numbers > limits.numbers:
            raise Refused(f"the answer would hold {numbers:,} numbers, over the limit of {limits.numbers:,}: send "
                          "fewer or shorter texts, or pool them (pool='mean')", 413)
        vectors = await asyncio.to_thread(lambda: [v.tolist() for v in vectors])
        return JSON({"vectors": vectors, "count": len(vectors), "layers": body.get("layers", "last"), "pool": pool,
                     "normalize": normalize})

    async def tokenize(request: Request) -> Response:
        body = await read_json(request, limits)
        only_fields(body, ("text",))
        return JSON(await worker.run(served.tokenize, field_text(body, "text", limits)))

    async def attention(request: Request) -> Response:
        served.require("attention", "/attention")
        body = await read_json(request, limits)
        only_fields(body, ("text", "layer"))
        text = field_text(body, "text", limits)
        layer = field_int(body, "layer", None, 1, served.config.n_layers)
        return JSON(await worker.run(served.attention, text, layer))

    async def layers(request: Request) -> Response:
        body = await read_json(request, limits)
        only_fields(body, ("sentences", "word"))
        sentences = field_texts(body, "sentences", limits, least=2)
        word = field_text(body, "word", limits, empty=False)
        return JSON(await worker.run(served.layers, sentences, word))

    async def neighbours(request: Request) -> Response:
        body = await read_json(request, limits)
        only_fields(body, ("texts", "pool"))
        texts = field_texts(body, "texts", limits, least=2)
        pool = field_choice(body, "pool", "mean", ("mean", "cls", "last"))
        served.check_embed_options("last", pool)
        return JSON(await worker.run(served.neighbours, texts, pool))

    async def fill_mask(request: Request) -> Response:
        served.require("fill_mask", "/fill-mask")
        body = await read_json(request, limits)
        only_fields(body, ("text", "top_k"))
        text = field_text(body, "text", limits, empty=False)
        top_k = field_int(body, "top_k", 5, 1, limits.top_k)
        return JSON(await worker.run(served.fill_mask, text, top_k))

    async def memory(request: Request) -> Response:
        served.require("memory", "/memory")
        body = await read_json(request, limits)
        only_fields(body, ("segments", "mem_len"))
        segments = field_texts(body, "segments", limits)
        mem_len = field_int(body, "mem_len", None, 0, 4096)
        return JSON(await worker.run(served.memory, segments, mem_len))

    async def predict(request: Request) -> Response:
        served.require("predict", "/predict")
        body = await read_json(request, limits)
        only_fields(body, ("inputs",))
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise Refused("inputs: expected a non-empty list, one input per item")
        if len(inputs) > limits.texts:
            raise Refused(f"inputs has {len(inputs)} items, over the limit of {limits.texts} per request", 413)
        items = [parse_input(served.task_model, value, f"inputs[{i}]", limits) for i, value in enumerate(inputs)]
        total = sum(map(input_chars, items))
        if total > limits.total_chars:
            raise Refused(f"inputs hold {total:,} characters, over the limit of {limits.total_chars:,}", 413)
        predictions = await predictor.submit("predict", items)
        spec = served.task_model.spec
        return JSON({"predictions": predictions, "task": spec.name, "kind": spec.kind})

    async def generate(request: Request) -> Response:
        served.require("generate", "/generate")
        body = await read_json(request, limits)
        only_fields(body, ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stream",
                           "candidates"))
        prompt = field_text(body, "prompt", limits)
        options = dict(max_new_tokens=field_int(body, "max_new_tokens", min(32, limits.new_tokens), 1,
                                                limits.new_tokens),
                       temperature=field_float(body, "temperature", 0.0, 0.0, 100.0),
                       top_k=field_int(body, "top_k", None, 1, 2**31),  # more than the vocabulary: all of it
                       top_p=field_float(body, "top_p", None, 0.0, 1.0),
                       seed=field_int(body, "seed", None, 0, 2**63 - 1),
                       candidates=field_int(body, "candidates", 5, 1, limits.top_k))
        if options["top_p"] is not None and options["top_p"] <= 0:
            raise Refused("top_p must be above 0 (1 keeps every token)")
        stream = field_bool(body, "stream", False)
        stepper = await worker.run(lambda: Stepper(served.lm, prompt, **options).start())
        if stream:
            return StreamingResponse(_events(stepper, worker), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        steps = []
        while stepper.finished is None:
            steps.append((await worker.run(stepper.step)).public())
        return JSON({"prompt": prompt, "text": stepper.text(), "steps": steps, "finished": stepper.finished})

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await embedder.close()
        await predictor.close()
        worker.close()

    routes = [
        Route("/", home), Route("/health", health), Route("/info", info), Route("/openapi.json", openapi_json),
        *(Route(path, endpoint(handler), methods=["POST"]) for path, handler in (
            ("/embed", embed), ("/tokenize", tokenize), ("/attention", attention), ("/layers", layers),
            ("/neighbours", neighbours), ("/fill-mask", fill_mask), ("/memory", memory), ("/predict", predict),
            ("/generate", generate))),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    app.state.served, app.state.embedder, app.state.predictor, app.state.worker = served, embedder, predictor, worker
    return app


async def _events(stepper: Stepper, worker: Worker) -> AsyncIterator[str]:
    """Server-sent events: one `data:` per token, then `event: done` with the whole result (`event: error` if a
    step fails)."""
    steps = []
    try:
        while stepper.finished is None:
            step = (await worker.run(stepper.step)).public()
            steps.append(step)
            yield f"data: {json.dumps(step, ensure_ascii=False)}\n\n"
        done = {"prompt": stepper.prompt, "text": stepper.text(), "steps": len(steps), "finished": stepper.finished}
        yield f"event: done\ndata: {json.dumps(done, ensure_ascii=False)}\n\n"
    except Exception as err:  # noqa: BLE001 - the status line has gone: say it in the stream
        log.exception("generation stream failed")
        yield f"event: error\ndata: {json.dumps({'error': str(err).splitlines()[0] if str(err) else 'error'})}\n\n"
