//! Order chat (issue #14) through the real server: REST sends and history, the event every
//! member receives, idempotent retries, hostile text, who may talk.

use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;

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

    // A retry answers the first message and publishes nothing: the next event is the reply.
    let (status, again) = post(
        &server,
        &order,
        &p1,
        json!({"text":"at the gate","client_msg_id":"m-1"}),
    )
    .await;
    assert_eq!((status, &again), (200, &first));
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
