"""specdecode.grammar: xgrammar constraints at the verify positions of speculative decoding.

The reference is plain ``model.generate(..., logits_processor=[xgrammar.contrib.hf.LogitsProcessor(compiled)])``.
Offline tests use a tiny character-level tokenizer and a tiny random Llama; ``real_model`` tests use SmolLM2-135M's
tokenizer and weights from the local cache.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from specdecode.errors import ConfigError
from specdecode.grammar import (
    GrammarViolation,
    apply_bitmask,
    compile_constraint,
    model_vocab_size,
    unpack_bitmask,
    verify_bitmasks,
)
from specdecode.kernels import few_rows_linear
from specdecode.sampling import greedy_accept

try:
    import xgrammar as xgr
except ImportError:  # the optional extra is missing: only the test of that error runs
    xgr = None

TINY_VOCAB = 64


def person_schema(max_name: int, max_age: int) -> dict:
    """A JSON schema of {"name": str, "age": int} with these bounds."""
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": max_name},
            "age": {"type": "integer", "minimum": 0, "maximum": max_age},
        },
        "required": ["name", "age"],
    }


PERSON = person_schema(max_name=8, max_age=120)
TINY_REGEX = r'\{"name":"[a-z]{1,5}","age":[1-9][0-9]?\}'


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _needs_xgrammar(request):
    if (
        xgr is None
        and request.node.originalname != "test_missing_xgrammar_is_a_config_error_naming_the_extra"
    ):
        pytest.skip("xgrammar is not installed: pip install 'specdecode[grammar]'")


def _tiny_vocab() -> list[str]:
    chars = list('{}":,') + [str(d) for d in range(10)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    multi = ['"name"', '"age"', '":', '{"', '",', '","', '":"', "ab", "abc", "na", "me"]
    vocab = ["</s>", *chars, *multi]
    return vocab + [f"<unused{i}>" for i in range(TINY_VOCAB - len(vocab))]


@pytest.fixture(scope="module")
def tiny_tok():
    """A character-level tokenizer (plus a few merged pieces): every id decodes to a fixed string; eos = 0. No
    whitespace, so JSON from a random model cannot stall in whitespace (xgrammar allows any whitespace by default)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = _tiny_vocab()
    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="</s>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    tok.test_vocab = vocab
    return tok


@pytest.fixture(scope="module")
def smol():
    from specdecode.models import load_model

    model, tok = load_model("smollm2-135m")
    return model, tok


def tiny_text(tok, ids) -> str:
    return "".join(tok.test_vocab[i] for i in ids if i != tok.eos_token_id)


def fresh_bitmask_after(constraint, tokens) -> torch.Tensor:
    """The bitmask a brand-new xgrammar matcher fills after accepting ``tokens`` one by one."""
    matcher = xgr.GrammarMatcher(constraint.compiled)
    for t in tokens:
        assert matcher.accept_token(t)
    bitmask = xgr.allocate_token_bitmask(1, constraint.vocab_size)
    matcher.fill_next_token_bitmask(bitmask, 0)
    return bitmask[0]


def first_rejected(constraint, committed, drafts) -> int:
    matcher = xgr.GrammarMatcher(constraint.compiled)
    for t in committed:
        assert matcher.accept_token(t)
    for i, t in enumerate(drafts):
        if not matcher.accept_token(t):
            return i
    return len(drafts)


# ---------------------------------------------------------------------------------------------------------------
# Decoding loops written out here (the reference one token at a time, and a speculative one)


def greedy_one_by_one(model, prompt: torch.Tensor, constraint, max_new: int, eos: int) -> list[int]:
    """Plain greedy with a KV cache, masking each step's float32 logits with GrammarState.process."""
    state, out, cache, ids = constraint.new_state(), [], None, prompt
    with torch.inference_mode():
        for _ in range(max_new):
            result = model(input_ids=ids, cache=cache, use_cache=True)
            cache = result.cache
            scores = result.logits[:, -1].to(dtype=torch.float32, copy=True)
            token = int(state.process(scores).argmax(-1))
            state.advance([token])
            out.append(token)
            if token == eos:
                break
            ids = torch.tensor([[token]])
    return out


