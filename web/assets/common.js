// Shared by the admin view (admin.js) and the tracking view (track.js): the token from the URL
// fragment, REST calls, the live connection (clients/js, served at /client/switchyard.js) with
// its state indicator, formatting, and the two canvases (sparkline, map).
import { SwitchyardClient } from "/client/switchyard.js";

const $ = (id) => document.getElementById(id);
export { $ };

/**
 * The URL fragment's parameters (`#token=…&order=42`). Tokens live in the fragment, never in
 * the query string: browsers do not send fragments to servers, so they stay out of logs.
 */
export function fragment() {
  return new URLSearchParams(location.hash.slice(1));
}
// A new token or order pasted into the fragment does not reload the page by itself: do it.
addEventListener("hashchange", () => location.reload());

/** Shows the "how to get a token" box instead of the app, with an optional reason. */
export function showHelp(reason) {
  $("app").hidden = true;
  $("help").hidden = false;
  if (reason) $("help-reason").textContent = reason;
  setConn("closed", "no token");
}

/** A REST failure: `status` and the server's `{error, message}`. */
export class ApiFailure extends Error {
  constructor(status, body) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error;
  }
}

/** `GET`/`POST` on the REST API with the page's token. */
export async function api(token, path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new ApiFailure(res.status, json);
  return json;
}

// ---- connection state indicator ----------------------------------------------------------

let resyncTimer = null;

/**
 * Sets the indicator: `connecting`, `connected`, `reconnecting`, `resynced` (connected, and
 * state was reloaded because the server could not replay what was missed), `closed`.
 */
export function setConn(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.querySelector("span").textContent = text ?? state;
}

/**
 * Opens the live connection with clients/js and wires it to the indicator. The client
 * reconnects with backoff and resubscribes every room with `since`; when a room cannot be
 * recovered it emits `resync`, which the page answers by reloading that room's state.
 * `document.body.dataset` counts reconnects and resyncs (handy for tests and for a glance).
 */
export function liveClient(token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new SwitchyardClient({
    url: `${scheme}://${location.host}/ws`,
    token,
    // A dashboard wants to be back quickly; full jitter still spreads a fleet of them.
    backoff: { initialMs: 300, maxMs: 5000 },
  });
  const body = document.body.dataset;
  body.reconnects = "0";
  body.resyncs = "0";
  setConn("connecting", "connecting…");
  client.on("welcome", () => {
    if ($("conn").dataset.state !== "resynced") setConn("connected", "live");
  });
  client.on("reconnecting", ({ attempt, delayMs }) => {
    clearTimeout(resyncTimer);
    body.reconnects = String(Number(body.reconnects) + 1);
    setConn("reconnecting", `reconnecting (attempt ${attempt}, ${(delayMs / 1000).toFixed(1)} s)…`);
  });
  client.on("resync", () => {
    body.resyncs = String(Number(body.resyncs) + 1);
    setConn("resynced", `resynced ${clock(Date.now())}`);
    clearTimeout(resyncTimer);
    resyncTimer = setTimeout(() => client.connected && setConn("connected", "live"), 6000);
  });
  client.on("close", ({ code, reason, final }) => {
    if (!final) return;
    const why = code === 4501 ? "access revoked" : reason || `closed (${code})`;
    setConn("closed", why);
  });
  return client;
}

// ---- formatting ---------------------------------------------------------------------------

const inr = new Intl.NumberFormat("en-IN", { style: "currency", currency: "INR" });
/** Integer paise → "₹1,234.50". */
export const rupees = (paise) => inr.format(paise / 100);
/** Milliseconds since the epoch → "14:03:27". */
export const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
export const STATUSES = ["placed", "confirmed", "packed", "out_for_delivery", "delivered"];
export const statusLabel = (s) => String(s).replaceAll("_", " ");
export const isFinished = (status) => status === "delivered" || status === "cancelled";
/** An order's money: "paid", "unpaid" or "refunded" (paid, then cancelled). */
export const money = (order) => (order.refunded ? "refunded" : order.paid ? "paid" : "unpaid");
export const itemsText = (items) => (items ?? []).map((i) => `${i.qty}× ${i.sku}`).join(", ");

// ---- canvases -------------------------------------------------------------------------------

/** Sizes a canvas's backing store to its CSS box × devicePixelRatio; returns a 2D context in CSS px. */
function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

/**
 * A step chart of `samples` ([{t, v}], oldest first) over the last `windowMs` before `now`
 * (narrower while the history is shorter, at least 30 s).
 */
