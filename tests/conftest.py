"""Tests run single-threaded: tiny models gain little from a second thread, and on a shared
machine a busy neighbour stalls every two-thread op. Subprocesses inherit the setting.
`make test` runs one pytest-xdist worker a core instead (same numbers: each worker one thread)."""

import os

os.environ.setdefault("RLHFSCALE_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """In-process torch too: one thread for the whole session, restored at the end."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def corrupt_chat_labels(tmp_path_factory):
    """Corrupted chat responses and their labels (`corrupt_chat.labelled`), shared by the RM kinds' tests."""
    from corrupt_chat import labelled

    return labelled(tmp_path_factory.mktemp("corrupt_chat"))
