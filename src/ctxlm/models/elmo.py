"""ELMo (Peters et al., 2018): a character-aware bidirectional LSTM language model.

Each token's characters go through a CNN with max-pooling, highway layers and a projection (the token layer,
context-free). Two stacks of L LSTM layers with projection read the tokens: the forward stack left to right
predicting the next token, the backward stack right to left predicting the previous one. Layers above the first
add their input to their output (residual). The two directions share the token layer and the softmax, nothing
else. Hidden states: states[0] is the token layer repeated twice (so that every state is 2 * dim wide, as in
AllenNLP), states[k] the k-th LSTM layer's forward ‖ backward outputs.

Unlike AllenNLP, the LSTM states are not carried from one batch to the next: every sequence starts from zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.config import ElmoConfig
from ctxlm.errors import UserError
from ctxlm.nn.losses import linear_cross_entropy
from ctxlm.nn.recurrent import CharCNN, ProjectedLSTM, reverse_padded
from ctxlm.outputs import Hidden


class ELMo(nn.Module):
    """The backbone: word ids (with a tokenizer attached) or character ids → every layer's hidden states."""

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.token_encoder = CharCNN(config.n_characters, config.char_dim, config.filters, config.n_highway,
                                     config.dim, config.activation)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(ProjectedLSTM(config.dim, config.cell_dim, config.dim, cell_clip=config.cell_clip,
                                               proj_clip=config.proj_clip) for _ in range(config.n_layers))

        self.forward_layers = stack()
        self.backward_layers = stack()
        self.dropout = nn.Dropout(config.dropout)
        self.char_ids = None  # word ids → character ids; set with the tokenizer (see ElmoLanguageModel)

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, n_blocks: int | None = None) -> Hidden:
        """`ids`: (batch, time) word ids, or (batch, time, max_characters) character ids; `mask` (batch, time),
        True for real tokens (padding at the end of a row). `segments` are accepted and ignored (ELMo has none).
        `n_blocks`: run only the first n_blocks LSTM layers."""
        if memory is not None:
            raise ValueError("ELMo takes no memory")
        n_layers = self.config.n_layers if n_blocks is None else n_blocks
        if not 0 <= n_layers <= self.config.n_layers:
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {self.config.n_layers}")
        batch, time = ids.shape[:2]
        lengths = mask.sum(1) if mask is not None else torch.full((batch,), time, device=ids.device)
        if ids.dim() == 3:
            tokens = self.token_encoder(ids)
        else:  # the character CNN runs once per distinct word: a quarter of a WikiText batch's words are distinct
            distinct, where = ids.unique(return_inverse=True)
            tokens = self.token_encoder(self._chars(distinct)[None])[0][where]
        states = [torch.cat([tokens, tokens], dim=-1)]
        forward_in, backward_in = tokens, reverse_padded(tokens, lengths)
        for layer in range(n_layers):
            forward_out = self.forward_layers[layer](self.dropout(forward_in))
            backward_out = self.backward_layers[layer](self.dropout(backward_in))
            if self.config.residual and layer > 0:
                forward_out, backward_out = forward_out + forward_in, backward_out + backward_in
            states.append(torch.cat([forward_out, reverse_padded(backward_out, lengths)], dim=-1))
            forward_in, backward_in = forward_out, backward_out
        return Hidden(tuple(states))

    def _chars(self, ids: Tensor) -> Tensor:
        if self.char_ids is None:
            raise UserError("ELMo reads characters: pass (batch, time, max_characters) character ids, or word ids "
                            "of the tokenizer this model was loaded with")
        return self.char_ids(ids)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[token layer (character CNN), LSTM layer 1 (both directions), ..., LSTM layer L]."""
        return [list(self.token_encoder.parameters())] + [
            [*f.parameters(), *b.parameters()] for f, b in zip(self.forward_layers, self.backward_layers, strict=True)]


@dataclass
class BiLMOutput:
    """A biLM's hidden states; given targets, the mean loss of the two directions and each one's."""

    hidden: Hidden
    loss: Tensor | None = None
    forward_loss: Tensor | None = None
    backward_loss: Tensor | None = None
    logits: None = None  # a biLM's two directions have no single next-token distribution


def init_elmo_weights(model: ElmoLanguageModel) -> None:
    """bilm-tf's initialisation: characters uniform in [-1, 1]; convolutions, highways and projections normal with
    variance 1 / fan-in; highway gates biased to -2, so that they start by carrying their input through; the
    LSTMs keep PyTorch's uniform(±1/sqrt(cell_dim)); the softmax normal with std 1/sqrt(dim)."""
    encoder = model.backbone.token_encoder
    with torch.no_grad():
        nn.init.uniform_(encoder.char_embed.weight, -1.0, 1.0)
        encoder.char_embed.weight[0] = 0.0  # the padding character
        for conv in encoder.convs:
            nn.init.normal_(conv.weight, std=(1.0 / (conv.in_channels * conv.kernel_size[0])) ** 0.5)
            nn.init.zeros_(conv.bias)
        for linear in [*(h.transform for h in encoder.highways), *(h.gate for h in encoder.highways),
                       encoder.projection]:
            nn.init.normal_(linear.weight, std=(1.0 / linear.in_features) ** 0.5)
            nn.init.zeros_(linear.bias)
        for highway in encoder.highways:
            highway.gate.bias.fill_(-2.0)
        if isinstance(model.softmax, nn.Linear):
            nn.init.normal_(model.softmax.weight, std=model.config.dim ** -0.5)
            nn.init.zeros_(model.softmax.bias)


