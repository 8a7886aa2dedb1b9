"""Compose a container's seccomp profile with interceptd's notify and deny rules.

The result refuses everything the profile refused, refuses what the deny list refuses,
and sends to the daemon (SCMP_ACT_NOTIFY) exactly the calls the profile let through
that the daemon vets, under the profile's own argument conditions.

Why it is built this way (libseccomp 2.5.4, which runc 1.1.5 and crun 1.8.1 both use;
checked with seccomp_export_pfc, tests/unit/test_seccomp_compose.py pins it): libseccomp
has no precedence between the rules of one syscall. An unconditional rule silently
replaces every conditional rule of that syscall, whatever the order or the actions (so
"ALLOW seccomp" plus "ERRNO seccomp if NEW_LISTENER" is a plain ALLOW); two rules with the
same conditions and different actions fail with EEXIST; overlapping conditional rules
with different actions are resolved by the shape of its decision tree, not by action.
The kernel's precedence (KILL > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW) only
applies between stacked filters, and an OCI runtime installs one.

So for every syscall interceptd touches, the rules written here never overlap with a
different action: each syscall has either one unconditional rule, or conditional rules
whose regions are disjoint except deny/deny overlaps (both refuse). A region that is not
the filter's default is written positively; the complement of a condition is computed
exactly (EQ<->NE, LT<->GE, LE<->GT, MASKED_EQ bit by bit), one comparison per argument
per rule (libseccomp's limit; runc and crun both split a rule with two comparisons on
one argument into an OR of one-comparison rules: a profile's such rule is read that way,
and none is written). What cannot be expressed exactly is refused
with the reason, never approximated in the weaker direction.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product

from .errors import Refused

DEFAULT_ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
DENY_ACTIONS = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                          "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"})
# TRACE counts as letting the call through: after a tracer's answer the kernel re-runs
# the filter and a second TRACE is taken as ALLOW (kernel >= 4.8), so the call would reach
# the kernel unvetted. NOTIFY replaces all three where the daemon vets the call.
PASS_ACTIONS = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"})
NOTIFY = "SCMP_ACT_NOTIFY"
U64 = (1 << 64) - 1
# Above this many rules for one syscall a complement is not worth it: a narrowed notify
# set is widened to the whole call instead (the handlers are correct for any argument).
MAX_RULES = 64
OPS = ("SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT",
       "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ")
_NEGATE = {"SCMP_CMP_EQ": "SCMP_CMP_NE", "SCMP_CMP_NE": "SCMP_CMP_EQ",
           "SCMP_CMP_LT": "SCMP_CMP_GE", "SCMP_CMP_GE": "SCMP_CMP_LT",
           "SCMP_CMP_LE": "SCMP_CMP_GT", "SCMP_CMP_GT": "SCMP_CMP_LE"}


class TooComplex(Exception):
    """A condition cannot be written as a small set of libseccomp rules."""


# ---------------------------------------------------------------- conditions

@dataclass(frozen=True)
class Cmp:
    """One comparison of a syscall argument. For MASKED_EQ, `value` is the mask and
    `value2` the datum, as in OCI (libseccomp: (arg & mask) == datum)."""

    index: int
    op: str
    value: int
    value2: int = 0

    @classmethod
    def from_oci(cls, a: dict) -> Cmp:
        op = a.get("op")
        if op not in OPS:
            raise Refused(f"seccomp profile: unknown comparison {op!r}")
        idx = int(a.get("index", -1))
        if not 0 <= idx <= 5:
            raise Refused(f"seccomp profile: argument index {idx} out of range")
        v2 = int(a.get("valueTwo", 0)) & U64 if op == "SCMP_CMP_MASKED_EQ" else 0
        return cls(idx, op, int(a.get("value", 0)) & U64, v2)

    def to_oci(self) -> dict:
        d = {"index": self.index, "value": self.value, "op": self.op}
        if self.op == "SCMP_CMP_MASKED_EQ":
            d["valueTwo"] = self.value2
        return d

    def holds(self, arg: int) -> bool:
        arg &= U64
        v = self.value
        return {"SCMP_CMP_EQ": arg == v, "SCMP_CMP_NE": arg != v, "SCMP_CMP_LT": arg < v,
                "SCMP_CMP_LE": arg <= v, "SCMP_CMP_GT": arg > v, "SCMP_CMP_GE": arg >= v,
                "SCMP_CMP_MASKED_EQ": (arg & v) == self.value2}[self.op]

    def negated(self) -> list[Cmp]:
        """Alternatives (an OR) that hold exactly where this comparison does not."""
        if self.op != "SCMP_CMP_MASKED_EQ":
            return [Cmp(self.index, _NEGATE[self.op], self.value)]
        mask, datum = self.value, self.value2
        if datum & ~mask:
            return [Cmp(self.index, "SCMP_CMP_MASKED_EQ", 0, 0)]  # never held: always
        # (arg & mask) != datum  <=>  some bit of the mask differs from the datum's.
        return [Cmp(self.index, "SCMP_CMP_MASKED_EQ", 1 << b, ~datum & (1 << b))
                for b in range(64) if mask >> b & 1]


# A conjunction: at most one comparison per argument index (libseccomp's rule shape).
Conj = dict[int, Cmp]
# A disjunction of conjunctions; [] is "never", [{}] is "always".
DNF = list[Conj]
ALWAYS: DNF = [{}]


def _merge_cmp(a: Cmp, b: Cmp) -> Cmp | None:
    """a AND b as one comparison; None when they never hold together.
    Raises TooComplex when the pair needs two comparisons on one argument."""
    if a == b:
        return a
    for x, y in ((a, b), (b, a)):
        if x.op == "SCMP_CMP_EQ":
            return x if y.holds(x.value) else None
    if a.op == b.op and a.op in ("SCMP_CMP_LT", "SCMP_CMP_LE"):
        return a if a.value <= b.value else b
    if a.op == b.op and a.op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
        return a if a.value >= b.value else b
    if a.op == b.op == "SCMP_CMP_MASKED_EQ":
        if a.value & a.value2 != a.value2 or b.value & b.value2 != b.value2:
            return None
        if a.value2 & b.value != b.value2 & a.value:
            return None
        return Cmp(a.index, a.op, a.value | b.value, a.value2 | b.value2)
    for x, y in ((a, b), (b, a)):
        # NE v beside a MASKED_EQ that v fails: the MASKED_EQ already excludes v.
        if x.op == "SCMP_CMP_MASKED_EQ" and y.op == "SCMP_CMP_NE" and not x.holds(y.value):
            return x
        if x.op == "SCMP_CMP_MASKED_EQ" and x.value == 0:
            return y if x.value2 == 0 else None
    raise TooComplex(f"two comparisons on argument {a.index} ({a.op}, {b.op})")


def conj_and(a: Conj, b: Conj) -> Conj | None:
    out = dict(a)
    for idx, c in b.items():
        if idx in out:
            m = _merge_cmp(out[idx], c)
            if m is None:
                return None
            out[idx] = m
        else:
            out[idx] = c
    # A MASKED_EQ with an empty mask and datum 0 always holds: drop it.
    return {i: c for i, c in out.items()
            if not (c.op == "SCMP_CMP_MASKED_EQ" and c.value == 0 and c.value2 == 0)}


def dnf_and(a: DNF, b: DNF, limit: int = MAX_RULES) -> DNF:
    if len(a) * len(b) > limit * 4:
        raise TooComplex("too many rules")
    out: DNF = []
    for x, y in product(a, b):
        m = conj_and(x, y)
        if m is not None and m not in out:
            out.append(m)
    if len(out) > limit:
        raise TooComplex("too many rules")
    return out


def dnf_not(d: DNF, limit: int = MAX_RULES) -> DNF:
    """The exact complement of a disjunction, as a disjunction."""
    out: DNF = ALWAYS
    for conj in d:
        if not conj:
            return []
        alts: DNF = [conj_and({}, {c.index: c}) or {}
                     for cmp in conj.values() for c in cmp.negated()]
        if {} in alts:
            continue  # this conjunction never holds: its complement is everything
        out = dnf_and(out, alts, limit)
    return out


def dnf_holds(d: DNF, args: list[int]) -> bool:
    return any(all(c.holds(args[i]) for i, c in conj.items()) for conj in d)


def _conj_from_args(args: list[dict] | None) -> Conj:
    """A rule's conditions (one comparison per argument) as one conjunction."""
    out: Conj = {}
    for a in args or []:
        c = Cmp.from_oci(a)
        m = conj_and(out, {c.index: c})
        if m is None:
            return {0: Cmp(0, "SCMP_CMP_MASKED_EQ", 0, 1)}  # never holds
        out = m
    return out


