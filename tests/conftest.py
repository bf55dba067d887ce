import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny matmuls are far faster single-threaded: no spinning workers, no fight over a shared 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny S-size checkpoints of each family, built once per test session."""
    from mmr1.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {fam: build_tiny_model(root / fam, family=fam, size="S", seed=0)
            for fam in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def lms(tiny_dirs):
    """family -> that tiny model, loaded once per test module (each module may change its models)."""
    from mmr1.models import load_model

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(tiny_dirs[family])
        return cache[family]

    return get


def solid_image(rgb=(200, 30, 30), size=112):
    from PIL import Image

    return Image.new("RGB", (size, size), rgb)
