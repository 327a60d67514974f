//! The HTTP ceiling of the machine: a plain axum handler that returns a constant. The
//! benchmark drives it exactly as it drives a node, in the same run, and reports the node's
//! figures as ratios to this one.

use axum::routing::get;

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("ceiling listen={}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/",
        get(|| async {
            (
                [("content-type", "application/json")],
                r#"{"value":{"n":1},"version":"c"}"#,
            )
        }),
    );
    axum::serve(listener, app).await.expect("serve");
}
