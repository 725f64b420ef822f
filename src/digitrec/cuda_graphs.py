"""Training steps replayed as CUDA graphs.

On a GPU the tutorial's models are far too small to keep it busy: a LeNet step on a batch of 100 is
about 0.4 ms of GPU work behind about 2 ms of Python and kernel launches (H200, torch profiler; see
the README). A CUDA graph records the step's kernels once and replays all of them with one call,
so the host stops being the bottleneck.

The rules a CUDA graph imposes, and how the training loop meets them:

- fixed shapes and addresses: each full batch is copied into the same static input tensors, and the
  step's outputs are static tensors that the caller reads before the next replay; a batch of another
  shape (the last, partial batch of an epoch) runs eagerly;
- nothing decided on the host inside the step: the learning rate is constant (SGD) or a device
  tensor that AdamW reads (``capturable=True``), and the EMA weight is a device tensor, both filled
  before each step;
- warm-up before capture: the first steps run eagerly on a side stream, so that cuDNN, cuBLAS and
  the optimizer's state are initialized outside the graph, as PyTorch's documentation prescribes.

Every step, eager or replayed, is a real training step on real data; replaying computes exactly
what running the same step function eagerly computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class GraphedStep:
    """Call ``step(x, y)`` eagerly for ``warmup_steps`` full batches, then capture it once and replay
    it for every later batch of ``batch_size`` images; other batches run eagerly. Returns ``step``'s
    outputs: (loss sum, correct count). The outputs of a replay are overwritten by the next replay:
    use them before calling again."""

    def __init__(self, step: Step, batch_size: int, warmup_steps: int = 3) -> None:
        self.step = step
        self.batch_size = batch_size
        self.warmup_left = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = torch.empty(0)
        self.static_y = torch.empty(0)
        self.static_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side_stream = torch.cuda.Stream()
        self.replays = 0  # how many steps ran as a replay (train() reports it)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) != self.batch_size:
            return self.step(x, y)  # the last, partial batch of an epoch: eagerly
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                outputs = self.step(x, y)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return outputs
        if self.graph is None:
            self.static_x, self.static_y = x.clone(), y.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the kernels; nothing runs yet
                self.static_outputs = self.step(self.static_x, self.static_y)
            self.graph = graph
        assert self.static_outputs is not None
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        self.replays += 1
        return self.static_outputs
