"""Tree proposals: several candidate continuations verified in one forward pass (EAGLE-2, SpecInfer, Medusa).

A tree proposal is k draft tokens plus ``parents``: ``parents[i]`` is the index of node i's parent among the
drafts, or -1 when node i continues the last token directly. Parents come before their children, so
``parents[i] < i``. A chain d_1..d_k is the tree ``parents = (-1, 0, 1, ..., k-2)``.

The target reads [last token, d_1..d_k] at once: node i sits at position ``past + depth(i)`` and attends to the
cache, the last token, its ancestors and itself (:func:`visibility`; the masks are built by
:mod:`specdecode.attention`, which also applies sliding windows in positions). Under greedy decoding the accepted path
starts at the last token and steps to the child that equals the target's argmax there, as long as one does
(:func:`greedy_path`); the target's argmax after the path's end is the next token. Exactly the tokens plain greedy
decoding would give, so trees are lossless like chains. Under sampling, :func:`sampled_path` accepts children by
multi-round rejection with one-hot drafts, so every token still follows the target's distribution. The cache then
keeps the path's slots only (:func:`keep_cache_slots`).

Letters: k drafts (tree nodes), P cached positions before the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import ConfigError

ROOT = -1  # the parent index of nodes that continue the last token


def check_parents(parents: Sequence[int], k: int) -> tuple[int, ...]:
    """``parents`` as a tuple of ints, or a ConfigError that says what is wrong."""
    parents = tuple(int(p) for p in parents)
    if len(parents) != k:
        raise ConfigError(
            f"Proposal.parents must have one entry per draft token ({k}), got {len(parents)}",
            field="Proposal.parents",
            value=parents,
        )
    for i, p in enumerate(parents):
        if not ROOT <= p < i:
            raise ConfigError(
                f"Proposal.parents[{i}] must be -1 (the last token) or the index of an earlier draft (0..{i - 1}), "
                f"got {p}",
                field="Proposal.parents",
                value=parents,
            )
    return parents


def depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node: 1 for children of the last token."""
    out: list[int] = []
    for p in parents:
        out.append(1 if p == ROOT else out[p] + 1)
    return out


def paths(parents: Sequence[int]) -> list[list[int]]:
    """For every node, the nodes from the first below the last token down to it (itself included)."""
    out: list[list[int]] = []
    for i, p in enumerate(parents):
        out.append((out[p] if p != ROOT else []) + [i])
    return out


def limit_depth(
    token_ids: list[int], parents: tuple[int, ...], max_depth: int
) -> tuple[list[int], tuple[int, ...]]:
    """Drop the nodes deeper than ``max_depth`` (their descendants go with them); indices are renumbered."""
    depth = depths(parents)
    if max(depth, default=0) <= max_depth:
        return token_ids, parents
    new_index: dict[int, int] = {ROOT: ROOT}
    tokens: list[int] = []
    kept: list[int] = []
    for i, (token, p) in enumerate(zip(token_ids, parents)):
        if depth[i] <= max_depth:
            new_index[i] = len(tokens)
            tokens.append(token)
            kept.append(new_index[p])
    return tokens, tuple(kept)


def visibility(parents: Sequence[int], device: Any = None) -> torch.Tensor:
    """``[k+1, k+1]`` bool: which of [last token, d_1..d_k] each of them may attend to (the last token, its
    ancestors, itself); the cache before them is visible to all (see :mod:`specdecode.attention`)."""
    k = len(parents)
    allowed = torch.zeros(k + 1, k + 1, dtype=torch.bool)
    allowed[:, 0] = True  # everyone sees the last token
    for i, p in enumerate(parents):
        row = i + 1
        if p != ROOT:
            allowed[row] = allowed[p + 1]  # the parent's ancestors (its row is complete: parents come first)
        allowed[row, row] = True
    return allowed.to(device)


def position_ids(node_depths: Sequence[int], past: int, device: Any) -> torch.Tensor:
    """``[1, k+1]``: the last token at ``past``, node i at ``past + node_depths[i]`` (see :func:`depths`)."""
    return torch.tensor([[past] + [past + d for d in node_depths]], device=device)