export function drawSparkline(canvas, samples, windowMs, now = Date.now()) {
  const { ctx, w, h } = fit(canvas);
  if (!samples.length) return;
  const first = samples[0].t;
  const span = Math.max(30_000, Math.min(windowMs, now - first + 5_000));
  const from = now - span;
  // The value at the window's left edge, then every sample inside it.
  let start = samples[0].v;
  for (const s of samples) if (s.t <= from) start = s.v;
  const inside = samples.filter((s) => s.t > from);
  const values = [start, ...inside.map((s) => s.v)];
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const pad = 8;
  const x = (t) => pad + ((t - from) / span) * (w - 2 * pad);
  const y = (v) => (hi === lo ? h / 2 : h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad));

  ctx.strokeStyle = "#e3e6ec";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const gy = pad + (i * (h - 2 * pad)) / 3;
    ctx.beginPath();
    ctx.moveTo(pad, gy);
    ctx.lineTo(w - pad, gy);
    ctx.stroke();
  }
  const path = new Path2D();
  path.moveTo(x(from), y(start));
  let last = start;
  for (const s of inside) {
    path.lineTo(x(s.t), y(last));
    path.lineTo(x(s.t), y(s.v));
    last = s.v;
  }
  path.lineTo(x(now), y(last));
  const area = new Path2D(path);
  area.lineTo(x(now), h - pad);
  area.lineTo(x(from), h - pad);
  area.closePath();
  const grad = ctx.createLinearGradient(0, pad, 0, h);
  grad.addColorStop(0, "rgba(15, 157, 116, 0.28)");
  grad.addColorStop(1, "rgba(15, 157, 116, 0.02)");
  ctx.fillStyle = grad;
  ctx.fill(area);
  ctx.strokeStyle = "#0f9d74";
  ctx.lineWidth = 2;
  ctx.stroke(path);
  ctx.fillStyle = "#0f9d74";
  ctx.beginPath();
  ctx.arc(x(now), y(last), 3.5, 0, Math.PI * 2);
  ctx.fill();
}