# ---------------------------------------------------------------- actions

@dataclass(frozen=True)
class Action:
    name: str
    errno: int | None = None

    @classmethod
    def of_rule(cls, rule: dict, default_errno: int = errno_mod.EPERM) -> Action:
        name = rule.get("action") or ""
        if name == "SCMP_ACT_ERRNO":
            ret = rule.get("errnoRet")
            return cls(name, int(ret) if ret is not None else default_errno)
        if name == "SCMP_ACT_TRACE":
            ret = rule.get("errnoRet")
            return cls(name, int(ret) if ret is not None else None)
        return cls(name)

    @property
    def denies(self) -> bool:
        return self.name in DENY_ACTIONS

    @property
    def passes(self) -> bool:
        return self.name in PASS_ACTIONS

    def rule(self, name: str, conj: Conj) -> dict:
        r: dict = {"names": [name], "action": self.name}
        if self.errno is not None:
            r["errnoRet"] = self.errno
        if conj:
            r["args"] = [conj[i].to_oci() for i in sorted(conj)]
        return r


# ---------------------------------------------------------------- composition

@dataclass
class Wanted:
    """What interceptd wants for one syscall: deny regions (errno, conditions) and the
    region to notify (None: not vetted)."""

    deny: list[tuple[int, Conj]]
    notify: DNF | None


