//! A TCP proxy on 127.0.0.1 in front of the local API server that slows its answers: each chunk
//! from the server waits a random time up to the current `max_delay` before it goes on (TLS
//! passes through untouched). Clients of a test dial the proxy to see a slow API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SlowProxy {
    pub port: u16,
    max_delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`target`; no delay yet.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let max_delay_ms = Arc::new(AtomicU64::new(0));
        let delay = max_delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        pipe(client, server, delay).await;
                    }
                });
            }
        });
        Self {
            port,
            max_delay_ms,
            task,
        }
    }

    /// From now on each chunk of an answer waits up to `max` (zero: none).
    pub fn slow_down(&self, max: Duration) {
        self.max_delay_ms
            .store(max.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let max = delay.load(Ordering::Relaxed);
            if max > 0 {
                let wait = super::random_u64() % (max + 1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
