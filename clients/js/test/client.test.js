// The client against the real gateway binary (SWITCHYARD_BIN): subscribe/unsubscribe and
// errors, recovery after a network drop, resync after a restart, final close codes, refresh.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";
import { SwitchyardClient } from "../switchyard.js";
import { api, gate, mint, once, publish, sleep, startServer, until } from "../support/harness.js";

const servers = [];
async function server(opts) {
  const s = await startServer(opts);
  servers.push(s);
  return s;
}
after(async () => {
  for (const s of servers) await s.stop("SIGKILL");
  for (const s of servers) s.cleanup();
});

const clients = [];
after(() => {
  for (const c of clients) c.close(); // a failed test must not leave a client reconnecting
});

const admin = () => mint({ sub: "a1", role: "admin" });

/** A client for `sub` that records what it emits. `token` defaults to a fresh customer token. */
function client(srv, { sub = "c1", token, ...opts } = {}) {
  const c = new SwitchyardClient({
    url: srv.wsUrl,
    token: token ?? (() => mint({ sub, role: "customer" })),
    WebSocket,
    backoff: { initialMs: 50, maxMs: 200 },
    ...opts,
  });
  clients.push(c);
  c.log = [];
  for (const name of ["welcome", "event", "recovered", "resync", "gap", "revoked", "reconnecting", "close", "error", "refreshed"]) {
    c.on(name, (payload) => c.log.push({ name, payload }));
  }
  c.seen = (name, pred = () => true) => c.log.filter((e) => e.name === name && pred(e.payload)).map((e) => e.payload);
  return c;
}

