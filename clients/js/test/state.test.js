// The client's state machine against a scripted in-process socket: frames the real server
// rarely or never produces on demand (duplicates, events racing a subscribe reply, gap frames,
// arbitrary close codes).
import assert from "node:assert/strict";
import { test } from "node:test";
import { SwitchyardClient } from "../switchyard.js";
import { mint, sleep, until } from "../support/harness.js";

/** A WebSocket stand-in: records what the client sends, lets the test play the server. */
class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, readyState: 0, sent: [], listeners: {} });
    FakeSocket.all.push(this);
  }
  addEventListener(name, fn) {
    (this.listeners[name] ??= []).push(fn);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = "") {
    queueMicrotask(() => this.drop(code, reason));
  }
  // test side
  emit(name, ev) {
    for (const fn of this.listeners[name] ?? []) fn(ev);
  }
  welcome(offset = 0, epoch = "e1") {
    this.readyState = 1;
    this.emit("open", {});
    this.recv({ type: "welcome", conn: "x", sub: "u1", role: "customer", rooms: ["user:u1"], positions: { "user:u1": { epoch, offset } } });
  }
  recv(frame) {
    this.emit("message", { data: JSON.stringify(frame) });
  }
  event(room, offset, n = offset) {
    this.recv({ type: "event", room, event: "t.x", offset, data: { n } });
  }
  drop(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.emit("close", { code, reason });
  }
  last() {
    return this.sent.at(-1);
  }
}

function setup(opts = {}) {
  FakeSocket.all = [];
  const token = mint({ sub: "u1", role: "customer" });
  const c = new SwitchyardClient({ url: "ws://fake/ws", token, WebSocket: FakeSocket, backoff: { initialMs: 1, maxMs: 5 }, ...opts });
  const log = [];
  for (const n of ["event", "recovered", "resync", "gap", "revoked", "reconnecting", "close", "error"]) c.on(n, (p) => log.push([n, p]));
  return { c, log, token, sock: () => FakeSocket.all.at(-1) };
}

