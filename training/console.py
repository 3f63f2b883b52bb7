"""What the training commands print besides their results, and what TensorFlow may not print.

Results (reports, ``--json``) go to stdout; progress bars (tqdm) and stage lines go to stderr, so that
``bloodcells evaluate --json > result.json`` stays pure JSON. ``tqdm.write`` keeps a running bar whole.

TensorFlow 2.21 logs through absl from C++ straight to file descriptor 2, partly before
``TF_CPP_MIN_LOG_LEVEL`` (set in ``training/__init__.py``) is read: the oneDNN notice at import, and
at the first ``fit`` an ERROR line from its own op-determinism rewrite of a tf.data map. Python's
logging and warnings filters cannot reach either; ``native_log_filter`` drops those lines where they arise.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


def say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def stages(progress: bool) -> Callable[[str], None]:
    """``say`` for a run that shows its progress, else nothing (``--quiet``, ``--json``)."""
    return say if progress else (lambda message: None)


# absl's C++ log record: severity, date, time, thread, file:line], message. Before absl::InitializeLog the
# date is 0000 and the time 00:00:<seconds since 1970>.
_ABSL_RECORD = re.compile(rb"([IWEF])\d{4} \d+:\d+:\d+\.\d+ +\d+ [^\]\n]*\] (.*)", re.DOTALL)
_PRE_INIT = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# ERROR records that report nothing wrong: with op determinism on, tf.data turns a parallel map into a
# sequential one and keeps an attribute the sequential op lacks ("Unknown attributes will be ignored").
HARMLESS_ERRORS = (b"NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition",)


def without_noise(line: bytes) -> bytes:
    """The line less a noise record: INFO and WARNING (what TF_CPP_MIN_LOG_LEVEL=2 means) and the harmless
    errors. Any other ERROR or FATAL record, and whatever is not an absl record (Python's output and
    tracebacks), stays; so does a progress bar that a record was written after, on the same line."""
    if line.startswith(_PRE_INIT):
        return b""
    match = _ABSL_RECORD.search(line)
    if match is None:
        return line
    severity, message = match.groups()
    if severity in (b"I", b"W") or message.startswith(HARMLESS_ERRORS):
        return line[: match.start()]
    return line


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pump(read_end: int, out: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = re.split(rb"(?<=\n)", pending + chunk)
        for line in lines:
            _write_all(out, without_noise(line))
        # A partial line that cannot start a log line (a progress bar's "\r...") is shown at once.
        if pending and pending[:1] not in b"IWEF":
            _write_all(out, pending)
            pending = b""
    _write_all(out, without_noise(pending))


@contextmanager
def native_log_filter() -> Iterator[None]:
    """While the block runs, file descriptor 2 goes through a pipe that drops the noise (``without_noise``)
    and passes everything else on at once, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pump, args=(read_end, saved), name="native-log-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        pump.join()
        os.close(read_end)
        os.close(saved)
