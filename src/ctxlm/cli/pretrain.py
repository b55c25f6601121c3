"""`ctxlm pretrain`: `ctxlm.pretrain(...)` with its options, then the final figures and a glimpse of the model."""

from __future__ import annotations

import math

import click

from ctxlm import jobs
from ctxlm.cli.options import (
    deterministic_option,
    on_nonfinite_option,
    save_every_minutes_option,
    save_every_option,
    training_precision_option,
)
from ctxlm.pretrain.job import CAUSAL_LM, MASKED_LM
from ctxlm.runlog import logged_to


@click.command(epilog="""\b
Examples:
  # about 5M parameters, five minutes on a laptop CPU, then validation perplexity and a sample
  ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-wt2 --max-minutes 5
  # the 2018 GPT variant (post-LN, BPE with end-of-word markers) on your own text files
  ctxlm pretrain --model gpt --data my_corpus/ --valid my_valid.txt --out runs/gpt --steps 2000
  # on a task's own text, without its labels: SST-2's training sentences, or a column of your file
  ctxlm pretrain --model bert --data task:sst2 --out runs/bert-sst2 --block-size 64
  ctxlm pretrain --model gpt2 --data csv:reviews.csv --text-column review --out runs/gpt2-reviews
  # ULMFiT's IMDb language model: the 74,000 training and unlabelled reviews (never a test review)
  ctxlm pretrain --init runs/gpt2-wt2 --data imdb --out runs/gpt2-imdb --lr-decay 2.6 --schedule slanted
  # BERT: masked LM (15 %, 80/10/10) + next-sentence prediction, whole-word masking
  ctxlm pretrain --model bert --data wikitext2 --out runs/bert-wt2 --block-size 128 --whole-word-masking
  # RoBERTa: byte-level BPE, masked LM without next-sentence prediction on full sentences, a new mask every epoch
  ctxlm pretrain --model roberta --data wikitext2 --out runs/roberta-wt2 --block-size 128
  # ALBERT: one block shared by the layers, 128-wide embeddings, masked LM + sentence-order prediction
  ctxlm pretrain --model albert --data wikitext2 --out runs/albert-wt2 --block-size 128 --layers 6
  # ELMo: a character CNN under forward and backward LSTMs (biLM), softmax over every wikitext2 word
  ctxlm pretrain --model elmo --data wikitext2 --out runs/elmo-wt2 --dim 128 --max-minutes 10
  # ... with the published cell and projection clipping (slower: a step-by-step LSTM), adaptive softmax
  ctxlm pretrain --model elmo --data wikitext2 --out runs/elmo-clip --clip --softmax adaptive
  # Transformer-XL over wikitext2's words: segments of 128, 128 states of memory in training, 512 to evaluate
  ctxlm pretrain --model transformer-xl --data wikitext2 --out runs/xl --block-size 128 --mem-len 128 \\
      --eval-mem-len 512 --softmax adaptive --cutoffs 2000,10000 --dim 256 --max-minutes 10
  # ULMFiT's stage 2: continue a checkpoint's objective on your text (its tokenizer, sizes and weights kept);
  # minilm gets a masked-LM head tied to its token embeddings
  ctxlm pretrain --init minilm --data my_corpus/ --out runs/minilm-tapt --block-size 128 --lr 1e-4 --steps 1000
  ctxlm pretrain --init runs/gpt2-wt2 --data my_corpus/ --out runs/gpt2-tapt --lr 3e-4 --warmup 20
  # ... as ULMFiT runs it: discriminative rates (each layer group below / 2.6) and slanted triangular rates
  ctxlm pretrain --init runs/gpt2-wt2 --data task:sst2 --out runs/gpt2-sst2 --lr-decay 2.6 --schedule slanted
  # continue an interrupted run exactly where its last checkpoint left it
  ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-wt2 --resume
  # data-parallel on 4 GPUs (or CPU processes): each takes 16 rows of a global batch of 64
  torchrun --nproc_per_node=4 -m ctxlm pretrain --model gpt2 --data wikitext2 --out runs/gpt2-ddp --batch-size 16
  # a model too large to train on one GPU: each of 8 holds an eighth of its weights and optimizer state (FSDP)
  torchrun --nproc_per_node=8 -m ctxlm pretrain --model gpt2 --dim 2048 --layers 24 --heads 16 --fsdp --out runs/big
""")
@click.option("--model", type=click.Choice(["gpt2", "gpt", "bert", "roberta", "albert", "deberta", "elmo",
                                          "transformer-xl", "xlnet"]),
              help="architecture family (and objective: causal LM, masked LM + NSP for bert, masked LM on full "
              "sentences across documents for roberta and deberta, masked LM + sentence order for albert, forward "
              "+ backward LM for elmo, causal LM over segments with memory for transformer-xl, permutation LM over "
              "segments with memory for xlnet) [default: gpt2; with --init: the checkpoint's]")
