// The dashboard end to end: the real binary (SWITCHYARD_BIN), headless Chromium (CHROMIUM,
// Debian's /usr/bin/chromium by default) driven by playwright-core, the REST API as the source
// of changes. It checks that the admin view (/) follows revenue, stock (with low-stock alerts)
// and order statuses live without
// a reload, that new orders appear without polling (no `GET /api/orders?after=` after the
// first load), that it comes back after the server restarts, that the tracking view (/track)
// follows its order and carries its chat, that the map shows the fleet from `admin:fleet` alone
// with a partner greyed out once it goes offline, and (a message sent from the page, the partner's answer
// over REST shown without a reload, support opening the chat from the admin page), that the API reference page (/api/docs) renders from the embedded Redoc,
// and saves screenshots of both views: to target/screenshots/, or with
// SCREENSHOTS_UPDATE=1 to docs/screenshots/ (the committed ones the README shows), so a test
// run does not leave the working tree changed.
//
// Partners' locations are sent from a third page of the same browser, with the same client
// module the dashboard uses (/client/switchyard.js), as a partner app would.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { mint, sleep, startServer } from "../../clients/js/support/harness.js";

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = resolve(here, process.env.SCREENSHOTS_UPDATE === "1" ? "../../docs/screenshots" : "../../target/screenshots");
// Generous: it only bounds a failing test, and Chromium on a loaded machine can take seconds.
const WAIT = { timeout: 30_000 };

const tokens = {
  admin: mint({ sub: "admin", role: "admin", ttlSecs: 3600 }),
  c1: mint({ sub: "c1", role: "customer", ttlSecs: 3600 }),
  c2: mint({ sub: "c2", role: "customer", ttlSecs: 3600 }),
  p1: mint({ sub: "p1", role: "partner", ttlSecs: 3600 }),
  p2: mint({ sub: "p2", role: "partner", ttlSecs: 3600 }),
};

let server;
let browser;
let context;
let admin; // the admin page, open from the first test to the last
/** Every `GET /api/orders?…` the admin page made: [{url, afterFirstLoad}]. */
const orderListings = [];
/** Every frame the admin page sent on its sockets. */
const adminFrames = [];
const pageErrors = [];

before(async () => {
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Root in a container: Chromium's sandbox needs user namespaces it may not get.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 820 }, deviceScaleFactor: 1 });
  context.on("page", (page) => watch(page));
});

after(async () => {
  await browser?.close();
  await server?.stop("SIGKILL");
  server?.cleanup();
});

function watch(page) {
  page.on("pageerror", (err) => pageErrors.push(`${page.url()}: ${err.message}`));
}