def speculative_greedy(
    model, prompt: torch.Tensor, constraint, max_new: int, eos: int, propose
) -> tuple[list, dict]:
    """A minimal greedy speculative loop with a KV cache, shaped like specdecode's (loop.py): cut the drafts where the grammar
    rejects them, score [last, d_1..d_n] in one forward pass, mask each position, accept, advance the grammar by the
    accepted drafts plus the next token, crop the cache to what was kept."""
    state, seen = constraint.new_state(), {"cut": 0, "drafted": 0, "accepted": 0}
    with torch.inference_mode(), few_rows_linear():  # the verify loop's CPU kernels for few-row forwards
        result = model(input_ids=prompt, use_cache=True)
        cache = result.cache
        last = int(state.process(result.logits[:, -1].float()).argmax(-1))
        state.advance([last])
        out = [last]
        while len(out) < max_new and last != eos:
            drafts = propose(out)[: max(max_new - len(out) - 1, 0)]
            n = state.valid_prefix(drafts)
            seen["cut"] += len(drafts) - n
            drafts = drafts[:n]
            bitmask = state.bitmasks(drafts)  # [n+1, W]: after `last`, after last + d_1, ...
            assert bitmask.shape[0] == n + 1
            logits = model(
                input_ids=torch.tensor([[last, *drafts]]), cache=cache, use_cache=True
            ).logits.float()
            apply_bitmask(logits, bitmask.unsqueeze(0))  # [1, n+1, V] with [1, n+1, W]
            accepted, nxt = greedy_accept(logits, torch.tensor([drafts], dtype=torch.long).reshape(1, n))
            accepted, last = int(accepted), int(nxt)
            new = drafts[:accepted] + [last]
            seen["drafted"] += n
            seen["accepted"] += accepted
            state.advance(new)
            out.extend(new)
            if n > accepted:  # the cache holds [.., last, d_1..d_n]: drop the rejected drafts
                cache.crop(-(n - accepted))
            if eos in new:
                out = out[: out.index(eos) + 1]
                break
    assert state.is_terminated == (out[-1] == eos)
    return out[:max_new], seen


def hf_generate(model, prompt, constraint, max_new, eos) -> list[int]:
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=max_new,
        eos_token_id=eos,
        pad_token_id=eos,
        logits_processor=[constraint.hf_logits_processor()],
    )
    return out[0, prompt.shape[1] :].tolist()


def corrupting_proposer(reference: list[int], bad_token: int, k: int = 4):
    """Drafts the reference continuation, with every other step's third draft replaced by ``bad_token`` and every
    third step's second draft shifted by one (a wrong but maybe grammatical token)."""
    step = {"i": 0}

    def propose(out: list[int]) -> list[int]:
        step["i"] += 1
        drafts = list(reference[len(out) : len(out) + k])
        if step["i"] % 2 == 0 and len(drafts) > 2:
            drafts[2] = bad_token
        if step["i"] % 3 == 0 and len(drafts) > 1:
            drafts[1] = (drafts[1] + 1) % 1000
        return drafts

    return propose


# ---------------------------------------------------------------------------------------------------------------
# Configuration errors


def test_missing_xgrammar_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'specdecode\[grammar\]'"):
        compile_constraint(object(), vocab_size=64, regex="a+")


def test_exactly_one_constraint(tiny_tok):
    with pytest.raises(ConfigError, match="exactly one of json_schema=, regex=, grammar=") as none:
        compile_constraint(tiny_tok, vocab_size=TINY_VOCAB)
    assert none.value.field == "constraint" and none.value.value == []
    with pytest.raises(ConfigError, match="exactly one") as two:
        compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, json_schema=PERSON, regex="a+")
    assert two.value.value == ["json_schema", "regex"]


@pytest.mark.parametrize(
    ("kwargs", "field", "detail"),
    [
        ({"json_schema": "{not json"}, "json_schema", "not JSON"),
        ({"json_schema": "[1, 2]"}, "json_schema", "JSON object"),
        ({"json_schema": {"type": "nonsense"}}, "json_schema", "Unsupported type"),
        ({"json_schema": 42}, "json_schema", "a dict, a JSON string"),
        ({"regex": "[a-"}, "regex", "Unclosed"),
        ({"regex": ""}, "regex", "non-empty"),
        ({"grammar": "root ::= foo"}, "grammar", "not defined"),
        ({"grammar": 'start ::= "a"'}, "grammar", "root"),
    ],
)
def test_bad_constraints_name_field_value_and_reason(tiny_tok, kwargs, field, detail):
    with pytest.raises(ConfigError) as error:
        compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, **kwargs)
    assert error.value.field == field
    assert error.value.value == next(iter(kwargs.values()))
    assert f"'{field}' must be" in str(error.value) and detail in str(error.value)
    assert "/project/cpp" not in str(error.value)


