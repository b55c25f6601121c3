"""Transfer learning: a pretrained backbone + a task head, adapted by a fine-tuning strategy.

- `data`: task readers (GLUE TSV, CoNLL-2003, multiple choice, user CSV/JSONL) → `TaskData`;
- `inputs`: examples → token sequences (BERT pairs with [SEP], GPT §3.3 transformations) → batches;
- `heads`: slot features from hidden states, and the linear head that scores them;
- `strategies`: feature extraction, full fine-tuning, gradual unfreezing, discriminative rates, schedules, L2-SP;
- `finetune`: the job behind `ctxlm finetune`; `predict`: evaluate or label new inputs with the result.
"""
