"""Cross-tokenizer drafting: the draft works in its own tokens, proposals reach the target through text."""

from __future__ import annotations

import pytest
import specdecode
import torch
from draft_model_helpers import char_tokenizer, permuted_copy, plain_greedy, speculative
from specdecode.testing import tiny_llama

ALPHABET = "abcdefgh ijklmnopqrstuvwxyz.,"
NEW = 24


@pytest.fixture(scope="module")
def target_tokenizer():
    return char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def target(target_tokenizer):
    return tiny_llama(vocab_size=len(target_tokenizer), num_layers=2, seed=0)


def encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


PROMPTS = ["the cat sat on the mat.", "a b c d e", "hello, world"]


def test_same_model_under_another_numbering_is_accepted_throughout(target, target_tokenizer):
    """The draft is the target with its ids permuted and its own tokenizer numbering the letters the same way:
    it predicts exactly the target's text, so with text conversion every draft must be accepted."""
    permutation = torch.randperm(len(ALPHABET), generator=torch.Generator().manual_seed(0))
    draft_tokenizer = char_tokenizer("".join(ALPHABET[i] for i in permutation.tolist()))
    draft = permuted_copy(target, permutation)
    for text in PROMPTS:
        prompt = encode(target_tokenizer, text)
        out = speculative(
            target,
            prompt,
            NEW,
            method="draft_model",
            draft_model=draft,
            method_options={"draft_tokenizer": draft_tokenizer},
            tokenizer=target_tokenizer,
        )
        assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        assert out.stats.acceptance_rate == 1.0


@pytest.mark.parametrize("merges", [(), ("ab", "e ", "th", "he")])
def test_unrelated_draft_with_its_own_tokenizer_stays_exact(target, target_tokenizer, merges):
    """Another model, another numbering, merged tokens: re-tokenization shifts token boundaries every step."""
    draft_tokenizer = char_tokenizer(ALPHABET[::-1], merges=merges)
    draft = tiny_llama(vocab_size=len(draft_tokenizer) + 3, num_layers=1, seed=4)  # padded vocabulary too
    for text in PROMPTS:
        prompt = encode(target_tokenizer, text)
        out = speculative(
            target,
            prompt,
            NEW,
            method="draft_model",
            draft_model=draft,
            method_options={"draft_tokenizer": draft_tokenizer, "draft_p_min": 0.0},
            tokenizer=target_tokenizer,
        )
        assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        assert out.stats.drafted > 0


def test_merged_draft_tokens_are_split_into_target_tokens(target, target_tokenizer):
    """A draft token 'th' is two target tokens: the proposal is in target ids, as many as the text needs."""
    from specdecode_draft_model.proposers import CrossTokenizerProposer

    draft_tokenizer = char_tokenizer(ALPHABET, merges=("th", "he"))
    draft = tiny_llama(vocab_size=len(draft_tokenizer), num_layers=1, seed=4)
    proposer = CrossTokenizerProposer(draft, draft_tokenizer, draft_device=torch.device("cpu"), p_min=None)
    proposer.target_tokenizer = target_tokenizer
    continuation = proposer._continuation_text(
        draft_tokenizer("xy")["input_ids"], draft_tokenizer("the")["input_ids"]
    )
    assert continuation == "the"
    assert proposer._target_ids_after("xy", continuation) == target_tokenizer("the")["input_ids"]


def test_missing_target_tokenizer_is_a_clear_error(target, target_tokenizer):
    draft_tokenizer = char_tokenizer(ALPHABET[::-1])
    draft = tiny_llama(vocab_size=len(draft_tokenizer), num_layers=1, seed=4)
    with pytest.raises(specdecode.ConfigError, match="tokenizer=") as info:
        speculative(
            target,
            encode(target_tokenizer, "abc"),
            4,
            method="draft_model",
            draft_model=draft,
            method_options={"draft_tokenizer": draft_tokenizer},
        )
    assert info.value.field == "tokenizer"
