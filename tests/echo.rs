//! Echo route over ws:// and wss://, on both io drivers: text, binary, fragmented messages, ping,
//! and the RFC 6455 failure codes (1007 invalid UTF-8, 1009 too big, 1002 protocol violation).

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use wsgate::DriverChoice;

async fn echo_roundtrips(ws: &mut Ws) {
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_msg(ws).await, Message::Text("hello".into()));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(next_msg(ws).await, Message::Binary(big));
    // A text message in three fragments, with a ping between them.
    let parts: [&[u8]; 3] = [b"frag", "mént".as_bytes(), b"ed"];
    ws.send(Message::Frame(Frame::message(
        parts[0].to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping(b"p".to_vec())).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        parts[1].to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        parts[2].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let mut got_pong = false;
    loop {
        match tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(p) => {
                assert_eq!(p, b"p");
                got_pong = true;
            }
            Message::Text(t) => {
                assert_eq!(t, "fragménted");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_pong, "ping was answered before the reassembled message");
    ws.close(None).await.unwrap();
}

async fn run_echo(driver: DriverChoice) {
    let gw = start(config(2, driver));
    let expected = match driver {
        DriverChoice::Epoll => wsgate::DriverKind::Epoll,
        _ => wsgate::DriverKind::Uring,
    };
    assert_eq!(gw.drivers(), vec![expected, expected]);
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    echo_roundtrips(&mut ws).await;
    let mut wss = connect_tls(&gw, "/echo").await;
    echo_roundtrips(&mut wss).await;
}

#[tokio::test]
async fn echo_over_ws_and_wss_on_io_uring() {
    run_echo(DriverChoice::Uring).await;
}

#[tokio::test]
async fn echo_over_ws_and_wss_on_epoll() {
    run_echo(DriverChoice::Epoll).await;
}

#[tokio::test]
async fn echo_over_the_poll_data_path_for_plain_ws() {
    let mut c = config(2, DriverChoice::Auto);
    c.ws_io = wsgate::config::WsIo::Poll;
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    echo_roundtrips(&mut ws).await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    ws.send(Message::Frame(Frame::message(
        vec![b'a', 0xff, 0xfe],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Invalid);
}

#[tokio::test]
async fn oversize_message_closes_1009_even_when_fragmented() {
    let mut c = config(1, DriverChoice::Auto);
    c.limits.max_message_size = 1000;
    let gw = start(c);
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    ws.send(Message::Binary(vec![1; 1000])).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::Binary(vec![1; 1000]));
    ws.send(Message::Binary(vec![1; 1001])).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Size);

    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    for fin in [false, true] {
        let op = if fin { Data::Continue } else { Data::Binary };
        ws.send(Message::Frame(Frame::message(
            vec![2; 600],
            OpCode::Data(op),
            fin,
        )))
        .await
        .unwrap();
    }
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Size);
}

#[tokio::test]
async fn protocol_violation_closes_1002() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    // A continuation frame with no message in progress.
    ws.send(Message::Frame(Frame::message(
        b"x".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Protocol);
}

#[tokio::test]
async fn clean_close_handshake_echoes_the_code() {
    let gw = start(config(1, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/echo")).await;
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Library(4000));
}

#[tokio::test]
async fn shutdown_sends_1001_to_sessions() {
    let gw = start(config(2, DriverChoice::Auto));
    let mut ws = connect(&ws_url(&gw, "/ws")).await;
    subscribe(&mut ws, "t", 1).await;
    let stopper = std::thread::spawn(move || gw.shutdown());
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Away);
    drop(ws);
    stopper.join().unwrap();
}

/// A client that sends its first frame in the same packet as the upgrade request (the bytes after the
/// request head must reach the session), on both upgrade paths.
async fn frame_pipelined_with_the_upgrade(upgrade: wsgate::config::WsUpgrade) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config(1, DriverChoice::Auto);
    c.ws_upgrade = upgrade;
    let gw = start(c);
    let mut s = tokio::net::TcpStream::connect(gw.ws_addr().unwrap())
        .await
        .unwrap();
    let mut bytes = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    bytes.extend(common::raw::text("early bird"));
    s.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let (b0, payload) = common::raw::read_frame(&mut s).await;
    assert_eq!((b0, payload.as_slice()), (0x81, &b"early bird"[..]));
}

#[tokio::test]
async fn frame_pipelined_with_the_upgrade_direct() {
    frame_pipelined_with_the_upgrade(wsgate::config::WsUpgrade::Direct).await;
}

#[tokio::test]
async fn frame_pipelined_with_the_upgrade_hyper() {
    frame_pipelined_with_the_upgrade(wsgate::config::WsUpgrade::Hyper).await;
}
