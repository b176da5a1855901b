#!/usr/bin/env python3
"""Renders the load-benchmark results (benches/results/*.json from benches/run.sh) into PNG plots
and BENCHMARKS.md.

    python3 benches/plot.py RESULTS_DIR OUT_MARKDOWN

Every figure in the generated document is computed here from the JSON; the hand-written analysis
(what limited each result, profiles) lives in benches/analysis.md and is included verbatim, and
the criterion table is parsed from RESULTS_DIR/criterion.txt.
"""
import glob
import json
import os
import re
import statistics
import sys

from machine import sharing

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = [("switchyard", "Switchyard"), ("socketio", "Socket.IO 4 + redis-adapter")]
# The bare fan-out limit (benches/src/bin/bare.rs): no auth, rooms map only, no Redis.
BARE = ("bare", "bare tokio + tungstenite (the limit)")
HERE = os.path.dirname(os.path.abspath(__file__))


def load(results, scenario, system):
    """Every run of a scenario for a system (.rN repeats included), in run order."""
    files = sorted(glob.glob(os.path.join(results, f"{scenario}-{system}.json")) +
                   glob.glob(os.path.join(results, f"{scenario}-{system}.r*.json")))
    return [json.load(open(f)) for f in files]


def fmt(x, digits=0):
    if x is None:
        return "—"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{x:,.0f}"


def ms(x):
    if x is None:
        return "—"
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.1f}×"


def proc_cpu(step, prefix):
    return sum(p.get("cpu_percent", 0) for p in step.get("processes", []) if p["name"].startswith(prefix))


def proc_rss(step, prefix):
    return sum(p.get("rss_kib", 0) for p in step.get("processes", []) if p["name"].startswith(prefix))


def server_prefix(system):
    return {"switchyard": "gateway", "bare": "bare"}.get(system, "peer")


def fraction(a, limit):
    """`a` as a fraction of the bare limit."""
    if a is None or limit is None or limit == 0:
        return "—"
    return f"{100 * a / limit:.0f} %"


def busiest(step, system):
    """The process with the most CPU in a step, by role."""
    roles = {"server": proc_cpu(step, server_prefix(system)), "redis": proc_cpu(step, "redis"),
             "loadgen": proc_cpu(step, "loadgen")}
    return max(roles, key=roles.get)


# ── idle ─────────────────────────────────────────────────────────────────────────────────────
def idle_section(results, out_dir):
    lines = ["## 1. Idle connections: memory per connection", ""]
    lines += ["Each connection is authenticated and in two rooms (its `user:` room and one `order:` room),"
              " spread over the 2 instances; RSS of both instances summed, read from `/proc` 2 s after"
              " each level is reached. Slope = ΔRSS / Δconnections between consecutive levels.", ""]
    lines += ["| connections (total) | " + " | ".join(f"{n} RSS (sum of 2)" for _, n in SYSTEMS) +
              " | " + " | ".join(f"{n} KiB/conn (slope)" for _, n in SYSTEMS) + " | ratio |",
              "|---|---|---|---|---|---|"]
    series = {}
    slopes = {}
    for sys_id, _ in SYSTEMS + [BARE]:
        runs = load(results, "idle", sys_id)
        if not runs:
            continue
        levels = runs[0]["levels"]
        pts = [(lv["connected"], proc_rss(lv, server_prefix(sys_id))) for lv in levels]
        series[sys_id] = pts
        slopes[sys_id] = [None] + [((b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else None)
                                   for a, b in zip(pts, pts[1:])]
    n = max((len(v) for v in series.values()), default=0)
    for i in range(1, n):
        row = []
        conns = [series[s][i][0] for s, _ in SYSTEMS if s in series and i < len(series[s])]
        row.append(" / ".join(fmt(c) for c in conns))
        for s, _ in SYSTEMS:
            row.append(f"{series[s][i][1] / 1024:.0f} MiB" if s in series and i < len(series[s]) else "—")
        vals = []
        for s, _ in SYSTEMS:
            v = slopes.get(s, [None] * (i + 1))[i] if s in slopes and i < len(slopes[s]) else None
            vals.append(v)
            row.append(f"{v:.1f}" if v is not None else "—")
        row.append(ratio(vals[1], vals[0]) if len(vals) == 2 else "—")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if "bare" in slopes:
        bare = slopes["bare"][-1]
        lines += [f"The bare server (no authentication, one room map, no Redis) holds these connections at"
                  f" {fmt(bare, 1) if bare else '—'} KiB each (last level): Switchyard's figure is"
                  f" {fraction(slopes.get('switchyard', [None])[-1], bare)} of it.", ""]
    if series:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for s, name in SYSTEMS + [BARE]:
            if s in series:
                xs, ys = zip(*series[s])
                ax.plot(xs, [y / 1024 for y in ys], marker="o", label=name)
        ax.set_xlabel("idle connections (2 instances)")
        ax.set_ylabel("RSS of both instances (MiB)")
        ax.set_title("Idle memory vs connections")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "rss_idle.png"), dpi=100)
        plt.close(fig)
        lines += ["![RSS vs connections](benches/results/rss_idle.png)", ""]
    last = {s: (slopes[s][-1] if s in slopes else None) for s, _ in SYSTEMS + [BARE]}
    return lines, last


