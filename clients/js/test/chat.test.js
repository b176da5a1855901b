// Order chat through the client against the real binary (SWITCHYARD_BIN): sendMessage,
// typing, markRead and their events; a reply lost with its connection is retried with the same
// client_msg_id and stores nothing twice.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";
import { SwitchyardClient } from "../switchyard.js";
import { api, mint, once, startServer, until } from "../support/harness.js";

const servers = [];
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.stop("SIGKILL");
  for (const s of servers) s.cleanup();
});

/**
 * A `ws` WebSocket that can lose the reply to the next `send` op: the reply arrives (the server
 * stored the message), then the connection drops before the client reads it.
 */
const lossy = { armed: false };
class LossyWebSocket extends WebSocket {
  addEventListener(type, listener, options) {
    if (type !== "message") return super.addEventListener(type, listener, options);
    return super.addEventListener(
      type,
      (ev) => {
        const msg = JSON.parse(String(ev.data));
        if (lossy.armed && msg.type === "ok" && msg.op === "send") {
          lossy.armed = false;
          this.terminate(); // the reply is lost with the connection
          return;
        }
        listener(ev);
      },
      options,
    );
  }
}

function client(srv, sub, role) {
  const c = new SwitchyardClient({
    url: srv.wsUrl,
    token: () => mint({ sub, role }),
    WebSocket: LossyWebSocket,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  clients.push(c);
  c.log = [];
  for (const name of ["message", "typing", "read"]) c.on(name, (payload) => c.log.push({ name, payload }));
  return c;
}

test("customer and partner chat: messages, typing, read markers; a lost reply is retried once", async () => {
  const srv = await startServer();
  servers.push(srv);
  const admin = mint({ sub: "a1", role: "admin" });
  const created = await api(srv, "POST", "/api/orders", mint({ sub: "c1", role: "customer" }), {
    items: [{ sku: "milk-1l", qty: 1 }],
    address: "12 MG Road",
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  const assigned = await api(srv, "POST", `/api/orders/${id}/assign`, admin, { partner: "p1" });
  assert.equal(assigned.status, 200, JSON.stringify(assigned.body));

  const customer = client(srv, "c1", "customer");
  const partner = client(srv, "p1", "partner");
  await customer.connect();
  await partner.connect();
  const joined = await customer.subscribe(`order:${id}`);
  assert.deepEqual(joined.snapshot.chat, { last_read: null, unread: 0 });
  await partner.subscribe(`order:${id}`);

  const sent = await customer.sendMessage(id, "  at the gate ");
  assert.equal(sent.text, "at the gate");
  assert.equal(sent.from, "c1");
  await until(() => partner.log.some((e) => e.name === "message" && e.payload.message_id === sent.message_id), "the partner gets it");
  const got = partner.log.find((e) => e.name === "message").payload;
  assert.equal(got.orderId, id);
  assert.equal(got.role, "customer");
  assert.equal(sent.offset, got.offset, "the reply carries the event's room offset");

  // The reply to this send is lost with the connection: sendMessage resends the same
  // client_msg_id on the next connection and gets the first message back.
  lossy.armed = true;
  const reply = await partner.sendMessage(id, "ring twice", { clientMsgId: "p1-ring" });
  assert.equal(lossy.armed, false, "the reply was dropped once");
  assert.equal(reply.client_msg_id, "p1-ring");
  const ring = customer.log.find((e) => e.name === "message" && e.payload.message_id === reply.message_id);
  assert.ok(!ring || ring.payload.offset === reply.offset, "the retry answers the first offset");
  const history = await api(srv, "GET", `/api/orders/${id}/messages`, admin);
  assert.equal(history.status, 200);
  assert.deepEqual(
    history.body.messages.map((m) => m.text),
    ["at the gate", "ring twice"],
    "stored once",
  );
  await until(() => customer.log.filter((e) => e.name === "message").length === 2, "the customer gets both");

  await partner.subscribe(`order:${id}`); // (rejoined after the drop anyway)
  const typed = once(customer, "typing");
  await partner.typing(id);
  const typing = await typed;
  assert.equal(typing.from, "p1");

  const marked = once(partner, "read");
  await customer.markRead(id, reply.message_id);
  const read = await marked;
  assert.equal(read.message_id, reply.message_id);
  // Stored: another connection of the customer's gets it in the room's snapshot.
  const phone = client(srv, "c1", "customer");
  await phone.connect();
  const again = await phone.subscribe(`order:${id}`);
  assert.deepEqual(again.snapshot.chat, { last_read: reply.message_id, unread: 0 });

  // Refusals reject: hostile text, someone else's order.
  await assert.rejects(customer.sendMessage(id, "bell \u0007"), { code: "bad_request" });
  const stranger = client(srv, "c9", "customer");
  await stranger.connect();
  await assert.rejects(stranger.sendMessage(id, "hello"), { code: "forbidden" });
});
