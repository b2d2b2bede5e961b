//! One local address in front of several API servers (as K3s' agents keep one): each TCP
//! connection made to it goes on to the server the last connection reached, or, when that
//! one does not answer, to the next in the list. TLS passes through untouched, so clients
//! check the server they reach against the cluster CA as usual (every Berth server's
//! certificate covers 127.0.0.1). A server that dies breaks its connections; the clients'
//! retries come back through here and land on a live one, and watches resume from their
//! resourceVersion (the servers share one store and its revisions).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a server has to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running front; it stops when dropped.
pub struct Front {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// `https://<addr>`: the URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of each `https://host:port` URL in a comma-separated list, checked.
pub fn servers(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a URL: give https://host:port"))?;
        let (Some("https"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(format!("{url:?}: give https://host:port"));
        };
        let port = uri.port_u16().unwrap_or(443);
        out.push(if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        });
    }
    if out.is_empty() {
        return Err("no server given: give https://host:port[,https://host:port...]".into());
    }
    Ok(out)
}

/// Listen on `listen` and pass connections on to `servers` (`host:port` each).
pub async fn start(listen: SocketAddr, servers: Vec<String>) -> std::io::Result<Front> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let servers: Arc<[String]> = servers.into();
    let current = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "the API front could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (servers, current) = (servers.clone(), current.clone());
            tokio::spawn(async move {
                let Some(mut upstream) = connect(&servers, &current).await else {
                    tracing::warn!(servers = ?servers, "no API server answers");
                    return;
                };
                let mut client = client;
                let _ = client.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    Ok(Front { addr, task })
}

/// A connection to the first server that answers, starting with the one that answered
/// last; it becomes the one to start with.
async fn connect(servers: &[String], current: &AtomicUsize) -> Option<TcpStream> {
    let first = current.load(Ordering::Relaxed);
    for i in 0..servers.len() {
        let at = (first + i) % servers.len();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&servers[at]));
        match attempt.await {
            Ok(Ok(stream)) => {
                if at != first {
                    tracing::info!(server = %servers[at], "API server connections now go here");
                    current.store(at, Ordering::Relaxed);
                }
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Ok(Err(e)) => tracing::debug!(server = %servers[at], error = %e, "API server refused"),
            Err(_) => tracing::debug!(server = %servers[at], "API server did not answer in time"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_lists_are_checked() {
        assert_eq!(
            servers("https://10.0.0.1:6443, https://a.example").unwrap(),
            ["10.0.0.1:6443", "a.example:443"]
        );
        assert!(servers("http://10.0.0.1:6443")
            .unwrap_err()
            .contains("https://"));
        assert!(servers(" , ").is_err());
    }

    /// A server that echoes one line with its own tag.
    async fn tagged(tag: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let _ = s.write_all(tag.as_bytes()).await;
                    let _ = s.write_all(&buf[..n]).await;
                });
            }
        });
        (addr, task)
    }

    async fn ask(front: SocketAddr) -> String {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(b"!").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_move_to_the_next_server_when_one_dies_and_stay_there() {
        let (a, a_task) = tagged("a").await;
        let (b, _b_task) = tagged("b").await;
        let front = start(
            "127.0.0.1:0".parse().unwrap(),
            vec![a.to_string(), b.to_string()],
        )
        .await
        .unwrap();
        assert_eq!(ask(front.addr).await, "a!");
        a_task.abort();
        let _ = a_task.await;
        assert_eq!(ask(front.addr).await, "b!");
        // b stays the first choice even once a port answers again at a's address.
        let _again = TcpListener::bind(a).await;
        assert_eq!(ask(front.addr).await, "b!");
    }
}
