// The admin view (/): revenue ticker with a sparkline, the inventory with live stock and
// low-stock alerts (`admin:inventory`), the live list of orders, the whole fleet on a
// map. Initial state over REST, then live events through clients/js:
//
// - `admin:revenue` carries `revenue.updated` (totals, and the payment that moved them);
// - `admin:orders` carries every order as it is placed (`order.created`) and every
//   `order.status`, `order.assigned`, `order.paid`, `order.refunded` of every order: the page
//   joins it first, then reads `GET /api/orders` once (every page), and never polls;
// - `admin:fleet` carries every partner's presence (`presence.join` / `presence.leave`) and
//   each active partner's newest position (`partner.location`, at most one a second per
//   partner); its snapshot lists the partners online with their last known positions. The
//   map is drawn from this room alone: partners offline are greyed out where they were last.
import {
  $,
  api,
  clock,
  colorFor,
  drawSparkline,
  fragment,
  isFinished,
  itemsText,
  liveClient,
  MapCanvas,
  money,
  rupees,
  showHelp,
  statusLabel,
} from "./common.js";

const MAX_ROWS = 300;
const SPARK_WINDOW_MS = 10 * 60_000;
const STALE_MS = 60_000;
const TRAIL_POINTS = 40;

/** @type {Map<string, any>} id → order, as the REST API returns it */
const orders = new Map();
/** @type {Map<string, HTMLTableRowElement>} */
const rows = new Map();
/** partner → {partner, order_id, lat, lng, heading, at, trail, online, since} */
const partners = new Map();
/** Revenue total over time, for the sparkline: [{t, v}] */
const samples = [];
let revenue = null;
let token;
let client;
let map;

const byId = (a, b) => Number(a) - Number(b) || String(a).localeCompare(String(b));

token = fragment().get("token");
if (!token) showHelp();
else start().catch((err) => note(`error: ${err.message}`));

async function start() {
  // One REST call first: a rejected token gets a clear message instead of a reconnect loop.
  try {
    setRevenue(await api(token, "/api/revenue"));
  } catch (err) {
    if (err.status === 401) return showHelp(`The token was rejected (${err.message}). Get a fresh one:`);
    if (err.status === 403) return showHelp("This view is for admins: open it with an admin token.");
    throw err;
  }
  $("app").hidden = false;
  map = new MapCanvas($("map"));
  note("orders: read once, then live over admin:orders");

  client = liveClient(token);
  client.on("event", onEvent);
  client.on("resync", (r) => onResync(r).catch((err) => note(`resync failed: ${err.message}`)));
  await client.connect();
  const { snapshot } = await client.subscribe("admin:revenue");
  if (snapshot) setRevenue(snapshot);
  // Joined before the catalog is read: a change in between is in the list or in the events.
  await client.subscribe("admin:inventory");
  await loadInventory();
  // Joined before the orders are read: an order placed in between is in the list or in the
  // room (both are applied: the newer state wins).
  await client.subscribe("admin:orders");
  await loadOrders();
  document.body.dataset.ordersLoaded = "1";
  setFleet((await client.subscribe("admin:fleet")).snapshot);
  setInterval(() => {
    drawRevenue();
    drawMap();
  }, 1000);
}

// ---- live events ----------------------------------------------------------------------------

function onEvent({ room, event, data }) {
  switch (event) {
    case "order.created":
      upsert(data);
      trimRows();
      break;
    case "revenue.updated":
      setRevenue(data);
      if (data.payment) patch(data.payment.order_id, { paid: true });
      if (data.refund) patch(data.refund.order_id, { refunded: true });
      break;
    case "order.status":
      patch(data.order_id, { status: data.status, updated_at: data.updated_at });
      break;
    case "order.assigned":
      patch(data.order_id, { partner: data.partner, updated_at: data.updated_at });
      break;
    case "order.paid":
      patch(data.order_id, { paid: true });
      break;
    case "order.refunded":
      patch(data.order_id, { refunded: true });
      break;
    case "partner.location":
      movePartner(data);
      break;
    case "presence.join":
      if (room === "admin:fleet") setOnline(data.sub, true);
      break;
    case "presence.leave":
      if (room === "admin:fleet") setOnline(data.sub, false);
      break;
    case "stock.updated":
      setStock(data);
      break;
    case "stock.low":
      alertStock(data, "low");
      break;
    case "stock.out":
      alertStock(data, "out");
      break;
  }
}

/**
 * The server could not replay what this page missed (it restarted, or the history no longer
 * reaches back): replace the room's state with the snapshot, or refetch it over REST.
 */
async function onResync({ room, snapshot }) {
  if (room === "admin:revenue") {
    setRevenue(snapshot ?? (await api(token, "/api/revenue")));
  } else if (room === "admin:inventory") {
    await loadInventory();
  } else if (room === "admin:orders") {
    // Changes of any order may be missing: read the orders again.
    await loadOrders();
  } else if (room === "admin:fleet") {
    setFleet(snapshot);
  }
}