test("offers switchyard.v1 and bearer.<token>; drops events at or below the last applied offset", async () => {
  const { c, token, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  assert.deepEqual(sock().protocols, ["switchyard.v1", `bearer.${token}`]);
  sock().welcome(0);
  await connected;
  const got = [];
  c.on("event", (e) => got.push(e.offset));
  for (const off of [1, 2, 2, 1, 3, 3, 5]) sock().event("user:u1", off);
  assert.deepEqual(got, [1, 2, 3, 5]); // a jump (conflation) is not a loss; repeats are dropped
  assert.deepEqual(c.position("user:u1"), { epoch: "e1", offset: 5 });
  c.close();
});

test("events racing a subscribe reply are dropped; later ones reach onEvent after the promise settles", async () => {
  const { c, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().welcome();
  await connected;
  const got = [];
  const order = [];
  const p = c.subscribe("order:1", (e) => {
    got.push(e.offset);
    order.push(`event ${e.offset}`);
  });
  const req = sock().last();
  assert.deepEqual({ ...req, id: 0 }, { op: "subscribe", room: "order:1", id: 0 });
  sock().event("order:1", 4); // before the reply: covered by the snapshot
  sock().recv({ type: "ok", id: req.id, op: "subscribe", room: "order:1", position: { epoch: "e1", offset: 4 }, snapshot: { id: "1" } });
  sock().event("order:1", 4); // duplicate of what the snapshot covers
  sock().event("order:1", 5); // same network read as the reply
  const sub = await p;
  order.push("snapshot");
  assert.deepEqual(sub, { room: "order:1", position: { epoch: "e1", offset: 4 }, recovered: false, snapshot: { id: "1" } });
  await sleep(5);
  assert.deepEqual(got, [5]);
  assert.deepEqual(order, ["snapshot", "event 5"]);
  c.close();
});

test("a gap frame resubscribes with since; a recovered reply is followed by the missed events", async () => {
  const { c, log, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().welcome();
  await connected;
  const got = [];
  const p = c.subscribe("order:1", (e) => got.push(e.offset));
  sock().recv({ type: "ok", id: sock().last().id, op: "subscribe", room: "order:1", position: { epoch: "e1", offset: 2 }, snapshot: {} });
  await p;
  await sleep(5);
  sock().event("order:1", 3);
  sock().recv({ type: "gap", room: "order:1" });
  const req = sock().last();
  assert.deepEqual(req.since, { epoch: "e1", offset: 3 });
  sock().event("order:1", 4); // written before the server read the resubscribe: applied, never sent again
  sock().recv({ type: "ok", id: req.id, op: "subscribe", room: "order:1", position: { epoch: "e1", offset: 5 }, recovered: true });
  sock().event("order:1", 5); // recovered
  sock().event("order:1", 5); // a duplicate (defence in depth)
  sock().event("order:1", 6);
  assert.deepEqual(got, [3, 4, 5, 6]);
  assert.deepEqual(log.filter(([n]) => ["gap", "recovered", "resync"].includes(n)).map(([n]) => n), ["gap", "recovered"]);
  c.close();
});

test("an event naming a new epoch is applied though its offset is lower; the position follows it", async () => {
  const { c, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().welcome(100);
  await connected;
  const got = [];
  c.on("event", (e) => got.push(e.offset));
  sock().recv({ type: "gap", room: "user:u1" });
  sock().recv({ type: "event", epoch: "e2", room: "user:u1", event: "t.x", offset: 1, data: {} });
  sock().event("user:u1", 2);
  sock().event("user:u1", 2);
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(c.position("user:u1"), { epoch: "e2", offset: 2 });
  c.close();
});

test("a reconnect asks for the user room's recovery in the URL; the welcome answers", async () => {
  const { c, log, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  assert.equal(sock().url, "ws://fake/ws");
  sock().welcome(3);
  await connected;
  sock().drop(1006);
  await until(() => FakeSocket.all.length === 2, "a reconnect");
  assert.equal(sock().url, "ws://fake/ws?since=e1%3A3");
  sock().readyState = 1;
  sock().emit("open", {});
  sock().recv({ type: "welcome", conn: "x", sub: "u1", role: "customer", rooms: ["user:u1"], positions: { "user:u1": { epoch: "e1", offset: 5 } }, recovered: true });
  sock().event("user:u1", 4);
  sock().event("user:u1", 5);
  assert.deepEqual(sock().sent, [], "no resubscribe of the user room");
  assert.deepEqual(log.filter(([n]) => n === "recovered").map(([, p]) => p), [{ room: "user:u1", position: { epoch: "e1", offset: 5 } }]);
  assert.deepEqual(c.position("user:u1"), { epoch: "e1", offset: 5 });
  c.close();
});

test("a background resubscribe refused with internal/rate_limited is retried; forbidden drops the room", async () => {
  const { c, log, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().welcome();
  await connected;
  for (const room of ["order:1", "order:2"]) {
    const p = c.subscribe(room);
    sock().recv({ type: "ok", id: sock().last().id, op: "subscribe", room, position: { epoch: "e1", offset: 0 }, snapshot: {} });
    await p;
  }
  sock().recv({ type: "gap", room: "order:1" });
  sock().recv({ type: "error", id: sock().last().id, code: "internal", message: "bus unavailable, retry" });
  await until(() => sock().sent.length === 4, "a retried subscribe");
  assert.deepEqual(sock().last().room, "order:1");
  assert.equal(c.position("order:1").offset, 0);
  sock().recv({ type: "gap", room: "order:2" });
  sock().recv({ type: "error", id: sock().last().id, error: "forbidden", message: "not allowed to join this room" });
  assert.equal(c.position("order:2"), null);
  assert.deepEqual(log.find(([n]) => n === "error")[1], { room: "order:2", code: "forbidden", message: "not allowed to join this room" });
  c.close();
});

test("revoked rooms are forgotten and not resubscribed after a reconnect (4003)", async () => {
  const { c, log, sock } = setup();
  const connected = c.connect();
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().welcome();
  await connected;
  for (const room of ["order:1", "order:2"]) {
    const p = c.subscribe(room);
    sock().recv({ type: "ok", id: sock().last().id, op: "subscribe", room, position: { epoch: "e1", offset: 0 }, snapshot: {} });
    await p;
  }
  sock().recv({ type: "revoked", room: "order:1", reason: "reassigned" });
  assert.equal(c.position("order:1"), null);
  sock().drop(4003, "slow consumer");
  await until(() => FakeSocket.all.length === 2, "a reconnect");
  sock().welcome(0);
  assert.deepEqual(sock().sent.map((f) => [f.op, f.room, f.since]), [["subscribe", "order:2", { epoch: "e1", offset: 0 }]]);
  assert.deepEqual(log.find(([n]) => n === "revoked")[1], { room: "order:1", reason: "reassigned" });
  assert.deepEqual(log.find(([n]) => n === "close")[1], { code: 4003, reason: "slow consumer", final: false });
  c.close();
});

for (const code of [1000, 1002, 1007, 1009, 4500, 4501, 4999]) {
  test(`close ${code} is final: no reconnect, pending requests and subscribes reject`, async () => {
    const { c, log, sock } = setup();
    const connected = c.connect();
    await until(() => FakeSocket.all.length === 1, "a socket");
    sock().welcome();
    await connected;
    const ping = c.ping();
    sock().drop(code, "bye");
    await assert.rejects(ping, { code: "disconnected" });
    await assert.rejects(c.subscribe("order:9"), { code: "closed" });
    await sleep(30);
    assert.equal(FakeSocket.all.length, 1);
    assert.deepEqual(log.filter(([n]) => n === "close").map(([, p]) => p), [{ code, reason: "bye", final: true }]);
    assert.equal(log.filter(([n]) => n === "reconnecting").length, 0);
  });
}

for (const code of [1001, 1006, 1011, 4000, 4001, 4002, 4499]) {
  test(`close ${code} reconnects with a new socket`, async () => {
    const { c, log, sock } = setup();
    const connected = c.connect();
    await until(() => FakeSocket.all.length === 1, "a socket");
    sock().welcome();
    await connected;
    sock().drop(code);
    await until(() => FakeSocket.all.length === 2, "a reconnect");
    assert.equal(log.filter(([n]) => n === "reconnecting").length, 1);
    c.close();
  });
}

test("an expired fixed token is not retried: close is final", async () => {
  FakeSocket.all = [];
  const expired = mint({ sub: "u1", role: "customer", exp: Math.floor(Date.now() / 1000) - 10 });
  const { c, log, sock } = setup({ token: expired });
  c.connect().catch(() => {});
  await until(() => FakeSocket.all.length === 1, "a socket");
  sock().drop(1006);
  await sleep(30);
  assert.equal(FakeSocket.all.length, 1);
  assert.deepEqual(log.at(-1), ["close", { code: 1006, reason: "token expired", final: true }]);
});
