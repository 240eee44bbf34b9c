"""Sequential strategies over a discrete `Space`: Monte Carlo tree search (Auto-KD, paper 3) and
uniform random search at the same budget. Both are pure: `propose()` returns a path of choice
indices, `observe(path, reward)` takes its reward, and `state_dict()` is plain JSON, so the
search runner can save them after every evaluation and resume exactly.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown
from kd_engine.search.base import STRATEGIES, Space

MAX_REJECTIONS = 2000


class Node:
    """A tree node: visit count N, total reward W, children by choice index."""

    def __init__(self, N: int = 0, W: float = 0.0, children: dict[int, "Node"] | None = None):
        self.N, self.W = N, W
        self.children: dict[int, Node] = children or {}

    @property
    def Q(self) -> float:
        return self.W / self.N if self.N else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"N": self.N, "W": self.W, "children": {str(i): c.to_dict() for i, c in self.children.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Node":
        return cls(int(d["N"]), float(d["W"]), {int(i): cls.from_dict(c) for i, c in d["children"].items()})


def uct_scores(node: Node, c: float, lo: float | None = None, hi: float | None = None,
               candidates: list[int] | None = None) -> dict[int, float]:
    """UCT of each child: Q/N (mean reward, min-max scaled to [0, 1] by `lo`/`hi` when given)
    + c·sqrt(ln N_parent / N_child); an unvisited child scores +inf."""
    scores = {}
    for i in (candidates if candidates is not None else sorted(node.children)):
        child = node.children[i]
        if child.N == 0:
            scores[i] = math.inf
            continue
        q = child.Q
        if lo is not None and hi is not None:
            q = (q - lo) / (hi - lo) if hi > lo else 0.5
        scores[i] = q + c * math.sqrt(math.log(max(node.N, 1)) / child.N)
    return scores


def uct_select(node: Node, c: float, lo: float | None = None, hi: float | None = None,
               candidates: list[int] | None = None) -> int:
    """The child with the largest UCT score (ties: the lowest index)."""
    scores = uct_scores(node, c, lo, hi, candidates)
    return max(sorted(scores), key=lambda i: scores[i])


def backpropagate(root: Node, path: list[int] | tuple[int, ...], reward: float) -> int:
    """Add one visit and `reward` to the root and every tree node along `path`; returns how many
    nodes were updated (the path leaves the tree where the rollout began)."""
    node, updated = root, 0
    node.N += 1
    node.W += reward
    updated += 1
    for i in path:
        if i not in node.children:
            break
        node = node.children[i]
        node.N += 1
        node.W += reward
        updated += 1
    return updated


class _Sequential:
    """Shared bookkeeping: the generator, the evaluated leaves, sampling of unevaluated leaves."""

    NAME, PARAMS = "", ()

    def __init__(self, space: Space, params: dict[str, Any], seed: int):
        reject_unknown(params, self.PARAMS, "search.params", f"strategy {self.NAME}")
        self.space, self.params = space, dict(params)
        self.rng = np.random.default_rng(seed)
        self.evaluated: set[tuple[int, ...]] = set()
        self.sizes = [len(values) for _, values in space.levels]

    def _leaves_under(self, prefix: tuple[int, ...]) -> int:
        return math.prod(self.sizes[len(prefix):])

    def exhausted(self, prefix: tuple[int, ...]) -> bool:
        done = sum(1 for leaf in self.evaluated if leaf[:len(prefix)] == prefix)
        return done >= self._leaves_under(prefix)

    def random_completion(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """A uniformly random leaf under `prefix` that was not evaluated yet."""
        if self.exhausted(prefix):
            raise ConfigError("search: every configuration of the space was evaluated; lower search.budget")
        for _ in range(MAX_REJECTIONS):
            leaf = prefix + tuple(int(self.rng.integers(n)) for n in self.sizes[len(prefix):])
            if leaf not in self.evaluated:
                return leaf
        rest = [tuple(int(v) for v in leaf) for leaf in np.ndindex(*self.sizes[len(prefix):])]
        free = [prefix + r for r in rest if prefix + r not in self.evaluated]
        return free[int(self.rng.integers(len(free)))]

    def observe(self, path: tuple[int, ...] | list[int], reward: float) -> None:
        self.evaluated.add(tuple(int(i) for i in path))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "evaluated": sorted(map(list, self.evaluated))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.evaluated = {tuple(p) for p in state["evaluated"]}


@STRATEGIES.register("random")
class RandomSearch(_Sequential):
    """Uniform sampling of the space without replacement."""

    NAME, PARAMS = "random", ()

    def propose(self) -> tuple[int, ...]:
        return self.random_completion(())


@STRATEGIES.register("mcts")
class MCTS(_Sequential):
    """UCT tree search over the space's levels: select by UCT among expanded children, expand one
    untried child, complete the path by a random rollout, back the reward up the tree path.
    Rewards are min-max scaled by the rewards seen so far inside UCT, so c = 1 means the same
    exploration whatever the reward's units. A fully evaluated subtree is never selected again."""

    NAME, PARAMS = "mcts", ("c",)

    def __init__(self, space: Space, params: dict[str, Any], seed: int):
        super().__init__(space, params, seed)
        c = params.get("c", 1.0)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0:
            raise ConfigError(f"search.params.c: must be a number >= 0, got {c!r}")
        self.c = float(c)
        self.root = Node()
        self.lo: float | None = None
        self.hi: float | None = None

    def propose(self) -> tuple[int, ...]:
        node, prefix = self.root, ()
        while len(prefix) < len(self.sizes):
            depth = len(prefix)
            untried = [i for i in range(self.sizes[depth])
                       if i not in node.children and not self.exhausted(prefix + (i,))]
            if untried:  # expand
                i = untried[int(self.rng.integers(len(untried)))]
                node.children[i] = Node()
                return self.random_completion(prefix + (i,))
            live = [i for i in sorted(node.children) if not self.exhausted(prefix + (i,))]
            if not live:
                raise ConfigError("search: every configuration of the space was evaluated; lower search.budget")
            i = uct_select(node, self.c, self.lo, self.hi, live)
            node, prefix = node.children[i], prefix + (i,)
        return prefix

    def observe(self, path, reward: float) -> None:
        super().observe(path, reward)
        backpropagate(self.root, list(path), float(reward))
        self.lo = reward if self.lo is None else min(self.lo, reward)
        self.hi = reward if self.hi is None else max(self.hi, reward)

    def level_visits(self) -> list[dict[int, int]]:
        """Visit counts per level and choice, summed over the tree (for the 'visits per level' plot)."""
        out: list[dict[int, int]] = [dict() for _ in self.sizes]

        def walk(node: Node, depth: int) -> None:
            for i, child in node.children.items():
                out[depth][i] = out[depth].get(i, 0) + child.N
                walk(child, depth + 1)

        walk(self.root, 0)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tree": self.root.to_dict(), "lo": self.lo, "hi": self.hi}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.root = Node.from_dict(state["tree"])
        self.lo, self.hi = state["lo"], state["hi"]
