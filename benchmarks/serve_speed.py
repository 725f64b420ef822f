"""``digitrec serve`` under load: today's path against batching, torch against ONNX Runtime, in one run.

    python -m benchmarks.serve_speed                          # 3 rounds of 2,000 requests, 16 clients
    python -m benchmarks.serve_speed --readme docs/speed.md   # and write the table there
    python -m benchmarks.serve_speed --quick                  # a smoke run: 1 round of 100 requests

Starts three servers on loopback, one per contender, and loads them from this process (the
client, :func:`benchmarks.load_serve.run_load`: one keep-alive connection per client, all driven
from one selector loop, or with ``--client threads`` a thread with http.client each; the same
280x280 PNG of an MNIST digit) in interleaved rounds (A B C, A B C, ...), so that a
noisy, shared machine affects every contender alike; the table quotes the median of the
rounds and ratios against the reference:

  reference   --batch-window 0 --backend torch: each request decoded, normalized and scored
              alone in one of --threads threads (the path before batching)
  batched     --backend torch: a decode process pool, micro-batches within --batch-window
  batched+onnx  the same with --backend onnx (for the bundled model, the default)

Each server is idle (its own processes wait) while another is loaded. The model alone is
timed too: torch against onnxruntime (one thread each) on batches of 1, 8 and 32 inputs.
Results go to ``benchmarks/results/serve_speed-<timestamp>.json`` (or ``--out``). Exit code 1
if any request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by its path: make "benchmarks" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_serve import CLIENTS, RESULTS, add_client_argument, make_png, run_load, started_server

# The goal (#18): 16 clients, 280x280 PNGs.
TARGET_RPS = 300.0
TARGET_P99_MS = 60.0

CONTENDERS: dict[str, list[str]] = {
    "reference": ["--batch-window", "0", "--backend", "torch"],
    "batched": ["--backend", "torch"],
    "batched+onnx": ["--backend", "onnx"],
}


def model_speed(batches: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    """Median milliseconds per model call, torch against onnxruntime, one thread each."""
    import numpy as np
    import torch

    from digitrec.serving import load_recognizer

    torch.set_num_threads(1)
    scorers = {
        "torch": load_recognizer(None, "torch")._scorer,
        "onnx": load_recognizer(None, "onnx")._scorer,
    }
    rows = []
    rng = np.random.default_rng(0)
    for size in batches:
        x = rng.random((size, 1, 28, 28), dtype=np.float32)
        times: dict[str, list[float]] = {name: [] for name in scorers}
        for _ in range(5):  # warm-up
            for scorer in scorers.values():
                scorer(x)
        for _ in range(repeats):
            for name, scorer in scorers.items():  # interleaved
                start = time.perf_counter()
                scorer(x)
                times[name].append(time.perf_counter() - start)
        torch_ms = statistics.median(times["torch"]) * 1000
        onnx_ms = statistics.median(times["onnx"]) * 1000
        speedup = round(torch_ms / onnx_ms, 2)
        rows.append(
            {
                "batch": size,
                "torch_ms": round(torch_ms, 3),
                "onnx_ms": round(onnx_ms, 3),
                "onnx_speedup": speedup,
            }
        )
    return rows


def run(requests: int, concurrency: int, rounds: int, warmup: int, client: str) -> dict[str, Any]:
    body, label = make_png(0, 280)
    rounds_by_name: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    commands: dict[str, list[str]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, args in CONTENDERS.items():
            server = stack.enter_context(started_server([*args, "--no-access-log"]))
            servers[name], commands[name] = server, server.command
        for index in range(rounds):
            for name, server in servers.items():
                result = run_load(server.url, body, requests, concurrency, warmup, client)
                rounds_by_name[name].append(result)
                latency = result["latency_ms"]
                assert isinstance(latency, dict)
                print(
                    f"round {index + 1}/{rounds} {name:>13}: {result['throughput_rps']} req/s, "
                    f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, {result['errors']} errors",
                    flush=True,
                )
    summary = {}
    for name, results in rounds_by_name.items():
        summary[name] = {
            "throughput_rps": statistics.median(float(r["throughput_rps"]) for r in results),
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in results),
            "p90_ms": statistics.median(r["latency_ms"]["p90"] for r in results),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in results),
            "errors": sum(int(r["errors"]) for r in results),
            "requests": sum(int(r["requests"]) for r in results),
        }
    reference = summary["reference"]
    for row in summary.values():
        row["throughput_vs_reference"] = round(row["throughput_rps"] / reference["throughput_rps"], 2)
        row["p99_vs_reference"] = round(row["p99_ms"] / reference["p99_ms"], 2)
        row["meets_target"] = (
            row["throughput_rps"] >= TARGET_RPS and row["p99_ms"] <= TARGET_P99_MS and row["errors"] == 0
        )
    return {
        "image": {"width": 280, "height": 280, "png_bytes": len(body), "label": label},
        "requests_per_round": requests,
        "concurrency": concurrency,
        "client": client,
        "rounds": rounds,
        "server_commands": commands,
        "summary": summary,
        "rounds_detail": rounds_by_name,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"digitrec serve load, {result['timestamp']}: {result['machine']['cpu']}, "
        f"{result['machine']['cpus']} CPUs; {result['concurrency']} clients "
        f"({CLIENTS[result.get('client', 'threads')]}), 280x280 PNG, "
        f"median of {result['rounds']} rounds of {result['requests_per_round']} requests",
        "",
        "| server | errors | throughput | p50 | p90 | p99 | throughput vs reference | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "reference": "reference (`--batch-window 0`)",
        "batched": "batched, `--backend torch`",
        "batched+onnx": "batched, `--backend onnx` (the bundled model's default)",
    }
    for name, row in result["summary"].items():
        lines.append(
            f"| {names.get(name, name)} | {row['errors']} | {row['throughput_rps']:.1f} req/s | "
            f"{row['p50_ms']:.1f} ms | {row['p90_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
            f"{row['throughput_vs_reference']:.2f}x | {'yes' if row['meets_target'] else 'no'} |"
        )
    models = ", ".join(
        f"batch {row['batch']}: torch {row['torch_ms']:.2f} ms, onnx {row['onnx_ms']:.2f} ms "
        f"({row['onnx_speedup']:.2f}x)"
        for row in result["model_speed"]
    )
    lines += [
        "",
        f"- goal (#18): >= {TARGET_RPS:g} req/s and p99 <= {TARGET_P99_MS:g} ms at 16 clients, no errors",
        f"- the model alone, one thread, median per call: {models}",
    ]
    return "\n".join(lines)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections (default: 16)")
    add_client_argument(parser)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (default: 3)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per round (default: 20)")
    parser.add_argument("--quick", action="store_true", help="1 round of 100 requests (default: off)")
    parser.add_argument(
        "--out", help="result JSON (default: benchmarks/results/serve_speed-<timestamp>.json)"
    )
    parser.add_argument("--readme", help="write the table between its markers in this file (default: none)")
    args = parser.parse_args(argv)
    if args.quick:
        if args.readme:
            parser.error("--readme: a --quick run is a smoke test, not figures for the README")
        args.requests, args.rounds, args.warmup = 100, 1, 5
    if args.requests < 1 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--requests, --concurrency and --rounds must be >= 1, --warmup >= 0")

    result: dict[str, Any] = {
        "benchmark": "serve_speed",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    result.update(run(args.requests, args.concurrency, args.rounds, args.warmup, args.client))
    result["model_speed"] = model_speed((1, 8, 32), 20 if args.quick else 200)
    out = Path(args.out) if args.out else RESULTS / f"serve_speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    from digitrec.fileio import write_json_atomic

    write_json_atomic(out, result)
    text = table(result)
    print(text)
    print(f"wrote {out}")
    if args.readme:
        from benchmarks.readme import replace_marked_block

        replace_marked_block(args.readme, "serve-load", text)
        print(f"wrote the table into {args.readme}")
    return 0 if all(row["errors"] == 0 for row in result["summary"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
