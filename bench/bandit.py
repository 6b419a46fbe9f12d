"""Self-tuning variants against a known ground truth: cumulative regret of ``selection =
"bandit"`` against a fixed 50/50 split.

Two variants of one send step are clicked at known rates (4 % and 5 % by default). People
arrive evenly, ``--per-day`` a day, ``--people`` in all; each one's variant is decided by the
real :func:`~rtserver.engine.decide.decide` on a compiled workflow (the same Thompson draw,
seeded by the person and the step, and the same floor as the server), with the arms' counts
as they stand when the person arrives. A click, drawn from the true rate of the variant sent,
reaches the counts ``--delay-days`` later (the reward delay).

Regret is the expected clicks lost against always sending the better variant: the sum over
mails of (the better rate - the rate of the variant sent). A fixed 50/50 split loses half the
difference on every mail (``people * 0.01 / 2`` = 100 clicks at the defaults). Thompson
sampling's regret varies a lot from one run to the next, so each policy runs ``--seeds``
times and the table gives the mean, the median and the 10th-90th percentiles.

    python -m bench.bandit                  # 20,000 people, 20 seeds (about a minute)
    python -m bench.bandit --quick --json   # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from typing import Any

from bench._common import Column, document, emit, format_table
from rtserver.config.schema import IngestConfig
from rtserver.engine.decide import decide
from rtserver.engine.definitions import Policy, Workflows, compile_workflows
from rtserver.model import Facts, Person, SendMail, parse_event

DAY_S = 86400.0
COLUMNS = [
    Column("policy", "policy"),
    Column("runs", "runs"),
    Column("mean", "regret (mean)", "{:.1f}"),
    Column("median", "median", "{:.1f}"),
    Column("p10_p90", "10th-90th"),
    Column("ratio", "mean / fixed", "{:.2f}"),
    Column("better_share", "to the better", "{:.1%}"),
    Column("clicks", "clicks (mean)", "{:,.0f}"),
]


def workflow(selection: str, floor: float) -> Workflows:
    """One ``send`` step with variants A and B, split 50/50 or by the bandit."""
    step: dict[str, Any] = {"variant": [{"send": "a", "name": "A"}, {"send": "b", "name": "B"}]}
    if selection == "bandit":
        step |= {"selection": "bandit", "goal": "clicked", "floor": floor}
    raw = {"name": "w", "trigger": "Signed Up", "step": [step]}
    rules, _ = compile_workflows([raw], policy=Policy(frequency_cap_s=0.0))
    return rules


def run(rules: Workflows, args: argparse.Namespace, seed: int) -> dict[str, float]:
    """One simulated stream of people: regret, clicks and the better arm's share."""
    rng = random.Random(seed)
    rates = {"A": args.rates[0], "B": args.rates[1]}
    best = max(rates.values())
    counts = {("w", 0, name): (0, 0) for name in rates}
    arriving: list[tuple[float, str]] = []  # (when its click reaches the counts, variant)
    regret, clicks, better = 0.0, 0, 0
    config = IngestConfig()
    for i in range(args.people):
        now = i * DAY_S / args.per_day
        while arriving and arriving[0][0] <= now:
            _, name = heapq.heappop(arriving)
            sends, successes = counts[("w", 0, name)]
            counts[("w", 0, name)] = (sends, successes + 1)
        user = f"s{seed}p{i}"
        event = parse_event(
            {"type": "track", "event": "Signed Up", "userId": user, "messageId": user},
            config,
            source="server",
        )
        facts = Facts(Person(f"u:{user}", email=f"{user}@example.com", consent="confirmed_opt_in"))
        actions = decide(rules, event, facts, now, tallies=counts)
        (name,) = [a.variant for a in actions if isinstance(a, SendMail)]
        sends, successes = counts[("w", 0, name)]
        counts[("w", 0, name)] = (sends + 1, successes)
        regret += best - rates[name]
        better += rates[name] == best
        if rng.random() < rates[name]:
            clicks += 1
            heapq.heappush(arriving, (now + args.delay_days * DAY_S, name))
    return {"regret": regret, "clicks": clicks, "better": better / args.people}


def summarise(policy: str, runs: list[dict[str, float]], fixed: float | None) -> dict[str, Any]:
    regrets = sorted(r["regret"] for r in runs)
    deciles = statistics.quantiles(regrets, n=10) if len(regrets) > 1 else regrets * 9
    mean = statistics.fmean(regrets)
    return {
        "policy": policy,
        "runs": len(runs),
        "mean": mean,
        "median": statistics.median(regrets),
        "p10_p90": f"{deciles[0]:.0f}-{deciles[-1]:.0f}",
        "ratio": mean / fixed if fixed else 1.0,
        "better_share": statistics.fmean(r["better"] for r in runs),
        "clicks": statistics.fmean(r["clicks"] for r in runs),
    }


def simulate(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    seeds = range(args.seed, args.seed + args.seeds)
    fixed_runs = [run(workflow("weights", 0.0), args, seed) for seed in seeds]
    fixed = statistics.fmean(r["regret"] for r in fixed_runs)
    results = [summarise("fixed 50/50", fixed_runs, fixed)]
    for floor in args.floors:
        rules = workflow("bandit", floor)
        runs = [run(rules, args, seed) for seed in seeds]
        results.append(summarise(f"bandit, floor {floor:g}", runs, fixed))
    default = next(r for r in results if r["policy"] == f"bandit, floor {args.floors[0]:g}")
    goals = {
        "mean_under_half": default["ratio"] < 0.5,
        "median_under_half": default["median"] < fixed / 2,
    }
    summary = {"fixed_regret": fixed, "goals": goals, "goal_met": goals["mean_under_half"]}
    lines = [
        f"Bandit: {args.people:,} people at {args.per_day:,} a day, click rates "
        f"{args.rates[0]:.0%} and {args.rates[1]:.0%}, reward delay {args.delay_days:g} day(s), "
        f"{args.seeds} seeds from {args.seed}; regret in expected clicks lost",
        format_table(results, COLUMNS),
        "goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in goals.items()),
    ]
    return document("bandit", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--per-day", type=int, default=1000)
    parser.add_argument("--delay-days", type=float, default=1.0)
    parser.add_argument("--rates", type=float, nargs=2, default=[0.04, 0.05])
    parser.add_argument("--floors", type=float, nargs="+", default=[0.1, 0.05, 0.0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2,000 people, 2 seeds (smoke)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.quick:
        args.people, args.per_day, args.seeds, args.floors = 2000, 500, 2, [0.1]
    return args


def main() -> int:
    args = parse_args()
    emit(*simulate(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
