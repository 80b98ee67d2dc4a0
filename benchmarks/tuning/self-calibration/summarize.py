"""Markdown tables from evaluate.py's JSON lines: one row per (pair, scenario, method), means
over seeds, the gate's verdicts counted.

    .venv/bin/python benchmarks/tuning/self-calibration/summarize.py results.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from statistics import mean

ORDER = ("retrain", "feature-constraint", "projected-gradient", "deepclean")


def main(path: str) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    with open(path) as lines:
        for line in lines:
            row = json.loads(line)
            groups[(row["pair"], row["split"], row["scenario"], row["method"])].append(row)
    print("| pair | split | scenario | method | gate passed | forget / retain / test (base test) "
          "| MIA D_f / held-out | method s | retrain s | speed-up | failed criteria |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], ORDER.index(k[3]))):
        rows = groups[key]
        passed = sum(r["passed"] for r in rows)
        method_s = mean(r["seconds"] for r in rows)
        retrain_s = mean(r["retrain_seconds"] for r in rows)
        mia = ("–" if rows[0]["mia_forget"] is None else
               f"{mean(r['mia_forget'] for r in rows):.0f} / "
               f"{mean(r['mia_held_out'] for r in rows):.0f}")
        failed = sorted({name for r in rows for name in r["failed"]})
        speed = "" if key[3] == "retrain" else f"{retrain_s / max(method_s, 1e-9):.1f}"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {passed}/{len(rows)} | "
              f"{mean(r['forget'] for r in rows):.1f} / {mean(r['retain'] for r in rows):.1f} / "
              f"{mean(r['test'] for r in rows):.1f} ({mean(r['base_test'] for r in rows):.1f}) | "
              f"{mia} | {method_s:.2f} | {retrain_s:.1f} | {speed} | {', '.join(failed)} |")


if __name__ == "__main__":
    main(sys.argv[1])
