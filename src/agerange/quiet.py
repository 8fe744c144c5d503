"""What an entry point quiets: messages every run prints that ask nothing of the user.

Kept apart from the settings: `config.setup_logging` calls `quiet_expected_output` once.
"""

import contextlib
import functools
import importlib.abc
import importlib.util
import os
import re
import subprocess
import sys
import types
import typing
import warnings
from pathlib import Path

# Printed by every run, asking nothing of the user: MLflow's hint that integer columns cannot hold
# missing values (ours never do), its guess between two names for one local dataset source, and
# Optuna's note that the heartbeat (which retries a dead worker's trial) is experimental.
EXPECTED_WARNINGS = (
    "Hint: Inferred schema contains integer column",
    "The specified dataset source can be interpreted in multiple ways",
    "RetryHeartbeatStaleTrialCallback is experimental",
    "Argument ``heartbeat_interval`` is an experimental feature",
)
# What TensorFlow's C++ core writes to stderr while it loads, before its log level applies: a
# notice that oneDNN is on (it stays on: turning it off changes the results), and absl's remark
# that it logs before being set up.
TENSORFLOW_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")
# Expected only where no NVIDIA device exists: TensorFlow looks for CUDA and says it found none.
# With a GPU present these lines are real errors, and they are left alone.
NO_GPU_NOTICES = ("Could not find cuda drivers", "failed call to cuInit")
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")  # dxg: a GPU under WSL2


def quiet_expected_output() -> None:
    """Ignore EXPECTED_WARNINGS, and filter TensorFlow's start-up notices out of stderr."""
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))
    hooked = any(isinstance(finder, _QuietTensorFlowStart) for finder in sys.meta_path)
    if "tensorflow" not in sys.modules and not hooked:
        sys.meta_path.insert(0, _QuietTensorFlowStart())


class _QuietTensorFlowStart(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` with TensorFlow's start-up notices filtered out of stderr.

    An environment variable cannot do it: TensorFlow prints them before reading
    TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442).
    """

    def find_spec(self, name, path=None, target=None):  # noqa: ARG002 (the finder protocol)
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; TensorFlow's own imports then go the usual way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = functools.partial(_quiet_start, spec.loader.exec_module)
        return spec


def _quiet_start(exec_module: typing.Callable, module: types.ModuleType) -> None:
    gpu = any(Path(device).exists() for device in GPU_DEVICE_FILES)
    with _stderr_without(TENSORFLOW_NOTICES + (() if gpu else NO_GPU_NOTICES)):
        exec_module(module)
        if not gpu:  # CUDA is probed on first use: do it here, where its expected failure is hidden
            module.config.list_physical_devices("GPU")


@contextlib.contextmanager
def _stderr_without(expected: tuple[str, ...]) -> typing.Iterator[None]:
    """Drop the lines holding any of `expected` from what is written to file descriptor 2 (C++
    code included). A separate process filters, so the last words of a crash still get through."""
    filter_lines = (
        "import sys\n"
        "for line in sys.stdin.buffer:\n"
        "    if not any(text.encode() in line for text in sys.argv[1:]):\n"
        "        sys.stdout.buffer.write(line); sys.stdout.buffer.flush()\n"
    )
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", filter_lines, *expected],
                             stdin=subprocess.PIPE, stdout=saved)  # fmt: skip
    os.dup2(child.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        child.wait()
