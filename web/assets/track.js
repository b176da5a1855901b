// The customer's tracking view (/track#order=42&token=…): one order's status timeline, its
// partner's position on a map, and the order's events as they come. The order over REST first,
// then its `order:{id}` room through clients/js (order.status, order.assigned, order.paid,
// order.refunded, partner.location, and any event a backend service publishes there, e.g. an ETA),
// and the order's chat: its history over REST, new messages as `chat.message` events, sending
// with the client's `sendMessage` (resent with the same client_msg_id until acknowledged), the
// unread count from the room's snapshot, read markers as messages are shown. Opened with an
// admin token (the dashboard's link on an order's id) it is the support view of the same chat.
import {
  $,
  api,
  clock,
  colorFor,
  fragment,
  itemsText,
  liveClient,
  MapCanvas,
  metres,
  money,
  rupees,
  showHelp,
  STATUSES,
  statusLabel,
} from "./common.js";

const TRAIL_POINTS = 120;

const params = fragment();
const orderId = params.get("order");
const token = params.get("token");
let order = null;
/** When each status was reached, as far as this page knows. */
const reached = new Map();
/** The partner's positions seen by this page: [[lat, lng]] */
let trail = [];
let fix = null;
let map;

if (!orderId || !token) showHelp();
else start().catch((err) => ($("foot").textContent = `error: ${err.message}`));

async function start() {
  try {
    apply(await api(token, `/api/orders/${encodeURIComponent(orderId)}`));
  } catch (err) {
    if (err.status === 401) return showHelp(`The token was rejected (${err.message}). Get a fresh one:`);
    if (err.status === 404) return showHelp(`Order ${orderId} was not found, or this token may not see it.`);
    throw err;
  }
  $("app").hidden = false;
  document.title = `Order #${orderId} · Switchyard`;
  map = new MapCanvas($("map"), { spanDeg: 0.02 });
  draw();

  const client = liveClient(token);
  chat.client = client;
  client.on("resync", async ({ room, snapshot }) => {
    if (room !== `order:${orderId}`) return;
    apply(snapshot ?? (await api(token, `/api/orders/${encodeURIComponent(orderId)}`)));
    log("reconnected: status reloaded");
  });
  client.on("revoked", ({ reason }) => log(`no longer following this order: ${reason}`));
  await client.connect();
  const { snapshot } = await client.subscribe(`order:${orderId}`, onEvent);
  if (snapshot) apply(snapshot);
  await loadChat(snapshot?.chat);
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendChat();
  });
  log(`following order #${order.id}: ${statusLabel(order.status)}`);
  setInterval(draw, 1000);
}

function onEvent({ event, data }) {
  switch (event) {
    case "order.status":
      reached.set(data.status, data.updated_at);
      apply({ ...order, status: data.status, updated_at: data.updated_at });
      log(`status: ${statusLabel(data.status)}`, data.updated_at);
      break;
    case "order.assigned":
      apply({ ...order, partner: data.partner });
      log(`partner ${data.partner} assigned`, data.updated_at);
      break;
    case "order.paid":
      apply({ ...order, paid: true });
      log(`paid ${rupees(data.amount_paise)}`, data.paid_at);
      break;
    case "order.refunded":
      apply({ ...order, refunded: true });
      log(`refunded ${rupees(data.amount_paise)}`, data.refunded_at);
      break;
    case "chat.message":
      showMessage(data);
      markRead();
      break;
    case "chat.typing":
      if (data.from !== me) $("chat-state").textContent = `${data.from} is typing…`;
      break;
    case "chat.read":
      break;
    case "partner.location":
      if (!fix) log(`${data.partner} is on the map`, data.received_at);
      locate(data);
      break;
    default: // an event a backend service published to the room (POST /api/publish)
      log(`${event}: ${JSON.stringify(data).slice(0, 120)}`);
  }
}

function apply(next) {
  order = next;
  if (!reached.has("placed")) reached.set("placed", order.created_at);
  if (!reached.has(order.status)) reached.set(order.status, order.updated_at);
  if (order.last_location) locate(order.last_location);
  $("order-id").textContent = `#${order.id}`;
  const paid = $("order-paid");
  const state = money(order);
  paid.textContent = state === "unpaid" ? "not paid" : state;
  paid.className = `badge ${state}`;
  $("order-summary").textContent = `${itemsText(order.items)} · ${rupees(order.total_paise)} · to ${order.address}`;
  $("partner-name").textContent = order.partner ?? "not assigned yet";
  renderTimeline();
  draw();
}

