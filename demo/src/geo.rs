//! The simulated city: where customers live, what they buy, where the store is, and the
//! drive from one to the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_protocol::Product;
use switchyard_protocol::client::{ClientOp, LocationFix};
use switchyard_protocol::order::{Item, NewOrder};

/// The dark store every order leaves from (central Bengaluru).
pub const STORE: (f64, f64) = (12.9716, 77.5946);
/// Customers' addresses and where they are: the simulator's whole "geocoder".
pub const HOMES: &[(&str, f64, f64)] = &[
    ("14 80 Feet Road, Koramangala", 12.9352, 77.6245),
    ("3 CMH Road, Indiranagar", 12.9784, 77.6408),
    ("27 Bellary Road, Hebbal", 13.0358, 77.5970),
    ("9 4th Block, Jayanagar", 12.9250, 77.5938),
    ("51 Sampige Road, Malleshwaram", 13.0031, 77.5643),
    ("8 Old Airport Road, HAL", 12.9591, 77.6974),
];
/// An order of one to three products of `catalog` (in stock, as the app shows them, with
/// the prices shown), chosen from `seed`, to `address`. None when nothing is in stock.
pub fn basket(seed: u64, catalog: &[Product], address: &str) -> Option<NewOrder> {
    let shelf: Vec<&Product> = catalog
        .iter()
        .filter(|p| p.stock >= 2 && !p.discontinued)
        .collect();
    if shelf.is_empty() {
        return None;
    }
    let mut items: Vec<Item> = Vec::new();
    for i in 0..1 + seed % 3 {
        let product = shelf[((seed + i * 5) % shelf.len() as u64) as usize];
        if items.iter().all(|item| item.sku != product.sku) {
            items.push(Item {
                sku: product.sku.clone(),
                qty: 1 + ((seed + i) % 2) as i64,
                unit_price_paise: Some(product.price_paise),
            });
        }
    }
    Some(NewOrder {
        items,
        address: address.to_owned(),
    })
}

/// The known homes, or somewhere near the store.
pub fn geocode(address: &str) -> (f64, f64) {
    HOMES
        .iter()
        .find(|(a, _, _)| *a == address)
        .map_or((STORE.0 + 0.02, STORE.1 + 0.02), |(_, lat, lng)| {
            (*lat, *lng)
        })
}

/// The `location` op for a partner `progress` (0 to 1) of the way from the store to `to`.
pub fn location(order: &str, to: (f64, f64), progress: f64, drive: Duration) -> ClientOp {
    let (lat, lng) = (
        STORE.0 + (to.0 - STORE.0) * progress,
        STORE.1 + (to.1 - STORE.1) * progress,
    );
    // Flat-earth bearing and speed: good enough across a city.
    let (north_m, east_m) = (
        (to.0 - STORE.0) * 111_320.0,
        (to.1 - STORE.1) * 111_320.0 * STORE.0.to_radians().cos(),
    );
    let heading = east_m.atan2(north_m).to_degrees().rem_euclid(360.0);
    let speed = if progress < 1.0 {
        north_m.hypot(east_m) / drive.as_secs_f64()
    } else {
        0.0
    };
    let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ClientOp::Location {
        order_id: order.to_owned(),
        fix: LocationFix {
            lat: round(lat, 6),
            lng: round(lng, 6),
            heading: Some(round(heading, 1)),
            speed: Some(round(speed, 1)),
            ts: Some(now_ms),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(op: ClientOp) -> LocationFix {
        match op {
            ClientOp::Location { fix, .. } => fix,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_drive_goes_from_the_store_to_the_customer() {
        let to = geocode(HOMES[0].0);
        let drive = Duration::from_secs(20);
        let start = fix(location("1", to, 0.0, drive));
        let end = fix(location("1", to, 1.0, drive));
        assert_eq!((start.lat, start.lng), STORE);
        assert_eq!((end.lat, end.lng), to);
        // Koramangala is south-east of the centre.
        let heading = start.heading.unwrap();
        assert!((90.0..180.0).contains(&heading), "{heading}");
        assert!(start.speed.unwrap() > 0.0);
        assert_eq!(end.speed, Some(0.0));
        assert!(start.validate().is_ok() && end.validate().is_ok());
    }

    #[test]
    fn baskets_are_valid_orders() {
        let catalog: Vec<Product> = ["milk-1l", "bread-400g", "eggs-12", "empty"]
            .iter()
            .enumerate()
            .map(|(i, sku)| Product {
                sku: (*sku).into(),
                name: sku.to_uppercase(),
                price_paise: 1000 * (i as i64 + 1),
                stock: if *sku == "empty" { 0 } else { 100 },
                discontinued: false,
                updated_at: 0,
            })
            .collect();
        for seed in 0..20 {
            let basket = basket(seed, &catalog, HOMES[0].0).unwrap();
            assert!(basket.validate(&Default::default()).is_ok());
            assert!(basket.items.iter().all(|i| i.sku != "empty"));
        }
        assert!(basket(1, &catalog[3..], HOMES[0].0).is_none());
    }
}
