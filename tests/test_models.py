import math
import os
import time

import pytest
import torch
from torch import nn

from digitrec.errors import DigitrecError
from digitrec.models import count_macs, count_parameters, create_model, list_models, xavier_init_


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_images_to_ten_scores_and_learns(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(8, 1, 28, 28)
    y = torch.arange(8) % 10
    out = model(x)
    assert out.shape == (8, 10) and out.dtype == torch.float32
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # a few steps on one batch reduce the loss: the model can learn
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        step_loss = nn.functional.cross_entropy(model(x), y)
        step_loss.backward()
        optimizer.step()
    assert step_loss.item() < loss.item()


@pytest.mark.parametrize("name", list_models())
def test_same_seed_same_weights(name):
    torch.manual_seed(3)
    a = create_model(name).state_dict()
    torch.manual_seed(3)
    b = create_model(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_and_bad_option():
    with pytest.raises(DigitrecError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(DigitrecError, match="bad options for model 'mlp'"):
        create_model("mlp", colour="blue")


def test_mlp_is_the_tutorials():
    model = create_model("mlp")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 64), (64, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
    assert count_parameters(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_lenet_is_the_tutorials():
    model = create_model("lenet")
    assert (model.conv1.out_channels, model.conv1.kernel_size) == (20, (5, 5))
    assert (model.conv2.out_channels, model.conv2.kernel_size) == (50, (5, 5))
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (800, 500, 10)
    out = model(torch.rand(4, 1, 28, 28) * 50)  # the output tanh bounds the scores
    assert out.abs().max() <= 1.0
    # the issue quotes 2.29 M multiply-adds per image for this net
    assert count_macs(model) == 20 * 24 * 24 * 25 + 50 * 8 * 8 * 20 * 25 + 800 * 500 + 500 * 10
    assert abs(count_macs(model) - 2.29e6) < 0.01e6


def test_xavier_matches_mxnet_magnitude_224():
    torch.manual_seed(0)
    conv = nn.Conv2d(20, 50, 5)
    xavier_init_(conv, 2.24)
    fan_in, fan_out = 20 * 25, 50 * 25
    bound = math.sqrt(2.24 / ((fan_in + fan_out) / 2))
    weights = conv.weight.detach()
    assert weights.abs().max() <= bound
    assert weights.abs().max() > 0.98 * bound  # uniform over the whole range
    assert abs(weights.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # uniform's std
    assert torch.count_nonzero(conv.bias) == 0


def test_lenet_pooling_before_tanh_is_exactly_the_tutorials_order():
    torch.manual_seed(1)
    model = create_model("lenet")
    x = torch.rand(16, 1, 28, 28, requires_grad=True)
    pool = nn.functional.max_pool2d
    h = pool(torch.tanh(model.conv1(x)), 2)  # the tutorial: pool(tanh(conv(x)))
    h = pool(torch.tanh(model.conv2(h)), 2)
    reference = torch.tanh(model.fc2(torch.tanh(model.fc1(h.flatten(1)))))
    assert torch.equal(model(x), reference)
    (grad_model,) = torch.autograd.grad(model(x).sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.equal(grad_model, grad_reference)


@pytest.mark.parametrize("name", list_models())
def test_folding_batch_norms_keeps_the_scores_and_the_model(name):
    from digitrec.models import fold_batch_norms, prefer_channels_last

    torch.manual_seed(0)
    model = prefer_channels_last(create_model(name))
    # Train mode for a few batches, so that the running statistics are not the identity.
    for _ in range(3):
        model(torch.rand(16, 1, 28, 28))
    model.eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batch_norms(model)
        assert torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-4)
    # cnn and resnet put each batch norm right after a convolution: all fold. fastcnn pools in between,
    # which a fold cannot cross (a negative scale does not commute with max), so its stay.
    if name in ("cnn", "resnet"):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # the model itself is left alone
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (
        name in ("cnn", "fastcnn", "resnet")
    )


@pytest.mark.parametrize("name", list_models())
def test_an_ensemble_scores_the_mean_of_its_members_fused_or_not(name):
    from digitrec.models import Ensemble, create_ensemble, fold_batch_norms, fuse_ensemble

    torch.manual_seed(0)
    ensemble = create_ensemble(name, 3)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    for _ in range(3):  # running statistics that differ from member to member
        ensemble(torch.rand(16, 1, 28, 28))
    ensemble.eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        mean = torch.stack([member(x) for member in ensemble.members]).mean(0)
        assert torch.allclose(ensemble(x), mean, atol=1e-6)
        fused = fuse_ensemble(ensemble)
        assert torch.allclose(fused(x), mean, atol=1e-5, rtol=1e-4)
        assert torch.allclose(fold_batch_norms(fused)(x), mean, atol=1e-5, rtol=1e-4)
    # Sequential members of convolutions and one final linear layer become one network; the
    # others (the tutorial's MLP with its hidden layers, LeNet, resnet's blocks) stay an Ensemble.
    assert isinstance(fused, Ensemble) == (name not in ("cnn", "fastcnn"))
    assert create_ensemble(name, 1).__class__ is create_model(name).__class__
    with pytest.raises(DigitrecError, match="at least one member"):
        create_ensemble(name, 0)


@pytest.mark.parametrize("name", list_models())
def test_a_not_digit_head_shifts_all_ten_scores_alike(name):
    """The head lowers every score by the same softplus: the probabilities stay the classifier's,
    the energy drops; batch-norm folding keeps it, and a temperature divides only the classifier."""
    from digitrec.calibration import energy, fold_temperature
    from digitrec.models import NotDigitHead, fold_batch_norms, with_not_digit_head

    torch.manual_seed(0)
    model = create_model(name)
    if name == "lenet":  # tanh on its scores: not a sequence of layers ending in a linear one
        with pytest.raises(DigitrecError, match="not-a-digit head"):
            with_not_digit_head(model, 8)
        return
    wrapped = with_not_digit_head(model, 8)
    assert isinstance(wrapped, NotDigitHead)
    for _ in range(2):  # running statistics that are not the identity
        wrapped(torch.rand(16, 1, 28, 28))
    wrapped.eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)  # the same layers, without the head
        shifted = wrapped(x)
        shift = plain - shifted  # (8, 10)
        assert (shift > 0).all() and torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
        assert torch.allclose(shifted.softmax(1), plain.softmax(1), atol=1e-6)
        assert (energy(shifted.numpy()) < energy(plain.numpy())).all()
        folded = fold_batch_norms(wrapped)
        assert torch.allclose(folded(x), shifted, atol=1e-5, rtol=1e-4)
        fold_temperature(folded, 2.0)
        assert torch.allclose(folded(x), plain / 2 - shift, atol=1e-4, rtol=1e-4)
    with pytest.raises(DigitrecError, match="already has"):
        with_not_digit_head(wrapped, 8)


def _inference_variants(name):
    """``name``'s model as a Recognizer scores it (eval mode, batch norms folded, with trained-like
    running statistics), with a not-digit head where it takes one, and fused as an ensemble of 2."""
    from digitrec.models import NotDigitHead, create_ensemble, fold_batch_norms, fuse_ensemble

    torch.manual_seed(0)
    models = {"plain": create_model(name), "ensemble": create_ensemble(name, 2)}
    if NotDigitHead.fits(create_model(name)):
        from digitrec.models import with_not_digit_head

        models["head"] = with_not_digit_head(create_model(name), 8)
    for model in models.values():
        for _ in range(2):  # running statistics that are not the identity
            model(torch.rand(16, 1, 28, 28))
    return {kind: fold_batch_norms(fuse_ensemble(model.eval())) for kind, model in models.items()}


@pytest.mark.parametrize("name", list_models())
def test_every_model_traces_to_the_same_scores_at_any_batch_size(name):
    from digitrec.models import traced_for_inference

    for kind, model in _inference_variants(name).items():
        traced = traced_for_inference(model, torch.rand(4, 1, 28, 28))
        # Traced indeed (a fallback to the model would pass the comparison below trivially).
        assert isinstance(traced, torch.jit.ScriptModule), (name, kind)
        for batch in (1, 3, 4, 17):
            x = torch.rand(batch, 1, 28, 28)
            with torch.inference_mode():
                expected = model(x)
                assert torch.allclose(traced(x), expected, atol=1e-5, rtol=1e-5), (name, kind, batch)


class _BranchOnBatchSize(nn.Module):
    """Python logic a trace cannot keep: the branch taken while tracing is baked in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x):
        scores = self.linear(x.flatten(1))
        return scores if x.shape[0] > 1 else scores * 0


class _ThroughNumpy(nn.Module):
    """A forward a trace cannot follow at all (its output leaves torch)."""

    def forward(self, x):
        return torch.from_numpy(x.flatten(1)[:, :10].numpy() * 2)


@pytest.mark.parametrize("model", [_BranchOnBatchSize(), _ThroughNumpy()], ids=["branch", "numpy"])
def test_a_model_that_does_not_trace_faithfully_stays_eager(model, recwarn):
    from digitrec.models import traced_for_inference

    assert traced_for_inference(model, torch.rand(4, 1, 28, 28)) is model
    assert not recwarn.list  # TorchScript's deprecation and tracer warnings are not the user's


def _cpu_seconds(thread_id: int) -> float:
    """CPU time of one of this process's threads, from Linux's scheduler statistics (ns)."""
    with open(f"/proc/self/task/{thread_id}/schedstat") as stats:
        return int(stats.read().split()[0]) / 1e9


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread CPU times from Linux's /proc")
def test_a_traced_forward_pass_runs_while_another_thread_holds_the_gil():
    """The reason for tracing: the main thread holds the GIL for half a second (a C call that
    keeps it, as a busy event loop does until it must switch); meanwhile an eager forward pass
    stalls at its next layer, a traced one computes on. Measured as the model thread's CPU time
    in that half second, on a network of many equal layers (each about 2 ms) so that "its next
    layer" is a small, known amount of work."""
    import ctypes
    import threading

    from digitrec.models import traced_for_inference

    torch.manual_seed(0)
    eager = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), *[nn.Linear(512, 512) for _ in range(300)]
    ).eval()
    traced = traced_for_inference(eager, torch.rand(4, 1, 28, 28))
    assert isinstance(traced, torch.jit.ScriptModule)
    x = torch.rand(512, 1, 28, 28)  # one forward pass: about a second of one core
    usleep = ctypes.PyDLL(None).usleep  # a PyDLL call keeps the GIL for its whole length
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        busy = {}
        for kind, model in (("eager", eager), ("traced", traced)):
            entered = threading.Event()

            def forward(model=model, entered=entered):
                entered.set()
                with torch.inference_mode():
                    model(x)

            worker = threading.Thread(target=forward)
            worker.start()
            entered.wait()
            time.sleep(0.05)  # the GIL let go: the worker is inside its forward pass
            before = _cpu_seconds(worker.native_id)
            usleep(500_000)
            busy[kind] = _cpu_seconds(worker.native_id) - before
            worker.join()
    finally:
        torch.set_num_threads(threads)
    # Traced: up to half a second of CPU (a core to itself while the main thread sleeps);
    # eager: a layer's worth. The margins leave room for a busy machine.
    assert busy["traced"] > 0.1, busy
    assert busy["eager"] < 0.05, busy