# ── handshake ────────────────────────────────────────────────────────────────────────────────
def scale_section(results):
    runs = load(results, "scale", "switchyard")
    if not runs:
        return ["## Scale: 100,000 connections", "", "(not run)", ""], None
    levels = runs[0]["levels"]
    lines = ["## Scale: 100,000 idle connections over 6 gateways (Switchyard)", "",
             "Six fresh gateway processes (19,000 connections each at most, the default; the 20,000 open"
             " files per process allow no more), connections spread evenly, each in its user room and one"
             " order room; 12 loadgen processes (≤ 8,350 sockets each) bound to 16 loopback source"
             " addresses. The target is about the gateways, so the peer is not run here.", "",
             "| connections | gateways' total RSS | per gateway | KiB per connection (slope) | Redis RSS |",
             "|---|---|---|---|---|"]
    prev = None
    for lv in levels:
        rss = proc_rss(lv, "gateway")
        n = sum(1 for p in lv["processes"] if p["name"].startswith("gateway"))
        slope = f"{(rss - prev[1]) / (lv['connected'] - prev[0]):.1f}" if prev and lv["connected"] > prev[0] else "—"
        lines.append(f"| {fmt(lv['connected'])} | **{rss / 1024:.0f} MiB** | {rss / 1024 / max(n, 1):.0f} MiB | {slope} | {proc_rss(lv, 'redis') / 1024:.0f} MiB |")
        prev = (lv["connected"], rss)
    last = levels[-1]
    if runs[0].get("error"):
        lines += ["", f"Error: {runs[0]['error']}"]
    gateways = sum(1 for p in last["processes"] if p["name"].startswith("gateway"))
    return lines + [""], (last["connected"], proc_rss(last, "gateway") / 1024, gateways)


def handshake_section(results):
    conc = sorted({r.get("concurrency") for s, _ in SYSTEMS for r in load(results, "handshake", s)} - {None})
    lines = ["## 2. Handshakes per second (one instance)", "",
             f"Closed loop: {'/'.join(map(str, conc)) or '?'} handshakes in flight (connect, JWT, `welcome` / Socket.IO connect ack,"
             " then close), each with its own user id. Median over the runs.", "",
             "| system | handshakes/s | p50 | p99 | failed | server CPU | loadgen CPU | runs |",
             "|---|---|---|---|---|---|---|---|"]
    rates = {}
    for s, name in SYSTEMS:
        runs = load(results, "handshake", s)
        if not runs:
            continue
        rate = med([r["handshakes_per_sec"] for r in runs])
        rates[s] = rate
        p50 = med([r["latency_ms"]["p50"] for r in runs])
        p99 = med([r["latency_ms"]["p99"] for r in runs])
        cpu = med([proc_cpu(r, server_prefix(s)) for r in runs])
        lcpu = med([proc_cpu(r, "loadgen") for r in runs])
        failed = sum(r["failed"] for r in runs)
        lines.append(f"| {name} | **{fmt(rate)}** | {ms(p50)} | {ms(p99)} | {failed} | {cpu:.0f} % | {lcpu:.0f} % | {len(runs)} |")
    lines += ["", f"Ratio Switchyard / peer: **{ratio(rates.get('switchyard'), rates.get('socketio'))}**", ""]
    return lines, rates


# ── stepped scenarios ────────────────────────────────────────────────────────────────────────
def step_table(runs, system):
    """Per step index: the median over the runs that reached it (latencies, rates), the worst
    loss; processes from the first run. Returns (first run, rows)."""
    rows = []
    n = max(len(r["steps"]) for r in runs)
    for i in range(n):
        sts = [r["steps"][i] for r in runs if i < len(r["steps"])]
        row = dict(sts[0])
        for key in ("publish_rate", "deliveries_per_sec", "publish_secs"):
            row[key] = med([st[key] for st in sts])
        row["latency_ms"] = {q: med([st["latency_ms"][q] for st in sts]) for q in ("p50", "p90", "p99", "max")}
        for key in ("lost", "seq_gaps", "not_published"):
            row[key] = max(st[key] for st in sts)
        row["runs"] = len(sts)
        rows.append(row)
    return runs[0], rows


def good_steps(run, rows, p99_limit):
    """Indexes of the steps within p99_limit, and of the lossless ones (any p99): nothing lost
    and the offered rate actually published; medians over repeats of that step index."""
    def lossless(st):
        return (st["lost"] == 0 and st["seq_gaps"] == 0
                and st["not_published"] <= 0.01 * st["offered_rate"] * run["step_secs"])
    return ([i for i, st in enumerate(rows) if lossless(st) and st["latency_ms"]["p99"] <= p99_limit],
            [i for i, st in enumerate(rows) if lossless(st)])


# The buses of the cluster scenario (benches/run.sh: cluster-<label>.json).
BUSES = [("single", "one redis-server"), ("cluster", "Redis Cluster, 3 primaries + 3 replicas")]


