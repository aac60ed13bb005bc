#!/usr/bin/env python3
"""Plots and a summary table from a bench/run.py results JSON.

usage: plot.py RESULTS.json [--outdir DIR] [--readme bench/README.md]
Writes DIR/bw_vs_size.png, DIR/latency_cdf.png and DIR/summary.md (DIR defaults to the JSON's
folder). With --readme, the summary replaces the part of that file (the top-level README)
between the `<!-- results:begin -->` and `<!-- results:end -->` markers. summary.md is written
even when matplotlib is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

BW_TESTS = {"write_bw": "RDMA WRITE", "read_bw": "RDMA READ", "send_bw": "SEND"}
LAT_TESTS = {"write_lat": "RDMA WRITE", "send_lat": "SEND", "read_lat": "RDMA READ",
             "atomic_lat": "atomic"}
BW_PEERS = ("ucx_put_bw_64k", "ucx_tag_bw_64k", "fi_tcp_bw_64k", "qperf_tcp_bw_64k")
PEER_COLORS = ("black", "dimgray", "tab:purple", "tab:brown")
LAT_PEERS = ("ucx_tag_lat_64", "ucx_put_lat_64", "fi_tcp_lat_64", "qperf_tcp_lat_64")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    return f"{v:,.{digits}f}"


def size_label(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"


def series(doc, test, metric="bw_avg_MBps"):
    pts = []
    for k, m in doc.get("medians", {}).items():
        t, s, q, l = re.match(r"(\w+) s=(\d+) q=(\d+) l=(\d+)", k).groups()
        if t == test and q == "1" and l == "1" and m.get(metric) is not None:
            pts.append((int(s), m[metric]))
    return sorted(pts)


def summary_md(doc, img_prefix=""):
    m = doc["machine"]
    runs = f"{doc['runs']} run(s) per case, medians" + (", --quick" if doc["quick"] else "")
    out = [f"Results of {doc['date']} ({runs}; {m['nproc']} cores, {m['cpu_model']}, "
           f"Linux {m['kernel']}, Python {m['python']}, rnicd {m['rnicd_git']})."]
    if doc.get("fake_perf"):
        out.append("\n**FAKE perf numbers (--fake-perf): development only, not measurements.**")
    if doc.get("aborted"):
        out.append(f"\n**The run stopped early:** `{doc['aborted'][:300]}`")
    out += ["", "| case | rnicd | peer | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for r in doc.get("ratios", []):
        out.append(f"| {r['label']} | {fmt(r['rnicd'])} | {fmt(r['peer'])} ({r['peer_case']}) | "
                   f"{fmt(r['ratio'])} | {r['op']} {r['target']} | {fmt(r['met'])} |")
    peers = doc.get("peers", {})
    if peers:
        out += ["", "Peers on loopback (../shared/bench/peers.py, same run):", "",
                "| peer case | peer | value | unit | note |", "|---|---|---|---|---|"]
        for case, p in peers.items():
            note = (p["errors"][-1][:80].replace("|", "/").replace("\n", " ")
                    if p["errors"] else "")
            out.append(f"| {case} | {p['peer']} | {fmt(p['median'])} | {p['unit']} | {note} |")
    cpu = doc.get("cpu_s_per_GB", {})
    if cpu:
        rows = {}
        for k, v in cpu.items():
            t, s, _, pl = re.match(r"(\w+) s=(\d+) q=(\d+) l=(\d+)", k).groups()
            label = size_label(int(s)) + (f", post list {pl}" if pl != "1" else "")
            rows.setdefault((pl != "1", int(s), label), {})[t] = v
        out += ["", "CPU seconds per GB moved (both daemons + the perf process, one QP):", "",
                "| size | " + " | ".join(BW_TESTS) + " |", "|---" * (len(BW_TESTS) + 1) + "|"]
        out += [f"| {r[2]} | " + " | ".join(fmt(rows[r].get(t)) for t in BW_TESTS) + " |"
                for r in sorted(rows)]
    if doc.get("mem"):
        out += ["", "Daemon RSS with N RC QPs held by one client (64/64 WRs, one CQ):", "",
                "| QPs | RSS MiB | over idle MiB |", "|---|---|---|"]
        out += [f"| {r['qps']} | {fmt(r.get('rss_kib', 0) / 1024) if 'rss_kib' in r else '–'} | "
                f"{fmt(r['delta_kib'] / 1024) if 'delta_kib' in r else r.get('error', '')[:60]} |"
                for r in doc["mem"]]
    lab = doc.get("lab") or {}
    if lab.get("up_s") is not None:
        a2a, idle, rss = lab.get("alltoall", {}), lab.get("idle", {}), lab.get(
            "rss_mib_per_host", {})
        out += ["", f"`rnic lab` with {lab['hosts']} hosts ({lab['mode']}, bench/lab_scale.py):",
                "", "| measure | value |", "|---|---|",
                f"| `rnic lab up {lab['hosts']}` | {fmt(lab['up_s'])} s |",
                f"| idle CPU, all daemons, over {fmt(idle.get('seconds'))} s | "
                f"{fmt(idle.get('cpu_percent_all_daemons'))} % "
                f"({fmt(idle.get('wakeups_per_s_all_daemons'))} wake-ups/s) |",
                f"| RSS per host (median / max) | {fmt(rss.get('median'))} / "
                f"{fmt(rss.get('max'))} MiB |",
                f"| all-to-all RC ({a2a.get('connections', '?')} connections, "
                f"{size_label(a2a.get('size', 0))} each way, SHA-256) | "
                + (f"{fmt(a2a['seconds'])} s, {fmt(a2a.get('MBps'))} MB/s, ok={a2a.get('ok')}, "
                   f"{a2a.get('errors')} errors |" if "seconds" in a2a
                   else f"{a2a.get('error', 'not run')[:80]} |"),
                f"| `rnic lab down` | {fmt(lab.get('down_s'))} s |"]
    if doc.get("qp_scaling"):
        out += ["", "RDMA WRITE 64 KiB bandwidth vs number of QPs:", "",
                "| QPs | MB/s |", "|---|---|"]
        out += [f"| {r['qps']} | {fmt(r['bw_avg_MBps'])} |" for r in doc["qp_scaling"]]
    out += ["", f"![bandwidth vs size]({img_prefix}bw_vs_size.png)",
            f"![latency CDF]({img_prefix}latency_cdf.png)", ""]
    return "\n".join(out)


def plot_bw(doc, path, plt):
    fig, ax = plt.subplots(figsize=(8, 5))
    for test, label in BW_TESTS.items():
        pts = series(doc, test)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                    label=f"rnicd {label}")
    for case, mk, col in zip(BW_PEERS, "s^Dv", PEER_COLORS, strict=True):
        v = doc.get("peers", {}).get(case, {}).get("median")
        if v:
            ax.scatter([65536], [v], marker=mk, s=60, zorder=5, color=col, edgecolors="black",
                       label=f"{case} (peer, 64 KiB)")
    ax.set_xscale("log", base=2)
    sizes = sorted({p[0] for t in BW_TESTS for p in series(doc, t)}) or [65536]
    ax.set_xticks(sizes, [size_label(s) for s in sizes], rotation=45, ha="right")
    ax.set_xlabel("message size")
    ax.set_ylabel("bandwidth, MB/s (10^6 B/s; median)")
    title = "rnicd vs peers on loopback, one QP" + (" — FAKE" if doc.get("fake_perf") else "")
    ax.set_title(f"{title} ({doc['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lat(doc, path, plt, ticker):
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, cdf in doc.get("latency_cdf", {}).items():
        test = k.split()[0]
        pairs = [(u, p) for u, p in zip(cdf["us"], cdf["p"], strict=True) if p <= 0.999]
        ax.plot([u for u, _ in pairs], [p for _, p in pairs], drawstyle="steps-post",
                label=f"rnicd {LAT_TESTS.get(test, test)} {k.split()[1][2:]} B (n={cdf['n']})")
    for case, ls, col in zip(LAT_PEERS, ["--", ":", "-.", (0, (5, 1))], PEER_COLORS, strict=True):
        v = doc.get("peers", {}).get(case, {}).get("median")
        if v:
            ax.axvline(v, color=col, ls=ls, lw=1.6, label=f"{case} (peer, typical {fmt(v)} µs)")
    ax.set_xscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 5) if hi / lo < 300 else (2, 5)))
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("latency, µs (log): WRITE/SEND one-way, READ/atomic round trip")
    ax.set_ylabel("fraction of iterations ≤ x (to p99.9)")
    ax.set_ylim(0, 1.01)
    ax.set_title("Latency CDF, 64 B" + (" — FAKE" if doc.get("fake_perf") else "")
                 + f" ({doc['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(path, md):
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        print(f"plot.py: no {BEGIN} … {END} markers in {path}; not updated", file=sys.stderr)
        return
    head, rest = text.split(BEGIN, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + md + "\n" + END + rest.split(END, 1)[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--outdir")
    ap.add_argument("--readme")
    a = ap.parse_args(argv)
    with open(a.results) as f:
        doc = json.load(f)
    outdir = a.outdir or os.path.dirname(os.path.abspath(a.results))
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(summary_md(doc))
    if a.readme:
        rel = os.path.relpath(outdir, os.path.dirname(os.path.abspath(a.readme)))
        update_readme(a.readme, summary_md(doc, img_prefix=rel + "/"))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib missing (pip install '.[bench]'); wrote summary.md only",
              file=sys.stderr)
        return 1
    from matplotlib import ticker
    plot_bw(doc, os.path.join(outdir, "bw_vs_size.png"), plt)
    plot_lat(doc, os.path.join(outdir, "latency_cdf.png"), plt, ticker)
    print(f"plot.py: wrote {outdir}/bw_vs_size.png, latency_cdf.png, summary.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