@pytest.mark.parametrize("vocab_size", [0, -3, 2.5, True, None])
def test_bad_vocab_size(tiny_tok, vocab_size):
    with pytest.raises(ConfigError, match="'vocab_size' must be a positive int"):
        compile_constraint(tiny_tok, vocab_size=vocab_size, regex="a+")


def test_compilations_are_cached(tiny_tok):
    a = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, json_schema=PERSON)
    assert compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, json_schema=json.dumps(PERSON)) is a
    assert compile_constraint(tiny_tok, vocab_size=TINY_VOCAB + 32, json_schema=PERSON) is not a
    b = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, regex=TINY_REGEX)
    assert b.kind == "regex" and b.source == TINY_REGEX and b is not a
    assert a.stop_token_ids == (tiny_tok.eos_token_id,) and a.bitmask_width == 2


# ---------------------------------------------------------------------------------------------------------------
# Masks, prefixes, state (tiny tokenizer: no files)


def _ids(tok, pieces: list[str]) -> list[int]:
    return [tok.test_vocab.index(p) for p in pieces]


def test_valid_prefix_cuts_where_the_grammar_rejects(tiny_tok):
    c = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, regex=TINY_REGEX)
    state = c.new_state()
    good = _ids(tiny_tok, ['{"', "na", "me", '":"', "abc", '",', '"age"', ":", "4", "2", "}"])
    assert state.valid_prefix(good) == len(good)
    for bad_at in range(len(good)):
        drafts = list(good)
        drafts[bad_at] = _ids(tiny_tok, ["<unused0>"])[0]  # the regex has no '<' anywhere
        expected = first_rejected(c, [], drafts)
        assert expected == bad_at
        assert state.valid_prefix(drafts) == expected
        assert state.valid_prefix(torch.tensor(drafts)) == expected
    eos = tiny_tok.eos_token_id
    assert state.valid_prefix([*good, eos, eos, 5]) == len(good) + 1  # nothing after the stop token
    assert state.valid_prefix([eos]) == 0  # the grammar is not complete yet
    assert state.num_tokens == 0 and not state.is_terminated


def test_bitmasks_match_a_fresh_matcher_and_leave_the_state_unchanged(tiny_tok):
    c = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, json_schema=PERSON)
    text = _ids(tiny_tok, ['{"', "na", "me", '":"', "b", "o", "b", '",', '"age"', ":", "4", "2", "}"])
    state = c.new_state()
    state.advance(text[:3])
    before = state.bitmasks()
    drafts = text[3:] + [tiny_tok.eos_token_id]
    bitmask = state.bitmasks(drafts)
    assert bitmask.shape == (len(drafts) + 1, c.bitmask_width) and bitmask.dtype == torch.int32
    for j in range(len(drafts)):  # row j: after the committed prefix plus drafts[:j]
        assert torch.equal(bitmask[j], fresh_bitmask_after(c, text[:3] + drafts[:j])), j
    assert torch.equal(
        bitmask[-1], bitmask[-2]
    )  # after the stop token: the row before it (xgrammar's stale mask)
    # masks() is the same, unpacked; bitmasks(drafts) == bitmasks(drafts[:n]) when a draft is rejected
    assert torch.equal(state.masks(drafts), unpack_bitmask(bitmask, TINY_VOCAB))
    cut = drafts[:5] + _ids(tiny_tok, ["}"]) + drafts[6:]  # '{"name":"bob",' must go on with '"age"'
    assert state.valid_prefix(cut) == 5 and torch.equal(state.bitmasks(cut), bitmask[:6])
    # unchanged: same mask, same count, and the whole text still goes through
    assert torch.equal(state.bitmasks(), before) and state.num_tokens == 3
    assert state.advance(drafts) == len(drafts) and state.is_terminated


