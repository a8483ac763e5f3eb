"""The shipped EAGLE-3 head (speculators format) reads as made for SmolLM2-135M-Instruct, without loading the target."""

import json

import specdecode_eagle
import torch
from specdecode_eagle.eagle3_checkpoint import head_format, load_eagle3_head
from specdecode_eagle.train_eagle3 import read_calibration


def test_shipped_eagle3_head_fits_smollm2_and_stays_small():
    path = specdecode_eagle.SMOLLM2_EAGLE3_HEAD
    assert head_format(path) == "speculators"
    shape = specdecode_eagle.SMOLLM2_SHAPE
    head = load_eagle3_head(path).head
    config = head.config
    assert config.layer.hidden_size == shape["hidden_size"] and config.layer.vocab_size == shape["vocab_size"]
    assert config.aux_layer_ids == (2, 15, 27)  # vLLM's default for a 30-layer target
    assert head.fc.weight.shape == (576, 3 * 576)
    ids = head.draft_token_ids()
    assert ids is not None and len(ids) == config.draft_vocab_size and int(ids.max()) < shape["vocab_size"]
    assert torch.equal(ids, ids.sort().values)
    raw = json.loads((path / "config.json").read_text())
    assert raw["speculators_model_type"] == "eagle3"
    assert raw["speculators_config"]["verifier"]["name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20_000_000  # the limit for a shipped head
    calibration = read_calibration(path)
    assert calibration and all(0 < r <= 2 for r in calibration)
