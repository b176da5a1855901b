"""The CRUD side's section of BENCHMARKS.md (between <!-- crud --> and <!-- /crud -->, replaced
or appended) from benches/results/crud-*.json, as benches/run.sh leaves them:
requests/s at p99 <= 50 ms per scenario on SQLite (1 API process) and PostgreSQL (2), the ratio,
and every step."""
import json, pathlib, re, sys

from machine import sharing

results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
if not list(results.glob("crud-*.json")):
    sys.exit(0)  # not measured: no section
names = {"status": "REST status change → WebSocket event (end to end)", "payments": "payments (idempotent, exactly-once revenue)"}
lines = ["<!-- crud -->", "## The CRUD side: SQLite (1 API process) vs PostgreSQL (2 API processes)", "",
         "`benches/run.sh --only crud` (target/release/crudload; see benches/src/bin/crudload.rs): each engine",
         "gets its own Redis, one gateway and fresh databases (PostgreSQL 15 durable: fsync and synchronous commit",
         "on, like SQLite's `synchronous=FULL`); requests leave on schedule at each offered rate for the step;",
         "the answer is the highest rate whose p99 stays within 50 ms with no error and nothing lost.", ""]
summary = ["| scenario | SQLite, 1 API | PostgreSQL, 2 APIs | ratio (PG / SQLite) |", "|---|---|---|---|"]
steps = []
for scenario in ("status", "payments"):
    runs = {}
    for label in ("sqlite-1api", "postgres-2api"):
        f = results / f"crud-{scenario}-{label}.json"
        if f.exists():
            runs[label] = json.loads(f.read_text())
    if len(runs) < 2:
        continue
    a, b = runs["sqlite-1api"]["best_rate"], runs["postgres-2api"]["best_rate"]
    ratio = f"{b / a:.2f}" if a else "—"
    summary.append(f"| {names[scenario]} | {a} req/s | {b} req/s | {ratio} |")
    for label, run in runs.items():
        for s in run["steps"]:
            steps.append(f"| {scenario} | {label} | {s['rate']} | {s['sent']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} | {s['lost']} |")
lines += summary + ["", "| scenario | setup | offered req/s | sent | p50 ms | p99 ms | errors | lost |", "|---|---|---|---|---|---|---|---|"] + steps
machine = results / "machine.crud.json"  # written by `run.sh --only crud`
if not machine.exists():
    machine = results / "machine.json"
if machine.exists():
    m = json.loads(machine.read_text())
    load = f", {sharing(m)}"
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB; {m.get('date')};"
              f" Switchyard {m.get('switchyard_commit')}{load}."]
lines.append("<!-- /crud -->")
section = "\n".join(lines) + "\n"
text = out.read_text() if out.exists() else ""
if "<!-- crud -->" in text:
    text = re.sub(r"<!-- crud -->.*?<!-- /crud -->\n?", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
out.write_text(text)
