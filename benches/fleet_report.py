"""The fleet's section of BENCHMARKS.md (between <!-- fleet --> and <!-- /fleet -->, replaced
or appended) from benches/results/fleet-switchyard.json, as `benches/run.sh --only fleet` leaves
it: partners online on one gateway, a ladder of how many of them stream fixes, the plain
order-room location path (SWITCHYARD_FLEET_POSITIONS=false, no admin) against admin:fleet with
admins watching; per step fixes/s offered and accepted, the gateway's CPU per accepted fix,
deliveries to admins/s and the admins' latency; the CPU ratio at the largest step both phases
sustained, and each phase's ceiling. Nothing is written when nothing was measured."""
import json, pathlib, re, sys

from machine import sharing, was_shared

results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
f = results / "fleet-switchyard.json"
if not f.exists():
    sys.exit(0)
r = json.loads(f.read_text())
steps = r.get("steps", [])


def num(x, fmt="{:,.0f}"):
    return "—" if x is None else fmt.format(x)


def cpu_percent(step, name):
    for p in step.get("processes", []):
        if p.get("name") == name and "cpu_percent" in p:
            return p["cpu_percent"]
    return None


online = r.get("partners")
lines = ["<!-- fleet -->", "## 10. The fleet: admin:fleet against the plain order-room location path (Switchyard only)", "",
         "`cargo build --release && benches/run.sh --only fleet --no-criterion --skip-build` (target/release/loadgen",
         f"`fleet`, benches/src/bin/loadgen/fleet.rs). {online:,} partners online, each carrying an order of its own,",
         "connected to one gateway (distributed mode: Redis, one API process); in each step of a ladder the first",
         f"*sending* of them send {r['hz']:g} fixes a second each for {r['step_secs']} s (the rest stay online, quiet). A step",
         "is sustained when ≥ 95 % of the offered fixes were accepted (answered `ok`); the ladder stops after the first",
         "that is not. **plain**: a gateway with `SWITCHYARD_FLEET_POSITIONS=false` — fixes go to their order rooms only",
         "(the path before admin:fleet), no admin. **fleet**: a fresh gateway with the default (`true`): every fix also",
         "offered to admin:fleet, which publishes each partner's newest fix once a second, with the admins joined to",
         "admin:fleet. CPU per fix is the gateway process's CPU time over the step divided by the fixes it accepted.",
         "Admin latency runs from the fix's device time to its receipt by an admin: it includes the wait for the",
         "once-a-second publish (the newest fix of the second is at most one send interval old then). The load",
         "generator, Redis and the API run on the same machine.", "",
         "| phase | admins | sending | fixes/s offered | fixes/s sent | fixes/s accepted | sustained | gateway CPU | gateway µs per fix | deliveries to admins/s | admin p50 ms | admin p99 ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for s in steps:
    gw = next((p for p in s.get("processes", []) if p.get("name", "").startswith("gateway-" + s["phase"])), None)
    cpu = f"{gw['cpu_percent']:.0f} %" if gw and "cpu_percent" in gw else "—"
    lat = s.get("admin_latency_ms") or {}
    lines.append(f"| {s['phase']} | {s['admins']} | {num(s['partners'])} | {num(s['offered_fixes_per_sec'])} | {num(s['fixes_sent_per_sec'])}"
                 f" | {num(s['fixes_accepted_per_sec'])} | {'yes' if s.get('sustained') else '**no**'} | {cpu}"
                 f" | {num(s.get('gateway_cpu_us_per_fix'), '{:.1f}')}"
                 f" | {num(s['admin_deliveries_per_sec'])} | {num(lat.get('p50'), '{:.0f}') if s['admins'] else '—'}"
                 f" | {num(lat.get('p99'), '{:.0f}') if s['admins'] else '—'} |")
ratio, at = r.get("cpu_per_fix_ratio"), r.get("ratio_at_active")
lines += ["", f"**Gateway CPU per fix, fleet / plain: {num(ratio, '{:.2f}')}×** (target: within 2×)"
          + (f", at {at:,} partners sending ({at * r['hz']:,.0f} fixes/s offered), the largest step both phases sustained." if at else
             ": no step was sustained by both phases.")]
ceilings = r.get("ceiling_fixes_per_sec") or {}
if ceilings:
    parts = [f"{phase} {num(c)} fixes/s" if c is not None else f"{phase} none" for phase, c in ceilings.items()]
    full = online * r["hz"] if online else None
    lines += ["", "Most fixes/s accepted in a sustained step (one gateway; the ladder's top is "
              f"{num(full)} fixes/s): " + ", ".join(parts) + "."]
machine = results / "machine.fleet.json"  # written by `run.sh --only fleet`
if not machine.exists():
    machine = results / "machine.json"
if machine.exists():
    m = json.loads(machine.read_text())
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB, {sharing(m)}"
              + ("; compare the two phases of one run rather than absolute figures" if was_shared(m) else "")
              + f"; {m.get('profile')} build; Redis {m.get('redis')}; Switchyard {m.get('switchyard_commit')}; {m.get('date')}."]
lines.append("<!-- /fleet -->")
section = "\n".join(lines) + "\n"
text = out.read_text() if out.exists() else ""
if "<!-- fleet -->" in text:
    text = re.sub(r"<!-- fleet -->.*?<!-- /fleet -->\n?", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
out.write_text(text)