def _wanted(notify_rules: Iterable[dict | str], deny_rules: Iterable[dict]
            ) -> dict[str, Wanted]:
    out: dict[str, Wanted] = {}
    for r in deny_rules:
        act = Action.of_rule(r)
        if act.name != "SCMP_ACT_ERRNO":
            raise ValueError(f"deny rule with action {act.name}")
        conj = _conj_from_args(r.get("args"))
        for n in r.get("names") or []:
            out.setdefault(n, Wanted([], None)).deny.append((act.errno or errno_mod.EPERM, conj))
    for r in notify_rules:
        if isinstance(r, str):
            r = {"names": [r], "action": NOTIFY}
        conj = _conj_from_args(r.get("args"))
        for n in r.get("names") or []:
            w = out.setdefault(n, Wanted([], None))
            w.notify = [*(w.notify or []), conj]
    return out


def _frozen(c: Conj) -> tuple:
    return tuple(sorted(c.items()))


def _rules_for(name: str, profile: list[tuple[Action, Conj]], default: Action,
               want: Wanted) -> list[dict]:
    """The rules for one touched syscall (see the module docstring for the invariant).
    Memoised: every container of an image brings the same profile."""
    key = (name, tuple((a, _frozen(c)) for a, c in profile), default,
           tuple((e, _frozen(c)) for e, c in want.deny),
           None if want.notify is None else tuple(_frozen(c) for c in want.notify))
    rules = _memo.get(key)
    if rules is None:
        # libseccomp refuses a rule whose action is the filter's default: leave those out.
        rules = tuple(r for r in _regions(name, profile, default, want)
                      if Action.of_rule(r) != default)
        if len(_memo) > 4096:
            _memo.clear()
        _memo[key] = rules
    # Copies: the caller's spec may be changed after this.
    return [dict(r, names=list(r["names"]), **({"args": [dict(a) for a in r["args"]]}
                                                if "args" in r else {}))
            for r in rules]


_memo: dict[tuple, tuple[dict, ...]] = {}


def _regions(name: str, profile: list[tuple[Action, Conj]], default: Action,
             want: Wanted) -> list[dict]:
    uncond = next((a for a, c in profile if not c), None)
    if uncond is not None:
        # libseccomp ignores the conditional rules beside an unconditional one.
        if uncond.denies:
            return [uncond.rule(name, {})]
        base, cond_rules = uncond, []
    else:
        base, cond_rules = default, profile

    hard = next((e for e, c in want.deny if not c), None)
    if hard is not None:
        return [Action("SCMP_ACT_ERRNO", hard).rule(name, {})]

    pdeny = [(a, c) for a, c in cond_rules if a.denies]
    ppass = [(a, c) for a, c in cond_rules if not a.denies]
    for a, _c in ppass:
        if not a.passes:
            raise Refused(f"seccomp profile: action {a.name} for {name} is not supported "
                          "by interceptd")
    # A profile's own conditional allow and deny rules for one call may overlap; the
    # libseccomp tree then picks one arbitrarily. Read them the safe way: deny wins.
    blocked: DNF = [c for _e, c in want.deny] + [c for _a, c in pdeny]

    def unblocked(region: DNF) -> DNF:
        """`region` minus what a deny rule matches; only the deny rules that can meet it
        are complemented (a profile's disjoint conditions need no complement)."""
        meets = [d for d in blocked if any(_overlap(c, d) for c in region)]
        return dnf_and(region, dnf_not(meets))

    out = [Action("SCMP_ACT_ERRNO", e).rule(name, c) for e, c in want.deny]
    out += [a.rule(name, c) for a, c in pdeny]

    notify = want.notify

    def split(region: DNF, action: Action) -> list[dict]:
        """Rules for `region`, where the profile answers `action` (a pass): NOTIFY on
        the vetted part, `action` on the rest (left to the default when it is one)."""
        if notify is None:
            return [] if action == default else [action.rule(name, c) for c in region]
        everything = [Action(NOTIFY).rule(name, c) for c in region]
        if notify == ALWAYS:
            return everything
        try:
            vetted = [Action(NOTIFY).rule(name, c) for c in dnf_and(region, notify)]
            if action == default:
                return vetted
            return vetted + [action.rule(name, c)
                             for c in dnf_and(region, dnf_not(notify))]
        except TooComplex:
            # The handlers take any argument: vet the whole region rather than write
            # a narrowed notify set that does not fit beside the profile's conditions.
            return everything

    try:
        # The profile's conditional pass rules: NOTIFY where vetted, their action elsewhere.
        for a, c in ppass:
            out.extend(split(unblocked([c]), a))
        # What no profile rule matched falls to `base`.
        if base.passes and (notify is not None or base != default):
            out.extend(split(unblocked(dnf_not([c for _a, c in ppass])), base))
    except TooComplex as e:
        raise Refused(f"seccomp profile: the argument conditions on {name} cannot be "
                      f"combined with interceptd's rules ({e})") from None
    return out