def test_advance_termination_and_violations(tiny_tok):
    c = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, regex="ab|abc")
    state = c.new_state()
    a, b, cc, eos = _ids(tiny_tok, ["a", "b", "c", "</s>"])
    with pytest.raises(GrammarViolation, match="not allowed by the regex constraint"):
        state.advance([a, cc])
    assert state.num_tokens == 0 and torch.equal(state.bitmasks()[0], fresh_bitmask_after(c, []))
    assert state.advance([a, b]) == 2 and state.is_completed and not state.is_terminated
    allowed = unpack_bitmask(state.bitmasks(), TINY_VOCAB)[0].nonzero().flatten().tolist()
    assert allowed == [eos, cc]
    assert (
        state.advance([eos, eos, a]) == 1 and state.is_terminated
    )  # tokens after the stop token are ignored
    # once terminated, process() reuses the mask before the stop token, as xgrammar's processor does
    scores = torch.zeros(TINY_VOCAB)
    state.process(scores)
    assert torch.isfinite(scores).nonzero().flatten().tolist() == [eos, cc]
    assert state.valid_prefix([eos]) == 0 and state.bitmasks([a]).shape[0] == 1
    state.rollback(3)
    assert state.num_tokens == 0 and not state.is_terminated
    state.reset()
    assert state.advance([a, b, cc, eos]) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_apply_bitmask_equals_xgrammar_kernel(dtype):
    g = torch.Generator().manual_seed(0)
    vocab = 100  # not a multiple of 32: the tail bits of the last word are ignored
    bitmask = torch.randint(-(2**31), 2**31 - 1, (6, 4), dtype=torch.int32, generator=g)
    logits = torch.randn(6, vocab, generator=g).to(dtype)
    reference = logits.float().clone()
    xgr.apply_token_bitmask_inplace(reference, bitmask)  # the HF processor's call (float32 logits)
    expected = reference.to(dtype)
    flat = logits.clone()
    assert apply_bitmask(flat, bitmask) is flat and torch.equal(flat, expected)
    three = logits.clone().view(2, 3, vocab)  # [R, k+1, V] with [R, k+1, W]
    assert torch.equal(apply_bitmask(three, bitmask.view(2, 3, 4)).view(6, vocab), expected)
    strided = torch.zeros(2, 5, vocab, dtype=dtype)
    strided[:, ::2][:] = logits.view(2, 3, vocab)
    apply_bitmask(strided[:, ::2], bitmask.view(2, 3, 4))  # a non-viewable slice: the torch path
    assert torch.equal(strided[:, ::2].reshape(6, vocab), expected)
    row = logits[0].clone()  # [V] with [1, W]: broadcast
    assert torch.equal(apply_bitmask(row, bitmask[:1]), expected[0])
    allowed = unpack_bitmask(bitmask, vocab)
    assert torch.equal(torch.isinf(expected), ~allowed)


def test_verify_bitmasks_for_a_batch(tiny_tok):
    c = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, regex=TINY_REGEX)
    s0, s1 = c.new_state(), c.new_state()
    s1.advance(_ids(tiny_tok, ['{"', "na"]))
    drafts = [_ids(tiny_tok, ['{"', "na", "me"]), _ids(tiny_tok, ["me", "}", "a"])]
    counts, bitmask = verify_bitmasks([s0, s1, None], drafts + [[1, 2, 3]])
    assert counts == [3, 1, 3] and bitmask.shape == (3, 4, c.bitmask_width)
    assert torch.equal(bitmask[0], s0.bitmasks(drafts[0]))
    assert torch.equal(bitmask[1, :2], s1.bitmasks(drafts[1])) and (bitmask[1, 2:] == -1).all()
    assert (bitmask[2] == -1).all()  # unconstrained row: nothing masked
    assert s0.num_tokens == 0 and s1.num_tokens == 2
    # a padded [R, k] tensor with lengths: padding is never read
    padded = torch.tensor([drafts[0], [drafts[1][0], 0, 0]])
    counts, bitmask = verify_bitmasks([s0, s1], padded, lengths=[2, 1])
    assert counts == [2, 1] and bitmask.shape == (2, 3, c.bitmask_width)
    assert torch.equal(bitmask[0], s0.bitmasks(drafts[0][:2])) and torch.equal(
        bitmask[1, :2], s1.bitmasks(drafts[1])
    )
    counts, bitmask = verify_bitmasks([s0, s1], torch.empty(2, 0, dtype=torch.long))
    assert counts == [0, 0] and torch.equal(bitmask[:, 0], torch.cat([s0.bitmasks(), s1.bitmasks()]))
    with pytest.raises(ConfigError, match="'num_tokens' must be between 0 and the 2 committed tokens"):
        s1.rollback(3)