// ---- orders -------------------------------------------------------------------------------

let loading = null;
/** Reads every order (every page) and shows them. */
function loadOrders() {
  loading ??= (async () => {
    try {
      let after = "";
      for (;;) {
        const page = await api(token, `/api/orders?after=${encodeURIComponent(after)}&limit=200`);
        for (const order of page.orders) upsert(order);
        if (!page.next_after) break;
        after = page.next_after;
      }
      trimRows();
    } finally {
      loading = null;
    }
  })();
  return loading;
}

function upsert(order) {
  const known = orders.get(order.id);
  // A listing read before a change that the room already brought is older: keep the newer.
  if (known && known.updated_at > order.updated_at) return;
  orders.set(order.id, order);
  render(order, Boolean(known) && changed(known, order));
}

function patch(id, fields) {
  const order = orders.get(id);
  if (!order) return; // not on the page (yet): the listing being read brings it
  const next = { ...order, ...fields };
  orders.set(id, next);
  render(next, changed(order, next));
}

const changed = (a, b) =>
  a.status !== b.status || a.partner !== b.partner || a.paid !== b.paid || a.refunded !== b.refunded;

function render(order, flash) {
  let tr = rows.get(order.id);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.order = order.id;
    for (const cls of ["id", "customer", "items", "num total", "st", "partner", "paid-cell", "updated"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.append(td);
    }
    tr.children[4].append(Object.assign(document.createElement("span"), { className: "status" }));
    // Newest first: a newer id goes above every older one.
    const after = [...rows.entries()].filter(([id]) => byId(id, order.id) < 0).sort(([a], [b]) => byId(b, a))[0];
    $("orders").insertBefore(tr, after ? after[1] : null);
    rows.set(order.id, tr);
  }
  const c = tr.children;
  // The order's id opens its tracking view with this admin token: the chat as support.
  let link = c[0].firstChild;
  if (!link) {
    link = Object.assign(document.createElement("a"), { target: "_blank", title: "open the order (chat as support)" });
    c[0].append(link);
  }
  link.href = `/track#order=${encodeURIComponent(order.id)}&token=${encodeURIComponent(token)}`;
  link.textContent = `#${order.id}`;
  c[1].textContent = order.customer;
  c[2].textContent = itemsText(order.items);
  c[3].textContent = rupees(order.total_paise);
  const status = c[4].firstChild;
  status.dataset.status = order.status;
  status.textContent = statusLabel(order.status);
  c[5].textContent = order.partner ?? "—";
  c[6].textContent = money(order);
  c[6].className = `paid-cell ${money(order)}`;
  c[7].textContent = clock(order.updated_at);
  if (flash) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }
  const open = [...orders.values()].filter((o) => !isFinished(o.status)).length;
  $("orders-count").textContent = `${orders.size} shown · ${open} open`;
}

/** Keeps the table to the newest MAX_ROWS orders. */
function trimRows() {
  const ids = [...rows.keys()].sort(byId);
  for (const id of ids.slice(0, Math.max(0, ids.length - MAX_ROWS))) {
    rows.get(id).remove();
    rows.delete(id);
    orders.delete(id);
    leave(id);
  }
}

// ---- inventory ------------------------------------------------------------------------------

/** @type {Map<string, any>} sku → product, as `GET /api/products` returns it */
const products = new Map();
/** Most alerts shown at once (the newest first). */
const MAX_ALERTS = 8;

/** Reads the whole catalog (every page) into the panel. */
async function loadInventory() {
  let after = "";
  for (let page = 0; page < 50; page++) {
    const listed = await api(token, `/api/products?limit=200&after=${encodeURIComponent(after)}`);
    for (const p of listed.products) setStock(p, false);
    if (!listed.next_after) break;
    after = listed.next_after;
  }
  $("inventory-count").textContent = `${products.size} products`;
}

