//! The HTTP ceiling of the machine: a plain axum handler that returns a constant. The
//! benchmark drives it exactly as it drives a node, in the same run, and reports the node's
//! figures as ratios to this one. `ceiling ADDR CERT KEY` serves it over TLS, with the node's
//! own TLS listener, so that TLS figures compare like with like.

use axum::routing::get;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = args
        .first()
        .cloned()
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
    match (args.get(1), args.get(2)) {
        (Some(cert), Some(key)) => {
            let tls = meridian_net::tls::ServerTls::new(cert.as_ref(), key.as_ref(), None)
                .expect("certificate");
            axum::serve(tls.listen(listener).expect("listen"), app)
                .await
                .expect("serve")
        }
        _ => axum::serve(listener, app).await.expect("serve"),
    }
}
