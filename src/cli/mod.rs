//! The subcommands: serve (default), migrate, agent add/list/token, demo.

mod mail;

use std::process::ExitCode;

use crate::config::{AgentCommand, Cli, Command, ServeArgs, Settings, WriterCommand};
use crate::db::Database;
use crate::domain::{agents, demo, writers, DomainError};
use crate::startup::{open_database, Application, DatabaseHandle, StartError};

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
}

impl CliError {
    /// 2 for configuration and start-up problems (the operator must act), 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Start(_) => ExitCode::from(2),
            // sysexits codes, for MTAs (docs/email.md).
            CliError::Mail(e) => ExitCode::from(e.exit_code()),
            _ => ExitCode::from(1),
        }
    }
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = cli.settings;
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    // Mail commands open the database themselves: they write as a writer
    // role, which neither migrates nor needs the owner's connection.
    if let Command::Mail(command) = command {
        return Ok(mail::run(&settings, command).await?);
    }
    let handle = open_database(&settings).await?;
    let result = match command {
        Command::Serve(args) => serve(settings, &handle, args).await,
        Command::Migrate => {
            println!(
                "applied {} migration(s); the schema is up to date",
                handle.applied
            );
            Ok(())
        }
        Command::Agent(command) => agent(&handle, command).await,
        Command::Demo => print_demo(&settings, &handle).await,
        Command::Writer(command) => writer(&handle, command).await,
        // Handled above, before the database is opened.
        Command::Mail(_) => Ok(()),
    };
    close(handle).await;
    result
}

async fn serve(
    settings: Settings,
    handle: &DatabaseHandle,
    args: ServeArgs,
) -> Result<(), CliError> {
    let app = Application::build(settings.clone(), handle.db.clone()).await?;
    let base = format!("http://{}", app.address);
    tracing::info!(address = %app.address, "livedesk is serving");
    println!("livedesk is serving on {base}");
    if args.demo {
        let agents = demo::load(&handle.db).await?;
        print_demo_links(&handle.db, &base, agents).await?;
    } else if agents::list(&handle.db).await?.is_empty() {
        // The token itself is never shown: the link logs in once, within a day.
        let (agent, _) = agents::add(&handle.db, "Admin", "admin@livedesk.local", "admin").await?;
        let code = agents::login_link(&handle.db, agent.id, LOGIN_LINK_LIFETIME).await?;
        println!(
            "First start: created the admin agent {} <{}>.",
            agent.name, agent.email
        );
        println!(
            "Log in with this link (it works once, within 24 hours): {base}/#login={}",
            code.0
        );
    }
    let server = app.server.handle();
    if args.mail {
        let sender = crate::mail::outbound::Sender::new(
            crate::mail::MailDatabase::server(&handle.db),
            args.mail_settings.clone(),
        )?;
        tokio::spawn(sender.run(app.shutdown.clone()));
    }
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: closing connections, then the database");
        shutdown.cancel();
        server.stop(true).await;
    });
    app.run_until_stopped().await?;
    Ok(())
}

async fn agent(handle: &DatabaseHandle, command: AgentCommand) -> Result<(), CliError> {
    match command {
        AgentCommand::Add { name, email, role } => {
            let (agent, token) = agents::add(&handle.db, &name, &email, role.as_str()).await?;
            eprintln!(
                "created agent {} <{}> (id {}, {})",
                agent.name, agent.email, agent.id, agent.role
            );
            println!("{}", token.0);
        }
        AgentCommand::List => {
            for agent in agents::list(&handle.db).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    agent.id, agent.role, agent.email, agent.name
                );
            }
        }
        AgentCommand::Token { email, expires } => {
            let (agent, token) = agents::rotate_token(&handle.db, &email, expires).await?;
            eprintln!(
                "new token for {} <{}>{}; the old one no longer works",
                agent.name,
                agent.email,
                match expires {
                    Some(days) => format!(", valid for {days} day(s)"),
                    None => String::new(),
                }
            );
            println!("{}", token.0);
        }
        AgentCommand::Disable { email } => {
            let agent = agents::set_disabled(&handle.db, &email, true).await?;
            eprintln!(
                "disabled {} <{}>: its tokens no longer work and its connections are closed",
                agent.name, agent.email
            );
        }
        AgentCommand::Enable { email } => {
            let agent = agents::set_disabled(&handle.db, &email, false).await?;
            eprintln!("enabled {} <{}>", agent.name, agent.email);
        }
    }
    Ok(())
}