/** One REST call as `who`; throws unless the status is 2xx. */
async function rest(who, method, path, body, headers = {}) {
  const res = await fetch(server.url(path), {
    method,
    headers: { authorization: `Bearer ${tokens[who]}`, "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path} → ${res.status} ${JSON.stringify(json)}`);
  return json;
}

const order = (who, items, address) => rest(who, "POST", "/api/orders", { items, address });
const setStatus = (id, status) => rest("admin", "POST", `/api/orders/${id}/status`, { status });
const assign = (id, partner) => rest("admin", "POST", `/api/orders/${id}/assign`, { partner });
const pay = (who, o) =>
  rest(who, "POST", `/api/orders/${o.id}/payment`, { amount_paise: o.total_paise }, { "idempotency-key": `pay-${o.id}` });

/**
 * Walks a partner along `path` ([[lat, lng]…]) for `orderId`, from a page of its own, then
 * disconnects — or with `stay`, stays connected (online) and returns the page (closing it
 * takes the partner offline).
 */
async function drive(partner, orderId, path, everyMs = 250, stay = false) {
  const page = await context.newPage();
  await page.goto(server.url("/track")); // any page of the server: same origin for the socket
  await page.evaluate(
    async ({ token, orderId, path, everyMs, stay }) => {
      const { SwitchyardClient } = await import("/client/switchyard.js");
      const client = new SwitchyardClient({ url: `ws://${location.host}/ws`, token });
      await client.connect();
      for (let i = 0; i < path.length; i++) {
        const [lat, lng] = path[i];
        const [nlat, nlng] = path[Math.min(i + 1, path.length - 1)];
        const heading = (Math.atan2(nlng - lng, nlat - lat) * 180) / Math.PI;
        client._socket.send(
          JSON.stringify({ op: "location", order_id: orderId, lat, lng, heading: (heading + 360) % 360, speed: 7.5 }),
        );
        await new Promise((r) => setTimeout(r, everyMs));
      }
      if (stay) window.partnerClient = client;
      else client.close();
    },
    { token: tokens[partner], orderId, path, everyMs, stay },
  );
  if (stay) return page;
  await page.close();
}

/** `n` points from `a` to `b` through the corner (a's lat, b's lng): a ride along two streets. */
function route([lat1, lng1], [lat2, lng2], n) {
  const half = Math.floor(n / 2);
  const pts = [];
  for (let i = 0; i <= half; i++) pts.push([lat1, lng1 + ((lng2 - lng1) * i) / half]);
  for (let i = 1; i < n - half; i++) pts.push([lat1 + ((lat2 - lat1) * i) / (n - half - 1), lng2]);
  return pts;
}

const text = (page, selector) => page.locator(selector).first().textContent();
const statusOf = (id) => `tr[data-order="${id}"] .status`;
async function waitStatus(page, id, status, opts = WAIT) {
  await page.waitForFunction(
    ([sel, status]) => document.querySelector(sel)?.dataset.status === status,
    [statusOf(id), status],
    opts,
  );
}

const milk = { sku: "milk-1l", qty: 2, unit_price_paise: 6500 };
const bread = { sku: "bread-400g", qty: 1, unit_price_paise: 4500 };
const eggs = { sku: "eggs-12", qty: 1, unit_price_paise: 9900 };
const orders = {};

test("the admin page shows the orders and a revenue total that follows payments made over REST", async () => {
  orders.a = await order("c1", [milk, bread], "12 MG Road");
  orders.b = await order("c2", [eggs], "4 Church Street");
  orders.c = await order("c1", [bread], "80 Residency Road");
  await pay("c1", orders.a);

  admin = await context.newPage();
  admin.on("websocket", (ws) => ws.on("framesent", ({ payload }) => adminFrames.push(String(payload))));
  let firstLoadDone = false;
  admin.on("request", (req) => {
    const url = new URL(req.url());
    if (url.pathname === "/api/orders" && req.method() === "GET") orderListings.push({ url: req.url(), afterFirstLoad: firstLoadDone });
  });
  await admin.goto(server.url(`/#token=${tokens.admin}`));
  await admin.waitForSelector('#conn[data-state="connected"]', WAIT);
  await admin.waitForFunction(() => document.body.dataset.ordersLoaded === "1", null, WAIT);
  firstLoadDone = true;
  assert.ok(orderListings.length > 0, "the first load reads the orders");
  await admin.evaluate(() => (window.stillTheSamePage = true));
  await admin.waitForSelector(statusOf(orders.c.id), WAIT);
  assert.equal(await text(admin, "#revenue-total"), "₹175.00");
  assert.equal(await text(admin, "#revenue-orders"), "1 paid order");

  // Payments through the REST API reach the ticker over `admin:revenue`, spread out so the
  // sparkline has steps.
  await pay("c2", orders.b);
  await admin.waitForFunction(() => document.getElementById("revenue-total").dataset.paise === "27400", null, WAIT);
  assert.equal(await text(admin, "#revenue-total"), "₹274.00");
  assert.equal(await text(admin, "#revenue-orders"), "2 paid orders");
  await admin.waitForFunction(
    (id) => document.querySelector(`tr[data-order="${id}"] .paid-cell`)?.textContent === "paid",
    orders.b.id,
    WAIT,
  );
  await sleep(1200);
  await pay("c1", orders.c);
  await admin.waitForFunction(() => document.getElementById("revenue-total").dataset.paise === "31900", null, WAIT);
  assert.equal(await admin.evaluate(() => window.stillTheSamePage), true);
});

test("the inventory panel shows live stock and low-stock alerts", async () => {
  const stockOf = (sku) => admin.evaluate((sku) => document.querySelector(`tr[data-sku="${sku}"] .stock`)?.dataset.stock, sku);
  const waitStock = (sku, stock) =>
    admin.waitForFunction(
      ([sku, stock]) => document.querySelector(`tr[data-sku="${sku}"] .stock`)?.dataset.stock === stock,
      [sku, String(stock)],
      WAIT,
    );
  // The seeded catalog, with what the orders above reserved already taken off.
  await admin.waitForFunction(() => document.querySelectorAll("#inventory tr").length === 20, null, WAIT);
  const curd = await rest("admin", "GET", "/api/products/curd-400g");
  assert.equal(await stockOf("curd-400g"), String(curd.stock));
  // An order takes units: the panel follows, live.
  await order("c1", [{ sku: "curd-400g", qty: 3 }], "5 Lavelle Road");
  await waitStock("curd-400g", curd.stock - 3);
  // Down to the threshold (10): a low-stock alert; to zero: an out-of-stock alert.
  await rest("admin", "PATCH", "/api/products/curd-400g", { stock: 12 });
  await waitStock("curd-400g", 12);
  await rest("admin", "PATCH", "/api/products/curd-400g", { stock_delta: -3 });
  await admin.waitForSelector('#stock-alerts li[data-sku="curd-400g"][data-kind="low"]', WAIT);
  await rest("admin", "PATCH", "/api/products/curd-400g", { stock: 0 });
  await admin.waitForSelector('#stock-alerts li[data-sku="curd-400g"][data-kind="out"]', WAIT);
  await waitStock("curd-400g", 0);
  assert.match(await text(admin, '#stock-alerts li[data-kind="out"]'), /out of stock/);
  // A restock.
  await rest("admin", "PATCH", "/api/products/curd-400g", { stock_delta: 40 });
  await waitStock("curd-400g", 40);
  assert.equal(await admin.evaluate(() => window.stillTheSamePage), true);
});

test("order statuses change in place, new orders appear, partners move on the map", async () => {
  for (const status of ["confirmed", "packed"]) {
    await setStatus(orders.a.id, status);
    await waitStatus(admin, orders.a.id, status);
  }
  assert.equal(await text(admin, statusOf(orders.a.id)), "packed");
  await setStatus(orders.a.id, "out_for_delivery");
  await assign(orders.a.id, "p1");
  await waitStatus(admin, orders.a.id, "out_for_delivery");
  await admin.waitForFunction(
    (id) => document.querySelector(`tr[data-order="${id}"] .partner`)?.textContent === "p1",
    orders.a.id,
    WAIT,
  );

  // A new order: pushed to the page in `admin:orders`, then followed live.
  orders.d = await order("c2", [milk, eggs], "221 Brigade Road");
  await waitStatus(admin, orders.d.id, "placed");
  await setStatus(orders.d.id, "confirmed");
  await waitStatus(admin, orders.d.id, "confirmed");
  await setStatus(orders.b.id, "confirmed");
  await assign(orders.b.id, "p2");
  await setStatus(orders.c.id, "cancelled");
  await waitStatus(admin, orders.c.id, "cancelled");
  // c was paid: cancelling it refunds it, and the ticker goes back down.
  await admin.waitForFunction(() => document.getElementById("revenue-total").dataset.paise === "27400", null, WAIT);
  await admin.waitForFunction(
    (id) => document.querySelector(`tr[data-order="${id}"] .paid-cell`)?.textContent === "refunded",
    orders.c.id,
    WAIT,
  );

  // The customer's tracking page for order a, open while its partner rides.
  const track = await context.newPage();
  await track.goto(server.url(`/track#order=${orders.a.id}&token=${tokens.c1}`));
  await track.waitForSelector('#conn[data-state="connected"]', WAIT);
  await track.waitForSelector('#timeline[data-status="out_for_delivery"]', WAIT);

  // The fleet, from `admin:fleet` alone (the page joins no order room): p1 rides and stays
  // online; p2 rides, goes offline, and is greyed out where it was last.
  const online = (p, yes) => `#fleet li[data-partner="${p}"][data-online="${yes ? 1 : 0}"]`;
  const [p1Page] = await Promise.all([
    drive("p1", orders.a.id, route([12.9612, 77.6101], [12.9719, 77.6245], 12), 250, true),
    drive("p2", orders.b.id, route([12.9801, 77.5902], [12.9665, 77.6015], 10)),
    admin.waitForSelector(online("p2", true), WAIT),
  ]);
  await admin.waitForFunction(() => document.getElementById("map").dataset.markers === "2", null, WAIT);
  await admin.waitForSelector(online("p2", false), WAIT);
  assert.match(await text(admin, '#fleet li[data-partner="p2"]'), /offline/);
  assert.equal(await admin.locator(online("p1", true)).count(), 1);
  assert.equal(await admin.evaluate(() => document.getElementById("map").dataset.markers), "2", "greyed out, not removed");
  assert.equal(await admin.locator("#fleet li").count(), 2);
  const rooms = adminFrames.map((f) => JSON.parse(f)).filter((f) => f.op === "subscribe").map((f) => f.room);
  assert.ok(rooms.includes("admin:fleet"), `${rooms}`);
  assert.deepEqual(rooms.filter((r) => r.startsWith("order:")), [], "the map needs no order room");
  await track.waitForFunction(() => document.getElementById("map").dataset.markers === "1", null, WAIT);
  await track.waitForFunction(() => /covered/.test(document.getElementById("partner-info").textContent), null, WAIT);
  assert.equal(await admin.evaluate(() => window.stillTheSamePage), true);

  // The order's chat: the customer writes from the page, the partner answers over REST and the
  // answer appears without a reload; support opens the same chat from the admin page's link.
  await track.fill("#chat-text", "I'm at the gate, ring twice");
  await track.press("#chat-text", "Enter");
  await track.waitForFunction(
    () => [...document.querySelectorAll("#chat li.mine[data-message]")].some((li) => /ring twice/.test(li.textContent)),
    null,
    WAIT,
  );
  const stored = await rest("c1", "GET", `/api/orders/${orders.a.id}/messages`);
  assert.deepEqual(stored.messages.map((m) => m.text), ["I'm at the gate, ring twice"]);
  await rest("p1", "POST", `/api/orders/${orders.a.id}/messages`, { text: "Coming up, 2 minutes", client_msg_id: "p1-a" });
  await track.waitForFunction(() => /Coming up, 2 minutes/.test(document.getElementById("chat").textContent), null, WAIT);
  const href = await admin.locator(`tr[data-order="${orders.a.id}"] td.id a`).getAttribute("href");
  assert.match(href, /^\/track#order=/);
  const support = await context.newPage();
  await support.goto(server.url(href));
  await support.waitForFunction(() => document.querySelectorAll("#chat li[data-message]").length === 2, null, WAIT);
  await support.fill("#chat-text", "Support here: your partner is on the way");
  await support.press("#chat-text", "Enter");
  await track.waitForFunction(() => /support \(admin\)/.test(document.getElementById("chat").textContent), null, WAIT);
  await support.close();

  mkdirSync(SCREENSHOTS, { recursive: true });
  await admin.screenshot({ path: resolve(SCREENSHOTS, "admin.png"), fullPage: true });
  await track.screenshot({ path: resolve(SCREENSHOTS, "tracking.png") });

  // p1's app goes away: greyed out too.
  await p1Page.close();
  await admin.waitForSelector(online("p1", false), WAIT);

  // The tracking page follows the order to its end.
  await setStatus(orders.a.id, "delivered");
  await track.waitForSelector('#timeline[data-status="delivered"]', WAIT);
  assert.match(await text(track, '#timeline li[data-step="delivered"]'), /delivered/);
  await waitStatus(admin, orders.a.id, "delivered");
  await track.close();

  // Seconds of new orders and changes, and the page never listed the orders again.
  assert.deepEqual(
    orderListings.filter((r) => r.afterFirstLoad).map((r) => r.url),
    [],
    "the admin page polled GET /api/orders after its first load",
  );
});

test("after a restart on the same port and database, the page reconnects and follows again", async () => {
  const { dir, port } = server;
  const stopped = Date.now();
  await server.stop("SIGTERM"); // drain: sockets closed with 4000, then exit
  await admin.waitForSelector('#conn[data-state="reconnecting"]', WAIT);
  server = await startServer({ dir, port });

  // The new process has a new epoch: every room resyncs (snapshot), and the page says so.
  await admin.waitForFunction(() => Number(document.body.dataset.resyncs) > 0, null, { timeout: 20_000 });
  await admin.waitForSelector('#conn[data-state="resynced"], #conn[data-state="connected"]', WAIT);
  const back = Date.now() - stopped;

  await setStatus(orders.d.id, "packed");
  await waitStatus(admin, orders.d.id, "packed");
  await pay("c2", orders.d);
  await admin.waitForFunction(() => document.getElementById("revenue-total").dataset.paise === "50300", null, WAIT);
  // And a new order after the restart is pushed too.
  orders.e = await order("c1", [eggs], "1 Lavelle Road");
  await waitStatus(admin, orders.e.id, "placed");
  await setStatus(orders.e.id, "confirmed");
  await waitStatus(admin, orders.e.id, "confirmed");

  assert.equal(await admin.evaluate(() => window.stillTheSamePage), true, "the page was reloaded");
  assert.ok(Number(await admin.evaluate(() => document.body.dataset.reconnects)) >= 1);
  console.log(`# back and resynced ${back} ms after SIGTERM`);
});

test("the pages explain how to get a token when the fragment has none", async () => {
  const page = await context.newPage();
  for (const path of ["/", "/track", `/track#order=1`]) {
    await page.goto(server.url(path));
    await page.waitForSelector("#help:not([hidden])", WAIT);
    assert.match(await text(page, "#help"), /switchyard token --sub/);
  }
  await page.goto(server.url("/#token=not-a-jwt"));
  await page.waitForSelector("#help:not([hidden])", WAIT);
  assert.match(await text(page, "#help-reason"), /rejected/);
  // Unknown assets are JSON 404s; the client module is served as JavaScript.
  const missing = await fetch(server.url("/assets/nope.js"));
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error, "not_found");
  const client = await fetch(server.url("/client/switchyard.js"));
  assert.match(client.headers.get("content-type"), /^text\/javascript/);
  await page.close();
});

test("the API reference (/api/docs) renders the OpenAPI document from the embedded bundle", async () => {
  const page = await context.newPage();
  const fetched = [];
  page.on("response", (res) => fetched.push(res.url()));
  await page.goto(server.url("/api/docs"));
  // Redoc has read /api/openapi.json and drawn its operations and schemas.
  for (const operation of ["Place an order", "Pay an order, once per", "Read the revenue totals"]) {
    await page.locator("h2", { hasText: operation }).first().waitFor(WAIT);
  }
  assert.match(await page.locator("h1").first().textContent(), /Switchyard REST API/);
  const spec = fetched.find((url) => url.endsWith("/api/openapi.json"));
  assert.ok(spec, `the page never fetched the document: ${fetched.join(", ")}`);
  // No CDN: everything the page loaded came from the server itself.
  const origin = new URL(server.url("/")).origin;
  const elsewhere = fetched.filter((url) => !url.startsWith(origin) && !url.startsWith("data:") && !url.startsWith("blob:"));
  assert.deepEqual(elsewhere, []);
  await page.close();
});

test("no page threw an error", () => {
  assert.deepEqual(pageErrors, []);
});