@click.option("--init", metavar="MODEL", help="continue the family's objective from this checkpoint: a run or model "
              "folder, a converted Hub folder, or minilm; keeps its tokenizer and weights")
@click.option("--data", default="wikitext2", show_default=True,
              help="text file or folder (.txt/.txt.gz), or a data set name under $CTXLM_DATA (imdb: the training "
              "and unlabelled reviews, one a document, never a test review; validation: the imdb task's 1,000 dev "
              "reviews); task:NAME: the training texts of a fine-tuning task (sst2, mrpc, ...), without labels; "
              "csv:PATH: the texts of your .csv, .tsv or .jsonl file (less the 10% finetune holds out as dev)")
@click.option("--text-column", help="csv:PATH only: the column of the texts [default: text]")
@click.option("--pair-column", help="csv:PATH only: the column of each text's second text (pair tasks)")
@click.option("--valid", type=click.Path(), help="validation text (default: the folder's valid split, or 5% held out)")
@click.option("--out", type=click.Path(), required=True, help="run folder: checkpoint, metrics, loss.png")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), help="use this tokenizer folder")
@click.option("--vocab-size", type=int, help="tokenizer vocabulary to train [default: 8192]; elmo: the softmax's "
              "words, the most frequent [default: 50000, i.e. all 33,151 of wikitext2]; transformer-xl: the "
              "words of its vocabulary, the most frequent [default: all]")
@click.option("--layers", type=int, help="transformer layers [default: 4]; elmo: LSTM layers per direction "
              "[default: 2]")
@click.option("--dim", type=int, help="model width [default: 256]; elmo: token and LSTM projection width "
              "(the character CNN's filters scale with it: the published 2,048 at 512)")
@click.option("--heads", type=int, help="attention heads (not elmo) [default: 4]")
@click.option("--cell-dim", type=int, help="elmo: LSTM memory cells [default: 4 x dim]")
@click.option("--clip/--no-clip", default=None,
              help="elmo: clip LSTM cells and projections at ±3 as the published ELMo does. Off lets PyTorch's "
              "fused nn.LSTM kernel run; on runs a step-by-step LSTM, several times slower [default: no-clip]")
@click.option("--softmax", type=click.Choice(["full", "adaptive"]),
              help="elmo, transformer-xl: full softmax, or adaptive (frequent words full, rarer ones in cheaper "
              "clusters; transformer-xl: adaptive input embeddings too) [default: full]")
@click.option("--cutoffs", help="elmo, transformer-xl, --softmax adaptive: word ranks where the clusters start "
              "[default: 2000,10000]")
@click.option("--block-size", default=256, show_default=True, help="tokens per training sequence (context); "
              "transformer-xl: tokens per segment (tgt_len)")
@click.option("--mem-len", type=int, help="transformer-xl, xlnet: states of memory per layer in training [default: "
              "block size]")
@click.option("--partial-prediction", "partial_prediction", type=int, default=6, show_default=True, metavar="K",
              help="xlnet: predict the last 1/K of each random factorisation order (the paper's K)")
@click.option("--eval-mem-len", type=int, help="transformer-xl: memory when evaluating (may exceed training's) "
              "[default: mem-len]")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--grad-accum", default=1, show_default=True, help="micro-batches per optimizer step")
@click.option("--steps", default=2000, show_default=True, help="optimizer steps")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup", default=100, show_default=True, help="warm-up steps")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant", "slanted"]), default="cosine",
              show_default=True, help="after --warmup: cosine or linear decay, or constant; slanted: ULMFiT's "
              "slanted triangular rates (a rise over the first 10 % of the steps, then a linear fall; no --warmup)")