async fn writer(handle: &DatabaseHandle, command: WriterCommand) -> Result<(), CliError> {
    match command {
        WriterCommand::Add {
            name,
            read_only,
            mail,
        } => {
            let admin = admin_database(handle)?;
            let added = if mail {
                writers::add_mailer(&admin, &name).await
            } else {
                writers::add(&admin, &name, read_only).await
            };
            admin.pool().close();
            let (writer, password) = added?;
            eprintln!(
                "created the role {} in {} (its changes name the service agent {}, id {}); \
                 the password is shown once:",
                writer.name,
                match (writer.read_only, writer.mail) {
                    (true, _) => "livedesk_reader",
                    (false, true) => "livedesk_writer and livedesk_mailer",
                    (false, false) => "livedesk_writer",
                },
                writer.agent.name,
                writer.agent.id
            );
            println!(
                "{}",
                writers::connection_url(handle.db.config(), &writer.name, &password)
            );
        }
        WriterCommand::List => {
            for writer in writers::list(&handle.db).await? {
                println!(
                    "{}\t{}\tagent {}{}",
                    writer.name,
                    match (writer.read_only, writer.mail) {
                        (true, _) => "reader",
                        (false, true) => "writer+mail",
                        (false, false) => "writer",
                    },
                    writer.agent.id,
                    if writer.role_exists {
                        ""
                    } else {
                        "\t(role missing)"
                    }
                );
            }
        }
        WriterCommand::Remove { name } => {
            let admin = admin_database(handle)?;
            let removed = writers::remove(&admin, &name).await;
            admin.pool().close();
            removed?;
            eprintln!("removed the role {name}");
        }
    }
    Ok(())
}

/// The connection that may create roles: the embedded default's superuser,
/// or the `DATABASE_URL` role (which then needs CREATEROLE).
fn admin_database(handle: &DatabaseHandle) -> Result<Database, CliError> {
    let config = match &handle.embedded {
        Some(pg) => pg.admin_config(),
        None => handle.db.config().clone(),
    };
    Ok(Database::new(config, 1).map_err(StartError::from)?)
}

async fn print_demo(settings: &Settings, handle: &DatabaseHandle) -> Result<(), CliError> {
    let logins = demo::load(&handle.db).await?;
    print_demo_links(&handle.db, &format!("http://{}", settings.bind), logins).await?;
    Ok(())
}

/// How long a printed login link works (once).
const LOGIN_LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One one-time login link per demo agent (no token is printed or replaced
/// until a link is used).
async fn print_demo_links(
    db: &crate::db::Database,
    base: &str,
    demo_agents: Vec<crate::domain::Agent>,
) -> Result<(), CliError> {
    println!("Demo data loaded. Open one link per browser window to play each agent (each works once, within 24 hours):");
    for agent in demo_agents {
        let code = agents::login_link(db, agent.id, LOGIN_LINK_LIFETIME).await?;
        println!("  {:<8} {base}/#login={}", agent.name, code.0);
    }
    Ok(())
}

async fn close(handle: DatabaseHandle) {
    // Close our connections first so PostgreSQL's shutdown is not logged as
    // lost connections.
    let DatabaseHandle { db, embedded, .. } = handle;
    db.pool().close();
    drop(db);
    if let Some(pg) = embedded {
        let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