class ElmoLanguageModel(nn.Module):
    """ELMo with the softmax both directions share (none for the published weights, vocab_size 0)."""

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ELMo(config)
        self.softmax: nn.Module | None = None
        if config.vocab_size and config.softmax == "full":
            self.softmax = nn.Linear(config.dim, config.vocab_size)
        elif config.vocab_size:
            self.softmax = nn.AdaptiveLogSoftmaxWithLoss(config.dim, config.vocab_size, config.adaptive_cutoffs)
        self._tokenizer = None
        init_elmo_weights(self)

    @property
    def tokenizer(self):
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        """Attaching a tokenizer lets the backbone read its word ids (see ctxlm.tokenizers.characters)."""
        self._tokenizer = tokenizer
        self.backbone.char_ids = None if tokenizer is None else tokenizer.char_ids

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, targets: Tensor | None = None) -> BiLMOutput:
        """`targets` (batch, time): each position's softmax class (-100 = padding). The forward direction at t
        is scored on targets[t + 1], the backward one on targets[t - 1]."""
        hidden = self.backbone(ids, mask=mask)
        if targets is None:
            return BiLMOutput(hidden)
        if self.softmax is None:
            raise UserError("this ELMo has no softmax (vocab_size 0), so it cannot score a language-model loss")
        top = self.backbone.dropout(hidden.last)
        forward_top, backward_top = top.split(self.config.dim, dim=-1)
        forward_loss = self._loss(forward_top[:, :-1], targets[:, 1:])
        backward_loss = self._loss(backward_top[:, 1:], targets[:, :-1])
        return BiLMOutput(hidden, (forward_loss + backward_loss) / 2, forward_loss, backward_loss)

    def _loss(self, states: Tensor, targets: Tensor) -> Tensor:
        if isinstance(self.softmax, nn.Linear):
            return linear_cross_entropy(states, self.softmax.weight, targets, bias=self.softmax.bias)
        keep = targets.reshape(-1) != -100
        return self.softmax(states.reshape(-1, states.shape[-1])[keep], targets.reshape(-1)[keep]).loss

    def log_probs(self, states: Tensor) -> Tensor:
        """(..., dim) top states of one direction → (..., vocab) log-probabilities of the next (previous) word."""
        if isinstance(self.softmax, nn.Linear):
            return F.log_softmax(self.softmax(states), dim=-1)
        return self.softmax.log_prob(states.reshape(-1, states.shape[-1])).view(*states.shape[:-1], -1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        groups = self.backbone.layer_groups()
        if self.softmax is not None:
            groups[-1] += list(self.softmax.parameters())
        return groups
