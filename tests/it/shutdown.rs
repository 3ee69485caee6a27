//! Graceful shutdown is bounded: a client that keeps a stream open cannot
//! hold the server up past --shutdown-timeout.

use std::time::{Duration, Instant};

use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::common::TestServer;

#[tokio::test]
async fn an_open_stream_does_not_hold_shutdown_past_the_deadline() {
    let mut server = TestServer::start_with(|c| c.shutdown_timeout = Duration::from_secs(1)).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let first = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // One request, then a request stream that never ends.
    let requests =
        futures::StreamExt::chain(tokio_stream::iter([first]), futures::stream::pending());
    let mut replies = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    assert!(
        replies.message().await.unwrap().is_some(),
        "the stream is live"
    );

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("shutdown finishes despite the open stream")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "it waited for the stream first: {took:?}"
    );
    drop(replies);
}
