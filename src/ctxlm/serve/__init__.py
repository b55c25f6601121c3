"""`ctxlm serve`: one model behind a local JSON API, and an explorer page for it.

- `served.py`: loading the model (or fine-tuned run), what it can do, the inference behind each endpoint;
- `generation.py`: generation one token at a time, with each step's candidates (streamed as server-sent events);
- `predict.py`: a fine-tuned run's inputs and predictions with every label's probability;
- `batching.py`: the inference thread, and micro-batching of concurrent /embed and /predict requests;
- `limits.py`: what a request may ask for, and one-line 4xx refusals of the rest;
- `app.py`: the routes; `openapi.py`: /openapi.json; `server.py`: uvicorn, in the foreground or a thread;
- `static/`: the explorer page (HTML, JavaScript, CSS: no network needed).

    from ctxlm.serve import create_app, load_served
    app = create_app(load_served("minilm"))          # any ASGI server runs it; `ctxlm serve minilm` uses uvicorn
"""

from ctxlm.serve.app import create_app
from ctxlm.serve.limits import Limits
from ctxlm.serve.served import Served, load_served
from ctxlm.serve.server import BackgroundServer, run

__all__ = ["BackgroundServer", "Limits", "Served", "create_app", "load_served", "run"]
