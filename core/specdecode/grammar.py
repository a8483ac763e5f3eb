"""Structured output (JSON schema, regex, EBNF grammar) for speculative decoding, built on xgrammar.

The contract: with a constraint, speculative decoding emits what plain ``model.generate(...,
logits_processor=[constraint.hf_logits_processor()])`` (xgrammar's own ``xgrammar.contrib.hf.LogitsProcessor``)
emits. On every step that processor accepts the token sampled last into its matcher, fills the matcher's token
bitmask and sets every disallowed logit to ``-inf`` (allowed logits untouched, bit for bit). transformers runs it on
the float32 copy of the last position's logits, after its own processors (repetition penalty, ...) and *before* the
sampling warpers (temperature, top-k, top-p, ...). This module does the same at every verify position::

    constraint = compile_constraint(tokenizer, vocab_size=model_vocab_size(model), json_schema=schema)
    state = constraint.new_state()                   # one per sequence (batch row)
    # prefill: mask the last position, pick, commit
    last = pick(state.process(logits[:, -1]));  state.advance([last])
    # each step
    n = state.valid_prefix(drafts)                   # drafts the grammar accepts
    bitmask = state.bitmasks(drafts[:n])             # [n+1, W] int32: after [], [d_1], .., [d_1..d_n]
    logits = target([last, d_1..d_n])                # [n+1, V]
    apply_bitmask(logits, bitmask)                   # in place, like xgrammar's processor; then warp / accept
    state.advance(accepted_drafts + [next_token])    # commit; nothing else changes the state

``valid_prefix`` / ``bitmasks`` / ``masks`` / ``process`` leave the state as they found it (the matcher is rolled
back). :func:`verify_bitmasks` does a batch (one state per row).

Drafts the grammar refuses: with greedy verification or deterministic drafts (no ``draft_probs``) cut them before the
forward pass. With ``draft_probs`` (rejection sampling against a sampled q) keep the *first* refused draft: its
masked target probability is 0, so it is rejected and the next token comes from ``max(p - q, 0)`` as losslessness
requires; cutting it would draw from ``p`` instead, which biases the output.

xgrammar is an optional dependency (``pip install 'specdecode[grammar]'``). On CPU it works without triton (triton
only serves CUDA's masking kernel; this module masks with torch on accelerators): ``pip install --no-deps xgrammar
apache-tvm-ffi`` next to torch, transformers, pydantic and numpy is enough.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from .errors import ConfigError, SpecDecodeError, invalid

INSTALL_HINT = "pip install 'specdecode[grammar]'"
KINDS = ("json_schema", "regex", "grammar")
_CACHE_SIZE = 64  # compiled constraints kept per (tokenizer, vocab_size, stop tokens)


class GrammarViolation(SpecDecodeError):
    """A token committed with :meth:`GrammarState.advance` is not allowed by the grammar (a loop bug: committed tokens
    come from masked logits, so they are always allowed)."""


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise ConfigError(
            f"structured output (json_schema / regex / grammar) needs xgrammar: {INSTALL_HINT} "
            f"(import failed: {error})",
            field="xgrammar",
        ) from error
    return xgrammar


def _clean_error(error: BaseException) -> str:
    """xgrammar's C++ message without its ``[hh:mm:ss] /project/cpp/file.cc:123:`` prefix and check boilerplate."""
    text = str(error).strip()
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)
    text = re.sub(r"^Check failed: \(.*?\) is false:\s*", "", text)
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------------------------
# Compilation


@attrs.frozen(kw_only=True, eq=False)
class CompiledConstraint:
    """A constraint compiled for one tokenizer and one logits width. Cheap to share; make one state per sequence."""

    kind: str  # "json_schema", "regex" or "grammar"
    source: str  # the schema (JSON text), the regex or the EBNF grammar
    vocab_size: int  # the logits width the bitmask covers (the model's vocab_size, not the tokenizer's)
    stop_token_ids: tuple[int, ...]  # the tokens that end the grammar (allowed once it is complete)
    compiled: Any  # xgrammar.CompiledGrammar

    @property
    def bitmask_width(self) -> int:
        """int32 words per bitmask row: ceil(vocab_size / 32)."""
        return math.ceil(self.vocab_size / 32)

    def new_state(self) -> GrammarState:
        """A fresh matcher state at the start of the output (one per sequence)."""
        return GrammarState(self)

    def hf_logits_processor(self) -> Any:
        """xgrammar's own transformers processor for this constraint (single use: one per ``generate`` call).

        ``model.generate(ids, logits_processor=[c.hf_logits_processor()])`` is the reference output."""
        return _xgrammar().contrib.hf.LogitsProcessor(self.compiled)


