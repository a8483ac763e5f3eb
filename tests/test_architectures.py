"""Every architecture x every mode: greedy output identical to plain ``model.generate``, or a SpecDecodeError.

The architectures are the tiny random models of :mod:`specdecode.testing.architectures` (sliding windows of 8
tokens, prompts of 22-38 tokens plus 20 new ones, so windows are crossed). A cell passes when specdecode gives
exactly plain greedy generate's tokens in fp32, or refuses with a :class:`specdecode.SpecDecodeError`; a different
output or any other exception fails it.

Modes:

* chain: a proposer that drafts the right tokens for a random prefix, then wrong ones (rejections every step);
* tree: random trees with the right branch somewhere (tests/test_trees.py's TreeOracle);
* batch: three ragged left-padded prompts whose rows accept different numbers of drafts (holes in the cache) and
  finish at different steps (tests/test_batch.py's StaggeredOracle); each row == that prompt generated alone;
* sample: rejection sampling (``do_sample=True``) with ``top_k=1``, whose output is deterministic and must equal
  greedy decoding: the sampling path of the loop on every architecture (the distribution itself is checked on
  Llama by tests/test_sampling.py and the conformance kit; check_sampling_distribution takes 5-50 s per
  architecture, too slow for this matrix);
* ngram, draft_model (a draft of the same architecture, another seed), layer_skip, eagle (a random head, default
  options: tree drafts; ``adaptive=False`` so it always drafts).

Cells that are refused are listed in EXPECTED_REFUSALS with a fragment of the message they must give (recurrent
models, trees on ALiBi or convolution models, layer_skip where it cannot cut the model); every other cell must equal
plain generate. The matrix with the reasons is in docs/models.md.
"""

from __future__ import annotations

import atexit
import functools
import random
import re
import shutil
import tempfile

import pytest
import specdecode
import torch
import transformers
from specdecode import Proposal, Proposer, ProposeRequest, SpeculativeConfig
from specdecode.batching import left_pad
from specdecode.cache import RECURRENT_ROLLBACK_CHECKED, rolls_back_recurrent_state
from specdecode.testing.architectures import SPECS, tiny_model
from specdecode.testing.models import testing_device, testing_dtype

from .test_batch import StaggeredOracle
from .test_trees import TreeOracle

# The draft_model plugin rightly warns that a draft as large as the target is pointless.
pytestmark = pytest.mark.filterwarnings("ignore:the draft model has .* parameters")

MAX_NEW = 20
K = 4
PROMPT_LENGTHS = (22, 31, 38)  # batch mode: all three; single-sequence modes: the first and the last
SINGLE = (0, 2)
MODES = ("chain", "tree", "batch", "sample", "ngram", "draft_model", "layer_skip", "eagle")

# -- what is refused, and why (transformers 5.24, 5.25) ----------------------------------------------------------------
# Every other cell must give plain generate's tokens exactly. A refusal must come before any token is produced and
# say what is unsupported; the fragment below must appear in its message.

RECURRENT = "keep a state that rejected drafts would change"  # SSM / linear-attention state: no rollback
ALIBI_TREE = "takes token positions from its 2-D attention mask (ALiBi)"
CONV_TREE = "has conv layers, whose state runs along one sequence"
NO_LAYERS_LIST = "needs a decoder with a"  # layer_skip: no `.model.layers` to truncate (GPT-2 style models)
NO_ATTENTION_PREFIX = "no attention layer to cache keys in"  # layer_skip: the first layers are all recurrent/conv

_HYBRID = ("mamba", "mamba2", "falcon-mamba", "jamba", "bamba", "zamba2", "falcon-h1", "qwen3-next", "qwen3.5",
           "nemotron-h", "granitemoehybrid")

RECURRENT_TREE = "whose state runs along one sequence and cannot hold the branches of a tree"
RECURRENT_DRAFT = "cannot be a draft model"


def _model_type(arch: str) -> str:
    return getattr(transformers, SPECS[arch].config_class).model_type


# transformers 5.25 records past recurrent states, so chains (and batches, one sequence after another) run there on
# the model types specdecode lists as checked; this matrix is what checks them.
_ROLLED_BACK = tuple(
    arch for arch in _HYBRID if rolls_back_recurrent_state() and _model_type(arch) in RECURRENT_ROLLBACK_CHECKED
)
_RECURRENT_REFUSALS = {
    **{(arch, mode): RECURRENT for arch in _HYBRID for mode in MODES if mode != "layer_skip" and arch not in _ROLLED_BACK},
    **{(arch, "tree"): RECURRENT_TREE for arch in _ROLLED_BACK},
    **{(arch, "draft_model"): RECURRENT_DRAFT for arch in _ROLLED_BACK},
}

