"""Axis variables: a union-find over tensor axes, with block refinements and a 'fixed' mark.

Every axis of every value in a traced graph is a variable. Ops add constraints:

- ``union(a, b)``: the two axes must be permuted by the same permutation (a linear layer's in axis
  and its input's feature axis, the two operands of a residual add, a norm's weight and its channels);
- ``refine(x, c, block)``: axis ``x`` is acted on by ``c``'s permutation in blocks of ``block``
  (a flattened conv output: channels in blocks of H*W; attention features: heads in blocks of head_dim);
- ``fix(a)``: the axis must not be permuted at all (inputs, outputs, kernel taps, token positions,
  anything an op we cannot prove equivariant touches).

Fixing is always sound (it only removes symmetries), so every rule that is unsure fixes. Whatever is
left unfixed and reaches a parameter is a permutation group of the network.
"""
from __future__ import annotations


class Axes:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.refined: dict[int, tuple[int, int]] = {}  # root -> (coarse var, block)

    def new(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(bool(fixed))
        return len(self.parent) - 1

    def news(self, shape, fixed: bool = False) -> list[int]:
        return [self.new(s, fixed) for s in shape]

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:  # path compression
            self.parent[v], v = root, self.parent[v]
        return root

    def fix(self, *vs: int) -> None:
        for v in vs:
            self.fixed[self.find(v)] = True

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # cannot be the same axis: refuse both
            self.fixed[ra] = self.fixed[rb] = True
            return
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        fa, fb = self.refined.pop(ra, None), self.refined.pop(rb, None)
        if fa and fb:
            self.refined[ra] = fa
            if fa[1] == fb[1]:
                self.union(fa[0], fb[0])
            else:  # two incompatible block structures on one axis
                self.fix(ra, fa[0], fb[0])
        elif fa or fb:
            self.refined[ra] = fa or fb

    def refine(self, x: int, coarse: int, block: int) -> None:
        """``x`` is ``coarse`` acting in blocks of ``block`` (size(x) == size(coarse) * block)."""
        if block == 1:
            self.union(x, coarse)
            return
        rx = self.find(x)
        if self.size[rx] != self.size[self.find(coarse)] * block:
            self.fix(rx, coarse)
            return
        if rx in self.refined:
            c0, b0 = self.refined[rx]
            if b0 == block:
                self.union(c0, coarse)
            else:
                self.fix(rx, c0, coarse)
        else:
            self.refined[rx] = (coarse, block)

    def settle(self) -> None:
        """Fixedness flows both ways along refinements: a fixed fine axis fixes its coarse group and back."""
        changed = True
        while changed:
            changed = False
            for r, (c, _) in list(self.refined.items()):
                if self.find(r) != r:
                    continue
                rc = self.find(c)
                if self.fixed[r] != self.fixed[rc]:
                    self.fixed[r] = self.fixed[rc] = True
                    changed = True

    def resolve(self, v: int) -> tuple[int, int] | None:
        """(group root, block) acting on axis ``v``, or None when the axis is fixed. Call ``settle`` first."""
        r, block = self.find(v), 1
        for _ in range(64):  # refinement chains are short; the bound guards against a cycle
            if self.fixed[r]:
                return None
            if r not in self.refined:
                return r, block
            c, b = self.refined[r]
            r, block = self.find(c), block * b
        return None