def _overlap(a: Conj, b: Conj) -> bool:
    try:
        return conj_and(a, b) is not None
    except TooComplex:
        return True


def _check_no_listener(sc: dict) -> None:
    for key in ("listenerPath", "listenerMetadata"):
        if sc.get(key):
            raise Refused(
                f"the config's seccomp profile brings its own listener ({key}="
                f"{sc[key]!r}): the kernel allows one seccomp listener per filter chain, "
                "and interceptd's daemon is this container's; a profile with its own "
                "notify agent cannot run under interceptd")
    for r in sc.get("syscalls") or []:
        if r.get("action") == NOTIFY:
            raise Refused(
                "the config's seccomp profile has SCMP_ACT_NOTIFY rules for "
                f"{', '.join(r.get('names') or [])}: they need its own listener, and the "
                "kernel allows one per filter chain (interceptd's daemon is this "
                "container's)")


def compose(sc: dict, notify_rules: Iterable[dict | str], deny_rules: Iterable[dict],
            listener_path: str, metadata: str) -> dict:
    """A new seccomp section: `sc` (not changed) unweakened, plus notify and deny."""
    _check_no_listener(sc)
    default_name = sc.get("defaultAction") or ""
    if default_name == NOTIFY or not (default_name in DENY_ACTIONS
                                      or default_name in PASS_ACTIONS):
        raise Refused(f"seccomp profile: defaultAction {default_name!r} is not supported "
                      "by interceptd")
    default = Action.of_rule({"action": default_name, "errnoRet": sc.get("defaultErrnoRet")})
    wanted = _wanted(notify_rules, deny_rules)

    kept: list[dict] = []
    per_name: dict[str, list[tuple[Action, Conj]]] = {n: [] for n in wanted}
    for r in sc.get("syscalls") or []:
        names = r.get("names") or []
        touched = [n for n in names if n in wanted]
        rest = [n for n in names if n not in wanted]
        if rest:
            kept.append(dict(r, names=rest))
        if not touched:
            continue
        act = Action.of_rule(r)
        # Two comparisons on one argument: runc 1.1.5 and crun 1.8.1 both add one rule
        # per comparison, an OR (runc's seccomp test profiles rely on it; checked here).
        conjs = ([_conj_from_args([a]) for a in r["args"]]
                 if _dup_index(r.get("args")) else [_conj_from_args(r.get("args"))])
        for n in touched:
            per_name[n].extend((act, c) for c in conjs)

    out = dict(sc)
    rules = kept
    for n in sorted(wanted):
        rules.extend(_rules_for(n, per_name[n], default, wanted[n]))
    out["syscalls"] = rules
    if not out.get("architectures"):
        out["architectures"] = list(DEFAULT_ARCHES)
    out["listenerPath"] = listener_path
    out["listenerMetadata"] = metadata
    return out


def _dup_index(args: list[dict] | None) -> bool:
    seen = [a.get("index") for a in args or []]
    return len(seen) != len(set(seen))


# ---------------------------------------------------------------- evaluation

def decide(sc: dict, name: str, args: list[int]) -> Action:
    """What a filter built from `sc` by libseccomp answers for one call, on the
    composer's invariant (an unconditional rule wins; else the matching conditional
    rule, deny before pass when several match). For tests."""
    default = Action.of_rule({"action": sc.get("defaultAction"),
                              "errnoRet": sc.get("defaultErrnoRet")})
    hits: list[Action] = []
    for r in sc.get("syscalls") or []:
        if name not in (r.get("names") or []):
            continue
        act = Action.of_rule(r)
        if not r.get("args"):
            return act
        if _dup_index(r["args"]):
            if any(Cmp.from_oci(a).holds(args[int(a["index"])]) for a in r["args"]):
                hits.append(act)
        elif all(Cmp.from_oci(a).holds(args[int(a["index"])]) for a in r["args"]):
            hits.append(act)
    for a in hits:
        if a.denies:
            return a
    return hits[0] if hits else default