/** A product's new stock (`stock.updated`, or a product as listed); older levels are ignored. */
function setStock(level, flash = true) {
  const known = products.get(level.sku);
  if (known && known.updated_at > level.updated_at) return;
  const product = { ...known, ...level };
  products.set(level.sku, product);
  let row = document.querySelector(`tr[data-sku="${CSS.escape(level.sku)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.sku = level.sku;
    row.innerHTML = `<td class="sku"></td><td class="name"></td><td class="num price"></td><td class="num stock"></td>`;
    const body = $("inventory");
    const next = [...body.children].find((r) => r.dataset.sku > level.sku);
    body.insertBefore(row, next ?? null);
    $("inventory-count").textContent = `${products.size} products`;
  }
  row.querySelector(".sku").textContent = product.sku;
  row.querySelector(".name").textContent = product.name ?? "";
  row.querySelector(".price").textContent = product.price_paise ? rupees(product.price_paise) : "";
  const cell = row.querySelector(".stock");
  cell.textContent = String(product.stock);
  cell.dataset.stock = String(product.stock);
  row.classList.toggle("out", product.stock === 0);
  if (flash) {
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }
}

/** `stock.low` / `stock.out`: an alert at the top of the panel. */
function alertStock(level, kind) {
  setStock(level);
  const item = document.createElement("li");
  item.className = `alert ${kind}`;
  item.dataset.sku = level.sku;
  item.dataset.kind = kind;
  const name = products.get(level.sku)?.name ?? level.sku;
  item.textContent =
    kind === "out" ? `${clock(level.updated_at)} ${name}: out of stock` : `${clock(level.updated_at)} ${name}: ${level.stock} left`;
  const list = $("stock-alerts");
  list.prepend(item);
  while (list.children.length > MAX_ALERTS) list.lastElementChild.remove();
}

// ---- revenue --------------------------------------------------------------------------------

function setRevenue(r) {
  if (!r) return;
  revenue = r;
  const last = samples.at(-1);
  if (!last || last.v !== r.total_paise) samples.push({ t: Date.now(), v: r.total_paise });
  while (samples.length > 2 && samples[1].t < Date.now() - SPARK_WINDOW_MS) samples.shift();
  $("revenue-total").textContent = rupees(r.total_paise);
  $("revenue-total").dataset.paise = String(r.total_paise);
  $("revenue-orders").textContent = `${r.paid_orders} paid order${r.paid_orders === 1 ? "" : "s"}`;
  drawRevenue();
}

function drawRevenue() {
  if (!revenue) return;
  drawSparkline($("sparkline"), samples, SPARK_WINDOW_MS);
  const from = Date.now() - SPARK_WINDOW_MS;
  const base = [...samples].reverse().find((s) => s.t <= from) ?? samples[0];
  const gained = revenue.total_paise - base.v;
  const minutes = Math.max(1, Math.round(Math.min(SPARK_WINDOW_MS, Date.now() - samples[0].t) / 60_000));
  $("revenue-window").textContent = `+${rupees(gained)} in the last ${minutes} min (since this page opened: ${clock(samples[0].t)})`;
}

// ---- partners -------------------------------------------------------------------------------

/** A partner as the map knows it (created offline, without a position, when new). */
function partner(sub) {
  let p = partners.get(sub);
  if (!p) {
    p = { partner: sub, trail: [], at: 0, online: false };
    partners.set(sub, p);
  }
  return p;
}

/** The `admin:fleet` snapshot: exactly these partners are online, at these positions. */
function setFleet(snapshot) {
  const online = new Set();
  for (const { sub, since, location } of snapshot?.partners ?? []) {
    online.add(sub);
    Object.assign(partner(sub), { online: true, since });
    if (location) movePartner(location);
  }
  for (const p of partners.values()) if (!online.has(p.partner)) p.online = false;
  requestDraw();
}

function setOnline(sub, online) {
  partner(sub).online = online;
  requestDraw();
}

function movePartner(loc) {
  const p = partner(loc.partner);
  const at = loc.received_at ?? Date.now();
  if (at < p.at) return; // an older fix (a snapshot after an event)
  Object.assign(p, { order_id: loc.order_id, lat: loc.lat, lng: loc.lng, heading: loc.heading, at });
  const last = p.trail.at(-1);
  if (!last || last[0] !== loc.lat || last[1] !== loc.lng) p.trail.push([loc.lat, loc.lng]);
  if (p.trail.length > TRAIL_POINTS) p.trail.shift();
  partners.set(loc.partner, p);
  requestDraw();
}

let drawPending = false;
function requestDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawMap();
  });
}

function drawMap() {
  if (!map) return;
  const now = Date.now();
  // Partners with a position are drawn; greyed out when offline, or when their last fix is old.
  const placed = [...partners.values()].filter((p) => p.at > 0);
  const markers = placed.map((p) => ({
    id: p.partner,
    label: p.online ? `${p.partner} · #${p.order_id}` : `${p.partner} · offline`,
    lat: p.lat,
    lng: p.lng,
    heading: p.heading,
    trail: p.trail,
    color: colorFor(p.partner),
    faded: !p.online || now - p.at > STALE_MS,
  }));
  map.draw(markers);
  const online = [...partners.values()].filter((p) => p.online).length;
  const moving = markers.filter((m) => !m.faded).length;
  $("partners-count").textContent = `${online} online · ${moving} moving · ${partners.size} seen`;
  drawFleet();
}

/** The fleet as a list beside the map: each partner, online or greyed out. */
function drawFleet() {
  const list = $("fleet");
  const sorted = [...partners.values()].sort((a, b) => a.partner.localeCompare(b.partner));
  list.replaceChildren(
    ...sorted.map((p) => {
      const li = document.createElement("li");
      li.dataset.partner = p.partner;
      li.dataset.online = p.online ? "1" : "0";
      li.className = p.online ? "" : "offline";
      li.style.setProperty("--dot", p.online ? colorFor(p.partner) : "#9aa3b2");
      li.textContent = p.online ? (p.order_id ? `${p.partner} · #${p.order_id}` : p.partner) : `${p.partner} · offline`;
      return li;
    }),
  );
}

function note(text) {
  $("foot").textContent = text;
}
