"""Text → token ids for every family, behind one protocol whose methods are named by role (`TokenizerProtocol`).

- `protocol.py`: the protocol, `Encoding` (one model input position by position) and the length budgets.
- `subword.py`: `Tokenizer`, GPT / GPT-2 BPE and BERT WordPiece on Hugging Face `tokenizers`.
- `published.py`: the sub-word kinds' pipelines and loading their files (ours, HF's, OpenAI's and Google's).
- `training.py`: training a sub-word vocabulary, repeatably.
- `characters.py`: `CharTokenizer`, ELMo's words as UTF-8 character ids.
- `words.py`: `WordTokenizer`, Transformer-XL's closed word vocabulary.

(Inside ctxlm, `from tokenizers import ...` is an absolute import and still names Hugging Face's package.)
"""

from ctxlm.tokenizers.characters import CharTokenizer
from ctxlm.tokenizers.protocol import Encoding, TokenizerProtocol
from ctxlm.tokenizers.published import BERT_SPECIALS, EOS, TASK_TOKENS, UNK
from ctxlm.tokenizers.subword import Tokenizer
from ctxlm.tokenizers.words import WordTokenizer

__all__ = ["BERT_SPECIALS", "EOS", "TASK_TOKENS", "UNK", "CharTokenizer", "Encoding", "Tokenizer",
           "TokenizerProtocol", "WordTokenizer"]
