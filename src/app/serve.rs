//! [`App::serve`]: the app behind the gateway until SIGINT or SIGTERM.

use std::io::Write;

use denizen_gateway::Gateway;

use super::{App, Config, Error};

/// Where a serving app writes its address while it runs on a data directory, so the `sql` and
/// `workflows` commands find it.
pub(crate) const SERVER_ADDRESS_FILE: &str = "server.address";

impl App {
    /// Serves the app with `config` until the process gets SIGINT or SIGTERM, then shuts down
    /// gracefully (requests in flight and queued events finish, within `shutdown_timeout`).
    /// Starts its own async runtime: call it from `main`, not from inside one.
    ///
    /// Once listening it prints `<name> listening on http://<address>` as the first line on
    /// stdout (a supervisor, or a test that asked for port 0, reads the address there).
    pub fn serve(self, config: Config) -> Result<(), Error> {
        // Before anything is opened: a bad value is refused without side effects.
        config.validate()?;
        let idle_poll = denizen_runtime::IdlePoll::start(config.idle_poll);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_park(idle_poll.on_park())
            .build()
            .map_err(Error::AsyncRuntime)?;
        rt.block_on(async move {
            // Before the address is announced: a supervisor may signal as soon as it reads it.
            let signal = shutdown_signal();
            self.serve_until(config, signal).await
        })
    }

    async fn serve_until(
        mut self,
        mut config: Config,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        if config.public_url.is_none() {
            config.public_url = Some(format!("http://{addr}"));
        }
        for setup in std::mem::take(&mut self.deferred) {
            self = setup(self, &config);
        }
        let App {
            name,
            builder,
            agents,
            workflows,
            routes,
            auth,
            ..
        } = self;
        let runtime = workflows
            .register(builder.options(config.runtime_options()))
            .build()
            .map_err(|source| Error::DataDir {
                dir: config.data_dir.clone(),
                source,
            })?;
        let registry = workflows.bind(&runtime)?;
        let mut gateway = Gateway::new(runtime, config.gateway_options());
        if let Some(hook) = auth {
            gateway = gateway.with_auth(hook);
        }
        // Before the address is announced: the admin token file exists once clients may come.
        gateway.check()?;
        let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
        let mut router = gateway
            .router()
            .merge(crate::agents::routes(&gateway, &agents))
            .merge(crate::workflows_http::routes(&gateway, registry));
        for routes in routes {
            router = router.merge(routes(&gateway));
        }
        // The first line on stdout names the address (tests start the server on port 0).
        announce(&format!("{name} listening on http://{addr}"));
        tracing::info!(
            app = %name,
            %addr,
            data_dir = %config.data_dir.display(),
            objects = ?gateway.runtime().namespaces(),
            "serving"
        );
        let address_file = config.data_dir.join(SERVER_ADDRESS_FILE);
        if let Err(e) = std::fs::write(&address_file, format!("http://{addr}\n")) {
            tracing::warn!(path = %address_file.display(), error = %e, "could not record the server's address; the sql command will need --server");
        }
        let served = gateway.serve_router(listener, router, shutdown).await;
        let _ = std::fs::remove_file(&address_file);
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// One line on stdout, flushed at once (stdout may be a pipe).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the server: nobody is reading the address then.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// SIGINT or SIGTERM, listened for from the moment this is called (a signal that came before
/// would otherwise end the process without a graceful shutdown).
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = term => {},
                () = int => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
