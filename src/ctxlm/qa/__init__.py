"""Question answering: SQuAD data and metrics, span extraction, zero-shot reading comprehension."""
