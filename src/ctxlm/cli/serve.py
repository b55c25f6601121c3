"""`ctxlm serve`: one model behind a local JSON API, with an explorer page (`ctxlm.serve`)."""

from __future__ import annotations

import click


@click.command(epilog="""\b
The JSON API from a shell, e.g.:
  curl -s 127.0.0.1:8000/embed -d '{"texts": ["a gorgeous, witty movie"], "normalize": true}'

\b
Examples:
  ctxlm serve minilm                          # then open http://127.0.0.1:8000/
  ctxlm serve runs/gpt2-wikitext2 --port 8080  # a decoder: generation step by step
  ctxlm serve runs/minilm-sst2                 # a fine-tuned run: /predict with probabilities
  ctxlm serve minilm --max-batch 1             # no micro-batching: one request at a time
""")
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; 0.0.0.0 opens the server to every machine that can reach this one")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="most texts (or /predict inputs) that concurrent requests share in one forward pass; 1 runs one "
                   "request at a time")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="how long a request waits for others to join its batch")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def serve(model, host, port, max_batch, max_wait_ms, device, log_level) -> None:
    """Serve MODEL ('minilm', a model folder, a pretraining or fine-tuning run) on a local JSON API (/embed,
    /tokenize, /attention, /layers, /fill-mask, /generate, /predict, ...; /openapi.json describes them) with an
    explorer page at /."""
    from ctxlm.serve import create_app, load_served
    from ctxlm.serve.server import bind, is_loopback, run

    bind(host, port).close()  # a port in use says so before the model loads
    served = load_served(model, device=device)
    app = create_app(served, max_batch=max_batch, max_wait=max_wait_ms / 1000)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {model} ({served.config.model_type}) on http://{shown}:{port}/ : the explorer page; "
               f"the API is described at /openapi.json. Ctrl-C stops it.", err=True)
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}, not only this machine: anyone who can reach it can use the "
                   "model", err=True)
    run(app, host, port, log_level=log_level)


COMMANDS = [serve]
