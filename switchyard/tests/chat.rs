//! Order chat (issue #14) through the real server: REST sends and history, the event every
//! member receives, idempotent retries, hostile text, who may talk; over the socket in both
//! modes (embedded; two gateways, an API and PostgreSQL — on one Redis and on a Redis
//! Cluster), 1,000 messages with a dropped connection and a lost reply; every send's reply
//! carries its event's room offset.

use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::Message;

async fn post(server: &TestServer, order: &str, token: &str, body: Value) -> (u16, Value) {
    server
        .call(
            "POST",
            &format!("/api/orders/{order}/messages"),
            token,
            Some(body),
        )
        .await
}

async fn history(server: &TestServer, order: &str, token: &str, query: &str) -> (u16, Value) {
    server
        .call(
            "GET",
            &format!("/api/orders/{order}/messages{query}"),
            token,
            None,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_messages_reach_the_room_once_and_page_back() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let room = format!("order:{order}");
    let c1 = token("c1", Role::Customer);
    let p1 = token("p1", Role::Partner);
    let mut customer = connect(&server.ws_url(), &c1).await;
    assert_eq!(customer.subscribe(&room).await["type"], "ok");

    let (status, first) = post(
        &server,
        &order,
        &p1,
        json!({"text":"  at the gate  ","client_msg_id":"m-1"}),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["text"], "at the gate");
    assert_eq!(first["from"], "p1");
    assert_eq!(first["role"], "partner");
    let e = customer.event(&room, "chat.message").await;
    assert_eq!(e["data"]["message_id"], first["message_id"]);
    assert_eq!(e["data"]["text"], "at the gate");
    assert_eq!(e["data"]["client_msg_id"], "m-1");
    assert_eq!(
        first["offset"], e["offset"],
        "the answer carries the event's offset"
    );
    assert!(
        e["data"].get("offset").is_none(),
        "the event's offset is its own"
    );

    // A retry answers the first message and publishes nothing: the next event is the reply.
    let (status, again) = post(
        &server,
        &order,
        &p1,
        json!({"text":"at the gate","client_msg_id":"m-1"}),
    )
    .await;
    assert_eq!(
        (status, &again),
        (200, &first),
        "the same message, the same offset"
    );
    // client_msg_id is unique per order and sender: the same id in another order of the same
    // customer is another message.
    let other = server.create_order("c1", 1, 100).await;
    let (status, elsewhere) = post(
        &server,
        &other,
        &c1,
        json!({"text":"wrong order, sorry","client_msg_id":"m-1"}),
    )
    .await;
    assert_eq!(status, 201, "{elsewhere}");
    assert_ne!(elsewhere["message_id"], first["message_id"]);
    let (status, support) = post(
        &server,
        &order,
        &admin(),
        json!({"text":"support here","client_msg_id":"s-1"}),
    )
    .await;
    assert_eq!(status, 201, "{support}");
    assert_eq!(support["role"], "admin");
    let e = customer.event(&room, "chat.message").await;
    assert_eq!(e["data"]["message_id"], support["message_id"]);

    let (status, page) = history(&server, &order, &c1, "?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["text"], "support here");
    let before = page["next_before"].as_str().unwrap().to_owned();
    let (_, older) = history(&server, &order, &p1, &format!("?before={before}")).await;
    assert_eq!(older["messages"].as_array().unwrap().len(), 1);
    assert_eq!(older["messages"][0]["text"], "at the gate");
    assert_eq!(older["next_before"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_hostile_text_and_bad_queries_are_refused() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let c1 = token("c1", Role::Customer);
    for outsider in [token("c2", Role::Customer), token("p2", Role::Partner)] {
        let (status, body) = post(
            &server,
            &order,
            &outsider,
            json!({"text":"hi","client_msg_id":"x"}),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        // Even with a bad payload: the order's check comes first.
        let (status, _) = post(&server, &order, &outsider, json!({"text":"\u{0}"})).await;
        assert_eq!(status, 404);
        assert_eq!(history(&server, &order, &outsider, "").await.0, 404);
        assert_eq!(history(&server, &order, &outsider, "?limit=0").await.0, 404);
    }
    let hostile = [
        "bell \u{7}",
        "nul \u{0}",
        "carriage\rreturn",
        "c1 \u{85}",
        "   ",
        "",
        &"x".repeat(2_001),
        &"😀".repeat(2_560), // 10 KB of emoji: 2,560 characters
    ];
    for text in hostile {
        let (status, body) = post(
            &server,
            &order,
            &c1,
            json!({"text":text,"client_msg_id":"h"}),
        )
        .await;
        assert_eq!(status, 422, "{text:?}: {body}");
    }
    // A lone surrogate escape is not Unicode: the JSON text is refused as malformed.
    let resp = server
        .http
        .post(server.url(&format!("/api/orders/{order}/messages")))
        .bearer_auth(&c1)
        .header("content-type", "application/json")
        .body(r#"{"text":"\ud800 broken","client_msg_id":"s"}"#)
        .send()
        .await
        .unwrap();
    assert!(
        [400, 422].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    let (status, ok) = post(
        &server,
        &order,
        &c1,
        json!({"text":"ring twice\n\tplease","client_msg_id":"ok"}),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
    assert_eq!(ok["text"], "ring twice\n\tplease");
    let (_, page) = history(&server, &order, &c1, "").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    for bad in ["?limit=0", "?limit=201", "?before=abc"] {
        assert_eq!(history(&server, &order, &c1, bad).await.0, 422, "{bad}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_order_closes_its_chat_after_the_grace() {
    let server = TestApp::embedded()
        .with_config(|c| c.chat.chat_close_grace_secs = 0)
        .start()
        .await;
    let order = server.create_order("c1", 1, 100).await;
    let c1 = token("c1", Role::Customer);
    let (status, _) = post(
        &server,
        &order,
        &c1,
        json!({"text":"hi","client_msg_id":"a"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(server.set_status(&order, &c1, "cancelled").await.0, 200);
    // A grace of 0: closed from the millisecond after the cancellation.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, body) = post(
        &server,
        &order,
        &c1,
        json!({"text":"hello?","client_msg_id":"b"}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        body["message"].as_str().unwrap().contains("closed"),
        "{body}"
    );
    let (status, page) = history(&server, &order, &c1, "").await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    server.stop().await;
}

// ---- The socket: `send`, `typing`, `read` (real processes, both modes) ----

/// One side of a conversation over a socket: the chat messages it received, in order, and
/// the position of the last event it applied (for `since` after a reconnect).
struct Side {
    ws: Client,
    url: String,
    token: String,
    room: String,
    /// `message_id`s of the `chat.message` events received, in the order they came.
    seen: Vec<String>,
    /// The room offset of each `chat.message` event received, by `message_id`.
    offsets: std::collections::HashMap<String, u64>,
    /// Messages taken from the REST history after a reconnect beyond the room's history:
    /// their events, if any still come, are not new.
    filled: std::collections::HashSet<String>,
    epoch: String,
    offset: u64,
    next_id: i64,
}

impl Side {
    async fn join(url: &str, token: &str, room: &str) -> Side {
        let mut ws = connect(url, token).await;
        let reply = ws.subscribe(room).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        Side {
            ws,
            url: url.to_owned(),
            token: token.to_owned(),
            room: room.to_owned(),
            seen: Vec::new(),
            offsets: Default::default(),
            filled: Default::default(),
            epoch: reply["position"]["epoch"].as_str().unwrap().to_owned(),
            offset: reply["position"]["offset"].as_u64().unwrap(),
            next_id: 1_000,
        }
    }

    /// Applies a frame: a chat message of the room is recorded (once per offset).
    fn apply(&mut self, frame: &Value) {
        if frame["type"] != "event" || frame["room"] != self.room.as_str() {
            return;
        }
        if let Some(epoch) = frame["epoch"].as_str() {
            self.epoch = epoch.to_owned();
        }
        let offset = frame["offset"].as_u64().unwrap();
        if offset <= self.offset {
            return;
        }
        self.offset = offset;
        if frame["event"] == "chat.message" {
            let id = frame["data"]["message_id"].as_str().unwrap().to_owned();
            self.offsets.insert(id.clone(), offset);
            if !self.filled.contains(&id) {
                self.seen.push(id);
            }
        }
    }

    /// Sends `frame` with a fresh id and reads until its reply, applying events on the way.
    async fn ask(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        frame["id"] = json!(self.next_id);
        self.ws.send(frame).await;
        loop {
            let v = self.ws.recv().await;
            if v["id"] == self.next_id && (v["type"] == "ok" || v["type"] == "error") {
                return v;
            }
            self.apply(&v);
        }
    }

    async fn say(&mut self, text: &str, client_msg_id: &str) -> Value {
        let reply = self
            .ask(json!({"op":"send","room":self.room,"text":text,"client_msg_id":client_msg_id}))
            .await;
        assert_eq!(reply["type"], "ok", "{reply}");
        reply
    }

    /// Drops the connection and comes back with `since`; what history no longer holds comes
    /// from the REST history (`rest`: an API base URL).
    async fn reconnect(&mut self, rest: &str) {
        self.ws.close().await;
        self.ws = connect(&self.url, &self.token).await;
        let subscribe = json!({"op":"subscribe","room":self.room,
            "since":{"epoch":self.epoch,"offset":self.offset}});
        let reply = self.ask(subscribe).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        if reply["recovered"] == true {
            // The missed events follow the reply; `apply` takes them as they come.
            return;
        }
        // Beyond history: the messages after the last one seen, from REST, then the room
        // from its position now.
        let last = self.seen.last().cloned();
        let http = reqwest::Client::new();
        let order = self.room.trim_start_matches("order:").to_owned();
        let mut missed = Vec::new();
        let mut before = String::new();
        'pages: loop {
            let url = format!("{rest}/api/orders/{order}/messages?limit=200&before={before}");
            let (status, page) = http_call(&http, "GET", &url, &self.token, None).await;
            assert_eq!(status, 200, "{page}");
            for m in page["messages"].as_array().unwrap().iter().rev() {
                let id = m["message_id"].as_str().unwrap().to_owned();
                if Some(&id) == last.as_ref() {
                    break 'pages;
                }
                missed.push(id);
            }
            match page["next_before"].as_str() {
                Some(b) => before = b.to_owned(),
                None => break,
            }
        }
        // The socket brings the events after the reply's position; REST may already have
        // given some of them.
        self.epoch = reply["position"]["epoch"].as_str().unwrap().to_owned();
        self.offset = reply["position"]["offset"].as_u64().unwrap();
        missed.reverse();
        self.filled.extend(missed.iter().cloned());
        self.seen.extend(missed);
    }
}

/// Customer and partner exchange 1,000 messages (500 each, interleaved), each over its own
/// socket — on two gateways when `ws` names two — and the customer's connection drops in the
/// middle, once with a reply lost (the send is retried with its `client_msg_id`). Each side
/// ends with every message exactly once, in the same order as the database's.
async fn thousand_messages(ws: [String; 2], rest: &str, order: &str) {
    let room = format!("order:{order}");
    let c1 = token("c1", Role::Customer);
    let p1 = token("p1", Role::Partner);
    let mut customer = Side::join(&ws[0], &c1, &room).await;
    let mut partner = Side::join(&ws[1], &p1, &room).await;
    // (message_id, the reply's offset) of every acknowledged send.
    let mut acknowledged = Vec::new();
    let ack = |reply: &Value| {
        let message = &reply["message"];
        let offset = message["offset"].as_u64();
        (message["message_id"].as_str().unwrap().to_owned(), offset)
    };
    for i in 0..500 {
        if i == 250 {
            // A send whose reply is lost with the connection: the retry after the
            // reconnect answers the same message.
            customer
                .ws
                .send(json!({"op":"send","room":room,"text":"lost reply","client_msg_id":"c-lost","id":1}))
                .await;
            customer.reconnect(rest).await;
            let retry = customer.say("lost reply", "c-lost").await;
            acknowledged.push(ack(&retry));
        }
        let a = customer.say(&format!("c {i}"), &format!("c-{i}")).await;
        let b = partner.say(&format!("p {i}"), &format!("p-{i}")).await;
        acknowledged.extend([ack(&a), ack(&b)]);
    }
    // The last events may still be on the way.
    let total = acknowledged.len();
    for side in [&mut customer, &mut partner] {
        while side.seen.len() < total {
            let v = side.ws.recv().await;
            side.apply(&v);
        }
    }
    let http = reqwest::Client::new();
    let url = format!("{rest}/api/orders/{order}/messages?limit=200");
    let mut stored = Vec::new();
    let mut next = url.clone();
    loop {
        let (status, page) = http_call(&http, "GET", &next, &c1, None).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect();
        stored.splice(0..0, ids);
        match page["next_before"].as_str() {
            Some(b) => next = format!("{url}&before={b}"),
            None => break,
        }
    }
    assert_eq!(
        stored.len(),
        1_001,
        "1,000 messages and the retried one, once"
    );
    // Every reply carried its event's room offset (the partner never dropped: it saw them
    // all), the retry of the lost reply too.
    for (id, offset) in &acknowledged {
        assert_eq!(
            *offset,
            partner.offsets.get(id).copied(),
            "message {id}: the reply's offset is the event's"
        );
    }
    let mut sorted: Vec<String> = acknowledged.into_iter().map(|(id, _)| id).collect();
    sorted.sort_by_key(|id| id.parse::<i64>().unwrap());
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        1_001,
        "every acknowledged message is a distinct one"
    );
    assert_eq!(
        customer.seen, stored,
        "the customer saw each message once, in order"
    );
    assert_eq!(
        partner.seen, stored,
        "the partner saw each message once, in order"
    );
}

/// The 1,000-message tests send as fast as replies come back: both the chat rate and the
/// general per-connection op rate (50/s, burst 100 by default) are lifted for them.
const FAST_CHAT: [(&str, &str); 4] = [
    ("SWITCHYARD_CHAT_RATE", "100000"),
    ("SWITCHYARD_CHAT_BURST", "100000"),
    ("SWITCHYARD_OP_RATE", "100000"),
    ("SWITCHYARD_OP_BURST", "100000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_with_a_dropped_connection_embedded() {
    let server = TestApp::embedded()
        .with_config(|c| {
            c.serve.limits.chat_rate = 100_000.0;
            c.serve.limits.chat_burst = 100_000.0;
            c.serve.limits.op_rate = 100_000.0;
            c.serve.limits.op_burst = 100_000.0;
        })
        .start()
        .await;
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let ws = server.ws_url();
    thousand_messages([ws.clone(), ws], &server.url(""), &order).await;
    server.stop().await;
}

/// [`thousand_messages`] on a cluster: the customer on the first gateway, the partner on the
/// second.
async fn thousand_messages_on(cluster: &Cluster) {
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let ws = [
        cluster.ws(&cluster.gateways[0]),
        cluster.ws(&cluster.gateways[1]),
    ];
    thousand_messages(ws, &format!("http://{api}"), &order).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_across_two_gateways_with_a_dropped_connection() {
    thousand_messages_on(&Cluster::up_with(2, 1, &FAST_CHAT)).await;
}

/// The same exchange on the 3-primary + 3-replica Redis Cluster (scripts/redis-cluster.sh,
/// shared by this binary's tests): the room's offsets, history and sharded pub/sub channel live
/// on whichever primary owns the room's slot; customer and partner on two gateways, the
/// customer's connection dropped in the middle with a reply lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_over_a_redis_cluster_with_a_dropped_connection() {
    let redis = common::redis_cluster::shared();
    let mut settings = vec![("SWITCHYARD_REDIS_PREFIX", "chat-cluster:")];
    settings.extend_from_slice(&FAST_CHAT);
    thousand_messages_on(&Cluster::on_redis(&redis.url, None, 2, 1, &settings)).await;
}

/// Over the socket: hostile text, a non-member, a former partner after reassignment, typing
/// and read markers in the snapshot — in the distributed mode (the gateway asks the API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_talk_and_what_over_the_socket() {
    // A typing interval no run outlasts: "at most one per interval" is then exactly one.
    let cluster = Cluster::up_with(2, 1, &[("SWITCHYARD_CHAT_TYPING_INTERVAL_MS", "600000")]);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let room = format!("order:{order}");
    let c1 = token("c1", Role::Customer);
    let mut customer = Side::join(&cluster.ws(&cluster.gateways[0]), &c1, &room).await;
    let mut partner = Side::join(
        &cluster.ws(&cluster.gateways[1]),
        &token("p1", Role::Partner),
        &room,
    )
    .await;
    // Hostile text: refused with `bad_request`, nothing stored.
    let hostile = [
        json!("bell \u{7}"),
        json!("escape \u{1b}[31m"),
        json!("c1 \u{85}"),
        json!(""),
        json!("x".repeat(2_001)),
        json!("😀".repeat(2_560)),
        json!(42),
    ];
    for text in hostile {
        let reply = customer
            .ask(json!({"op":"send","room":room,"text":text,"client_msg_id":"h"}))
            .await;
        assert_eq!(reply["error"], "bad_request", "{text}: {reply}");
    }
    // A lone surrogate escape is not Unicode text: the frame is refused.
    customer
        .ws
        .send_raw(Message::Text(
            format!(
                r#"{{"op":"send","room":"{room}","text":"\ud800","client_msg_id":"s","id":5}}"#
            )
            .into(),
        ))
        .await;
    let reply = customer.ws.recv_until(|v| v["id"] == 5).await;
    assert_eq!(reply["error"], "bad_request", "{reply}");
    // NFC: the stored text is composed.
    let sent = customer.say("cafe\u{301} at the gate", "n1").await;
    assert_eq!(sent["message"]["text"], "caf\u{e9} at the gate");
    assert_eq!(sent["room"], room.as_str());
    let e = partner.ws.event(&room, "chat.message").await;
    assert_eq!(e["data"]["text"], "caf\u{e9} at the gate");
    assert_eq!(e["data"]["from"], "c1");
    assert_eq!(e["data"]["role"], "customer");

    // Typing reaches the other side; read markers are stored and in the next snapshot.
    assert_eq!(
        partner.ask(json!({"op":"typing","room":room})).await["type"],
        "ok"
    );
    let typing = customer.ws.event(&room, "chat.typing").await;
    assert_eq!(typing["data"]["from"], "p1");
    // Throttled per user, not per connection: the customer types on two connections on two
    // gateways, twice each; the partner is shown one chat.typing from c1 (the room's events
    // come in order: all of it is in before the customer's next message).
    let mut customer_too = Side::join(&cluster.ws(&cluster.gateways[1]), &c1, &room).await;
    for _ in 0..2 {
        for side in [&mut customer, &mut customer_too] {
            let reply = side.ask(json!({"op":"typing","room":room})).await;
            assert_eq!(reply["type"], "ok", "{reply}");
        }
    }
    let done = customer.say("typed that", "n2").await;
    let mut typed = 0;
    loop {
        let v = partner.ws.recv().await;
        if v["event"] == "chat.typing" && v["data"]["from"] == "c1" {
            typed += 1;
        }
        if v["event"] == "chat.message" && v["data"]["message_id"] == done["message"]["message_id"]
        {
            break;
        }
    }
    assert_eq!(
        typed, 1,
        "one chat.typing per user and interval, across gateways"
    );
    customer_too.ws.close().await;
    let reply = partner.say("coming", "p-a").await;
    let newest = reply["message"]["message_id"].as_str().unwrap().to_owned();
    let reply = customer.ask(json!({"op":"subscribe","room":room})).await;
    assert_eq!(
        reply["snapshot"]["chat"],
        json!({"last_read": null, "unread": 1}),
        "{reply}"
    );
    let read = customer
        .ask(json!({"op":"read","room":room,"message_id":newest}))
        .await;
    assert_eq!(read["type"], "ok", "{read}");
    let e = partner.ws.event(&room, "chat.read").await;
    assert_eq!(e["data"]["message_id"], newest.as_str());
    let reply = customer.ask(json!({"op":"subscribe","room":room})).await;
    assert_eq!(
        reply["snapshot"]["chat"],
        json!({"last_read": newest, "unread": 0})
    );

    // Someone else's customer may not send, type or read.
    let mut stranger = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("c2", Role::Customer),
    )
    .await;
    let reply = stranger
        .request(json!({"op":"send","room":room,"text":"hi","client_msg_id":"x"}))
        .await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    let reply = stranger.request(json!({"op":"typing","room":room})).await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    let reply = stranger
        .request(json!({"op":"read","room":room,"message_id":newest}))
        .await;
    assert_eq!(reply["error"], "forbidden", "{reply}");

    // Reassigned: the former partner loses the room and the chat with it.
    cluster.assign(&api, &order, "p2").await;
    let revoked = partner.ws.recv_until(|v| v["type"] == "revoked").await;
    assert_eq!(revoked["room"], room.as_str());
    let reply = partner
        .ask(json!({"op":"send","room":room,"text":"still me","client_msg_id":"p-b"}))
        .await;
    assert_eq!(reply["error"], "forbidden", "{reply}");
    assert_eq!(
        partner.ask(json!({"op":"typing","room":room})).await["error"],
        "forbidden"
    );
    let (status, _) = cluster
        .call(
            &api,
            "GET",
            &format!("/api/orders/{order}/messages"),
            &token("p1", Role::Partner),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let mut p2 = Side::join(
        &cluster.ws(&cluster.gateways[1]),
        &token("p2", Role::Partner),
        &room,
    )
    .await;
    let reply = p2.say("new partner here", "p2-a").await;
    assert_eq!(reply["message"]["role"], "partner");
    let e = customer.ws.event(&room, "chat.message").await;
    assert_eq!(e["data"]["from"], "p2");
}

/// The per-connection rate: beyond the burst, `rate_limited`, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_rate_are_refused() {
    let server = TestApp::embedded()
        .with_config(|c| {
            c.serve.limits.chat_rate = 0.001;
            c.serve.limits.chat_burst = 3.0;
        })
        .start()
        .await;
    let order = server.create_order("c1", 1, 100).await;
    let c1 = token("c1", Role::Customer);
    let mut ws = connect(&server.ws_url(), &c1).await;
    let room = format!("order:{order}");
    let mut replies = Vec::new();
    for i in 0..5 {
        let reply = ws
            .request(json!({"op":"send","room":room,"text":"hi","client_msg_id":format!("r{i}")}))
            .await;
        replies.push(reply["error"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(replies, ["ok", "ok", "ok", "rate_limited", "rate_limited"]);
    let (_, page) = history(&server, &order, &c1, "").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    server.stop().await;
}
