"""``pobench check --baseline B [--current C]``: fail (exit 1) when a metric regressed, with a known
family-wise false-alarm rate; ``--simulate N`` measures that rate and the power on B's stored samples."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="compare a leaderboard with a baseline; exit 1 on a statistically significant regression",
        description="One one-sided test per (row, metric) with a direction, KL included (a rise is a regression): "
                    "paired over prompts on the per-sample files (runs/*.samples.jsonl.gz next to each "
                    "leaderboard) when both sides have them and share a seed; with >= 3 shared seeds a t-test over "
                    "seeds, with 2 a hierarchical bootstrap; unpaired (leaderboard standard errors) otherwise, "
                    "and the output says so. Holm over all tests: a regression is a Holm-adjusted p < --alpha. "
                    "Prints what moved. Exit codes: 0 ok, 1 regression or missing row, 2 bad input. "
                    "--simulate N: instead, measure the family-wise false-alarm rate over N simulated null "
                    "comparisons built from the baseline's stored samples and the power to flag DPO's gain over "
                    "the reference halved; writes --out (JSON).")
    parser.add_argument("--baseline", required=True, help="baseline leaderboard.json (or its directory)")
    parser.add_argument("--current", help="current leaderboard.json (default: the fresh run of the baseline's "
                                          "suite, $POBENCH_WORK_DIR/results/<suite>/leaderboard.json, ./runs when unset)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="family-wise false-alarm rate, Holm over every test (default: 0.05)")
    parser.add_argument("--confidence", type=float, default=None,
                        help="older spelling: --alpha = 1 - confidence")
    parser.add_argument("--abs-tol", type=float, default=0.0,
                        help="a drop (in the bad direction) up to this much is not a regression (default: 0)")
    parser.add_argument("--rel-tol", type=float, default=0.0,
                        help="likewise, relative to |baseline| (default: 0)")
    parser.add_argument("--kl-tol", type=float, default=0.0,
                        help="extra slack for KL, nats/seq: a KL rise up to this much is not a regression (default: 0)")
    parser.add_argument("--metrics", help="comma-separated metrics to check (default: every metric with a "
                                          "direction, kl included)")
    parser.add_argument("--allow-missing", action="store_true", help="rows/metrics absent from current are "
                                                                     "reported, not failures")
    parser.add_argument("--unpaired", action="store_true",
                        help="ignore the per-sample files: unpaired tests from the leaderboards' standard errors")
    parser.add_argument("--all", action="store_true", help="print every comparison, not only what moved")
    parser.add_argument("--simulate", type=int, metavar="N",
                        help="measure the error rates over N simulated null comparisons (>= 200 recommended)")
    parser.add_argument("--inject-row", help="--simulate: the row whose gain over the reference is cut for the "
                                             "power (default: the final point of the first dpo row)")
    parser.add_argument("--sim-seed", type=int, default=0, help="--simulate: random seed (default: 0)")
    parser.add_argument("--null", choices=["sample", "prompt"],
                        help="--simulate: null scheme, sample split (needs >= 2 samples per prompt) or prompt split "
                             "(default: sample split when possible)")
    parser.add_argument("--out", help="--simulate: output JSON (default: results/perf/check_error_rates-<suite>.json)")
    parser.set_defaults(func=main)


def _load(args: argparse.Namespace):
    from bench.leaderboard import load_leaderboard

    baseline = load_leaderboard(args.baseline)
    # default: the fresh run of the baseline's suite (pobench run writes <work_dir>/results/<suite>/, never
    # the committed results/<suite>/ the baseline usually is)
    work_dir = Path(os.environ.get("POBENCH_WORK_DIR") or "runs")
    current_path = args.current or (None if args.simulate else work_dir / "results" / baseline["suite"] / "leaderboard.json")
    current = load_leaderboard(current_path) if current_path else None
    return baseline, current, current_path


def main(args: argparse.Namespace) -> int:
    from bench.check import compare, evidence_of, family_size, format_table, load_samples, results_dir_of

    try:
        baseline, current, current_path = _load(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pobench check: {exc}", file=sys.stderr)
        return 2
    if args.alpha is not None and args.confidence is not None:
        print("pobench check: give --alpha or --confidence, not both", file=sys.stderr)
        return 2
    alpha = args.alpha if args.alpha is not None else 1 - args.confidence if args.confidence is not None else 0.05
    if not 0 < alpha < 1:
        print("pobench check: --alpha must be in (0, 1) (--confidence likewise)", file=sys.stderr)
        return 2
    if args.simulate is not None and args.simulate < 1:
        print("pobench check: --simulate needs N >= 1", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    options = dict(alpha=alpha, abs_tol=args.abs_tol, rel_tol=args.rel_tol, kl_tol=args.kl_tol, metrics=metrics)

    try:
        base_samples, base_notes = ({}, []) if args.unpaired else load_samples(results_dir_of(args.baseline))
        cur_samples, cur_notes = ({}, []) if args.unpaired or current is None else \
            load_samples(results_dir_of(current_path))
    except (OSError, ValueError) as exc:
        print(f"pobench check: cannot read the per-sample files: {exc}", file=sys.stderr)
        return 2
    base_ev, cur_ev = evidence_of(base_samples), evidence_of(cur_samples)

    real = None
    if current is not None:
        real = compare(baseline, current, allow_missing=args.allow_missing, baseline_evidence=base_ev,
                       current_evidence=cur_ev, **options)
    if args.simulate is not None:
        return _simulate(args, baseline, base_samples, base_notes, real, current_path, options)

    failed = [c for c in real if c.failed]
    moved = [c for c in real if c.status not in ("ok", "info")]
    print(f"baseline {args.baseline} (config {baseline.get('config_hash')}) vs current {current_path} "
          f"(config {current.get('config_hash')})")
    if baseline.get("config_hash") != current.get("config_hash"):
        print("note: the suites' config hashes differ: the comparison may not be like for like")
    tested = [c for c in real if c.p_holm is not None]
    kinds: dict[str, int] = {}
    for c in tested:
        kinds[c.test] = kinds.get(c.test, 0) + 1
    exact = len(tested) - family_size(real)
    print(f"tests: {len(tested)} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f"); Holm over "
          f"{family_size(real)} at family-wise alpha {alpha:g}"
          + (f", {exact} exact (no spread: identical values, decided as they are)" if exact else ""))
    if args.unpaired:
        print("note: --unpaired: per-sample files ignored")
    else:
        for side, notes, samples in (("baseline", base_notes, base_samples), ("current", cur_notes, cur_samples)):
            if notes:
                print(f"note: {side}: {len(notes)} run(s) without per-sample files, compared unpaired "
                      f"(e.g. {notes[0]})")
            elif not samples:
                print(f"note: {side}: no per-sample files (runs/*.samples.jsonl.gz): every test is unpaired")
    if any(c.test == "paired t" for c in tested):
        print("note: one shared seed: the paired test covers evaluation noise, not training-run variation "
              "(run >= 3 seeds for that)")
    if args.all or moved:
        print(format_table(real, only_moved=not args.all))
    untested = sum(c.status == "no-se" for c in real)
    if untested:
        print(f"note: {untested} changed metric(s) have no standard error on either side (single-seed "
              "corpus-level values): not tested; add seeds, or give --abs-tol/--rel-tol")
    if failed:
        print(f"FAIL: {len(failed)} of {len(tested) + sum(c.status == 'missing' for c in real)} checked metric(s) "
              "regressed or are missing")
        return 1
    print(f"OK: {len(tested)} checked metric(s), none regressed beyond tolerance "
          f"({sum(c.status == 'improved' for c in real)} improved)")
    return 0


def _simulate(args, baseline, samples, notes, real, current_path, options) -> int:
    from bench.check import simulate_error_rates, summarize_real
    from bench.store import atomic_write_json

    if not samples:
        print(f"pobench check: --simulate needs the baseline's per-sample files ({args.baseline}: none)",
              file=sys.stderr)
        return 2
    try:
        report = simulate_error_rates(baseline, samples, n_null=args.simulate, inject_row=args.inject_row,
                                      seed=args.sim_seed, scheme=f"{args.null} split" if args.null else None,
                                      **options)
    except ValueError as exc:
        print(f"pobench check: {exc}", file=sys.stderr)
        return 2
    report["baseline"] = _shown(args.baseline)
    report["notes"] = notes
    if real is not None:
        report["real_rerun"] = {"current": _shown(current_path), **summarize_real(real)}
    out = Path(args.out or Path("results") / "perf" / f"check_error_rates-{baseline.get('suite')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    fa = report["false_alarm"]
    print(f"false alarms: {fa['count']}/{fa['n']} = {fa['rate']:.3f} (95% CI {fa['ci95'][0]:.3f}-{fa['ci95'][1]:.3f}; "
          f"target <= 0.05; the previous check: {report['legacy_false_alarm']['rate']:.3f}) over families of "
          f"{report['data']['family_size']['max']} tests")
    power = report["power"]
    if power.get("halved_gain"):
        h = power["halved_gain"]
        print(f"power: {power['row']} {power['metric']} gain {power['gain_over_reference']['gain']:+.4f} over the "
              f"reference; halved (drop {h['drop']:.4f}): {h['power']['rate']:.3f} (target >= 0.8; the previous "
              f"check: {h['legacy_power']:.3f}); paired se of the test {power['paired_se_of_the_test']}")
        for c in power["curve"]:
            print(f"  drop {c['fraction']:.2f} x gain = {c['drop']:.4f}: power {c['power']['rate']:.3f}")
    else:
        print(f"power: {power.get('note')}")
    if real is not None:
        r = report["real_rerun"]
        print(f"real re-run {current_path}: {r['tests']} tests, failed {r['failed'] or 'none'}, "
              f"min Holm p {r['min_p_holm']}")
    print(f"written: {out}")
    print(json.dumps({"false_alarm": fa["rate"], "power_halved": (power.get("halved_gain") or {}).get(
        "power", {}).get("rate")}))
    return 0


def _shown(path) -> str:
    """A path for a committed report: relative to the working directory, else its last two parts (no
    absolute path of this machine)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return "/".join(("...",) + p.parts[-2:])
