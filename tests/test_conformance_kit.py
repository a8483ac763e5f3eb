"""The conformance kit catches what it claims to: each broken proposer below fails the matching check.

Run on small settings: these are about the kit's power, the full checks run in test_conformance_builtin.py.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
import specdecode
import torch
from specdecode import Proposal, Proposer, ProposerSpec
from specdecode.testing import (
    BadOptions,
    ConformanceCase,
    ConformanceFailure,
    ContractViolation,
    check_bad_options,
    check_empty_proposals,
    check_greedy_equivalence,
    check_k1,
    check_rollback,
    check_sampling_distribution,
    check_seeded_reproducibility,
    registered_plugin,
    run_conformance,
)

_names = itertools.count()


class _Plugin:
    def __init__(self, spec):
        self.spec = spec

    @specdecode.hookimpl
    def specdecode_proposers(self):
        return [self.spec]


def case_for(proposer_class, options_class=None, **case_fields):
    """Register ``proposer_class`` as a fresh method; returns (case, plugin) for registered_plugin."""
    name = f"kit-test-{next(_names)}"
    spec = ProposerSpec(name=name, factory=lambda model, config, options: proposer_class(model, options), options_class=options_class)
    return ConformanceCase(method=name, **case_fields), _Plugin(spec)


class TargetDraft(Proposer):
    """Drafts from the target itself: argmax under greedy; under sampling draws from the warped target and
    reports that distribution, which is lossless (and accepts everything)."""

    lie_about_q = False

    def __init__(self, model, options=None):
        self.model = model

    def propose(self, request):
        ids, drafts, probs = request.input_ids, [], []
        for _ in range(request.num_tokens):
            with torch.inference_mode():
                logits = self.model(input_ids=ids).logits[:, -1]
            p = specdecode.warp_probs(logits, request.sampling)
            if request.sampling.greedy or self.lie_about_q:
                token = logits.argmax(dim=-1, keepdim=True)  # drawn deterministically...
            else:
                token = torch.multinomial(p, 1, generator=request.generator)
            drafts.append(token)
            probs.append(p)  # ...but (when lying) reported as drawn from p
            ids = torch.cat([ids, token], dim=1)
        if request.sampling.greedy:
            return Proposal(token_ids=torch.cat(drafts, dim=1))
        return Proposal(token_ids=torch.cat(drafts, dim=1), draft_probs=torch.stack(probs, dim=1))


class LyingTargetDraft(TargetDraft):
    lie_about_q = True


class ForgetfulCopier(Proposer):
    """Keeps its own copy of the text and appends its drafts, assuming they were accepted: no rollback."""

    def __init__(self, model, options=None):
        self.tokens: list[int] = []

    def start(self, context):
        self.tokens = context.input_ids[0].tolist()

    def propose(self, request):
        seen = request.input_ids[0].tolist()
        self.tokens += seen[len(self.tokens) :]  # catches up on new tokens, but never drops stale ones
        draft = self.tokens[-3 : -3 + request.num_tokens] or self.tokens[-1:]
        draft = draft[: request.num_tokens]
        self.tokens += draft
        return Proposal(token_ids=torch.tensor([draft], dtype=torch.long))


class InPlaceEditor(Proposer):
    def __init__(self, model, options=None):
        pass

    def propose(self, request):
        request.input_ids[0, 0] = 0
        return Proposal.empty(1)


class Greedy(Proposer):
    """Ignores num_tokens."""

    def __init__(self, model, options=None):
        pass

    def propose(self, request):
        return Proposal(token_ids=request.input_ids[:, -1:].repeat(1, request.num_tokens + 1))


class Silent(Proposer):
    def __init__(self, model, options=None):
        pass

    def propose(self, request):
        return Proposal.empty(1)


class GlobalRandom(Proposer):
    def __init__(self, model, options=None):
        self.vocab = model.config.vocab_size

    def propose(self, request):
        return Proposal(token_ids=torch.randint(0, self.vocab, (1, request.num_tokens)))  # ignores the generator


@attrs.frozen(kw_only=True)
class LaxOptions:
    depth: int = 2  # no validator: anything goes


@attrs.frozen(kw_only=True)
class StrictOptions:
    depth: int = attrs.field(default=2, validator=attrs.validators.ge(1))


# Small: the target drafting for itself costs K target forwards per step; the lying proposer's bias is large.
FAST_SAMPLING = dict(settings=({"temperature": 0.1},), draws=40, long_runs=1, long_tokens=24, null_replicates=300, k=2)


def test_lossless_sampling_proposer_passes_and_lying_one_fails():
    case, plugin = case_for(TargetDraft)
    with registered_plugin(plugin):
        assert "long-run z" in check_sampling_distribution(case, **FAST_SAMPLING).summary
        check_greedy_equivalence(case, k_values=(3,), num_prompts=1)
    case, plugin = case_for(LyingTargetDraft)
    with registered_plugin(plugin), pytest.raises(ConformanceFailure, match="sampling_distribution"):
        check_sampling_distribution(case, **FAST_SAMPLING)


def test_missing_rollback_is_caught_by_the_replay():
    case, plugin = case_for(ForgetfulCopier)
    with registered_plugin(plugin):
        with pytest.raises(ConformanceFailure, match="freshly started proposer"):
            check_rollback(case, num_prompts=2)
        with pytest.raises(ConformanceFailure, match="freshly started proposer"):
            check_empty_proposals(case, num_prompts=1)


def test_contract_violations_are_named():
    case, plugin = case_for(InPlaceEditor)
    with registered_plugin(plugin), pytest.raises(ContractViolation, match="modified request.input_ids in place"):
        check_k1(case, num_prompts=1)
    case, plugin = case_for(Greedy)
    with registered_plugin(plugin), pytest.raises(ContractViolation, match="proposed 2 tokens but request.num_tokens was 1"):
        check_k1(case, num_prompts=1)


def test_a_method_that_never_drafts_does_not_pass_silently():
    case, plugin = case_for(Silent)
    with registered_plugin(plugin), pytest.raises(ConformanceFailure, match="proposed no draft token"):
        check_greedy_equivalence(case, k_values=(2,), num_prompts=1)


def test_global_rng_breaks_seeded_reproducibility():
    case, plugin = case_for(GlobalRandom)
    with registered_plugin(plugin), pytest.raises(ConformanceFailure, match="seeded_reproducibility"):
        check_seeded_reproducibility(case)


def test_bad_options_must_be_rejected_clearly():
    case, plugin = case_for(Silent, LaxOptions, bad_options=[{"depth": 0}])
    with registered_plugin(plugin), pytest.raises(ConformanceFailure, match="was accepted; expected a ConfigError"):
        check_bad_options(case)
    case, plugin = case_for(Silent, StrictOptions, bad_options=[{"depth": 0}])
    with registered_plugin(plugin):
        check_bad_options(case)
    case, plugin = case_for(Silent, StrictOptions, bad_options=[BadOptions(values={"depth": 0}, mentions=("1 <= depth",))])
    with registered_plugin(plugin), pytest.raises(ConformanceFailure, match="does not mention"):
        check_bad_options(case)


def test_run_conformance_reports_every_failing_check_at_once():
    case, plugin = case_for(Silent)
    with registered_plugin(plugin), pytest.raises(ConformanceFailure) as failure:
        run_conformance(case, skip=("sampling_distribution", "seeded_reproducibility", "eos", "max_new_tokens"))
    message = str(failure.value)
    # It drafts nothing: greedy_equivalence and k1 say so, rollback sees no rejection; the rest pass.
    assert "failed 3 conformance checks" in message
    assert "- greedy_equivalence:" in message and "- k1:" in message and "- rollback:" in message
    with pytest.raises(ValueError, match="unknown conformance checks in skip"):
        run_conformance(case, skip=("greedy",))
