"""ELMo's building blocks: a character CNN with highway layers, and LSTM layers with a projection.

Both follow the published biLM (Peters et al., 2018; the bilm-tf code that AllenNLP ported), so that its weights
load as they are:

- `CharCNN`: each token's characters → embeddings → one 1-D convolution per filter width, max-pooled over the
  characters → activation → highway layers → a linear projection to the model width.
- `ProjectedLSTM`: one LSTM layer whose hidden state is projected down (LSTMP, Sak et al., 2014), with the
  published model's optional clipping of the memory cell and of the projected state.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# nn.LSTM with proj_size runs PyTorch's own C++ kernel instead of oneDNN's, and says so on every first call.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


class Highway(nn.Module):
    """y = t * act(W_h x + b_h) + (1 - t) * x with the transform gate t = sigmoid(W_t x + b_t) (Srivastava 2015)."""

    def __init__(self, dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.activation = _activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate(x))
        return gate * self.activation(self.transform(x)) + (1.0 - gate) * x


class CharCNN(nn.Module):
    """(batch, time, max_chars) character ids, 0 = padding → (batch, time, dim) token vectors.

    `filters`: [[width, count], ...]; the widths' outputs are concatenated before the highway layers.
    """

    def __init__(self, n_characters: int, char_dim: int, filters: list[list[int]], n_highway: int, dim: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.char_embed = nn.Embedding(n_characters, char_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(char_dim, count, width) for width, count in filters)
        n_filters = sum(count for _, count in filters)
        self.highways = nn.ModuleList(Highway(n_filters) for _ in range(n_highway))
        self.projection = nn.Linear(n_filters, dim)
        self.activation = _activation(activation)

    def forward(self, chars: Tensor) -> Tensor:
        batch, time, max_chars = chars.shape
        x = self.char_embed(chars.reshape(batch * time, max_chars)).transpose(1, 2)  # (tokens, char_dim, chars)
        # Max over positions first, then the activation: the same as activating first (both are monotonic),
        # for far fewer elements.
        x = torch.cat([self.activation(conv(x).amax(dim=-1)) for conv in self.convs], dim=-1)
        for highway in self.highways:
            x = highway(x)
        return self.projection(x).view(batch, time, -1)


class ProjectedLSTM(nn.Module):
    """One left-to-right LSTM layer with a projection: (batch, time, input_dim) → (batch, time, proj_dim).

    c_t = clip(f * c_{t-1} + i * g, cell_clip);  h_t = clip(W_hr (o * tanh(c_t)), proj_clip).

    The parameters are those of a one-layer `nn.LSTM(proj_size=...)`, whose fused kernel runs whenever no clipping
    is asked for. `nn.LSTM` cannot clip inside its recurrence, and the published ELMo clips both the cell and the
    projection at 3: with clipping, the recurrence runs here step by step, with the input products of every step
    computed up front as one matrix product.
    """

    def __init__(self, input_dim: int, cell_dim: int, proj_dim: int, *, cell_clip: float | None = None,
                 proj_clip: float | None = None) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_dim, cell_dim, proj_size=proj_dim, batch_first=True)
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip

    def forward(self, x: Tensor) -> Tensor:
        if self.cell_clip is None and self.proj_clip is None:
            return self.lstm(x)[0]
        return self.stepwise(x)

    def stepwise(self, x: Tensor) -> Tensor:
        lstm = self.lstm
        batch, time, _ = x.shape
        gates_from_input = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # (batch, time, 4H)
        h = x.new_zeros(batch, lstm.proj_size)
        c = x.new_zeros(batch, lstm.hidden_size)
        outputs = []
        for t in range(time):
            gates = gates_from_input[:, t] + F.linear(h, lstm.weight_hh_l0)
            i, f, g, o = gates.chunk(4, dim=-1)  # nn.LSTM's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.cell_clip is not None:
                c = c.clamp(-self.cell_clip, self.cell_clip)
            h = F.linear(torch.sigmoid(o) * torch.tanh(c), lstm.weight_hr_l0)
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first lengths[b] steps, leaving its padding where it is: (batch, time, ...) → same.

    A right-to-left LSTM is a left-to-right one over this; applied twice it is the identity.
    """
    time = x.shape[1]
    steps = torch.arange(time, device=x.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (batch, time)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _activation(name: str):
    activations = {"relu": F.relu, "tanh": torch.tanh}
    if name not in activations:
        raise ValueError(f"activation {name!r}: expected one of {sorted(activations)}")
    return activations[name]
