"""Reference (b): the plainest in-memory eager PyTorch loop of the tutorial recipes.

No digitrec code on the training path: tensors in memory, ``randperm``
shuffling, ``nn.Sequential`` models, ``CrossEntropyLoss``, ``optim.SGD``. This
is what a careful PyTorch user writes in five minutes; digitrec must beat it.

    python benchmarks/bare_loop.py --model lenet --epochs 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def build(model: str) -> nn.Module:
    if model == "mlp":
        net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.Tanh(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, 5),
            nn.Tanh(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.Tanh(),
            nn.Linear(500, 10),
            nn.Tanh(),
        )
    for layer in net:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            # MXNet Xavier(magnitude=2.24, "avg") bound sqrt(2.24 / avg_fan) = gain * sqrt(6 / (2 * avg_fan))
            nn.init.xavier_uniform_(layer.weight, gain=(2.24 / 3) ** 0.5)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return net


def run(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: str,
    epochs: int,
    seed: int = 42,
    limit: int | None = None,
    device: str = "cpu",
) -> list[float]:
    """Train; return the wall seconds of each epoch. images: (N, 28, 28) uint8."""
    torch.manual_seed(seed)
    x_all = images[:limit].to(device).float().div(255).unsqueeze(1)  # (N, 1, 28, 28) float32 in [0, 1]
    y_all = labels[:limit].to(device)
    net = build(model).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02 if model == "mlp" else 0.03)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x_all), device=device)
        for start in range(0, len(order), 100):
            index = order[start : start + 100]
            x, y = x_all[index], y_all[index]
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
        if x_all.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    from digitrec.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", choices=["mlp", "lenet"], help="(default: lenet)")
    parser.add_argument("--epochs", type=int, default=1, help="(default: 1)")
    args = parser.parse_args()
    ds = load_dataset("mnist")
    for epoch, sec in enumerate(run(ds.train_images, ds.train_labels, args.model, args.epochs), 1):
        print(f"epoch {epoch}: {sec:.3f} s")