def test_sampled_distribution_matches_generates_processor_order(tiny_tok, tiny_model):
    """generate() runs a user logits processor after its own processors and BEFORE temperature / top-k / top-p, so
    the loop masks raw logits, then warps: warp_logits(process(logits)) equals generate's list, bit for bit."""
    from specdecode.proposer import SamplingParams
    from specdecode.sampling import warp_logits
    from transformers import GenerationConfig
    from transformers.generation.logits_process import LogitsProcessorList

    c = compile_constraint(tiny_tok, vocab_size=TINY_VOCAB, json_schema=PERSON)
    hf_processor = c.hf_logits_processor()
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    processors = tiny_model._get_logits_processor(  # what generate() builds (private API: transformers 5.x)
        generation_config=config, input_ids_seq_length=3, logits_processor=LogitsProcessorList([hf_processor])
    )
    names = [type(p).__name__ for p in processors]
    assert names == ["LogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"], (
        names
    )
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    state, ids = c.new_state(), torch.tensor([[3, 4, 5]])
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        logits = torch.randn(1, TINY_VOCAB, generator=g) * 3
        theirs = processors(ids, logits.clone())
        ours = warp_logits(state.process(logits.clone()), params)
        assert torch.equal(ours, theirs)
        token = int(torch.multinomial(ours.softmax(-1), 1, generator=g))
        state.advance([token])
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        if state.is_terminated:
            break


def test_sampled_drafts_left_out_of_the_grammar_must_be_rejected_not_cut():
    """For the loop: a draft sampled from q that the grammar refuses has p = 0 after masking, so rejection sampling
    rejects it and draws from max(p - q, 0). Cutting it instead (bonus from p) is biased when q is a distribution;
    with draft_probs the loop must keep the first refused draft (its mask row is all ones) and let it be rejected."""
    from specdecode.sampling import rejection_sample

    n = 40000
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.5, 0.0])  # masked target: token 2 is outside the grammar
    q = torch.tensor([0.5, 0.0, 0.5])
    drafts = torch.multinomial(q.expand(n, 3), 1, replacement=True, generator=g)
    target, draft_probs = p.expand(n, 2, 3), q.expand(n, 1, 3)

    def output(lengths):
        accepted, nxt = rejection_sample(target, drafts, draft_probs, lengths, g)
        return torch.bincount(torch.where(accepted > 0, drafts[:, 0], nxt), minlength=3).float() / n

    kept = output(None)
    cut = output((drafts[:, 0] != 2).long())
    assert torch.allclose(kept, p, atol=0.02)
    assert (cut - p).abs().max() > 0.2  # 0.75 / 0.25: not lossless


# ---------------------------------------------------------------------------------------------------------------
# Decoding equals xgrammar's transformers processor (tiny random model: offline)


@pytest.mark.parametrize("kind", ["json_schema", "regex"])
def test_tiny_model_matches_hf_processor(tiny_tok, tiny_model, kind):
    tiny_lm = tiny_model  # conftest: a random Llama with 64 ids, like the tiny tokenizer
    arg = PERSON if kind == "json_schema" else TINY_REGEX
    c = compile_constraint(tiny_tok, vocab_size=model_vocab_size(tiny_lm), **{kind: arg})
    eos, max_new = tiny_tok.eos_token_id, 40
    prompt = torch.tensor([[7, 12, 30, 31, 2]])
    reference = hf_generate(tiny_lm, prompt, c, max_new, eos)
    assert greedy_one_by_one(tiny_lm, prompt, c, max_new, eos) == reference
    spec, seen = speculative_greedy(
        tiny_lm, prompt, c, max_new, eos, corrupting_proposer(reference, bad_token=_ids(tiny_tok, ["{"])[0])
    )
    assert spec == reference
    assert seen["cut"] > 0 and seen["accepted"] > 0
    assert reference[-1] == eos  # finished inside max_new: the text matches
    text = tiny_text(tiny_tok, reference)
    if kind == "regex":
        assert re.fullmatch(TINY_REGEX, text)
    else:
        value = json.loads(text)
        assert set(value) == {"name", "age"} and isinstance(value["age"], int) and len(value["name"]) <= 8