function renderTimeline() {
  const ol = $("timeline");
  ol.replaceChildren();
  ol.dataset.status = order.status;
  const cancelled = order.status === "cancelled";
  const steps = cancelled
    ? [...STATUSES.filter((s) => s !== "delivered" && reached.has(s)), "cancelled"]
    : STATUSES;
  const current = steps.indexOf(order.status);
  steps.forEach((status, i) => {
    const li = document.createElement("li");
    li.dataset.step = status;
    li.className = i < current ? "done" : i === current ? (cancelled ? "current cancelled" : "current") : "";
    if (status === "delivered" && i === current) li.className = "done current";
    li.textContent = statusLabel(status);
    if (reached.has(status) && i <= current) {
      const time = document.createElement("time");
      time.textContent = clock(reached.get(status));
      li.append(time);
    }
    ol.append(li);
  });
}

function locate(loc) {
  if (fix && (loc.received_at ?? 0) < fix.received_at) return; // an older fix
  fix = { ...loc, received_at: loc.received_at ?? Date.now() };
  const last = trail.at(-1);
  if (!last || last[0] !== loc.lat || last[1] !== loc.lng) trail.push([loc.lat, loc.lng]);
  if (trail.length > TRAIL_POINTS) trail = trail.slice(-TRAIL_POINTS);
  draw();
}

function draw() {
  if (!map || !order) return;
  const partner = fix?.partner ?? order.partner;
  const markers = fix
    ? [{ id: partner, label: partner ?? "partner", lat: fix.lat, lng: fix.lng, heading: fix.heading, trail,
         color: colorFor(partner ?? ""), faded: order.status === "delivered" || order.status === "cancelled" }]
    : [];
  map.draw(markers, trail.length > 1 ? [{ lat: trail[0][0], lng: trail[0][1], label: "first seen" }] : []);
  if (!fix) return;
  const ago = Math.max(0, Math.round((Date.now() - fix.received_at) / 1000));
  const parts = [`${partner ?? "partner"} · updated ${ago} s ago`];
  if (typeof fix.speed === "number") parts.push(`${Math.round(fix.speed * 3.6)} km/h`);
  if (trail.length > 1) {
    let d = 0;
    for (let i = 1; i < trail.length; i++) d += metres(trail[i - 1], trail[i]);
    parts.push(`${d >= 1000 ? `${(d / 1000).toFixed(1)} km` : `${Math.round(d)} m`} covered while you watched`);
  }
  $("partner-info").textContent = parts.join(" · ");
}

// ---- chat ------------------------------------------------------------------------------------

/** Who this page speaks as (the token's `sub`). */
const me = (() => {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
  } catch {
    return null;
  }
})();
const chat = { client: null, shown: new Map(), newest: null, typedAt: 0 };

async function loadChat(state) {
  const page = await api(token, `/api/orders/${encodeURIComponent(orderId)}/messages?limit=50`);
  for (const m of page.messages) showMessage(m);
  const unread = state?.unread ?? 0;
  const badge = $("chat-unread");
  badge.hidden = unread === 0;
  badge.textContent = `${unread} unread`;
  markRead();
  $("chat-text").addEventListener("input", () => {
    if (Date.now() - chat.typedAt < 2000) return;
    chat.typedAt = Date.now();
    chat.client.typing(orderId).catch(() => {});
  });
}

/** Shows a message once (by `message_id`), in `message_id` order. */
function showMessage(m) {
  if (chat.shown.has(m.message_id)) return;
  const li = document.createElement("li");
  li.dataset.message = m.message_id;
  li.className = m.from === me ? "mine" : "";
  const who = document.createElement("b");
  const name = m.from === me ? "you" : m.role === "admin" ? `support (${m.from})` : `${m.role} ${m.from}`;
  who.textContent = `${name} · ${clock(m.sent_at)}`;
  li.append(who, document.createTextNode(m.text));
  const list = $("chat");
  const later = [...list.children].find((el) => el.dataset.message && BigInt(el.dataset.message) > BigInt(m.message_id));
  list.insertBefore(li, later ?? null);
  chat.shown.set(m.message_id, li);
  if (!chat.newest || BigInt(m.message_id) > BigInt(chat.newest)) chat.newest = m.message_id;
  list.scrollTop = list.scrollHeight;
  if (m.from !== me) $("chat-state").textContent = "";
}

function markRead() {
  if (!chat.newest || !chat.client) return;
  $("chat-unread").hidden = true;
  chat.client.markRead(orderId, chat.newest).catch(() => {});
}

async function sendChat() {
  const input = $("chat-text");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  const pending = document.createElement("li");
  pending.className = "mine pending";
  pending.textContent = text;
  $("chat").append(pending);
  try {
    const m = await chat.client.sendMessage(orderId, text);
    pending.remove();
    showMessage(m);
  } catch (err) {
    pending.remove();
    $("chat-state").textContent = `not sent: ${err.message}`;
  }
}

function log(text, at = Date.now()) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = clock(at);
  li.append(time, text);
  $("activity").prepend(li);
}
