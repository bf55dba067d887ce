"""The experiment runners' stage cache: which settings decide whether a finished stage is reused."""

from mmr1.config import load_config
from mmr1.recipes.common import fingerprint


def test_fingerprint_ignores_logging_seeds_and_other_runners_sections():
    base = fingerprint(load_config(None, []), "mmsearch")
    assert fingerprint(load_config(None, ["logging.run_dir=/elsewhere", "mmsearch.seeds=[5, 6]"]), "mmsearch") == base
    assert fingerprint(load_config(None, ["othink.seeds=[7]", "vision_r1.seeds=[7]"]), "mmsearch") == base
    assert fingerprint(load_config(None, ["vision_r1.seeds=[7]"]), "vision_r1") == \
        fingerprint(load_config(None, []), "vision_r1")  # its own seed list never counts either
    # what decides a result does count: its own section, and every shared one
    assert fingerprint(load_config(None, ["mmsearch.warmup_steps=7"]), "mmsearch") != base
    assert fingerprint(load_config(None, ["search.top_k=2"]), "mmsearch") != base
    assert fingerprint(load_config(None, ["rl.lr=0.5"]), "mmsearch") != base
