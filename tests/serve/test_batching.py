"""Batching, the decode processes and ``--backend onnx``, against a real server and the real model."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import Server, encode, on_paper, run_server
from .test_api import PNG, post, scrape

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# A long window: requests sent together certainly share a model call, even on a busy machine.
WINDOW_MS = 250


@pytest.fixture(scope="module", params=["torch", "onnx"])
def batching_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Each backend: the default for the bundled model is onnx; torch serves every --run."""
    with run_server(
        tmp_path_factory.mktemp(f"serve-{request.param}"),
        "--backend",
        request.param,
        "--batch-window",
        str(WINDOW_MS),
    ) as live:
        yield live


def send_together(server: Server, bodies: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        start.wait()
        answers[index] = post(server, bodies[index], PNG)

    clients = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=120)
    return answers


def test_concurrent_requests_share_a_model_call_and_read_as_torch(
    batching_server: Server, recognizer: Any, mnist: Any, request: pytest.FixtureRequest
) -> None:
    images = [mnist.test_images[i].numpy() for i in range(8)]
    bodies = [encode(on_paper(pixels)) for pixels in images]
    count = "digitrec_predict_batch_size_count"
    before = scrape(batching_server)
    answers = send_together(batching_server, bodies)
    after = scrape(batching_server)
    assert [status for status, _ in answers] == [200] * 8, answers
    # 8 inputs scored in fewer than 8 model calls: some batch held more than one.
    inputs = after["digitrec_predict_batch_size_sum"] - before.get("digitrec_predict_batch_size_sum", 0)
    calls = after[count] - before.get(count, 0)
    assert inputs == 8 and calls < 8, (inputs, calls)
    # Either backend reads what torch (the Recognizer in this process) reads, to float rounding.
    for (_, got), body in zip(answers, bodies, strict=True):
        expected = recognizer.predict(body)
        assert got["digit"] == expected.digit
        assert np.allclose(got["probabilities"], expected.probabilities, atol=1e-4)
    _, models = batching_server.request("GET", "/v1/models")[::2]
    backend = request.node.callspec.params["batching_server"]
    assert f'"backend":"{backend}"'.encode() in models


def test_bad_images_in_a_batch_get_their_own_400(batching_server: Server, mnist: Any) -> None:
    good = encode(on_paper(mnist.test_images[0].numpy()))
    answers = send_together(batching_server, [good, b"not an image", good, good[: len(good) // 2]])
    assert [status for status, _ in answers] == [200, 400, 200, 400], answers
    assert answers[1][1]["error"].startswith("image: ")
    assert answers[0][1]["digit"] == answers[2][1]["digit"] == int(mnist.test_labels[0])


def decode_processes(server: Server) -> list[int]:
    """The server's spawned children that are decode processes (not multiprocessing's resource tracker)."""
    children = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_decode_processes_default_to_two_per_cpu_shared_by_the_workers() -> None:
    from digitrec.serving import ServeConfig, decode_processes

    cpus = len(os.sched_getaffinity(0))
    assert decode_processes(ServeConfig(), workers=1) == 2 * cpus
    assert decode_processes(ServeConfig(), workers=2) == cpus
    assert decode_processes(ServeConfig(), workers=4 * cpus) == 1  # never none
    assert decode_processes(ServeConfig(decode_processes=3), workers=2) == 3  # as asked


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_killed_decode_process_is_replaced(batching_server: Server, mnist: Any) -> None:
    before = decode_processes(batching_server)
    default = 2 * len(os.sched_getaffinity(0))  # --decode-processes' default: two per CPU
    assert len(before) == default, before
    os.kill(before[0], signal.SIGKILL)
    good = encode(on_paper(mnist.test_images[0].numpy()))
    statuses = [post(batching_server, good, PNG)[0] for _ in range(6)]
    # The request that met the dead process, if any, is a 500; the others are read as usual.
    assert statuses.count(200) >= 5 and set(statuses) <= {200, 500}, statuses
    deadline = time.monotonic() + 60
    while len(after := decode_processes(batching_server)) != default or before[0] in after:
        assert time.monotonic() < deadline, f"no replacement: {after}"
        time.sleep(0.1)
    assert [post(batching_server, good, PNG)[0] for _ in range(4)] == [200] * 4


def test_onnx_backend_uses_the_shipped_copy_and_exports_only_when_it_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled model ships its ONNX copy: --backend onnx starts without exporting. A copy made
    from other weights (a model re-bundled without exporting again) is not served: the model is
    exported at startup instead, as for any --run."""
    import shutil

    import onnx

    import digitrec.recognition as recognition
    import digitrec.runs as runs
    import digitrec.serving as serving

    exported: list[str | None] = []
    real_export = serving.export_onnx_bytes

    def counting_export(run: str | None) -> bytes:
        exported.append(run)
        return real_export(run)

    monkeypatch.setattr(serving, "export_onnx_bytes", counting_export)
    assert serving.load_recognizer(None, "onnx").info()["backend"] == "onnx"
    assert exported == []

    folder = tmp_path / "bundled"
    shutil.copytree(runs.default_model_dir(), folder)
    model = onnx.load(str(folder / "model.onnx"))
    stale = next(entry for entry in model.metadata_props if entry.key == "weights_sha256")
    stale.value = "0" * 64
    onnx.save(model, str(folder / "model.onnx"))
    monkeypatch.setattr(recognition, "default_model_dir", lambda: folder)
    monkeypatch.setattr(runs, "default_model_dir", lambda: folder)
    served = serving.load_recognizer(None, "onnx")
    assert exported == [None] and served.info()["backend"] == "onnx"
    assert served.info()["source"] == "bundled"


def test_auto_backend_is_onnx_for_the_bundled_model_and_torch_for_a_run(tmp_path: Path) -> None:
    import shutil

    import digitrec.runs as runs
    import digitrec.serving as serving

    assert serving.ServeConfig().backend == "auto"
    assert serving.load_recognizer(None, "auto").info()["backend"] == "onnx"
    run = tmp_path / "run"
    shutil.copytree(runs.default_model_dir(), run)
    assert serving.load_recognizer(str(run), "auto").info()["backend"] == "torch"  # no export
    assert serving.load_recognizer(None, "torch").info()["backend"] == "torch"


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc")
def test_the_onnx_server_never_loads_torch(batching_server: Server, request: pytest.FixtureRequest) -> None:
    """On onnxruntime the server's process does without PyTorch (1.5 s and about 190 MB less to
    start); on torch it has it, on one thread."""
    backend = request.node.callspec.params["batching_server"]
    mapped = Path(f"/proc/{batching_server.proc.pid}/maps").read_text()
    assert ("libtorch" in mapped) == (backend == "torch"), backend