test("subscribe/unsubscribe resolve with position and snapshot; server errors reject with {code, message}", async () => {
  const srv = await server();
  const c = client(srv);
  const welcome = await c.connect();
  assert.deepEqual(welcome.rooms, ["user:c1"]);
  assert.deepEqual(c.position("user:c1"), welcome.positions["user:c1"]);

  const created = await api(srv, "POST", "/api/orders", mint({ sub: "c1", role: "customer" }), {
    items: [{ sku: "milk-1l", qty: 2, unit_price_paise: 6500 }],
    address: "12 MG Road",
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  const room = `order:${id}`;

  const orderEvents = [];
  const sub = await c.subscribe(room, (e) => orderEvents.push(e));
  assert.equal(sub.recovered, false);
  assert.equal(sub.snapshot.id, id);
  assert.equal(sub.snapshot.status, "placed");
  assert.equal(typeof sub.position.epoch, "string");

  assert.equal((await api(srv, "POST", `/api/orders/${id}/status`, admin(), { status: "confirmed" })).status, 200);
  await until(() => orderEvents.length === 1, "order.status in the order room");
  assert.equal(orderEvents[0].event, "order.status");
  assert.equal(orderEvents[0].data.status, "confirmed");
  assert.equal(orderEvents[0].offset, sub.position.offset + 1);
  assert.deepEqual(c.position(room), { epoch: sub.position.epoch, offset: sub.position.offset + 1 });
  // The user room carries the order's events too (order.created, order.status), via 'event'.
  await until(() => c.seen("event", (e) => e.room === "user:c1").length === 2, "user-room events");

  for (const [bad, code] of [["user:c2", "forbidden"], ["order:999999", "forbidden"], ["nope", "bad_request"]]) {
    await assert.rejects(c.subscribe(bad), (err) => {
      assert.equal(err.code, code, `${bad}: ${err.code}`);
      assert.equal(typeof err.message, "string");
      assert.ok(err.message.length > 0);
      return true;
    });
    assert.equal(c.position(bad), null, "a refused room is forgotten");
  }

  await c.unsubscribe(room);
  assert.equal(c.position(room), null);
  assert.equal((await api(srv, "POST", `/api/orders/${id}/status`, admin(), { status: "packed" })).status, 200);
  await until(() => c.seen("event", (e) => e.room === "user:c1").length === 3, "user-room status event");
  await c.ping();
  await sleep(100);
  assert.equal(orderEvents.length, 1, "no event after unsubscribe");
  assert.equal(c.seen("event", (e) => e.room === room).length, 1);
  c.close();
  assert.deepEqual(c.seen("close").at(-1), { code: 1000, reason: "client closed", final: true });
});

test("a network drop (1006) reconnects with since and recovers exactly the missed events, in order", async () => {
  const srv = await server();
  let tokenGate = null;
  let calls = 0;
  const c = client(srv, {
    token: async () => {
      calls++;
      if (tokenGate) await tokenGate.promise; // holds the reconnect while the test publishes
      return mint({ sub: "c1", role: "customer" });
    },
  });
  const got = [];
  c.on("event", (e) => got.push(e));
  await c.connect();
  for (const n of [1, 2]) await publish(srv, "user:c1", "promo.tick", { n });
  await until(() => got.length === 2, "two live events");

  tokenGate = gate();
  c._socket.terminate(); // like a network drop: no close frame
  const closed = await once(c, "close");
  assert.deepEqual(closed, { code: 1006, reason: "", final: false });
  await until(() => calls === 2, "the reconnect asking for a token");
  for (const n of [3, 4, 5]) await publish(srv, "user:c1", "promo.tick", { n }); // missed
  tokenGate.open();

  const recovered = await once(c, "recovered");
  assert.equal(recovered.room, "user:c1");
  assert.equal(recovered.position.offset, 5);
  await publish(srv, "user:c1", "promo.tick", { n: 6 }); // live again
  await until(() => got.length >= 6, "missed and live events").catch((err) => {
    throw new Error(`${err.message}: got ${JSON.stringify(got.map((e) => e.offset))}, log ${JSON.stringify(c.log)}`);
  });
  await sleep(100); // a duplicate would show up here
  assert.deepEqual(got.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(got.map((e) => e.data.n), [1, 2, 3, 4, 5, 6]);
  assert.equal(c.seen("resync").length, 0);
  assert.equal(c.seen("welcome").length, 2);
  assert.equal(c.seen("reconnecting").length, 1);
  c.close();
});

test("a restart (SIGTERM → 4000, new epoch) reconnects on the same port and resyncs: recovered:false + 'resync'", async () => {
  const first = await server();
  let tokenGate = null;
  let calls = 0;
  const c = client(first, {
    token: async () => {
      calls++;
      if (tokenGate) await tokenGate.promise;
      return mint({ sub: "c1", role: "customer" });
    },
  });
  const got = [];
  c.on("event", (e) => got.push(e));
  const welcome1 = await c.connect();
  await publish(first, "user:c1", "promo.tick", { n: 1 });
  await until(() => got.length === 1, "a live event");

  tokenGate = gate();
  await first.stop("SIGTERM"); // drain: every socket closed with 4000
  await until(() => c.seen("close").length === 1, "the drain close");
  const closed = c.seen("close");
  assert.equal(closed.length, 1);
  assert.equal(closed[0].code, 4000);
  assert.equal(closed[0].final, false);

  const second = await server({ dir: first.dir, port: first.port });
  await until(() => calls === 2, "the reconnect asking for a token");
  await publish(second, "user:c1", "promo.tick", { n: 2 }); // missed, in the new epoch
  tokenGate.open();

  const resync = await once(c, "resync");
  assert.equal(resync.room, "user:c1");
  assert.equal(resync.snapshot, null); // a user room has no snapshot: refetch over REST
  assert.notEqual(resync.position.epoch, welcome1.positions["user:c1"].epoch);
  assert.equal(resync.position.offset, 1);
  assert.equal(c.seen("recovered").length, 0);

  await publish(second, "user:c1", "promo.tick", { n: 3 });
  await until(() => got.length === 2, "the live event in the new epoch");
  assert.deepEqual(got.map((e) => [e.offset, e.data.n]), [[1, 1], [2, 3]]);
  assert.deepEqual(c.position("user:c1"), { epoch: resync.position.epoch, offset: 2 });
  c.close();
});

test("a final close code (revoked, 4501) is not reconnected", async () => {
  const srv = await server();
  let calls = 0;
  const c = client(srv, {
    token: () => {
      calls++;
      return mint({ sub: "c1", role: "customer" });
    },
  });
  await c.connect();
  const pending = c.subscribe("user:c1");
  await pending;
  const res = await api(srv, "POST", "/api/users/c1/revoke", admin());
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const closed = await once(c, "close");
  assert.equal(closed.code, 4501);
  assert.equal(closed.final, true);
  await sleep(1500);
  assert.equal(c.seen("reconnecting").length, 0, "no reconnect scheduled");
  assert.equal(calls, 1, "no new token asked for");
  assert.equal(c.connected, false);
  await assert.rejects(c.ping(), { code: "disconnected" });
  c.close(); // idempotent: no second 'close'
  assert.equal(c.seen("close").length, 1);
});

test("token refresh: the provider is called refreshBeforeExpSecs before exp; the server accepts it", async () => {
  const srv = await server();
  let calls = 0;
  const c = client(srv, {
    refreshBeforeExpSecs: 119,
    token: async () => {
      calls++;
      return mint({ sub: "c1", role: "customer", ttlSecs: 120 }); // refresh due in ~1 s
    },
  });
  await c.connect();
  const refreshed = await once(c, "refreshed");
  assert.equal(calls, 2);
  assert.ok(refreshed.exp > Date.now() / 1000 + 100);
  await c.ping();
  assert.equal(c.seen("error").length, 0);
  assert.equal(c.seen("reconnecting").length, 0);
  c.close();
});

test("a product room: the snapshot is the product, then every stock change live", async () => {
  const srv = await server();
  const c = client(srv, { sub: "c7" });
  await c.connect();
  const stock = [];
  const sub = await c.subscribe("product:eggs-12", (e) => stock.push(e));
  assert.equal(sub.snapshot.sku, "eggs-12");
  const start = sub.snapshot.stock;
  assert.ok(start > 2, JSON.stringify(sub.snapshot));

  // An order takes two units, a restock adds five: each change arrives as stock.updated.
  const customer = mint({ sub: "c7", role: "customer" });
  const placed = await api(srv, "POST", "/api/orders", customer, { items: [{ sku: "eggs-12", qty: 2 }], address: "1 Hosur Road" });
  assert.equal(placed.status, 201, JSON.stringify(placed.body));
  await until(() => stock.length === 1, "stock.updated after the order");
  assert.equal(stock[0].event, "stock.updated");
  assert.deepEqual([stock[0].data.sku, stock[0].data.stock], ["eggs-12", start - 2]);
  const restocked = await api(srv, "PATCH", "/api/products/eggs-12", admin(), { stock_delta: 5 });
  assert.equal(restocked.status, 200, JSON.stringify(restocked.body));
  await until(() => stock.length === 2, "stock.updated after the restock");
  assert.equal(stock[1].data.stock, start + 3);
  assert.ok(stock[1].data.updated_at > stock[0].data.updated_at);
  assert.equal(stock[1].offset, stock[0].offset + 1);
});
