// Pure helpers: backoff growth and jitter bounds, close-code policy, JWT `exp` decoding.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffCap, backoffDelay, decodeJwtExp, shouldReconnect } from "../switchyard.js";
import { mint } from "../support/harness.js";

const opts = { initialMs: 100, maxMs: 5000 };

test("the cap doubles per attempt from initialMs and stops at maxMs", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((a) => backoffCap(a, opts)),
    [100, 200, 400, 800, 1600, 3200, 5000, 5000],
  );
  assert.equal(backoffCap(10_000, opts), 5000); // 2^10000 is Infinity: still capped
});

test("full jitter: the delay is within [0, cap], reaching both ends", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = backoffCap(attempt, opts);
    assert.equal(backoffDelay(attempt, opts, () => 0), 0);
    assert.equal(backoffDelay(attempt, opts, () => 0.999999), Math.floor(0.999999 * cap));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, opts);
      assert.ok(Number.isInteger(d) && d >= 0 && d <= cap, `attempt ${attempt}: ${d} not in [0, ${cap}]`);
    }
  }
});

test("the delay grows: the mean over many draws roughly doubles until the cap", () => {
  const mean = (a) => {
    let sum = 0;
    for (let i = 0; i < 4000; i++) sum += backoffDelay(a, opts);
    return sum / 4000;
  };
  const m = [0, 1, 2, 3, 4].map(mean);
  for (let a = 1; a < m.length; a++) {
    const ratio = m[a] / m[a - 1];
    assert.ok(ratio > 1.6 && ratio < 2.4, `mean ratio attempt ${a}/${a - 1} = ${ratio}`);
  }
  const capped = mean(20);
  assert.ok(capped > 2000 && capped < 3000, `mean at the cap ${capped} ≈ maxMs/2`);
});

test("close codes: 4000–4499 and transient 1xxx reconnect; 4500–4999 and client faults do not", () => {
  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 4000, 4001, 4002, 4003, 4499]) {
    assert.equal(shouldReconnect(code), true, `code ${code}`);
  }
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 1010, 4500, 4501, 4999]) {
    assert.equal(shouldReconnect(code), false, `code ${code}`);
  }
});

test("decodeJwtExp reads exp from a base64url payload, undefined otherwise", () => {
  assert.equal(decodeJwtExp(mint({ sub: "c1", role: "customer", exp: 1_900_000_000 })), 1_900_000_000);
  assert.equal(decodeJwtExp("not-a-jwt"), undefined);
  assert.equal(decodeJwtExp(""), undefined);
});
