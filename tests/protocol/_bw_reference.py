"""The former unmask decoder, Berlekamp-Welch by Gauss-Jordan elimination over GF(PRIME)
(O(m^3) field operations): the reference `protocol.secagg._shamir._berlekamp_welch` (syndrome
decoding, O(m^2)) is tested against. It left the library in 2026-11 (helper-224 replaced it;
the library never called it after that)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.secagg._shamir import PRIME


def _solve_mod(rows: list[list[int]], rhs: list[int]) -> list[int] | None:
    """One solution of rows @ v = rhs over GF(PRIME) (free unknowns set to 0), or None if the
    system is inconsistent. Gauss-Jordan elimination: O(m n^2) field operations."""
    n, m = len(rows[0]), len(rows)
    a = [r[:] + [b] for r, b in zip(rows, rhs, strict=True)]
    pivot_row = [-1] * n
    row = 0
    for col in range(n):
        piv = next((r for r in range(row, m) if a[r][col]), None)
        if piv is None:
            continue
        a[row], a[piv] = a[piv], a[row]
        inv = pow(a[row][col], -1, PRIME)
        a[row] = [v * inv % PRIME for v in a[row]]
        for r in range(m):
            f = a[r][col]
            if r != row and f:
                a[r] = [(v - f * w) % PRIME for v, w in zip(a[r], a[row], strict=True)]
        pivot_row[col] = row
        row += 1
        if row == m:
            break
    if any(a[r][n] for r in range(row, m)):  # 0 = nonzero: no solution
        return None
    return [a[pivot_row[c]][n] if pivot_row[c] >= 0 else 0 for c in range(n)]


def _berlekamp_welch_solve(
    xs: Sequence[int], ys: Sequence[int], k: int, e: int
) -> list[int] | None:
    """The former decoder, Berlekamp-Welch by Gauss-Jordan elimination (O(m^3)).

    Solves Q(x_i) = y_i E(x_i) for Q of degree < k + e and a monic E of degree e (E vanishes on
    the wrong points); then P = Q / E must divide exactly.
    """
    rows, rhs = [], []
    for x, y in zip(xs, ys, strict=True):
        powers = [pow(x, j, PRIME) for j in range(k + e + 1)]
        rows.append(powers[: k + e] + [(-y * powers[j]) % PRIME for j in range(e)])
        rhs.append(y * powers[e] % PRIME)
    sol = _solve_mod(rows, rhs)
    if sol is None:
        return None
    q, err = sol[: k + e], [*sol[k + e :], 1]
    # Long division of q by the monic err: quotient of degree < k, remainder must vanish.
    rem = q[:]
    quot = [0] * max(len(q) - e, 1)
    for i in range(len(q) - 1, e - 1, -1):
        c = rem[i]
        if c:
            quot[i - e] = c
            for j in range(e + 1):
                rem[i - e + j] = (rem[i - e + j] - c * err[j]) % PRIME
    if any(rem[:e]):
        return None
    return quot[:k]