# ---------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct: real tokenizer, real model


SMOL_SCHEMA = person_schema(max_name=12, max_age=150)
SMOL_REGEX = r"[0-9]{3}-[0-9]{3}-[0-9]{4}"


@pytest.mark.real_model
def test_smollm2_masks_and_prefixes(smol):
    model, tok = smol
    c = compile_constraint(tok, vocab_size=model_vocab_size(model), json_schema=SMOL_SCHEMA)
    assert c.vocab_size == 49152 and c.stop_token_ids == (tok.eos_token_id,)
    text = tok.encode('{"name": "Ann", "age": 41}', add_special_tokens=False)
    state = c.new_state()
    state.advance(text[:2])
    drafts = [*text[2:], tok.eos_token_id]
    bitmask = state.bitmasks(drafts)
    assert bitmask.shape[0] == len(drafts) + 1
    for j in range(len(drafts)):
        assert torch.equal(bitmask[j], fresh_bitmask_after(c, text[:2] + drafts[:j])), j
    for at in range(len(drafts)):
        bad = int(
            (~unpack_bitmask(bitmask[at], c.vocab_size)).nonzero()[0]
        )  # a token the grammar refuses there
        corrupted = drafts[:at] + [bad] + drafts[at + 1 :]
        n = state.valid_prefix(corrupted)
        assert n == first_rejected(c, text[:2], corrupted) == at
        assert torch.equal(state.bitmasks(corrupted), bitmask[: n + 1])
    assert state.num_tokens == 2 and torch.equal(state.bitmasks(), bitmask[0:1])


@pytest.mark.real_model
@pytest.mark.parametrize(
    ("kind", "prompt"),
    [
        ("json_schema", "Describe a person as JSON with the fields name and age."),
        ("regex", "Give me a US phone number."),
    ],
)
def test_smollm2_decoding_matches_hf_processor_and_parses(smol, kind, prompt):
    from specdecode.models import encode_prompt

    model, tok = smol
    arg = SMOL_SCHEMA if kind == "json_schema" else SMOL_REGEX
    c = compile_constraint(tok, vocab_size=model_vocab_size(model), **{kind: arg})
    ids, eos, max_new = encode_prompt(tok, prompt), tok.eos_token_id, 40
    reference = hf_generate(model, ids, c, max_new, eos)
    assert reference[-1] == eos, tok.decode(reference)
    assert greedy_one_by_one(model, ids, c, max_new, eos) == reference
    bad = tok.encode("Z", add_special_tokens=False)[0]
    spec, seen = speculative_greedy(
        model, ids, c, max_new, eos, corrupting_proposer(reference, bad_token=bad)
    )
    assert spec == reference
    assert seen["cut"] > 0
    text = tok.decode(reference, skip_special_tokens=True)
    if kind == "regex":
        assert re.fullmatch(SMOL_REGEX, text)
    else:
        assert set(json.loads(text)) == {"name", "age"}


# ---------------------------------------------------------------------------------------------------------------
# Through specdecode's own loop (specdecode.generate, model.generate with custom_generate)


class _CorruptingChain:
    """A proposer that drafts the reference, corrupted as :func:`corrupting_proposer` does (cuts and rejections)."""

    def __new__(cls, prompt_length: int, reference: list[int], bad_token: int):
        import specdecode

        propose_list = corrupting_proposer(reference, bad_token)

        class Chain(specdecode.Proposer):
            def propose(self, request):
                out = request.input_ids[0, prompt_length:].tolist()
                drafts = propose_list(out)[: request.num_tokens]
                return specdecode.Proposal(token_ids=torch.tensor([drafts], dtype=torch.long))

        return Chain()


