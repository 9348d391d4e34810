//! The CLI's client for the local API: HTTP/1.1 over the agent's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::MAX_BODY_BYTES;
use super::types::ApiError;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach the parley agent at {socket}: {source}\n\
         hint: start it with `parley agent` (or `systemctl --user start parley`), or point \
         --api-socket / PARLEY_API_SOCKET at the socket it listens on"
    )]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// The connection error.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{}", .error.message)]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The agent's error body.
        error: ApiError,
    },
    /// The conversation broke down (a dropped connection, an unexpected body).
    #[error("talking to the agent at {socket} failed: {message}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A client bound to one agent socket. Each call opens its own connection: the CLI makes
/// one or two calls per invocation, so pooling would buy nothing.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// A client for the agent listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    fn protocol(&self, message: impl ToString) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            message: message.to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        let driver = tokio::spawn(connection);

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "parley");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.protocol(e))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 64 * MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| self.protocol(e))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.call(method, path, body).await?;
        if !status.is_success() {
            return Err(self.api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    fn api_error(&self, status: StatusCode, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ApiError>(body) {
            Ok(error) => ClientError::Api { status, error },
            Err(_) => self.protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(body))),
        }
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call_json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, decoding the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.protocol(e))?;
        self.call_json(Method::POST, path, Some(body)).await
    }

    /// `GET path`, returning the body as text (for non-JSON endpoints like `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(self.api_error(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `DELETE path`, expecting no body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let (status, body) = self.call(Method::DELETE, path, None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.api_error(status, &body))
        }
    }
}