def greedy_path(target_tokens: Sequence[int], draft: Sequence[int], parents: Sequence[int]) -> tuple[list[int], int]:
    """The accepted nodes and the next token. ``target_tokens[j]`` is the target's argmax after verify position j
    (0 = the last token, i + 1 = node i)."""
    path = _walk(parents, lambda node, children: next(
        (c for c in children if draft[c] == target_tokens[node + 1]), None))
    return path, target_tokens[(path[-1] if path else ROOT) + 1]


def _walk(parents: Sequence[int], choose: Any) -> list[int]:
    """The accepted path: from the last token, step to ``choose(node, children)`` until it returns None."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    path: list[int] = []
    node = ROOT
    while (step := choose(node, children.get(node, []))) is not None:
        path.append(step)
        node = step
    return path


def sampled_path(
    target_probs: torch.Tensor, draft: Sequence[int], parents: Sequence[int], generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Lossless acceptance of a tree under sampling -> (accepted nodes, next token).

    ``target_probs`` ``[k+1, V]`` is the target's (warped) distribution after each verify position. Every candidate
    is treated as a deterministic draft (q one-hot on it), which is lossless whatever chose the tree, as long as
    that choice did not look at the coins drawn here: at the current node, its children are tried in order, child c
    is accepted with probability p'(c), where p' is p with the earlier rejected siblings removed and renormalised
    (SpecInfer's multi-round speculative sampling with one-hot drafts); when all are rejected, the next token is
    drawn from p' with every child removed, and after a leaf from p itself. The next token is therefore distributed
    exactly as p at every node. One host transfer: the children's probabilities, the coins and one residual sample
    per position are computed on the device for every node, whichever path is taken, so the generator advances by
    the same amount every step.
    """
    k = len(parents)
    device = target_probs.device
    positions = torch.tensor([p + 1 for p in parents], dtype=torch.long, device=device)  # each node's parent row
    tokens = torch.tensor(list(draft), dtype=torch.long, device=device)
    child_p = target_probs[positions, tokens]  # [k]: p(node's token) at its parent
    coins = torch.rand(k, generator=generator, device=device, dtype=target_probs.dtype)
    residual = target_probs.index_put((positions, tokens), torch.zeros((), dtype=target_probs.dtype, device=device))
    mass = residual.sum(dim=-1, keepdim=True)
    # A row whose children cover all of p never needs its residual (its last child is accepted with probability 1).
    residual = torch.where(mass > 0, residual, target_probs)
    samples = torch.multinomial(residual, 1, generator=generator).squeeze(-1)  # [k+1]
    host = torch.cat([child_p.double(), coins.double(), samples.double()]).tolist()
    child_p, coins, samples = host[:k], host[k : 2 * k], [int(t) for t in host[2 * k :]]

    def choose(_node: int, children: list[int]) -> int | None:
        removed_mass, removed = 0.0, set()
        for c in children:
            if draft[c] in removed:  # a repeated sibling: its probability is already gone
                continue
            left = 1.0 - removed_mass
            if left > 0 and coins[c] * left < child_p[c]:  # coin < p(c) / (1 - mass removed so far)
                return c
            removed_mass += child_p[c]
            removed.add(draft[c])
        return None

    path = _walk(parents, choose)
    return path, samples[(path[-1] if path else ROOT) + 1]


def keep_cache_slots(cache: Any, start: int, keep: Sequence[int]) -> None:
    """The cache holds ``start`` positions plus this step's verify slots; keep slot ``start + j`` for j in ``keep``
    (ascending), moved into place, and drop the other verify slots."""
    total = cache.get_seq_length()
    moved = list(keep) != list(range(len(keep)))
    if moved:
        layers = getattr(cache, "layers", None)
        if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            raise ConfigError(
                "tree proposals need a plain transformers DynamicCache (no sliding-window or quantized layers); "
                f"this model's cache is {type(cache).__name__}",
                field="Proposal.parents",
                value=None,
            )
        index = torch.tensor([start + j for j in keep], device=layers[0].keys.device)
        end = start + len(keep)
        for layer in layers:
            layer.keys[:, :, start:end] = layer.keys.index_select(2, index)
            layer.values[:, :, start:end] = layer.values.index_select(2, index)
    drop = total - start - len(keep)
    if drop > 0:
        cache.crop(-drop)
