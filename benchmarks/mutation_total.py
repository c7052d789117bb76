"""The mutation score of all modules together, from the latest run of each (whole module or seeded sample).

    python benchmarks/mutation_total.py [benchmarks/measurements/mutation/summary.csv]

The CSV has one row per module, written by hand from that run's report and its survivors' judgements
(tests/README.md): `mutants` (the module's mutants outside deferred annotations), `tested` (mutants of the run with a
verdict), `equivalent` (of those, judged equivalent) and `killed` (non-equivalent mutants killed by the suite as it was
when the run started; survivors killed by later tests do not count here).

A whole-module run gives its score exactly. A sample gives an estimate: its module's score is drawn from the Jeffreys
posterior Beta(killed + 1/2, survived + 1/2). The total weights each module by its estimated number of non-equivalent
mutants and is printed with a 95% interval from 200,000 seeded draws (stratified sampling; conservative in that it
ignores the finite-population correction). Tests written after a run only raise the score, so the total estimates
the suite's score from below.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parent / "measurements" / "mutation" / "summary.csv"
COUNTS = ("mutants", "tested", "equivalent", "killed")


def load(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                r = {"module": row["module"], "run": row["run"], **{k: int(row[k]) for k in COUNTS}}
            except (KeyError, ValueError) as e:
                raise SystemExit(f"{path}:{i}: needs integer columns {', '.join(COUNTS)} ({e})") from None
            if not 0 <= r["killed"] <= r["tested"] - r["equivalent"] <= r["tested"] <= r["mutants"]:
                raise SystemExit(f"{path}:{i}: expected 0 <= killed <= tested - equivalent <= tested <= mutants")
            if (r["run"] == "whole") != (r["tested"] == r["mutants"]):
                raise SystemExit(f"{path}:{i}: run 'whole' means tested == mutants, and only then")
            rows.append(r)
    return rows


def total(rows: list[dict], draws: int = 200_000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5% quantile, 97.5% quantile) of the killed share of all non-equivalent mutants."""
    rng = np.random.default_rng(seed)
    weights, scores, sims = [], [], []
    for r in rows:
        decided = r["tested"] - r["equivalent"]
        weights.append(r["mutants"] * decided / r["tested"])  # the module's non-equivalent mutants, estimated
        scores.append(r["killed"] / decided)
        if r["run"] == "whole":
            sims.append(np.full(draws, scores[-1]))
        else:
            sims.append(rng.beta(r["killed"] + 0.5, decided - r["killed"] + 0.5, draws))
    w = np.asarray(weights) / sum(weights)
    mixed = w @ np.vstack(sims)
    return float(w @ np.asarray(scores)), float(np.quantile(mixed, 0.025)), float(np.quantile(mixed, 0.975))


def main(argv: list[str]) -> int:
    rows = load(Path(argv[0]) if argv else DEFAULT)
    for r in rows:
        decided = r["tested"] - r["equivalent"]
        print(f"{r['module']:28s} {r['run']:12s} {r['killed']:4d} of {decided:4d} killed ({r['mutants']} mutants)")
    print(f"all modules: {sentence(*total(rows))}")
    return 0


def sentence(est: float, low: float, high: float) -> str:
    """How tests/README.md quotes the total (a test checks that it quotes the current one)."""
    return f"{100 * est:.1f}% of non-equivalent mutants killed (95% interval {100 * low:.1f}-{100 * high:.1f}%)"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
