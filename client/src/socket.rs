//! One WebSocket connection speaking protocol v1 (protocol/README.md).
//!
//! [`Socket::connect`] sends the token in `Authorization: Bearer`, waits for the upgrade and
//! reads the `welcome`; a refused handshake is a [`ConnectError::Refused`] with the server's
//! error body. Ops get fresh ids ([`Socket::send`]); [`Socket::request`] waits for the reply
//! with that id and keeps every other frame read meanwhile, in order, for [`Socket::next`].

use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use switchyard_protocol::client::ClientOp;
use switchyard_protocol::server::{ErrorReply, FrameError, OkReply, Welcome};
use switchyard_protocol::{ErrorBody, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A server frame that owns its data.
pub type Frame = ServerMessage<'static>;

/// The underlying WebSocket stream.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade with an HTTP error (401, 403, 429, 503, …).
    #[error("handshake refused: HTTP {status} {body:?}")]
    Refused {
        status: u16,
        /// The error body, when it was the protocol's error shape.
        body: Option<ErrorBody<'static>>,
    },
    #[error("bad request: {0}")]
    Request(String),
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// Upgraded, but the first frame was not a `welcome`.
    #[error("no welcome: {0}")]
    NoWelcome(Box<ReadError>),
}

/// Why reading the next frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The server closed the connection (with this close frame), or the stream ended.
    #[error("connection closed: {0:?}")]
    Closed(Option<CloseFrame>),
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// A text frame that is not a server message of this protocol.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The protocol sends only text frames.
    #[error("unexpected binary frame")]
    Binary,
}

impl From<tungstenite::Error> for ReadError {
    fn from(err: tungstenite::Error) -> ReadError {
        ReadError::WebSocket(Box::new(err))
    }
}

/// An op's reply: `ok`, or the server's `error`.
pub type Reply = Result<OkReply<'static>, ErrorReply<'static>>;

/// One connection.
pub struct Socket {
    ws: Ws,
    welcome: Welcome<'static>,
    /// The welcome as the server sent it.
    welcome_text: String,
    response: Response,
    next_id: i64,
    /// Text frames read while waiting for a reply, not handed out yet.
    early: VecDeque<String>,
}

/// The upgrade request for `url` with the token in `Authorization: Bearer`.
pub fn bearer_request(url: &str, token: &str) -> Result<Request, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    request.headers_mut().insert("authorization", value);
    Ok(request)
}

impl Socket {
    /// Connects to `url` (`ws://host/ws`) as the holder of `token`.
    pub async fn connect(url: &str, token: &str) -> Result<Socket, ConnectError> {
        Socket::connect_with(bearer_request(url, token)?).await
    }

    /// Connects with a prepared upgrade request (the token in a subprotocol or the query,
    /// extra headers, `?since=`).
    pub async fn connect_with(request: Request) -> Result<Socket, ConnectError> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => Socket::welcomed(ws, response).await,
            Err(err) => Err(refusal(err)),
        }
    }

    /// Upgrades an already open TCP stream (e.g. one with a small receive buffer).
    pub async fn connect_on(tcp: TcpStream, request: Request) -> Result<Socket, ConnectError> {
        match tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await {
            Ok((ws, response)) => Socket::welcomed(ws, response).await,
            Err(err) => Err(refusal(err)),
        }
    }

    async fn welcomed(ws: Ws, response: Response) -> Result<Socket, ConnectError> {
        let mut socket = Socket {
            ws,
            welcome: Welcome {
                conn: "".into(),
                sub: "".into(),
                role: switchyard_protocol::Role::Customer,
                rooms: Vec::new(),
                positions: Vec::new(),
                recovered: None,
            },
            welcome_text: String::new(),
            response,
            next_id: 1,
            early: VecDeque::new(),
        };
        let text = socket
            .next_text()
            .await
            .map_err(|e| ConnectError::NoWelcome(Box::new(e)))?;
        match ServerMessage::decode(&text).map(ServerMessage::into_owned) {
            Ok(ServerMessage::Welcome(welcome)) => {
                socket.welcome = welcome;
                socket.welcome_text = text;
                Ok(socket)
            }
            Ok(other) => Err(ConnectError::NoWelcome(Box::new(ReadError::Frame(
                FrameError(format!("expected welcome, got {}", other.encode())),
            )))),
            Err(err) => Err(ConnectError::NoWelcome(Box::new(ReadError::Frame(err)))),
        }
    }

    /// The connection's `welcome`: who it is, its user room and that room's position.
    pub fn welcome(&self) -> &Welcome<'static> {
        &self.welcome
    }

    /// The `welcome` frame as the server sent it.
    pub fn welcome_text(&self) -> &str {
        &self.welcome_text
    }

    /// The server's answer to the upgrade (its headers: the selected subprotocol, …).
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// A fresh op id (ids count up from 1 per connection).
    pub fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `op` with a fresh id and returns the id (its reply carries it).
    pub async fn send(&mut self, op: ClientOp) -> Result<i64, tungstenite::Error> {
        let id = self.take_id();
        self.send_text(op.with_id(id).encode()).await?;
        Ok(id)
    }

    /// Sends a text frame as it is (a frame this client has no type for, or a broken one).
    pub async fn send_text(&mut self, text: String) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::Text(text.into())).await
    }

    /// Sends any WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(message).await
    }

    /// Sends `op` and waits for its reply; frames read meanwhile stay queued for
    /// [`Socket::next`], in order.
    pub async fn request(&mut self, op: ClientOp) -> Result<Reply, ReadError> {
        let id = self.send(op).await?;
        let mut read = VecDeque::new();
        let reply = loop {
            let text = self.read_text().await?;
            match ServerMessage::decode(&text)? {
                ServerMessage::Ok(ok) if ok.id == Some(id) => break Ok(ok.into_owned()),
                ServerMessage::Error(e) if e.id == Some(id) => break Err(e.into_owned()),
                _ => read.push_back(text),
            }
        };
        self.early.extend(read);
        Ok(reply)
    }

    /// The next frame.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        let text = self.next_text().await?;
        Ok(ServerMessage::decode(&text)?.into_owned())
    }

    /// The next text frame, undecoded (what the server sent, byte for byte).
    pub async fn next_text(&mut self) -> Result<String, ReadError> {
        match self.early.pop_front() {
            Some(text) => Ok(text),
            None => self.read_text().await,
        }
    }

    /// Reads until the server closes; its close frame (`None`: the stream just ended).
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.read_text().await {
                Ok(_) | Err(ReadError::Binary | ReadError::Frame(_)) => continue,
                Err(ReadError::Closed(frame)) => return frame,
                Err(ReadError::WebSocket(_)) => return None,
            }
        }
    }

    /// Starts a normal close (1000).
    pub async fn close(&mut self) -> Result<(), tungstenite::Error> {
        self.ws.close(None).await
    }

    /// The underlying stream, for what this client does not wrap.
    pub fn ws_mut(&mut self) -> &mut Ws {
        &mut self.ws
    }

    async fn read_text(&mut self) -> Result<String, ReadError> {
        loop {
            match self.ws.next().await {
                None => return Err(ReadError::Closed(None)),
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => return Err(ReadError::Closed(frame)),
                Some(Ok(Message::Binary(_))) => return Err(ReadError::Binary),
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }
}

/// A refused upgrade's status and body, or the transport error.
fn refusal(err: tungstenite::Error) -> ConnectError {
    match err {
        tungstenite::Error::Http(response) => ConnectError::Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
                .map(ErrorBody::into_owned),
        },
        other => ConnectError::WebSocket(Box::new(other)),
    }
}
