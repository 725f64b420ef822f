"""Reference (a): the tutorial recipes written the way pytorch/examples ``mnist/main.py`` does it.

``datasets.MNIST`` + ``transforms.ToTensor()`` + ``DataLoader(batch_size=100, shuffle=True)``: one
PIL image per sample, converted per sample, collated per batch. When torchvision is importable it is
used as is; otherwise (torchvision wheels do not match every torch build) an equivalent dataset class
does exactly what torchvision's ``MNIST.__getitem__`` and ``ToTensor`` do, so the per-sample work is
the same.

    python benchmarks/dataloader_loop.py --model lenet --epochs 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.bare_loop import build


class MnistLikeTorchvision(Dataset):
    """What torchvision.datasets.MNIST + ToTensor do per sample: uint8 -> PIL 'L' -> float tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index].numpy(), mode="L")
        array = np.array(image, dtype=np.uint8, copy=True)
        tensor = torch.from_numpy(array).view(1, 28, 28).float().div(255)  # ToTensor
        return tensor, int(self.labels[index])


def make_dataset(images: torch.Tensor, labels: torch.Tensor) -> tuple[Dataset, str]:
    try:
        from torchvision import transforms
        from torchvision.datasets import MNIST
    except Exception:
        return MnistLikeTorchvision(images, labels), "torchvision-style dataset (torchvision not importable)"

    class _InMemoryMNIST(MNIST):  # torchvision's own __getitem__, without touching the network
        def __init__(self) -> None:
            self.data, self.targets = images, labels
            self.transform, self.target_transform = transforms.ToTensor(), None

    return _InMemoryMNIST(), "torchvision.datasets.MNIST + ToTensor"


def run(images: torch.Tensor, labels: torch.Tensor, model: str, epochs: int, seed: int = 42,
        limit: int | None = None, device: str = "cpu") -> list[float]:  # fmt: skip
    """Train; return the wall seconds of each epoch (data loading included, as users experience it)."""
    torch.manual_seed(seed)
    dataset, _ = make_dataset(images[:limit], labels[:limit])
    # On CUDA, pytorch/examples adds {'num_workers': 1, 'pin_memory': True} and moves each batch over.
    cuda = torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=100, shuffle=True, num_workers=1 if cuda else 0, pin_memory=cuda)
    net = build(model).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02 if model == "mlp" else 0.03)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
        if cuda:
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