@attrs.define(eq=False)
class _Compiler:
    compiler: Any  # xgrammar.GrammarCompiler
    stop_token_ids: tuple[int, ...]
    compiled: OrderedDict = attrs.field(factory=OrderedDict)  # (kind, source) -> CompiledConstraint


_lock = threading.Lock()
# tokenizer -> {(vocab_size, stop_token_ids): _Compiler}; weak so a dropped tokenizer frees its vocabulary tables.
_compilers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiler(tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...] | None) -> _Compiler:
    xgr = _xgrammar()
    key = (vocab_size, stop_token_ids)
    with _lock:
        try:
            per_tokenizer = _compilers.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: build uncached
            per_tokenizer = {}
        entry = per_tokenizer.get(key)
        if entry is None:
            try:
                info = xgr.TokenizerInfo.from_huggingface(
                    tokenizer,
                    vocab_size=vocab_size,
                    stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
                )
            except Exception as error:  # unsupported tokenizer type, no vocabulary, ...
                raise invalid(
                    "tokenizer",
                    type(tokenizer).__name__,
                    f"a Hugging Face tokenizer xgrammar supports ({error})",
                ) from error
            threads = max(1, min(8, os.cpu_count() or 1))
            entry = _Compiler(xgr.GrammarCompiler(info, max_threads=threads), tuple(info.stop_token_ids))
            per_tokenizer[key] = entry
        return entry


def _schema_text(json_schema: Any) -> str:
    if isinstance(json_schema, str):
        try:
            parsed = json.loads(json_schema)
        except ValueError as error:
            raise invalid(
                "json_schema", json_schema, f"a JSON schema (dict or JSON text); not JSON: {error}"
            ) from error
        if not isinstance(parsed, (dict, bool)):
            raise invalid("json_schema", json_schema, "a JSON schema: a JSON object (or true/false)")
        return json_schema
    if isinstance(json_schema, (dict, bool)):
        try:
            return json.dumps(json_schema)  # key order kept: it is the order properties are generated in
        except (TypeError, ValueError) as error:
            raise invalid("json_schema", json_schema, f"a JSON-serializable schema ({error})") from error
    if isinstance(json_schema, type) and hasattr(json_schema, "model_json_schema"):  # a pydantic model class
        return json.dumps(json_schema.model_json_schema())
    raise invalid(
        "json_schema", json_schema, "a JSON schema: a dict, a JSON string or a pydantic model class"
    )


