"""Pure functions for picking and accepting tokens. No state, no host syncs.

Shapes: B = batch, k = draft length, V = vocabulary. p = target probabilities, q = draft probabilities.
Target logits of a verify pass are ``[B, k+1, V]``: position i scores the token after [last token, d_1..d_i], so
position i < k judges draft d_{i+1} and position k gives the bonus token.
"""

from __future__ import annotations

import torch

from .proposer import SamplingParams


def warp_logits(
    logits: torch.Tensor, params: SamplingParams, input_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Process ``[..., V]`` logits the way the target does.

    With ``params.logits_processor`` (what specdecode's loop hands proposers): the target's processors, given
    ``input_ids`` (the ``[T]`` or ``[1, T]`` tokens before the position scored; only for a single row), and its
    warpers when sampling; processors that read the tokens are skipped when none are given. Without: temperature,
    then top-k, then top-p (the order transformers uses). Removed tokens get ``-inf``; ties at the top-k boundary
    are kept, as in transformers.
    """
    if params.logits_processor is not None:
        flat = logits.reshape(-1, logits.shape[-1])
        prefix = None
        if input_ids is not None:
            if flat.shape[0] != 1:
                raise ValueError(f"input_ids give the prefix of one row; got logits of shape {tuple(logits.shape)}")
            ids = input_ids.reshape(1, -1).to(device=logits.device, dtype=torch.long)
            prefix = lambda _n: (0, ids)  # noqa: E731  (row 0's per-row processor state; only shapes q)
        return params.logits_processor(flat, prefix).reshape(logits.shape)
    logits = logits.float()
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k is not None and 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1.0 - params.top_p)
        remove_sorted[..., -1] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def warp_probs(
    logits: torch.Tensor, params: SamplingParams, input_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The distribution the target samples from: softmax of :func:`warp_logits`."""
    return warp_logits(logits, params, input_ids).softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``[B, V]`` probabilities -> ``[B]``."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def draw(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    input_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A draft token per row of ``[..., V]`` logits, picked the way the target picks: the argmax when greedy, a
    sample from the processed distribution otherwise -> (tokens ``[...]``, q ``[..., V]``).

    q is the distribution the token came from (greedy: the softmax, whose argmax it is; its maximum is the draft's
    confidence). When sampling, hand exactly this q over as ``Proposal.draft_probs``. ``input_ids``: the tokens
    before the drafted position (one row), so that processors that read them (repetition penalty, no-repeat
    n-grams, ...) shape q as they shape p, which raises acceptance.
    """
    q = draft_distribution(logits, params, input_ids)
    if params.greedy:
        return q.argmax(dim=-1), q
    flat = q.reshape(-1, q.shape[-1])
    return sample(flat, generator).reshape(q.shape[:-1]), q


def draft_distribution(
    logits: torch.Tensor, params: SamplingParams, input_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The distribution :func:`draw` picks from, without picking: the processed distribution (see
    :func:`warp_logits`); greedy without processors, the plain softmax."""
    if params.logits_processor is None and params.greedy:
        return logits.float().softmax(dim=-1)
    return warp_probs(logits, params, input_ids)


def _valid_mask(draft: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    positions = torch.arange(draft.shape[1], device=draft.device)
    if lengths is None:
        return torch.ones_like(draft, dtype=torch.bool)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, k]


def _leading_true(mask: torch.Tensor) -> torch.Tensor:
    """Number of leading True values per row of ``[B, k]`` -> ``[B]``."""
    return mask.long().cumprod(dim=1).sum(dim=1)


def greedy_accept(
    target_logits: torch.Tensor, draft: torch.Tensor, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept drafts while they equal the target's argmax.

    target_logits ``[B, k+1, V]``, draft ``[B, k]`` -> (num_accepted ``[B]``, next_tokens ``[B]``).
    """
    target_tokens = target_logits.argmax(dim=-1)  # [B, k+1]
    k = draft.shape[1]
    match = (draft == target_tokens[:, :k]) & _valid_mask(draft, lengths)
    num_accepted = _leading_true(match)
    next_tokens = target_tokens.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
    return num_accepted, next_tokens


def rejection_sample(
    target_probs: torch.Tensor,
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless speculative sampling (Leviathan et al. 2023).

    Draft d_i is accepted with probability min(1, p(d_i) / q(d_i)). At the first rejection the next token is drawn
    from normalize(max(p - q, 0)); when every draft is accepted it is drawn from p at position k (the bonus token).
    ``draft_probs=None`` means a deterministic proposer (q is one-hot on the draft token).

    target_probs ``[B, k+1, V]``, draft ``[B, k]``, draft_probs ``[B, k, V]`` -> (num_accepted ``[B]``,
    next_tokens ``[B]``).
    """
    batch, k = draft.shape
    vocab = target_probs.shape[-1]
    p_draft = target_probs[:, :k].gather(-1, draft.unsqueeze(-1)).squeeze(-1)  # [B, k]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
    else:
        q_draft = draft_probs.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(p_draft.shape, generator=generator, device=p_draft.device, dtype=p_draft.dtype)
    accept = (u * q_draft < p_draft) & _valid_mask(draft, lengths)  # u < p/q without dividing by q
    num_accepted = _leading_true(accept)  # [B]

    index = num_accepted.view(batch, 1, 1).expand(batch, 1, vocab)
    p_next = target_probs.gather(1, index).squeeze(1)  # [B, V]
    # q at the rejected position; zero where every draft was accepted (then we sample the bonus from p).
    rejected = num_accepted < (lengths if lengths is not None else torch.full_like(num_accepted, k))
    safe_pos = num_accepted.clamp(max=max(k - 1, 0))
    if k == 0:
        q_next = torch.zeros_like(p_next)
    elif draft_probs is None:
        q_next = torch.zeros_like(p_next).scatter_(1, draft.gather(1, safe_pos.unsqueeze(1)), 1.0)
    else:
        q_next = draft_probs.gather(1, safe_pos.view(batch, 1, 1).expand(batch, 1, vocab)).squeeze(1)
    q_next = q_next * rejected.unsqueeze(1)
    residual = (p_next - q_next).clamp(min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q exactly leaves no residual mass; that rejection had probability 0, fall back to p for safety.
    residual = torch.where(mass > 0, residual, p_next)
    next_tokens = sample(residual / residual.sum(dim=-1, keepdim=True), generator)
    return num_accepted, next_tokens


def typical_accept(
    target_probs: torch.Tensor,
    draft: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Typical acceptance (Medusa; vLLM's ``typical_acceptance_sampler``). LOSSY: the output no longer follows the
    target distribution exactly.

    Draft d_i is accepted when p(d_i) > min(posterior_threshold, posterior_alpha * exp(-entropy(p))). The token
    after the accepted run is sampled from p at that position (bonus included).
    """
    batch, k = draft.shape
    vocab = target_probs.shape[-1]
    p = target_probs[:, :k]  # [B, k, V]
    entropy = -(p * torch.log(p.clamp(min=1e-10))).sum(dim=-1)  # [B, k]
    threshold = torch.minimum(
        torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy)
    )
    p_draft = p.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    accept = (p_draft > threshold) & _valid_mask(draft, lengths)
    num_accepted = _leading_true(accept)
    index = num_accepted.view(batch, 1, 1).expand(batch, 1, vocab)
    next_tokens = sample(target_probs.gather(1, index).squeeze(1), generator)
    return num_accepted, next_tokens