@pytest.mark.parametrize("kind", ["json_schema", "regex", "grammar"])
def test_loop_matches_hf_processor(tiny_tok, tiny_model, kind):
    import specdecode

    arg = {"json_schema": PERSON, "regex": TINY_REGEX, "grammar": TINY_EBNF}[kind]
    c = compile_constraint(tiny_tok, vocab_size=model_vocab_size(tiny_model), **{kind: arg})
    eos, max_new = tiny_tok.eos_token_id, 40
    prompt = torch.tensor([[7, 12, 30, 31, 2]])
    reference = hf_generate(tiny_model, prompt, c, max_new, eos)
    common = dict(max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos, tokenizer=tiny_tok, **{kind: arg})
    out = specdecode.generate(tiny_model, prompt, {"method": "ngram", "prompt_lookup_min": 1}, **common)
    assert out.sequences[0, prompt.shape[1] :].tolist() == reference
    bad = _ids(tiny_tok, ["{"])[0]
    corrupted = specdecode.generate(tiny_model, prompt, None, proposer=_CorruptingChain(5, reference, bad), **common)
    assert corrupted.sequences[0, prompt.shape[1] :].tolist() == reference
    assert corrupted.stats.accepted > 0
    with torch.inference_mode():  # the same through model.generate (transformers drops tokenizer=: our own name)
        custom = tiny_model.generate(
            prompt, custom_generate=specdecode.custom_generate, speculative_tokenizer=tiny_tok,
            max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos, do_sample=False, **{kind: arg},
        )
    assert custom[0, prompt.shape[1] :].tolist() == reference


TINY_EBNF = r'''root ::= "{" "\"name\"" ":" "\"" [a-z]+ "\"" "," "\"age\"" ":" [1-9] [0-9]? "}"'''


def test_loop_with_trees_matches_hf_processor(tiny_tok, tiny_model):
    """Tree drafts (nodes the grammar refuses are pruned with their subtrees) give the same tokens."""
    import specdecode

    from tests.test_trees import TreeOracle

    c = compile_constraint(tiny_tok, vocab_size=model_vocab_size(tiny_model), json_schema=PERSON)
    eos, max_new = tiny_tok.eos_token_id, 40
    prompt = torch.tensor([[7, 12, 30, 31, 2]])
    reference = hf_generate(tiny_model, prompt, c, max_new, eos)
    for seed in range(3):
        proposer = TreeOracle(prompt[0].tolist() + reference + [eos] * 8, tiny_model.config.vocab_size, seed=seed)
        out = specdecode.generate(tiny_model, prompt, {"num_speculative_tokens": 4}, proposer=proposer,
                                  max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos, tokenizer=tiny_tok,
                                  json_schema=PERSON)
        assert out.sequences[0, prompt.shape[1] :].tolist() == reference


def test_sampled_output_parses(tiny_tok, tiny_model):
    import specdecode

    prompt = torch.tensor([[7, 12, 30, 31, 2]])
    eos = tiny_tok.eos_token_id
    for seed in range(6):
        out = specdecode.generate(tiny_model, prompt, {"method": "ngram", "prompt_lookup_min": 1}, do_sample=True,
                                  temperature=0.8, seed=seed, max_new_tokens=60, eos_token_id=eos, pad_token_id=eos,
                                  tokenizer=tiny_tok, json_schema=PERSON)
        ids = out.sequences[0, prompt.shape[1] :].tolist()
        if ids[-1] == eos:  # finished within the budget: a complete object
            value = json.loads(tiny_text(tiny_tok, ids))
            assert set(value) == {"name", "age"}
        else:
            assert len(ids) == 60


def test_constraint_needs_a_tokenizer(tiny_model):
    import specdecode

    with pytest.raises(ConfigError, match="'regex' needs the target's tokenizer"):
        specdecode.generate(tiny_model, torch.tensor([[1, 2, 3]]), None, max_new_tokens=4, regex="[a-z]+")


@pytest.mark.real_model
def test_smollm2_loop_matches_hf_processor_and_parses(smol):
    import specdecode
    from specdecode.models import encode_prompt

    model, tok = smol
    c = compile_constraint(tok, vocab_size=model_vocab_size(model), json_schema=SMOL_SCHEMA)
    ids = encode_prompt(tok, "Describe a person as JSON with the fields name and age.")
    reference = hf_generate(model, ids, c, 40, tok.eos_token_id)
    out = specdecode.generate(model, ids, {"method": "ngram"}, tokenizer=tok, json_schema=SMOL_SCHEMA,
                              max_new_tokens=40, do_sample=False)
    assert out.sequences[0, ids.shape[1] :].tolist() == reference
    assert json.loads(tok.decode(reference, skip_special_tokens=True))
