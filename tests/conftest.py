"""Tests run single-threaded: tiny models gain little from a second thread, and on a shared
machine a busy neighbour stalls every two-thread op. Subprocesses inherit the setting."""

import os

os.environ.setdefault("RLHFSCALE_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
