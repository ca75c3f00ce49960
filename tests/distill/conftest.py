"""One torch thread for the distill tests: the models here are tiny, so a second thread gains
nothing and, on a shared CPU, OpenMP waits for it. One count for the whole package, set before
its first test: a thread count changes float sums, and the resume tests compare bit for bit."""
import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