@click.option("--lr-decay", type=float, help="discriminative rates (ULMFiT's stage 2 uses 2.6 with --schedule "
              "slanted): the top layer group at --lr, each group below at the rate of the one above / this")
@click.option("--dropout", type=float, help="[default: 0.1; with --init: the checkpoint's]")
@click.option("--lowercase/--no-lowercase", default=None,
              help="gpt, bert: whether the tokenizer the run trains lower-cases text (saved with it) [default: "
              "lower-case Latin-script text, as the published uncased models; keep the case of any other, e.g. "
              "Russian]")
@click.option("--strip-accents/--keep-accents", default=None,
              help="gpt, bert: whether that tokenizer strips accents (also Russian й → и, ё → е) [default: strip "
              "only when lower-casing]")
@click.option("--whole-word-masking", is_flag=True, help="bert: mask all pieces of a chosen word together")
@click.option("--eval-every", default=200, show_default=True)
@save_every_option(200, "write the checkpoint (OUT/checkpoint, for --resume) every this many steps")
@save_every_minutes_option()
@click.option("--max-minutes", type=float, help="stop (with a checkpoint) after this much training time")
@training_precision_option()
@click.option("--compile", is_flag=True, help="torch.compile the model (gpt, gpt2, bert: helps on "
              "GPUs; on a 2-core CPU it was slower, see README)")
@click.option("--grad-checkpoint", is_flag=True, help="transformer blocks recompute their activations in backward: "
              "less memory for longer blocks or larger batches, about a third more compute")
@click.option("--fsdp", is_flag=True, help="under torchrun (gpt2, gpt, bert): shard the parameters, gradients and "
              "optimizer state across the processes (FSDP) instead of a whole copy in each (DDP), for a model too "
              "large to train on one device; the same training, the same checkpoint")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:1, ... (auto: the GPU when there is one); under torchrun each process takes "
              "its own GPU")
@on_nonfinite_option()
@deterministic_option()
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint")
@logged_to("out")
def pretrain(**options) -> None:
    """Pretrain a model from scratch, or continue from a checkpoint with --init, on raw text: causal LM (GPT,
    GPT-2), masked LM + next sentence (BERT) or + sentence order (ALBERT), forward + backward LM over words read
    by their characters (ELMo), or causal LM over segments that attend to the previous segments' states
    (Transformer-XL, over words).

    Under torchrun (not Transformer-XL), N processes train data-parallel: --batch-size is each process's share of
    a global batch of N x batch-size rows; rank 0 writes the run folder. With --fsdp they shard the model
    instead of each holding a copy."""
    result = jobs.pretrain(**options)
    if result is None:
        return  # another process under torchrun: rank 0 reports
    report(result)
    click.echo(f"model saved in {result['checkpoint']}; loss curve in {result['loss_plot']}")


def report(result: dict) -> None:
    """The final validation figures (the biLM and Transformer-XL jobs print their own), then what the model
    learned: a sample, a masked word filled in, or both directions' next words."""
    final = result["final"]
    if final and result["objective"] == CAUSAL_LM:
        click.echo(f"step {final['step']}: validation loss {final['valid_loss']:.3f}, "
                   f"perplexity {final['valid_perplexity']:.1f} (per {result['model'].config.model_type} token)")
    if final and result["objective"] == MASKED_LM:
        pair_task = {"sop": "sentence-order"}.get(result["model"].config.pair_objective, "next-sentence")
        click.echo(f"step {final['step']}: masked-LM accuracy {final['valid_mlm_accuracy']:.3f} "
                   f"(perplexity {math.exp(final['valid_mlm_loss']):.1f})"
                   + (f", {pair_task} accuracy {final['valid_nsp_accuracy']:.3f}" if "valid_nsp_accuracy" in final
                      else ""))
    if "sample" in result:
        click.echo(f"sample: {result['sample']['prompt']}{result['sample']['continuation']}")
    if "fill_in" in result:
        click.echo(f"fill-in: {result['fill_in']['text']} → " + ", ".join(result["fill_in"]["best"]))
    if "next_words" in result:
        words = result["next_words"]
        click.echo(f"forward: {words['left']} → {', '.join(words['forward'])}")
        click.echo(f"backward: {', '.join(words['backward'])} ← {words['right']}")


COMMANDS = [pretrain]
