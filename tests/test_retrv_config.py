"""The `retrv` config section: defaults, checked overrides, and that its values drive the modules."""

import pytest

from mmr1.config import Config, describe, load_config
from mmr1.errors import ConfigError
from mmr1.retrieval.reward import lambda_schedule
from mmr1.retrieval.world import make_cir_world


def test_defaults_and_help():
    r = Config().retrv
    assert (r.top_k, r.n_compress, r.lambda_schedule, r.lambda_fixed, r.index_base) == (50, 1, "curriculum", 0.5, 1)
    rows = [row for row in describe() if row[0].startswith("retrv.")]
    assert len(rows) >= 15 and all(h for _, _, _, h in rows)


def test_overrides_are_checked():
    cfg = load_config(overrides=["retrv.top_k=20", "retrv.lambda_schedule=fixed", "retrv.lambda_fixed=0.25",
                                 "retrv.world_params={n_hard: 3, image_size: 64}"])
    assert cfg.retrv.top_k == 20
    assert lambda_schedule(cfg.retrv.lambda_schedule, cfg.retrv.lambda_fixed)(10, 100) == 0.25
    w = make_cir_world(2, **cfg.retrv.world_params)
    assert all(len(q.negatives) <= 3 for q in w.queries) and w.queries[0].image.size == (64, 64)
    with pytest.raises(ConfigError, match="retrv.top_k: 0 is out of range"):
        load_config(overrides=["retrv.top_k=0"])
    with pytest.raises(ConfigError, match="retrv.lambda_schedule"):
        load_config(overrides=["retrv.lambda_schedule=cosine"])
    with pytest.raises(ConfigError, match="retrv.lambda_fixed"):
        load_config(overrides=["retrv.lambda_fixed=1.5"])
    with pytest.raises(ConfigError, match="did you mean 'retrv.top_k'"):
        load_config(overrides=["retrv.topk=5"])
