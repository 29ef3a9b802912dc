"""
The GPU run book's summary: reads the JSON files bench/gpu_check.sh's steps wrote into one folder,
prints the figures that matter, and writes them to summary.json beside them.

    python bench/gpu_summary.py OUT_DIR DRY_RUN(0|1) "FAILED;STEPS" "SKIPPED;STEPS"
"""

import json
import os
import sys


def read(out, name):
    path = os.path.join(out, name)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)


def percent(x):
    return f"{x * 100:+.1f}%" if isinstance(x, (int, float)) else "n/a"


def main():
    out, dry = sys.argv[1], sys.argv[2] == "1"
    failed, skipped = [s for s in sys.argv[3].split(";") if s], [s for s in sys.argv[4].split(";") if s]
    summary = {"dry_run": dry, "failed_steps": failed, "skipped_steps": skipped}
    e = read(out, "engines.json")
    if e:
        summary["engines"] = {"device": e["device"], "cases": len(e["results"]), "failed": e["failed"]}
        print(f"engines vs the float64 reference on {e['device']}: {len(e['results']) - len(e['failed'])} of "
              f"{len(e['results'])} cases agree" + (f"; OFF: {', '.join(e['failed'])}" if e["failed"] else ""))
    n = read(out, "nanogpt.json")
    if n:
        summary["nanogpt"] = {k: n[k] for k in ("ours_median_ms", "nanogpt_median_ms", "ratio_paired_median",
                                                "ratio_of_medians", "round_ratios")}
        print(f"train.py iteration: ours {n['ours_median_ms']:.1f} ms, nanoGPT {n['nanogpt_median_ms']:.1f} ms, "
              f"ours/nanoGPT {n['ratio_paired_median']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in n['round_ratios'])})")
    o = read(out, "overhead.json")
    if o:
        rows = o["results"]
        summary["train"] = {k: rows[0][k] for k in ("tokens_per_s", "ms_per_iter", "mfu", "peak_mem_mb")}
        summary["overhead"] = [{k: r.get(k) for k in ("label", "ms_per_iter", "mfu", "peak_mem_mb", "time_overhead",
                                                        "mem_overhead", "rounds_ms_per_iter")} for r in rows]
        for r in rows:
            mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
            print(f"training, {r['label']}: {r['ms_per_iter']:.1f} ms/iter ({percent(r['time_overhead'])}), "
                  f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak {r['peak_mem_mb']:.0f} MB "
                  f"({percent(r['mem_overhead'])})")
    d = read(out, "dispersion.json")
    if d:
        summary["dispersion"] = [{k: row.get(k) for k in ("variant", "median_s", "overhead", "share_of_ce_step", "error")}
                                 for row in d["results"]]
        for row in d["results"]:
            if "error" in row:
                print(f"dispersion: {row['variant']}: FAILED, {row['error']}")
                continue
            over, share = row.get("overhead"), row.get("share_of_ce_step")
            print(f"dispersion: {row['variant']}: {row['median_s'] * 1000:.2f} ms"
                  + (f", {over * 100:+.1f}% over the eager CE step" if isinstance(over, (int, float)) else "")
                  + (f", {share * 100:.1f}% of the eager CE step" if isinstance(share, (int, float)) else ""))
        if d.get("auto_choices"):
            summary["auto_choices"] = d["auto_choices"]
            for choice in d["auto_choices"]:
                print(f"dispersion: auto picked {choice['choice']} for {choice['key']}: {choice['ms']}")
    m = read(out, "modes.json")
    if m:
        summary["modes"] = {k: {"max_rel_diff_vs_eager": v["max_rel_diff_vs_eager"], "agrees": v["agrees"],
                                "ms_per_iter": v["ms_per_iter"]} for k, v in m["results"].items()}
        for k, v in m["results"].items():
            print(f"modes: {k}: {v['ms_per_iter']:.1f} ms/iter, losses vs eager: max relative difference "
                  f"{v['max_rel_diff_vs_eager']:.1e} ({'agree' if v['agrees'] else 'DIFFER'})")
    s = read(out, "eval/bench_eval.json")
    if s:
        summary["scorer"] = [{k: row[k] for k in ("task", "items", "ours_items_per_s", "lmeval_items_per_s", "speedup")}
                             for row in s["rows"]]
        for row in s["rows"]:
            print(f"scorer: {row['task']}: ours {row['ours_items_per_s']:.1f} items/s, lm-eval "
                  f"{row['lmeval_items_per_s']:.1f} items/s ({row['speedup']:.2f}x)")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"failed steps: {', '.join(failed) or 'none'}; skipped: {', '.join(skipped) or 'none'}; JSON in {out}")


if __name__ == "__main__":
    main()
