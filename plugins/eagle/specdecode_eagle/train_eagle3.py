"""Training an EAGLE-3 head (``specdecode train-eagle --format speculators``; see train.py for the data and the loop).

What differs from the EAGLE-1 recipe (train.py's :class:`~specdecode_eagle.train.Trainer`, which this subclasses):

* **Inputs**: head position j reads a_j, the target's states at its three aux layers (vLLM's default (2, L // 2,
  L - 3) for an L-layer target), concatenated, fused by the head's ``fc``; they are recorded in the same forward
  pass as the last layer (data.py). The head's decoder layer reads [embedding ; fused feature] (eagle3.py).
* **Loss**: only the token loss (EAGLE-3 drops EAGLE's feature regression): cross-entropy between the target's own
  next-token distribution (soft labels: its LM head over its last-layer state, restricted to the draft vocabulary
  and renormalised) and the head's distribution over the draft vocabulary, from its own LM head.
* **Training-time test**: ``--unroll`` steps per position (3 by default), each reading the feature the previous step
  predicted one position earlier, as the head drafts; the gradient flows through the unrolled steps (as in EAGLE-3).
  Step s is weighted 0.8^(s-1).
* **Draft vocabulary**: the ``--draft-vocab-size`` most frequent token ids of the training data (the target's own
  responses and the teacher-forced text), stored as speculators' ``d2t`` / ``t2d``. The head's LM head starts from
  the target's LM-head rows for those ids and its final norm from the target's, so it starts out reading features as
  the target's last layer writes them.
* **Output**: the speculators format (``save_speculators``; what vLLM loads for ``method="eagle3"``), with the
  training record and the measured calibration in ``specdecode.json`` beside it (read by ``method="eagle3"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from specdecode.toolkit import linear

from .eagle3 import Eagle3Config, Eagle3Drafter, Eagle3Head
from .eagle3_checkpoint import save_speculators
from .train import Trainer

TRAINING_RECORD = "specdecode.json"  # beside config.json: how the head was trained, its calibration


def new_eagle3_head(
    target: Any, draft_vocab: torch.Tensor | None, aux_layers: tuple[int, ...], *,
    intermediate_size: int | None = None, norm_before_residual: bool = True,
) -> Eagle3Head:
    """A fresh EAGLE-3 head for ``target`` whose LM head and final norm start as the target's (rows of the draft
    vocabulary), so that a feature shaped like the target's last layer already scores like it."""
    from .head import HeadConfig

    layer = HeadConfig.from_target(target.config, intermediate_size=intermediate_size)
    config = Eagle3Config(layer=layer, draft_vocab_size=layer.vocab_size if draft_vocab is None else len(draft_vocab),
                          aux_layer_ids=aux_layers, norm_before_residual=norm_before_residual)
    head = Eagle3Head(config)
    if draft_vocab is not None:
        head.set_draft_vocab(draft_vocab)
    ids = head.draft_token_ids()
    with torch.no_grad():
        weight = target.get_output_embeddings().weight.detach().float()
        head.lm_head.weight.copy_(weight if ids is None else weight.index_select(0, ids))
        norm = getattr(target.base_model, "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            head.norm.weight.copy_(norm.weight.detach().float())
    return head


class Eagle3Trainer(Trainer):
    """:class:`~specdecode_eagle.train.Trainer` for an :class:`~specdecode_eagle.eagle3.Eagle3Head`: inputs are the
    fused aux states, the loss is the token loss on the target's soft labels, unrolled steps keep their gradient."""

    detach_unrolled = False
    input_field = "aux"  # the low/middle/high layers' states, concatenated [n, k*H]

    def __init__(self, head: Eagle3Head, target: Any, *, lr: float, feature_noise: float = 0.0, unroll: int = 3,
                 autocast: torch.dtype | None = None):
        ids = head.draft_token_ids()
        lm = target.get_output_embeddings()
        weight, bias = lm.weight.detach(), getattr(lm, "bias", None)
        # The target's LM head over the draft vocabulary: the soft labels.
        self.label_weight = weight if ids is None else weight.index_select(0, ids)
        self.label_bias = None if bias is None else (bias.detach() if ids is None else bias.detach()[ids])
        super().__init__(head, target, None, lr=lr, feature_noise=feature_noise, unroll=unroll, feature_weight=0.0,
                         token_weight=1.0, autocast=autocast)

    def make_drafter(self, head: Eagle3Head, target: Any, draft_vocab: torch.Tensor | None) -> Eagle3Drafter:
        return Eagle3Drafter(head, target, "EAGLE-3 head in training")

    def real_inputs(self, batch: dict[str, torch.Tensor], noise: float) -> torch.Tensor:
        aux = batch["aux"]
        if noise > 0:
            rms = aux.pow(2).mean(dim=-1, keepdim=True).sqrt()
            aux = aux + torch.randn_like(aux) * rms * noise
        return self.head.fuse(aux)

    def target_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        return linear(features, self.label_weight, self.label_bias).float().log_softmax(dim=-1)

    def save_checkpoint(self, directory: Path) -> None:
        save_speculators(self.head, directory, speculative_tokens=5, dtype=torch.float16)


def save_eagle3(head: Eagle3Head, directory: Path, *, verifier: str | None, meta: dict[str, Any]) -> None:
    """The head in the speculators format (fp16) and ``specdecode.json`` (the training record, the calibration)."""
    save_speculators(head, directory, verifier=verifier, verifier_architectures=["LlamaForCausalLM"],
                     speculative_tokens=5, dtype=torch.float16)
    (Path(directory) / TRAINING_RECORD).write_text(json.dumps(meta, indent=1) + "\n")


def read_training_record(directory: str | Path) -> dict[str, Any] | None:
    """``specdecode.json`` beside an EAGLE-3 head (what train-eagle wrote), or None when absent or unreadable."""
    path = Path(directory) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_calibration(directory: Path) -> list[float] | None:
    """The calibration ratios train-eagle measured for the EAGLE-3 head at ``directory`` (None when absent)."""
    record = read_training_record(directory)
    try:
        ratios = ((record or {}).get("calibration") or {}).get("ratio_per_position")
    except AttributeError:
        return None
    return [float(r) for r in ratios] if ratios else None
