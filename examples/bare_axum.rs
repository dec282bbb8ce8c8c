//! The baseline of the ingest load test (`scripts/load-ingest.sh`): an axum
//! server that reads the body of `POST /webhooks/{source}` and answers 200,
//! keeping nothing — the most any webhook receiver built on axum can do on
//! this machine.
//!
//! `cargo run --release --example bare_axum -- 127.0.0.1:8091`

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8091".to_string());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let app = Router::new().route(
            "/webhooks/{source}",
            // The body is read, as a real receiver must before answering.
            post(|body: Bytes| async move {
                std::hint::black_box(body.len());
                axum::http::StatusCode::OK
            }),
        );
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        println!("bare axum: serving on http://{listen}");
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("error: {e}");
        }
    });
}
