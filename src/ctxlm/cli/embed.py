"""`ctxlm embed`: a file of texts → contextual vectors, saved or searched."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from safetensors.torch import save_file

from ctxlm.cli.options import inference_precision_option
from ctxlm.embed import POOLS
from ctxlm.embed import embed as run
from ctxlm.errors import UserError
from ctxlm.progress import progress
from ctxlm.textfiles import JsonLinesOutput, check_json_unicode, decode_line

OUTPUT_SUFFIXES = (".npy", ".safetensors", ".jsonl")


@click.command(epilog="""\b
Input: one text per line (every line, blank ones too, so that row i is line i), or JSON lines with a "text"
field (--format jsonl, the default for a .jsonl file). Output by suffix: .npy, .safetensors (key
"embeddings"), or .jsonl ({"text", "embedding"} per line; the only one for --pool words/none).
Examples:
  # sentence vectors from the packaged MiniLM, as sentence-transformers makes them
  ctxlm embed --input sentences.txt --output vectors.npy --normalize
  # BERT's feature-based recipe: the last four layers concatenated, one vector per word
  ctxlm embed minilm --input sentences.txt --layers concat-last-4 --pool words --output words.jsonl
  # every layer, for a learned scalar mix (ELMo); or chosen layers, concatenated
  ctxlm embed --input docs.jsonl --layers all --output layers.safetensors
  ctxlm embed runs/gpt2-wt2 --input sentences.txt --layers 0,2,4 --pool last --output gpt2.npy
  # whole reviews, however long: 512-token windows, their vectors pooled into one per review
  ctxlm embed minilm --input reviews.txt --long-text windows --output reviews.npy
  # the five texts closest to a query
  ctxlm embed --input faq.txt --similar "how do I reset my password" --top-k 5
