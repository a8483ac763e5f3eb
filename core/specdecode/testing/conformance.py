"""The conformance kit: what every speculation method must do, as checks a plugin author runs in their own tests.

    from specdecode.testing import ConformanceCase, run_conformance

    run_conformance(ConformanceCase(method="suffix", options={"max_depth": 16}, bad_options=[{"max_depth": 0}]))

Each ``check_*`` function takes a :class:`ConformanceCase` (or just a method name), runs the method on tiny random
models and raises :class:`ConformanceFailure` (an ``AssertionError``) with a message that says what differed.
The checks (see docs/plugins/testing.md):

* greedy_equivalence: greedy output == plain ``model.generate(do_sample=False)`` over several prompts and K values.
* k1: the same with K = 1 (and the proposer never returns more tokens than asked for).
* rollback: prompts where drafts are often rejected still match, and (for methods whose proposals depend only on
  the tokens so far) every proposal equals the one a freshly started proposer makes, so rollback lost nothing.
* empty_proposals: the loop drops every other proposal; the proposer must keep going from the tokens it is handed.
* max_new_tokens: stops at exactly ``max_new_tokens`` (1, 2, 3, K+1, 2K+3), never drafting past it.
* eos: stops at the first eos token, like plain generate.
* sampling_distribution: sampled output follows the target's distribution (exact enumeration, noise baseline).
* seeded_reproducibility: the same seed gives the same sampled output.
* bad_options: the method's options class rejects bad values with a message naming the option and the value.

Every run goes through a probe (:mod:`specdecode.testing.probe`) that checks each proposal against the contract.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from ..config import SpeculativeConfig
from ..errors import ConfigError
from ..generation import GenerateOutput, build_proposer, generate, select_hidden_states
from ..proposer import Proposal, ProposeRequest, StartContext
from ..registry import get_method
from .models import repetitive_prompts, testing_device, tiny_llama
from .probe import ProbeLog, probe
from .reference import exact_continuations, plain_greedy, target_probs


class ConformanceFailure(AssertionError):
    """A method failed a conformance check; the message names the method, the check and what differed."""


@attrs.frozen(kw_only=True)
class BadOptions:
    """Options that must be rejected. The error message must mention every key and value, and ``mentions``."""

    values: Mapping[str, Any] = attrs.field(converter=dict)
    mentions: tuple[str, ...] = attrs.field(default=(), converter=tuple)


def _bad_options(items: Iterable[Mapping[str, Any] | BadOptions]) -> tuple[BadOptions, ...]:
    return tuple(item if isinstance(item, BadOptions) else BadOptions(values=item) for item in items)


ConfigExtras = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


@attrs.frozen(kw_only=True)
class ConformanceCase:
    """A method and how to set it up on tiny models.

    * ``options``: its ``method_options``.
    * ``config``: other :class:`SpeculativeConfig` fields, or a function of the target model returning them
      (for a draft model that must share the target's vocabulary: ``lambda target: {"draft_model": ...}``).
    * ``model_factory(vocab_size=, seed=)``: builds the target; default :func:`tiny_llama`.
    * ``bad_options``: option dicts (or :class:`BadOptions`) the options class must reject.
    * ``history_only``: under greedy decoding the proposals depend only on the tokens so far (true for n-gram,
      suffix, draft-model methods); enables the replay comparison of the rollback check. Set False for methods
      that adapt to past acceptance.
    * ``vocab_size`` / ``sampling_vocab_size``: the targets' vocabularies for the greedy checks and for the
      sampling checks (small, so that distributions can be enumerated).
    """

    method: str
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    config: ConfigExtras = attrs.field(factory=dict)
    model_factory: Callable[..., Any] = tiny_llama
    bad_options: tuple[BadOptions, ...] = attrs.field(default=(), converter=_bad_options)
    history_only: bool = True
    label: str | None = None  # names the case in test ids when one method is checked in several set-ups
    # check name -> keyword arguments for that check, e.g. {"sampling_distribution": {"draws": 200}}
    check_options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict, converter=dict)
    vocab_size: int = 64
    sampling_vocab_size: int = 8
    seed: int = 0

    @property
    def id(self) -> str:
        return self.label or self.method

    def model(self, vocab_size: int | None = None) -> Any:
        return _cached_model(self.model_factory, vocab_size or self.vocab_size, self.seed)

    def speculative_config(self, model: Any, **changes: Any) -> SpeculativeConfig:
        extras = self.config(model) if callable(self.config) else self.config
        return SpeculativeConfig(
            **{"method": self.method, "method_options": self.options, **extras, **changes}
        )


def as_case(case: ConformanceCase | str) -> ConformanceCase:
    return ConformanceCase(method=case) if isinstance(case, str) else case


@functools.lru_cache(maxsize=16)
def _cached_model(factory: Callable[..., Any], vocab_size: int, seed: int) -> Any:
    return factory(vocab_size=vocab_size, seed=seed).to(testing_device())


@attrs.frozen
class CheckResult:
    name: str
    summary: str


# -- running a method through the probe -------------------------------------------------------------------


@attrs.define
class _Run:
    output: GenerateOutput
    log: ProbeLog

    @property
    def new_tokens(self) -> list[int]:
        return self.output.sequences[0, self.output.stats.prompt_tokens :].tolist()


def _speculate(
    model: Any,
    prompt: torch.Tensor,
    config: SpeculativeConfig,
    *,
    empty_every: int = 0,
    replay: bool = False,
    **generate_kwargs: Any,
) -> _Run:
    fresh = _fresh_proposals(model, config) if replay else None
    proposer = probe(
        build_proposer(model, config),
        vocab_size=model.config.vocab_size,
        empty_every=empty_every,
        replay=fresh,
    )
    output = generate(model, prompt, config, proposer=proposer, **generate_kwargs)
    return _Run(output=output, log=proposer.log)


def _fresh_proposals(model: Any, config: SpeculativeConfig) -> Callable[[ProposeRequest], Proposal]:
    """What a proposer started from scratch on the request's tokens proposes (the reference for rollback)."""

    def propose(request: ProposeRequest) -> Proposal:
        proposer = build_proposer(model, config)
        hidden = None
        if type(proposer).needs_hidden_states:
            with torch.inference_mode():
                out = model(input_ids=request.input_ids[:, :-1], output_hidden_states=True)
            hidden = select_hidden_states(out.hidden_states, getattr(proposer, "hidden_state_layers", None))
        proposer.start(
            StartContext(
                input_ids=request.input_ids,
                attention_mask=request.attention_mask,
                num_speculative_tokens=config.num_speculative_tokens,
                sampling=request.sampling,
                generator=None,
                hidden_states=hidden,
            )
        )
        try:
            return proposer.propose(request)
        finally:
            proposer.finish()

    return propose


def _fail(case: ConformanceCase, check: str, message: str) -> ConformanceFailure:
    return ConformanceFailure(f"method {case.method!r} failed {check}: {message}")


def _expect_equal(case: ConformanceCase, check: str, expected: torch.Tensor, run: _Run, what: str) -> None:
    got = run.output.sequences
    if torch.equal(expected, got):
        return
    want, have = expected[0].tolist(), got[0].tolist()
    at = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
    raise _fail(
        case,
        check,
        f"{what}: speculative output differs from plain model.generate at position {at} "
        f"(lengths {len(have)} vs {len(want)}): expected ...{want[max(0, at - 3) : at + 3]}, "
        f"got ...{have[max(0, at - 3) : at + 3]}",
    )


def _prompts(case: ConformanceCase, count: int, salt: int = 0) -> list[torch.Tensor]:
    return [p.to(testing_device()) for p in repetitive_prompts(case.vocab_size, count=count, seed=case.seed + salt)]


def _totals(runs: Sequence[_Run]) -> tuple[int, int, int]:
    """(drafted, accepted, steps with a rejected draft) over several runs."""
    drafted = sum(r.output.stats.drafted for r in runs)
    accepted = sum(r.output.stats.accepted for r in runs)
    stats = [r.output.stats for r in runs]
    rejected = sum(a < k for s in stats for k, a in zip(s.k_per_step, s.accepted_per_step))
    return drafted, accepted, rejected


# -- the checks ---------------------------------------------------------------------------------------------


def check_greedy_equivalence(
    case: ConformanceCase | str,
    *,
    k_values: Sequence[int] = (2, 5),
    num_prompts: int = 3,
    max_new_tokens: int = 20,
    check_name: str = "greedy_equivalence",
) -> CheckResult:
    """Greedy speculative output equals plain ``model.generate(do_sample=False)`` for every prompt and K."""
    case = as_case(case)
    model = case.model()
    runs = []
    for p, prompt in enumerate(_prompts(case, num_prompts)):
        expected = plain_greedy(model, prompt, max_new_tokens)
        for k in k_values:
            run = _speculate(
                model, prompt, case.speculative_config(model, num_speculative_tokens=k),
                max_new_tokens=max_new_tokens, do_sample=False,
            )  # fmt: skip
            _expect_equal(case, check_name, expected, run, f"prompt {p} ({prompt.shape[1]} tokens), K={k}")
            runs.append(run)
    drafted, accepted, _ = _totals(runs)
    if drafted == 0:
        raise _fail(
            case,
            check_name,
            f"the method proposed no draft token in {len(runs)} generations, so nothing was checked; give options "
            "or a model_factory under which it drafts",
        )
    return CheckResult(
        check_name, f"{len(runs)} generations equal plain generate; accepted {accepted}/{drafted}"
    )


def check_k1(case: ConformanceCase | str, *, num_prompts: int = 3, max_new_tokens: int = 20) -> CheckResult:
    """K = 1: one draft token per step at most, output still equal to plain greedy."""
    return check_greedy_equivalence(
        case, k_values=(1,), num_prompts=num_prompts, max_new_tokens=max_new_tokens, check_name="k1"
    )


def check_rollback(
    case: ConformanceCase | str, *, num_prompts: int = 3, k: int = 4, max_new_tokens: int = 24
) -> CheckResult:
    """Drafts are rejected (often, on random tiny models) and the output still matches; for history-only methods
    every proposal after a rejection equals a fresh proposer's, i.e. the proposer's state was rolled back."""
    case = as_case(case)
    model = case.model()
    config = case.speculative_config(model, num_speculative_tokens=k)
    runs = []
    for p, prompt in enumerate(_prompts(case, num_prompts, salt=1)):
        expected = plain_greedy(model, prompt, max_new_tokens)
        run = _speculate(
            model, prompt, config, replay=case.history_only, max_new_tokens=max_new_tokens, do_sample=False
        )
        _expect_equal(case, "rollback", expected, run, f"prompt {p}, K={k}")
        if run.log.replay_mismatches:
            raise _fail(
                case,
                "rollback",
                f"prompt {p}: after verification the proposer's state no longer matches its tokens: "
                + "; ".join(run.log.replay_mismatches[:3])
                + " (roll back to result.input_ids in on_verified; if proposals legitimately depend on more than "
                "the tokens so far, set ConformanceCase(history_only=False))",
            )
        runs.append(run)
    drafted, accepted, rejected = _totals(runs)
    if rejected == 0:
        raise _fail(
            case,
            "rollback",
            f"no draft was rejected in {len(runs)} generations ({accepted}/{drafted} accepted), so rollback was "
            "never exercised; configure the case so that drafts sometimes miss (another draft model seed, say)",
        )
    replayed = "proposals equal a fresh proposer's" if case.history_only else "replay comparison off"
    return CheckResult(
        "rollback", f"{rejected} steps with rejections, accepted {accepted}/{drafted}; {replayed}"
    )


def check_empty_proposals(
    case: ConformanceCase | str,
    *,
    empty_every: int = 2,
    num_prompts: int = 2,
    k: int = 3,
    max_new_tokens: int = 20,
) -> CheckResult:
    """Every ``empty_every``-th proposal is replaced by an empty one (a plain decode step); the proposer must carry
    on from the tokens it is handed and the output must still equal plain greedy."""
    case = as_case(case)
    model = case.model()
    config = case.speculative_config(model, num_speculative_tokens=k)
    emptied = 0
    for p, prompt in enumerate(_prompts(case, num_prompts, salt=2)):
        expected = plain_greedy(model, prompt, max_new_tokens)
        run = _speculate(
            model, prompt, config, empty_every=empty_every, replay=case.history_only,
            max_new_tokens=max_new_tokens, do_sample=False,
        )  # fmt: skip
        _expect_equal(
            case, "empty_proposals", expected, run, f"prompt {p}, every {empty_every}th proposal emptied"
        )
        if run.log.replay_mismatches:
            raise _fail(
                case,
                "empty_proposals",
                f"prompt {p}: after an empty step the proposer's state no longer matches its tokens: "
                + "; ".join(run.log.replay_mismatches[:3]),
            )
        emptied += run.log.emptied
    if emptied == 0:
        raise _fail(case, "empty_proposals", "no proposal was emptied (the generations were too short)")
    return CheckResult("empty_proposals", f"{emptied} proposals emptied; output equal to plain generate")


def check_max_new_tokens(
    case: ConformanceCase | str, *, k: int = 4, lengths: Sequence[int] | None = None
) -> CheckResult:
    """Generation stops at exactly ``max_new_tokens`` (including budgets smaller than K + 1)."""
    case = as_case(case)
    model = case.model()
    config = case.speculative_config(model, num_speculative_tokens=k)
    lengths = lengths or (1, 2, 3, k + 1, 2 * k + 3)
    prompt = _prompts(case, 1, salt=3)[0]
    for n in lengths:
        run = _speculate(model, prompt, config, max_new_tokens=n, do_sample=False)
        if len(run.new_tokens) != n:
            raise _fail(
                case, "max_new_tokens", f"max_new_tokens={n} (K={k}) produced {len(run.new_tokens)} tokens"
            )
        _expect_equal(
            case, "max_new_tokens", plain_greedy(model, prompt, n), run, f"max_new_tokens={n}, K={k}"
        )
    return CheckResult("max_new_tokens", f"exact lengths for max_new_tokens in {list(lengths)}")


def check_eos(
    case: ConformanceCase | str, *, k_values: Sequence[int] = (1, 4), max_new_tokens: int = 20
) -> CheckResult:
    """With an eos token that plain generation reaches mid-way, both stop right after its first occurrence."""
    case = as_case(case)
    model = case.model()
    checked = 0
    for p, prompt in enumerate(_prompts(case, 2, salt=4)):
        free = plain_greedy(model, prompt, max_new_tokens)[0, prompt.shape[1] :].tolist()
        first_seen = {t: i for i, t in reversed(list(enumerate(free)))}
        late = [t for t, i in first_seen.items() if i >= 2]
        if not late:
            continue  # the continuation repeats one token from the start; no eos to place mid-way
        eos = max(late, key=lambda t: first_seen[t])
        expected = plain_greedy(model, prompt, max_new_tokens, eos_token_id=eos)
        for k in k_values:
            config = case.speculative_config(model, num_speculative_tokens=k)
            run = _speculate(
                model, prompt, config, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos
            )
            _expect_equal(
                case, "eos", expected, run, f"prompt {p}, eos={eos} (new token {first_seen[eos]}), K={k}"
            )
            if run.new_tokens[-1] != eos:
                raise _fail(case, "eos", f"prompt {p}: output does not end with eos {eos}: {run.new_tokens}")
            checked += 1
    if checked == 0:
        raise _fail(case, "eos", "no prompt produced a continuation with a token first seen after position 2")
    return CheckResult("eos", f"{checked} generations stopped at eos like plain generate")


def check_bad_options(case: ConformanceCase | str) -> CheckResult:
    """The options in ``case.bad_options`` raise :class:`ConfigError` naming each option and value; an unknown
    option is rejected by name; ``case.options`` itself is accepted."""
    case = as_case(case)
    model = case.model()
    case.speculative_config(model)  # the case's own options must be valid
    unknown = {"no_such_option_for_conformance": 1}
    bad = (*case.bad_options, BadOptions(values=unknown))
    for item in bad:
        options = {**case.options, **item.values}
        message = _rejection_message(case, model, options)
        for key, value in item.values.items():
            if key not in message:
                raise _fail(
                    case, "bad_options", f"the error for {item.values} does not name {key!r}: {message!r}"
                )
            if key not in unknown and repr(value) not in message and str(value) not in message:
                raise _fail(
                    case, "bad_options", f"the error for {item.values} does not show the value: {message!r}"
                )
        missing = [m for m in item.mentions if m not in message]
        if missing:
            raise _fail(
                case, "bad_options", f"the error for {item.values} does not mention {missing}: {message!r}"
            )
    return CheckResult("bad_options", f"{len(bad)} bad option sets rejected with clear messages")


def _rejection_message(case: ConformanceCase, model: Any, options: Mapping[str, Any]) -> str:
    """The ConfigError message these options raise; a failure when they are accepted or raise something else."""
    try:
        attrs.evolve(case, options=options).speculative_config(model)
    except ConfigError as exc:
        return str(exc)
    except Exception as exc:  # anything else is not a clear configuration error
        raise _fail(
            case,
            "bad_options",
            f"method_options={options} raised {type(exc).__name__}: {exc}; raise specdecode.ConfigError (or "
            "ValueError/TypeError from the options class, which the core turns into one)",
        ) from exc
    raise _fail(case, "bad_options", f"method_options={options} was accepted; expected a ConfigError")


DEFAULT_SAMPLING: tuple[Mapping[str, Any], ...] = ({"temperature": 0.05, "top_k": 4}, {"temperature": 0.1})


def check_sampling_distribution(
    case: ConformanceCase | str,
    *,
    settings: Sequence[Mapping[str, Any]] = DEFAULT_SAMPLING,
    draws: int = 100,
    num_tokens: int = 3,
    long_runs: int = 3,
    long_tokens: int = 32,
    k: int = 3,
    null_replicates: int = 1000,
    z_limit: float = 4.5,
) -> CheckResult:
    """Sampled speculative output follows the target's distribution.

    1. First tokens (under the first of ``settings``): ``draws`` seeded generations of ``num_tokens`` tokens on a small vocabulary. The total
       variation (TV) between their empirical distribution (joint, and each position) and the target's exact
       distribution (enumerated with transformers' warpers) must stay within the noise of plain sampling: the
       99.9th percentile of the same TV for ``null_replicates`` samples of the same size drawn from the target.
    2. Long runs (under every one of ``settings``): over ``long_runs`` generations of ``long_tokens`` tokens, two statistics of every token given its
       history (is it the target's most likely token; its target probability) must sum to their expectation
       within ``z_limit`` standard deviations (a martingale z-test; catches bias deeper in the sequence).

    The default temperature is low because tiny random models are nearly uniform; a lossy method is easy to
    spot only when the target has preferences.
    """
    case = as_case(case)
    model = case.model(case.sampling_vocab_size)
    config = case.speculative_config(model, num_speculative_tokens=k)
    prompt = repetitive_prompts(case.sampling_vocab_size, count=1, seed=case.seed)[0].to(testing_device())
    lines = [_first_tokens_test(case, model, config, prompt, settings[0], draws, num_tokens, null_replicates)]
    for setting in settings:
        lines.append(_long_run_test(case, model, config, setting, long_runs, long_tokens, z_limit))
    return CheckResult("sampling_distribution", "; ".join(lines))


def _first_tokens_test(case, model, config, prompt, setting, draws, num_tokens, null_replicates) -> str:
    continuations, exact = exact_continuations(model, prompt, num_tokens, setting)
    vocab = model.config.vocab_size
    cell = {c: i for i, c in enumerate(continuations)}
    counts = torch.zeros(len(continuations), dtype=torch.float64)
    for seed in range(draws):
        run = _speculate(
            model, prompt, config, max_new_tokens=num_tokens, do_sample=True, seed=seed, **setting
        )
        if len(run.new_tokens) != num_tokens:  # an eos token stopped it
            raise _fail(
                case,
                "sampling_distribution",
                f"asked for {num_tokens} tokens, got {run.new_tokens}; use a model_factory whose models have no eos",
            )
        counts[cell[tuple(run.new_tokens)]] += 1

    def statistics(counts: torch.Tensor) -> torch.Tensor:  # [R, cells] -> [R, 1 + num_tokens] TVs
        empirical = counts / counts.sum(dim=-1, keepdim=True)
        shape = (-1,) + (vocab,) * num_tokens
        tvs = [_tv(empirical, exact)]
        for pos in range(num_tokens):
            others = tuple(d + 1 for d in range(num_tokens) if d != pos)
            tvs.append(
                _tv(
                    empirical.view(shape).sum(dim=others),
                    exact.view(shape[1:]).sum(dim=tuple(o - 1 for o in others)),
                )
            )
        return torch.stack(tvs, dim=-1)

    g = torch.Generator().manual_seed(1234)
    null_draws = torch.multinomial(exact.float(), draws * null_replicates, replacement=True, generator=g)
    null_draws = null_draws.view(null_replicates, draws)
    null_counts = torch.zeros(null_replicates, len(continuations), dtype=torch.float64)
    null_counts.scatter_add_(1, null_draws, torch.ones_like(null_draws, dtype=torch.float64))
    bounds = torch.quantile(statistics(null_counts), 0.999, dim=0)
    observed = statistics(counts.unsqueeze(0))[0]
    names = ["joint"] + [f"token {i + 1}" for i in range(num_tokens)]
    for name, tv, bound in zip(names, observed.tolist(), bounds.tolist()):
        if tv > bound:
            raise _fail(
                case,
                "sampling_distribution",
                f"{setting}: the distribution of the first {num_tokens} sampled tokens ({name}) is off: total "
                f"variation {tv:.3f} from the target's exact distribution, while plain sampling stays below "
                f"{bound:.3f} (99.9th percentile over {null_replicates} plain samples of {draws} draws). The "
                "reported draft_probs are probably not the distribution the drafts were sampled from.",
            )
    return f"{setting}: first-token TVs {[round(x, 3) for x in observed.tolist()]} <= {[round(x, 3) for x in bounds.tolist()]}"


def _tv(empirical: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return 0.5 * (empirical.flatten(1) - exact.flatten().unsqueeze(0)).abs().sum(dim=-1)


def _long_run_test(case, model, config, setting, runs, tokens, z_limit) -> str:
    # For each generated token x_t with target distribution p_t given its history:
    #   top:  1[x_t == argmax p_t]   has mean max(p_t)        and variance m(1 - m)
    #   prob: p_t(x_t)               has mean sum(p_t^2)      and variance sum(p_t^3) - (sum p_t^2)^2
    sums = {"top": [0.0, 0.0], "prob": [0.0, 0.0]}  # name -> [sum of (observed - mean), sum of variances]
    for r, prompt in enumerate(repetitive_prompts(case.sampling_vocab_size, count=runs, seed=case.seed + 5)):
        prompt = prompt.to(testing_device())
        run = _speculate(
            model, prompt, config, max_new_tokens=tokens, do_sample=True, seed=10_000 + r, **setting
        )
        sequence = run.output.sequences
        length = prompt.shape[1]
        p = target_probs(model, sequence[:, :-1], setting)[0, length - 1 :].double()  # [new, V]
        x = sequence[0, length:]
        top_mean = p.max(dim=-1).values
        sums["top"][0] += float(((p.argmax(dim=-1) == x).double() - top_mean).sum())
        sums["top"][1] += float((top_mean * (1 - top_mean)).sum())
        square, cube = (p**2).sum(dim=-1), (p**3).sum(dim=-1)
        sums["prob"][0] += float((p.gather(-1, x.unsqueeze(-1)).squeeze(-1) - square).sum())
        sums["prob"][1] += float((cube - square**2).sum())
    zs = {name: s / math.sqrt(v) if v > 0 else 0.0 for name, (s, v) in sums.items()}
    for name, z in zs.items():
        if abs(z) > z_limit:
            raise _fail(
                case,
                "sampling_distribution",
                f"{setting}: over {runs} generations of {tokens} tokens, statistic '{name}' is {z:+.1f} standard "
                f"deviations from its expectation under the target (limit {z_limit}); sampled tokens are biased "
                + ("towards" if z > 0 else "away from")
                + " the target's likely tokens",
            )
    return f"{setting}: long-run z {', '.join(f'{n}={z:+.2f}' for n, z in zs.items())}"


def check_seeded_reproducibility(
    case: ConformanceCase | str, *, max_new_tokens: int = 16, k: int = 3
) -> CheckResult:
    """The same seed gives the same sampled output (the proposer draws only from the generator it is handed)."""
    case = as_case(case)
    model = case.model(case.sampling_vocab_size)
    config = case.speculative_config(model, num_speculative_tokens=k)
    prompt = repetitive_prompts(case.sampling_vocab_size, count=1, seed=case.seed)[0].to(testing_device())
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.5, seed=7)
    runs = []
    for global_seed in (1, 2):  # a proposer drawing from the global RNG would see different numbers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            runs.append(_speculate(model, prompt, config, **kwargs).output.sequences)
    first, second = runs
    if not torch.equal(first, second):
        raise _fail(
            case,
            "seeded_reproducibility",
            f"two sampled runs with seed=7 differ: {first[0].tolist()} vs {second[0].tolist()}; draw random numbers "
            "only from request.generator / context.generator",
        )
    return CheckResult("seeded_reproducibility", "same seed, same output")


CHECKS: dict[str, Callable[..., CheckResult]] = {
    "greedy_equivalence": check_greedy_equivalence,
    "k1": check_k1,
    "rollback": check_rollback,
    "empty_proposals": check_empty_proposals,
    "max_new_tokens": check_max_new_tokens,
    "eos": check_eos,
    "sampling_distribution": check_sampling_distribution,
    "seeded_reproducibility": check_seeded_reproducibility,
    "bad_options": check_bad_options,
}


def run_check(case: ConformanceCase | str, name: str) -> CheckResult:
    """Run one check by name (see :data:`CHECKS`)."""
    if name not in CHECKS:
        raise ValueError(f"unknown conformance check {name!r}; choose one of: {', '.join(CHECKS)}")
    case = as_case(case)
    return CHECKS[name](case, **case.check_options.get(name, {}))


def run_conformance(
    case: ConformanceCase | str, *, skip: Iterable[str] = (), **case_fields: Any
) -> list[CheckResult]:
    """Run every check; raise one :class:`ConformanceFailure` listing all that failed.

    ``run_conformance("mymethod", options={...}, bad_options=[{...}])`` builds the case from keywords.
    """
    if isinstance(case, str):
        case = ConformanceCase(method=case, **case_fields)
    elif case_fields:
        case = attrs.evolve(case, **case_fields)
    skip = set(skip)
    unknown = skip - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown conformance checks in skip: {sorted(unknown)}; choose from {', '.join(CHECKS)}"
        )
    get_method(case.method)  # an unknown method fails here, listing the installed ones
    results, failures = [], []
    for name, check in CHECKS.items():
        if name in skip:
            continue
        try:
            results.append(check(case, **case.check_options.get(name, {})))
        except AssertionError as exc:
            failures.append(f"- {name}: {exc}")
    if failures:
        raise ConformanceFailure(
            f"method {case.method!r} failed {len(failures)} conformance checks:\n" + "\n".join(failures)
        )
    return results
