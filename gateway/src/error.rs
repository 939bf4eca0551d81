/// What can stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving HTTP failed: {0}; check that the listener is still open")]
    Serve(#[source] std::io::Error),
}