""")
@click.argument("model", default="minilm")
@click.option("--input", "input_path", default="-", show_default=True, help="file of texts (- = stdin)")
@click.option("--format", "input_format", type=click.Choice(["lines", "jsonl"]),
              help="[default: jsonl for a .jsonl file, else lines]")
@click.option("--output", type=click.Path(dir_okay=False), help="where to write the vectors (.npy, .safetensors, "
              ".jsonl); not needed with --similar")
@click.option("--layers", default="last", show_default=True,
              help="last, second-to-last, sum, sum-last-4, concat-last-4, all, a layer number (0 = embeddings, "
              "-1 = top), or several: 0,3,6")
@click.option("--pool", type=click.Choice(POOLS), default="mean", show_default=True,
              help="one vector per text (cls, mean, last, concat: ULMFiT's [last, max, mean]), per word, or per "
                   "token (none)")
@click.option("--word-pool", type=click.Choice(["first", "mean"]), default="first", show_default=True,
              help="--pool words: a word's first sub-token, or the mean of its sub-tokens")
@click.option("--normalize", is_flag=True, help="L2-normalise every vector")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--max-length", type=int, help="tokens per model input [default: the model's context]")
@click.option("--long-text", default="truncate", show_default=True,
              help="a longer text: truncate (with a warning), head-tail (its first 128 of every 510 tokens and "
                   "its last; 'head-tail:head=N'), or windows (all of it, in windows whose vectors are pooled into "
                   "one; 'windows:stride=N' overlaps them)")
@inference_precision_option()
@click.option("--bf16", is_flag=True, hidden=True, help="the former spelling of --precision bf16")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
@click.option("--similar", "query", help="print the input texts nearest to this query by cosine, with scores")
@click.option("--top-k", default=5, show_default=True, help="how many texts --similar prints")
@click.option("--resume", is_flag=True, help="a .jsonl --output is written as it goes, flushed every 16 batches: "
              "continue the file of an interrupted run (same input and options) after its last complete record")
def embed(model, input_path, input_format, output, layers, pool, word_pool, normalize, batch_size, max_length,
          long_text, precision, bf16, device, query, top_k, resume) -> None:
    """Contextual embeddings of texts: write them to a file, or find the texts nearest to a query."""
    if bf16:  # the option before --precision existed: still understood, said once
        if precision == "fp32":
            raise UserError("--bf16 and --precision fp32 contradict each other; --bf16 is now --precision bf16")
        click.echo("note: --bf16 is now --precision bf16 (the default, auto, picks bf16 where the hardware has bf16 "
                   "units)", err=True)
        precision = "bf16"
    if output is None and query is None:
        raise UserError("give --output (.npy, .safetensors or .jsonl), or --similar QUERY")
    if output is not None:
        check_output(Path(output), ragged=pool in ("words", "none"))
    if query is not None and (pool in ("words", "none") or layers == "all"):
        raise UserError("--similar needs one vector per text: --pool cls, mean, last or concat, and --layers other "
                        "than all")
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: expected a positive integer")
    streamed = output is not None and Path(output).suffix == ".jsonl"  # written as it goes
    if resume and not streamed:
        raise UserError("--resume continues a .jsonl --output, which is written as it goes; .npy and .safetensors "
                        "files are written once, at the end")
    texts = read_texts(input_path, input_format)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = dict(layers=parse_layers(layers), pool=pool, word_pool=word_pool, batch_size=batch_size,
                   max_length=max_length, long_text=long_text, device=device, dtype=precision)
    if streamed:
        vectors = write_as_it_goes(Path(output), texts, model, normalize, options, resume=resume,
                                   keep=query is not None)
        click.echo(f"wrote the vectors of {len(texts)} texts to {output}")
    else:
        vectors = run(texts, model, normalize=normalize, progress=True, **options)
    if output is not None and not streamed:
        write_vectors(Path(output), texts, vectors)
        what = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else f"the vectors of {len(texts)} texts"
        click.echo(f"wrote {what} to {output}")
    if query is not None:
        scores = torch.nn.functional.normalize(vectors, dim=-1) @ run(query, model, normalize=True, **options)
        best = scores.topk(min(top_k, len(texts)))
        for score, i in zip(best.values.tolist(), best.indices.tolist(), strict=True):
            click.echo(f"{score:.4f}\t{texts[i]}")


def parse_layers(value: str) -> str | int | list[int]:
    """--layers: one layer number, or comma-separated numbers; anything else is a name, which ctxlm.embed checks
    (as it checks the numbers' range) and, if unknown, answers with the valid names."""
    try:
        numbers = [int(part) for part in value.split(",")]
    except ValueError:
        return value
    return numbers[0] if len(numbers) == 1 else numbers


def read_texts(path: str, input_format: str | None) -> list[str]:
    """Texts of a file, or of stdin for "-": every line ("lines"; its "\\n" or "\\r\\n" ending removed), or the
    "text" of each JSON object line ("jsonl"; blank lines are no texts). UTF-8, a byte-order mark at the start
    dropped; anything else is a UserError naming the line."""
    input_format = input_format or ("jsonl" if path.endswith(".jsonl") else "lines")
    if path == "-":
        return _parse_texts(sys.stdin.buffer, "<stdin>", input_format)
    try:
        with open(path, "rb") as lines:
            return _parse_texts(lines, path, input_format)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _parse_texts(lines, name: str, input_format: str) -> list[str]:
    """Bytes are decoded line by line, so that bad UTF-8 is reported with its line number."""
    texts = []
    for number, raw in enumerate(lines, 1):
        line = decode_line(raw, name, number)
        if number == 1 and not line:  # the file is a byte-order mark and nothing else: no line at all
            continue
        line = line.removesuffix("\n").removesuffix("\r")
        if input_format == "lines":
            texts.append(line)
        elif line.strip():  # JSON lines: blank lines separate nothing and are skipped
            text = _json_text(line, f"{name}:{number}")
            check_json_unicode(text, line, name, number)
            texts.append(text)
    if not texts:
        raise UserError(f"{name}: no texts to embed")
    return texts


def _json_text(line: str, where: str) -> str:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise UserError(f'{where}: expected a JSON object with a "text" string')
    return item["text"]


def check_output(path: Path, ragged: bool) -> None:
    """Refuse an output that cannot be written before the texts are embedded, not after."""
    if path.suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--output {path}: expected a file ending in {', '.join(OUTPUT_SUFFIXES)}")
    if ragged and path.suffix != ".jsonl":
        raise UserError(f"--output {path}: per-word and per-token vectors differ in number from text to text; "
                        "write them to a .jsonl file")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: no such folder {path.parent}")


def write_vectors(path: Path, texts: list[str], vectors) -> None:
    """.npy and .safetensors take one array (n_texts, ...); .jsonl takes per-word or per-token vectors too."""
    try:
        if path.suffix == ".npy":
            np.save(path, vectors.numpy())
        elif path.suffix == ".safetensors":
            save_file({"embeddings": vectors.contiguous()}, str(path))
        else:
            with path.open("w", encoding="utf-8") as out:
                for text, vector in zip(texts, vectors, strict=True):
                    out.write(json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False) + "\n")
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror})") from None