const PALETTE = ["#2f6fde", "#e0672b", "#8b44c7", "#0f9d74", "#c8374a", "#b58900", "#1f8ea3", "#d6488f"];
/** A stable colour per id. */
export function colorFor(id) {
  let h = 0;
  for (const c of String(id)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

/**
 * A map without tiles: a lat/lng box projected onto a canvas (equirectangular, lng scaled by
 * cos(lat) so distances look right), a faint grid as streets. The box starts around `center`
 * and only grows to take in new points, so markers do not jump when one partner moves.
 */
export class MapCanvas {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{center?: [number, number], spanDeg?: number}} [opts] initial centre and span
   */
  constructor(canvas, { center = [12.9716, 77.5946], spanDeg = 0.05 } = {}) {
    this.canvas = canvas;
    this.center = center;
    this.spanDeg = spanDeg;
    this.box = null;
    new ResizeObserver(() => this.markers && this.draw(this.markers)).observe(canvas);
  }

  _grow(points) {
    for (const [lat, lng] of points) {
      if (!this.box) {
        const half = this.spanDeg / 2;
        this.box = { s: lat - half, n: lat + half, w: lng - half, e: lng + half };
      }
      const m = this.spanDeg * 0.15; // keep points off the edge
      this.box.s = Math.min(this.box.s, lat - m);
      this.box.n = Math.max(this.box.n, lat + m);
      this.box.w = Math.min(this.box.w, lng - m);
      this.box.e = Math.max(this.box.e, lng + m);
    }
  }

  /**
   * Draws `markers`: [{id, label, lat, lng, trail: [[lat, lng]…], color, faded, heading?}],
   * and optional `pins` (fixed points, e.g. where a trail started): [{lat, lng, label}].
   */
  draw(markers, pins = []) {
    this.markers = markers;
    this.canvas.dataset.markers = String(markers.length);
    const points = [];
    for (const m of markers) points.push([m.lat, m.lng], ...(m.trail ?? []));
    for (const p of pins) points.push([p.lat, p.lng]);
    this._grow(points);
    const { ctx, w, h } = fit(this.canvas);
    const box = this.box ?? {
      s: this.center[0] - this.spanDeg / 2,
      n: this.center[0] + this.spanDeg / 2,
      w: this.center[1] - this.spanDeg / 2,
      e: this.center[1] + this.spanDeg / 2,
    };
    const midLat = (box.s + box.n) / 2;
    const kx = Math.cos((midLat * Math.PI) / 180);
    const scale = Math.min(w / ((box.e - box.w) * kx), h / (box.n - box.s));
    const cx = (box.w + box.e) / 2;
    const cy = midLat;
    const px = (lng) => w / 2 + (lng - cx) * kx * scale;
    const py = (lat) => h / 2 - (lat - cy) * scale;

    ctx.fillStyle = "#eef2ea";
    ctx.fillRect(0, 0, w, h);
    // Streets: a square grid of a round number of metres, about eight lines across.
    const M_PER_DEG = 111_320; // metres per degree of latitude
    const widthM = (w / scale) * M_PER_DEG; // the canvas width in metres
    const stepM = [100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000].find((m) => widthM / m <= 10) ?? 100_000;
    const stepLat = stepM / M_PER_DEG;
    const stepLng = stepLat / kx;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 3;
    const halfLng = w / (2 * kx * scale);
    for (let lng = Math.floor((cx - halfLng) / stepLng) * stepLng; lng <= cx + halfLng; lng += stepLng) {
      ctx.beginPath();
      ctx.moveTo(px(lng), 0);
      ctx.lineTo(px(lng), h);
      ctx.stroke();
    }
    const halfLat = h / (2 * scale);
    for (let lat = Math.floor((cy - halfLat) / stepLat) * stepLat; lat <= cy + halfLat; lat += stepLat) {
      ctx.beginPath();
      ctx.moveTo(0, py(lat));
      ctx.lineTo(w, py(lat));
      ctx.stroke();
    }
    ctx.fillStyle = "#8a9587";
    ctx.font = "11px system-ui, sans-serif";
    const grid = stepM >= 1000 ? `${stepM / 1000} km` : `${stepM} m`;
    ctx.fillText(`${cy.toFixed(3)}°N ${cx.toFixed(3)}°E · grid ${grid}`, 8, h - 8);

    for (const p of pins) {
      ctx.fillStyle = "#15202b";
      ctx.fillRect(px(p.lng) - 5, py(p.lat) - 5, 10, 10);
      if (p.label) {
        ctx.font = "12px system-ui, sans-serif";
        ctx.fillText(p.label, px(p.lng) + 8, py(p.lat) + 4);
      }
    }
    for (const m of markers) {
      const color = m.faded ? "#9aa3b2" : m.color;
      const trail = m.trail ?? [];
      if (trail.length > 1) {
        ctx.strokeStyle = color;
        ctx.globalAlpha = 0.45;
        ctx.lineWidth = 3;
        ctx.lineJoin = "round";
        ctx.beginPath();
        trail.forEach(([lat, lng], i) => (i ? ctx.lineTo(px(lng), py(lat)) : ctx.moveTo(px(lng), py(lat))));
        ctx.stroke();
        ctx.globalAlpha = 1;
      }
      const x = px(m.lng);
      const y = py(m.lat);
      if (typeof m.heading === "number" && !m.faded) {
        const a = ((m.heading - 90) * Math.PI) / 180; // 0° = north
        ctx.fillStyle = color;
        ctx.beginPath();
        ctx.moveTo(x + Math.cos(a) * 16, y + Math.sin(a) * 16);
        ctx.lineTo(x + Math.cos(a + 2.5) * 8, y + Math.sin(a + 2.5) * 8);
        ctx.lineTo(x + Math.cos(a - 2.5) * 8, y + Math.sin(a - 2.5) * 8);
        ctx.fill();
      }
      ctx.beginPath();
      ctx.arc(x, y, 8, 0, Math.PI * 2);
      ctx.fillStyle = color;
      ctx.fill();
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
      ctx.font = "600 12px system-ui, sans-serif";
      const text = m.label;
      const tw = ctx.measureText(text).width;
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      ctx.fillRect(x + 11, y - 19, tw + 8, 17);
      ctx.fillStyle = "#1d2330";
      ctx.fillText(text, x + 15, y - 6);
    }
  }
}

/** Great-circle distance in metres. */
export function metres([lat1, lng1], [lat2, lng2]) {
  const r = (d) => (d * Math.PI) / 180;
  const a = Math.sin(r(lat2 - lat1) / 2) ** 2 + Math.cos(r(lat1)) * Math.cos(r(lat2)) * Math.sin(r(lng2 - lng1) / 2) ** 2;
  return 2 * 6_371_000 * Math.asin(Math.sqrt(a));
}
