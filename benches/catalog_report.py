"""The catalog's section of BENCHMARKS.md (between <!-- catalog --> and <!-- /catalog -->,
replaced or appended) from benches/results/catalog-*.json, as `benches/run.sh --only catalog`
leaves them: product reads/s at p99 <= 5 ms with the read cache on and off, side by side with
their ratio, and orders/s with stock reservation at p99 <= 50 ms, on SQLite (1 API process) and
PostgreSQL (2), and every step. Nothing is written when nothing was measured."""
import json, pathlib, re, sys

from machine import sharing, was_shared

results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
if not list(results.glob("catalog-reads-*.json")):
    sys.exit(0)
engines = {"sqlite-1api": "SQLite, 1 API process", "postgres-2api": "PostgreSQL (durable), 2 API processes"}


def load(name):
    f = results / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


lines = ["<!-- catalog -->", "## The catalog: product reads with the cache on and off, orders with stock reservation", "",
         "`cargo build --release -p switchyard -p switchyard-benches && benches/run.sh --only catalog --no-criterion",
         "--skip-build` (target/release/crudload `reads` and `orders`; see",
         "benches/src/bin/crudload.rs). Each engine and cache setting gets fresh API processes and its own Redis;",
         "20 SKUs; reads are `GET /api/products/{sku}` round-robin over the SKUs and the API processes (read once",
         "each before the first step), the cache in Redis (`SWITCHYARD_CATALOG_CACHE=true`, the distributed mode's)",
         "or off (every read from the database); orders are `POST /api/orders` of one unit, its stock reserved in",
         "the order's transaction, with the cache on (each order invalidates its SKU and the list pages). Requests",
         "leave on schedule at each offered rate for the step; the answer is the highest rate whose p99 stays",
         "within the bound with no error.", "",
         "| engine | reads/s at p99 ≤ 5 ms, cache on | cache off | ratio (on / off) | orders/s at p99 ≤ 50 ms |",
         "|---|---|---|---|---|"]
steps = []
for label, name in engines.items():
    on, off = load(f"catalog-reads-{label}-cache-on"), load(f"catalog-reads-{label}-cache-off")
    orders = load(f"catalog-orders-{label}")
    if not on and not off and not orders:
        continue
    a = on["best_rate"] if on else None
    b = off["best_rate"] if off else None
    ratio = f"{a / b:.2f}" if a is not None and b else "—"
    o = orders["best_rate"] if orders else None
    show = lambda x: "not run" if x is None else f"{x} req/s"
    lines.append(f"| {name} | {show(a)} | {show(b)} | {ratio} | {show(o)} |")
    for what, run in (("reads, cache on", on), ("reads, cache off", off), ("orders", orders)):
        for s in (run or {}).get("steps", []):
            steps.append(f"| {name} | {what} | {s['rate']} | {s['sent']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.1f} | {s['errors']} |")
lines += ["", "| engine | scenario | offered req/s | sent | p50 ms | p99 ms | max ms | errors |",
          "|---|---|---|---|---|---|---|---|"] + steps
machine = results / "machine.catalog.json"  # written by `run.sh --only catalog`
if not machine.exists():
    machine = results / "machine.json"
if machine.exists():
    m = json.loads(machine.read_text())
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB, {sharing(m)}"
              + ("; **compare the columns of one run (the ratio) rather than absolute figures**" if was_shared(m) else "")
              + f"; Redis {m.get('redis')}; Switchyard {m.get('switchyard_commit')}; {m.get('date')}."]
lines.append("<!-- /catalog -->")
section = "\n".join(lines) + "\n"
text = out.read_text() if out.exists() else ""
if "<!-- catalog -->" in text:
    text = re.sub(r"<!-- catalog -->.*?<!-- /catalog -->\n?", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
out.write_text(text)