CHUNK_BATCHES = 16  # a .jsonl output is written a chunk of this many batches at a time


def write_as_it_goes(path: Path, texts: list[str], model: str, normalize: bool, options: dict, *, resume: bool,
                     keep: bool) -> torch.Tensor | None:
    """Embed `texts` a chunk at a time (CHUNK_BATCHES batches of consecutive texts, sorted by length within the
    chunk) and append each chunk's records to the .jsonl file `path`, flushed to disk: a kill loses at most the
    chunk under way. `resume`: keep the complete records an interrupted run wrote (a last line cut short is
    written again) and go on after them; the chunks fall where an uninterrupted run's did, so the file ends as
    that run's would. Returns every vector when `keep` (for --similar), else None."""
    if options["batch_size"] < 1:
        raise UserError(f"--batch-size {options['batch_size']}: expected a positive integer")
    size = CHUNK_BATCHES * options["batch_size"]
    with JsonLinesOutput(path, resume=resume) as output:
        done = len(output.done)
        for number, record in enumerate(output.done, 1):
            if number > len(texts) or record.get("text") != texts[number - 1]:
                raise UserError(f"{path}:{number}: not the vectors of input text {number}; --resume continues the "
                                "file of the same input: name another --output, or drop --resume")
        kept = [torch.tensor(record["embedding"]) for record in output.done] if keep else None
        with progress(desc="embed", total=len(texts), initial=done, unit="text") as bar, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for first in range(done - done % size, len(texts), size):  # the chunk holding text `done` on
                chunk = texts[first:first + size]
                vectors = run(chunk, model, normalize=normalize, **options)
                new = range(max(first, done) - first, len(chunk))
                output.write([{"text": chunk[i], "embedding": vectors[i].tolist()} for i in new])
                if kept is not None:
                    kept += [vectors[i] for i in new]
                bar.update(len(new))
    warn_once(caught)
    return torch.stack(kept) if kept else None


def warn_once(caught: list[warnings.WarningMessage]) -> None:
    """The chunks' warnings, each once; "N of M texts are longer ..." added up over the chunks."""
    counted = re.compile(r"(\d+) of (\d+) texts (.*)", re.DOTALL)
    once: dict[tuple[type[Warning], str], list[int] | None] = {}  # (category, text) → counts summed, or None
    for caught_one in caught:
        category, text = caught_one.category, str(caught_one.message)
        found = counted.fullmatch(text)
        if found is None:
            once.setdefault((category, text), None)
            continue
        total = once.setdefault((category, found[3]), [0, 0])
        total[0], total[1] = total[0] + int(found[1]), total[1] + int(found[2])
    for (category, text), counts in once.items():
        warnings.warn(text if counts is None else f"{counts[0]} of {counts[1]} texts {text}", category, stacklevel=3)


COMMANDS = [embed]