def cluster_section(results):
    """Issue #13: the order-room scenario on one Redis and on a 3-primary cluster, side by side.
    Returns the lines and, per bus, the figures at its best step within p99 <= 10 ms."""
    lines = ["## 9. Order rooms on one Redis vs a Redis Cluster (Switchyard only)", "",
             "Scenario 4 (two-member rooms, admin tokens, events published"
             " through the broker crate's script, one per event, to uniformly random rooms) on two buses,"
             " one after the other in the same run, each with an API and 2 gateways of its own: a fresh"
             " `redis-server`, and a Redis Cluster of 3 primaries + 3 replicas (`scripts/redis-cluster.sh`,"
             " sharded pub/sub) on the same machine. Redis CPU is every Redis process's, sampled from"
             " `/proc`; on the cluster it includes the replicas (replication), shown apart. Per-event"
             " figures are taken at the bus's best step within p99 ≤ 10 ms.", "",
             "| bus | events/s at p99 ≤ 10 ms | p99 | highest lossless events/s (p99) | Redis CPU (all nodes) | of which primaries | Redis CPU µs/event (all) | µs/event (primaries) | gateways CPU µs/event | loadgen CPU | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    # A run of its own (--only) stamps machine.cluster.json; a full run, machine.json.
    measured = [f for f in (os.path.join(results, n) for n in ("machine.cluster.json", "machine.json"))
                if os.path.exists(f)]
    if measured and any(load(results, "cluster", label) for label, _ in BUSES):
        m = json.load(open(measured[0]))
        lines[2:2] = [f"Measured {m['date']} at Switchyard {m['switchyard_commit']}, {m.get('profile', 'release')} build"
                      f" (`benches/run.sh{' --debug' if m.get('profile') == 'debug' else ''} --only \"{m.get('only', '')}\"`),"
                      f" {m.get('repeat', 1)} run(s), on the machine above, {sharing(m)}."
                      + (" A debug build of the gateways and the publisher (loadgen) makes their CPU per event"
                         " larger and the rates lower than a release build's; Redis is the same server either way,"
                         " so its CPU per event is what to compare." if m.get("profile") == "debug" else ""), ""]
    figures, clients = {}, []
    for label, name in BUSES:
        runs = load(results, "cluster", label)
        if not runs:
            continue
        run, rows = step_table(runs, label)
        clients.append(f"{name}: {fmt(run['connected'])} of {fmt(run['clients'])} clients connected in {fmt(run['room_count'])} rooms")
        ok_idx, lossless = good_steps(run, rows, 10.0)
        if not ok_idx:
            lines.append(f"| {name} | none | | | | | | | | | {len(runs)} |")
            continue
        st = rows[ok_idx[-1]]
        rate = st["publish_rate"]
        all_cpu = proc_cpu(st, "redis")
        primaries = proc_cpu(st, "redis-primary") if label == "cluster" else all_cpu
        per = lambda cpu: cpu / 100.0 / rate * 1e6 if rate else None  # noqa: E731
        lo = rows[lossless[-1]] if lossless else None
        figures[label] = dict(rate=rate, us_all=per(all_cpu), us_primaries=per(primaries))
        lines.append(f"| {name} | **{fmt(rate)}** | {ms(st['latency_ms']['p99'])} |"
                     f" {fmt(lo['publish_rate']) if lo else '—'} ({ms(lo['latency_ms']['p99']) if lo else '—'}) |"
                     f" {all_cpu:.0f} % | {primaries:.0f} % | **{per(all_cpu):.1f}** | {per(primaries):.1f} |"
                     f" {per(proc_cpu(st, 'gateway')):.1f} | {proc_cpu(st, 'loadgen'):.0f} % | {len(runs)} |")
    if not any(load(results, "cluster", label) for label, _ in BUSES):
        return lines[:2] + ["(not run)", ""], figures
    lines += ["", "; ".join(clients) + ".", "",
              "Per step (medians over the runs; the cluster's Redis CPU summed over its six nodes):", "",
              "| bus | offered events/s | published/s | p50 | p99 | lost | gaps | Redis CPU | Redis CPU µs/event | gateways CPU | loadgen CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, name in BUSES:
        runs = load(results, "cluster", label)
        if not runs:
            continue
        _, rows = step_table(runs, label)
        for st in rows:
            lines.append(f"| {name} | {fmt(st['offered_rate'])} | {fmt(st['publish_rate'])} | {ms(st['latency_ms']['p50'])}"
                         f" | {ms(st['latency_ms']['p99'])} | {fmt(st['lost'])} | {fmt(st['seq_gaps'])} | {proc_cpu(st, 'redis'):.0f} %"
                         f" | {proc_cpu(st, 'redis') / 100.0 / st['publish_rate'] * 1e6 if st['publish_rate'] else 0:.1f}"
                         f" | {proc_cpu(st, 'gateway'):.0f} % | {proc_cpu(st, 'loadgen'):.0f} % |")
    return lines + [""], figures


def redis_cores_lines(results, figures):
    """'How it scales' for the bus: Redis cores per 100k events/s (from the cluster scenario) and
    per 1M connections (lease renewals, priced by the handshake scenario's Redis CPU)."""
    lines = []
    for label, name in BUSES:
        f = figures.get(label)
        if f and f["us_all"] is not None:
            extra = (f" ({f['us_primaries'] / 10:.2f} on the primaries, spread over 3 of them; the rest is"
                     " replication to the replicas)" if label == "cluster" else "")
            lines.append(f"- **Redis cores per 100,000 events/s ({name}):** {f['us_all']:.1f} µs of Redis CPU per"
                         f" published event (order rooms, at {fmt(f['rate'])} events/s) → ≈ {f['us_all'] / 10:.2f}"
                         f" cores per 100,000 events/s{extra}.")
    orders = load(results, "orders", "switchyard")
    if "single" not in figures and orders and orders[0]["steps"]:
        st = max(orders[0]["steps"], key=lambda x: x["deliveries_per_sec"])
        if st["publish_rate"]:
            us = proc_cpu(st, "redis") / 100.0 / st["publish_rate"] * 1e6
            lines.append(f"- **Redis cores per 100,000 events/s (one Redis, scenario 4):** {us:.1f} µs of Redis CPU per"
                         f" published event at {fmt(st['publish_rate'])} events/s → ≈ {us / 10:.2f} cores per 100,000"
                         f" events/s. One Redis (single-threaded) saturates at ≈ {1e6 / us:,.0f} events/s; a cluster"
                         " spreads the rooms over its primaries (section 9 measures it).")
    hs = [r for r in load(results, "handshake", "switchyard") if r.get("handshakes_per_sec")]
    if hs:
        per_hs = med([proc_cpu(r, "redis") / 100.0 / r["handshakes_per_sec"] * 1e6 for r in hs])
        renewals = 1e6 / 25.0
        lines.append(f"- **Redis cores per 1,000,000 connections:** each connection renews its per-user lease"
                     f" once per heartbeat (25 s): {fmt(renewals)} script calls/s. Priced at the handshake"
                     f" scenario's {per_hs:.1f} µs of Redis CPU per handshake (a lease claim, a subscription and"
                     f" a position: an upper bound for one renewal), that is ≤ {renewals * per_hs / 1e6:.2f} Redis"
                     " cores, on `SWITCHYARD_LEASE_REDIS_URL` (default `REDIS_URL`; on a cluster the users' lease"
                     " keys spread over the shards), before any event is published.")
    return lines


def sustained_orders(results):
    """The order rooms' sustained step (benches/run.sh, orders-sustained-switchyard.json): one rate
    held for a minute. Returns (markdown lines, figures) — figures None when it was not run."""
    runs = load(results, "orders-sustained", "switchyard")
    if not runs or not runs[0].get("steps"):
        return [], None
    r = runs[0]
    st = r["steps"][0]
    # A server that died is "gone" in (or missing from) the end-of-run sample.
    watched = {p["name"] for p in st.get("processes", []) if p["name"] != "loadgen"}
    alive = {p["name"] for p in r.get("processes_at_end", []) if not p.get("gone")}
    dead = sorted(watched - alive)
    f = dict(offered=st["offered_rate"], rate=st["publish_rate"], secs=st["publish_secs"],
             lost=st["lost"], gaps=st["seq_gaps"], not_published=st["not_published"],
             p99=st["latency_ms"]["p99"], deliveries=st["deliveries_per_sec"], dead=dead)
    f["met"] = (f["offered"] >= 60000 and not dead and f["lost"] == 0 and f["gaps"] == 0 and f["not_published"] == 0
                and f["rate"] >= 0.98 * f["offered"] and f["secs"] >= 0.98 * r.get("step_secs", 60))
    lines = ["### Sustained: one step held for a minute (Switchyard only)", "",
             f"{r['connected']:,} of {r['clients']:,} clients in {r.get('room_count', 0):,} two-member rooms;"
             f" {fmt(f['offered'])} events/s offered for {r.get('step_secs')} s, once per invocation"
             " (`loadgen run --label orders-sustained`).", "",
             "| offered events/s | published/s | deliveries/s | p50 | p99 | max | lost | gaps | not published | server CPU (sum) | server RSS (sum) | redis CPU | servers alive at the end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {fmt(f['offered'])} | {fmt(f['rate'])} | {fmt(f['deliveries'])} | {ms(st['latency_ms']['p50'])} | {ms(f['p99'])}"
             f" | {ms(st['latency_ms']['max'])} | {fmt(f['lost'])} | {fmt(f['gaps'])} | {fmt(f['not_published'])}"
             f" | {proc_cpu(st, 'gateway'):.0f} % | {proc_rss(st, 'gateway') / 1024:.0f} MiB | {proc_cpu(st, 'redis'):.0f} %"
             f" | {'yes' if not dead else 'no: ' + ', '.join(dead) + ' gone'} |", ""]
    return lines, f


def stepped_section(results, out_dir, scenario, title, intro, p99_limit, plot_name):
    lines = [f"## {title}", "", intro, ""]
    best = {}
    curves = {}
    for s, name in SYSTEMS + [BARE]:
        runs = load(results, scenario, s)
        if not runs:
            continue
        run, rows = step_table(runs, s)
        lines += [f"**{name}** — {fmt(run['connected'])} of {fmt(run['clients'])} clients connected"
                  f" (ramp {run['ramp_secs']:.1f} s), {run['room_count']:,} room(s), {run['step_secs']} s per step"
                  + (f", {run['stalled_clients']} clients not reading" if run.get("stalled_clients") else "")
                  + (f"; stopped: {run['stopped_because']}" if run.get("stopped_because") else "") + ".", ""]
        lines += ["| offered events/s | published/s | deliveries/s | p50 | p99 | max | lost | gaps | server CPU (sum) | server RSS (sum) | redis CPU | loadgen CPU | loadgen reader µs/delivery | busiest | publisher | runs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        xs, p50s, p99s = [], [], []
        for st in rows:
            lat = st["latency_ms"]
            pub = "in loadgen" if st.get("publisher_cpu_s") is None else f"node {100 * st['publisher_cpu_s'] / max(st['publish_secs'], 1e-3):.0f} %"
            lines.append(
                f"| {fmt(st['offered_rate'])} | {fmt(st['publish_rate'])} | {fmt(st['deliveries_per_sec'])} | {ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['max'])}"
                f" | {fmt(st['lost'])}{'' if st.get('expected_exact', True) else ' (≈)'} | {fmt(st['seq_gaps'])} | {proc_cpu(st, server_prefix(s)):.0f} % | {proc_rss(st, server_prefix(s)) / 1024:.0f} MiB"
                f" | {proc_cpu(st, 'redis'):.0f} % | {proc_cpu(st, 'loadgen'):.0f} % | {fmt(st.get('loadgen_cpu_us_per_delivery'), 2)}"
                f" | {'**loadgen**' if busiest(st, s) == 'loadgen' else busiest(st, s)} | {pub} | {st['runs']} |")
            xs.append(st["offered_rate"])
            p50s.append(lat["p50"])
            p99s.append(lat["p99"])
        lines.append("")
        curves[s] = (xs, p50s, p99s)
        ok_idx, lossless = good_steps(run, rows, p99_limit)
        b = {}
        if ok_idx:
            st = rows[ok_idx[-1]]
            b.update(rate=st["publish_rate"], deliveries=st["deliveries_per_sec"], p99=st["latency_ms"]["p99"], offered=st["offered_rate"])
        if lossless:
            st = rows[lossless[-1]]
            b.update(lossless_rate=st["publish_rate"], lossless_deliveries=st["deliveries_per_sec"], lossless_p99=st["latency_ms"]["p99"])
        b["runs"] = len(runs)
        best[s] = b
    if curves:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for (s, name), color in zip(SYSTEMS + [BARE], ["tab:blue", "tab:orange", "tab:green"]):
            if s in curves:
                xs, p50s, p99s = curves[s]
                ax.plot(xs, p50s, marker="o", color=color, linestyle="--", label=f"{name} p50")
                ax.plot(xs, p99s, marker="s", color=color, label=f"{name} p99")
        ax.axhline(p99_limit, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered publish rate (events/s)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title(title.split(". ", 1)[-1])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, plot_name), dpi=100)
        plt.close(fig)
        lines += [f"![latency vs offered rate](benches/results/{plot_name})", ""]
    return lines, best


def locations_section(results):
    lines = ["## 5. Locations: partner → customer (Switchyard only)", "",
             "Orders are created (`POST /api/orders`, customer `lc{k}`) and assigned (`POST /api/orders/{id}/assign`,"
             " partner `lp{k}`) through the API first; each customer subscribes its `order:{id}` room on one"
             " gateway, its partner connects to the other and sends `location` ops at 4 Hz (under the default"
             " 5/s per-connection limit); a step activates a fraction of the partners. Latency = the op's `ts`"
             " (device time, ms — the protocol's unit, so figures are over-stated by < 1 ms) → receipt of"
             " `partner.location` by the customer. The peer has no handler that relays a client event to a"
             " room (its README defines only `join`), so it is not measured.", ""]
    runs = load(results, "locations", "switchyard")
    if not runs:
        return lines + ["(not run)", ""]
    r = runs[0]
    lines += [f"{fmt(r['orders'])} orders set up in {r['setup_secs']:.1f} s; {fmt(r['connected'])} of {fmt(r['connections'])} connections; {r['step_secs']} s per step.", "",
              "| partners sending | locations/s | delivered/s | p50 | p99 | max | lost | gaps | refused | gateways CPU | API CPU | redis CPU | loadgen CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for st in r["steps"]:
        lat = st["latency_ms"]
        lines.append(f"| {fmt(st['partners'])} | {fmt(st['send_rate'])} | {fmt(st['deliveries_per_sec'])} | {ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['max'])}"
                     f" | {fmt(st['lost'])} | {fmt(st['seq_gaps'])} | {fmt(st['refused'])} | {proc_cpu(st, 'gateway'):.0f} % | {proc_cpu(st, 'api'):.0f} % | {proc_cpu(st, 'redis'):.0f} % | {proc_cpu(st, 'loadgen'):.0f} % |")
    return lines + [""]


def soak_summary(results):
    """The soak's verdict row, if `benches/run.sh --soak` has run."""
    runs = load(results, "soak", "switchyard")
    if not runs:
        return "| soak 30 min at 10,000 connections: RSS, open files, Redis memory ≤ 1 %/h growth, no loss | not run | | | | | not measured |"
    r = runs[0]
    slopes = r.get("slopes_percent_per_hour", {})
    worst = max((abs(v) for v in slopes.values() if v is not None), default=None)
    cells = ", ".join(f"{k} {v:+.2f} %/h" for k, v in slopes.items() if v is not None)
    ok = worst is not None and worst <= 1.0 and r.get("lost", 1) == 0
    return (f"| soak {r.get('minutes', '?')} min at {fmt(r.get('connections'))} connections: ≤ 1 %/h growth, no loss | {cells}; lost {fmt(r.get('lost'))} |"
            f" | | | | {'**met**' if ok else '**not met**'} |")


def criterion_times(path):
    """bench name -> (median estimate, throughput median) from criterion's text output."""
    if not os.path.exists(path):
        return {}
    found = re.findall(r"^(\S+/\S+)\s+time:\s+\[([^\]]+)\]\s*(?:thrpt:\s+\[([^\]]+)\])?", open(path).read(), re.M)
    return {name: (" ".join(t_.split()[2:4]), " ".join(thr.split()[2:4]) if thr else "") for name, t_, thr in found}


def criterion_section(results):
    path = os.path.join(results, "criterion.txt")
    lines = ["## Hot paths (criterion)", "",
             "Command: `cargo bench -p switchyard-benches --bench hot_paths -- --warm-up-time 1 --measurement-time 3`"
             " (run by `benches/run.sh` after the servers are stopped). The *before* column is the same bench"
             " on main before issue #20 §3's member lists (commit 3321275, `benches/results/criterion-before.txt`,"
             " measured while other builds ran).", ""]
    now = criterion_times(path)
    if not now:
        return lines + ["(not run)", ""]
    header = open(path).readline()
    if header.startswith("# "):
        lines += [f"This run: {header[2:].strip()} (with other builds running, every absolute figure is"
                  " higher than on a quiet machine; compare the rows with each other and with the before"
                  " column, which was also measured while other builds ran).", ""]
    before = criterion_times(os.path.join(results, "criterion-before.txt"))
    lines += ["| bench | now (criterion's median estimate) | throughput | before |", "|---|---|---|---|"]
    for name, (mid, thr) in now.items():
        lines.append(f"| `{name}` | {mid} | {thr} | {before.get(name, ('—',))[0]} |")
    lines += ["", "`hub/join_10k_members` and `hub/leave_10k_members` add or remove one member of a"
              " 10,000-member room; `hub/fill_and_empty_10k_members` joins 10,000 members to an empty room"
              " and then removes them all (20,000 membership changes). Before, each change rebuilt the whole"
              " member list under the shard lock; now a change rebuilds at most two 64-member chunks."]
    return lines + [""]


# The scenarios the header's "Measured" line speaks for (their figures are the headline).
HEADLINE = ("idle", "handshake", "broadcast", "orders")


def header_machine(results):
    """The machine and versions for the header: the newest of the last full run (machine.json) and
    the runs of the headline scenarios on their own (`--only`, machine.<scenario>.json). A dated
    tie goes to the scenario run, which is the later one whenever both are from the same day."""
    full = json.load(open(os.path.join(results, "machine.json")))
    stamps = [json.load(open(p)) for p in (os.path.join(results, f"machine.{s}.json") for s in HEADLINE)
              if os.path.exists(p)]
    newest = max(stamps, key=lambda m: m.get("date", ""), default=None)
    return newest if newest is not None and newest.get("date", "") >= full.get("date", "") else full


def main():
    results, out = sys.argv[1], sys.argv[2]
    out_dir = results
    machine = header_machine(results)
    doc = ["# Benchmarks", "",
           "<!-- Generated by benches/run.sh (benches/plot.py) from benches/results/*.json; edit"
           " benches/analysis.md or the scripts, not this file. -->", "",
           "Switchyard against the stack most teams would pick instead: **Socket.IO 4 with"
           " `@socket.io/redis-adapter`** (benches/peer/, events published from outside through"
           " `@socket.io/redis-emitter`). Both run in the same invocation on the same machine, the"
           " same topology (2 instances sharing one Redis each; loadgen targets the instances"
           " directly, no proxy), the same scenario definitions, and the same Rust load generator"
           " (`target/release/loadgen`, Switchyard protocol or raw Engine.IO v4 WebSocket). Timings"
           " drift with whatever else runs on the machine, so compare the two systems' figures and"
           " their ratio rather than absolute numbers across runs.", "",
           "Method: connections ramp at ≤ 2,000/s; client sockets are bound round-robin to 127.0.0.2…"
           " (`IP_BIND_ADDRESS_NO_PORT`), so no source address runs out of ports; runs that need more than"
           " ~19,000 sockets use several loadgen processes (20,000 open files per process). Every delivery's"
           " latency (payload `ts` at publish → receipt) goes into an HDR histogram (serialized in the JSON,"
           " `loadgen merge` combines processes exactly); loss is counted against what the publisher says it"
           " published and by per-room offsets (Switchyard) / `seq` (peer). Each step samples the RSS and CPU"
           " time of every server process, Redis and the load generator from `/proc`, so a row says which"
           " process was busy. Raw results: `benches/results/*.json`.", "",
           "```sh", "benches/run.sh --repeat 3 # ~25 min: build, Switchyard, the peer and the bare server, all scenarios, plots, this file",
           "benches/run.sh --quick    # smoke run of every scenario (results in target/bench-quick/; scripts/test.sh runs it)",
           "benches/run.sh --soak     # 30 min at 10,000 connections: resource slopes and loss", "```", "",
           "## Machine and versions", "",
           f"- {machine['cores']} cores ({machine['cpu']}), {machine['mem_gib']} GiB RAM, Linux {machine['kernel']};"
           f" {sharing(machine)}; at most 20,000 open files per process.",
           f"- Switchyard {machine['switchyard_commit']} (release build, {machine['rustc']}); Redis {machine['redis']};"
           f" Node {machine['node']}, socket.io {machine['socketio']}, @socket.io/redis-adapter {machine['redis_adapter']},"
           f" @socket.io/redis-emitter {machine['redis_emitter']}.",
           f"- Measured {machine['date']}"
           f"{' (scenarios: ' + machine['only'] + ')' if machine.get('only') else ''}; repeats: {max([len(load(results, s, x)) for s in ('handshake', 'broadcast', 'orders') for x, _ in SYSTEMS] + [1])} (handshake, broadcast and order-room figures"
           " are medians over the repeats, step by step; loss columns show the worst repeat; CPU and RSS columns"
           " come from the first repeat).", ""]
    idle_lines, slopes = idle_section(results, out_dir)
    hs_lines, hs = handshake_section(results)
    scale_lines, scale_res = scale_section(results)
    bc_lines, bc = stepped_section(
        results, out_dir, "broadcast", "3. Broadcast: one room of 10,000 members",
        "10,000 connections (half on each instance) in one room; events published through Redis"
        " (Switchyard: the broker crate's Lua script per event, pipelined; peer: publisher.js /"
        " redis-emitter) at stepped rates. Latency = payload `ts` at publish → receipt, every delivery"
        " in an HDR histogram. Stepping stops after the first step with p99 > 250 ms or any loss.",
        250.0, "latency_broadcast.png")
    or_lines, orders = stepped_section(
        results, out_dir, "orders", "4. Order rooms: 5,000 two-member rooms",
        "10,000 connections in 5,000 `order:{k}` rooms, the two members of each room on different"
        " instances (admin-role tokens on Switchyard, which may join any order room without a"
        " database row; the same room names on the peer). Each event goes to a uniformly random room."
        " Stepping continues while nothing is lost and p99 ≤ 250 ms; the target is judged at p99 ≤ 10 ms.",
        10.0, "latency_orders.png")
    slow_lines, _ = stepped_section(
        results, out_dir, "slow", "7. Slow consumers: order rooms with 5% of clients not reading",
        "Scenario 4 with every 20th client never reading after it joined. Loss is counted for the"
        " other 95% only; compare their p99 with scenario 4 at the same rate, and the servers' RSS.",
        10.0, "latency_slow.png")
    api_lines, _ = stepped_section(
        results, out_dir, "api", "6. API end-to-end (Switchyard only)",
        "2,000 clients in order rooms; events published through the API process"
        " (`POST /api/publish/batch`, 10 events per request) → Redis → gateways → WebSocket."
        " The peer has no REST API.", 250.0, "latency_api.png")

    sy_bc, pe_bc = bc.get("switchyard", {}), bc.get("socketio", {})
    sy_or, pe_or = orders.get("switchyard", {}), orders.get("socketio", {})
    sus_lines, sus = sustained_orders(results)
    or_lines += sus_lines

    def met(cond):
        return "**met**" if cond else "**not met**"

    ba_bc, ba_or = bc.get("bare", {}), orders.get("bare", {})
    summary = ["## Summary: targets (issue #17, round 2)", "",
               "The bare column is `benches/src/bin/bare.rs` (tokio + tungstenite fan-out, nothing else) in the"
               " same invocation: what this machine allows at all. Medians of the repeats.", "",
               "| target | Switchyard | peer | ratio to peer | bare limit | fraction of the bare limit | verdict |",
               "|---|---|---|---|---|---|---|"]
    sy_idle, pe_idle, ba_idle = slopes.get("switchyard"), slopes.get("socketio"), slopes.get("bare")
    summary.append(f"| idle ≤ 3.5 KiB RSS per connection (slope, last level) | {fmt(sy_idle, 1) if sy_idle else '—'} KiB |"
                   f" {fmt(pe_idle, 1) if pe_idle else '—'} KiB | {ratio(pe_idle, sy_idle)} less | {fmt(ba_idle, 1) if ba_idle else '—'} KiB |"
                   f" {fraction(sy_idle, ba_idle)} | {met(sy_idle is not None and sy_idle <= 3.5)} |")
    summary.append(f"| handshake ≥ 12,000/s on one gateway | {fmt(hs.get('switchyard'))}/s | {fmt(hs.get('socketio'))}/s |"
                   f" {ratio(hs.get('switchyard'), hs.get('socketio'))} | — | — | {met((hs.get('switchyard') or 0) >= 12000)} |")
    summary.append(f"| broadcast 10k: ≥ 1,000,000 deliveries/s, p99 ≤ 250 ms, no loss | {fmt(sy_bc.get('deliveries'))}/s (p99 {ms(sy_bc.get('p99'))}) |"
                   f" {fmt(pe_bc.get('deliveries'))}/s (p99 {ms(pe_bc.get('p99'))}) | {ratio(sy_bc.get('deliveries'), pe_bc.get('deliveries'))} |"
                   f" {fmt(ba_bc.get('deliveries'))}/s (p99 {ms(ba_bc.get('p99'))}) | {fraction(sy_bc.get('deliveries'), ba_bc.get('deliveries'))} |"
                   f" {met((sy_bc.get('deliveries') or 0) >= 1e6)} |")
    summary.append(f"| broadcast ≥ 80 % of the bare limit (p99 ≤ 250 ms) | | | | | {fraction(sy_bc.get('deliveries'), ba_bc.get('deliveries'))} |"
                   f" {met(sy_bc.get('deliveries') and ba_bc.get('deliveries') and sy_bc['deliveries'] >= 0.8 * ba_bc['deliveries'])} |")
    summary.append(f"| broadcast capacity (highest step without loss, any p99) | {fmt(sy_bc.get('lossless_deliveries'))}/s (p99 {ms(sy_bc.get('lossless_p99'))}) |"
                   f" {fmt(pe_bc.get('lossless_deliveries'))}/s (p99 {ms(pe_bc.get('lossless_p99'))}) | {ratio(sy_bc.get('lossless_deliveries'), pe_bc.get('lossless_deliveries'))} |"
                   f" {fmt(ba_bc.get('lossless_deliveries'))}/s | {fraction(sy_bc.get('lossless_deliveries'), ba_bc.get('lossless_deliveries'))} | (informative) |")
    summary.append(f"| broadcast ≥ 10× the peer (at p99 ≤ 250 ms) | | | {ratio(sy_bc.get('deliveries'), pe_bc.get('deliveries'))} | | |"
                   f" {met(sy_bc.get('deliveries') and pe_bc.get('deliveries') and sy_bc['deliveries'] >= 10 * pe_bc['deliveries'])} |")
    summary.append(f"| order rooms ≥ 25,000 events/s at p99 ≤ 10 ms | {fmt(sy_or.get('rate'))}/s (p99 {ms(sy_or.get('p99'))}) |"
                   f" {fmt(pe_or.get('rate'))}/s (p99 {ms(pe_or.get('p99'))}) | {ratio(sy_or.get('rate'), pe_or.get('rate'))} |"
                   f" {fmt(ba_or.get('rate'))}/s (p99 {ms(ba_or.get('p99'))}) | {fraction(sy_or.get('rate'), ba_or.get('rate'))} |"
                   f" {met((sy_or.get('rate') or 0) >= 25000)} |")
    summary.append(f"| order rooms 60,000/s sustained, no loss | highest lossless {fmt(sy_or.get('lossless_rate'))}/s (p99 {ms(sy_or.get('lossless_p99'))}) |"
                   f" {fmt(pe_or.get('lossless_rate'))}/s (p99 {ms(pe_or.get('lossless_p99'))}) | {ratio(sy_or.get('lossless_rate'), pe_or.get('lossless_rate'))} |"
                   f" {fmt(ba_or.get('lossless_rate'))}/s | {fraction(sy_or.get('lossless_rate'), ba_or.get('lossless_rate'))} |"
                   f" {met((sy_or.get('lossless_rate') or 0) >= 59000) if sus is None else '(the ladder; the held step below)'} |")
    if sus is not None:
        verdict = met(sus["met"])
        summary.append(f"| order rooms {fmt(sus['offered'])}/s held {sus['secs']:.0f} s: no loss, no crash | published {fmt(sus['rate'])}/s,"
                       f" lost {fmt(sus['lost'])}, gaps {fmt(sus['gaps'])}, not published {fmt(sus['not_published'])}, p99 {ms(sus['p99'])}"
                       f"{'' if not sus['dead'] else ', ' + ', '.join(sus['dead']) + ' gone'} | not run | | not run | | {verdict} |")
    if scale_res:
        summary.append(f"| 100,000 connections, gateways' total RSS ≤ 450 MiB | {fmt(scale_res[0])} connections: {scale_res[1]:.0f} MiB over {scale_res[2]} gateways | not run | | | |"
                       f" {met(scale_res[0] >= 99000 and scale_res[1] <= 450)} |")
    else:
        summary.append("| 100,000 connections, gateways' total RSS ≤ 450 MiB | not run | | | | | not measured |")
    soak = soak_summary(results)
    if soak:
        summary.append(soak)
    summary.append("")

    # How it scales: figures derived from the measurements above.
    scale = ["## How it scales (derived from the measured figures)", ""]
    scale_runs = load(results, "scale", "switchyard")
    base_mib = None
    if scale_runs:
        lv0 = scale_runs[0]["levels"][0]
        n0 = sum(1 for p in lv0["processes"] if p["name"].startswith("gateway"))
        base_mib = proc_rss(lv0, "gateway") / 1024 / max(n0, 1)
    if sy_idle:
        scale.append(f"- **Per connection (idle):** {sy_idle:.1f} KiB of gateway RSS (peer {pe_idle:.1f} KiB)."
                     f" 1,000,000 connections ≈ {sy_idle * 1e6 / 1048576:.1f} GiB of gateway RSS"
                     f" (peer ≈ {pe_idle * 1e6 / 1048576:.1f} GiB) for the connections, in ≈ {1e6 / 19000:.0f} gateway processes at the"
                     " default 19,000 connections each (file-descriptor bound, not memory bound)"
                     + (f", which add {base_mib:.0f} MiB of start-up RSS each (measured in the scale run): ≈ {(sy_idle * 1e6 / 1024 + 53 * base_mib) / 1024:.1f} GiB in all"
                        if base_mib else "")
                     + "; a load balancer needs ≥ 2 source addresses per 28k connections to each gateway address.")
        if pe_idle is None:
            pass
    for s, name in SYSTEMS:
        runs = load(results, "broadcast", s)
        steps = [st for st in runs[0]["steps"] if st["deliveries_per_sec"]] if runs else []
        if steps:
            lo, hi = steps[0], max(steps, key=lambda x: x["deliveries_per_sec"])
            per_lo = proc_cpu(lo, server_prefix(s)) / 100.0 / lo["deliveries_per_sec"] * 1e6
            per_hi = proc_cpu(hi, server_prefix(s)) / 100.0 / hi["deliveries_per_sec"] * 1e6
            scale.append(f"- **Per delivery ({name}, broadcast to 10,000):** {per_lo:.1f} µs of server CPU per delivered"
                         f" event at {fmt(lo['offered_rate'])} event/s (one frame per socket write), {per_hi:.2f} µs at"
                         f" {fmt(hi['offered_rate'])} events/s ({fmt(hi['deliveries_per_sec'])} deliveries/s, frames queued"
                         " behind each other go out in fewer writes). On loopback the sender's CPU also pays for"
                         " the receiving side of TCP, so these are upper bounds.")
    for s, name in SYSTEMS:
        runs = load(results, "orders", s)
        if runs and runs[0]["steps"]:
            st = max(runs[0]["steps"], key=lambda x: x["deliveries_per_sec"])
            cpu = proc_cpu(st, server_prefix(s)) / 100.0
            rcpu = proc_cpu(st, "redis") / 100.0
            if st["publish_rate"]:
                scale.append(f"- **Per room event ({name}, 2-member rooms):** {cpu / st['publish_rate'] * 1e6:.1f} µs of server CPU"
                             f" and {rcpu / st['publish_rate'] * 1e6:.1f} µs of Redis CPU per published event"
                             f" ({fmt(st['publish_rate'])} events/s, {fmt(st['deliveries_per_sec'])} deliveries/s).")
    cluster_lines, bus_figures = cluster_section(results)
    scale += redis_cores_lines(results, bus_figures)
    scale += ["- **Per room subscription:** each idle connection above holds two rooms (its user room and"
              " one order room), so the per-connection figure includes two subscriptions; the gateway"
              " subscribes to a room's Redis channel once per process, whatever its local member count.", ""]

    analysis = os.path.join(HERE, "analysis.md")
    extra = open(analysis).read().splitlines() + [""] if os.path.exists(analysis) else []
    doc += summary + scale + extra + idle_lines + scale_lines + hs_lines + bc_lines + or_lines + slow_lines + api_lines
    doc += locations_section(results)
    doc += cluster_lines
    doc += criterion_section(results)
    open(out, "w").write("\n".join(doc) + "\n")
    print(f"wrote {out} and plots in {out_dir}")


if __name__ == "__main__":
    main()