EXPECTED_REFUSALS: dict[tuple[str, str], str] = {
    **_RECURRENT_REFUSALS,
    **{(arch, "layer_skip"): NO_ATTENTION_PREFIX for arch in (*_HYBRID, "lfm2")},
    **{(arch, "layer_skip"): NO_LAYERS_LIST for arch in ("gpt2", "opt", "falcon", "falcon-alibi", "bloom", "gpt-bigcode")},
    ("bloom", "tree"): ALIBI_TREE,
    ("falcon-alibi", "tree"): ALIBI_TREE,
    ("lfm2", "tree"): CONV_TREE,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: a second thread only adds contention (and spin-waits on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- models, prompts and references (built once per architecture) -------------------------------------------------


@functools.lru_cache(maxsize=4)
def _model(arch: str):
    # $SPECDECODE_TEST_DEVICE / $SPECDECODE_TEST_DTYPE: the same matrix on a GPU, in reduced precision
    # (scripts/gpu_check.sh); the default is the CPU in fp32.
    return tiny_model(arch).to(testing_device(), testing_dtype())


@functools.lru_cache(maxsize=1)
def _prompts(vocab_size: int) -> list[torch.Tensor]:
    """[1, T] prompts of PROMPT_LENGTHS tokens: a repeated chunk (so n-grams fire) between random tokens."""
    g = torch.Generator().manual_seed(0)
    prompts = []
    for i, length in enumerate(PROMPT_LENGTHS):
        chunk = torch.randint(0, vocab_size, (5 + i,), generator=g)
        body = chunk.repeat(length // len(chunk) + 1)[: length - 6]
        ends = torch.randint(0, vocab_size, (6,), generator=g)
        prompts.append(torch.cat([ends[:3], body, ends[3:]]).view(1, -1).to(testing_device()))
    return prompts


@functools.lru_cache(maxsize=16)
def _plain(arch: str, index: int) -> list[int]:
    """Plain greedy continuation of prompt ``index``, alone, a few tokens past MAX_NEW (proposers peek ahead)."""
    model = _model(arch)
    prompt = _prompts(model.config.vocab_size)[index]
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=MAX_NEW + K + 1,
            min_new_tokens=MAX_NEW + K + 1,
        )
    return out[0, prompt.shape[1] :].tolist()


@functools.lru_cache(maxsize=4)
def _eagle_head(arch: str) -> str:
    """A random EAGLE head for the architecture's tiny model, saved in a temporary directory."""
    from specdecode_eagle.checkpoint import save_head
    from specdecode_eagle.head import EagleHead, HeadConfig

    model = _model(arch)
    hidden = model.get_input_embeddings().weight.shape[1]
    # Built from sizes, not HeadConfig.from_target, which needs Llama-style config names (GPT-2, OPT, Falcon,
    # Bloom and Mamba configs lack intermediate_size or num_attention_heads).
    config = HeadConfig(
        hidden_size=hidden,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=hidden // 4,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = EagleHead(config)
        for weight in head.parameters():
            if weight.dim() == 2:
                torch.nn.init.normal_(weight, std=0.3)
    directory = tempfile.mkdtemp(prefix="specdecode-arch-eagle-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(save_head(head.eval(), directory, dtype=torch.float32))


class ChainOracle(Proposer):
    """Drafts the target's greedy continuation for a random number of tokens, then wrong tokens."""

    def __init__(self, continuation: list[int], prompt_length: int, vocab_size: int, seed: int):
        self.continuation = continuation
        self.prompt_length = prompt_length
        self.vocab = vocab_size
        self.rng = random.Random(seed)

    def propose(self, request: ProposeRequest) -> Proposal:
        done = request.input_ids.shape[1] - self.prompt_length
        k = request.num_tokens
        truth = self.continuation[done : done + k]
        truth += [0] * (k - len(truth))
        right = self.rng.randint(0, k)
        draft = [
            t if i < right else (t + 1 + self.rng.randrange(self.vocab - 1)) % self.vocab
            for i, t in enumerate(truth)
        ]
        return Proposal(token_ids=torch.tensor([draft]))


# -- the modes -----------------------------------------------------------------------------------------------------


def _single(arch: str, config: SpeculativeConfig, proposer_for=None, **generate_kwargs) -> None:
    """Each single-sequence prompt: specdecode's tokens == plain greedy generate's."""
    model = _model(arch)
    prompts = _prompts(model.config.vocab_size)
    for index in SINGLE:
        prompt, plain = prompts[index], _plain(arch, index)
        proposer = None if proposer_for is None else proposer_for(model, prompt, plain, index)
        out = specdecode.generate(
            model, prompt, config, max_new_tokens=MAX_NEW, proposer=proposer, **generate_kwargs
        )
        got = out.sequences[0, prompt.shape[1] :].tolist()
        _assert_agrees(arch, model, prompt, got, plain[:MAX_NEW], f"prompt {index}")


def _assert_agrees(arch: str, model, prompt, got: list[int], plain: list[int], what: str) -> None:
    """fp32: the same tokens. bf16 / fp16: the same tokens up to the first place where plain generate's token and
    ours are tied within the dtype's rounding (tests/test_precision.py states the rule); after it, anything."""
    if got == plain:
        return
    at = _first_diff(got, plain)
    dtype = next(model.parameters()).dtype
    assert dtype != torch.float32 and at < min(len(got), len(plain)), (
        f"{arch}: {what} differs from plain generate at {at}"
    )
    with torch.inference_mode():
        ids = torch.cat([prompt[0], torch.tensor(plain[:at], device=prompt.device)]).unsqueeze(0)
        logits = model(ids).logits[0, -1].float()
    gap = float((logits[plain[at]] - logits[got[at]]).abs() / logits.abs().max())
    assert gap <= 2 * torch.finfo(dtype).eps, f"{arch}: {what} differs at {at} where the logits are {gap:.2e} apart"


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _chain_oracle(model, prompt, plain, index):
    return ChainOracle(plain, prompt.shape[1], model.config.vocab_size, seed=index)


def mode_chain(arch: str) -> None:
    _single(arch, SpeculativeConfig(num_speculative_tokens=K, speculation_schedule="constant"), _chain_oracle)


def mode_sample(arch: str) -> None:
    config = SpeculativeConfig(num_speculative_tokens=K, speculation_schedule="constant")
    _single(arch, config, _chain_oracle, do_sample=True, top_k=1, temperature=1.0, seed=0)


def mode_tree(arch: str) -> None:
    def tree_oracle(model, prompt, plain, index):
        return TreeOracle(prompt[0].tolist() + plain, model.config.vocab_size, seed=index)

    _single(arch, SpeculativeConfig(num_speculative_tokens=K), tree_oracle)


def mode_batch(arch: str) -> None:
    model = _model(arch)
    prompts = _prompts(model.config.vocab_size)
    alone = [_plain(arch, i) for i in range(len(prompts))]
    max_new = [MAX_NEW, MAX_NEW - 6, MAX_NEW - 2]  # rows finish (and leave the batch) at different steps
    ids, mask = left_pad([p[0].cpu() for p in prompts], 0)
    ids, mask = ids.to(testing_device()), mask.to(testing_device())
    out = specdecode.generate(
        model,
        ids,
        SpeculativeConfig(num_speculative_tokens=K, speculation_schedule="constant"),
        attention_mask=mask,
        max_new_tokens=max_new,
        pad_token_id=0,
        proposer=StaggeredOracle(model, alone),
    )
    for b, stats in enumerate(out.sequence_stats):
        got = out.sequences[b, ids.shape[1] : ids.shape[1] + stats.new_tokens].tolist()
        if got != alone[b][: max_new[b]] and testing_dtype() != torch.float32:
            _assert_agrees(arch, model, prompts[b], got, alone[b][: max_new[b]], f"batch row {b}")
        elif got != alone[b][: max_new[b]]:
            with torch.inference_mode():  # transformers' own batched generate, for the message
                hf = model.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=MAX_NEW,
                    min_new_tokens=MAX_NEW,
                    pad_token_id=0,
                )
            hf_row = hf[b, ids.shape[1] : ids.shape[1] + max_new[b]].tolist()
            raise AssertionError(
                f"{arch}: batch row {b} differs from the prompt generated alone at {_first_diff(got, alone[b])} "
                f"(transformers' batched generate {'agrees with' if hf_row == alone[b][: max_new[b]] else 'differs from'}"
                " the prompt alone)"
            )


def mode_ngram(arch: str) -> None:
    _single(arch, SpeculativeConfig(num_speculative_tokens=K, prompt_lookup_min=1))


def mode_draft_model(arch: str) -> None:
    draft = tiny_model(arch, seed=1)
    _single(arch, SpeculativeConfig(method="draft_model", draft_model=draft, num_speculative_tokens=K))


def mode_layer_skip(arch: str) -> None:
    _single(arch, SpeculativeConfig(method="layer_skip", num_speculative_tokens=K))


def mode_eagle(arch: str) -> None:
    config = SpeculativeConfig(
        method="eagle",
        draft_model=_eagle_head(arch),
        num_speculative_tokens=K,
        method_options={"adaptive": False},
    )
    _single(arch, config)


_RUN = {name: globals()[f"mode_{name}"] for name in MODES}


def _cells() -> list:
    return [pytest.param(arch, mode, id=f"{arch}-{mode}") for arch in SPECS for mode in MODES]


@pytest.mark.parametrize(("arch", "mode"), _cells())
def test_identical_to_plain_generate_or_refused(arch: str, mode: str) -> None:
    refusal = EXPECTED_REFUSALS.get((arch, mode))
    if refusal is None:
        _RUN[mode](arch)  # asserts equality with plain generate
        return
    with pytest.raises(specdecode.SpecDecodeError, match=re.escape(refusal)):
        _RUN[mode](arch)


def test_expected_refusals_name_real_cells() -> None:
    modes = set(MODES)
    assert all(arch in SPECS and mode in modes for arch, mode in EXPECTED_REFUSALS)


def test_every_recurrent_type_said_to_be_checked_is_in_the_matrix() -> None:
    assert RECURRENT_ROLLBACK_CHECKED <= {_model_type(arch) for arch in _HYBRID}


@pytest.mark.parametrize("arch", ["mistral", "gemma3", "gpt2", "bloom", "qwen3-next"])
def test_rejection_sampling_keeps_the_distribution(arch):
    """Sampled output follows the target's exact distribution (enumerated with transformers' warpers) within the
    noise of plain sampling, on a sliding-window model, Gemma 3, a learned-position model, an ALiBi model and a
    recurrent hybrid (transformers >= 5.25)."""
    from specdecode.testing import ConformanceCase, check_sampling_distribution

    if arch in _HYBRID and arch not in _ROLLED_BACK:
        pytest.skip("this transformers cannot restore recurrent states")

    case = ConformanceCase(method="ngram", model_factory=functools.partial(tiny_model, arch),
                           config={"prompt_lookup_min": 1}, options={"adaptive": False})
    check_sampling_distribution(case, draws=60, long_runs=1, long_tokens=24)


@pytest.mark.skipif(not rolls_back_recurrent_state(), reason="this transformers cannot restore recurrent states")
def test_recorded_recurrent_states_roll_back_and_do_not_pile_up():
    """A crop after a verify pass restores the recurrent state of the last kept token; a step with nothing to crop
    drops the record, so it does not grow with every fully accepted step."""
    from specdecode.cache import crop_to, keep_past, new_cache

    model = _model("mamba")
    ids = _prompts(model.config.vocab_size)[0]
    with torch.inference_mode():
        cache = new_cache(model)
        model(input_ids=ids, cache=cache)
        keep_past(cache, tokens_per_forward=4)
        length = int(cache.get_seq_length())  # (a recurrent cache's length is a tensor it updates in place)
        model(input_ids=ids[:, :4], cache=cache)  # a verify pass over 4 tokens, 3 of them rejected
        crop_to(cache, length + 1)
        rolled_back = [layer.recurrent_states[0].clone() for layer in cache.layers]
        reference = new_cache(model)
        model(input_ids=torch.cat([ids, ids[:, :1]], dim=1), cache=reference)
        for got, want in zip(rolled_back, (layer.recurrent_states[0] for layer in reference.layers)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        model(input_ids=ids[:, :4], cache=cache)  # every draft accepted: nothing to crop
        crop_to(cache, int(cache.get_seq_length()))
        assert all(not any(layer.recurrent_states_history.values()) for layer in cache.layers)


@pytest.mark.skipif(not rolls_back_recurrent_state(), reason="this transformers cannot restore recurrent states")
def test_recurrent_state_covers_a_per_batch_size_k_above_num_speculative_tokens():
    """The recorded past must reach back over the widest verify pass, also when a per-batch-size range asks for
    more drafts than ``num_speculative_tokens``."""
    model = _model("mamba")
    ids = _prompts(model.config.vocab_size)[1]
    config = {"method": "ngram", "num_speculative_tokens": 1, "prompt_lookup_min": 1,
              "num_speculative_tokens_per_batch_size": [[1, 8, 6]], "speculation_schedule": "constant"}
    out = specdecode.generate(model, ids, config, max_new_tokens=20)
    assert max(out.stats.k_per_step) >= 3 and out.stats.drafted > out.stats.accepted  # wide passes, rejections
    assert out.sequences[0, ids.shape[1] :].tolist() == _plain("mamba", 1)[:20]