def compile_constraint(
    tokenizer: Any,
    *,
    vocab_size: int,
    json_schema: Any = None,
    regex: str | None = None,
    grammar: str | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> CompiledConstraint:
    """Compile exactly one of ``json_schema`` (dict, JSON text or pydantic model class), ``regex`` or ``grammar``
    (EBNF, root rule ``root``) for ``tokenizer``.

    ``vocab_size`` is the width of the model's logits (``model.get_output_embeddings().out_features``, usually
    ``config.vocab_size``), which may exceed the tokenizer's vocabulary; ids beyond the tokenizer are always masked.
    ``stop_token_ids`` default to xgrammar's default, ``[tokenizer.eos_token_id]``: once the grammar is complete only
    they are allowed, so they should be among the loop's eos ids. JSON schemas use xgrammar's defaults (any
    whitespace, strict mode: no properties beyond the schema's).

    Compilations are cached per tokenizer, vocab size and stop tokens; the same arguments return the same object.
    """
    given = {name: value for name, value in zip(KINDS, (json_schema, regex, grammar)) if value is not None}
    if len(given) != 1:
        raise invalid("constraint", sorted(given), "exactly one of json_schema=, regex=, grammar=")
    ((kind, value),) = given.items()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise invalid("vocab_size", vocab_size, "a positive int: the width of the model's logits")
    if stop_token_ids is not None:
        stop_token_ids = tuple(int(t) for t in stop_token_ids)
        if not stop_token_ids or any(t < 0 or t >= vocab_size for t in stop_token_ids):
            raise invalid(
                "stop_token_ids", stop_token_ids, f"a non-empty list of token ids below {vocab_size}"
            )

    if kind == "json_schema":
        source = _schema_text(value)
    elif not isinstance(value, str) or not value:
        raise invalid(kind, value, "a non-empty string")
    else:
        source = value

    entry = _compiler(tokenizer, vocab_size, stop_token_ids)
    key = (kind, source)
    with _lock:
        cached = entry.compiled.get(key)
        if cached is not None:
            entry.compiled.move_to_end(key)
            return cached
    try:
        if kind == "json_schema":
            compiled = entry.compiler.compile_json_schema(source)
        elif kind == "regex":
            compiled = entry.compiler.compile_regex(source)
        else:
            compiled = entry.compiler.compile_grammar(source)
    except Exception as error:  # xgrammar raises RuntimeError (InvalidJSONError is one) with its C++ message
        what = {
            "json_schema": "a JSON schema xgrammar supports",
            "regex": "a valid regex",
            "grammar": "a valid EBNF grammar with a 'root' rule",
        }[kind]
        raise invalid(kind, value, f"{what} ({_clean_error(error)})") from error
    result = CompiledConstraint(
        kind=kind,
        source=source,
        vocab_size=vocab_size,
        stop_token_ids=entry.stop_token_ids,
        compiled=compiled,
    )
    with _lock:
        result = entry.compiled.setdefault(key, result)
        while len(entry.compiled) > _CACHE_SIZE:
            entry.compiled.popitem(last=False)
    return result


def model_vocab_size(model: Any) -> int:
    """The width of ``model``'s logits: its output embedding's rows, else ``config.vocab_size``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


# ---------------------------------------------------------------------------------------------------------------
# Masks


_warned_width = False
_CPU_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unpack_bitmask(
    bitmask: torch.Tensor, vocab_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[..., W]`` int32 bitmask (bit j of word i = token 32*i + j allowed) -> ``[..., vocab_size]`` bool, on
    ``device`` (the bitmask's by default). The unpacking runs on ``device``: only the packed words travel."""
    if device is not None and bitmask.device != torch.device(device):
        bitmask = bitmask.to(device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [..., W, 32]
    return bits.reshape(*bitmask.shape[:-1], bitmask.shape[-1] * 32)[..., :vocab_size].bool()


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Set ``scores[..., t] = -inf`` wherever ``bitmask`` disallows token t, in place; returns ``scores``.

    Exactly what ``xgrammar.apply_token_bitmask_inplace`` (the HF processor's call) does, on any device and any rank:
    the first ``min(scores.shape[-1], 32 * W)`` columns are masked (as xgrammar, columns beyond the bitmask are left
    alone, with a warning), allowed scores are untouched. ``bitmask`` ``[..., W]`` broadcasts against ``scores``'
    leading dimensions (e.g. ``[k+1, W]`` for ``[k+1, V]`` or ``[R, k+1, W]`` for ``[R, k+1, V]``).
    """
    global _warned_width
    while bitmask.dim() > max(scores.dim(), 1) and bitmask.shape[0] == 1:  # [1, W] for a [V] row
        bitmask = bitmask[0]
    width = min(scores.shape[-1], bitmask.shape[-1] * 32)
    if width < scores.shape[-1] and not _warned_width:
        _warned_width = True
        warnings.warn(
            f"the grammar bitmask covers {bitmask.shape[-1] * 32} tokens but the logits have {scores.shape[-1]}; "
            "compile the constraint with vocab_size = the logits' width",
            stacklevel=2,
        )
    if scores.device.type == "cpu" and scores.dtype in _CPU_KERNEL_DTYPES and scores.stride(-1) == 1:
        # xgrammar's own CPU kernel (the call its HF processor makes on CPU); it takes 2-D [rows, V] with row strides.
        lead = scores.shape[:-1]
        try:
            flat = (
                scores.view(-1, scores.shape[-1]) if scores.dim() != 2 else scores
            )  # in place: must be a view
        except RuntimeError:
            flat = None
        if flat is not None and scores.numel() > 0:
            packed = torch.broadcast_to(bitmask.to("cpu"), (*lead, bitmask.shape[-1]))
            packed = packed.reshape(flat.shape[0], bitmask.shape[-1]).contiguous()
            _xgrammar().apply_token_bitmask_inplace(flat, packed, vocab_size=width, backend="cpu")
            return scores
    allowed = unpack_bitmask(bitmask, width, scores.device)
    if width == scores.shape[-1]:
        scores.masked_fill_(~allowed, float("-inf"))
    else:
        scores[..., :width].masked_fill_(~allowed, float("-inf"))
    return scores


def _new_bitmask(rows: int, width: int, pin: bool = False) -> torch.Tensor:
    return torch.empty((rows, width), dtype=torch.int32, pin_memory=pin)


def _token_list(tokens: Any) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        return tokens.reshape(
            -1
        ).tolist()  # a host sync when on an accelerator: pass host lists when you have them
    return [int(t) for t in tokens]


class GrammarState:
    """The grammar state of one sequence: an xgrammar matcher over the tokens committed so far.

    Only :meth:`advance` (and :meth:`rollback` / :meth:`reset`) change the state; :meth:`valid_prefix`,
    :meth:`bitmasks`, :meth:`masks` and :meth:`process` try drafts speculatively and roll the matcher back.
    """

    def __init__(self, constraint: CompiledConstraint):
        self.constraint = constraint
        self._matcher = _xgrammar().GrammarMatcher(constraint.compiled)
        self.num_tokens = 0  # tokens committed (accepted by advance)
        self._stop_token = -1  # the committed stop token, once terminated

    # -- queries ---------------------------------------------------------------------------------------------
    @property
    def is_terminated(self) -> bool:
        """A stop token was committed: the grammar is finished (the loop should have stopped at that eos)."""
        return self._matcher.is_terminated()

    @property
    def is_completed(self) -> bool:
        """The committed text is a complete match (a stop token is now allowed); not necessarily terminated."""
        return self._matcher.is_completed()

    def valid_prefix(self, draft_tokens: Any) -> int:
        """How many leading ``draft_tokens`` the grammar accepts from the current state (a stop token counts and ends
        the run: nothing is accepted after it). The state is unchanged."""
        matcher, n = self._matcher, 0
        for token in _token_list(draft_tokens):
            if not matcher.accept_token(
                token
            ):  # also False once terminated; a rejected token changes nothing
                break
            n += 1
        if n:
            matcher.rollback(n)
        return n

    def bitmasks(self, draft_tokens: Any = (), *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The verify positions' bitmasks: ``[n+1, W]`` int32 on the CPU, row j the mask after the current state plus
        ``draft_tokens[:j]``, where n = :meth:`valid_prefix` (it stops at the first draft the grammar rejects, so
        ``bitmasks(drafts)`` and ``bitmasks(drafts[:n])`` agree). A row after a terminating stop token repeats the
        row before it (what xgrammar's processor reuses once its matcher terminated). The state is unchanged.

        ``out``: an int32 ``[>= n+1, W]`` CPU tensor to fill (e.g. a row slice of a batch buffer, or pinned memory
        for an asynchronous copy to the GPU); the filled ``out[:n+1]`` is returned.
        """
        tokens = _token_list(draft_tokens)
        width = self.constraint.bitmask_width
        if out is None:
            out = _new_bitmask(len(tokens) + 1, width)
        self._fill_current(out, 0)
        matcher, n = self._matcher, 0
        for token in tokens:
            if not matcher.accept_token(token):
                break
            n += 1
            if matcher.is_terminated():
                out[n].copy_(out[n - 1])
                break  # nothing is accepted after a stop token
            matcher.fill_next_token_bitmask(out, n)
        if n:
            matcher.rollback(n)
        return out[: n + 1]

    def tree_masks(
        self, draft_tokens: Any, parents: Sequence[int], *, device: torch.device | str | None = None
    ) -> tuple[list[bool], torch.Tensor]:
        """For a tree of drafts (``parents`` as in ``Proposal.parents``: -1 = a child of the last token, parents
        first): which nodes the grammar accepts along their path (a refused node drops its whole subtree), and the
        masks ``[k+1, vocab_size]`` bool: row 0 at the current state, row i+1 after node i's path (all True for a
        dropped node; never read). The state is unchanged."""
        tokens = _token_list(draft_tokens)
        out = torch.full((len(tokens) + 1, self.constraint.bitmask_width), -1, dtype=torch.int32)
        self._fill_current(out, 0)
        keep = [False] * len(tokens)
        children: dict[int, list[int]] = {}
        for i, p in enumerate(parents):
            children.setdefault(int(p), []).append(i)
        matcher = self._matcher

        def visit(node: int) -> None:  # the matcher stands at the end of node's path
            for child in children.get(node, []):
                if not matcher.accept_token(tokens[child]):
                    continue
                keep[child] = True
                if matcher.is_terminated():
                    out[child + 1].copy_(out[node + 1])  # as xgrammar's processor: it keeps the last mask
                else:
                    matcher.fill_next_token_bitmask(out, child + 1)
                visit(child)
                matcher.rollback(1)

        visit(-1)
        return keep, unpack_bitmask(out, self.constraint.vocab_size, device)

    def masks(self, draft_tokens: Any = (), *, device: torch.device | str | None = None) -> torch.Tensor:
        """:meth:`bitmasks` unpacked: ``[n+1, vocab_size]`` bool (True = allowed) on ``device``."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda":  # pinned, so the copy of the packed words does not block the host
            tokens = _token_list(draft_tokens)
            packed = self.bitmasks(
                tokens, out=_new_bitmask(len(tokens) + 1, self.constraint.bitmask_width, True)
            )
        else:
            packed = self.bitmasks(draft_tokens)
        return unpack_bitmask(packed, self.constraint.vocab_size, dev)

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        """Mask ``scores`` ``[..., V]`` for the next token at the current state, in place, as xgrammar's HF processor
        does (every leading row gets the same mask); returns ``scores``. Apply before temperature / top-k / top-p."""
        return apply_bitmask(scores, self.bitmasks())

    # -- state changes ---------------------------------------------------------------------------------------
    def advance(self, tokens: Any) -> int:
        """Commit ``tokens`` (the accepted drafts plus the next token). Tokens after a stop token are ignored, as
        xgrammar's HF processor ignores a finished row's padding. Returns how many were committed. Raises
        :class:`GrammarViolation` (state unchanged) if the grammar rejects one."""
        matcher, n = self._matcher, 0
        for i, token in enumerate(_token_list(tokens)):
            if matcher.is_terminated():
                break
            if not matcher.accept_token(token):
                if n:
                    matcher.rollback(n)
                raise GrammarViolation(
                    f"token {token} (position {i} of {_token_list(tokens)}) is not allowed by the {self.constraint.kind} "
                    f"constraint after {self.num_tokens} committed tokens; committed tokens must come from masked logits"
                )
            n += 1
            if matcher.is_terminated():
                self._stop_token = token
        self.num_tokens += n
        return n

    def rollback(self, num_tokens: int) -> None:
        """Uncommit the last ``num_tokens`` committed tokens."""
        if not 0 <= num_tokens <= self.num_tokens:
            raise invalid("num_tokens", num_tokens, f"between 0 and the {self.num_tokens} committed tokens")
        if num_tokens:
            self._matcher.rollback(num_tokens)
            self.num_tokens -= num_tokens

    def reset(self) -> None:
        """Back to the start of the output."""
        self._matcher.reset()
        self.num_tokens = 0
        self._stop_token = -1

    def _fill_current(self, out: torch.Tensor, row: int) -> None:
        matcher = self._matcher
        if not matcher.is_terminated():
            matcher.fill_next_token_bitmask(out, row)
            return
        # Terminated: xgrammar's processor keeps the last mask it filled, the one before the stop token.
        matcher.rollback(1)
        matcher.fill_next_token_bitmask(out, row)
        matcher.accept_token(self._stop_token)


def verify_bitmasks(
    states: Sequence[GrammarState | None], draft_tokens: Any, lengths: Sequence[int] | None = None
) -> tuple[list[int], torch.Tensor]:
    """Bitmasks for one batched verify pass: ``states[i]`` is running row i's state (``None``: an unconstrained row),
    ``draft_tokens`` its drafts ``[R, k]`` (a host tensor or lists), ``lengths`` the real drafts per row (entries past
    them are padding and never read).

    -> (``counts``: per row, how many leading drafts the grammar accepts (:meth:`GrammarState.valid_prefix`; an
    unconstrained row keeps its length), ``bitmask`` ``[R, k+1, W]`` int32 on the CPU: row i, position j = the mask
    after row i's state plus its drafts[:j], for j <= counts[i]; later positions and unconstrained rows are all ones
    (nothing masked)). Apply it with :func:`apply_bitmask` to the ``[R, k+1, V]`` verify logits, before warping and
    acceptance. The states are unchanged.
    """
    rows = _token_rows(draft_tokens, len(states))
    if lengths is not None:
        rows = [row[: int(n)] for row, n in zip(rows, lengths, strict=True)]
    k = max((len(r) for r in rows), default=0)
    width = next((s.constraint.bitmask_width for s in states if s is not None), 1)
    out = torch.full((len(states), k + 1, width), -1, dtype=torch.int32)
    counts = []
    for i, (state, row) in enumerate(zip(states, rows)):
        if state is None:
            counts.append(len(row))
            continue
        counts.append(state.bitmasks(row, out=out[i]).shape[0] - 1)
    return counts, out


def _token_rows(draft_tokens: Any, batch: int) -> list[list[int]]:
    if isinstance(draft_tokens, torch.Tensor):
        rows = (
            draft_tokens.reshape(batch, -1).tolist() if draft_tokens.numel() else [[] for _ in range(batch)]
        )
    else:
        rows = [_token_list(r) for r in draft_tokens]
    if len(rows) != batch:
        raise invalid("draft_tokens", f"{len(rows)} rows", f"one row per state ({batch})")
    return rows
