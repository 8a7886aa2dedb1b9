"""The composition check the seccomp tests share (pure logic, no kernel).

`check(profile)` composes `profile` with interceptd's notify and deny rules and, for every
syscall those rules touch, decides many argument vectors (around every comparison, upper
halves set too) against both the composed filter and the profile alone: what the profile
refused stays refused with its own action, what the deny list refuses is refused, what
is notified is notified, the rest answers as the profile does. Used by
tests/unit/test_seccomp_compose.py and, on Docker's captured profiles,
tests/integration/test_seccomp_compose_docker.py."""

from __future__ import annotations

import itertools
import random

from interceptd import policy
from interceptd.runtime.seccomp import NOTIFY, Action, Cmp, compose, decide

U64 = (1 << 64) - 1
NOTIFY_RULES = policy.notify_rules(None)
DENY_RULES = policy.denied_syscalls(None)


def touched(notify=NOTIFY_RULES, deny=DENY_RULES) -> set[str]:
    return {n for r in [*notify, *deny] for n in r["names"]}


def samples(rules: list[dict]) -> list[list[int]]:
    """Argument vectors around every comparison in `rules`, with upper halves set too."""
    per_index: dict[int, set[int]] = {i: {0, 1, 0xFFFFFFFF, U64} for i in range(6)}
    for r in rules:
        for a in r.get("args") or []:
            i, v, v2 = a["index"], a["value"], a.get("valueTwo", 0)
            vals = {v, v + 1, max(v - 1, 0), v2, v | 0xFFFFFFFF00000000}
            if a["op"] == "SCMP_CMP_MASKED_EQ":
                vals |= {v2 ^ (1 << b) for b in range(64) if v >> b & 1}
                vals |= {(v2 | 0xFFFF0000_00000000), v2 ^ v}
            per_index[i] |= {x & U64 for x in vals}
    rng = random.Random(8)
    out = [[0] * 6]
    for i, vals in per_index.items():
        for x in vals:
            vec = [0] * 6
            vec[i] = x
            out.append(vec)
    idx = [i for i in per_index if len(per_index[i]) > 4]
    for i, j in itertools.combinations(idx, 2):
        for x, y in itertools.product(sorted(per_index[i]), sorted(per_index[j])):
            vec = [0] * 6
            vec[i], vec[j] = x, y
            out.append(vec)
    for _ in range(300):
        out.append([rng.choice(sorted(per_index[i])) for i in range(6)])
    return out


def matching(sc: dict, name: str, args: list[int]) -> list[tuple[Action, bool]]:
    """Every rule of `name` that matches: (action, unconditional)."""
    out = []
    for r in sc["syscalls"]:
        if name in r["names"] and all(Cmp.from_oci(a).holds(args[a["index"]])
                                      for a in r.get("args") or []):
            out.append((Action.of_rule(r), not r.get("args")))
    return out


def check(profile: dict, notify=NOTIFY_RULES, deny=DENY_RULES) -> dict:
    before = repr(profile)
    out = compose(profile, notify, deny, "/l", "m")
    assert repr(profile) == before  # the caller's profile is not changed
    for name in sorted(touched(notify, deny)):
        n_rules = [r for r in notify if name in r["names"]]
        d_rules = [r for r in deny if name in r["names"]]
        p_rules = [r for r in profile.get("syscalls", []) if name in r["names"]]
        mine = [r for r in out["syscalls"] if name in r["names"]]
        # The invariant libseccomp needs: never an unconditional rule beside others, and
        # no two matching rules with different actions unless both refuse.
        if any(not r.get("args") for r in mine):
            assert len(mine) == 1, (name, mine)
        for args in samples(p_rules + n_rules + d_rules):
            hits = matching(out, name, args)
            acts = {a for a, _ in hits}
            assert len(acts) <= 1 or all(a.denies for a in acts), (name, args, hits)
            got = decide(out, name, args)
            orig = decide(profile, name, args)
            denied = any(all(Cmp.from_oci(a).holds(args[a["index"]])
                             for a in r.get("args") or []) for r in d_rules)
            notified = any(all(Cmp.from_oci(a).holds(args[a["index"]])
                               for a in r.get("args") or []) for r in n_rules)
            ctx = (name, [hex(x) for x in args], orig, got)
            if orig.denies:
                assert got == orig or (denied and got.denies), ctx
            elif denied:
                assert got.denies, ctx
            elif notified:
                assert got.name == NOTIFY, ctx
            elif n_rules:
                # A narrowed notify set may be widened (the handlers take any argument).
                assert got in (orig, Action(NOTIFY)), ctx
            else:
                assert got == orig, ctx
    return out
