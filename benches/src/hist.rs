//! Latency histograms: sharded recording, and the HDR V2 (deflate) serialization in base64 so
//! several load-generator processes' results merge exactly.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use std::sync::Mutex;

/// Highest trackable latency: 60 s in µs.
pub const MAX_US: u64 = 60_000_000;

/// An empty histogram of µs, 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds")
}

/// Latency histograms, sharded so connections rarely contend on one lock.
pub struct Latencies(Vec<Mutex<Histogram<u64>>>);

impl Latencies {
    pub fn new(shards: usize) -> Latencies {
        Latencies(
            (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        )
    }

    pub fn record(&self, shard: usize, us: u64) {
        let mut h = self.0[shard % self.0.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us.clamp(1, MAX_US));
    }

    /// Everything recorded since the last call, and empties the shards.
    pub fn take(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in &self.0 {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }
}

/// The histogram in HDR V2 deflate format, base64.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    STANDARD.encode(bytes)
}

/// The inverse of [`encode`].
pub fn decode(b64: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(b64)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// p50, p90, p99, p99.9 and max in ms, as JSON.
pub fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let l = super::Latencies::new(4);
        for i in 1..1000 {
            l.record(i as usize, i * 10);
        }
        let h = l.take();
        let back = super::decode(&super::encode(&h)).unwrap();
        assert_eq!(back.len(), 999);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(l.take().len(), 0);
    }
}
