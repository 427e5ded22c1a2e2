"""The PyTorch peer of the benchmark scripts: a timm model timed in its own process.

    python scripts/torch_peer.py --model efficientnet_b0 --batch 32 --image_size 224 --phase infer

scripts/bench_model.py and scripts/bench_inference.py load TensorFlow; torch is never imported
next to it (with both in one process, importing torch after TensorFlow crashed the scripts with
a segfault on a user's machine, and their two thread pools would compete for the same cores). `TorchPeer` starts this
file as a child process and sends it one command per line on stdin; the child answers one JSON
line on stdout:

- at start: `{"ready": true, "torch": "2.13.0+cpu", "timm": "1.0.31"}` or `{"error": "..."}`;
- `warmup N`: N untimed calls, `{"ok": true}`;
- `time N`: N timed calls, `{"seconds": [t1, ..., tN]}` (each call synchronous: inference
  returns numpy logits, training finishes `optimizer.step()`);
- `rss`: `{"peak_rss_gb": x}` (this process's VmHWM);
- `quit` or end of input: exit.

The model runs in `channels_last` memory format unless `--layout nchw` (timm's and PyTorch's
recommendation for convolutions on CPU; NCHW is 1.2-1.7x slower there). Inference takes float32
NCHW-shaped batches of random 0..1 values (speed does not depend on them); training is one
RMSprop update (rho 0.9, momentum 0.9, eps 1e-3, as the TensorFlow variants) on a random batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

LAYOUTS = ("channels_last", "nchw")


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB.

    Linux's VmHWM belongs to the process image, so a child started by this script reports its
    own peak; ru_maxrss (the fallback elsewhere) keeps the parent's peak across fork + exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _build(args: argparse.Namespace):
    """The zero-argument call one timed step makes."""
    import timm
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = timm.create_model(args.model, num_classes=args.num_classes, pretrained=False)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size).to(memory_format=fmt)
    if args.phase == "infer":
        model.eval()

        def forward():
            with torch.inference_mode():
                return model(x).numpy()

        return forward
    y = torch.randint(0, args.num_classes, (args.batch,))
    model.train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.9, eps=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


_CHANNEL = None  # the answers' stream: the original stdout, kept for them alone


def _reply(message: dict) -> None:
    _CHANNEL.write(json.dumps(message) + "\n")
    _CHANNEL.flush()


def serve(argv: list[str] | None = None) -> int:
    """The child's side: build the model, then answer commands until `quit`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="timm model name")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--image_size", type=int, required=True)
    parser.add_argument("--phase", choices=("infer", "train"), default="infer")
    parser.add_argument("--layout", choices=LAYOUTS, default="channels_last")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    global _CHANNEL
    # Libraries print to stdout (timm: "Error importing huggingface_hub..."): answers go to the
    # original stdout, everything else to stderr.
    _CHANNEL = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        call = _build(args)
        import timm
        import torch
    except Exception as err:  # a missing or broken install: say so, the parent goes on without
        _reply({"error": f"{type(err).__name__}: {err}".splitlines()[0]})
        return 1
    _reply({"ready": True, "torch": torch.__version__, "timm": timm.__version__})
    for line in sys.stdin:
        command, _, count = line.strip().partition(" ")
        if command == "warmup":
            for _ in range(int(count)):
                call()
            _reply({"ok": True})
        elif command == "time":
            seconds = []
            for _ in range(int(count)):
                start = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - start)
            _reply({"seconds": seconds})
        elif command == "rss":
            _reply({"peak_rss_gb": peak_rss_gb()})
        else:
            break
    return 0


class PeerError(RuntimeError):
    """The peer could not start (torch or timm missing or broken) or stopped answering."""


class TorchPeer:
    """A timm model timed in a child process (see the module docstring).

    Args:
      model: timm model name.
      batch: batch size.
      image_size: image height and width.
      phase: "infer" or "train".
      layout: "channels_last" or "nchw".
      num_classes: classifier width.
      threads: torch threads (None: all cores).

    Raises:
      PeerError: the child could not build the model; the message is its one-line reason.
    """

    def __init__(
        self,
        model: str,
        batch: int,
        image_size: int,
        phase: str = "infer",
        layout: str = "channels_last",
        num_classes: int = 1000,
        threads: int | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--model",
            model,
            "--batch",
            str(batch),
            "--image_size",
            str(image_size),
            "--phase",
            phase,
            "--layout",
            layout,
            "--num_classes",
            str(num_classes),
            *(["--threads", str(threads)] if threads else []),
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.versions = self._answer()

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        try:
            answer = json.loads(line)
        except ValueError:
            self.close()
            raise PeerError(f"the PyTorch peer stopped (exit {self._proc.poll()})") from None
        if "error" in answer:
            self.close()
            raise PeerError(answer["error"])
        return answer

    def _ask(self, command: str) -> dict:
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._answer()

    def warmup(self, calls: int) -> None:
        """`calls` untimed calls (tracing-free in PyTorch, but allocator and thread warm-up)."""
        self._ask(f"warmup {calls}")

    def time_calls(self, calls: int) -> list[float]:
        """Seconds of each of `calls` synchronous calls, measured in the child."""
        return self._ask(f"time {calls}")["seconds"]

    def peak_rss_gb(self) -> float:
        """The child's peak resident memory in GB."""
        return self._ask("rss")["peak_rss_gb"]

    def close(self) -> None:
        """Stop the child (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":
    sys.exit(serve())
