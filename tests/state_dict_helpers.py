"""Architectures for state_dict tests, named with ``--arch state_dict_helpers:NAME`` (run from
the tests folder): a model that keeps state between calls and counts them, one with weight norm
in the legacy form, a small speaker encoder (Resemblyzer-like: its checkpoint holds a similarity
scale beside the network), a pitch network whose Lightning checkpoint adds a ``shift`` buffer."""

from __future__ import annotations

import torch
from torch import nn


class Stateful(nn.Module):
    """Keeps a state in a plain attribute between calls (like BeatNet's LSTM state): a second
    call sees the first one's state."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.calls = 0
        self.state = None

    def forward(self, x):
        self.calls += 1
        h = self.fc1(x)
        if self.state is not None:
            h = h + self.state
        self.state = 3.0 * h.detach() + 2.0
        return self.fc2(torch.relu(h))


def stateful() -> nn.Module:
    return Stateful()


def weight_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GELU(),
                         torch.nn.utils.weight_norm(nn.Conv1d(8, 8, 3, padding=1), dim=0), nn.GELU(),
                         nn.Flatten(), nn.Linear(8 * 16, 10))


class Speaker(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.linear = nn.Linear(16, 12)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.linear(out[:, -1])


def speaker() -> nn.Module:
    return Speaker()


def pitch() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 32, 6))
