//! `lifeboat serve`: parses the clients, opens the storage of `-r`, and
//! runs `lifeboat_ops::serve` until SIGINT or SIGTERM.

use anyhow::Result;
use lifeboat_ops::serve::{Client, ServeConfig};

use crate::args::{Global, ServeArgs};
use crate::exit::{self, cli_error};
use crate::session;

pub async fn run(g: &Global, a: ServeArgs) -> Result<i32> {
    let clients = a
        .clients
        .iter()
        .map(|spec| Client::parse_spec(spec).map_err(|e| cli_error(exit::USAGE, e)))
        .collect::<Result<Vec<_>>>()?;
    let mut names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(cli_error(exit::USAGE, "two --client options share a name"));
    }
    let t = session::target(g)?;
    let storage = lifeboat_storage::open_location(&t.location).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| cli_error(exit::GENERIC, format!("cannot listen on {}: {e}", a.listen)))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "lifeboat: serving {} on http://{addr}/ to {} client(s): {}",
        t.display,
        clients.len(),
        clients
            .iter()
            .map(|c| format!("{} ({})", c.name, c.role))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    lifeboat_ops::serve::serve(
        listener,
        ServeConfig {
            storage,
            clients,
            audit_log: a.audit_log,
        },
        shutdown,
    )
    .await?;
    Ok(exit::OK)
}
