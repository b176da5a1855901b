"""The order chat's section of BENCHMARKS.md (between <!-- chat --> and <!-- /chat -->, replaced
or appended) from benches/results/chat-*.json, as benches/run.sh --only chat leaves them:
messages/s at p99 <= 20 ms from `send` to the other side's chat.message event, and every step."""
import json, pathlib, re, sys

from machine import sharing

results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = sorted(results.glob("chat-*.json"))
if not runs:
    sys.exit(0)  # not measured: no section
lines = ["<!-- chat -->", "## Order chat: messages/s at p99 ≤ 20 ms, send → the other side's event", "",
         "`benches/run.sh --only chat` (target/release/crudload chat; see benches/src/bin/crudload.rs):",
         "customer/partner pairs, each an order's customer on one gateway and its partner on another, both",
         "in the order's room; messages leave on schedule at each offered rate, spread over the pairs, the",
         "two sides taking turns. The latency runs from a `send` op's scheduled time to the *other* side",
         "receiving its `chat.message` event — the full durable path: gateway → API (`POST",
         "/internal/orders/{id}/messages`) → one SQLite transaction with the outbox row → the relay → Redis →",
         "the other gateway. The answer is the highest rate whose p99 stays within 20 ms with no error and",
         "nothing lost; stepping stops at the first step over the bound.", ""]
summary, steps = [], []
for f in runs:
    r = json.loads(f.read_text())
    summary.append(f"- **{r['label']}**: **{r['best_rate']} messages/s at p99 ≤ {r['max_p99_ms']} ms**"
                   f" ({r.get('pairs', '?')} pairs)")
    for s in r["steps"]:
        steps.append(f"| {r['label']} | {s['rate']} | {s['sent']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['errors']} | {s['lost']} |")
lines += summary + ["", "| setup | offered messages/s | sent | p50 ms | p99 ms | max ms | errors | lost |",
                    "|---|---|---|---|---|---|---|---|"] + steps
machine = results / "machine.chat.json"  # written by `run.sh --only chat`
if not machine.exists():
    machine = results / "machine.json"
if machine.exists():
    m = json.loads(machine.read_text())
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB, {sharing(m)};"
              f" {m.get('profile')} build; Redis {m.get('redis')}; Switchyard"
              f" {m.get('switchyard_commit')}; {m.get('date')}."]
lines.append("<!-- /chat -->")
section = "\n".join(lines) + "\n"
text = out.read_text() if out.exists() else ""
if "<!-- chat -->" in text:
    text = re.sub(r"<!-- chat -->.*?<!-- /chat -->\n?", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
out.write_text(text)
