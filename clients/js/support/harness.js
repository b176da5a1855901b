// Test harness: the real `switchyard` binary as a child process on loopback, HS256 tokens
// minted with node:crypto, a REST helper and small waiting helpers. It lives outside test/
// because `node --test test/` runs every .js file of the directory as a test file.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const SECRET = "js-client-test-secret-0123456789abcdef";
/**
 * How long a test waits for something another process does (a frame, an event, a state), and
 * for the server to start. Generous on purpose: they only bound a failing test, and a machine
 * shared with builds and other test runs can take seconds for what an idle one does at once.
 */
export const WAIT_MS = 20_000;
const START_WAIT_MS = 30_000;
const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SWITCHYARD_BIN ?? resolve(here, "../../../target/debug/switchyard");

/** Every child started by this test file, killed (by PID) when the process exits. */
const children = new Set();
process.on("exit", () => {
  for (const child of children) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 JWT signed with SECRET, as `switchyard token` would mint it. */
export function mint({ sub, role, ttlSecs = 300, exp }) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub, role, exp: exp ?? Math.floor(Date.now() / 1000) + ttlSecs };
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/** A temporary directory for one test's database; removed by `server.cleanup()`. */
export function tempDir() {
  return mkdtempSync(join(tmpdir(), "switchyard-js-"));
}

/**
 * Starts `switchyard all` on 127.0.0.1:`port` (0: any) with a database in `dir`, and waits for
 * `listening on ADDR` and a 200 from /readyz.
 */
export async function startServer({ dir = tempDir(), port = 0 } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(
      `switchyard binary not found at ${BIN}: build it first (cargo build -p switchyard) ` +
        `or set SWITCHYARD_BIN to its path`,
    );
  }
  const env = { ...process.env, RUST_LOG: "warn" };
  delete env.JWT_SECRET;
  delete env.DATABASE_URL;
  delete env.REDIS_URL;
  const args = [
    "all",
    "--listen", `127.0.0.1:${port}`,
    "--database-url", `sqlite://${dir}/db`,
    "--jwt-secret", SECRET,
    "--drain-timeout-ms", "2000",
    "--drain-spread-ms", "20",
  ];
  const child = spawn(BIN, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  exited.then(() => children.delete(child));
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const addr = await new Promise((res, rej) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => rej(new Error(`switchyard did not listen within 30 s:\n${stderr}`)), START_WAIT_MS);
    lines.on("line", (line) => {
      if (line.startsWith("listening on ")) {
        clearTimeout(timer);
        res(line.slice("listening on ".length).trim());
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`switchyard exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });
  const server = {
    child,
    pid: child.pid,
    addr,
    port: Number(addr.split(":").pop()),
    dir,
    wsUrl: `ws://${addr}/ws`,
    url: (path) => `http://${addr}${path}`,
    exited,
    /** Sends `signal` to the process (by PID) and waits for it to exit. */
    async stop(signal = "SIGKILL") {
      if (children.has(child)) process.kill(child.pid, signal);
      return exited;
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + START_WAIT_MS;
  for (;;) {
    try {
      if ((await fetch(server.url("/readyz"))).status === 200) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`switchyard never became ready:\n${stderr}`);
    await sleep(20);
  }
  return server;
}

/** One REST call; returns {status, body}. */
export async function api(server, method, path, token, body) {
  const res = await fetch(server.url(path), {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: json };
}

/** Publishes one event through the REST API with a service token; returns its offset. */
export async function publish(server, room, event, data) {
  const { status, body } = await api(server, "POST", "/api/publish", mint({ sub: "svc", role: "service" }), {
    room,
    event,
    data,
  });
  if (status !== 200) throw new Error(`publish → ${status} ${JSON.stringify(body)}`);
  return body.offset;
}

export const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

/** Resolves with the first payload of `name` (matching `pred`) the client emits, or rejects. */
export function once(client, name, pred = () => true, timeoutMs = WAIT_MS) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`no '${name}' within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = client.on(name, (payload) => {
      if (!pred(payload)) return;
      clearTimeout(timer);
      off();
      res(payload);
    });
  });
}

/** Polls `cond` until true, or rejects after `timeoutMs`. */
export async function until(cond, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A promise plus its resolver: a gate a token provider can wait on. */
export function gate() {
  let open;
  const promise = new Promise((res) => {
    open = res;
  });
  return { promise, open };
}
